// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Software segmentation of a guest's TCP GSO packets (`VIRTIO_NET_HDR_GSO_TCPV4/6`,
//! with or without the ECN flag): what the kernel does behind a TAP after
//! `TUNSETOFFLOAD`, done here because AF_XDP carries plain wire frames.
//!
//! [`GsoPacket::parse`] reads the headers once (Ethernet with at most one VLAN tag,
//! IPv4 or IPv6 with hop-by-hop and destination options, TCP) into a template and
//! checks everything a segment depends on; [`GsoPacket::write_segment`] then writes
//! segment `i` straight into its UMEM frame: the template, the next `gso_size` bytes
//! of payload from the guest's frags (no intermediate buffer), and the fix-ups. Per
//! segment, as the kernel's `tcp_gso_segment`: IPv4 total length, id incremented
//! and header checksum; IPv6 payload length; TCP sequence number advanced, FIN and PSH
//! only on the last segment, CWR only on the first; the TCP checksum complete over the
//! pseudo-header. The checksum is taken over the bytes written into the frame, so a
//! guest rewriting its buffers meanwhile cannot make a segment's checksum lie.
//!
//! The segmenter lives with the AF_XDP uplink because that is its only user (a TAP's
//! kernel segments by itself) and it shares `csum` with the partial checksum path.

use super::csum;
use crate::netmem::FragList;
use crate::virtio::header::{
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
};
use crate::virtio::VirtioNetHdr;

/// Longest run of headers replicated in every segment: Ethernet with a VLAN tag (18),
/// IPv6 (40), extension headers, TCP with options (60).
pub(crate) const MAX_HEADERS: usize = 256;

const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const IPV6_HLEN: usize = 40;
const TCP_CSUM_OFFSET: usize = 16;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// Why a GSO packet was not segmented (each is a counted drop).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum GsoError {
    /// A GSO type this uplink does not segment.
    #[error("gso_type {0:#x} is not segmented on af_xdp")]
    GsoType(u8),
    /// A segment size of 0.
    #[error("gso packet with gso_size 0")]
    GsoSize,
    /// `hdr_len` beyond the packet.
    #[error("hdr_len {hdr_len} beyond a {len}-byte packet")]
    HdrLen {
        /// Claimed header length.
        hdr_len: u16,
        /// Packet length.
        len: usize,
    },
    /// Headers that do not parse, disagree with the packet or with the virtio header.
    #[error("gso headers refused: {0}")]
    Header(&'static str),
    /// An IPv6 extension header the segmenter does not parse.
    #[error("ipv6 extension header {0} is not parsed")]
    Ipv6Extension(u8),
    /// A segment larger than a UMEM frame.
    #[error("a {seg}-byte segment does not fit a {frame}-byte frame")]
    SegmentSize {
        /// Length of the largest segment.
        seg: usize,
        /// Frame size.
        frame: usize,
    },
    /// More segments than the TX ring can ever hold at once.
    #[error("{segments} segments, more than the {max} the tx ring holds")]
    Segments {
        /// Segments the packet would make.
        segments: usize,
        /// Most the ring holds.
        max: u32,
    },
}

/// The IP version of a GSO packet, with where its fields are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ip {
    V4,
    V6,
}

/// A parsed TCP GSO packet: the header template and the segment geometry.
#[derive(Debug)]
pub(crate) struct GsoPacket {
    template: [u8; MAX_HEADERS],
    /// Bytes of headers in every segment (Ethernet to the end of the TCP header).
    hdr_len: usize,
    ip: Ip,
    /// Start of the IP header.
    l3: usize,
    /// Start of the TCP header.
    l4: usize,
    /// Pseudo-header sum without the length (addresses and protocol), not folded.
    pseudo: u64,
    gso_size: usize,
    /// Payload bytes after the headers.
    payload: usize,
    segments: usize,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

impl GsoPacket {
    /// Check the GSO packet `pkt` described by `hdr`, for frames of `frame_len` bytes
    /// and a TX ring that holds at most `max_segments` frames.
    pub(crate) fn parse(
        hdr: &VirtioNetHdr,
        pkt: &FragList<'_>,
        frame_len: usize,
        max_segments: u32,
    ) -> Result<GsoPacket, GsoError> {
        let ip = match hdr.gso_type & !VIRTIO_NET_HDR_GSO_ECN {
            VIRTIO_NET_HDR_GSO_TCPV4 => Ip::V4,
            VIRTIO_NET_HDR_GSO_TCPV6 => Ip::V6,
            _ => return Err(GsoError::GsoType(hdr.gso_type)),
        };
        if hdr.gso_size == 0 {
            return Err(GsoError::GsoSize);
        }
        let len = pkt.len();
        if usize::from(hdr.hdr_len) > len {
            return Err(GsoError::HdrLen {
                hdr_len: hdr.hdr_len,
                len,
            });
        }
        let mut template = [0u8; MAX_HEADERS];
        let avail = pkt.copy_to(&mut template);
        let t = &template[..avail];
        // Where parsing ran out: past the packet, or past what we replicate.
        let short = if avail == len {
            GsoError::Header("headers run past the packet")
        } else {
            GsoError::Header("headers longer than 256 bytes")
        };

        if avail < ETH_HLEN {
            return Err(short);
        }
        let mut l3 = ETH_HLEN;
        let mut ethertype = be16(t, 12);
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            if avail < l3 + 4 {
                return Err(short);
            }
            ethertype = be16(t, l3 + 2);
            l3 += 4;
        }
        let (l4, pseudo) = match (ip, ethertype) {
            (Ip::V4, ETH_P_IPV4) => {
                if avail < l3 + 20 {
                    return Err(short);
                }
                if t[l3] >> 4 != 4 {
                    return Err(GsoError::Header("not an ipv4 header"));
                }
                let ihl = usize::from(t[l3] & 0xf) * 4;
                if ihl < 20 {
                    return Err(GsoError::Header("ipv4 header length below 20"));
                }
                if avail < l3 + ihl {
                    return Err(short);
                }
                if usize::from(be16(t, l3 + 2)) != len - l3 {
                    return Err(GsoError::Header("ipv4 total length disagrees"));
                }
                if be16(t, l3 + 6) & 0x3fff != 0 {
                    return Err(GsoError::Header("ipv4 fragment"));
                }
                if t[l3 + 9] != IPPROTO_TCP {
                    return Err(GsoError::Header("transport is not tcp"));
                }
                let pseudo = csum::sum_words(&t[l3 + 12..l3 + 20]) + u64::from(IPPROTO_TCP);
                (l3 + ihl, pseudo)
            }
            (Ip::V6, ETH_P_IPV6) => {
                if avail < l3 + IPV6_HLEN {
                    return Err(short);
                }
                if t[l3] >> 4 != 6 {
                    return Err(GsoError::Header("not an ipv6 header"));
                }
                if usize::from(be16(t, l3 + 4)) != len - l3 - IPV6_HLEN {
                    return Err(GsoError::Header("ipv6 payload length disagrees"));
                }
                let mut next = t[l3 + 6];
                let mut at = l3 + IPV6_HLEN;
                loop {
                    match next {
                        IPPROTO_TCP => break,
                        // Hop-by-hop and destination options: 8-byte units after the
                        // first 8 (an offset that only grows, so the loop ends).
                        0 | 60 => {
                            if avail < at + 2 {
                                return Err(short);
                            }
                            next = t[at];
                            at += (usize::from(t[at + 1]) + 1) * 8;
                        }
                        // Routing (the pseudo-header would name the final
                        // destination), fragment, ESP, AH, mobility, HIP, shim6,
                        // experiments.
                        43 | 44 | 50 | 51 | 135 | 139 | 140 | 253 | 254 => {
                            return Err(GsoError::Ipv6Extension(next))
                        }
                        _ => return Err(GsoError::Header("transport is not tcp")),
                    }
                }
                let pseudo = csum::sum_words(&t[l3 + 8..l3 + IPV6_HLEN]) + u64::from(IPPROTO_TCP);
                (at, pseudo)
            }
            _ => return Err(GsoError::Header("ethertype does not match gso_type")),
        };
        if avail < l4 + 20 {
            return Err(short);
        }
        let doff = usize::from(t[l4 + 12] >> 4) * 4;
        if doff < 20 {
            return Err(GsoError::Header("tcp data offset below 20"));
        }
        let hdr_len = l4 + doff;
        if avail < hdr_len {
            return Err(short);
        }
        if hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0
            && (usize::from(hdr.csum_start) != l4
                || usize::from(hdr.csum_offset) != TCP_CSUM_OFFSET)
        {
            return Err(GsoError::Header(
                "checksum position is not the tcp checksum",
            ));
        }
        let payload = len - hdr_len;
        if payload == 0 {
            return Err(GsoError::Header("no payload to segment"));
        }
        let gso_size = usize::from(hdr.gso_size);
        let seg = hdr_len + gso_size.min(payload);
        if seg > frame_len {
            return Err(GsoError::SegmentSize {
                seg,
                frame: frame_len,
            });
        }
        let segments = payload.div_ceil(gso_size);
        if segments > usize::try_from(max_segments).unwrap_or(usize::MAX) {
            return Err(GsoError::Segments {
                segments,
                max: max_segments,
            });
        }
        Ok(GsoPacket {
            template,
            hdr_len,
            ip,
            l3,
            l4,
            pseudo,
            gso_size,
            payload,
            segments,
        })
    }

    /// Number of segments.
    pub(crate) fn segments(&self) -> usize {
        self.segments
    }

    /// Length of segment `i` on the wire.
    pub(crate) fn segment_len(&self, i: usize) -> usize {
        let start = i.saturating_mul(self.gso_size).min(self.payload);
        self.hdr_len + self.gso_size.min(self.payload - start)
    }

    /// Write segment `i` (of [`Self::segments`]) of `pkt`, the packet this was parsed
    /// from, into `out`; returns its length, or None when `i` is not a segment or
    /// `out` is shorter than [`Self::segment_len`] (nothing written then).
    pub(crate) fn write_segment(
        &self,
        i: usize,
        pkt: &mut PacketReader<'_, '_>,
        out: &mut [u8],
    ) -> Option<usize> {
        if i >= self.segments {
            return None;
        }
        let seg_len = self.segment_len(i);
        let out = out.get_mut(..seg_len)?;
        let (h, data) = out.split_at_mut(self.hdr_len);
        h.copy_from_slice(&self.template[..self.hdr_len]);
        let start = i * self.gso_size;
        if pkt.read_at(self.hdr_len + start, data) != data.len() {
            // The packet is shorter than it was when parsed: not the same list.
            return None;
        }
        let (l3, l4) = (self.l3, self.l4);
        match self.ip {
            Ip::V4 => {
                // Lengths fit: a segment is smaller than the checked super-packet.
                put16(h, l3 + 2, u16::try_from(seg_len - l3).ok()?);
                let id = be16(h, l3 + 4).wrapping_add(u16::try_from(i).ok()?);
                put16(h, l3 + 4, id);
                put16(h, l3 + 10, 0);
                let c = !csum::fold(csum::sum_words(&h[l3..l4]));
                put16(h, l3 + 10, c);
            }
            Ip::V6 => put16(h, l3 + 4, u16::try_from(seg_len - l3 - IPV6_HLEN).ok()?),
        }
        let seq = u32::from_be_bytes(h[l4 + 4..l4 + 8].try_into().ok()?)
            .wrapping_add(u32::try_from(start).ok()?);
        h[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
        if i + 1 != self.segments {
            h[l4 + 13] &= !(TCP_FIN | TCP_PSH);
        }
        if i != 0 {
            h[l4 + 13] &= !TCP_CWR;
        }
        put16(h, l4 + TCP_CSUM_OFFSET, 0);
        let l4_len = seg_len - l4;
        let sum = self.pseudo
            + u64::try_from(l4_len).ok()?
            + csum::sum_words(&h[l4..])
            // The TCP header is a multiple of 4 bytes long: the payload's words line
            // up with the segment's.
            + csum::sum_words(data);
        put16(h, l4 + TCP_CSUM_OFFSET, !csum::fold(sum));
        Some(seg_len)
    }
}

/// Reads byte ranges of a packet's frags, remembering where the last read ended so
/// that reading segments in order walks the frags once.
pub(crate) struct PacketReader<'a, 'm> {
    pkt: &'a FragList<'m>,
    /// Index of the iovec holding byte `base`.
    iov: usize,
    /// Packet offset of the start of iovec `iov`.
    base: usize,
}

impl<'a, 'm> PacketReader<'a, 'm> {
    /// A reader at the start of `pkt`.
    pub(crate) fn new(pkt: &'a FragList<'m>) -> Self {
        PacketReader {
            pkt,
            iov: 0,
            base: 0,
        }
    }

    /// Copy the packet's bytes from `offset` into `dst`; returns how many were copied
    /// (fewer than `dst.len()` only at the end of the packet).
    pub(crate) fn read_at(&mut self, offset: usize, dst: &mut [u8]) -> usize {
        let iovs = self.pkt.iovecs();
        if offset < self.base {
            self.iov = 0;
            self.base = 0;
        }
        let mut done = 0;
        while done < dst.len() {
            let Some(iov) = iovs.get(self.iov) else {
                break;
            };
            let at = offset + done;
            if at >= self.base + iov.iov_len {
                self.base += iov.iov_len;
                self.iov += 1;
                continue;
            }
            let skip = at - self.base;
            let n = (iov.iov_len - skip).min(dst.len() - done);
            // SAFETY: every iovec of a FragList covers memory that is mapped and
            // readable for the list's lifetime 'm (`FragList::push_unchecked`'s
            // contract), which the borrow in `self` outlives; `skip + n <= iov_len`
            // keeps the source inside this iovec, `done + n <= dst.len()` keeps the
            // destination inside `dst`, and guest memory never overlaps a slice we own.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    iov.iov_base.cast::<u8>().add(skip),
                    dst.as_mut_ptr().add(done),
                    n,
                );
            }
            done += n;
        }
        done
    }
}

#[cfg(test)]
mod tests;
