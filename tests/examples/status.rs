//! `cargo run --example status -p advisory-locked-tests [-- --name NAME ...]`:
//! prints the advisory locks held or awaited in the database of
//! `DATABASE_URL` (default postgres://postgres@127.0.0.1:5432/postgres):
//! key, name, mode, held or waiting, the holder's pid and application_name,
//! and for how long (exact for waiters, an upper bound for holders; see
//! `advisory_locked::status`).
//!
//! Keys are named from this program's own `#[advisory_locked]` fns (the
//! compile-time inventory, `advisory_locked::names`) and from every
//! `--name NAME` given, hashed as string keys at run time (e.g. instances of
//! a template: `--name tenant:7`). Exits with status 1 if the database
//! can't be queried, 2 on bad arguments.

use advisory_locked::{status, LockConfig};

fn usage() -> ! {
    eprintln!("usage: status [--name NAME]...  (database: DATABASE_URL, default postgres://postgres@127.0.0.1:5432/postgres)");
    std::process::exit(2)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut names = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--name" => names.push(args.next().unwrap_or_else(|| usage())),
            "-h" | "--help" => usage(),
            other => match other.strip_prefix("--name=") {
                Some(name) => names.push(name.to_owned()),
                None => usage(),
            },
        }
    }
    let url = std::env::var("DATABASE_URL")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let config = match LockConfig::from_url(&url) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2)
        }
    };
    match status::held_locks(&config).await {
        Ok(mut locks) => {
            status::fill_names(&mut locks, &names);
            print!("{}", status::format_table(&locks));
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1)
        }
    }
}
