//! Small helpers shared by several modules.

use anyhow::{Context as _, Result};
use std::io::{ErrorKind, Read as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

/// Creates directory `p` if it is missing, and gives a directory it created
/// `mode` (an existing one is left as it is).
pub fn ensure_dir(p: &Path, mode: Option<u32>) -> Result<()> {
    match std::fs::create_dir(p) {
        Ok(()) => {
            if let Some(mode) = mode {
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
                    .with_context(|| format!("chmod {}", p.display()))?;
            }
            Ok(())
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating {}", p.display())),
    }
}

/// `bytes` random bytes from the kernel, as lower-case hex; `what` names the
/// use in the error message.
pub fn random_hex(bytes: usize, what: &str) -> Result<String> {
    let mut b = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .with_context(|| format!("reading /dev/urandom for {what}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}
