//! TX kick holdoff (`--tx-holdoff`): after a TX batch the guest's kicks stay off and
//! a timer brings the worker back to the ring.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use vmm_sys_util::timerfd::TimerFd;

/// TX kick holdoff: after a TX batch the guest's kicks stay off and a timer brings
/// the worker back to the ring; only a look that finds nothing turns them on again.
/// Every kick is a VM exit for the guest, so a guest sending a stream pays for one
/// per holdoff period at most instead of one per packet (or per short batch); a
/// packet sent during the holdoff waits at most one period.
pub struct TxHoldoff {
    timer: TimerFd,
    period: Duration,
    /// Kicks are off and the timer owns the next look.
    holding: bool,
    armed: bool,
}

impl TxHoldoff {
    /// A holdoff of `period`, not holding yet. Lowers the calling thread's timer slack
    /// (the default 50 us would stretch short holdoffs), so call it on the worker.
    pub fn new(period: Duration) -> io::Result<Self> {
        let timer = TimerFd::new().map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        // SAFETY: PR_SET_TIMERSLACK takes a plain integer and affects only the calling
        // thread.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64, 0u64, 0u64, 0u64) };
        Ok(TxHoldoff {
            timer,
            period,
            holding: false,
            armed: false,
        })
    }

    /// The timer's fd, readable when the period ran out.
    pub fn fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    /// After a look that drained the ring: whether kicks stay off. A look that moved
    /// packets holds (more are likely); one that found nothing ends the holdoff only
    /// when it is the timer's look, not a kick that raced with the holdoff.
    pub fn keep(&mut self, worked: bool) -> bool {
        self.holding = worked || (self.holding && self.armed);
        self.holding
    }

    /// Stop holding (a broken ring, a blocked uplink): the timer brings nothing back.
    pub fn end(&mut self) {
        self.holding = false;
    }

    /// Start the timer if holding and not started yet.
    pub fn arm(&mut self) -> io::Result<()> {
        if self.holding && !self.armed {
            self.timer
                .reset(self.period, None)
                .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
            self.armed = true;
        }
        Ok(())
    }

    /// The timer fired: whether the TX ring is due for a look.
    pub fn expired(&mut self) -> bool {
        let _ = self.timer.wait();
        self.armed = false;
        self.holding
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_after_work_and_ends_only_on_an_empty_timer_look() {
        let mut h = TxHoldoff::new(Duration::from_secs(60)).unwrap();
        assert!(!h.keep(false), "an empty look while idle must not hold");
        assert!(h.keep(true), "a look that moved packets holds");
        h.arm().unwrap();
        // A kick raced with the holdoff: its empty look keeps holding (timer running).
        assert!(h.keep(false));
        // Forced expiry (the timer itself is 60 s away): the timer's look comes due.
        h.armed = false;
        assert!(h.holding, "expiry must ask for a look while holding");
        assert!(!h.keep(false), "an empty timer look ends the holdoff");
        assert!(h.keep(true));
        h.end();
        assert!(!h.holding);
        h.arm().unwrap();
        assert!(!h.armed, "no timer without a holdoff");
    }

    #[test]
    fn the_timer_fires_after_the_period() {
        let mut h = TxHoldoff::new(Duration::from_millis(1)).unwrap();
        assert!(h.keep(true));
        h.arm().unwrap();
        let mut pfd = libc::pollfd {
            fd: h.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, 5000) };
        assert_eq!(n, 1, "holdoff timer never fired");
        assert!(
            h.expired(),
            "a holding holdoff wants a look when the timer fires"
        );
        assert!(!h.armed);
    }
}
