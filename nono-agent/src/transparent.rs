//! Transparent mode for `exec` (see `nono_common::redirect` for what the
//! kernel rewrites): starts the sandbox's resolver and the proxy's
//! transparent listener, names them in the policy ([`Redirects`]), and
//! answers the proxy's "where did this client dial?" from the programs'
//! `ORIGINALS` records.
//!
//! The records are read by socket cookie; the proxy knows its client only
//! by address, so each lookup first asks the kernel (`sock_diag`, an exact
//! 4-tuple lookup) for the cookie of the sandbox socket at the other end of
//! the accepted connection. Only this agent's private copy of the programs
//! holds the records, so transparent mode needs the BPF enforcer run by
//! this agent as root (not the daemon, not the seccomp supervisor: see
//! [`refusal`]).
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
use crate::enforcer::Requested;
use crate::sandbox::sockdiag;

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

/// Why transparent mode cannot run with this enforcer, if it cannot.
pub fn refusal(privileged: bool, enforcer: Requested) -> Option<String> {
    let why = "transparent mode needs the BPF enforcer run by the agent itself (as root): \
               the kernel records where each redirected connection was dialled, and only the \
               agent's own copy of the programs hands those records to its proxy";
    if enforcer == Requested::Seccomp {
        return Some(format!(
            "--transparent with --enforcer seccomp: {why}; the seccomp supervisor does not \
             redirect (see the README's transparent mode section)"
        ));
    }
    if !privileged {
        return Some(format!(
            "--transparent: {why}; run as root, or use the proxy variables (HTTPS_PROXY) \
             without --transparent"
        ));
    }
    None
}

/// The running capture: the listeners' ports for the policy, and the slot
/// the programs' records go into once they are loaded.
pub struct Capture {
    /// The ports to write into the sandbox's policy.
    pub redirects: Redirects,
    records: Arc<OnceLock<Originals>>,
    resolvers: Vec<resolver::server::Running>,
}

impl Capture {
    /// Hands the loaded programs' records to the proxy's lookups. Until
    /// then (nothing in the sandbox runs yet) every lookup finds nothing.
    pub fn use_records(&self, originals: Originals) {
        let _ = self.records.set(originals);
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
    let lookup = {
        let records = records.clone();
        Arc::new(move |peer: SocketAddr, local: SocketAddr| original(&records, peer, local))
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
        records,
        resolvers,
    })
}

/// Where the sandbox socket at `peer` (connected to our listener at
/// `local`) dialled.
fn original(
    records: &OnceLock<Originals>,
    peer: SocketAddr,
    local: SocketAddr,
) -> Option<SocketAddr> {
    let map = records.get()?;
    let cookie = sockdiag::tcp_cookie(peer, local).ok()??;
    let o = map.get(&cookie, 0).ok()?;
    Some(SocketAddr::new(from_canonical(o.addr), o.port))
}

/// A canonical address (v4 as v4-mapped) as the address it stands for.
fn from_canonical(a: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(a);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_addresses_come_back_as_they_were_dialled() {
        let v4 = nono_common::canonical_v4([203, 0, 113, 9]);
        assert_eq!(from_canonical(v4), "203.0.113.9".parse::<IpAddr>().unwrap());
        let v6: Ipv6Addr = "2001:db8::9".parse().unwrap();
        assert_eq!(from_canonical(v6.octets()), IpAddr::V6(v6));
    }

    #[test]
    fn only_the_agents_own_bpf_enforcer_is_accepted() {
        assert!(refusal(true, Requested::Auto).is_none());
        assert!(refusal(true, Requested::Bpf).is_none());
        assert!(refusal(true, Requested::Seccomp).is_some());
        assert!(refusal(false, Requested::Auto).is_some());
    }
}
