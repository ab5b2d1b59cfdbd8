// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The guest of the data path's unit tests.
//!
//! - [`TestGuest`]: guest memory mapped the way the daemon maps it (regions of one
//!   memfd published through a [`SharedPageMap`]), so the rings and packets are read
//!   through the same [`GuestPageMap`] as in production, with a bump allocator.
//! - [`driver`]: the driver side of a split virtqueue: the integration tests' own
//!   `SplitRing` (`tests/common/ring.rs`, included as is), so the project has one way
//!   to build chains, for the daemon and for the library alike.
//! - [`Rig`]: one queue as a test drives it: the driver ring, the worker's [`Ring`]
//!   over it, the queue's counters and a [`FakeUplink`].

use std::cell::Cell;
use std::collections::VecDeque;

use std::os::fd::RawFd;
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::ring::{Ring, RingSetup};
use crate::metrics::QueueMetrics;
use crate::netmem::{FragList, GuestPageMap, RegionSpec, SharedPageMap};
use crate::uplink::{SendStatus, UplinkError, UplinkQueue};
use crate::virtio::VirtioNetHdr;

#[allow(dead_code)] // the integration tests use parts of it the unit tests do not
#[path = "../../tests/common/ring.rs"]
pub(crate) mod driver;

use driver::{Buf, RingMemory, SplitRing, Used};

/// One mebibyte.
pub(crate) const MIB: u64 = 1 << 20;

/// The guest's regions as (guest-physical base, size): two pieces of one memfd, the
/// second right after the first in guest-physical space (a buffer may straddle them:
/// two host mappings, two frags).
pub(crate) const REGIONS: [(u64, u64); 2] = [(0, 4 * MIB), (4 * MIB, 4 * MIB)];

/// A guest-physical address in no region.
pub(crate) const HOLE_GPA: u64 = 0x1_0000_0000;

/// End of guest memory (the hole starts here).
pub(crate) const MEM_END: u64 = REGIONS[1].0 + REGIONS[1].1;

use crate::netmem::test_memfd as memfd;

/// Guest memory as a worker sees it, and the driver's allocator.
pub(crate) struct TestGuest {
    /// The current snapshot (what a worker loads per batch).
    pub(crate) map: Arc<GuestPageMap>,
    /// Publishes new snapshots on memory updates.
    shared: Arc<SharedPageMap>,
    /// Bump-allocator cursor per region (offset from the region base).
    next: [Cell<u64>; 2],
}

impl TestGuest {
    /// Both [`REGIONS`], zero-filled.
    pub(crate) fn new() -> Self {
        let file = memfd(REGIONS.iter().map(|r| r.1).sum());
        let mut offset = 0;
        let specs = REGIONS
            .iter()
            .map(|&(gpa, size)| {
                let spec = RegionSpec {
                    gpa,
                    size,
                    file: file.try_clone().expect("dup the memfd"),
                    offset,
                    user_addr: 0x7f00_0000_0000 + gpa,
                };
                offset += size;
                spec
            })
            .collect();
        let shared = Arc::new(SharedPageMap::new());
        shared.set_table(specs).expect("map the test guest");
        TestGuest {
            map: shared.load(),
            shared,
            next: [Cell::new(0), Cell::new(0)],
        }
    }

    /// The published snapshots, as a worker is handed them.
    pub(crate) fn shared(&self) -> Arc<SharedPageMap> {
        Arc::clone(&self.shared)
    }

    /// Remove region `i` (REM_MEM_REG) and take the new snapshot.
    pub(crate) fn remove_region(&mut self, i: usize) {
        let (gpa, size) = REGIONS[i];
        // Let go of the old snapshot first: the removal waits for its last user.
        self.map = Arc::new(GuestPageMap::default());
        self.shared
            .remove_region(gpa, size)
            .expect("remove the region");
        self.map = self.shared.load();
    }

    /// Allocate `len` zeroed bytes in region `region`, 64-byte aligned.
    pub(crate) fn buf(&self, region: usize, len: usize) -> GuestAddress {
        self.alloc(region, u64::try_from(len).expect("fits u64"), 64)
    }

    /// Write `bytes` at `gpa`.
    pub(crate) fn write(&self, gpa: GuestAddress, bytes: &[u8]) {
        self.map
            .mem()
            .write_slice(bytes, gpa)
            .expect("write guest memory");
    }

    /// Read `len` bytes at `gpa`.
    pub(crate) fn read(&self, gpa: GuestAddress, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.map
            .mem()
            .read_slice(&mut v, gpa)
            .expect("read guest memory");
        v
    }

    /// The bytes of a used chain's buffers, in order, `used.len` of them.
    pub(crate) fn used_bytes(&self, used: &Used) -> Vec<u8> {
        let mut out = Vec::new();
        let mut left = usize::try_from(used.len).expect("fits usize");
        for b in &used.bufs {
            let n = left.min(usize::try_from(b.len).expect("fits usize"));
            out.extend(self.read(GuestAddress(b.addr), n));
            left -= n;
        }
        assert_eq!(left, 0, "used length {} beyond the chain", used.len);
        out
    }

    /// A ring setup over `drv` as the control plane hands it to a worker: indices
    /// where the driver stands, fresh kick and call eventfds, no EVENT_IDX, no
    /// indirect descriptors.
    pub(crate) fn setup(&self, drv: &SplitRing) -> RingSetup {
        let (desc, avail, used) = drv.addresses();
        RingSetup {
            size: drv.size(),
            desc: desc.0,
            avail: avail.0,
            used: used.0,
            next_avail: drv.avail_idx(),
            next_used: drv.last_used(),
            kick: EventFd::new(EFD_NONBLOCK).expect("kick eventfd"),
            call: Some(EventFd::new(EFD_NONBLOCK).expect("call eventfd")),
            event_idx: false,
            indirect: false,
            log: None,
        }
    }
}

impl RingMemory for TestGuest {
    fn mem(&self) -> &GuestMemoryMmap {
        self.map.mem()
    }

    fn alloc(&self, region: usize, len: u64, align: u64) -> GuestAddress {
        let (base, size) = REGIONS[region];
        let cursor = &self.next[region];
        let start = cursor.get().next_multiple_of(align);
        let end = start + len;
        assert!(
            end <= size,
            "test guest region {region} exhausted ({end} > {size} bytes)"
        );
        cursor.set(end);
        let gpa = GuestAddress(base + start);
        self.write(gpa, &vec![0u8; usize::try_from(len).expect("fits usize")]);
        gpa
    }
}

/// `len` bytes of a pattern that differs with `seed` (so packets can be told apart).
pub(crate) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| u8::try_from(i % 251).expect("fits u8").wrapping_add(seed))
        .collect()
}

/// Counter values expected after a test; every counter not named must be zero.
pub(crate) fn assert_counters(m: &QueueMetrics, expected: &[(&str, u64)]) {
    let fields = m.snapshot().fields();
    for (name, _) in expected {
        assert!(
            fields.iter().any(|(n, _)| n == name),
            "no counter named {name}"
        );
    }
    let mut got: Vec<(&str, u64)> = fields.into_iter().filter(|(_, v)| *v != 0).collect();
    let mut want: Vec<(&str, u64)> = expected.iter().copied().filter(|(_, v)| *v != 0).collect();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want, "counters (the non-zero ones)");
}

/// What a [`FakeUplink`] answers to one send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// This status.
    Status(SendStatus),
    /// An error.
    Fail,
}

/// One packet handed to [`FakeUplink::send`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sent {
    /// Its virtio-net header.
    pub(crate) hdr: VirtioNetHdr,
    /// Its bytes (the header not included).
    pub(crate) bytes: Vec<u8>,
    /// How many frags they came in.
    pub(crate) frags: usize,
    /// What the uplink answered.
    pub(crate) answer: Answer,
}

/// An uplink queue whose answers a test scripts, recording what it was given.
#[derive(Debug, Default)]
pub(crate) struct FakeUplink {
    /// Answers to the next sends, in order; `Sent` once they run out.
    pub(crate) answers: VecDeque<Answer>,
    /// Every send, whatever the answer.
    pub(crate) sends: Vec<Sent>,
    /// Packets sent `InFlight` that completed and have not been reaped yet.
    pub(crate) completed: usize,
    /// Packets sent `InFlight` and not reaped.
    pub(crate) in_flight: usize,
    /// Packets in flight given up by `forget_in_flight`.
    pub(crate) forgotten: usize,
    /// Calls of `flush`.
    pub(crate) flushes: usize,
    /// Packets to receive (virtio-net header first), in order; `Err` fails the receive.
    pub(crate) inbound: VecDeque<Result<Vec<u8>, ()>>,
    /// The buffer space offered to each receive that found a packet.
    pub(crate) offered: Vec<usize>,
}

impl FakeUplink {
    /// The packets the uplink took (sent or in flight), in order.
    pub(crate) fn taken(&self) -> Vec<&Sent> {
        self.sends
            .iter()
            .filter(|s| {
                matches!(
                    s.answer,
                    Answer::Status(SendStatus::Sent | SendStatus::InFlight)
                )
            })
            .collect()
    }

    /// Report `n` more packets in flight as complete.
    pub(crate) fn complete(&mut self, n: usize) {
        assert!(self.completed + n <= self.in_flight, "more than in flight");
        self.completed += n;
    }
}

impl UplinkQueue for FakeUplink {
    fn fd(&self) -> Option<RawFd> {
        None
    }

    fn send(&mut self, hdr: &VirtioNetHdr, pkt: &FragList<'_>) -> Result<SendStatus, UplinkError> {
        let mut bytes = vec![0u8; pkt.len()];
        assert_eq!(pkt.copy_to(&mut bytes), pkt.len());
        let answer = self
            .answers
            .pop_front()
            .unwrap_or(Answer::Status(SendStatus::Sent));
        self.sends.push(Sent {
            hdr: *hdr,
            bytes,
            frags: pkt.nr_frags(),
            answer,
        });
        match answer {
            Answer::Status(s) => {
                if s == SendStatus::InFlight {
                    self.in_flight += 1;
                }
                Ok(s)
            }
            Answer::Fail => Err(UplinkError::Io(std::io::Error::other(
                "scripted send failure",
            ))),
        }
    }

    fn recv(&mut self, bufs: &FragList<'_>) -> Result<Option<usize>, UplinkError> {
        match self.inbound.pop_front() {
            None => Ok(None),
            Some(Err(())) => Err(UplinkError::Io(std::io::Error::other(
                "scripted receive failure",
            ))),
            Some(Ok(pkt)) => {
                self.offered.push(bufs.len());
                bufs.copy_from(&pkt);
                Ok(Some(pkt.len()))
            }
        }
    }

    fn flush(&mut self) -> Result<(), UplinkError> {
        self.flushes += 1;
        Ok(())
    }

    fn reap_in_flight(&mut self) -> usize {
        self.in_flight -= self.completed;
        std::mem::take(&mut self.completed)
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn forget_in_flight(&mut self) {
        self.forgotten += self.in_flight;
        self.in_flight = 0;
        self.completed = 0;
    }
}

/// One queue as a test drives it.
pub(crate) struct Rig {
    /// Guest memory.
    pub(crate) g: TestGuest,
    /// The driver side.
    pub(crate) drv: SplitRing,
    /// The worker's side.
    pub(crate) dev: Ring,
    /// The queue pair's counters.
    pub(crate) m: QueueMetrics,
    /// The uplink queue.
    pub(crate) up: FakeUplink,
}

impl Rig {
    /// A ring of `size` entries in region 0; `tweak` adjusts the setup (EVENT_IDX,
    /// indirect descriptors, indices, addresses) before the worker's ring is built.
    pub(crate) fn new(size: u16, tweak: impl FnOnce(&mut RingSetup)) -> Self {
        let g = TestGuest::new();
        let drv = SplitRing::new(&g, 0, size);
        Self::over(g, drv, tweak)
    }

    /// The rig over a driver ring already set up (e.g. started at another index).
    pub(crate) fn over(g: TestGuest, drv: SplitRing, tweak: impl FnOnce(&mut RingSetup)) -> Self {
        let mut setup = g.setup(&drv);
        tweak(&mut setup);
        let dev = Ring::new(setup, drv.size()).expect("ring setup");
        Rig {
            g,
            drv,
            dev,
            m: QueueMetrics::default(),
            up: FakeUplink::default(),
        }
    }

    /// Post one chain and publish it; returns its head.
    pub(crate) fn post(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.drv.add_chain(&self.g, bufs);
        self.drv.publish(&self.g);
        head
    }

    /// The chains the device returned since the last call.
    pub(crate) fn used(&mut self) -> Vec<Used> {
        self.drv.take_used(&self.g, &String::new)
    }

    /// (head, length) of the chains the device returned since the last call.
    pub(crate) fn used_heads(&mut self) -> Vec<(u16, u32)> {
        self.used().iter().map(|u| (u.id, u.len)).collect()
    }

    /// Interrupts raised since the last call (the call eventfd's count).
    pub(crate) fn calls(&self) -> u64 {
        self.dev.call.as_ref().map_or(0, |c| c.read().unwrap_or(0))
    }
}
