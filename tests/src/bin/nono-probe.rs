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
//! [--proxy-endpoint ADDR:PORT]`.  Exit code 0 whenever the attempt was made
//! (whatever its outcome), 2 on usage errors.

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
         [--count N] [--pidfile PATH] [--sleep SECS] [--proxy-endpoint ADDR:PORT]"
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
