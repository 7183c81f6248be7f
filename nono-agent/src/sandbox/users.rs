//! Looking up the user a sandbox runs as (`--user`, profile `process.user`).

/// A user that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("looking up user {user}")]
    Lookup {
        user: String,
        #[source]
        source: nix::Error,
    },
    #[error("no such user: {0}")]
    NoSuchUser(String),
}

/// uid and gid of a user name or numeric uid.
pub fn lookup_user(u: &str) -> Result<(libc::uid_t, libc::gid_t), UserError> {
    let user = match u.parse::<u32>() {
        Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
        Err(_) => nix::unistd::User::from_name(u),
    }
    .map_err(|source| UserError::Lookup {
        user: u.to_string(),
        source,
    })?
    .ok_or_else(|| UserError::NoSuchUser(u.to_string()))?;
    Ok((user.uid.as_raw(), user.gid.as_raw()))
}
