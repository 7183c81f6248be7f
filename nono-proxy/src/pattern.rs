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

/// Why a host name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Nothing at all.
    #[error("empty host name")]
    Empty,
    /// Empty labels, bad characters, a label too long.
    #[error("{0:?} is not a valid host name")]
    Invalid(String),
    /// IDNA (UTS 46) refused it.
    #[error("{0:?} is not a valid host name (IDNA)")]
    Idna(String),
    /// Over 253 octets once in ASCII.
    #[error("{0:?} is longer than 253 characters")]
    TooLong(String),
    /// The last label is all digits (resolvers would read an IPv4 address).
    #[error("{0:?} looks like an IP address, not a host name")]
    Numeric(String),
}

/// Why a domain pattern (`--allow-domain`, `--deny-domain`) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// `:PORT` is not a number.
    #[error("pattern {pattern:?}: bad port {port:?}")]
    BadPort {
        /// The pattern as written.
        pattern: String,
        /// The text after the last `:`.
        port: String,
    },
    /// `:0`.
    #[error("pattern {0:?}: port 0")]
    PortZero(String),
    /// `*` anywhere but as the whole first label.
    #[error("pattern {0:?}: '*' is only allowed as a whole first label (\"*.example.com\")")]
    Wildcard(String),
    /// `*.SUFFIX` where SUFFIX is a public suffix (`com`, `co.uk`,
    /// `github.io`) or a top-level label: an allow rule would let through
    /// names anyone can register.
    #[error(
        "pattern {pattern:?}: {suffix:?} is a public suffix, so this would allow names anyone can register; \
         name a registrable domain (\"*.example.{suffix}\") or the exact hosts"
    )]
    PublicSuffix {
        /// The pattern as written.
        pattern: String,
        /// The suffix after `*.`.
        suffix: String,
    },
    /// An allow rule `*.SUFFIX` where the Public Suffix List has the
    /// wildcard rule `*.SUFFIX`: every name one label down is a public
    /// suffix.
    #[error(
        "pattern {pattern:?}: every name directly under {suffix:?} is a public suffix (the Public Suffix List's rule \"*.{suffix}\"), \
         so this would allow names anyone can register; name a registrable domain (\"*.example.NAME.{suffix}\") or the exact hosts"
    )]
    PublicSuffixWildcard {
        /// The pattern as written.
        pattern: String,
        /// The suffix after `*.`.
        suffix: String,
    },
    /// The host part is not a host name.
    #[error("pattern {pattern:?}: {error}")]
    Host {
        /// The pattern as written.
        pattern: String,
        /// Why the host part was refused.
        error: NameError,
    },
}

/// Where a rule was written, so events and messages can point at it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag; also what parsing a rule from text gives, until
    /// the caller says otherwise ([`DomainRule::with_origin`]).
    #[default]
    CommandLine,
    /// A profile file.
    Profile {
        /// The file as its loader names it.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column (characters).
        column: usize,
    },
    /// The host configuration (`/etc/nono-agent/config.toml`): fleet-wide
    /// rules no profile or flag can lift.
    HostConfig {
        /// The file.
        file: String,
        /// 1-based line.
        line: usize,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CommandLine => f.write_str("command line"),
            Self::Profile { file, line, column } => write!(f, "{file}:{line}:{column}"),
            Self::HostConfig { file, line } => write!(f, "host config {file}:{line}"),
        }
    }
}

/// Normalises a host name: IDNA to ASCII, lower case, at most one trailing
/// dot removed; then checks it is a valid host name (LDH labels of 1 to 63
/// octets, 253 in all, not all-numeric in the last label, which resolvers
/// would read as an IPv4 address such as `127.1`).
pub fn normalize_host(raw: &str) -> Result<String, NameError> {
    if raw.is_empty() {
        return Err(NameError::Empty);
    }
    let trimmed = raw.strip_suffix('.').unwrap_or(raw);
    if trimmed.is_empty() || trimmed.ends_with('.') {
        return Err(NameError::Invalid(raw.to_string()));
    }
    let ascii =
        idna::domain_to_ascii_strict(trimmed).map_err(|_| NameError::Idna(raw.to_string()))?;
    if ascii.len() > 253 {
        return Err(NameError::TooLong(raw.to_string()));
    }
    let labels: Vec<&str> = ascii.split('.').collect();
    for l in &labels {
        let ok_len = !l.is_empty() && l.len() <= 63;
        let ok_chars = l
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
        if !ok_len || !ok_chars || l.starts_with('-') || l.ends_with('-') {
            return Err(NameError::Invalid(raw.to_string()));
        }
    }
    if labels
        .last()
        .is_some_and(|l| l.bytes().all(|c| c.is_ascii_digit()))
    {
        return Err(NameError::Numeric(raw.to_string()));
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

impl HostPattern {
    /// Whether the (normalised) `host` is this name, or for `*.suffix` a
    /// name below the suffix (never the suffix itself).
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(h) => h == host,
            Self::Subdomains(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
        }
    }
}

/// A domain rule: `example.com`, `*.example.com`, either with `:port`.
/// Equal rules are the same text: where each was written does not count.
#[derive(Debug, Clone, Eq)]
pub struct DomainRule {
    /// The rule as the user wrote it (for error messages and events).
    pub text: String,
    /// Host part.
    pub host: HostPattern,
    /// Port; `None` means the defaults 80 and 443.
    pub port: Option<u16>,
    /// Where it was written.
    pub origin: Origin,
}

/// Ports allowed when a rule names none.
pub const DEFAULT_PORTS: [u16; 2] = [80, 443];

impl FromStr for DomainRule {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.to_string();
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => {
                let port: u16 = p.parse().map_err(|_| RuleError::BadPort {
                    pattern: text.clone(),
                    port: p.to_string(),
                })?;
                if port == 0 {
                    return Err(RuleError::PortZero(text));
                }
                (h, Some(port))
            }
            None => (s, None),
        };
        let host_error = |error| RuleError::Host {
            pattern: s.to_string(),
            error,
        };
        let host = if let Some(suffix) = host.strip_prefix("*.") {
            HostPattern::Subdomains(normalize_host(suffix).map_err(host_error)?)
        } else if host.contains('*') {
            return Err(RuleError::Wildcard(text));
        } else {
            HostPattern::Exact(normalize_host(host).map_err(host_error)?)
        };
        Ok(Self {
            text,
            host,
            port,
            origin: Origin::CommandLine,
        })
    }
}

impl PartialEq for DomainRule {
    fn eq(&self, other: &Self) -> bool {
        (&self.text, &self.host, self.port) == (&other.text, &other.host, other.port)
    }
}

/// Parses an allow rule (`--allow-domain`, `allow_domains`): a pattern as
/// [`DomainRule::from_str`] takes it, refused if it is a wildcard over a
/// public suffix ([`DomainRule::check_allowable`]). Deny rules take any
/// pattern: denying `*.com` only ever takes access away.
pub fn parse_allow(s: &str) -> Result<DomainRule, RuleError> {
    let r: DomainRule = s.parse()?;
    r.check_allowable()?;
    Ok(r)
}

/// Whether `name` (normalised) is a public suffix the Public Suffix List
/// names (its ICANN or private section: `com`, `co.uk`, `github.io`). A
/// top-level label the list does not know (`internal`, `corp`, `test`) is
/// taken for a private namespace, as fleets use them (`*.corp`), even
/// though the list's implicit rule would call it public.
pub fn is_public_suffix(name: &str) -> bool {
    psl::suffix(name.as_bytes()).is_some_and(|s| s.is_known() && s.as_bytes() == name.as_bytes())
}

/// Whether the list makes every name directly under `name` a public
/// suffix (a wildcard rule `*.NAME`, as for `np`, `kawasaki.jp` or
/// `compute.amazonaws.com`): `name` itself is then not a public suffix,
/// but `*.NAME` covers as much as `*.com` does. Asked of a label no
/// exception rule names (exceptions such as `!www.ck` are registrable
/// names, which an exact rule or a narrower wildcard can name).
pub fn names_below_are_public(name: &str) -> bool {
    is_public_suffix(&format!("nono-probe-label.{name}"))
}

impl DomainRule {
    /// Refuses `*.SUFFIX` over a public suffix (`*.com`, `*.co.uk`,
    /// `*.github.io`, `*.test`): as an allow rule it would let a sandbox
    /// reach any name under it, including one its author registered to
    /// receive what the sandbox sends.
    pub fn check_allowable(&self) -> Result<(), RuleError> {
        match &self.host {
            HostPattern::Subdomains(suffix) if is_public_suffix(suffix) => {
                Err(RuleError::PublicSuffix {
                    pattern: self.text.clone(),
                    suffix: suffix.clone(),
                })
            }
            HostPattern::Subdomains(suffix) if names_below_are_public(suffix) => {
                Err(RuleError::PublicSuffixWildcard {
                    pattern: self.text.clone(),
                    suffix: suffix.clone(),
                })
            }
            _ => Ok(()),
        }
    }

    /// The same rule, said to come from `origin`.
    pub fn with_origin(self, origin: Origin) -> Self {
        Self { origin, ..self }
    }

    /// Whether `host` (already normalised) on `port` matches.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        self.ports().contains(&port) && self.matches_host(host)
    }

    /// Whether `host` (already normalised) matches, on whatever port.
    pub fn matches_host(&self, host: &str) -> bool {
        self.host.matches(host)
    }

    /// The ports the rule allows.
    pub fn ports(&self) -> &[u16] {
        match &self.port {
            Some(p) => std::slice::from_ref(p),
            None => &DEFAULT_PORTS,
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
    fn wildcards_over_public_suffixes_are_not_allowable() {
        for bad in [
            "*.com",
            "*.co.uk",
            "*.CO.UK",
            "*.github.io",
            "*.com:8443",
            // Under a wildcard rule of the list (`*.np`, `*.kawasaki.jp`,
            // `*.compute.amazonaws.com`) every name one label down is a
            // public suffix itself: anyone can get a name there.
            "*.np",
            "*.ck",
            "*.kawasaki.jp",
            "*.compute.amazonaws.com",
        ] {
            let e = parse_allow(bad).unwrap_err();
            assert!(
                matches!(
                    e,
                    RuleError::PublicSuffix { .. } | RuleError::PublicSuffixWildcard { .. }
                ),
                "{bad:?}: {e}"
            );
            assert!(e.to_string().contains("public suffix"), "{e}");
            // As a deny rule it only takes access away: accepted.
            assert!(bad.parse::<DomainRule>().is_ok(), "{bad:?}");
        }
        assert_eq!(
            parse_allow("*.co.uk").unwrap_err().to_string(),
            "pattern \"*.co.uk\": \"co.uk\" is a public suffix, so this would allow names \
             anyone can register; name a registrable domain (\"*.example.co.uk\") or the exact hosts"
        );
        for good in [
            "*.example.com",
            "*.example.co.uk",
            "*.me.github.io",
            // Registrable under those wildcard rules.
            "*.example.com.np",
            "*.www.ck",
            "*.city.kawasaki.jp",
            "*.allowed.test",
            // Top-level labels the list does not know: private namespaces.
            "*.test",
            "*.internal",
            "*.corp",
            "com",
            "co.uk",
            "example.com",
        ] {
            assert!(parse_allow(good).is_ok(), "{good:?}");
        }
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
