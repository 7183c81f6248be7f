//! The proxy's rules as plain data, and the proxy's start-up state built
//! from them (shared by `exec` and the standalone `proxy` command).

use std::net::SocketAddr;
use std::time::Duration;

use crate::events;
use crate::proxy::{self, pattern::DomainRule, policy::CidrRule, resolve::Pin, upstream::Upstream};

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

    /// The proxy's state for these rules.
    pub fn state(
        &self,
        secret: Option<String>,
        sandbox: &str,
        events: events::EventTx,
    ) -> Result<proxy::State, String> {
        Ok(proxy::State {
            policy: proxy::policy::ProxyPolicy {
                allow: self.allow_domain.clone(),
                deny: self.deny_domain.clone(),
                cidrs: self.allow_cidr.clone(),
            },
            resolver: proxy::resolve::Resolver::new(&self.resolve, self.dns_server)?,
            secret,
            upstream: self.upstream_proxy.clone(),
            limits: proxy::Limits {
                connect_timeout: Duration::from_secs(self.connect_timeout.max(1)),
                idle_timeout: Duration::from_secs(self.idle_timeout.max(1)),
                max_connections: self.max_connections.max(1),
                ..Default::default()
            },
            sandbox: sandbox.to_string(),
            events,
            shutdown: Default::default(),
            tasks: Default::default(),
            pool: Default::default(),
        })
    }
}
