//! The operator console's server side (its pages are in `console/`, served by
//! [`crate::http::console`]): the overview's figures and links. Its operations (replay,
//! purge, failed-job retry, interventions) and the audit log are the operator service's
//! ([`crate::operator`]); the console's routes call that service and nothing else.

use std::time::Duration;

use chrono::Utc;
use serde::Serialize;
use serde_json::{Value, json};

use crate::{broker::topology::Management, operator::Operator, reads::Reads};

/// Where the console links to: Grafana's dashboards and the management UI.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Links {
    /// The management UI's queue list of warren's vhost.
    pub management: String,
    /// Grafana dashboards by name (`queues`, `sagas`, `http`, `process`), when Grafana is set.
    pub grafana: Option<serde_json::Map<String, Value>>,
}

/// One work queue on the overview.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct QueueRow {
    /// The work queue.
    pub queue: String,
    /// Its parking queue.
    pub dead_queue: String,
    /// Ready messages (management API).
    pub ready: Option<u64>,
    /// Delivered, not yet acknowledged (management API).
    pub unacked: Option<u64>,
    /// Consumers (management API).
    pub consumers: Option<u64>,
    /// Messages published into it per second (management API).
    pub rate_in: Option<f64>,
    /// Messages acknowledged from it per second (management API).
    pub rate_out: Option<f64>,
    /// Parked messages (exact).
    pub parked: Option<u32>,
    /// Its page in the management UI.
    pub management_url: String,
}

/// The work queues' rows, and why a source of them could not be read.
#[derive(Debug, Clone)]
pub(crate) struct QueueRows {
    /// One per work queue.
    pub rows: Vec<QueueRow>,
    /// Why the management API gave nothing (its figures are then `None`).
    pub management_error: Option<String>,
    /// Why the parked counts are missing.
    pub dlq_error: Option<String>,
}

/// The console's overview.
#[derive(Clone)]
pub(crate) struct Console {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    operator: Operator,
    reads: Reads,
    sagas: crate::saga::Sagas,
    management: Option<Management>,
    vhost: String,
    links: Links,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("vhost", &self.inner.vhost)
            .finish_non_exhaustive()
    }
}

/// The management UI's address from settings: `console.management_ui_url`, else
/// the first node's management URL without credentials.
fn management_ui(settings: &crate::config::Settings) -> String {
    let configured = settings.console.management_ui_url.trim();
    if !configured.is_empty() {
        return configured.trim_end_matches('/').to_owned();
    }
    match url::Url::parse(settings.amqp.management_node_urls()[0]) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.as_str().trim_end_matches('/').to_owned()
        }
        Err(_) => String::new(),
    }
}

fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

impl Console {
    /// The console over these services, with its links from `settings`.
    pub(crate) fn new(
        settings: &crate::config::Settings,
        operator: Operator,
        reads: Reads,
        sagas: crate::saga::Sagas,
    ) -> Self {
        let vhost = settings.amqp.vhost();
        let management = match Management::for_settings(&settings.amqp, Duration::from_secs(3)) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(error = %e, "The console cannot use the management API.");
                None
            }
        };
        let ui = management_ui(settings);
        let grafana = settings.console.grafana_url.trim().trim_end_matches('/');
        let links = Links {
            management: format!("{ui}/#/queues/{}", encode(&vhost)),
            grafana: (!grafana.is_empty()).then(|| {
                ["queues", "sagas", "http", "process"]
                    .into_iter()
                    .map(|d| (d.to_owned(), json!(format!("{grafana}/d/warren-{d}"))))
                    .collect()
            }),
        };
        Self {
            inner: std::sync::Arc::new(Inner {
                operator,
                reads,
                sagas,
                management,
                vhost,
                links,
            }),
        }
    }

    /// The overview: queues (management API and exact parked counts), failed jobs, sagas by
    /// state, open interventions, links. Parts that fail are reported, not fatal.
    pub(crate) async fn overview(&self) -> Value {
        let QueueRows {
            rows: queues,
            management_error,
            dlq_error,
        } = self.queues().await;
        let dead_letters: u64 = queues.iter().filter_map(|q| q.parked).map(u64::from).sum();
        let failed_jobs_parked = self.inner.reads.failed_jobs_parked().await;
        let sagas = self.inner.sagas.counts().await.ok();
        let interventions_open = self.inner.reads.interventions_open().await;
        json!({
            "generated_at": Utc::now(),
            "vhost": self.inner.vhost,
            "queues": queues,
            "management_error": management_error,
            "dlq_error": dlq_error,
            "dead_letters": dead_letters,
            "failed_jobs_parked": failed_jobs_parked,
            "sagas": sagas,
            "interventions_open": interventions_open,
            "links": self.inner.links,
        })
    }

    /// Every work queue with the broker's figures (management API) and its parked count.
    pub(crate) async fn queues(&self) -> QueueRows {
        let (mgmt, parked) =
            tokio::join!(self.management_queues(), self.inner.operator.dlq().list());
        let (mgmt, management_error) = match mgmt {
            Ok(m) => (m, None),
            Err(e) => (Default::default(), Some(e)),
        };
        let (parked, dlq_error) = match parked {
            Ok(p) => (p, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        let rows = self
            .inner
            .operator
            .dlq()
            .work_queues()
            .into_iter()
            .map(|queue| {
                let m: Option<&Value> = mgmt.get(&queue);
                let num = |ptr: &str| m.and_then(|v| v.pointer(ptr)).and_then(Value::as_u64);
                let rate =
                    |ptr: &str| m.map(|v| v.pointer(ptr).and_then(Value::as_f64).unwrap_or(0.0));
                QueueRow {
                    dead_queue: crate::operator::dlq::dead_queue(&queue),
                    ready: num("/messages_ready"),
                    unacked: num("/messages_unacknowledged"),
                    consumers: num("/consumers"),
                    rate_in: rate("/message_stats/publish_details/rate"),
                    rate_out: rate("/message_stats/ack_details/rate"),
                    parked: parked.iter().find(|p| p.queue == queue).map(|p| p.parked),
                    management_url: format!("{}/{}", self.inner.links.management, encode(&queue)),
                    queue,
                }
            })
            .collect();
        QueueRows {
            rows,
            management_error,
            dlq_error,
        }
    }

    async fn management_queues(&self) -> Result<std::collections::HashMap<String, Value>, String> {
        let Some(api) = &self.inner.management else {
            return Err("the management API address is not usable".to_owned());
        };
        let rows = api
            .get(&format!(
                "queues/{}?columns=name,messages_ready,messages_unacknowledged,consumers,message_stats",
                encode(&self.inner.vhost)
            ))
            .await
            .map_err(|e| e.to_string())?;
        Ok(rows
            .into_iter()
            .filter_map(|r| Some((r.get("name")?.as_str()?.to_owned(), r)))
            .collect())
    }
}
