//! Cloud metadata stays out of reach in transparent mode: a connect to
//! 169.254.169.254 is still refused by the kernel (never redirected), and
//! an allowed name that resolves there (pinned, or answered by the
//! upstream DNS server), or names it in Host, is refused by the proxy. A
//! real listener on 169.254.169.254 (a test host routed into the client
//! namespace), reachable outside the sandbox, is the oracle.

use std::net::SocketAddr;
use std::time::Duration;

use nono_tests::oracle::TcpCounter;
use nono_tests::proxylab::{proxy_events, ProxyLab, SERVER};
use nono_tests::sys;

use super::{transparent, TLab};

const METADATA: &str = "169.254.169.254";

fn ip(ns: &str, args: &[&str]) {
    let mut a = vec!["-n", ns];
    a.extend_from_slice(args);
    let out = sys::run_ok("ip", &a);
    assert_eq!(out.code(), 0, "ip {a:?}: {}", out.describe());
}

/// 169.254.169.254 on the server namespace's loopback, routed from the
/// client namespace (both go with the namespaces).
fn metadata_host(lab: &ProxyLab, port: u16) -> TcpCounter {
    ip(
        &lab.fx.server,
        &["addr", "add", &format!("{METADATA}/32"), "dev", "lo"],
    );
    ip(
        &lab.fx.client,
        &["route", "add", &format!("{METADATA}/32"), "via", SERVER],
    );
    let addr: SocketAddr = format!("{METADATA}:{port}").parse().unwrap();
    TcpCounter::bind(&lab.fx.server, addr, false)
}

#[test]
fn metadata_stays_refused_in_transparent_mode() {
    let t = TLab::new();
    let port = t.lab.fx.port();
    let md = metadata_host(&t.lab, port);
    let p = port.to_string();
    let r = t.py_outside(&["echo", METADATA, &p, "outside"]);
    assert!(r.get("error").is_none(), "outside: {r}");
    assert!(
        sys::wait_until(Duration::from_secs(5), || md.count() == 1),
        "the metadata host did not see the outside connection"
    );

    let ev = t.lab.tmp.path("md-events.jsonl");
    let sb = transparent(&[
        &format!("metadata.test:{port}"),
        &format!("dns-meta.test:{port}"),
    ])
    .events(&ev);
    // The address itself: refused by the kernel, not redirected.
    let (r, out) = t.py(&sb, &["echo", METADATA, &p, "inside"]);
    let err = r["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("Operation not permitted"),
        "{r} {}",
        out.describe()
    );
    // Names that resolve there (pinned; from the upstream DNS server), and
    // the name in Host on a connection to another address.
    for url in [
        format!("http://metadata.test:{port}/md-pinned"),
        format!("http://dns-meta.test:{port}/md-dns"),
    ] {
        let (exit, code, body, out) = t.curl(&sb, &[&url]);
        assert!(
            exit != 0 && code == 0,
            "{url}: {exit} {code} {body} {}",
            out.describe()
        );
    }
    let (r, out) = t.py(
        &sb,
        &["http", "203.0.113.9", &p, "metadata.test", "/md-front"],
    );
    assert_eq!(r["connected"], true, "redirected to the proxy: {r}");
    assert!(
        r.get("status").is_none() || r["status"] == 0,
        "{r} {}",
        out.describe()
    );

    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        md.count(),
        1,
        "a sandboxed connection reached the metadata host"
    );
    let denials: Vec<_> = proxy_events(&ev)
        .into_iter()
        .filter(|e| {
            e["hook"] == "transparent"
                && e["verdict"] == "deny"
                && e["reason"].as_str().is_some_and(|r| r.contains(METADATA))
        })
        .collect();
    assert_eq!(denials.len(), 3, "{denials:#?}");
}
