//! Allowed names reached by clients that never look at the proxy
//! variables: curl over HTTP and HTTPS, a raw Python socket + ssl client
//! resolving with getaddrinfo, and a TCP protocol where the client speaks
//! first and that is neither TLS nor HTTP (the echo server on echo.test:7000
//! stands in for SSH or gRPC: the proxy learns the name from the synthetic
//! address alone). IPv4 and IPv6 (v6.test is pinned to the server's v6
//! address; `-6` makes the client dial the synthetic v6 address).

use super::{is_synthetic, transparent, TLab};

#[test]
fn curl_http_and_https_reach_an_allowed_name_v4_and_v6() {
    let t = TLab::new();
    let sb = transparent(&["allowed.test", "v6.test"]);
    for (name, url, fam) in [
        ("t-http4", "http://allowed.test/case/t-http4", "-4"),
        ("t-https4", "https://allowed.test/case/t-https4", "-4"),
        ("t-http6", "http://v6.test/case/t-http6", "-6"),
        ("t-https6", "https://v6.test/case/t-https6", "-6"),
    ] {
        let (exit, code, body, out) = t.curl(&sb, &[fam, url]);
        assert_eq!((exit, code), (0, 200), "{name}: {body} {}", out.describe());
        let seen = t.lab.requests_to(&format!("/case/{name}"));
        assert_eq!(seen.len(), 1, "{name}: the server logged {seen:?}");
        let host = url.split('/').nth(2).unwrap();
        assert_eq!(seen[0]["host"], host, "{name}: {}", seen[0]);
        if url.starts_with("https") {
            assert_eq!(seen[0]["sni"], host, "{name}: {}", seen[0]);
        }
        // The proxy dialled the pinned address of the name: the server saw
        // a connection from the client namespace's own family address.
        let want_peer = if fam == "-6" {
            "2001:db8:100::1"
        } else {
            "198.51.100.1"
        };
        let peer = seen[0]["peer"].as_str().unwrap_or_default();
        assert!(peer.ends_with(want_peer), "{name}: peer {peer}");
    }
}

#[test]
fn raw_python_tls_client_resolves_with_getaddrinfo_v4_and_v6() {
    let t = TLab::new();
    let sb = transparent(&["allowed.test", "v6.test"]);
    for (host, fam, path) in [
        ("allowed.test", "4", "/case/t-py4"),
        ("v6.test", "6", "/case/t-py6"),
    ] {
        let (r, out) = t.py(&sb, &["tls", host, "443", path, fam]);
        assert_eq!(r["status"], 200, "{host}: {r} {}", out.describe());
        // getaddrinfo gave the resolver's synthetic addresses, and
        // getpeername shows the address dialled, not the proxy's listener.
        let dialled = r["dialled"].as_str().unwrap_or_default();
        assert!(is_synthetic(dialled), "{host}: dialled {r}");
        assert_eq!(r["peer"], dialled, "{host}: getpeername {r}");
        let seen = t.lab.requests_to(path);
        assert_eq!(seen.len(), 1, "{host}: {seen:?}");
        assert_eq!(seen[0]["sni"], host, "{}", seen[0]);
    }
}

/// A client-first protocol that is neither TLS nor HTTP (stands in for SSH
/// or gRPC): the proxy goes by the synthetic address's name alone, and the
/// port rules apply as to any proxied connection (`name:PORT`).
#[test]
fn a_client_first_non_tls_protocol_reaches_an_allowed_name_by_name() {
    let t = TLab::new();
    let hello = "SSH-2.0-nono-test\r\n";
    let before = t.lab.echo_connections();

    // The name is allowed on the default ports only: the name resolves,
    // the connect reaches the proxy, which refuses port 7000; the echo
    // server sees nothing.
    let sb = transparent(&["echo.test"]);
    let (r, out) = t.py(&sb, &["echo", "echo.test", "7000", hello]);
    assert!(
        is_synthetic(r["dialled"].as_str().unwrap_or_default()),
        "{r}"
    );
    // Refused as soon as the proxy has judged the name and port (for a
    // synthetic address that is before the client's first bytes): the
    // client sees its connection closed, or its send fail on it.
    assert!(
        r["echoed"] == "" || r["error"].as_str().is_some_and(|e| e.contains("OSError")),
        "{r} {}",
        out.describe()
    );
    assert_eq!(
        t.lab.echo_connections(),
        before,
        "refused port reached the server"
    );

    let sb = transparent(&["echo.test:7000"]);
    let (r, out) = t.py(&sb, &["echo", "echo.test", "7000", hello]);
    assert_eq!(r["echoed"], hello, "{r} {}", out.describe());
    let dialled = r["dialled"].as_str().unwrap_or_default();
    assert!(is_synthetic(dialled), "{r}");
    assert_eq!(r["peer"], dialled, "getpeername: {r}");
    assert_eq!(t.lab.echo_connections(), before + 1);

    // Not allowed at all: NXDOMAIN at getaddrinfo, nothing arrives.
    let sb = transparent(&["allowed.test"]);
    let (r, out) = t.py(&sb, &["echo", "echo.test", "7000", hello]);
    let err = r["error"].as_str().unwrap_or_default();
    assert!(err.contains("gaierror"), "{r} {}", out.describe());
    assert_eq!(t.lab.echo_connections(), before + 1);
}
