//! `sidegate check --json` of a configuration, as an operator runs it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

/// `check --json` of `path`, run from `cwd`: it must succeed without a warning.
#[allow(
    dead_code,
    reason = "the proxy and operations tests use it; the Consul tests read the warnings themselves"
)]
pub fn check_json_clean(path: &std::path::Path, cwd: &std::path::Path) -> serde_json::Value {
    let (plan, stderr) = check_json(path, cwd);
    assert!(stderr.is_empty(), "warnings: {stderr}");
    plan
}

/// `check --json` of `path`, run from `cwd`, which must succeed: the plan and what it said
/// on stderr.
pub fn check_json(path: &std::path::Path, cwd: &std::path::Path) -> (serde_json::Value, String) {
    let out = crate::common::sidegate_command()
        .args(["check", "--json", "--config"])
        .arg(path)
        .current_dir(cwd)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    (serde_json::from_slice(&out.stdout).unwrap(), stderr)
}
