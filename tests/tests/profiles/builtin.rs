//! Part 6: the built-in profiles with real tools (cargo, node, python, git,
//! agent CLIs).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use nono_tests::profilelab::{Exec, Scratch, PYTHON};
use nono_tests::sys;

use super::{assert_code, prereqs, OUTSIDE};

fn cargo_build(enf: &str) {
    prereqs();
    sys::require_tool("cargo", "the ci-rust profile test builds a crate");
    let dir = Scratch::new(OUTSIDE, "crate");
    dir.file(
        "Cargo.toml",
        "[package]\nname = \"nono_prof_tiny\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n",
    );
    fs::create_dir(dir.path("src")).expect("mkdir src");
    dir.file("src/main.rs", "fn main() { println!(\"tiny-ok\"); }\n");
    let out = Exec::new(enf)
        .flags(["--profile", "ci-rust"])
        .cwd(&dir.0)
        .timeout(Duration::from_secs(300))
        .run(&["cargo", "build", "--offline"]);
    assert_code(
        &out,
        0,
        &format!("{enf}: `cargo build --offline` under --profile ci-rust, as-is (default CARGO_HOME/RUSTUP_HOME)"),
    );
    let bin = dir.path("target/debug/nono_prof_tiny");
    assert!(bin.is_file(), "{} was not built", bin.display());
    let out = Exec::new(enf)
        .flags(["--profile", "ci-rust"])
        .cwd(&dir.0)
        .run(&["./target/debug/nono_prof_tiny"]);
    assert_code(&out, 0, "running what was built");
    assert_eq!(out.stdout.trim(), "tiny-ok");
}

#[test]
fn builtin_ci_rust_cargo_build_offline_bpf() {
    cargo_build("bpf");
}

#[test]
fn builtin_ci_rust_cargo_build_offline_seccomp() {
    cargo_build("seccomp");
}

#[test]
fn builtin_default_git_status_and_commit() {
    prereqs();
    sys::require_tool("git", "git in a temporary repository");
    let repo = Scratch::new(OUTSIDE, "git");
    let git = |args: &[&str]| {
        let out = sys::run_timeout(
            Command::new("git")
                .args(["-c", "user.name=nono", "-c", "user.email=nono@example.test"])
                .args(args)
                .current_dir(&repo.0),
            sys::CMD_TIMEOUT,
        );
        assert_code(&out, 0, &format!("git {args:?} outside"));
    };
    git(&["init", "-q"]);
    repo.file("a", "a\n");
    git(&["add", "a"]);
    git(&["commit", "-qm", "init"]);
    repo.file("new-file", "b\n");
    let out = Exec::new("bpf")
        .flags(["--profile", "default"])
        .cwd(&repo.0)
        .run(&["git", "status", "--porcelain"]);
    assert_code(&out, 0, "git status under --profile default");
    assert_eq!(out.stdout.trim(), "?? new-file", "git status output");
    let out = Exec::new("bpf")
        .flags(["--profile", "default"])
        .cwd(&repo.0)
        .run(&[
            "sh",
            "-c",
            "git add new-file && git -c user.name=nono -c user.email=nono@example.test commit -qm two && git rev-list --count HEAD",
        ]);
    assert_code(&out, 0, "git add + commit under --profile default");
    assert_eq!(out.stdout.trim(), "2");
}

/// `python3` as found in PATH, as a user would type it. (Fails where that
/// is a pyenv shim in `~/.pyenv`: ci-python grants no exec there.)
#[test]
fn builtin_ci_python_python3_from_path_as_is() {
    prereqs();
    let resolved = sys::require_tool("python3", "the ci-python profile test");
    let cwd = Scratch::new(OUTSIDE, "py");
    let out = Exec::new("bpf")
        .flags(["--profile", "ci-python"])
        .cwd(&cwd.0)
        .run(&["python3", "-c", "print(1)"]);
    assert!(
        out.code() == 0 && out.stdout.trim() == "1",
        "`python3 -c 'print(1)'` under --profile ci-python, as-is: python3 in PATH is {} \
         (the profile makes only /usr, /bin, /sbin, /lib, /lib64, /opt and its write paths executable)\n{}",
        resolved.display(),
        out.describe()
    );
}

#[test]
fn builtin_ci_python_system_python() {
    prereqs();
    let cwd = Scratch::new(OUTSIDE, "py");
    for enf in ["bpf", "seccomp"] {
        let out = Exec::new(enf)
            .flags(["--profile", "ci-python"])
            .cwd(&cwd.0)
            .run(&[PYTHON, "-c", "print(1)"]);
        assert_code(&out, 0, &format!("{enf}: {PYTHON} under ci-python"));
        assert_eq!(out.stdout.trim(), "1");
        let out = Exec::new(enf)
            .flags(["--profile", "ci-python"])
            .cwd(&cwd.0)
            .run(&[PYTHON, "-m", "pip", "--version"]);
        assert_code(&out, 0, &format!("{enf}: pip --version under ci-python"));
    }
}

#[test]
fn builtin_ci_node_node() {
    prereqs();
    sys::require_tool("node", "the ci-node profile test");
    let cwd = Scratch::new(OUTSIDE, "node");
    for enf in ["bpf", "seccomp"] {
        let out = Exec::new(enf)
            .flags(["--profile", "ci-node"])
            .cwd(&cwd.0)
            .run(&["node", "-e", "console.log(1)"]);
        assert_code(&out, 0, &format!("{enf}: node under ci-node"));
        assert_eq!(out.stdout.trim(), "1");
    }
}

#[test]
fn builtin_claude_code_and_codex_start() {
    prereqs();
    let cwd = Scratch::new(OUTSIDE, "agents");
    for profile in ["claude-code", "codex"] {
        for enf in ["bpf", "seccomp"] {
            let out = Exec::new(enf)
                .flags(["--profile", profile])
                .cwd(&cwd.0)
                .run(&["sh", "-c", "test -n \"$HTTPS_PROXY\" && echo started"]);
            assert_code(&out, 0, &format!("{enf}: --profile {profile} -- sh"));
            assert_eq!(
                out.stdout.trim(),
                "started",
                "{profile}: the proxy environment should be set"
            );
        }
    }
}

/// A profile another user (or an earlier sandbox) could have written is
/// refused, and a user profile that shadows a built-in is flagged: the file
/// decides the next sandbox's policy.
#[test]
fn planted_profiles_are_refused_or_flagged() {
    use std::os::unix::fs::chown;
    prereqs();
    let cfg = Scratch::new(OUTSIDE, "xdg");
    let dir = cfg.path("nono-agent/profiles");
    fs::create_dir_all(&dir).expect("profile dir");
    let file = dir.join("default.toml");
    fs::write(&file, "extends = \"default\"\n").expect("write profile");
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    let run = || {
        Exec::new("bpf")
            .env("XDG_CONFIG_HOME", &cfg.0)
            .flags(["--profile", "default"])
            .run(&["sh", "-c", "echo COMMAND-RAN"])
    };
    let out = run();
    assert_code(&out, 0, "a safe user profile shadowing a built-in");
    assert!(
        out.stderr.contains("not the built-in profile"),
        "the shadowing should be flagged\n{}",
        out.describe()
    );
    let refused = |what: &str, needle: &str| {
        let out = run();
        assert_code(&out, 125, what);
        assert!(
            !out.stdout.contains("COMMAND-RAN"),
            "{what}: the command ran"
        );
        assert!(
            out.stderr.contains("refusing profile") && out.stderr.contains(needle),
            "{what}: the error should say why ({needle})\n{}",
            out.describe()
        );
    };
    fs::set_permissions(&file, fs::Permissions::from_mode(0o666)).unwrap();
    refused("a world-writable profile", "writable by others");
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    refused(
        "a profile in a world-writable directory",
        "writable by everyone",
    );
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    chown(&file, Some(54321), None).unwrap();
    refused("a profile owned by another user", "belongs to uid 54321");
    chown(&file, Some(0), None).unwrap();
    assert_code(&run(), 0, "the same profile, safe again");
}
