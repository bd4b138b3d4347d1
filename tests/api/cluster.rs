//! The cluster suite: warren on the three-node RabbitMQ cluster of `scripts/cluster.sh`
//! (`c1`..`c3@localhost`, AMQP 5681-5683), its three nodes in `amqp.urls` and
//! `amqp.management_urls`, under steady event, job and saga load while a node is SIGKILLed,
//! the nodes restart in turn, a node is cut off from the others, and two of three go down.
//!
//! Every run ends with the chaos suite's ledger check (each event answered 202 handled once,
//! by identity, after every queue, retry tier and dead-letter queue has settled on every node)
//! and a saga check: every order answered 202 has its saga, every saga ended, and stock and
//! balances are what the completed sagas took, exactly. Each run prints a `LEDGER` and a
//! `CLUSTER` line (see `docs/chaos.md`). The tests share the cluster: they run one at a time
//! (nextest test group `cluster`), and each starts by bringing it back whole.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use entities::{accounts, inventory, orders, sagas};
use sea_orm::EntityTrait;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use warren::{Role, config::Secret};

use crate::{
    chaos::{Ledger, check_ledger, load, repo_script, run, within},
    helpers::{TestApp, TestDb, TestVhost, eventually, spawn_roles_in},
    scale::Scrape,
};

/// The cluster's nodes: `c1`..`c3`.
const NODES: [&str; 3] = ["c1", "c2", "c3"];
/// The queues the event load goes through.
const WORK: [&str; 2] = ["warren.audit", "warren.notifications"];
/// What the saga load draws on: more than it can take, so every saga can complete.
const STOCK: i64 = 1_000_000;
const BALANCE: i64 = 100_000_000;
const USERS: usize = 4;

fn amqp(node: usize) -> String {
    format!("amqp://guest:guest@127.0.0.1:{}", 5680 + node)
}

fn management(node: usize) -> String {
    format!("http://guest:guest@127.0.0.1:{}", 15680 + node)
}

fn prometheus(node: usize) -> String {
    format!("http://127.0.0.1:{}", 15780 + node)
}

fn index(node: &str) -> usize {
    NODES
        .iter()
        .position(|n| *n == node)
        .unwrap_or_else(|| panic!("no node {node}"))
        + 1
}

/// `scripts/cluster.sh` with `args`, asserting it succeeded.
fn cluster(args: &[&str]) {
    run(&repo_script("cluster.sh"), args);
}

/// Node names (`c1`..) the cluster reports running, as node `via` sees them; `None` when its
/// management API does not answer.
async fn running_nodes(via: usize) -> Option<HashSet<String>> {
    let nodes: Vec<Value> = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/api/nodes", 15680 + via))
        .basic_auth("guest", Some("guest"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?
        .error_for_status()
        .ok()?
        .json()
        .await
        .ok()?;
    Some(
        nodes
            .iter()
            .filter(|n| n["running"] == true)
            .filter_map(|n| n["name"].as_str()?.strip_suffix("@localhost"))
            .map(str::to_owned)
            .collect(),
    )
}

/// Whether every node answers and sees all three running.
async fn whole() -> bool {
    for via in 1..=3 {
        if running_nodes(via).await.is_none_or(|r| r.len() != 3) {
            return false;
        }
    }
    true
}

/// Brings the cluster back whole (no cut, every node up and joined) when it is not.
async fn ensure_whole() {
    if !whole().await {
        cluster(&["heal"]);
        cluster(&["up"]);
    }
    eventually(Duration::from_secs(60), "the cluster whole", || async {
        whole().await.then_some(())
    })
    .await;
}

/// The quorum queue `queue` of the app's vhost as the management API shows it.
async fn queue(app: &TestApp, q: &str) -> Option<Value> {
    app.vhost
        .api
        .get_json(&format!(
            "queues/{}/{}",
            warren::broker::topology::encode(&app.vhost.name),
            warren::broker::topology::encode(q)
        ))
        .await
        .ok()
}

/// The node (`c1`..) leading `q`, and its members.
async fn leader_and_members(app: &TestApp, q: &str) -> Option<(String, Vec<String>)> {
    let v = queue(app, q).await?;
    let short = |s: &Value| s.as_str()?.strip_suffix("@localhost").map(str::to_owned);
    let leader = short(&v["leader"])?;
    let members = v["members"].as_array()?.iter().filter_map(short).collect();
    Some((leader, members))
}

/// Waits until the cluster is whole again and every work queue has its members online.
async fn whole_again(app: &TestApp) {
    eventually(
        Duration::from_secs(120),
        "the cluster whole again",
        || async { whole().await.then_some(()) },
    )
    .await;
    all_members_online(app).await;
}

/// Waits until each work queue has its three members online (after a node came back).
async fn all_members_online(app: &TestApp) {
    eventually(
        Duration::from_secs(90),
        "every work queue with three members online",
        || async {
            for q in WORK {
                let v = queue(app, q).await?;
                if v["online"].as_array().map_or(0, Vec::len) != 3 {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
}

/// warren on the cluster: HTTP front, workers and the saga engine in one process, its
/// connections spread over the three nodes, the audit, notifications and order saga modules.
async fn spawn_cluster() -> TestApp {
    // Logging, and the TLS crypto provider the HTTP clients below need.
    warren::telemetry::init(&warren::config::LogSettings {
        filter: std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
        ..Default::default()
    });
    ensure_whole().await;
    let all = |f: fn(usize) -> String| (1..=3).map(f).collect::<Vec<_>>().join(",");
    let vhost = TestVhost::new_on(&all(management), &amqp(1), &all(prometheus)).await;
    let db = TestDb::new_on(&crate::helpers::pg_base()).await;
    let vhost_path = format!("/{}", warren::broker::topology::encode(&vhost.name));
    let mut app = spawn_roles_in(
        vhost,
        db,
        &[Role::Http, Role::Worker, Role::Saga],
        |s| {
            let mut s = crate::chaos::chaos_settings(s);
            s.amqp.urls = (1..=3)
                .map(|n| Secret::new(format!("{}{vhost_path}", amqp(n))))
                .collect();
            s.amqp.management_urls = (1..=3).map(|n| Secret::new(management(n))).collect();
            // Five modules, the saga engine and the front share it, on a busy 2-core machine.
            s.database.max_connections = 20;
            s.saga.deadline_ms = 120_000;
            s.saga.tick_ms = 100;
            s.saga.relay_ms = 200;
            s.saga.relay_grace_ms = 1_000;
            s
        },
        |a| a.modules(["audit", "notifications", "orders", "inventory", "payments"]),
    )
    .await;
    app.http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    // Every work queue was declared with a member on each node.
    for q in WORK {
        let (_, members) = eventually(
            Duration::from_secs(30),
            &format!("{q} listed with its members"),
            || leader_and_members(&app, q),
        )
        .await;
        assert_eq!(
            members.len(),
            3,
            "{q} has a member on each node: {members:?}"
        );
    }
    let skus = json!({"C-SKU-0": STOCK, "C-SKU-1": STOCK});
    let users: serde_json::Map<String, Value> = (0..USERS)
        .map(|u| (format!("C-U-{u}"), json!(BALANCE)))
        .collect();
    crate::saga::seed(&app, skus, Value::Object(users)).await;
    app
}

/// Orders answered 202, by saga id, with what each asked for.
#[derive(Debug, Default)]
struct Orders {
    accepted: HashMap<Uuid, String>,
    refused: usize,
}

/// Places an order every 100 ms until `stop`; a refused one (503, no answer) is counted and
/// not retried (it may have been stored: its order number is then found without a 202).
async fn order_load(app: &TestApp, stop: CancellationToken) -> Orders {
    let out = Mutex::new(Orders::default());
    let mut i = 0usize;
    while !stop.is_cancelled() {
        i += 1;
        let no = format!("C-{i}");
        let body = json!({
            "order_no": no,
            "user_id": format!("C-U-{}", i % USERS),
            "items": [{"sku": format!("C-SKU-{}", i % 2), "qty": 1 + (i % 3) as i64, "price": 10}],
            "total_amount": (1 + (i % 3) as i64) * 10,
        });
        let r = app
            .http
            .post(format!("{}/v1/orders", app.base))
            .json(&body)
            .send()
            .await;
        let saga = match r {
            Ok(r) if r.status() == 202 => r
                .json::<Value>()
                .await
                .ok()
                .and_then(|v| v["saga_id"].as_str()?.parse::<Uuid>().ok()),
            _ => None,
        };
        {
            let mut o = out.lock().expect("lock");
            match saga {
                Some(id) => {
                    assert!(o.accepted.insert(id, no).is_none(), "a saga id twice");
                }
                None => o.refused += 1,
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await; // pacing
    }
    out.into_inner().expect("lock")
}

/// Every saga ends, the sagas are exactly the answered orders' (plus refused ones that were
/// stored after all), none needs intervention, and stock and balances are what the
/// completed sagas took. Returns the sagas by status.
async fn check_sagas(app: &TestApp, placed: &Orders) -> HashMap<String, usize> {
    let db = app.db().await;
    let ended = |s: &sagas::Model| matches!(s.status.as_str(), "completed" | "compensated");
    let finals = eventually(Duration::from_secs(180), "every saga ends", || async {
        let rows = sagas::Entity::find().all(&db).await.ok()?;
        let outbox = entities::saga_outbox::Entity::find()
            .all(&db)
            .await
            .ok()?
            .len();
        (rows.len() >= placed.accepted.len() && rows.iter().all(ended) && outbox == 0)
            .then_some(rows)
    })
    .await;
    let ids: HashSet<Uuid> = finals.iter().map(|s| s.id).collect();
    let missing: Vec<&Uuid> = placed
        .accepted
        .keys()
        .filter(|id| !ids.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "orders answered 202 with no saga: {missing:?}"
    );
    let extra = finals.len() - placed.accepted.len();
    assert!(
        extra <= placed.refused,
        "{extra} sagas nobody was answered for, {} requests refused",
        placed.refused
    );
    let mut by_status: HashMap<String, usize> = HashMap::new();
    for s in &finals {
        *by_status.entry(s.status.clone()).or_default() += 1;
    }
    // The ledgers: each completed saga's order row holds what it took, and nothing else
    // was taken.
    let completed: HashSet<Uuid> = finals
        .iter()
        .filter(|s| s.status == "completed")
        .map(|s| s.id)
        .collect();
    let rows = orders::Entity::find().all(&db).await.expect("orders");
    let created: HashSet<Uuid> = rows
        .iter()
        .filter(|o| o.status == "created")
        .map(|o| o.saga_id)
        .collect();
    assert_eq!(created, completed, "created orders against completed sagas");
    let (taken, spent) = crate::saga::taken_by_created(&rows);
    for row in inventory::Entity::find().all(&db).await.expect("inventory") {
        assert_eq!(
            row.stock,
            STOCK - taken.get(&row.sku).copied().unwrap_or(0),
            "stock of {}",
            row.sku
        );
    }
    for row in accounts::Entity::find().all(&db).await.expect("accounts") {
        assert_eq!(
            row.balance,
            BALANCE - spent.get(&row.user_id).copied().unwrap_or(0),
            "balance of {}",
            row.user_id
        );
    }
    let _ = db.close().await;
    by_status
}

/// What a scenario measured.
struct Outcome {
    ledger: Ledger,
    orders: Orders,
    /// Events accepted between the fault's start and its end.
    during: usize,
}

/// Event and order load; after 100 accepted events, `fault` (which also recovers, and is
/// handed the event progress counter); then 100 more, the load stops, and the ledgers are
/// checked. Prints the `CLUSTER` line.
async fn scenario<F>(app: &TestApp, name: &str, fault: F) -> Outcome
where
    F: AsyncFnOnce(&TestApp, &Arc<AtomicUsize>),
{
    let stop = CancellationToken::new();
    let progress = Arc::new(AtomicUsize::new(0));
    let at_least = |n: usize| {
        let progress = progress.clone();
        async move {
            eventually(
                Duration::from_secs(120),
                &format!("{n} events accepted"),
                || async { (progress.load(Ordering::SeqCst) >= n).then_some(()) },
            )
            .await;
        }
    };
    let mut during = 0;
    let driver = async {
        at_least(100).await;
        let before = progress.load(Ordering::SeqCst);
        fault(app, &progress).await;
        let after = progress.load(Ordering::SeqCst);
        during = after - before;
        at_least(after + 100).await;
        stop.cancel();
    };
    let (ledger, orders, ()) = tokio::join!(
        load(app, 4, stop.clone(), progress.clone()),
        order_load(app, stop.clone()),
        driver
    );
    let mut also = crate::saga::SAGA_QUEUES.to_vec();
    also.push(("warren.audit", 0));
    check_ledger(app, name, &ledger, &also).await;
    let sagas = check_sagas(app, &orders).await;
    let metrics = Scrape(app.metrics_text().await);
    let duplicates: u64 = ["warren.audit", "warren.notifications", "warren.saga"]
        .iter()
        .map(|q| metrics.jobs(q, "duplicate"))
        .sum();
    let redelivered = crate::scale::redelivered(&app.vhost, &WORK)
        .await
        .unwrap_or(0);
    println!(
        "CLUSTER {name}: events accepted {} (via outbox {}, {during} during the fault) refused {} lost 0 | duplicates absorbed {duplicates}, redelivered {redelivered} | longest refusal {:.2}s, slowest 202 {:.2}s | orders accepted {} refused {}, sagas {sagas:?}",
        ledger.accepted.len(),
        ledger
            .accepted
            .iter()
            .filter(|(_, s)| s == "outbox")
            .count(),
        ledger.refused,
        ledger.longest_refusal.as_secs_f64(),
        ledger.slowest.as_secs_f64(),
        orders.accepted.len(),
        orders.refused,
    );
    Outcome {
        ledger,
        orders,
        during,
    }
}

/// Waits until `n` more events than now have been accepted.
async fn more_accepted(progress: &Arc<AtomicUsize>, n: usize, what: &str) {
    let from = progress.load(Ordering::SeqCst);
    eventually(Duration::from_secs(60), what, || async {
        (progress.load(Ordering::SeqCst) >= from + n).then_some(())
    })
    .await;
}

/// Waits (bounded) until warren holds a delivery of a work queue unacknowledged, so the
/// fault that follows lands on work in flight; returns how many it held.
async fn in_flight(app: &TestApp) -> u64 {
    within(Duration::from_secs(20), || async {
        let s = Scrape(app.metrics_text().await);
        let n: u64 = WORK.iter().map(|q| s.in_flight(q)).sum();
        (n > 0).then_some(n)
    })
    .await
    .expect("warren held no delivery of a work queue within 20 s")
}

#[tokio::test]
async fn the_node_leading_the_work_queues_sigkilled_and_restarted_loses_nothing() {
    let app = spawn_cluster().await;
    let (leader, _) = leader_and_members(&app, "warren.audit")
        .await
        .expect("warren.audit's leader");
    let out = scenario(&app, "leader SIGKILL", async |app, progress| {
        let held = in_flight(app).await;
        cluster(&["kill", &leader]);
        eprintln!("cluster: {leader} SIGKILLed with {held} deliveries in warren's hands");
        // Another node takes the lead, and work goes on while the node is down.
        let (new, _) = eventually(
            Duration::from_secs(60),
            "warren.audit led by another node",
            || async {
                leader_and_members(app, "warren.audit")
                    .await
                    .filter(|(l, _)| *l != leader)
            },
        )
        .await;
        more_accepted(progress, 50, "events accepted with the leader down").await;
        eprintln!("cluster: warren.audit now led by {new}");
        cluster(&["start", &leader]);
        all_members_online(app).await;
    })
    .await;
    assert!(out.during >= 50, "events accepted while the node was down");
    app.cleanup().await;
}

#[tokio::test]
async fn a_rolling_restart_of_every_node_loses_nothing() {
    let app = spawn_cluster().await;
    scenario(&app, "rolling restart", async |app, progress| {
        for node in NODES {
            in_flight(app).await;
            cluster(&["stop", node]);
            more_accepted(
                progress,
                30,
                &format!("events accepted with {node} stopped"),
            )
            .await;
            cluster(&["start", node]);
            // The next node goes down only once every queue has its three members again
            // (the rule for rolling restarts: never take away a queue's quorum).
            all_members_online(app).await;
        }
    })
    .await;
    app.cleanup().await;
}

#[tokio::test]
async fn a_node_cut_off_from_the_other_two_pauses_and_rejoins_losing_nothing() {
    let app = spawn_cluster().await;
    let (leader, _) = leader_and_members(&app, "warren.audit")
        .await
        .expect("warren.audit's leader");
    let cut = index(&leader);
    scenario(&app, "partition", async |app, progress| {
        in_flight(app).await;
        cluster(&["partition", &leader]);
        // The others see it go (net_ticktime), and pause_minority pauses it: its management
        // API stops answering.
        let other = if cut == 1 { 2 } else { 1 };
        eventually(
            Duration::from_secs(120),
            &format!("{leader} seen down by the majority and paused"),
            || async {
                let seen = running_nodes(other).await?;
                (!seen.contains(&leader) && running_nodes(cut).await.is_none()).then_some(())
            },
        )
        .await;
        more_accepted(progress, 50, "events accepted with a node cut off").await;
        cluster(&["heal"]);
        whole_again(app).await;
    })
    .await;
    app.cleanup().await;
}

#[tokio::test]
async fn two_of_three_nodes_down_publishes_go_to_the_outbox_and_all_arrive_later() {
    let app = spawn_cluster().await;
    let started = Instant::now();
    let out = scenario(&app, "two of three down", async |app, progress| {
        in_flight(app).await;
        cluster(&["stop", "c2"]);
        cluster(&["stop", "c3"]);
        // No majority: nothing can be confirmed. The front keeps accepting into the outbox.
        more_accepted(progress, 50, "events accepted with two nodes down").await;
        cluster(&["start", "c2"]);
        cluster(&["start", "c3"]);
        whole_again(app).await;
    })
    .await;
    let via_outbox = out
        .ledger
        .accepted
        .iter()
        .filter(|(_, s)| s == "outbox")
        .count();
    assert!(
        via_outbox > 0,
        "with no majority, events were accepted into the outbox"
    );
    assert!(!out.orders.accepted.is_empty(), "orders were accepted");
    eprintln!("cluster: two of three down, {:?} in all", started.elapsed());
    app.cleanup().await;
}
