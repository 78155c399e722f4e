//! `etcdguard config check`: the effective configuration, redacted, and every problem the
//! pre-flight checks find, in the words a backup would use.

use std::path::Path;
use std::process::ExitCode;

use super::output::{print, say};
use super::{runtime, CmdResult};
use crate::config::{self, ConfigError, Problem};
use crate::exit::CommandError;
use crate::preflight::{self, RemoteCheck};
use crate::records;

pub(super) fn run(config_path: Option<&Path>, check_remote: bool) -> CmdResult {
    let config = config::load(config_path)?;
    let mut problems = Vec::new();
    let problem = |field: &str, message: String| Problem {
        file: config.source.clone(),
        position: None,
        field: Some(field.to_string()),
        message,
    };

    let local = preflight::local(&config);
    let endpoint = local.endpoint;
    let warnings = local.warnings;
    for (field, message) in local.problems {
        problems.push(problem(field, message));
    }
    for (table, checked) in runtime()?.block_on(preflight::remote(&config, check_remote)) {
        match checked {
            Ok(RemoteCheck::Probed(found)) => say(&format!("destination: {found}\n"))?,
            Ok(RemoteCheck::Opened) => {}
            Err(e) => problems.push(problem(&table, e)),
        }
    }

    let mut out = String::new();
    out.push_str(&format!(
        "# effective configuration (from {})\n",
        config
            .source
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| format!(
                "built-in defaults: {} does not exist",
                config::DEFAULT_CONFIG_PATH
            ))
    ));
    if let Some(ep) = &endpoint {
        out.push_str(&format!("# etcd endpoint in use: {ep}\n"));
    }
    if let Some(next) = config
        .schedule
        .next_after(crate::clock::now(), &config.timezone)
    {
        out.push_str(&format!(
            "# next scheduled backup: {}{}\n",
            records::rfc3339(next),
            if config.paused {
                " (paused: will be skipped)"
            } else {
                ""
            }
        ));
    }
    out.push_str(&config.to_redacted_toml());
    print(&out)?;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    if problems.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(CommandError::Config(ConfigError { problems }))
    }
}
