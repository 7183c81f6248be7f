//! The test host: two network namespaces of selftest's own, joined by a veth
//! pair, with TEST-NET addresses.
//!
//! ```text
//!   client netns (probes, sandboxes)          server netns (the oracle)
//!   <veth_client> 198.51.100.(4k+1)/30  <-->  <veth_server> 198.51.100.(4k+2)/30
//!                 2001:db8:5e1f:k::1/64                     2001:db8:5e1f:k::2/64
//! ```
//!
//! Why it cannot outlive selftest or be used by anyone else: both
//! namespaces are anonymous (made with `unshare(CLONE_NEWNET)` on a
//! throwaway thread and held only by descriptors of this process, never
//! bind-mounted under `/run/netns`), and the veth pair is created inside
//! the client namespace, so the host's own namespace never has a new
//! interface, address or route. When the last descriptor, socket or process
//! in a namespace goes (normal end, error, panic, a signal, SIGKILL), the
//! kernel destroys it with its interfaces. Neither namespace has a route
//! anywhere but the /30 and the /64 between them, so nothing sent into them
//! can leave the machine. No name server is configured or asked.
//!
//! Interface configuration uses iproute2 (`ip -batch -`, one process per
//! namespace, entered with `setns` before exec); sysctls are written from a
//! thread that joined the namespace.

use std::fs::File;
use std::io::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sched::{setns, unshare, CloneFlags};

/// Fixed MAC addresses (locally administered): the link is private.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0x6e, 0x6f, 0x53, 0x54, 0x01];
pub const SERVER_MAC: [u8; 6] = [0x02, 0x6e, 0x6f, 0x53, 0x54, 0x02];

/// What could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TestHostError {
    #[error("creating a network namespace: {0}")]
    Unshare(#[source] nix::Error),
    #[error("creating a user namespace (needed without root; the host may forbid unprivileged ones): {0}")]
    UserNs(#[source] nix::Error),
    #[error("writing /proc/self/{0}: {1}")]
    Map(String, #[source] std::io::Error),
    #[error("opening the new namespace: {0}")]
    OpenNs(#[source] std::io::Error),
    #[error("entering a test namespace: {0}")]
    Setns(#[source] nix::Error),
    #[error("running `ip` (iproute2 is needed to configure the test link): {0}")]
    Spawn(#[source] std::io::Error),
    #[error("`ip -batch` in the {ns} namespace failed: {detail}")]
    Ip { ns: &'static str, detail: String },
    #[error("sysctl {key} in the {ns} namespace: {source}")]
    Sysctl {
        ns: &'static str,
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the test link {0} did not come up within 5 s")]
    LinkDown(String),
    #[error("a namespace thread panicked")]
    Thread,
}

/// Addresses and names of one run: derived from a per-run number so that
/// runs side by side (selftest and the test suite) never share a name, and
/// any address seen on a wire names the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addressing {
    pub client_v4: Ipv4Addr,
    pub server_v4: Ipv4Addr,
    pub client_v6: Ipv6Addr,
    pub server_v6: Ipv6Addr,
    pub veth_client: String,
    pub veth_server: String,
}

impl Addressing {
    /// The addressing of run `n` (any number; the low 6 bits choose the /30
    /// in 198.51.100.0/24 and the /64 in 2001:db8:5e1f::/48).
    pub fn for_run(n: u32) -> Addressing {
        let k = (n % 64) as u8;
        let k16 = u16::from(k);
        Addressing {
            client_v4: Ipv4Addr::new(198, 51, 100, 4 * k + 1),
            server_v4: Ipv4Addr::new(198, 51, 100, 4 * k + 2),
            client_v6: Ipv6Addr::new(0x2001, 0xdb8, 0x5e1f, k16, 0, 0, 0, 1),
            server_v6: Ipv6Addr::new(0x2001, 0xdb8, 0x5e1f, k16, 0, 0, 0, 2),
            // At most 15 bytes: "nst" + up to 8 hex digits + "c".
            veth_client: format!("nst{n:x}c"),
            veth_server: format!("nst{n:x}s"),
        }
    }

    /// `ip -batch` lines for the client namespace (the veth pair is made
    /// here; its server end is moved into the namespace `server_ns_path`).
    pub fn client_batch(&self, server_ns_path: &str) -> String {
        let (c, s) = (&self.veth_client, &self.veth_server);
        format!(
            "link set lo up\n\
             link add {c} address {cm} type veth peer name {s} address {sm} netns {server_ns_path}\n\
             addr add {c4}/30 dev {c}\n\
             addr add {c6}/64 dev {c} nodad\n\
             link set {c} up\n\
             neigh replace {s4} lladdr {sm} dev {c} nud permanent\n\
             neigh replace {s6} lladdr {sm} dev {c} nud permanent\n",
            cm = mac(&CLIENT_MAC),
            sm = mac(&SERVER_MAC),
            c4 = self.client_v4,
            c6 = self.client_v6,
            s4 = self.server_v4,
            s6 = self.server_v6,
        )
    }

    /// `ip -batch` lines for the server namespace.
    pub fn server_batch(&self) -> String {
        let s = &self.veth_server;
        format!(
            "link set lo up\n\
             addr add {s4}/30 dev {s}\n\
             addr add {s6}/64 dev {s} nodad\n\
             link set {s} up\n\
             neigh replace {c4} lladdr {cm} dev {s} nud permanent\n\
             neigh replace {c6} lladdr {cm} dev {s} nud permanent\n",
            cm = mac(&CLIENT_MAC),
            c4 = self.client_v4,
            c6 = self.client_v6,
            s4 = self.server_v4,
            s6 = self.server_v6,
        )
    }
}

/// `aa:bb:...` form of a MAC address.
pub fn mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The two namespaces and the link between them. Dropping it closes the
/// namespace descriptors: the kernel removes both namespaces (and the veth
/// pair) once nothing else runs or listens in them.
#[derive(Debug)]
pub struct TestHost {
    client: OwnedFd,
    server: OwnedFd,
    pub addrs: Addressing,
}

impl TestHost {
    /// Creates and configures the namespaces (root only).
    pub fn create(addrs: Addressing) -> Result<TestHost, TestHostError> {
        let client = new_netns()?;
        let server = new_netns()?;
        let host = TestHost {
            client,
            server,
            addrs,
        };
        host.configure()?;
        Ok(host)
    }

    /// The namespaces as `net:[INODE]` (client, server).
    pub fn netns_ids(&self) -> (String, String) {
        let id = |fd: &OwnedFd| {
            nix::sys::stat::fstat(fd)
                .map(|st| format!("net:[{}]", st.st_ino))
                .unwrap_or_else(|e| format!("unknown ({e})"))
        };
        (id(&self.client), id(&self.server))
    }

    pub fn client(&self) -> BorrowedFd<'_> {
        self.client.as_fd()
    }

    pub fn server(&self) -> BorrowedFd<'_> {
        self.server.as_fd()
    }

    fn configure(&self) -> Result<(), TestHostError> {
        // Sysctls first, so the IPv6 settings apply when the links come up.
        // Ping sockets for every group as root; without root (a user
        // namespace of ours, where only our gid is mapped) for our group,
        // if the kernel lets us: otherwise the ping vectors' baseline
        // cannot reach and they are reported as not testable.
        // SAFETY: geteuid/getgid never fail.
        let (root, gid) = unsafe { (libc::geteuid() == 0, libc::getgid()) };
        let ping = if root {
            "0 2147483647".to_string()
        } else {
            format!("{gid} {gid}")
        };
        let settings: &[(&'static str, bool, &str, &str, bool)] = &[
            ("client", true, "net.ipv4.ping_group_range", &ping, root),
            ("client", true, "net.ipv4.tcp_fastopen", "1", true),
            ("server", false, "net.ipv4.tcp_fastopen", "3", true),
            ("client", true, "net.mptcp.enabled", "1", false),
            ("server", false, "net.mptcp.enabled", "1", false),
            ("client", true, "net.ipv6.conf.all.accept_ra", "0", false),
            (
                "client",
                true,
                "net.ipv6.conf.default.accept_ra",
                "0",
                false,
            ),
            ("server", false, "net.ipv6.conf.all.accept_ra", "0", false),
            (
                "server",
                false,
                "net.ipv6.conf.default.accept_ra",
                "0",
                false,
            ),
        ];
        for &(ns, is_client, key, value, required) in settings {
            let fd = if is_client {
                self.client()
            } else {
                self.server()
            };
            let path = format!("/proc/sys/{}", key.replace('.', "/"));
            let v = value.to_string();
            let r = in_netns(fd, move || std::fs::write(&path, v))?;
            if let Err(source) = r {
                if required {
                    return Err(TestHostError::Sysctl {
                        ns,
                        key: key.into(),
                        source,
                    });
                }
            }
        }
        // `ip` opens the server namespace through a descriptor it inherits.
        let server_path = format!("/proc/self/fd/{}", self.server.as_raw_fd());
        ip_batch(
            self.client(),
            Some(self.server()),
            "client",
            &self.addrs.client_batch(&server_path),
        )?;
        ip_batch(self.server(), None, "server", &self.addrs.server_batch())?;
        for (fd, dev) in [
            (self.client(), &self.addrs.veth_client),
            (self.server(), &self.addrs.veth_server),
        ] {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let d = dev.clone();
                if in_netns(fd, move || link_running(&d))? {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(TestHostError::LinkDown(dev.clone()));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    }
}

/// A new, anonymous network namespace, held by the returned descriptor.
fn new_netns() -> Result<OwnedFd, TestHostError> {
    std::thread::spawn(|| {
        // A thread may have a network namespace of its own; this one ends
        // right after, so the process keeps its namespace.
        unshare(CloneFlags::CLONE_NEWNET).map_err(TestHostError::Unshare)?;
        File::open("/proc/thread-self/ns/net")
            .map(OwnedFd::from)
            .map_err(TestHostError::OpenNs)
    })
    .join()
    .map_err(|_| TestHostError::Thread)?
}

/// Runs `f` on a fresh thread that joined the namespace `ns` (sockets it
/// creates stay in that namespace and may be used from any thread).
pub fn in_netns<T: Send + 'static>(
    ns: BorrowedFd<'_>,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, TestHostError> {
    let fd = ns.try_clone_to_owned().map_err(TestHostError::OpenNs)?;
    std::thread::spawn(move || {
        setns(&fd, CloneFlags::CLONE_NEWNET).map_err(TestHostError::Setns)?;
        Ok(f())
    })
    .join()
    .map_err(|_| TestHostError::Thread)?
}

/// `CAP_NET_ADMIN`: `ip` needs it to configure the test link.
pub const CAP_NET_ADMIN: u32 = 12;
/// `CAP_NET_RAW`: the baseline probe needs it for raw and packet sockets.
pub const CAP_NET_RAW: u32 = 13;

/// Makes `cmd` start in the namespace `ns` (setns between fork and exec).
/// `ambient`: capabilities the program keeps across exec (only needed in a
/// user namespace of selftest's own, where exec as a non-zero uid would
/// drop them; as root nothing is raised). `keep_fd`: a descriptor the
/// program may open as `/proc/self/fd/N`.
pub fn enter_before_exec(
    cmd: &mut Command,
    ns: BorrowedFd<'_>,
    ambient: &[u32],
    keep_fd: Option<BorrowedFd<'_>>,
) -> std::io::Result<()> {
    let fd = ns.try_clone_to_owned()?;
    let keep = keep_fd.map(|f| f.as_raw_fd());
    let mask: u64 = ambient.iter().fold(0, |m, c| m | (1u64 << c));
    let caps: Vec<u32> = ambient.to_vec();
    // SAFETY: the closure runs in the forked child before exec and only
    // makes async-signal-safe system calls (setns, fcntl, capget/capset,
    // prctl) on memory it owns; `fd` is moved in and not dropped there.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(k) = keep {
                if libc::fcntl(k, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if mask != 0 {
                crate::sandbox::privileges::raise_ambient(mask, &caps)?;
            }
            // If selftest dies, so does what it started (exec forwards the
            // signal to its command and removes its sandbox).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    Ok(())
}

/// For a caller other than root: moves this process into a new user
/// namespace that maps only its own uid and gid, where it may create the
/// test host's network namespaces (they belong to that user namespace and
/// reach nothing the caller could not reach already). Must be called while
/// the process is single-threaded.
pub fn enter_own_userns() -> Result<(), TestHostError> {
    // SAFETY: getuid/getgid never fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    // /proc/self/*_map of a non-dumpable process belong to root: writable
    // by us only while dumpable.
    // SAFETY: integer-only prctl.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) };
    let res = (|| {
        unshare(CloneFlags::CLONE_NEWUSER).map_err(TestHostError::UserNs)?;
        let write = |f: &str, v: String| {
            std::fs::write(format!("/proc/self/{f}"), v)
                .map_err(|e| TestHostError::Map(f.into(), e))
        };
        write("setgroups", "deny".into())?;
        write("uid_map", format!("{uid} {uid} 1"))?;
        write("gid_map", format!("{gid} {gid} 1"))
    })();
    // SAFETY: integer-only prctl.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    res
}

/// `ip -batch -` in namespace `ns`, fed `script`.
fn ip_batch(
    ns: BorrowedFd<'_>,
    keep: Option<BorrowedFd<'_>>,
    name: &'static str,
    script: &str,
) -> Result<(), TestHostError> {
    let mut cmd = Command::new(ip_program());
    cmd.args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: geteuid never fails.
    let ambient: &[u32] = if unsafe { libc::geteuid() } == 0 {
        &[]
    } else {
        &[CAP_NET_ADMIN]
    };
    enter_before_exec(&mut cmd, ns, ambient, keep).map_err(TestHostError::Spawn)?;
    let mut child = cmd.spawn().map_err(TestHostError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(TestHostError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(TestHostError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(TestHostError::Ip {
            ns: name,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

/// `ip` from the usual places (a service's PATH may lack /sbin).
fn ip_program() -> &'static str {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("ip")
}

/// Whether interface `dev` (in the calling thread's namespace) is up and
/// running (carrier).
fn link_running(dev: &str) -> bool {
    let Ok(sock) = std::net::UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    // SAFETY: all-zero ifreq is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(dev.bytes().take(15)) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags into req.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) };
    // SAFETY: the union's flags member is what SIOCGIFFLAGS set.
    let flags = i32::from(unsafe { req.ifr_ifru.ifru_flags });
    rc == 0 && flags & libc::IFF_UP != 0 && flags & libc::IFF_RUNNING != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addressing_stays_in_test_nets_and_names_fit() {
        for n in [0, 1, 63, 64, 4242, u32::MAX] {
            let a = Addressing::for_run(n);
            assert!(a.veth_client.len() <= 15 && a.veth_server.len() <= 15);
            assert_ne!(a.veth_client, a.veth_server);
            for ip in [a.client_v4, a.server_v4] {
                assert_eq!(ip.octets()[..3], [198, 51, 100]);
            }
            for ip in [a.client_v6, a.server_v6] {
                assert_eq!(ip.segments()[..3], [0x2001, 0xdb8, 0x5e1f]);
            }
            assert!(a.client_batch("/proc/1/fd/3").contains(&a.veth_server));
        }
        assert_ne!(Addressing::for_run(1), Addressing::for_run(2));
    }
}
