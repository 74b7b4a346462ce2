//! The key names of every `#[advisory_locked]` fn in the program, collected
//! at compile time.
//!
//! Each annotated fn submits one entry (with the [`inventory`] crate) when
//! the program is linked, so the program knows, before any lock is taken,
//! every key it can lock: [`known`] lists them, [`name_of`] turns a number
//! seen in `pg_locks` back into its name, and [`collisions`] finds two
//! different names that lock the same number (which would exclude each
//! other by accident). [`LockConfig::install`](crate::LockConfig::install)
//! logs every collision that involves a fn of the installed entry as a
//! `tracing` error (it does not fail).
//!
//! ```no_run
//! use advisory_locked::{advisory_locked, key_hash, names, KeyId};
//!
//! #[advisory_locked(key = "report:daily")]
//! async fn daily_report() {}
//!
//! let id = KeyId::Int(key_hash("report:daily"));
//! assert_eq!(names::name_of(id), Some("report:daily"));
//! for key in names::known() {
//!     println!("{} locks {:?} ({}:{})", key.name(), key.id(), key.file(), key.line());
//! }
//! assert!(names::collisions().is_empty());
//! ```
//!
//! Limits: entries are collected from the code linked into the program: an
//! annotated fn in a library crate is listed when that crate is linked in
//! (any use of it does). A template key (`key = "tenant:{id}"`) is listed
//! with its template, but its numbers are only known at run time, so
//! [`name_of`] cannot name them and [`collisions`] cannot check them.

use std::fmt;

use crate::{KeyId, Mode};

/// Which form of `key = …` a fn uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// A string without placeholders, `key = "report:daily"`, hashed at
    /// compile time with [`key_hash`](crate::key_hash).
    Name,
    /// An integer, `key = 42`.
    Int,
    /// A pair of integers, `key = (7, 42)`.
    Pair,
    /// A template, `key = "tenant:{tenant_id}"`: its numbers are computed
    /// at run time.
    Template,
}

/// The key of one annotated fn, as written in its attribute.
///
/// ```no_run
/// use advisory_locked::{advisory_locked, names};
///
/// #[advisory_locked(key = "tenant:{tenant_id}", pool = "jobs", shared)]
/// async fn rebuild(tenant_id: u64) {}
///
/// let k = names::known().into_iter().find(|k| k.name() == "tenant:{tenant_id}").unwrap();
/// assert_eq!(k.kind(), names::KeyKind::Template);
/// assert_eq!(k.id(), None);
/// assert_eq!((k.pool(), k.mode()), ("jobs", advisory_locked::Mode::Shared));
/// ```
#[derive(Clone, Copy)]
pub struct KnownKey {
    entry: &'static KeyName,
}

impl KnownKey {
    /// The key as written: the string, the integer in decimal, `"(a, b)"`,
    /// or the template.
    pub fn name(&self) -> &'static str {
        self.entry.name
    }

    /// The number PostgreSQL locks; `None` for a template.
    pub fn id(&self) -> Option<KeyId> {
        self.entry.id
    }

    /// Which form of `key = …`.
    pub fn kind(&self) -> KeyKind {
        self.entry.kind
    }

    /// The registry entry the fn uses (`pool = "…"`, else `"default"`).
    pub fn pool(&self) -> &'static str {
        self.entry.pool
    }

    /// The mode the fn takes the lock in.
    pub fn mode(&self) -> Mode {
        self.entry.mode
    }

    /// The source file of the fn (`file!()`).
    pub fn file(&self) -> &'static str {
        self.entry.file
    }

    /// The line of the fn's name (`line!()`).
    pub fn line(&self) -> u32 {
        self.entry.line
    }
}

impl fmt::Debug for KnownKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KnownKey")
            .field("name", &self.name())
            .field("id", &self.id())
            .field("kind", &self.kind())
            .field("pool", &self.pool())
            .field("mode", &self.mode())
            .field("file", &self.file())
            .field("line", &self.line())
            .finish()
    }
}

impl fmt::Display for KnownKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.name())?;
        if let Some(id) = self.id() {
            write!(f, " ({id})")?;
        }
        write!(f, " at {}:{}", self.file(), self.line())
    }
}

/// Every annotated fn's key, sorted by file and line.
pub fn known() -> Vec<KnownKey> {
    let mut all: Vec<KnownKey> = inventory::iter::<KeyName>
        .into_iter()
        .map(|entry| KnownKey { entry })
        .collect();
    all.sort_by(|a, b| (a.file(), a.line(), a.name()).cmp(&(b.file(), b.line(), b.name())));
    all
}

/// The name of the key that locks `id`, if an annotated fn declares it.
///
/// With several names for one number (a [collision](collisions)), a
/// string name wins over an integer written as a number, then the first by
/// file and line.
pub fn name_of(id: KeyId) -> Option<&'static str> {
    known()
        .into_iter()
        .filter(|k| k.id() == Some(id))
        .min_by_key(|k| k.kind() != KeyKind::Name)
        .map(|k| k.name())
}

/// Two or more different key names that lock the same number.
///
/// The same name on several fns is not a collision (they share the lock on
/// purpose); a string whose hash equals an integer key, or two strings with
/// the same hash, are. Collisions are checked across pools, which may well
/// be one database.
#[derive(Debug, Clone)]
pub struct KeyCollision {
    /// The number they all lock.
    pub id: KeyId,
    /// Every fn whose key locks it (at least two distinct names), by file and line.
    pub keys: Vec<KnownKey>,
}

impl fmt::Display for KeyCollision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key {} is locked under different names:", self.id)?;
        for (i, k) in self.keys.iter().enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            write!(f, "{sep}{k}")?;
        }
        Ok(())
    }
}

/// Every number locked under two or more different names, sorted by number.
pub fn collisions() -> Vec<KeyCollision> {
    let mut by_id: std::collections::BTreeMap<(u8, i64, i32, i32), Vec<KnownKey>> =
        Default::default();
    for k in known() {
        let order = match k.id() {
            Some(KeyId::Int(v)) => (0, v, 0, 0),
            Some(KeyId::Pair(a, b)) => (1, 0, a, b),
            None => continue,
        };
        by_id.entry(order).or_default().push(k);
    }
    by_id
        .into_values()
        .filter(|keys| keys.iter().any(|k| k.name() != keys[0].name()))
        .map(|keys| KeyCollision {
            id: keys[0].id().expect("only keys with a number are grouped"),
            keys,
        })
        .collect()
}

/// One annotated fn's key, submitted by the attribute's expansion with
/// `inventory::submit!` (read it through [`crate::features::names`]).
#[derive(Debug)]
#[doc(hidden)]
pub struct KeyName {
    /// The key as written: the literal, the integer in decimal, `"(a, b)"`,
    /// or the template string.
    pub name: &'static str,
    /// The number locked; `None` for a template (known only at run time).
    pub id: Option<crate::KeyId>,
    /// Which form of `key = …`.
    pub kind: KeyKind,
    /// The registry entry (`pool = "…"`, else `"default"`).
    pub pool: &'static str,
    /// `shared` or exclusive.
    pub mode: Mode,
    /// `file!()` of the annotated fn.
    pub file: &'static str,
    /// `line!()` of the annotated fn's name.
    pub line: u32,
}

inventory::collect!(KeyName);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key_hash;

    // Two annotated fns of this crate's unit tests: the attribute's
    // expansion works inside the crate (`extern crate self as advisory_locked`).
    #[crate::advisory_locked(key = "names:unit:collide")]
    #[allow(dead_code)]
    async fn by_name() {}

    #[crate::advisory_locked(key = -6372658367527014326, shared)]
    #[allow(dead_code)]
    async fn by_number() {}

    #[crate::advisory_locked(key = "names:unit:{n}", pool = "p")]
    #[allow(dead_code)]
    async fn by_template(n: u32) {}

    #[test]
    fn collected_and_collisions_found() {
        let id = KeyId::Int(key_hash("names:unit:collide"));
        assert_eq!(id, KeyId::Int(-6372658367527014326));
        let all = known();
        let named = all
            .iter()
            .find(|k| k.name() == "names:unit:collide")
            .expect("collected");
        assert_eq!(named.id(), Some(id));
        assert_eq!(named.kind(), KeyKind::Name);
        assert_eq!(named.mode(), Mode::Exclusive);
        assert_eq!(named.pool(), "default");
        assert!(named.file().ends_with("names.rs"), "{}", named.file());
        let template = all
            .iter()
            .find(|k| k.name() == "names:unit:{n}")
            .expect("collected");
        assert_eq!((template.id(), template.pool()), (None, "p"));

        assert_eq!(name_of(id), Some("names:unit:collide"));
        let c = collisions();
        let ours: Vec<_> = c.iter().filter(|c| c.id == id).collect();
        assert_eq!(ours.len(), 1, "{c:?}");
        let names: Vec<_> = ours[0].keys.iter().map(|k| k.name()).collect();
        assert_eq!(names, ["names:unit:collide", "-6372658367527014326"]);
        assert!(
            ours[0].to_string().starts_with(
                "key -6372658367527014326 is locked under different names: \"names:unit:collide\""
            ),
            "{}",
            ours[0]
        );
    }
}
