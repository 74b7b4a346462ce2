//! Helpers shared by the integration tests of `advisory-locked`.
//!
//! - [`db_url`]: the server every test uses (`DATABASE_URL`, else the local default);
//! - [`unique`]: names (keys, registry entries, tables) unique to this test
//!   run, because tests run in parallel threads of one process and parallel
//!   processes against one server;
//! - [`raw_connect`]: a plain tokio-postgres connection, outside the crate;
//! - [`advisory_locks`] / [`wait_until_unlocked`]: what `pg_locks` says about
//!   given keys, decoded back into [`KeyId`]s;
//! - [`ThrowawayServer`]: an independent PostgreSQL server in a temporary
//!   directory, for the tests that need a second server or a standby;
//! - [`Prng`]: a small seeded random generator (no `rand` dependency).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use advisory_locked::KeyId;
use tokio_postgres::{Client, NoTls};

pub mod blackhole;
pub mod capture;
pub mod limits;
pub mod transaction;
pub mod visibility;
pub mod workers;

/// The server under test: `DATABASE_URL` when set, else the local default.
pub fn db_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A name unique to this process and call: `{prefix}-{pid}-{n}`. Use it for
/// keys, registry entry names and tables.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A name usable as an SQL identifier (`[a-z0-9_]`), unique as [`unique`].
pub fn unique_ident(prefix: &str) -> String {
    unique(prefix)
        .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        .to_lowercase()
}

/// A plain tokio-postgres connection (its connection task runs on the
/// current runtime).
pub async fn raw_connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test server: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// One advisory lock as `pg_locks` shows it, with its key decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdvisoryLock {
    /// The server process (session) that holds or awaits it.
    pub pid: i32,
    /// The key: `objsubid` = 1 is a 64-bit key (`classid` high 32 bits,
    /// `objid` low 32 bits), `objsubid` = 2 is a pair (`classid`, `objid`).
    pub key: KeyId,
    /// `ExclusiveLock` or `ShareLock`.
    pub mode: String,
    /// False while a session waits for it.
    pub granted: bool,
    /// The raw columns, for layout checks: (`classid`, `objid`, `objsubid`).
    pub raw: (u32, u32, i16),
}

/// Decodes `pg_locks` columns of an advisory lock into a key.
pub fn decode_key(classid: u32, objid: u32, objsubid: i16) -> KeyId {
    match objsubid {
        1 => KeyId::Int(((u64::from(classid) << 32) | u64::from(objid)) as i64),
        2 => KeyId::Pair(classid as i32, objid as i32),
        other => panic!("unexpected objsubid {other} for an advisory lock"),
    }
}

/// The advisory locks of the client's current database whose keys are in
/// `keys` (granted or awaited).
pub async fn advisory_locks(client: &Client, keys: &[KeyId]) -> Vec<AdvisoryLock> {
    try_advisory_locks(client, keys)
        .await
        .expect("pg_locks query failed")
}

/// [`advisory_locks`], or the query's error (e.g. "out of shared memory"
/// while a server's lock table is full: the query needs locks too).
pub async fn try_advisory_locks(
    client: &Client,
    keys: &[KeyId],
) -> Result<Vec<AdvisoryLock>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT pid, classid::oid::int8, objid::oid::int8, objsubid::int2, mode, granted \
             FROM pg_locks \
             WHERE locktype = 'advisory' \
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let classid = r.get::<_, i64>(1) as u32;
            let objid = r.get::<_, i64>(2) as u32;
            let objsubid: i16 = r.get(3);
            AdvisoryLock {
                pid: r.get(0),
                key: decode_key(classid, objid, objsubid),
                mode: r.get(4),
                granted: r.get(5),
                raw: (classid, objid, objsubid),
            }
        })
        .filter(|l| keys.contains(&l.key))
        .collect())
}

/// Polls `pg_locks` (every 20 ms, at most `limit`) until none of `keys` is
/// held or awaited; returns what was still there at the end (empty on success).
pub async fn wait_until_unlocked(
    client: &Client,
    keys: &[KeyId],
    limit: Duration,
) -> Vec<AdvisoryLock> {
    let start = Instant::now();
    loop {
        let left = advisory_locks(client, keys).await;
        if left.is_empty() || start.elapsed() >= limit {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `pg_locks` until `keys` are all held (granted) by some session, at
/// most `limit`; returns the locks seen last.
pub async fn wait_until_locked(
    client: &Client,
    keys: &[KeyId],
    limit: Duration,
) -> Vec<AdvisoryLock> {
    let start = Instant::now();
    loop {
        let held = advisory_locks(client, keys).await;
        let all = keys
            .iter()
            .all(|k| held.iter().any(|l| l.key == *k && l.granted));
        if all || start.elapsed() >= limit {
            return held;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A port on 127.0.0.1 that nothing listened on a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("cannot bind a free port")
        .port()
}

/// A small deterministic random generator (SplitMix64).
#[derive(Debug, Clone)]
pub struct Prng(u64);

impl Prng {
    /// Seeded with `seed`, silently.
    pub fn new(seed: u64) -> Prng {
        Prng(seed)
    }

    /// Seeded with `seed`, or with `ADVISORY_TEST_SEED` when that is set
    /// (to replay a failure); prints the seed it uses.
    pub fn seeded(what: &str, seed: u64) -> Prng {
        let seed = std::env::var("ADVISORY_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(seed);
        println!("{what}: PRNG seed {seed} (set ADVISORY_TEST_SEED to replay)");
        Prng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }
}

/// An independent PostgreSQL server: a fresh cluster in a temporary
/// directory (trust auth, loopback only, its unix socket in that directory),
/// on a free port, stopped and deleted on drop.
///
/// Runs the installed binaries (`/usr/lib/postgresql/*/bin`) as the
/// `postgres` user through `runuser` when this process is root (initdb
/// refuses to run as root).
#[derive(Debug)]
pub struct ThrowawayServer {
    dir: PathBuf,
    data: PathBuf,
    port: u16,
    bin: PathBuf,
    running: bool,
}

/// How long starting a throwaway server may take before the test fails.
const START_LIMIT: Duration = Duration::from_secs(60);

impl ThrowawayServer {
    /// Creates and starts a fresh cluster. Panics (failing the test) with the
    /// server's log if that does not work within a bounded time.
    pub fn start() -> ThrowawayServer {
        Self::start_with(&[])
    }

    /// A hot standby of `primary`, made with `pg_basebackup -R` and started
    /// on its own port. Returns once it accepts connections.
    pub fn standby_of(primary: &ThrowawayServer) -> ThrowawayServer {
        let mut server = Self::empty("standby");
        let data = server.data.display().to_string();
        let port = primary.port.to_string();
        server.run(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                &data,
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ],
        );
        server.launch();
        server
    }

    fn empty(what: &str) -> ThrowawayServer {
        let bin = pg_bin_dir();
        let dir = std::env::temp_dir().join(unique(&format!("advisory-locked-{what}")));
        std::fs::create_dir_all(&dir).expect("cannot create the server's temp dir");
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .expect("cannot run chown");
            assert!(status.success(), "chown of {} failed", dir.display());
        }
        let data = dir.join("data");
        ThrowawayServer {
            dir,
            data,
            port: free_port(),
            bin,
            running: false,
        }
    }

    /// Runs one of the server's binaries as the server's user; panics with
    /// its output if it fails.
    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args).current_dir(&self.dir).stdin(Stdio::null());
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()));
        assert!(
            out.status.success(),
            "{tool} failed ({}):\n{}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for database `db` as user `postgres`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The directory of the server's Unix-domain socket (`-k`).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for ThrowawayServer {
    fn drop(&mut self) {
        if self.running {
            let exe = self.bin.join("pg_ctl");
            let mut cmd = if is_root() {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(&exe);
                c
            } else {
                Command::new(&exe)
            };
            let _ = cmd
                .args(["-D"])
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "-t", "30", "stop"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    // No libc dependency: ask `id -u`.
    static ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false)
    })
}

/// The newest `/usr/lib/postgresql/<version>/bin` (or `PG_BIN_DIR`).
pub fn pg_bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("no /usr/lib/postgresql: install the PostgreSQL server binaries")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .expect("no /usr/lib/postgresql/*/bin/initdb found")
}

/// A table created for one test run and dropped (best effort) on drop.
#[derive(Debug)]
pub struct ScratchTable {
    /// The table's name (an identifier unique to this run).
    pub name: String,
    url: String,
}

impl ScratchTable {
    /// Creates `{prefix}_{pid}_{n}` with the given column list, e.g.
    /// `"(id bigserial primary key, key text)"`.
    pub async fn create(client: &Client, prefix: &str, columns: &str) -> ScratchTable {
        let name = unique_ident(prefix);
        client
            .batch_execute(&format!("CREATE UNLOGGED TABLE {name} {columns}"))
            .await
            .unwrap_or_else(|e| panic!("cannot create table {name}: {e}"));
        ScratchTable {
            name,
            url: db_url(),
        }
    }
}

impl Drop for ScratchTable {
    fn drop(&mut self) {
        let sql = format!("DROP TABLE IF EXISTS {}", self.name);
        let url = self.url.clone();
        // Drop can't await, and may run inside a runtime: use a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let (client, conn) = tokio_postgres::connect(&url, NoTls).await.ok()?;
                tokio::spawn(conn);
                client.batch_execute(&sql).await.ok()
            })
        })
        .join();
    }
}

/// The columns of the tables that record lock holds: one row per body run,
/// `entered`/`exited` stamped with the server's `clock_timestamp()`.
pub const HOLDS_COLUMNS: &str = "(id bigserial PRIMARY KEY, key text NOT NULL, pid int NOT NULL, \
     round int NOT NULL, shared bool NOT NULL DEFAULT false, \
     entered timestamptz NOT NULL DEFAULT clock_timestamp(), exited timestamptz)";

/// Counts in a holds table ([`HOLDS_COLUMNS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldStats {
    /// All rows.
    pub rows: i64,
    /// Rows whose body never recorded its exit.
    pub unfinished: i64,
    /// Pairs of rows of one key whose `[entered, exited)` intervals overlap
    /// and at least one of which was exclusive: must be 0.
    pub conflicting_overlaps: i64,
    /// Pairs of shared rows of one key that overlapped (allowed).
    pub shared_overlaps: i64,
}

/// Checks a holds table with SQL: a self-join on overlapping intervals of one key.
pub async fn hold_stats(client: &Client, table: &str) -> HoldStats {
    let row = client
        .query_one(
            &format!(
                "SELECT (SELECT count(*) FROM {table}), \
                        (SELECT count(*) FROM {table} WHERE exited IS NULL), \
                        count(*) FILTER (WHERE NOT (a.shared AND b.shared)), \
                        count(*) FILTER (WHERE a.shared AND b.shared) \
                 FROM {table} a JOIN {table} b \
                   ON a.key = b.key AND a.id < b.id \
                  AND tstzrange(a.entered, a.exited, '[)') && tstzrange(b.entered, b.exited, '[)')"
            ),
            &[],
        )
        .await
        .expect("overlap query failed");
    HoldStats {
        rows: row.get(0),
        unfinished: row.get(1),
        conflicting_overlaps: row.get(2),
        shared_overlaps: row.get(3),
    }
}

/// Installs a registry entry named `pool` for the test server (2 sessions).
/// Call it inside the test that uses it: its sessions live on that test's runtime.
pub async fn install(pool: &str) -> advisory_locked::Locker {
    advisory_locked::LockConfig::from_url(&db_url())
        .expect("DATABASE_URL")
        .name(pool)
        .sessions(2)
        .install()
        .await
        .unwrap_or_else(|e| panic!("cannot install registry entry {pool:?}: {e}"))
}

/// Takes `key` on a plain connection, outside the crate, waiting for it
/// (`pg_advisory_lock[_shared]`).
pub async fn pg_lock(client: &Client, key: KeyId, mode: advisory_locked::Mode) {
    pg_advisory(client, "pg_advisory_lock", key, mode)
        .await
        .expect("pg_advisory_lock failed");
}

/// Releases `key` on a plain connection; true if the session held it.
pub async fn pg_unlock(client: &Client, key: KeyId, mode: advisory_locked::Mode) -> bool {
    pg_advisory(client, "pg_advisory_unlock", key, mode)
        .await
        .expect("pg_advisory_unlock failed")
        .get(0)
}

/// `SELECT <function>[_shared](key)` for either key space.
async fn pg_advisory(
    client: &Client,
    function: &str,
    key: KeyId,
    mode: advisory_locked::Mode,
) -> Result<tokio_postgres::Row, tokio_postgres::Error> {
    let shared = if mode == advisory_locked::Mode::Shared {
        "_shared"
    } else {
        ""
    };
    match key {
        KeyId::Int(k) => {
            let sql = format!("SELECT {function}{shared}($1::int8)");
            client.query_one(&sql, &[&k]).await
        }
        KeyId::Pair(a, b) => {
            let sql = format!("SELECT {function}{shared}($1::int4, $2::int4)");
            client.query_one(&sql, &[&a, &b]).await
        }
    }
}

/// The key id a template key such as `"tenant:{t}"` formats to.
pub fn named(name: &str) -> KeyId {
    KeyId::Int(advisory_locked::key_hash(name))
}

/// `db_url()` with `application_name` set to `app`, so that a test can
/// count its own sessions in `pg_stat_activity`.
pub fn db_url_with_app(app: &str) -> String {
    let url = db_url();
    if url.contains("://") {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}application_name={app}")
    } else {
        format!("{url} application_name={app}")
    }
}

/// How many sessions with this `application_name` are connected now.
pub async fn sessions_named(client: &Client, app: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .expect("pg_stat_activity query failed")
        .get(0)
}

/// Polls all futures in one task, in order: their requests are queued in
/// the same turn.
pub async fn join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<_> = futs.into_iter().map(Box::pin).map(Some).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if let Some(fut) = f {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        *o = Some(v);
                        *f = None;
                    }
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.into_iter().map(|o| o.unwrap()).collect()
}

// ---------------------------------------------------------------------------
// Fault-injection helpers (tests/tests/faults_*.rs)
// ---------------------------------------------------------------------------

/// Microseconds since the Unix epoch on this host's clock: comparable across
/// the processes of one machine (and with the server's `clock_timestamp()`).
pub fn unix_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// `pg_terminate_backend(pid)`; true if a backend of that pid was signalled.
pub async fn terminate_backend(client: &Client, pid: i32) -> bool {
    client
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("pg_terminate_backend failed")
        .get(0)
}

/// The server pids of the client backends connected with `application_name` = `app`.
pub async fn backends_named(client: &Client, app: &str) -> Vec<i32> {
    client
        .query(
            "SELECT pid FROM pg_stat_activity \
             WHERE application_name = $1 AND backend_type = 'client backend' ORDER BY pid",
            &[&app],
        )
        .await
        .expect("pg_stat_activity query failed")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A connection URL for database `db` of the test server (`db_url()` with
/// its database name replaced).
pub fn db_url_for_database(db: &str) -> String {
    let url = db_url();
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b.to_owned(), format!("?{q}")),
        None => (url.clone(), String::new()),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[scheme_end..].find('/') {
        Some(i) => base[..scheme_end + i].to_owned(),
        None => base,
    };
    format!("{base}/{db}{query}")
}

/// A database of the test server made for one test, dropped (best effort,
/// `WITH (FORCE)`) when this is dropped.
#[derive(Debug)]
pub struct TempDatabase {
    /// Its name (an SQL identifier).
    pub name: String,
}

impl TempDatabase {
    /// `CREATE DATABASE <unique name from prefix>` through `admin`.
    pub async fn create(admin: &Client, prefix: &str) -> TempDatabase {
        let name = unique_ident(prefix);
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        TempDatabase { name }
    }

    /// A connection URL for it.
    pub fn url(&self) -> String {
        db_url_for_database(&self.name)
    }
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        // On a thread of its own: a drop may run outside any runtime.
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let (client, conn) = tokio_postgres::connect(&db_url(), NoTls).await.ok()?;
                tokio::spawn(conn);
                client.batch_execute(&sql).await.ok()
            })
        })
        .join();
    }
}

impl ThrowawayServer {
    /// Like [`ThrowawayServer::start`], with extra server settings on the
    /// command line (they override the defaults), e.g.
    /// `&["max_locks_per_transaction=10", "max_connections=10"]`. Kept for
    /// [`ThrowawayServer::start_again`].
    pub fn start_with(settings: &[&str]) -> ThrowawayServer {
        let mut server = Self::empty("primary");
        let data = server.data.display().to_string();
        server.run(
            "initdb",
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
        );
        let extra: String = settings.iter().map(|s| format!(" -c {s}")).collect();
        std::fs::write(server.dir.join("extra-settings"), &extra)
            .expect("cannot write the extra settings");
        server.launch();
        server
    }

    /// Stops the server (`pg_ctl stop -m <mode>`: `smart`, `fast` or
    /// `immediate`) and waits until it is down. Blocking.
    pub fn stop(&mut self, mode: &str) {
        let data = self.data.display().to_string();
        self.run(
            "pg_ctl",
            &["-D", &data, "-m", mode, "-w", "-t", "30", "stop"],
        );
        self.running = false;
    }

    /// Starts a stopped server again, same data, port and settings, and
    /// waits until it accepts TCP connections. Blocking.
    pub fn start_again(&mut self) {
        assert!(!self.running, "the server is running");
        self.launch();
    }

    fn launch(&mut self) {
        let extra = std::fs::read_to_string(self.dir.join("extra-settings")).unwrap_or_default();
        let data = self.data.display().to_string();
        let log = self.dir.join("server.log").display().to_string();
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=40 -c shared_buffers=16MB{extra}",
            self.port,
            self.dir.display()
        );
        let timeout = START_LIMIT.as_secs().to_string();
        self.running = true;
        self.run(
            "pg_ctl",
            &[
                "-D", &data, "-l", &log, "-o", &opts, "-w", "-t", &timeout, "start",
            ],
        );
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                start.elapsed() < START_LIMIT,
                "server did not listen:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

// ---------------------------------------------------------------------------
// TLS and proxy helpers (tests/tests/tls.rs, tests/tests/pgbouncer.rs)
// ---------------------------------------------------------------------------

/// Runs `exe` with `args` in `dir`; panics with its output if it fails.
fn run_checked(exe: &str, args: &[&str], dir: &Path) {
    let out = Command::new(exe)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {exe} (is it installed?): {e}"));
    assert!(
        out.status.success(),
        "{exe} {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A temporary directory that the server's user can read (owned by
/// `postgres` when this process is root), deleted on drop.
#[derive(Debug)]
pub struct ServerReadableDir {
    /// Its path.
    pub path: PathBuf,
}

impl ServerReadableDir {
    /// Creates `{temp}/{prefix}-{pid}-{n}`.
    pub fn create(prefix: &str) -> ServerReadableDir {
        let path = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&path).expect("cannot create a temp dir");
        ServerReadableDir { path }
    }

    /// Gives everything in it to `postgres` (when root); a no-op otherwise.
    pub fn hand_over(&self) {
        if is_root() {
            run_checked(
                "chown",
                &["-R", "postgres:postgres", &self.path.display().to_string()],
                &self.path,
            );
        }
    }
}

impl Drop for ServerReadableDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Certificates made for one test with the `openssl` command line (P-256
/// keys, valid for two days), in a directory the server can read, private
/// keys mode 0600:
///
/// - `ca.crt`: a throwaway certificate authority, which signed
/// - `server.crt` / `server.key`: a server certificate for `127.0.0.1` and `localhost`;
/// - `self.crt` / `self.key`: a self-signed server certificate (not a CA) for the same names;
/// - `other-ca.crt`: another authority, which signed nothing here.
#[derive(Debug)]
pub struct TestCertificates {
    dir: ServerReadableDir,
}

/// The extensions of a server certificate, and the `openssl req` settings
/// that make a self-signed one.
const LEAF_CNF: &str = "[req]\n\
distinguished_name = dn\n\
x509_extensions = leaf\n\
prompt = no\n\
[dn]\n\
CN = 127.0.0.1\n\
[leaf]\n\
subjectAltName = IP:127.0.0.1,DNS:localhost\n\
basicConstraints = critical,CA:FALSE\n\
keyUsage = critical,digitalSignature\n\
extendedKeyUsage = serverAuth\n";

impl TestCertificates {
    /// Makes them; panics if `openssl` is missing or fails.
    pub fn make() -> TestCertificates {
        let dir = ServerReadableDir::create("advisory-locked-certs");
        let d = &dir.path;
        std::fs::write(d.join("leaf.cnf"), LEAF_CNF).expect("cannot write leaf.cnf");
        let key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for (name, cn) in [
            ("ca", "advisory-locked test CA"),
            ("other-ca", "another CA"),
        ] {
            let (keyout, out, subj) = (
                format!("{name}.key"),
                format!("{name}.crt"),
                format!("/CN={cn}"),
            );
            let mut args = vec!["req", "-x509"];
            args.extend(key);
            args.extend([
                "-keyout", &keyout, "-out", &out, "-days", "2", "-subj", &subj,
            ]);
            run_checked("openssl", &args, d);
        }
        let mut args = vec!["req", "-new"];
        args.extend(key);
        args.extend([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        run_checked("openssl", &args, d);
        run_checked(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.crt",
                "-days",
                "2",
                "-extfile",
                "leaf.cnf",
                "-extensions",
                "leaf",
            ],
            d,
        );
        let mut args = vec!["req", "-x509", "-config", "leaf.cnf"];
        args.extend(key);
        args.extend(["-keyout", "self.key", "-out", "self.crt", "-days", "2"]);
        run_checked("openssl", &args, d);
        for k in ["ca.key", "other-ca.key", "server.key", "self.key"] {
            run_checked("chmod", &["600", k], d);
        }
        dir.hand_over();
        TestCertificates { dir }
    }

    /// The path of one of the files (`"server.crt"`, `"server.key"`, ...).
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path.join(file)
    }

    /// The PEM text of one of the files.
    pub fn pem(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.path(file)).unwrap_or_else(|e| panic!("cannot read {file}: {e}"))
    }
}

/// A PostgreSQL server (a [`ThrowawayServer`]) that accepts only TLS on TCP:
/// `ssl = on` with `cert` / `key` of `certs` (e.g. `"server.crt"`,
/// `"server.key"`), and a `pg_hba.conf` of its own: trust over TLS from
/// 127.0.0.1, reject without TLS, trust on its unix socket.
#[derive(Debug)]
pub struct TlsServer {
    /// The server (its unix socket is in the parent of its data directory).
    pub server: ThrowawayServer,
    _hba: ServerReadableDir,
}

impl TlsServer {
    /// Starts it; panics with the server's log if that fails.
    pub fn start(certs: &TestCertificates, cert: &str, key: &str) -> TlsServer {
        let hba = ServerReadableDir::create("advisory-locked-hba");
        std::fs::write(
            hba.path.join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all all 127.0.0.1/32 trust\n\
             hostnossl all all 127.0.0.1/32 reject\n",
        )
        .expect("cannot write pg_hba.conf");
        hba.hand_over();
        let settings = [
            "ssl=on".to_owned(),
            format!("ssl_cert_file={}", certs.path(cert).display()),
            format!("ssl_key_file={}", certs.path(key).display()),
            format!("hba_file={}", hba.path.join("pg_hba.conf").display()),
        ];
        let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
        let server = ThrowawayServer::start_with(&settings);
        TlsServer { server, _hba: hba }
    }

    /// A URL for database `postgres` as `postgres` over TCP, with `params`
    /// (e.g. `"sslmode=require"`, or `""`).
    pub fn url(&self, params: &str) -> String {
        let url = self.server.url("postgres");
        if params.is_empty() {
            url
        } else {
            format!("{url}?{params}")
        }
    }

    /// A plain connection over the server's unix socket (no TLS needed).
    pub async fn local_client(&self) -> Client {
        let socket_dir = self
            .server
            .data_dir()
            .parent()
            .expect("the data dir has a parent")
            .display()
            .to_string();
        raw_connect(&format!(
            "host={socket_dir} port={} user=postgres dbname=postgres",
            self.server.port()
        ))
        .await
    }
}

/// A real pgbouncer (the Debian package's `/usr/sbin/pgbouncer`, or
/// `PGBOUNCER`) in front of the test server ([`db_url`]), on a free port of
/// 127.0.0.1, with `auth_type = trust`; killed on drop. Started as
/// `postgres` through `runuser` when this process is root (pgbouncer refuses
/// to run as root).
#[derive(Debug)]
pub struct Pgbouncer {
    dir: ServerReadableDir,
    port: u16,
    db: String,
    user: String,
}

impl Pgbouncer {
    /// Starts one whose `[pgbouncer]` section ends with `settings` (e.g.
    /// `"pool_mode = transaction"`, `"default_pool_size = 1"`), and waits
    /// (at most 20 s) until it listens. Panics with its log if it does not.
    pub fn start(settings: &[&str]) -> Pgbouncer {
        use tokio_postgres::config::Host;
        let backend: tokio_postgres::Config = db_url().parse().expect("DATABASE_URL");
        let host = match backend.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "127.0.0.1".to_owned(),
        };
        let backend_port = backend.get_ports().first().copied().unwrap_or(5432);
        let user = backend.get_user().unwrap_or("postgres").to_owned();
        let db = backend.get_dbname().unwrap_or(&user).to_owned();
        let password = match backend.get_password() {
            Some(p) => format!(
                " password='{}'",
                String::from_utf8_lossy(p).replace('\'', "\\'")
            ),
            None => String::new(),
        };
        let dir = ServerReadableDir::create("advisory-locked-pgbouncer");
        let d = dir.path.display();
        let port = free_port();
        let ini = format!(
            "[databases]\n\
             {db} = host={host} port={backend_port} dbname={db} user={user}{password}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {d}/userlist.txt\n\
             logfile = {d}/pgbouncer.log\n\
             pidfile = {d}/pgbouncer.pid\n\
             max_client_conn = 200\n\
             ignore_startup_parameters = extra_float_digits\n\
             {}\n",
            settings.join("\n")
        );
        std::fs::write(dir.path.join("pgbouncer.ini"), ini).expect("cannot write pgbouncer.ini");
        std::fs::write(dir.path.join("userlist.txt"), format!("\"{user}\" \"\"\n"))
            .expect("cannot write userlist.txt");
        run_checked("chmod", &["600", "pgbouncer.ini"], &dir.path);
        dir.hand_over();
        let exe = std::env::var("PGBOUNCER").unwrap_or_else(|_| {
            if Path::new("/usr/sbin/pgbouncer").exists() {
                "/usr/sbin/pgbouncer".to_owned()
            } else {
                "pgbouncer".to_owned()
            }
        });
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", &exe]);
            c
        } else {
            Command::new(&exe)
        };
        // Daemonized (-d): the command returns once it has forked; its own
        // messages go to the log file. Its output goes to a file, so that
        // the daemon holds no pipe of ours.
        let stderr = std::fs::File::create(dir.path.join("start.err")).expect("start.err");
        let status = cmd
            .arg("-d")
            .arg(dir.path.join("pgbouncer.ini"))
            .current_dir(&dir.path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {exe} (install pgbouncer; .ci/run does): {e}"));
        let bouncer = Pgbouncer {
            dir,
            port,
            db,
            user,
        };
        assert!(
            status.success(),
            "pgbouncer failed to start ({status}):\n{}",
            bouncer.log()
        );
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "pgbouncer did not listen:\n{}",
                bouncer.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        bouncer
    }

    /// A connection URL through the proxy (no password: `auth_type = trust`).
    pub fn url(&self) -> String {
        format!(
            "postgres://{}@127.0.0.1:{}/{}",
            self.user, self.port, self.db
        )
    }

    /// Its log and start-up errors so far (for failure messages).
    pub fn log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path.join(f)).unwrap_or_default();
        format!("{}{}", read("start.err"), read("pgbouncer.log"))
    }
}

impl Drop for Pgbouncer {
    fn drop(&mut self) {
        // SIGKILL: immediate in every version; the backends it held see
        // their sockets close and end, freeing their locks.
        let pid = std::fs::read_to_string(self.dir.path.join("pgbouncer.pid")).unwrap_or_default();
        let pid = pid.trim();
        if !pid.is_empty() {
            let _ = Command::new("kill")
                .args(["-KILL", pid])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            // Gone, or a zombie (a daemon's parent may never reap it).
            let stat = Path::new("/proc").join(pid).join("stat");
            let alive = || {
                std::fs::read_to_string(&stat)
                    .map(|s| {
                        s.rsplit(')')
                            .next()
                            .map(str::trim_start)
                            .is_some_and(|s| !s.starts_with('Z'))
                    })
                    .unwrap_or(false)
            };
            let start = Instant::now();
            while alive() && start.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// The next line of a child's output, at most `limit` away; panics (failing
/// the test) naming `what` if it does not come.
pub async fn next_line<R>(lines: &mut tokio::io::Lines<R>, what: &str, limit: Duration) -> String
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    tokio::time::timeout(limit, lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("the worker did not say {what:?} within {limit:?}"))
        .expect("worker output")
        .unwrap_or_else(|| panic!("the worker ended before saying {what:?}"))
}
