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
    pub resolve: Vec<Pin>,
    pub allow_unix_sockets: Vec<PathBuf>,
    pub fs: FsPolicy,
    pub env: Option<EnvPolicy>,
    pub user: Option<String>,
    /// Where each filesystem rule and the `loopback` setting were written.
    pub origins: Provenance,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    extends: Option<Spanned<String>>,
    description: Option<String>,
    #[serde(default)]
    network: RawNetwork,
    #[serde(default)]
    filesystem: RawFilesystem,
    #[serde(default)]
    process: RawProcess,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawNetwork {
    allow_domains: Vec<Spanned<Parsed<DomainRule>>>,
    deny_domains: Vec<Spanned<Parsed<DomainRule>>>,
    allow_cidrs: Vec<Spanned<Parsed<CidrRule>>>,
    loopback: Option<Spanned<Loopback>>,
    upstream_proxy: Option<Parsed<Upstream>>,
    resolve: Vec<Parsed<Pin>>,
    allow_unix_sockets: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawFilesystem {
    read: Vec<Spanned<String>>,
    write: Vec<Spanned<String>>,
    exec: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawProcess {
    env: Option<EnvPolicy>,
    user: Option<Spanned<String>>,
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
        allow_domains: placed(n.allow_domains, text, file, DomainRule::with_origin),
        deny_domains: placed(n.deny_domains, text, file, DomainRule::with_origin),
        allow_cidrs: placed(n.allow_cidrs, text, file, CidrRule::with_origin),
        loopback,
        upstream_proxy: n.upstream_proxy.map(|Parsed(u)| u),
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
    })
}

/// A TOML parser error as [`ProfileError::Invalid`] with the line and
/// column of its span (or [`ProfileError::InvalidFile`] when it has none).
/// Shared by every hand-edited TOML file the agent reads (profiles, the
/// host configuration).
pub(crate) fn toml_error(text: &str, file: &str, e: &toml::de::Error) -> ProfileError {
    let message = e.message().trim_end().to_string();
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

/// The rules of `list`, each told where in `file` it was written (the
/// proxy's events name the rule that allowed or denied a request).
fn placed<T>(
    list: Vec<Spanned<Parsed<T>>>,
    text: &str,
    file: &str,
    place: fn(T, Origin) -> T,
) -> Vec<T> {
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
