//! DNS: only allowed names are ever asked.

use nono_tests::proxylab::{ProxyLab, Sandbox};

use super::{case, case_body, run_curl_table, Want};

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
