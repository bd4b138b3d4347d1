//! Step results: which successes the machine keeps a result from, and how the state stores
//! them.

use std::collections::BTreeMap;

use serde_json::json;

use super::*;

#[test]
fn given_steps_that_return_results_then_the_saga_keeps_each_under_its_step_name() {
    let def = SagaDef::order();
    let (s, _) = run(
        &def,
        &[
            Input::Start,
            ok_with(0, json!({"order_id": 7})),
            ok(1),
            ok_with(2, json!({"charge_id": "ch_1"})),
            fail(3),
        ],
    );
    assert_eq!(
        s.results,
        BTreeMap::from([
            ("create_order".to_owned(), json!({"order_id": 7})),
            ("deduct_balance".to_owned(), json!({"charge_id": "ch_1"})),
        ])
    );
    // Stored and read back with the state; a state stored without results still reads.
    let json = serde_json::to_value(&s).expect("serializes");
    assert_eq!(
        serde_json::from_value::<SagaState>(json).expect("parses"),
        s
    );
    let old = json!({"status": "running", "steps": ["executing", "not_started",
        "not_started", "not_started"], "reason": null});
    assert!(
        serde_json::from_value::<SagaState>(old)
            .expect("parses")
            .results
            .is_empty()
    );
}

#[test]
fn given_a_stale_or_failed_reply_with_a_result_then_the_result_is_not_kept() {
    let def = SagaDef::order();
    let (s, _) = run(&def, &[Input::Start, ok(0)]);
    // A duplicate success of a step already done, with another result: nothing changes.
    let (next, cmds) = apply(&def, &s, &ok_with(0, json!({"other": true})));
    assert_eq!((next, cmds.len()), (s.clone(), 0));
    // A refusal carrying a body is not a result.
    let refused = Input::Reply {
        step: 1,
        action: Action::Execute,
        ok: false,
        reason: Some("no".into()),
        result: Some(json!({"x": 1})),
    };
    let (next, _) = apply(&def, &s, &refused);
    assert!(next.results.is_empty());
}

#[test]
fn given_a_late_success_with_a_result_then_its_compensation_gets_the_result() {
    let def = SagaDef::order();
    let late = Input::DeadlinePassed {
        step: 1,
        action: Action::Execute,
    };
    let (s, _) = run(
        &def,
        &[
            Input::Start,
            ok(0),
            late,
            ok_with(1, json!({"hold": "h-1"})),
        ],
    );
    assert_eq!(
        s.results.get("deduct_inventory"),
        Some(&json!({"hold": "h-1"}))
    );
}
