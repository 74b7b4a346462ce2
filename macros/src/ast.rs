//! The annotated item, as parsed before any check: an `async fn` with or
//! without a body (the checks are in `valid.rs`).

use proc_macro2::{Span, TokenStream};
use syn::parse::{Parse, ParseStream};
use syn::{braced, Attribute, Signature, Stmt, Token, Visibility};

/// A fn item, with or without a body (a trait method declaration has none).
pub struct LockedFn {
    pub attrs: Vec<Attribute>,
    pub vis: Visibility,
    pub sig: Signature,
    pub body: Option<FnBody>,
    pub semi: Option<Token![;]>,
}

pub struct FnBody {
    pub inner_attrs: Vec<Attribute>,
    pub stmts: Vec<Stmt>,
}

impl Parse for LockedFn {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let vis: Visibility = input.parse()?;
        let sig: Signature = input.parse()?;
        let (body, semi) = if input.peek(Token![;]) {
            (None, Some(input.parse()?))
        } else {
            let content;
            braced!(content in input);
            let inner_attrs = content.call(Attribute::parse_inner)?;
            let stmts = content.call(syn::Block::parse_within)?;
            (Some(FnBody { inner_attrs, stmts }), None)
        };
        Ok(LockedFn {
            attrs,
            vis,
            sig,
            body,
            semi,
        })
    }
}

/// The error for an item that is not a fn: spanned at its first token after
/// attributes and visibility (`struct`, `impl`, `mod`, ...).
pub fn not_a_fn(item: TokenStream) -> syn::Error {
    let span = syn::parse::Parser::parse2(
        |input: ParseStream| {
            input.call(Attribute::parse_outer)?;
            input.parse::<Visibility>()?;
            let span = input.cursor().token_tree().map(|(tt, _)| tt.span());
            input.parse::<TokenStream>()?;
            Ok(span)
        },
        item,
    )
    .ok()
    .flatten()
    .unwrap_or_else(Span::call_site);
    syn::Error::new(
        span,
        "#[advisory_locked] can only be applied to an `async fn`: it takes the lock around the function's body",
    )
}
