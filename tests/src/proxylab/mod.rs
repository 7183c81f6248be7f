//! Fixture for the filtering-proxy tests: the client/server namespaces of
//! [`NetFixture`] plus real servers in the server namespace, a logging DNS
//! server in the client namespace, a test CA, and helpers that run real
//! clients (curl, Python urllib, git, raw sockets) inside `nono-agent exec`.
//!
//! ```text
//!   client netns                                  server netns
//!   nono-agent exec (proxy on 127.0.0.1:EPH)      servers.py on [::] (v4+v6):
//!     └─ curl / python / git (sandboxed)            80, 8080    HTTP
//!   dns.py on 127.0.0.1:5353 (logs queries)         443, 8443   HTTPS (test CA),
//!                                                               git smart HTTP
//!                                                   7000        TCP echo
//!                                                   7001        TCP echo, holds
//!                                                               30 s after EOF
//! ```
//!
//! Every host name a test uses is pinned with `--resolve` (see
//! [`DEFAULT_PINS`]) and every other lookup goes to the lab's own DNS server
//! (`--dns-server`), so the machine's resolver is never asked. Names are pinned
//! to the test server even when the proxy must refuse them, so that a wrong
//! "allow" becomes visible in the server's request log.
//!
//! Server processes are killed (by pid) before the namespaces are removed;
//! the temporary directory (CA, logs, repository) is removed last.
//!
//! One file per job: `background` (processes the lab started), `pki` (the
//! test CA, the git repository), `cases` (what one sandboxed client run
//! gets and returns), `lab` (`ProxyLab`); everything is re-exported here, so
//! `crate::proxylab::X` paths are unchanged.

mod background;
mod cases;
mod lab;
mod pki;

pub use background::Background;
pub use cases::{sh_quote, CurlCase, CurlResult, Sandbox};
pub use lab::ProxyLab;
pub use pki::{make_repo, Pki};

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

pub const SERVERS_PY: &str = include_str!("servers.py");
pub const DNS_PY: &str = include_str!("dns.py");
pub const CLIENT_PY: &str = include_str!("client.py");

/// The test server's IPv4 address (as a string, for URLs and pins).
pub const SERVER: &str = "198.51.100.2";
/// The test server's IPv6 address.
pub const SERVER6: &str = "2001:db8:100::2";
/// Port of the lab's DNS server (on 127.0.0.1 in the client namespace).
pub const DNS_PORT: u16 = 5353;
/// Port of the echo server.
pub const ECHO_PORT: u16 = 7000;
/// Port of the echo server that keeps connections open for 30 s after the
/// client's EOF.
pub const HOLD_PORT: u16 = 7001;

/// `--resolve` pins every sandbox gets unless told otherwise.
pub const DEFAULT_PINS: &[&str] = &[
    "allowed.test=198.51.100.2",
    "a.wild.test=198.51.100.2",
    "b.c.wild.test=198.51.100.2",
    "wild.test=198.51.100.2",
    "evilwild.test=198.51.100.2",
    "blocked.wild.test=198.51.100.2",
    "evil.test=198.51.100.2",
    "evilallowed.test=198.51.100.2",
    "allowed.test.evil.test=198.51.100.2",
    "git.test=198.51.100.2",
    "echo.test=198.51.100.2",
    "b-only.test=198.51.100.2",
    // bücher.test
    "xn--bcher-kva.test=198.51.100.2",
    // "аllowed.test" with a Cyrillic а (U+0430): a lookalike of allowed.test
    "xn--llowed-2nf.test=198.51.100.2",
    "v6.test=2001:db8:100::2",
    "metadata.test=169.254.169.254",
    "mapped-metadata.test=::ffff:169.254.169.254",
    "nat64-metadata.test=64:ff9b::a9fe:a9fe",
    "private.test=10.1.2.3",
    "mapped-private.test=::ffff:10.1.2.3",
    "cgnat.test=100.64.1.2",
    "loop.test=127.0.0.1",
    "mixed.test=10.1.2.3,198.51.100.2",
];

/// Names the lab's DNS server knows (never pinned).
pub const DNS_TABLE: &[&str] = &[
    "dns-ok.test=198.51.100.2",
    "dns-denied.test=198.51.100.2",
    "dns-meta.test=169.254.169.254",
    "dns-v6.test=2001:db8:100::2",
];

/// Names in the test server's certificate.
pub const CERT_NAMES: &[&str] = &[
    "allowed.test",
    "*.wild.test",
    "*.c.wild.test",
    "git.test",
    "echo.test",
    "b-only.test",
    "v6.test",
    "xn--bcher-kva.test",
    "evil.test",
    "evilallowed.test",
    "dns-ok.test",
];

/// Panics (never skips) unless `tool` is on PATH; names the Debian package.
pub fn require_tool(tool: &str, package: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(tool))
                .find(|c| c.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "required tool `{tool}` not found in PATH: install the Debian package `{package}` \
                 (the proxy tests need it; nothing is skipped)"
            )
        })
}

/// Parses every JSON line of a file (missing file: none).
pub fn read_jsonl(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l.trim()).ok())
        .collect()
}

/// The proxy events (`source == "proxy"`) in an events file.
pub fn proxy_events(path: &Path) -> Vec<Value> {
    read_jsonl(path)
        .into_iter()
        .filter(|e| e["source"] == "proxy")
        .collect()
}

/// The `http://nono:SECRET@127.0.0.1:PORT` URL split into (secret, port).
pub fn parse_proxy_url(url: &str) -> Option<(String, u16)> {
    let rest = url.trim().strip_prefix("http://nono:")?;
    let (secret, hostport) = rest.split_once('@')?;
    let port = hostport
        .trim_end_matches('/')
        .strip_prefix("127.0.0.1:")?
        .parse()
        .ok()?;
    Some((secret.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_url_parsing() {
        assert_eq!(
            parse_proxy_url("http://nono:abc123@127.0.0.1:41077\n"),
            Some(("abc123".to_string(), 41077))
        );
        assert_eq!(parse_proxy_url("http://other:x@127.0.0.1:1"), None);
        assert_eq!(parse_proxy_url("http://nono:x@[::1]:1"), None);
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }
}
