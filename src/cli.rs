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
        /// List the snapshots in the bucket instead, for every node (from their sidecars),
        /// marking those this node's records know
        #[arg(long)]
        remote: bool,
    },
    /// Check a snapshot file: sha256 trailer, bbolt consistency, and etcdutl's snapshot status
    /// (hash, revision, totalKey, totalSize). Reads no configuration
    Verify {
        /// The snapshot file
        file: PathBuf,
        /// Accept a file without sha256 trailer (a copy of a data dir's member/snap/db). Such
        /// a copy may miss writes that were only in the WAL
        #[arg(long)]
        skip_hash_check: bool,
        #[arg(long, short, value_enum, default_value_t = VerifyFormat::Text)]
        output: VerifyFormat,
    },
    /// Build an etcd data directory from a snapshot, as `etcdutl snapshot restore` does (same
    /// flags, same WAL and .snap bytes), checked first and published atomically. Touches no
    /// running etcd and no manifest; reads no configuration
    RestoreDatadir(RestoreDatadirArgs),
    /// Configuration commands
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, clap::Args)]
pub struct RestoreDatadirArgs {
    /// The snapshot file (with etcd's sha256 trailer, as `etcdguard snapshot` and
    /// `etcdctl snapshot save` write it)
    pub snapshot: PathBuf,
    /// The data directory to create; it must not exist, or be empty
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// This member's name
    #[arg(long)]
    pub name: String,
    /// All members of the restored cluster: name=peer-URL,…  [default: NAME=the advertised URLs]
    #[arg(long, value_name = "NAME=URL,...")]
    pub initial_cluster: Option<String>,
    /// This member's peer URLs, comma-separated
    #[arg(long, value_name = "URLS")]
    pub initial_advertise_peer_urls: String,
    /// The new cluster's token; member and cluster IDs derive from it. Use a fresh one so
    /// restored members can never rejoin the old cluster, and the same one on every member
    #[arg(long, value_name = "TOKEN")]
    pub initial_cluster_token: String,
    /// Raise the revision by this much (requires --mark-compacted); Kubernetes: 1000000000
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub bump_revision: u64,
    /// Mark the bumped revision compacted, so watchers and informers re-list
    #[arg(long)]
    pub mark_compacted: bool,
    /// Accept a snapshot without sha256 trailer (a data dir's member/snap/db)
    #[arg(long)]
    pub skip_hash_check: bool,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration, the certificates and the etcd manifest; print the effective
    /// configuration with secrets redacted. Exit 78 on any problem
    Check {
        /// Also check the remote storage: credentials, TLS, bucket exists and is writable (a
        /// tiny probe object is written and deleted)
        #[arg(long)]
        remote: bool,
    },
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
