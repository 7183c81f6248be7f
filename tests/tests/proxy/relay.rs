//! Cross-sandbox relay and direct connections.

use std::fs;
use std::time::Duration;

use serde_json::{json, Value};

use nono_tests::oracle::Proto;
use nono_tests::proxylab::{parse_proxy_url, Background, ProxyLab, Sandbox, SERVER};
use nono_tests::sys;

/// Sandbox A may connect to sandbox B's proxy (both are on loopback), but
/// without B's secret it gets 407; and A must not be able to learn B's secret
/// from B's environment.
#[test]
fn cross_sandbox_relay_needs_the_other_secret_which_is_not_visible() {
    let lab = ProxyLab::new();
    let dir = lab.scratch("relay");
    let info = dir.join("b.info");
    let go = dir.join("b.go");
    let b_script = format!(
        "echo \"$NONO_CGROUP $HTTP_PROXY\" > {info}.tmp && mv {info}.tmp {info}; \
         n=0; while [ ! -e {go} ] && [ $n -lt 1200 ]; do sleep 0.05; n=$((n+1)); done",
        info = info.display(),
        go = go.display()
    );
    let mut b_cmd = lab.command(&Sandbox::allow(&["b-only.test"]), &["sh", "-c", &b_script]);
    let mut b = Background::spawn(&mut b_cmd, "sandbox B", &dir);
    b.wait_ready(&info, Duration::from_secs(20));
    let text = fs::read_to_string(&info).unwrap();
    let (b_cgroup, b_url) = text.trim().split_once(' ').expect("cgroup and url");
    let (b_secret, b_port) = parse_proxy_url(b_url).expect("B's proxy URL");
    // B's command as the host sees it (its own $$ may be namespace-relative).
    let procs = fs::read_to_string(format!("{b_cgroup}/cgroup.procs")).unwrap_or_default();
    let b_pid = procs
        .split_whitespace()
        .find(|pid| {
            fs::read(format!("/proc/{pid}/environ"))
                .map(|e| String::from_utf8_lossy(&e).contains(&b_secret))
                .unwrap_or(false)
        })
        .unwrap_or_else(|| panic!("no process of B in {b_cgroup} ({procs:?}) has its secret"))
        .to_string();
    let b_pid = b_pid.as_str();

    let auth_b = format!("{{AUTH:nono:{b_secret}}}");
    let cases = json!([
        {"name": "no-auth", "port": b_port,
         "data": "CONNECT b-only.test:443 HTTP/1.1\r\nHost: b-only.test:443\r\n\r\n"},
        {"name": "a-secret", "port": b_port,
         "data": "CONNECT b-only.test:443 HTTP/1.1\r\nHost: b-only.test:443\r\n{AUTH}\r\n"},
        {"name": "a-secret-http", "port": b_port,
         "data": "GET http://b-only.test/case/relay-a HTTP/1.1\r\nHost: b-only.test\r\n{AUTH}\r\n"},
        {"name": "own-proxy",
         "data": "GET http://b-only.test/case/relay-own HTTP/1.1\r\nHost: b-only.test\r\n{AUTH}\r\n"},
        // What B's secret would buy (the test knows it; A must not).
        {"name": "b-secret", "port": b_port,
         "data": format!("GET http://b-only.test/case/relay-b HTTP/1.1\r\nHost: b-only.test\r\n{auth_b}\r\n")},
    ]);
    let a = Sandbox::allow(&["allowed.test"]);
    let (r, out) = lab.raw(&a, &cases);
    let (env, env_out) = lab.python(&a, &["environ", b_pid]);
    let (scan, scan_out) = lab.python(&a, &["scan-environ"]);
    // Could A use what it found?
    let stolen = env["http_proxy"]
        .as_str()
        .or_else(|| {
            scan["foreign"]
                .as_object()
                .and_then(|m| m.values().next())
                .and_then(Value::as_str)
        })
        .and_then(parse_proxy_url)
        .map(|(s, _)| s);
    let relay = stolen.as_ref().map(|s| {
        let c = json!([{"name": "stolen", "port": b_port,
            "data": format!("GET http://b-only.test/case/relay-stolen HTTP/1.1\r\nHost: b-only.test\r\n{{AUTH:nono:{s}}}\r\n")}]);
        lab.raw(&a, &c).0["stolen"]["status"].clone()
    });
    fs::write(&go, "").unwrap();
    let st = sys::wait_child(&mut b.child, Duration::from_secs(30), "sandbox B");

    assert_eq!(out.code(), 0, "{}", out.describe());
    assert_eq!(r["no-auth"]["status"], 407, "{r:#}");
    assert_eq!(r["a-secret"]["status"], 407, "{r:#}");
    assert_eq!(r["a-secret-http"]["status"], 407, "{r:#}");
    assert_eq!(
        r["own-proxy"]["status"], 403,
        "A's own proxy refuses b-only.test: {r:#}"
    );
    assert_eq!(
        r["b-secret"]["status"], 200,
        "B's proxy with B's secret works (so the secret is the only barrier): {r:#}"
    );
    assert!(st.success(), "sandbox B: {st:?}");
    assert_eq!(env_out.code(), 0, "{}", env_out.describe());
    assert_eq!(scan_out.code(), 0, "{}", scan_out.describe());
    assert_eq!(
        scan["foreign"],
        json!({}),
        "sandbox A found other sandboxes' proxy URLs in /proc/*/environ; with B's, A's request \
         through B's proxy to a host only B may reach got {relay:?}"
    );
    assert_ne!(
        env["http_proxy"].as_str(),
        Some(b_url),
        "sandbox A could read /proc/{b_pid}/environ of sandbox B's command and so learn B's proxy \
         secret ({env}); with it, A's request through B's proxy to a host only B may reach got \
         {relay:?}"
    );
}

/// A client that ignores the proxy variables and connects directly is
/// stopped by the kernel layer: EPERM, and the server sees nothing.
#[test]
fn direct_connection_without_the_proxy_is_blocked() {
    let lab = ProxyLab::new();
    let port = lab.fx.port();
    lab.oracle.listen_tcp(port);
    // Outside the sandbox the same connection works (so the test can fail).
    let client = lab.client_py.display().to_string();
    let out = lab
        .fx
        .run_in_client(&["python3", &client, "direct", SERVER, &port.to_string()]);
    assert!(
        out.stdout.contains("\"connected\": true"),
        "{}",
        out.describe()
    );
    assert!(
        sys::wait_until(Duration::from_secs(5), || lab.oracle.tcp_connections(port)
            == 1),
        "the oracle did not see the outside connection"
    );
    lab.oracle.settle();
    let syns_before = lab.oracle.packets_to(Proto::Tcp, port);

    let script = format!(
        "unset HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy; \
         python3 {client} direct {SERVER} {port}; \
         curl -sS --max-time 5 -o /dev/null http://{SERVER}:{port}/; echo CURL=$?; \
         curl -sS --max-time 5 -o /dev/null --noproxy '*' http://[2001:db8:100::2]:{port}/; echo CURL6=$?"
    );
    let out = lab.exec(&Sandbox::allow(&["allowed.test"]), &["sh", "-c", &script]);
    assert_eq!(out.code(), 0, "{}", out.describe());
    let v: Value = out
        .stdout
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON: {}", out.describe()));
    assert_eq!(v["connected"], false, "{v}");
    assert_eq!(v["errno"], libc::EPERM, "{v}");
    assert!(out.stdout.contains("CURL=7"), "{}", out.describe());
    assert!(out.stdout.contains("CURL6=7"), "{}", out.describe());
    lab.oracle.settle();
    assert_eq!(
        lab.oracle.tcp_connections(port),
        1,
        "a direct connection arrived"
    );
    assert_eq!(
        lab.oracle.packets_to(Proto::Tcp, port),
        syns_before,
        "a packet to port {port} left the sandbox"
    );
}
