// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The data path: one worker thread per queue pair.
//!
//! - [`worker`]: the thread, its loop and its start/stop handle.
//! - [`state`]: the TX and RX states of a pair and their transitions (pure, tested).
//! - [`poller`]: the worker's epoll instance, event ids and uplink interest.
//! - [`tx`]: guest TX ring -> `FragList` -> uplink.
//! - [`rx`]: uplink -> guest RX buffers (MRG_RXBUF gathering, `num_buffers`).
//! - [`holdoff`]: the timer of the TX kick holdoff.
//! - [`ring`]: a virtqueue as the worker sees it: queue state, kick and call fds,
//!   popping heads and notifying the guest; the split layout, the packed one
//!   (`ring::packed`) and the `Virtqueue` interface over both.

pub mod holdoff;
pub mod poller;
pub mod ring;
pub mod rx;
pub mod state;
#[cfg(test)]
mod test_guest;
#[cfg(test)]
mod test_packed_guest;
pub mod tx;
pub mod worker;

#[cfg(test)]
mod fuzz_regressions;

pub use ring::{Ring, RingSetup};
pub use worker::{PairWorker, StoppedWorker, WorkerSpec};
