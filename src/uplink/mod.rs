//! Uplinks: where guest packets go and where inbound packets come from.
//!
//! [`Uplink`] is the device (a TAP, an AF_XDP socket set, the null or loopback test
//! uplinks); it hands out one [`UplinkQueue`] per queue pair, which the pair's worker
//! owns while it runs. TX takes a parsed virtio-net header and the packet as a
//! [`FragList`] over guest pages; RX writes one packet (virtio header first) into a
//! [`FragList`] over guest buffers.

pub mod null;
pub mod tap;
pub mod xdp;

use std::os::fd::RawFd;

use crate::metrics::NamedGroup;
use crate::netmem::FragList;
use crate::virtio::{Features, VirtioNetHdr};

/// Errors of the uplinks.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// A TAP error.
    #[error("tap: {0}")]
    Tap(#[from] tap::TapError),
    /// An AF_XDP error.
    #[error("xdp: {0}")]
    Xdp(#[from] xdp::XdpError),
    /// An I/O error on a queue.
    #[error("uplink i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The queue was already taken by a worker.
    #[error("uplink queue {0} is already in use")]
    QueueBusy(usize),
    /// No such queue.
    #[error("uplink has no queue {0}")]
    NoQueue(usize),
    /// Other uplink kinds report their own errors.
    #[error("{0}")]
    Other(String),
}

/// Outcome of [`UplinkQueue::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendStatus {
    /// The packet left.
    Sent,
    /// No room now: keep the packet, wait for the queue fd to be writable.
    WouldBlock,
    /// The uplink refused the packet (counted by the caller as an uplink drop).
    Dropped,
}

/// One queue pair's side of an uplink, owned by that pair's worker.
pub trait UplinkQueue: Send {
    /// File descriptor to poll: readable when [`Self::recv`] may find a packet,
    /// writable when a [`SendStatus::WouldBlock`] send may succeed. None: never ready.
    fn fd(&self) -> Option<RawFd>;

    /// Send one packet.
    fn send(&mut self, hdr: &VirtioNetHdr, pkt: &FragList<'_>) -> Result<SendStatus, UplinkError>;

    /// Receive one packet into `bufs`, virtio-net header first; returns the packet's
    /// full length (header included), which exceeds `bufs.len()` when it did not fit
    /// (then only a prefix was written), or None when nothing is pending.
    fn recv(&mut self, bufs: &FragList<'_>) -> Result<Option<usize>, UplinkError>;

    /// Called after a batch of sends (an AF_XDP queue kicks its TX ring here).
    fn flush(&mut self) -> Result<(), UplinkError> {
        Ok(())
    }
}

/// An uplink device.
pub trait Uplink: Send + Sync {
    /// What to call it in logs (e.g. `tap vnm0`).
    fn describe(&self) -> String;

    /// Take queue `pair` for a worker; give it back with [`Self::return_queue`].
    fn take_queue(&self, pair: usize) -> Result<Box<dyn UplinkQueue>, UplinkError>;

    /// Give a queue back when its worker stops.
    fn return_queue(&self, pair: usize, queue: Box<dyn UplinkQueue>);

    /// Follow the features the guest acked (TAP: `TUNSETOFFLOAD`).
    fn apply_features(&self, features: Features) -> Result<(), UplinkError>;

    /// virtio features this uplink cannot honour; the control plane does not offer them.
    fn unsupported_features(&self) -> u64 {
        0
    }

    /// Counters this uplink keeps for queue pair `pair` beyond the generic queue
    /// counters (AF_XDP: its page pool and its socket), each under a name that becomes
    /// its key in the pair's entry of the stats file. They are shared with the queue,
    /// which updates them while a worker owns it; none by default.
    fn queue_counters(&self, _pair: usize) -> Vec<NamedGroup> {
        Vec::new()
    }
}

/// A set of queues held by an uplink while no worker uses them.
pub(crate) struct QueueSlots(std::sync::Mutex<Vec<Option<Box<dyn UplinkQueue>>>>);

impl QueueSlots {
    pub(crate) fn new(queues: Vec<Box<dyn UplinkQueue>>) -> Self {
        QueueSlots(std::sync::Mutex::new(
            queues.into_iter().map(Some).collect(),
        ))
    }

    pub(crate) fn take(&self, pair: usize) -> Result<Box<dyn UplinkQueue>, UplinkError> {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        q.get_mut(pair)
            .ok_or(UplinkError::NoQueue(pair))?
            .take()
            .ok_or(UplinkError::QueueBusy(pair))
    }

    pub(crate) fn put(&self, pair: usize, queue: Box<dyn UplinkQueue>) {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = q.get_mut(pair) {
            *slot = Some(queue);
        }
    }
}
