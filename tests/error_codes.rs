//! The numeric codes of the device's errors (SPEC.md §10.1, local codes
//! 100–162): every variant has its own code, a wrapping error reports the
//! wrapped one's, and no local code collides with a protocol code.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use spime::consent::{BuildError, DataCategory, EditError};
use spime::device::metrics::MetricsError;
use spime::device::outbox::{Class, OutboxError};
use spime::device::session::{SessionError, Stage};
use spime::device::storage::{GeometryError, StorageError};
use spime::error::{CounterError, DecodeError, OpenError, SealError};
use spime::wire::Kind;

/// Every local variant with its expected code.
fn local() -> Vec<(u16, String)> {
    let storage = [
        StorageError::Io,
        StorageError::NoSuchRecord(1),
        StorageError::TooLarge { len: 2, max: 1 },
        StorageError::BufferTooSmall { needed: 2, have: 1 },
        StorageError::Invalid(3),
        StorageError::Full,
    ];
    let geometry = [
        GeometryError::Sizes { read: 1, write: 1, erase: 1 },
        GeometryError::Unaligned { base: 1, erase: 4096 },
        GeometryError::RecordTooLarge { capacity: 9, max: 1 },
        GeometryError::Layout { sectors: 1, records: 1, max_records: 1 },
        GeometryError::TooSmall { sectors: 1, erase: 1, needed: 2, available: 1 },
    ];
    let metrics = [
        MetricsError::Full,
        MetricsError::Duplicate(1),
        MetricsError::BadBounds(1),
        MetricsError::LocationCategory(1),
        MetricsError::Unknown(1),
        MetricsError::WrongKind(1),
        MetricsError::NoPrecision,
    ];
    let build = [
        BuildError::TooManyMetrics { max: 1 },
        BuildError::DuplicateMetric(1),
        BuildError::MismatchedMetric(1),
        BuildError::WindowReversed,
        BuildError::NotPermitted(DataCategory::Location),
        BuildError::ZeroOccurrences,
        BuildError::SeenReversed,
    ];
    let edit = [
        EditError::Essential,
        EditError::EmptyGrant,
        EditError::LocationMismatch,
        EditError::Full("grant"),
        EditError::ZeroPeriod,
        EditError::QuietHoursRange,
        EditError::VersionExhausted,
    ];
    let session = [
        SessionError::StaleConsent { held: 2, got: 1 },
        SessionError::NoSession,
        SessionError::EpochExhausted,
        SessionError::WrongStage { expected: Stage::Registered, actual: Stage::Unregistered },
        SessionError::RecordsTooSmall { needed: 2, have: 1, outbox: 1 },
        SessionError::TooFewRecords { needed: 2, have: 1, slots: 1 },
        SessionError::OutboxNotEmpty(1),
        SessionError::AlreadyConfirmed,
    ];
    let mut v: Vec<(u16, String)> = Vec::new();
    v.push((SealError::BufferTooSmall { needed: 2, have: 1 }.code(), "seal buffer".into()));
    for e in [CounterError::Storage, CounterError::Exhausted, CounterError::Lost] {
        v.push((e.code(), format!("{e:?}")));
    }
    v.extend(storage.iter().map(|e| (e.code(), format!("{e:?}"))));
    // GeometryError::Io shares StorageError::Io's code, on purpose
    v.extend(geometry.iter().map(|e| (e.code(), format!("{e:?}"))));
    for e in [OutboxError::Full(Class::Usage), OutboxError::TooLarge { len: 2, max: 1 }, OutboxError::Empty] {
        v.push((e.code(), format!("{e:?}")));
    }
    v.extend(metrics.iter().map(|e| (e.code(), format!("{e:?}"))));
    v.extend(build.iter().map(|e| (e.code(), format!("{e:?}"))));
    v.extend(edit.iter().map(|e| (e.code(), format!("{e:?}"))));
    v.extend(session.iter().map(|e| (e.code(), format!("{e:?}"))));
    v
}

#[test]
fn local_codes_are_distinct_and_in_their_range() {
    let mut seen: BTreeMap<u16, String> = BTreeMap::new();
    for (code, name) in local() {
        assert!((100..=162).contains(&code), "{name}: {code} outside 100..=162");
        if let Some(other) = seen.insert(code, name.clone()) {
            panic!("{name} and {other} share code {code}");
        }
    }
    assert_eq!(seen.len(), 47);
    assert_eq!(GeometryError::Io.code(), StorageError::Io.code());
}

#[test]
fn wrapping_errors_report_the_wrapped_code() {
    assert_eq!(SessionError::Open(OpenError::Unauthentic).code(), 20);
    assert_eq!(SessionError::Decode(DecodeError::Malformed).code(), 5);
    assert_eq!(SessionError::Storage(StorageError::Full).code(), 115);
    assert_eq!(SessionError::Outbox(OutboxError::Storage(StorageError::Io)).code(), 110);
    assert_eq!(SessionError::Counter(CounterError::Lost).code(), 103);
    assert_eq!(SessionError::Seal(SealError::Counter(CounterError::Exhausted)).code(), 102);
    assert_eq!(SessionError::Seal(SealError::Encode(DecodeError::TrailingBytes)).code(), 3);
    assert_eq!(SessionError::Seal(SealError::WeakKey).code(), 25);
    assert_eq!(SessionError::Seal(SealError::WrongDirection(Kind::NOTICE)).code(), 22);
    assert_eq!(SessionError::Build(BuildError::WindowReversed).code(), 138);
    assert_eq!(SessionError::Edit(EditError::Essential).code(), 145);
}
