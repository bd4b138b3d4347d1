//! The order saga: its definition (create order, deduct inventory, deduct balance, notify),
//! its input (`POST /v1/orders`) and that input's validation, and seeding of stock and
//! balances for demos and tests. Its participants are modules (`crate::modules::orders`,
//! `inventory`, `payments`, `order_notification`); the generic machine is `super::machine`.
//!
//! Amounts are integers in the currency's minor unit (cents), so no rounding happens
//! anywhere; `total_amount` must equal the sum of `qty * price`.

use std::{collections::BTreeMap, time::Duration};

use chrono::Utc;
use entities::{accounts, inventory};
use sea_orm::{ConnectionTrait, EntityTrait, Set, sea_query::OnConflict};
use serde::{Deserialize, Deserializer, Serialize};

use super::machine::{DEFAULT_DEADLINE, SagaDef};

impl SagaDef {
    /// The article's order saga: create order, deduct inventory, deduct balance, notify;
    /// every step with the default deadline, and (as in the article) a failed notification
    /// rolls the whole order back.
    pub fn order() -> Self {
        Self::order_with(DEFAULT_DEADLINE, true)
    }

    /// The order saga with every step's `deadline`, and whether a failed notification rolls
    /// the order back (`true`, the article) or is recorded as a warning while the saga
    /// completes (`false`).
    pub fn order_with(deadline: Duration, notify_rolls_back: bool) -> Self {
        let b = Self::builder("order")
            .step("create_order", "order.create")
            .compensate_with("order.cancel")
            .deadline(deadline)
            .step("deduct_inventory", "inventory.deduct")
            .compensate_with("inventory.restore")
            .deadline(deadline)
            .step("deduct_balance", "balance.deduct")
            .compensate_with("balance.refund")
            .deadline(deadline)
            .step("notify", "notification.send")
            .deadline(deadline);
        if notify_rolls_back {
            b.build()
        } else {
            b.no_rollback().build()
        }
    }
}

/// Most items one order may have.
pub const MAX_ITEMS: usize = 100;
/// Longest order number, user id or SKU.
pub const MAX_ID_LEN: usize = 64;

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Item {
    /// The SKU.
    pub sku: String,
    /// Units, at least 1.
    pub qty: i64,
    /// Unit price in minor units, at least 0.
    pub price: i64,
}

/// An order: the order saga's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderRequest {
    /// The order number, unique.
    pub order_no: String,
    /// The buyer (a string, or a number taken as its decimal string).
    #[serde(deserialize_with = "string_or_number")]
    #[schema(schema_with = string_or_integer)]
    pub user_id: String,
    /// The lines.
    pub items: Vec<Item>,
    /// The total in minor units.
    pub total_amount: i64,
}

/// The schema of a field [`string_or_number`] reads.
fn string_or_integer() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Integer]))
        .into()
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        S(String),
        N(u64),
    }
    Ok(match Id::deserialize(d)? {
        Id::S(s) => s,
        Id::N(n) => n.to_string(),
    })
}

fn check_id(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > MAX_ID_LEN {
        return Err(format!("{field} must be 1 to {MAX_ID_LEN} characters"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{field} must not contain control characters"));
    }
    Ok(())
}

impl OrderRequest {
    /// Checks what serde cannot: lengths, positive quantities, and that the total adds up.
    pub fn validate(&self) -> Result<(), String> {
        check_id("order_no", &self.order_no)?;
        check_id("user_id", &self.user_id)?;
        if self.items.is_empty() || self.items.len() > MAX_ITEMS {
            return Err(format!("items must hold 1 to {MAX_ITEMS} lines"));
        }
        let mut sum: i64 = 0;
        for (i, item) in self.items.iter().enumerate() {
            check_id(&format!("items[{i}].sku"), &item.sku)?;
            if item.qty < 1 {
                return Err(format!("items[{i}].qty must be at least 1"));
            }
            if item.price < 0 {
                return Err(format!("items[{i}].price must not be negative"));
            }
            let line = item
                .qty
                .checked_mul(item.price)
                .ok_or_else(|| format!("items[{i}]: qty * price overflows"))?;
            sum = sum
                .checked_add(line)
                .ok_or_else(|| "the total overflows".to_owned())?;
        }
        if self.total_amount != sum {
            return Err(format!(
                "total_amount is {} but the items add up to {sum} (amounts are in minor units, e.g. cents)",
                self.total_amount
            ));
        }
        Ok(())
    }
}

/// Stock per SKU and balance per user to set (`POST /v1/admin/seed`, `warren seed`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    /// SKU -> units in stock.
    #[serde(default)]
    pub inventory: BTreeMap<String, i64>,
    /// User -> balance in minor units.
    #[serde(default)]
    pub accounts: BTreeMap<String, i64>,
}

impl Seed {
    /// Checks ids and that no value is negative.
    pub fn validate(&self) -> Result<(), String> {
        for (sku, n) in &self.inventory {
            check_id("inventory SKU", sku)?;
            if *n < 0 {
                return Err(format!("stock of {sku} must not be negative"));
            }
        }
        for (user, n) in &self.accounts {
            check_id("accounts user", user)?;
            if *n < 0 {
                return Err(format!("balance of {user} must not be negative"));
            }
        }
        Ok(())
    }

    /// Sets the stock and balances (insert or overwrite).
    pub async fn apply<C: ConnectionTrait>(&self, db: &C) -> Result<(), sea_orm::DbErr> {
        let now = Utc::now();
        for (sku, stock) in &self.inventory {
            inventory::Entity::insert(inventory::ActiveModel {
                sku: Set(sku.clone()),
                stock: Set(*stock),
                updated_at: Set(now),
            })
            .on_conflict(
                OnConflict::column(inventory::Column::Sku)
                    .update_columns([inventory::Column::Stock, inventory::Column::UpdatedAt])
                    .to_owned(),
            )
            .exec_without_returning(db)
            .await?;
        }
        for (user, balance) in &self.accounts {
            accounts::Entity::insert(accounts::ActiveModel {
                user_id: Set(user.clone()),
                balance: Set(*balance),
                updated_at: Set(now),
            })
            .on_conflict(
                OnConflict::column(accounts::Column::UserId)
                    .update_columns([accounts::Column::Balance, accounts::Column::UpdatedAt])
                    .to_owned(),
            )
            .exec_without_returning(db)
            .await?;
        }
        Ok(())
    }

    /// A demo catalogue: three SKUs and three users.
    pub fn demo() -> Self {
        Self {
            inventory: [("SKU-1", 100), ("SKU-2", 50), ("SKU-3", 5)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            accounts: [("u-1", 100_000), ("u-2", 5_000), ("u-3", 0)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(total: i64) -> serde_json::Value {
        serde_json::json!({
            "order_no": "A-1", "user_id": 7,
            "items": [{"sku": "S", "qty": 2, "price": 150}, {"sku": "T", "qty": 1, "price": 100}],
            "total_amount": total,
        })
    }

    #[test]
    fn a_well_formed_order_passes_and_numeric_user_ids_become_strings() {
        let o: OrderRequest = serde_json::from_value(order(400)).expect("parses");
        assert_eq!(o.user_id, "7");
        assert_eq!(o.validate(), Ok(()));
    }

    #[test]
    fn a_total_that_does_not_add_up_is_refused_with_the_sum() {
        let o: OrderRequest = serde_json::from_value(order(399)).expect("parses");
        let e = o.validate().expect_err("refused");
        assert!(e.contains("add up to 400"), "{e}");
    }

    #[test]
    fn zero_quantities_empty_orders_and_unknown_fields_are_refused() {
        let mut o: OrderRequest = serde_json::from_value(order(400)).expect("parses");
        o.items[0].qty = 0;
        assert!(o.validate().is_err());
        o.items.clear();
        assert!(o.validate().is_err());
        let mut v = order(400);
        v["coupon"] = serde_json::json!("X");
        assert!(serde_json::from_value::<OrderRequest>(v).is_err());
    }
}
