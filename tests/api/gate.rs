//! A TCP gate in front of the real RabbitMQ: one test's warren connects through it, and the
//! test can take "the broker" away from that warren alone (every connection cut, new ones
//! refused) and give it back, while the other tests keep the broker.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// A gate between warren and the broker.
pub struct BrokerGate {
    /// The port warren connects to.
    pub port: u16,
    open: Arc<AtomicBool>,
    /// Bumped on each close: connections of an older generation end.
    generation: watch::Sender<u64>,
    stop: tokio_util::sync::CancellationToken,
}

impl BrokerGate {
    /// Opens a gate to the broker at `upstream` (host:port).
    pub async fn new(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind gate");
        let port = listener.local_addr().expect("addr").port();
        let open = Arc::new(AtomicBool::new(true));
        let (generation, _) = watch::channel(0u64);
        let stop = tokio_util::sync::CancellationToken::new();
        let (o, g, s) = (open.clone(), generation.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    () = s.cancelled() => return,
                    c = listener.accept() => c,
                };
                let Ok((inbound, _)) = conn else { continue };
                if !o.load(Ordering::SeqCst) {
                    drop(inbound); // refused: the broker is "down"
                    continue;
                }
                let mut gen_rx = g.subscribe();
                let upstream = upstream.clone();
                let s = s.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let mut inbound = inbound;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = gen_rx.changed() => {}
                        () = s.cancelled() => {}
                    }
                });
            }
        });
        Self {
            port,
            open,
            generation,
            stop,
        }
    }

    /// A gate to the test broker (`WARREN_TEST_AMQP_URL`'s host and port).
    pub async fn to_test_broker() -> Self {
        let base = url::Url::parse(&crate::helpers::amqp_base()).expect("amqp url");
        let upstream = format!(
            "{}:{}",
            base.host_str().unwrap_or("127.0.0.1"),
            base.port().unwrap_or(5672)
        );
        Self::new(upstream).await
    }

    /// Cuts every connection through the gate and refuses new ones.
    pub fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Lets connections through again.
    pub fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for BrokerGate {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
