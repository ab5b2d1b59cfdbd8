//! Per-queue-pair counters and their JSON exposition.
//!
//! Each queue pair's worker is the only writer of its [`QueueMetrics`], so a counter
//! update is a relaxed load and store (no locked instruction on the data path);
//! readers (the stats file writer, tests) see each counter as a whole value.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;

/// A counter with a single writer.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Add `n` (single writer: the owning worker).
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Add one.
    #[inline]
    pub fn inc(&self) {
        self.add(1)
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

macro_rules! queue_metrics {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        /// Counters of one queue pair.
        #[derive(Debug, Default)]
        pub struct QueueMetrics {
            $($(#[doc = $doc])* pub $name: Counter,)*
        }

        /// A point-in-time copy of [`QueueMetrics`].
        #[derive(Debug, Default, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
        pub struct QueueSnapshot {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl QueueMetrics {
            /// Copy every counter.
            pub fn snapshot(&self) -> QueueSnapshot {
                QueueSnapshot { $($name: self.$name.get(),)* }
            }
        }

        impl QueueSnapshot {
            /// Sum of two snapshots (for the aggregate).
            pub fn sum(&self, o: &QueueSnapshot) -> QueueSnapshot {
                QueueSnapshot { $($name: self.$name + o.$name,)* }
            }

            /// Every counter with its name.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }
    };
}

queue_metrics! {
    /// Packets taken from the guest's TX ring and handed to the uplink.
    tx_packets,
    /// Bytes of those packets (virtio header excluded).
    tx_bytes,
    /// TX batches processed (one guest notification at most per batch).
    tx_batches,
    /// Times the uplink had no room (EAGAIN); the chain was kept and retried.
    tx_eagain,
    /// TX chains dropped: malformed chain (loop, too long, bad index, bad indirect, zero-length buffer).
    tx_drop_bad_chain,
    /// TX chains dropped: buffer outside guest memory or wrapping.
    tx_drop_bad_memory,
    /// TX chains dropped: device-writable buffer in a TX chain.
    tx_drop_bad_direction,
    /// TX chains dropped: shorter than the virtio header, or an invalid header.
    tx_drop_bad_header,
    /// TX chains dropped: larger than 64 KiB plus headers.
    tx_drop_oversized,
    /// TX packets the uplink refused.
    tx_drop_uplink,
    /// Packets written into the guest's RX buffers.
    rx_packets,
    /// Bytes of those packets (virtio header excluded).
    rx_bytes,
    /// RX batches processed.
    rx_batches,
    /// RX buffers given back because the ring ran short of a full packet's worth.
    rx_no_buffers,
    /// RX chains dropped: malformed chain.
    rx_drop_bad_chain,
    /// RX chains dropped: buffer outside guest memory or wrapping.
    rx_drop_bad_memory,
    /// RX chains dropped: device-readable buffer in an RX chain.
    rx_drop_bad_direction,
    /// RX chains dropped: smaller than the virtio header.
    rx_drop_short_buffer,
    /// RX packets dropped: larger than the guest buffers offered for them.
    rx_drop_truncated,
    /// RX read errors from the uplink.
    rx_uplink_errors,
    /// Guest notifications sent (call eventfd writes).
    notifications,
    /// Notifications suppressed by EVENT_IDX.
    notifications_suppressed,
    /// Ring errors (avail index beyond the ring, unreadable ring): ring stopped.
    ring_errors,
}

impl QueueSnapshot {
    /// Sum of every drop counter.
    pub fn drops(&self) -> u64 {
        self.fields()
            .iter()
            .filter(|(n, _)| n.contains("_drop_"))
            .map(|(_, v)| v)
            .sum()
    }
}

/// Counters of every queue pair of the device.
#[derive(Debug, Default)]
pub struct DeviceMetrics {
    queues: Vec<Arc<QueueMetrics>>,
}

/// The JSON document of the stats file.
#[derive(Debug, Serialize)]
pub struct StatsDocument {
    /// Aggregate over all queue pairs.
    pub total: QueueSnapshot,
    /// One entry per queue pair.
    pub queues: Vec<QueueSnapshot>,
}

impl DeviceMetrics {
    /// Counters for `pairs` queue pairs.
    pub fn new(pairs: usize) -> Self {
        DeviceMetrics {
            queues: (0..pairs)
                .map(|_| Arc::new(QueueMetrics::default()))
                .collect(),
        }
    }

    /// Counters of pair `i`.
    pub fn queue(&self, i: usize) -> Arc<QueueMetrics> {
        Arc::clone(&self.queues[i])
    }

    /// The stats document.
    pub fn document(&self) -> StatsDocument {
        let queues: Vec<QueueSnapshot> = self.queues.iter().map(|q| q.snapshot()).collect();
        let total = queues
            .iter()
            .fold(QueueSnapshot::default(), |a, q| a.sum(q));
        StatsDocument { total, queues }
    }

    /// Write the document to `path` atomically (write a temp file, rename).
    pub fn write_file(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(&self.document()).map_err(std::io::Error::other)?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, json)?;
        std::fs::rename(tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_sums_and_counts_drops() {
        let m = DeviceMetrics::new(2);
        m.queue(0).tx_packets.add(3);
        m.queue(1).tx_packets.inc();
        m.queue(1).tx_drop_bad_header.inc();
        m.queue(0).rx_drop_bad_chain.add(2);
        let d = m.document();
        assert_eq!(d.total.tx_packets, 4);
        assert_eq!(d.total.drops(), 3);
        assert_eq!(d.queues[1].drops(), 1);
    }
}
