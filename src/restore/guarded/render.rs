//! The plan as the operator reads it before saying yes: what will happen, step by step, where
//! the old data goes, and every guard's verdict.

use super::super::journal;
use super::guards::Verdict;
use super::prepare::Prepared;

/// The plan of a restore stamped `stamp`. Pure.
pub fn render(p: &Prepared, stamp: &str) -> String {
    let n = &p.node;
    let paths = n.paths(stamp);
    let mut s = String::new();
    s.push_str("Restore plan\n");
    s.push_str(&format!("  snapshot        {}\n", p.snapshot.display()));
    s.push_str(&format!(
        "  revision        {} (snapshot) -> {}{}\n",
        p.report.revision,
        p.revision_after,
        if p.plan.bump_revision > 0 {
            format!(" (+{} bump, marked compacted)", p.plan.bump_revision)
        } else {
            String::new()
        }
    ));
    s.push_str(&format!("  cluster token   {}\n", p.plan.token));
    s.push_str(&format!("  cluster ID      {:x}\n", p.cluster.cluster_id));
    s.push_str(
        &p.cluster
            .member_lines("  member          ", "  <- this node"),
    );
    s.push_str("Steps\n");
    if let Some(a) = &n.apiserver_manifest {
        s.push_str(&format!(
            "  1. move {} to {} (stops kube-apiserver)\n",
            a.display(),
            paths.backup_dir.display()
        ));
    } else {
        s.push_str("  1. (no kube-apiserver manifest on this node)\n");
    }
    s.push_str(&format!(
        "  2. move {} to {} (stops etcd; the original is kept there)\n",
        n.etcd_manifest.display(),
        paths.backup_dir.display()
    ));
    s.push_str("  3. wait until etcd's ports are closed and its db/WAL locks are free\n");
    s.push_str(&format!(
        "  4. build the new data dir in {}\n",
        paths.built.display()
    ));
    s.push_str(&format!(
        "  5. rename {} to {} (kept, never deleted)\n",
        if paths.swap_member_only {
            n.data_dir.join("member")
        } else {
            n.data_dir.clone()
        }
        .display(),
        paths.pre_restore.display()
    ));
    s.push_str(&format!(
        "  6. rename the new data dir into {}\n",
        n.data_dir.display()
    ));
    s.push_str(&format!("  7. rewrite {}: --initial-cluster, --initial-cluster-state=new, --initial-cluster-token\n", n.etcd_manifest.display()));
    s.push_str("  8. wait for the restored member: planned member and cluster IDs, revision\n");
    s.push_str("  9. put kube-apiserver.yaml back\n");
    s.push_str(&format!(
        "  Journal: {}\n",
        paths.backup_dir.join(journal::JOURNAL_FILE).display()
    ));
    s.push_str("Guards\n");
    for g in &p.guards {
        s.push_str(&format!(
            "  [{}] {:<22} {}\n",
            match g.verdict {
                Verdict::Pass => "PASS",
                Verdict::Warn => "WARN",
                Verdict::Fail => "FAIL",
            },
            g.name,
            g.detail
        ));
    }
    s
}
