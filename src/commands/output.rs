//! Everything a command prints goes through here: stdout for results (a closed pipe is a normal
//! end), JSON pretty-printed with a final newline, plain-text tables.

use serde::Serialize;

use crate::exit::CommandError;

/// Writes to stdout; a closed pipe (`etcdguard records | head`) is a normal end.
pub(crate) fn print(text: &str) -> Result<(), CommandError> {
    crate::stdio::out(text.as_bytes())
        .map_err(|e| CommandError::Failed(format!("cannot write to standard output: {e}")))
}

/// Writes to stderr what a person must read before an answer or after a refusal (a restore's
/// plan); a failure is the command's.
pub(crate) fn say(text: &str) -> Result<(), CommandError> {
    crate::stdio::err(text.as_bytes())
        .map_err(|e| CommandError::Failed(format!("cannot write to standard error: {e}")))
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

/// A table for stdout: on a terminal narrower than the table, cut to its width (`fit`); in a
/// pipe or a file, whole (scripts read every column).
pub(crate) fn table_for_stdout(header: &[&str], rows: &[Vec<String>], drop: &[&str]) -> String {
    match console::Term::stdout().size_checked() {
        Some((_, width)) => fit(header, rows, usize::from(width), drop),
        None => table(header, rows),
    }
}

/// The table within `width` columns: the columns named in `drop` left out, in that order,
/// until it fits; then any line still too long cut with "…". Pure.
pub(crate) fn fit(header: &[&str], rows: &[Vec<String>], width: usize, drop: &[&str]) -> String {
    let render = |keep: &[usize]| {
        let h: Vec<&str> = keep.iter().map(|&i| header[i]).collect();
        let r: Vec<Vec<String>> = rows
            .iter()
            .map(|row| keep.iter().map(|&i| row[i].clone()).collect())
            .collect();
        table(&h, &r)
    };
    let fits = |text: &str| text.lines().all(|l| l.chars().count() <= width);
    let mut keep: Vec<usize> = (0..header.len()).collect();
    let mut text = render(&keep);
    for name in drop {
        if fits(&text) {
            break;
        }
        if let Some(i) = header.iter().position(|h| h == name) {
            keep.retain(|&k| k != i);
            text = render(&keep);
        }
    }
    let mut out = String::new();
    for line in text.lines() {
        if line.chars().count() > width {
            out.extend(line.chars().take(width.saturating_sub(1)));
            out.push('…');
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_fit_the_terminal() {
        let header = ["ID", "NAME", "NOTE"];
        let rows = vec![vec!["1".to_string(), "alpha".into(), "a long note".into()]];
        // Wide enough: unchanged.
        assert_eq!(fit(&header, &rows, 80, &["NAME"]), table(&header, &rows));
        // Columns go in the order given, then lines are cut.
        assert_eq!(
            fit(&header, &rows, 16, &["NAME"]),
            "ID  NOTE\n1   a long note\n"
        );
        let cut = fit(&header, &rows, 10, &["NAME"]);
        assert_eq!(cut, "ID  NOTE\n1   a lon…\n");
        assert!(cut.lines().all(|l| l.chars().count() <= 10));
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(500), "500 B");
        assert_eq!(human_size(24608), "24.0 KiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
    }
}
