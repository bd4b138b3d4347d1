//! The `warren` command line: one binary, one subcommand per role or operator task.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::{
    app::{App, Role},
    broker::{
        Broker,
        topology::{Management, Topology},
    },
    config::{Settings, redact_url},
    operator::dlq::{Filter, parse_duration},
    store,
};

mod check;
mod operator;
use operator::{dlq, saga};

/// warren: event-driven, asynchronous work on RabbitMQ.
///
/// Settings come from built-in defaults, then the file given with --config (TOML), then
/// WARREN_* environment variables with `__` between nested keys (WARREN_AMQP__URL,
/// WARREN_DATABASE__URL, WARREN_HTTP__ADDR, ...). `warren config` prints the result.
#[derive(Debug, Parser)]
#[command(name = "warren", version, about, long_about)]
pub struct Cli {
    /// TOML settings file (also WARREN_CONFIG).
    #[arg(long, global = true, env = "WARREN_CONFIG")]
    pub config: Option<PathBuf>,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP front: accept events over HTTP and publish them, with publisher confirms,
    /// to the `warren.events` topic exchange (or run in-process listeners with ?mode=sync).
    Serve,
    /// Run every role in one process: the HTTP front, every consumer module (jobs and saga
    /// participants) and the saga orchestrator. The zero-setup default (local RabbitMQ,
    /// SQLite file).
    All,
    /// Run consumer modules: consume their durable queues with manual ack; failures wait in
    /// the broker's delay tiers (60 s after a reported failure, 120 s after an error), and
    /// after the last attempt go to the module's dead-letter queue.
    Worker {
        /// Comma-separated modules to run (default: all). Known: email, notifications, audit,
        /// orders, inventory, payments.
        #[arg(long, value_delimiter = ',')]
        modules: Vec<String>,
    },
    /// Run the orders participant of the order saga (`order.create`, `order.cancel`).
    Orders,
    /// Run the inventory participant (`inventory.deduct`, `inventory.restore`).
    Inventory,
    /// Run the payments participant (`balance.deduct`, `balance.refund`).
    Payments,
    /// The saga orchestrator and its operator commands.
    Saga {
        /// What to do.
        #[command(subcommand)]
        action: SagaAction,
    },
    /// Set stock per SKU and balances per user (for demos and load tests).
    Seed(SeedArgs),
    /// Run the cron scheduler: publish each schedule's event or job at its ticks (settings
    /// `scheduler.schedules`). Run as many as you like: each tick fires once.
    Scheduler,
    /// Probe a warren's health endpoint: exit 0 when it answers 200 (container
    /// healthchecks without curl).
    Healthcheck {
        /// The URL to GET.
        #[arg(long, default_value = "http://127.0.0.1:8080/healthz")]
        url: String,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
    /// Apply, verify or export the broker topology (exchanges, queues, bindings).
    Topology {
        /// What to do with the topology.
        #[command(subcommand)]
        action: TopologyAction,
    },
    /// Inspect, replay or purge parked messages (each work queue's dead-letter queue `Q.dead`).
    Dlq {
        /// What to do with the parked messages.
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Print the effective settings, secrets redacted, as JSON.
    Config,
    /// Print the HTTP API's OpenAPI 3.1 document (what `GET /openapi.json` serves and
    /// `docs/openapi.json` holds).
    Openapi,
    /// Print the AsyncAPI 3.0 document of the broker side (exchanges, queues, bindings, the
    /// message types and their envelope, retry tiers and dead-letter queues) for these
    /// settings, as served on `GET /asyncapi.json`.
    Asyncapi,
}

/// `warren dlq ...`
#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// Print how many messages are parked for each work queue (exact counts).
    List,
    /// Print parked messages of one work queue without removing them.
    Show {
        /// The work queue (`warren.email`; `warren.email.dead` works too).
        queue: String,
        /// How many messages to print.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Only the message with this message_id.
        #[arg(long)]
        message_id: Option<uuid::Uuid>,
    },
    /// Move parked messages back to their work queue with the attempt count reset to 1 and an
    /// x-warren-replayed-at mark; each is removed from the dead-letter queue only after the
    /// broker confirmed the copy.
    Replay {
        /// The work queue (`warren.email`; `warren.email.dead` works too).
        queue: String,
        /// Which messages.
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Delete parked messages for good (needs --yes).
    Purge {
        /// The work queue (`warren.email`; `warren.email.dead` works too).
        queue: String,
        /// Which messages.
        #[command(flatten)]
        filter: FilterArgs,
        /// Really delete them.
        #[arg(long)]
        yes: bool,
    },
}

/// Which parked messages `warren dlq replay|purge` selects (all by default).
#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Only the message with this message_id.
    #[arg(long)]
    pub message_id: Option<uuid::Uuid>,
    /// Only messages parked at least this long ago (by x-warren-failed-at): 30s, 10m, 2h, 1d.
    #[arg(long, value_parser = parse_duration)]
    pub older_than: Option<Duration>,
    /// Only messages parked for this reason: exhausted, invalid or undecodable.
    #[arg(long)]
    pub reason: Option<String>,
    /// At most this many messages.
    #[arg(long)]
    pub limit: Option<usize>,
}

impl From<FilterArgs> for Filter {
    fn from(a: FilterArgs) -> Self {
        Filter {
            message_id: a.message_id,
            reason: a.reason,
            older_than: a.older_than,
            limit: a.limit,
            ..Filter::default()
        }
    }
}

/// `warren saga ...`
#[derive(Debug, Subcommand)]
pub enum SagaAction {
    /// Run the orchestrator: consume participants' replies and `saga.start` commands from
    /// `warren.saga`, apply step deadlines, and relay commands left in the outbox.
    Run,
    /// Check a saga definitions file as a start would (unknown fields, duplicate step names,
    /// commands no module or subscription of these settings handles, zero deadlines): print
    /// each problem and exit 1, or a short summary and exit 0. Connects to nothing.
    Check {
        /// The definitions file (JSON), the form `saga.definitions_file` names.
        file: PathBuf,
    },
    /// List sagas, newest first.
    List {
        /// Only sagas in this state: running, compensating, completed, compensated,
        /// needs_intervention.
        #[arg(long)]
        state: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: u64,
        /// List open interventions instead.
        #[arg(long)]
        interventions: bool,
    },
    /// Print one saga as JSON: state, steps, timeline and interventions (by saga id, or by
    /// order number).
    Show {
        /// Saga id, or an order number.
        id: String,
    },
    /// Send the failed compensation of an intervention again.
    Retry {
        /// Intervention id (see `warren saga list --interventions`).
        intervention: uuid::Uuid,
        /// A note for the timeline.
        #[arg(long)]
        note: Option<String>,
    },
    /// Record that an operator undid a failed compensation by hand.
    Resolve {
        /// Intervention id.
        intervention: uuid::Uuid,
        /// What was done (required).
        #[arg(long)]
        note: String,
    },
}

/// `warren seed`.
#[derive(Debug, Args)]
pub struct SeedArgs {
    /// Stock of a SKU: `SKU=UNITS` (repeatable).
    #[arg(long = "sku", value_parser = parse_pair)]
    pub skus: Vec<(String, i64)>,
    /// Balance of a user in minor units: `USER=AMOUNT` (repeatable).
    #[arg(long = "account", value_parser = parse_pair)]
    pub accounts: Vec<(String, i64)>,
    /// Seed the demo catalogue (SKU-1..3, users u-1..3).
    #[arg(long)]
    pub demo: bool,
}

fn parse_pair(s: &str) -> Result<(String, i64), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=NUMBER, got {s:?}"))?;
    let n = v
        .trim()
        .parse::<i64>()
        .map_err(|e| format!("{v:?} is not a whole number: {e}"))?;
    Ok((k.trim().to_owned(), n))
}

/// `warren topology ...`
#[derive(Debug, Subcommand)]
pub enum TopologyAction {
    /// Declare every exchange, queue and binding on the broker (idempotent).
    Apply,
    /// Compare the live broker (via the management API) with the topology; exit 1 and name
    /// each difference when they differ.
    Verify {
        /// Vhost to check (default: the vhost of the AMQP URL).
        #[arg(long)]
        vhost: Option<String>,
    },
    /// Print the topology in RabbitMQ's definitions format.
    Export {
        /// Stamp every entity with this vhost, for `rabbitmqctl import_definitions` or
        /// `load_definitions` (without it the output is vhost-neutral, for
        /// `POST /api/definitions/{vhost}`).
        #[arg(long)]
        vhost: Option<String>,
    },
}

/// Runs a parsed command line with loaded settings; returns the process exit code.
pub async fn run(cli: Cli, settings: Settings) -> anyhow::Result<i32> {
    match cli.command {
        Command::Dlq { action } => dlq(action, &settings, &settings.identity.cli_actor()).await,
        Command::Saga {
            action: SagaAction::Run,
        } => serve(vec![Role::Saga], Vec::new(), settings).await,
        Command::Saga {
            action: SagaAction::Check { file },
        } => check::saga_check(&file, &settings),
        Command::Saga { action } => saga(action, &settings, &settings.identity.cli_actor()).await,
        Command::Serve => serve(vec![Role::Http], Vec::new(), settings).await,
        Command::Worker { modules } => serve(vec![Role::Worker], modules, settings).await,
        Command::Orders => serve(vec![Role::Worker], vec!["orders".to_owned()], settings).await,
        Command::Inventory => {
            serve(vec![Role::Worker], vec!["inventory".to_owned()], settings).await
        }
        Command::Payments => serve(vec![Role::Worker], vec!["payments".to_owned()], settings).await,
        Command::Scheduler => serve(vec![Role::Scheduler], Vec::new(), settings).await,
        Command::All => {
            let all = vec![Role::Http, Role::Worker, Role::Saga, Role::Scheduler];
            serve(all, Vec::new(), settings).await
        }
        Command::Healthcheck { url, timeout_ms } => healthcheck(&url, timeout_ms).await,
        Command::Seed(args) => seed(args, &settings).await,
        Command::Config => {
            let redacted = toml_redacted(&settings)?;
            println!("{redacted}");
            Ok(0)
        }
        Command::Topology { action } => topology(action, &settings).await,
        Command::Openapi => {
            print!("{}", crate::http::openapi::json());
            Ok(0)
        }
        Command::Asyncapi => {
            let document = crate::asyncapi::document(&settings)?;
            println!("{}", serde_json::to_string_pretty(&document)?);
            Ok(0)
        }
    }
}

/// Runs `roles` (with only `modules`, when named) until a signal: the first finishes the work
/// in flight, a second exits at once.
async fn serve(roles: Vec<Role>, modules: Vec<String>, settings: Settings) -> anyhow::Result<i32> {
    tracing::info!(
        amqp = %settings
            .amqp
            .node_urls()
            .iter()
            .map(|u| redact_url(u))
            .collect::<Vec<_>>()
            .join(","),
        database = %redact_url(settings.database.url.expose()),
        http = %settings.http.addr,
        "Starting warren."
    );
    let shutdown = CancellationToken::new();
    let mut app = App::new(settings);
    if !modules.is_empty() {
        app = app.modules(modules);
    } else if !roles.contains(&Role::Worker) {
        app = app.modules(Vec::<String>::new());
    }
    let running = app.start(&roles, shutdown.clone()).await?;
    let stop = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!(
            "Shutdown requested: finishing in-flight work (a second signal exits at once)."
        );
        stop.cancel();
        wait_for_signal().await;
        tracing::warn!("Second signal: exiting now.");
        std::process::exit(130);
    });
    running.wait().await;
    Ok(0)
}

/// `warren healthcheck`: 0 when `url` answers 2xx within the timeout.
async fn healthcheck(url: &str, timeout_ms: u64) -> anyhow::Result<i32> {
    crate::tls::install_crypto_provider();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(timeout_ms))
        .build()?;
    match client.get(url).send().await {
        Ok(r) if r.status().is_success() => Ok(0),
        Ok(r) => {
            eprintln!("warren: {url} answered {}", r.status());
            Ok(1)
        }
        Err(e) => {
            eprintln!("warren: {url}: {e}");
            Ok(1)
        }
    }
}

/// `warren seed`: stock and balances for the order saga's participants.
async fn seed(args: SeedArgs, settings: &Settings) -> anyhow::Result<i32> {
    let mut seed = if args.demo {
        crate::saga::order::Seed::demo()
    } else {
        crate::saga::order::Seed::default()
    };
    seed.inventory.extend(args.skus);
    seed.accounts.extend(args.accounts);
    if seed.inventory.is_empty() && seed.accounts.is_empty() {
        eprintln!("warren: nothing to seed: give --sku, --account or --demo");
        return Ok(2);
    }
    if let Err(e) = seed.validate() {
        eprintln!("warren: {e}");
        return Ok(2);
    }
    let db = store::connect(&settings.database).await?;
    seed.apply(&db).await?;
    println!(
        "seeded {} SKU(s) and {} account(s)",
        seed.inventory.len(),
        seed.accounts.len()
    );
    Ok(0)
}

/// `warren topology apply|verify|export`.
async fn topology(action: TopologyAction, settings: &Settings) -> anyhow::Result<i32> {
    let topology = Topology::for_settings(settings)?;
    match action {
        TopologyAction::Apply => {
            let broker = Broker::new(settings, "warren topology apply")?;
            broker.declare(&topology).await?;
            broker.close();
            println!(
                "topology applied: {} exchanges, {} queues, {} bindings",
                topology.exchanges.len(),
                topology.queues.len(),
                topology.bindings.len()
            );
            Ok(0)
        }
        TopologyAction::Verify { vhost } => {
            let vhost = vhost.unwrap_or_else(|| settings.amqp.vhost());
            let api = Management::for_settings(&settings.amqp, std::time::Duration::from_secs(30))?;
            let drift = topology.verify_with(&api, &vhost).await?;
            if drift.is_empty() {
                println!("topology matches vhost {vhost:?}");
                Ok(0)
            } else {
                for d in &drift {
                    println!("{d}");
                }
                println!("{} difference(s) in vhost {vhost:?}", drift.len());
                Ok(1)
            }
        }
        TopologyAction::Export { vhost } => {
            let out = serde_json::to_string_pretty(&topology.export(vhost.as_deref()))?;
            println!("{out}");
            Ok(0)
        }
    }
}

fn toml_redacted(settings: &Settings) -> anyhow::Result<String> {
    let mut value = serde_json::to_value(settings)?;
    for path in [
        ["amqp", "url"],
        ["amqp", "management_url"],
        ["database", "url"],
        ["email", "smtp_url"],
    ] {
        if let Some(v) = value.get_mut(path[0]).and_then(|s| s.get_mut(path[1])) {
            let redacted = v.as_str().map(redact_url).unwrap_or_default();
            *v = serde_json::Value::String(redacted);
        }
    }
    for list in ["urls", "management_urls"] {
        if let Some(urls) = value
            .get_mut("amqp")
            .and_then(|a| a.get_mut(list))
            .and_then(|l| l.as_array_mut())
        {
            for v in urls.iter_mut() {
                let redacted = v.as_str().map(redact_url).unwrap_or_default();
                *v = serde_json::Value::String(redacted);
            }
        }
    }
    if let Some(list) = value
        .get_mut("http")
        .and_then(|h| h.get_mut("tokens"))
        .and_then(|t| t.as_array_mut())
    {
        // A plain token becomes "[redacted]"; a scoped one keeps its scopes.
        for t in list.iter_mut() {
            match t.get_mut("token") {
                Some(token) => *token = serde_json::Value::String("[redacted]".into()),
                None => *t = serde_json::Value::String("[redacted]".into()),
            }
        }
    }
    Ok(serde_json::to_string_pretty(&value)?)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn dlq_commands_parse() {
        let cli = Cli::try_parse_from([
            "warren",
            "dlq",
            "replay",
            "warren.email",
            "--older-than",
            "10m",
            "--limit",
            "3",
        ])
        .expect("parses");
        let Command::Dlq {
            action: DlqAction::Replay { queue, filter },
        } = cli.command
        else {
            panic!("not a replay: {cli:?}");
        };
        assert_eq!(queue, "warren.email");
        assert_eq!(filter.older_than, Some(Duration::from_secs(600)));
        assert_eq!(filter.limit, Some(3));
        assert!(
            Cli::try_parse_from(["warren", "dlq", "purge", "q", "--older-than", "soon"]).is_err()
        );
    }

    #[test]
    fn vhost_comes_from_the_url() {
        assert_eq!(crate::broker::vhost_of("amqp://g:g@h:5672/%2f"), "/");
        assert_eq!(crate::broker::vhost_of("amqp://g:g@h:5672"), "/");
        assert_eq!(
            crate::broker::vhost_of("amqp://g:g@h:5672/test-1"),
            "test-1"
        );
    }
}
