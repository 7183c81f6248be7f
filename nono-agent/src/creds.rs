//! Credential injection, the agent's side: the profile's and the flags'
//! credentials merged, their real values read once (from the agent's
//! environment or a file), a placeholder made for each, the sandbox's
//! environment changed (the real variables removed even when the
//! environment is passed through, the placeholders put in), the agent's
//! own copy of the variables wiped from its initial environment block (what
//! `/proc/PID/environ` shows), and the CA bundle the sandbox trusts.
//!
//! The proxy does the interception (`nono_proxy::mitm`).

use nono_proxy::mitm::credential::{new_placeholder, read_value};
use nono_proxy::mitm::{Credential, CredentialSpec, Source, ValueError};
use std::path::{Path, PathBuf};

use crate::profile::Location;

/// Why the credentials could not be set up. No message contains a value.
#[derive(Debug, thiserror::Error)]
pub enum CredsError {
    /// A value could not be read or is unusable.
    #[error(transparent)]
    Value(#[from] ValueError),
    /// Two credentials want the same placeholder variable.
    #[error("credentials for {0} and {1} both name the environment variable {2}")]
    SameEnv(String, String, String),
    /// The placeholder variable is one nono-agent sets itself.
    #[error("credential for {0}: env = {1:?} is a variable nono-agent sets for the sandbox (proxy, CA bundle or NONO_*); name another")]
    ReservedEnv(String, String),
    /// No randomness for a placeholder.
    #[error("making a placeholder")]
    Random(#[source] std::io::Error),
    /// The upstream CA file is unusable.
    #[error("--upstream-ca {}: {source}", .path.display())]
    UpstreamCa {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: std::io::Error,
    },
}

/// The credentials of one sandbox, ready.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    /// For the proxy.
    pub credentials: Vec<Credential>,
    /// Where each came from (`FILE:LINE:COLUMN` or `--credential`).
    pub origins: Vec<String>,
    /// The sandbox's placeholder variables.
    pub placeholders: Vec<(String, String)>,
    /// The agent's variables holding real values: never given to the
    /// sandbox, whatever the environment policy.
    pub secret_vars: Vec<String>,
    /// Extra CA certificates for the proxy (and the sandbox's bundle).
    pub upstream_ca: Vec<nono_proxy::mitm::CertificateDer<'static>>,
}

/// The profile's credentials, then the flags' (a flag for the same host,
/// port and header replaces the profile's).
pub fn merge(
    profile: &[(CredentialSpec, Location)],
    flags: &[CredentialSpec],
) -> Vec<(CredentialSpec, String)> {
    let mut out: Vec<(CredentialSpec, String)> = profile
        .iter()
        .map(|(c, at)| (c.clone(), at.to_string()))
        .collect();
    for c in flags {
        out.retain(|(o, _)| !(o.host == c.host && o.port == c.port && o.header == c.header));
        out.push((c.clone(), "--credential".into()));
    }
    out
}

/// Reads every value (`env` looks the agent's variables up) and makes the
/// placeholders; `upstream_ca` is read too.
pub fn resolve(
    specs: Vec<(CredentialSpec, String)>,
    upstream_ca: Option<&Path>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Resolved, CredsError> {
    let mut r = Resolved::default();
    if let Some(path) = upstream_ca {
        r.upstream_ca =
            nono_proxy::mitm::read_pem_certs(path).map_err(|source| CredsError::UpstreamCa {
                path: path.to_path_buf(),
                source,
            })?;
    }
    for (spec, origin) in specs {
        let value = read_value(&spec, &env)?;
        let placeholder = new_placeholder().map_err(CredsError::Random)?;
        if let Source::Env(n) = &spec.source {
            if !r.secret_vars.contains(n) {
                r.secret_vars.push(n.clone());
            }
        }
        if let Some(var) = &spec.env {
            if reserved_var(var) {
                return Err(CredsError::ReservedEnv(spec.host.clone(), var.clone()));
            }
            if let Some(i) = r.placeholders.iter().position(|(k, _)| k == var) {
                return Err(CredsError::SameEnv(
                    r.credentials[i].spec.host.clone(),
                    spec.host.clone(),
                    var.clone(),
                ));
            }
            r.placeholders.push((var.clone(), placeholder.clone()));
        }
        r.credentials
            .push(Credential::new(spec, value, placeholder)?);
        r.origins.push(origin);
    }
    Ok(r)
}

/// Variables nono-agent sets for the sandbox itself: a placeholder there
/// would break the proxy or the CA bundle.
fn reserved_var(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    upper.starts_with("NONO_")
        || ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"].contains(&upper.as_str())
        || BUNDLE_VARS.contains(&name)
}

/// Overwrites the values of `names` in this process's initial environment
/// block (the memory `/proc/self/environ` reads), so that no process that
/// may read the agent's `environ` finds a real credential there. The
/// values must have been read before (`std::env::var` reads the same
/// memory). Best effort: a block that cannot be located is left alone (the
/// agent is non-dumpable, so only root can read it anyway).
pub fn wipe_own_environment(names: &[String]) {
    let Some((start, end)) = env_block() else {
        return;
    };
    if end <= start {
        return;
    }
    let len = end - start;
    // SAFETY: [env_start, env_end) is this process's environment block,
    // mapped readable and writable on the initial stack by the kernel at
    // exec for the process's whole life; it is only read here.
    let block: Vec<u8> = unsafe { std::slice::from_raw_parts(start as *const u8, len) }.to_vec();
    let mut offset = 0;
    for entry in block.split(|b| *b == 0) {
        let here = offset;
        offset += entry.len() + 1;
        let Some(eq) = entry.iter().position(|b| *b == b'=') else {
            continue;
        };
        if !names.iter().any(|n| n.as_bytes() == &entry[..eq]) {
            continue;
        }
        for i in here + eq + 1..here + entry.len() {
            // SAFETY: inside the block (see above); a volatile write so the
            // wipe is not elided.
            unsafe { std::ptr::write_volatile((start + i) as *mut u8, b'x') };
        }
    }
}

/// `env_start` and `env_end` of `/proc/self/stat` (fields 50 and 51).
fn env_block() -> Option<(usize, usize)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces: count after its ')'.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3.
    let start = fields.get(50 - 3)?.parse().ok()?;
    let end = fields.get(51 - 3)?.parse().ok()?;
    Some((start, end))
}

/// The `from_file` credential files the sandbox could read: every one
/// without filesystem rules, else those beneath a read, write or exec rule
/// (the sandbox would find the real value there).
pub fn readable_files(
    r: &Resolved,
    fs: Option<&crate::sandbox::landlock::FsRules>,
) -> Vec<PathBuf> {
    r.credentials
        .iter()
        .filter_map(|c| match &c.spec.source {
            Source::File(p) => Some(p.clone()),
            Source::Env(_) => None,
        })
        .filter(|p| match fs {
            None => true,
            Some(rules) => rules
                .read
                .iter()
                .chain(&rules.write)
                .chain(&rules.exec)
                .any(|rule| p.starts_with(rule)),
        })
        .collect()
}

/// The variables naming the CA bundle, for each kind of client.
pub const BUNDLE_VARS: &[&str] = &[
    "SSL_CERT_FILE",
    "NODE_EXTRA_CA_CERTS",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "CARGO_HTTP_CAINFO",
    "PIP_CERT",
];

/// The environment the sandbox gets for its credentials: the placeholders
/// and, with `bundle`, the variables naming the CA bundle.
pub fn child_vars(r: &Resolved, bundle: Option<&Path>) -> Vec<(String, String)> {
    let mut v = r.placeholders.clone();
    if let Some(b) = bundle {
        for k in BUNDLE_VARS {
            v.push((k.to_string(), b.display().to_string()));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> CredentialSpec {
        s.parse().unwrap()
    }

    #[test]
    fn flags_replace_the_profiles_credential_for_the_same_header() {
        let at = Location {
            file: "/p.toml".into(),
            line: 3,
            column: 1,
        };
        let merged = merge(
            &[
                (spec("a.test:x-k=env:A"), at.clone()),
                (spec("b.test:x-k=env:B"), at),
            ],
            &[spec("a.test:x-k=env:C")],
        );
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].0.host, "b.test");
        assert_eq!(merged[0].1, "/p.toml:3:1");
        assert_eq!(merged[1].0.source, Source::Env("C".into()));
        assert_eq!(merged[1].1, "--credential");
    }

    #[test]
    fn values_read_and_placeholders_made() {
        let env = |n: &str| (n == "K").then(|| "sk-real".to_string());
        let r = resolve(
            vec![(spec("a.test:x-k=env:K"), "--credential".into())],
            None,
            env,
        )
        .unwrap();
        assert_eq!(r.secret_vars, vec!["K".to_string()]);
        assert_eq!(r.placeholders[0].0, "K");
        assert!(r.placeholders[0].1.starts_with("nono-placeholder-"));
        assert_eq!(r.credentials[0].value.expose(), "sk-real");
        assert!(!format!("{r:?}").contains("sk-real"));
        let vars = child_vars(&r, Some(Path::new("/tmp/b.pem")));
        assert!(vars
            .iter()
            .any(|(k, v)| k == "SSL_CERT_FILE" && v == "/tmp/b.pem"));
        assert!(!vars.iter().any(|(_, v)| v.contains("sk-real")));

        let e = resolve(
            vec![(spec("a.test:x-k=env:MISSING"), "--credential".into())],
            None,
            env,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "credential for a.test: environment variable MISSING is not set"
        );
        let e = resolve(
            vec![
                (spec("a.test:x-k=env:K"), "--credential".into()),
                (spec("b.test:x-k=env:K"), "--credential".into()),
            ],
            None,
            env,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("both name the environment variable K"),
            "{e}"
        );
    }

    #[test]
    fn credential_files_the_sandbox_could_read_are_found() {
        let r = Resolved {
            credentials: vec![
                Credential::new(
                    spec("a.test:x-k=file:/home/u/.keys/a"),
                    nono_proxy::mitm::Secret::new("v"),
                    "p".into(),
                )
                .unwrap(),
                Credential::new(
                    spec("b.test:x-k=env:B"),
                    nono_proxy::mitm::Secret::new("v"),
                    "p".into(),
                )
                .unwrap(),
            ],
            ..Default::default()
        };
        assert_eq!(
            readable_files(&r, None),
            vec![PathBuf::from("/home/u/.keys/a")]
        );
        let mut rules = crate::sandbox::landlock::FsRules {
            read: vec!["/usr".into()],
            write: vec!["/tmp".into()],
            exec: vec![],
        };
        assert!(readable_files(&r, Some(&rules)).is_empty());
        rules.read.push("/home/u".into());
        assert_eq!(readable_files(&r, Some(&rules)).len(), 1);
    }

    #[test]
    fn the_environment_block_is_found() {
        let (start, end) = env_block().unwrap();
        assert!(end > start);
    }
}
