//! Every SQL text the tool sends (besides `advisory_locked::status`'s own),
//! each function and operator `pg_catalog`-qualified so that no object of a
//! role's `search_path` can stand in for it.

/// The advisory locks of this database on one key: `$1` classid (oid), `$2`
/// objid (oid), `$3` objsubid (1: a 64-bit key, 2: a pair). Holders first.
pub const WHO: &str = "\
SELECT l.pid, l.mode, l.granted, a.application_name, a.state, a.usename,
       pg_catalog.host(a.client_addr), a.client_hostname, a.client_port,
       pg_catalog.date_part('epoch', pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) a.backend_start)::double precision,
       pg_catalog.date_part('epoch', pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) a.xact_start)::double precision,
       pg_catalog.date_part('epoch', pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-)
           (pg_catalog.to_jsonb(l) OPERATOR(pg_catalog.->>) 'waitstart')::timestamp with time zone)::double precision
FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid OPERATOR(pg_catalog.=) l.pid
WHERE l.locktype OPERATOR(pg_catalog.=) 'advisory'
  AND l.database OPERATOR(pg_catalog.=) (SELECT oid FROM pg_catalog.pg_database
                                         WHERE datname OPERATOR(pg_catalog.=) pg_catalog.current_database())
  AND l.classid OPERATOR(pg_catalog.=) $1 AND l.objid OPERATOR(pg_catalog.=) $2
  AND l.objsubid OPERATOR(pg_catalog.=) $3
ORDER BY l.granted DESC, l.pid";

/// Inside the wait's transaction: `$1` the `lock_timeout` (`"200ms"`), no
/// `statement_timeout` of the role cutting the wait short; returns the
/// server process that will wait (to cancel it on Ctrl-C).
pub const WAIT_SETUP: &str = "\
SELECT pg_catalog.pg_backend_pid(),
       pg_catalog.set_config('lock_timeout', $1, true),
       pg_catalog.set_config('statement_timeout', '0', true)";

/// Waits for a 64-bit key, `$1`; the lock ends with the transaction.
pub const WAIT_INT: &str = "SELECT pg_catalog.pg_advisory_xact_lock($1::bigint)";
/// [`WAIT_INT`] in shared mode.
pub const WAIT_INT_SHARED: &str = "SELECT pg_catalog.pg_advisory_xact_lock_shared($1::bigint)";
/// Waits for a pair key, `$1`, `$2`.
pub const WAIT_PAIR: &str = "SELECT pg_catalog.pg_advisory_xact_lock($1::integer, $2::integer)";
/// [`WAIT_PAIR`] in shared mode.
pub const WAIT_PAIR_SHARED: &str =
    "SELECT pg_catalog.pg_advisory_xact_lock_shared($1::integer, $2::integer)";

/// Cancels the wait of process `$1` (from a second connection) if it still
/// waits for the key (`$2`..`$4` as in [`WHO`]): through a transaction
/// pooler, the process may serve another client once the wait is over.
pub const CANCEL: &str = "\
SELECT pg_catalog.pg_cancel_backend(l.pid)
FROM pg_catalog.pg_locks l
WHERE l.locktype OPERATOR(pg_catalog.=) 'advisory' AND NOT l.granted
  AND l.pid OPERATOR(pg_catalog.=) $1
  AND l.classid OPERATOR(pg_catalog.=) $2 AND l.objid OPERATOR(pg_catalog.=) $3
  AND l.objsubid OPERATOR(pg_catalog.=) $4";

/// `server_version_num`, for `pg_terminate_backend`'s wait (PostgreSQL 14).
pub const SERVER_VERSION: &str = "SELECT pg_catalog.current_setting('server_version_num')::integer";

/// Terminates the processes `$4` (an int4 array) if they still hold the key
/// (`$1`..`$3` as in [`WHO`]) right now; `$5` is how long to wait for each
/// to exit (milliseconds, PostgreSQL 14 and later).
pub const TERMINATE: &str = "\
SELECT l.pid, pg_catalog.pg_terminate_backend(l.pid, $5::bigint)
FROM pg_catalog.pg_locks l
WHERE l.locktype OPERATOR(pg_catalog.=) 'advisory' AND l.granted
  AND l.database OPERATOR(pg_catalog.=) (SELECT oid FROM pg_catalog.pg_database
                                         WHERE datname OPERATOR(pg_catalog.=) pg_catalog.current_database())
  AND l.classid OPERATOR(pg_catalog.=) $1 AND l.objid OPERATOR(pg_catalog.=) $2
  AND l.objsubid OPERATOR(pg_catalog.=) $3 AND l.pid OPERATOR(pg_catalog.=) ANY ($4)";

/// [`TERMINATE`] before PostgreSQL 14 (no wait for the exit; `$5` unused
/// but kept so both take the same parameters).
pub const TERMINATE_NO_WAIT: &str = "\
SELECT l.pid, pg_catalog.pg_terminate_backend(l.pid)
FROM pg_catalog.pg_locks l
WHERE l.locktype OPERATOR(pg_catalog.=) 'advisory' AND l.granted
  AND $5::bigint IS NOT NULL
  AND l.database OPERATOR(pg_catalog.=) (SELECT oid FROM pg_catalog.pg_database
                                         WHERE datname OPERATOR(pg_catalog.=) pg_catalog.current_database())
  AND l.classid OPERATOR(pg_catalog.=) $1 AND l.objid OPERATOR(pg_catalog.=) $2
  AND l.objsubid OPERATOR(pg_catalog.=) $3 AND l.pid OPERATOR(pg_catalog.=) ANY ($4)";

/// Every text above.
#[cfg(test)]
pub const ALL: [&str; 10] = [
    WHO,
    CANCEL,
    WAIT_SETUP,
    WAIT_INT,
    WAIT_INT_SHARED,
    WAIT_PAIR,
    WAIT_PAIR_SHARED,
    SERVER_VERSION,
    TERMINATE,
    TERMINATE_NO_WAIT,
];

#[cfg(test)]
mod tests {
    use super::*;

    /// No function is left to the `search_path` (every identifier right
    /// before `(` is `pg_catalog.`-qualified, or grammar), every operator is
    /// `OPERATOR(pg_catalog.…)`, and casts name only keyword types.
    #[test]
    fn every_function_and_operator_is_qualified() {
        for text in ALL {
            for (i, _) in text.match_indices('(') {
                let start = text[..i]
                    .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
                    .map_or(0, |p| p + 1);
                let word = &text[start..i];
                let fine = word.is_empty()
                    || word.starts_with("pg_catalog.")
                    || ["OPERATOR"].contains(&word);
                assert!(fine, "unqualified call {word}( in {text}");
            }
            let bare = text
                .replace("OPERATOR(pg_catalog.=)", "")
                .replace("OPERATOR(pg_catalog.-)", "")
                .replace("OPERATOR(pg_catalog.->>)", "");
            for op in [" = ", " - ", "->>", " < ", " > "] {
                assert!(!bare.contains(op), "bare operator {op:?} in {text}");
            }
            for cast in [
                "::int2",
                "::int4",
                "::int8",
                "::int)",
                "::text",
                "::oid",
                "::float",
                "::timestamptz",
            ] {
                assert!(!text.contains(cast), "cast {cast} in {text}");
            }
        }
    }
}
