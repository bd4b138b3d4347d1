//! OTLP export (built with `--features otlp`): spans reach a collector over OTLP/HTTP, in the
//! caller's trace.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{eventually, spawn_app_with};

/// A minimal OTLP/HTTP receiver on its own thread and runtime (`flush` blocks the test's
/// thread until the export is answered): answers 200 to every request, keeps the bodies.
async fn collector() -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let addr = std_listener.local_addr().expect("addr");
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let keep = bodies.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("collector runtime");
    std::thread::spawn(move || {
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let keep = keep.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    loop {
                        let Ok(n) = sock.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if buf.len() < end + 4 + len {
                            continue;
                        }
                        keep.lock()
                            .expect("lock")
                            .push(buf[end + 4..end + 4 + len].to_vec());
                        buf.drain(..end + 4 + len);
                        let _ = sock
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                            .await;
                    }
                });
            }
        })
    });
    (format!("http://{addr}/v1/traces"), bodies)
}

#[tokio::test]
async fn spans_are_exported_over_otlp_in_the_callers_trace() {
    let (endpoint, bodies) = collector().await;
    // Each nextest test is its own process: this subscriber (with the OTLP layer) is the one
    // the app's later `init` call leaves in place.
    warren::telemetry::init(&warren::config::LogSettings {
        filter: "info".into(),
        otlp_endpoint: Some(endpoint),
        ..Default::default()
    });
    let app = spawn_app_with(|s| s, |a| a).await;
    let trace = "5bf92f3577b34da6a3ce929d0e0e4799";
    let r = app
        .http
        .post(format!("{}/v1/events/order.created", app.base))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .json(&json!({"order_id": 1}))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 202);
    // The published message names the exported HTTP span, in the caller's trace.
    let msgs = app.drain("warren.audit").await;
    let tp = warren::broker::names::header_str(&msgs[0].delivery.properties, "traceparent")
        .expect("traceparent");
    assert_eq!(&tp[3..35], trace);
    let trace_bytes = hex::decode(trace).expect("hex");
    let span_bytes = hex::decode(&tp[36..52]).expect("hex");
    eventually(
        Duration::from_secs(20),
        "the span reaches the collector",
        || async {
            warren::telemetry::flush();
            let got = bodies.lock().expect("lock").clone();
            eprintln!(
                "DEBUG bodies: {:?}",
                got.iter().map(Vec::len).collect::<Vec<_>>()
            );
            got.iter()
                .any(|b| {
                    b.windows(16).any(|w| w == trace_bytes.as_slice())
                        && b.windows(8).any(|w| w == span_bytes.as_slice())
                })
                .then_some(())
        },
    )
    .await;
    app.cleanup().await;
}
