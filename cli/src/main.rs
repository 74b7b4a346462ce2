//! `advisory-locked`: who holds which PostgreSQL advisory lock, the number
//! of a key name, waiting for a key, and releasing a stuck one. See
//! `docs/operations.md` ("The advisory-locked command") and `--help`.
#![forbid(unsafe_code)]

mod db;
mod keys;
mod sql;

use std::fmt;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use advisory_locked::status::{self, HeldLock};
use advisory_locked::{KeyId, LockKey, Mode};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

const EXIT_CODES: &str = "\
Exit codes:
  0  done (wait: the key is free; who: the key is held)
  1  error: the server can't be reached, a query failed, a permission is missing
  2  usage: bad arguments, no or bad database URL
  3  timeout: wait --timeout ran out with the key still held
  4  not held or refused: who/release of a key nobody holds, release not confirmed
  130  interrupted (Ctrl-C) while waiting";

const KEYS: &str = "\
KEY is a 64-bit number (754907581750802352), a pair of 32-bit numbers (7,42),
or a name, hashed as the crate hashes string keys (hashtextextended(name, 0));
--as-name hashes a KEY that looks like a number as a name. A pair or name that
starts with '-' goes after -- (who -- -7,42) or in parentheses ((-7,42)).";

/// Who holds which PostgreSQL advisory lock, for operators of services that
/// use the advisory-locked crate (or any advisory locks).
#[derive(Parser, Debug)]
#[command(name = "advisory-locked", version, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The database options every command that connects takes.
#[derive(Args, Debug)]
struct Db {
    /// The database: a URL (postgres://user@host:5432/dbname) or key=value
    /// string. Several hosts (host=a,b) are tried in order; standbys are
    /// skipped.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    url: Option<String>,
    /// Connect with TLS, trusting the CA certificates of this PEM file.
    #[arg(long, value_name = "PEM_FILE")]
    tls_ca: Option<PathBuf>,
}

impl Db {
    fn target(&self) -> db::Target {
        db::Target {
            url: self.url.clone(),
            tls_ca: self.tls_ca.clone(),
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Every advisory lock held or awaited in the database: key, name, mode,
    /// holder pid and application, and for how long.
    #[command(after_help = EXIT_CODES)]
    Status {
        #[command(flatten)]
        db: Db,
        /// Names keys in the table: a key name known only at run time (an
        /// instance of a template key such as tenant:{id}: --name tenant:7).
        /// Repeatable.
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
        /// One JSON object per snapshot, on one line.
        #[arg(long)]
        json: bool,
        /// Redraw every --interval until Ctrl-C (or --count snapshots).
        #[arg(long)]
        watch: bool,
        /// Time between snapshots with --watch (200ms, 1s, 1m).
        #[arg(long, default_value = "1s", value_parser = keys::parse_duration, requires = "watch")]
        interval: Duration,
        /// Stop after this many snapshots with --watch.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..), requires = "watch")]
        count: Option<u64>,
    },
    /// The number a key name locks (hashtextextended(NAME, 0)), its columns in
    /// pg_locks, and the psql query that finds its holder. Needs no database.
    Key {
        /// Key names (always hashed as names, even 42).
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
        /// One JSON object per name, one per line.
        #[arg(long)]
        json: bool,
    },
    /// The processes holding and awaiting KEY: pid, application, client
    /// host, user, state, and for how long.
    #[command(after_help = format!("{KEYS}\n\n{EXIT_CODES}"))]
    Who {
        #[command(flatten)]
        key: KeyArg,
        #[command(flatten)]
        db: Db,
        /// Names KEY when it is given as a number (repeatable).
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Blocks until KEY is free, for deploy scripts. The wait queues for
    /// the lock on the server (pg_advisory_xact_lock with lock_timeout on a
    /// connection of its own) and, once granted, lets it go in the same
    /// instant: the tool holds the key for one commit's time.
    #[command(after_help = format!("{KEYS}\n\n{EXIT_CODES}"))]
    Wait {
        #[command(flatten)]
        key: KeyArg,
        #[command(flatten)]
        db: Db,
        /// Give up after this long with exit code 3 (200ms, 30s, 5m, 2h).
        #[arg(long, default_value = "30s", value_parser = keys::parse_duration)]
        timeout: Duration,
        /// Wait only until no exclusive holder is left (shared holders may stay).
        #[arg(long)]
        shared: bool,
    },
    /// Terminates the server processes holding KEY (pg_terminate_backend),
    /// which frees all their locks; their programs see the lock as lost.
    /// Asks first unless --yes.
    #[command(after_help = format!("{KEYS}\n\n{EXIT_CODES}"))]
    Release {
        #[command(flatten)]
        key: KeyArg,
        #[command(flatten)]
        db: Db,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

/// KEY and how to read it.
#[derive(Args, Debug)]
struct KeyArg {
    /// The key: a number, a pair a,b, or a name.
    #[arg(value_name = "KEY", allow_negative_numbers = true)]
    key: String,
    /// Hash KEY as a name even if it looks like a number.
    #[arg(long)]
    as_name: bool,
}

impl KeyArg {
    fn lock_key(&self) -> Result<LockKey, Failure> {
        keys::parse_key(&self.key, self.as_name).map_err(Failure::Usage)
    }
}

/// Why the tool stops without success; each has its exit code.
#[derive(Debug)]
pub enum Failure {
    /// 1.
    Error(String),
    /// 2.
    Usage(String),
    /// 3.
    Timeout(String),
    /// 4.
    NotHeld(String),
    /// 130.
    Interrupted,
}

impl Failure {
    fn code(&self) -> u8 {
        match self {
            Failure::Error(_) => 1,
            Failure::Usage(_) => 2,
            Failure::Timeout(_) => 3,
            Failure::NotHeld(_) => 4,
            Failure::Interrupted => 130,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Error(m) | Failure::Usage(m) | Failure::Timeout(m) | Failure::NotHeld(m) => {
                f.write_str(m)
            }
            Failure::Interrupted => f.write_str("interrupted"),
        }
    }
}

/// `850ms`, `30s`, `5m`: a duration as the options take it.
pub fn show(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("advisory-locked: can't start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("advisory-locked: {failure}");
            ExitCode::from(failure.code())
        }
    }
}

async fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Status {
            db,
            names,
            json,
            watch,
            interval,
            count,
        } => {
            let frames = if watch { count } else { Some(1) };
            status_loop(&db, &names, json, interval, frames).await
        }
        Command::Key { names, json } => {
            for (i, name) in names.iter().enumerate() {
                let text = keys::describe(name, json).map_err(Failure::Usage)?;
                if json {
                    println!("{text}");
                } else {
                    print!("{}{text}", if i == 0 { "" } else { "\n" });
                }
            }
            Ok(())
        }
        Command::Who {
            key,
            db,
            names,
            json,
        } => who(&key.lock_key()?, &db, &names, json).await,
        Command::Wait {
            key,
            db,
            timeout,
            shared,
        } => wait(&key.lock_key()?, &db, timeout, shared).await,
        Command::Release { key, db, yes } => release(&key.lock_key()?, &db, yes).await,
    }
}

/// `status`: `frames` snapshots (`None`: until Ctrl-C), `interval` apart.
async fn status_loop(
    db: &Db,
    names: &[String],
    json: bool,
    interval: Duration,
    frames: Option<u64>,
) -> Result<(), Failure> {
    let config = db.target().config()?;
    let redraw = frames != Some(1) && !json && std::io::stdout().is_terminal();
    let mut shown = 0u64;
    loop {
        let mut locks = status::held_locks(&config)
            .await
            .map_err(|e| Failure::Error(e.to_string()))?;
        status::fill_names(&mut locks, names);
        let text = if json {
            format!("{}\n", status_json(&locks))
        } else {
            status::format_table(&locks)
        };
        if redraw {
            // Clear the screen and go home, then the table.
            print!("\x1b[2J\x1b[H");
        } else if shown > 0 && !json {
            println!();
        }
        print!("{text}");
        let _ = std::io::stdout().flush();
        shown += 1;
        if frames.is_some_and(|n| shown >= n) {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

fn key_json(id: KeyId) -> serde_json::Value {
    match id {
        KeyId::Int(k) => json!(k),
        KeyId::Pair(a, b) => json!([a, b]),
    }
}

fn status_json(locks: &[HeldLock]) -> serde_json::Value {
    let locks: Vec<_> = locks
        .iter()
        .map(|l| {
            json!({
                "key": key_json(l.key),
                "key_text": l.key.to_string(),
                "name": l.name,
                "mode": match l.mode { Mode::Shared => "shared", _ => "exclusive" },
                "granted": l.granted,
                "pid": l.pid,
                "application_name": l.application_name,
                "state": l.state,
                "age": l.age.to_string(),
                "age_at_most_ms": l.age.at_most().map(|d| d.as_millis() as u64),
            })
        })
        .collect();
    json!({ "locks": locks })
}

/// Left-aligned columns, two spaces apart.
/// The table of `who` and `release`: one row per holder or waiter.
fn process_table<'a>(procs: impl IntoIterator<Item = &'a db::Process>) -> String {
    let rows: Vec<Vec<String>> = procs.into_iter().map(db::Process::cells).collect();
    table(
        &[
            "ROLE",
            "PID",
            "MODE",
            "APPLICATION",
            "CLIENT",
            "USER",
            "STATE",
            "FOR",
        ],
        &rows,
    )
}

fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (cell, w) in row.iter().zip(&widths) {
            line.push_str(&format!("{cell:<w$}  "));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn describe_key(key: &LockKey, names: &[String]) -> String {
    let id = key.id();
    let name = match id {
        KeyId::Int(_) if key.name() != id.to_string() => Some(key.name()),
        _ => keys::name_for(id, names),
    };
    match name {
        Some(name) => format!("{id} ({name})"),
        None => id.to_string(),
    }
}

/// `who`: exit 0 if held, [`Failure::NotHeld`] if not.
async fn who(key: &LockKey, db: &Db, names: &[String], json: bool) -> Result<(), Failure> {
    let client = db.target().connect().await?;
    let procs = db::who(&client, key).await?;
    let described = describe_key(key, names);
    let held = procs.iter().any(|p| p.granted);
    if json {
        let (holders, waiting): (Vec<_>, Vec<_>) = procs.iter().partition(|p| p.granted);
        let value = json!({
            "key": key_json(key.id()),
            "key_text": key.id().to_string(),
            "name": (key.name() != key.id().to_string()).then(|| key.name())
                .or_else(|| keys::name_for(key.id(), names)),
            "held": held,
            "holders": holders.iter().map(|p| p.json()).collect::<Vec<_>>(),
            "waiting": waiting.iter().map(|p| p.json()).collect::<Vec<_>>(),
        });
        println!("{value}");
    } else if !procs.is_empty() {
        println!("key {described}");
        print!("{}", process_table(&procs));
    }
    if held {
        Ok(())
    } else if procs.is_empty() {
        Err(Failure::NotHeld(format!(
            "key {described} is not held or awaited"
        )))
    } else {
        Err(Failure::NotHeld(format!(
            "key {described} is not held (only awaited)"
        )))
    }
}

/// `wait`: until the key is free, `timeout` at most, Ctrl-C cancels.
async fn wait(key: &LockKey, db: &Db, timeout: Duration, shared: bool) -> Result<(), Failure> {
    if timeout.as_millis() > i32::MAX as u128 {
        return Err(Failure::Usage(
            "--timeout is longer than PostgreSQL's lock_timeout allows (about 24 days)".to_owned(),
        ));
    }
    let target = db.target();
    let mut client = target.connect().await?;
    let waiter = std::cell::Cell::new(None);
    // The server's lock_timeout ends the wait; this only guards against a
    // server that stops answering.
    let guard = timeout + Duration::from_secs(10);
    tokio::select! {
        waited = tokio::time::timeout(guard, db::wait(&mut client, key, shared, timeout, &waiter)) => match waited {
            Ok(result) => result,
            Err(_) => Err(Failure::Timeout(format!(
                "the server did not answer within {} while waiting for {key}", show(guard)
            ))),
        },
        _ = tokio::signal::ctrl_c() => {
            // Cancel the wait on the server from a second connection (else
            // it would stay queued until lock_timeout); best effort, bounded.
            if let Some(pid) = waiter.get() {
                let _ = tokio::time::timeout(Duration::from_secs(5), db::cancel(&target, pid, key)).await;
            }
            Err(Failure::Interrupted)
        }
    }
}

/// `release`: terminate the holders of `key` after confirmation.
async fn release(key: &LockKey, db: &Db, yes: bool) -> Result<(), Failure> {
    let client = db.target().connect().await?;
    let procs = db::who(&client, key).await?;
    let holders: Vec<&db::Process> = procs.iter().filter(|p| p.granted).collect();
    let pids: Vec<i32> = holders.iter().filter_map(|p| p.pid).collect();
    if pids.is_empty() {
        let why = if holders.is_empty() {
            "nobody holds it"
        } else {
            "it is held by a prepared transaction (no process to terminate; see pg_prepared_xacts)"
        };
        return Err(Failure::NotHeld(format!("{key}: {why}; nothing released")));
    }
    eprint!("{}", process_table(holders.iter().copied()));
    if !yes && !confirm(key, pids.len())? {
        return Err(Failure::NotHeld(
            "not confirmed; nothing released".to_owned(),
        ));
    }
    let done = db::terminate(&client, key, &pids).await?;
    if done.is_empty() {
        return Err(Failure::NotHeld(format!(
            "{key} was released before it could be terminated; nothing done"
        )));
    }
    let mut all = true;
    for (pid, ok) in &done {
        if *ok {
            println!("terminated pid {pid}");
        } else {
            all = false;
            eprintln!(
                "advisory-locked: pid {pid} was signalled but did not exit in time (or had gone)"
            );
        }
    }
    if all {
        Ok(())
    } else {
        Err(Failure::Error(format!("not every holder of {key} is gone")))
    }
}

/// Asks on stderr, reads one line from stdin: `y` or `yes` goes ahead.
fn confirm(key: &LockKey, n: usize) -> Result<bool, Failure> {
    let what = if n == 1 {
        "its server process".to_owned()
    } else {
        format!("these {n} server processes")
    };
    eprint!("terminate {what} holding {key}? Every lock of the session is freed. [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Failure::Error(format!("reading the answer failed: {e}")))?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}
