//! Raw requests: Host header, framing, request targets, credentials.

use serde_json::{json, Value};

use nono_tests::proxylab::{ProxyLab, Sandbox};
use nono_tests::sys::CmdOutput;

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

pub(super) fn get(url: &str, host: &str) -> String {
    format!("GET {url} HTTP/1.1\r\nHost: {host}\r\n{{AUTH}}\r\n")
}

pub(super) fn connect(authority: &str) -> String {
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
