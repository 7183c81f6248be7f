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
        ProfileCommand::Validate { file } => match profile::validate_file(&file, &ctx) {
            Ok(p) => {
                // The same check `exec` makes, on the resolved paths.
                if let Err(e) = crate::sandbox::landlock::check_write_rules(
                    &p.filesystem.write,
                    &crate::sandbox::landlock::forbidden_write_targets(),
                ) {
                    eprintln!("nono-agent: {}: {}", file.display(), crate::util::chain(&e));
                    return Ok(2);
                }
                println!("{}: valid (profile {})", file.display(), p.name);
                Ok(0)
            }
            Err(e) => {
                eprintln!("nono-agent: {e}");
                Ok(2)
            }
        },
    }
}
