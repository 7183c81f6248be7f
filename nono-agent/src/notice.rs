//! Denial notices: one line on the user's terminal per new denied
//! destination while the command runs (`exec --notices`).
//!
//! The sandboxed command is hostile and chooses what these lines say (the
//! names it asks the proxy for, the addresses it connects to, its process
//! name): every byte it controls is escaped ([`escape`]) so that no
//! control character or escape sequence reaches the terminal, each notice
//! is cut to [`MAX_NOTICE_CHARS`], duplicates are dropped by a set of at
//! most [`MAX_KEYS`] entries, and at most [`MAX_SHOWN`] notices are printed;
//! the rest are counted and reported in one "N more" line at exit, so a
//! flood of distinct denials costs neither the terminal nor memory.

use std::collections::HashSet;
use std::io::Write;

/// Notices printed per run; further distinct denials are only counted.
pub const MAX_SHOWN: usize = 20;
/// Distinct notices remembered for de-duplication.
pub const MAX_KEYS: usize = 1024;
/// Characters of one notice's text (after escaping).
pub const MAX_NOTICE_CHARS: usize = 200;

/// Written before each line the agent prints on a terminal the command
/// shares: CAN aborts an escape sequence the command left unfinished, ST
/// ends a string it left open (an OSC window title, a DCS: without it the
/// notice would become part of the title and never show), SGR 0 undoes
/// concealed or same-colour-as-background text. A command could otherwise
/// hide every notice and the exit summary by leaving the terminal in such
/// a state. Invisible on a terminal in its ordinary state.
pub const TERMINAL_RESET: &str = "\x18\x1b\\\x1b[0m";

/// Makes untrusted text safe to print on a terminal: printable ASCII is
/// kept, a backslash is doubled, and everything else (control characters,
/// ESC, DEL, C1 controls, any non-ASCII character, which includes bidi
/// overrides and look-alikes) is written as `\xHH` or `\u{HHHH}`.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            c if (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        }
    }
    out
}

/// [`escape`] for several lines: each line is escaped, the line breaks
/// kept.
pub fn escape_lines(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for line in s.split_inclusive('\n') {
        match line.strip_suffix('\n') {
            Some(l) => {
                out.push_str(&escape(l));
                out.push('\n');
            }
            None => out.push_str(&escape(line)),
        }
    }
    out
}

/// Cuts `s` to at most `max` characters, marking the cut.
fn truncate(mut s: String, max: usize) -> String {
    if let Some((i, _)) = s.char_indices().nth(max) {
        s.truncate(i);
        s.push_str("...");
    }
    s
}

/// Prints notices, de-duplicated and bounded (see the module docs).
pub struct Notifier {
    out: Box<dyn Write + Send>,
    /// Writing to a terminal: it may be in raw mode (the relay), so lines
    /// end with CR LF, and the command may have left it in a state that
    /// hides text, so lines start with [`TERMINAL_RESET`].
    crlf: bool,
    seen: HashSet<String>,
    shown: usize,
    /// Distinct denials not printed because [`MAX_SHOWN`] were.
    more: u64,
    /// Denials not de-duplicated because the set was full.
    unsorted: u64,
}

impl Notifier {
    /// Notices written to `out`; `crlf` when it is a terminal.
    pub fn new(out: Box<dyn Write + Send>, crlf: bool) -> Self {
        Self {
            out,
            crlf,
            seen: HashSet::new(),
            shown: 0,
            more: 0,
            unsorted: 0,
        }
    }

    /// Notices on stderr.
    pub fn stderr() -> Self {
        let tty = crate::sandbox::pty::is_terminal(2);
        Self::new(Box::new(std::io::stderr()), tty)
    }

    fn write_line(&mut self, text: &str) {
        let (start, end) = if self.crlf {
            (TERMINAL_RESET, "\r\n")
        } else {
            ("", "\n")
        };
        let _ = write!(self.out, "{start}nono-agent: {text}{end}");
        let _ = self.out.flush();
    }

    /// Offers one denial (unescaped text such as `denied connect to
    /// 203.0.113.9:443 (not in allowlist)`); printed if it is new and the
    /// limit is not reached.
    pub fn offer(&mut self, text: &str) {
        let text = truncate(escape(text), MAX_NOTICE_CHARS);
        if self.seen.contains(&text) {
            return;
        }
        if self.seen.len() >= MAX_KEYS {
            self.unsorted += 1;
            return;
        }
        self.seen.insert(text.clone());
        if self.shown < MAX_SHOWN {
            self.shown += 1;
            self.write_line(&text);
        } else {
            self.more += 1;
        }
    }

    /// The "N more" line, if anything was left out.
    pub fn finish(&mut self) {
        if self.more == 0 && self.unsorted == 0 {
            return;
        }
        let mut s = format!("{} more denied destination(s) not shown", self.more);
        if self.unsorted > 0 {
            s.push_str(&format!(
                ", and {} denial(s) past {MAX_KEYS} distinct ones",
                self.unsorted
            ));
        }
        s.push_str(" (--events PATH records every one)");
        self.write_line(&s);
    }
}

/// A denial as a notice text: `denied VERB DEST (REASON)`.
pub fn text(verb: &str, dest: Option<&str>, reason: &str) -> String {
    match dest {
        Some(d) => format!("denied {verb} {d} ({reason})"),
        None => format!("denied {verb} ({reason})"),
    }
}

/// The words a kernel-enforcer hook is shown with.
pub fn hook_verb(hook: &str) -> &'static str {
    match hook {
        "connect4" | "connect6" | "connect" => "connect to",
        "sendmsg4" | "sendmsg6" | "sendto" | "sendmsg" | "sendmmsg" => "send to",
        "egress" => "packet to",
        "sock_create" | "socket" | "socketpair" => "socket",
        "setsockopt" => "socket option",
        "bind" => "bind to",
        _ => "operation",
    }
}

/// A kernel decision's reason in a notice.
pub fn reason_text(reason: &str) -> &str {
    match reason {
        "not-allowed" => "not in allowlist",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn escape_leaves_no_control_bytes() {
        let hostile = "evil\x1b]0;pwned\x07\r\n\u{9b}31m\u{202e}gro.\\x";
        let e = escape(hostile);
        assert_eq!(
            e,
            "evil\\x1b]0;pwned\\x07\\x0d\\x0a\\u{9b}31m\\u{202e}gro.\\\\x"
        );
        assert!(e.bytes().all(|b| (0x20..0x7f).contains(&b)));
        assert_eq!(escape_lines("a\x1b\nb\n"), "a\\x1b\nb\n");
    }

    #[test]
    fn deduplicated_bounded_and_summarised() {
        let buf = Buf::default();
        let mut n = Notifier::new(Box::new(buf.clone()), false);
        n.offer("denied connect to 203.0.113.9:443 (not in allowlist)");
        n.offer("denied connect to 203.0.113.9:443 (not in allowlist)");
        for i in 0..(MAX_KEYS + 50) {
            n.offer(&format!("denied CONNECT h{i}.test:443 (x)"));
        }
        n.finish();
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), MAX_SHOWN + 1, "{out}");
        assert_eq!(
            lines[0],
            "nono-agent: denied connect to 203.0.113.9:443 (not in allowlist)"
        );
        assert_eq!(
            *lines.last().unwrap(),
            format!(
                "nono-agent: {} more denied destination(s) not shown, and 51 denial(s) past {MAX_KEYS} distinct ones (--events PATH records every one)",
                MAX_KEYS - MAX_SHOWN
            )
        );
        assert!(n.seen.len() <= MAX_KEYS);
    }

    #[test]
    fn long_notices_are_cut() {
        let buf = Buf::default();
        let mut n = Notifier::new(Box::new(buf.clone()), true);
        n.offer(&"a".repeat(10_000));
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(out.len() < MAX_NOTICE_CHARS + 40);
        assert!(out.ends_with("...\r\n"));
    }

    #[test]
    fn a_terminal_left_in_a_hiding_state_is_reset_first() {
        // The command printed "\x1b]0;" (an open window title) or
        // "\x1b[8m" (concealed text) and stopped: on a terminal each
        // notice first closes the string and resets the attributes.
        let buf = Buf::default();
        let mut n = Notifier::new(Box::new(buf.clone()), true);
        n.offer("denied connect to 203.0.113.9:443 (not in allowlist)");
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(
            out.starts_with("\x18\x1b\\\x1b[0mnono-agent: denied connect"),
            "{out:?}"
        );
        // Not on a file or pipe.
        let buf = Buf::default();
        let mut n = Notifier::new(Box::new(buf.clone()), false);
        n.offer("denied x");
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out, "nono-agent: denied x\n");
    }
}
