//! The health service: whether this process can do its work now (the broker answers, the
//! database answers, the topology is declared), for `GET /readyz`.

use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use crate::{broker::Broker, reads::Reads};

/// What [`Health::readiness`] found: `"ok"` or why not, per part.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Checks {
    /// The broker.
    pub broker: String,
    /// The database.
    pub database: String,
    /// The broker topology.
    pub topology: String,
}

impl Checks {
    /// Whether every part is ok.
    pub(crate) fn ready(&self) -> bool {
        self.broker == "ok" && self.database == "ok" && self.topology == "ok"
    }
}

/// The health checks over the broker, the database and the topology's declaration.
#[derive(Debug, Clone)]
pub(crate) struct Health {
    broker: Broker,
    reads: Reads,
    topology_ready: watch::Receiver<bool>,
    timeout: Duration,
}

impl Health {
    /// Checks `broker` and `reads`' database, each bounded by `timeout`, and reads
    /// `topology_ready` (true once the topology is declared).
    pub(crate) fn new(
        broker: Broker,
        reads: Reads,
        topology_ready: watch::Receiver<bool>,
        timeout: Duration,
    ) -> Self {
        Self {
            broker,
            reads,
            topology_ready,
            timeout,
        }
    }

    /// Pings the broker and the database (at once) and reads the topology flag.
    pub(crate) async fn readiness(&self) -> Checks {
        let (broker, database) = tokio::join!(
            tokio::time::timeout(self.timeout, self.broker.ping()),
            tokio::time::timeout(self.timeout, self.reads.ping()),
        );
        let broker = match broker {
            Ok(Ok(())) => "ok".to_owned(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_owned(),
        };
        let database = match database {
            Ok(Ok(())) => "ok".to_owned(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_owned(),
        };
        let topology = if *self.topology_ready.borrow() {
            "ok"
        } else {
            "not declared yet"
        };
        Checks {
            broker,
            database,
            topology: topology.to_owned(),
        }
    }
}
