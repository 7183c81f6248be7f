//! A daemon of this target's own (unique name, socket in a fresh 0755
//! directory), a raw protocol client and the unprivileged attacker runner.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::fd::{AsRawFd as _, RawFd};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nono_tests::sys;
use serde_json::{json, Value};

/// The unprivileged attacker's uid (nobody) and another unprivileged uid.
pub const NOBODY: u32 = 65534;
pub const OTHER: u32 = 65533;

static N: AtomicU32 = AtomicU32::new(0);

/// Lines a child wrote, collected by a thread.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>, Arc<std::sync::atomic::AtomicBool>);

impl Lines {
    pub fn collect(r: impl std::io::Read + Send + 'static) -> Lines {
        let l = Lines::default();
        let l2 = l.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines() {
                let Ok(line) = line else { break };
                l2.0.lock().unwrap().push(line);
            }
            l2.1.store(true, Ordering::SeqCst);
        });
        l
    }

    pub fn all(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }

    /// Waits until the stream ended (all its lines are in).
    pub fn wait_closed(&self, timeout: Duration) {
        sys::wait_until(timeout, || self.1.load(Ordering::SeqCst));
    }

    pub fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        sys::wait_until(timeout, || self.all().contains(needle))
    }
}

pub struct Daemon {
    pub name: String,
    pub dir: PathBuf,
    pub sock: PathBuf,
    pub child: Option<Child>,
    pub log: Lines,
    pub cg_parent: PathBuf,
    /// More `daemon` options (limits).
    pub extra: Vec<String>,
}

impl Daemon {
    pub fn start() -> Daemon {
        Daemon::start_with(&[])
    }

    /// Starts a daemon with more options (e.g. limits).
    pub fn start_with(extra: &[&str]) -> Daemon {
        sys::require_prereqs();
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("nono-daemon-adv-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(format!("{name}-dir"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).expect("create daemon dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cg = sys::cgroup2_mount().expect("no cgroup2 hierarchy mounted");
        let mut d = Daemon {
            sock: dir.join("d.sock"),
            cg_parent: cg.join(&name),
            name,
            dir,
            child: None,
            log: Lines::default(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        d.spawn();
        d
    }

    /// Starts (or restarts) the daemon process and waits until it answers.
    pub fn spawn(&mut self) {
        let mut c = Command::new(sys::agent_bin())
            .args(["daemon", "--socket"])
            .arg(&self.sock)
            .args(["--name", &self.name])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the daemon");
        let log = Lines::collect(c.stderr.take().unwrap());
        self.log = log;
        self.child = Some(c);
        let ok = sys::wait_until(Duration::from_secs(20), || {
            Raw::try_connect(&self.sock)
                .map(|mut r| {
                    r.send(json!({"type": "status"}));
                    r.recv().map(|v| v["type"] == "status").unwrap_or(false)
                })
                .unwrap_or(false)
        });
        assert!(ok, "the daemon did not answer; log:\n{}", self.log.all());
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `status` from root on a fresh connection: the sandbox count.
    pub fn status(&self) -> u64 {
        let mut r = Raw::connect(&self.sock);
        r.send(json!({"type": "status"}));
        let v = r.recv().expect("status reply");
        assert_eq!(v["type"], "status", "{v}");
        v["sandboxes"].as_u64().unwrap()
    }

    /// The daemon serves, holds no sandbox and left no sandbox cgroup or
    /// record. (An ended sandbox's cgroup and record are removed just after
    /// its client is answered: waited for.)
    pub fn assert_clean(&self) {
        let recs = self.records_dir();
        let ok = sys::wait_until(Duration::from_secs(5), || {
            self.status() == 0
                && sys::subdirs(&self.cg_parent).is_empty()
                && sys::dir_entries(&recs).is_empty()
        });
        assert!(
            ok,
            "sandboxes left: status {} cgroups {:?}\nlog:\n{}",
            self.status(),
            sys::subdirs(&self.cg_parent),
            self.log.all()
        );
        assert!(
            sys::dir_entries(&recs).is_empty(),
            "records left in {}",
            recs.display()
        );
    }

    pub fn records_dir(&self) -> PathBuf {
        PathBuf::from(format!("/run/nono-agent/{}/sandboxes", self.name))
    }
}

fn remove_cgroups(dir: &Path) {
    for s in sys::subdirs(dir) {
        remove_cgroups(&dir.join(s));
    }
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    for _ in 0..100 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // SAFETY: plain syscall on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let pid = c.id() as i32;
            if !sys::wait_until(Duration::from_secs(3), || {
                !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|s| !s.contains(") Z"))
                    .unwrap_or(false)
            }) {
                self.kill9();
            }
        }
        self.kill9();
        remove_cgroups(&self.cg_parent);
        if let Some(b) = sys::bpffs_mount() {
            let _ = std::fs::remove_dir_all(b.join(&self.name));
        }
        let _ = std::fs::remove_dir_all(format!("/run/nono-agent/{}", self.name));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A raw protocol client.
pub struct Raw {
    pub s: UnixStream,
}

impl Raw {
    pub fn try_connect(p: &Path) -> std::io::Result<Raw> {
        let s = UnixStream::connect(p)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Raw { s })
    }

    pub fn connect(p: &Path) -> Raw {
        Raw::try_connect(p).unwrap_or_else(|e| panic!("connect {}: {e}", p.display()))
    }

    pub fn frame(body: &Value) -> Vec<u8> {
        let j = serde_json::to_vec(&json!({"v": 1, "body": body})).unwrap();
        let mut f = (j.len() as u32).to_be_bytes().to_vec();
        f.extend(j);
        f
    }

    pub fn send(&mut self, body: Value) {
        self.s.write_all(&Raw::frame(&body)).expect("send");
    }

    pub fn send_fds(&mut self, body: Value, fds: &[RawFd]) {
        let f = Raw::frame(&body);
        send_with_fds(self.s.as_raw_fd(), &f, fds).expect("sendmsg");
    }

    /// The next frame's body; None at end of stream or timeout.
    pub fn recv(&mut self) -> Option<Value> {
        let mut len = [0u8; 4];
        self.s.read_exact(&mut len).ok()?;
        let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
        self.s.read_exact(&mut buf).ok()?;
        let v: Value = serde_json::from_slice(&buf).expect("reply is JSON");
        assert_eq!(v["v"], 1, "{v}");
        Some(v["body"].clone())
    }

    /// The next frame that is not an event.
    pub fn reply(&mut self) -> Option<Value> {
        loop {
            let v = self.recv()?;
            if v["type"] != "event" {
                return Some(v);
            }
        }
    }

    /// Whether the daemon closed the connection (EOF) within `t`, after
    /// at most a few frames.
    pub fn closed_within(&mut self, t: Duration) -> bool {
        self.s.set_read_timeout(Some(t)).unwrap();
        let mut b = [0u8; 4096];
        let end = Instant::now() + t;
        while Instant::now() < end {
            match self.s.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
        false
    }
}

fn send_with_fds(sock: RawFd, frame: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: frame.as_ptr() as *mut libc::c_void,
        iov_len: frame.len(),
    };
    // SAFETY: pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of_val(fds) as u32) } as usize;
    let mut cbuf = vec![0u8; space.max(1)];
    // SAFETY: zeroed msghdr is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: the buffer has room for one header with these fds.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as usize;
            let data = libc::CMSG_DATA(c) as *mut RawFd;
            for (i, fd) in fds.iter().enumerate() {
                std::ptr::write_unaligned(data.add(i), *fd);
            }
        }
    }
    // SAFETY: msg points at valid buffers.
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    assert_eq!(n as usize, frame.len(), "short sendmsg");
    Ok(())
}

/// Runs role `role` of this test binary as `uid` (gid the same, no
/// supplementary groups); returns the child with stdout and stderr piped.
pub fn attacker(uid: u32, role: &str, env: &[(&str, String)]) -> Child {
    let exe = sys::accessible(&std::env::current_exe().unwrap());
    let mut c = Command::new(exe);
    c.args([
        "--exact",
        "attacker_role",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("NONO_ADV_ROLE", role)
    .env("NONO_AGENT_BIN", sys::accessible(&sys::agent_bin()))
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .uid(uid)
    .gid(uid);
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().expect("start the attacker")
}

/// Runs an attacker role to completion; its `ADV {json}` lines.
pub fn run_attacker(uid: u32, role: &str, env: &[(&str, String)]) -> Vec<Value> {
    let mut c = attacker(uid, role, env);
    drop(c.stdin.take());
    let out = Lines::collect(c.stdout.take().unwrap());
    let err = Lines::collect(c.stderr.take().unwrap());
    let st = sys::wait_child(&mut c, Duration::from_secs(60), role);
    // The collector threads read until end of file.
    out.wait_closed(Duration::from_secs(5));
    err.wait_closed(Duration::from_secs(5));
    assert!(
        st.success(),
        "attacker {role} failed: {st:?}\nstdout:\n{}\nstderr:\n{}",
        out.all(),
        err.all()
    );
    results(&out)
}

pub fn results(out: &Lines) -> Vec<Value> {
    out.all()
        .lines()
        // libtest's "test attacker_role ... " may precede the first one.
        .filter_map(|l| l.find("ADV {").map(|i| &l[i + 4..]))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The result line for `case`.
pub fn case<'a>(rs: &'a [Value], name: &str) -> &'a Value {
    rs.iter()
        .find(|r| r["case"] == name)
        .unwrap_or_else(|| panic!("no result for {name} in {rs:?}"))
}

pub fn new_id() -> String {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn deny_all() -> Value {
    json!({"loopback_any": false, "loopback_ports": [], "proxies": []})
}

pub fn cgroup_of(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

pub fn pidfd_open(pid: i32, flags: u32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: plain syscall.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}
