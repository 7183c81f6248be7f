//! The two enforcers of the network policy, `bpf` (cgroup BPF programs) and
//! `seccomp` (a user-notification supervisor), and which one a sandbox gets:
//! decided in one place ([`choose`]) for `exec`, which applies it, and
//! `doctor`, which reports what `auto` would pick; [`Applied`] is the one a
//! run ended up with.

mod apply;
pub mod bpf;
pub mod seccomp;

pub use apply::{apply_bpf, Applied, ApplyError};

use std::fmt;

/// The enforcer the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Requested {
    /// BPF when it can be loaded and attached here, else seccomp.
    #[default]
    Auto,
    /// cgroup BPF only.
    Bpf,
    /// The seccomp supervisor only.
    Seccomp,
}

/// What the host offers, as far as the choice goes.
#[derive(Debug, Clone)]
pub struct Host {
    /// Root (or the capabilities BPF needs).
    pub privileged: bool,
    /// The kernel has seccomp user notification.
    pub seccomp_user_notif: bool,
    /// Why no cgroup2 filesystem is usable here, if none is: a privileged
    /// sandbox always gets a cgroup (under seccomp too, so that `cleanup`
    /// can find and kill it if the agent dies), so without one nothing can
    /// confine it.
    pub no_cgroup2: Option<String>,
}

impl Host {
    /// The facts of this host, for `exec` and `doctor` alike.
    pub fn detect(privileged: bool) -> Self {
        Self {
            privileged,
            seccomp_user_notif: crate::sandbox::privileges::seccomp_user_notif_available(),
            no_cgroup2: if privileged {
                crate::sandbox::cgroup::discover_root()
                    .err()
                    .map(|e| crate::util::chain(&e))
            } else {
                None
            },
        }
    }
}

/// The outcome of [`choose`].
#[derive(Debug)]
pub enum Choice<B> {
    /// BPF was applied; `B` is what applying it returned.
    Bpf(B),
    /// The seccomp supervisor; `why_not_bpf` is set when `auto` fell back.
    Seccomp { why_not_bpf: Option<String> },
    /// Nothing can enforce, and the user allowed running anyway: why.
    Unenforced { why: String },
}

/// No enforcer can be applied and running unconfined was not allowed.
#[derive(Debug, thiserror::Error)]
#[error("{why}; refusing to run the command unconfined (pass --allow-unenforced to run it anyway)")]
pub struct Refused {
    /// What is missing.
    pub why: String,
}

const BPF_CAPS: &str = "CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF";
const NO_SECCOMP: &str = "seccomp user notification is not available on this kernel";

/// Picks the enforcer, falling back (for `auto`) from BPF to seccomp, and to
/// nothing only when `allow_unenforced`. `try_bpf` applies BPF (or, for
/// `doctor`, tries it on a throwaway cgroup); it is called only when BPF is
/// asked for and the host is privileged, and its error says why it failed.
pub fn choose<B, E: fmt::Display>(
    requested: Requested,
    host: Host,
    allow_unenforced: bool,
    try_bpf: impl FnOnce() -> Result<B, E>,
) -> Result<Choice<B>, Refused> {
    let fallback = |why: String| {
        if allow_unenforced {
            Ok(Choice::Unenforced { why })
        } else {
            Err(Refused { why })
        }
    };
    if let (true, Some(why)) = (host.privileged, &host.no_cgroup2) {
        return fallback(why.clone());
    }
    match requested {
        Requested::Bpf if !host.privileged => {
            fallback(format!("the bpf enforcer needs root ({BPF_CAPS})"))
        }
        Requested::Bpf => match try_bpf() {
            Ok(b) => Ok(Choice::Bpf(b)),
            Err(e) => fallback(format!("the bpf enforcer could not be applied: {e}")),
        },
        Requested::Seccomp if host.seccomp_user_notif => Ok(Choice::Seccomp { why_not_bpf: None }),
        Requested::Seccomp => fallback(NO_SECCOMP.into()),
        Requested::Auto => {
            let why_not_bpf = if host.privileged {
                match try_bpf() {
                    Ok(b) => return Ok(Choice::Bpf(b)),
                    Err(e) => format!("cgroup BPF could not be applied: {e}"),
                }
            } else {
                format!("cgroup BPF needs root ({BPF_CAPS})")
            };
            if host.seccomp_user_notif {
                Ok(Choice::Seccomp {
                    why_not_bpf: Some(why_not_bpf),
                })
            } else {
                fallback(format!("{why_not_bpf}, and {NO_SECCOMP}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: Host = Host {
        privileged: true,
        seccomp_user_notif: true,
        no_cgroup2: None,
    };
    const USER: Host = Host {
        privileged: false,
        seccomp_user_notif: true,
        no_cgroup2: None,
    };
    const BARE: Host = Host {
        privileged: false,
        seccomp_user_notif: false,
        no_cgroup2: None,
    };

    #[test]
    fn root_without_cgroup2_is_refused_by_every_enforcer() {
        let host = Host {
            no_cgroup2: Some("no cgroup2 (ip netns exec)".into()),
            ..ROOT
        };
        for r in [Requested::Auto, Requested::Bpf, Requested::Seccomp] {
            let e = choose(r, host.clone(), false, never).unwrap_err();
            assert_eq!(e.why, "no cgroup2 (ip netns exec)");
            assert!(matches!(
                choose(r, host.clone(), true, never),
                Ok(Choice::Unenforced { .. })
            ));
        }
        // Unprivileged sandboxes need no cgroup.
        let user = Host {
            no_cgroup2: Some("none".into()),
            ..USER
        };
        assert!(matches!(
            choose(Requested::Auto, user, false, never),
            Ok(Choice::Seccomp { .. })
        ));
    }

    fn ok() -> Result<u8, String> {
        Ok(7)
    }
    fn fails() -> Result<u8, String> {
        Err("no bpffs".into())
    }
    fn never() -> Result<u8, String> {
        panic!("BPF must not be tried")
    }

    #[test]
    fn auto_prefers_bpf_and_falls_back_to_seccomp() {
        assert!(matches!(
            choose(Requested::Auto, ROOT, false, ok),
            Ok(Choice::Bpf(7))
        ));
        match choose(Requested::Auto, ROOT, false, fails) {
            Ok(Choice::Seccomp {
                why_not_bpf: Some(w),
            }) => assert_eq!(w, "cgroup BPF could not be applied: no bpffs"),
            other => panic!("{other:?}"),
        }
        match choose(Requested::Auto, USER, false, never) {
            Ok(Choice::Seccomp {
                why_not_bpf: Some(w),
            }) => assert!(w.contains("needs root")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nothing_to_enforce_refuses_unless_allowed() {
        let e = choose(Requested::Auto, BARE, false, never).unwrap_err();
        assert!(e
            .to_string()
            .contains("refusing to run the command unconfined"));
        assert!(e.why.contains("seccomp user notification is not available"));
        assert!(matches!(
            choose(Requested::Auto, BARE, true, never),
            Ok(Choice::Unenforced { .. })
        ));
    }

    #[test]
    fn an_explicit_enforcer_never_falls_back_to_another() {
        assert!(choose(Requested::Bpf, USER, false, never).is_err());
        assert!(choose(Requested::Bpf, ROOT, false, fails).is_err());
        assert!(matches!(
            choose(Requested::Bpf, ROOT, true, fails),
            Ok(Choice::Unenforced { .. })
        ));
        assert!(matches!(
            choose(Requested::Seccomp, ROOT, false, never),
            Ok(Choice::Seccomp { why_not_bpf: None })
        ));
        assert!(choose(Requested::Seccomp, BARE, false, never).is_err());
    }
}
