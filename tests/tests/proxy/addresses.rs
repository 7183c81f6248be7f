//! Address checks: resolved addresses and IP literals.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;

use nono_tests::oracle::TcpCounter;
use nono_tests::proxylab::{proxy_events, ProxyLab, Sandbox, SERVER};
use nono_tests::sys;

use super::{case, case_body, run_curl_table, Want};

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

    // Rules over link-local cannot be written (`0.0.0.0/0`, `::/0` and
    // `169.254.0.0/16` are refused when parsed: the CLI and profile tests).
    // The widest rules that can be written still never open metadata,
    // multicast or a name that resolves to link-local.
    let sb = Sandbox::allow(&["metadata.test", "mapped-metadata.test"]).cidr(&[
        "0.0.0.0/1",
        "192.0.0.0/2",
        "fc00::/7",
        "2000::/3",
    ]);
    let cases = vec![
        case("everything-control", "http", SERVER, Ok),
        case_body(
            "md-literal",
            "http",
            "169.254.169.254",
            403,
            "no --allow-cidr rule covers 169.254.169.254",
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
        case_body(
            "md-alibaba",
            "http",
            "100.100.100.200",
            403,
            "the Alibaba Cloud metadata address",
        ),
        case_body(
            "md-aws-v6",
            "http",
            "[fd00:ec2::254]",
            403,
            "the AWS IPv6 metadata address",
        ),
        case("v6-link-local", "http", "[fe80::1]", Refused(403)),
        case_body("multicast", "http", "224.0.0.1", 403, "multicast"),
        case_body(
            "md-name",
            "http",
            "metadata.test",
            403,
            "link-local 169.254.0.0/16",
        ),
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
