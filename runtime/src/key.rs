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

/// A map keyed by [`KeyId`] for the per-lock tables (see
/// [`crate::local::table`]): one map per key space, so that a key takes 8
/// bytes in a bucket rather than the 16 of a `KeyId` (its tag and padding).
/// A map that was never used allocates nothing.
pub(crate) struct IdMap<V> {
    ints: std::collections::HashMap<i64, V, BuildKeyIdHasher>,
    pairs: std::collections::HashMap<i64, V, BuildKeyIdHasher>,
}

impl<V> Default for IdMap<V> {
    fn default() -> Self {
        IdMap {
            ints: Default::default(),
            pairs: Default::default(),
        }
    }
}

impl<V> IdMap<V> {
    /// The map of `id`'s key space, and `id` in it.
    fn side(
        &mut self,
        id: KeyId,
    ) -> (
        &mut std::collections::HashMap<i64, V, BuildKeyIdHasher>,
        i64,
    ) {
        match id.raw() {
            (k, false) => (&mut self.ints, k),
            (k, true) => (&mut self.pairs, k),
        }
    }

    pub(crate) fn get(&self, id: KeyId) -> Option<&V> {
        match id.raw() {
            (k, false) => self.ints.get(&k),
            (k, true) => self.pairs.get(&k),
        }
    }

    pub(crate) fn get_mut(&mut self, id: KeyId) -> Option<&mut V> {
        let (map, k) = self.side(id);
        map.get_mut(&k)
    }

    pub(crate) fn insert(&mut self, id: KeyId, value: V) -> Option<V> {
        let (map, k) = self.side(id);
        map.insert(k, value)
    }

    pub(crate) fn remove(&mut self, id: KeyId) -> Option<V> {
        let (map, k) = self.side(id);
        map.remove(&k)
    }

    /// The value of `id`, inserted first if missing.
    pub(crate) fn get_or_default(&mut self, id: KeyId) -> &mut V
    where
        V: Default,
    {
        let (map, k) = self.side(id);
        map.entry(k).or_default()
    }

    pub(crate) fn len(&self) -> usize {
        self.ints.len() + self.pairs.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ints.is_empty() && self.pairs.is_empty()
    }

    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&mut V) -> bool) {
        self.ints.retain(|_, v| keep(v));
        self.pairs.retain(|_, v| keep(v));
    }
}

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
#[derive(Clone)]
pub struct LockKey {
    repr: Repr,
}

/// A key's name and number in 32 bytes (a guard keeps its key inline: see
/// [`crate::LockGuard`]). Numbers, and computed names of up to
/// [`SHORT_LEN`] bytes (most template keys), are written into an inline
/// buffer: such a key costs no allocation to make or to clone.
#[derive(Clone)]
enum Repr {
    /// A `&'static str` name (a literal, as the attribute's keys). `raw`
    /// and `pair`: the number, as in [`KeyId::from_raw`]. `nul`: the name
    /// holds NUL, and the key is refused by every lock call.
    Static {
        name: &'static str,
        raw: i64,
        pair: bool,
        nul: bool,
    },
    /// A computed name of up to [`SHORT_LEN`] bytes, `buf[..len]`,
    /// hashed to `raw` (always [`KeyId::Int`]); `nul` as in
    /// [`Repr::Static`].
    Short {
        raw: i64,
        len: u8,
        nul: bool,
        buf: [u8; SHORT_LEN],
    },
    /// A longer owned name (as [`Repr::Static`]).
    Owned {
        name: Box<str>,
        raw: i64,
        pair: bool,
        nul: bool,
    },
    /// A raw 64-bit key; its name is the number, `buf[..len]`.
    Int {
        id: i64,
        len: u8,
        buf: [u8; INT_LEN],
    },
    /// A key of the two-int4 key space; its name is `(a, b)`, `buf[..len]`,
    /// and the pair is read back from the name (no room for both).
    Pair { len: u8, buf: [u8; PAIR_LEN] },
}

/// Enough for any i64.
const INT_LEN: usize = 20;
/// The longest computed name kept inline (what fits in 32 bytes beside
/// the number).
const SHORT_LEN: usize = 21;
/// A template's name is formatted into a stack buffer this long first (see
/// [`LockKey::formatted`]).
const FORMAT_LEN: usize = 128;
/// Enough for `(-2147483648, -2147483648)`.
const PAIR_LEN: usize = 26;

impl KeyId {
    /// The key's 64 bits and whether it is a pair: the inverse of
    /// [`KeyId::from_raw`].
    const fn raw(self) -> (i64, bool) {
        match self {
            KeyId::Int(k) => (k, false),
            KeyId::Pair(a, b) => (((a as i64) << 32) | (b as u32 as i64), true),
        }
    }

    /// A key from its 64 bits: a pair `(a, b)` is `a << 32 | b as u32`.
    const fn from_raw(raw: i64, pair: bool) -> KeyId {
        if pair {
            KeyId::Pair((raw >> 32) as i32, raw as i32)
        } else {
            KeyId::Int(raw)
        }
    }
}

/// A piece of a key template's name whose placeholders are all integers
/// (the attribute's expansion, through `__private::template_key_parts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPart {
    /// Literal text.
    Text(&'static str),
    /// An unsigned integer argument, widened.
    Unsigned(u64),
    /// A signed integer argument, widened.
    Signed(i64),
}

impl fmt::Display for KeyPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyPart::Text(t) => f.write_str(t),
            KeyPart::Unsigned(v) => write!(f, "{v}"),
            KeyPart::Signed(v) => write!(f, "{v}"),
        }
    }
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

/// Writes `args` into an inline buffer; `None` if it does not fit.
fn written<const N: usize>(args: fmt::Arguments<'_>) -> Option<(u8, [u8; N])> {
    struct Buf<const N: usize> {
        len: usize,
        buf: [u8; N],
    }
    impl<const N: usize> fmt::Write for Buf<N> {
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
        buf: [0; N],
    };
    fmt::write(&mut b, args).ok()?;
    Some((b.len as u8, b.buf))
}

/// `id` in decimal, as `{id}` formats it, and its length (written by hand:
/// `core::fmt` costs a raw key's every construction several times more).
fn decimal(id: i64) -> (u8, [u8; INT_LEN]) {
    let mut buf = [0u8; INT_LEN];
    // Always fits: `i64::MIN` is 20 bytes.
    let len = put_decimal(&mut buf, 0, id.unsigned_abs(), id < 0).unwrap_or(0);
    (len as u8, buf)
}

/// Writes `v` in decimal (after a `-` if `negative`) into `buf` at `at`,
/// as `Display` writes an integer; where it ends, or `None` if it does not
/// fit.
fn put_decimal(buf: &mut [u8], at: usize, mut v: u64, negative: bool) -> Option<usize> {
    let digits = v.checked_ilog10().map_or(1, |d| d as usize + 1);
    let end = at + usize::from(negative) + digits;
    let out = buf.get_mut(at..end)?;
    if negative {
        out[0] = b'-';
    }
    for d in out.iter_mut().rev().take(digits) {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
    Some(end)
}

/// The text of an inline name (written from a `&str`, so always UTF-8).
fn inline_str(buf: &[u8], len: u8) -> &str {
    std::str::from_utf8(&buf[..len as usize]).unwrap_or_default()
}

/// The pair a name `(a, b)` written by [`LockKey::pair`] stands for.
fn pair_of(name: &str) -> KeyId {
    let pair = name
        .strip_prefix('(')
        .and_then(|n| n.strip_suffix(')'))
        .and_then(|n| n.split_once(", "))
        .and_then(|(a, b)| Some(KeyId::Pair(a.parse().ok()?, b.parse().ok()?)));
    // LockKey::pair wrote the name: it always reads back.
    pair.unwrap_or(KeyId::Pair(0, 0))
}

impl LockKey {
    /// A key with a name that is not the number's text: `raw`/`pair` from
    /// `id`, `nul` from the name.
    fn text(name: Cow<'static, str>, id: KeyId) -> Self {
        let (raw, pair) = id.raw();
        let nul = name.as_bytes().contains(&0);
        let repr = match name {
            Cow::Borrowed(name) => Repr::Static {
                name,
                raw,
                pair,
                nul,
            },
            Cow::Owned(name) => match Self::short(name.as_bytes(), raw, pair, nul) {
                Some(repr) => repr,
                None => Repr::Owned {
                    name: name.into_boxed_str(),
                    raw,
                    pair,
                    nul,
                },
            },
        };
        LockKey { repr }
    }

    /// A computed name kept inline, if it is short (and its number is not
    /// a pair: [`Repr::Short`] has no room for the flag).
    /// (`name`: the bytes of a `&str`.)
    fn short(name: &[u8], raw: i64, pair: bool, nul: bool) -> Option<Repr> {
        if pair || name.len() > SHORT_LEN {
            return None;
        }
        let mut buf = [0; SHORT_LEN];
        buf[..name.len()].copy_from_slice(name);
        Some(Repr::Short {
            raw,
            len: name.len() as u8,
            nul,
            buf,
        })
    }

    /// [`named`](Self::named) of a computed name (the attribute's key
    /// templates): formatted into a stack buffer, then kept inline if it
    /// is short, else copied into an allocation of its exact length; only
    /// a name longer than the buffer is formatted into a `String`.
    pub(crate) fn formatted(args: fmt::Arguments<'_>) -> Self {
        let Some((len, buf)) = written::<FORMAT_LEN>(args) else {
            return Self::named(fmt::format(args));
        };
        Self::written(&buf, len)
    }

    /// [`formatted`](Self::formatted) of a name made of text and integers,
    /// written without `core::fmt` (which costs more than the rest of the
    /// key together): the same key, for the same name.
    pub(crate) fn from_parts(parts: &[KeyPart]) -> Self {
        let mut buf = [0u8; FORMAT_LEN];
        let mut len = 0;
        for part in parts {
            let end = match *part {
                KeyPart::Text(t) => buf.get_mut(len..len + t.len()).map(|dst| {
                    dst.copy_from_slice(t.as_bytes());
                    len + t.len()
                }),
                KeyPart::Unsigned(v) => put_decimal(&mut buf, len, v, false),
                KeyPart::Signed(v) => put_decimal(&mut buf, len, v.unsigned_abs(), v < 0),
            };
            let Some(end) = end else {
                return Self::named(parts.iter().map(KeyPart::to_string).collect::<String>());
            };
            len = end;
        }
        Self::written(&buf, len as u8)
    }

    /// The key of a name written into `buf` (its first `len` bytes).
    fn written(buf: &[u8; FORMAT_LEN], len: u8) -> Self {
        // Hashed as bytes: `key_hash` of the name they are.
        let bytes = &buf[..len as usize];
        let raw = hash_bytes_extended(bytes, 0) as i64;
        let nul = bytes.contains(&0);
        let repr = Self::short(bytes, raw, false, nul).unwrap_or_else(|| Repr::Owned {
            name: inline_str(buf, len).into(),
            raw,
            pair: false,
            nul,
        });
        LockKey { repr }
    }

    /// A key from a name, hashed with [`key_hash`].
    ///
    /// A name holding NUL makes a key that every lock call refuses with
    /// [`Error::InvalidKey`](crate::Error::InvalidKey) (see the type's
    /// documentation); [`try_named`](Self::try_named) refuses it here.
    pub fn named(name: impl Into<Cow<'static, str>>) -> Self {
        let name = name.into();
        let id = KeyId::Int(key_hash(&name));
        Self::text(name, id)
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
        let (raw, pair) = id.raw();
        LockKey {
            repr: Repr::Static {
                name,
                raw,
                pair,
                nul: has_nul(name),
            },
        }
    }

    /// [`Error::InvalidKey`](crate::Error::InvalidKey) if no lock can be
    /// taken on this key (its name holds NUL); every lock call checks this
    /// first.
    pub(crate) fn check(&self) -> Result<(), crate::Error> {
        let nul = match &self.repr {
            Repr::Static { nul, .. } | Repr::Short { nul, .. } | Repr::Owned { nul, .. } => *nul,
            Repr::Int { .. } | Repr::Pair { .. } => false,
        };
        if nul {
            return Err(crate::Error::InvalidKey {
                key: self.name().to_owned(),
                reason: "the name contains NUL (\\0): PostgreSQL text can't hold NUL, so hashtextextended can never produce this key's number and the lock could not be found by its name; remove the NUL from the name (or from the template's values)".to_owned(),
            });
        }
        Ok(())
    }

    /// A raw 64-bit key, for interop with existing lock ids.
    pub fn int(id: i64) -> Self {
        let (len, buf) = decimal(id);
        LockKey {
            repr: Repr::Int { id, len, buf },
        }
    }

    /// A key in the two-int4 key space, `pg_advisory_lock(a, b)`.
    pub fn pair(a: i32, b: i32) -> Self {
        match written(format_args!("({a}, {b})")) {
            Some((len, buf)) => LockKey {
                repr: Repr::Pair { len, buf },
            },
            // Can't happen (PAIR_LEN fits any pair); stay correct anyway.
            None => Self::text(Cow::Owned(format!("({a}, {b})")), KeyId::Pair(a, b)),
        }
    }

    /// The human name of the key.
    pub fn name(&self) -> &str {
        match &self.repr {
            Repr::Static { name, .. } => name,
            Repr::Owned { name, .. } => name,
            Repr::Short { len, buf, .. } => inline_str(buf, *len),
            Repr::Int { len, buf, .. } => inline_str(buf, *len),
            Repr::Pair { len, buf } => inline_str(buf, *len),
        }
    }

    /// The name if it is a `&'static str` (a literal, as the attribute's
    /// keys): a bounded metric label (see [`crate::meter`]).
    pub(crate) fn static_name(&self) -> Option<&'static str> {
        match &self.repr {
            Repr::Static { name, .. } => Some(name),
            _ => None,
        }
    }

    /// The number PostgreSQL locks.
    #[inline]
    pub fn id(&self) -> KeyId {
        match &self.repr {
            Repr::Static { raw, pair, .. } | Repr::Owned { raw, pair, .. } => {
                KeyId::from_raw(*raw, *pair)
            }
            Repr::Short { raw, .. } | Repr::Int { id: raw, .. } => KeyId::Int(*raw),
            Repr::Pair { len, buf } => pair_of(inline_str(buf, *len)),
        }
    }
}

/// Keys are equal when their names and numbers are (whether a name is
/// borrowed or owned does not matter).
impl PartialEq for LockKey {
    fn eq(&self, other: &LockKey) -> bool {
        self.id() == other.id() && self.name() == other.name()
    }
}

impl Eq for LockKey {}

impl std::hash::Hash for LockKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name().hash(state);
        self.id().hash(state);
    }
}

impl fmt::Debug for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockKey")
            .field("name", &self.name())
            .field("id", &self.id())
            .finish()
    }
}

impl fmt::Display for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} ({})", self.name(), self.id())
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

    #[test]
    fn id_maps_keep_the_key_spaces_apart() {
        let mut m: IdMap<u8> = IdMap::default();
        assert!(m.is_empty());
        let ids = [
            KeyId::Int(5),
            KeyId::Pair(0, 5),
            KeyId::Int(-1),
            KeyId::Pair(-1, -1),
            KeyId::Pair(0, -1),
            KeyId::Int(u32::MAX as i64),
            KeyId::Pair(i32::MIN, i32::MAX),
        ];
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(m.insert(*id, i as u8), None, "{id}");
        }
        assert_eq!(m.len(), ids.len());
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(m.get(*id), Some(&(i as u8)), "{id}");
        }
        *m.get_or_default(KeyId::Pair(7, 7)) += 3;
        assert_eq!(m.get_mut(KeyId::Pair(7, 7)).copied(), Some(3));
        m.retain(|v| *v % 2 == 1);
        assert_eq!(m.len(), 4);
        assert_eq!(m.remove(KeyId::Pair(0, 5)), Some(1));
        assert_eq!(m.get(KeyId::Int(5)), None);
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

    #[test]
    fn raw_key_names_are_formatted_as_display_does() {
        let mut k: i64 = 1;
        let mut edges = vec![0, i64::MIN, i64::MAX, i64::MIN + 1, i64::MAX - 1];
        for _ in 0..19 {
            edges.extend([k - 1, k, k + 1, -k + 1, -k, -k - 1]);
            k = k.saturating_mul(10);
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..1000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            edges.push(x as i64 >> (x % 64));
        }
        for id in edges {
            assert_eq!(LockKey::int(id).name(), id.to_string());
        }
    }

    #[test]
    fn raw_keys_read_back_their_numbers() {
        for k in [0, 1, -1, 42, i64::MIN, i64::MAX] {
            let key = LockKey::int(k);
            assert_eq!((key.id(), key.name()), (KeyId::Int(k), &*k.to_string()));
        }
        let edges = [0, 1, -1, 7, i32::MIN, i32::MAX];
        for a in edges {
            for b in edges {
                let key = LockKey::pair(a, b);
                assert_eq!(key.id(), KeyId::Pair(a, b));
                assert_eq!(key.name(), format!("({a}, {b})"));
                assert_eq!(KeyId::from_raw(KeyId::Pair(a, b).raw().0, true), key.id());
            }
        }
        let odd = LockKey::with_id("legacy", KeyId::Pair(-3, i32::MIN));
        assert_eq!(odd.id(), KeyId::Pair(-3, i32::MIN));
        assert_ne!(odd, LockKey::with_id("legacy", KeyId::Int(-3)));
        // Borrowed or owned, the same name is the same key.
        assert_eq!(LockKey::named("a"), LockKey::named(String::from("a")));
        assert_eq!(LockKey::named("a").static_name(), Some("a"));
        assert_eq!(LockKey::named(String::from("a")).static_name(), None);
    }

    /// Computed names are kept inline up to `SHORT_LEN` bytes; every
    /// length, inline, boxed or formatted past the stack buffer, makes the
    /// key `named` makes from a borrowed name.
    #[test]
    fn computed_names_of_every_length() {
        for n in [
            0,
            1,
            SHORT_LEN - 1,
            SHORT_LEN,
            SHORT_LEN + 1,
            FORMAT_LEN,
            FORMAT_LEN + 1,
            300,
        ] {
            let name: String = "é".repeat(n / 2) + &"k".repeat(n % 2);
            let leaked: &'static str = Box::leak(name.clone().into_boxed_str());
            let want = LockKey::named(leaked);
            let owned = LockKey::named(name.clone());
            let formatted = LockKey::formatted(format_args!("{}", name));
            for key in [&owned, &formatted] {
                assert_eq!((key.id(), key.name()), (want.id(), want.name()), "{n}");
                assert_eq!(key, &want);
                assert_eq!(key.static_name(), None);
                assert!(key.check().is_ok());
            }
            let inline = matches!(formatted.repr, Repr::Short { .. });
            assert_eq!(inline, name.len() <= SHORT_LEN, "{n}");
            assert_eq!(formatted.clone(), owned);
        }
        let k = LockKey::formatted(format_args!("tenant:{}:{}", 7, "x\0"));
        assert_eq!(k.name(), "tenant:7:x\0");
        assert!(matches!(k.check(), Err(crate::Error::InvalidKey { .. })));
    }

    /// A template of text and integers written without `core::fmt` makes
    /// the key that formatting the same name makes: every integer edge,
    /// signed and unsigned, short and long names (past the stack buffer),
    /// text with NUL.
    #[test]
    fn integer_templates_make_the_formatted_key() {
        use KeyPart::{Signed, Text, Unsigned};
        let long: &'static str = Box::leak("k".repeat(FORMAT_LEN - 3).into_boxed_str());
        let texts = ["", "tenant:", ":", "é", long, "x\0"];
        let unsigned = [
            0,
            1,
            9,
            10,
            99,
            u64::from(u32::MAX),
            i64::MAX as u64,
            u64::MAX,
        ];
        let signed = [0, -1, 1, -10, i64::from(i32::MIN), i64::MIN, i64::MAX];
        let mut cases: Vec<Vec<KeyPart>> = Vec::new();
        for t in texts {
            for &u in &unsigned {
                cases.push(vec![Text(t), Unsigned(u), Text(":p1")]);
            }
            for &v in &signed {
                cases.push(vec![Text(t), Signed(v)]);
                cases.push(vec![Signed(v), Text(t), Unsigned(v.unsigned_abs())]);
            }
        }
        cases.push(vec![]);
        for parts in cases {
            let name: String = parts.iter().map(KeyPart::to_string).collect();
            let key = LockKey::from_parts(&parts);
            let formatted = LockKey::formatted(format_args!("{name}"));
            assert_eq!(
                (key.id(), key.name()),
                (formatted.id(), formatted.name()),
                "{parts:?}"
            );
            assert_eq!(key, LockKey::named(name.clone()));
            assert_eq!(key.check().is_ok(), !name.contains('\0'), "{parts:?}");
        }
        assert_eq!(Signed(i64::MIN).to_string(), "-9223372036854775808");
        assert_eq!(Unsigned(u64::MAX).to_string(), "18446744073709551615");
    }

    /// A guard keeps its key inline (see `crate::LockGuard`'s size test).
    #[test]
    fn a_key_takes_32_bytes() {
        assert_eq!(std::mem::size_of::<LockKey>(), 32);
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
