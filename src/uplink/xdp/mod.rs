//! AF_XDP uplink: one XDP queue per queue pair, bound to the interface queue of the
//! same index, each with its own UMEM (an RX socket, polled and in the XSKMAP, and a TX
//! socket sharing its UMEM), and the XSKMAP redirect program in front.
//!
//! - `prog`: the `bpf(2)` loader: XSKMAP, redirect program, BPF link.
//! - `socket`: one XDP queue (UMEM registration, its two sockets, four rings, binds) with
//!   `xdpilone`.
//! - `umem`: the UMEM as a `NetIovArea` whose frames are net_iovs handed out by the
//!   queue's `PagePool` (see its module docs for who owns a frame when).
//! - `guest_umem`: zero-copy TX (`--xdp-zerocopy-tx`): guest memory registered as a
//!   second UMEM, guest pages held until their descriptors complete.
//! - `csum`: software completion of partial checksums on TX.
//!
//! One UMEM per queue rather than one shared UMEM: each queue pair is owned by its own
//! worker thread (DESIGN.md section 2), and a shared UMEM would make the free frames
//! and the per-queue fill/completion rings (the kernel needs one pair per bound queue
//! anyway) shared state between workers. Per queue, everything a worker touches is
//! its own: no locks on the data path, the queue is a self-contained `Send` value that
//! stays valid even if the [`Xdp`] is dropped while a worker holds it, and the layout
//! matches the per-RX-queue `PagePool`. The cost is memory: [`UMEM_FRAMES`] frames of
//! [`UMEM_FRAME_SIZE`] bytes (16 MiB) per queue pair.
//!
//! Frames of one UMEM have two budgets: at most [`RX_FRAMES`] are with the kernel for
//! receiving (fill ring, RX ring), at most the rest for transmitting (TX ring,
//! completion ring). Neither direction can starve the other, and the completion ring
//! (sized to the TX budget) can never overflow.
//!
//! TX copies the frags into a frame taken from the pool (the 12-byte virtio header is
//! not sent; see [`XdpQueue`] for what happens to checksum and GSO requests), and the
//! completion ring gives it back to the pool; RX turns the frame into a net_iov frag,
//! copies it behind a zeroed virtio header into the guest's buffers, and recycles it
//! to the pool, whence the fill ring is refilled. `need_wakeup` is honoured both ways: `sendto` (TX) and `poll` (fill
//! ring) are only issued when the kernel sets the flag; in copy mode the kernel always
//! sets it for TX, since nothing transmits in copy mode without a syscall.

mod csum;
mod guest_umem;
mod prog;
mod socket;
mod umem;

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_GUEST_USO4,
    VIRTIO_NET_F_GUEST_USO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_HOST_UFO, VIRTIO_NET_F_HOST_USO,
};
use xdpilone::xdp::XdpDesc;
use xdpilone::RingTx;

use self::guest_umem::GuestUmem;
pub use self::prog::AttachMode;
use self::prog::{XdpLink, XdpProg, XskMap};
pub use self::socket::BindMode;
use self::socket::{RingSizes, Xsk};
use self::umem::Umem;
use super::{QueueSlots, SendStatus, Uplink, UplinkError, UplinkQueue};
use crate::log_limit::LogLimiter;
use crate::metrics::{Counter, CounterGroup, NamedGroup};
use crate::netmem::{FragList, GuestPageMap, NetmemRef, PagePoolError, PagePoolStatsReader};
use crate::virtio::features::bit;
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

const RINGS: RingSizes = RingSizes {
    fill: RX_FRAMES,
    completion: TX_FRAMES,
    rx: RX_FRAMES,
    tx: TX_FRAMES,
};

/// Virtio-net features to withhold from a guest served by the AF_XDP uplink; the
/// control plane clears them from what it offers.
///
/// AF_XDP moves wire frames of at most one UMEM frame and carries no offload
/// metadata (no segmentation, no checksum status) in copy mode, so:
///
/// - `HOST_TSO4`, `HOST_TSO6`, `HOST_ECN`, `HOST_UFO`, `HOST_USO`: the guest would
///   send GSO super-packets that nothing could segment; [`XdpQueue`] drops them.
/// - `GUEST_TSO4`, `GUEST_TSO6`, `GUEST_ECN`, `GUEST_UFO`, `GUEST_USO4/6`: we never
///   receive GSO packets, and offering them makes the RX path provision 64 KiB per
///   packet for nothing.
/// - `GUEST_CSUM`: we can neither mark a received checksum as verified nor hand over
///   partial checksums, so the guest must check every checksum itself.
///
/// `CSUM` (the guest leaves TX checksums to the device) stays: the uplink completes
/// partial checksums in software (see [`XdpQueue`]).
pub const XDP_UNSUPPORTED_FEATURES: u64 = bit(VIRTIO_NET_F_HOST_TSO4)
    | bit(VIRTIO_NET_F_HOST_TSO6)
    | bit(VIRTIO_NET_F_HOST_ECN)
    | bit(VIRTIO_NET_F_HOST_UFO)
    | bit(VIRTIO_NET_F_HOST_USO)
    | bit(VIRTIO_NET_F_GUEST_TSO4)
    | bit(VIRTIO_NET_F_GUEST_TSO6)
    | bit(VIRTIO_NET_F_GUEST_ECN)
    | bit(VIRTIO_NET_F_GUEST_UFO)
    | bit(VIRTIO_NET_F_GUEST_USO4)
    | bit(VIRTIO_NET_F_GUEST_USO6)
    | bit(VIRTIO_NET_F_GUEST_CSUM);

/// Errors of the AF_XDP uplink.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// The interface name cannot be one.
    #[error("invalid interface name {0:?}: 1 to 15 bytes, no NUL, '/' or whitespace")]
    InvalidName(String),
    /// The interface does not exist (in this network namespace).
    #[error("no interface {iface:?}: {source}")]
    NoSuchInterface {
        /// Interface name.
        iface: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Zero queue pairs, or more than a queue id can name.
    #[error("invalid number of queue pairs {0}")]
    QueuePairs(usize),
    /// `BPF_MAP_CREATE` of the XSKMAP failed.
    #[error("cannot create the xskmap: {0}")]
    MapCreate(#[source] io::Error),
    /// `BPF_PROG_LOAD` failed; `log` is the verifier's log.
    #[error("cannot load the xdp program: {source}; verifier log:\n{log}")]
    ProgLoad {
        /// Cause.
        #[source]
        source: io::Error,
        /// The kernel verifier's log.
        log: String,
    },
    /// Attaching the program in the requested mode failed.
    #[error("cannot attach the xdp program to {iface} in {mode} mode: {source}")]
    Attach {
        /// Interface name.
        iface: String,
        /// Requested mode.
        mode: AttachMode,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Attaching the program failed in driver mode and in generic mode.
    #[error(
        "cannot attach the xdp program to {iface}: driver mode: {driver}; generic mode: {source}"
    )]
    AttachAny {
        /// Interface name.
        iface: String,
        /// Why driver mode failed.
        driver: io::Error,
        /// Why generic mode failed.
        #[source]
        source: io::Error,
    },
    /// `BPF_MAP_UPDATE_ELEM` of a socket failed.
    #[error("cannot put the socket of queue {queue} into the xskmap: {source}")]
    MapUpdate {
        /// Queue id.
        queue: u32,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Mapping the UMEM area or setting up its page pool failed.
    #[error("cannot allocate the umem of queue {queue}: {source}")]
    UmemAlloc {
        /// Queue id.
        queue: u32,
        /// Cause.
        #[source]
        source: PagePoolError,
    },
    /// Creating the AF_XDP socket or registering the UMEM failed.
    #[error("cannot register the umem of queue {queue}: {source}")]
    Umem {
        /// Queue id.
        queue: u32,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Creating the socket's rings (or querying the socket) failed.
    #[error("cannot set up the xdp socket of queue {queue}: {source}")]
    Socket {
        /// Queue id.
        queue: u32,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Registering the guest's memory as a UMEM (zero-copy TX) failed.
    #[error("cannot register guest memory as a umem for interface queue {queue}: {source}")]
    GuestUmem {
        /// Interface queue of the zero-copy TX socket.
        queue: u32,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Zero-copy TX needs a second interface queue per queue pair.
    #[error("zero-copy tx on {iface} needs {need} tx queues (two per queue pair), it has {have}")]
    ZeroCopyTxQueues {
        /// Interface name.
        iface: String,
        /// Queues needed.
        need: u32,
        /// Queues the interface has.
        have: u32,
    },
    /// Binding the socket to the interface queue failed.
    #[error("cannot bind an xdp socket to {iface} queue {queue} in {mode} mode: {source}")]
    Bind {
        /// Interface name.
        iface: String,
        /// Queue id.
        queue: u32,
        /// Requested mode.
        mode: BindMode,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// Choices [`Xdp::open`] otherwise makes itself.
#[derive(Debug, Clone, Default)]
pub struct XdpOptions {
    /// Where to run the program; None: driver mode, generic where the driver refuses.
    pub attach: Option<AttachMode>,
    /// How to bind the sockets; None: zero-copy, copy where the driver refuses.
    pub bind: Option<BindMode>,
    /// Transmit guest packets straight from guest memory (`--xdp-zerocopy-tx`): the
    /// guest's memory is registered as a second UMEM per queue pair, on interface
    /// queue `queue_pairs + pair`, so the interface needs twice as many TX queues as
    /// there are pairs. See [`XdpQueue`].
    pub zerocopy_tx: bool,
}

/// Counters of one AF_XDP queue (single writer: the queue's worker).
#[derive(Debug, Default)]
pub struct XdpQueueStats {
    /// Frames put on the TX ring.
    pub tx_packets: Counter,
    /// TX frames the completion ring gave back.
    pub tx_completed: Counter,
    /// TX packets dropped: GSO requested (no segmentation offload on AF_XDP).
    pub tx_drop_gso: Counter,
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
            ("tx_drop_length", self.tx_drop_length.get()),
            ("tx_drop_csum", self.tx_drop_csum.get()),
            ("tx_csum_sw", self.tx_csum_sw.get()),
            ("tx_would_block", self.tx_would_block.get()),
            ("tx_kicks", self.tx_kicks.get()),
            ("tx_kick_errors", self.tx_kick_errors.get()),
            ("rx_packets", self.rx_packets.get()),
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

/// An AF_XDP uplink on one interface: the XSKMAP redirect program and one socket per
/// queue pair.
///
/// Dropping it detaches the program (the BPF link closes) and frees the map, then each
/// queue not held by a worker closes its socket and unmaps its UMEM; a queue a worker
/// still holds is freed when the worker drops it.
///
/// Requirements: the interface has at least `queue_pairs` RX/TX queues (on a NIC with
/// RSS, `ethtool -L` its combined channels to match), CAP_NET_ADMIN and CAP_BPF (or
/// root), and either CAP_IPC_LOCK or an `RLIMIT_MEMLOCK` of at least 16 MiB per queue
/// pair, since the kernel pins and charges each UMEM. Frames larger than a UMEM frame
/// minus the XDP headroom (3840 bytes) are dropped by the kernel on receive (no
/// multi-buffer AF_XDP), so keep the MTU below that.
pub struct Xdp {
    // Field order is drop order: detach first, so no packet is redirected to a
    // socket that is going away.
    link: XdpLink,
    _prog: XdpProg,
    _map: XskMap,
    queues: QueueSlots,
    stats: Vec<Arc<XdpQueueStats>>,
    pool_stats: Vec<PagePoolStatsReader>,
    iface: String,
    bind_mode: BindMode,
}

/// Number of TX queues of `iface` (sysfs), if it can be read.
fn tx_queues(iface: &str) -> Option<u32> {
    let dir = std::fs::read_dir(format!("/sys/class/net/{iface}/queues")).ok()?;
    let n = dir
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("tx-"))
        .count();
    u32::try_from(n).ok()
}

fn valid_name(iface: &str) -> bool {
    !iface.is_empty()
        && iface.len() < libc::IFNAMSIZ
        && !iface.contains(['/', '\0'])
        && !iface.chars().any(char::is_whitespace)
}

impl Xdp {
    /// Open `iface` with `queue_pairs` sockets (queue pair i on interface queue i):
    /// zero-copy where the driver allows it, the program in driver mode where the
    /// driver allows it.
    pub fn open(iface: &str, queue_pairs: usize) -> Result<Xdp, XdpError> {
        Self::open_with(iface, queue_pairs, &XdpOptions::default())
    }

    /// [`Self::open`] with explicit modes.
    pub fn open_with(
        iface: &str,
        queue_pairs: usize,
        options: &XdpOptions,
    ) -> Result<Xdp, XdpError> {
        if !valid_name(iface) {
            return Err(XdpError::InvalidName(iface.to_string()));
        }
        let pairs = u32::try_from(queue_pairs)
            .ok()
            .filter(|&n| n > 0)
            .ok_or(XdpError::QueuePairs(queue_pairs))?;
        let cname = CString::new(iface).map_err(|_| XdpError::InvalidName(iface.to_string()))?;
        // SAFETY: `cname` is a NUL-terminated string that lives across the call.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if ifindex == 0 {
            return Err(XdpError::NoSuchInterface {
                iface: iface.to_string(),
                source: io::Error::last_os_error(),
            });
        }

        if options.zerocopy_tx {
            let need = pairs.saturating_mul(2);
            if let Some(have) = tx_queues(iface).filter(|&have| have < need) {
                return Err(XdpError::ZeroCopyTxQueues {
                    iface: iface.to_string(),
                    need,
                    have,
                });
            }
        }
        // Everything below is owned by values that clean up on drop, so an error at
        // any step releases what the steps before it set up.
        let map = XskMap::create(pairs)?;
        let prog = XdpProg::load_redirect(&map)?;
        let mut bind_mode = options.bind;
        let mut queues: Vec<Box<dyn UplinkQueue>> = Vec::new();
        let mut stats = Vec::new();
        let mut pool_stats = Vec::new();
        for queue in 0..pairs {
            let umem = Umem::new(UMEM_FRAMES, UMEM_FRAME_SIZE)
                .map_err(|source| XdpError::UmemAlloc { queue, source })?;
            let xsk = Xsk::open(&umem, &cname, queue, RINGS, bind_mode)?;
            // Every queue binds like the first one did.
            bind_mode = Some(xsk.mode);
            map.insert(queue, xsk.rx.as_raw_fd())?;
            let queue_stats = Arc::new(XdpQueueStats::default());
            stats.push(Arc::clone(&queue_stats));
            pool_stats.push(umem.stats_reader());
            let zc = options.zerocopy_tx.then(|| ZeroCopyTx {
                iface: cname.clone(),
                queue: pairs + queue,
                mode: xsk.mode,
                umem: None,
                generation: None,
                carried: 0,
            });
            queues.push(Box::new(XdpQueue::new(queue, xsk, umem, queue_stats, zc)));
        }
        let link = prog.attach(iface, ifindex, options.attach)?;
        let bind_mode = bind_mode.unwrap_or(BindMode::Copy);
        log::info!(
            "xdp {iface}: {pairs} queue(s), program in {} mode, sockets in {bind_mode} mode",
            link.mode()
        );
        Ok(Xdp {
            link,
            _prog: prog,
            _map: map,
            queues: QueueSlots::new(queues),
            stats,
            pool_stats,
            iface: iface.to_string(),
            bind_mode,
        })
    }

    /// The interface.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// Where the program runs.
    pub fn attach_mode(&self) -> AttachMode {
        self.link.mode()
    }

    /// How the sockets move packets.
    pub fn bind_mode(&self) -> BindMode {
        self.bind_mode
    }

    /// Counters of queue pair `pair`.
    pub fn stats(&self, pair: usize) -> Option<Arc<XdpQueueStats>> {
        self.stats.get(pair).cloned()
    }

    /// Counters of the page pool that hands out queue pair `pair`'s UMEM frames.
    pub fn pool_stats(&self, pair: usize) -> Option<PagePoolStatsReader> {
        self.pool_stats.get(pair).cloned()
    }
}

impl Uplink for Xdp {
    fn describe(&self) -> String {
        format!(
            "xdp {} ({} program, {} sockets)",
            self.iface,
            self.link.mode(),
            self.bind_mode
        )
    }

    fn take_queue(&self, pair: usize) -> Result<Box<dyn UplinkQueue>, UplinkError> {
        self.queues.take(pair)
    }

    fn return_queue(&self, pair: usize, queue: Box<dyn UplinkQueue>) {
        self.queues.put(pair, queue)
    }

    /// Nothing to apply: AF_XDP has no offloads to switch on (no segmentation, no
    /// checksum metadata). The features that would need them are
    /// [`XDP_UNSUPPORTED_FEATURES`], which the control plane must not offer with this
    /// uplink; what remains (`CSUM`) is handled in software whatever was acked.
    fn apply_features(&self, _features: Features) -> Result<(), UplinkError> {
        Ok(())
    }

    fn unsupported_features(&self) -> u64 {
        XDP_UNSUPPORTED_FEATURES
    }

    fn detach_memory(&self) {
        self.queues.for_each_idle(|q| q.detach_memory());
    }

    /// `page_pool`: the pool of the pair's UMEM frames (the kernel's counter names);
    /// `xdp`: the pair's socket ([`XdpQueueStats`]).
    fn queue_counters(&self, pair: usize) -> Vec<NamedGroup> {
        let mut groups: Vec<NamedGroup> = Vec::new();
        if let Some(pool) = self.pool_stats(pair) {
            groups.push(("page_pool", Arc::new(pool)));
        }
        if let Some(xdp) = self.stats(pair) {
            groups.push(("xdp", xdp));
        }
        groups
    }
}

/// One queue pair's AF_XDP socket, owned by the pair's worker.
///
/// TX: the frags are copied into a UMEM frame from the queue's page pool and the frame
/// goes on the TX ring; the completion ring gives it back to the pool. The virtio-net
/// header is not sent. A header asking for a checksum
/// (`VIRTIO_NET_HDR_F_NEEDS_CSUM`) has the checksum completed in software in the UMEM
/// frame (counted in `tx_csum_sw`); a header asking for GSO has the packet counted as
/// dropped (`tx_drop_gso`, [`SendStatus::Dropped`]): nothing can segment it, and the
/// GSO features are in [`XDP_UNSUPPORTED_FEATURES`] so a guest should never send one.
/// A full TX ring, a used-up TX frame budget or an empty pool is
/// [`SendStatus::WouldBlock`], after one wakeup and completion reap.
///
/// RX: one frame from the RX ring becomes a net_iov frag, written behind a zeroed
/// 12-byte virtio header (`num_buffers` is the caller's) into the guest buffers; the
/// frame is recycled to the pool, which refills the fill ring.
///
/// Zero-copy TX (`XdpOptions::zerocopy_tx`): the guest memory snapshot the worker
/// attaches is registered as a second UMEM (see `guest_umem`), and a packet without a
/// checksum to complete whose frags all lie in it goes out from guest memory:
/// [`SendStatus::InFlight`], its pages held and its chain kept by the caller until
/// the completion ring returns it ([`UplinkQueue::reap_in_flight`]). Other packets
/// take the copy path (counted in `tx_zc_copied`); since the two paths use different
/// interface queues, a flow mixing them may be reordered.
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
    umem: Umem,
}

/// Zero-copy TX state of one queue.
struct ZeroCopyTx {
    iface: CString,
    /// Interface queue of the guest UMEM's TX socket.
    queue: u32,
    mode: BindMode,
    /// The current snapshot's registration (None: no memory, or it failed).
    umem: Option<GuestUmem>,
    /// Generation of the snapshot last attached.
    generation: Option<u64>,
    /// Packets of a retired registration to report complete (its socket is closed).
    carried: usize,
}

/// How long retiring a guest UMEM waits for its packets in flight.
const ZC_RETIRE_WAIT: Duration = Duration::from_millis(50);

/// Wake the kernel to transmit what is on `tx`, if it asks for it. Copy mode sends a
/// batch per call, so keep kicking while the ring drains.
fn kick_ring(tx: &mut RingTx, queue: u32, stats: &XdpQueueStats, log_limit: &mut LogLimiter) {
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
    fn new(
        queue: u32,
        xsk: Xsk,
        umem: Umem,
        stats: Arc<XdpQueueStats>,
        zc: Option<ZeroCopyTx>,
    ) -> Self {
        let mut q = XdpQueue {
            queue,
            xsk,
            rx_held: 0,
            tx_in_flight: 0,
            stats,
            log_limit: LogLimiter::new(1),
            zc,
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

    /// Kick the guest UMEM's TX ring and read its completion ring.
    fn zc_flush(&mut self) {
        let XdpQueue {
            zc,
            stats,
            log_limit,
            queue,
            ..
        } = self;
        let Some(guest) = zc.as_mut().and_then(|z| z.umem.as_mut()) else {
            return;
        };
        if guest.packets_out() > 0 {
            kick_ring(guest.tx_ring(), *queue, stats, log_limit);
        }
        let r = guest.reap();
        stats.tx_zc_completed.add(r.packets);
        if r.out_of_order > 0 {
            stats.tx_zc_out_of_order.add(r.out_of_order);
        }
    }

    /// Drop the current guest UMEM registration after giving its packets a moment to
    /// complete; those not reported yet are reported complete later (the socket is
    /// closed, so the kernel no longer reads their pages).
    fn zc_retire(&mut self) {
        let deadline = Instant::now() + ZC_RETIRE_WAIT;
        loop {
            let out = self
                .zc
                .as_ref()
                .and_then(|z| z.umem.as_ref())
                .map_or(0, GuestUmem::packets_out);
            if out == 0 || Instant::now() >= deadline {
                break;
            }
            self.zc_flush();
            std::thread::sleep(Duration::from_millis(1));
        }
        if let Some(zc) = self.zc.as_mut() {
            if let Some(old) = zc.umem.take() {
                zc.carried += old.unreported();
                if old.packets_out() > 0 {
                    log::warn!(
                        "xdp queue {}: guest umem retired with {} packets in flight",
                        self.queue,
                        old.packets_out()
                    );
                }
            }
        }
    }

    /// Whether one TX ring slot is free (the reservation is rolled back on drop).
    fn tx_slot_free(&mut self) -> bool {
        self.xsk.tx.transmit(1).capacity() > 0
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
            self.stats.tx_drop_gso.inc();
            return Ok(self.drop_tx("gso requested, not available on af_xdp"));
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
        if let Some(guest) = self.zc.as_mut().and_then(|z| z.umem.as_mut()) {
            // A checksum to complete would mean writing into the guest's buffer.
            if csum.is_none() && guest.send(pkt).is_ok() {
                self.stats.tx_packets.inc();
                self.stats.tx_zc_packets.inc();
                return Ok(SendStatus::InFlight);
            }
            self.stats.tx_zc_copied.inc();
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
        self.zc_flush();
        Ok(())
    }

    fn reap_in_flight(&mut self) -> usize {
        self.zc_flush();
        let Some(zc) = self.zc.as_mut() else {
            return 0;
        };
        let done = zc.umem.as_mut().map_or(0, GuestUmem::take_completed);
        done + std::mem::take(&mut zc.carried)
    }

    fn in_flight(&self) -> usize {
        self.zc.as_ref().map_or(0, |zc| {
            zc.carried + zc.umem.as_ref().map_or(0, GuestUmem::unreported)
        })
    }

    /// Closes the guest UMEM's socket: descriptors not sent yet are never sent, since
    /// the guest gets their buffers back; the next memory attach registers again.
    fn forget_in_flight(&mut self) {
        if let Some(zc) = self.zc.as_mut() {
            zc.carried = 0;
            zc.generation = None;
            if let Some(old) = zc.umem.take() {
                log::warn!(
                    "xdp queue {}: guest umem closed with {} packets in flight",
                    self.queue,
                    old.packets_out()
                );
            }
        }
    }

    fn attach_memory(&mut self, map: &Arc<GuestPageMap>) {
        let Some(zc) = self.zc.as_ref() else {
            return;
        };
        if zc.generation == Some(map.generation()) {
            return;
        }
        self.zc_retire();
        let Some(zc) = self.zc.as_mut() else {
            return;
        };
        zc.generation = Some(map.generation());
        if map.regions().is_empty() {
            return;
        }
        match GuestUmem::build(map, &zc.iface, zc.queue, zc.mode) {
            Ok(guest) => {
                self.stats.tx_zc_umems.inc();
                log::info!(
                    "xdp queue {}: guest memory ({} regions) registered for zero-copy tx on interface queue {}{}",
                    self.queue,
                    map.regions().len(),
                    zc.queue,
                    if guest.multi_buffer() {
                        ""
                    } else {
                        " (no multi-buffer: single-frag packets only)"
                    }
                );
                zc.umem = Some(guest);
            }
            Err(e) => {
                self.stats.tx_zc_umem_errors.inc();
                log::warn!(
                    "xdp queue {}: zero-copy tx off until guest memory changes: {e}",
                    self.queue
                );
            }
        }
    }

    fn detach_memory(&mut self) {
        self.zc_retire();
        if let Some(zc) = self.zc.as_mut() {
            // No worker is left to report to.
            zc.carried = 0;
            zc.generation = None;
        }
    }

    fn recv(&mut self, bufs: &FragList<'_>) -> Result<Option<usize>, UplinkError> {
        if RX_FRAMES.saturating_sub(self.rx_held) >= REFILL_BATCH {
            self.refill();
        }
        loop {
            let mut rx = self.xsk.rx.receive(1);
            let desc = rx.read();
            rx.release();
            drop(rx);
            let Some(desc) = desc else {
                self.refill();
                self.wake_fill();
                return Ok(None);
            };
            self.rx_held = self.rx_held.saturating_sub(1);
            let Some((frame, offset)) = self.umem.take_from_kernel(desc.addr) else {
                // Outside the UMEM, or a frame the kernel did not own: skipped.
                self.stats.invalid_descs.inc();
                continue;
            };
            let written = self.copy_frame_out(frame, offset, desc.len, bufs);
            self.umem.recycle_direct(frame);
            let Some(written) = written else {
                // Runs past the end of its frame.
                self.stats.invalid_descs.inc();
                continue;
            };
            let want = VNET_HDR_LEN + usize::try_from(desc.len).unwrap_or(usize::MAX);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::features::SUPPORTED;

    #[test]
    fn unsupported_features_keep_the_basics() {
        let kept = Features::from_bits(SUPPORTED & !XDP_UNSUPPORTED_FEATURES);
        assert!(kept.has(crate::virtio::features::VIRTIO_NET_F_CSUM));
        assert!(kept.has(crate::virtio::features::VIRTIO_NET_F_MRG_RXBUF));
        assert!(!kept.guest_gso());
        assert!(!kept.has(VIRTIO_NET_F_HOST_TSO4));
        assert!(!kept.has(VIRTIO_NET_F_GUEST_CSUM));
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("veth0"));
        assert!(!valid_name(""));
        assert!(!valid_name("a/b"));
        assert!(!valid_name("a\0b"));
        assert!(!valid_name("sixteen-chars-xx"));
        assert!(matches!(
            Xdp::open("no such if", 1),
            Err(XdpError::InvalidName(_))
        ));
        assert!(matches!(
            Xdp::open("vnmnosuchif0", 1),
            Err(XdpError::NoSuchInterface { .. })
        ));
        assert!(matches!(Xdp::open("lo", 0), Err(XdpError::QueuePairs(0))));
    }

    #[test]
    fn errors_are_lowercase_and_carry_the_source() {
        let e = XdpError::Bind {
            iface: "veth0".into(),
            queue: 1,
            mode: BindMode::ZeroCopy,
            source: io::Error::from_raw_os_error(libc::EOPNOTSUPP),
        };
        let s = e.to_string();
        assert!(s.starts_with("cannot bind"), "{s}");
        assert!(s.contains("zero-copy") && s.contains("queue 1"), "{s}");
        assert!(s.contains(&io::Error::from_raw_os_error(libc::EOPNOTSUPP).to_string()));
    }
}
