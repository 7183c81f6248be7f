//! Events: every redirected connection has one (hook `transparent`) with
//! the name, the verdict and the address the client dialled; every
//! resolver decision has one (hook `dns`).

use serde_json::Value;

use nono_tests::proxylab::proxy_events;

use super::{transparent, TLab};

#[test]
fn every_redirected_connection_and_question_has_an_event() {
    let t = TLab::new();
    let ev = t.lab.tmp.path("events.jsonl");
    let sb = transparent(&["allowed.test"]).events(&ev);
    let client = t.client.display().to_string();
    let py = format!("python3 {client}");
    let script = format!(
        "curl --noproxy '*' -4 -sS --max-time 20 -o /dev/null https://allowed.test/case/t-ev-ok; \
         curl --noproxy '*' -sS --max-time 20 -o /dev/null https://evil.test/case/t-ev-nx; \
         {py} sni 203.0.113.9 443 evil.test /case/t-ev-front; \
         {py} http 198.51.100.2 80 198.51.100.2 /case/t-ev-ip; \
         {py} dns 203.0.113.53 53 allowed.test TXT udp; \
         true"
    );
    let out = t.lab.exec(&sb, &["sh", "-c", &script]);
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert_eq!(t.lab.requests_to("/case/t-ev-ok").len(), 1);
    let ev = proxy_events(&ev);
    let find = |hook: &str, verdict: &str, host: &str| -> Value {
        ev.iter()
            .find(|e| e["hook"] == hook && e["verdict"] == verdict && e["host"] == host)
            .cloned()
            .unwrap_or_else(|| panic!("no {hook} {verdict} event for {host}: {ev:#?}"))
    };
    find("dns", "allow", "allowed.test");
    find("dns", "deny", "evil.test");
    let txt = ev
        .iter()
        .find(|e| {
            e["hook"] == "dns"
                && e["verdict"] == "deny"
                && e["host"] == "allowed.test"
                && e["reason"].as_str().is_some_and(|r| r.contains("TXT"))
        })
        .unwrap_or_else(|| panic!("no TXT refusal event: {ev:#?}"));
    assert_eq!(txt["port"], 53);

    let ok = find("transparent", "allow", "allowed.test");
    assert_eq!(ok["port"], 443, "{ok}");
    assert_eq!(ok["addr"], "198.51.100.2", "{ok}");
    let dialled = ok["dialled"].as_str().unwrap_or_default();
    assert!(
        super::is_synthetic(dialled),
        "the address the client dialled: {ok}"
    );

    let front = find("transparent", "deny", "evil.test");
    assert_eq!(front["dialled"], "203.0.113.9", "{front}");
    assert_eq!(front["port"], 443, "{front}");
    let ip = find("transparent", "deny", "198.51.100.2");
    assert_eq!(ip["dialled"], "198.51.100.2", "{ip}");
    assert_eq!(ip["port"], 80, "{ip}");

    // Exactly the three redirected connections.
    let n = ev.iter().filter(|e| e["hook"] == "transparent").count();
    assert_eq!(n, 3, "{ev:#?}");
}
