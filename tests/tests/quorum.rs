//! Quorum entries (`QuorumConfig`): a lock over several independent
//! servers, held when a majority granted it. Every test starts its own
//! throwaway servers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use advisory_locked::{Error, KeyId, LockConfig, LockKey, Locker, Mode, QuorumConfig};
use advisory_locked_tests::workers::{fence_rounds, run_processes};
use advisory_locked_tests::{
    advisory_locks, pg_lock, raw_connect, terminate_backend, unique, until, wait_until_unlocked,
    ThrowawayServer,
};

async fn holder_pid(admin: &tokio_postgres::Client, id: KeyId) -> Option<i32> {
    advisory_locks(admin, &[id]).await.first().map(|l| l.pid)
}

fn start(n: usize) -> Vec<ThrowawayServer> {
    // Started one after the other (each start is blocking).
    (0..n).map(|_| ThrowawayServer::start()).collect()
}

fn urls(servers: &[ThrowawayServer]) -> Vec<String> {
    servers.iter().map(|s| s.url("postgres")).collect()
}

async fn quorum(servers: &[ThrowawayServer], name: &str) -> Locker {
    let members = urls(servers).into_iter().map(|u| {
        LockConfig::from_url(&u)
            .unwrap()
            .connect_timeout(Duration::from_secs(2))
            .loss_detection(Duration::from_millis(400))
    });
    QuorumConfig::new(members)
        .name(name)
        .connect()
        .await
        .expect("the quorum connects")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_never_hold_one_key_at_once() {
    let servers = tokio::task::spawn_blocking(|| start(3)).await.unwrap();
    // Two independent clients (each its own sessions on every server), four
    // tasks each, contending on one key in wait mode.
    let clients = [quorum(&servers, "q-a").await, quorum(&servers, "q-b").await];
    let key = LockKey::named(unique("quorum:excl"));
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let runs = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for client in &clients {
        for _ in 0..4 {
            let (client, key) = (client.clone(), key.clone());
            let (inside, most, runs) = (inside.clone(), most.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..25 {
                    let guard = client
                        .lock(key.clone(), Mode::Exclusive, Some(Duration::from_secs(30)))
                        .await
                        .expect("lock");
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_micros(300)).await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                    runs.fetch_add(1, Ordering::SeqCst);
                    guard.release().await.expect("release");
                }
            }));
        }
    }
    let start = Instant::now();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("in time")
            .unwrap();
    }
    assert_eq!(runs.load(Ordering::SeqCst), 200);
    assert_eq!(most.load(Ordering::SeqCst), 1, "two holders at once");
    eprintln!(
        "quorum of 3: 200 exclusive holds by 2 clients x 4 tasks in {:?}, never two at once",
        start.elapsed()
    );

    // The same key taken on one server only (directly) does not stop a
    // quorum: 2 of 3 still grant. On two servers, it does, and the partial
    // grant on the third is given back.
    let direct: Vec<_> = {
        let mut v = Vec::new();
        for u in urls(&servers) {
            v.push(raw_connect(&u).await);
        }
        v
    };
    pg_lock(&direct[0], key.id(), Mode::Exclusive).await;
    let g = clients[0]
        .try_lock(key.clone(), Mode::Exclusive)
        .await
        .unwrap();
    assert!(g.is_some(), "a majority (2 of 3) is free");
    drop(g);
    // Wait until servers 1 and 2 are free again (the release is queued).
    for c in &direct[1..] {
        assert!(wait_until_unlocked(c, &[key.id()], Duration::from_secs(5))
            .await
            .is_empty());
    }
    pg_lock(&direct[1], key.id(), Mode::Exclusive).await;
    for _ in 0..5 {
        assert!(clients[1]
            .try_lock(key.clone(), Mode::Exclusive)
            .await
            .unwrap()
            .is_none());
    }
    let left = wait_until_unlocked(&direct[2], &[key.id()], Duration::from_secs(5)).await;
    assert!(left.is_empty(), "partial grant not given back: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_servers_work_with_two_stopped_and_fail_closed_with_three() {
    let mut servers = tokio::task::spawn_blocking(|| start(5)).await.unwrap();
    let locker = quorum(&servers, "q-five").await;
    assert_eq!(locker.servers(), 5);
    let key = LockKey::named(unique("quorum:five"));
    let take = |locker: &Locker| {
        let (locker, key) = (locker.clone(), key.clone());
        async move { locker.try_lock(key, Mode::Exclusive).await }
    };
    assert!(take(&locker).await.unwrap().is_some());

    for stopped in 1..=3usize {
        let mut s = servers.remove(0);
        tokio::task::spawn_blocking(move || {
            s.stop("immediate");
            s
        })
        .await
        .map(|s| servers.push(s))
        .unwrap();
        // Stopped servers are now the last `stopped` ones.
        let start = Instant::now();
        let got = take(&locker).await;
        let took = start.elapsed();
        match stopped {
            1 | 2 => {
                let guard = got.expect("a majority is up").expect("free");
                assert!(guard.is_held());
                eprintln!("quorum of 5 with {stopped} stopped: granted in {took:?}");
            }
            _ => match got {
                Err(Error::QuorumUnavailable {
                    servers: 5,
                    needed: 3,
                    reachable: 2,
                    ..
                }) => eprintln!("quorum of 5 with 3 stopped: QuorumUnavailable in {took:?}"),
                other => panic!("expected QuorumUnavailable, got {other:?}"),
            },
        }
    }
    // Installing a quorum with a majority down fails closed too.
    let down = QuorumConfig::new(urls(&servers).into_iter().map(|u| {
        LockConfig::from_url(&u)
            .unwrap()
            .connect_timeout(Duration::from_secs(2))
    }))
    .connect()
    .await;
    assert!(
        matches!(
            down,
            Err(Error::QuorumUnavailable {
                key: None,
                reachable: 2,
                ..
            })
        ),
        "{down:?}"
    );

    // One server back: a majority again, same locker.
    let mut s = servers.pop().unwrap();
    let s = tokio::task::spawn_blocking(move || {
        s.start_again();
        s
    })
    .await
    .unwrap();
    servers.push(s);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match take(&locker).await {
            Ok(Some(_)) => break,
            other if Instant::now() > deadline => panic!("no grant after a restart: {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Kills the session that holds `key` on `admin`'s server, if one does,
/// and waits until `locker` has seen that session end.
async fn kill_holder(locker: &Locker, admin: &tokio_postgres::Client, key: &LockKey) {
    let ended = locker.stats().sessions_ended;
    let Some(pid) = holder_pid(admin, key.id()).await else {
        return;
    };
    assert!(
        terminate_backend(admin, pid).await,
        "backend {pid} was not terminated"
    );
    until(
        "the killed session's end is seen",
        Duration::from_secs(5),
        || locker.stats().sessions_ended > ended,
    )
    .await;
}

/// Until `locker` (three members, one session each) has a live session on
/// every member again. A killed session is replaced by the next call to its
/// member, in a task of its own, so calls on `warm` are made until it is.
async fn all_sessions_back(locker: &Locker, warm: &LockKey) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = locker.stats();
        if s.sessions_opened - s.sessions_ended == 3 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "sessions not back: {} opened, {} ended",
            s.sessions_opened,
            s.sessions_ended
        );
        if let Some(g) = locker
            .try_lock(warm.clone(), Mode::Exclusive)
            .await
            .unwrap()
        {
            g.release().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_majority_is_a_lock_loss_and_tokens_keep_growing() {
    let servers = tokio::task::spawn_blocking(|| start(3)).await.unwrap();
    let members = |fencing: bool| {
        QuorumConfig::new(urls(&servers).into_iter().map(|u| {
            // One session per member: a call to a member always uses it.
            LockConfig::from_url(&u)
                .unwrap()
                .sessions(1)
                .connect_timeout(Duration::from_secs(2))
                .loss_detection(Duration::from_millis(400))
        }))
        .fencing_tokens(fencing)
    };
    let locker = members(true).name("q-loss").connect().await.unwrap();
    let other = members(true).name("q-loss-2").connect().await.unwrap();
    let key = LockKey::named(unique("quorum:loss"));
    let admins: Vec<_> = {
        let mut v = Vec::new();
        for u in urls(&servers) {
            v.push(raw_connect(&u).await);
        }
        v
    };

    let mut last_token = 0;
    let mut all_three = 0;
    let warm = LockKey::named(unique("quorum:loss-warm"));
    for round in 0..6 {
        all_sessions_back(&locker, &warm).await;
        let guard = locker
            .lock(key.clone(), Mode::Exclusive, Some(Duration::from_secs(10)))
            .await
            .unwrap();
        let token = guard.fencing_token().expect("a token");
        assert!(
            token > last_token,
            "round {round}: {token} after {last_token}"
        );
        last_token = token;
        // A grant waits a short grace for every member after the majority
        // is in; all three hold it on a healthy quorum.
        let mut holders = 0;
        for admin in &admins {
            holders += usize::from(holder_pid(admin, key.id()).await.is_some());
        }
        assert!(
            holders >= 2,
            "round {round}: held on {holders} of 3 members"
        );
        all_three += usize::from(holders == 3);
        // Kill the holder's session on one member (rotating): still held,
        // once this client has seen that session end.
        let victim = round % 3;
        kill_holder(&locker, &admins[victim], &key).await;
        if holders == 3 {
            assert!(guard.is_held(), "one member lost: still a majority");
        } else {
            // The third member answered after the grace: with one of two
            // gone, the lock is rightly lost.
            eprintln!("round {round}: the third member answered after the grace");
            drop(guard);
            continue;
        }
        // The other client can't take it meanwhile.
        assert!(other
            .try_lock(key.clone(), Mode::Exclusive)
            .await
            .unwrap()
            .is_none());
        if round % 2 == 1 {
            // A second member: the majority is gone.
            let second = (victim + 1) % 3;
            kill_holder(&locker, &admins[second], &key).await;
            let t = Instant::now();
            tokio::time::timeout(Duration::from_secs(5), guard.lost())
                .await
                .expect("the loss of the majority is noticed");
            assert!(!guard.is_held());
            eprintln!("quorum of 3: majority loss noticed in {:?}", t.elapsed());
            // Someone else gets it, with a larger token.
            let g2 = other
                .lock(key.clone(), Mode::Exclusive, Some(Duration::from_secs(10)))
                .await
                .unwrap();
            let t2 = g2.fencing_token().unwrap();
            assert!(t2 > last_token, "after the loss: {t2} after {last_token}");
            last_token = t2;
            // Given back on every member before the next round asks.
            g2.release().await.unwrap();
        }
        drop(guard);
    }
    assert!(
        all_three >= 3,
        "the lock was on all three members in only {all_three} of 6 rounds"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_take_turns_with_growing_tokens() {
    let servers = tokio::task::spawn_blocking(|| start(3)).await.unwrap();
    let urls = urls(&servers);
    let admin = raw_connect(&urls[0]).await;
    admin
        .batch_execute("CREATE TABLE quorum_rounds (n bigserial PRIMARY KEY, token int8 NOT NULL, pid int4 NOT NULL)")
        .await
        .unwrap();
    const PROCESSES: usize = 3;
    const ROUNDS: u32 = 30;
    let key = unique("quorum:procs");
    let mut args = vec!["quorum_rounds".to_owned(), key, ROUNDS.to_string()];
    args.extend(urls.iter().cloned());
    let start = Instant::now();
    run_processes(
        env!("CARGO_BIN_EXE_fence_worker"),
        vec![args; PROCESSES],
        Duration::from_secs(120),
    )
    .await;
    let (tokens, _) = fence_rounds(&admin, "quorum_rounds").await;
    assert_eq!(tokens.len(), PROCESSES * ROUNDS as usize);
    eprintln!(
        "quorum of 3: {} grants over {PROCESSES} processes in {:?}, tokens strictly increasing",
        tokens.len(),
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_members_are_raised_for_int_and_pair_keys() {
    let servers = tokio::task::spawn_blocking(|| start(3)).await.unwrap();
    let locker = QuorumConfig::new(urls(&servers).into_iter().map(|u| {
        LockConfig::from_url(&u)
            .unwrap()
            .connect_timeout(Duration::from_secs(2))
    }))
    .fencing_tokens(true)
    .name("q-raise")
    .connect()
    .await
    .unwrap();
    let direct: Vec<_> = {
        let mut v = Vec::new();
        for u in urls(&servers) {
            v.push(raw_connect(&u).await);
        }
        v
    };
    for key in [
        LockKey::named(unique("quorum:raise")),
        LockKey::pair(std::process::id() as i32, 4242),
    ] {
        let id = key.id();
        let mut last = 0;
        // Each round, one member is held by someone else: the grant comes
        // from the other two, so the members' counters drift apart, and
        // the next majority includes a member that lagged behind.
        for round in 0..6 {
            let blocked = round % 3;
            pg_lock(&direct[blocked], id, Mode::Exclusive).await;
            let guard = locker
                .try_lock(key.clone(), Mode::Exclusive)
                .await
                .unwrap_or_else(|e| panic!("{key}: round {round}: {e}"))
                .expect("a majority is free");
            let token = guard.fencing_token().expect("a token");
            assert!(token > last, "{key}: round {round}: {token} after {last}");
            last = token;
            guard.release().await.unwrap();
            assert!(advisory_locked_tests::pg_unlock(&direct[blocked], id, Mode::Exclusive).await);
        }
        // A majority of members store the last token.
        let space: i16 = if matches!(id, KeyId::Pair(..)) { 2 } else { 1 };
        let row_key = match id {
            KeyId::Int(k) => k,
            KeyId::Pair(a, b) => ((a as i64) << 32) | (b as u32 as i64),
        };
        let mut at_last = 0;
        for c in &direct {
            let stored: Option<i64> = c
                .query_opt(
                    "SELECT token FROM advisory_locked_fence WHERE space = $1 AND key = $2",
                    &[&space, &row_key],
                )
                .await
                .unwrap()
                .map(|r| r.get(0));
            if stored == Some(last) {
                at_last += 1;
            }
        }
        assert!(
            at_last >= 2,
            "{key}: the last token {last} is stored on {at_last} members"
        );
    }
}

#[tokio::test]
async fn a_transaction_scope_only_member_is_refused() {
    let url = advisory_locked_tests::db_url();
    let members = [
        LockConfig::from_url(&url).unwrap(),
        LockConfig::from_url(&url).unwrap().transaction_scope_only(),
    ];
    match QuorumConfig::new(members).connect().await {
        Err(Error::InvalidConfig { reason }) => assert!(reason.contains("member 1"), "{reason}"),
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_member_delays_calls_by_the_grace_at_most() {
    use advisory_locked_tests::blackhole::Proxy;
    let servers = tokio::task::spawn_blocking(|| start(3)).await.unwrap();
    // Member 2 is reached through a proxy that can drop traffic silently.
    let proxy = Proxy::start(("127.0.0.1".to_owned(), servers[2].port())).await;
    let mut member_urls = urls(&servers);
    member_urls[2] = format!("postgres://postgres@127.0.0.1:{}/postgres", proxy.port);
    let connect_timeout = Duration::from_secs(5);
    let locker = QuorumConfig::new(member_urls.iter().map(|u| {
        LockConfig::from_url(u)
            .unwrap()
            .connect_timeout(connect_timeout)
            .loss_detection(Duration::from_secs(1))
    }))
    .name("q-silent")
    .connect()
    .await
    .unwrap();
    let key = LockKey::named(unique("quorum:silent"));
    locker
        .try_lock(key.clone(), Mode::Exclusive)
        .await
        .unwrap()
        .expect("free")
        .release()
        .await
        .unwrap();

    proxy.cut();
    // Every call completes with the two other members, without waiting for
    // the silent one (its session is declared lost after the 1 s bound,
    // and its reconnects hang until the 5 s connect timeout).
    let mut slowest = Duration::ZERO;
    for round in 0..20 {
        let t = Instant::now();
        let guard = locker
            .try_lock(key.clone(), Mode::Exclusive)
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"))
            .expect("a majority is free");
        slowest = slowest.max(t.elapsed());
        assert!(guard.is_held());
        drop(guard);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    eprintln!("quorum of 3, one member silent: 20 grants over ~3 s, slowest {slowest:?}");
    assert!(
        slowest < Duration::from_secs(2),
        "a call waited for the silent member: {slowest:?}"
    );
    proxy.heal();
}
