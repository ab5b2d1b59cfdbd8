// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The process's own figures, read from /proc/self at each scrape: CPU time, memory,
//! open file descriptors and their limit, start time.

use std::fs;

/// A point-in-time reading; a figure /proc did not give is None.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessStats {
    /// User and system CPU time, seconds.
    pub cpu_seconds: Option<f64>,
    /// Resident memory, bytes.
    pub resident_bytes: Option<u64>,
    /// Virtual memory, bytes.
    pub virtual_bytes: Option<u64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// The soft limit on open file descriptors.
    pub max_fds: Option<u64>,
    /// Start time, seconds since the Unix epoch.
    pub start_time_seconds: Option<f64>,
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
fn clock_ticks() -> Option<f64> {
    // SAFETY: sysconf takes an integer and touches no memory of ours.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (t > 0).then_some(t as f64)
}

/// Page size in bytes.
fn page_size() -> Option<u64> {
    // SAFETY: sysconf takes an integer and touches no memory of ours.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(p).ok().filter(|p| *p > 0)
}

/// The fields of /proc/self/stat after the command name, from field 3 (`state`) on.
fn stat_fields(stat: &str) -> Vec<&str> {
    // The command name is in parentheses and may hold spaces and parentheses.
    stat.rfind(')')
        .map(|i| stat[i + 1..].split_whitespace().collect())
        .unwrap_or_default()
}

/// Parse /proc/self/stat, /proc/stat's `btime` and /proc/self/limits.
fn parse(stat: &str, proc_stat: &str, limits: &str, ticks: f64, page: u64) -> ProcessStats {
    let f = stat_fields(stat);
    // Field n (1-based, as in proc(5)) is f[n - 3].
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let btime = proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    let max_fds = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok());
    let to_f64 = |v: u64| v as f64;
    ProcessStats {
        cpu_seconds: match (field(14), field(15)) {
            (Some(u), Some(s)) => Some(to_f64(u.saturating_add(s)) / ticks),
            _ => None,
        },
        resident_bytes: field(24).and_then(|p| p.checked_mul(page)),
        virtual_bytes: field(23),
        open_fds: None,
        max_fds,
        start_time_seconds: match (btime, field(22)) {
            (Some(b), Some(start)) => Some(to_f64(b) + to_f64(start) / ticks),
            _ => None,
        },
    }
}

/// Read the process's figures now.
pub fn read() -> ProcessStats {
    let (Some(ticks), Some(page)) = (clock_ticks(), page_size()) else {
        return ProcessStats::default();
    };
    let stat = fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let proc_stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let limits = fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let mut p = parse(&stat, &proc_stat, &limits, ticks, page);
    // The directory's own fd is among the entries while it is read.
    p.open_fds = fs::read_dir("/proc/self/fd").ok().map(|d| {
        u64::try_from(d.count())
            .unwrap_or(u64::MAX)
            .saturating_sub(1)
    });
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        let stat = "4242 (vhost (net) m) S 1 4242 4242 0 -1 4194560 500 0 0 0 \
                    150 50 0 0 20 0 3 0 1000 123456789 300 18446744073709551615";
        let p = parse(
            stat,
            "cpu  1 2 3\nbtime 1700000000\nprocesses 5\n",
            "Limit Soft Limit Hard Limit Units\nMax open files            1024                 524288               files\n",
            100.0,
            4096,
        );
        assert_eq!(p.cpu_seconds, Some(2.0));
        assert_eq!(p.resident_bytes, Some(300 * 4096));
        assert_eq!(p.virtual_bytes, Some(123_456_789));
        assert_eq!(p.start_time_seconds, Some(1_700_000_010.0));
        assert_eq!(p.max_fds, Some(1024));
        assert_eq!(parse("", "", "", 100.0, 4096), ProcessStats::default());
    }

    #[test]
    fn this_process_reads() {
        let p = read();
        assert!(p.resident_bytes.unwrap() > 0);
        assert!(p.open_fds.unwrap() >= 3);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = p.start_time_seconds.unwrap();
        assert!(
            start <= now + 1.0 && start > now - 86_400.0 * 365.0,
            "{start}"
        );
    }
}
