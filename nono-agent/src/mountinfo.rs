//! Finding filesystems by type in `/proc/self/mountinfo`.
//!
//! The cgroup2 and bpffs mount points differ between hosts (pure v2 at
//! `/sys/fs/cgroup`, hybrid at `/sys/fs/cgroup/unified`, none at all), so they
//! are always discovered, never assumed.

use std::path::PathBuf;

/// One mount of interest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Root of the mount within its filesystem (`/` unless bind-mounted or
    /// seen through a namespace).
    pub root: String,
    /// The filesystem's own options (`rw,nsdelegate,favordynmods`).
    pub super_options: String,
}

/// Every mount of filesystem type `fstype` in a mountinfo text.
pub fn find(text: &str, fstype: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            // Fields: id parent maj:min root mount_point opts [optional...] - fstype source superopts
            let (left, right) = line.split_once(" - ")?;
            let mut r = right.split(' ');
            let ty = r.next()?;
            if ty != fstype {
                return None;
            }
            let super_options = r.nth(1).unwrap_or("").to_string();
            let mut f = left.split(' ');
            let root = unescape(f.nth(3)?);
            let mount_point = PathBuf::from(unescape(f.next()?));
            Some(Mount {
                mount_point,
                root,
                super_options,
            })
        })
        .collect()
}

static CACHE: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Reads this process's mountinfo (once per run: several modules ask, and
/// each read of a large mount table costs a measurable part of start-up).
/// Call [`invalidate`] after changing mounts.
pub fn read() -> std::io::Result<String> {
    if let Ok(guard) = CACHE.lock() {
        if let Some(text) = guard.as_ref() {
            return Ok(text.clone());
        }
    }
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    if let Ok(mut guard) = CACHE.lock() {
        *guard = Some(text.clone());
    }
    Ok(text)
}

/// Forgets the cached mount table (after this process mounted something).
pub fn invalidate() {
    if let Ok(mut guard) = CACHE.lock() {
        *guard = None;
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
        40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n\
        41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
        50 23 0:40 / /sys/fs/bpf rw,nosuid shared:5 - bpf bpf rw,mode=700\n\
        51 23 0:41 / /mnt/with\\040space rw - bpf bpf rw\n";

    #[test]
    fn finds_cgroup2_in_hybrid_layout() {
        let m = find(HYBRID, "cgroup2");
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].mount_point, PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(m[0].root, "/");
        assert!(find(HYBRID, "cgroup").len() == 1);
    }

    #[test]
    fn finds_bpffs_with_optional_fields_and_escapes() {
        let m = find(HYBRID, "bpf");
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, PathBuf::from("/sys/fs/bpf"));
        assert_eq!(m[1].mount_point, PathBuf::from("/mnt/with space"));
    }

    #[test]
    fn garbage_is_ignored() {
        assert!(find("nonsense\n\n - \n", "bpf").is_empty());
    }
}
