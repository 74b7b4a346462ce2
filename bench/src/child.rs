//! P3: cross-process handover. The parent re-executes this binary twice as
//! `bench handover-child KIND URL KEY ACQUISITIONS HOLD_US PAUSE_US` (KIND:
//! `ours` (`release().await`), `ours-drop` (the guard dropped), `sqlx`, or
//! `raw`, the floor: tokio-postgres blocking in
//! `pg_advisory_lock`; `raw-sql`, the same with the crate's two statements);
//! both
//! children alternate on one key in wait mode and print what happened when
//! (realtime-clock nanoseconds, comparable between processes); the parent
//! merges the two logs.
//!
//! Each child: connect, warm up, print `ready`, wait for `go` on stdin, then
//! up to ACQUISITIONS times: stamp `c` (campaign), wait for the lock, stamp
//! `a` (acquired), hold HOLD_US, stamp `r`, release, pause PAUSE_US. With
//! PAUSE < HOLD the other child is already waiting when one releases. The
//! events are printed at the end (`c|a|r NANOS`), then `done`.

use std::io::{BufRead, Write};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use advisory_locked::{LockConfig, LockKey, Mode};
use serde_json::{json, Value};
use sqlx::postgres::{PgAdvisoryLock, PgAdvisoryLockKey, PgConnection};
use sqlx::Connection;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::util::{now_ns, BoxErr, Lat, Placement};

/// Longest a child runs its loop; every wait inside is bounded too.
const CHILD_DEADLINE: Duration = Duration::from_secs(40);
const WAIT_TIMEOUT: Duration = Duration::from_secs(10);

pub fn main(args: &[String]) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("handover-child: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The loop runs on a worker thread, as a server's handlers do (and as
    // P1's measuring task does).
    let args = args.to_vec();
    let result = rt.block_on(async move {
        match tokio::spawn(async move { run(&args).await.map_err(|e| e.to_string()) }).await {
            Ok(r) => r,
            Err(e) => Err(format!("the child's task failed: {e}")),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("handover-child: {e}");
            println!("error {e}");
            ExitCode::FAILURE
        }
    }
}

/// One child's timing: acquisitions, hold, pause.
#[derive(Clone, Copy)]
struct Plan {
    acquisitions: usize,
    hold: Duration,
    pause: Duration,
}

async fn run(args: &[String]) -> Result<(), BoxErr> {
    let [kind, url, key, acquisitions, hold_us, pause_us] = args else {
        return Err(
            "usage: bench handover-child ours|ours-drop|sqlx|raw|raw-sql URL KEY ACQUISITIONS HOLD_US PAUSE_US"
                .into(),
        );
    };
    let key: i64 = key.parse()?;
    let plan = Plan {
        acquisitions: acquisitions.parse()?,
        hold: Duration::from_micros(hold_us.parse()?),
        pause: Duration::from_micros(pause_us.parse()?),
    };
    let events = match kind.as_str() {
        "ours" => run_ours(url, key, plan, Release::Awaited).await?,
        "ours-drop" => run_ours(url, key, plan, Release::Dropped).await?,
        "sqlx" => run_sqlx(url, key, plan).await?,
        "raw" => run_raw(url, key, plan).await?,
        "raw-sql" => run_raw_sql(url, key, plan).await?,
        other => return Err(format!("unknown kind {other:?}").into()),
    };
    let mut out = std::io::stdout().lock();
    for (what, t) in events {
        writeln!(out, "{what} {t}")?;
    }
    writeln!(out, "done")?;
    out.flush()?;
    Ok(())
}

/// Up to `plan.acquisitions` times (within [`CHILD_DEADLINE`]): stamp `c`,
/// `lock()`, stamp `a`, hold, stamp `r`, `unlock(guard)`, pause.
async fn alternate<G, L, LF, U, UF>(
    plan: Plan,
    lock: L,
    unlock: U,
) -> Result<Vec<(char, u64)>, BoxErr>
where
    L: Fn() -> LF,
    LF: std::future::Future<Output = Result<G, BoxErr>>,
    U: Fn(G) -> UF,
    UF: std::future::Future<Output = Result<(), BoxErr>>,
{
    let mut events = Vec::with_capacity(plan.acquisitions * 3);
    let deadline = Instant::now() + CHILD_DEADLINE;
    for _ in 0..plan.acquisitions {
        if Instant::now() > deadline {
            break;
        }
        events.push(('c', now_ns()));
        let g = lock().await?;
        events.push(('a', now_ns()));
        nap(plan.hold).await;
        events.push(('r', now_ns()));
        unlock(g).await?;
        nap(plan.pause).await;
    }
    Ok(events)
}

/// How the crate's child gives the lock back.
#[derive(Clone, Copy)]
enum Release {
    /// `release().await`: the unlock's answer is awaited.
    Awaited,
    /// The guard is dropped: the unlock is sent in the background.
    Dropped,
}

async fn run_ours(
    url: &str,
    key: i64,
    plan: Plan,
    release: Release,
) -> Result<Vec<(char, u64)>, BoxErr> {
    let locker = LockConfig::from_url(url)?
        .name("bench-handover")
        .sessions(1)
        .connect()
        .await?;
    let lock_key = LockKey::int(key);
    // Warm up: the session and its statements (the other child may hold
    // the key: then a key of this child's own tells the session).
    let own = own_key(key, 22);
    let mut lock_session = 0;
    for k in [lock_key.clone(), own] {
        if let Some(g) = locker.try_lock(k, Mode::Exclusive).await? {
            lock_session = g.backend_pid();
            g.release().await?;
        }
    }
    let wait_session = warm_wait_session(url, &locker, key).await?;
    ready_then_go(&[lock_session, wait_session])?;
    alternate(
        plan,
        || async {
            let g = locker
                .lock(lock_key.clone(), Mode::Exclusive, Some(WAIT_TIMEOUT))
                .await?;
            Ok(g)
        },
        |g: advisory_locked::LockGuard| async move {
            match release {
                Release::Awaited => g.release().await?,
                Release::Dropped => drop(g),
            }
            Ok(())
        },
    )
    .await
}

/// A key of this child's own, derived from the handover's `key` (bit
/// `flag` set, this process's id in the bits above 8).
fn own_key(key: i64, flag: u32) -> LockKey {
    LockKey::int(key ^ (1 << flag) ^ i64::from(std::process::id() & 0xffff) << 8)
}

/// Opens `locker`'s wait session (the peers' connections are opened before
/// too): a key of this child's own, held by a second entry for a few
/// milliseconds while `locker` waits for it. Returns the wait session's
/// server process id.
async fn warm_wait_session(
    url: &str,
    locker: &advisory_locked::Locker,
    key: i64,
) -> Result<i32, BoxErr> {
    let warm_key = own_key(key, 23);
    let holder = LockConfig::from_url(url)?
        .name("bench-handover-warm-up")
        .sessions(1)
        .connect()
        .await?;
    let held = holder
        .try_lock(warm_key.clone(), Mode::Exclusive)
        .await?
        .ok_or("warm-up key busy")?;
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        held.release().await
    });
    let waited = locker
        .lock(warm_key, Mode::Exclusive, Some(WAIT_TIMEOUT))
        .await?;
    let wait_session = waited.backend_pid();
    waited.release().await?;
    release.await??;
    if locker.stats().server_waits == 0 {
        return Err("warm-up: the wait did not go to a wait session".into());
    }
    Ok(wait_session)
}

async fn run_sqlx(url: &str, key: i64, plan: Plan) -> Result<Vec<(char, u64)>, BoxErr> {
    let mut conn = PgConnection::connect(url).await?;
    // Bound the server-side wait of pg_advisory_lock.
    sqlx::query("SET lock_timeout = '10s'")
        .execute(&mut conn)
        .await?;
    let lock = PgAdvisoryLock::with_key(PgAdvisoryLockKey::BigInt(key));
    // Warm up: the statements (sqlx caches prepared statements).
    lock.acquire(&mut conn).await?.release_now().await?;
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut conn)
        .await?;
    ready_then_go(&[backend])?;
    // sqlx's guard borrows the connection: the loop of `alternate`, inline.
    let mut events = Vec::with_capacity(plan.acquisitions * 3);
    let deadline = Instant::now() + CHILD_DEADLINE;
    for _ in 0..plan.acquisitions {
        if Instant::now() > deadline {
            break;
        }
        events.push(('c', now_ns()));
        let g = lock.acquire(&mut conn).await?;
        events.push(('a', now_ns()));
        nap(plan.hold).await;
        events.push(('r', now_ns()));
        g.release_now().await?;
        nap(plan.pause).await;
    }
    Ok(events)
}

async fn run_raw(url: &str, key: i64, plan: Plan) -> Result<Vec<(char, u64)>, BoxErr> {
    // The floor: one connection blocking on the server, as sqlx, with
    // tokio-postgres prepared statements.
    let floor = Floor {
        setup: "SET lock_timeout = '10s'",
        wait: "SELECT pg_advisory_lock($1)",
        release: "SELECT pg_advisory_unlock($1)",
    };
    run_floor(url, key, plan, floor).await
}

/// The floor's one connection and driver, sending what a wait session
/// sends (its own `lock_timeout`, set once; the wait bounded by it; the
/// release with its notify check): what of the distance to the floor is
/// the server's part.
async fn run_raw_sql(url: &str, key: i64, plan: Plan) -> Result<Vec<(char, u64)>, BoxErr> {
    let [setup, wait, release] = advisory_locked::__bench::handover_statements();
    let floor = Floor {
        setup: &setup,
        wait: &wait,
        release: &release,
    };
    run_floor(url, key, plan, floor).await
}

/// What a floor child sends: `setup` once, then `wait` and `release` (`$1`
/// the key) in turn.
struct Floor<'a> {
    setup: &'a str,
    wait: &'a str,
    release: &'a str,
}

async fn run_floor(
    url: &str,
    key: i64,
    plan: Plan,
    floor: Floor<'_>,
) -> Result<Vec<(char, u64)>, BoxErr> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    client.batch_execute(floor.setup).await?;
    let wait = client.prepare(floor.wait).await?;
    let release = client.prepare(floor.release).await?;
    client.execute(&wait, &[&key]).await?;
    client.execute(&release, &[&key]).await?;
    let backend: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    ready_then_go(&[backend])?;
    alternate(
        plan,
        || async {
            client.execute(&wait, &[&key]).await?;
            Ok(())
        },
        |()| async {
            client.execute(&release, &[&key]).await?;
            Ok(())
        },
    )
    .await
}

/// Sleeps `d`; not at all (not even a timer tick) if it is zero.
async fn nap(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

/// Says `ready`, with this process's id and its backends' (for the parent
/// to pin them), and waits for `go`.
fn ready_then_go(backends: &[i32]) -> Result<(), BoxErr> {
    let mut out = std::io::stdout().lock();
    write!(out, "ready {}", std::process::id())?;
    for pid in backends {
        write!(out, " {pid}")?;
    }
    writeln!(out)?;
    out.flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if line.trim() != "go" {
        return Err(format!("expected `go` on stdin, got {line:?}").into());
    }
    Ok(())
}

/// What the parent makes of the two children's logs.
pub struct Handover {
    pub lat: Lat,
    /// The handover times, in nanoseconds (for pooling rounds).
    pub samples: Vec<u64>,
    /// Releases after which the releaser itself got the lock again although
    /// the other process was waiting (not handovers).
    pub reacquired_by_releaser: usize,
    /// Releases after which the other process got the lock but had not been
    /// waiting at the release (not counted).
    pub not_waiting: usize,
    pub acquisitions: [usize; 2],
}

impl Handover {
    pub fn json(&self) -> Value {
        json!({
            "latency": self.lat.json(),
            "handovers": self.lat.n,
            "reacquired_by_releaser": self.reacquired_by_releaser,
            "other_not_waiting": self.not_waiting,
            "acquisitions_per_process": self.acquisitions,
        })
    }
}

/// Runs the two children on `key` and measures the handovers between them,
/// the children and their backends pinned as `placement` says (`None`:
/// where the scheduler puts them).
pub async fn handover(
    kind: &str,
    url: &str,
    key: i64,
    handovers: usize,
    (hold_us, pause_us): (u64, u64),
    placement: Option<Placement>,
) -> Result<Handover, BoxErr> {
    let exe = std::env::current_exe()?;
    let acquisitions = handovers / 2 + 6;
    let mut children = Vec::new();
    for _ in 0..2 {
        let child = tokio::process::Command::new(&exe)
            .args([
                "handover-child",
                kind,
                url,
                &key.to_string(),
                &acquisitions.to_string(),
                &hold_us.to_string(),
                &pause_us.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        children.push(child);
    }
    let (all, acq) = collect_logs(&mut children, placement).await?;
    for mut child in children {
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .map_err(|_| "handover child did not exit")??;
        if !status.success() {
            return Err(format!("handover child exited with {status}").into());
        }
    }
    Ok(analyse(&all, acq))
}

/// (time, process, event) of both children, sorted by time.
type Events = Vec<(u64, usize, char)>;

/// Waits for both children's `ready`, pins them, says `go`, reads their
/// logs; the acquisitions of each.
async fn collect_logs(
    children: &mut [tokio::process::Child],
    placement: Option<Placement>,
) -> Result<(Events, [usize; 2]), BoxErr> {
    let mut outs = Vec::new();
    let (mut clients, mut backends) = (Vec::new(), Vec::new());
    for child in children.iter_mut() {
        let stdout = child.stdout.take().ok_or("no child stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .map_err(|_| "handover child not ready within 20 s")??;
        let pids = first
            .as_deref()
            .and_then(|l| l.strip_prefix("ready "))
            .map(|l| {
                l.split_whitespace()
                    .map(str::parse)
                    .collect::<Result<Vec<i32>, _>>()
            });
        let Some(Ok(pids)) = pids else {
            return Err(format!("handover child said {first:?} instead of ready").into());
        };
        let (client, own) = pids.split_first().ok_or("a ready line without a pid")?;
        clients.push(*client);
        backends.extend_from_slice(own);
        outs.push(lines);
    }
    if let Some(p) = placement {
        p.pin_processes(&clients, &backends)?;
    }
    for child in children.iter_mut() {
        let mut stdin = child.stdin.take().ok_or("no child stdin")?;
        stdin.write_all(b"go\n").await?;
        stdin.flush().await?;
    }
    let mut all: Events = Vec::new();
    let mut acq = [0usize; 2];
    for (p, lines) in outs.iter_mut().enumerate() {
        let limit = tokio::time::Instant::now() + CHILD_DEADLINE + Duration::from_secs(20);
        let mut done = false;
        while let Some(line) = tokio::time::timeout_at(limit, lines.next_line())
            .await
            .map_err(|_| "handover child did not finish in time")??
        {
            if line == "done" {
                done = true;
                break;
            }
            if let Some(msg) = line.strip_prefix("error ") {
                return Err(format!("handover child: {msg}").into());
            }
            let mut it = line.split_whitespace();
            let (Some(what), Some(t)) = (it.next(), it.next()) else {
                continue;
            };
            let what = what.chars().next().unwrap_or('?');
            acq[p] += usize::from(what == 'a');
            all.push((t.parse()?, p, what));
        }
        if !done {
            return Err("handover child ended without `done`".into());
        }
    }
    all.sort_unstable();
    Ok((all, acq))
}

/// The handovers in the merged log: from a release while the other process
/// was waiting to the other's acquisition.
fn analyse(all: &Events, acquisitions: [usize; 2]) -> Handover {
    let mut samples = Vec::new();
    let mut reacquired_by_releaser = 0;
    let mut not_waiting = 0;
    let mut last_campaign = [None::<u64>; 2];
    for (i, &(t0, x, what)) in all.iter().enumerate() {
        if what == 'c' {
            last_campaign[x] = Some(t0);
        }
        if what != 'r' {
            continue;
        }
        let other = 1 - x;
        // The next acquisition by anyone after this release.
        let Some(&(t1, y, _)) = all[i + 1..].iter().find(|e| e.2 == 'a') else {
            continue;
        };
        // Was the other process campaigning (not yet holding) at t0?
        let other_waiting = last_campaign[other].is_some_and(|c| {
            c < t0
                && !all[..i]
                    .iter()
                    .any(|e| e.1 == other && e.2 == 'a' && e.0 > c)
        });
        match (y == x, other_waiting) {
            (true, true) => reacquired_by_releaser += 1,
            (false, true) => samples.push(t1 - t0),
            (false, false) => not_waiting += 1,
            (true, false) => {}
        }
    }
    Handover {
        lat: Lat::from_nanos(samples.clone()),
        samples,
        reacquired_by_releaser,
        not_waiting,
        acquisitions,
    }
}

impl Handover {
    /// A copy (for pooling while the rounds are still needed).
    pub fn clone_summary(&self) -> Handover {
        Handover {
            lat: self.lat,
            samples: self.samples.clone(),
            reacquired_by_releaser: self.reacquired_by_releaser,
            not_waiting: self.not_waiting,
            acquisitions: self.acquisitions,
        }
    }

    /// The rounds of one contender, pooled.
    pub fn pool(rounds: Vec<Handover>) -> Handover {
        let mut samples = Vec::new();
        let (mut re, mut nw, mut acq) = (0, 0, [0, 0]);
        for h in rounds {
            samples.extend(h.samples);
            re += h.reacquired_by_releaser;
            nw += h.not_waiting;
            acq[0] += h.acquisitions[0];
            acq[1] += h.acquisitions[1];
        }
        Handover {
            lat: Lat::from_nanos(samples.clone()),
            samples,
            reacquired_by_releaser: re,
            not_waiting: nw,
            acquisitions: acq,
        }
    }
}
