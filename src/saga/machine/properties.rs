//! Property tests of the saga state machine: random definitions driven by random sequences of
//! replies (in any order, duplicated, late), deadlines, operator retries and resolutions, and
//! forged inputs; the invariants below are checked after every input.
//!
//! Two harnesses:
//! - *faithful participants*: every command the machine sends gets one outcome, delivered
//!   zero or more times, in any order, before or after its deadline. Beside the machine's
//!   state the harness keeps a ledger of what the participants really did, so the end state
//!   can be checked against the world: nothing left applied by a rolled-back saga.
//! - *anything goes*: the same, plus inputs nobody sent (replies for other steps and actions,
//!   unknown steps, operator actions on healthy steps). The structural invariants must still
//!   hold; the ledger means nothing there.

use std::time::Duration;

use proptest::prelude::*;

use super::*;

/// A random definition: 1 to 5 steps, each with or without a compensation, rolling back or
/// not.
fn definition() -> impl Strategy<Value = SagaDef> {
    prop::collection::vec((any::<bool>(), prop::bool::weighted(0.8)), 1..=5).prop_map(|steps| {
        let mut b = SagaDef::builder("prop");
        for (i, (compensable, rolls_back)) in steps.into_iter().enumerate() {
            b = b
                .step(format!("s{i}"), format!("svc{i}.do"))
                .deadline(Duration::from_millis(100 + i as u64));
            if compensable {
                b = b.compensate_with(format!("svc{i}.undo"));
            }
            if !rolls_back {
                b = b.no_rollback();
            }
        }
        b.build()
    })
}

/// One move of the world. Indices pick among the commands sent so far (modulo their number).
#[derive(Debug, Clone)]
enum Move {
    /// Start the saga.
    Start,
    /// A participant answers a command sent earlier (first time: with this outcome).
    Reply { pick: usize, ok: bool },
    /// A reply already delivered is delivered again.
    Duplicate { pick: usize },
    /// The deadline of a command sent earlier passes.
    Deadline { pick: usize },
    /// An operator retries a step's failed compensation.
    Retry { step: usize },
    /// An operator resolves a step's failed compensation by hand.
    Resolve { step: usize },
    /// An input nobody sent (only in the anything-goes harness).
    Forged(Input),
}

fn forged_input() -> impl Strategy<Value = Input> {
    let action = prop_oneof![Just(Action::Execute), Just(Action::Compensate)];
    prop_oneof![
        Just(Input::Start),
        (0usize..7, action.clone(), any::<bool>()).prop_map(|(step, action, ok)| Input::Reply {
            step,
            action,
            ok,
            reason: (!ok).then(|| "forged".to_owned()),
            result: ok.then(|| serde_json::json!({"forged": step})),
        }),
        (0usize..7, action).prop_map(|(step, action)| Input::DeadlinePassed { step, action }),
        (0usize..7).prop_map(|step| Input::Retry { step }),
        (0usize..7).prop_map(|step| Input::Resolve { step }),
    ]
}

fn moves(forged: bool) -> impl Strategy<Value = Vec<Move>> {
    let honest = prop_oneof![
        1 => Just(Move::Start),
        6 => (any::<usize>(), prop::bool::weighted(0.7)).prop_map(|(pick, ok)| Move::Reply { pick, ok }),
        2 => any::<usize>().prop_map(|pick| Move::Duplicate { pick }),
        2 => any::<usize>().prop_map(|pick| Move::Deadline { pick }),
        1 => (0usize..5).prop_map(|step| Move::Retry { step }),
        1 => (0usize..5).prop_map(|step| Move::Resolve { step }),
    ];
    let one = if forged {
        prop_oneof![4 => honest, 1 => forged_input().prop_map(Move::Forged)].boxed()
    } else {
        honest.boxed()
    };
    prop::collection::vec(one, 0..60)
}

/// One command the machine sent, and what its participant did about it.
#[derive(Debug, Clone)]
struct Sent {
    command: Command,
    /// The participant's outcome, once it answered (each command is answered once; later
    /// deliveries of the reply are duplicates).
    outcome: Option<bool>,
}

/// The machine, the commands it sent, and what the participants did.
#[derive(Debug)]
struct World {
    def: SagaDef,
    state: SagaState,
    sent: Vec<Sent>,
    /// Per step: the participant applied its effect.
    applied: Vec<bool>,
    /// Per step: the effect was undone (by a compensation or an operator).
    undone: Vec<bool>,
    /// Per step: its success arrived after its deadline had passed.
    late: Vec<bool>,
    /// Per step: the deadline of its execution passed.
    timed_out: Vec<bool>,
}

impl World {
    fn new(def: SagaDef) -> Self {
        let n = def.steps.len();
        Self {
            state: SagaState::new(&def),
            def,
            sent: Vec::new(),
            applied: vec![false; n],
            undone: vec![false; n],
            late: vec![false; n],
            timed_out: vec![false; n],
        }
    }

    fn reply_input(c: &Command, ok: bool) -> Input {
        Input::Reply {
            step: c.step,
            action: c.action,
            ok,
            reason: (!ok).then(|| "participant said no".to_owned()),
            result: (ok && c.action == Action::Execute)
                .then(|| serde_json::json!({"step": c.step})),
        }
    }

    /// Translates a move into an input, updating the participants' ledger.
    fn input_for(&mut self, m: &Move) -> Option<Input> {
        let n = self.sent.len();
        Some(match m {
            Move::Start => Input::Start,
            Move::Reply { pick, ok } => {
                let sent = self.sent.get_mut(pick % n.max(1))?;
                let ok = *sent.outcome.get_or_insert(*ok);
                let c = sent.command.clone();
                if ok {
                    match c.action {
                        Action::Execute => self.applied[c.step] = true,
                        Action::Compensate => self.undone[c.step] = true,
                    }
                }
                Self::reply_input(&c, ok)
            }
            Move::Duplicate { pick } => {
                let answered: Vec<&Sent> =
                    self.sent.iter().filter(|s| s.outcome.is_some()).collect();
                let s = answered.get(pick % answered.len().max(1))?;
                Self::reply_input(&s.command, s.outcome.unwrap_or(false))
            }
            Move::Deadline { pick } => {
                let c = &self.sent.get(pick % n.max(1))?.command;
                Input::DeadlinePassed {
                    step: c.step,
                    action: c.action,
                }
            }
            Move::Retry { step } => Input::Retry { step: *step },
            Move::Resolve { step } => {
                // An operator resolving by hand undoes the effect themselves.
                if self.state.steps.get(*step) == Some(&StepStatus::CompensationFailed) {
                    self.undone[*step] = true;
                }
                Input::Resolve { step: *step }
            }
            Move::Forged(input) => input.clone(),
        })
    }

    /// Applies one move and checks every invariant on the transition.
    fn step(&mut self, m: &Move) -> Result<(), TestCaseError> {
        let Some(input) = self.input_for(m) else {
            return Ok(());
        };
        let before = self.state.clone();
        let (after, commands) = apply(&self.def, &before, &input);
        if let Input::Reply {
            step,
            action: Action::Execute,
            ok: true,
            ..
        } = input
            && self.timed_out.get(step) == Some(&true)
        {
            self.late[step] = true;
        }
        if let Input::DeadlinePassed {
            step,
            action: Action::Execute,
        } = input
            && before.steps.get(step) == Some(&StepStatus::Executing)
        {
            self.timed_out[step] = true;
        }
        check_transition(&self.def, &before, &input, &after, &commands, &self.sent)?;
        check_state(&self.def, &after)?;
        self.state = after;
        self.sent.extend(commands.into_iter().map(|command| Sent {
            command,
            outcome: None,
        }));
        Ok(())
    }

    /// Answers every command and operator need (compensations succeed) until the saga ends;
    /// returns how many rounds that took.
    fn drain(&mut self) -> Result<usize, TestCaseError> {
        for round in 0..200 {
            if self.state.is_finished()
                && !self.sent.iter().any(|s| s.outcome.is_none())
                && self.state.status != Status::NeedsIntervention
            {
                return Ok(round);
            }
            if self.state.status == Status::Pending {
                self.step(&Move::Start)?;
                continue;
            }
            if let Some(i) = self.sent.iter().position(|s| s.outcome.is_none()) {
                self.step(&Move::Reply { pick: i, ok: true })?;
                continue;
            }
            if self.state.status == Status::NeedsIntervention {
                let failed = self
                    .state
                    .steps
                    .iter()
                    .position(|s| *s == StepStatus::CompensationFailed);
                if let Some(step) = failed {
                    self.step(&Move::Retry { step })?;
                    continue;
                }
            }
            return Err(TestCaseError::fail(format!(
                "stuck: nothing to answer in {:?}",
                self.state
            )));
        }
        Err(TestCaseError::fail(format!(
            "no end after 200 rounds: {:?}",
            self.state
        )))
    }
}

fn is_compensable_done(def: &SagaDef, s: &SagaState, i: usize) -> bool {
    s.steps[i] == StepStatus::Done && def.steps[i].compensation.is_some()
}

/// Invariant: the state has one status per step of the definition.
fn steps_match_the_definition(def: &SagaDef, s: &SagaState) -> Result<(), TestCaseError> {
    prop_assert_eq!(s.steps.len(), def.steps.len());
    Ok(())
}

/// Invariant: one command in flight at a time: at most one step is executing or compensating,
/// and only a running saga executes, only a compensating one compensates.
fn one_command_in_flight(s: &SagaState) -> Result<(), TestCaseError> {
    let executing = s
        .steps
        .iter()
        .filter(|x| **x == StepStatus::Executing)
        .count();
    let compensating = s
        .steps
        .iter()
        .filter(|x| **x == StepStatus::Compensating)
        .count();
    prop_assert!(executing + compensating <= 1, "{:?}", s);
    if executing == 1 {
        prop_assert_eq!(s.status, Status::Running);
    }
    if compensating == 1 {
        prop_assert_eq!(s.status, Status::Compensating);
    }
    Ok(())
}

/// Invariant: steps start in order: the steps ever started form a prefix of the definition.
fn started_steps_form_a_prefix(s: &SagaState) -> Result<(), TestCaseError> {
    let started = s
        .steps
        .iter()
        .take_while(|x| **x != StepStatus::NotStarted)
        .count();
    prop_assert!(
        s.steps[started..]
            .iter()
            .all(|x| *x == StepStatus::NotStarted),
        "{:?}",
        s
    );
    if s.status == Status::Pending {
        prop_assert_eq!(started, 0);
    }
    Ok(())
}

/// Invariant: a completed saga has every step succeeded, except failures of steps that do not
/// roll back; nothing is in flight or undone.
fn completed_means_every_step_succeeded(def: &SagaDef, s: &SagaState) -> Result<(), TestCaseError> {
    if s.status != Status::Completed {
        return Ok(());
    }
    for (i, step) in s.steps.iter().enumerate() {
        let ok = *step == StepStatus::Done
            || (!def.steps[i].rolls_back
                && matches!(step, StepStatus::Failed | StepStatus::TimedOut));
        prop_assert!(ok, "step {} is {:?} in a completed saga", i, step);
    }
    Ok(())
}

/// Invariant: a rolled-back saga (compensated or needing intervention) has nothing left to
/// undo: no succeeded step with a compensation remains, nothing is in flight, and it needs
/// intervention exactly when a compensation failed. A rolling-back saga has a reason.
fn rolled_back_means_nothing_left_to_undo(
    def: &SagaDef,
    s: &SagaState,
) -> Result<(), TestCaseError> {
    if matches!(
        s.status,
        Status::Compensating | Status::Compensated | Status::NeedsIntervention
    ) {
        prop_assert!(s.reason.is_some(), "rolled back without a reason: {:?}", s);
    }
    if !matches!(s.status, Status::Compensated | Status::NeedsIntervention) {
        return Ok(());
    }
    for i in 0..s.steps.len() {
        prop_assert!(
            !is_compensable_done(def, s, i),
            "step {} left applied: {:?}",
            i,
            s
        );
        prop_assert!(
            !matches!(s.steps[i], StepStatus::Executing | StepStatus::Compensating),
            "{:?}",
            s
        );
    }
    let failed = s.steps.contains(&StepStatus::CompensationFailed);
    prop_assert_eq!(failed, s.status == Status::NeedsIntervention, "{:?}", s);
    Ok(())
}

/// Every invariant of a single state.
fn check_state(def: &SagaDef, s: &SagaState) -> Result<(), TestCaseError> {
    steps_match_the_definition(def, s)?;
    one_command_in_flight(s)?;
    started_steps_form_a_prefix(s)?;
    completed_means_every_step_succeeded(def, s)?;
    rolled_back_means_nothing_left_to_undo(def, s)
}

/// Whether a step may go from `a` to `b` in one input (progress only moves forward, except an
/// operator's retry of a failed compensation; a late success may be undone at once).
fn step_transition_allowed(a: StepStatus, b: StepStatus) -> bool {
    use StepStatus::*;
    a == b
        || matches!(
            (a, b),
            (NotStarted, Executing)
                | (Executing, Done | Failed | TimedOut)
                | (TimedOut, Done | Compensating)
                | (Done, Compensating)
                | (Compensating, Compensated | CompensationFailed)
                | (CompensationFailed, Compensating | Compensated)
        )
}

/// Whether the saga may go from `a` to `b` in one input.
fn status_transition_allowed(a: Status, b: Status) -> bool {
    use Status::*;
    a == b
        || matches!(
            (a, b),
            (Pending, Running | Completed)
                | (Running, Completed | Compensating | Compensated)
                | (Compensating, Compensated | NeedsIntervention)
                | (Compensated | NeedsIntervention, Compensating)
                | (NeedsIntervention, Compensated)
        )
}

/// Invariant: statuses only move forward (see the two relations above).
fn progress_is_monotonic(before: &SagaState, after: &SagaState) -> Result<(), TestCaseError> {
    prop_assert!(
        status_transition_allowed(before.status, after.status),
        "status {:?} -> {:?}",
        before.status,
        after.status
    );
    for (i, (a, b)) in before.steps.iter().zip(&after.steps).enumerate() {
        prop_assert!(
            step_transition_allowed(*a, *b),
            "step {}: {:?} -> {:?}",
            i,
            a,
            b
        );
    }
    Ok(())
}

/// Invariant: at most one command per input, and it names the step's own routing key and
/// deadline; a compensation is only sent for a step that has one.
fn commands_match_their_definition(
    def: &SagaDef,
    commands: &[Command],
) -> Result<(), TestCaseError> {
    prop_assert!(commands.len() <= 1, "{:?}", commands);
    for c in commands {
        let step = &def.steps[c.step];
        let key = match c.action {
            Action::Execute => Some(&step.command),
            Action::Compensate => step.compensation.as_ref(),
        };
        prop_assert_eq!(Some(&c.routing_key), key);
        prop_assert_eq!(c.deadline, step.deadline);
    }
    Ok(())
}

/// Invariant: no step is executed twice (its idempotency key `saga:step:execute` is sent at
/// most once).
fn each_step_executes_at_most_once(
    sent: &[Sent],
    commands: &[Command],
) -> Result<(), TestCaseError> {
    for c in commands.iter().filter(|c| c.action == Action::Execute) {
        prop_assert!(
            !sent
                .iter()
                .any(|s| s.command.action == Action::Execute && s.command.step == c.step),
            "step {} executed twice",
            c.step
        );
    }
    Ok(())
}

/// Invariant: an effect is compensated only if it was applied: a compensation goes to a step
/// whose execution was sent and reported success; and compensations run latest first: when
/// one is sent, no later step is left with an effect to undo.
fn compensations_undo_applied_steps_latest_first(
    def: &SagaDef,
    before: &SagaState,
    after: &SagaState,
    commands: &[Command],
    sent: &[Sent],
) -> Result<(), TestCaseError> {
    for c in commands.iter().filter(|c| c.action == Action::Compensate) {
        prop_assert!(
            sent.iter()
                .any(|s| s.command.action == Action::Execute && s.command.step == c.step),
            "compensating step {} that was never executed",
            c.step
        );
        prop_assert!(
            matches!(
                before.steps[c.step],
                StepStatus::Done | StepStatus::TimedOut | StepStatus::CompensationFailed
            ),
            "compensating step {} in {:?}",
            c.step,
            before.steps[c.step]
        );
        for j in c.step + 1..def.steps.len() {
            prop_assert!(
                !is_compensable_done(def, after, j),
                "compensating step {} before later step {}",
                c.step,
                j
            );
        }
    }
    Ok(())
}

/// Invariant: terminal states are absorbing. A completed saga never changes. A rolled-back one
/// changes only to undo a success that came after its deadline (a compensation for it), to
/// take a late compensation success, or on an operator's retry or resolution.
fn terminal_states_are_absorbing(
    before: &SagaState,
    input: &Input,
    after: &SagaState,
    commands: &[Command],
) -> Result<(), TestCaseError> {
    match before.status {
        Status::Completed => {
            prop_assert_eq!(after, before);
            prop_assert!(commands.is_empty());
        }
        Status::Compensated | Status::NeedsIntervention if after != before => {
            let allowed = match input {
                Input::Reply {
                    step,
                    action: Action::Execute,
                    ok: true,
                    ..
                } => before.steps[*step] == StepStatus::TimedOut,
                Input::Reply {
                    step,
                    action: Action::Compensate,
                    ok: true,
                    ..
                }
                | Input::Retry { step }
                | Input::Resolve { step } => before.steps[*step] == StepStatus::CompensationFailed,
                _ => false,
            };
            prop_assert!(
                allowed,
                "{:?} changed a finished saga {:?} to {:?}",
                input,
                before,
                after
            );
            prop_assert!(commands.iter().all(|c| c.action == Action::Compensate));
        }
        _ => {}
    }
    Ok(())
}

/// Invariant: inputs about steps the definition does not have change nothing.
fn unknown_steps_change_nothing(
    def: &SagaDef,
    before: &SagaState,
    input: &Input,
    after: &SagaState,
    commands: &[Command],
) -> Result<(), TestCaseError> {
    let step = match input {
        Input::Start => return Ok(()),
        Input::Reply { step, .. }
        | Input::DeadlinePassed { step, .. }
        | Input::Retry { step }
        | Input::Resolve { step } => *step,
    };
    if step >= def.steps.len() {
        prop_assert_eq!(after, before);
        prop_assert!(commands.is_empty());
    }
    Ok(())
}

/// Every invariant of one transition.
fn check_transition(
    def: &SagaDef,
    before: &SagaState,
    input: &Input,
    after: &SagaState,
    commands: &[Command],
    sent: &[Sent],
) -> Result<(), TestCaseError> {
    unknown_steps_change_nothing(def, before, input, after, commands)?;
    progress_is_monotonic(before, after)?;
    commands_match_their_definition(def, commands)?;
    each_step_executes_at_most_once(sent, commands)?;
    compensations_undo_applied_steps_latest_first(def, before, after, commands, sent)?;
    terminal_states_are_absorbing(before, input, after, commands)
}

/// Invariant on a drained world: a completed saga left every rolling-back step applied and
/// nothing undone; a compensated one left no effect with a compensation applied (late
/// successes included).
fn the_world_matches_the_end_state(w: &World) -> Result<(), TestCaseError> {
    match w.state.status {
        Status::Completed => {
            for (i, step) in w.def.steps.iter().enumerate() {
                if step.rolls_back {
                    prop_assert!(w.applied[i], "completed without step {}", i);
                }
                prop_assert!(!w.undone[i], "completed saga undid step {}", i);
            }
        }
        Status::Compensated => {
            for (i, step) in w.def.steps.iter().enumerate() {
                if step.compensation.is_some() && w.applied[i] {
                    prop_assert!(
                        w.undone[i],
                        "step {} applied (late: {}) and never undone: {:?}",
                        i,
                        w.late[i],
                        w.state
                    );
                }
            }
        }
        other => prop_assert!(false, "a drained saga ended {:?}", other),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn faithful_participants_never_break_an_invariant_and_leave_no_effect_behind(
        def in definition(),
        moves in moves(false),
    ) {
        let mut w = World::new(def);
        for m in &moves {
            w.step(m)?;
        }
        w.drain()?;
        the_world_matches_the_end_state(&w)?;
    }

    #[test]
    fn forged_stale_and_duplicate_inputs_never_break_an_invariant(
        def in definition(),
        moves in moves(true),
    ) {
        let mut w = World::new(def);
        for m in &moves {
            w.step(m)?;
        }
    }
}
