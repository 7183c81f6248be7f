//! Where a redirected connection may go: the name behind it, from the
//! synthetic address it was dialled to, or from its first bytes (TLS server
//! name, HTTP `Host`); without a name, its address. The caller then applies
//! the ordinary rules to that target (`ProxyPolicy::check_target`) and
//! connects to the *name's own* checked addresses, never to the address
//! the client dialled (no domain fronting: a server name of an allowed
//! host on a connection to some other address still goes to the allowed
//! host, or nowhere).

use std::net::{IpAddr, SocketAddr};

use super::peek::Peeked;
use crate::pattern::normalize_host;
use crate::resolver::fake_ip::{in_pool, FakeIps};

/// Where the name came from (for events).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameSource {
    /// The synthetic address the sandbox's resolver gave for it.
    Pool,
    /// The TLS ClientHello's server name.
    Sni,
    /// The HTTP request's `Host`.
    HttpHost,
}

/// The target to judge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A host name (normalised), on the port the client dialled.
    Name {
        /// The name.
        name: String,
        /// The dialled port.
        port: u16,
        /// How the name was learned.
        source: NameSource,
    },
    /// No name: the dialled address, judged by the address rules.
    Ip {
        /// The dialled address.
        ip: IpAddr,
        /// The dialled port.
        port: u16,
    },
}

/// Why a redirected connection gets no target at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoTarget {
    /// A pool address no name was given (a stale answer, or a guess).
    #[error("{0} is a synthetic address the sandbox's resolver never gave out")]
    UnassignedPoolAddress(IpAddr),
    /// An Encrypted ClientHello hides the real server name.
    #[error("encrypted ClientHello (ECH): the server name is hidden")]
    EncryptedHello,
    /// The TLS server name or HTTP Host names another host than the
    /// synthetic address stands for.
    #[error("the connection to {expected} names {named} instead")]
    NameMismatch {
        /// The name of the dialled synthetic address.
        expected: String,
        /// The name the client sent.
        named: String,
    },
    /// The server name or Host is not a host name.
    #[error("{0:?} is not a host name")]
    InvalidName(String),
    /// The client's first message (a TLS ClientHello or an HTTP request
    /// head) did not finish in time, so the name it carries could not be
    /// checked: refused rather than passed on unchecked.
    #[error("the first message did not finish in time; its name could not be checked")]
    Incomplete,
    /// A TLS handshake that is not one whole, plain ClientHello (split
    /// over records, malformed, two server names).
    #[error("a TLS ClientHello that cannot be read whole (split, malformed or with two names)")]
    Unreadable,
}

/// The target of a connection redirected from `dialled`, given what its
/// first bytes said (`Peeked::Other` or `NeedMore` when it said nothing
/// in time: a protocol where the server speaks first).
pub fn destination(
    dialled: SocketAddr,
    pool: &FakeIps,
    peeked: &Peeked,
) -> Result<Destination, NoTarget> {
    let port = dialled.port();
    let named = match peeked {
        Peeked::Unreadable => return Err(NoTarget::Unreadable),
        Peeked::Tls { ech: true, .. } => return Err(NoTarget::EncryptedHello),
        Peeked::Tls { sni: Some(s), .. } => Some((s.as_str(), NameSource::Sni)),
        Peeked::Http { host: Some(h) } => Some((strip_port(h), NameSource::HttpHost)),
        _ => None,
    };
    let ip = dialled.ip();
    if in_pool(ip) {
        let name = pool
            .name_of(ip)
            .ok_or(NoTarget::UnassignedPoolAddress(ip))?
            .to_string();
        if let Some((raw, _)) = named {
            let sent = normalize_host(raw).map_err(|_| NoTarget::InvalidName(raw.to_string()))?;
            if sent != name {
                return Err(NoTarget::NameMismatch {
                    expected: name,
                    named: sent,
                });
            }
        }
        return Ok(Destination::Name {
            name,
            port,
            source: NameSource::Pool,
        });
    }
    match named {
        // An IP literal as Host: no name; the address rules decide.
        Some((raw, NameSource::HttpHost)) if is_ip_literal(raw) => Ok(Destination::Ip { ip, port }),
        Some((raw, source)) => {
            let name = normalize_host(raw).map_err(|_| NoTarget::InvalidName(raw.to_string()))?;
            Ok(Destination::Name { name, port, source })
        }
        None => Ok(Destination::Ip { ip, port }),
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port` → the host part.
fn strip_port(h: &str) -> &str {
    if let Some(rest) = h.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match h.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => h,
    }
}

fn is_ip_literal(h: &str) -> bool {
    h.parse::<IpAddr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn at(ip: IpAddr, port: u16) -> SocketAddr {
        SocketAddr::new(ip, port)
    }

    fn tls(sni: &str) -> Peeked {
        Peeked::Tls {
            sni: Some(sni.into()),
            ech: false,
        }
    }

    #[test]
    fn a_pool_address_stands_for_its_name_whatever_the_protocol() {
        let mut pool = FakeIps::default();
        let (v4, v6) = pool.assign("github.com").unwrap();
        for peeked in [Peeked::Other, Peeked::NeedMore, tls("GitHub.com.")] {
            assert_eq!(
                destination(at(v4.into(), 22), &pool, &peeked),
                Ok(Destination::Name {
                    name: "github.com".into(),
                    port: 22,
                    source: NameSource::Pool
                }),
                "{peeked:?}"
            );
        }
        assert!(matches!(
            destination(at(v6.into(), 443), &pool, &Peeked::Other),
            Ok(Destination::Name { .. })
        ));
    }

    #[test]
    fn a_pool_address_with_another_name_inside_is_refused() {
        let mut pool = FakeIps::default();
        let (v4, _) = pool.assign("allowed.example").unwrap();
        assert_eq!(
            destination(at(v4.into(), 443), &pool, &tls("evil.example")),
            Err(NoTarget::NameMismatch {
                expected: "allowed.example".into(),
                named: "evil.example".into()
            })
        );
        let http = Peeked::Http {
            host: Some("evil.example:443".into()),
        };
        assert!(matches!(
            destination(at(v4.into(), 443), &pool, &http),
            Err(NoTarget::NameMismatch { .. })
        ));
    }

    #[test]
    fn unassigned_pool_addresses_and_ech_are_refused() {
        let pool = FakeIps::default();
        let ip = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 9));
        assert_eq!(
            destination(at(ip, 443), &pool, &Peeked::Other),
            Err(NoTarget::UnassignedPoolAddress(ip))
        );
        let ech = Peeked::Tls {
            sni: Some("cover.example".into()),
            ech: true,
        };
        let real = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
        assert_eq!(
            destination(at(real, 443), &pool, &ech),
            Err(NoTarget::EncryptedHello)
        );
    }

    #[test]
    fn a_real_address_goes_by_the_name_the_client_sends_or_by_address() {
        let pool = FakeIps::default();
        let real = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
        assert_eq!(
            destination(at(real, 443), &pool, &tls("API.example.com")),
            Ok(Destination::Name {
                name: "api.example.com".into(),
                port: 443,
                source: NameSource::Sni
            })
        );
        let http = Peeked::Http {
            host: Some("api.example.com:8080".into()),
        };
        assert_eq!(
            destination(at(real, 80), &pool, &http),
            Ok(Destination::Name {
                name: "api.example.com".into(),
                port: 80,
                source: NameSource::HttpHost
            })
        );
        for p in [
            Peeked::Other,
            Peeked::NeedMore,
            Peeked::Http {
                host: Some("203.0.113.7".into()),
            },
            Peeked::Http {
                host: Some("[2001:db8::1]:80".into()),
            },
            Peeked::Http { host: None },
        ] {
            assert_eq!(
                destination(at(real, 80), &pool, &p),
                Ok(Destination::Ip { ip: real, port: 80 }),
                "{p:?}"
            );
        }
        assert!(matches!(
            destination(at(real, 443), &pool, &tls("bad name")),
            Err(NoTarget::InvalidName(_))
        ));
        assert!(matches!(
            destination(at(real, 443), &pool, &tls("1.2.3.4")),
            Err(NoTarget::InvalidName(_))
        ));
    }
}
