//! Events and the exit summary.

use serde_json::Value;

use nono_tests::proxylab::{parse_proxy_url, proxy_events, ProxyLab, Sandbox, SERVER};
use nono_tests::runner::parse_summary;

use super::sandbox_id;

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

/// A CONNECT whose target is not `host:port` is refused with 400 and, like
/// every other refusal, recorded: no denial goes uncounted.
#[test]
fn malformed_connect_is_recorded() {
    let lab = ProxyLab::new();
    let events = lab.tmp.path("events.jsonl");
    let sb = Sandbox::allow(&["allowed.test"]).events(&events);
    let cases = serde_json::json!([
        {"name": "no-port", "data": super::raw::connect("allowed.test")},
        {"name": "port-0", "data": super::raw::connect("allowed.test:0")},
    ]);
    let (r, out) = lab.raw(&sb, &cases);
    assert_eq!(out.code(), 0, "{}", out.describe());
    for name in ["no-port", "port-0"] {
        assert_eq!(r[name]["status"], 400, "{name}: {}", r[name]);
        let body = r[name]["body"].as_str().unwrap_or_default();
        assert!(body.contains("CONNECT needs host:port"), "{name}: {body:?}");
    }
    let ev = proxy_events(&events);
    let refused: Vec<&Value> = ev
        .iter()
        .filter(|e| {
            e["hook"] == "connect"
                && e["verdict"] == "deny"
                && e["reason"] == "CONNECT needs host:port"
        })
        .collect();
    assert_eq!(refused.len(), 2, "{ev:#?}");
    assert!(
        refused.iter().any(|e| e["host"] == "allowed.test:0"),
        "the event names what the client sent: {ev:#?}"
    );
}
