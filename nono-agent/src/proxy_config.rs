//! The proxy's configuration from the command line (with the profile's
//! rules already merged in by `plan`), shared by `exec` and `proxy`.

use nono_proxy::{Limits, ProxyConfig, ProxyPolicy};
use std::time::Duration;

use crate::cli::ProxyArgs;

/// The proxy's configuration from its flags. Timeouts and the connection
/// limit are at least 1, since 0 would refuse everything.
pub fn from_args(a: &ProxyArgs, secret: Option<String>, sandbox: &str) -> ProxyConfig {
    ProxyConfig {
        policy: ProxyPolicy {
            allow: a.allow_domain.clone(),
            deny: a.deny_domain.clone(),
            cidrs: a.allow_cidr.clone(),
        },
        pins: a.resolve.clone(),
        dns_server: a.dns_server,
        secret,
        upstream: a.upstream_proxy.clone(),
        limits: Limits {
            connect_timeout: Duration::from_secs(a.connect_timeout.max(1)),
            idle_timeout: Duration::from_secs(a.idle_timeout.max(1)),
            max_connections: a.max_connections.max(1),
            ..Default::default()
        },
        sandbox: sandbox.to_string(),
    }
}
