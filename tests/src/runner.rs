//! Runs `nono-probe` outside and inside a sandbox and parses its JSON line.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::netns::{NetFixture, PROXY_V4};
use crate::oracle::Oracle;
use crate::sys::{self, CmdOutput};

/// Errnos acceptable for a denied attempt.
pub const DENIED_ERRNOS: &[i32] = &[libc::EPERM, libc::EACCES];

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

/// Removes what a sandbox may have left behind (processes in its cgroup, the
/// cgroup tree, the pin directory). Used by tests after their assertions so a
/// failing agent does not pollute later runs; also runs on panic.
pub struct SandboxGuard {
    pub cgroup: Option<PathBuf>,
    pub pin_dir: Option<PathBuf>,
    pub pids: Vec<i32>,
}

impl SandboxGuard {
    pub fn new() -> SandboxGuard {
        SandboxGuard {
            cgroup: None,
            pin_dir: None,
            pids: Vec::new(),
        }
    }

    /// Records the cgroup/pin dir reported by a probe running in a sandbox.
    pub fn track(&mut self, r: &ProbeResult) {
        if let Some(c) = &r.cgroup {
            self.cgroup = Some(PathBuf::from(c));
        }
        if let Some(p) = &r.pin_dir {
            self.pin_dir = Some(PathBuf::from(p));
        }
    }
}

impl Default for SandboxGuard {
    fn default() -> Self {
        Self::new()
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

impl Drop for SandboxGuard {
    fn drop(&mut self) {
        for &pid in &self.pids {
            sys::kill_pid(pid);
        }
        if let Some(cg) = &self.cgroup {
            // Only ever touch directories under <cgroup2>/nono/.
            let under_nono = sys::cgroup2_mount()
                .map(|m| cg.starts_with(m.join("nono")))
                .unwrap_or(false);
            if under_nono && cg.exists() {
                let _ = fs::write(cg.join("cgroup.kill"), "1");
                sys::wait_until(Duration::from_secs(2), || {
                    fs::read_to_string(cg.join("cgroup.procs"))
                        .map(|s| s.trim().is_empty())
                        .unwrap_or(true)
                });
                remove_cgroup_tree(cg);
            }
        }
        if let Some(p) = &self.pin_dir {
            let under_bpffs = sys::bpffs_mount()
                .map(|m| p.starts_with(m))
                .unwrap_or(false);
            if under_bpffs && p.exists() {
                let _ = fs::remove_dir_all(p);
            }
        }
    }
}

/// Options for one `nono-agent exec` invocation.
#[derive(Debug, Clone, Default)]
pub struct ExecOpts {
    pub enforcer: Option<String>,
    pub proxy_endpoints: Vec<SocketAddr>,
    pub events: Option<PathBuf>,
    pub quiet: bool,
    /// Run inside the fixture's client netns (otherwise in the test's netns;
    /// only for commands that send no traffic).
    pub in_client_netns: bool,
}

/// A fixture + oracle + binaries. Field order matters: the oracle (sockets in
/// the server netns) is dropped before the namespaces.
pub struct Harness {
    pub oracle: Oracle,
    pub fx: NetFixture,
    pub probe: PathBuf,
    pub agent: PathBuf,
}

impl Harness {
    /// `probe` is `env!("CARGO_BIN_EXE_nono-probe")` from the test crate.
    pub fn new(probe: &str) -> Harness {
        sys::require_prereqs();
        Harness::with_agent(probe, sys::agent_bin())
    }

    /// Like [`Harness::new`] with an explicit agent path (the harness
    /// self-test, which never runs the agent, passes a dummy one).
    pub fn with_agent(probe: &str, agent: PathBuf) -> Harness {
        sys::require_prereqs();
        let probe = PathBuf::from(probe);
        assert!(
            probe.is_file(),
            "nono-probe not found at {}",
            probe.display()
        );
        let fx = NetFixture::new();
        let oracle = Oracle::start(&fx);
        Harness {
            oracle,
            fx,
            probe,
            agent,
        }
    }

    /// A fresh proxy endpoint 203.0.113.2:<port> with a listener behind it.
    pub fn proxy_endpoint(&self) -> SocketAddr {
        let port = self.fx.port();
        self.oracle.listen_tcp(port);
        SocketAddr::new(PROXY_V4.into(), port)
    }

    /// Runs the probe in the client netns as root, outside any sandbox.
    pub fn probe_outside(&self, args: &[String]) -> (ProbeResult, CmdOutput) {
        let out = sys::run_timeout(
            self.fx.client_command(&self.probe).args(args),
            sys::CMD_TIMEOUT,
        );
        let r = ProbeResult::parse(&out.stdout).unwrap_or_else(|| {
            panic!(
                "probe {args:?} (outside) printed no result: {}",
                out.describe()
            )
        });
        (r, out)
    }

    /// The `nono-agent exec ... --` command line (without the child command).
    pub fn agent_command(&self, opts: &ExecOpts) -> Command {
        let mut cmd = if opts.in_client_netns {
            self.fx.client_command(&self.agent)
        } else {
            Command::new(&self.agent)
        };
        cmd.arg("exec");
        if let Some(e) = &opts.enforcer {
            cmd.args(["--enforcer", e]);
        }
        for pe in &opts.proxy_endpoints {
            cmd.arg("--proxy-endpoint").arg(pe.to_string());
        }
        if let Some(ev) = &opts.events {
            cmd.arg("--events").arg(ev);
        }
        if opts.quiet {
            cmd.arg("--quiet");
        }
        cmd.arg("--");
        cmd
    }

    /// Runs `nono-agent exec [opts] -- argv...` and returns its output.
    pub fn agent_exec(&self, opts: &ExecOpts, argv: &[&str]) -> CmdOutput {
        sys::run_timeout(self.agent_command(opts).args(argv), sys::CMD_TIMEOUT)
    }

    /// Runs the probe inside a sandbox (client netns, given enforcer, a fresh
    /// proxy endpoint so the allow-list is never empty).
    pub fn probe_sandboxed(&self, enforcer: &str, args: &[String]) -> (ProbeResult, CmdOutput) {
        let opts = ExecOpts {
            enforcer: Some(enforcer.to_string()),
            proxy_endpoints: vec![self.proxy_endpoint()],
            in_client_netns: true,
            ..Default::default()
        };
        self.probe_sandboxed_with(&opts, args)
    }

    pub fn probe_sandboxed_with(
        &self,
        opts: &ExecOpts,
        args: &[String],
    ) -> (ProbeResult, CmdOutput) {
        let mut cmd = self.agent_command(opts);
        cmd.arg(&self.probe).args(args);
        let out = sys::run_timeout(&mut cmd, sys::CMD_TIMEOUT);
        let r = ProbeResult::parse(&out.stdout).unwrap_or_else(|| {
            panic!(
                "probe {args:?} (sandboxed) printed no result: {}",
                out.describe()
            )
        });
        (r, out)
    }

    pub fn probe_path(&self) -> &str {
        self.probe.to_str().expect("utf-8 probe path")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_line_parsing() {
        let err = "noise\nnono-agent: sandbox ab12: 3 denied (connect4: 2, sock_create: 1)\n";
        let (n, hooks) = parse_summary(err, "ab12").unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            hooks,
            vec![("connect4".to_string(), 2), ("sock_create".to_string(), 1)]
        );
        assert_eq!(
            parse_summary("nono-agent: sandbox x: 0 denied\n", "x"),
            Some((0, vec![]))
        );
        assert_eq!(
            parse_summary("nono-agent: sandbox x: 0 denied\n", "y"),
            None
        );
    }

    #[test]
    fn probe_result_parsing() {
        let out = "garbage\n{\"vector\":\"tcp4\",\"ok\":false,\"errno\":1,\"detail\":\"d\",\
                   \"pid\":5,\"sandbox\":\"s\",\"cgroup\":null,\"pin_dir\":null,\"steps\":[]}\n";
        let r = ProbeResult::parse(out).unwrap();
        assert_eq!(r.vector, "tcp4");
        assert!(r.denied());
        assert_eq!(r.pid, Some(5));
        assert_eq!(r.sandbox.as_deref(), Some("s"));
        assert!(ProbeResult::parse("no json").is_none());
    }
}
