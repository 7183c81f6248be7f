//! The network rig: the tests' client and server namespaces joined by a
//! veth pair (`nono_tests::netns`), entering them, waiting for ports,
//! sweeping what a killed run left.

use anyhow::{bail, Result};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use nono_tests::netns::{self, PairNames, VethPair};

use super::cleanup::registry;

/// The client and server namespaces of this run, joined by a veth pair with
/// 198.51.100.1/24 and .2/24: the tests' rig ([`VethPair`]) under this run's
/// names (`nbp<pid>c`/`s`, veth `nbp<pid>a`/`b`, which the stale sweep
/// recognises), registered for the Ctrl-C clean-up.
pub(crate) struct Net {
    pub(crate) cli: String,
    pub(crate) srv: String,
    /// Taken on drop, so the namespaces are gone before they leave the
    /// registry.
    pair: Option<VethPair>,
}

impl Net {
    pub(crate) fn create() -> Result<Self> {
        let pid = std::process::id();
        let names = PairNames {
            client: format!("nbp{pid}c"),
            server: format!("nbp{pid}s"),
            veth_client: format!("nbp{pid}a"),
            veth_server: format!("nbp{pid}b"),
        };
        let (cli, srv) = (names.client.clone(), names.server.clone());
        // Registered before they exist, with the registry locked until they
        // do: a signal cannot slip in between creation and registration.
        let pair = {
            let mut r = registry();
            r.netns.extend([cli.clone(), srv.clone()]);
            let created = VethPair::create(names, None);
            if created.is_err() {
                r.netns.retain(|n| n != &cli && n != &srv);
            }
            created
        }
        .map_err(anyhow::Error::msg)?;
        let net = Self {
            cli,
            srv,
            pair: Some(pair),
        };
        if let Some(p) = &net.pair {
            p.add_v4().map_err(anyhow::Error::msg)?;
            p.up().map_err(anyhow::Error::msg)?;
        }
        Ok(net)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        drop(self.pair.take());
        registry()
            .netns
            .retain(|n| n != &self.cli && n != &self.srv);
    }
}

/// Removes namespaces left by a bench-proxy run that died (SIGKILL).
pub(crate) fn sweep_stale_netns() {
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

/// Whether `pid` is a running bench-proxy or bench-transparent (both use
/// this rig; a zombie has no command line).
fn bench_alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        c.split(|&b| b == 0)
            .any(|a| a == b"bench-proxy" || a == b"bench-transparent")
    })
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
pub(crate) fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter_netns(&ns)?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("benchmark thread panicked"))?
}

/// Moves the calling thread into namespace `ns` (the tests' [`netns::enter`]).
pub(crate) fn enter_netns(ns: &str) -> Result<()> {
    netns::enter(ns).map_err(anyhow::Error::msg)
}

pub(crate) fn wait_port(ns: &str, addr: SocketAddr) -> Result<()> {
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

pub(crate) fn raise_nofile_limit() {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}
