//! HTTP saga participants (issue 19): a subscription whose `commands` patterns match a saga
//! step's command (or compensation) is that step's participant. Its consumer recognises a
//! saga command ([`SagaReplies::command`]: the data is a saga command whose idempotency key is
//! its `saga_id:step:action`), sends it with the saga's headers ([`headers`]) and turns the
//! answer into the saga's reply, through the reply path the Rust participants use
//! (`saga::participants`: `saga_commands`, `warren.replies`):
//!
//! | answer | reply | message |
//! |---|---|---|
//! | 2xx | `ok`, the JSON body as the step's result ([`result_of`]) | ack |
//! | 409, 422 | refused, the body's `reason` (or its text) | ack; the saga compensates |
//! | anything else | none yet: the subscription's retries (tiers, breaker) | |
//! | the last attempt spent, or a refusal that parks (404) | refused, the runner's reason | parked |
//!
//! Exactly one outcome per command: the answer is recorded under the idempotency key
//! (`saga_commands`, with the result) before the reply is published, and the reply is
//! confirmed before the ack. A worker that dies after the HTTP answer and before the record
//! leaves the message to a redelivery, which asks the participant again with the same
//! `Idempotency-Key` (the participant answers what it answered); one that dies after the
//! record finds it on the redelivery and replies it again without an HTTP call. The
//! orchestrator drops a repeated reply. A refused compensation is not recorded (as for the
//! Rust participants), so an operator's retry asks the participant again.

use sea_orm::DatabaseConnection;

use crate::{
    broker::{names::COMMANDS_EXCHANGE, publisher::Publisher},
    jobs::{Job, JobError},
    saga::{
        Action,
        participants::{self, Answer},
        protocol::CommandData,
    },
};

/// Header: the saga's idempotency key for this step and action (`saga_id:step:action`), the
/// same on every attempt and redelivery.
pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Header: the saga id.
pub(crate) const WARREN_SAGA_ID: &str = "warren-saga-id";
/// Header: the saga's kind (`trip`).
pub(crate) const WARREN_SAGA_KIND: &str = "warren-saga-kind";
/// Header: the step's name (`charge`).
pub(crate) const WARREN_SAGA_STEP: &str = "warren-saga-step";
/// Header: `execute` or `compensate`.
pub(crate) const WARREN_SAGA_ACTION: &str = "warren-saga-action";

/// What a subscription needs to answer for saga steps: the database (`saga_commands`) and
/// the confirming publisher (`warren.replies`).
#[derive(Debug, Clone)]
pub(crate) struct SagaReplies {
    db: DatabaseConnection,
    publisher: Publisher,
    /// The job module's name (`sub.<name>`), recorded as the participant.
    participant: String,
}

impl SagaReplies {
    /// Replies for the subscription whose module is `participant`.
    pub(crate) fn new(db: DatabaseConnection, publisher: Publisher, participant: String) -> Self {
        Self {
            db,
            publisher,
            participant,
        }
    }

    /// The saga command `job` carries, when it is one: a message from `warren.commands` (or
    /// published straight to the queue) whose data is a saga command with its own idempotency
    /// key.
    pub(crate) fn command(&self, job: &Job) -> Option<CommandData> {
        if !job.exchange.is_empty() && job.exchange != COMMANDS_EXCHANGE {
            return None;
        }
        let cmd: CommandData = serde_json::from_value(job.event.data.clone()).ok()?;
        participants::check_key(&cmd).is_ok().then_some(cmd)
    }

    /// The answer already recorded for `cmd` (a redelivery after the record): replied again
    /// without asking the participant.
    pub(crate) async fn recorded(&self, cmd: &CommandData) -> Result<Option<Answer>, JobError> {
        participants::recorded(&self.db, cmd).await
    }

    /// Records `answer` (a refused compensation excepted) and replies it, confirmed. When a
    /// concurrent delivery recorded first, its answer is the one replied.
    pub(crate) async fn settle(
        &self,
        job: &Job,
        cmd: &CommandData,
        answer: Answer,
    ) -> Result<(), JobError> {
        let mut answer = answer;
        if (answer.ok || cmd.action == Action::Execute)
            && let Err(e) = participants::record(&self.db, &self.participant, cmd, &answer).await
        {
            match self.recorded(cmd).await? {
                Some(first) => answer = first,
                None => return Err(e),
            }
        }
        tracing::info!(key = %cmd.idempotency_key, ok = answer.ok, reason = ?answer.reason,
            "Saga step answered over HTTP.");
        self.reply(job, cmd, answer).await
    }

    /// Replies `answer` to `cmd`.
    pub(crate) async fn reply(
        &self,
        job: &Job,
        cmd: &CommandData,
        answer: Answer,
    ) -> Result<(), JobError> {
        participants::send_reply(&self.publisher, job, cmd, answer).await
    }

    /// The runner parked the command (`error`): the step fails with the reason, as a Rust
    /// participant's give-up reply says it.
    pub(crate) async fn give_up(&self, job: &Job, cmd: &CommandData, error: &str) {
        let reason = format!(
            "{} gave up on {} after {} attempt(s): {error}",
            self.participant, job.routing_key, job.attempt
        );
        participants::give_up(
            &self.db,
            &self.publisher,
            &self.participant,
            job,
            cmd,
            reason,
        )
        .await;
    }
}

/// The saga's headers on a command's request: `Idempotency-Key`, `warren-saga-id`,
/// `warren-saga-kind`, `warren-saga-step` (the step's name) and `warren-saga-action`.
pub(crate) fn headers(cmd: &CommandData) -> Vec<(&'static str, String)> {
    vec![
        (IDEMPOTENCY_KEY, cmd.idempotency_key.clone()),
        (WARREN_SAGA_ID, cmd.saga_id.to_string()),
        (WARREN_SAGA_KIND, cmd.kind.clone()),
        (WARREN_SAGA_STEP, cmd.step_name.clone()),
        (
            WARREN_SAGA_ACTION,
            match cmd.action {
                Action::Execute => "execute",
                Action::Compensate => "compensate",
            }
            .to_owned(),
        ),
    ]
}

/// What an HTTP answer (`status`, the first `body` bytes, `text`: the outcome's sentence)
/// means for a saga step: a 2xx is done, a 409 or 422 a refusal, anything else no answer yet
/// (`None`: the subscription's retries decide).
pub(crate) fn answer(status: Option<u16>, body: &[u8], text: &str) -> Option<Answer> {
    match status? {
        200..=299 => Some(Answer::done(result_of(body))),
        409 | 422 => Some(Answer::refused(reason_of(body, text))),
        _ => None,
    }
}

/// A success's result: its body as JSON; none when the body is empty or `null`; a body that
/// is not JSON (or was cut at `max_response_bytes`) is kept as a JSON string of its text.
pub(crate) fn result_of(body: &[u8]) -> Option<serde_json::Value> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Null) => None,
        Ok(v) => Some(v),
        Err(_) => Some(serde_json::Value::String(
            String::from_utf8_lossy(body).trim().to_owned(),
        )),
    }
}

/// A refusal's reason: the body's `reason` when it is a JSON object with a string `reason`,
/// else `text` (the status and the body's first bytes).
fn reason_of(body: &[u8], text: &str) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("reason")?.as_str().map(str::to_owned))
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_2xx_is_done_with_its_json_body_as_the_result() {
        let a = answer(Some(200), br#"{"charge_id": "ch_1"}"#, "").expect("final");
        assert_eq!(a, Answer::done(Some(json!({"charge_id": "ch_1"}))));
        assert_eq!(answer(Some(204), b"", ""), Some(Answer::done(None)));
        assert_eq!(answer(Some(201), b" null ", ""), Some(Answer::done(None)));
        // Not JSON (or cut short): kept as text.
        assert_eq!(
            answer(Some(200), b"ok, charged\n", ""),
            Some(Answer::done(Some(json!("ok, charged"))))
        );
        assert_eq!(
            answer(Some(200), br#"{"cut": "sho"#, ""),
            Some(Answer::done(Some(json!(r#"{"cut": "sho"#))))
        );
    }

    #[test]
    fn a_409_or_422_is_a_refusal_with_the_body_reason() {
        for code in [409, 422] {
            let a = answer(Some(code), br#"{"reason": "card declined"}"#, "t").expect("final");
            assert_eq!(a, Answer::refused("card declined".into()));
        }
        let a = answer(
            Some(409),
            b"sold out",
            "subscriber answered 409 Conflict: sold out",
        );
        assert_eq!(
            a,
            Some(Answer::refused(
                "subscriber answered 409 Conflict: sold out".into()
            ))
        );
    }

    #[test]
    fn anything_else_is_left_to_the_retries() {
        for code in [100, 301, 400, 404, 408, 429, 500, 503] {
            assert_eq!(answer(Some(code), b"{}", "x"), None, "{code}");
        }
        assert_eq!(answer(None, b"", "timeout"), None);
    }
}
