//! `nono-agent config validate [FILE] | show`.

use anyhow::Result;

use crate::cli::ConfigCommand;
use crate::config;

pub fn run(cmd: ConfigCommand) -> Result<i32> {
    match cmd {
        ConfigCommand::Validate { file } => {
            let explicit = file.is_some();
            let path = file.unwrap_or_else(config::path_from_env);
            if !path.exists() && std::fs::symlink_metadata(&path).is_err() {
                if explicit {
                    eprintln!("nono-agent: {}: no such file", path.display());
                    return Ok(2);
                }
                println!(
                    "{}: not present (every value is its default)",
                    path.display()
                );
                return Ok(0);
            }
            match config::load(&path) {
                Ok(_) => {
                    println!("{}: valid", path.display());
                    Ok(0)
                }
                Err(e) => {
                    eprintln!("nono-agent: {e}");
                    Ok(2)
                }
            }
        }
        ConfigCommand::Show => match config::load_from_env() {
            Ok(c) => {
                print!("{c}");
                Ok(0)
            }
            Err(e) => {
                eprintln!("nono-agent: {e}");
                Ok(2)
            }
        },
    }
}
