//! What the proxy may connect to: domain rules before any DNS query, then
//! address rules on every resolved address.
//!
//! Every judgement is a typed value naming the rule that decided it, so the
//! event of an allowed request can say which rule allowed it and a refusal
//! can say which rule (or fixed range) refused it.

use ipnet::IpNet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::pattern::{normalize_host, DomainRule, NameError, Origin};

/// `--allow-cidr NET[:PORT]`: IP literals and resolved addresses in NET are
/// allowed (on PORT, or on any port when none is given). Equal rules are
/// the same text: where each was written does not count.
#[derive(Debug, Clone, Eq)]
pub struct CidrRule {
    /// As written.
    pub text: String,
    /// The network.
    pub net: IpNet,
    /// The port, if restricted.
    pub port: Option<u16>,
    /// Where it was written.
    pub origin: Origin,
}

/// Why an `--allow-cidr` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--allow-cidr {text:?}: {why}")]
pub struct CidrError {
    /// The value as written.
    pub text: String,
    /// What is wrong with it.
    pub why: String,
}

impl FromStr for CidrRule {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // "[2001:db8::/32]:443", "10.0.0.0/8:5432", "10.0.0.0/8", "2001:db8::/32"
        let bad = |why: &str| CidrError {
            text: s.to_string(),
            why: why.to_string(),
        };
        let (net, port) = if let Some(rest) = s.strip_prefix('[') {
            let (net, tail) = rest.split_once(']').ok_or_else(|| bad("missing ']'"))?;
            let port = match tail.strip_prefix(':') {
                Some(p) => Some(p.parse::<u16>().map_err(|_| bad("bad port"))?),
                None if tail.is_empty() => None,
                None => return Err(bad("unexpected text after ']'")),
            };
            (net, port)
        } else if s.matches(':').count() == 1 {
            let (n, p) = s.split_once(':').ok_or_else(|| bad("bad port"))?;
            (n, Some(p.parse::<u16>().map_err(|_| bad("bad port"))?))
        } else {
            (s, None)
        };
        if port == Some(0) {
            return Err(bad("port 0"));
        }
        let net: IpNet = net
            .parse()
            .or_else(|_| net.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| bad("not an address or network"))?;
        if net.trunc() != net {
            // `10.0.0.1/8` is most likely a typo for a host or for the
            // network; either reading of it would surprise someone.
            let fixed = match port {
                Some(p) if net.addr().is_ipv6() => format!("[{}]:{p}", net.trunc()),
                Some(p) => format!("{}:{p}", net.trunc()),
                None => net.trunc().to_string(),
            };
            return Err(bad(&format!(
                "host bits are set: the network is {fixed} (or give the host alone: {})",
                net.addr()
            )));
        }
        Ok(Self {
            text: s.to_string(),
            net,
            port,
            origin: Origin::CommandLine,
        })
    }
}

/// Parses an allow rule (`--allow-cidr`, `allow_cidrs`): refused if it
/// overlaps a range no rule can open ([`CidrRule::check_allowable`]).
/// Deny rules (the host configuration's `deny_cidrs`) may cover them.
pub fn parse_allow_cidr(s: &str) -> Result<CidrRule, CidrError> {
    let r: CidrRule = s.parse()?;
    r.check_allowable()?;
    Ok(r)
}

/// Link-local ranges (cloud metadata lives there), in every spelling the
/// proxy judges as them (v4-mapped, v4-compatible, NAT64): no allow rule
/// may overlap them.
const LINK_LOCAL_NETS: [(&str, &str); 5] = [
    (
        "169.254.0.0/16",
        "link-local 169.254.0.0/16 (cloud metadata)",
    ),
    ("fe80::/10", "link-local fe80::/10"),
    (
        "::ffff:169.254.0.0/112",
        "link-local 169.254.0.0/16 (cloud metadata), v4-mapped",
    ),
    (
        "::169.254.0.0/112",
        "link-local 169.254.0.0/16 (cloud metadata), v4-compatible",
    ),
    (
        "64:ff9b::169.254.0.0/112",
        "link-local 169.254.0.0/16 (cloud metadata), NAT64",
    ),
];

/// Metadata addresses outside link-local. A rule naming one of them is
/// refused; a wider network around one (`100.64.0.0/10`, where Tailscale
/// lives) is not, and the address itself stays refused per request.
const METADATA_HOSTS: [(&str, &str); 5] = [
    ("100.100.100.200/32", "the Alibaba Cloud metadata address"),
    (
        "::ffff:100.100.100.200/128",
        "the Alibaba Cloud metadata address, v4-mapped",
    ),
    (
        "::100.100.100.200/128",
        "the Alibaba Cloud metadata address, v4-compatible",
    ),
    (
        "64:ff9b::100.100.100.200/128",
        "the Alibaba Cloud metadata address, NAT64",
    ),
    (
        "fd00:ec2::254/128",
        "the AWS IPv6 metadata address fd00:ec2::254",
    ),
];

/// The link-local range or metadata address `net` lies wholly within, if
/// any (pure): such a network holds nothing a rule could open.
pub fn within_never_allowed(net: &IpNet) -> Option<&'static str> {
    let parse = |m: &str| m.parse::<IpNet>().ok();
    LINK_LOCAL_NETS
        .iter()
        .chain(METADATA_HOSTS.iter())
        .find_map(|(m, what)| parse(m)?.contains(net).then_some(*what))
}

impl CidrRule {
    /// Refuses an allow rule inside link-local or a metadata address: those
    /// are refused per request whatever the rules say, so such a rule would
    /// only make the user believe they are open. A wider network that
    /// includes them (`0.0.0.0/0`, `64:ff9b::/96`) is accepted: everything
    /// else in it is allowed, and they stay refused per request, as
    /// documented.
    pub fn check_allowable(&self) -> Result<(), CidrError> {
        match within_never_allowed(&self.net) {
            Some(what) => Err(CidrError {
                text: self.text.clone(),
                why: format!(
                    "lies within {what}, which no rule can allow (refused per request whatever the rules say)"
                ),
            }),
            None => Ok(()),
        }
    }
}

impl PartialEq for CidrRule {
    fn eq(&self, other: &Self) -> bool {
        (&self.text, self.net, self.port) == (&other.text, other.net, other.port)
    }
}

impl CidrRule {
    /// The same rule, said to come from `origin`.
    pub fn with_origin(self, origin: Origin) -> Self {
        Self { origin, ..self }
    }
}

/// The rule that decided a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// `--allow-domain` / `allow_domains` allowed it.
    AllowDomain(DomainRule),
    /// `--deny-domain` / `deny_domains` refused it.
    DenyDomain(DomainRule),
    /// `--allow-cidr` / `allow_cidrs` allowed the IP literal.
    AllowCidr(CidrRule),
    /// The host configuration's `deny_cidrs` refused the address.
    DenyCidr(CidrRule),
}

impl Rule {
    /// `allow-domain`, `deny-domain` or `allow-cidr`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::AllowDomain(_) => "allow-domain",
            Self::DenyDomain(_) => "deny-domain",
            Self::AllowCidr(_) => "allow-cidr",
            Self::DenyCidr(_) => "deny-cidr",
        }
    }

    /// The rule as the user wrote it.
    pub fn text(&self) -> &str {
        match self {
            Self::AllowDomain(r) | Self::DenyDomain(r) => &r.text,
            Self::AllowCidr(r) | Self::DenyCidr(r) => &r.text,
        }
    }

    /// Where it was written.
    pub fn origin(&self) -> &Origin {
        match self {
            Self::AllowDomain(r) | Self::DenyDomain(r) => &r.origin,
            Self::AllowCidr(r) | Self::DenyCidr(r) => &r.origin,
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind(), self.text())
    }
}

/// A refusal, with the rule or range that caused it. Its text is sent to the
/// client in the 403 body and recorded in events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The host is neither an IP literal nor a valid host name.
    #[error("invalid host: {0}")]
    InvalidHost(NameError),
    /// An IP literal no `--allow-cidr` covers.
    #[error("IP address {ip} is not allowed: no --allow-cidr rule covers {ip} port {port}")]
    IpNotCovered {
        /// The literal (canonical form).
        ip: IpAddr,
        /// The port asked for.
        port: u16,
    },
    /// A deny rule matched the name.
    #[error("{name}:{port} is denied by rule deny-domain {}{}", rule.text, host_origin(&rule.origin))]
    Denied {
        /// The normalised name.
        name: String,
        /// The port asked for.
        port: u16,
        /// The deny rule that matched (boxed: refusals are passed by value
        /// on every request).
        rule: Box<DomainRule>,
    },
    /// A deny-cidr rule (host configuration) covers the address.
    #[error("address {ip} port {port} is denied by rule deny-cidr {}{}", rule.text, host_origin(&rule.origin))]
    CidrDenied {
        /// The address (canonical form).
        ip: IpAddr,
        /// The port asked for.
        port: u16,
        /// The rule that matched.
        rule: Box<CidrRule>,
    },
    /// No allow rule matched the name.
    #[error("{name}:{port} is not allowed by any allow-domain rule")]
    NotAllowed {
        /// The normalised name.
        name: String,
        /// The port asked for.
        port: u16,
    },
    /// Allow rules match the name, but none on this port.
    #[error(
        "{name}:{port}: port {port} is not allowed for {name} (its allow-domain rules allow port{} {}: add \"{name}:{port}\" to allow it)",
        if allowed.len() == 1 { "" } else { "s" },
        allowed.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
    )]
    PortNotAllowed {
        /// The normalised name.
        name: String,
        /// The port asked for.
        port: u16,
        /// The ports the rules matching the name allow, sorted.
        allowed: Vec<u16>,
    },
    /// Link-local, metadata, multicast and the like: no rule opens these.
    #[error("address {ip} is refused: {range}")]
    Never {
        /// The address (canonical form).
        ip: IpAddr,
        /// Which range it is in.
        range: &'static str,
    },
    /// A resolved loopback/private/CGNAT/ULA address without `--allow-cidr`.
    #[error("resolved address {ip} is in {range}; add --allow-cidr to reach it")]
    Private {
        /// The address (canonical form).
        ip: IpAddr,
        /// Which range it is in.
        range: &'static str,
    },
}

/// ` (host config FILE:LINE)` for a host rule: a refusal no profile or flag
/// can lift says where it comes from (profile and flag rules are named in
/// the events, not in the client's 403 body).
fn host_origin(o: &Origin) -> String {
    match o {
        Origin::HostConfig { .. } => format!(" ({o})"),
        _ => String::new(),
    }
}

impl Refusal {
    /// The rule that refused, if a rule did (rather than the absence of one
    /// or a fixed range).
    pub fn rule(&self) -> Option<Rule> {
        match self {
            Self::Denied { rule, .. } => Some(Rule::DenyDomain(DomainRule::clone(rule))),
            Self::CidrDenied { rule, .. } => Some(Rule::DenyCidr(CidrRule::clone(rule))),
            _ => None,
        }
    }
}

/// The request target after parsing: a name or an IP literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Normalised host name.
    Name(String),
    /// IP literal.
    Ip(IpAddr),
}

impl Target {
    /// Parses the host part of an authority (`[v6]` brackets removed by the
    /// caller or here).
    pub fn parse(host: &str) -> Result<Self, Refusal> {
        let unbracketed = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return Ok(Self::Ip(ip));
        }
        normalize_host(host)
            .map(Self::Name)
            .map_err(Refusal::InvalidHost)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(n) => f.write_str(n),
            Self::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// The proxy's rules.
#[derive(Debug, Clone, Default)]
pub struct ProxyPolicy {
    /// `--allow-domain`.
    pub allow: Vec<DomainRule>,
    /// `--deny-domain`, evaluated first.
    pub deny: Vec<DomainRule>,
    /// `--allow-cidr`.
    pub cidrs: Vec<CidrRule>,
    /// Ranges refused whatever else allows them (the host configuration's
    /// `deny_cidrs`): IP literals and every resolved address are checked
    /// against them first.
    pub deny_cidrs: Vec<CidrRule>,
}

impl ProxyPolicy {
    /// Judges the request target before anything is resolved. Returns the
    /// rule that allows it.
    pub fn check_target(&self, target: &Target, port: u16) -> Result<Rule, Refusal> {
        match target {
            Target::Ip(ip) => {
                let ip = canonical(*ip);
                self.check_denied_cidr(ip, port)?;
                match self.cidr_for(ip, port) {
                    Some(rule) => {
                        check_always_blocked(ip)?;
                        Ok(Rule::AllowCidr(rule.clone()))
                    }
                    None => Err(Refusal::IpNotCovered { ip, port }),
                }
            }
            Target::Name(name) => {
                if let Some(r) = self.deny.iter().find(|r| r.matches(name, port)) {
                    return Err(Refusal::Denied {
                        name: name.clone(),
                        port,
                        rule: Box::new(r.clone()),
                    });
                }
                if let Some(r) = self.allow.iter().find(|r| r.matches(name, port)) {
                    return Ok(Rule::AllowDomain(r.clone()));
                }
                let mut allowed: Vec<u16> = self
                    .allow
                    .iter()
                    .filter(|r| r.matches_host(name))
                    .flat_map(|r| r.ports().iter().copied())
                    .collect();
                allowed.sort_unstable();
                allowed.dedup();
                Err(if allowed.is_empty() {
                    Refusal::NotAllowed {
                        name: name.clone(),
                        port,
                    }
                } else {
                    Refusal::PortNotAllowed {
                        name: name.clone(),
                        port,
                        allowed,
                    }
                })
            }
        }
    }

    /// Judges one resolved address of an allowed name.
    pub fn check_resolved(&self, ip: IpAddr, port: u16) -> Result<(), Refusal> {
        let ip = canonical(ip);
        check_always_blocked(ip)?;
        self.check_denied_cidr(ip, port)?;
        if let Some(range) = private_range(ip) {
            if self.cidr_for(ip, port).is_none() {
                return Err(Refusal::Private { ip, range });
            }
        }
        Ok(())
    }

    fn check_denied_cidr(&self, ip: IpAddr, port: u16) -> Result<(), Refusal> {
        match self
            .deny_cidrs
            .iter()
            .find(|c| c.net.contains(&ip) && c.port.is_none_or(|p| p == port))
        {
            Some(rule) => Err(Refusal::CidrDenied {
                ip,
                port,
                rule: Box::new(rule.clone()),
            }),
            None => Ok(()),
        }
    }

    fn cidr_for(&self, ip: IpAddr, port: u16) -> Option<&CidrRule> {
        self.cidrs
            .iter()
            .find(|c| c.net.contains(&ip) && c.port.is_none_or(|p| p == port))
    }
}

/// v4-mapped (`::ffff:a.b.c.d`), v4-compatible (`::a.b.c.d`) and NAT64
/// (`64:ff9b::a.b.c.d`) addresses are judged as the IPv4 address they carry:
/// a NAT64 gateway turns `64:ff9b::a9fe:a9fe` into 169.254.169.254.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            let o = v6.octets();
            let embedded = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
            let compat =
                s[..6].iter().all(|&x| x == 0) && !v6.is_loopback() && !v6.is_unspecified();
            let nat64 = s[0] == 0x64 && s[1] == 0xff9b && s[2..6].iter().all(|&x| x == 0);
            if compat || nat64 {
                IpAddr::V4(embedded)
            } else {
                IpAddr::V6(v6)
            }
        }
        v4 => v4,
    }
}

/// The range `ip` is in if no rule can ever open it (link-local, cloud
/// metadata, multicast, broadcast, unspecified): the same check the proxy
/// makes on IP literals and resolved addresses, for explanations (`why`).
pub fn never_allowed(ip: IpAddr) -> Option<&'static str> {
    match check_always_blocked(canonical(ip)) {
        Err(Refusal::Never { range, .. }) => Some(range),
        _ => None,
    }
}

/// Ranges no rule can open: link-local (cloud metadata lives there),
/// well-known metadata addresses, multicast, broadcast, unspecified.
fn check_always_blocked(ip: IpAddr) -> Result<(), Refusal> {
    let why = match ip {
        IpAddr::V4(v4) => {
            if v4.is_link_local() {
                Some("link-local 169.254.0.0/16 (cloud metadata)")
            } else if v4 == Ipv4Addr::new(100, 100, 100, 200) {
                Some("the Alibaba Cloud metadata address")
            } else if v4.is_multicast() {
                Some("multicast")
            } else if v4.is_broadcast() {
                Some("broadcast")
            } else if v4.octets()[0] == 0 {
                Some("0.0.0.0/8 (this network)")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if (s[0] & 0xffc0) == 0xfe80 {
                Some("link-local fe80::/10")
            } else if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                Some("the AWS IPv6 metadata address fd00:ec2::254")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if v6.is_unspecified() {
                Some("the unspecified address")
            } else {
                None
            }
        }
    };
    match why {
        Some(range) => Err(Refusal::Never { ip, range }),
        None => Ok(()),
    }
}

/// Ranges reachable only with an explicit `--allow-cidr`.
fn private_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                Some("loopback 127.0.0.0/8")
            } else if o[0] == 10 {
                Some("private 10.0.0.0/8")
            } else if o[0] == 172 && (16..32).contains(&o[1]) {
                Some("private 172.16.0.0/12")
            } else if o[0] == 192 && o[1] == 168 {
                Some("private 192.168.0.0/16")
            } else if o[0] == 100 && (64..128).contains(&o[1]) {
                Some("shared/CGNAT 100.64.0.0/10")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_loopback() {
                Some("loopback ::1")
            } else if (v6.segments()[0] & 0xfe00) == 0xfc00 {
                Some("unique-local fc00::/7")
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], deny: &[&str], cidrs: &[&str]) -> ProxyPolicy {
        ProxyPolicy {
            allow: allow.iter().map(|s| s.parse().unwrap()).collect(),
            deny: deny.iter().map(|s| s.parse().unwrap()).collect(),
            cidrs: cidrs.iter().map(|s| s.parse().unwrap()).collect(),
            deny_cidrs: Vec::new(),
        }
    }

    #[test]
    fn host_deny_cidrs_beat_allow_cidrs_and_resolved_addresses() {
        let host = Origin::HostConfig {
            file: "/etc/nono-agent/config.toml".into(),
            line: 3,
        };
        let mut p = policy(&["a.test"], &[], &["10.0.0.0/8"]);
        p.deny_cidrs = vec!["10.1.0.0/16"
            .parse::<CidrRule>()
            .unwrap()
            .with_origin(host.clone())];
        let lit = Target::Ip("10.1.2.3".parse().unwrap());
        let e = p.check_target(&lit, 443).unwrap_err();
        assert_eq!(
            e.to_string(),
            "address 10.1.2.3 port 443 is denied by rule deny-cidr 10.1.0.0/16 \
             (host config /etc/nono-agent/config.toml:3)"
        );
        assert_eq!(e.rule().unwrap().origin(), &host);
        // v4-mapped spelling is the same address
        let mapped = Target::Ip("::ffff:10.1.2.3".parse().unwrap());
        assert!(p.check_target(&mapped, 443).is_err());
        assert!(p
            .check_target(&Target::Ip("10.2.0.1".parse().unwrap()), 443)
            .is_ok());
        assert!(p.check_resolved("10.1.9.9".parse().unwrap(), 443).is_err());
        assert!(p.check_resolved("10.2.9.9".parse().unwrap(), 443).is_ok());
        p.deny_cidrs = vec!["203.0.113.0/24:25".parse::<CidrRule>().unwrap()];
        assert!(p
            .check_resolved("203.0.113.7".parse().unwrap(), 25)
            .is_err());
        assert!(p
            .check_resolved("203.0.113.7".parse().unwrap(), 443)
            .is_ok());
    }

    fn name(s: &str) -> Target {
        Target::parse(s).unwrap()
    }

    #[test]
    fn deny_beats_allow() {
        let p = policy(&["*.allowed.test"], &["bad.allowed.test"], &[]);
        assert!(p.check_target(&name("ok.allowed.test"), 443).is_ok());
        let e = p.check_target(&name("BAD.allowed.test."), 443).unwrap_err();
        assert_eq!(
            e.to_string(),
            "bad.allowed.test:443 is denied by rule deny-domain bad.allowed.test"
        );
        assert_eq!(
            e.rule().map(|r| r.to_string()).as_deref(),
            Some("deny-domain bad.allowed.test")
        );
        assert_eq!(
            p.check_target(&name("ok.allowed.test"), 443)
                .map(|r| r.to_string()),
            Ok("allow-domain *.allowed.test".to_string())
        );
        assert!(p.check_target(&name("allowed.test"), 443).is_err());
    }

    #[test]
    fn a_port_no_rule_allows_is_named_as_such() {
        let p = policy(
            &["api.test", "*.svc.test:8443", "x.svc.test:9000"],
            &[],
            &[],
        );
        assert_eq!(
            p.check_target(&name("api.test"), 8443)
                .unwrap_err()
                .to_string(),
            "api.test:8443: port 8443 is not allowed for api.test (its allow-domain rules \
             allow ports 80, 443: add \"api.test:8443\" to allow it)"
        );
        assert_eq!(
            p.check_target(&name("a.svc.test"), 443)
                .unwrap_err()
                .to_string(),
            "a.svc.test:443: port 443 is not allowed for a.svc.test (its allow-domain rules \
             allow port 8443: add \"a.svc.test:443\" to allow it)"
        );
        assert!(matches!(
            p.check_target(&name("x.svc.test"), 22).unwrap_err(),
            Refusal::PortNotAllowed { allowed, .. } if allowed == vec![8443, 9000]
        ));
        // A name no rule matches is still "not allowed by any rule".
        assert_eq!(
            p.check_target(&name("other.test"), 443)
                .unwrap_err()
                .to_string(),
            "other.test:443 is not allowed by any allow-domain rule"
        );
        assert!(p.check_target(&name("a.svc.test"), 8443).is_ok());
    }

    #[test]
    fn ip_literals_need_cidr_and_metadata_is_never_allowed() {
        let p = policy(
            &["allowed.test"],
            &[],
            &["198.51.100.0/24:443", "169.254.0.0/16"],
        );
        assert!(p
            .check_target(&Target::parse("198.51.100.2").unwrap(), 443)
            .is_ok());
        assert!(p
            .check_target(&Target::parse("198.51.100.2").unwrap(), 80)
            .is_err());
        assert!(p
            .check_target(&Target::parse("203.0.113.2").unwrap(), 443)
            .is_err());
        assert!(p
            .check_target(&Target::parse("169.254.169.254").unwrap(), 80)
            .is_err());
        assert!(p
            .check_target(&Target::parse("[::ffff:198.51.100.2]").unwrap(), 443)
            .is_ok());
    }

    #[test]
    fn resolved_addresses() {
        let p = policy(&["allowed.test"], &[], &["10.1.0.0/16"]);
        for bad in [
            "169.254.169.254",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "::169.254.169.254",
            "fe80::1",
            "fd00:ec2::254",
            "100.100.100.200",
            "224.0.0.1",
            "ff02::1",
            "0.0.0.0",
            "::",
            "127.0.0.1",
            "::1",
            "10.0.0.1",
            "172.16.5.5",
            "192.168.1.1",
            "100.64.0.1",
            "fd12::1",
            "255.255.255.255",
        ] {
            assert!(
                p.check_resolved(bad.parse().unwrap(), 443).is_err(),
                "{bad} should be refused"
            );
        }
        for good in [
            "198.51.100.2",
            "203.0.113.9",
            "2001:db8::2",
            "10.1.2.3",
            "::ffff:10.1.2.3",
        ] {
            assert!(
                p.check_resolved(good.parse().unwrap(), 443).is_ok(),
                "{good} should pass"
            );
        }
    }

    #[test]
    fn allow_cidrs_may_not_overlap_metadata() {
        for bad in [
            "169.254.0.0/16",
            "169.254.169.254",
            "169.254.169.0/24",
            "100.100.100.200",
            "[::ffff:100.100.100.200]:80",
            "fe80::/10",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
            "[fe80::/64]:443",
        ] {
            let e = parse_allow_cidr(bad).unwrap_err();
            assert!(e.why.contains("no rule can allow"), "{bad}: {e}");
            // A deny rule over them is fine.
            assert!(bad.parse::<CidrRule>().is_ok(), "{bad}");
        }
        for good in [
            "10.0.0.0/8",
            "198.51.100.0/24:443",
            "169.255.0.0/16",
            "2001:db8::/32",
            "fd00::/16",
            "fd00:ec2::/32",
            "100.64.0.0/10",
            "100.100.100.0/31",
            // Wider networks including them: accepted; they stay refused
            // per request (tests/tests/proxy/addresses.rs).
            "169.0.0.0/8",
            "0.0.0.0/0",
            "::/0",
            "64:ff9b::/96",
        ] {
            assert!(parse_allow_cidr(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn cidr_rule_syntax() {
        let r: CidrRule = "[2001:db8::/32]:443".parse().unwrap();
        assert_eq!(r.port, Some(443));
        let r: CidrRule = "10.0.0.0/8:5432".parse().unwrap();
        assert_eq!(r.port, Some(5432));
        let r: CidrRule = "2001:db8::/32".parse().unwrap();
        assert_eq!(r.port, None);
        let r: CidrRule = "198.51.100.7".parse().unwrap();
        assert_eq!(r.net.prefix_len(), 32);
        let e = "10.0.0.1/8".parse::<CidrRule>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "--allow-cidr \"10.0.0.1/8\": host bits are set: the network is 10.0.0.0/8 \
             (or give the host alone: 10.0.0.1)"
        );
        let e = "[2001:db8::1/32]:443".parse::<CidrRule>().unwrap_err();
        assert!(e.why.contains("[2001:db8::/32]:443"), "{e}");
        let e = "10.0.0.1/8:5432".parse::<CidrRule>().unwrap_err();
        assert!(e.why.contains("10.0.0.0/8:5432"), "{e}");
        for bad in [
            "10.0.0.0/33",
            "banana",
            "10.0.0.0/8:0",
            "[::1]x",
            "10.0.0.0/8:99999",
        ] {
            assert!(bad.parse::<CidrRule>().is_err(), "{bad}");
        }
    }
}
