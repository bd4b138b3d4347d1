//! The saga wire contract (SPEC section 6): what a command carries to a participant, what a
//! participant replies, and how a saga is started over the broker.
//!
//! Every message is a warren envelope ([`crate::broker::envelope::Event`]) whose `data` is one
//! of these structs, with `correlation_id` = the saga id.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::machine::Action;

/// Routing key of replies (bound to `warren.saga`).
pub(crate) const REPLY_KEY: &str = "saga";
/// Event name of a reply.
pub(crate) const REPLY_EVENT: &str = "saga.reply";
/// Command that starts a saga through the broker (`warren.commands`, bound to
/// `warren.saga`).
pub(crate) const START_COMMAND: &str = "saga.start";

/// What a command tells a participant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandData {
    /// The saga.
    pub saga_id: Uuid,
    /// Its kind (`order`).
    pub kind: String,
    /// Step index.
    pub step: usize,
    /// Step name (`deduct_inventory`).
    pub step_name: String,
    /// Execute or compensate.
    pub action: Action,
    /// `saga_id:step:action`: the participant applies it at most once.
    pub idempotency_key: String,
    /// The saga's input.
    pub payload: serde_json::Value,
    /// The results of the steps that succeeded with one before this command was sent, by
    /// step name (`{"charge": {"charge_id": "ch_1"}}`); a compensation sees its own step's
    /// result here too. Absent when there is none, so participants written before results
    /// existed read the same command as before.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub results: BTreeMap<String, serde_json::Value>,
}

/// A participant's answer: `{saga_id, step, action, ok, reason, result}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Reply {
    /// The saga.
    pub saga_id: Uuid,
    /// Step index.
    pub step: usize,
    /// Which command it answers.
    pub action: Action,
    /// Whether the command was applied.
    pub ok: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What the participant returned with a success (an execute's result is kept with the
    /// saga and handed to every later command).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

/// `saga.start`: starts a saga of `kind` with `payload`. The message's event id becomes the
/// saga id, so a redelivered start starts nothing twice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct StartData {
    /// Saga kind.
    pub kind: String,
    /// A business key unique per kind (an order number), optional.
    #[serde(default)]
    pub business_key: Option<String>,
    /// The saga's input.
    #[serde(default)]
    pub payload: serde_json::Value,
}
