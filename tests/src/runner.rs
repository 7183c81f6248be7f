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

/// Which enforcer confines the sandbox, and whether the agent is root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforcement {
    /// `--enforcer bpf` as root: cgroup BPF, pid/cgroup/mount namespaces,
    /// no capabilities.
    Bpf,
    /// `--enforcer seccomp` as root: the seccomp supervisor, with the same
    /// namespaces and capability drop, but no cgroup.
    Seccomp,
    /// `--enforcer seccomp` as an unprivileged user ([`RunAs::fresh`]): no
    /// namespaces, no cgroup; leftovers are killed through the agent being
    /// a child subreaper.
    SeccompUser,
}

impl Enforcement {
    pub const ALL: [Enforcement; 3] = [
        Enforcement::Bpf,
        Enforcement::Seccomp,
        Enforcement::SeccompUser,
    ];

    /// The `--enforcer` value (also NONO_ENFORCER in the sandbox and the
    /// events' "source").
    pub fn flag(self) -> &'static str {
        match self {
            Enforcement::Bpf => "bpf",
            Enforcement::Seccomp | Enforcement::SeccompUser => "seccomp",
        }
    }

    /// A name for messages.
    pub fn label(self) -> &'static str {
        match self {
            Enforcement::Bpf => "bpf (root)",
            Enforcement::Seccomp => "seccomp (root)",
            Enforcement::SeccompUser => "seccomp (unprivileged)",
        }
    }

    /// The agent runs as root (namespaces, capability drop).
    pub fn privileged(self) -> bool {
        self != Enforcement::SeccompUser
    }

    /// The sandbox has its own cgroup (NONO_CGROUP, NONO_BPF_PIN_DIR).
    pub fn has_cgroup(self) -> bool {
        self == Enforcement::Bpf
    }

    /// The event hook that reports a denied connect for `family` ("inet" /
    /// "inet6"), and the one that reports a refused socket().
    pub fn connect_hook(self, v6: bool) -> &'static str {
        match (self, v6) {
            (Enforcement::Bpf, false) => "connect4",
            (Enforcement::Bpf, true) => "connect6",
            _ => "connect",
        }
    }

    pub fn socket_hook(self) -> &'static str {
        match self {
            Enforcement::Bpf => "sock_create",
            _ => "socket",
        }
    }
}

/// First uid/gid handed out by [`RunAs::fresh`] (no account needs to exist).
pub const FRESH_UID_BASE: u32 = 0x5e00_0000;
const FRESH_UID_SPAN: u32 = 0x1_0000 * 64;

/// An unprivileged identity for the agent (through `setpriv`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

impl RunAs {
    /// A uid/gid no other process uses: unique to this test process and
    /// call. So a sandbox's `kill(-1)` reaches only its own run, and its
    /// leftovers are exactly the processes with that uid.
    pub fn fresh() -> RunAs {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed) % 64;
        let id = FRESH_UID_BASE + (std::process::id() & 0xffff) * 64 + n;
        RunAs { uid: id, gid: id }
    }

    /// Whether `uid` is one [`RunAs::fresh`] hands out (guards only ever
    /// kill processes of such uids).
    pub fn is_fresh(uid: u32) -> bool {
        (FRESH_UID_BASE..FRESH_UID_BASE + FRESH_UID_SPAN).contains(&uid)
    }

    /// `setpriv` arguments that switch to this identity with no
    /// capabilities (bounding and inheritable sets emptied too).
    pub fn setpriv_args(self) -> Vec<String> {
        vec![
            format!("--reuid={}", self.uid),
            format!("--regid={}", self.gid),
            "--clear-groups".into(),
            "--inh-caps=-all".into(),
            "--bounding-set=-all".into(),
            "--".into(),
        ]
    }
}

/// A fresh marker argument for one sandboxed probe run: the probe ignores
/// it, its forks inherit it, so every process of the run can be found (and
/// killed) from the host by its command line.
pub fn fresh_marker() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "nono-mark-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

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
    /// Processes whose command line carries one of these are killed.
    pub markers: Vec<String>,
    /// Processes of these ([`RunAs::fresh`]) uids are killed.
    pub uids: Vec<u32>,
}

impl SandboxGuard {
    pub fn new() -> SandboxGuard {
        SandboxGuard {
            cgroup: None,
            pin_dir: None,
            pids: Vec::new(),
            markers: Vec::new(),
            uids: Vec::new(),
        }
    }

    /// Records the cgroup/pin dir, marker and fresh uid reported by a probe
    /// running in a sandbox.
    pub fn track(&mut self, r: &ProbeResult) {
        if let Some(c) = &r.cgroup {
            self.cgroup = Some(PathBuf::from(c));
        }
        if let Some(p) = &r.pin_dir {
            self.pin_dir = Some(PathBuf::from(p));
        }
        if let Some(m) = r.raw["marker"].as_str() {
            if !self.markers.iter().any(|x| x == m) {
                self.markers.push(m.to_string());
            }
        }
        if let Some(u) = r.raw["uid"].as_u64() {
            self.track_uid(u as u32);
        }
    }

    /// Records a [`RunAs::fresh`] uid (others are ignored).
    pub fn track_uid(&mut self, uid: u32) {
        if RunAs::is_fresh(uid) && !self.uids.contains(&uid) {
            self.uids.push(uid);
        }
    }

    /// Live processes left by the tracked runs (by marker and fresh uid).
    pub fn leftovers(&self) -> Vec<i32> {
        let mut v: Vec<i32> = self
            .markers
            .iter()
            .flat_map(|m| sys::pids_with_marker(m))
            .chain(self.uids.iter().flat_map(|&u| sys::pids_of_uid(u)))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
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
        for _ in 0..3 {
            let left = self.leftovers();
            if left.is_empty() {
                break;
            }
            left.into_iter().for_each(sys::kill_pid);
            std::thread::sleep(Duration::from_millis(50));
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
    /// Run the agent as this unprivileged identity (`setpriv`).
    pub user: Option<RunAs>,
    /// More `exec` options, before `--` (e.g. `--profile default`,
    /// `--loopback-port P`, `--user nobody`).
    pub extra: Vec<String>,
    /// Environment variables set for the agent (e.g. a `HOME` the
    /// unprivileged agent can read, where it looks up user profiles).
    pub env: Vec<(String, String)>,
}

impl ExecOpts {
    /// `--enforcer` for `e`, in the client netns, as a fresh unprivileged
    /// user for [`Enforcement::SeccompUser`].
    pub fn for_enforcement(e: Enforcement) -> ExecOpts {
        ExecOpts {
            enforcer: Some(e.flag().to_string()),
            in_client_netns: true,
            user: (!e.privileged()).then(RunAs::fresh),
            ..Default::default()
        }
    }
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
    /// With `opts.user`, the agent runs through `setpriv` as that user (from
    /// a copy any user can execute, if need be).
    pub fn agent_command(&self, opts: &ExecOpts) -> Command {
        exec_command(&self.agent, opts.in_client_netns.then_some(&self.fx), opts)
    }

    /// Runs `nono-agent exec [opts] -- argv...` and returns its output.
    pub fn agent_exec(&self, opts: &ExecOpts, argv: &[&str]) -> CmdOutput {
        sys::run_timeout(self.agent_command(opts).args(argv), sys::CMD_TIMEOUT)
    }

    /// Options for a sandboxed run under `e` with a fresh proxy endpoint (so
    /// the allow-list is never empty).
    pub fn opts(&self, e: Enforcement) -> ExecOpts {
        ExecOpts {
            proxy_endpoints: vec![self.proxy_endpoint()],
            ..ExecOpts::for_enforcement(e)
        }
    }

    /// Runs the probe inside a sandbox (client netns, enforcement `e`, a
    /// fresh proxy endpoint so the allow-list is never empty).
    pub fn probe_sandboxed(&self, e: Enforcement, args: &[String]) -> (ProbeResult, CmdOutput) {
        self.probe_sandboxed_with(&self.opts(e), args)
    }

    /// Runs the probe inside a sandbox with `opts`, adding a fresh
    /// `--marker` (see [`fresh_marker`]); the result echoes it.
    pub fn probe_sandboxed_with(
        &self,
        opts: &ExecOpts,
        args: &[String],
    ) -> (ProbeResult, CmdOutput) {
        let mut cmd = self.agent_command(opts);
        cmd.arg(self.probe_for(opts))
            .args(args)
            .args(["--marker".to_string(), fresh_marker()]);
        let out = sys::run_timeout(&mut cmd, sys::CMD_TIMEOUT);
        let r = ProbeResult::parse(&out.stdout).unwrap_or_else(|| {
            panic!(
                "probe {args:?} (sandboxed, {:?} as {:?}) printed no result: {}",
                opts.enforcer,
                opts.user,
                out.describe()
            )
        });
        if let Some(u) = opts.user {
            assert_eq!(
                r.raw["uid"].as_u64(),
                Some(u64::from(u.uid)),
                "the sandboxed probe did not run as uid {}: {}",
                u.uid,
                r.raw
            );
        }
        (r, out)
    }

    /// Runs the probe in the client netns as `user` (no sandbox).
    pub fn probe_outside_as(&self, user: RunAs, args: &[String]) -> (ProbeResult, CmdOutput) {
        let setpriv = sys::require_tool("setpriv", "runs the probe unprivileged");
        let mut cmd = self.fx.client_command(&setpriv);
        cmd.args(user.setpriv_args())
            .arg(sys::accessible(&self.probe))
            .args(args);
        let out = sys::run_timeout(&mut cmd, sys::CMD_TIMEOUT);
        let r = ProbeResult::parse(&out.stdout).unwrap_or_else(|| {
            panic!(
                "probe {args:?} (outside, uid {}) printed no result: {}",
                user.uid,
                out.describe()
            )
        });
        (r, out)
    }

    /// The probe binary as the sandbox for `opts` can execute it.
    pub fn probe_for(&self, opts: &ExecOpts) -> PathBuf {
        match opts.user {
            Some(_) => sys::accessible(&self.probe),
            None => self.probe.clone(),
        }
    }

    pub fn probe_path(&self) -> &str {
        self.probe.to_str().expect("utf-8 probe path")
    }
}

/// `[nsenter --net=<client netns>] [setpriv <user>] <agent> exec [opts] --`
/// (without the child command): `netns` runs it in a fixture's client
/// netns, `opts.user` as that unprivileged user (from a copy of the agent
/// any user can execute, if need be).
pub fn exec_command(agent: &Path, netns: Option<&NetFixture>, opts: &ExecOpts) -> Command {
    let agent = match opts.user {
        Some(_) => sys::accessible(agent),
        None => agent.to_path_buf(),
    };
    let mut cmd = match opts.user {
        None => match netns {
            Some(fx) => fx.client_command(&agent),
            None => Command::new(&agent),
        },
        Some(u) => {
            let setpriv = sys::require_tool("setpriv", "runs the agent unprivileged");
            let mut c = match netns {
                Some(fx) => fx.client_command(&setpriv),
                None => Command::new(&setpriv),
            };
            c.args(u.setpriv_args()).arg(&agent);
            c
        }
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
    cmd.args(&opts.extra);
    cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
    cmd.arg("--");
    cmd
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
    fn fresh_identities_are_unique_and_recognised() {
        let (a, b) = (RunAs::fresh(), RunAs::fresh());
        assert_ne!(a, b);
        assert!(RunAs::is_fresh(a.uid) && RunAs::is_fresh(b.uid));
        assert!(!RunAs::is_fresh(0) && !RunAs::is_fresh(65534));
        assert_eq!(a.uid, a.gid);
        assert!(a.uid < 0x7fff_ffff, "inside ping_group_range");
        assert_ne!(fresh_marker(), fresh_marker());
    }

    #[test]
    fn enforcement_names() {
        assert_eq!(Enforcement::Bpf.flag(), "bpf");
        assert_eq!(Enforcement::SeccompUser.flag(), "seccomp");
        assert!(!Enforcement::SeccompUser.privileged());
        assert!(Enforcement::Bpf.has_cgroup() && !Enforcement::Seccomp.has_cgroup());
        assert_eq!(Enforcement::Seccomp.connect_hook(true), "connect");
        assert_eq!(Enforcement::Bpf.connect_hook(true), "connect6");
        let opts = ExecOpts::for_enforcement(Enforcement::SeccompUser);
        assert!(opts.user.is_some() && opts.in_client_netns);
        assert!(ExecOpts::for_enforcement(Enforcement::Seccomp)
            .user
            .is_none());
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
