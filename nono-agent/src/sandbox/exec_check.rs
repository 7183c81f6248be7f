//! Before a run: can the command, its `#!` interpreter and its ELF
//! interpreter be executed under the profile's Landlock rules? Without this
//! check a profile that hides them (a pyenv shim whose `#!/usr/bin/env bash`
//! names a bash outside the profile, a profile without `extends`) ends in a
//! bare `Permission denied (os error 13)` from the child's exec.
//!
//! The verdict is made the way Landlock makes it, on the same [`FsRules`]
//! the ruleset is built from: a rule is attached to the inode its path
//! resolves to (the ruleset opens each path with `O_PATH`, following
//! symlinks), and an access is granted when the file or any directory
//! above it on its resolved path carries a rule with that right. So the
//! rules and the file are compared by (device, inode) along the file's
//! ancestors ([`granted`], pure), not by spelling. Executing needs the
//! execute right (exec and write rules give it), a script must also be
//! readable by its interpreter.
//!
//! This is a diagnostic only: it never grants anything (Landlock decides),
//! and what it cannot tell (an unreadable file, a truncated ELF header) it
//! leaves to the run.

use std::ffi::OsStr;
use std::io::Read as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use super::landlock::FsRules;

/// A file's identity: (device, inode).
pub type FileId = (u64, u64);

/// The rights that matter for starting a command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rights {
    /// Read files (what an interpreter needs of its script).
    pub read: bool,
    /// Execute files (what `execve` needs of the program and of its
    /// `#!` or ELF interpreter).
    pub execute: bool,
}

impl Rights {
    fn union(self, o: Self) -> Self {
        Self {
            read: self.read || o.read,
            execute: self.execute || o.execute,
        }
    }
}

/// What the rules grant to a file whose resolved path has the ancestors
/// `chain` (the file itself first, `/` last): the union of the rights of
/// every rule attached to one of them, as Landlock computes it (pure).
pub fn granted(rules: &[(FileId, Rights)], chain: &[FileId]) -> Rights {
    chain.iter().fold(Rights::default(), |acc, id| {
        rules
            .iter()
            .filter(|(r, _)| r == id)
            .fold(acc, |a, (_, rights)| a.union(*rights))
    })
}

/// The rules as (inode, rights), the way the ruleset gets them: read rules
/// read, exec rules read and execute, write rules everything; paths that
/// do not exist are skipped (as `landlock::prepare` skips them).
fn rule_ids(rules: &FsRules) -> Vec<(FileId, Rights)> {
    let read = Rights {
        read: true,
        execute: false,
    };
    let all = Rights {
        read: true,
        execute: true,
    };
    let tiers = [(&rules.read, read), (&rules.exec, all), (&rules.write, all)];
    tiers
        .into_iter()
        .flat_map(|(paths, rights)| {
            paths.iter().filter_map(move |p| {
                let m = std::fs::metadata(p).ok()?;
                Some(((m.dev(), m.ino()), rights))
            })
        })
        .collect()
}

/// The (device, inode) of `real` and of each directory above it.
fn chain_of(real: &Path) -> Option<Vec<FileId>> {
    real.ancestors()
        .map(|p| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino())))
        .collect()
}

/// A file the profile does not let the command start with. Its text
/// follows "profile NAME "; it is printed on the operator's terminal and
/// its paths come from `#!` lines someone else may have written, so it is
/// escaped as a whole ([`crate::notice::escape`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", crate::notice::escape(&self.raw_text()))]
pub struct Denied {
    /// The path as named (the command, or the interpreter as written).
    pub path: PathBuf,
    /// What it resolves to (what Landlock judges).
    pub real: PathBuf,
    /// Execute was needed (else read).
    pub needs_exec: bool,
    /// ` (the interpreter of X)` and the like, or empty for the command.
    pub role: String,
}

impl Denied {
    /// The message before escaping.
    fn raw_text(&self) -> String {
        let (what, rules) = if self.needs_exec {
            ("executing", "exec or write")
        } else {
            ("reading", "read, exec or write")
        };
        format!(
            "denies {what} {}{}{}: no {rules} rule covers it; add {} (or a rule in the profile) to allow it",
            self.path.display(),
            resolved(&self.path, &self.real),
            self.role,
            hint_flag(self.needs_exec, &self.real),
        )
    }
}

fn resolved(path: &Path, real: &Path) -> String {
    if path == real {
        String::new()
    } else {
        format!(" (= {})", real.display())
    }
}

fn hint_flag(exec: bool, real: &Path) -> String {
    let dir = real.parent().unwrap_or(Path::new("/"));
    let flag = if exec { "--exec" } else { "--read" };
    format!("`{flag} {}`", dir.display())
}

/// Checks that the command `program` (resolved through PATH already) can
/// be started under `rules`: the program itself, the interpreter of a `#!`
/// script (and with `#!/usr/bin/env NAME`, NAME looked up in `path_env`),
/// and the ELF interpreter (`ld-linux`) of each binary, a few levels deep.
pub fn check(rules: &FsRules, program: &Path, path_env: Option<&OsStr>) -> Result<(), Denied> {
    let ids = rule_ids(rules);
    let mut next: Option<(PathBuf, String)> = Some((program.to_path_buf(), String::new()));
    // A script's interpreter may itself be a script: follow a few levels,
    // as the kernel does (it allows 4).
    for _ in 0..5 {
        let Some((path, role)) = next.take() else {
            return Ok(());
        };
        let Ok(real) = std::fs::canonicalize(&path) else {
            return Ok(());
        };
        let Some(chain) = chain_of(&real) else {
            return Ok(());
        };
        let rights = granted(&ids, &chain);
        let denied = |needs_exec: bool| Denied {
            path: path.clone(),
            real: real.clone(),
            needs_exec,
            role: role.clone(),
        };
        if !rights.execute {
            return Err(denied(true));
        }
        let head = read_head(&real);
        match interpreter_of(&head) {
            Some(Interp::Script {
                interpreter,
                env_name,
            }) => {
                if !rights.read {
                    return Err(denied(false));
                }
                let by = format!(
                    " (the interpreter of {}, named in its #! line)",
                    real.display()
                );
                // `#!/usr/bin/env NAME`: env itself, then NAME through PATH.
                if let Some(name) = env_name {
                    let env_real =
                        std::fs::canonicalize(&interpreter).unwrap_or(interpreter.clone());
                    let env_ok = chain_of(&env_real).map(|c| granted(&ids, &c).execute);
                    if env_ok == Some(false) {
                        return Err(Denied {
                            path: interpreter,
                            real: env_real,
                            needs_exec: true,
                            role: by,
                        });
                    }
                    match super::command_path::resolve(OsStr::from_bytes(&name), path_env) {
                        Ok(p) => {
                            next = Some((p, format!(" (run by {} through env)", real.display())))
                        }
                        Err(_) => return Ok(()),
                    }
                } else {
                    next = Some((interpreter, by));
                }
            }
            Some(Interp::Elf(loader)) => {
                next = Some((
                    loader,
                    format!(" (the ELF interpreter of {})", real.display()),
                ));
            }
            None => return Ok(()),
        }
    }
    Ok(())
}

/// [`check`] with the filesystem identity of the user the command will
/// run as (`--user`): the agent is root, but the paths (the command, its
/// `#!` lines, the directories on the way) are that user's to choose, and
/// a root-only file must not be read, nor its `#!` line or existence shown
/// in the message, on their behalf. The check runs in a thread of its own
/// whose fsuid/fsgid are the user's and whose supplementary groups are
/// empty (credentials are per thread in Linux; raw syscalls, so that no
/// other thread changes; the thread ends with them). Changing fsuid away
/// from 0 also drops the filesystem capabilities (CAP_DAC_OVERRIDE,
/// CAP_DAC_READ_SEARCH) of that thread. If the identity cannot be taken,
/// nothing is checked (the run decides).
pub fn check_as(
    user: Option<(libc::uid_t, libc::gid_t)>,
    rules: &FsRules,
    program: &Path,
    path_env: Option<&OsStr>,
) -> Result<(), Denied> {
    let Some((uid, gid)) = user else {
        return check(rules, program, path_env);
    };
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: integer-only syscalls on this thread's own
                // credentials; an empty group list.
                let taken = unsafe {
                    libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) == 0
                        && {
                            libc::syscall(libc::SYS_setfsgid, gid);
                            libc::syscall(libc::SYS_setfsuid, uid);
                            // Each returns the previous value: asking again
                            // with an invalid id (-1) reads the current one.
                            libc::syscall(libc::SYS_setfsgid, u32::MAX) == gid as libc::c_long
                                && libc::syscall(libc::SYS_setfsuid, u32::MAX)
                                    == uid as libc::c_long
                        }
                };
                if taken {
                    check(rules, program, path_env)
                } else {
                    Ok(())
                }
            })
            .join()
            .unwrap_or(Ok(()))
    })
}

/// The first bytes of a regular file: enough for a `#!` line and,
/// usually, an ELF header and its program headers (the interpreter's path
/// comes early). Anything else reads as nothing.
///
/// The agent runs this as root on paths someone else may have written (a
/// `#!` line of a script run with `--user`): opening a device node can act
/// (an open of `/dev/watchdog` arms it, a tape rewinds, a serial line
/// raises DTR), opening a FIFO releases its writer. So the file is first
/// taken as an `O_PATH` handle, which opens nothing, and only a regular
/// file is then opened, through that same handle (`/proc/self/fd/N`: the
/// inode that was checked, not whatever the path names by then).
fn read_head(p: &Path) -> Vec<u8> {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut buf = Vec::new();
    let Ok(handle) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(p)
    else {
        return buf;
    };
    // fstat on an O_PATH descriptor is allowed and opens nothing. Only a
    // regular file with an execute bit is read: execve refuses any other
    // (even to root), so there is nothing to explain, and files of /proc,
    // /sys and debugfs, whose reads can consume or block (/proc/kmsg,
    // trace_pipe), have none.
    if !handle
        .metadata()
        .is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
    {
        return buf;
    }
    let reopened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(format!("/proc/self/fd/{}", handle.as_raw_fd()));
    if let Ok(f) = reopened {
        if f.metadata().is_ok_and(|m| m.is_file()) {
            let _ = f.take(64 * 1024).read_to_end(&mut buf);
        }
    }
    buf
}

/// What starting a file makes the kernel open next.
#[derive(Debug, PartialEq, Eq)]
pub enum Interp {
    /// `#!INTERPRETER [ARG]`; `env_name` is ARG when INTERPRETER is `env`
    /// (the program `env` runs, looked up through PATH).
    Script {
        interpreter: PathBuf,
        env_name: Option<Vec<u8>>,
    },
    /// An ELF binary's PT_INTERP (its dynamic loader).
    Elf(PathBuf),
}

/// The interpreter a file's first bytes name, if any (pure).
pub fn interpreter_of(head: &[u8]) -> Option<Interp> {
    if let Some(rest) = head.strip_prefix(b"#!") {
        let line = rest.split(|&b| b == b'\n').next()?;
        let mut words = line
            .split(|b| *b == b' ' || *b == b'\t')
            .filter(|w| !w.is_empty());
        let interpreter = PathBuf::from(OsStr::from_bytes(words.next()?));
        let env_name = if interpreter.file_name() == Some(OsStr::new("env")) {
            // `env -S ...` and other options: too many forms to follow.
            words
                .next()
                .filter(|w| !w.starts_with(b"-"))
                .map(<[u8]>::to_vec)
        } else {
            None
        };
        return Some(Interp::Script {
            interpreter,
            env_name,
        });
    }
    elf_interpreter(head).map(Interp::Elf)
}

fn elf_interpreter(data: &[u8]) -> Option<PathBuf> {
    use object::read::elf::ProgramHeader as _;
    fn find<H: object::read::elf::FileHeader>(data: &[u8]) -> Option<PathBuf> {
        let header = H::parse(data).ok()?;
        let endian = header.endian().ok()?;
        header
            .program_headers(endian, data)
            .ok()?
            .iter()
            .find_map(|ph| ph.interpreter(endian, data).ok().flatten())
            .map(|b| PathBuf::from(OsStr::from_bytes(b)))
    }
    match object::FileKind::parse(data).ok()? {
        object::FileKind::Elf64 => find::<object::elf::FileHeader64<object::Endianness>>(data),
        object::FileKind::Elf32 => find::<object::elf::FileHeader32<object::Endianness>>(data),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;

    const R: Rights = Rights {
        read: true,
        execute: false,
    };
    const X: Rights = Rights {
        read: true,
        execute: true,
    };

    #[test]
    fn rights_come_from_any_ancestor() {
        // /usr (1) > /usr/bin (2) > /usr/bin/python3 (3); / is 0.
        let chain = [(9, 3), (9, 2), (9, 1), (9, 0)];
        assert_eq!(granted(&[], &chain), Rights::default());
        assert_eq!(granted(&[((9, 1), R)], &chain), R);
        assert_eq!(granted(&[((9, 1), R), ((9, 2), X)], &chain), X);
        assert_eq!(granted(&[((9, 3), X)], &chain), X);
        // Same inode number on another device is another file.
        assert_eq!(granted(&[((8, 2), X)], &chain), Rights::default());
        // A rule below the file grants nothing to it.
        assert_eq!(granted(&[((9, 4), X)], &chain), Rights::default());
    }

    #[test]
    fn interpreters_are_found() {
        assert_eq!(
            interpreter_of(b"#!/bin/sh -e\necho"),
            Some(Interp::Script {
                interpreter: "/bin/sh".into(),
                env_name: None
            })
        );
        assert_eq!(
            interpreter_of(b"#! /usr/bin/env  bash\n"),
            Some(Interp::Script {
                interpreter: "/usr/bin/env".into(),
                env_name: Some(b"bash".to_vec())
            })
        );
        assert_eq!(
            interpreter_of(b"#!/usr/bin/env -S python3 -u\n"),
            Some(Interp::Script {
                interpreter: "/usr/bin/env".into(),
                env_name: None
            })
        );
        assert_eq!(interpreter_of(b"#!\n"), None);
        assert_eq!(interpreter_of(b"plain text"), None);
        let sh = std::fs::read("/bin/sh").unwrap();
        match interpreter_of(&sh) {
            Some(Interp::Elf(p)) => assert!(p.to_string_lossy().contains("ld-linux"), "{p:?}"),
            other => panic!("/bin/sh: {other:?}"),
        }
    }

    /// An inotify descriptor watching `p` for opens (an open of a FIFO or
    /// a device node is what has side effects: a watchdog armed, a FIFO's
    /// writer released; an `O_PATH` handle is no open and is not reported).
    fn watch_opens(p: &Path) -> OwnedFd {
        use std::os::fd::FromRawFd as _;
        use std::os::unix::ffi::OsStrExt as _;
        let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
        // SAFETY: plain syscalls on a fresh descriptor and a C string.
        unsafe {
            let fd = libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC);
            assert!(fd >= 0);
            assert!(libc::inotify_add_watch(fd, c.as_ptr(), libc::IN_OPEN) >= 0);
            OwnedFd::from_raw_fd(fd)
        }
    }

    /// Whether an open was reported on `fd` since it was created.
    fn opened(fd: &OwnedFd) -> bool {
        use std::os::fd::AsRawFd as _;
        let mut buf = [0u8; 4096];
        // SAFETY: a valid buffer of the given length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        n > 0
    }

    fn make_executable(p: &Path) {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn files_that_are_not_regular_are_never_opened() {
        // The agent runs this as root, on paths a user wrote (`#!` lines of
        // a script run with --user): a FIFO, a device node (say
        // /dev/watchdog, which an open arms) must not even be opened.
        let dir = std::env::temp_dir().join(format!("nono-exec-open-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o755)).unwrap();
        // A character device like /dev/null (1, 3): opening it is harmless,
        // and inotify reports the open.
        let dev = dir.join("null");
        nix::sys::stat::mknod(
            &dev,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o755),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
        let rules = FsRules {
            exec: vec![dir.clone()],
            ..Default::default()
        };
        for target in [&fifo, &dev] {
            let script = dir.join("script");
            std::fs::write(&script, format!("#!{}\n", target.display())).unwrap();
            make_executable(&script);
            let w = watch_opens(target);
            // As the command itself, and as a script's interpreter.
            check(&rules, target, None).unwrap();
            check(&rules, &script, None).unwrap();
            assert!(!opened(&w), "{} was opened", target.display());
        }
        // Nor a regular file no one may execute (execve would refuse it:
        // /proc/kmsg, a tracing pipe), though its name is followed.
        let plain = dir.join("plain");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&plain, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        let script = dir.join("script");
        std::fs::write(&script, format!("#!{}\n", plain.display())).unwrap();
        make_executable(&script);
        let w = watch_opens(&plain);
        check(&rules, &script, None).unwrap();
        check(&rules, &plain, None).unwrap();
        assert!(!opened(&w), "a file without an execute bit was opened");
        // A regular file is still read (its #! line is followed).
        let w = watch_opens(&dir.join("script"));
        check(&rules, &dir.join("script"), None).unwrap();
        assert!(opened(&w));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_hostile_path_reaches_the_terminal_escaped() {
        // The #! line is someone else's text: no escape sequence of it may
        // reach the operator's terminal through the message.
        let d = Denied {
            path: PathBuf::from("/tmp/\x1b]0;owned\x07x"),
            real: PathBuf::from("/tmp/\x1b[2Jy\u{202e}"),
            needs_exec: true,
            role: " (the interpreter of /tmp/\x1b[8mz, named in its #! line)".into(),
        };
        let m = d.to_string();
        assert!(m.bytes().all(|b| (0x20..0x7f).contains(&b)), "{m:?}");
        assert!(m.contains("/tmp/\\x1b]0;owned\\x07x"), "{m}");
    }

    #[test]
    fn a_hidden_command_or_interpreter_is_named() {
        let dir = std::env::temp_dir().join(format!("nono-exec-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("tool");
        std::fs::write(&script, "#!/usr/bin/env sh\necho hi\n").unwrap();
        make_executable(&script);
        let only_dir = FsRules {
            exec: vec![dir.clone()],
            ..Default::default()
        };
        // The script is executable, env is not.
        let e = check(&only_dir, &script, Some(OsStr::new("/usr/bin:/bin"))).unwrap_err();
        assert_eq!(e.path, PathBuf::from("/usr/bin/env"));
        assert!(e.needs_exec);
        assert!(e.to_string().contains("the interpreter of"), "{e}");
        assert!(e.to_string().contains("--exec /usr/bin"), "{e}");
        // Nothing covers the script itself.
        let e = check(&FsRules::default(), &script, None).unwrap_err();
        assert_eq!(e.real, std::fs::canonicalize(&script).unwrap());
        assert!(e.to_string().starts_with("denies executing"), "{e}");
        // The system and the directory: sh runs, with its loader.
        let ok = FsRules {
            exec: vec![
                dir.clone(),
                "/usr".into(),
                "/bin".into(),
                "/lib".into(),
                "/lib64".into(),
            ],
            ..Default::default()
        };
        check(&ok, &script, Some(OsStr::new("/usr/bin:/bin"))).unwrap();
        // Without the loader's directory the ELF interpreter is named.
        let no_lib = FsRules {
            exec: vec![dir.clone(), "/usr/bin".into()],
            ..Default::default()
        };
        let e = check(&no_lib, Path::new("/usr/bin/true"), None).unwrap_err();
        assert!(
            e.to_string().contains("ELF interpreter of /usr/bin/true"),
            "{e}"
        );
        // An interpreter line naming a FIFO (a file someone else may have
        // planted) neither blocks the check nor fails it: left to the run.
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o755)).unwrap();
        let odd = dir.join("odd");
        std::fs::write(&odd, format!("#!{}\n", fifo.display())).unwrap();
        make_executable(&odd);
        check(&only_dir, &odd, None).unwrap();
        // Readable only: still denied, as execute.
        let read_only = FsRules {
            read: vec!["/".into()],
            ..Default::default()
        };
        assert!(
            check(&read_only, Path::new("/usr/bin/true"), None)
                .unwrap_err()
                .needs_exec
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
