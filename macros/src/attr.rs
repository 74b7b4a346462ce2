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
//!          | "on" "=" ident
//!          | "crate" "=" path-string
//! key     := string (literal or template) | int | "-" int | "(" int "," int ")"
//! ```
//!
//! Every problem is collected (one error per offending token) instead of
//! stopping at the first one. The options are read in steps: the list is
//! split at commas, each option is parsed into a name and a value
//! ([`RawOption`]), the value is read by its option's function (`key` in
//! `attr/key.rs`, the others in `attr/value.rs`), and the combinations are
//! checked last.

mod key;
mod value;

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::parse::{ParseStream, Parser};
use syn::{Expr, Ident, LitStr, Path, Token};

use crate::diag::{closest, Errors};
use crate::template::Template;

/// The largest `limit = N`: each slot is an advisory lock of its own.
pub const MAX_LIMIT: u32 = 1024;

const KEY_FORMS: &str =
    "a string `key = \"report:daily\"`, a template `key = \"tenant:{tenant_id}\"`, an integer `key = 42` or a pair `key = (7, 42)`";

/// The parsed options. Whatever could be parsed is here even when other
/// options had errors, so that the fn can still be checked against it; the
/// complete, consistent set is `valid::Options`.
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
    /// `on = tx`: the argument holding the caller's transaction to lock in.
    pub on: Option<Ident>,
    /// `crate = "path"`: the advisory-locked crate's path, if not
    /// `::advisory_locked`.
    pub crate_path: Option<Path>,
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

/// An option's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Name {
    Key,
    Wait,
    Skip,
    Shared,
    Exclusive,
    Pool,
    OnLost,
    Limit,
    Per,
    Transaction,
    On,
    Crate,
}

impl Name {
    /// Every option, in the order they are listed in messages.
    const ALL: [Name; 12] = [
        Name::Key,
        Name::Wait,
        Name::Skip,
        Name::Shared,
        Name::Exclusive,
        Name::Pool,
        Name::OnLost,
        Name::Limit,
        Name::Per,
        Name::Transaction,
        Name::On,
        Name::Crate,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Name::Key => "key",
            Name::Wait => "wait",
            Name::Skip => "skip",
            Name::Shared => "shared",
            Name::Exclusive => "exclusive",
            Name::Pool => "pool",
            Name::OnLost => "on_lost",
            Name::Limit => "limit",
            Name::Per => "per",
            Name::Transaction => "transaction",
            Name::On => "on",
            Name::Crate => "crate",
        }
    }

    /// The option an identifier names (a raw `r#key` names none).
    fn of(ident: &Ident) -> Option<Name> {
        Name::ALL.into_iter().find(|name| ident == name.as_str())
    }
}

/// One `name` or `name = value` between commas.
struct RawOption {
    name: Name,
    name_span: Span,
    value: Option<(Token![=], Expr)>,
}

/// The options seen so far, in order, with the span of each name.
#[derive(Default)]
struct Seen(Vec<(Name, Span)>);

impl Seen {
    fn position(&self, name: Name) -> Option<usize> {
        self.0.iter().position(|(n, _)| *n == name)
    }

    fn span(&self, name: Name) -> Option<Span> {
        self.position(name).map(|i| self.0[i].1)
    }

    /// Reports `a` and `b` given together, at the later of the two.
    fn conflict(&self, a: Name, b: Name, msg: &str, errors: &mut Errors) {
        if let (Some(a), Some(b)) = (self.position(a), self.position(b)) {
            errors.add(self.0[a.max(b)].1, msg);
        }
    }
}

/// Parses the attribute's argument list.
pub fn parse(tokens: TokenStream) -> (Args, Option<syn::Error>) {
    let mut args = Args::default();
    let mut errors = Errors::default();
    let mut seen = Seen::default();

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
        if seen.position(raw.name).is_some() {
            errors.push(duplicate(&raw));
            continue;
        }
        seen.0.push((raw.name, raw.name_span));
        apply(&mut args, raw, &mut errors);
    }
    check_combinations(&seen, &mut errors);
    if seen.span(Name::Key).is_none() && !key_attempted {
        errors.push(missing_key(&tokens));
    }
    (args, errors.finish())
}

fn duplicate(raw: &RawOption) -> syn::Error {
    let name = raw.name.as_str();
    let what = if raw.name == Name::Key {
        "#[advisory_locked] takes exactly one key".to_string()
    } else {
        format!("remove the second `{name}`")
    };
    syn::Error::new(raw.name_span, format!("duplicate option `{name}`: {what}"))
}

fn missing_key(tokens: &TokenStream) -> syn::Error {
    let msg = format!("missing `key`: #[advisory_locked] needs the lock's key, e.g. {KEY_FORMS}");
    if tokens.is_empty() {
        syn::Error::new(Span::call_site(), msg)
    } else {
        syn::Error::new_spanned(tokens, msg)
    }
}

/// Options that cannot be given together, or one without the other.
fn check_combinations(seen: &Seen, errors: &mut Errors) {
    seen.conflict(
        Name::Skip,
        Name::Wait,
        "`skip` and `wait` cannot be combined: `skip` (the default) runs nothing when the lock is busy, `wait` waits for it; keep one of them",
        errors,
    );
    seen.conflict(
        Name::Shared,
        Name::Exclusive,
        "`shared` and `exclusive` cannot be combined: a lock is taken either shared (readers) or exclusive (the default); keep one of them",
        errors,
    );
    if let (Some(per), None) = (seen.span(Name::Per), seen.span(Name::Limit)) {
        errors.add(
            per,
            "`per` needs `limit`: `limit = N, per = \"1m\"` lets at most N bodies start per minute across the fleet; add `limit = N`, or remove `per`",
        );
    }
    seen.conflict(
        Name::Shared,
        Name::Limit,
        "`shared` and `limit` cannot be combined: `limit = N` gives N exclusive slots (shared holders would not count against the limit); remove one of them",
        errors,
    );
    for other in [Name::Limit, Name::Per] {
        let msg = format!(
            "`transaction` and `{}` cannot be combined: a fleet-wide limit is not supported with transaction scope; remove one of them",
            other.as_str()
        );
        seen.conflict(Name::Transaction, other, &msg, errors);
    }
    seen.conflict(
        Name::Transaction,
        Name::OnLost,
        "`on_lost` can't be set with `transaction`: a transaction's lock ends with its connection, and the entry's policy (`LockConfig::on_lost`) applies; whatever the policy, the transaction is rolled back; remove `on_lost`",
        errors,
    );
    check_on(seen, errors);
}

/// `on = tx` locks in the caller's transaction: none of the options about
/// the crate's own sessions or transactions go with it.
fn check_on(seen: &Seen, errors: &mut Errors) {
    for (other, why) in [
        (Name::Transaction, "`transaction = …` opens a transaction of the crate's own, `on = …` locks in the caller's"),
        (Name::Pool, "the lock is taken in the caller's transaction, not on a registry entry's sessions"),
        (Name::OnLost, "the lock ends with the caller's transaction, which the caller commits or rolls back"),
        (Name::Limit, "a fleet-wide limit is not supported in the caller's transaction"),
        (Name::Per, "a fleet-wide limit is not supported in the caller's transaction"),
    ] {
        let msg = format!(
            "`on` and `{}` cannot be combined: {why}; remove one of them",
            other.as_str()
        );
        seen.conflict(Name::On, other, &msg, errors);
    }
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

/// `name` or `name = value`.
fn parse_option(input: ParseStream) -> syn::Result<RawOption> {
    let (name, name_span) = parse_name(input)?;
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

/// An option's name (keywords such as `crate` included).
fn parse_name(input: ParseStream) -> syn::Result<(Name, Span)> {
    if input.peek(Ident::peek_any) {
        let ident = Ident::parse_any(input)?;
        return match Name::of(&ident) {
            Some(name) => Ok((name, ident.span())),
            None => Err(unknown_option(&ident)),
        };
    }
    if input.peek(LitStr) {
        let lit: LitStr = input.parse()?;
        return Err(syn::Error::new(
            lit.span(),
            format!(
                "expected `key = {}`: #[advisory_locked] options are named",
                lit.to_token_stream()
            ),
        ));
    }
    Err(input.error(format!(
        "expected an option of #[advisory_locked]: {}",
        list_options()
    )))
}

fn option_names() -> impl Iterator<Item = &'static str> {
    Name::ALL.into_iter().map(Name::as_str)
}

fn list_options() -> String {
    let names: Vec<String> = option_names().map(|n| format!("`{n}`")).collect();
    format!("the valid options are {}", names.join(", "))
}

fn unknown_option(ident: &Ident) -> syn::Error {
    let name = ident.unraw().to_string();
    let mut msg = format!("unknown option `{name}` for #[advisory_locked]");
    if let Some(best) = closest(&name, option_names()) {
        msg.push_str(&format!(": did you mean `{best}`?"));
        msg.push_str(&format!(" ({})", list_options()));
    } else {
        msg.push_str(&format!("; {}", list_options()));
    }
    syn::Error::new(ident.span(), msg)
}

/// Reads an option's value into `args`, or collects its error.
fn apply(args: &mut Args, raw: RawOption, errors: &mut Errors) {
    let RawOption {
        name,
        name_span,
        value,
    } = raw;
    let Some((eq, value)) = value else {
        match name {
            Name::Wait => args.wait = WaitMode::Forever,
            Name::Shared => args.shared = true,
            Name::Skip | Name::Exclusive => {}
            _ => errors.add(name_span, value::missing_value(name)),
        }
        return;
    };
    let done = match name {
        Name::Key => key::parse_key(&value).map(|(key, key_errors)| {
            args.key = Some(key);
            errors.extend(key_errors);
        }),
        Name::Wait => value::wait(&value).map(|ms| args.wait = WaitMode::TimeoutMillis(ms)),
        Name::Pool => value::pool(&value).map(|pool| args.pool = Some(pool)),
        Name::OnLost => value::on_lost(&value).map(|p| args.on_lost = Some(p)),
        Name::Limit => value::limit(&value).map(|n| args.limit = Some(n)),
        Name::Per => value::per(&value).map(|ms| args.per = Some(ms)),
        Name::Transaction => value::transaction(&value).map(|tx| args.transaction = Some(tx)),
        Name::On => value::on(&value).map(|arg| args.on = Some(arg)),
        Name::Crate => value::crate_path(&value).map(|path| args.crate_path = Some(path)),
        Name::Skip | Name::Shared | Name::Exclusive => {
            Err(value::flag_with_value(name, eq, &value))
        }
    };
    errors.take(done);
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
    fn on_option() {
        let args = parse_ok(quote!(key = "k:{id}", on = tx, wait = "5s", shared));
        assert_eq!(args.on.unwrap().to_string(), "tx");
        for (tokens, start) in [
            (quote!(key = "k", on), "`on` needs the name of the fn's argument"),
            (quote!(key = "k", on = "tx"), "`on` takes the name of the fn's argument that holds the transaction, not a string: write `on = tx`"),
            (quote!(key = "k", on = a.b), "`on` takes the name of the fn's argument that holds the transaction, e.g. `on = tx`; found an expression"),
            (quote!(key = "k", on = self), "`on` takes the name"),
            (quote!(key = "k", on = tx, transaction = t), "`on` and `transaction` cannot be combined"),
            (quote!(key = "k", pool = "p", on = tx), "`on` and `pool` cannot be combined"),
            (quote!(key = "k", on = tx, on_lost = "abort"), "`on` and `on_lost` cannot be combined"),
            (quote!(key = "k", on = tx, limit = 2), "`on` and `limit` cannot be combined"),
            (quote!(key = "k", on = tx, on = t), "duplicate option `on`"),
        ] {
            let e = parse_err(tokens.clone());
            assert!(e[0].starts_with(start), "{tokens}: {e:?}");
        }
    }

    #[test]
    fn crate_path() {
        for (tokens, want) in [
            (quote!(key = "k", crate = "my_alias"), "my_alias"),
            (
                quote!(crate = "::advisory_locked", key = "k"),
                ":: advisory_locked",
            ),
            (
                quote!(key = "k", crate = "crate::reexported"),
                "crate :: reexported",
            ),
            (
                quote!(key = "k", crate = "super::super::x"),
                "super :: super :: x",
            ),
            (quote!(key = "k", crate = "self::x"), "self :: x"),
        ] {
            let path = parse_ok(tokens).crate_path.expect("a path");
            assert_eq!(path.to_token_stream().to_string(), want);
        }
        assert!(parse_ok(quote!(key = "k")).crate_path.is_none());
        for (tokens, start) in [
            (
                quote!(key = "k", crate = advisory_locked),
                "`crate` takes a path as a string: write `crate = \"advisory_locked\"`",
            ),
            (
                quote!(key = "k", crate = ::a::b),
                "`crate` takes a path as a string: write `crate = \"::a::b\"`",
            ),
            (
                quote!(key = "k", crate = 5),
                "`crate` takes a path as a string",
            ),
            (
                quote!(key = "k", crate = ""),
                "invalid `crate` path \"\": not a path",
            ),
            (
                quote!(key = "k", crate = "advisory locked"),
                "invalid `crate` path \"advisory locked\": not a path",
            ),
            (
                quote!(key = "k", crate = "a::"),
                "invalid `crate` path \"a::\": not a path",
            ),
            (quote!(key = "k", crate = "a::<T>"), "invalid `crate` path"),
            (quote!(key = "k", crate = "fn"), "invalid `crate` path"),
            (
                quote!(key = "k", crate = "a::crate"),
                "invalid `crate` path \"a::crate\": `crate` can only start a path",
            ),
            (
                quote!(key = "k", crate = "::crate"),
                "invalid `crate` path \"::crate\": `crate` can only start a path",
            ),
            (
                quote!(key = "k", crate = "a::super"),
                "invalid `crate` path \"a::super\": `super` can only start a path",
            ),
            (
                quote!(key = "k", crate = "Self"),
                "invalid `crate` path \"Self\": `Self` cannot name a crate",
            ),
            (quote!(key = "k", crate), "`crate` needs a value"),
            (
                quote!(key = "k", crate = "a", crate = "b"),
                "duplicate option `crate`",
            ),
            (
                quote!(key = "k", krate = "a"),
                "unknown option `krate` for #[advisory_locked]: did you mean `crate`?",
            ),
        ] {
            let e = parse_err(tokens.clone());
            assert_eq!(e.len(), 1, "{tokens}: {e:?}");
            assert!(e[0].starts_with(start), "{tokens}: {e:?}");
        }
    }

    #[test]
    fn nul_in_a_key() {
        for tokens in [
            quote!(key = "a\0b"),
            quote!(key = "\x00"),
            quote!(key = "t:\u{0}:{id}"),
        ] {
            let e = parse_err(tokens.clone());
            assert_eq!(e.len(), 1, "{tokens}: {e:?}");
            assert!(
                e[0].starts_with("the key contains a NUL character (`\\0` at byte "),
                "{tokens}: {e:?}"
            );
        }
        // The template's placeholders are still read, to be checked.
        let (args, _) = parse(quote!(key = "t:\0:{id}"));
        assert!(matches!(args.key, Some(Key::Template { .. })));
        // A raw string's backslash and zero are two characters, not NUL.
        parse_ok(quote!(key = r"a\0b"));
    }

    #[test]
    fn all_errors_collected() {
        let e = parse_err(quote!(key = 1.5, wiat, pool = "", shared = true, key = "x"));
        assert_eq!(e.len(), 5, "{e:?}");
    }

    #[test]
    fn suggestions() {
        assert_eq!(closest("wiat", option_names()), Some("wait"));
        assert_eq!(closest("shard", option_names()), Some("shared"));
        assert_eq!(closest("exclusiv", option_names()), Some("exclusive"));
        assert_eq!(closest("Key", option_names()), Some("key"));
        assert_eq!(closest("timeout", option_names()), None);
        assert_eq!(closest("name", option_names()), None);
    }
}
