//! Runs `nono-probe` outside and inside a sandbox and parses its JSON line.
//!
//! `Enforcement` and `RunAs` live here; `result` parses the probe's line
//! and the agent's summary, `harness` runs the probe (`Harness`,
//! `ExecOpts`, `exec_command`), `guard` removes what a sandbox left. Every
//! public item is re-exported, so `crate::runner::X` paths are unchanged.

mod guard;
mod harness;
mod result;

pub use guard::SandboxGuard;
pub use harness::{exec_command, ExecOpts, Harness};
pub use result::{parse_summary, ProbeResult};

/// Errnos acceptable for a denied attempt.
pub const DENIED_ERRNOS: &[i32] = &[libc::EPERM, libc::EACCES];

/// Which enforcer confines the sandbox, and whether the agent is root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforcement {
    /// `--enforcer bpf` as root: cgroup BPF, pid/cgroup/mount namespaces,
    /// no capabilities.
    Bpf,
    /// `--enforcer seccomp` as root: the seccomp supervisor, with the same
    /// namespaces and capability drop, but no cgroup.
    Seccomp,
    /// `--enforcer seccomp` as an unprivileged user ([`RunAs::fresh`]): no
    /// namespaces, no cgroup; leftovers are killed through the agent being
    /// a child subreaper.
    SeccompUser,
    /// `--enforcer bpf --daemon-socket S` as an unprivileged user
    /// ([`RunAs::fresh`]): the test binary's daemon
    /// ([`crate::daemon::Daemon::shared`]) makes the sandbox (a cgroup
    /// under its parent cgroup, its shared programs). Not in
    /// [`Enforcement::ALL`]: the `daemon` test target runs it.
    DaemonUser,
    /// `--enforcer bpf --transparent` as root (issue 14): TCP the policy
    /// refuses as not allowed is redirected to the sandbox's proxy, which
    /// refuses it, and port 53 to the agent's resolver; everything else as
    /// [`Enforcement::Bpf`]. Not in [`Enforcement::ALL`]: the escape
    /// battery runs it as `net_bpf_transparent::`.
    BpfTransparent,
}

impl Enforcement {
    pub const ALL: [Enforcement; 3] = [
        Enforcement::Bpf,
        Enforcement::Seccomp,
        Enforcement::SeccompUser,
    ];

    /// The `--enforcer` value (also NONO_ENFORCER in the sandbox and the
    /// events' "source").
    pub fn flag(self) -> &'static str {
        match self {
            Enforcement::Bpf | Enforcement::DaemonUser | Enforcement::BpfTransparent => "bpf",
            Enforcement::Seccomp | Enforcement::SeccompUser => "seccomp",
        }
    }

    /// A name for messages.
    pub fn label(self) -> &'static str {
        match self {
            Enforcement::Bpf => "bpf (root)",
            Enforcement::Seccomp => "seccomp (root)",
            Enforcement::SeccompUser => "seccomp (unprivileged)",
            Enforcement::DaemonUser => "bpf (daemon, unprivileged)",
            Enforcement::BpfTransparent => "bpf --transparent (root)",
        }
    }

    /// The agent runs as root (namespaces, capability drop).
    pub fn privileged(self) -> bool {
        matches!(
            self,
            Enforcement::Bpf | Enforcement::Seccomp | Enforcement::BpfTransparent
        )
    }

    /// The sandbox has its own cgroup (NONO_CGROUP, NONO_BPF_PIN_DIR).
    pub fn has_cgroup(self) -> bool {
        matches!(
            self,
            Enforcement::Bpf | Enforcement::DaemonUser | Enforcement::BpfTransparent
        )
    }

    /// The sandbox sees its pin directory (NONO_BPF_PIN_DIR): only a
    /// sandbox with its own programs (a daemon's are shared).
    pub fn has_pin_dir(self) -> bool {
        matches!(self, Enforcement::Bpf | Enforcement::BpfTransparent)
    }

    /// `exec --transparent`.
    pub fn transparent(self) -> bool {
        self == Enforcement::BpfTransparent
    }

    /// The event hook that reports a denied connect for `family` ("inet" /
    /// "inet6"), and the one that reports a refused socket().
    pub fn connect_hook(self, v6: bool) -> &'static str {
        match (self, v6) {
            (Enforcement::Bpf | Enforcement::DaemonUser | Enforcement::BpfTransparent, false) => {
                "connect4"
            }
            (Enforcement::Bpf | Enforcement::DaemonUser | Enforcement::BpfTransparent, true) => {
                "connect6"
            }
            _ => "connect",
        }
    }

    pub fn socket_hook(self) -> &'static str {
        match self {
            Enforcement::Bpf | Enforcement::DaemonUser | Enforcement::BpfTransparent => {
                "sock_create"
            }
            _ => "socket",
        }
    }
}

/// First uid/gid handed out by [`RunAs::fresh`] (no account needs to exist).
pub const FRESH_UID_BASE: u32 = 0x5e00_0000;
const FRESH_UID_SPAN: u32 = 0x1_0000 * 64;

/// An unprivileged identity for the agent (through `setpriv`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

impl RunAs {
    /// A uid/gid no other process uses: unique to this test process and
    /// call. So a sandbox's `kill(-1)` reaches only its own run, and its
    /// leftovers are exactly the processes with that uid.
    pub fn fresh() -> RunAs {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed) % 64;
        let id = FRESH_UID_BASE + (std::process::id() & 0xffff) * 64 + n;
        RunAs { uid: id, gid: id }
    }

    /// Whether `uid` is one [`RunAs::fresh`] hands out (guards only ever
    /// kill processes of such uids).
    pub fn is_fresh(uid: u32) -> bool {
        (FRESH_UID_BASE..FRESH_UID_BASE + FRESH_UID_SPAN).contains(&uid)
    }

    /// `setpriv` arguments that switch to this identity with no
    /// capabilities (bounding and inheritable sets emptied too).
    pub fn setpriv_args(self) -> Vec<String> {
        vec![
            format!("--reuid={}", self.uid),
            format!("--regid={}", self.gid),
            "--clear-groups".into(),
            "--inh-caps=-all".into(),
            "--bounding-set=-all".into(),
            "--".into(),
        ]
    }
}

/// A fresh marker argument for one sandboxed probe run: the probe ignores
/// it, its forks inherit it, so every process of the run can be found (and
/// killed) from the host by its command line.
pub fn fresh_marker() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "nono-mark-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_line_parsing() {
        let err = "noise\nnono-agent: sandbox ab12: 3 denied (connect4: 2, sock_create: 1)\n";
        let (n, hooks) = parse_summary(err, "ab12").unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            hooks,
            vec![("connect4".to_string(), 2), ("sock_create".to_string(), 1)]
        );
        assert_eq!(
            parse_summary("nono-agent: sandbox x: 0 denied\n", "x"),
            Some((0, vec![]))
        );
        assert_eq!(
            parse_summary("nono-agent: sandbox x: 0 denied\n", "y"),
            None
        );
    }

    #[test]
    fn fresh_identities_are_unique_and_recognised() {
        let (a, b) = (RunAs::fresh(), RunAs::fresh());
        assert_ne!(a, b);
        assert!(RunAs::is_fresh(a.uid) && RunAs::is_fresh(b.uid));
        assert!(!RunAs::is_fresh(0) && !RunAs::is_fresh(65534));
        assert_eq!(a.uid, a.gid);
        assert!(a.uid < 0x7fff_ffff, "inside ping_group_range");
        assert_ne!(fresh_marker(), fresh_marker());
    }

    #[test]
    fn enforcement_names() {
        assert_eq!(Enforcement::Bpf.flag(), "bpf");
        assert_eq!(Enforcement::SeccompUser.flag(), "seccomp");
        assert!(!Enforcement::SeccompUser.privileged());
        assert!(Enforcement::Bpf.has_cgroup() && !Enforcement::Seccomp.has_cgroup());
        assert_eq!(Enforcement::Seccomp.connect_hook(true), "connect");
        assert_eq!(Enforcement::Bpf.connect_hook(true), "connect6");
        let t = ExecOpts::for_enforcement(Enforcement::BpfTransparent);
        assert_eq!(t.enforcer.as_deref(), Some("bpf"));
        assert_eq!(t.extra, vec!["--transparent".to_string()]);
        assert!(t.user.is_none() && Enforcement::BpfTransparent.has_pin_dir());
        assert!(ExecOpts::for_enforcement(Enforcement::Bpf).extra.is_empty());
        let opts = ExecOpts::for_enforcement(Enforcement::SeccompUser);
        assert!(opts.user.is_some() && opts.in_client_netns);
        assert!(ExecOpts::for_enforcement(Enforcement::Seccomp)
            .user
            .is_none());
    }

    #[test]
    fn probe_result_parsing() {
        let out = "garbage\n{\"vector\":\"tcp4\",\"ok\":false,\"errno\":1,\"detail\":\"d\",\
                   \"pid\":5,\"sandbox\":\"s\",\"cgroup\":null,\"pin_dir\":null,\"steps\":[]}\n";
        let r = ProbeResult::parse(out).unwrap();
        assert_eq!(r.vector, "tcp4");
        assert!(r.denied());
        assert_eq!(r.pid, Some(5));
        assert_eq!(r.sandbox.as_deref(), Some("s"));
        assert!(ProbeResult::parse("no json").is_none());
    }
}
