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
    /// Where the drilled snapshot came from.
    pub source: DrillOrigin,
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
    pub result: Verdict,
    pub detail: String,
}

/// Where a drill's snapshot came from; written as the lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DrillOrigin {
    /// This node's local copy, held open for the drill.
    Local,
    /// A remote copy, downloaded into the scratch dir.
    Remote,
    /// A file named by hand that no record lists.
    File,
    /// No snapshot was chosen (a check before the choice failed, or the choice itself).
    None,
}

impl DrillOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            DrillOrigin::Local => "local",
            DrillOrigin::Remote => "remote",
            DrillOrigin::File => "file",
            DrillOrigin::None => "none",
        }
    }
}

/// What one drill check found; written as the lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Passed,
    Failed,
    /// Not run: an earlier check failed, or the check is off.
    Skipped,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Passed => "passed",
            Verdict::Failed => "failed",
            Verdict::Skipped => "skipped",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_and_origins_are_written_as_the_strings_records_always_had() {
        for (v, s) in [
            (Verdict::Passed, "passed"),
            (Verdict::Failed, "failed"),
            (Verdict::Skipped, "skipped"),
        ] {
            assert_eq!(serde_json::to_value(v).unwrap(), s);
            assert_eq!(v.as_str(), s);
            assert_eq!(serde_json::from_value::<Verdict>(s.into()).unwrap(), v);
        }
        for (o, s) in [
            (DrillOrigin::Local, "local"),
            (DrillOrigin::Remote, "remote"),
            (DrillOrigin::File, "file"),
            (DrillOrigin::None, "none"),
        ] {
            assert_eq!(serde_json::to_value(o).unwrap(), s);
            assert_eq!(o.as_str(), s);
            assert_eq!(serde_json::from_value::<DrillOrigin>(s.into()).unwrap(), o);
        }
        let json = r#"{"source":"local","checks":[{"name":"wal","result":"failed","detail":"d"}]}"#;
        let d: Drill = serde_json::from_str(json).unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), json);
    }
}
