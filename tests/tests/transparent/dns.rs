//! The agent's resolver: allowed names get synthetic addresses, other
//! names NXDOMAIN without ever being asked upstream, data-carrying types
//! are refused, TCP works, and a client that names its own resolver is
//! answered by the agent while its socket still shows the resolver it
//! named.

use std::process::Command;
use std::time::Duration;

use nono_tests::proxylab::{Background, ProxyLab};
use nono_tests::sys;

use super::{is_synthetic, transparent, TLab};

/// A resolver address a client hard-codes: routed to the server namespace.
const HARD_V4: &str = "203.0.113.53";
/// The same on IPv6 (on the veth's link).
const HARD_V6: &str = "2001:db8:100::53";

/// A real DNS server (the lab's dns.py) on 203.0.113.53:53 in the server
/// namespace, logging what it is asked: without redirection the client's
/// query would reach it (proved outside the sandbox), so "it saw nothing"
/// is a real oracle. Dropped before the lab (declare it after).
struct Decoy {
    _bg: Background,
    log: std::path::PathBuf,
}

impl Decoy {
    /// The decoy on 203.0.113.53:53 in the server namespace.
    fn start(lab: &ProxyLab) -> Decoy {
        let out = sys::run_ok(
            "ip",
            &[
                "-n",
                &lab.fx.server,
                "addr",
                "add",
                &format!("{HARD_V4}/32"),
                "dev",
                "lo",
            ],
        );
        assert_eq!(out.code(), 0, "{}", out.describe());
        Decoy::start_at(lab, &lab.fx.server, HARD_V4, "decoy")
    }

    /// A decoy on `addr`:53 in namespace `ns`.
    fn start_at(lab: &ProxyLab, ns: &str, addr: &str, tag: &str) -> Decoy {
        let log = lab.tmp.path(&format!("{tag}-dns.jsonl"));
        let ready = lab.tmp.path(&format!("{tag}-dns.ready"));
        std::fs::write(&log, "").expect("decoy log");
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{ns}"))
            .arg("--")
            .arg("python3")
            .arg(lab.tmp.path("dns.py"))
            .arg("--listen")
            .arg(format!("{addr}:53"))
            .arg("--log")
            .arg(&log)
            .arg("--ready")
            .arg(&ready)
            .arg("allowed.test=198.51.100.2");
        let mut bg = Background::spawn(&mut cmd, &format!("{tag} dns.py ({ns})"), &lab.tmp.0);
        bg.wait_ready(&ready, Duration::from_secs(20));
        Decoy { _bg: bg, log }
    }

    fn queries(&self) -> Vec<String> {
        nono_tests::proxylab::read_jsonl(&self.log)
            .into_iter()
            .filter_map(|r| r["name"].as_str().map(str::to_string))
            .collect()
    }
}

/// A denied name: NXDOMAIN for the client, never asked upstream (the lab's
/// DNS server knows the name and would answer it), no request arrives. An
/// allowed name that only the upstream knows resolves (synthetic) and the
/// proxy asks the upstream for it when connecting.
#[test]
fn a_denied_name_gets_nxdomain_and_is_never_asked_upstream() {
    let t = TLab::new();
    let sb = transparent(&["dns-ok.test"]);
    let (exit, code, body, out) = t.curl(&sb, &["https://dns-denied.test/case/t-denied"]);
    // curl: 6 = could not resolve host.
    assert_eq!((exit, code), (6, 0), "{body} {}", out.describe());
    let (r, _) = t.py(&sb, &["resolve", "dns-denied.test"]);
    assert!(
        r["error"].as_str().is_some_and(|e| e.contains("gaierror")),
        "{r}"
    );
    let (r, _) = t.py(&sb, &["dns", HARD_V4, "53", "dns-denied.test", "A", "udp"]);
    assert_eq!(r["rcode"], 3, "NXDOMAIN expected: {r}");

    let (exit, code, body, out) = t.curl(&sb, &["https://dns-ok.test/case/t-dns-ok"]);
    assert_eq!((exit, code), (0, 200), "{body} {}", out.describe());
    assert_eq!(t.lab.requests_to("/case/t-dns-ok").len(), 1);

    let q = t.lab.dns_queries();
    assert!(
        q.iter().any(|n| n == "dns-ok.test"),
        "the proxy resolves allowed names upstream: {q:?}"
    );
    assert!(
        !q.iter().any(|n| n.contains("dns-denied")),
        "a denied name reached the upstream DNS server: {q:?}"
    );
    assert!(t.lab.requests_to("/case/t-denied").is_empty());
}

/// TXT (data-carrying) for an allowed name is REFUSED; A over TCP works.
#[test]
fn txt_is_refused_and_dns_over_tcp_is_answered() {
    let t = TLab::new();
    let sb = transparent(&["allowed.test"]);
    for server in [HARD_V4, HARD_V6] {
        let (r, out) = t.py(&sb, &["dns", server, "53", "allowed.test", "TXT", "udp"]);
        assert_eq!(
            r["rcode"],
            5,
            "{server}: REFUSED expected: {r} {}",
            out.describe()
        );
        assert_eq!(r["answers"], serde_json::json!([]), "{r}");
        for (qtype, proto) in [("A", "tcp"), ("AAAA", "tcp"), ("TXT", "tcp")] {
            let (r, out) = t.py(&sb, &["dns", server, "53", "allowed.test", qtype, proto]);
            assert_eq!(
                r["id_ok"],
                true,
                "{server} {qtype}/{proto}: {r} {}",
                out.describe()
            );
            if qtype == "TXT" {
                assert_eq!(r["rcode"], 5, "{r}");
                continue;
            }
            assert_eq!(r["rcode"], 0, "{server} {qtype}/{proto}: {r}");
            let a = r["answers"][0].as_str().unwrap_or_default();
            assert!(is_synthetic(a), "{server} {qtype}/{proto}: {r}");
            // The TCP socket shows the resolver it dialled.
            assert_eq!(r["peer"][0], server, "{r}");
            assert_eq!(r["peer"][1], 53, "{r}");
        }
    }
}

/// A client that hard-codes a resolver address gets the agent's answers;
/// the UDP reply's source (recvfrom) and a connected socket's peer
/// (getpeername) are the address it dialled; the real server at that
/// address (reachable outside the sandbox) is never asked.
#[test]
fn a_hard_coded_resolver_is_answered_by_the_agent() {
    let t = TLab::new();
    let decoy = Decoy::start(&t.lab);
    // Outside the sandbox the decoy answers (the oracle works).
    let r = t.py_outside(&["dns", HARD_V4, "53", "allowed.test", "A", "udp"]);
    assert_eq!(r["answers"], serde_json::json!(["198.51.100.2"]), "{r}");
    assert_eq!(decoy.queries(), vec!["allowed.test".to_string()]);

    let sb = transparent(&["allowed.test"]);
    for server in [HARD_V4, HARD_V6] {
        for proto in ["udp", "udp-connected"] {
            let qtype = if server == HARD_V4 { "A" } else { "AAAA" };
            let (r, out) = t.py(&sb, &["dns", server, "53", "allowed.test", qtype, proto]);
            assert_eq!(r["rcode"], 0, "{server}/{proto}: {r} {}", out.describe());
            let a = r["answers"][0].as_str().unwrap_or_default();
            assert!(is_synthetic(a), "{server}/{proto}: {r}");
            assert_eq!(r["source"][0], server, "reply source: {r}");
            assert_eq!(r["source"][1], 53, "reply source: {r}");
            if proto == "udp-connected" {
                assert_eq!(r["peer"][0], server, "getpeername: {r}");
                assert_eq!(r["peer"][1], 53, "getpeername: {r}");
            }
        }
    }
    // Data in a query name (DNS tunnelling) to the hard-coded resolver,
    // over UDP and TCP: NXDOMAIN from the agent, nobody else sees it.
    for proto in ["udp", "tcp"] {
        let (r, out) = t.py(
            &sb,
            &["dns", HARD_V4, "53", "c2VjcmV0.evil.test", "A", proto],
        );
        assert_eq!(r["rcode"], 3, "{proto}: {r} {}", out.describe());
    }
    assert_eq!(
        decoy.queries(),
        vec!["allowed.test".to_string()],
        "a sandboxed query reached the hard-coded resolver"
    );
    assert!(
        !t.lab.dns_queries().iter().any(|n| n.contains("c2VjcmV0")),
        "{:?}",
        t.lab.dns_queries()
    );
}

/// A resolver on the machine's own loopback (a stub such as
/// systemd-resolved on 127.0.0.53:53, which would forward any name
/// upstream) is not reached either: port 53 on loopback is redirected too.
#[test]
fn a_loopback_stub_resolver_is_not_reached() {
    let t = TLab::new();
    let stub = Decoy::start_at(&t.lab, &t.lab.fx.client, "127.0.0.53", "stub");
    let r = t.py_outside(&["dns", "127.0.0.53", "53", "allowed.test", "A", "udp"]);
    assert_eq!(
        r["answers"],
        serde_json::json!(["198.51.100.2"]),
        "outside: {r}"
    );
    let sb = transparent(&["allowed.test"]);
    for (name, rcode) in [("allowed.test", 0), ("c2VjcmV0.evil.test", 3)] {
        for proto in ["udp", "tcp"] {
            let (r, out) = t.py(&sb, &["dns", "127.0.0.53", "53", name, "A", proto]);
            assert_eq!(r["rcode"], rcode, "{name}/{proto}: {r} {}", out.describe());
        }
    }
    assert_eq!(
        stub.queries(),
        vec!["allowed.test".to_string()],
        "a sandboxed query reached the loopback stub resolver"
    );
}

/// The client namespace has no route to the machine's resolver: a query
/// that escaped redirection would fail, not leak. Outside the sandbox the
/// system resolver fails and a query to the resolv.conf address cannot be
/// sent; inside, the same calls are answered by the agent.
#[test]
fn without_redirection_queries_go_nowhere() {
    let t = TLab::new();
    let ns = std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("nameserver").map(|a| a.trim().to_string()))
        .expect("a nameserver line in /etc/resolv.conf");
    let r = t.py_outside(&["resolve", "allowed.test"]);
    assert!(
        r["error"].as_str().is_some_and(|e| e.contains("gaierror")),
        "{r}"
    );
    let r = t.py_outside(&["dns", &ns, "53", "allowed.test", "A", "udp"]);
    assert!(
        r["error"]
            .as_str()
            .is_some_and(|e| e.contains("unreachable")),
        "the client namespace must have no route to {ns}: {r}"
    );

    let sb = transparent(&["allowed.test"]);
    let (r, out) = t.py(&sb, &["resolve", "allowed.test"]);
    let addrs = r["addrs"].as_array().cloned().unwrap_or_default();
    assert!(
        !addrs.is_empty()
            && addrs
                .iter()
                .all(|a| is_synthetic(a.as_str().unwrap_or_default())),
        "{r} {}",
        out.describe()
    );
    let (r, _) = t.py(&sb, &["dns", &ns, "53", "allowed.test", "A", "udp"]);
    assert_eq!(r["source"][0], ns.as_str(), "{r}");
    assert!(
        is_synthetic(r["answers"][0].as_str().unwrap_or_default()),
        "{r}"
    );
}
