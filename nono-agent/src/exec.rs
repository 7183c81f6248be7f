//! `nono-agent exec`: build the sandbox, run the command, tear it all down.

use anyhow::{bail, Context as _, Result};
use nono_common::{Dest, Endpoint, Policy, LOOPBACK_ANY, MAX_PROXY_ENDPOINTS};
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::unix::AsyncFd;

use crate::bpf::{bpffs, loader};
use crate::cli::{Enforcer, ExecArgs};
use crate::events::{self, Summary};
use crate::sandbox::{cgroup, child::ChildSetup, privileges, registry, resolve, sweep};
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

enum EventSink {
    None,
    Stdout,
    File(std::fs::File),
}

impl EventSink {
    fn open(path: Option<&Path>) -> Result<Self> {
        Ok(match path {
            None => Self::None,
            Some(p) if p.as_os_str() == "-" => Self::Stdout,
            Some(p) => Self::File(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("opening events file {}", p.display()))?,
            ),
        })
    }

    fn write(&mut self, rec: &events::EventRecord) {
        let Ok(mut line) = serde_json::to_vec(rec) else {
            return;
        };
        line.push(b'\n');
        let _ = match self {
            Self::None => Ok(()),
            Self::Stdout => std::io::stdout().lock().write_all(&line),
            Self::File(f) => f.write_all(&line),
        };
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
    let policy = policy(&args.proxy_endpoints)?;
    let mut sink = EventSink::open(args.events.as_deref())?;
    match args.enforcer {
        Enforcer::Auto | Enforcer::Bpf => {}
    }
    check_privileges()?;

    // Crashed agents' leftovers go first; a failure here must not stop us.
    match sweep::sweep() {
        Ok(s) => {
            for e in s.errors {
                eprintln!("nono-agent: cleaning a stale sandbox: {e}");
            }
        }
        Err(e) => eprintln!("nono-agent: cleaning stale sandboxes: {e:#}"),
    }

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

    let attached = loader::load_and_attach(&cg_path, &policy, Some(&pin_dir))
        .context("the bpf enforcer could not be applied; refusing to run the command unconfined")?;
    // SAFETY: the RingBuf owns its map fd, which stays open and unchanged
    // until the RingBuf (owned by the AsyncFd) is dropped.
    let ring = unsafe { AsyncFd::register_with_interest(attached.events, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("registering the event ring buffer: {}", e.into_parts().1))?;
    let dropped = attached.dropped;
    sb.attached = Some(attached.keep);

    let mut masks: Vec<PathBuf> = bpffs::mounts()?;
    masks.push(state.clone());
    masks.push(cg_parent.clone());
    let mask_refs: Vec<&Path> = masks.iter().map(PathBuf::as_path).collect();
    let setup = ChildSetup::new(&cg_path, true, &mask_refs)?;

    let mut command = tokio::process::Command::new(&program);
    command
        .arg0(cmd)
        .args(cmd_args)
        .env("NONO_SANDBOX_ID", &id)
        .env("NONO_CGROUP", &cg_path)
        .env("NONO_BPF_PIN_DIR", &pin_dir)
        .kill_on_drop(false);
    // SAFETY: `apply` only makes async-signal-safe syscalls on data prepared
    // before fork (see sandbox::child).
    unsafe {
        command.pre_exec(move || setup.apply());
    }

    let child_pid = Arc::new(AtomicI32::new(0));
    let _forwarder = Forwarder::start(child_pid.clone()).context("installing signal handlers")?;

    let mut child = command
        .spawn()
        .with_context(|| format!("starting {} in the sandbox", program.display()))?;
    if let Some(pid) = child.id() {
        child_pid.store(pid as i32, Ordering::SeqCst);
    }

    let mut summary = Summary::default();
    let mut ring = ring;
    let status = loop {
        tokio::select! {
            st = child.wait() => break st.context("waiting for the command")?,
            guard = ring.readable_mut() => {
                let mut guard = guard.context("polling the event ring buffer")?;
                drain(guard.get_inner_mut(), &id, &mut sink, &mut summary);
                guard.clear_ready();
            }
        }
    };
    child_pid.store(0, Ordering::SeqCst);

    // Kill what is left (daemons, background jobs) before reading the last
    // events and removing anything.
    if let Some(cg) = sb.cgroup.as_ref() {
        if let Err(e) = cg.kill_all(Duration::from_secs(10)) {
            eprintln!("nono-agent: sandbox {id}: {e:#}");
        }
    }
    drain(ring.get_mut(), &id, &mut sink, &mut summary);
    summary.dropped = loader::dropped_events(&dropped);
    drop(ring);
    for e in sb.teardown() {
        eprintln!("nono-agent: sandbox {id}: cleanup: {e}");
    }
    if !args.quiet {
        eprintln!("{}", summary.line(&id));
    }

    Ok(match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        _ => EXIT_AGENT_ERROR,
    })
}

fn drain(
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    id: &str,
    sink: &mut EventSink,
    summary: &mut Summary,
) {
    while let Some(item) = ring.next() {
        if let Some(ev) = events::parse(&item) {
            let rec = events::record(&ev, id, SystemTime::now());
            summary.add(rec.hook);
            sink.write(&rec);
        }
    }
}
