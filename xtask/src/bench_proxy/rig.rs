//! The network rig: a client and a server namespace joined by a veth pair,
//! entering them, waiting for ports, sweeping what a killed run left.

use anyhow::{bail, Context as _, Result};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::cleanup::registry;
use super::{CLIENT_V4, SERVER_V4};

// ---------------------------------------------------------------------------
// Network namespaces

pub(super) struct Net {
    pub(super) cli: String,
    pub(super) srv: String,
}

pub(super) fn sh(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {args:?}"))?;
    if !out.status.success() {
        bail!(
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Net {
    pub(super) fn create() -> Result<Self> {
        let pid = std::process::id();
        let net = Self {
            cli: format!("nbp{pid}c"),
            srv: format!("nbp{pid}s"),
        };
        for ns in [&net.cli, &net.srv] {
            let mut r = registry();
            sh(&["ip", "netns", "add", ns])?;
            r.netns.push(ns.clone());
        }
        let (a, b) = (format!("nbp{pid}a"), format!("nbp{pid}b"));
        sh(&[
            "ip", "link", "add", &a, "netns", &net.cli, "type", "veth", "peer", "name", &b,
            "netns", &net.srv,
        ])?;
        let in_ns = |ns: &str, args: &[&str]| -> Result<()> {
            let netarg = format!("--net=/run/netns/{ns}");
            let mut v = vec!["nsenter", netarg.as_str()];
            v.extend_from_slice(args);
            sh(&v)
        };
        let (ca, sa) = (format!("{CLIENT_V4}/24"), format!("{SERVER_V4}/24"));
        in_ns(&net.cli, &["ip", "link", "set", "lo", "up"])?;
        in_ns(&net.srv, &["ip", "link", "set", "lo", "up"])?;
        in_ns(&net.cli, &["ip", "addr", "add", &ca, "dev", &a])?;
        in_ns(&net.srv, &["ip", "addr", "add", &sa, "dev", &b])?;
        in_ns(&net.cli, &["ip", "link", "set", &a, "up"])?;
        in_ns(&net.srv, &["ip", "link", "set", &b, "up"])?;
        Ok(net)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.cli, &self.srv] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
            registry().netns.retain(|n| n != ns);
        }
    }
}

/// Removes namespaces left by a bench-proxy run that died (SIGKILL).
pub(super) fn sweep_stale_netns() {
    let Ok(rd) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name
            .strip_prefix("nbp")
            .and_then(|r| r.strip_suffix('c').or_else(|| r.strip_suffix('s')))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !bench_alive(pid) {
            eprintln!("bench-proxy: removing stale network namespace {name} and its processes");
            kill_processes_in_netns(&format!("/run/netns/{name}"));
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
            let _ = std::fs::remove_dir_all(
                std::env::temp_dir().join(format!("nono-bench-proxy.{pid}")),
            );
        }
    }
}

/// Whether `pid` is a running bench-proxy (a zombie has no command line).
fn bench_alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == b"bench-proxy"))
}

/// SIGKILLs every process whose network namespace is the one at `path`
/// (proxies left behind by a run that was SIGKILLed).
fn kill_processes_in_netns(path: &str) {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(ino) = std::fs::metadata(path).map(|m| m.ino()) else {
        return;
    };
    let want = format!("net:[{ino}]");
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let ns = std::fs::read_link(format!("/proc/{pid}/ns/net"));
        if ns.is_ok_and(|l| l.as_os_str() == want.as_str()) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Runs `f` on a fresh thread that joined network namespace `ns`; sockets
/// created there stay in it.
pub(super) fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        enter_netns(&path)?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("benchmark thread panicked"))?
}

pub(super) fn enter_netns(path: &str) -> Result<()> {
    let f = std::fs::File::open(path).with_context(|| format!("open {path}"))?;
    use std::os::fd::AsRawFd as _;
    // SAFETY: setns on a valid namespace fd; affects only this thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns({path}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

pub(super) fn wait_port(ns: &str, addr: SocketAddr) -> Result<()> {
    in_netns(ns, move || {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => bail!("connect to {addr}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    })
}

pub(super) fn raise_nofile_limit() {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}
