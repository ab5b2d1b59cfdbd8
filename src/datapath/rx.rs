// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! RX: uplink -> guest RX buffers.
//!
//! The worker only reads from the uplink while the guest has posted buffers. Popped
//! chains wait in a small stash (already walked and checked); with MRG_RXBUF the stash
//! is topped up until it can hold the largest frame the negotiated offloads allow, the
//! uplink writes one packet across the stashed chains with a single `readv`, the
//! chains actually used are returned with their lengths and `num_buffers` is set in
//! the header; the rest stay stashed for the next packet. Without MRG_RXBUF each packet
//! takes exactly one chain. When the worker stops, stashed chains go back to the avail
//! side untouched.
//!
//! Under a rate limit ([`RxPath::process_gated`]) a packet is read only while the limit
//! has a token left (its size is known only once it is read); it is then charged in
//! full, into the limit's debt if need be, and a look that finds the limit dry ends
//! [`RxOutcome::Throttled`] without reading: the packet waits in the uplink's queue.

use std::collections::VecDeque;

use vm_memory::{Bytes, GuestAddress};

use super::ring::Virtqueue;
use crate::log_limit::LogLimiter;
use crate::metrics::QueueMetrics;
use crate::netmem::{DirtyLog, FragList, GuestPageMap};
use crate::ratelimit::{Gate, Unlimited};
use crate::uplink::UplinkQueue;
use crate::virtio::chain::Segments;
use crate::virtio::features::VIRTIO_NET_F_MRG_RXBUF;
use crate::virtio::{ChainError, Features, VNET_HDR_LEN};

/// Packets moved before the guest is notified and the loop checks other work.
pub const RX_BATCH: usize = 64;

/// Offset of `num_buffers` in the virtio-net header.
const NUM_BUFFERS_OFFSET: u64 = 10;

/// What the RX path stopped on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxOutcome {
    /// The uplink has nothing more.
    Drained,
    /// The guest has no (or not enough) buffers: wait for a kick.
    NoBuffers,
    /// The batch budget ran out; more work may be pending.
    Budget,
    /// The rate limit allows the next packet only in this many nanoseconds.
    Throttled(u64),
}

#[derive(Debug)]
struct Stashed {
    head: u16,
    segs: Segments,
    cap: u64,
    /// Ring slots it takes ([`PoppedChain::slots`](crate::datapath::ring::packed::PoppedChain::slots)).
    slots: u16,
    /// Frags this chain contributes to the batch's frag list.
    nfrags: usize,
}

/// The RX half of a queue pair worker.
#[derive(Debug)]
pub struct RxPath {
    stash: VecDeque<Stashed>,
    stash_cap: u64,
    /// Ring slots the stash holds: at the ring size the guest has nothing more to give.
    stash_slots: u32,
    /// The stash is exactly the last chains popped (so it can be un-popped).
    contiguous: bool,
    /// Heads known to be available (from the last read of the avail index).
    ready: u16,
    log: LogLimiter,
}

impl Default for RxPath {
    fn default() -> Self {
        RxPath {
            stash: VecDeque::new(),
            stash_cap: 0,
            stash_slots: 0,
            contiguous: true,
            ready: 0,
            log: LogLimiter::new(10),
        }
    }
}

#[inline]
fn write_at(map: &GuestPageMap, segs: &Segments, mut offset: u64, bytes: &[u8; 2]) -> bool {
    // Fast path: the field lies in the first buffer.
    if let Some(first) = segs.first() {
        if offset + 2 <= u64::from(first.len) && map.write_array(first.gpa + offset, *bytes) {
            return true;
        }
    }
    let mut done = 0usize;
    for s in segs {
        let len = u64::from(s.len);
        if offset >= len {
            offset -= len;
            continue;
        }
        let n = usize::try_from(len - offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len() - done);
        if map
            .mem()
            .write_slice(&bytes[done..done + n], GuestAddress(s.gpa + offset))
            .is_err()
        {
            return false;
        }
        done += n;
        offset = 0;
        if done == bytes.len() {
            return true;
        }
    }
    false
}

/// Log the first `n` bytes written into the first `chains` stashed chains (live
/// migration's dirty log).
fn log_written(log: &DirtyLog, stash: &VecDeque<Stashed>, chains: usize, mut n: u64) {
    for c in stash.iter().take(chains) {
        for s in &c.segs {
            if n == 0 {
                return;
            }
            let take = n.min(u64::from(s.len));
            log.mark(s.gpa, take);
            n -= take;
        }
    }
}

impl RxPath {
    fn drop_chain<Q: Virtqueue>(&mut self, ring: &mut Q, map: &GuestPageMap, head: u16, why: &str) {
        if !self.stash.is_empty() {
            self.contiguous = false;
        }
        let _ = ring.add_used(map, head, 0);
        crate::log_limited!(self.log, warn, "guest RX chain dropped: {why}");
    }

    /// Pop one chain into the stash. Returns false when the ring has no more.
    fn stash_one<Q: Virtqueue>(
        &mut self,
        ring: &mut Q,
        map: &GuestPageMap,
        m: &QueueMetrics,
    ) -> bool {
        if self.ready == 0 {
            // One acquire load of the avail index per round, not per chain.
            match ring.available(map, m) {
                Some(n) if n > 0 => self.ready = n,
                _ => return false,
            }
        }
        let mut segs = Segments::new();
        let Some(popped) = ring.pop_chain(map, &mut segs) else {
            self.ready = 0;
            return false;
        };
        let head = popped.id;
        self.ready -= 1;
        if let Err(e) = popped.chain {
            match e {
                ChainError::Wraps { .. } => m.rx_drop_bad_memory.inc(),
                _ => m.rx_drop_bad_chain.inc(),
            }
            self.drop_chain(ring, map, head, &e.to_string());
            return true;
        }
        if segs.iter().any(|s| !s.write) {
            m.rx_drop_bad_direction.inc();
            self.drop_chain(ring, map, head, "device-readable buffer in an RX chain");
            return true;
        }
        if segs.iter().any(|s| !map.contains(s.gpa, u64::from(s.len))) {
            m.rx_drop_bad_memory.inc();
            self.drop_chain(ring, map, head, "buffer outside guest memory");
            return true;
        }
        let cap: u64 = segs.iter().map(|s| u64::from(s.len)).sum();
        if cap < VNET_HDR_LEN as u64 {
            m.rx_drop_short_buffer.inc();
            self.drop_chain(ring, map, head, "buffer smaller than the virtio-net header");
            return true;
        }
        self.stash_cap += cap;
        self.stash_slots += u32::from(popped.slots);
        self.stash.push_back(Stashed {
            head,
            segs,
            cap,
            slots: popped.slots,
            nfrags: 0,
        });
        true
    }

    /// Move up to [`RX_BATCH`] packets from the uplink into guest buffers.
    pub fn process<Q: Virtqueue>(
        &mut self,
        ring: &mut Q,
        map: &GuestPageMap,
        uplink: &mut dyn UplinkQueue,
        features: Features,
        mtu: u16,
        m: &QueueMetrics,
    ) -> RxOutcome {
        self.process_gated(ring, map, uplink, features, mtu, m, &mut Unlimited)
    }

    /// [`process`](Self::process) under a rate limit: each read asks `gate` first.
    #[allow(clippy::too_many_arguments)] // process's, and the gate
    pub fn process_gated<Q: Virtqueue, G: Gate>(
        &mut self,
        ring: &mut Q,
        map: &GuestPageMap,
        uplink: &mut dyn UplinkQueue,
        features: Features,
        mtu: u16,
        m: &QueueMetrics,
        gate: &mut G,
    ) -> RxOutcome {
        let mrg = features.has(VIRTIO_NET_F_MRG_RXBUF);
        let need = if mrg {
            features.max_rx_frame(mtu) as u64
        } else {
            0
        };
        let mut packets = 0u64;
        let mut bytes = 0u64;
        let mut outcome = RxOutcome::Budget;
        // Frags of the first `covered` stashed chains, built once per batch and trimmed
        // as chains are used, so a small packet does not re-translate the whole stash.
        let mut frags = FragList::new();
        let mut covered = 0usize;
        // Packets read from the uplink, delivered or dropped: the batch budget, so a
        // flood of packets that do not fit cannot keep the worker here.
        let mut read = 0usize;
        while read < RX_BATCH {
            if let Err(ns) = gate.ready() {
                outcome = RxOutcome::Throttled(ns);
                break;
            }
            // Top up the stash until it holds a whole packet's worth of buffers.
            let mut starved = false;
            // Turning kicks on found chains, yet none could be popped: do not ask again
            // until one is (an index that promises what the ring cannot give would
            // otherwise keep the worker here for ever; found by fuzzing).
            let mut rechecked = false;
            while self.stash.is_empty() || (mrg && self.stash_cap < need) {
                if self.stash_one(ring, map, m) {
                    rechecked = false;
                    continue;
                }
                if ring.fault().is_some() || !ring.enable_notification(map) || rechecked {
                    // Kicks are on (or the ring is broken): wait for the guest.
                    starved = true;
                    break;
                }
                rechecked = true;
                ring.disable_notification(map);
            }
            // A guest whose whole ring holds less than a maximal frame still gets
            // packets (a larger one would be truncated by the uplink): once the stash
            // holds every slot of the ring (chains of several descriptors fill it with
            // fewer chains than its size), the guest has nothing more to give.
            if starved && (self.stash.is_empty() || self.stash_slots < u32::from(ring.size())) {
                m.rx_no_buffers.inc();
                outcome = RxOutcome::NoBuffers;
                break;
            }
            let chains = if mrg { self.stash.len() } else { 1 };
            let mut ok = true;
            while covered < chains {
                let before = frags.nr_frags();
                let c = &mut self.stash[covered];
                for s in &c.segs {
                    if map.push_frags(s.gpa, s.len, &mut frags).is_err() {
                        ok = false;
                    }
                }
                c.nfrags = frags.nr_frags() - before;
                covered += 1;
            }
            if !ok {
                // Memory changed under a stashed chain: return the stash and start over.
                m.rx_drop_bad_memory.inc();
                while let Some(c) = self.stash.pop_front() {
                    let _ = ring.add_used(map, c.head, 0);
                }
                self.stash_cap = 0;
                self.stash_slots = 0;
                self.contiguous = true;
                frags.clear();
                covered = 0;
                continue;
            }
            let offered = if mrg {
                self.stash_cap
            } else {
                self.stash.front().map_or(0, |c| c.cap)
            };
            let n = match uplink.recv(&frags) {
                Ok(Some(n)) => n,
                Ok(None) => {
                    outcome = RxOutcome::Drained;
                    break;
                }
                Err(e) => {
                    m.rx_uplink_errors.inc();
                    crate::log_limited!(self.log, warn, "uplink receive: {e}");
                    outcome = RxOutcome::Drained;
                    break;
                }
            };
            read += 1;
            // Every packet read is charged, delivered or not.
            gate.charge((n as u64).saturating_sub(VNET_HDR_LEN as u64));
            if let Some(log) = ring.log() {
                // Whatever the uplink wrote (a truncated packet's prefix too).
                log_written(log, &self.stash, chains, (n as u64).min(offered));
            }
            if n as u64 > offered {
                // The uplink had more than the buffers hold (it reports the full length):
                // drop it rather than hand the guest a cut packet; the buffers stay.
                m.rx_drop_truncated.inc();
                crate::log_limited!(
                    self.log,
                    warn,
                    "{n}-byte packet does not fit {offered} bytes of guest buffers: dropped"
                );
                continue;
            }
            // Distribute the packet over the chains in order: first count them (the
            // header's num_buffers), then return each with its share.
            let mut left = n as u64;
            let mut num_buffers = 0u16;
            for c in self.stash.iter().take(chains) {
                num_buffers += 1;
                left -= c.cap.min(left);
                if left == 0 {
                    break;
                }
            }
            if let Some(first) = self.stash.front() {
                write_at(
                    map,
                    &first.segs,
                    NUM_BUFFERS_OFFSET,
                    &num_buffers.to_le_bytes(),
                );
            }
            let mut left = n as u64;
            for _ in 0..num_buffers {
                let Some(c) = self.stash.pop_front() else {
                    break;
                };
                let take = c.cap.min(left);
                left -= take;
                self.stash_cap -= c.cap;
                self.stash_slots -= u32::from(c.slots);
                frags.drain_front(c.nfrags);
                covered -= 1;
                let _ = ring.add_used(map, c.head, u32::try_from(take).unwrap_or(u32::MAX));
            }
            if self.stash.is_empty() {
                self.contiguous = true;
            }
            packets += 1;
            bytes += (n as u64).saturating_sub(VNET_HDR_LEN as u64);
        }
        m.rx_packets.add(packets);
        m.rx_bytes.add(bytes);
        if packets > 0 {
            m.rx_batches.inc();
        }
        ring.signal(map, m);
        outcome
    }

    /// Hand stashed chains back before the ring changes hands: un-pop them when they
    /// are the last chains popped, otherwise return them empty.
    pub fn release<Q: Virtqueue>(&mut self, ring: &mut Q, map: &GuestPageMap) {
        if self.contiguous {
            ring.unpop(u16::try_from(self.stash.len()).unwrap_or(0));
        } else {
            for c in &self.stash {
                let _ = ring.add_used(map, c.head, 0);
            }
        }
        self.stash.clear();
        self.stash_cap = 0;
        self.stash_slots = 0;
        self.contiguous = true;
        self.ready = 0;
    }
}

#[cfg(test)]
mod packed_tests;
#[cfg(test)]
mod tests;
