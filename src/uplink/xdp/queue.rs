// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! One queue pair's AF_XDP queue, [`XdpQueue`]: RX and copy TX over the queue's own
//! UMEM (zero-copy TX from guest memory is `zerocopy`'s), and the UMEM's frame budgets.
//!
//! Frames of one UMEM have two budgets: at most [`RX_FRAMES`] are with the kernel for
//! receiving (fill ring, RX ring), at most the rest for transmitting (TX ring,
//! completion ring). Neither direction can starve the other, and the completion ring
//! (sized to the TX budget) can never overflow.
//!
//! TX copies the frags into a frame taken from the pool (the 12-byte virtio header is
//! not sent; see [`XdpQueue`] for what happens to checksum and GSO requests), and the
//! completion ring gives it back to the pool; RX turns the frame into a net_iov frag,
//! copies it behind a zeroed virtio header into the guest's buffers (or coalesces a
//! TCP segment with those of its flow after it, `gro`), and recycles it to the pool,
//! whence the fill ring is refilled. `need_wakeup` is honoured both ways:
//! `sendto` (TX) and `poll` (fill ring) are only issued when the kernel sets the flag;
//! in copy mode the kernel always sets it for TX, since nothing transmits in copy mode
//! without a syscall.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use xdpilone::xdp::XdpDesc;
use xdpilone::RingTx;

use super::csum;
use super::gro::{TcpSegment, MAX_GRO_HEADERS};
use super::gso::{GsoError, GsoPacket, PacketReader};
use super::socket::{RingSizes, Xsk};
use super::stats::XdpQueueStats;
use super::umem::Umem;
use super::zerocopy::ZeroCopyTx;
use crate::log_limit::LogLimiter;
use crate::netmem::{FragList, GuestPageMap, NetmemRef};
use crate::uplink::{SendStatus, UplinkError, UplinkQueue};
use crate::virtio::features::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
};
use crate::virtio::header::{VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE};
use crate::virtio::{Features, VirtioNetHdr, VNET_HDR_LEN};

/// Size of one UMEM frame (a page: one frame per packet, aligned chunk mode).
pub const UMEM_FRAME_SIZE: u32 = 4096;
/// Frames in the UMEM of one queue pair.
pub const UMEM_FRAMES: u32 = 4096;
/// Frames one queue may give the kernel for receiving (fill ring + RX ring).
pub const RX_FRAMES: u32 = 2048;
/// Frames one queue may have in flight for transmitting (TX ring + completion ring).
pub const TX_FRAMES: u32 = UMEM_FRAMES - RX_FRAMES;
/// Refill the fill ring once this many frames are missing from it.
const REFILL_BATCH: u32 = 64;
/// Copy-mode `sendto` transmits at most 32 frames per call (the kernel's
/// `TX_BATCH_SIZE`); a flush kicks at most this often, and only while the ring drains.
const MAX_KICKS: u32 = TX_FRAMES / KICK_BATCH + 2;
/// Frames queued on the TX ring before a send kicks the kernel without waiting for
/// the flush (copy mode's batch), taking their completions back right after: the
/// frames return to the page pool's cache a batch at a time instead of overflowing
/// it into the recycle ring at the end of a long burst.
const KICK_BATCH: u32 = 32;
/// Most segments coalesced into one received packet.
const MAX_GRO_SEGMENTS: usize = 64;

/// Ring sizes of each queue's socket: the fill and RX rings hold the RX budget, the TX
/// and completion rings the TX budget.
pub(super) const RINGS: RingSizes = RingSizes {
    fill: RX_FRAMES,
    completion: TX_FRAMES,
    rx: RX_FRAMES,
    tx: TX_FRAMES,
};

/// One queue pair's AF_XDP socket, owned by the pair's worker.
///
/// TX: the frags are copied into a UMEM frame from the queue's page pool and the frame
/// goes on the TX ring; the completion ring gives it back to the pool. The virtio-net
/// header is not sent. A header asking for a checksum
/// (`VIRTIO_NET_HDR_F_NEEDS_CSUM`) has the checksum completed in software in the UMEM
/// frame (counted in `tx_csum_sw`). A TCP GSO packet (TSO4/6, ECN) is segmented in
/// software (`gso`), each segment written straight into its own frame, all segments
/// queued together or none: a ring, budget or pool without room for all of them is
/// [`SendStatus::WouldBlock`], a packet that cannot be segmented a counted drop by
/// reason (`tx_gso_drop_*`); any other GSO type is dropped (`tx_drop_gso`; UFO and
/// USO are not offered). A full TX ring, a used-up TX frame budget or an empty pool
/// is [`SendStatus::WouldBlock`], after one wakeup and completion reap.
///
/// RX: one frame from the RX ring becomes a net_iov frag, written behind a zeroed
/// 12-byte virtio header (`num_buffers` is the caller's) into the guest buffers; the
/// frame is recycled to the pool, which refills the fill ring. For a guest that acked
/// GUEST_CSUM and GUEST_TSO4/6, a TCP segment is coalesced (`gro`) with the segments
/// of its flow that follow it on the RX ring, payload after payload into the guest
/// buffers, and handed over as one GSO packet (counted in `rx_gro_packets`); the
/// first frame that does not follow is held for the next receive.
///
/// Zero-copy TX (`XdpOptions::zerocopy_tx`): the guest memory snapshot the worker
/// attaches is registered as a second UMEM (see `zerocopy` and `guest_umem`), and a
/// packet without a checksum to complete whose frags all lie in it goes out from guest
/// memory: [`SendStatus::InFlight`], its pages held and its chain kept by the caller
/// until the completion ring returns it ([`UplinkQueue::reap_in_flight`]). Other
/// packets (GSO packets always: they are copy-segmented) take the copy path (counted in `tx_zc_copied`); since the two paths use
/// different interface queues, a flow mixing them may be reordered.
pub struct XdpQueue {
    queue: u32,
    // Rings before the UMEM: they (and the socket) go first on drop, and the UMEM
    // then takes every frame back from the kernel.
    xsk: Xsk,
    /// Frames with the kernel for RX (fill ring + RX ring), at most RX_FRAMES.
    rx_held: u32,
    /// Frames with the kernel for TX (TX ring + completion ring), at most TX_FRAMES.
    tx_in_flight: u32,
    stats: Arc<XdpQueueStats>,
    log_limit: LogLimiter,
    /// Zero-copy TX from guest memory, when enabled.
    zc: Option<ZeroCopyTx>,
    /// The frames of the GSO packet being segmented (kept for its allocation).
    gso_frames: Vec<NetmemRef>,
    /// The features the guest acked (the device stores them, see `Xdp`).
    acked: Arc<AtomicU64>,
    /// A received frame (frame, offset, length) that did not continue the packet
    /// being coalesced: the next one received.
    held: Option<(NetmemRef, u32, u32)>,
    umem: Umem,
}

/// Wake the kernel to transmit what is on `tx`, if it asks for it. Copy mode sends a
/// batch per call, so keep kicking while the ring drains.
pub(super) fn kick_ring(
    tx: &mut RingTx,
    queue: u32,
    stats: &XdpQueueStats,
    log_limit: &mut LogLimiter,
) {
    let fd = tx.as_raw_fd();
    let mut pending = tx.pending();
    let mut kicks = 0;
    while pending > 0 && kicks < MAX_KICKS && tx.needs_wakeup() {
        kicks += 1;
        stats.tx_kicks.inc();
        match sendto_kick(fd) {
            Ok(()) => {}
            // Batch limit reached, completion ring busy, or interrupted: the progress
            // check below decides whether to go on.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EAGAIN) | Some(libc::EBUSY) | Some(libc::EINTR)
                ) => {}
            Err(e) => {
                stats.tx_kick_errors.inc();
                crate::log_limited!(log_limit, warn, "xdp queue {queue}: tx wakeup failed: {e}");
                break;
            }
        }
        let now = tx.pending();
        if now >= pending {
            // No progress: zero-copy transmits asynchronously, or the device is
            // stalled; the next flush tries again.
            break;
        }
        pending = now;
    }
}

fn sendto_kick(fd: RawFd) -> io::Result<()> {
    // SAFETY: a zero-length, address-less sendto on an AF_XDP socket that the ring
    // handle keeps open; the kernel reads no user memory (null buffer, length 0).
    let ret = unsafe {
        libc::sendto(
            fd,
            std::ptr::null(),
            0,
            libc::MSG_DONTWAIT,
            std::ptr::null(),
            0,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl XdpQueue {
    pub(super) fn new(
        queue: u32,
        xsk: Xsk,
        umem: Umem,
        stats: Arc<XdpQueueStats>,
        zc: Option<ZeroCopyTx>,
        acked: Arc<AtomicU64>,
    ) -> Self {
        let mut q = XdpQueue {
            queue,
            xsk,
            rx_held: 0,
            tx_in_flight: 0,
            stats,
            log_limit: LogLimiter::new(1),
            zc,
            gso_frames: Vec::new(),
            acked,
            held: None,
            umem,
        };
        q.refill();
        q
    }

    /// Give the kernel free frames to receive into, up to the RX budget.
    fn refill(&mut self) {
        let want = RX_FRAMES.saturating_sub(self.rx_held);
        if want == 0 {
            return;
        }
        let mut fill = self.xsk.fq_cq.fill(want);
        let mut put = 0;
        while put < fill.capacity() {
            let Some(frame) = self.umem.alloc_direct() else {
                break;
            };
            let Some(addr) = self.umem.give_to_kernel(frame) else {
                // Not a frame of this UMEM or already the kernel's: a pool bug. The
                // frame stays out of circulation rather than be handed out twice.
                self.stats.invalid_descs.inc();
                break;
            };
            if !fill.insert_once(addr) {
                if let Some((frame, _)) = self.umem.take_from_kernel(addr) {
                    self.umem.recycle_direct(frame);
                }
                break;
            }
            put += 1;
        }
        fill.commit();
        drop(fill);
        self.rx_held += put;
        self.wake_fill();
    }

    /// Poll the socket if the fill ring asks for it (zero-copy drivers set the flag
    /// when they ran out of fill entries and stopped).
    fn wake_fill(&mut self) {
        if self.rx_held > 0 && self.xsk.fq_cq.needs_wakeup() {
            self.stats.fill_wakeups.inc();
            self.xsk.fq_cq.wake();
        }
    }

    /// Take TX frames back from the completion ring.
    fn reap_completions(&mut self) {
        let mut done = self.xsk.fq_cq.complete(TX_FRAMES);
        while let Some(addr) = done.read() {
            if let Some((frame, _)) = self.umem.take_from_kernel(addr) {
                self.umem.recycle_direct(frame);
                self.tx_in_flight = self.tx_in_flight.saturating_sub(1);
                self.stats.tx_completed.inc();
            } else {
                self.stats.invalid_descs.inc();
            }
        }
        done.release();
    }

    /// Wake the kernel to transmit what is on the TX ring, if it asks for it.
    fn kick_tx(&mut self) {
        kick_ring(
            &mut self.xsk.tx,
            self.queue,
            &self.stats,
            &mut self.log_limit,
        );
    }

    /// Whether one TX ring slot is free (the reservation is rolled back on drop).
    fn tx_slot_free(&mut self) -> bool {
        self.xsk.tx.transmit(1).capacity() > 0
    }

    /// Whether the TX budget has `n` frames left, and so the TX ring `n` free slots:
    /// the ring holds [`TX_FRAMES`] entries and every one in use is a frame in flight.
    /// (A reservation cannot tell: it only looks at the kernel's progress once the
    /// ring seems full, so it may offer fewer slots than are free.)
    fn tx_room(&self, n: u32) -> bool {
        self.tx_in_flight + n <= TX_FRAMES
    }

    /// Count and log a GSO packet that cannot be segmented.
    fn drop_gso(&mut self, e: GsoError) -> SendStatus {
        let counter = match e {
            GsoError::GsoType(_) => &self.stats.tx_drop_gso,
            GsoError::GsoSize => &self.stats.tx_gso_drop_size,
            GsoError::HdrLen { .. } => &self.stats.tx_gso_drop_hdr_len,
            GsoError::Header(_) => &self.stats.tx_gso_drop_header,
            GsoError::Ipv6Extension(_) => &self.stats.tx_gso_drop_ipv6_ext,
            GsoError::SegmentSize { .. } | GsoError::Segments { .. } => {
                &self.stats.tx_gso_drop_oversized
            }
        };
        counter.inc();
        self.drop_tx(&e.to_string())
    }

    /// Segment a GSO packet into frames of the TX ring: all of its segments or, when
    /// the ring, the budget or the pool has no room for all of them, none.
    fn send_gso(&mut self, hdr: &VirtioNetHdr, pkt: &FragList<'_>) -> SendStatus {
        let frame_len = usize::try_from(self.umem.frame_size()).unwrap_or(usize::MAX);
        let gso = match GsoPacket::parse(hdr, pkt, frame_len, TX_FRAMES) {
            Ok(gso) => gso,
            Err(e) => return self.drop_gso(e),
        };
        // At most TX_FRAMES, checked by the parse.
        let Ok(n) = u32::try_from(gso.segments()) else {
            return self.drop_gso(GsoError::Segments {
                segments: gso.segments(),
                max: TX_FRAMES,
            });
        };
        if !self.tx_room(n) {
            self.kick_tx();
            self.reap_completions();
            if !self.tx_room(n) {
                self.stats.tx_would_block.inc();
                return SendStatus::WouldBlock;
            }
        }
        self.gso_frames.clear();
        let mut reaped = false;
        while self.gso_frames.len() < gso.segments() {
            if let Some(frame) = self.umem.alloc_direct() {
                self.gso_frames.push(frame);
            } else if !reaped {
                reaped = true;
                self.reap_completions();
            } else {
                for frame in self.gso_frames.drain(..) {
                    self.umem.recycle_direct(frame);
                }
                self.stats.tx_would_block.inc();
                return SendStatus::WouldBlock;
            }
        }
        // Write every segment before giving any frame to the kernel, so a failure
        // leaves nothing half-sent.
        let mut reader = PacketReader::new(pkt);
        let mut written = true;
        for (i, &frame) in self.gso_frames.iter().enumerate() {
            let len = gso.segment_len(i);
            // SAFETY: the frames were just taken from the pool: busy (on no ring, in
            // no frag list), so nothing else reads or writes them while `data` lives.
            let Some(data) = (unsafe { self.umem.frame_mut(frame, len) }) else {
                written = false;
                break;
            };
            if gso.write_segment(i, &mut reader, data) != Some(len) {
                written = false;
                break;
            }
        }
        if !written {
            // Cannot happen: the parse checked that every segment fits a frame.
            for frame in self.gso_frames.drain(..) {
                self.umem.recycle_direct(frame);
            }
            self.stats.tx_gso_drop_oversized.inc();
            return self.drop_tx("gso segment does not fit a umem frame");
        }
        // A reservation may offer fewer slots than are free (see `tx_room`); the next
        // one, made once those are filled, looks at the kernel's progress again.
        let total = self.gso_frames.len();
        let mut queued = 0;
        let mut tx = self.xsk.tx.transmit(n);
        for (i, &frame) in self.gso_frames.iter().enumerate() {
            let Some(addr) = self.umem.give_to_kernel(frame) else {
                // Not a frame of this UMEM or already the kernel's: a pool bug. The
                // frame stays out of circulation rather than be handed out twice; the
                // segment is lost and TCP sends it again.
                self.stats.invalid_descs.inc();
                continue;
            };
            // Fits: a segment is at most a frame, checked by the parse.
            let desc = XdpDesc {
                addr,
                len: u32::try_from(gso.segment_len(i)).unwrap_or(u32::MAX),
                options: 0,
            };
            let mut inserted = tx.insert_once(desc);
            if !inserted {
                tx.commit();
                drop(tx);
                tx = self.xsk.tx.transmit(u32::try_from(total - i).unwrap_or(n));
                inserted = tx.insert_once(desc);
            }
            if inserted {
                queued += 1;
            } else if let Some((frame, _)) = self.umem.take_from_kernel(addr) {
                // Cannot happen: the budget guarantees the slots and only we produce.
                self.stats.invalid_descs.inc();
                self.umem.recycle_direct(frame);
            }
        }
        tx.commit();
        drop(tx);
        self.gso_frames.clear();
        self.tx_in_flight += queued;
        self.stats.tx_packets.add(u64::from(queued));
        self.stats.tx_gso_segments.add(u64::from(queued));
        self.stats.tx_gso_packets.inc();
        if self.xsk.tx.pending() >= KICK_BATCH {
            self.kick_tx();
            self.reap_completions();
        }
        SendStatus::Sent
    }

    fn drop_tx(&mut self, why: &str) -> SendStatus {
        crate::log_limited!(
            self.log_limit,
            warn,
            "xdp queue {}: tx packet dropped: {why}",
            self.queue
        );
        SendStatus::Dropped
    }

    /// The next frame of the RX ring (frame, offset, length), taken from the kernel;
    /// entries naming no frame of ours are skipped (counted).
    fn next_rx(&mut self) -> Option<(NetmemRef, u32, u32)> {
        loop {
            let mut rx = self.xsk.rx.receive(1);
            let desc = rx.read();
            rx.release();
            drop(rx);
            let desc = desc?;
            self.rx_held = self.rx_held.saturating_sub(1);
            if let Some((frame, offset)) = self.umem.take_from_kernel(desc.addr) {
                return Some((frame, offset, desc.len));
            }
            // Outside the UMEM, or a frame the kernel did not own: skipped.
            self.stats.invalid_descs.inc();
        }
    }

    /// With GUEST_TSO4/6 and GUEST_CSUM acked: coalesce the TCP segment `first`,
    /// already copied behind the virtio header into `bufs`, with the segments of its
    /// flow that follow it on the RX ring, and write the coalesced packet's headers.
    /// Returns the packet's length (header included) when at least two segments were
    /// coalesced; None leaves `bufs` holding `first` alone. `first` stays the
    /// caller's; the first frame that does not follow is held for the next receive.
    fn coalesce(
        &mut self,
        first: NetmemRef,
        offset: u32,
        len: u32,
        bufs: &FragList<'_>,
    ) -> Option<usize> {
        let acked = Features::from_bits(self.acked.load(Ordering::Relaxed));
        if !acked.has(VIRTIO_NET_F_GUEST_CSUM) {
            return None;
        }
        let (v4, v6) = (
            acked.has(VIRTIO_NET_F_GUEST_TSO4),
            acked.has(VIRTIO_NET_F_GUEST_TSO6),
        );
        if !v4 && !v6 {
            return None;
        }
        let (offset, len) = (usize::try_from(offset).ok()?, usize::try_from(len).ok()?);
        let mut head = [0u8; VNET_HDR_LEN + MAX_GRO_HEADERS];
        let seg = {
            // SAFETY: `first` was taken from the kernel and not handed on: busy, and
            // no frag over it is in use (the copy into `bufs` is done).
            let data = unsafe { self.umem.frame_mut(first, offset + len) }?.get(offset..)?;
            let seg = TcpSegment::parse(data)?;
            if !(if seg.v6() { v6 } else { v4 }) {
                return None;
            }
            head.get_mut(VNET_HDR_LEN..VNET_HDR_LEN + seg.hdr_len)?
                .copy_from_slice(&data[..seg.hdr_len]);
            seg
        };
        let cap = bufs.len().checked_sub(VNET_HDR_LEN)?;
        let (mut total, mut count) = (len, 1);
        let mut seq = seg.seq.wrapping_add(u32::try_from(seg.payload).ok()?);
        let (mut psh, mut full) = (seg.psh, true);
        while !psh && full && count < MAX_GRO_SEGMENTS {
            let Some((frame, off, flen)) = self.next_rx() else {
                break;
            };
            let (o, l) = (
                usize::try_from(off).unwrap_or(usize::MAX),
                usize::try_from(flen).unwrap_or(usize::MAX),
            );
            let next = {
                // SAFETY: as above: `frame` was just taken from the kernel.
                let data = o
                    .checked_add(l)
                    .and_then(|end| unsafe { self.umem.frame_mut(frame, end) })
                    .and_then(|d| d.get(o..));
                data.and_then(|d| {
                    TcpSegment::parse(d).filter(|n| seg.continues(&head[VNET_HDR_LEN..], n, d, seq))
                })
                .filter(|n| total + n.payload <= cap && seg.fits(total, n.payload))
            };
            let Some(n) = next else {
                self.held = Some((frame, off, flen));
                break;
            };
            let mut payload = FragList::new();
            let copied = match (u32::try_from(n.hdr_len), u32::try_from(n.payload)) {
                (Ok(at), Ok(plen))
                    if self
                        .umem
                        .push_frag(frame, off + at, plen, &mut payload)
                        .is_ok() =>
                {
                    bufs.copy_from_list(VNET_HDR_LEN + total, &payload)
                }
                _ => 0,
            };
            drop(payload);
            self.umem.recycle_direct(frame);
            if copied != n.payload {
                // Cannot happen: the segment lies in its frame and the buffers have room.
                self.stats.invalid_descs.inc();
                break;
            }
            total += n.payload;
            // A payload is less than a frame.
            seq = seq.wrapping_add(u32::try_from(n.payload).unwrap_or(u32::MAX));
            psh = n.psh;
            full = n.payload == seg.payload;
            count += 1;
        }
        if count == 1 {
            return None;
        }
        // Cannot fail: the lengths were checked as segments were added (if it did, the
        // guest would get the first segment alone and TCP would resend the rest).
        let hdr = seg.finish(&mut head[VNET_HDR_LEN..], total, psh)?;
        head[..VNET_HDR_LEN].copy_from_slice(&hdr.to_bytes());
        bufs.copy_from(&head[..VNET_HDR_LEN + seg.hdr_len]);
        self.stats.rx_gro_packets.inc();
        self.stats
            .rx_gro_segments
            .add(u64::try_from(count).unwrap_or(u64::MAX));
        Some(VNET_HDR_LEN + total)
    }

    /// Copy `len` bytes at `offset` of a busy RX frame, behind a zeroed virtio
    /// header, into `bufs`: the frame becomes a net_iov frag, copied list to list.
    /// Returns the bytes written, or None when the descriptor runs past its frame.
    fn copy_frame_out(
        &self,
        frame: NetmemRef,
        offset: u32,
        len: u32,
        bufs: &FragList<'_>,
    ) -> Option<usize> {
        let mut pkt = FragList::new();
        self.umem.push_frag(frame, offset, len, &mut pkt).ok()?;
        let hdr = bufs.copy_from(&[0u8; VNET_HDR_LEN]);
        Some(hdr + bufs.copy_from_list(VNET_HDR_LEN, &pkt))
    }
}

impl UplinkQueue for XdpQueue {
    fn fd(&self) -> Option<RawFd> {
        Some(self.xsk.rx.as_raw_fd())
    }

    fn tx_fd(&self) -> Option<RawFd> {
        Some(self.xsk.tx.as_raw_fd())
    }

    fn send(&mut self, hdr: &VirtioNetHdr, pkt: &FragList<'_>) -> Result<SendStatus, UplinkError> {
        if hdr.gso_type != VIRTIO_NET_HDR_GSO_NONE {
            // Before zero-copy: a GSO packet is always segmented by copying.
            return Ok(self.send_gso(hdr, pkt));
        }
        let len = pkt.len();
        let Some(desc_len) = u32::try_from(len)
            .ok()
            .filter(|&l| l > 0 && l <= self.umem.frame_size())
        else {
            self.stats.tx_drop_length.inc();
            return Ok(self.drop_tx("empty or larger than a umem frame"));
        };
        let csum = (hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0)
            .then(|| (usize::from(hdr.csum_start), usize::from(hdr.csum_offset)));
        if let Some(zc) = self.zc.as_mut() {
            if zc.send(pkt, csum.is_some(), &self.stats) {
                return Ok(SendStatus::InFlight);
            }
        }

        if !self.tx_slot_free() || self.tx_in_flight >= TX_FRAMES {
            self.kick_tx();
            self.reap_completions();
            if !self.tx_slot_free() || self.tx_in_flight >= TX_FRAMES {
                self.stats.tx_would_block.inc();
                return Ok(SendStatus::WouldBlock);
            }
        }
        let frame = match self.umem.alloc_direct() {
            Some(frame) => frame,
            None => {
                // Only when completions were not reaped yet: the budgets leave TX
                // its TX_FRAMES frames.
                self.reap_completions();
                match self.umem.alloc_direct() {
                    Some(frame) => frame,
                    None => {
                        self.stats.tx_would_block.inc();
                        return Ok(SendStatus::WouldBlock);
                    }
                }
            }
        };
        // SAFETY: `frame` was just taken from the pool: it is busy (on no ring, in no
        // frag list), so nothing else reads or writes it while `data` lives.
        let Some(data) = (unsafe { self.umem.frame_mut(frame, len) }) else {
            self.umem.recycle_direct(frame);
            self.stats.tx_drop_length.inc();
            return Ok(self.drop_tx("does not fit a umem frame"));
        };
        pkt.copy_to(data);
        if let Some((start, offset)) = csum {
            if !csum::complete_partial(data, start, offset) {
                self.umem.recycle_direct(frame);
                self.stats.tx_drop_csum.inc();
                return Ok(self.drop_tx("checksum position outside the packet"));
            }
            self.stats.tx_csum_sw.inc();
        }
        let Some(addr) = self.umem.give_to_kernel(frame) else {
            // Not a frame of this UMEM or already the kernel's: a pool bug. The frame
            // stays out of circulation rather than be handed out twice.
            self.stats.invalid_descs.inc();
            return Ok(self.drop_tx("page pool handed out a frame the kernel owns"));
        };
        let mut tx = self.xsk.tx.transmit(1);
        let queued = tx.insert_once(XdpDesc {
            addr,
            len: desc_len,
            options: 0,
        });
        tx.commit();
        drop(tx);
        if !queued {
            // Cannot happen: the slot was checked above and only we produce.
            if let Some((frame, _)) = self.umem.take_from_kernel(addr) {
                self.umem.recycle_direct(frame);
            }
            self.stats.tx_would_block.inc();
            return Ok(SendStatus::WouldBlock);
        }
        self.tx_in_flight += 1;
        self.stats.tx_packets.inc();
        if self.xsk.tx.pending() >= KICK_BATCH {
            self.kick_tx();
            self.reap_completions();
        }
        Ok(SendStatus::Sent)
    }

    fn flush(&mut self) -> Result<(), UplinkError> {
        self.kick_tx();
        self.reap_completions();
        if let Some(zc) = self.zc.as_mut() {
            zc.flush(self.queue, &self.stats, &mut self.log_limit);
        }
        Ok(())
    }

    fn reap_in_flight(&mut self) -> usize {
        self.zc.as_mut().map_or(0, |zc| {
            zc.reap(self.queue, &self.stats, &mut self.log_limit)
        })
    }

    fn in_flight(&self) -> usize {
        self.zc.as_ref().map_or(0, ZeroCopyTx::in_flight)
    }

    /// Closes the guest UMEM's socket: descriptors not sent yet are never sent, since
    /// the guest gets their buffers back; the next memory attach registers again.
    fn forget_in_flight(&mut self) {
        if let Some(zc) = self.zc.as_mut() {
            zc.forget(self.queue);
        }
    }

    fn attach_memory(&mut self, map: &Arc<GuestPageMap>) {
        if let Some(zc) = self.zc.as_mut() {
            zc.attach(map, self.queue, &self.stats, &mut self.log_limit);
        }
    }

    fn detach_memory(&mut self) {
        if let Some(zc) = self.zc.as_mut() {
            zc.detach(self.queue, &self.stats, &mut self.log_limit);
        }
    }

    fn recv(&mut self, bufs: &FragList<'_>) -> Result<Option<usize>, UplinkError> {
        if RX_FRAMES.saturating_sub(self.rx_held) >= REFILL_BATCH {
            self.refill();
        }
        loop {
            let Some((frame, offset, len)) = self.held.take().or_else(|| self.next_rx()) else {
                self.refill();
                self.wake_fill();
                return Ok(None);
            };
            let written = self.copy_frame_out(frame, offset, len, bufs);
            let Some(written) = written else {
                // Runs past the end of its frame.
                self.umem.recycle_direct(frame);
                self.stats.invalid_descs.inc();
                continue;
            };
            let want = VNET_HDR_LEN + usize::try_from(len).unwrap_or(usize::MAX);
            if written == want {
                if let Some(n) = self.coalesce(frame, offset, len, bufs) {
                    self.umem.recycle_direct(frame);
                    self.stats.rx_packets.inc();
                    return Ok(Some(n));
                }
            }
            self.umem.recycle_direct(frame);
            if written < want {
                self.stats.rx_truncated.inc();
            }
            self.stats.rx_packets.inc();
            // The full length, as a TAP read reports it: the worker drops (and counts)
            // a packet that did not fit instead of handing the guest a cut one.
            return Ok(Some(want));
        }
    }
}

impl Drop for XdpQueue {
    /// A held frame goes back to the pool before the UMEM takes the rest back.
    fn drop(&mut self) {
        if let Some((frame, _, _)) = self.held.take() {
            self.umem.recycle_direct(frame);
        }
    }
}
