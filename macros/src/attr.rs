//! The argument list of `#[advisory_locked(...)]`.
//!
//! ```text
//! args    := option ("," option)* ","?
//! option  := "key" "=" key
//!          | "skip" | "wait" | "wait" "=" duration-string
//!          | "shared" | "exclusive"
//!          | "pool" "=" non-empty-string
//!          | "on_lost" "=" ("\"abort\"" | "\"continue\"")
//!          | "limit" "=" int (1..=1024) | "per" "=" duration-string
//!          | "transaction" "=" ident
//! key     := string (literal or template) | int | "-" int | "(" int "," int ")"
//! ```
//!
//! Every problem is collected (one error per offending token) instead of
//! stopping at the first one.

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::parse::{ParseStream, Parser};
use syn::spanned::Spanned;
use syn::{Expr, Ident, Lit, LitInt, LitStr, Token, UnOp};

use crate::duration;
use crate::template::{self, Template};

mod kw {
    syn::custom_keyword!(key);
    syn::custom_keyword!(skip);
    syn::custom_keyword!(wait);
    syn::custom_keyword!(shared);
    syn::custom_keyword!(exclusive);
    syn::custom_keyword!(pool);
    syn::custom_keyword!(on_lost);
    syn::custom_keyword!(limit);
    syn::custom_keyword!(per);
    syn::custom_keyword!(transaction);
}

/// The option names, in the order they are listed in messages.
pub const OPTION_NAMES: &[&str] = &[
    "key",
    "wait",
    "skip",
    "shared",
    "exclusive",
    "pool",
    "on_lost",
    "limit",
    "per",
    "transaction",
];

/// The largest `limit = N`: each slot is an advisory lock of its own.
pub const MAX_LIMIT: u32 = 1024;

const KEY_FORMS: &str =
    "a string `key = \"report:daily\"`, a template `key = \"tenant:{tenant_id}\"`, an integer `key = 42` or a pair `key = (7, 42)`";

/// The parsed options. Whatever could be parsed is here even when other
/// options had errors, so that the fn can still be checked against it.
#[derive(Default)]
pub struct Args {
    pub key: Option<Key>,
    pub wait: WaitMode,
    pub shared: bool,
    pub pool: Option<LitStr>,
    pub on_lost: Option<OnLost>,
    /// `limit = N`: at most N bodies at once across the fleet.
    pub limit: Option<u32>,
    /// `per = "…"` (only with `limit`), in milliseconds.
    pub per: Option<u64>,
    /// `transaction = tx`: the name the body gets its transaction under.
    pub transaction: Option<Ident>,
}

/// What the body does when its lock is lost (`on_lost = "…"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnLost {
    Abort,
    Continue,
}

/// The lock key.
#[derive(Clone)]
pub enum Key {
    /// A string without placeholders (braces unescaped): hashed at compile time.
    Literal { name: String, span: Span },
    /// A string with placeholders: formatted at run time.
    Template { template: Template, lit: LitStr },
    /// `key = 42`, `key = -5`.
    Int { value: i64, span: Span },
    /// `key = (7, 42)`.
    Pair { a: i32, b: i32, span: Span },
}

/// What to do when the lock is busy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WaitMode {
    #[default]
    Skip,
    Forever,
    TimeoutMillis(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Name {
    Key,
    Skip,
    Wait,
    Shared,
    Exclusive,
    Pool,
    OnLost,
    Limit,
    Per,
    Transaction,
}

impl Name {
    fn as_str(self) -> &'static str {
        match self {
            Name::Key => "key",
            Name::Skip => "skip",
            Name::Wait => "wait",
            Name::Shared => "shared",
            Name::Exclusive => "exclusive",
            Name::Pool => "pool",
            Name::OnLost => "on_lost",
            Name::Limit => "limit",
            Name::Per => "per",
            Name::Transaction => "transaction",
        }
    }
}

/// One `name` or `name = value` between commas.
struct RawOption {
    name: Name,
    name_span: Span,
    value: Option<(Token![=], Expr)>,
}

/// Collects errors, keeping their order.
#[derive(Default)]
pub struct Errors(Option<syn::Error>);

impl Errors {
    pub fn push(&mut self, err: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(err),
            None => self.0 = Some(err),
        }
    }

    pub fn add(&mut self, span: Span, msg: impl std::fmt::Display) {
        self.push(syn::Error::new(span, msg));
    }

    pub fn extend(&mut self, other: Option<syn::Error>) {
        if let Some(err) = other {
            self.push(err);
        }
    }

    pub fn finish(self) -> Option<syn::Error> {
        self.0
    }
}

/// Parses the attribute's argument list.
pub fn parse(tokens: TokenStream) -> (Args, Option<syn::Error>) {
    let mut args = Args::default();
    let mut errors = Errors::default();

    // The first span of each option seen, by name.
    let mut seen: Vec<(Name, Span)> = Vec::new();

    // A `key` that failed to parse was still written: no "missing key" then.
    let mut key_attempted = false;

    for segment in split_on_commas(tokens.clone(), &mut errors) {
        let raw = match parse_option.parse2(segment.clone()) {
            Ok(raw) => raw,
            Err(e) => {
                key_attempted |= mentions_key(segment);
                errors.push(e);
                continue;
            }
        };
        if seen.iter().any(|(n, _)| *n == raw.name) {
            let name = raw.name.as_str();
            let what = if raw.name == Name::Key {
                "#[advisory_locked] takes exactly one key".to_string()
            } else {
                format!("remove the second `{name}`")
            };
            errors.add(raw.name_span, format!("duplicate option `{name}`: {what}"));
            continue;
        }
        seen.push((raw.name, raw.name_span));
        apply(&mut args, raw, &mut errors);
    }

    // Combinations.
    let first = |name: Name| seen.iter().find(|(n, _)| *n == name).map(|(_, s)| *s);
    let position = |name: Name| seen.iter().position(|(n, _)| *n == name);
    if let (Some(s), Some(w)) = (position(Name::Skip), position(Name::Wait)) {
        let later = seen[s.max(w)].1;
        errors.add(
            later,
            "`skip` and `wait` cannot be combined: `skip` (the default) runs nothing when the lock is busy, `wait` waits for it; keep one of them",
        );
    }
    if let (Some(s), Some(e)) = (position(Name::Shared), position(Name::Exclusive)) {
        let later = seen[s.max(e)].1;
        errors.add(
            later,
            "`shared` and `exclusive` cannot be combined: a lock is taken either shared (readers) or exclusive (the default); keep one of them",
        );
    }
    if let (Some(per), None) = (first(Name::Per), first(Name::Limit)) {
        errors.add(
            per,
            "`per` needs `limit`: `limit = N, per = \"1m\"` lets at most N bodies start per minute across the fleet; add `limit = N`, or remove `per`",
        );
    }
    if let (Some(sh), Some(l)) = (position(Name::Shared), position(Name::Limit)) {
        errors.add(
            seen[sh.max(l)].1,
            "`shared` and `limit` cannot be combined: `limit = N` gives N exclusive slots (shared holders would not count against the limit); remove one of them",
        );
    }
    if let Some(t) = position(Name::Transaction) {
        for other in [Name::Limit, Name::Per] {
            if let Some(o) = position(other) {
                let on = other.as_str();
                errors.add(
                    seen[t.max(o)].1,
                    format!("`transaction` and `{on}` cannot be combined: a fleet-wide limit is not supported with transaction scope; remove one of them"),
                );
            }
        }
        if let Some(o) = position(Name::OnLost) {
            errors.add(
                seen[t.max(o)].1,
                "`on_lost` can't be set with `transaction`: a transaction's lock ends with its connection, and the entry's policy (`LockConfig::on_lost`) applies; whatever the policy, the transaction is rolled back; remove `on_lost`",
            );
        }
    }
    if first(Name::Key).is_none() && !key_attempted {
        let msg =
            format!("missing `key`: #[advisory_locked] needs the lock's key, e.g. {KEY_FORMS}");
        if tokens.is_empty() {
            errors.add(Span::call_site(), msg);
        } else {
            errors.push(syn::Error::new_spanned(&tokens, msg));
        }
    }

    (args, errors.finish())
}

/// Whether an unparsable option was meant as the key: `key …` or a bare
/// string literal.
fn mentions_key(segment: TokenStream) -> bool {
    match segment.into_iter().next() {
        Some(TokenTree::Ident(i)) => i == "key",
        Some(TokenTree::Literal(l)) => syn::parse2::<LitStr>(l.into_token_stream()).is_ok(),
        _ => false,
    }
}

/// Splits at top-level commas; reports empty options (`a,,b`, a leading `,`).
fn split_on_commas(tokens: TokenStream, errors: &mut Errors) -> Vec<TokenStream> {
    let mut segments = Vec::new();
    let mut current = TokenStream::new();
    for tt in tokens {
        match &tt {
            TokenTree::Punct(p) if p.as_char() == ',' => {
                if current.is_empty() {
                    errors.add(p.span(), "unexpected `,`: expected an option before it");
                } else {
                    segments.push(std::mem::take(&mut current));
                }
            }
            _ => current.extend([tt]),
        }
    }
    if !current.is_empty() {
        segments.push(current);
    }
    segments
}

fn parse_option(input: ParseStream) -> syn::Result<RawOption> {
    let (name, name_span) = if input.peek(kw::key) {
        (Name::Key, input.parse::<kw::key>()?.span)
    } else if input.peek(kw::skip) {
        (Name::Skip, input.parse::<kw::skip>()?.span)
    } else if input.peek(kw::wait) {
        (Name::Wait, input.parse::<kw::wait>()?.span)
    } else if input.peek(kw::shared) {
        (Name::Shared, input.parse::<kw::shared>()?.span)
    } else if input.peek(kw::exclusive) {
        (Name::Exclusive, input.parse::<kw::exclusive>()?.span)
    } else if input.peek(kw::pool) {
        (Name::Pool, input.parse::<kw::pool>()?.span)
    } else if input.peek(kw::on_lost) {
        (Name::OnLost, input.parse::<kw::on_lost>()?.span)
    } else if input.peek(kw::limit) {
        (Name::Limit, input.parse::<kw::limit>()?.span)
    } else if input.peek(kw::per) {
        (Name::Per, input.parse::<kw::per>()?.span)
    } else if input.peek(kw::transaction) {
        (Name::Transaction, input.parse::<kw::transaction>()?.span)
    } else if input.peek(Ident::peek_any) {
        let ident = Ident::parse_any(input)?;
        return Err(unknown_option(&ident));
    } else if input.peek(LitStr) {
        let lit: LitStr = input.parse()?;
        return Err(syn::Error::new(
            lit.span(),
            format!(
                "expected `key = {}`: #[advisory_locked] options are named",
                lit.to_token_stream()
            ),
        ));
    } else {
        return Err(input.error(format!(
            "expected an option of #[advisory_locked]: {}",
            list_options()
        )));
    };

    if input.is_empty() {
        return Ok(RawOption {
            name,
            name_span,
            value: None,
        });
    }
    let n = name.as_str();
    let eq: Token![=] = input.parse().map_err(|e| {
        syn::Error::new(
            e.span(),
            format!("expected `=` or `,` after `{n}`: write `{n} = value`, and separate options with `,`"),
        )
    })?;
    if input.is_empty() {
        return Err(syn::Error::new(
            eq.span,
            format!("missing value after `{n} =`"),
        ));
    }
    let value: Expr = input.parse()?;
    if !input.is_empty() {
        return Err(input.error(format!(
            "expected `,` after the value of `{n}`: separate options with `,`"
        )));
    }
    Ok(RawOption {
        name,
        name_span,
        value: Some((eq, value)),
    })
}

fn list_options() -> String {
    let names: Vec<String> = OPTION_NAMES.iter().map(|n| format!("`{n}`")).collect();
    format!("the valid options are {}", names.join(", "))
}

fn unknown_option(ident: &Ident) -> syn::Error {
    let name = ident.unraw().to_string();
    let mut msg = format!("unknown option `{name}` for #[advisory_locked]");
    if let Some(best) = closest(&name, OPTION_NAMES.iter().copied()) {
        msg.push_str(&format!(": did you mean `{best}`?"));
        msg.push_str(&format!(" ({})", list_options()));
    } else {
        msg.push_str(&format!("; {}", list_options()));
    }
    syn::Error::new(ident.span(), msg)
}

/// The candidate within a small edit distance of `word`, if any.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word_lower = word.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (edit_distance(&word_lower, &c.to_lowercase()), c))
        .filter(|(d, c)| *d <= std::cmp::max(1, c.chars().count() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Damerau–Levenshtein distance (optimal string alignment).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

/// Strips invisible groups (`$e:expr` from `macro_rules!`); parentheses are
/// kept (they mean something for pairs).
fn ungroup(expr: &Expr) -> &Expr {
    match expr {
        Expr::Group(g) => ungroup(&g.expr),
        e => e,
    }
}

fn describe(expr: &Expr) -> &'static str {
    match ungroup(expr) {
        Expr::Lit(l) => match &l.lit {
            Lit::Str(_) => "a string",
            Lit::ByteStr(_) => "a byte string",
            Lit::CStr(_) => "a C string",
            Lit::Byte(_) => "a byte literal",
            Lit::Char(_) => "a char literal",
            Lit::Int(_) => "an integer",
            Lit::Float(_) => "a float",
            Lit::Bool(_) => "a bool",
            _ => "a literal",
        },
        Expr::Unary(u) if matches!(u.op, UnOp::Neg(_)) => "a negative number",
        Expr::Tuple(_) | Expr::Paren(_) => "a parenthesised expression",
        Expr::Array(_) => "an array",
        Expr::Path(_) => "a path",
        Expr::Macro(_) => "a macro call",
        _ => "an expression",
    }
}

fn apply(args: &mut Args, raw: RawOption, errors: &mut Errors) {
    let n = raw.name.as_str();
    match (raw.name, raw.value) {
        (Name::Key, None) => errors.add(
            raw.name_span,
            format!("`key` needs a value: write {KEY_FORMS}"),
        ),
        (Name::Key, Some((_, value))) => match parse_key(&value) {
            Ok((key, errs)) => {
                args.key = Some(key);
                errors.extend(errs);
            }
            Err(e) => errors.push(e),
        },

        (Name::Pool, None) => errors.add(
            raw.name_span,
            "`pool` needs a value: write `pool = \"name\"` with the name of a configured lock registry (leave `pool` out for \"default\")",
        ),
        (Name::Pool, Some((_, value))) => match ungroup(&value) {
            Expr::Lit(syn::ExprLit {
                lit: Lit::Str(s), ..
            }) => {
                if s.value().is_empty() {
                    errors.add(
                        s.span(),
                        "`pool` must not be empty: write the name of a configured lock registry, or leave `pool` out for \"default\"",
                    );
                } else {
                    args.pool = Some(s.clone());
                }
            }
            other => errors.add(
                other.span(),
                format!(
                    "`pool` takes the name of a configured lock registry as a string, e.g. `pool = \"jobs\"`; found {}",
                    describe(other)
                ),
            ),
        },

        (Name::Wait, None) => args.wait = WaitMode::Forever,
        (Name::Wait, Some((_, value))) => match ungroup(&value) {
            Expr::Lit(syn::ExprLit {
                lit: Lit::Str(s), ..
            }) => match duration::parse_millis(&s.value()) {
                Ok(ms) => args.wait = WaitMode::TimeoutMillis(ms),
                Err(e) => errors.add(s.span(), format!("invalid `wait` duration {:?}: {e}", s.value())),
            },
            Expr::Lit(syn::ExprLit {
                lit: Lit::Int(i), ..
            }) => errors.add(
                i.span(),
                format!(
                    "`wait` takes a duration string with a unit: write `wait = \"{}s\"` for seconds (units: `ms`, `s`, `m`, `h`), or `wait` alone to wait without a limit",
                    i.base10_digits()
                ),
            ),
            other => errors.add(
                other.span(),
                format!(
                    "`wait` takes a duration string, e.g. `wait = \"30s\"` or `wait = \"1m30s\"`, or nothing (`wait` alone waits without a limit); found {}",
                    describe(other)
                ),
            ),
        },

        (Name::OnLost, None) => errors.add(
            raw.name_span,
            "`on_lost` needs a value: write `on_lost = \"abort\"` (the default: stop the body) or `on_lost = \"continue\"` (let it finish)",
        ),
        (Name::OnLost, Some((_, value))) => match ungroup(&value) {
            Expr::Lit(syn::ExprLit {
                lit: Lit::Str(s), ..
            }) => match s.value().as_str() {
                "abort" => args.on_lost = Some(OnLost::Abort),
                "continue" => args.on_lost = Some(OnLost::Continue),
                other => errors.add(
                    s.span(),
                    format!(
                        "unknown `on_lost` policy {other:?}: write `on_lost = \"abort\"` (stop the body when the lock is lost) or `on_lost = \"continue\"` (let it finish)"
                    ),
                ),
            },
            other => errors.add(
                other.span(),
                format!(
                    "`on_lost` takes a string, `\"abort\"` or `\"continue\"`; found {}",
                    describe(other)
                ),
            ),
        },

        (Name::Limit, None) => errors.add(
            raw.name_span,
            format!("`limit` needs a value: write `limit = N` (1..={MAX_LIMIT}) to let at most N bodies run at once across the fleet"),
        ),
        (Name::Limit, Some((_, value))) => match parse_limit(&value) {
            Ok(n) => args.limit = Some(n),
            Err(e) => errors.push(e),
        },

        (Name::Per, None) => errors.add(
            raw.name_span,
            "`per` needs a value: write `per = \"1m\"` (with `limit = N`: at most N starts per minute)",
        ),
        (Name::Per, Some((_, value))) => match ungroup(&value) {
            Expr::Lit(syn::ExprLit {
                lit: Lit::Str(s), ..
            }) => match duration::parse_millis(&s.value()) {
                Ok(ms) => args.per = Some(ms),
                Err(e) => {
                    let why = match e {
                        duration::DurationError::Zero => "the duration is zero: `per` is the period in which at most `limit` bodies start; give a positive period, or remove `per` to limit only how many run at once".to_owned(),
                        duration::DurationError::TooLong => "the duration is too long: the longest period is 8760h (365 days)".to_owned(),
                        duration::DurationError::SubMillisecond { part } => format!("`{part}` is not a whole number of milliseconds: periods are counted in milliseconds"),
                        other => other.to_string(),
                    };
                    errors.add(s.span(), format!("invalid `per` duration {:?}: {why}", s.value()));
                }
            },
            Expr::Lit(syn::ExprLit {
                lit: Lit::Int(i), ..
            }) => errors.add(
                i.span(),
                format!(
                    "`per` takes a duration string with a unit: write `per = \"{}s\"` for seconds (units: `ms`, `s`, `m`, `h`)",
                    i.base10_digits()
                ),
            ),
            other => errors.add(
                other.span(),
                format!(
                    "`per` takes a duration string, e.g. `per = \"1m\"` or `per = \"1.5s\"`; found {}",
                    describe(other)
                ),
            ),
        },

        (Name::Transaction, None) => errors.add(
            raw.name_span,
            "`transaction` needs a name for the transaction: write `transaction = tx`, and use `tx` in the body",
        ),
        (Name::Transaction, Some((_, value))) => match ungroup(&value) {
            Expr::Path(p)
                if p.qself.is_none()
                    && p.attrs.is_empty()
                    && p.path.leading_colon.is_none()
                    && p.path.segments.len() == 1
                    && p.path.segments[0].arguments.is_none()
                    && !matches!(
                        p.path.segments[0].ident.to_string().as_str(),
                        "self" | "Self" | "super" | "crate"
                    ) =>
            {
                args.transaction = Some(p.path.segments[0].ident.clone());
            }
            Expr::Lit(syn::ExprLit {
                lit: Lit::Str(s), ..
            }) => {
                let fix = syn::parse_str::<Ident>(&s.value())
                    .map(|i| format!("`transaction = {i}`"))
                    .unwrap_or_else(|_| "`transaction = tx`".to_owned());
                errors.add(
                    s.span(),
                    format!("`transaction` takes the name the body uses for its transaction, not a string: write {fix}"),
                );
            }
            other => errors.add(
                other.span(),
                format!(
                    "`transaction` takes the name the body uses for its transaction, e.g. `transaction = tx`; found {}",
                    describe(other)
                ),
            ),
        },

        (Name::Shared, None) => args.shared = true,
        (Name::Skip | Name::Exclusive, None) => {}
        (Name::Skip | Name::Shared | Name::Exclusive, Some((eq, value))) => {
            let is_false = matches!(
                ungroup(&value),
                Expr::Lit(syn::ExprLit { lit: Lit::Bool(b), .. }) if !b.value
            );
            let fix = match raw.name {
                Name::Shared if is_false => "leave it out for an exclusive lock (the default)".to_string(),
                Name::Exclusive if is_false => "write `shared` for a shared lock".to_string(),
                Name::Skip if is_false => "write `wait` to wait for the lock".to_string(),
                _ => format!("write `{n}` alone"),
            };
            errors.push(syn::Error::new_spanned(
                quote::quote!(#eq #value),
                format!("`{n}` is a flag and takes no value: {fix}"),
            ));
        }
    }
}

/// `limit = N`: an integer literal in 1..=MAX_LIMIT.
fn parse_limit(value: &Expr) -> syn::Result<u32> {
    let range = format!("1..={MAX_LIMIT}");
    match ungroup(value) {
        Expr::Lit(syn::ExprLit {
            lit: Lit::Int(i), ..
        }) => {
            let suffix = i.suffix();
            if !suffix.is_empty() && suffix != "u32" {
                return Err(syn::Error::new(
                    i.span(),
                    format!("unexpected suffix `{suffix}`: write the number without a suffix, e.g. `limit = {}`", i.base10_digits()),
                ));
            }
            match i.base10_digits().parse::<u64>() {
                Ok(0) => Err(syn::Error::new(
                    i.span(),
                    "`limit` must be at least 1: it is how many bodies may run at once across the fleet",
                )),
                Ok(n) if n <= u64::from(MAX_LIMIT) => Ok(n as u32),
                _ => Err(syn::Error::new(
                    i.span(),
                    format!("`limit` is at most {MAX_LIMIT}: each slot is an advisory lock of its own, held on the lock sessions; found {}", i.base10_digits()),
                )),
            }
        }
        Expr::Unary(u) if matches!(u.op, UnOp::Neg(_)) => Err(syn::Error::new_spanned(
            u,
            format!("`limit` must be at least 1 ({range}): it is how many bodies may run at once across the fleet"),
        )),
        Expr::Lit(syn::ExprLit {
            lit: Lit::Str(s), ..
        }) => {
            let fix = match s.value().trim().parse::<u32>() {
                Ok(n) => format!("write `limit = {n}`"),
                Err(_) => "e.g. `limit = 2`".to_owned(),
            };
            Err(syn::Error::new(
                s.span(),
                format!("`limit` takes an integer ({range}), not a string: {fix}"),
            ))
        }
        other => Err(syn::Error::new(
            other.span(),
            format!(
                "`limit` takes an integer literal ({range}), e.g. `limit = 2`; found {}",
                describe(other)
            ),
        )),
    }
}

/// The key, and errors that still leave a key worth checking against the fn.
fn parse_key(value: &Expr) -> syn::Result<(Key, Option<syn::Error>)> {
    match ungroup(value) {
        Expr::Lit(syn::ExprLit {
            lit: Lit::Str(s), ..
        }) => {
            let text = s.value();
            if text.is_empty() {
                return Err(syn::Error::new(
                    s.span(),
                    "the key must not be empty: name the lock, e.g. `key = \"report:daily\"`",
                ));
            }
            let (template, messages) = template::parse_partial(&text);
            let mut errors = Errors::default();
            for m in messages {
                errors.add(s.span(), m);
            }
            let key = match template.as_literal() {
                Some(name) => Key::Literal {
                    name,
                    span: s.span(),
                },
                None => Key::Template {
                    template,
                    lit: s.clone(),
                },
            };
            // With errors, the key is still returned so that the names of
            // its valid placeholders get checked too (nothing is expanded).
            Ok((key, errors.finish()))
        }
        e @ (Expr::Lit(syn::ExprLit {
            lit: Lit::Int(_), ..
        })
        | Expr::Unary(_)) => {
            let value = int_literal(e, IntKind::Int)?;
            Ok((
                Key::Int {
                    value: value as i64,
                    span: e.span(),
                },
                None,
            ))
        }
        Expr::Tuple(t) => {
            if t.elems.len() != 2 {
                return Err(syn::Error::new_spanned(
                    t,
                    format!(
                        "a pair key has exactly 2 integers, e.g. `key = (7, 42)`; found {}",
                        match t.elems.len() {
                            0 => "none".to_string(),
                            n => n.to_string(),
                        }
                    ),
                ));
            }
            let mut errors = Errors::default();
            let mut out = [0i32; 2];
            for (slot, elem) in out.iter_mut().zip(&t.elems) {
                match int_literal(elem, IntKind::PairElement) {
                    Ok(v) => *slot = v as i32,
                    Err(e) => errors.push(e),
                }
            }
            match errors.finish() {
                Some(e) => Err(e),
                None => Ok((
                    Key::Pair {
                        a: out[0],
                        b: out[1],
                        span: t.span(),
                    },
                    None,
                )),
            }
        }
        Expr::Paren(p) => Err(syn::Error::new_spanned(
            p,
            "a pair key has exactly 2 integers, e.g. `key = (7, 42)`; found 1",
        )),
        other => Err(syn::Error::new(
            other.span(),
            format!(
                "`key` must be a literal: {KEY_FORMS}; found {}",
                describe(other)
            ),
        )),
    }
}

/// Which integer a key literal is.
#[derive(Clone, Copy)]
enum IntKind {
    /// `key = 42`: an `i64`.
    Int,
    /// An element of `key = (7, 42)`: an `i32`.
    PairElement,
}

impl IntKind {
    fn ty(self) -> &'static str {
        match self {
            IntKind::Int => "i64",
            IntKind::PairElement => "i32",
        }
    }

    fn range(self) -> (i128, i128) {
        match self {
            IntKind::Int => (i128::from(i64::MIN), i128::from(i64::MAX)),
            IntKind::PairElement => (i128::from(i32::MIN), i128::from(i32::MAX)),
        }
    }
}

/// An integer literal, possibly negated, within the range of `kind`.
fn int_literal(expr: &Expr, kind: IntKind) -> syn::Result<i128> {
    let ty = kind.ty();
    let not_an_int = |found: &Expr| {
        let msg = match kind {
            IntKind::Int => format!(
                "`key` must be a literal: {KEY_FORMS}; found {}",
                describe(found)
            ),
            IntKind::PairElement => format!(
                "a pair key holds two integer literals (`i32`), e.g. `key = (7, 42)`; found {}",
                describe(found)
            ),
        };
        syn::Error::new(expr.span(), msg)
    };
    let (negative, lit): (bool, &LitInt) = match ungroup(expr) {
        Expr::Lit(syn::ExprLit {
            lit: Lit::Int(i), ..
        }) => (false, i),
        Expr::Unary(syn::ExprUnary {
            op: UnOp::Neg(_),
            expr: inner,
            ..
        }) => match ungroup(inner) {
            Expr::Lit(syn::ExprLit {
                lit: Lit::Int(i), ..
            }) => (true, i),
            other => return Err(not_an_int(other)),
        },
        other => return Err(not_an_int(other)),
    };
    let suffix = lit.suffix();
    if !suffix.is_empty() && suffix != ty {
        return Err(syn::Error::new(
            lit.span(),
            format!("unexpected suffix `{suffix}`: this key is an `{ty}`; write the number without a suffix"),
        ));
    }
    let (min, max) = kind.range();
    let magnitude = lit
        .base10_digits()
        .parse::<u128>()
        .ok()
        .and_then(|m| i128::try_from(m).ok());
    match magnitude.map(|m| if negative { -m } else { m }) {
        Some(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(syn::Error::new(
            expr.span(),
            match kind {
                IntKind::Int => format!(
                    "integer key out of range: a key is an `i64` ({min}..={max}); for a larger or textual id use a string key, which is hashed into an `i64`"
                ),
                IntKind::PairElement => format!(
                    "pair key element out of range: each is an `i32` ({min}..={max}); for larger ids use an integer key `key = 42` (`i64`) or a string key"
                ),
            },
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn parse_ok(tokens: TokenStream) -> Args {
        let (args, err) = parse(tokens);
        if let Some(e) = err {
            panic!("unexpected errors: {:?}", messages(Some(e)));
        }
        args
    }

    fn messages(err: Option<syn::Error>) -> Vec<String> {
        err.map(|e| e.into_iter().map(|e| e.to_string()).collect())
            .unwrap_or_default()
    }

    fn parse_err(tokens: TokenStream) -> Vec<String> {
        let msgs = messages(parse(tokens).1);
        assert!(!msgs.is_empty(), "expected errors");
        msgs
    }

    #[test]
    fn defaults() {
        let args = parse_ok(quote!(key = "report:daily"));
        assert!(matches!(&args.key, Some(Key::Literal { name, .. }) if name == "report:daily"));
        assert_eq!(args.wait, WaitMode::Skip);
        assert!(!args.shared);
        assert!(args.pool.is_none());
    }

    #[test]
    fn all_options_in_any_order_with_trailing_comma() {
        let args = parse_ok(quote!(
            pool = "jobs",
            shared,
            wait = "1m30s",
            key = "tenant:{tenant_id}",
        ));
        assert!(matches!(&args.key, Some(Key::Template { .. })));
        assert_eq!(args.wait, WaitMode::TimeoutMillis(90_000));
        assert!(args.shared);
        assert_eq!(args.pool.unwrap().value(), "jobs");

        let args = parse_ok(quote!(key = "k", wait, exclusive));
        assert_eq!(args.wait, WaitMode::Forever);
        assert!(!args.shared);

        let args = parse_ok(quote!(skip, key = "k"));
        assert_eq!(args.wait, WaitMode::Skip);
    }

    #[test]
    fn integer_and_pair_keys() {
        let args = parse_ok(quote!(key = 42));
        assert!(matches!(args.key, Some(Key::Int { value: 42, .. })));
        let args = parse_ok(quote!(key = -5i64));
        assert!(matches!(args.key, Some(Key::Int { value: -5, .. })));
        let args = parse_ok(quote!(key = -9223372036854775808));
        assert!(matches!(
            args.key,
            Some(Key::Int {
                value: i64::MIN,
                ..
            })
        ));
        let args = parse_ok(quote!(key = 0x7fff_ffff_ffff_ffff));
        assert!(matches!(
            args.key,
            Some(Key::Int {
                value: i64::MAX,
                ..
            })
        ));
        let args = parse_ok(quote!(key = (7, -42i32)));
        assert!(matches!(args.key, Some(Key::Pair { a: 7, b: -42, .. })));
    }

    #[test]
    fn escaped_braces_make_a_literal_key() {
        let args = parse_ok(quote!(key = "a{{b}}"));
        assert!(matches!(&args.key, Some(Key::Literal { name, .. }) if name == "a{b}"));
    }

    #[test]
    fn missing_key() {
        assert!(parse_err(quote!())[0].starts_with("missing `key`"));
        assert!(parse_err(quote!(wait))[0].starts_with("missing `key`"));
        // A key that was written but is malformed is reported once.
        assert_eq!(parse_err(quote!(key "x")).len(), 1);
        assert_eq!(parse_err(quote!("x")).len(), 1);
        assert_eq!(parse_err(quote!(key = "x" wait)).len(), 1);
        assert_eq!(parse_err(quote!(key = 1.5)).len(), 1);
    }

    #[test]
    fn unknown_option_suggests() {
        let e = parse_err(quote!(key = "k", wiat = "3s"));
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("unknown option `wiat` for #[advisory_locked]: did you mean `wait`?"),
            "{}",
            e[0]
        );
        let e = parse_err(quote!(key = "k", timeout = "3s"));
        assert!(
            e[0].contains("the valid options are `key`, `wait`"),
            "{}",
            e[0]
        );
        assert!(!e[0].contains("did you mean"));
        let e = parse_err(quote!(key = "k", type = "x"));
        assert!(e[0].starts_with("unknown option `type`"), "{}", e[0]);
    }

    #[test]
    fn duplicates_and_conflicts() {
        let e = parse_err(quote!(key = "a", key = "b"));
        assert_eq!(
            e,
            ["duplicate option `key`: #[advisory_locked] takes exactly one key"]
        );
        let e = parse_err(quote!(key = "a", pool = "x", pool = "y"));
        assert!(e[0].starts_with("duplicate option `pool`"));
        let e = parse_err(quote!(key = "a", skip, wait = "3s"));
        assert!(e[0].starts_with("`skip` and `wait` cannot be combined"));
        let e = parse_err(quote!(key = "a", shared, exclusive));
        assert!(e[0].starts_with("`shared` and `exclusive` cannot be combined"));
    }

    #[test]
    fn wrong_value_types() {
        for (tokens, start) in [
            (quote!(key = 1.5), "`key` must be a literal"),
            (quote!(key = true), "`key` must be a literal"),
            (quote!(key = SOME_CONST), "`key` must be a literal"),
            (quote!(key = ""), "the key must not be empty"),
            (quote!(key = (1, 2, 3)), "a pair key has exactly 2 integers"),
            (quote!(key = (1)), "a pair key has exactly 2 integers"),
            (quote!(key = (1, "a")), "a pair key holds two integer literals (`i32`), e.g. `key = (7, 42)`; found a string"),
            (quote!(key = -1.5), "`key` must be a literal"),
            (quote!(key = 9223372036854775808), "integer key out of range"),
            (quote!(key = (2147483648, 0)), "pair key element out of range"),
            (quote!(key = 5u8), "unexpected suffix `u8`"),
            (quote!(key), "`key` needs a value"),
            (quote!(key = "k", wait = 30), "`wait` takes a duration string with a unit: write `wait = \"30s\"`"),
            (quote!(key = "k", wait = "0s"), "invalid `wait` duration \"0s\": the duration is zero"),
            (quote!(key = "k", wait = "soon"), "invalid `wait` duration"),
            (quote!(key = "k", pool = 1), "`pool` takes the name"),
            (quote!(key = "k", pool = ""), "`pool` must not be empty"),
            (quote!(key = "k", pool), "`pool` needs a value"),
            (quote!(key = "k", skip = true), "`skip` is a flag and takes no value"),
            (quote!(key = "k", shared = false), "`shared` is a flag and takes no value"),
            (quote!(key = "k", exclusive = true), "`exclusive` is a flag"),
            (quote!(key "k"), "expected `=` or `,` after `key`"),
            (quote!(key =), "missing value after `key =`"),
            (quote!(key = "a" "b"), "expected `,` after the value of `key`"),
            (quote!("report:daily"), "expected `key = \"report:daily\"`"),
            (quote!(key = "k",, wait), "unexpected `,`"),
            (quote!(key = "{x:?}"), "format spec"),
        ] {
            let e = parse_err(tokens.clone());
            assert!(e[0].starts_with(start), "{tokens}: {e:?}");
        }
    }

    #[test]
    fn limit_per_and_transaction() {
        let args = parse_ok(quote!(key = "k", limit = 3, per = "1m30s"));
        assert_eq!((args.limit, args.per), (Some(3), Some(90_000)));
        let args = parse_ok(quote!(limit = 1024u32, key = "k"));
        assert_eq!((args.limit, args.per), (Some(1024), None));
        let args = parse_ok(quote!(key = "k", transaction = r#tx, wait, shared));
        assert_eq!(args.transaction.unwrap().to_string(), "r#tx");
        for (tokens, start) in [
            (quote!(key = "k", per = "1m"), "`per` needs `limit`"),
            (quote!(key = "k", limit = 0), "`limit` must be at least 1"),
            (quote!(key = "k", limit = -2), "`limit` must be at least 1"),
            (quote!(key = "k", limit = 1025), "`limit` is at most 1024"),
            (quote!(key = "k", limit = 99999999999999999999999), "`limit` is at most 1024"),
            (quote!(key = "k", limit = "2"), "`limit` takes an integer (1..=1024), not a string: write `limit = 2`"),
            (quote!(key = "k", limit = 2u8), "unexpected suffix `u8`"),
            (quote!(key = "k", limit = N), "`limit` takes an integer literal"),
            (quote!(key = "k", limit), "`limit` needs a value"),
            (quote!(key = "k", limit = 2, per = "0s"), "invalid `per` duration \"0s\": the duration is zero: `per` is the period"),
            (quote!(key = "k", limit = 2, per = 60), "`per` takes a duration string with a unit: write `per = \"60s\"`"),
            (quote!(key = "k", limit = 2, per), "`per` needs a value"),
            (quote!(key = "k", transaction = "tx"), "`transaction` takes the name the body uses for its transaction, not a string: write `transaction = tx`"),
            (quote!(key = "k", transaction = a::b), "`transaction` takes the name"),
            (quote!(key = "k", transaction = self), "`transaction` takes the name"),
            (quote!(key = "k", transaction), "`transaction` needs a name"),
            (quote!(key = "k", transaction = tx, limit = 2), "`transaction` and `limit` cannot be combined"),
            (quote!(key = "k", per = "1s", transaction = tx), "`per` needs `limit`"),
            (quote!(key = "k", on_lost = "abort", transaction = tx), "`on_lost` can't be set with `transaction`"),
        ] {
            let e = parse_err(tokens.clone());
            assert!(e[0].starts_with(start), "{tokens}: {e:?}");
        }
        // `per` without a valid `limit` is not also "missing `limit`".
        assert_eq!(parse_err(quote!(key = "k", limit = 0, per = "1s")).len(), 1);
        // Both limit options with a transaction: one error each.
        assert_eq!(
            parse_err(quote!(key = "k", transaction = tx, limit = 2, per = "1s")).len(),
            2
        );
    }

    #[test]
    fn all_errors_collected() {
        let e = parse_err(quote!(key = 1.5, wiat, pool = "", shared = true, key = "x"));
        assert_eq!(e.len(), 5, "{e:?}");
    }

    #[test]
    fn suggestions() {
        assert_eq!(closest("wiat", OPTION_NAMES.iter().copied()), Some("wait"));
        assert_eq!(
            closest("shard", OPTION_NAMES.iter().copied()),
            Some("shared")
        );
        assert_eq!(
            closest("exclusiv", OPTION_NAMES.iter().copied()),
            Some("exclusive")
        );
        assert_eq!(closest("Key", OPTION_NAMES.iter().copied()), Some("key"));
        assert_eq!(closest("timeout", OPTION_NAMES.iter().copied()), None);
        assert_eq!(closest("name", OPTION_NAMES.iter().copied()), None);
    }
}
