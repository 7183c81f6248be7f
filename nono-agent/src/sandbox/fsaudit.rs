//! Filesystem denials, as the kernel reports them: Landlock (ABI 7) writes
//! an audit record for each access its domain refuses, when the domain was
//! created with `LANDLOCK_RESTRICT_SELF_LOG_NEW_EXEC_ON` and the kernel's
//! audit subsystem is on. The agent reads them from the audit netlink
//! socket's read-only multicast group (`AUDIT_NLGRP_READLOG`: no need to be,
//! or to displace, the audit daemon), keeps those of its own sandbox's
//! domain (the `LANDLOCK_DOMAIN` record names the process that created the
//! domain: the sandbox's first process), and turns each into an event line.
//!
//! Where this is not available (not root, audit off, Landlock ABI < 7, an
//! agent outside the initial network namespace, where the kernel never
//! multicasts audit records), [`Listener::open`] says why, and the summary
//! says filesystem denials are not reported rather than counting none.
//!
//! The command is hostile and names the paths: they are kept as data
//! (escaped in notices, JSON-encoded in events), and only records of our
//! own domain are kept, so memory does not grow with what other processes
//! do. A flood of denials is bounded by the kernel (its rate and backlog
//! limits drop records, which then reach nobody: the kernel counts them,
//! and a count that grew during the run makes the summary say denials may
//! be missing) and by the socket's buffer (an overflow is noticed and
//! reported the same way).

use serde::Serialize;
use std::collections::{HashSet, VecDeque};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::events::{EventTx, Line};

const NETLINK_AUDIT: libc::c_int = 9;
const AUDIT_GET: u16 = 1000;
const AUDIT_USER: u16 = 1005;
const AUDIT_NLGRP_READLOG: u32 = 1;
/// `AUDIT_LANDLOCK_ACCESS`: one denied access.
pub const AUDIT_LANDLOCK_ACCESS: u16 = 1423;
/// `AUDIT_LANDLOCK_DOMAIN`: a domain's creator (logged with its first
/// denial) or its end.
pub const AUDIT_LANDLOCK_DOMAIN: u16 = 1424;
const NLMSG_HDRLEN: usize = 16;
/// Denials of domains not yet known to be ours or not, kept until their
/// domain record arrives (other sandboxes' first denials pass through too).
const MAX_PENDING: usize = 256;

/// One audit record this module cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// `domain=ID status=allocated ... pid=PID`: who created domain ID.
    Domain {
        /// The domain id.
        id: u64,
        /// The creating process (global pid).
        pid: i32,
    },
    /// `domain=ID blockers=... path="..."` (or `name="..."`).
    Access {
        /// The denying domain.
        id: u64,
        /// The rights that were missing (`fs.write_file,fs.make_reg`).
        blockers: String,
        /// The path (or, for a file being created, its name).
        path: Option<String>,
    },
    /// Any other record carrying `text` (the fence).
    Other,
}

/// The value of `key=` in an audit record: a quoted string, a hex-encoded
/// string (what the kernel writes for strings with spaces, quotes or
/// control characters), or a bare token.
pub fn field(text: &str, key: &str) -> Option<String> {
    let mut rest = text;
    loop {
        let at = rest.find(key)?;
        let before_ok = at == 0 || rest.as_bytes()[at - 1] == b' ';
        let after = &rest[at + key.len()..];
        if before_ok && after.starts_with('=') {
            let v = &after[1..];
            if let Some(q) = v.strip_prefix('"') {
                return q.find('"').map(|end| q[..end].to_string());
            }
            let tok = v.split(' ').next().unwrap_or("");
            return Some(tok.to_string());
        }
        rest = after;
    }
}

/// `field` for an untrusted string the kernel may have hex-encoded.
pub fn string_field(text: &str, key: &str) -> Option<String> {
    let quoted = {
        let k = format!("{key}=\"");
        text.split(' ').any(|t| t.starts_with(&k))
    };
    let v = field(text, key)?;
    if quoted || v.len() % 2 != 0 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Some(v);
    }
    let bytes: Option<Vec<u8>> = (0..v.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&v[i..i + 2], 16).ok())
        .collect();
    bytes.map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Parses one record's text (after the netlink header) of type `ty`.
pub fn parse(ty: u16, text: &str) -> Record {
    let id = || u64::from_str_radix(&field(text, "domain")?, 16).ok();
    match ty {
        AUDIT_LANDLOCK_DOMAIN if field(text, "status").as_deref() == Some("allocated") => {
            match (id(), field(text, "pid").and_then(|p| p.parse().ok())) {
                (Some(id), Some(pid)) => Record::Domain { id, pid },
                _ => Record::Other,
            }
        }
        AUDIT_LANDLOCK_ACCESS => match id() {
            Some(id) => Record::Access {
                id,
                blockers: field(text, "blockers").unwrap_or_default(),
                path: string_field(text, "path").or_else(|| string_field(text, "name")),
            },
            None => Record::Other,
        },
        _ => Record::Other,
    }
}

/// A filesystem denial as written to `--events`.
#[derive(Debug, Serialize)]
struct FsEvent<'a> {
    ts: String,
    sandbox: &'a str,
    source: &'static str,
    hook: &'static str,
    verdict: &'static str,
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a str>,
    domain: String,
}

/// The event line of a denied access.
pub fn line(sandbox: &str, domain: u64, blockers: &str, path: Option<&str>) -> Line {
    let ev = FsEvent {
        ts: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
        sandbox,
        source: "landlock",
        hook: "fs",
        verdict: "deny",
        reason: blockers,
        path,
        domain: format!("{domain:x}"),
    };
    Line {
        key: "landlock",
        deny: true,
        would_deny: false,
        json: serde_json::to_vec(&ev).unwrap_or_default(),
        notice: Some(crate::notice::text(
            "access to",
            Some(path.unwrap_or("?")),
            blockers,
        )),
    }
}

fn socket() -> Result<OwnedFd, String> {
    // SAFETY: plain socket creation.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_AUDIT,
        )
    };
    if fd < 0 {
        return Err(format!(
            "the audit netlink socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn send(fd: &OwnedFd, ty: u16, payload: &[u8]) -> std::io::Result<()> {
    let len = NLMSG_HDRLEN + payload.len();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&ty.to_ne_bytes());
    msg.extend_from_slice(&(libc::NLM_F_REQUEST as u16 | libc::NLM_F_ACK as u16).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(payload);
    // SAFETY: sockaddr_nl zeroed is the kernel as destination.
    let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    to.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: valid buffer and address for the call.
    let r = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&to as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one datagram; `None` on timeout.
fn recv(fd: &OwnedFd, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
    // SAFETY: valid buffer.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(n as usize))
}

fn set_timeout(fd: &OwnedFd, d: Duration) {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: a timeval of the right size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
}

/// The netlink messages of one datagram: (type, payload).
fn messages(buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
        let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        if len < NLMSG_HDRLEN || off + len > buf.len() {
            // Audit records often carry a length without the header: take
            // the rest of the datagram.
            out.push((ty, &buf[off + NLMSG_HDRLEN..]));
            break;
        }
        out.push((ty, &buf[off + NLMSG_HDRLEN..off + len]));
        off += (len + 3) & !3;
    }
    out
}

/// What `AUDIT_GET` tells of the audit subsystem.
#[derive(Debug, Clone, Copy)]
struct Status {
    /// Audit is on (1) or on and locked (2).
    enabled: bool,
    /// What the kernel does when it must drop a record
    /// (`struct audit_status.failure`: 0 silent, 1 printk, 2 panic).
    failure: u32,
    /// Records the kernel has dropped since boot (rate limit, backlog
    /// limit, no memory): `struct audit_status.lost`.
    lost: u32,
}

/// `AUDIT_FAIL_PANIC`: the kernel panics when it drops an audit record.
const AUDIT_FAIL_PANIC: u32 = 2;

/// Why Landlock's records must not be turned on for the sandbox under
/// this audit status, if so (pure). Logging makes each of the command's
/// denials a host audit record, as fast as it can cause them: where
/// dropping one makes the kernel panic (`auditctl -f 2`, a hardening
/// baseline's setting), a flood past the backlog would halt the host.
fn refusal(s: &Status) -> Option<&'static str> {
    if !s.enabled {
        return Some("the kernel's audit subsystem is off (`auditctl -e 1` turns it on)");
    }
    if s.failure == AUDIT_FAIL_PANIC {
        return Some(
            "the audit failure mode is panic (`auditctl -f 2`): a command's flood of denials \
             could make the kernel drop a record and panic, so they are not logged",
        );
    }
    None
}

/// The audit subsystem's status (`AUDIT_GET`).
fn audit_status() -> Result<Status, String> {
    let fd = socket()?;
    set_timeout(&fd, Duration::from_secs(1));
    send(&fd, AUDIT_GET, &[]).map_err(|e| format!("asking the audit status: {e}"))?;
    let mut buf = vec![0u8; 8192];
    for _ in 0..4 {
        let Some(n) = recv(&fd, &mut buf).map_err(|e| format!("reading the audit status: {e}"))?
        else {
            break;
        };
        for (ty, p) in messages(&buf[..n]) {
            // struct audit_status: mask, enabled, failure, pid,
            // rate_limit, backlog_limit, lost, ...
            if ty == AUDIT_GET && p.len() >= 28 {
                let word = |i: usize| u32::from_ne_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
                return Ok(Status {
                    enabled: word(4) != 0,
                    failure: word(8),
                    lost: word(24),
                });
            }
            if ty == libc::NLMSG_ERROR as u16 && p.len() >= 4 {
                let err = i32::from_ne_bytes([p[0], p[1], p[2], p[3]]);
                if err != 0 {
                    return Err(format!(
                        "the audit status: {}",
                        std::io::Error::from_raw_os_error(-err)
                    ));
                }
            }
        }
    }
    Err("the audit status: no answer".into())
}

/// Waits up to `timeout` on `fd` for a `USER` record containing `token`.
fn await_user_record(fd: &OwnedFd, token: &str, timeout: Duration) -> bool {
    let start = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    while start.elapsed() < timeout {
        match recv(fd, &mut buf) {
            Ok(Some(n)) => {
                for (ty, payload) in messages(&buf[..n]) {
                    let own = std::process::id() as i32;
                    if is_own_user_record(ty, &String::from_utf8_lossy(payload), token, own) {
                        return true;
                    }
                }
            }
            Ok(None) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
            Err(_) => return false,
        }
    }
    false
}

/// Logs a `USER` record with `text` (needs CAP_AUDIT_WRITE).
fn log_user_record(text: &str) -> Result<(), String> {
    let fd = socket()?;
    // The kernel takes the payload as a NUL-terminated string.
    let mut payload = text.as_bytes().to_vec();
    payload.push(0);
    send(&fd, AUDIT_USER, &payload).map_err(|e| format!("writing an audit record: {e}"))
}

/// Whether a record is the `USER` record this agent logged with `token`:
/// the kernel writes the sender's pid first (`pid=N uid=...
/// msg='TEXT'`), so another process that logs the same text (any holder
/// of CAP_AUDIT_WRITE, with an id it read from the cgroup tree) cannot end
/// the reading early and hide the denials that follow (pure).
pub fn is_own_user_record(ty: u16, text: &str, token: &str, own_pid: i32) -> bool {
    ty == AUDIT_USER
        && field(text, "pid").and_then(|p| p.parse::<i32>().ok()) == Some(own_pid)
        && text.contains(token)
}

/// A denial waiting for, or released by, its domain's record: (domain,
/// blockers, path).
pub type Denial = (u64, String, Option<String>);

/// Domains remembered as another process's, so that their denials are
/// dropped at once instead of waiting (and pushing ours out).
const MAX_FOREIGN: usize = 4096;
/// Domains remembered as having lost a waiting denial.
const MAX_EVICTED: usize = 4096;

/// Which records are the sandbox's (pure: records in, denials out, in the
/// order the kernel delivered them). A domain is ours when the record
/// naming its creator names the sandbox's first process; the kernel logs
/// a domain's first denial just before that record, so denials of
/// domains not known yet wait (at most [`MAX_PENDING`]). If one of ours
/// had to be pushed out while waiting (a flood of other domains' denials
/// in between), the report is marked incomplete rather than short.
#[derive(Debug)]
pub struct Tracker {
    creator: i32,
    ours: HashSet<u64>,
    foreign: HashSet<u64>,
    pending: VecDeque<Denial>,
    evicted: HashSet<u64>,
    evicted_untracked: bool,
    /// A denial of ours may have been lost.
    pub incomplete: bool,
}

impl Tracker {
    /// For the sandbox whose first process is `creator` (global pid).
    pub fn new(creator: i32) -> Self {
        Self {
            creator,
            ours: HashSet::new(),
            foreign: HashSet::new(),
            pending: VecDeque::new(),
            evicted: HashSet::new(),
            evicted_untracked: false,
            incomplete: false,
        }
    }

    /// Takes one record; returns the sandbox's denials it makes known.
    pub fn feed(&mut self, rec: Record) -> Vec<Denial> {
        match rec {
            Record::Domain { id, pid } if pid == self.creator => {
                self.ours.insert(id);
                if self.evicted.contains(&id) || self.evicted_untracked {
                    self.incomplete = true;
                }
                let (mine, rest): (VecDeque<Denial>, VecDeque<Denial>) =
                    std::mem::take(&mut self.pending)
                        .into_iter()
                        .partition(|d| d.0 == id);
                self.pending = rest;
                mine.into_iter().collect()
            }
            Record::Domain { id, .. } => {
                if self.foreign.len() < MAX_FOREIGN {
                    self.foreign.insert(id);
                }
                self.pending.retain(|d| d.0 != id);
                Vec::new()
            }
            Record::Access { id, blockers, path } if self.ours.contains(&id) => {
                vec![(id, blockers, path)]
            }
            Record::Access { id, .. } if self.foreign.contains(&id) => Vec::new(),
            Record::Access { id, blockers, path } => {
                if self.pending.len() >= MAX_PENDING {
                    if let Some(old) = self.pending.pop_front() {
                        if self.evicted.len() < MAX_EVICTED {
                            self.evicted.insert(old.0);
                        } else {
                            self.evicted_untracked = true;
                        }
                    }
                }
                self.pending.push_back((id, blockers, path));
                Vec::new()
            }
            Record::Other => Vec::new(),
        }
    }
}

/// The multicast subscription, made before the command starts so that no
/// record is missed.
pub struct Listener {
    fd: OwnedFd,
    /// The kernel's count of dropped records when the subscription began.
    lost: u32,
}

impl Listener {
    /// Subscribes, or says why filesystem denials cannot be reported here.
    pub fn open() -> Result<Self, String> {
        if super::landlock::kernel_abi() < 7 {
            return Err("this kernel's Landlock (ABI < 7) does not report them".into());
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("reading the kernel's audit records needs root".into());
        }
        let status = audit_status()?;
        if let Some(why) = refusal(&status) {
            return Err(why.into());
        }
        let fd = socket()?;
        // SAFETY: sockaddr_nl for the read-only log group.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = 1 << (AUDIT_NLGRP_READLOG - 1);
        // SAFETY: a valid address of the right size.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if r != 0 {
            return Err(format!(
                "subscribing to the audit log: {}",
                std::io::Error::last_os_error()
            ));
        }
        // A larger buffer for bursts (best effort).
        let size: libc::c_int = 4 << 20;
        // SAFETY: an int option.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        set_timeout(&fd, Duration::from_millis(100));
        // Records reach a subscriber only in the kernel's initial network
        // namespace (and not at all if a rule filters them): check that
        // they reach this one with a record of our own.
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let probe = format!("nono-agent audit check {} {nanos}", std::process::id());
        log_user_record(&probe)?;
        if !await_user_record(&fd, &probe, Duration::from_secs(1)) {
            return Err("the kernel's audit records do not reach this agent (they are sent only to the initial network namespace)".into());
        }
        Ok(Self {
            fd,
            lost: status.lost,
        })
    }

    /// Starts reading: records of domains created by `creator` (the
    /// sandbox's first process) become event lines on `tx`.
    pub fn start(self, creator: i32, sandbox: String, tx: EventTx) -> std::io::Result<Running> {
        let token = format!("nono-agent sandbox {sandbox} ended");
        let stop = Arc::new(AtomicBool::new(false));
        let lost = Arc::new(AtomicBool::new(false));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let lost_before = self.lost;
        let (fd, t, st, lo) = (self.fd, token.clone(), stop.clone(), lost.clone());
        let sandbox_id = sandbox;
        let own_pid = std::process::id() as i32;
        let thread = std::thread::Builder::new()
            .name("nono-fsaudit".into())
            .spawn(move || {
                let mut tracker = Tracker::new(creator);
                let mut buf = vec![0u8; 64 * 1024];
                while !st.load(Ordering::SeqCst) {
                    let n = match recv(&fd, &mut buf) {
                        Ok(Some(n)) => n,
                        Ok(None) => continue,
                        Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                            lo.store(true, Ordering::SeqCst);
                            continue;
                        }
                        Err(_) => break,
                    };
                    for (ty, payload) in messages(&buf[..n]) {
                        let text = String::from_utf8_lossy(payload);
                        if is_own_user_record(ty, &text, &t, own_pid) {
                            let _ = done_tx.send(());
                            return;
                        }
                        for (id, blockers, path) in tracker.feed(parse(ty, &text)) {
                            let _ = tx.send(line(&sandbox_id, id, &blockers, path.as_deref()));
                        }
                        if tracker.incomplete {
                            lo.store(true, Ordering::SeqCst);
                        }
                    }
                }
            })?;
        Ok(Running {
            token,
            stop,
            lost,
            lost_before,
            done: done_rx,
            thread,
        })
    }
}

/// The reader, while the sandbox runs.
pub struct Running {
    token: String,
    stop: Arc<AtomicBool>,
    lost: Arc<AtomicBool>,
    /// The kernel's dropped-record count before the sandbox started.
    lost_before: u32,
    done: std::sync::mpsc::Receiver<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Running {
    /// Once the sandbox's processes are gone: logs a fence record (`USER`,
    /// "nono-agent sandbox ID ended") and waits, up to `timeout`, until the
    /// reader sees it: the kernel delivers records in order, so every
    /// denial of the sandbox has then been read. Returns whether records
    /// may be missing: the socket overflowed, the fence never came (audit
    /// turned off meanwhile), or the kernel dropped records during the run
    /// (its `lost` count grew: a flood past the rate or backlog limit,
    /// which a command can cause to hide its denials, including the
    /// record that names its domain). The kernel does not say whose
    /// records it dropped, so any drop during the run counts.
    pub fn finish(self, timeout: Duration) -> bool {
        let fenced = log_user_record(&self.token).is_ok();
        let start = Instant::now();
        let seen = fenced
            && self
                .done
                .recv_timeout(timeout.saturating_sub(start.elapsed()))
                .is_ok();
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.thread.join();
        let dropped = audit_status().map_or(true, |s| s.lost != self.lost_before);
        !seen || self.lost.load(Ordering::SeqCst) || dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(id: u64, path: &str) -> Record {
        Record::Access {
            id,
            blockers: "fs.read_file".into(),
            path: Some(path.into()),
        }
    }

    #[test]
    fn denials_are_attributed_by_their_domain_creator() {
        let mut t = Tracker::new(300);
        // Our first denial comes before the record naming the creator.
        assert!(t.feed(access(7, "/a")).is_empty());
        let got = t.feed(Record::Domain { id: 7, pid: 300 });
        assert_eq!(got, vec![(7, "fs.read_file".into(), Some("/a".into()))]);
        assert_eq!(t.feed(access(7, "/b")).len(), 1);
        // Another process's domain: its denials never show, nor wait.
        assert!(t.feed(access(9, "/x")).is_empty());
        assert!(t.feed(Record::Domain { id: 9, pid: 301 }).is_empty());
        for _ in 0..(2 * MAX_PENDING) {
            assert!(t.feed(access(9, "/x")).is_empty());
        }
        assert!(t.pending.is_empty());
        assert!(!t.incomplete);
    }

    #[test]
    fn a_denial_of_ours_pushed_out_while_waiting_marks_the_report_incomplete() {
        let mut t = Tracker::new(300);
        assert!(t.feed(access(7, "/a")).is_empty());
        // A flood of denials of domains whose creator record came before
        // the reader started (never named now) pushes it out.
        for i in 0..MAX_PENDING as u64 {
            assert!(t.feed(access(1000 + i, "/junk")).is_empty());
        }
        assert!(t.feed(Record::Domain { id: 7, pid: 300 }).is_empty());
        assert!(
            t.incomplete,
            "a lost denial must not leave the count complete"
        );
    }

    #[test]
    fn only_our_own_user_record_ends_the_reading() {
        let token = "nono-agent sandbox 0123456789abcdef ended";
        let ours = format!(
            "audit(1.2:3): pid=4242 uid=0 auid=4294967295 ses=4294967295 subj=unconfined msg='{token}'"
        );
        assert!(is_own_user_record(AUDIT_USER, &ours, token, 4242));
        // The same text from another process, or as another record type.
        let other = ours.replace("pid=4242", "pid=4343");
        assert!(!is_own_user_record(AUDIT_USER, &other, token, 4242));
        assert!(!is_own_user_record(
            AUDIT_LANDLOCK_ACCESS,
            &ours,
            token,
            4242
        ));
        // A msg that mentions our pid does not make it ours.
        let spoof =
            format!("audit(1.2:3): pid=4343 uid=0 auid=1 ses=1 subj=x msg='pid=4242 {token}'");
        assert!(!is_own_user_record(AUDIT_USER, &spoof, token, 4242));
    }

    #[test]
    fn logging_is_refused_where_a_drop_panics() {
        let on = Status {
            enabled: true,
            failure: 1,
            lost: 0,
        };
        assert_eq!(refusal(&on), None);
        let off = Status {
            enabled: false,
            ..on
        };
        assert!(refusal(&off).is_some_and(|w| w.contains("off")));
        let panics = Status {
            failure: AUDIT_FAIL_PANIC,
            ..on
        };
        assert!(refusal(&panics).is_some_and(|w| w.contains("panic")));
    }

    #[test]
    fn records_are_parsed() {
        let d = "audit(1729738800.268:30): domain=195ba459b status=allocated mode=enforcing pid=300 uid=0 exe=\"/root/sandboxer\" comm=\"sandboxer\"";
        assert_eq!(
            parse(AUDIT_LANDLOCK_DOMAIN, d),
            Record::Domain {
                id: 0x195ba459b,
                pid: 300
            }
        );
        let a = "audit(1729738800.268:30): domain=195ba459b blockers=fs.write_file path=\"/etc/passwd\" dev=\"vda2\" ino=351";
        assert_eq!(
            parse(AUDIT_LANDLOCK_ACCESS, a),
            Record::Access {
                id: 0x195ba459b,
                blockers: "fs.write_file".into(),
                path: Some("/etc/passwd".into()),
            }
        );
        // A path with a space or a control character comes hex-encoded.
        let h = "audit(1.2:3): domain=1 blockers=fs.read_file path=2F746D702F61206201 dev=\"vda\" ino=2";
        match parse(AUDIT_LANDLOCK_ACCESS, h) {
            Record::Access { path, .. } => assert_eq!(path.as_deref(), Some("/tmp/a b\u{1}")),
            other => panic!("{other:?}"),
        }
        let n = "audit(1.2:3): domain=1 blockers=fs.make_reg name=\"new\" dev=\"vda\" ino=2";
        match parse(AUDIT_LANDLOCK_ACCESS, n) {
            Record::Access { path, .. } => assert_eq!(path.as_deref(), Some("new")),
            other => panic!("{other:?}"),
        }
        let dealloc = "audit(1.2:3): domain=1 status=deallocated denials=3";
        assert_eq!(parse(AUDIT_LANDLOCK_DOMAIN, dealloc), Record::Other);
        // A key inside another value is not the key.
        assert_eq!(field("exe=\"xpid=9\" pid=3", "pid").as_deref(), Some("3"));
    }
}
