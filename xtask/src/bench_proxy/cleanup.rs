//! Clean-up that survives Ctrl-C: a registry of process groups, namespaces and
//! directories, a signal thread that removes them, and the guards (`Proc`,
//! `TempDir`) that register themselves.

use anyhow::{bail, Context as _, Result};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

static CLEANUP: Mutex<Registry> = Mutex::new(Registry {
    pgids: Vec::new(),
    netns: Vec::new(),
    dirs: Vec::new(),
});

pub(crate) struct Registry {
    pub(crate) pgids: Vec<i32>,
    pub(crate) netns: Vec<String>,
    pub(crate) dirs: Vec<PathBuf>,
}

pub(crate) fn registry() -> std::sync::MutexGuard<'static, Registry> {
    CLEANUP.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn block_signals() -> Result<()> {
    // SAFETY: plain sigset manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        // Threads spawned later inherit the mask; std::process::Command
        // resets it in children.
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            bail!("pthread_sigmask failed");
        }
    }
    Ok(())
}

/// Waits for SIGINT/SIGTERM/SIGHUP, removes everything, exits.
pub(crate) fn signal_thread() {
    // SAFETY: sigwait on a local, initialised set.
    let sig = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        let mut sig = 0;
        libc::sigwait(&set, &mut sig);
        sig
    };
    eprintln!("\nbench-proxy: signal {sig}, cleaning up");
    let r = registry();
    for &pg in &r.pgids {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(-pg, libc::SIGKILL) };
    }
    for ns in &r.netns {
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(Stdio::null())
            .status();
    }
    for d in &r.dirs {
        let _ = std::fs::remove_dir_all(d);
    }
    std::process::exit(128 + sig);
}

/// A child process in its own process group, killed (with its group) on drop.
pub(crate) struct Proc {
    pub(crate) name: String,
    pub(crate) child: Child,
}

impl Proc {
    /// Runs `cmd` inside network namespace `ns` (through nsenter, which
    /// execs, so the pid is the program's), output to `log`.
    pub(crate) fn spawn_in(ns: &str, name: &str, cmd: &mut Command, log: &Path) -> Result<Self> {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{ns}"))
            .arg(cmd.get_program())
            .args(cmd.get_args());
        Self::spawn(name, &mut c, log)
    }

    pub(crate) fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Self> {
        let out = std::fs::File::create(log)?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        die_with_parent(cmd);
        // Hold the registry lock across spawn so a signal cannot slip in
        // between fork and registration.
        let mut r = registry();
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        r.pgids.push(child.id() as i32);
        Ok(Self {
            name: name.to_string(),
            child,
        })
    }

    pub(crate) fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Fails if the process already exited.
    pub(crate) fn check_alive(&mut self) -> Result<()> {
        if let Some(st) = self.child.try_wait()? {
            bail!("{} exited early: {st}", self.name);
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = self.pid();
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = self.child.wait();
        registry().pgids.retain(|&p| p != pid);
    }
}

/// Runs a command to completion in its own process group (killed on
/// Ctrl-C) and returns its output.
pub(crate) fn run_registered(cmd: &mut Command) -> Result<std::process::Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    die_with_parent(cmd);
    let child = {
        let mut r = registry();
        let child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
        r.pgids.push(child.id() as i32);
        child
    };
    let pid = child.id() as i32;
    let out = child.wait_with_output();
    registry().pgids.retain(|&p| p != pid);
    Ok(out?)
}

/// SIGKILL the child if this process dies (even by SIGKILL). Programs that
/// change credentials (squid) lose this; the stale-namespace sweep of the
/// next run catches them.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl and getppid are async-signal-safe; nothing is allocated.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

pub(crate) struct TempDir {
    pub(crate) path: PathBuf,
}

impl TempDir {
    pub(crate) fn new() -> Result<Self> {
        let path = std::env::temp_dir().join(format!("nono-bench-proxy.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path)?;
        // squid drops to its own user and must reach its files below.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        registry().dirs.push(path.clone());
        Ok(Self { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
        registry().dirs.retain(|d| d != &self.path);
    }
}
