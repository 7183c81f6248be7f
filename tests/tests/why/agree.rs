//! `why` against the enforcers: the same verdict, with the receiving side
//! (the test host's oracle) or the file itself as the witness.

use std::net::SocketAddr;

use nono_tests::netns::{PROXY_V4, SERVER_V4, SERVER_V6};
use nono_tests::oracle::Proto;
use nono_tests::runner::{Enforcement, ExecOpts, Harness, SandboxGuard};
use nono_tests::sys::{self, TempDir};
use std::time::Duration;

use super::{why, write_profile, PROBE};

/// One destination of the table.
struct Case {
    label: &'static str,
    /// `why` arguments (after the policy flags).
    why: Vec<String>,
    /// Probe arguments.
    probe: Vec<String>,
    /// What the table expects (the enforcer and `why` must also agree).
    allowed: bool,
    /// What the test host received on the port.
    received: Box<dyn Fn(&Harness) -> usize>,
    /// Inside, ask the sandbox's proxy for this `HOST:PORT` (a CONNECT)
    /// instead of running the probe.
    via_proxy: Option<String>,
    /// A line `why` must print.
    says: String,
}

/// A CONNECT through the sandbox's proxy (`HTTPS_PROXY`); prints the
/// status code.
const CONNECT: &str = r#"
import os, sys, socket, base64, urllib.parse
u = urllib.parse.urlparse(os.environ["HTTPS_PROXY"])
auth = base64.b64encode(("%s:%s" % (u.username, u.password)).encode()).decode()
s = socket.create_connection((u.hostname, u.port), timeout=10)
t = sys.argv[1]
s.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Basic %s\r\n\r\n" % (t, t, auth)).encode())
print("status", s.recv(100).split(b" ")[1].decode())
"#;

pub(super) fn agree_on_destinations(e: Enforcement) {
    let h = Harness::new(PROBE);
    let endpoint: SocketAddr = h.proxy_endpoint();
    let tcp = h.fx.port();
    h.oracle.listen_tcp(tcp);
    let tcp6 = h.fx.port();
    h.oracle.listen_tcp(tcp6);
    let udp6 = h.fx.port();
    let pport = h.fx.port();
    h.oracle.listen_tcp(pport);
    let evil_port = h.fx.port();
    h.oracle.listen_tcp(evil_port);
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let ep = endpoint.to_string();
    let mut cases = vec![
        Case {
            label: "tcp to the test host",
            why: s(&[&format!("{SERVER_V4}:{tcp}")]),
            probe: s(&[
                "tcp4",
                "--target",
                &SERVER_V4.to_string(),
                "--port",
                &tcp.to_string(),
            ]),
            allowed: false,
            received: Box::new(move |h: &Harness| h.oracle.tcp_connections(tcp)),
            via_proxy: None,
            says: "direct: denied (not-allowed)".into(),
        },
        Case {
            label: "tcp6 to the test host",
            why: s(&[&format!("[{SERVER_V6}]:{tcp6}")]),
            probe: s(&[
                "tcp6",
                "--target",
                &SERVER_V6.to_string(),
                "--port",
                &tcp6.to_string(),
            ]),
            allowed: false,
            received: Box::new(move |h: &Harness| h.oracle.tcp_connections(tcp6)),
            via_proxy: None,
            says: "direct: denied (not-allowed)".into(),
        },
        Case {
            label: "udp6 to the test host",
            why: s(&[&format!("[{SERVER_V6}]:{udp6}"), "--udp"]),
            probe: s(&[
                "udp6-sendto",
                "--target",
                &SERVER_V6.to_string(),
                "--port",
                &udp6.to_string(),
            ]),
            allowed: false,
            received: Box::new(move |h: &Harness| h.oracle.packets_to(Proto::Udp, udp6)),
            via_proxy: None,
            says: "direct: denied (not-allowed)".into(),
        },
        Case {
            label: "the proxy endpoint",
            why: s(&[&ep]),
            probe: s(&[
                "tcp4",
                "--target",
                &PROXY_V4.to_string(),
                "--port",
                &endpoint.port().to_string(),
            ]),
            allowed: true,
            received: Box::new(move |h: &Harness| h.oracle.tcp_connections(endpoint.port())),
            via_proxy: None,
            says: format!(
                "direct: allowed (proxy) by proxy endpoint {endpoint} [command line (--proxy-endpoint)]"
            ),
        },
    ];
    let tcp4 = |port: u16| {
        s(&[
            "tcp4",
            "--target",
            &SERVER_V4.to_string(),
            "--port",
            &port.to_string(),
        ])
    };
    cases.push(Case {
        label: "a name the proxy allows, pinned to the test host",
        why: s(&[&format!("allowed.test:{pport}")]),
        probe: tcp4(pport),
        allowed: true,
        received: Box::new(move |h: &Harness| h.oracle.tcp_connections(pport)),
        via_proxy: Some(format!("allowed.test:{pport}")),
        says: format!("proxy: allowed by allow-domain allowed.test:{pport} [command line]"),
    });
    cases.push(Case {
        label: "a name no rule allows",
        why: s(&[&format!("evil.test:{evil_port}")]),
        probe: tcp4(evil_port),
        allowed: false,
        received: Box::new(move |h: &Harness| h.oracle.tcp_connections(evil_port)),
        via_proxy: Some(format!("evil.test:{evil_port}")),
        says: format!(
            "proxy: denied (evil.test:{evil_port} is not allowed by any allow-domain rule)"
        ),
    });
    let policy = vec![
        "--allow-domain".to_string(),
        format!("allowed.test:{pport}"),
        "--resolve".to_string(),
        format!("allowed.test={SERVER_V4}"),
        "--resolve".to_string(),
        format!("evil.test={SERVER_V4}"),
    ];
    let opts = ExecOpts {
        proxy_endpoints: vec![endpoint],
        extra: policy.clone(),
        ..ExecOpts::for_enforcement(e)
    };
    for c in &cases {
        // Reachable outside first, seen by the test host.
        let before = (c.received)(&h);
        let (r, out) = h.probe_outside(&c.probe);
        h.oracle.settle();
        assert!(
            r.ok && sys::wait_until(Duration::from_secs(5), || (c.received)(&h) > before),
            "{}: not reachable outside the sandbox, the test proves nothing: {r:?}\n{}",
            c.label,
            out.describe()
        );
        // why, with the policy flags exec gets.
        let mut args = vec!["--proxy-endpoint".to_string(), ep.clone()];
        args.extend(policy.iter().cloned());
        args.extend(c.why.iter().cloned());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let w = why(&argv);
        assert!(
            w.code() == 0 || w.code() == 1,
            "{}: why failed: {}",
            c.label,
            w.describe()
        );
        let why_allowed = w.code() == 0;
        // The enforcer, with the test host as the witness.
        let before = (c.received)(&h);
        let (ok, out) = match &c.via_proxy {
            None => {
                let (r, out) = h.probe_sandboxed_with(&opts, &c.probe);
                let mut guard = SandboxGuard::new();
                guard.track(&r);
                (r.ok, out)
            }
            Some(target) => {
                let out =
                    h.agent_exec(&opts, &["/usr/bin/python3", "-c", CONNECT, target.as_str()]);
                (out.stdout.contains("status 200"), out)
            }
        };
        h.oracle.settle();
        // Counted asynchronously: wait for what the probe says arrived.
        let received = if ok {
            sys::wait_until(Duration::from_secs(5), || (c.received)(&h) > before)
        } else {
            (c.received)(&h) > before
        };
        assert_eq!(
            received,
            ok,
            "{}: the client's result and the test host disagree\n{}",
            c.label,
            out.describe()
        );
        assert_eq!(
            why_allowed,
            received,
            "{} ({}): why says {} but the enforcer {} it\nwhy: {}\nexec: {}",
            c.label,
            e.label(),
            if why_allowed { "allowed" } else { "denied" },
            if received { "let through" } else { "refused" },
            w.stdout,
            out.describe()
        );
        assert_eq!(why_allowed, c.allowed, "{}: {}", c.label, w.stdout);
        assert!(
            w.stdout.contains(&c.says),
            "{}: why does not say {:?}: {}",
            c.label,
            c.says,
            w.stdout
        );
    }
}

/// Paths written and read in a sandbox under a profile file: `why --path`
/// says what happens, and names the profile line.
pub(super) fn agree_on_paths(e: Enforcement) {
    let h = Harness::new(PROBE);
    let tmp = TempDir::new("why-fs");
    let ro = tmp.path("ro");
    let rw = tmp.path("ro/rw");
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::write(ro.join("f"), b"ro").unwrap();
    std::fs::write(tmp.path("secret"), b"secret").unwrap();
    let opts = ExecOpts::for_enforcement(e);
    if let Some(u) = opts.user {
        // An unprivileged sandbox must be able to write rw/ by permission.
        tmp.chown(u.uid, u.gid);
        std::os::unix::fs::chown(&ro, Some(u.uid), Some(u.gid)).unwrap();
        std::os::unix::fs::chown(&rw, Some(u.uid), Some(u.gid)).unwrap();
        std::os::unix::fs::chown(tmp.path("secret"), Some(u.uid), Some(u.gid)).unwrap();
        std::os::unix::fs::chown(ro.join("f"), Some(u.uid), Some(u.gid)).unwrap();
    }
    // Outside: every operation works.
    let profile_dir = TempDir::new("why-profile");
    let profile = profile_dir.path("why.toml");
    write_profile(
        &profile,
        &format!(
            "[filesystem]\n\
             read = [\"/usr\", \"/bin\", \"/lib\", \"/lib64\", \"/etc\", \"/dev\", \"/proc\",\n  \"{}\"]\n\
             write = [\"/dev/null\",\n  \"{}\"]\n\
             exec = [\"/usr\", \"/bin\", \"/lib\", \"/lib64\"]\n",
            ro.display(),
            rw.display()
        ),
    );
    let p = profile.display().to_string();
    let cases: Vec<(String, &str, String, bool, Option<&str>)> = vec![
        // (path, access, shell test, expected, profile line:col of the deciding rule)
        (
            rw.join("new").display().to_string(),
            "--write",
            format!("echo x > {}/new", rw.display()),
            true,
            Some(":5:3"),
        ),
        (
            ro.join("f").display().to_string(),
            "--write",
            format!("echo x >> {}/f", ro.display()),
            false,
            None,
        ),
        (
            ro.join("f").display().to_string(),
            "--read",
            format!("cat {}/f", ro.display()),
            true,
            Some(":3:3"),
        ),
        (
            tmp.path("secret").display().to_string(),
            "--read",
            format!("cat {}", tmp.path("secret").display()),
            false,
            None,
        ),
    ];
    for (path, access, script, expected, line) in cases {
        let outside = std::process::Command::new("sh")
            .args(["-c", &script])
            .output()
            .unwrap();
        assert!(
            outside.status.success(),
            "{script}: fails outside the sandbox already"
        );
        let w = why(&["--profile", &p, "--path", &path, access]);
        assert!(w.code() == 0 || w.code() == 1, "{}", w.describe());
        let mut o = opts.clone();
        o.extra = vec!["--profile".into(), p.clone()];
        let out = h.agent_exec(
            &o,
            &["sh", "-c", &format!("{script} 2>/dev/null; echo rc=$?")],
        );
        let sandbox_ok = out.stdout.contains("rc=0");
        assert!(out.stdout.contains("rc="), "{}", out.describe());
        assert_eq!(
            w.code() == 0,
            sandbox_ok,
            "{path} {access} ({}): why and Landlock disagree\nwhy: {}\nexec: {}",
            e.label(),
            w.stdout,
            out.describe()
        );
        assert_eq!(sandbox_ok, expected, "{path} {access}: {}", out.describe());
        if let Some(l) = line {
            assert!(
                w.stdout.contains(&format!("[{p}{l}]")),
                "{path}: why does not name {p}{l}: {}",
                w.stdout
            );
        }
        // The command's "Permission denied" comes with the summary's
        // filesystem line, not a bare "0 denied".
        if !sandbox_ok {
            assert!(
                out.stderr.contains("filesystem denials are not reported")
                    || out.stderr.contains("(landlock: "),
                "{}",
                out.describe()
            );
        }
    }
    // Without a profile there is no filesystem line.
    let out = h.agent_exec(&opts, &["true"]);
    assert!(
        !out.stderr.contains("filesystem denials"),
        "{}",
        out.describe()
    );
}
