// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The input format shared by the TX and RX path targets, and the `Ring` it builds.
//!
//! Layout of an input (little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 1 | memory layout ([`crate::memory::LAYOUTS`]) |
//! | 1 | log2 of the queue size (modulo 9: 1 to 256) |
//! | 4, 4, 4 | descriptor table, avail ring, used ring (guest-physical) |
//! | 2, 2 | next avail index, next used index |
//! | 8 | acked virtio features (masked with what the crate offers) |
//! | 1 | bit 0 EVENT_IDX, bit 1 RING_INDIRECT_DESC, bit 2 a call eventfd |
//! | 1 | rounds of `process` (modulo 4, plus 1) |
//! | 2 | MTU (RX) |
//! | 1 + n | uplink script: its length, then its bytes ([`crate::uplink`]) |
//! | rest | guest memory image: patches of [`crate::patch`] at guest-physical offsets |

use std::sync::OnceLock;

use vhost_netmem::datapath::{Ring, RingSetup};
use vhost_netmem::virtio::features::SUPPORTED;
use vhost_netmem::virtio::Features;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::input::{Cursor, Writer};
use crate::model::RingGeom;

/// Largest ring size the control plane accepts by default (`--queue-size`).
pub const MAX_QUEUE_SIZE: u16 = 256;

/// A decoded TX/RX input.
#[derive(Debug, Clone, Default)]
pub struct RingInput {
    /// Memory layout number.
    pub layout: u8,
    /// log2 of the queue size.
    pub size_log2: u8,
    /// Descriptor table.
    pub desc: u32,
    /// Avail ring.
    pub avail: u32,
    /// Used ring.
    pub used: u32,
    /// First avail index to process.
    pub next_avail: u16,
    /// First used index to write.
    pub next_used: u16,
    /// Acked features (before masking).
    pub features: u64,
    /// EVENT_IDX, RING_INDIRECT_DESC, call eventfd.
    pub flags: u8,
    /// Rounds of `process`.
    pub rounds: u8,
    /// MTU for RX.
    pub mtu: u16,
    /// The uplink's script.
    pub script: Vec<u8>,
    /// Guest memory, as patches ([`crate::patch`]).
    pub image: Vec<u8>,
}

impl RingInput {
    /// Decode (never fails: missing fields are zero).
    pub fn decode(data: &[u8]) -> Self {
        let mut c = Cursor::new(data);
        let mut r = RingInput {
            layout: c.u8(),
            size_log2: c.u8(),
            desc: c.u32(),
            avail: c.u32(),
            used: c.u32(),
            next_avail: c.u16(),
            next_used: c.u16(),
            features: c.u64(),
            flags: c.u8(),
            rounds: c.u8(),
            mtu: c.u16(),
            ..Default::default()
        };
        let n = usize::from(c.u8());
        r.script = c.bytes(n).to_vec();
        r.image = c.rest().to_vec();
        r
    }

    /// Encode (for seeds).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(self.layout)
            .u8(self.size_log2)
            .u32(self.desc)
            .u32(self.avail)
            .u32(self.used)
            .u16(self.next_avail)
            .u16(self.next_used)
            .u64(self.features)
            .u8(self.flags)
            .u8(self.rounds)
            .u16(self.mtu)
            .u8(u8::try_from(self.script.len()).expect("script of at most 255 bytes"))
            .bytes(&self.script)
            .bytes(&self.image);
        w.0
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        1 << (self.size_log2 % 9)
    }

    /// Rounds of `process`, 1 to 4.
    pub fn rounds(&self) -> usize {
        usize::from(self.rounds % 4) + 1
    }

    /// The acked features, restricted to what the crate offers.
    pub fn features(&self) -> Features {
        Features::from_bits(self.features & SUPPORTED)
    }

    /// The ring's geometry for the model.
    pub fn geom(&self) -> RingGeom {
        RingGeom {
            size: self.size(),
            desc: u64::from(self.desc),
            avail: u64::from(self.avail),
            used: u64::from(self.used),
            indirect: self.flags & 2 != 0,
        }
    }

    /// The ring, as a worker would build it; None when the worker would refuse it too
    /// (a misaligned ring).
    pub fn ring(&self) -> Option<Ring> {
        static CALL: OnceLock<EventFd> = OnceLock::new();
        let call = CALL.get_or_init(|| EventFd::new(EFD_NONBLOCK).expect("eventfd"));
        let setup = RingSetup {
            size: self.size(),
            desc: u64::from(self.desc),
            avail: u64::from(self.avail),
            used: u64::from(self.used),
            next_avail: self.next_avail,
            next_used: self.next_used,
            kick: EventFd::new(EFD_NONBLOCK).expect("eventfd"),
            call: (self.flags & 4 != 0).then(|| call.try_clone().expect("dup eventfd")),
            event_idx: self.flags & 1 != 0,
            indirect: self.flags & 2 != 0,
            log: None,
        };
        // Keep the shared call eventfd from overflowing its counter.
        let _ = call.read();
        Ring::new(setup, MAX_QUEUE_SIZE).ok()
    }
}
