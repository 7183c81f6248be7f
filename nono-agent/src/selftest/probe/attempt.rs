//! The outcome of one attempt and the steps that led to it.

use std::io;

use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct Attempt {
    pub ok: bool,
    pub errno: Option<i32>,
    pub detail: String,
}

impl Attempt {
    pub fn success(detail: impl Into<String>) -> Self {
        Attempt {
            ok: true,
            errno: None,
            detail: detail.into(),
        }
    }

    pub fn fail(what: &str, err: &io::Error) -> Self {
        Attempt {
            ok: false,
            errno: err.raw_os_error(),
            detail: format!("{what}: {err}"),
        }
    }

    /// The attempt could not be made as asked (a bad or missing argument):
    /// EINVAL, nothing sent.
    pub fn invalid(what: &str) -> Self {
        Attempt {
            ok: false,
            errno: Some(libc::EINVAL),
            detail: what.to_string(),
        }
    }

    pub fn last_os(what: &str) -> Self {
        Self::fail(what, &io::Error::last_os_error())
    }

    pub fn to_json(&self, name: &str) -> Value {
        json!({"name": name, "ok": self.ok, "errno": self.errno, "detail": self.detail})
    }
}

pub struct Steps(pub Vec<Value>);

impl Steps {
    pub fn push(&mut self, name: &str, a: &Attempt) {
        self.0.push(a.to_json(name));
    }
}

pub fn errno_of(rc: libc::c_long) -> Result<libc::c_long, io::Error> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

pub fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    errno_of(rc as libc::c_long).map(|v| v as libc::c_int)
}
