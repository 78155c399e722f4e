//! Entry points for the fuzz targets (`fuzz/fuzz_targets/`, run by `scripts/fuzz`): each feeds
//! untrusted bytes to one parser the way etcdguard itself does and checks what must hold for
//! any input. Not an API: the modules they reach stay private; this only lets the fuzz crate
//! call them. Every function must return for any input, never panic or hang.

use std::path::Path;

/// The configuration loader: any text gives a configuration or errors with positions.
pub fn config(text: &str) {
    if let Err(e) = crate::config::parse_text(text) {
        for p in &e.problems {
            assert!(!p.message.is_empty(), "an empty problem for {text:?}");
        }
    }
}

/// The records loader (and a bucket's sidecar, which is one record): whatever parses writes
/// back to JSON that parses to the same.
pub fn records(bytes: &[u8]) {
    if let Ok(f) = serde_json::from_slice::<crate::records::RecordsFile>(bytes) {
        let again = serde_json::to_vec(&f).expect("a parsed records file serializes");
        let back: crate::records::RecordsFile =
            serde_json::from_slice(&again).expect("what etcdguard writes parses");
        assert_eq!(back.records, f.records);
    }
    if let Ok(r) = serde_json::from_slice::<crate::records::Record>(bytes) {
        let again = serde_json::to_vec(&r).expect("a parsed record serializes");
        let back: crate::records::Record =
            serde_json::from_slice(&again).expect("what etcdguard writes parses");
        assert_eq!(back, r);
    }
}

/// The manifest parser and rewriter: a rewrite of the `--initial-cluster*` flags changes only
/// those (every other flag, the image and the volumes stay as they were).
pub fn manifest(text: &str) {
    let path = Path::new("/etc/kubernetes/manifests/etcd.yaml");
    let Ok(before) = crate::kubeadm::EtcdManifest::parse(text, path) else {
        return;
    };
    let edits = vec![
        (
            "initial-cluster".to_string(),
            "cp1=https://10.0.0.1:2380".to_string(),
        ),
        ("initial-cluster-state".to_string(), "new".to_string()),
        (
            "initial-cluster-token".to_string(),
            "etcd-restore-1".to_string(),
        ),
    ];
    let Ok(r) = crate::kubeadm::rewrite_etcd_flags(text, path, &edits) else {
        return;
    };
    let after =
        crate::kubeadm::EtcdManifest::parse(&r.text, path).expect("a rewritten manifest parses");
    let others = |m: &crate::kubeadm::EtcdManifest| -> Vec<(String, Option<String>)> {
        m.flags
            .iter()
            .filter(|(n, _)| !n.starts_with("initial-cluster"))
            .cloned()
            .collect()
    };
    assert_eq!(
        others(&before),
        others(&after),
        "a flag other than --initial-cluster* changed"
    );
    assert_eq!(before.image, after.image);
    assert_eq!(before.host_paths, after.host_paths);
    for (n, v) in &edits {
        assert_eq!(after.flag(n), Some(v.as_str()), "--{n} not set");
    }
}

/// The WAL and `.snap` readers of a built data dir.
pub fn raft_files(bytes: &[u8]) {
    let _ = crate::restore::datadir::read::decode_wal(bytes);
    let _ = crate::restore::datadir::read::decode_snap(bytes);
}

/// Kubernetes values and key layout (`inspect --get`, the summary's breakdown).
pub fn kubernetes(bytes: &[u8]) {
    let _ = crate::inspect::k8s::decode(bytes);
    let _ = crate::inspect::k8s::value_json(bytes);
    let _ = crate::inspect::k8s::classify(bytes);
    let _ = crate::etcddb::schema::KeyValue::decode(bytes);
    let _ = crate::etcddb::schema::decode_alarm(bytes);
}

/// `inspect` of a database file (`file` holds the bytes; `len` of them).
pub fn inspect(file: std::fs::File, len: u64) {
    let Ok(db) = crate::etcddb::Db::open(file, len) else {
        return;
    };
    let _ = crate::inspect::summarize(
        &db,
        crate::inspect::Limits {
            largest: 3,
            deleted: 3,
        },
    );
    let _ = crate::inspect::keys(&db, b"/registry/");
    let _ = crate::inspect::hash_kv(&db, Some(2));
}

/// CI's short run of every target: the same entry points over seeded mutations of real
/// inputs (libFuzzer with its sanitizer build is `scripts/fuzz`, by hand).
#[cfg(test)]
mod tests {
    /// xorshift64*: a deterministic, seeded stream of mutations.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// `rounds` mutations of the seeds (bit flips, byte sets, insertions, deletions, cuts,
    /// splices of two seeds), each given to `f`.
    fn mutate(seeds: &[Vec<u8>], rounds: usize, seed: u64, mut f: impl FnMut(&[u8])) {
        let mut rng = Rng(seed);
        for s in seeds {
            f(s);
        }
        for _ in 0..rounds {
            let mut d = seeds[rng.below(seeds.len())].clone();
            for _ in 0..1 + rng.below(6) {
                let at = rng.below(d.len() + 1);
                match rng.below(6) {
                    0 if at < d.len() => d[at] ^= 1 << rng.below(8),
                    1 if at < d.len() => d[at] = [0, 0xff, b'"', b'\n', b'=', 0x80][rng.below(6)],
                    2 => d.insert(at, rng.next() as u8),
                    3 if at < d.len() => {
                        d.remove(at);
                    }
                    4 => d.truncate(at),
                    _ => {
                        let other = &seeds[rng.below(seeds.len())];
                        let from = rng.below(other.len() + 1);
                        d.splice(at..at, other[from..].iter().take(64).copied());
                    }
                }
            }
            f(&d);
        }
    }

    fn text(f: impl Fn(&str)) -> impl FnMut(&[u8]) {
        move |b| {
            if let Ok(s) = std::str::from_utf8(b) {
                f(s)
            }
        }
    }

    #[test]
    fn the_config_loader_survives_mutations() {
        let seeds = vec![
            include_bytes!("../config/etcdguard.toml").to_vec(),
            b"schedule = \"@daily\"\n[remote_storage]\nbucket = \"b\"\nregion = \"r\"\nper = \"cluster\"\n[drill]\nschedule = \"@weekly\"\n".to_vec(),
        ];
        mutate(&seeds, 3000, 1, text(super::config));
    }

    #[test]
    fn the_manifest_parser_and_rewriter_survive_mutations() {
        let fixture = include_str!("../tests/fixtures/kubeadm-etcd.yaml");
        let seeds: Vec<Vec<u8>> = ["3.5", "3.7"]
            .iter()
            .map(|minor| {
                fixture
                    .lines()
                    .filter(|l| !l.starts_with('#'))
                    .filter_map(|l| match l.split_once(" #@ ") {
                        Some((kept, tags)) => tags.split(' ').any(|t| t == *minor).then_some(kept),
                        None => Some(l),
                    })
                    .map(|l| {
                        format!(
                            "{}\n",
                            l.replace("@NAME@", "cp1")
                                .replace("@CLIENT_PORT@", "2379")
                                .replace("@PEER_PORT@", "2380")
                                .replace("@METRICS_PORT@", "2381")
                                .replace("@INITIAL_CLUSTER@", "cp1=https://127.0.0.1:2380")
                        )
                    })
                    .collect::<String>()
                    .into_bytes()
            })
            .collect();
        // The seeds themselves rewrite (the property holds on real manifests).
        for s in &seeds {
            super::manifest(std::str::from_utf8(s).unwrap());
        }
        mutate(&seeds, 1500, 2, text(super::manifest));
    }

    #[test]
    fn the_records_loader_survives_mutations() {
        let seeds = vec![
            br#"{"version":1,"records":[{"id":"20261202T043124.017Z-0400","backupTimestamp":"2026-12-02T04:31:24.017Z","fileName":"snapshot-etcd-20261202-043124-cp1.db","result":"Success","trigger":"schedule","revision":42,"sizeBytes":1,"sha256":"00","durationSeconds":0.2,"local":{"path":"/x.db","state":"present"},"remote":{"location":"s3://b/k","state":"covered","attempts":0,"cluster":{"slot":"2026-12-02T04:31:00Z","uploader":"cp2"}},"pin":{"pinnedAt":"2026-12-02T04:31:24Z"}}],"stats":{"success":1,"failed":0,"skipped":0},"daemon":{"lastHandledSlot":"2026-12-02T04:00:00Z"}}"#.to_vec(),
            br#"{"id":"x","backupTimestamp":"2026-12-02T04:31:24Z","result":"Failed","reason":"no","trigger":"drill","durationSeconds":1,"drill":{"source":"local","checks":[{"name":"wal","result":"failed","detail":"d"}]}}"#.to_vec(),
        ];
        mutate(&seeds, 4000, 3, super::records);
    }

    #[test]
    fn the_raft_file_readers_survive_mutations() {
        let (wal, snap) = crate::restore::datadir::worked_example_raft_files();
        let seeds = vec![wal, snap];
        mutate(&seeds, 4000, 4, super::raft_files);
    }

    #[test]
    fn the_kubernetes_and_protobuf_decoders_survive_mutations() {
        let seeds = vec![
            crate::inspect::k8s::tests::configmap_protobuf(),
            br#"{"kind":"Widget","metadata":{"name":"w"}}"#.to_vec(),
            b"k8s:enc:aescbc:v1:key1:\x01\x02".to_vec(),
            vec![
                0x0a, 1, b'a', 0x10, 2, 0x18, 3, 0x20, 1, 0x2a, 2, b'x', b'y', 0x30, 7,
            ],
        ];
        mutate(&seeds, 5000, 5, super::kubernetes);
    }

    #[test]
    fn inspect_survives_mutated_databases() {
        let seeds = vec![crate::etcddb::tests::sample_db(4096, 120)];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        mutate(&seeds, 600, 6, |b| {
            std::fs::write(&path, b).unwrap();
            let f = std::fs::File::open(&path).unwrap();
            super::inspect(f, b.len() as u64);
        });
    }
}
