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
#[cfg(test)]
mod test_guest;
pub mod tx;
pub mod worker;

pub use ring::{Ring, RingSetup};
pub use worker::{PairWorker, WorkerSpec, WorkerState};
