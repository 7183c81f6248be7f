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
use crate::cli::{Enforcer, ExecArgs, ProxyArgs};
use crate::events;
use crate::proxy;
use crate::sandbox::{
    cgroup, child::ChildSetup, hide, privileges, registry, resolve, spawn, sweep,
};
use crate::signals::Forwarder;

/// Exit code for the agent's own failures (as `env` and `timeout` use it).
pub const EXIT_AGENT_ERROR: i32 = 125;

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
    _lock: registry::OwnerLock,
}

impl Sandbox {
    /// Kill, remove the cgroup, then unpin. Errors are reported, not fatal:
    /// teardown goes as far as it safely can.
    fn teardown(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        let mut cgroup_gone = true;
        if let Some(cg) = self.cgroup.take() {
            if let Err(e) = cg.destroy(Duration::from_secs(10)) {
                errors.push(format!("{e:#}"));
                cgroup_gone = false;
            }
        }
        // Never unpin while processes may remain: they would run unconfined.
        if cgroup_gone {
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

fn check_privileges() -> Result<bool> {
    let caps = privileges::effective_caps().context("reading own capabilities")?;
    let need = [
        privileges::CAP_SYS_ADMIN,
        privileges::CAP_NET_ADMIN,
        privileges::CAP_BPF,
    ];
    let missing: Vec<_> = need.iter().filter(|c| caps & (1u64 << **c) == 0).collect();
    if !missing.is_empty() {
        bail!(
            "the bpf enforcer needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF); this process lacks capabilities {missing:?}. \
             Refusing to run the command unconfined."
        );
    }
    Ok(true)
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
    let policy = policy(&args.proxy_endpoints)?;
    let mut out = events::Output::open(args.events.as_deref())?;
    match args.enforcer {
        Enforcer::Auto | Enforcer::Bpf => {}
    }
    check_privileges()?;

    // Crashed agents' leftovers go first; a failure here must not stop us.
    let mut timing = Timing::new();
    match sweep::sweep() {
        Ok(s) => {
            for e in s.errors {
                eprintln!("nono-agent: cleaning a stale sandbox: {e}");
            }
        }
        Err(e) => eprintln!("nono-agent: cleaning stale sandboxes: {e:#}"),
    }

    timing.mark("sweep");
    let state = registry::state_dir()?;
    let id = registry::new_id()?;
    let lock = registry::OwnerLock::acquire(&state, &id)?;
    let mut sb = Sandbox {
        id: id.clone(),
        cgroup: None,
        pin_dir: None,
        attached: None,
        _lock: lock,
    };

    let cg_root = cgroup::discover_root()?;
    let cg_parent = cgroup::parent_dir(&cg_root)?;
    let cg = cgroup::Cgroup::create(&cg_parent, &id)?;
    let cg_path = cg.path().to_path_buf();
    sb.cgroup = Some(cg);

    let bpffs_root = bpffs::ensure_mounted()?;
    let pin_parent = bpffs::parent_dir(&bpffs_root)?;
    let pin_dir = pin_parent.join(&id);
    std::fs::create_dir(&pin_dir).with_context(|| format!("creating {}", pin_dir.display()))?;
    sb.pin_dir = Some(pin_dir.clone());

    timing.mark("cgroup+lock+bpffs");
    let attached = loader::load_and_attach_fast(&cg_path, &policy, Some(&pin_dir))
        .context("the bpf enforcer could not be applied; refusing to run the command unconfined")?;
    // SAFETY: the RingBuf owns its map fd, which stays open and unchanged
    // until the RingBuf (owned by the AsyncFd) is dropped.
    let ring =
        unsafe { AsyncFd::register_with_interest(attached.events, tokio::io::Interest::READABLE) }
            .map_err(|e| {
                anyhow::anyhow!("registering the event ring buffer: {}", e.into_parts().1)
            })?;
    let dropped = attached.dropped;
    sb.attached = Some(attached.keep);

    let masks = hide::mask_targets(&state)?;
    let mask_refs: Vec<&Path> = masks.iter().map(PathBuf::as_path).collect();
    let setup = ChildSetup::new(true, &mask_refs)?;

    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| !k.to_string_lossy().starts_with("NONO_"))
        .collect();
    env.push(("NONO_SANDBOX_ID".into(), id.clone().into()));
    env.push(("NONO_CGROUP".into(), cg_path.clone().into()));
    env.push(("NONO_BPF_PIN_DIR".into(), pin_dir.clone().into()));

    let (event_tx, mut event_rx) = tokio::sync::mpsc::unbounded_channel();
    let proxy = if args.proxy.wanted() {
        let secret = proxy::new_secret()?;
        let running = proxy::start_loopback(proxy_state(
            &args.proxy,
            Some(secret.clone()),
            &id,
            event_tx.clone(),
        )?)
        .await?;
        let port = running.addrs[0].port();
        for (k, v) in proxy::child_env(port, &secret) {
            env.retain(|(ek, _)| ek.as_os_str() != k.as_str());
            env.push((k.into(), v.into()));
        }
        Some(running)
    } else {
        None
    };
    let mut argv = vec![cmd.clone()];
    argv.extend(cmd_args.iter().cloned());
    let prepared = spawn::Prepared::new(program.as_os_str(), &argv, &env)
        .context("preparing the command line")?;
    let cgroup_fd =
        std::fs::File::open(&cg_path).with_context(|| format!("opening {}", cg_path.display()))?;

    let child_pid = Arc::new(AtomicI32::new(0));
    let _forwarder = Forwarder::start(child_pid.clone()).context("installing signal handlers")?;

    timing.mark("bpf load+attach+pin");
    let child = match spawn::spawn(&prepared, cgroup_fd.as_fd(), &setup) {
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
    // SAFETY: the pidfd is owned by `child`, which outlives `exited`.
    let exited = unsafe {
        AsyncFd::register_with_interest(child.pidfd.as_fd(), tokio::io::Interest::READABLE)
    }
    .map_err(|e| anyhow::anyhow!("watching the child: {}", e.into_parts().1))?;

    let mut ring = ring;
    loop {
        tokio::select! {
            r = exited.readable() => {
                let _ready = r.context("waiting for the command")?;
                break;
            }
            guard = ring.readable_mut() => {
                let mut guard = guard.context("polling the event ring buffer")?;
                drain(guard.get_inner_mut(), &id, &mut out);
                guard.clear_ready();
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
    if let Some(p) = proxy {
        p.stop();
    }
    drain(ring.get_mut(), &id, &mut out);
    while let Ok(line) = event_rx.try_recv() {
        out.take(line);
    }
    out.summary.dropped = loader::dropped_events(&dropped);
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

fn drain(ring: &mut aya::maps::RingBuf<aya::maps::MapData>, id: &str, out: &mut events::Output) {
    while let Some(item) = ring.next() {
        if let Some(ev) = events::parse(&item) {
            out.take(events::record(&ev, id, SystemTime::now()).into_line());
        }
    }
}

/// The proxy's state from the command line.
pub fn proxy_state(
    a: &ProxyArgs,
    secret: Option<String>,
    sandbox: &str,
    events: events::EventTx,
) -> Result<proxy::State> {
    Ok(proxy::State {
        policy: proxy::policy::ProxyPolicy {
            allow: a.allow_domain.clone(),
            deny: a.deny_domain.clone(),
            cidrs: a.allow_cidr.clone(),
        },
        resolver: proxy::resolve::Resolver::new(&a.resolve, a.dns_server)
            .map_err(anyhow::Error::msg)?,
        secret,
        upstream: a.upstream_proxy.clone(),
        limits: proxy::Limits {
            connect_timeout: Duration::from_secs(a.connect_timeout.max(1)),
            idle_timeout: Duration::from_secs(a.idle_timeout.max(1)),
            max_connections: a.max_connections.max(1),
            ..Default::default()
        },
        sandbox: sandbox.to_string(),
        events,
    })
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
