// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Inputs the data-path fuzz targets (`fuzz/fuzz_targets/{tx,rx}_path.rs`) found, as
//! regression tests against the real TX and RX paths. Each test names the input it
//! came from (in the fuzz crate's format, see `fuzz/src/rig.rs`) and rebuilds the
//! guest memory that input describes.

use std::os::fd::RawFd;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::ring::{Ring, RingSetup};
use super::rx::{RxOutcome, RxPath};
use super::tx::{TxOutcome, TxPath};
use crate::metrics::QueueMetrics;
use crate::netmem::{FragList, GuestPageMap, RegionSpec, SharedPageMap};
use crate::uplink::{SendStatus, UplinkError, UplinkQueue};
use crate::virtio::{Features, VirtioNetHdr};

/// Guest memory of the fuzz targets' first layout: one 64 KiB region at 0, zeroed,
/// with `patches` (guest-physical address, bytes) written into it.
fn guest(patches: &[(u64, &[u8])]) -> Arc<GuestPageMap> {
    let file = crate::netmem::test_memfd(0x1_0000);
    let shared = SharedPageMap::new();
    shared
        .set_table(vec![RegionSpec {
            gpa: 0,
            size: 0x1_0000,
            file,
            offset: 0,
            user_addr: 0x7f00_0000_0000,
        }])
        .unwrap();
    let map = shared.load();
    for (gpa, bytes) in patches {
        use vm_memory::{Bytes, GuestAddress};
        map.mem().write_slice(bytes, GuestAddress(*gpa)).unwrap();
    }
    map
}

fn ring(size: u16, desc: u64, avail: u64, used: u64) -> Ring {
    let setup = RingSetup {
        size,
        desc,
        avail,
        used,
        next_avail: 0,
        next_used: 0,
        kick: EventFd::new(EFD_NONBLOCK).unwrap(),
        call: None,
        event_idx: false,
        indirect: false,
        log: None,
    };
    Ring::new(setup, 256).unwrap()
}

/// An uplink with one 60-byte packet to receive, accepting every send.
struct OnePacket(bool);

impl UplinkQueue for OnePacket {
    fn fd(&self) -> Option<RawFd> {
        None
    }

    fn send(&mut self, _: &VirtioNetHdr, _: &FragList<'_>) -> Result<SendStatus, UplinkError> {
        Ok(SendStatus::Sent)
    }

    fn recv(&mut self, bufs: &FragList<'_>) -> Result<Option<usize>, UplinkError> {
        if std::mem::take(&mut self.0) {
            bufs.copy_from(&[0u8; 60]);
            return Ok(Some(60));
        }
        Ok(None)
    }
}

/// rx_path input `000400000000fcff0000000200000000000000000000010000000000dc0503033c00`
/// `feff000002000100`: a 16-entry RX ring whose avail ring starts 4 bytes before the
/// end of guest memory, so its index (1) is readable and its entries are not. The RX
/// path was promised a head it could never pop, asked the guest for more buffers, was
/// told (from the same index) that there were some, and tried again: forever, a
/// worker spinning a core and never returning to its loop (not even to stop).
#[test]
fn rx_ring_with_entries_outside_memory_breaks_instead_of_spinning() {
    let (done, wait) = mpsc::channel();
    std::thread::spawn(move || {
        let map = guest(&[(0xfffe, &1u16.to_le_bytes())]);
        let mut r = ring(16, 0, 0xfffc, 0x200);
        let m = QueueMetrics::default();
        let mut up = OnePacket(true);
        let features = Features::from_bits(1 << 32);
        let outcome = RxPath::default().process(&mut r, &map, &mut up, features, 1500, &m);
        let _ = done.send((outcome, r.fault().is_some(), m.ring_errors.get()));
    });
    let (outcome, broken, ring_errors) = wait
        .recv_timeout(Duration::from_secs(10))
        .expect("RxPath::process did not return");
    assert_eq!(outcome, RxOutcome::NoBuffers);
    assert!(broken, "ring not marked broken");
    assert_eq!(ring_errors, 1);
}

/// The same ring on the TX side: no head is popped and the ring is broken (it used to
/// stay "drained" with a pending head, so the worker looked at it again after every
/// kick).
#[test]
fn tx_ring_with_entries_outside_memory_breaks() {
    let map = guest(&[(0xfffe, &1u16.to_le_bytes())]);
    let mut r = ring(16, 0, 0xfffc, 0x200);
    let m = QueueMetrics::default();
    let outcome =
        TxPath::default().process(&mut r, &map, &mut OnePacket(false), Features::default(), &m);
    assert_eq!(outcome, TxOutcome::Drained);
    assert!(r.fault().is_some(), "ring not marked broken");
    assert_eq!(m.ring_errors.get(), 1);
    assert_eq!(r.indices(), (0, 0));
}

/// The check does not refuse an avail ring that lies in guest memory.
#[test]
fn avail_ring_check_accepts_a_ring_in_memory() {
    let map = guest(&[(0x102, &1u16.to_le_bytes()), (0x104, &0u16.to_le_bytes())]);
    let mut r = ring(16, 0, 0x100, 0x200);
    let m = QueueMetrics::default();
    assert_eq!(r.available(&map, &m), Some(1));
    assert!(r.fault().is_none());
}
