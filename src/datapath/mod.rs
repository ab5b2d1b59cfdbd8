//! The data path: one worker thread per queue pair.
//!
//! - [`worker`]: the thread, its epoll loop and its start/stop handle.
//! - [`tx`]: guest TX ring -> `FragList` -> uplink.
//! - [`rx`]: uplink -> guest RX buffers (MRG_RXBUF gathering, `num_buffers`).
//! - [`holdoff`]: keeping guest TX kicks off for a while after a TX batch.
//! - [`ring`]: a virtqueue as the worker sees it: queue state, kick and call fds,
//!   popping heads and notifying the guest.

pub mod holdoff;
pub mod ring;
pub mod rx;
pub mod tx;
pub mod worker;

pub use ring::{Ring, RingSetup};
pub use worker::{PairWorker, WorkerSpec, WorkerState};

use std::time::{Duration, Instant};

/// Logs at most `burst` messages per second (a guest must not flood the log).
#[derive(Debug)]
pub struct LogLimiter {
    window: Instant,
    used: u32,
    burst: u32,
}

impl LogLimiter {
    /// A limiter allowing `burst` messages per second.
    pub fn new(burst: u32) -> Self {
        LogLimiter {
            window: Instant::now(),
            used: 0,
            burst,
        }
    }

    /// Whether a message may be logged now.
    pub fn allow(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.used = 0;
        }
        self.used += 1;
        self.used <= self.burst
    }
}
