//! The classic Prometheus text format (0.0.4), made from the OpenMetrics text the registry
//! encodes, for scrapers that do not ask for OpenMetrics (curl, promtool).

/// OpenMetrics text to the Prometheus text format 0.0.4: a counter family's `# HELP` and
/// `# TYPE` lines name it with its `_total` suffix (as its samples do), and `# EOF` and
/// `# UNIT` lines go.
pub(super) fn to_text_format(open_metrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in open_metrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, "counter")) = rest.split_once(' ')
        {
            counters.insert(name.to_owned());
        }
    }
    let mut out = String::with_capacity(open_metrics.len() + counters.len() * 12);
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}
