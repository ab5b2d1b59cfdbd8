// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Whether a ring still works: the fault bookkeeping both layouts share.
//!
//! A ring that misbehaves stops until it is set up again. Where the queue's counters
//! are at hand (looking for chains, signalling) the fault is counted in `ring_errors`
//! and logged at once; where they are not (popping a chain, returning one) it is
//! recorded and counted at the next look or signal, exactly once either way.

use crate::metrics::QueueMetrics;

/// Why a ring stopped working.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingFault {
    /// The ring's indices or entries are impossible, or a ring structure is not
    /// (wholly) in guest memory.
    Broken,
}

/// A ring's fault state.
#[derive(Debug, Default)]
pub struct RingHealth {
    fault: Option<RingFault>,
    /// Broken where the counters were not at hand: still to be counted.
    unreported: bool,
}

impl RingHealth {
    /// The fault that stopped the ring, if any.
    pub fn fault(&self) -> Option<RingFault> {
        self.fault
    }

    /// Whether the ring stopped.
    pub fn is_broken(&self) -> bool {
        self.fault.is_some()
    }

    /// Stop the ring now, counted and logged with `why`.
    pub fn break_now(&mut self, m: &QueueMetrics, why: &str) {
        if self.fault.is_none() {
            self.fault = Some(RingFault::Broken);
            m.ring_errors.inc();
            log::error!("{why}; ring stopped until set up again");
        }
    }

    /// Stop the ring where the counters are not at hand; [`Self::report`] counts it.
    pub fn break_later(&mut self) {
        if self.fault.is_none() {
            self.fault = Some(RingFault::Broken);
            self.unreported = true;
        }
    }

    /// Count and log a fault [`Self::break_later`] recorded (once), with `why`.
    pub fn report(&mut self, m: &QueueMetrics, why: &str) {
        if std::mem::take(&mut self.unreported) {
            m.ring_errors.inc();
            log::error!("{why}; ring stopped until set up again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_is_counted_once_whether_found_now_or_later() {
        let m = QueueMetrics::default();
        let mut now = RingHealth::default();
        now.break_now(&m, "test");
        now.break_now(&m, "test");
        now.report(&m, "test");
        assert_eq!(
            (now.fault(), m.ring_errors.get()),
            (Some(RingFault::Broken), 1)
        );

        let m = QueueMetrics::default();
        let mut later = RingHealth::default();
        later.break_later();
        later.break_later();
        assert!(later.is_broken());
        assert_eq!(m.ring_errors.get(), 0, "counted only when reported");
        later.report(&m, "test");
        later.report(&m, "test");
        later.break_now(&m, "test");
        assert_eq!(m.ring_errors.get(), 1);
        assert!(!RingHealth::default().is_broken());
    }
}
