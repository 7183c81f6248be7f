//! The rough edges a new user hits (issue 13, item 5): each behaviour is
//! checked on the real binary, with its over-blocking counterpart (the
//! ordinary use the check must not refuse). The proxy's own edges (public
//! suffix wildcards, CIDRs, secrets, the port message) are in the `proxy`
//! target; pure decisions have unit tests next to them.
//!
//! Exec runs use `--no-daemon` (never the default daemon socket); doctor
//! asks a socket nothing listens on.

use std::path::{Path, PathBuf};
use std::process::Command;

use nono_tests::runner::RunAs;
use nono_tests::sys::{self, CmdOutput, TempDir};

fn agent(args: &[&str]) -> CmdOutput {
    sys::run_timeout(Command::new(sys::agent_bin()).args(args), sys::CMD_TIMEOUT)
}

/// `nono-agent exec --no-daemon ARGS`.
fn exec(args: &[&str]) -> CmdOutput {
    let mut full = vec!["exec", "--no-daemon"];
    full.extend_from_slice(args);
    agent(&full)
}

fn expect(out: &CmdOutput, code: i32, needles: &[&str], what: &str) {
    assert_eq!(out.code(), code, "{what}\n{}", out.describe());
    for n in needles {
        assert!(
            out.stderr.contains(n) || out.stdout.contains(n),
            "{what}: output should contain {n:?}\n{}",
            out.describe()
        );
    }
}

/// A profile file in `dir` (a root-owned directory under sticky /tmp, as
/// profile files must be).
fn profile(dir: &TempDir, name: &str, body: &[u8]) -> String {
    let p = dir.path(name);
    std::fs::write(&p, body).expect("write profile");
    p.to_string_lossy().into_owned()
}

pub fn usage_errors_exit_125_and_exec_without_dashes_gets_a_hint() {
    sys::require_prereqs();
    let out = agent(&["exec", "sh", "-c", "echo hi"]);
    expect(
        &out,
        125,
        &[
            "unexpected argument",
            "hint: put the command after `--`",
            "nono-agent exec [OPTIONS] -- sh [ARGS...]",
        ],
        "exec without --",
    );
    assert!(
        !out.stdout.contains("hi"),
        "nothing ran\n{}",
        out.describe()
    );
    for bad in [
        &["exec", "--bogus", "--", "true"][..],
        &["exec", "--enforcer", "nope", "--", "true"],
        &["exec"],
        &["no-such-command"],
        &[],
    ] {
        let out = agent(bad);
        assert_eq!(out.code(), 125, "{bad:?}\n{}", out.describe());
    }
    // Help and version still succeed, on stdout.
    for ok in [
        &["--help"][..],
        &["--version"],
        &["exec", "--help"],
        &["help"],
    ] {
        let out = agent(ok);
        assert_eq!(out.code(), 0, "{ok:?}\n{}", out.describe());
        assert!(!out.stdout.is_empty(), "{ok:?} prints on stdout");
    }
    // The command's own exit codes are untouched: 2 stays the command's.
    let out = exec(&["-q", "--", "sh", "-c", "exit 2"]);
    assert_eq!(out.code(), 2, "{}", out.describe());
}

pub fn values_a_profile_refuses_are_refused_on_the_command_line() {
    sys::require_prereqs();
    for (args, needle) in [
        (&["--loopback-port", "0"][..], "0 is not a port"),
        (&["--proxy-max-connections", "0"], "must be at least 1"),
        (&["--proxy-idle-timeout", "0"], "--proxy-idle-timeout"),
        (&["--allow-domain", "*.com"], "\"com\" is a public suffix"),
        (
            &["--allow-domain", "*.np"],
            "every name directly under \"np\" is a public suffix",
        ),
        (
            &["--allow-domain", "*.co.uk"],
            "\"co.uk\" is a public suffix",
        ),
        (
            &["--allow-cidr", "169.254.0.0/16"],
            "lies within link-local",
        ),
        (
            &["--allow-cidr", "fe80::/64"],
            "lies within link-local fe80::/10",
        ),
        (
            &["--allow-cidr", "10.0.0.1/8"],
            "host bits are set: the network is 10.0.0.0/8",
        ),
    ] {
        let mut full = args.to_vec();
        full.extend_from_slice(&["--", "touch", "/tmp/nono-rough-must-not-exist"]);
        let out = exec(&full);
        expect(&out, 125, &[needle], &format!("{args:?}"));
        assert!(!Path::new("/tmp/nono-rough-must-not-exist").exists());
    }
    // The same values in a profile: the same verdicts.
    let dir = TempDir::new("rough-values");
    for (body, needle) in [
        ("[network]\nloopback = [0]\n", "0 is not a port"),
        (
            "[network]\nallow_domains = [\"*.co.uk\"]\n",
            "\"co.uk\" is a public suffix",
        ),
        (
            "[network]\nallow_domains = [\"*.compute.amazonaws.com\"]\n",
            "every name directly under \"compute.amazonaws.com\" is a public suffix",
        ),
        (
            "[network]\nallow_cidrs = [\"169.254.169.254\"]\n",
            "lies within link-local",
        ),
        (
            "[network]\nallow_cidrs = [\"10.0.0.1/8\"]\n",
            "host bits are set",
        ),
    ] {
        let p = profile(&dir, "v.toml", body.as_bytes());
        let out = exec(&["--profile", &p, "--", "true"]);
        expect(&out, 125, &[needle, "v.toml:2:"], body);
        let out = agent(&["profile", "validate", &p]);
        expect(&out, 2, &[needle], body);
    }
    // Over-blocking: ordinary values run.
    let out = exec(&[
        "-q",
        "--loopback-port",
        "5432",
        "--allow-domain",
        "*.example.com",
        "--allow-domain",
        "*.example.co.uk",
        "--deny-domain",
        "*.com",
        "--allow-cidr",
        "10.0.0.0/8",
        "--allow-cidr",
        "100.64.0.0/10",
        "--proxy-max-connections",
        "1",
        "--",
        "true",
    ]);
    expect(&out, 0, &[], "ordinary values");
}

pub fn user_gets_its_own_identity_and_a_bare_uid_runs() {
    sys::require_prereqs();
    let show = "echo \"HOME=$HOME USER=$USER LOGNAME=$LOGNAME UID=$(id -u) GID=$(id -g)\"";
    // The caller's identity, which must not leak through.
    let env = [("HOME", "/root"), ("USER", "root"), ("LOGNAME", "root")];
    let run = |user: &str| {
        let mut c = Command::new(sys::agent_bin());
        c.args([
            "exec",
            "--no-daemon",
            "-q",
            "--user",
            user,
            "--",
            "sh",
            "-c",
            show,
        ])
        .envs(env);
        sys::run_timeout(&mut c, sys::CMD_TIMEOUT)
    };
    let pw = sys::run_ok("getent", &["passwd", "nobody"]).stdout;
    let fields: Vec<&str> = pw.trim().split(':').collect();
    let want = format!(
        "HOME={} USER=nobody LOGNAME=nobody UID={} GID={}",
        fields[5], fields[2], fields[3]
    );
    let out = run("nobody");
    expect(&out, 0, &[&want], "--user nobody");
    // A numeric uid without a passwd entry: accepted (the help says "name
    // or uid"), HOME=/, the uid as USER and LOGNAME, gid 65534.
    let bare = "3987654";
    assert!(
        sys::run_timeout(
            Command::new("getent").args(["passwd", bare]),
            sys::CMD_TIMEOUT
        )
        .code()
            != 0,
        "uid {bare} must have no passwd entry for this test"
    );
    let out = run(bare);
    expect(
        &out,
        0,
        &[&format!(
            "HOME=/ USER={bare} LOGNAME={bare} UID={bare} GID=65534"
        )],
        "--user 3987654",
    );
    // (uid_t)-1 means "leave unchanged" to setresuid: as a bare uid it
    // would keep the command root (a careless operator, or a profile's
    // `process.user`, asking to drop privileges). Refused before anything
    // runs.
    let out = run("4294967295");
    expect(
        &out,
        125,
        &["4294967295", "not a usable uid"],
        "--user 4294967295",
    );
    assert!(!out.stdout.contains("UID=0"), "{}", out.describe());
    // A name that does not exist: refused before anything runs.
    let out = run("nosuchuser-nono");
    expect(
        &out,
        125,
        &["no such user: nosuchuser-nono"],
        "--user unknown",
    );
    assert!(!out.stdout.contains("HOME="), "{}", out.describe());
    // Under a pass-through environment only what it lets through is set.
    let dir = TempDir::new("rough-user");
    let p = profile(
        &dir,
        "env.toml",
        b"extends = \"default\"\n[process]\nenv = [\"PATH\", \"HOME\"]\n",
    );
    let mut c = Command::new(sys::agent_bin());
    c.args([
        "exec",
        "--no-daemon",
        "-q",
        "--profile",
        &p,
        "--user",
        "nobody",
    ])
    .args(["--", "sh", "-c", "echo \"HOME=$HOME USER=${USER-unset}\""])
    .envs(env);
    let out = sys::run_timeout(&mut c, sys::CMD_TIMEOUT);
    expect(
        &out,
        0,
        &[&format!("HOME={} USER=unset", fields[5])],
        "pass-through env",
    );
}

pub fn a_profile_that_hides_the_command_or_its_interpreter_says_so() {
    sys::require_prereqs();
    let dir = TempDir::new("rough-hidden");
    let bin = dir.path("bin");
    std::fs::create_dir(&bin).unwrap();
    // A pyenv-style shim: its #! names env, which runs bash through PATH.
    let shim = bin.join("tool");
    std::fs::write(&shim, "#!/usr/bin/env bash\necho shim-ran\n").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    let shim_s = shim.to_string_lossy().into_owned();
    let bin_s = bin.to_string_lossy().into_owned();
    // Outside the sandbox it runs.
    expect(&sys::run_ok(&shim_s, &[]), 0, &["shim-ran"], "shim outside");

    // A profile without `extends` that lists only the shim's directory.
    let only = profile(
        &dir,
        "only.toml",
        format!("[filesystem]\nexec = [\"{bin_s}\"]\n").as_bytes(),
    );
    let out = exec(&["-q", "--profile", &only, "--", &shim_s]);
    expect(
        &out,
        126,
        &[
            "profile",
            "denies executing /usr/bin/env",
            &format!(
                "the interpreter of {}",
                std::fs::canonicalize(&shim).unwrap().display()
            ),
            "--exec /usr/bin",
        ],
        "hidden interpreter",
    );
    assert!(!out.stdout.contains("shim-ran"), "{}", out.describe());
    // The command itself hidden (nothing lists /usr/bin).
    let out = exec(&["-q", "--profile", &only, "--", "/usr/bin/true"]);
    expect(
        &out,
        126,
        &["denies executing /usr/bin/true"],
        "hidden command",
    );
    // Its ELF loader hidden (only /usr/bin listed).
    let usr_bin = profile(
        &dir,
        "usrbin.toml",
        b"[filesystem]\nexec = [\"/usr/bin\"]\n",
    );
    let out = exec(&["-q", "--profile", &usr_bin, "--", "/usr/bin/true"]);
    expect(
        &out,
        126,
        &["the ELF interpreter of /usr/bin/true", "ld-linux"],
        "hidden loader",
    );

    // Over-blocking: with the system (default) and the directory, it runs;
    // the verdict agrees with what Landlock then lets through.
    let out = exec(&[
        "-q",
        "--profile",
        "default",
        "--exec",
        &bin_s,
        "--",
        &shim_s,
    ]);
    expect(&out, 0, &["shim-ran"], "shim under default + --exec");
    let out = exec(&[
        "-q",
        "--profile",
        "default",
        "--",
        "sh",
        "-c",
        "echo sh-ran",
    ]);
    expect(&out, 0, &["sh-ran"], "sh under default");
}

pub fn events_never_share_the_commands_output() {
    sys::require_prereqs();
    let dir = TempDir::new("rough-events");
    for target in ["-", "/dev/stdout", "/dev/stderr", "/proc/self/fd/1"] {
        let out = exec(&["-q", "--events", target, "--", "sh", "-c", "echo ran"]);
        expect(
            &out,
            125,
            &[&format!("--events {target}: that is the command's own")],
            target,
        );
        assert!(
            !out.stdout.contains("ran"),
            "{target}: nothing ran\n{}",
            out.describe()
        );
    }
    // A file of its own: the command's stdout has only its own output.
    let ev = dir.path("events.jsonl");
    let ev_s = ev.to_string_lossy().into_owned();
    let out = exec(&[
        "-q",
        "--events",
        &ev_s,
        "--",
        "sh",
        "-c",
        "echo ran; echo '{\"forged\":1}'",
    ]);
    expect(&out, 0, &["ran"], "events to a file");
    assert!(ev.exists(), "the events file is created");
    let events = std::fs::read_to_string(&ev).unwrap();
    assert!(!events.contains("forged"), "{events}");
}

/// Runs `doctor --json` and `exec` in a network namespace entered with
/// `ip netns exec` (a fresh /sys without cgroup2) and with `nsenter`:
/// doctor's `auto_enforcer` predicts what exec does, and exec's refusal
/// says why and what to do, once.
pub fn doctor_predicts_exec_inside_ip_netns_exec() {
    sys::require_prereqs();
    let ns = NetnsName::new();
    let agent = sys::agent_bin();
    let agent_s = agent.to_string_lossy().into_owned();
    let nowhere = TempDir::new("rough-doctor");
    let sock = nowhere.path("none.sock").to_string_lossy().into_owned();
    let doctor = |via: &[&str]| -> serde_json::Value {
        let mut c = Command::new(via[0]);
        c.args(&via[1..])
            .args([&agent_s, "doctor", "--json", "--daemon-socket", &sock]);
        let out = sys::run_timeout(&mut c, sys::CMD_TIMEOUT);
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("doctor --json via {via:?}: {e}\n{}", out.describe()))
    };
    let exec_in = |via: &[&str]| {
        let mut c = Command::new(via[0]);
        c.args(&via[1..])
            .args([&agent_s, "exec", "--no-daemon", "--", "true"]);
        sys::run_timeout(&mut c, sys::CMD_TIMEOUT)
    };
    let ip = ["ip", "netns", "exec", ns.0.as_str()];
    let netns_arg = format!("--net=/run/netns/{}", ns.0);
    let nsenter = ["nsenter", netns_arg.as_str()];

    // ip netns exec: no cgroup2 here; doctor says exec will refuse, and it does.
    let d = doctor(&ip);
    assert!(d["auto_enforcer"].is_null(), "doctor: {d:#}");
    let reason = d["auto_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!("ip netns exec {}", ns.0)),
        "{reason}"
    );
    let out = exec_in(&ip);
    expect(
        &out,
        125,
        &[
            &format!("`ip netns exec {}` mounted a new /sys", ns.0),
            &format!("nsenter --net=/run/netns/{}", ns.0),
        ],
        "exec under ip netns exec",
    );
    assert_eq!(
        out.stderr.matches("no cgroup2 filesystem").count(),
        1,
        "said once\n{}",
        out.describe()
    );
    // nsenter keeps the host's /sys: doctor predicts bpf, exec uses bpf.
    let d = doctor(&nsenter);
    assert_eq!(d["auto_enforcer"], "bpf", "doctor: {d:#}");
    let out = exec_in(&nsenter);
    expect(
        &out,
        0,
        &["nono-agent: enforcer: bpf"],
        "exec under nsenter",
    );
}

/// A network namespace made for one test and deleted on drop.
struct NetnsName(String);

impl NetnsName {
    fn new() -> Self {
        let name = format!("nono-rough-{}", std::process::id());
        let _ = sys::run_timeout(
            Command::new("ip").args(["netns", "del", &name]),
            sys::CMD_TIMEOUT,
        );
        sys::run_ok("ip", &["netns", "add", &name]);
        Self(name)
    }
}

impl Drop for NetnsName {
    fn drop(&mut self) {
        let _ = sys::run_timeout(
            Command::new("ip").args(["netns", "del", &self.0]),
            sys::CMD_TIMEOUT,
        );
    }
}

/// An unprivileged agent falls back to seccomp (`auto`): the line saying
/// so is printed, and `-q` hides it.
pub fn quiet_hides_the_seccomp_fallback_line() {
    sys::require_prereqs();
    let user = RunAs::fresh();
    let setpriv = sys::require_tool("setpriv", "runs the agent unprivileged");
    let agent = sys::accessible(&sys::agent_bin());
    let run = |quiet: bool| {
        let mut c = Command::new(&setpriv);
        c.args(user.setpriv_args())
            .arg(&agent)
            .args(["exec", "--no-daemon"]);
        if quiet {
            c.arg("-q");
        }
        c.args(["--", "true"]);
        sys::run_timeout(&mut c, sys::CMD_TIMEOUT)
    };
    let loud = run(false);
    expect(&loud, 0, &["nono-agent: enforcer: seccomp ("], "without -q");
    let quiet = run(true);
    assert_eq!(quiet.code(), 0, "{}", quiet.describe());
    assert!(
        quiet.stderr.trim().is_empty(),
        "-q prints nothing on success\n{}",
        quiet.describe()
    );
}

/// `profile validate` resolves names as exec does and makes exec's checks.
pub fn profile_validate_agrees_with_exec() {
    sys::require_prereqs();
    let out = agent(&["profile", "validate", "claude-code"]);
    expect(
        &out,
        0,
        &["claude-code: valid", "builtin:claude-code.toml"],
        "a name",
    );
    let out = agent(&["profile", "validate", "nono-no-such-profile"]);
    expect(
        &out,
        2,
        &[
            "profile \"nono-no-such-profile\" not found",
            "built-in profiles",
        ],
        "unknown name",
    );

    let dir = TempDir::new("rough-validate");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "table.toml",
            b"network = 5\n".to_vec(),
            "table.toml:1:11: network must be a table, not integer `5`",
        ),
        (
            "utf8.toml",
            b"[network]\nallow_domains = [\"a\xffb.test\"]\n".to_vec(),
            "utf8.toml:2:20: invalid UTF-8 (byte 0xff)",
        ),
        (
            "proc.toml",
            b"extends = \"default\"\n[filesystem]\nwrite = [\"/proc\"]\n".to_vec(),
            "write access to /proc would include",
        ),
        (
            "user.toml",
            b"extends = \"default\"\n[process]\nuser = \"nosuchuser-nono\"\n".to_vec(),
            "no such user: nosuchuser-nono",
        ),
    ];
    for (name, body, needle) in &cases {
        let p = profile(&dir, name, body);
        let v = agent(&["profile", "validate", &p]);
        expect(&v, 2, &[needle], &format!("validate {name}"));
        // exec refuses the same profile with the same words.
        let e = exec(&["-q", "--profile", &p, "--", "true"]);
        expect(&e, 125, &[needle], &format!("exec {name}"));
    }
    // Over-blocking: a good file validates and runs.
    let good = profile(
        &dir,
        "good.toml",
        b"extends = \"default\"\n[process]\nuser = \"nobody\"\n",
    );
    expect(
        &agent(&["profile", "validate", &good]),
        0,
        &["valid"],
        "good profile",
    );
    expect(
        &exec(&["-q", "--profile", &good, "--", "true"]),
        0,
        &[],
        "good profile runs",
    );
}

/// Every `NONO_*` variable the command sees is documented in the README's
/// `exec` section.
pub fn every_variable_the_command_sees_is_documented() {
    sys::require_prereqs();
    let readme = std::fs::read_to_string(sys::workspace_root().join("README.md")).unwrap();
    let out = exec(&[
        "-q",
        "--enforcer",
        "bpf",
        "--allow-domain",
        "a.example.com",
        "--",
        "env",
    ]);
    assert_eq!(out.code(), 0, "{}", out.describe());
    let names: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .filter(|k| k.starts_with("NONO_"))
        .collect();
    for want in [
        "NONO_SANDBOX_ID",
        "NONO_ENFORCER",
        "NONO_CGROUP",
        "NONO_BPF_PIN_DIR",
    ] {
        assert!(names.contains(&want), "{want} should be set: {names:?}");
    }
    for n in names {
        assert!(
            readme.contains(&format!("`{n}`")),
            "README does not document {n}"
        );
    }
}

/// The license the manifest names is in the repository.
pub fn the_license_file_is_there() {
    let root: PathBuf = sys::workspace_root();
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("license = \"Apache-2.0\""));
    let text = std::fs::read_to_string(root.join("LICENSE")).expect("LICENSE");
    assert!(text.contains("Apache License") && text.contains("Version 2.0, January 2004"));
    assert!(text.contains("END OF TERMS AND CONDITIONS"));
}

/// A user made for one test (and its home), removed on drop.
struct TestUser {
    name: String,
    home: PathBuf,
}

impl TestUser {
    fn new(tag: &str) -> Self {
        let name = format!("nono-{tag}-{}", std::process::id() % 100_000);
        let home = PathBuf::from(format!("/tmp/{name}-home"));
        let _ = std::fs::remove_dir_all(&home);
        let _ = Command::new("userdel").arg(&name).output();
        sys::run_ok(
            "useradd",
            &["-M", "-d", home.to_str().unwrap(), "-s", "/bin/sh", &name],
        );
        std::fs::create_dir(&home).expect("home");
        sys::run_ok("chown", &[&format!("{name}:"), home.to_str().unwrap()]);
        TestUser { name, home }
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.home);
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

pub fn user_runs_protect_that_users_auto_run_files() {
    // Under --user the auto-run files that matter are the target user's:
    // a .bashrc the sandbox appends to runs unconfined at that user's next
    // login. They must be protected as the caller's are without --user,
    // whatever the grant (here the whole home, as `--write $HOME` or a
    // profile's $CWD run from the home would give).
    sys::require_prereqs();
    let u = TestUser::new("rvhome");
    let bashrc = u.home.join(".bashrc");
    std::fs::write(&bashrc, b"# clean\n").unwrap();
    sys::run_ok(
        "chown",
        &[&format!("{}:", u.name), bashrc.to_str().unwrap()],
    );
    let notes = u.home.join("notes");
    let script = format!(
        "echo note > {n}; echo 'curl evil' >> {b} 2>/dev/null; echo finished",
        n = notes.display(),
        b = bashrc.display()
    );
    let out = sys::run_timeout(
        Command::new(sys::agent_bin())
            .args(["exec", "--no-daemon", "-q", "--user", &u.name, "--write"])
            .arg(&u.home)
            .args(["--", "sh", "-c", &script])
            .env("HOME", "/root"),
        sys::CMD_TIMEOUT,
    );
    expect(&out, 0, &["finished"], "--user with its home writable");
    // The grant works (over-blocking check): the ordinary file was written.
    assert_eq!(
        std::fs::read_to_string(&notes).unwrap_or_default(),
        "note\n",
        "{}",
        out.describe()
    );
    // The auto-run file is untouched.
    assert_eq!(
        std::fs::read_to_string(&bashrc).unwrap(),
        "# clean\n",
        "the sandbox wrote the target user's .bashrc\n{}",
        out.describe()
    );
}

pub fn the_hidden_command_check_runs_with_the_target_users_rights() {
    // Under --user the command and its #! lines are that user's to
    // choose, but the check runs in a root agent: it must not read a
    // root-only file for them, nor show its #! line or its existence.
    sys::require_prereqs();
    use std::os::unix::fs::PermissionsExt as _;
    let mk = |dir: &Path, mode: u32| {
        std::fs::create_dir(dir).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
        let tool = dir.join("tool");
        let interp = dir.join("interp-secret-name");
        std::fs::write(&interp, "#!/bin/sh\n").unwrap();
        std::fs::write(&tool, format!("#!{}\n", interp.display())).unwrap();
        for f in [&tool, &interp] {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        tool
    };
    let tmp = TempDir::new("rough-check-as");
    let closed = mk(&tmp.path("closed"), 0o700);
    let open = mk(&tmp.path("open"), 0o755);
    std::fs::set_permissions(tmp.path(""), std::fs::Permissions::from_mode(0o755)).unwrap();
    let pdir = TempDir::new("rough-check-as-profile");
    let run = |tool: &Path| {
        let body = format!(
            "[filesystem]\nread = [\"/usr\", \"/bin\", \"/lib\", \"/lib64\", \"/etc\", \"{t}\"]\n\
             exec = [\"/usr\", \"/bin\", \"/lib\", \"/lib64\", \"{t}\"]\n",
            t = tool.display()
        );
        let p = profile(&pdir, "p.toml", body.as_bytes());
        exec(&[
            "-q",
            "--user",
            "nobody",
            "--profile",
            &p,
            "--",
            tool.to_str().unwrap(),
        ])
    };
    // Over-blocking counterpart: what nobody can read is still explained.
    let out = run(&open);
    expect(
        &out,
        126,
        &["denies executing", "interp-secret-name"],
        "readable hidden interpreter",
    );
    // A root-only directory: nothing of it in the output.
    let out = run(&closed);
    assert!(
        !out.stderr.contains("interp-secret-name") && !out.stdout.contains("interp-secret-name"),
        "a root-only file's #! line shown for --user nobody\n{}",
        out.describe()
    );
    assert_ne!(out.code(), 0, "{}", out.describe());
}
