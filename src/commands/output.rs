//! Everything a command prints goes through here: stdout for results (a closed pipe is a normal
//! end), JSON pretty-printed with a final newline, plain-text tables.

use std::io::Write;

use serde::Serialize;

use crate::exit::CommandError;

/// Writes to stdout; a closed pipe (`etcdguard records | head`) is a normal end.
pub(crate) fn print(text: &str) -> Result<(), CommandError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CommandError::Failed(format!("cannot write output: {e}"))),
    }
}

/// Pretty JSON and a newline.
pub(crate) fn print_json(value: &impl Serialize) -> Result<(), CommandError> {
    let mut s = serde_json::to_string_pretty(value).expect("output serializes");
    s.push('\n');
    print(&s)
}

pub(crate) fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Left-aligned columns, two spaces apart, the last column unpadded. Pure.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len() - 1;
        for (i, c) in cells.iter().enumerate() {
            if i == last {
                out.push_str(c);
            } else {
                let pad = widths[i].saturating_sub(c.chars().count());
                out.push_str(c);
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(500), "500 B");
        assert_eq!(human_size(24608), "24.0 KiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
    }
}
