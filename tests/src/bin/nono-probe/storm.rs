//! `signal-storm`: loopback traffic under a storm of SIGURG (Go-style
//! preemption).

use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use nono_tests::sockaddr;
use serde_json::{json, Value};

use crate::args::{lo4, Args};
use crate::attempt::Attempt;
use crate::connect::tcp_connect;
use crate::sock::{connect_fd, linger_zero, sendto_fd, socket};

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
    let (ss, slen) = sockaddr::storage(&sa);
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
pub(crate) fn signal_storm(args: &Args, extra: &mut serde_json::Map<String, Value>) -> Attempt {
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
                let (ss, len) = sockaddr::storage(&SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0));
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
