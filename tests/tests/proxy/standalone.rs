//! `nono-agent proxy` standalone: bad CLI values, serving, filtering,
//! the summary.

use std::fs;
use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nono_tests::proxylab::{proxy_events, require_tool, Background, ProxyLab};
use nono_tests::runner::parse_summary;
use nono_tests::sys;

/// Runs `nono-agent proxy ARGS` and waits up to 10 s; `None` if it was still
/// running (then it is killed).
fn standalone_exit(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(sys::agent_bin())
        .arg("proxy")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nono-agent proxy");
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        match child.try_wait().expect("wait") {
            Some(st) => break st.code().or(Some(-1)),
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            None => {
                sys::kill_pid(child.id() as i32);
                let _ = child.wait();
                break None;
            }
        }
    };
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    (code, err)
}

#[test]
fn standalone_proxy_rejects_bad_cli_values() {
    sys::require_prereqs();
    let listen = ["--listen", "127.0.0.1:0"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--allow-domain", "a..b.test"], "a..b.test"),
        (vec!["--allow-domain", "*.*.wild.test"], "*.*.wild.test"),
        (vec!["--allow-domain", "a*.test"], "a*.test"),
        (vec!["--allow-domain", "exa mple.test"], "exa mple.test"),
        (
            vec!["--allow-domain", "under_score.test"],
            "under_score.test",
        ),
        (vec!["--allow-domain", "allowed.test:0"], "allowed.test:0"),
        (
            vec!["--allow-domain", "allowed.test:99999"],
            "allowed.test:99999",
        ),
        (vec!["--allow-domain", "198.51.100.2"], "198.51.100.2"),
        (vec!["--allow-domain", ""], "--allow-domain"),
        (vec!["--deny-domain=-bad-.test"], "-bad-.test"),
        (vec!["--allow-cidr", "198.51.100.0/33"], "198.51.100.0/33"),
        (vec!["--allow-cidr", "banana"], "banana"),
        (
            vec!["--allow-cidr", "198.51.100.0/24:0"],
            "198.51.100.0/24:0",
        ),
        (vec!["--allow-cidr", "[2001:db8::/32]x"], "[2001:db8::/32]x"),
        // Rough edges of issue 13: refused when parsed, not per request.
        (
            vec!["--allow-domain", "*.com"],
            "\"com\" is a public suffix",
        ),
        (
            vec!["--allow-domain", "*.co.uk"],
            "\"co.uk\" is a public suffix",
        ),
        (vec!["--allow-domain", "*.github.io"], "is a public suffix"),
        (
            vec!["--allow-cidr", "169.254.0.0/16"],
            "lies within link-local",
        ),
        (
            vec!["--allow-cidr", "10.0.0.1/8"],
            "host bits are set: the network is 10.0.0.0/8",
        ),
        (vec!["--proxy-max-connections", "0"], "must be at least 1"),
        (
            vec!["--proxy-connect-timeout", "0"],
            "--proxy-connect-timeout",
        ),
        (vec!["--secret", ""], "the secret is empty"),
        (vec!["--listen", "0.0.0.0:0"], "give --secret"),
        (vec!["--listen", "[::]:0"], "give --secret"),
        (vec!["--resolve", "allowed.test=not-an-ip"], "not-an-ip"),
        (vec!["--resolve", "allowed.test"], "allowed.test"),
        (
            vec!["--resolve", "bad name.test=198.51.100.2"],
            "bad name.test",
        ),
        (
            vec!["--resolve", "allowed.test=198.51.100.2,"],
            "allowed.test=198.51.100.2,",
        ),
        (vec!["--dns-server", "198.51.100.53"], "198.51.100.53"),
        (
            vec!["--upstream-proxy", "https://proxy.test:3128"],
            "https://proxy.test:3128",
        ),
        (
            vec!["--upstream-proxy", "http://proxy.test"],
            "http://proxy.test",
        ),
    ];
    let mut bad = Vec::new();
    for (args, needle) in &cases {
        let mut full: Vec<&str> = listen.to_vec();
        full.extend_from_slice(args);
        if !args[0].contains("domain") {
            full.extend_from_slice(&["--allow-domain", "allowed.test"]);
        }
        let (code, err) = standalone_exit(&full);
        match code {
            // 125: nono-agent's own failure (usage errors too).
            Some(125) if err.contains(needle) => {}
            _ => bad.push(format!(
                "{args:?}: exit {code:?} (None = still running), stderr {err:?} \
                 (expected non-zero and a message naming {needle:?})"
            )),
        }
    }
    // A listen address that is not local: a runtime error naming it.
    let (code, err) = standalone_exit(&[
        "--listen",
        "198.51.100.99:3128",
        "--secret",
        "s3cret",
        "--allow-domain",
        "a.test",
    ]);
    if code.is_none_or(|c| c == 0) || !err.contains("198.51.100.99:3128") {
        bad.push(format!(
            "unbindable --listen: exit {code:?}, stderr {err:?}"
        ));
    }
    // Over-blocking: what the checks must not refuse starts and serves.
    let ok = [
        "--allow-domain",
        "*.example.co.uk",
        "--allow-cidr",
        "10.0.0.0/8",
        "--deny-domain",
        "*.com",
        "--allow-cidr",
        "100.64.0.0/10:443",
        "--proxy-max-connections",
        "1",
    ];
    let mut full: Vec<&str> = listen.to_vec();
    full.extend_from_slice(&ok);
    let (code, err) = standalone_exit(&full);
    if code.is_some() {
        bad.push(format!(
            "{ok:?} should start and keep serving: exit {code:?}, {err:?}"
        ));
    }
    assert!(
        bad.is_empty(),
        "bad CLI values accepted or not named:\n  {}",
        bad.join("\n  ")
    );
}

#[test]
fn standalone_proxy_serves_filters_and_summarises() {
    let lab = ProxyLab::new();
    let port = lab.fx.port();
    let events = lab.tmp.path("standalone.jsonl");
    let listen = format!("127.0.0.1:{port}");
    let mut cmd = lab.fx.client_command(&lab.agent);
    // The secret through the environment: a command line is readable by
    // every local user.
    cmd.args(["proxy", "--listen", &listen])
        .env("NONO_PROXY_SECRET", "s3cret")
        .args([
            "--allow-domain",
            "allowed.test",
            "--resolve",
            "allowed.test=198.51.100.2",
        ])
        .args(["--resolve", "evil.test=198.51.100.2"])
        .arg("--dns-server")
        .arg(lab.dns_addr().to_string())
        .arg("--events")
        .arg(&events);
    let dir = lab.scratch("standalone");
    let mut proxy = Background::spawn(&mut cmd, "nono-agent proxy", &dir);
    let up = sys::wait_until(Duration::from_secs(10), || {
        fs::read_to_string(&proxy.stderr)
            .unwrap_or_default()
            .contains(&format!("proxy listening on {listen}"))
    });
    assert!(
        up,
        "standalone proxy did not start: {:?}",
        fs::read_to_string(&proxy.stderr)
    );
    let cmdline = fs::read(format!("/proc/{}/cmdline", proxy.pid())).unwrap_or_default();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains("s3cret"),
        "the secret is on the command line"
    );
    let ca = lab.pki.ca.display().to_string();
    let curl = |proxy_url: &str, url: &str| -> String {
        let out = lab.fx.run_in_client(&[
            "curl",
            "-sS",
            "--max-time",
            "20",
            "--cacert",
            &ca,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_connect}",
            "-x",
            proxy_url,
            url,
        ]);
        out.stdout.trim().to_string()
    };
    let good = format!("http://nono:s3cret@{listen}");
    let wrong = format!("http://nono:wrong@{listen}");
    let none = format!("http://{listen}");
    let results = [
        curl(&good, "http://allowed.test/case/sa-http"),
        curl(&good, "https://allowed.test/case/sa-https"),
        curl(&good, "http://evil.test/case/sa-denied"),
        curl(&wrong, "http://allowed.test/case/sa-wrong"),
        curl(&none, "https://allowed.test/case/sa-none"),
    ];
    // SIGTERM: a clean exit with the summary line.
    // SAFETY: plain syscall on the pid of the process this test started.
    unsafe { libc::kill(proxy.pid(), libc::SIGTERM) };
    let st = sys::wait_child(
        &mut proxy.child,
        Duration::from_secs(10),
        "nono-agent proxy",
    );
    let stderr = fs::read_to_string(&proxy.stderr).unwrap_or_default();
    assert_eq!(
        results,
        [
            "200 000".to_string(),
            "200 200".into(),
            "403 000".into(),
            "407 000".into(),
            "000 407".into()
        ],
        "{stderr}"
    );
    assert_eq!(lab.requests_matching("/case/sa-").len(), 2);
    assert!(
        st.success(),
        "SIGTERM should end it cleanly: {st:?}\n{stderr}"
    );
    assert_eq!(
        parse_summary(&stderr, "standalone"),
        Some((3, vec![("proxy".to_string(), 3)])),
        "{stderr}"
    );
    let ev = proxy_events(&events);
    assert_eq!(
        ev.iter().filter(|e| e["verdict"] == "allow").count(),
        2,
        "{ev:#?}"
    );
    assert_eq!(
        ev.iter().filter(|e| e["verdict"] == "deny").count(),
        3,
        "{ev:#?}"
    );
}

/// The tests need these tools; fail loudly (with the package name) if one is
/// missing rather than let every test fail obscurely.
#[test]
fn prerequisites_for_proxy_tests() {
    for (tool, pkg) in [
        ("python3", "python3"),
        ("openssl", "openssl"),
        ("git", "git"),
        ("curl", "curl"),
    ] {
        require_tool(tool, pkg);
    }
}
