//! The `warren` command line: one binary, one subcommand per role or operator task.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::{
    app::{App, Role},
    broker::{Broker, topology::Topology},
    config::{Settings, redact_url},
};

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
    /// Run every role in one process: the HTTP front and every consumer module. The
    /// zero-setup default (local RabbitMQ, SQLite file).
    All,
    /// Run consumer modules: consume their durable queues with manual ack; failures wait in
    /// the broker's delay tiers (60 s after a reported failure, 120 s after an error), and
    /// after the last attempt go to the module's dead-letter queue.
    Worker {
        /// Comma-separated modules to run (default: all). Known: email, notifications, audit.
        #[arg(long, value_delimiter = ',')]
        modules: Vec<String>,
    },
    /// Apply, verify or export the broker topology (exchanges, queues, bindings).
    Topology {
        /// What to do with the topology.
        #[command(subcommand)]
        action: TopologyAction,
    },
    /// Print the effective settings, secrets redacted, as JSON.
    Config,
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

/// The vhost named by an AMQP URL (`/` when the URL has no path).
pub fn vhost_of(amqp_url: &str) -> String {
    let Ok(url) = url::Url::parse(amqp_url) else {
        return "/".to_owned();
    };
    let path = url.path().strip_prefix('/').unwrap_or("");
    if path.is_empty() {
        "/".to_owned()
    } else {
        url::form_urlencoded::parse(format!("v={path}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_else(|| "/".to_owned())
    }
}

/// Runs a parsed command line with loaded settings; returns the process exit code.
pub async fn run(cli: Cli, settings: Settings) -> anyhow::Result<i32> {
    match cli.command {
        Command::Serve | Command::All | Command::Worker { .. } => {
            let (roles, modules): (Vec<Role>, Vec<String>) = match cli.command {
                Command::Serve => (vec![Role::Http], Vec::new()),
                Command::Worker { modules } => (vec![Role::Worker], modules),
                _ => (vec![Role::Http, Role::Worker], Vec::new()),
            };
            tracing::info!(
                amqp = %redact_url(settings.amqp.url.expose()),
                database = %redact_url(settings.database.url.expose()),
                http = %settings.http.addr,
                "Starting warren."
            );
            let shutdown = CancellationToken::new();
            let mut app = App::new(settings);
            if !modules.is_empty() {
                app = app.modules(modules);
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
        Command::Config => {
            let redacted = toml_redacted(&settings)?;
            println!("{redacted}");
            Ok(0)
        }
        Command::Topology { action } => {
            let topology = Topology::for_settings(&settings)?;
            match action {
                TopologyAction::Apply => {
                    let broker = Broker::new(&settings, "warren topology apply")?;
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
                    let vhost = vhost.unwrap_or_else(|| vhost_of(settings.amqp.url.expose()));
                    let drift = topology
                        .verify(settings.amqp.management_url.expose(), &vhost)
                        .await?;
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
    }
}

fn toml_redacted(settings: &Settings) -> anyhow::Result<String> {
    let mut value = serde_json::to_value(settings)?;
    for path in [
        ["amqp", "url"],
        ["amqp", "management_url"],
        ["database", "url"],
    ] {
        if let Some(v) = value.get_mut(path[0]).and_then(|s| s.get_mut(path[1])) {
            let redacted = v.as_str().map(redact_url).unwrap_or_default();
            *v = serde_json::Value::String(redacted);
        }
    }
    if let Some(list) = value
        .get_mut("http")
        .and_then(|h| h.get_mut("tokens"))
        .and_then(|t| t.as_array_mut())
    {
        list.iter_mut()
            .for_each(|t| *t = serde_json::Value::String("[redacted]".into()));
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
    fn vhost_comes_from_the_url() {
        assert_eq!(vhost_of("amqp://g:g@h:5672/%2f"), "/");
        assert_eq!(vhost_of("amqp://g:g@h:5672"), "/");
        assert_eq!(vhost_of("amqp://g:g@h:5672/test-1"), "test-1");
    }
}
