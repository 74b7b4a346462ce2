//! The options checked against the fn, and turned into the complete,
//! consistent description that `expand` works from.

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::{Attribute, FnArg, Ident, LitStr, Pat, Path, ReturnType, Signature, Type, Visibility};

use crate::ast::{FnBody, LockedFn};
use crate::attr::{Args, Key, OnLost, WaitMode};
use crate::diag::{closest, Errors};
use crate::template::{Root, Template};

/// Every option, once all checks passed: nothing left out that the
/// expansion needs, no combination the attribute refuses.
pub struct Options {
    pub key: Key,
    pub wait: WaitMode,
    pub shared: bool,
    /// `pool = "…"`, else `"default"`.
    pub pool: LitStr,
    pub scope: Scope,
    /// `crate = "…"`; `None`: `::advisory_locked`.
    pub crate_path: Option<Path>,
}

/// Where the lock lives.
pub enum Scope {
    /// On the crate's lock sessions, for the body's duration.
    Session {
        on_lost: Option<OnLost>,
        limit: Option<Limit>,
    },
    /// `transaction = tx`: in a transaction the body gets under this name.
    Transaction { name: Ident },
    /// `on = tx`: a transaction-level lock in the caller's transaction,
    /// the fn's argument of this name (as written in the signature).
    On { arg: Ident },
}

/// `limit = N` and its `per = "…"`.
pub struct Limit {
    pub slots: u32,
    pub per_millis: Option<u64>,
}

/// The fn once checked: it has a body.
pub struct ValidFn {
    pub attrs: Vec<Attribute>,
    pub vis: Visibility,
    pub sig: Signature,
    pub body: FnBody,
}

/// Checks the fn and the options against each other (adding to the errors
/// of the options themselves); with no error at all, the complete options
/// and the fn.
pub fn validate(
    args: Args,
    arg_errors: Option<syn::Error>,
    f: LockedFn,
) -> syn::Result<(Options, ValidFn)> {
    let mut errors = Errors::default();
    errors.extend(arg_errors);
    errors.extend(check(&args, &f));
    if let Some(err) = errors.finish() {
        return Err(err);
    }
    // Every missing or conflicting part was reported above, so both are
    // complete here; a `None` would be a bug of this crate, reported as such.
    match (options(args), valid_fn(f)) {
        (Some(options), Some(f)) => Ok((options, f)),
        _ => Err(syn::Error::new(
            Span::call_site(),
            "#[advisory_locked]: internal error: the options passed every check but are incomplete; please report this with the attribute as written",
        )),
    }
}

/// The complete options, if the key is set and the options go together.
fn options(args: Args) -> Option<Options> {
    let Args {
        key,
        wait,
        shared,
        pool,
        on_lost,
        limit,
        per,
        transaction,
        on,
        crate_path,
    } = args;
    let scope = match (transaction, on_lost, limit, per) {
        _ if on.is_some() && pool.is_some() => return None,
        (None, None, None, None) if on.is_some() => Scope::On { arg: on? },
        _ if on.is_some() => return None,
        (Some(name), None, None, None) => Scope::Transaction { name },
        (Some(_), ..) | (None, _, None, Some(_)) => return None,
        (None, on_lost, limit, per_millis) => Scope::Session {
            on_lost,
            limit: limit.map(|slots| Limit { slots, per_millis }),
        },
    };
    Some(Options {
        key: key?,
        wait,
        shared,
        pool: pool.unwrap_or_else(|| LitStr::new("default", Span::call_site())),
        scope,
        crate_path,
    })
}

fn valid_fn(f: LockedFn) -> Option<ValidFn> {
    let LockedFn {
        attrs,
        vis,
        sig,
        body,
        ..
    } = f;
    Some(ValidFn {
        attrs,
        vis,
        sig,
        body: body?,
    })
}

/// Checks the fn and the options against each other.
pub fn check(args: &Args, f: &LockedFn) -> Option<syn::Error> {
    let mut errors = Errors::default();
    // The key's names first: they are in the attribute, above the fn.
    if let Some(Key::Template { template, lit }) = &args.key {
        check_template_names(template, lit, &f.sig, &mut errors);
    }
    if let Some(tx) = &args.transaction {
        check_transaction_name(tx, &f.sig, &mut errors);
    }
    if let Some(on) = &args.on {
        check_on_argument(on, &f.sig, &mut errors);
    }
    check_fn(f, &mut errors);
    errors.finish()
}

/// Every placeholder names `self` of a method or an argument.
fn check_template_names(template: &Template, lit: &LitStr, sig: &Signature, errors: &mut Errors) {
    let names = argument_names(sig);
    let has_receiver = sig.receiver().is_some();
    for ph in template.placeholders() {
        match &ph.root {
            Root::SelfValue if !has_receiver => errors.add(
                lit.span(),
                format!(
                    "`{{{}}}` in the key template needs a method with a `self` receiver, and this fn has none; {}",
                    ph.text,
                    available(&names)
                ),
            ),
            Root::SelfValue => {}
            Root::Arg(ident) => {
                let name = ident.unraw().to_string();
                if names.contains(&name) {
                    continue;
                }
                let mut msg = format!(
                    "unknown argument `{name}` in the key template placeholder `{{{}}}`",
                    ph.text
                );
                match closest(&name, names.iter().map(String::as_str)) {
                    Some(best) => msg.push_str(&format!(
                        ": did you mean `{best}`? ({})",
                        available(&names)
                    )),
                    None => msg.push_str(&format!("; {}", available(&names))),
                }
                errors.add(lit.span(), msg);
            }
        }
    }
}

/// `transaction = tx` must not hide an argument of the same name.
fn check_transaction_name(tx: &Ident, sig: &Signature, errors: &mut Errors) {
    let name = tx.unraw().to_string();
    let names = argument_names(sig);
    if names.contains(&name) {
        let other = ["tx", "txn", "transaction"]
            .into_iter()
            .find(|n| !names.iter().any(|a| a == n))
            .unwrap_or("db_tx");
        errors.add(
            tx.span(),
            format!("`transaction = {name}` would hide the argument `{name}` in the body: give the transaction another name, e.g. `transaction = {other}`"),
        );
    }
}

/// `on = tx` names an argument, whose type is a `&mut` (the caller keeps
/// its transaction, to commit it after the call).
fn check_on_argument(on: &Ident, sig: &Signature, errors: &mut Errors) {
    let name = on.unraw().to_string();
    let found = sig.inputs.iter().find_map(|arg| match arg {
        FnArg::Typed(pt) => match &*pt.pat {
            Pat::Ident(pi) if pi.subpat.is_none() && pi.ident.unraw() == name => Some(&pt.ty),
            _ => None,
        },
        FnArg::Receiver(_) => None,
    });
    let Some(ty) = found else {
        let names: Vec<String> = argument_names(sig)
            .into_iter()
            .filter(|n| n != "self")
            .collect();
        let mut msg = format!("`on = {name}`: this fn has no argument `{name}`");
        let list: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
        match closest(&name, names.iter().map(String::as_str)) {
            Some(best) => msg.push_str(&format!(": did you mean `{best}`?")),
            None if names.is_empty() => msg.push_str(
                "; add the transaction as an argument, e.g. `tx: &mut sqlx::PgTransaction<'_>`",
            ),
            None => msg.push_str(&format!("; its arguments are {}", list.join(", "))),
        }
        errors.add(on.span(), msg);
        return;
    };
    if !matches!(&**ty, Type::Reference(r) if r.mutability.is_some()) {
        errors.push(syn::Error::new_spanned(
            ty,
            format!("`on = {name}` needs `{name}` to be a `&mut` of the transaction (e.g. `{name}: &mut sqlx::PgTransaction<'_>`): the caller keeps the transaction and commits it after the call, which ends the lock"),
        ));
    }
}

/// An `async fn` with a body and a nameable return type.
fn check_fn(f: &LockedFn, errors: &mut Errors) {
    let sig = &f.sig;
    if let Some(c) = &sig.constness {
        errors.add(
            c.span,
            "a `const fn` cannot be #[advisory_locked]: the lock is taken at run time; remove `const` and write `async fn`",
        );
    } else if sig.asyncness.is_none() && sig.abi.is_none() {
        errors.add(
            sig.fn_token.span,
            "#[advisory_locked] needs an `async fn`: taking the lock awaits; write `async fn`",
        );
    }
    if let Some(abi) = &sig.abi {
        errors.push(syn::Error::new_spanned(
            abi,
            "an `extern` fn cannot be #[advisory_locked]: remove the ABI and write a plain `async fn`",
        ));
    }
    if let Some(semi) = &f.semi {
        errors.add(
            semi.span,
            "#[advisory_locked] needs a function body: put it on the method of the `impl` block, not on the trait's declaration (the trait declares the rewritten return type, see the docs)",
        );
    }
    if let ReturnType::Type(_, ty) = &sig.output {
        if let Some(impl_trait) = find_impl_trait(ty) {
            errors.push(syn::Error::new_spanned(
                impl_trait,
                "#[advisory_locked] cannot wrap an `impl Trait` return type: the type must be nameable; name the concrete type, or return a boxed trait object (e.g. `Box<dyn Trait>`)",
            ));
        }
    }
}

/// "the arguments a key template can use are `a`, `b`".
fn available(names: &[String]) -> String {
    if names.is_empty() {
        "this fn has no arguments a key template can use (only arguments bound to a plain name can be used)".to_string()
    } else {
        let list: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
        format!(
            "the arguments a key template can use are {}",
            list.join(", ")
        )
    }
}

/// `self` (if a receiver) and the arguments bound to a plain name.
fn argument_names(sig: &Signature) -> Vec<String> {
    sig.inputs
        .iter()
        .filter_map(|arg| match arg {
            FnArg::Receiver(_) => Some("self".to_string()),
            FnArg::Typed(pt) => match &*pt.pat {
                Pat::Ident(pi) if pi.subpat.is_none() => Some(pi.ident.unraw().to_string()),
                _ => None,
            },
        })
        .collect()
}

/// The first `impl Trait` anywhere in a type.
fn find_impl_trait(ty: &Type) -> Option<&Type> {
    match ty {
        Type::ImplTrait(_) => Some(ty),
        Type::Array(a) => find_impl_trait(&a.elem),
        Type::Group(g) => find_impl_trait(&g.elem),
        Type::Paren(p) => find_impl_trait(&p.elem),
        Type::Ptr(p) => find_impl_trait(&p.elem),
        Type::Reference(r) => find_impl_trait(&r.elem),
        Type::Slice(s) => find_impl_trait(&s.elem),
        Type::Tuple(t) => t.elems.iter().find_map(find_impl_trait),
        Type::Path(p) => {
            if let Some(q) = &p.qself {
                if let Some(found) = find_impl_trait(&q.ty) {
                    return Some(found);
                }
            }
            p.path.segments.iter().find_map(|seg| match &seg.arguments {
                syn::PathArguments::AngleBracketed(a) => a.args.iter().find_map(|arg| match arg {
                    syn::GenericArgument::Type(t) => find_impl_trait(t),
                    syn::GenericArgument::AssocType(a) => find_impl_trait(&a.ty),
                    _ => None,
                }),
                syn::PathArguments::Parenthesized(p) => p
                    .inputs
                    .iter()
                    .find_map(find_impl_trait)
                    .or(match &p.output {
                        ReturnType::Type(_, t) => find_impl_trait(t),
                        ReturnType::Default => None,
                    }),
                syn::PathArguments::None => None,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ast::not_a_fn;
    use proc_macro2::TokenStream;
    use quote::quote;

    fn errors_for(args: TokenStream, item: TokenStream) -> Vec<String> {
        let (args, err) = crate::attr::parse(args);
        assert!(err.is_none());
        let f: LockedFn = syn::parse2(item).unwrap();
        check(&args, &f)
            .map(|e| e.into_iter().map(|e| e.to_string()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn fine() {
        assert!(errors_for(
            quote!(key = "t:{tenant_id}:{self.id}:{p.0}:{r#type}"),
            quote!(
                async fn f(&self, tenant_id: u64, mut p: (u8, u8), r#type: u8) {}
            )
        )
        .is_empty());
    }

    #[test]
    fn not_async_and_friends() {
        let e = errors_for(
            quote!(key = "k"),
            quote!(
                fn f() {}
            ),
        );
        assert!(e[0].starts_with("#[advisory_locked] needs an `async fn`"));
        let e = errors_for(
            quote!(key = "k"),
            quote!(
                const fn f() {}
            ),
        );
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("a `const fn`"));
        let e = errors_for(
            quote!(key = "k"),
            quote!(
                async fn f(&self);
            ),
        );
        assert!(e[0].starts_with("#[advisory_locked] needs a function body"));
        let e = errors_for(
            quote!(key = "k"),
            quote!(
                async fn f() -> Vec<impl Sized> {}
            ),
        );
        assert!(e[0].contains("`impl Trait`"));
    }

    #[test]
    fn template_names() {
        let e = errors_for(
            quote!(key = "{tenant}"),
            quote!(
                async fn f(tenant_id: u64, (a, b): (u8, u8)) {}
            ),
        );
        assert_eq!(
            e,
            ["unknown argument `tenant` in the key template placeholder `{tenant}`: did you mean `tenant_id`? (the arguments a key template can use are `tenant_id`)"]
        );
        let e = errors_for(
            quote!(key = "{self.id}"),
            quote!(
                async fn f() {}
            ),
        );
        assert!(e[0]
            .starts_with("`{self.id}` in the key template needs a method with a `self` receiver"));
    }

    #[test]
    fn transaction_name_must_not_hide_an_argument() {
        let e = errors_for(
            quote!(key = "k", transaction = tx),
            quote!(
                async fn f(tx: u8) {}
            ),
        );
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("`transaction = tx` would hide the argument `tx`"));
        assert!(errors_for(
            quote!(key = "k", transaction = tx),
            quote!(
                async fn f(&self, t: u8) {}
            ),
        )
        .is_empty());
    }

    #[test]
    fn on_names_a_mut_argument() {
        assert!(errors_for(
            quote!(key = "k", on = tx),
            quote!(
                async fn f(id: i64, tx: &mut sqlx::PgTransaction<'_>) {}
            ),
        )
        .is_empty());
        let e = errors_for(
            quote!(key = "k", on = txn),
            quote!(
                async fn f(&self, tx: &mut T, id: i64) {}
            ),
        );
        assert_eq!(
            e,
            ["`on = txn`: this fn has no argument `txn`: did you mean `tx`?"]
        );
        let e = errors_for(
            quote!(key = "k", on = db),
            quote!(
                async fn f(tx: &mut T, id: i64) {}
            ),
        );
        assert_eq!(
            e,
            ["`on = db`: this fn has no argument `db`; its arguments are `tx`, `id`"]
        );
        let e = errors_for(
            quote!(key = "k", on = tx),
            quote!(
                async fn f() {}
            ),
        );
        assert!(
            e[0].ends_with("e.g. `tx: &mut sqlx::PgTransaction<'_>`"),
            "{e:?}"
        );
        let e = errors_for(
            quote!(key = "k", on = tx),
            quote!(
                async fn f(tx: &T) {}
            ),
        );
        assert!(
            e[0].starts_with("`on = tx` needs `tx` to be a `&mut` of the transaction"),
            "{e:?}"
        );
    }

    #[test]
    fn non_fn_items_point_at_their_keyword() {
        let err = not_a_fn(quote!(
            #[derive(Debug)]
            pub struct S;
        ));
        assert!(err
            .to_string()
            .starts_with("#[advisory_locked] can only be applied"));
    }
}
