//! The command's own pseudo-terminal, seen from a real terminal (tmux): a
//! shell under `nono-agent exec` echoes and runs what is typed, follows the
//! window size, is interrupted by Ctrl-C, passes its exit code back, and the
//! caller's terminal modes are the same afterwards; Ctrl-Z (and a SIGTSTP
//! sent to the agent) stops the whole `nono-agent exec` job for the outer
//! shell with the caller's modes restored, and `fg` continues it.
//!
//! Every wait polls `capture-pane` with a deadline; no sleep is an
//! assertion. No network is used.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nono_tests::runner::{exec_command, Enforcement, ExecOpts};
use nono_tests::sys;

use super::opts;

const DEADLINE: Duration = Duration::from_secs(30);

/// A tmux server of its own (unique socket), killed on drop.
struct Tmux {
    tmux: std::path::PathBuf,
    socket: String,
}

impl Tmux {
    /// An 80x24 window running an interactive bash (job control on) with a
    /// plain prompt.
    fn start() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let tmux = sys::require_tool("tmux", "a real terminal for the pty relay");
        let socket = format!(
            "nono-pty-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let t = Self { tmux, socket };
        let out = t.run(&[
            "new-session",
            "-d",
            "-x",
            "80",
            "-y",
            "24",
            "-c",
            "/tmp",
            "env PS1='out$ ' bash --norc --noprofile -i",
        ]);
        assert!(out.status.success(), "tmux new-session: {out:?}");
        t.wait_for("the outer prompt", |l| {
            l.iter().any(|l| l.starts_with("out$"))
        });
        t
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.tmux)
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("run tmux")
    }

    /// Types `text` (literally) and, if `enter`, Enter.
    fn type_line(&self, text: &str) {
        let out = self.run(&["send-keys", "-l", text]);
        assert!(out.status.success(), "send-keys: {out:?}");
        self.key("Enter");
    }

    fn key(&self, key: &str) {
        let out = self.run(&["send-keys", key]);
        assert!(out.status.success(), "send-keys {key}: {out:?}");
    }

    fn lines(&self) -> Vec<String> {
        let out = self.run(&["capture-pane", "-p", "-J", "-S", "-200"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim_end().to_string())
            .collect()
    }

    /// Polls the pane until `pred` holds (panics with the pane after the
    /// deadline).
    fn wait_for(&self, what: &str, pred: impl Fn(&[String]) -> bool) {
        let end = Instant::now() + DEADLINE;
        loop {
            let lines = self.lines();
            if pred(&lines) {
                return;
            }
            assert!(
                Instant::now() < end,
                "timed out waiting for {what}; pane:\n{}",
                lines.join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for a line equal to `line` (command output, not the echo of
    /// the typed command, which carries a prompt).
    fn wait_line(&self, line: &str) {
        self.wait_for(line, |l| l.iter().any(|x| x == line));
    }

    /// The pid of the outer shell's (only) child: the agent (setpriv
    /// execs it).
    fn shell_child(&self) -> i32 {
        let out = self.run(&["display-message", "-p", "#{pane_pid}"]);
        let shell = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let kids = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))
            .expect("the shell's children");
        let kids: Vec<i32> = kids
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        assert_eq!(kids.len(), 1, "the outer shell's children: {kids:?}");
        kids[0]
    }

    /// How many outer prompts the pane shows.
    fn prompts(&self) -> usize {
        self.lines()
            .iter()
            .filter(|l| l.starts_with("out$"))
            .count()
    }

    /// Does `act`, then waits until the outer shell prompts again (the
    /// agent has exited or stopped: what is typed next is the outer
    /// shell's).
    fn then_outer_prompt(&self, what: &str, act: impl FnOnce()) {
        let before = self.prompts();
        act();
        self.wait_for(what, |l| {
            l.iter().filter(|l| l.starts_with("out$")).count() > before
        });
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
        // tmux leaves its socket behind; hundreds of them in
        // /tmp/tmux-0 made every later root `exec` slower (it looks at
        // tmux sockets to refuse them to the sandbox).
        let base = std::env::var_os("TMUX_TMPDIR").unwrap_or_else(|| "/tmp".into());
        // SAFETY: getuid has no preconditions.
        let uid = unsafe { libc::getuid() };
        let _ = std::fs::remove_file(
            std::path::Path::new(&base)
                .join(format!("tmux-{uid}"))
                .join(&self.socket),
        );
    }
}

/// The agent's command line under `o` as shell words (setpriv included).
fn agent_line(o: &ExecOpts) -> String {
    let cmd = exec_command(&sys::agent_bin(), None, o);
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| quote(&a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn quiet(e: Enforcement) -> ExecOpts {
    ExecOpts {
        quiet: true,
        ..opts(e)
    }
}

pub(super) fn shell_on_the_relay_behaves_like_a_terminal(e: Enforcement) {
    sys::require_prereqs();
    let o = quiet(e);
    let t = Tmux::start();
    t.then_outer_prompt("the outer shell", || t.type_line("B=$(stty -g); T=$(tty)"));
    t.type_line(&format!(
        "env PS1='in$ ' {} bash --norc --noprofile -i",
        agent_line(&o)
    ));
    t.wait_for("the sandboxed prompt", |l| {
        l.iter().any(|l| l.starts_with("in$"))
    });
    // Echo of what is typed, and the command runs.
    t.type_line("echo $((6*7))");
    t.wait_line("42");
    assert!(
        t.lines().iter().any(|l| l == "in$ echo $((6*7))"),
        "{}: typed input not echoed: {:?}",
        e.label(),
        t.lines()
    );
    // Its own terminal, not the caller's.
    t.type_line("[ \"$(tty)\" != \"$T\" ] && echo own-tty-$((1+1))");
    t.wait_line("own-tty-2");
    // The window size, and SIGWINCH when it changes.
    t.type_line("stty size");
    t.wait_line("24 80");
    let out = t.run(&["resize-window", "-x", "100", "-y", "30"]);
    assert!(out.status.success(), "resize-window: {out:?}");
    t.type_line("stty size");
    t.wait_line("30 100");
    // Ctrl-C interrupts the inner foreground job only. Typed only at a
    // fresh prompt: typed ahead, the line discipline echoes it before bash
    // prints the prompt ("sleep 100in$ sleep 100"), which is right but not
    // what the wait below looks for.
    t.wait_for("the prompt after stty size", |l| {
        l.iter()
            .rev()
            .find(|x| !x.is_empty())
            .is_some_and(|x| x == "in$")
    });
    // Ctrl-C only once the job runs and holds the terminal: the echo of
    // the typed line comes from the line discipline before bash has even
    // read it, and a Ctrl-C then reaches bash (which ignores it while it
    // starts the job) instead of the job. A job that printed has been
    // given the terminal (bash's child takes it before it execs).
    t.type_line("sh -c 'echo sleeping-$((1+1)); exec sleep 100'");
    t.wait_line("sleeping-2");
    t.key("C-c");
    t.type_line("echo int-$((2+2))");
    t.wait_line("int-4");
    // The exit code comes back; the caller's modes are restored.
    t.then_outer_prompt("the outer prompt after exit", || t.type_line("exit 7"));
    t.type_line("echo rc=$?");
    t.wait_line("rc=7");
    t.type_line("[ \"$(stty -g)\" = \"$B\" ] && echo modes-$((3+3))");
    t.wait_line("modes-6");
}

pub(super) fn ctrl_z_stops_the_whole_job_and_fg_continues_it(e: Enforcement) {
    sys::require_prereqs();
    let o = quiet(e);
    let t = Tmux::start();
    t.then_outer_prompt("the outer shell", || t.type_line("B=$(stty -g)"));
    // Once its first line shows, the relay runs (raw mode is set first).
    t.type_line(&format!(
        "{} sh -c 'echo ready-$((1+1)); exec cat'",
        agent_line(&o)
    ));
    t.wait_line("ready-2");
    t.type_line("one");
    // The pty echoes the line, cat writes it back.
    t.wait_for("cat's copy", |l| {
        l.iter().filter(|x| *x == "one").count() >= 2
    });
    t.then_outer_prompt("the outer prompt after Ctrl-Z", || t.key("C-z"));
    t.wait_for("the job stopped", |l| {
        l.iter().any(|l| l.contains("Stopped"))
    });
    // While it is stopped, the caller's terminal is in its own modes.
    t.type_line("[ \"$(stty -g)\" = \"$B\" ] && echo stopped-modes-$((4+4))");
    t.wait_line("stopped-modes-8");
    t.type_line("fg");
    t.type_line("two");
    // Typed before the agent took the terminal again, the line may also
    // show the outer terminal's own echo: at least the pty's echo and
    // cat's copy.
    t.wait_for("cat running again", |l| {
        l.iter().filter(|x| x.ends_with("two")).count() >= 2
    });
    // SIGTSTP sent to the agent itself (not through the terminal): the
    // same, the caller's modes restored.
    let agent = t.shell_child();
    t.then_outer_prompt("the outer prompt after SIGTSTP", || {
        // SAFETY: a signal to the test's own agent process.
        unsafe { libc::kill(agent, libc::SIGTSTP) };
    });
    t.type_line("[ \"$(stty -g)\" = \"$B\" ] && echo tstp-modes-$((6+6))");
    t.wait_line("tstp-modes-12");
    t.type_line("fg");
    t.type_line("three");
    t.wait_for("cat running after SIGTSTP", |l| {
        l.iter().filter(|x| x.ends_with("three")).count() >= 2
    });
    t.then_outer_prompt("the outer prompt after Ctrl-D", || t.key("C-d"));
    t.type_line("echo rc=$?");
    t.wait_line("rc=0");
    t.type_line("[ \"$(stty -g)\" = \"$B\" ] && echo modes-$((5+5))");
    t.wait_line("modes-10");
}
