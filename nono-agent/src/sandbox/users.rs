//! Looking up the user a sandbox runs as (`--user`, profile `process.user`),
//! and the identity variables the command sees as that user.

use std::ffi::OsString;
use std::path::PathBuf;

/// A user that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("looking up user {user}")]
    Lookup {
        user: String,
        #[source]
        source: nix::Error,
    },
    #[error("no such user: {0} (give a user name from the passwd database, or a numeric uid)")]
    NoSuchUser(String),
    /// `(uid_t)-1` / `(gid_t)-1`: to `setresuid`/`setresgid` this means
    /// "leave unchanged", so the command would keep running as root.
    #[error("user {user}: {id} is not a usable uid or gid ((uid_t)-1 means \"unchanged\" to the kernel: the command would stay root)")]
    UnusableId { user: String, id: u32 },
}

/// The one id the kernel's set*id calls take as "unchanged" rather than
/// as an id.
const UNCHANGED_ID: u32 = u32::MAX;

/// Refuses an account whose uid or gid is [`UNCHANGED_ID`].
fn usable(user: &str, a: Account) -> Result<Account, UserError> {
    for id in [a.uid, a.gid] {
        if id == UNCHANGED_ID {
            return Err(UserError::UnusableId {
                user: user.to_string(),
                id,
            });
        }
    }
    Ok(a)
}

/// The group a uid without a passwd entry runs with: the overflow group
/// (`nogroup`), which grants nothing. Using the uid's own number as a gid
/// could hand out an existing group's files by accident.
pub const NOGROUP: libc::gid_t = 65534;

/// Who the command runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    /// The passwd name (`None`: a numeric uid without an entry).
    pub name: Option<String>,
    /// The passwd home directory (`/` for a uid without an entry).
    pub home: PathBuf,
}

impl Account {
    /// A uid with no passwd entry: gid [`NOGROUP`], home `/` (a directory
    /// every user can enter and none can write, so nothing is written into
    /// someone else's home by mistake).
    pub fn bare(uid: libc::uid_t) -> Self {
        Self {
            uid,
            gid: NOGROUP,
            name: None,
            home: PathBuf::from("/"),
        }
    }

    /// `USER` and `LOGNAME`: the name, or the uid for a bare uid.
    pub fn login(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.uid.to_string())
    }
}

/// The account of a user name or numeric uid. A name must have a passwd
/// entry; a numeric uid need not ([`Account::bare`]). Only the passwd
/// database is read: nothing in the user's home.
pub fn lookup_user(u: &str) -> Result<Account, UserError> {
    let lookup_err = |source| UserError::Lookup {
        user: u.to_string(),
        source,
    };
    if let Ok(uid) = u.parse::<u32>() {
        let account = match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .map_err(lookup_err)?
        {
            Some(user) => from_passwd(user),
            None => Account::bare(uid),
        };
        return usable(u, account);
    }
    let account = nix::unistd::User::from_name(u)
        .map_err(lookup_err)?
        .map(from_passwd)
        .ok_or_else(|| UserError::NoSuchUser(u.to_string()))?;
    usable(u, account)
}

fn from_passwd(user: nix::unistd::User) -> Account {
    Account {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        name: Some(user.name),
        home: user.dir,
    }
}

/// The variables that say who the command is, set for `account` (pure).
/// They replace the caller's values (root's `HOME` would send the command's
/// dotfiles to a directory it cannot write, or worse, one it can); with
/// `only_present` (an environment policy that lists what passes) only the
/// ones already there are replaced, none added.
pub fn set_identity(env: &mut Vec<(OsString, OsString)>, account: &Account, only_present: bool) {
    let login = account.login();
    let values: [(&str, OsString); 3] = [
        ("HOME", account.home.clone().into_os_string()),
        ("USER", login.clone().into()),
        ("LOGNAME", login.into()),
    ];
    for (key, value) in values {
        match env.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None if !only_present => env.push((key.into(), value)),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_uids() {
        let root = lookup_user("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(root.name.as_deref(), Some("root"));
        assert_eq!(lookup_user("0").unwrap(), root);
        // A uid without a passwd entry is accepted as it is.
        let bare = lookup_user("3987654").unwrap();
        assert_eq!(bare, Account::bare(3987654));
        assert_eq!(bare.gid, NOGROUP);
        assert_eq!(bare.home, PathBuf::from("/"));
        assert_eq!(bare.login(), "3987654");
        // (uid_t)-1 would leave the command root: refused.
        let e = lookup_user("4294967295").unwrap_err();
        assert!(e.to_string().contains("not a usable uid"), "{e}");
        assert!(usable(
            "x",
            Account {
                gid: u32::MAX,
                ..Account::bare(5)
            }
        )
        .is_err());
        // A name must exist.
        let e = lookup_user("nosuchuser-nono").unwrap_err();
        assert!(
            e.to_string().starts_with("no such user: nosuchuser-nono"),
            "{e}"
        );
    }

    fn env(v: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        v.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
    }

    #[test]
    fn identity_replaces_the_callers() {
        let bob = Account {
            uid: 1001,
            gid: 1001,
            name: Some("bob".into()),
            home: PathBuf::from("/home/bob"),
        };
        let mut e = env(&[("HOME", "/root"), ("USER", "root"), ("PATH", "/bin")]);
        set_identity(&mut e, &bob, false);
        assert_eq!(
            e,
            env(&[
                ("HOME", "/home/bob"),
                ("USER", "bob"),
                ("PATH", "/bin"),
                ("LOGNAME", "bob")
            ])
        );
        // A pass-through list: only what it let through is replaced.
        let mut e = env(&[("HOME", "/root"), ("PATH", "/bin")]);
        set_identity(&mut e, &bob, true);
        assert_eq!(e, env(&[("HOME", "/home/bob"), ("PATH", "/bin")]));
        let mut e = env(&[("HOME", "/root")]);
        set_identity(&mut e, &Account::bare(4242), false);
        assert_eq!(
            e,
            env(&[("HOME", "/"), ("USER", "4242"), ("LOGNAME", "4242")])
        );
    }
}
