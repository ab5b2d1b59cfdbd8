// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A virtio-net "guest" driver: queue pairs in guest memory, TX chains, RX buffers,
//! kicks and calls. Its VMM's part, the vhost-user setup, is in [`super::connection`].

use std::collections::VecDeque;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use super::connection::{wanted_protocol, Connection, SetupOrder};
use super::daemon::{Daemon, DaemonLog};
use super::memory::TestMemory;
use super::packet::{VnetHdr, VNET_HDR_LEN};
use super::queue::{QueuePair, Vq};
use super::ring::{Buf, Used};
use super::TIMEOUT;

/// `1 << n` for a feature number.
pub const fn bit(n: u32) -> u64 {
    1 << n
}

/// The features a plain test guest acks (MQ is added for more than one pair).
pub const BASE_FEATURES: u64 = bit(VIRTIO_F_VERSION_1)
    | bit(VIRTIO_NET_F_MAC)
    | bit(VIRTIO_NET_F_MTU)
    | bit(VIRTIO_NET_F_STATUS)
    | bit(VIRTIO_NET_F_MRG_RXBUF)
    | bit(VIRTIO_RING_F_EVENT_IDX)
    | bit(VIRTIO_RING_F_INDIRECT_DESC);

/// virtio: the packed virtqueue layout.
pub const VIRTIO_F_RING_PACKED: u32 = 34;

/// What the guest negotiates.
#[derive(Clone, Debug)]
pub struct GuestConfig {
    /// Queue pairs.
    pub pairs: usize,
    /// Ring size.
    pub queue_size: u16,
    /// virtio features to ack (PROTOCOL_FEATURES, and MQ for >1 pair, are added).
    pub features: u64,
    /// Protocol features to ack (intersected with the offer).
    pub protocol: VhostUserProtocolFeatures,
    /// Regions sent in SET_MEM_TABLE (indices into `memory::REGIONS`).
    pub mem_regions: Vec<usize>,
    /// Setup message order.
    pub order: SetupOrder,
    /// Send the memory as one ADD_MEM_REG per region instead of SET_MEM_TABLE (what
    /// QEMU does once CONFIGURE_MEM_SLOTS is acked).
    pub mem_via_add_reg: bool,
    /// Region holding the TX rings (the RX rings are in region 0). Default 1: the region
    /// at a non-zero mmap_offset, so ring addresses are translated through it.
    pub tx_ring_region: usize,
    /// Packed rings (VIRTIO_F_RING_PACKED acked) instead of split ones.
    pub packed: bool,
}

impl Default for GuestConfig {
    fn default() -> Self {
        GuestConfig {
            pairs: 1,
            queue_size: 256,
            features: BASE_FEATURES,
            protocol: wanted_protocol(),
            mem_regions: vec![0, 1],
            order: SetupOrder::Standard,
            mem_via_add_reg: false,
            tx_ring_region: 1,
            packed: false,
        }
    }
}

/// A packet the device wrote into RX buffers.
#[derive(Clone, Debug)]
pub struct RxPacket {
    /// The virtio-net header.
    pub hdr: VnetHdr,
    /// The frame after the header (gathered over every buffer).
    pub frame: Vec<u8>,
    /// Used entries (buffers) the packet took.
    pub buffers: usize,
}

impl RxPacket {
    /// The packet was merged over several buffers (MRG_RXBUF) and its header's
    /// `num_buffers` says how many.
    pub fn assert_merged(&self) {
        assert!(
            self.buffers > 1,
            "a {}-byte packet in {} buffer(s)",
            self.frame.len(),
            self.buffers
        );
        assert_eq!(
            usize::from(self.hdr.num_buffers),
            self.buffers,
            "num_buffers vs used entries: {:?}",
            self.hdr
        );
    }
}

/// How a TX chain is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxLayout {
    /// Header and frame in one descriptor.
    Single,
    /// Header descriptor (region 0), frame descriptor (next buffer region).
    Split,
    /// The split chain inside an indirect table.
    Indirect,
}

/// How an RX chain is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxLayout {
    /// One writable descriptor.
    Single,
    /// A 12-byte header descriptor and a data descriptor in another region.
    Split,
}

/// The guest: memory, queue pairs, negotiated state.
pub struct Guest {
    /// Guest memory.
    pub mem: TestMemory,
    /// Queue pairs.
    pub pairs: Vec<QueuePair>,
    /// Configuration.
    pub cfg: GuestConfig,
    /// Features acked in the last setup.
    pub acked: u64,
    /// Regions new buffers are placed in (round robin): those the daemon knows.
    pub buf_regions: Vec<usize>,
    /// Kick only when avail_event / NO_NOTIFY asks for it (what a real driver does).
    pub honour_avail_event: bool,
    /// The base every SET_VRING_BASE sends instead of where the driver stands: what
    /// QEMU sends a killed backend's successor (the base of the previous start).
    pub vring_base_override: Option<u32>,
    rr: usize,
    rx_pending: Vec<VecDeque<Used>>,
    log: DaemonLog,
}

/// Read the `len` bytes the device wrote into the writable buffers `bufs`.
pub fn read_written(mem: &TestMemory, bufs: &[Buf], len: u32) -> Vec<u8> {
    let mut left = usize::try_from(len).expect("fits");
    let mut out = Vec::with_capacity(left);
    for b in bufs.iter().filter(|b| b.write) {
        if left == 0 {
            break;
        }
        let n = left.min(usize::try_from(b.len).expect("fits"));
        out.extend(mem.read(b.addr, n));
        left -= n;
    }
    out
}

impl Guest {
    /// Memory and rings (RX rings in region 0, TX rings in `cfg.tx_ring_region`).
    pub fn new(cfg: GuestConfig) -> Guest {
        let mem = TestMemory::new();
        let pairs = (0..cfg.pairs)
            .map(|p| {
                let vq = if cfg.packed { Vq::new_packed } else { Vq::new };
                QueuePair {
                    rx: vq(&mem, 2 * p, cfg.queue_size, 0),
                    tx: vq(&mem, 2 * p + 1, cfg.queue_size, cfg.tx_ring_region),
                }
            })
            .collect();
        Guest {
            mem,
            pairs,
            buf_regions: cfg.mem_regions.clone(),
            rx_pending: (0..cfg.pairs).map(|_| VecDeque::new()).collect(),
            cfg,
            acked: 0,
            honour_avail_event: false,
            vring_base_override: None,
            rr: 0,
            log: DaemonLog::default(),
        }
    }

    /// The daemon's stderr so far, for failure messages.
    pub fn log(&self) -> &DaemonLog {
        &self.log
    }

    /// Whether feature `n` was acked.
    pub fn has(&self, n: u32) -> bool {
        self.acked & bit(n) != 0
    }

    /// The regions the daemon is told about (`cfg.mem_regions`), as sent.
    pub fn region_infos(&self) -> Vec<vhost::VhostUserMemoryRegionInfo> {
        self.cfg
            .mem_regions
            .iter()
            .map(|&i| self.mem.region_info(i))
            .collect()
    }

    /// Rings: two per queue pair.
    pub fn vrings(&self) -> usize {
        2 * self.pairs.len()
    }

    /// The queue of vhost-user ring `ring`.
    pub fn vq(&self, ring: usize) -> &Vq {
        let p = &self.pairs[ring / 2];
        if ring % 2 == 0 {
            &p.rx
        } else {
            &p.tx
        }
    }

    /// Quote `daemon`'s stderr in failure messages from now on.
    pub fn follow(&mut self, daemon: &Daemon) {
        self.log = daemon.log();
    }

    /// Connect to `daemon` and run the whole setup (memory table, every ring with
    /// SET_VRING_BASE = the used index in guest memory, as QEMU replays it).
    pub fn attach(&mut self, daemon: &mut Daemon) -> Connection {
        let stream = daemon.connect(TIMEOUT);
        self.follow(daemon);
        self.attach_stream(stream)
    }

    /// Run the setup on an already connected socket.
    pub fn attach_stream(&mut self, stream: UnixStream) -> Connection {
        Connection::setup(self, stream)
    }

    fn next_region(&mut self) -> usize {
        let r = self.buf_regions[self.rr % self.buf_regions.len()];
        self.rr += 1;
        r
    }

    /// Add (not publish) a TX chain carrying `hdr` + `frame`; returns its head.
    pub fn add_tx(&mut self, pair: usize, hdr: VnetHdr, frame: &[u8], layout: TxLayout) -> u16 {
        let hdr_bytes = hdr.to_bytes();
        let layout = if layout == TxLayout::Indirect && !self.has(VIRTIO_RING_F_INDIRECT_DESC) {
            TxLayout::Split
        } else {
            layout
        };
        match layout {
            TxLayout::Single => {
                let r = self.next_region();
                let len = VNET_HDR_LEN + frame.len();
                let a = self.mem.alloc(r, u64::try_from(len).expect("fits"), 64);
                self.mem.write(a.0, &hdr_bytes);
                self.mem.write(a.0 + 12, frame);
                let bufs = [Buf::ro(a, len)];
                self.pairs[pair].tx.add_chain(&self.mem, &bufs)
            }
            TxLayout::Split | TxLayout::Indirect => {
                let h = self.mem.alloc(self.buf_regions[0], 12, 16);
                self.mem.write(h.0, &hdr_bytes);
                let r = self.next_region();
                let f = self
                    .mem
                    .alloc(r, u64::try_from(frame.len()).expect("fits"), 64);
                self.mem.write(f.0, frame);
                let bufs = [Buf::ro(h, VNET_HDR_LEN), Buf::ro(f, frame.len())];
                if layout == TxLayout::Split {
                    self.pairs[pair].tx.add_chain(&self.mem, &bufs)
                } else {
                    let t = self.mem.alloc(self.buf_regions[0], 32, 16);
                    self.pairs[pair].tx.add_indirect(&self.mem, t, &bufs)
                }
            }
        }
    }

    /// Publish the TX ring of `pair` and kick it.
    pub fn kick_tx(&mut self, pair: usize) {
        let honour = self.honour_avail_event;
        self.pairs[pair].tx.publish(&self.mem, honour);
    }

    /// Publish the RX ring of `pair` and kick it.
    pub fn kick_rx(&mut self, pair: usize) {
        let honour = self.honour_avail_event;
        self.pairs[pair].rx.publish(&self.mem, honour);
    }

    /// Send `frames` on `pair` (plain header; layouts rotate over single, split and
    /// indirect chains) and kick once.
    pub fn send(&mut self, pair: usize, frames: &[Vec<u8>]) {
        const LAYOUTS: [TxLayout; 3] = [TxLayout::Split, TxLayout::Single, TxLayout::Indirect];
        for (i, f) in frames.iter().enumerate() {
            self.add_tx(pair, VnetHdr::default(), f, LAYOUTS[i % LAYOUTS.len()]);
        }
        self.kick_tx(pair);
    }

    /// Wait for `n` TX chains of `pair` to come back; returns them.
    pub fn wait_tx(&mut self, pair: usize, n: usize) -> Vec<Used> {
        self.pairs[pair]
            .tx
            .wait_used(&self.mem, n, TIMEOUT, &self.log)
    }

    /// Post `count` RX buffers of `len` bytes on `pair` (layouts alternate single and
    /// split, regions rotate), then publish and kick.
    pub fn post_rx(&mut self, pair: usize, count: usize, len: usize) {
        for i in 0..count {
            let layout = if i % 2 == 0 {
                RxLayout::Single
            } else {
                RxLayout::Split
            };
            self.add_rx(pair, len, layout);
        }
        self.kick_rx(pair);
    }

    /// Add (not publish) one RX chain of `len` bytes in total.
    pub fn add_rx(&mut self, pair: usize, len: usize, layout: RxLayout) -> u16 {
        let bufs = match layout {
            RxLayout::Single => {
                let r = self.next_region();
                let a = self.mem.alloc(r, u64::try_from(len).expect("fits"), 64);
                vec![Buf::wo(a, len)]
            }
            RxLayout::Split => {
                assert!(len > VNET_HDR_LEN, "split RX buffer larger than the header");
                let h = self.mem.alloc(self.buf_regions[0], 12, 16);
                let r = self.next_region();
                let d = self
                    .mem
                    .alloc(r, u64::try_from(len - VNET_HDR_LEN).expect("fits"), 64);
                vec![Buf::wo(h, VNET_HDR_LEN), Buf::wo(d, len - VNET_HDR_LEN)]
            }
        };
        self.pairs[pair].rx.add_chain(&self.mem, &bufs)
    }

    /// Receive `n` packets on `pair` within `timeout`, gathering MRG_RXBUF buffers.
    pub fn recv(&mut self, pair: usize, n: usize, timeout: Duration) -> Vec<RxPacket> {
        let got = self.recv_until(pair, n, timeout);
        if got.len() < n {
            panic!(
                "pair {pair}: received {} of {n} packets within {timeout:?} \
                 ({} buffers of a partial packet held){}",
                got.len(),
                self.rx_pending[pair].len(),
                self.log.context()
            );
        }
        got
    }

    /// Receive up to `n` packets on `pair`, waiting at most `timeout`.
    pub fn recv_until(&mut self, pair: usize, n: usize, timeout: Duration) -> Vec<RxPacket> {
        let deadline = Instant::now() + timeout;
        let mrg = self.has(VIRTIO_NET_F_MRG_RXBUF);
        let mut out = Vec::new();
        while out.len() < n {
            if let Some(p) = self.parse_rx(pair, mrg) {
                out.push(p);
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let more = self.pairs[pair]
                .rx
                .collect_used(&self.mem, 1, left, &self.log);
            self.rx_pending[pair].extend(more);
        }
        out
    }

    /// Wait for `n` raw used entries on the RX ring of `pair` (not parsed as packets).
    pub fn wait_rx_used(&mut self, pair: usize, n: usize) -> Vec<Used> {
        self.pairs[pair]
            .rx
            .wait_used(&self.mem, n, TIMEOUT, &self.log)
    }

    /// Poll (without re-arming used_event or consuming calls) until `n` TX chains of
    /// `pair` came back.
    pub fn poll_tx(&mut self, pair: usize, n: usize) -> Vec<Used> {
        self.pairs[pair]
            .tx
            .poll_used(&self.mem, n, TIMEOUT, &self.log)
    }

    /// Poll (without re-arming used_event) until `n` RX used entries arrived on `pair`;
    /// they are then parsed by [`Self::recv`].
    pub fn poll_rx(&mut self, pair: usize, n: usize) {
        let more = self.pairs[pair]
            .rx
            .poll_used(&self.mem, n, TIMEOUT, &self.log);
        self.rx_pending[pair].extend(more);
    }

    /// Assemble one packet from the pending used RX entries of `pair`, if complete.
    fn parse_rx(&mut self, pair: usize, mrg: bool) -> Option<RxPacket> {
        let pending = &mut self.rx_pending[pair];
        let first = pending.front()?;
        let cap: u64 = first
            .bufs
            .iter()
            .filter(|b| b.write)
            .map(|b| u64::from(b.len))
            .sum();
        assert!(
            u64::from(first.len) <= cap,
            "device bug: used len {} exceeds the {cap}-byte buffer{}",
            first.len,
            self.log.context()
        );
        assert!(
            usize::try_from(first.len).expect("fits") >= VNET_HDR_LEN,
            "device bug: RX used len {} is shorter than the virtio-net header{}",
            first.len,
            self.log.context()
        );
        let bytes = read_written(&self.mem, &first.bufs, first.len);
        let hdr = VnetHdr::from_bytes(&bytes);
        let count = if mrg { usize::from(hdr.num_buffers) } else { 1 };
        assert!(
            count >= 1,
            "device bug: num_buffers is 0 with MRG_RXBUF{}",
            self.log.context()
        );
        if pending.len() < count {
            return None;
        }
        let mut frame = bytes[VNET_HDR_LEN..].to_vec();
        pending.pop_front();
        for _ in 1..count {
            let u = pending.pop_front().expect("counted");
            frame.extend(read_written(&self.mem, &u.bufs, u.len));
        }
        Some(RxPacket {
            hdr,
            frame,
            buffers: count,
        })
    }

    /// Send `frames` on `pair` and expect them back on the same pair's RX ring in order,
    /// byte for byte (loopback uplink). Posts the RX buffers it needs.
    pub fn loopback_roundtrip(&mut self, pair: usize, frames: &[Vec<u8>]) {
        self.post_rx(pair, frames.len(), 2048);
        self.send(pair, frames);
        let got = self.recv(pair, frames.len(), TIMEOUT);
        for (i, (g, want)) in got.iter().zip(frames).enumerate() {
            if g.frame != *want {
                panic!(
                    "pair {pair}: looped-back frame {i} differs: {}{}",
                    super::packet::first_difference(&g.frame, want),
                    self.log.context()
                );
            }
        }
        self.wait_tx(pair, frames.len());
    }
}
