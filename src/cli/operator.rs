//! The operator commands of the command line: `warren dlq ...` and `warren saga ...`, each a
//! call of the operator service (or the saga engine's reads) with the actor the command line
//! names once.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use super::{DlqAction, SagaAction};
use crate::{
    broker::{Broker, publisher::Publisher, topology::Topology},
    config::Settings,
    operator::{
        Operation, Operator, OperatorError,
        dlq::{Dlq, Filter, dead_queue},
    },
    store,
    telemetry::Metrics,
};

/// What a command that acts as an operator needs: the broker, a publisher, the database and
/// the operator service over them.
struct Parts {
    broker: Broker,
    publisher: Publisher,
    db: sea_orm::DatabaseConnection,
    sagas: crate::saga::Sagas,
    operator: Operator,
}

impl Parts {
    async fn connect(settings: &Settings, name: &str) -> anyhow::Result<Self> {
        let topology = Arc::new(Topology::for_settings(settings)?);
        let broker = Broker::new(settings, name)?;
        let publisher = Publisher::new(
            broker.clone(),
            1,
            settings.amqp.publish_timeout(),
            Metrics::new(),
        );
        let db = store::connect(&settings.database).await?;
        let sagas = crate::saga::Sagas::new(
            db.clone(),
            publisher.clone(),
            Metrics::new(),
            crate::saga::definitions(settings)?,
        );
        let dlq = Dlq::new(broker.clone(), publisher.clone(), db.clone(), topology);
        let operator = Operator::new(db.clone(), dlq, sagas.clone(), settings.console.page_size);
        Ok(Self {
            broker,
            publisher,
            db,
            sagas,
            operator,
        })
    }

    async fn close(self) {
        self.publisher.close().await;
        self.broker.close();
        let _ = self.db.close().await;
    }
}

pub(super) async fn saga(
    action: SagaAction,
    settings: &Settings,
    actor: &str,
) -> anyhow::Result<i32> {
    let parts = Parts::connect(settings, "warren saga").await?;
    let result = saga_action(&parts, actor, action).await;
    parts.close().await;
    result
}

async fn saga_action(parts: &Parts, actor: &str, action: SagaAction) -> anyhow::Result<i32> {
    let sagas = &parts.sagas;
    match action {
        SagaAction::Run | SagaAction::Check { .. } => {
            eprintln!("warren: `saga run` and `saga check` do not act as an operator");
            return Ok(2);
        }
        SagaAction::List {
            state,
            limit,
            interventions: true,
        } => return list_interventions(sagas, state, limit).await,
        SagaAction::List { state, limit, .. } => return list_sagas(sagas, state, limit).await,
        SagaAction::Show { id } => {
            let saga_id = match uuid::Uuid::parse_str(&id) {
                Ok(u) => u,
                Err(_) => match sagas.by_key("order", &id).await? {
                    Some(u) => u,
                    None => {
                        eprintln!("warren: no saga with id or order number {id:?}");
                        return Ok(1);
                    }
                },
            };
            let view = sagas.get(saga_id).await?;
            println!("{}", serde_json::to_string_pretty(&view)?);
        }
        SagaAction::Retry { intervention, note } => {
            let view = parts
                .operator
                .retry_intervention(actor, intervention, note)
                .await?;
            println!("retried: saga {} is now {}", view.saga.id, view.saga.status);
        }
        SagaAction::Resolve { intervention, note } => {
            let view = parts
                .operator
                .resolve_intervention(actor, intervention, note)
                .await?;
            println!(
                "resolved: saga {} is now {}",
                view.saga.id, view.saga.status
            );
        }
    }
    Ok(0)
}

/// `warren saga list --interventions`: the open ones.
async fn list_interventions(
    sagas: &crate::saga::Sagas,
    state: Option<String>,
    limit: u64,
) -> anyhow::Result<i32> {
    if state.is_some() {
        eprintln!("warren: --state does not apply to --interventions");
        return Ok(2);
    }
    let rows = sagas.interventions(false, limit).await?;
    println!("{} open intervention(s)", rows.len());
    for r in rows {
        println!(
            "{}  saga {}  step {} ({})  {}  {}: {}",
            r.id, r.saga_id, r.step, r.step_name, r.status, r.compensation, r.reason
        );
    }
    Ok(0)
}

/// `warren saga list [--state S]`.
async fn list_sagas(
    sagas: &crate::saga::Sagas,
    state: Option<String>,
    limit: u64,
) -> anyhow::Result<i32> {
    if let Some(s) = state.as_deref()
        && !crate::saga::engine::STATUSES.contains(&s)
    {
        eprintln!(
            "warren: --state must be one of {}",
            crate::saga::engine::STATUSES.join(", ")
        );
        return Ok(2);
    }
    let rows = sagas.list(state.as_deref(), None, limit).await?;
    for r in rows {
        println!(
            "{}  {:<6}  {:<18}  step {}  {}  {}",
            r.id,
            r.kind,
            r.status,
            r.step,
            r.business_key.as_deref().unwrap_or("-"),
            r.created_at.to_rfc3339()
        );
    }
    Ok(0)
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "message" } else { "messages" }
}

/// `warren dlq ...`: connects to the broker and the database, runs one action, prints it.
pub(super) async fn dlq(
    action: DlqAction,
    settings: &Settings,
    actor: &str,
) -> anyhow::Result<i32> {
    if let DlqAction::Purge {
        queue, yes: false, ..
    } = &action
    {
        eprintln!(
            "warren: refusing to purge {queue} without --yes: purged messages are deleted for good (see `warren dlq show {queue}` first)"
        );
        return Ok(2);
    }
    let parts = Parts::connect(settings, "warren dlq").await?;
    let result = dlq_action(&parts.operator, actor, action).await;
    parts.close().await;
    result
}

async fn dlq_action(operator: &Operator, actor: &str, action: DlqAction) -> anyhow::Result<i32> {
    let service = operator.dlq();
    match action {
        DlqAction::List => {
            let counts = service.list().await?;
            let width = counts
                .iter()
                .map(|c| c.dead_queue.len())
                .max()
                .unwrap_or(0)
                .max(5);
            println!("{:<width$}  parked", "queue");
            for c in &counts {
                println!("{:<width$}  {}", c.dead_queue, c.parked);
            }
        }
        DlqAction::Show {
            queue,
            limit,
            message_id,
        } => {
            let filter = Filter {
                message_id,
                ..Filter::default()
            };
            print_peek(&service.show(&queue, &filter, limit).await?);
        }
        DlqAction::Replay { queue, filter } => {
            return operate(operator, actor, Operation::Replay, &queue, filter.into()).await;
        }
        DlqAction::Purge { queue, filter, .. } => {
            return operate(operator, actor, Operation::Purge, &queue, filter.into()).await;
        }
    }
    Ok(0)
}

fn print_peek(peek: &crate::operator::dlq::Peek) {
    println!(
        "{} parked in {}; showing {}",
        peek.parked,
        peek.dead_queue,
        peek.messages.len()
    );
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    for m in &peek.messages {
        println!();
        println!("message_id: {}", or_dash(&m.message_id));
        println!("type:       {}", or_dash(&m.kind));
        println!(
            "attempt:    {}",
            m.attempt.map_or_else(|| "-".to_owned(), |a| a.to_string())
        );
        println!("reason:     {}", or_dash(&m.reason));
        println!("error:      {}", or_dash(&m.error));
        println!("failed_at:  {}", or_dash(&m.failed_at));
        if m.replayed_at.is_some() {
            println!("replayed:   {}", or_dash(&m.replayed_at));
        }
        println!(
            "original:   {} / {}",
            or_dash(&m.original_exchange),
            or_dash(&m.original_routing_key)
        );
        println!(
            "body:       {}{}",
            m.body,
            if m.body_truncated { " [truncated]" } else { "" }
        );
    }
}

/// `warren dlq replay|purge`: one operation of the operator service, under the queue's lock
/// like the console's, its progress printed (on stderr) after each page. Refused, moving
/// nothing, with exit code 1 while another operation holds the queue.
async fn operate(
    operator: &Operator,
    actor: &str,
    op: Operation,
    queue: &str,
    filter: Filter,
) -> anyhow::Result<i32> {
    let queue = operator.dlq().work_queue(queue)?;
    let detail = crate::operator::filter_detail(&filter);
    let on_start = |row: &entities::operator_actions::Model| {
        eprintln!(
            "{} of {queue}: operation {} started by {}",
            op.action(),
            row.id,
            row.actor
        );
    };
    let last = AtomicUsize::new(0);
    let progress = |moved: usize| {
        if last.swap(moved, Ordering::Relaxed) != moved {
            eprintln!("{} of {queue}: {moved} {} so far", op.action(), op.done());
        }
    };
    let result = operator
        .run_watched(actor, op, &queue, filter, detail, &on_start, &progress)
        .await;
    let (row, error) = match result {
        Ok(ended) => ended,
        Err(e) => {
            if let OperatorError::Running { id, .. } = &e {
                eprintln!("warren: refused, nothing moved: {e} (operation {id})");
                return Ok(1);
            }
            return Err(e.into());
        }
    };
    if let Some(e) = error {
        return Err(anyhow::Error::new(e).context(format!("operation {} failed", row.id)));
    }
    let n = usize::try_from(row.moved).unwrap_or_default();
    println!(
        "{} {n} {} from {}",
        op.done(),
        plural(n),
        dead_queue(&queue)
    );
    Ok(0)
}
