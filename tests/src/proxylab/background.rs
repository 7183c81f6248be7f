//! A process the lab started, stopped by pid and reaped on drop.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::sys;

/// A process the test started; stopped by its pid and reaped on drop.
pub struct Background {
    pub child: Child,
    pub what: String,
    pub stderr: PathBuf,
}

impl Background {
    pub fn spawn(cmd: &mut Command, what: &str, logdir: &Path) -> Background {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let stdout = logdir.join(format!("bg{n}.stdout"));
        let stderr = logdir.join(format!("bg{n}.stderr"));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).expect("stdout file"))
            .stderr(fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Background {
            child,
            what: what.to_string(),
            stderr,
        }
    }

    /// Waits for `ready` to exist; panics with the process's stderr if it
    /// exits or the file does not appear in time.
    pub fn wait_ready(&mut self, ready: &Path, timeout: Duration) {
        let mut exited = None;
        let ok = sys::wait_until(timeout, || {
            if ready.exists() {
                return true;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                exited = Some(st);
                return true;
            }
            false
        });
        if !ok || exited.is_some() || !ready.exists() {
            panic!(
                "{} did not become ready (exit: {exited:?}); stderr:\n{}",
                self.what,
                fs::read_to_string(&self.stderr).unwrap_or_default()
            );
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Background {
    /// SIGTERM (an agent forwards it to its command and cleans up), then
    /// SIGKILL after 5 s; always reaped.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: plain syscall on the pid of a child we have not reaped.
            unsafe { libc::kill(self.pid(), libc::SIGTERM) };
            let done = sys::wait_until(Duration::from_secs(5), || {
                !matches!(self.child.try_wait(), Ok(None))
            });
            if !done {
                sys::kill_pid(self.pid());
            }
        }
        let _ = self.child.wait();
    }
}
