//! Client/server network namespaces joined by a veth pair.
//!
//! ```text
//!   client netns                          server netns
//!   nc<pid>_<n> 198.51.100.1/24   <--->   ns<pid>_<n> 198.51.100.2/24
//!               2001:db8:100::1/64                    2001:db8:100::2/64
//!   route 203.0.113.0/24 via .2           lo: 203.0.113.2/32 (proxy endpoint)
//! ```
//!
//! Names embed the test process id and a counter so parallel tests never
//! collide. `Drop` deletes both namespaces (which destroys the veth pair).
//! Commands run in a namespace through `nsenter --net=/run/netns/NAME` (not
//! `ip netns exec`, which remounts /sys); code in this process enters a
//! namespace on a dedicated thread with `setns(2)` ([`in_netns`]).
//!
//! [`VethPair`] (the namespaces, the veth pair and its IPv4 addresses) and
//! [`enter`] are shared with `cargo xtask bench-proxy`.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::thread;

use nix::sched::{setns, CloneFlags};

use crate::sys::{self, CmdOutput};

pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);
pub const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 2);
/// The address used as "proxy endpoint" (on the server's lo).
pub const PROXY_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);

/// Fixed MAC addresses (locally administered); every fixture has its own link.
pub const CLIENT_MAC: &str = "02:6e:6f:00:00:01";
pub const SERVER_MAC: &str = "02:6e:6f:00:00:02";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Moves the calling thread into network namespace `ns` (`/run/netns/<ns>`);
/// sockets it creates afterwards stay in that namespace. Returns the error
/// rather than panicking because `cargo xtask bench-proxy` shares it.
pub fn enter(ns: &str) -> Result<(), String> {
    let path = format!("/run/netns/{ns}");
    let fd = File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
    setns(&fd, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns({path}): {e}"))
}

/// Runs `f` on a fresh thread that has joined network namespace `ns`
/// (`/run/netns/<ns>`). Sockets created there stay in that namespace and may be
/// used from any thread afterwards.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_string();
    thread::spawn(move || {
        if let Err(e) = enter(&ns) {
            panic!("{e}");
        }
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Writes a sysctl inside namespace `ns` (net sysctls resolve per thread netns).
pub fn sysctl_in(ns: &str, key: &str, value: &str, required: bool) {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let (k, v, ns2) = (key.to_string(), value.to_string(), ns.to_string());
    let res = in_netns(ns, move || std::fs::write(&path, &v));
    if let Err(e) = res {
        assert!(!required, "sysctl {k} in netns {ns2}: {e}");
    }
}

/// A client and a server network namespace joined by a veth pair.
pub struct NetFixture {
    pub client: String,
    pub server: String,
    pub veth_client: String,
    pub veth_server: String,
    /// Owns the namespaces: dropping it deletes them.
    pair: VethPair,
    next_port: AtomicU16,
    next_id: AtomicU16,
    next_tag: AtomicU32,
}

impl NetFixture {
    /// Creates the namespaces, veth pair, addresses, routes and sysctls.
    pub fn new() -> NetFixture {
        sys::require_prereqs();
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let names = PairNames {
            client: format!("nono-t{pid}-{n}-c"),
            server: format!("nono-t{pid}-{n}-s"),
            veth_client: format!("nc{pid}_{n}"),
            veth_server: format!("ns{pid}_{n}"),
        };
        assert!(names.veth_client.len() <= 15, "interface name too long");
        // A stale namespace with our name can only come from a dead process that
        // had our pid; remove it (errors ignored).
        for ns in [&names.client, &names.server] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        // From here on, Drop cleans up whatever was created.
        let pair = VethPair::create(names.clone(), Some((CLIENT_MAC, SERVER_MAC)))
            .unwrap_or_else(|e| panic!("{e}"));
        let fx = NetFixture {
            client: names.client,
            server: names.server,
            veth_client: names.veth_client,
            veth_server: names.veth_server,
            pair,
            next_port: AtomicU16::new(20000),
            next_id: AtomicU16::new(0x4e00),
            next_tag: AtomicU32::new(0),
        };
        fx.setup();
        fx
    }

    /// What the tests add to the shared [`VethPair`]: sysctls (before the
    /// links come up, so v6 settings apply), IPv6 addresses, the proxy
    /// endpoint and its route, static neighbours.
    fn setup(&self) {
        let (c, s, vc, vs) = (
            &self.client,
            &self.server,
            &self.veth_client,
            &self.veth_server,
        );
        sysctl_in(c, "net.ipv4.ping_group_range", "0 2147483647", true);
        sysctl_in(c, "net.ipv4.tcp_fastopen", "1", true);
        sysctl_in(s, "net.ipv4.tcp_fastopen", "3", true);
        sysctl_in(c, "net.mptcp.enabled", "1", false);
        sysctl_in(s, "net.mptcp.enabled", "1", false);
        for ns in [c, s] {
            // No router solicitations / autoconf noise on the wire.
            sysctl_in(ns, "net.ipv6.conf.all.accept_ra", "0", false);
            sysctl_in(ns, "net.ipv6.conf.default.accept_ra", "0", false);
        }
        self.pair.add_v4().unwrap_or_else(|e| panic!("{e}"));
        let ipc = |args: &[&str]| self.ip_in(c, args);
        let ips = |args: &[&str]| self.ip_in(s, args);
        ipc(&[
            "-6",
            "addr",
            "add",
            "2001:db8:100::1/64",
            "dev",
            vc,
            "nodad",
        ]);
        ips(&[
            "-6",
            "addr",
            "add",
            "2001:db8:100::2/64",
            "dev",
            vs,
            "nodad",
        ]);
        ips(&["addr", "add", "203.0.113.2/32", "dev", "lo"]);
        self.pair.up().unwrap_or_else(|e| panic!("{e}"));
        ipc(&["route", "add", "203.0.113.0/24", "via", "198.51.100.2"]);
        // Static neighbours: no ARP/NDP resolution delays or drops right after
        // setup (a lone datagram must reach the oracle deterministically).
        for (ns, dev, peer_mac, peers) in [
            (c, vc, SERVER_MAC, ["198.51.100.2", "2001:db8:100::2"]),
            (s, vs, CLIENT_MAC, ["198.51.100.1", "2001:db8:100::1"]),
        ] {
            for ip in peers {
                self.ip_in(
                    ns,
                    &[
                        "neigh",
                        "replace",
                        ip,
                        "lladdr",
                        peer_mac,
                        "dev",
                        dev,
                        "nud",
                        "permanent",
                    ],
                );
            }
        }
        for (ns, dev) in [(c, vc), (s, vs)] {
            let up = sys::wait_until(std::time::Duration::from_secs(5), || {
                let out = sys::run_ok("ip", &["-n", ns, "-br", "link", "show", "dev", dev]);
                out.stdout.split_whitespace().nth(1) == Some("UP")
            });
            assert!(up, "{dev} in netns {ns} did not come up");
        }
    }

    fn ip_in(&self, ns: &str, args: &[&str]) {
        self.pair.ip_in(ns, args).unwrap_or_else(|e| panic!("{e}"));
    }

    /// `/run/netns/<client>`.
    pub fn client_path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.client))
    }

    /// A command that runs `program` in the client netns via nsenter.
    pub fn client_command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.client))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Runs `cmd[0] cmd[1..]` in the client netns and returns its output.
    pub fn run_in_client(&self, cmd: &[&str]) -> CmdOutput {
        let (prog, args) = cmd.split_first().expect("non-empty command");
        sys::run_timeout(self.client_command(prog).args(args), sys::CMD_TIMEOUT)
    }

    /// A fresh port, unique within this fixture.
    pub fn port(&self) -> u16 {
        self.next_port.fetch_add(1, Ordering::Relaxed)
    }

    /// A fresh ICMP echo identifier, unique within this fixture.
    pub fn echo_id(&self) -> u16 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A fresh tag for AF_PACKET frames, unique across processes.
    pub fn tag(&self) -> String {
        format!(
            "NONO-{}-{}-{}",
            std::process::id(),
            self.client,
            self.next_tag.fetch_add(1, Ordering::Relaxed)
        )
    }

    pub fn server_v4(&self) -> IpAddr {
        SERVER_V4.into()
    }

    pub fn server_v6(&self) -> IpAddr {
        SERVER_V6.into()
    }
}

impl Default for NetFixture {
    fn default() -> Self {
        Self::new()
    }
}

/// Names of a namespace pair and of its veth ends (interface names at most
/// 15 bytes).
#[derive(Debug, Clone)]
pub struct PairNames {
    pub client: String,
    pub server: String,
    pub veth_client: String,
    pub veth_server: String,
}

/// Two network namespaces joined by a veth pair: the rig [`NetFixture`]
/// builds on and `cargo xtask bench-proxy` uses as is (so both measure and
/// test on the same link). Steps return errors instead of panicking for the
/// benchmark's sake. Dropping it deletes both namespaces, which destroys the
/// veth pair.
#[derive(Debug)]
pub struct VethPair {
    pub names: PairNames,
}

impl VethPair {
    /// Creates both namespaces and the veth pair between them, with fixed
    /// (client, server) MAC addresses when `macs` is given. If a step fails,
    /// what was created is removed again.
    pub fn create(names: PairNames, macs: Option<(&str, &str)>) -> Result<VethPair, String> {
        let pair = VethPair { names };
        let n = &pair.names;
        ip(&["netns", "add", &n.client])?;
        ip(&["netns", "add", &n.server])?;
        let mut link = vec!["link", "add", n.veth_client.as_str()];
        if let Some((mac, _)) = macs {
            link.extend(["address", mac]);
        }
        link.extend([
            "netns",
            &n.client,
            "type",
            "veth",
            "peer",
            "name",
            &n.veth_server,
        ]);
        if let Some((_, mac)) = macs {
            link.extend(["address", mac]);
        }
        link.extend(["netns", &n.server]);
        ip(&link)?;
        Ok(pair)
    }

    /// Brings lo up in both namespaces and puts [`CLIENT_V4`]/24 on the
    /// client end, [`SERVER_V4`]/24 on the server end.
    pub fn add_v4(&self) -> Result<(), String> {
        let n = &self.names;
        let (ca, sa) = (format!("{CLIENT_V4}/24"), format!("{SERVER_V4}/24"));
        self.ip_in(&n.client, &["link", "set", "lo", "up"])?;
        self.ip_in(&n.server, &["link", "set", "lo", "up"])?;
        self.ip_in(&n.client, &["addr", "add", &ca, "dev", &n.veth_client])?;
        self.ip_in(&n.server, &["addr", "add", &sa, "dev", &n.veth_server])
    }

    /// Brings both veth ends up.
    pub fn up(&self) -> Result<(), String> {
        let n = &self.names;
        self.ip_in(&n.client, &["link", "set", &n.veth_client, "up"])?;
        self.ip_in(&n.server, &["link", "set", &n.veth_server, "up"])
    }

    /// `ip -n <ns> args...`.
    pub fn ip_in(&self, ns: &str, args: &[&str]) -> Result<(), String> {
        let mut full = vec!["-n", ns];
        full.extend_from_slice(args);
        ip(&full)
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        for ns in [&self.names.client, &self.names.server] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        // In case the pair was created but never moved into the namespaces.
        let _ = Command::new("ip")
            .args(["link", "del", &self.names.veth_client])
            .output();
    }
}

/// Runs `ip args...`; the error names the command and its output.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = sys::run_timeout(Command::new("ip").args(args), sys::CMD_TIMEOUT);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            out.describe()
        ))
    }
}
