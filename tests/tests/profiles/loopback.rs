//! Part 3: loopback ports a profile allows, and only those.

use nono_tests::profilelab::{Acceptor, Exec};
use nono_tests::sys::TempDir;

use super::{assert_code, prereqs, s, write_profile, EPERM};

fn loopback_checks(enf: &str, flags: &[String], a: &Acceptor, b: &Acceptor, what: &str) {
    let p = Exec::new(enf)
        .flags(flags)
        .probe(&[format!("tcp={}", a.port), format!("tcp={}", b.port)]);
    assert_code(&p.out, 0, what);
    assert_eq!(p.ok(0, what).out, "hello", "{what}: allowed port greeting");
    p.refused(1, &[EPERM], what);
}

fn loopback_ports(enf: &str) {
    prereqs();
    let a = Acceptor::tcp_loopback();
    let b = Acceptor::tcp_loopback();
    // Without narrowing both are reachable (so the refusal is the flag's doing).
    let p = Exec::new(enf).probe(&[format!("tcp={}", a.port), format!("tcp={}", b.port)]);
    p.ok(0, "loopback any: first listener");
    p.ok(1, "loopback any: second listener");
    let p = Exec::new(enf)
        .flags(["--profile", "default"])
        .probe(&[format!("tcp={}", a.port), format!("tcp={}", b.port)]);
    p.ok(0, "default profile (loopback any): first listener");
    p.ok(1, "default profile (loopback any): second listener");

    let ap = a.port.to_string();
    loopback_checks(
        enf,
        &["--loopback-port".into(), ap.clone()],
        &a,
        &b,
        &format!("{enf} --loopback-port {ap}"),
    );
    loopback_checks(
        enf,
        &[
            "--profile".into(),
            "default".into(),
            "--loopback-port".into(),
            ap.clone(),
        ],
        &a,
        &b,
        &format!("{enf} --profile default (loopback any) --loopback-port {ap}"),
    );
    let dir = TempDir::new("prof-loop");
    let prof = write_profile(
        &dir,
        "lo.toml",
        &format!("extends = \"default\"\n[network]\nloopback = [{ap}]\n"),
    );
    loopback_checks(
        enf,
        &["--profile".into(), s(&prof)],
        &a,
        &b,
        &format!("{enf} profile loopback = [{ap}]"),
    );
    // The flag adds to the profile's list.
    let p = Exec::new(enf)
        .flags([
            "--profile",
            &s(&prof),
            "--loopback-port",
            &b.port.to_string(),
        ])
        .probe(&[format!("tcp={}", a.port), format!("tcp={}", b.port)]);
    p.ok(0, "profile port with --loopback-port of the other");
    p.ok(1, "--loopback-port adds to the profile's ports");

    // The proxy stays reachable when loopback is narrowed.
    for flags in [
        vec!["--loopback-port".to_string(), ap.clone()],
        vec!["--profile".to_string(), s(&prof)],
    ] {
        let mut f = flags.clone();
        f.extend(["--allow-domain".to_string(), "x.test".to_string()]);
        let p = Exec::new(enf).flags(&f).probe(&[
            format!("tcp={}", a.port),
            format!("tcp={}", b.port),
            "proxy=blocked.invalid".to_string(),
        ]);
        let what = format!("{enf} {f:?}");
        assert_code(&p.out, 0, &what);
        p.ok(0, &what);
        p.refused(1, &[EPERM], &what);
        let r = p.ok(2, &format!("{what}: the proxy port from HTTP_PROXY"));
        assert!(
            r.out.starts_with("HTTP/1.1 403"),
            "{what}: the proxy should answer (403 for a host not allowed), got {:?}",
            r.out
        );
    }
}

#[test]
fn loopback_ports_bpf() {
    loopback_ports("bpf");
}

#[test]
fn loopback_ports_seccomp() {
    loopback_ports("seccomp");
}
