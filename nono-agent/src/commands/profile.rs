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
            let checked = profile::load(&spec, &ctx).map_err(anyhow::Error::from).and_then(|p| {
                crate::plan::check_profile(&p)?;
                Ok(p)
            });
            match checked {
                Ok(p) => {
                    let from = p.chain.last().cloned().unwrap_or_default();
                    println!("{spec}: valid (profile {}, {from})", p.name);
                    Ok(0)
                }
                Err(e) => {
                    eprintln!("nono-agent: {spec}: {e:#}");
                    Ok(2)
                }
            }
        }
    }
}
