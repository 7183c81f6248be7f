//! The Debian package (`cargo xtask deb`): it installs on this machine
//! (without systemd as PID 1 the postinst must do nothing harmful), the
//! installed static binary works from outside the checkout with a PATH
//! without cargo, runs a daemon that serves an unprivileged `exec`, passes
//! `selftest` against that daemon, direct BPF and seccomp, and
//! `dpkg -r` + `dpkg -P` leave nothing behind.
//!
//! It changes the machine (installs a package), so it refuses to run when
//! `/usr/bin/nono-agent` or `/etc/nono-agent` already exist rather than
//! clobber them, and a guard purges the package whatever happens.
//!
//! The daemon it starts has its own name (`nono-daemon-pkgtest-<pid>`) and
//! socket: other tests may run daemons concurrently. The leftover checks
//! cover that name and the package's default `nono-daemon`.
//!
//! Building the package is a release build for x86_64 musl (about 2 min
//! from clean on 2 cores, 1-1.5 min after a change to nono-agent or a new
//! commit, seconds when up to date: cargo's own cache in target/ is the
//! reuse), done once per run through `cargo xtask deb`.
//!
//! Needs root, dpkg and setpriv. `cargo test -p nono-tests --test package`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nono_tests::sys::{self, TempDir};

const BIN: &str = "/usr/bin/nono-agent";
const ETC: &str = "/etc/nono-agent";
const PKG: &str = "nono-agent";
/// The package's own daemon name (what its units run and its prerm removes).
const DEFAULT_DAEMON: &str = "nono-daemon";
const ENFORCER_LINE: &str = "nono-agent: enforcer: bpf (daemon)";

fn installed() -> bool {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", PKG])
        .output()
        .expect("run dpkg-query");
    String::from_utf8_lossy(&out.stdout).contains("installed")
        || String::from_utf8_lossy(&out.stdout).contains("config-files")
}

fn dpkg(args: &[&str]) -> sys::CmdOutput {
    let mut cmd = Command::new("dpkg");
    cmd.args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null());
    sys::run_timeout(&mut cmd, Duration::from_secs(120))
}

/// `env -i PATH=/usr/bin:/bin` in `dir`: no cargo, no checkout.
fn clean_env(program: &str, dir: &Path) -> Command {
    let mut c = Command::new(program);
    c.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .current_dir(dir)
        .stdin(Stdio::null());
    c
}

/// Purges the package, stops the test's daemon and removes its state,
/// whatever happened (also on a failed assertion).
struct Guard {
    daemon: Option<Child>,
    name: String,
    socket: PathBuf,
}

impl Guard {
    fn stop_daemon(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            // SAFETY: plain syscall on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop_daemon();
        if Path::new(BIN).exists() {
            let _ = Command::new(BIN)
                .args(["cleanup", "--daemon", &self.name, "--daemon-socket"])
                .arg(&self.socket)
                .output();
        }
        if installed() {
            let _ = dpkg(&["-P", PKG]);
        }
    }
}

/// Builds the package once (`cargo xtask deb`) and returns its path.
fn build_deb() -> PathBuf {
    let root = sys::workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let t = Instant::now();
    let mut cmd = Command::new(cargo);
    cmd.args(["xtask", "deb"]).current_dir(&root);
    let out = sys::run_timeout(&mut cmd, Duration::from_secs(30 * 60));
    assert!(
        out.status.success(),
        "cargo xtask deb failed: {}",
        out.describe()
    );
    eprintln!("package: cargo xtask deb took {:.1?}", t.elapsed());
    let deb = root.join(format!(
        "target/dist/nono-agent_{}_amd64.deb",
        env!("CARGO_PKG_VERSION")
    ));
    assert!(
        deb.is_file(),
        "{} missing after cargo xtask deb",
        deb.display()
    );
    deb
}

/// The paths the package ships (files and directories), from the .deb.
fn package_paths(deb: &Path) -> Vec<PathBuf> {
    let out = sys::run_ok("dpkg-deb", &["-c", deb.to_str().expect("utf-8 path")]);
    out.stdout
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| PathBuf::from(p.trim_start_matches('.')))
        .filter(|p| p.as_os_str().len() > 1)
        .collect()
}

/// Everything of daemon `name` that exists: pins, parent cgroup, state dir.
fn daemon_remains(name: &str) -> Vec<PathBuf> {
    let mut v = vec![PathBuf::from("/run/nono-agent").join(name)];
    if let Some(b) = sys::bpffs_mount() {
        v.push(b.join(name));
    }
    if let Some(c) = sys::cgroup2_mount() {
        v.push(c.join(name));
    }
    v.into_iter().filter(|p| p.exists()).collect()
}

#[test]
fn deb_installs_works_and_purges_clean() {
    sys::require_prereqs();
    sys::require_tool("dpkg", "installs the package");
    sys::require_tool("setpriv", "runs exec unprivileged");
    assert!(
        !Path::new(BIN).exists() && !Path::new(ETC).exists() && !installed(),
        "{BIN}, {ETC} or the package {PKG} already exist on this machine: \
         this test installs and purges the package and will not clobber them"
    );
    let deb = build_deb();
    let shipped = package_paths(&deb);
    let name = format!("nono-daemon-pkgtest-{}", std::process::id());
    let tmp = TempDir::new("pkg");
    fs::set_permissions(&tmp.0, fs::Permissions::from_mode(0o755)).expect("chmod tmp");
    let socket = tmp.path("daemon.sock");
    let mut guard = Guard {
        daemon: None,
        name: name.clone(),
        socket: socket.clone(),
    };

    // Install.
    let out = dpkg(&["-i", deb.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "dpkg -i: {}", out.describe());
    for p in [
        BIN,
        "/lib/systemd/system/nono-agent.service",
        "/lib/systemd/system/nono-agent.socket",
        "/etc/nono-agent/config.toml",
        "/usr/share/man/man1/nono-agent.1.gz",
        "/usr/share/man/man1/nono-agent-exec.1.gz",
        "/usr/share/bash-completion/completions/nono-agent",
        "/usr/share/zsh/vendor-completions/_nono-agent",
        "/usr/share/fish/vendor_completions.d/nono-agent.fish",
    ] {
        assert!(Path::new(p).is_file(), "{p} not installed");
    }
    assert!(
        Path::new("/etc/nono-agent/profiles").is_dir(),
        "/etc/nono-agent/profiles not installed"
    );
    let conffiles = sys::run_ok("dpkg-query", &["-W", "-f=${Conffiles}", PKG]);
    assert!(
        conffiles.stdout.contains("/etc/nono-agent/config.toml"),
        "config.toml is not a conffile: {}",
        conffiles.describe()
    );

    // The installed binary, from outside the checkout, without cargo.
    let out = sys::run_timeout(clean_env(BIN, &tmp.0).arg("--version"), sys::CMD_TIMEOUT);
    let want = format!("nono-agent {} (", env!("CARGO_PKG_VERSION"));
    assert!(
        out.status.success()
            && out.stdout.starts_with(&want)
            && out.stdout.trim_end().ends_with(')'),
        "--version should print `{want}<commit>)`: {}",
        out.describe()
    );
    let out = sys::run_timeout(clean_env(BIN, &tmp.0).arg("doctor"), sys::CMD_TIMEOUT);
    assert!(out.status.success(), "doctor: {}", out.describe());
    let out = sys::run_timeout(
        clean_env(BIN, &tmp.0).args(["completions", "bash"]),
        sys::CMD_TIMEOUT,
    );
    assert!(
        out.status.success()
            && out.stdout.contains("complete -F")
            && out.stdout.contains("nono-agent"),
        "completions bash: {}",
        out.describe()
    );

    // A daemon of its own, and an unprivileged exec through it.
    let log = fs::File::create(tmp.path("daemon.log")).expect("daemon log");
    let child = clean_env(BIN, &tmp.0)
        .args(["daemon", "--socket"])
        .arg(&socket)
        .args(["--name", &name])
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log)
        .spawn()
        .expect("start the installed daemon");
    guard.daemon = Some(child);
    let daemon_log = || fs::read_to_string(tmp.path("daemon.log")).unwrap_or_default();
    let up = sys::wait_until(Duration::from_secs(20), || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    });
    assert!(
        up,
        "the daemon never answered on {}: {}",
        socket.display(),
        daemon_log()
    );
    let out = sys::run_timeout(
        clean_env("/usr/bin/setpriv", &tmp.0)
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--",
                BIN,
                "exec",
                "--enforcer",
                "bpf",
                "--daemon-socket",
            ])
            .arg(&socket)
            .args(["--", "sh", "-c", "id -u; grep ^0:: /proc/self/cgroup"]),
        sys::CMD_TIMEOUT,
    );
    assert!(
        out.status.success()
            && out.stderr.lines().any(|l| l == ENFORCER_LINE)
            && out.stdout.lines().next() == Some("65534")
            && out.stdout.contains(&format!("0::/{name}/")),
        "exec as 65534 through the installed daemon: {}\ndaemon: {}",
        out.describe(),
        daemon_log()
    );
    // The installed binary checks the host: selftest against that daemon,
    // direct BPF and seccomp, from outside the checkout without cargo.
    let out = sys::run_timeout(
        clean_env(BIN, &tmp.0)
            .args(["selftest", "--json", "--daemon-socket"])
            .arg(&socket),
        Duration::from_secs(120),
    );
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "installed selftest printed no JSON ({e}): {}",
            out.describe()
        )
    });
    let tested: Vec<&str> = report["enforcers"]
        .as_array()
        .map(|es| {
            es.iter()
                .filter(|e| e["status"] == "tested")
                .filter_map(|e| e["enforcer"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        out.status.success()
            && report["outcome"] == "pass"
            && tested == ["daemon", "bpf", "seccomp"],
        "installed selftest: {}\n{report:#}",
        out.describe()
    );
    eprintln!(
        "installed (static, release) selftest: {} ms for {} vectors x {} enforcers",
        report["duration_ms"],
        report["vectors"].as_array().map_or(0, Vec::len),
        tested.len()
    );
    guard.stop_daemon();
    let out = sys::run_timeout(
        clean_env(BIN, &tmp.0)
            .args(["cleanup", "--daemon", &name, "--daemon-socket"])
            .arg(&socket),
        sys::CMD_TIMEOUT,
    );
    assert!(out.status.success(), "cleanup --daemon: {}", out.describe());
    assert_eq!(
        daemon_remains(&name),
        Vec::<PathBuf>::new(),
        "left by {name}"
    );

    // Remove: everything but the conffile goes; purge: that too.
    let out = dpkg(&["-r", PKG]);
    assert!(out.status.success(), "dpkg -r: {}", out.describe());
    assert!(!Path::new(BIN).exists(), "{BIN} still there after dpkg -r");
    let out = dpkg(&["-P", PKG]);
    assert!(out.status.success(), "dpkg -P: {}", out.describe());
    assert!(!installed(), "{PKG} still known to dpkg after dpkg -P");
    let left: Vec<&PathBuf> = shipped
        .iter()
        .filter(|p| {
            p.exists()
                && (p.is_file() || p.starts_with(ETC) || p.starts_with("/usr/share/doc/nono-agent"))
        })
        .collect();
    assert!(left.is_empty(), "left after dpkg -P: {left:?}");
    assert!(!Path::new(ETC).exists(), "{ETC} left after dpkg -P");
    for unit in ["nono-agent.service", "nono-agent.socket"] {
        for dir in [
            "/lib/systemd/system",
            "/etc/systemd/system",
            "/run/systemd/system",
        ] {
            let p = Path::new(dir).join(unit);
            assert!(!p.exists(), "{} left after dpkg -P", p.display());
        }
    }
    for n in [DEFAULT_DAEMON, name.as_str()] {
        assert_eq!(daemon_remains(n), Vec::<PathBuf>::new(), "left of {n}");
    }
    assert!(
        !Path::new("/run/nono-agent/daemon.sock").exists(),
        "/run/nono-agent/daemon.sock left after dpkg -P"
    );
    drop(guard);
}
