//! i386 system calls from a 64-bit process (`int 0x80`).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::selftest::sockaddr;

use super::attempt::{Attempt, Steps};
use super::sock::{send_fd, set_timeouts, socket, CONNECT_TIMEOUT, PAYLOAD};

/// One page mapped below 4 GiB: `int 0x80` takes 32-bit pointers.
#[cfg(target_arch = "x86_64")]
fn low_page() -> io::Result<*mut u8> {
    // SAFETY: anonymous private mapping; checked for MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(p as *mut u8)
}

/// An i386 system call through `int 0x80`: returns the raw result
/// (-errno on failure). rbx is reserved by LLVM, so the first argument
/// is swapped in and out around the trap.
#[cfg(target_arch = "x86_64")]
fn int80(nr: u32, a1: u32, a2: u32, a3: u32) -> i32 {
    let ret: u32;
    // SAFETY: the i386 syscall ABI; every register the kernel may touch
    // is declared clobbered; pointer arguments point into a low page.
    unsafe {
        std::arch::asm!(
            "xchg {b:r}, rbx",
            "int 0x80",
            "xchg {b:r}, rbx",
            b = inout(reg) a1 as u64 => _,
            inlateout("eax") nr => ret,
            in("ecx") a2,
            in("edx") a3,
            out("r8") _,
            out("r9") _,
            out("r10") _,
            out("r11") _,
        );
    }
    ret as i32
}

#[cfg(target_arch = "x86_64")]
fn int80_result(what: &str, r: i32) -> Result<i32, Attempt> {
    if r < 0 {
        Err(Attempt::fail(what, &io::Error::from_raw_os_error(-r)))
    } else {
        Ok(r)
    }
}

/// Writes a sockaddr_in for `sa` at `p` (in the low page); returns its length.
#[cfg(target_arch = "x86_64")]
fn put_sockaddr_in(p: *mut u8, sa: &SocketAddr) -> u32 {
    let (ss, len) = sockaddr::storage(sa);
    // SAFETY: p points into a 4 KiB page with room for a sockaddr_storage.
    unsafe { std::ptr::copy_nonoverlapping(&ss as *const _ as *const u8, p, len as usize) };
    len
}

/// A TCP connect made with i386 system calls: `socketcall(SYS_CONNECT)`
/// (102) on a socket made by the 64-bit `socket()` (`socketcall`), or the
/// direct i386 `socket` (359) and `connect` (362) calls.
#[cfg(target_arch = "x86_64")]
pub fn int80_connect(sa: SocketAddr, socketcall: bool, steps: &mut Steps) -> Attempt {
    const NR32_SOCKETCALL: u32 = 102;
    const NR32_SOCKET: u32 = 359;
    const NR32_CONNECT: u32 = 362;
    const SYS_CONNECT: u32 = 3;
    if !sa.is_ipv4() {
        return Attempt::invalid("int80 vectors need an IPv4 --target");
    }
    let page = match low_page() {
        Ok(p) => p,
        Err(e) => return Attempt::fail("mmap(MAP_32BIT)", &e),
    };
    let low = |off: usize| (page as usize + off) as u32;
    // SAFETY: offsets stay inside the page.
    let addr_ptr = unsafe { page.add(256) };
    let alen = put_sockaddr_in(addr_ptr, &sa);
    let fd = if socketcall {
        match socket(libc::AF_INET, libc::SOCK_STREAM, 0) {
            Ok(fd) => fd,
            Err(e) => return Attempt::fail("socket (64-bit)", &e),
        }
    } else {
        let r = int80(
            NR32_SOCKET,
            libc::AF_INET as u32,
            libc::SOCK_STREAM as u32,
            0,
        );
        match int80_result("i386 socket(AF_INET, SOCK_STREAM) via int 0x80", r) {
            // SAFETY: a fresh descriptor the kernel gave us.
            Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
            Err(a) => return a,
        }
    };
    steps.push(
        "socket",
        &Attempt::success(format!(
            "fd {} ({})",
            fd.as_raw_fd(),
            if socketcall {
                "64-bit socket()"
            } else {
                "i386 socket"
            }
        )),
    );
    set_timeouts(fd.as_raw_fd(), CONNECT_TIMEOUT);
    let r = if socketcall {
        let args = [fd.as_raw_fd() as u32, low(256), alen];
        // SAFETY: three u32 at the start of the page.
        unsafe { std::ptr::copy_nonoverlapping(args.as_ptr(), page as *mut u32, 3) };
        int80(NR32_SOCKETCALL, SYS_CONNECT, low(0), 0)
    } else {
        int80(NR32_CONNECT, fd.as_raw_fd() as u32, low(256), alen)
    };
    let how = if socketcall {
        "i386 socketcall(SYS_CONNECT) via int 0x80"
    } else {
        "i386 connect via int 0x80"
    };
    match int80_result(&format!("{how} {sa}"), r) {
        Ok(_) => {
            let _ = send_fd(fd.as_raw_fd(), PAYLOAD);
            Attempt::success(format!("{how} {sa}: connected"))
        }
        Err(a) => a,
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub fn int80_connect(_sa: SocketAddr, _socketcall: bool, _steps: &mut Steps) -> Attempt {
    Attempt {
        ok: false,
        errno: Some(libc::ENOSYS),
        detail: "int 0x80 vectors exist on x86_64 only".into(),
    }
}
