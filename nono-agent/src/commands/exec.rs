//! `nono-agent exec`: carry out the plan: start the proxy, create the
//! sandbox, apply the enforcer, run the command, tear it all down.
//!
//! Orchestration only: every decision is made in `plan` (what to enforce)
//! and `enforcer::choose` (with what); the pieces live in `sandbox`,
//! `enforcer`, `proxy` and `events`.

use anyhow::{bail, Context as _, Result};
use nono_common::Policy;
use std::ffi::OsString;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::unix::AsyncFd;

use crate::daemon::client::{AsyncClient, Client, ClientError, Created, Incoming};
use crate::enforcer::bpf::loader;
use crate::enforcer::seccomp::{filter, supervisor::Supervisor};
use crate::enforcer::{self, Applied, Choice, Host, Requested};
use crate::events;
use crate::plan::{self, ExecRequest, Plan};
use crate::sandbox::{
    cabundle, cgroup, child::ChildSetup, command_path, daemons, exec_check, fsaudit, fswatch, hide,
    landlock, privileges, pty, reap, registry, relay, spawn, sweep, teardown::Resources, users,
};
use crate::signals::Forwarder;
use crate::timing::Timing;
use crate::transparent;
use crate::util;
use nono_proxy as proxy;

/// Runs the command; returns the exit code for the agent. The plan is made
/// before the async runtime, because the plan decides which runtime: see
/// [`runtime_for`].
pub fn run(req: ExecRequest) -> Result<i32> {
    match prepare(req)? {
        Prepared::Done(f) => Ok(f.code),
        Prepared::Ready(ready) => {
            let rt = runtime_for(&ready.plan)?;
            Ok(rt.block_on(execute(ready, None))?.code)
        }
    }
}

/// A sandbox without a proxy carries no traffic through the agent: one
/// thread does everything (the child, its events, the daemon connection).
/// Worker threads would only cost start-up time: creating and joining them,
/// and, once they have run on other CPUs, inter-processor interrupts for
/// the TLB flushes of every copy-on-write fault after the child's fork (a
/// VM traps each one). With a proxy, the commands' two-worker runtime, so
/// that bulk traffic does not wait for the main task.
fn runtime_for(plan: &Plan) -> Result<tokio::runtime::Runtime> {
    if plan.proxy.is_some() {
        return super::runtime();
    }
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// How a run ended: the exit code for the agent, and (when asked for) every
/// event line, for `learn`.
pub struct Finished {
    /// The command's exit code (or 126/127 when it could not be started).
    pub code: i32,
    /// The command was started (false: not found or not executable).
    pub ran: bool,
    /// With an observer (`learn`): the files the sandbox's processes opened and wrote
    /// (`sandbox::fswatch`, root only), or why they could not be watched.
    pub files: Result<fswatch::Seen, String>,
}

impl Finished {
    fn code(code: i32) -> Self {
        Self {
            code,
            ran: false,
            files: Err("the command did not run".into()),
        }
    }
}

/// [`run`], handing every event line to `observer` when one is given
/// (`learn`), which also watches the files the sandbox uses.
pub async fn run_observed(
    req: ExecRequest,
    observer: Option<events::Observer>,
) -> Result<Finished> {
    match prepare(req)? {
        Prepared::Done(f) => Ok(f),
        Prepared::Ready(ready) => execute(ready, observer).await,
    }
}

/// What [`prepare`] found: the run is over already (a command that cannot
/// start, a dry run), or everything is checked and ready to be made.
enum Prepared {
    Done(Finished),
    Ready(Box<Ready>),
}

/// A checked plan, before anything is created.
struct Ready {
    plan: Plan,
    program: PathBuf,
    privileged: bool,
    timing: Timing,
}

/// Everything the user asked for is checked before anything is created.
fn prepare(req: ExecRequest) -> Result<Prepared> {
    let timing = Timing::new();
    let (cmd, _) = req
        .command
        .split_first()
        .context("no command given after --")?;
    let program = match command_path::resolve(cmd, std::env::var_os("PATH").as_deref()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("nono-agent: {e}");
            return Ok(Prepared::Done(Finished::code(e.exit_code())));
        }
    };
    // The host configuration: fail closed if it cannot be used.
    let mut req = req;
    req.host = crate::config::load_from_env()?;
    let plan = plan::build(&req)?;
    let privileged = privileges::can_load_bpf();
    if let (Some(u), false) = (&plan.user, privileged) {
        bail!("running the command as user {} needs root", u.login());
    }
    // A profile that hides the command or its interpreter would end in a
    // bare EACCES from the child's exec: say which path, before anything
    // is created. (Landlock still decides; this only explains. Audit mode
    // applies no filesystem rules, so hides nothing.)
    if let (Some(rules), false) = (&plan.fs, plan.audit) {
        let env = plan::environment(&plan.env);
        let path_env = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_os_str());
        let user = plan.user.as_ref().map(|a| (a.uid, a.gid));
        if let Err(denied) = exec_check::check_as(user, rules, &program, path_env) {
            let name = plan.profile_name.as_deref().unwrap_or("default");
            eprintln!("nono-agent: profile {name} {denied}");
            return Ok(Prepared::Done(Finished::code(126)));
        }
    }
    if let Some(mode) = req.dry_run {
        // Checks the filesystem rules as exec would (a ruleset is only a
        // descriptor: nothing outlives it).
        prepare_landlock(&plan)?;
        return super::dry_run::run(&plan, &program, privileged, mode)
            .map(|code| Prepared::Done(Finished::code(code)));
    }
    Ok(Prepared::Ready(Box::new(Ready {
        plan,
        program,
        privileged,
        timing,
    })))
}

/// Makes the sandbox the plan describes, runs the command in it and takes
/// it down.
async fn execute(ready: Box<Ready>, observer: Option<events::Observer>) -> Result<Finished> {
    let keep = observer.is_some();
    let Ready {
        mut plan,
        program,
        privileged,
        mut timing,
    } = *ready;
    let mut out = events::Output::open(plan.events.as_deref())?;
    let notices = match plan.notices {
        crate::cli::Notices::Always => true,
        crate::cli::Notices::Never => false,
        crate::cli::Notices::Auto => !plan.quiet && pty::is_terminal(2),
    };
    if notices {
        out.set_notifier(crate::notice::Notifier::stderr());
    }
    if let Some(f) = observer {
        out.observe_with(f);
    }
    if let Some(p) = &plan.host_events {
        if let Err(e) = out.add_file(p) {
            eprintln!(
                "nono-agent: WARNING: the host configuration's events file: {}",
                util::chain(&e)
            );
        }
    }
    let user = plan.user.as_ref().map(|a| (a.uid, a.gid));
    let id = registry::new_id()?;
    // Credentials: the real values were read by the plan; wipe them from
    // the agent's own environment block, and make the directory of the
    // sandbox's CA bundle now, so the filesystem rules can let it be read.
    let bundle = if plan.credentials.credentials.is_empty() {
        None
    } else {
        crate::creds::wipe_own_environment(&plan.credentials.secret_vars);
        for f in crate::creds::readable_files(&plan.credentials, plan.fs.as_ref()) {
            eprintln!(
                "nono-agent: WARNING: the credential file {} is readable inside the sandbox \
                 ({}): the command can read the real value there",
                f.display(),
                if plan.fs.is_some() {
                    "a filesystem rule covers it"
                } else {
                    "no profile confines the filesystem"
                }
            );
        }
        let base = cabundle::base_dir();
        for e in cabundle::sweep_stale(&base) {
            eprintln!("nono-agent: removing a stale CA bundle: {e}");
        }
        let b = cabundle::Bundle::create(&base, &id, user)?;
        if let Some(fs) = plan.fs.as_mut() {
            fs.read.push(b.dir().to_path_buf());
        }
        Some(b)
    };
    timing.mark("plan");
    let mut landlock = prepare_landlock(&plan)?;
    // Filesystem denials, where the kernel reports them (see fsaudit).
    // Audit mode applies no filesystem rules: nothing to listen for.
    let mut fs_listener = None;
    if plan.fs.is_some() && !plan.audit {
        match fsaudit::Listener::open() {
            Ok(l) => {
                if let Some(l) = landlock.as_mut() {
                    l.log_after_exec();
                }
                fs_listener = Some(l);
            }
            Err(why) => out.summary.fs = Some(events::FsReport::NotReported(why)),
        }
    }
    timing.mark("landlock prepared");
    let (event_tx, mut event_rx) = tokio::sync::mpsc::unbounded_channel();
    let (mut proxy, proxy_env) = match &plan.proxy {
        Some(config) => {
            let secret = proxy::new_secret()?;
            let config = proxy::ProxyConfig {
                secret: Some(secret.clone()),
                sandbox: id.clone(),
                ..config.clone()
            };
            let running =
                proxy::start_loopback(config, Arc::new(proxy_sink(&event_tx, &out))).await?;
            let env = proxy::child_env(running.addrs[0].port(), &secret);
            (Some(running), env)
        }
        None => (None, Vec::new()),
    };
    // The sandbox trusts its CA through a bundle named by the usual
    // variables (the CA key never leaves the proxy's memory).
    let cred_env = match (&bundle, proxy.as_ref().and_then(|p| p.ca_pem())) {
        (Some(b), Some(ca)) => {
            let pem = cabundle::contents(ca, &plan.credentials.upstream_ca);
            let path = b.write(&pem, user)?;
            crate::creds::child_vars(&plan.credentials, Some(&path))
        }
        (Some(_), None) => bail!("credentials were given but the proxy intercepts nothing"),
        _ => Vec::new(),
    };
    let proxy_ports: Vec<u16> = proxy
        .iter()
        .flat_map(|p| p.addrs.iter().map(|a| a.port()))
        .collect();
    let mut policy = plan.kernel.policy(&proxy_ports, plan.audit);
    let mut capture = None;
    if let (true, Some(p)) = (plan.transparent, proxy.as_mut()) {
        let sink = Arc::new(proxy_sink(&event_tx, &out));
        let c = transparent::start(p, plan.proxy.as_ref(), &id, sink).await?;
        policy.redirects = c.redirects;
        capture = Some(c);
    }
    timing.mark("proxy");
    let mut daemon = connect_daemon(&plan);
    // As root the state directory is needed through the daemon too: the
    // child's masks over cgroupfs and bpffs come from it (a capability-less
    // root child could otherwise write root-owned cgroup.procs files and
    // leave its cgroup). Stale sandboxes and the owner lock are the direct
    // path's business.
    let host = Host::detect(privileged);
    let (state, lock) = if privileged {
        let st = registry::state_dir()?;
        let lock = if daemon.is_none() {
            // Without cgroup2 there is nothing to sweep, and the enforcer's
            // choice below refuses with the reason (once).
            if host.no_cgroup2.is_none() {
                sweep_stale();
            }
            Some(registry::OwnerLock::acquire(&st, &id)?)
        } else {
            None
        };
        (Some(st), lock)
    } else {
        (None, None)
    };
    timing.mark("state (sweep, or daemon connected)");
    let mut res = Resources::new(id.clone(), lock);
    let mut token = None;
    let daemon_refused = || {
        format!(
            "the daemon at {} did not create the sandbox (--no-daemon: do without it)",
            plan.daemon_socket
                .as_deref()
                .unwrap_or(Path::new("?"))
                .display()
        )
    };
    // Through the daemon, the create request goes now and its answer is
    // read once the child is started and the place request sent behind it
    // (the daemon answers in order): the daemon creates the sandbox while
    // this side prepares and forks the child, which learns its cgroup
    // (NONO_CGROUP) with the go (spawn::Prepared::with_late_var). Nothing
    // of the command runs before both answers are in. Transparent mode
    // needs the sandbox's token before the child starts: one request at a
    // time there.
    let pipelined = daemon.is_some() && capture.is_none();
    let mut applied = match daemon.as_mut() {
        Some(client) if pipelined => {
            client
                .send_create(&id, crate::daemon::policy::to_wire(&policy))
                .with_context(daemon_refused)?;
            // The cgroup is filled in from the answer, after the spawn.
            Applied::Daemon {
                cgroup_dir: PathBuf::new(),
                nested: false,
            }
        }
        Some(client) => {
            let created = client
                .create(&id, crate::daemon::policy::to_wire(&policy))
                .with_context(daemon_refused)?;
            print_daemon_enforcer(&plan, &created);
            token = Some(created.token);
            Applied::Daemon {
                cgroup_dir: PathBuf::from(created.cgroup),
                nested: created.nested,
            }
        }
        None => apply_enforcer(&plan, &mut res, &policy, host)?,
    };
    if let Some(c) = &capture {
        match &applied {
            Applied::Bpf { originals, .. } => c.use_records(originals.clone()),
            // The supervisor records into `c.dialled` itself.
            Applied::Seccomp => {}
            Applied::Daemon { .. } => match (&plan.daemon_socket, &token) {
                (Some(path), Some(t)) => c.use_daemon(path.clone(), id.clone(), t.clone()),
                _ => bail!("transparent mode: the daemon's sandbox has no token"),
            },
            Applied::Unenforced => {
                eprintln!(
                    "nono-agent: WARNING: --transparent: nothing is redirected without an enforcer"
                )
            }
        }
    }
    timing.mark("enforcer applied");
    if plan.audit && !plan.quiet {
        eprintln!(
            "nono-agent: AUDIT MODE: what the policy refuses goes ahead and is recorded as \
             would-deny (cloud metadata, link-local and the host protection stay refused)"
        );
    }
    // Pipelined through the daemon, after the enforcer line (which waits
    // for the create answer).
    let filesystem_line = (!plan.quiet).then(|| plan.filesystem_line(privileged));
    if !pipelined {
        if let Some(line) = &filesystem_line {
            eprintln!("nono-agent: filesystem: {line}");
        }
    }

    // Well-known daemon sockets the sandbox may not reach: hidden by path
    // as root, refused by the seccomp supervisor. Neither applies to an
    // unprivileged sandbox with the BPF enforcer, so it skips the listing
    // (it reads /run/user and /tmp: a tenth of a millisecond or more).
    let (denied_sockets, denied_socket_ids): (Vec<PathBuf>, Vec<(u64, u64)>) =
        if privileged || matches!(applied, Applied::Seccomp) {
            daemons::denied(&plan.allow_unix_sockets)
                .into_iter()
                .unzip()
        } else {
            (Vec::new(), Vec::new())
        };
    timing.mark("daemon sockets listed");
    let masks = match &state {
        Some(st) => hide::mask_targets(st)?,
        None => Vec::new(),
    };
    let mask_refs: Vec<&Path> = masks.iter().map(PathBuf::as_path).collect();
    let filter_mode = match applied {
        Applied::Bpf { .. } | Applied::Daemon { .. } => Some(filter::Mode::Harden),
        Applied::Seccomp => Some(filter::Mode::Notify),
        Applied::Unenforced => None,
    };
    let self_files: Vec<PathBuf> = plan.protected_files();
    let terminal = Terminal::prepare(user.map(|(uid, _)| uid))?;
    let setup = ChildSetup::new(
        privileged,
        &mask_refs,
        filter_mode,
        plan.allow_degraded,
        &self_files,
    )?
    .with_landlock(landlock)
    .with_user(user)
    .with_hidden_sockets(if privileged { &denied_sockets } else { &[] })?
    .with_terminal(terminal.as_ref().map(Terminal::child_side));

    let mut proxy_env = proxy_env;
    if capture.is_some() && matches!(applied, Applied::Seccomp) {
        let current = plan::environment(&plan.env)
            .into_iter()
            .find(|(k, _)| k == "RES_OPTIONS")
            .map(|(_, v)| v);
        proxy_env.push(transparent::seccomp_env(current.as_deref()));
    }
    let env = child_environment(&plan, &id, &applied, [proxy_env, cred_env].concat());
    let mut prepared = spawn::Prepared::new(program.as_os_str(), &plan.command, &env)
        .context("preparing the command line")?;
    if pipelined {
        prepared = prepared
            .with_late_var("NONO_CGROUP")
            .context("preparing the command's environment")?;
    }
    // A privileged sandbox always gets a cgroup: under seccomp too, so that
    // `cleanup` can find and kill it if the agent dies.
    if privileged
        && res.cgroup.is_none()
        && !matches!(applied, Applied::Unenforced | Applied::Daemon { .. })
    {
        let cg_parent = cgroup::parent_dir(&cgroup::discover_root()?)?;
        res.cgroup = Some(cgroup::Cgroup::create(&cg_parent, &id)?);
    }
    let cgroup_file = match &res.cgroup {
        Some(cg) => Some(
            std::fs::File::open(cg.path())
                .with_context(|| format!("opening {}", cg.path().display()))?,
        ),
        None => None,
    };

    // `learn`: watch the files the sandbox's processes use (root: a
    // fanotify filesystem mark, told apart by the sandbox's own mounts).
    // `exec --audit` with filesystem rules watches too: what the rules
    // would have refused is recorded as would-deny at the end.
    let watch = if keep || (plan.audit && plan.fs.is_some()) {
        Some(start_file_watch(privileged))
    } else {
        None
    };
    reap::become_subreaper();
    let forwarder = Forwarder::start().context("installing signal handlers")?;

    let mut created_late: Option<Result<Created, ClientError>> = None;
    let mut place_in_daemon_sandbox = |pidfd: std::os::fd::BorrowedFd<'_>| {
        let io = |e: &ClientError| std::io::Error::other(util::chain(e));
        let Some(c) = daemon.as_mut() else {
            return Ok(Vec::new());
        };
        if !pipelined {
            c.place(pidfd).map_err(|e| io(&e))?;
            return Ok(Vec::new());
        }
        let sent = c.send_place(pidfd);
        // The create answer first, also when the place request could not
        // go (a refusing daemon may have closed): it says why.
        let created = match c.finish_create() {
            Ok(created) => created,
            Err(e) => {
                let err = io(&e);
                created_late = Some(Err(e));
                return Err(err);
            }
        };
        sent.map_err(|e| io(&e))?;
        c.finish_place().map_err(|e| io(&e))?;
        print_daemon_enforcer(&plan, &created);
        if let Some(line) = &filesystem_line {
            eprintln!("nono-agent: filesystem: {line}");
        }
        let cgroup = created.cgroup.clone().into_bytes();
        created_late = Some(Ok(created));
        Ok(cgroup)
    };
    let place: Option<spawn::Place<'_>> = if matches!(applied, Applied::Daemon { .. }) {
        Some(&mut place_in_daemon_sandbox)
    } else {
        None
    };
    let spawned = spawn::spawn(
        &prepared,
        cgroup_file.as_ref().map(|f| f.as_fd()),
        place,
        &setup,
    );
    let mut child = match spawned {
        Ok(c) => c,
        Err(spawn::SpawnError::Child(spawn::Stage::Exec, e)) => {
            eprintln!("nono-agent: {}: {e}", program.display());
            return Ok(Finished::code(if e.raw_os_error() == Some(libc::ENOENT) {
                127
            } else {
                126
            }));
        }
        Err(e) => {
            if let Some(Err(refused)) = created_late {
                return Err(anyhow::Error::new(refused).context(daemon_refused()));
            }
            return Err(e).context("starting the command in the sandbox");
        }
    };
    if let Some(Ok(created)) = created_late {
        token = Some(created.token);
        applied = Applied::Daemon {
            cgroup_dir: PathBuf::from(created.cgroup),
            nested: created.nested,
        };
    }
    timing.mark("spawn");
    forwarder.child_started(child.pid);
    let fs_audit = match fs_listener.take() {
        Some(l) => Some(
            l.start(child.pid, id.clone(), event_tx.clone())
                .context("starting the filesystem audit reader")?,
        ),
        None => None,
    };
    if let Some(Ok(w)) = &watch {
        w.sandbox_started(child.pid);
    }
    let mut dconn: Option<AsyncClient> = match daemon.take() {
        Some(mut c) => {
            for raw in std::mem::take(&mut c.early_events) {
                events::take_raw(&raw, &id, &mut out);
            }
            Some(c.into_async()?)
        }
        None => None,
    };
    let mut reconnect: Option<
        std::pin::Pin<Box<dyn std::future::Future<Output = Option<AsyncClient>> + Send>>,
    > = None;
    let relay = match terminal {
        Some(t) => Some(t.start_relay()?),
        None => None,
    };
    if let Some(listener) = child.listener.take() {
        let sup = Supervisor::new(
            listener,
            policy,
            denied_socket_ids.clone(),
            id.clone(),
            event_tx.clone(),
            capture.as_ref().map(|c| c.dialled.clone()),
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
                    events::drain_ring(guard.get_inner_mut(), &id, &mut out);
                    guard.clear_ready();
                }
            }
            Some(line) = event_rx.recv() => out.take(line),
            inc = async { Some(dconn.as_mut()?.next().await) }, if dconn.is_some() => match inc {
                Some(Incoming::Event(raw)) => events::take_raw(&raw, &id, &mut out),
                _ => {
                    // The daemon stopped or died: the sandbox stays confined
                    // (pinned programs); a restarted daemon hands it back.
                    dconn = None;
                    eprintln!("nono-agent: lost the daemon connection; the sandbox stays confined; reconnecting");
                    if let (Some(path), Some(t)) = (plan.daemon_socket.clone(), token.clone()) {
                        reconnect = Some(Box::pin(resume(path, id.clone(), t)));
                    }
                }
            },
            r = async { Some(reconnect.as_mut()?.await) }, if reconnect.is_some() => {
                reconnect = None;
                dconn = r.flatten();
                if dconn.is_some() {
                    eprintln!("nono-agent: reconnected to the daemon");
                } else {
                    eprintln!("nono-agent: WARNING: could not reconnect to the daemon; it ends the sandbox when this agent exits");
                }
            }
        }
    }
    drop(exited);
    if let Some(r) = relay {
        if let Err(e) = r.finish().await {
            eprintln!("nono-agent: {}", util::chain(&e));
        }
    }
    timing.mark("child ran");
    let status = child
        .reap()
        .context("collecting the command's exit status")?;
    forwarder.child_reaped();

    // Kill what is left (daemons, background jobs) before reading the last
    // events and removing anything.
    if let Some(cg) = res.cgroup.as_ref() {
        if let Err(e) = cg.kill_all(Duration::from_secs(10)) {
            eprintln!("nono-agent: sandbox {id}: {}", util::chain(&e));
        }
    }
    reap::kill_descendants();
    let files = match watch {
        Some(Ok(w)) => Ok(w.finish()),
        Some(Err(why)) => Err(why),
        None => Err("not asked for".into()),
    };
    if plan.audit {
        match (&files, &plan.fs) {
            (Ok(seen), Some(rules)) => {
                for line in file_audit_lines(seen, rules, &id) {
                    out.take(line);
                }
            }
            (Err(why), Some(_)) if !plan.quiet => eprintln!(
                "nono-agent: audit: filesystem accesses outside the profile are not recorded: {why}"
            ),
            _ => {}
        }
    }
    if let Some(c) = capture {
        c.stop().await;
    }
    if let Some(p) = proxy {
        p.stop().await;
    }
    if let Some(r) = ring.as_mut() {
        events::drain_ring(r.get_mut(), &id, &mut out);
    }
    if let Some(a) = fs_audit {
        let incomplete = tokio::task::spawn_blocking(move || a.finish(Duration::from_secs(2)))
            .await
            .unwrap_or(true);
        out.summary.fs = Some(events::FsReport::Listed { incomplete });
    }
    // Give the supervisor's last events a moment to arrive.
    tokio::task::yield_now().await;
    while let Ok(line) = event_rx.try_recv() {
        out.take(line);
    }
    if let Some(d) = &dropped {
        out.summary.dropped = loader::dropped_events(d);
    }
    // Without a summary to print or anything taking events, the daemon's
    // answer (the last events) would be thrown away: it is not waited for.
    let answer_unused = plan.quiet && !out.has_readers();
    if let Some(c) = dconn.take_if(|_| answer_unused) {
        if let Err(e) = c.end_unanswered().await {
            eprintln!(
                "nono-agent: sandbox {id}: ending it through the daemon: {}",
                util::chain(&e)
            );
        }
    }
    if let Some(c) = dconn.take() {
        match c.end().await {
            Ok((last, dropped)) => {
                for raw in last {
                    events::take_raw(&raw, &id, &mut out);
                }
                out.summary.dropped = dropped;
            }
            Err(e) => eprintln!(
                "nono-agent: sandbox {id}: ending it through the daemon: {}",
                util::chain(&e)
            ),
        }
    }
    drop(ring);
    for e in res.teardown() {
        eprintln!("nono-agent: sandbox {id}: cleanup: {e}");
    }
    timing.mark("teardown");
    timing.report();
    out.finish_notices();
    if !plan.quiet {
        // The command may have left the terminal hiding text (see
        // notice::TERMINAL_RESET): the summary must show.
        let reset = if pty::is_terminal(2) {
            crate::notice::TERMINAL_RESET
        } else {
            ""
        };
        eprintln!("{reset}{}", out.summary.line(&id, plan.audit));
        if let Some(l) = out.summary.fs_line(&id) {
            eprintln!("{l}");
        }
    }

    Ok(Finished {
        ran: true,
        code: match status {
            spawn::Exit::Code(c) => c,
            spawn::Exit::Signal(sig) => 128 + sig,
        },
        files,
    })
}

/// The sink of the proxy's events: allowed ones only when something reads
/// them (see [`events::ProxySink::new`]).
fn proxy_sink(tx: &events::EventTx, out: &events::Output) -> events::ProxySink {
    events::ProxySink::new(tx.clone(), out.takes_allowed())
}

/// The would-deny events of `exec --audit` for the files the profile's
/// rules would have refused (the same judgement `learn` makes: a read
/// outside every rule, a write outside the write rules).
fn file_audit_lines(
    seen: &fswatch::Seen,
    rules: &landlock::FsRules,
    id: &str,
) -> Vec<events::Line> {
    let profile = crate::profile::FsPolicy {
        read: rules.read.clone(),
        write: rules.write.clone(),
        exec: rules.exec.clone(),
    };
    let ts = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
    let mut lines = Vec::new();
    let judged = [
        ("write", &seen.write, &[&profile.write][..]),
        (
            "open",
            &seen.read,
            &[&profile.read, &profile.write, &profile.exec][..],
        ),
    ];
    for (hook, paths, allowed) in judged {
        for (path, n) in paths {
            if allowed
                .iter()
                .any(|r| r.iter().any(|b| path.starts_with(b)))
            {
                continue;
            }
            // A read of a file the run also wrote is part of that write.
            if hook == "open" && seen.write.contains_key(path) {
                continue;
            }
            let rec = serde_json::json!({
                "ts": ts,
                "sandbox": id,
                "source": "filesystem",
                "hook": hook,
                "verdict": events::WOULD_DENY,
                "reason": "not-in-profile",
                "path": path.to_string_lossy(),
                "processes": n,
            });
            lines.push(events::Line {
                key: "filesystem",
                deny: false,
                would_deny: true,
                json: serde_json::to_vec(&rec).unwrap_or_default(),
                notice: None,
            });
        }
    }
    lines
}

/// Starts the filesystem watch for `learn`, or says why there is none.
fn start_file_watch(privileged: bool) -> Result<fswatch::Watch, String> {
    if !privileged {
        return Err("it needs root (a fanotify filesystem mark); this run was unprivileged".into());
    }
    let mountinfo = crate::mountinfo::read().map_err(|e| e.to_string())?;
    fswatch::Watch::start(&mountinfo).map_err(|e| util::chain(&e))
}

/// The command's own pseudo-terminal, when the agent's stdin is a terminal
/// (see `sandbox::pty` and `sandbox::relay`).
struct Terminal {
    pty: pty::Pty,
    modes: pty::RawMode,
    onto: [bool; 3],
    /// The init's stop reports: read end, write end.
    stop_pipe: (std::os::fd::OwnedFd, std::os::fd::OwnedFd),
}

impl Terminal {
    fn prepare(uid: Option<libc::uid_t>) -> Result<Option<Self>> {
        if !pty::is_terminal(0) {
            return Ok(None);
        }
        // SAFETY: fd 0 is open (a terminal) for the whole run.
        let stdin = unsafe { std::os::fd::BorrowedFd::borrow_raw(0) };
        let pty = pty::Pty::open_like(stdin)?;
        if let Some(uid) = uid {
            pty.chown_slave(uid)
                .context("giving the pseudo-terminal to the user")?;
        }
        Ok(Some(Self {
            pty,
            modes: pty::RawMode::new(0)?,
            onto: [true, pty::is_terminal(1), pty::is_terminal(2)],
            stop_pipe: nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?,
        }))
    }

    fn child_side(&self) -> crate::sandbox::child::Terminal {
        use std::os::fd::AsRawFd as _;
        crate::sandbox::child::Terminal {
            slave: self.pty.slave.as_raw_fd(),
            onto: self.onto,
            stop_report: self.stop_pipe.1.as_raw_fd(),
        }
    }

    /// Once the command runs: the agent's copies of the slave and of the
    /// stop pipe's write end are closed, the relay starts.
    fn start_relay(self) -> Result<relay::Relay> {
        let (stops, _) = self.stop_pipe;
        drop(self.pty.slave);
        Ok(relay::Relay::start(self.pty.master, self.modes, stops)?)
    }
}

/// The enforcer line for a sandbox the daemon created.
fn print_daemon_enforcer(plan: &Plan, created: &Created) {
    if !plan.quiet {
        eprintln!(
            "nono-agent: enforcer: bpf (daemon{})",
            if created.nested { ", nested" } else { "" }
        );
    }
}

/// The daemon, when it should be used and answers; otherwise `None` (and
/// the direct or seccomp path is taken, as `enforcer::choose` decides).
fn connect_daemon(plan: &Plan) -> Option<Client> {
    if plan.enforcer == Requested::Seccomp {
        return None;
    }
    let path = plan.daemon_socket.as_deref()?;
    match Client::connect(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nono-agent: not using the daemon: {}", util::chain(&e));
            None
        }
    }
}

/// Reconnects to a restarted daemon and resumes the sandbox (up to a
/// minute).
async fn resume(path: PathBuf, id: String, token: String) -> Option<AsyncClient> {
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let p = path.clone();
        let (i, t) = (id.clone(), token.clone());
        let r = tokio::task::spawn_blocking(move || -> Option<AsyncClient> {
            let mut c = Client::connect(&p).ok()??;
            c.resume(&i, &t).ok()?;
            c.into_async().ok()
        })
        .await
        .ok()
        .flatten();
        if r.is_some() {
            return r;
        }
    }
    None
}

/// The Landlock domain: the profile's rules, or the baseline (scopes only)
/// without filesystem rules.
fn prepare_landlock(plan: &Plan) -> Result<Option<landlock::Prepared>> {
    // Audit mode applies no filesystem rules (only the scopes).
    let rules = if plan.audit { None } else { plan.fs.as_ref() };
    Ok(match rules {
        Some(rules) => {
            let l = landlock::prepare(rules, plan.allow_degraded)?;
            for d in &l.degraded {
                eprintln!("nono-agent: WARNING: {d}");
            }
            Some(l)
        }
        None => {
            let l = landlock::prepare_baseline(plan.allow_degraded)?;
            if l.is_none() {
                eprintln!("nono-agent: WARNING: no Landlock domain (kernel ABI < 6): the sandbox can ptrace, signal and reach the abstract unix sockets of this user's other processes");
            }
            l
        }
    })
}

/// Crashed agents' leftovers go first; a failure here must not stop us.
fn sweep_stale() {
    match sweep::sweep(Duration::ZERO) {
        Ok(s) => {
            for e in s.errors {
                eprintln!("nono-agent: cleaning a stale sandbox: {e}");
            }
        }
        Err(e) => eprintln!("nono-agent: cleaning stale sandboxes: {}", util::chain(&e)),
    }
}

/// Chooses and applies the enforcer (see `enforcer::choose`) and says which
/// one runs.
fn apply_enforcer(
    plan: &Plan,
    res: &mut Resources,
    policy: &Policy,
    host: Host,
) -> Result<Applied> {
    let try_bpf = || match enforcer::apply_bpf(res, policy) {
        Ok(a) => Ok(a),
        Err(e) => {
            for t in res.teardown() {
                eprintln!("nono-agent: cleanup: {t}");
            }
            Err(util::chain(&e))
        }
    };
    let choice = enforcer::choose(plan.enforcer, host, plan.allow_unenforced, try_bpf)?;
    Ok(match choice {
        Choice::Bpf(a) => {
            if plan.enforcer == Requested::Auto && !plan.quiet {
                eprintln!("nono-agent: enforcer: bpf");
            }
            a
        }
        Choice::Seccomp { why_not_bpf } => {
            if let (Some(why), false) = (why_not_bpf, plan.quiet) {
                eprintln!("nono-agent: enforcer: seccomp ({why})");
            }
            Applied::Seccomp
        }
        Choice::Unenforced { why } => {
            eprintln!("nono-agent: WARNING: NO NETWORK ENFORCEMENT: {why}; running anyway because --allow-unenforced was given");
            Applied::Unenforced
        }
    })
}

/// The command's environment: the plan's, the sandbox's identity, and the
/// proxy and credential variables (which replace any the caller had).
fn child_environment(
    plan: &Plan,
    id: &str,
    applied: &Applied,
    proxy_env: Vec<(String, String)>,
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = plan::environment(&plan.env);
    // A variable that held a real credential never reaches the sandbox,
    // whatever the environment policy (its placeholder may replace it).
    let secret = &plan.credentials.secret_vars;
    env.retain(|(k, _)| !secret.iter().any(|n| k.as_os_str() == n.as_str()));
    if let Some(account) = &plan.user {
        let only_present = matches!(plan.env, crate::profile::EnvPolicy::PassThrough(_));
        if !matches!(plan.env, crate::profile::EnvPolicy::Clean) {
            users::set_identity(&mut env, account, only_present);
        }
    }
    env.push(("NONO_SANDBOX_ID".into(), id.into()));
    env.push(("NONO_ENFORCER".into(), applied.name().into()));
    match applied {
        Applied::Bpf {
            cgroup_dir,
            pin_dir,
            ..
        } => {
            env.push(("NONO_CGROUP".into(), cgroup_dir.clone().into()));
            env.push(("NONO_BPF_PIN_DIR".into(), pin_dir.clone().into()));
        }
        // An empty one: the create answer is read after the spawn, and
        // the child gets its cgroup as a late variable.
        Applied::Daemon { cgroup_dir, .. } => {
            env.retain(|(k, _)| k.as_os_str() != "NONO_CGROUP");
            if !cgroup_dir.as_os_str().is_empty() {
                env.push(("NONO_CGROUP".into(), cgroup_dir.clone().into()));
            }
        }
        _ => {}
    }
    for (k, v) in proxy_env {
        env.retain(|(ek, _)| ek.as_os_str() != k.as_str());
        env.push((k.into(), v.into()));
    }
    env
}
