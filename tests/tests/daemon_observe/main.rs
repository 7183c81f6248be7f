//! Observing `nono-agent daemon`: its Prometheus metrics (unix socket and
//! loopback TCP) and its structured log (journald fields, JSON lines).
//!
//! Each test has its own daemon (`nono_tests::daemon::Daemon`), with its own
//! metrics socket, and runs its clients as uid 65534 through `setpriv`.
//! The denied connect goes to 203.0.113.9:80 (TEST-NET-3): BPF refuses it
//! at `connect()`, before any packet could leave. Needs root.

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nono_tests::daemon::Daemon;
use nono_tests::runner::{exec_command, ExecOpts, RunAs};
use nono_tests::sys;

const NOBODY: RunAs = RunAs {
    uid: 65534,
    gid: 65534,
};

/// `nono-agent exec --daemon-socket ... -- args` as uid 65534.
fn run_client(d: &Daemon, args: &[&str]) -> Output {
    let opts = ExecOpts {
        enforcer: Some("bpf".into()),
        user: Some(NOBODY),
        daemon_socket: Some(d.socket.clone()),
        ..Default::default()
    };
    let mut cmd = exec_command(&sys::agent_bin(), None, &opts);
    cmd.args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run nono-agent exec")
}

/// A denied connect to TEST-NET (bash's /dev/tcp).
const DENIED_CONNECT: &[&str] = &["bash", "-c", "exec 3<>/dev/tcp/203.0.113.9/80"];

fn http_get(mut s: impl std::io::Read + std::io::Write, path: &str) -> String {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .expect("send the request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read the response");
    out
}

fn scrape_unix(path: &Path) -> String {
    let s = UnixStream::connect(path).expect("connect to the metrics socket");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    body_of(&http_get(s, "/metrics"))
}

fn scrape_tcp(addr: &str) -> String {
    let s = std::net::TcpStream::connect(addr).expect("connect to the metrics port");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    body_of(&http_get(s, "/metrics"))
}

fn body_of(resp: &str) -> String {
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let (head, body) = resp.split_once("\r\n\r\n").expect("a response head");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_string()
}

/// The value of the sample `series` (name with labels, exactly as
/// exposed), 0 if absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("a sample value"))
        .unwrap_or(0.0)
}

const STARTED: &str = "nono_sandboxes_started_total";
const ACTIVE: &str = "nono_sandboxes_active";
const DENIED: &str = "nono_denials_total{hook=\"connect4\",reason=\"not-allowed\"}";

fn free_loopback_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

#[test]
fn metrics_count_sandboxes_and_denials_on_unix_and_tcp() {
    let addr = free_loopback_port();
    let d = Daemon::start_with(&["--metrics-listen", &addr]);
    let mode = std::fs::metadata(&d.metrics_socket)
        .expect("the metrics socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660, "metrics socket mode {mode:o}");

    let before_unix = scrape_unix(&d.metrics_socket);
    let before_tcp = scrape_tcp(&addr);
    for t in [&before_unix, &before_tcp] {
        assert!(t.contains("nono_build_info{version=\""), "{t}");
        assert!(
            t.contains("# TYPE nono_sandboxes_started_total counter"),
            "{t}"
        );
        assert_eq!(value(t, ACTIVE), 0.0, "{t}");
    }

    for args in [&["true"][..], &["true"][..], DENIED_CONNECT] {
        let out = run_client(&d, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("nono-agent: enforcer: bpf (daemon)"),
            "not made by the daemon: {err}"
        );
        if args == DENIED_CONNECT {
            assert!(
                !out.status.success(),
                "the connect to TEST-NET succeeded: {err}"
            );
        } else {
            assert!(out.status.success(), "{args:?}: {err}");
        }
    }

    // Sandboxes end and denials are counted asynchronously: poll.
    let mut after = String::new();
    let settled = sys::wait_until(Duration::from_secs(10), || {
        after = scrape_unix(&d.metrics_socket);
        value(&after, ACTIVE) == 0.0 && value(&after, DENIED) >= value(&before_unix, DENIED) + 1.0
    });
    assert!(
        settled,
        "metrics did not settle:\n{after}\nlog: {}",
        d.log()
    );
    assert_eq!(
        value(&after, STARTED) - value(&before_unix, STARTED),
        3.0,
        "{after}"
    );
    assert!(after.contains("nono_build_info{version=\""), "{after}");
    assert!(
        value(&after, "nono_sandboxes_ended_total{reason=\"client_gone\"}")
            + value(&after, "nono_sandboxes_ended_total{reason=\"end\"}")
            >= 3.0,
        "{after}"
    );
    assert!(
        value(
            &after,
            "nono_daemon_requests_total{type=\"create\",outcome=\"ok\"}"
        ) >= 3.0,
        "{after}"
    );
    assert!(
        value(&after, "nono_daemon_request_seconds_count{type=\"create\"}") >= 3.0,
        "{after}"
    );
    // The TCP endpoint shows the same counters.
    let tcp = scrape_tcp(&addr);
    assert_eq!(
        value(&tcp, STARTED) - value(&before_tcp, STARTED),
        3.0,
        "{tcp}"
    );
    assert!(
        value(&tcp, DENIED) >= value(&before_tcp, DENIED) + 1.0,
        "{tcp}"
    );
    assert_eq!(value(&tcp, ACTIVE), 0.0, "{tcp}");
    // Nothing else is served.
    let s = UnixStream::connect(&d.metrics_socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let nf = http_get(s, "/");
    assert!(nf.starts_with("HTTP/1.1 404"), "{nf}");
}

#[test]
fn metrics_listen_refuses_non_loopback() {
    for bad in ["0.0.0.0:9464", "192.0.2.1:9464", "[::]:9464"] {
        let out = std::process::Command::new(sys::agent_bin())
            .args(["daemon", "--metrics-listen", bad])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad} accepted");
        assert!(err.contains("only a loopback address"), "{bad}: {err}");
    }
}

/// Parses a native journal datagram: each field is `KEY=value\n`, or
/// `KEY\n` + 64-bit little-endian length + value + `\n` (the form
/// tracing-journald uses for values).
fn journal_fields(mut d: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while !d.is_empty() {
        let Some(nl) = d.iter().position(|&b| b == b'\n') else {
            panic!("a journal field without a newline: {d:?}");
        };
        let line = &d[..nl];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            out.push((
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            ));
            d = &d[nl + 1..];
        } else {
            let key = String::from_utf8_lossy(line).into_owned();
            let rest = &d[nl + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            let value = String::from_utf8_lossy(&rest[8..8 + len]).into_owned();
            assert_eq!(rest[8 + len], b'\n', "field {key} not newline-terminated");
            out.push((key, value));
            d = &rest[8 + len + 1..];
        }
    }
    out
}

#[test]
fn journald_entries_carry_sandbox_fields() {
    // The daemon runs in a private mount namespace with this directory over
    // /run/systemd, so tracing-journald's fixed socket path
    // (/run/systemd/journal/socket) is the test's datagram socket.
    let fake = std::env::temp_dir().join(format!("nono-fake-journal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&fake);
    std::fs::create_dir_all(fake.join("journal")).unwrap();
    let rx = UnixDatagram::bind(fake.join("journal/socket")).expect("bind the fake journal");
    rx.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    // Drained all along, like journald: a full socket would block the
    // daemon's writes.
    let got: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (got, stop) = (got.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(n) = rx.recv(&mut buf) {
                    got.lock().unwrap().push(buf[..n].to_vec());
                }
            }
        })
    };
    let script = format!(
        "mount --bind '{}' /run/systemd && exec \"$0\" \"$@\"",
        fake.display()
    );
    let unshare = sys::require_tool("unshare", "a private mount namespace for the fake journal");
    let unshare = unshare.to_string_lossy().into_owned();
    let d = Daemon::start_wrapped(
        &[
            &unshare,
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ],
        &["--log-format", "journald"],
    );
    let ok = run_client(&d, &["true"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let denied = run_client(&d, DENIED_CONNECT);
    assert!(!denied.status.success());
    // A burst of denials from one process: the log keeps at most 10 a
    // second for the sandbox and counts the rest.
    let burst = run_client(
        &d,
        &[
            "bash",
            "-c",
            "for i in $(seq 200); do : 3<>/dev/tcp/203.0.113.9/80; done 2>/dev/null; true",
        ],
    );
    assert!(
        burst.status.success(),
        "{}",
        String::from_utf8_lossy(&burst.stderr)
    );

    let mut entries: Vec<Vec<(String, String)>> = Vec::new();
    let has = |entries: &[Vec<(String, String)>], event: &str| {
        entries
            .iter()
            .any(|e| e.iter().any(|(k, v)| k == "EVENT" && v == event))
    };
    let done = sys::wait_until(Duration::from_secs(10), || {
        entries = got
            .lock()
            .unwrap()
            .iter()
            .filter(|d| !d.is_empty())
            .map(|d| journal_fields(d))
            .collect();
        let ended = entries
            .iter()
            .filter(|e| e.iter().any(|(k, v)| k == "EVENT" && v == "ended"))
            .count();
        has(&entries, "created") && has(&entries, "denied") && ended == 3
    });
    let dump = || {
        entries
            .iter()
            .map(|e| format!("{e:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        done,
        "journal entries missing:\n{}\nlog: {}",
        dump(),
        d.log()
    );
    let field =
        |e: &[(String, String)], k: &str| e.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone());
    let created: Vec<_> = entries
        .iter()
        .filter(|e| field(e, "EVENT").as_deref() == Some("created"))
        .collect();
    assert_eq!(created.len(), 3, "{}", dump());
    for e in &created {
        let sb = field(e, "SANDBOX").expect("SANDBOX=");
        assert_eq!(sb.len(), 16, "SANDBOX={sb}");
        assert_eq!(field(e, "UID").as_deref(), Some("65534"), "{e:?}");
        assert_eq!(field(e, "SYSLOG_IDENTIFIER").as_deref(), Some("nono-agent"));
        assert_eq!(field(e, "PRIORITY").as_deref(), Some("6"), "{e:?}");
        assert!(field(e, "MESSAGE").is_some(), "{e:?}");
    }
    let placed = entries
        .iter()
        .filter(|e| field(e, "EVENT").as_deref() == Some("placed"))
        .count();
    assert_eq!(placed, 3, "{}", dump());
    let denial = entries
        .iter()
        .find(|e| field(e, "EVENT").as_deref() == Some("denied"))
        .unwrap();
    assert_eq!(field(denial, "VERDICT").as_deref(), Some("deny"));
    assert_eq!(field(denial, "HOOK").as_deref(), Some("connect4"));
    assert_eq!(field(denial, "REASON").as_deref(), Some("not-allowed"));
    assert_eq!(field(denial, "DEST").as_deref(), Some("203.0.113.9:80"));
    assert_eq!(field(denial, "UID").as_deref(), Some("65534"));
    // The denial names the sandbox the second client created.
    assert!(
        created
            .iter()
            .any(|c| field(c, "SANDBOX") == field(denial, "SANDBOX")),
        "{}",
        dump()
    );
    // The burst's sandbox: every denial either logged or counted.
    let burst_sb = field(created[2], "SANDBOX");
    let of_burst = |ev: &str| {
        entries
            .iter()
            .filter(|e| field(e, "SANDBOX") == burst_sb && field(e, "EVENT").as_deref() == Some(ev))
            .collect::<Vec<_>>()
    };
    let num = |e: &[(String, String)], k: &str| -> u64 {
        field(e, k).map(|v| v.parse().unwrap()).unwrap_or(0)
    };
    let logged = of_burst("denied");
    let ended = of_burst("ended");
    assert_eq!(ended.len(), 1, "{}", dump());
    let suppressed: u64 =
        logged.iter().map(|e| num(e, "SUPPRESSED")).sum::<u64>() + num(ended[0], "SUPPRESSED");
    assert_eq!(
        logged.len() as u64 + suppressed,
        200,
        "logged {} + suppressed {suppressed}:\n{}",
        logged.len(),
        dump()
    );
    assert!(
        logged.len() <= 100,
        "the burst was not rate limited: {}",
        logged.len()
    );
    drop(d);
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    let _ = std::fs::remove_dir_all(&fake);
}

#[test]
fn json_log_lines() {
    let d = Daemon::start_with(&["--log-format", "json"]);
    let out = run_client(&d, &["true"]);
    assert!(out.status.success());
    let mut created = None;
    sys::wait_until(Duration::from_secs(10), || {
        created = d
            .log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["event"] == "created");
        created.is_some()
    });
    let v = created.unwrap_or_else(|| panic!("no JSON created line: {}", d.log()));
    assert_eq!(v["uid"], 65534, "{v}");
    assert_eq!(v["level"], "INFO", "{v}");
    assert!(v["sandbox"].as_str().is_some_and(|s| s.len() == 16), "{v}");
    // Every line the daemon wrote is one JSON object.
    for l in d.log().lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(l).is_ok(),
            "not JSON: {l}"
        );
    }
}
