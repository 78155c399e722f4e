//! Command-line definitions only (clap derive). The man page and shell completions are
//! generated from these same definitions.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "etcdguard",
    version = env!("ETCDGUARD_LONG_VERSION"),
    about = "Scheduled, verified etcd snapshots and guarded restore for kubeadm control-plane nodes",
    after_help = crate::exit::EXIT_CODES_HELP
)]
pub struct Cli {
    /// Configuration file [default: /etc/etcdguard/etcdguard.toml; built-in defaults when
    /// that file does not exist]
    #[arg(long, global = true, env = "ETCDGUARD_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// No progress bars (they are drawn only when stderr is a terminal)
    #[arg(long, short, global = true)]
    pub quiet: bool,

    /// Keep the normal CPU and I/O priority for `snapshot` (by default a backup runs at nice
    /// 10 and the lowest best-effort I/O level, so etcd on the same node comes first)
    #[arg(long, global = true)]
    pub normal_priority: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: scheduled backups, catch-up, sd_notify, metrics (systemd's ExecStart)
    Run,
    /// Take one backup now (same pipeline, lock and records as the daemon). Exit 0 on success, 1 on failure
    Snapshot {
        /// Keep this snapshot through every retention, local and remote, until `etcdguard
        /// unpin` (take one before `kubeadm upgrade`)
        #[arg(long)]
        pin: bool,
        /// A note kept with the pin, shown by `records` (implies --pin)
        #[arg(long, value_name = "TEXT")]
        label: Option<String>,
    },
    /// Ask the local etcd member how it is: alarms, database against its quota, raft
    /// progress, learner (what every backup records). Exit 0 healthy, 1 warnings or no answer
    Health {
        #[arg(long, short, value_enum, default_value_t = HealthFormat::Text)]
        output: HealthFormat,
    },
    /// Keep a snapshot through every retention, local and remote, until unpinned
    Pin {
        /// The record id or snapshot file name, as `etcdguard records` lists them
        #[arg(value_name = "ID")]
        id: String,
        /// A note kept with the pin, shown by `records`
        #[arg(long, value_name = "TEXT")]
        label: Option<String>,
    },
    /// Let retention treat a pinned snapshot like any other again (it may go at the next run)
    Unpin {
        /// The record id or snapshot file name, as `etcdguard records` lists them
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Apply retention now, locally and remotely, without a backup; --dry-run says what
    /// would go and why, and changes nothing. Exit 0, or 1 when part of it failed
    Prune {
        /// Only list what retention would delete now, and why
        #[arg(long)]
        dry_run: bool,
    },
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
        /// With --remote: only this node's directory (`<prefix><NAME>/`; `_cluster` for the
        /// cluster's copies)
        #[arg(long, value_name = "NAME", requires = "remote")]
        node: Option<String>,
    },
    /// Check a snapshot file: sha256 trailer, bbolt consistency, and etcdutl's snapshot status
    /// (hash, revision, totalKey, totalSize, and version from etcdutl 3.6). Reads no
    /// configuration
    Verify {
        /// The snapshot file
        file: PathBuf,
        /// Do not compute or check the sha256: structure and status only, like `etcdutl
        /// snapshot status`. Also accepts a file without sha256 trailer (a copy of a data
        /// dir's member/snap/db, which may miss writes that were only in the WAL)
        #[arg(long)]
        skip_hash_check: bool,
        #[arg(long, short, value_enum, default_value_t = VerifyFormat::Text)]
        output: VerifyFormat,
        /// Report totalKey (and version) as this etcdutl's `snapshot status` does: 3.5 counts
        /// every pair in every bucket, 3.6 and 3.7 count live keys and print the storage
        /// version [default: the snapshot's own storage version; 3.5 when it has none]
        #[arg(long, value_enum, value_name = "MINOR")]
        as_etcdutl: Option<EtcdMinor>,
        /// Identity that opens an encrypted snapshot: an age identity file (`age-keygen`
        /// output) or an unencrypted OpenSSH private key. Plain snapshots need none
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
    },
    /// Prove that a backup restores: the newest good snapshot (or the one named) is verified,
    /// built into a data dir for this node's etcd version in a scratch dir, and the dir is
    /// checked as a starting etcd would check it (bbolt, WAL, consistent index, .snap,
    /// members, content against the snapshot); with an etcd binary, that etcd is started on
    /// it and its hashkv compared. Never touches the live data dir; always recorded. Exit 0
    /// passed, 1 failed
    Drill {
        /// The snapshot: a file, a record id, or a remote key [default: the newest good copy,
        /// as `[drill] source` says]
        #[arg(long, value_name = "FILE|RECORD|KEY")]
        snapshot: Option<String>,
        /// Drill the newest remote copy (downloaded and checked), whatever `[drill] source` says
        #[arg(long, conflicts_with = "snapshot")]
        remote: bool,
        /// Identity that opens an encrypted copy [default: `[drill] identity`]
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
        /// Start this etcd (of this node's version) on the built dir and compare hashkv
        /// [default: `[drill] etcd_binary`; off when neither is set]
        #[arg(long, value_name = "PATH")]
        etcd_binary: Option<PathBuf>,
        /// Also start this kube-apiserver on that etcd and list every resource type the
        /// snapshot holds through it [default: `[drill] apiserver_binary`; off when neither
        /// is set; needs an etcd binary]
        #[arg(long, value_name = "PATH")]
        apiserver_binary: Option<PathBuf>,
        #[arg(long, short, value_enum, default_value_t = InspectFormat::Table)]
        output: InspectFormat,
    },
    /// What a snapshot holds, without restoring it: revision, compaction, versions, members,
    /// alarms, leases, and Kubernetes data by resource type and namespace (keys, value bytes,
    /// deleted keys), the largest objects and the newest deletes. `--keys PREFIX` lists keys,
    /// `--get KEY [--revision N]` prints one value. Reads no configuration
    Inspect {
        /// The snapshot file (etcdguard's or etcdctl's), or a data dir's member/snap/db
        file: PathBuf,
        #[arg(long, short, value_enum, default_value_t = InspectFormat::Table)]
        output: InspectFormat,
        /// List the live keys that start with PREFIX (sorted), instead of the summary
        #[arg(long, value_name = "PREFIX", conflicts_with = "get")]
        keys: Option<String>,
        /// Print the value of KEY (JSON as stored; a Kubernetes protobuf object as its
        /// apiVersion, kind and metadata with the rest in base64)
        #[arg(long, value_name = "KEY")]
        get: Option<String>,
        /// With --get: the value at revision N (as a read at that revision would answer)
        #[arg(long, value_name = "N", requires = "get")]
        revision: Option<i64>,
        /// How many of the largest objects and of the newest deletes to list
        #[arg(long, value_name = "N", default_value_t = 10)]
        limit: usize,
        /// Identity that opens an encrypted snapshot (age identity file or unencrypted
        /// OpenSSH private key)
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
    },
    /// What changed from snapshot A to snapshot B, by resource type and namespace: keys
    /// added, removed, and changed (another value or lease), with their names. Reads no
    /// configuration
    Diff {
        a: PathBuf,
        b: PathBuf,
        #[arg(long, short, value_enum, default_value_t = InspectFormat::Table)]
        output: InspectFormat,
        /// How many keys of each kind (added, removed, changed) to name
        #[arg(long, value_name = "N", default_value_t = 50)]
        limit: usize,
        /// Identity that opens encrypted snapshots
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
    },
    /// Open an encrypted (and compressed) copy made with `[encryption]` and write the plain
    /// snapshot, which `etcdutl snapshot restore` accepts. SOURCE is a file, a record id or a
    /// remote key (downloaded). The standard tools do the same: `age -d -i KEY FILE | zstd -d`
    Decrypt {
        /// A file, a record id, or a key in the configured bucket
        #[arg(value_name = "FILE|RECORD|KEY")]
        source: String,
        /// An age identity file or an unencrypted OpenSSH private key
        #[arg(long, value_name = "FILE")]
        identity: PathBuf,
        /// Where to write the snapshot (created 0600; never overwritten)
        #[arg(long, short, value_name = "FILE")]
        output: PathBuf,
    },
    /// Guarded offline restore of this kubeadm node's etcd from a snapshot: checks everything,
    /// stops kube-apiserver and etcd by moving their manifests out, swaps in a data dir built
    /// from the snapshot (the old one is kept), rewrites etcd.yaml, waits for the restored
    /// member, rolls back on failure. Every step is journaled
    Restore(RestoreArgs),
    /// Rebuild a control-plane node whose disk was lost, from the bucket: the newest good
    /// backup of the node with a recovery bundle ([bundle]); its files (PKI, manifests, kubelet
    /// and kubeadm configuration, the API server's encryption config) put back, then the
    /// guarded restore of the snapshot. The kubelet must be stopped until it is done. Every
    /// step is journaled; `--rollback` undoes it
    Recover(RecoverArgs),
    /// Build an etcd data directory from a snapshot, as `etcdutl snapshot restore` does (same
    /// flags, same WAL and .snap bytes), checked first and published atomically. Touches no
    /// running etcd and no manifest; reads no configuration
    RestoreDatadir(RestoreDatadirArgs),
    /// Configuration commands
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print the shell completion script for SHELL (e.g. `etcdguard completions bash >
    /// /etc/bash_completion.d/etcdguard`); the packages install them already
    Completions {
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// Write the man pages (etcdguard.1 and one per command) into DIR; the packages are built
    /// with it
    #[command(hide = true)]
    Man {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The snapshot: a file, a record id (`etcdguard records`), or a remote key
    /// (`s3://bucket/key`, or a key in the configured bucket)
    #[arg(
        long,
        value_name = "FILE|RECORD|KEY",
        required_unless_present = "rollback"
    )]
    pub snapshot: Option<String>,
    /// Print the plan and every guard's verdict; change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation (without it, a real run asks on the terminal)
    #[arg(long, short)]
    pub yes: bool,
    /// Resolve every host path (manifests, PKI, data dir, state) under DIR: rescue from a
    /// mounted disk
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// All members of the restored cluster, name=peer-URL,… (the same on every node of a
    /// multi-member restore) [default: this member alone]
    #[arg(long, value_name = "NAME=URL,...")]
    pub initial_cluster: Option<String>,
    /// Cluster token of the restored cluster [default: a fresh etcd-restore-<time>, so restored
    /// members can never rejoin the old cluster; give every node the same one]
    #[arg(long, value_name = "TOKEN")]
    pub initial_cluster_token: Option<String>,
    /// Raise the revision by N and mark it compacted, so Kubernetes' watch caches re-list;
    /// 0 turns it off. The same on every node
    #[arg(long, value_name = "N", default_value_t = 1_000_000_000)]
    pub bump_revision: u64,
    /// Restore even though etcd answers with quorum, or the versions are more than one minor
    /// apart
    #[arg(long)]
    pub force: bool,
    /// Accept a snapshot without sha256 trailer (a data dir's member/snap/db)
    #[arg(long)]
    pub skip_hash_check: bool,
    /// Identity that opens an encrypted snapshot: an age identity file (`age-keygen`
    /// output) or an unencrypted OpenSSH private key. Plain snapshots need none
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// How long to wait for the restored (or rolled-back) member to be healthy
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
    /// Change the files only; do not wait for etcd to stop or start (no kubelet running, e.g.
    /// a disk mounted with --root)
    #[arg(long)]
    pub no_wait: bool,
    /// Undo a restore from its journal [default: the newest under /etc/kubernetes/tmp]
    #[arg(long, value_name = "JOURNAL", num_args = 0..=1, conflicts_with_all = ["snapshot", "dry_run"])]
    pub rollback: Option<Option<PathBuf>>,
}

#[derive(Debug, clap::Args)]
pub struct RecoverArgs {
    /// The member to recover [default: this machine's host name]
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// Use this backup record (from `records --remote`) instead of the newest good one
    #[arg(long, value_name = "ID")]
    pub record: Option<String>,
    /// The identity that opens the bundle and the snapshot (age identity file or unencrypted
    /// OpenSSH private key)
    #[arg(long, value_name = "FILE", required_unless_present = "rollback")]
    pub identity: Option<PathBuf>,
    /// The node's root file system is mounted here (a rescue system, a test)
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Replace files that exist and differ from the bundle (kept for --rollback)
    #[arg(long)]
    pub overwrite: bool,
    /// Show the plan and the restore's guards; change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation
    #[arg(long, short)]
    pub yes: bool,
    /// Undo the newest recover from its journal, from any point it reached
    #[arg(long, conflicts_with_all = ["dry_run", "record", "overwrite"])]
    pub rollback: bool,
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
    /// Identity that opens an encrypted snapshot: an age identity file (`age-keygen`
    /// output) or an unencrypted OpenSSH private key. Plain snapshots need none
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// The etcd minor that will run on the data dir; the dir is built as that version's
    /// etcdutl builds it, and refused when the snapshot's data is newer [default: the
    /// snapshot's own version, from its storage version, else its cluster version; 3.5 when it
    /// records neither]
    #[arg(long, value_enum, value_name = "MINOR")]
    pub target_version: Option<EtcdMinor>,
    /// Build even though the snapshot's version skips a minor to the target (etcd does not
    /// support that); newer data for an older etcd is refused regardless
    #[arg(long)]
    pub force: bool,
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

/// An etcd minor version etcdguard reads and builds for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EtcdMinor {
    #[value(name = "3.5")]
    V3_5,
    #[value(name = "3.6")]
    V3_6,
    #[value(name = "3.7")]
    V3_7,
}

impl From<EtcdMinor> for crate::etcdversion::Minor {
    fn from(m: EtcdMinor) -> Self {
        match m {
            EtcdMinor::V3_5 => crate::etcdversion::Minor::V3_5,
            EtcdMinor::V3_6 => crate::etcdversion::Minor::V3_6,
            EtcdMinor::V3_7 => crate::etcdversion::Minor::V3_7,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HealthFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InspectFormat {
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VerifyFormat {
    Text,
    Json,
}
