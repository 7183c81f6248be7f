//! What a run reports: the probe's JSON line (`ProbeResult`) and the
//! agent's summary line.

use serde_json::Value;

use super::DENIED_ERRNOS;

/// One parsed `nono-probe` result line.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    pub vector: String,
    pub ok: bool,
    pub errno: Option<i32>,
    pub detail: String,
    pub pid: Option<i32>,
    pub sandbox: Option<String>,
    pub cgroup: Option<String>,
    pub pin_dir: Option<String>,
    pub raw: Value,
}

impl ProbeResult {
    /// Parses the last JSON line with a "vector" key in `stdout`.
    pub fn parse(stdout: &str) -> Option<ProbeResult> {
        stdout.lines().rev().find_map(|l| {
            let v: Value = serde_json::from_str(l.trim()).ok()?;
            Some(ProbeResult {
                vector: v.get("vector")?.as_str()?.to_string(),
                ok: v["ok"].as_bool()?,
                errno: v["errno"].as_i64().map(|e| e as i32),
                detail: v["detail"].as_str().unwrap_or_default().to_string(),
                pid: v["pid"].as_i64().map(|p| p as i32),
                sandbox: v["sandbox"].as_str().map(str::to_string),
                cgroup: v["cgroup"].as_str().map(str::to_string),
                pin_dir: v["pin_dir"].as_str().map(str::to_string),
                raw: v,
            })
        })
    }

    /// Parses every probe JSON line in `stdout` (for multi-probe scripts).
    pub fn parse_all(stdout: &str) -> Vec<ProbeResult> {
        stdout.lines().filter_map(ProbeResult::parse).collect()
    }

    /// Steps recorded by process vectors: (name, ok, errno, detail).
    pub fn steps(&self) -> Vec<(String, bool, Option<i32>, String)> {
        self.raw["steps"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| {
                        (
                            s["name"].as_str().unwrap_or_default().to_string(),
                            s["ok"].as_bool().unwrap_or(false),
                            s["errno"].as_i64().map(|e| e as i32),
                            s["detail"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// True if the attempt failed with EPERM/EACCES.
    pub fn denied(&self) -> bool {
        !self.ok && self.errno.is_some_and(|e| DENIED_ERRNOS.contains(&e))
    }
}

/// Parses the agent's summary line for `sandbox` from stderr:
/// `nono-agent: sandbox ID: N denied (hook: n, ...)` -> (N, [(hook, n)]).
pub fn parse_summary(stderr: &str, sandbox: &str) -> Option<(u64, Vec<(String, u64)>)> {
    let prefix = format!("nono-agent: sandbox {sandbox}: ");
    let line = stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix(&prefix))?;
    let (total, rest) = line.split_once(" denied")?;
    let total = total.trim().parse().ok()?;
    let mut hooks = Vec::new();
    if let Some(inner) = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
    {
        for part in inner.split(',') {
            let (h, n) = part.split_once(':')?;
            hooks.push((h.trim().to_string(), n.trim().parse().ok()?));
        }
    }
    Some((total, hooks))
}
