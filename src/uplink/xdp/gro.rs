// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Receive coalescing (GRO) of TCP segments for a guest that acked GUEST_TSO4/6 and
//! GUEST_CSUM: what the TAP's kernel hands a guest after `TUNSETOFFLOAD`, done here
//! because AF_XDP delivers wire frames one by one.
//!
//! [`TcpSegment::parse`] accepts a frame that may be coalesced: IPv4 without options
//! or fragments, or IPv6 without extension headers, carrying TCP with payload and no
//! flag but ACK and PSH, both checksums verified in software (the guest will not check
//! a coalesced packet again). [`TcpSegment::continues`] says whether the next frame
//! is the same flow's next segment: every header byte equal but the lengths, the IPv4
//! id and checksums, the sequence number (which must follow on) and PSH, and no
//! segment after a short one or one with PSH, as the kernel's `tcp_gro_receive` has
//! it. [`TcpSegment::finish`] turns the first segment's headers into those of the
//! coalesced packet, handed over as a GSO packet with a partial checksum
//! (`NEEDS_CSUM`, the pseudo-header sum in the TCP checksum field), as a TAP does.
//!
//! Only frames already on the RX ring are coalesced, with no timer: when the ring has
//! no next frame the packet goes to the guest at once (the kernel's NAPI GRO flushes
//! at the end of each poll the same way), so coalescing never adds latency.

use super::csum;
use crate::virtio::header::{
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
};
use crate::virtio::VirtioNetHdr;

/// Longest headers of a segment that may be coalesced: Ethernet (14), IPv6 (40), TCP
/// with options (60).
pub(crate) const MAX_GRO_HEADERS: usize = 14 + 40 + 60;
/// Largest IP packet (IPv4 total length, IPv6 payload length: 16 bits).
const MAX_IP_LEN: usize = 65535;

const ETH_HLEN: usize = 14;
const IPPROTO_TCP: u8 = 6;
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// A frame that may be coalesced, and where its parts are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TcpSegment {
    v6: bool,
    /// Start of the TCP header (the IP header starts after Ethernet).
    l4: usize,
    /// Ethernet to the end of the TCP header.
    pub(crate) hdr_len: usize,
    /// Sequence number.
    pub(crate) seq: u32,
    /// Payload bytes.
    pub(crate) payload: usize,
    /// PSH set: nothing may follow it in a coalesced packet.
    pub(crate) psh: bool,
}

impl TcpSegment {
    /// Whether the segment is IPv6.
    pub(crate) fn v6(&self) -> bool {
        self.v6
    }

    /// `frame` as a segment that may be coalesced, checksums verified; None for any
    /// other frame (delivered as it is).
    pub(crate) fn parse(frame: &[u8]) -> Option<TcpSegment> {
        let len = frame.len();
        if len < ETH_HLEN + 40 {
            return None;
        }
        let l3 = ETH_HLEN;
        let (v6, l4, pseudo) = match be16(frame, 12) {
            0x0800 => {
                let ip = &frame[l3..l3 + 20];
                if ip[0] != 0x45
                    || be16(ip, 6) & 0x3fff != 0
                    || ip[9] != IPPROTO_TCP
                    || usize::from(be16(ip, 2)) != len - l3
                    || csum::fold(csum::sum_words(ip)) != 0xffff
                {
                    return None;
                }
                (false, l3 + 20, csum::sum_words(&ip[12..20]))
            }
            0x86dd => {
                if len < l3 + 40 + 20 {
                    return None;
                }
                let ip = &frame[l3..l3 + 40];
                if ip[0] >> 4 != 6
                    || ip[6] != IPPROTO_TCP
                    || usize::from(be16(ip, 4)) != len - l3 - 40
                {
                    return None;
                }
                (true, l3 + 40, csum::sum_words(&ip[8..40]))
            }
            _ => return None,
        };
        let doff = usize::from(frame[l4 + 12] >> 4) * 4;
        let hdr_len = l4 + doff;
        let flags = frame[l4 + 13];
        if doff < 20 || hdr_len >= len || flags & !(TCP_ACK | TCP_PSH) != 0 || flags & TCP_ACK == 0
        {
            return None;
        }
        let l4_len = u64::try_from(len - l4).ok()?;
        let sum = pseudo + u64::from(IPPROTO_TCP) + l4_len + csum::sum_words(&frame[l4..]);
        if csum::fold(sum) != 0xffff {
            return None;
        }
        Some(TcpSegment {
            v6,
            l4,
            hdr_len,
            seq: u32::from_be_bytes(frame[l4 + 4..l4 + 8].try_into().ok()?),
            payload: len - hdr_len,
            psh: flags & TCP_PSH != 0,
        })
    }

    /// Whether `next` (parsed as `n`) is the segment that follows `self` (whose
    /// headers are `head`) in a coalesced packet whose next sequence number is `seq`.
    pub(crate) fn continues(&self, head: &[u8], n: &TcpSegment, next: &[u8], seq: u32) -> bool {
        if n.v6 != self.v6 || n.l4 != self.l4 || n.hdr_len != self.hdr_len || n.seq != seq {
            return false;
        }
        if n.payload > self.payload || head.len() < self.hdr_len || next.len() < n.hdr_len {
            return false;
        }
        let (l3, l4) = (ETH_HLEN, self.l4);
        let same = |a: usize, b: usize| head[a..b] == next[a..b];
        let ip_same = if self.v6 {
            // All but the payload length.
            same(0, l3 + 4) && same(l3 + 6, l4)
        } else {
            // All but the total length, the id and the header checksum.
            same(0, l3 + 2) && same(l3 + 6, l3 + 10) && same(l3 + 12, l4)
        };
        // TCP: all but the sequence number, PSH and the checksum.
        ip_same
            && same(l4, l4 + 4)
            && same(l4 + 8, l4 + 13)
            && head[l4 + 13] & !TCP_PSH == next[l4 + 13] & !TCP_PSH
            && same(l4 + 14, l4 + 16)
            && same(l4 + 18, self.hdr_len)
    }

    /// Whether a coalesced packet of `len` bytes (Ethernet included) can take `more`
    /// payload bytes.
    pub(crate) fn fits(&self, len: usize, more: usize) -> bool {
        let ip_len = len + more - ETH_HLEN - if self.v6 { 40 } else { 0 };
        ip_len <= MAX_IP_LEN
    }

    /// Turn `head`, the first segment's headers, into those of a coalesced packet of
    /// `len` bytes whose last segment had PSH when `psh`, and return its virtio-net
    /// header (TCP GSO, partial checksum).
    pub(crate) fn finish(&self, head: &mut [u8], len: usize, psh: bool) -> Option<VirtioNetHdr> {
        let (l3, l4) = (ETH_HLEN, self.l4);
        let head = head.get_mut(..self.hdr_len)?;
        let l4_len = len.checked_sub(l4)?;
        let pseudo = if self.v6 {
            let plen = u16::try_from(len.checked_sub(l3 + 40)?).ok()?;
            head[l3 + 4..l3 + 6].copy_from_slice(&plen.to_be_bytes());
            csum::sum_words(&head[l3 + 8..l3 + 40])
        } else {
            let total = u16::try_from(len.checked_sub(l3)?).ok()?;
            head[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
            head[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
            let c = !csum::fold(csum::sum_words(&head[l3..l4]));
            head[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
            csum::sum_words(&head[l3 + 12..l3 + 20])
        };
        if psh {
            head[l4 + 13] |= TCP_PSH;
        }
        // The pseudo-header sum, not inverted: the guest (or whoever it forwards the
        // packet to) completes the checksum from there.
        let seed = csum::fold(pseudo + u64::from(IPPROTO_TCP) + u64::try_from(l4_len).ok()?);
        head[l4 + 16..l4 + 18].copy_from_slice(&seed.to_be_bytes());
        Some(VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: if self.v6 {
                VIRTIO_NET_HDR_GSO_TCPV6
            } else {
                VIRTIO_NET_HDR_GSO_TCPV4
            },
            hdr_len: u16::try_from(self.hdr_len).ok()?,
            gso_size: u16::try_from(self.payload).ok()?,
            csum_start: u16::try_from(l4).ok()?,
            csum_offset: 16,
            num_buffers: 0,
        })
    }
}

#[cfg(test)]
mod tests;
