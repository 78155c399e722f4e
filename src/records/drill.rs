//! A drill's part of its record: the snapshot it restored and every check's verdict.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What a restore drill did: the snapshot it restored into a scratch dir and what it checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Drill {
    /// The record of the drilled snapshot, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// `local`, `remote` (downloaded) or `file` (named by hand).
    pub source: String,
    /// The backup time of the drilled snapshot, when its record says it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_timestamp: Option<DateTime<Utc>>,
    /// The etcd minor the data dir was built for (this node's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_version: Option<String>,
    pub checks: Vec<DrillCheck>,
}

/// One check of a drill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrillCheck {
    pub name: String,
    /// `passed`, `failed`, or `skipped` (an earlier check failed, or it is off).
    pub result: String,
    pub detail: String,
}
