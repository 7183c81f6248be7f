//! What the proxy may connect to: domain rules before any DNS query, then
//! address rules on every resolved address.

use ipnet::IpNet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use super::pattern::{normalize_host, DomainRule, NameError};

/// `--allow-cidr NET[:PORT]`: IP literals and resolved addresses in NET are
/// allowed (on PORT, or on any port when none is given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrRule {
    /// As written.
    pub text: String,
    /// The network.
    pub net: IpNet,
    /// The port, if restricted.
    pub port: Option<u16>,
}

impl FromStr for CidrRule {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // "[2001:db8::/32]:443", "10.0.0.0/8:5432", "10.0.0.0/8", "2001:db8::/32"
        let bad = |why: &str| NameError(format!("--allow-cidr {s:?}: {why}"));
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
        Ok(Self {
            text: s.to_string(),
            net: net.trunc(),
            port,
        })
    }
}

/// A refusal, with the rule or range that caused it (sent to the client in
/// the 403 body and recorded in events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
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
            .map_err(|e| Refusal(format!("invalid host: {e}")))
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
}

impl ProxyPolicy {
    /// Judges the request target before anything is resolved. Returns the
    /// rule that allows it.
    pub fn check_target(&self, target: &Target, port: u16) -> Result<String, Refusal> {
        match target {
            Target::Ip(ip) => {
                let ip = canonical(*ip);
                match self.cidr_for(ip, port) {
                    Some(rule) => {
                        check_always_blocked(ip)?;
                        Ok(format!("allow-cidr {rule}"))
                    }
                    None => Err(Refusal(format!(
                        "IP address {ip} is not allowed: no --allow-cidr rule covers {ip} port {port}"
                    ))),
                }
            }
            Target::Name(name) => {
                if let Some(r) = self.deny.iter().find(|r| r.matches(name, port)) {
                    return Err(Refusal(format!(
                        "{name}:{port} is denied by rule deny-domain {}",
                        r.text
                    )));
                }
                match self.allow.iter().find(|r| r.matches(name, port)) {
                    Some(r) => Ok(format!("allow-domain {}", r.text)),
                    None => Err(Refusal(format!(
                        "{name}:{port} is not allowed by any allow-domain rule"
                    ))),
                }
            }
        }
    }

    /// Judges one resolved address of an allowed name.
    pub fn check_resolved(&self, ip: IpAddr, port: u16) -> Result<(), Refusal> {
        let ip = canonical(ip);
        check_always_blocked(ip)?;
        if let Some(range) = private_range(ip) {
            if self.cidr_for(ip, port).is_none() {
                return Err(Refusal(format!(
                    "resolved address {ip} is in {range}; add --allow-cidr to reach it"
                )));
            }
        }
        Ok(())
    }

    fn cidr_for(&self, ip: IpAddr, port: u16) -> Option<&str> {
        self.cidrs
            .iter()
            .find(|c| c.net.contains(&ip) && c.port.is_none_or(|p| p == port))
            .map(|c| c.text.as_str())
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
        Some(w) => Err(Refusal(format!("address {ip} is refused: {w}"))),
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
        }
    }

    fn name(s: &str) -> Target {
        Target::parse(s).unwrap()
    }

    #[test]
    fn deny_beats_allow() {
        let p = policy(&["*.allowed.test"], &["bad.allowed.test"], &[]);
        assert!(p.check_target(&name("ok.allowed.test"), 443).is_ok());
        let e = p.check_target(&name("BAD.allowed.test."), 443).unwrap_err();
        assert!(e.0.contains("deny-domain bad.allowed.test"), "{e}");
        assert!(p.check_target(&name("allowed.test"), 443).is_err());
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
    fn cidr_rule_syntax() {
        let r: CidrRule = "[2001:db8::/32]:443".parse().unwrap();
        assert_eq!(r.port, Some(443));
        let r: CidrRule = "10.0.0.0/8:5432".parse().unwrap();
        assert_eq!(r.port, Some(5432));
        let r: CidrRule = "2001:db8::/32".parse().unwrap();
        assert_eq!(r.port, None);
        let r: CidrRule = "198.51.100.7".parse().unwrap();
        assert_eq!(r.net.prefix_len(), 32);
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
