//! The Grafana dashboards and Prometheus alert rules in the repository, checked against a
//! real Prometheus scraping a running warren and RabbitMQ: every expression parses and
//! returns data after a workload that exercises every panel.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use serde_json::{Value, json};
use warren::{
    jobs::{Consumer, Job, JobError},
    modules::inventory::Inventory,
    saga::participants::ParticipantConsumer,
};

use crate::{
    helpers::eventually,
    saga::{FaultyRestore, order, place, seed, spawn_saga, until_status},
};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool runs (Debian package prometheus)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn prometheus_config_and_alert_rules_pass_promtool() {
    let config = repo("prometheus/prometheus.yml");
    let (ok, out) = promtool(&["check", "config", config.to_str().expect("utf-8")]);
    assert!(ok, "promtool check config:\n{out}");
    let rules = repo("prometheus/alerts.yml");
    let (ok, out) = promtool(&["check", "rules", rules.to_str().expect("utf-8")]);
    assert!(ok, "promtool check rules:\n{out}");
}

/// Every `expr` in a dashboard, with Grafana's `$__rate_interval` filled in.
fn dashboard_exprs() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let dir = repo("grafana/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("grafana/dashboards")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 4,
        "HTTP, queues, sagas and process dashboards"
    );
    for f in files {
        let d: Value =
            serde_json::from_str(&std::fs::read_to_string(&f).expect("read")).expect("JSON");
        let name = f
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        collect_exprs(&d, &name, &mut out);
    }
    out
}

fn collect_exprs(v: &Value, file: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(e)) = m.get("expr") {
                let title = m
                    .get("legendFormat")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                out.push((
                    format!("{file} {title}"),
                    e.replace("$__rate_interval", "1m"),
                ));
            }
            for x in m.values() {
                collect_exprs(x, file, out);
            }
        }
        Value::Array(a) => {
            for x in a {
                collect_exprs(x, file, out);
            }
        }
        _ => {}
    }
}

/// The left side of `<query> <op> <number>`.
fn left_of_threshold(expr: &str) -> Option<String> {
    let e = expr.trim();
    let number_start = e
        .rfind(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == 'e' || c == '+'))?
        + 1;
    if number_start >= e.len() {
        return None;
    }
    let rest = e[..number_start].trim_end();
    for op in [">=", "<=", "==", "!=", ">", "<"] {
        if let Some(lhs) = rest.strip_suffix(op) {
            return Some(lhs.trim().to_owned());
        }
    }
    None
}

/// A Prometheus process, killed when dropped.
struct Prometheus {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn start_prometheus(warren: &[String]) -> Prometheus {
    let warren = warren
        .iter()
        .map(|t| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(repo("prometheus/alerts.yml"), dir.path().join("alerts.yml")).expect("rules");
    // The repository's scrape config names docker-compose hosts; this one has the same jobs
    // pointed at the test's processes, scraped every second.
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [alerts.yml]\n\
         scrape_configs:\n\
         \x20 - job_name: warren\n    static_configs: [{{targets: [{warren}]}}]\n\
         \x20 - job_name: rabbitmq\n    metrics_path: /metrics/per-object\n    static_configs: [{{targets: ['127.0.0.1:15692']}}]\n"
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).expect("config");
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus starts (Debian package prometheus)");
    Prometheus {
        child,
        base: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    }
}

/// Runs an instant query; returns its result vector.
async fn query_result(http: &reqwest::Client, prom: &str, q: &str) -> Result<Vec<Value>, String> {
    let encoded: String = url::form_urlencoded::byte_serialize(q.as_bytes()).collect();
    let r = http
        .get(format!("{prom}/api/v1/query?query={encoded}"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let v: Value = r.json().await.map_err(|e| e.to_string())?;
    if v["status"] != "success" {
        return Err(format!("{}: {}", v["errorType"], v["error"]));
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// How many series an instant query returns.
async fn query(http: &reqwest::Client, prom: &str, q: &str) -> Result<usize, String> {
    query_result(http, prom, q).await.map(|r| r.len())
}

/// Fails every e-mail job: retries, then dead letters.
struct FailingEmail(Arc<AtomicBool>);

#[async_trait::async_trait]
impl Consumer for FailingEmail {
    fn name(&self) -> &str {
        "email"
    }

    fn queue(&self) -> &str {
        "warren.email"
    }

    async fn handle(&self, _job: &Job) -> Result<(), JobError> {
        self.0.store(true, Ordering::SeqCst);
        Err(JobError::Failed("the SMTP server said 451".into()))
    }
}

#[tokio::test]
async fn every_dashboard_panel_and_alert_rule_returns_data_from_a_real_prometheus() {
    // An HTTP subscriber for the subscription panels: 204 to every event.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let subscriber = listener.local_addr().expect("addr");
    let answer = warp::Filter::map(warp::post(), || warp::http::StatusCode::NO_CONTENT);
    tokio::spawn(warp::serve(answer).incoming(listener).run());
    let app = spawn_saga(
        &[
            "orders",
            "payments",
            "notifications",
            "audit",
            "sub.dashboard",
        ],
        move |mut s| {
            // Every request is "slow", so the slow-request panels have data.
            s.http.slow_request_ms = 0;
            let mut sub = warren::config::SubscriptionSettings::new(
                "dashboard",
                format!("http://{subscriber}/events"),
            );
            sub.events = vec!["order.placed".to_owned()];
            s.subscriptions.push(sub);
            s
        },
        |a| a,
    )
    .await;
    let db = app.db().await;
    let publisher = app.running.as_ref().expect("running").publisher.clone();
    let stop = tokio_util::sync::CancellationToken::new();
    let seen = Arc::new(AtomicBool::new(false));
    let extra = app
        .start_extra(
            &[warren::Role::Worker],
            {
                let seen = seen.clone();
                move |a| {
                    a.modules(Vec::<String>::new())
                        // A compensation that keeps failing, so one saga needs an operator.
                        .consumer(FaultyRestore {
                            inner: Arc::new(ParticipantConsumer::new(Inventory, db, publisher)),
                            failing: Arc::new(AtomicBool::new(true)),
                        })
                        .consumer(FailingEmail(seen))
                }
            },
            stop.clone(),
        )
        .await;
    // Both processes are scraped: the app (HTTP front, orchestrator, most participants) and
    // the extra worker (the broken restore, the failing e-mail job) on its metrics listener.
    let prom = start_prometheus(&[
        app.base.trim_start_matches("http://").to_owned(),
        extra
            .metrics_addr
            .expect("worker metrics listener")
            .to_string(),
    ]);

    // The workload: events, sagas that complete, compensate and need an operator, a job
    // that retries and is dead-lettered, and a replay.
    seed(
        &app,
        json!({"SKU-1": 100}),
        json!({"u-1": 10_000, "u-2": 10}),
    )
    .await;
    for i in 0..10 {
        assert_eq!(
            app.post_event("order.placed", &json!({"i": i}))
                .await
                .status(),
            202
        );
    }
    let done = place(&app, &order("G-1", "u-1", "SKU-1", 1, 100)).await;
    let short = place(&app, &order("G-2", "u-1", "SKU-1", 1000, 1)).await;
    let stuck = place(&app, &order("G-3", "u-2", "SKU-1", 1, 100)).await;
    until_status(&app, &done, "completed", Duration::from_secs(30)).await;
    until_status(&app, &short, "compensated", Duration::from_secs(30)).await;
    until_status(&app, &stuck, "needs_intervention", Duration::from_secs(40)).await;
    let r = app
        .request(reqwest::Method::POST, "/v1/jobs/email.send")
        .json(&json!({"email": "a@example.com", "subject": "s", "content": "c"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 202);
    eventually(
        Duration::from_secs(30),
        "the e-mail job is parked",
        || async {
            let v = app.get_json("/v1/dlq").await;
            let parked = v["queues"]
                .as_array()
                .and_then(|q| q.iter().find(|q| q["queue"] == "warren.email"))
                .map_or(0, |q| q["parked"].as_u64().unwrap_or(0));
            (parked == 1).then_some(())
        },
    )
    .await;
    let r = app
        .request(reqwest::Method::POST, "/v1/dlq/warren.email/replay")
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    assert!(seen.load(Ordering::SeqCst));

    // Let Prometheus take enough samples for the rate() windows, and evaluate the rules.
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(60), "Prometheus has data", || async {
        let warren = query(&http, &prom.base, "count_over_time(up{job=\"warren\"}[1m])")
            .await
            .ok()?;
        let rabbit = query(&http, &prom.base, "up{job=\"rabbitmq\"} == 1")
            .await
            .ok()?;
        let rules: Value = http
            .get(format!("{}/api/v1/rules", prom.base))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let evaluated = rules["data"]["groups"][0]["lastEvaluation"]
            .as_str()
            .is_some_and(|t| !t.starts_with("0001"));
        // 20 samples of warren: every rate window has points.
        let samples = query_result(&http, &prom.base, "count_over_time(up{job=\"warren\"}[1m])")
            .await
            .ok()?
            .first()
            .and_then(|r| r["value"][1].as_str().and_then(|v| v.parse::<u32>().ok()))
            .unwrap_or(0);
        (warren == 2 && rabbit == 1 && evaluated && samples >= 20).then_some(())
    })
    .await;

    let mut failures = Vec::new();
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 20, "{} dashboard queries", exprs.len());
    // Zero fallbacks (`or ... * 0`) keep a panel from going blank, and would also hide a
    // misspelt metric: every metric name an expression names must exist in Prometheus.
    let names: BTreeSet<String> = http
        .get(format!("{}/api/v1/label/__name__/values", prom.base))
        .send()
        .await
        .expect("names")
        .json::<Value>()
        .await
        .expect("json")["data"]
        .as_array()
        .expect("names")
        .iter()
        .filter_map(|n| n.as_str().map(str::to_owned))
        .collect();
    for (panel, expr) in &exprs {
        for name in metric_names(expr) {
            if !names.contains(&name) {
                failures.push(format!("{panel}: metric {name} does not exist"));
            }
        }
    }
    for (panel, expr) in &exprs {
        match query(&http, &prom.base, expr).await {
            Ok(0) => failures.push(format!("{panel}: no data: {expr}")),
            Ok(_) => {}
            Err(e) => failures.push(format!("{panel}: {e}: {expr}")),
        }
    }

    // The rules as Prometheus loaded them: each parsed; the query left of the threshold
    // returns data.
    let rules: Value = http
        .get(format!("{}/api/v1/rules", prom.base))
        .send()
        .await
        .expect("rules")
        .json()
        .await
        .expect("json");
    let mut alerts = 0;
    for group in rules["data"]["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            alerts += 1;
            let name = rule["name"].as_str().unwrap_or_default();
            let expr = rule["query"].as_str().unwrap_or_default();
            for metric in metric_names(expr) {
                if !names.contains(&metric) {
                    failures.push(format!("alert {name}: metric {metric} does not exist"));
                }
            }
            if rule["health"] != "ok" {
                failures.push(format!(
                    "alert {name}: health {} {}",
                    rule["health"], rule["lastError"]
                ));
            }
            match left_of_threshold(expr) {
                None => failures.push(format!("alert {name}: not `<query> <op> <number>`: {expr}")),
                Some(lhs) => match query(&http, &prom.base, &lhs).await {
                    Ok(0) => failures.push(format!("alert {name}: no data: {lhs}")),
                    Ok(_) => {}
                    Err(e) => failures.push(format!("alert {name}: {e}: {lhs}")),
                },
            }
        }
    }
    assert!(alerts >= 6, "{alerts} alert rules loaded");
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Every exported metric is on a dashboard or in a rule, or the docs say why not.
    let text = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    let exported: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let used = format!(
        "{}\n{}",
        exprs
            .iter()
            .map(|(_, e)| e.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        std::fs::read_to_string(repo("prometheus/alerts.yml")).expect("rules")
    );
    let docs = std::fs::read_to_string(repo("docs/operations.md")).expect("docs");
    let heading = "## Exported but not on a dashboard";
    let section = docs
        .split_once(heading)
        .map(|(_, rest)| rest.split("\n## ").next().unwrap_or_default())
        .unwrap_or_default();
    let unexplained: Vec<&String> = exported
        .iter()
        .filter(|m| !used.contains(m.as_str()))
        .filter(|m| !section.contains(&format!("`{m}")))
        .collect();
    assert!(
        unexplained.is_empty(),
        "exported, shown nowhere, and not explained under {heading:?} in docs/operations.md: {unexplained:?}"
    );
    stop.cancel();
    extra.wait().await;
    app.cleanup().await;
}

/// Identifiers in `text` that name warren's or RabbitMQ's metrics (by prefix).
fn metric_names(text: &str) -> BTreeSet<String> {
    const PREFIXES: [&str; 12] = [
        "http_",
        "messages_",
        "queue_",
        "job_",
        "sagas",
        "saga_",
        "active_connections",
        "amqp_node_",
        "process_",
        "warren_",
        "rabbitmq_",
        "up",
    ];
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| {
            PREFIXES.iter().any(|p| {
                if *p == "up" {
                    *t == "up"
                } else {
                    t.starts_with(p)
                }
            })
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn metric_names_are_found_by_prefix() {
    let names = metric_names(
        r#"sum by (queue) (rate(queue_messages_total{action="acked"}[1m])) / up{job="warren"}"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        vec!["queue_messages_total".to_owned(), "up".to_owned()]
    );
}

#[test]
fn thresholds_split_off_the_query() {
    assert_eq!(
        left_of_threshold("sum(rate(x[5m])) > 0.1").as_deref(),
        Some("sum(rate(x[5m]))")
    );
    assert_eq!(
        left_of_threshold("up{job=\"a\"} == 0").as_deref(),
        Some("up{job=\"a\"}")
    );
    assert_eq!(left_of_threshold("sum(x)"), None);
}
