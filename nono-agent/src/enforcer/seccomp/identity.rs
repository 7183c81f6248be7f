//! Acting as the sandbox: a per-thread switch to a target thread's
//! credentials and capabilities for the duration of one operation.
//!
//! Why: a root supervisor that performs `connect`, `sendmsg` or a path
//! lookup with its own rights lends them to the sandbox: a root-only socket
//! accepts the message, peers read uid 0 in `SO_PEERCRED` and
//! `SCM_CREDENTIALS`, and capability-gated control messages (`SO_MARK`,
//! IPv6 hop-by-hop options) pass. Credentials are per thread in the kernel;
//! the raw system calls here change only the calling thread (glibc's
//! wrappers would change every thread of the agent). The saved uid stays 0,
//! which keeps the permitted capabilities, so the thread can switch back.

use std::fmt;

/// A thread's credentials, read from `/proc/TID/status`.
#[derive(Clone, PartialEq, Eq)]
pub struct Creds {
    /// Thread-group id (the pid peers should see).
    pub tgid: u32,
    /// Real, effective, file-system uid.
    pub uid: [u32; 3],
    /// Real, effective, file-system gid.
    pub gid: [u32; 3],
    /// Supplementary groups.
    pub groups: Vec<libc::gid_t>,
    /// Effective capabilities (bit mask).
    pub cap_eff: u64,
}

impl fmt::Debug for Creds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uid {:?} gid {:?}", self.uid, self.gid)
    }
}

impl Creds {
    /// The credentials of thread `tid`, or None if it is gone.
    ///
    /// Capabilities count only when the thread is in the agent's own user
    /// namespace: `CapEff` is relative to the thread's namespace, and a
    /// sandbox that made one of its own shows every capability there, none
    /// of which it has over the host's files and sockets.
    pub fn of(tid: u32) -> Option<Self> {
        let mut c =
            parse_status(&crate::util::read_small_path(format!("/proc/{tid}/status")).ok()?)?;
        if !same_user_namespace(tid) {
            c.cap_eff = 0;
        }
        Some(c)
    }

    /// A `SCM_CREDENTIALS` control message naming this thread's process,
    /// real uid and real gid (what the kernel would stamp for it).
    pub fn scm_credentials(&self) -> Vec<u8> {
        const HDR: usize = std::mem::size_of::<libc::cmsghdr>();
        let ucred = libc::ucred {
            pid: self.tgid as libc::pid_t,
            uid: self.uid[0],
            gid: self.gid[0],
        };
        let data_len = std::mem::size_of::<libc::ucred>();
        let len = HDR + data_len;
        let mut out = vec![0u8; (len + 7) & !7];
        // SAFETY: zeroed plain struct.
        let mut h: libc::cmsghdr = unsafe { std::mem::zeroed() };
        // `as _`: socklen_t on musl (the padding word after it stays
        // zero), size_t on glibc.
        h.cmsg_len = len as _;
        h.cmsg_level = libc::SOL_SOCKET;
        h.cmsg_type = libc::SCM_CREDENTIALS;
        // SAFETY: `out` has room for the header and the ucred after it;
        // unaligned writes of plain structs.
        unsafe {
            std::ptr::write_unaligned(out.as_mut_ptr().cast(), h);
            std::ptr::write_unaligned(out.as_mut_ptr().add(HDR).cast(), ucred);
        }
        out
    }
}

/// Whether thread `tid` is in the agent's user namespace (unknown: no).
fn same_user_namespace(tid: u32) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let id = |p: &str| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    match (
        id("/proc/self/ns/user"),
        id(&format!("/proc/{tid}/ns/user")),
    ) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// Whether the `struct ucred` in `data` (an `SCM_CREDENTIALS` payload sent
/// by the process whose `/proc/PID/status` is `status`) names that process
/// and one of its own ids, as the kernel demands of a sender without
/// `CAP_SYS_ADMIN`: its thread-group id as seen from any of its pid
/// namespaces, a real, effective or saved uid, and the same for the gid.
pub fn ucred_names_itself(status: &str, data: &[u8]) -> bool {
    let Some(b) = data.get(..12) else {
        return false;
    };
    let word = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let (pid, uid, gid) = (word(0), word(4), word(8));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| {
                v.split_whitespace()
                    .filter_map(|x| x.parse::<u32>().ok())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let tgids = {
        let mut t = field("NStgid:");
        t.extend(field("Tgid:"));
        t
    };
    let ids3 = |v: Vec<u32>| v.into_iter().take(3).collect::<Vec<_>>();
    pid != 0
        && tgids.contains(&pid)
        && ids3(field("Uid:")).contains(&uid)
        && ids3(field("Gid:")).contains(&gid)
}

fn parse_status(s: &str) -> Option<Creds> {
    let field = |name: &str| s.lines().find_map(|l| l.strip_prefix(name));
    let ids = |line: &str| -> Option<[u32; 3]> {
        // real effective saved fs
        let v: Vec<u32> = line
            .split_whitespace()
            .map(|x| x.parse().ok())
            .collect::<Option<_>>()?;
        Some([*v.first()?, *v.get(1)?, *v.get(3)?])
    };
    Some(Creds {
        tgid: field("Tgid:")?.trim().parse().ok()?,
        uid: ids(field("Uid:")?)?,
        gid: ids(field("Gid:")?)?,
        groups: field("Groups:")?
            .split_whitespace()
            .map(|g| g.parse().ok())
            .collect::<Option<_>>()?,
        cap_eff: u64::from_str_radix(field("CapEff:")?.trim(), 16).ok()?,
    })
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_V3: u32 = 0x2008_0522;

fn capget() -> Result<[CapData; 2], i32> {
    let h = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut d = [CapData::default(); 2];
    // SAFETY: header and a two-element data array, as capget v3 expects.
    if unsafe { libc::syscall(libc::SYS_capget, &h as *const CapHeader, d.as_mut_ptr()) } != 0 {
        return Err(libc::EPERM);
    }
    Ok(d)
}

fn capset(d: &[CapData; 2]) -> Result<(), i32> {
    let h = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    // SAFETY: as for capget; capset(2) changes only the calling thread.
    if unsafe { libc::syscall(libc::SYS_capset, &h as *const CapHeader, d.as_ptr()) } != 0 {
        return Err(libc::EPERM);
    }
    Ok(())
}

fn with_effective(mut d: [CapData; 2], eff: u64) -> [CapData; 2] {
    d[0].effective = (eff as u32) & d[0].permitted;
    d[1].effective = ((eff >> 32) as u32) & d[1].permitted;
    d
}

fn raw(nr: libc::c_long, a: u64, b: u64, c: u64) -> Result<(), i32> {
    // SAFETY: the credential system calls used here take integer arguments
    // (or, for setgroups, a pointer the caller keeps valid) and change only
    // the calling thread.
    if unsafe { libc::syscall(nr, a, b, c) } != 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EPERM));
    }
    Ok(())
}

fn getres(nr: libc::c_long) -> Result<[u32; 3], i32> {
    let mut v = [0u32; 3];
    // SAFETY: three valid out-pointers.
    let r = unsafe {
        libc::syscall(
            nr,
            &mut v[0] as *mut u32,
            &mut v[1] as *mut u32,
            &mut v[2] as *mut u32,
        )
    };
    if r != 0 {
        return Err(libc::EPERM);
    }
    Ok(v)
}

/// While alive, the calling thread acts as a target; dropping it switches
/// back. Not `Send`: credentials belong to the thread that switched.
pub struct Identity {
    uid: [u32; 3],
    gid: [u32; 3],
    groups: Vec<libc::gid_t>,
    caps: [CapData; 2],
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Identity {
    /// Switches to `c` (uid, gid, groups, effective capabilities plus
    /// `extra_caps`, never beyond our own) if given; None does nothing.
    pub fn assume_opt(c: Option<&Creds>, extra_caps: u64) -> Result<Option<Identity>, i32> {
        c.map(|c| Self::assume(c, extra_caps)).transpose()
    }

    /// Switches the calling thread to `c`.
    pub fn assume(c: &Creds, extra_caps: u64) -> Result<Identity, i32> {
        let saved = Identity {
            uid: getres(libc::SYS_getresuid)?,
            gid: getres(libc::SYS_getresgid)?,
            groups: groups()?,
            caps: capget()?,
            _not_send: std::marker::PhantomData,
        };
        let switched = (|| {
            raw(
                libc::SYS_setgroups,
                c.groups.len() as u64,
                c.groups.as_ptr() as u64,
                0,
            )?;
            // The saved ids stay ours (0), so the way back stays open.
            raw(
                libc::SYS_setresgid,
                c.gid[0].into(),
                c.gid[1].into(),
                saved.gid[2].into(),
            )?;
            raw(
                libc::SYS_setresuid,
                c.uid[0].into(),
                c.uid[1].into(),
                saved.uid[2].into(),
            )?;
            // setfsuid/setfsgid report the previous value, not errors.
            // SAFETY: integer arguments, calling thread only.
            unsafe {
                libc::syscall(libc::SYS_setfsgid, c.gid[2]);
                libc::syscall(libc::SYS_setfsuid, c.uid[2]);
            }
            capset(&with_effective(saved.caps, c.cap_eff | extra_caps))
        })();
        match switched {
            Ok(()) => Ok(saved),
            // Dropping `saved` switches back whatever part succeeded.
            Err(e) => Err(e),
        }
    }
}

/// Runs `op` (raw system calls on memory prepared before, returning a
/// syscall-style result: a count, or -1 with errno set) in a short-lived
/// child process that has taken `c`'s identity for good (or keeps ours when
/// `c` is None: the unprivileged agent is the target's user already), and
/// returns its result.
///
/// Why a process: a unix peer learns the sender's *process* (`SO_PEERCRED`
/// and `SO_PEERPIDFD` at connect, the pid stamped into `SCM_CREDENTIALS`),
/// which no per-thread switch changes, and an unprivileged agent may not
/// name any pid but its own. A peer must never see the agent, a long-lived
/// unconfined process whose rights it might grant; it sees an unprivileged
/// process with the target's uid and gid that exits right after the call.
pub fn in_child(c: Option<&Creds>, op: &dyn Fn() -> isize) -> Result<i64, i32> {
    let switch = match c {
        Some(c) => {
            let caps = capget()?;
            Some((
                c.groups.as_ptr(),
                c.groups.len(),
                c.uid,
                c.gid,
                with_effective(caps, c.cap_eff),
            ))
        }
        None => None,
    };
    let drop_all = [CapData::default(); 2];
    let mut result = [0i64; 2];
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 into a two-int array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(libc::EMFILE);
    }
    let (rd, wr) = (fds[0], fds[1]);
    // SAFETY: the child runs only raw system calls on memory prepared
    // before the fork (no allocation, no locks: the agent is
    // multi-threaded) and leaves with _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        // SAFETY: closing our own pipe.
        unsafe {
            libc::close(rd);
            libc::close(wr);
        }
        return Err(libc::EAGAIN);
    }
    if pid == 0 {
        // SAFETY: as above; every pointer refers to data owned by the
        // parent's stack or heap, copied into the child by fork.
        unsafe {
            let err = || *libc::__errno_location();
            let report = |r: i64, e: i32| -> ! {
                let out = [r, i64::from(e)];
                libc::write(wr, out.as_ptr().cast(), std::mem::size_of_val(&out));
                libc::_exit(0)
            };
            if let Some((groups, ngroups, uid, gid, child_caps)) = &switch {
                if libc::syscall(libc::SYS_setgroups, *ngroups, *groups) != 0 {
                    report(-1, err());
                }
                if libc::syscall(libc::SYS_setresgid, gid[0], gid[1], gid[1]) != 0 {
                    report(-1, err());
                }
                if libc::syscall(libc::SYS_setresuid, uid[0], uid[1], uid[1]) != 0 {
                    report(-1, err());
                }
                libc::syscall(libc::SYS_setfsgid, gid[2]);
                libc::syscall(libc::SYS_setfsuid, uid[2]);
                // A root target keeps its own effective set; anyone else
                // has lost every capability with the uid change already.
                let h = CapHeader {
                    version: CAP_V3,
                    pid: 0,
                };
                let want = if uid[1] == 0 { child_caps } else { &drop_all };
                if libc::syscall(libc::SYS_capset, &h as *const CapHeader, want.as_ptr()) != 0 {
                    report(-1, err());
                }
            }
            let r = op();
            report(r as i64, if r < 0 { err() } else { 0 });
        }
    }
    // SAFETY: our end of the pipe; the child holds its own copy.
    unsafe { libc::close(wr) };
    let got = loop {
        // SAFETY: reading at most sizeof(result) bytes into it.
        let n = unsafe {
            libc::read(
                rd,
                result.as_mut_ptr().cast(),
                std::mem::size_of_val(&result),
            )
        };
        if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        break n;
    };
    // SAFETY: closing our read end.
    unsafe { libc::close(rd) };
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        if r == pid {
            break;
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Err(libc::EIO);
        }
    }
    if got != std::mem::size_of_val(&result) as isize {
        return Err(libc::EIO);
    }
    match result {
        [r, _] if r >= 0 => Ok(r),
        [_, e] if e > 0 => Err(e as i32),
        _ => Err(libc::EIO),
    }
}

fn groups() -> Result<Vec<libc::gid_t>, i32> {
    // SAFETY: size query, then a buffer of that size.
    let n = unsafe { libc::syscall(libc::SYS_getgroups, 0, std::ptr::null_mut::<libc::gid_t>()) };
    if n < 0 {
        return Err(libc::EPERM);
    }
    let mut g = vec![0 as libc::gid_t; n as usize];
    // SAFETY: `g` has room for n entries.
    let m = unsafe { libc::syscall(libc::SYS_getgroups, n, g.as_mut_ptr()) };
    if m < 0 {
        return Err(libc::EPERM);
    }
    g.truncate(m as usize);
    Ok(g)
}

impl Drop for Identity {
    fn drop(&mut self) {
        let back = (|| {
            // uid first: with euid 0 again the capabilities to restore the
            // rest are back in the permitted set.
            raw(
                libc::SYS_setresuid,
                self.uid[0].into(),
                self.uid[1].into(),
                self.uid[2].into(),
            )?;
            capset(&self.caps)?;
            raw(
                libc::SYS_setresgid,
                self.gid[0].into(),
                self.gid[1].into(),
                self.gid[2].into(),
            )?;
            // Unchanged (the switch failed before it): nothing to do, and
            // setgroups would need CAP_SETGID even to set the same list.
            if groups()? == self.groups {
                return Ok(());
            }
            raw(
                libc::SYS_setgroups,
                self.groups.len() as u64,
                self.groups.as_ptr() as u64,
                0,
            )
        })();
        if let Err(e) = back {
            // A supervisor thread stuck with a sandbox's identity would do
            // the next sandbox operation with the wrong rights; there is no
            // safe way on. Exiting ends supervision: every supervised call
            // of the sandbox fails from then on.
            eprintln!(
                "nono-agent: supervisor could not restore its credentials (errno {e}); exiting"
            );
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    /// A thread that names itself with bytes that are not UTF-8 keeps a
    /// readable identity (the supervisor reads it for its unix connects,
    /// binds and sends as root: refusing would break ordinary programs).
    #[test]
    fn a_thread_named_with_non_utf8_bytes_has_credentials() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let name = b"\xe9t\xe9\0";
            // SAFETY: a NUL-terminated name for the calling thread.
            unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
            // SAFETY: gettid has no preconditions.
            tx.send(unsafe { libc::gettid() } as u32).unwrap();
            done_rx.recv().unwrap();
        });
        let tid = rx.recv().unwrap();
        let comm = std::fs::read(format!("/proc/self/task/{tid}/comm")).unwrap();
        assert_eq!(comm, b"\xe9t\xe9\n", "the name was set");
        let c = Creds::of(tid);
        done_tx.send(()).unwrap();
        t.join().unwrap();
        let c = c.expect("credentials of a thread with a non-UTF-8 name");
        // SAFETY: getuid has no preconditions.
        assert_eq!(c.uid[0], unsafe { libc::getuid() });
    }

    use super::*;

    fn ucred(pid: u32, uid: u32, gid: u32) -> Vec<u8> {
        [pid, uid, gid]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect()
    }

    #[test]
    fn a_ucred_may_name_only_the_sender_and_its_own_ids() {
        let s = "Tgid:\t42\nPid:\t43\nNStgid:\t42\t7\nUid:\t1000\t1001\t1002\t0\nGid:\t100\t101\t102\t0\n";
        assert!(ucred_names_itself(s, &ucred(42, 1000, 100)));
        assert!(
            ucred_names_itself(s, &ucred(7, 1002, 101)),
            "the pid in its own namespace"
        );
        assert!(
            !ucred_names_itself(s, &ucred(43, 1000, 100)),
            "a thread id is not the pid"
        );
        assert!(
            !ucred_names_itself(s, &ucred(1, 1000, 100)),
            "another process"
        );
        assert!(
            !ucred_names_itself(s, &ucred(42, 0, 100)),
            "the fs uid is not allowed"
        );
        assert!(!ucred_names_itself(s, &ucred(42, 1000, 0)));
        assert!(!ucred_names_itself(s, &ucred(42, 1000, 100)[..8]), "short");
    }

    #[test]
    fn status_parsing() {
        let s = "Name:\tx\nTgid:\t42\nPid:\t43\nUid:\t65534\t65534\t65534\t65534\nGid:\t100\t101\t102\t103\nGroups:\t100 27 \nCapEff:\t0000000000003000\n";
        let c = parse_status(s).unwrap();
        assert_eq!(c.tgid, 42);
        assert_eq!(c.uid, [65534, 65534, 65534]);
        assert_eq!(c.gid, [100, 101, 103]);
        assert_eq!(c.groups, vec![100, 27]);
        assert_eq!(c.cap_eff, 0x3000);
        assert!(parse_status("Tgid:\t1\n").is_none());
    }

    #[test]
    fn own_status_parses() {
        let me = Creds::of(std::process::id()).unwrap();
        // SAFETY: getuid has no preconditions.
        assert_eq!(me.uid[0], unsafe { libc::getuid() });
    }

    #[test]
    fn credentials_message_layout() {
        let c = Creds {
            tgid: 7,
            uid: [1000, 1000, 1000],
            gid: [100, 100, 100],
            groups: vec![],
            cap_eff: 0,
        };
        let m = c.scm_credentials();
        assert_eq!(m.len() % 8, 0);
        // SAFETY: test reads of the plain structs written above.
        let h: libc::cmsghdr = unsafe { std::ptr::read_unaligned(m.as_ptr().cast()) };
        assert_eq!(h.cmsg_type, libc::SCM_CREDENTIALS);
        // SAFETY: as above, the ucred written after the header.
        let u: libc::ucred = unsafe {
            std::ptr::read_unaligned(m.as_ptr().add(std::mem::size_of::<libc::cmsghdr>()).cast())
        };
        assert_eq!((u.pid, u.uid, u.gid), (7, 1000, 100));
    }

    /// As root: a thread takes nobody's identity, sees it, and comes back.
    #[test]
    fn switch_and_back() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            panic!("this test needs root (CI runs as root)");
        }
        std::thread::spawn(|| {
            let nobody = Creds {
                tgid: 1,
                uid: [65534, 65534, 65534],
                gid: [65534, 65534, 65534],
                groups: vec![65534],
                cap_eff: 0,
            };
            {
                let _as = Identity::assume(&nobody, 0).unwrap();
                assert_eq!(getres(libc::SYS_getresuid).unwrap(), [65534, 65534, 0]);
                let caps = capget().unwrap();
                assert_eq!(caps[0].effective, 0);
                assert_ne!(caps[0].permitted, 0);
                // A root-only file is out of reach.
                assert!(std::fs::read("/etc/shadow").is_err());
            }
            assert_eq!(getres(libc::SYS_getresuid).unwrap(), [0, 0, 0]);
            assert_ne!(capget().unwrap()[0].effective, 0);
            assert!(std::fs::read("/etc/shadow").is_ok());
        })
        .join()
        .unwrap();
    }
}
