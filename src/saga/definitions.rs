//! Loading and checking saga definitions: the built-in order saga plus those of
//! `saga.definitions_file`. A file is checked whole before anything runs: an unknown field, a
//! duplicate step name, a command (or compensation) that no binding on `warren.commands`
//! routes to a queue (no built-in module, no HTTP subscription's `commands` pattern), or a
//! deadline of zero is refused, each problem naming the saga and the step. `warren saga
//! check FILE` prints the same problems.

use std::{collections::HashSet, fmt, path::PathBuf};

use serde_json::Value;

use super::machine::{SagaDef, StepDef};
use crate::{
    broker::{
        names::COMMANDS_EXCHANGE,
        topology::{Topology, TopologyError},
    },
    config::Settings,
};

/// Why the saga definitions could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionsError {
    /// The file could not be read.
    #[error(transparent)]
    Read(#[from] crate::config::ConfigError),
    /// The topology the commands are checked against could not be built.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// Its content.
    #[error("saga definitions in {} are not valid:\n{}", path.display(), lines(problems))]
    Invalid {
        /// The path.
        path: PathBuf,
        /// What is wrong, one entry per problem.
        problems: Vec<Problem>,
    },
}

/// One thing wrong with a definitions file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The saga's kind (or `#N`, its place in the file, when it has none).
    pub saga: Option<String>,
    /// The step's name (or `#N`), when the problem is in one step.
    pub step: Option<String>,
    /// What is wrong.
    pub problem: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.saga, &self.step) {
            (Some(saga), Some(step)) => write!(f, "saga {saga:?}, step {step:?}: {}", self.problem),
            (Some(saga), None) => write!(f, "saga {saga:?}: {}", self.problem),
            _ => write!(f, "{}", self.problem),
        }
    }
}

fn lines(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The built-in order saga (from settings) plus those of `saga.definitions_file` (read when
/// the settings loaded, [`crate::config::Files`]), checked against the settings' topology.
pub fn definitions(settings: &Settings) -> Result<Vec<SagaDef>, DefinitionsError> {
    let builtin = builtin(settings);
    let Some(file) = settings.files()?.saga_definitions else {
        return Ok(builtin);
    };
    let topology = Topology::for_settings(settings)?;
    let more =
        check(&file.text, &topology, &builtin).map_err(|problems| DefinitionsError::Invalid {
            path: file.path.clone(),
            problems,
        })?;
    Ok(builtin.into_iter().chain(more).collect())
}

/// The definitions every warren has: the order saga.
pub fn builtin(settings: &Settings) -> Vec<SagaDef> {
    let saga = &settings.saga;
    vec![SagaDef::order_with(saga.deadline(), saga.notify_rolls_back)]
}

/// Parses and checks a definitions file's `text` (a JSON array of sagas); `topology` says
/// which commands are handled; `builtin` holds kinds already taken. Every problem found is
/// returned, not only the first.
pub fn check(
    text: &str,
    topology: &Topology,
    builtin: &[SagaDef],
) -> Result<Vec<SagaDef>, Vec<Problem>> {
    let whole = |problem: String| {
        vec![Problem {
            saga: None,
            step: None,
            problem,
        }]
    };
    let value: Value =
        serde_json::from_str(text).map_err(|e| whole(format!("not valid JSON: {e}")))?;
    let Value::Array(items) = value else {
        return Err(whole(
            "the file must hold a JSON array of saga definitions".to_owned(),
        ));
    };
    let mut problems = Vec::new();
    let mut defs: Vec<SagaDef> = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let Some(def) = saga(i, item, topology, &mut problems) else {
            continue;
        };
        if builtin.iter().chain(&defs).any(|d| d.kind == def.kind) {
            problems.push(Problem {
                saga: Some(def.kind.clone()),
                step: None,
                problem: "this kind is defined twice (kinds are unique, `order` is built in)"
                    .to_owned(),
            });
        }
        defs.push(def);
    }
    if problems.is_empty() {
        Ok(defs)
    } else {
        Err(problems)
    }
}

/// One saga of the file: its own fields, then each step. `None` when it cannot be built.
fn saga(
    index: usize,
    mut item: Value,
    topology: &Topology,
    problems: &mut Vec<Problem>,
) -> Option<SagaDef> {
    let name = item
        .get("kind")
        .and_then(Value::as_str)
        .map_or_else(|| format!("#{}", index + 1), str::to_owned);
    let at = |problem: String| Problem {
        saga: Some(name.clone()),
        step: None,
        problem,
    };
    let Some(object) = item.as_object_mut() else {
        problems.push(at("a saga definition must be a JSON object".to_owned()));
        return None;
    };
    // The saga's own fields (an unknown one is refused by `SagaDef`), its steps one by one.
    let steps = object.insert("steps".to_owned(), Value::Array(Vec::new()));
    let shell = serde_json::from_value::<SagaDef>(item);
    if let Err(e) = &shell {
        problems.push(at(e.to_string()));
    }
    let steps = match steps {
        Some(Value::Array(steps)) if !steps.is_empty() => steps,
        Some(Value::Array(_)) | None => {
            problems.push(at("it has no steps".to_owned()));
            return None;
        }
        Some(_) => {
            problems.push(at("`steps` must be an array".to_owned()));
            return None;
        }
    };
    let mut def = shell.ok()?;
    let before = problems.len();
    let mut names = HashSet::new();
    for (j, step) in steps.into_iter().enumerate() {
        let step_name = step
            .get("name")
            .and_then(Value::as_str)
            .map_or_else(|| format!("#{}", j + 1), str::to_owned);
        let mut at_step = |problem: String| {
            problems.push(Problem {
                saga: Some(name.clone()),
                step: Some(step_name.clone()),
                problem,
            });
        };
        let parsed = match serde_json::from_value::<StepDef>(step) {
            Ok(s) => s,
            Err(e) => {
                at_step(e.to_string());
                continue;
            }
        };
        if !names.insert(parsed.name.clone()) {
            at_step("another step of this saga has the same name".to_owned());
        }
        for problem in step_problems(&parsed, topology) {
            at_step(problem);
        }
        def.steps.push(parsed);
    }
    (problems.len() == before).then_some(def)
}

/// What is wrong with one parsed step: a zero deadline, a command or compensation nothing
/// handles.
fn step_problems(step: &StepDef, topology: &Topology) -> Vec<String> {
    let mut out = Vec::new();
    if step.deadline.is_zero() {
        out.push("its deadline is 0: give it at least 1 ms".to_owned());
    }
    for key in std::iter::once(&step.command).chain(&step.compensation) {
        if key.starts_with("saga.") {
            out.push(format!(
                "{key:?}: commands under `saga.` are the orchestrator's own (saga.start)"
            ));
        }
    }
    let what = |key: &str| {
        if *key == step.command {
            "command"
        } else {
            "compensation"
        }
    };
    for key in std::iter::once(&step.command).chain(&step.compensation) {
        let queues = topology.destinations(COMMANDS_EXCHANGE, key);
        match queues.as_slice() {
            [] => out.push(format!(
                "{} {key:?} is handled by no module or subscription (no binding on {COMMANDS_EXCHANGE} matches it)",
                what(key)
            )),
            [_] => {}
            many => out.push(format!(
                "{} {key:?} is handled by {} queues ({}): each would answer for the saga; keep one participant and subscribe observers to the saga's events",
                what(key),
                many.len(),
                many.join(", ")
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn topology() -> Topology {
        Topology::builtin().expect("the built-in topology parses")
    }

    fn step(name: &str, command: &str) -> Value {
        json!({"name": name, "command": command, "compensation": null,
               "deadline": 1000, "rolls_back": true})
    }

    fn problems(file: &Value) -> Vec<String> {
        let builtin = vec![SagaDef::order()];
        check(&file.to_string(), &topology(), &builtin)
            .expect_err("the file is refused")
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_good_file_gives_its_definitions() {
        let file = json!([{"kind": "reserve", "steps": [
            step("hold", "inventory.deduct"),
            {"name": "charge", "command": "balance.deduct", "compensation": "balance.refund",
             "deadline": 5000, "rolls_back": true}
        ]}]);
        let defs = check(&file.to_string(), &topology(), &[]).expect("accepted");
        assert_eq!(defs.len(), 1);
        assert_eq!(
            defs[0].steps[1].compensation.as_deref(),
            Some("balance.refund")
        );
    }

    #[test]
    fn an_unknown_field_of_a_step_is_refused_naming_the_saga_and_the_step() {
        let mut s = step("hold", "inventory.deduct");
        s["retries"] = json!(3);
        let p = problems(&json!([{"kind": "trip", "steps": [s]}]));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with(r#"saga "trip", step "hold": unknown field `retries`"#),
            "{p:?}"
        );
    }

    #[test]
    fn an_unknown_field_of_a_saga_is_refused_naming_the_saga() {
        let p = problems(&json!([{"kind": "trip", "callback": "x",
                                   "steps": [step("hold", "inventory.deduct")]}]));
        assert!(
            p[0].starts_with(r#"saga "trip": unknown field `callback`"#),
            "{p:?}"
        );
    }

    #[test]
    fn a_duplicate_step_name_is_refused() {
        let p = problems(&json!([{"kind": "trip", "steps": [
            step("hold", "inventory.deduct"), step("hold", "balance.deduct")
        ]}]));
        assert_eq!(
            p,
            vec![r#"saga "trip", step "hold": another step of this saga has the same name"#]
        );
    }

    #[test]
    fn a_command_nothing_handles_is_refused_and_so_is_its_compensation() {
        let mut s = step("seat", "seat.reserve");
        s["compensation"] = json!("seat.release");
        let p = problems(&json!([{"kind": "trip", "steps": [s]}]));
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].starts_with(r#"saga "trip", step "seat": command "seat.reserve" is handled by no module or subscription"#),
            "{p:?}"
        );
        assert!(p[1].contains(r#"compensation "seat.release""#), "{p:?}");
    }

    #[test]
    fn a_command_an_http_subscription_takes_is_handled() {
        let mut t = topology();
        let mut sub = crate::config::SubscriptionSettings::new("seats", "http://127.0.0.1:9/");
        sub.commands = vec!["seat.*".to_owned()];
        crate::broker::subscriptions::add_to(&mut t, &[sub]);
        let file = json!([{"kind": "trip", "steps": [step("seat", "seat.reserve")]}]);
        assert!(check(&file.to_string(), &t, &[]).is_ok());
    }

    #[test]
    fn a_command_two_queues_take_is_refused_naming_both() {
        let mut t = topology();
        let sub = |name: &str, pattern: &str| {
            let mut s = crate::config::SubscriptionSettings::new(name, "http://127.0.0.1:9/");
            s.commands = vec![pattern.to_owned()];
            s
        };
        crate::broker::subscriptions::add_to(&mut t, &[sub("seats", "seat.*"), sub("audit", "#")]);
        let file = json!([{"kind": "trip", "steps": [step("seat", "seat.reserve")]}]);
        let p = check(&file.to_string(), &t, &[]).expect_err("two participants");
        let p: Vec<String> = p.iter().map(ToString::to_string).collect();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains(r#"command "seat.reserve" is handled by 2 queues (warren.sub.seats, warren.sub.audit)"#),
            "{p:?}"
        );
    }

    #[test]
    fn a_command_of_the_orchestrator_is_refused() {
        let p = problems(&json!([{"kind": "trip", "steps": [step("go", "saga.start")]}]));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("the orchestrator's own"), "{p:?}");
    }

    #[test]
    fn a_zero_deadline_is_refused() {
        let mut s = step("hold", "inventory.deduct");
        s["deadline"] = json!(0);
        let p = problems(&json!([{"kind": "trip", "steps": [s]}]));
        assert_eq!(
            p,
            vec![r#"saga "trip", step "hold": its deadline is 0: give it at least 1 ms"#]
        );
    }

    #[test]
    fn every_problem_of_the_file_is_listed_and_kinds_stay_unique() {
        let mut zero = step("b", "inventory.deduct");
        zero["deadline"] = json!(0);
        let p = problems(&json!([
            {"kind": "order", "steps": [step("a", "order.create")]},
            {"kind": "trip", "steps": []},
            {"kind": "x", "steps": [step("a", "nobody.home"), zero]},
        ]));
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(p[0].starts_with(r#"saga "order": this kind is defined twice"#));
        assert_eq!(p[1], r#"saga "trip": it has no steps"#);
        assert!(p[2].starts_with(r#"saga "x", step "a": command "nobody.home""#));
        assert!(p[3].starts_with(r#"saga "x", step "b": its deadline is 0"#));
    }

    #[test]
    fn a_file_that_is_not_an_array_of_sagas_is_refused() {
        assert_eq!(
            problems(&json!({"kind": "trip"})),
            vec!["the file must hold a JSON array of saga definitions"]
        );
        let err = check("[{", &topology(), &[]).expect_err("refused");
        assert!(err[0].problem.starts_with("not valid JSON"), "{err:?}");
    }
}
