//! Name resolution for the proxy: pinned names first, then either a given
//! DNS server or the system resolver. Only names that passed the domain
//! rules ever get here.

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use super::pattern::{normalize_host, NameError};

/// `--resolve NAME=ADDR[,ADDR...]` (like curl's `--resolve`, without a port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// Normalised name.
    pub name: String,
    /// Its addresses.
    pub addrs: Vec<IpAddr>,
}

impl FromStr for Pin {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: String| NameError(format!("--resolve {s:?}: {why}"));
        let (name, addrs) = s
            .split_once('=')
            .ok_or_else(|| bad("expected NAME=ADDR".into()))?;
        let name = normalize_host(name).map_err(|e| bad(e.to_string()))?;
        let addrs = addrs
            .split(',')
            .map(|a| {
                a.trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .map_err(|_| bad(format!("{a:?} is not an IP address")))
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
    pub fn new(pins: &[Pin], dns_server: Option<SocketAddr>) -> Result<Self, String> {
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
                .map_err(|e| format!("--dns-server {addr}: {e}"))?;
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
    pub async fn lookup(&self, name: &str) -> Result<Vec<IpAddr>, String> {
        if let Some(a) = self.pins.get(name) {
            return Ok(a.clone());
        }
        let addrs: Vec<IpAddr> = match &self.dns {
            // Trailing dot: an absolute name, so no search domain is tried.
            Some(r) => r
                .lookup_ip(format!("{name}."))
                .await
                .map_err(|e| format!("DNS lookup of {name} failed: {e}"))?
                .iter()
                .collect(),
            None => tokio::net::lookup_host((name, 0))
                .await
                .map_err(|e| format!("DNS lookup of {name} failed: {e}"))?
                .map(|sa| sa.ip())
                .collect(),
        };
        if addrs.is_empty() {
            return Err(format!("{name} has no addresses"));
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
