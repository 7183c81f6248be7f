//! The daemon: one set of programs, many sandboxes, requests from any
//! local user on a unix socket.
//!
//! Every request is judged by who sent it (the kernel's peer credentials
//! and a pidfd, never a claim in the request): a client may create a
//! sandbox owned by its connection, move its own child into it, and end it.
//! A client inside a daemon sandbox gets a sandbox nested in its own, with
//! the intersection of both policies. Sandboxes end when their owner's
//! connection closes, so a killed client leaves nothing behind.

use std::collections::HashMap;
use std::os::fd::{AsFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nono_common::{Policy, MAX_SANDBOXES};
use tokio::io::unix::AsyncFd;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use super::conn::{self, ConnError};
use super::log::{self, DenialBudget};
use super::metrics::{self, EndReason, Metrics};
use super::place;
use super::policy;
use super::process::{self, Peer};
use super::protocol::{self, Reply, Request};
use super::records::{self, Record};
use super::shared::{self, Shared};
use crate::sandbox::{cgroup, registry};

/// Limits per uid; a client beyond them gets an error reply.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Live sandboxes per uid.
    pub sandboxes_per_uid: usize,
    /// Open connections per uid.
    pub connections_per_uid: usize,
    /// Requests per second per uid (sustained; bursts of twice that).
    pub requests_per_sec: u32,
    /// Proxy-endpoint and loopback-port entries per uid in the shared maps
    /// (their capacity is shared by every user).
    pub entries_per_uid: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            sandboxes_per_uid: 256,
            connections_per_uid: 512,
            requests_per_sec: 200,
            entries_per_uid: 4096,
        }
    }
}

/// How the daemon is run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The socket path (unless systemd passes a listening socket).
    pub socket: PathBuf,
    /// Name of its cgroup, pin and state directories (tests run several).
    pub name: String,
    /// Its state directory (records).
    pub state_dir: PathBuf,
    /// Per-uid limits.
    pub limits: Limits,
    /// Appended to the build id of the pin directory: lets the tests play
    /// an upgrade to another build with one binary.
    pub build_salt: Option<String>,
    /// The metrics unix socket and its mode (none: not served there).
    pub metrics_socket: Option<(PathBuf, u32)>,
    /// A loopback address to serve metrics on too.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The shared programs could not be loaded or taken over.
    #[error(transparent)]
    Shared(#[from] shared::SharedError),
    /// The state directory.
    #[error(transparent)]
    Records(#[from] records::RecordError),
    /// The socket could not be set up.
    #[error("listening on {}", .path.display())]
    Listen {
        /// The socket.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The event ring could not be watched.
    #[error("watching the event ring")]
    Ring(#[source] std::io::Error),
    /// The metrics endpoints.
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    /// Another daemon answers on the socket.
    #[error("another daemon already answers on {}", .0.display())]
    Running(PathBuf),
}

struct Sandbox {
    rec: Record,
    dir: PathBuf,
    /// The connection that owns it now, if any (none after a restart, until
    /// its owner resumes).
    conn: Option<u64>,
    events: Option<mpsc::Sender<Vec<u8>>>,
    /// Events kept for an owner that has not resumed yet (after a restart).
    pending: Option<mpsc::Receiver<Vec<u8>>>,
    dropped: u64,
    /// The owner process, watched while no connection owns the sandbox.
    owner: Option<OwnedFd>,
    /// Denials it may still log this second.
    log_budget: DenialBudget,
}

#[derive(Default)]
struct Uid {
    connections: usize,
    /// Sandboxes ended but not yet cleaned up (see `detach`): they still
    /// count against the uid's sandbox limit, so ending without waiting
    /// cannot be used to pile up cgroups.
    ending: usize,
    tokens: f64,
    refill: Option<Instant>,
}

struct Inner {
    shared: Shared,
    sandboxes: HashMap<String, Sandbox>,
    by_cgroup: HashMap<u64, String>,
    uids: HashMap<u32, Uid>,
    next_conn: u64,
    /// The daemon-wide budget of denial log lines.
    all_logs: DenialBudget,
}

struct Daemon {
    inner: Mutex<Inner>,
    /// The shared event ring, drained by the pump when it is readable and
    /// by `end` before a sandbox's routing goes (so no event of an ending
    /// sandbox is left unread). Locked before `inner`.
    ring: Mutex<Option<aya::maps::RingBuf<aya::maps::MapData>>>,
    started: Instant,
    opts: Options,
    records: PathBuf,
    name_rel: String,
    metrics: Metrics,
}

impl Daemon {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock is a bug; keep serving with the
        // state as it is rather than wedging every client.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs the daemon until SIGTERM/SIGINT (sandboxes stay confined and are
/// taken over by the next start).
pub async fn run(opts: Options) -> Result<(), DaemonError> {
    let build = match &opts.build_salt {
        Some(salt) => format!("{}-{salt}", shared::build_id()),
        None => shared::build_id(),
    };
    let shared = shared::open(&opts.name, &build)?;
    let records_dir = records::dir(&opts.state_dir)?;
    let listener = listen(&opts.socket)?;
    let metrics_unix = match &opts.metrics_socket {
        Some((path, mode)) => Some(metrics::bind_unix(path, *mode)?),
        None => None,
    };
    let metrics_tcp = match opts.metrics_listen {
        Some(addr) => Some(metrics::bind_tcp(addr).await?),
        None => None,
    };
    // The build the pins belong to (with a salt, another build: tests).
    let build_id = build;
    tracing::info!(
        build_id = %build_id,
        took_over = shared.took_over,
        "{} ({}), parent cgroup {}, pins {}",
        if shared.took_over {
            "took over the pinned programs".to_string()
        } else if shared.migrated > 0 {
            format!(
                "programs loaded and verified in {} ms; took over {} sandbox(es) from another build",
                shared.load_ms, shared.migrated
            )
        } else {
            format!("programs loaded and verified in {} ms", shared.load_ms)
        },
        build_id,
        shared.parent.display(),
        shared.pin_dir.display()
    );
    if cgroup::favors_dynmods() == Some(false) {
        tracing::info!(
            "note: cgroup2 is mounted without favordynmods: each sandbox \
             start waits an RCU grace period (~5-15 ms) to move its process in; remounting \
             cgroup2 with favordynmods removes that wait (forks and exits cost slightly more)"
        );
    }
    let name_rel = format!("/{}", opts.name);
    let d = Arc::new(Daemon {
        inner: Mutex::new(Inner {
            shared,
            sandboxes: HashMap::new(),
            by_cgroup: HashMap::new(),
            uids: HashMap::new(),
            next_conn: 1,
            all_logs: DenialBudget::default(),
        }),
        ring: Mutex::new(None),
        started: Instant::now(),
        records: records_dir,
        opts,
        name_rel,
        metrics: Metrics::new(&build_id),
    });
    take_over(&d).await;
    let render: metrics::Render = {
        let d = d.clone();
        Arc::new(move || {
            let ring = {
                let g = d.lock();
                g.shared
                    .dropped
                    .get(&0, 0)
                    .map(|v| v.iter().sum::<u64>())
                    .unwrap_or(0)
            };
            d.metrics.ring_dropped(ring);
            d.metrics.render()
        })
    };
    if let Some(l) = metrics_unix {
        tokio::spawn(metrics::serve_unix(l, render.clone()));
    }
    if let Some(l) = metrics_tcp {
        tokio::spawn(metrics::serve_tcp(l, render));
    }
    let ready = {
        let mut g = d.lock();
        let ring = g.shared.events.take().ok_or_else(|| {
            DaemonError::Ring(std::io::Error::other("the event ring was taken already"))
        })?;
        // Readiness is watched on a duplicate of the ring's descriptor (same
        // open file), so the ring itself can sit behind a lock that `end`
        // takes too.
        use std::os::fd::AsFd as _;
        let dup = ring
            .as_fd()
            .try_clone_to_owned()
            .map_err(DaemonError::Ring)?;
        *d.ring.lock().unwrap_or_else(|p| p.into_inner()) = Some(ring);
        // SAFETY: the duplicate is owned by the AsyncFd and stays open and
        // unchanged until it is dropped.
        unsafe { AsyncFd::register_with_interest(dup, tokio::io::Interest::READABLE) }
            .map_err(|e| DaemonError::Ring(e.into_parts().1))?
    };
    tokio::spawn(pump_events(d.clone(), ready));
    tokio::spawn(watch_orphans(d.clone()));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| DaemonError::Listen {
            path: d.opts.socket.clone(),
            source,
        })?;
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => { tokio::spawn(serve(d.clone(), s)); }
                Err(e) => tracing::warn!("accept: {e}"),
            },
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("stopping; running sandboxes stay confined");
    Ok(())
}

/// The listening socket: systemd's (socket activation), or our own.
fn listen(path: &Path) -> Result<UnixListener, DaemonError> {
    let err = |source| DaemonError::Listen {
        path: path.to_path_buf(),
        source,
    };
    if let Some(l) = activated() {
        l.set_nonblocking(true).map_err(err)?;
        return UnixListener::from_std(l).map_err(err);
    }
    if let Some(dir) = path.parent() {
        crate::util::ensure_dir(dir, Some(0o755)).map_err(|e| err(std::io::Error::other(e)))?;
        if dir == Path::new(crate::sandbox::registry::STATE_DIR) {
            // Older builds made it 0700, which locks every user out of the
            // socket; it holds nothing secret (records are in 0700 subdirs).
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(err)?;
        }
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(DaemonError::Running(path.to_path_buf()));
    }
    let _ = std::fs::remove_file(path);
    let l = std::os::unix::net::UnixListener::bind(path).map_err(err)?;
    // Any local user may ask (a sandbox only ever takes rights away); the
    // directory is root's, so nobody can replace the socket.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(err)?;
    l.set_nonblocking(true).map_err(err)?;
    UnixListener::from_std(l).map_err(err)
}

/// The socket systemd passed (`LISTEN_FDS`, fd 3), if it is for us.
fn activated() -> Option<std::os::unix::net::UnixListener> {
    use std::os::fd::FromRawFd as _;
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.parse().ok()?;
    let n: u32 = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    if pid != std::process::id() || n < 1 {
        return None;
    }
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    // SAFETY: systemd passed fd 3 as a listening socket for this process.
    Some(unsafe { std::os::unix::net::UnixListener::from_raw_fd(3) })
}

/// Reads denial records from the shared ring and hands each to the
/// connection owning the sandbox it names.
async fn pump_events(d: Arc<Daemon>, ready: AsyncFd<std::os::fd::OwnedFd>) {
    loop {
        let Ok(mut guard) = ready.readable().await else {
            return;
        };
        let to_log = drain_ring(&d);
        guard.clear_ready();
        for (id, uid, ev, suppressed) in to_log {
            log_denial(&id, uid, &ev, suppressed);
        }
    }
}

/// A denial to log once the locks are released (a slow journal must not
/// stall every client).
type ToLog = (String, u32, nono_common::DenyEvent, u64);

/// Reads every record waiting in the shared ring and hands each to the
/// connection owning the sandbox it names; returns the lines to log.
fn drain_ring(d: &Daemon) -> Vec<ToLog> {
    let mut to_log = Vec::new();
    let mut ring = d.ring.lock().unwrap_or_else(|p| p.into_inner());
    let Some(ring) = ring.as_mut() else {
        return to_log;
    };
    let mut g = d.lock();
    let inner = &mut *g;
    let now = Instant::now();
    while let Some(item) = ring.next() {
        let raw: &[u8] = &item;
        d.metrics.denial(raw);
        let Some(cg) = raw.get(8..16).and_then(|b| b.try_into().ok()) else {
            continue;
        };
        let cg = u64::from_ne_bytes(cg);
        let Some(id) = inner.by_cgroup.get(&cg) else {
            continue;
        };
        if let Some(sb) = inner.sandboxes.get_mut(id) {
            // Both budgets: this sandbox's, then the daemon's (a refusal by
            // the latter is counted on the sandbox too).
            let logged = sb.log_budget.take(now, log::DENIAL_LOGS_PER_SEC)
                && (inner.all_logs.take(now, log::DENIAL_LOGS_PER_SEC_TOTAL) || {
                    sb.log_budget.suppressed += 1;
                    false
                });
            if let (true, Some(ev)) = (logged, crate::events::parse(raw)) {
                let suppressed = std::mem::take(&mut sb.log_budget.suppressed);
                to_log.push((id.clone(), sb.rec.uid, ev, suppressed));
            } else {
                d.metrics.log_suppressed();
            }
            match &sb.events {
                Some(tx) if tx.try_send(raw.to_vec()).is_ok() => {}
                _ => {
                    sb.dropped += 1;
                    d.metrics.queue_dropped();
                }
            }
        }
    }
    to_log
}

/// One denial to the log (its fields; the destination only for the hooks
/// that have one).
fn log_denial(id: &str, uid: u32, ev: &nono_common::DenyEvent, suppressed: u64) {
    use nono_common::{Hook, Reason};
    let hook = Hook::from_u32(ev.hook);
    let reason = Reason::from_u32(ev.reason)
        .map(Reason::name)
        .unwrap_or("unknown");
    let has_dest = !matches!(hook, Some(Hook::SockCreate) | Some(Hook::Setsockopt) | None);
    let hook = hook.map(Hook::name).unwrap_or("unknown");
    let dest = has_dest.then(|| {
        let a = crate::events::addr_string(&ev.addr);
        if a.contains(':') {
            format!("[{a}]:{}", ev.port)
        } else {
            format!("{a}:{}", ev.port)
        }
    });
    let (verdict, verb) = if ev.verdict == nono_common::EVENT_WOULD_DENY {
        ("would-deny", "would deny (audit)")
    } else {
        ("deny", "denied")
    };
    tracing::info!(
        event = "denied",
        sandbox = id,
        uid,
        verdict,
        hook,
        reason,
        dest = dest.as_deref().unwrap_or("-"),
        suppressed,
        "sandbox {id}: {verb} {hook} {} ({reason})",
        dest.as_deref().unwrap_or("-")
    );
}

/// Sandboxes without a connection (after a restart) end when their owner
/// process does.
async fn watch_orphans(d: Arc<Daemon>) {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let dead: Vec<String> = {
            let g = d.lock();
            g.sandboxes
                .iter()
                .filter(|(_, s)| s.conn.is_none())
                .filter(|(_, s)| match &s.owner {
                    Some(fd) => !process::running(fd.as_fd()),
                    None => true,
                })
                .map(|(id, _)| id.clone())
                .collect()
        };
        for id in dead {
            end(&d, &id, EndReason::OwnerDied).await;
        }
    }
}

/// After a restart: keep the sandboxes whose owner still runs (until it
/// resumes or exits), end the others, and remove whatever no record
/// explains (map entries, cgroups).
async fn take_over(d: &Arc<Daemon>) {
    let (recs, bad) = records::load_all(&d.records);
    for b in bad {
        tracing::warn!("removing unreadable record {}", b.display());
        let _ = std::fs::remove_file(b);
    }
    let mut ended = Vec::new();
    {
        let mut g = d.lock();
        let root = g.shared.cgroup_root.clone();
        for rec in recs {
            let dir = process::cgroup_dir(&root, &rec.cgroup);
            let owner = process::pidfd_open(rec.owner_pid).ok().filter(|fd| {
                process::info(fd.as_fd())
                    .map(|i| i.start_time == rec.owner_start && i.uids[0] == rec.uid)
                    .unwrap_or(false)
            });
            let alive = owner.is_some() && cgroup::id_of(&dir).ok() == Some(rec.cgroup_id);
            g.by_cgroup.insert(rec.cgroup_id, rec.id.clone());
            let id = rec.id.clone();
            // Denials made while no daemon ran wait in the kernel ring; they
            // are kept here until the owner resumes.
            let (tx, rx) = mpsc::channel(EVENT_QUEUE);
            g.sandboxes.insert(
                id.clone(),
                Sandbox {
                    rec,
                    dir,
                    conn: None,
                    events: Some(tx),
                    pending: Some(rx),
                    dropped: 0,
                    owner,
                    log_budget: DenialBudget::default(),
                },
            );
            if !alive {
                ended.push(id);
            }
        }
    }
    d.metrics.set_active(d.lock().sandboxes.len());
    for id in ended {
        end(d, &id, EndReason::Takeover).await;
    }
    // Entries and cgroups no live record explains.
    let (parent, orphans) = {
        let mut g = d.lock();
        let known: Vec<u64> = g.sandboxes.values().map(|s| s.rec.cgroup_id).collect();
        for cg in g.shared.maps.cgroups() {
            if !known.contains(&cg) {
                g.shared.maps.remove_all_of(cg);
            }
        }
        let dirs: Vec<PathBuf> = g.sandboxes.values().map(|s| s.dir.clone()).collect();
        (g.shared.parent.clone(), dirs)
    };
    let _ = tokio::task::spawn_blocking(move || remove_unknown_cgroups(&parent, &orphans)).await;
}

/// Kills and removes cgroups under `dir` that belong to no live sandbox
/// (a creation interrupted by a crash).
fn remove_unknown_cgroups(dir: &Path, known: &[PathBuf]) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let p = e.path();
        if !p.is_dir() {
            continue;
        }
        if known.contains(&p) {
            remove_unknown_cgroups(&p, known);
            continue;
        }
        let cg = cgroup::Cgroup::existing(p.clone());
        if let Err(e) = cg.destroy(Duration::from_secs(10), || cgroup::Sockets::Destroy) {
            tracing::warn!(
                "removing stray cgroup {}: {}",
                p.display(),
                crate::util::chain(&e)
            );
        }
    }
}

/// Ends a sandbox and every sandbox nested in it: entries removed first (so
/// anything still running there is denied everything), then its processes
/// killed and its sockets destroyed, then its cgroup and record removed.
async fn end(d: &Arc<Daemon>, id: &str, why: EndReason) -> u64 {
    let (dropped, cleanup) = detach(d, id, why);
    let _ = cleanup.await;
    dropped
}

/// The part of [`end`] that must happen before its owner is answered: the
/// last events drained and every policy entry removed, after which nothing
/// in the sandbox's cgroups can reach anything (a cgroup under the parent
/// without an entry is denied everything). Returns the owner's count of
/// dropped events and the rest of the work (kill, sockets destroyed, cgroups
/// and records removed) as a task already running: an `End` request is
/// answered without waiting for it (its client is on the command's exit
/// path), the other callers wait. If the daemon stops before it is done, the
/// record is still there and the next daemon ends the sandbox again.
fn detach(d: &Arc<Daemon>, id: &str, why: EndReason) -> (u64, tokio::task::JoinHandle<()>) {
    // What the kernel wrote for this sandbox and nobody read yet goes to
    // its owner before its routing is removed.
    for (sid, uid, ev, suppressed) in drain_ring(d) {
        log_denial(&sid, uid, &ev, suppressed);
    }
    // Deepest first, so every cgroup is empty of children when removed.
    let mut suppressed = Vec::new();
    let victims: Vec<(Record, PathBuf, bool, u64)> = {
        let mut g = d.lock();
        let mut ids = vec![id.to_string()];
        let mut i = 0;
        while i < ids.len() {
            let cur = ids[i].clone();
            for (k, s) in &g.sandboxes {
                if s.rec.parent.as_deref() == Some(cur.as_str()) && !ids.contains(k) {
                    ids.push(k.clone());
                }
            }
            i += 1;
        }
        let mut out = Vec::new();
        for k in ids.iter().rev() {
            if let Some(sb) = g.sandboxes.remove(k) {
                g.by_cgroup.remove(&sb.rec.cgroup_id);
                let sockets = g.shared.maps.sockets_created(sb.rec.cgroup_id) != Some(0);
                let policy = sb.rec.kernel_policy();
                g.shared.maps.remove(sb.rec.cgroup_id, &policy);
                suppressed.push(sb.log_budget.suppressed);
                g.uids.entry(sb.rec.uid).or_default().ending += 1;
                out.push((sb.rec, sb.dir, sockets, sb.dropped));
            }
        }
        d.metrics.ended(why, out.len() as u64);
        d.metrics.set_active(g.sandboxes.len());
        out
    };
    for (v, suppressed) in victims.iter().zip(suppressed) {
        tracing::info!(
            event = "ended",
            sandbox = v.0.id,
            uid = v.0.uid,
            why = why.name(),
            dropped = v.3,
            suppressed,
            "sandbox {} of uid {} ended ({})",
            v.0.id,
            v.0.uid,
            why.name()
        );
    }
    let records_dir = d.records.clone();
    let dropped = victims
        .iter()
        .find(|v| v.0.id == id)
        .map(|v| v.3)
        .unwrap_or(0);
    let daemon = d.clone();
    let cleanup = tokio::task::spawn_blocking(move || {
        for (rec, dir, sockets, _) in victims {
            let cg = cgroup::Cgroup::existing(dir);
            let choice = if sockets {
                cgroup::Sockets::Destroy
            } else {
                cgroup::Sockets::Keep
            };
            if let Err(e) = cg.destroy(Duration::from_secs(10), || choice) {
                tracing::warn!(
                    sandbox = rec.id,
                    "sandbox {}: {}",
                    rec.id,
                    crate::util::chain(&e)
                );
            }
            let _ = records::remove(&records_dir, &rec.id);
            if let Some(u) = daemon.lock().uids.get_mut(&rec.uid) {
                u.ending = u.ending.saturating_sub(1);
            }
        }
    });
    (dropped, cleanup)
}

/// One client connection.
async fn serve(d: Arc<Daemon>, mut sock: UnixStream) {
    let peer = match process::peer(sock.as_fd()) {
        Ok(p) => p,
        Err(e) => {
            let _ = conn::send(&mut sock, &error(&e)).await;
            return;
        }
    };
    let limit = d.opts.limits.connections_per_uid;
    let conn_id = {
        let mut g = d.lock();
        let u = g.uids.entry(peer.uid).or_default();
        if u.connections >= limit {
            None
        } else {
            u.connections += 1;
            g.next_conn += 1;
            Some(g.next_conn)
        }
    };
    let Some(conn_id) = conn_id else {
        let _ = conn::send(
            &mut sock,
            &Reply::Error {
                message: format!("uid {} has {limit} connections open already", peer.uid),
            },
        )
        .await;
        return;
    };
    let mut session = Session {
        d: d.clone(),
        peer,
        conn: conn_id,
        owned: None,
        events_rx: None,
        requests: 0,
        lookups: false,
        lookup_tokens: (2.0 * LOOKUP_RATE, Instant::now()),
    };
    session.run(&mut sock).await;
    if let Some(id) = session.owned.take() {
        end(&d, &id, EndReason::ClientGone).await;
    }
    let mut g = d.lock();
    if let Some(u) = g.uids.get_mut(&session.peer.uid) {
        u.connections = u.connections.saturating_sub(1);
    }
}

/// Events queued per sandbox before they count as dropped.
const EVENT_QUEUE: usize = 4096;

/// A connection before it owns a sandbox must make its first request soon.
const IDLE_WITHOUT_SANDBOX: Duration = Duration::from_secs(30);

struct Session {
    d: Arc<Daemon>,
    peer: Peer,
    conn: u64,
    owned: Option<String>,
    events_rx: Option<mpsc::Receiver<Vec<u8>>>,
    /// Requests this connection has made (see [`FREE_AFTER_FIRST`]).
    requests: u32,
    /// The connection answered a `Lookup` with a valid token: from then on
    /// it may only make lookups, which are not charged to the rate (a
    /// transparent sandbox asks once per redirected connection; each is a
    /// map read) but to the connection's own, higher one ([`LOOKUP_RATE`]).
    lookups: bool,
    /// Lookup tokens left and when they were last refilled.
    lookup_tokens: (f64, Instant),
}

/// Lookups per second one lookup connection may make (bursts of twice
/// that): far above what a sandbox opening connections needs, low enough
/// that the owner of a sandbox cannot keep the daemon's lock busy.
const LOOKUP_RATE: f64 = 5000.0;

/// Requests a connection makes after its first without being charged to
/// its uid's rate: one `exec`'s whole exchange (create, place, resume, end,
/// a status) costs one token, so the rate is about sandboxes per second,
/// not messages; a connection that goes on asking pays for every request
/// past these.
const FREE_AFTER_FIRST: u32 = 6;

impl Session {
    async fn run(&mut self, sock: &mut UnixStream) {
        let mut reader = conn::Reader::default();
        loop {
            let idle = if self.owned.is_some() {
                Duration::from_secs(u64::MAX / 4)
            } else {
                IDLE_WITHOUT_SANDBOX
            };
            let frame = tokio::select! {
                f = tokio::time::timeout(idle, reader.next(sock)) => match f {
                    Ok(f) => f,
                    Err(_) => return,
                },
                Some(raw) = async { self.events_rx.as_mut()?.recv().await }, if self.events_rx.is_some() => {
                    if conn::send(sock, &Reply::Event { raw }).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let (payload, fds) = match frame {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(e) => {
                    // Malformed, oversized, truncated or slow: say why and
                    // close; the daemon goes on serving others.
                    let _ = conn::send(sock, &error(&e)).await;
                    if matches!(
                        e,
                        ConnError::Protocol(_) | ConnError::Slow | ConnError::Truncated
                    ) {
                        return;
                    }
                    return;
                }
            };
            let allowed = if self.lookups {
                self.lookup_ok()
            } else {
                self.rate_ok()
            };
            if !allowed {
                // Not decoded (that is the point of refusing early).
                self.d.metrics.request("unknown", false, Duration::ZERO);
                let _ = conn::send(
                    sock,
                    &Reply::Error {
                        message: "too many requests from this uid; slow down".into(),
                    },
                )
                .await;
                continue;
            }
            let reply = match protocol::decode::<Request>(&payload) {
                Ok(req) if self.lookups && !matches!(req, Request::Lookup { .. }) => {
                    let _ = conn::send(
                        sock,
                        &Reply::Error {
                            message: "a lookup connection makes lookups only".into(),
                        },
                    )
                    .await;
                    return;
                }
                Ok(req) => {
                    let fds = if matches!(req, Request::Place) {
                        fds
                    } else {
                        reader.requeue(fds);
                        Vec::new()
                    };
                    self.handle(req, fds).await
                }
                Err(e) => {
                    self.d.metrics.request("unknown", false, Duration::ZERO);
                    let _ = conn::send(sock, &error(&e)).await;
                    return;
                }
            };
            let ended = matches!(reply, Reply::Ended { .. });
            if ended {
                // The sandbox's last events (drained by `end`) go before the
                // answer, which is the client's last frame.
                if let Some(rx) = self.events_rx.as_mut() {
                    while let Ok(raw) = rx.try_recv() {
                        if conn::send(sock, &Reply::Event { raw }).await.is_err() {
                            return;
                        }
                    }
                }
            }
            if conn::send(sock, &reply).await.is_err() {
                return;
            }
            if ended {
                return;
            }
        }
    }

    fn lookup_ok(&mut self) -> bool {
        let (tokens, last) = self.lookup_tokens;
        let now = Instant::now();
        let tokens =
            (tokens + now.duration_since(last).as_secs_f64() * LOOKUP_RATE).min(2.0 * LOOKUP_RATE);
        if tokens < 1.0 {
            self.lookup_tokens = (tokens, now);
            return false;
        }
        self.lookup_tokens = (tokens - 1.0, now);
        true
    }

    fn rate_ok(&mut self) -> bool {
        self.requests = self.requests.saturating_add(1);
        if (2..=FREE_AFTER_FIRST + 1).contains(&self.requests) {
            return true;
        }
        let rate = f64::from(self.d.opts.limits.requests_per_sec);
        let mut g = self.d.lock();
        let u = g.uids.entry(self.peer.uid).or_default();
        let now = Instant::now();
        let last = u.refill.replace(now);
        u.tokens = match last {
            None => 2.0 * rate,
            Some(t) => (u.tokens + now.duration_since(t).as_secs_f64() * rate).min(2.0 * rate),
        };
        if u.tokens < 1.0 {
            return false;
        }
        u.tokens -= 1.0;
        true
    }

    async fn handle(&mut self, req: Request, fds: Vec<OwnedFd>) -> Reply {
        let t0 = Instant::now();
        let kind = match &req {
            Request::Status => "status",
            Request::Create { .. } => "create",
            Request::Place => "place",
            Request::Resume { .. } => "resume",
            Request::End => "end",
            Request::Lookup { .. } => "lookup",
        };
        let r = match req {
            Request::Status => Ok(self.status()),
            Request::Create { id, policy } => self.create(id, policy).await,
            Request::Place => self.place(fds).await,
            Request::Resume { id, token } => self.resume(&id, &token),
            Request::Lookup { id, token, cookie } => self.lookup(&id, &token, cookie),
            Request::End => match self.owned.take() {
                Some(id) => {
                    // The cleanup goes on after the answer (see detach).
                    let (dropped, _cleanup) = detach(&self.d, &id, EndReason::End);
                    Ok(Reply::Ended { dropped })
                }
                None => Err("this connection has no sandbox to end".to_string()),
            },
        };
        self.d.metrics.request(kind, r.is_ok(), t0.elapsed());
        r.unwrap_or_else(|message| Reply::Error { message })
    }

    fn status(&self) -> Reply {
        let g = self.d.lock();
        Reply::Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_secs: self.d.started.elapsed().as_secs(),
            sandboxes: g.sandboxes.len(),
            policy_entries: g.shared.maps.cgroups().len(),
        }
    }

    async fn create(&mut self, id: String, wire: protocol::WirePolicy) -> Result<Reply, String> {
        if self.owned.is_some() {
            return Err("this connection owns a sandbox already".into());
        }
        if !registry::is_id(&id) {
            return Err(format!("{id:?} is not a sandbox id (16 hex digits)"));
        }
        policy::check(&wire).map_err(|e| e.to_string())?;
        let me = process::info(self.peer.pidfd.as_fd()).map_err(|e| e.to_string())?;
        let token = nono_proxy::new_secret().map_err(|e| e.to_string())?;
        let (rec, dir, nested) = {
            let mut g = self.d.lock();
            // Ids name sandboxes in the table, the records and the events;
            // a nested sandbox's directory differs from a top-level one's,
            // so the directory alone does not make an id unique.
            if g.sandboxes.contains_key(&id) {
                return Err(format!("sandbox id {id} is taken"));
            }
            let uid = self.peer.uid;
            let mine = g.sandboxes.values().filter(|s| s.rec.uid == uid).count()
                + g.uids.get(&uid).map_or(0, |u| u.ending);
            if mine >= self.d.opts.limits.sandboxes_per_uid {
                return Err(format!(
                    "uid {uid} has {mine} sandboxes already (limit {})",
                    self.d.opts.limits.sandboxes_per_uid
                ));
            }
            if g.sandboxes.len() >= MAX_SANDBOXES - 1 {
                return Err("the daemon is at its capacity of sandboxes".into());
            }
            let entries = |w: &protocol::WirePolicy| w.proxies.len() + w.loopback_ports.len();
            let used: usize = g
                .sandboxes
                .values()
                .filter(|s| s.rec.uid == uid)
                .map(|s| entries(&s.rec.policy))
                .sum();
            let limit = self.d.opts.limits.entries_per_uid;
            if used + entries(&wire) > limit {
                return Err(format!(
                    "uid {uid} holds {used} proxy/port entries in the daemon's maps; this policy \
                     needs {} more (limit {limit})",
                    entries(&wire)
                ));
            }
            let requested = policy::to_kernel(&wire);
            // Where the caller is decides where the sandbox goes.
            let (outer, base): (Option<(String, Policy)>, PathBuf) =
                match self.placement_of(&g, &me.cgroup)? {
                    Some((oid, pol, dir)) => (Some((oid, pol)), dir),
                    None => (None, g.shared.parent.clone()),
                };
            let effective = match &outer {
                Some((_, o)) => requested.intersect(o),
                None => requested,
            };
            let dir = base.join(&id);
            std::fs::create_dir(&dir)
                .map_err(|e| format!("creating the sandbox cgroup {}: {e}", dir.display()))?;
            let cgroup_id = match cgroup::id_of(&dir) {
                Ok(c) => c,
                Err(e) => {
                    let _ = std::fs::remove_dir(&dir);
                    return Err(crate::util::chain(&e));
                }
            };
            let rel = format!(
                "/{}",
                dir.strip_prefix(&g.shared.cgroup_root)
                    .unwrap_or(&dir)
                    .display()
            );
            let rec = Record {
                id: id.clone(),
                cgroup: rel,
                cgroup_id,
                uid,
                owner_pid: self.peer.pid,
                owner_start: me.start_time,
                token: token.clone(),
                policy: policy::to_wire(&effective),
                parent: outer.as_ref().map(|(o, _)| o.clone()),
            };
            if let Err(e) = records::write(&self.d.records, &rec) {
                let _ = std::fs::remove_dir(&dir);
                return Err(crate::util::chain(&e));
            }
            if let Err(e) = g.shared.maps.insert(cgroup_id, &effective) {
                let _ = records::remove(&self.d.records, &id);
                let _ = std::fs::remove_dir(&dir);
                return Err(crate::util::chain(&e));
            }
            let (tx, rx) = mpsc::channel(EVENT_QUEUE);
            self.events_rx = Some(rx);
            g.by_cgroup.insert(cgroup_id, id.clone());
            g.sandboxes.insert(
                id.clone(),
                Sandbox {
                    rec: rec.clone(),
                    dir: dir.clone(),
                    conn: Some(self.conn),
                    events: Some(tx),
                    pending: None,
                    dropped: 0,
                    owner: None,
                    log_budget: DenialBudget::default(),
                },
            );
            self.d.metrics.started();
            self.d.metrics.set_active(g.sandboxes.len());
            (rec, dir, outer.is_some())
        };
        tracing::info!(
            event = "created",
            sandbox = id,
            uid = rec.uid,
            nested,
            "sandbox {id} created for uid {} (pid {}){}",
            rec.uid,
            rec.owner_pid,
            if nested { ", nested" } else { "" }
        );
        self.owned = Some(id);
        Ok(Reply::Created {
            cgroup: dir.display().to_string(),
            nested,
            token: rec.token,
        })
    }

    /// For a caller inside a daemon sandbox: that sandbox (id, policy,
    /// directory), under which a new one nests. Callers in sandboxes this
    /// daemon does not know are refused.
    fn placement_of(
        &self,
        g: &Inner,
        cgroup_rel: &str,
    ) -> Result<Option<(String, Policy, PathBuf)>, String> {
        let under_daemon = cgroup_rel == self.d.name_rel
            || cgroup_rel.starts_with(&format!("{}/", self.d.name_rel));
        if under_daemon {
            return g
                .sandboxes
                .values()
                .find(|s| s.rec.cgroup == cgroup_rel)
                .map(|s| Some((s.rec.id.clone(), s.rec.kernel_policy(), s.dir.clone())))
                .ok_or_else(|| {
                    format!("the caller's cgroup {cgroup_rel} is not a live sandbox of this daemon")
                });
        }
        let direct = format!("/{}/", cgroup::PARENT);
        if cgroup_rel.starts_with(&direct) {
            return Err(format!(
                "the caller runs in a sandbox started by `exec` as root ({cgroup_rel}); \
                 the daemon cannot nest a sandbox in it"
            ));
        }
        Ok(None)
    }

    async fn place(&mut self, mut fds: Vec<OwnedFd>) -> Result<Reply, String> {
        let Some(id) = self.owned.clone() else {
            return Err("create a sandbox before placing a process in it".into());
        };
        if fds.len() != 1 {
            return Err(format!(
                "place needs exactly one pidfd with the request, got {}",
                fds.len()
            ));
        }
        let child = fds.remove(0);
        let (dir, rel) = {
            let g = self.d.lock();
            let sb = g.sandboxes.get(&id).ok_or("the sandbox is gone")?;
            (sb.dir.clone(), sb.rec.cgroup.clone())
        };
        let my_cgroup = process::cgroup(self.peer.pidfd.as_fd()).map_err(|e| e.to_string())?;
        let peer = Peer {
            pid: self.peer.pid,
            uid: self.peer.uid,
            gid: self.peer.gid,
            pidfd: self
                .peer
                .pidfd
                .try_clone()
                .map_err(|e| format!("duplicating the peer's pidfd: {e}"))?,
        };
        place::place(child, peer, my_cgroup, dir, rel)
            .await
            .map_err(|e| crate::util::chain(&e))?;
        tracing::info!(
            event = "placed",
            sandbox = id,
            uid = self.peer.uid,
            "sandbox {id}: uid {}'s child placed",
            self.peer.uid
        );
        Ok(Reply::Placed)
    }

    /// Transparent mode: the record of a redirected socket, for the owner
    /// of the sandbox that made it (checked by token and uid, and the
    /// record must name that sandbox's cgroup: a cookie of another
    /// sandbox's socket gets nothing).
    fn lookup(&mut self, id: &str, token: &str, cookie: u64) -> Result<Reply, String> {
        if self.owned.is_some() {
            return Err("lookups are made on a connection of their own".into());
        }
        let g = self.d.lock();
        let refused = || format!("no sandbox {id} of uid {}", self.peer.uid);
        let sb = g.sandboxes.get(id).ok_or_else(refused)?;
        if sb.rec.uid != self.peer.uid || !constant_time_eq(&sb.rec.token, token) {
            return Err(refused());
        }
        self.lookups = true;
        let dialled = g
            .shared
            .originals
            .get(&cookie, 0)
            .ok()
            .filter(|o| o.cgroup == sb.rec.cgroup_id)
            .map(|o| (o.addr, o.port));
        Ok(Reply::Original { dialled })
    }

    fn resume(&mut self, id: &str, token: &str) -> Result<Reply, String> {
        if self.owned.is_some() {
            return Err("this connection owns a sandbox already".into());
        }
        let mut g = self.d.lock();
        let refused = || format!("no sandbox {id} of uid {} awaits its owner", self.peer.uid);
        let sb = g.sandboxes.get_mut(id).ok_or_else(refused)?;
        if sb.rec.uid != self.peer.uid
            || sb.conn.is_some()
            || !constant_time_eq(&sb.rec.token, token)
        {
            return Err(refused());
        }
        let rx = match (sb.pending.take(), sb.events.is_some()) {
            (Some(rx), true) => rx,
            _ => {
                let (tx, rx) = mpsc::channel(EVENT_QUEUE);
                sb.events = Some(tx);
                rx
            }
        };
        sb.conn = Some(self.conn);
        sb.owner = None;
        self.events_rx = Some(rx);
        self.owned = Some(id.to_string());
        Ok(Reply::Resumed)
    }
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn error(e: &(dyn std::error::Error + 'static)) -> Reply {
    Reply::Error {
        message: crate::util::chain(e),
    }
}
