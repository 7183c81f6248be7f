//! Prerequisites, binary discovery, mount discovery and commands with timeouts.

use std::fs;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Default time limit for one agent/probe invocation.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(60);

/// Panics unless running as root with the tools the harness needs.
pub fn require_prereqs() {
    // SAFETY: geteuid never fails.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "nono integration tests need root (network namespaces, cgroup2, BPF); run them as root"
    );
    for tool in ["ip", "nsenter"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        assert!(found, "required tool `{tool}` not found in PATH");
    }
    assert!(
        cgroup2_mount().is_some(),
        "no cgroup2 mount in /proc/self/mountinfo: nono-agent needs cgroup v2"
    );
}

/// Workspace root: parent of this crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate has a parent directory")
        .to_path_buf()
}

/// The agent binary: `$NONO_AGENT_BIN`, else `<workspace>/target/debug/nono-agent`.
/// Panics (never skips) when it is missing.
pub fn agent_bin() -> PathBuf {
    let p = match std::env::var_os("NONO_AGENT_BIN") {
        Some(p) => PathBuf::from(p),
        None => workspace_root().join("target/debug/nono-agent"),
    };
    assert!(
        p.is_file(),
        "nono-agent binary not found at {} (set NONO_AGENT_BIN or run `cargo build -p nono-agent`)",
        p.display()
    );
    p
}

fn mount_of_type(fstype: &str) -> Option<PathBuf> {
    let mi = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mi.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        if post.split_whitespace().next()? == fstype {
            pre.split_whitespace().nth(4).map(PathBuf::from)
        } else {
            None
        }
    })
}

/// Mount point of the cgroup2 hierarchy (e.g. `/sys/fs/cgroup/unified`).
pub fn cgroup2_mount() -> Option<PathBuf> {
    mount_of_type("cgroup2")
}

/// Mount point of a bpffs (e.g. `/sys/fs/bpf`), if one is mounted.
pub fn bpffs_mount() -> Option<PathBuf> {
    mount_of_type("bpf")
}

/// Names of the subdirectories of `dir` (empty if it does not exist); for a
/// cgroup directory these are its child cgroups.
pub fn subdirs(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Names in a directory (empty if it does not exist).
pub fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Output of a command run with a timeout.
#[derive(Debug)]
pub struct CmdOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// True if stdout/stderr were still held open by some leftover process
    /// after the command itself exited (pipes read until a grace deadline).
    pub pipes_held_open: bool,
}

impl CmdOutput {
    /// Exit code as a shell reports it (128+N for signal N).
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .or_else(|| self.status.signal().map(|s| 128 + s))
            .unwrap_or(-1)
    }

    pub fn describe(&self) -> String {
        format!(
            "exit={} (status {:?})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code(),
            self.status,
            self.stdout,
            self.stderr
        )
    }
}

impl From<Output> for CmdOutput {
    fn from(o: Output) -> Self {
        CmdOutput {
            status: o.status,
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            pipes_held_open: false,
        }
    }
}

fn reader(mut r: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    rx
}

/// Waits for `child` up to `timeout`; kills it (by its pid) and panics on timeout.
pub fn wait_child(child: &mut Child, timeout: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return st,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{what}: timed out after {timeout:?} (killed pid {})",
                    child.id()
                );
            }
            Err(e) => panic!("{what}: wait failed: {e}"),
        }
    }
}

/// Runs `cmd` with piped stdout/stderr and a timeout (panics on timeout).
pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> CmdOutput {
    let what = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {what}: {e}"));
    let out_rx = reader(child.stdout.take().expect("stdout piped"));
    let err_rx = reader(child.stderr.take().expect("stderr piped"));
    let status = wait_child(&mut child, timeout, &what);
    let grace = Duration::from_secs(5);
    let mut held = false;
    let mut collect = |rx: mpsc::Receiver<Vec<u8>>| match rx.recv_timeout(grace) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(_) => {
            held = true;
            String::from("<pipe still held open by a leftover process>")
        }
    };
    let stdout = collect(out_rx);
    let stderr = collect(err_rx);
    CmdOutput {
        status,
        stdout,
        stderr,
        pipes_held_open: held,
    }
}

/// Runs a command and panics unless it exits 0.
pub fn run_ok(program: &str, args: &[&str]) -> CmdOutput {
    let out = run_timeout(Command::new(program).args(args), CMD_TIMEOUT);
    assert!(
        out.status.success(),
        "`{program} {}` failed: {}",
        args.join(" "),
        out.describe()
    );
    out
}

/// Polls `f` every 20 ms until it returns true or `timeout` elapses.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// True if `pid` exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            // State is the first field after the parenthesised comm.
            let state = s
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .unwrap_or("?");
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

/// Kills `pid` with SIGKILL if it is alive (used by guards for processes a
/// test started, identified by pid).
pub fn kill_pid(pid: i32) {
    if pid > 1 && pid_alive(pid) {
        // SAFETY: plain syscall on a specific pid.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Unique temporary directory for one test (removed on drop).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "nono-tests-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

impl TempDir {
    /// Hands the directory to `uid:gid` (for an unprivileged sandbox that
    /// writes pid files, logs or events into it).
    pub fn chown(&self, uid: u32, gid: u32) {
        std::os::unix::fs::chown(&self.0, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {} to {uid}:{gid}: {e}", self.0.display()));
    }
}

/// Panics unless `tool` is in PATH (a missing prerequisite fails the test).
pub fn require_tool(tool: &str, why: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(tool))
                .find(|c| c.is_file())
        })
        .unwrap_or_else(|| panic!("required tool `{tool}` not found in PATH ({why})"))
}

/// Every process id in /proc (host view), except our own.
pub fn all_pids() -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut v: Vec<i32> = fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .filter(|&p| p != me)
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// A `Key:` line of /proc/PID/status, trimmed.
pub fn status_line(pid: i32, key: &str) -> Option<String> {
    let st = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    st.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

/// The `NSpid` line of a process: its pid in each pid namespace, from the
/// host's (first) to its own (last).
pub fn nspid(pid: i32) -> Option<Vec<i32>> {
    status_line(pid, "NSpid").map(|l| {
        l.split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    })
}

/// The process's `comm`.
pub fn comm(pid: i32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// Live (non-zombie) processes whose command line contains `marker` (an
/// argument the tests pass to a sandboxed probe; forks inherit it).
pub fn pids_with_marker(marker: &str) -> Vec<i32> {
    assert!(
        marker.len() >= 8,
        "marker too short to be unique: {marker:?}"
    );
    all_pids()
        .into_iter()
        .filter(|&p| {
            fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| c.split(|&b| b == 0).any(|a| a == marker.as_bytes()))
                .unwrap_or(false)
                && pid_alive(p)
        })
        .collect()
}

/// Live (non-zombie) processes whose real uid is `uid`.
pub fn pids_of_uid(uid: u32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&p| {
            status_line(p, "Uid").and_then(|l| l.split_whitespace().next()?.parse::<u32>().ok())
                == Some(uid)
                && pid_alive(p)
        })
        .collect()
}

/// The host pid of the process whose innermost pid is `inner` among
/// `candidates` (host pids, e.g. a cgroup's `cgroup.procs`).
pub fn host_pid_of(candidates: &[i32], inner: i32) -> Option<i32> {
    candidates
        .iter()
        .copied()
        .find(|&p| nspid(p).and_then(|ns| ns.last().copied()) == Some(inner))
}

/// Pids listed in a cgroup's `cgroup.procs` (host pids); empty if unreadable.
pub fn cgroup_procs(cgroup: &Path) -> Vec<i32> {
    fs::read_to_string(cgroup.join("cgroup.procs"))
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A path to `bin` that any user can execute: `bin` itself if every
/// directory above it is world-searchable and it is world-executable,
/// else a copy (mode 0755) in a per-process directory under the temp dir,
/// removed when the test process exits.
pub fn accessible(bin: &Path) -> PathBuf {
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::{Mutex, OnceLock};
    let open = |p: &Path, bits: u32| {
        fs::metadata(p)
            .map(|m| m.permissions().mode() & bits == bits)
            .unwrap_or(false)
    };
    let bin = fs::canonicalize(bin).unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    if open(&bin, 0o005) && bin.ancestors().skip(1).all(|d| open(d, 0o001)) {
        return bin;
    }
    static COPIES: OnceLock<Mutex<HashMap<PathBuf, PathBuf>>> = OnceLock::new();
    let mut copies = COPIES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(c) = copies.get(&bin) {
        return c.clone();
    }
    let dir = std::env::temp_dir().join(format!("nono-tests-bin-{}", std::process::id()));
    if copies.is_empty() {
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create binary copy dir");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod copy dir");
        extern "C" fn remove_copies() {
            let dir = std::env::temp_dir().join(format!("nono-tests-bin-{}", std::process::id()));
            let _ = fs::remove_dir_all(dir);
        }
        // SAFETY: registers a plain function to run at exit.
        unsafe { libc::atexit(remove_copies) };
    }
    let name = bin.file_name().expect("binary has a file name");
    // One subdirectory per copy keeps the file name (and so `comm`).
    let sub = dir.join(copies.len().to_string());
    fs::create_dir_all(&sub).expect("create binary copy subdir");
    fs::set_permissions(&sub, fs::Permissions::from_mode(0o755)).expect("chmod copy subdir");
    let copy = sub.join(name);
    fs::copy(&bin, &copy)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", bin.display(), copy.display()));
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).expect("chmod copy");
    copies.insert(bin, copy.clone());
    copy
}

/// A new pseudo-terminal pair (master, slave) with the kernel's default
/// modes: the "caller's terminal" of the terminal tests and `bench-pty`.
pub fn open_pty() -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd as _;
    let (mut m, mut s) = (0, 0);
    // SAFETY: out-pointers for two fds; no name, termios or winsize.
    let r = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openpty returned two new fds we own.
    Ok(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(m),
            std::os::fd::OwnedFd::from_raw_fd(s),
        )
    })
}
