// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The Prometheus text exposition of the stats document and the process, encoded by
//! `prometheus-client` from a collector that reads the counters at each scrape.
//!
//! Names follow Prometheus' conventions: a `vhost_netmem_` prefix, counters ending in
//! `_total`, base units (a `_ns` counter is shown in `_seconds`), and what a name
//! repeats per queue pair, direction or reason is a label:
//!
//! - each queue counter of the stats file `NAME` is `vhost_netmem_NAME_total{queue="N"}`
//!   (`vhost_netmem_tx_packets_total{queue="0"}`), derived from the counter list
//!   itself so that a new counter appears without a change here;
//! - the drops `{tx,rx}_drop_REASON` are one family,
//!   `vhost_netmem_drops_total{queue, direction, reason}`;
//! - an uplink's counter group `G` (`page_pool`, `xdp`) gives
//!   `vhost_netmem_G_FIELD_total{queue}`;
//! - the control plane: `vhost_netmem_control_{connections,requests,memory_faults}_total`
//!   and `vhost_netmem_control_refused_total{request, reason}`;
//! - the process: `process_cpu_seconds_total`, `process_resident_memory_bytes`,
//!   `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`,
//!   `process_start_time_seconds`.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::process::{self, ProcessStats};
use crate::metrics::{DeviceMetrics, QueueSnapshot, StatsDocument};

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Prefix of every backend metric.
const PREFIX: &str = "vhost_netmem_";

/// A sample's labels.
type Labels = Vec<(&'static str, String)>;

/// A sample's value.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Value {
    Int(u64),
    Float(f64),
}

/// One metric family: its name (without `_total`: the encoder adds it to counters),
/// help, type and samples.
#[derive(Debug, Clone, PartialEq)]
struct Family {
    name: String,
    help: String,
    counter: bool,
    samples: Vec<(Labels, Value)>,
}

/// The families in the order they were first seen.
#[derive(Debug, Default)]
struct Families(Vec<Family>);

impl Families {
    fn add(&mut self, name: String, help: &str, counter: bool, labels: Labels, value: Value) {
        let i = match self.0.iter().position(|f| f.name == name) {
            Some(i) => i,
            None => {
                self.0.push(Family {
                    name,
                    help: help.to_string(),
                    counter,
                    samples: Vec::new(),
                });
                self.0.len() - 1
            }
        };
        self.0[i].samples.push((labels, value));
    }
}

/// Lowercase letters, digits and underscores only.
fn metric_part(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '_' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '_',
        })
        .collect()
}

/// How the stats file's queue counter `name` is shown: family, extra labels, and
/// whether the value is nanoseconds to show in seconds.
fn queue_family(name: &str) -> (String, Labels, bool) {
    for dir in ["tx", "rx"] {
        if let Some(reason) = name
            .strip_prefix(dir)
            .and_then(|r| r.strip_prefix("_drop_"))
        {
            return (
                format!("{PREFIX}drops"),
                vec![
                    ("direction", dir.to_string()),
                    ("reason", reason.to_string()),
                ],
                false,
            );
        }
    }
    match name.strip_suffix("_ns") {
        Some(stem) => (
            format!("{PREFIX}{}_seconds", metric_part(stem)),
            Vec::new(),
            true,
        ),
        None => (format!("{PREFIX}{}", metric_part(name)), Vec::new(), false),
    }
}

const DROPS_HELP: &str = "Packets (or guest chains) dropped, by direction and reason: the stats file's {tx,rx}_drop_REASON counters.";

fn queue_families(f: &mut Families, doc: &StatsDocument) {
    let help = QueueSnapshot::help();
    for (pair, entry) in doc.queues.iter().enumerate() {
        for (name, v) in entry.queue.fields() {
            let (family, extra, ns) = queue_family(name);
            let mut labels = vec![("queue", pair.to_string())];
            labels.extend(extra);
            let doc_help = help
                .iter()
                .find(|(n, _)| *n == name)
                .map_or("", |(_, h)| *h);
            let help = if family.ends_with("drops") {
                DROPS_HELP.to_string()
            } else if ns {
                format!("{doc_help} (seconds)")
            } else {
                doc_help.to_string()
            };
            let value = if ns {
                Value::Float(v as f64 / 1e9)
            } else {
                Value::Int(v)
            };
            f.add(family, &help, true, labels, value);
        }
        for (group, counters) in &entry.groups.0 {
            for &(name, v) in &counters.0 {
                f.add(
                    format!("{PREFIX}{}_{}", metric_part(group), metric_part(name)),
                    &format!("The uplink's {group} counter {name} of each queue pair (stats file: queues[].{group}.{name})."),
                    true,
                    vec![("queue", pair.to_string())],
                    Value::Int(v),
                );
            }
        }
    }
}

fn control_families(f: &mut Families, doc: &StatsDocument) {
    let c = &doc.control;
    let control = format!("{PREFIX}control_");
    f.add(
        format!("{control}connections"),
        "Frontend connections served.",
        true,
        Vec::new(),
        Value::Int(c.connections),
    );
    f.add(
        format!("{control}requests"),
        "vhost-user requests received.",
        true,
        Vec::new(),
        Value::Int(c.requests),
    );
    f.add(
        format!("{control}memory_faults"),
        "Faults in guest memory absorbed (each ended its connection).",
        true,
        Vec::new(),
        Value::Int(c.memory_faults),
    );
    for (request, reasons) in &c.refused {
        for (reason, n) in reasons {
            f.add(
                format!("{control}refused"),
                "vhost-user requests refused (or not followed), by request and reason.",
                true,
                vec![
                    ("request", request.to_string()),
                    ("reason", reason.to_string()),
                ],
                Value::Int(*n),
            );
        }
    }
}

fn process_families(f: &mut Families, p: &ProcessStats) {
    let mut gauge = |name: &str, help: &str, v: Option<u64>| {
        if let Some(v) = v {
            f.add(name.to_string(), help, false, Vec::new(), Value::Int(v));
        }
    };
    gauge(
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        p.resident_bytes,
    );
    gauge(
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes.",
        p.virtual_bytes,
    );
    gauge(
        "process_open_fds",
        "Number of open file descriptors.",
        p.open_fds,
    );
    gauge(
        "process_max_fds",
        "Maximum number of open file descriptors.",
        p.max_fds,
    );
    if let Some(v) = p.cpu_seconds {
        f.add(
            "process_cpu_seconds".into(),
            "Total user and system CPU time spent in seconds.",
            true,
            Vec::new(),
            Value::Float(v),
        );
    }
    if let Some(v) = p.start_time_seconds {
        f.add(
            "process_start_time_seconds".into(),
            "Start time of the process since unix epoch in seconds.",
            false,
            Vec::new(),
            Value::Float(v),
        );
    }
}

/// Every family of one scrape.
fn families(doc: &StatsDocument, p: &ProcessStats) -> Families {
    let mut f = Families::default();
    queue_families(&mut f, doc);
    control_families(&mut f, doc);
    process_families(&mut f, p);
    f
}

fn encode_families(f: &Families, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
    for family in &f.0 {
        let kind = if family.counter {
            MetricType::Counter
        } else {
            MetricType::Gauge
        };
        let mut metric = encoder.encode_descriptor(&family.name, &family.help, None, kind)?;
        for (labels, value) in &family.samples {
            let sample = metric.encode_family(labels)?;
            match (family.counter, *value) {
                (true, Value::Int(v)) => ConstCounter::new(v).encode(sample)?,
                (true, Value::Float(v)) => ConstCounter::new(v).encode(sample)?,
                (false, Value::Int(v)) => ConstGauge::new(v).encode(sample)?,
                (false, Value::Float(v)) => ConstGauge::new(v).encode(sample)?,
            }
        }
    }
    Ok(())
}

/// Reads the device's counters and the process's figures at each scrape.
#[derive(Debug)]
struct DeviceCollector(Arc<DeviceMetrics>);

impl Collector for DeviceCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_families(&families(&self.0.document(), &process::read()), encoder)
    }
}

/// The exposition of one device's counters.
#[derive(Debug)]
pub struct Exposition {
    registry: Registry,
}

impl Exposition {
    /// Expose `metrics` (and the process).
    pub fn new(metrics: Arc<DeviceMetrics>) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(DeviceCollector(metrics)));
        Exposition { registry }
    }

    /// The text exposition now.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Counter, CounterGroup};

    #[test]
    fn names_carry_labels_the_prometheus_way() {
        assert_eq!(
            queue_family("tx_packets"),
            ("vhost_netmem_tx_packets".into(), vec![], false)
        );
        assert_eq!(
            queue_family("rx_drop_short_buffer"),
            (
                "vhost_netmem_drops".into(),
                vec![
                    ("direction", "rx".into()),
                    ("reason", "short_buffer".into())
                ],
                false
            )
        );
        assert_eq!(
            queue_family("tx_throttled_ns"),
            ("vhost_netmem_tx_throttled_seconds".into(), vec![], true)
        );
    }

    struct Group(Counter);

    impl CounterGroup for Group {
        fn fields(&self) -> Vec<(&'static str, u64)> {
            vec![("alloc_fast", self.0.get())]
        }
    }

    /// Every counter of the stats document is a sample with the document's value.
    #[test]
    fn the_exposition_shows_every_counter_of_the_document() {
        let g = Arc::new(Group(Counter::default()));
        let g2 = Arc::clone(&g);
        let m = Arc::new(DeviceMetrics::new(2).with_groups(move |pair| {
            if pair == 1 {
                vec![("page_pool", Arc::clone(&g2) as Arc<dyn CounterGroup>)]
            } else {
                Vec::new()
            }
        }));
        m.queue(0).tx_packets.add(7);
        m.queue(1).rx_bytes.add(1234);
        m.queue(1).rx_drop_truncated.add(3);
        m.queue(0).tx_drop_bad_chain.inc();
        m.control().refused("set_vring_num", "invalid_param");
        g.0.add(9);
        let text = Exposition::new(Arc::clone(&m)).encode().unwrap();
        for line in [
            "vhost_netmem_tx_packets_total{queue=\"0\"} 7\n",
            "vhost_netmem_tx_packets_total{queue=\"1\"} 0\n",
            "vhost_netmem_rx_bytes_total{queue=\"1\"} 1234\n",
            "vhost_netmem_drops_total{queue=\"1\",direction=\"rx\",reason=\"truncated\"} 3\n",
            "vhost_netmem_drops_total{queue=\"0\",direction=\"tx\",reason=\"bad_chain\"} 1\n",
            "vhost_netmem_page_pool_alloc_fast_total{queue=\"1\"} 9\n",
            "vhost_netmem_control_refused_total{request=\"set_vring_num\",reason=\"invalid_param\"} 1\n",
            "# TYPE process_resident_memory_bytes gauge\n",
            "# TYPE vhost_netmem_tx_packets_total counter\n",
            "# HELP vhost_netmem_tx_packets_total Packets taken from the guest's TX ring",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
        // One sample per queue pair for each non-drop counter.
        let doc = m.document();
        for (name, _) in doc.queues[0].queue.fields() {
            if name.contains("_drop_") {
                continue;
            }
            let family = match name.strip_suffix("_ns") {
                Some(stem) => format!("vhost_netmem_{stem}_seconds_total{{"),
                None => format!("vhost_netmem_{name}_total{{"),
            };
            assert_eq!(text.matches(&family).count(), 2, "{family}");
        }
        // A family's samples are together, after its one TYPE line.
        assert_eq!(text.matches("# TYPE vhost_netmem_drops_total").count(), 1);
    }
}
