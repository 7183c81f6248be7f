//! Relaying the caller's terminal to the command's pseudo-terminal (see
//! `pty`), as sudo's `use_pty` does.
//!
//! * Bytes: the caller's terminal (in raw mode) → the master, and the
//!   master → the caller's terminal (stdout if it is a terminal, else the
//!   terminal on stdin, where the echo of what the user types belongs).
//!   The master is non-blocking; stdin is read only as far as `FIONREAD`
//!   says, so its file description (shared with the caller's shell) is
//!   never switched to non-blocking.
//! * SIGWINCH: the caller's window size is copied to the master; the kernel
//!   then signals the command's foreground process group. It is copied
//!   again before typed input is passed on, so what is typed after a resize
//!   never runs at the old size.
//! * Job control: when the command stops (Ctrl-Z reaches the pty's
//!   foreground group through the pty's own line discipline), the caller's
//!   modes are restored and the agent stops itself (its process group too,
//!   as sudo does); once continued (`fg`), raw mode comes back, the window
//!   size is copied again and the pty's foreground group is continued.
//!   A SIGTSTP sent to the agent itself is handled the same way (without
//!   stopping its process group). A background agent leaves the terminal's modes alone and does not read
//!   it; SIGCONT, or a check every 100 ms while in the background (`fg` of
//!   a running job sends no SIGCONT), makes it take the terminal again.
//! * Ctrl-C needs nothing: the byte reaches the pty, whose line discipline
//!   sends SIGINT to its foreground group.

use std::io;
use std::os::fd::{AsFd as _, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

use super::pty::{self, RawMode};

/// Why the relay failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Registering a descriptor or a signal with the runtime failed.
    #[error("relay: watching {what}")]
    Watch {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// Changing the caller's terminal modes failed.
    #[error(transparent)]
    Terminal(#[from] pty::Error),
    /// The relay task ended abnormally.
    #[error("relay task: {0}")]
    Task(String),
}

fn watch(what: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Watch { what, source }
}

/// The running relay; [`Relay::finish`] once the command has exited.
pub struct Relay {
    done: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), Error>>,
}

impl Relay {
    /// Starts relaying between the caller's terminal (stdin, which stays
    /// open for the whole run) and `master`. `modes` is restored when the
    /// relay ends, however it ends (its drop).
    /// `stops`: the read end of the pipe on which the init (see `spawn`)
    /// reports the command's stops.
    pub fn start(master: OwnedFd, modes: RawMode, stops: OwnedFd) -> Result<Self, Error> {
        let out_fd = if pty::is_terminal(1) { 1 } else { 0 };
        let state = State::new(master, modes, stops, out_fd)?;
        let (done, done_rx) = oneshot::channel();
        let task = tokio::spawn(state.run(done_rx));
        Ok(Self { done, task })
    }

    /// Copies what the command's terminal still holds to the caller, ends
    /// the relay and restores the caller's terminal modes.
    pub async fn finish(self) -> Result<(), Error> {
        let _ = self.done.send(());
        self.task.await.map_err(|e| Error::Task(e.to_string()))?
    }
}

/// The caller's stdin, for the runtime's poller (never closed here).
struct Stdin;

impl AsRawFd for Stdin {
    fn as_raw_fd(&self) -> RawFd {
        0
    }
}

const BUF: usize = 4096;

/// The signals the relay handles, registered before it takes the terminal
/// (none is missed once the relay is started).
struct Signals {
    winch: tokio::signal::unix::Signal,
    cont: tokio::signal::unix::Signal,
    /// SIGTSTP sent to the agent itself (`kill -TSTP`): stop with the
    /// caller's modes restored, like a stop of the command.
    tstp: tokio::signal::unix::Signal,
}

struct State {
    signals: Option<Signals>,
    master: AsyncFd<OwnedFd>,
    stdin: AsyncFd<Stdin>,
    modes: RawMode,
    /// The init's stop reports.
    stop_pipe: Option<AsyncFd<OwnedFd>>,
    out_fd: RawFd,
    /// Typed bytes not yet written to the master.
    input: Vec<u8>,
    /// Whether stdin is read (foreground agent, terminal still there).
    reading: bool,
    /// The caller's terminal hung up: never read again.
    stdin_gone: bool,
    /// Whether the master still reads (a slave is open somewhere).
    master_open: bool,
}

impl State {
    fn new(master: OwnedFd, modes: RawMode, stops: OwnedFd, out_fd: RawFd) -> Result<Self, Error> {
        // SAFETY: the AsyncFd owns the master: it stays open as long.
        let master = unsafe {
            AsyncFd::register_with_interest(master, Interest::READABLE | Interest::WRITABLE)
        }
        .map_err(|e| Error::Watch {
            what: "the pseudo-terminal",
            source: e.into_parts().1,
        })?;
        // SAFETY: fd 0 (the caller's terminal) is never closed by the agent.
        let stdin =
            unsafe { AsyncFd::register_with_interest(Stdin, Interest::READABLE) }.map_err(|e| {
                Error::Watch {
                    what: "the terminal",
                    source: e.into_parts().1,
                }
            })?;
        set_nonblocking(stops.as_raw_fd()).map_err(watch("the stop pipe"))?;
        // SAFETY: the AsyncFd owns the pipe: it stays open as long.
        let stop_pipe = unsafe { AsyncFd::register_with_interest(stops, Interest::READABLE) }
            .map_err(|e| Error::Watch {
                what: "the stop pipe",
                source: e.into_parts().1,
            })?;
        let signals = Signals {
            winch: signal(SignalKind::window_change()).map_err(watch("SIGWINCH"))?,
            cont: signal(SignalKind::from_raw(libc::SIGCONT)).map_err(watch("SIGCONT"))?,
            tstp: signal(SignalKind::from_raw(libc::SIGTSTP)).map_err(watch("SIGTSTP"))?,
        };
        let mut s = Self {
            signals: Some(signals),
            master,
            stdin,
            modes,
            stop_pipe: Some(stop_pipe),
            out_fd,
            input: Vec::new(),
            reading: false,
            stdin_gone: false,
            master_open: true,
        };
        s.take_terminal()?;
        Ok(s)
    }

    /// Raw mode and reading stdin when the agent is in the foreground;
    /// modes restored and stdin left alone when it is not.
    fn take_terminal(&mut self) -> Result<(), Error> {
        if self.stdin_gone {
            self.reading = false;
        } else if pty::in_foreground(0) {
            if !self.modes.is_raw() {
                self.modes.raw()?;
            }
            self.reading = true;
        } else {
            self.modes.restore()?;
            self.reading = false;
        }
        self.copy_window_size();
        Ok(())
    }

    fn copy_window_size(&self) {
        // SAFETY: fd 0 stays open for the whole run (the caller's stdin).
        let outer = unsafe { BorrowedFd::borrow_raw(0) };
        if let Some(ws) = pty::window_size(outer) {
            let _ = pty::set_window_size(self.master.get_ref().as_fd(), &ws);
        }
    }

    async fn run(mut self, mut done: oneshot::Receiver<()>) -> Result<(), Error> {
        let Signals {
            mut winch,
            mut cont,
            mut tstp,
        } = self
            .signals
            .take()
            .ok_or_else(|| Error::Task("started twice".into()))?;
        // A background agent looks for the terminal now and then: a shell's
        // `fg` of a job that is running sends no SIGCONT.
        let mut background = tokio::time::interval(std::time::Duration::from_millis(100));
        loop {
            let want_stdin = self.reading && self.input.len() < BUF;
            let want_write = self.master_open && !self.input.is_empty();
            tokio::select! {
                _ = &mut done => break,
                r = self.master.readable(), if self.master_open => {
                    let mut g = r.map_err(watch("the pseudo-terminal"))?;
                    match read_fd(self.master.get_ref().as_raw_fd()) {
                        ReadResult::Data(b) => write_all(self.out_fd, &b),
                        ReadResult::WouldBlock => g.clear_ready(),
                        ReadResult::Closed => self.master_open = false,
                    }
                }
                r = self.stdin.readable(), if want_stdin => {
                    let mut g = r.map_err(watch("the terminal"))?;
                    match read_available(0, BUF - self.input.len()) {
                        ReadResult::Data(b) => {
                            // Input typed after a resize must meet the new
                            // size: the resize's SIGWINCH may be handled
                            // after this read (the branches race), and a
                            // command run by this input would see the old
                            // one. Unchanged sizes cost two ioctls and no
                            // signal (the kernel ignores an equal size).
                            self.copy_window_size();
                            self.input.extend_from_slice(&b);
                        }
                        ReadResult::WouldBlock => g.clear_ready(),
                        ReadResult::Closed => {
                            self.stdin_gone = true;
                            self.reading = false;
                        }
                    }
                }
                r = self.master.writable(), if want_write => {
                    let mut g = r.map_err(watch("the pseudo-terminal"))?;
                    let fd = self.master.get_ref().as_raw_fd();
                    // SAFETY: writes from a valid buffer to our master.
                    let n = unsafe { libc::write(fd, self.input.as_ptr().cast(), self.input.len()) };
                    if n > 0 {
                        self.input.drain(..n as usize);
                    } else if io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock {
                        g.clear_ready();
                    } else {
                        self.input.clear();
                    }
                }
                _ = winch.recv() => self.copy_window_size(),
                _ = cont.recv() => self.take_terminal()?,
                _ = tstp.recv() => self.suspend(libc::SIGTSTP, false)?,
                _ = background.tick(), if !self.reading && !self.stdin_gone => {
                    if pty::in_foreground(0) {
                        self.take_terminal()?;
                    }
                }
                r = async { self.stop_pipe.as_ref()?.readable().await.ok() }, if self.stop_pipe.is_some() => {
                    if let Some(mut g) = r {
                        match read_fd(g.get_ref().as_raw_fd()) {
                            ReadResult::Data(b) => {
                                if let Some(&sig) = b.last() {
                                    self.suspend(i32::from(sig), true)?;
                                }
                            }
                            ReadResult::WouldBlock => g.clear_ready(),
                            ReadResult::Closed => self.stop_pipe = None,
                        }
                    }
                }
            }
        }
        // The command has exited: what it wrote is in the master's buffer.
        self.flush_output();
        self.modes.restore()?;
        Ok(())
    }

    /// Copies what the master holds now to the caller's terminal.
    fn flush_output(&mut self) {
        if self.master_open {
            while let ReadResult::Data(b) = read_fd(self.master.get_ref().as_raw_fd()) {
                write_all(self.out_fd, &b);
            }
        }
    }

    /// The command stopped with `sig`: give the terminal back and stop the
    /// agent like the command (sudo's `suspend_sudo_pty`); then, continued,
    /// take the terminal again and continue the command.
    fn suspend(&mut self, sig: i32, whole_group: bool) -> Result<(), Error> {
        // The pty's echo of the suspend character (`^Z`) goes out first.
        self.flush_output();
        self.modes.restore()?;
        let sig = if sig == libc::SIGSTOP {
            libc::SIGSTOP
        } else {
            libc::SIGTSTP
        };
        // SAFETY: the default action for SIGTSTP while we stop ourselves
        // (the relay catches it otherwise), put back afterwards; then
        // signals to our own process group and this very thread: a
        // thread-directed stop signal stops the whole agent before tgkill
        // returns, so the terminal is taken again only once continued. A
        // SIGTSTP to an orphaned process group (no shell to continue us) is
        // discarded by the kernel: we then simply go on.
        unsafe {
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            let mut old: libc::sigaction = std::mem::zeroed();
            let swapped = libc::sigaction(libc::SIGTSTP, &dfl, &mut old) == 0;
            let pgrp = libc::getpgrp();
            if whole_group && pgrp != libc::getpid() {
                libc::kill(-pgrp, sig);
            }
            libc::syscall(
                libc::SYS_tgkill,
                libc::getpid(),
                libc::syscall(libc::SYS_gettid),
                sig,
            );
            if swapped {
                libc::sigaction(libc::SIGTSTP, &old, std::ptr::null_mut());
            }
        }
        self.take_terminal()?;
        let master = self.master.get_ref().as_raw_fd();
        // SAFETY: integer-only calls. The pty's foreground group lies in the
        // command's session: only sandboxed processes are continued.
        unsafe {
            let fg = libc::tcgetpgrp(master);
            if fg > 0 {
                libc::kill(-fg, libc::SIGCONT);
            }
        }
        Ok(())
    }
}

enum ReadResult {
    Data(Vec<u8>),
    WouldBlock,
    Closed,
}

/// One read from a non-blocking descriptor. EIO on a master means no slave
/// is open any more.
fn read_fd(fd: RawFd) -> ReadResult {
    let mut buf = vec![0u8; BUF];
    loop {
        // SAFETY: reads into a buffer of the length given.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            buf.truncate(n as usize);
            return ReadResult::Data(buf);
        }
        if n == 0 {
            return ReadResult::Closed;
        }
        match io::Error::last_os_error().kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return ReadResult::WouldBlock,
            _ => return ReadResult::Closed,
        }
    }
}

/// Reads what terminal `fd` (blocking) holds, at most `max` bytes, without
/// blocking: FIONREAD says how much is there. Nothing there and a hangup
/// means the terminal is gone.
fn read_available(fd: RawFd, max: usize) -> ReadResult {
    let mut avail: libc::c_int = 0;
    // SAFETY: FIONREAD writes an int.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut avail) } != 0 {
        return ReadResult::Closed;
    }
    if avail <= 0 {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no waiting.
        let r = unsafe { libc::poll(&mut p, 1, 0) };
        if r > 0 && p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
            return ReadResult::Closed;
        }
        return ReadResult::WouldBlock;
    }
    let mut buf = vec![0u8; (avail as usize).min(max)];
    // SAFETY: reads at most the buffer's length; that much is queued.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return ReadResult::WouldBlock;
    }
    buf.truncate(n as usize);
    ReadResult::Data(buf)
}

/// Writes everything to the caller's terminal (blocking; waits if someone
/// made it non-blocking). Output to a terminal that is gone is dropped.
fn write_all(fd: RawFd, mut b: &[u8]) {
    while !b.is_empty() {
        // SAFETY: writes from a valid buffer.
        let n = unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) };
        if n > 0 {
            b = &b[n as usize..];
            continue;
        }
        match io::Error::last_os_error().kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock => {
                let mut p = libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut p, 1, 100) };
            }
            _ => return,
        }
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: integer-only fcntl calls on a descriptor we hold.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
