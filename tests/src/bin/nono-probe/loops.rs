//! Long-running and concurrency modes: connect loop, sockaddr race, parallel
//! connects.

use std::fs;
use std::io::{self, Write};
use std::mem;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::process::exit;
use std::time::{Duration, Instant};

use nono_tests::sockaddr;
use serde_json::{json, Value};

use crate::args::{lo4, usage, Args};
use crate::attempt::Attempt;
use crate::connect::tcp_connect;
use crate::process::devnull_stdio;
use crate::sock::{connect_fd, linger_zero, send_fd, set_timeouts, socket};

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
pub(crate) fn connect_loop(args: &Args) -> ! {
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
    let (ss, _) = sockaddr::storage(sa);
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

/// TOCTOU race on the sockaddr: one thread flips a shared sockaddr buffer
/// between 127.0.0.1:--port (allowed) and --target:--deny-port (denied) as
/// fast as it can, --threads threads connect in a loop with that buffer for
/// --secs seconds. Every connect that succeeds must have gone to loopback.
pub(crate) fn race_sockaddr(args: &Args, extra: &mut serde_json::Map<String, Value>) -> Attempt {
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
pub(crate) fn parallel_connect(args: &Args, extra: &mut serde_json::Map<String, Value>) -> Attempt {
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
