//! Domain rules with curl (HTTP forwarding and HTTPS CONNECT).

use nono_tests::proxylab::{ProxyLab, Sandbox};

use super::{case, case_body, run_curl_table, Want};

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
        // the refusal says it is the port, and which ports the rules allow
        case_body(
            "http-port-not-in-rule",
            "http",
            "a.wild.test:8080",
            403,
            "a.wild.test:8080: port 8080 is not allowed for a.wild.test \
             (its allow-domain rules allow ports 80, 443, 8443",
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
