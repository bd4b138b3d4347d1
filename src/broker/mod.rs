//! Everything that talks AMQP: the connection pool, the topology, the message envelope and the
//! confirming publisher.
//!
//! Recovery story: warren does not use lapin's auto-recovery. Connections come from a
//! deadpool-lapin pool that discards a connection which is no longer connected at checkout;
//! a channel found closed is replaced by a new one from the pool on next use. One story, so
//! the pool and lapin never fight over the same connection (see STACK.md).

pub mod envelope;
pub mod publisher;
pub mod topology;

use std::time::Duration;

use deadpool_lapin::{Pool, Runtime};
use lapin::{Channel, ConnectionProperties};

use crate::config::Settings;

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
    /// Declaring the topology failed.
    #[error(transparent)]
    Topology(#[from] topology::TopologyError),
}

/// A handle on the broker: a small pool of AMQP connections.
#[derive(Clone)]
pub struct Broker {
    pool: Pool,
    connect_timeout: Duration,
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
        let cfg = deadpool_lapin::Config {
            url: Some(settings.amqp_uri()),
            pool: Some(deadpool_lapin::PoolConfig {
                max_size: settings.amqp.pool_size,
                timeouts: deadpool_lapin::Timeouts {
                    wait: Some(settings.amqp.connect_timeout()),
                    create: Some(settings.amqp.connect_timeout()),
                    recycle: Some(settings.amqp.connect_timeout()),
                },
                ..deadpool_lapin::PoolConfig::default()
            }),
        };
        let name = connection_name.to_owned();
        let pool = cfg
            .create_pool(
                move || {
                    // The connection name shows in the management UI's Connections tab.
                    ConnectionProperties::default().with_connection_name(name.clone().into())
                },
                Runtime::Tokio1,
            )
            .map_err(|e| BrokerError::Config(e.to_string()))?;
        Ok(Self {
            pool,
            connect_timeout: settings.amqp.connect_timeout(),
        })
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
