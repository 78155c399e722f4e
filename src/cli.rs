//! Command-line definitions only (clap derive). The man page and shell completions are
//! generated from these same definitions.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "etcdguard",
    version,
    about = "Scheduled, verified etcd snapshots and guarded restore for kubeadm control-plane nodes",
    after_help = "Exit codes: 0 success, 1 the operation failed, 2 usage error, 78 configuration error."
)]
pub struct Cli {
    /// Configuration file [default: /etc/etcdguard/etcdguard.toml; built-in defaults when
    /// that file does not exist]
    #[arg(long, global = true, env = "ETCDGUARD_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: scheduled backups, catch-up, sd_notify, metrics (systemd's ExecStart)
    Run,
    /// Take one backup now (same pipeline, lock and records as the daemon). Exit 0 on success, 1 on failure
    Snapshot,
    /// List backup records, newest first
    Records {
        #[arg(long, short, value_enum, default_value_t = RecordsFormat::Table)]
        output: RecordsFormat,
        /// Show only the N newest records
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
    /// Check a snapshot file: sha256 trailer, bbolt meta pages, size. Reads no configuration
    Verify {
        /// The snapshot file
        file: PathBuf,
        #[arg(long, short, value_enum, default_value_t = VerifyFormat::Text)]
        output: VerifyFormat,
    },
    /// Configuration commands
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration, the certificates and the etcd manifest; print the effective
    /// configuration with secrets redacted. Exit 78 on any problem
    Check,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RecordsFormat {
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VerifyFormat {
    Text,
    Json,
}
