//! `warren saga check FILE`: the checks a start applies to `saga.definitions_file`, run on
//! any file against the subscriptions and modules of the loaded settings, without connecting
//! to anything.

use std::path::Path;

use crate::{broker::topology::Topology, config::Settings, saga};

/// Prints each problem of `file` (exit 1), or a summary of its sagas (exit 0).
pub(super) fn saga_check(file: &Path, settings: &Settings) -> anyhow::Result<i32> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            println!("{}: cannot read: {e}", file.display());
            return Ok(1);
        }
    };
    let topology = Topology::for_settings(settings)?;
    match saga::check(&text, &topology, &saga::builtin(settings)) {
        Ok(defs) => {
            let kinds: Vec<String> = defs
                .iter()
                .map(|d| format!("{} ({} steps)", d.kind, d.steps.len()))
                .collect();
            println!(
                "{}: {} saga definition(s) fit to run: {}",
                file.display(),
                defs.len(),
                kinds.join(", ")
            );
            Ok(0)
        }
        Err(problems) => {
            for p in &problems {
                println!("{p}");
            }
            println!(
                "{}: {} problem(s); a start with this file is refused",
                file.display(),
                problems.len()
            );
            Ok(1)
        }
    }
}
