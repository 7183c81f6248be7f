//! The command's own pseudo-terminal (as sudo's `use_pty` does it).
//!
//! When the agent's stdin is a terminal, the command does not get that
//! terminal: it gets the slave side of a fresh pty, in a session of its own
//! with the slave as controlling terminal (see `child`), and the agent relays
//! bytes between the caller's terminal and the master (see `relay`). Nothing
//! the command does with its terminal (TIOCSTI, TIOCSETD, job control,
//! termios) then reaches the caller's terminal, except the bytes it writes.
//!
//! This module holds the pieces: the pair ([`Pty`]), the caller's terminal
//! in raw mode for the duration of the run ([`RawMode`], restored on drop),
//! and window sizes.

use std::io;
use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};

/// Why the pseudo-terminal could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `posix_openpt`, `grantpt`, `unlockpt` or `TIOCGPTPEER` failed.
    #[error("opening a pseudo-terminal: {what}")]
    Open {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// Reading or setting a terminal's attributes failed.
    #[error("terminal attributes: {what}")]
    Attributes {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

fn open_err(what: &'static str) -> Error {
    Error::Open {
        what,
        source: io::Error::last_os_error(),
    }
}

fn attr_err(what: &'static str) -> Error {
    Error::Attributes {
        what,
        source: io::Error::last_os_error(),
    }
}

/// Whether `fd` is a terminal.
pub fn is_terminal(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor number.
    unsafe { libc::isatty(fd) == 1 }
}

/// A terminal's window size, if it has one.
pub fn window_size(fd: BorrowedFd<'_>) -> Option<libc::winsize> {
    // SAFETY: zeroed winsize is a valid out-parameter for TIOCGWINSZ.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes a winsize into `ws`.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (r == 0).then_some(ws)
}

/// Sets a terminal's window size (on the master: the kernel then sends
/// SIGWINCH to the slave's foreground process group).
pub fn set_window_size(fd: BorrowedFd<'_>, ws: &libc::winsize) -> io::Result<()> {
    // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, ws as *const libc::winsize) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn get_attr(fd: RawFd) -> io::Result<libc::termios> {
    // SAFETY: zeroed termios is a valid out-parameter for tcgetattr.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd number and out-pointer.
    if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(t)
}

/// tcsetattr with SIGTTOU blocked in this thread: a background agent (the
/// outer shell took the terminal back) may still restore the modes instead
/// of being stopped for it, as sudo does.
fn set_attr(fd: RawFd, t: &libc::termios) -> io::Result<()> {
    // SAFETY: sigset manipulation on stack values; pthread_sigmask changes
    // this thread's mask only and is restored below.
    let old = unsafe {
        let mut ttou: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut ttou);
        libc::sigaddset(&mut ttou, libc::SIGTTOU);
        libc::pthread_sigmask(libc::SIG_BLOCK, &ttou, &mut old);
        old
    };
    let r = loop {
        // SAFETY: valid fd number and termios pointer.
        if unsafe { libc::tcsetattr(fd, libc::TCSADRAIN, t) } == 0 {
            break Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            break Err(e);
        }
    };
    // SAFETY: puts back the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    r
}

/// Whether the agent's process group is the foreground of terminal `fd`
/// (else changing its modes or reading it would stop the agent with
/// SIGTTOU/SIGTTIN).
pub fn in_foreground(fd: RawFd) -> bool {
    // SAFETY: integer-only calls.
    unsafe { libc::tcgetpgrp(fd) == libc::getpgrp() }
}

/// A pseudo-terminal pair. Both ends are close-on-exec: the command gets
/// the slave only as the descriptors the child duplicates onto 0, 1, 2.
pub struct Pty {
    /// The agent's end; never passed to the sandbox.
    pub master: OwnedFd,
    /// The command's terminal.
    pub slave: OwnedFd,
}

impl Pty {
    /// Opens a pair whose slave has `like`'s modes and window size (the
    /// caller's terminal), so the command sees the terminal it would have
    /// seen.
    pub fn open_like(like: BorrowedFd<'_>) -> Result<Self, Error> {
        // SAFETY: posix_openpt returns a new fd or -1.
        let m = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
        if m < 0 {
            return Err(open_err("posix_openpt"));
        }
        // SAFETY: a fresh fd we own from here on.
        let master = unsafe { OwnedFd::from_raw_fd(m) };
        // SAFETY: integer-only calls on our master.
        if unsafe { libc::grantpt(m) } != 0 {
            return Err(open_err("grantpt"));
        }
        // SAFETY: as above.
        if unsafe { libc::unlockpt(m) } != 0 {
            return Err(open_err("unlockpt"));
        }
        // The slave opened through the master, not by path: no lookup in
        // /dev/pts, no race with its name.
        // SAFETY: TIOCGPTPEER takes open flags and returns a new fd.
        let s = unsafe {
            libc::ioctl(
                m,
                libc::TIOCGPTPEER,
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            )
        };
        if s < 0 {
            return Err(open_err("TIOCGPTPEER"));
        }
        // SAFETY: a fresh fd we own from here on.
        let slave = unsafe { OwnedFd::from_raw_fd(s) };
        let modes = get_attr(like.as_raw_fd()).map_err(|source| Error::Attributes {
            what: "reading the caller's terminal modes",
            source,
        })?;
        set_attr(s, &modes).map_err(|source| Error::Attributes {
            what: "copying the modes to the pseudo-terminal",
            source,
        })?;
        if let Some(ws) = window_size(like) {
            // SAFETY: our own slave fd, alive for this call.
            let slave_fd = unsafe { BorrowedFd::borrow_raw(s) };
            set_window_size(slave_fd, &ws).map_err(|source| Error::Attributes {
                what: "copying the window size",
                source,
            })?;
        }
        // SAFETY: integer-only fcntl on our master.
        let flags = unsafe { libc::fcntl(m, libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(m, libc::F_SETFL, flags | libc::O_NONBLOCK) } != 0 {
            return Err(open_err("O_NONBLOCK on the master"));
        }
        Ok(Self { master, slave })
    }

    /// Gives the slave to `uid` (a command run as another user can then
    /// reopen its terminal by name, as after a login).
    pub fn chown_slave(&self, uid: libc::uid_t) -> io::Result<()> {
        // SAFETY: integer-only call on our own fd; gid -1 keeps the group.
        if unsafe { libc::fchown(self.slave.as_raw_fd(), uid, libc::gid_t::MAX) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The caller's terminal in raw mode; its modes are restored when this is
/// dropped (normal end, error paths, the command killed) and around a
/// suspension ([`RawMode::restore`], [`RawMode::raw`]).
pub struct RawMode {
    fd: RawFd,
    saved: libc::termios,
    raw: bool,
}

impl RawMode {
    /// Remembers the modes of terminal `fd` (the agent's stdin, which must
    /// stay open as long as this lives). Does not change them yet.
    pub fn new(fd: RawFd) -> Result<Self, Error> {
        let saved = get_attr(fd).map_err(|_| attr_err("reading the caller's terminal modes"))?;
        Ok(Self {
            fd,
            saved,
            raw: false,
        })
    }

    /// Puts the terminal in raw mode (no echo, no line editing, no signal
    /// characters, no output processing): every byte goes to the command's
    /// pty, whose own line discipline does all that.
    pub fn raw(&mut self) -> Result<(), Error> {
        if self.raw {
            return Ok(());
        }
        // The modes to come back to are those of now (after a suspension,
        // the shell that continued us may have set others).
        self.saved = get_attr(self.fd).map_err(|source| Error::Attributes {
            what: "reading the caller's terminal modes",
            source,
        })?;
        let mut t = self.saved;
        // SAFETY: cfmakeraw edits the struct in place.
        unsafe { libc::cfmakeraw(&mut t) };
        set_attr(self.fd, &t).map_err(|source| Error::Attributes {
            what: "raw mode",
            source,
        })?;
        self.raw = true;
        Ok(())
    }

    /// Puts the caller's modes back.
    pub fn restore(&mut self) -> Result<(), Error> {
        if !self.raw {
            return Ok(());
        }
        set_attr(self.fd, &self.saved).map_err(|source| Error::Attributes {
            what: "restoring the caller's terminal modes",
            source,
        })?;
        self.raw = false;
        Ok(())
    }

    /// Whether the terminal is in raw mode now.
    pub fn is_raw(&self) -> bool {
        self.raw
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Err(e) = self.restore() {
            eprintln!("nono-agent: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd as _;

    /// A pty standing for the caller's terminal, with a window size.
    fn caller() -> Pty {
        let p = Pty::open_like(plain_slave().as_fd()).unwrap();
        let ws = libc::winsize {
            ws_row: 33,
            ws_col: 111,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        set_window_size(p.master.as_fd(), &ws).unwrap();
        p
    }

    /// A slave with default modes (its master closes with the test).
    fn plain_slave() -> OwnedFd {
        let (mut m, mut s) = (0, 0);
        // SAFETY: out-pointers for two fds; no name, termios or winsize.
        let r = unsafe {
            libc::openpty(
                &mut m,
                &mut s,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(r, 0);
        // SAFETY: openpty returned two fds; the slave is ours, the master
        // stays open until the process ends (tests only).
        unsafe { OwnedFd::from_raw_fd(s) }
    }

    #[test]
    fn pair_copies_modes_and_window_size_and_is_close_on_exec() {
        let outer = caller();
        let mut t = get_attr(outer.slave.as_raw_fd()).unwrap();
        t.c_lflag &= !libc::ECHO;
        set_attr(outer.slave.as_raw_fd(), &t).unwrap();
        let inner = Pty::open_like(outer.slave.as_fd()).unwrap();
        let ws = window_size(inner.slave.as_fd()).unwrap();
        assert_eq!((ws.ws_row, ws.ws_col), (33, 111));
        let it = get_attr(inner.slave.as_raw_fd()).unwrap();
        assert_eq!(it.c_lflag & libc::ECHO, 0);
        for fd in [&inner.master, &inner.slave] {
            // SAFETY: integer-only fcntl.
            let fl = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
            assert_ne!(fl & libc::FD_CLOEXEC, 0);
        }
    }

    #[test]
    fn raw_mode_is_restored_on_drop() {
        let outer = caller();
        let fd = outer.slave.as_raw_fd();
        let before = get_attr(fd).unwrap();
        {
            let mut r = RawMode::new(fd).unwrap();
            r.raw().unwrap();
            assert!(r.is_raw());
            assert_eq!(get_attr(fd).unwrap().c_lflag & libc::ICANON, 0);
        }
        let after = get_attr(fd).unwrap();
        assert_eq!(before.c_lflag, after.c_lflag);
        assert_eq!(before.c_iflag, after.c_iflag);
        assert_eq!(before.c_oflag, after.c_oflag);
    }
}
