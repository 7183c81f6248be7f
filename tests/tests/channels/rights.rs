//! Channel 6: The supervisor's rights: unix sends, peer credentials,
//! capability-gated control messages.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use nono_tests::channels::UnixReceiver;
use nono_tests::oracle::UdpReceiver;
use nono_tests::runner::{Enforcement, ExecOpts, Harness, RunAs, SandboxGuard};
use nono_tests::sys::{self, TempDir};

use super::running::{add_profile, probe_outside, sandbox_user, sargs, what, Background, Where};
use super::{sandboxed, PROBE};

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

pub(super) fn supervisor_unix_send_to_root_only_socket(e: Enforcement) {
    let h = Harness::new(PROBE);
    let opts = unprivileged_opts(&h, e, false);
    root_only_socket(&h, &opts, &format!("root-only socket, {}", what(e, &opts)));
}

pub(super) fn supervisor_unix_peer_credentials(e: Enforcement) {
    let h = Harness::new(PROBE);
    let opts = unprivileged_opts(&h, e, false);
    peer_credentials(&h, &opts, &format!("peer credentials, {}", what(e, &opts)));
}

pub(super) fn supervisor_capability_gated_cmsgs(e: Enforcement) {
    let h = Harness::new(PROBE);
    let opts = unprivileged_opts(&h, e, false);
    capability_cmsgs(&h, &opts, &format!("capability cmsgs, {}", what(e, &opts)));
}

/// The same for a root sandbox (uid 0, no capabilities: what a root agent
/// runs without `--user`), whose sends the root supervisor would perform
/// with its own capabilities.
pub(super) fn capability_gated_cmsgs_capless_root(e: Enforcement) {
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

pub(super) fn supervisor_rights_profile(e: Enforcement) {
    let h = Harness::new(PROBE);
    let opts = unprivileged_opts(&h, e, true);
    let label = format!("supervisor rights, {}", what(e, &opts));
    root_only_socket(&h, &opts, &label);
    peer_credentials(&h, &opts, &label);
    capability_cmsgs(&h, &opts, &label);
}
