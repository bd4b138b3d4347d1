//! The process metrics every Prometheus client exports, read from `/proc/self` at each
//! scrape.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

/// The process metrics every Prometheus client exports (`process_resident_memory_bytes`,
/// `process_cpu_seconds_total`, `process_start_time_seconds`), read from `/proc/self` at
/// each scrape. Per-request memory (the article's `X-Memory-Usage`) has no meaning in an
/// async server where requests share one heap; the process's resident memory is the
/// honest figure.
#[derive(Debug)]
pub(super) struct ProcessCollector {
    start_time: f64,
}

impl ProcessCollector {
    pub(super) fn new() -> Self {
        let start_time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        Self { start_time }
    }
}

/// Resident memory (bytes) and CPU time (seconds) of this process, from `/proc/self`.
fn proc_self() -> Option<(f64, f64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let rss_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at state (field 3);
    // utime and stime are fields 14 and 15, in USER_HZ (100 per second on Linux).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((rss_kb * 1024.0, (utime + stime) / 100.0))
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let start = ConstGauge::new(self.start_time);
        let m = encoder.encode_descriptor(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds",
            None,
            start.metric_type(),
        )?;
        start.encode(m)?;
        if let Some((rss, cpu)) = proc_self() {
            let rss = ConstGauge::new(rss);
            let m = encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory of the process, in bytes",
                None,
                rss.metric_type(),
            )?;
            rss.encode(m)?;
            let cpu = ConstCounter::new(cpu);
            let m = encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time of the process, in seconds",
                None,
                cpu.metric_type(),
            )?;
            cpu.encode(m)?;
        }
        Ok(())
    }
}
