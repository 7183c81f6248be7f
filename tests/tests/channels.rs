//! Channel battery (issue 8): the ways data left a sandbox that the escape
//! battery did not look at, because the sandbox does not *send* the
//! packets itself, or sends them after it is gone, or has someone else send
//! them:
//!
//! 1. **Inbound TCP** (v4, v6, dual stack, `listen()` on an unbound
//!    socket): the test host connects to a listener in the sandbox and
//!    must receive nothing; binds to a real interface's address are
//!    refused; a listener whose agent was SIGKILLed hands out nothing
//!    either (then `nono-agent cleanup` removes the BPF sandbox).
//! 2. **SYN-cookie SYN-ACKs**: a listener with a full accept queue
//!    (`listen(fd, 0)`) makes the kernel answer SYNs with cookie SYN-ACKs
//!    whose MSS option is the sandbox's `TCP_MAXSEG`; none may reach the
//!    test host.
//! 3. **Data queued at teardown**: a connection to an allowed peer that does
//!    not read keeps ~1 MiB queued when the sandbox exits; outside a
//!    sandbox the orphaned socket delivers it all, inside the sandbox's
//!    sockets are destroyed (the peer gets a reset, far fewer bytes, and no
//!    socket with that 4-tuple is left), also through `nono-agent cleanup`
//!    after a SIGKILLed agent.
//! 4. **Device-bound loopback sends**: `SO_BINDTODEVICE` /
//!    `SO_BINDTOIFINDEX` to the veth, then a datagram to 127.0.0.1, which
//!    leaves through the veth once the test host answers ARP for 127.0.0.1.
//! 5. **Multicast membership reports**: every join option (IPv4, IPv6,
//!    `MCAST_*`, source-specific, and a drop after a join) makes the kernel
//!    send IGMP / MLD reports naming the group; the options must be refused
//!    and no report naming the group may arrive.
//! 6. **The supervisor's rights**: a root agent's sandbox running as
//!    `--user nobody` must not reach a root-only unix socket, peers must see
//!    the sandbox's uid/gid (never 0, never the agent's pid) in
//!    `SO_PEERCRED` / `SCM_CREDENTIALS`, and capability-gated control
//!    messages (`SO_MARK`, IPv6 hop-by-hop options) are refused as the
//!    kernel refuses them to that user.
//!
//! Every security test first shows the channel working outside the
//! sandbox (same probe, same user, the receiver on the test host, or on
//! loopback, records the data), then runs it under `nono-agent exec` and
//! asserts the receiver recorded nothing; the probe's own outcome is
//! recorded too, but the receiver decides. Over-blocking tests check that
//! loopback servers and clients in one sandbox (0.0.0.0, [::] dual stack,
//! 127.0.0.1, ::1, unbound `listen()`; TCP and UDP), binding to `lo`, and
//! the proxy endpoint keep working.
//!
//! One module per enforcement (`bpf::`, `seccomp::`, `seccomp_user::`),
//! one test per channel; `*_profile` tests repeat a channel under
//! `--profile default` (with `--loopback-port` where a loopback port is
//! involved). Tests that SIGKILL an agent and run `nono-agent cleanup`
//! (which acts on every orphaned sandbox) hold a lock so they do not clean
//! up each other's sandboxes mid-test.
//!
//! Needs root and a real kernel. Run with
//! `cargo test -p nono-tests --test channels`.

use std::cell::Cell;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use serde_json::Value;

use nono_tests::channels::{
    connect_and_read, fresh_groups, netstat, raw_syns, tcp_sockets_with, HeldReceiver, UnixReceiver,
};
use nono_tests::netns::{
    in_netns, sysctl_in, CLIENT_V4, CLIENT_V6, PROXY_V4, SERVER_MAC, SERVER_V4, SERVER_V6,
};
use nono_tests::oracle::UdpReceiver;
use nono_tests::runner::{
    fresh_marker, Enforcement, ExecOpts, Harness, ProbeResult, RunAs, SandboxGuard,
};
use nono_tests::sys::{self, CmdOutput, TempDir};
use nono_tests::vectors::{Attempt, Mode, NetVector, Observe, Target};

const PROBE: &str = env!("CARGO_BIN_EXE_nono-probe");

/// How long the test host waits for a connection or data that must not
/// come (and for a refused connect to time out).
const NOTHING_WAIT: Duration = Duration::from_millis(1200);

/// `nobody`: the user a root agent runs the sandbox as (`--user nobody`)
/// for the supervisor-rights checks.
const NOBODY: RunAs = RunAs {
    uid: 65534,
    gid: 65534,
};

/// Every `nono-agent exec` first sweeps orphaned sandboxes (like
/// `nono-agent cleanup`), and so would remove the sandbox a test has just
/// orphaned by SIGKILLing its agent, from another network namespace, before
/// the test looks at it. Sandboxed runs hold this shared; the tests that
/// kill an agent hold it exclusively ([`exclusive`]) for their whole run.
static EXECS: RwLock<()> = RwLock::new(());

thread_local! {
    /// This test thread holds [`EXECS`] exclusively.
    static EXCLUSIVE: Cell<bool> = const { Cell::new(false) };
}

/// Held by a test that orphans a sandbox: no other sandbox starts meanwhile.
struct Exclusive {
    _execs: RwLockWriteGuard<'static, ()>,
}

impl Drop for Exclusive {
    fn drop(&mut self) {
        EXCLUSIVE.with(|x| x.set(false));
    }
}

fn exclusive() -> Exclusive {
    let g = EXECS.write().unwrap_or_else(|e| e.into_inner());
    EXCLUSIVE.with(|x| x.set(true));
    Exclusive { _execs: g }
}

/// Shared hold on [`EXECS`] for one sandboxed run (None on the thread that
/// holds it exclusively).
fn shared() -> Option<RwLockReadGuard<'static, ()>> {
    (!EXCLUSIVE.with(Cell::get)).then(|| EXECS.read().unwrap_or_else(|e| e.into_inner()))
}

/// [`Harness::probe_sandboxed_with`] under a shared hold of [`EXECS`]; the
/// run's processes are tracked by `guard`.
fn sandboxed(
    h: &Harness,
    opts: &ExecOpts,
    args: &[String],
    guard: &mut SandboxGuard,
) -> (ProbeResult, CmdOutput) {
    let _g = shared();
    let (r, out) = h.probe_sandboxed_with(opts, args);
    guard.track(&r);
    (r, out)
}

/// Runs the probe outside the sandbox (as `user`) and asserts it
/// succeeded: the baseline of a check that must keep working inside.
fn assert_outside_ok(h: &Harness, user: Option<RunAs>, args: &[String], label: &str) {
    let (r, out) = probe_outside(h, user, args);
    assert!(
        r.ok,
        "[{label}] outside the sandbox: {:?}\n{}",
        r.steps(),
        out.describe()
    );
}

/// One module per enforcement (`bpf`, `seccomp`, `seccomp_user`), each with
/// one test per listed function.
macro_rules! channel_tests {
    ($($f:ident),* $(,)?) => {
        nono_tests::per_enforcement!(bpf, super::Enforcement::Bpf, [$($f),*]);
        nono_tests::per_enforcement!(seccomp, super::Enforcement::Seccomp, [$($f),*]);
        nono_tests::per_enforcement!(
            seccomp_user,
            super::Enforcement::SeccompUser,
            [$($f),*]
        );
    };
}

channel_tests![
    inbound_udp_datagrams,
    inbound_tcp4_wildcard,
    inbound_tcp6_dual_stack,
    inbound_tcp_unbound_listen,
    inbound_tcp_dual_stack_profile,
    inbound_bind_to_interface_address_refused,
    inbound_after_agent_killed,
    syn_cookie_synack_v4,
    syn_cookie_synack_v6,
    syn_cookie_synack_v4_profile,
    device_bound_loopback_by_name,
    device_bound_loopback_by_index,
    device_bound_loopback_profile,
    device_binding_to_lo,
    multicast_membership_reports,
    multicast_membership_reports_profile,
    supervisor_unix_send_to_root_only_socket,
    supervisor_unix_peer_credentials,
    supervisor_capability_gated_cmsgs,
    supervisor_rights_profile,
    loopback_servers_and_proxy_keep_working,
    loopback_servers_keep_working_profile,
];

/// Queued data on a connection the sandbox leaves behind never goes out
/// unjudged: BPF only, because only there do the judges (the programs) go
/// away at teardown. Under seccomp every byte on a connected socket goes to
/// the destination the supervisor approved at `connect`, before and after
/// the sandbox ends, and nothing is removed (README, "Sockets that outlive
/// the sandbox").
#[test]
fn bpf_teardown_queued_data_to_proxy() {
    teardown_queued_data_to_proxy(Enforcement::Bpf);
}

#[test]
fn bpf_teardown_queued_data_to_loopback_profile() {
    teardown_queued_data_to_loopback_profile(Enforcement::Bpf);
}

/// `nono-agent cleanup` after a SIGKILLed agent destroys the sandbox's
/// sockets (BPF only: the other enforcers have no cgroup to find them by).
#[test]
fn bpf_teardown_queued_data_after_agent_killed_and_cleanup() {
    teardown_after_agent_killed(Enforcement::Bpf, true);
}

/// The same with `nono-agent cleanup` run from the test's own network
/// namespace, not the one the sandbox ran in (as an administrator would
/// run it): the sandbox's sockets are still its sockets and must not be
/// left transmitting once the programs are unpinned.
#[test]
fn bpf_teardown_queued_data_after_agent_killed_and_cleanup_from_other_netns() {
    teardown_after_agent_killed(Enforcement::Bpf, false);
}

// ---------------------------------------------------------------------------
// Running the probe

/// Options for a sandbox under `e` (fresh proxy endpoint), with
/// `--profile default` (and the probe's directory executable, and
/// `--loopback-port` for each of `loopback`) if `profile`.
fn sandbox_opts(h: &Harness, e: Enforcement, profile: bool, loopback: &[u16]) -> ExecOpts {
    let mut o = h.opts(e);
    if profile {
        add_profile(h, &mut o, loopback);
    }
    o
}

fn add_profile(h: &Harness, o: &mut ExecOpts, loopback: &[u16]) {
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
fn sandbox_user(o: &ExecOpts) -> Option<RunAs> {
    let nobody = o
        .extra
        .windows(2)
        .any(|w| w[0] == "--user" && w[1] == "nobody");
    o.user.or(nobody.then_some(NOBODY))
}

fn what(e: Enforcement, o: &ExecOpts) -> String {
    let extra = if o.extra.is_empty() {
        String::new()
    } else {
        format!(" {}", o.extra.join(" "))
    };
    format!("{}{extra}", e.label())
}

/// Runs the probe once in the client netns, outside any sandbox, as `user`
/// (root if None).
fn probe_outside(h: &Harness, user: Option<RunAs>, args: &[String]) -> (ProbeResult, CmdOutput) {
    match user {
        Some(u) => h.probe_outside_as(u, args),
        None => h.probe_outside(args),
    }
}

fn sargs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Where a background probe runs.
enum Where {
    /// In the client netns without a sandbox, as this user (root if None).
    Outside(Option<RunAs>),
    /// Under `nono-agent exec` with these options.
    Inside(ExecOpts),
}

/// A probe running in the background with a log directory (mode 0777, any
/// sandbox user may write there) where it writes `ready.json` and watches
/// for `stop`. Its processes are killed when this is dropped.
struct Background {
    child: Child,
    /// The spawned process: the agent itself for a sandboxed run (nsenter
    /// and setpriv exec it), else the probe (or setpriv, which execs it).
    pid: i32,
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
    fn start(h: &Harness, at: &Where, args: &[String]) -> Background {
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

    fn output(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            fs::read_to_string(self.tmp.path("stdout")).unwrap_or_default(),
            fs::read_to_string(self.tmp.path("stderr")).unwrap_or_default()
        )
    }

    /// The probe's `ready.json` (waits up to 15 s; panics with the output
    /// if it never comes).
    fn ready(&mut self) -> Value {
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
    fn ready_local(&mut self) -> SocketAddr {
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
    fn stop(&mut self) -> Option<ProbeResult> {
        let _ = fs::write(self.logdir.join("stop"), "");
        sys::wait_child(&mut self.child, Duration::from_secs(15), &self.label);
        ProbeResult::parse(&fs::read_to_string(self.tmp.path("stdout")).unwrap_or_default())
    }

    /// SIGKILLs the agent (the spawned process, checked to be nono-agent).
    fn kill_agent(&mut self) {
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
    fn others(&self) -> Vec<i32> {
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
fn run_cleanup(h: &Harness, in_client_netns: bool) -> CmdOutput {
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

// ---------------------------------------------------------------------------
// 1. Inbound TCP

fn listen_args(bind: &str, port: u16, secret: &str) -> Vec<String> {
    sargs(&[
        "listen-serve",
        "--bind",
        bind,
        "--port",
        &port.to_string(),
        "--secret",
        secret,
        "--secs",
        "30",
    ])
}

/// The test host connects to `targets` on `port` and reads; returns what
/// each got (for messages).
fn connect_all(
    h: &Harness,
    targets: &[IpAddr],
    port: u16,
    wait: Duration,
) -> Vec<(IpAddr, Vec<u8>, String)> {
    targets
        .iter()
        .map(|t| {
            let got = connect_and_read(&h.fx.server, SocketAddr::new(*t, port), wait);
            let how = format!("connected={} end={}", got.connected, got.end);
            (*t, got.bytes, how)
        })
        .collect()
}

/// A listener (`bind`: an address, or `unbound4` / `unbound6`) that writes
/// a secret to every connection: outside the sandbox the test host,
/// connecting to each of `targets`, receives the secret; inside it
/// receives nothing (its connect times out or is refused, or the
/// connection carries no data).
fn inbound_case(e: Enforcement, profile: bool, bind: &str, targets: &[IpAddr]) {
    let h = Harness::new(PROBE);
    let opts = sandbox_opts(&h, e, profile, &[PROFILE_LOOPBACK_PORT]);
    let label = format!("inbound {bind}, {}", what(e, &opts));
    let secret = format!("SECRET-{}", h.fx.tag());
    let port = if bind.starts_with("unbound") {
        0
    } else {
        h.fx.port()
    };

    let mut out = Background::start(
        &h,
        &Where::Outside(sandbox_user(&opts)),
        &listen_args(bind, port, &secret),
    );
    let local = out.ready_local();
    for (t, got, how) in connect_all(&h, targets, local.port(), Duration::from_secs(3)) {
        assert_eq!(
            got,
            secret.as_bytes(),
            "[{label}] OUTSIDE the sandbox the test host connecting to {t}:{} did not get the \
             secret ({how}): the test could not detect a leak\n{}",
            local.port(),
            out.output()
        );
    }
    out.stop();

    let port = if bind.starts_with("unbound") {
        0
    } else {
        h.fx.port()
    };
    let mut inside = Background::start(
        &h,
        &Where::Inside(opts.clone()),
        &listen_args(bind, port, &secret),
    );
    let ready = inside.ready();
    assert!(
        ready["ok"] == true,
        "[{label}] a listener on {bind} must be allowed (loopback clients may use it): {ready}\n{}",
        inside.output()
    );
    let local: SocketAddr = ready["local"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("[{label}] no local address: {ready}"));
    let got = connect_all(&h, targets, local.port(), NOTHING_WAIT);
    let r = inside.stop();
    let accepted = r.as_ref().map(|r| r.raw["accepted"].clone());
    eprintln!(
        "[{label}] inside: listener at {local}; test host: {:?}; probe accepted {accepted:?}",
        got.iter()
            .map(|(t, b, how)| format!("{t}: {} bytes, {how}", b.len()))
            .collect::<Vec<_>>()
    );
    for (t, bytes, how) in got {
        assert!(
            bytes.is_empty(),
            "[{label}] LEAK: the test host connected to {t}:{} and received {:?} from the \
             sandbox's listener ({how}); probe accepted {accepted:?}\n{}",
            local.port(),
            String::from_utf8_lossy(&bytes),
            inside.output()
        );
    }
}

/// Datagrams from the test host to a UDP socket on [::] (dual stack) in
/// the sandbox: outside, the probe receives them (v4 and v6); inside, none
/// may be delivered. The receiver is the sandboxed probe itself here (what
/// arrives is a way in, not out); its report is cross-checked outside.
fn inbound_udp_datagrams(e: Enforcement) {
    let h = Harness::new(PROBE);
    let opts = h.opts(e);
    let label = format!("inbound UDP, {}", what(e, &opts));
    let send = |to: SocketAddr, tag: &str| {
        let tag = tag.to_string();
        in_netns(&h.fx.server, move || {
            let any: SocketAddr = if to.is_ipv4() {
                "0.0.0.0:0".parse().expect("addr")
            } else {
                "[::]:0".parse().expect("addr")
            };
            let s = std::net::UdpSocket::bind(any).expect("udp socket on the test host");
            s.send_to(tag.as_bytes(), to).expect("send to the client");
        });
    };
    for inside in [false, true] {
        let at = if inside {
            Where::Inside(opts.clone())
        } else {
            Where::Outside(opts.user)
        };
        let port = h.fx.port();
        let mut bg = Background::start(
            &h,
            &at,
            &sargs(&["udp-serve", "--bind", "::", "--port", &port.to_string()]),
        );
        let local = bg.ready_local();
        for ip in [IpAddr::from(CLIENT_V4), IpAddr::from(CLIENT_V6)] {
            send(SocketAddr::new(ip, local.port()), &format!("to {ip}"));
        }
        std::thread::sleep(Duration::from_millis(300));
        let r = bg
            .stop()
            .unwrap_or_else(|| panic!("[{label}] no result\n{}", bg.output()));
        let got = r.raw["received"].as_array().cloned().unwrap_or_default();
        if inside {
            assert!(
                got.is_empty(),
                "[{label}] datagrams from the test host reached the sandbox's socket on \
                 {local}: {got:?}"
            );
        } else {
            assert_eq!(
                got.len(),
                2,
                "[{label}] OUTSIDE the socket on {local} should receive both datagrams: {got:?}\n{}",
                bg.output()
            );
        }
    }
}

fn inbound_tcp4_wildcard(e: Enforcement) {
    inbound_case(e, false, "0.0.0.0", &[CLIENT_V4.into()]);
}

fn inbound_tcp6_dual_stack(e: Enforcement) {
    inbound_case(e, false, "::", &[CLIENT_V6.into(), CLIENT_V4.into()]);
}

/// `listen()` without `bind()`: the kernel autobinds to the wildcard
/// address (v4, and v6 dual stack).
fn inbound_tcp_unbound_listen(e: Enforcement) {
    inbound_case(e, false, "unbound4", &[CLIENT_V4.into()]);
    inbound_case(e, false, "unbound6", &[CLIENT_V6.into(), CLIENT_V4.into()]);
}

fn inbound_tcp_dual_stack_profile(e: Enforcement) {
    inbound_case(e, true, "::", &[CLIENT_V6.into(), CLIENT_V4.into()]);
}

/// A loopback port the profile variants narrow loopback to (as in the
/// issue's reproduction, `--profile default --loopback-port 5432`).
const PROFILE_LOOPBACK_PORT: u16 = 5432;

/// Binds to the client's own interface addresses are refused with EPERM
/// inside (they work outside); loopback and wildcard binds stay allowed.
fn inbound_bind_to_interface_address_refused(e: Enforcement) {
    let h = Harness::new(PROBE);
    let opts = h.opts(e);
    let label = format!("bind-check, {}", what(e, &opts));
    let iface = sargs(&["bind-check", "--addrs", "198.51.100.1,2001:db8:100::1"]);
    let allowed = sargs(&["bind-check", "--addrs", "127.0.0.1,::1,0.0.0.0,::"]);
    for args in [&iface, &allowed] {
        assert_outside_ok(&h, opts.user, args, &label);
    }
    let mut guard = SandboxGuard::new();
    let (r, out) = sandboxed(&h, &opts, &iface, &mut guard);
    for (name, ok, errno, detail) in r.steps() {
        assert!(
            !ok && errno == Some(libc::EPERM),
            "[{label}] {name} must be refused with EPERM inside, got ok={ok} errno={errno:?} \
             {detail}\n{}",
            out.describe()
        );
    }
    assert_eq!(r.steps().len(), 4, "[{label}] {}", r.raw);
    let (r, out) = sandboxed(&h, &opts, &allowed, &mut guard);
    assert!(
        r.ok,
        "[{label}] binds to loopback and the wildcard must stay allowed: {:?}\n{}",
        r.steps(),
        out.describe()
    );
}

/// A dual-stack listener whose agent is SIGKILLed: the test host still
/// receives nothing; under bpf the sandbox outlives the agent (pinned
/// programs) until `nono-agent cleanup`, which must leave no process.
fn inbound_after_agent_killed(e: Enforcement) {
    let _x = exclusive();
    let h = Harness::new(PROBE);
    let opts = h.opts(e);
    let label = format!("inbound after the agent is killed, {}", what(e, &opts));
    let secret = format!("SECRET-{}", h.fx.tag());
    let targets: [IpAddr; 2] = [CLIENT_V6.into(), CLIENT_V4.into()];

    let mut out = Background::start(
        &h,
        &Where::Outside(opts.user),
        &listen_args("::", h.fx.port(), &secret),
    );
    let local = out.ready_local();
    for (t, got, how) in connect_all(&h, &targets, local.port(), Duration::from_secs(3)) {
        assert_eq!(
            got,
            secret.as_bytes(),
            "[{label}] OUTSIDE: {t}:{} gave no secret ({how})",
            local.port()
        );
    }
    out.stop();

    let mut inside = Background::start(
        &h,
        &Where::Inside(opts.clone()),
        &listen_args("::", h.fx.port(), &secret),
    );
    let local = inside.ready_local();
    inside.kill_agent();
    std::thread::sleep(Duration::from_millis(300));
    let survivors = inside.others();
    let got = connect_all(&h, &targets, local.port(), NOTHING_WAIT);
    eprintln!(
        "[{label}] after the kill: sandbox processes alive {survivors:?}; test host: {:?}",
        got.iter()
            .map(|(t, b, how)| format!("{t}: {} bytes, {how}", b.len()))
            .collect::<Vec<_>>()
    );
    for (t, bytes, how) in got {
        assert!(
            bytes.is_empty(),
            "[{label}] LEAK: after the agent was killed the test host received {:?} from \
             {t}:{} ({how}); sandbox processes alive: {survivors:?}\n{}",
            String::from_utf8_lossy(&bytes),
            local.port(),
            inside.output()
        );
    }
    if e.has_cgroup() {
        assert!(
            !survivors.is_empty(),
            "[{label}] under bpf the sandbox should outlive its agent (pinned programs keep \
             enforcing until cleanup)"
        );
        let c = run_cleanup(&h, true);
        let gone = sys::wait_until(Duration::from_secs(3), || inside.others().is_empty());
        assert!(
            gone,
            "[{label}] `nono-agent cleanup` left the sandbox's processes {:?}\n{}",
            inside.others(),
            c.describe()
        );
    }
}

// ---------------------------------------------------------------------------
// 2. SYN-cookie SYN-ACKs

const MSS: u16 = 1234;

/// Makes sure net.ipv4.tcp_syncookies is 1 in the client netns (restoring
/// any other value on drop).
struct SyncookiesOn {
    ns: String,
    old: String,
}

impl SyncookiesOn {
    fn new(ns: &str) -> SyncookiesOn {
        let old = in_netns(ns, || {
            fs::read_to_string("/proc/sys/net/ipv4/tcp_syncookies")
        })
        .unwrap_or_else(|e| panic!("read net.ipv4.tcp_syncookies in {ns}: {e}"))
        .trim()
        .to_string();
        if old != "1" {
            sysctl_in(ns, "net.ipv4.tcp_syncookies", "1", true);
        }
        SyncookiesOn {
            ns: ns.to_string(),
            old,
        }
    }
}

impl Drop for SyncookiesOn {
    fn drop(&mut self) {
        if self.old != "1" {
            sysctl_in(&self.ns, "net.ipv4.tcp_syncookies", &self.old, false);
        }
    }
}

fn backlog0_args(bind: &str, port: u16) -> Vec<String> {
    sargs(&[
        "listen-serve",
        "--bind",
        bind,
        "--port",
        &port.to_string(),
        "--mss",
        &MSS.to_string(),
        "--backlog",
        "0",
        "--accept",
        "0",
        "--secs",
        "30",
    ])
}

/// SYNs the test host sends per listener.
const SYNS: u16 = 8;

/// The SYNs' source: an address on the link that no host owns (the test
/// host sends from it with IP_TRANSPARENT), so no reset answers a SYN-ACK.
const SYN_SOURCE_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 3);
const SYN_SOURCE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 3);

/// A listener with `TCP_MAXSEG` 1234 and `listen(fd, 0)` that never
/// accepts; the test host sends 8 raw SYNs (from distinct ports and an
/// address nobody owns, so no handshake completes and none is reset). Outside, SYN-ACKs carrying MSS 1234 arrive and
/// the client netns counts SYN cookies sent (the queue is full after the
/// first); inside, no SYN-ACK from that port at all.
fn syn_cookie_case(e: Enforcement, v6: bool, profile: bool) {
    let h = Harness::new(PROBE);
    let _cookies = SyncookiesOn::new(&h.fx.client);
    let opts = sandbox_opts(&h, e, profile, &[PROFILE_LOOPBACK_PORT]);
    let label = format!(
        "syn-cookie {}, {}",
        if v6 { "v6" } else { "v4" },
        what(e, &opts)
    );
    let (bind, src, dst): (&str, IpAddr, IpAddr) = if v6 {
        ("::", SYN_SOURCE_V6.into(), CLIENT_V6.into())
    } else {
        ("0.0.0.0", SYN_SOURCE_V4.into(), CLIENT_V4.into())
    };
    // The client reaches the SYNs' source through the test host's MAC,
    // where the sniffer sees the answers and no socket resets them.
    h.fx.run_in_client(&[
        "ip",
        "neigh",
        "replace",
        &src.to_string(),
        "lladdr",
        SERVER_MAC,
        "dev",
        &h.fx.veth_client,
        "nud",
        "permanent",
    ]);
    let cookies = || netstat(&h.fx.client, "TcpExt", "SyncookiesSent").unwrap_or(0);

    let port = h.fx.port();
    let mut out = Background::start(&h, &Where::Outside(opts.user), &backlog0_args(bind, port));
    out.ready_local();
    let before = cookies();
    raw_syns(&h.fx.server, src, SocketAddr::new(dst, port), SYNS);
    h.oracle.settle();
    let acks = h.oracle.syn_acks_from(port);
    let sent = cookies() - before;
    out.stop();
    assert!(
        acks.iter().filter(|m| **m == Some(MSS)).count() > 1 && sent > 0,
        "[{label}] OUTSIDE the sandbox the SYN-cookie channel did not show: SYN-ACK MSS options \
         from port {port}: {acks:?} (want several with {MSS}), {sent} SYN cookies sent: the \
         test could not detect a leak"
    );
    eprintln!(
        "[{label}] outside: {} SYN-ACKs from port {port} (MSS {acks:?}), {sent} SYN cookies sent",
        acks.len()
    );

    let port = h.fx.port();
    let mut inside =
        Background::start(&h, &Where::Inside(opts.clone()), &backlog0_args(bind, port));
    let ready = inside.ready();
    assert!(
        ready["ok"] == true,
        "[{label}] the listener itself must be allowed: {ready}\n{}",
        inside.output()
    );
    let before = cookies();
    raw_syns(&h.fx.server, src, SocketAddr::new(dst, port), SYNS);
    h.oracle.settle();
    let acks = h.oracle.syn_acks_from(port);
    let seen = h.oracle.tcp_from_port(port);
    inside.stop();
    assert!(
        acks.is_empty(),
        "[{label}] LEAK: {} SYN-ACKs from the sandbox's listener on port {port} reached the test \
         host, MSS options {acks:?} ({} SYN cookies sent)\n{}",
        acks.len(),
        cookies() - before,
        inside.output()
    );
    eprintln!(
        "[{label}] inside: no SYN-ACK; {} TCP segments from port {port} ({:?})",
        seen.len(),
        &seen[..seen.len().min(3)]
    );
}

fn syn_cookie_synack_v4(e: Enforcement) {
    syn_cookie_case(e, false, false);
}

fn syn_cookie_synack_v6(e: Enforcement) {
    syn_cookie_case(e, true, false);
}

fn syn_cookie_synack_v4_profile(e: Enforcement) {
    syn_cookie_case(e, false, true);
}

// ---------------------------------------------------------------------------
// 3. Data queued at teardown

const BULK: usize = 1 << 20;

fn bulk_args(to: SocketAddr) -> Vec<String> {
    sargs(&[
        "bulk-hold",
        "--target",
        &to.ip().to_string(),
        "--port",
        &to.port().to_string(),
        "--bytes",
        &BULK.to_string(),
    ])
}

fn written_and_local(r: &ProbeResult, label: &str) -> (usize, SocketAddr) {
    let written = r.raw["written"].as_u64().unwrap_or(0) as usize;
    let local = r.raw["local"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("[{label}] no local address: {}", r.raw));
    (written, local)
}

/// Outside the sandbox: the probe writes ~1 MiB to `rx` (which does not
/// read) and exits; its orphaned socket is still there (`ss`) and, once
/// `rx` reads, delivers every byte.
fn teardown_baseline(h: &Harness, user: Option<RunAs>, rx: &HeldReceiver, label: &str) {
    let (r, out) = probe_outside(h, user, &bulk_args(rx.addr));
    assert!(r.ok, "[{label}] outside: {}\n{}", r.raw, out.describe());
    let (written, local) = written_and_local(&r, label);
    let orphan = tcp_sockets_with(&h.fx, local);
    let d = rx.drain(Duration::from_secs(2), Duration::from_secs(20));
    assert!(
        written > 256 << 10 && d.bytes == written && !orphan.is_empty(),
        "[{label}] OUTSIDE the sandbox the orphaned connection should deliver everything: \
         written {written} (queued {}), received {} ({}); sockets of {local} after exit: \
         {orphan:?}",
        r.raw["queued"],
        d.bytes,
        d.end
    );
    eprintln!(
        "[{label}] outside: wrote {written} ({} queued at exit), orphan {orphan:?}, receiver got \
         {} ({})",
        r.raw["queued"], d.bytes, d.end
    );
}

/// After the sandbox is gone: no socket of `local` is left in the client
/// netns, and the receiver gets a reset or EOF with far fewer bytes than
/// were written.
fn assert_destroyed(
    h: &Harness,
    rx: &HeldReceiver,
    written: usize,
    local: SocketAddr,
    label: &str,
    more: &str,
) {
    let left = tcp_sockets_with(&h.fx, local);
    let d = rx.drain(Duration::from_secs(2), Duration::from_secs(20));
    eprintln!(
        "[{label}] inside: wrote {written}; sockets of {local} afterwards {left:?}; receiver got \
         {} ({})",
        d.bytes, d.end
    );
    assert!(
        d.bytes < written / 2,
        "[{label}] LEAK: the sandbox's queued data went out after it ended: written {written}, \
         the receiver got {} ({}); sockets of {local}: {left:?}\n{more}",
        d.bytes,
        d.end
    );
    assert!(
        left.is_empty(),
        "[{label}] a socket of the sandbox ({local}) outlived it: {left:?}\n{more}"
    );
    assert!(
        d.end == "reset" || d.end == "eof",
        "[{label}] the receiver should see the connection reset or closed, got {} after {} \
         bytes\n{more}",
        d.end,
        d.bytes
    );
}

/// `to_loopback`: the receiver listens on 127.0.0.1 in the client netns
/// (the sandbox runs under `--profile default --loopback-port P`);
/// otherwise it is the proxy endpoint on the test host.
fn teardown_case(e: Enforcement, to_loopback: bool) {
    let h = Harness::new(PROBE);
    let rx = |h: &Harness| {
        let port = h.fx.port();
        if to_loopback {
            HeldReceiver::bind(
                &h.fx.client,
                SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port),
            )
        } else {
            HeldReceiver::bind(&h.fx.server, SocketAddr::new(PROXY_V4.into(), port))
        }
    };
    let rx1 = rx(&h);
    let rx2 = rx(&h);
    let mut opts = ExecOpts::for_enforcement(e);
    if to_loopback {
        opts.proxy_endpoints = vec![h.proxy_endpoint()];
        add_profile(&h, &mut opts, &[rx2.addr.port()]);
    } else {
        opts.proxy_endpoints = vec![rx2.addr];
    }
    let label = format!("teardown to {}, {}", rx2.addr, what(e, &opts));
    teardown_baseline(&h, opts.user, &rx1, &label);

    let mut guard = SandboxGuard::new();
    let (r, out) = sandboxed(&h, &opts, &bulk_args(rx2.addr), &mut guard);
    assert!(
        r.ok && rx2.peer().is_some(),
        "[{label}] the connection to the allowed {} must work: {}\n{}",
        rx2.addr,
        r.raw,
        out.describe()
    );
    let (written, local) = written_and_local(&r, &label);
    assert_destroyed(&h, &rx2, written, local, &label, &out.describe());
}

fn teardown_queued_data_to_proxy(e: Enforcement) {
    teardown_case(e, false);
}

fn teardown_queued_data_to_loopback_profile(e: Enforcement) {
    teardown_case(e, true);
}

/// The probe writes to the proxy endpoint and holds; the agent is
/// SIGKILLed (the probe lives on, confined by pinned programs); `nono-agent
/// cleanup` must kill it and destroy its socket before unpinning.
fn teardown_after_agent_killed(e: Enforcement, cleanup_in_client_netns: bool) {
    let _x = exclusive();
    let h = Harness::new(PROBE);
    let port = h.fx.port();
    let rx1 = HeldReceiver::bind(&h.fx.server, SocketAddr::new(PROXY_V4.into(), port));
    let rx2 = HeldReceiver::bind(&h.fx.server, SocketAddr::new(PROXY_V4.into(), h.fx.port()));
    let opts = ExecOpts {
        proxy_endpoints: vec![rx2.addr],
        ..ExecOpts::for_enforcement(e)
    };
    let label = format!(
        "teardown via cleanup (in the {} netns) after kill, {}",
        if cleanup_in_client_netns {
            "sandbox's"
        } else {
            "test's"
        },
        what(e, &opts)
    );
    teardown_baseline(&h, opts.user, &rx1, &label);

    let mut bg = Background::start(&h, &Where::Inside(opts.clone()), &bulk_args(rx2.addr));
    let ready = bg.ready();
    let written = ready["written"].as_u64().unwrap_or(0) as usize;
    let local: SocketAddr = ready["local"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("[{label}] no local address: {ready}\n{}", bg.output()));
    bg.kill_agent();
    let survivors = bg.others();
    assert!(
        !survivors.is_empty(),
        "[{label}] the probe should outlive its SIGKILLed agent under bpf\n{}",
        bg.output()
    );
    let c = run_cleanup(&h, cleanup_in_client_netns);
    let gone = sys::wait_until(Duration::from_secs(3), || bg.others().is_empty());
    assert!(
        gone,
        "[{label}] cleanup left processes {:?}\n{}",
        bg.others(),
        c.describe()
    );
    assert_destroyed(&h, &rx2, written, local, &label, &c.describe());
}

// ---------------------------------------------------------------------------
// 4. Device-bound loopback sends

/// A datagram to 127.0.0.1 from a UDP socket bound to the client veth
/// (`how`: "name" for SO_BINDTODEVICE, "index" for SO_BINDTOIFINDEX); the
/// test host answers ARP for 127.0.0.1. Outside (as the sandbox's user)
/// the datagram reaches the test host; inside the setsockopt fails with
/// EPERM and nothing arrives.
fn device_bound_case(e: Enforcement, how: &str, profile: bool) {
    const V: NetVector = NetVector {
        name: "bindtodevice-loopback4",
        target: Target::ServerV4,
        observe: Observe::WireLoopbackUdp,
        mode: Mode::Rerouted,
    };
    let h = Harness::new(PROBE);
    let mut a = Attempt::new(&h, V);
    a.args.extend(sargs(&["--how", how]));
    let mut opts = ExecOpts {
        proxy_endpoints: vec![a.proxy],
        ..ExecOpts::for_enforcement(e)
    };
    if profile {
        add_profile(&h, &mut opts, &[a.port]);
    }
    let label = format!(
        "SO_BINDTO{} {}, {}",
        if how == "name" { "DEVICE" } else { "IFINDEX" },
        h.fx.veth_client,
        what(e, &opts)
    );
    let (r, out) = probe_outside(&h, opts.user, &a.args);
    h.oracle.settle();
    let (n, proof) = a.proof(&h);
    assert!(
        n > 0,
        "[{label}] OUTSIDE the sandbox the device-bound datagram did not reach the test host \
         ({proof}): probe {}\n{}",
        r.raw,
        out.describe()
    );

    let mut a = Attempt::new(&h, V);
    a.args.extend(sargs(&["--how", how]));
    opts.proxy_endpoints = vec![a.proxy];
    let mut guard = SandboxGuard::new();
    let (r, out) = sandboxed(&h, &opts, &a.args, &mut guard);
    h.oracle.settle();
    let (n, seen) = a.observed(&h);
    assert_eq!(
        n,
        0,
        "[{label}] LEAK: {seen}\nprobe {}\n{}",
        r.raw,
        out.describe()
    );
    assert!(
        r.errno == Some(libc::EPERM) && r.raw["refused_at"] == "setsockopt",
        "[{label}] the device binding must be refused with EPERM, got ok={} errno={:?} {} \
         (refused_at {})",
        r.ok,
        r.errno,
        r.detail,
        r.raw["refused_at"]
    );
}

fn device_bound_loopback_by_name(e: Enforcement) {
    device_bound_case(e, "name", false);
}

fn device_bound_loopback_by_index(e: Enforcement) {
    device_bound_case(e, "index", false);
}

fn device_bound_loopback_profile(e: Enforcement) {
    device_bound_case(e, "name", true);
}

/// Binding to `lo` (by name and by index) and unbinding (empty name,
/// index 0), each followed by a datagram to a 127.0.0.1 receiver. Under
/// bpf all of it keeps working. Under seccomp every SO_BINDTODEVICE /
/// SO_BINDTOIFINDEX is refused with EPERM: the filter cannot read the
/// device name, so it refuses the option outright (plain loopback sends
/// are unaffected; see `loopback_servers_and_proxy_keep_working`).
fn device_binding_to_lo(e: Enforcement) {
    let h = Harness::new(PROBE);
    let port = h.fx.port();
    let rx = UdpReceiver::bind(
        &h.fx.client,
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port),
    );
    let args = sargs(&["bindtodevice-lo", "--port", &port.to_string()]);
    let opts = h.opts(e);
    let label = format!("bind to lo, {}", what(e, &opts));
    let (r, out) = probe_outside(&h, opts.user, &args);
    assert!(
        r.ok && sys::wait_until(Duration::from_secs(2), || rx.count() == 4),
        "[{label}] outside: {:?}, receiver got {}\n{}",
        r.steps(),
        rx.count(),
        out.describe()
    );
    let mut guard = SandboxGuard::new();
    let (r, out) = sandboxed(&h, &opts, &args, &mut guard);
    if e == Enforcement::Bpf {
        assert!(
            r.ok && sys::wait_until(Duration::from_secs(2), || rx.count() == 8),
            "[{label}] binding to lo, unbinding and the sends after them must keep working: \
             {:?}; receiver got {} of 8\n{}",
            r.steps(),
            rx.count(),
            out.describe()
        );
    } else {
        let binds: Vec<_> = r
            .steps()
            .into_iter()
            .filter(|s| s.0.contains("setsockopt"))
            .collect();
        assert!(
            !binds.is_empty() && binds.iter().all(|s| !s.1 && s.2 == Some(libc::EPERM)),
            "[{label}] under seccomp every SO_BINDTODEVICE / SO_BINDTOIFINDEX is refused with \
             EPERM: {binds:?}\n{}",
            out.describe()
        );
    }
}

// ---------------------------------------------------------------------------
// 5. Multicast membership reports

/// (probe `--how`, IPv6 group) for every join option.
const JOINS: &[(&str, bool)] = &[
    ("ip-add-membership", false),
    ("ip-add-source-membership", false),
    ("mcast-join-group", false),
    ("mcast-join-group", true),
    ("mcast-join-source-group", false),
    ("mcast-join-source-group", true),
    ("ipv6-join-group", true),
    ("ip-drop-membership", false),
];

fn mcast_args(h: &Harness, how: &str, group: IpAddr) -> Vec<String> {
    let source: IpAddr = if group.is_ipv4() {
        SERVER_V4.into()
    } else {
        SERVER_V6.into()
    };
    sargs(&[
        "mcast-join",
        "--how",
        how,
        "--iface",
        &h.fx.veth_client,
        "--group",
        &group.to_string(),
        "--source",
        &source.to_string(),
    ])
}

/// For each option in `joins`: outside (as the sandbox's user) the join
/// succeeds and IGMP / MLD reports naming a fresh group reach the test
/// host's sniffer; inside, every membership setsockopt fails with EPERM
/// and no report naming the group arrives. All options are tried before
/// failing, and the failure lists each.
fn multicast_case(e: Enforcement, profile: bool, joins: &[(&str, bool)]) {
    let h = Harness::new(PROBE);
    let opts = sandbox_opts(&h, e, profile, &[]);
    let mut guard = SandboxGuard::new();
    let mut problems = Vec::new();
    for &(how, v6) in joins {
        let pick = |g: (IpAddr, IpAddr)| if v6 { g.1 } else { g.0 };
        let label = format!(
            "{how} ({}), {}",
            if v6 { "v6" } else { "v4" },
            what(e, &opts)
        );
        let group = pick(fresh_groups());
        let (r, _) = probe_outside(&h, opts.user, &mcast_args(&h, how, group));
        h.oracle.settle();
        let n = h.oracle.membership_reports(group);
        if !(r.ok && n > 0) {
            problems.push(format!(
                "[{label}] OUTSIDE: join ok={} ({}), {n} reports naming {group}: the test could \
                 not detect a leak",
                r.ok, r.detail
            ));
            continue;
        }
        let group = pick(fresh_groups());
        let mark = h.oracle.mark();
        let (r, out) = sandboxed(&h, &opts, &mcast_args(&h, how, group), &mut guard);
        h.oracle.settle();
        std::thread::sleep(Duration::from_millis(300));
        let n = h.oracle.membership_reports(group);
        if n > 0 {
            problems.push(format!(
                "[{label}] LEAK: {n} IGMP/MLD reports naming {group} reached the test host \
                 (groups since the run: {:?}); probe {:?}",
                h.oracle.membership_groups_since(mark),
                r.steps()
            ));
        }
        let refused = r.steps().iter().all(|s| !s.1 && s.2 == Some(libc::EPERM));
        if !refused || r.steps().is_empty() {
            problems.push(format!(
                "[{label}] every membership option must fail with EPERM: {:?}\n{}",
                r.steps(),
                out.stderr
            ));
        }
        eprintln!("[{label}] inside: {n} reports; steps {:?}", r.steps());
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn multicast_membership_reports(e: Enforcement) {
    multicast_case(e, false, JOINS);
}

fn multicast_membership_reports_profile(e: Enforcement) {
    multicast_case(
        e,
        true,
        &[("ip-add-membership", false), ("ipv6-join-group", true)],
    );
}

// ---------------------------------------------------------------------------
// 6. The supervisor's rights

/// A sandbox that runs as an unprivileged user: `--user nobody` under a
/// root agent, the fresh agent user otherwise.
fn unprivileged_opts(h: &Harness, e: Enforcement, profile: bool) -> ExecOpts {
    let mut o = h.opts(e);
    if e.privileged() {
        o.extra.extend(sargs(&["--user", "nobody"]));
    }
    if profile {
        add_profile(h, &mut o, &[]);
    }
    o
}

/// (a) A unix datagram socket root bound in a 0700 root directory: root
/// reaches it (the receiver works), the sandbox's user does not, outside
/// (EACCES) or inside (EACCES/EPERM), and the receiver gets nothing from
/// the sandbox.
fn root_only_socket(h: &Harness, opts: &ExecOpts, label: &str) {
    let dir = TempDir::new("rootonly");
    fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o700)).expect("chmod 0700");
    let path = dir.path("sock");
    let rx = UnixReceiver::datagram(&path, 0o600);
    let user = sandbox_user(opts).expect("an unprivileged sandbox user");
    let args = |s: &str| {
        sargs(&[
            "unix-dgram-send",
            "--path",
            path.to_str().unwrap(),
            "--secret",
            s,
        ])
    };
    let (r, out) = probe_outside(h, None, &args("root"));
    assert!(
        r.ok && sys::wait_until(Duration::from_secs(2), || rx.messages().len() == 1),
        "[{label}] root outside should reach its own socket: {}\n{}",
        r.raw,
        out.describe()
    );
    let (r, _) = probe_outside(h, Some(user), &args("user-outside"));
    assert!(
        !r.ok && r.errno == Some(libc::EACCES),
        "[{label}] outside, uid {} should get EACCES: {}",
        user.uid,
        r.raw
    );
    let mut guard = SandboxGuard::new();
    let (r, out) = sandboxed(h, opts, &args("sandbox"), &mut guard);
    std::thread::sleep(Duration::from_millis(300));
    let msgs = rx.messages();
    assert_eq!(
        msgs.len(),
        1,
        "[{label}] LEAK: the sandbox (uid {}) reached a root-only socket: {msgs:?}; probe {}\n{}",
        user.uid,
        r.raw,
        out.describe()
    );
    assert!(
        r.denied(),
        "[{label}] the send must be refused (EACCES/EPERM): {}",
        r.raw
    );
}

/// (b) World-accessible unix receivers (stream listener, datagram socket)
/// record SO_PEERCRED and SCM_CREDENTIALS: outside and inside they must
/// name the sandbox's uid/gid (never 0) and never the agent's pid.
fn peer_credentials(h: &Harness, opts: &ExecOpts, label: &str) {
    let dir = TempDir::new("creds");
    fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o755)).expect("chmod 0755");
    let spath = dir.path("stream");
    let dpath = dir.path("dgram");
    let user = sandbox_user(opts).expect("an unprivileged sandbox user");
    let stream_args = sargs(&["unix-stream-creds", "--path", spath.to_str().unwrap()]);
    let dgram_args = sargs(&[
        "unix-dgram-send",
        "--path",
        dpath.to_str().unwrap(),
        "--secret",
        "dgram",
    ]);
    for inside in [false, true] {
        let srx = UnixReceiver::stream(&spath, 0o777);
        let drx = UnixReceiver::datagram(&dpath, 0o777);
        let at = if inside {
            Where::Inside(opts.clone())
        } else {
            Where::Outside(Some(user))
        };
        let mut runs = Vec::new();
        for args in [&stream_args, &dgram_args] {
            let mut bg = Background::start(h, &at, args);
            let r = bg.stop();
            runs.push((bg.pid, r, bg.output()));
        }
        let (agent_pids, results): (Vec<i32>, Vec<_>) =
            runs.iter().map(|(p, r, _)| (*p, r.clone())).unzip();
        let where_ = if inside { "inside" } else { "OUTSIDE" };
        for (r, (_, _, output)) in results.iter().zip(&runs) {
            assert!(
                r.as_ref().is_some_and(|r| r.ok),
                "[{label}] {where_}: the sends to world-accessible sockets must work: {:?}\n{output}",
                r.as_ref().map(|r| &r.raw)
            );
        }
        let probe = results[0].as_ref().expect("result");
        let (uid, gid) = (
            probe.raw["uid"].as_u64().unwrap_or(0) as u32,
            probe.raw["gid"].as_u64().unwrap_or(0) as u32,
        );
        assert_eq!(
            uid, user.uid,
            "[{label}] {where_}: the probe ran as {}",
            probe.raw
        );
        let ok = sys::wait_until(Duration::from_secs(2), || {
            srx.messages().len() >= 2 && !drx.messages().is_empty()
        });
        let msgs: Vec<_> = srx.messages().into_iter().chain(drx.messages()).collect();
        assert!(ok, "[{label}] {where_}: receivers got {msgs:?}");
        let mut problems = Vec::new();
        for m in &msgs {
            let text = String::from_utf8_lossy(&m.payload);
            for (kind, c) in [("SCM_CREDENTIALS", &m.cred), ("SO_PEERCRED", &m.peer)] {
                let Some(c) = c else {
                    if kind != "SO_PEERCRED" {
                        problems.push(format!("no {kind} on {text:?}"));
                    }
                    continue;
                };
                if !(c.uid == uid && c.gid == gid && c.uid != 0 && c.gid != 0) {
                    problems.push(format!(
                        "{kind} of {text:?} names uid {} gid {}, the sandbox runs as {uid}:{gid}",
                        c.uid, c.gid
                    ));
                }
                if c.pid <= 0 || (inside && agent_pids.contains(&c.pid)) {
                    problems.push(format!(
                        "{kind} of {text:?} names pid {} ({:?}): the agent (agents \
                         {agent_pids:?})",
                        c.pid, c.comm
                    ));
                }
            }
        }
        let creds: Vec<_> = msgs
            .iter()
            .map(|m| {
                (
                    String::from_utf8_lossy(&m.payload).into_owned(),
                    &m.cred,
                    &m.peer,
                )
            })
            .collect();
        assert!(
            problems.is_empty(),
            "[{label}] {where_}: {}\nall credentials (payload, SCM_CREDENTIALS, SO_PEERCRED): \
             {creds:?}",
            problems.join("; "),
        );
        eprintln!("[{label}] {where_}: credentials {creds:?}");
    }
}

/// (c) UDP with a capability-gated control message: `SO_MARK` to
/// 127.0.0.1 and IPv6 hop-by-hop options to ::1. Root outside is accepted
/// (the receiver works); the sandbox's identity (its user, or uid 0
/// without capabilities) is refused outside (EPERM), so it must be refused
/// inside too, and the receiver gets nothing.
fn capability_cmsgs(h: &Harness, opts: &ExecOpts, label: &str) {
    // A root agent's sandbox without --user is uid 0 without capabilities:
    // outside, the same is `setpriv` to uid 0 with empty capability sets.
    let user = sandbox_user(opts).unwrap_or(RunAs { uid: 0, gid: 0 });
    let mut guard = SandboxGuard::new();
    for (cmsg, lo) in [
        ("mark", IpAddr::from(Ipv4Addr::LOCALHOST)),
        ("hopopts", IpAddr::from(Ipv6Addr::LOCALHOST)),
    ] {
        let port = h.fx.port();
        let rx = UdpReceiver::bind(&h.fx.client, SocketAddr::new(lo, port));
        let args = sargs(&[
            "udp-cap-cmsg",
            "--cmsg",
            cmsg,
            "--target",
            &lo.to_string(),
            "--port",
            &port.to_string(),
        ]);
        let (r, out) = probe_outside(h, None, &args);
        assert!(
            r.ok && sys::wait_until(Duration::from_secs(2), || rx.count() == 1),
            "[{label}] {cmsg}: root outside should send it: {}\n{}",
            r.raw,
            out.describe()
        );
        let (r, _) = probe_outside(h, Some(user), &args);
        assert!(
            !r.ok && r.errno == Some(libc::EPERM),
            "[{label}] {cmsg}: the kernel should refuse it to uid {} outside: {}",
            user.uid,
            r.raw
        );
        let (r, out) = sandboxed(h, opts, &args, &mut guard);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            rx.count(),
            1,
            "[{label}] {cmsg}: LEAK: the sandbox's datagram with a {cmsg} control message was \
             sent: {}\n{}",
            r.raw,
            out.describe()
        );
        assert!(
            !r.ok && r.errno == Some(libc::EPERM),
            "[{label}] {cmsg}: must be refused with EPERM as the kernel refuses it: {}",
            r.raw
        );
    }
}

fn supervisor_unix_send_to_root_only_socket(e: Enforcement) {
    let h = Harness::new(PROBE);
    let opts = unprivileged_opts(&h, e, false);
    root_only_socket(&h, &opts, &format!("root-only socket, {}", what(e, &opts)));
}

fn supervisor_unix_peer_credentials(e: Enforcement) {
    let h = Harness::new(PROBE);
    let opts = unprivileged_opts(&h, e, false);
    peer_credentials(&h, &opts, &format!("peer credentials, {}", what(e, &opts)));
}

fn supervisor_capability_gated_cmsgs(e: Enforcement) {
    let h = Harness::new(PROBE);
    let opts = unprivileged_opts(&h, e, false);
    capability_cmsgs(&h, &opts, &format!("capability cmsgs, {}", what(e, &opts)));
}

/// The same for a root sandbox (uid 0, no capabilities: what a root agent
/// runs without `--user`), whose sends the root supervisor would perform
/// with its own capabilities.
fn capability_gated_cmsgs_capless_root(e: Enforcement) {
    let h = Harness::new(PROBE);
    let opts = h.opts(e);
    capability_cmsgs(
        &h,
        &opts,
        &format!(
            "capability cmsgs, uid 0 without capabilities, {}",
            what(e, &opts)
        ),
    );
}

#[test]
fn bpf_capability_gated_cmsgs_capless_root() {
    capability_gated_cmsgs_capless_root(Enforcement::Bpf);
}

#[test]
fn seccomp_capability_gated_cmsgs_capless_root() {
    capability_gated_cmsgs_capless_root(Enforcement::Seccomp);
}

fn supervisor_rights_profile(e: Enforcement) {
    let h = Harness::new(PROBE);
    let opts = unprivileged_opts(&h, e, true);
    let label = format!("supervisor rights, {}", what(e, &opts));
    root_only_socket(&h, &opts, &label);
    peer_credentials(&h, &opts, &label);
    capability_cmsgs(&h, &opts, &label);
}

// ---------------------------------------------------------------------------
// Over-blocking: the ordinary work

/// Loopback servers and clients in one sandbox: TCP listeners on 0.0.0.0,
/// [::] (dual stack, reached on 127.0.0.1 too), 127.0.0.1, ::1 and from an
/// unbound listen(); UDP on the same; then a connection to the proxy
/// endpoint, which the test host accepts.
fn loopback_case(e: Enforcement, profile: bool) {
    let h = Harness::new(PROBE);
    let opts = sandbox_opts(&h, e, profile, &[]);
    let label = format!("loopback servers, {}", what(e, &opts));
    let args = sargs(&["loopback-selftest"]);
    assert_outside_ok(&h, opts.user, &args, &label);
    let mut guard = SandboxGuard::new();
    let (r, out) = sandboxed(&h, &opts, &args, &mut guard);
    // Documented limit: without CAP_NET_ADMIN no filter can go on a TCP
    // socket, so the unprivileged supervisor binds a `[::]` listener to ::1
    // and a v4 client gets ECONNREFUSED (README, "seccomp enforcer").
    let documented = |s: &(String, bool, Option<i32>, String)| {
        e == Enforcement::SeccompUser && s.0 == "tcp [::] <- 127.0.0.1" && s.2 == Some(111)
    };
    let steps = r.steps();
    let failed: Vec<_> = steps.iter().filter(|s| !s.1 && !documented(s)).collect();
    assert!(
        !steps.is_empty() && failed.is_empty(),
        "[{label}] loopback servers and clients inside one sandbox must work; failed: \
         {failed:#?}\n{}",
        out.describe()
    );
    let proxy = opts.proxy_endpoints[0];
    let (r, out) = sandboxed(
        &h,
        &opts,
        &sargs(&["proxy", "--proxy-endpoint", &proxy.to_string()]),
        &mut guard,
    );
    h.oracle.settle();
    assert!(
        r.ok && h.oracle.tcp_connections(proxy.port()) == 1,
        "[{label}] the proxy endpoint {proxy} must be reachable: {} ({} connections seen)\n{}",
        r.raw,
        h.oracle.tcp_connections(proxy.port()),
        out.describe()
    );
}

fn loopback_servers_and_proxy_keep_working(e: Enforcement) {
    loopback_case(e, false);
}

fn loopback_servers_keep_working_profile(e: Enforcement) {
    loopback_case(e, true);
}
