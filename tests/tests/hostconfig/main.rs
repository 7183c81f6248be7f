//! The host configuration (`/etc/nono-agent/config.toml`, here a file named
//! by `NONO_AGENT_CONFIG`): its deny rules beat a profile's and the flags'
//! allow rules (seen at the test server: nothing arrives), allowed traffic
//! still flows, its profile allowlist binds unprivileged users, and a bad,
//! unreadable or planted file stops `exec` with exit 125 before the command
//! runs.
//!
//! Needs root, the proxylab fixture (network namespaces, python3, curl) and
//! `setpriv`. Every name is pinned with `--resolve` or answered by the lab's
//! DNS server; no traffic leaves loopback and the lab's namespaces. Run with
//! `cargo test -p nono-tests --test hostconfig`.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use nono_tests::profilelab::{agent, Exec};
use nono_tests::proxylab::{CurlCase, ProxyLab, Sandbox};
use nono_tests::sys::{self, CmdOutput, TempDir};
use serde_json::Value;

const NOBODY: u32 = 65534;

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the host configuration tests need root"
    );
}

/// Writes `text` as a host configuration in a fresh root-owned directory
/// (0755, file 0644: what the planting check accepts).
fn write_config(dir: &TempDir, text: &str) -> PathBuf {
    let d = dir.path("etc");
    fs::create_dir_all(&d).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
    let f = d.join("config.toml");
    fs::write(&f, text).unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
    f
}

fn read_jsonl(p: &Path) -> Vec<Value> {
    fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The host's events file alone (no `--events`, `-q`) still gets the
/// proxy's `allow` events (the proxy makes them only when something reads
/// them: here only the host's file does), and its refusals; the summary's
/// denial count is that of the refusals.
#[test]
fn host_events_file_alone_gets_the_allowed_proxy_events() {
    require_root();
    let lab = ProxyLab::new();
    let dir = TempDir::new("hostcfg-allow-events");
    fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o755)).unwrap();
    let host_events = lab.scratch("host-events-only").join("events.jsonl");
    let cfg = write_config(&dir, &format!("[events]\npath = \"{}\"\n", s(&host_events)));
    let mut sb = Sandbox::allow(&["allowed.test"]);
    sb.env = vec![("NONO_AGENT_CONFIG".into(), s(&cfg))];
    let curl = vec![
        CurlCase::new(
            "ok-only-host-file",
            "http://allowed.test/case/ok-only-host-file",
        ),
        CurlCase::new(
            "no-only-host-file",
            "http://other.test/case/no-only-host-file",
        ),
    ];
    let (results, out) = lab.curl(&sb, &curl);
    assert_eq!(out.code(), 0, "sandboxed curl script: {}", out.describe());
    assert_eq!(results[0].http_code, 200, "{}", out.describe());
    assert_eq!(lab.requests_to("/case/ok-only-host-file").len(), 1);
    assert_eq!(results[1].proxy_status(), 403, "{}", out.describe());
    let lines = read_jsonl(&host_events);
    assert!(
        lines
            .iter()
            .any(|e| e["verdict"] == "allow" && e["host"] == "allowed.test"),
        "host [events] path alone: no allow event for allowed.test in {lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|e| e["verdict"] == "deny" && e["host"] == "other.test"),
        "host [events] path alone: no deny event for other.test in {lines:#?}"
    );
    assert!(
        out.stderr.contains(": 1 denied"),
        "the summary counts the one refusal: {}",
        out.describe()
    );
}

/// The host denies a name (and a range on one port) that both the profile
/// and the flags allow: the proxy refuses it, names the host configuration,
/// and the test server sees nothing. Names and ranges the host does not deny
/// still work (no over-blocking), and the events reach the host's sink.
#[test]
fn host_denials_beat_profile_and_flags_and_allowed_traffic_still_flows() {
    require_root();
    let mut lab = ProxyLab::new();
    let dir = TempDir::new("hostcfg-deny");
    fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o755)).unwrap();
    let host_events = lab.scratch("host-events").join("events.jsonl");
    let cfg = write_config(
        &dir,
        &format!(
            "[network]\ndeny_domains = [\"blocked.wild.test\"]\n\
             deny_cidrs = [\"198.51.100.2/32:8080\"]\n\n[events]\npath = \"{}\"\n",
            s(&host_events)
        ),
    );
    let profile = dir.path("allows.toml");
    fs::write(
        &profile,
        "extends = \"default\"\n[network]\nallow_domains = [\"blocked.wild.test\", \"allowed.test\"]\n",
    )
    .unwrap();
    let events = lab.scratch("events").join("events.jsonl");
    let mut sb = Sandbox::allow(&["blocked.wild.test", "allowed.test:8080", "*.wild.test"])
        .cidr(&["198.51.100.2/32"])
        .events(&events);
    sb.extra = vec!["--profile".into(), s(&profile)];
    sb.env = vec![("NONO_AGENT_CONFIG".into(), s(&cfg))];
    let host = format!("(host config {}:2)", s(&cfg));
    let host_cidr = format!("(host config {}:3)", s(&cfg));
    // (name, url, expected status, text the 403 body must contain)
    let cases: Vec<(&str, String, u16, Option<String>)> = vec![
        (
            "deny-http",
            "http://blocked.wild.test/case/deny-http".into(),
            403,
            Some(format!("deny-domain blocked.wild.test {host}")),
        ),
        (
            "deny-https",
            "https://blocked.wild.test/case/deny-https".into(),
            403,
            None,
        ),
        (
            "deny-spelling",
            "http://BLOCKED.wild.TEST./case/deny-spelling".into(),
            403,
            Some(format!("deny-domain blocked.wild.test {host}")),
        ),
        (
            "cidr-resolved",
            "http://allowed.test:8080/case/cidr-resolved".into(),
            403,
            Some(format!("deny-cidr 198.51.100.2/32:8080 {host_cidr}")),
        ),
        (
            "cidr-literal",
            "http://198.51.100.2:8080/case/cidr-literal".into(),
            403,
            Some(format!("deny-cidr 198.51.100.2/32:8080 {host_cidr}")),
        ),
        // Not denied by the host: must still work.
        (
            "ok-http",
            "http://allowed.test/case/ok-http".into(),
            200,
            None,
        ),
        (
            "ok-https",
            "https://allowed.test/case/ok-https".into(),
            200,
            None,
        ),
        (
            "ok-wild",
            "https://a.wild.test/case/ok-wild".into(),
            200,
            None,
        ),
        (
            "ok-literal-80",
            "http://198.51.100.2/case/ok-literal-80".into(),
            200,
            None,
        ),
    ];
    let curl: Vec<CurlCase> = cases
        .iter()
        .map(|(n, u, _, _)| CurlCase::new(n, u))
        .collect();
    let (results, out) = lab.curl(&sb, &curl);
    assert_eq!(out.code(), 0, "sandboxed curl script: {}", out.describe());
    lab.assert_servers_alive();
    let mut bad = Vec::new();
    for ((name, url, want, body), r) in cases.iter().zip(&results) {
        let seen = lab.requests_to(&format!("/case/{name}")).len();
        if *want == 200 {
            if r.exit != 0 || r.http_code != 200 || seen != 1 {
                bad.push(format!(
                    "{name} {url}: should reach the server: exit {} status {} body {:?}; server saw {seen}",
                    r.exit, r.http_code, r.body
                ));
            }
        } else {
            if r.proxy_status() != *want || seen != 0 {
                bad.push(format!(
                    "{name} {url}: should be refused with {want}: status {} (connect {}); server saw {seen} request(s)",
                    r.http_code, r.connect_code
                ));
            }
            if let Some(b) = body {
                if !r.body.contains(b.as_str()) {
                    bad.push(format!("{name}: body {:?} lacks {b:?}", r.body));
                }
            }
        }
    }
    // Nothing at all reached the server for the denied name.
    if !lab.requests_matching("/case/deny-").is_empty() {
        bad.push("the server saw a request for a host-denied name".into());
    }
    assert!(bad.is_empty(), "{}\n{}", bad.join("\n"), out.describe());

    // Events: the refusal names the host rule, in --events and in the
    // host's sink alike.
    for (what, file) in [("--events", &events), ("host [events] path", &host_events)] {
        let lines = read_jsonl(file);
        let denied = lines.iter().find(|e| {
            e["verdict"] == "deny"
                && e["host"] == "blocked.wild.test"
                && e["rule"]["kind"] == "deny-domain"
        });
        let Some(denied) = denied else {
            panic!("{what}: no deny event for blocked.wild.test in {lines:#?}");
        };
        assert_eq!(
            denied["rule"]["origin"],
            format!("host config {}:2", s(&cfg)),
            "{what}: {denied}"
        );
        assert!(
            lines
                .iter()
                .any(|e| e["verdict"] == "allow" && e["host"] == "allowed.test"),
            "{what}: no allow event for allowed.test"
        );
        assert!(
            lines.iter().any(|e| e["rule"]["kind"] == "deny-cidr"
                && e["rule"]["origin"] == format!("host config {}:3", s(&cfg))),
            "{what}: no deny-cidr event naming the host configuration"
        );
    }
}

/// A configuration that cannot be used stops `exec` with 125 and the error,
/// before the command runs (fail closed).
#[test]
fn bad_unreadable_or_planted_config_fails_closed() {
    require_root();
    let dir = TempDir::new("hostcfg-bad");
    fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o755)).unwrap();
    // (config text, text the error must contain after FILE)
    let invalid: Vec<(&str, &str)> = vec![
        (
            "[network]\ndeny_domains = [\"ok.test\"]\nbogus = 1\n",
            ":3:1: unknown field `bogus`",
        ),
        ("[network]\n\n[loging]\n", ":3:2: unknown field `loging`"),
        ("[network]\ndeny_domains = \"evil.test\"\n", ":2:16: "),
        ("[network]\ndeny_cidrs = [\"10.0.0.0/99\"]\n", ":2:15: "),
        (
            "[network]\nupstream_proxy = \"socks5://p.test:1080\"\n",
            ":2:18: ",
        ),
        ("[profiles]\nallowed = [\"../x\"]\n", ":2:12: "),
        ("[events]\npath = \"rel/events.jsonl\"\n", ":2:8: "),
        ("[metrics]\nlisten = \"0.0.0.0:9464\"\n", ":2:10: "),
        (
            "[metrics]\nlisten = \"127.0.0.1:9464\"\nlisten = \"127.0.0.1:1\"\n",
            ":3:1: ",
        ),
        ("[network\n", ":1:"),
    ];
    let run = |cfg: &Path| -> CmdOutput {
        Exec::new("seccomp")
            .flags(["--no-daemon", "--allow-domain", "example.test"])
            .env("NONO_AGENT_CONFIG", cfg)
            .run(&["sh", "-c", "echo COMMAND-RAN"])
    };
    let check = |out: &CmdOutput, needle: &str, what: &str| {
        assert_eq!(out.code(), 125, "{what}: {}", out.describe());
        assert!(
            !out.stdout.contains("COMMAND-RAN"),
            "{what}: the command ran\n{}",
            out.describe()
        );
        assert!(
            out.stderr.contains(needle),
            "{what}: stderr lacks {needle:?}\n{}",
            out.describe()
        );
    };
    for (text, at) in &invalid {
        let cfg = write_config(&dir, text);
        let out = run(&cfg);
        check(
            &out,
            &format!("{}{at}", s(&cfg)),
            &format!("config {text:?}"),
        );
        // `config validate` says the same, exit 2.
        let v = agent(&["config", "validate", &s(&cfg)]);
        assert_eq!(v.code(), 2, "validate {text:?}: {}", v.describe());
        assert!(
            v.stderr.contains(&format!("{}{at}", s(&cfg))),
            "{}",
            v.describe()
        );
    }

    // Planted: world-writable file, group-writable directory, foreign owner.
    let cfg = write_config(&dir, "[network]\ndeny_domains = [\"evil.test\"]\n");
    let etc = cfg.parent().unwrap().to_path_buf();
    let ok = run(&cfg);
    assert_ne!(
        ok.code(),
        125,
        "a sound config is accepted: {}",
        ok.describe()
    );
    assert!(ok.stdout.contains("COMMAND-RAN"), "{}", ok.describe());
    fs::set_permissions(&cfg, fs::Permissions::from_mode(0o666)).unwrap();
    check(&run(&cfg), "refusing host config", "world-writable config");
    check(
        &run(&cfg),
        "is writable by others (mode 666)",
        "world-writable config",
    );
    fs::set_permissions(&cfg, fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(&etc, fs::Permissions::from_mode(0o775)).unwrap();
    check(
        &run(&cfg),
        "is writable by others (mode 775)",
        "group-writable directory",
    );
    fs::set_permissions(&etc, fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&cfg, Some(NOBODY), None).unwrap();
    check(&run(&cfg), "belongs to uid 65534", "config owned by nobody");
    let v = agent(&["config", "validate", &s(&cfg)]);
    assert_eq!(v.code(), 2, "{}", v.describe());
    std::os::unix::fs::chown(&cfg, Some(0), None).unwrap();
    let v = agent(&["config", "validate", &s(&cfg)]);
    assert_eq!(v.code(), 0, "{}", v.describe());

    // Unreadable: a directory where the file should be.
    let d = dir.path("isadir.toml");
    fs::create_dir_all(&d).unwrap();
    check(&run(&d), "reading host config", "a directory");

    // Missing: the empty configuration (the command runs).
    let out = run(&dir.path("no-such-config.toml"));
    assert!(out.stdout.contains("COMMAND-RAN"), "{}", out.describe());
}

/// `config show`: every value with its place; credentials hidden.
#[test]
fn config_show_and_validate() {
    require_root();
    let dir = TempDir::new("hostcfg-show");
    fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = write_config(
        &dir,
        "[network]\ndeny_domains = [\"evil.test\"]\nupstream_proxy = \"http://u:secret@proxy.test:3128\"\n\
         [profiles]\nallowed = [\"default\"]\n[metrics]\nlisten = \"[::1]:9464\"\n",
    );
    let mut c = Command::new(sys::agent_bin());
    c.args(["config", "show"]).env("NONO_AGENT_CONFIG", &cfg);
    let out = sys::run_timeout(&mut c, sys::CMD_TIMEOUT);
    assert_eq!(out.code(), 0, "{}", out.describe());
    let f = s(&cfg);
    for want in [
        format!("\"evil.test\",  # host config {f}:2"),
        format!("upstream_proxy = \"http://proxy.test:3128\"  # {f}:3:18"),
        format!("allowed = [\"default\"]  # {f}:5:11"),
        format!("listen = \"[::1]:9464\"  # {f}:7:10"),
        "# path: none (default".to_string(),
    ] {
        assert!(
            out.stdout.contains(&want),
            "show lacks {want:?}:\n{}",
            out.stdout
        );
    }
    assert!(!out.stdout.contains("secret"), "{}", out.stdout);
    let v = agent(&["config", "validate", &f]);
    assert_eq!(v.code(), 0, "{}", v.describe());
    assert!(v.stdout.contains("valid"), "{}", v.describe());
    let v = agent(&["config", "validate", &s(&dir.path("missing.toml"))]);
    assert_eq!(v.code(), 2, "{}", v.describe());
}

/// `[profiles] allowed` binds unprivileged users (names outside the list and
/// profile files are refused, names resolve to the system or built-in
/// profile, never the user's own file of that name); root may name any.
#[test]
fn profile_allowlist_binds_unprivileged_users_only() {
    require_root();
    let setpriv = sys::require_tool("setpriv", "running exec as nobody");
    let dir = TempDir::new("hostcfg-allow");
    fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = write_config(&dir, "[profiles]\nallowed = [\"default\"]\n");
    let no_cfg = dir.path("etc/none.toml");
    // nobody's home, with its own (broken) `default` profile and a profile
    // file of its own.
    let home = TempDir::new("hostcfg-home");
    let prof = home.path("cfg/nono-agent/profiles");
    fs::create_dir_all(&prof).unwrap();
    fs::write(prof.join("default.toml"), "bogus_key = 1\n").unwrap();
    let own = home.path("own.toml");
    fs::write(&own, "extends = \"default\"\n").unwrap();
    for p in [
        home.0.clone(),
        home.path("cfg"),
        home.path("cfg/nono-agent"),
        prof.clone(),
        prof.join("default.toml"),
        own.clone(),
    ] {
        std::os::unix::fs::chown(&p, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let bin = sys::accessible(&sys::agent_bin());
    let run = |uid: Option<u32>, cfg: &Path, profile: &str| -> CmdOutput {
        let mut c = match uid {
            Some(u) => {
                let mut c = Command::new(&setpriv);
                c.args([
                    format!("--reuid={u}"),
                    format!("--regid={u}"),
                    "--clear-groups".into(),
                ])
                .arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        c.args([
            "exec",
            "--enforcer",
            "seccomp",
            "--no-daemon",
            "--profile",
            profile,
            "--",
            "sh",
            "-c",
            "echo COMMAND-RAN",
        ])
        .current_dir(&home.0)
        .env("NONO_AGENT_CONFIG", cfg)
        .env("HOME", &home.0)
        .env("XDG_CONFIG_HOME", home.path("cfg"));
        sys::run_timeout(&mut c, sys::CMD_TIMEOUT)
    };
    let refused = |out: &CmdOutput, needle: &str, what: &str| {
        assert_eq!(out.code(), 125, "{what}: {}", out.describe());
        assert!(
            !out.stdout.contains("COMMAND-RAN"),
            "{what}: {}",
            out.describe()
        );
        assert!(
            out.stderr.contains(needle),
            "{what}: stderr lacks {needle:?}\n{}",
            out.describe()
        );
    };
    let place = format!("host configuration ({}:2:11)", s(&cfg));
    // Outside the list.
    let out = run(Some(NOBODY), &cfg, "ci-python");
    refused(
        &out,
        "--profile \"ci-python\": not allowed by the",
        "nobody, ci-python",
    );
    refused(&out, &place, "nobody, ci-python");
    refused(&out, "may name: default", "nobody, ci-python");
    // A file.
    let out = run(Some(NOBODY), &cfg, &s(&own));
    refused(&out, "not profile files", "nobody, own file");
    refused(&out, "/etc/nono-agent/profiles", "nobody, own file");
    // Allowed name: the built-in, not nobody's broken file of that name.
    let out = run(Some(NOBODY), &cfg, "default");
    assert!(
        out.stdout.contains("COMMAND-RAN"),
        "nobody, default under the allowlist: {}",
        out.describe()
    );
    // Without the list, nobody's own file is used (so the line above proves
    // the user tier was skipped) and other names are not refused by it.
    let out = run(Some(NOBODY), &no_cfg, "default");
    refused(&out, "bogus_key", "nobody, default without a host config");
    let out = run(Some(NOBODY), &no_cfg, "ci-python");
    assert!(
        !out.stderr.contains("host configuration"),
        "{}",
        out.describe()
    );
    // Root may name any profile, files included.
    let out = run(None, &cfg, "ci-python");
    assert!(!out.stderr.contains("not allowed by"), "{}", out.describe());
    let out = run(None, &cfg, &s(&own));
    assert!(
        !out.stderr.contains("not profile files"),
        "{}",
        out.describe()
    );
}
