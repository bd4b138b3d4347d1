//! The article's in-process event dispatcher (`dispatchSync`): listeners registered with a
//! priority run in order, highest first, and each gives a result; one failing listener does
//! not stop the others.
//!
//! A listener subscribes with a topic pattern (`order.*`, `#`), matched like a binding key
//! on a topic exchange, so a listener sees in sync mode exactly the events a queue bound with
//! the same key would see in async mode.
//!
//! This is the registry only; the built-in listeners live with their modules
//! (`crate::modules::audit::AuditListener`, `crate::modules::notifications::NotificationListener`
//! and `WelcomeEmailListener`).

use std::{panic::AssertUnwindSafe, sync::Arc};

use futures_util::FutureExt;
use serde::Serialize;

use crate::broker::{envelope::Event, topology::topic_matches};

/// A listener's error, reported in its result.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ListenerError(pub String);

impl ListenerError {
    /// An error with a message.
    pub fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

/// An in-process event listener.
#[async_trait::async_trait]
pub trait Listener: Send + Sync + 'static {
    /// Handles one event; the value is returned to the HTTP caller in sync mode.
    async fn handle(&self, event: &Event) -> Result<serde_json::Value, ListenerError>;
}

/// One listener's outcome in a sync dispatch.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ListenerResult {
    /// The listener's registered name.
    pub listener: String,
    /// `success` or `failed`.
    pub status: &'static str,
    /// The listener's value, on success.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// The error, on failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

struct Registration {
    name: String,
    pattern: String,
    priority: i32,
    seq: usize,
    listener: Arc<dyn Listener>,
}

/// Registered listeners, kept sorted by priority (highest first, then registration order).
#[derive(Default, Clone)]
pub struct Dispatcher {
    listeners: Vec<Arc<Registration>>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.listeners
                    .iter()
                    .map(|r| (&r.name, &r.pattern, r.priority)),
            )
            .finish()
    }
}

impl Dispatcher {
    /// An empty dispatcher.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `listener` under `name` for events matching `pattern`, with a priority
    /// (higher runs first; the article's default is 100).
    pub fn register(
        &mut self,
        name: impl Into<String>,
        pattern: impl Into<String>,
        priority: i32,
        listener: impl Listener,
    ) -> &mut Self {
        let seq = self.listeners.len();
        self.listeners.push(Arc::new(Registration {
            name: name.into(),
            pattern: pattern.into(),
            priority,
            seq,
            listener: Arc::new(listener),
        }));
        self.listeners
            .sort_by(|a, b| b.priority.cmp(&a.priority).then(a.seq.cmp(&b.seq)));
        self
    }

    /// Runs every listener matching the event, in priority order, and returns one result each.
    /// A listener that errors or panics is reported as failed; the rest still run.
    #[tracing::instrument(skip_all, fields(event_name = %event.event_name, event_id = %event.event_id))]
    pub async fn dispatch_sync(&self, event: &Event) -> Vec<ListenerResult> {
        let mut results = Vec::new();
        for reg in self
            .listeners
            .iter()
            .filter(|r| topic_matches(&r.pattern, &event.event_name))
        {
            let outcome = AssertUnwindSafe(reg.listener.handle(event))
                .catch_unwind()
                .await;
            let result = match outcome {
                Ok(Ok(value)) => ListenerResult {
                    listener: reg.name.clone(),
                    status: "success",
                    result: Some(value),
                    error: None,
                },
                Ok(Err(e)) => {
                    tracing::warn!(listener = %reg.name, error = %e, "Listener failed.");
                    ListenerResult {
                        listener: reg.name.clone(),
                        status: "failed",
                        result: None,
                        error: Some(e.to_string()),
                    }
                }
                Err(_) => {
                    tracing::error!(listener = %reg.name, "Listener panicked.");
                    ListenerResult {
                        listener: reg.name.clone(),
                        status: "failed",
                        result: None,
                        error: Some("listener panicked".to_owned()),
                    }
                }
            };
            results.push(result);
        }
        results
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Fixed(Result<&'static str, &'static str>);

    #[async_trait::async_trait]
    impl Listener for Fixed {
        async fn handle(&self, _: &Event) -> Result<serde_json::Value, ListenerError> {
            match self.0 {
                Ok(v) => Ok(json!(v)),
                Err(e) => Err(ListenerError::new(e)),
            }
        }
    }

    struct Panics;

    #[async_trait::async_trait]
    impl Listener for Panics {
        async fn handle(&self, _: &Event) -> Result<serde_json::Value, ListenerError> {
            panic!("boom")
        }
    }

    #[tokio::test]
    async fn runs_by_priority_and_survives_failures() {
        let mut d = Dispatcher::new();
        d.register("low", "#", 10, Fixed(Ok("l")))
            .register("high", "order.*", 200, Fixed(Ok("h")))
            .register("broken", "#", 100, Fixed(Err("no")))
            .register("panics", "#", 50, Panics)
            .register("other", "user.*", 300, Fixed(Ok("x")));
        let r = d
            .dispatch_sync(&Event::new("order.created", None, json!({})))
            .await;
        let names: Vec<_> = r.iter().map(|x| (x.listener.as_str(), x.status)).collect();
        assert_eq!(
            names,
            vec![
                ("high", "success"),
                ("broken", "failed"),
                ("panics", "failed"),
                ("low", "success")
            ]
        );
        assert_eq!(r[1].error.as_deref(), Some("no"));
    }
}
