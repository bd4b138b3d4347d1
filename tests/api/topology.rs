//! The topology file: RabbitMQ imports it unchanged; warren declares and verifies it.

use std::process::Command;

use warren::broker::{
    Broker,
    topology::{BUILTIN, Topology, encode},
};

use crate::helpers::{TestVhost, management_url, test_settings};

fn warren_cmd(vhost: &TestVhost) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warren"));
    cmd.env("WARREN_AMQP__URL", vhost.amqp_url())
        .env("WARREN_AMQP__MANAGEMENT_URL", management_url())
        .env("WARREN_DATABASE__URL", "sqlite::memory:");
    cmd
}

#[tokio::test]
async fn topology_file_imports_unchanged_and_verifies() {
    let vhost = TestVhost::new().await;
    // RabbitMQ's own import takes the file as it is in the repository.
    let file: serde_json::Value = serde_json::from_str(BUILTIN).expect("json");
    vhost
        .api
        .post(&format!("definitions/{}", encode(&vhost.name)), &file)
        .await
        .expect("RabbitMQ accepts broker-topology.json");
    let topology = Topology::builtin().expect("parses");
    let drift = topology
        .verify(&management_url(), &vhost.name)
        .await
        .expect("verify");
    assert!(drift.is_empty(), "imported topology verifies: {drift:?}");

    // warren's own declaration on top of the import is a no-op (no 406: same arguments).
    let settings = test_settings(&vhost, "sqlite::memory:");
    let broker = Broker::new(&settings, "test").expect("broker");
    broker.declare(&topology).await.expect("idempotent declare");
    broker.declare(&topology).await.expect("and again");

    let out = warren_cmd(&vhost)
        .args(["topology", "verify"])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Drift: a queue deleted, a binding removed, a stray exchange added.
    let v = encode(&vhost.name);
    vhost
        .api
        .delete(&format!("queues/{v}/warren.email.dead"))
        .await
        .expect("delete queue");
    vhost
        .api
        .delete(&format!(
            "bindings/{v}/e/warren.events/q/warren.notifications/user.*"
        ))
        .await
        .expect("delete binding");
    vhost
        .api
        .put(
            &format!("exchanges/{v}/warren.stray"),
            &serde_json::json!({"type": "fanout", "durable": true}),
        )
        .await
        .expect("add exchange");
    let out = warren_cmd(&vhost)
        .args(["topology", "verify"])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("missing: queue warren.email.dead"),
        "{stdout}"
    );
    assert!(
        stdout.contains("missing: binding warren.events -> warren.notifications (user.*)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("unexpected: exchange warren.stray"),
        "{stdout}"
    );

    // `topology apply` repairs what is missing.
    let out = warren_cmd(&vhost)
        .args(["topology", "apply"])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let drift = topology
        .verify(&management_url(), &vhost.name)
        .await
        .expect("verify");
    let left: Vec<String> = drift.iter().map(ToString::to_string).collect();
    assert_eq!(
        left,
        ["unexpected: exchange warren.stray"],
        "only the stray exchange is left (apply adds, never removes)"
    );
    broker.close();
    vhost.delete().await;
}

#[tokio::test]
async fn a_queue_with_other_arguments_is_reported_not_silently_kept() {
    let vhost = TestVhost::new().await;
    let v = encode(&vhost.name);
    // An operator created warren.email by hand as a classic queue without dead-lettering.
    vhost
        .api
        .put(
            &format!("queues/{v}/warren.email"),
            &serde_json::json!({"durable": true, "arguments": {}}),
        )
        .await
        .expect("create queue");
    let topology = Topology::builtin().expect("parses");
    let settings = test_settings(&vhost, "sqlite::memory:");
    let broker = Broker::new(&settings, "test").expect("broker");
    let err = broker
        .declare(&topology)
        .await
        .expect_err("406 is an error");
    // The broker's 406 for that queue, naming the argument that differs.
    let err = err.to_string();
    assert!(
        err.starts_with("declaring queue warren.email failed: ")
            && err.contains("PRECONDITION_FAILED - inequivalent arg 'x-dead-letter-exchange'"),
        "{err}"
    );
    let out = warren_cmd(&vhost)
        .args(["topology", "verify"])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("different: queue warren.email: argument x-queue-type"),
        "{stdout}"
    );
    broker.close();
    vhost.delete().await;
}

/// A parking queue declared by a warren from before the parking queues' delivery limit (no
/// `x-delivery-limit`: on RabbitMQ 4.0 the default of 20) cannot take the argument in place:
/// warren keeps it as it is and starts, and `topology verify` reports the difference.
#[tokio::test]
async fn a_parking_queue_from_before_the_delivery_limit_is_kept_and_reported() {
    let vhost = TestVhost::new().await;
    let v = encode(&vhost.name);
    vhost
        .api
        .put(
            &format!("queues/{v}/warren.email.dead"),
            &serde_json::json!({"durable": true, "arguments": {"x-queue-type": "quorum"}}),
        )
        .await
        .expect("create queue");
    let topology = Topology::builtin().expect("parses");
    let settings = test_settings(&vhost, "sqlite::memory:");
    let broker = Broker::new(&settings, "test").expect("broker");
    broker.declare(&topology).await.expect("declared around it");
    broker.declare(&topology).await.expect("and again");
    let drift: Vec<String> = topology
        .verify(&management_url(), &vhost.name)
        .await
        .expect("verify")
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        drift,
        [
            "different: queue warren.email.dead: argument x-delivery-limit: expected 1000000, broker has null"
        ],
        "the rest of the topology is declared"
    );
    broker.close();
    vhost.delete().await;
}

#[test]
fn export_for_a_whole_broker_import_names_the_vhost() {
    let out = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["topology", "export", "--vhost", "/"])
        .output()
        .expect("runs");
    assert!(out.status.success());
    let t: Topology = serde_json::from_slice(&out.stdout).expect("definitions");
    assert!(t.exchanges.iter().all(|e| e.vhost.as_deref() == Some("/")));
    assert_eq!(
        t.queues.len(),
        Topology::builtin().expect("parses").queues.len()
    );
}
