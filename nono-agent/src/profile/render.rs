//! `profile show`: a resolved profile written back as a profile file with no
//! `extends`, so that what a sandbox will get can be read (and diffed, and
//! saved and loaded again) in the format the user writes.

use serde::Serialize;
use std::path::PathBuf;

use super::{EnvPolicy, Loopback, ResolvedProfile};

#[derive(Serialize)]
struct Out<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    network: Network,
    filesystem: Filesystem,
    process: Process<'a>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    credentials: Vec<Cred>,
}

/// A `[[credentials]]` entry, as written.
#[derive(Serialize)]
struct Cred {
    host: String,
    header: String,
    format: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    from_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    from_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    env: Option<String>,
}

#[derive(Serialize)]
struct Network {
    allow_domains: Vec<String>,
    deny_domains: Vec<String>,
    allow_cidrs: Vec<String>,
    loopback: OneOf<&'static str, Vec<u16>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_proxy: Option<String>,
    resolve: Vec<String>,
    allow_unix_sockets: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_ca: Option<String>,
}

#[derive(Serialize)]
struct Filesystem {
    read: Vec<String>,
    write: Vec<String>,
    exec: Vec<String>,
}

#[derive(Serialize)]
struct Process<'a> {
    env: OneOf<&'static str, &'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
}

/// A keyword or a list, as `loopback` and `env` are written.
#[derive(Serialize)]
#[serde(untagged)]
enum OneOf<A, B> {
    Word(A),
    List(B),
}

/// Paths as profile strings: `$` doubled so that loading the output does not
/// expand anything again.
fn paths(v: &[PathBuf]) -> Vec<String> {
    v.iter()
        .map(|p| p.to_string_lossy().replace('$', "$$"))
        .collect()
}

impl ResolvedProfile {
    /// The fully resolved policy as a profile file (no `extends`), headed
    /// by comments naming the chain it came from. Upstream proxy
    /// credentials are not shown.
    pub fn to_toml_string(&self) -> String {
        let n = &self.network;
        let hidden_creds = n
            .upstream_proxy
            .as_ref()
            .is_some_and(|u| u.authorization().is_some());
        let out = Out {
            description: self.description.as_deref(),
            network: Network {
                allow_domains: n.allow_domains.iter().map(|r| r.text.clone()).collect(),
                deny_domains: n.deny_domains.iter().map(|r| r.text.clone()).collect(),
                allow_cidrs: n.allow_cidrs.iter().map(|r| r.text.clone()).collect(),
                loopback: match &n.loopback {
                    Loopback::Any => OneOf::Word("any"),
                    Loopback::Ports(p) => OneOf::List(p.clone()),
                },
                upstream_proxy: n
                    .upstream_proxy
                    .as_ref()
                    .map(|u| format!("http://{}", u.authority)),
                resolve: n
                    .resolve
                    .iter()
                    .map(|p| {
                        let addrs: Vec<String> = p.addrs.iter().map(|a| a.to_string()).collect();
                        format!("{}={}", p.name, addrs.join(","))
                    })
                    .collect(),
                allow_unix_sockets: paths(&n.allow_unix_sockets),
                upstream_ca: n
                    .upstream_ca
                    .as_ref()
                    .map(|p| p.to_string_lossy().replace('$', "$$")),
            },
            filesystem: Filesystem {
                read: paths(&self.filesystem.read),
                write: paths(&self.filesystem.write),
                exec: paths(&self.filesystem.exec),
            },
            process: Process {
                env: match &self.process.env {
                    EnvPolicy::Inherit => OneOf::Word("inherit"),
                    EnvPolicy::Clean => OneOf::Word("clean"),
                    EnvPolicy::PassThrough(v) => OneOf::List(v.as_slice()),
                },
                user: self.process.user.as_deref(),
            },
            credentials: n
                .credentials
                .iter()
                .map(|(c, _)| {
                    let (from_env, from_file) = match &c.source {
                        nono_proxy::mitm::Source::Env(v) => (Some(v.clone()), None),
                        nono_proxy::mitm::Source::File(p) => {
                            (None, Some(p.to_string_lossy().replace('$', "$$")))
                        }
                    };
                    Cred {
                        host: if c.port == 443 {
                            c.host.clone()
                        } else {
                            format!("{}:{}", c.host, c.port)
                        },
                        header: c.header.to_string(),
                        format: c.format.clone(),
                        from_env,
                        from_file,
                        env: c.env.clone(),
                    }
                })
                .collect(),
        };
        let mut s = format!("# profile {}: resolved from\n", self.name);
        for c in &self.chain {
            s.push_str(&format!("#   {c}\n"));
        }
        if hidden_creds {
            s.push_str("# (upstream_proxy credentials are not shown)\n");
        }
        s.push('\n');
        // Serialising plain strings, lists and tables cannot fail; if it
        // ever did, say so in the output rather than panic.
        match toml::to_string_pretty(&out) {
            Ok(body) => s.push_str(&body),
            Err(e) => s.push_str(&format!("# cannot render this profile: {e}\n")),
        }
        s
    }
}
