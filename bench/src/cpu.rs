//! CPU time from `/proc`: the whole bench process's (`/proc/self/stat`, threads that ended
//! included) and one thread's own (`/proc/thread-self/stat`), so the time of the bench's
//! helper threads (the HTTP clients, the HTTP participants) can be taken out of the
//! process's and what is left is warren's; and the whole machine's busy time
//! (`/proc/stat`), to tell a saturated machine (and one that others load) from an idle one.
//! Linux only; elsewhere every reading is 0.

/// Clock ticks per second of `/proc`'s times (`getconf CLK_TCK`; 100 when unknown, the
/// value on every common Linux).
fn ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// User plus system seconds in a `stat` line (fields 14 and 15, counted after the command
/// name, which is in parentheses and may hold spaces).
fn stat_seconds(stat: &str) -> Option<f64> {
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / ticks_per_second())
}

fn read(path: &str) -> f64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| stat_seconds(&s))
        .unwrap_or(0.0)
}

/// CPU seconds of this process so far.
pub(crate) fn process_s() -> f64 {
    read("/proc/self/stat")
}

/// CPU seconds of process `pid` so far (another process: the broker).
pub(crate) fn pid_s(pid: u32) -> f64 {
    read(&format!("/proc/{pid}/stat"))
}

/// CPU seconds of the calling thread so far.
pub(crate) fn this_thread_s() -> f64 {
    read("/proc/thread-self/stat")
}

/// CPU seconds the whole machine has been busy (every CPU, everything but idle and I/O
/// wait) since boot.
pub(crate) fn machine_busy_s() -> f64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| busy_seconds(&s))
        .unwrap_or(0.0)
}

/// The busy seconds of `/proc/stat`'s first line (`cpu user nice system idle iowait irq
/// softirq steal ...`).
fn busy_seconds(stat: &str) -> Option<f64> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<f64> = line
        .split_whitespace()
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some((ticks.iter().sum::<f64>() - idle) / ticks_per_second())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_times_are_read_after_the_command_name() {
        let ticks = ticks_per_second();
        let line = "42 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0";
        let s = stat_seconds(line).expect("parsed");
        assert!((s - 300.0 / ticks).abs() < 1e-9, "{s}");
        assert_eq!(stat_seconds("garbage"), None);
    }

    #[test]
    fn the_machine_busy_time_leaves_out_idle_and_io_wait() {
        let ticks = ticks_per_second();
        let stat = "cpu  10 1 5 1000 50 2 3 4 0 0\ncpu0 5 0 2 500 25 1 1 2 0 0\n";
        let s = busy_seconds(stat).expect("parsed");
        assert!((s - 25.0 / ticks).abs() < 1e-9, "{s}");
        assert_eq!(busy_seconds("intr 1 2 3"), None);
        assert!(machine_busy_s() > 0.0);
    }

    #[test]
    fn this_process_is_seen_using_cpu() {
        // Spin (bounded) until the process has used a tick: a reading that stays at 0 fails.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut x = 0u64;
        while process_s() == 0.0 && std::time::Instant::now() < until {
            x = (0..100_000u64).fold(x, |a, b| a.rotate_left(5) ^ b);
        }
        std::hint::black_box(x);
        assert!(process_s() > 0.0);
        assert!(this_thread_s() <= process_s());
    }
}
