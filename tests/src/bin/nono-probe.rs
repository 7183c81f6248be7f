//! `nono-probe`: performs exactly one network-escape attempt and prints one
//! JSON line describing what the *client side* saw:
//!
//! ```text
//! {"vector":"tcp4","ok":false,"errno":1,"detail":"connect: ...", ...}
//! ```
//!
//! `ok` means the syscalls of the attempt succeeded, i.e. the packet could have
//! left the machine.  The probe is not trusted by the tests: the server-side
//! oracle decides whether anything leaked.  Extra keys (`pid`, `sandbox`,
//! `cgroup`, `pin_dir`, `enforcer` = NONO_ENFORCER, `uid`, `marker`,
//! `steps`) help the tests correlate and diagnose. `pid` is the probe's pid
//! in its own pid namespace (2 under a privileged agent), not the host's.
//!
//! Usage: `nono-probe VECTOR [--target ADDR] [--port N] [--id N] [--iface NAME]
//! [--tag TAG] [--count N] [--pidfile PATH] [--sleep SECS]
//! [--proxy-endpoint ADDR:PORT] [--bytes N] [--marker M] [...]`.  Unknown
//! `--key value` pairs are accepted and ignored: the tests pass a unique
//! `--marker` so that every process of a run (forks inherit the command
//! line) can be found from the host. Exit code 0 whenever the attempt was
//! made (whatever its outcome), 2 on usage errors.
//!
//! Routing-option vectors (`srh6-*`, `rh2-*`, `lsrr4-*`, `ssrr4-*`) name
//! loopback port `--port` and route through `--target`; they add
//! `"refused_at"` (the step that rejected the option, or null).
//! `int80-socketcall` / `int80-socket` connect with i386 system calls
//! (`int 0x80`: socketcall(SYS_CONNECT), or socket + connect).
//! `steal-fds` takes its parent's descriptors with pidfd_getfd and uses
//! them (`--use links|cgroup|listener|all`: detach BPF links, write
//! ancestors' cgroup.procs through a cgroup directory, answer its own
//! seccomp notifications with "continue").
//!
//! Modes that are not one attempt: `race-sockaddr` (a sockaddr flipped
//! between loopback and `--target:--deny-port` under connecting threads),
//! `parallel-connect` (`--count` simultaneous loopback connects),
//! `signal-storm` (SIGURG every `--signal-us` to threads doing loopback
//! echo and UDP round trips plus a denied connect), `scm-rights` (fd passing
//! over unix socketpairs), `connect-loop` (connects every `--interval-ms`,
//! logging to `--logdir`, for a test that kills the agent meanwhile).
//! `hold-nocaps` is not a vector: it drops every capability (bounding,
//! ambient, effective, permitted, inheritable), stays uid 0 and sleeps.
//!
//! For the channel battery (`tests/tests/channels.rs`): `listen-serve` (a
//! TCP listener that writes `--secret` to every connection, or with
//! `--backlog 0 --accept 0 --mss N` one whose full queue makes the kernel
//! answer with SYN cookies; `ready.json` / `stop` in `--logdir`),
//! `udp-serve` (a UDP socket that records what it receives),
//! `bind-check` (TCP and UDP binds to `--addrs`), `bulk-hold` (queue up to
//! `--bytes` on a connection that is not read, then exit),
//! `bindtodevice-loopback4` / `bindtodevice-lo` (device-bound sends to
//! 127.0.0.1), `mcast-join` (one membership option, `--how`),
//! `unix-dgram-send` / `unix-stream-creds` (unix sends whose receiver
//! checks the credentials), `udp-cap-cmsg` (`SO_MARK` / IPv6 hop-by-hop
//! control messages) and `loopback-selftest` (servers and clients on
//! loopback in one process). The result line also carries `gid`.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::io::{self, Read, Write};
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::exit;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const PAYLOAD: &[u8] = b"nono-probe payload";
const IPPROTO_MPTCP: libc::c_int = 262;
const ETHERTYPE_TAG: u16 = 0x88B5;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Every vector the probe knows, for `--list` and usage errors.
const VECTORS: &[&str] = &[
    "tcp4",
    "tcp6",
    "tcp-v4mapped",
    "tcp-nonblock",
    "udp-sendto",
    "udp-sendmsg",
    "udp-sendmmsg",
    "udp-connect-send",
    "udp-connected-sendto",
    "udp6-sendto",
    "v4mapped-udp-sendto",
    "tcp-fastopen",
    "io-uring-connect",
    "io-uring-sendmsg",
    "raw-socket",
    "raw6-socket",
    "af-packet",
    "ping-socket",
    "ping6-socket",
    "mptcp",
    "daemonize",
    "sub-cgroup",
    "parent-cgroup",
    "detach-bpf",
    "kill-agent",
    "loopback4",
    "loopback6",
    "loopback-v4mapped",
    "loopback-127-0-0-2",
    "proxy",
    "srh6-udp-sockopt",
    "srh6-tcp-sockopt",
    "srh6-udp-connect-send",
    "srh6-udp-cmsg",
    "srh6-udp-pktoptions",
    "rh2-udp-sockopt",
    "lsrr4-tcp-sockopt",
    "lsrr4-udp-sockopt",
    "ssrr4-udp-sockopt",
    "lsrr4-udp-cmsg",
    "lsrr4-udp-connected-cmsg",
    "unicast-if-loopback4",
    "pktinfo-loopback4",
    "udp-connected-cmsg-tos",
    "udp6-connected-cmsg-tclass",
    "udp-proxy-send",
    "tcp-proxy-bulk",
    "proc-root-cgroup",
    "int80-socketcall",
    "int80-socket",
    "udp-sendmsg-cmsg-tos",
    "udp6-sendmsg-cmsg-tclass",
    "connect-loop",
    "race-sockaddr",
    "parallel-connect",
    "signal-storm",
    "scm-rights",
    "steal-fds",
    "hold-nocaps",
    "listen-serve",
    "bind-check",
    "bulk-hold",
    "bindtodevice-loopback4",
    "bindtodevice-lo",
    "mcast-join",
    "unix-dgram-send",
    "unix-stream-creds",
    "udp-cap-cmsg",
    "loopback-selftest",
    "udp-serve",
];

// ---------------------------------------------------------------------------
// Results

#[derive(Debug, Clone)]
struct Attempt {
    ok: bool,
    errno: Option<i32>,
    detail: String,
}

impl Attempt {
    fn success(detail: impl Into<String>) -> Self {
        Attempt {
            ok: true,
            errno: None,
            detail: detail.into(),
        }
    }

    fn fail(what: &str, err: &io::Error) -> Self {
        Attempt {
            ok: false,
            errno: err.raw_os_error(),
            detail: format!("{what}: {err}"),
        }
    }

    fn last_os(what: &str) -> Self {
        Self::fail(what, &io::Error::last_os_error())
    }

    fn to_json(&self, name: &str) -> Value {
        json!({"name": name, "ok": self.ok, "errno": self.errno, "detail": self.detail})
    }
}

struct Steps(Vec<Value>);

impl Steps {
    fn push(&mut self, name: &str, a: &Attempt) {
        self.0.push(a.to_json(name));
    }
}

fn errno_of(rc: libc::c_long) -> Result<libc::c_long, io::Error> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    errno_of(rc as libc::c_long).map(|v| v as libc::c_int)
}

// ---------------------------------------------------------------------------
// Arguments

struct Args {
    vector: String,
    opts: HashMap<String, String>,
}

impl Args {
    fn parse() -> Args {
        let mut it = std::env::args().skip(1);
        let vector = match it.next() {
            Some(v) if v == "--list" => {
                for v in VECTORS {
                    println!("{v}");
                }
                exit(0);
            }
            Some(v) => v,
            None => usage("missing VECTOR"),
        };
        let mut opts = HashMap::new();
        while let Some(k) = it.next() {
            let Some(key) = k.strip_prefix("--") else {
                usage(&format!("unexpected argument {k:?}"));
            };
            let Some(val) = it.next() else {
                usage(&format!("--{key} needs a value"));
            };
            opts.insert(key.to_string(), val);
        }
        Args { vector, opts }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.opts.get(key).map(String::as_str)
    }

    fn req(&self, key: &str) -> &str {
        self.get(key)
            .unwrap_or_else(|| usage(&format!("vector {} needs --{key}", self.vector)))
    }

    fn num<T: std::str::FromStr>(&self, key: &str, default: Option<T>) -> T {
        match self.get(key) {
            Some(v) => v
                .parse()
                .unwrap_or_else(|_| usage(&format!("--{key}: bad number {v:?}"))),
            None => {
                default.unwrap_or_else(|| usage(&format!("vector {} needs --{key}", self.vector)))
            }
        }
    }

    fn target(&self) -> IpAddr {
        let t = self.req("target");
        t.parse()
            .unwrap_or_else(|_| usage(&format!("--target: bad address {t:?}")))
    }

    fn port(&self) -> u16 {
        self.num("port", None)
    }

    fn target_sa(&self) -> SocketAddr {
        SocketAddr::new(self.target(), self.port())
    }
}

fn usage(msg: &str) -> ! {
    eprintln!("nono-probe: {msg}");
    eprintln!(
        "usage: nono-probe VECTOR [--target ADDR] [--port N] [--id N] [--iface NAME] [--tag TAG] \
         [--count N] [--pidfile PATH] [--sleep SECS] [--proxy-endpoint ADDR:PORT] [--bytes N]"
    );
    eprintln!("vectors: {}", VECTORS.join(" "));
    exit(2);
}

// ---------------------------------------------------------------------------
// Socket helpers

fn map_v4(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
        v6 => v6,
    }
}

/// Raw sockaddr storage for a `SocketAddr` (AF_INET or AF_INET6 by address type).
fn sockaddr(sa: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match sa {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in, sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in6, sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn family(ip: &IpAddr) -> libc::c_int {
    match ip {
        IpAddr::V4(_) => libc::AF_INET,
        IpAddr::V6(_) => libc::AF_INET6,
    }
}

fn socket(domain: libc::c_int, ty: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; on success we own the descriptor.
    let fd = cvt(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) })?;
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_timeouts(fd: RawFd, d: Duration) {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    for opt in [libc::SO_SNDTIMEO, libc::SO_RCVTIMEO] {
        // SAFETY: valid pointer/length for a timeval option.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                &tv as *const _ as *const libc::c_void,
                mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
    }
}

fn connect_fd(fd: RawFd, sa: &SocketAddr) -> io::Result<()> {
    let (ss, len) = sockaddr(sa);
    // SAFETY: ss/len describe a valid sockaddr.
    cvt(unsafe { libc::connect(fd, &ss as *const _ as *const libc::sockaddr, len) }).map(|_| ())
}

fn sendto_fd(fd: RawFd, buf: &[u8], flags: libc::c_int, sa: &SocketAddr) -> io::Result<usize> {
    let (ss, len) = sockaddr(sa);
    // SAFETY: valid buffer and sockaddr.
    let n = unsafe {
        libc::sendto(
            fd,
            buf.as_ptr() as *const libc::c_void,
            buf.len(),
            flags,
            &ss as *const _ as *const libc::sockaddr,
            len,
        )
    };
    errno_of(n as libc::c_long).map(|n| n as usize)
}

fn send_fd(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: valid buffer.
    let n = unsafe { libc::send(fd, buf.as_ptr() as *const libc::c_void, buf.len(), 0) };
    errno_of(n as libc::c_long).map(|n| n as usize)
}

/// Blocking TCP (or MPTCP) connect with a timeout, then send a small payload.
fn tcp_connect(sa: SocketAddr, proto: libc::c_int) -> Attempt {
    let fd = match socket(family(&sa.ip()), libc::SOCK_STREAM, proto) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    set_timeouts(fd.as_raw_fd(), CONNECT_TIMEOUT);
    if let Err(e) = connect_fd(fd.as_raw_fd(), &sa) {
        return Attempt::fail(&format!("connect {sa}"), &e);
    }
    let _ = send_fd(fd.as_raw_fd(), PAYLOAD);
    Attempt::success(format!("connected to {sa}"))
}

fn tcp_nonblock(sa: SocketAddr) -> Attempt {
    let fd = match socket(family(&sa.ip()), libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    match connect_fd(fd.as_raw_fd(), &sa) {
        Ok(()) => return Attempt::success(format!("connected immediately to {sa}")),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Attempt::fail(&format!("connect {sa}"), &e),
    }
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, CONNECT_TIMEOUT.as_millis() as libc::c_int) };
    if n < 0 {
        return Attempt::last_os("poll");
    }
    if n == 0 {
        return Attempt {
            ok: false,
            errno: Some(libc::ETIMEDOUT),
            detail: "EINPROGRESS, then poll timed out (SYN left?)".into(),
        };
    }
    let mut err: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid out pointers.
    unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            &mut err as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    if err != 0 {
        return Attempt::fail(
            "EINPROGRESS then SO_ERROR",
            &io::Error::from_raw_os_error(err),
        );
    }
    let _ = send_fd(fd.as_raw_fd(), PAYLOAD);
    Attempt::success(format!("non-blocking connect to {sa} completed"))
}

fn tcp_fastopen(sa: SocketAddr) -> Attempt {
    let fd = match socket(family(&sa.ip()), libc::SOCK_STREAM, 0) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    set_timeouts(fd.as_raw_fd(), CONNECT_TIMEOUT);
    match sendto_fd(fd.as_raw_fd(), PAYLOAD, libc::MSG_FASTOPEN, &sa) {
        Ok(n) => Attempt::success(format!("sendto(MSG_FASTOPEN) {sa} sent {n} bytes")),
        Err(e) => Attempt::fail(&format!("sendto(MSG_FASTOPEN) {sa}"), &e),
    }
}

fn udp_socket(ip: &IpAddr) -> io::Result<OwnedFd> {
    socket(family(ip), libc::SOCK_DGRAM, 0)
}

fn udp_sendto(sa: SocketAddr) -> Attempt {
    let fd = match udp_socket(&sa.ip()) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    match sendto_fd(fd.as_raw_fd(), PAYLOAD, 0, &sa) {
        Ok(n) => Attempt::success(format!("sendto {sa}: {n} bytes")),
        Err(e) => Attempt::fail(&format!("sendto {sa}"), &e),
    }
}

fn udp_sendmsg(sa: SocketAddr) -> Attempt {
    let fd = match udp_socket(&sa.ip()) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    let (mut ss, len) = sockaddr(&sa);
    let mut iov = libc::iovec {
        iov_base: PAYLOAD.as_ptr() as *mut libc::c_void,
        iov_len: PAYLOAD.len(),
    };
    // SAFETY: all-zero msghdr is valid; fields set below.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = &mut ss as *mut _ as *mut libc::c_void;
    msg.msg_namelen = len;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    // SAFETY: msg points to valid memory for the call's duration.
    let n = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, 0) };
    match errno_of(n as libc::c_long) {
        Ok(n) => Attempt::success(format!("sendmsg {sa}: {n} bytes")),
        Err(e) => Attempt::fail(&format!("sendmsg {sa}"), &e),
    }
}

fn udp_sendmmsg(sa: SocketAddr, count: usize) -> Attempt {
    let fd = match udp_socket(&sa.ip()) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    let (mut ss, len) = sockaddr(&sa);
    let mut iovs: Vec<libc::iovec> = (0..count)
        .map(|_| libc::iovec {
            iov_base: PAYLOAD.as_ptr() as *mut libc::c_void,
            iov_len: PAYLOAD.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            // SAFETY: all-zero mmsghdr is valid.
            let mut m: libc::mmsghdr = unsafe { mem::zeroed() };
            m.msg_hdr.msg_name = &mut ss as *mut _ as *mut libc::c_void;
            m.msg_hdr.msg_namelen = len;
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    // SAFETY: msgs/iovs/ss outlive the call.
    let n = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), count as libc::c_uint, 0) };
    match errno_of(n as libc::c_long) {
        Ok(n) if n > 0 => Attempt::success(format!("sendmmsg {sa}: {n}/{count} datagrams")),
        Ok(n) => Attempt {
            ok: false,
            errno: None,
            detail: format!("sendmmsg {sa}: {n}/{count} datagrams"),
        },
        Err(e) => Attempt::fail(&format!("sendmmsg {sa}"), &e),
    }
}

fn udp_connect_send(sa: SocketAddr) -> Attempt {
    let fd = match udp_socket(&sa.ip()) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    if let Err(e) = connect_fd(fd.as_raw_fd(), &sa) {
        return Attempt::fail(&format!("connect {sa}"), &e);
    }
    match send_fd(fd.as_raw_fd(), PAYLOAD) {
        Ok(n) => Attempt::success(format!("connect+send {sa}: {n} bytes")),
        Err(e) => Attempt::fail(&format!("send {sa}"), &e),
    }
}

/// Connect a UDP socket to an allowed address (the proxy endpoint if given,
/// else loopback), then override the destination with sendto(): the sendmsg
/// hook must still see the real target.
fn udp_connected_sendto(sa: SocketAddr, allowed: Option<SocketAddr>) -> Attempt {
    let fd = match udp_socket(&sa.ip()) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    let allowed = allowed.unwrap_or_else(|| match sa {
        SocketAddr::V4(_) => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 9),
        SocketAddr::V6(_) => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 9),
    });
    if let Err(e) = connect_fd(fd.as_raw_fd(), &allowed) {
        return Attempt::fail(&format!("connect {allowed} (should be allowed)"), &e);
    }
    match sendto_fd(fd.as_raw_fd(), PAYLOAD, 0, &sa) {
        Ok(n) => Attempt::success(format!("connected to {allowed}, sendto {sa}: {n} bytes")),
        Err(e) => Attempt::fail(&format!("sendto {sa} on socket connected to {allowed}"), &e),
    }
}

fn io_uring_connect(sa: SocketAddr) -> Attempt {
    use io_uring::{opcode, types, IoUring};
    let mut ring = match IoUring::new(8) {
        Ok(r) => r,
        Err(e) => return Attempt::fail("io_uring_setup", &e),
    };
    let fd = match socket(family(&sa.ip()), libc::SOCK_STREAM, 0) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    let (ss, len) = sockaddr(&sa);
    let ts = types::Timespec::new().sec(CONNECT_TIMEOUT.as_secs());
    let connect = opcode::Connect::new(
        types::Fd(fd.as_raw_fd()),
        &ss as *const _ as *const libc::sockaddr,
        len,
    )
    .build()
    .flags(io_uring::squeue::Flags::IO_LINK)
    .user_data(1);
    let timeout = opcode::LinkTimeout::new(&ts).build().user_data(2);
    // SAFETY: ss and ts outlive the submission (we wait for both completions).
    unsafe {
        let mut sq = ring.submission();
        if sq.push(&connect).is_err() || sq.push(&timeout).is_err() {
            return Attempt {
                ok: false,
                errno: None,
                detail: "submission queue full".into(),
            };
        }
    }
    if let Err(e) = ring.submit_and_wait(2) {
        return Attempt::fail("io_uring_enter", &e);
    }
    let mut res = None;
    for cqe in ring.completion() {
        if cqe.user_data() == 1 {
            res = Some(cqe.result());
        }
    }
    match res {
        Some(0) => {
            let _ = send_fd(fd.as_raw_fd(), PAYLOAD);
            Attempt::success(format!("IORING_OP_CONNECT {sa} succeeded"))
        }
        Some(r) => Attempt::fail(
            &format!("IORING_OP_CONNECT {sa}"),
            &io::Error::from_raw_os_error(-r),
        ),
        None => Attempt {
            ok: false,
            errno: None,
            detail: "no completion for IORING_OP_CONNECT".into(),
        },
    }
}

fn io_uring_sendmsg(sa: SocketAddr) -> Attempt {
    use io_uring::{opcode, types, IoUring};
    let mut ring = match IoUring::new(8) {
        Ok(r) => r,
        Err(e) => return Attempt::fail("io_uring_setup", &e),
    };
    let fd = match udp_socket(&sa.ip()) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    let (mut ss, len) = sockaddr(&sa);
    let mut iov = libc::iovec {
        iov_base: PAYLOAD.as_ptr() as *mut libc::c_void,
        iov_len: PAYLOAD.len(),
    };
    // SAFETY: all-zero msghdr is valid.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = &mut ss as *mut _ as *mut libc::c_void;
    msg.msg_namelen = len;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    let op = opcode::SendMsg::new(types::Fd(fd.as_raw_fd()), &msg)
        .build()
        .user_data(1);
    // SAFETY: msg/iov/ss outlive the wait below.
    if unsafe { ring.submission().push(&op) }.is_err() {
        return Attempt {
            ok: false,
            errno: None,
            detail: "submission queue full".into(),
        };
    }
    if let Err(e) = ring.submit_and_wait(1) {
        return Attempt::fail("io_uring_enter", &e);
    }
    let res = ring.completion().next().map(|c| c.result());
    match res {
        Some(r) if r >= 0 => Attempt::success(format!("IORING_OP_SENDMSG {sa}: {r} bytes")),
        Some(r) => Attempt::fail(
            &format!("IORING_OP_SENDMSG {sa}"),
            &io::Error::from_raw_os_error(-r),
        ),
        None => Attempt {
            ok: false,
            errno: None,
            detail: "no completion".into(),
        },
    }
}

fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += word as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// ICMP (type 8) or ICMPv6 (type 128) echo request with the given identifier.
fn echo_request(v6: bool, id: u16) -> Vec<u8> {
    let mut pkt = vec![if v6 { 128 } else { 8 }, 0, 0, 0];
    pkt.extend_from_slice(&id.to_be_bytes());
    pkt.extend_from_slice(&1u16.to_be_bytes());
    pkt.extend_from_slice(b"nono-probe echo");
    if !v6 {
        let c = inet_checksum(&pkt);
        pkt[2..4].copy_from_slice(&c.to_be_bytes());
    }
    // ICMPv6 checksums are computed by the kernel for raw and ping sockets.
    pkt
}

fn icmp_echo(target: IpAddr, id: u16, raw: bool) -> Attempt {
    let v6 = target.is_ipv6();
    let (dom, proto) = if v6 {
        (libc::AF_INET6, libc::IPPROTO_ICMPV6)
    } else {
        (libc::AF_INET, libc::IPPROTO_ICMP)
    };
    let ty = if raw {
        libc::SOCK_RAW
    } else {
        libc::SOCK_DGRAM
    };
    let fd = match socket(dom, ty, proto) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail(&format!("socket(type={ty}, proto={proto})"), &e),
    };
    if !raw {
        // A ping socket's echo identifier is its bound "port".
        let any: IpAddr = if v6 {
            Ipv6Addr::UNSPECIFIED.into()
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        };
        let (ss, len) = sockaddr(&SocketAddr::new(any, id));
        // SAFETY: valid sockaddr.
        if unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &ss as *const _ as *const libc::sockaddr,
                len,
            )
        } < 0
        {
            return Attempt::last_os("bind(ping ident)");
        }
    }
    match sendto_fd(
        fd.as_raw_fd(),
        &echo_request(v6, id),
        0,
        &SocketAddr::new(target, 0),
    ) {
        Ok(n) => Attempt::success(format!("echo request id {id} to {target}: {n} bytes")),
        Err(e) => Attempt::fail(&format!("sendto echo {target}"), &e),
    }
}

fn af_packet(iface: &str, tag: &str) -> Attempt {
    let fd = match socket(
        libc::AF_PACKET,
        libc::SOCK_RAW,
        (ETHERTYPE_TAG.to_be()) as libc::c_int,
    ) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket(AF_PACKET, SOCK_RAW)", &e),
    };
    let Ok(cname) = CString::new(iface) else {
        return Attempt {
            ok: false,
            errno: None,
            detail: "bad iface".into(),
        };
    };
    // SAFETY: valid C string.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        return Attempt::last_os(&format!("if_nametoindex({iface})"));
    }
    let dst = [0xffu8; 6];
    let mut frame = Vec::with_capacity(64);
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&[0x02, 0x6e, 0x6f, 0x6e, 0x6f, 0x01]);
    frame.extend_from_slice(&ETHERTYPE_TAG.to_be_bytes());
    frame.extend_from_slice(tag.as_bytes());
    while frame.len() < 60 {
        frame.push(0);
    }
    // SAFETY: all-zero sockaddr_ll is valid.
    let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETHERTYPE_TAG.to_be();
    sll.sll_ifindex = ifindex as i32;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&dst);
    // SAFETY: valid buffers.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr() as *const libc::c_void,
            frame.len(),
            0,
            &sll as *const _ as *const libc::sockaddr,
            mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    match errno_of(n as libc::c_long) {
        Ok(n) => Attempt::success(format!(
            "sent {n}-byte ethertype 0x88b5 frame tag {tag:?} on {iface}"
        )),
        Err(e) => Attempt::fail("sendto(AF_PACKET)", &e),
    }
}

// ---------------------------------------------------------------------------
// Routing options: the address the program names is loopback, the option
// sends the packet elsewhere.

/// `IPV6_2292PKTOPTIONS` (not in the libc crate).
const IPV6_2292PKTOPTIONS: libc::c_int = 6;

/// IPv6 segment routing header (type 4) with segments [::1, `segment`] and
/// segments left 1: the packet goes to `segment` first. The kernel replaces
/// segment 0 by the address passed to connect/sendto.
fn srh(segment: Ipv6Addr) -> Vec<u8> {
    // next header, hdr ext len (8-octet units after the first 8), routing
    // type, segments left, last entry, flags, tag (2).
    let mut h = vec![0, 4, 4, 1, 1, 0, 0, 0];
    h.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
    h.extend_from_slice(&segment.octets());
    h
}

/// Type 2 routing header (Mobile IPv6 home address) naming `addr`.
fn rh2(addr: Ipv6Addr) -> Vec<u8> {
    let mut h = vec![0, 2, 2, 1, 0, 0, 0, 0];
    h.extend_from_slice(&addr.octets());
    h
}

/// IPv4 loose (131) or strict (137) source route option with one hop,
/// padded with IPOPT_END to 8 bytes.
fn srr4(kind: u8, hop: Ipv4Addr) -> Vec<u8> {
    let o = hop.octets();
    vec![kind, 7, 4, o[0], o[1], o[2], o[3], 0]
}

fn setsockopt_bytes(fd: RawFd, level: libc::c_int, name: libc::c_int, v: &[u8]) -> io::Result<()> {
    // SAFETY: valid pointer/length.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            v.as_ptr() as *const libc::c_void,
            v.len() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

fn setsockopt_i32(fd: RawFd, level: libc::c_int, name: libc::c_int, v: i32) -> io::Result<()> {
    setsockopt_bytes(fd, level, name, &v.to_ne_bytes())
}

/// A control buffer holding one message (u64 words for alignment) and its
/// length in bytes.
fn cmsg_buf(level: libc::c_int, ty: libc::c_int, data: &[u8]) -> (Vec<u64>, usize) {
    // SAFETY: CMSG_SPACE / CMSG_LEN are arithmetic.
    let (space, len) = unsafe {
        (
            libc::CMSG_SPACE(data.len() as u32) as usize,
            libc::CMSG_LEN(data.len() as u32) as usize,
        )
    };
    let mut buf = vec![0u64; space.div_ceil(8)];
    let hdr = buf.as_mut_ptr() as *mut libc::cmsghdr;
    // SAFETY: buf holds CMSG_SPACE(len) bytes, aligned for cmsghdr.
    unsafe {
        (*hdr).cmsg_len = len as _;
        (*hdr).cmsg_level = level;
        (*hdr).cmsg_type = ty;
        std::ptr::copy_nonoverlapping(data.as_ptr(), libc::CMSG_DATA(hdr), data.len());
    }
    (buf, space)
}

/// sendmsg() of PAYLOAD with one control message; `dest` None leaves
/// msg_name NULL (connected socket).
fn sendmsg_cmsg(
    fd: RawFd,
    dest: Option<&SocketAddr>,
    level: libc::c_int,
    ty: libc::c_int,
    data: &[u8],
) -> io::Result<usize> {
    let (mut cbuf, clen) = cmsg_buf(level, ty, data);
    let mut iov = libc::iovec {
        iov_base: PAYLOAD.as_ptr() as *mut libc::c_void,
        iov_len: PAYLOAD.len(),
    };
    // SAFETY: all-zero msghdr is valid; fields set below.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    let mut ss = dest.map(sockaddr);
    if let Some((ss, len)) = ss.as_mut() {
        msg.msg_name = ss as *mut _ as *mut libc::c_void;
        msg.msg_namelen = *len;
    }
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = clen as _;
    // SAFETY: msg points to live buffers for the call.
    let n = unsafe { libc::sendmsg(fd, &msg, 0) };
    errno_of(n as libc::c_long).map(|n| n as usize)
}

/// A routing option: level, name, bytes, and a label for messages.
struct RouteOpt {
    level: libc::c_int,
    name: libc::c_int,
    bytes: Vec<u8>,
    label: &'static str,
}

fn srh_opt(target: IpAddr) -> RouteOpt {
    RouteOpt {
        level: libc::IPPROTO_IPV6,
        name: libc::IPV6_RTHDR,
        bytes: srh(v6_target(target)),
        label: "IPV6_RTHDR (segment routing, type 4)",
    }
}

fn v6_target(t: IpAddr) -> Ipv6Addr {
    match t {
        IpAddr::V6(a) => a,
        IpAddr::V4(_) => usage("this vector needs an IPv6 --target"),
    }
}

fn v4_target(t: IpAddr) -> Ipv4Addr {
    match t {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => usage("this vector needs an IPv4 --target"),
    }
}

fn srr4_opt(kind: u8, target: IpAddr, name: libc::c_int) -> RouteOpt {
    RouteOpt {
        level: libc::IPPROTO_IP,
        name,
        bytes: srr4(kind, v4_target(target)),
        label: if kind == 131 { "LSRR" } else { "SSRR" },
    }
}

/// Records which step refused the routing option.
fn refused(extra: &mut serde_json::Map<String, Value>, step: &str, a: Attempt) -> Attempt {
    extra.insert("refused_at".into(), json!(step));
    a
}

fn apply_sockopt(fd: RawFd, o: &RouteOpt, steps: &mut Steps) -> Result<(), Attempt> {
    match setsockopt_bytes(fd, o.level, o.name, &o.bytes) {
        Ok(()) => {
            steps.push("setsockopt", &Attempt::success(format!("{} set", o.label)));
            Ok(())
        }
        Err(e) => Err(Attempt::fail(&format!("setsockopt {}", o.label), &e)),
    }
}

/// setsockopt(option) then sendto(dst) on a UDP socket.
fn routed_udp_sockopt(
    dst: SocketAddr,
    o: &RouteOpt,
    steps: &mut Steps,
    extra: &mut serde_json::Map<String, Value>,
) -> Attempt {
    extra.insert("refused_at".into(), Value::Null);
    let fd = match udp_socket(&dst.ip()) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    if let Err(a) = apply_sockopt(fd.as_raw_fd(), o, steps) {
        return refused(extra, "setsockopt", a);
    }
    match sendto_fd(fd.as_raw_fd(), PAYLOAD, 0, &dst) {
        Ok(n) => Attempt::success(format!("{} + sendto {dst}: {n} bytes", o.label)),
        Err(e) => Attempt::fail(&format!("sendto {dst} with {}", o.label), &e),
    }
}

/// connect(dst) then setsockopt(option) then send() on a UDP socket: the
/// option changes the route of an already connected socket.
fn routed_udp_connect_sockopt(
    dst: SocketAddr,
    o: &RouteOpt,
    steps: &mut Steps,
    extra: &mut serde_json::Map<String, Value>,
) -> Attempt {
    extra.insert("refused_at".into(), Value::Null);
    let fd = match udp_socket(&dst.ip()) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    if let Err(e) = connect_fd(fd.as_raw_fd(), &dst) {
        return Attempt::fail(&format!("connect {dst}"), &e);
    }
    steps.push("connect", &Attempt::success(format!("connected to {dst}")));
    if let Err(a) = apply_sockopt(fd.as_raw_fd(), o, steps) {
        return refused(extra, "setsockopt", a);
    }
    match send_fd(fd.as_raw_fd(), PAYLOAD) {
        Ok(n) => Attempt::success(format!("connect {dst} + {} + send: {n} bytes", o.label)),
        Err(e) => Attempt::fail(&format!("send to {dst} with {}", o.label), &e),
    }
}

/// setsockopt(option) then connect(dst) on a TCP socket.
fn routed_tcp_sockopt(
    dst: SocketAddr,
    o: &RouteOpt,
    steps: &mut Steps,
    extra: &mut serde_json::Map<String, Value>,
) -> Attempt {
    extra.insert("refused_at".into(), Value::Null);
    let fd = match socket(family(&dst.ip()), libc::SOCK_STREAM, 0) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    set_timeouts(fd.as_raw_fd(), CONNECT_TIMEOUT);
    if let Err(a) = apply_sockopt(fd.as_raw_fd(), o, steps) {
        return refused(extra, "setsockopt", a);
    }
    if let Err(e) = connect_fd(fd.as_raw_fd(), &dst) {
        return Attempt::fail(&format!("connect {dst} with {}", o.label), &e);
    }
    let _ = send_fd(fd.as_raw_fd(), PAYLOAD);
    Attempt::success(format!("{} + connect {dst}: connected", o.label))
}

/// The first IPv4 address of interface `iface`.
fn iface_addr4(iface: &str) -> Option<Ipv4Addr> {
    let mut ifa: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: out pointer; freed below.
    if unsafe { libc::getifaddrs(&mut ifa) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = ifa;
    while !cur.is_null() {
        // SAFETY: walking the list getifaddrs returned.
        unsafe {
            let a = (*cur).ifa_addr;
            let name = std::ffi::CStr::from_ptr((*cur).ifa_name);
            if !a.is_null()
                && (*a).sa_family as libc::c_int == libc::AF_INET
                && name.to_bytes() == iface.as_bytes()
            {
                let sin = &*(a as *const libc::sockaddr_in);
                found = Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
                break;
            }
            cur = (*cur).ifa_next;
        }
    }
    // SAFETY: list from getifaddrs.
    unsafe { libc::freeifaddrs(ifa) };
    found
}

/// sendmsg(dst or NULL) carrying the option as ancillary data. With
/// `connect_to`, the socket is first bound to `bind_to` (a source address
/// that may leave the host: one bound to 127.0.0.1 by connect could not be
/// source-routed elsewhere) and connected.
fn routed_udp_cmsg(
    connect_to: Option<(SocketAddr, Option<IpAddr>)>,
    dst: SocketAddr,
    o: &RouteOpt,
    steps: &mut Steps,
    extra: &mut serde_json::Map<String, Value>,
) -> Attempt {
    extra.insert("refused_at".into(), Value::Null);
    let fd = match udp_socket(&dst.ip()) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    if let Some((_, Some(src))) = connect_to {
        let (ss, len) = sockaddr(&SocketAddr::new(src, 0));
        // SAFETY: valid sockaddr.
        if unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &ss as *const _ as *const libc::sockaddr,
                len,
            )
        } < 0
        {
            return Attempt::last_os(&format!("bind {src}"));
        }
        steps.push("bind", &Attempt::success(format!("bound to {src}")));
    }
    let connect_to = connect_to.map(|c| c.0);
    if let Some(c) = connect_to {
        if let Err(e) = connect_fd(fd.as_raw_fd(), &c) {
            return Attempt::fail(&format!("connect {c}"), &e);
        }
        steps.push("connect", &Attempt::success(format!("connected to {c}")));
    }
    let name = if connect_to.is_some() {
        None
    } else {
        Some(&dst)
    };
    match sendmsg_cmsg(fd.as_raw_fd(), name, o.level, o.name, &o.bytes) {
        Ok(n) => Attempt::success(format!(
            "sendmsg {} with {} cmsg: {n} bytes",
            name.map_or("(connected, no name)".to_string(), |d| d.to_string()),
            o.label
        )),
        Err(e) => refused(
            extra,
            "sendmsg",
            Attempt::fail(&format!("sendmsg {dst} with {} cmsg", o.label), &e),
        ),
    }
}

/// setsockopt(IPV6_2292PKTOPTIONS) carrying a routing header cmsg, then
/// sendto(dst).
fn routed_udp_pktoptions(
    dst: SocketAddr,
    target: IpAddr,
    steps: &mut Steps,
    extra: &mut serde_json::Map<String, Value>,
) -> Attempt {
    let (buf, len) = cmsg_buf(
        libc::IPPROTO_IPV6,
        libc::IPV6_RTHDR,
        &srh(v6_target(target)),
    );
    // SAFETY: reinterpreting the initialised u64 words as bytes.
    let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr() as *const u8, len) }.to_vec();
    let o = RouteOpt {
        level: libc::IPPROTO_IPV6,
        name: IPV6_2292PKTOPTIONS,
        bytes,
        label: "IPV6_2292PKTOPTIONS (IPV6_RTHDR type 4 cmsg)",
    };
    routed_udp_sockopt(dst, &o, steps, extra)
}

fn iface_index(iface: &str) -> io::Result<u32> {
    let cname = CString::new(iface).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: valid C string.
    match unsafe { libc::if_nametoindex(cname.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        i => Ok(i),
    }
}

/// UDP to 127.0.0.1:port with the outgoing interface forced to `iface`
/// (IP_UNICAST_IF, or an IP_PKTINFO cmsg), neither needing CAP_NET_RAW:
/// with no route on that interface Linux assumes the destination is on
/// link, and the datagram leaves once some host answers ARP for 127.0.0.1.
fn loopback_on_iface(
    port: u16,
    iface: &str,
    pktinfo: bool,
    count: usize,
    steps: &mut Steps,
) -> Attempt {
    let dst = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
    let idx = match iface_index(iface) {
        Ok(i) => i,
        Err(e) => return Attempt::fail(&format!("if_nametoindex({iface})"), &e),
    };
    let fd = match udp_socket(&dst.ip()) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    if !pktinfo {
        // IP_UNICAST_IF takes the index in network byte order.
        if let Err(e) = setsockopt_i32(fd.as_raw_fd(), libc::IPPROTO_IP, 50, (idx as i32).to_be()) {
            return Attempt::fail("setsockopt IP_UNICAST_IF", &e);
        }
        steps.push(
            "setsockopt",
            &Attempt::success(format!("IP_UNICAST_IF {iface} ({idx})")),
        );
    }
    let mut sent = 0;
    let mut last_err = None;
    for i in 0..count {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
        let r = if pktinfo {
            let mut info = Vec::with_capacity(12);
            info.extend_from_slice(&(idx as i32).to_ne_bytes());
            info.extend_from_slice(&[0u8; 8]);
            sendmsg_cmsg(
                fd.as_raw_fd(),
                Some(&dst),
                libc::IPPROTO_IP,
                libc::IP_PKTINFO,
                &info,
            )
        } else {
            sendto_fd(fd.as_raw_fd(), PAYLOAD, 0, &dst)
        };
        match r {
            Ok(_) => sent += 1,
            Err(e) => last_err = Some(e),
        }
    }
    let how = if pktinfo {
        "IP_PKTINFO cmsg"
    } else {
        "IP_UNICAST_IF"
    };
    match (sent, last_err) {
        (0, Some(e)) => Attempt::fail(&format!("send {dst} via {iface} ({how})"), &e),
        _ => Attempt::success(format!(
            "{sent}/{count} datagrams to {dst} via {iface} ({how})"
        )),
    }
}

// ---------------------------------------------------------------------------
// What must keep working

/// A UDP socket connected to `sa` sends with a TOS (IPv4) or traffic class
/// (IPv6) control message and no destination (msg_name NULL).
fn udp_connected_cmsg(sa: SocketAddr, count: usize) -> Attempt {
    let fd = match udp_socket(&sa.ip()) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    if let Err(e) = connect_fd(fd.as_raw_fd(), &sa) {
        return Attempt::fail(&format!("connect {sa}"), &e);
    }
    let (level, ty, what) = match sa {
        SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_TOS, "IP_TOS"),
        SocketAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_TCLASS, "IPV6_TCLASS"),
    };
    for i in 0..count {
        if let Err(e) = sendmsg_cmsg(fd.as_raw_fd(), None, level, ty, &0x28i32.to_ne_bytes()) {
            return Attempt::fail(
                &format!("sendmsg #{i} (connected to {sa}, {what} cmsg, no name)"),
                &e,
            );
        }
    }
    Attempt::success(format!(
        "{count} datagrams via sendmsg (connected to {sa}, {what}=0x28 cmsg, no name)"
    ))
}

fn proxy_arg(args: &Args) -> SocketAddr {
    let pe = args.req("proxy-endpoint");
    pe.parse()
        .unwrap_or_else(|_| usage(&format!("--proxy-endpoint: bad ADDR:PORT {pe:?}")))
}

/// Sends `bytes` over TCP to an echo server and checks the same bytes come
/// back (both directions at once).
fn tcp_bulk(sa: SocketAddr, bytes: usize) -> Attempt {
    use std::net::{Shutdown, TcpStream};
    let mut s = match TcpStream::connect_timeout(&sa, CONNECT_TIMEOUT) {
        Ok(s) => s,
        Err(e) => return Attempt::fail(&format!("connect {sa}"), &e),
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(20)));
    let data: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
    let mut w = match s.try_clone() {
        Ok(w) => w,
        Err(e) => return Attempt::fail("dup", &e),
    };
    let out = data.clone();
    let writer = std::thread::spawn(move || {
        let r = w.write_all(&out);
        let _ = w.shutdown(Shutdown::Write);
        r
    });
    let mut got = Vec::with_capacity(bytes);
    let read = s.read_to_end(&mut got);
    let wrote = writer
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("writer panicked")));
    if let Err(e) = wrote {
        return Attempt::fail(&format!("write {bytes} bytes to {sa}"), &e);
    }
    if let Err(e) = read {
        return Attempt::fail(
            &format!("read echo from {sa} ({} of {bytes} bytes)", got.len()),
            &e,
        );
    }
    if got != data {
        return Attempt {
            ok: false,
            errno: None,
            detail: format!(
                "sent {bytes} bytes to {sa}, got {} back, contents {}",
                got.len(),
                if got.len() == bytes {
                    "differ"
                } else {
                    "truncated"
                }
            ),
        };
    }
    Attempt::success(format!("sent {bytes} bytes to {sa} and received them back"))
}

// ---------------------------------------------------------------------------
// Process vectors

/// Writes `s` into an existing file (never creates one: a cgroup.procs
/// path that does not exist must not leave a stray file behind).
fn write_str(path: &Path, s: &str) -> Attempt {
    let r = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(s.as_bytes()));
    match r {
        Ok(()) => Attempt::success(format!("wrote {s:?} to {}", path.display())),
        Err(e) => Attempt::fail(&format!("write {}", path.display()), &e),
    }
}

fn own_cgroup() -> String {
    fs::read_to_string("/proc/self/cgroup")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("<{e}>"))
}

/// Mount point of the cgroup2 hierarchy, from /proc/self/mountinfo.
fn cgroup2_mount() -> Option<PathBuf> {
    let mi = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mi.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        if post.split_whitespace().next()? == "cgroup2" {
            pre.split_whitespace().nth(4).map(PathBuf::from)
        } else {
            None
        }
    })
}

/// The sandbox's cgroup: `NONO_CGROUP` (BPF enforcer), else our own
/// cgroup2 directory from /proc/self/cgroup under the cgroup2 mount (the
/// seccomp enforcer creates no cgroup; the attempts then target whatever
/// cgroup we are in).
fn nono_cgroup(steps: &mut Steps) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NONO_CGROUP") {
        return Some(PathBuf::from(p));
    }
    let own = fs::read_to_string("/proc/self/cgroup").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("0::"))
            .map(|p| p.trim().trim_start_matches('/').to_string())
    });
    match (cgroup2_mount(), own) {
        (Some(m), Some(rel)) => {
            let p = if rel.is_empty() { m } else { m.join(rel) };
            steps.push(
                "env",
                &Attempt::success(format!(
                    "NONO_CGROUP not set; using own cgroup {}",
                    p.display()
                )),
            );
            Some(p)
        }
        (m, own) => {
            steps.push(
                "env",
                &Attempt {
                    ok: false,
                    errno: None,
                    detail: format!("NONO_CGROUP not set; cgroup2 mount {m:?}, own cgroup {own:?}"),
                },
            );
            None
        }
    }
}

fn sub_cgroup(steps: &mut Steps, sa: SocketAddr) -> Attempt {
    if let Some(cg) = nono_cgroup(steps) {
        let sub = cg.join("escape");
        let mk = match fs::create_dir(&sub) {
            Ok(()) => Attempt::success(format!("mkdir {}", sub.display())),
            Err(e) => Attempt::fail(&format!("mkdir {}", sub.display()), &e),
        };
        steps.push("mkdir", &mk);
        steps.push("move", &write_str(&sub.join("cgroup.procs"), "0"));
        steps.push("cgroup", &Attempt::success(own_cgroup()));
    }
    tcp_connect(sa, 0)
}

fn parent_cgroup(steps: &mut Steps, sa: SocketAddr) -> Attempt {
    if let Some(cg) = nono_cgroup(steps) {
        // The parent only counts while it is still a cgroup2 directory.
        let mount = cgroup2_mount();
        match cg
            .parent()
            .filter(|p| mount.as_ref().is_some_and(|m| p.starts_with(m)))
        {
            Some(parent) => {
                steps.push("move-parent", &write_str(&parent.join("cgroup.procs"), "0"))
            }
            None => steps.push(
                "move-parent",
                &Attempt {
                    ok: false,
                    errno: None,
                    detail: format!(
                        "{} has no parent cgroup (cgroup2 mount {mount:?})",
                        cg.display()
                    ),
                },
            ),
        }
    }
    match cgroup2_mount() {
        Some(root) => steps.push("move-root", &write_str(&root.join("cgroup.procs"), "0")),
        None => steps.push(
            "move-root",
            &Attempt {
                ok: false,
                errno: None,
                detail: "no cgroup2 mount visible".into(),
            },
        ),
    }
    steps.push("cgroup", &Attempt::success(own_cgroup()));
    tcp_connect(sa, 0)
}

/// Mount points of every cgroup2 in a mountinfo text.
fn cgroup2_mounts(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| pre.split_whitespace().nth(4).map(str::to_string))
                .flatten()
        })
        .collect()
}

/// Through `/proc/<pid>/root` of every other process (the host's mount
/// namespace, for a host process the sandbox may ptrace-read, e.g. a uid-0
/// process without capabilities), open a cgroup2 `cgroup.procs` for writing
/// and write "0" (move self). Then report our cgroup and connect.
fn proc_root_cgroup(
    steps: &mut Steps,
    extra: &mut serde_json::Map<String, Value>,
    sa: SocketAddr,
) -> Attempt {
    // SAFETY: getpid never fails.
    let me = unsafe { libc::getpid() };
    let mut pids: Vec<i32> = fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .filter(|&p| p != me)
                .collect()
        })
        .unwrap_or_default();
    pids.sort_unstable();
    let (mut tried, mut opened, mut written, mut mountinfo_read, mut roots) = (0, 0, 0, 0, 0);
    let mut errors: std::collections::BTreeMap<String, usize> = Default::default();
    let mut opened_pids = Vec::new();
    for &pid in &pids {
        if fs::read_dir(format!("/proc/{pid}/root")).is_ok() {
            roots += 1;
        }
        let mut paths = vec![
            format!("/proc/{pid}/root/sys/fs/cgroup/unified/cgroup.procs"),
            format!("/proc/{pid}/root/sys/fs/cgroup/cgroup.procs"),
        ];
        if let Ok(mi) = fs::read_to_string(format!("/proc/{pid}/mountinfo")) {
            mountinfo_read += 1;
            for mp in cgroup2_mounts(&mi) {
                let p = format!("/proc/{pid}/root{}/cgroup.procs", mp.trim_end_matches('/'));
                if !paths.contains(&p) {
                    paths.push(p);
                }
            }
        }
        for p in paths {
            tried += 1;
            match fs::OpenOptions::new().write(true).open(&p) {
                Ok(mut f) => {
                    opened += 1;
                    opened_pids.push(pid);
                    let w = f.write_all(b"0");
                    if w.is_ok() {
                        written += 1;
                    }
                    steps.push(
                        &format!("write {p}"),
                        &match w {
                            Ok(()) => Attempt::success(format!("wrote \"0\" to {p}")),
                            Err(e) => Attempt::fail(&format!("write {p}"), &e),
                        },
                    );
                }
                Err(e) => {
                    *errors.entry(format!("{:?}", e.kind())).or_default() += 1;
                }
            }
        }
    }
    let summary = format!(
        "{} pids, {roots} /proc/<pid>/root readable, {mountinfo_read} mountinfo readable; \
         {tried} cgroup.procs paths tried, {opened} opened for writing, {written} written; \
         open errors {errors:?}",
        pids.len()
    );
    steps.push(
        "scan",
        &Attempt {
            ok: opened == 0,
            errno: None,
            detail: summary,
        },
    );
    opened_pids.dedup();
    let cg = own_cgroup();
    steps.push("cgroup", &Attempt::success(cg.clone()));
    extra.insert("tried".into(), json!(tried));
    extra.insert("opened".into(), json!(opened));
    extra.insert("written".into(), json!(written));
    extra.insert("opened_via_pids".into(), json!(opened_pids));
    extra.insert("cgroup_after".into(), json!(cg));
    tcp_connect(sa, 0)
}

/// Not a vector: become a uid-0 process without any capability (bounding,
/// ambient, effective, permitted, inheritable), print one JSON line, sleep.
fn hold_nocaps(args: &Args) -> ! {
    let last_cap: u32 = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63);
    let mut errors = Vec::new();
    for cap in 0..=last_cap {
        // SAFETY: integer-only prctl.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            errors.push(format!(
                "PR_CAPBSET_DROP {cap}: {}",
                io::Error::last_os_error()
            ));
        }
    }
    // SAFETY: integer-only prctl.
    if unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    } != 0
    {
        errors.push(format!(
            "PR_CAP_AMBIENT_CLEAR_ALL: {}",
            io::Error::last_os_error()
        ));
    }
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let hdr = CapHeader {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: header and two data structs, as capset(2) v3 expects.
    if unsafe { libc::syscall(libc::SYS_capset, &hdr, data.as_ptr()) } != 0 {
        errors.push(format!("capset: {}", io::Error::last_os_error()));
    }
    write_pidfile(args);
    // SAFETY: plain syscalls.
    let (pid, uid) = unsafe { (libc::getpid(), libc::geteuid()) };
    println!(
        "{}",
        json!({"vector": "hold-nocaps", "ok": errors.is_empty(), "errno": null,
               "detail": errors.join("; "), "pid": pid, "uid": uid})
    );
    let _ = io::stdout().flush();
    std::thread::sleep(Duration::from_secs(args.num::<u64>("sleep", Some(30))));
    exit(0);
}

mod bpf {
    //! Minimal bpf(2) wrappers for the detach-bpf vector.
    use std::io;

    pub const BPF_OBJ_GET: libc::c_long = 7;
    pub const BPF_PROG_DETACH: libc::c_long = 9;
    pub const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    pub const BPF_PROG_QUERY: libc::c_long = 16;
    pub const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
    pub const BPF_LINK_DETACH: libc::c_long = 34;

    pub const ATTACH_TYPES: &[(u32, &str)] = &[
        (2, "sock_create"),
        (10, "connect4"),
        (11, "connect6"),
        (14, "sendmsg4"),
        (15, "sendmsg6"),
    ];

    /// `union bpf_attr`, as raw 128 bytes (large enough for every command used).
    #[repr(C, align(8))]
    pub struct Attr(pub [u8; 128]);

    impl Attr {
        pub fn new() -> Self {
            Attr([0; 128])
        }
        pub fn u32_at(&mut self, off: usize, v: u32) -> &mut Self {
            self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
            self
        }
        pub fn u64_at(&mut self, off: usize, v: u64) -> &mut Self {
            self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
            self
        }
        pub fn get_u32(&self, off: usize) -> u32 {
            let mut b = [0u8; 4];
            b.copy_from_slice(&self.0[off..off + 4]);
            u32::from_ne_bytes(b)
        }
    }

    pub fn sys(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
        // SAFETY: attr is a 128-byte buffer, matching the size we pass.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), 128u32) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }
}

/// Recursively lists files under `dir`; the first directory-read error is returned.
fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            collect_files(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

fn detach_bpf(steps: &mut Steps, sa: SocketAddr) -> Attempt {
    use bpf::*;
    if let Some(cg) = nono_cgroup(steps) {
        let cgfd = match fs::File::open(&cg) {
            Ok(f) => Some(f),
            Err(e) => {
                steps.push("open-cgroup", &Attempt::fail("open NONO_CGROUP", &e));
                None
            }
        };
        if let Some(cgfd) = cgfd {
            let cgfd = cgfd.as_raw_fd() as u32;
            for &(at, name) in ATTACH_TYPES {
                let mut prog_ids = [0u32; 64];
                let mut link_ids = [0u32; 64];
                let mut a = Attr::new();
                a.u32_at(0, cgfd)
                    .u32_at(4, at)
                    .u64_at(16, prog_ids.as_mut_ptr() as u64)
                    .u32_at(24, 64)
                    .u64_at(40, link_ids.as_mut_ptr() as u64);
                match sys(BPF_PROG_QUERY, &mut a) {
                    Ok(_) => {
                        let n = a.get_u32(24).min(64) as usize;
                        steps.push(
                            &format!("query-{name}"),
                            &Attempt::success(format!("{n} programs: {:?}", &prog_ids[..n])),
                        );
                        for &id in &prog_ids[..n] {
                            let mut g = Attr::new();
                            g.u32_at(0, id);
                            match sys(BPF_PROG_GET_FD_BY_ID, &mut g) {
                                Ok(pfd) => {
                                    let mut d = Attr::new();
                                    d.u32_at(0, cgfd).u32_at(4, pfd as u32).u32_at(8, at);
                                    let r = sys(BPF_PROG_DETACH, &mut d);
                                    steps.push(
                                        &format!("prog-detach-{name}-{id}"),
                                        &match r {
                                            Ok(_) => Attempt::success("detached"),
                                            Err(e) => Attempt::fail("BPF_PROG_DETACH", &e),
                                        },
                                    );
                                }
                                Err(e) => steps.push(
                                    &format!("prog-get-fd-{name}-{id}"),
                                    &Attempt::fail("BPF_PROG_GET_FD_BY_ID", &e),
                                ),
                            }
                        }
                        for &id in link_ids.iter().take(n).filter(|&&id| id != 0) {
                            let mut g = Attr::new();
                            g.u32_at(0, id);
                            match sys(BPF_LINK_GET_FD_BY_ID, &mut g) {
                                Ok(lfd) => {
                                    let mut d = Attr::new();
                                    d.u32_at(0, lfd as u32);
                                    steps.push(
                                        &format!("link-detach-by-id-{name}-{id}"),
                                        &match sys(BPF_LINK_DETACH, &mut d) {
                                            Ok(_) => Attempt::success("detached"),
                                            Err(e) => Attempt::fail("BPF_LINK_DETACH", &e),
                                        },
                                    );
                                }
                                Err(e) => steps.push(
                                    &format!("link-get-fd-{name}-{id}"),
                                    &Attempt::fail("BPF_LINK_GET_FD_BY_ID", &e),
                                ),
                            }
                        }
                    }
                    Err(e) => steps.push(
                        &format!("query-{name}"),
                        &Attempt::fail("BPF_PROG_QUERY", &e),
                    ),
                }
                // Plain detach (no program fd), as for a single non-multi program.
                let mut d = Attr::new();
                d.u32_at(0, cgfd).u32_at(8, at);
                steps.push(
                    &format!("prog-detach-{name}"),
                    &match sys(BPF_PROG_DETACH, &mut d) {
                        Ok(_) => Attempt::success("detached"),
                        Err(e) => Attempt::fail("BPF_PROG_DETACH", &e),
                    },
                );
            }
        }
    }
    match std::env::var_os("NONO_BPF_PIN_DIR") {
        None => steps.push(
            "env",
            &Attempt {
                ok: false,
                errno: None,
                detail: "NONO_BPF_PIN_DIR not set".into(),
            },
        ),
        Some(dir) => {
            let dir = PathBuf::from(dir);
            let mut files = Vec::new();
            let listed = collect_files(&dir, &mut files);
            steps.push(
                "list-pins",
                &match listed {
                    Ok(()) => {
                        Attempt::success(format!("{} files under {}", files.len(), dir.display()))
                    }
                    Err(e) => Attempt::fail(
                        &format!("list {} ({} files found)", dir.display(), files.len()),
                        &e,
                    ),
                },
            );
            for f in &files {
                let name = f.display().to_string();
                let Ok(c) = CString::new(name.clone()) else {
                    continue;
                };
                let mut a = Attr::new();
                a.u64_at(0, c.as_ptr() as u64);
                match sys(BPF_OBJ_GET, &mut a) {
                    Ok(ofd) => {
                        steps.push(
                            &format!("obj-get {name}"),
                            &Attempt::success(format!("got fd {ofd}")),
                        );
                        let mut d = Attr::new();
                        d.u32_at(0, ofd as u32);
                        steps.push(
                            &format!("link-detach {name}"),
                            &match sys(BPF_LINK_DETACH, &mut d) {
                                Ok(_) => Attempt::success("detached"),
                                Err(e) => Attempt::fail("BPF_LINK_DETACH", &e),
                            },
                        );
                    }
                    Err(e) => steps.push(
                        &format!("obj-get {name}"),
                        &Attempt::fail("BPF_OBJ_GET", &e),
                    ),
                }
            }
            for f in &files {
                let name = f.display().to_string();
                steps.push(
                    &format!("unlink {name}"),
                    &match fs::remove_file(f) {
                        Ok(()) => Attempt::success("unlinked"),
                        Err(e) => Attempt::fail("unlink", &e),
                    },
                );
            }
        }
    }
    tcp_connect(sa, 0)
}

/// [::1]:--port, the address routing-option vectors name.
fn lo6(args: &Args) -> SocketAddr {
    SocketAddr::new(Ipv6Addr::LOCALHOST.into(), args.port())
}

/// 127.0.0.1:--port.
fn lo4(args: &Args) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::LOCALHOST.into(), args.port())
}

fn write_pidfile(args: &Args) {
    if let Some(p) = args.get("pidfile") {
        // SAFETY: getpid never fails.
        let pid = unsafe { libc::getpid() };
        let tmp = format!("{p}.tmp");
        if fs::write(&tmp, format!("{pid}\n")).is_ok() {
            let _ = fs::rename(&tmp, p);
        }
    }
}

fn devnull_stdio() {
    if let Ok(f) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto standard descriptors.
            unsafe { libc::dup2(f.as_raw_fd(), fd) };
        }
    }
}

/// Returns the grandchild's JSON report (read from a pipe).
fn daemonize(args: &Args, sa: SocketAddr) -> (Attempt, Vec<Value>, Option<i32>) {
    let sleep = args.num::<u64>("sleep", Some(30));
    let mut fds = [0; 2];
    // SAFETY: valid out array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return (Attempt::last_os("pipe"), vec![], None);
    }
    let (rfd, wfd) = (fds[0], fds[1]);
    // SAFETY: the probe is single-threaded here.
    let pid1 = unsafe { libc::fork() };
    if pid1 < 0 {
        return (Attempt::last_os("fork"), vec![], None);
    }
    if pid1 == 0 {
        // Intermediate child.
        // SAFETY: simple syscalls in the child of a single-threaded process.
        unsafe {
            libc::close(rfd);
            libc::setsid();
            let mid = libc::getpid();
            let pid2 = libc::fork();
            if pid2 != 0 {
                libc::_exit(if pid2 < 0 { 1 } else { 0 });
            }
            // Grandchild: wait for the intermediate parent to be gone.
            let start = Instant::now();
            while libc::getppid() == mid && start.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(10));
            }
            let reparented = libc::getppid() != mid;
            let a = tcp_connect(sa, 0);
            write_pidfile(args);
            let report = json!({
                "pid": libc::getpid(),
                "ppid": libc::getppid(),
                "reparented": reparented,
                "ok": a.ok, "errno": a.errno, "detail": a.detail,
            });
            let mut w = fs::File::from_raw_fd(wfd);
            let _ = writeln!(w, "{report}");
            drop(w);
            devnull_stdio();
            std::thread::sleep(Duration::from_secs(sleep));
            libc::_exit(0);
        }
    }
    // SAFETY: close our copy of the write end; reap the intermediate child.
    unsafe {
        libc::close(wfd);
        let mut st = 0;
        libc::waitpid(pid1, &mut st, 0);
    }
    // SAFETY: rfd is ours.
    let mut r = unsafe { fs::File::from_raw_fd(rfd) };
    let mut pfd = libc::pollfd {
        fd: rfd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, 15_000) };
    let mut buf = String::new();
    if n > 0 {
        let _ = r.read_to_string(&mut buf);
    }
    match serde_json::from_str::<Value>(buf.trim()) {
        Ok(v) => {
            let a = Attempt {
                ok: v["ok"].as_bool().unwrap_or(false),
                errno: v["errno"].as_i64().map(|e| e as i32),
                detail: format!("grandchild: {}", v["detail"].as_str().unwrap_or("")),
            };
            let gpid = v["pid"].as_i64().map(|p| p as i32);
            (a, vec![v], gpid)
        }
        Err(_) => (
            Attempt {
                ok: false,
                errno: None,
                detail: format!("grandchild did not report (got {buf:?})"),
            },
            vec![],
            None,
        ),
    }
}

// ---------------------------------------------------------------------------
// i386 system calls from a 64-bit process (`int 0x80`)

/// One page mapped below 4 GiB: `int 0x80` takes 32-bit pointers.
#[cfg(target_arch = "x86_64")]
fn low_page() -> io::Result<*mut u8> {
    // SAFETY: anonymous private mapping; checked for MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(p as *mut u8)
}

/// An i386 system call through `int 0x80`: returns the raw result
/// (-errno on failure). rbx is reserved by LLVM, so the first argument
/// is swapped in and out around the trap.
#[cfg(target_arch = "x86_64")]
fn int80(nr: u32, a1: u32, a2: u32, a3: u32) -> i32 {
    let ret: u32;
    // SAFETY: the i386 syscall ABI; every register the kernel may touch
    // is declared clobbered; pointer arguments point into a low page.
    unsafe {
        std::arch::asm!(
            "xchg {b:r}, rbx",
            "int 0x80",
            "xchg {b:r}, rbx",
            b = inout(reg) a1 as u64 => _,
            inlateout("eax") nr => ret,
            in("ecx") a2,
            in("edx") a3,
            out("r8") _,
            out("r9") _,
            out("r10") _,
            out("r11") _,
        );
    }
    ret as i32
}

#[cfg(target_arch = "x86_64")]
fn int80_result(what: &str, r: i32) -> Result<i32, Attempt> {
    if r < 0 {
        Err(Attempt::fail(what, &io::Error::from_raw_os_error(-r)))
    } else {
        Ok(r)
    }
}

/// Writes a sockaddr_in for `sa` at `p` (in the low page); returns its length.
#[cfg(target_arch = "x86_64")]
fn put_sockaddr_in(p: *mut u8, sa: &SocketAddr) -> u32 {
    let (ss, len) = sockaddr(sa);
    // SAFETY: p points into a 4 KiB page with room for a sockaddr_storage.
    unsafe { std::ptr::copy_nonoverlapping(&ss as *const _ as *const u8, p, len as usize) };
    len
}

/// A TCP connect made with i386 system calls: `socketcall(SYS_CONNECT)`
/// (102) on a socket made by the 64-bit `socket()` (`socketcall`), or the
/// direct i386 `socket` (359) and `connect` (362) calls.
#[cfg(target_arch = "x86_64")]
fn int80_connect(sa: SocketAddr, socketcall: bool, steps: &mut Steps) -> Attempt {
    const NR32_SOCKETCALL: u32 = 102;
    const NR32_SOCKET: u32 = 359;
    const NR32_CONNECT: u32 = 362;
    const SYS_CONNECT: u32 = 3;
    if !sa.is_ipv4() {
        usage("int80 vectors need an IPv4 --target");
    }
    let page = match low_page() {
        Ok(p) => p,
        Err(e) => return Attempt::fail("mmap(MAP_32BIT)", &e),
    };
    let low = |off: usize| (page as usize + off) as u32;
    // SAFETY: offsets stay inside the page.
    let addr_ptr = unsafe { page.add(256) };
    let alen = put_sockaddr_in(addr_ptr, &sa);
    let fd = if socketcall {
        match socket(libc::AF_INET, libc::SOCK_STREAM, 0) {
            Ok(fd) => fd,
            Err(e) => return Attempt::fail("socket (64-bit)", &e),
        }
    } else {
        let r = int80(
            NR32_SOCKET,
            libc::AF_INET as u32,
            libc::SOCK_STREAM as u32,
            0,
        );
        match int80_result("i386 socket(AF_INET, SOCK_STREAM) via int 0x80", r) {
            // SAFETY: a fresh descriptor the kernel gave us.
            Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
            Err(a) => return a,
        }
    };
    steps.push(
        "socket",
        &Attempt::success(format!(
            "fd {} ({})",
            fd.as_raw_fd(),
            if socketcall {
                "64-bit socket()"
            } else {
                "i386 socket"
            }
        )),
    );
    set_timeouts(fd.as_raw_fd(), CONNECT_TIMEOUT);
    let r = if socketcall {
        let args = [fd.as_raw_fd() as u32, low(256), alen];
        // SAFETY: three u32 at the start of the page.
        unsafe { std::ptr::copy_nonoverlapping(args.as_ptr(), page as *mut u32, 3) };
        int80(NR32_SOCKETCALL, SYS_CONNECT, low(0), 0)
    } else {
        int80(NR32_CONNECT, fd.as_raw_fd() as u32, low(256), alen)
    };
    let how = if socketcall {
        "i386 socketcall(SYS_CONNECT) via int 0x80"
    } else {
        "i386 connect via int 0x80"
    };
    match int80_result(&format!("{how} {sa}"), r) {
        Ok(_) => {
            let _ = send_fd(fd.as_raw_fd(), PAYLOAD);
            Attempt::success(format!("{how} {sa}: connected"))
        }
        Err(a) => a,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn int80_connect(_sa: SocketAddr, _socketcall: bool, _steps: &mut Steps) -> Attempt {
    Attempt {
        ok: false,
        errno: Some(libc::ENOSYS),
        detail: "int 0x80 vectors exist on x86_64 only".into(),
    }
}

// ---------------------------------------------------------------------------
// Long-running and concurrency modes

/// Unconnected UDP sendmsg to `sa` carrying an IP_TOS / IPV6_TCLASS cmsg.
fn udp_sendmsg_cmsg(sa: SocketAddr, count: usize) -> Attempt {
    let fd = match udp_socket(&sa.ip()) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    let (level, ty, what) = match sa {
        SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_TOS, "IP_TOS"),
        SocketAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_TCLASS, "IPV6_TCLASS"),
    };
    for i in 0..count {
        if let Err(e) = sendmsg_cmsg(fd.as_raw_fd(), Some(&sa), level, ty, &0x28i32.to_ne_bytes()) {
            return Attempt::fail(&format!("sendmsg #{i} to {sa} with {what} cmsg"), &e);
        }
    }
    Attempt::success(format!(
        "{count} datagrams via sendmsg to {sa} with {what}=0x28 cmsg"
    ))
}

fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Connects to --target:--port every --interval-ms (200) for --secs (120),
/// appending one JSON line per attempt to <--logdir>/connect.log; first
/// writes <--logdir>/info.json (sandbox id, cgroup, pin dir, namespace pid).
/// The log is read from the host while the sandbox lives (and after its
/// agent was killed).
fn connect_loop(args: &Args) -> ! {
    let sa = args.target_sa();
    let dir = PathBuf::from(args.req("logdir"));
    let interval = Duration::from_millis(args.num("interval-ms", Some(200)));
    let secs: u64 = args.num("secs", Some(120));
    let env = |k: &str| std::env::var(k).ok();
    // SAFETY: plain syscalls.
    let (pid, ppid, uid) = unsafe { (libc::getpid(), libc::getppid(), libc::geteuid()) };
    let info = json!({
        "pid": pid, "ppid": ppid, "uid": uid,
        "sandbox": env("NONO_SANDBOX_ID"), "cgroup": env("NONO_CGROUP"),
        "pin_dir": env("NONO_BPF_PIN_DIR"), "enforcer": env("NONO_ENFORCER"),
        "marker": args.get("marker"),
    });
    let tmp = dir.join("info.json.tmp");
    if fs::write(&tmp, info.to_string()).is_ok() {
        let _ = fs::rename(&tmp, dir.join("info.json"));
    }
    let mut log = match fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("connect.log"))
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "nono-probe: connect-loop: cannot open log in {}: {e}",
                dir.display()
            );
            exit(1);
        }
    };
    devnull_stdio();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        let a = tcp_connect(sa, 0);
        let line = json!({"n": n, "t": now_unix(), "ok": a.ok, "errno": a.errno,
                          "detail": a.detail});
        let _ = writeln!(log, "{line}");
        let _ = log.flush();
        n += 1;
        std::thread::sleep(interval);
    }
    exit(0);
}

/// `struct sockaddr_in` for a v4 SocketAddr as the two u64 words it
/// occupies (the address and port are in the first).
fn sockaddr_in_words(sa: &SocketAddr) -> [u64; 2] {
    let (ss, _) = sockaddr(sa);
    let mut w = [0u64; 2];
    // SAFETY: sockaddr_storage is at least 16 bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(&ss as *const _ as *const u8, w.as_mut_ptr() as *mut u8, 16)
    };
    w
}

fn peer_of(fd: RawFd) -> Option<SocketAddr> {
    // SAFETY: zeroed storage is a valid out-parameter.
    let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: valid out pointers.
    if unsafe { libc::getpeername(fd, &mut ss as *mut _ as *mut libc::sockaddr, &mut len) } != 0 {
        return None;
    }
    if ss.ss_family as libc::c_int != libc::AF_INET {
        return None;
    }
    // SAFETY: family checked.
    let sin = unsafe { &*(&ss as *const _ as *const libc::sockaddr_in) };
    Some(SocketAddr::new(
        Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).into(),
        u16::from_be(sin.sin_port),
    ))
}

/// Abort a TCP connection with RST on close (no TIME_WAIT), so that tens
/// of thousands of short connections do not exhaust the ephemeral ports.
fn linger_zero(fd: RawFd) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid pointer/length for SO_LINGER.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const _ as *const libc::c_void,
            mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

/// TOCTOU race on the sockaddr: one thread flips a shared sockaddr buffer
/// between 127.0.0.1:--port (allowed) and --target:--deny-port (denied) as
/// fast as it can, --threads threads connect in a loop with that buffer for
/// --secs seconds. Every connect that succeeds must have gone to loopback.
fn race_sockaddr(args: &Args, extra: &mut serde_json::Map<String, Value>) -> Attempt {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let allowed = lo4(args);
    let denied = SocketAddr::new(args.target(), args.num("deny-port", None));
    if !denied.is_ipv4() {
        usage("race-sockaddr needs an IPv4 --target");
    }
    let secs: f64 = args.num("secs", Some(5.0));
    let threads: usize = args.num("threads", Some(2));
    let (wa, wd) = (sockaddr_in_words(&allowed), sockaddr_in_words(&denied));
    // 16-byte aligned shared sockaddr_in; only the first word differs.
    #[repr(C, align(16))]
    struct Shared([AtomicU64; 2]);
    let buf = Arc::new(Shared([AtomicU64::new(wa[0]), AtomicU64::new(wa[1])]));
    let stop = Arc::new(AtomicBool::new(false));
    let flips = Arc::new(AtomicU64::new(0));
    let flipper = {
        let (buf, stop, flips) = (buf.clone(), stop.clone(), flips.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..64 {
                    buf.0[0].store(wd[0], Ordering::Relaxed);
                    buf.0[0].store(wa[0], Ordering::Relaxed);
                }
                n += 128;
            }
            flips.store(n, Ordering::Relaxed);
        })
    };
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let buf = buf.clone();
            std::thread::spawn(move || {
                let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
                let mut leaks: Vec<String> = Vec::new();
                while Instant::now() < deadline {
                    let fd = match socket(libc::AF_INET, libc::SOCK_STREAM, 0) {
                        Ok(fd) => fd,
                        Err(e) => {
                            *counts
                                .entry(format!("socket errno {:?}", e.raw_os_error()))
                                .or_default() += 1;
                            continue;
                        }
                    };
                    set_timeouts(fd.as_raw_fd(), Duration::from_secs(2));
                    linger_zero(fd.as_raw_fd());
                    // SAFETY: the shared buffer is a valid 16-byte
                    // sockaddr_in whichever value it holds.
                    let r = unsafe {
                        libc::connect(fd.as_raw_fd(), buf.0.as_ptr() as *const libc::sockaddr, 16)
                    };
                    if r == 0 {
                        match peer_of(fd.as_raw_fd()) {
                            Some(p) if p == allowed => {
                                *counts.entry("ok-loopback".into()).or_default() += 1
                            }
                            other => {
                                *counts.entry("ok-ELSEWHERE".into()).or_default() += 1;
                                if leaks.len() < 20 {
                                    leaks.push(format!("connected to {other:?}"));
                                }
                            }
                        }
                    } else {
                        let e = io::Error::last_os_error().raw_os_error().unwrap_or(0);
                        let k = match e {
                            libc::EPERM => "EPERM".to_string(),
                            libc::EACCES => "EACCES".to_string(),
                            e => format!("errno {e}"),
                        };
                        *counts.entry(k).or_default() += 1;
                    }
                }
                (counts, leaks)
            })
        })
        .collect();
    let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
    let mut leaks = Vec::new();
    for w in workers {
        if let Ok((c, l)) = w.join() {
            for (k, v) in c {
                *counts.entry(k).or_default() += v;
            }
            leaks.extend(l);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = flipper.join();
    let ok_lo = counts.get("ok-loopback").copied().unwrap_or(0);
    let elsewhere = counts.get("ok-ELSEWHERE").copied().unwrap_or(0);
    extra.insert("counts".into(), json!(counts));
    extra.insert("flips".into(), json!(flips.load(Ordering::Relaxed)));
    extra.insert("leaks".into(), json!(leaks));
    extra.insert("ok_loopback".into(), json!(ok_lo));
    Attempt {
        ok: elsewhere == 0 && ok_lo > 0,
        errno: None,
        detail: format!(
            "{threads} connect threads for {secs}s against a buffer flipped between {allowed} and \
             {denied}: {counts:?}"
        ),
    }
}

/// --count threads connect to 127.0.0.1:--port at once (a barrier releases
/// them together), send one byte and close; all must succeed.
fn parallel_connect(args: &Args, extra: &mut serde_json::Map<String, Value>) -> Attempt {
    let sa = lo4(args);
    let count: usize = args.num("count", Some(200));
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(count));
    let handles: Vec<_> = (0..count)
        .map(|_| {
            let b = barrier.clone();
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || {
                    let fd = socket(libc::AF_INET, libc::SOCK_STREAM, 0)?;
                    set_timeouts(fd.as_raw_fd(), Duration::from_secs(20));
                    b.wait();
                    connect_fd(fd.as_raw_fd(), &sa)?;
                    send_fd(fd.as_raw_fd(), b"x")?;
                    Ok::<_, io::Error>(())
                })
        })
        .collect();
    let mut ok = 0usize;
    let mut errors: std::collections::BTreeMap<String, usize> = Default::default();
    for h in handles {
        match h {
            Ok(h) => match h.join() {
                Ok(Ok(())) => ok += 1,
                Ok(Err(e)) => *errors.entry(e.to_string()).or_default() += 1,
                Err(_) => *errors.entry("thread panicked".into()).or_default() += 1,
            },
            Err(e) => *errors.entry(format!("spawn: {e}")).or_default() += 1,
        }
    }
    extra.insert("succeeded".into(), json!(ok));
    extra.insert("errors".into(), json!(errors));
    Attempt {
        ok: ok == count,
        errno: None,
        detail: format!("{ok}/{count} parallel connects to {sa} succeeded; errors {errors:?}"),
    }
}

static SIGURG_HANDLED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

extern "C" fn on_sigurg(_: libc::c_int) {
    SIGURG_HANDLED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

fn gettid() -> libc::pid_t {
    // SAFETY: plain syscall.
    unsafe { libc::syscall(libc::SYS_gettid) as libc::pid_t }
}

/// Waits for `ev` on `fd`, retrying EINTR (poll is never restarted).
fn poll_retry(fd: RawFd, ev: libc::c_short, surprises: &mut Vec<String>) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut p = libc::pollfd {
            fd,
            events: ev,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, 1000) };
        if n > 0 {
            return true;
        }
        if n < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            surprises.push(format!("poll: {}", io::Error::last_os_error()));
            return false;
        }
        if Instant::now() > deadline {
            surprises.push("poll timed out after 20 s".into());
            return false;
        }
    }
}

/// One echo round trip on a fresh TCP connection to `sa`: `blocking`
/// sockets rely on SA_RESTART; non-blocking ones are driven Go-style
/// (EINPROGRESS + poll + SO_ERROR, EAGAIN + poll). The payload is sent in
/// three parts with send(), sendmsg() and sendto(addr) in turn.
fn echo_round(sa: SocketAddr, blocking: bool, seed: u64, surprises: &mut Vec<String>) -> bool {
    let ty = libc::SOCK_STREAM | if blocking { 0 } else { libc::SOCK_NONBLOCK };
    let fd = match socket(libc::AF_INET, ty, 0) {
        Ok(fd) => fd,
        Err(e) => {
            surprises.push(format!("socket: {e}"));
            return false;
        }
    };
    let raw = fd.as_raw_fd();
    linger_zero(raw);
    match connect_fd(raw, &sa) {
        Ok(()) => {}
        Err(e) if !blocking && e.raw_os_error() == Some(libc::EINPROGRESS) => {
            if !poll_retry(raw, libc::POLLOUT, surprises) {
                return false;
            }
            let mut err: libc::c_int = 0;
            let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: valid out pointers.
            unsafe {
                libc::getsockopt(
                    raw,
                    libc::SOL_SOCKET,
                    libc::SO_ERROR,
                    &mut err as *mut _ as *mut libc::c_void,
                    &mut len,
                )
            };
            if err != 0 {
                surprises.push(format!(
                    "non-blocking connect {sa}: SO_ERROR {}",
                    io::Error::from_raw_os_error(err)
                ));
                return false;
            }
        }
        Err(e) => {
            surprises.push(format!(
                "{} connect {sa}: {e}",
                if blocking { "blocking" } else { "non-blocking" }
            ));
            return false;
        }
    }
    let data: Vec<u8> = (0..6000u64)
        .map(|i| ((i * 31 + seed) % 251) as u8)
        .collect();
    let parts = [&data[..2000], &data[2000..4000], &data[4000..]];
    let (ss, slen) = sockaddr(&sa);
    for (k, part) in parts.iter().enumerate() {
        let mut off = 0;
        while off < part.len() {
            let rest = &part[off..];
            let mut iov = libc::iovec {
                iov_base: rest.as_ptr() as *mut libc::c_void,
                iov_len: rest.len(),
            };
            // SAFETY: all-zero msghdr is valid; iov set below.
            let mut msg: libc::msghdr = unsafe { mem::zeroed() };
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            // SAFETY: valid buffers for each call.
            let n = unsafe {
                match k {
                    0 => libc::send(raw, rest.as_ptr().cast(), rest.len(), libc::MSG_NOSIGNAL),
                    1 => libc::sendmsg(raw, &msg, libc::MSG_NOSIGNAL),
                    _ => libc::sendto(
                        raw,
                        rest.as_ptr().cast(),
                        rest.len(),
                        libc::MSG_NOSIGNAL,
                        &ss as *const _ as *const libc::sockaddr,
                        slen,
                    ),
                }
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if !blocking && e.raw_os_error() == Some(libc::EAGAIN) {
                    if !poll_retry(raw, libc::POLLOUT, surprises) {
                        return false;
                    }
                    continue;
                }
                let call = ["send", "sendmsg", "sendto"][k];
                surprises.push(format!("{call} on a connection to {sa}: {e}"));
                return false;
            }
            off += n as usize;
        }
    }
    // SAFETY: plain syscall on our socket.
    unsafe { libc::shutdown(raw, libc::SHUT_WR) };
    let mut got = Vec::with_capacity(data.len());
    let mut buf = [0u8; 8192];
    loop {
        // SAFETY: valid buffer.
        let n = unsafe { libc::read(raw, buf.as_mut_ptr().cast(), buf.len()) };
        if n == 0 {
            break;
        }
        if n < 0 {
            let e = io::Error::last_os_error();
            if !blocking && e.raw_os_error() == Some(libc::EAGAIN) {
                if !poll_retry(raw, libc::POLLIN, surprises) {
                    return false;
                }
                continue;
            }
            surprises.push(format!("read echo from {sa}: {e}"));
            return false;
        }
        got.extend_from_slice(&buf[..n as usize]);
    }
    if got != data {
        surprises.push(format!(
            "echo from {sa}: sent {} bytes, got {} back ({})",
            data.len(),
            got.len(),
            if got.len() == data.len() {
                "contents differ"
            } else {
                "lost or extra data"
            }
        ));
        return false;
    }
    true
}

/// A UDP datagram to our own loopback socket with sendto(addr), read back.
fn udp_self_round(fd: RawFd, me: SocketAddr, seq: u64, surprises: &mut Vec<String>) -> bool {
    let msg = seq.to_ne_bytes();
    if let Err(e) = sendto_fd(fd, &msg, 0, &me) {
        surprises.push(format!("udp sendto {me}: {e}"));
        return false;
    }
    let mut buf = [0u8; 16];
    loop {
        // SAFETY: valid buffer.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n >= 0 {
            if n as usize != 8 || buf[..8] != msg {
                surprises.push(format!(
                    "udp from self: expected seq {seq}, got {:?}",
                    &buf[..n as usize]
                ));
                return false;
            }
            return true;
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EAGAIN) {
            surprises.push(format!("udp recv: {e}"));
            return false;
        }
        if !poll_retry(fd, libc::POLLIN, surprises) {
            return false;
        }
    }
}

/// "Go under preemption signals": a handler for SIGURG (SA_RESTART), one
/// thread sends SIGURG to every worker thread about every --signal-us (50)
/// microseconds while --threads workers, for --secs seconds, do echo round
/// trips to 127.0.0.1:--port (half with blocking sockets, half
/// non-blocking), a UDP round trip to themselves, and a connect to
/// --target:--deny-port, which must fail with EPERM every time.
fn signal_storm(args: &Args, extra: &mut serde_json::Map<String, Value>) -> Attempt {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    let sa = lo4(args);
    let denied = SocketAddr::new(args.target(), args.num("deny-port", None));
    let secs: f64 = args.num("secs", Some(3.0));
    let threads: usize = args.num("threads", Some(4));
    let period = Duration::from_micros(args.num("signal-us", Some(50)));
    // SAFETY: installing a handler that only bumps an atomic counter.
    unsafe {
        let mut act: libc::sigaction = mem::zeroed();
        act.sa_sigaction = on_sigurg as *const () as usize;
        act.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut act.sa_mask);
        if libc::sigaction(libc::SIGURG, &act, std::ptr::null_mut()) != 0 {
            return Attempt::last_os("sigaction(SIGURG)");
        }
    }
    let tids = Arc::new(Mutex::new(Vec::<libc::pid_t>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let workers: Vec<_> = (0..threads)
        .map(|w| {
            let tids = tids.clone();
            std::thread::spawn(move || {
                tids.lock().unwrap().push(gettid());
                let mut surprises = Vec::new();
                let mut c: std::collections::BTreeMap<&'static str, u64> = Default::default();
                let udp = match socket(libc::AF_INET, libc::SOCK_DGRAM, 0) {
                    Ok(fd) => fd,
                    Err(e) => return (c, vec![format!("udp socket: {e}")]),
                };
                let (ss, len) = sockaddr(&SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0));
                // SAFETY: valid sockaddr.
                unsafe {
                    libc::bind(
                        udp.as_raw_fd(),
                        &ss as *const _ as *const libc::sockaddr,
                        len,
                    )
                };
                let me = udp_local_addr(udp.as_raw_fd());
                let blocking = w % 2 == 0;
                let mut i = 0u64;
                while Instant::now() < deadline && surprises.len() < 20 {
                    if echo_round(sa, blocking, i + w as u64, &mut surprises) {
                        *c.entry("echo-ok").or_default() += 1;
                    }
                    if let Some(me) = me {
                        if udp_self_round(udp.as_raw_fd(), me, i, &mut surprises) {
                            *c.entry("udp-ok").or_default() += 1;
                        }
                    }
                    let a = tcp_connect(denied, 0);
                    if a.ok {
                        surprises.push(format!("LEAK: connect {denied} succeeded"));
                    } else if a.errno == Some(libc::EPERM) || a.errno == Some(libc::EACCES) {
                        *c.entry("denied-eperm").or_default() += 1;
                    } else {
                        surprises.push(format!("connect {denied}: {}", a.detail));
                    }
                    i += 1;
                }
                *c.entry("iterations").or_default() += i;
                (c, surprises)
            })
        })
        .collect();
    let signaller = {
        let (tids, stop, sent) = (tids.clone(), stop.clone(), sent.clone());
        std::thread::spawn(move || {
            // SAFETY: plain syscall.
            let pid = unsafe { libc::getpid() };
            while !stop.load(Ordering::Relaxed) {
                let list = tids.lock().unwrap().clone();
                for t in list {
                    // SAFETY: tgkill to a thread of our own process (it may
                    // have exited: ESRCH is harmless).
                    if unsafe { libc::syscall(libc::SYS_tgkill, pid, t, libc::SIGURG) } == 0 {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(period);
            }
        })
    };
    let mut counts: std::collections::BTreeMap<&'static str, u64> = Default::default();
    let mut surprises = Vec::new();
    for w in workers {
        match w.join() {
            Ok((c, s)) => {
                for (k, v) in c {
                    *counts.entry(k).or_default() += v;
                }
                surprises.extend(s);
            }
            Err(_) => surprises.push("worker panicked".into()),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = signaller.join();
    let handled = SIGURG_HANDLED.load(Ordering::Relaxed);
    let sent = sent.load(Ordering::Relaxed);
    extra.insert("counts".into(), json!(counts));
    extra.insert("surprises".into(), json!(surprises));
    extra.insert("signals_sent".into(), json!(sent));
    extra.insert("signals_handled".into(), json!(handled));
    let iters = counts.get("iterations").copied().unwrap_or(0);
    Attempt {
        ok: surprises.is_empty() && iters > 0,
        errno: None,
        detail: format!(
            "{threads} threads, {secs}s, {sent} SIGURG sent ({handled} handled): {counts:?}; \
             surprises: {surprises:?}"
        ),
    }
}

fn udp_local_addr(fd: RawFd) -> Option<SocketAddr> {
    // SAFETY: zeroed storage is a valid out-parameter.
    let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: valid out pointers.
    if unsafe { libc::getsockname(fd, &mut ss as *mut _ as *mut libc::sockaddr, &mut len) } != 0 {
        return None;
    }
    // SAFETY: an AF_INET socket.
    let sin = unsafe { &*(&ss as *const _ as *const libc::sockaddr_in) };
    Some(SocketAddr::new(
        Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).into(),
        u16::from_be(sin.sin_port),
    ))
}

/// Passes a pipe's write end over a unix socketpair (stream and datagram)
/// with SCM_RIGHTS, writes through the received descriptor and reads it
/// back from the pipe.
fn scm_rights(steps: &mut Steps) -> Attempt {
    let mut all_ok = true;
    for (ty, name) in [(libc::SOCK_STREAM, "stream"), (libc::SOCK_DGRAM, "dgram")] {
        let a = scm_rights_once(ty);
        all_ok &= a.ok;
        steps.push(name, &a);
    }
    if all_ok {
        Attempt::success("SCM_RIGHTS over unix stream and datagram socketpairs works")
    } else {
        let bad: Vec<_> = steps
            .0
            .iter()
            .filter(|s| s["ok"] == false)
            .cloned()
            .collect();
        Attempt {
            ok: false,
            errno: bad
                .first()
                .and_then(|s| s["errno"].as_i64())
                .map(|e| e as i32),
            detail: format!("SCM_RIGHTS failed: {bad:?}"),
        }
    }
}

fn scm_rights_once(ty: libc::c_int) -> Attempt {
    let mut sv = [0; 2];
    // SAFETY: valid out array.
    if unsafe { libc::socketpair(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0, sv.as_mut_ptr()) } != 0
    {
        return Attempt::last_os("socketpair(AF_UNIX)");
    }
    // SAFETY: fresh descriptors we own.
    let (s0, s1) = unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) };
    let mut p = [0; 2];
    // SAFETY: valid out array.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Attempt::last_os("pipe2");
    }
    // SAFETY: fresh descriptors we own.
    let (pr, pw) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    if let Err(e) = sendmsg_cmsg_data(
        s0.as_raw_fd(),
        b"fd",
        libc::SOL_SOCKET,
        libc::SCM_RIGHTS,
        &pw.as_raw_fd().to_ne_bytes(),
    ) {
        return Attempt::fail("sendmsg(SCM_RIGHTS)", &e);
    }
    drop(pw);
    let mut data = [0u8; 16];
    let mut cbuf = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: all-zero msghdr is valid; fields set below.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = mem::size_of_val(&cbuf) as _;
    // SAFETY: live buffers.
    let n = unsafe { libc::recvmsg(s1.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Attempt::last_os("recvmsg");
    }
    let mut got = None;
    // SAFETY: walking the control buffer the kernel filled in.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        if !c.is_null() && (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS
        {
            got = Some(std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const i32));
        }
    }
    let Some(fd) = got else {
        return Attempt {
            ok: false,
            errno: None,
            detail: format!(
                "recvmsg: {n} bytes {:?} but no SCM_RIGHTS descriptor",
                &data[..n as usize]
            ),
        };
    };
    // SAFETY: a descriptor the kernel installed for us.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if let Err(e) =
        cvt(unsafe { libc::write(fd.as_raw_fd(), b"hello".as_ptr().cast(), 5) } as libc::c_int)
    {
        return Attempt::fail("write through the received descriptor", &e);
    }
    drop(fd);
    let mut out = [0u8; 8];
    // SAFETY: valid buffer.
    let n = unsafe { libc::read(pr.as_raw_fd(), out.as_mut_ptr().cast(), out.len()) };
    if n != 5 || &out[..5] != b"hello" {
        return Attempt {
            ok: false,
            errno: None,
            detail: format!(
                "pipe read {n} bytes {:?}, expected \"hello\"",
                &out[..n.max(0) as usize]
            ),
        };
    }
    Attempt::success("passed a pipe over SCM_RIGHTS and wrote through it")
}

/// sendmsg() of `payload` with one control message (no destination).
fn sendmsg_cmsg_data(
    fd: RawFd,
    payload: &[u8],
    level: libc::c_int,
    ty: libc::c_int,
    data: &[u8],
) -> io::Result<usize> {
    let (mut cbuf, clen) = cmsg_buf(level, ty, data);
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: all-zero msghdr is valid; fields set below.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = clen as _;
    // SAFETY: msg points to live buffers for the call.
    let n = unsafe { libc::sendmsg(fd, &msg, 0) };
    errno_of(n as libc::c_long).map(|n| n as usize)
}

/// Descriptors of another process (default: our parent; under a privileged
/// agent that is the pid namespace's init, a fork of the agent; without
/// privileges it is the agent itself) taken with pidfd_getfd and used
/// (`--use links|cgroup|listener|all`): BPF links are detached; through a
/// cgroup directory, "0" is written to its ancestors' cgroup.procs; a
/// seccomp listener answers our own notifications with "continue" (from a
/// second thread). Then --target:--port is connected (--tries times).
/// Also reports whether PTRACE_SEIZE of that process works.
fn steal_fds(
    args: &Args,
    steps: &mut Steps,
    extra: &mut serde_json::Map<String, Value>,
) -> Attempt {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let sa = args.target_sa();
    let use_ = args.get("use").unwrap_or("all").to_string();
    let uses = |t: &str| use_ == "all" || use_ == t;
    // SAFETY: plain syscall.
    let from: i32 = args.num("from", Some(unsafe { libc::getppid() }));
    extra.insert("from".into(), json!(from));
    extra.insert(
        "from_comm".into(),
        json!(fs::read_to_string(format!("/proc/{from}/comm")).ok()),
    );
    // SAFETY: plain syscall; the result is a new fd we own.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, from, 0) };
    if pidfd < 0 {
        steps.push(
            "pidfd_open",
            &Attempt::last_os(&format!("pidfd_open({from})")),
        );
    }
    let fds: Vec<(i32, String)> = match fs::read_dir(format!("/proc/{from}/fd")) {
        Ok(rd) => rd
            .flatten()
            .filter_map(|e| {
                let n: i32 = e.file_name().to_str()?.parse().ok()?;
                let l = fs::read_link(e.path())
                    .map(|l| l.display().to_string())
                    .unwrap_or_default();
                Some((n, l))
            })
            .collect(),
        Err(e) => {
            steps.push(
                "list-fds",
                &Attempt::fail(&format!("list /proc/{from}/fd"), &e),
            );
            // Blind: try the first 64 descriptors.
            (0..64).map(|n| (n, String::new())).collect()
        }
    };
    let mut stolen = Vec::new();
    let mut listeners = Vec::new();
    if pidfd >= 0 {
        for (n, link) in &fds {
            // SAFETY: plain syscall; the result is a new fd we own.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd as i32, *n, 0) };
            if fd < 0 {
                let e = io::Error::last_os_error();
                if !link.is_empty() || e.raw_os_error() != Some(libc::EBADF) {
                    steps.push(
                        &format!("getfd {n} {link}"),
                        &Attempt::fail("pidfd_getfd", &e),
                    );
                }
                continue;
            }
            let fd = fd as i32;
            let what = fs::read_link(format!("/proc/self/fd/{fd}"))
                .map(|l| l.display().to_string())
                .unwrap_or_default();
            steps.push(
                &format!("getfd {n}"),
                &Attempt::success(format!("got {what} as fd {fd}")),
            );
            stolen.push(what.clone());
            if uses("links") && (what.contains("bpf-link") || what.contains("bpf_link")) {
                let mut d = bpf::Attr::new();
                d.u32_at(0, fd as u32);
                steps.push(
                    &format!("link-detach {n}"),
                    &match bpf::sys(bpf::BPF_LINK_DETACH, &mut d) {
                        Ok(_) => Attempt::success("detached a stolen BPF link"),
                        Err(e) => Attempt::fail("BPF_LINK_DETACH", &e),
                    },
                );
            }
            if uses("listener") && what.contains("seccomp") {
                listeners.push(fd);
            }
            if uses("cgroup")
                && what.starts_with('/')
                && Path::new(&format!("/proc/self/fd/{fd}")).is_dir()
            {
                // A directory of the agent's: if it is a cgroup, its
                // ancestors' cgroup.procs are reachable through it even
                // though every cgroup mount is hidden by path.
                for rel in ["../../cgroup.procs", "../cgroup.procs"] {
                    let Ok(c) = CString::new(rel) else { continue };
                    // SAFETY: valid dirfd and C string.
                    let f =
                        unsafe { libc::openat(fd, c.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
                    if f < 0 {
                        let e = io::Error::last_os_error();
                        if e.raw_os_error() != Some(libc::ENOENT) {
                            steps.push(
                                &format!("move-via {what}/{rel}"),
                                &Attempt::fail("openat", &e),
                            );
                        }
                        continue;
                    }
                    // SAFETY: a descriptor we just opened.
                    let mut f = unsafe { fs::File::from_raw_fd(f) };
                    steps.push(
                        &format!("move-via {what}/{rel}"),
                        &match f.write_all(b"0") {
                            Ok(()) => Attempt::success(format!("wrote \"0\" to {what}/{rel}")),
                            Err(e) => Attempt::fail("write", &e),
                        },
                    );
                }
            }
        }
    }
    extra.insert("stolen".into(), json!(stolen));
    extra.insert("cgroup_after".into(), json!(own_cgroup()));
    // SAFETY: ptrace(SEIZE) then DETACH of one pid; informational.
    let seized = unsafe { libc::ptrace(libc::PTRACE_SEIZE, from, 0, 0) } == 0;
    steps.push(
        "ptrace-seize",
        &if seized {
            // SAFETY: detaching the tracee we just seized.
            unsafe { libc::ptrace(libc::PTRACE_DETACH, from, 0, 0) };
            Attempt::success(format!("PTRACE_SEIZE of {from} succeeded"))
        } else {
            Attempt::last_os(&format!("PTRACE_SEIZE {from}"))
        },
    );
    // Answer our own notifications with CONTINUE from other threads.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let mut helpers = Vec::new();
    for &l in &listeners {
        let (stop, answered) = (stop.clone(), answered.clone());
        helpers.push(std::thread::spawn(move || {
            const CONTINUE: u32 = 1;
            while !stop.load(Ordering::Relaxed) {
                let mut p = libc::pollfd {
                    fd: l,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                if unsafe { libc::poll(&mut p, 1, 50) } <= 0 {
                    continue;
                }
                // SAFETY: zeroed notification struct as the ioctl expects.
                let mut n: libc::seccomp_notif = unsafe { mem::zeroed() };
                // SAFETY: valid fd and out struct.
                if unsafe { libc::ioctl(l, libc::SECCOMP_IOCTL_NOTIF_RECV, &mut n) } != 0 {
                    continue;
                }
                let mut resp = libc::seccomp_notif_resp {
                    id: n.id,
                    val: 0,
                    error: 0,
                    flags: CONTINUE,
                };
                // SAFETY: valid fd and response struct.
                if unsafe { libc::ioctl(l, libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp) } == 0 {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let tries: usize = args.num("tries", Some(if listeners.is_empty() { 1 } else { 40 }));
    let mut last = Attempt::success("no attempt");
    for _ in 0..tries {
        last = tcp_connect(sa, 0);
        if last.ok {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for h in helpers {
        let _ = h.join();
    }
    extra.insert(
        "answered_with_continue".into(),
        json!(answered.load(Ordering::Relaxed)),
    );
    last
}

/// From inside the sandbox: SIGKILL the parent (under a privileged agent,
/// the pid namespace's init) and then every process we may signal
/// (`kill(-1)`); wait a little; connect. `--kill-parent 0` / `--kill-all 0`
/// skip a step.
fn kill_agent(
    args: &Args,
    steps: &mut Steps,
    extra: &mut serde_json::Map<String, Value>,
) -> Attempt {
    let sa = args.target_sa();
    // SAFETY: plain syscalls.
    let ppid = unsafe { libc::getppid() };
    extra.insert("ppid_before".into(), json!(ppid));
    if args.num::<u8>("kill-parent", Some(1)) == 1 {
        // SAFETY: plain syscall.
        let k = if unsafe { libc::kill(ppid, libc::SIGKILL) } == 0 {
            Attempt::success(format!("kill({ppid}, SIGKILL) returned 0"))
        } else {
            Attempt::last_os(&format!("kill({ppid}, SIGKILL)"))
        };
        steps.push("kill-parent", &k);
    }
    if args.num::<u8>("kill-all", Some(1)) == 1 {
        // SAFETY: plain syscall.
        let k = if unsafe { libc::kill(-1, libc::SIGKILL) } == 0 {
            Attempt::success("kill(-1, SIGKILL) returned 0")
        } else {
            Attempt::last_os("kill(-1, SIGKILL)")
        };
        steps.push("kill-all", &k);
    }
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: plain syscall.
    extra.insert("ppid_after".into(), json!(unsafe { libc::getppid() }));
    tcp_connect(sa, 0)
}

// ---------------------------------------------------------------------------
// Channels of issue 8: inbound listeners, data queued at teardown, device
// binding, multicast memberships, the supervisor's rights.

/// A `sockaddr_storage` as a `SocketAddr` (AF_INET / AF_INET6 only).
fn from_sockaddr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match ss.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: family checked.
            let sin = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).into(),
                u16::from_be(sin.sin_port),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: family checked.
            let sin6 = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr).into(),
                u16::from_be(sin6.sin6_port),
            ))
        }
        _ => None,
    }
}

/// getsockname() of an inet socket, either family.
fn sockname(fd: RawFd) -> Option<SocketAddr> {
    // SAFETY: zeroed storage is a valid out-parameter.
    let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: valid out pointers.
    if unsafe { libc::getsockname(fd, &mut ss as *mut _ as *mut libc::sockaddr, &mut len) } != 0 {
        return None;
    }
    from_sockaddr(&ss)
}

fn bind_fd(fd: RawFd, sa: &SocketAddr) -> io::Result<()> {
    let (ss, len) = sockaddr(sa);
    // SAFETY: ss/len describe a valid sockaddr.
    cvt(unsafe { libc::bind(fd, &ss as *const _ as *const libc::sockaddr, len) }).map(|_| ())
}

/// Writes `v` to `<dir>/<name>` through a rename, so the test never reads
/// a half-written file.
fn write_json(dir: &Path, name: &str, v: &Value) {
    let tmp = dir.join(format!("{name}.tmp"));
    if fs::write(&tmp, v.to_string()).is_ok() {
        let _ = fs::rename(&tmp, dir.join(name));
    }
}

/// Waits until `<dir>/stop` exists (the test is done) or `secs` passed,
/// calling `tick` every 50 ms meanwhile (0 ms poll granularity otherwise).
fn until_stopped(dir: &Path, secs: u64, mut tick: impl FnMut()) {
    let start = Instant::now();
    while !dir.join("stop").exists() && start.elapsed() < Duration::from_secs(secs) {
        tick();
    }
}

fn poll_in(fd: RawFd, ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, ms) > 0 }
}

/// A TCP listener: `--bind ADDR` (or `unbound4` / `unbound6`: `listen()`
/// on an unbound socket, which autobinds to the wildcard address),
/// `--port` (0: any), `--v6only 0|1`, `--mss N` (TCP_MAXSEG), `--backlog N`,
/// `--accept 1|0`. Writes `<--logdir>/ready.json` (the bound address, or
/// the refusal), then until `<--logdir>/stop` appears or `--secs` pass,
/// accepts and writes `--secret` to every connection (peers appended to
/// `accepted.log`). The result lists the accepted peers.
fn listen_serve(
    args: &Args,
    steps: &mut Steps,
    extra: &mut serde_json::Map<String, Value>,
) -> Attempt {
    let dir = PathBuf::from(args.req("logdir"));
    let bind = args.req("bind");
    let port: u16 = args.num("port", Some(0));
    let (dom, addr) = match bind {
        "unbound4" => (libc::AF_INET, None),
        "unbound6" => (libc::AF_INET6, None),
        a => {
            let ip: IpAddr = a
                .parse()
                .unwrap_or_else(|_| usage(&format!("--bind: bad address {a:?}")));
            (family(&ip), Some(SocketAddr::new(ip, port)))
        }
    };
    let ready = |a: &Attempt, local: Option<SocketAddr>| {
        write_json(
            &dir,
            "ready.json",
            &json!({"ok": a.ok, "errno": a.errno, "detail": a.detail,
                    "local": local.map(|l| l.to_string())}),
        );
    };
    let fail = |what: &str, e: io::Error| {
        let a = Attempt::fail(what, &e);
        ready(&a, None);
        a
    };
    let fd = match socket(dom, libc::SOCK_STREAM, 0) {
        Ok(fd) => fd,
        Err(e) => return fail("socket", e),
    };
    let raw = fd.as_raw_fd();
    let _ = setsockopt_i32(raw, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
    if let Some(mss) = args.get("mss") {
        let v: i32 = mss.parse().unwrap_or_else(|_| usage("--mss: bad number"));
        if let Err(e) = setsockopt_i32(raw, libc::IPPROTO_TCP, libc::TCP_MAXSEG, v) {
            return fail(&format!("setsockopt TCP_MAXSEG {v}"), e);
        }
        steps.push("mss", &Attempt::success(format!("TCP_MAXSEG {v}")));
    }
    if dom == libc::AF_INET6 {
        let v6only = args.num("v6only", Some(0));
        if let Err(e) = setsockopt_i32(raw, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, v6only) {
            return fail("setsockopt IPV6_V6ONLY", e);
        }
    }
    if let Some(sa) = addr {
        if let Err(e) = bind_fd(raw, &sa) {
            return fail(&format!("bind {sa}"), e);
        }
    }
    let backlog = args.num("backlog", Some(16));
    // SAFETY: plain syscall.
    if let Err(e) = cvt(unsafe { libc::listen(raw, backlog) }) {
        return fail(&format!("listen({backlog}) on {bind}"), e);
    }
    let local = sockname(raw);
    extra.insert("local".into(), json!(local.map(|l| l.to_string())));
    let listening = Attempt::success(format!("listening on {local:?} (asked {bind})"));
    ready(&listening, local);
    let secret = args
        .get("secret")
        .unwrap_or("nono-secret")
        .as_bytes()
        .to_vec();
    let mut peers = Vec::new();
    let accept = args.num::<u8>("accept", Some(1)) == 1;
    until_stopped(&dir, args.num("secs", Some(20)), || {
        if !accept || !poll_in(raw, 50) {
            if !accept {
                std::thread::sleep(Duration::from_millis(50));
            }
            return;
        }
        // SAFETY: zeroed storage is a valid out-parameter.
        let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: valid out pointers.
        let c = unsafe {
            libc::accept4(
                raw,
                &mut ss as *mut _ as *mut libc::sockaddr,
                &mut len,
                libc::SOCK_CLOEXEC,
            )
        };
        if c < 0 {
            return;
        }
        // SAFETY: a fresh descriptor we own.
        let conn = unsafe { OwnedFd::from_raw_fd(c) };
        let peer = from_sockaddr(&ss).map(|p| p.to_string());
        let sent = send_fd(conn.as_raw_fd(), &secret);
        let line = json!({"peer": peer, "sent": sent.as_ref().ok(),
                          "error": sent.as_ref().err().map(|e| e.to_string())});
        if let Ok(mut f) = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("accepted.log"))
        {
            let _ = writeln!(f, "{line}");
        }
        peers.push(line);
    });
    extra.insert("accepted".into(), Value::Array(peers));
    listening
}

/// A UDP socket bound to `--bind:--port` (an address, e.g. `::` for dual
/// stack) that records every datagram it receives until `<--logdir>/stop`
/// (or `--secs`); writes `ready.json` once bound. The result lists the
/// payloads and their senders.
fn udp_serve(args: &Args, extra: &mut serde_json::Map<String, Value>) -> Attempt {
    let dir = PathBuf::from(args.req("logdir"));
    let ip: IpAddr = args
        .req("bind")
        .parse()
        .unwrap_or_else(|_| usage("--bind: bad address"));
    let sa = SocketAddr::new(ip, args.num("port", Some(0)));
    let bound = socket(family(&ip), libc::SOCK_DGRAM, 0).and_then(|fd| {
        if ip.is_ipv6() {
            setsockopt_i32(fd.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)?;
        }
        bind_fd(fd.as_raw_fd(), &sa)?;
        Ok(fd)
    });
    let fd = match bound {
        Ok(fd) => fd,
        Err(e) => {
            let a = Attempt::fail(&format!("bind udp {sa}"), &e);
            write_json(
                &dir,
                "ready.json",
                &json!({"ok": false, "detail": a.detail}),
            );
            return a;
        }
    };
    let local = sockname(fd.as_raw_fd());
    write_json(
        &dir,
        "ready.json",
        &json!({"ok": true, "local": local.map(|l| l.to_string())}),
    );
    let mut got = Vec::new();
    until_stopped(&dir, args.num("secs", Some(20)), || {
        if !poll_in(fd.as_raw_fd(), 50) {
            return;
        }
        let mut buf = [0u8; 2048];
        // SAFETY: zeroed storage is a valid out-parameter.
        let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: valid buffers.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                libc::MSG_DONTWAIT,
                &mut ss as *mut _ as *mut libc::sockaddr,
                &mut len,
            )
        };
        if n >= 0 {
            got.push(json!({
                "from": from_sockaddr(&ss).map(|a| a.to_string()),
                "payload": String::from_utf8_lossy(&buf[..n as usize]),
            }));
        }
    });
    let n = got.len();
    extra.insert("received".into(), Value::Array(got));
    Attempt::success(format!("bound {local:?}, received {n} datagrams"))
}

/// Binds a TCP and a UDP socket to each of `--addrs` (comma-separated, port
/// 0), one step per bind ("tcp ADDR", "udp ADDR") with the address the
/// kernel reports afterwards.
fn bind_check(args: &Args, steps: &mut Steps) -> Attempt {
    let mut all = true;
    for a in args.req("addrs").split(',') {
        let ip: IpAddr = a
            .parse()
            .unwrap_or_else(|_| usage(&format!("--addrs: bad address {a:?}")));
        for (ty, name) in [(libc::SOCK_STREAM, "tcp"), (libc::SOCK_DGRAM, "udp")] {
            let sa = SocketAddr::new(ip, 0);
            let r = socket(family(&ip), ty, 0).and_then(|fd| {
                bind_fd(fd.as_raw_fd(), &sa)?;
                Ok(sockname(fd.as_raw_fd()))
            });
            let at = match r {
                Ok(local) => Attempt::success(format!("bound, getsockname {local:?}")),
                Err(e) => Attempt::fail(&format!("bind {sa}"), &e),
            };
            all &= at.ok;
            steps.push(&format!("{name} {a}"), &at);
        }
    }
    if all {
        Attempt::success("every bind succeeded")
    } else {
        Attempt {
            ok: false,
            errno: None,
            detail: "some binds were refused (see steps)".into(),
        }
    }
}

/// Connects to `--target:--port`, writes up to `--bytes` without blocking
/// (stopping once the send queue has been full for 300 ms), reports what was
/// written and what is still queued (SIOCOUTQ), and exits with the data
/// queued; with `--logdir`, first writes `ready.json` and waits for
/// `<logdir>/stop` (or `--secs`), so the test can kill the agent meanwhile.
fn bulk_hold(args: &Args, extra: &mut serde_json::Map<String, Value>) -> Attempt {
    let sa = args.target_sa();
    let bytes: usize = args.num("bytes", Some(1 << 20));
    let fd = match socket(family(&sa.ip()), libc::SOCK_STREAM, 0) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    let raw = fd.as_raw_fd();
    let _ = setsockopt_i32(raw, libc::SOL_SOCKET, libc::SO_SNDBUF, bytes as i32);
    set_timeouts(raw, CONNECT_TIMEOUT);
    if let Err(e) = connect_fd(raw, &sa) {
        return Attempt::fail(&format!("connect {sa}"), &e);
    }
    // SAFETY: plain fcntl on our descriptor.
    unsafe { libc::fcntl(raw, libc::F_SETFL, libc::O_NONBLOCK) };
    let chunk = vec![0x5au8; 65536];
    let mut written = 0usize;
    while written < bytes {
        let n = (bytes - written).min(chunk.len());
        match send_fd(raw, &chunk[..n]) {
            Ok(k) => written += k,
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                let mut pfd = libc::pollfd {
                    fd: raw,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                if unsafe { libc::poll(&mut pfd, 1, 300) } <= 0 {
                    break;
                }
            }
            Err(e) => return Attempt::fail(&format!("send to {sa} after {written} bytes"), &e),
        }
    }
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (= TIOCOUTQ) writes an int.
    unsafe { libc::ioctl(raw, libc::TIOCOUTQ, &mut queued) };
    let local = sockname(raw).map(|l| l.to_string());
    extra.insert("written".into(), json!(written));
    extra.insert("queued".into(), json!(queued));
    extra.insert("local".into(), json!(local));
    if let Some(d) = args.get("logdir") {
        let dir = PathBuf::from(d);
        write_json(
            &dir,
            "ready.json",
            &json!({"written": written, "queued": queued, "local": local}),
        );
        until_stopped(&dir, args.num("secs", Some(20)), || {
            std::thread::sleep(Duration::from_millis(50))
        });
    }
    Attempt::success(format!(
        "wrote {written} of {bytes} bytes to {sa} from {local:?}, {queued} still queued"
    ))
}

/// SO_BINDTODEVICE (`--how name`) or SO_BINDTOIFINDEX (`--how index`) of a
/// UDP socket to `--iface`, then `--count` datagrams to 127.0.0.1:--port
/// (no capability needed since Linux 5.7 for an unbound socket: the packet
/// leaves through that interface once a host there answers ARP for
/// 127.0.0.1). Adds `refused_at` (the step that was refused, or null).
fn bindtodevice_loopback(
    args: &Args,
    steps: &mut Steps,
    extra: &mut serde_json::Map<String, Value>,
) -> Attempt {
    extra.insert("refused_at".into(), Value::Null);
    let iface = args.req("iface");
    let dst = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), args.port());
    let fd = match udp_socket(&dst.ip()) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    let how = args.get("how").unwrap_or("name");
    if let Err(a) = bind_device(fd.as_raw_fd(), how, iface) {
        return refused(extra, "setsockopt", a);
    }
    steps.push(
        "setsockopt",
        &Attempt::success(format!("bound to {iface} ({how})")),
    );
    let count = args.num("count", Some(3));
    let mut sent = 0;
    let mut last = None;
    for i in 0..count {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
        match sendto_fd(fd.as_raw_fd(), PAYLOAD, 0, &dst) {
            Ok(_) => sent += 1,
            Err(e) => last = Some(e),
        }
    }
    match (sent, last) {
        (0, Some(e)) => refused(extra, "send", Attempt::fail(&format!("sendto {dst}"), &e)),
        _ => Attempt::success(format!(
            "{sent}/{count} datagrams to {dst} bound to {iface}"
        )),
    }
}

/// SO_BINDTODEVICE with `dev` as the name (`how` "name"; "" unbinds) or
/// SO_BINDTOIFINDEX with its index (`how` "index"; `dev` may be a number,
/// "0" unbinds).
fn bind_device(fd: RawFd, how: &str, dev: &str) -> Result<(), Attempt> {
    let r = match how {
        "name" => setsockopt_bytes(fd, libc::SOL_SOCKET, libc::SO_BINDTODEVICE, dev.as_bytes()),
        "index" => {
            let idx = match dev.parse::<u32>() {
                Ok(i) => i,
                Err(_) => iface_index(dev).map_err(|e| Attempt::fail("if_nametoindex", &e))?,
            };
            setsockopt_i32(fd, libc::SOL_SOCKET, 62, idx as i32)
        }
        other => usage(&format!("--how: name or index, not {other:?}")),
    };
    r.map_err(|e| {
        let opt = if how == "name" {
            "SO_BINDTODEVICE"
        } else {
            "SO_BINDTOIFINDEX"
        };
        Attempt::fail(&format!("setsockopt {opt} {dev:?}"), &e)
    })
}

/// What must keep working under the BPF enforcer: a UDP socket bound to
/// `lo` by name, by index, and "unbound" (name "", index 0) each sends
/// one datagram ("lo-name", "lo-index", "unbind-name", "unbind-index") to
/// 127.0.0.1:--port. One step per setsockopt and per send.
fn bindtodevice_lo(args: &Args, steps: &mut Steps) -> Attempt {
    let dst = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), args.port());
    let plan: [(&str, &[(&str, &str)]); 4] = [
        ("lo-name", &[("name", "lo")]),
        ("lo-index", &[("index", "1")]),
        // A bound socket may only be rebound with CAP_NET_RAW: unbinding
        // is tried on a fresh socket (what a program clearing the option
        // does).
        ("unbind-name", &[("name", "")]),
        ("unbind-index", &[("index", "0")]),
    ];
    let mut all = true;
    for (label, opts) in plan {
        let fd = match udp_socket(&dst.ip()) {
            Ok(fd) => fd,
            Err(e) => return Attempt::fail("socket", &e),
        };
        let mut ok = true;
        for (how, dev) in opts.iter() {
            let r = bind_device(fd.as_raw_fd(), how, dev);
            let a = r
                .err()
                .unwrap_or_else(|| Attempt::success(format!("{how} {dev:?}")));
            ok &= a.ok;
            steps.push(&format!("{label}: setsockopt {how} {dev:?}"), &a);
        }
        if ok {
            let a = match sendto_fd(fd.as_raw_fd(), label.as_bytes(), 0, &dst) {
                Ok(n) => Attempt::success(format!("sent {n} bytes to {dst}")),
                Err(e) => Attempt::fail(&format!("sendto {dst}"), &e),
            };
            ok &= a.ok;
            steps.push(&format!("{label}: send"), &a);
        }
        all &= ok;
    }
    if all {
        Attempt::success("every binding to lo, unbinding and send worked")
    } else {
        Attempt {
            ok: false,
            errno: None,
            detail: "some step failed (see steps)".into(),
        }
    }
}

/// `struct group_req` / `struct group_source_req` (MCAST_* options).
#[repr(C)]
struct GroupReq {
    interface: u32,
    group: libc::sockaddr_storage,
    source: libc::sockaddr_storage,
}

const IP_ADD_SOURCE_MEMBERSHIP: libc::c_int = 39;
const MCAST_JOIN_GROUP: libc::c_int = 42;
const MCAST_JOIN_SOURCE_GROUP: libc::c_int = 46;

fn as_bytes<T>(v: &T, len: usize) -> &[u8] {
    assert!(len <= mem::size_of::<T>());
    // SAFETY: a plain-data value viewed as its first `len` bytes.
    unsafe { std::slice::from_raw_parts(v as *const T as *const u8, len) }
}

/// Joins multicast group `--group` on `--iface` with one option (`--how`):
/// `ip-add-membership` (ip_mreqn), `ip-add-source-membership`
/// (ip_mreq_source, source `--source`), `mcast-join-group` and
/// `mcast-join-source-group` (group_req / group_source_req, at SOL_IP or
/// SOL_IPV6 by the group's family), `ipv6-join-group` (ipv6_mreq,
/// IPV6_ADD_MEMBERSHIP = IPV6_JOIN_GROUP), or `ip-drop-membership`
/// (IP_ADD_MEMBERSHIP, then IP_DROP_MEMBERSHIP: the result is the drop's).
/// A successful join is held `--hold-ms` (300) so the kernel's reports go
/// out, then the socket is closed (which leaves the group: another report).
fn mcast_join(args: &Args, steps: &mut Steps) -> Attempt {
    let iface = args.req("iface");
    let group: IpAddr = args
        .req("group")
        .parse()
        .unwrap_or_else(|_| usage("--group: bad address"));
    let source: Option<IpAddr> = args.get("source").map(|s| {
        s.parse()
            .unwrap_or_else(|_| usage(&format!("--source: bad address {s:?}")))
    });
    let how = args.req("how");
    let idx = match iface_index(iface) {
        Ok(i) => i,
        Err(e) => return Attempt::fail(&format!("if_nametoindex({iface})"), &e),
    };
    let fd = match udp_socket(&group) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    let raw = fd.as_raw_fd();
    let level = if group.is_ipv4() {
        libc::IPPROTO_IP
    } else {
        libc::IPPROTO_IPV6
    };
    let v4 = |ip: IpAddr| libc::in_addr {
        s_addr: u32::from_ne_bytes(v4_target(ip).octets()),
    };
    let mreqn = || libc::ip_mreqn {
        imr_multiaddr: v4(group),
        imr_address: libc::in_addr { s_addr: 0 },
        imr_ifindex: idx as i32,
    };
    let set = |name: libc::c_int, bytes: &[u8], label: &str| -> Attempt {
        match setsockopt_bytes(raw, level, name, bytes) {
            Ok(()) => Attempt::success(format!("{label} {group} on {iface} ({idx})")),
            Err(e) => Attempt::fail(&format!("setsockopt {label} {group} on {iface}"), &e),
        }
    };
    let group_req = |with_source: bool| {
        // SAFETY: all-zero is a valid GroupReq.
        let mut g: GroupReq = unsafe { mem::zeroed() };
        g.interface = idx;
        g.group = sockaddr(&SocketAddr::new(group, 0)).0;
        if let Some(s) = source.filter(|_| with_source) {
            g.source = sockaddr(&SocketAddr::new(s, 0)).0;
        }
        g
    };
    // The offset of the sockaddr_storage after the u32 (alignment padding).
    let ss = mem::size_of::<libc::sockaddr_storage>();
    let gr_len = mem::size_of::<GroupReq>() - ss;
    let a = match how {
        "ip-add-membership" => {
            let m = mreqn();
            set(
                libc::IP_ADD_MEMBERSHIP,
                as_bytes(&m, mem::size_of_val(&m)),
                "IP_ADD_MEMBERSHIP",
            )
        }
        "ip-add-source-membership" => {
            let Some(src) = source else {
                usage("--source needed")
            };
            let Some(local) = iface_addr4(iface) else {
                return Attempt {
                    ok: false,
                    errno: None,
                    detail: format!("no IPv4 address on {iface}"),
                };
            };
            let m = libc::ip_mreq_source {
                imr_multiaddr: v4(group),
                imr_interface: v4(local.into()),
                imr_sourceaddr: v4(src),
            };
            set(
                IP_ADD_SOURCE_MEMBERSHIP,
                as_bytes(&m, mem::size_of_val(&m)),
                "IP_ADD_SOURCE_MEMBERSHIP",
            )
        }
        "mcast-join-group" => {
            let g = group_req(false);
            set(MCAST_JOIN_GROUP, as_bytes(&g, gr_len), "MCAST_JOIN_GROUP")
        }
        "mcast-join-source-group" => {
            if source.is_none() {
                usage("--source needed");
            }
            let g = group_req(true);
            set(
                MCAST_JOIN_SOURCE_GROUP,
                as_bytes(&g, mem::size_of::<GroupReq>()),
                "MCAST_JOIN_SOURCE_GROUP",
            )
        }
        "ipv6-join-group" => {
            let m = libc::ipv6_mreq {
                ipv6mr_multiaddr: libc::in6_addr {
                    s6_addr: v6_target(group).octets(),
                },
                ipv6mr_interface: idx,
            };
            set(
                libc::IPV6_ADD_MEMBERSHIP,
                as_bytes(&m, mem::size_of_val(&m)),
                "IPV6_JOIN_GROUP",
            )
        }
        "ip-drop-membership" => {
            let m = mreqn();
            let bytes = as_bytes(&m, mem::size_of_val(&m));
            let join = set(libc::IP_ADD_MEMBERSHIP, bytes, "IP_ADD_MEMBERSHIP");
            steps.push("join", &join);
            if join.ok {
                std::thread::sleep(Duration::from_millis(args.num("hold-ms", Some(300))));
            }
            let drop = set(libc::IP_DROP_MEMBERSHIP, bytes, "IP_DROP_MEMBERSHIP");
            steps.push("drop", &drop);
            return drop;
        }
        other => usage(&format!("--how: unknown {other:?}")),
    };
    steps.push("join", &a);
    if a.ok {
        std::thread::sleep(Duration::from_millis(args.num("hold-ms", Some(300))));
    }
    a
}

/// A unix datagram to `--path` (sendto, unconnected) carrying `--secret`.
fn unix_dgram_send(args: &Args) -> Attempt {
    let path = args.req("path");
    let fd = match socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    let (sun, len) = match sockaddr_un(path) {
        Ok(s) => s,
        Err(e) => return Attempt::fail("sockaddr_un", &e),
    };
    let msg = args.get("secret").unwrap_or("nono-secret");
    // SAFETY: valid buffer and sockaddr_un.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr() as *const libc::c_void,
            msg.len(),
            0,
            &sun as *const _ as *const libc::sockaddr,
            len,
        )
    };
    match errno_of(n as libc::c_long) {
        Ok(n) => Attempt::success(format!("sendto {path}: {n} bytes")),
        Err(e) => Attempt::fail(&format!("sendto {path}"), &e),
    }
}

/// `sendmsg` of `data` with a `SCM_CREDENTIALS` naming `(pid, uid, gid)`.
fn send_with_ucred(fd: i32, data: &[u8], (pid, uid, gid): (u32, u32, u32)) -> io::Result<usize> {
    const HDR: usize = mem::size_of::<libc::cmsghdr>();
    let mut control = [0u64; 4];
    let cred = libc::ucred {
        pid: pid as libc::pid_t,
        uid,
        gid,
    };
    // SAFETY: zeroed plain struct.
    let mut h: libc::cmsghdr = unsafe { mem::zeroed() };
    h.cmsg_len = HDR + mem::size_of::<libc::ucred>();
    h.cmsg_level = libc::SOL_SOCKET;
    h.cmsg_type = libc::SCM_CREDENTIALS;
    // SAFETY: `control` has 32 bytes, room for the header (16) and the
    // ucred (12); unaligned writes of plain structs.
    unsafe {
        let base = control.as_mut_ptr().cast::<u8>();
        std::ptr::write_unaligned(base.cast(), h);
        std::ptr::write_unaligned(base.add(HDR).cast(), cred);
    }
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: all-zero msghdr is valid; fields set below.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = HDR + mem::size_of::<libc::ucred>();
    // SAFETY: msg points to live buffers for the call.
    let n = unsafe { libc::sendmsg(fd, &msg, 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn sockaddr_un(path: &str) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: all-zero is a valid sockaddr_un.
    let mut sun: libc::sockaddr_un = unsafe { mem::zeroed() };
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let b = path.as_bytes();
    if b.len() >= sun.sun_path.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    for (d, s) in sun.sun_path.iter_mut().zip(b) {
        *d = *s as libc::c_char;
    }
    let len = mem::size_of::<libc::sa_family_t>() + b.len() + 1;
    Ok((sun, len as libc::socklen_t))
}

/// Connects a unix stream socket to `--path` and sends two messages,
/// "send" with send() and "sendmsg" with sendmsg(); the listener reads the
/// peer's credentials (SO_PEERCRED, SCM_CREDENTIALS).
fn unix_stream_creds(args: &Args, steps: &mut Steps) -> Attempt {
    let path = args.req("path");
    let fd = match socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    let (sun, len) = match sockaddr_un(path) {
        Ok(s) => s,
        Err(e) => return Attempt::fail("sockaddr_un", &e),
    };
    // SAFETY: valid sockaddr_un.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            &sun as *const _ as *const libc::sockaddr,
            len,
        )
    };
    if rc != 0 {
        return Attempt::last_os(&format!("connect {path}"));
    }
    let s = match send_fd(fd.as_raw_fd(), b"send") {
        Ok(n) => Attempt::success(format!("send: {n} bytes")),
        Err(e) => Attempt::fail("send", &e),
    };
    steps.push("send", &s);
    // Let the receiver read the first message on its own.
    std::thread::sleep(Duration::from_millis(100));
    let mut iov = libc::iovec {
        iov_base: b"sendmsg".as_ptr() as *mut libc::c_void,
        iov_len: 7,
    };
    // SAFETY: all-zero msghdr is valid; fields set below.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    // SAFETY: msg points to live buffers for the call.
    let n = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, 0) };
    let m = match errno_of(n as libc::c_long) {
        Ok(n) => Attempt::success(format!("sendmsg: {n} bytes")),
        Err(e) => Attempt::fail("sendmsg", &e),
    };
    steps.push("sendmsg", &m);
    std::thread::sleep(Duration::from_millis(100));
    // D-Bus clients name themselves in an explicit SCM_CREDENTIALS: that
    // must work; naming another pid (1) must fail with EPERM, as the kernel
    // refuses it for anyone without CAP_SYS_ADMIN.
    // SAFETY: plain id queries.
    let me = unsafe { (libc::getpid() as u32, libc::getuid(), libc::getgid()) };
    let own = send_with_ucred(fd.as_raw_fd(), b"sendmsg-own-creds", me);
    let own = match own {
        Ok(n) => Attempt::success(format!("sendmsg with its own SCM_CREDENTIALS: {n} bytes")),
        Err(e) => Attempt::fail("sendmsg with its own SCM_CREDENTIALS", &e),
    };
    steps.push("sendmsg-own-creds", &own);
    std::thread::sleep(Duration::from_millis(100));
    let forged = match send_with_ucred(fd.as_raw_fd(), b"forged", (1, me.1, me.2)) {
        Ok(n) => Attempt::fail(
            "sendmsg naming pid 1 in SCM_CREDENTIALS",
            &io::Error::other(format!("accepted ({n} bytes)")),
        ),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            Attempt::success("naming pid 1 refused with EPERM".to_string())
        }
        Err(e) => Attempt::fail("sendmsg naming pid 1 in SCM_CREDENTIALS", &e),
    };
    steps.push("sendmsg-forged-creds", &forged);
    if !own.ok {
        return own;
    }
    if !forged.ok {
        return forged;
    }
    if s.ok && m.ok {
        Attempt::success(format!("connected to {path}, sent two messages"))
    } else if !s.ok {
        s
    } else {
        m
    }
}

/// A UDP datagram to `--target:--port` with a capability-gated control
/// message (`--cmsg mark`: SOL_SOCKET SO_MARK; `--cmsg hopopts`: an IPv6
/// hop-by-hop options header, IPV6_HOPOPTS): the kernel wants CAP_NET_ADMIN
/// / CAP_NET_RAW for them.
fn udp_cap_cmsg(args: &Args) -> Attempt {
    let sa = args.target_sa();
    let fd = match udp_socket(&sa.ip()) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    let (level, ty, data, what): (libc::c_int, libc::c_int, Vec<u8>, &str) = match args.req("cmsg")
    {
        "mark" => (
            libc::SOL_SOCKET,
            libc::SO_MARK,
            0x4e4fu32.to_ne_bytes().to_vec(),
            "SO_MARK",
        ),
        // Next header (ignored), length 0 (8 bytes), PadN of 4.
        "hopopts" => (
            libc::IPPROTO_IPV6,
            libc::IPV6_HOPOPTS,
            vec![0, 0, 1, 4, 0, 0, 0, 0],
            "IPV6_HOPOPTS",
        ),
        other => usage(&format!("--cmsg: mark or hopopts, not {other:?}")),
    };
    match sendmsg_cmsg(fd.as_raw_fd(), Some(&sa), level, ty, &data) {
        Ok(n) => Attempt::success(format!("sendmsg {sa} with {what} cmsg: {n} bytes")),
        Err(e) => Attempt::fail(&format!("sendmsg {sa} with {what} cmsg"), &e),
    }
}

/// One listener, one client, one round trip ("ping" / "pong") over TCP.
fn tcp_round(listener: &std::net::TcpListener, to: SocketAddr) -> io::Result<()> {
    use std::net::TcpStream;
    let mut c = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT)?;
    c.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    listener.set_nonblocking(false)?;
    let (mut s, _) = listener.accept()?;
    s.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    c.write_all(b"ping")?;
    let mut b = [0u8; 4];
    s.read_exact(&mut b)?;
    s.write_all(b"pong")?;
    c.read_exact(&mut b)?;
    if &b != b"pong" {
        return Err(io::Error::other("wrong reply"));
    }
    Ok(())
}

fn udp_round(server: &std::net::UdpSocket, to: SocketAddr) -> io::Result<()> {
    let any: SocketAddr = match to {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("addr"),
        SocketAddr::V6(_) => "[::]:0".parse().expect("addr"),
    };
    let c = std::net::UdpSocket::bind(any)?;
    c.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    server.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    c.send_to(b"ping", to)?;
    let mut b = [0u8; 4];
    let (_, from) = server.recv_from(&mut b)?;
    server.send_to(b"pong", from)?;
    c.recv_from(&mut b)?;
    if &b != b"pong" {
        return Err(io::Error::other("wrong reply"));
    }
    Ok(())
}

/// A listener from `listen()` on an unbound socket of `dom` (the kernel
/// picks a port and, outside a sandbox, the wildcard address).
fn unbound_listener(dom: libc::c_int) -> io::Result<std::net::TcpListener> {
    let fd = socket(dom, libc::SOCK_STREAM, 0)?;
    if dom == libc::AF_INET6 {
        setsockopt_i32(fd.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)?;
    }
    // SAFETY: plain syscall.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), 16) })?;
    Ok(std::net::TcpListener::from(fd))
}

/// Servers and clients in the same process, over loopback only: TCP
/// listeners on 0.0.0.0, [::] (dual stack), 127.0.0.1, ::1 and from an
/// unbound listen(), reached via 127.0.0.1 and ::1 as each allows; UDP the
/// same way. One step per pair ("tcp [::] <- 127.0.0.1").
fn loopback_selftest(steps: &mut Steps) -> Attempt {
    let lo4 = IpAddr::from(Ipv4Addr::LOCALHOST);
    let lo6 = IpAddr::from(Ipv6Addr::LOCALHOST);
    let mut all = true;
    let mut record = |name: String, r: io::Result<()>| {
        let a = match r {
            Ok(()) => Attempt::success("round trip"),
            Err(e) => Attempt::fail(&name, &e),
        };
        all &= a.ok;
        steps.push(&name, &a);
    };
    let tcp: [(&str, Option<&str>, &[IpAddr]); 6] = [
        ("0.0.0.0", Some("0.0.0.0:0"), &[lo4]),
        ("[::]", Some("[::]:0"), &[lo4, lo6]),
        ("127.0.0.1", Some("127.0.0.1:0"), &[lo4]),
        ("[::1]", Some("[::1]:0"), &[lo6]),
        ("unbound4", None, &[lo4]),
        ("unbound6", None, &[lo6]),
    ];
    for (label, bind, to) in tcp {
        let l = match bind {
            Some(b) => std::net::TcpListener::bind(b),
            None => unbound_listener(if label == "unbound4" {
                libc::AF_INET
            } else {
                libc::AF_INET6
            }),
        };
        let l = match l {
            Ok(l) => l,
            Err(e) => {
                record(format!("tcp listen {label}"), Err(e));
                continue;
            }
        };
        let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
        for ip in to {
            record(
                format!("tcp {label} <- {ip}"),
                tcp_round(&l, SocketAddr::new(*ip, port)),
            );
        }
    }
    let udp: [(&str, &[IpAddr]); 4] = [
        ("0.0.0.0:0", &[lo4]),
        ("[::]:0", &[lo4, lo6]),
        ("127.0.0.1:0", &[lo4]),
        ("[::1]:0", &[lo6]),
    ];
    for (bind, to) in udp {
        let s = match std::net::UdpSocket::bind(bind) {
            Ok(s) => s,
            Err(e) => {
                record(format!("udp bind {bind}"), Err(e));
                continue;
            }
        };
        let port = s.local_addr().map(|a| a.port()).unwrap_or(0);
        for ip in to {
            record(
                format!("udp {bind} <- {ip}"),
                udp_round(&s, SocketAddr::new(*ip, port)),
            );
        }
    }
    if all {
        Attempt::success("every loopback round trip worked")
    } else {
        Attempt {
            ok: false,
            errno: None,
            detail: "some loopback round trips failed (see steps)".into(),
        }
    }
}

// ---------------------------------------------------------------------------

fn main() {
    let args = Args::parse();
    let mut steps = Steps(Vec::new());
    let mut extra = serde_json::Map::new();
    let v = args.vector.as_str();
    let attempt = match v {
        "tcp4" | "tcp6" => tcp_connect(args.target_sa(), 0),
        "tcp-v4mapped" => tcp_connect(SocketAddr::new(map_v4(args.target()), args.port()), 0),
        "tcp-nonblock" => tcp_nonblock(args.target_sa()),
        "tcp-fastopen" => tcp_fastopen(args.target_sa()),
        "udp-sendto" | "udp6-sendto" => udp_sendto(args.target_sa()),
        "v4mapped-udp-sendto" => udp_sendto(SocketAddr::new(map_v4(args.target()), args.port())),
        "udp-sendmsg" => udp_sendmsg(args.target_sa()),
        "udp-sendmmsg" => udp_sendmmsg(args.target_sa(), args.num("count", Some(4))),
        "udp-connect-send" => udp_connect_send(args.target_sa()),
        "udp-connected-sendto" => {
            let allowed = args.get("proxy-endpoint").map(|pe| {
                pe.parse::<SocketAddr>()
                    .unwrap_or_else(|_| usage(&format!("--proxy-endpoint: bad ADDR:PORT {pe:?}")))
            });
            udp_connected_sendto(args.target_sa(), allowed)
        }
        "io-uring-connect" => io_uring_connect(args.target_sa()),
        "io-uring-sendmsg" => io_uring_sendmsg(args.target_sa()),
        "raw-socket" | "raw6-socket" => icmp_echo(args.target(), args.num("id", None), true),
        "ping-socket" | "ping6-socket" => icmp_echo(args.target(), args.num("id", None), false),
        "af-packet" => af_packet(args.req("iface"), args.req("tag")),
        "mptcp" => tcp_connect(args.target_sa(), IPPROTO_MPTCP),
        "loopback4" => tcp_connect(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), args.port()), 0),
        "loopback6" => tcp_connect(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), args.port()), 0),
        "loopback-v4mapped" => tcp_connect(
            SocketAddr::new(map_v4(Ipv4Addr::LOCALHOST.into()), args.port()),
            0,
        ),
        "loopback-127-0-0-2" => tcp_connect(
            SocketAddr::new(Ipv4Addr::new(127, 0, 0, 2).into(), args.port()),
            0,
        ),
        "proxy" => {
            let pe = args.req("proxy-endpoint");
            match pe.parse::<SocketAddr>() {
                Ok(sa) => tcp_connect(sa, 0),
                Err(_) => usage(&format!("--proxy-endpoint: bad ADDR:PORT {pe:?}")),
            }
        }
        "srh6-udp-sockopt" => {
            routed_udp_sockopt(lo6(&args), &srh_opt(args.target()), &mut steps, &mut extra)
        }
        "rh2-udp-sockopt" => routed_udp_sockopt(
            lo6(&args),
            &RouteOpt {
                level: libc::IPPROTO_IPV6,
                name: libc::IPV6_RTHDR,
                bytes: rh2(v6_target(args.target())),
                label: "IPV6_RTHDR (type 2)",
            },
            &mut steps,
            &mut extra,
        ),
        "srh6-tcp-sockopt" => {
            routed_tcp_sockopt(lo6(&args), &srh_opt(args.target()), &mut steps, &mut extra)
        }
        "srh6-udp-connect-send" => {
            routed_udp_connect_sockopt(lo6(&args), &srh_opt(args.target()), &mut steps, &mut extra)
        }
        "srh6-udp-cmsg" => routed_udp_cmsg(
            None,
            lo6(&args),
            &srh_opt(args.target()),
            &mut steps,
            &mut extra,
        ),
        "srh6-udp-pktoptions" => {
            routed_udp_pktoptions(lo6(&args), args.target(), &mut steps, &mut extra)
        }
        "lsrr4-tcp-sockopt" => routed_tcp_sockopt(
            lo4(&args),
            &srr4_opt(131, args.target(), libc::IP_OPTIONS),
            &mut steps,
            &mut extra,
        ),
        "lsrr4-udp-sockopt" | "ssrr4-udp-sockopt" => routed_udp_sockopt(
            lo4(&args),
            &srr4_opt(
                if v.starts_with("lsrr") { 131 } else { 137 },
                args.target(),
                libc::IP_OPTIONS,
            ),
            &mut steps,
            &mut extra,
        ),
        "lsrr4-udp-cmsg" => routed_udp_cmsg(
            None,
            lo4(&args),
            &srr4_opt(131, args.target(), libc::IP_RETOPTS),
            &mut steps,
            &mut extra,
        ),
        "lsrr4-udp-connected-cmsg" => routed_udp_cmsg(
            Some((lo4(&args), iface_addr4(args.req("iface")).map(IpAddr::V4))),
            lo4(&args),
            &srr4_opt(131, args.target(), libc::IP_RETOPTS),
            &mut steps,
            &mut extra,
        ),
        "unicast-if-loopback4" | "pktinfo-loopback4" => loopback_on_iface(
            args.port(),
            args.req("iface"),
            v == "pktinfo-loopback4",
            args.num("count", Some(3)),
            &mut steps,
        ),
        "udp-connected-cmsg-tos" | "udp6-connected-cmsg-tclass" => {
            udp_connected_cmsg(args.target_sa(), args.num("count", Some(1)))
        }
        "udp-proxy-send" => udp_connect_send(proxy_arg(&args)),
        "tcp-proxy-bulk" => tcp_bulk(proxy_arg(&args), args.num("bytes", Some(1 << 20))),
        "proc-root-cgroup" => proc_root_cgroup(&mut steps, &mut extra, args.target_sa()),
        "hold-nocaps" => hold_nocaps(&args),
        "sub-cgroup" => sub_cgroup(&mut steps, args.target_sa()),
        "parent-cgroup" => parent_cgroup(&mut steps, args.target_sa()),
        "detach-bpf" => detach_bpf(&mut steps, args.target_sa()),
        "daemonize" => {
            let sa = args.target_sa();
            let (a, reports, gpid) = daemonize(&args, sa);
            steps.0.extend(reports);
            extra.insert("grandchild_pid".into(), json!(gpid));
            a
        }
        "kill-agent" => kill_agent(&args, &mut steps, &mut extra),
        "int80-socketcall" => int80_connect(args.target_sa(), true, &mut steps),
        "int80-socket" => int80_connect(args.target_sa(), false, &mut steps),
        "udp-sendmsg-cmsg-tos" | "udp6-sendmsg-cmsg-tclass" => {
            udp_sendmsg_cmsg(args.target_sa(), args.num("count", Some(1)))
        }
        "connect-loop" => connect_loop(&args),
        "race-sockaddr" => race_sockaddr(&args, &mut extra),
        "parallel-connect" => parallel_connect(&args, &mut extra),
        "signal-storm" => signal_storm(&args, &mut extra),
        "scm-rights" => scm_rights(&mut steps),
        "steal-fds" => steal_fds(&args, &mut steps, &mut extra),
        "listen-serve" => listen_serve(&args, &mut steps, &mut extra),
        "bind-check" => bind_check(&args, &mut steps),
        "bulk-hold" => bulk_hold(&args, &mut extra),
        "bindtodevice-loopback4" => bindtodevice_loopback(&args, &mut steps, &mut extra),
        "bindtodevice-lo" => bindtodevice_lo(&args, &mut steps),
        "mcast-join" => mcast_join(&args, &mut steps),
        "unix-dgram-send" => unix_dgram_send(&args),
        "unix-stream-creds" => unix_stream_creds(&args, &mut steps),
        "udp-cap-cmsg" => udp_cap_cmsg(&args),
        "loopback-selftest" => loopback_selftest(&mut steps),
        "udp-serve" => udp_serve(&args, &mut extra),
        other => usage(&format!("unknown vector {other:?}")),
    };

    let env = |k: &str| std::env::var(k).ok();
    let mut out = serde_json::Map::new();
    out.insert("vector".into(), json!(v));
    out.insert("ok".into(), json!(attempt.ok));
    out.insert("errno".into(), json!(attempt.errno));
    out.insert("detail".into(), json!(attempt.detail));
    // SAFETY: getpid never fails.
    out.insert("pid".into(), json!(unsafe { libc::getpid() }));
    out.insert("sandbox".into(), json!(env("NONO_SANDBOX_ID")));
    out.insert("cgroup".into(), json!(env("NONO_CGROUP")));
    out.insert("pin_dir".into(), json!(env("NONO_BPF_PIN_DIR")));
    out.insert("enforcer".into(), json!(env("NONO_ENFORCER")));
    // SAFETY: geteuid never fails.
    out.insert("uid".into(), json!(unsafe { libc::geteuid() }));
    // SAFETY: getegid never fails.
    out.insert("gid".into(), json!(unsafe { libc::getegid() }));
    out.insert("marker".into(), json!(args.get("marker")));
    out.insert("steps".into(), Value::Array(steps.0));
    out.extend(extra);
    let line = Value::Object(out).to_string();
    let mut stdout = io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
    drop(stdout);

    if v == "kill-agent" && args.get("sleep").is_some() {
        write_pidfile(&args);
        devnull_stdio();
        std::thread::sleep(Duration::from_secs(args.num::<u64>("sleep", Some(30))));
    }
}
