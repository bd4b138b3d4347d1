//! Everything that talks AMQP: the connection pool, the topology, the message envelope and the
//! confirming publisher.
//!
//! Recovery story: warren does not use lapin's auto-recovery. Connections come from a
//! deadpool pool that discards a connection which is no longer connected at checkout;
//! a channel found closed is replaced by a new one from the pool on next use. One story, so
//! the pool and lapin never fight over the same connection (see STACK.md).
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

use std::time::Duration;

use deadpool::managed::{self, Metrics, Pool, PoolConfig, RecycleError, RecycleResult, Timeouts};
use lapin::{Channel, Connection, ConnectionProperties, tcp::OwnedTLSConfig};

use crate::config::Settings;

/// The vhost named by an AMQP URL (`/` when the URL has no path): its path, percent-decoded
/// (`amqp://h/%2f` is `/`; a `+` stays a `+`, as the AMQP URI spec has it).
pub fn vhost_of(amqp_url: &str) -> String {
    let path = url::Url::parse(amqp_url)
        .ok()
        .map(|u| u.path().trim_start_matches('/').to_owned())
        .unwrap_or_default();
    if path.is_empty() {
        return "/".to_owned();
    }
    percent_encoding::percent_decode_str(&path)
        .decode_utf8_lossy()
        .into_owned()
}

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

/// Makes and checks the pool's AMQP connections (plain or TLS).
pub struct AmqpManager {
    uri: String,
    tls: OwnedTLSConfig,
    name: String,
}

impl std::fmt::Debug for AmqpManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URI: it holds the password.
        f.debug_struct("AmqpManager")
            .field("name", &self.name)
            .field("tls_ca", &self.tls.cert_chain.is_some())
            .field("tls_client_identity", &self.tls.identity.is_some())
            .finish_non_exhaustive()
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
        Ok(Self {
            uri: settings.amqp_uri(),
            tls: OwnedTLSConfig {
                identity,
                cert_chain,
            },
            name: connection_name.to_owned(),
        })
    }

    /// Opens one connection (what the pool does for each of its connections).
    pub async fn connect(&self) -> Result<Connection, lapin::Error> {
        // The connection name shows in the management UI's Connections tab.
        let props = ConnectionProperties::default().with_connection_name(self.name.clone().into());
        let runtime = lapin::runtime::default_runtime()?;
        Connection::connect_with_config(&self.uri, props, self.tls.clone(), runtime).await
    }
}

impl managed::Manager for AmqpManager {
    type Type = Connection;
    type Error = lapin::Error;

    async fn create(&self) -> Result<Connection, lapin::Error> {
        self.connect().await
    }

    async fn recycle(&self, conn: &mut Connection, _: &Metrics) -> RecycleResult<lapin::Error> {
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
        let timeout = Some(settings.amqp.connect_timeout());
        let config = PoolConfig {
            max_size: settings.amqp.pool_size,
            timeouts: Timeouts {
                wait: timeout,
                create: timeout,
                recycle: timeout,
            },
            ..PoolConfig::default()
        };
        let pool = Pool::builder(AmqpManager::new(settings, connection_name)?)
            .config(config)
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| BrokerError::Config(e.to_string()))?;
        Ok(Self {
            pool,
            connect_timeout: settings.amqp.connect_timeout(),
            vhost: vhost_of(settings.amqp.url.expose()),
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
    pub async fn declare(&self, topology: &topology::Topology) -> Result<(), BrokerError> {
        let channel = self.channel().await?;
        let result = topology.declare(&channel).await;
        let _ = channel.close(200, "topology declared".into()).await;
        Ok(result?)
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

    /// Closes every pooled connection.
    pub fn close(&self) {
        self.pool.close();
    }
}
