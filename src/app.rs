//! Roles and their lifecycle: one `start(settings, roles, shutdown)` for every subcommand.
//!
//! A role is a long-running part of warren (today: the HTTP front; consumers, the saga
//! orchestrator and the scheduler join as they land). `serve` and `all` are sets of roles. The
//! first role to exit is logged and stops the rest; shutdown is one `CancellationToken`
//! passed down, and a `TaskTracker` waits for every spawned task.

use std::{net::SocketAddr, sync::Arc};

use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    broker::{Broker, BrokerError, publisher::Publisher, topology::Topology},
    config::Settings,
    dispatch::{AuditListener, Dispatcher, Listener},
    http::{self, HttpState},
    store::{self, StoreError},
    telemetry::Metrics,
};

/// A part of warren that runs until shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The HTTP front.
    Http,
}

/// Why warren could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The broker settings.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The topology file.
    #[error(transparent)]
    Topology(#[from] crate::broker::topology::TopologyError),
    /// The HTTP listener.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Builds and starts warren's roles.
pub struct App {
    settings: Arc<Settings>,
    metrics: Metrics,
    dispatcher: Dispatcher,
    builtin_listeners: bool,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("settings", &self.settings)
            .finish()
    }
}

/// A started warren: the bound HTTP address and its tasks.
#[derive(Debug)]
pub struct Running {
    /// Where the HTTP front listens, when it runs.
    pub http_addr: Option<SocketAddr>,
    /// Metrics of this process.
    pub metrics: Metrics,
    /// The database connection.
    pub db: sea_orm::DatabaseConnection,
    /// The broker handle.
    pub broker: Broker,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl App {
    /// An app with the built-in listeners (the audit listener on every event).
    pub fn new(settings: Settings) -> Self {
        Self {
            settings: Arc::new(settings),
            metrics: Metrics::new(),
            dispatcher: Dispatcher::new(),
            builtin_listeners: true,
        }
    }

    /// Leaves out the built-in listeners (for embedding warren with only your own).
    pub fn without_builtin_listeners(mut self) -> Self {
        self.builtin_listeners = false;
        self
    }

    /// Registers an in-process listener for `?mode=sync`.
    pub fn listener(
        mut self,
        name: &str,
        pattern: &str,
        priority: i32,
        listener: impl Listener,
    ) -> Self {
        self.dispatcher.register(name, pattern, priority, listener);
        self
    }

    /// Connects, migrates, declares the topology (retrying in the background while the broker
    /// is away) and starts `roles`. Returns once the roles run.
    pub async fn start(
        mut self,
        roles: &[Role],
        shutdown: CancellationToken,
    ) -> Result<Running, StartError> {
        let settings = self.settings.clone();
        let db = store::connect(&settings.database).await?;
        let broker = Broker::new(&settings, &format!("warren {}", std::process::id()))?;
        let topology = Topology::load(settings.amqp.topology_file.as_deref())?;
        let tasks = TaskTracker::new();

        if settings.amqp.declare_topology {
            let broker = broker.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move { keep_declaring(broker, topology, shutdown).await });
        }

        if self.builtin_listeners {
            self.dispatcher
                .register("audit.record", "#", 0, AuditListener::new(db.clone()));
        }

        let mut http_addr = None;
        if roles.contains(&Role::Http) {
            let publisher = Publisher::new(
                broker.clone(),
                settings.amqp.publish_channels,
                settings.amqp.publish_timeout(),
                self.metrics.clone(),
            );
            let state = HttpState {
                settings: settings.clone(),
                publisher: publisher.clone(),
                db: db.clone(),
                dispatcher: Arc::new(self.dispatcher),
                metrics: self.metrics.clone(),
            };
            let (addr, server) = http::serve(state, settings.http.addr, shutdown.clone())
                .await
                .map_err(|source| StartError::Bind {
                    addr: settings.http.addr,
                    source,
                })?;
            tracing::info!(%addr, "HTTP front listening.");
            http_addr = Some(addr);
            let stop = shutdown.clone();
            tasks.spawn(async move {
                server.await;
                publisher.close().await;
                if !stop.is_cancelled() {
                    tracing::error!("HTTP front exited; stopping the other roles.");
                    stop.cancel();
                }
            });
        }
        tasks.close();
        Ok(Running {
            http_addr,
            metrics: self.metrics,
            db,
            broker,
            tasks,
            shutdown,
        })
    }
}

impl Running {
    /// Waits until every role has stopped (after shutdown, or after the first role exits).
    pub async fn wait(self) {
        self.tasks.wait().await;
        self.broker.close();
        tracing::info!("warren stopped.");
    }

    /// Asks every role to stop and waits for them.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.wait().await;
    }
}

async fn keep_declaring(broker: Broker, topology: Topology, shutdown: CancellationToken) {
    let mut delays = crate::retry::reconnect();
    loop {
        match broker.declare(&topology).await {
            Ok(()) => return,
            Err(e) => {
                let delay = delays.next().unwrap_or(std::time::Duration::from_secs(10));
                tracing::warn!(error = %e, retry_in = ?delay, "Cannot declare the broker topology yet.");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
