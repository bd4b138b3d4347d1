//! `orders`: the orders participant's table (created by `order.create`, cancelled by
//! `order.cancel`).

use sea_orm::entity::prelude::*;

/// One order.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "orders")]
pub struct Model {
    /// Row id (UUID v7).
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The order number, unique.
    #[sea_orm(unique)]
    pub order_no: String,
    /// The saga that created it.
    pub saga_id: Uuid,
    /// The buyer.
    pub user_id: String,
    /// `[{sku, qty, price}]`.
    pub items: Json,
    /// Total in minor currency units (cents).
    pub total_amount: i64,
    /// `created` or `cancelled`.
    pub status: String,
    /// When it was created.
    pub created_at: DateTimeUtc,
    /// Last change.
    pub updated_at: DateTimeUtc,
}

/// No relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
