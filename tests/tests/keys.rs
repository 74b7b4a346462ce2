//! Keys: the compile-time hash equals the server's `hashtextextended(s, 0)`,
//! and the locks the attribute takes show in `pg_locks` where an operator
//! would look for them (docs/design.md: 64-bit key = `classid` high 32 bits,
//! `objid` low 32 bits, `objsubid` = 1; a pair = (`classid`, `objid`),
//! `objsubid` = 2).

use std::time::Duration;

use advisory_locked::{advisory_locked, key_hash, KeyId, LockConfig, LockKey, Mode};
use advisory_locked_tests::{
    advisory_locks, db_url, raw_connect, unique, wait_until_unlocked, AdvisoryLock, Prng,
};
use tokio_postgres::Client;

/// A random char from a mix of 1-, 2-, 3- and 4-byte UTF-8 ranges (no NUL:
/// PostgreSQL text can't hold it).
fn random_char(rng: &mut Prng) -> char {
    const RANGES: &[(u32, u32)] = &[
        (0x20, 0x7E),       // printable ASCII
        (0x20, 0x7E),       // (twice as likely)
        (0x01, 0x1F),       // control characters
        (0xA0, 0xFF),       // Latin-1
        (0x0300, 0x036F),   // combining marks
        (0x0391, 0x03C9),   // Greek
        (0x0400, 0x04FF),   // Cyrillic
        (0x4E00, 0x9FFF),   // CJK
        (0xE000, 0xF8FF),   // private use
        (0xFFF0, 0xFFFD),   // specials
        (0x1F300, 0x1FAFF), // emoji
        (0x10000, 0x10FFFF),
    ];
    loop {
        let (lo, hi) = RANGES[rng.below(RANGES.len() as u64) as usize];
        let c = lo + rng.below(u64::from(hi - lo + 1)) as u32;
        if let Some(c) = char::from_u32(c) {
            return c;
        }
    }
}

fn random_string(rng: &mut Prng, chars: usize) -> String {
    (0..chars).map(|_| random_char(rng)).collect()
}

fn random_ascii(rng: &mut Prng, bytes: usize) -> String {
    (0..bytes)
        .map(|_| (0x20 + rng.below(0x5F) as u8) as char)
        .collect()
}

/// The server's `hashtextextended(s, 0)` for each string, in order.
async fn server_hashes(client: &Client, strings: &[String]) -> Vec<i64> {
    let mut out = Vec::with_capacity(strings.len());
    for batch in strings.chunks(250) {
        let rows = client
            .query(
                "SELECT hashtextextended(s, 0) FROM unnest($1::text[]) WITH ORDINALITY AS u(s, i) ORDER BY i",
                &[&batch],
            )
            .await
            .expect("hashtextextended query failed");
        out.extend(rows.iter().map(|r| r.get::<_, i64>(0)));
    }
    out
}

#[tokio::test]
async fn key_hash_equals_hashtextextended_on_random_strings() {
    let client = raw_connect(&db_url()).await;
    let mut rng = Prng::seeded("key_hash", 20_241_125);
    let mut strings: Vec<String> = vec![
        String::new(),
        "report:daily".into(),
        "tenant:42".into(),
        "ü".into(),
        "😀".into(),
        "日本語のキー".into(),
        "e\u{301}".into(),
        " ".into(),
        "\u{10FFFF}".into(),
    ];
    // Every byte length 0..=40 (all tail lengths of the 12-byte blocks, up to three blocks).
    for len in 0..=40 {
        strings.push(random_ascii(&mut rng, len));
    }
    // Every char length 0..=40 of multi-byte text.
    for len in 0..=40 {
        strings.push(random_string(&mut rng, len));
    }
    // Random lengths 0..300 chars.
    while strings.len() < 1_100 {
        let len = rng.below(300) as usize;
        let s = if rng.chance(1, 3) {
            random_ascii(&mut rng, len)
        } else {
            random_string(&mut rng, len)
        };
        strings.push(s);
    }
    // A few long ones (~10k chars, up to ~40 KB).
    for i in 0..8 {
        let len = 9_000 + rng.below(2_000) as usize;
        strings.push(if i % 2 == 0 {
            random_ascii(&mut rng, len)
        } else {
            random_string(&mut rng, len)
        });
    }

    let expected = server_hashes(&client, &strings).await;
    assert_eq!(expected.len(), strings.len());
    let mismatches: Vec<(&String, i64, i64)> = strings
        .iter()
        .zip(&expected)
        .map(|(s, &server)| (s, key_hash(s), server))
        .filter(|(_, ours, server)| ours != server)
        .collect();
    let bytes: usize = strings.iter().map(String::len).sum();
    let multibyte = strings
        .iter()
        .filter(|s| s.len() != s.chars().count())
        .count();
    println!(
        "compared {} strings ({multibyte} with multi-byte chars, {bytes} bytes in all): {} mismatches",
        strings.len(),
        mismatches.len()
    );
    assert!(
        mismatches.is_empty(),
        "key_hash differs from hashtextextended for {} strings, first: {:?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(3)]
    );
}

#[test]
fn key_hash_is_const_and_matches_the_documented_value() {
    const DAILY: i64 = key_hash("report:daily");
    assert_eq!(DAILY, 754_907_581_750_802_352);
    assert_eq!(LockKey::named("report:daily").id(), KeyId::Int(DAILY));
    assert_eq!(LockKey::int(-5).id(), KeyId::Int(-5));
    assert_eq!(LockKey::pair(7, -42).id(), KeyId::Pair(7, -42));
    assert_ne!(LockKey::int(5).id(), LockKey::pair(0, 5).id());
}

// ---- where the attribute's locks show in pg_locks ----------------------------

const LITERAL: &str = "advisory-locked-tests:keys:report:daily";

/// What `pg_locks` shows for `key` while the body runs.
async fn seen(key: KeyId) -> Vec<AdvisoryLock> {
    let client = raw_connect(&db_url()).await;
    advisory_locks(&client, &[key]).await
}

#[advisory_locked(
    key = "advisory-locked-tests:keys:report:daily",
    wait = "20s",
    pool = "keys_layout"
)]
async fn literal_key() -> Vec<AdvisoryLock> {
    seen(KeyId::Int(key_hash(LITERAL))).await
}

#[advisory_locked(key = "report:daily:{run}", pool = "keys_layout")]
async fn template_key(run: &str) -> Vec<AdvisoryLock> {
    seen(KeyId::Int(key_hash(&format!("report:daily:{run}")))).await
}

/// Every placeholder an integer argument: the name is written without
/// `core::fmt`, and must still be what `format!` writes.
#[advisory_locked(key = "tenant:{{x}}:{tenant}:{shard}:{n}", pool = "keys_layout")]
async fn integer_template_key(tenant: u64, shard: i32, n: usize) -> Vec<AdvisoryLock> {
    let name = format!("tenant:{{x}}:{tenant}:{shard}:{n}");
    let current = advisory_locked::current_lock().map(|l| l.key().name().to_owned());
    assert_eq!(current.as_deref(), Some(&*name));
    seen(KeyId::Int(key_hash(&name))).await
}

#[advisory_locked(key = "report:daily:{run}", pool = "keys_layout", shared)]
async fn template_key_shared(run: &str) -> Vec<AdvisoryLock> {
    seen(KeyId::Int(key_hash(&format!("report:daily:{run}")))).await
}

#[advisory_locked(key = 0x1234_5678_9ABC_DEF0, wait = "20s", pool = "keys_layout")]
async fn int_key() -> Vec<AdvisoryLock> {
    seen(KeyId::Int(0x1234_5678_9ABC_DEF0)).await
}

#[advisory_locked(key = -7_002_003_004, wait = "20s", pool = "keys_layout")]
async fn negative_int_key() -> Vec<AdvisoryLock> {
    seen(KeyId::Int(-7_002_003_004)).await
}

#[advisory_locked(key = (271_828, 314_159), wait = "20s", pool = "keys_layout")]
async fn pair_key() -> Vec<AdvisoryLock> {
    seen(KeyId::Pair(271_828, 314_159)).await
}

#[advisory_locked(key = (-271_828, 31_415), wait = "20s", pool = "keys_layout")]
async fn negative_pair_key() -> Vec<AdvisoryLock> {
    seen(KeyId::Pair(-271_828, 31_415)).await
}

fn assert_one_held(seen: &[AdvisoryLock], raw: (u32, u32, i16), mode: &str) {
    assert_eq!(
        seen.len(),
        1,
        "expected exactly one lock in pg_locks, saw {seen:?}"
    );
    let lock = &seen[0];
    assert!(lock.granted, "{lock:?}");
    assert_eq!(lock.mode, mode, "{lock:?}");
    assert_eq!(lock.raw, raw, "classid/objid/objsubid of {lock:?}");
}

fn int_layout(k: i64) -> (u32, u32, i16) {
    ((k as u64 >> 32) as u32, k as u32, 1)
}

#[tokio::test]
async fn attribute_locks_show_in_pg_locks_where_psql_finds_them() {
    let url = db_url();
    LockConfig::from_url(&url)
        .unwrap()
        .name("keys_layout")
        .install()
        .await
        .expect("install");
    let client = raw_connect(&url).await;

    // A literal key: hashed at compile time to hashtextextended(key, 0).
    let server: i64 = client
        .query_one("SELECT hashtextextended($1, 0)", &[&LITERAL])
        .await
        .unwrap()
        .get(0);
    assert_eq!(server, key_hash(LITERAL));
    let locks = literal_key().await.expect("literal key");
    assert_one_held(&locks, int_layout(server), "ExclusiveLock");
    // The operator's view: classid/objid put together in SQL equal the hash.
    let from_sql: i64 = client
        .query_one(
            "SELECT ($1::int8 << 32) | $2::int8",
            &[&i64::from(locks[0].raw.0), &i64::from(locks[0].raw.1)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(from_sql, server);

    // A template of integer arguments: the same name as format! writes.
    let name = format!("tenant:{{x}}:{}:{}:{}", u64::MAX, i32::MIN, 7);
    let server: i64 = client
        .query_one("SELECT hashtextextended($1, 0)", &[&name])
        .await
        .unwrap()
        .get(0);
    let locks = integer_template_key(u64::MAX, i32::MIN, 7)
        .await
        .expect("integer template key")
        .ran()
        .expect("ran");
    assert_one_held(&locks, int_layout(server), "ExclusiveLock");

    // A template key: formatted at run time, then hashed the same way.
    let run = unique("keys");
    let name = format!("report:daily:{run}");
    let server: i64 = client
        .query_one("SELECT hashtextextended($1, 0)", &[&name])
        .await
        .unwrap()
        .get(0);
    let locks = template_key(&run)
        .await
        .expect("template key")
        .ran()
        .expect("ran");
    assert_one_held(&locks, int_layout(server), "ExclusiveLock");
    let locks = template_key_shared(&run)
        .await
        .expect("template key")
        .ran()
        .expect("ran");
    assert_one_held(&locks, int_layout(server), "ShareLock");

    // Integer keys: classid = high 32 bits, objid = low 32 bits, objsubid = 1.
    let locks = int_key().await.expect("int key");
    assert_one_held(&locks, (0x1234_5678, 0x9ABC_DEF0, 1), "ExclusiveLock");
    let locks = negative_int_key().await.expect("negative int key");
    assert_one_held(&locks, int_layout(-7_002_003_004), "ExclusiveLock");

    // Pair keys: classid = first, objid = second, objsubid = 2.
    let locks = pair_key().await.expect("pair key");
    assert_one_held(&locks, (271_828, 314_159, 2), "ExclusiveLock");
    let locks = negative_pair_key().await.expect("negative pair key");
    assert_one_held(&locks, ((-271_828i32) as u32, 31_415, 2), "ExclusiveLock");

    // And all released afterwards.
    let keys = [
        KeyId::Int(key_hash(LITERAL)),
        KeyId::Int(key_hash(&name)),
        KeyId::Int(0x1234_5678_9ABC_DEF0),
        KeyId::Int(-7_002_003_004),
        KeyId::Pair(271_828, 314_159),
        KeyId::Pair(-271_828, 31_415),
    ];
    let left = wait_until_unlocked(&client, &keys, Duration::from_secs(5)).await;
    assert!(left.is_empty(), "locks left after the calls: {left:?}");
}

#[tokio::test]
async fn locker_keys_show_in_pg_locks_too() {
    let url = db_url();
    let locker = LockConfig::from_url(&url)
        .unwrap()
        .connect()
        .await
        .expect("connect");
    let client = raw_connect(&url).await;
    let name = unique("keys:locker");
    let key = LockKey::named(name.clone());
    let guard = locker
        .try_lock(key.clone(), Mode::Exclusive)
        .await
        .unwrap()
        .expect("free key");
    let locks = advisory_locks(&client, &[key.id()]).await;
    assert_one_held(&locks, int_layout(key_hash(&name)), "ExclusiveLock");
    assert_eq!(
        locks[0].pid,
        guard.backend_pid(),
        "pg_locks.pid is the guard's backend pid"
    );
    guard.release().await.expect("release");
    let left = wait_until_unlocked(&client, &[key.id()], Duration::from_secs(5)).await;
    assert!(left.is_empty(), "{left:?}");
}

// A key template whose value may hold NUL (`key = "nul:{v}"`), in each
// mode; the literal `key = "a\0b"` is a compile error (ui-tests).
#[advisory_locked(key = "nul:{v}", pool = "keys_nul")]
async fn nul_template_skip(v: &str) -> u8 {
    1
}

#[advisory_locked(key = "nul:{v}", pool = "keys_nul", wait = "5s")]
async fn nul_template_wait(v: &str) -> u8 {
    1
}

#[advisory_locked(key = "nul:{v}", pool = "keys_nul", transaction = tx)]
async fn nul_template_tx(v: &str) {
    let _ = &tx;
}

/// A name holding NUL is a typed error on every lock path, before
/// anything reaches the server: PostgreSQL text can't hold NUL, so psql
/// could never find the lock by its name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_name_with_nul_is_a_typed_error() {
    use advisory_locked::{Error, Outcome};
    let is_invalid_key = |r: &Result<_, Error>, name: &str| match r {
        Err(Error::InvalidKey { key, reason }) => {
            assert_eq!(key, name);
            assert!(reason.contains("NUL"), "{reason}");
        }
        Err(e) => panic!("{name:?}: expected InvalidKey, got {e:?}"),
        Ok(_) => panic!("{name:?}: locked"),
    };
    let url = db_url();
    let locker = LockConfig::from_url(&url).unwrap().connect().await.unwrap();
    let client = raw_connect(&url).await;
    let name = format!("{}\0b", unique("keys:nul"));
    let key = LockKey::named(name.clone());
    let r = locker.try_lock(key.clone(), Mode::Exclusive).await;
    is_invalid_key(&r.map(drop), &name);
    let r = locker
        .lock(key.clone(), Mode::Shared, Some(Duration::from_secs(1)))
        .await;
    is_invalid_key(&r.map(drop), &name);
    is_invalid_key(&LockKey::try_named(name.clone()).map(drop), &name);
    let slots = advisory_locked::Slots::new(key.clone(), 2);
    assert!(matches!(slots, Err(Error::InvalidKey { .. })), "{slots:?}");

    advisory_locked::LockConfig::from_url(&url)
        .unwrap()
        .name("keys_nul")
        .install()
        .await
        .expect("install keys_nul");
    let value = format!("{}\0", unique("v"));
    let templated = format!("nul:{value}");
    is_invalid_key(&nul_template_skip(&value).await.map(drop), &templated);
    is_invalid_key(&nul_template_wait(&value).await.map(drop), &templated);
    is_invalid_key(&nul_template_tx(&value).await.map(drop), &templated);
    // Nothing reached the server, and the same names without NUL lock.
    let ids = [key.id(), LockKey::named(templated).id()];
    assert!(advisory_locks(&client, &ids).await.is_empty());
    let clean = unique("v");
    assert_eq!(nul_template_skip(&clean).await.unwrap(), Outcome::Ran(1));
    assert_eq!(nul_template_wait(&clean).await.unwrap(), 1);
}
