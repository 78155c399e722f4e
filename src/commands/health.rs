//! `etcdguard health [--output text|json]`: the local member's health, as a backup records it.

use std::path::Path;
use std::process::ExitCode;

use super::output::{human_size, print, print_json};
use super::{runtime, CmdResult};
use crate::cli::HealthFormat;
use crate::config;
use crate::exit::CommandError;
use crate::preflight;

pub(super) fn run(config_path: Option<&Path>, format: HealthFormat) -> CmdResult {
    let config = config::load(config_path)?;
    let found = runtime()?
        .block_on(preflight::etcd_health(&config))
        .map_err(CommandError::Failed)?;
    let (m, h) = (&found.member, &found.health);
    match format {
        HealthFormat::Json => print_json(&serde_json::json!({
            "version": 1,
            "endpoint": found.endpoint,
            "member": { "name": m.name, "id": format!("{:x}", m.id) },
            "etcdVersion": m.version,
            "storageVersion": m.storage_version,
            "health": h,
        }))?,
        HealthFormat::Text => {
            let mut t = format!(
                "member {} ({:x}) at {}, etcd {}\n",
                if m.name.is_empty() { "-" } else { &m.name },
                m.id,
                found.endpoint,
                m.version
            );
            t.push_str(&format!(
                "alarms: {}\n",
                if h.alarms.is_empty() {
                    "none".to_string()
                } else {
                    h.alarms.join(", ")
                }
            ));
            t.push_str(&format!(
                "database: {} ({} in use) of a {} quota ({}%, quota from {})\n",
                human_size(h.db_size_bytes),
                human_size(h.db_size_in_use_bytes),
                human_size(h.quota_bytes),
                h.db_size_bytes * 100 / h.quota_bytes.max(1),
                h.quota_source
            ));
            t.push_str(&format!(
                "raft: index {}, applied {}{}{}\n",
                h.raft_index,
                h.raft_applied_index,
                h.leader_raft_index
                    .map(|l| format!(", leader at {l}"))
                    .unwrap_or_default(),
                if h.is_learner { ", learner" } else { "" }
            ));
            for w in &h.warnings {
                t.push_str(&format!("WARNING: {w}\n"));
            }
            if h.warnings.is_empty() {
                t.push_str("healthy\n");
            }
            print(&t)?;
        }
    }
    Ok(if h.warnings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
