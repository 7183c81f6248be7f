//! `detach-bpf`: tries to detach or replace the enforcer's BPF programs and
//! links.

use std::ffi::CString;
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::bpf;

use crate::attempt::{Attempt, Steps};
use crate::cgroup::nono_cgroup;
use crate::connect::tcp_connect;

/// Recursively lists files under `dir`; the first directory-read error is returned.
fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            collect_files(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

pub(crate) fn detach_bpf(steps: &mut Steps, sa: SocketAddr) -> Attempt {
    use bpf::*;
    if let Some(cg) = nono_cgroup(steps) {
        let cgfd = match fs::File::open(&cg) {
            Ok(f) => Some(f),
            Err(e) => {
                steps.push("open-cgroup", &Attempt::fail("open NONO_CGROUP", &e));
                None
            }
        };
        if let Some(cgfd) = cgfd {
            let cgfd = cgfd.as_raw_fd() as u32;
            for &(at, name) in ATTACH_TYPES {
                let mut prog_ids = [0u32; 64];
                let mut link_ids = [0u32; 64];
                let mut a = Attr::new();
                a.u32_at(0, cgfd)
                    .u32_at(4, at)
                    .u64_at(16, prog_ids.as_mut_ptr() as u64)
                    .u32_at(24, 64)
                    .u64_at(40, link_ids.as_mut_ptr() as u64);
                match sys(BPF_PROG_QUERY, &mut a) {
                    Ok(_) => {
                        let n = a.get_u32(24).min(64) as usize;
                        steps.push(
                            &format!("query-{name}"),
                            &Attempt::success(format!("{n} programs: {:?}", &prog_ids[..n])),
                        );
                        for &id in &prog_ids[..n] {
                            let mut g = Attr::new();
                            g.u32_at(0, id);
                            match sys(BPF_PROG_GET_FD_BY_ID, &mut g) {
                                Ok(pfd) => {
                                    let mut d = Attr::new();
                                    d.u32_at(0, cgfd).u32_at(4, pfd as u32).u32_at(8, at);
                                    let r = sys(BPF_PROG_DETACH, &mut d);
                                    steps.push(
                                        &format!("prog-detach-{name}-{id}"),
                                        &match r {
                                            Ok(_) => Attempt::success("detached"),
                                            Err(e) => Attempt::fail("BPF_PROG_DETACH", &e),
                                        },
                                    );
                                }
                                Err(e) => steps.push(
                                    &format!("prog-get-fd-{name}-{id}"),
                                    &Attempt::fail("BPF_PROG_GET_FD_BY_ID", &e),
                                ),
                            }
                        }
                        for &id in link_ids.iter().take(n).filter(|&&id| id != 0) {
                            let mut g = Attr::new();
                            g.u32_at(0, id);
                            match sys(BPF_LINK_GET_FD_BY_ID, &mut g) {
                                Ok(lfd) => {
                                    let mut d = Attr::new();
                                    d.u32_at(0, lfd as u32);
                                    steps.push(
                                        &format!("link-detach-by-id-{name}-{id}"),
                                        &match sys(BPF_LINK_DETACH, &mut d) {
                                            Ok(_) => Attempt::success("detached"),
                                            Err(e) => Attempt::fail("BPF_LINK_DETACH", &e),
                                        },
                                    );
                                }
                                Err(e) => steps.push(
                                    &format!("link-get-fd-{name}-{id}"),
                                    &Attempt::fail("BPF_LINK_GET_FD_BY_ID", &e),
                                ),
                            }
                        }
                    }
                    Err(e) => steps.push(
                        &format!("query-{name}"),
                        &Attempt::fail("BPF_PROG_QUERY", &e),
                    ),
                }
                // Plain detach (no program fd), as for a single non-multi program.
                let mut d = Attr::new();
                d.u32_at(0, cgfd).u32_at(8, at);
                steps.push(
                    &format!("prog-detach-{name}"),
                    &match sys(BPF_PROG_DETACH, &mut d) {
                        Ok(_) => Attempt::success("detached"),
                        Err(e) => Attempt::fail("BPF_PROG_DETACH", &e),
                    },
                );
            }
        }
    }
    match std::env::var_os("NONO_BPF_PIN_DIR") {
        None => steps.push(
            "env",
            &Attempt {
                ok: false,
                errno: None,
                detail: "NONO_BPF_PIN_DIR not set".into(),
            },
        ),
        Some(dir) => {
            let dir = PathBuf::from(dir);
            let mut files = Vec::new();
            let listed = collect_files(&dir, &mut files);
            steps.push(
                "list-pins",
                &match listed {
                    Ok(()) => {
                        Attempt::success(format!("{} files under {}", files.len(), dir.display()))
                    }
                    Err(e) => Attempt::fail(
                        &format!("list {} ({} files found)", dir.display(), files.len()),
                        &e,
                    ),
                },
            );
            for f in &files {
                let name = f.display().to_string();
                let Ok(c) = CString::new(name.clone()) else {
                    continue;
                };
                let mut a = Attr::new();
                a.u64_at(0, c.as_ptr() as u64);
                match sys(BPF_OBJ_GET, &mut a) {
                    Ok(ofd) => {
                        steps.push(
                            &format!("obj-get {name}"),
                            &Attempt::success(format!("got fd {ofd}")),
                        );
                        let mut d = Attr::new();
                        d.u32_at(0, ofd as u32);
                        steps.push(
                            &format!("link-detach {name}"),
                            &match sys(BPF_LINK_DETACH, &mut d) {
                                Ok(_) => Attempt::success("detached"),
                                Err(e) => Attempt::fail("BPF_LINK_DETACH", &e),
                            },
                        );
                    }
                    Err(e) => steps.push(
                        &format!("obj-get {name}"),
                        &Attempt::fail("BPF_OBJ_GET", &e),
                    ),
                }
            }
            for f in &files {
                let name = f.display().to_string();
                steps.push(
                    &format!("unlink {name}"),
                    &match fs::remove_file(f) {
                        Ok(()) => Attempt::success("unlinked"),
                        Err(e) => Attempt::fail("unlink", &e),
                    },
                );
            }
        }
    }
    tcp_connect(sa, 0)
}
