//! The value of `key = …`: a string (literal or template), an integer or a
//! pair of integers.

use syn::spanned::Spanned;
use syn::{Expr, ExprLit, ExprTuple, Lit, LitInt, LitStr, UnOp};

use super::value::{describe, ungroup};
use super::{Key, KEY_FORMS};
use crate::diag::Errors;
use crate::template;

/// The key, and errors that still leave a key worth checking against the fn.
pub fn parse_key(value: &Expr) -> syn::Result<(Key, Option<syn::Error>)> {
    match ungroup(value) {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => string_key(s),
        e @ (Expr::Lit(ExprLit {
            lit: Lit::Int(_), ..
        })
        | Expr::Unary(_)) => {
            let value = int_literal(e, IntKind::Int)?;
            let key = Key::Int {
                value: value as i64,
                span: e.span(),
            };
            Ok((key, None))
        }
        Expr::Tuple(t) => pair_key(t).map(|key| (key, None)),
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

/// `key = "report:daily"` or `key = "tenant:{tenant_id}"`.
fn string_key(s: &LitStr) -> syn::Result<(Key, Option<syn::Error>)> {
    let text = s.value();
    if text.is_empty() {
        return Err(syn::Error::new(
            s.span(),
            "the key must not be empty: name the lock, e.g. `key = \"report:daily\"`",
        ));
    }
    let mut errors = Errors::default();
    if let Some(at) = text.find('\0') {
        errors.add(
            s.span(),
            format!(
                "the key contains a NUL character (`\\0` at byte {at}): PostgreSQL text cannot hold NUL, so no text hashes to this key's number (`hashtextextended` in psql can never find it); remove the NUL"
            ),
        );
    }
    let (template, messages) = template::parse_partial(&text);
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
    // With errors, the key is still returned so that the names of its valid
    // placeholders get checked too (nothing is expanded).
    Ok((key, errors.finish()))
}

/// `key = (7, 42)`.
fn pair_key(t: &ExprTuple) -> syn::Result<Key> {
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
        if let Some(v) = errors.take(int_literal(elem, IntKind::PairElement)) {
            *slot = v as i32;
        }
    }
    match errors.finish() {
        Some(e) => Err(e),
        None => Ok(Key::Pair {
            a: out[0],
            b: out[1],
            span: t.span(),
        }),
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
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => (false, i),
        Expr::Unary(syn::ExprUnary {
            op: UnOp::Neg(_),
            expr: inner,
            ..
        }) => match ungroup(inner) {
            Expr::Lit(ExprLit {
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
