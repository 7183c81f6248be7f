//! Running the probe for the channel battery: sandbox options, the
//! outside/inside runs, what a case reports.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::RwLockReadGuard;
use std::time::Duration;

use serde_json::Value;

use nono_tests::runner::{
    fresh_marker, Enforcement, ExecOpts, Harness, ProbeResult, RunAs, SandboxGuard,
};
use nono_tests::sys::{self, CmdOutput, TempDir};

use super::{shared, NOBODY};

/// Options for a sandbox under `e` (fresh proxy endpoint), with
/// `--profile default` (and the probe's directory executable, and
/// `--loopback-port` for each of `loopback`) if `profile`.
pub(super) fn sandbox_opts(
    h: &Harness,
    e: Enforcement,
    profile: bool,
    loopback: &[u16],
) -> ExecOpts {
    let mut o = h.opts(e);
    if profile {
        add_profile(h, &mut o, loopback);
    }
    o
}

pub(super) fn add_profile(h: &Harness, o: &mut ExecOpts, loopback: &[u16]) {
    let dir = h
        .probe_for(o)
        .parent()
        .expect("probe directory")
        .display()
        .to_string();
    o.extra
        .extend(["--profile".into(), "default".into(), "--exec".into(), dir]);
    if o.user.is_some() {
        // The test runs with root's HOME, which an unprivileged agent cannot
        // read (it looks for user profiles under $HOME/.config and refuses
        // on EACCES); a real user has a HOME of their own. This one does
        // not exist, so the built-in `default` is used.
        o.env.push(("HOME".into(), "/nonexistent-nono-home".into()));
    }
    for p in loopback {
        o.extra.extend(["--loopback-port".into(), p.to_string()]);
    }
}

/// The user the sandbox's processes run as under `o` (None: root).
pub(super) fn sandbox_user(o: &ExecOpts) -> Option<RunAs> {
    let nobody = o
        .extra
        .windows(2)
        .any(|w| w[0] == "--user" && w[1] == "nobody");
    o.user.or(nobody.then_some(NOBODY))
}

pub(super) fn what(e: Enforcement, o: &ExecOpts) -> String {
    let extra = if o.extra.is_empty() {
        String::new()
    } else {
        format!(" {}", o.extra.join(" "))
    };
    format!("{}{extra}", e.label())
}

/// Runs the probe once in the client netns, outside any sandbox, as `user`
/// (root if None).
pub(super) fn probe_outside(
    h: &Harness,
    user: Option<RunAs>,
    args: &[String],
) -> (ProbeResult, CmdOutput) {
    match user {
        Some(u) => h.probe_outside_as(u, args),
        None => h.probe_outside(args),
    }
}

pub(super) fn sargs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Where a background probe runs.
pub(super) enum Where {
    /// In the client netns without a sandbox, as this user (root if None).
    Outside(Option<RunAs>),
    /// Under `nono-agent exec` with these options.
    Inside(ExecOpts),
}

/// A probe running in the background with a log directory (mode 0777, any
/// sandbox user may write there) where it writes `ready.json` and watches
/// for `stop`. Its processes are killed when this is dropped.
pub(super) struct Background {
    child: Child,
    /// The spawned process: the agent itself for a sandboxed run (nsenter
    /// and setpriv exec it), else the probe (or setpriv, which execs it).
    pub(super) pid: i32,
    marker: String,
    tmp: TempDir,
    logdir: PathBuf,
    /// Kills what is left of the run (by pid, marker, fresh uid) on drop.
    _guard: SandboxGuard,
    label: String,
    /// For a sandboxed run: a shared hold of [`EXECS`] while it lives.
    _execs: Option<RwLockReadGuard<'static, ()>>,
}

impl Background {
    pub(super) fn start(h: &Harness, at: &Where, args: &[String]) -> Background {
        let tmp = TempDir::new("chan");
        let logdir = tmp.path("log");
        fs::create_dir(&logdir).expect("create log dir");
        fs::set_permissions(&logdir, fs::Permissions::from_mode(0o777)).expect("chmod log dir");
        let marker = fresh_marker();
        let execs = match at {
            Where::Inside(_) => shared(),
            Where::Outside(_) => None,
        };
        let (mut cmd, user, label) = match at {
            Where::Outside(None) => (
                h.fx.client_command(&h.probe),
                None,
                "outside (root)".to_string(),
            ),
            Where::Outside(Some(u)) => {
                let setpriv = sys::require_tool("setpriv", "runs the probe unprivileged");
                let mut c = h.fx.client_command(&setpriv);
                c.args(u.setpriv_args()).arg(sys::accessible(&h.probe));
                (c, Some(*u), format!("outside (uid {})", u.uid))
            }
            Where::Inside(o) => {
                let mut c = h.agent_command(o);
                c.arg(h.probe_for(o));
                (c, o.user, "inside".to_string())
            }
        };
        cmd.args(args)
            .arg("--logdir")
            .arg(&logdir)
            .args(["--marker", &marker])
            .stdin(Stdio::null())
            .stdout(fs::File::create(tmp.path("stdout")).expect("stdout file"))
            .stderr(fs::File::create(tmp.path("stderr")).expect("stderr file"));
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let pid = child.id() as i32;
        let mut guard = SandboxGuard::new();
        guard.pids.push(pid);
        guard.markers.push(marker.clone());
        if let Some(u) = user {
            guard.track_uid(u.uid);
        }
        Background {
            child,
            pid,
            marker,
            tmp,
            logdir,
            _guard: guard,
            label,
            _execs: execs,
        }
    }

    pub(super) fn output(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            fs::read_to_string(self.tmp.path("stdout")).unwrap_or_default(),
            fs::read_to_string(self.tmp.path("stderr")).unwrap_or_default()
        )
    }

    /// The probe's `ready.json` (waits up to 15 s; panics with the output
    /// if it never comes).
    pub(super) fn ready(&mut self) -> Value {
        let path = self.logdir.join("ready.json");
        let mut exited = false;
        let ok = sys::wait_until(Duration::from_secs(15), || {
            exited = matches!(self.child.try_wait(), Ok(Some(_)));
            path.exists() || exited
        });
        let text = fs::read_to_string(&path).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or_else(|_| {
            panic!(
                "[{}] the probe never became ready (timed out: {}, exited: {exited})\n{}",
                self.label,
                !ok,
                self.output()
            )
        })
    }

    /// The port of the listener the probe reported in `ready.json`.
    pub(super) fn ready_local(&mut self) -> SocketAddr {
        let r = self.ready();
        assert!(
            r["ok"] == true,
            "[{}] the probe's listener failed: {r}\n{}",
            self.label,
            self.output()
        );
        r["local"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("[{}] no local address in {r}", self.label))
    }

    /// Asks the probe to stop, waits for the spawned process and returns
    /// the probe's result (None if it printed none, e.g. it was killed).
    pub(super) fn stop(&mut self) -> Option<ProbeResult> {
        let _ = fs::write(self.logdir.join("stop"), "");
        sys::wait_child(&mut self.child, Duration::from_secs(15), &self.label);
        ProbeResult::parse(&fs::read_to_string(self.tmp.path("stdout")).unwrap_or_default())
    }

    /// SIGKILLs the agent (the spawned process, checked to be nono-agent).
    pub(super) fn kill_agent(&mut self) {
        assert_eq!(
            sys::comm(self.pid).as_deref(),
            Some("nono-agent"),
            "[{}] the spawned process {} should be the agent",
            self.label,
            self.pid
        );
        // SAFETY: SIGKILL to the agent we spawned.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        let st = sys::wait_child(&mut self.child, Duration::from_secs(10), "killed agent");
        assert_eq!(st.signal(), Some(libc::SIGKILL), "agent status {st:?}");
    }

    /// Live processes of the run other than the spawned one.
    pub(super) fn others(&self) -> Vec<i32> {
        sys::pids_with_marker(&self.marker)
            .into_iter()
            .filter(|&p| p != self.pid)
            .collect()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = fs::write(self.logdir.join("stop"), "");
        sys::kill_pid(self.pid);
        let _ = self.child.wait();
        // `_guard`, dropped next, kills what is left by marker and uid.
    }
}

/// `nono-agent cleanup`, which must succeed: in the client netns (where
/// the sandbox ran and its sockets are) if `in_client_netns`, else in the
/// test's own.
pub(super) fn run_cleanup(h: &Harness, in_client_netns: bool) -> CmdOutput {
    let mut cmd = if in_client_netns {
        h.fx.client_command(&h.agent)
    } else {
        Command::new(&h.agent)
    };
    let out = sys::run_timeout(cmd.arg("cleanup"), sys::CMD_TIMEOUT);
    assert!(
        out.status.success(),
        "nono-agent cleanup failed: {}",
        out.describe()
    );
    out
}
