//! Performing a judged operation on the supervisor's copy of the target's
//! socket, with the data copied out of the target, and the types that carry
//! it from judging to performing.

use nono_common::consts;
use std::io;
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd};

use crate::enforcer::seccomp::identity::{self, Creds, Identity};

/// The target's socket, held by us.
pub(super) struct Sock {
    pub(super) fd: OwnedFd,
    pub(super) domain: u32,
    /// `SO_TYPE` (0 if unknown).
    pub(super) ty: u32,
    /// O_PATH descriptors of unix socket paths judged for this operation,
    /// kept open until it is performed.
    pub(super) pinned: std::sync::Mutex<Vec<OwnedFd>>,
    /// The target's credentials when the agent is root: the operation is
    /// performed with them.
    pub(super) creds: Option<Creds>,
}

impl Sock {
    pub(super) fn nonblocking(&self) -> bool {
        // SAFETY: F_GETFL on a valid fd.
        let fl = unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_GETFL) };
        fl >= 0 && fl & libc::O_NONBLOCK != 0
    }
}

pub(super) struct Msg {
    pub(super) name: Option<Vec<u8>>,
    pub(super) data: Vec<u8>,
    pub(super) control: Vec<u8>,
    /// Our copies of SCM_RIGHTS descriptors, kept open until sent.
    pub(super) _fds: Vec<OwnedFd>,
}

pub(super) struct SendMsgOp {
    pub(super) sock: Sock,
    pub(super) msgs: Vec<Msg>,
    pub(super) flags: i32,
    pub(super) many: bool,
}

pub(super) enum Work {
    Reply(Result<i64, i32>),
    /// Let the target's own call proceed (see `prepare_bind`).
    Continue,
    Perform(Op),
}

/// Transparent mode: a redirected connect's original destination, to be
/// recorded (by the socket's local end) before the connect is made.
pub(super) struct Record {
    pub(super) original: std::net::SocketAddr,
    pub(super) into: std::sync::Arc<crate::transparent::Dialled>,
}

impl Record {
    /// Binds an unbound socket to loopback (port 0: the kernel picks, as
    /// its autobind would) so that its local port is known, then records.
    /// Recording before the connect means the proxy, which can accept as
    /// soon as the handshake completes, always finds the record.
    fn bind_and_record(&self, fd: BorrowedFd<'_>, to: &[u8]) -> Result<std::net::SocketAddr, i32> {
        let mut name = local_name(fd).map_err(errno)?;
        if port_of(&name) == Some(0) {
            let mut local = super::super::judge::loopback_of(to);
            if local.len() >= 4 {
                local[2..4].copy_from_slice(&[0, 0]);
            }
            if with_addr(libc::bind, fd, &local) != 0 {
                return Err(errno(io::Error::last_os_error()));
            }
            name = local_name(fd).map_err(errno)?;
        }
        let mut local = sockaddr_to_std(&name).ok_or(libc::EINVAL)?;
        // Bound to the wildcard: the connection to the listener comes from
        // the listener's own (loopback) address.
        if local.ip().is_unspecified() {
            if let Some(l) = sockaddr_to_std(to) {
                local.set_ip(l.ip());
            }
        }
        self.into.record(local, self.original);
        Ok(local)
    }
}

/// The port of an inet sockaddr.
fn port_of(a: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*a.get(2)?, *a.get(3)?]))
}

/// An inet sockaddr as a socket address.
fn sockaddr_to_std(a: &[u8]) -> Option<std::net::SocketAddr> {
    let family = u16::from_ne_bytes([*a.first()?, *a.get(1)?]) as i32;
    let port = port_of(a)?;
    match family {
        libc::AF_INET => {
            let o: [u8; 4] = a.get(4..8)?.try_into().ok()?;
            Some(std::net::SocketAddr::from((o, port)))
        }
        libc::AF_INET6 => {
            let o: [u8; 16] = a.get(8..24)?.try_into().ok()?;
            Some(std::net::SocketAddr::from((o, port)))
        }
        _ => None,
    }
}

pub(super) enum Op {
    Connect {
        sock: Sock,
        addr: Vec<u8>,
        /// Transparent mode: record where it really dialled first.
        record: Option<Record>,
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
    pub(super) fn wants_sigpipe(&self) -> bool {
        match self {
            Op::Connect { .. } | Op::Bind { .. } | Op::Listen { .. } => false,
            Op::SendTo { flags, .. } => flags & libc::MSG_NOSIGNAL == 0,
            Op::SendMsg(m) => m.flags & libc::MSG_NOSIGNAL == 0,
        }
    }

    pub(super) fn may_block(&self) -> bool {
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
    pub(super) fn perform(self) -> Result<i64, i32> {
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
        if let (Op::Connect { sock, addr, .. }, true) = (&self, unix) {
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
            Op::Connect { sock, addr, record } => {
                let recorded = match record {
                    Some(r) => Some((r, r.bind_and_record(sock.fd.as_fd(), addr)?)),
                    None => None,
                };
                let result = ret(with_addr(libc::connect, sock.fd.as_fd(), addr));
                // A connect that failed (not merely in progress) never
                // reaches the proxy: its record must not wait for another.
                if let (Err(e), Some((r, local))) = (&result, recorded) {
                    if *e != libc::EINPROGRESS && *e != libc::EALREADY && *e != libc::EINTR {
                        r.into.forget(local);
                    }
                }
                result
            }
            Op::Bind { sock, addr } => ret(with_addr(libc::bind, sock.fd.as_fd(), addr)),
            Op::Listen {
                sock,
                backlog,
                bind_first,
            } => {
                if let Some(addr) = bind_first {
                    let r = with_addr(libc::bind, sock.fd.as_fd(), addr);
                    if r != 0 {
                        return ret(r);
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

/// `connect` or `bind` (`call`) of our copy of a socket to `addr`.
fn with_addr(
    call: unsafe extern "C" fn(libc::c_int, *const libc::sockaddr, libc::socklen_t) -> libc::c_int,
    fd: BorrowedFd<'_>,
    addr: &[u8],
) -> isize {
    // SAFETY: a valid fd, and addr is a buffer of addr.len() bytes for the
    // duration of the call.
    unsafe {
        call(
            fd.as_raw_fd(),
            addr.as_ptr().cast(),
            addr.len() as libc::socklen_t,
        ) as isize
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
        // `as _`: socklen_t on musl, size_t on glibc.
        h.msg_controllen = control.len() as _;
    }
    // SAFETY: h describes valid buffers.
    unsafe { libc::sendmsg(fd.as_raw_fd(), &h, flags) }
}

pub(super) fn errno(e: io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EINVAL)
}

pub(super) fn sockopt_int(fd: BorrowedFd<'_>, level: i32, name: i32) -> io::Result<i32> {
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

/// `getsockname` of our copy of a socket.
pub(super) fn local_name(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut buf = [0u8; 128];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buf has room for `len` bytes.
    let r = unsafe { libc::getsockname(fd.as_raw_fd(), buf.as_mut_ptr().cast(), &mut len) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(buf[..(len as usize).min(buf.len())].to_vec())
}
