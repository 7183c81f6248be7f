//! Transparent mode (`exec --transparent`, issue 14) with real clients that
//! ignore the proxy variables (curl `--noproxy '*'`, raw Python sockets
//! that resolve through the system resolver or a resolver they name
//! themselves) against the proxy lab's servers in the server namespace.
//! The servers log every request and echo connection, and the lab's DNS
//! server (the agent's `--dns-server` upstream, on loopback in the client
//! namespace) logs every name it is asked, so "refused" always means "the
//! client got nothing" and "nothing arrived".
//!
//! DNS never reaches the machine's resolver: the sandbox's port-53 traffic
//! is redirected to the agent's resolver, which asks nobody; the client
//! namespace has no default route, so a query that escaped redirection
//! would fail (asserted in `dns::without_redirection_queries_go_nowhere`).
//!
//! Needs root, a real kernel, python3, openssl, git and curl.
//! Run with `cargo test -p nono-tests --test transparent`.
//!
//! One module per part: `names` (HTTP, HTTPS, raw TLS, a client-first TCP
//! protocol, v4 and v6), `dns` (NXDOMAIN, TXT, TCP, hard-coded resolvers),
//! `fronting` (SNI/Host of another name, IP literals, no SNI), `modes`
//! (loopback and the proxy variables alongside, audit), `metadata` (cloud
//! metadata stays refused), `events`.

mod dns;
mod events;
mod fronting;
mod metadata;
mod modes;
mod names;
mod seccomp;

use std::fs;
use std::path::PathBuf;

use serde_json::Value;

use nono_tests::proxylab::{ProxyLab, Sandbox};
use nono_tests::sys::{self, CmdOutput};

/// The client script (see its docstring).
const TCLIENT_PY: &str = include_str!("tclient.py");

/// Synthetic addresses of the agent's resolver (198.18.0.0/15 and
/// fd6e:6f6e:6f00::/64, `nono_proxy::resolver::fake_ip`).
fn is_synthetic(addr: &str) -> bool {
    match addr.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => a.octets()[0] == 198 && (a.octets()[1] & 0xfe) == 18,
        Ok(std::net::IpAddr::V6(a)) => a.segments()[..4] == [0xfd6e, 0x6f6e, 0x6f00, 0],
        Err(_) => false,
    }
}

/// A lab with the transparent client written into it.
struct TLab {
    lab: ProxyLab,
    client: PathBuf,
}

impl TLab {
    fn new() -> TLab {
        let lab = ProxyLab::new();
        let client = lab.tmp.path("tclient.py");
        fs::write(&client, TCLIENT_PY).expect("write tclient.py");
        TLab { lab, client }
    }

    /// Runs `python3 tclient.py ARGS` in `sb`; its JSON and the agent's
    /// output.
    fn py(&self, sb: &Sandbox, args: &[&str]) -> (Value, CmdOutput) {
        let client = self.client.display().to_string();
        let mut argv = vec!["python3", client.as_str()];
        argv.extend_from_slice(args);
        let out = self.lab.exec(sb, &argv);
        (json_of(&out, args), out)
    }

    /// Runs `python3 tclient.py ARGS` in the client namespace, outside any
    /// sandbox (to prove a target reachable, or unreachable, without us).
    fn py_outside(&self, args: &[&str]) -> Value {
        let client = self.client.display().to_string();
        let mut cmd = self.lab.fx.client_command("python3");
        cmd.arg(&client).args(args);
        for (k, v) in self.lab.base_env() {
            cmd.env(k, v);
        }
        let out = sys::run_timeout(&mut cmd, sys::CMD_TIMEOUT);
        json_of(&out, args)
    }

    /// `curl --noproxy '*' ARGS` in `sb`: (exit code, `%{http_code}`,
    /// body, agent output).
    fn curl(&self, sb: &Sandbox, args: &[&str]) -> (i32, u16, String, CmdOutput) {
        let body = self.lab.scratch("curl").join("body");
        let b = body.display().to_string();
        let mut argv = vec![
            "curl",
            "--noproxy",
            "*",
            "-sS",
            "--max-time",
            "20",
            "-o",
            b.as_str(),
            "-w",
            "%{http_code}",
        ];
        argv.extend_from_slice(args);
        let out = self.lab.exec(sb, &argv);
        let code = out.stdout.trim().parse().unwrap_or(0);
        let body = fs::read_to_string(&body).unwrap_or_default();
        (out.code(), code, body, out)
    }
}

fn json_of(out: &CmdOutput, args: &[&str]) -> Value {
    out.stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .unwrap_or_else(|| panic!("tclient.py {args:?} printed no JSON: {}", out.describe()))
}

/// A transparent sandbox allowing `allow` (the lab's pins, its DNS server
/// as `--dns-server`).
fn transparent(allow: &[&str]) -> Sandbox {
    Sandbox {
        extra: vec!["--transparent".into()],
        ..Sandbox::allow(allow)
    }
}
