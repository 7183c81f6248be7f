//! Listeners the sandbox tries to reach: TCP / path / abstract unix
//! acceptors that greet with `hello`, and well-known daemon socket paths.

use std::fs;
use std::io::{self, Write};
use std::net::TcpListener;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

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
