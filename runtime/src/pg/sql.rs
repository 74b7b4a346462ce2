//! Every statement the crate sends, in one place.
//!
//! The statements of a lock session are named by typed values
//! ([`Statement`], [`Request`]): the dispatcher never builds SQL text and
//! never does arithmetic on statement numbers. Keys and names are always
//! parameters, never text (docs/design.md, invariant 6).
//!
//! **Every function, relation and type is schema-qualified** (`pg_catalog.…`,
//! or a type keyword such as `bigint` that the grammar maps to `pg_catalog`),
//! and operators are written `OPERATOR(pg_catalog.=)`: PostgreSQL searches
//! `pg_catalog` first only when the role's `search_path` does not name it, so
//! with `search_path = myschema, pg_catalog` an unqualified
//! `pg_try_advisory_lock` would call `myschema.pg_try_advisory_lock` — a shim
//! that answers `true` would make two holders (docs/design.md, "Trusting the
//! server"). `tests/tests/trust.rs` runs every statement under such a role.

use crate::key::{KeyId, Mode};

/// The key's form: one `bigint`, or two `integer`s (PostgreSQL's two key
/// spaces, `objsubid` 1 and 2 in `pg_locks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    Int8,
    Pair,
}

impl Form {
    pub(crate) fn of(key: KeyId) -> Form {
        match key {
            KeyId::Int(_) => Form::Int8,
            KeyId::Pair(..) => Form::Pair,
        }
    }
}

/// What one request of a lock session asks of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Try to take the lock: `(granted)`.
    TryLock,
    /// Release it: `(was held)`.
    Unlock,
    /// Release it and, if it was held and is not held exclusively right
    /// after (a waiter blocked on the server got it), notify waiters of
    /// other processes: `(was held)`.
    UnlockNotify,
    /// Try to take the lock and, if granted, the key's next fencing token:
    /// `(granted, token or NULL)`. Parameters: the key.
    FencedTryLock,
    /// Raise the key's fencing token to at least a floor: `(token)`.
    /// Parameters: the key, the floor.
    Raise,
    /// Wait for the lock on the server, at most `lock_timeout`
    /// milliseconds: `(1)` if it was free, `(2)` if granted after waiting.
    /// Parameters: the key, the milliseconds.
    Wait,
    /// [`Action::Wait`] bounded by the session's own `lock_timeout` (a wait
    /// session's longest wait, set once at its set-up:
    /// [`standing_lock_timeout`]). Without the `set_config` of `Wait`, the
    /// server has no setting to restore when the statement ends, which is
    /// on a handover's path. Parameters: the key.
    WaitStanding,
    /// Release the lock only if `pg_locks` shows this session holding it
    /// (after a failed wait; no server warning for a key not held):
    /// `(was held)`.
    CheckedUnlock,
}

impl Action {
    /// The actions that can share a statement with others ([`Statement::Two`],
    /// [`Statement::Pair`], [`Statement::Batch`]).
    pub(crate) fn is_plain(self) -> bool {
        matches!(
            self,
            Action::TryLock | Action::Unlock | Action::UnlockNotify
        )
    }
}

/// One request: an action on a key of a form, in a mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) action: Action,
    pub(crate) mode: Mode,
    pub(crate) form: Form,
}

/// The plain actions, in the order of their codes (see [`Request::code`]).
const PLAIN: [Action; 3] = [Action::TryLock, Action::Unlock, Action::UnlockNotify];
/// The actions that always go alone, in the order of their statements.
const ALONE: [Action; 5] = [
    Action::FencedTryLock,
    Action::Raise,
    Action::Wait,
    Action::WaitStanding,
    Action::CheckedUnlock,
];
const MODES: [Mode; 2] = [Mode::Exclusive, Mode::Shared];
const FORMS: [Form; 2] = [Form::Int8, Form::Pair];

impl Request {
    /// The request's number among the four of its action (mode × form).
    fn variant(self) -> usize {
        let shared = usize::from(self.mode == Mode::Shared);
        let pair = usize::from(self.form == Form::Pair);
        shared + 2 * pair
    }

    /// The value that selects this plain request in the `CASE` of
    /// [`Statement::Two`] and [`Statement::Batch`] (a parameter, `smallint`).
    /// Defined only here, where those statements are written from it.
    pub(crate) fn code(self) -> i16 {
        let action = PLAIN.iter().position(|a| *a == self.action);
        debug_assert!(action.is_some(), "not a plain request: {self:?}");
        (4 * action.unwrap_or(0) + self.variant()) as i16
    }

    /// Every request of these actions, in statement order.
    fn all(actions: &[Action]) -> impl Iterator<Item = Request> + '_ {
        actions.iter().flat_map(|&action| {
            FORMS.iter().flat_map(move |&form| {
                MODES
                    .iter()
                    .map(move |&mode| Request { action, mode, form })
            })
        })
    }
}

/// A statement a lock session prepares at its set-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Statement {
    /// The heartbeat: `SELECT true`.
    Ping,
    /// One request alone. Parameters: the key (`bigint`, or two
    /// `integer`s), then the action's own (see [`Action`]).
    One(Request),
    /// Two plain requests of any mode and form, without `unnest` (as cheap
    /// for the server as one). Parameters per request: its code, a
    /// `bigint` key, two `integer`s.
    Two,
    /// Two plain exclusive requests on `bigint` keys, without `CASE`: what a
    /// sequence of calls sends most ("the last call's unlock, this call's
    /// try-lock"). Parameters: the two keys.
    Pair(Action, Action),
    /// Many plain requests, answered in order. Parameters: arrays of codes,
    /// `bigint` keys and two `integer`s.
    Batch,
    /// Many plain exclusive requests on `bigint` keys (what a busy process
    /// sends most), answered in order: a `CASE` of three arms instead of
    /// twelve, and no `integer` arrays. Parameters: arrays of codes and
    /// `bigint` keys.
    BatchExclusive,
}

/// How many statements precede each group in [`Statement::index`].
const ONE_PLAIN_AT: usize = 3;
const PAIR_AT: usize = ONE_PLAIN_AT + 12;
const ONE_FENCED_AT: usize = PAIR_AT + 9;
const ONE_WAIT_AT: usize = ONE_FENCED_AT + 8;
const BATCH_EXCLUSIVE_AT: usize = ONE_WAIT_AT + 12;
/// Every statement a session can prepare.
pub(crate) const STATEMENTS: usize = BATCH_EXCLUSIVE_AT + 1;

impl Statement {
    /// A dense number for the statement (its prepared name's suffix).
    pub(crate) fn index(self) -> usize {
        let plain = |a: Action| PLAIN.iter().position(|p| *p == a).unwrap_or(0);
        match self {
            Statement::Ping => 0,
            Statement::Two => 1,
            Statement::Batch => 2,
            Statement::BatchExclusive => BATCH_EXCLUSIVE_AT,
            Statement::Pair(x, y) => PAIR_AT + 3 * plain(x) + plain(y),
            Statement::One(r) => {
                let at = match r.action {
                    Action::TryLock | Action::Unlock | Action::UnlockNotify => {
                        ONE_PLAIN_AT + 4 * plain(r.action)
                    }
                    Action::FencedTryLock => ONE_FENCED_AT,
                    Action::Raise => ONE_FENCED_AT + 4,
                    Action::Wait => ONE_WAIT_AT,
                    Action::WaitStanding => ONE_WAIT_AT + 4,
                    Action::CheckedUnlock => ONE_WAIT_AT + 8,
                };
                at + r.variant()
            }
        }
    }

    /// The statements a session prepares: the common ones, plus the fenced
    /// ones on an entry with fencing tokens, plus the waits on a wait
    /// session.
    pub(crate) fn prepared(fenced: bool, wait: bool) -> Vec<Statement> {
        let mut out = vec![
            Statement::Ping,
            Statement::Two,
            Statement::Batch,
            Statement::BatchExclusive,
        ];
        out.extend(Request::all(&PLAIN).map(Statement::One));
        for x in PLAIN {
            out.extend(PLAIN.iter().map(|&y| Statement::Pair(x, y)));
        }
        if fenced {
            out.extend(Request::all(&ALONE[..2]).map(Statement::One));
        }
        if wait {
            out.extend(Request::all(&ALONE[2..]).map(Statement::One));
        }
        out
    }

    /// The statement's text.
    pub(crate) fn sql(self) -> String {
        match self {
            Statement::Ping => "SELECT true".to_owned(),
            Statement::One(r) => one(r),
            Statement::Two => two(),
            Statement::Pair(x, y) => {
                let expr = |action, n| {
                    let key = Key::Int8(format!("${n}::bigint"));
                    plain(action, Mode::Exclusive, &key)
                };
                // Select-list items are evaluated left to right.
                format!("SELECT {}, {}", expr(x, 1), expr(y, 2))
            }
            Statement::Batch => batch(),
            Statement::BatchExclusive => batch_exclusive(),
        }
    }
}

/// A key as SQL arguments: one `bigint` expression, or two `integer` ones.
enum Key {
    Int8(String),
    Pair(String, String),
}

impl Key {
    /// The key as parameters `$n…` of a statement for one request.
    fn params(form: Form, n: usize) -> Key {
        match form {
            Form::Int8 => Key::Int8(format!("${n}::bigint")),
            Form::Pair => Key::Pair(format!("${n}::integer"), format!("${}::integer", n + 1)),
        }
    }

    fn args(&self) -> String {
        match self {
            Key::Int8(k) => k.clone(),
            Key::Pair(a, b) => format!("{a}, {b}"),
        }
    }

    /// The notification's payload: the key as text (`a:b` for a pair).
    fn payload(&self) -> String {
        match self {
            Key::Int8(k) => format!("{k}::pg_catalog.text"),
            Key::Pair(a, b) => format!("pg_catalog.concat({a}, ':', {b})"),
        }
    }

    /// The number of the parameter after the key's.
    fn next(&self, n: usize) -> usize {
        match self {
            Key::Int8(_) => n + 1,
            Key::Pair(..) => n + 2,
        }
    }
}

/// `pg_catalog.pg_[try_]advisory_[un]lock[_shared]`.
fn function(name: &str, mode: Mode) -> String {
    let shared = if mode == Mode::Shared { "_shared" } else { "" };
    format!("pg_catalog.pg_{name}{shared}")
}

/// A plain request as an expression answering a boolean.
fn plain(action: Action, mode: Mode, key: &Key) -> String {
    let args = key.args();
    match action {
        Action::TryLock => format!("{}({args})", function("try_advisory_lock", mode)),
        Action::Unlock => format!("{}({args})", function("advisory_unlock", mode)),
        // Notify only if the key is not held exclusively now (a shared
        // try-lock, given back at once, tells): a waiter blocked on the
        // server that was just granted the key makes a notification
        // pointless. (That try-lock needs a slot in the server's lock table:
        // with the table full, the statement fails after the unlock, and the
        // session is closed as after any failed unlock.) A notification
        // makes the commit wait for the server's notification lock: its
        // transaction runs with lock_timeout 0, whatever the session's or
        // the role's (a wait session's own: Action::WaitStanding), so that
        // the commit does not fail under heavy NOTIFY traffic. pg_notify
        // returns void: num_nulls(..) = 0 makes it a boolean.
        _ => format!(
            "CASE WHEN {}({args}) THEN CASE WHEN pg_catalog.pg_try_advisory_lock_shared({args}) \
             THEN pg_catalog.num_nulls(pg_catalog.pg_advisory_unlock_shared({args}), \
             pg_catalog.set_config('lock_timeout', '0', true), \
             pg_catalog.pg_notify('advisory_locked', {})) OPERATOR(pg_catalog.=) 0 \
             ELSE true END ELSE false END",
            function("advisory_unlock", mode),
            key.payload()
        ),
    }
}

/// A statement for one request.
fn one(r: Request) -> String {
    let key = Key::params(r.form, 1);
    let next = key.next(1);
    match r.action {
        Action::FencedTryLock => fenced_try_lock(r, &key),
        Action::Raise => raise(&key, next),
        Action::Wait => wait(r.mode, &key, Some(next)),
        Action::WaitStanding => wait(r.mode, &key, None),
        Action::CheckedUnlock => checked_unlock(r, &key),
        action => format!("SELECT {}", plain(action, r.mode, &key)),
    }
}

/// `CASE code WHEN …` over every plain request, with the key in `k`
/// (`bigint`) or `a, b` (`integer`s).
fn case(code: &str, k: &str, a: &str, b: &str) -> String {
    let mut sql = String::from("CASE");
    for r in Request::all(&PLAIN) {
        let key = match r.form {
            Form::Int8 => Key::Int8(k.to_owned()),
            Form::Pair => Key::Pair(a.to_owned(), b.to_owned()),
        };
        sql.push_str(&format!(
            " WHEN {code} OPERATOR(pg_catalog.=) {} THEN {}",
            r.code(),
            plain(r.action, r.mode, &key)
        ));
    }
    sql.push_str(" END");
    sql
}

fn two() -> String {
    let one = |c: usize| {
        case(
            &format!("${c}::smallint"),
            &format!("${}::bigint", c + 1),
            &format!("${}::integer", c + 2),
            &format!("${}::integer", c + 3),
        )
    };
    // Select-list items are evaluated left to right.
    format!("SELECT {}, {}", one(1), one(5))
}

fn batch() -> String {
    format!(
        "SELECT {} FROM ROWS FROM (pg_catalog.unnest($1::smallint[]), \
         pg_catalog.unnest($2::bigint[]), pg_catalog.unnest($3::integer[]), \
         pg_catalog.unnest($4::integer[])) WITH ORDINALITY AS t(op, k, a, b, n) ORDER BY t.n",
        case("t.op", "t.k", "t.a", "t.b")
    )
}

fn batch_exclusive() -> String {
    let mut arms = String::new();
    for action in PLAIN {
        let r = Request {
            action,
            mode: Mode::Exclusive,
            form: Form::Int8,
        };
        let key = Key::Int8("t.k".to_owned());
        arms.push_str(&format!(
            " WHEN t.op OPERATOR(pg_catalog.=) {} THEN {}",
            r.code(),
            plain(action, Mode::Exclusive, &key)
        ));
    }
    format!(
        "SELECT CASE{arms} END FROM ROWS FROM (pg_catalog.unnest($1::smallint[]), \
         pg_catalog.unnest($2::bigint[])) WITH ORDINALITY AS t(op, k, n) ORDER BY t.n"
    )
}

/// The fence table's key space and key for a request's key: 1 and the
/// `bigint`, or 2 and the pair packed into one `bigint`.
fn fence_key(key: &Key) -> (u8, String) {
    match key {
        Key::Int8(k) => (1, k.clone()),
        Key::Pair(a, b) => (
            2,
            format!(
                "(({a}::bigint OPERATOR(pg_catalog.<<) 32) OPERATOR(pg_catalog.|) \
                 ({b}::bigint OPERATOR(pg_catalog.&) 4294967295))"
            ),
        ),
    }
}

fn fenced_try_lock(r: Request, key: &Key) -> String {
    let (space, k) = fence_key(key);
    format!(
        "WITH l AS MATERIALIZED (SELECT {}({}) AS got), \
         f AS (INSERT INTO {FENCE_TABLE} AS t (space, key, token) \
         SELECT {space}, {k}, 1 FROM l WHERE l.got \
         ON CONFLICT (space, key) DO UPDATE SET token = t.token OPERATOR(pg_catalog.+) 1, \
         granted_at = pg_catalog.clock_timestamp() RETURNING t.token) \
         SELECT l.got, (SELECT f.token FROM f) FROM l",
        function("try_advisory_lock", r.mode),
        key.args()
    )
}

fn raise(key: &Key, floor: usize) -> String {
    let (space, k) = fence_key(key);
    format!(
        "INSERT INTO {FENCE_TABLE} AS t (space, key, token) VALUES ({space}, {k}, ${floor}::bigint) \
         ON CONFLICT (space, key) DO UPDATE SET token = GREATEST(t.token, EXCLUDED.token) \
         RETURNING t.token"
    )
}

/// `set_config` runs in a sub-query of its own (not pulled up: it is
/// volatile), which the server evaluates before the select list, so the
/// timeout is in force when the wait starts. It is set for the statement's
/// implicit transaction only (`is_local`): later statements of the session,
/// such as an unlock + notify whose commit may queue for the notification
/// lock, run without it (a failed unlock closes the session, with every
/// lock it holds; bench/README.md, 2026-12-05). A wait session's own
/// `lock_timeout` ([`Action::WaitStanding`]) is safe only because such an
/// unlock + notify sets `lock_timeout = 0` for its own transaction (see
/// [`plain`]). 1: free, granted at once; 2: granted after waiting
/// (`pg_advisory_lock` returns void, `num_nulls(..)` makes it a number).
/// `millis`: the parameter with the milliseconds, or `None` to wait under
/// the session's own `lock_timeout`.
fn wait(mode: Mode, key: &Key, millis: Option<usize>) -> String {
    let args = key.args();
    let wait = format!(
        "SELECT CASE WHEN {}({args}) THEN 1 \
         ELSE pg_catalog.num_nulls({}({args})) OPERATOR(pg_catalog.+) 2 END",
        function("try_advisory_lock", mode),
        function("advisory_lock", mode),
    );
    match millis {
        Some(n) => format!(
            "{wait} FROM (SELECT pg_catalog.set_config('lock_timeout', ${n}::bigint::pg_catalog.text, true)) AS s"
        ),
        None => wait,
    }
}

/// A wait session's own `lock_timeout`, set once at its set-up (see
/// [`Action::WaitStanding`]). An integer, not a parameter: `SET` takes
/// none.
pub(crate) fn standing_lock_timeout(millis: i64) -> String {
    format!("SET lock_timeout = {millis}")
}

fn checked_unlock(r: Request, key: &Key) -> String {
    let lock_mode = match r.mode {
        Mode::Exclusive => "ExclusiveLock",
        Mode::Shared => "ShareLock",
    };
    let (subid, classid, objid) = match key {
        Key::Int8(k) => (
            1,
            format!("(({k} OPERATOR(pg_catalog.>>) 32) OPERATOR(pg_catalog.&) 4294967295)::pg_catalog.oid"),
            format!("({k} OPERATOR(pg_catalog.&) 4294967295)::pg_catalog.oid"),
        ),
        Key::Pair(a, b) => (2, format!("{a}::pg_catalog.oid"), format!("{b}::pg_catalog.oid")),
    };
    format!(
        "SELECT CASE WHEN EXISTS (SELECT FROM pg_catalog.pg_locks \
         WHERE locktype OPERATOR(pg_catalog.=) 'advisory' \
         AND pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid() AND granted \
         AND mode OPERATOR(pg_catalog.=) '{lock_mode}' AND objsubid OPERATOR(pg_catalog.=) {subid} \
         AND classid OPERATOR(pg_catalog.=) {classid} AND objid OPERATOR(pg_catalog.=) {objid}) \
         THEN {}({}) ELSE false END",
        function("advisory_unlock", r.mode),
        key.args()
    )
}

// ---------------------------------------------------------------------------
// Lock session set-up
// ---------------------------------------------------------------------------

/// First of all: a `statement_timeout` set for the role or database must
/// not cut the session's set-up or lock statements, which never wait (a
/// failed try-lock would have to be undone, a failed unlock would close the
/// session). Waiting is done in memory, bounded by the caller's own timeout.
pub(crate) const NO_STATEMENT_TIMEOUT: &str = "SET statement_timeout = 0";

/// The session's server process.
pub(crate) const BACKEND_PID: &str = "SELECT pg_catalog.pg_backend_pid()";

/// Run once per session: make the server notice a vanished client soon, so
/// that it frees the session's locks: TCP keepalive after 1 s idle, then
/// every 1 s, 3 probes (about 4 s in all), and, from PostgreSQL 14,
/// `client_connection_check_interval` while a statement runs.
pub(crate) const SESSION_SETUP: &str = "\
SET tcp_keepalives_idle = 1; SET tcp_keepalives_interval = 1; SET tcp_keepalives_count = 3; \
DO $$ BEGIN IF pg_catalog.current_setting('server_version_num')::integer OPERATOR(pg_catalog.>=) 140000 THEN \
PERFORM pg_catalog.set_config('client_connection_check_interval', '1000', false); END IF; END $$";

/// The channel of releases that wake waiters of other processes.
pub(crate) const LISTEN: &str = "LISTEN advisory_locked";

// ---------------------------------------------------------------------------
// Fencing tokens
// ---------------------------------------------------------------------------

/// The table that keeps each key's last fencing token. Unqualified: it
/// lives in the role's current schema (the first of its `search_path` that
/// exists), where it was created.
pub(crate) const FENCE_TABLE: &str = "advisory_locked_fence";

/// Creates the fence table if it is missing, one creation at a time (two
/// processes configuring at once would race on the catalog). `$lock`: the
/// transaction-level key that serialises creations.
pub(crate) fn create_fence_table(lock: i64) -> String {
    format!(
        "BEGIN; SELECT pg_catalog.pg_advisory_xact_lock({lock}); \
         CREATE TABLE IF NOT EXISTS {FENCE_TABLE} (\
         space smallint NOT NULL, key bigint NOT NULL, token bigint NOT NULL, \
         granted_at timestamp with time zone NOT NULL DEFAULT pg_catalog.clock_timestamp(), \
         PRIMARY KEY (space, key)); COMMIT"
    )
}

// ---------------------------------------------------------------------------
// Transaction scope
// ---------------------------------------------------------------------------

/// From PostgreSQL 14 on, for the whole transaction: the server checks
/// every second, while a statement runs, that the client is still there. A
/// select-list expression; NULL before PostgreSQL 14.
macro_rules! check_interval {
    () => {
        "CASE WHEN pg_catalog.current_setting('server_version_num')::integer \
         OPERATOR(pg_catalog.>=) 140000 \
         THEN pg_catalog.set_config('client_connection_check_interval', '1000', true) END"
    };
}

/// Whether the server is a standby.
pub(crate) const IS_STANDBY: &str = "SELECT pg_catalog.pg_is_in_recovery()";

/// The try-lock statement of transaction scope (skip mode), after `BEGIN`:
/// `(granted, pg_backend_pid(), now(), …)`.
pub(crate) fn xact_try_lock(mode: Mode, key: KeyId) -> &'static str {
    match (mode, Form::of(key)) {
        (Mode::Exclusive, Form::Int8) => concat!(
            "SELECT pg_catalog.pg_try_advisory_xact_lock($1), pg_catalog.pg_backend_pid(), pg_catalog.now(), ",
            check_interval!()
        ),
        (Mode::Shared, Form::Int8) => concat!(
            "SELECT pg_catalog.pg_try_advisory_xact_lock_shared($1), pg_catalog.pg_backend_pid(), pg_catalog.now(), ",
            check_interval!()
        ),
        (Mode::Exclusive, Form::Pair) => concat!(
            "SELECT pg_catalog.pg_try_advisory_xact_lock($1, $2), pg_catalog.pg_backend_pid(), pg_catalog.now(), ",
            check_interval!()
        ),
        (Mode::Shared, Form::Pair) => concat!(
            "SELECT pg_catalog.pg_try_advisory_xact_lock_shared($1, $2), pg_catalog.pg_backend_pid(), pg_catalog.now(), ",
            check_interval!()
        ),
    }
}

/// The waiting lock statement of transaction scope, after `BEGIN` and
/// [`XACT_SET_TIMEOUTS`]: `(void, pg_backend_pid(), now())`.
pub(crate) fn xact_wait_lock(mode: Mode, key: KeyId) -> &'static str {
    match (mode, Form::of(key)) {
        (Mode::Exclusive, Form::Int8) => {
            "SELECT pg_catalog.pg_advisory_xact_lock($1), pg_catalog.pg_backend_pid(), pg_catalog.now()"
        }
        (Mode::Shared, Form::Int8) => {
            "SELECT pg_catalog.pg_advisory_xact_lock_shared($1), pg_catalog.pg_backend_pid(), pg_catalog.now()"
        }
        (Mode::Exclusive, Form::Pair) => {
            "SELECT pg_catalog.pg_advisory_xact_lock($1, $2), pg_catalog.pg_backend_pid(), pg_catalog.now()"
        }
        (Mode::Shared, Form::Pair) => {
            "SELECT pg_catalog.pg_advisory_xact_lock_shared($1, $2), pg_catalog.pg_backend_pid(), pg_catalog.now()"
        }
    }
}

/// For a transaction-scope wait: the call's own lock timeout (`$1`, text),
/// and no statement timeout (a role's `statement_timeout` must not cut the
/// wait), for this transaction; and the client check, which also covers
/// the wait.
pub(crate) const XACT_SET_TIMEOUTS: &str = concat!(
    "SELECT pg_catalog.set_config('lock_timeout', $1, true), \
     pg_catalog.set_config('statement_timeout', '0', true), ",
    check_interval!()
);

/// After the wait (sent with it): the body runs with the session's own timeouts.
pub(crate) const XACT_RESTORE_TIMEOUTS: &str =
    "SET LOCAL lock_timeout TO DEFAULT; SET LOCAL statement_timeout TO DEFAULT";

/// Sent with COMMIT: fails (and so makes the COMMIT a rollback) if the
/// transaction is aborted (SQLSTATE 25P02) or is not the one that took the
/// lock (`now()` is the transaction's start, `$1`: SQLSTATE 22012, division
/// by zero).
pub(crate) const XACT_CHECK_BEFORE_COMMIT: &str =
    "SELECT 1 OPERATOR(pg_catalog./) (pg_catalog.now() OPERATOR(pg_catalog.=) $1)::integer";

pub(crate) const BEGIN: &str = "BEGIN";
pub(crate) const COMMIT: &str = "COMMIT";
pub(crate) const ROLLBACK: &str = "ROLLBACK";

// ---------------------------------------------------------------------------
// Exclusion self-test (crate::session::trust)
// ---------------------------------------------------------------------------

/// Session scope: try to take a random key (`$1`): `(granted)`.
pub(crate) const TEST_TRY_LOCK: &str = "SELECT pg_catalog.pg_try_advisory_lock($1::bigint)";

/// Session scope: release it: `(was held)`.
pub(crate) const TEST_UNLOCK: &str = "SELECT pg_catalog.pg_advisory_unlock($1::bigint)";

/// Session scope: try to take the key and, if granted, release it at once:
/// `(granted, released)` (`OFFSET 0` keeps the try-lock in a sub-query of
/// its own, evaluated once, before the unlock).
pub(crate) const TEST_TRY_AND_UNLOCK: &str = "\
SELECT t.got, CASE WHEN t.got THEN pg_catalog.pg_advisory_unlock($1::bigint) ELSE false END \
FROM (SELECT pg_catalog.pg_try_advisory_lock($1::bigint) AS got OFFSET 0) AS t";

/// Transaction scope, after `BEGIN`: try to take the key for the
/// transaction: `(granted)`.
pub(crate) const TEST_XACT_TRY_LOCK: &str =
    "SELECT pg_catalog.pg_try_advisory_xact_lock($1::bigint)";

// ---------------------------------------------------------------------------
// Status
// ---------------------------------------------------------------------------

/// The advisory locks of the current database, held or awaited, with their
/// holders: `(pid, classid, objid, objsubid, mode, granted,
/// application_name, state, backend age s, transaction age s, wait s)`.
pub(crate) const STATUS: &str = "\
SELECT l.pid, l.classid::bigint, l.objid::bigint, l.objsubid::smallint, l.mode, l.granted,
       a.application_name, a.state,
       pg_catalog.date_part('epoch', pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) a.backend_start)::double precision,
       pg_catalog.date_part('epoch', pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) a.xact_start)::double precision,
       pg_catalog.date_part('epoch', pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-)
           (pg_catalog.to_jsonb(l) OPERATOR(pg_catalog.->>) 'waitstart')::timestamp with time zone)::double precision
FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid OPERATOR(pg_catalog.=) l.pid
WHERE l.locktype OPERATOR(pg_catalog.=) 'advisory'
  AND l.database OPERATOR(pg_catalog.=) (SELECT oid FROM pg_catalog.pg_database
                                         WHERE datname OPERATOR(pg_catalog.=) pg_catalog.current_database())
ORDER BY l.granted DESC, l.classid, l.objid, l.objsubid, l.pid";

#[cfg(test)]
mod tests {
    use super::*;

    /// Every statement has its own index, dense from 0, and the prepared
    /// sets hold each once.
    #[test]
    fn statement_indexes_are_dense_and_distinct() {
        let all = Statement::prepared(true, true);
        assert_eq!(all.len(), STATEMENTS);
        let mut seen = [false; STATEMENTS];
        for s in &all {
            assert!(!seen[s.index()], "{s:?} shares index {}", s.index());
            seen[s.index()] = true;
        }
        assert_eq!(Statement::prepared(false, false).len(), ONE_FENCED_AT + 1);
    }

    /// The codes of the twelve plain requests are 0..12, each once, and
    /// `case` selects each request's own expression by its code.
    #[test]
    fn plain_codes_are_distinct() {
        let mut codes: Vec<i16> = Request::all(&PLAIN).map(Request::code).collect();
        codes.sort_unstable();
        assert_eq!(codes, (0..12).collect::<Vec<i16>>());
        let sql = case("c", "k", "a", "b");
        for r in Request::all(&PLAIN) {
            let key = match r.form {
                Form::Int8 => Key::Int8("k".into()),
                Form::Pair => Key::Pair("a".into(), "b".into()),
            };
            let arm = format!(
                "WHEN c OPERATOR(pg_catalog.=) {} THEN {}",
                r.code(),
                plain(r.action, r.mode, &key)
            );
            assert!(sql.contains(&arm), "{r:?}");
        }
    }

    /// Every statement a session can prepare is accepted by the real
    /// server (the fence table created first, as an entry with fencing
    /// tokens does).
    #[tokio::test]
    async fn every_statement_prepares_on_the_server() {
        let client = crate::pg::test_server::client().await;
        client.batch_execute(&create_fence_table(1)).await.unwrap();
        for statement in Statement::prepared(true, true) {
            if let Err(e) = client.prepare(&statement.sql()).await {
                panic!("{statement:?}: {e:?}");
            }
        }
        for text in [
            BACKEND_PID,
            IS_STANDBY,
            STATUS,
            XACT_SET_TIMEOUTS,
            XACT_CHECK_BEFORE_COMMIT,
        ] {
            if let Err(e) = client.prepare(text).await {
                panic!("{text}: {e:?}");
            }
        }
        for mode in MODES {
            for key in [KeyId::Int(1), KeyId::Pair(1, 2)] {
                for text in [xact_try_lock(mode, key), xact_wait_lock(mode, key)] {
                    client.prepare(text).await.unwrap();
                }
            }
        }
    }

    /// The batch of exclusive `bigint` requests does every request, in
    /// order, on the real server: two locks, then their unlocks (one with
    /// notify), then a lock of a key held by another session (false).
    #[tokio::test]
    async fn the_exclusive_batch_does_its_requests_in_order() {
        let (client, other) = (
            crate::pg::test_server::client().await,
            crate::pg::test_server::client().await,
        );
        let base = (i64::from(std::process::id()) << 24) | (1 << 60);
        let busy = base + 9;
        other
            .execute("SELECT pg_advisory_lock($1)", &[&busy])
            .await
            .unwrap();
        let code = |action| {
            Request {
                action,
                mode: Mode::Exclusive,
                form: Form::Int8,
            }
            .code()
        };
        let codes = [
            code(Action::TryLock),
            code(Action::TryLock),
            code(Action::Unlock),
            code(Action::UnlockNotify),
            code(Action::TryLock),
        ];
        let keys = [base, base + 1, base, base + 1, busy];
        let rows = client
            .query(&Statement::BatchExclusive.sql(), &[&&codes[..], &&keys[..]])
            .await
            .unwrap();
        let got: Vec<bool> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(got, [true, true, true, true, false]);
        let held: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(held, 0);
    }

    /// No function or type of any statement is left to the role's
    /// `search_path`: every identifier right before `(` is
    /// `pg_catalog.`-qualified (or a name, not a call), and no cast names a
    /// type by a name that a schema could shadow.
    #[test]
    fn every_function_is_qualified() {
        let mut texts: Vec<String> = Statement::prepared(true, true)
            .into_iter()
            .map(Statement::sql)
            .collect();
        texts.extend([BACKEND_PID, SESSION_SETUP, IS_STANDBY, STATUS].map(str::to_owned));
        texts.extend([XACT_SET_TIMEOUTS, XACT_CHECK_BEFORE_COMMIT].map(str::to_owned));
        texts.extend(
            [
                TEST_TRY_LOCK,
                TEST_UNLOCK,
                TEST_TRY_AND_UNLOCK,
                TEST_XACT_TRY_LOCK,
            ]
            .map(str::to_owned),
        );
        texts.push(create_fence_table(1));
        for mode in MODES {
            for key in [KeyId::Int(1), KeyId::Pair(1, 2)] {
                texts.push(xact_try_lock(mode, key).to_owned());
                texts.push(xact_wait_lock(mode, key).to_owned());
            }
        }
        for text in &texts {
            for (i, _) in text.match_indices('(') {
                let start = text[..i]
                    .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
                    .map_or(0, |p| p + 1);
                let word = &text[start..i];
                // `AS t(op, …)` names columns; GREATEST is grammar.
                let fine = word.is_empty()
                    || word.starts_with("pg_catalog.")
                    || ["t", "GREATEST", "OPERATOR"].contains(&word);
                assert!(fine, "unqualified call {word}( in {text}");
            }
            for cast in [
                "::int2",
                "::int4",
                "::int8",
                "::int)",
                "::text",
                "::oid",
                "::float8",
                "::timestamptz",
            ] {
                assert!(!text.contains(cast), "cast {cast} in {text}");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Bring your own connection (crate::features::external)
// ---------------------------------------------------------------------------

/// What a statement of [`crate::features::external`] does, on a caller's
/// connection or transaction. Every statement answers one row of one
/// `boolean` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum External {
    /// `pg_try_advisory_xact_lock[_shared]`: `(granted)`. Parameters: the key.
    TryXact,
    /// `pg_advisory_xact_lock[_shared]` under the lock timeout `$1`
    /// (text, `'0'`: none), set with `set_config(…, true)` and put back to
    /// the caller's own value in the same statement once granted:
    /// `(true)`. Parameters: the timeout, then the key.
    WaitXact,
    /// `pg_try_advisory_lock[_shared]`: `(granted)`. Parameters: the key.
    TrySession,
    /// `pg_advisory_lock[_shared]` as [`External::WaitXact`] does.
    WaitSession,
    /// `pg_advisory_unlock[_shared]`: `(was held)`. Parameters: the key.
    Unlock,
}

impl External {
    const ALL: [External; 5] = [
        External::TryXact,
        External::WaitXact,
        External::TrySession,
        External::WaitSession,
        External::Unlock,
    ];

    /// True for the statements whose first parameter is the lock timeout.
    pub(crate) fn waits(self) -> bool {
        matches!(self, External::WaitXact | External::WaitSession)
    }
}

/// The text of an [`External`] statement for a mode and a key form.
pub(crate) fn external(what: External, mode: Mode, form: Form) -> &'static str {
    static TEXTS: std::sync::LazyLock<Vec<(External, Mode, Form, String)>> =
        std::sync::LazyLock::new(|| {
            let mut texts = Vec::new();
            for what in External::ALL {
                for mode in MODES {
                    for form in FORMS {
                        texts.push((what, mode, form, external_text(what, mode, form)));
                    }
                }
            }
            texts
        });
    TEXTS
        .iter()
        .find(|(w, m, f, _)| (*w, *m, *f) == (what, mode, form))
        .map(|(.., text)| text.as_str())
        .unwrap_or_default()
}

fn external_text(what: External, mode: Mode, form: Form) -> String {
    let shared = match mode {
        Mode::Exclusive => "",
        Mode::Shared => "_shared",
    };
    let first = if what.waits() { 2 } else { 1 };
    let key = match form {
        Form::Int8 => format!("${first}::bigint"),
        Form::Pair => format!("${first}::integer, ${}::integer", first + 1),
    };
    let call = |name: &str| format!("pg_catalog.{name}{shared}({key})");
    match what {
        External::TryXact => format!("SELECT {}", call("pg_try_advisory_xact_lock")),
        External::TrySession => format!("SELECT {}", call("pg_try_advisory_lock")),
        External::Unlock => format!("SELECT {}", call("pg_advisory_unlock")),
        External::WaitXact => wait_with_timeout(&call("pg_advisory_xact_lock")),
        External::WaitSession => wait_with_timeout(&call("pg_advisory_lock")),
    }
}

/// One statement: remember the caller's `lock_timeout`, set `$1` for this
/// transaction, wait for the lock, put the caller's value back. Each
/// `OFFSET 0` sub-query is evaluated before the query around it (and its
/// volatile columns are never dropped), so the order is fixed.
fn wait_with_timeout(lock: &str) -> String {
    format!(
        "SELECT pg_catalog.set_config('lock_timeout', w.old, true) IS NOT NULL \
         FROM (SELECT t.old, {lock} AS locked \
               FROM (SELECT pg_catalog.current_setting('lock_timeout') AS old, \
                            pg_catalog.set_config('lock_timeout', $1, true) AS set \
                     OFFSET 0) AS t \
               OFFSET 0) AS w"
    )
}

#[cfg(test)]
mod external_tests {
    use super::*;

    fn all() -> Vec<&'static str> {
        let mut texts = Vec::new();
        for what in External::ALL {
            for mode in MODES {
                for form in FORMS {
                    texts.push(external(what, mode, form));
                }
            }
        }
        texts
    }

    /// Twenty distinct texts, each calling `pg_catalog` functions only.
    #[test]
    fn distinct_and_qualified() {
        let texts = all();
        assert_eq!(texts.len(), 20);
        for (i, text) in texts.iter().enumerate() {
            assert!(!text.is_empty());
            assert!(!texts[..i].contains(text), "{text}");
            for (at, _) in text.match_indices('(') {
                let start = text[..at]
                    .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
                    .map_or(0, |p| p + 1);
                let word = &text[start..at];
                assert!(
                    word.is_empty() || word.starts_with("pg_catalog."),
                    "unqualified call {word}( in {text}"
                );
            }
        }
        assert!(external(External::WaitXact, Mode::Shared, Form::Pair)
            .contains("pg_catalog.pg_advisory_xact_lock_shared($2::integer, $3::integer)"));
    }

    /// The server accepts every text.
    #[tokio::test]
    async fn every_external_statement_prepares_on_the_server() {
        let client = crate::pg::test_server::client().await;
        for text in all() {
            if let Err(e) = client.prepare(text).await {
                panic!("{text}: {e:?}");
            }
        }
    }
}
