//! The registry's output: names, labels, formats.

use super::*;

#[test]
fn renders_the_articles_metrics() {
    let m = Metrics::new();
    m.http_request("POST", "/v1/events/{name}", 202, 0.003);
    m.published("warren.events", "confirmed");
    let text = m.render();
    assert!(
        text.contains(
            r#"http_requests_total{method="POST",path="/v1/events/{name}",status="202"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"http_request_duration_seconds_bucket{le="0.005",method="POST",path="/v1/events/{name}"} 1"#) ||
        text.contains(r#"http_request_duration_seconds_bucket{method="POST",path="/v1/events/{name}",le="0.005"} 1"#), "{text}");
    assert!(
        text.contains(
            r#"messages_published_total{exchange="warren.events",outcome="confirmed"} 1"#
        ),
        "{text}"
    );
}

#[test]
fn exports_process_memory_and_build_info() {
    let m = Metrics::new();
    let text = m.render();
    let rss = text
        .lines()
        .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
        .and_then(|v| v.parse::<f64>().ok())
        .expect("rss exported");
    assert!(rss > 1_000_000.0, "{rss}");
    assert!(text.contains("process_cpu_seconds_total "), "{text}");
    assert!(text.contains("warren_build_info{version="), "{text}");
}

#[test]
fn the_text_format_names_counter_families_with_their_total_suffix() {
    let m = Metrics::new();
    m.published("warren.events", "confirmed");
    let (text, ct) = m.render_for(Some("*/*"));
    assert!(ct.starts_with("text/plain; version=0.0.4"));
    assert!(
        text.contains("# TYPE messages_published_total counter"),
        "{text}"
    );
    assert!(text.contains("# HELP messages_published_total "), "{text}");
    assert!(!text.contains("# EOF"));
    let (open, ct) = m.render_for(Some("application/openmetrics-text; version=1.0.0"));
    assert!(ct.starts_with("application/openmetrics-text"));
    assert!(open.contains("# TYPE messages_published counter"));
    assert!(open.ends_with("# EOF\n"));
}

#[test]
fn in_flight_counts_down_when_the_guard_drops() {
    let m = Metrics::new();
    let g = m.in_flight("warren.email");
    assert!(
        m.render()
            .contains(r#"messages_in_flight{queue="warren.email"} 1"#)
    );
    drop(g);
    assert!(
        m.render()
            .contains(r#"messages_in_flight{queue="warren.email"} 0"#)
    );
}
