//! The saga state machine: `apply(definition, state, input) -> (state, commands)`, pure and
//! deterministic, tested without a broker.
//!
//! A saga definition is an ordered list of steps, each a command with an optional
//! compensation command, a deadline, and whether its failure rolls the saga back (the article's
//! `addStep(execute, compensate)`, made explicit). Steps run one at a time. A failed step, or
//! one past its deadline, starts compensation of the completed steps in reverse order, one at
//! a time; a success that arrives after its deadline is compensated too. A compensation that
//! fails (after the participant's own retries) is recorded and the remaining compensations
//! still run; the saga then ends in `needs_intervention` instead of `compensated`.
//!
//! A step's success may carry a result (the participant's JSON answer): the machine keeps it
//! in [`SagaState::results`] under the step's name when it accepts the success, and every
//! later command (the next steps, every compensation) carries all results kept so far.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

/// Whether a command executes a step or undoes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Do the step.
    Execute,
    /// Undo the step.
    Compensate,
}

/// One step of a saga definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDef {
    /// Step name (`create_order`).
    pub name: String,
    /// Command routing key (`order.create`).
    pub command: String,
    /// Compensation routing key (`order.cancel`), if the step can be undone.
    pub compensation: Option<String>,
    /// How long the step may take before it counts as failed.
    #[serde(with = "millis")]
    pub deadline: Duration,
    /// Whether its failure rolls the saga back (false: recorded, and the saga goes on).
    pub rolls_back: bool,
}

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// A saga definition: its kind and ordered steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SagaDef {
    /// Saga kind (`order`).
    pub kind: String,
    /// The steps, in order.
    pub steps: Vec<StepDef>,
}

/// Default step deadline.
pub(crate) const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

impl SagaDef {
    /// Starts a definition of kind `kind`.
    pub fn builder(kind: impl Into<String>) -> SagaBuilder {
        SagaBuilder {
            def: SagaDef {
                kind: kind.into(),
                steps: Vec::new(),
            },
        }
    }
}

/// Builds a [`SagaDef`]; each setter applies to the last step added.
#[derive(Debug, Clone)]
pub struct SagaBuilder {
    def: SagaDef,
}

impl SagaBuilder {
    /// Adds a step running `command`, with the default deadline, rolling back on failure.
    pub fn step(mut self, name: impl Into<String>, command: impl Into<String>) -> Self {
        self.def.steps.push(StepDef {
            name: name.into(),
            command: command.into(),
            compensation: None,
            deadline: DEFAULT_DEADLINE,
            rolls_back: true,
        });
        self
    }

    /// Sets the last step's compensation command.
    pub fn compensate_with(mut self, command: impl Into<String>) -> Self {
        if let Some(s) = self.def.steps.last_mut() {
            s.compensation = Some(command.into());
        }
        self
    }

    /// Sets the last step's deadline.
    pub fn deadline(mut self, d: Duration) -> Self {
        if let Some(s) = self.def.steps.last_mut() {
            s.deadline = d;
        }
        self
    }

    /// The last step's failure is recorded but does not roll the saga back.
    pub fn no_rollback(mut self) -> Self {
        if let Some(s) = self.def.steps.last_mut() {
            s.rolls_back = false;
        }
        self
    }

    /// The definition.
    pub fn build(self) -> SagaDef {
        self.def
    }
}

/// Where a saga is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Not started.
    Pending,
    /// Executing steps.
    Running,
    /// Undoing completed steps.
    Compensating,
    /// Every step done.
    Completed,
    /// Rolled back cleanly.
    Compensated,
    /// Rolled back, but at least one compensation failed: an operator must act.
    NeedsIntervention,
}

/// What happened to one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Not sent yet.
    #[default]
    NotStarted,
    /// Command sent, no reply yet.
    Executing,
    /// The participant did it.
    Done,
    /// The participant refused or failed.
    Failed,
    /// No reply within the deadline.
    TimedOut,
    /// Compensation sent, no reply yet.
    Compensating,
    /// Undone.
    Compensated,
    /// The compensation failed (or timed out): needs an operator.
    CompensationFailed,
}

/// A saga's state: what the adapter persists (with a version column for optimistic
/// concurrency).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaState {
    /// Overall status.
    pub status: Status,
    /// Per-step status, one per step of the definition.
    pub steps: Vec<StepStatus>,
    /// Why the saga is rolling back, if it is.
    pub reason: Option<String>,
    /// The results of the steps that succeeded with one, by step name (stored with the
    /// state; absent in states stored before results existed).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub results: BTreeMap<String, serde_json::Value>,
}

impl SagaState {
    /// A saga not yet started.
    pub fn new(def: &SagaDef) -> Self {
        Self {
            status: Status::Pending,
            steps: vec![StepStatus::NotStarted; def.steps.len()],
            reason: None,
            results: BTreeMap::new(),
        }
    }

    /// Whether the saga is over.
    pub fn is_finished(&self) -> bool {
        matches!(
            self.status,
            Status::Completed | Status::Compensated | Status::NeedsIntervention
        )
    }
}

/// What the state machine is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Start the saga.
    Start,
    /// A participant replied.
    Reply {
        /// Step index.
        step: usize,
        /// Which command it answers.
        action: Action,
        /// Whether it succeeded.
        ok: bool,
        /// Why not, when it did not.
        reason: Option<String>,
        /// What the participant returned with a success (kept for an execute only).
        result: Option<serde_json::Value>,
    },
    /// A step's deadline passed (the adapter's timer).
    DeadlinePassed {
        /// Step index.
        step: usize,
        /// Which command timed out.
        action: Action,
    },
    /// An operator asks to send a failed compensation again.
    Retry {
        /// Step index.
        step: usize,
    },
    /// An operator undid a failed compensation by hand.
    Resolve {
        /// Step index.
        step: usize,
    },
}

/// What the adapter must send (after storing the new state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Step index.
    pub step: usize,
    /// Execute or compensate.
    pub action: Action,
    /// Routing key on `warren.commands`.
    pub routing_key: String,
    /// When this command counts as failed.
    pub deadline: Duration,
}

impl Command {
    /// The idempotency key participants apply at most once: `saga_id:step:action`.
    pub fn idempotency_key(&self, saga_id: &str) -> String {
        let action = match self.action {
            Action::Execute => "execute",
            Action::Compensate => "compensate",
        };
        format!("{saga_id}:{}:{action}", self.step)
    }
}

/// Applies `input` to `state`; returns the new state and the commands to send.
/// Stale, duplicate or unknown inputs change nothing and send nothing.
// Long on purpose: the whole transition table in one match, so every (status, step,
// input) case is seen next to the others.
pub(crate) fn apply(def: &SagaDef, state: &SagaState, input: &Input) -> (SagaState, Vec<Command>) {
    let mut s = state.clone();
    let mut out = Vec::new();
    match input {
        Input::Start => {
            if s.status == Status::Pending {
                s.status = Status::Running;
                execute_next(def, &mut s, 0, &mut out);
            }
        }
        Input::Reply {
            step,
            action: Action::Execute,
            ok,
            reason,
            result,
        } => {
            let Some(current) = s.steps.get(*step).copied() else {
                return (s, out);
            };
            match (s.status, current, ok) {
                (Status::Running, StepStatus::Executing, true) => {
                    s.steps[*step] = StepStatus::Done;
                    keep_result(def, &mut s, *step, result.as_ref());
                    execute_next(def, &mut s, step + 1, &mut out);
                }
                (Status::Running, StepStatus::Executing, false) => {
                    s.steps[*step] = StepStatus::Failed;
                    let why = reason.clone().unwrap_or_else(|| "step failed".to_owned());
                    fail_step(def, &mut s, *step, why, &mut out);
                }
                // A success after the deadline of a step that does not roll back (the saga
                // went on): the effect happened, so it is recorded, and undone if the saga is
                // rolled back later.
                (Status::Running, StepStatus::TimedOut, true) => {
                    s.steps[*step] = StepStatus::Done;
                    keep_result(def, &mut s, *step, result.as_ref());
                }
                // A success after the deadline: the effect happened, so it is undone too.
                (
                    Status::Compensating | Status::Compensated | Status::NeedsIntervention,
                    StepStatus::TimedOut,
                    true,
                ) => {
                    s.steps[*step] = StepStatus::Done;
                    keep_result(def, &mut s, *step, result.as_ref());
                    if s.status != Status::Compensating {
                        s.status = Status::Compensating;
                    }
                    if !compensation_in_flight(&s) {
                        compensate_next(def, &mut s, &mut out);
                    }
                }
                _ => {}
            }
        }
        Input::Reply {
            step,
            action: Action::Compensate,
            ok,
            ..
        } => {
            let Some(current) = s.steps.get(*step).copied() else {
                return (s, out);
            };
            match (current, ok) {
                (StepStatus::Compensating | StepStatus::CompensationFailed, true) => {
                    s.steps[*step] = StepStatus::Compensated;
                    compensate_next(def, &mut s, &mut out);
                }
                (StepStatus::Compensating, false) => {
                    s.steps[*step] = StepStatus::CompensationFailed;
                    compensate_next(def, &mut s, &mut out);
                }
                _ => {}
            }
        }
        Input::DeadlinePassed {
            step,
            action: Action::Execute,
        } => {
            if s.status == Status::Running && s.steps.get(*step) == Some(&StepStatus::Executing) {
                s.steps[*step] = StepStatus::TimedOut;
                fail_step(
                    def,
                    &mut s,
                    *step,
                    format!("step {} passed its deadline", def.steps[*step].name),
                    &mut out,
                );
            }
        }
        Input::DeadlinePassed {
            step,
            action: Action::Compensate,
        } => {
            if s.steps.get(*step) == Some(&StepStatus::Compensating) {
                s.steps[*step] = StepStatus::CompensationFailed;
                compensate_next(def, &mut s, &mut out);
            }
        }
        Input::Retry { step } => {
            // Only once every other compensation has settled: one command in flight at a time.
            if s.status == Status::NeedsIntervention
                && s.steps.get(*step) == Some(&StepStatus::CompensationFailed)
            {
                s.status = Status::Compensating;
                s.steps[*step] = StepStatus::Compensating;
                out.push(Command {
                    step: *step,
                    action: Action::Compensate,
                    routing_key: def.steps[*step].compensation.clone().unwrap_or_default(),
                    deadline: def.steps[*step].deadline,
                });
            }
        }
        Input::Resolve { step } => {
            if s.steps.get(*step) == Some(&StepStatus::CompensationFailed) {
                s.steps[*step] = StepStatus::Compensated;
                if s.status == Status::NeedsIntervention {
                    compensate_next(def, &mut s, &mut out);
                }
            }
        }
    }
    (s, out)
}

/// Keeps step `step`'s result (if it sent one) for the commands after it.
fn keep_result(def: &SagaDef, s: &mut SagaState, step: usize, result: Option<&serde_json::Value>) {
    if let (Some(r), Some(d)) = (result, def.steps.get(step)) {
        s.results.insert(d.name.clone(), r.clone());
    }
}

fn execute_next(def: &SagaDef, s: &mut SagaState, from: usize, out: &mut Vec<Command>) {
    match def.steps.get(from) {
        Some(step) => {
            s.steps[from] = StepStatus::Executing;
            out.push(Command {
                step: from,
                action: Action::Execute,
                routing_key: step.command.clone(),
                deadline: step.deadline,
            });
        }
        None => s.status = Status::Completed,
    }
}

fn fail_step(
    def: &SagaDef,
    s: &mut SagaState,
    step: usize,
    reason: String,
    out: &mut Vec<Command>,
) {
    if def.steps[step].rolls_back {
        s.status = Status::Compensating;
        s.reason = Some(reason);
        compensate_next(def, s, out);
    } else {
        // Recorded, not rolled back: the saga goes on.
        execute_next(def, s, step + 1, out);
    }
}

fn compensation_in_flight(s: &SagaState) -> bool {
    s.steps.contains(&StepStatus::Compensating)
}

/// Sends the compensation of the latest done step that has one; when none is left, ends the
/// saga as compensated or needing intervention.
fn compensate_next(def: &SagaDef, s: &mut SagaState, out: &mut Vec<Command>) {
    if compensation_in_flight(s) {
        return;
    }
    let next = (0..def.steps.len())
        .rev()
        .find(|&i| s.steps[i] == StepStatus::Done && def.steps[i].compensation.is_some());
    if let Some(i) = next {
        s.steps[i] = StepStatus::Compensating;
        out.push(Command {
            step: i,
            action: Action::Compensate,
            routing_key: def.steps[i].compensation.clone().unwrap_or_default(),
            deadline: def.steps[i].deadline,
        });
        return;
    }
    // Done steps without a compensation stay done; nothing else to undo.
    s.status = if s.steps.contains(&StepStatus::CompensationFailed) {
        Status::NeedsIntervention
    } else {
        Status::Compensated
    };
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;

    /// What one input sent: (step, action, routing key) per command.
    type Sent = Vec<(usize, Action, String)>;

    fn run(def: &SagaDef, inputs: &[Input]) -> (SagaState, Vec<Sent>) {
        let mut s = SagaState::new(def);
        let mut sent = Vec::new();
        for i in inputs {
            let (next, cmds) = apply(def, &s, i);
            s = next;
            sent.push(
                cmds.into_iter()
                    .map(|c| (c.step, c.action, c.routing_key))
                    .collect(),
            );
        }
        (s, sent)
    }

    fn ok(step: usize) -> Input {
        Input::Reply {
            step,
            action: Action::Execute,
            ok: true,
            reason: None,
            result: None,
        }
    }

    fn ok_with(step: usize, result: serde_json::Value) -> Input {
        Input::Reply {
            step,
            action: Action::Execute,
            ok: true,
            reason: None,
            result: Some(result),
        }
    }

    fn fail(step: usize) -> Input {
        Input::Reply {
            step,
            action: Action::Execute,
            ok: false,
            reason: Some("insufficient stock".into()),
            result: None,
        }
    }

    fn undone(step: usize, ok: bool) -> Input {
        Input::Reply {
            step,
            action: Action::Compensate,
            ok,
            reason: None,
            result: None,
        }
    }

    fn exec(step: usize, key: &str) -> (usize, Action, String) {
        (step, Action::Execute, key.to_owned())
    }

    fn comp(step: usize, key: &str) -> (usize, Action, String) {
        (step, Action::Compensate, key.to_owned())
    }

    #[test]
    fn given_an_order_saga_when_every_step_succeeds_then_it_completes_sending_each_command_in_turn()
    {
        let def = SagaDef::order();
        let (s, sent) = run(&def, &[Input::Start, ok(0), ok(1), ok(2), ok(3)]);
        assert_eq!(s.status, Status::Completed);
        assert_eq!(
            sent,
            vec![
                vec![exec(0, "order.create")],
                vec![exec(1, "inventory.deduct")],
                vec![exec(2, "balance.deduct")],
                vec![exec(3, "notification.send")],
                vec![],
            ]
        );
    }

    #[test]
    fn given_two_steps_done_when_the_third_fails_then_the_first_two_are_compensated_in_reverse() {
        let def = SagaDef::order();
        let (s, sent) = run(
            &def,
            &[
                Input::Start,
                ok(0),
                ok(1),
                fail(2),
                undone(1, true),
                undone(0, true),
            ],
        );
        assert_eq!(sent[3], vec![comp(1, "inventory.restore")]);
        assert_eq!(sent[4], vec![comp(0, "order.cancel")]);
        assert_eq!(sent[5], vec![]);
        assert_eq!(s.status, Status::Compensated);
        assert_eq!(s.reason.as_deref(), Some("insufficient stock"));
        assert_eq!(s.steps[2], StepStatus::Failed);
    }

    #[test]
    fn given_a_step_past_its_deadline_when_its_success_arrives_late_then_it_is_compensated_too() {
        let def = SagaDef::order();
        let late = Input::DeadlinePassed {
            step: 1,
            action: Action::Execute,
        };
        let (s, sent) = run(
            &def,
            &[
                Input::Start,
                ok(0),
                late,
                undone(0, true),
                ok(1),
                undone(1, true),
            ],
        );
        assert_eq!(
            sent[2],
            vec![comp(0, "order.cancel")],
            "deadline starts compensation"
        );
        assert_eq!(s.steps[0], StepStatus::Compensated);
        assert_eq!(
            sent[4],
            vec![comp(1, "inventory.restore")],
            "late success is undone"
        );
        assert_eq!(s.status, Status::Compensated);
    }

    #[test]
    fn given_a_compensation_that_fails_then_the_others_still_run_and_the_saga_needs_intervention() {
        let def = SagaDef::order();
        let (s, sent) = run(
            &def,
            &[
                Input::Start,
                ok(0),
                ok(1),
                fail(2),
                undone(1, false),
                undone(0, true),
            ],
        );
        assert_eq!(
            sent[4],
            vec![comp(0, "order.cancel")],
            "the next compensation still runs"
        );
        assert_eq!(s.status, Status::NeedsIntervention);
        assert_eq!(s.steps[1], StepStatus::CompensationFailed);
        // An operator retries the failed compensation; its success resolves the saga.
        let (s2, cmds) = apply(&def, &s, &undone(1, true));
        assert!(cmds.is_empty());
        assert_eq!(s2.status, Status::Compensated);
    }

    #[test]
    fn given_a_step_without_rollback_when_it_fails_then_the_saga_goes_on_and_completes() {
        let def = SagaDef::order_with(DEFAULT_DEADLINE, false);
        let (s, _) = run(&def, &[Input::Start, ok(0), ok(1), ok(2), fail(3)]);
        assert_eq!(s.status, Status::Completed);
        assert_eq!(s.steps[3], StepStatus::Failed);
    }

    #[test]
    fn given_a_step_without_rollback_past_its_deadline_when_its_late_success_comes_before_a_rollback_then_it_is_undone_too()
     {
        let def = SagaDef::builder("late")
            .step("reserve", "stock.reserve")
            .compensate_with("stock.release")
            .no_rollback()
            .step("charge", "card.charge")
            .build();
        let (s, sent) = run(
            &def,
            &[
                Input::Start,
                Input::DeadlinePassed {
                    step: 0,
                    action: Action::Execute,
                },
                ok(0),
                fail(1),
                undone(0, true),
            ],
        );
        assert_eq!(sent[1], vec![exec(1, "card.charge")], "the saga went on");
        assert_eq!(sent[2], vec![], "the late success is recorded");
        assert_eq!(
            sent[3],
            vec![comp(0, "stock.release")],
            "and undone on rollback"
        );
        assert_eq!(s.status, Status::Compensated);
    }

    #[test]
    fn given_the_article_default_when_the_notification_fails_then_the_order_is_rolled_back() {
        let def = SagaDef::order();
        let (s, sent) = run(&def, &[Input::Start, ok(0), ok(1), ok(2), fail(3)]);
        assert_eq!(s.status, Status::Compensating);
        assert_eq!(sent[4], vec![comp(2, "balance.refund")]);
    }

    #[test]
    fn given_a_saga_needing_intervention_when_an_operator_retries_then_the_compensation_is_sent_again()
     {
        let def = SagaDef::order();
        let (s, _) = run(
            &def,
            &[
                Input::Start,
                ok(0),
                ok(1),
                fail(2),
                undone(1, false),
                undone(0, true),
            ],
        );
        assert_eq!(s.status, Status::NeedsIntervention);
        // Retrying a step whose compensation did not fail changes nothing.
        let (same, none) = apply(&def, &s, &Input::Retry { step: 0 });
        assert_eq!((same, none.len()), (s.clone(), 0));
        let (s, cmds) = apply(&def, &s, &Input::Retry { step: 1 });
        assert_eq!(s.status, Status::Compensating);
        assert_eq!(
            cmds.iter()
                .map(|c| (c.step, c.action, c.routing_key.clone()))
                .collect::<Vec<_>>(),
            vec![comp(1, "inventory.restore")]
        );
        let (failed_again, _) = apply(&def, &s, &undone(1, false));
        assert_eq!(failed_again.status, Status::NeedsIntervention);
        let (s, _) = apply(&def, &s, &undone(1, true));
        assert_eq!(s.status, Status::Compensated);
    }

    #[test]
    fn given_a_saga_needing_intervention_when_an_operator_resolves_it_then_it_is_compensated() {
        let def = SagaDef::order();
        let (s, _) = run(
            &def,
            &[
                Input::Start,
                ok(0),
                ok(1),
                fail(2),
                undone(1, false),
                undone(0, true),
            ],
        );
        let (s, cmds) = apply(&def, &s, &Input::Resolve { step: 1 });
        assert!(cmds.is_empty());
        assert_eq!(s.status, Status::Compensated);
        assert_eq!(s.steps[1], StepStatus::Compensated);
    }

    #[test]
    fn duplicate_and_stale_replies_change_nothing() {
        let def = SagaDef::order();
        let (s, _) = run(&def, &[Input::Start, ok(0)]);
        for stale in [
            ok(0),
            fail(0),
            ok(3),
            ok(9),
            undone(0, true),
            Input::Start,
            Input::DeadlinePassed {
                step: 0,
                action: Action::Execute,
            },
        ] {
            let (next, cmds) = apply(&def, &s, &stale);
            assert_eq!(next, s, "{stale:?}");
            assert!(cmds.is_empty(), "{stale:?}");
        }
    }

    #[test]
    fn a_second_saga_needs_no_change_to_the_engine() {
        let def = SagaDef::builder("refund")
            .step("reverse_charge", "payment.reverse")
            .compensate_with("payment.recharge")
            .deadline(Duration::from_secs(5))
            .step("email_customer", "email.send")
            .no_rollback()
            .build();
        let (s, sent) = run(&def, &[Input::Start, ok(0), ok(1)]);
        assert_eq!(s.status, Status::Completed);
        assert_eq!(sent[0], vec![exec(0, "payment.reverse")]);
        let (_, cmds) = apply(&def, &SagaState::new(&def), &Input::Start);
        assert_eq!(cmds[0].deadline, Duration::from_secs(5));
        assert_eq!(cmds[0].idempotency_key("s-1"), "s-1:0:execute");
        let json = serde_json::to_string(&def).expect("definitions serialize");
        assert_eq!(
            serde_json::from_str::<SagaDef>(&json).expect("and parse"),
            def
        );
    }

    /// Step results: kept from accepted successes only.
    mod results;
}
