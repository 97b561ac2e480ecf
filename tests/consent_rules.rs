//! Consent evaluation, editing and encoding rules: every reason, every
//! rejection, and the properties both sides rely on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "consent_support/mod.rs"]
mod common;

use common::*;
use proptest::prelude::*;
use spime::codec::{self, Canonical};
use spime::consent::*;
use spime::error::DecodeError;
use spime::message::{FirmwareVersion, Metric, MetricValue, Notice, NoticeKind, RebootReason, Severity, Usage};
use spime::time::Utc;

const DH: DataCategory = DataCategory::DeviceHealth;
const UC: DataCategory = DataCategory::UsageCounters;
const FC: DataCategory = DataCategory::FaultContext;
const LOC: DataCategory = DataCategory::Location;
const ENV: DataCategory = DataCategory::Environment;

/// Version 4 decided at NOW - 100: analytics (counters + city location), diagnostics until NOW + 50.
fn sample() -> ConsentState {
    let mut s = ConsentState::essential_only(4, NOW - 100, [0xab; 32]);
    s.set_grant(Grant {
        purpose: Purpose::USAGE_ANALYTICS,
        categories: cats(&[UC, LOC]),
        location: LocationPrecision::City,
        expires_at: None,
    })
    .unwrap();
    s.set_grant(Grant {
        purpose: Purpose::DIAGNOSTICS,
        categories: cats(&[DH, FC]),
        location: LocationPrecision::None,
        expires_at: Some(NOW + 50),
    })
    .unwrap();
    s.set_contact(Purpose::PROACTIVE_SERVICE, chans(&[Channel::App, Channel::Email])).unwrap();
    s.set_contact(Purpose::ESSENTIAL, chans(&[Channel::Email])).unwrap();
    s.set_cap(FrequencyCap { purpose: Purpose::PROACTIVE_SERVICE, max_notices: 2, period_seconds: 3_600 }).unwrap();
    s.set_quiet_hours(Some(QuietHours { start_minute: 22 * 60, end_minute: 7 * 60, utc_offset_minutes: 60 })).unwrap();
    s.mute(9).unwrap();
    s
}

const NONE: LocationPrecision = LocationPrecision::None;

#[test]
fn collect_reasons_in_order() {
    let s = sample();
    let p = s.may_collect(Purpose::USAGE_ANALYTICS, cats(&[UC]), LocationPrecision::Region, NOW).unwrap();
    assert_eq!(p.purpose(), Purpose::USAGE_ANALYTICS);
    assert_eq!(p.categories(), cats(&[UC, LOC]), "a precision adds Location");
    assert_eq!(p.location(), LocationPrecision::Region);
    assert_eq!(p.consent_version(), 4);
    assert_eq!(p.valid_until(), s.reconfirm_by);

    // not granted at all
    assert_eq!(
        s.may_collect(Purpose::MARKETING, cats(&[UC]), NONE, NOW).unwrap_err(),
        Denial::NotGranted { purpose: Purpose::MARKETING, missing: cats(&[UC]), version: 4 }
    );
    // some categories missing: only those are named
    assert_eq!(
        s.may_collect(Purpose::USAGE_ANALYTICS, cats(&[UC, ENV, DH]), NONE, NOW).unwrap_err(),
        Denial::NotGranted { purpose: Purpose::USAGE_ANALYTICS, missing: cats(&[ENV, DH]), version: 4 }
    );
    // precision
    assert_eq!(
        s.may_collect(Purpose::USAGE_ANALYTICS, cats(&[UC]), LocationPrecision::Exact, NOW).unwrap_err(),
        Denial::PrecisionTooFine {
            purpose: Purpose::USAGE_ANALYTICS,
            requested: LocationPrecision::Exact,
            allowed: LocationPrecision::City,
            version: 4
        }
    );
    // Location asked with precision None is judged as Exact
    assert!(matches!(
        s.may_collect(Purpose::USAGE_ANALYTICS, cats(&[LOC]), NONE, NOW),
        Err(Denial::PrecisionTooFine { requested: LocationPrecision::Exact, .. })
    ));
    // expiry of one grant: at the second it lapses
    assert!(s.may_collect(Purpose::DIAGNOSTICS, cats(&[DH]), NONE, NOW + 49).is_ok());
    assert_eq!(
        s.may_collect(Purpose::DIAGNOSTICS, cats(&[DH]), NONE, NOW + 50).unwrap_err(),
        Denial::Expired { purpose: Purpose::DIAGNOSTICS, at: NOW + 50, version: 4 }
    );
    // expiry wins over missing categories
    assert!(matches!(s.may_collect(Purpose::DIAGNOSTICS, cats(&[ENV]), NONE, NOW + 50), Err(Denial::Expired { .. })));
    // re-confirm date: everything but Essential, and it wins over everything else
    let due = s.reconfirm_by;
    assert_eq!(
        s.may_collect(Purpose::MARKETING, cats(&[ENV]), NONE, due).unwrap_err(),
        Denial::ReconfirmDue { since: due, version: 4 }
    );
    assert!(s.may_collect(Purpose::USAGE_ANALYTICS, cats(&[UC]), NONE, due - 1).is_ok());
    // Essential: device health always, nothing else
    let e = s.may_collect(Purpose::ESSENTIAL, cats(&[DH]), NONE, u64::MAX).unwrap();
    assert_eq!(e.valid_until(), u64::MAX);
    assert_eq!(
        s.may_collect(Purpose::ESSENTIAL, cats(&[DH]), LocationPrecision::Country, NOW).unwrap_err(),
        Denial::NotGranted { purpose: Purpose::ESSENTIAL, missing: cats(&[LOC]), version: 4 }
    );
}

#[test]
fn denials_display_their_reason() {
    let s = sample();
    let d = s.may_collect(Purpose::MARKETING, cats(&[UC, LOC]), LocationPrecision::City, NOW).unwrap_err();
    assert_eq!(d.to_string(), "not granted: usage-counters+location for marketing (consent version 4)");
    let d = s.may_collect(Purpose::DIAGNOSTICS, cats(&[DH]), NONE, NOW + 60).unwrap_err();
    assert_eq!(d.to_string(), format!("grant for diagnostics expired at {} (consent version 4)", Utc(NOW + 50)));
    assert_eq!(d.to_string(), "grant for diagnostics expired at 2026-11-23 12:00:50 UTC (consent version 4)");
    assert_eq!(Purpose::vendor(1).to_string(), "vendor-defined(0x8001)");
    let c = ContactDenial::QuietHours { until: 5 };
    assert_eq!(c.to_string(), "quiet hours until 1970-01-01 00:00:05 UTC");
    let cap = ContactDenial::FrequencyCap { purpose: Purpose::MARKETING, max: 1, period_seconds: 86_400, sent: 1 };
    assert_eq!(cap.to_string(), "frequency cap reached for marketing: 1 sent, at most 1 per day");
    let expired = ContactDenial::NoticeExpired { at: 1_795_435_200 };
    assert_eq!(expired.to_string(), "notice expired at 2026-11-23 12:00:00 UTC");
}

#[test]
fn grant_permit_is_everything_granted() {
    let s = sample();
    let p = s.grant_permit(Purpose::USAGE_ANALYTICS, NOW).unwrap();
    assert_eq!((p.categories(), p.location()), (cats(&[UC, LOC]), LocationPrecision::City));
    let e = s.grant_permit(Purpose::ESSENTIAL, NOW).unwrap();
    assert_eq!(e.categories(), ESSENTIAL_CATEGORIES);
    assert_eq!(
        s.grant_permit(Purpose::RESEARCH, NOW).unwrap_err(),
        Denial::NotGranted { purpose: Purpose::RESEARCH, missing: CategorySet::ALL, version: 4 }
    );
}

fn loc(lat: i32, lon: i32, p: LocationPrecision) -> MetricValue {
    MetricValue::Location { lat_e7: lat, lon_e7: lon, precision: p }
}

#[test]
fn usage_builder_filters_coarsens_and_orders() {
    let s = sample();
    let p = s.grant_permit(Purpose::USAGE_ANALYTICS, NOW).unwrap();
    let u = p
        .usage(
            NOW - 60,
            NOW,
            [
                Metric { id: 9, category: UC, value: MetricValue::Counter(3) },
                Metric { id: 2, category: ENV, value: MetricValue::Counter(21) },
                Metric { id: 4, category: LOC, value: loc(525_212_345, -134_012_345, LocationPrecision::Exact) },
                Metric { id: 5, category: LOC, value: loc(525_212_345, 134_012_345, LocationPrecision::Country) },
            ],
        )
        .unwrap();
    let body = u.as_body();
    assert_eq!(body.purpose, Purpose::USAGE_ANALYTICS);
    assert_eq!(body.consent_version, 4);
    let ids: Vec<u16> = body.metrics.iter().map(|m| m.id).collect();
    assert_eq!(ids, [4, 5, 9]);
    assert_eq!(body.metrics[0].value, loc(525_000_000, -134_000_000, LocationPrecision::City));
    assert_eq!(body.metrics[1].value, loc(500_000_000, 100_000_000, LocationPrecision::Country));
    assert_eq!(u.scope().location, LocationPrecision::City);
    assert!(s.check_usage(body, NOW).is_ok());
    // the body is valid and canonical
    let mut buf = [0u8; 1024];
    let bytes = codec::encode(body, &mut buf).unwrap();
    assert_eq!(codec::decode::<Usage>(bytes).unwrap(), *body);
    assert_eq!(u.clone().into_inner(), *body);
}

#[test]
fn usage_builder_rejections() {
    let s = sample();
    let p = s.grant_permit(Purpose::USAGE_ANALYTICS, NOW).unwrap();
    let m = |id, category, value| Metric { id, category, value };
    assert_eq!(p.usage(2, 1, []).unwrap_err(), BuildError::WindowReversed);
    assert_eq!(
        p.usage(0, 1, [m(1, UC, MetricValue::Counter(1)), m(1, UC, MetricValue::Counter(2))]).unwrap_err(),
        BuildError::DuplicateMetric(1)
    );
    // a location hidden under another category is refused, even where that category is denied
    assert_eq!(
        p.usage(0, 1, [m(3, ENV, loc(1, 1, LocationPrecision::Exact))]).unwrap_err(),
        BuildError::MismatchedMetric(3)
    );
    assert_eq!(p.usage(0, 1, [m(3, LOC, MetricValue::Counter(1))]).unwrap_err(), BuildError::MismatchedMetric(3));
    assert_eq!(p.usage(0, 1, [m(3, LOC, loc(1, 1, NONE))]).unwrap_err(), BuildError::MismatchedMetric(3));
    // 17 permitted metrics: an error, not a silent drop; 16 plus denied ones is fine
    let many = (0..17).map(|i| m(i, UC, MetricValue::Counter(1)));
    assert_eq!(p.usage(0, 1, many).unwrap_err(), BuildError::TooManyMetrics { max: 16 });
    let ok =
        (0..16).map(|i| m(i, UC, MetricValue::Counter(1))).chain((16..40).map(|i| m(i, ENV, MetricValue::Counter(1))));
    assert_eq!(p.usage(0, 1, ok).unwrap().as_body().metrics.len(), 16);
}

fn draft() -> FaultDraft {
    FaultDraft {
        code: 0xE042,
        severity: Severity::Error,
        component: 3,
        firmware: FirmwareVersion { major: 1, minor: 2, patch: 3, build: 4 },
        uptime_s: 100,
        reboot_reason: RebootReason::Watchdog,
        occurrences: 2,
        first_seen: NOW - 10,
        last_seen: NOW,
        context: heapless::Vec::from_slice(b"heater relay stuck").unwrap(),
    }
}

#[test]
fn fault_builder() {
    let s = sample();
    let full = s.grant_permit(Purpose::DIAGNOSTICS, NOW).unwrap().fault(draft()).unwrap();
    assert_eq!(full.as_body().context.as_slice(), b"heater relay stuck");
    assert_eq!(full.scope().categories, cats(&[DH, FC]));
    let health_only = s.may_collect(Purpose::DIAGNOSTICS, cats(&[DH]), NONE, NOW).unwrap().fault(draft()).unwrap();
    assert!(health_only.as_body().context.is_empty());
    assert_eq!(health_only.as_body().categories(), cats(&[DH]));
    let essential = s.grant_permit(Purpose::ESSENTIAL, NOW).unwrap().fault(draft()).unwrap();
    assert!(essential.as_body().context.is_empty());
    let analytics = s.grant_permit(Purpose::USAGE_ANALYTICS, NOW).unwrap();
    assert_eq!(analytics.fault(draft()).unwrap_err(), BuildError::NotPermitted(DH));
    let p = s.grant_permit(Purpose::DIAGNOSTICS, NOW).unwrap();
    assert_eq!(p.fault(FaultDraft { occurrences: 0, ..draft() }).unwrap_err(), BuildError::ZeroOccurrences);
    assert_eq!(p.fault(FaultDraft { last_seen: NOW - 11, ..draft() }).unwrap_err(), BuildError::SeenReversed);
}

#[test]
fn vendor_version_rules() {
    let s = sample();
    let mut u = s.grant_permit(Purpose::USAGE_ANALYTICS, NOW).unwrap().usage(0, 1, []).unwrap().into_inner();
    u.consent_version = 5;
    assert_eq!(s.check_usage(&u, NOW).unwrap_err(), Denial::UnknownVersion { named: 5, held: 4 });
    // built under an older version: judged by the held one
    u.consent_version = 1;
    assert!(s.check_usage(&u, NOW).is_ok());
    let mut narrowed = s.successor(NOW, [0xab; 32]).unwrap();
    narrowed.narrow(Purpose::USAGE_ANALYTICS, cats(&[UC]), NONE).unwrap();
    let with_loc = s
        .grant_permit(Purpose::USAGE_ANALYTICS, NOW)
        .unwrap()
        .usage(0, 1, [Metric { id: 1, category: LOC, value: loc(1, 2, LocationPrecision::City) }])
        .unwrap();
    assert!(s.check_usage(with_loc.as_body(), NOW).is_ok());
    assert_eq!(
        narrowed.check_usage(with_loc.as_body(), NOW).unwrap_err(),
        Denial::NotGranted { purpose: Purpose::USAGE_ANALYTICS, missing: cats(&[LOC]), version: 5 }
    );
    // the outbox's purge: the queued item's scope is re-judged
    assert!(narrowed.check_scope(&with_loc.scope(), NOW).is_err());
    let f = s.grant_permit(Purpose::DIAGNOSTICS, NOW).unwrap().fault(draft()).unwrap();
    assert!(s.check_fault(f.as_body(), NOW).is_ok());
    assert!(matches!(s.check_fault(f.as_body(), NOW + 50), Err(Denial::Expired { .. })));
}

struct Sent(Vec<SentNotice>);
impl ContactHistory for Sent {
    fn sent_since(&self, purpose: Purpose, since: u64) -> u32 {
        self.0.as_slice().sent_since(purpose, since)
    }
}

/// 12:00 UTC is 13:00 at UTC+1, outside the quiet hours 22:00-07:00.
#[test]
fn contact_reasons_in_order() {
    let s = sample();
    let ps = Purpose::PROACTIVE_SERVICE;
    let mk = NoticeKind::MaintenanceDue;
    assert!(s.may_contact(ps, Channel::App, 1, mk, NOW, &NoHistory).is_ok());
    assert_eq!(
        s.may_contact(ps, Channel::Sms, 1, mk, NOW, &NoHistory).unwrap_err(),
        ContactDenial::ChannelNotGranted { purpose: ps, channel: Channel::Sms, version: 4 }
    );
    assert_eq!(
        s.may_contact(Purpose::MARKETING, Channel::App, 1, mk, NOW, &NoHistory).unwrap_err(),
        ContactDenial::ChannelNotGranted { purpose: Purpose::MARKETING, channel: Channel::App, version: 4 }
    );
    assert_eq!(
        s.may_contact(ps, Channel::App, 9, mk, NOW, &NoHistory).unwrap_err(),
        ContactDenial::Muted { topic: 9, version: 4 }
    );
    // cap: 2 per hour; window is [now - 3599, now]
    let h = Sent(vec![SentNotice { purpose: ps, at: NOW - 3_599 }, SentNotice { purpose: ps, at: NOW - 10 }]);
    assert_eq!(
        s.may_contact(ps, Channel::App, 1, mk, NOW, &h).unwrap_err(),
        ContactDenial::FrequencyCap { purpose: ps, max: 2, period_seconds: 3_600, sent: 2 }
    );
    assert!(s.may_contact(ps, Channel::App, 1, mk, NOW + 1, &h).is_ok(), "the older one left the window");
    // another purpose's notices do not count
    let other = [SentNotice { purpose: Purpose::MARKETING, at: NOW }; 5];
    assert!(s.may_contact(ps, Channel::App, 1, mk, NOW, &other[..]).is_ok());
    // muted wins over cap, cap over quiet hours
    let night = NOW + 11 * 3_600; // 23:00 UTC = 00:00 local
    assert!(matches!(s.may_contact(ps, Channel::App, 9, mk, night, &h), Err(ContactDenial::Muted { .. })));
    let h2 = Sent(vec![SentNotice { purpose: ps, at: night }; 2]);
    assert!(matches!(s.may_contact(ps, Channel::App, 1, mk, night, &h2), Err(ContactDenial::FrequencyCap { .. })));
    // re-confirm due: contact lapses too (not for Essential)
    assert_eq!(
        s.may_contact(ps, Channel::App, 1, mk, s.reconfirm_by, &NoHistory).unwrap_err(),
        ContactDenial::ReconfirmDue { since: s.reconfirm_by, version: 4 }
    );
    assert!(s.may_contact(Purpose::ESSENTIAL, Channel::OnDevice, 9, NoticeKind::Recall, u64::MAX, &h2).is_ok());
}

#[test]
fn quiet_hours_arithmetic() {
    let s = sample(); // 22:00-07:00 at UTC+1
    let ps = Purpose::PROACTIVE_SERVICE;
    let mk = NoticeKind::SuppliesOffer;
    let midnight = NOW - 12 * 3_600; // 00:00 UTC = 01:00 local
    let at = |t| s.may_contact(ps, Channel::App, 1, mk, t, &NoHistory);
    assert_eq!(at(midnight), Err(ContactDenial::QuietHours { until: midnight + 6 * 3_600 }));
    assert!(at(midnight + 6 * 3_600).is_ok(), "07:00 local: the end is exclusive");
    assert_eq!(at(midnight + 6 * 3_600 - 1), Err(ContactDenial::QuietHours { until: midnight + 6 * 3_600 }));
    assert!(at(midnight + 21 * 3_600 - 1).is_ok(), "21:59:59 local");
    assert_eq!(at(midnight + 21 * 3_600), Err(ContactDenial::QuietHours { until: midnight + 30 * 3_600 }));
    // a daytime span with a negative offset: 09:00-17:00 at UTC-05:30
    let mut d = sample();
    d.set_quiet_hours(Some(QuietHours { start_minute: 9 * 60, end_minute: 17 * 60, utc_offset_minutes: -330 }))
        .unwrap();
    let local_9 = midnight + 14 * 3_600 + 30 * 60; // 14:30 UTC
    assert_eq!(
        d.may_contact(ps, Channel::App, 1, mk, local_9, &NoHistory),
        Err(ContactDenial::QuietHours { until: local_9 + 8 * 3_600 })
    );
    assert!(d.may_contact(ps, Channel::App, 1, mk, local_9 - 1, &NoHistory).is_ok());
    // times before the epoch's first day wrap correctly
    let mut e = ConsentState::essential_only(1, 0, [0; 32]);
    e.set_quiet_hours(Some(QuietHours { start_minute: 0, end_minute: 60, utc_offset_minutes: 840 })).unwrap();
    assert_eq!(
        e.may_contact(Purpose::ESSENTIAL, Channel::OnDevice, 0, mk, 10 * 3_600, &NoHistory),
        Err(ContactDenial::QuietHours { until: 11 * 3_600 })
    );
}

#[test]
fn essential_and_recalls() {
    let s = sample();
    let e = Purpose::ESSENTIAL;
    let night = NOW + 11 * 3_600;
    // Essential may always use the device itself; Email was granted for it, SMS not
    assert!(s.may_contact(e, Channel::OnDevice, 1, NoticeKind::UpdateAvailable, NOW, &NoHistory).is_ok());
    assert!(s.may_contact(e, Channel::Email, 1, NoticeKind::UpdateAvailable, NOW, &NoHistory).is_ok());
    assert!(matches!(
        s.may_contact(e, Channel::Sms, 1, NoticeKind::Recall, NOW, &NoHistory),
        Err(ContactDenial::ChannelNotGranted { .. })
    ));
    // an update notice obeys mutes and quiet hours; a recall does not
    assert!(s.may_contact(e, Channel::OnDevice, 9, NoticeKind::UpdateAvailable, NOW, &NoHistory).is_err());
    assert!(s.may_contact(e, Channel::OnDevice, 1, NoticeKind::UpdateAvailable, night, &NoHistory).is_err());
    assert!(s.may_contact(e, Channel::OnDevice, 9, NoticeKind::Recall, night, &NoHistory).is_ok());
    // "Recall" under another purpose is not exempt
    let mut m = sample();
    m.set_contact(Purpose::MARKETING, chans(&[Channel::App])).unwrap();
    assert!(m.may_contact(Purpose::MARKETING, Channel::App, 9, NoticeKind::Recall, NOW, &NoHistory).is_err());
}

fn notice(purpose: Purpose, channel: Channel, kind: NoticeKind) -> Notice {
    Notice {
        id: 1,
        purpose,
        channel,
        topic: 1,
        kind,
        issued_at: NOW - 10,
        expires_at: NOW + 10,
        title: "Descale".try_into().unwrap(),
        text: "Time to descale".try_into().unwrap(),
    }
}

#[test]
fn check_notice() {
    let s = sample();
    let n = notice(Purpose::PROACTIVE_SERVICE, Channel::App, NoticeKind::MaintenanceDue);
    assert!(s.check_notice(&n, NOW, &NoHistory).is_ok());
    assert!(s.check_notice(&n, NOW + 10, &NoHistory).is_ok());
    assert_eq!(s.check_notice(&n, NOW + 11, &NoHistory), Err(ContactDenial::NoticeExpired { at: NOW + 10 }));
    let sms = notice(Purpose::PROACTIVE_SERVICE, Channel::Sms, NoticeKind::MaintenanceDue);
    assert!(matches!(s.check_notice(&sms, NOW, &NoHistory), Err(ContactDenial::ChannelNotGranted { .. })));
    let hv: heapless::Vec<SentNotice, 4> =
        heapless::Vec::from_slice(&[SentNotice { purpose: Purpose::PROACTIVE_SERVICE, at: NOW }; 2]).unwrap();
    assert!(matches!(s.check_notice(&n, NOW, &hv), Err(ContactDenial::FrequencyCap { .. })));
}

#[test]
fn editing_keeps_states_canonical() {
    let mut s = sample();
    assert_eq!(
        s.set_grant(Grant { purpose: Purpose::ESSENTIAL, categories: cats(&[DH]), location: NONE, expires_at: None }),
        Err(EditError::Essential)
    );
    assert_eq!(
        s.set_grant(Grant {
            purpose: Purpose::RESEARCH,
            categories: CategorySet::EMPTY,
            location: NONE,
            expires_at: None
        }),
        Err(EditError::EmptyGrant)
    );
    assert_eq!(
        s.set_grant(Grant { purpose: Purpose::RESEARCH, categories: cats(&[LOC]), location: NONE, expires_at: None }),
        Err(EditError::LocationMismatch)
    );
    assert_eq!(
        s.set_grant(Grant {
            purpose: Purpose::RESEARCH,
            categories: cats(&[UC]),
            location: LocationPrecision::City,
            expires_at: None
        }),
        Err(EditError::LocationMismatch)
    );
    assert_eq!(s.withdraw(Purpose::ESSENTIAL), Err(EditError::Essential));
    assert_eq!(s.narrow(Purpose::ESSENTIAL, CategorySet::EMPTY, NONE), Err(EditError::Essential));
    assert_eq!(
        s.set_cap(FrequencyCap { purpose: Purpose::MARKETING, max_notices: 1, period_seconds: 0 }),
        Err(EditError::ZeroPeriod)
    );
    for q in [(0, 0, 0), (1440, 1, 0), (1, 1440, 0), (1, 2, 841), (1, 2, -841)] {
        let q = QuietHours { start_minute: q.0, end_minute: q.1, utc_offset_minutes: q.2 };
        assert_eq!(s.set_quiet_hours(Some(q)), Err(EditError::QuietHoursRange));
    }
    // narrowing never widens; Location without precision left is removed
    s.narrow(Purpose::USAGE_ANALYTICS, cats(&[UC, LOC, ENV]), LocationPrecision::Exact).unwrap();
    assert_eq!(s.grant(Purpose::USAGE_ANALYTICS).unwrap().categories, cats(&[UC, LOC]));
    assert_eq!(s.grant(Purpose::USAGE_ANALYTICS).unwrap().location, LocationPrecision::City);
    s.narrow(Purpose::USAGE_ANALYTICS, cats(&[UC, LOC]), NONE).unwrap();
    assert_eq!(s.grant(Purpose::USAGE_ANALYTICS).unwrap().categories, cats(&[UC]));
    s.narrow(Purpose::USAGE_ANALYTICS, cats(&[LOC]), LocationPrecision::City).unwrap();
    assert!(s.grant(Purpose::USAGE_ANALYTICS).is_none(), "an emptied grant is withdrawn");
    s.allow_channel(Purpose::MARKETING, Channel::Sms).unwrap();
    s.allow_channel(Purpose::MARKETING, Channel::App).unwrap();
    s.set_contact(Purpose::WARRANTY, ChannelSet::EMPTY).unwrap();
    s.unmute(9);
    s.mute(3).unwrap();
    s.mute(3).unwrap();
    s.withdraw(Purpose::PROACTIVE_SERVICE).unwrap();
    s.validate().unwrap();
    for t in 100..120 {
        let _ = s.mute(t);
    }
    assert_eq!(s.mute(200), Err(EditError::Full("muted topic")));
    s.withdraw_all();
    assert!(s.grants.is_empty() && s.contact.grants.is_empty());
    let max = ConsentState::essential_only(u32::MAX, 0, [0; 32]);
    assert_eq!(max.successor(1, [0; 32]), Err(EditError::VersionExhausted));
    assert_eq!(max.reset_for_transfer(1), Err(EditError::VersionExhausted));
}

#[test]
fn transfer_resets_everything() {
    let s = sample();
    let r = s.reset_for_transfer(NOW + 5).unwrap();
    assert_eq!(r, ConsentState::deny_all(5, NOW + 5, [0; 32]));
    assert!(r.supersedes(&s));
    assert!(r.grants.is_empty());
    assert_eq!(r.contact, ContactPrefs::default());
    for p in Purpose::STANDARD.into_iter().skip(1) {
        assert!(r.grant_permit(p, NOW + 6).is_err());
        assert!(r.may_contact(p, Channel::App, 1, NoticeKind::SuppliesOffer, NOW + 6, &NoHistory).is_err());
    }
    assert!(r.grant_permit(Purpose::ESSENTIAL, NOW + 6).is_ok());
    assert!(r.may_contact(Purpose::ESSENTIAL, Channel::OnDevice, 9, NoticeKind::Recall, NOW + 6, &NoHistory).is_ok());
    assert!(r.may_contact(Purpose::ESSENTIAL, Channel::Email, 1, NoticeKind::Recall, NOW + 6, &NoHistory).is_err());
    r.validate().unwrap();
}

/// The encoding of `sample()`, byte by byte (SPEC.md §6.2).
#[test]
fn sample_bytes_pinned() {
    let mut s = ConsentState::essential_only(4, 1_000, [0xab; 32]);
    s.set_grant(Grant {
        purpose: Purpose::USAGE_ANALYTICS,
        categories: cats(&[UC, LOC]),
        location: LocationPrecision::City,
        expires_at: Some(2_000),
    })
    .unwrap();
    s.set_contact(Purpose::PROACTIVE_SERVICE, chans(&[Channel::App, Channel::Email])).unwrap();
    s.set_quiet_hours(Some(QuietHours { start_minute: 1320, end_minute: 420, utc_offset_minutes: -60 })).unwrap();
    s.set_cap(FrequencyCap { purpose: Purpose::PROACTIVE_SERVICE, max_notices: 2, period_seconds: 3_600 }).unwrap();
    s.mute(300).unwrap();
    let mut buf = [0u8; ConsentState::MAX_ENCODED_LEN];
    let bytes = codec::encode(&s, &mut buf).unwrap().to_vec();
    let mut expected = vec![0x04, 0xe8, 0x07, 0xe8, 0x88, 0xa3, 0x10]; // version 4, issued 1000, reconfirm 1000 + 34_128_000
    expected.extend([0xab; 32]);
    expected.extend([0x01, 0x03, 0x0a, 0x03, 0x01, 0xd0, 0x0f]); // 1 grant: purpose 3, bits 0x0a, City(3), Some(2000)
    expected.extend([0x01, 0x04, 0x06]); // 1 contact grant: purpose 4, channels 0b0110
    expected.extend([0x01, 0xa8, 0x0a, 0xa4, 0x03, 0x77]); // quiet hours 1320, 420, zigzag(-60)=119
    expected.extend([0x01, 0x04, 0x02, 0x90, 0x1c]); // 1 cap: purpose 4, max 2, 3600 s
    expected.extend([0x01, 0xac, 0x02]); // 1 muted topic: 300
    assert_eq!(hex::encode(&bytes), hex::encode(&expected));
    assert_eq!(codec::decode::<ConsentState>(&expected).unwrap(), s);
}

fn encoded(s: &ConsentState) -> Vec<u8> {
    let mut buf = [0u8; ConsentState::MAX_ENCODED_LEN];
    codec::encode(s, &mut buf).unwrap().to_vec()
}

#[test]
fn decoder_rejects_non_canonical_states() {
    let base = sample();
    let reject = |s: &ConsentState| codec::decode::<ConsentState>(&encoded(s)).unwrap_err();
    let mut s = base.clone();
    s.reconfirm_by = s.issued_at;
    assert!(matches!(reject(&s), DecodeError::OutOfRange(_)));
    s.reconfirm_by = s.issued_at + MAX_RECONFIRM + 1;
    assert!(matches!(reject(&s), DecodeError::OutOfRange(_)));
    s.reconfirm_by = s.issued_at + MAX_RECONFIRM;
    assert!(codec::decode::<ConsentState>(&encoded(&s)).is_ok());
    let mut s = base.clone();
    s.grants[0].categories = CategorySet::EMPTY;
    s.grants[0].location = NONE;
    assert!(matches!(reject(&s), DecodeError::OutOfRange(_)));
    let mut s = base.clone();
    s.grants.swap(0, 1);
    assert_eq!(reject(&s), DecodeError::Unordered(spime::error::List::Grants));
    let mut s = base.clone();
    s.grants[0].purpose = Purpose::ESSENTIAL;
    assert!(matches!(reject(&s), DecodeError::OutOfRange(_)));
    let mut s = base.clone();
    s.grants[1].location = NONE;
    assert!(matches!(reject(&s), DecodeError::OutOfRange(_)));
    let mut s = base.clone();
    s.contact.grants[0].channels = ChannelSet::EMPTY;
    assert!(matches!(reject(&s), DecodeError::OutOfRange(_)));
    let mut s = base.clone();
    s.contact.quiet_hours = Some(QuietHours { start_minute: 5, end_minute: 5, utc_offset_minutes: 0 });
    assert!(matches!(reject(&s), DecodeError::OutOfRange(_)));
    s.contact.quiet_hours = Some(QuietHours { start_minute: 5, end_minute: 1440, utc_offset_minutes: 0 });
    assert!(matches!(reject(&s), DecodeError::OutOfRange(_)));
    s.contact.quiet_hours = Some(QuietHours { start_minute: 5, end_minute: 6, utc_offset_minutes: -841 });
    assert!(matches!(reject(&s), DecodeError::OutOfRange(_)));
    let mut s = base.clone();
    s.contact.caps[0].period_seconds = 0;
    assert!(matches!(reject(&s), DecodeError::OutOfRange(_)));
    let mut s = base.clone();
    s.contact.muted_topics.push(9).unwrap();
    assert_eq!(reject(&s), DecodeError::Unordered(spime::error::List::MutedTopics));
    // an unknown category bit (0x80 as a two-byte varint) is refused
    let mut s = ConsentState::essential_only(4, 1_000, [0; 32]);
    s.set_grant(Grant { purpose: Purpose::DIAGNOSTICS, categories: cats(&[DH]), location: NONE, expires_at: None })
        .unwrap();
    let bytes = encoded(&s);
    let pos = 1 + 2 + 4 + 32 + 1 + 1; // version, issued_at, reconfirm_by, hash, count, purpose
    assert_eq!(bytes[pos], 0x01);
    let mut bad = bytes.clone();
    bad.splice(pos..=pos, [0x81, 0x01]);
    assert_eq!(codec::decode::<ConsentState>(&bad), Err(DecodeError::Malformed));
    // a reserved purpose id (10) is refused
    let mut bad = bytes;
    bad[pos - 1] = 10;
    assert_eq!(codec::decode::<ConsentState>(&bad), Err(DecodeError::UnknownPurpose(10)));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn canonical_states_round_trip(s in state()) {
        s.validate().unwrap();
        let bytes = encoded(&s);
        prop_assert!(bytes.len() <= ConsentState::MAX_ENCODED_LEN);
        prop_assert_eq!(codec::encoded_len(&s).unwrap(), bytes.len());
        prop_assert_eq!(codec::decode::<ConsentState>(&bytes).unwrap(), s);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..800)) {
        let _ = codec::decode::<ConsentState>(&bytes);
        let _ = codec::decode::<SignedConsent>(&bytes);
    }

    /// Evaluation is total and consistent on any state, canonical or not.
    #[test]
    fn evaluation_is_total(s in state(), p in purpose(), c in category_set(), l in precision(), now in any::<u64>(),
                           ch in channel(), topic in 0u16..40, recall in any::<bool>(), mut raw in any::<(u16, u8, u16)>()) {
        let kind = if recall { NoticeKind::Recall } else { NoticeKind::Instructions };
        let mut s = s;
        // make it non-canonical sometimes
        if raw.0 % 3 == 0 {
            s.grants.reverse();
            raw.1 %= 8;
            if let Some(g) = s.grants.first_mut() { g.location = LocationPrecision::ALL[usize::from(raw.1 % 6)]; }
            s.contact.quiet_hours = Some(QuietHours { start_minute: raw.2, end_minute: raw.0, utc_offset_minutes: i16::MIN });
            let _ = s.contact.caps.push(FrequencyCap { purpose: p, max_notices: 0, period_seconds: 0 });
        }
        match s.may_collect(p, c, l, now) {
            Ok(permit) => {
                prop_assert!(permit.categories().contains_all(c));
                prop_assert_eq!(permit.categories().contains(DataCategory::Location), permit.location() != NONE);
                prop_assert!(s.may_collect(p, permit.categories(), permit.location(), now).is_ok());
            }
            Err(Denial::NotGranted { missing, .. }) => prop_assert!(!missing.is_empty()),
            Err(_) => {}
        }
        let _ = s.grant_permit(p, now);
        let _ = s.may_contact(p, ch, topic, kind, now, &NoHistory);
    }

    /// Whatever a device builds under a state, the vendor holding the same
    /// state accepts; and whatever the vendor accepts, the device's permit
    /// would have built unchanged.
    #[test]
    fn device_and_vendor_agree(s in state(), p in purpose(), ms in metrics(), dt in 0u64..300_000) {
        let now = NOW - 100_000 + dt;
        if let Ok(permit) = s.grant_permit(p, now)
            && let Ok(built) = permit.usage(now - 60, now, ms.clone())
        {
            prop_assert_eq!(s.check_usage(built.as_body(), now), Ok(()));
            prop_assert_eq!(s.check_scope(&built.scope(), now), Ok(()));
            for m in &built.as_body().metrics {
                prop_assert!(permit.categories().contains(m.category));
            }
        }
        // A report assembled without the permit: the vendor accepts it only if the permit would keep it as is.
        let mut metrics: heapless::Vec<Metric, 16> = heapless::Vec::new();
        for m in ms.into_iter().take(16) { metrics.push(m).unwrap(); }
        let raw = Usage { purpose: p, consent_version: s.version, window_start: now - 60, window_end: now, metrics };
        let vendor = s.check_usage(&raw, now);
        let device = s.may_collect(p, raw.categories(), raw.location_precision(), now);
        prop_assert_eq!(vendor.err(), device.as_ref().err().copied());
        if let Ok(permit) = device {
            let rebuilt = permit.usage(raw.window_start, raw.window_end, raw.metrics.clone()).unwrap();
            // only coordinates can change (truncated to the grid); nothing is dropped
            prop_assert_eq!(rebuilt.as_body().metrics.len(), raw.metrics.len());
        }
    }

    /// Versions only go forward: successors and resets supersede, the vendor
    /// refuses anything that does not.
    #[test]
    fn versions_only_go_forward(s in state(), t in state()) {
        let next = s.successor(NOW, [1; 32]).unwrap();
        prop_assert!(next.supersedes(&s) && !s.supersedes(&next));
        prop_assert_eq!(next.version, s.version + 1);
        let reset = s.reset_for_transfer(NOW).unwrap();
        prop_assert!(reset.supersedes(&s));
        match s.judge_update(&t) {
            Ok(true) => prop_assert!(t.version > s.version),
            Ok(false) => prop_assert_eq!(&t, &s),
            Err(ConsentError::Stale { held, got }) => prop_assert!(got < held),
            Err(ConsentError::Conflict(v)) => prop_assert!(v == s.version && t != s),
            Err(e) => prop_assert!(false, "unexpected {e:?}"),
        }
    }

    /// States arriving in any order: the vendor ends with the highest
    /// version, so an older grant after a withdrawal never widens.
    #[test]
    fn older_grant_never_widens(base in state(), grant in grant_strategy(), order in Just(()).prop_perturb(|_, mut rng| {
        let mut v: Vec<usize> = (0..4).collect();
        for i in (1..v.len()).rev() { v.swap(i, rng.random_range(0..=i)); }
        v
    }), p in purpose(), c in category_set(), l in precision()) {
        let now = base.issued_at + 10;
        let mut states = vec![base.clone()];
        let mut granted = base.successor(base.issued_at + 1, [0; 32]).unwrap();
        let _ = granted.set_grant(grant);
        states.push(granted.clone());
        let mut withdrawn = granted.successor(base.issued_at + 2, [0; 32]).unwrap();
        withdrawn.withdraw_all();
        states.push(withdrawn.clone());
        let mut regrant_old = granted.clone();
        regrant_old.issued_at += 5; // a late, older-version state with a later clock
        states.push(regrant_old);
        let mut held = ConsentState::essential_only(0, base.issued_at, [0; 32]);
        for i in order {
            if held.judge_update(&states[i]) == Ok(true) {
                held = states[i].clone();
            }
        }
        prop_assert_eq!(held.version, withdrawn.version);
        if held.may_collect(p, c, l, now).is_ok() {
            prop_assert!(withdrawn.may_collect(p, c, l, now).is_ok());
        }
    }
}

fn grant_strategy() -> impl Strategy<Value = Grant> {
    ((1u16..=9), (1u16..=0x7f), 1usize..=5).prop_map(|(p, bits, lvl)| {
        let categories = CategorySet::from_bits(bits).unwrap();
        Grant {
            purpose: Purpose::from_id(p).unwrap(),
            categories,
            location: if categories.contains(DataCategory::Location) { LocationPrecision::ALL[lvl] } else { NONE },
            expires_at: None,
        }
    })
}
