//! `inventory`: stock per SKU, owned by the inventory participant.

use sea_orm::entity::prelude::*;

/// Stock of one SKU.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "inventory")]
pub struct Model {
    /// The SKU.
    #[sea_orm(primary_key, auto_increment = false)]
    pub sku: String,
    /// Units in stock (never below zero).
    pub stock: i64,
    /// Last change.
    pub updated_at: DateTimeUtc,
}

/// No relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
