//! `schedule_ticks`: one row per scheduler tick that fired. The primary key (schedule, tick)
//! is the claim: with any number of scheduler instances, the one whose insert wins fires the
//! tick, in the same transaction.

use sea_orm::entity::prelude::*;

/// One fired tick.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "schedule_ticks")]
pub struct Model {
    /// Schedule name.
    #[sea_orm(primary_key, auto_increment = false)]
    pub schedule: String,
    /// The tick's time (the cron occurrence, not when it ran).
    #[sea_orm(primary_key, auto_increment = false)]
    pub tick_at: DateTimeUtc,
    /// Which instance fired it (`host:pid`).
    pub fired_by: String,
    /// When it fired.
    pub fired_at: DateTimeUtc,
}

/// No relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
