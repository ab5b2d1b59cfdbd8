// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Per-queue-pair counters and their JSON exposition.
//!
//! Each queue pair's worker is the only writer of its [`QueueMetrics`], so a counter
//! update is a relaxed load and store (no locked instruction on the data path);
//! readers (the stats file writer, tests) see each counter as a whole value.
//!
//! Next to the generic queue counters, an uplink may keep its own per-queue counters
//! (the AF_XDP socket's, its page pool's): it hands them out as named
//! [`CounterGroup`]s (`Uplink::queue_counters`), shared with the worker that updates
//! them, and the stats file shows each group as an object inside its queue pair's
//! entry, and summed inside `total`:
//!
//! ```json
//! {"total": {"tx_packets": 3, ..., "page_pool": {"alloc_fast": 9, ...}, "xdp": {...}},
//!  "queues": [{"tx_packets": 3, ..., "page_pool": {...}, "xdp": {...}}],
//!  "control": {"connections": 1, "requests": 40, "memory_faults": 0,
//!              "refused": {"set_vring_num": {"invalid_param": 2}}}}
//! ```
//!
//! `control` holds the control plane's counters ([`ControlMetrics`]): every request
//! the backend refused (or could not follow), by request and by reason.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

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

            /// Every counter's name with its doc comment (the metric's help text).
            pub fn help() -> Vec<(&'static str, &'static str)> {
                vec![$((stringify!($name), concat!($($doc),*).trim_ascii()),)*]
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
    /// TX holdoff runs started: a stream's batch held the guest's kicks off (`--tx-holdoff`).
    tx_holdoffs,
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
    /// TX packets dropped while the uplink was gone (its device deleted).
    tx_drop_uplink_down,
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
    /// Times the uplink queue was found gone (e.g. its TAP deleted): not polled since.
    uplink_lost,
    /// Times a gone uplink queue was reopened (its TAP came back under the same name).
    uplink_reopened,
    /// Times TX became throttled by its rate limit (chains left on the guest's ring).
    tx_throttled,
    /// Nanoseconds TX spent throttled.
    tx_throttled_ns,
    /// Times RX became throttled by its rate limit (packets left in the uplink's queue).
    rx_throttled,
    /// Nanoseconds RX spent throttled.
    rx_throttled_ns,
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

/// Counters an uplink keeps for one queue pair, read by the stats writer while the
/// worker updates them (single-writer atomics, like [`Counter`]).
pub trait CounterGroup: Send + Sync {
    /// Every counter with its name, always the same names in the same order.
    fn fields(&self) -> Vec<(&'static str, u64)>;
}

/// A named [`CounterGroup`]: the key of its object in the stats file.
pub type NamedGroup = (&'static str, Arc<dyn CounterGroup>);

/// Named counters serialized as a JSON object, in order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CounterMap(pub Vec<(&'static str, u64)>);

impl CounterMap {
    /// The value of counter `name`.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    /// Add `o`'s counters to those of the same name (appending names not seen yet).
    fn add(&mut self, o: &CounterMap) {
        for &(name, v) in &o.0 {
            match self.0.iter_mut().find(|(n, _)| *n == name) {
                Some((_, sum)) => *sum = sum.wrapping_add(v),
                None => self.0.push((name, v)),
            }
        }
    }
}

impl Serialize for CounterMap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, v) in &self.0 {
            map.serialize_entry(name, v)?;
        }
        map.end()
    }
}

/// The uplink's groups of one entry, serialized as one object per group.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GroupMap(pub Vec<(&'static str, CounterMap)>);

impl GroupMap {
    /// Group `name`.
    pub fn get(&self, name: &str) -> Option<&CounterMap> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, g)| g)
    }

    fn add(&mut self, o: &GroupMap) {
        for (name, group) in &o.0 {
            match self.0.iter_mut().find(|(n, _)| n == name) {
                Some((_, sum)) => sum.add(group),
                None => self.0.push((name, group.clone())),
            }
        }
    }
}

impl Serialize for GroupMap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, group) in &self.0 {
            map.serialize_entry(name, group)?;
        }
        map.end()
    }
}

/// One entry of the stats file: the queue counters, then the uplink's groups.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct StatsEntry {
    /// The generic queue pair counters (top-level keys of the entry).
    #[serde(flatten)]
    pub queue: QueueSnapshot,
    /// The uplink's counter groups (one object per group).
    #[serde(flatten)]
    pub groups: GroupMap,
}

/// Counters of the control plane (written by the one thread that serves the
/// frontend connection).
#[derive(Debug, Default)]
pub struct ControlMetrics {
    /// Frontend connections served (probes that sent nothing not included).
    pub connections: Counter,
    /// Requests received.
    pub requests: Counter,
    /// Faults in guest memory absorbed (a frontend shrank a region's file); each ended
    /// its connection.
    pub memory_faults: Counter,
    /// Refusals by request name and reason; both are names from fixed lists, so a
    /// frontend cannot grow this map without bound.
    refused: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl ControlMetrics {
    /// Count one refusal of `request` for `reason`.
    pub fn refused(&self, request: &'static str, reason: &'static str) {
        let mut m = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry((request, reason)).or_insert(0);
        *n = n.wrapping_add(1);
    }

    /// Refusals of `request` for `reason` so far.
    pub fn refusals(&self, request: &str, reason: &str) -> u64 {
        let m = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        m.iter()
            .filter(|((r, why), _)| *r == request && *why == reason)
            .map(|(_, n)| *n)
            .sum()
    }

    /// A point-in-time copy.
    pub fn snapshot(&self) -> ControlSnapshot {
        let m = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        let mut refused: BTreeMap<&'static str, BTreeMap<&'static str, u64>> = BTreeMap::new();
        for (&(request, reason), &n) in m.iter() {
            refused.entry(request).or_default().insert(reason, n);
        }
        ControlSnapshot {
            connections: self.connections.get(),
            requests: self.requests.get(),
            memory_faults: self.memory_faults.get(),
            refused,
        }
    }
}

/// The `control` object of the stats file.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct ControlSnapshot {
    /// Frontend connections served.
    pub connections: u64,
    /// Requests received.
    pub requests: u64,
    /// Guest memory faults absorbed.
    pub memory_faults: u64,
    /// Refusals: request name -> reason -> count.
    pub refused: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
}

/// Counters of every queue pair of the device, and of its control plane.
#[derive(Default)]
pub struct DeviceMetrics {
    queues: Vec<Arc<QueueMetrics>>,
    groups: Vec<Vec<NamedGroup>>,
    control: Arc<ControlMetrics>,
}

impl std::fmt::Debug for DeviceMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let groups: Vec<Vec<&str>> = self
            .groups
            .iter()
            .map(|g| g.iter().map(|(n, _)| *n).collect())
            .collect();
        f.debug_struct("DeviceMetrics")
            .field("queues", &self.queues)
            .field("groups", &groups)
            .field("control", &self.control)
            .finish()
    }
}

/// The JSON document of the stats file.
#[derive(Debug, Serialize)]
pub struct StatsDocument {
    /// Aggregate over all queue pairs.
    pub total: StatsEntry,
    /// One entry per queue pair.
    pub queues: Vec<StatsEntry>,
    /// The control plane's counters.
    pub control: ControlSnapshot,
}

impl DeviceMetrics {
    /// Counters for `pairs` queue pairs.
    pub fn new(pairs: usize) -> Self {
        DeviceMetrics {
            queues: (0..pairs)
                .map(|_| Arc::new(QueueMetrics::default()))
                .collect(),
            groups: (0..pairs).map(|_| Vec::new()).collect(),
            control: Arc::default(),
        }
    }

    /// The control plane's counters.
    pub fn control(&self) -> &Arc<ControlMetrics> {
        &self.control
    }

    /// Show the uplink's counter groups of each pair (`groups(pair)`, for instance
    /// `Uplink::queue_counters`) in that pair's entry.
    pub fn with_groups(mut self, groups: impl Fn(usize) -> Vec<NamedGroup>) -> Self {
        for (pair, g) in self.groups.iter_mut().enumerate() {
            *g = groups(pair);
        }
        self
    }

    /// Counters of pair `i`.
    pub fn queue(&self, i: usize) -> Arc<QueueMetrics> {
        Arc::clone(&self.queues[i])
    }

    /// The stats document.
    pub fn document(&self) -> StatsDocument {
        let queues: Vec<StatsEntry> = self
            .queues
            .iter()
            .zip(&self.groups)
            .map(|(q, groups)| StatsEntry {
                queue: q.snapshot(),
                groups: GroupMap(
                    groups
                        .iter()
                        .map(|(name, g)| (*name, CounterMap(g.fields())))
                        .collect(),
                ),
            })
            .collect();
        let mut total = StatsEntry::default();
        for q in &queues {
            total.queue = total.queue.sum(&q.queue);
            total.groups.add(&q.groups);
        }
        StatsDocument {
            total,
            queues,
            control: self.control.snapshot(),
        }
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
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn snapshot_sums_and_counts_drops() {
        let m = DeviceMetrics::new(2);
        m.queue(0).tx_packets.add(3);
        m.queue(1).tx_packets.inc();
        m.queue(1).tx_drop_bad_header.inc();
        m.queue(0).rx_drop_bad_chain.add(2);
        let d = m.document();
        assert_eq!(d.total.queue.tx_packets, 4);
        assert_eq!(d.total.queue.drops(), 3);
        assert_eq!(d.queues[1].queue.drops(), 1);
    }

    #[test]
    fn refusals_are_counted_by_request_and_reason() {
        let m = DeviceMetrics::new(1);
        m.control().refused("set_vring_num", "invalid_param");
        m.control().refused("set_vring_num", "invalid_param");
        m.control().refused("set_mem_table", "invalid_param");
        m.control().requests.add(3);
        let v = serde_json::to_value(m.document()).unwrap();
        assert_eq!(v["control"]["refused"]["set_vring_num"]["invalid_param"], 2);
        assert_eq!(v["control"]["refused"]["set_mem_table"]["invalid_param"], 1);
        assert_eq!(v["control"]["requests"], 3);
        assert_eq!(m.control().refusals("set_vring_num", "invalid_param"), 2);
    }

    #[derive(Default)]
    struct Pair {
        a: Counter,
        b: Counter,
    }

    impl CounterGroup for Pair {
        fn fields(&self) -> Vec<(&'static str, u64)> {
            vec![("a", self.a.get()), ("b", self.b.get())]
        }
    }

    /// Groups appear inside their pair's entry and summed in the total, after the
    /// queue counters, whose names stay top-level keys.
    #[test]
    fn groups_sit_beside_the_queue_counters() {
        let g0 = Arc::new(Pair::default());
        let g1 = Arc::new(Pair::default());
        let (c0, c1) = (Arc::clone(&g0), Arc::clone(&g1));
        let m = DeviceMetrics::new(2).with_groups(move |pair| {
            let g: Arc<dyn CounterGroup> = if pair == 0 {
                Arc::clone(&c0) as _
            } else {
                Arc::clone(&c1) as _
            };
            vec![("grp", g)]
        });
        g0.a.add(2);
        g1.a.inc();
        g1.b.add(5);
        m.queue(1).rx_packets.inc();
        let v = serde_json::to_value(m.document()).unwrap();
        assert_eq!(v["queues"][0]["grp"], serde_json::json!({"a": 2, "b": 0}));
        assert_eq!(v["queues"][1]["grp"], serde_json::json!({"a": 1, "b": 5}));
        assert_eq!(v["total"]["grp"], serde_json::json!({"a": 3, "b": 5}));
        assert_eq!(v["queues"][1]["rx_packets"], 1);
        assert_eq!(v["total"]["rx_packets"], 1);
        // Key order: the queue counters first, the groups last.
        let text = serde_json::to_string(&m.document()).unwrap();
        let q1 = &text[text.find("\"queues\"").unwrap()..];
        assert!(q1.find("\"ring_errors\"").unwrap() < q1.find("\"grp\"").unwrap());
        // Without groups, the entry is exactly the queue counters.
        let plain = serde_json::to_value(DeviceMetrics::new(1).document()).unwrap();
        let names: BTreeSet<&str> = QueueSnapshot::default()
            .fields()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let keys: BTreeSet<&str> = plain["queues"][0]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, names);
    }
}
