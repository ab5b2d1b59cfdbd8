// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The daemon's `--stats-file`: `{"total": {...}, "queues": [{...}, ...]}`, each entry
//! the queue counters plus the uplink's counter groups as objects (`"page_pool"`,
//! `"xdp"`).

use std::path::Path;

use serde_json::Value;

/// One parsed stats document.
#[derive(Clone, Debug)]
pub struct Stats {
    doc: Value,
}

impl Stats {
    /// Read and parse the file; `None` while it does not exist yet or is incomplete.
    pub fn read(path: &Path) -> Option<Stats> {
        let text = std::fs::read_to_string(path).ok()?;
        let doc: Value = serde_json::from_str(&text).ok()?;
        Some(Stats { doc })
    }

    fn counter(obj: &Value, name: &str, what: &str) -> u64 {
        match obj.get(name).and_then(Value::as_u64) {
            Some(v) => v,
            None => panic!("stats file: {what} has no counter {name:?}: {obj}"),
        }
    }

    /// Counter `name` of queue pair `pair`.
    pub fn queue(&self, pair: usize, name: &str) -> u64 {
        let queues = self
            .doc
            .get("queues")
            .and_then(Value::as_array)
            .unwrap_or_else(|| panic!("stats file has no \"queues\" array: {}", self.doc));
        let q = queues.get(pair).unwrap_or_else(|| {
            panic!(
                "stats file has {} queue entries, wanted pair {pair}",
                queues.len()
            )
        });
        Self::counter(q, name, &format!("queue {pair}"))
    }

    /// Counter `name` of the aggregate.
    pub fn total(&self, name: &str) -> u64 {
        let t = self
            .doc
            .get("total")
            .unwrap_or_else(|| panic!("stats file has no \"total\": {}", self.doc));
        Self::counter(t, name, "total")
    }

    /// The counter group `group` (an object such as `"page_pool"` beside the queue
    /// counters) of queue pair `pair`, or of the aggregate when `pair` is None; the
    /// counters by name.
    pub fn group(&self, pair: Option<usize>, group: &str) -> Vec<(String, u64)> {
        let entry = match pair {
            Some(p) => &self.doc["queues"][p],
            None => &self.doc["total"],
        };
        let Some(obj) = entry.get(group).and_then(Value::as_object) else {
            panic!("stats file: {pair:?} has no group {group:?}: {}", self.doc);
        };
        obj.iter()
            .map(|(k, v)| {
                let v = v.as_u64().unwrap_or_else(|| {
                    panic!("stats file: {group}.{k} is not a counter: {}", self.doc)
                });
                (k.clone(), v)
            })
            .collect()
    }

    /// Counter `name` of group `group` of queue pair `pair` (None: the aggregate).
    pub fn group_counter(&self, pair: Option<usize>, group: &str, name: &str) -> u64 {
        self.group(pair, group)
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .unwrap_or_else(|| {
                panic!(
                    "stats file: group {group:?} has no counter {name:?}: {}",
                    self.doc
                )
            })
    }

    /// Control-plane counter `name` (`"requests"`, `"connections"`, `"memory_faults"`).
    pub fn control(&self, name: &str) -> u64 {
        self.doc["control"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("stats file: control has no counter {name:?}: {}", self.doc))
    }

    /// Refusals of `request` (lowercase name, e.g. `"set_vring_num"`) for `reason`
    /// (0 when none was counted).
    pub fn refused(&self, request: &str, reason: &str) -> u64 {
        self.doc["control"]["refused"][request][reason]
            .as_u64()
            .unwrap_or(0)
    }

    /// Number of queue pairs listed.
    pub fn pairs(&self) -> usize {
        self.doc
            .get("queues")
            .and_then(Value::as_array)
            .map_or(0, Vec::len)
    }

    /// Every counter of pair `pair` whose name contains `_drop_`, with its value.
    pub fn drops(&self, pair: usize) -> Vec<(String, u64)> {
        let q = &self.doc["queues"][pair];
        q.as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| k.contains("_drop_"))
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.doc)
    }
}
