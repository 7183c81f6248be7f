//! Transparent mode for `exec` (see `nono_common::redirect` for what the
//! kernel rewrites): starts the sandbox's resolver and the proxy's
//! transparent listener, names them in the policy ([`Redirects`]), and
//! answers the proxy's "where did this client dial?" from the programs'
//! `ORIGINALS` records.
//!
//! The records are read by socket cookie; the proxy knows its client only
//! by address, so each lookup first asks the kernel (`sock_diag`, an exact
//! 4-tuple lookup) for the cookie of the sandbox socket at the other end of
//! the accepted connection. A sandbox the daemon made asks the daemon,
//! which answers only for that sandbox's own sockets. Under the seccomp
//! supervisor, which performs every connect itself, the supervisor connects
//! to the listener and records the original in [`Dialled`].
//!
//! What a hostile child could try, and what stops it:
//! - connecting to the listener directly (it is on loopback): its socket
//!   has no record, so the proxy refuses it (`no recorded destination`);
//! - dialling an allowed name's synthetic address with another name in SNI
//!   or `Host`: the proxy goes by the synthetic address's own name, and
//!   to that name's checked addresses only (`nono_proxy::transparent`);
//! - DNS to a hard-coded server, over UDP or TCP: redirected to the
//!   resolver, which never asks anyone (a query name cannot carry data
//!   out) and refuses TXT/NULL and the like;
//! - other UDP (QUIC, a tunnel): refused as before;
//! - flooding connects to evict records: its own connections are refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};

use nono_common::Redirects;
use nono_proxy::resolver::{self, server::Resolver, FakeIps};
use nono_proxy::{EventSink, ProxyConfig};

use crate::enforcer::bpf::loader::Originals;
use crate::sandbox::sockdiag;
use crate::util::canonical_ip;

/// Why transparent mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The proxy's transparent listener could not be opened.
    #[error("transparent mode: the proxy's listener")]
    Listener(#[source] nono_proxy::Error),
    /// The resolver could not be started.
    #[error("transparent mode: the resolver")]
    Resolver(#[source] resolver::server::ServerError),
    /// No proxy configuration (the plan always makes one in this mode).
    #[error("transparent mode needs the sandbox proxy, and none is configured")]
    NoProxy,
}

/// The environment a seccomp-supervised transparent sandbox gets on top:
/// glibc's stub resolver drops a UDP answer whose source is not the server
/// it asked, and without the BPF `recvmsg` hook the answer comes from the
/// resolver's own address, so glibc is told to ask over TCP (`use-vc`),
/// where the connection, not the source, is what it checks. The child can
/// unset it; that only breaks its own lookups.
pub fn seccomp_env(current: Option<&std::ffi::OsStr>) -> (String, String) {
    let mut v = current
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !v.split_whitespace().any(|o| o == "use-vc") {
        if !v.is_empty() {
            v.push(' ');
        }
        v.push_str("use-vc");
    }
    ("RES_OPTIONS".to_string(), v)
}

/// The seccomp supervisor's records of where redirected connects dialled,
/// by the sandbox socket's local end as the listener sees it (address and
/// port; a v4-mapped address as IPv4, a wildcard bind as the loopback
/// address the connection comes from). The whole address, not the port
/// alone: another sandbox's socket bound to `127.0.0.2:P` must not pass for
/// this sandbox's `127.0.0.1:P`. The supervisor binds an unbound socket
/// before it connects and records first, so the proxy can never accept a
/// connection whose record is not there yet; the proxy takes each record
/// once. Bounded: past [`Dialled::MAX`] the oldest records go (their
/// connections, if still unaccepted, are refused).
#[derive(Default)]
pub struct Dialled {
    inner: Mutex<DialledInner>,
}

#[derive(Default)]
struct DialledInner {
    map: std::collections::HashMap<SocketAddr, (SocketAddr, std::time::Instant)>,
    order: std::collections::VecDeque<SocketAddr>,
}

impl Dialled {
    /// Records kept at most.
    pub const MAX: usize = 16_384;
    /// How long a record is good for: the proxy accepts a redirected
    /// connection within milliseconds. One never taken (the connect failed,
    /// or the proxy was over its connection limit) must not serve a later
    /// socket that happens to get the same local address: another
    /// sandbox's, which would be judged by this sandbox's policy.
    pub const TTL: std::time::Duration = std::time::Duration::from_secs(10);

    fn key(local: SocketAddr) -> SocketAddr {
        let ip = match local.ip() {
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(a),
            },
            v4 => v4,
        };
        // A socket bound to the wildcard connects to the listener from the
        // loopback address of its family.
        let ip = match ip {
            IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        SocketAddr::new(ip, local.port())
    }

    /// The sandbox socket bound at `local` dialled `original`.
    pub fn record(&self, local: SocketAddr, original: SocketAddr) {
        self.record_at(local, original, std::time::Instant::now());
    }

    /// [`Dialled::record`], made at `at` (the tests age records).
    fn record_at(&self, local: SocketAddr, original: SocketAddr, at: std::time::Instant) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let k = Self::key(local);
        if g.map.insert(k, (original, at)).is_none() {
            g.order.push_back(k);
        }
        while g.order.len() > Self::MAX {
            if let Some(old) = g.order.pop_front() {
                g.map.remove(&old);
            }
        }
    }

    /// Takes the record of the sandbox socket at `peer`.
    pub fn take(&self, peer: SocketAddr) -> Option<SocketAddr> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let k = Self::key(peer);
        let found = g.map.remove(&k);
        if found.is_some() {
            g.order.retain(|x| *x != k);
        }
        found
            .filter(|(_, at)| at.elapsed() <= Self::TTL)
            .map(|(o, _)| o)
    }

    /// Drops the record of `local` (its connect failed).
    pub fn forget(&self, local: SocketAddr) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let k = Self::key(local);
        if g.map.remove(&k).is_some() {
            g.order.retain(|x| *x != k);
        }
    }
}

/// The running capture: the listeners' ports for the policy, and where
/// the records of redirected connections come from (the programs' map once
/// loaded, or the supervisor's table).
pub struct Capture {
    /// The ports to write into the sandbox's policy.
    pub redirects: Redirects,
    /// The seccomp supervisor's records (empty under BPF).
    pub dialled: Arc<Dialled>,
    records: Arc<OnceLock<Originals>>,
    daemon: Arc<OnceLock<DaemonRecords>>,
    resolvers: Vec<resolver::server::Running>,
}

impl Capture {
    /// Hands the loaded programs' records to the proxy's lookups. Until
    /// then (nothing in the sandbox runs yet) every lookup finds nothing.
    pub fn use_records(&self, originals: Originals) {
        let _ = self.records.set(originals);
    }

    /// The sandbox is the daemon's: lookups ask it (on a connection of
    /// their own, proving ownership with the sandbox's token).
    pub fn use_daemon(&self, socket: std::path::PathBuf, id: String, token: String) {
        let _ = self.daemon.set(DaemonRecords {
            socket,
            id,
            token,
            conn: Mutex::new(None),
        });
    }

    /// Stops the resolvers (the proxy, listener included, is stopped by
    /// its owner).
    pub async fn stop(self) {
        for r in self.resolvers {
            r.stop().await;
        }
    }
}

/// Starts the transparent listener on `proxy` and the resolver on
/// 127.0.0.1 and (when IPv6 is up) ::1.
pub async fn start(
    proxy: &mut nono_proxy::Running,
    config: Option<&ProxyConfig>,
    sandbox: &str,
    sink: Arc<dyn EventSink>,
) -> Result<Capture, Error> {
    let config = config.ok_or(Error::NoProxy)?;
    let pool = Arc::new(Mutex::new(FakeIps::new(
        resolver::fake_ip::DEFAULT_CAPACITY,
    )));
    let records: Arc<OnceLock<Originals>> = Arc::default();
    let daemon: Arc<OnceLock<DaemonRecords>> = Arc::default();
    let dialled: Arc<Dialled> = Arc::default();
    let lookup = {
        let records = records.clone();
        let daemon = daemon.clone();
        let dialled = dialled.clone();
        Arc::new(move |peer: SocketAddr, local: SocketAddr| {
            if let Some(map) = records.get() {
                let cookie = sockdiag::tcp_cookie(peer, local).ok()??;
                let o = map.get(&cookie, 0).ok()?;
                Some(SocketAddr::new(canonical_ip(o.addr), o.port))
            } else if let Some(d) = daemon.get() {
                d.lookup(peer, local)
            } else {
                dialled.take(peer)
            }
        })
    };
    let listeners = proxy
        .listen_transparent(lookup, pool.clone())
        .await
        .map_err(Error::Listener)?;
    let mut redirects = Redirects::OFF;
    for a in &listeners {
        match a {
            SocketAddr::V4(a) => redirects.tcp4 = a.port(),
            SocketAddr::V6(a) => redirects.tcp6 = a.port(),
        }
    }
    let sandbox: Arc<str> = Arc::from(sandbox);
    let policy = Arc::new(config.policy.clone());
    let make = |sink: Arc<dyn EventSink>| Resolver {
        policy: policy.clone(),
        pool: pool.clone(),
        sink: {
            let sandbox = sandbox.clone();
            Arc::new(move |o: &resolver::Outcome, _from: SocketAddr| {
                for e in resolver::events::events(&sandbox, o) {
                    sink.record(e);
                }
            })
        },
        audit: config.audit,
    };
    let mut resolvers = Vec::new();
    let v4 = resolver::server::start(
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        make(sink.clone()),
    )
    .await
    .map_err(Error::Resolver)?;
    redirects.dns4 = v4.addr.port();
    resolvers.push(v4);
    // ::1 is optional (IPv6 may be off): without it IPv6 DNS stays refused.
    if let Ok(v6) = resolver::server::start(
        SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 0),
        make(sink),
    )
    .await
    {
        redirects.dns6 = v6.addr.port();
        resolvers.push(v6);
    }
    Ok(Capture {
        redirects,
        dialled,
        records,
        daemon,
        resolvers,
    })
}

/// The daemon's records, asked over a connection kept for lookups.
struct DaemonRecords {
    socket: std::path::PathBuf,
    id: String,
    token: String,
    conn: Mutex<Option<crate::daemon::client::Client>>,
}

impl DaemonRecords {
    /// Where the sandbox socket at `peer` (connected to our listener at
    /// `local`) dialled. The cookie is found here (`sock_diag` answers any
    /// user); the daemon answers only for this sandbox's sockets. A
    /// connection the daemon closed (idle, restarted) is made again once.
    fn lookup(&self, peer: SocketAddr, local: SocketAddr) -> Option<SocketAddr> {
        let cookie = sockdiag::tcp_cookie(peer, local).ok()??;
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..2 {
            if conn.is_none() {
                *conn = crate::daemon::client::Client::connect(&self.socket)
                    .ok()
                    .flatten();
            }
            let c = conn.as_mut()?;
            match c.lookup(&self.id, &self.token, cookie) {
                Ok(d) => return d.map(|(addr, port)| SocketAddr::new(canonical_ip(addr), port)),
                Err(_) => *conn = None,
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_addresses_come_back_as_they_were_dialled() {
        let v4 = nono_common::canonical_v4([203, 0, 113, 9]);
        assert_eq!(canonical_ip(v4), "203.0.113.9".parse::<IpAddr>().unwrap());
        let v6: Ipv6Addr = "2001:db8::9".parse().unwrap();
        assert_eq!(canonical_ip(v6.octets()), IpAddr::V6(v6));
    }

    #[test]
    fn glibc_is_told_to_ask_over_tcp_once() {
        assert_eq!(seccomp_env(None).1, "use-vc");
        assert_eq!(seccomp_env(Some("ndots:2".as_ref())).1, "ndots:2 use-vc");
        assert_eq!(seccomp_env(Some("use-vc".as_ref())).1, "use-vc");
    }

    #[test]
    fn records_are_taken_once_by_local_address() {
        let d = Dialled::default();
        let orig: SocketAddr = "198.18.0.1:443".parse().unwrap();
        d.record("[::ffff:127.0.0.1]:4000".parse().unwrap(), orig);
        assert_eq!(d.take("[::1]:4000".parse().unwrap()), None);
        // Another socket on the same port of another loopback address.
        assert_eq!(d.take("127.0.0.2:4000".parse().unwrap()), None);
        assert_eq!(d.take("127.0.0.1:4000".parse().unwrap()), Some(orig));
        assert_eq!(d.take("127.0.0.1:4000".parse().unwrap()), None);
        // Bound to the wildcard: the connection comes from loopback.
        d.record("0.0.0.0:4001".parse().unwrap(), orig);
        assert_eq!(d.take("127.0.0.1:4001".parse().unwrap()), Some(orig));
        d.record("[::]:4002".parse().unwrap(), orig);
        assert_eq!(d.take("[::1]:4002".parse().unwrap()), Some(orig));
    }

    #[test]
    fn a_failed_connects_record_is_forgotten() {
        let d = Dialled::default();
        let local: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        d.record(local, "198.18.0.1:443".parse().unwrap());
        d.forget(local);
        assert_eq!(d.take(local), None);
    }

    #[test]
    fn a_record_older_than_its_ttl_serves_no_one() {
        // A redirected connect whose connection never reached the proxy
        // leaves a record; a later socket (another sandbox's) at the same
        // local address must not be judged by it.
        let d = Dialled::default();
        let local: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let orig: SocketAddr = "198.18.0.1:443".parse().unwrap();
        let now = std::time::Instant::now();
        let stale = now
            .checked_sub(Dialled::TTL + std::time::Duration::from_secs(1))
            .expect("the clock is past the TTL");
        d.record_at(local, orig, stale);
        assert_eq!(d.take(local), None);
        // The stale record is gone, not kept for a later take.
        assert_eq!(d.take(local), None);
        // Just inside the TTL it still serves.
        let fresh = now
            .checked_sub(Dialled::TTL - std::time::Duration::from_secs(1))
            .expect("the clock is past the TTL");
        d.record_at(local, orig, fresh);
        assert_eq!(d.take(local), Some(orig));
    }

    #[test]
    fn the_oldest_records_go_first() {
        let d = Dialled::default();
        let orig: SocketAddr = "198.18.0.1:443".parse().unwrap();
        for p in 0..(Dialled::MAX as u16 + 10) {
            d.record(SocketAddr::from(([127, 0, 0, 1], p)), orig);
        }
        assert_eq!(d.take(SocketAddr::from(([127, 0, 0, 1], 5))), None);
        assert_eq!(
            d.take(SocketAddr::from(([127, 0, 0, 1], Dialled::MAX as u16 + 9))),
            Some(orig)
        );
    }
}
