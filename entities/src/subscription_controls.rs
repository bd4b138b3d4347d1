//! `subscription_controls`: an operator's pause of an HTTP subscription (and the resume that
//! ended it), one row per subscription that was ever paused. Workers read it every second; a
//! paused subscription takes no deliveries.

use sea_orm::entity::prelude::*;

/// The last pause or resume of one subscription.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "subscription_controls")]
pub struct Model {
    /// The subscription's name (settings).
    #[sea_orm(primary_key, auto_increment = false)]
    pub subscription: String,
    /// Whether it is paused.
    pub paused: bool,
    /// Why, as the operator said when pausing.
    #[sea_orm(column_type = "Text", nullable)]
    pub reason: Option<String>,
    /// Who paused or resumed it (the audit log's actor).
    pub changed_by: String,
    /// When.
    pub changed_at: DateTimeUtc,
}

/// No relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
