//! Code generation. The expansion holds no behaviour: it computes the key,
//! describes the options as a `Spec` value and hands the body, as a future,
//! to `::advisory_locked::__private::run_skip` / `run_wait` (with
//! `transaction = tx`: as a closure taking the transaction, to `run_tx_skip`
//! / `run_tx_wait`). It also submits the key's name to the compile-time
//! inventory of key names (`::advisory_locked::names`).

use proc_macro2::{Ident, Span, TokenStream};
use quote::{quote, quote_spanned, ToTokens};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{FnArg, LitStr, Pat, ReturnType, Signature, Type};

use crate::attr::{Args, Key, OnLost, WaitMode};
use crate::check::LockedFn;
use crate::template::{Member, Root};

/// Rewrites a checked fn. `args.key` is set and `f.body` is present.
pub fn expand(args: &Args, f: LockedFn) -> TokenStream {
    let LockedFn {
        attrs,
        vis,
        mut sig,
        body,
        ..
    } = f;
    let body = body.expect("checked: the fn has a body");
    let key = args.key.as_ref().expect("checked: the key is set");

    let local = Span::mixed_site();
    let key_var = Ident::new("__advisory_locked_key", local);
    let ret_var = Ident::new("__advisory_locked_ret", local);

    // The type the body evaluates to, and where to point errors about it.
    let (ret, ret_span): (TokenStream, Span) = match &sig.output {
        ReturnType::Type(_, ty) => (ty.to_token_stream(), ty.span()),
        ReturnType::Default => {
            let span = sig.paren_token.span.close();
            (quote_spanned!(span=> ()), span)
        }
    };

    let wait_mode = args.wait;
    let (new_ret, run) = match (wait_mode == WaitMode::Skip, args.transaction.is_some()) {
        (true, false) => (
            quote_spanned!(ret_span=>
                ::core::result::Result<::advisory_locked::Outcome<#ret>, ::advisory_locked::Error>
            ),
            quote!(::advisory_locked::__private::run_skip),
        ),
        (false, false) => (
            quote_spanned!(ret_span=>
                ::core::result::Result<#ret, ::advisory_locked::Error>
            ),
            quote!(::advisory_locked::__private::run_wait),
        ),
        // Spanned at the return type: an unsatisfied `TransactionResult`
        // bound of the call is reported there, with the assertion below.
        (true, true) => (
            quote_spanned!(ret_span=>
                ::core::result::Result<::advisory_locked::Outcome<#ret>, ::advisory_locked::Error>
            ),
            quote_spanned!(ret_span=> ::advisory_locked::__private::run_tx_skip),
        ),
        (false, true) => (
            quote_spanned!(ret_span=>
                ::core::result::Result<#ret, ::advisory_locked::Error>
            ),
            quote_spanned!(ret_span=> ::advisory_locked::__private::run_tx_wait),
        ),
    };
    let arrow = match &sig.output {
        ReturnType::Type(arrow, _) => *arrow,
        ReturnType::Default => syn::Token![->](ret_span),
    };
    sig.output = ReturnType::Type(arrow, Box::new(Type::Verbatim(new_ret)));

    let pool = args
        .pool
        .clone()
        .unwrap_or_else(|| LitStr::new("default", Span::call_site()));
    let mode = if args.shared {
        quote!(::advisory_locked::Mode::Shared)
    } else {
        quote!(::advisory_locked::Mode::Exclusive)
    };
    let wait = match wait_mode {
        WaitMode::Skip => quote!(::advisory_locked::__private::Wait::Skip),
        WaitMode::Forever => quote!(::advisory_locked::__private::Wait::Forever),
        WaitMode::TimeoutMillis(ms) => quote!(
            ::advisory_locked::__private::Wait::Timeout(::core::time::Duration::from_millis(#ms))
        ),
    };
    let on_lost = match args.on_lost {
        None => quote!(::core::option::Option::None),
        Some(OnLost::Abort) => {
            quote!(::core::option::Option::Some(
                ::advisory_locked::OnLost::Abort
            ))
        }
        Some(OnLost::Continue) => {
            quote!(::core::option::Option::Some(
                ::advisory_locked::OnLost::Continue
            ))
        }
    };
    let limit = match args.limit {
        None => quote!(::core::option::Option::None),
        Some(slots) => {
            let per = match args.per {
                None => quote!(::core::option::Option::None),
                Some(ms) => quote!(::core::option::Option::Some(
                    ::core::time::Duration::from_millis(#ms)
                )),
            };
            quote!(::core::option::Option::Some(
                ::advisory_locked::__private::Limit {
                    slots: #slots,
                    per: #per,
                }
            ))
        }
    };
    let key_expr = key_expr(key, &sig);
    let key_name = key_name(key, &pool, args.shared, &sig);

    let inner_attrs = &body.inner_attrs;
    let stmts = &body.stmts;
    let future = quote! {
        async move {
            #[allow(unreachable_code, clippy::diverging_sub_expression, clippy::needless_return)]
            if let ::core::option::Option::Some(#ret_var) = ::core::option::Option::None::<#ret> {
                return #ret_var;
            }
            #(#stmts)*
        }
    };
    let (assertion, body_arg) = match &args.transaction {
        None => (TokenStream::new(), future),
        Some(tx) => (
            // The body's type must say whether to commit; a wrong type is
            // reported at the return type.
            quote_spanned! {ret_span=>
                let _ = <#ret as ::advisory_locked::TransactionResult>::commits;
            },
            quote!(move |#tx: ::advisory_locked::Transaction| #future),
        ),
    };
    let spec = quote! {
        ::advisory_locked::__private::Spec {
            pool: #pool,
            mode: #mode,
            wait: #wait,
            on_lost: #on_lost,
            limit: #limit,
        }
    };
    // With a transaction, the call is spanned at the return type: that is
    // where a body type without `TransactionResult` is reported.
    let call_span = if args.transaction.is_some() {
        ret_span
    } else {
        Span::call_site()
    };
    let call = quote_spanned! {call_span=>
        #run(
            #spec,
            #key_var,
            #body_arg,
        )
        .await
    };
    let block = quote! {{
        #(#inner_attrs)*
        #key_name
        #assertion
        let #key_var = #key_expr;
        #call
    }};

    quote! {
        #(#attrs)*
        #vis #sig
        #block
    }
}

/// The argument (or `self`) a template placeholder names, as written in the
/// signature: its own span makes it resolve to that argument whatever the
/// hygiene of the key literal (e.g. a key passed into a `macro_rules!`).
fn argument_ident(sig: &Signature, root: &Root, fallback: Span) -> Ident {
    let found = sig.inputs.iter().find_map(|arg| match (arg, root) {
        (FnArg::Receiver(r), Root::SelfValue) => Some(Ident::new("self", r.self_token.span)),
        (FnArg::Typed(pt), Root::Arg(name)) => match &*pt.pat {
            Pat::Ident(pi) if pi.subpat.is_none() && pi.ident.unraw() == name.unraw() => {
                Some(pi.ident.clone())
            }
            _ => None,
        },
        _ => None,
    });
    // Checked before expansion; the fallback only keeps this total.
    found.unwrap_or_else(|| match root {
        Root::SelfValue => Ident::new("self", fallback),
        Root::Arg(name) => {
            let mut name = name.clone();
            name.set_span(fallback);
            name
        }
    })
}

/// The key's entry in the compile-time inventory of key names
/// (`advisory_locked::names`): its name as written, its number unless it is
/// a template, pool, mode, and where the fn is.
fn key_name(key: &Key, pool: &LitStr, shared: bool, sig: &Signature) -> TokenStream {
    let (name, id, kind) = match key {
        Key::Literal { name, .. } => {
            let lit = LitStr::new(name, Span::call_site());
            (
                lit.clone(),
                quote!(::core::option::Option::Some(::advisory_locked::KeyId::Int(
                    ::advisory_locked::key_hash(#lit)
                ))),
                quote!(Name),
            )
        }
        Key::Int { value, .. } => {
            let v = proc_macro2::Literal::i64_suffixed(*value);
            (
                LitStr::new(&value.to_string(), Span::call_site()),
                quote!(::core::option::Option::Some(::advisory_locked::KeyId::Int(#v))),
                quote!(Int),
            )
        }
        Key::Pair { a, b, .. } => {
            let (la, lb) = (
                proc_macro2::Literal::i32_suffixed(*a),
                proc_macro2::Literal::i32_suffixed(*b),
            );
            (
                LitStr::new(&format!("({a}, {b})"), Span::call_site()),
                quote!(::core::option::Option::Some(::advisory_locked::KeyId::Pair(#la, #lb))),
                quote!(Pair),
            )
        }
        Key::Template { lit, .. } => (
            LitStr::new(&lit.value(), Span::call_site()),
            quote!(::core::option::Option::None),
            quote!(Template),
        ),
    };
    let mode = if shared {
        quote!(::advisory_locked::Mode::Shared)
    } else {
        quote!(::advisory_locked::Mode::Exclusive)
    };
    // `file!()` and `line!()` of the fn's name, not of the attribute.
    let at = sig.ident.span();
    let file = quote_spanned!(at=> ::core::file!());
    let line = quote_spanned!(at=> ::core::line!());
    quote! {
        ::advisory_locked::__private::inventory::submit! {
            ::advisory_locked::__private::KeyName {
                name: #name,
                id: #id,
                kind: ::advisory_locked::names::KeyKind::#kind,
                pool: #pool,
                mode: #mode,
                file: #file,
                line: #line,
            }
        }
    }
}

/// The expression building the `LockKey`.
fn key_expr(key: &Key, sig: &Signature) -> TokenStream {
    let id_const = Ident::new("__ADVISORY_LOCKED_ID", Span::mixed_site());
    match key {
        Key::Literal { name, span } => {
            let lit = LitStr::new(name, *span);
            quote! {{
                const #id_const: i64 = ::advisory_locked::key_hash(#lit);
                ::advisory_locked::LockKey::with_id(#lit, ::advisory_locked::KeyId::Int(#id_const))
            }}
        }
        Key::Int { value, span } => {
            let name = LitStr::new(&value.to_string(), *span);
            let value = proc_macro2::Literal::i64_suffixed(*value);
            quote! {
                ::advisory_locked::LockKey::with_id(#name, ::advisory_locked::KeyId::Int(#value))
            }
        }
        Key::Pair { a, b, span } => {
            let name = LitStr::new(&format!("({a}, {b})"), *span);
            let a = proc_macro2::Literal::i32_suffixed(*a);
            let b = proc_macro2::Literal::i32_suffixed(*b);
            quote! {
                ::advisory_locked::LockKey::with_id(#name, ::advisory_locked::KeyId::Pair(#a, #b))
            }
        }
        Key::Template { template, lit } => {
            let span = lit.span();
            let format = LitStr::new(&template.format_string(), span);
            // Each value is borrowed into a local first, so that errors about
            // the value (not `Display`, no such field) point at the key.
            let mut bindings = Vec::new();
            let mut values = Vec::new();
            for (i, ph) in template.placeholders().enumerate() {
                let root = argument_ident(sig, &ph.root, span);
                let members = ph.members.iter().map(|m| match m {
                    Member::Named(ident) => {
                        let mut ident = ident.clone();
                        ident.set_span(span);
                        syn::Member::Named(ident)
                    }
                    Member::Index(index) => syn::Member::Unnamed(syn::Index {
                        index: *index,
                        span,
                    }),
                });
                let var = Ident::new(
                    &format!("__advisory_locked_value_{i}"),
                    Span::mixed_site().located_at(span),
                );
                bindings.push(quote_spanned!(span=> let #var = &#root #(.#members)*;));
                values.push(var);
            }
            quote_spanned! {span=> {
                #(#bindings)*
                ::advisory_locked::LockKey::named(::std::format!(#format #(, #values)*))
            }}
        }
    }
}
