//! The filtering proxy of `nono-agent exec` (and `nono-agent proxy`), tested
//! with real clients (curl, Python urllib, git, raw sockets) running inside
//! the sandbox against real servers in the server namespace. The servers log
//! every request they receive, so "refused" always means both "the client got
//! the refusal" and "nothing arrived".
//!
//! Needs root, a real kernel, python3, openssl, git and curl.
//! Run with `cargo test -p nono-tests --test proxy`.

use std::fs;
use std::io::Read as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use nono_tests::oracle::{Proto, TcpCounter};
use nono_tests::proxylab::{
    parse_proxy_url, proxy_events, require_tool, Background, CurlCase, CurlResult, ProxyLab,
    Sandbox, ECHO_PORT, HOLD_PORT, SERVER,
};
use nono_tests::runner::parse_summary;
use nono_tests::sys::{self, CmdOutput};

// ---------------------------------------------------------------------------
// Table helpers

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

// ---------------------------------------------------------------------------
// Domain rules with curl (HTTP forwarding and HTTPS CONNECT)

#[test]
fn curl_domain_rules_exact_wildcard_deny_ports_and_spelling_tricks() {
    let mut lab = ProxyLab::new();
    let sb = Sandbox::allow(&[
        "allowed.test",
        "*.wild.test",
        "allowed.test:8080",
        "*.wild.test:8443",
    ])
    .deny(&["blocked.wild.test"]);
    use Want::*;
    let cases = vec![
        // exact name, both schemes
        case("http-exact", "http", "allowed.test", Ok),
        case("https-exact", "https", "allowed.test", Ok),
        // wildcard: one and two labels deep
        case("http-wild", "http", "a.wild.test", Ok),
        case("https-wild", "https", "a.wild.test", Ok),
        case("https-wild-deep", "https", "b.c.wild.test", Ok),
        // the apex is not matched by *.wild.test
        case_body(
            "http-apex",
            "http",
            "wild.test",
            403,
            "wild.test:80 is not allowed by any allow-domain rule",
        ),
        case("https-apex", "https", "wild.test", Refused(403)),
        // deny beats allow, whatever the spelling
        case_body(
            "http-deny",
            "http",
            "blocked.wild.test",
            403,
            "deny-domain blocked.wild.test",
        ),
        case("https-deny", "https", "blocked.wild.test", Refused(403)),
        case_body(
            "http-deny-spelling",
            "http",
            "BLOCKED.Wild.TEST.",
            403,
            "deny-domain blocked.wild.test",
        ),
        // suffix and prefix tricks
        case(
            "http-suffix-trick",
            "http",
            "allowed.test.evil.test",
            Refused(403),
        ),
        case(
            "https-suffix-trick",
            "https",
            "allowed.test.evil.test",
            Refused(403),
        ),
        case(
            "http-prefix-trick",
            "http",
            "evilallowed.test",
            Refused(403),
        ),
        case(
            "https-prefix-trick",
            "https",
            "evilallowed.test",
            Refused(403),
        ),
        case(
            "https-prefix-trick-wild",
            "https",
            "evilwild.test",
            Refused(403),
        ),
        case(
            "http-userinfo-trick",
            "http",
            "allowed.test@evil.test",
            Refused(403),
        ),
        case("http-unknown", "http", "evil.test", Refused(403)),
        case("https-unknown", "https", "evil.test", Refused(403)),
        // ports: 80 and 443 by default, others only when a rule names them
        case_body(
            "http-port-not-in-rule",
            "http",
            "a.wild.test:8080",
            403,
            "a.wild.test:8080 is not allowed",
        ),
        case("http-port-rule", "http", "allowed.test:8080", Ok),
        case("https-port-rule", "https", "a.wild.test:8443", Ok),
        case(
            "https-port-not-in-rule",
            "https",
            "allowed.test:8443",
            Refused(403),
        ),
        // case and one trailing dot are normalised
        case("http-uppercase", "http", "ALLOWED.TEST", Ok),
        case("https-uppercase", "https", "Allowed.Test", Ok),
        case("http-trailing-dot", "http", "allowed.test.", Ok),
        case("https-trailing-dot", "https", "a.wild.test.", Ok),
        // IDNA: full-width letters are the same name (curl maps them, UTS 46)
        case("http-fullwidth", "http", "ａｌｌｏｗｅｄ.test", Ok),
        case("https-fullwidth", "https", "ａ.ｗｉｌｄ.test", Ok),
        // a lookalike (Cyrillic а) is a different name: xn--llowed-2nf.test
        case("http-lookalike", "http", "аllowed.test", Refused(403)),
        case("https-lookalike", "https", "аllowed.test", Refused(403)),
    ];
    run_curl_table(&mut lab, &sb, &cases);
    // The wildcard request really carried its own name to the server.
    let r = lab.requests_matching("/case/https-wild-deep");
    assert_eq!(r[0]["sni"], "b.c.wild.test", "{:?}", r);
    assert_eq!(r[0]["host"], "b.c.wild.test", "{:?}", r);
    // Refused names were never looked up (they are pinned anyway, but an
    // unpinned lookup would show up here).
    assert!(
        lab.dns_queries().is_empty(),
        "unexpected DNS queries: {:?}",
        lab.dns_queries()
    );
}

/// Rules written in Unicode (full-width, U-labels) are normalised the same
/// way as the names requested.
#[test]
fn rules_are_idna_normalised_like_requests() {
    let mut lab = ProxyLab::new();
    let sb = Sandbox::allow(&["ａｌｌｏｗｅｄ.TEST", "bücher.test", "*.ＷＩＬＤ.test"])
        .deny(&["ＢＬＯＣＫＥＤ.wild.test."]);
    use Want::*;
    let cases = vec![
        case("ascii-of-fullwidth-rule", "http", "allowed.test", Ok),
        case("punycode-of-ulabel-rule", "http", "xn--bcher-kva.test", Ok),
        case("punycode-upper-dot", "http", "XN--BCHER-KVA.TEST.", Ok),
        case("punycode-https", "https", "xn--bcher-kva.test", Ok),
        case("ulabel-request", "http", "bücher.test", Ok),
        case("fullwidth-wildcard-rule", "https", "a.wild.test", Ok),
        case_body(
            "fullwidth-deny-rule",
            "http",
            "blocked.wild.test",
            403,
            "deny-domain",
        ),
        case("lookalike", "http", "аllowed.test", Refused(403)),
        case("other", "http", "evil.test", Refused(403)),
    ];
    run_curl_table(&mut lab, &sb, &cases);
}

// ---------------------------------------------------------------------------
// Address checks: resolved addresses and IP literals

#[test]
fn resolved_addresses_and_ip_literals_are_judged() {
    let mut lab = ProxyLab::new();
    let events = lab.tmp.path("addr-events.jsonl");
    let sb = Sandbox::allow(&[
        "allowed.test",
        "metadata.test",
        "mapped-metadata.test",
        "nat64-metadata.test",
        "private.test",
        "mapped-private.test",
        "cgnat.test",
        "loop.test",
        "mixed.test",
        "v6.test",
    ])
    .events(&events);
    use Want::*;
    let cases = vec![
        case("control", "http", "allowed.test", Ok),
        case_body(
            "metadata",
            "http",
            "metadata.test",
            403,
            "169.254.169.254 is refused: link-local",
        ),
        case("metadata-https", "https", "metadata.test", Refused(403)),
        case_body(
            "mapped-metadata",
            "http",
            "mapped-metadata.test",
            403,
            "169.254.169.254 is refused",
        ),
        case_body(
            "nat64-metadata",
            "http",
            "nat64-metadata.test",
            403,
            "169.254.169.254 is refused",
        ),
        case_body(
            "private",
            "http",
            "private.test",
            403,
            "10.1.2.3 is in private 10.0.0.0/8",
        ),
        case_body(
            "mapped-private",
            "http",
            "mapped-private.test",
            403,
            "10.1.2.3 is in private",
        ),
        case_body("cgnat", "http", "cgnat.test", 403, "100.64.0.0/10"),
        case_body("loopback", "http", "loop.test", 403, "loopback"),
        // one refused and one good address: only the good one is dialled
        case("mixed", "http", "mixed.test", Ok),
        case("v6-name", "http", "v6.test", Ok),
        // IP literals need --allow-cidr
        case_body(
            "literal-v4",
            "http",
            SERVER,
            403,
            "no --allow-cidr rule covers 198.51.100.2",
        ),
        case("literal-v4-https", "https", SERVER, Refused(403)),
        case("literal-v6", "http", "[2001:db8:100::2]", Refused(403)),
        case(
            "literal-v4mapped",
            "http",
            "[::ffff:198.51.100.2]",
            Refused(403),
        ),
        case("literal-metadata", "http", "169.254.169.254", Refused(403)),
    ];
    run_curl_table(&mut lab, &sb, &cases);
    let ev = proxy_events(&events);
    let find = |host: &str| {
        ev.iter()
            .find(|e| e["host"] == host && e["verdict"] == "allow")
            .unwrap_or_else(|| panic!("no allow event for {host}: {ev:#?}"))
            .clone()
    };
    assert_eq!(find("mixed.test")["addr"], SERVER, "{ev:#?}");
    assert_eq!(find("v6.test")["addr"], "2001:db8:100::2", "{ev:#?}");
    let peers: Vec<_> = lab
        .requests_matching("/case/v6-name")
        .iter()
        .map(|r| r["peer"].clone())
        .collect();
    assert_eq!(peers, vec![json!("2001:db8:100::1")]);
}

#[test]
fn allow_cidr_opens_ip_literals_but_never_metadata() {
    let mut lab = ProxyLab::new();
    use Want::*;
    // A network without a port.
    let sb = Sandbox::allow(&["allowed.test"]).cidr(&["198.51.100.0/24"]);
    let cases = vec![
        case("v4", "http", SERVER, Ok),
        case("v4-https", "https", SERVER, Ok),
        case("v4-8080", "http", "198.51.100.2:8080", Ok),
        case("v4mapped", "http", "[::ffff:198.51.100.2]", Ok),
        case("v6-not-covered", "http", "[2001:db8:100::2]", Refused(403)),
        case("other-net", "http", "203.0.113.2", Refused(403)),
    ];
    run_curl_table(&mut lab, &sb, &cases);

    // A network with a port.
    let sb = Sandbox::allow(&["allowed.test"]).cidr(&["[2001:db8:100::/64]:8080"]);
    let cases = vec![
        case("v6-port", "http", "[2001:db8:100::2]:8080", Ok),
        case("v6-other-port", "http", "[2001:db8:100::2]", Refused(403)),
    ];
    run_curl_table(&mut lab, &sb, &cases);

    // Even "everything" never opens link-local / metadata / multicast.
    let sb = Sandbox::allow(&["metadata.test", "mapped-metadata.test"]).cidr(&[
        "0.0.0.0/0",
        "::/0",
        "169.254.0.0/16",
    ]);
    let cases = vec![
        case("everything-control", "http", SERVER, Ok),
        case_body(
            "md-literal",
            "http",
            "169.254.169.254",
            403,
            "link-local 169.254.0.0/16",
        ),
        case(
            "md-literal-mapped",
            "http",
            "[::ffff:169.254.169.254]",
            Refused(403),
        ),
        case(
            "md-literal-compat",
            "http",
            "[::169.254.169.254]",
            Refused(403),
        ),
        case(
            "md-literal-nat64",
            "http",
            "[64:ff9b::a9fe:a9fe]",
            Refused(403),
        ),
        case("md-alibaba", "http", "100.100.100.200", Refused(403)),
        case("md-aws-v6", "http", "[fd00:ec2::254]", Refused(403)),
        case("v6-link-local", "http", "[fe80::1]", Refused(403)),
        case("multicast", "http", "224.0.0.1", Refused(403)),
        case("md-name", "http", "metadata.test", Refused(403)),
        case(
            "md-name-mapped",
            "http",
            "mapped-metadata.test",
            Refused(403),
        ),
    ];
    run_curl_table(&mut lab, &sb, &cases);
}

/// Loopback behind an allowed name: refused, unless --allow-cidr covers it.
#[test]
fn loopback_target_needs_allow_cidr() {
    let lab = ProxyLab::new();
    let port = lab.fx.port();
    let counter = TcpCounter::bind(
        &lab.fx.client,
        SocketAddr::from(([127, 0, 0, 1], port)),
        false,
    );
    let connect = json!([{
        "name": "connect",
        "data": format!("CONNECT loop.test:{port} HTTP/1.1\r\nHost: loop.test:{port}\r\n{{AUTH}}\r\n"),
    }]);
    let rule = format!("loop.test:{port}");
    let (r, out) = lab.raw(&Sandbox::allow(&[&rule]), &connect);
    assert_eq!(r["connect"]["status"], 403, "{r:#}\n{}", out.describe());
    assert!(
        r["connect"]["body"]
            .as_str()
            .unwrap_or_default()
            .contains("loopback 127.0.0.0/8"),
        "{r:#}"
    );
    assert_eq!(
        counter.count(),
        0,
        "nothing may reach the loopback listener"
    );

    let cidr = format!("127.0.0.1/32:{port}");
    let (r, out) = lab.raw(&Sandbox::allow(&[&rule]).cidr(&[&cidr]), &connect);
    assert_eq!(r["connect"]["status"], 200, "{r:#}\n{}", out.describe());
    assert!(
        sys::wait_until(Duration::from_secs(5), || counter.count() == 1),
        "the tunnel should reach the loopback listener once, got {}",
        counter.count()
    );
}

// ---------------------------------------------------------------------------
// Python urllib and git

#[test]
fn python_urllib_http_and_https() {
    let lab = ProxyLab::new();
    let sb = Sandbox::allow(&["allowed.test", "*.wild.test"]);
    let ca = lab.pki.ca.display().to_string();
    let (v, out) = lab.python(
        &sb,
        &[
            "urllib",
            "--cafile",
            &ca,
            "http://allowed.test/case/py-http",
            "https://allowed.test/case/py-https",
            "https://a.wild.test/case/py-https-wild",
            "http://evil.test/case/py-http-denied",
            "https://evil.test/case/py-https-denied",
        ],
    );
    assert_eq!(out.code(), 0, "{}", out.describe());
    let r = v.as_array().expect("list of results");
    let body = |i: usize| -> Value {
        serde_json::from_str(r[i]["body"].as_str().unwrap_or("null")).unwrap_or(Value::Null)
    };
    assert_eq!(r[0]["status"], 200, "{v:#}");
    assert_eq!(body(0)["host"], "allowed.test", "{v:#}");
    assert_eq!(r[1]["status"], 200, "{v:#}");
    assert_eq!(body(1)["tls"], true, "{v:#}");
    assert_eq!(body(1)["sni"], "allowed.test", "{v:#}");
    assert_eq!(r[2]["status"], 200, "{v:#}");
    assert_eq!(body(2)["sni"], "a.wild.test", "{v:#}");
    assert_eq!(r[3]["status"], 403, "{v:#}");
    assert!(
        r[3]["body"]
            .as_str()
            .unwrap_or_default()
            .contains("evil.test:80 is not allowed by any allow-domain rule"),
        "{v:#}"
    );
    assert!(
        r[4]["error"].as_str().unwrap_or_default().contains("403"),
        "urllib should report the refused tunnel: {v:#}"
    );
    assert!(lab.requests_matching("denied").is_empty());
    assert_eq!(lab.requests_matching("/case/py-").len(), 3);
}

#[test]
fn git_clone_over_https() {
    let lab = ProxyLab::new();
    let sb = Sandbox::allow(&["git.test"]);
    let dest = lab.scratch("clone");
    let ok = dest.join("ok").display().to_string();
    let bad = dest.join("bad").display().to_string();
    let script = format!(
        "git clone -q https://git.test/repo.git {ok} && cat {ok}/README; \
         echo CLONE_OK=$?; \
         git clone -q https://evil.test/repo.git {bad}; echo CLONE_BAD=$?"
    );
    let out = lab.exec(&sb, &["sh", "-c", &script]);
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert!(
        out.stdout.contains(&lab.repo_marker) && out.stdout.contains("CLONE_OK=0"),
        "the clone should succeed and contain the marker: {}",
        out.describe()
    );
    assert!(
        !out.stdout.contains("CLONE_BAD=0") && out.stderr.contains("403"),
        "cloning from a refused host must fail with the proxy's 403: {}",
        out.describe()
    );
    // Smart HTTP: ref advertisement and upload-pack went through, all with
    // SNI git.test; nothing for evil.test.
    let reqs = lab.requests_matching("/repo.git/");
    assert!(
        reqs.iter().any(|r| r["target"]
            .as_str()
            .unwrap()
            .contains("service=git-upload-pack")),
        "{reqs:#?}"
    );
    assert!(
        reqs.iter().any(|r| r["method"] == "POST"),
        "no git-upload-pack POST: {reqs:#?}"
    );
    assert!(reqs.iter().all(|r| r["sni"] == "git.test"), "{reqs:#?}");
}

// ---------------------------------------------------------------------------
// Raw requests: Host header, framing, request targets, credentials

#[derive(Debug, Clone, Copy)]
enum RawWant {
    Status(u16),
    /// 400 or 403: refused one way or another, never forwarded.
    Refused,
}

/// Runs the raw cases in one sandbox; returns the results and every mismatch.
fn raw_check(
    lab: &ProxyLab,
    sb: &Sandbox,
    cases: &[(&str, String, RawWant)],
) -> (Value, Vec<String>, CmdOutput) {
    let spec: Vec<Value> = cases
        .iter()
        .map(|(n, d, _)| json!({"name": n, "data": d}))
        .collect();
    let (r, out) = lab.raw(sb, &Value::Array(spec));
    assert_eq!(out.code(), 0, "{}", out.describe());
    let mut bad = Vec::new();
    for (name, data, want) in cases {
        let got = &r[*name];
        let status = got["status"].as_u64().map(|s| s as u16);
        let ok = match want {
            RawWant::Status(s) => status == Some(*s),
            RawWant::Refused => matches!(status, Some(400) | Some(403)),
        };
        if !ok {
            bad.push(format!(
                "{name}: expected {want:?}, got {:?}\n    request: {data:?}\n    response: {:?} {:?}",
                got["status_line"], got["head"], got["body"]
            ));
        }
    }
    (r, bad, out)
}

fn raw_table(lab: &ProxyLab, sb: &Sandbox, cases: &[(&str, String, RawWant)]) -> Value {
    let (r, bad, out) = raw_check(lab, sb, cases);
    assert!(
        bad.is_empty(),
        "{} of {} raw cases wrong:\n  {}\n--- agent stderr ---\n{}",
        bad.len(),
        cases.len(),
        bad.join("\n  "),
        out.stderr
    );
    r
}

fn get(url: &str, host: &str) -> String {
    format!("GET {url} HTTP/1.1\r\nHost: {host}\r\n{{AUTH}}\r\n")
}

fn connect(authority: &str) -> String {
    format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{{AUTH}}\r\n")
}

#[test]
fn host_header_and_request_target_checks() {
    let mut lab = ProxyLab::new();
    let sb = Sandbox::allow(&["allowed.test", "*.wild.test"]);
    use RawWant::*;
    let u = "http://allowed.test/case/raw";
    let cases: Vec<(&str, String, RawWant)> = vec![
        (
            "control",
            get(&format!("{u}-control"), "allowed.test"),
            Status(200),
        ),
        (
            "host-normalised",
            get(&format!("{u}-host-normalised"), "ALLOWED.Test."),
            Status(200),
        ),
        (
            "host-with-port",
            get(&format!("{u}-host-with-port"), "allowed.test:80"),
            Status(200),
        ),
        (
            "host-mismatch",
            get(&format!("{u}-hm"), "evil.test"),
            Status(400),
        ),
        (
            "host-mismatch-allowed",
            get(&format!("{u}-hm2"), "a.wild.test"),
            Status(400),
        ),
        (
            "host-port-mismatch",
            get(&format!("{u}-hpm"), "allowed.test:8080"),
            Status(400),
        ),
        (
            "host-evil-url-allowed",
            get("http://evil.test/case/raw-heu", "allowed.test"),
            Refused,
        ),
        (
            "host-missing",
            format!("GET {u}-nohost HTTP/1.1\r\n{{AUTH}}\r\n"),
            Status(400),
        ),
        (
            "host-twice",
            format!("GET {u}-h2 HTTP/1.1\r\nHost: allowed.test\r\nHost: evil.test\r\n{{AUTH}}\r\n"),
            Status(400),
        ),
        (
            "origin-form",
            "GET /case/raw-origin HTTP/1.1\r\nHost: allowed.test\r\n{AUTH}\r\n".to_string(),
            Status(400),
        ),
        (
            "https-absolute-form",
            get("https://allowed.test/case/raw-https-abs", "allowed.test"),
            Status(400),
        ),
        (
            "ftp-scheme",
            get("ftp://allowed.test/case/raw-ftp", "allowed.test"),
            Status(400),
        ),
        (
            "userinfo",
            get("http://allowed.test@evil.test/case/raw-ui", "evil.test"),
            Refused,
        ),
        (
            "userinfo-allowed",
            get("http://user:pw@allowed.test/case/raw-ui2", "allowed.test"),
            Status(400),
        ),
        // Request targets for CONNECT
        ("connect-ok", connect("allowed.test:443"), Status(200)),
        (
            "connect-upper-dot",
            connect("ALLOWED.TEST.:443"),
            Status(200),
        ),
        ("connect-no-port", connect("allowed.test"), Status(400)),
        ("connect-port-0", connect("allowed.test:0"), Status(400)),
        (
            "connect-two-dots",
            connect("allowed.test..:443"),
            Status(400),
        ),
        ("connect-leading-dot", connect(".allowed.test:443"), Refused),
        (
            "connect-empty-label",
            connect("a..wild.test:443"),
            Status(400),
        ),
        ("connect-percent", connect("allowed%2etest:443"), Refused),
        (
            "connect-underscore",
            connect("a_b.wild.test:443"),
            Status(400),
        ),
        (
            "connect-lookalike",
            connect("xn--llowed-2nf.test:443"),
            Status(403),
        ),
        (
            "connect-ulabel-raw",
            connect("ａｌｌｏｗｅｄ.test:443"),
            Refused,
        ),
        ("connect-decimal-ip", connect("3325256706:443"), Refused),
        ("connect-short-ip", connect("198.51.100.2.:443"), Refused),
        ("connect-hex-ip", connect("0xc6.51.100.2:443"), Refused),
        ("connect-literal", connect("198.51.100.2:443"), Status(403)),
        (
            "connect-literal-v6",
            connect("[2001:db8:100::2]:443"),
            Status(403),
        ),
        (
            "connect-literal-mapped",
            connect("[::ffff:198.51.100.2]:443"),
            Status(403),
        ),
        (
            "connect-suffix",
            connect("allowed.test.evil.test:443"),
            Status(403),
        ),
        ("connect-apex", connect("wild.test:443"), Status(403)),
        (
            "connect-userinfo",
            connect("allowed.test@evil.test:443"),
            Refused,
        ),
    ];
    let r = raw_table(&lab, &sb, &cases);
    let body = r["connect-lookalike"]["body"].as_str().unwrap_or_default();
    assert!(
        body.contains("xn--llowed-2nf.test:443 is not allowed by any allow-domain rule"),
        "403 body should name the normalised host and the rule: {body:?}"
    );
    let body = r["host-mismatch"]["body"].as_str().unwrap_or_default();
    assert!(
        body.contains("does not match"),
        "400 body should say why: {body:?}"
    );
    // Only the three controls reached the server.
    lab.assert_servers_alive();
    let mut seen: Vec<String> = lab
        .requests_matching("/case/raw")
        .iter()
        .map(|r| r["target"].as_str().unwrap_or_default().to_string())
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            "/case/raw-control",
            "/case/raw-host-normalised",
            "/case/raw-host-with-port"
        ],
        "only the well-formed requests may be forwarded"
    );
}

/// Request-smuggling shapes are refused with 400 and nothing reaches the
/// server; whatever the server does receive never carries conflicting framing.
#[test]
fn request_smuggling_shapes_are_refused() {
    let mut lab = ProxyLab::new();
    let sb = Sandbox::allow(&["allowed.test"]);
    use RawWant::*;
    let post = |path: &str, headers: &str, body: &str| {
        format!(
            "POST http://allowed.test/case/{path} HTTP/1.1\r\nHost: allowed.test\r\n{{AUTH}}{headers}\r\n{body}"
        )
    };
    let cases: Vec<(&str, String, RawWant)> = vec![
        (
            "control-cl",
            post("smug-control-cl", "Content-Length: 5\r\n", "hello"),
            Status(200),
        ),
        (
            "control-te",
            post(
                "smug-control-te",
                "Transfer-Encoding: chunked\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            Status(200),
        ),
        (
            "cl-then-te",
            post(
                "smug-cl-te",
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
            Status(200),
        ),
        (
            "te-then-cl",
            post(
                "smug-te-cl",
                "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
                "0\r\n\r\n",
            ),
            Status(200),
        ),
        (
            "cl-te-with-smuggled-request",
            post(
                "smug-outer",
                "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\nGET http://allowed.test/case/smug-inner HTTP/1.1\r\nHost: allowed.test\r\n{AUTH}\r\n",
            ),
            Status(200),
        ),
        (
            "two-content-lengths-differ",
            post(
                "smug-cl-cl-differ",
                "Content-Length: 1\r\nContent-Length: 5\r\n",
                "hello",
            ),
            Status(400),
        ),
        (
            "two-content-lengths-equal",
            post(
                "smug-cl-cl-equal",
                "Content-Length: 5\r\nContent-Length: 5\r\n",
                "hello",
            ),
            Status(200),
        ),
        (
            "content-length-list",
            post("smug-cl-list", "Content-Length: 5, 5\r\n", "hello"),
            Status(400),
        ),
        (
            "te-not-chunked-last",
            post(
                "smug-te-identity",
                "Transfer-Encoding: chunked, identity\r\n",
                "0\r\n\r\n",
            ),
            Status(400),
        ),
        (
            "te-obfuscated",
            post("smug-te-x", "Transfer-Encoding: xchunked\r\n", "0\r\n\r\n"),
            Status(400),
        ),
        (
            "te-space-before-colon",
            post(
                "smug-te-space",
                "Transfer-Encoding : chunked\r\n",
                "0\r\n\r\n",
            ),
            Status(400),
        ),
        (
            "cl-negative",
            post("smug-cl-neg", "Content-Length: -1\r\n", ""),
            Status(400),
        ),
        (
            "cl-plus",
            post("smug-cl-plus", "Content-Length: +5\r\n", "hello"),
            Status(400),
        ),
        (
            "obs-fold",
            post(
                "smug-fold",
                "X-Padding: a\r\n Transfer-Encoding: chunked\r\n",
                "",
            ),
            Status(400),
        ),
        (
            "bare-lf-te",
            "POST http://allowed.test/case/smug-lf HTTP/1.1\nHost: allowed.test\n{AUTH}Content-Length: 5\nTransfer-Encoding: chunked\n\n0\r\n\r\n".to_string(),
            Status(200),
        ),
    ];
    let (_, mut bad, out) = raw_check(&lab, &sb, &cases);
    lab.assert_servers_alive();
    let mut seen: Vec<String> = lab
        .requests_matching("/case/smug")
        .iter()
        .map(|r| r["target"].as_str().unwrap_or_default().to_string())
        .collect();
    seen.sort();
    // hyper follows RFC 9112 §6.1 / RFC 9110 §8.6: with both Transfer-Encoding
    // and Content-Length the request is read as chunked, Content-Length is
    // dropped and the connection is closed after the response; identical
    // duplicate Content-Length values are merged. The proxy re-serialises
    // every request, so the server only ever sees one framing, and nothing
    // after the chunked body (the smuggled inner request) is ever forwarded.
    let expected = [
        "/case/smug-cl-cl-equal",
        "/case/smug-cl-te",
        "/case/smug-control-cl",
        "/case/smug-control-te",
        "/case/smug-lf",
        "/case/smug-outer",
        "/case/smug-te-cl",
    ];
    if seen != expected {
        bad.push(format!(
            "only the well-framed controls and the normalised CL+TE shapes may reach the server (never smug-inner); it received {seen:?}"
        ));
    }
    for rec in lab.server_records() {
        let names: Vec<String> = rec["headers"]
            .as_array()
            .map(|h| {
                h.iter()
                    .map(|kv| kv[0].as_str().unwrap_or_default().to_ascii_lowercase())
                    .collect()
            })
            .unwrap_or_default();
        let cl = names.iter().filter(|n| *n == "content-length").count();
        let te = names.iter().filter(|n| *n == "transfer-encoding").count();
        if cl > 1 || (cl == 1 && te > 0) {
            bad.push(format!("the server received ambiguous framing: {rec}"));
        }
    }
    assert!(
        bad.is_empty(),
        "{} problems:\n  {}\n--- server log ---\n{}\n--- agent stderr ---\n{}",
        bad.len(),
        bad.join("\n  "),
        lab.requests_matching("/case/smug")
            .iter()
            .map(|r| format!("{} {} headers={}", r["method"], r["target"], r["headers"]))
            .collect::<Vec<_>>()
            .join("\n"),
        out.stderr
    );
}

#[test]
fn proxy_credentials_are_required() {
    let lab = ProxyLab::new();
    let sb = Sandbox::allow(&["allowed.test"]);
    use RawWant::*;
    let u = "http://allowed.test/case/auth";
    let no_auth_get = format!("GET {u}-none HTTP/1.1\r\nHost: allowed.test\r\n\r\n");
    let cases: Vec<(&str, String, RawWant)> = vec![
        ("control", get(&format!("{u}-control"), "allowed.test"), Status(200)),
        ("control-connect", connect("allowed.test:443"), Status(200)),
        ("get-no-auth", no_auth_get, Status(407)),
        (
            "connect-no-auth",
            "CONNECT allowed.test:443 HTTP/1.1\r\nHost: allowed.test:443\r\n\r\n".to_string(),
            Status(407),
        ),
        (
            "get-wrong-secret",
            format!("GET {u}-wrong HTTP/1.1\r\nHost: allowed.test\r\n{{AUTH:nono:0123456789abcdef0123456789abcdef}}\r\n"),
            Status(407),
        ),
        (
            "connect-wrong-secret",
            "CONNECT allowed.test:443 HTTP/1.1\r\nHost: allowed.test:443\r\n{AUTH:nono:wrong}\r\n"
                .to_string(),
            Status(407),
        ),
        (
            "connect-wrong-user",
            "CONNECT allowed.test:443 HTTP/1.1\r\nHost: allowed.test:443\r\n{AUTH:other:{SECRET}}\r\n"
                .to_string(),
            Status(407),
        ),
        (
            "connect-secret-prefix",
            "CONNECT allowed.test:443 HTTP/1.1\r\nHost: allowed.test:443\r\n{AUTH:nono:{SECRET}x}\r\n"
                .to_string(),
            Status(407),
        ),
        (
            "connect-empty-secret",
            "CONNECT allowed.test:443 HTTP/1.1\r\nHost: allowed.test:443\r\n{AUTH:nono:}\r\n"
                .to_string(),
            Status(407),
        ),
        (
            "connect-bearer",
            "CONNECT allowed.test:443 HTTP/1.1\r\nHost: allowed.test:443\r\nProxy-Authorization: Bearer {SECRET}\r\n\r\n"
                .to_string(),
            Status(407),
        ),
        (
            "connect-plain-secret",
            "CONNECT allowed.test:443 HTTP/1.1\r\nHost: allowed.test:443\r\nProxy-Authorization: Basic nono:{SECRET}\r\n\r\n"
                .to_string(),
            Status(407),
        ),
        (
            "get-authorization-not-proxy",
            format!("GET {u}-authz HTTP/1.1\r\nHost: allowed.test\r\nAuthorization: Basic bm9ubzp4\r\n\r\n"),
            Status(407),
        ),
    ];
    let r = raw_table(&lab, &sb, &cases);
    let head = r["connect-no-auth"]["head"].as_str().unwrap_or_default();
    assert!(
        head.to_ascii_lowercase()
            .contains("proxy-authenticate: basic realm=\"nono-agent\""),
        "407 must carry Proxy-Authenticate: {head:?}"
    );
    let seen = lab.requests_matching("/case/auth");
    assert_eq!(seen.len(), 1, "only the control may arrive: {seen:#?}");
    // The secret is not forwarded to the origin.
    let hdrs = seen[0]["headers"].to_string().to_ascii_lowercase();
    assert!(
        !hdrs.contains("proxy-authorization"),
        "Proxy-Authorization must not be forwarded: {hdrs}"
    );
}

// ---------------------------------------------------------------------------
// Cross-sandbox relay and direct connections

/// Sandbox A may connect to sandbox B's proxy (both are on loopback), but
/// without B's secret it gets 407; and A must not be able to learn B's secret
/// from B's environment.
#[test]
fn cross_sandbox_relay_needs_the_other_secret_which_is_not_visible() {
    let lab = ProxyLab::new();
    let dir = lab.scratch("relay");
    let info = dir.join("b.info");
    let go = dir.join("b.go");
    let b_script = format!(
        "echo \"$NONO_CGROUP $HTTP_PROXY\" > {info}.tmp && mv {info}.tmp {info}; \
         n=0; while [ ! -e {go} ] && [ $n -lt 1200 ]; do sleep 0.05; n=$((n+1)); done",
        info = info.display(),
        go = go.display()
    );
    let mut b_cmd = lab.command(&Sandbox::allow(&["b-only.test"]), &["sh", "-c", &b_script]);
    let mut b = Background::spawn(&mut b_cmd, "sandbox B", &dir);
    b.wait_ready(&info, Duration::from_secs(20));
    let text = fs::read_to_string(&info).unwrap();
    let (b_cgroup, b_url) = text.trim().split_once(' ').expect("cgroup and url");
    let (b_secret, b_port) = parse_proxy_url(b_url).expect("B's proxy URL");
    // B's command as the host sees it (its own $$ may be namespace-relative).
    let procs = fs::read_to_string(format!("{b_cgroup}/cgroup.procs")).unwrap_or_default();
    let b_pid = procs
        .split_whitespace()
        .find(|pid| {
            fs::read(format!("/proc/{pid}/environ"))
                .map(|e| String::from_utf8_lossy(&e).contains(&b_secret))
                .unwrap_or(false)
        })
        .unwrap_or_else(|| panic!("no process of B in {b_cgroup} ({procs:?}) has its secret"))
        .to_string();
    let b_pid = b_pid.as_str();

    let auth_b = format!("{{AUTH:nono:{b_secret}}}");
    let cases = json!([
        {"name": "no-auth", "port": b_port,
         "data": "CONNECT b-only.test:443 HTTP/1.1\r\nHost: b-only.test:443\r\n\r\n"},
        {"name": "a-secret", "port": b_port,
         "data": "CONNECT b-only.test:443 HTTP/1.1\r\nHost: b-only.test:443\r\n{AUTH}\r\n"},
        {"name": "a-secret-http", "port": b_port,
         "data": "GET http://b-only.test/case/relay-a HTTP/1.1\r\nHost: b-only.test\r\n{AUTH}\r\n"},
        {"name": "own-proxy",
         "data": "GET http://b-only.test/case/relay-own HTTP/1.1\r\nHost: b-only.test\r\n{AUTH}\r\n"},
        // What B's secret would buy (the test knows it; A must not).
        {"name": "b-secret", "port": b_port,
         "data": format!("GET http://b-only.test/case/relay-b HTTP/1.1\r\nHost: b-only.test\r\n{auth_b}\r\n")},
    ]);
    let a = Sandbox::allow(&["allowed.test"]);
    let (r, out) = lab.raw(&a, &cases);
    let (env, env_out) = lab.python(&a, &["environ", b_pid]);
    let (scan, scan_out) = lab.python(&a, &["scan-environ"]);
    // Could A use what it found?
    let stolen = env["http_proxy"]
        .as_str()
        .or_else(|| {
            scan["foreign"]
                .as_object()
                .and_then(|m| m.values().next())
                .and_then(Value::as_str)
        })
        .and_then(parse_proxy_url)
        .map(|(s, _)| s);
    let relay = stolen.as_ref().map(|s| {
        let c = json!([{"name": "stolen", "port": b_port,
            "data": format!("GET http://b-only.test/case/relay-stolen HTTP/1.1\r\nHost: b-only.test\r\n{{AUTH:nono:{s}}}\r\n")}]);
        lab.raw(&a, &c).0["stolen"]["status"].clone()
    });
    fs::write(&go, "").unwrap();
    let st = sys::wait_child(&mut b.child, Duration::from_secs(30), "sandbox B");

    assert_eq!(out.code(), 0, "{}", out.describe());
    assert_eq!(r["no-auth"]["status"], 407, "{r:#}");
    assert_eq!(r["a-secret"]["status"], 407, "{r:#}");
    assert_eq!(r["a-secret-http"]["status"], 407, "{r:#}");
    assert_eq!(
        r["own-proxy"]["status"], 403,
        "A's own proxy refuses b-only.test: {r:#}"
    );
    assert_eq!(
        r["b-secret"]["status"], 200,
        "B's proxy with B's secret works (so the secret is the only barrier): {r:#}"
    );
    assert!(st.success(), "sandbox B: {st:?}");
    assert_eq!(env_out.code(), 0, "{}", env_out.describe());
    assert_eq!(scan_out.code(), 0, "{}", scan_out.describe());
    assert_eq!(
        scan["foreign"],
        json!({}),
        "sandbox A found other sandboxes' proxy URLs in /proc/*/environ; with B's, A's request \
         through B's proxy to a host only B may reach got {relay:?}"
    );
    assert_ne!(
        env["http_proxy"].as_str(),
        Some(b_url),
        "sandbox A could read /proc/{b_pid}/environ of sandbox B's command and so learn B's proxy \
         secret ({env}); with it, A's request through B's proxy to a host only B may reach got \
         {relay:?}"
    );
}

/// A client that ignores the proxy variables and connects directly is
/// stopped by the kernel layer: EPERM, and the server sees nothing.
#[test]
fn direct_connection_without_the_proxy_is_blocked() {
    let lab = ProxyLab::new();
    let port = lab.fx.port();
    lab.oracle.listen_tcp(port);
    // Outside the sandbox the same connection works (so the test can fail).
    let client = lab.client_py.display().to_string();
    let out = lab
        .fx
        .run_in_client(&["python3", &client, "direct", SERVER, &port.to_string()]);
    assert!(
        out.stdout.contains("\"connected\": true"),
        "{}",
        out.describe()
    );
    assert!(
        sys::wait_until(Duration::from_secs(5), || lab.oracle.tcp_connections(port)
            == 1),
        "the oracle did not see the outside connection"
    );
    lab.oracle.settle();
    let syns_before = lab.oracle.packets_to(Proto::Tcp, port);

    let script = format!(
        "unset HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy; \
         python3 {client} direct {SERVER} {port}; \
         curl -sS --max-time 5 -o /dev/null http://{SERVER}:{port}/; echo CURL=$?; \
         curl -sS --max-time 5 -o /dev/null --noproxy '*' http://[2001:db8:100::2]:{port}/; echo CURL6=$?"
    );
    let out = lab.exec(&Sandbox::allow(&["allowed.test"]), &["sh", "-c", &script]);
    assert_eq!(out.code(), 0, "{}", out.describe());
    let v: Value = out
        .stdout
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON: {}", out.describe()));
    assert_eq!(v["connected"], false, "{v}");
    assert_eq!(v["errno"], libc::EPERM, "{v}");
    assert!(out.stdout.contains("CURL=7"), "{}", out.describe());
    assert!(out.stdout.contains("CURL6=7"), "{}", out.describe());
    lab.oracle.settle();
    assert_eq!(
        lab.oracle.tcp_connections(port),
        1,
        "a direct connection arrived"
    );
    assert_eq!(
        lab.oracle.packets_to(Proto::Tcp, port),
        syns_before,
        "a packet to port {port} left the sandbox"
    );
}

// ---------------------------------------------------------------------------
// Load

#[test]
fn a_thousand_concurrent_tunnels() {
    let lab = ProxyLab::new();
    let events = lab.tmp.path("tunnels.jsonl");
    let rule = format!("echo.test:{ECHO_PORT}");
    let sb = Sandbox::allow(&[&rule]).events(&events);
    let started = Instant::now();
    let (v, out) = lab.python_timeout(
        &sb,
        &["tunnels", "1000", "echo.test", &ECHO_PORT.to_string(), "2"],
        Duration::from_secs(240),
    );
    let took = started.elapsed();
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert_eq!(
        v["failure_count"], 0,
        "tunnels failed ({took:?}): {v:#}\n{}",
        out.stderr
    );
    assert_eq!(v["ok"], 1000, "{v:#}");
    assert_eq!(
        v["open_at_once"], 1000,
        "all tunnels must be open at the same time: {v:#}"
    );
    assert_eq!(lab.echo_connections(), 1000, "echo server connections");
    let ev = proxy_events(&events);
    let allowed: Vec<&Value> = ev
        .iter()
        .filter(|e| e["hook"] == "connect" && e["verdict"] == "allow" && e["host"] == "echo.test")
        .collect();
    assert_eq!(
        allowed.len(),
        1000,
        "one allow event per tunnel; got {} ({} events in all)",
        allowed.len(),
        ev.len()
    );
    let bytes_up: u64 = allowed
        .iter()
        .map(|e| e["bytes_up"].as_u64().unwrap_or(0))
        .sum();
    let bytes_down: u64 = allowed
        .iter()
        .map(|e| e["bytes_down"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(bytes_up, v["bytes"].as_u64().unwrap(), "bytes_up in events");
    assert_eq!(
        bytes_down,
        v["bytes"].as_u64().unwrap(),
        "bytes_down in events"
    );
}

/// Every tunnel gets its event, also one still open (or still closing) when
/// the command exits: (1) a tunnel whose server keeps the connection open
/// after the command is gone; (2) 1000 tunnels closed just before the command
/// exits.
#[test]
fn tunnel_events_are_not_lost_when_the_command_exits() {
    let lab = ProxyLab::new();
    let mut bad = Vec::new();

    let events = lab.tmp.path("exit-hold.jsonl");
    let rule = format!("echo.test:{HOLD_PORT}");
    let sb = Sandbox::allow(&[&rule]).events(&events);
    let (v, out) = lab.python(
        &sb,
        &["tunnels", "1", "echo.test", &HOLD_PORT.to_string(), "0"],
    );
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert_eq!(v["ok"], 1, "{v:#}");
    let n = proxy_events(&events).len();
    if n != 1 {
        bad.push(format!(
            "a tunnel still open when the command exited: {n} events (expected 1)"
        ));
    }

    let events = lab.tmp.path("exit-1000.jsonl");
    let rule = format!("echo.test:{ECHO_PORT}");
    let sb = Sandbox::allow(&[&rule]).events(&events);
    let (v, out) = lab.python_timeout(
        &sb,
        &["tunnels", "1000", "echo.test", &ECHO_PORT.to_string(), "0"],
        Duration::from_secs(120),
    );
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert_eq!(v["ok"], 1000, "{v:#}");
    let n = proxy_events(&events)
        .iter()
        .filter(|e| e["hook"] == "connect" && e["verdict"] == "allow")
        .count();
    if n != 1000 {
        bad.push(format!(
            "1000 tunnels closed right before the command exited: {n} allow events"
        ));
    }
    assert!(
        bad.is_empty(),
        "tunnel events lost at exit:\n  {}",
        bad.join("\n  ")
    );
}

// ---------------------------------------------------------------------------
// Events and the exit summary

#[test]
fn events_record_allowed_and_denied_requests() {
    let lab = ProxyLab::new();
    let events = lab.tmp.path("events.jsonl");
    let sb = Sandbox::allow(&["allowed.test", "*.wild.test", "metadata.test"])
        .deny(&["blocked.wild.test"])
        .events(&events);
    let q = "curl -sS --max-time 20 -o /dev/null";
    // The final sleep lets the last tunnel close before the command exits
    // (events of tunnels still open at exit are tested separately, in
    // tunnel_events_are_not_lost_when_the_command_exits).
    let script = format!(
        "echo SANDBOX=$NONO_SANDBOX_ID; \
         {q} http://allowed.test/case/ev-http; \
         {q} http://evil.test/case/ev-denied; \
         {q} http://metadata.test/case/ev-metadata; \
         {q} https://blocked.wild.test/case/ev-deny-rule; \
         {q} https://allowed.test/case/ev-tunnel; \
         sleep 1"
    );
    let out = lab.exec(&sb, &["sh", "-c", &script]);
    assert_eq!(out.code(), 0, "{}", out.describe());
    let id = sandbox_id(&out);
    let ev = proxy_events(&events);
    let one = |hook: &str, verdict: &str, host: &str, port: u16| -> Value {
        let m: Vec<&Value> = ev
            .iter()
            .filter(|e| {
                e["hook"] == hook
                    && e["verdict"] == verdict
                    && e["host"] == host
                    && e["port"] == port
            })
            .collect();
        assert_eq!(
            m.len(),
            1,
            "expected one {hook} {verdict} event for {host}:{port}: {ev:#?}"
        );
        m[0].clone()
    };
    for e in &ev {
        assert_eq!(e["sandbox"], id.as_str(), "{e}");
        assert!(e["ts"].as_str().is_some_and(|t| t.ends_with('Z')), "{e}");
        assert!(e["duration_ms"].is_u64(), "{e}");
        assert!(e["bytes_up"].is_u64() && e["bytes_down"].is_u64(), "{e}");
    }
    let http = one("http", "allow", "allowed.test", 80);
    assert_eq!(http["addr"], SERVER, "{http}");
    assert!(http["bytes_down"].as_u64().unwrap() > 0, "{http}");
    assert!(
        http["reason"].as_str().unwrap().contains("status 200"),
        "{http}"
    );
    let tunnel = one("connect", "allow", "allowed.test", 443);
    assert_eq!(tunnel["addr"], SERVER, "{tunnel}");
    assert!(
        tunnel["bytes_up"].as_u64().unwrap() > 0 && tunnel["bytes_down"].as_u64().unwrap() > 0,
        "a TLS exchange moves bytes both ways: {tunnel}"
    );
    let denied = one("http", "deny", "evil.test", 80);
    assert!(
        denied["reason"]
            .as_str()
            .unwrap()
            .contains("evil.test:80 is not allowed by any allow-domain rule"),
        "{denied}"
    );
    assert!(denied.get("addr").is_none(), "{denied}");
    assert_eq!(denied["bytes_up"], 0);
    let md = one("http", "deny", "metadata.test", 80);
    assert!(
        md["reason"].as_str().unwrap().contains("169.254.169.254"),
        "{md}"
    );
    let rule = one("connect", "deny", "blocked.wild.test", 443);
    assert!(
        rule["reason"]
            .as_str()
            .unwrap()
            .contains("deny-domain blocked.wild.test"),
        "{rule}"
    );
    assert_eq!(ev.len(), 5, "exactly five proxy events: {ev:#?}");
}

#[test]
fn exit_summary_counts_proxy_denials() {
    let lab = ProxyLab::new();
    let client = lab.client_py.display().to_string();
    let q = "curl -sS --max-time 20 -o /dev/null";
    let script = format!(
        "echo SANDBOX=$NONO_SANDBOX_ID; \
         {q} http://allowed.test/case/sum-ok; \
         {q} http://evil.test/case/sum-1; \
         {q} https://evil.test/case/sum-2; \
         {q} http://metadata.test/case/sum-3; \
         python3 {client} direct {SERVER} 80; exit 3"
    );
    let sb = Sandbox::allow(&["allowed.test", "metadata.test"]);
    let out = lab.exec(&sb, &["sh", "-c", &script]);
    assert_eq!(out.code(), 3, "the command's exit code: {}", out.describe());
    let id = sandbox_id(&out);
    let (total, hooks) = parse_summary(&out.stderr, &id)
        .unwrap_or_else(|| panic!("no summary line: {}", out.describe()));
    let proxy = hooks.iter().find(|(h, _)| h == "proxy").map(|(_, n)| *n);
    assert_eq!(proxy, Some(3), "three proxy denials: {}", out.stderr);
    let bpf: u64 = hooks
        .iter()
        .filter(|(h, _)| h != "proxy")
        .map(|(_, n)| n)
        .sum();
    assert!(
        bpf >= 1,
        "the direct connect is a kernel denial: {}",
        out.stderr
    );
    assert_eq!(total, 3 + bpf, "{}", out.stderr);

    // No denial: "0 denied".
    let out = lab.exec(
        &sb,
        &["sh", "-c", "echo SANDBOX=$NONO_SANDBOX_ID; curl -sS -o /dev/null http://allowed.test/case/sum-clean"],
    );
    assert_eq!(out.code(), 0, "{}", out.describe());
    let id = sandbox_id(&out);
    assert_eq!(
        parse_summary(&out.stderr, &id),
        Some((0, vec![])),
        "{}",
        out.stderr
    );
}

#[test]
fn child_gets_the_proxy_environment() {
    let lab = ProxyLab::new();
    let out = lab.exec(&Sandbox::allow(&["allowed.test"]), &["env"]);
    assert_eq!(out.code(), 0, "{}", out.describe());
    let env: std::collections::HashMap<&str, &str> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .collect();
    let url = env["HTTP_PROXY"];
    let (secret, port) = parse_proxy_url(url).unwrap_or_else(|| panic!("HTTP_PROXY={url}"));
    assert_eq!(secret.len(), 32, "128-bit hex secret: {url}");
    assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()), "{url}");
    assert_ne!(port, 0);
    for k in [
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        assert_eq!(env.get(k), Some(&url), "{k}");
    }
    for k in ["NO_PROXY", "no_proxy"] {
        let v = env.get(k).copied().unwrap_or_default();
        assert!(
            v.contains("127.0.0.1") && v.contains("localhost"),
            "{k}={v}"
        );
    }
    assert_eq!(env.get("NODE_USE_ENV_PROXY"), Some(&"1"));
    // Each sandbox has its own secret.
    let out2 = lab.exec(&Sandbox::allow(&["allowed.test"]), &["env"]);
    let url2 = out2
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("HTTP_PROXY="))
        .unwrap_or_default()
        .to_string();
    assert_ne!(parse_proxy_url(&url2).map(|x| x.0), Some(secret));
}

// ---------------------------------------------------------------------------
// DNS

/// With --dns-server, an allowed name is resolved by that server; a refused
/// name is never even asked.
#[test]
fn dns_server_is_only_asked_for_allowed_names() {
    let mut lab = ProxyLab::new();
    let sb = Sandbox {
        dns_server: Some(lab.dns_addr().to_string()),
        ..Sandbox::allow(&["dns-ok.test", "dns-meta.test", "dns-v6.test", "nx.test"])
    };
    use Want::*;
    let cases = vec![
        case("dns-ok", "http", "dns-ok.test", Ok),
        case("dns-ok-https", "https", "dns-ok.test", Ok),
        case("dns-v6", "http", "dns-v6.test", Ok),
        case_body("dns-denied", "http", "dns-denied.test", 403, "not allowed"),
        case("dns-denied-https", "https", "dns-denied.test", Refused(403)),
        case_body(
            "dns-meta",
            "http",
            "dns-meta.test",
            403,
            "169.254.169.254 is refused",
        ),
        case_body(
            "dns-nx",
            "http",
            "nx.test",
            502,
            "DNS lookup of nx.test failed",
        ),
    ];
    run_curl_table(&mut lab, &sb, &cases);
    let q = lab.dns_queries();
    for name in ["dns-ok.test", "dns-meta.test", "dns-v6.test", "nx.test"] {
        assert!(
            q.iter().any(|n| n == name),
            "{name} was not looked up: {q:?}"
        );
    }
    assert!(
        !q.iter().any(|n| n.contains("dns-denied")),
        "a refused name reached the DNS server: {q:?}"
    );
    let allowed = ["dns-ok.test", "dns-meta.test", "dns-v6.test", "nx.test"];
    assert!(
        q.iter().all(|n| allowed.contains(&n.as_str())),
        "only allowed names may be looked up: {q:?}"
    );
}

// ---------------------------------------------------------------------------
// `nono-agent proxy` standalone

/// Runs `nono-agent proxy ARGS` and waits up to 10 s; `None` if it was still
/// running (then it is killed).
fn standalone_exit(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(sys::agent_bin())
        .arg("proxy")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nono-agent proxy");
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        match child.try_wait().expect("wait") {
            Some(st) => break st.code().or(Some(-1)),
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            None => {
                sys::kill_pid(child.id() as i32);
                let _ = child.wait();
                break None;
            }
        }
    };
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    (code, err)
}

#[test]
fn standalone_proxy_rejects_bad_cli_values() {
    sys::require_prereqs();
    let listen = ["--listen", "127.0.0.1:0"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--allow-domain", "a..b.test"], "a..b.test"),
        (vec!["--allow-domain", "*.*.wild.test"], "*.*.wild.test"),
        (vec!["--allow-domain", "a*.test"], "a*.test"),
        (vec!["--allow-domain", "exa mple.test"], "exa mple.test"),
        (
            vec!["--allow-domain", "under_score.test"],
            "under_score.test",
        ),
        (vec!["--allow-domain", "allowed.test:0"], "allowed.test:0"),
        (
            vec!["--allow-domain", "allowed.test:99999"],
            "allowed.test:99999",
        ),
        (vec!["--allow-domain", "198.51.100.2"], "198.51.100.2"),
        (vec!["--allow-domain", ""], "--allow-domain"),
        (vec!["--deny-domain=-bad-.test"], "-bad-.test"),
        (vec!["--allow-cidr", "198.51.100.0/33"], "198.51.100.0/33"),
        (vec!["--allow-cidr", "banana"], "banana"),
        (
            vec!["--allow-cidr", "198.51.100.0/24:0"],
            "198.51.100.0/24:0",
        ),
        (vec!["--allow-cidr", "[2001:db8::/32]x"], "[2001:db8::/32]x"),
        (vec!["--resolve", "allowed.test=not-an-ip"], "not-an-ip"),
        (vec!["--resolve", "allowed.test"], "allowed.test"),
        (
            vec!["--resolve", "bad name.test=198.51.100.2"],
            "bad name.test",
        ),
        (
            vec!["--resolve", "allowed.test=198.51.100.2,"],
            "allowed.test=198.51.100.2,",
        ),
        (vec!["--dns-server", "198.51.100.53"], "198.51.100.53"),
        (
            vec!["--upstream-proxy", "https://proxy.test:3128"],
            "https://proxy.test:3128",
        ),
        (
            vec!["--upstream-proxy", "http://proxy.test"],
            "http://proxy.test",
        ),
    ];
    let mut bad = Vec::new();
    for (args, needle) in &cases {
        let mut full: Vec<&str> = listen.to_vec();
        full.extend_from_slice(args);
        if !args[0].contains("domain") {
            full.extend_from_slice(&["--allow-domain", "allowed.test"]);
        }
        let (code, err) = standalone_exit(&full);
        match code {
            Some(c) if c != 0 && err.contains(needle) => {}
            _ => bad.push(format!(
                "{args:?}: exit {code:?} (None = still running), stderr {err:?} \
                 (expected non-zero and a message naming {needle:?})"
            )),
        }
    }
    // A listen address that is not local: a runtime error naming it.
    let (code, err) =
        standalone_exit(&["--listen", "198.51.100.99:3128", "--allow-domain", "a.test"]);
    if code.is_none_or(|c| c == 0) || !err.contains("198.51.100.99:3128") {
        bad.push(format!(
            "unbindable --listen: exit {code:?}, stderr {err:?}"
        ));
    }
    assert!(
        bad.is_empty(),
        "bad CLI values accepted or not named:\n  {}",
        bad.join("\n  ")
    );
}

#[test]
fn standalone_proxy_serves_filters_and_summarises() {
    let lab = ProxyLab::new();
    let port = lab.fx.port();
    let events = lab.tmp.path("standalone.jsonl");
    let listen = format!("127.0.0.1:{port}");
    let mut cmd = lab.fx.client_command(&lab.agent);
    cmd.args(["proxy", "--listen", &listen, "--secret", "s3cret"])
        .args([
            "--allow-domain",
            "allowed.test",
            "--resolve",
            "allowed.test=198.51.100.2",
        ])
        .args(["--resolve", "evil.test=198.51.100.2"])
        .arg("--dns-server")
        .arg(lab.dns_addr().to_string())
        .arg("--events")
        .arg(&events);
    let dir = lab.scratch("standalone");
    let mut proxy = Background::spawn(&mut cmd, "nono-agent proxy", &dir);
    let up = sys::wait_until(Duration::from_secs(10), || {
        fs::read_to_string(&proxy.stderr)
            .unwrap_or_default()
            .contains(&format!("proxy listening on {listen}"))
    });
    assert!(
        up,
        "standalone proxy did not start: {:?}",
        fs::read_to_string(&proxy.stderr)
    );
    let ca = lab.pki.ca.display().to_string();
    let curl = |proxy_url: &str, url: &str| -> String {
        let out = lab.fx.run_in_client(&[
            "curl",
            "-sS",
            "--max-time",
            "20",
            "--cacert",
            &ca,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_connect}",
            "-x",
            proxy_url,
            url,
        ]);
        out.stdout.trim().to_string()
    };
    let good = format!("http://nono:s3cret@{listen}");
    let wrong = format!("http://nono:wrong@{listen}");
    let none = format!("http://{listen}");
    let results = [
        curl(&good, "http://allowed.test/case/sa-http"),
        curl(&good, "https://allowed.test/case/sa-https"),
        curl(&good, "http://evil.test/case/sa-denied"),
        curl(&wrong, "http://allowed.test/case/sa-wrong"),
        curl(&none, "https://allowed.test/case/sa-none"),
    ];
    // SIGTERM: a clean exit with the summary line.
    // SAFETY: plain syscall on the pid of the process this test started.
    unsafe { libc::kill(proxy.pid(), libc::SIGTERM) };
    let st = sys::wait_child(
        &mut proxy.child,
        Duration::from_secs(10),
        "nono-agent proxy",
    );
    let stderr = fs::read_to_string(&proxy.stderr).unwrap_or_default();
    assert_eq!(
        results,
        [
            "200 000".to_string(),
            "200 200".into(),
            "403 000".into(),
            "407 000".into(),
            "000 407".into()
        ],
        "{stderr}"
    );
    assert_eq!(lab.requests_matching("/case/sa-").len(), 2);
    assert!(
        st.success(),
        "SIGTERM should end it cleanly: {st:?}\n{stderr}"
    );
    assert_eq!(
        parse_summary(&stderr, "standalone"),
        Some((3, vec![("proxy".to_string(), 3)])),
        "{stderr}"
    );
    let ev = proxy_events(&events);
    assert_eq!(
        ev.iter().filter(|e| e["verdict"] == "allow").count(),
        2,
        "{ev:#?}"
    );
    assert_eq!(
        ev.iter().filter(|e| e["verdict"] == "deny").count(),
        3,
        "{ev:#?}"
    );
}

/// The tests need these tools; fail loudly (with the package name) if one is
/// missing rather than let every test fail obscurely.
#[test]
fn prerequisites_for_proxy_tests() {
    for (tool, pkg) in [
        ("python3", "python3"),
        ("openssl", "openssl"),
        ("git", "git"),
        ("curl", "curl"),
    ] {
        require_tool(tool, pkg);
    }
}
