//! The HTTP participants of `warren-bench sagas --participants http`: a saga of the order
//! saga's shape defined in a file (kind `shop`: four steps, four commands, three with a
//! compensation), one HTTP subscription per participant, and the participants themselves.
//!
//! The participants are one hyper server in the bench process, on a thread and a
//! single-threaded Tokio runtime of its own (so it does not queue behind warren's tasks, and
//! its CPU time can be told apart from warren's), HTTP/1.1 with keep-alive. `POST /{name}`
//! is participant `name`: it checks the saga headers warren sends (`Idempotency-Key`,
//! `warren-saga-id`, `warren-saga-step`, `warren-saga-action`), does its effect once per
//! `Idempotency-Key` (an entry in an in-memory ledger) and answers `200` with a small JSON
//! result (`{"id": "card-17"}`); a key seen before gets the first answer again, without a new
//! effect. A request without the headers is answered `400`, which fails the step, so a broken
//! contract shows as sagas that did not complete.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode, body::Incoming, server::conn::http1};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use warren::config::SubscriptionSettings;

use crate::cpu;

/// The saga's kind.
pub(crate) const KIND: &str = "shop";

/// The saga's steps, in order: (step name, participant = subscription name, command,
/// compensation). The same shape as the built-in order saga (`create_order`,
/// `deduct_inventory`, `deduct_balance`, `notify`): four commands, the last without a
/// compensation.
const STEPS: [(&str, &str, &str, Option<&str>); 4] = [
    ("create", "shop", "shop.create", Some("shop.cancel")),
    ("reserve", "stock", "stock.reserve", Some("stock.release")),
    ("charge", "card", "card.charge", Some("card.refund")),
    ("ship", "parcel", "parcel.ship", None),
];

/// Commands (executes) per saga that completes.
pub(crate) const STEPS_PER_SAGA: u64 = STEPS.len() as u64;

/// The definitions file's content: the `shop` saga, each step with `deadline_ms`.
pub(crate) fn definitions(deadline_ms: u64) -> Value {
    let steps: Vec<Value> = STEPS
        .iter()
        .map(|(name, _, command, compensation)| {
            json!({"name": name, "command": command, "compensation": compensation,
                   "deadline": deadline_ms, "rolls_back": true})
        })
        .collect();
    json!([{"kind": KIND, "steps": steps}])
}

/// Writes the definitions file in the temporary directory; [`DefinitionsFile`] removes it.
pub(crate) struct DefinitionsFile(PathBuf);

impl DefinitionsFile {
    /// Writes `warren-bench-sagas-{pid}.json`.
    pub(crate) fn write(deadline_ms: u64) -> anyhow::Result<Self> {
        let path =
            std::env::temp_dir().join(format!("warren-bench-sagas-{}.json", std::process::id()));
        std::fs::write(&path, definitions(deadline_ms).to_string())?;
        Ok(Self(path))
    }

    /// Where it is.
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for DefinitionsFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One subscription per participant, its `commands` the participant's command and
/// compensation, posting to `base/{name}`; every other setting at its default (the inbox on,
/// 10 s timeout, the default retries) but `concurrency`.
pub(crate) fn subscriptions(base: &str, concurrency: usize) -> Vec<SubscriptionSettings> {
    STEPS
        .iter()
        .map(|(_, participant, command, compensation)| {
            let mut sub = SubscriptionSettings::new(*participant, format!("{base}/{participant}"));
            sub.commands = std::iter::once(*command)
                .chain(*compensation)
                .map(str::to_owned)
                .collect();
            sub.concurrency = concurrency;
            sub
        })
        .collect()
}

/// What the participants counted.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    /// Every answer given, by `Idempotency-Key` (the effect, done once).
    done: Mutex<HashMap<String, Bytes>>,
    /// Requests received.
    requests: AtomicU64,
    /// Requests whose key had an answer already (answered again, no new effect).
    repeats: AtomicU64,
    /// Requests refused with 400 (a saga header missing, an unknown participant).
    bad: AtomicU64,
}

/// The participants' counts at the end of a run.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counts {
    /// Requests received.
    pub(crate) requests: u64,
    /// Effects done (distinct `Idempotency-Key`s).
    pub(crate) effects: u64,
    /// Requests answered from the ledger.
    pub(crate) repeats: u64,
    /// Requests refused with 400.
    pub(crate) bad: u64,
    /// CPU seconds of the participants' thread.
    pub(crate) cpu_s: f64,
}

impl Ledger {
    fn counts(&self) -> Counts {
        let effects = self
            .done
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len() as u64;
        Counts {
            requests: self.requests.load(Ordering::Relaxed),
            effects,
            repeats: self.repeats.load(Ordering::Relaxed),
            bad: self.bad.load(Ordering::Relaxed),
            cpu_s: 0.0,
        }
    }

    /// Answers one request of participant `name`: the ledger's answer for its key, or a new
    /// effect. `None` when the request breaks the contract.
    fn answer(&self, name: &str, headers: &hyper::HeaderMap, body: &[u8]) -> Option<Bytes> {
        let header = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
        let key = header("idempotency-key")?;
        let action = header("warren-saga-action")?;
        let step = header("warren-saga-step")?;
        header("warren-saga-id")?;
        let (_, participant, ..) = STEPS.iter().find(|(s, ..)| *s == step)?;
        if *participant != name {
            return None;
        }
        let mut done = self
            .done
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(first) = done.get(key) {
            self.repeats.fetch_add(1, Ordering::Relaxed);
            return Some(first.clone());
        }
        let result = match action {
            "execute" => json!({"id": format!("{name}-{}", done.len())}),
            // Undo what the execute returned: it is in the command's `results`.
            "compensate" => {
                let command: Value = serde_json::from_slice(body).ok()?;
                json!({"undone": command.pointer(&format!("/results/{step}/id"))?})
            }
            _ => return None,
        };
        let answer = Bytes::from(result.to_string());
        done.insert(key.to_owned(), answer.clone());
        Some(answer)
    }
}

/// Serves one request.
async fn serve(
    ledger: Arc<Ledger>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    ledger.requests.fetch_add(1, Ordering::Relaxed);
    let name = req.uri().path().trim_start_matches('/').to_owned();
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let answer = if parts.method == hyper::Method::POST {
        ledger.answer(&name, &parts.headers, &body)
    } else {
        None
    };
    let mut response = match answer {
        Some(result) => Response::new(Full::new(result)),
        None => {
            ledger.bad.fetch_add(1, Ordering::Relaxed);
            let mut r = Response::new(Full::new(Bytes::from_static(
                br#"{"reason": "not a saga command of this participant"}"#,
            )));
            *r.status_mut() = StatusCode::BAD_REQUEST;
            r
        }
    };
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// The participants' server; [`Participants::stop`] ends it and returns the counts.
pub(crate) struct Participants {
    addr: SocketAddr,
    ledger: Arc<Ledger>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<f64>>,
}

impl Participants {
    /// Starts it on 127.0.0.1 (a free port), on the thread `bench-participants`.
    pub(crate) fn start() -> anyhow::Result<Self> {
        let ledger = Arc::new(Ledger::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready, bound) = std::sync::mpsc::channel::<anyhow::Result<SocketAddr>>();
        let state = ledger.clone();
        let thread = std::thread::Builder::new()
            .name("bench-participants".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready.send(Err(e.into()));
                        return 0.0;
                    }
                };
                rt.block_on(accept(state, ready, stopped));
                cpu::this_thread_s()
            })?;
        let addr = bound.recv()??;
        Ok(Self {
            addr,
            ledger,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The base URL (`/{name}` is participant `name`).
    pub(crate) fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server; its counts and its thread's CPU time.
    pub(crate) fn stop(mut self) -> Counts {
        self.shut();
        let cpu_s = self.thread.take().map_or(0.0, |t| t.join().unwrap_or(0.0));
        Counts {
            cpu_s,
            ..self.ledger.counts()
        }
    }

    fn shut(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for Participants {
    fn drop(&mut self) {
        self.shut();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Accepts connections until `stopped`, each served on a task of its own (keep-alive).
async fn accept(
    ledger: Arc<Ledger>,
    ready: std::sync::mpsc::Sender<anyhow::Result<SocketAddr>>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(e.into()));
            return;
        }
    };
    let _ = ready.send(listener.local_addr().map_err(Into::into));
    loop {
        let stream = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors, say: wait a moment rather than spin.
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let ledger = ledger.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| serve(ledger.clone(), req));
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(key: &str, step: &str, action: &str) -> hyper::HeaderMap {
        let mut h = hyper::HeaderMap::new();
        for (name, value) in [
            ("idempotency-key", key),
            ("warren-saga-id", "s1"),
            ("warren-saga-step", step),
            ("warren-saga-action", action),
        ] {
            h.insert(name, value.parse().expect("header value"));
        }
        h
    }

    #[test]
    fn an_effect_is_done_once_per_key_and_a_compensation_undoes_its_result() {
        let l = Ledger::default();
        let first = l.answer("card", &headers("s1:2:execute", "charge", "execute"), b"{}");
        let again = l.answer("card", &headers("s1:2:execute", "charge", "execute"), b"{}");
        assert_eq!(first.as_deref(), Some(&br#"{"id":"card-0"}"#[..]));
        assert_eq!(first, again);
        let refund = l.answer(
            "card",
            &headers("s1:2:compensate", "charge", "compensate"),
            br#"{"results": {"charge": {"id": "card-0"}}}"#,
        );
        assert_eq!(refund.as_deref(), Some(&br#"{"undone":"card-0"}"#[..]));
        let c = l.counts();
        assert_eq!((c.effects, c.repeats), (2, 1));
    }

    #[test]
    fn a_request_outside_the_contract_is_refused() {
        let l = Ledger::default();
        assert!(l.answer("card", &hyper::HeaderMap::new(), b"{}").is_none());
        // The step belongs to another participant.
        assert!(
            l.answer("card", &headers("s1:0:execute", "create", "execute"), b"{}")
                .is_none()
        );
        assert_eq!(l.counts().effects, 0);
    }

    #[test]
    fn every_command_has_its_subscription() {
        let subs = subscriptions("http://127.0.0.1:1", 8);
        let defs = definitions(1000);
        for step in defs[0]["steps"].as_array().expect("steps") {
            for field in ["command", "compensation"] {
                let Some(cmd) = step[field].as_str() else {
                    continue;
                };
                assert_eq!(
                    subs.iter()
                        .filter(|s| s.commands.iter().any(|c| c == cmd))
                        .count(),
                    1,
                    "{cmd}"
                );
            }
        }
        assert!(subs.iter().all(|s| s.concurrency == 8));
    }

    #[test]
    fn warren_accepts_the_definitions_with_these_subscriptions() {
        let mut settings = warren::Settings {
            subscriptions: subscriptions("http://127.0.0.1:1", 4),
            ..warren::Settings::default()
        };
        let topology =
            warren::broker::topology::Topology::for_settings(&settings).expect("topology");
        let builtin = warren::saga::builtin(&settings);
        let defs = warren::saga::check(&definitions(5_000).to_string(), &topology, &builtin)
            .expect("the file passes warren's checks");
        assert_eq!(defs.len(), 1);
        assert_eq!(defs[0].kind, KIND);
        // The order saga's shape: as many steps.
        assert_eq!(defs[0].steps.len(), builtin[0].steps.len());
        // Without the subscriptions nothing handles the commands, and the check says so.
        settings.subscriptions.clear();
        let bare = warren::broker::topology::Topology::for_settings(&settings).expect("topology");
        assert!(warren::saga::check(&definitions(5_000).to_string(), &bare, &builtin).is_err());
    }
}
