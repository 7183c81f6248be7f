//! Channels: inbound listeners (incl. SYN cookies), UDP receiver, binds, data
//! queued at teardown.

use std::fs;
use std::io::{self, Write};
use std::mem;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nono_tests::sockaddr;
use serde_json::{json, Value};

use crate::args::{usage, Args};
use crate::attempt::{cvt, Attempt, Steps};
use crate::sock::{
    connect_fd, family, send_fd, set_timeouts, setsockopt_i32, socket, CONNECT_TIMEOUT,
};

/// getsockname() of an inet socket, either family.
fn sockname(fd: RawFd) -> Option<SocketAddr> {
    // SAFETY: zeroed storage is a valid out-parameter.
    let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: valid out pointers.
    if unsafe { libc::getsockname(fd, &mut ss as *mut _ as *mut libc::sockaddr, &mut len) } != 0 {
        return None;
    }
    sockaddr::parse(&ss)
}

fn bind_fd(fd: RawFd, sa: &SocketAddr) -> io::Result<()> {
    let (ss, len) = sockaddr::storage(sa);
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
pub(crate) fn listen_serve(
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
        let peer = sockaddr::parse(&ss).map(|p| p.to_string());
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
pub(crate) fn udp_serve(args: &Args, extra: &mut serde_json::Map<String, Value>) -> Attempt {
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
                "from": sockaddr::parse(&ss).map(|a| a.to_string()),
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
pub(crate) fn bind_check(args: &Args, steps: &mut Steps) -> Attempt {
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
pub(crate) fn bulk_hold(args: &Args, extra: &mut serde_json::Map<String, Value>) -> Attempt {
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
