//! Evaluation: the one function both sides run to decide whether data may
//! be collected, and whether the owner may be contacted, with the reason.
//!
//! The rules, in the order they are checked, are SPEC.md §6.4 and §6.5.
//! A [`Permit`] is the only way to build a [`Permitted`] message body, and
//! only [`ConsentState::may_collect`] and [`ConsentState::grant_permit`]
//! make one: a field the owner did not allow cannot be encoded by mistake.

use super::{
    CategorySet, Channel, ConsentState, DataCategory, ESSENTIAL_CATEGORIES, Grant, LocationPrecision, Purpose,
};
use crate::message::{
    Fault, FirmwareVersion, MAX_FAULT_CONTEXT, MAX_METRICS, Metric, MetricValue, Notice, NoticeKind, RebootReason,
    Severity, Usage, UsageOf,
};
use crate::time::{Period, Utc};

/// Why data may not be collected (or was refused by the vendor).
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Denial {
    /// The owner did not grant `missing` for `purpose` in consent `version`.
    #[error("not granted: {missing} for {purpose} (consent version {version})")]
    NotGranted {
        /// the purpose asked for
        purpose: Purpose,
        /// the requested categories that are not granted
        missing: CategorySet,
        /// the consent version that was evaluated
        version: u32,
    },
    /// The owner had granted `missing` for `purpose` and withdrew it in
    /// consent `version`. Only a history can tell (see
    /// `ConsentLedger::explain`); plain evaluation says [`Denial::NotGranted`].
    #[error("withdrawn at consent version {version}: {missing} for {purpose}")]
    Withdrawn {
        /// the purpose asked for
        purpose: Purpose,
        /// the requested categories that were withdrawn
        missing: CategorySet,
        /// the version that withdrew them
        version: u32,
    },
    /// The grant for `purpose` lapsed at `at` (Unix seconds).
    #[error("grant for {purpose} expired at {} (consent version {version})", Utc(*.at))]
    Expired {
        /// the purpose asked for
        purpose: Purpose,
        /// when the grant lapsed
        at: u64,
        /// the consent version that was evaluated
        version: u32,
    },
    /// The owner had to confirm consent `version` again by `since` (Unix
    /// seconds) and has not: every purpose but Essential is denied.
    #[error("consent version {version} had to be re-confirmed by {}", Utc(*.since))]
    ReconfirmDue {
        /// the re-confirm date that passed
        since: u64,
        /// the consent version that was evaluated
        version: u32,
    },
    /// A location was asked for more precisely than granted.
    #[error(
        "location precision {requested} is finer than the {allowed} granted for {purpose} (consent version {version})"
    )]
    PrecisionTooFine {
        /// the purpose asked for
        purpose: Purpose,
        /// the precision asked for
        requested: LocationPrecision,
        /// the finest precision granted
        allowed: LocationPrecision,
        /// the consent version that was evaluated
        version: u32,
    },
    /// The data names a consent version newer than the one held: it cannot
    /// be judged until that version arrives.
    #[error("data built under consent version {named}, but only version {held} is held")]
    UnknownVersion {
        /// the version the data names
        named: u32,
        /// the version held
        held: u32,
    },
}

impl Denial {
    /// The stable numeric code (SPEC.md §10.1): 60 NotGranted, 61 Withdrawn,
    /// 62 Expired, 63 ReconfirmDue, 64 PrecisionTooFine, 65 UnknownVersion.
    pub const fn code(&self) -> u16 {
        match self {
            Denial::NotGranted { .. } => 60,
            Denial::Withdrawn { .. } => 61,
            Denial::Expired { .. } => 62,
            Denial::ReconfirmDue { .. } => 63,
            Denial::PrecisionTooFine { .. } => 64,
            Denial::UnknownVersion { .. } => 65,
        }
    }
}

/// Why the owner may not be contacted now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContactDenial {
    /// The notice's own expiry (Unix seconds) has passed.
    #[error("notice expired at {}", Utc(*.at))]
    NoticeExpired {
        /// the notice's `expires_at`
        at: u64,
    },
    /// Consent `version` had to be re-confirmed by `since`.
    #[error("consent version {version} had to be re-confirmed by {}", Utc(*.since))]
    ReconfirmDue {
        /// the re-confirm date that passed
        since: u64,
        /// the consent version that was evaluated
        version: u32,
    },
    /// The owner did not allow `channel` for `purpose`.
    #[error("{channel} not allowed for {purpose} (consent version {version})")]
    ChannelNotGranted {
        /// the purpose of the contact
        purpose: Purpose,
        /// the channel asked for
        channel: Channel,
        /// the consent version that was evaluated
        version: u32,
    },
    /// The owner muted `topic`.
    #[error("topic {topic} is muted (consent version {version})")]
    Muted {
        /// the muted topic
        topic: u16,
        /// the consent version that was evaluated
        version: u32,
    },
    /// `sent` notices for `purpose` were already sent in the last
    /// `period_seconds`, and at most `max` are allowed.
    #[error("frequency cap reached for {purpose}: {sent} sent, at most {max} per {}", Period(u64::from(*.period_seconds)))]
    FrequencyCap {
        /// the purpose of the contact
        purpose: Purpose,
        /// the cap
        max: u16,
        /// the cap's period
        period_seconds: u32,
        /// notices already sent in the period
        sent: u32,
    },
    /// It is the owner's quiet hours until `until` (Unix seconds).
    #[error("quiet hours until {}", Utc(*.until))]
    QuietHours {
        /// the first second after the quiet hours
        until: u64,
    },
    /// The notice's kind does not fit its purpose
    /// ([`NoticeKind::allowed_for`]): an offer dressed as Essential, say.
    #[error("a {kind:?} notice may not be sent for {purpose}")]
    KindNotForPurpose {
        /// the notice's kind
        kind: NoticeKind,
        /// the purpose it claimed
        purpose: Purpose,
    },
}

impl ContactDenial {
    /// The stable numeric code (SPEC.md §10.1): 70 NoticeExpired,
    /// 71 ReconfirmDue, 72 ChannelNotGranted, 73 Muted, 74 FrequencyCap,
    /// 75 QuietHours, 76 KindNotForPurpose.
    pub const fn code(&self) -> u16 {
        match self {
            ContactDenial::NoticeExpired { .. } => 70,
            ContactDenial::ReconfirmDue { .. } => 71,
            ContactDenial::ChannelNotGranted { .. } => 72,
            ContactDenial::Muted { .. } => 73,
            ContactDenial::FrequencyCap { .. } => 74,
            ContactDenial::QuietHours { .. } => 75,
            ContactDenial::KindNotForPurpose { .. } => 76,
        }
    }
}

/// A message body could not be built from a [`Permit`].
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// More metrics are permitted than one report carries (16): split the
    /// report. Nothing is dropped silently.
    #[error("more than {max} permitted metrics in one report")]
    TooManyMetrics {
        /// the most metrics in one report
        max: usize,
    },
    /// Two metrics have the same id.
    #[error("metric id {0} appears twice")]
    DuplicateMetric(u16),
    /// A metric's value and category disagree (a location value outside the
    /// Location category, or the reverse, or a location of precision None).
    #[error("metric {0}: value and category disagree")]
    MismatchedMetric(u16),
    /// The window ends before it starts.
    #[error("usage window ends before it starts")]
    WindowReversed,
    /// The permit does not cover a category the body cannot do without.
    #[error("the permit does not cover {0}")]
    NotPermitted(DataCategory),
    /// A fault's occurrence count is zero.
    #[error("fault occurrences must be at least 1")]
    ZeroOccurrences,
    /// A fault was last seen before it was first seen.
    #[error("fault last seen before first seen")]
    SeenReversed,
}

impl BuildError {
    /// The numeric code (SPEC.md §10.1, local): 135 TooManyMetrics, 136
    /// DuplicateMetric, 137 MismatchedMetric, 138 WindowReversed, 139
    /// NotPermitted, 140 ZeroOccurrences, 141 SeenReversed.
    ///
    /// ```
    /// use spime::consent::BuildError;
    /// assert_eq!(BuildError::WindowReversed.code(), 138);
    /// ```
    pub const fn code(&self) -> u16 {
        match self {
            BuildError::TooManyMetrics { .. } => 135,
            BuildError::DuplicateMetric(_) => 136,
            BuildError::MismatchedMetric(_) => 137,
            BuildError::WindowReversed => 138,
            BuildError::NotPermitted(_) => 139,
            BuildError::ZeroOccurrences => 140,
            BuildError::SeenReversed => 141,
        }
    }
}

/// What a piece of data is: its purpose, categories, most precise location
/// and the consent version it was built under. The outbox keeps it beside a
/// queued message so a later consent state can re-judge it
/// ([`ConsentState::check_scope`]) without opening the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scope {
    /// The purpose.
    pub purpose: Purpose,
    /// The categories carried.
    pub categories: CategorySet,
    /// The most precise location carried ([`LocationPrecision::None`] if none).
    pub location: LocationPrecision,
    /// The consent version the data was built under.
    pub consent_version: u32,
}

impl Scope {
    /// The scope of a usage report.
    pub fn of_usage<const M: usize>(u: &UsageOf<M>) -> Scope {
        Scope {
            purpose: u.purpose,
            categories: u.categories(),
            location: u.location_precision(),
            consent_version: u.consent_version,
        }
    }

    /// The scope of a fault report.
    pub fn of_fault(f: &Fault) -> Scope {
        Scope {
            purpose: f.purpose,
            categories: f.categories(),
            location: LocationPrecision::None,
            consent_version: f.consent_version,
        }
    }
}

/// Permission to collect `categories` (and a location up to `location`)
/// for `purpose`, under consent version `consent_version`.
///
/// Only evaluation makes one ([`ConsentState::may_collect`],
/// [`ConsentState::grant_permit`]); it is neither `Clone` nor
/// constructible elsewhere, and it is the only way to build a
/// [`Permitted`] body.
#[derive(Debug, PartialEq, Eq)]
pub struct Permit {
    purpose: Purpose,
    categories: CategorySet,
    location: LocationPrecision,
    consent_version: u32,
    valid_until: u64,
}

/// A message body built through a [`Permit`]: it carries nothing the
/// permit did not cover. The device session seals only these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permitted<B> {
    body: B,
    scope: Scope,
}

impl<B> Permitted<B> {
    /// The body.
    pub const fn as_body(&self) -> &B {
        &self.body
    }

    /// The body, giving up the guarantee's type.
    pub fn into_inner(self) -> B {
        self.body
    }

    /// What the body carries, to re-judge it if consent changes while it is queued.
    pub const fn scope(&self) -> Scope {
        self.scope
    }
}

/// A fault report without the fields a [`Permit`] fills in (purpose and
/// consent version). See [`Fault`] for the meaning of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultDraft {
    /// Product-defined fault code.
    pub code: u32,
    /// How bad it is.
    pub severity: Severity,
    /// Product-defined component id.
    pub component: u16,
    /// The firmware it happened on.
    pub firmware: FirmwareVersion,
    /// Seconds since boot at the last occurrence.
    pub uptime_s: u32,
    /// Why the device last restarted.
    pub reboot_reason: RebootReason,
    /// Occurrences since the last report, at least 1.
    pub occurrences: u32,
    /// Unix seconds of the first occurrence.
    pub first_seen: u64,
    /// Unix seconds of the last occurrence.
    pub last_seen: u64,
    /// Free-form context (FaultContext): dropped unless the permit covers it.
    pub context: heapless::Vec<u8, MAX_FAULT_CONTEXT>,
}

impl Permit {
    /// The purpose.
    pub const fn purpose(&self) -> Purpose {
        self.purpose
    }

    /// The categories that may be collected.
    pub const fn categories(&self) -> CategorySet {
        self.categories
    }

    /// The finest location precision that may be collected
    /// ([`LocationPrecision::None`] exactly when Location is not covered).
    pub const fn location(&self) -> LocationPrecision {
        self.location
    }

    /// The consent version the permit was given under.
    pub const fn consent_version(&self) -> u32 {
        self.consent_version
    }

    /// The Unix second at which the grant behind the permit lapses (the
    /// grant's expiry or the state's re-confirm date; `u64::MAX` for Essential).
    pub const fn valid_until(&self) -> u64 {
        self.valid_until
    }

    /// Builds a usage report with only what the permit covers.
    ///
    /// Each metric is checked, then filtered:
    /// - a metric whose value and category disagree is an error
    ///   ([`BuildError::MismatchedMetric`]), whatever the permit says;
    /// - a metric whose category the permit does not cover is dropped;
    /// - a location is lowered to the permit's precision if finer, and its
    ///   coordinates truncated to the grid of its (new) precision
    ///   ([`LocationPrecision::coarsen`]);
    /// - metrics are sorted by id; a repeated id is
    ///   [`BuildError::DuplicateMetric`];
    /// - a 17th kept metric is [`BuildError::TooManyMetrics`]: nothing
    ///   permitted is dropped silently; split the report instead.
    ///
    /// # Errors
    /// As listed, and [`BuildError::WindowReversed`] when `window_end < window_start`.
    ///
    /// ```
    /// use spime::consent::{CategorySet, ConsentState, DataCategory, Grant, LocationPrecision, Purpose};
    /// use spime::message::{Metric, MetricValue};
    /// let mut state = ConsentState::essential_only(1, 1_000, [0; 32]);
    /// state.set_grant(Grant {
    ///     purpose: Purpose::USAGE_ANALYTICS,
    ///     categories: CategorySet::EMPTY.with(DataCategory::UsageCounters),
    ///     location: LocationPrecision::None,
    ///     expires_at: None,
    /// })?;
    /// let permit = state.grant_permit(Purpose::USAGE_ANALYTICS, 2_000)?;
    /// let usage = permit.usage(1_000, 2_000, [
    ///     Metric { id: 2, category: DataCategory::UsageCounters, value: MetricValue::Counter(7) },
    ///     Metric { id: 1, category: DataCategory::Environment, value: MetricValue::Counter(21) },
    /// ])?;
    /// assert_eq!(usage.as_body().metrics.len(), 1); // the Environment metric was dropped
    /// assert_eq!(usage.as_body().consent_version, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn usage(
        &self,
        window_start: u64,
        window_end: u64,
        metrics: impl IntoIterator<Item = Metric>,
    ) -> Result<Permitted<Usage>, BuildError> {
        self.usage_of(window_start, window_end, metrics)
    }

    /// [`Permit::usage`] into a report of at most `M` metrics (a device's
    /// own capacity, [`UsageOf`]): the same rules, and a kept metric past
    /// `M` (or past [`MAX_METRICS`]) is [`BuildError::TooManyMetrics`].
    ///
    /// ```
    /// use spime::consent::{BuildError, CategorySet, ConsentState, DataCategory, Grant, LocationPrecision, Purpose};
    /// use spime::message::{Metric, MetricValue, UsageOf};
    /// let mut state = ConsentState::essential_only(1, 1_000, [0; 32]);
    /// state.set_grant(Grant {
    ///     purpose: Purpose::USAGE_ANALYTICS,
    ///     categories: CategorySet::EMPTY.with(DataCategory::UsageCounters),
    ///     location: LocationPrecision::None,
    ///     expires_at: None,
    /// })?;
    /// let permit = state.grant_permit(Purpose::USAGE_ANALYTICS, 2_000)?;
    /// let m = |id| Metric { id, category: DataCategory::UsageCounters, value: MetricValue::Counter(1) };
    /// let usage = permit.usage_of::<2>(1_000, 2_000, [m(1), m(2)])?;
    /// assert_eq!(usage.as_body().metrics.len(), 2);
    /// let err = permit.usage_of::<2>(1_000, 2_000, [m(1), m(2), m(3)]);
    /// assert_eq!(err, Err(BuildError::TooManyMetrics { max: 2 }));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`Permit::usage`].
    pub fn usage_of<const M: usize>(
        &self,
        window_start: u64,
        window_end: u64,
        metrics: impl IntoIterator<Item = Metric>,
    ) -> Result<Permitted<UsageOf<M>>, BuildError> {
        if window_end < window_start {
            return Err(BuildError::WindowReversed);
        }
        let max = if M < MAX_METRICS { M } else { MAX_METRICS };
        let mut kept: heapless::Vec<Metric, M> = heapless::Vec::new();
        for mut m in metrics {
            let is_loc_value = matches!(m.value, MetricValue::Location { .. });
            if is_loc_value != (m.category == DataCategory::Location)
                || matches!(m.value, MetricValue::Location { precision: LocationPrecision::None, .. })
            {
                return Err(BuildError::MismatchedMetric(m.id));
            }
            if !self.categories.contains(m.category) {
                continue;
            }
            if let MetricValue::Location { lat_e7, lon_e7, precision } = m.value {
                let p = if precision > self.location { self.location } else { precision };
                match (p.coarsen(lat_e7), p.coarsen(lon_e7)) {
                    (Some(lat_e7), Some(lon_e7)) => m.value = MetricValue::Location { lat_e7, lon_e7, precision: p },
                    _ => continue,
                }
            }
            let pos = kept.iter().position(|k| k.id >= m.id).unwrap_or(kept.len());
            if kept.get(pos).is_some_and(|k| k.id == m.id) {
                return Err(BuildError::DuplicateMetric(m.id));
            }
            if kept.len() >= max {
                return Err(BuildError::TooManyMetrics { max });
            }
            crate::list::insert(&mut kept, pos, m).map_err(|_| BuildError::TooManyMetrics { max })?;
        }
        let body = UsageOf {
            purpose: self.purpose,
            consent_version: self.consent_version,
            window_start,
            window_end,
            metrics: kept,
        };
        let scope = Scope::of_usage(&body);
        Ok(Permitted { body, scope })
    }

    /// Builds a fault report: every fault field is DeviceHealth, so the
    /// permit must cover it; the context (FaultContext) is emptied unless
    /// the permit covers FaultContext.
    ///
    /// # Errors
    /// [`BuildError::NotPermitted`] without DeviceHealth,
    /// [`BuildError::ZeroOccurrences`], [`BuildError::SeenReversed`].
    pub fn fault(&self, draft: FaultDraft) -> Result<Permitted<Fault>, BuildError> {
        if !self.categories.contains(DataCategory::DeviceHealth) {
            return Err(BuildError::NotPermitted(DataCategory::DeviceHealth));
        }
        if draft.occurrences == 0 {
            return Err(BuildError::ZeroOccurrences);
        }
        if draft.last_seen < draft.first_seen {
            return Err(BuildError::SeenReversed);
        }
        let mut context = draft.context;
        if !self.categories.contains(DataCategory::FaultContext) {
            context.clear();
        }
        let body = Fault {
            purpose: self.purpose,
            consent_version: self.consent_version,
            code: draft.code,
            severity: draft.severity,
            component: draft.component,
            firmware: draft.firmware,
            uptime_s: draft.uptime_s,
            reboot_reason: draft.reboot_reason,
            occurrences: draft.occurrences,
            first_seen: draft.first_seen,
            last_seen: draft.last_seen,
            context,
        };
        let scope = Scope::of_fault(&body);
        Ok(Permitted { body, scope })
    }
}

/// How many notices were sent to the owner recently: the contact history
/// the frequency caps are judged against. Both sides keep one (the vendor
/// of what it sealed, the device of what it showed).
pub trait ContactHistory {
    /// The number of notices for `purpose` sent at or after Unix second `since`.
    fn sent_since(&self, purpose: Purpose, since: u64) -> u32;
}

/// An empty history: nothing was ever sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoHistory;

impl ContactHistory for NoHistory {
    fn sent_since(&self, _purpose: Purpose, _since: u64) -> u32 {
        0
    }
}

/// One notice sent: its purpose and Unix second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SentNotice {
    /// The purpose of the notice.
    pub purpose: Purpose,
    /// When it was sent.
    pub at: u64,
}

impl ContactHistory for [SentNotice] {
    fn sent_since(&self, purpose: Purpose, since: u64) -> u32 {
        let n = self.iter().filter(|s| s.purpose == purpose && s.at >= since).count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

impl<const N: usize> ContactHistory for heapless::Vec<SentNotice, N> {
    fn sent_since(&self, purpose: Purpose, since: u64) -> u32 {
        self.as_slice().sent_since(purpose, since)
    }
}

const DAY: u64 = 86_400;

impl ConsentState {
    /// The grant for `purpose`: the first in the list (a canonical state has at most one).
    pub fn grant(&self, purpose: Purpose) -> Option<&Grant> {
        self.grants.iter().find(|g| g.purpose == purpose)
    }

    /// May `categories` (and a location of precision `location`) be collected
    /// for `purpose` at Unix second `now`? On success, the [`Permit`] to build
    /// the message with; otherwise the reason.
    ///
    /// The request is all or nothing: every requested category must be
    /// granted. A `location` other than None adds Location to the request;
    /// Location requested with precision None is judged as Exact. The
    /// checks, in order (the first failing one is the answer):
    /// 1. Essential: only [`ESSENTIAL_CATEGORIES`], never a location; never lapses.
    /// 2. `now >= reconfirm_by`: [`Denial::ReconfirmDue`].
    /// 3. no grant for the purpose: [`Denial::NotGranted`] with every requested
    ///    category missing (every category, [`CategorySet::ALL`], when the request is empty).
    /// 4. `now >= expires_at`: [`Denial::Expired`].
    /// 5. categories not all granted: [`Denial::NotGranted`] (those missing).
    /// 6. precision finer than granted: [`Denial::PrecisionTooFine`].
    ///
    /// # Errors
    /// The [`Denial`] of the first failing check.
    ///
    /// ```
    /// use spime::consent::{CategorySet, ConsentState, DataCategory, Denial, LocationPrecision, Purpose};
    /// let state = ConsentState::essential_only(3, 1_000, [0; 32]);
    /// let health = CategorySet::EMPTY.with(DataCategory::DeviceHealth);
    /// assert!(state.may_collect(Purpose::ESSENTIAL, health, LocationPrecision::None, 2_000).is_ok());
    /// let denial = state.may_collect(Purpose::MARKETING, health, LocationPrecision::None, 2_000).unwrap_err();
    /// assert!(matches!(denial, Denial::NotGranted { version: 3, .. }));
    /// assert_eq!(denial.to_string(), "not granted: device-health for marketing (consent version 3)");
    /// ```
    pub fn may_collect(
        &self,
        purpose: Purpose,
        categories: CategorySet,
        location: LocationPrecision,
        now: u64,
    ) -> Result<Permit, Denial> {
        let version = self.version;
        let location = match location {
            LocationPrecision::None if categories.contains(DataCategory::Location) => LocationPrecision::Exact,
            p => p,
        };
        let requested =
            if location == LocationPrecision::None { categories } else { categories.with(DataCategory::Location) };
        if purpose == Purpose::ESSENTIAL {
            let missing = requested.difference(ESSENTIAL_CATEGORIES);
            if !missing.is_empty() {
                return Err(Denial::NotGranted { purpose, missing, version });
            }
            return Ok(Permit {
                purpose,
                categories: requested,
                location,
                consent_version: version,
                valid_until: u64::MAX,
            });
        }
        if now >= self.reconfirm_by {
            return Err(Denial::ReconfirmDue { since: self.reconfirm_by, version });
        }
        let Some(grant) = self.grant(purpose) else {
            let missing = if requested.is_empty() { CategorySet::ALL } else { requested };
            return Err(Denial::NotGranted { purpose, missing, version });
        };
        if let Some(at) = grant.expires_at
            && now >= at
        {
            return Err(Denial::Expired { purpose, at, version });
        }
        let missing = requested.difference(grant.categories);
        if !missing.is_empty() {
            return Err(Denial::NotGranted { purpose, missing, version });
        }
        if location > grant.location {
            return Err(Denial::PrecisionTooFine { purpose, requested: location, allowed: grant.location, version });
        }
        let valid_until = grant.expires_at.map_or(self.reconfirm_by, |e| e.min(self.reconfirm_by));
        Ok(Permit { purpose, categories: requested, location, consent_version: version, valid_until })
    }

    /// Everything granted for `purpose` at `now`, as one [`Permit`]: the
    /// grant's categories and precision (for Essential,
    /// [`ESSENTIAL_CATEGORIES`]). The builders then drop what it does not cover.
    ///
    /// # Errors
    /// As [`ConsentState::may_collect`] for an empty request: ReconfirmDue,
    /// NotGranted (with `missing` = [`CategorySet::ALL`]) or Expired.
    pub fn grant_permit(&self, purpose: Purpose, now: u64) -> Result<Permit, Denial> {
        let (categories, location) = match self.grant(purpose) {
            Some(g) if purpose != Purpose::ESSENTIAL => {
                // A non-canonical grant with Location but no precision grants no location.
                let cats = if g.location == LocationPrecision::None {
                    g.categories.without(DataCategory::Location)
                } else {
                    g.categories
                };
                (cats, g.location)
            }
            _ if purpose == Purpose::ESSENTIAL => (ESSENTIAL_CATEGORIES, LocationPrecision::None),
            _ => (CategorySet::EMPTY, LocationPrecision::None),
        };
        self.may_collect(purpose, categories, location, now)
    }

    /// Does this state allow data of `scope` at `now`? The vendor's rule for
    /// data naming a consent version (and the device's for queued data):
    /// a version newer than this state's is [`Denial::UnknownVersion`]; an
    /// equal or older one is judged by this state, as
    /// [`ConsentState::may_collect`] (so a withdrawal applies to data built
    /// before it).
    ///
    /// # Errors
    /// The [`Denial`].
    pub fn check_scope(&self, scope: &Scope, now: u64) -> Result<(), Denial> {
        if scope.consent_version > self.version {
            return Err(Denial::UnknownVersion { named: scope.consent_version, held: self.version });
        }
        self.may_collect(scope.purpose, scope.categories, scope.location, now).map(|_| ())
    }

    /// The vendor's check of a received usage report ([`ConsentState::check_scope`]).
    ///
    /// # Errors
    /// The [`Denial`].
    pub fn check_usage(&self, usage: &Usage, now: u64) -> Result<(), Denial> {
        self.check_scope(&Scope::of_usage(usage), now)
    }

    /// The vendor's check of a received fault report ([`ConsentState::check_scope`]).
    ///
    /// # Errors
    /// The [`Denial`].
    pub fn check_fault(&self, fault: &Fault, now: u64) -> Result<(), Denial> {
        self.check_scope(&Scope::of_fault(fault), now)
    }

    /// May the owner be contacted for `purpose` on `channel` about `topic`
    /// at `now`, given what was already sent (`history`)?
    ///
    /// A safety recall (`kind` [`NoticeKind::Recall`] under
    /// [`Purpose::ESSENTIAL`]) bypasses mutes, frequency caps and quiet
    /// hours. Essential may always use [`Channel::OnDevice`]. The checks, in
    /// order:
    /// 1. not Essential and `now >= reconfirm_by`: [`ContactDenial::ReconfirmDue`];
    /// 2. the channel is not in the contact grant for the purpose (and is not
    ///    OnDevice for Essential): [`ContactDenial::ChannelNotGranted`];
    /// 3. unless a recall: the topic is muted: [`ContactDenial::Muted`];
    /// 4. unless a recall: a cap for the purpose has `max` or more notices
    ///    sent at or after `now - (period - 1)`: [`ContactDenial::FrequencyCap`];
    /// 5. unless a recall: local time in the quiet hours: [`ContactDenial::QuietHours`].
    ///
    /// # Errors
    /// The [`ContactDenial`] of the first failing check.
    ///
    /// ```
    /// use spime::consent::{Channel, ConsentState, ContactDenial, NoHistory, Purpose, QuietHours};
    /// use spime::message::NoticeKind;
    /// let mut state = ConsentState::essential_only(1, 0, [0; 32]);
    /// state.contact.quiet_hours = Some(QuietHours { start_minute: 22 * 60, end_minute: 7 * 60, utc_offset_minutes: 60 });
    /// let at_midnight_utc = 86_400; // 01:00 local
    /// let held = state.may_contact(Purpose::ESSENTIAL, Channel::OnDevice, 1, NoticeKind::UpdateAvailable, at_midnight_utc, &NoHistory);
    /// assert_eq!(held, Err(ContactDenial::QuietHours { until: 86_400 + 6 * 3_600 }));
    /// // a recall is not held back:
    /// assert!(state.may_contact(Purpose::ESSENTIAL, Channel::OnDevice, 1, NoticeKind::Recall, at_midnight_utc, &NoHistory).is_ok());
    /// ```
    pub fn may_contact<H: ContactHistory + ?Sized>(
        &self,
        purpose: Purpose,
        channel: Channel,
        topic: u16,
        kind: NoticeKind,
        now: u64,
        history: &H,
    ) -> Result<(), ContactDenial> {
        let version = self.version;
        let essential = purpose == Purpose::ESSENTIAL;
        let recall = essential && kind == NoticeKind::Recall;
        if !essential && now >= self.reconfirm_by {
            return Err(ContactDenial::ReconfirmDue { since: self.reconfirm_by, version });
        }
        let granted =
            self.contact.grants.iter().find(|g| g.purpose == purpose).is_some_and(|g| g.channels.contains(channel));
        let essential_on_device = essential && channel == Channel::OnDevice;
        if !(granted || essential_on_device) {
            return Err(ContactDenial::ChannelNotGranted { purpose, channel, version });
        }
        if recall {
            return Ok(());
        }
        if self.contact.muted_topics.contains(&topic) {
            return Err(ContactDenial::Muted { topic, version });
        }
        if let Some(cap) = self.contact.caps.iter().find(|c| c.purpose == purpose) {
            let since = now.saturating_sub(u64::from(cap.period_seconds.saturating_sub(1)));
            let sent = history.sent_since(purpose, since);
            if sent >= u32::from(cap.max_notices) {
                return Err(ContactDenial::FrequencyCap {
                    purpose,
                    max: cap.max_notices,
                    period_seconds: cap.period_seconds,
                    sent,
                });
            }
        }
        if let Some(q) = &self.contact.quiet_hours {
            let offset = i64::from(q.utc_offset_minutes) * 60;
            let day = i64::try_from(DAY).unwrap_or(86_400);
            let second_of_day = (i64::try_from(now % DAY).unwrap_or(0) + offset).rem_euclid(day);
            let minute = second_of_day / 60;
            let (start, end) = (i64::from(q.start_minute), i64::from(q.end_minute));
            let quiet = match start.cmp(&end) {
                core::cmp::Ordering::Less => start <= minute && minute < end,
                core::cmp::Ordering::Greater => minute >= start || minute < end,
                core::cmp::Ordering::Equal => false,
            };
            if quiet {
                let wait = (end * 60 - second_of_day).rem_euclid(day);
                return Err(ContactDenial::QuietHours { until: now.saturating_add(wait.unsigned_abs()) });
            }
        }
        Ok(())
    }

    /// [`ConsentState::may_contact`] for a whole notice, after checking
    /// that it has not expired (`now > expires_at`:
    /// [`ContactDenial::NoticeExpired`]). The vendor calls it before sealing
    /// a notice, the device before showing one.
    ///
    /// # Errors
    /// The [`ContactDenial`].
    pub fn check_notice<H: ContactHistory + ?Sized>(
        &self,
        notice: &Notice,
        now: u64,
        history: &H,
    ) -> Result<(), ContactDenial> {
        if !notice.kind.allowed_for(notice.purpose) {
            return Err(ContactDenial::KindNotForPurpose { kind: notice.kind, purpose: notice.purpose });
        }
        if now > notice.expires_at {
            return Err(ContactDenial::NoticeExpired { at: notice.expires_at });
        }
        self.may_contact(notice.purpose, notice.channel, notice.topic, notice.kind, now, history)
    }
}
