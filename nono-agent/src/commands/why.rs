//! `nono-agent why DEST | --path P [--write|--exec]`: builds the plan `exec`
//! would build from the same flags (and host configuration) and asks
//! [`crate::why::explain`] for the verdict and its rule.

use anyhow::Result;
use std::ffi::OsString;
use std::path::PathBuf;

use crate::cli::WhyArgs;
use crate::plan::{self, ExecRequest};
use crate::profile::FsAccess;
use crate::why::{explain, Question};

/// Exit code of a usage error (as clap's own).
const EXIT_USAGE: i32 = 2;

/// Runs `why`; 0 allowed, 1 denied, 2 usage error.
pub fn run(a: WhyArgs) -> Result<i32> {
    // `--write` alone asks; `--write=PATH` adds a rule.
    let split = |v: Vec<OsString>| -> (bool, Vec<PathBuf>) {
        let ask = v.iter().any(|p| p.is_empty());
        let rules = v
            .into_iter()
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect();
        (ask, rules)
    };
    let (ask_read, read) = split(a.read);
    let (ask_write, write) = split(a.write);
    let (ask_exec, exec) = split(a.exec);
    let asked: Vec<FsAccess> = [
        (ask_read, FsAccess::Read),
        (ask_write, FsAccess::Write),
        (ask_exec, FsAccess::Exec),
    ]
    .into_iter()
    .filter_map(|(b, k)| b.then_some(k))
    .collect();
    let question = match (a.dest, a.path) {
        (Some(dest), None) => {
            if !asked.is_empty() {
                eprintln!("nono-agent: why: --read, --write and --exec without a value ask about a --path; to add a rule write --write=PATH");
                return Ok(EXIT_USAGE);
            }
            Question::Net { dest, udp: a.udp }
        }
        (None, Some(path)) => {
            if asked.len() > 1 {
                eprintln!(
                    "nono-agent: why: ask about one access at a time (--read, --write or --exec)"
                );
                return Ok(EXIT_USAGE);
            }
            let path = if path.is_absolute() {
                path
            } else {
                std::env::current_dir()?.join(path)
            };
            Question::Path {
                path,
                access: asked.first().copied().unwrap_or(FsAccess::Read),
            }
        }
        _ => {
            eprintln!("nono-agent: why: give a destination or --path, not both");
            return Ok(EXIT_USAGE);
        }
    };
    let req = ExecRequest {
        proxy_endpoints: a.direct.proxy_endpoints,
        profile: a.profile,
        read,
        write,
        exec,
        loopback_ports: a.direct.loopback_ports,
        proxy: a.proxy.into(),
        command: vec![OsString::from("true")],
        host: crate::config::load_from_env()?,
        skip_credential_values: true,
        ..ExecRequest::default()
    };
    let plan = plan::build(&req)?;
    let privileged = crate::sandbox::privileges::can_load_bpf();
    let answer = explain(&plan, &question, privileged);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        print!("{}", crate::notice::escape_lines(&answer.to_string()));
    }
    Ok(answer.exit_code())
}
