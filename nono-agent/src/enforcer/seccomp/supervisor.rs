//! The supervisor: answers every notification from the sandbox's threads.
//!
//! The target's memory is read once; what was read is judged and then *used*
//! by the supervisor, which performs the connect or send itself on the
//! target's own socket (obtained with `pidfd_getfd`). Nothing is ever
//! answered with `SECCOMP_USER_NOTIF_FLAG_CONTINUE`, so a second thread that
//! rewrites the sockaddr, the msghdr or the fd table after the check changes
//! nothing: the kernel never looks at the target's memory again.
//!
//! This file receives notifications and dispatches them: copy what the call
//! names (`copy`), judge it (`super::judge`, pure), perform it (`perform`),
//! reply, and report denials (`events`).

use nono_common::{audit_verdict, Decision, Dest, Policy, Reason, Verdict, AUDIT_ON};
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::filter::{
    NR_BIND, NR_CONNECT, NR_LISTEN, NR_SENDMMSG, NR_SENDMSG, NR_SENDTO, NR_SETSOCKOPT, NR_SOCKET,
    NR_SOCKETPAIR,
};
use super::identity::{Creds, Identity};
use super::inbound;
use super::judge::{self, Destination, Refusal};
use super::notify::{self, Notif};
use crate::events::EventTx;
use copy::{MAX_IOV, MAX_PAYLOAD};
use events::tgid_of;
use perform::{errno, local_name, sockopt_int, Msg, Op, SendMsgOp, Sock, Work};

mod copy;
mod events;
mod perform;
mod pidfds;
mod unix;

/// What the supervisor needs.
pub struct Supervisor {
    listener: OwnedFd,
    policy: Policy,
    /// (device, inode) of daemon sockets the sandbox may not connect to.
    denied_sockets: Vec<(u64, u64)>,
    sandbox: String,
    events: EventTx,
    /// Receivers currently waiting for a notification.
    idle: AtomicUsize,
    /// The inbound socket filter put on every inet socket ([`inbound`]),
    /// when this kernel lets the agent attach one (some refuse
    /// `SO_ATTACH_FILTER` without `CAP_NET_ADMIN`). Without it, wildcard
    /// binds are rewritten to loopback instead ([`judge::bind`]).
    inbound: inbound::Inbound,
    /// The agent is root: operations run with the target's credentials
    /// ([`Identity`]), never the agent's.
    root: bool,
    /// Transparent mode: where redirected connects dialled, for the proxy.
    dialled: Option<Arc<crate::transparent::Dialled>>,
    /// Pidfds of notifying threads, kept between their notifications.
    pidfds: pidfds::Pidfds,
}

/// When an operation needs the target's credentials (see
/// [`Supervisor::socket`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Needs {
    /// Always (bind, listen).
    Always,
    /// For every socket but an inet one (connect, sends).
    UnlessInet,
}

/// Idle receivers kept around after a burst of blocking operations.
const MAX_IDLE_RECEIVERS: usize = 4;

impl Supervisor {
    /// A supervisor for one sandbox's listener.
    pub fn new(
        listener: OwnedFd,
        policy: Policy,
        denied_sockets: Vec<(u64, u64)>,
        sandbox: String,
        events: EventTx,
        dialled: Option<Arc<crate::transparent::Dialled>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            listener,
            policy,
            denied_sockets,
            sandbox,
            events,
            dialled,
            idle: AtomicUsize::new(0),
            pidfds: pidfds::Pidfds::default(),
            inbound: inbound::available(&policy),
            // SAFETY: geteuid has no preconditions.
            root: unsafe { libc::geteuid() } == 0,
        })
    }

    /// Serves notifications until the listener reports that every
    /// supervised process is gone.
    ///
    /// Several receiver threads wait on the listener at once (the kernel
    /// hands each notification to exactly one). A receiver performs the
    /// operation itself, with no hand-off latency; before it starts one that
    /// may block (a blocking connect or send), it makes sure another
    /// receiver is idle, starting one if needed, so one slow peer never
    /// stalls other threads' notifications.
    pub fn run(self: Arc<Self>) {
        let _ = notify::set_sync_wakeup(self.listener.as_fd());
        self.idle.fetch_add(1, Ordering::SeqCst);
        self.receive();
    }

    fn spawn_receiver(self: &Arc<Self>) {
        self.idle.fetch_add(1, Ordering::SeqCst);
        let me = self.clone();
        if std::thread::Builder::new()
            .name("nono-supervisor".into())
            .spawn(move || me.receive())
            .is_err()
        {
            self.idle.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn receive(self: Arc<Self>) {
        loop {
            let n = match notify::recv(self.listener.as_fd()) {
                Ok(n) => n,
                // ENOENT: the target died before we received; go on.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                // Any other error (the filter's last user exited: the
                // listener hangs up) ends supervision.
                Err(_) => {
                    self.idle.fetch_sub(1, Ordering::SeqCst);
                    return;
                }
            };
            match self.prepare(&n) {
                Ok(Work::Reply(r)) => self.reply(&n, r),
                Ok(Work::Continue) => {
                    let _ = notify::respond_continue(self.listener.as_fd(), n.id);
                }
                Ok(Work::Perform(op)) => {
                    if op.may_block() {
                        if self.idle.fetch_sub(1, Ordering::SeqCst) <= 1 {
                            self.spawn_receiver();
                        }
                        self.finish(&n, op);
                        // Too many idle receivers: this one retires.
                        if self.idle.fetch_add(1, Ordering::SeqCst) >= MAX_IDLE_RECEIVERS {
                            self.idle.fetch_sub(1, Ordering::SeqCst);
                            return;
                        }
                    } else {
                        self.finish(&n, op);
                    }
                }
                Err(errno) => self.reply(&n, Err(errno)),
            }
        }
    }

    /// Performs `op` and answers. A send that hits a closed stream raises
    /// SIGPIPE in the target thread, as the kernel would have, unless the
    /// target asked for MSG_NOSIGNAL (we always send with it ourselves).
    fn finish(&self, n: &Notif, op: Op) {
        let sigpipe = op.wants_sigpipe();
        let r = op.perform();
        self.reply(n, r);
        if sigpipe && r == Err(libc::EPIPE) {
            if let Some(tgid) = tgid_of(n.pid) {
                // SAFETY: tgkill with ids from a notification we just
                // answered; at worst the thread is gone (ESRCH).
                unsafe {
                    libc::syscall(
                        libc::SYS_tgkill,
                        tgid as libc::pid_t,
                        n.pid as libc::pid_t,
                        libc::SIGPIPE,
                    )
                };
            }
        }
    }

    fn reply(&self, n: &Notif, r: Result<i64, i32>) {
        let _ = notify::respond(self.listener.as_fd(), n.id, r);
    }

    /// Reads and judges; returns what to do.
    fn prepare(&self, n: &Notif) -> Result<Work, i32> {
        let nr = n.data.nr as u32;
        let a = n.data.args;
        match nr {
            NR_SOCKET | NR_SOCKETPAIR => {
                // Only refused calls reach us (the filter allows the rest);
                // judged on registers, which cannot change under us.
                let (family, ty, proto) = (a[0] as u32, a[1] as u32, a[2] as u32);
                let pair = nr == NR_SOCKETPAIR;
                let hook = if pair { "socketpair" } else { "socket" };
                let d = judge::socket(pair, family, ty, proto);
                self.event(n, hook, family, Some(ty), Some(proto), None, d.reason);
                Ok(Work::Reply(Err(d.errno)))
            }
            NR_SETSOCKOPT => {
                let (level, optname) = (a[1] as i32, a[2] as i32);
                let d = judge::setsockopt(level, optname);
                self.event_sockopt(n, "setsockopt", level, optname, d.reason);
                Ok(Work::Reply(Err(d.errno)))
            }
            NR_BIND => self.prepare_bind(n),
            NR_LISTEN => self.prepare_listen(n),
            NR_CONNECT => self.prepare_connect(n),
            NR_SENDTO => self.prepare_sendto(n),
            NR_SENDMSG => self
                .prepare_sendmsg(n)
                .map(|(op, _)| Work::Perform(Op::SendMsg(Box::new(op)))),
            NR_SENDMMSG => self.prepare_sendmmsg(n),
            _ => Err(libc::ENOSYS),
        }
    }

    /// The target's socket, after checking the notification is still alive
    /// (so `pid` is still the thread that made the call). An inet socket
    /// gets the locked inbound filter before anything is done with it; if
    /// that fails (the sandbox locked a filter of its own first), the
    /// operation is refused.
    ///
    /// As root the operation runs with the target's credentials, read here
    /// when `needs` says the operation depends on them: a unix socket
    /// (peer credentials, socket file permissions), a bind (privileged
    /// ports), a send with ancillary data (capability-gated control
    /// messages, see [`Self::creds_for_control`]). An inet `connect`, or a
    /// send without ancillary data, checks no credential or capability of
    /// the caller, so it skips the /proc read and the identity switch (27
    /// of the ~50 system calls such a notification cost).
    fn socket(&self, n: &Notif, fd: u64, needs: Needs) -> Result<Sock, i32> {
        let fd = self
            .pidfds
            .grab(self.listener.as_fd(), n.id, n.pid, fd as i32 as RawFd)?;
        let domain = sockopt_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_DOMAIN)
            .map_err(|_| libc::ENOTSOCK)? as u32;
        let inet = judge::is_inet(domain);
        let ty = sockopt_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_TYPE).unwrap_or(0) as u32;
        let filtered = match self.inbound.for_type(ty) {
            Some(prog) if inet => inbound::ensure(fd.as_fd(), prog).is_ok(),
            _ => true,
        };
        if !filtered {
            self.event(
                n,
                "socket-filter",
                domain,
                None,
                None,
                None,
                Reason::InboundFilter,
            );
            return Err(libc::EPERM);
        }
        let creds = match needs {
            Needs::UnlessInet if inet => None,
            _ => self.creds(n)?,
        };
        Ok(Sock {
            fd,
            domain,
            ty,
            pinned: std::sync::Mutex::new(Vec::new()),
            creds,
        })
    }

    /// The target's credentials when the agent is root (checked still
    /// alive afterwards), else `None` (an unprivileged agent cannot take
    /// them on).
    fn creds(&self, n: &Notif) -> Result<Option<Creds>, i32> {
        if !self.root {
            return Ok(None);
        }
        let c = Creds::of(n.pid).ok_or(libc::ESRCH)?;
        if !notify::id_valid(self.listener.as_fd(), n.id) {
            return Err(libc::ESRCH);
        }
        Ok(Some(c))
    }

    /// An inet send with ancillary data runs as the target after all:
    /// some control messages are capability-gated (`SO_MARK`, IPv6
    /// hop-by-hop options) and must be refused as they would be for it.
    fn creds_for_control(&self, n: &Notif, sock: &mut Sock, msgs: &[Msg]) -> Result<(), i32> {
        if sock.creds.is_none() && msgs.iter().any(|m| !m.control.is_empty()) {
            sock.creds = self.creds(n)?;
        }
        Ok(())
    }

    /// `bind`: inet binds are judged ([`decide_bind`]) and performed on our
    /// copy of the socket, which already carries the inbound filter. Other
    /// families go ahead as the target's own call: a unix path is created
    /// with the target's credentials, umask and view of the file system,
    /// which only its own call has. If another thread swaps an inet socket
    /// onto that fd number in between, that socket is bound unjudged but
    /// still cannot listen, connect or send without passing through here
    /// (and getting the filter) first.
    fn prepare_bind(&self, n: &Notif) -> Result<Work, i32> {
        let a = n.data.args;
        let len = (a[2] as u32 as usize).min(128);
        let addr = self.read(n, a[1], len)?;
        let sock = self.socket(n, a[0], Needs::Always)?;
        let filtered = self.inbound.for_type(sock.ty).is_some();
        match judge::bind(sock.domain, addr.clone(), filtered) {
            Ok(judge::Bind::Continue) => Ok(Work::Continue),
            Ok(judge::Bind::To(addr)) => Ok(Work::Perform(Op::Bind { sock, addr })),
            Err(d) => {
                if let Some(local) = &d.dest {
                    if self.audited(d.reason, local) {
                        self.would_deny_event(n, "bind", &sock, local, d.reason);
                        return Ok(Work::Perform(Op::Bind { sock, addr }));
                    }
                    self.socket_event(n, "bind", &sock, local, d.reason);
                }
                Err(d.errno)
            }
        }
    }

    /// `listen`, always performed on our copy (never the target's call,
    /// whose fd could be swapped for an unfiltered socket). An unbound inet
    /// socket autobinds to the wildcard address, which the inbound filter
    /// makes loopback-only; a bound one must be bound where `bind` allows.
    fn prepare_listen(&self, n: &Notif) -> Result<Work, i32> {
        let a = n.data.args;
        let sock = self.socket(n, a[0], Needs::Always)?;
        let mut bind_first = None;
        if judge::is_inet(sock.domain) {
            let name = local_name(sock.fd.as_fd()).map_err(errno)?;
            let filtered = self.inbound.for_type(sock.ty).is_some();
            match judge::listen(sock.domain, &name, filtered) {
                Ok(b) => bind_first = b,
                Err(d) => match &d.dest {
                    Some(local) if self.audited(d.reason, local) => {
                        self.would_deny_event(n, "listen", &sock, local, d.reason);
                    }
                    Some(local) => {
                        self.socket_event(n, "listen", &sock, local, d.reason);
                        return Err(d.errno);
                    }
                    None => return Err(d.errno),
                },
            }
        }
        Ok(Work::Perform(Op::Listen {
            sock,
            backlog: a[1] as i32,
            bind_first,
        }))
    }

    fn prepare_connect(&self, n: &Notif) -> Result<Work, i32> {
        let a = n.data.args;
        let len = (a[2] as u32 as usize).min(128);
        let addr = self.read(n, a[1], len)?;
        let sock = self.socket(n, a[0], Needs::UnlessInet)?;
        if let Some(r) = judge::redirect(&self.policy, sock.domain, sock.ty, &addr, false) {
            // The proxy's listener needs to know where this dialled; the
            // resolver does not.
            let record = match (&self.dialled, r.reason) {
                (Some(d), Reason::Transparent) => Some(perform::Record {
                    original: std::net::SocketAddr::new(
                        crate::util::canonical_ip(r.original.addr),
                        r.original.port,
                    ),
                    into: d.clone(),
                }),
                _ => None,
            };
            return Ok(Work::Perform(Op::Connect {
                sock,
                addr: r.addr,
                record,
            }));
        }
        if judge::quiet_probe(&self.policy, sock.domain, sock.ty, &addr) {
            return Err(libc::EPERM);
        }
        let addr = self.judge(n, "connect", &sock, addr, false)?;
        Ok(Work::Perform(Op::Connect {
            sock,
            addr,
            record: None,
        }))
    }

    fn prepare_sendto(&self, n: &Notif) -> Result<Work, i32> {
        let a = n.data.args;
        let alen = (a[5] as u32 as usize).min(128);
        let addr = self.read(n, a[4], alen)?;
        let len = (a[2] as usize).min(MAX_PAYLOAD);
        let data = self.read(n, a[1], len)?;
        let sock = self.socket(n, a[0], Needs::UnlessInet)?;
        let addr = self.judge(n, "sendto", &sock, addr, true)?;
        Ok(Work::Perform(Op::SendTo {
            sock,
            data,
            flags: a[3] as i32,
            addr,
        }))
    }

    fn prepare_sendmsg(&self, n: &Notif) -> Result<(SendMsgOp, ()), i32> {
        let a = n.data.args;
        let mut sock = self.socket(n, a[0], Needs::UnlessInet)?;
        let msg = self.copy_msghdr(n, a[1], &sock, "sendmsg")?;
        self.creds_for_control(n, &mut sock, std::slice::from_ref(&msg))?;
        Ok((
            SendMsgOp {
                sock,
                msgs: vec![msg],
                flags: a[2] as i32,
                many: false,
            },
            (),
        ))
    }

    fn prepare_sendmmsg(&self, n: &Notif) -> Result<Work, i32> {
        let a = n.data.args;
        let vlen = (a[2] as u32 as usize).min(MAX_IOV);
        let mut sock = self.socket(n, a[0], Needs::UnlessInet)?;
        let stride = std::mem::size_of::<libc::mmsghdr>();
        let mut msgs = Vec::with_capacity(vlen);
        for i in 0..vlen {
            msgs.push(self.copy_msghdr(n, a[1] + (i * stride) as u64, &sock, "sendmmsg")?);
        }
        self.creds_for_control(n, &mut sock, &msgs)?;
        Ok(Work::Perform(Op::SendMsg(Box::new(SendMsgOp {
            sock,
            msgs,
            flags: a[3] as i32,
            many: true,
        }))))
    }

    /// Judges a destination as the kernel would read it for this socket
    /// ([`judge::destination`]); a unix path is resolved here, once, and
    /// judged by the inode it names. Returns the address to use (rewritten,
    /// for unix paths) or the errno to answer.
    fn judge(
        &self,
        n: &Notif,
        hook: &'static str,
        sock: &Sock,
        addr: Vec<u8>,
        send: bool,
    ) -> Result<Vec<u8>, i32> {
        // Transparent mode: DNS sends go to the resolver (a connect is
        // rewritten in `prepare_connect`).
        if let Some(r) = judge::redirect(&self.policy, sock.domain, sock.ty, &addr, send) {
            return Ok(r.addr);
        }
        match judge::destination(&self.policy, sock.domain, &addr, send) {
            Ok(Destination::AsGiven | Destination::Allowed(_)) => Ok(addr),
            Ok(Destination::UnixPath) => self.judge_unix_path(n, hook, sock, addr),
            Err(Refusal::Invalid(e)) => Err(e),
            Err(Refusal::Denied(d)) => {
                if let Some(dest) = &d.dest {
                    if self.audited(d.reason, dest) {
                        self.would_deny_event(n, hook, sock, dest, d.reason);
                        return Ok(addr);
                    }
                    self.socket_event(n, hook, sock, dest, d.reason);
                }
                Err(d.errno)
            }
        }
    }

    /// Whether a refusal of `reason` about `dest` is let through because
    /// the sandbox runs in audit mode (`nono_common::audit_verdict`, as the
    /// BPF programs decide).
    fn audited(&self, reason: Reason, dest: &Dest) -> bool {
        let d = Decision {
            allow: false,
            reason,
        };
        audit_verdict(d, &dest.addr, self.policy.audit == AUDIT_ON) == Verdict::WouldDeny
    }

    /// Resolves a unix path once (O_PATH) as the target sees it (its root
    /// and working directory, so its mount namespace), judges that inode,
    /// and returns an address through /proc/self/fd/N: a symlink swapped
    /// after the check cannot redirect us to another socket.
    fn judge_unix_path(
        &self,
        n: &Notif,
        hook: &'static str,
        sock: &Sock,
        addr: Vec<u8>,
    ) -> Result<Vec<u8>, i32> {
        let family = u16::from_ne_bytes([addr[0], addr[1]]) as u32;
        let addr = unix::unix_path_for(n.pid, addr);
        // The lookup, like the operation, with the target's rights.
        let (pinned, id) = {
            let _as = Identity::assume_opt(sock.creds.as_ref(), 0)?;
            unix::open_unix_path(&addr)?
        };
        if let Err(d) = judge::unix_socket(&self.denied_sockets, id) {
            self.event(n, hook, family, None, None, None, d.reason);
            return Err(d.errno);
        }
        let mut via = addr[..2].to_vec();
        via.extend_from_slice(format!("/proc/self/fd/{}", pinned.as_raw_fd()).as_bytes());
        via.push(0);
        if let Ok(mut p) = sock.pinned.lock() {
            p.push(pinned);
        }
        Ok(via)
    }
}
