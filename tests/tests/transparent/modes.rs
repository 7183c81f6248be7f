//! What transparent mode must not break, and audit mode: loopback inside
//! the sandbox, the proxy variables (explicit proxy mode) alongside, and
//! `--audit --transparent` letting a not-allowed name through as
//! would-deny.

use nono_tests::proxylab::{proxy_events, CurlCase};

use super::{is_synthetic, transparent, TLab};

#[test]
fn loopback_still_works_with_transparent() {
    let t = TLab::new();
    let sb = transparent(&["allowed.test"]);
    for addr in ["127.0.0.1", "::1"] {
        let (r, out) = t.py(&sb, &["loopback", addr]);
        assert_eq!(r["got"], "ping", "{addr}: {r} {}", out.describe());
        // Not rewritten: the peer is the listener itself.
        assert_eq!(r["peer"], addr, "{r}");
    }
}

#[test]
fn the_proxy_variables_still_work_alongside() {
    let t = TLab::new();
    let ev = t.lab.tmp.path("explicit-events.jsonl");
    let sb = transparent(&["allowed.test"]).events(&ev);
    // lab.curl uses the HTTPS_PROXY the agent sets: a CONNECT tunnel.
    let (res, out) = t.lab.curl(
        &sb,
        &[
            CurlCase::new("t-explicit", "https://allowed.test/case/t-explicit"),
            CurlCase::new(
                "t-explicit-http",
                "http://allowed.test/case/t-explicit-http",
            ),
        ],
    );
    for r in &res {
        assert_eq!(r.http_code, 200, "{r:?} {}", out.describe());
    }
    assert_eq!(res[0].connect_code, 200, "a CONNECT tunnel: {:?}", res[0]);
    assert_eq!(t.lab.requests_to("/case/t-explicit").len(), 1);
    assert_eq!(t.lab.requests_to("/case/t-explicit-http").len(), 1);
    let hooks: Vec<String> = proxy_events(&ev)
        .iter()
        .map(|e| e["hook"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(hooks.contains(&"connect".to_string()), "{hooks:?}");
    assert!(hooks.contains(&"http".to_string()), "{hooks:?}");
    assert!(!hooks.contains(&"transparent".to_string()), "{hooks:?}");
}

#[test]
fn audit_lets_a_not_allowed_name_through_as_would_deny() {
    let t = TLab::new();
    let ev = t.lab.tmp.path("audit-events.jsonl");
    let mut sb = transparent(&["allowed.test"]).events(&ev);
    sb.extra.push("--audit".into());
    let (exit, code, body, out) = t.curl(&sb, &["https://evil.test/case/t-audit"]);
    assert_eq!((exit, code), (0, 200), "{body} {}", out.describe());
    let seen = t.lab.requests_to("/case/t-audit");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["sni"], "evil.test");
    let ev = proxy_events(&ev);
    let has = |hook: &str, verdict: &str| {
        ev.iter()
            .any(|e| e["hook"] == hook && e["verdict"] == verdict && e["host"] == "evil.test")
    };
    for (hook, verdict) in [
        ("dns", "would-deny"),
        ("dns", "allow"),
        ("transparent", "would-deny"),
        ("transparent", "allow"),
    ] {
        assert!(
            has(hook, verdict),
            "no {hook} {verdict} event for evil.test: {ev:#?}"
        );
    }
    let answered = ev
        .iter()
        .find(|e| e["hook"] == "dns" && e["verdict"] == "allow")
        .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default();
    let addr = answered.rsplit(' ').next().unwrap_or_default();
    assert!(is_synthetic(addr), "{answered}");
    // Never denied outright in audit mode.
    assert!(!ev.iter().any(|e| e["verdict"] == "deny"), "{ev:#?}");
}
