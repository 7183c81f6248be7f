//! Unix sockets of well-known daemons that would run the sandbox's requests
//! outside the sandbox (a container engine starts an unconfined container;
//! the system bus reaches systemd and polkit; a terminal multiplexer, an X
//! server, an editor server or an IDE runs commands or types keystrokes for
//! any client of its user). Connecting to them is refused unless the
//! profile lists the path.

use std::collections::HashSet;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

/// Paths checked (those that exist and are sockets are refused).
pub const WELL_KNOWN: &[&str] = &[
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/containerd/containerd.sock",
    "/run/podman/podman.sock",
    "/run/crio/crio.sock",
    "/var/run/dbus/system_bus_socket",
    "/run/dbus/system_bus_socket",
    "/run/systemd/private",
    "/run/snapd.socket",
    "/run/libvirt/libvirt-sock",
    "/var/run/libvirt/libvirt-sock",
    "/run/polkit/agent-helper.socket",
];

/// The sockets to refuse, with their (device, inode): every well-known path
/// (plus the per-user session buses under /run/user) that exists and is a
/// socket, minus `allowed`.
pub fn denied(allowed: &[PathBuf]) -> Vec<(PathBuf, (u64, u64))> {
    let mut candidates: Vec<PathBuf> = WELL_KNOWN.iter().map(PathBuf::from).collect();
    if let Ok(users) = std::fs::read_dir("/run/user") {
        for u in users.flatten() {
            candidates.push(u.path().join("bus"));
            candidates.push(u.path().join("docker.sock"));
            candidates.push(u.path().join("podman/podman.sock"));
            candidates.push(u.path().join("systemd/private"));
            candidates.extend(sockets_in(&u.path().join("emacs")));
            candidates.extend(sockets_in(&u.path().join("tmux")));
            candidates.extend(
                sockets_in(&u.path())
                    .into_iter()
                    .filter(|p| name_starts(p, &["vscode-", "wayland-", "kitty", "tmux"])),
            );
        }
    }
    candidates.extend(command_servers());
    let allowed_ids: HashSet<(u64, u64)> = allowed.iter().filter_map(|p| socket_id(p)).collect();
    let mut seen = HashSet::new();
    candidates
        .into_iter()
        .filter_map(|p| {
            let id = socket_id(&p)?;
            let refuse =
                !allowed_ids.contains(&id) && !allowed.contains(&p) && seen.insert(p.clone());
            refuse.then_some((p, id))
        })
        .collect()
}

/// Sockets of servers that run commands or inject input for any client of
/// their user: tmux (`/tmp/tmux-UID/*`, `$TMUX_TMPDIR`, `$TMUX`), GNU screen
/// (`/run/screen`, `/var/run/screen`), X11 (`/tmp/.X11-unix/X*`), emacs
/// (`/tmp/emacsUID/*`), VS Code and kitty (named by their environment).
fn command_servers() -> Vec<PathBuf> {
    let tmp = std::env::var_os("TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    let mut dirs = vec![PathBuf::from("/tmp/.X11-unix")];
    for base in [PathBuf::from("/tmp"), tmp] {
        for e in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            let p = e.path();
            if name_starts(&p, &["tmux-", "emacs"]) {
                dirs.push(p);
            }
        }
    }
    if let Some(t) = std::env::var_os("TMUX_TMPDIR") {
        for e in std::fs::read_dir(t).into_iter().flatten().flatten() {
            if name_starts(&e.path(), &["tmux-"]) {
                dirs.push(e.path());
            }
        }
    }
    for screen in ["/run/screen", "/var/run/screen"] {
        for e in std::fs::read_dir(screen).into_iter().flatten().flatten() {
            dirs.push(e.path());
        }
    }
    let mut out: Vec<PathBuf> = dirs.iter().flat_map(|d| sockets_in(d)).collect();
    // $TMUX is "socket,pid,session"; the others name the socket.
    if let Some(t) = std::env::var("TMUX")
        .ok()
        .and_then(|t| t.split(',').next().map(String::from))
    {
        out.push(PathBuf::from(t));
    }
    for var in ["VSCODE_IPC_HOOK_CLI", "VSCODE_IPC_HOOK", "KITTY_LISTEN_ON"] {
        if let Some(v) = std::env::var_os(var) {
            let v = PathBuf::from(v);
            // kitty: unix:/path (abstract names are out of reach anyway).
            let v = v
                .to_str()
                .and_then(|s| s.strip_prefix("unix:"))
                .map(PathBuf::from)
                .unwrap_or(v);
            out.push(v);
        }
    }
    out
}

fn name_starts(p: &Path, prefixes: &[&str]) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| prefixes.iter().any(|x| n.starts_with(x)))
}

/// The sockets directly in `dir`.
fn sockets_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| socket_id(p).is_some())
        .collect()
}

/// (device, inode) of a socket file, following symlinks; `None` if the path
/// is not a socket. Identity by inode catches every other name for the same
/// socket (symlinks, bind mounts, hard links).
pub fn socket_id(p: &Path) -> Option<(u64, u64)> {
    let m = std::fs::metadata(p).ok()?;
    m.file_type().is_socket().then(|| (m.dev(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_existing_sockets_and_not_allowed_ones() {
        let dir = std::env::temp_dir().join(format!("nono-daemons-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("d.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        assert!(socket_id(&sock).is_some());
        assert!(socket_id(&dir).is_none());
        assert!(socket_id(Path::new("/nonexistent/x")).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
