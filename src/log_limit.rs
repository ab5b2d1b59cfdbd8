// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Rate-limited logging for events a guest or a frontend can trigger at will: one
//! limiter per source, a burst of lines per second, and the next line that gets
//! through says how many were suppressed before it.

use std::fmt;
use std::time::{Duration, Instant};

/// Logs at most `burst` lines per second (a guest must not be able to flood the log)
/// and counts the lines it suppressed.
#[derive(Debug)]
pub struct LogLimiter {
    window: Instant,
    used: u32,
    burst: u32,
    suppressed: u64,
}

impl LogLimiter {
    /// A limiter allowing `burst` lines per second.
    pub fn new(burst: u32) -> Self {
        LogLimiter {
            window: Instant::now(),
            used: 0,
            burst,
            suppressed: 0,
        }
    }

    /// Whether a line may be logged now: `Some(n)` when it may, `n` being the lines
    /// suppressed since the last one that got through; None when it is suppressed.
    pub fn allow(&mut self) -> Option<Suppressed> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&mut self, now: Instant) -> Option<Suppressed> {
        if now.saturating_duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.used = 0;
        }
        if self.used >= self.burst {
            self.suppressed += 1;
            return None;
        }
        self.used += 1;
        Some(Suppressed(std::mem::take(&mut self.suppressed)))
    }
}

/// How many lines a [`LogLimiter`] suppressed before the one being logged; shown as a
/// suffix (` (N similar lines suppressed)`, nothing when N is 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suppressed(pub u64);

impl fmt::Display for Suppressed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => Ok(()),
            1 => write!(f, " (1 similar line suppressed)"),
            n => write!(f, " ({n} similar lines suppressed)"),
        }
    }
}

/// Log through a [`LogLimiter`]: `log_limited!(limiter, warn, "fmt", args...)`; the
/// line carries the count of lines suppressed before it.
#[macro_export]
macro_rules! log_limited {
    ($limiter:expr, $level:ident, $($arg:tt)+) => {
        if let Some(suppressed) = $limiter.allow() {
            log::$level!("{}{}", format_args!($($arg)+), suppressed);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_lines_are_counted_until_the_next_second() {
        let mut l = LogLimiter::new(2);
        let t0 = l.window;
        assert_eq!(l.allow_at(t0), Some(Suppressed(0)));
        assert_eq!(l.allow_at(t0), Some(Suppressed(0)));
        assert_eq!(l.allow_at(t0), None);
        assert_eq!(l.allow_at(t0 + Duration::from_millis(999)), None);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            l.allow_at(t1),
            Some(Suppressed(2)),
            "the count comes with the next line"
        );
        assert_eq!(l.allow_at(t1), Some(Suppressed(0)), "and is reported once");
        assert_eq!(l.allow_at(t1), None);
    }

    #[test]
    fn the_suffix_names_the_count() {
        assert_eq!(Suppressed(0).to_string(), "");
        assert_eq!(Suppressed(1).to_string(), " (1 similar line suppressed)");
        assert_eq!(Suppressed(7).to_string(), " (7 similar lines suppressed)");
    }

    #[test]
    fn the_macro_consults_the_limiter() {
        let mut l = LogLimiter::new(1);
        log_limited!(l, warn, "first {}", 1);
        log_limited!(l, warn, "second {}", 2);
        assert_eq!(l.suppressed, 1);
    }
}
