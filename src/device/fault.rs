//! The fault recorder: a fault that happens again is counted, not sent
//! again, and its context is bounded.
//!
//! Faults are keyed by `(code, component)`. The first occurrence keeps its
//! context (at most [`MAX_FAULT_CONTEXT`] bytes, cut beyond); repeats add
//! to the count, move `last_seen` and `uptime_s` on, and raise the
//! severity to the worst seen. [`FaultRecorder::take`] hands out the most
//! severe (then the oldest) record and forgets it, so the next occurrence
//! starts a new count: `occurrences` is "since the last report".
//!
//! When all `N` slots are taken, a new fault replaces the least severe
//! (then oldest) record if it is more severe than that one; otherwise it
//! is dropped. Both are counted in [`FaultRecorder::dropped`].
//!
//! ```
//! use spime::device::fault::{FaultEvent, FaultRecorder, Recorded};
//! use spime::message::{FirmwareVersion, RebootReason, Severity};
//! let fw = FirmwareVersion { major: 1, minor: 0, patch: 0, build: 1 };
//! let mut faults: FaultRecorder<4> = FaultRecorder::new(fw);
//! let e = FaultEvent { code: 0x21, severity: Severity::Error, component: 3, uptime_s: 60, reboot_reason: RebootReason::None };
//! assert_eq!(faults.record(1_000, e, b"heater open circuit"), Recorded::New);
//! assert_eq!(faults.record(1_005, e, b"ignored: repeats keep the first context"), Recorded::Repeat(2));
//! let r = faults.take().unwrap();
//! assert_eq!((r.occurrences, r.first_seen, r.last_seen), (2, 1_000, 1_005));
//! assert_eq!(&r.context[..], b"heater open circuit");
//! assert!(faults.take().is_none());
//! ```

use crate::message::{FirmwareVersion, MAX_FAULT_CONTEXT, RebootReason, Severity};

/// One occurrence of a fault, as the firmware reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultEvent {
    /// Product-defined fault code.
    pub code: u32,
    /// How bad it is.
    pub severity: Severity,
    /// Product-defined component id.
    pub component: u16,
    /// Seconds since boot.
    pub uptime_s: u32,
    /// Why the device last restarted.
    pub reboot_reason: RebootReason,
}

/// A fault with its repeats counted: what becomes a Fault report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRecord {
    /// Product-defined fault code.
    pub code: u32,
    /// The worst severity seen.
    pub severity: Severity,
    /// Product-defined component id.
    pub component: u16,
    /// The firmware it happened on.
    pub firmware: FirmwareVersion,
    /// Seconds since boot at the last occurrence.
    pub uptime_s: u32,
    /// The reboot reason at the last occurrence.
    pub reboot_reason: RebootReason,
    /// Occurrences since the last report, at least 1.
    pub occurrences: u32,
    /// Unix seconds of the first occurrence.
    pub first_seen: u64,
    /// Unix seconds of the last occurrence.
    pub last_seen: u64,
    /// The first occurrence's context, cut to [`MAX_FAULT_CONTEXT`] bytes.
    pub context: heapless::Vec<u8, MAX_FAULT_CONTEXT>,
}

/// What [`FaultRecorder::record`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// A new record.
    New,
    /// A repeat of a held record; its occurrence count now.
    Repeat(u32),
    /// A new record in place of a less severe one (which was dropped).
    Replaced,
    /// Dropped: all slots hold faults at least as severe.
    Dropped,
}

/// Up to `N` distinct faults waiting to be reported.
#[derive(Debug, Clone)]
pub struct FaultRecorder<const N: usize> {
    firmware: FirmwareVersion,
    records: heapless::Vec<FaultRecord, N>,
    dropped: u32,
}

impl<const N: usize> FaultRecorder<N> {
    /// An empty recorder for faults of the running `firmware`.
    pub const fn new(firmware: FirmwareVersion) -> Self {
        FaultRecorder { firmware, records: heapless::Vec::new(), dropped: 0 }
    }

    /// Records one occurrence at `now` (Unix seconds).
    pub fn record(&mut self, now: u64, e: FaultEvent, context: &[u8]) -> Recorded {
        if let Some(r) = self.records.iter_mut().find(|r| r.code == e.code && r.component == e.component) {
            r.occurrences = r.occurrences.saturating_add(1);
            r.last_seen = r.last_seen.max(now);
            r.uptime_s = e.uptime_s;
            r.reboot_reason = e.reboot_reason;
            r.severity = r.severity.max(e.severity);
            return Recorded::Repeat(r.occurrences);
        }
        let ctx = context.get(..context.len().min(MAX_FAULT_CONTEXT)).unwrap_or(&[]);
        let rec = FaultRecord {
            code: e.code,
            severity: e.severity,
            component: e.component,
            firmware: self.firmware,
            uptime_s: e.uptime_s,
            reboot_reason: e.reboot_reason,
            occurrences: 1,
            first_seen: now,
            last_seen: now,
            context: heapless::Vec::from_slice(ctx).unwrap_or_default(),
        };
        let Err(rec) = self.records.push(rec) else { return Recorded::New };
        self.dropped = self.dropped.saturating_add(1);
        let weakest = self
            .records
            .iter_mut()
            .min_by(|a, b| a.severity.cmp(&b.severity).then(a.first_seen.cmp(&b.first_seen)))
            .filter(|w| w.severity < rec.severity);
        match weakest {
            Some(w) => {
                *w = rec;
                Recorded::Replaced
            }
            None => Recorded::Dropped,
        }
    }

    /// Takes the most severe (then the oldest) record out, for a report.
    pub fn take(&mut self) -> Option<FaultRecord> {
        let i = self
            .records
            .iter()
            .enumerate()
            .max_by(|(_, a), (_, b)| a.severity.cmp(&b.severity).then(b.first_seen.cmp(&a.first_seen)))
            .map(|(i, _)| i)?;
        crate::list::swap_remove(&mut self.records, i)
    }

    /// Puts a taken record back (its report could not be queued), adding
    /// any repeats recorded since.
    pub fn restore(&mut self, rec: FaultRecord) {
        if let Some(r) = self.records.iter_mut().find(|r| r.code == rec.code && r.component == rec.component) {
            r.occurrences = r.occurrences.saturating_add(rec.occurrences);
            r.first_seen = r.first_seen.min(rec.first_seen);
            r.severity = r.severity.max(rec.severity);
            r.context = rec.context;
        } else if self.records.push(rec).is_err() {
            self.dropped = self.dropped.saturating_add(1);
        }
    }

    /// How many distinct faults are held.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Faults dropped (or replaced) for lack of room.
    pub const fn dropped(&self) -> u32 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
    use super::*;

    const FW: FirmwareVersion = FirmwareVersion { major: 1, minor: 2, patch: 3, build: 4 };

    fn ev(code: u32, severity: Severity) -> FaultEvent {
        FaultEvent { code, severity, component: 1, uptime_s: 9, reboot_reason: RebootReason::Watchdog }
    }

    #[test]
    fn full_recorder_replaces_weaker_and_drops_otherwise() {
        let mut f: FaultRecorder<2> = FaultRecorder::new(FW);
        assert_eq!(f.record(1, ev(1, Severity::Warning), &[]), Recorded::New);
        assert_eq!(f.record(2, ev(2, Severity::Error), &[0; 100]), Recorded::New);
        assert_eq!(f.record(3, ev(3, Severity::Info), &[]), Recorded::Dropped);
        assert_eq!(f.record(4, ev(4, Severity::Critical), &[]), Recorded::Replaced);
        assert_eq!(f.dropped(), 2);
        assert_eq!(f.record(5, ev(2, Severity::Critical), &[]), Recorded::Repeat(2));
        let a = f.take().unwrap();
        assert_eq!((a.code, a.severity, a.occurrences, a.context.len()), (2, Severity::Critical, 2, 64));
        let b = f.take().unwrap();
        assert_eq!(b.code, 4);
        assert!(f.is_empty());
        f.record(6, ev(4, Severity::Info), &[]);
        f.restore(b);
        let c = f.take().unwrap();
        assert_eq!((c.occurrences, c.first_seen, c.last_seen, c.severity), (2, 4, 6, Severity::Critical));
    }
}
