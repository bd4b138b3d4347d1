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
    config::{Pool, Settings},
    dispatch::{Dispatcher, Listener},
    http::{self, HttpState},
    jobs::{
        Consumer,
        runner::{Runner, RunnerContext},
    },
    modules::{
        audit::{Audit, AuditListener},
        email::{Email, EmailError},
        inventory::Inventory,
        notifications::{NotificationListener, Notifications, WelcomeEmailListener},
        orders::Orders,
        payments::Payments,
        saga_orchestrator::Orchestrator,
    },
    operator::{Operator, dlq::Dlq},
    outbox::{EventOutbox, run_relay as run_outbox_relay},
    saga::{
        Sagas,
        orchestrator::{run_gauges, run_relay, run_timer},
        participants::ParticipantConsumer,
    },
    store::{self, StoreError},
    telemetry::Metrics,
};

/// A part of warren that runs until shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The HTTP front.
    Http,
    /// The consumer modules chosen with [`App::modules`] plus any added with
    /// [`App::consumer`].
    Worker,
    /// The saga orchestrator: the `warren.saga` consumer, the deadline timer and the outbox
    /// relay.
    Saga,
    /// The cron scheduler (any number of instances; each tick fires once).
    Scheduler,
}

/// The built-in consumer modules, by name: the jobs, then the order saga's participants.
pub const BUILTIN_MODULES: &[&str] = &[
    "email",
    "notifications",
    "audit",
    "orders",
    "inventory",
    "payments",
    "maintenance",
];

/// Why a module name was refused.
#[derive(Debug, thiserror::Error)]
#[error("unknown module {0:?}; known modules: {known}", known = BUILTIN_MODULES.join(", "))]
pub struct UnknownModule(pub String);

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
    /// A module name that does not exist.
    #[error(transparent)]
    Module(#[from] UnknownModule),
    /// The e-mail module's settings.
    #[error(transparent)]
    Email(#[from] EmailError),
    /// The saga definitions.
    #[error(transparent)]
    Sagas(#[from] crate::saga::DefinitionsError),
    /// The schedules.
    #[error("invalid schedule: {0}")]
    Scheduler(String),
    /// The HTTP subscriptions' consumers.
    #[error("HTTP subscriptions: {0}")]
    Subscriptions(String),
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
    modules: Vec<String>,
    consumers: Vec<Arc<dyn Consumer>>,
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
    /// Where the metrics listener listens (processes without the HTTP front).
    pub metrics_addr: Option<SocketAddr>,
    /// Metrics of this process.
    pub metrics: Metrics,
    /// The HTTP front's database pool (the one every role had before pools per role).
    pub db: sea_orm::DatabaseConnection,
    /// Every role's database pool.
    pub pools: store::Pools,
    /// The broker handle.
    pub broker: Broker,
    /// The confirming publisher.
    pub publisher: Publisher,
    /// Becomes true once the topology is declared.
    pub topology_ready: tokio::sync::watch::Receiver<bool>,
    /// The saga engine.
    pub sagas: Sagas,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl App {
    /// An app with the built-in listeners (the audit listener on every event).
    pub fn new(settings: Settings) -> Self {
        crate::tls::install_crypto_provider();
        Self {
            metrics: Metrics::new(),
            dispatcher: Dispatcher::new(),
            builtin_listeners: true,
            modules: BUILTIN_MODULES
                .iter()
                .map(|m| (*m).to_owned())
                .chain(
                    settings
                        .subscriptions
                        .iter()
                        .map(crate::subscriptions::module_name),
                )
                .collect(),
            settings: Arc::new(settings),
            consumers: Vec::new(),
        }
    }

    /// Chooses which modules the worker role runs: built-in ones by name, HTTP subscriptions
    /// as `sub.<name>` (default: all of them).
    pub fn modules<I: IntoIterator<Item = S>, S: Into<String>>(mut self, modules: I) -> Self {
        self.modules = modules.into_iter().map(Into::into).collect();
        self
    }

    /// Adds your own consumer module to the worker role.
    pub fn consumer(mut self, consumer: impl Consumer) -> Self {
        self.consumers.push(Arc::new(consumer));
        self
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
        let parts = Parts::connect(&self.settings, &self.metrics, roles, shutdown).await?;
        if roles.contains(&Role::Saga) {
            parts.start_saga();
        }
        if roles.contains(&Role::Scheduler) {
            parts.start_scheduler()?;
        }
        if roles.contains(&Role::Worker) {
            let board = crate::subscriptions::status::Board::new();
            let mut subscriptions = crate::subscriptions::consumers(
                &parts.settings,
                &parts.metrics,
                &board,
                Some((parts.pools.get(Pool::Consumers), &parts.publisher)),
            )
            .map_err(|e| StartError::Subscriptions(e.to_string()))?;
            let mut consumers = Vec::new();
            for name in &self.modules {
                if let Some(at) = subscriptions.iter().position(|c| c.name() == name) {
                    consumers.push(subscriptions.swap_remove(at));
                    continue;
                }
                consumers.push(builtin_module(
                    name,
                    &parts.settings,
                    parts.pools.get(Pool::Consumers),
                    &parts.publisher,
                )?);
            }
            consumers.extend(self.consumers.iter().cloned());
            drop(subscriptions);
            parts.start_subscription_board(board);
            parts.start_runners(consumers);
            parts.warn_of_removed_subscriptions();
        }
        if self.builtin_listeners {
            self.register_builtin_listeners(parts.pools.get(Pool::Http));
        }
        let sagas = parts.sagas_on(Pool::Http);
        let metrics_addr = if roles.contains(&Role::Http) {
            None
        } else {
            parts.start_metrics_listener().await
        };
        let http_addr = if roles.contains(&Role::Http) {
            Some(parts.start_http(self.dispatcher, &sagas).await?)
        } else {
            None
        };
        parts.tasks.close();
        Ok(Running {
            http_addr,
            metrics_addr,
            metrics: self.metrics,
            db: parts.pools.get(Pool::Http).clone(),
            pools: parts.pools,
            broker: parts.broker,
            publisher: parts.publisher,
            topology_ready: parts.topology_ready,
            sagas,
            tasks: parts.tasks,
            shutdown: parts.shutdown,
        })
    }

    /// The article's synchronous mode does the consumers' work inside the request (so on the
    /// HTTP front's pool): the notification row and the welcome e-mail (highest priority
    /// first), then audit.
    fn register_builtin_listeners(&mut self, db: &sea_orm::DatabaseConnection) {
        self.dispatcher
            .register("audit.record", "#", 0, AuditListener::new(db.clone()));
        for pattern in ["user.*", "order.*"] {
            self.dispatcher.register(
                "notifications.store",
                pattern,
                10,
                NotificationListener::new(db.clone()),
            );
        }
        match crate::modules::email::Email::new(db.clone(), &self.settings.email) {
            Ok(email) => {
                self.dispatcher.register(
                    "email.welcome",
                    "user.registered",
                    20,
                    WelcomeEmailListener::new(email),
                );
            }
            Err(e) => tracing::warn!(error = %e, "No welcome e-mail in sync mode."),
        }
    }
}

/// What every role is built from: the connections, the topology, the events service and the
/// runners' context, and the task tracker the roles' tasks run on.
struct Parts {
    settings: Arc<Settings>,
    metrics: Metrics,
    pools: store::Pools,
    broker: Broker,
    topology: Arc<Topology>,
    topology_ready: tokio::sync::watch::Receiver<bool>,
    publisher: Publisher,
    definitions: Vec<crate::saga::SagaDef>,
    /// The events service: the HTTP front's events and the runners' `job.failed` alerts.
    events: EventOutbox,
    ctx: RunnerContext,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Parts {
    /// Connects the pools and the broker, starts declaring the topology, and starts the
    /// events relay in every role that can store in the events outbox.
    async fn connect(
        settings: &Arc<Settings>,
        metrics: &Metrics,
        roles: &[Role],
        shutdown: CancellationToken,
    ) -> Result<Self, StartError> {
        let pools = store::Pools::connect(&settings.database).await?;
        let broker = Broker::new(settings, &format!("warren {}", std::process::id()))?;
        let topology = Arc::new(Topology::for_settings(settings)?);
        let definitions = crate::saga::definitions(settings)?;
        let tasks = TaskTracker::new();
        let publisher = Publisher::new(
            broker.clone(),
            settings.amqp.publish_channels,
            settings.amqp.publish_timeout(),
            metrics.clone(),
        );

        // Ready once the topology is declared (or at once when warren is told not to declare).
        let (ready_tx, topology_ready) =
            tokio::sync::watch::channel(!settings.amqp.declare_topology);
        if settings.amqp.declare_topology {
            let (broker, shutdown, topology) = (broker.clone(), shutdown.clone(), topology.clone());
            tasks.spawn(async move {
                if keep_declaring(broker, &topology, shutdown).await {
                    let _ = ready_tx.send(true);
                }
            });
        }
        let watched = broker.clone();
        metrics.watch_broker(move || watched.connections());
        let watched = broker.clone();
        metrics.watch_broker_nodes(move || watched.connections_by_node());
        metrics.watch_database(pools.named());

        let events = EventOutbox::new(
            pools.get(Pool::Http).clone(),
            pools.get(Pool::Relay).clone(),
            publisher.clone(),
            metrics.clone(),
            settings.outbox.clone(),
        );
        if [Role::Http, Role::Worker, Role::Saga]
            .iter()
            .any(|r| roles.contains(r))
        {
            tasks.spawn(run_outbox_relay(events.clone(), shutdown.clone()));
        }
        let ctx = RunnerContext {
            broker: broker.clone(),
            publisher: publisher.clone(),
            db: pools.get(Pool::Consumers).clone(),
            metrics: metrics.clone(),
            topology: topology.clone(),
            events: events.clone(),
        };
        Ok(Self {
            settings: settings.clone(),
            metrics: metrics.clone(),
            pools,
            broker,
            topology,
            topology_ready,
            publisher,
            definitions,
            events,
            ctx,
            tasks,
            shutdown,
        })
    }

    /// The saga engine on `pool`'s connections.
    fn sagas_on(&self, pool: Pool) -> Sagas {
        Sagas::new(
            self.pools.get(pool).clone(),
            self.publisher.clone(),
            self.metrics.clone(),
            self.definitions.clone(),
        )
    }

    /// The saga role: the replies on the consumers' pool; the timer, gauges and relay on the
    /// relays'.
    fn start_saga(&self) {
        let orchestrator: Arc<dyn Consumer> =
            Arc::new(Orchestrator::new(self.sagas_on(Pool::Consumers)));
        self.start_runners([orchestrator]);
        let (sagas, saga) = (self.sagas_on(Pool::Relay), &self.settings.saga);
        let ms = std::time::Duration::from_millis;
        self.tasks.spawn(run_timer(
            sagas.clone(),
            ms(saga.tick_ms),
            self.shutdown.clone(),
        ));
        self.tasks.spawn(run_gauges(
            sagas.clone(),
            std::time::Duration::from_secs(5),
            self.shutdown.clone(),
        ));
        self.tasks.spawn(run_relay(
            sagas,
            ms(saga.relay_ms),
            ms(saga.relay_grace_ms),
            self.shutdown.clone(),
        ));
    }

    /// Says, once the topology is declared, which subscription queues on the broker no
    /// subscription has any more: warren leaves them alone (they may hold messages). Best
    /// effort: without the management API it says nothing.
    fn warn_of_removed_subscriptions(&self) {
        let settings = self.settings.clone();
        let mut ready = self.topology_ready.clone();
        self.tasks.spawn(async move {
            if ready.wait_for(|r| *r).await.is_err() {
                return;
            }
            let vhost = settings.amqp.vhost();
            let Ok(api) = crate::broker::topology::Management::for_settings(
                &settings.amqp,
                std::time::Duration::from_secs(30),
            ) else {
                return;
            };
            let path = format!("queues/{}", crate::broker::topology::encode(&vhost));
            let Ok(queues) = api.get(&path).await else {
                tracing::debug!(
                    "No management API: cannot look for removed subscriptions' queues."
                );
                return;
            };
            let names = queues
                .iter()
                .filter_map(|q| q.get("name").and_then(serde_json::Value::as_str));
            for queue in crate::broker::subscriptions::orphaned(names, &settings.subscriptions) {
                tracing::warn!(%queue,
                    "This subscription queue belongs to no subscription in the settings any more; \
                     left as it is (it may hold messages): delete it by hand when it is empty.");
            }
        });
    }

    /// The scheduler role, on its own pool.
    fn start_scheduler(&self) -> Result<(), StartError> {
        let scheduler = crate::scheduler::Scheduler::new(
            self.pools.get(Pool::Scheduler).clone(),
            self.publisher.clone(),
            &self.settings.scheduler,
            self.settings.identity.instance(),
        )
        .map_err(StartError::Scheduler)?;
        self.tasks.spawn(scheduler.run(self.shutdown.clone()));
        Ok(())
    }

    /// The loop that reports the subscriptions this worker runs and applies the operators'
    /// pauses (none without subscriptions), on the relays' pool.
    fn start_subscription_board(&self, board: Arc<crate::subscriptions::status::Board>) {
        if board.is_empty() {
            return;
        }
        self.tasks.spawn(board.run(
            self.pools.get(Pool::Relay).clone(),
            self.settings.identity.instance(),
            self.metrics.clone(),
            self.shutdown.clone(),
        ));
    }

    /// A runner per consumer.
    fn start_runners(&self, consumers: impl IntoIterator<Item = Arc<dyn Consumer>>) {
        for consumer in consumers {
            let runner = Runner::new(consumer, self.ctx.clone(), &self.settings.jobs);
            self.tasks.spawn(runner.run(self.shutdown.clone()));
        }
    }

    /// The metrics listener of a process without the HTTP front (`metrics.addr`), if set and
    /// bound.
    async fn start_metrics_listener(&self) -> Option<SocketAddr> {
        let addr = self.settings.metrics.addr?;
        match crate::telemetry::serve_metrics(self.metrics.clone(), addr, self.shutdown.clone())
            .await
        {
            Ok((bound, server)) => {
                tracing::info!(addr = %bound, "Metrics listener up (GET /metrics).");
                self.tasks.spawn(server);
                Some(bound)
            }
            Err(e) => {
                tracing::warn!(%addr, error = %e,
                    "Cannot listen for metrics; this process is not scrapeable (set metrics.addr).");
                None
            }
        }
    }

    /// The HTTP front and the services it holds, on the HTTP front's pool; when it exits on
    /// its own it stops the other roles.
    async fn start_http(
        &self,
        dispatcher: Dispatcher,
        sagas: &Sagas,
    ) -> Result<SocketAddr, StartError> {
        let (settings, db) = (&self.settings, self.pools.get(Pool::Http));
        let dlq = Dlq::new(
            self.broker.clone(),
            self.publisher.clone(),
            db.clone(),
            self.topology.clone(),
        );
        let operator = Operator::new(db.clone(), dlq, sagas.clone(), settings.console.page_size);
        let reads = crate::reads::Reads::new(db.clone(), self.topology.clone());
        let health = crate::health::Health::new(
            self.broker.clone(),
            reads.clone(),
            self.topology_ready.clone(),
            settings.amqp.connect_timeout(),
        );
        let state = HttpState {
            settings: settings.clone(),
            events: self.events.clone(),
            reads: reads.clone(),
            idempotency: crate::idempotency::Idempotency::new(
                db.clone(),
                std::time::Duration::from_secs(settings.http.idempotency_retention_secs),
            ),
            health,
            dispatcher: Arc::new(dispatcher),
            metrics: self.metrics.clone(),
            sagas: sagas.clone(),
            slow_events: Arc::default(),
            tokens: Arc::new(crate::http::auth::Tokens::new(&settings.http.tokens)),
            limits: Arc::new(crate::http::limits::Limits::new(&settings.http)),
            console: crate::console::Console::new(settings, operator.clone(), reads, sagas.clone()),
            operator,
        };
        let (addr, server) = http::serve(state, settings.http.addr, self.shutdown.clone())
            .await
            .map_err(|source| StartError::Bind {
                addr: settings.http.addr,
                source,
            })?;
        tracing::info!(%addr, "HTTP front listening.");
        let stop = self.shutdown.clone();
        self.tasks.spawn(async move {
            server.await;
            if !stop.is_cancelled() {
                tracing::error!("HTTP front exited; stopping the other roles.");
                stop.cancel();
            }
        });
        Ok(addr)
    }
}

impl Running {
    /// Waits until every role has stopped (after shutdown, or after the first role exits).
    pub async fn wait(self) {
        self.tasks.wait().await;
        self.publisher.close().await;
        self.broker.close();
        crate::telemetry::flush();
        tracing::info!("warren stopped.");
    }

    /// Asks every role to stop and waits for them.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.wait().await;
    }
}

/// A built-in module by name.
pub fn builtin_module(
    name: &str,
    settings: &Settings,
    db: &sea_orm::DatabaseConnection,
    publisher: &Publisher,
) -> Result<Arc<dyn Consumer>, StartError> {
    match name {
        "audit" => Ok(Arc::new(Audit::new(db.clone()))),
        "email" => Ok(Arc::new(Email::new(db.clone(), &settings.email)?)),
        "notifications" => Ok(Arc::new(Notifications::new(db.clone(), publisher.clone()))),
        "maintenance" => Ok(Arc::new(crate::modules::maintenance::Maintenance::new(
            db.clone(),
            publisher.clone(),
            std::time::Duration::from_secs(settings.http.idempotency_retention_secs),
        ))),
        "orders" => Ok(Arc::new(ParticipantConsumer::new(
            Orders,
            db.clone(),
            publisher.clone(),
        ))),
        "inventory" => Ok(Arc::new(ParticipantConsumer::new(
            Inventory,
            db.clone(),
            publisher.clone(),
        ))),
        "payments" => Ok(Arc::new(ParticipantConsumer::new(
            Payments,
            db.clone(),
            publisher.clone(),
        ))),
        other => Err(UnknownModule(other.to_owned()).into()),
    }
}

/// Declares the topology, retrying with backoff; true once declared, false on shutdown.
async fn keep_declaring(broker: Broker, topology: &Topology, shutdown: CancellationToken) -> bool {
    let mut delays = crate::retry::reconnect();
    loop {
        match broker.declare(topology).await {
            Ok(()) => return true,
            Err(e) => {
                let delay = delays.next().unwrap_or(std::time::Duration::from_secs(10));
                tracing::warn!(error = %e, retry_in = ?delay, "Cannot declare the broker topology yet.");
                tokio::select! {
                    () = shutdown.cancelled() => return false,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
