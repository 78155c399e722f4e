//! Whole configurations with their exact display, and broken ones with their exact problems:
//! what a refactoring of validation or display must leave as it is.

use super::*;

/// Every key set, every destination kind, every optional table: the display of it is pinned
/// byte for byte below (and round-trips).
const FULL: &str = r#"
schedule = "@hourly"
timezone = "Europe/Berlin"
paused = true
catch_up = false
state_dir = "/srv/eg"
metrics_file = "/var/lib/node/etcdguard.prom"

[etcd]
manifest = "/srv/manifests/etcd.yaml"
endpoint = "https://127.0.0.1:2379"
ca_cert = "/srv/pki/ca.crt"
client_cert = "/srv/pki/client.crt"
client_key = "/srv/pki/client.key"
timeout = "5m"
stall_timeout = "30s"
dial_timeout = "3s"
rate_limit = "50MiB/s"

[local_storage]
path = "/srv/snapshots"
keep = 5
keep_daily = 7
keep_monthly = 12
min_keep = 2

[remote_storage]
bucket = "b1"
region = "eu-west-1"
endpoint = "https://s3.example"
prefix = "prod"
force_path_style = true
ca_bundle = "/etc/ca.pem"
insecure_skip_tls_verify = true
sse = "aws:kms"
sse_kms_key_id = "k-1"
object_lock_mode = "governance"
object_lock_period = "30d"
credentials_file = "/etc/etcdguard/s3"
part_size = "16MiB"
concurrency = 4
timeout = "1h"
stall_timeout = "2m"
rate_limit = "20MiB/s"
ttl = "90d"
keep_weekly = 4

[[destination]]
name = "gcs1"
type = "gcs"
bucket = "g"
anonymous = true
ttl = "forever"

[[destination]]
name = "az"
type = "azblob"
container = "c"
account_name = "acct"
endpoint = "https://az.example"
systemd_credential = "az-key"

[[destination]]
name = "nfs"
type = "fs"
path = "/mnt/nfs"
require_mount = false
keep = 10

[encryption]
recipients = ["age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"]
compression_level = 9
encrypt_local = true

[bundle]
root = "/host"
extra_paths = ["/etc/a", "/etc/b"]

[drill]
schedule = "@weekly"
source = "remote"
scratch_dir = "/srv/drill"
identity = "/etc/k"
etcd_binary = "/usr/bin/etcd"
timeout = "5m"

[records]
successful_history_limit = 10
failed_history_limit = 5
"#;

/// One destination per cluster, the other SSE, no compression, an empty bundle list.
const CLUSTER: &str = r#"
[remote_storage]
name = "main"
bucket = "b"
region = "r"
sse = "AES256"
per = "cluster"
cluster_lease = "30s"
keep_hourly = 24

[encryption]
recipients = ["age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"]
compression = "none"

[bundle]
"#;

const DEFAULTS_SHOWN: &str = r##"schedule = "0 */6 * * *"
timezone = "UTC"
paused = false
catch_up = true
state_dir = "/var/lib/etcdguard"
# metrics_file unset: no Prometheus textfile

[etcd]
manifest = "/etc/kubernetes/manifests/etcd.yaml"
# endpoint: the loopback client URL in the manifest
ca_cert = "/etc/kubernetes/pki/etcd/ca.crt"
client_cert = "/etc/kubernetes/pki/etcd/healthcheck-client.crt"
client_key = "/etc/kubernetes/pki/etcd/healthcheck-client.key"
timeout = "10m"
stall_timeout = "1m"
dial_timeout = "10s"
# rate_limit unset: no ceiling besides the pace
pacing = "auto"
# metrics_url: the manifest's --listen-metrics-urls on loopback

[local_storage]
path = "/var/lib/etcdguard/snapshots"
ttl = "7days"
min_keep = 3

# no [remote_storage] and no [[destination]]: local copies only

# [encryption] absent: copies are the plain snapshot

[drill]
# no schedule: drills only by hand (`etcdguard drill`)
source = "local"
scratch_dir = "/var/lib/etcdguard/drill"
timeout = "2m"

[records]
successful_history_limit = 1000
failed_history_limit = 100
"##;
const FULL_SHOWN: &str = r##"schedule = "@hourly"
timezone = "Europe/Berlin"
paused = true
catch_up = false
state_dir = "/srv/eg"
metrics_file = "/var/lib/node/etcdguard.prom"

[etcd]
manifest = "/srv/manifests/etcd.yaml"
endpoint = "https://127.0.0.1:2379"
ca_cert = "/srv/pki/ca.crt"
client_cert = "/srv/pki/client.crt"
client_key = "/srv/pki/client.key"
timeout = "5m"
stall_timeout = "30s"
dial_timeout = "3s"
rate_limit = "52428800B/s"
pacing = "auto"
# metrics_url: the manifest's --listen-metrics-urls on loopback

[local_storage]
path = "/srv/snapshots"
ttl = "forever"
keep = 5
keep_daily = 7
keep_monthly = 12
min_keep = 2
# hours, days, weeks (ISO, from Monday) and months in the timezone "Europe/Berlin"

[[destination]]
name = "remote"
type = "s3"
bucket = "b1"
region = "eu-west-1"
endpoint = "https://s3.example"
prefix = "prod/"
force_path_style = true
ca_bundle = "/etc/ca.pem"
insecure_skip_tls_verify = true  # TLS NOT VERIFIED
sse = "aws:kms"
sse_kms_key_id = "k-1"
object_lock_mode = "GOVERNANCE"
object_lock_period = "30days"
credentials_file = "/etc/etcdguard/s3"
part_size = 16777216
concurrency = 4
timeout = "1h"
stall_timeout = "2m"
rate_limit = "20971520B/s"
ttl = "2months 29days 2h 52m 48s"
keep_weekly = 4
min_keep = 3
# hours, days, weeks (ISO, from Monday) and months in the timezone "Europe/Berlin"
per = "node"

[[destination]]
name = "gcs1"
type = "gcs"
bucket = "g"
anonymous = true  # NO CREDENTIALS
prefix = ""
systemd_credential = "etcdguard-gcs1"
# credentials: $CREDENTIALS_DIRECTORY/etcdguard-gcs1 (systemd LoadCredential=), else GCS application default credentials
part_size = 5242880
concurrency = 2
timeout = "30m"
stall_timeout = "1m"
ttl = "forever"
min_keep = 3
# neither ttl nor a keep rule: snapshots here are never deleted
per = "node"

[[destination]]
name = "az"
type = "azblob"
container = "c"
account_name = "acct"
endpoint = "https://az.example"
prefix = ""
systemd_credential = "az-key"
# credentials: $CREDENTIALS_DIRECTORY/az-key (systemd LoadCredential=), else none: a key is required
part_size = 5242880
concurrency = 2
timeout = "30m"
stall_timeout = "1m"
ttl = "30days"
min_keep = 3
per = "node"

[[destination]]
name = "nfs"
type = "fs"
path = "/mnt/nfs"
require_mount = false
prefix = ""
systemd_credential = "etcdguard-nfs"
# credentials: $CREDENTIALS_DIRECTORY/etcdguard-nfs (systemd LoadCredential=), else none needed (the file system's permissions)
part_size = 5242880
concurrency = 2
timeout = "30m"
stall_timeout = "1m"
ttl = "forever"
keep = 10
min_keep = 3
per = "node"

[encryption]
# copies are sealed as <snapshot>.db.zst.age
recipients = [
  "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p",
]
compression = "zstd"
compression_level = 9
encrypt_local = true

[bundle]
root = "/host"
extra_paths = ["/etc/a", "/etc/b"]

[drill]
schedule = "@weekly"
source = "remote"
scratch_dir = "/srv/drill"
identity = "/etc/k"
etcd_binary = "/usr/bin/etcd"
timeout = "5m"

[records]
successful_history_limit = 10
failed_history_limit = 5
"##;
const CLUSTER_SHOWN: &str = r##"schedule = "0 */6 * * *"
timezone = "UTC"
paused = false
catch_up = true
state_dir = "/var/lib/etcdguard"
# metrics_file unset: no Prometheus textfile

[etcd]
manifest = "/etc/kubernetes/manifests/etcd.yaml"
# endpoint: the loopback client URL in the manifest
ca_cert = "/etc/kubernetes/pki/etcd/ca.crt"
client_cert = "/etc/kubernetes/pki/etcd/healthcheck-client.crt"
client_key = "/etc/kubernetes/pki/etcd/healthcheck-client.key"
timeout = "10m"
stall_timeout = "1m"
dial_timeout = "10s"
# rate_limit unset: no ceiling besides the pace
pacing = "auto"
# metrics_url: the manifest's --listen-metrics-urls on loopback

[local_storage]
path = "/var/lib/etcdguard/snapshots"
ttl = "7days"
min_keep = 3

[[destination]]
name = "main"
type = "s3"
bucket = "b"
region = "r"
prefix = ""
force_path_style = false
sse = "AES256"
systemd_credential = "etcdguard-s3"
# credentials: $CREDENTIALS_DIRECTORY/etcdguard-s3 (systemd LoadCredential=), else the AWS chain (environment, profile, instance role)
part_size = 5242880
concurrency = 2
timeout = "30m"
stall_timeout = "1m"
ttl = "forever"
keep_hourly = 24
min_keep = 3
# hours, days, weeks (ISO, from Monday) and months in the timezone "UTC"
per = "cluster"
cluster_lease = "30s"

[encryption]
# copies are sealed as <snapshot>.db.age
recipients = [
  "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p",
]
compression = "none"
encrypt_local = false

[bundle]
root = "/"
extra_paths = []

[drill]
# no schedule: drills only by hand (`etcdguard drill`)
source = "local"
scratch_dir = "/var/lib/etcdguard/drill"
timeout = "2m"

[records]
successful_history_limit = 1000
failed_history_limit = 100
"##;

#[test]
fn redacted_display_is_pinned_byte_for_byte() {
    for (text, shown) in [
        ("", DEFAULTS_SHOWN),
        (FULL, FULL_SHOWN),
        (CLUSTER, CLUSTER_SHOWN),
    ] {
        let c = parse(text, None).unwrap();
        assert_eq!(c.to_redacted_toml(), shown);
        let again = parse(shown, None).unwrap();
        assert_eq!(again.to_redacted_toml(), shown);
    }
}

/// Many problems in one destination table: all of them, in this order, worded so.
const BAD_LEGACY: &str = r#"
[remote_storage]
name = "no spaces"
type = "gcs"
region = "r"
container = "c"
account_name = "a"
path = "/p"
endpoint = "ftp://x"
prefix = "a//b"
ca_bundle = "rel"
sse = "AES256"
sse_kms_key_id = "k"
object_lock_mode = "forever"
credentials_file = "/c"
anonymous = true
part_size = "1MiB"
concurrency = 17
timeout = "x"
stall_timeout = 0
rate_limit = "5MiB"
keep = 1
min_keep = 2
per = "all"
cluster_lease = "-1s"
"#;

/// Problems of several `[[destination]]`s and between them.
const BAD_LIST: &str = r#"
[remote_storage]
bucket = "b"
region = "r"
object_lock_mode = "COMPLIANCE"
sse = "DES"
per = "cluster"

[[destination]]
type = "tape"

[[destination]]
name = "remote"
type = "fs"
bucket = "b"
region = "r"
endpoint = "https://x"
object_lock_period = "1d"
credentials_file = "/c"
systemd_credential = "x"

[[destination]]
name = "az"
type = "azblob"
region = "r"
path = "rel"
sse_kms_key_id = "k"
systemd_credential = "bad/name"
object_lock_mode = "GOVERNANCE"
object_lock_period = "1d"
keep_last = 2
keep = 3

[[destination]]
name = "fs2"
kind = "fs"
bucket = ""
path = "rel"
"#;

/// Problems outside the destinations, in every other table.
const BAD_TABLES: &str = r#"
schedule = "61 * * * *"
timezone = "Mars/Olympus"
state_dir = "var/lib"
metrics_file = "metrics.txt"

[etcd]
manifest = "m.yaml"
endpoint = "http://127.0.0.1:2379"
ca_cert = "ca.crt"
client_cert = "c.crt"
client_key = "c.key"
timeout = "5 minutez"
stall_timeout = -1
dial_timeout = "0s"
rate_limit = "fast"

[local_storage]
path = "snaps"
ttl = "-1d"
keep = 0
keep_daily = 0
min_keep = 0

[encryption]
recipients = ["age1nope"]
compression = "lz4"
compression_level = 0

[bundle]
root = "host"
extra_paths = ["etc"]

[drill]
schedule = "nope"
source = "remote"
scratch_dir = "drill"
identity = "k"
etcd_binary = "etcd"
timeout = "soon"

[records]
successful_history_limit = 0
failed_history_limit = -3
"#;

const BAD_LEGACY_PROBLEMS: &str = r##"/etc/x.toml:3:8: remote_storage.name: "no spaces" is not a destination name: use up to 40 letters, digits, '-' or '_'
/etc/x.toml:5:10: remote_storage.region: applies to s3 destinations only, and this one is type = "gcs"
/etc/x.toml:2:1: remote_storage.bucket: is required in a [remote_storage] of type = "gcs"
/etc/x.toml:6:13: remote_storage.container: applies to azblob destinations only, and this one is type = "gcs"
/etc/x.toml:7:16: remote_storage.account_name: applies to azblob destinations only, and this one is type = "gcs"
/etc/x.toml:8:8: remote_storage.path: applies to fs destinations only, and this one is type = "gcs"
/etc/x.toml:9:12: remote_storage.endpoint: "ftp://x" must be an http:// or https:// URL
/etc/x.toml:10:10: remote_storage.prefix: "a//b" must not contain "//" or ".."
/etc/x.toml:11:13: remote_storage.ca_bundle: must be an absolute path (got "rel"); the daemon's working directory is /
/etc/x.toml:13:18: remote_storage.sse_kms_key_id: only applies to sse = "aws:kms"
/etc/x.toml:2:1: remote_storage.sse: server-side encryption headers are S3's: use [encryption] for every kind
/etc/x.toml:14:20: remote_storage.object_lock_mode: "FOREVER" is not an Object Lock mode: use "GOVERNANCE" or "COMPLIANCE"
/etc/x.toml:14:20: remote_storage.object_lock_mode: Object Lock is S3's: for GCS and Azure set a retention policy on the bucket or container itself
/etc/x.toml:14:20: remote_storage.object_lock_period: is required with object_lock_mode: how long each copy stays locked
/etc/x.toml:2:1: remote_storage.anonymous: anonymous = true sends no credentials: drop credentials_file or anonymous
/etc/x.toml:17:13: remote_storage.part_size: 1048576 bytes is outside S3's part size limits (5MiB to 5GiB)
/etc/x.toml:18:15: remote_storage.concurrency: must be between 1 and 16 (got 17)
/etc/x.toml:19:11: remote_storage.timeout: "x" is not a duration (expected number at 0); use a string such as "90d", "12h", "30m" or integer seconds
/etc/x.toml:20:17: remote_storage.stall_timeout: must be a positive duration (got 0); write seconds as a positive integer or a string such as "7d" or "12h"
/etc/x.toml:21:14: remote_storage.rate_limit: must be a rate such as "50MiB/s"
/etc/x.toml:22:8: remote_storage.keep: keep (1) must be at least min_keep (2): min_keep snapshots are never deleted
/etc/x.toml:24:7: remote_storage.per: "all" is not a choice: "node" (every node uploads its own copy) or "cluster" (one copy per scheduled slot for the cluster)
/etc/x.toml:25:17: remote_storage.cluster_lease: must be a positive duration (got "-1s")"##;
const BAD_LIST_PROBLEMS: &str = r##"/etc/x.toml:6:7: remote_storage.sse: "DES" is not supported; use "AES256" or "aws:kms"
/etc/x.toml:5:20: remote_storage.object_lock_period: is required with object_lock_mode: how long each copy stays locked
/etc/x.toml:9:1: destination[1].name: is required in a [[destination]]: it names the copy in records and metrics
/etc/x.toml:10:8: destination[1].type: unsupported storage type "tape"; supported: "s3", "gcs", "azblob", "fs"
/etc/x.toml:9:1: destination[1].bucket: is required in a [[destination]] of type = "s3"
/etc/x.toml:9:1: destination[1].region: is required in a [[destination]] of type = "s3"
/etc/x.toml:16:10: destination.remote.region: applies to s3 destinations only, and this one is type = "fs"
/etc/x.toml:15:10: destination.remote.bucket: applies to s3, gcs and azblob destinations only, and this one is type = "fs"
/etc/x.toml:12:1: destination.remote.path: is required in a [[destination]] of type = "fs": the mounted directory
/etc/x.toml:12:1: destination.remote.endpoint: an fs destination has no endpoint (got "https://x"): it writes to `path`
/etc/x.toml:18:22: destination.remote.object_lock_period: needs object_lock_mode ("GOVERNANCE" or "COMPLIANCE")
/etc/x.toml:19:20: destination.remote.credentials_file: set credentials_file or systemd_credential, not both
/etc/x.toml:13:8: destination.remote.name: another destination is named "remote" already: each needs its own name (it names the copy in records and metrics)
/etc/x.toml:25:10: destination.az.region: applies to s3 destinations only, and this one is type = "azblob"
/etc/x.toml:22:1: destination.az.account_name: is required in a [[destination]] of type = "azblob"
/etc/x.toml:22:1: destination.az.container: is required in a [[destination]] of type = "azblob"
/etc/x.toml:26:8: destination.az.path: applies to fs destinations only, and this one is type = "azblob"
/etc/x.toml:27:18: destination.az.sse_kms_key_id: needs sse = "aws:kms"
/etc/x.toml:29:20: destination.az.object_lock_mode: Object Lock is S3's: for GCS and Azure set a retention policy on the bucket or container itself
/etc/x.toml:28:22: destination.az.systemd_credential: "bad/name" is not a systemd credential name
/etc/x.toml:31:13: destination.az.keep_last: keep_last is another name for keep (set to 3 here): set one of them
/etc/x.toml:37:10: destination.fs2.bucket: applies to s3, gcs and azblob destinations only, and this one is type = "fs"
/etc/x.toml:38:8: destination.fs2.path: must be an absolute path (got "rel"); the daemon's working directory is /
/etc/x.toml:2:1: remote_storage.per: per = "cluster" works with one destination only: with several, every node uploads its own copy to each"##;
const BAD_TABLES_PROBLEMS: &str = r##"/etc/x.toml:2:12: schedule: "61 * * * *" is not a valid cron expression: Component error: Number out of bounds.
/etc/x.toml:3:12: timezone: "Mars/Olympus" is not a known IANA time zone (e.g. "UTC", "Europe/Berlin"), nor "local"
/etc/x.toml:4:13: state_dir: must be an absolute path (got "var/lib"); the daemon's working directory is /
/etc/x.toml:5:16: metrics_file: must be an absolute path (got "metrics.txt"); the daemon's working directory is /
/etc/x.toml:5:16: metrics_file: "metrics.txt" must end in .prom: node_exporter's textfile collector reads only *.prom files
/etc/x.toml:9:12: etcd.endpoint: "http://127.0.0.1:2379" must be an https:// URL: etcdguard always talks TLS with the host PKI (kubeadm's etcd serves clients over TLS only)
/etc/x.toml:8:12: etcd.manifest: must be an absolute path (got "m.yaml"); the daemon's working directory is /
/etc/x.toml:10:11: etcd.ca_cert: must be an absolute path (got "ca.crt"); the daemon's working directory is /
/etc/x.toml:11:15: etcd.client_cert: must be an absolute path (got "c.crt"); the daemon's working directory is /
/etc/x.toml:12:14: etcd.client_key: must be an absolute path (got "c.key"); the daemon's working directory is /
/etc/x.toml:13:11: etcd.timeout: "5 minutez" is not a duration (unknown time unit "minutez", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations)); use a string such as "90d", "12h", "30m" or integer seconds
/etc/x.toml:14:17: etcd.stall_timeout: must be a positive duration (got -1); write seconds as a positive integer or a string such as "7d" or "12h"
/etc/x.toml:15:16: etcd.dial_timeout: must be a positive duration (got 0)
/etc/x.toml:16:14: etcd.rate_limit: must be a rate such as "50MiB/s"
/etc/x.toml:19:8: local_storage.path: must be an absolute path (got "snaps"); the daemon's working directory is /
/etc/x.toml:21:8: local_storage.keep: must be at least 1 (got 0): the number of newest good snapshots kept
/etc/x.toml:22:14: local_storage.keep_daily: must be at least 1 (got 0): how many periods keep their newest good snapshot
/etc/x.toml:20:7: local_storage.ttl: must be a positive duration (got "-1d")
/etc/x.toml:23:12: local_storage.min_keep: must be at least 1 (got 0): the number of newest good snapshots that are never deleted
/etc/x.toml:26:15: encryption.recipients: not a valid age recipient: invalid Bech32 encoding
/etc/x.toml:28:21: encryption.compression_level: must be a zstd level from 1 to 19 (got 0)
/etc/x.toml:27:15: encryption.compression: "lz4" is not a compression: use "zstd" or "none"
/etc/x.toml:30:1: bundle: a recovery bundle holds the cluster's CA keys: it needs [encryption] (it is never written unencrypted) and [remote_storage] or a [[destination]] (where it is kept)
/etc/x.toml:31:8: bundle.root: must be an absolute path (got "host"); the daemon's working directory is /
/etc/x.toml:32:16: bundle.extra_paths: must be an absolute path (got "etc"); the daemon's working directory is /
/etc/x.toml:35:12: drill.schedule: "nope" is not a 5-field cron expression (minute hour day-of-month month day-of-week, e.g. "0 */6 * * *"), nor one of @hourly, @daily, @weekly, @monthly, @yearly
/etc/x.toml:36:10: drill.source: "remote" needs [remote_storage] or a [[destination]]: there is no remote copy to drill
/etc/x.toml:38:12: drill.identity: must be an absolute path (got "k"); the daemon's working directory is /
/etc/x.toml:37:15: drill.scratch_dir: must be an absolute path (got "drill"); the daemon's working directory is /
/etc/x.toml:39:15: drill.etcd_binary: must be an absolute path (got "etcd"); the daemon's working directory is /
/etc/x.toml:40:11: drill.timeout: "soon" is not a duration (expected number at 0); use a string such as "90d", "12h", "30m" or integer seconds
/etc/x.toml:43:28: records.successful_history_limit: must be at least 1 (got 0): how many such records the history keeps
/etc/x.toml:44:24: records.failed_history_limit: must be at least 1 (got -3): how many such records the history keeps"##;

/// The order is the order of the checks. A few wordings come from dependencies (the cron,
/// duration and age parsers), as locked in Cargo.lock.
#[test]
fn problems_are_pinned_word_for_word_and_in_order() {
    for (text, want) in [
        (BAD_LEGACY, BAD_LEGACY_PROBLEMS),
        (BAD_LIST, BAD_LIST_PROBLEMS),
        (BAD_TABLES, BAD_TABLES_PROBLEMS),
    ] {
        let got = errs(text).join("\n");
        assert_eq!(got, want);
    }
}
