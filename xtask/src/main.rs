//! `cargo xtask generate [--check]`: writes every generated file of the repository from
//! its source, or with `--check` lists the stale ones and fails.

use std::process::ExitCode;

const USAGE: &str = "usage: cargo xtask generate [--check]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let check = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["generate"] => false,
        ["generate", "--check"] => true,
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let root = xtask::repo_root();
    let outcome = if check {
        xtask::stale(&root)
    } else {
        xtask::write(&root)
    };
    match outcome {
        Ok(paths) if check && !paths.is_empty() => {
            for path in paths {
                eprintln!("stale: {} (run `cargo xtask generate`)", path.display());
            }
            ExitCode::FAILURE
        }
        Ok(paths) => {
            for path in paths {
                println!("wrote {}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}
