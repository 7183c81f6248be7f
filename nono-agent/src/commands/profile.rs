//! `nono-agent profile list | show NAME | validate FILE`.

use anyhow::Result;

use crate::cli::ProfileCommand;
use crate::profile::{self, ExpandContext};

pub fn run(cmd: ProfileCommand) -> Result<i32> {
    let ctx = ExpandContext::from_env();
    match cmd {
        ProfileCommand::List => {
            for p in profile::list(&ctx) {
                println!("{p}");
            }
            Ok(0)
        }
        ProfileCommand::Show { profile: spec } => match profile::load(&spec, &ctx) {
            Ok(p) => {
                print!("{}", p.to_toml_string());
                Ok(0)
            }
            Err(e) => {
                eprintln!("nono-agent: {e}");
                Ok(2)
            }
        },
        ProfileCommand::Validate { file: spec } => {
            // Looked up as `exec --profile` does (a NAME or a PATH), then
            // judged by the same checks `exec` makes.
            let p = match profile::load(&spec, &ctx) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("nono-agent: {e}");
                    return Ok(2);
                }
            };
            if let Err(e) = crate::plan::check_profile(&p) {
                eprintln!("nono-agent: {spec}: {}", crate::util::chain(&e));
                return Ok(2);
            }
            let from = p.chain.last().cloned().unwrap_or_default();
            println!("{spec}: valid (profile {from})");
            Ok(0)
        }
    }
}
