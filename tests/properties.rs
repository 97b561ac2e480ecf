//! Property tests: every message type round-trips through its encoding and
//! through seal/open; encoded lengths are predicted exactly and stay within
//! the published maximum; arbitrary bytes never panic any decoder; and the
//! parts-wise strict verifier agrees with `verify_strict`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::std_instead_of_core,
    clippy::cast_possible_truncation
)]

mod common;

use common::*;
use proptest::collection::vec as pvec;
use proptest::prelude::*;
use spime::codec::fixed::{self, Fixed};
use spime::codec::{self, Bytes64, Canonical};
use spime::consent::*;
use spime::message::*;
use spime::seal::{self, Envelope, Seal};
use spime::wire::{DeviceId, Header, Kind};

fn purpose() -> impl Strategy<Value = Purpose> {
    prop_oneof![(0u16..10), (0x8000u16..=0xffff)].prop_map(|id| Purpose::from_id(id).unwrap())
}

fn categories() -> impl Strategy<Value = CategorySet> {
    (0u16..0x80).prop_map(|b| CategorySet::from_bits(b).unwrap())
}

fn precision() -> impl Strategy<Value = LocationPrecision> {
    prop_oneof![
        Just(LocationPrecision::Country),
        Just(LocationPrecision::Region),
        Just(LocationPrecision::City),
        Just(LocationPrecision::Neighbourhood),
        Just(LocationPrecision::Exact),
    ]
}

fn hvec<T: Clone + std::fmt::Debug, const N: usize>(
    s: impl Strategy<Value = T>,
) -> impl Strategy<Value = heapless::Vec<T, N>> {
    pvec(s, 0..=N).prop_map(|v| heapless::Vec::from_iter(v))
}

fn hstring<const N: usize>() -> impl Strategy<Value = heapless::String<N>> {
    "\\PC{0,40}".prop_map(|s: String| {
        let mut out = heapless::String::new();
        for c in s.chars() {
            if out.push(c).is_err() {
                break;
            }
        }
        out
    })
}

fn consent_state() -> impl Strategy<Value = ConsentState> {
    (
        any::<u32>(),
        0u64..u64::MAX - MAX_RECONFIRM,
        1u64..=MAX_RECONFIRM,
        any::<[u8; 32]>(),
        pvec((purpose(), categories(), precision(), any::<Option<u64>>()), 0..=MAX_GRANTS),
        pvec((purpose(), 1u8..16), 0..=MAX_CONTACT_GRANTS),
        any::<Option<(u16, u16, i16)>>(),
        pvec((purpose(), any::<u16>(), 1u32..), 0..=MAX_CAPS),
        pvec(any::<u16>(), 0..=MAX_MUTED_TOPICS),
    )
        .prop_map(
            |(version, issued_at, reconfirm_after, notice_hash, grants, contact, quiet, caps, mut topics)| {
                let reconfirm_by = issued_at + reconfirm_after;
                let mut g: Vec<Grant> = grants
                    .into_iter()
                    .filter(|g| g.0 != Purpose::ESSENTIAL && !g.1.is_empty())
                    .map(|(purpose, categories, p, expires_at)| Grant {
                        purpose,
                        categories,
                        location: if categories.contains(DataCategory::Location) { p } else { LocationPrecision::None },
                        expires_at,
                    })
                    .collect();
                g.sort_by_key(|g| g.purpose);
                g.dedup_by_key(|g| g.purpose);
                let mut c: Vec<ContactGrant> = contact
                    .into_iter()
                    .map(|(purpose, bits)| ContactGrant { purpose, channels: ChannelSet::from_bits(bits).unwrap() })
                    .collect();
                c.sort_by_key(|g| g.purpose);
                c.dedup_by_key(|g| g.purpose);
                let mut caps: Vec<FrequencyCap> = caps
                    .into_iter()
                    .map(|(purpose, max_notices, period_seconds)| FrequencyCap { purpose, max_notices, period_seconds })
                    .collect();
                caps.sort_by_key(|c| c.purpose);
                caps.dedup_by_key(|c| c.purpose);
                topics.sort_unstable();
                topics.dedup();
                ConsentState {
                    version,
                    issued_at,
                    reconfirm_by,
                    notice_hash,
                    grants: heapless::Vec::from_iter(g),
                    contact: ContactPrefs {
                        grants: heapless::Vec::from_iter(c),
                        quiet_hours: quiet.filter(|(s, e, _)| s % 1440 != e % 1440).map(|(s, e, o)| QuietHours {
                            start_minute: s % 1440,
                            end_minute: e % 1440,
                            utc_offset_minutes: o % 841,
                        }),
                        caps: heapless::Vec::from_iter(caps),
                        muted_topics: heapless::Vec::from_iter(topics),
                    },
                }
            },
        )
}

fn signed_consent() -> impl Strategy<Value = SignedConsent> {
    (consent_state(), any::<Option<([u8; 32], u8)>>()).prop_map(|(state, owner)| SignedConsent {
        state,
        owner: owner.map(|(owner_key, b)| OwnerProof { owner_key, signature: Bytes64([b; 64]) }),
    })
}

fn firmware() -> impl Strategy<Value = FirmwareVersion> {
    (any::<u16>(), any::<u16>(), any::<u16>(), any::<u32>()).prop_map(|(major, minor, patch, build)| FirmwareVersion {
        major,
        minor,
        patch,
        build,
    })
}

fn register() -> impl Strategy<Value = Register> {
    (
        any::<[u8; 8]>(),
        any::<[u8; 32]>(),
        hstring::<32>(),
        any::<u16>(),
        any::<u64>(),
        any::<u8>(),
        firmware(),
        signed_consent(),
    )
        .prop_map(|(id, key, model, hardware_revision, issued_at, s, firmware, consent)| Register {
            certificate: DeviceCertificate {
                body: CertificateBody {
                    device: DeviceId(id),
                    device_key: key,
                    model,
                    hardware_revision,
                    issued_at,
                    not_after: None,
                },
                signature: Bytes64([s; 64]),
            },
            firmware,
            consent,
            transfer: None,
        })
}

fn metric_value() -> impl Strategy<Value = (DataCategory, MetricValue)> {
    prop_oneof![
        any::<u64>().prop_map(|c| (DataCategory::UsageCounters, MetricValue::Counter(c))),
        (any::<i64>(), any::<i64>(), any::<i64>(), any::<u32>()).prop_map(|(min, max, sum, samples)| (
            DataCategory::Environment,
            MetricValue::Gauge { min, max, sum, samples }
        )),
        hvec::<u32, MAX_BUCKETS>(any::<u32>()).prop_map(|h| (DataCategory::DeviceHealth, MetricValue::Histogram(h))),
        (any::<i32>(), any::<i32>(), precision()).prop_map(|(lat_e7, lon_e7, precision)| (
            DataCategory::Location,
            MetricValue::Location { lat_e7, lon_e7, precision }
        )),
    ]
}

fn usage() -> impl Strategy<Value = Usage> {
    (purpose(), any::<u32>(), any::<u64>(), any::<u32>(), pvec((any::<u16>(), metric_value()), 0..=MAX_METRICS))
        .prop_map(|(purpose, consent_version, window_start, len, metrics)| {
            let mut m: Vec<Metric> =
                metrics.into_iter().map(|(id, (category, value))| Metric { id, category, value }).collect();
            m.sort_by_key(|m| m.id);
            m.dedup_by_key(|m| m.id);
            Usage {
                purpose,
                consent_version,
                window_start,
                window_end: window_start.saturating_add(u64::from(len)),
                metrics: heapless::Vec::from_iter(m),
            }
        })
}

fn severity() -> impl Strategy<Value = Severity> {
    prop_oneof![Just(Severity::Info), Just(Severity::Warning), Just(Severity::Error), Just(Severity::Critical)]
}

fn reboot() -> impl Strategy<Value = RebootReason> {
    prop_oneof![
        Just(RebootReason::None),
        Just(RebootReason::PowerOn),
        Just(RebootReason::Watchdog),
        Just(RebootReason::Brownout),
        Just(RebootReason::Crash),
        Just(RebootReason::Requested),
        Just(RebootReason::Unknown),
    ]
}

fn fault() -> impl Strategy<Value = Fault> {
    (
        purpose(),
        any::<u32>(),
        any::<u32>(),
        severity(),
        any::<u16>(),
        firmware(),
        any::<u32>(),
        reboot(),
        1u32..,
        any::<u64>(),
        any::<u32>(),
        hvec::<u8, MAX_FAULT_CONTEXT>(any::<u8>()),
    )
        .prop_map(
            |(
                purpose,
                consent_version,
                code,
                severity,
                component,
                firmware,
                uptime_s,
                reboot_reason,
                occurrences,
                first_seen,
                d,
                context,
            )| {
                Fault {
                    purpose,
                    consent_version,
                    code,
                    severity,
                    component,
                    firmware,
                    uptime_s,
                    reboot_reason,
                    occurrences,
                    first_seen,
                    last_seen: first_seen.saturating_add(u64::from(d)),
                    context,
                }
            },
        )
}

fn notice() -> impl Strategy<Value = Notice> {
    (
        any::<u32>(),
        purpose(),
        0usize..4,
        any::<u16>(),
        0usize..5,
        any::<u64>(),
        any::<u32>(),
        hstring::<MAX_NOTICE_TITLE>(),
        hstring::<MAX_NOTICE_TEXT>(),
    )
        .prop_map(|(id, purpose, ch, topic, k, issued_at, d, title, text)| Notice {
            id,
            purpose,
            channel: Channel::ALL[ch],
            topic,
            kind: [
                NoticeKind::MaintenanceDue,
                NoticeKind::SuppliesOffer,
                NoticeKind::Recall,
                NoticeKind::Instructions,
                NoticeKind::UpdateAvailable,
            ][k],
            issued_at,
            expires_at: issued_at.saturating_add(u64::from(d)),
            title,
            text,
        })
}

/// Encode, check the predicted length and the bound, decode, compare.
fn round_trip<T: Canonical + PartialEq + std::fmt::Debug>(value: &T) {
    let mut buf = vec![0u8; T::MAX_ENCODED_LEN];
    let bytes = codec::encode(value, &mut buf).expect("fits its maximum");
    assert_eq!(bytes.len(), codec::encoded_len(value).unwrap());
    let back: T = codec::decode(bytes).unwrap();
    assert_eq!(&back, value);
}

/// Seal as the device (or vendor), open, compare.
fn seal_round_trip<B: Body + PartialEq + std::fmt::Debug>(body: &B, counter: u64) {
    let (keys, eph) = session();
    let mut out = vec![0u8; B::MAX_SEALED_LEN];
    let n = if B::KIND.direction() == spime::wire::Direction::DeviceToVendor {
        let ephemeral = (B::KIND == Kind::REGISTER).then_some(eph);
        seal::seal(
            &mut out,
            &Seal { device: DEVICE_ID, epoch: EPOCH, counter, ephemeral },
            body,
            device().signing(),
            &keys,
        )
    } else {
        seal::seal_from_vendor(&mut out, DEVICE_ID, counter, body, &vendor(), &keys)
    }
    .unwrap();
    let signer = if B::KIND.direction() == spime::wire::Direction::DeviceToVendor {
        device().public()
    } else {
        vendor().public().signing
    };
    let env = Envelope::parse(&out[..n]).unwrap();
    assert_eq!(env.header.counter, counter);
    let mut buf = vec![0u8; env.plaintext_len()];
    let opened: B = env.decrypt(&keys, &mut buf).unwrap().verify(&signer).unwrap().decode().unwrap();
    assert_eq!(&opened, body);
    // The exact overhead: the compact header for this epoch and counter, a
    // signature and a tag.
    assert_eq!(n, codec::encoded_len(body).unwrap() + spime::message::overhead(&env.header));
    assert!(
        n - codec::encoded_len(body).unwrap() <= ENVELOPE_OVERHEAD + if B::KIND == Kind::REGISTER { 32 } else { 0 }
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn register_round_trips(v in register(), c in any::<u64>()) { round_trip(&v); seal_round_trip(&v, c); }
    #[test]
    fn usage_round_trips(v in usage(), c in any::<u64>()) { round_trip(&v); seal_round_trip(&v, c); }
    #[test]
    fn fault_round_trips(v in fault(), c in any::<u64>()) { round_trip(&v); seal_round_trip(&v, c); }
    #[test]
    fn consent_round_trips(v in signed_consent(), c in any::<u64>()) {
        round_trip(&v);
        round_trip(&v.state);
        seal_round_trip(&ConsentUpdate { consent: v }, c);
    }
    /// The device decodes its stored consent in place: over any previous
    /// value, the same value and the same verdict as `decode`, also for
    /// truncated, altered and extended bytes.
    #[test]
    fn consent_decodes_in_place(
        v in signed_consent(),
        old in signed_consent(),
        cut in any::<prop::sample::Index>(),
        flip in any::<(prop::sample::Index, u8)>(),
    ) {
        let mut buf = vec![0u8; SignedConsent::MAX_ENCODED_LEN];
        let bytes = codec::encode(&v, &mut buf).unwrap().to_vec();
        let mut place = old.clone();
        codec::decode_in_place(&bytes, &mut place).unwrap();
        prop_assert_eq!(&place, &v);
        let mut altered = bytes.clone();
        let i = flip.0.index(altered.len());
        altered[i] ^= flip.1.max(1);
        let mut longer = bytes.clone();
        longer.push(0);
        for b in [bytes[..cut.index(bytes.len())].to_vec(), altered, longer] {
            let mut place = old.clone();
            prop_assert_eq!(codec::decode_in_place(&b, &mut place).map(|()| place), codec::decode::<SignedConsent>(&b));
        }
    }
    /// A report of a device's own capacity (`UsageOf<4>`) has the same bytes
    /// as the protocol's `Usage` with the same metrics, within its own bound.
    #[test]
    fn small_usage_encodes_as_usage(v in usage()) {
        let Ok(metrics) = heapless::Vec::<Metric, 4>::from_slice(&v.metrics) else { return Ok(()) };
        let small = UsageOf::<4> {
            purpose: v.purpose,
            consent_version: v.consent_version,
            window_start: v.window_start,
            window_end: v.window_end,
            metrics,
        };
        let (mut a, mut b) = (vec![0u8; Usage::MAX_ENCODED_LEN], vec![0u8; UsageOf::<4>::MAX_ENCODED_LEN]);
        let full = codec::encode(&v, &mut a).unwrap();
        prop_assert_eq!(&*codec::encode(&small, &mut b).unwrap(), &*full);
        prop_assert_eq!(codec::decode::<UsageOf<4>>(full).unwrap(), small);
    }
    #[test]
    fn transfer_round_trips(at in any::<u64>(), c in any::<u64>()) { let v = Transfer::unsigned(at, (c % 1000) as u32); round_trip(&v); seal_round_trip(&v, c); }
    #[test]
    fn decommission_round_trips(at in any::<u64>(), r in 0usize..4, c in any::<u64>()) {
        let reason = [DecommissionReason::Recycled, DecommissionReason::Returned, DecommissionReason::Broken, DecommissionReason::Retired][r];
        let v = Decommission { at, reason };
        round_trip(&v);
        seal_round_trip(&v, c);
    }
    #[test]
    fn receipt_round_trips(consent_version in any::<u32>(), consent_digest in any::<[u8; 32]>(), received_at in any::<u64>(), c in any::<u64>()) {
        let v = Receipt { consent_version, consent_digest, received_at };
        round_trip(&v);
        seal_round_trip(&v, c);
    }
    #[test]
    fn notice_round_trips(v in notice(), c in any::<u64>()) { round_trip(&v); seal_round_trip(&v, c); }

    #[test]
    fn header_round_trips(kind in 0usize..9, device in any::<[u8; 8]>(), epoch in any::<u32>(), counter in any::<u64>(), eph in any::<[u8; 32]>()) {
        let kind = Kind::ALL[kind];
        let ephemeral = (kind == Kind::REGISTER).then_some(eph);
        let h = Header { kind, device: DeviceId(device), epoch, counter, ephemeral };
        let mut buf = [0u8; 63];
        let n = h.emit(&mut buf).unwrap();
        prop_assert_eq!(Header::parse(&buf[..n]).unwrap(), (h, n));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_any_decoder(bytes in pvec(any::<u8>(), 0..1400)) {
        let _ = Header::parse(&bytes);
        let _ = codec::decode::<Register>(&bytes);
        let _ = codec::decode::<Usage>(&bytes);
        let _ = codec::decode::<Fault>(&bytes);
        let _ = codec::decode::<ConsentUpdate>(&bytes);
        let _ = codec::decode::<Transfer>(&bytes);
        let _ = codec::decode::<Decommission>(&bytes);
        let _ = codec::decode::<Receipt>(&bytes);
        let _ = codec::decode::<Notice>(&bytes);
        let _ = codec::decode::<spime::message::KeyUpdate>(&bytes);
        let _ = codec::decode::<ConsentState>(&bytes);
        let _ = codec::decode::<SignedConsent>(&bytes);
        // the device's in-place decoder gives the same verdict and value
        let mut place = SignedConsent { state: ConsentState::essential_only(9, 9, [9; 32]), owner: None };
        prop_assert_eq!(codec::decode_in_place(&bytes, &mut place).map(|()| place), codec::decode::<SignedConsent>(&bytes));
        if let Ok(env) = Envelope::parse(&bytes) {
            let mut buf = vec![0u8; env.plaintext_len()];
            let _ = env.decrypt(&session().0, &mut buf);
        }
    }

    #[test]
    fn arbitrary_bodies_under_a_valid_seal_never_panic(body in pvec(any::<u8>(), 0..600), kind in 0usize..9) {
        // Bytes that pass the AEAD and signature checks reach the body decoders.
        let kind = Kind::ALL[kind];
        let (keys, eph) = session();
        let h = Header { kind, device: DEVICE_ID, epoch: EPOCH, counter: 9, ephemeral: (kind == Kind::REGISTER).then_some(eph) };
        let mut sealed = vec![0u8; 1400];
        let hl = h.emit(&mut sealed).unwrap();
        sealed.truncate(hl);
        use ed25519_dalek::Signer;
        let sig = device().signing().sign(&[seal::MESSAGE_DST, &sealed, &body].concat());
        let mut plain = [body.as_slice(), &sig.to_bytes()].concat();
        use chacha20poly1305::aead::{AeadInOut, KeyInit};
        let key = keys.key(kind.direction());
        let tag = chacha20poly1305::ChaCha20Poly1305::new(key.as_bytes().into())
            .encrypt_inout_detached(&seal::nonce(kind.direction(), 9).into(), &sealed, plain.as_mut_slice().into()).unwrap();
        sealed.extend_from_slice(&plain);
        sealed.extend_from_slice(&tag);
        let env = Envelope::parse(&sealed).unwrap();
        let mut buf = vec![0u8; env.plaintext_len()];
        let v = env.decrypt(&keys, &mut buf).unwrap().verify(&device().public()).unwrap();
        let _ = v.decode::<Register>();
        let _ = v.decode::<Usage>();
        let _ = v.decode::<Fault>();
        let _ = v.decode::<ConsentUpdate>();
        let _ = v.decode::<Notice>();
    }

    #[test]
    fn parts_verifier_agrees_with_verify_strict(msg in pvec(any::<u8>(), 0..200), seed in any::<[u8; 32]>(), flip in any::<Option<(usize, u8)>>()) {
        use ed25519_dalek::{Signer, SigningKey};
        let key = SigningKey::from_bytes(&seed);
        let (h, b) = msg.split_at(msg.len() / 3);
        let full = [seal::MESSAGE_DST, h, b].concat();
        let mut sig = key.sign(&full).to_bytes();
        if let Some((i, bit)) = flip {
            sig[i % 64] ^= 1 << (bit % 8);
        }
        let strict = key.verifying_key().verify_strict(&full, &ed25519_dalek::Signature::from_bytes(&sig)).is_ok();
        let parts = seal::verify_signature(&key.verifying_key(), h, b, &sig).is_ok();
        prop_assert_eq!(strict, parts);
    }
}

/// The largest value of each type encodes to exactly its published maximum,
/// so the constants are tight as well as safe.
#[test]
fn maximum_lengths_are_exact() {
    let big_purpose = Purpose::from_id(0xffff).unwrap();
    let fw = FirmwareVersion { major: u16::MAX, minor: u16::MAX, patch: u16::MAX, build: u32::MAX };
    let grants = (0..MAX_GRANTS as u16)
        .map(|i| Grant {
            purpose: Purpose::from_id(0xffff - i).unwrap(),
            categories: CategorySet::ALL,
            location: LocationPrecision::Exact,
            expires_at: Some(u64::MAX),
        })
        .rev();
    let state =
        ConsentState {
            version: u32::MAX,
            issued_at: u64::MAX - MAX_RECONFIRM,
            reconfirm_by: u64::MAX,
            notice_hash: [0xff; 32],
            grants: heapless::Vec::from_iter(grants),
            contact: ContactPrefs {
                grants: heapless::Vec::from_iter((0..MAX_CONTACT_GRANTS as u16).rev().map(|i| ContactGrant {
                    purpose: Purpose::from_id(0xffff - i).unwrap(),
                    channels: ChannelSet::ALL,
                })),
                quiet_hours: Some(QuietHours { start_minute: 1439, end_minute: 1438, utc_offset_minutes: -840 }),
                caps: heapless::Vec::from_iter((0..MAX_CAPS as u16).rev().map(|i| FrequencyCap {
                    purpose: Purpose::from_id(0xffff - i).unwrap(),
                    max_notices: u16::MAX,
                    period_seconds: u32::MAX,
                })),
                muted_topics: heapless::Vec::from_iter((0..MAX_MUTED_TOPICS as u16).map(|i| 0xffff - 15 + i)),
            },
        };
    let consent = SignedConsent {
        state: state.clone(),
        owner: Some(OwnerProof { owner_key: [0xff; 32], signature: bytes64(0xff) }),
    };
    let max_string = |n: usize| "€".repeat(n / 3) + &"x".repeat(n % 3);
    let register = Register {
        certificate: DeviceCertificate {
            body: CertificateBody {
                device: DeviceId([0xff; 8]),
                device_key: [0xff; 32],
                model: max_string(32).as_str().try_into().unwrap(),
                hardware_revision: u16::MAX,
                issued_at: u64::MAX,
                not_after: Some(u64::MAX),
            },
            signature: bytes64(0xff),
        },
        firmware: fw,
        consent: consent.clone(),
        transfer: Some(Transfer {
            at: u64::MAX,
            consent_version: u32::MAX,
            owner: Some(OwnerProof { owner_key: [0xff; 32], signature: bytes64(0xff) }),
        }),
    };
    let usage = Usage {
        purpose: big_purpose,
        consent_version: u32::MAX,
        window_start: u64::MAX,
        window_end: u64::MAX,
        metrics: heapless::Vec::from_iter((0..MAX_METRICS as u16).map(|i| Metric {
            id: 0xffff - 15 + i,
            category: DataCategory::UsageCounters,
            value: MetricValue::Histogram(heapless::Vec::from_slice(&[u32::MAX; MAX_BUCKETS]).unwrap()),
        })),
    };
    let fault = Fault {
        purpose: big_purpose,
        consent_version: u32::MAX,
        code: u32::MAX,
        severity: Severity::Critical,
        component: u16::MAX,
        firmware: fw,
        uptime_s: u32::MAX,
        reboot_reason: RebootReason::Unknown,
        occurrences: u32::MAX,
        first_seen: u64::MAX,
        last_seen: u64::MAX,
        context: heapless::Vec::from_slice(&[0xff; MAX_FAULT_CONTEXT]).unwrap(),
    };
    let notice = Notice {
        id: u32::MAX,
        purpose: big_purpose,
        channel: Channel::Sms,
        topic: u16::MAX,
        kind: NoticeKind::UpdateAvailable,
        issued_at: u64::MAX,
        expires_at: u64::MAX,
        title: max_string(MAX_NOTICE_TITLE).as_str().try_into().unwrap(),
        text: max_string(MAX_NOTICE_TEXT).as_str().try_into().unwrap(),
    };
    fn exact<T: Canonical + PartialEq + std::fmt::Debug>(v: &T, name: &str) {
        assert_eq!(codec::encoded_len(v).unwrap(), T::MAX_ENCODED_LEN, "{name}");
        round_trip(v);
    }
    exact(&state, "ConsentState");
    exact(&consent, "SignedConsent");
    exact(&register, "Register");
    exact(&usage, "Usage");
    exact(&fault, "Fault");
    exact(&ConsentUpdate { consent }, "ConsentUpdate");
    exact(
        &Transfer {
            at: u64::MAX,
            consent_version: u32::MAX,
            owner: Some(OwnerProof { owner_key: [0xff; 32], signature: bytes64(0xff) }),
        },
        "Transfer",
    );
    exact(&Decommission { at: u64::MAX, reason: DecommissionReason::Retired }, "Decommission");
    exact(&Receipt { consent_version: u32::MAX, consent_digest: [0xff; 32], received_at: u64::MAX }, "Receipt");
    exact(&notice, "Notice");
    exact(&fw, "FirmwareVersion");
}

// The hand-written device codec (`codec::fixed`) against the serde path:
// the same bytes for every value, and for any input the same verdict and
// the same value.

/// Errors of the parse itself, which the two decoders may name differently
/// (see `codec::fixed`): the first fault met, or postcard's after a full parse.
fn parse_error(e: &spime::error::DecodeError) -> bool {
    use spime::error::DecodeError::*;
    matches!(e, Malformed | TrailingBytes | NonCanonical)
}

fn same_verdict<T: PartialEq + std::fmt::Debug>(
    serde: &Result<T, spime::error::DecodeError>,
    hand: &Result<T, spime::error::DecodeError>,
    bytes: &[u8],
) -> Result<(), TestCaseError> {
    match (serde, hand) {
        (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
        (Err(a), Err(b)) if parse_error(a) => prop_assert!(parse_error(b), "serde {a:?}, fixed {b:?} for {bytes:02x?}"),
        (Err(a), Err(b)) => prop_assert_eq!(a, b),
        _ => prop_assert!(false, "serde {serde:?}, fixed {hand:?} for {bytes:02x?}"),
    }
    Ok(())
}

/// Both decoders on `bytes` agree.
fn same_decode<T: Canonical + Fixed + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> Result<(), TestCaseError> {
    same_verdict(&codec::decode::<T>(bytes), &fixed::decode::<T>(bytes), bytes)
}

/// Every decoder the device may use for a consent (`decode`, in place over
/// `old`) agrees with serde's.
fn same_consent_decode(bytes: &[u8], old: &SignedConsent) -> Result<(), TestCaseError> {
    same_decode::<SignedConsent>(bytes)?;
    same_decode::<ConsentUpdate>(bytes)?;
    let mut place = old.clone();
    let hand = fixed::decode_in_place(bytes, &mut place).map(|()| place);
    same_verdict(&codec::decode::<SignedConsent>(bytes), &hand, bytes)
}

/// The same bytes and length from both encoders, and the same refusal of a
/// buffer one byte short; the bytes.
fn same_encode<T: Canonical + Fixed>(v: &T) -> Result<Vec<u8>, TestCaseError> {
    let (mut a, mut b) = (vec![0u8; T::MAX_ENCODED_LEN], vec![0u8; T::MAX_ENCODED_LEN]);
    let serde = codec::encode(v, &mut a).unwrap().to_vec();
    prop_assert_eq!(&fixed::encode(v, &mut b).unwrap().to_vec(), &serde);
    prop_assert_eq!(fixed::encoded_len(v).unwrap(), serde.len());
    let short = serde.len().saturating_sub(1);
    prop_assert_eq!(
        fixed::encode(v, &mut b[..short]).map(|x| x.to_vec()),
        codec::encode(v, &mut a[..short]).map(|x| x.to_vec())
    );
    Ok(serde)
}

type Mutations = Vec<(prop::sample::Index, u8, u8)>;

/// Up to four edits: replace, insert, delete a byte, truncate, or flip a
/// varint continuation bit.
fn mutations() -> impl Strategy<Value = Mutations> {
    pvec((any::<prop::sample::Index>(), any::<u8>(), 0u8..5), 1..=4)
}

fn mutate(bytes: &[u8], edits: &Mutations) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for (i, v, op) in edits {
        let at = i.index(b.len() + 1);
        match op {
            0 if at < b.len() => b[at] = *v,
            1 => b.insert(at, *v),
            2 if at < b.len() => {
                b.remove(at);
            }
            3 => b.truncate(at),
            4 if at < b.len() => b[at] ^= 0x80,
            _ => {}
        }
    }
    b
}

/// Encodes alike, decodes back to `v` with both, and agrees on mutations.
fn fixed_agrees<T: Canonical + Fixed + PartialEq + std::fmt::Debug>(
    v: &T,
    edits: &Mutations,
) -> Result<(), TestCaseError> {
    let bytes = same_encode(v)?;
    prop_assert_eq!(&fixed::decode::<T>(&bytes).unwrap(), v);
    same_decode::<T>(&bytes)?;
    same_decode::<T>(&mutate(&bytes, edits))
}

fn owner_proof() -> impl Strategy<Value = Option<OwnerProof>> {
    any::<Option<([u8; 32], u8)>>()
        .prop_map(|o| o.map(|(owner_key, b)| OwnerProof { owner_key, signature: Bytes64([b; 64]) }))
}

fn transfer() -> impl Strategy<Value = Transfer> {
    (any::<u64>(), any::<u32>(), owner_proof()).prop_map(|(at, consent_version, owner)| Transfer {
        at,
        consent_version,
        owner,
    })
}

/// A Register with every optional part: a certificate expiry, a Transfer.
fn register_full() -> impl Strategy<Value = Register> {
    (register(), any::<Option<u32>>(), proptest::option::of(transfer())).prop_map(|(mut r, d, transfer)| {
        r.certificate.body.not_after = d.map(|d| r.certificate.body.issued_at.saturating_add(u64::from(d)));
        r.transfer = transfer;
        r
    })
}

/// Bytes drawn mostly from the values where the encodings branch (tags,
/// varint boundaries), so that random input gets past the first field.
fn tricky_bytes() -> impl Strategy<Value = Vec<u8>> {
    pvec(
        prop_oneof![Just(0u8), Just(1), Just(2), Just(3), Just(0x7f), Just(0x80), Just(0x81), Just(0xff), any::<u8>()],
        0..800,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn fixed_agrees_on_register(v in register_full(), m in mutations()) { fixed_agrees(&v, &m)?; }
    #[test]
    fn fixed_agrees_on_usage(v in usage(), m in mutations()) {
        fixed_agrees(&v, &m)?;
        // a device's own capacity: the same bytes as `Usage`
        if let Ok(metrics) = heapless::Vec::<Metric, 4>::from_slice(&v.metrics) {
            let small = UsageOf::<4> { purpose: v.purpose, consent_version: v.consent_version, window_start: v.window_start, window_end: v.window_end, metrics };
            fixed_agrees(&small, &m)?;
        }
    }
    #[test]
    fn fixed_agrees_on_fault(v in fault(), m in mutations()) { fixed_agrees(&v, &m)?; }
    #[test]
    fn fixed_agrees_on_consent(v in signed_consent(), old in signed_consent(), m in mutations()) {
        fixed_agrees(&v, &m)?;
        fixed_agrees(&v.state, &m)?;
        fixed_agrees(&ConsentUpdate { consent: v.clone() }, &m)?;
        let bytes = same_encode(&v)?;
        same_consent_decode(&bytes, &old)?;
        same_consent_decode(&mutate(&bytes, &m), &old)?;
    }
    #[test]
    fn fixed_agrees_on_transfer(v in transfer(), m in mutations()) { fixed_agrees(&v, &m)?; }
    #[test]
    fn fixed_agrees_on_decommission(at in any::<u64>(), r in 0usize..4, m in mutations()) {
        let reason = [DecommissionReason::Recycled, DecommissionReason::Returned, DecommissionReason::Broken, DecommissionReason::Retired][r];
        fixed_agrees(&Decommission { at, reason }, &m)?;
    }
    #[test]
    fn fixed_agrees_on_receipt(consent_version in any::<u32>(), consent_digest in any::<[u8; 32]>(), received_at in any::<u64>(), m in mutations()) {
        fixed_agrees(&Receipt { consent_version, consent_digest, received_at }, &m)?;
    }
    #[test]
    fn fixed_agrees_on_notice(v in notice(), m in mutations()) { fixed_agrees(&v, &m)?; }
    #[test]
    fn fixed_agrees_on_firmware_version(v in firmware(), m in mutations()) { fixed_agrees(&v, &m)?; }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    /// Any bytes: the same verdict from both decoders, for every type.
    #[test]
    fn fixed_agrees_on_any_bytes(bytes in prop_oneof![pvec(any::<u8>(), 0..1400), tricky_bytes()], old in signed_consent()) {
        same_decode::<Register>(&bytes)?;
        same_decode::<Usage>(&bytes)?;
        same_decode::<UsageOf<4>>(&bytes)?;
        same_decode::<Fault>(&bytes)?;
        same_consent_decode(&bytes, &old)?;
        same_decode::<ConsentState>(&bytes)?;
        same_decode::<Transfer>(&bytes)?;
        same_decode::<Decommission>(&bytes)?;
        same_decode::<Receipt>(&bytes)?;
        same_decode::<Notice>(&bytes)?;
        same_decode::<FirmwareVersion>(&bytes)?;
        same_decode::<CertificateBody>(&bytes)?;
    }
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// Every body of the published vectors, and every consent state, decodes
/// alike (and the valid ones re-encode to their bytes).
#[test]
fn fixed_agrees_on_the_vectors() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let valid: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("valid.json")).unwrap()).unwrap();
    let mut seen = 0;
    for m in valid["messages"].as_array().unwrap() {
        let body = unhex(m["body_hex"].as_str().unwrap());
        let check = match m["kind"].as_u64().unwrap() {
            0x01 => same_decode::<Register>(&body),
            0x02 => same_decode::<Usage>(&body),
            0x03 => same_decode::<Fault>(&body),
            0x04 => same_decode::<ConsentUpdate>(&body),
            0x05 => same_decode::<Transfer>(&body),
            0x06 => same_decode::<Decommission>(&body),
            0x81 => same_decode::<Receipt>(&body),
            0x82 => same_decode::<Notice>(&body),
            0x83 => continue, // KeyUpdate: not a device codec type
            other => panic!("unknown kind {other}"),
        };
        check.unwrap();
        seen += 1;
    }
    assert!(seen > 20, "only {seen} vectors");
    let consent: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("consent.json")).unwrap()).unwrap();
    for s in consent["states"].as_array().unwrap() {
        let bytes = unhex(s["hex"].as_str().unwrap());
        same_decode::<ConsentState>(&bytes).unwrap();
        let state: ConsentState = fixed::decode(&bytes).unwrap();
        assert_eq!(same_encode(&state).unwrap(), bytes);
    }
}
