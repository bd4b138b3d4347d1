//! Several broker addresses (`amqp.urls`, `amqp.management_urls`): a node that does not
//! answer is passed over, and a lost connection is made again on the next node. The nodes here
//! are one broker's two listeners (plain 5672 and TLS 5671) and a port where nothing listens;
//! the three-node cluster's own tests kill and cut real nodes.

use std::{process::Command, time::Duration};

use serde_json::{Value, json};
use warren::{
    broker::{Broker, topology::encode},
    config::Secret,
};

use crate::helpers::{TestDb, TestVhost, amqp_base, eventually, management_url, spawn_app_with};

/// A port on loopback where nothing listens: a connection there is refused at once.
const DEAD: &str = "127.0.0.1:1";

fn with_dead_node(url: &str) -> String {
    let mut u = url::Url::parse(url).expect("url");
    u.set_port(Some(1)).expect("port");
    u.to_string()
}

#[tokio::test]
async fn a_node_that_does_not_answer_is_passed_over_by_publisher_management_api_and_cli() {
    let app = spawn_app_with(
        |mut s| {
            let real = s.amqp.url.expose().to_owned();
            s.amqp.urls = vec![
                Secret::new(with_dead_node(&real)),
                Secret::new(real.clone()),
                Secret::new(with_dead_node(&real)),
            ];
            s.amqp.management_urls = vec![
                Secret::new(with_dead_node(&management_url())),
                Secret::new(management_url()),
            ];
            s
        },
        |a| a,
    )
    .await;
    // The topology was declared (spawn waits for it) through the one live node; an event
    // is accepted with a confirm and lands in its queue.
    let r = app
        .post_event("order.created", &json!({"via": "the live node"}))
        .await;
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.expect("json");
    let id = body["event_id"].as_str().expect("event_id").to_owned();
    let got = app.drain("warren.audit").await;
    assert_eq!(
        got.iter()
            .map(|m| crate::helpers::message_id(&m.properties))
            .collect::<Vec<_>>(),
        vec![id]
    );
    // Every configured node is reported, the dead ones with no connection.
    let metrics = app.metrics_text().await;
    let live_node = url::Url::parse(&amqp_base()).expect("url");
    let live_label = format!(
        "{}:{}",
        live_node.host_str().expect("host"),
        live_node.port().unwrap_or(5672)
    );
    let line = |node: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("amqp_node_connections{{node=\"{node}\"}}")))
            .map(|l| l.rsplit(' ').next().unwrap_or("").to_owned())
    };
    assert_eq!(line(DEAD).as_deref(), Some("0"), "{metrics}");
    let live: u64 = line(&live_label)
        .expect("the live node reported")
        .parse()
        .expect("a count");
    assert!(live >= 1, "connections on {live_label}: {live}");

    // The CLI takes the lists from the environment, comma-separated: `topology verify` reaches
    // the management API through its second address.
    let out = Command::new(env!("CARGO_BIN_EXE_warren"))
        .env(
            "WARREN_AMQP__URLS",
            format!(
                "{},{}",
                with_dead_node(&app.vhost.amqp_url()),
                app.vhost.amqp_url()
            ),
        )
        .env(
            "WARREN_AMQP__MANAGEMENT_URLS",
            format!(
                "{}, {}",
                with_dead_node(&management_url()),
                management_url()
            ),
        )
        .env("WARREN_DATABASE__URL", "sqlite::memory:")
        .args(["topology", "verify"])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("topology matches"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    app.cleanup().await;
}

fn amqps_base() -> String {
    std::env::var("WARREN_TEST_AMQPS_URL")
        .unwrap_or_else(|_| "amqps://guest:guest@127.0.0.1:5671".to_owned())
}

fn tls_ca() -> std::path::PathBuf {
    std::path::Path::new(
        &std::env::var("WARREN_TEST_TLS_DIR").unwrap_or_else(|_| "/etc/rabbitmq/tls".to_owned()),
    )
    .join("ca.pem")
}

#[tokio::test]
async fn a_lost_connection_is_made_again_on_the_next_node_with_tls_per_node() {
    let vhost = TestVhost::new().await;
    let db = TestDb::new().await;
    let mut settings = crate::helpers::test_settings(&vhost, &db.url);
    let plain = vhost.amqp_url();
    let tls = format!("{}/{}", amqps_base(), encode(&vhost.name));
    settings.amqp.urls = vec![Secret::new(plain), Secret::new(tls)];
    settings.amqp.tls_ca_file = Some(tls_ca());
    settings.amqp.pool_size = 1;
    let name = format!("warren nodes {}", uuid::Uuid::now_v7().simple());
    let broker = Broker::new(&settings, &name).expect("broker");
    broker.ping().await.expect("a first connection");
    let before = broker.connections_by_node();
    assert_eq!(before.len(), 2);
    let (first, _) = before
        .iter()
        .find(|(_, n)| *n == 1)
        .cloned()
        .unwrap_or_else(|| panic!("one node holds the connection: {before:?}"));
    let (second, _) = before
        .iter()
        .find(|(node, _)| *node != first)
        .cloned()
        .expect("the other node");

    // The broker closes that connection (as a node going away does), seen by the management
    // API: exactly one, on the first node's port.
    let conns = eventually(Duration::from_secs(10), "the connection listed", || async {
        let c = vhost.connections_named(&name).await;
        (c.len() == 1).then_some(c)
    })
    .await;
    let port = first.rsplit(':').next().expect("port");
    assert_eq!(conns[0]["port"].to_string(), port, "{conns:?}");
    let conn_name = conns[0]["name"].as_str().expect("name").to_owned();
    let path = format!(
        "connections/{}",
        url::form_urlencoded::byte_serialize(conn_name.as_bytes())
            .collect::<String>()
            .replace('+', "%20")
    );
    vhost.api.delete(&path).await.expect("close the connection");

    // The next connection the pool makes goes to the other node, over TLS when that one is
    // amqps: channels work again, and the counts moved.
    eventually(
        Duration::from_secs(20),
        "a connection on the next node",
        || async {
            broker.ping().await.ok()?;
            let now = broker.connections_by_node();
            now.iter()
                .any(|(node, n)| *node == second && *n == 1)
                .then_some(())
        },
    )
    .await;
    let after = broker.connections_by_node();
    assert!(
        after.iter().any(|(node, n)| *node == first && *n == 0),
        "{after:?}"
    );
    let conns = eventually(
        Duration::from_secs(10),
        "the new connection listed",
        || async {
            let c = vhost.connections_named(&name).await;
            (c.len() == 1 && c[0]["name"] != conn_name.as_str()).then_some(c)
        },
    )
    .await;
    let second_port = second.rsplit(':').next().expect("port");
    assert_eq!(conns[0]["port"].to_string(), second_port, "{conns:?}");
    assert_eq!(
        conns[0]["ssl"],
        Value::Bool(
            url::Url::parse(&amqps_base())
                .expect("amqps url")
                .port()
                .unwrap_or(5671)
                .to_string()
                == second_port
        ),
        "TLS on the TLS node only: {conns:?}"
    );
    broker.close();
    vhost.delete().await;
    db.drop_db().await;
}
