//! The restore plan and what follows from it: validated peer URLs, member IDs and the cluster
//! ID (restore-spec C.1, C.2). Pure.

use sha1::{Digest, Sha1};

/// What an operator asks for: the same inputs `etcdutl snapshot restore` takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestorePlan {
    /// This member's name (`--name`).
    pub name: String,
    /// `name=url,name=url,…` (`--initial-cluster`); a name may repeat for several URLs.
    pub initial_cluster: String,
    /// This member's peer URLs, comma-separated (`--initial-advertise-peer-urls`).
    pub advertise_peer_urls: String,
    /// `--initial-cluster-token`. IDs derive from it: a fresh one makes a cluster the old
    /// members can never rejoin.
    pub token: String,
    /// `--bump-revision`: 0 for none.
    pub bump_revision: u64,
    /// `--mark-compacted`: required with a bump, refused without.
    pub mark_compacted: bool,
}

impl RestorePlan {
    /// `--initial-cluster` when none is given: this member alone, with each of its advertised
    /// peer URLs (`urls`, comma-separated), as etcd does.
    pub fn single_member_cluster(name: &str, urls: &str) -> String {
        urls.split(',')
            .map(|u| format!("{name}={}", u.trim()))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// One member of the restored cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedMember {
    pub id: u64,
    pub name: String,
    /// Canonical, sorted.
    pub peer_urls: Vec<String>,
}

/// The restored cluster: members sorted by ID, the cluster ID, and which member is this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub members: Vec<PlannedMember>,
    pub cluster_id: u64,
    pub self_index: usize,
    pub bump_revision: u64,
}

/// The one-member cluster of the spec's worked examples (restore-spec C.5: member n1 at
/// http://127.0.0.1:23802, token newtok), whose WAL and `.snap` bytes etcdutl produced.
#[cfg(test)]
pub fn worked_example() -> Cluster {
    resolve(&RestorePlan {
        name: "n1".into(),
        initial_cluster: "n1=http://127.0.0.1:23802".into(),
        advertise_peer_urls: "http://127.0.0.1:23802".into(),
        token: "newtok".into(),
        bump_revision: 0,
        mark_compacted: false,
    })
    .unwrap()
}

impl Cluster {
    /// One line per member: `<prefix><id hex> <name> <peer URLs>`, and `this` after this
    /// member's.
    pub fn member_lines(&self, prefix: &str, this: &str) -> String {
        let mut out = String::new();
        for (i, m) in self.members.iter().enumerate() {
            let mark = if i == self.self_index { this } else { "" };
            out.push_str(&format!(
                "{prefix}{:x}  {}  {}{mark}\n",
                m.id,
                m.name,
                m.peer_urls.join(",")
            ));
        }
        out
    }

    pub fn this(&self) -> &PlannedMember {
        &self.members[self.self_index]
    }

    pub fn ids(&self) -> Vec<u64> {
        self.members.iter().map(|m| m.id).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("--mark-compacted is required with --bump-revision (and refused without it)")]
    BumpWithoutMark,
    #[error("--mark-compacted needs --bump-revision greater than 0")]
    MarkWithoutBump,
    #[error("peer URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("--initial-cluster entry {entry:?} is not name=URL")]
    BadEntry { entry: String },
    #[error("--initial-cluster is empty")]
    EmptyCluster,
    #[error("member name {name:?} is not allowed: {reason}")]
    BadName { name: String, reason: String },
    #[error("couldn't find local name {name:?} in the initial cluster ({cluster})")]
    NameNotInCluster { name: String, cluster: String },
    #[error("--initial-cluster has {name}={cluster_urls} but --initial-advertise-peer-urls is {advertised}; they must list the same URLs")]
    AdvertiseMismatch {
        name: String,
        cluster_urls: String,
        advertised: String,
    },
    #[error("peer URL {0} appears twice in the initial cluster")]
    DuplicateUrl(String),
    #[error("members {a:?} and {b:?} get the same ID {id:x}")]
    DuplicateId { a: String, b: String, id: u64 },
    #[error("the cluster token must not be empty")]
    EmptyToken,
}

/// Checks and canonicalises one peer URL: `http(s)://host:port`, no path, query, fragment or
/// user info; the scheme is lower-cased, the host kept as written (Go's `url.String()`).
pub fn canonical_url(raw: &str) -> Result<String, PlanError> {
    let url = raw.trim();
    let bad = |reason: &str| PlanError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("not a URL of the form https://HOST:PORT"))?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(bad("the scheme must be http or https"));
    }
    if rest.contains(['/', '?', '#']) {
        return Err(bad("URL must not contain a path, query or fragment"));
    }
    if rest.contains('@') {
        return Err(bad("URL must not contain user information"));
    }
    let (host, port) = if let Some(r) = rest.strip_prefix('[') {
        let (h, p) = r
            .split_once("]:")
            .ok_or_else(|| bad("an IPv6 address needs brackets and a port: [ADDR]:PORT"))?;
        (h, p)
    } else {
        rest.rsplit_once(':')
            .ok_or_else(|| bad("URLs must be of the form \"host:port\""))?
    };
    if host.is_empty() || (!rest.starts_with('[') && host.contains(':')) {
        return Err(bad("URLs must be of the form \"host:port\""));
    }
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.len() > 5 {
        return Err(bad("the port must be a number"));
    }
    Ok(format!("{scheme}://{rest}"))
}

fn check_name(name: &str) -> Result<(), PlanError> {
    let bad = |reason: &str| PlanError::BadName {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.contains(['=', ',']) {
        return Err(bad("it contains '=' or ','"));
    }
    if name.chars().any(char::is_control) {
        return Err(bad("it contains control characters"));
    }
    Ok(())
}

/// Member ID: the first 8 bytes (big-endian) of SHA-1(sorted peer URLs concatenated || token).
pub fn member_id(sorted_urls: &[String], token: &str) -> u64 {
    let mut h = Sha1::new();
    for u in sorted_urls {
        h.update(u.as_bytes());
    }
    h.update(token.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("sha1 is 20 bytes"))
}

/// Cluster ID: the first 8 bytes of SHA-1 over the member IDs, ascending, as 8-byte BE.
pub fn cluster_id(ids: &[u64]) -> u64 {
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    let mut h = Sha1::new();
    for id in sorted {
        h.update(id.to_be_bytes());
    }
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("sha1 is 20 bytes"))
}

/// Parses `name=url,…` into (name, canonical sorted URLs), names in first-seen order.
pub fn parse_initial_cluster(text: &str) -> Result<Vec<(String, Vec<String>)>, PlanError> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, url) = entry.split_once('=').ok_or_else(|| PlanError::BadEntry {
            entry: entry.to_string(),
        })?;
        check_name(name)?;
        let url = canonical_url(url)?;
        match out.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url),
            None => out.push((name.to_string(), vec![url])),
        }
    }
    if out.is_empty() {
        return Err(PlanError::EmptyCluster);
    }
    for (_, urls) in &mut out {
        urls.sort();
    }
    Ok(out)
}

/// Validates a plan as etcdutl does (C.1, in its order) and computes the cluster.
pub fn resolve(plan: &RestorePlan) -> Result<Cluster, PlanError> {
    match (plan.bump_revision > 0, plan.mark_compacted) {
        (true, false) => return Err(PlanError::BumpWithoutMark),
        (false, true) => return Err(PlanError::MarkWithoutBump),
        _ => {}
    }
    if plan.token.is_empty() {
        return Err(PlanError::EmptyToken);
    }
    check_name(&plan.name)?;
    let mut advertised = plan
        .advertise_peer_urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(canonical_url)
        .collect::<Result<Vec<_>, _>>()?;
    advertised.sort();
    let entries = parse_initial_cluster(&plan.initial_cluster)?;
    let own = entries
        .iter()
        .find(|(n, _)| *n == plan.name)
        .ok_or_else(|| PlanError::NameNotInCluster {
            name: plan.name.clone(),
            cluster: plan.initial_cluster.clone(),
        })?;
    if own.1 != advertised {
        return Err(PlanError::AdvertiseMismatch {
            name: plan.name.clone(),
            cluster_urls: own.1.join(","),
            advertised: advertised.join(","),
        });
    }
    let mut seen = std::collections::BTreeSet::new();
    for (_, urls) in &entries {
        for u in urls {
            if !seen.insert(u.clone()) {
                return Err(PlanError::DuplicateUrl(u.clone()));
            }
        }
    }
    let mut members: Vec<PlannedMember> = entries
        .into_iter()
        .map(|(name, peer_urls)| PlannedMember {
            id: member_id(&peer_urls, &plan.token),
            name,
            peer_urls,
        })
        .collect();
    members.sort_by_key(|m| m.id);
    for w in members.windows(2) {
        if w[0].id == w[1].id {
            return Err(PlanError::DuplicateId {
                a: w[0].name.clone(),
                b: w[1].name.clone(),
                id: w[0].id,
            });
        }
    }
    let cluster_id = cluster_id(&members.iter().map(|m| m.id).collect::<Vec<_>>());
    let self_index = members
        .iter()
        .position(|m| m.name == plan.name)
        .expect("checked above");
    Ok(Cluster {
        members,
        cluster_id,
        self_index,
        bump_revision: plan.bump_revision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(name: &str, cluster: &str, adv: &str, token: &str) -> RestorePlan {
        RestorePlan {
            name: name.into(),
            initial_cluster: cluster.into(),
            advertise_peer_urls: adv.into(),
            token: token.into(),
            bump_revision: 0,
            mark_compacted: false,
        }
    }

    #[test]
    fn ids_match_the_spec_test_vectors() {
        let one = vec!["http://127.0.0.1:23802".to_string()];
        assert_eq!(member_id(&one, "newtok"), 0x2fa26575b68fb30e);
        assert_eq!(cluster_id(&[0x2fa26575b68fb30e]), 17453008721487075835);
        let src = vec!["http://127.0.0.1:23801".to_string()];
        assert_eq!(member_id(&src, "srctoken"), 0x7a155a230c7d7034);
        assert_eq!(cluster_id(&[0x7a155a230c7d7034]), 17070190394866180026);

        let c = resolve(&plan(
            "b",
            "a=http://127.0.0.1:24001,b=http://127.0.0.1:24002,c=http://127.0.0.1:24003",
            "http://127.0.0.1:24002",
            "tok3",
        ))
        .unwrap();
        let id = |n: &str| c.members.iter().find(|m| m.name == n).unwrap().id;
        assert_eq!(id("a"), 0x365ac4937f900a77);
        assert_eq!(id("b"), 0x1024040f8b89ce42);
        assert_eq!(id("c"), 0x73188ae139733eaa);
        assert_eq!(c.cluster_id, 0x4482de0b2f73e139);
        assert_eq!(c.this().name, "b");
        // sorted by ID
        assert!(c.members.windows(2).all(|w| w[0].id < w[1].id));
    }

    #[test]
    fn validation_errors() {
        let ok = plan(
            "n1",
            "n1=https://10.0.0.1:2380",
            "https://10.0.0.1:2380",
            "t",
        );
        assert!(resolve(&ok).is_ok());
        let cases: Vec<(RestorePlan, &str)> = vec![
            (
                RestorePlan {
                    bump_revision: 5,
                    ..ok.clone()
                },
                "required with --bump",
            ),
            (
                RestorePlan {
                    mark_compacted: true,
                    ..ok.clone()
                },
                "needs --bump",
            ),
            (
                plan(
                    "x",
                    "n1=https://10.0.0.1:2380",
                    "https://10.0.0.1:2380",
                    "t",
                ),
                "couldn't find local name",
            ),
            (
                plan(
                    "n1",
                    "n1=https://10.0.0.1:2380",
                    "https://10.0.0.2:2380",
                    "t",
                ),
                "must list the same URLs",
            ),
            (
                plan(
                    "n1",
                    "n1=https://10.0.0.1:2380/",
                    "https://10.0.0.1:2380/",
                    "t",
                ),
                "must not contain a path",
            ),
            (
                plan("n1", "n1=https://10.0.0.1", "https://10.0.0.1", "t"),
                "host:port",
            ),
            (
                plan(
                    "n1",
                    "n1=https://10.0.0.1:2380,n2=https://10.0.0.1:2380",
                    "https://10.0.0.1:2380",
                    "t",
                ),
                "appears twice",
            ),
            (plan("n1", "", "https://10.0.0.1:2380", "t"), "empty"),
            (
                plan("n1", "n1https://x:1", "https://x:1", "t"),
                "not name=URL",
            ),
            (
                plan("n1", "n1=ftp://x:1", "ftp://x:1", "t"),
                "http or https",
            ),
            (
                plan(
                    "n1",
                    "n1=https://10.0.0.1:2380",
                    "https://10.0.0.1:2380",
                    "",
                ),
                "token",
            ),
        ];
        for (p, needle) in cases {
            let e = resolve(&p).unwrap_err().to_string();
            assert!(e.contains(needle), "{p:?}: {e}");
        }
    }

    #[test]
    fn urls_are_canonical_and_ipv6_works() {
        assert_eq!(
            canonical_url(" HTTPS://[fd00::1]:2380 ").unwrap(),
            "https://[fd00::1]:2380"
        );
        assert!(canonical_url("https://fd00::1:2380").is_err());
        // Several URLs per member, in any order: sorted, and the advertise list must match.
        let c = resolve(&plan(
            "m",
            "m=https://b:2,m=https://a:1",
            "https://a:1,https://b:2",
            "t",
        ))
        .unwrap();
        assert_eq!(c.this().peer_urls, ["https://a:1", "https://b:2"]);
    }
}
