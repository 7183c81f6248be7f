//! Fixture for the profile / Landlock / privilege tests (`tests/profiles.rs`).
//!
//! * [`Exec`]: builds one `nono-agent exec` invocation (flags, cwd, env) and
//!   runs a command or the Python probe in it; optionally through `sh -c
//!   'exec ... agentpid=$$'` so the sandboxed probe learns the agent's host pid.
//! * [`PROBE_PY`] / [`Probe`]: one Python process runs a list of operations
//!   (`write=PATH`, `read=PATH`, `tcp=PORT`, `unix=PATH|@abstract`,
//!   `ptrace=PID`, ...) and prints one JSON line per operation with its errno.
//! * Guards that remove everything they create, also on panic: [`Scratch`]
//!   (a directory anywhere, e.g. under `/var/tmp` or `$HOME`), [`RemoveOnDrop`],
//!   [`Acceptor`] (TCP, path or abstract unix listeners that greet with
//!   `hello`), [`DaemonSocket`] (a listener at a well-known daemon socket path
//!   that does not exist on this machine).
//! * [`Leftovers`]: sandbox ids under `<cgroup2>/nono/`, `<bpffs>/nono/` and
//!   the state directory before/after a refused `exec`.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Write};
use std::net::TcpListener;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use serde_json::Value;

use crate::sys::{self, CmdOutput};

/// The system Python (not a pyenv shim in `$HOME`, which a profile may not
/// let the sandbox execute).
pub const PYTHON: &str = "/usr/bin/python3";

/// The agent's state directory (owner locks).
pub const STATE_DIR: &str = "/run/nono-agent";

/// A name unique to this test process: `nono-prof-<pid>-<n>-<tag>`.
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "nono-prof-{}-{}-{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

// ---------------------------------------------------------------------------
// The probe

/// Runs each argument `OP=ARG[,ARG2]` in order and prints one JSON line
/// `{"op","arg","ok","errno","out"}` per operation. `$VAR` in arguments is
/// expanded from the sandbox's environment; `AGENTPID` is replaced by the
/// value of an `agentpid=N` argument (appended by [`Exec::probe_with_agent_pid`]).
pub const PROBE_PY: &str = r#"
import base64, ctypes, json, os, socket, subprocess, sys, urllib.parse
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
libc.ptrace.restype = ctypes.c_long
agent = None
for a in sys.argv[1:]:
    if a.startswith("agentpid="):
        agent = a.split("=", 1)[1]

class Fail(Exception):
    pass

def sub(x):
    if agent is not None:
        x = x.replace("AGENTPID", agent)
    return os.path.expandvars(x)

def greet(s):
    s.settimeout(5)
    try:
        return s.recv(16).decode(errors="replace")
    finally:
        s.close()

def run(op, a):
    if op == "write":
        fd = os.open(a[0], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, (a[1] if len(a) > 1 else "nono").encode())
        finally:
            os.close(fd)
        return ""
    if op == "writeval":
        fd = os.open(os.path.normpath(a[0]), os.O_WRONLY)
        try:
            os.write(fd, a[1].encode())
        finally:
            os.close(fd)
        return ""
    if op == "openw":
        os.close(os.open(os.path.normpath(a[0]), os.O_WRONLY))
        return ""
    if op == "read":
        with open(a[0], "rb") as f:
            return f.read(300).decode(errors="replace")
    if op == "mkdir":
        p = os.path.normpath(a[0])
        os.mkdir(p)
        os.rmdir(p)
        return ""
    if op == "unlink":
        os.unlink(os.path.normpath(a[0]))
        return ""
    if op == "exec":
        p = subprocess.run(a, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        out = p.stdout.decode(errors="replace")
        if p.returncode != 0:
            raise Fail("exit %d: %s" % (p.returncode, out))
        return out
    if op == "tcp":
        s = socket.create_connection(("127.0.0.1", int(a[0])), timeout=5)
        return greet(s)
    if op == "unix":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect("\0" + a[0][1:] if a[0].startswith("@") else a[0])
        return greet(s)
    if op == "proxy":
        u = urllib.parse.urlsplit(os.environ["HTTP_PROXY"])
        s = socket.create_connection(("127.0.0.1", u.port), timeout=5)
        s.settimeout(10)
        auth = base64.b64encode(("%s:%s" % (u.username, u.password)).encode()).decode()
        s.sendall(("GET http://%s/ HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Basic %s\r\n"
                   "Connection: close\r\n\r\n" % (a[0], a[0], auth)).encode())
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        s.close()
        return data.split(b"\r\n", 1)[0].decode(errors="replace")
    if op == "ptrace":
        pid = int(a[0])
        if libc.ptrace(16, pid, None, None) == -1:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        try:
            os.waitpid(pid, 0x40000000)
        except OSError:
            pass
        libc.ptrace(17, pid, None, None)
        return "ATTACHED"
    if op == "kill":
        os.kill(int(a[0]), int(a[1]) if len(a) > 1 else 0)
        return ""
    if op == "getuid":
        return "%d %d" % (os.getuid(), os.geteuid())
    if op == "nnp":
        return str(libc.prctl(39, 0, 0, 0, 0))
    raise Fail("unknown op " + op)

for arg in sys.argv[1:]:
    if arg.startswith("agentpid="):
        continue
    op, _, rest = arg.partition("=")
    parts = [sub(x) for x in rest.split(",")] if rest else []
    try:
        out = run(op, parts)
        r = {"ok": True, "errno": None, "out": out}
    except OSError as e:
        r = {"ok": False, "errno": e.errno, "out": str(e)}
    except Exception as e:
        r = {"ok": False, "errno": None, "out": repr(e)}
    r.update({"op": op, "arg": ",".join(parts)})
    print(json.dumps(r), flush=True)
"#;

/// The argv that runs [`PROBE_PY`] with `ops`.
pub fn probe_argv(ops: &[String]) -> Vec<String> {
    let mut v = vec![
        PYTHON.to_string(),
        "-I".to_string(),
        "-c".to_string(),
        PROBE_PY.to_string(),
    ];
    v.extend(ops.iter().cloned());
    v
}

/// One operation's outcome.
#[derive(Debug, Clone)]
pub struct OpResult {
    pub op: String,
    /// The arguments after expansion, comma-separated.
    pub arg: String,
    pub ok: bool,
    pub errno: Option<i32>,
    pub out: String,
}

/// The probe's results, in the order of the operations, and the agent's output.
#[derive(Debug)]
pub struct Probe {
    pub results: Vec<OpResult>,
    pub out: CmdOutput,
}

impl Probe {
    fn parse(out: CmdOutput, n: usize) -> Probe {
        let results: Vec<OpResult> = out
            .stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
            .filter(|v| v.get("op").is_some())
            .map(|v| OpResult {
                op: v["op"].as_str().unwrap_or_default().to_string(),
                arg: v["arg"].as_str().unwrap_or_default().to_string(),
                ok: v["ok"].as_bool().unwrap_or(false),
                errno: v["errno"].as_i64().map(|e| e as i32),
                out: v["out"].as_str().unwrap_or_default().to_string(),
            })
            .collect();
        assert_eq!(
            results.len(),
            n,
            "the probe reported {} results for {n} operations (did it start?)\n{}",
            results.len(),
            out.describe()
        );
        Probe { results, out }
    }

    /// The i-th result; panics unless it succeeded.
    pub fn ok(&self, i: usize, what: &str) -> &OpResult {
        let r = &self.results[i];
        assert!(
            r.ok,
            "{what}: expected {} {} to succeed, got errno {:?} ({})\n{}",
            r.op,
            r.arg,
            r.errno,
            r.out,
            self.out.describe()
        );
        r
    }

    /// The i-th result; panics unless it failed with one of `errnos`
    /// (any failure with an errno if `errnos` is empty).
    pub fn refused(&self, i: usize, errnos: &[i32], what: &str) -> &OpResult {
        let r = &self.results[i];
        let matches = match r.errno {
            Some(e) => errnos.is_empty() || errnos.contains(&e),
            None => false,
        };
        assert!(
            !r.ok && matches,
            "{what}: expected {} {} to fail with errno in {errnos:?}, got ok={} errno={:?} ({})\n{}",
            r.op,
            r.arg,
            r.ok,
            r.errno,
            r.out,
            self.out.describe()
        );
        r
    }
}

// ---------------------------------------------------------------------------
// Running the agent

/// One `nono-agent exec` invocation.
pub struct Exec {
    args: Vec<OsString>,
    cwd: Option<PathBuf>,
    env: Vec<(OsString, OsString)>,
    timeout: Duration,
}

impl Exec {
    /// `nono-agent exec --enforcer ENFORCER`.
    pub fn new(enforcer: &str) -> Exec {
        Exec {
            args: vec!["exec".into(), "--enforcer".into(), enforcer.into()],
            cwd: None,
            env: Vec::new(),
            timeout: sys::CMD_TIMEOUT,
        }
    }

    /// Adds agent options (before `--`).
    pub fn flags<I, S>(mut self, flags: I) -> Exec
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(flags.into_iter().map(|s| s.as_ref().to_os_string()));
        self
    }

    /// Runs the agent in this directory (the profile's `$CWD`).
    pub fn cwd(mut self, dir: &Path) -> Exec {
        self.cwd = Some(dir.to_path_buf());
        self
    }

    /// Sets an environment variable for the agent (inherited by the command
    /// unless the profile cleans the environment).
    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Exec {
        self.env
            .push((k.as_ref().to_os_string(), v.as_ref().to_os_string()));
        self
    }

    /// Time limit for the whole invocation.
    pub fn timeout(mut self, t: Duration) -> Exec {
        self.timeout = t;
        self
    }

    fn command(&self, program: &Path, pre: &[OsString], argv: &[String]) -> Command {
        let mut c = Command::new(program);
        c.args(pre).args(&self.args).arg("--").args(argv);
        if let Some(d) = &self.cwd {
            c.current_dir(d);
        }
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Runs `argv` in the sandbox.
    pub fn run<S: AsRef<str>>(self, argv: &[S]) -> CmdOutput {
        let argv: Vec<String> = argv.iter().map(|s| s.as_ref().to_string()).collect();
        let mut c = self.command(&sys::agent_bin(), &[], &argv);
        sys::run_timeout(&mut c, self.timeout)
    }

    /// Runs the probe with `ops` in the sandbox.
    pub fn probe(self, ops: &[String]) -> Probe {
        let out = self.run(&probe_argv(ops));
        Probe::parse(out, ops.len())
    }

    /// Like [`Exec::probe`], but the agent is started by `sh -c 'exec ...'`
    /// so that the probe gets the agent's own host pid as `agentpid=$$`
    /// (use `AGENTPID` in the operations).
    pub fn probe_with_agent_pid(self, ops: &[String]) -> Probe {
        let agent = sys::agent_bin();
        let pre: Vec<OsString> = vec![
            "-c".into(),
            r#"exec "$@" "agentpid=$$""#.into(),
            "sh".into(),
            agent.into_os_string(),
        ];
        let mut c = self.command(Path::new("/bin/sh"), &pre, &probe_argv(ops));
        let out = sys::run_timeout(&mut c, self.timeout);
        Probe::parse(out, ops.len())
    }
}

/// `nono-agent ARGS...` (profile subcommands and the like).
pub fn agent(args: &[&str]) -> CmdOutput {
    let mut c = Command::new(sys::agent_bin());
    c.args(args);
    sys::run_timeout(&mut c, sys::CMD_TIMEOUT)
}

// ---------------------------------------------------------------------------
// Guards

/// A directory `BASE/nono-prof-...-TAG` (mode 0755), removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(base: &str, tag: &str) -> Scratch {
        let base = Path::new(base);
        assert!(
            base.is_dir(),
            "{} does not exist (needed as a place outside the profile's paths)",
            base.display()
        );
        let p = base.join(unique(tag));
        fs::create_dir(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
        Scratch(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// `self.0` as a string (for command lines).
    pub fn s(&self) -> String {
        self.0.display().to_string()
    }

    /// Writes `name` inside with `contents`; returns its path.
    pub fn file(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path(name);
        fs::write(&p, contents).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A path (file, symlink or socket) removed on drop if it exists; for files
/// a sandbox must not be able to create (they are removed should it manage to).
pub struct RemoveOnDrop(pub PathBuf);

impl RemoveOnDrop {
    /// Panics if `p` already exists (the tests use fresh unique names).
    pub fn fresh(p: PathBuf) -> RemoveOnDrop {
        assert!(
            fs::symlink_metadata(&p).is_err(),
            "{} already exists",
            p.display()
        );
        RemoveOnDrop(p)
    }

    pub fn s(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if fs::symlink_metadata(&self.0).is_ok() {
            let _ = fs::remove_file(&self.0);
        }
    }
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    fn accept(&self) -> io::Result<Box<dyn Write + Send>> {
        match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept()?;
                s.set_nonblocking(false)?;
                Ok(Box::new(s))
            }
            Listener::Unix(l) => {
                let (s, _) = l.accept()?;
                s.set_nonblocking(false)?;
                Ok(Box::new(s))
            }
        }
    }
}

/// A listener served by a thread that writes `hello` to every connection;
/// stopped and closed on drop (a path socket's file is removed too).
pub struct Acceptor {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    accepted: Arc<AtomicU32>,
    path: Option<PathBuf>,
    /// TCP port (0 for unix listeners).
    pub port: u16,
}

impl Acceptor {
    fn start(l: Listener, port: u16, path: Option<PathBuf>) -> Acceptor {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU32::new(0));
        let (s, a) = (stop.clone(), accepted.clone());
        let thread = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok(mut c) => {
                        a.fetch_add(1, Ordering::Relaxed);
                        let _ = c.write_all(b"hello");
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Acceptor {
            stop,
            thread: Some(thread),
            accepted,
            path,
            port,
        }
    }

    /// A TCP listener on 127.0.0.1, on a free port.
    pub fn tcp_loopback() -> Acceptor {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        l.set_nonblocking(true).expect("nonblocking");
        let port = l.local_addr().expect("local addr").port();
        Acceptor::start(Listener::Tcp(l), port, None)
    }

    /// A unix listener at `path` (which must not exist), with `mode`.
    pub fn unix_path(path: &Path, mode: u32) -> Acceptor {
        assert!(
            fs::symlink_metadata(path).is_err(),
            "{} already exists",
            path.display()
        );
        let l = UnixListener::bind(path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
        let a = Acceptor::start_unix(l, Some(path.to_path_buf()));
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
        a
    }

    /// A listener on the abstract unix name `name` (without the leading NUL).
    pub fn unix_abstract(name: &str) -> Acceptor {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("abstract address");
        let l = UnixListener::bind_addr(&addr).unwrap_or_else(|e| panic!("bind @{name}: {e}"));
        Acceptor::start_unix(l, None)
    }

    fn start_unix(l: UnixListener, path: Option<PathBuf>) -> Acceptor {
        l.set_nonblocking(true).expect("nonblocking");
        Acceptor::start(Listener::Unix(l), 0, path)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u32 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(p) = &self.path {
            let _ = fs::remove_file(p);
        }
    }
}

/// Well-known daemon socket paths (from the agent's list) that a test may
/// occupy when they do not exist on this machine.
pub const DAEMON_CANDIDATES: &[&str] = &[
    "/run/docker.sock",
    "/var/run/docker.sock",
    "/run/podman/podman.sock",
    "/run/crio/crio.sock",
    "/run/containerd/containerd.sock",
    "/run/snapd.socket",
];

/// A listening socket at a well-known daemon path that did not exist:
/// missing parent directories are created; on drop the socket (only if it
/// is still ours, by inode) and the directories created are removed.
pub struct DaemonSocket {
    pub path: PathBuf,
    id: (u64, u64),
    created_dirs: Vec<PathBuf>,
    acceptor: Option<Acceptor>,
}

impl DaemonSocket {
    pub fn new() -> DaemonSocket {
        let path = DAEMON_CANDIDATES
            .iter()
            .map(PathBuf::from)
            .find(|p| {
                fs::symlink_metadata(p).is_err()
                    && fs::canonicalize(p.parent().expect("parent"))
                        .map(|d| {
                            fs::symlink_metadata(d.join(p.file_name().expect("name"))).is_err()
                        })
                        .unwrap_or(true)
            })
            .unwrap_or_else(|| {
                panic!("every candidate daemon socket path exists here: {DAEMON_CANDIDATES:?}")
            });
        let mut created_dirs = Vec::new();
        let mut missing: Vec<PathBuf> = path
            .ancestors()
            .skip(1)
            .take_while(|d| !d.exists())
            .map(Path::to_path_buf)
            .collect();
        missing.reverse();
        for d in missing {
            fs::create_dir(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
            created_dirs.push(d);
        }
        let mut me = DaemonSocket {
            path: path.clone(),
            id: (0, 0),
            created_dirs,
            acceptor: None,
        };
        let l =
            UnixListener::bind(&path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
        let m = fs::metadata(&path).expect("stat our socket");
        me.id = (m.dev(), m.ino());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o660)).expect("chmod socket");
        me.acceptor = Some(Acceptor::start_unix(l, None));
        me
    }

    pub fn s(&self) -> String {
        self.path.display().to_string()
    }

    pub fn accepted(&self) -> u32 {
        self.acceptor.as_ref().map(|a| a.accepted()).unwrap_or(0)
    }
}

impl Default for DaemonSocket {
    fn default() -> Self {
        DaemonSocket::new()
    }
}

impl Drop for DaemonSocket {
    fn drop(&mut self) {
        self.acceptor = None;
        if let Ok(m) = fs::symlink_metadata(&self.path) {
            if m.file_type().is_socket() && (m.dev(), m.ino()) == self.id {
                let _ = fs::remove_file(&self.path);
            }
        }
        for d in self.created_dirs.iter().rev() {
            let _ = fs::remove_dir(d);
        }
    }
}

/// `mount --bind SRC TARGET` with TARGET a new empty file; on drop the
/// mount is detached and the file removed.
pub struct BindMount {
    target: RemoveOnDrop,
    mounted: bool,
}

impl BindMount {
    pub fn new(src: &Path, target: PathBuf) -> BindMount {
        let mut me = BindMount {
            target: RemoveOnDrop::fresh(target),
            mounted: false,
        };
        fs::write(&me.target.0, b"").expect("create bind mount target");
        let out = sys::run_timeout(
            Command::new("mount")
                .arg("--bind")
                .arg(src)
                .arg(&me.target.0),
            sys::CMD_TIMEOUT,
        );
        assert!(
            out.status.success(),
            "mount --bind {} {}: {}",
            src.display(),
            me.target.0.display(),
            out.describe()
        );
        me.mounted = true;
        me
    }

    pub fn s(&self) -> String {
        self.target.s()
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = sys::run_timeout(
                Command::new("umount").arg("-l").arg(&self.target.0),
                sys::CMD_TIMEOUT,
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Leftovers

/// Sandbox ids present: cgroups under `<cgroup2>/nono/`, pin directories
/// under `<bpffs>/nono/`, lock files in the state directory.
pub fn sandbox_ids() -> Vec<String> {
    let cg = sys::cgroup2_mount()
        .expect("no cgroup2 mount in /proc/self/mountinfo")
        .join("nono");
    let mut ids = sys::subdirs(&cg);
    if let Some(b) = sys::bpffs_mount() {
        ids.extend(sys::dir_entries(&b.join("nono")));
    }
    ids.extend(
        sys::dir_entries(Path::new(STATE_DIR))
            .into_iter()
            .filter_map(|n| n.strip_suffix(".lock").map(str::to_string)),
    );
    ids.sort();
    ids.dedup();
    ids
}

/// Whether some process holds the flock on `<state>/<id>.lock` (its agent
/// is alive), read from /proc/locks.
pub fn lock_held(id: &str) -> bool {
    let Ok(meta) = fs::metadata(Path::new(STATE_DIR).join(format!("{id}.lock"))) else {
        return false;
    };
    let ino = meta.ino().to_string();
    fs::read_to_string("/proc/locks")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            l.contains("FLOCK")
                && l.split_whitespace()
                    .any(|f| f.contains(':') && f.rsplit(':').next() == Some(ino.as_str()))
        })
}

/// Snapshot of sandbox ids, to show that a refused `exec` left nothing.
/// Sandboxes of concurrent tests (live agents hold their lock) are told
/// apart from leftovers.
pub struct Leftovers {
    before: Vec<String>,
    /// Passed as an argument of the refused command; no process may carry it.
    pub marker: String,
}

impl Leftovers {
    pub fn snapshot() -> Leftovers {
        // The directories themselves must be findable, or the check is void.
        assert!(
            sys::cgroup2_mount().is_some(),
            "no cgroup2 mount in /proc/self/mountinfo"
        );
        assert!(
            sys::bpffs_mount().is_some(),
            "no bpffs mount in /proc/self/mountinfo"
        );
        Leftovers {
            before: sandbox_ids(),
            marker: unique("marker"),
        }
    }

    /// New ids that are not (or no longer) owned by a live agent.
    fn stale_new(&self) -> Vec<String> {
        sandbox_ids()
            .into_iter()
            .filter(|id| !self.before.contains(id) && !lock_held(id))
            .collect()
    }

    /// Panics if a new sandbox id without a live agent remains (after a
    /// grace period for concurrent sandboxes being torn down) or a process
    /// with the marker runs.
    pub fn assert_none(&self, what: &str) {
        let mut stale = Vec::new();
        let gone = sys::wait_until(Duration::from_secs(10), || {
            stale = self.stale_new();
            stale.is_empty()
        });
        assert!(
            gone,
            "{what}: left behind sandbox state (cgroup / pins / lock without a live agent): {stale:?}"
        );
        let procs = sys::pids_with_marker(&self.marker);
        for p in &procs {
            sys::kill_pid(*p);
        }
        assert!(
            procs.is_empty(),
            "{what}: processes of the refused command run: {procs:?}"
        );
    }
}
