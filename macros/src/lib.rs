//! The `#[advisory_locked]` attribute. Use it through the `advisory-locked`
//! crate, which re-exports it: `use advisory_locked::advisory_locked;`.
//!
//! This crate only parses, checks and rewrites; everything the expansion does
//! at run time lives in `advisory_locked::__private`.

#![forbid(unsafe_code)]

mod ast;
mod attr;
mod diag;
mod duration;
mod expand;
mod template;
mod valid;

use proc_macro::TokenStream;

/// Runs an `async fn`'s body while holding a PostgreSQL advisory lock.
///
/// ```rust,ignore
/// use advisory_locked::{advisory_locked, Outcome};
///
/// // Skip mode (the default): if another holder has the lock, the body does
/// // not run and the call returns `Ok(Outcome::Skipped)`.
/// #[advisory_locked(key = "report:daily")]
/// async fn daily_report() -> anyhow::Result<()> { /* ... */ }
/// // daily_report(): Result<Outcome<anyhow::Result<()>>, advisory_locked::Error>
///
/// // Wait mode: wait (here at most 30 s) for the lock, then run the body.
/// #[advisory_locked(key = "tenant:{tenant_id}", wait = "30s")]
/// async fn rebuild(tenant_id: u64) -> Result<(), MyError> { /* ... */ }
/// // rebuild(7): Result<Result<(), MyError>, advisory_locked::Error>
/// ```
///
/// # Options
///
/// Comma separated, in any order, trailing comma allowed:
///
/// | option | meaning |
/// |---|---|
/// | `key = "name"` | required. A string is hashed at compile time exactly as PostgreSQL's `hashtextextended(name, 0)`. It cannot contain NUL (`\0`): PostgreSQL text cannot hold it, so no text hashes to such a key's number. |
/// | `key = "tenant:{tenant_id}"` | a template, formatted at run time with `Display` and hashed. Placeholders name an argument bound to a plain name, or `self`, optionally followed by fields or tuple indexes: `{self.id}`, `{job.tenant.id}`, `{pair.0}`. `{{` and `}}` are literal braces. No format specs, no `{}` or `{0}`. |
/// | `key = 42`, `key = -5` | a raw 64-bit key (`pg_advisory_lock(bigint)`). |
/// | `key = (7, 42)` | a key in the two-int4 key space (`pg_advisory_lock(int, int)`). |
/// | `skip` | the default: when the lock is busy, do not run the body. |
/// | `wait` | wait for the lock without a limit. |
/// | `wait = "30s"` | wait at most this long, then fail with `Error::WaitTimeout`. Units `ms`, `s`, `m`, `h`; decimals and sums allowed (`"1.5s"`, `"1m30s"`); whole milliseconds, more than zero, at most 365 days. |
/// | `shared` | take the lock in shared mode (many shared holders, no exclusive one). |
/// | `exclusive` | the default mode, may be written explicitly. |
/// | `pool = "name"` | the configured lock registry to use; `"default"` if left out. |
/// | `on_lost = "abort"`, `on_lost = "continue"` | when the lock is lost while the body runs: stop the body, or let it finish; the registry entry's policy (`LockConfig::on_lost`) if left out. |
/// | `limit = N` | at most `N` (1..=1024) bodies at once across the fleet instead of one. |
/// | `per = "1m"` | with `limit`: each slot is held at least this long from the body's start, so at most `N` starts per period. |
/// | `transaction = tx` | run the body in a transaction under a transaction-level lock; the body names it `tx` (`advisory_locked::Transaction`) and must return `Result<T, E>` (commit on `Ok`) or `()` (commit). Not with `limit`, `per` or `on_lost`. |
/// | `on = tx` | take a transaction-level lock in the caller's own transaction, the fn's argument `tx` (a `&mut` of `sqlx::PgTransaction<'_>`, `tokio_postgres::Transaction<'_>` or `deadpool_postgres::Transaction<'_>`: any `advisory_locked::external::AdvisoryTransaction`), before the body runs. The lock ends when the caller commits or rolls back that transaction, together with its writes: not when the fn returns. Unlike `transaction = tx` (the crate opens a transaction of its own on its own connection), nothing is configured and no registry entry is used. Not with `transaction`, `pool`, `limit`, `per` or `on_lost`. |
/// | `crate = "path"` | the path the generated code names the `advisory-locked` crate by, instead of `::advisory_locked`: for a renamed dependency (`crate = "my_alias"`) or a re-export (`crate = "crate::reexported"`, where `mod reexported { pub use ::advisory_locked::*; }`). The path must name the crate's root, or a module re-exporting all of it (a glob `pub use` does, including the hidden `__private` module the expansion uses). |
///
/// With a renamed dependency (`al = { package = "advisory-locked", … }` in
/// `Cargo.toml`), tell the attribute where the crate is:
///
/// ```rust,ignore
/// use al::advisory_locked;
///
/// #[advisory_locked(key = "report:daily", crate = "al")]
/// async fn daily_report() { /* ... */ }
/// ```
///
/// Every annotated fn also lists its key in `advisory_locked::names` (for
/// `advisory_locked::status` and the collision check at `LockConfig::install`).
///
/// # What the function becomes
///
/// The signature is kept (attributes, docs, visibility, generics, arguments,
/// where clause) except the return type `T` (`()` if none is written):
///
/// - skip mode: `Result<advisory_locked::Outcome<T>, advisory_locked::Error>`;
/// - wait mode: `Result<T, advisory_locked::Error>`.
///
/// `return` and `?` in the body keep their meaning: they return `T` from the
/// body. The key is computed from the arguments before the body runs.
///
/// Methods (`&self`, `&mut self`, `self`, `self: Arc<Self>`), generic fns
/// and async fns of trait impls work; in a trait impl, the trait must declare
/// the rewritten return type. The fn must be an `async fn` with a body,
/// and its return type cannot contain `impl Trait`.
#[proc_macro_attribute]
pub fn advisory_locked(args: TokenStream, item: TokenStream) -> TokenStream {
    expand_or_item(args.into(), item.into()).into()
}

/// The rewritten fn; on errors, the item unchanged next to the errors, so
/// that the rest of the crate (and IDEs) still see the fn and report
/// nothing else about it (as tokio's attributes do).
fn expand_or_item(
    args: proc_macro2::TokenStream,
    item: proc_macro2::TokenStream,
) -> proc_macro2::TokenStream {
    match advisory_locked_impl(args, item.clone()) {
        Ok(tokens) => tokens,
        Err(err) => {
            let mut out = item;
            out.extend(err.into_compile_error());
            out
        }
    }
}

/// The steps: the options (`attr`), the item (`ast`), the checks of both
/// (`valid`), the code (`expand`).
fn advisory_locked_impl(
    args: proc_macro2::TokenStream,
    item: proc_macro2::TokenStream,
) -> syn::Result<proc_macro2::TokenStream> {
    let (args, arg_errors) = attr::parse(args);
    let f: ast::LockedFn = match syn::parse2(item.clone()) {
        Ok(f) => f,
        Err(_) => {
            let not_a_fn = ast::not_a_fn(item);
            return Err(match arg_errors {
                Some(mut errors) => {
                    errors.combine(not_a_fn);
                    errors
                }
                None => not_a_fn,
            });
        }
    };
    let (options, f) = valid::validate(args, arg_errors, f)?;
    Ok(expand::expand(&options, f))
}

#[cfg(test)]
mod tests {
    use quote::quote;

    fn expand(args: proc_macro2::TokenStream, item: proc_macro2::TokenStream) -> String {
        super::advisory_locked_impl(args, item)
            .unwrap_or_else(|e| panic!("{e}"))
            .to_string()
    }

    #[test]
    fn skip_mode_expansion() {
        let got = expand(
            quote!(key = "report:daily"),
            quote! {
                /// docs
                #[other_attr]
                pub async fn f<T: X>(&self, tenant_id: u64, mut n: T) -> R where T: Y { body(); tail }
            },
        );
        let want = quote! {
            /// docs
            #[other_attr]
            pub async fn f<T: X>(&self, tenant_id: u64, mut n: T)
                -> ::core::result::Result<::advisory_locked::Outcome<R>, ::advisory_locked::Error>
            where T: Y
            {
                ::advisory_locked::__private::inventory::submit! {
                    ::advisory_locked::__private::KeyName {
                        name: "report:daily",
                        id: ::core::option::Option::Some(::advisory_locked::KeyId::Int(
                            ::advisory_locked::key_hash("report:daily")
                        )),
                        kind: ::advisory_locked::names::KeyKind::Name,
                        pool: "default",
                        mode: ::advisory_locked::Mode::Exclusive,
                        file: ::core::file!(),
                        line: ::core::line!(),
                    }
                }
                let __advisory_locked_key = {
                    const __ADVISORY_LOCKED_ID: i64 = ::advisory_locked::key_hash("report:daily");
                    ::advisory_locked::LockKey::with_id("report:daily", ::advisory_locked::KeyId::Int(__ADVISORY_LOCKED_ID))
                };
                ::advisory_locked::__private::run_skip(
                    ::advisory_locked::__private::Spec {
                        pool: "default",
                        mode: ::advisory_locked::Mode::Exclusive,
                        on_lost: ::core::option::Option::None,
                        limit: ::core::option::Option::None,
                    },
                    __advisory_locked_key,
                    async move {
                        #[allow(unreachable_code, clippy::diverging_sub_expression, clippy::needless_return)]
                        if let ::core::option::Option::Some(__advisory_locked_ret) = ::core::option::Option::None::<R> {
                            return __advisory_locked_ret;
                        }
                        body();
                        tail
                    },
                )
                .await
            }
        };
        assert_eq!(got, want.to_string());
    }

    #[test]
    fn wait_mode_template_expansion() {
        let got = expand(
            quote!(
                key = "t:{{{tenant_id}}}:{self.id}:{p.0}",
                wait = "1m30s",
                shared,
                pool = "jobs",
                on_lost = "continue"
            ),
            quote!(
                async fn g(&self, tenant_id: u64, p: (u8, u8)) {}
            ),
        );
        let want = quote! {
            async fn g(&self, tenant_id: u64, p: (u8, u8))
                -> ::core::result::Result<(), ::advisory_locked::Error>
            {
                ::advisory_locked::__private::inventory::submit! {
                    ::advisory_locked::__private::KeyName {
                        name: "t:{{{tenant_id}}}:{self.id}:{p.0}",
                        id: ::core::option::Option::None,
                        kind: ::advisory_locked::names::KeyKind::Template,
                        pool: "jobs",
                        mode: ::advisory_locked::Mode::Shared,
                        file: ::core::file!(),
                        line: ::core::line!(),
                    }
                }
                let __advisory_locked_key = {
                    let __advisory_locked_value_0 = &tenant_id;
                    let __advisory_locked_value_1 = &self.id;
                    let __advisory_locked_value_2 = &p.0;
                    ::advisory_locked::__private::template_key(::core::format_args!(
                        "t:{{{}}}:{}:{}",
                        __advisory_locked_value_0,
                        __advisory_locked_value_1,
                        __advisory_locked_value_2
                    ))
                };
                ::advisory_locked::__private::run_wait(
                    ::advisory_locked::__private::Spec {
                        pool: "jobs",
                        mode: ::advisory_locked::Mode::Shared,
                        on_lost: ::core::option::Option::Some(::advisory_locked::OnLost::Continue),
                        limit: ::core::option::Option::None,
                    },
                    ::advisory_locked::__private::Wait::Timeout(::core::time::Duration::from_millis(90000u64)),
                    __advisory_locked_key,
                    async move {
                        #[allow(unreachable_code, clippy::diverging_sub_expression, clippy::needless_return)]
                        if let ::core::option::Option::Some(__advisory_locked_ret) = ::core::option::Option::None::<()> {
                            return __advisory_locked_ret;
                        }
                    },
                )
                .await
            }
        };
        assert_eq!(got, want.to_string());
    }

    #[test]
    fn integer_keys_and_wait_forever() {
        let got = expand(
            quote!(key = -5, wait),
            quote!(
                async fn h() {}
            ),
        );
        assert!(
            got.contains(
                &quote!(::advisory_locked::LockKey::with_id(
                    "-5",
                    ::advisory_locked::KeyId::Int(-5i64)
                ))
                .to_string()
            ),
            "{got}"
        );
        assert!(got.contains(&quote!(::advisory_locked::__private::Wait::Forever).to_string()));

        let got = expand(
            quote!(key = (7, -42)),
            quote!(
                async fn h() {}
            ),
        );
        assert!(
            got.contains(
                &quote!(::advisory_locked::LockKey::with_id(
                    "(7, -42)",
                    ::advisory_locked::KeyId::Pair(7i32, -42i32)
                ))
                .to_string()
            ),
            "{got}"
        );
    }

    #[test]
    fn limit_and_per_expansion() {
        let got = expand(
            quote!(key = "k", limit = 3, per = "1m"),
            quote!(
                async fn h() {}
            ),
        );
        let want = quote!(
            limit: ::core::option::Option::Some(::advisory_locked::__private::Limit {
                slots: 3u32,
                per: ::core::option::Option::Some(::core::time::Duration::from_millis(60000u64)),
            })
        );
        assert!(got.contains(&want.to_string()), "{got}");
        assert!(got.contains("run_skip"), "{got}");

        let got = expand(
            quote!(key = "k", limit = 1024, wait),
            quote!(
                async fn h() {}
            ),
        );
        let want = quote!(
            limit: ::core::option::Option::Some(::advisory_locked::__private::Limit {
                slots: 1024u32,
                per: ::core::option::Option::None,
            })
        );
        assert!(got.contains(&want.to_string()), "{got}");
        assert!(got.contains("run_wait"), "{got}");
    }

    #[test]
    fn transaction_expansion() {
        let got = expand(
            quote!(key = 42, transaction = tx),
            quote!(
                async fn t(n: u32) -> Result<u32, E> {
                    work(&tx, n).await
                }
            ),
        );
        let want = quote! {
            async fn t(n: u32)
                -> ::core::result::Result<::advisory_locked::Outcome<Result<u32, E> >, ::advisory_locked::Error>
            {
                ::advisory_locked::__private::inventory::submit! {
                    ::advisory_locked::__private::KeyName {
                        name: "42",
                        id: ::core::option::Option::Some(::advisory_locked::KeyId::Int(42i64)),
                        kind: ::advisory_locked::names::KeyKind::Int,
                        pool: "default",
                        mode: ::advisory_locked::Mode::Exclusive,
                        file: ::core::file!(),
                        line: ::core::line!(),
                    }
                }
                let _ = <Result<u32, E> as ::advisory_locked::TransactionResult>::commits;
                let __advisory_locked_key =
                    ::advisory_locked::LockKey::with_id("42", ::advisory_locked::KeyId::Int(42i64));
                ::advisory_locked::__private::run_tx_skip(
                    ::advisory_locked::__private::Spec {
                        pool: "default",
                        mode: ::advisory_locked::Mode::Exclusive,
                        on_lost: ::core::option::Option::None,
                        limit: ::core::option::Option::None,
                    },
                    __advisory_locked_key,
                    move |tx: ::advisory_locked::Transaction| async move {
                        #[allow(unreachable_code, clippy::diverging_sub_expression, clippy::needless_return)]
                        if let ::core::option::Option::Some(__advisory_locked_ret) = ::core::option::Option::None::<Result<u32, E> > {
                            return __advisory_locked_ret;
                        }
                        work(&tx, n).await
                    },
                )
                .await
            }
        };
        assert_eq!(got, want.to_string());

        let got = expand(
            quote!(key = (1, 2), transaction = conn, wait = "5s", shared),
            quote!(
                async fn t() {}
            ),
        );
        assert!(
            got.contains(":: advisory_locked :: __private :: run_tx_wait ("),
            "{got}"
        );
        assert!(
            got.contains(&quote!(move |conn: ::advisory_locked::Transaction|).to_string()),
            "{got}"
        );
        assert!(
            got.contains(
                &quote!(let _ = <() as ::advisory_locked::TransactionResult>::commits;).to_string()
            ),
            "{got}"
        );
        assert!(
            got.contains(
                &quote!(-> ::core::result::Result<(), ::advisory_locked::Error>).to_string()
            ),
            "{got}"
        );
        assert!(
            got.contains(&quote!(kind: ::advisory_locked::names::KeyKind::Pair,).to_string()),
            "{got}"
        );
    }

    #[test]
    fn on_expansion() {
        let got = expand(
            quote!(key = "invoice:{id}", on = tx),
            quote!(
                async fn f(tx: &mut Tx<'_>, id: i64) -> u8 {
                    work(tx, id).await
                }
            ),
        );
        let want = quote! {
            ::advisory_locked::__private::run_on_skip(
                ::advisory_locked::__private::on_try(tx, ::advisory_locked::Mode::Exclusive, __advisory_locked_key).await,
                async move {
                    #[allow(unreachable_code, clippy::diverging_sub_expression, clippy::needless_return)]
                    if let ::core::option::Option::Some(__advisory_locked_ret) = ::core::option::Option::None::<u8> {
                        return __advisory_locked_ret;
                    }
                    work(tx, id).await
                },
            )
            .await
        };
        assert!(got.contains(&want.to_string()), "{got}");
        assert!(
            got.contains(
                &quote!(-> ::core::result::Result<::advisory_locked::Outcome<u8>, ::advisory_locked::Error>)
                    .to_string()
            ),
            "{got}"
        );
        assert!(!got.contains("Spec"), "{got}");

        let got = expand(
            quote!(key = 7, on = r#conn, wait = "5s", shared),
            quote!(
                async fn g(r#conn: &mut C) {}
            ),
        );
        let want = quote!(
            ::advisory_locked::__private::on_wait(
                r#conn,
                ::advisory_locked::Mode::Shared,
                ::advisory_locked::__private::Wait::Timeout(::core::time::Duration::from_millis(
                    5000u64
                )),
                __advisory_locked_key
            )
            .await
        );
        assert!(got.contains(&want.to_string()), "{got}");
    }

    #[test]
    fn crate_path_names_the_runtime_everywhere() {
        let got = expand(
            quote!(key = "k:{id}", wait, crate = "my_alias"),
            quote!(
                async fn f(id: u8) {}
            ),
        );
        assert!(!got.contains(":: advisory_locked"), "{got}");
        for want in [
            quote!(my_alias::__private::run_wait),
            quote!(my_alias::__private::inventory::submit!),
            quote!(my_alias::__private::template_key),
            quote!(::core::result::Result<(), my_alias::Error>),
        ] {
            assert!(got.contains(&want.to_string()), "{want}: {got}");
        }
        let got = expand(
            quote!(key = 1, transaction = tx, crate = "crate::re"),
            quote!(
                async fn f() {}
            ),
        );
        assert!(!got.contains(":: advisory_locked"), "{got}");
        assert!(
            got.contains(&quote!(move |tx: crate::re::Transaction|).to_string()),
            "{got}"
        );
        assert!(
            got.contains(&quote!(<() as crate::re::TransactionResult>::commits).to_string()),
            "{got}"
        );
    }

    #[test]
    fn errors_come_with_the_item_unchanged() {
        let item = quote!(
            pub async fn f(id: u8) -> u8 {
                id
            }
        );
        let got = super::expand_or_item(quote!(key = "k", wiat), item.clone()).to_string();
        assert!(got.starts_with(&item.to_string()), "{got}");
        assert!(got.contains("compile_error"), "{got}");
        assert!(got.contains("unknown option `wiat`"), "{got}");
        let got = super::expand_or_item(
            quote!(key = "k"),
            quote!(
                struct S;
            ),
        )
        .to_string();
        assert!(
            got.starts_with(
                &quote!(
                    struct S;
                )
                .to_string()
            ),
            "{got}"
        );
        assert!(
            got.contains("can only be applied to an `async fn`"),
            "{got}"
        );
    }

    #[test]
    fn all_errors_are_returned() {
        let err = super::advisory_locked_impl(
            quote!(key = "k", wiat),
            quote!(
                fn f() {}
            ),
        )
        .unwrap_err();
        assert_eq!(err.into_iter().count(), 2);
    }
}
