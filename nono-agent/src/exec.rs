//! `nono-agent exec`: build the sandbox, run the command, tear it all down.

use anyhow::{bail, Context as _, Result};
use nono_common::{Dest, Endpoint, Policy, LOOPBACK_ANY, MAX_PROXY_ENDPOINTS};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::unix::AsyncFd;

use crate::bpf::{bpffs, loader};
use crate::cli::{Enforcer, ExecArgs};
use crate::events;
use crate::plan;
use crate::proxy_config;
use crate::sandbox::{
    cgroup, child::ChildSetup, daemons, hide, landlock, privileges, registry, resolve, spawn, sweep,
};
use crate::seccomp::{filter, supervisor::Supervisor};
use crate::signals::Forwarder;

/// Exit code for the agent's own failures (as `env` and `timeout` use it).
pub const EXIT_AGENT_ERROR: i32 = 125;

/// Builds the kernel policy from the endpoints and the loopback ports
/// (`None`: every loopback port).
pub fn policy_with_ports(endpoints: &[SocketAddr], ports: Option<&[u16]>) -> Result<Policy> {
    let mut p = policy(endpoints)?;
    if let Some(ports) = ports {
        let mut ports = ports.to_vec();
        ports.sort_unstable();
        ports.dedup();
        if ports.len() > nono_common::MAX_LOOPBACK_PORTS {
            bail!(
                "too many loopback ports: {} given, at most {}",
                ports.len(),
                nono_common::MAX_LOOPBACK_PORTS
            );
        }
        p.loopback_any = 0;
        for (i, port) in ports.iter().enumerate() {
            p.loopback_ports[i] = *port;
        }
        p.n_loopback_ports = ports.len() as u32;
    }
    Ok(p)
}

/// Builds the kernel policy from the CLI's endpoints.
pub fn policy(endpoints: &[SocketAddr]) -> Result<Policy> {
    if endpoints.len() > MAX_PROXY_ENDPOINTS {
        bail!(
            "too many --proxy-endpoint values: {} given, at most {MAX_PROXY_ENDPOINTS}",
            endpoints.len()
        );
    }
    let mut p = Policy::DENY_ALL;
    p.loopback_any = LOOPBACK_ANY;
    for (i, ep) in endpoints.iter().enumerate() {
        if ep.port() == 0 {
            bail!("--proxy-endpoint {ep}: port 0 is not a valid endpoint");
        }
        if ep.ip().is_unspecified() {
            bail!("--proxy-endpoint {ep}: the unspecified address is not a valid endpoint");
        }
        let d = match ep {
            SocketAddr::V4(a) => Dest::v4(a.ip().octets(), a.port()),
            SocketAddr::V6(a) => Dest::v6(a.ip().octets(), a.port()),
        };
        p.proxies[i] = Endpoint::from_dest(d);
    }
    p.n_proxies = endpoints.len() as u32;
    Ok(p)
}

/// Everything that must be undone, in reverse order of creation.
struct Sandbox {
    id: String,
    cgroup: Option<cgroup::Cgroup>,
    pin_dir: Option<PathBuf>,
    attached: Option<loader::Keep>,
    _lock: Option<registry::OwnerLock>,
}

impl Sandbox {
    /// Kill, remove the cgroup, then unpin. Errors are reported, not fatal:
    /// teardown goes as far as it safely can.
    fn teardown(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        let mut cgroup_gone = true;
        // Sockets outliving the sandbox matter only when programs judged
        // them (BPF) and the sandbox made any; an unreadable count means
        // look anyway.
        let attached = &self.attached;
        let pinned = self.pin_dir.is_some();
        let sockets = || match attached {
            Some(k) if k.sockets_created() == Some(0) => cgroup::Sockets::Keep,
            Some(_) => cgroup::Sockets::Destroy,
            None if pinned => cgroup::Sockets::Destroy,
            None => cgroup::Sockets::Keep,
        };
        let mut destroyed = cgroup::Sockets::Keep;
        if let Some(cg) = self.cgroup.take() {
            match cg.destroy(Duration::from_secs(10), sockets) {
                Ok(chosen) => destroyed = chosen,
                Err(e) => {
                    errors.push(format!("{e:#}"));
                    cgroup_gone = false;
                }
            }
        }
        // A socket no sweep reached (another network namespace, kept alive
        // by a descriptor passed out) still holds the programs: unpinning
        // now would let it send unjudged.
        let mut sockets_gone = true;
        if cgroup_gone && destroyed == cgroup::Sockets::Destroy {
            if let Some(dir) = &self.pin_dir {
                match bpffs::wait_released(dir, Duration::from_secs(2)) {
                    Ok(true) => {}
                    Ok(false) => {
                        errors.push(format!(
                            "a socket of the sandbox outlives it out of the agent's reach; its \
                             programs stay attached to it (pins in {}) until it closes, and \
                             `nono-agent cleanup` removes them after that",
                            dir.display()
                        ));
                        sockets_gone = false;
                    }
                    Err(e) => {
                        errors.push(format!("{e:#}"));
                        sockets_gone = false;
                    }
                }
            }
        }
        // Never unpin while processes may remain: they would run unconfined.
        if cgroup_gone && sockets_gone {
            if let Some(dir) = self.pin_dir.take() {
                if let Err(e) = bpffs::remove_pins(&dir) {
                    errors.push(format!("{e:#}"));
                }
            }
            self.attached = None;
        } else {
            // Leave the pins (and our link fds leak into process exit) so the
            // programs stay attached; `nono-agent cleanup` finishes the job.
            std::mem::forget(self.attached.take());
            self.pin_dir = None;
        }
        errors
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for e in self.teardown() {
            eprintln!("nono-agent: sandbox {}: cleanup: {e}", self.id);
        }
    }
}

/// The enforcer in force for this run (one value per run: its size does not
/// matter).
#[allow(clippy::large_enum_variant)]
enum Applied {
    Bpf {
        ring: AsyncFd<aya::maps::RingBuf<aya::maps::MapData>>,
        dropped: aya::maps::PerCpuArray<aya::maps::MapData, u64>,
        cgroup_dir: PathBuf,
        pin_dir: PathBuf,
    },
    Seccomp,
    Unenforced,
}

impl Applied {
    fn name(&self) -> &'static str {
        match self {
            Applied::Bpf { .. } => "bpf",
            Applied::Seccomp => "seccomp",
            Applied::Unenforced => "none",
        }
    }
}

/// Creates the cgroup, pins and programs; on failure everything created so
/// far is removed by `sb`'s teardown.
fn apply_bpf(sb: &mut Sandbox, policy: &Policy) -> Result<Applied> {
    let cg_root = cgroup::discover_root()?;
    let cg_parent = cgroup::parent_dir(&cg_root)?;
    let cg = cgroup::Cgroup::create(&cg_parent, &sb.id)?;
    let cg_path = cg.path().to_path_buf();
    sb.cgroup = Some(cg);

    let bpffs_root = bpffs::ensure_mounted()?;
    let pin_parent = bpffs::parent_dir(&bpffs_root)?;
    let pin_dir = pin_parent.join(&sb.id);
    std::fs::create_dir(&pin_dir).with_context(|| format!("creating {}", pin_dir.display()))?;
    sb.pin_dir = Some(pin_dir.clone());

    let attached = loader::load_and_attach_fast(&cg_path, policy, Some(&pin_dir))?;
    // SAFETY: the RingBuf owns its map fd, which stays open and unchanged
    // until the RingBuf (owned by the AsyncFd) is dropped.
    let ring =
        unsafe { AsyncFd::register_with_interest(attached.events, tokio::io::Interest::READABLE) }
            .map_err(|e| {
                anyhow::anyhow!("registering the event ring buffer: {}", e.into_parts().1)
            })?;
    sb.attached = Some(attached.keep);
    Ok(Applied::Bpf {
        ring,
        dropped: attached.dropped,
        cgroup_dir: cg_path,
        pin_dir,
    })
}

/// Picks and applies the enforcer, falling back (for `auto`) from BPF to
/// seccomp, and to nothing only when the user explicitly allowed it.
fn choose(args: &ExecArgs, sb: &mut Sandbox, policy: &Policy, privileged: bool) -> Result<Applied> {
    let seccomp_ok = privileges::seccomp_user_notif_available();
    let no_seccomp = "seccomp user notification is not available on this kernel";
    let fallback = |why: String| -> Result<Applied> {
        if args.allow_unenforced {
            eprintln!("nono-agent: WARNING: NO NETWORK ENFORCEMENT: {why}; running anyway because --allow-unenforced was given");
            Ok(Applied::Unenforced)
        } else {
            bail!("{why}; refusing to run the command unconfined (pass --allow-unenforced to run it anyway)")
        }
    };
    match args.enforcer {
        Enforcer::Bpf => {
            if !privileged {
                return fallback(
                    "the bpf enforcer needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF)".into(),
                );
            }
            match apply_bpf(sb, policy) {
                Ok(a) => Ok(a),
                Err(e) => {
                    for t in sb.teardown() {
                        eprintln!("nono-agent: cleanup: {t}");
                    }
                    fallback(format!("the bpf enforcer could not be applied: {e:#}"))
                }
            }
        }
        Enforcer::Seccomp => {
            if seccomp_ok {
                Ok(Applied::Seccomp)
            } else {
                fallback(no_seccomp.into())
            }
        }
        Enforcer::Auto => {
            let why_not_bpf = if privileged {
                match apply_bpf(sb, policy) {
                    Ok(a) => {
                        if !args.quiet {
                            eprintln!("nono-agent: enforcer: bpf");
                        }
                        return Ok(a);
                    }
                    Err(e) => {
                        for t in sb.teardown() {
                            eprintln!("nono-agent: cleanup: {t}");
                        }
                        format!("cgroup BPF could not be applied: {e:#}")
                    }
                }
            } else {
                "cgroup BPF needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF)".to_string()
            };
            if seccomp_ok {
                eprintln!("nono-agent: enforcer: seccomp ({why_not_bpf})");
                Ok(Applied::Seccomp)
            } else {
                fallback(format!("{why_not_bpf}, and {no_seccomp}"))
            }
        }
    }
}

/// What the filesystem layer is, for the start-up line.
fn filesystem_line(profile: Option<&str>, rules: bool, privileged: bool) -> String {
    let protected = if privileged {
        "system paths and auto-run files read-only"
    } else {
        "auto-run files read-only in a user namespace, system files by host permissions"
    };
    match (profile, rules) {
        (Some(name), _) => format!("profile {name} ({protected})"),
        (None, true) => format!("profile default with --read/--write/--exec ({protected})"),
        (None, false) => format!("host, protected ({protected}; other processes out of reach)"),
    }
}

/// Runs the command; returns the exit code for the agent.
pub async fn run(args: ExecArgs) -> Result<i32> {
    let (cmd, cmd_args) = args
        .command
        .split_first()
        .context("no command given after --")?;
    let program = match resolve::resolve(cmd, std::env::var_os("PATH").as_deref()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("nono-agent: {e}");
            return Ok(e.exit_code());
        }
    };
    // Everything the user asked for is checked before anything is created.
    let plan = plan::build(&args)?;
    let mut out = events::Output::open(args.events.as_deref())?;
    let privileged = privileges::can_load_bpf();
    let mut timing = Timing::new();
    let user = match &plan.user {
        Some(u) if !privileged => bail!("running the command as user {u} needs root"),
        Some(u) => Some(lookup_user(u)?),
        None => None,
    };
    let landlock = match &plan.fs {
        Some(rules) => {
            let l = landlock::prepare(rules, args.allow_degraded)?;
            for d in &l.degraded {
                eprintln!("nono-agent: WARNING: {d}");
            }
            Some(l)
        }
        None => {
            let l = landlock::prepare_baseline(args.allow_degraded)?;
            if l.is_none() {
                eprintln!("nono-agent: WARNING: no Landlock domain (kernel ABI < 6): the sandbox can ptrace, signal and reach the abstract unix sockets of this user's other processes");
            }
            l
        }
    };
    let (denied_sockets, denied_socket_ids): (Vec<PathBuf>, Vec<(u64, u64)>) =
        daemons::denied(&plan.allow_unix_sockets)
            .into_iter()
            .unzip();

    let id = registry::new_id()?;
    let (event_tx, mut event_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut proxy_env = Vec::new();
    let proxy = if plan.proxy.wanted() {
        let secret = nono_proxy::new_secret()?;
        let running = nono_proxy::start_loopback(
            proxy_config::from_args(&plan.proxy, Some(secret.clone()), &id),
            Arc::new(events::ProxySink(event_tx.clone())),
        )
        .await?;
        proxy_env = nono_proxy::child_env(running.addrs[0].port(), &secret);
        Some(running)
    } else {
        None
    };
    // Narrowed loopback still includes the sandbox's own proxy.
    let loopback_ports = plan.loopback_ports.as_ref().map(|ports| {
        let mut v = ports.clone();
        if let Some(p) = &proxy {
            v.extend(p.addrs.iter().map(|a| a.port()));
        }
        v
    });
    let policy = policy_with_ports(&args.proxy_endpoints, loopback_ports.as_deref())?;
    let mut state = None;
    let mut lock = None;
    if privileged {
        // Crashed agents' leftovers go first; a failure here must not stop us.
        match sweep::sweep(Duration::ZERO) {
            Ok(s) => {
                for e in s.errors {
                    eprintln!("nono-agent: cleaning a stale sandbox: {e}");
                }
            }
            Err(e) => eprintln!("nono-agent: cleaning stale sandboxes: {e:#}"),
        }
        let st = registry::state_dir()?;
        lock = Some(registry::OwnerLock::acquire(&st, &id)?);
        state = Some(st);
    }
    timing.mark("sweep");
    let mut sb = Sandbox {
        id: id.clone(),
        cgroup: None,
        pin_dir: None,
        attached: None,
        _lock: lock,
    };
    let applied = choose(&args, &mut sb, &policy, privileged)?;
    timing.mark("enforcer applied");
    if !args.quiet {
        eprintln!(
            "nono-agent: filesystem: {}",
            filesystem_line(args.profile.as_deref(), plan.fs.is_some(), privileged)
        );
    }

    let masks = match &state {
        Some(st) => hide::mask_targets(st)?,
        None => Vec::new(),
    };
    let mask_refs: Vec<&Path> = masks.iter().map(PathBuf::as_path).collect();
    let filter_mode = match applied {
        Applied::Bpf { .. } => Some(filter::Mode::Harden),
        Applied::Seccomp => Some(filter::Mode::Notify),
        Applied::Unenforced => None,
    };
    let self_files: Vec<PathBuf> = args.events.iter().cloned().collect();
    let setup = ChildSetup::new(
        privileged,
        &mask_refs,
        filter_mode,
        args.allow_degraded,
        &self_files,
    )?
    .with_landlock(landlock)
    .with_user(user)
    .with_hidden_sockets(if privileged { &denied_sockets } else { &[] })?;

    let mut env: Vec<(OsString, OsString)> = plan::environment(&plan.env);
    env.push(("NONO_SANDBOX_ID".into(), id.clone().into()));
    env.push(("NONO_ENFORCER".into(), applied.name().into()));
    if let Applied::Bpf {
        cgroup_dir,
        pin_dir,
        ..
    } = &applied
    {
        env.push(("NONO_CGROUP".into(), cgroup_dir.clone().into()));
        env.push(("NONO_BPF_PIN_DIR".into(), pin_dir.clone().into()));
    }

    for (k, v) in proxy_env {
        env.retain(|(ek, _)| ek.as_os_str() != k.as_str());
        env.push((k.into(), v.into()));
    }
    let mut argv = vec![cmd.clone()];
    argv.extend(cmd_args.iter().cloned());
    let prepared = spawn::Prepared::new(program.as_os_str(), &argv, &env)
        .context("preparing the command line")?;
    // A privileged sandbox always gets a cgroup: under seccomp too, so that
    // `cleanup` can find and kill it if the agent dies.
    if privileged && sb.cgroup.is_none() && !matches!(applied, Applied::Unenforced) {
        let cg_parent = cgroup::parent_dir(&cgroup::discover_root()?)?;
        sb.cgroup = Some(cgroup::Cgroup::create(&cg_parent, &id)?);
    }
    let cgroup_file = match &sb.cgroup {
        Some(cg) => Some(
            std::fs::File::open(cg.path())
                .with_context(|| format!("opening {}", cg.path().display()))?,
        ),
        None => None,
    };

    // Orphans (daemons, double forks) are re-parented to us, so that they
    // can be found and killed at exit even without a cgroup.
    // SAFETY: integer-only prctl.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };

    let child_pid = Arc::new(AtomicI32::new(0));
    let _forwarder = Forwarder::start(child_pid.clone()).context("installing signal handlers")?;

    let mut child = match spawn::spawn(&prepared, cgroup_file.as_ref().map(|f| f.as_fd()), &setup) {
        Ok(c) => c,
        Err(spawn::SpawnError::Child(spawn::Stage::Exec, e)) => {
            eprintln!("nono-agent: {}: {e}", program.display());
            return Ok(if e.raw_os_error() == Some(libc::ENOENT) {
                127
            } else {
                126
            });
        }
        Err(e) => return Err(e).context("starting the command in the sandbox"),
    };
    timing.mark("spawn");
    child_pid.store(child.pid, Ordering::SeqCst);
    if let Some(listener) = child.listener.take() {
        let sup = Supervisor::new(
            listener,
            policy,
            denied_socket_ids.clone(),
            id.clone(),
            event_tx.clone(),
        );
        std::thread::Builder::new()
            .name("nono-supervisor".into())
            .spawn(move || sup.run())
            .context("starting the seccomp supervisor")?;
    }
    // SAFETY: the pidfd is owned by `child`, which outlives `exited`.
    let exited = unsafe {
        AsyncFd::register_with_interest(child.pidfd.as_fd(), tokio::io::Interest::READABLE)
    }
    .map_err(|e| anyhow::anyhow!("watching the child: {}", e.into_parts().1))?;

    let (mut ring, dropped) = match applied {
        Applied::Bpf { ring, dropped, .. } => (Some(ring), Some(dropped)),
        _ => (None, None),
    };
    loop {
        tokio::select! {
            r = exited.readable() => {
                let _ready = r.context("waiting for the command")?;
                break;
            }
            guard = async { ring.as_mut()?.readable_mut().await.ok() }, if ring.is_some() => {
                if let Some(mut guard) = guard {
                    drain(guard.get_inner_mut(), &id, &mut out);
                    guard.clear_ready();
                }
            }
            Some(line) = event_rx.recv() => out.take(line),
        }
    }
    drop(exited);
    timing.mark("child ran");
    let status = child
        .reap()
        .context("collecting the command's exit status")?;
    child_pid.store(0, Ordering::SeqCst);

    // Kill what is left (daemons, background jobs) before reading the last
    // events and removing anything.
    if let Some(cg) = sb.cgroup.as_ref() {
        if let Err(e) = cg.kill_all(Duration::from_secs(10)) {
            eprintln!("nono-agent: sandbox {id}: {e:#}");
        }
    }
    kill_descendants();
    if let Some(p) = proxy {
        p.stop().await;
    }
    if let Some(r) = ring.as_mut() {
        drain(r.get_mut(), &id, &mut out);
    }
    // Give the supervisor's last events a moment to arrive.
    tokio::task::yield_now().await;
    while let Ok(line) = event_rx.try_recv() {
        out.take(line);
    }
    if let Some(d) = &dropped {
        out.summary.dropped = loader::dropped_events(d);
    }
    drop(ring);
    for e in sb.teardown() {
        eprintln!("nono-agent: sandbox {id}: cleanup: {e}");
    }
    timing.mark("teardown");
    timing.report();
    if !args.quiet {
        eprintln!("{}", out.summary.line(&id));
    }

    Ok(match status {
        spawn::Exit::Code(c) => c,
        spawn::Exit::Signal(sig) => 128 + sig,
    })
}

/// uid and gid of a user name or numeric uid.
fn lookup_user(u: &str) -> Result<(libc::uid_t, libc::gid_t)> {
    let user = match u.parse::<u32>() {
        Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
        Err(_) => nix::unistd::User::from_name(u),
    }
    .with_context(|| format!("looking up user {u}"))?
    .with_context(|| format!("no such user: {u}"))?;
    Ok((user.uid.as_raw(), user.gid.as_raw()))
}

/// Kills every remaining descendant: as a subreaper we inherit orphans, so
/// repeatedly killing our children and reaping them empties the tree, even
/// of processes that double-forked and called setsid.
fn kill_descendants() {
    for _ in 0..200 {
        let kids = children_of_self();
        if kids.is_empty() {
            return;
        }
        for pid in &kids {
            // SAFETY: signalling our own (unreaped) children.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        for pid in &kids {
            let mut st = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(*pid, &mut st, 0) };
        }
    }
}

fn children_of_self() -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

fn drain(ring: &mut aya::maps::RingBuf<aya::maps::MapData>, id: &str, out: &mut events::Output) {
    while let Some(item) = ring.next() {
        if let Some(ev) = events::parse(&item) {
            out.take(events::record(&ev, id, SystemTime::now()).into_line());
        }
    }
}

/// Phase timings on stderr when `NONO_AGENT_TIMINGS=1` (for benchmarking
/// start-up cost; see `cargo xtask bench`).
struct Timing {
    enabled: bool,
    last: std::time::Instant,
    phases: Vec<(&'static str, Duration)>,
}

impl Timing {
    fn new() -> Self {
        Self {
            enabled: std::env::var_os("NONO_AGENT_TIMINGS").is_some_and(|v| v == "1"),
            last: std::time::Instant::now(),
            phases: Vec::new(),
        }
    }

    fn mark(&mut self, phase: &'static str) {
        if self.enabled {
            let now = std::time::Instant::now();
            self.phases.push((phase, now - self.last));
            self.last = now;
        }
    }

    fn report(&self) {
        if self.enabled {
            let parts: Vec<String> = self
                .phases
                .iter()
                .map(|(p, d)| format!("{p}={d:.2?}"))
                .collect();
            eprintln!("nono-agent: timings: {}", parts.join(" "));
        }
    }
}
