//! `hold-nocaps`: a uid-0 process without capabilities, for host-protection
//! tests.

use std::fs;
use std::io::{self, Write};
use std::process::exit;
use std::time::Duration;

use serde_json::json;

use crate::args::Args;
use crate::process::write_pidfile;

/// Not a vector: become a uid-0 process without any capability (bounding,
/// ambient, effective, permitted, inheritable), print one JSON line, sleep.
pub(crate) fn hold_nocaps(args: &Args) -> ! {
    let last_cap: u32 = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63);
    let mut errors = Vec::new();
    for cap in 0..=last_cap {
        // SAFETY: integer-only prctl.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            errors.push(format!(
                "PR_CAPBSET_DROP {cap}: {}",
                io::Error::last_os_error()
            ));
        }
    }
    // SAFETY: integer-only prctl.
    if unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    } != 0
    {
        errors.push(format!(
            "PR_CAP_AMBIENT_CLEAR_ALL: {}",
            io::Error::last_os_error()
        ));
    }
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let hdr = CapHeader {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: header and two data structs, as capset(2) v3 expects.
    if unsafe { libc::syscall(libc::SYS_capset, &hdr, data.as_ptr()) } != 0 {
        errors.push(format!("capset: {}", io::Error::last_os_error()));
    }
    write_pidfile(args);
    // SAFETY: plain syscalls.
    let (pid, uid) = unsafe { (libc::getpid(), libc::geteuid()) };
    println!(
        "{}",
        json!({"vector": "hold-nocaps", "ok": errors.is_empty(), "errno": null,
               "detail": errors.join("; "), "pid": pid, "uid": uid})
    );
    let _ = io::stdout().flush();
    std::thread::sleep(Duration::from_secs(args.num::<u64>("sleep", Some(30))));
    exit(0);
}
