//! The metrics registry: usage aggregated into windows on the device, so
//! a usage report carries a few numbers per metric instead of events
//! (the way Memfault's heartbeats do).
//!
//! A product defines its metrics once (id, data category, kind); the
//! firmware then counts, samples and observes, and at the end of a window
//! [`Metrics::take_window`] hands out the aggregates, ordered by id, and
//! starts the next window. Metrics with no data in a window are left out.
//!
//! ```
//! use spime::consent::DataCategory;
//! use spime::device::metrics::{MetricDef, MetricKind, Metrics};
//! use spime::message::MetricValue;
//! static BREW_MS: [i64; 3] = [1_000, 5_000, 20_000];
//! let mut m: Metrics<4> = Metrics::new(1_700_000_000);
//! m.define(MetricDef { id: 1, category: DataCategory::UsageCounters, kind: MetricKind::Counter })?;
//! m.define(MetricDef { id: 2, category: DataCategory::Environment, kind: MetricKind::Gauge })?;
//! m.define(MetricDef { id: 3, category: DataCategory::UsageCounters, kind: MetricKind::Histogram(&BREW_MS) })?;
//! m.increment(1, 2)?;
//! m.observe(2, 21)?;
//! m.observe(2, 23)?;
//! m.observe(3, 4_200)?;
//! let w = m.take_window(1_700_003_600);
//! assert_eq!(w.metrics.len(), 3);
//! assert_eq!(w.metrics[0].value, MetricValue::Counter(2));
//! assert_eq!(w.metrics[1].value, MetricValue::Gauge { min: 21, max: 23, sum: 44, samples: 2 });
//! assert_eq!(w.metrics[2].value, MetricValue::Histogram([0, 1, 0, 0].as_slice().try_into().unwrap()));
//! assert!(m.take_window(1_700_007_200).metrics.is_empty()); // nothing new
//! # Ok::<(), spime::device::metrics::MetricsError>(())
//! ```

use crate::consent::{DataCategory, LocationPrecision};
use crate::message::{MAX_BUCKETS, MAX_METRICS, Metric, MetricValue};

/// How a metric aggregates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Events counted in the window.
    Counter,
    /// A level sampled: min, max, sum and count of samples.
    Gauge,
    /// Samples counted into fixed buckets. The slice holds the buckets'
    /// inclusive upper bounds, strictly ascending, at most
    /// `MAX_BUCKETS - 1` of them; a last bucket takes everything above.
    /// Bucket `i` counts `bounds[i-1] < v <= bounds[i]`.
    Histogram(&'static [i64]),
    /// The last position set in the window (category must be Location).
    Location,
}

/// The definition of one metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricDef {
    /// The product's metric id (unique).
    pub id: u16,
    /// The data category its values belong to.
    pub category: DataCategory,
    /// How it aggregates.
    pub kind: MetricKind,
}

/// A metric could not be defined or recorded.
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// The registry holds as many metrics as it (or a usage report) can.
    #[error("metrics registry full")]
    Full,
    /// A metric with this id is already defined.
    #[error("metric {0} is already defined")]
    Duplicate(u16),
    /// Histogram bounds not strictly ascending, or too many.
    #[error("histogram bounds of metric {0} are not strictly ascending or too many")]
    BadBounds(u16),
    /// A Location metric without the Location category, or the reverse.
    #[error("metric {0}: location values need the Location category and only they")]
    LocationCategory(u16),
    /// No metric has this id.
    #[error("no metric {0}")]
    Unknown(u16),
    /// The metric is of another kind than the call records.
    #[error("metric {0} is of another kind")]
    WrongKind(u16),
    /// A location with precision None.
    #[error("a location needs a precision")]
    NoPrecision,
}

impl MetricsError {
    /// The numeric code (SPEC.md §10.1, local to the device): 125 Full,
    /// 126 Duplicate, 127 BadBounds, 128 LocationCategory, 129 Unknown,
    /// 130 WrongKind, 131 NoPrecision.
    ///
    /// ```
    /// use spime::device::metrics::MetricsError;
    /// assert_eq!(MetricsError::Unknown(7).code(), 129);
    /// ```
    pub const fn code(&self) -> u16 {
        match self {
            MetricsError::Full => 125,
            MetricsError::Duplicate(_) => 126,
            MetricsError::BadBounds(_) => 127,
            MetricsError::LocationCategory(_) => 128,
            MetricsError::Unknown(_) => 129,
            MetricsError::WrongKind(_) => 130,
            MetricsError::NoPrecision => 131,
        }
    }
}

#[derive(Debug, Clone)]
enum Agg {
    Counter(u64),
    Gauge { min: i64, max: i64, sum: i64, samples: u32 },
    Histogram([u32; MAX_BUCKETS]),
    Location(Option<(i32, i32, LocationPrecision)>),
}

#[derive(Debug, Clone)]
struct Slot {
    def: MetricDef,
    agg: Agg,
}

impl Slot {
    fn fresh(def: MetricDef) -> Slot {
        let agg = match def.kind {
            MetricKind::Counter => Agg::Counter(0),
            MetricKind::Gauge => Agg::Gauge { min: 0, max: 0, sum: 0, samples: 0 },
            MetricKind::Histogram(_) => Agg::Histogram([0; MAX_BUCKETS]),
            MetricKind::Location => Agg::Location(None),
        };
        Slot { def, agg }
    }

    fn value(&self) -> Option<MetricValue> {
        match &self.agg {
            Agg::Counter(0) | Agg::Gauge { samples: 0, .. } | Agg::Location(None) => None,
            Agg::Counter(n) => Some(MetricValue::Counter(*n)),
            Agg::Gauge { min, max, sum, samples } => {
                Some(MetricValue::Gauge { min: *min, max: *max, sum: *sum, samples: *samples })
            }
            Agg::Histogram(counts) => {
                let MetricKind::Histogram(bounds) = self.def.kind else { return None };
                if counts.iter().all(|&c| c == 0) {
                    return None;
                }
                let n = (bounds.len() + 1).min(MAX_BUCKETS);
                heapless::Vec::from_slice(counts.get(..n)?).ok().map(MetricValue::Histogram)
            }
            Agg::Location(Some((lat_e7, lon_e7, precision))) => {
                Some(MetricValue::Location { lat_e7: *lat_e7, lon_e7: *lon_e7, precision: *precision })
            }
        }
    }
}

/// A usage window's aggregates, ready for a usage report, with room for
/// `M` metrics ([`Metrics::take_window`] of a registry of `M` metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window<const M: usize = MAX_METRICS> {
    /// Window start, Unix seconds.
    pub start: u64,
    /// Window end (exclusive), Unix seconds.
    pub end: u64,
    /// The metrics with data, strictly ascending by id.
    pub metrics: heapless::Vec<Metric, M>,
}

/// A registry of up to `N` metrics (and never more than a usage report
/// holds, [`MAX_METRICS`]), aggregating the current window.
#[derive(Debug, Clone)]
pub struct Metrics<const N: usize> {
    slots: heapless::Vec<Slot, N>,
    window_start: u64,
}

impl<const N: usize> Metrics<N> {
    /// An empty registry whose first window starts at `now`.
    pub const fn new(now: u64) -> Self {
        Metrics { slots: heapless::Vec::new(), window_start: now }
    }

    /// When the current window started.
    pub const fn window_start(&self) -> u64 {
        self.window_start
    }

    /// Defines a metric.
    ///
    /// # Errors
    /// [`MetricsError::Full`], [`MetricsError::Duplicate`],
    /// [`MetricsError::BadBounds`], [`MetricsError::LocationCategory`].
    pub fn define(&mut self, def: MetricDef) -> Result<(), MetricsError> {
        if self.slots.len() >= MAX_METRICS {
            return Err(MetricsError::Full);
        }
        if let MetricKind::Histogram(bounds) = def.kind
            && (bounds.is_empty() || bounds.len() >= MAX_BUCKETS || bounds.windows(2).any(|w| w.first() >= w.get(1)))
        {
            return Err(MetricsError::BadBounds(def.id));
        }
        if matches!(def.kind, MetricKind::Location) != (def.category == DataCategory::Location) {
            return Err(MetricsError::LocationCategory(def.id));
        }
        let at = match self.slots.binary_search_by_key(&def.id, |s| s.def.id) {
            Ok(_) => return Err(MetricsError::Duplicate(def.id)),
            Err(at) => at,
        };
        crate::list::insert(&mut self.slots, at, Slot::fresh(def)).map_err(|_| MetricsError::Full)
    }

    fn slot(&mut self, id: u16) -> Result<&mut Slot, MetricsError> {
        match self.slots.binary_search_by_key(&id, |s| s.def.id) {
            Ok(i) => self.slots.get_mut(i).ok_or(MetricsError::Unknown(id)),
            Err(_) => Err(MetricsError::Unknown(id)),
        }
    }

    /// Adds `n` to a counter (saturating).
    ///
    /// # Errors
    /// [`MetricsError::Unknown`], [`MetricsError::WrongKind`].
    pub fn increment(&mut self, id: u16, n: u64) -> Result<(), MetricsError> {
        match &mut self.slot(id)?.agg {
            Agg::Counter(c) => {
                *c = c.saturating_add(n);
                Ok(())
            }
            _ => Err(MetricsError::WrongKind(id)),
        }
    }

    /// Records a sample of a gauge or a histogram.
    ///
    /// # Errors
    /// [`MetricsError::Unknown`], [`MetricsError::WrongKind`].
    pub fn observe(&mut self, id: u16, v: i64) -> Result<(), MetricsError> {
        let slot = self.slot(id)?;
        match (&mut slot.agg, slot.def.kind) {
            (Agg::Gauge { min, max, sum, samples }, _) => {
                if *samples == 0 {
                    (*min, *max) = (v, v);
                }
                *min = (*min).min(v);
                *max = (*max).max(v);
                *sum = sum.saturating_add(v);
                *samples = samples.saturating_add(1);
                Ok(())
            }
            (Agg::Histogram(counts), MetricKind::Histogram(bounds)) => {
                let i = bounds.iter().position(|&b| v <= b).unwrap_or(bounds.len());
                if let Some(c) = counts.get_mut(i) {
                    *c = c.saturating_add(1);
                }
                Ok(())
            }
            _ => Err(MetricsError::WrongKind(id)),
        }
    }

    /// Sets a location metric's position for the window (the last one wins).
    /// Coarsen it to `precision` before: the report carries it as given.
    ///
    /// # Errors
    /// [`MetricsError::Unknown`], [`MetricsError::WrongKind`],
    /// [`MetricsError::NoPrecision`].
    pub fn set_location(
        &mut self,
        id: u16,
        lat_e7: i32,
        lon_e7: i32,
        precision: LocationPrecision,
    ) -> Result<(), MetricsError> {
        if precision == LocationPrecision::None {
            return Err(MetricsError::NoPrecision);
        }
        match &mut self.slot(id)?.agg {
            Agg::Location(l) => {
                *l = Some((lat_e7, lon_e7, precision));
                Ok(())
            }
            _ => Err(MetricsError::WrongKind(id)),
        }
    }

    /// Ends the window at `now`: returns its aggregates (metrics with data,
    /// ascending by id) and starts the next window at `now`.
    /// The window holds `N` metrics, the registry's capacity: a device
    /// with a few metrics carries (and reports through
    /// [`crate::device::session::Registered::report_window`]) a small value.
    pub fn take_window(&mut self, now: u64) -> Window<N> {
        let mut metrics = heapless::Vec::new();
        for slot in self.slots.iter_mut() {
            if let Some(value) = slot.value() {
                // At most N slots exist, so this never fails.
                let _ = metrics.push(Metric { id: slot.def.id, category: slot.def.category, value });
            }
            *slot = Slot::fresh(slot.def);
        }
        let w = Window { start: self.window_start, end: now.max(self.window_start), metrics };
        self.window_start = now.max(self.window_start);
        w
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
    use super::*;

    const C: MetricDef = MetricDef { id: 5, category: DataCategory::UsageCounters, kind: MetricKind::Counter };

    #[test]
    fn rejections() {
        let mut m: Metrics<20> = Metrics::new(0);
        m.define(C).unwrap();
        assert_eq!(m.define(C), Err(MetricsError::Duplicate(5)));
        static BAD: [i64; 2] = [3, 3];
        static MANY: [i64; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
        let h = |b: &'static [i64]| MetricDef {
            id: 6,
            category: DataCategory::UsageCounters,
            kind: MetricKind::Histogram(b),
        };
        assert_eq!(m.define(h(&BAD)), Err(MetricsError::BadBounds(6)));
        assert_eq!(m.define(h(&MANY)), Err(MetricsError::BadBounds(6)));
        assert_eq!(m.define(h(&[])), Err(MetricsError::BadBounds(6)));
        assert_eq!(m.define(h(&MANY[..11])), Ok(()));
        let loc = MetricDef { id: 7, category: DataCategory::UsageCounters, kind: MetricKind::Location };
        assert_eq!(m.define(loc), Err(MetricsError::LocationCategory(7)));
        let g = MetricDef { id: 8, category: DataCategory::Location, kind: MetricKind::Gauge };
        assert_eq!(m.define(g), Err(MetricsError::LocationCategory(8)));
        assert_eq!(m.increment(9, 1), Err(MetricsError::Unknown(9)));
        assert_eq!(m.observe(5, 1), Err(MetricsError::WrongKind(5)));
        assert_eq!(m.increment(6, 1), Err(MetricsError::WrongKind(6)));
        assert_eq!(m.set_location(5, 0, 0, LocationPrecision::City), Err(MetricsError::WrongKind(5)));
        assert_eq!(m.set_location(5, 0, 0, LocationPrecision::None), Err(MetricsError::NoPrecision));
        for id in 100..114 {
            m.define(MetricDef { id, ..C }).unwrap();
        }
        assert_eq!(m.define(MetricDef { id: 200, ..C }), Err(MetricsError::Full));
        let mut small: Metrics<1> = Metrics::new(0);
        small.define(C).unwrap();
        assert_eq!(small.define(MetricDef { id: 1, ..C }), Err(MetricsError::Full));
    }

    #[test]
    fn windows_are_ordered_and_reset() {
        let mut m: Metrics<4> = Metrics::new(10);
        static B: [i64; 2] = [0, 10];
        m.define(MetricDef { id: 9, category: DataCategory::Location, kind: MetricKind::Location }).unwrap();
        m.define(MetricDef { id: 3, category: DataCategory::UsageCounters, kind: MetricKind::Histogram(&B) }).unwrap();
        m.define(C).unwrap();
        for v in [-5, 0, 1, 10, 11, 1000] {
            m.observe(3, v).unwrap();
        }
        m.increment(5, u64::MAX).unwrap();
        m.increment(5, 1).unwrap();
        m.set_location(9, 1, 2, LocationPrecision::City).unwrap();
        let w = m.take_window(20);
        assert_eq!((w.start, w.end), (10, 20));
        let ids: Vec<u16> = w.metrics.iter().map(|m| m.id).collect();
        assert_eq!(ids, [3, 5, 9]);
        assert_eq!(w.metrics[0].value, MetricValue::Histogram(heapless::Vec::from_slice(&[2, 2, 2]).unwrap()));
        assert_eq!(w.metrics[1].value, MetricValue::Counter(u64::MAX));
        let w = m.take_window(15);
        assert_eq!((w.start, w.end), (20, 20));
        assert!(w.metrics.is_empty());
    }
}
