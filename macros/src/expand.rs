//! Code generation. The expansion holds no behaviour: it computes the key,
//! describes the options as a `Spec` value and hands the body, as a future,
//! to `::advisory_locked::__private::run_skip` / `run_wait`.

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
    let (new_ret, run) = if wait_mode == WaitMode::Skip {
        (
            quote_spanned!(ret_span=>
                ::core::result::Result<::advisory_locked::Outcome<#ret>, ::advisory_locked::Error>
            ),
            quote!(::advisory_locked::__private::run_skip),
        )
    } else {
        (
            quote_spanned!(ret_span=>
                ::core::result::Result<#ret, ::advisory_locked::Error>
            ),
            quote!(::advisory_locked::__private::run_wait),
        )
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
    let key_expr = key_expr(key, &sig);

    let inner_attrs = &body.inner_attrs;
    let stmts = &body.stmts;
    let block = quote! {{
        #(#inner_attrs)*
        let #key_var = #key_expr;
        #run(
            ::advisory_locked::__private::Spec {
                pool: #pool,
                mode: #mode,
                wait: #wait,
                on_lost: #on_lost,
                limit: ::core::option::Option::None,
            },
            #key_var,
            async move {
                #[allow(unreachable_code, clippy::diverging_sub_expression, clippy::needless_return)]
                if let ::core::option::Option::Some(#ret_var) = ::core::option::Option::None::<#ret> {
                    return #ret_var;
                }
                #(#stmts)*
            },
        )
        .await
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
