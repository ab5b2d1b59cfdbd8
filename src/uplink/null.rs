// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Test and benchmark uplinks: `null` discards every transmitted packet and never
//! receives; `loopback` reflects each transmitted packet back to the same queue
//! pair's RX side (bounded: beyond [`LOOPBACK_DEPTH`] packets, sends are refused and
//! counted as uplink drops). Both measure the vhost-user ring path alone. Packets a
//! loopback queue still holds when its frontend disconnects are discarded: the next
//! frontend starts with an empty queue.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{QueueSlots, SendStatus, Uplink, UplinkError, UplinkQueue};
use crate::netmem::FragList;
use crate::virtio::{Features, VirtioNetHdr, VNET_HDR_LEN};

/// Packets a loopback queue holds before refusing sends.
pub const LOOPBACK_DEPTH: usize = 1024;

/// Which test uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestUplinkKind {
    /// Discard TX, no RX.
    Null,
    /// Reflect TX to RX.
    Loopback,
}

/// A null or loopback uplink.
pub struct TestUplink {
    kind: TestUplinkKind,
    queues: QueueSlots,
}

impl TestUplink {
    /// Build with `queue_pairs` queues.
    pub fn new(kind: TestUplinkKind, queue_pairs: usize) -> Result<Self, UplinkError> {
        let mut queues: Vec<Box<dyn UplinkQueue>> = Vec::new();
        for _ in 0..queue_pairs {
            queues.push(match kind {
                TestUplinkKind::Null => Box::new(NullQueue),
                TestUplinkKind::Loopback => Box::new(LoopbackQueue {
                    packets: VecDeque::new(),
                    free: Vec::new(),
                    ready: EventFd::new(EFD_NONBLOCK)?,
                }),
            });
        }
        Ok(TestUplink {
            kind,
            queues: QueueSlots::new(queues),
        })
    }
}

impl Uplink for TestUplink {
    fn describe(&self) -> String {
        match self.kind {
            TestUplinkKind::Null => "null uplink".into(),
            TestUplinkKind::Loopback => "loopback uplink".into(),
        }
    }

    fn take_queue(&self, pair: usize) -> Result<Box<dyn UplinkQueue>, UplinkError> {
        self.queues.take(pair)
    }

    fn return_queue(&self, pair: usize, queue: Box<dyn UplinkQueue>) {
        self.queues.put(pair, queue)
    }

    fn apply_features(&self, _features: Features) -> Result<(), UplinkError> {
        Ok(())
    }

    fn detach_memory(&self) {
        self.queues.for_each_idle(|q| q.detach_memory());
    }
}

struct NullQueue;

impl UplinkQueue for NullQueue {
    fn fd(&self) -> Option<RawFd> {
        None
    }

    fn send(
        &mut self,
        _hdr: &VirtioNetHdr,
        _pkt: &FragList<'_>,
    ) -> Result<SendStatus, UplinkError> {
        Ok(SendStatus::Sent)
    }

    fn recv(&mut self, _bufs: &FragList<'_>) -> Result<Option<usize>, UplinkError> {
        Ok(None)
    }
}

struct LoopbackQueue {
    /// Packets with their virtio header in front.
    packets: VecDeque<Vec<u8>>,
    /// Spent buffers kept for reuse.
    free: Vec<Vec<u8>>,
    /// Readable while `packets` is not empty.
    ready: EventFd,
}

impl UplinkQueue for LoopbackQueue {
    fn fd(&self) -> Option<RawFd> {
        Some(self.ready.as_raw_fd())
    }

    fn send(&mut self, hdr: &VirtioNetHdr, pkt: &FragList<'_>) -> Result<SendStatus, UplinkError> {
        if self.packets.len() >= LOOPBACK_DEPTH {
            return Ok(SendStatus::Dropped);
        }
        let mut buf = self.free.pop().unwrap_or_default();
        buf.clear();
        let reflected = VirtioNetHdr {
            num_buffers: 0,
            ..*hdr
        };
        buf.extend_from_slice(&reflected.to_bytes());
        buf.resize(VNET_HDR_LEN + pkt.len(), 0);
        pkt.copy_to(&mut buf[VNET_HDR_LEN..]);
        // The eventfd is readable exactly while packets wait: one write when the queue
        // stops being empty, not one per packet.
        if self.packets.is_empty() {
            self.ready.write(1)?;
        }
        self.packets.push_back(buf);
        Ok(SendStatus::Sent)
    }

    fn recv(&mut self, bufs: &FragList<'_>) -> Result<Option<usize>, UplinkError> {
        let Some(pkt) = self.packets.pop_front() else {
            return Ok(None);
        };
        if self.packets.is_empty() {
            // Nothing left: drain the eventfd so epoll stops reporting it.
            let _ = self.ready.read();
        }
        // Like a TAP read: a prefix is written if the buffers are too small, and the full
        // length is reported.
        bufs.copy_from(&pkt);
        let n = pkt.len();
        self.free.push(pkt);
        Ok(Some(n))
    }

    /// The frontend went away: what it sent is not the next frontend's to receive.
    fn detach_memory(&mut self) {
        if !self.packets.is_empty() {
            let _ = self.ready.read();
        }
        self.free.extend(self.packets.drain(..));
        self.free.truncate(LOOPBACK_DEPTH);
    }
}
