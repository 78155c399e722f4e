use super::*;

fn errs(text: &str) -> Vec<String> {
    parse(text, Some(Path::new("/etc/x.toml")))
        .unwrap_err()
        .problems
        .iter()
        .map(|p| p.to_string())
        .collect()
}

#[test]
fn empty_file_gives_kubeadm_defaults() {
    let c = parse("", None).unwrap();
    assert_eq!(c.etcd.ca_cert, Path::new(DEFAULT_CA_CERT));
    assert_eq!(
        c.local_storage.path,
        Path::new("/var/lib/etcdguard/snapshots")
    );
    assert_eq!(c.local_storage.retention.min_keep, 3);
    assert_eq!(
        c.local_storage.retention.ttl,
        Some(Duration::from_secs(7 * 86400))
    );
    assert_eq!(c.local_storage.retention.keep, None);
    assert_eq!(c.history.successful, 1000);
    assert_eq!(c.history.failed, 100);
    assert!(c.destinations.is_empty());
    assert!(!c.paused);
}

#[test]
fn durations_accept_seconds_and_text() {
    let c = parse(
        "[local_storage]\nttl = 7776000\n[etcd]\ntimeout = \"90s\"",
        None,
    )
    .unwrap();
    assert_eq!(
        c.local_storage.retention.ttl,
        Some(Duration::from_secs(7776000))
    );
    assert_eq!(c.etcd.timeout, Duration::from_secs(90));
}

#[test]
fn unknown_key_is_an_error_with_position() {
    let e = errs("schedule = \"@daily\"\n[local_storage]\nttll = \"1d\"\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("/etc/x.toml:3:1: "), "{}", e[0]);
    assert!(e[0].contains("unknown field `ttll`"), "{}", e[0]);
}

#[test]
fn every_problem_is_reported() {
    let e = errs(
        "schedule = \"61 * * * *\"\ntimezone = \"Mars/Olympus\"\n\
         [local_storage]\nttl = -5\nmin_keep = 0\n",
    );
    assert_eq!(e.len(), 4, "{e:#?}");
    assert!(e[0].starts_with("/etc/x.toml:1:12: schedule: "), "{}", e[0]);
    assert!(e[1].contains("timezone: "), "{}", e[1]);
    assert!(
        e[2].contains(":4:7: local_storage.ttl: must be a positive"),
        "{}",
        e[2]
    );
    assert!(
        e[3].contains("local_storage.min_keep: must be at least 1"),
        "{}",
        e[3]
    );
}

#[test]
fn keep_ttl_and_min_keep() {
    // keep alone: no age limit, min_keep follows keep when smaller.
    let c = parse("[local_storage]\nkeep = 2\n", None).unwrap();
    let r = c.local_storage.retention;
    assert_eq!((r.ttl, r.keep, r.min_keep), (None, Some(2), 2));
    let c = parse("[local_storage]\nkeep = 40\nttl = \"30d\"\n", None).unwrap();
    let r = c.local_storage.retention;
    assert_eq!(r.ttl, Some(Duration::from_secs(30 * 86400)));
    assert_eq!((r.keep, r.min_keep), (Some(40), 3));
    let c = parse("[local_storage]\nttl = \"forever\"\n", None).unwrap();
    assert!(c.local_storage.retention.keeps_forever());
    assert!(c.to_redacted_toml().contains("never deleted"));

    let e = errs("[local_storage]\nkeep = 2\nmin_keep = 3\n");
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].contains(":2:8: local_storage.keep: keep (2) must be at least min_keep (3)"),
        "{}",
        e[0]
    );
    let e = errs("[local_storage]\nkeep = 0\n[remote_storage]\nbucket = \"b\"\nregion = \"r\"\nkeep = 1\nmin_keep = 2\n");
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e[0].contains("local_storage.keep: must be at least 1"),
        "{}",
        e[0]
    );
    assert!(
        e[1].contains("remote_storage.keep: keep (1) must be at least min_keep (2)"),
        "{}",
        e[1]
    );
}

#[test]
fn daemon_settings() {
    let c = parse("", None).unwrap();
    assert!(c.catch_up);
    assert_eq!(c.metrics_file, None);
    let c = parse(
        "catch_up = false\nmetrics_file = \"/var/lib/node/etcdguard.prom\"\n",
        None,
    )
    .unwrap();
    assert!(!c.catch_up);
    assert_eq!(
        c.metrics_file.as_deref(),
        Some(Path::new("/var/lib/node/etcdguard.prom"))
    );
    let e = errs("metrics_file = \"/var/lib/node/etcdguard.txt\"\n");
    assert!(e[0].contains("metrics_file: "), "{}", e[0]);
    assert!(e[0].contains(".prom"), "{}", e[0]);
    // 6-field schedules only for tests.
    assert!(parse("schedule = \"*/5 * * * * *\"\n", None).is_err());
    assert!(parse_with("schedule = \"*/5 * * * * *\"\n", None, true).is_ok());
}

#[test]
fn records_history_limits() {
    let c = parse(
        "[records]\nsuccessful_history_limit = 10\nfailed_history_limit = 5\n",
        None,
    )
    .unwrap();
    assert_eq!((c.history.successful, c.history.failed), (10, 5));
    let e = errs("[records]\nfailed_history_limit = 0\n");
    assert!(
        e[0].contains("records.failed_history_limit: must be at least 1"),
        "{}",
        e[0]
    );
    let e = errs("[records]\nlimit = 3\n");
    assert!(e[0].contains("unknown field `limit`"), "{}", e[0]);
}

#[test]
fn bad_duration_text() {
    let e = errs("[local_storage]\nttl = \"7 dayz\"\n");
    assert!(e[0].contains("is not a duration"), "{}", e[0]);
    let e = errs("[local_storage]\nttl = \"-7d\"\n");
    assert!(e[0].contains("positive"), "{}", e[0]);
}

#[test]
fn endpoint_must_be_one_https_url() {
    assert!(errs("[etcd]\nendpoint = \"http://127.0.0.1:2379\"")[0].contains("https://"));
    assert!(errs("[etcd]\nendpoint = \"https://a:1,https://b:2\"")[0].contains("one URL"));
    let c = parse("[etcd]\nendpoint = \"https://[::1]:2379\"", None).unwrap();
    assert_eq!(c.etcd.endpoint.as_deref(), Some("https://[::1]:2379"));
}

#[test]
fn relative_paths_are_rejected() {
    let e = errs("state_dir = \"var/lib\"");
    assert!(
        e[0].contains("state_dir: must be an absolute path"),
        "{}",
        e[0]
    );
}

#[test]
fn remote_storage_fields() {
    let c = parse(
        "[remote_storage]\nbucket = \"b1\"\nregion = \"eu-west-1\"\nprefix = \"prod\"\n\
         sse = \"aws:kms\"\nsse_kms_key_id = \"k-1\"\npart_size = \"16MiB\"\n\
         concurrency = 4\ncredentials_file = \"/etc/etcdguard/s3\"\nca_bundle = \"/etc/ca.pem\"\n",
        None,
    )
    .unwrap();
    let r = c.destinations[0].clone();
    assert_eq!(r.prefix, "prod/");
    assert_eq!(r.sse, Some(Sse::Kms(Some("k-1".into()))));
    assert_eq!((r.part_size, r.concurrency), (16 << 20, 4));
    assert_eq!(r.credentials, Credentials::File("/etc/etcdguard/s3".into()));
    assert!(!r.insecure_skip_tls_verify);
    let d = parse("[remote_storage]\nbucket = \"b1\"\nregion = \"r\"\n", None).unwrap();
    let d = d.destinations[0].clone();
    assert_eq!(
        d.credentials,
        Credentials::SystemdOrDefault(SYSTEMD_CREDENTIAL.into())
    );
    assert_eq!(d.part_size, DEFAULT_PART_SIZE);

    let e = errs(
        "[remote_storage]\nbucket = \"b\"\nregion = \"r\"\nsse = \"DES\"\n\
         part_size = \"1MiB\"\nconcurrency = 0\ncredentials_file = \"rel/path\"\n\
         access_key = \"AKIA\"\n",
    );
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(e[0].contains("unknown field `access_key`"), "{}", e[0]);
    let e = errs(
        "[remote_storage]\nbucket = \"b\"\nregion = \"r\"\nsse = \"DES\"\n\
         part_size = \"1MiB\"\nconcurrency = 0\ncredentials_file = \"rel/path\"\n",
    );
    assert_eq!(e.len(), 4, "{e:#?}");
    assert!(
        e[0].contains("remote_storage.sse: \"DES\" is not supported"),
        "{}",
        e[0]
    );
    assert!(
        e[1].contains("remote_storage.credentials_file: must be an absolute"),
        "{}",
        e[1]
    );
    assert!(
        e[2].contains("remote_storage.part_size: 1048576 bytes is outside"),
        "{}",
        e[2]
    );
    assert!(
        e[3].contains("remote_storage.concurrency: must be between 1 and 16"),
        "{}",
        e[3]
    );
}

#[test]
fn remote_requires_bucket_and_region() {
    let e = errs("[remote_storage]\ntype = \"s3\"\n");
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(e[0].contains("remote_storage.bucket: is required"));
    assert!(e[1].contains("remote_storage.region: is required"));
}

#[test]
fn syntax_error_has_position() {
    let e = errs("schedule = \n");
    assert!(e[0].starts_with("/etc/x.toml:1:"), "{}", e[0]);
}

#[test]
fn shipped_example_config_is_valid_and_equals_the_defaults() {
    let example = parse(
        include_str!("../../config/etcdguard.toml"),
        Some(Path::new("config/etcdguard.toml")),
    )
    .unwrap();
    let defaults = parse("", None).unwrap();
    assert_eq!(example.to_redacted_toml(), defaults.to_redacted_toml());
}

#[test]
fn redacted_display_round_trips() {
    let c = parse(
        "[remote_storage]\nbucket = \"b\"\nregion = \"r\"\nendpoint = \"https://s3\"\n",
        None,
    )
    .unwrap();
    let shown = c.to_redacted_toml();
    let again = parse(&shown, None).unwrap();
    assert_eq!(again.to_redacted_toml(), shown);
}

#[test]
fn encryption_and_bundle_settings() {
    let r = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";
    let remote = "[remote_storage]\nbucket = \"b\"\nregion = \"r\"\n";
    // A bundle holds CA keys: never without encryption.
    let e = errs(&format!("{remote}[bundle]\n"));
    assert!(
        e[0].contains("bundle: a recovery bundle holds the cluster's CA keys"),
        "{e:?}"
    );
    let c = parse(
        &format!("{remote}[encryption]\nrecipients = [{r:?}]\n[bundle]\n"),
        None,
    )
    .unwrap();
    assert_eq!(
        c.encryption.as_ref().unwrap().compression,
        Compression::Zstd(3)
    );
    assert_eq!(c.bundle.as_ref().unwrap().root, Path::new("/"));
    assert!(c.to_redacted_toml().contains(r));
    let e = errs(&format!(
        "[encryption]\nrecipients = [{r:?}]\ncompression = \"lz4\"\ncompression_level = 40\n"
    ));
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e
        .iter()
        .any(|m| m.contains("/etc/x.toml:4:") && m.contains("1 to 19")));
    assert!(e.iter().any(|m| m.contains("\"lz4\" is not a compression")));
    let c = parse(
        &format!("[encryption]\nrecipients = [{r:?}]\ncompression = \"none\"\n"),
        None,
    )
    .unwrap();
    assert_eq!(c.encryption.unwrap().suffix(), ".age");
}

#[test]
fn rate_limit_is_a_rate() {
    let c = parse("[etcd]\nrate_limit = \"50MiB/s\"\n", None).unwrap();
    assert_eq!(c.etcd.rate_limit, Some(50 << 20));
    assert_eq!(parse("", None).unwrap().etcd.rate_limit, None);
    let e = errs("[etcd]\nrate_limit = \"50MiB\"\n");
    assert!(
        e[0].contains("/etc/x.toml:2:") && e[0].contains("\"50MiB/s\""),
        "{e:?}"
    );
}

#[test]
fn pacing_is_auto_by_default_and_the_metrics_url_plain_http() {
    let c = parse("", None).unwrap();
    assert_eq!(c.etcd.pacing, PacingChoice::Auto);
    assert_eq!(c.etcd.metrics_url, None);
    let c = parse(
        "[etcd]\npacing = \"off\"\nmetrics_url = \"http://127.0.0.1:2381/metrics\"\n",
        None,
    )
    .unwrap();
    assert_eq!(c.etcd.pacing, PacingChoice::Off);
    assert_eq!(
        c.etcd.metrics_url.as_deref(),
        Some("http://127.0.0.1:2381/metrics")
    );
    let e = errs("[etcd]\npacing = \"gentle\"\n");
    assert!(
        e[0].contains("/etc/x.toml:2:") && e[0].contains("etcd.pacing") && e[0].contains("\"off\""),
        "{e:?}"
    );
    let e = errs("[etcd]\nmetrics_url = \"https://127.0.0.1:2381\"\n");
    assert!(
        e[0].contains("etcd.metrics_url") && e[0].contains("plain HTTP"),
        "{e:?}"
    );
}

#[test]
fn drill_settings() {
    let c = parse("", None).unwrap();
    assert!(c.drill.schedule.is_none());
    assert_eq!(c.drill.source, DrillSource::Local);
    assert_eq!(c.drill.scratch_dir, Path::new("/var/lib/etcdguard/drill"));
    let c = parse(
        "[drill]\nschedule = \"@weekly\"\netcd_binary = \"/usr/local/bin/etcd\"\ntimeout = \"5m\"",
        None,
    )
    .unwrap();
    assert_eq!(c.drill.schedule.unwrap().expression(), "@weekly");
    assert_eq!(c.drill.timeout, Duration::from_secs(300));
    let e = errs("[drill]\nsource = \"remote\"\n");
    assert!(
        e[0].contains("drill.source") && e[0].contains("[remote_storage]"),
        "{e:?}"
    );
    let e = errs("[drill]\nsource = \"tape\"\nschedule = \"nope\"\n");
    assert_eq!(e.len(), 2, "{e:?}");
    // The drill's API server reads the drill's etcd.
    let e = errs("[drill]\napiserver_binary = \"/usr/local/bin/kube-apiserver\"\n");
    assert!(
        e[0].contains("drill.apiserver_binary") && e[0].contains("etcd_binary"),
        "{e:?}"
    );
    let c = parse(
        "[drill]\netcd_binary = \"/e\"\napiserver_binary = \"/usr/local/bin/kube-apiserver\"\n",
        None,
    )
    .unwrap();
    assert_eq!(
        c.drill.apiserver_binary.as_deref(),
        Some(Path::new("/usr/local/bin/kube-apiserver"))
    );
    // A scheduled drill of sealed copies needs a key that opens them.
    let sealed = "[encryption]\nrecipients = [\"age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p\"]\nencrypt_local = true\n";
    let e = errs(&format!("{sealed}[drill]\nschedule = \"@daily\"\n"));
    assert!(e[0].contains("drill.identity"), "{e:?}");
    assert!(parse(
        &format!("{sealed}[drill]\nschedule = \"@daily\"\nidentity = \"/etc/k\"\n"),
        None
    )
    .is_ok());
    // By hand only: no identity needed now (`etcdguard drill --identity` gives one).
    assert!(parse(sealed, None).is_ok());
}

#[test]
fn per_cluster_remote_copies() {
    let base = "[remote_storage]\nbucket = \"b\"\nregion = \"r\"\n";
    let c = parse(base, None).unwrap();
    let r = c.destinations[0].clone();
    assert!(!r.per_cluster);
    assert_eq!(r.cluster_lease, Duration::from_secs(15));
    let c = parse(
        &format!("{base}per = \"cluster\"\ncluster_lease = \"30s\"\n"),
        None,
    )
    .unwrap();
    let r = c.destinations[0].clone();
    assert!(r.per_cluster);
    assert_eq!(r.cluster_lease, Duration::from_secs(30));
    let e = errs(&format!("{base}per = \"everyone\"\n"));
    assert!(e[0].contains("remote_storage.per"), "{e:?}");
}

#[test]
fn tiers_keep_last_and_their_problems() {
    let c = parse(
        "timezone = \"Europe/Berlin\"\n[local_storage]\nkeep_last = 3\nkeep_daily = 7\n\
         keep_monthly = 12\n[remote_storage]\nbucket = \"b\"\nregion = \"r\"\nkeep_weekly = 4\n",
        None,
    )
    .unwrap();
    let r = c.local_storage.retention;
    assert_eq!((r.ttl, r.keep, r.min_keep), (None, Some(3), 3));
    assert_eq!(
        (
            r.tiers.hourly,
            r.tiers.daily,
            r.tiers.weekly,
            r.tiers.monthly
        ),
        (None, Some(7), None, Some(12))
    );
    assert_eq!(r.zone.to_string(), "Europe/Berlin");
    let rr = c.destinations.first().unwrap().retention;
    assert_eq!((rr.ttl, rr.keep, rr.tiers.weekly), (None, None, Some(4)));
    assert!(!rr.keeps_forever());
    let shown = c.to_redacted_toml();
    for line in [
        "keep = 3\n",
        "keep_daily = 7\n",
        "keep_monthly = 12\n",
        "keep_weekly = 4\n",
    ] {
        assert!(shown.contains(line), "{line}: {shown}");
    }
    assert!(
        shown.contains("in the timezone \"Europe/Berlin\""),
        "{shown}"
    );

    let e = errs("[local_storage]\nkeep = 2\nkeep_last = 2\n");
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].contains("local_storage.keep_last: keep_last is another name for keep"),
        "{}",
        e[0]
    );
    let e = errs("[local_storage]\nkeep_hourly = 0\n");
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].contains("local_storage.keep_hourly: must be at least 1 (got 0)"),
        "{}",
        e[0]
    );
}

/// The display and the problems of whole files, compared byte for byte.
mod pinned;

#[test]
fn recipients_file_is_read_now() {
    let r = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";
    let dir = std::env::temp_dir().join(format!("etcdguard-recipients-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.txt");
    std::fs::write(&good, format!("# ops\n{r}\n")).unwrap();
    let bad = dir.join("bad.txt");
    std::fs::write(&bad, format!("{r}\nage1bad\n")).unwrap();
    let missing = dir.join("missing.txt");

    let c = parse(
        &format!("[encryption]\nrecipients = [{r:?}]\nrecipients_file = {good:?}\n"),
        None,
    )
    .unwrap();
    assert_eq!(
        c.encryption.unwrap().recipients.len(),
        1,
        "the same key once"
    );
    let e = errs(&format!("[encryption]\nrecipients_file = {bad:?}\n"));
    assert_eq!(e.len(), 1, "{e:?}");
    let prefix = format!(
        "/etc/x.toml:2:19: encryption.recipients_file: {}:2: ",
        bad.display()
    );
    assert!(e[0].starts_with(&prefix), "{e:?}");
    let e = errs(&format!("[encryption]\nrecipients_file = {missing:?}\n"));
    assert_eq!(
        e,
        [format!(
            "/etc/x.toml:2:19: encryption.recipients_file: cannot read {}: No such file or \
             directory (os error 2); with [encryption] nothing leaves the node until its \
             recipients can be read",
            missing.display()
        )]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
