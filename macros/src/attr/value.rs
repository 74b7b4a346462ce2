//! The values of the options other than `key`: one function per option,
//! each returning the value or one spanned error.

use syn::spanned::Spanned;
use syn::{Expr, ExprLit, Ident, Lit, LitStr, Path, Token, UnOp};

use super::{Name, OnLost, KEY_FORMS, MAX_LIMIT};
use crate::duration::{self, DurationError};

/// Strips invisible groups (`$e:expr` from `macro_rules!`); parentheses are
/// kept (they mean something for pairs).
pub fn ungroup(expr: &Expr) -> &Expr {
    match expr {
        Expr::Group(g) => ungroup(&g.expr),
        e => e,
    }
}

/// What a value is, for messages: "a string", "a path", ...
pub fn describe(expr: &Expr) -> &'static str {
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

/// The string literal the value is, if it is one.
fn string(expr: &Expr) -> Option<&LitStr> {
    match ungroup(expr) {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Some(s),
        _ => None,
    }
}

/// The message for `name` written without `= value`, for the options that
/// need one (`wait` alone and the flags are fine).
pub fn missing_value(name: Name) -> String {
    match name {
        Name::Key => format!("`key` needs a value: write {KEY_FORMS}"),
        Name::Pool => "`pool` needs a value: write `pool = \"name\"` with the name of a configured lock registry (leave `pool` out for \"default\")".to_owned(),
        Name::OnLost => "`on_lost` needs a value: write `on_lost = \"abort\"` (the default: stop the body) or `on_lost = \"continue\"` (let it finish)".to_owned(),
        Name::Limit => format!("`limit` needs a value: write `limit = N` (1..={MAX_LIMIT}) to let at most N bodies run at once across the fleet"),
        Name::Per => "`per` needs a value: write `per = \"1m\"` (with `limit = N`: at most N starts per minute)".to_owned(),
        Name::Transaction => "`transaction` needs a name for the transaction: write `transaction = tx`, and use `tx` in the body".to_owned(),
        Name::On => "`on` needs the name of the fn's argument that holds the transaction to lock in: write `on = tx` for an argument `tx: &mut sqlx::PgTransaction<'_>` (or another transaction type of `advisory_locked::external`)".to_owned(),
        Name::Crate => "`crate` needs a value: write the path the advisory-locked crate is reachable under, e.g. `crate = \"my_alias\"`".to_owned(),
        Name::Wait | Name::Skip | Name::Shared | Name::Exclusive => format!("`{}` needs no value", name.as_str()),
    }
}

/// `skip = …`, `shared = …`, `exclusive = …`: flags take no value.
pub fn flag_with_value(name: Name, eq: Token![=], value: &Expr) -> syn::Error {
    let n = name.as_str();
    let is_false = matches!(
        ungroup(value),
        Expr::Lit(ExprLit { lit: Lit::Bool(b), .. }) if !b.value
    );
    let fix = match name {
        Name::Shared if is_false => "leave it out for an exclusive lock (the default)".to_string(),
        Name::Exclusive if is_false => "write `shared` for a shared lock".to_string(),
        Name::Skip if is_false => "write `wait` to wait for the lock".to_string(),
        _ => format!("write `{n}` alone"),
    };
    syn::Error::new_spanned(
        quote::quote!(#eq #value),
        format!("`{n}` is a flag and takes no value: {fix}"),
    )
}

/// `pool = "name"`: a non-empty string.
pub fn pool(value: &Expr) -> syn::Result<LitStr> {
    match string(value) {
        Some(s) if s.value().is_empty() => Err(syn::Error::new(
            s.span(),
            "`pool` must not be empty: write the name of a configured lock registry, or leave `pool` out for \"default\"",
        )),
        Some(s) => Ok(s.clone()),
        None => Err(syn::Error::new(
            value.span(),
            format!(
                "`pool` takes the name of a configured lock registry as a string, e.g. `pool = \"jobs\"`; found {}",
                describe(value)
            ),
        )),
    }
}

/// `wait = "30s"`: the longest wait, in milliseconds.
pub fn wait(value: &Expr) -> syn::Result<u64> {
    if let Some(s) = string(value) {
        return duration::parse_millis(&s.value()).map_err(|e| {
            syn::Error::new(
                s.span(),
                format!("invalid `wait` duration {:?}: {e}", s.value()),
            )
        });
    }
    Err(match ungroup(value) {
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => syn::Error::new(
            i.span(),
            format!(
                "`wait` takes a duration string with a unit: write `wait = \"{}s\"` for seconds (units: `ms`, `s`, `m`, `h`), or `wait` alone to wait without a limit",
                i.base10_digits()
            ),
        ),
        other => syn::Error::new(
            other.span(),
            format!(
                "`wait` takes a duration string, e.g. `wait = \"30s\"` or `wait = \"1m30s\"`, or nothing (`wait` alone waits without a limit); found {}",
                describe(other)
            ),
        ),
    })
}

/// `per = "1m"`: the period of a `limit`, in milliseconds.
pub fn per(value: &Expr) -> syn::Result<u64> {
    if let Some(s) = string(value) {
        return duration::parse_millis(&s.value()).map_err(|e| {
            let why = match e {
                DurationError::Zero => "the duration is zero: `per` is the period in which at most `limit` bodies start; give a positive period, or remove `per` to limit only how many run at once".to_owned(),
                DurationError::TooLong => "the duration is too long: the longest period is 8760h (365 days)".to_owned(),
                DurationError::SubMillisecond { part } => format!("`{part}` is not a whole number of milliseconds: periods are counted in milliseconds"),
                other => other.to_string(),
            };
            syn::Error::new(s.span(), format!("invalid `per` duration {:?}: {why}", s.value()))
        });
    }
    Err(match ungroup(value) {
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => syn::Error::new(
            i.span(),
            format!(
                "`per` takes a duration string with a unit: write `per = \"{}s\"` for seconds (units: `ms`, `s`, `m`, `h`)",
                i.base10_digits()
            ),
        ),
        other => syn::Error::new(
            other.span(),
            format!(
                "`per` takes a duration string, e.g. `per = \"1m\"` or `per = \"1.5s\"`; found {}",
                describe(other)
            ),
        ),
    })
}

/// `on_lost = "abort" | "continue"`.
pub fn on_lost(value: &Expr) -> syn::Result<OnLost> {
    let Some(s) = string(value) else {
        return Err(syn::Error::new(
            value.span(),
            format!(
                "`on_lost` takes a string, `\"abort\"` or `\"continue\"`; found {}",
                describe(value)
            ),
        ));
    };
    match s.value().as_str() {
        "abort" => Ok(OnLost::Abort),
        "continue" => Ok(OnLost::Continue),
        other => Err(syn::Error::new(
            s.span(),
            format!(
                "unknown `on_lost` policy {other:?}: write `on_lost = \"abort\"` (stop the body when the lock is lost) or `on_lost = \"continue\"` (let it finish)"
            ),
        )),
    }
}

/// `transaction = tx`: a plain name for the body's transaction.
pub fn transaction(value: &Expr) -> syn::Result<Ident> {
    name_of(
        "transaction",
        "the name the body uses for its transaction",
        value,
    )
}

/// `on = tx`: the plain name of the argument holding the caller's
/// transaction.
pub fn on(value: &Expr) -> syn::Result<Ident> {
    name_of(
        "on",
        "the name of the fn's argument that holds the transaction",
        value,
    )
}

/// The value of `option = name`, a plain name (`what` it names, for the
/// errors: a string, or anything else, is refused with the fix).
fn name_of(option: &str, what: &str, value: &Expr) -> syn::Result<Ident> {
    if let Some(ident) = plain_ident(value) {
        return Ok(ident);
    }
    Err(match ungroup(value) {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => {
            let fix = syn::parse_str::<Ident>(&s.value())
                .map(|i| format!("`{option} = {i}`"))
                .unwrap_or_else(|_| format!("`{option} = tx`"));
            syn::Error::new(
                s.span(),
                format!("`{option}` takes {what}, not a string: write {fix}"),
            )
        }
        other => syn::Error::new(
            other.span(),
            format!(
                "`{option}` takes {what}, e.g. `{option} = tx`; found {}",
                describe(other)
            ),
        ),
    })
}

/// A single identifier other than `self`, `Self`, `super`, `crate`.
fn plain_ident(value: &Expr) -> Option<Ident> {
    match ungroup(value) {
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
            Some(p.path.segments[0].ident.clone())
        }
        _ => None,
    }
}

/// `limit = N`: an integer literal in 1..=MAX_LIMIT.
pub fn limit(value: &Expr) -> syn::Result<u32> {
    let range = format!("1..={MAX_LIMIT}");
    match ungroup(value) {
        Expr::Lit(ExprLit {
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
        Expr::Lit(ExprLit {
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

const CRATE_FORMS: &str = "the path the advisory-locked crate is reachable under, e.g. `crate = \"my_alias\"` for a renamed dependency or `crate = \"crate::reexported\"` for a re-export";

/// `crate = "path"`: where the expansion finds the advisory-locked crate
/// (instead of `::advisory_locked`); its tokens are spanned at the string.
pub fn crate_path(value: &Expr) -> syn::Result<Path> {
    let Some(s) = string(value) else {
        let fix = match ungroup(value) {
            Expr::Path(p) if p.qself.is_none() => {
                let text = quote::ToTokens::to_token_stream(&p.path).to_string();
                format!("write `crate = \"{}\"`", text.replace(' ', ""))
            }
            _ => format!("write {CRATE_FORMS}"),
        };
        return Err(syn::Error::new(
            value.span(),
            format!(
                "`crate` takes a path as a string: {fix}; found {}",
                describe(value)
            ),
        ));
    };
    let invalid = |why: &str| {
        syn::Error::new(
            s.span(),
            format!(
                "invalid `crate` path {:?}: {why}; write {CRATE_FORMS}",
                s.value()
            ),
        )
    };
    let path = s
        .parse_with(Path::parse_mod_style)
        .map_err(|_| invalid("not a path"))?;
    check_path_keywords(&path).map_err(|why| invalid(&why))?;
    Ok(path)
}

/// `crate`, `self` and `super` only where Rust allows them: at the start
/// (`super` repeated), never after a leading `::`; no `Self`.
fn check_path_keywords(path: &Path) -> Result<(), String> {
    let mut at_start = path.leading_colon.is_none();
    for (i, seg) in path.segments.iter().enumerate() {
        let ident = seg.ident.to_string();
        match ident.as_str() {
            "Self" => return Err("`Self` cannot name a crate".to_owned()),
            "crate" | "self" if !(at_start && i == 0) => {
                return Err(format!("`{ident}` can only start a path"))
            }
            "super" if !at_start => {
                return Err("`super` can only start a path (after `self` or `super`)".to_owned())
            }
            "crate" | "self" | "super" => {}
            _ => at_start = false,
        }
    }
    Ok(())
}
