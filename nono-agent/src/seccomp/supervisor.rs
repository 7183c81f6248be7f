//! The supervisor: answers every notification from the sandbox's threads.
//!
//! The target's memory is read once; what was read is judged and then *used*
//! by the supervisor, which performs the connect or send itself on the
//! target's own socket (obtained with `pidfd_getfd`). Nothing is ever
//! answered with `SECCOMP_USER_NOTIF_FLAG_CONTINUE`, so a second thread that
//! rewrites the sockaddr, the msghdr or the fd table after the check changes
//! nothing: the kernel never looks at the target's memory again.

use nono_common::{
    consts, decide_bind, decide_connect, decide_socket, decide_socketpair, refused_option, Dest,
    Policy, Reason,
};
use std::io;
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use super::filter::{
    NR_BIND, NR_CONNECT, NR_LISTEN, NR_SENDMMSG, NR_SENDMSG, NR_SENDTO, NR_SETSOCKOPT, NR_SOCKET,
    NR_SOCKETPAIR,
};
use super::identity::{self, Creds, Identity};
use super::inbound;
use super::notify::{self, Notif};
use crate::events::{EventRecord, EventTx};

/// Largest payload copied for one send (bigger stream sends are partial
/// writes, which the caller must handle anyway; datagrams this big do not
/// exist).
const MAX_PAYLOAD: usize = 16 << 20;
/// Largest ancillary data copied.
const MAX_CONTROL: usize = 64 << 10;
/// UIO_MAXIOV.
const MAX_IOV: usize = 1024;

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
    /// binds are rewritten to loopback instead ([`loopback_of`]).
    inbound: inbound::Inbound,
    /// The agent is root: operations run with the target's credentials
    /// ([`Identity`]), never the agent's.
    root: bool,
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
    ) -> Arc<Self> {
        Arc::new(Self {
            listener,
            policy,
            denied_sockets,
            sandbox,
            events,
            idle: AtomicUsize::new(0),
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
                let hook = if nr == NR_SOCKET {
                    "socket"
                } else {
                    "socketpair"
                };
                let d = if nr == NR_SOCKET {
                    decide_socket(family, ty, proto)
                } else {
                    decide_socketpair(family, ty, proto)
                };
                let reason = if d.allow {
                    Reason::SocketFamily.name()
                } else {
                    d.reason.name()
                };
                self.event(n, hook, family, Some(ty), Some(proto), None, reason);
                Ok(Work::Reply(Err(libc::EPERM)))
            }
            NR_SETSOCKOPT => {
                self.event_sockopt(n, "setsockopt", a[1] as i32, a[2] as i32);
                Ok(Work::Reply(Err(libc::EPERM)))
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
    fn socket(&self, n: &Notif, fd: u64) -> Result<Sock, i32> {
        let pidfd = notify::pidfd_for_thread(n.pid).map_err(|_| libc::ESRCH)?;
        if !notify::id_valid(self.listener.as_fd(), n.id) {
            return Err(libc::ESRCH);
        }
        let fd = notify::grab_fd(pidfd.as_fd(), fd as i32 as RawFd).map_err(errno)?;
        let domain = sockopt_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_DOMAIN)
            .map_err(|_| libc::ENOTSOCK)? as u32;
        let inet = domain == consts::AF_INET || domain == consts::AF_INET6;
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
                "inbound-filter-not-applied",
            );
            return Err(libc::EPERM);
        }
        let creds = if self.root {
            let c = Creds::of(n.pid).ok_or(libc::ESRCH)?;
            if !notify::id_valid(self.listener.as_fd(), n.id) {
                return Err(libc::ESRCH);
            }
            Some(c)
        } else {
            None
        };
        Ok(Sock {
            fd,
            domain,
            ty,
            pinned: std::sync::Mutex::new(Vec::new()),
            creds,
        })
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
        let sock = self.socket(n, a[0])?;
        if sock.domain != consts::AF_INET && sock.domain != consts::AF_INET6 {
            return Ok(Work::Continue);
        }
        let mut addr = addr;
        if let Some(local) = inet_dest(sock.domain, &addr) {
            let d = decide_bind(&local);
            if !d.allow {
                self.socket_event(n, "bind", &sock, &local, d.reason.name());
                return Err(libc::EPERM);
            }
            if d.reason == Reason::Wildcard && self.inbound.for_type(sock.ty).is_none() {
                // No filter to make a wildcard listener loopback-only:
                // bind to loopback itself (same port).
                addr = loopback_of(&addr);
            }
        }
        // Not parseable as the socket's family: the kernel refuses it.
        Ok(Work::Perform(Op::Bind { sock, addr }))
    }

    /// `listen`, always performed on our copy (never the target's call,
    /// whose fd could be swapped for an unfiltered socket). An unbound inet
    /// socket autobinds to the wildcard address, which the inbound filter
    /// makes loopback-only; a bound one must be bound where `bind` allows.
    fn prepare_listen(&self, n: &Notif) -> Result<Work, i32> {
        let a = n.data.args;
        let sock = self.socket(n, a[0])?;
        let mut bind_first = None;
        if sock.domain == consts::AF_INET || sock.domain == consts::AF_INET6 {
            let name = local_name(sock.fd.as_fd()).map_err(errno)?;
            if let Some(local) = inet_dest(sock.domain, &name) {
                let d = decide_bind(&local);
                let unfiltered = self.inbound.for_type(sock.ty).is_none();
                if local.port == 0 && unfiltered {
                    // Unbound: listen would autobind to the wildcard.
                    bind_first = Some(loopback_of(&name));
                } else if !d.allow || (unfiltered && d.reason == Reason::Wildcard) {
                    let why = if d.allow {
                        "wildcard-listener-without-inbound-filter"
                    } else {
                        d.reason.name()
                    };
                    self.socket_event(n, "listen", &sock, &local, why);
                    return Err(libc::EPERM);
                }
            }
        }
        Ok(Work::Perform(Op::Listen {
            sock,
            backlog: a[1] as i32,
            bind_first,
        }))
    }

    fn socket_event(
        &self,
        n: &Notif,
        hook: &'static str,
        sock: &Sock,
        d: &Dest,
        why: &'static str,
    ) {
        let ty = sockopt_int(sock.fd.as_fd(), libc::SOL_SOCKET, libc::SO_TYPE).ok();
        let proto = sockopt_int(sock.fd.as_fd(), libc::SOL_SOCKET, libc::SO_PROTOCOL).ok();
        self.event(
            n,
            hook,
            sock.domain,
            ty.map(|t| t as u32),
            proto.map(|p| p as u32),
            Some(d),
            why,
        );
    }

    fn read(&self, n: &Notif, addr: u64, len: usize) -> Result<Vec<u8>, i32> {
        let buf = notify::read_mem(n.pid, addr, len).map_err(|_| libc::EFAULT)?;
        // The pid may have been reused between notification and read: the
        // data only counts if the notification is still pending.
        if !notify::id_valid(self.listener.as_fd(), n.id) {
            return Err(libc::ESRCH);
        }
        Ok(buf)
    }

    fn prepare_connect(&self, n: &Notif) -> Result<Work, i32> {
        let a = n.data.args;
        let len = (a[2] as u32 as usize).min(128);
        let addr = self.read(n, a[1], len)?;
        let sock = self.socket(n, a[0])?;
        let addr = self.judge(n, "connect", &sock, addr, false)?;
        Ok(Work::Perform(Op::Connect { sock, addr }))
    }

    fn prepare_sendto(&self, n: &Notif) -> Result<Work, i32> {
        let a = n.data.args;
        let alen = (a[5] as u32 as usize).min(128);
        let addr = self.read(n, a[4], alen)?;
        let len = (a[2] as usize).min(MAX_PAYLOAD);
        let data = self.read(n, a[1], len)?;
        let sock = self.socket(n, a[0])?;
        let addr = self.judge(n, "sendto", &sock, addr, true)?;
        Ok(Work::Perform(Op::SendTo {
            sock,
            data,
            flags: a[3] as i32,
            addr,
        }))
    }

    /// Copies one `struct msghdr` at `ptr` and everything it points to.
    fn copy_msghdr(
        &self,
        n: &Notif,
        ptr: u64,
        sock: &Sock,
        hook: &'static str,
    ) -> Result<Msg, i32> {
        let raw = self.read(n, ptr, std::mem::size_of::<libc::msghdr>())?;
        // SAFETY: `raw` holds exactly one msghdr's bytes; read_unaligned
        // copes with any alignment; all fields are plain integers/pointers
        // that we only use as numbers.
        let h: libc::msghdr = unsafe { std::ptr::read_unaligned(raw.as_ptr().cast()) };
        let name = if h.msg_name.is_null() || h.msg_namelen == 0 {
            None
        } else {
            Some(self.read(n, h.msg_name as u64, (h.msg_namelen as usize).min(128))?)
        };
        let iovlen = h.msg_iovlen;
        if iovlen > MAX_IOV {
            return Err(libc::EMSGSIZE);
        }
        let iov_raw = self.read(
            n,
            h.msg_iov as u64,
            iovlen * std::mem::size_of::<libc::iovec>(),
        )?;
        let mut data = Vec::new();
        for i in 0..iovlen {
            // SAFETY: bounds: iov_raw holds iovlen iovecs.
            let v: libc::iovec = unsafe {
                std::ptr::read_unaligned(
                    iov_raw
                        .as_ptr()
                        .add(i * std::mem::size_of::<libc::iovec>())
                        .cast(),
                )
            };
            let room = MAX_PAYLOAD - data.len();
            let take = v.iov_len.min(room);
            data.extend(self.read(n, v.iov_base as u64, take)?);
            if take < v.iov_len {
                break;
            }
        }
        let control = if h.msg_control.is_null() || h.msg_controllen == 0 {
            Vec::new()
        } else {
            if h.msg_controllen > MAX_CONTROL {
                return Err(libc::ENOBUFS);
            }
            self.read(n, h.msg_control as u64, h.msg_controllen)?
        };
        let (control, fds) = self.vet_control(n, control, hook)?;
        let name = match name {
            Some(a) => Some(self.judge(n, hook, sock, a, true)?),
            None => None,
        };
        Ok(Msg {
            name,
            data,
            control,
            _fds: fds,
        })
    }

    fn prepare_sendmsg(&self, n: &Notif) -> Result<(SendMsgOp, ()), i32> {
        let a = n.data.args;
        let sock = self.socket(n, a[0])?;
        let msg = self.copy_msghdr(n, a[1], &sock, "sendmsg")?;
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
        let sock = self.socket(n, a[0])?;
        let stride = std::mem::size_of::<libc::mmsghdr>();
        let mut msgs = Vec::with_capacity(vlen);
        for i in 0..vlen {
            msgs.push(self.copy_msghdr(n, a[1] + (i * stride) as u64, &sock, "sendmmsg")?);
        }
        Ok(Work::Perform(Op::SendMsg(Box::new(SendMsgOp {
            sock,
            msgs,
            flags: a[3] as i32,
            many: true,
        }))))
    }

    /// Judges a destination as the kernel would read it for this socket.
    /// Returns the address to use (possibly rewritten, for relative unix
    /// paths) or the errno to answer.
    fn judge(
        &self,
        n: &Notif,
        hook: &'static str,
        sock: &Sock,
        addr: Vec<u8>,
        send: bool,
    ) -> Result<Vec<u8>, i32> {
        if addr.len() < 2 {
            return Err(libc::EINVAL);
        }
        let family = u16::from_ne_bytes([addr[0], addr[1]]) as u32;
        let inet_socket = sock.domain == consts::AF_INET || sock.domain == consts::AF_INET6;
        if !inet_socket {
            if sock.domain != consts::AF_UNIX {
                return Ok(addr);
            }
            if addr.get(2).is_none_or(|&b| b == 0) {
                // Abstract (or unnamed): no path to resolve.
                return Ok(addr);
            }
            // Resolve the path once (O_PATH) as the target sees it (its root
            // and working directory, so its mount namespace), judge that
            // inode, and connect through /proc/self/fd/N: a symlink swapped
            // after the check cannot redirect us to another socket.
            let addr = unix_path_for(n.pid, addr);
            // The lookup, like the operation, with the target's rights.
            let (pinned, id) = {
                let _as = Identity::assume_opt(sock.creds.as_ref(), 0)?;
                open_unix_path(&addr)?
            };
            if self.denied_sockets.contains(&id) {
                self.event(
                    n,
                    hook,
                    family,
                    None,
                    None,
                    None,
                    "daemon-socket-not-allowed",
                );
                return Err(libc::EACCES);
            }
            let mut via = addr[..2].to_vec();
            via.extend_from_slice(format!("/proc/self/fd/{}", pinned.as_raw_fd()).as_bytes());
            via.push(0);
            if let Ok(mut p) = sock.pinned.lock() {
                p.push(pinned);
            }
            return Ok(via);
        }
        let dest = match family {
            f if f == consts::AF_INET
                || (send && f == libc::AF_UNSPEC as u32 && addr.len() >= 16) =>
            {
                if addr.len() < 16 {
                    return Err(libc::EINVAL);
                }
                Dest::v4(
                    [addr[4], addr[5], addr[6], addr[7]],
                    u16::from_be_bytes([addr[2], addr[3]]),
                )
            }
            f if f == consts::AF_INET6 => {
                if addr.len() < 24 {
                    return Err(libc::EINVAL);
                }
                let mut o = [0u8; 16];
                o.copy_from_slice(&addr[8..24]);
                Dest::v6(o, u16::from_be_bytes([addr[2], addr[3]]))
            }
            // connect(AF_UNSPEC) dissolves an association; no destination.
            f if f == libc::AF_UNSPEC as u32 => return Ok(addr),
            // Any other family on an inet socket is refused by the kernel.
            _ => return Ok(addr),
        };
        let d = decide_connect(&self.policy, &dest);
        if d.allow {
            Ok(addr)
        } else {
            // Same fields as the BPF events: the socket's own family, type
            // and protocol.
            let ty = sockopt_int(sock.fd.as_fd(), libc::SOL_SOCKET, libc::SO_TYPE).ok();
            let proto = sockopt_int(sock.fd.as_fd(), libc::SOL_SOCKET, libc::SO_PROTOCOL).ok();
            self.event(
                n,
                hook,
                sock.domain,
                ty.map(|t| t as u32),
                proto.map(|p| p as u32),
                Some(&dest),
                d.reason.name(),
            );
            Err(libc::EPERM)
        }
    }

    /// Refuses ancillary data that reroutes packets or forges credentials;
    /// translates SCM_RIGHTS descriptors into ours.
    fn vet_control(
        &self,
        n: &Notif,
        mut c: Vec<u8>,
        hook: &'static str,
    ) -> Result<(Vec<u8>, Vec<OwnedFd>), i32> {
        const HDR: usize = std::mem::size_of::<libc::cmsghdr>();
        let mut fds = Vec::new();
        let mut off = 0usize;
        let mut pidfd: Option<OwnedFd> = None;
        while off + HDR <= c.len() {
            // SAFETY: bounds checked above; unaligned read of a plain struct.
            let h: libc::cmsghdr = unsafe { std::ptr::read_unaligned(c.as_ptr().add(off).cast()) };
            let len = h.cmsg_len;
            if len < HDR || off + len > c.len() {
                return Err(libc::EINVAL);
            }
            let (level, ty) = (h.cmsg_level, h.cmsg_type);
            let reroute = (level == libc::IPPROTO_IP
                && (ty == libc::IP_RETOPTS || ty == libc::IP_OPTIONS))
                || (level == libc::IPPROTO_IPV6
                    && (ty == libc::IPV6_RTHDR || ty == 5 /* IPV6_2292RTHDR */ || ty == 6/* IPV6_2292PKTOPTIONS */));
            // A chosen outgoing interface sends even 127.0.0.1 out of a real
            // device (there is no egress check behind this enforcer).
            let data = &c[off + HDR..off + len];
            let ifindex_at = |at: usize| {
                data.get(at..at + 4)
                    .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                    .unwrap_or(0)
            };
            let forced_if = (level == libc::IPPROTO_IP
                && ty == libc::IP_PKTINFO
                && ifindex_at(0) != 0)
                || (level == libc::IPPROTO_IPV6 && ty == libc::IPV6_PKTINFO && ifindex_at(16) != 0);
            if reroute || forced_if {
                self.event_sockopt(n, hook, level, ty);
                return Err(libc::EPERM);
            }
            if level == libc::SOL_SOCKET && ty == libc::SCM_CREDENTIALS {
                // The kernel lets a process name only itself (D-Bus clients
                // do, on every connection); we check that as it would for
                // the target, then drop it: the send is made with the
                // target's credentials stamped by us (root) or by a child
                // of ours (unprivileged), never with a forged pid.
                let status = std::fs::read_to_string(format!("/proc/{}/status", n.pid))
                    .map_err(|_| libc::ESRCH)?;
                if !identity::ucred_names_itself(&status, data) {
                    self.event_sockopt(n, hook, level, ty);
                    return Err(libc::EPERM);
                }
                let end = (off + ((len + 7) & !7)).min(c.len());
                c.drain(off..end);
                continue;
            }
            if level == libc::SOL_SOCKET && ty == libc::SCM_RIGHTS {
                if pidfd.is_none() {
                    pidfd = Some(notify::pidfd_for_thread(n.pid).map_err(|_| libc::ESRCH)?);
                }
                let Some(p) = pidfd.as_ref() else {
                    return Err(libc::ESRCH);
                };
                let mut i = off + HDR;
                while i + 4 <= off + len {
                    let theirs = i32::from_ne_bytes([c[i], c[i + 1], c[i + 2], c[i + 3]]);
                    let ours = notify::grab_fd(p.as_fd(), theirs).map_err(errno)?;
                    c[i..i + 4].copy_from_slice(&ours.as_raw_fd().to_ne_bytes());
                    fds.push(ours);
                    i += 4;
                }
            }
            // CMSG_ALIGN
            off += (len + 7) & !7;
        }
        if !notify::id_valid(self.listener.as_fd(), n.id) {
            return Err(libc::ESRCH);
        }
        Ok((c, fds))
    }

    /// A denial by this supervisor, with the socket fields left empty.
    fn denial(&self, n: &Notif, hook: &'static str, reason: &'static str) -> EventRecord {
        EventRecord {
            ts: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
            sandbox: self.sandbox.clone(),
            source: "seccomp",
            hook,
            verdict: "deny",
            reason,
            pid: n.pid,
            tgid: tgid_of(n.pid).unwrap_or(n.pid),
            comm: comm_of(n.pid),
            cgroup_id: 0,
            family: None,
            sock_type: None,
            protocol: None,
            level: None,
            optname: None,
            addr: None,
            port: None,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn event(
        &self,
        n: &Notif,
        hook: &'static str,
        family: u32,
        ty: Option<u32>,
        proto: Option<u32>,
        dest: Option<&Dest>,
        reason: &'static str,
    ) {
        let rec = EventRecord {
            family: Some(crate::events::family_name(family)),
            sock_type: ty.map(crate::events::type_name),
            protocol: proto,
            addr: dest.map(|d| crate::events::addr_string(&d.addr)),
            port: dest.map(|d| d.port),
            ..self.denial(n, hook, reason)
        };
        let _ = self.events.send(rec.into_line());
    }

    fn event_sockopt(&self, n: &Notif, hook: &'static str, level: i32, optname: i32) {
        let reason = refused_option(level, optname)
            .map(|e| e.reason.name())
            .unwrap_or("routing-option-not-allowed");
        let rec = EventRecord {
            level: Some(level),
            optname: Some(optname),
            ..self.denial(n, hook, reason)
        };
        let _ = self.events.send(rec.into_line());
    }
}

fn errno(e: io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EINVAL)
}

fn sockopt_int(fd: BorrowedFd<'_>, level: i32, name: i32) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid fd and out-pointers sized for an int.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

/// The path a sockaddr_un names, as the target would resolve it: absolute
/// paths through /proc/PID/root (its root and mount namespace), relative
/// ones through /proc/PID/cwd. Only opened with O_PATH, never put back in a
/// sockaddr, so its length is not limited to sun_path.
fn unix_path_for(pid: u32, addr: Vec<u8>) -> Vec<u8> {
    let path = &addr[2..];
    let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
    let base = if path.first() == Some(&b'/') {
        format!("/proc/{pid}/root")
    } else {
        format!("/proc/{pid}/cwd/")
    };
    let mut out = addr[..2].to_vec();
    out.extend_from_slice(base.as_bytes());
    out.extend_from_slice(&path[..end]);
    out.push(0);
    out
}

/// Opens (O_PATH) the socket a path-named sockaddr_un names (already
/// rewritten to go through /proc/PID/root or /proc/PID/cwd) and returns it
/// with its (device, inode), or the errno the kernel would give.
fn open_unix_path(addr: &[u8]) -> Result<(OwnedFd, (u64, u64)), i32> {
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _};
    let path = addr.get(2..).ok_or(libc::EINVAL)?;
    let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(std::path::Path::new(std::ffi::OsStr::from_bytes(
            &path[..end],
        )))
        .map_err(errno)?;
    let m = f.metadata().map_err(errno)?;
    if !m.file_type().is_socket() {
        return Err(libc::ECONNREFUSED);
    }
    Ok((OwnedFd::from(f), (m.dev(), m.ino())))
}

fn tgid_of(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

fn comm_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_default()
}

/// The target's socket, held by us.
struct Sock {
    fd: OwnedFd,
    domain: u32,
    /// `SO_TYPE` (0 if unknown).
    ty: u32,
    /// O_PATH descriptors of unix socket paths judged for this operation,
    /// kept open until it is performed.
    pinned: std::sync::Mutex<Vec<OwnedFd>>,
    /// The target's credentials when the agent is root: the operation is
    /// performed with them.
    creds: Option<Creds>,
}

impl Sock {
    fn nonblocking(&self) -> bool {
        // SAFETY: F_GETFL on a valid fd.
        let fl = unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_GETFL) };
        fl >= 0 && fl & libc::O_NONBLOCK != 0
    }
}

struct Msg {
    name: Option<Vec<u8>>,
    data: Vec<u8>,
    control: Vec<u8>,
    /// Our copies of SCM_RIGHTS descriptors, kept open until sent.
    _fds: Vec<OwnedFd>,
}

struct SendMsgOp {
    sock: Sock,
    msgs: Vec<Msg>,
    flags: i32,
    many: bool,
}

enum Work {
    Reply(Result<i64, i32>),
    /// Let the target's own call proceed (see `prepare_bind`).
    Continue,
    Perform(Op),
}

enum Op {
    Connect {
        sock: Sock,
        addr: Vec<u8>,
    },
    Bind {
        sock: Sock,
        addr: Vec<u8>,
    },
    Listen {
        sock: Sock,
        backlog: i32,
        /// Bind here first (an unbound socket without the inbound filter).
        bind_first: Option<Vec<u8>>,
    },
    SendTo {
        sock: Sock,
        data: Vec<u8>,
        flags: i32,
        addr: Vec<u8>,
    },
    SendMsg(Box<SendMsgOp>),
}

impl Op {
    fn wants_sigpipe(&self) -> bool {
        match self {
            Op::Connect { .. } | Op::Bind { .. } | Op::Listen { .. } => false,
            Op::SendTo { flags, .. } => flags & libc::MSG_NOSIGNAL == 0,
            Op::SendMsg(m) => m.flags & libc::MSG_NOSIGNAL == 0,
        }
    }

    fn may_block(&self) -> bool {
        let (sock, flags) = match self {
            Op::Connect { sock, .. } => (sock, 0),
            Op::Bind { .. } | Op::Listen { .. } => return false,
            Op::SendTo { sock, flags, .. } => (sock, *flags),
            Op::SendMsg(m) => (&m.sock, m.flags),
        };
        !(sock.nonblocking() || flags & libc::MSG_DONTWAIT != 0)
    }

    /// A unix `sendto`/`sendmsg`/`sendmmsg` made by a child process (see
    /// [`identity::in_child`]); a datagram goes whole or not at all, so one
    /// child per message reports what it sent.
    fn send_in_child(&self) -> Result<i64, i32> {
        match self {
            Op::SendTo {
                sock,
                data,
                flags,
                addr,
            } => {
                let fd = sock.fd.as_fd();
                let flags = flags | libc::MSG_NOSIGNAL;
                identity::in_child(None, &|| send_one(fd, Some(addr), data, &[], flags))
            }
            Op::SendMsg(op) => {
                let fd = op.sock.fd.as_fd();
                let flags = op.flags | libc::MSG_NOSIGNAL;
                let mut sent = 0i64;
                for (i, m) in op.msgs.iter().enumerate() {
                    let r = identity::in_child(None, &|| {
                        send_one(fd, m.name.as_deref(), &m.data, &m.control, flags)
                    });
                    match r {
                        Ok(_) if op.many => sent += 1,
                        Ok(n) => sent = n,
                        Err(e) => return if op.many && i > 0 { Ok(sent) } else { Err(e) },
                    }
                }
                Ok(sent)
            }
            _ => Err(libc::EINVAL),
        }
    }

    fn sock(&self) -> &Sock {
        match self {
            Op::Connect { sock, .. }
            | Op::Bind { sock, .. }
            | Op::Listen { sock, .. }
            | Op::SendTo { sock, .. } => sock,
            Op::SendMsg(m) => &m.sock,
        }
    }

    /// Performs the operation on the target's socket with the copied data,
    /// with the target's credentials and capabilities when the agent is
    /// root: a unix peer sees the target's uid and gid (and, on sends, its
    /// pid), socket permissions are checked against the target, and
    /// capability-gated control messages (`SO_MARK`, IPv6 hop-by-hop
    /// options) are refused as they would be for the target.
    fn perform(self) -> Result<i64, i32> {
        let sock = self.sock();
        // A unix send says who sent it with an explicit SCM_CREDENTIALS
        // naming the target: the kernel would otherwise stamp the agent's
        // pid. Naming another process's pid needs CAP_SYS_ADMIN, the only
        // capability added for that call.
        let unix_send =
            sock.domain == consts::AF_UNIX && matches!(self, Op::SendTo { .. } | Op::SendMsg(_));
        let extra = match (&sock.creds, unix_send) {
            (Some(_), true) => 1u64 << CAP_SYS_ADMIN,
            _ => 0,
        };
        let creds_cmsg = match (&sock.creds, unix_send) {
            (Some(c), true) => Some(c.scm_credentials()),
            _ => None,
        };
        // A unix connect, and an unprivileged agent's unix sends (it cannot
        // stamp the target's pid), are made by a child process: see
        // `identity::in_child`. Everything the child touches is prepared
        // here, before the fork.
        let unix = sock.domain == consts::AF_UNIX;
        if let (Op::Connect { sock, addr }, true) = (&self, unix) {
            let fd = sock.fd.as_raw_fd();
            return identity::in_child(sock.creds.as_ref(), &|| {
                // SAFETY: addr is a buffer of addr.len() bytes.
                let r = unsafe {
                    libc::connect(fd, addr.as_ptr().cast(), addr.len() as libc::socklen_t)
                };
                r as isize
            });
        }
        if unix_send && sock.creds.is_none() {
            return self.send_in_child();
        }
        let _as = Identity::assume_opt(sock.creds.as_ref(), extra)?;
        let ret = |r: isize| {
            if r < 0 {
                Err(io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EIO))
            } else {
                Ok(r as i64)
            }
        };
        match &self {
            Op::Connect { sock, addr } => {
                // SAFETY: addr is a buffer of addr.len() bytes.
                let r = unsafe {
                    libc::connect(
                        sock.fd.as_raw_fd(),
                        addr.as_ptr().cast(),
                        addr.len() as libc::socklen_t,
                    )
                };
                ret(r as isize)
            }
            Op::Bind { sock, addr } => {
                // SAFETY: addr is a buffer of addr.len() bytes.
                let r = unsafe {
                    libc::bind(
                        sock.fd.as_raw_fd(),
                        addr.as_ptr().cast(),
                        addr.len() as libc::socklen_t,
                    )
                };
                ret(r as isize)
            }
            Op::Listen {
                sock,
                backlog,
                bind_first,
            } => {
                if let Some(addr) = bind_first {
                    // SAFETY: addr is a buffer of addr.len() bytes.
                    let r = unsafe {
                        libc::bind(
                            sock.fd.as_raw_fd(),
                            addr.as_ptr().cast(),
                            addr.len() as libc::socklen_t,
                        )
                    };
                    if r != 0 {
                        return ret(r as isize);
                    }
                }
                // SAFETY: listen on a valid fd.
                let r = unsafe { libc::listen(sock.fd.as_raw_fd(), *backlog) };
                ret(r as isize)
            }
            Op::SendTo {
                sock,
                data,
                flags,
                addr,
            } => ret(send_one(
                sock.fd.as_fd(),
                Some(addr),
                data,
                &with_cmsg(&[], creds_cmsg.as_deref()),
                flags | libc::MSG_NOSIGNAL,
            )),
            Op::SendMsg(op) => {
                let mut sent = 0i64;
                for (i, m) in op.msgs.iter().enumerate() {
                    let control = with_cmsg(&m.control, creds_cmsg.as_deref());
                    let r = send_one(
                        op.sock.fd.as_fd(),
                        m.name.as_deref(),
                        &m.data,
                        &control,
                        op.flags | libc::MSG_NOSIGNAL,
                    );
                    if r < 0 {
                        let e = io::Error::last_os_error()
                            .raw_os_error()
                            .unwrap_or(libc::EIO);
                        return if op.many && i > 0 { Ok(sent) } else { Err(e) };
                    }
                    if op.many {
                        sent += 1;
                    } else {
                        sent = r as i64;
                    }
                }
                Ok(sent)
            }
        }
    }
}

/// `CAP_SYS_ADMIN`'s bit number.
const CAP_SYS_ADMIN: u32 = 21;

/// `control` with `extra` (an already aligned cmsg) appended.
fn with_cmsg(control: &[u8], extra: Option<&[u8]>) -> Vec<u8> {
    let mut c = control.to_vec();
    if let Some(x) = extra {
        // CMSG_ALIGN the existing part first.
        c.resize((c.len() + 7) & !7, 0);
        c.extend_from_slice(x);
    }
    c
}

/// One `sendmsg` of our own buffers.
fn send_one(
    fd: BorrowedFd<'_>,
    name: Option<&[u8]>,
    data: &[u8],
    control: &[u8],
    flags: i32,
) -> isize {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: zeroed msghdr, then every pointer set to our own buffers,
    // valid for the call.
    let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
    if let Some(name) = name {
        h.msg_name = name.as_ptr() as *mut libc::c_void;
        h.msg_namelen = name.len() as libc::socklen_t;
    }
    h.msg_iov = &mut iov;
    h.msg_iovlen = 1;
    if !control.is_empty() {
        h.msg_control = control.as_ptr() as *mut libc::c_void;
        h.msg_controllen = control.len();
    }
    // SAFETY: h describes valid buffers.
    unsafe { libc::sendmsg(fd.as_raw_fd(), &h, flags) }
}

/// The local (bind) address a sockaddr names for a socket of `domain`, or
/// None when the kernel will refuse it for that socket anyway. An `AF_INET`
/// socket also takes `AF_UNSPEC` (as `INADDR_ANY` only).
fn inet_dest(domain: u32, addr: &[u8]) -> Option<Dest> {
    let family = u16::from_ne_bytes([*addr.first()?, *addr.get(1)?]) as u32;
    if domain == consts::AF_INET
        && (family == consts::AF_INET || family == libc::AF_UNSPEC as u32)
        && addr.len() >= 16
    {
        return Some(Dest::v4(
            [addr[4], addr[5], addr[6], addr[7]],
            u16::from_be_bytes([addr[2], addr[3]]),
        ));
    }
    if domain == consts::AF_INET6 && family == consts::AF_INET6 && addr.len() >= 24 {
        let mut o = [0u8; 16];
        o.copy_from_slice(&addr[8..24]);
        return Some(Dest::v6(o, u16::from_be_bytes([addr[2], addr[3]])));
    }
    None
}

/// The same sockaddr (family, port, v6 flow info and scope) with the
/// loopback address of its family in place of the wildcard: 127.0.0.1,
/// ::1, or ::ffff:127.0.0.1 for the v4-mapped wildcard.
fn loopback_of(addr: &[u8]) -> Vec<u8> {
    let mut a = addr.to_vec();
    let family = u16::from_ne_bytes([a[0], a[1]]) as u32;
    if family == consts::AF_INET6 && a.len() >= 24 {
        if a[8..20] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] {
            a[20..24].copy_from_slice(&[127, 0, 0, 1]);
        } else {
            a[8..24].copy_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
        }
    } else if a.len() >= 8 {
        // AF_INET (or AF_UNSPEC, which an inet socket binds as AF_INET).
        a[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        a[4..8].copy_from_slice(&[127, 0, 0, 1]);
    }
    a
}

/// `getsockname` of our copy of a socket.
fn local_name(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut buf = [0u8; 128];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buf has room for `len` bytes.
    let r = unsafe { libc::getsockname(fd.as_raw_fd(), buf.as_mut_ptr().cast(), &mut len) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(buf[..(len as usize).min(buf.len())].to_vec())
}
