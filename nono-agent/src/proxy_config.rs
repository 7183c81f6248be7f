//! The proxy's rules as plain data, and the [`ProxyConfig`] built from them
//! (shared by `exec` and the standalone `proxy` command).

use nono_proxy::{CidrRule, DomainRule, Limits, Pin, ProxyConfig, ProxyPolicy, Upstream};
use std::net::SocketAddr;
use std::time::Duration;

/// What the filtering proxy lets through, merged from a profile and flags.
#[derive(Debug, Clone)]
pub struct ProxyRules {
    pub allow_domain: Vec<DomainRule>,
    pub deny_domain: Vec<DomainRule>,
    pub allow_cidr: Vec<CidrRule>,
    pub resolve: Vec<Pin>,
    pub dns_server: Option<SocketAddr>,
    pub upstream_proxy: Option<Upstream>,
    pub max_connections: usize,
    pub idle_timeout: u64,
    pub connect_timeout: u64,
}

impl Default for ProxyRules {
    /// The CLI's defaults (see `cli::ProxyArgs`).
    fn default() -> Self {
        Self {
            allow_domain: Vec::new(),
            deny_domain: Vec::new(),
            allow_cidr: Vec::new(),
            resolve: Vec::new(),
            dns_server: None,
            upstream_proxy: None,
            max_connections: 4096,
            idle_timeout: 300,
            connect_timeout: 10,
        }
    }
}

impl ProxyRules {
    /// Whether any rule asks for the proxy.
    pub fn wanted(&self) -> bool {
        !self.allow_domain.is_empty()
            || !self.deny_domain.is_empty()
            || !self.allow_cidr.is_empty()
            || self.upstream_proxy.is_some()
    }

    /// The proxy's configuration for these rules. Timeouts and the
    /// connection limit are at least 1: 0 would fail every request.
    pub fn config(&self, secret: Option<String>, sandbox: &str) -> ProxyConfig {
        ProxyConfig {
            policy: ProxyPolicy {
                allow: self.allow_domain.clone(),
                deny: self.deny_domain.clone(),
                cidrs: self.allow_cidr.clone(),
            },
            pins: self.resolve.clone(),
            dns_server: self.dns_server,
            secret,
            upstream: self.upstream_proxy.clone(),
            limits: Limits {
                connect_timeout: Duration::from_secs(self.connect_timeout.max(1)),
                idle_timeout: Duration::from_secs(self.idle_timeout.max(1)),
                max_connections: self.max_connections.max(1),
                ..Default::default()
            },
            sandbox: sandbox.to_string(),
        }
    }
}
