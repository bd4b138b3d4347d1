//! HTTP subscriptions (issue 18): the events and commands an operator subscribes a URL to
//! (`[[subscriptions]]`), delivered from the subscription's own queue `warren.sub.<name>` as
//! CloudEvents over HTTP ([`cloudevent`]), signed per Standard Webhooks ([`signature`]), with
//! the answer classified into the runner's retry tiers and dead letters ([`outcome`]), by one
//! job module per subscription ([`SubscriptionConsumer`]); a saga command is answered for its
//! saga ([`saga_reply`]: HTTP saga participants, `docs/participants.md`).
//!
//! What the app wires: [`consumers`] (one consumer per subscription, sharing one HTTP
//! client), each run by the ordinary runner with its own limits ([`Consumer::limits`]), and
//! the [`status::Board`] loop that reports their state (`subscription_status`) and applies
//! the operators' pauses (`subscription_controls`, [`store`]); the queues and bindings are in
//! the topology (`broker::subscriptions`). See `docs/subscriptions.md` for the wire format
//! and what a receiver does.

pub(crate) mod breaker;
pub(crate) mod cloudevent;
mod consumer;
pub(crate) mod outcome;
pub(crate) mod saga_reply;
pub(crate) mod signature;
pub(crate) mod status;
pub(crate) mod store;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod wire;

use std::sync::Arc;

#[cfg(test)]
pub(crate) use consumer::HANDLER_MARGIN;
pub(crate) use consumer::SubscriptionConsumer;

use crate::{
    config::{Settings, SubscriptionSettings},
    jobs::Consumer,
    telemetry::Metrics,
};

/// Why the subscriptions' consumers could not be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SubscriptionError {
    /// A subscription's settings do not work (validation normally catches this first).
    #[error("subscription {subscription:?}: {reason}")]
    Invalid {
        /// The subscription's name.
        subscription: String,
        /// What is wrong.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the subscriptions' HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// The job module name of a subscription: `sub.<name>` (settings overrides under
/// `[jobs.modules."sub.<name>"]`, the inbox, `queue_jobs_total`, the `sub.<name>_failed`
/// alert). The dot keeps it apart from every built-in module's name.
pub(crate) fn module_name(sub: &SubscriptionSettings) -> String {
    format!("sub.{}", sub.name)
}

/// The HTTP client subscriptions share: pooled keep-alive connections, redirects never
/// followed (a 3xx is the subscriber's answer), no proxy from the environment (a subscription
/// goes where its URL says), warren's user agent, the system's TLS roots. A subscription with
/// TLS files of its own gets its own client ([`client_for`]).
pub(crate) fn http_client() -> Result<reqwest::Client, SubscriptionError> {
    Ok(client_builder().build()?)
}

fn client_builder() -> reqwest::ClientBuilder {
    crate::tls::install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(concat!("warren/", env!("CARGO_PKG_VERSION")))
        .pool_idle_timeout(std::time::Duration::from_secs(60))
}

/// The client `sub` sends with: `shared`, or, when it names TLS files (`tls_ca_file`,
/// `tls_client_cert_file` + `tls_client_key_file`), one built for it with those files read now.
fn client_for(
    sub: &SubscriptionSettings,
    shared: &reqwest::Client,
) -> Result<reqwest::Client, SubscriptionError> {
    if sub.tls_ca_file.is_none() && sub.tls_client_cert_file.is_none() {
        return Ok(shared.clone());
    }
    let tls = |setting: &str, reason: String| SubscriptionError::Invalid {
        subscription: sub.name.clone(),
        reason: format!("{setting}: {reason}"),
    };
    let read = |setting: &str, path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| tls(setting, format!("cannot read {}: {e}", path.display())))
    };
    let mut builder = client_builder();
    if let Some(path) = &sub.tls_ca_file {
        let certs = reqwest::Certificate::from_pem_bundle(&read("tls_ca_file", path)?)
            .map_err(|e| tls("tls_ca_file", format!("{}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(tls(
                "tls_ca_file",
                format!("{} holds no PEM certificate", path.display()),
            ));
        }
        builder = builder.tls_certs_merge(certs);
    }
    if let (Some(cert), Some(key)) = (&sub.tls_client_cert_file, &sub.tls_client_key_file) {
        let mut pem = read("tls_client_cert_file", cert)?;
        pem.push(b'\n');
        pem.extend(read("tls_client_key_file", key)?);
        let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
            tls(
                "tls_client_cert_file",
                format!("{} with {}: {e}", cert.display(), key.display()),
            )
        })?;
        builder = builder.identity(identity);
    }
    Ok(builder.build()?)
}

/// One [`SubscriptionConsumer`] per subscription in `settings`, sharing one HTTP client but for
/// those with TLS files of their own, each reporting to `board` (the consumers the process
/// does not run leave it when dropped) and answering saga commands for their sagas through
/// `saga` when given (the database and the publisher: [`saga_reply`]).
pub(crate) fn consumers(
    settings: &Settings,
    metrics: &Metrics,
    board: &status::Board,
    saga: Option<(
        &sea_orm::DatabaseConnection,
        &crate::broker::publisher::Publisher,
    )>,
) -> Result<Vec<Arc<dyn Consumer>>, SubscriptionError> {
    if settings.subscriptions.is_empty() {
        return Ok(Vec::new());
    }
    let shared = http_client()?;
    let vhost = crate::broker::vhost_of(&settings.amqp_uri());
    settings
        .subscriptions
        .iter()
        .map(|sub| {
            let client = client_for(sub, &shared)?;
            SubscriptionConsumer::new(sub, &vhost, client, metrics.clone()).map(|c| {
                let c = c.reporting_to(board);
                Arc::new(match saga {
                    Some((db, publisher)) => c.replying_to_sagas(db.clone(), publisher.clone()),
                    None => c,
                }) as Arc<dyn Consumer>
            })
        })
        .collect()
}
