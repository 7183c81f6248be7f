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
//! `cgroup`, `pin_dir`, `steps`) help the tests correlate and diagnose.
//!
//! Usage: `nono-probe VECTOR [--target ADDR] [--port N] [--id N] [--iface NAME]
//! [--tag TAG] [--count N] [--pidfile PATH] [--sleep SECS]
//! [--proxy-endpoint ADDR:PORT] [--bytes N]`.  Exit code 0 whenever the
//! attempt was made (whatever its outcome), 2 on usage errors.
//!
//! Routing-option vectors (`srh6-*`, `rh2-*`, `lsrr4-*`, `ssrr4-*`) name
//! loopback port `--port` and route through `--target`; they add
//! `"refused_at"` (the step that rejected the option, or null).
//! `hold-nocaps` is not a vector: it drops every capability (bounding,
//! ambient, effective, permitted, inheritable), stays uid 0 and sleeps.

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
    "hold-nocaps",
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

fn write_str(path: &Path, s: &str) -> Attempt {
    match fs::write(path, s) {
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

fn nono_cgroup(steps: &mut Steps) -> Option<PathBuf> {
    match std::env::var_os("NONO_CGROUP") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            steps.push(
                "env",
                &Attempt {
                    ok: false,
                    errno: None,
                    detail: "NONO_CGROUP not set".into(),
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
        match cg.parent() {
            Some(parent) => {
                steps.push("move-parent", &write_str(&parent.join("cgroup.procs"), "0"))
            }
            None => steps.push(
                "move-parent",
                &Attempt {
                    ok: false,
                    errno: None,
                    detail: "NONO_CGROUP has no parent".into(),
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
        "kill-agent" => {
            let sa = args.target_sa();
            // SAFETY: plain syscalls.
            let ppid = unsafe { libc::getppid() };
            extra.insert("agent_pid".into(), json!(ppid));
            // SAFETY: plain syscall.
            let k = if unsafe { libc::kill(ppid, libc::SIGKILL) } == 0 {
                Attempt::success(format!("SIGKILL sent to parent {ppid}"))
            } else {
                Attempt::last_os(&format!("kill({ppid}, SIGKILL)"))
            };
            steps.push("kill-parent", &k);
            std::thread::sleep(Duration::from_millis(300));
            // SAFETY: plain syscall.
            extra.insert("ppid_after".into(), json!(unsafe { libc::getppid() }));
            tcp_connect(sa, 0)
        }
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
    out.insert("steps".into(), Value::Array(steps.0));
    out.extend(extra);
    let line = Value::Object(out).to_string();
    let mut stdout = io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
    drop(stdout);

    if v == "kill-agent" {
        write_pidfile(&args);
        devnull_stdio();
        std::thread::sleep(Duration::from_secs(args.num::<u64>("sleep", Some(30))));
    }
}
