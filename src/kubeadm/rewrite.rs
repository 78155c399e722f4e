//! Rewriting the etcd static pod manifest for a restore (restore-spec E.6): only the flags a
//! restore must set change (`--initial-cluster`, `--initial-cluster-state`,
//! `--initial-cluster-token`); every other byte stays as it was. Pure.
//!
//! kubeadm writes one `- --flag=value` line per flag. Those lines are edited in place (the
//! `--flag value` two-item form too); a missing flag is inserted in kubeadm's alphabetical
//! order. The result is then parsed again and compared with the original: the effective flags
//! must be the old ones with exactly the edits applied, and everything else in the pod must be
//! equal. A manifest that cannot be edited that way (flow-style lists, flags outside the block
//! that holds `--data-dir`) is re-serialised instead, which keeps the content but not the
//! formatting, and the caller is told so.

use std::collections::BTreeMap;
use std::path::Path;

use serde_yaml_ng::Value;

use super::manifest::{EtcdManifest, ManifestError};

/// How the new text was produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RewriteMode {
    /// Only the flag lines changed; everything else byte for byte.
    Textual,
    /// The YAML was re-serialised: same content, formatting and comments not kept.
    Reserialized,
}

#[derive(Debug, Clone)]
pub struct Rewritten {
    pub text: String,
    pub mode: RewriteMode,
}

fn effective(m: &EtcdManifest) -> BTreeMap<String, Option<String>> {
    m.flags.iter().cloned().collect()
}

/// A YAML plain scalar, or a double-quoted one when plain would change its meaning.
fn scalar(v: &str) -> String {
    let plain_ok = !v.is_empty()
        && !v.contains(": ")
        && !v.contains(" #")
        && !v.ends_with(':')
        && !v.starts_with([
            '!', '&', '*', '{', '}', '[', ']', ',', '#', '|', '>', '@', '`', '"', '\'', '%', ' ',
        ])
        && !v.ends_with(' ')
        && v.chars().all(|c| !c.is_control());
    if plain_ok {
        v.to_string()
    } else {
        serde_json::to_string(v).expect("string serializes")
    }
}

/// The value of a `- item` line, unquoted.
fn item_value(line: &str) -> Option<(usize, String)> {
    let trimmed = line.trim_start();
    let indent = line.len() - trimmed.len();
    let rest = trimmed.strip_prefix("- ")?;
    let rest = rest.trim_end();
    let v = if let Some(q) = rest.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        serde_json::from_str::<String>(&format!("\"{q}\"")).ok()?
    } else if let Some(q) = rest.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        q.replace("''", "'")
    } else {
        rest.to_string()
    };
    Some((indent, v))
}

fn flag_name(v: &str) -> Option<&str> {
    let s = v.strip_prefix("--").or_else(|| v.strip_prefix('-'))?;
    Some(s.split_once('=').map_or(s, |(n, _)| n))
}

fn textual(text: &str, edits: &[(String, String)]) -> Option<String> {
    let mut lines: Vec<String> = text.split_inclusive('\n').map(str::to_string).collect();
    // The block of `- item` lines that holds --data-dir.
    let anchor = lines
        .iter()
        .position(|l| item_value(l).is_some_and(|(_, v)| flag_name(&v) == Some("data-dir")))?;
    let (indent, _) = item_value(&lines[anchor])?;
    let in_block = |l: &str| item_value(l).is_some_and(|(i, _)| i == indent);
    let mut start = anchor;
    while start > 0 && in_block(&lines[start - 1]) {
        start -= 1;
    }
    let mut end = anchor + 1;
    while end < lines.len() && in_block(&lines[end]) {
        end += 1;
    }
    let eol = if lines[anchor].ends_with("\r\n") {
        "\r\n"
    } else {
        "\n"
    };
    let pad = " ".repeat(indent);
    for (name, value) in edits {
        let mut found = false;
        let mut i = start;
        while i < end {
            let (_, v) = item_value(&lines[i])?;
            if flag_name(&v) == Some(name.as_str()) {
                found = true;
                if v.contains('=') {
                    lines[i] = format!("{pad}- {}{eol}", scalar(&format!("--{name}={value}")));
                } else if i + 1 < end
                    && item_value(&lines[i + 1]).is_some_and(|(_, n)| !n.starts_with('-'))
                {
                    lines[i + 1] = format!("{pad}- {}{eol}", scalar(value));
                    i += 1;
                } else {
                    lines[i] = format!("{pad}- {}{eol}", scalar(&format!("--{name}={value}")));
                }
            }
            i += 1;
        }
        if !found {
            // kubeadm sorts the flags: insert before the first flag that sorts after it.
            let at = (start..end)
                .find(|&i| {
                    item_value(&lines[i])
                        .is_some_and(|(_, v)| flag_name(&v).is_some_and(|n| n > name.as_str()))
                })
                .unwrap_or(end);
            lines.insert(
                at,
                format!("{pad}- {}{eol}", scalar(&format!("--{name}={value}"))),
            );
            end += 1;
        }
    }
    Some(lines.concat())
}

/// Everything but the etcd container's command and args, for comparison.
fn without_command(doc: &Value) -> Value {
    let mut d = doc.clone();
    if let Some(cs) = d
        .get_mut("spec")
        .and_then(|s| s.get_mut("containers"))
        .and_then(Value::as_sequence_mut)
    {
        for c in cs {
            if c.get("name").and_then(Value::as_str) == Some("etcd") {
                if let Some(m) = c.as_mapping_mut() {
                    m.remove("command");
                    m.remove("args");
                }
            }
        }
    }
    d
}

fn reserialize(
    text: &str,
    path: &Path,
    edits: &[(String, String)],
) -> Result<String, ManifestError> {
    let err = |message: String| ManifestError::Content {
        path: path.to_owned(),
        message,
    };
    let mut doc: Value = serde_yaml_ng::from_str(text).map_err(|e| err(e.to_string()))?;
    let c = doc
        .get_mut("spec")
        .and_then(|s| s.get_mut("containers"))
        .and_then(Value::as_sequence_mut)
        .and_then(|cs| {
            cs.iter_mut()
                .find(|c| c.get("name").and_then(Value::as_str) == Some("etcd"))
        })
        .ok_or_else(|| err("no container named \"etcd\"".into()))?;
    let cmd = c
        .get_mut("command")
        .and_then(Value::as_sequence_mut)
        .ok_or_else(|| err("the etcd container has no command list".into()))?;
    for (name, value) in edits {
        let mut found = false;
        let mut i = 0;
        while i < cmd.len() {
            let v = cmd[i].as_str().unwrap_or("").to_string();
            if flag_name(&v) == Some(name.as_str()) {
                found = true;
                if v.contains('=') || i + 1 >= cmd.len() {
                    cmd[i] = Value::String(format!("--{name}={value}"));
                } else {
                    cmd[i + 1] = Value::String(value.clone());
                    i += 1;
                }
            }
            i += 1;
        }
        if !found {
            cmd.push(Value::String(format!("--{name}={value}")));
        }
    }
    serde_yaml_ng::to_string(&doc).map_err(|e| err(e.to_string()))
}

/// Sets `edits` (flag name without dashes, value) in the etcd container of `text` and proves
/// that nothing else changed.
pub fn rewrite_etcd_flags(
    text: &str,
    path: &Path,
    edits: &[(String, String)],
) -> Result<Rewritten, ManifestError> {
    let before = EtcdManifest::parse(text, path)?;
    let doc_before: Value = serde_yaml_ng::from_str(text).map_err(|e| ManifestError::Yaml {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let mut want = effective(&before);
    for (n, v) in edits {
        want.insert(n.clone(), Some(v.clone()));
    }
    let check = |new_text: &str| -> bool {
        let Ok(after) = EtcdManifest::parse(new_text, path) else {
            return false;
        };
        let Ok(doc_after) = serde_yaml_ng::from_str::<Value>(new_text) else {
            return false;
        };
        effective(&after) == want
            && without_command(&doc_after) == without_command(&doc_before)
            && after.image == before.image
    };
    if let Some(t) = textual(text, edits) {
        if check(&t) {
            return Ok(Rewritten {
                text: t,
                mode: RewriteMode::Textual,
            });
        }
    }
    let t = reserialize(text, path, edits)?;
    if check(&t) {
        return Ok(Rewritten {
            text: t,
            mode: RewriteMode::Reserialized,
        });
    }
    Err(ManifestError::Content {
        path: path.to_owned(),
        message: "cannot set the restore flags without changing anything else; edit the \
                  manifest by hand"
            .into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubeadm::manifest::split_urls;

    const K35: &str = include_str!("testdata/kubeadm-etcd35.yaml");
    const K36: &str = include_str!("testdata/kubeadm-etcd36-joined-ipv6.yaml");
    const CUSTOM: &str = include_str!("testdata/custom-datadir-extra-flags.yaml");
    const FLOW: &str = include_str!("testdata/flow-style.yaml");
    const NO_HOST: &str = include_str!("testdata/no-host-volume.yaml");

    fn m(text: &str) -> EtcdManifest {
        EtcdManifest::parse(text, Path::new("/etc/kubernetes/manifests/etcd.yaml")).unwrap()
    }

    fn edits(cluster: &str) -> Vec<(String, String)> {
        vec![
            ("initial-cluster".into(), cluster.into()),
            ("initial-cluster-state".into(), "new".into()),
            (
                "initial-cluster-token".into(),
                "etcd-restore-1763780000".into(),
            ),
        ]
    }

    /// Lines of `a` not in `b`, and of `b` not in `a`.
    fn diff(a: &str, b: &str) -> (Vec<String>, Vec<String>) {
        let al: Vec<&str> = a.lines().collect();
        let bl: Vec<&str> = b.lines().collect();
        (
            al.iter()
                .filter(|l| !bl.contains(l))
                .map(|s| s.to_string())
                .collect(),
            bl.iter()
                .filter(|l| !al.contains(l))
                .map(|s| s.to_string())
                .collect(),
        )
    }

    #[test]
    fn reads_every_kubeadm_shape() {
        let a = m(K35);
        assert_eq!(a.member_name(), Some("cp1"));
        assert_eq!(a.image_version(), Some((3, 5, 16)));
        assert_eq!(a.advertise_peer_urls().unwrap(), ["https://10.0.0.10:2380"]);
        assert_eq!(a.host_data_dir().unwrap().host_path, "/var/lib/etcd");
        assert_eq!(a.listen_ports(), [2379, 2380, 2381]);
        assert_eq!(a.pod_name.as_deref(), Some("etcd"));

        let b = m(K36);
        assert_eq!(b.member_name(), Some("cp3"));
        assert_eq!(b.image_version(), Some((3, 6, 4)));
        assert_eq!(
            b.advertise_peer_urls().unwrap(),
            ["https://[fd00::12]:2380"]
        );
        assert_eq!(b.local_client_url().unwrap(), "https://[::1]:2379");
        assert_eq!(split_urls(b.flag("initial-cluster").unwrap()).len(), 3);

        let c = m(CUSTOM);
        assert_eq!(c.member_name(), Some("cp-a"));
        assert_eq!(
            c.advertise_peer_urls().unwrap(),
            ["https://192.168.1.5:2380"]
        );
        let d = c.host_data_dir().unwrap();
        assert_eq!(d.host_path, "/mnt/fast-disk/etcd/data");
        assert_eq!(d.container_path, "/var/lib/etcd/data");
        assert_eq!(c.flag("quota-backend-bytes"), Some("8589934592"));

        let e = m(NO_HOST).host_data_dir().unwrap_err().to_string();
        assert!(e.contains("is not a hostPath volume"), "{e}");
    }

    #[test]
    fn kubeadm_manifest_changes_only_the_restore_flags() {
        let p = Path::new("/m/etcd.yaml");
        let r = rewrite_etcd_flags(K35, p, &edits("cp1=https://10.0.0.10:2380")).unwrap();
        assert_eq!(r.mode, RewriteMode::Textual);
        let (gone, added) = diff(K35, &r.text);
        // --initial-cluster had the same value: it is rewritten to itself, so not in the diff.
        assert!(gone.is_empty(), "{gone:?}");
        assert_eq!(
            added,
            [
                "    - --initial-cluster-state=new",
                "    - --initial-cluster-token=etcd-restore-1763780000"
            ]
        );
        // Inserted in kubeadm's order: right after --initial-cluster.
        let pos = |s: &str| r.text.find(s).unwrap();
        assert!(pos("--initial-cluster=") < pos("--initial-cluster-state="));
        assert!(pos("--initial-cluster-token=") < pos("--key-file="));
        // Applied twice: the same text (idempotent).
        let again = rewrite_etcd_flags(&r.text, p, &edits("cp1=https://10.0.0.10:2380")).unwrap();
        assert_eq!(again.text, r.text);
    }

    #[test]
    fn joined_member_ipv6_and_36_flags() {
        let p = Path::new("/m/etcd.yaml");
        let cluster =
            "cp1=https://[fd00::10]:2380,cp2=https://[fd00::11]:2380,cp3=https://[fd00::12]:2380";
        let r = rewrite_etcd_flags(K36, p, &edits(cluster)).unwrap();
        assert_eq!(r.mode, RewriteMode::Textual);
        let (gone, added) = diff(K36, &r.text);
        assert_eq!(gone.len(), 2, "{gone:?}");
        assert_eq!(added.len(), 3, "{added:?}");
        let after = m(&r.text);
        assert_eq!(after.flag("initial-cluster"), Some(cluster));
        assert_eq!(after.flag("initial-cluster-state"), Some("new"));
        assert_eq!(
            after.flag("feature-gates"),
            Some("InitialCorruptCheck=true")
        );
    }

    #[test]
    fn hand_edited_two_item_form_and_comments_survive() {
        let p = Path::new("/m/etcd.yaml");
        let r = rewrite_etcd_flags(
            CUSTOM,
            p,
            &edits("cp-a=https://192.168.1.5:2380,cp-b=https://192.168.1.6:2380"),
        )
        .unwrap();
        assert_eq!(r.mode, RewriteMode::Textual);
        assert!(r.text.starts_with("# Edited by hand"));
        let after = m(&r.text);
        assert_eq!(
            after.flag("initial-cluster"),
            Some("cp-a=https://192.168.1.5:2380,cp-b=https://192.168.1.6:2380")
        );
        assert_eq!(after.flag("quota-backend-bytes"), Some("8589934592"));
        let (gone, added) = diff(CUSTOM, &r.text);
        assert_eq!(gone, ["      - \"cp-a=https://192.168.1.5:2380\""]);
        assert_eq!(added.len(), 3, "{added:?}");
    }

    #[test]
    fn flow_style_falls_back_to_reserializing() {
        let r = rewrite_etcd_flags(
            FLOW,
            Path::new("/m/etcd.yaml"),
            &edits("f1=https://10.1.1.1:2380"),
        )
        .unwrap();
        assert_eq!(r.mode, RewriteMode::Reserialized);
        let after = m(&r.text);
        assert_eq!(after.flag("initial-cluster-state"), Some("new"));
        assert_eq!(after.flag("name"), Some("f1"));
    }

    #[test]
    fn values_that_need_quotes_get_them() {
        assert_eq!(
            scalar("--initial-cluster=a=https://x:1"),
            "--initial-cluster=a=https://x:1"
        );
        assert_eq!(scalar("a: b"), "\"a: b\"");
        assert_eq!(scalar("#x"), "\"#x\"");
    }
}
