//! Name resolution for the proxy: pinned names first, then either a given
//! DNS server or the system resolver. Only names that passed the domain
//! rules ever get here.

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use crate::pattern::{normalize_host, NameError};

/// Why a `--resolve` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    /// No `=`.
    #[error("--resolve {0:?}: expected NAME=ADDR")]
    Syntax(String),
    /// The name is not a host name.
    #[error("--resolve {text:?}: {error}")]
    Name {
        /// The value as written.
        text: String,
        /// Why the name was refused.
        error: NameError,
    },
    /// One of the addresses is not an IP address.
    #[error("--resolve {text:?}: {addr:?} is not an IP address")]
    Addr {
        /// The value as written.
        text: String,
        /// The offending address.
        addr: String,
    },
}

/// Why a name could not be resolved, or the resolver not built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// The `--dns-server` resolver could not be built.
    #[error("--dns-server {addr}: {message}")]
    Server {
        /// The server.
        addr: SocketAddr,
        /// The resolver library's reason.
        message: String,
    },
    /// The query failed.
    #[error("DNS lookup of {name} failed: {message}")]
    Lookup {
        /// The name asked for.
        name: String,
        /// The resolver's reason.
        message: String,
    },
    /// The answer was empty.
    #[error("{0} has no addresses")]
    NoAddresses(String),
}

/// `--resolve NAME=ADDR[,ADDR...]` (like curl's `--resolve`, without a port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// Normalised name.
    pub name: String,
    /// Its addresses.
    pub addrs: Vec<IpAddr>,
}

impl FromStr for Pin {
    type Err = PinError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, addrs) = s
            .split_once('=')
            .ok_or_else(|| PinError::Syntax(s.to_string()))?;
        let name = normalize_host(name).map_err(|error| PinError::Name {
            text: s.to_string(),
            error,
        })?;
        let addrs = addrs
            .split(',')
            .map(|a| {
                a.trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .map_err(|_| PinError::Addr {
                        text: s.to_string(),
                        addr: a.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { name, addrs })
    }
}

/// Where names are looked up.
pub struct Resolver {
    pins: HashMap<String, Vec<IpAddr>>,
    dns: Option<TokioResolver>,
}

impl Resolver {
    /// `dns_server`: use this server (UDP, then TCP) instead of the system
    /// resolver configuration.
    pub fn new(pins: &[Pin], dns_server: Option<SocketAddr>) -> Result<Self, DnsError> {
        let dns = match dns_server {
            None => None,
            Some(addr) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                let ns = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
                let r = TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![ns]),
                    TokioRuntimeProvider::default(),
                )
                .build()
                .map_err(|e| DnsError::Server {
                    addr,
                    message: e.to_string(),
                })?;
                Some(r)
            }
        };
        Ok(Self {
            pins: pins
                .iter()
                .map(|p| (p.name.clone(), p.addrs.clone()))
                .collect(),
            dns,
        })
    }

    /// Addresses of an (already normalised and allowed) name.
    pub async fn lookup(&self, name: &str) -> Result<Vec<IpAddr>, DnsError> {
        if let Some(a) = self.pins.get(name) {
            return Ok(a.clone());
        }
        let failed = |e: &dyn std::fmt::Display| DnsError::Lookup {
            name: name.to_string(),
            message: e.to_string(),
        };
        let addrs: Vec<IpAddr> = match &self.dns {
            // Trailing dot: an absolute name, so no search domain is tried.
            Some(r) => r
                .lookup_ip(format!("{name}."))
                .await
                .map_err(|e| failed(&e))?
                .iter()
                .collect(),
            None => tokio::net::lookup_host((name, 0))
                .await
                .map_err(|e| failed(&e))?
                .map(|sa| sa.ip())
                .collect(),
        };
        if addrs.is_empty() {
            return Err(DnsError::NoAddresses(name.to_string()));
        }
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse() {
        let p: Pin = "Allowed.Test=198.51.100.2,[2001:db8::2]".parse().unwrap();
        assert_eq!(p.name, "allowed.test");
        assert_eq!(p.addrs.len(), 2);
        assert!("allowed.test".parse::<Pin>().is_err());
        assert!("allowed.test=nope".parse::<Pin>().is_err());
        assert!("bad name=1.2.3.4".parse::<Pin>().is_err());
    }

    #[tokio::test]
    async fn pinned_names_never_reach_a_resolver() {
        let r = Resolver::new(&["a.test=203.0.113.5".parse().unwrap()], None).unwrap();
        assert_eq!(
            r.lookup("a.test").await.unwrap(),
            vec!["203.0.113.5".parse::<IpAddr>().unwrap()]
        );
    }
}
