// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! [`XdpQueueStats`]: the counters of one AF_XDP queue, exported beside its page pool's.

use crate::metrics::{Counter, CounterGroup};

/// Counters of one AF_XDP queue (single writer: the queue's worker).
#[derive(Debug, Default)]
pub struct XdpQueueStats {
    /// Frames put on the TX ring.
    pub tx_packets: Counter,
    /// TX frames the completion ring gave back.
    pub tx_completed: Counter,
    /// TX packets dropped: a GSO type not segmented here (UFO, USO, unknown).
    pub tx_drop_gso: Counter,
    /// TCP GSO packets segmented in software (`gso`).
    pub tx_gso_packets: Counter,
    /// Frames those packets were cut into (also in `tx_packets`).
    pub tx_gso_segments: Counter,
    /// GSO packets dropped: `gso_size` 0.
    pub tx_gso_drop_size: Counter,
    /// GSO packets dropped: `hdr_len` beyond the packet.
    pub tx_gso_drop_hdr_len: Counter,
    /// GSO packets dropped: headers that do not parse or lie about lengths, the
    /// wrong protocol or checksum position, no payload.
    pub tx_gso_drop_header: Counter,
    /// GSO packets dropped: an IPv6 extension header the segmenter does not parse.
    pub tx_gso_drop_ipv6_ext: Counter,
    /// GSO packets dropped: a segment larger than a UMEM frame, or more segments than
    /// the TX ring holds.
    pub tx_gso_drop_oversized: Counter,
    /// TX packets dropped: empty, or larger than a UMEM frame.
    pub tx_drop_length: Counter,
    /// TX packets dropped: checksum requested at a position outside the packet.
    pub tx_drop_csum: Counter,
    /// TX checksums completed in software.
    pub tx_csum_sw: Counter,
    /// Sends refused for now: TX ring full, TX frame budget used up, or the page pool
    /// out of frames (see the pool's `alloc_empty`).
    pub tx_would_block: Counter,
    /// `sendto` wakeups issued because the TX ring asked for one.
    pub tx_kicks: Counter,
    /// `sendto` wakeups that failed (interface down, no buffers): retried on the next flush.
    pub tx_kick_errors: Counter,
    /// Packets written into guest buffers.
    pub rx_packets: Counter,
    /// Packets handed to the guest coalesced from several TCP segments (GRO; also in
    /// `rx_packets`).
    pub rx_gro_packets: Counter,
    /// Segments those packets were coalesced from.
    pub rx_gro_segments: Counter,
    /// RX packets cut short because the guest buffers were smaller.
    pub rx_truncated: Counter,
    /// `poll` wakeups issued because the fill ring asked for one.
    pub fill_wakeups: Counter,
    /// TX packets sent straight from guest memory (zero-copy TX; also in `tx_packets`).
    pub tx_zc_packets: Counter,
    /// Zero-copy TX packets whose descriptors all completed (chains returned).
    pub tx_zc_completed: Counter,
    /// TX packets copied although zero-copy TX is on: a checksum to complete, memory
    /// not registered, more frags than one packet may take, or the ring full.
    pub tx_zc_copied: Counter,
    /// Completions that did not name the oldest zero-copy packet's first descriptor.
    pub tx_zc_out_of_order: Counter,
    /// Guest memory snapshots registered as a UMEM.
    pub tx_zc_umems: Counter,
    /// Guest memory snapshots that could not be registered (zero-copy TX off until
    /// the memory changes).
    pub tx_zc_umem_errors: Counter,
    /// Ring entries naming memory outside the UMEM or a frame the kernel did not own
    /// (kernel or driver bug; the entry is skipped).
    pub invalid_descs: Counter,
}

impl CounterGroup for XdpQueueStats {
    fn fields(&self) -> Vec<(&'static str, u64)> {
        XdpQueueStats::fields(self)
    }
}

impl XdpQueueStats {
    /// Every counter with its name.
    pub fn fields(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("tx_packets", self.tx_packets.get()),
            ("tx_completed", self.tx_completed.get()),
            ("tx_drop_gso", self.tx_drop_gso.get()),
            ("tx_gso_packets", self.tx_gso_packets.get()),
            ("tx_gso_segments", self.tx_gso_segments.get()),
            ("tx_gso_drop_size", self.tx_gso_drop_size.get()),
            ("tx_gso_drop_hdr_len", self.tx_gso_drop_hdr_len.get()),
            ("tx_gso_drop_header", self.tx_gso_drop_header.get()),
            ("tx_gso_drop_ipv6_ext", self.tx_gso_drop_ipv6_ext.get()),
            ("tx_gso_drop_oversized", self.tx_gso_drop_oversized.get()),
            ("tx_drop_length", self.tx_drop_length.get()),
            ("tx_drop_csum", self.tx_drop_csum.get()),
            ("tx_csum_sw", self.tx_csum_sw.get()),
            ("tx_would_block", self.tx_would_block.get()),
            ("tx_kicks", self.tx_kicks.get()),
            ("tx_kick_errors", self.tx_kick_errors.get()),
            ("rx_packets", self.rx_packets.get()),
            ("rx_gro_packets", self.rx_gro_packets.get()),
            ("rx_gro_segments", self.rx_gro_segments.get()),
            ("rx_truncated", self.rx_truncated.get()),
            ("fill_wakeups", self.fill_wakeups.get()),
            ("tx_zc_packets", self.tx_zc_packets.get()),
            ("tx_zc_completed", self.tx_zc_completed.get()),
            ("tx_zc_copied", self.tx_zc_copied.get()),
            ("tx_zc_out_of_order", self.tx_zc_out_of_order.get()),
            ("tx_zc_umems", self.tx_zc_umems.get()),
            ("tx_zc_umem_errors", self.tx_zc_umem_errors.get()),
            ("invalid_descs", self.invalid_descs.get()),
        ]
    }
}
