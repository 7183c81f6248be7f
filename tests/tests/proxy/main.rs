//! The filtering proxy of `nono-agent exec` (and `nono-agent proxy`), tested
//! with real clients (curl, Python urllib, git, raw sockets) running inside
//! the sandbox against real servers in the server namespace. The servers log
//! every request they receive, so "refused" always means both "the client got
//! the refusal" and "nothing arrived".
//!
//! Needs root, a real kernel, python3, openssl, git and curl.
//! Run with `cargo test -p nono-tests --test proxy`.
//!
//! The table helpers live here; one module per part holds its tests (test
//! names carry it, e.g. `raw::`): `domains` (curl, HTTP forwarding and
//! CONNECT), `addresses` (resolved addresses, IP literals), `clients` (Python
//! urllib, git), `raw` (Host header, framing, request targets, credentials),
//! `relay` (cross-sandbox relay, direct connections), `load`, `events`
//! (events, the exit summary), `dns`, `standalone` (`nono-agent proxy`).

mod addresses;
mod clients;
mod dns;
mod domains;
mod events;
mod load;
mod raw;
mod relay;
mod standalone;

use serde_json::Value;

use nono_tests::proxylab::{CurlCase, CurlResult, ProxyLab, Sandbox};
use nono_tests::sys::CmdOutput;

/// What a request should get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// Reaches the test server (200, the server logged it).
    Ok,
    /// The proxy answers this status (to CONNECT or to the request) and the
    /// server sees nothing.
    Refused(u16),
}

struct Case {
    curl: CurlCase,
    want: Want,
    /// Text the refusal body must contain (plain-HTTP refusals only: curl does
    /// not keep the body of a refused CONNECT).
    body_has: Option<&'static str>,
}

/// `SCHEME://HOSTPORT/case/NAME`; the path makes the request recognisable in
/// the server log.
fn case(name: &str, scheme: &str, hostport: &str, want: Want) -> Case {
    Case {
        curl: CurlCase::new(name, &format!("{scheme}://{hostport}/case/{name}")),
        want,
        body_has: None,
    }
}

fn case_body(name: &str, scheme: &str, hostport: &str, code: u16, body: &'static str) -> Case {
    Case {
        body_has: Some(body),
        ..case(name, scheme, hostport, Want::Refused(code))
    }
}

/// Whether the URL's host is an IP literal (TLS sends no SNI for those).
fn is_ip_literal_url(url: &str) -> bool {
    let rest = url.split_once("://").map(|x| x.1).unwrap_or(url);
    let host = rest.split('/').next().unwrap_or_default();
    host.starts_with('[')
        || host
            .rsplit_once(':')
            .map_or(host, |(h, _)| h)
            .parse::<std::net::Ipv4Addr>()
            .is_ok()
}

fn describe(r: &CurlResult) -> String {
    format!(
        "exit={} http_code={} connect={} stderr={:?} body={:?}",
        r.exit,
        r.http_code,
        r.connect_code,
        r.stderr.trim(),
        r.body.chars().take(300).collect::<String>()
    )
}

/// Runs every case with curl in one sandbox and checks each against both the
/// client's view and the server log. Reports every mismatch at once.
fn run_curl_table(lab: &mut ProxyLab, sb: &Sandbox, cases: &[Case]) -> Vec<CurlResult> {
    let curl: Vec<CurlCase> = cases.iter().map(|c| c.curl.clone()).collect();
    let (results, out) = lab.curl(sb, &curl);
    assert_eq!(out.code(), 0, "sandboxed curl script: {}", out.describe());
    lab.assert_servers_alive();
    let mut bad = Vec::new();
    for (c, r) in cases.iter().zip(&results) {
        let seen = lab.requests_to(&format!("/case/{}", c.curl.name));
        match c.want {
            Want::Ok => {
                let body: Value = serde_json::from_str(r.body.trim()).unwrap_or(Value::Null);
                if r.exit != 0 || r.http_code != 200 || seen.len() != 1 {
                    bad.push(format!(
                        "{} {}: expected to reach the server; {}; server saw {} request(s)",
                        c.curl.name,
                        c.curl.url,
                        describe(r),
                        seen.len()
                    ));
                } else if body["path"] != format!("/case/{}", c.curl.name) {
                    bad.push(format!(
                        "{}: the answer is not the test server's: {:?}",
                        c.curl.name, r.body
                    ));
                } else if c.curl.url.starts_with("https://")
                    && (seen[0]["tls"] != true
                        || (seen[0]["sni"].is_null() && !is_ip_literal_url(&c.curl.url)))
                {
                    bad.push(format!(
                        "{}: expected a TLS request with SNI, server logged {}",
                        c.curl.name, seen[0]
                    ));
                }
            }
            Want::Refused(code) => {
                if r.proxy_status() != code || !seen.is_empty() {
                    bad.push(format!(
                        "{} {}: expected the proxy to answer {code} and nothing to arrive; {}; \
                         server saw {:?}",
                        c.curl.name,
                        c.curl.url,
                        describe(r),
                        seen
                    ));
                } else if let Some(text) = c.body_has {
                    if !r.body.contains(text) {
                        bad.push(format!(
                            "{}: refusal body should contain {text:?}: {:?}",
                            c.curl.name, r.body
                        ));
                    }
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} cases wrong:\n  {}\n--- agent stderr ---\n{}",
        bad.len(),
        cases.len(),
        bad.join("\n  "),
        out.stderr
    );
    results
}

fn sandbox_id(out: &CmdOutput) -> String {
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("SANDBOX="))
        .unwrap_or_else(|| panic!("no SANDBOX= line: {}", out.describe()))
        .trim()
        .to_string()
}
