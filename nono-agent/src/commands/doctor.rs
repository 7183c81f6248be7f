//! `nono-agent doctor`: what this host supports, checked for real.

use anyhow::Result;
use serde::Serialize;
use std::time::{Duration, Instant};

use crate::enforcer::bpf::loader;
use crate::enforcer::{self, Choice, Host, Requested};
use crate::plan::KernelPolicy;
use crate::sandbox::{cgroup, privileges, registry};

#[derive(Debug, Serialize)]
struct Report {
    kernel: String,
    cgroup2_mount: Option<String>,
    cgroup2_favordynmods: Option<bool>,
    bpffs_mounts: Vec<String>,
    privileged: bool,
    daemon: DaemonCheck,
    bpf: Check,
    landlock_abi: Option<i64>,
    seccomp_user_notif: bool,
    auto_enforcer: Option<&'static str>,
    auto_reason: String,
    /// What `exec --transparent` gets on this host.
    transparent: String,
}

#[derive(Debug, Serialize)]
struct DaemonCheck {
    socket: String,
    answers: bool,
    detail: String,
    version: Option<String>,
    uptime_secs: Option<u64>,
    sandboxes: Option<usize>,
}

/// Asks the daemon at `socket` for its status.
fn check_daemon(socket: &std::path::Path) -> DaemonCheck {
    use crate::daemon::client::Client;
    let mut c = DaemonCheck {
        socket: socket.display().to_string(),
        answers: false,
        detail: String::new(),
        version: None,
        uptime_secs: None,
        sandboxes: None,
    };
    match Client::connect(socket).map(|o| o.map(|mut cl| cl.status())) {
        Ok(None) => c.detail = "not running (nothing listens on the socket)".into(),
        Ok(Some(Ok((version, up, n, _)))) => {
            c.answers = true;
            c.detail = format!("version {version}, up {up} s, {n} sandbox(es)");
            c.version = Some(version);
            c.uptime_secs = Some(up);
            c.sandboxes = Some(n);
        }
        Ok(Some(Err(e))) | Err(e) => c.detail = crate::util::chain(&e),
    }
    c
}

#[derive(Debug, Serialize)]
struct Check {
    ok: bool,
    detail: String,
}

pub fn run(json: bool, daemon_socket: &std::path::Path) -> Result<i32> {
    let daemon = check_daemon(daemon_socket);
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"));
    let cg = cgroup::discover_root();
    let privileged = privileges::can_load_bpf();
    let bpf = match &cg {
        Ok(root) if privileged => try_bpf(root),
        Ok(_) => Check {
            ok: false,
            detail: "not tried: needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF)".into(),
        },
        Err(e) => Check {
            ok: false,
            detail: format!("not tried: {}", crate::util::chain(e)),
        },
    };
    // The same facts and the same choice `exec --enforcer auto` makes, BPF
    // tried for real on a throwaway cgroup (already done above: its outcome
    // is replayed here).
    let host = Host::detect(privileged);
    let user_notif = host.seccomp_user_notif;
    let bpf_outcome = if bpf.ok { Ok(()) } else { Err(&bpf.detail) };
    let (auto_enforcer, auto_reason) = if daemon.answers {
        (
            Some("bpf (daemon)"),
            format!(
                "the daemon answers on {}: exec asks it for every sandbox (root or not; --no-daemon to load the programs directly)",
                daemon.socket
            ),
        )
    } else {
        match enforcer::choose(Requested::Auto, host, false, || bpf_outcome) {
            Ok(Choice::Bpf(())) => (
                Some("bpf"),
                "cgroup BPF programs load and attach".to_string(),
            ),
            Ok(Choice::Seccomp { .. }) => (
                Some("seccomp"),
                format!(
                    "cgroup BPF is unavailable ({}); seccomp user notification is available",
                    bpf.detail
                ),
            ),
            Ok(Choice::Unenforced { why }) | Err(enforcer::Refused { why }) => (
                None,
                format!("{why}: exec refuses to run (unless --allow-unenforced)"),
            ),
        }
    };
    let transparent = transparent_line(bpf.ok, user_notif);
    let report = Report {
        kernel,
        cgroup2_mount: cg.as_ref().ok().map(|p| p.display().to_string()),
        cgroup2_favordynmods: cgroup::favors_dynmods(),
        bpffs_mounts: crate::enforcer::bpf::bpffs::mounts()
            .unwrap_or_default()
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        privileged,
        daemon,
        bpf,
        landlock_abi: Some(crate::sandbox::landlock::kernel_abi()).filter(|v| *v > 0),
        seccomp_user_notif: user_notif,
        auto_enforcer,
        auto_reason,
        transparent,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let yes = |b: bool| if b { "yes" } else { "no" };
        println!("kernel:              {}", report.kernel);
        println!(
            "cgroup2 mount:       {}",
            report.cgroup2_mount.as_deref().unwrap_or("none (required)")
        );
        println!(
            "bpffs mounts:        {}",
            if report.bpffs_mounts.is_empty() {
                "none (one is mounted at /sys/fs/bpf on first exec)".to_string()
            } else {
                report.bpffs_mounts.join(", ")
            }
        );
        if let Some(f) = report.cgroup2_favordynmods {
            println!(
                "cgroup2 favordynmods: {}",
                if f {
                    "yes (moving a process into a daemon sandbox is immediate)"
                } else {
                    "no (each daemon sandbox waits an RCU grace period, ~5-15 ms, to move its process in; remount cgroup2 with favordynmods to avoid it)"
                }
            );
        }
        println!("privileged:          {}", yes(report.privileged));
        println!(
            "daemon:              {} ({}: {})",
            yes(report.daemon.answers),
            report.daemon.socket,
            report.daemon.detail
        );
        println!(
            "cgroup BPF:          {} ({})",
            yes(report.bpf.ok),
            report.bpf.detail
        );
        match report.landlock_abi {
            Some(v) => println!("Landlock ABI:        {v}"),
            None => println!("Landlock ABI:        unavailable"),
        }
        println!("seccomp user notif:  {}", yes(report.seccomp_user_notif));
        println!(
            "auto enforcer:       {} ({})",
            report.auto_enforcer.unwrap_or("none"),
            report.auto_reason
        );
        println!("transparent mode:    {}", report.transparent);
    }
    Ok(if report.auto_enforcer.is_some() { 0 } else { 1 })
}

/// What `exec --transparent` gets here: the kernel hooks with BPF; with
/// the supervisor only, what cannot be done without them.
fn transparent_line(bpf: bool, seccomp: bool) -> String {
    if bpf {
        "yes (bpf: connects rewritten in the kernel; getpeername and DNS answers show the \
         address dialled; through the daemon too)"
            .into()
    } else if seccomp {
        "partly (seccomp supervisor: connects redirected, but getpeername shows the proxy's \
         listener and UDP DNS answers come from the resolver's address, which glibc and musl \
         stub resolvers drop: glibc is told to ask over TCP with RES_OPTIONS=use-vc; musl \
         programs cannot resolve)"
            .into()
    } else {
        "no (needs cgroup BPF or seccomp user notification)".into()
    }
}

/// Loads and attaches the real programs to a throwaway cgroup.
fn try_bpf(root: &std::path::Path) -> Check {
    let result = (|| -> Result<String> {
        let state = registry::state_dir()?;
        let id = registry::new_id()?;
        let _lock = registry::OwnerLock::acquire(&state, &id)?;
        let parent = cgroup::parent_dir(root)?;
        let cg = cgroup::Cgroup::create(&parent, &id)?;
        let start = Instant::now();
        let policy = KernelPolicy::default().policy(&[], false);
        let res = loader::load_and_attach_fast(cg.path(), cg.id()?, &policy, None);
        let took = start.elapsed();
        let n = res.as_ref().map(|a| a.keep.link_count()).unwrap_or(0);
        let destroyed = cg.destroy(Duration::from_secs(5), || {
            crate::sandbox::cgroup::Sockets::Keep
        });
        res?;
        destroyed?;
        Ok(format!("{n} programs loaded and attached in {took:.1?}"))
    })();
    match result {
        Ok(detail) => Check { ok: true, detail },
        Err(e) => Check {
            ok: false,
            detail: format!("{e:#}"),
        },
    }
}
