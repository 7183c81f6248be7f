//! Running `nono-agent exec` (flags, cwd, env) around a command or the probe.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::sys::{self, CmdOutput};

use super::probe::{probe_argv, Probe};

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
