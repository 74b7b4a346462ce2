//! Lock keys: the names users write and the numbers PostgreSQL locks.
//!
//! A string key is hashed with [`key_hash`], a port of PostgreSQL's
//! `hashtextextended(text, 0)`, so the number this crate locks is the one an
//! operator gets from `SELECT hashtextextended('report:daily', 0)` in psql.

use std::borrow::Cow;
use std::fmt;

/// Hashes a key name exactly as PostgreSQL's `hashtextextended(name, 0)` does.
///
/// This is Bob Jenkins' lookup3 hash as in PostgreSQL's `hash_bytes_extended`
/// (little-endian word reads, result `(b << 32) | c`), over the UTF-8 bytes of
/// `name`. It is a `const fn`, so keys can be computed at compile time:
///
/// ```
/// use advisory_locked::key_hash;
///
/// const DAILY: i64 = key_hash("report:daily");
/// assert_eq!(DAILY, 754907581750802352);
/// ```
///
/// The same number from psql: `SELECT hashtextextended('report:daily', 0);`
/// (for a database whose default collation is deterministic, as it is unless
/// created with a nondeterministic ICU collation).
pub const fn key_hash(name: &str) -> i64 {
    hash_bytes_extended(name.as_bytes(), 0) as i64
}

const fn rot(x: u32, k: u32) -> u32 {
    x.rotate_left(k)
}

const fn mix(mut a: u32, mut b: u32, mut c: u32) -> (u32, u32, u32) {
    a = a.wrapping_sub(c);
    a ^= rot(c, 4);
    c = c.wrapping_add(b);
    b = b.wrapping_sub(a);
    b ^= rot(a, 6);
    a = a.wrapping_add(c);
    c = c.wrapping_sub(b);
    c ^= rot(b, 8);
    b = b.wrapping_add(a);
    a = a.wrapping_sub(c);
    a ^= rot(c, 16);
    c = c.wrapping_add(b);
    b = b.wrapping_sub(a);
    b ^= rot(a, 19);
    a = a.wrapping_add(c);
    c = c.wrapping_sub(b);
    c ^= rot(b, 4);
    b = b.wrapping_add(a);
    (a, b, c)
}

const fn final_mix(mut a: u32, mut b: u32, mut c: u32) -> (u32, u32, u32) {
    c ^= b;
    c = c.wrapping_sub(rot(b, 14));
    a ^= c;
    a = a.wrapping_sub(rot(c, 11));
    b ^= a;
    b = b.wrapping_sub(rot(a, 25));
    c ^= b;
    c = c.wrapping_sub(rot(b, 16));
    a ^= c;
    a = a.wrapping_sub(rot(c, 4));
    b ^= a;
    b = b.wrapping_sub(rot(a, 14));
    c ^= b;
    c = c.wrapping_sub(rot(b, 24));
    (a, b, c)
}

/// Reads `n` bytes (0..=4) starting at `at` as a little-endian word.
const fn word(k: &[u8], at: usize, n: usize) -> u32 {
    let mut w = 0u32;
    let mut i = 0;
    while i < n {
        w |= (k[at + i] as u32) << (8 * i);
        i += 1;
    }
    w
}

/// PostgreSQL's `hash_bytes_extended` (src/common/hashfn.c) on a
/// little-endian machine.
const fn hash_bytes_extended(k: &[u8], seed: u64) -> u64 {
    let mut len = k.len();
    // PostgreSQL computes this in uint32 arithmetic from an `int` length.
    let init = 0x9e37_79b9u32
        .wrapping_add(len as u32)
        .wrapping_add(3_923_095);
    let (mut a, mut b, mut c) = (init, init, init);
    if seed != 0 {
        a = a.wrapping_add((seed >> 32) as u32);
        b = b.wrapping_add(seed as u32);
        (a, b, c) = mix(a, b, c);
    }
    let mut at = 0;
    while len >= 12 {
        a = a.wrapping_add(word(k, at, 4));
        b = b.wrapping_add(word(k, at + 4, 4));
        c = c.wrapping_add(word(k, at + 8, 4));
        (a, b, c) = mix(a, b, c);
        at += 12;
        len -= 12;
    }
    // The tail: up to 11 bytes. The lowest byte of `c` is left for the
    // length, so the bytes for `c` are shifted up by 8 bits.
    if len >= 9 {
        c = c.wrapping_add(word(k, at + 8, len - 8) << 8);
    }
    if len >= 5 {
        b = b.wrapping_add(word(k, at + 4, if len > 8 { 4 } else { len - 4 }));
    }
    if len >= 1 {
        a = a.wrapping_add(word(k, at, if len > 4 { 4 } else { len }));
    }
    let (_, b, c) = final_mix(a, b, c);
    ((b as u64) << 32) | c as u64
}

/// The number PostgreSQL locks: one 64-bit key, or a pair of 32-bit keys.
///
/// The two key spaces are separate in PostgreSQL: `Int(5)` and `Pair(0, 5)`
/// are different locks. In `pg_locks`, an `Int` key shows as `classid` = high
/// 32 bits, `objid` = low 32 bits, `objsubid` = 1; a `Pair(a, b)` as
/// `classid` = a, `objid` = b, `objsubid` = 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyId {
    /// `pg_advisory_lock(bigint)`.
    Int(i64),
    /// `pg_advisory_lock(int, int)`.
    Pair(i32, i32),
}

impl KeyId {
    /// The statement parameters of a key: `(int8 key, int4 a, int4 b)`, the
    /// unused ones zero.
    pub(crate) fn parts(self) -> (i64, i32, i32) {
        match self {
            KeyId::Int(k) => (k, 0, 0),
            KeyId::Pair(a, b) => (0, a, b),
        }
    }
}

/// A map keyed by [`KeyId`], with [`KeyIdHasher`].
pub(crate) type KeyMap<V> = std::collections::HashMap<KeyId, V, BuildKeyIdHasher>;

/// Hashes [`KeyId`]s for the in-process maps (a few per lock on the hot
/// path): a multiply-rotate mix with a per-process random seed, much
/// cheaper than the default SipHash. Keys are chosen by the application,
/// not by remote input; the seed keeps collisions from being the same in
/// every process.
#[derive(Clone, Copy)]
pub(crate) struct BuildKeyIdHasher {
    seed: u64,
}

impl Default for BuildKeyIdHasher {
    fn default() -> Self {
        static SEED: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        });
        BuildKeyIdHasher { seed: *SEED }
    }
}

impl std::hash::BuildHasher for BuildKeyIdHasher {
    type Hasher = KeyIdHasher;
    fn build_hasher(&self) -> KeyIdHasher {
        KeyIdHasher(self.seed)
    }
}

/// See [`BuildKeyIdHasher`].
pub(crate) struct KeyIdHasher(u64);

const MIX: u64 = 0x9E37_79B9_7F4A_7C15;

impl std::hash::Hasher for KeyIdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(buf));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(MIX).rotate_left(29);
    }

    fn write_i64(&mut self, n: i64) {
        self.write_u64(n as u64);
    }

    fn write_i32(&mut self, n: i32) {
        self.write_u64(n as u32 as u64);
    }

    fn write_isize(&mut self, n: isize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        // The top bits pick the bucket group in hashbrown: mix them well.
        let x = self.0 ^ (self.0 >> 32);
        x.wrapping_mul(MIX) ^ (x >> 29)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyId::Int(k) => write!(f, "{k}"),
            KeyId::Pair(a, b) => write!(f, "({a}, {b})"),
        }
    }
}

/// A lock key: its human name (for logs and errors) and the number locked.
///
/// A name may be any text except one containing NUL (`'\0'`): PostgreSQL
/// text can't hold NUL, so no `hashtextextended('…', 0)` in psql (nor any
/// other tool that hashes text on the server) can produce the number such a
/// name hashes to, and nobody could find its lock by name. The constructors
/// don't fail ([`named`](Self::named) is used with computed names, e.g. by
/// the attribute's key templates); a key whose name holds NUL is refused by
/// every lock call instead, with [`Error::InvalidKey`](crate::Error::InvalidKey)
/// and before anything is sent. [`try_named`](Self::try_named) returns that
/// error at once. (A string literal `key = "a\0b"` in the attribute is a
/// compile error.)
///
/// ```
/// use advisory_locked::{key_hash, KeyId, LockKey};
///
/// let k = LockKey::named("report:daily");
/// assert_eq!(k.id(), KeyId::Int(key_hash("report:daily")));
/// assert_eq!(k.name(), "report:daily");
///
/// let legacy = LockKey::pair(7, 42);
/// assert_eq!(legacy.id(), KeyId::Pair(7, 42));
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LockKey {
    name: Name,
    id: KeyId,
    /// The name holds NUL: the key is refused by every lock call.
    nul: bool,
}

/// True if `name` holds a NUL byte (a `const fn`, for [`LockKey::with_id`]).
const fn has_nul(name: &str) -> bool {
    let bytes = name.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == 0 {
            return true;
        }
        i += 1;
    }
    false
}

/// A key's name. Numbers are written into an inline buffer: a raw key
/// costs no allocation to make or to clone (a guard keeps a clone).
#[derive(Clone)]
enum Name {
    Text(Cow<'static, str>),
    Number { len: u8, buf: [u8; NUMBER_LEN] },
}

/// Enough for `(-2147483648, -2147483648)` and any i64.
const NUMBER_LEN: usize = 26;

impl Name {
    fn number(args: fmt::Arguments<'_>) -> Name {
        struct Buf {
            len: usize,
            buf: [u8; NUMBER_LEN],
        }
        impl fmt::Write for Buf {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                let end = self.len + s.len();
                let dst = self.buf.get_mut(self.len..end).ok_or(fmt::Error)?;
                dst.copy_from_slice(s.as_bytes());
                self.len = end;
                Ok(())
            }
        }
        let mut b = Buf {
            len: 0,
            buf: [0; NUMBER_LEN],
        };
        match fmt::write(&mut b, args) {
            Ok(()) => Name::Number {
                len: b.len as u8,
                buf: b.buf,
            },
            // Can't happen for the numbers written here; stay correct anyway.
            Err(_) => Name::Text(Cow::Owned(args.to_string())),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            Name::Text(t) => t,
            Name::Number { len, buf } => {
                std::str::from_utf8(&buf[..*len as usize]).unwrap_or_default()
            }
        }
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Name {}

impl std::hash::Hash for Name {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl LockKey {
    /// A key from a name, hashed with [`key_hash`].
    ///
    /// A name holding NUL makes a key that every lock call refuses with
    /// [`Error::InvalidKey`](crate::Error::InvalidKey) (see the type's
    /// documentation); [`try_named`](Self::try_named) refuses it here.
    pub fn named(name: impl Into<Cow<'static, str>>) -> Self {
        let name = name.into();
        let id = KeyId::Int(key_hash(&name));
        let nul = name.as_bytes().contains(&0);
        LockKey {
            name: Name::Text(name),
            id,
            nul,
        }
    }

    /// [`named`](Self::named), but a name holding NUL is
    /// [`Error::InvalidKey`](crate::Error::InvalidKey) here rather than at
    /// the lock call.
    ///
    /// ```
    /// use advisory_locked::{Error, LockKey};
    ///
    /// assert!(LockKey::try_named("tenant:7").is_ok());
    /// assert!(matches!(LockKey::try_named("a\0b"), Err(Error::InvalidKey { .. })));
    /// ```
    pub fn try_named(name: impl Into<Cow<'static, str>>) -> Result<Self, crate::Error> {
        let key = Self::named(name);
        key.check()?;
        Ok(key)
    }

    /// A key with a name and a number computed beforehand (used by the
    /// attribute, which hashes literal names at compile time). A name
    /// holding NUL is refused by the lock calls, as with
    /// [`named`](Self::named).
    pub const fn with_id(name: &'static str, id: KeyId) -> Self {
        LockKey {
            name: Name::Text(Cow::Borrowed(name)),
            id,
            nul: has_nul(name),
        }
    }

    /// [`Error::InvalidKey`](crate::Error::InvalidKey) if no lock can be
    /// taken on this key (its name holds NUL); every lock call checks this
    /// first.
    pub(crate) fn check(&self) -> Result<(), crate::Error> {
        if self.nul {
            return Err(crate::Error::InvalidKey {
                key: self.name().to_owned(),
                reason: "the name contains NUL (\\0): PostgreSQL text can't hold NUL, so hashtextextended can never produce this key's number and the lock could not be found by its name; remove the NUL from the name (or from the template's values)".to_owned(),
            });
        }
        Ok(())
    }

    /// A raw 64-bit key, for interop with existing lock ids.
    pub fn int(id: i64) -> Self {
        LockKey {
            name: Name::number(format_args!("{id}")),
            id: KeyId::Int(id),
            nul: false,
        }
    }

    /// A key in the two-int4 key space, `pg_advisory_lock(a, b)`.
    pub fn pair(a: i32, b: i32) -> Self {
        LockKey {
            name: Name::number(format_args!("({a}, {b})")),
            id: KeyId::Pair(a, b),
            nul: false,
        }
    }

    /// The human name of the key.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    /// The name if it is a `&'static str` (a literal, as the attribute's
    /// keys): a bounded metric label (see [`crate::meter`]).
    pub(crate) fn static_name(&self) -> Option<&'static str> {
        match &self.name {
            Name::Text(Cow::Borrowed(name)) => Some(name),
            _ => None,
        }
    }

    /// The number PostgreSQL locks.
    pub fn id(&self) -> KeyId {
        self.id
    }
}

impl fmt::Debug for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // (`nul` follows from the name.)
        f.debug_struct("LockKey")
            .field("name", &self.name)
            .field("id", &self.id)
            .finish()
    }
}

impl fmt::Display for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} ({})", self.name, self.id)
    }
}

/// Exclusive (writer) or shared (reader) mode.
///
/// Shared holders exclude exclusive holders and not each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// `pg_advisory_lock`: one holder at a time.
    #[default]
    Exclusive,
    /// `pg_advisory_lock_shared`: many shared holders, no exclusive one.
    Shared,
}

impl Mode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Mode::Exclusive => "exclusive",
            Mode::Shared => "shared",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_from_the_server() {
        assert_eq!(key_hash("report:daily"), 754907581750802352);
    }

    #[test]
    fn const_evaluation() {
        const K: i64 = key_hash("report:daily");
        assert_eq!(K, key_hash("report:daily"));
    }
}

#[cfg(test)]
mod hasher_tests {
    use super::*;

    #[test]
    fn key_ids_hash_apart() {
        use std::hash::BuildHasher;
        let b = BuildKeyIdHasher::default();
        let mut seen = std::collections::HashSet::new();
        for k in 0..1000i64 {
            seen.insert(b.hash_one(KeyId::Int(k)));
            seen.insert(b.hash_one(KeyId::Pair(k as i32, 0)));
            seen.insert(b.hash_one(KeyId::Pair(0, k as i32)));
        }
        assert_eq!(seen.len(), 3000 - 1, "only Pair(0, 0) twice");
        // Sequential keys spread over the top bits (hashbrown's groups).
        let tops: std::collections::HashSet<u64> = (0..256i64)
            .map(|k| b.hash_one(KeyId::Int(k)) >> 57)
            .collect();
        assert!(tops.len() > 64, "{}", tops.len());
        let mut m: KeyMap<i64> = KeyMap::default();
        m.insert(KeyId::Int(7), 1);
        assert_eq!(m.get(&KeyId::Int(7)), Some(&1));
    }
}

#[cfg(test)]
mod name_tests {
    use super::*;

    #[test]
    fn raw_key_names_are_the_numbers() {
        assert_eq!(LockKey::int(i64::MIN).name(), "-9223372036854775808");
        assert_eq!(LockKey::int(42).name(), "42");
        let p = LockKey::pair(i32::MIN, i32::MIN);
        assert_eq!(p.name(), "(-2147483648, -2147483648)");
        assert_eq!(p.clone(), p);
        assert_eq!(
            format!("{:?}", LockKey::int(7)),
            "LockKey { name: \"7\", id: Int(7) }"
        );
        assert_eq!(LockKey::int(7).to_string(), "\"7\" (7)");
    }
}

#[cfg(test)]
mod nul_tests {
    use super::*;
    use crate::Error;

    #[test]
    fn names_with_nul_are_refused_by_check() {
        for key in [
            LockKey::named("a\0b"),
            LockKey::named(String::from("\0")),
            LockKey::named(format!("tenant:{}", "x\0")),
            LockKey::with_id("a\0b", KeyId::Int(key_hash("a\0b"))),
        ] {
            match key.check() {
                Err(Error::InvalidKey { key: name, reason }) => {
                    assert_eq!(name, key.name());
                    assert!(reason.contains("NUL"), "{reason}");
                }
                other => panic!("{key}: {other:?}"),
            }
        }
        assert!(matches!(
            LockKey::try_named("a\0b"),
            Err(Error::InvalidKey { .. })
        ));
        for key in [
            LockKey::named("a b"),
            LockKey::named(""),
            LockKey::named("é\u{1}"),
            LockKey::with_id("k", KeyId::Int(1)),
            LockKey::int(0),
            LockKey::pair(0, 0),
        ] {
            assert!(key.check().is_ok(), "{key}");
        }
        assert_eq!(LockKey::try_named("x").unwrap(), LockKey::named("x"));
    }
}
