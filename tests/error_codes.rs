//! The numeric codes of the device's errors (SPEC.md §10.1, local codes
//! 100–162): every variant has its own code, a wrapping error reports the
//! wrapped one's, and no local code collides with a protocol code.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic, clippy::type_complexity)]

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

/// Every protocol variant (SPEC.md §10.1's table, codes 1–94) with the
/// name SPEC gives it: the variant's own name, with the wrapper `Consent(…)`
/// `Replay(…)` or `VendorKey(…)` the crate reports it in.
fn protocol() -> Vec<(u16, String)> {
    use spime::consent::{Channel, ConsentError, ContactDenial, Denial, LocationPrecision, Purpose};
    use spime::error::{List, ReplayError, Rule, VendorKeyError};
    use spime::message::NoticeKind;
    use spime::message::Validity;
    use spime::vendor::{IngestError, StoreError};
    use spime::wire::chunk::ChunkError;
    let p = Purpose::ESSENTIAL;
    let c = spime::consent::CategorySet::EMPTY;
    let decode = [
        DecodeError::Truncated { needed: 2, have: 1 },
        DecodeError::Oversized { len: 2, max: 1 },
        DecodeError::TrailingBytes,
        DecodeError::NonCanonical,
        DecodeError::Malformed,
        DecodeError::UnsupportedVersion(0),
        DecodeError::UnknownKind(0),
        DecodeError::InvalidFlags(0),
        DecodeError::UnknownPurpose(10),
        DecodeError::UnknownBits(0x80),
        DecodeError::Unordered(List::Metrics),
        DecodeError::OutOfRange(Rule::UsageWindow),
        DecodeError::BufferTooSmall { have: 1 },
    ];
    let open = [
        OpenError::Unauthentic,
        OpenError::WrongKind { expected: Kind::NOTICE, got: Kind::RECEIPT },
        OpenError::WrongDirection(Kind::USAGE),
        OpenError::WrongDevice,
        OpenError::WrongEpoch { expected: 1, got: 2 },
        OpenError::WeakKey,
        OpenError::BadCertificate,
        OpenError::Replay(ReplayError::Duplicate(1)),
        OpenError::Replay(ReplayError::TooOld { counter: 1, highest: 200 }),
    ];
    let ingest = [
        IngestError::UnknownDevice,
        IngestError::StaleEpoch { current: 2, got: 1 },
        IngestError::UnopenedEpoch { current: 1, got: 2 },
        IngestError::CertificateMismatch,
        IngestError::Consent(ConsentError::TooFarAhead { held: 1, got: 2000, max: 1025 }),
        IngestError::Consent(ConsentError::Stale { held: 2, got: 1 }),
        IngestError::Consent(ConsentError::Conflict(1)),
        IngestError::Consent(ConsentError::OwnerProofMissing),
        IngestError::Consent(ConsentError::OwnerProofInvalid),
        IngestError::Consent(ConsentError::OwnerKeyMismatch),
        IngestError::AwaitingRegistration,
        IngestError::Decommissioned,
        IngestError::Throttled,
        IngestError::Storage(StoreError::Conflict),
        IngestError::CertificateInvalid(Validity::Expired { not_after: 1 }),
        IngestError::Revoked,
        IngestError::VendorKeyRetired { serial: 0 },
    ];
    let denial = [
        Denial::NotGranted { purpose: p, missing: c, version: 1 },
        Denial::Withdrawn { purpose: p, missing: c, version: 1 },
        Denial::Expired { purpose: p, at: 1, version: 1 },
        Denial::ReconfirmDue { since: 1, version: 1 },
        Denial::PrecisionTooFine {
            purpose: p,
            requested: LocationPrecision::Exact,
            allowed: LocationPrecision::City,
            version: 1,
        },
        Denial::UnknownVersion { named: 2, held: 1 },
    ];
    let contact = [
        ContactDenial::NoticeExpired { at: 1 },
        ContactDenial::ReconfirmDue { since: 1, version: 1 },
        ContactDenial::ChannelNotGranted { purpose: p, channel: Channel::Sms, version: 1 },
        ContactDenial::Muted { topic: 1, version: 1 },
        ContactDenial::FrequencyCap { purpose: p, max: 1, period_seconds: 1, sent: 1 },
        ContactDenial::QuietHours { until: 1 },
        ContactDenial::KindNotForPurpose { kind: NoticeKind::SuppliesOffer, purpose: p },
    ];
    let chunk = [
        ChunkError::Truncated(1),
        ChunkError::ZeroSize,
        ChunkError::IndexOutOfRange { index: 2, last: 1 },
        ChunkError::BadLength { len: 1, size: 2 },
        ChunkError::TooLarge { len: 2, max: 1 },
        ChunkError::MtuTooSmall(5),
        ChunkError::Empty,
        ChunkError::BufferTooSmall { needed: 2, have: 1 },
    ];
    let receipts = [ConsentError::ReceiptUnknownVersion(1), ConsentError::ReceiptMismatch(1)];
    let keys = [
        VendorKeyError::Rollback { held: 2, got: 1 },
        VendorKeyError::Invalid(Validity::NotYetValid { issued_at: 1 }),
        VendorKeyError::NoAuthority,
    ];
    let mut v: Vec<(u16, String)> = Vec::new();
    v.extend(decode.iter().map(|e| (e.code(), format!("{e:?}"))));
    v.extend(open.iter().map(|e| (e.code(), format!("{e:?}"))));
    v.extend(ingest.iter().map(|e| (e.code(), format!("{e:?}"))));
    v.extend(denial.iter().map(|e| (e.code(), format!("{e:?}"))));
    v.extend(contact.iter().map(|e| (e.code(), format!("{e:?}"))));
    v.extend(chunk.iter().map(|e| (e.code(), format!("{e:?}"))));
    v.extend(receipts.iter().map(|e| (e.code(), format!("{e:?}"))));
    v.extend(keys.iter().map(|e| (e.code(), format!("VendorKey({e:?})"))));
    v
}

/// The name SPEC.md (or a `Debug` rendering) gives a variant: the first
/// identifier, inside `Consent(…)`, `Replay(…)` or `VendorKey(…)`, after
/// any `Type::`.
fn bare_name(s: &str) -> String {
    let s = s.rsplit("::").next().unwrap_or(s);
    let s = ["Consent(", "Replay(", "VendorKey("].iter().find_map(|w| s.strip_prefix(w)).unwrap_or(s);
    s.chars().take_while(char::is_ascii_alphanumeric).collect()
}

/// SPEC.md §10.1, parsed: the table (codes 1–94) and the paragraph of
/// local codes (100–162), each as (code, name).
fn spec_codes() -> (Vec<(u16, String)>, Vec<(u16, String)>) {
    let spec = include_str!("../SPEC.md");
    let start = spec.find("### 10.1 Error codes").unwrap();
    let local_at = start + spec[start..].find("**Local codes").unwrap();
    let end = local_at + spec[local_at..].find("An error that wraps another").unwrap();
    let mut table = Vec::new();
    for line in spec[start..local_at].lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if let (Some(code), Some(name)) = (cells.get(1).and_then(|c| c.parse::<u16>().ok()), cells.get(2)) {
            table.push((code, bare_name(name.trim_matches('`'))));
        }
    }
    // "… 101 `Storage`, 102 `Exhausted` …": a backticked name after its code.
    let mut local = Vec::new();
    let parts: Vec<&str> = spec[local_at..end].split('`').collect();
    for pair in parts.windows(2).step_by(2) {
        let code = pair[0].split_whitespace().last().and_then(|w| w.parse::<u16>().ok());
        if let Some(code) = code {
            local.push((code, bare_name(pair[1])));
        }
    }
    (table, local)
}

/// SPEC.md §10.1 lists every code exactly once, under the variant's name,
/// and the crate has a variant for every code it lists.
#[test]
fn spec_lists_every_code_once_with_its_name() {
    let (table, local_spec) = spec_codes();
    for (list, what) in [(&table, "table"), (&local_spec, "local codes")] {
        let mut seen = BTreeMap::new();
        for (code, name) in list {
            assert!(seen.insert(*code, name.clone()).is_none(), "SPEC §10.1 {what} lists code {code} twice");
        }
    }
    let spec: BTreeMap<u16, String> = table.into_iter().collect();
    let code: BTreeMap<u16, String> = protocol().into_iter().map(|(c, n)| (c, bare_name(&n))).collect();
    assert_eq!(spec, code, "SPEC §10.1's table against the crate's codes");
    let spec_local: BTreeMap<u16, String> = local_spec.into_iter().collect();
    let mut code_local: BTreeMap<u16, String> = BTreeMap::new();
    for (c, n) in local() {
        // GeometryError::Io shares 110 with StorageError::Io.
        code_local.entry(c).or_insert_with(|| bare_name(&n));
    }
    code_local.insert(100, "BufferTooSmall".into());
    assert_eq!(spec_local, code_local, "SPEC §10.1's local codes against the crate's");
    assert_eq!((spec.len(), spec_local.len()), (65, 47));
}

/// SPEC.md §11.4: the CoAP response code of every refusal the vendor
/// pipeline reports is the one the table gives for its §10.1 code.
#[cfg(feature = "server")]
#[test]
fn spec_coap_codes_match_the_server() {
    use spime::consent::{ConsentError, Denial, Purpose};
    use spime::error::ReplayError;
    use spime::message::Validity;
    use spime::server::coap::response_code;
    use spime::vendor::{IngestError, StoreError};
    use spime::wire::chunk::ChunkError;
    let spec = include_str!("../SPEC.md");
    let start = spec.find("### 11.4 Response codes for refusals").unwrap();
    let mut table: BTreeMap<u16, String> = BTreeMap::new();
    for line in spec[start..].lines().skip(1).take_while(|l| !l.starts_with('#')) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (Some(coap), Some(codes)) = (cells.get(1), cells.get(2)) else { continue };
        let coap = coap.split_whitespace().next().unwrap_or("").to_string();
        for part in codes.split(',').map(str::trim) {
            let mut ends = part.split('–').map(|n| n.trim().parse::<u16>());
            let (Some(Ok(a)), b) = (ends.next(), ends.next()) else { continue };
            let b = b.and_then(Result::ok).unwrap_or(a);
            for c in a..=b {
                assert!(table.insert(c, coap.clone()).is_none(), "§11.4 lists code {c} twice");
            }
        }
    }
    let mut errors = vec![
        IngestError::WrongDirection(Kind::NOTICE),
        IngestError::Unauthentic,
        IngestError::WeakKey,
        IngestError::Replay(ReplayError::Duplicate(1)),
        IngestError::Replay(ReplayError::TooOld { counter: 1, highest: 200 }),
        IngestError::UnknownDevice,
        IngestError::StaleEpoch { current: 2, got: 1 },
        IngestError::UnopenedEpoch { current: 1, got: 2 },
        IngestError::CertificateMismatch,
        IngestError::Consent(ConsentError::TooFarAhead { held: 1, got: 2000, max: 1025 }),
        IngestError::Consent(ConsentError::Stale { held: 2, got: 1 }),
        IngestError::Consent(ConsentError::Conflict(1)),
        IngestError::Consent(ConsentError::OwnerProofMissing),
        IngestError::Consent(ConsentError::OwnerProofInvalid),
        IngestError::Consent(ConsentError::OwnerKeyMismatch),
        IngestError::AwaitingRegistration,
        IngestError::Decommissioned,
        IngestError::Throttled,
        IngestError::Storage(StoreError::Conflict),
        IngestError::CertificateInvalid(Validity::Expired { not_after: 1 }),
        IngestError::Revoked,
        IngestError::VendorKeyRetired { serial: 0 },
        IngestError::Unconsented(Denial::UnknownVersion { named: 2, held: 1 }),
        IngestError::Unconsented(Denial::ReconfirmDue { since: 1, version: 1 }),
        IngestError::Unconsented(Denial::Expired { purpose: Purpose::ESSENTIAL, at: 1, version: 1 }),
        IngestError::Chunk(ChunkError::Truncated(1)),
        IngestError::Chunk(ChunkError::ZeroSize),
        IngestError::Chunk(ChunkError::IndexOutOfRange { index: 2, last: 1 }),
        IngestError::Chunk(ChunkError::BadLength { len: 1, size: 2 }),
        IngestError::Chunk(ChunkError::TooLarge { len: 2, max: 1 }),
    ];
    errors.extend(
        [
            DecodeError::Truncated { needed: 2, have: 1 },
            DecodeError::Malformed,
            DecodeError::BufferTooSmall { have: 1 },
        ]
        .map(IngestError::Decode),
    );
    for e in &errors {
        let coap = match format!("{:?}", response_code(e)).as_str() {
            "BadRequest" => "4.00",
            "Unauthorized" => "4.01",
            "Forbidden" => "4.03",
            "NotFound" => "4.04",
            "Conflict" => "4.09",
            "PreconditionFailed" => "4.12",
            "ServiceUnavailable" => "5.03",
            other => panic!("{e:?}: {other} is not in SPEC §11.4"),
        };
        assert_eq!(table.get(&e.code()).map(String::as_str), Some(coap), "{e:?} (code {})", e.code());
    }
}
