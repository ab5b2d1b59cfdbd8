// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Zero-copy TX (`--xdp-zerocopy-tx`): a queue's [`ZeroCopyTx`] registers each guest
//! memory snapshot its worker attaches as a second UMEM ([`GuestUmem`], on its own
//! interface queue) and sends packets straight from it. Such a packet is in flight, its
//! chain held by the worker, until the guest UMEM's completion ring gives it back; a
//! registration is retired when the memory changes or goes.

use std::ffi::CString;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::guest_umem::GuestUmem;
use super::queue::kick_ring;
use super::socket::BindMode;
use super::stats::XdpQueueStats;
use crate::log_limit::LogLimiter;
use crate::netmem::{FragList, GuestPageMap};

/// How long retiring a guest UMEM waits for its packets in flight.
const ZC_RETIRE_WAIT: Duration = Duration::from_millis(50);

/// Zero-copy TX state of one queue.
///
/// The methods that log or count take the owning queue's id (`queue`, for the log
/// lines), its counters and its log limiter.
pub(super) struct ZeroCopyTx {
    iface: CString,
    /// Interface queue of the guest UMEM's TX socket.
    iface_queue: u32,
    mode: BindMode,
    /// The current snapshot's registration (None: no memory, or it failed).
    umem: Option<GuestUmem>,
    /// Generation of the snapshot last attached.
    generation: Option<u64>,
    /// Packets of a retired registration to report complete (its socket is closed).
    carried: usize,
}

impl ZeroCopyTx {
    /// Zero-copy TX on interface queue `iface_queue` of `iface`, bound in `mode`;
    /// nothing is registered until memory is attached.
    pub(super) fn new(iface: CString, iface_queue: u32, mode: BindMode) -> Self {
        ZeroCopyTx {
            iface,
            iface_queue,
            mode,
            umem: None,
            generation: None,
            carried: 0,
        }
    }

    /// Send `pkt` from guest memory; true when it went (counted in `tx_packets` and
    /// `tx_zc_packets`). False when it must take the copy path: no memory registered,
    /// or (counted in `tx_zc_copied`) a checksum to complete or a packet the guest
    /// UMEM refused.
    pub(super) fn send(
        &mut self,
        pkt: &FragList<'_>,
        needs_csum: bool,
        stats: &XdpQueueStats,
    ) -> bool {
        let Some(guest) = self.umem.as_mut() else {
            return false;
        };
        // A checksum to complete would mean writing into the guest's buffer.
        if !needs_csum && guest.send(pkt).is_ok() {
            stats.tx_packets.inc();
            stats.tx_zc_packets.inc();
            return true;
        }
        stats.tx_zc_copied.inc();
        false
    }

    /// Kick the guest UMEM's TX ring and read its completion ring.
    pub(super) fn flush(&mut self, queue: u32, stats: &XdpQueueStats, log_limit: &mut LogLimiter) {
        let Some(guest) = self.umem.as_mut() else {
            return;
        };
        if guest.packets_out() > 0 {
            kick_ring(guest.tx_ring(), queue, stats, log_limit);
        }
        let r = guest.reap();
        stats.tx_zc_completed.add(r.packets);
        if r.out_of_order > 0 {
            stats.tx_zc_out_of_order.add(r.out_of_order);
        }
    }

    /// Flush, then the packets that completed since the last call (see
    /// [`UplinkQueue::reap_in_flight`](crate::uplink::UplinkQueue::reap_in_flight)).
    pub(super) fn reap(
        &mut self,
        queue: u32,
        stats: &XdpQueueStats,
        log_limit: &mut LogLimiter,
    ) -> usize {
        self.flush(queue, stats, log_limit);
        let done = self.umem.as_mut().map_or(0, GuestUmem::take_completed);
        done + std::mem::take(&mut self.carried)
    }

    /// Packets sent and not reported complete yet.
    pub(super) fn in_flight(&self) -> usize {
        self.carried + self.umem.as_ref().map_or(0, GuestUmem::unreported)
    }

    /// Close the registration at once and report nothing of what was in flight.
    pub(super) fn forget(&mut self, queue: u32) {
        self.carried = 0;
        self.generation = None;
        if let Some(old) = self.umem.take() {
            log::warn!(
                "xdp queue {}: guest umem closed with {} packets in flight",
                queue,
                old.packets_out()
            );
        }
    }

    /// Register the snapshot `map`, unless it is the one already attached: the old
    /// registration is retired first. A failure leaves zero-copy TX off until the
    /// memory changes.
    pub(super) fn attach(
        &mut self,
        map: &Arc<GuestPageMap>,
        queue: u32,
        stats: &XdpQueueStats,
        log_limit: &mut LogLimiter,
    ) {
        if self.generation == Some(map.generation()) {
            return;
        }
        self.retire(queue, stats, log_limit);
        self.generation = Some(map.generation());
        if map.regions().is_empty() {
            return;
        }
        match GuestUmem::build(map, &self.iface, self.iface_queue, self.mode) {
            Ok(guest) => {
                stats.tx_zc_umems.inc();
                log::info!(
                    "xdp queue {}: guest memory ({} regions) registered for zero-copy tx on interface queue {}{}",
                    queue,
                    map.regions().len(),
                    self.iface_queue,
                    if guest.multi_buffer() {
                        ""
                    } else {
                        " (no multi-buffer: single-frag packets only)"
                    }
                );
                self.umem = Some(guest);
            }
            Err(e) => {
                stats.tx_zc_umem_errors.inc();
                log::warn!("xdp queue {queue}: zero-copy tx off until guest memory changes: {e}");
            }
        }
    }

    /// Retire the registration when the memory goes; nothing is reported any more.
    pub(super) fn detach(&mut self, queue: u32, stats: &XdpQueueStats, log_limit: &mut LogLimiter) {
        self.retire(queue, stats, log_limit);
        // No worker is left to report to.
        self.carried = 0;
        self.generation = None;
    }

    /// Drop the current guest UMEM registration after giving its packets a moment to
    /// complete; those not reported yet are reported complete later (the socket is
    /// closed, so the kernel no longer reads their pages).
    fn retire(&mut self, queue: u32, stats: &XdpQueueStats, log_limit: &mut LogLimiter) {
        let deadline = Instant::now() + ZC_RETIRE_WAIT;
        loop {
            let out = self.umem.as_ref().map_or(0, GuestUmem::packets_out);
            if out == 0 || Instant::now() >= deadline {
                break;
            }
            self.flush(queue, stats, log_limit);
            std::thread::sleep(Duration::from_millis(1));
        }
        if let Some(old) = self.umem.take() {
            self.carried += old.unreported();
            if old.packets_out() > 0 {
                log::warn!(
                    "xdp queue {}: guest umem retired with {} packets in flight",
                    queue,
                    old.packets_out()
                );
            }
        }
    }
}
