//! What the server counts since it started: datagrams, acceptances and
//! refusals (by reason, per device, per minute), batch sizes and commit
//! latency. Rendered as Prometheus text by [`Stats::prometheus`].

use core::fmt::Write as _;
use core::sync::atomic::{AtomicU64, Ordering};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use crate::wire::DeviceId;

/// Upper bounds of the batch-size histogram buckets.
const BATCH_BUCKETS: [u64; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];
/// Upper bounds of the commit-latency histogram buckets, in seconds.
const LATENCY_BUCKETS: [f64; 10] = [0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];
/// Refusals kept for the operator view.
pub const RECENT_REFUSALS: usize = 200;
/// Minutes of history kept for the fleet's accepted/refused chart.
pub const MINUTES: usize = 60;
/// Devices with per-device counters (further devices are counted in the
/// totals only, so hostile ids cannot grow memory without bound).
pub const MAX_TRACKED_DEVICES: usize = 100_000;

/// A refusal, for the operator view.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Refusal {
    /// Unix seconds.
    pub at: u64,
    /// The device the header named, if the header parsed.
    pub device: Option<String>,
    /// [`crate::vendor::IngestError::reason`].
    pub reason: &'static str,
    /// [`crate::vendor::IngestError::code`].
    pub code: u16,
    /// The error, in words.
    pub detail: String,
}

/// Per-device counters since the server started.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeviceStats {
    /// Messages accepted.
    pub accepted: u64,
    /// Messages refused.
    pub refused: u64,
    /// Last accepted or refused message, Unix seconds.
    pub last_seen: u64,
}

#[derive(Debug, Default)]
struct Inner {
    refused_by_reason: BTreeMap<&'static str, u64>,
    accepted_by_kind: BTreeMap<&'static str, u64>,
    recent: VecDeque<Refusal>,
    devices: HashMap<DeviceId, DeviceStats>,
    /// (minute, accepted, refused), oldest first.
    minutes: VecDeque<(u64, u64, u64)>,
    batch_hist: [u64; BATCH_BUCKETS.len() + 1],
    batch_sum: u64,
    batch_count: u64,
    latency_hist: [u64; LATENCY_BUCKETS.len() + 1],
    latency_sum: f64,
}

/// Server counters, shared by the CoAP and HTTP tasks.
#[derive(Debug, Default)]
pub struct Stats {
    /// UDP datagrams received.
    pub datagrams: AtomicU64,
    /// Datagrams that were not a CoAP message, or too long: dropped.
    pub malformed: AtomicU64,
    /// CoAP requests refused before ingest (wrong resource, method,
    /// content format, empty payload).
    pub bad_requests: AtomicU64,
    /// Requests turned away because the ingest queue was full (5.03).
    pub overloaded: AtomicU64,
    /// Retransmitted requests answered from the deduplication cache.
    pub duplicates: AtomicU64,
    /// Receipts sealed and sent.
    pub receipts: AtomicU64,
    inner: Mutex<Inner>,
}

fn bump<K: Ord>(m: &mut BTreeMap<K, u64>, k: K) {
    *m.entry(k).or_insert(0) += 1;
}

impl Inner {
    fn count_minute(&mut self, at: u64, accepted: bool) {
        let minute = at / 60;
        match self.minutes.back_mut() {
            Some(m) if m.0 == minute => {
                if accepted {
                    m.1 += 1;
                } else {
                    m.2 += 1;
                }
            }
            _ => {
                self.minutes.push_back((minute, u64::from(accepted), u64::from(!accepted)));
                while self.minutes.len() > MINUTES {
                    self.minutes.pop_front();
                }
            }
        }
    }

    fn device(&mut self, device: &DeviceId) -> Option<&mut DeviceStats> {
        if !self.devices.contains_key(device) && self.devices.len() >= MAX_TRACKED_DEVICES {
            return None;
        }
        Some(self.devices.entry(*device).or_default())
    }
}

impl Stats {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts an accepted message of `kind` from `device` at `at`.
    pub fn accepted(&self, device: &DeviceId, kind: &'static str, at: u64) {
        let mut i = self.lock();
        bump(&mut i.accepted_by_kind, kind);
        i.count_minute(at, true);
        if let Some(d) = i.device(device) {
            d.accepted += 1;
            d.last_seen = at;
        }
    }

    /// Counts a refusal.
    pub fn refused(&self, device: Option<&DeviceId>, reason: &'static str, code: u16, detail: String, at: u64) {
        let mut i = self.lock();
        bump(&mut i.refused_by_reason, reason);
        i.count_minute(at, false);
        if let Some(d) = device.and_then(|d| i.device(d)) {
            d.refused += 1;
            d.last_seen = at;
        }
        if i.recent.len() >= RECENT_REFUSALS {
            i.recent.pop_front();
        }
        let device = device.map(|d| hex::encode(d.0));
        i.recent.push_back(Refusal { at, device, reason, code, detail });
    }

    /// Records one committed batch: its size and how long ingest and commit took.
    pub fn batch(&self, size: usize, seconds: f64) {
        let mut i = self.lock();
        let size = u64::try_from(size).unwrap_or(u64::MAX);
        let b = BATCH_BUCKETS.iter().position(|&ub| size <= ub).unwrap_or(BATCH_BUCKETS.len());
        if let Some(c) = i.batch_hist.get_mut(b) {
            *c += 1;
        }
        i.batch_sum = i.batch_sum.saturating_add(size);
        i.batch_count += 1;
        let l = LATENCY_BUCKETS.iter().position(|&ub| seconds <= ub).unwrap_or(LATENCY_BUCKETS.len());
        if let Some(c) = i.latency_hist.get_mut(l) {
            *c += 1;
        }
        i.latency_sum += seconds;
    }

    /// Per-device counters.
    pub fn device(&self, device: &DeviceId) -> DeviceStats {
        self.lock().devices.get(device).cloned().unwrap_or_default()
    }

    /// Refusals by reason.
    pub fn refused_by_reason(&self) -> BTreeMap<&'static str, u64> {
        self.lock().refused_by_reason.clone()
    }

    /// Accepted messages by kind.
    pub fn accepted_by_kind(&self) -> BTreeMap<&'static str, u64> {
        self.lock().accepted_by_kind.clone()
    }

    /// The most recent refusals, newest last.
    pub fn recent_refusals(&self) -> Vec<Refusal> {
        self.lock().recent.iter().cloned().collect()
    }

    /// (minute since the epoch, accepted, refused) for the last [`MINUTES`] minutes with traffic.
    pub fn minutes(&self) -> Vec<(u64, u64, u64)> {
        self.lock().minutes.iter().copied().collect()
    }

    /// The Prometheus text exposition; `store_messages` and `store_bytes` are gauges of the store.
    pub fn prometheus(&self, devices_by_lifecycle: &[(&str, u64)], store_messages: u64, store_bytes: u64) -> String {
        let i = self.lock();
        let mut o = String::new();
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            "spime_datagrams_total",
            "UDP datagrams received on the CoAP socket.",
            self.datagrams.load(Ordering::Relaxed),
        );
        counter(
            "spime_malformed_datagrams_total",
            "Datagrams that were not CoAP or too long, dropped.",
            self.malformed.load(Ordering::Relaxed),
        );
        counter(
            "spime_bad_requests_total",
            "CoAP requests refused before ingest.",
            self.bad_requests.load(Ordering::Relaxed),
        );
        counter(
            "spime_overloaded_total",
            "Requests answered 5.03 because the ingest queue was full.",
            self.overloaded.load(Ordering::Relaxed),
        );
        counter(
            "spime_duplicate_requests_total",
            "Retransmitted CoAP requests answered from the cache.",
            self.duplicates.load(Ordering::Relaxed),
        );
        counter(
            "spime_receipts_sent_total",
            "Receipts sealed and sent to devices.",
            self.receipts.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            o,
            "# HELP spime_accepted_total Messages accepted and committed, by kind.\n# TYPE spime_accepted_total counter"
        );
        for (k, v) in &i.accepted_by_kind {
            let _ = writeln!(o, "spime_accepted_total{{kind=\"{k}\"}} {v}");
        }
        let _ =
            writeln!(o, "# HELP spime_refused_total Messages refused, by reason.\n# TYPE spime_refused_total counter");
        for (k, v) in &i.refused_by_reason {
            let _ = writeln!(o, "spime_refused_total{{reason=\"{k}\"}} {v}");
        }
        let _ = writeln!(
            o,
            "# HELP spime_batch_size Messages per committed ingest batch.\n# TYPE spime_batch_size histogram"
        );
        let mut cum = 0;
        for (ub, c) in BATCH_BUCKETS.iter().zip(i.batch_hist.iter()) {
            cum += c;
            let _ = writeln!(o, "spime_batch_size_bucket{{le=\"{ub}\"}} {cum}");
        }
        cum += i.batch_hist.last().copied().unwrap_or(0);
        let _ = writeln!(
            o,
            "spime_batch_size_bucket{{le=\"+Inf\"}} {cum}\nspime_batch_size_sum {}\nspime_batch_size_count {}",
            i.batch_sum, i.batch_count
        );
        let _ = writeln!(
            o,
            "# HELP spime_commit_seconds Time to ingest and commit one batch.\n# TYPE spime_commit_seconds histogram"
        );
        let mut cum = 0;
        for (ub, c) in LATENCY_BUCKETS.iter().zip(i.latency_hist.iter()) {
            cum += c;
            let _ = writeln!(o, "spime_commit_seconds_bucket{{le=\"{ub}\"}} {cum}");
        }
        cum += i.latency_hist.last().copied().unwrap_or(0);
        let _ = writeln!(
            o,
            "spime_commit_seconds_bucket{{le=\"+Inf\"}} {cum}\nspime_commit_seconds_sum {}\nspime_commit_seconds_count {}",
            i.latency_sum, i.batch_count
        );
        let _ = writeln!(o, "# HELP spime_devices Registered devices by lifecycle phase.\n# TYPE spime_devices gauge");
        for (phase, n) in devices_by_lifecycle {
            let _ = writeln!(o, "spime_devices{{lifecycle=\"{phase}\"}} {n}");
        }
        let _ = writeln!(
            o,
            "# HELP spime_store_messages Accepted messages held in the store.\n# TYPE spime_store_messages gauge\nspime_store_messages {store_messages}"
        );
        let _ = writeln!(
            o,
            "# HELP spime_store_bytes Size of the store file in bytes (0 when the store is no file: in memory or PostgreSQL).\n# TYPE spime_store_bytes gauge\nspime_store_bytes {store_bytes}"
        );
        o
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn counts_show_up_in_the_exposition() {
        let s = Stats::default();
        let d = DeviceId([1; 8]);
        s.accepted(&d, "usage", 120);
        s.refused(Some(&d), "replay", 30, "replay: duplicate".into(), 130);
        s.batch(3, 0.003);
        let text = s.prometheus(&[("active", 1)], 1, 4096);
        assert!(text.contains("spime_accepted_total{kind=\"usage\"} 1"));
        assert!(text.contains("spime_refused_total{reason=\"replay\"} 1"));
        assert!(text.contains("spime_batch_size_bucket{le=\"4\"} 1"));
        assert!(text.contains("spime_batch_size_bucket{le=\"2\"} 0"));
        assert!(text.contains("spime_commit_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("spime_devices{lifecycle=\"active\"} 1"));
        assert_eq!(s.device(&d), DeviceStats { accepted: 1, refused: 1, last_seen: 130 });
        assert_eq!(s.minutes(), vec![(2, 1, 1)]);
        assert_eq!(s.recent_refusals().len(), 1);
    }
}
