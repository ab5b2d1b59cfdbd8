// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The TX kick holdoff's timer (`--tx-holdoff`): after a TX batch the guest's kicks
//! stay off and this timer brings the worker back to the ring.
//!
//! Every kick is a VM exit for the guest, so a guest sending a stream pays for one per
//! holdoff period at most instead of one per packet (or per short batch); a packet sent
//! during the holdoff waits at most one period. When to hold and when to stop is the
//! TX state's business ([`super::state::TxState::HeldOff`]); this is the clock and how
//! long a period is.
//!
//! Only a stream is held (the TX state's `Drained { hold }`: a look that moved two chains
//! or more, or a large packet): one small packet, sparse or request/response traffic,
//! turns kicks on at once, so its next packet never waits for the timer. The period
//! adapts, as interrupt moderation does: a run of holdoffs starts at an eighth of the
//! ceiling (`--tx-holdoff`, at least [`HOLDOFF_FLOOR`]) and each further one in a row
//! (the timer's look found a stream's batch again) lasts twice the last, up to the
//! ceiling. A run that ends (the timer's look found nothing: kicks go on) and is
//! followed by a new one within a ceiling's time was too short for the stream's gaps:
//! the new run goes on from twice the last period. A new run after a longer pause
//! starts over. A look that stopped on its batch budget (the ring filled up during the
//! period) quarters the period, down to the floor. A look that found half the ring or
//! more (a flood: the guest fills the ring faster than any timer would serve it)
//! suspends the holdoff for [`FLOOD_PAUSE`]: such a guest is served by its kicks, as
//! without a holdoff, and the holdoff tries again afterwards.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

/// The shortest period.
pub const HOLDOFF_FLOOR: Duration = Duration::from_micros(16);

/// How long a flood suspends the holdoff.
pub const FLOOD_PAUSE: Duration = Duration::from_millis(100);

/// A one-shot timer of one holdoff period, and the period's adaptation.
pub struct HoldoffTimer {
    timer: TimerFd,
    /// The next period.
    period: Duration,
    /// The longest period (`--tx-holdoff`).
    ceiling: Duration,
    /// Where a run of holdoffs starts: an eighth of the ceiling, at least the floor.
    start: Duration,
    /// Whether the last holdoff's run is still going (no kicks turned on since).
    in_run: bool,
    /// When the last run ended (kicks went on), and its last period.
    ended: Option<(Instant, Duration)>,
    /// The period the timer was last armed with.
    armed: Duration,
    /// Until when a flood suspended the holdoff.
    suspended_until: Option<Instant>,
}

fn errno(e: vmm_sys_util::errno::Error) -> io::Error {
    io::Error::from_raw_os_error(e.errno())
}

impl HoldoffTimer {
    /// A timer whose periods grow up to `ceiling`, not running. Lowers the calling
    /// thread's timer slack (the default 50 us would stretch short holdoffs), so call
    /// it on the worker.
    pub fn new(ceiling: Duration) -> io::Result<Self> {
        let timer = TimerFd::new().map_err(errno)?;
        // SAFETY: PR_SET_TIMERSLACK takes a plain integer and affects only the calling
        // thread.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64, 0u64, 0u64, 0u64) };
        let start = (ceiling / 8).max(HOLDOFF_FLOOR).min(ceiling);
        Ok(HoldoffTimer {
            timer,
            period: start,
            ceiling,
            start,
            in_run: false,
            ended: None,
            armed: Duration::ZERO,
            suspended_until: None,
        })
    }

    /// The period the next [`Self::arm`] starts.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Kicks went on again (the run ended): remember when, for [`Self::arm`].
    pub fn relax(&mut self) {
        if std::mem::take(&mut self.in_run) {
            self.ended = Some((Instant::now(), self.armed));
        }
    }

    /// Whether holdoffs are on now (not suspended by a flood).
    pub fn active(&mut self) -> bool {
        match self.suspended_until {
            Some(until) if Instant::now() < until => false,
            Some(_) => {
                self.suspended_until = None;
                true
            }
            None => true,
        }
    }

    /// A look found half the ring or more: suspend holdoffs for [`FLOOD_PAUSE`], and
    /// let the next run start over.
    pub fn flooded(&mut self) {
        self.suspended_until = Some(Instant::now() + FLOOD_PAUSE);
        self.ended = None;
        self.period = self.start;
    }

    /// A look stopped on its batch budget: periods this long let the ring fill up.
    pub fn shorten(&mut self) {
        self.period = (self.period / 4).max(HOLDOFF_FLOOR.min(self.ceiling));
    }

    /// The timer's fd, readable when the period ran out.
    pub fn fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    /// Start one period: in a run, twice the last; the first of a run, twice the last
    /// run's last period if that run ended less than a ceiling ago, else the start.
    /// True when this started a run.
    pub fn arm(&mut self) -> io::Result<bool> {
        self.arm_at(Instant::now())
    }

    fn arm_at(&mut self, now: Instant) -> io::Result<bool> {
        let starts = !self.in_run;
        if starts {
            self.in_run = true;
            self.period = match self.ended.take() {
                Some((at, last)) if now.duration_since(at) < self.ceiling => last * 2,
                _ => self.start,
            }
            .min(self.ceiling);
        }
        self.timer.reset(self.period, None).map_err(errno)?;
        self.armed = self.period;
        self.period = (self.period * 2).min(self.ceiling);
        Ok(starts)
    }

    /// The timer fired: consume its expiry so the fd stops being readable.
    pub fn clear(&mut self) {
        // Nothing to read means a spurious wake-up; either way the fd is quiet now.
        let _ = self.timer.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(fd: RawFd, ms: i32) -> bool {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, ms) == 1 }
    }

    /// The periods the next `n` arms at `now` run.
    fn periods(t: &mut HoldoffTimer, n: usize, now: Instant) -> Vec<u128> {
        (0..n)
            .map(|_| {
                t.arm_at(now).unwrap();
                t.armed.as_micros()
            })
            .collect()
    }

    #[test]
    fn periods_double_in_a_row_up_to_the_ceiling_and_grow_across_short_pauses() {
        let mut t = HoldoffTimer::new(Duration::from_micros(1000)).unwrap();
        let now = Instant::now();
        assert_eq!(periods(&mut t, 6, now), [125, 250, 500, 1000, 1000, 1000]);
        // A run of one that ended, and a stream that came back at once: the next run
        // goes on from twice its period, so gaps longer than a period are caught.
        let mut t = HoldoffTimer::new(Duration::from_micros(1000)).unwrap();
        assert_eq!(periods(&mut t, 1, now), [125]);
        t.relax();
        assert_eq!(periods(&mut t, 1, Instant::now()), [250]);
        t.relax();
        assert_eq!(periods(&mut t, 1, Instant::now()), [500]);
        // After a pause longer than the ceiling a run starts over.
        t.relax();
        let later = Instant::now() + Duration::from_millis(5);
        assert_eq!(periods(&mut t, 1, later), [125]);
        // Relaxing outside a run changes nothing.
        t.relax();
        t.relax();
        t.shorten();
        assert_eq!(t.period().as_micros(), 62);
        t.shorten();
        t.shorten();
        assert_eq!(t.period(), HOLDOFF_FLOOR, "never below the floor");
        // Small ceilings: the start is the floor, or the ceiling itself.
        let t = HoldoffTimer::new(Duration::from_micros(100)).unwrap();
        assert_eq!(t.period(), HOLDOFF_FLOOR);
        let t = HoldoffTimer::new(Duration::from_micros(5)).unwrap();
        assert_eq!(t.period().as_micros(), 5);
    }

    #[test]
    fn a_flood_suspends_holdoffs_for_a_while_and_the_next_run_starts_over() {
        let mut t = HoldoffTimer::new(Duration::from_micros(1000)).unwrap();
        assert!(t.active());
        t.arm().unwrap();
        t.arm().unwrap();
        t.flooded();
        assert!(!t.active(), "suspended right after a flood");
        assert_eq!(t.period().as_micros(), 125);
        t.suspended_until = Some(Instant::now());
        assert!(t.active(), "back once the pause is over");
        assert!(t.suspended_until.is_none());
    }

    #[test]
    fn fires_once_per_arm_after_the_period() {
        let mut t = HoldoffTimer::new(Duration::from_millis(1)).unwrap();
        assert!(!readable(t.fd(), 20), "a timer that was never armed fired");
        t.arm().unwrap();
        assert!(readable(t.fd(), 5000), "holdoff timer never fired");
        t.clear();
        assert!(
            !readable(t.fd(), 20),
            "a cleared one-shot timer fired again"
        );
        t.arm().unwrap();
        assert!(readable(t.fd(), 5000), "a re-armed timer never fired");
    }
}
