//! Writes the man pages and shell completions from the CLI definition itself, so they can
//! never drift from the binary: `cargo run --example gen-assets -- <out dir>` (run by
//! `scripts/package`). Produces `man/etcdguard.1` (+ one page per subcommand) and
//! `completions/{etcdguard.bash,_etcdguard,etcdguard.fish}`.

use std::path::PathBuf;

use clap::CommandFactory;
use clap_complete::Shell;

fn main() -> std::io::Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: gen-assets <out dir>"),
    );
    let man = out.join("man");
    let comp = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&comp)?;
    let cmd = etcdguard::cli::Cli::command();
    clap_mangen::generate_to(cmd.clone(), &man)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "etcdguard", &comp)?;
    }
    Ok(())
}
