//! Transparent mode under the seccomp supervisor (`--enforcer seccomp`,
//! what a user without the daemon or root gets): the supervisor connects
//! redirected sockets to the proxy itself and records where they dialled;
//! DNS goes to the agent's resolver, glibc asking over TCP
//! (`RES_OPTIONS=use-vc`, set for the child). What the supervisor cannot
//! do without the kernel hooks (getpeername shows the proxy's listener) is
//! asserted as documented, so a change there is noticed.

use super::{transparent, TLab};
use nono_tests::proxylab::Sandbox;

/// `--enforcer seccomp` given explicitly: the agent refuses to run (125)
/// rather than use another enforcer.
fn seccomp(allow: &[&str]) -> Sandbox {
    let mut sb = transparent(allow);
    sb.extra.extend(["--enforcer".into(), "seccomp".into()]);
    sb
}

/// curl over HTTP and HTTPS, v4 and v6, to an allowed name: the server
/// sees each request once, by name.
#[test]
fn curl_reaches_an_allowed_name_under_seccomp() {
    let t = TLab::new();
    let sb = seccomp(&["allowed.test", "v6.test"]);
    for (name, url, fam) in [
        ("s-http4", "http://allowed.test/case/s-http4", "-4"),
        ("s-https4", "https://allowed.test/case/s-https4", "-4"),
        ("s-http6", "http://v6.test/case/s-http6", "-6"),
        ("s-https6", "https://v6.test/case/s-https6", "-6"),
    ] {
        let (exit, code, body, out) = t.curl(&sb, &[fam, url]);
        assert_eq!((exit, code), (0, 200), "{name}: {body} {}", out.describe());
        let seen = t.lab.requests_to(&format!("/case/{name}"));
        assert_eq!(seen.len(), 1, "{name}: the server logged {seen:?}");
        assert_eq!(seen[0]["host"], url.split('/').nth(2).unwrap());
    }
}

/// A raw TLS client resolving with getaddrinfo works (glibc asks over TCP);
/// getpeername shows the proxy's listener on loopback, not the synthetic
/// address (the documented limit of the supervisor).
#[test]
fn getaddrinfo_works_and_getpeername_shows_the_listener_under_seccomp() {
    let t = TLab::new();
    let sb = seccomp(&["allowed.test"]);
    let (r, out) = t.py(&sb, &["tls", "allowed.test", "443", "/case/s-py4", "4"]);
    assert_eq!(r["status"], 200, "{r} {}", out.describe());
    let peer = r["peer"].as_str().unwrap_or_default();
    assert!(
        peer == "127.0.0.1" || peer == "::1" || peer == "::ffff:127.0.0.1",
        "getpeername under the supervisor: {r}"
    );
    assert_eq!(t.lab.requests_to("/case/s-py4").len(), 1);
}

/// A denied name gets NXDOMAIN and is never asked upstream; an IP literal
/// without a name is refused and the server sees nothing.
#[test]
fn denied_names_and_bare_addresses_are_refused_under_seccomp() {
    let t = TLab::new();
    let r = t.py_outside(&[
        "http",
        "198.51.100.2",
        "80",
        "198.51.100.2",
        "/case/s-ip-outside",
    ]);
    assert_eq!(r["status"], 200, "outside: {r}");
    let sb = seccomp(&["dns-ok.test"]);
    let (exit, code, body, out) = t.curl(&sb, &["https://dns-denied.test/case/s-denied"]);
    assert_eq!((exit, code), (6, 0), "{body} {}", out.describe());
    assert!(
        !t.lab.dns_queries().iter().any(|n| n.contains("dns-denied")),
        "a denied name reached the upstream DNS server"
    );
    let (r, out) = t.py(
        &sb,
        &["http", "198.51.100.2", "80", "198.51.100.2", "/case/s-ip"],
    );
    assert_eq!(
        r["connected"],
        true,
        "redirected to the proxy: {r} {}",
        out.describe()
    );
    assert!(r.get("status").is_none() || r["status"] == 0, "{r}");
    assert!(
        t.lab.requests_to("/case/s-ip").is_empty(),
        "an IP literal reached the server"
    );
    assert!(t.lab.requests_to("/case/s-denied").is_empty());
}
