//! Process vectors that leave the sandbox's cgroup (sub, parent, through
//! /proc/PID/root).

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use nono_tests::sys;
use serde_json::{json, Value};

use crate::attempt::{Attempt, Steps};
use crate::connect::tcp_connect;

/// Writes `s` into an existing file (never creates one: a cgroup.procs
/// path that does not exist must not leave a stray file behind).
fn write_str(path: &Path, s: &str) -> Attempt {
    let r = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(s.as_bytes()));
    match r {
        Ok(()) => Attempt::success(format!("wrote {s:?} to {}", path.display())),
        Err(e) => Attempt::fail(&format!("write {}", path.display()), &e),
    }
}

pub(crate) fn own_cgroup() -> String {
    fs::read_to_string("/proc/self/cgroup")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("<{e}>"))
}

/// Mount point of the cgroup2 hierarchy, from /proc/self/mountinfo.
fn cgroup2_mount() -> Option<PathBuf> {
    let mi = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mi.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        if post.split_whitespace().next()? == "cgroup2" {
            pre.split_whitespace().nth(4).map(PathBuf::from)
        } else {
            None
        }
    })
}

/// The sandbox's cgroup: `NONO_CGROUP` (BPF enforcer), else our own
/// cgroup2 directory from /proc/self/cgroup under the cgroup2 mount (the
/// seccomp enforcer creates no cgroup; the attempts then target whatever
/// cgroup we are in).
pub(crate) fn nono_cgroup(steps: &mut Steps) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NONO_CGROUP") {
        return Some(PathBuf::from(p));
    }
    let own = fs::read_to_string("/proc/self/cgroup").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("0::"))
            .map(|p| p.trim().trim_start_matches('/').to_string())
    });
    match (cgroup2_mount(), own) {
        (Some(m), Some(rel)) => {
            let p = if rel.is_empty() { m } else { m.join(rel) };
            steps.push(
                "env",
                &Attempt::success(format!(
                    "NONO_CGROUP not set; using own cgroup {}",
                    p.display()
                )),
            );
            Some(p)
        }
        (m, own) => {
            steps.push(
                "env",
                &Attempt {
                    ok: false,
                    errno: None,
                    detail: format!("NONO_CGROUP not set; cgroup2 mount {m:?}, own cgroup {own:?}"),
                },
            );
            None
        }
    }
}

pub(crate) fn sub_cgroup(steps: &mut Steps, sa: SocketAddr) -> Attempt {
    if let Some(cg) = nono_cgroup(steps) {
        let sub = cg.join("escape");
        let mk = match fs::create_dir(&sub) {
            Ok(()) => Attempt::success(format!("mkdir {}", sub.display())),
            Err(e) => Attempt::fail(&format!("mkdir {}", sub.display()), &e),
        };
        steps.push("mkdir", &mk);
        steps.push("move", &write_str(&sub.join("cgroup.procs"), "0"));
        steps.push("cgroup", &Attempt::success(own_cgroup()));
    }
    tcp_connect(sa, 0)
}

pub(crate) fn parent_cgroup(steps: &mut Steps, sa: SocketAddr) -> Attempt {
    if let Some(cg) = nono_cgroup(steps) {
        // The parent only counts while it is still a cgroup2 directory.
        let mount = cgroup2_mount();
        match cg
            .parent()
            .filter(|p| mount.as_ref().is_some_and(|m| p.starts_with(m)))
        {
            Some(parent) => {
                steps.push("move-parent", &write_str(&parent.join("cgroup.procs"), "0"))
            }
            None => steps.push(
                "move-parent",
                &Attempt {
                    ok: false,
                    errno: None,
                    detail: format!(
                        "{} has no parent cgroup (cgroup2 mount {mount:?})",
                        cg.display()
                    ),
                },
            ),
        }
    }
    match cgroup2_mount() {
        Some(root) => steps.push("move-root", &write_str(&root.join("cgroup.procs"), "0")),
        None => steps.push(
            "move-root",
            &Attempt {
                ok: false,
                errno: None,
                detail: "no cgroup2 mount visible".into(),
            },
        ),
    }
    steps.push("cgroup", &Attempt::success(own_cgroup()));
    tcp_connect(sa, 0)
}

/// Mount points of every cgroup2 in a mountinfo text.
fn cgroup2_mounts(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| pre.split_whitespace().nth(4).map(str::to_string))
                .flatten()
        })
        .collect()
}

/// Through `/proc/<pid>/root` of every other process (the host's mount
/// namespace, for a host process the sandbox may ptrace-read, e.g. a uid-0
/// process without capabilities), open a cgroup2 `cgroup.procs` for writing
/// and write "0" (move self). Then report our cgroup and connect.
pub(crate) fn proc_root_cgroup(
    steps: &mut Steps,
    extra: &mut serde_json::Map<String, Value>,
    sa: SocketAddr,
) -> Attempt {
    let pids = sys::all_pids();
    let (mut tried, mut opened, mut written, mut mountinfo_read, mut roots) = (0, 0, 0, 0, 0);
    let mut errors: std::collections::BTreeMap<String, usize> = Default::default();
    let mut opened_pids = Vec::new();
    for &pid in &pids {
        if fs::read_dir(format!("/proc/{pid}/root")).is_ok() {
            roots += 1;
        }
        let mut paths = vec![
            format!("/proc/{pid}/root/sys/fs/cgroup/unified/cgroup.procs"),
            format!("/proc/{pid}/root/sys/fs/cgroup/cgroup.procs"),
        ];
        if let Ok(mi) = fs::read_to_string(format!("/proc/{pid}/mountinfo")) {
            mountinfo_read += 1;
            for mp in cgroup2_mounts(&mi) {
                let p = format!("/proc/{pid}/root{}/cgroup.procs", mp.trim_end_matches('/'));
                if !paths.contains(&p) {
                    paths.push(p);
                }
            }
        }
        for p in paths {
            tried += 1;
            match fs::OpenOptions::new().write(true).open(&p) {
                Ok(mut f) => {
                    opened += 1;
                    opened_pids.push(pid);
                    let w = f.write_all(b"0");
                    if w.is_ok() {
                        written += 1;
                    }
                    steps.push(
                        &format!("write {p}"),
                        &match w {
                            Ok(()) => Attempt::success(format!("wrote \"0\" to {p}")),
                            Err(e) => Attempt::fail(&format!("write {p}"), &e),
                        },
                    );
                }
                Err(e) => {
                    *errors.entry(format!("{:?}", e.kind())).or_default() += 1;
                }
            }
        }
    }
    let summary = format!(
        "{} pids, {roots} /proc/<pid>/root readable, {mountinfo_read} mountinfo readable; \
         {tried} cgroup.procs paths tried, {opened} opened for writing, {written} written; \
         open errors {errors:?}",
        pids.len()
    );
    steps.push(
        "scan",
        &Attempt {
            ok: opened == 0,
            errno: None,
            detail: summary,
        },
    );
    opened_pids.dedup();
    let cg = own_cgroup();
    steps.push("cgroup", &Attempt::success(cg.clone()));
    extra.insert("tried".into(), json!(tried));
    extra.insert("opened".into(), json!(opened));
    extra.insert("written".into(), json!(written));
    extra.insert("opened_via_pids".into(), json!(opened_pids));
    extra.insert("cgroup_after".into(), json!(cg));
    tcp_connect(sa, 0)
}
