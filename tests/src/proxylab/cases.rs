//! What one sandboxed client run gets (`Sandbox`) and what a curl case
//! asks and returns (`CurlCase`, `CurlResult`).

use std::path::{Path, PathBuf};

/// What one `nono-agent exec` gets.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    pub cidrs: Vec<String>,
    pub resolve: Vec<String>,
    /// Add [`DEFAULT_PINS`] (default true).
    pub default_pins: bool,
    /// `--dns-server`; the lab's DNS server when `None`.
    pub dns_server: Option<String>,
    pub events: Option<PathBuf>,
    pub quiet: bool,
    /// Extra environment for the agent (inherited by the command).
    pub env: Vec<(String, String)>,
    /// Extra agent options (before `--`).
    pub extra: Vec<String>,
    /// The agent's subcommand and its own options (empty: `exec`), e.g.
    /// `["learn", "-o", FILE]`.
    pub subcommand: Vec<String>,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox {
            allow: Vec::new(),
            deny: Vec::new(),
            cidrs: Vec::new(),
            resolve: Vec::new(),
            default_pins: true,
            dns_server: None,
            events: None,
            quiet: false,
            env: Vec::new(),
            extra: Vec::new(),
            subcommand: Vec::new(),
        }
    }
}

impl Sandbox {
    pub fn allow(allow: &[&str]) -> Sandbox {
        Sandbox {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    pub fn deny(mut self, deny: &[&str]) -> Sandbox {
        self.deny.extend(deny.iter().map(|s| s.to_string()));
        self
    }

    pub fn cidr(mut self, cidrs: &[&str]) -> Sandbox {
        self.cidrs.extend(cidrs.iter().map(|s| s.to_string()));
        self
    }

    pub fn events(mut self, path: &Path) -> Sandbox {
        self.events = Some(path.to_path_buf());
        self
    }
}

/// One curl request in a table (see [`ProxyLab::curl`]).
#[derive(Debug, Clone)]
pub struct CurlCase {
    pub name: String,
    pub url: String,
    pub args: Vec<String>,
}

impl CurlCase {
    pub fn new(name: &str, url: &str) -> CurlCase {
        CurlCase {
            name: name.to_string(),
            url: url.to_string(),
            args: Vec::new(),
        }
    }
}

/// What curl reported for one [`CurlCase`].
#[derive(Debug, Clone)]
pub struct CurlResult {
    pub name: String,
    pub url: String,
    pub exit: i32,
    /// `%{http_code}`: the final response (0 if none).
    pub http_code: u16,
    /// `%{http_connect}`: the proxy's answer to CONNECT (0 if none).
    pub connect_code: u16,
    pub body: String,
    pub stderr: String,
}

impl CurlResult {
    /// The proxy's status: the CONNECT answer for tunnels, else the response.
    pub fn proxy_status(&self) -> u16 {
        if self.connect_code != 0 {
            self.connect_code
        } else {
            self.http_code
        }
    }
}

/// Quotes `s` for /bin/sh.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
