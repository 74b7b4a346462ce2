//! [`AdvisoryExecutor`] for tokio-postgres (always) and deadpool-postgres
//! (feature `deadpool-postgres`), whose connections are tokio-postgres ones.
//! Statements go out as unnamed statements (`query_typed`): one round trip,
//! nothing named left on a server session that a transaction-pooling proxy
//! hands to another client.

use tokio_postgres::types::{ToSql, Type};

use super::{AdvisoryExecutor, AdvisoryTransaction, BoxFuture, LockStatement, Param};
use crate::error::QueryError;
use crate::LockKey;

/// The statement's parameters with their types, for `query_typed`.
fn typed(statement: &LockStatement) -> Vec<(&(dyn ToSql + Sync), Type)> {
    statement
        .params()
        .iter()
        .map(|p| match p {
            Param::Int8(v) => (v as &(dyn ToSql + Sync), Type::INT8),
            Param::Int4(v) => (v as &(dyn ToSql + Sync), Type::INT4),
            Param::Text(v) => (v as &(dyn ToSql + Sync), Type::TEXT),
        })
        .collect()
}

/// Runs a statement on a client, for its one boolean.
async fn query_bool(
    client: &tokio_postgres::Client,
    statement: &LockStatement,
) -> Result<bool, QueryError> {
    let row = client
        .query_typed_one(statement.sql(), &typed(statement))
        .await
        .map_err(|e| QueryError::from(&e))?;
    row.try_get(0).map_err(|e| QueryError::from(&e))
}

impl AdvisoryExecutor for tokio_postgres::Client {
    fn query_bool<'a>(
        &'a mut self,
        statement: &'a LockStatement,
    ) -> BoxFuture<'a, Result<bool, QueryError>> {
        Box::pin(query_bool(self, statement))
    }

    /// Unlocks in a spawned task; dropping the client (its connection
    /// closes) when that fails or there is no runtime.
    fn drop_with_lock(self, unlock: LockStatement, key: &LockKey) {
        super::guard::unlock_in_background(self, unlock, key, drop);
    }
}

impl AdvisoryExecutor for tokio_postgres::Transaction<'_> {
    fn query_bool<'a>(
        &'a mut self,
        statement: &'a LockStatement,
    ) -> BoxFuture<'a, Result<bool, QueryError>> {
        Box::pin(query_bool(self.client(), statement))
    }
}

impl AdvisoryTransaction for tokio_postgres::Transaction<'_> {}

#[cfg(feature = "deadpool-postgres")]
mod deadpool {
    use super::*;

    impl AdvisoryExecutor for deadpool_postgres::Object {
        fn query_bool<'a>(
            &'a mut self,
            statement: &'a LockStatement,
        ) -> BoxFuture<'a, Result<bool, QueryError>> {
            Box::pin(query_bool(self, statement))
        }

        /// Unlocks in a spawned task, then the object goes back to its
        /// pool; when that fails or there is no runtime, the connection is
        /// taken out of the pool and closed.
        fn drop_with_lock(self, unlock: LockStatement, key: &LockKey) {
            super::super::guard::unlock_in_background(self, unlock, key, |object| {
                drop(deadpool_postgres::Object::take(object))
            });
        }
    }

    impl AdvisoryExecutor for deadpool_postgres::Transaction<'_> {
        fn query_bool<'a>(
            &'a mut self,
            statement: &'a LockStatement,
        ) -> BoxFuture<'a, Result<bool, QueryError>> {
            Box::pin(query_bool(self.client(), statement))
        }
    }

    impl AdvisoryTransaction for deadpool_postgres::Transaction<'_> {}
}
