//! The built `advisory-locked` binary against the real server
//! (postgres://postgres@127.0.0.1:5432/postgres; DATABASE_URL overrides):
//! keys held by raw tokio-postgres connections, every command, the exit
//! codes. Each test locks keys of its own.

use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use advisory_locked::{key_hash, KeyId};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio_postgres::{Client, NoTls};

const BIN: &str = env!("CARGO_BIN_EXE_advisory-locked");

fn url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A key name no other test (or run) uses.
fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "cli-test:{tag}:{}:{nanos}:{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A raw connection (not the crate's), its `pg_backend_pid()`.
async fn connect(application_name: &str) -> (Client, i32) {
    let mut config: tokio_postgres::Config = url().parse().expect("DATABASE_URL parses");
    config.application_name(application_name);
    let (client, connection) = config.connect(NoTls).await.expect("connect");
    tokio::spawn(connection);
    let pid = client
        .query_one("SELECT pg_catalog.pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    (client, pid)
}

/// A connection holding `key` (session level).
async fn hold(key: KeyId) -> (Client, i32) {
    let (client, pid) = connect("cli-test-holder").await;
    match key {
        KeyId::Int(k) => client
            .execute("SELECT pg_catalog.pg_advisory_lock($1::bigint)", &[&k])
            .await
            .expect("lock"),
        KeyId::Pair(a, b) => client
            .execute(
                "SELECT pg_catalog.pg_advisory_lock($1::integer, $2::integer)",
                &[&a, &b],
            )
            .await
            .expect("lock"),
    };
    (client, pid)
}

/// Runs the binary with `args` (DATABASE_URL set), `stdin` fed to it.
async fn run_with(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = command(args).spawn().expect("the binary starts");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.as_bytes())
        .await
        .expect("stdin write");
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the binary ends within 60 s")
        .expect("output");
    (
        out.status.code().expect("exited, not killed"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn run(args: &[&str]) -> (i32, String, String) {
    run_with(args, "").await
}

fn command(args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .env("DATABASE_URL", url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// The pids awaiting (not granted) the 64-bit `key`, with their application.
async fn waiters(observer: &Client, key: i64) -> Vec<(i32, String)> {
    observer
        .query(
            "SELECT l.pid, a.application_name FROM pg_catalog.pg_locks l \
             JOIN pg_catalog.pg_stat_activity a ON a.pid OPERATOR(pg_catalog.=) l.pid \
             WHERE l.locktype OPERATOR(pg_catalog.=) 'advisory' AND NOT l.granted \
             AND l.objsubid OPERATOR(pg_catalog.=) 1 \
             AND l.classid OPERATOR(pg_catalog.=) $1 AND l.objid OPERATOR(pg_catalog.=) $2",
            &[&(((key as u64) >> 32) as u32), &(key as u32)],
        )
        .await
        .expect("pg_locks")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn json_line(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test]
async fn status_and_who_show_the_holder() {
    let name = unique("status");
    let key = key_hash(&name);
    let (_holder, pid) = hold(KeyId::Int(key)).await;

    let (code, out, err) = run(&["status", "--name", &name]).await;
    assert_eq!(code, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with(&key.to_string()))
        .unwrap_or_else(|| panic!("key {key} not in:\n{out}"));
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cells[1], name, "{line}");
    assert_eq!(
        &cells[2..5],
        ["exclusive", "held", &pid.to_string()],
        "{line}"
    );

    let (code, out, err) = run(&["status", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let status = json_line(&out);
    let ours: Vec<&Value> = status["locks"]
        .as_array()
        .expect("locks")
        .iter()
        .filter(|l| l["key"] == key)
        .collect();
    assert_eq!(ours.len(), 1, "{out}");
    assert_eq!(ours[0]["pid"], pid);
    assert_eq!(ours[0]["granted"], true);
    assert_eq!(ours[0]["application_name"], "cli-test-holder");

    let (code, out, err) = run(&["who", &name]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(&format!("key {key} ({name})\n")), "{out}");
    let holder = out.lines().nth(2).expect("a holder row");
    let cells: Vec<&str> = holder.split_whitespace().collect();
    assert_eq!(
        &cells[..4],
        ["holder", &pid.to_string(), "exclusive", "cli-test-holder"]
    );

    let (code, out, err) = run(&["who", &name, "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let who = json_line(&out);
    assert_eq!(who["held"], true);
    assert_eq!(who["key"], key);
    assert_eq!(who["name"], name.as_str());
    assert_eq!(who["holders"][0]["pid"], pid);
    assert_eq!(who["holders"][0]["user"], "postgres");
    let client = who["holders"][0]["client"].as_str().unwrap_or("");
    assert!(
        client.starts_with("127.0.0.1:") || client == "local",
        "{out}"
    );
    assert_eq!(who["waiting"].as_array().map(Vec::len), Some(0), "{out}");
}

#[tokio::test]
async fn key_prints_key_hash() {
    let (code, out, err) = run(&["key", "report:daily", "42", "tenant:7"]).await;
    assert_eq!(code, 0, "{err}");
    for name in ["report:daily", "42", "tenant:7"] {
        let number = key_hash(name);
        assert!(out.contains(&format!("name      {name}\n")), "{out}");
        assert!(out.contains(&format!("key       {number} ")), "{out}");
    }
    assert!(out.contains("754907581750802352"), "{out}");
    assert!(
        out.contains("l.classid = 175765618 AND l.objid = 679573424 AND l.objsubid = 1"),
        "{out}"
    );

    let (code, out, err) = run(&["key", "--json", "report:daily", "it's"]).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Value> = out.lines().map(json_line).collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[0]["key"], key_hash("report:daily"));
    assert_eq!(lines[1]["key"], key_hash("it's"));
    let (classid, objid) = (lines[1]["classid"].as_u64(), lines[1]["objid"].as_u64());
    let k = key_hash("it's") as u64;
    assert_eq!((classid, objid), (Some(k >> 32), Some(k & 0xffff_ffff)));
    assert_eq!(lines[1]["hash_sql"], "SELECT hashtextextended('it''s', 0);");

    // The psql query finds the holder.
    let name = unique("key-query");
    let (_holder, pid) = hold(KeyId::Int(key_hash(&name))).await;
    let (code, out, _) = run(&["key", "--json", &name]).await;
    assert_eq!(code, 0);
    let query = json_line(&out)["psql"].as_str().expect("psql").to_owned();
    let (observer, _) = connect("cli-test-observer").await;
    let rows = observer
        .query(query.as_str(), &[])
        .await
        .expect("the query runs");
    assert_eq!(rows.len(), 1, "{query}");
    assert_eq!(rows[0].get::<_, i32>(0), pid);
}

#[tokio::test]
async fn wait_blocks_while_held_and_returns_when_released() {
    let name = unique("wait");
    let key = key_hash(&name);
    let (holder, _) = hold(KeyId::Int(key)).await;
    let (observer, _) = connect("cli-test-observer").await;

    let mut child = command(&["wait", &name, "--timeout", "60s"])
        .spawn()
        .expect("the binary starts");
    let waiting = until_waiting(&observer, key, &mut child).await;
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert_eq!(waiting[0].1, "advisory-locked-cli");
    // who lists it as waiting.
    let (code, out, _) = run(&["who", &name, "--json"]).await;
    assert_eq!(code, 0);
    assert_eq!(json_line(&out)["waiting"][0]["pid"], waiting[0].0, "{out}");
    assert!(child.try_wait().expect("try_wait").is_none());

    holder
        .execute("SELECT pg_catalog.pg_advisory_unlock($1::bigint)", &[&key])
        .await
        .expect("unlock");
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("wait ends once the key is released")
        .expect("exit status");
    assert_eq!(status.code(), Some(0));
    // It let the key go: nobody holds it now.
    let (code, _, _) = run(&["who", &name]).await;
    assert_eq!(code, 4);
}

/// Until the binary's own connection waits for `key` on the server; the
/// binary must not have ended before.
async fn until_waiting(
    observer: &Client,
    key: i64,
    child: &mut tokio::process::Child,
) -> Vec<(i32, String)> {
    let started = Instant::now();
    loop {
        let w = waiters(observer, key).await;
        if !w.is_empty() {
            return w;
        }
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "wait ended while the key is held"
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the binary never waited for the key"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn ctrl_c_cancels_the_wait_on_the_server() {
    let name = unique("interrupt");
    let key = key_hash(&name);
    let (_holder, _) = hold(KeyId::Int(key)).await;
    let (observer, _) = connect("cli-test-observer").await;
    let mut child = command(&["wait", &name, "--timeout", "10m"])
        .spawn()
        .expect("the binary starts");
    until_waiting(&observer, key, &mut child).await;
    let pid = child.id().expect("running").to_string();
    let kill = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill runs");
    assert!(kill.success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("wait ends on SIGINT")
        .expect("exit status");
    assert_eq!(status.code(), Some(130));
    // Its wait on the server was cancelled (not left queued for 10 minutes).
    let started = Instant::now();
    while !waiters(&observer, key).await.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the server-side wait was left queued"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn wait_times_out_with_3_and_free_keys_return_0() {
    let name = unique("timeout");
    let (holder, pid) = hold(KeyId::Int(key_hash(&name))).await;
    let (code, _, err) = run(&["wait", &name, "--timeout", "200ms"]).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("still held after 200ms"), "{err}");
    // The holder still holds it, and its connection is fine.
    let (code, out, _) = run(&["who", &name, "--json"]).await;
    assert_eq!(code, 0);
    assert_eq!(json_line(&out)["holders"][0]["pid"], pid);
    holder.simple_query("SELECT 1").await.expect("holder alive");

    let free = unique("free");
    let (code, _, err) = run(&["wait", &free, "--timeout", "5s"]).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&["wait", &free, "--shared", "--timeout", "5s"]).await;
    assert_eq!(code, 0, "{err}");
}

#[tokio::test]
async fn release_terminates_the_holder() {
    let name = unique("release");
    let (holder, pid) = hold(KeyId::Int(key_hash(&name))).await;

    // Not confirmed: nothing happens, exit 4.
    let (code, _, err) = run_with(&["release", &name], "n\n").await;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("not confirmed"), "{err}");
    holder.simple_query("SELECT 1").await.expect("holder alive");

    let (code, out, err) = run(&["release", &name, "--yes"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("terminated pid {pid}\n"));
    assert!(
        holder.simple_query("SELECT 1").await.is_err(),
        "the holder's connection still works"
    );
    let (code, _, _) = run(&["who", &name]).await;
    assert_eq!(code, 4);

    // Confirmed on stdin.
    let other = unique("release-confirmed");
    let (holder, pid) = hold(KeyId::Int(key_hash(&other))).await;
    let (code, out, err) = run_with(&["release", &other], "yes\n").await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("terminated pid {pid}\n"));
    assert!(holder.simple_query("SELECT 1").await.is_err());
}

#[tokio::test]
async fn release_and_who_of_a_free_key_exit_4() {
    let name = unique("not-held");
    let (code, out, err) = run(&["release", &name, "--yes"]).await;
    assert_eq!(code, 4, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("nobody holds it"), "{err}");
    let (code, _, err) = run(&["who", &name]).await;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("is not held or awaited"), "{err}");
    let (code, out, _) = run(&["who", &name, "--json"]).await;
    assert_eq!(code, 4);
    assert_eq!(json_line(&out)["held"], false);
}

#[tokio::test]
async fn template_names_and_number_keys() {
    // An instance of a template key `tenant:{id}`, locked by its number.
    let tenant = unique("tenant");
    let key = key_hash(&tenant);
    let (_holder, pid) = hold(KeyId::Int(key)).await;

    let (code, out, err) = run(&[
        "status",
        "--name",
        "other",
        "--name",
        &tenant,
        "--watch",
        "--count",
        "2",
        "--interval",
        "10ms",
        "--json",
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let frames: Vec<Value> = out.lines().map(json_line).collect();
    assert_eq!(frames.len(), 2, "{out}");
    for frame in &frames {
        let ours: Vec<&Value> = frame["locks"]
            .as_array()
            .expect("locks")
            .iter()
            .filter(|l| l["key"] == key)
            .collect();
        assert_eq!(ours.len(), 1, "{frame}");
        assert_eq!(ours[0]["name"], tenant.as_str());
        assert_eq!(ours[0]["pid"], pid);
    }
    // Without --name the number has no name.
    let (_, out, _) = run(&["status", "--json"]).await;
    let status = json_line(&out);
    let lock = status["locks"]
        .as_array()
        .expect("locks")
        .iter()
        .find(|l| l["key"] == key)
        .expect("listed");
    assert_eq!(lock["name"], Value::Null);

    let number = key.to_string();
    let (code, out, err) = run(&["who", &number, "--name", &tenant, "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let who = json_line(&out);
    assert_eq!(who["name"], tenant.as_str());
    assert_eq!(who["holders"][0]["pid"], pid);

    // A pair key, as `7,42`.
    let (a, b) = (std::process::id() as i32, (key & 0x7fff_ffff) as i32);
    let (_pair_holder, pair_pid) = hold(KeyId::Pair(a, b)).await;
    let pair = format!("{a},{b}");
    let (code, out, err) = run(&["who", &pair, "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let who = json_line(&out);
    assert_eq!(who["key"], serde_json::json!([a, b]));
    assert_eq!(who["holders"][0]["pid"], pair_pid);
    let (code, out, err) = run(&["who", "--json", "--", &format!("{a},{b}")]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(json_line(&out)["holders"][0]["pid"], pair_pid);
    // --as-name hashes it as a name instead: nobody holds that.
    let (code, _, _) = run(&["who", &pair, "--as-name"]).await;
    assert_eq!(code, 4);
}

#[tokio::test]
async fn usage_and_connection_errors() {
    let mut no_url = command(&["status"]);
    no_url.env_remove("DATABASE_URL");
    let out = no_url.output().await.expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no database"));

    for args in [
        &["wait", "k", "--timeout", "5parsecs"][..],
        &["wait", "k", "--timeout", "0s"],
        &["status", "--count", "2"],
        &["status", "--watch", "--count", "0"],
        &["key"],
        &["who"],
        &["frobnicate"],
        &["who", ""],
    ] {
        let (code, _, err) = run(args).await;
        assert_eq!(code, 2, "{args:?}: {err}");
    }
    let (code, _, err) = run(&["status", "--url", "postgres://u:secret@[::1"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(!err.contains("secret"), "{err}");

    // Nothing listens on port 1.
    let (code, _, err) = run(&[
        "who",
        "k",
        "--url",
        "postgres://postgres@127.0.0.1:1/postgres",
    ])
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("advisory-locked: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
