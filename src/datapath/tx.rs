// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! TX: guest TX ring -> `FragList` over guest pages -> uplink.
//!
//! Per chain: walk it, check every buffer is device-readable, read the 12-byte
//! virtio-net header (it may span buffers), validate it against the acked features,
//! turn the rest of the chain into frags (no copy) and hand header + frags to the
//! uplink. The chain goes back to the used ring with length 0 whatever happens,
//! except when the uplink has no room: then the chain is given back to the avail side
//! and the worker waits for the uplink to become writable (no loss); and except when
//! the uplink transmits straight from the guest's pages ([`SendStatus::InFlight`]):
//! then the chain waits, in send order, until the uplink reports the packet complete,
//! so the guest cannot rewrite a buffer the device still reads.
//!
//! Under a rate limit ([`TxPath::process_gated`]) each packet is checked against the
//! limit once it is built (its size known) and before it is sent; a packet the limit
//! does not allow yet goes back to the avail side like one the uplink has no room for,
//! and the look ends [`TxOutcome::Throttled`]. What the uplink took (sent, in flight,
//! or refused) is charged; a chain dropped before the uplink is not.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use super::ring::Virtqueue;
use crate::log_limit::LogLimiter;
use crate::metrics::QueueMetrics;
use crate::netmem::{FragList, GuestPageMap, PageMapError};
use crate::ratelimit::{Gate, Unlimited};
use crate::uplink::{SendStatus, UplinkQueue};
use crate::virtio::chain::Segments;
use crate::virtio::{ChainError, Features, HeaderError, VirtioNetHdr, VNET_HDR_LEN};

/// Largest frame a guest may transmit (64 KiB GSO payload + Ethernet + VLAN).
pub const MAX_TX_FRAME: usize = 65535 + 14 + 4;

/// Chains handled before the guest is notified and the loop checks other work.
pub const TX_BATCH: usize = 256;

/// What the TX path stopped on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxOutcome {
    /// The ring is drained.
    Drained,
    /// The batch budget ran out; more work is pending.
    Budget,
    /// The uplink has no room: wait for it to be writable.
    Blocked,
    /// The rate limit allows the next packet only in this many nanoseconds.
    Throttled(u64),
}

/// Why a guest TX chain was dropped (each reason has its own counter).
#[derive(Debug, thiserror::Error)]
enum TxDrop {
    /// The chain itself is malformed.
    #[error("{0}")]
    Chain(ChainError),
    /// A buffer is outside guest memory.
    #[error("{0}")]
    Memory(PageMapError),
    /// A device-writable buffer in a TX chain.
    #[error("device-writable buffer in a TX chain")]
    Direction,
    /// The chain is shorter than the virtio-net header.
    #[error("chain of {0} bytes is shorter than the virtio-net header")]
    Short(usize),
    /// The virtio-net header asks for something not negotiated or impossible.
    #[error("bad virtio-net header: {0}")]
    Header(HeaderError),
    /// The chain is larger than the largest frame.
    #[error("{0}-byte chain exceeds the largest frame")]
    Oversized(usize),
}

/// How long a stopping worker waits for packets in flight before returning their
/// chains anyway.
const IN_FLIGHT_WAIT: Duration = Duration::from_millis(200);

/// The TX half of a queue pair worker.
#[derive(Debug)]
pub struct TxPath {
    segs: Segments,
    log: LogLimiter,
    /// Heads of chains sent [`SendStatus::InFlight`], in send order.
    in_flight: VecDeque<u16>,
}

impl Default for TxPath {
    fn default() -> Self {
        TxPath {
            segs: Segments::new(),
            log: LogLimiter::new(10),
            in_flight: VecDeque::new(),
        }
    }
}

fn read_header(map: &GuestPageMap, segs: &Segments) -> Result<VirtioNetHdr, TxDrop> {
    // Fast path: the header sits in the first buffer.
    if let Some(first) = segs.first().filter(|s| s.len as usize >= VNET_HDR_LEN) {
        if let Some(b) = map.read_array::<VNET_HDR_LEN>(first.gpa) {
            return Ok(VirtioNetHdr::from_bytes(&b));
        }
    }
    let mut b = [0u8; VNET_HDR_LEN];
    let mut got = 0;
    for s in segs {
        if got == VNET_HDR_LEN {
            break;
        }
        let n = (VNET_HDR_LEN - got).min(s.len as usize);
        map.mem()
            .read_slice(&mut b[got..got + n], GuestAddress(s.gpa))
            .map_err(|_| {
                TxDrop::Memory(PageMapError::OutOfRange {
                    gpa: s.gpa,
                    len: u64::from(s.len),
                })
            })?;
        got += n;
    }
    if got < VNET_HDR_LEN {
        return Err(TxDrop::Short(got));
    }
    Ok(VirtioNetHdr::from_bytes(&b))
}

impl TxPath {
    /// Turn the popped chain in `self.segs` (`chain`: whether its buffers are
    /// usable) into header and frags.
    fn build<'m>(
        &mut self,
        map: &'m GuestPageMap,
        chain: Result<(), ChainError>,
        features: Features,
        frags: &mut FragList<'m>,
    ) -> Result<VirtioNetHdr, TxDrop> {
        chain.map_err(TxDrop::Chain)?;
        if self.segs.iter().any(|s| s.write) {
            return Err(TxDrop::Direction);
        }
        let total: usize = self.segs.iter().map(|s| s.len as usize).sum();
        if total > MAX_TX_FRAME + VNET_HDR_LEN {
            return Err(TxDrop::Oversized(total));
        }
        let hdr = read_header(map, &self.segs)?;
        let mut skip = u32::try_from(VNET_HDR_LEN).unwrap_or(12);
        for s in &self.segs {
            let cut = skip.min(s.len);
            skip -= cut;
            if cut == s.len {
                continue;
            }
            map.push_frags(s.gpa + u64::from(cut), s.len - cut, frags)
                .map_err(TxDrop::Memory)?;
        }
        hdr.validate_tx(features, frags.len())
            .map_err(TxDrop::Header)?;
        Ok(hdr)
    }

    fn count_drop(&mut self, d: &TxDrop, m: &QueueMetrics) {
        match d {
            TxDrop::Chain(ChainError::Wraps { .. }) => m.tx_drop_bad_memory.inc(),
            TxDrop::Chain(_) => m.tx_drop_bad_chain.inc(),
            TxDrop::Memory(_) => m.tx_drop_bad_memory.inc(),
            TxDrop::Direction => m.tx_drop_bad_direction.inc(),
            TxDrop::Short(_) | TxDrop::Header(_) => m.tx_drop_bad_header.inc(),
            TxDrop::Oversized(_) => m.tx_drop_oversized.inc(),
        }
        crate::log_limited!(self.log, warn, "guest TX chain dropped: {d}");
    }

    /// Chains waiting for their packet to complete.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Return the chains of packets the uplink reports complete.
    fn complete<Q: Virtqueue>(
        &mut self,
        ring: &mut Q,
        map: &GuestPageMap,
        uplink: &mut dyn UplinkQueue,
    ) {
        if self.in_flight.is_empty() {
            return;
        }
        for _ in 0..uplink.reap_in_flight() {
            let Some(head) = self.in_flight.pop_front() else {
                log::error!("uplink reported more packets complete than are in flight");
                break;
            };
            let _ = ring.add_used(map, head, 0);
        }
    }

    /// Kick the uplink and return the chains of completed packets (for a worker
    /// woken up while packets are in flight).
    pub fn poll_in_flight<Q: Virtqueue>(
        &mut self,
        ring: &mut Q,
        map: &GuestPageMap,
        uplink: &mut dyn UplinkQueue,
        m: &QueueMetrics,
    ) {
        if self.in_flight.is_empty() {
            return;
        }
        if let Err(e) = uplink.flush() {
            crate::log_limited!(self.log, warn, "uplink flush: {e}");
        }
        self.complete(ring, map, uplink);
        ring.signal(map, m);
    }

    /// The worker stops: wait (bounded) for the packets in flight, then return their
    /// chains whatever happened; the uplink forgets them.
    pub fn finish<Q: Virtqueue>(
        &mut self,
        ring: &mut Q,
        map: &GuestPageMap,
        uplink: &mut dyn UplinkQueue,
        m: &QueueMetrics,
    ) {
        let deadline = Instant::now() + IN_FLIGHT_WAIT;
        while !self.in_flight.is_empty() && Instant::now() < deadline {
            self.poll_in_flight(ring, map, uplink, m);
            if !self.in_flight.is_empty() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        if !self.in_flight.is_empty() {
            log::warn!(
                "{} TX packets still in flight when the worker stopped; their chains are returned now",
                self.in_flight.len()
            );
            uplink.forget_in_flight();
            for head in std::mem::take(&mut self.in_flight) {
                let _ = ring.add_used(map, head, 0);
            }
            ring.signal(map, m);
        }
    }

    /// Move up to [`TX_BATCH`] packets from the guest to the uplink.
    pub fn process<Q: Virtqueue>(
        &mut self,
        ring: &mut Q,
        map: &GuestPageMap,
        uplink: &mut dyn UplinkQueue,
        features: Features,
        m: &QueueMetrics,
    ) -> TxOutcome {
        self.process_gated(ring, map, uplink, features, m, &mut Unlimited)
    }

    /// [`process`](Self::process) under a rate limit: each packet asks `gate` first.
    pub fn process_gated<Q: Virtqueue, G: Gate>(
        &mut self,
        ring: &mut Q,
        map: &GuestPageMap,
        uplink: &mut dyn UplinkQueue,
        features: Features,
        m: &QueueMetrics,
        gate: &mut G,
    ) -> TxOutcome {
        let mut done = 0usize;
        let mut packets = 0u64;
        let mut bytes = 0u64;
        let mut ready = 0u16;
        self.complete(ring, map, uplink);
        let outcome = loop {
            if ready == 0 {
                // One acquire load of the avail index per round, not per chain.
                match ring.available(map, m) {
                    Some(n) if n > 0 => ready = n,
                    _ => break TxOutcome::Drained,
                }
            }
            if done >= TX_BATCH {
                break TxOutcome::Budget;
            }
            let Some(popped) = ring.pop_chain(map, &mut self.segs) else {
                break TxOutcome::Drained;
            };
            let head = popped.id;
            ready -= 1;
            done += 1;
            let mut frags = FragList::new();
            let mut held = false;
            let built = self.build(map, popped.chain, features, &mut frags);
            if built.is_ok() {
                if let Err(ns) = gate.check(frags.len() as u64) {
                    // Not yet: the chain waits on the ring, nothing is lost.
                    ring.unpop(1);
                    done -= 1;
                    break TxOutcome::Throttled(ns);
                }
            }
            match built {
                Ok(hdr) => match uplink.send(&hdr, &frags) {
                    Ok(SendStatus::Sent) => {
                        packets += 1;
                        bytes += frags.len() as u64;
                        gate.charge(frags.len() as u64);
                    }
                    Ok(SendStatus::InFlight) => {
                        packets += 1;
                        bytes += frags.len() as u64;
                        gate.charge(frags.len() as u64);
                        self.in_flight.push_back(head);
                        held = true;
                    }
                    Ok(SendStatus::WouldBlock) => {
                        ring.unpop(1);
                        m.tx_eagain.inc();
                        break TxOutcome::Blocked;
                    }
                    // Logged once by the worker when the uplink went away.
                    Ok(SendStatus::Down) => m.tx_drop_uplink_down.inc(),
                    Ok(SendStatus::Dropped) => {
                        gate.charge(frags.len() as u64);
                        m.tx_drop_uplink.inc();
                        crate::log_limited!(
                            self.log,
                            warn,
                            "uplink refused a {}-byte packet",
                            frags.len()
                        );
                    }
                    Err(e) => {
                        gate.charge(frags.len() as u64);
                        m.tx_drop_uplink.inc();
                        crate::log_limited!(
                            self.log,
                            warn,
                            "uplink send failed, packet dropped: {e}"
                        );
                    }
                },
                Err(d) => self.count_drop(&d, m),
            }
            drop(frags);
            if !held {
                // An impossible head index cannot be returned; the walker already
                // counted it.
                let _ = ring.add_used(map, head, 0);
            }
        };
        if let Err(e) = uplink.flush() {
            crate::log_limited!(self.log, warn, "uplink flush: {e}");
        }
        self.complete(ring, map, uplink);
        m.tx_packets.add(packets);
        m.tx_bytes.add(bytes);
        if done > 0 {
            m.tx_batches.inc();
        }
        ring.signal(map, m);
        outcome
    }
}

#[cfg(test)]
mod packed_tests;
#[cfg(test)]
mod tests;
