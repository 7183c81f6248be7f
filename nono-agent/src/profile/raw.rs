//! The file format: serde structures that mirror the TOML exactly
//! (`deny_unknown_fields` everywhere, so a misspelt key is an error rather
//! than a silently ignored rule), and their conversion to one [`Layer`].
//!
//! Values with their own syntax (domain patterns, CIDRs, pins, the upstream
//! URL, ports) are parsed *during* deserialisation, so that the TOML
//! parser attaches the value's span to the error. Paths are kept as
//! [`Spanned`] strings and expanded afterwards, since expansion needs the
//! [`ExpandContext`].

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use std::fmt;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::str::FromStr;
use toml::Spanned;

use super::{
    expand, EnvPolicy, ExpandContext, FsAccess, FsPolicy, Location, Loopback, ProfileError,
    Provenance,
};
use nono_proxy::mitm::credential::{self, CredentialError, CredentialSpec, Source};
use nono_proxy::{CidrRule, DomainRule, Origin, Pin, Upstream};

/// One profile file, parsed and expanded, before merging.
#[derive(Debug, Default)]
pub(super) struct Layer {
    /// The `extends` spec and where it was written.
    pub extends: Option<(String, Location)>,
    pub description: Option<String>,
    pub allow_domains: Vec<DomainRule>,
    pub deny_domains: Vec<DomainRule>,
    pub allow_cidrs: Vec<CidrRule>,
    pub loopback: Option<Loopback>,
    pub upstream_proxy: Option<Upstream>,
    pub transparent: Option<bool>,
    pub resolve: Vec<Pin>,
    pub allow_unix_sockets: Vec<PathBuf>,
    pub fs: FsPolicy,
    pub env: Option<EnvPolicy>,
    pub user: Option<String>,
    /// Where each filesystem rule and the `loopback` setting were written.
    pub origins: Provenance,
    /// `[[credentials]]`, each with where its table starts.
    pub credentials: Vec<(CredentialSpec, Location)>,
    /// `[network] upstream_ca`.
    pub upstream_ca: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the profile to be a table")]
struct RawProfile {
    extends: Option<Spanned<String>>,
    description: Option<String>,
    #[serde(default)]
    network: RawNetwork,
    #[serde(default)]
    filesystem: RawFilesystem,
    #[serde(default)]
    process: RawProcess,
    #[serde(default)]
    credentials: Vec<Spanned<RawCredential>>,
}

/// One `[[credentials]]` table. Each value is checked while deserialising
/// (so its error has its line and column); that exactly one source is
/// given is checked after, at the table's position.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a credential to be a table")]
struct RawCredential {
    host: Parsed<CredHost>,
    header: Parsed<CredHeader>,
    format: Option<Parsed<CredFormat>>,
    from_env: Option<EnvName>,
    from_file: Option<Spanned<String>>,
    env: Option<EnvName>,
}

/// `host = "api.example.com"` (or `"name:port"`): an exact host name.
#[derive(Debug)]
struct CredHost(String, u16);

impl FromStr for CredHost {
    type Err = CredentialError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        credential::parse_host(s).map(|(h, p)| Self(h, p))
    }
}

/// `header = "x-api-key"`.
#[derive(Debug)]
struct CredHeader(hyper::header::HeaderName);

impl FromStr for CredHeader {
    type Err = CredentialError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        credential::parse_header(s).map(Self)
    }
}

/// `format = "Bearer {}"`.
#[derive(Debug)]
struct CredFormat(String);

impl FromStr for CredFormat {
    type Err = CredentialError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        credential::parse_format(s).map(Self)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "network to be a table")]
struct RawNetwork {
    allow_domains: Vec<Spanned<Parsed<AllowDomain>>>,
    deny_domains: Vec<Spanned<Parsed<DomainRule>>>,
    allow_cidrs: Vec<Spanned<Parsed<AllowCidr>>>,
    loopback: Option<Spanned<Loopback>>,
    upstream_proxy: Option<Parsed<Upstream>>,
    transparent: Option<bool>,
    resolve: Vec<Parsed<Pin>>,
    allow_unix_sockets: Vec<Spanned<String>>,
    upstream_ca: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "filesystem to be a table")]
struct RawFilesystem {
    read: Vec<Spanned<String>>,
    write: Vec<Spanned<String>>,
    exec: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "process to be a table")]
struct RawProcess {
    env: Option<EnvPolicy>,
    user: Option<Spanned<String>>,
}

/// An allow rule: refused over a public suffix, as `--allow-domain` is.
#[derive(Debug)]
pub(crate) struct AllowDomain(DomainRule);

impl FromStr for AllowDomain {
    type Err = nono_proxy::pattern::RuleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        nono_proxy::parse_allow(s).map(Self)
    }
}

/// An allow-cidr rule: refused over link-local and metadata addresses, as
/// `--allow-cidr` is.
#[derive(Debug)]
pub(crate) struct AllowCidr(CidrRule);

impl FromStr for AllowCidr {
    type Err = nono_proxy::policy::CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        nono_proxy::parse_allow_cidr(s).map(Self)
    }
}

/// A string value parsed with `T::from_str` while deserialising, so that a
/// bad value's error carries its span. (The check must run inside the
/// visitor: the TOML deserializer attaches the value's span only to errors
/// raised while it is on the call stack.)
#[derive(Debug)]
pub(crate) struct Parsed<T>(pub(crate) T);

impl<'de, T> Deserialize<'de> for Parsed<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<T> Visitor<'_> for V<T>
        where
            T: FromStr,
            T::Err: fmt::Display,
        {
            type Value = Parsed<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Parsed<T>, E> {
                v.parse().map(Parsed).map_err(E::custom)
            }
        }
        d.deserialize_str(V(PhantomData))
    }
}

/// A TCP port, 1 to 65535.
struct Port(u16);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Port;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port (1 to 65535)")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Port, E> {
                match u16::try_from(n) {
                    Ok(p) if p != 0 => Ok(Port(p)),
                    _ => Err(E::custom(format!("{n} is not a port (1 to 65535)"))),
                }
            }
        }
        d.deserialize_i64(V)
    }
}

/// An environment variable name for `env = [...]`.
#[derive(Debug)]
struct EnvName(String);

impl<'de> Deserialize<'de> for EnvName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = EnvName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an environment variable name")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<EnvName, E> {
                if s.is_empty() || s.contains(['=', '\0']) {
                    return Err(E::custom(format!(
                        "{s:?} is not an environment variable name"
                    )));
                }
                Ok(EnvName(s.to_string()))
            }
        }
        d.deserialize_str(V)
    }
}

/// `"any"` or a list of ports.
impl<'de> Deserialize<'de> for Loopback {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Loopback;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"any\" or a list of ports")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Loopback, E> {
                match v {
                    "any" => Ok(Loopback::Any),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Loopback, A::Error> {
                let mut ports: Vec<u16> = Vec::new();
                while let Some(Port(p)) = seq.next_element()? {
                    if !ports.contains(&p) {
                        ports.push(p);
                    }
                }
                Ok(Loopback::Ports(ports))
            }
        }
        d.deserialize_any(V)
    }
}

/// `"inherit"`, `"clean"` or a list of variable names.
impl<'de> Deserialize<'de> for EnvPolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EnvPolicy;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"inherit\", \"clean\" or a list of variable names")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EnvPolicy, E> {
                match v {
                    "inherit" => Ok(EnvPolicy::Inherit),
                    "clean" => Ok(EnvPolicy::Clean),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<EnvPolicy, A::Error> {
                let mut names: Vec<String> = Vec::new();
                while let Some(EnvName(n)) = seq.next_element()? {
                    if !names.contains(&n) {
                        names.push(n);
                    }
                }
                Ok(EnvPolicy::PassThrough(names))
            }
        }
        d.deserialize_any(V)
    }
}

/// Byte offset to 1-based line and column (in characters).
pub(crate) fn location(text: &str, file: &str, offset: usize) -> Location {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Location {
        file: file.to_string(),
        line,
        column: before[line_start..].chars().count() + 1,
    }
}

/// Parses and expands one profile file. `file` names it in errors.
pub(super) fn parse(text: &str, file: &str, ctx: &ExpandContext) -> Result<Layer, ProfileError> {
    let raw: RawProfile = toml::from_str(text).map_err(|e| toml_error(text, file, &e))?;
    let at = |s: &Spanned<String>| location(text, file, s.span().start);
    let paths = |list: Vec<Spanned<String>>| -> Result<Vec<PathBuf>, ProfileError> {
        list.into_iter()
            .map(|s| expand::path(s.get_ref(), ctx, || at(&s)))
            .collect()
    };
    let extends = match raw.extends {
        Some(s) if s.get_ref().is_empty() => {
            return Err(ProfileError::Invalid {
                at: at(&s),
                message: "extends: empty profile name".into(),
            })
        }
        Some(s) => Some((s.get_ref().clone(), at(&s))),
        None => None,
    };
    let user = match raw.process.user {
        Some(u) if !valid_user(u.get_ref()) => {
            return Err(ProfileError::Invalid {
                at: at(&u),
                message: format!("{:?} is not a user name or uid", u.get_ref()),
            })
        }
        Some(u) => Some(u.into_inner()),
        None => None,
    };
    let mut credentials: Vec<(CredentialSpec, Location)> = Vec::new();
    for c in raw.credentials {
        let here = location(text, file, c.span().start);
        let c = c.into_inner();
        let source = match (c.from_env, c.from_file) {
            (Some(EnvName(n)), None) => Source::Env(n),
            (None, Some(f)) => Source::File(expand::path(f.get_ref(), ctx, || at(&f))?),
            (Some(_), Some(_)) | (None, None) => {
                return Err(ProfileError::Invalid {
                    at: here,
                    message: "a credential needs exactly one of from_env or from_file".into(),
                })
            }
        };
        let Parsed(CredHost(host, port)) = c.host;
        let spec = CredentialSpec {
            host,
            port,
            header: c.header.0 .0,
            format: c.format.map_or_else(|| "{}".to_string(), |f| f.0 .0),
            source,
            env: c.env.map(|EnvName(n)| n),
        };
        if let Some((_, first)) = credentials
            .iter()
            .find(|(o, _)| o.host == spec.host && o.port == spec.port && o.header == spec.header)
        {
            return Err(ProfileError::Invalid {
                at: here,
                message: format!(
                    "a second credential for {}:{} header {} (the first is at {first})",
                    spec.host, spec.port, spec.header
                ),
            });
        }
        credentials.push((spec, here));
    }
    let upstream_ca = match &raw.network.upstream_ca {
        Some(s) => Some(expand::path(s.get_ref(), ctx, || at(s))?),
        None => None,
    };
    let n = raw.network;
    let mut origins = Provenance::default();
    for (access, list) in [
        (FsAccess::Read, &raw.filesystem.read),
        (FsAccess::Write, &raw.filesystem.write),
        (FsAccess::Exec, &raw.filesystem.exec),
    ] {
        for s in list {
            let path = expand::path(s.get_ref(), ctx, || at(s))?;
            origins.fs.push((access, path, at(s)));
        }
    }
    let loopback = n.loopback.map(|l| {
        origins.loopback = Some(location(text, file, l.span().start));
        l.into_inner()
    });
    Ok(Layer {
        extends,
        description: raw.description,
        allow_domains: placed(n.allow_domains, text, file, |AllowDomain(r), o| {
            r.with_origin(o)
        }),
        deny_domains: placed(n.deny_domains, text, file, DomainRule::with_origin),
        allow_cidrs: placed(n.allow_cidrs, text, file, |AllowCidr(r), o| {
            r.with_origin(o)
        }),
        loopback,
        upstream_proxy: n.upstream_proxy.map(|Parsed(u)| u),
        transparent: n.transparent,
        resolve: values(n.resolve),
        allow_unix_sockets: paths(n.allow_unix_sockets)?,
        fs: FsPolicy {
            read: paths(raw.filesystem.read)?,
            write: paths(raw.filesystem.write)?,
            exec: paths(raw.filesystem.exec)?,
        },
        env: raw.process.env,
        user,
        origins,
        credentials,
        upstream_ca,
    })
}

/// A TOML parser error as [`ProfileError::Invalid`] with the line and
/// column of its span (or [`ProfileError::InvalidFile`] when it has none).
/// Shared by every hand-edited TOML file the agent reads (profiles, the
/// host configuration).
pub(crate) fn toml_error(text: &str, file: &str, e: &toml::de::Error) -> ProfileError {
    let message = plain_message(e.message().trim_end());
    match e.span() {
        Some(span) => ProfileError::Invalid {
            at: location(text, file, span.start),
            message,
        },
        None => ProfileError::InvalidFile {
            file: file.to_string(),
            message,
        },
    }
}

/// serde's "invalid type: integer `5`, expected network to be a table"
/// (from the `expecting` texts above) as "network must be a table, not
/// integer `5`"; other messages unchanged.
fn plain_message(m: &str) -> String {
    let rewritten = m.strip_prefix("invalid type: ").and_then(|rest| {
        let (found, expected) = rest.split_once(", expected ")?;
        let what = expected.strip_suffix(" to be a table")?;
        Some(format!("{what} must be a table, not {found}"))
    });
    rewritten.unwrap_or_else(|| m.to_string())
}

/// A file's bytes as text, or where the first invalid UTF-8 byte is (a
/// hand-edited file pasted from elsewhere: the position is what helps).
pub(crate) fn utf8_text(bytes: Vec<u8>, file: &str) -> Result<String, ProfileError> {
    String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let bytes = e.into_bytes();
        // The valid prefix is text; the location counts its characters.
        let prefix = String::from_utf8_lossy(&bytes[..valid]);
        let at = location(&prefix, file, valid);
        ProfileError::Invalid {
            at,
            message: format!(
                "invalid UTF-8 (byte 0x{:02x}): profiles are UTF-8 text",
                bytes[valid]
            ),
        }
    })
}

/// The rules of `list`, each told where in `file` it was written (the
/// proxy's events name the rule that allowed or denied a request).
fn placed<T, U>(
    list: Vec<Spanned<Parsed<T>>>,
    text: &str,
    file: &str,
    place: impl Fn(T, Origin) -> U,
) -> Vec<U> {
    list.into_iter()
        .map(|s| {
            let Location { file, line, column } = location(text, file, s.span().start);
            place(s.into_inner().0, Origin::Profile { file, line, column })
        })
        .collect()
}

fn values<T>(v: Vec<Parsed<T>>) -> Vec<T> {
    v.into_iter().map(|Parsed(x)| x).collect()
}

/// A user name as `getpwnam` could know it, or a numeric uid. Deliberately
/// loose (names are site-specific) but refuses what cannot be a name.
fn valid_user(u: &str) -> bool {
    !u.is_empty()
        && !u.starts_with('-')
        && !u
            .chars()
            .any(|c| c == ':' || c == '/' || c.is_whitespace() || c.is_control())
}

/// The top-level `description` of a profile, without validating the rest
/// (for listings, which must not fail on one broken file).
pub(super) fn description(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Only {
        description: Option<String>,
    }
    toml::from_str::<Only>(text).ok()?.description
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ExpandContext {
        ExpandContext {
            cwd: PathBuf::from("/w"),
            home: None,
            tmpdir: PathBuf::from("/tmp"),
            xdg_config_home: None,
        }
    }

    #[test]
    fn a_section_of_the_wrong_type_says_so() {
        for (text, want) in [
            (
                "network = 5\n",
                "/p.toml:1:11: network must be a table, not integer `5`",
            ),
            (
                "\nfilesystem = \"x\"\n",
                "/p.toml:2:14: filesystem must be a table, not string \"x\"",
            ),
            (
                "process = true\n",
                "/p.toml:1:11: process must be a table, not boolean `true`",
            ),
        ] {
            let e = parse(text, "/p.toml", &ctx()).unwrap_err().to_string();
            assert!(e.starts_with(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn credentials_are_parsed_with_positions() {
        let text = "[network]\nupstream_ca = \"/etc/corp-ca.pem\"\n\n\
                    [[credentials]]\nhost = \"API.Anthropic.com\"\nheader = \"x-api-key\"\n\
                    from_env = \"ANTHROPIC_API_KEY\"\nenv = \"ANTHROPIC_API_KEY\"\n\n\
                    [[credentials]]\nhost = \"api.openai.com:8443\"\nheader = \"authorization\"\n\
                    format = \"Bearer {}\"\nfrom_file = \"/run/keys/openai\"\n";
        let l = parse(text, "/p.toml", &ctx()).unwrap();
        assert_eq!(l.upstream_ca, Some(PathBuf::from("/etc/corp-ca.pem")));
        assert_eq!(l.credentials.len(), 2);
        let (a, at) = &l.credentials[0];
        assert_eq!(a.host, "api.anthropic.com");
        assert_eq!(a.port, 443);
        assert_eq!(a.source, Source::Env("ANTHROPIC_API_KEY".into()));
        assert_eq!(a.env.as_deref(), Some("ANTHROPIC_API_KEY"));
        assert_eq!(at.to_string(), "/p.toml:4:1");
        let (b, _) = &l.credentials[1];
        assert_eq!(b.port, 8443);
        assert_eq!(b.format, "Bearer {}");
        assert_eq!(b.source, Source::File("/run/keys/openai".into()));
        assert_eq!(b.env, None);
    }

    #[test]
    fn bad_credentials_name_the_line() {
        let head = "[[credentials]]\n";
        for (body, want) in [
            (
                "host = \"*.a.test\"\nheader = \"x-k\"\nfrom_env = \"K\"\n",
                "/p.toml:2:8: credential host \"*.a.test\": a wildcard",
            ),
            (
                "host = \"a.test\"\nheader = \"host\"\nfrom_env = \"K\"\n",
                "/p.toml:3:10: credential header \"host\": the proxy sets this header itself",
            ),
            (
                "host = \"a.test\"\nheader = \"x-k\"\nformat = \"Bearer\"\nfrom_env = \"K\"\n",
                "/p.toml:4:10: credential format \"Bearer\"",
            ),
            (
                "host = \"a.test\"\nheader = \"x-k\"\n",
                "/p.toml:1:1: a credential needs exactly one of from_env or from_file",
            ),
            (
                "host = \"a.test\"\nheader = \"x-k\"\nfrom_env = \"K\"\nfrom_file = \"/k\"\n",
                "/p.toml:1:1: a credential needs exactly one of from_env or from_file",
            ),
            (
                "host = \"a.test\"\nheader = \"x-k\"\nfrom_env = \"K\"\nvalue = \"sk-1\"\n",
                "/p.toml:5:1: unknown field `value`",
            ),
            (
                "host = \"a.test\"\nheader = \"x-k\"\nfrom_env = \"K\"\n\n\
                 [[credentials]]\nhost = \"a.test\"\nheader = \"X-K\"\nfrom_env = \"L\"\n",
                "/p.toml:6:1: a second credential for a.test:443 header x-k (the first is at /p.toml:1:1)",
            ),
        ] {
            let text = format!("{head}{body}");
            let e = parse(&text, "/p.toml", &ctx()).unwrap_err().to_string();
            assert!(e.starts_with(want), "{body:?}: {e}");
        }
    }

    #[test]
    fn bad_utf8_has_a_position() {
        let e = utf8_text(
            b"[network]\nallow_domains = [\"a\xffb\"]\n".to_vec(),
            "/p.toml",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "/p.toml:2:20: invalid UTF-8 (byte 0xff): profiles are UTF-8 text"
        );
        let e = utf8_text(b"\xfe".to_vec(), "/p.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/p.toml:1:1: invalid UTF-8"), "{e}");
        assert_eq!(utf8_text(b"ok = 1".to_vec(), "f").unwrap(), "ok = 1");
    }

    #[test]
    fn allow_rules_are_refused_where_the_flags_are() {
        for (text, want) in [
            (
                "[network]\nallow_domains = [\"*.co.uk\"]\n",
                "/p.toml:2:18: pattern \"*.co.uk\": \"co.uk\" is a public suffix",
            ),
            (
                "[network]\nallow_cidrs = [\"169.254.0.0/16\"]\n",
                "/p.toml:2:16: --allow-cidr \"169.254.0.0/16\": lies within link-local",
            ),
            (
                "[network]\nallow_cidrs = [\"10.0.0.1/8\"]\n",
                "/p.toml:2:16: --allow-cidr \"10.0.0.1/8\": host bits are set: the network is 10.0.0.0/8",
            ),
        ] {
            let e = parse(text, "/p.toml", &ctx()).unwrap_err().to_string();
            assert!(e.starts_with(want), "{text:?}: {e}");
        }
        // Deny rules may name a public suffix.
        assert!(parse("[network]\ndeny_domains = [\"*.com\"]\n", "/p.toml", &ctx()).is_ok());
    }

    #[test]
    fn rules_remember_where_they_were_written() {
        let ctx = ExpandContext {
            cwd: PathBuf::from("/w"),
            home: None,
            tmpdir: PathBuf::from("/tmp"),
            xdg_config_home: None,
        };
        let text = "[network]\nallow_domains = [\n  \"a.test\",\n  \"*.b.test\",\n]\n\
                    deny_domains = [\"x.b.test\"]\nallow_cidrs = [\"10.0.0.0/8\"]\n";
        let l = parse(text, "/p/dev.toml", &ctx).unwrap();
        let at = |o: &Origin| o.to_string();
        assert_eq!(at(&l.allow_domains[0].origin), "/p/dev.toml:3:3");
        assert_eq!(at(&l.allow_domains[1].origin), "/p/dev.toml:4:3");
        assert_eq!(at(&l.deny_domains[0].origin), "/p/dev.toml:6:17");
        assert_eq!(at(&l.allow_cidrs[0].origin), "/p/dev.toml:7:16");
    }

    #[test]
    fn filesystem_rules_and_loopback_remember_where_they_were_written() {
        let ctx = ExpandContext {
            cwd: PathBuf::from("/w"),
            home: Some(PathBuf::from("/home/u")),
            tmpdir: PathBuf::from("/tmp"),
            xdg_config_home: None,
        };
        let text = "[network]\nloopback = [5432]\n[filesystem]\nread = [\"/usr\"]\n\
                    write = [\n  \"$CWD\",\n  \"$HOME/.cache\",\n]\n";
        let l = parse(text, "/p/dev.toml", &ctx).unwrap();
        let o = &l.origins;
        assert_eq!(o.loopback.as_ref().unwrap().to_string(), "/p/dev.toml:2:12");
        let at = |a, p: &str| o.fs_rule(a, std::path::Path::new(p)).map(|l| l.to_string());
        assert_eq!(
            at(FsAccess::Read, "/usr").as_deref(),
            Some("/p/dev.toml:4:9")
        );
        assert_eq!(
            at(FsAccess::Write, "/w").as_deref(),
            Some("/p/dev.toml:6:3")
        );
        assert_eq!(
            at(FsAccess::Write, "/home/u/.cache").as_deref(),
            Some("/p/dev.toml:7:3")
        );
        assert_eq!(at(FsAccess::Read, "/w"), None);
    }
}
