//! Everything that talks AMQP: the connection pool, the topology, the message envelope and the
//! confirming publisher.
//!
//! Recovery story: warren does not use lapin's auto-recovery. Connections come from a
//! deadpool pool that discards a connection which is no longer connected at checkout;
//! a channel found closed is replaced by a new one from the pool on next use. One story, so
//! the pool and lapin never fight over the same connection (see STACK.md).
//!
//! Several nodes (`amqp.urls`): each new connection goes to the next node in turn, so the
//! pool's connections spread over the cluster, and a node that does not answer is passed
//! over for the one after it; a lost connection is replaced by one to the next node that
//! answers. The management API client ([`topology::Management`]) does the same with
//! `amqp.management_urls`.
//!
//! TLS: with an `amqps://` URL, connections verify the broker's certificate against the
//! system's roots plus `amqp.tls_ca_file`, and present `amqp.tls_client_cert_file` when set.
//! The pool's manager is warren's own ([`AmqpManager`], the same checks as deadpool-lapin's)
//! because deadpool-lapin cannot pass a TLS configuration to lapin.

pub mod cloudevent;
pub mod envelope;
pub mod names;
pub mod publisher;
pub(crate) mod subscriptions;
pub mod topology;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use deadpool::managed::{self, Metrics, Pool, PoolConfig, RecycleError, RecycleResult, Timeouts};
use lapin::{Channel, Connection, ConnectionProperties, tcp::OwnedTLSConfig};

use crate::config::Settings;

pub use crate::config::vhost_of;

/// Errors reaching the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// No connection could be had from the pool.
    #[error("cannot get an AMQP connection: {0}")]
    Pool(String),
    /// A channel could not be opened or set up.
    #[error("cannot open an AMQP channel: {0}")]
    Channel(#[source] lapin::Error),
    /// The pool could not be built from the settings.
    #[error("invalid AMQP pool configuration: {0}")]
    Config(String),
    /// A TLS file named in the settings cannot be read.
    #[error("cannot read {setting} {path}: {source}")]
    TlsFile {
        /// The setting naming the file.
        setting: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Declaring the topology failed.
    #[error(transparent)]
    Topology(#[from] topology::TopologyError),
}

/// Makes and checks the pool's AMQP connections (plain or TLS), over one node or several.
pub struct AmqpManager {
    nodes: Vec<Node>,
    next: AtomicUsize,
    attempt_timeout: Duration,
    tls: OwnedTLSConfig,
    name: String,
    live: Arc<LiveConnections>,
}

/// One broker node: its URI (with credentials) and its label (`host:port`, for logs and
/// metrics).
struct Node {
    uri: String,
    label: String,
}

impl std::fmt::Debug for AmqpManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URIs: they hold the password.
        f.debug_struct("AmqpManager")
            .field("name", &self.name)
            .field(
                "nodes",
                &self.nodes.iter().map(|n| &n.label).collect::<Vec<_>>(),
            )
            .field("tls_ca", &self.tls.cert_chain.is_some())
            .field("tls_client_identity", &self.tls.identity.is_some())
            .finish_non_exhaustive()
    }
}

/// The `host:port` of an AMQP URI (the scheme's default port when it names none).
fn node_label(uri: &str) -> String {
    match url::Url::parse(uri) {
        Ok(u) => {
            let port = u
                .port()
                .unwrap_or(if u.scheme() == "amqps" { 5671 } else { 5672 });
            format!("{}:{port}", u.host_str().unwrap_or("localhost"))
        }
        Err(_) => "unparsable".to_owned(),
    }
}

impl AmqpManager {
    /// The manager for `settings`, reading the TLS files it names.
    pub fn new(settings: &Settings, connection_name: &str) -> Result<Self, BrokerError> {
        let amqp = &settings.amqp;
        let read = |setting: &'static str, path: &std::path::Path| {
            std::fs::read(path).map_err(|source| BrokerError::TlsFile {
                setting,
                path: path.to_owned(),
                source,
            })
        };
        let cert_chain = match &amqp.tls_ca_file {
            Some(path) => {
                Some(String::from_utf8_lossy(&read("amqp.tls_ca_file", path)?).into_owned())
            }
            None => None,
        };
        let identity = match (&amqp.tls_client_cert_file, &amqp.tls_client_key_file) {
            (Some(cert), Some(key)) => Some(lapin::tcp::OwnedIdentity::PKCS8 {
                pem: read("amqp.tls_client_cert_file", cert)?,
                key: read("amqp.tls_client_key_file", key)?,
            }),
            _ => None,
        };
        let nodes: Vec<Node> = settings
            .amqp_uris()
            .into_iter()
            .map(|uri| Node {
                label: node_label(&uri),
                uri,
            })
            .collect();
        let live = Arc::new(LiveConnections::new(
            nodes.iter().map(|n| n.label.clone()).collect(),
        ));
        Ok(Self {
            nodes,
            // Each process starts at a node of its own, so that many processes spread out.
            next: AtomicUsize::new(std::process::id() as usize),
            attempt_timeout: settings.amqp.connect_timeout(),
            tls: OwnedTLSConfig {
                identity,
                cert_chain,
            },
            name: connection_name.to_owned(),
            live,
        })
    }

    /// Opens one connection (what the pool does for each of its connections): to the next
    /// node in turn, and when that one does not answer within `amqp.connect_timeout_ms`, to
    /// the one after it, until every node was tried once.
    pub async fn connect(&self) -> Result<Connection, lapin::Error> {
        Ok(self.connect_any().await?.1)
    }

    /// [`AmqpManager::connect`], counted under its node while it lives.
    async fn connect_node(&self) -> Result<NodeConnection, lapin::Error> {
        let (index, conn) = self.connect_any().await?;
        let id = self.live.add(index, conn.status().clone());
        Ok(NodeConnection {
            conn,
            id,
            live: Arc::clone(&self.live),
        })
    }

    /// A connection to the first node that answers, from the next in turn, and that node's
    /// index.
    async fn connect_any(&self) -> Result<(usize, Connection), lapin::Error> {
        let n = self.nodes.len();
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last_error = None;
        for i in 0..n {
            let index = (first + i) % n;
            let node = &self.nodes[index];
            // The connection name shows in the management UI's Connections tab.
            let props =
                ConnectionProperties::default().with_connection_name(self.name.clone().into());
            let runtime = lapin::runtime::default_runtime()?;
            let attempt =
                Connection::connect_with_config(&node.uri, props, self.tls.clone(), runtime);
            let error = match tokio::time::timeout(self.attempt_timeout, attempt).await {
                Ok(Ok(conn)) => {
                    if i > 0 {
                        tracing::info!(node = %node.label, skipped = i, "AMQP connection made to another node.");
                    }
                    return Ok((index, conn));
                }
                Ok(Err(e)) => e,
                Err(_) => lapin::Error::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {:?}", self.attempt_timeout),
                )),
            };
            if n > 1 {
                tracing::warn!(node = %node.label, error = %error, "AMQP node unreachable; trying the next.");
            }
            last_error = Some(error);
        }
        Err(last_error.unwrap_or_else(|| {
            lapin::Error::from(std::io::Error::other("no AMQP node is configured"))
        }))
    }
}

/// A pooled connection, counted under its node while it lives.
pub struct NodeConnection {
    conn: Connection,
    id: u64,
    live: Arc<LiveConnections>,
}

impl std::ops::Deref for NodeConnection {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl Drop for NodeConnection {
    fn drop(&mut self) {
        self.live.remove(self.id);
    }
}

/// The pool's connections by node, for `warren_amqp_node_connections`.
struct LiveConnections {
    labels: Vec<String>,
    next_id: AtomicU64,
    // A connection counts while its status says connected, and until it is dropped.
    by_id: std::sync::Mutex<std::collections::HashMap<u64, (usize, lapin::ConnectionStatus)>>,
}

impl LiveConnections {
    fn new(labels: Vec<String>) -> Self {
        Self {
            labels,
            next_id: AtomicU64::new(0),
            by_id: std::sync::Mutex::default(),
        }
    }

    fn add(&self, node: usize, status: lapin::ConnectionStatus) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut map) = self.by_id.lock() {
            map.insert(id, (node, status));
        }
        id
    }

    fn remove(&self, id: u64) {
        if let Ok(mut map) = self.by_id.lock() {
            map.remove(&id);
        }
    }

    fn counts(&self) -> Vec<(String, usize)> {
        let mut counts = vec![0; self.labels.len()];
        if let Ok(map) = self.by_id.lock() {
            for (node, status) in map.values() {
                if status.connected() {
                    counts[*node] += 1;
                }
            }
        }
        self.labels.iter().cloned().zip(counts).collect()
    }
}

impl managed::Manager for AmqpManager {
    type Type = NodeConnection;
    type Error = lapin::Error;

    async fn create(&self) -> Result<NodeConnection, lapin::Error> {
        self.connect_node().await
    }

    async fn recycle(&self, conn: &mut NodeConnection, _: &Metrics) -> RecycleResult<lapin::Error> {
        if conn.status().connected() {
            Ok(())
        } else {
            Err(RecycleError::message("AMQP connection is not connected"))
        }
    }
}

/// A handle on the broker: a small pool of AMQP connections.
#[derive(Clone)]
pub struct Broker {
    pool: Pool<AmqpManager>,
    connect_timeout: Duration,
    vhost: String,
    live: Arc<LiveConnections>,
    /// Parking queues found without their delivery limit ([`Broker::declare`]).
    older_parking: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("status", &self.pool.status())
            .finish()
    }
}

impl Broker {
    /// Builds the pool; connects lazily, so a broker that is down does not stop start-up.
    pub fn new(settings: &Settings, connection_name: &str) -> Result<Self, BrokerError> {
        // Making a connection may try every node once, each for `connect_timeout`.
        let nodes = u32::try_from(settings.amqp.node_urls().len())
            .unwrap_or(1)
            .max(1);
        let connect_timeout = settings.amqp.connect_timeout() * nodes;
        let timeout = Some(connect_timeout);
        let config = PoolConfig {
            max_size: settings.amqp.pool_size,
            timeouts: Timeouts {
                wait: timeout,
                create: timeout,
                recycle: timeout,
            },
            ..PoolConfig::default()
        };
        let manager = AmqpManager::new(settings, connection_name)?;
        let live = Arc::clone(&manager.live);
        let pool = Pool::builder(manager)
            .config(config)
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| BrokerError::Config(e.to_string()))?;
        Ok(Self {
            pool,
            connect_timeout,
            vhost: settings.amqp.vhost(),
            live,
            older_parking: Arc::default(),
        })
    }

    /// The vhost it connects to (the `source` of warren's CloudEvents names it).
    pub fn vhost(&self) -> &str {
        &self.vhost
    }

    /// Opens a new channel on a pooled connection.
    pub async fn channel(&self) -> Result<Channel, BrokerError> {
        let conn = tokio::time::timeout(self.connect_timeout, self.pool.get())
            .await
            .map_err(|_| BrokerError::Pool("timed out waiting for a connection".to_owned()))?
            .map_err(|e| BrokerError::Pool(e.to_string()))?;
        conn.create_channel().await.map_err(BrokerError::Channel)
    }

    /// Opens a channel and the status of its connection (to see `blocked`).
    pub(crate) async fn channel_with_status(
        &self,
    ) -> Result<(Channel, lapin::ConnectionStatus), BrokerError> {
        let conn = tokio::time::timeout(self.connect_timeout, self.pool.get())
            .await
            .map_err(|_| BrokerError::Pool("timed out waiting for a connection".to_owned()))?
            .map_err(|e| BrokerError::Pool(e.to_string()))?;
        let status = conn.status().clone();
        let channel = conn.create_channel().await.map_err(BrokerError::Channel)?;
        Ok((channel, status))
    }

    /// Declares `topology` on a throwaway channel (a 406 closes the channel it happens on).
    ///
    /// A parking queue that exists without the delivery limit the topology gives it
    /// ([`names::PARKING_DELIVERY_LIMIT`]; declared by an earlier warren) is kept as it is, with
    /// a warning, once per queue and process: its arguments cannot change in place, and
    /// refusing it would keep warren from starting. The declaration then goes on without that
    /// argument on that queue, on a new channel.
    pub async fn declare(&self, topology: &topology::Topology) -> Result<(), BrokerError> {
        let known: Vec<String> = self
            .older_parking
            .lock()
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default();
        let mut adjusted = (!known.is_empty()).then(|| {
            known
                .iter()
                .fold(topology.clone(), |t, q| t.without_delivery_limit(q))
        });
        loop {
            let current = adjusted.as_ref().unwrap_or(topology);
            let channel = self.channel().await?;
            let result = current.declare(&channel).await;
            let _ = channel.close(200, "topology declared".into()).await;
            let Err(error) = result else {
                return Ok(());
            };
            let Some(queue) = current.older_parking_queue(&error) else {
                return Err(error.into());
            };
            tracing::warn!(
                queue = %queue,
                limit = names::PARKING_DELIVERY_LIMIT,
                "Parking queue exists without the parking delivery limit; kept as it is. On RabbitMQ 4.0 and later it has the default limit of 20: a parked message shown or passed over by 20 DLQ passes is dropped. Give it the limit with a policy (rabbitmqctl set_policy warren-parking '\\.dead$' '{{\"delivery-limit\":1000000}}' --apply-to quorum_queues), or let it drain and delete it so that warren declares it anew."
            );
            if let Ok(mut set) = self.older_parking.lock() {
                set.insert(queue.clone());
            }
            adjusted = Some(current.clone().without_delivery_limit(&queue));
        }
    }

    /// Checks that the broker answers: opens and closes a channel.
    pub async fn ping(&self) -> Result<(), BrokerError> {
        let channel = self.channel().await?;
        let _ = channel.close(200, "ping".into()).await;
        Ok(())
    }

    /// Connections currently held by the pool.
    pub fn connections(&self) -> usize {
        self.pool.status().size
    }

    /// The pool's open connections by node (`host:port`), every configured node listed.
    pub fn connections_by_node(&self) -> Vec<(String, usize)> {
        self.live.counts()
    }

    /// Closes every pooled connection.
    pub fn close(&self) {
        self.pool.close();
    }
}
