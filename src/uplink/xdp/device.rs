// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The AF_XDP device: [`Xdp`] opens an interface (name and queue checks, the XSKMAP
//! redirect program, one [`XdpQueue`] per queue pair) and is the [`Uplink`] the control
//! plane sees; [`XdpOptions`] are its choices and [`XDP_UNSUPPORTED_FEATURES`] what it
//! cannot offer a guest.
//!
//! One UMEM per queue rather than one shared UMEM: each queue pair is owned by its own
//! worker thread (DESIGN.md section 2), and a shared UMEM would make the free frames
//! and the per-queue fill/completion rings (the kernel needs one pair per bound queue
//! anyway) shared state between workers. Per queue, everything a worker touches is
//! its own: no locks on the data path, the queue is a self-contained `Send` value that
//! stays valid even if the [`Xdp`] is dropped while a worker holds it, and the layout
//! matches the per-RX-queue `PagePool`. The cost is memory: [`UMEM_FRAMES`] frames of
//! [`UMEM_FRAME_SIZE`] bytes (16 MiB) per queue pair.

use std::ffi::CString;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_GUEST_USO4,
    VIRTIO_NET_F_GUEST_USO6, VIRTIO_NET_F_HOST_UFO, VIRTIO_NET_F_HOST_USO,
};

use super::error::XdpError;
use super::prog::{AttachMode, XdpLink, XdpProg, XskMap};
use super::queue::{XdpQueue, RINGS, UMEM_FRAMES, UMEM_FRAME_SIZE};
use super::socket::{BindMode, Xsk};
use super::stats::XdpQueueStats;
use super::umem::Umem;
use super::zerocopy::ZeroCopyTx;
use crate::metrics::NamedGroup;
use crate::netmem::PagePoolStatsReader;
use crate::uplink::{QueueSlots, Uplink, UplinkError, UplinkQueue};
use crate::virtio::features::bit;
use crate::virtio::Features;

/// Virtio-net features to withhold from a guest served by the AF_XDP uplink; the
/// control plane clears them from what it offers.
///
/// AF_XDP moves wire frames of at most one UMEM frame and carries no offload
/// metadata (no segmentation, no checksum status) in copy mode, so:
///
/// - `HOST_UFO`, `HOST_USO`: UDP segmentation is not done here (only TCP is, see
///   below); [`XdpQueue`] drops such packets.
/// - `GUEST_ECN`, `GUEST_UFO`, `GUEST_USO4/6`: received UDP datagrams are not
///   coalesced, nor TCP segments with CWR or ECE, so the guest never needs them.
///
/// Offered, done in software by [`XdpQueue`]: `CSUM` (partial checksums completed),
/// `HOST_TSO4`, `HOST_TSO6`, `HOST_ECN` (TCP GSO packets segmented straight into UMEM
/// frames, also with `--xdp-zerocopy-tx`, where GSO packets always take this copy
/// path), and `GUEST_CSUM` with `GUEST_TSO4`, `GUEST_TSO6` (received TCP segments
/// checked and coalesced into GSO packets).
pub const XDP_UNSUPPORTED_FEATURES: u64 = bit(VIRTIO_NET_F_HOST_UFO)
    | bit(VIRTIO_NET_F_HOST_USO)
    | bit(VIRTIO_NET_F_GUEST_ECN)
    | bit(VIRTIO_NET_F_GUEST_UFO)
    | bit(VIRTIO_NET_F_GUEST_USO4)
    | bit(VIRTIO_NET_F_GUEST_USO6);

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
    /// The features the guest acked, read by every queue (receive coalescing).
    acked: Arc<AtomicU64>,
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
        let acked = Arc::new(AtomicU64::new(0));
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
            let zc = options
                .zerocopy_tx
                .then(|| ZeroCopyTx::new(cname.clone(), pairs + queue, xsk.mode));
            queues.push(Box::new(XdpQueue::new(
                queue,
                xsk,
                umem,
                queue_stats,
                zc,
                Arc::clone(&acked),
            )));
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
            acked,
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
    fn announce(&self, frame: &[u8]) -> Result<(), UplinkError> {
        crate::uplink::announce::send_on_link(&self.iface, frame).map_err(UplinkError::Io)
    }

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

    /// AF_XDP has no offloads to switch on (no segmentation, no checksum metadata):
    /// the features that would need them are [`XDP_UNSUPPORTED_FEATURES`], which the
    /// control plane must not offer with this uplink. What remains is done in
    /// software: `CSUM` and TCP segmentation whatever was acked, receive coalescing
    /// only with GUEST_CSUM and GUEST_TSO4/6, which the queues read from here.
    fn apply_features(&self, features: Features) -> Result<(), UplinkError> {
        self.acked.store(features.bits(), Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::features::SUPPORTED;
    use virtio_bindings::virtio_net::{
        VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    };

    #[test]
    fn unsupported_features_keep_the_basics() {
        let kept = Features::from_bits(SUPPORTED & !XDP_UNSUPPORTED_FEATURES);
        assert!(kept.has(crate::virtio::features::VIRTIO_NET_F_CSUM));
        assert!(kept.has(crate::virtio::features::VIRTIO_NET_F_MRG_RXBUF));
        // TCP segmentation and coalescing are done by the uplink; UDP's are not.
        assert!(kept.has(VIRTIO_NET_F_GUEST_CSUM));
        assert!(kept.has(VIRTIO_NET_F_GUEST_TSO4));
        assert!(kept.has(VIRTIO_NET_F_GUEST_TSO6));
        assert!(!kept.has(VIRTIO_NET_F_GUEST_ECN));
        assert!(!kept.has(VIRTIO_NET_F_GUEST_UFO));
        assert!(kept.has(VIRTIO_NET_F_HOST_TSO4));
        assert!(kept.has(VIRTIO_NET_F_HOST_TSO6));
        assert!(kept.has(VIRTIO_NET_F_HOST_ECN));
        assert_ne!(XDP_UNSUPPORTED_FEATURES & bit(VIRTIO_NET_F_HOST_UFO), 0);
        assert_ne!(XDP_UNSUPPORTED_FEATURES & bit(VIRTIO_NET_F_HOST_USO), 0);
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
}
