//! What a credential is: the host it is injected for, the header it goes
//! in, and where the agent reads the real value. Pure parsing and checks,
//! shared by `--credential` and a profile's `[[credentials]]`, so both
//! refuse the same input with the same words.
//!
//! The real value is a [`Secret`]: its `Debug` and `Display` never show it,
//! so no error, event or log line built from these types can leak it.

use hyper::header::{HeaderName, HeaderValue};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use crate::pattern::normalize_host;

/// Why a credential's description (not its value) is refused. The texts
/// name the part that is wrong; none contains a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// The `--credential` text is not `HOST[:PORT]:HEADER=env:NAME|file:PATH`.
    #[error("{0:?}: expected HOST[:PORT]:HEADER=env:NAME or HOST[:PORT]:HEADER=file:PATH (options after it: ;format=Bearer {{}} ;env=NAME)")]
    Syntax(String),
    /// The host is not a host name (IP literals and wildcards are refused:
    /// the sandbox's CA is constrained to the exact names).
    #[error("credential host {0:?}: {1}")]
    Host(String, String),
    /// The port is not 1 to 65535.
    #[error("credential host {0:?}: bad port")]
    Port(String),
    /// The header is not an HTTP header name, or is one the proxy must own.
    #[error("credential header {0:?}: {1}")]
    Header(String, String),
    /// `format` does not hold exactly one `{}`, or holds characters a header
    /// value cannot.
    #[error("credential format {0:?}: {1}")]
    Format(String, String),
    /// The source is neither `env:NAME` nor `file:PATH`.
    #[error("credential source {0:?}: expected env:NAME or file:PATH")]
    Source(String),
    /// An environment variable name that cannot be one.
    #[error("{0:?} is not an environment variable name")]
    EnvName(String),
    /// An option after `;` that is not `format=` or `env=`.
    #[error("credential option {0:?}: expected format=... or env=NAME")]
    Option(String),
}

/// Why the real value could not be had. Names the variable or file, never
/// the value.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    /// The variable is not set (or not UTF-8).
    #[error("credential for {host}: environment variable {name} is not set")]
    EnvMissing {
        /// The credential's host.
        host: String,
        /// The variable.
        name: String,
    },
    /// The file could not be read.
    #[error("credential for {host}: reading {}", .path.display())]
    File {
        /// The credential's host.
        host: String,
        /// The file.
        path: PathBuf,
        /// The system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The value is empty, or holds a byte a header value cannot (control
    /// characters, non-ASCII): say where it came from, not what it is.
    #[error("credential for {host}: the value from {source_label} {why}")]
    Unusable {
        /// The credential's host.
        host: String,
        /// `environment variable NAME` or `file PATH`.
        source_label: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// Where the agent reads the real value (once, at start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An environment variable of the agent (removed from the child's).
    Env(String),
    /// A file the agent can read (the sandbox should not be able to: the
    /// profile's filesystem rules decide that).
    File(PathBuf),
}

impl Source {
    /// `env:NAME` or `file:PATH`, as written; the credential's name in
    /// events.
    pub fn label(&self) -> String {
        match self {
            Self::Env(n) => format!("env:{n}"),
            Self::File(p) => format!("file:{}", p.display()),
        }
    }
}

impl FromStr for Source {
    type Err = CredentialError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(n) = s.strip_prefix("env:") {
            return Ok(Self::Env(env_name(n)?));
        }
        match s.strip_prefix("file:") {
            Some(p) if !p.is_empty() => Ok(Self::File(PathBuf::from(p))),
            _ => Err(CredentialError::Source(s.to_string())),
        }
    }
}

/// A credential as described (profile entry or flag), before its value is
/// read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialSpec {
    /// Normalised host name (exact: no wildcard, no IP literal).
    pub host: String,
    /// The CONNECT port it applies to (default 443).
    pub port: u16,
    /// The header the value is put in (lower case).
    pub header: HeaderName,
    /// How the value is written in the header: `{}` is the value.
    pub format: String,
    /// Where the real value is read.
    pub source: Source,
    /// The variable the sandbox gets, holding the placeholder.
    pub env: Option<String>,
}

/// Parses `HOST[:PORT]`: a host name, not an IP literal or a pattern.
pub fn parse_host(s: &str) -> Result<(String, u16), CredentialError> {
    let (name, port) = match s.rsplit_once(':') {
        Some((n, p)) if !n.contains(':') => {
            let port = match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(CredentialError::Port(s.to_string())),
                Ok(p) => p,
            };
            (n, port)
        }
        Some(_) => {
            return Err(CredentialError::Host(
                s.to_string(),
                "an IP literal; credentials are for host names".into(),
            ))
        }
        None => (s, 443),
    };
    if name.contains('*') {
        return Err(CredentialError::Host(
            s.to_string(),
            "a wildcard; name each host exactly".into(),
        ));
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Err(CredentialError::Host(
            s.to_string(),
            "an IP literal; credentials are for host names".into(),
        ));
    }
    let host =
        normalize_host(name).map_err(|e| CredentialError::Host(s.to_string(), e.to_string()))?;
    Ok((host, port))
}

/// Headers the proxy itself must control: framing, routing and hop-by-hop
/// headers (a credential there would break the exchange or redirect it).
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-authorization",
    "proxy-connection",
];

/// Parses a header name for a credential.
pub fn parse_header(s: &str) -> Result<HeaderName, CredentialError> {
    let h = HeaderName::from_bytes(s.as_bytes())
        .map_err(|_| CredentialError::Header(s.to_string(), "not an HTTP header name".into()))?;
    if RESERVED_HEADERS.contains(&h.as_str()) {
        return Err(CredentialError::Header(
            s.to_string(),
            "the proxy sets this header itself".into(),
        ));
    }
    Ok(h)
}

/// Checks a `format`: exactly one `{}`, and the rest printable ASCII.
pub fn parse_format(s: &str) -> Result<String, CredentialError> {
    if s.matches("{}").count() != 1 {
        return Err(CredentialError::Format(
            s.to_string(),
            "must contain {} exactly once (where the value goes)".into(),
        ));
    }
    if !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(CredentialError::Format(
            s.to_string(),
            "only printable ASCII can go in a header".into(),
        ));
    }
    Ok(s.to_string())
}

/// Checks an environment variable name.
pub fn env_name(s: &str) -> Result<String, CredentialError> {
    if s.is_empty() || s.contains(['=', '\0']) {
        return Err(CredentialError::EnvName(s.to_string()));
    }
    Ok(s.to_string())
}

impl FromStr for CredentialSpec {
    type Err = CredentialError;
    /// `HOST[:PORT]:HEADER=env:NAME` or `=file:PATH`, then options
    /// `;format=...` and `;env=NAME`. From `env:NAME`, the sandbox's
    /// variable defaults to NAME itself (holding the placeholder), so SDKs
    /// that insist on their variable start; `;env=` (empty) gives none.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || CredentialError::Syntax(s.to_string());
        let (target, rest) = s.split_once('=').ok_or_else(syntax)?;
        let (host_port, header) = target.rsplit_once(':').ok_or_else(syntax)?;
        let (host, port) = parse_host(host_port)?;
        let header = parse_header(header)?;
        let mut parts = rest.split(';');
        let source: Source = parts.next().ok_or_else(syntax)?.parse()?;
        let mut env = match &source {
            Source::Env(n) => Some(n.clone()),
            Source::File(_) => None,
        };
        let mut format = "{}".to_string();
        for opt in parts {
            if let Some(f) = opt.strip_prefix("format=") {
                format = parse_format(f)?;
            } else if let Some(e) = opt.strip_prefix("env=") {
                env = if e.is_empty() {
                    None
                } else {
                    Some(env_name(e)?)
                };
            } else {
                return Err(CredentialError::Option(opt.to_string()));
            }
        }
        Ok(Self {
            host,
            port,
            header,
            format,
            source,
            env,
        })
    }
}

/// A real credential value. Never printed: `Debug` and `Display` show
/// `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a value (checked by [`read_value`] or the caller).
    pub fn new(v: impl Into<Arc<str>>) -> Self {
        Self(v.into())
    }

    /// The value, for the one place that puts it in a header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A credential ready for the proxy: the spec, the real value and the
/// sandbox's placeholder.
#[derive(Debug, Clone)]
pub struct Credential {
    /// What was described.
    pub spec: CredentialSpec,
    /// The real value (read once by the agent).
    pub value: Secret,
    /// What the sandbox holds instead (`nono-placeholder-<32 hex>`).
    pub placeholder: String,
    /// The header value sent upstream (`format` with the value).
    header_value: HeaderValue,
}

impl Credential {
    /// Builds the credential, checking that `format` with `value` is a valid
    /// header value (the error names the source, never the value).
    pub fn new(
        spec: CredentialSpec,
        value: Secret,
        placeholder: String,
    ) -> Result<Self, ValueError> {
        let unusable = |why| ValueError::Unusable {
            host: spec.host.clone(),
            source_label: source_words(&spec.source),
            why,
        };
        if value.expose().is_empty() {
            return Err(unusable("is empty"));
        }
        if !value.expose().bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Err(unusable(
                "holds spaces, control characters or non-ASCII, which a header cannot carry",
            ));
        }
        let mut header_value =
            HeaderValue::from_str(&spec.format.replacen("{}", value.expose(), 1))
                .map_err(|_| unusable("does not make a valid header value"))?;
        // HTTP/2: never put it in the HPACK dynamic table.
        header_value.set_sensitive(true);
        Ok(Self {
            spec,
            value,
            placeholder,
            header_value,
        })
    }

    /// The header value sent upstream (marked sensitive).
    pub fn header_value(&self) -> &HeaderValue {
        &self.header_value
    }

    /// The credential's name in events: its source (`env:NAME`,
    /// `file:PATH`), never its value.
    pub fn name(&self) -> String {
        self.spec.source.label()
    }
}

fn source_words(s: &Source) -> String {
    match s {
        Source::Env(n) => format!("environment variable {n}"),
        Source::File(p) => format!("file {}", p.display()),
    }
}

/// Reads the real value of `spec` from the agent's environment (`env`
/// looks a variable up) or a file. A file's trailing newline is dropped.
pub fn read_value(
    spec: &CredentialSpec,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Secret, ValueError> {
    match &spec.source {
        Source::Env(name) => env(name)
            .map(Secret::new)
            .ok_or_else(|| ValueError::EnvMissing {
                host: spec.host.clone(),
                name: name.clone(),
            }),
        Source::File(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ValueError::File {
                host: spec.host.clone(),
                path: path.clone(),
                source,
            })?;
            let v = text.strip_suffix('\n').unwrap_or(&text);
            let v = v.strip_suffix('\r').unwrap_or(v);
            Ok(Secret::new(v))
        }
    }
}

/// A fresh placeholder: `nono-placeholder-` and 128 random bits in hex.
pub fn new_placeholder() -> Result<String, std::io::Error> {
    use std::io::Read as _;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!("nono-placeholder-{hex}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_syntax() {
        let c: CredentialSpec = "API.Anthropic.com:X-Api-Key=env:ANTHROPIC_API_KEY"
            .parse()
            .unwrap();
        assert_eq!(c.host, "api.anthropic.com");
        assert_eq!(c.port, 443);
        assert_eq!(c.header.as_str(), "x-api-key");
        assert_eq!(c.format, "{}");
        assert_eq!(c.source, Source::Env("ANTHROPIC_API_KEY".into()));
        assert_eq!(c.env.as_deref(), Some("ANTHROPIC_API_KEY"));

        let c: CredentialSpec =
            "api.openai.com:8443:authorization=file:/run/k;format=Bearer {};env=OPENAI_API_KEY"
                .parse()
                .unwrap();
        assert_eq!(c.port, 8443);
        assert_eq!(c.format, "Bearer {}");
        assert_eq!(c.source, Source::File("/run/k".into()));
        assert_eq!(c.env.as_deref(), Some("OPENAI_API_KEY"));

        let c: CredentialSpec = "a.test:x-k=env:K;env=".parse().unwrap();
        assert_eq!(c.env, None);
    }

    #[test]
    fn bad_flags_name_the_problem() {
        for (text, want) in [
            ("a.test=env:K", "expected HOST[:PORT]:HEADER"),
            ("a.test:x-k", "expected HOST[:PORT]:HEADER"),
            ("*.a.test:x-k=env:K", "wildcard"),
            ("198.51.100.1:x-k=env:K", "IP literal"),
            ("a.test:0:x-k=env:K", "bad port"),
            ("a.test:host=env:K", "sets this header itself"),
            ("a.test:bad header=env:K", "not an HTTP header name"),
            ("a.test:x-k=vault:K", "expected env:NAME or file:PATH"),
            ("a.test:x-k=env:", "not an environment variable name"),
            ("a.test:x-k=env:K;format=Bearer", "exactly once"),
            ("a.test:x-k=env:K;format={}{}", "exactly once"),
            ("a.test:x-k=env:K;colour=red", "expected format"),
            ("a..test:x-k=env:K", "credential host"),
        ] {
            let e = text.parse::<CredentialSpec>().unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn values_are_checked_and_never_shown() {
        let spec: CredentialSpec = "a.test:authorization=env:K;format=Bearer {}"
            .parse()
            .unwrap();
        let c = Credential::new(spec.clone(), Secret::new("sk-123"), "p".into()).unwrap();
        assert_eq!(c.header_value().to_str().unwrap(), "Bearer sk-123");
        assert!(c.header_value().is_sensitive());
        assert!(!format!("{c:?}").contains("sk-123"));
        assert_eq!(c.name(), "env:K");
        for bad in ["", "sk 1", "sk\r\n1", "sk\u{e9}"] {
            let e = Credential::new(spec.clone(), Secret::new(bad), "p".into()).unwrap_err();
            let text = e.to_string();
            assert!(text.contains("environment variable K"), "{text}");
        }
        let e = read_value(&spec, |_| None).unwrap_err().to_string();
        assert_eq!(
            e,
            "credential for a.test: environment variable K is not set"
        );
    }

    #[test]
    fn placeholders_are_fresh() {
        let a = new_placeholder().unwrap();
        let b = new_placeholder().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("nono-placeholder-") && a.len() == 17 + 32);
    }
}
