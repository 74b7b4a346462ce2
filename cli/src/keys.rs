//! Keys as operators write them, durations, and the `key` command.

use std::time::Duration;

use advisory_locked::{KeyId, LockKey};
use serde_json::json;

/// A KEY argument: a 64-bit number (`754907581750802352`), a pair
/// (`7,42` or `(7, 42)`), else a name hashed as the crate hashes string
/// keys; `as_name` hashes it as a name even when it looks like a number.
pub fn parse_key(text: &str, as_name: bool) -> Result<LockKey, String> {
    if !as_name {
        if let Ok(n) = text.trim().parse::<i64>() {
            return Ok(LockKey::int(n));
        }
        if let Some((a, b)) = pair(text) {
            return Ok(LockKey::pair(a, b));
        }
    }
    named(text)
}

/// A key from a name; a name that no lock can carry (empty, NUL) is refused.
pub fn named(text: &str) -> Result<LockKey, String> {
    if text.is_empty() {
        return Err("an empty key name".to_owned());
    }
    LockKey::try_named(text.to_owned()).map_err(|e| e.to_string())
}

/// `a,b` or `(a, b)` with two 32-bit numbers.
fn pair(text: &str) -> Option<(i32, i32)> {
    let t = text.trim();
    let t = t
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .unwrap_or(t);
    let (a, b) = t.split_once(',')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

/// `pg_locks`' view of a key: (`classid`, `objid`, `objsubid`).
pub fn lock_columns(id: KeyId) -> (u32, u32, i16) {
    match id {
        KeyId::Int(k) => (((k as u64) >> 32) as u32, k as u32, 1),
        KeyId::Pair(a, b) => (a as u32, b as u32, 2),
    }
}

/// The names given with `--name` that hash to `id`, first one wins.
pub fn name_for(id: KeyId, names: &[String]) -> Option<&str> {
    names
        .iter()
        .find(|n| KeyId::Int(advisory_locked::key_hash(n)) == id)
        .map(String::as_str)
}

/// A duration as `200ms`, `30s`, `5m`, `2h` (a whole number and a unit).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit: write e.g. 200ms, 30s, 5m or 2h"))?;
    let (number, unit) = t.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration: write e.g. 200ms, 30s, 5m or 2h"))?;
    let ms = match unit.trim() {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" | "min" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}: use ms, s, m or h"
            ))
        }
    };
    match ms {
        Some(0) => Err(format!("{text:?} is zero; give a positive duration")),
        Some(ms) => Ok(Duration::from_millis(ms)),
        None => Err(format!("{text:?} is too long")),
    }
}

/// A name as an SQL string literal.
fn literal(name: &str) -> String {
    format!("'{}'", name.replace('\'', "''"))
}

/// The psql query that shows who holds or awaits the key.
pub fn psql_query(id: KeyId) -> String {
    let (classid, objid, objsubid) = lock_columns(id);
    format!(
        "SELECT l.pid, l.mode, l.granted, a.application_name, a.client_addr, \
         now() - a.backend_start AS connected_for, l.waitstart \
         FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND l.classid = {classid} AND l.objid = {objid} AND l.objsubid = {objsubid};"
    )
}

/// The `key` command's output for one name: text or a JSON object.
pub fn describe(name: &str, json: bool) -> Result<String, String> {
    let key = named(name)?;
    let number = match key.id() {
        KeyId::Int(number) => number,
        KeyId::Pair(..) => return Err(format!("{name:?} is not a string key")),
    };
    let (classid, objid, objsubid) = lock_columns(key.id());
    let query = psql_query(key.id());
    if json {
        let value = json!({
            "name": name,
            "key": number,
            "key_text": number.to_string(),
            "classid": classid,
            "objid": objid,
            "objsubid": objsubid,
            "hash_sql": format!("SELECT hashtextextended({}, 0);", literal(name)),
            "psql": query,
        });
        return Ok(value.to_string());
    }
    Ok(format!(
        "name      {name}\n\
         key       {number}    (SELECT hashtextextended({lit}, 0))\n\
         pg_locks  classid = {classid}, objid = {objid}, objsubid = {objsubid}\n\
         psql      {query}\n",
        lit = literal(name)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_durations() {
        assert_eq!(parse_key("42", false).unwrap().id(), KeyId::Int(42));
        assert_eq!(parse_key("-1", false).unwrap().id(), KeyId::Int(-1));
        assert_eq!(parse_key("7,42", false).unwrap().id(), KeyId::Pair(7, 42));
        assert_eq!(
            parse_key("(-7, 42)", false).unwrap().id(),
            KeyId::Pair(-7, 42)
        );
        let daily = KeyId::Int(754907581750802352);
        assert_eq!(parse_key("report:daily", false).unwrap().id(), daily);
        assert_eq!(
            parse_key("42", true).unwrap().id(),
            KeyId::Int(advisory_locked::key_hash("42"))
        );
        assert!(parse_key("", false).is_err());
        assert!(parse_key("a\0b", false).is_err());
        assert_eq!(lock_columns(KeyId::Int(-1)), (u32::MAX, u32::MAX, 1));
        assert_eq!(lock_columns(KeyId::Int(1 << 32 | 5)), (1, 5, 1));
        assert_eq!(lock_columns(KeyId::Pair(-1, 2)), (u32::MAX, 2, 2));

        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        for bad in [
            "",
            "5",
            "s",
            "0s",
            "1.5s",
            "3 parsecs",
            "-1s",
            "99999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        let text = describe("it's", false).unwrap();
        assert!(text.contains("hashtextextended('it''s', 0)"), "{text}");
    }
}
