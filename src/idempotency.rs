//! Idempotent publish: the answers remembered in `idempotency_keys`, so a publisher's retry
//! (the same `Idempotency-Key` on the same route, or the same CloudEvent `source` + `id`) is
//! answered the same and has no second effect within the retention window
//! (`http.idempotency_retention_secs`, 24 h by default).
//!
//! A key's answer is recorded after its effect, never before: an effect under a key uses an id
//! derived from the key ([`derived_id`], or `cloudevent_event_id` for a CloudEvent), so a
//! crash, a cancelled request or two requests racing between the effect and the record repeat
//! the same message id at worst, and every inbox drops the repeat. The first answer recorded
//! wins; a request that finds one answers it. Rows older than the window are ignored here and
//! deleted by the `maintenance.cleanup` job ([`purge`]).

use std::time::Duration;

use chrono::Utc;
use entities::idempotency_keys;
use sea_orm::{ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::store::StoreError;

/// The namespace of [`derived_id`]'s UUID v5 ids.
const KEY_ID_NAMESPACE: Uuid = Uuid::from_u128(0x3f2b_8d61_4c7a_4e0f_9a13_6b5e_c2d8_71a9);

/// The id of the message a request under `key` in `scope` publishes: a UUID v5 of both, the
/// same on every retry.
pub(crate) fn derived_id(scope: &str, key: &str) -> Uuid {
    let mut name = Vec::with_capacity(scope.len() + key.len() + 1);
    name.extend_from_slice(scope.as_bytes());
    name.push(0);
    name.extend_from_slice(key.as_bytes());
    Uuid::new_v5(&KEY_ID_NAMESPACE, &name)
}

/// SHA-256 (hex) of a request's parts (each length-prefixed, so parts cannot run together).
pub(crate) fn fingerprint(parts: &[&[u8]]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hex::encode(hash.finalize())
}

/// A remembered answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Answer {
    /// The request's fingerprint ([`fingerprint`]).
    pub fingerprint: String,
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: serde_json::Value,
}

impl From<idempotency_keys::Model> for Answer {
    fn from(row: idempotency_keys::Model) -> Self {
        Self {
            fingerprint: row.fingerprint,
            status: u16::try_from(row.status).unwrap_or(200),
            body: row.answer,
        }
    }
}

/// The answers remembered under keys (cheap to clone).
#[derive(Debug, Clone)]
pub(crate) struct Idempotency {
    db: DatabaseConnection,
    retention: Duration,
}

fn query(doing: &'static str) -> impl FnOnce(sea_orm::DbErr) -> StoreError {
    move |source| StoreError::Query { doing, source }
}

impl Idempotency {
    /// The service over `db`, remembering answers for `retention`.
    pub(crate) fn new(db: DatabaseConnection, retention: Duration) -> Self {
        Self { db, retention }
    }

    fn cutoff(&self) -> chrono::DateTime<Utc> {
        Utc::now() - chrono::Duration::from_std(self.retention).unwrap_or(chrono::Duration::MAX)
    }

    /// The answer remembered under `key` in `scope`, unless it is older than the window.
    pub(crate) async fn find(&self, scope: &str, key: &str) -> Result<Option<Answer>, StoreError> {
        let row = idempotency_keys::Entity::find_by_id((scope.to_owned(), key.to_owned()))
            .filter(idempotency_keys::Column::CreatedAt.gte(self.cutoff()))
            .one(&self.db)
            .await
            .map_err(query("looking up an idempotency key"))?;
        Ok(row.map(Answer::from))
    }

    /// Records `answer` under `key` in `scope`. When another answer got there first (a
    /// request racing this one), that one is returned and stands.
    pub(crate) async fn remember(
        &self,
        scope: &str,
        key: &str,
        answer: &Answer,
    ) -> Result<Option<Answer>, StoreError> {
        // An expired row under the key gives way to the new answer.
        idempotency_keys::Entity::delete_many()
            .filter(idempotency_keys::Column::Scope.eq(scope))
            .filter(idempotency_keys::Column::Key.eq(key))
            .filter(idempotency_keys::Column::CreatedAt.lt(self.cutoff()))
            .exec(&self.db)
            .await
            .map_err(query("replacing an expired idempotency key"))?;
        let row = idempotency_keys::ActiveModel {
            scope: Set(scope.to_owned()),
            key: Set(key.to_owned()),
            fingerprint: Set(answer.fingerprint.clone()),
            status: Set(i16::try_from(answer.status).unwrap_or(200)),
            answer: Set(answer.body.clone()),
            created_at: Set(Utc::now()),
        };
        let inserted = idempotency_keys::Entity::insert(row)
            .on_conflict_do_nothing_on([
                idempotency_keys::Column::Scope,
                idempotency_keys::Column::Key,
            ])
            .exec_without_returning(&self.db)
            .await
            .map_err(query("recording an idempotency key"))?;
        if matches!(inserted, sea_orm::TryInsertResult::Inserted(n) if n > 0) {
            return Ok(None);
        }
        self.find(scope, key).await
    }
}

/// Deletes the answers older than `retention` (the `maintenance.cleanup` job); returns how many.
pub(crate) async fn purge(db: &DatabaseConnection, retention: Duration) -> Result<u64, StoreError> {
    let cutoff =
        Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    idempotency_keys::Entity::delete_many()
        .filter(idempotency_keys::Column::CreatedAt.lt(cutoff))
        .exec(db)
        .await
        .map(|r| r.rows_affected)
        .map_err(query("deleting expired idempotency keys"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_derives_one_id_per_scope() {
        let a = derived_id("token-a /v1/events/{name}", "k-1");
        assert_eq!(a, derived_id("token-a /v1/events/{name}", "k-1"));
        assert_eq!(a.get_version_num(), 5);
        assert_ne!(a, derived_id("token-b /v1/events/{name}", "k-1"));
        assert_ne!(a, derived_id("token-a /v1/jobs/{name}", "k-1"));
        assert_ne!(a, derived_id("token-a /v1/events/{name}", "k-2"));
    }

    #[test]
    fn fingerprints_keep_parts_apart() {
        assert_eq!(fingerprint(&[b"ab", b"c"]), fingerprint(&[b"ab", b"c"]));
        assert_ne!(fingerprint(&[b"ab", b"c"]), fingerprint(&[b"a", b"bc"]));
        assert_eq!(fingerprint(&[b"x"]).len(), 64);
    }
}
