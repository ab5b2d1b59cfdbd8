// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The TX kick holdoff's timer (`--tx-holdoff`): after a TX batch the guest's kicks
//! stay off and this timer brings the worker back to the ring.
//!
//! Every kick is a VM exit for the guest, so a guest sending a stream pays for one per
//! holdoff period at most instead of one per packet (or per short batch); a packet sent
//! during the holdoff waits at most one period. When to hold and when to stop is the
//! TX state's business ([`super::state::TxState::HeldOff`]); this is only the clock.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use vmm_sys_util::timerfd::TimerFd;

/// A one-shot timer of one holdoff period.
pub struct HoldoffTimer {
    timer: TimerFd,
    period: Duration,
}

fn errno(e: vmm_sys_util::errno::Error) -> io::Error {
    io::Error::from_raw_os_error(e.errno())
}

impl HoldoffTimer {
    /// A timer of `period`, not running. Lowers the calling thread's timer slack (the
    /// default 50 us would stretch short holdoffs), so call it on the worker.
    pub fn new(period: Duration) -> io::Result<Self> {
        let timer = TimerFd::new().map_err(errno)?;
        // SAFETY: PR_SET_TIMERSLACK takes a plain integer and affects only the calling
        // thread.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64, 0u64, 0u64, 0u64) };
        Ok(HoldoffTimer { timer, period })
    }

    /// The timer's fd, readable when the period ran out.
    pub fn fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    /// Start (or restart) one period.
    pub fn arm(&mut self) -> io::Result<()> {
        self.timer.reset(self.period, None).map_err(errno)
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
