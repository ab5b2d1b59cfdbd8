// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Uplinks: where guest packets go and where inbound packets come from.
//!
//! [`Uplink`] is the device (a TAP, an AF_XDP socket set, the null, loopback and
//! generator test uplinks); it hands out one [`UplinkQueue`] per queue pair, which the pair's worker
//! owns while it runs. TX takes a parsed virtio-net header and the packet as a
//! [`FragList`] over guest pages; RX writes one packet (virtio header first) into a
//! [`FragList`] over guest buffers. [`announce`] builds the RARP frame a migrated
//! guest is announced with ([`Uplink::announce`]).

pub mod announce;
pub mod generator;
pub mod null;
pub mod tap;
pub mod xdp;

use std::os::fd::RawFd;
use std::sync::Arc;

use crate::metrics::NamedGroup;
use crate::netmem::{FragList, GuestPageMap};
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
}

/// Outcome of [`UplinkQueue::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendStatus {
    /// The packet left; the uplink no longer reads its frags.
    Sent,
    /// The packet is on its way and the uplink still reads its frags in place (zero-copy
    /// transmit from guest memory): the chain must not go back to the guest until
    /// [`UplinkQueue::reap_in_flight`] reports the packet done.
    InFlight,
    /// No room now: keep the packet, wait for the queue fd to be writable.
    WouldBlock,
    /// The uplink refused the packet (counted by the caller as an uplink drop).
    Dropped,
    /// The uplink queue is gone ([`UplinkQueue::down`] says why): the packet is
    /// dropped (counted by the caller as `tx_drop_uplink_down`).
    Down,
}

/// One queue pair's side of an uplink, owned by that pair's worker.
pub trait UplinkQueue: Send {
    /// File descriptor to poll: readable when [`Self::recv`] may find a packet,
    /// writable when a [`SendStatus::WouldBlock`] send may succeed (unless
    /// [`Self::tx_fd`] names another one). None: never ready.
    fn fd(&self) -> Option<RawFd>;

    /// File descriptor that turns writable when a [`SendStatus::WouldBlock`] send may
    /// succeed, where that is not [`Self::fd`]. The worker polls it only while TX is
    /// blocked, so an uplink whose every send wakes the pollers of its fd (an AF_XDP
    /// socket in copy mode) can keep sends on an fd nobody waits on.
    fn tx_fd(&self) -> Option<RawFd> {
        self.fd()
    }

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

    /// Packets sent with [`SendStatus::InFlight`] that completed since the last call,
    /// counted in the order they were sent (their chains can go back to the guest).
    fn reap_in_flight(&mut self) -> usize {
        0
    }

    /// Packets sent with [`SendStatus::InFlight`] not reported by
    /// [`Self::reap_in_flight`] yet.
    fn in_flight(&self) -> usize {
        0
    }

    /// The caller gave up waiting for the packets in flight (its worker stops and
    /// returns their chains to the guest): they are not reported any more, and the
    /// uplink must no longer read their frags.
    fn forget_in_flight(&mut self) {}

    /// The guest memory snapshot the frags of the following sends point into, given
    /// whenever it changes (AF_XDP zero-copy transmit registers it as a UMEM).
    fn attach_memory(&mut self, _map: &Arc<GuestPageMap>) {}

    /// Guest memory is going away (the frontend disconnected): release anything that
    /// refers to it.
    fn detach_memory(&mut self) {}

    /// Why the queue is gone (its device was deleted), or None while it works. A gone
    /// queue answers every send with [`SendStatus::Down`] and is not polled; the
    /// worker calls [`Self::reopen`] now and then.
    fn down(&self) -> Option<&str> {
        None
    }

    /// Find out whether the queue is still there (its fd reported an error or a
    /// hang-up); [`Self::down`] tells the answer.
    fn probe(&mut self) {}

    /// Try to bring a gone queue back: Ok(true) when it works again (its fds may have
    /// changed), Ok(false) when its device is not back yet.
    fn reopen(&mut self) -> Result<bool, UplinkError> {
        Ok(false)
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

    /// Guest memory is going away (the frontend disconnected, every worker stopped):
    /// the queues held by the uplink release anything that refers to it.
    fn detach_memory(&self) {}

    /// Send `frame` (an Ethernet frame of the backend's own: the RARP announcement of
    /// a migrated guest) out of the uplink towards the network.
    fn announce(&self, _frame: &[u8]) -> Result<(), UplinkError> {
        Err(UplinkError::Io(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "this uplink has no network to announce to",
        )))
    }

    /// Take the link's carrier down or up (TAP: `TUNSETCARRIER`): down while a guest
    /// handed over to a migration's destination is gone from here, so the bridge or
    /// switch beside the uplink forgets its MAC at once.
    fn set_carrier(&self, _up: bool) -> Result<(), UplinkError> {
        Err(UplinkError::Io(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "this uplink has no carrier of its own",
        )))
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

    /// Call `f` on every queue no worker holds.
    pub(crate) fn for_each_idle(&self, mut f: impl FnMut(&mut dyn UplinkQueue)) {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for queue in q.iter_mut().flatten() {
            f(queue.as_mut());
        }
    }

    pub(crate) fn put(&self, pair: usize, queue: Box<dyn UplinkQueue>) {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = q.get_mut(pair) {
            *slot = Some(queue);
        }
    }
}
