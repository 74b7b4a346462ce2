//! Every statement the crate sends, in one place.

/// Fenced try-locks (codes 12..=15: exclusive/shared x int8/pair) and
/// raises (16..=19), indexed by `code - 12`. Parameters: the key (`$1`, or
/// `$1, $2` for a pair) and, for a raise, the floor after it. Answers: a
/// fenced try-lock `(granted, token or NULL)`; a raise `(token)`.
pub(crate) fn fenced_statements() -> Vec<String> {
    let mut out = Vec::with_capacity(8);
    // (lock call, the row's space and key)
    let int = ("$1::int8", "1::int2", "$1::int8");
    let pair = (
        "$1::int4, $2::int4",
        "2::int2",
        "(($1::int4::int8 << 32) | ($2::int4::int8 & 4294967295))",
    );
    for (args, space, key, shared) in [(int, false), (int, true), (pair, false), (pair, true)]
        .map(|((args, space, key), shared)| (args, space, key, shared))
    {
        let f = if shared {
            "pg_try_advisory_lock_shared"
        } else {
            "pg_try_advisory_lock"
        };
        out.push(format!(
            "WITH l AS MATERIALIZED (SELECT {f}({args}) AS got), \
             f AS (INSERT INTO advisory_locked_fence AS t (space, key, token) \
             SELECT {space}, {key}, 1 FROM l WHERE l.got \
             ON CONFLICT (space, key) DO UPDATE SET token = t.token + 1, granted_at = clock_timestamp() \
             RETURNING t.token) \
             SELECT l.got, (SELECT f.token FROM f) FROM l"
        ));
    }
    for (space, key, floor) in [
        ("1::int2", "$1::int8", "$2::int8"),
        ("1::int2", "$1::int8", "$2::int8"),
        (
            "2::int2",
            "(($1::int4::int8 << 32) | ($2::int4::int8 & 4294967295))",
            "$3::int8",
        ),
        (
            "2::int2",
            "(($1::int4::int8 << 32) | ($2::int4::int8 & 4294967295))",
            "$3::int8",
        ),
    ] {
        out.push(format!(
            "INSERT INTO advisory_locked_fence AS t (space, key, token) VALUES ({space}, {key}, {floor}) \
             ON CONFLICT (space, key) DO UPDATE SET token = GREATEST(t.token, EXCLUDED.token) \
             RETURNING t.token"
        ));
    }
    out
}

/// The blocking waits (codes 20..=23: exclusive/shared x int8/pair) and the
/// unlocks after a failed one (24..=27), indexed by `code - 20`.
/// Parameters: the key (`$1`, or `$1, $2` for a pair) and, for a wait, the
/// `lock_timeout` in milliseconds after it. A wait answers 1 if the key was
/// free (granted at once) or 2 if it was granted after waiting; an unlock
/// answers a boolean.
///
/// `set_config` runs in a sub-query of its own (not pulled up: it is
/// volatile), which the server evaluates before the select list, so the
/// timeout is in force when the wait starts (checked on PostgreSQL 15).
/// It is set for the statement's implicit transaction only (`is_local`):
/// later statements of the session, such as an unlock + notify whose commit
/// may queue for the notification lock, run without it.
/// An unlock after a failed wait releases the key only if `pg_locks` shows
/// this session holding it, which avoids the server's warning for an unlock
/// of a key not held at every `lock_timeout`.
pub(crate) fn wait_statements() -> Vec<String> {
    let int = (
        "$1::int8",
        "$2",
        "1",
        "(($1::int8 >> 32) & 4294967295)::oid",
        "($1::int8 & 4294967295)::oid",
    );
    let pair = (
        "$1::int4, $2::int4",
        "$3",
        "2",
        "$1::int4::oid",
        "$2::int4::oid",
    );
    let kinds = [(int, false), (int, true), (pair, false), (pair, true)];
    let mut out = Vec::with_capacity(8);
    for ((args, millis, _, _, _), shared) in kinds {
        let (try_f, f) = if shared {
            ("pg_try_advisory_lock_shared", "pg_advisory_lock_shared")
        } else {
            ("pg_try_advisory_lock", "pg_advisory_lock")
        };
        // 1: free, granted at once; 2: granted after waiting (pg_advisory_lock
        // returns void, num_nulls(..) makes it a number).
        out.push(format!(
            "SELECT CASE WHEN {try_f}({args}) THEN 1 ELSE num_nulls({f}({args})) + 2 END \
             FROM (SELECT set_config('lock_timeout', {millis}::int8::text, true)) AS s"
        ));
    }
    for ((args, _, subid, classid, objid), shared) in kinds {
        let (f, mode) = if shared {
            ("pg_advisory_unlock_shared", "ShareLock")
        } else {
            ("pg_advisory_unlock", "ExclusiveLock")
        };
        out.push(format!(
            "SELECT CASE WHEN EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' \
             AND pid = pg_backend_pid() AND granted AND mode = '{mode}' AND objsubid = {subid} \
             AND classid = {classid} AND objid = {objid}) THEN {f}({args}) ELSE false END"
        ));
    }
    out
}
