//! `Daemon`: a private `nono-agent daemon` for tests, with a unique name
//! (`nono-daemon-test-<pid>-<n>`) and socket (in a fresh 0755 directory any
//! user can reach), removed completely on drop: the daemon is stopped, its
//! cgroups killed and removed (deepest first), its pins
//! (`<bpffs>/<name>`, which detaches the programs), its state directory
//! (`/run/nono-agent/<name>`) and the temporary directory deleted.
//!
//! [`Daemon::shared`] is one daemon per test binary, removed at exit.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::sys;

/// A running `nono-agent daemon` owned by the test.
pub struct Daemon {
    pub name: String,
    pub socket: PathBuf,
    /// Its metrics socket (`<dir>/metrics.sock` unless the test chose one).
    pub metrics_socket: PathBuf,
    /// The temporary directory holding the socket and the daemon's log.
    pub dir: PathBuf,
    /// `<cgroup2>/<name>`: the sandboxes are its children.
    pub parent_cgroup: PathBuf,
    /// `<bpffs>/<name>`.
    pub pin_dir: PathBuf,
    /// `/run/nono-agent/<name>`.
    pub state_dir: PathBuf,
    child: Mutex<Option<Child>>,
    cleaned: AtomicBool,
}

impl Daemon {
    /// Starts a daemon with default limits.
    pub fn start() -> Daemon {
        Daemon::start_with(&[])
    }

    /// Starts a daemon with more `daemon` options (e.g. limits) and waits
    /// until its socket answers.
    pub fn start_with(extra: &[&str]) -> Daemon {
        Daemon::start_wrapped(&[], extra)
    }

    /// Starts a daemon through a wrapper command (`wrapper` followed by the
    /// daemon's argv, e.g. `unshare -m sh -c '... exec "$0" "$@"'`): the
    /// wrapper must end by exec'ing the daemon so the child is the daemon.
    pub fn start_wrapped(wrapper: &[&str], extra: &[&str]) -> Daemon {
        sys::require_prereqs();
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("nono-daemon-test-{}-{n}", std::process::id());
        let cg2 = sys::cgroup2_mount().expect("no cgroup2 mount (the daemon needs one)");
        let bpffs = sys::bpffs_mount().expect("no bpffs mount (the daemon pins there)");
        let dir = std::env::temp_dir().join(format!("{name}-dir"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the daemon's temp dir");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod 0755");
        let socket = dir.join("daemon.sock");
        let log = fs::File::create(dir.join("daemon.log")).expect("daemon log");
        // Each daemon its own metrics socket, so concurrent tests never
        // share (or take over) /run/nono-agent/metrics.sock.
        let metrics_socket = match extra.iter().position(|a| *a == "--metrics-socket") {
            Some(i) => PathBuf::from(extra[i + 1]),
            None => dir.join("metrics.sock"),
        };
        let mut cmd = match wrapper.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(sys::agent_bin());
                c
            }
            None => Command::new(sys::agent_bin()),
        };
        cmd.args(["daemon", "--socket"])
            .arg(&socket)
            .args(["--name", &name])
            .args(extra);
        if !extra.contains(&"--metrics-socket") {
            cmd.arg("--metrics-socket").arg(&metrics_socket);
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        let child = cmd.spawn().expect("spawn nono-agent daemon");
        let d = Daemon {
            parent_cgroup: cg2.join(&name),
            pin_dir: bpffs.join(&name),
            state_dir: PathBuf::from("/run/nono-agent").join(&name),
            name,
            socket,
            metrics_socket,
            dir,
            child: Mutex::new(Some(child)),
            cleaned: AtomicBool::new(false),
        };
        let ok = sys::wait_until(Duration::from_secs(20), || {
            if let Some(c) = d.child.lock().unwrap().as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("nono-agent daemon exited ({st}): {}", d.log());
                }
            }
            UnixStream::connect(&d.socket).is_ok()
        });
        assert!(
            ok,
            "nono-agent daemon did not answer within 20 s: {}",
            d.log()
        );
        let mode = fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666, "the daemon socket is not 0666: {mode:o}");
        d
    }

    /// One daemon for the whole test binary, removed when it exits.
    pub fn shared() -> &'static Daemon {
        static SHARED: OnceLock<Daemon> = OnceLock::new();
        extern "C" fn cleanup_shared() {
            if let Some(d) = SHARED.get() {
                d.cleanup();
            }
        }
        SHARED.get_or_init(|| {
            let d = Daemon::start();
            // SAFETY: registers a plain function to run at process exit.
            unsafe { libc::atexit(cleanup_shared) };
            d
        })
    }

    /// What the daemon printed so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// The sandbox cgroups (children of the parent cgroup).
    pub fn sandbox_cgroups(&self) -> Vec<String> {
        sys::subdirs(&self.parent_cgroup)
    }

    /// The sandbox records in the state directory.
    pub fn records(&self) -> Vec<String> {
        sys::dir_entries(&self.state_dir.join("sandboxes"))
    }

    /// Panics unless, within `within`, no sandbox cgroup and no record of
    /// this daemon is left.
    pub fn assert_nothing_left(&self, within: std::time::Duration) {
        let clean = sys::wait_until(within, || {
            self.sandbox_cgroups().is_empty() && self.records().is_empty()
        });
        assert!(
            clean,
            "left behind: cgroups {:?} under {}, records {:?} in {}\ndaemon: {}",
            self.sandbox_cgroups(),
            self.parent_cgroup.display(),
            self.records(),
            self.state_dir.display(),
            self.log()
        );
    }

    /// Whether the daemon process still runs.
    /// The daemon's own count of live sandboxes and of cgroups with a
    /// policy entry in its kernel maps (a raw `status` request, so a leak
    /// in the maps shows even when no cgroup is left).
    pub fn status(&self) -> (u64, u64) {
        use std::io::{Read as _, Write as _};
        let mut s = UnixStream::connect(&self.socket).expect("connect to the daemon");
        let body = br#"{"v":1,"body":{"type":"status"}}"#;
        s.write_all(&(body.len() as u32).to_be_bytes())
            .expect("send");
        s.write_all(body).expect("send");
        let mut len = [0u8; 4];
        s.read_exact(&mut len).expect("status reply length");
        let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut buf).expect("status reply");
        let v: serde_json::Value = serde_json::from_slice(&buf).expect("status JSON");
        let field = |k: &str| {
            v["body"][k]
                .as_u64()
                .unwrap_or_else(|| panic!("status without {k}: {v}"))
        };
        (field("sandboxes"), field("policy_entries"))
    }

    pub fn running(&self) -> bool {
        matches!(
            self.child.lock().unwrap().as_mut().map(|c| c.try_wait()),
            Some(Ok(None))
        )
    }

    /// Stops the daemon and removes everything it created (idempotent).
    pub fn cleanup(&self) {
        if self.cleaned.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Some(mut c) = self.child.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let pid = c.id() as i32;
            // SAFETY: signals our own child by pid.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let exited = sys::wait_until(Duration::from_secs(5), || {
                matches!(c.try_wait(), Ok(Some(_)))
            });
            if !exited {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
        remove_cgroup_tree(&self.parent_cgroup);
        let _ = fs::remove_dir_all(&self.pin_dir);
        let _ = fs::remove_dir_all(&self.state_dir);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Kills every process in the cgroup tree at `root` and removes it,
/// deepest first.
pub fn remove_cgroup_tree(root: &Path) {
    if !root.is_dir() {
        return;
    }
    let mut dirs = vec![root.to_path_buf()];
    let mut i = 0;
    while i < dirs.len() {
        let d = dirs[i].clone();
        for s in sys::subdirs(&d) {
            dirs.push(d.join(s));
        }
        i += 1;
    }
    for d in dirs.iter().rev() {
        let _ = fs::write(d.join("cgroup.kill"), "1");
        sys::wait_until(Duration::from_secs(2), || {
            sys::cgroup_procs(d).is_empty() && fs::remove_dir(d).is_ok() || !d.exists()
        });
    }
}
