//! HTTPS subscriptions against real TLS receivers started here (rustls servers with the test
//! certificates `scripts/services.sh` makes in `WARREN_TEST_TLS_DIR`): a receiver whose
//! certificate chains to the subscription's `tls_ca_file` gets its deliveries, one behind a
//! CA warren was not told of fails the handshake (the error tier, then parked), and a
//! receiver that asks for a client certificate gets one from `tls_client_cert_file`.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde_json::json;
use warp::Filter;

use warren::{
    broker::names::{self, header_str},
    config::SubscriptionSettings,
};

use crate::helpers::{TestApp, eventually, spawn_worker_with};

fn tls_dir() -> PathBuf {
    std::env::var("WARREN_TEST_TLS_DIR")
        .unwrap_or_else(|_| "/etc/rabbitmq/tls".to_owned())
        .into()
}

fn certs(file: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(tls_dir().join(file))
        .expect("read certificates")
        .collect::<Result<_, _>>()
        .expect("parse certificates")
}

/// A real HTTPS receiver on 127.0.0.1 with the test server certificate (SAN 127.0.0.1):
/// `POST /{name}` answers 204 and records `(name, ce-id)`; a failed TLS handshake is counted.
struct TlsReceiver {
    got: Arc<Mutex<Vec<(String, String)>>>,
    failed_handshakes: Arc<AtomicUsize>,
    addr: SocketAddr,
}

impl TlsReceiver {
    /// `client_auth`: the receiver asks for a client certificate signed by the test CA and
    /// refuses the handshake without one.
    async fn start(client_auth: bool) -> Self {
        warren::tls::install_crypto_provider();
        let key = PrivateKeyDer::from_pem_file(tls_dir().join("server.key")).expect("server key");
        let builder = rustls::ServerConfig::builder();
        let builder = if client_auth {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs("ca.pem") {
                roots.add(c).expect("CA");
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let config = builder
            .with_single_cert(certs("server.pem"), key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let got = Arc::new(Mutex::new(Vec::new()));
        let failed_handshakes = Arc::new(AtomicUsize::new(0));
        let record = got.clone();
        let route = warp::post()
            .and(warp::path::param::<String>())
            .and(warp::header::optional::<String>("ce-id"))
            .map(move |name: String, id: Option<String>| {
                record
                    .lock()
                    .expect("lock")
                    .push((name, id.unwrap_or_default()));
                warp::http::StatusCode::NO_CONTENT
            });
        let service = warp::service(route);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let failed = failed_handshakes.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, service, failed) =
                    (acceptor.clone(), service.clone(), failed.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        failed.fetch_add(1, Ordering::SeqCst);
                        return;
                    };
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(
                            hyper_util::rt::TokioIo::new(tls),
                            hyper_util::service::TowerToHyperService::new(service),
                        )
                        .await;
                });
            }
        });
        Self {
            got,
            failed_handshakes,
            addr,
        }
    }

    fn got(&self, name: &str) -> Vec<String> {
        self.got
            .lock()
            .expect("lock")
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, id)| id.clone())
            .collect()
    }

    fn subscription(&self, name: &str, ca: &str) -> SubscriptionSettings {
        let mut s = SubscriptionSettings::new(
            name,
            format!("https://127.0.0.1:{}/{name}", self.addr.port()),
        );
        s.events = vec!["order.*".to_owned()];
        s.tls_ca_file = Some(tls_dir().join(ca));
        s.max_attempts = Some(1);
        s
    }
}

async fn publish(app: &TestApp) -> String {
    let r = app.post_event("order.created", &json!({"n": 1})).await;
    assert_eq!(r.status(), 202);
    r.json::<serde_json::Value>().await.expect("json")["event_id"]
        .as_str()
        .expect("event_id")
        .to_owned()
}

/// The one parked message of `queue`: its `x-warren-http-outcome` header, after checking it
/// was parked for having used its attempts with no HTTP response.
async fn parked_outcome(app: &TestApp, queue: &str) -> String {
    let parked = eventually(
        Duration::from_secs(20),
        &format!("{queue} parked"),
        || async {
            let m = app.drain(queue).await;
            (!m.is_empty()).then_some(m)
        },
    )
    .await;
    assert_eq!(parked.len(), 1, "{queue}: one message");
    let p = &parked[0].delivery.properties;
    assert_eq!(header_str(p, names::H_REASON).as_deref(), Some("exhausted"));
    assert_eq!(header_str(p, "x-warren-http-status"), None, "no response");
    header_str(p, "x-warren-http-outcome").expect("outcome header")
}

#[tokio::test]
async fn https_receivers_are_trusted_through_the_ca_file_and_get_a_client_certificate_when_they_ask()
 {
    let plain = TlsReceiver::start(false).await;
    let mutual = TlsReceiver::start(true).await;
    let trusted = plain.subscription("trusted", "ca.pem");
    let untrusted = plain.subscription("untrusted", "other-ca.pem");
    let mut with_cert = mutual.subscription("with-cert", "ca.pem");
    with_cert.tls_client_cert_file = Some(tls_dir().join("client.pem"));
    with_cert.tls_client_key_file = Some(tls_dir().join("client.key"));
    let without_cert = mutual.subscription("without-cert", "ca.pem");
    let subs = vec![trusted, untrusted, with_cert, without_cert];
    let modules: Vec<String> = subs.iter().map(|s| format!("sub.{}", s.name)).collect();
    let app = spawn_worker_with(
        move |mut s| {
            s.subscriptions = subs;
            s
        },
        move |a| a.modules(modules),
    )
    .await;
    let id = publish(&app).await;

    for name in ["trusted", "with-cert"] {
        let rx = if name == "trusted" { &plain } else { &mutual };
        let got = eventually(
            Duration::from_secs(20),
            &format!("{name} delivered"),
            || async {
                let got = rx.got(name);
                (!got.is_empty()).then_some(got)
            },
        )
        .await;
        assert_eq!(got, vec![id.clone()], "{name}: the event, once, over TLS");
    }
    for queue in ["warren.sub.untrusted.dead", "warren.sub.without-cert.dead"] {
        let outcome = parked_outcome(&app, queue).await;
        assert!(
            ["connect", "transport"].contains(&outcome.as_str()),
            "{queue}: a TLS failure is in the error tier: {outcome}"
        );
    }
    assert!(
        plain.got("untrusted").is_empty(),
        "no request over an untrusted TLS"
    );
    assert!(
        mutual.got("without-cert").is_empty(),
        "no request without a client certificate"
    );
    // The faults landed where they should: each receiver saw a handshake fail (warren's, for
    // the unknown CA; its own refusal, for the missing client certificate).
    assert!(plain.failed_handshakes.load(Ordering::SeqCst) >= 1);
    assert!(mutual.failed_handshakes.load(Ordering::SeqCst) >= 1);
    app.settled(&[
        ("warren.sub.trusted", 0),
        ("warren.sub.untrusted", 0),
        ("warren.sub.with-cert", 0),
        ("warren.sub.without-cert", 0),
    ])
    .await;
    app.cleanup().await;
}
