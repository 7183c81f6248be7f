//! The systemd units in dist/systemd: `systemd-analyze verify` accepts them
//! without a single complaint, the checker does catch a broken unit, and the
//! hardening the daemon relies on is present. Needs no root and no agent run,
//! only the built binary (verify requires ExecStart= to exist).

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;

use nono_tests::sys::{self, TempDir};

const SERVICE: &str = "nono-agent.service";
const SOCKET: &str = "nono-agent.socket";
/// ExecStart= as shipped; the tests point it at the freshly built binary.
const EXEC_START: &str = "ExecStart=/usr/bin/nono-agent daemon";
/// The daemon's capabilities, exactly (see the comments in the unit).
const CAPS: [&str; 5] = [
    "CAP_BPF",
    "CAP_NET_ADMIN",
    "CAP_SYS_ADMIN",
    "CAP_SYS_PTRACE",
    "CAP_KILL",
];

fn unit_text(name: &str) -> String {
    let p = sys::workspace_root().join("dist/systemd").join(name);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

/// Copies both units into a fresh directory, ExecStart= rewritten to `exec`,
/// after `edit` has been applied to the service text.
fn stage(tag: &str, exec: &Path, edit: impl FnOnce(String) -> String) -> TempDir {
    let dir = TempDir::new(tag);
    let service = unit_text(SERVICE);
    assert!(
        service.lines().any(|l| l == EXEC_START),
        "{SERVICE} has no line `{EXEC_START}`"
    );
    let exec_line = format!("ExecStart={} daemon", exec.display());
    let service = edit(service.replace(EXEC_START, &exec_line));
    fs::write(dir.path(SERVICE), service).expect("write service copy");
    fs::write(dir.path(SOCKET), unit_text(SOCKET)).expect("write socket copy");
    dir
}

/// Runs `systemd-analyze verify` on the staged units and returns every
/// complaint about them: a non-zero exit, and each output line that names
/// one of our units (verify may also warn about unrelated system units,
/// such as the targets ours are wanted by; those are not ours to fix).
fn verify(dir: &TempDir) -> (String, Vec<String>) {
    let analyze = sys::require_tool("systemd-analyze", "Debian package `systemd`");
    let socket = dir.path(SOCKET);
    let service = dir.path(SERVICE);
    let mut cmd = Command::new(analyze);
    // --man=no: the man page named in Documentation= is not installed here.
    cmd.arg("verify").arg("--man=no").arg(&socket).arg(&service);
    let shown = format!("{cmd:?}");
    let out = sys::run_timeout(&mut cmd, sys::CMD_TIMEOUT);
    let dir_str = dir.0.to_string_lossy().into_owned();
    let mut problems: Vec<String> = out
        .stderr
        .lines()
        .chain(out.stdout.lines())
        .filter(|l| l.contains(SERVICE) || l.contains(SOCKET) || l.contains(&dir_str))
        .map(str::to_owned)
        .collect();
    if !out.status.success() {
        problems.push(format!("systemd-analyze exited {}", out.code()));
    }
    (format!("{shown}\n{}", out.describe()), problems)
}

#[test]
fn systemd_analyze_accepts_the_units() {
    let dir = stage("dist-ok", &sys::agent_bin(), |s| s);
    let (run, problems) = verify(&dir);
    assert!(
        problems.is_empty(),
        "systemd-analyze complained about the units:\n  {}\n{run}",
        problems.join("\n  ")
    );
}

/// The checker is not blind: a misspelled directive (verify exits 0 and only
/// warns) and a missing ExecStart binary are both reported.
#[test]
fn the_checker_catches_broken_units() {
    let agent = sys::agent_bin();
    let dir = stage("dist-typo", &agent, |s| {
        assert!(s.contains("\nProtectSystem=strict\n"));
        s.replace("\nProtectSystem=strict\n", "\nProtectSystm=strict\n")
    });
    let (run, problems) = verify(&dir);
    assert!(
        problems.iter().any(|l| l.contains("ProtectSystm")),
        "a misspelled directive went unreported: {problems:?}\n{run}"
    );

    let dir = stage("dist-noexec", Path::new("/nonexistent/nono-agent"), |s| s);
    let (run, problems) = verify(&dir);
    assert!(
        problems
            .iter()
            .any(|l| l.contains("/nonexistent/nono-agent")),
        "a missing ExecStart binary went unreported: {problems:?}\n{run}"
    );
}

/// `Key=value` lines of a unit (comments and section headers skipped).
fn directives(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .filter(|l| !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn values<'a>(d: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    d.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn the_units_carry_the_required_hardening() {
    let service = directives(&unit_text(SERVICE));
    let socket = directives(&unit_text(SOCKET));
    for (key, want) in [
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("RestrictNamespaces", "net"),
        (
            "RestrictAddressFamilies",
            "AF_UNIX AF_NETLINK AF_INET AF_INET6",
        ),
        ("RuntimeDirectory", "nono-agent"),
        ("RuntimeDirectoryPreserve", "yes"),
        ("UMask", "0077"),
    ] {
        assert_eq!(values(&service, key), [want], "{SERVICE}: {key}=");
    }
    let want: BTreeSet<&str> = CAPS.into_iter().collect();
    for key in ["CapabilityBoundingSet", "AmbientCapabilities"] {
        let v = values(&service, key);
        assert_eq!(v.len(), 1, "{SERVICE}: exactly one {key}= line: {v:?}");
        let got: BTreeSet<&str> = v[0].split_whitespace().collect();
        assert_eq!(got, want, "{SERVICE}: {key}= must list exactly {CAPS:?}");
    }
    // Settings that would break the daemon (see the unit's comments).
    for key in [
        "ProtectControlGroups",
        "PrivateNetwork",
        "User",
        "ProtectKernelTunables",
    ] {
        assert!(
            values(&service, key).is_empty(),
            "{SERVICE} must not set {key}="
        );
    }
    for (key, want) in [
        ("ListenStream", "/run/nono-agent/daemon.sock"),
        ("SocketMode", "0666"),
        ("DirectoryMode", "0755"),
        ("Accept", "no"),
    ] {
        assert_eq!(values(&socket, key), [want], "{SOCKET}: {key}=");
    }
}
