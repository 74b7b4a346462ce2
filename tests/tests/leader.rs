//! Leader election (issue 6, part B): `Leader` / `Campaign` across real
//! processes (`leader_worker`) and in one process.
//!
//! - exactly one of several campaigners leads, and `pg_locks` agrees;
//! - `kill -9` of the leader: another process leads within the documented
//!   bound (the retry interval, after the server frees the key), and never
//!   while the old one still lived;
//! - `resign` hands over, the old leader reporting its step-down first;
//! - `pg_terminate_backend` of the leader's session: it reports the loss,
//!   and a campaigner (another or itself) takes over.

use std::time::{Duration, Instant};

use advisory_locked::{Campaign, KeyId, Leader, Leadership, LockConfig, LockKey};
use advisory_locked_tests::limits::LeaderLine;
use advisory_locked_tests::{
    advisory_locks, db_url, raw_connect, terminate_backend, unique, unix_micros,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio_postgres::Client;

const WORKER: &str = env!("CARGO_BIN_EXE_leader_worker");
/// The campaigns' retry interval in these tests.
const RETRY: Duration = Duration::from_millis(200);
/// The documented takeover bound is the retry interval after the server
/// frees the key (at once for a killed process); this is the slack on top
/// for a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(2);
const LIMIT: Duration = Duration::from_secs(15);

struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    alive: bool,
    /// The term it reported last, if its last report was `LEADER`.
    leading: Option<(i64, i32)>,
}

/// Campaigning processes and their merged reports.
struct Fleet {
    url: String,
    key: String,
    workers: Vec<Worker>,
    events: mpsc::UnboundedReceiver<(usize, String)>,
    tx: mpsc::UnboundedSender<(usize, String)>,
}

impl Fleet {
    fn new(test: &str) -> Fleet {
        let (tx, events) = mpsc::unbounded_channel();
        Fleet {
            url: db_url(),
            key: unique(&format!("leader:{test}")),
            workers: Vec::new(),
            events,
            tx,
        }
    }

    fn key_id(&self) -> KeyId {
        LockKey::named(self.key.clone()).id()
    }

    fn spawn(&mut self) {
        let index = self.workers.len();
        let mut child = Command::new(WORKER)
            .args([
                self.url.as_str(),
                self.key.as_str(),
                &RETRY.as_millis().to_string(),
            ])
            .kill_on_drop(true)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("cannot start leader_worker");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send((index, line)).is_err() {
                    return;
                }
            }
        });
        let stdin = child.stdin.take();
        self.workers.push(Worker {
            child,
            stdin,
            alive: true,
            leading: None,
        });
    }

    /// The next report of any worker (see [`Fleet::apply`]).
    async fn next(&mut self) -> (usize, LeaderLine) {
        let (index, line) = tokio::time::timeout(LIMIT, self.events.recv())
            .await
            .unwrap_or_else(|_| panic!("no report from any worker within {LIMIT:?}"))
            .expect("report channel");
        (index, self.apply(index, &line))
    }

    /// Tracks one report of worker `index`, checking that a worker that
    /// reports a new term is the only live one leading.
    fn apply(&mut self, index: usize, line: &str) -> LeaderLine {
        let parsed = LeaderLine::parse(line).unwrap_or_else(|| panic!("bad line {line:?}"));
        match parsed {
            LeaderLine::Leader {
                since, backend_pid, ..
            } => {
                let others: Vec<usize> = (0..self.workers.len())
                    .filter(|&i| {
                        i != index && self.workers[i].alive && self.workers[i].leading.is_some()
                    })
                    .collect();
                assert!(
                    others.is_empty(),
                    "worker {index} leads while workers {others:?} still say they lead"
                );
                self.workers[index].leading = Some((since, backend_pid));
            }
            LeaderLine::Follower(_) | LeaderLine::Resigning(_) => {
                self.workers[index].leading = None
            }
            _ => {}
        }
        parsed
    }

    /// Reads reports until one says `LEADER`; returns (worker, since, backend pid).
    async fn next_leader(&mut self) -> (usize, i64, i32) {
        let start = Instant::now();
        while start.elapsed() < LIMIT {
            if let (
                index,
                LeaderLine::Leader {
                    since, backend_pid, ..
                },
            ) = self.next().await
            {
                return (index, since, backend_pid);
            }
        }
        panic!("no leader within {LIMIT:?}");
    }

    /// Reads every report that arrives within `quiet`.
    async fn drain(&mut self, quiet: Duration) {
        let end = Instant::now() + quiet;
        while let Ok(Some((index, line))) =
            tokio::time::timeout_at(end.into(), self.events.recv()).await
        {
            self.apply(index, &line);
        }
    }

    fn leaders(&self) -> Vec<usize> {
        (0..self.workers.len())
            .filter(|&i| self.workers[i].alive && self.workers[i].leading.is_some())
            .collect()
    }

    /// Exactly one live worker says it leads, and the server shows its
    /// session as the key's only holder.
    async fn check_one_leader(&mut self, client: &Client) -> usize {
        self.drain(RETRY * 3).await;
        let leaders = self.leaders();
        assert_eq!(leaders.len(), 1, "workers saying they lead: {leaders:?}");
        let (_, pid) = self.workers[leaders[0]].leading.unwrap();
        let held: Vec<_> = advisory_locks(client, &[self.key_id()])
            .await
            .into_iter()
            .map(|l| (l.pid, l.granted))
            .collect();
        assert_eq!(
            held,
            vec![(pid, true)],
            "pg_locks disagrees with the reports"
        );
        leaders[0]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_within_the_bound() {
    let client = raw_connect(&db_url()).await;
    let mut fleet = Fleet::new("kill9");
    for _ in 0..3 {
        fleet.spawn();
    }
    fleet.next_leader().await;
    let mut takeovers = Vec::new();
    for round in 0..3 {
        let leader = fleet.check_one_leader(&client).await;
        let killed_at = unix_micros();
        fleet.workers[leader].child.start_kill().expect("SIGKILL");
        fleet.workers[leader].alive = false;
        let _ = fleet.workers[leader].child.wait().await;
        let (next, since, _) = fleet.next_leader().await;
        assert_ne!(next, leader);
        assert!(
            since > killed_at,
            "round {round}: a new leader before the old one was killed"
        );
        let takeover = Duration::from_micros((since - killed_at) as u64);
        println!("round {round}: leader (worker {leader}) killed -> worker {next} leads after {takeover:?}");
        takeovers.push(takeover);
        // Keep three campaigners.
        fleet.spawn();
    }
    fleet.check_one_leader(&client).await;
    let max = takeovers.iter().max().copied().unwrap();
    println!("kill -9 takeovers (retry interval {RETRY:?}): {takeovers:?}, max {max:?}");
    assert!(
        max <= RETRY + SLACK,
        "takeover took {max:?}; documented bound: the retry interval {RETRY:?} after the server frees the key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resign_hands_over_without_overlap() {
    let client = raw_connect(&db_url()).await;
    let mut fleet = Fleet::new("resign");
    for _ in 0..3 {
        fleet.spawn();
    }
    fleet.next_leader().await;
    let mut handovers = Vec::new();
    for round in 0..2 {
        let leader = fleet.check_one_leader(&client).await;
        let stdin = fleet.workers[leader].stdin.as_mut().unwrap();
        stdin.write_all(b"resign\n").await.unwrap();
        stdin.flush().await.unwrap();
        let mut resigning = None;
        let (next, since) = loop {
            match fleet.next().await {
                (i, LeaderLine::Resigning(at)) if i == leader => resigning = Some(at),
                (i, LeaderLine::Resigned(_, ok)) if i == leader => {
                    assert!(ok, "round {round}: resign() failed");
                    fleet.workers[leader].alive = false;
                }
                (i, LeaderLine::Leader { since, .. }) => break (i, since),
                _ => {}
            }
        };
        assert_ne!(next, leader);
        let resigning = resigning.expect("the leader said RESIGNING before another led");
        assert!(since > resigning, "round {round}: two leaders at once");
        let handover = Duration::from_micros((since - resigning) as u64);
        println!(
            "round {round}: worker {leader} resigned -> worker {next} leads after {handover:?}"
        );
        handovers.push(handover);
        fleet.workers[leader].alive = false;
    }
    fleet.check_one_leader(&client).await;
    let max = handovers.iter().max().copied().unwrap();
    println!("resign handovers (retry interval {RETRY:?}): {handovers:?}");
    assert!(max <= RETRY + SLACK, "handover took {max:?}");
}

/// Waits until exactly one of `leaders` says it leads and pg_locks shows
/// its session as the key's holder.
///
/// Not asserted here: that two never say so at once. After a session is
/// lost the server may grant the key to another campaigner a moment before
/// the old leader has noticed (the documented non-guarantee); the callers
/// assert it where it holds (drop, resign).
async fn one_leader(client: &Client, key: KeyId, leaders: &[&Leader]) -> usize {
    let start = Instant::now();
    loop {
        let now: Vec<usize> = (0..leaders.len())
            .filter(|&i| leaders[i].is_leader())
            .collect();
        if let [i] = now[..] {
            let Leadership::Leader { backend_pid, .. } = leaders[i].state() else {
                unreachable!()
            };
            let held: Vec<_> = advisory_locks(client, &[key])
                .await
                .into_iter()
                .map(|l| (l.pid, l.granted))
                .collect();
            if held == vec![(backend_pid, true)] {
                return i;
            }
        }
        assert!(start.elapsed() < LIMIT, "no single leader within {LIMIT:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_session_steps_down_and_a_campaigner_takes_over() {
    let client = raw_connect(&db_url()).await;
    let key = LockKey::named(unique("leader:terminate"));
    let mut leaders = Vec::new();
    for _ in 0..2 {
        let locker = LockConfig::from_url(&db_url())
            .unwrap()
            .sessions(1)
            .connect()
            .await
            .unwrap();
        leaders.push(
            Campaign::new(key.clone())
                .retry_interval(RETRY)
                .start(&locker),
        );
    }
    let refs: Vec<&Leader> = leaders.iter().collect();
    for round in 0..3 {
        let i = one_leader(&client, key.id(), &refs).await;
        let Leadership::Leader {
            backend_pid, term, ..
        } = leaders[i].state()
        else {
            unreachable!()
        };
        let mut watch = leaders[i].watch();
        let cut = Instant::now();
        assert!(terminate_backend(&client, backend_pid).await);
        tokio::time::timeout(LIMIT, watch.wait_for(|s| !s.is_leader()))
            .await
            .expect("the leader did not report the loss")
            .unwrap();
        let stepped_down = cut.elapsed();
        // Within the lock-loss detection bound (default 1 s; a terminated
        // session's connection closes, which is noticed at once).
        assert!(
            stepped_down <= Duration::from_secs(1) + SLACK,
            "{stepped_down:?}"
        );
        let next = one_leader(&client, key.id(), &refs).await;
        let taken_over = cut.elapsed();
        let Leadership::Leader {
            term: next_term, ..
        } = leaders[next].state()
        else {
            unreachable!()
        };
        if next == i {
            assert!(next_term > term, "a new term after the loss");
        }
        println!(
            "round {round}: leader {i}'s session terminated -> stepped down after {stepped_down:?}; leader {next} (term {next_term}) after {taken_over:?}"
        );
        assert!(taken_over <= RETRY + SLACK, "takeover took {taken_over:?}");
    }

    // Dropping the leader steps down at once and hands over in the background.
    let i = one_leader(&client, key.id(), &refs).await;
    drop(refs);
    let gone = leaders.remove(i);
    let watch = gone.watch();
    let dropped = Instant::now();
    let dropped_at = std::time::SystemTime::now();
    drop(gone);
    assert!(
        !watch.borrow().is_leader(),
        "a dropped leader reports Follower at once"
    );
    let refs: Vec<&Leader> = leaders.iter().collect();
    one_leader(&client, key.id(), &refs).await;
    let Leadership::Leader { since, .. } = refs[0].state() else {
        unreachable!()
    };
    assert!(
        since >= dropped_at,
        "the other led before the dropped leader stepped down"
    );
    println!(
        "leader dropped -> the other leads after {:?}",
        dropped.elapsed()
    );
    assert!(dropped.elapsed() <= RETRY + SLACK);
    drop(refs);
    let last = leaders.pop().unwrap();
    last.resign().await.unwrap();
    assert!(advisory_locks(&client, &[key.id()]).await.is_empty());
}
