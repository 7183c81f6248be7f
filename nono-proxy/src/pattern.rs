//! Host names and the domain patterns that allow or deny them.
//!
//! Every name is normalised the same way before it is compared: IDNA (UTS 46,
//! strict STD3 rules) to its ASCII/punycode form, which also lower-cases;
//! then one trailing dot is removed. Anything that is not then a valid DNS
//! host name is refused, so tricks such as `EVIL.test.`, `ｅｖｉｌ.test`
//! (full-width letters) or `a..b` all end up either as the canonical name or
//! as an error, never as a third spelling that a rule fails to see.

use std::fmt;
use std::str::FromStr;

/// Why a host name or pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameError(pub String);

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NameError {}

fn err(msg: impl Into<String>) -> NameError {
    NameError(msg.into())
}

/// Normalises a host name: IDNA to ASCII, lower case, at most one trailing
/// dot removed; then checks it is a valid host name (LDH labels of 1 to 63
/// octets, 253 in all, not all-numeric in the last label, which resolvers
/// would read as an IPv4 address such as `127.1`).
pub fn normalize_host(raw: &str) -> Result<String, NameError> {
    if raw.is_empty() {
        return Err(err("empty host name"));
    }
    let trimmed = raw.strip_suffix('.').unwrap_or(raw);
    if trimmed.is_empty() || trimmed.ends_with('.') {
        return Err(err(format!("{raw:?} is not a valid host name")));
    }
    let ascii = idna::domain_to_ascii_strict(trimmed)
        .map_err(|_| err(format!("{raw:?} is not a valid host name (IDNA)")))?;
    if ascii.len() > 253 {
        return Err(err(format!("{raw:?} is longer than 253 characters")));
    }
    let labels: Vec<&str> = ascii.split('.').collect();
    for l in &labels {
        let ok_len = !l.is_empty() && l.len() <= 63;
        let ok_chars = l
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
        if !ok_len || !ok_chars || l.starts_with('-') || l.ends_with('-') {
            return Err(err(format!("{raw:?} is not a valid host name")));
        }
    }
    if labels
        .last()
        .is_some_and(|l| l.bytes().all(|c| c.is_ascii_digit()))
    {
        return Err(err(format!(
            "{raw:?} looks like an IP address, not a host name"
        )));
    }
    Ok(ascii)
}

/// The host part of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Exactly this (normalised) name.
    Exact(String),
    /// Any name ending in `.` + this suffix; the suffix itself (the apex) is
    /// not matched.
    Subdomains(String),
}

/// A domain rule: `example.com`, `*.example.com`, either with `:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainRule {
    /// The rule as the user wrote it (for error messages and events).
    pub text: String,
    /// Host part.
    pub host: HostPattern,
    /// Port; `None` means the defaults 80 and 443.
    pub port: Option<u16>,
}

/// Ports allowed when a rule names none.
pub const DEFAULT_PORTS: [u16; 2] = [80, 443];

impl FromStr for DomainRule {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.to_string();
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => {
                let port: u16 = p
                    .parse()
                    .map_err(|_| err(format!("pattern {s:?}: bad port {p:?}")))?;
                if port == 0 {
                    return Err(err(format!("pattern {s:?}: port 0")));
                }
                (h, Some(port))
            }
            None => (s, None),
        };
        let host = if let Some(suffix) = host.strip_prefix("*.") {
            HostPattern::Subdomains(
                normalize_host(suffix).map_err(|e| err(format!("pattern {s:?}: {e}")))?,
            )
        } else if host.contains('*') {
            return Err(err(format!(
                "pattern {s:?}: '*' is only allowed as a whole first label (\"*.example.com\")"
            )));
        } else {
            HostPattern::Exact(
                normalize_host(host).map_err(|e| err(format!("pattern {s:?}: {e}")))?,
            )
        };
        Ok(Self { text, host, port })
    }
}

impl DomainRule {
    /// Whether `host` (already normalised) on `port` matches.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        let port_ok = match self.port {
            Some(p) => p == port,
            None => DEFAULT_PORTS.contains(&port),
        };
        port_ok
            && match &self.host {
                HostPattern::Exact(h) => h == host,
                HostPattern::Subdomains(suffix) => host
                    .strip_suffix(suffix.as_str())
                    .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> DomainRule {
        s.parse().unwrap()
    }

    #[test]
    fn normalization() {
        assert_eq!(normalize_host("Example.COM.").unwrap(), "example.com");
        assert_eq!(
            normalize_host("bücher.example").unwrap(),
            "xn--bcher-kva.example"
        );
        assert_eq!(normalize_host("ＥＸＡＭＰＬＥ.com").unwrap(), "example.com");
        for bad in [
            "",
            ".",
            "a..b",
            "example.com..",
            "-a.com",
            "a-.com",
            "a_b.com",
            "a b.com",
            "127.1",
            "1.2.3.4",
            "0x7f.1",
            "exa%6dple.com",
        ] {
            assert!(normalize_host(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(normalize_host(&"a".repeat(64)).is_err());
    }

    #[test]
    fn exact_and_wildcard() {
        let exact = rule("allowed.test");
        assert!(exact.matches("allowed.test", 443));
        assert!(exact.matches("allowed.test", 80));
        assert!(!exact.matches("allowed.test", 8443));
        assert!(!exact.matches("sub.allowed.test", 443));
        assert!(!exact.matches("evilallowed.test", 443));
        assert!(!exact.matches("allowed.test.evil.test", 443));

        let wild = rule("*.allowed.test");
        assert!(wild.matches("a.allowed.test", 443));
        assert!(wild.matches("a.b.allowed.test", 443));
        assert!(!wild.matches("allowed.test", 443));
        assert!(!wild.matches("evilallowed.test", 443));
        assert!(!wild.matches(".allowed.test", 443));
    }

    #[test]
    fn ports() {
        let r = rule("*.allowed.test:8443");
        assert!(r.matches("x.allowed.test", 8443));
        assert!(!r.matches("x.allowed.test", 443));
        assert!("a.test:0".parse::<DomainRule>().is_err());
        assert!("a.test:99999".parse::<DomainRule>().is_err());
        assert!("a.test:x".parse::<DomainRule>().is_err());
    }

    #[test]
    fn bad_patterns() {
        for bad in [
            "*",
            "*.",
            "**.a.test",
            "a.*.test",
            "*a.test",
            "a*.test",
            "",
            "xn--.test",
        ] {
            assert!(
                bad.parse::<DomainRule>().is_err(),
                "{bad:?} should be refused"
            );
        }
        assert_eq!(
            rule("*.Bücher.Example").host,
            HostPattern::Subdomains("xn--bcher-kva.example".into())
        );
    }
}
