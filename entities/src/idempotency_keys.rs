//! `idempotency_keys`: the answer given to a request under an `Idempotency-Key` (scoped to the
//! caller and the route) or to a CloudEvent (scoped to its `source` + `id`), so a retry within
//! the retention window gets the same answer and causes nothing more.

use sea_orm::entity::prelude::*;

/// One remembered answer.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "idempotency_keys")]
pub struct Model {
    /// Whose key it is and where: `caller` + route for `Idempotency-Key`, `cloudevent` for a
    /// CloudEvent's identity.
    #[sea_orm(primary_key, auto_increment = false)]
    pub scope: String,
    /// The `Idempotency-Key`, or the CloudEvent's `source` and `id`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub key: String,
    /// SHA-256 (hex) of the request the key was first used with.
    pub fingerprint: String,
    /// The answer's HTTP status.
    pub status: i16,
    /// The answer's JSON body.
    pub answer: Json,
    /// When the first answer was given; the row expires a retention window later.
    pub created_at: DateTimeUtc,
}

/// No relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
