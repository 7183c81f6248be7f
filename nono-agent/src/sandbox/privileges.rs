//! Dropping every capability and setting no_new_privs in the child.
//!
//! Runs between fork and exec (in `pre_exec`), where only async-signal-safe
//! operations are allowed: raw syscalls, no allocation, no locks.

use std::io;

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
/// SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_KEEP_CAPS_LOCKED |
/// SECBIT_NO_CAP_AMBIENT_RAISE | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED: uid 0
/// gains nothing on exec, and nothing can be raised back later.
const LOCKED_SECUREBITS: libc::c_ulong = 0x01 | 0x02 | 0x20 | 0x40 | 0x80;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Removes every capability from the bounding set and locks the securebits
/// so that exec'ing a setuid-root or file-capability binary cannot regain
/// any, and uid 0 gains nothing on exec. `last_cap` is
/// `/proc/sys/kernel/cap_last_cap`, read before fork. Needs CAP_SETPCAP;
/// the other sets are cleared by [`clear_capability_sets`] afterwards (so a
/// user switch can happen in between).
pub fn drop_bounding_set(last_cap: u32) -> io::Result<()> {
    // SAFETY: prctl with integer arguments only; no memory is passed.
    check(unsafe { libc::prctl(libc::PR_SET_SECUREBITS, LOCKED_SECUREBITS, 0, 0, 0) })?;
    for cap in 0..=last_cap {
        // SAFETY: integer-only prctl.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            // EINVAL: the kernel knows fewer capabilities than cap_last_cap
            // said (cannot happen, but is not a failure to drop).
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Empties the ambient, inheritable, permitted and effective sets.
pub fn clear_capability_sets() -> io::Result<()> {
    // SAFETY: integer-only prctl.
    check(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    })?;
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: header and data are valid for the duration of the call and
    // laid out as the kernel's v3 capability structures (two data words).
    check(unsafe {
        libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) as libc::c_int
    })
}

/// Adds `caps` (bits `mask`) to the inheritable and ambient sets (they
/// must be permitted). Raw system calls only: runs between fork and exec.
pub fn raise_ambient(mask: u64, caps: &[u32]) -> io::Result<()> {
    let mut h = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut d = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: header and two v3 data words, valid for the call.
    if unsafe { libc::syscall(libc::SYS_capget, &mut h as *mut CapHeader, d.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    d[0].inheritable |= mask as u32;
    d[1].inheritable |= (mask >> 32) as u32;
    // SAFETY: as above.
    if unsafe { libc::syscall(libc::SYS_capset, &h as *const CapHeader, d.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    for &c in caps {
        // SAFETY: integer-only prctl.
        let r = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                c as libc::c_ulong,
                0,
                0,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sets no_new_privs: setuid bits and file capabilities are ignored by exec.
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: integer-only prctl.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
}

/// Highest capability number the running kernel knows.
pub fn last_cap() -> io::Result<u32> {
    let s = crate::util::read_small_path("/proc/sys/kernel/cap_last_cap")?;
    s.trim().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "bad /proc/sys/kernel/cap_last_cap",
        )
    })
}

/// This process's effective capability mask, from /proc/self/status.
pub fn effective_caps() -> io::Result<u64> {
    let s = crate::util::read_small_path("/proc/self/status")?;
    s.lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no CapEff in /proc/self/status"))
}

/// Whether this process can load and attach cgroup BPF programs (and set up
/// namespaces for the child): CAP_SYS_ADMIN, CAP_NET_ADMIN and CAP_BPF.
pub fn can_load_bpf() -> bool {
    let caps = effective_caps().unwrap_or(0);
    [CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF]
        .iter()
        .all(|c| caps & (1u64 << c) != 0)
}

/// Whether the kernel offers seccomp user notification.
pub fn seccomp_user_notif_available() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail")
        .map(|s| s.split_whitespace().any(|a| a == "user_notif"))
        .unwrap_or(false)
}

/// Capability numbers the BPF enforcer needs in the agent.
pub const CAP_SYS_ADMIN: u32 = 21;
/// CAP_NET_ADMIN (attaching cgroup programs).
pub const CAP_NET_ADMIN: u32 = 12;
/// CAP_BPF.
pub const CAP_BPF: u32 = 39;
