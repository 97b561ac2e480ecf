//! Consent proofs end to end through sealed envelopes: owner signatures,
//! receipts, forged and misdirected consent, the ledger, and the property
//! that no byte of a denied category is ever sealed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "consent_support/mod.rs"]
mod common;

use common::*;
use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use spime::codec;
use spime::consent::ledger::{ConsentEvent, ConsentLedger, LedgerError, Proof};
use spime::consent::*;
use spime::error::OpenError;
use spime::message::*;
use spime::seal::{self, Envelope, Seal};

const DH: DataCategory = DataCategory::DeviceHealth;
const UC: DataCategory = DataCategory::UsageCounters;
const LOC: DataCategory = DataCategory::Location;

fn owner() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn granted(version: u32, at: u64) -> ConsentState {
    let mut s = ConsentState::essential_only(version, at, [0x11; 32]);
    s.set_grant(Grant {
        purpose: Purpose::USAGE_ANALYTICS,
        categories: cats(&[UC, LOC]),
        location: LocationPrecision::City,
        expires_at: None,
    })
    .unwrap();
    s.set_contact(Purpose::PROACTIVE_SERVICE, chans(&[Channel::App])).unwrap();
    s
}

/// Seals `body` from the device (or `signer`) and opens it as the vendor
/// with the device's key; returns the proof or the open error.
fn seal_open<B: Body>(w: &World, body: &B, counter: u64, signer: &SigningKey) -> Result<Proof, OpenError> {
    let mut out = vec![0u8; B::MAX_SEALED_LEN];
    let eph = (B::KIND == spime::wire::Kind::REGISTER).then_some(w.eph);
    let n = seal::seal(
        &mut out,
        &Seal { device: w.device.device, epoch: 1, counter, ephemeral: eph },
        body,
        signer,
        &w.keys,
    )
    .unwrap();
    let env = Envelope::parse(&out[..n])?;
    let keys = w.vendor.accept_epoch(&w.device.device, 1, &w.eph)?;
    let mut buf = vec![0u8; n];
    let v = env.decrypt(&keys, &mut buf)?.verify(&w.device.public())?;
    v.decode::<B>()?;
    Ok(Proof::from_verified(&v))
}

#[test]
fn owner_signature_accepted_and_pinned() {
    let w = world();
    let s = granted(1, NOW);
    let proof = OwnerProof::sign(&s, &w.device.device, &owner()).unwrap();
    let signed = SignedConsent { state: s.clone(), owner: Some(proof) };
    let pinned = owner().verifying_key().to_bytes();
    assert_eq!(signed.verify_owner(&w.device.device, OwnerRequirement::AnyOwnerKey), Ok(Some(pinned)));
    assert_eq!(signed.verify_owner(&w.device.device, OwnerRequirement::OwnerKey(&pinned)), Ok(Some(pinned)));
    assert_eq!(signed.verify_owner(&w.device.device, OwnerRequirement::DeviceOnBehalf), Ok(Some(pinned)));
    // and it travels in a device-signed envelope
    let proof = seal_open(&w, &ConsentUpdate { consent: signed }, 1, w.device.signing()).unwrap();
    proof.verify(&w.device.public()).unwrap();
}

#[test]
fn unsigned_consent_where_owner_signature_required() {
    let w = world();
    let signed = SignedConsent { state: granted(1, NOW), owner: None };
    let pinned = owner().verifying_key().to_bytes();
    assert_eq!(signed.verify_owner(&w.device.device, OwnerRequirement::DeviceOnBehalf), Ok(None));
    assert_eq!(
        signed.verify_owner(&w.device.device, OwnerRequirement::AnyOwnerKey),
        Err(ConsentError::OwnerProofMissing)
    );
    assert_eq!(
        signed.verify_owner(&w.device.device, OwnerRequirement::OwnerKey(&pinned)),
        Err(ConsentError::OwnerProofMissing)
    );
}

#[test]
fn owner_proof_with_bad_signature() {
    let w = world();
    let s = granted(1, NOW);
    let mut proof = OwnerProof::sign(&s, &w.device.device, &owner()).unwrap();
    proof.signature.0[10] ^= 1;
    let signed = SignedConsent { state: s.clone(), owner: Some(proof) };
    // a bad proof is refused even where none is required
    for req in [OwnerRequirement::DeviceOnBehalf, OwnerRequirement::AnyOwnerKey] {
        assert_eq!(signed.verify_owner(&w.device.device, req), Err(ConsentError::OwnerProofInvalid));
    }
    // a proof over another state (the vendor widening what the owner signed)
    let proof = OwnerProof::sign(&s, &w.device.device, &owner()).unwrap();
    let mut widened = s.clone();
    widened
        .set_grant(Grant {
            purpose: Purpose::MARKETING,
            categories: cats(&[UC]),
            location: LocationPrecision::None,
            expires_at: None,
        })
        .unwrap();
    let forged = SignedConsent { state: widened, owner: Some(proof) };
    assert_eq!(
        forged.verify_owner(&w.device.device, OwnerRequirement::AnyOwnerKey),
        Err(ConsentError::OwnerProofInvalid)
    );
    // an owner key that is not a valid point
    let mut p = proof;
    p.owner_key = [0xff; 32];
    assert!(p.verify(&s, &w.device.device).is_err());
    // a non-canonical state cannot be signed or verified
    let mut bad = s.clone();
    bad.reconfirm_by = bad.issued_at;
    assert!(matches!(OwnerProof::sign(&bad, &w.device.device, &owner()), Err(ConsentError::Decode(_))));
    assert!(matches!(proof.verify(&bad, &w.device.device), Err(ConsentError::Decode(_))));
}

#[test]
fn consent_signed_by_the_vendor_is_refused() {
    let w = world();
    let s = granted(1, NOW);
    // the vendor signs an owner proof with its own key: not the pinned owner key
    let by_vendor = OwnerProof::sign(&s, &w.device.device, w.vendor.signing()).unwrap();
    let signed = SignedConsent { state: s.clone(), owner: Some(by_vendor) };
    let pinned = owner().verifying_key().to_bytes();
    assert_eq!(
        signed.verify_owner(&w.device.device, OwnerRequirement::OwnerKey(&pinned)),
        Err(ConsentError::OwnerKeyMismatch)
    );
    // the vendor seals a consent message "from" the device: the envelope does not verify with the device key
    let body = ConsentUpdate { consent: SignedConsent { state: s, owner: None } };
    assert_eq!(seal_open(&w, &body, 1, w.vendor.signing()).unwrap_err(), OpenError::Unauthentic);
    // nor can it be sealed as a vendor-to-device kind
    let mut out = vec![0u8; ConsentUpdate::MAX_SEALED_LEN];
    assert!(seal::seal_from_vendor(&mut out, w.device.device, 1, &body, &w.vendor, &w.keys).is_err());
}

#[test]
fn consent_signed_by_another_device_is_refused() {
    let w = world();
    let s = granted(1, NOW);
    // the owner's proof names the device: replayed for another device it fails
    let proof = OwnerProof::sign(&s, &w.other.device, &owner()).unwrap();
    let signed = SignedConsent { state: s.clone(), owner: Some(proof) };
    assert_eq!(
        signed.verify_owner(&w.device.device, OwnerRequirement::AnyOwnerKey),
        Err(ConsentError::OwnerProofInvalid)
    );
    // another device's key signing an envelope in this device's name
    let body = ConsentUpdate { consent: SignedConsent { state: s, owner: None } };
    assert_eq!(seal_open(&w, &body, 1, w.other.signing()).unwrap_err(), OpenError::Unauthentic);
}

#[test]
fn receipts() {
    let w = world();
    let signed = SignedConsent {
        state: granted(3, NOW),
        owner: Some(OwnerProof::sign(&granted(3, NOW), &w.device.device, &owner()).unwrap()),
    };
    let sent = [
        SentConsent::of(&SignedConsent { state: granted(2, NOW), owner: None }).unwrap(),
        SentConsent::of(&signed).unwrap(),
    ];
    // the vendor receipts what it received, exactly
    let proof = seal_open(&w, &ConsentUpdate { consent: signed.clone() }, 1, w.device.signing()).unwrap();
    let receipt = receipt_for(&proof.body, NOW + 1).unwrap();
    assert_eq!(receipt.consent_version, 3);
    let mut out = vec![0u8; Receipt::MAX_SEALED_LEN];
    let n = seal::seal_from_vendor(&mut out, w.device.device, 1, &receipt, &w.vendor, &w.keys).unwrap();
    // the device opens it with the vendor's key
    let env = Envelope::parse(&out[..n]).unwrap();
    let mut buf = vec![0u8; n];
    let got: Receipt =
        env.decrypt(&w.keys, &mut buf).unwrap().verify(&w.vendor.public().signing).unwrap().decode().unwrap();
    assert_eq!(verify_receipt(&got, &sent), Ok(()));
    // a receipt for a version the device never sent
    let unknown = Receipt { consent_version: 9, ..got };
    assert_eq!(verify_receipt(&unknown, &sent), Err(ConsentError::ReceiptUnknownVersion(9)));
    // a receipt for a sent version but other content
    let other = Receipt { consent_digest: [0; 32], ..got };
    assert_eq!(verify_receipt(&other, &sent), Err(ConsentError::ReceiptMismatch(3)));
    let wrong_version = Receipt { consent_version: 2, ..got };
    assert_eq!(verify_receipt(&wrong_version, &sent), Err(ConsentError::ReceiptMismatch(2)));
    assert!(receipt_for(&[1, 2, 3], NOW).is_err());
}

#[test]
fn vendor_ignores_older_and_conflicting_states() {
    let held = granted(5, NOW);
    assert_eq!(held.judge_update(&granted(6, NOW)), Ok(true));
    assert_eq!(held.judge_update(&held.clone()), Ok(false));
    assert_eq!(held.judge_update(&granted(4, NOW + 99)), Err(ConsentError::Stale { held: 5, got: 4 }));
    let mut other = held.clone();
    other.withdraw_all();
    assert_eq!(held.judge_update(&other), Err(ConsentError::Conflict(5)));
}

fn marker(id: u16) -> u64 {
    0xA5A5_0000_0000_5A5A | (u64::from(id) << 16)
}

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Seal what the permit builds, open it as the vendor: no metric of a
    /// denied category (found by its unique marker bytes), no location
    /// finer than granted, no fault context unless granted.
    #[test]
    fn no_denied_byte_is_ever_sealed(s in state(), p in purpose(), ms in metrics(), dt in 0u64..300_000, with_ctx in any::<bool>()) {
        let w = world();
        let now = NOW - 100_000 + dt;
        let ms: Vec<Metric> = ms.into_iter().map(|mut m| {
            if let MetricValue::Counter(_) = m.value { m.value = MetricValue::Counter(marker(m.id)); }
            m
        }).collect();
        let Ok(permit) = s.grant_permit(p, now) else { return Ok(()) };
        let Ok(usage) = permit.usage(now - 60, now, ms.iter().take(16).cloned()) else { return Ok(()) };
        let proof = seal_open(&w, usage.as_body(), 1, w.device.signing()).unwrap();
        let opened: Usage = codec::decode(&proof.body).unwrap();
        prop_assert_eq!(&opened, usage.as_body());
        prop_assert_eq!(s.check_usage(&opened, now), Ok(()));
        for m in ms.iter().take(16) {
            if !permit.categories().contains(m.category) && m.category != LOC {
                prop_assert!(!contains(&proof.body, &varint(marker(m.id))), "denied metric {} leaked", m.id);
            }
        }
        for m in &opened.metrics {
            prop_assert!(permit.categories().contains(m.category));
            if let MetricValue::Location { lat_e7, lon_e7, precision } = m.value {
                prop_assert!(precision <= permit.location());
                prop_assert_eq!(precision.coarsen(lat_e7), Some(lat_e7));
                prop_assert_eq!(precision.coarsen(lon_e7), Some(lon_e7));
            }
        }
        // fault context
        let secret = b"\xC3\x9Fsecret-context-bytes\xC3\x9F";
        let draft = FaultDraft {
            code: 1, severity: Severity::Info, component: 1,
            firmware: FirmwareVersion { major: 1, minor: 0, patch: 0, build: 0 },
            uptime_s: 1, reboot_reason: RebootReason::None, occurrences: 1, first_seen: now, last_seen: now,
            context: heapless::Vec::from_slice(if with_ctx { secret } else { b"" }).unwrap(),
        };
        if let Ok(fault) = permit.fault(draft) {
            let proof = seal_open(&w, fault.as_body(), 2, w.device.signing()).unwrap();
            let opened: Fault = codec::decode(&proof.body).unwrap();
            prop_assert_eq!(s.check_fault(&opened, now), Ok(()));
            if !permit.categories().contains(DataCategory::FaultContext) {
                prop_assert!(!contains(&proof.body, b"secret-context-bytes"));
            }
        } else {
            prop_assert!(!permit.categories().contains(DH));
        }
    }
}

fn register(w: &World, consent: SignedConsent) -> Register {
    Register {
        certificate: w.cert.clone(),
        firmware: FirmwareVersion { major: 1, minor: 0, patch: 0, build: 1 },
        consent,
        transfer: None,
    }
}

fn update(s: ConsentState) -> ConsentUpdate {
    ConsentUpdate { consent: SignedConsent { state: s, owner: None } }
}

/// A ledger of a device's life: given, narrowed, withdrawn, a late older
/// grant refused, expired, reset on transfer, given by the next owner.
fn life(w: &World) -> ConsentLedger {
    let mut l = ConsentLedger::new(w.device.device);
    let v1 = granted(1, NOW);
    let signed =
        SignedConsent { state: v1.clone(), owner: Some(OwnerProof::sign(&v1, &w.device.device, &owner()).unwrap()) };
    let e = l.record_state(seal_open(w, &register(w, signed), 0, w.device.signing()).unwrap(), NOW).unwrap();
    assert_eq!((e.event, e.version), (ConsentEvent::Given, 1));
    let mut v2 = v1.successor(NOW + 10, [0x11; 32]).unwrap();
    v2.narrow(Purpose::USAGE_ANALYTICS, cats(&[UC]), LocationPrecision::None).unwrap();
    let v2_proof = seal_open(w, &update(v2.clone()), 1, w.device.signing()).unwrap();
    assert_eq!(l.record_state(v2_proof.clone(), NOW + 11).unwrap().event, ConsentEvent::Narrowed);
    let mut v3 = v2.successor(NOW + 20, [0x11; 32]).unwrap();
    v3.withdraw_all();
    assert_eq!(
        l.record_state(seal_open(w, &update(v3.clone()), 2, w.device.signing()).unwrap(), NOW + 21).unwrap().event,
        ConsentEvent::Withdrawn
    );
    // the late v2 is refused
    assert_eq!(l.record_state(v2_proof, NOW + 22).unwrap_err(), LedgerError::VersionNotForward { held: 3, got: 2 });
    assert_eq!(l.record_expiry(NOW + 23).unwrap(), None);
    let lapse = v3.reconfirm_by;
    assert_eq!(l.record_expiry(lapse).unwrap().unwrap().event, ConsentEvent::Expired);
    assert_eq!(l.record_expiry(lapse + 1).unwrap(), None, "recorded once");
    let t = seal_open(w, &Transfer::unsigned(lapse + 5, 3), 3, w.device.signing()).unwrap();
    let e = l.append(ConsentEvent::ResetOnTransfer, t, lapse + 6).unwrap();
    assert_eq!(e.version, 4);
    assert_eq!(l.current_state().unwrap(), v3.reset_for_transfer(lapse + 5).unwrap());
    let mut v5 = l.current_state().unwrap().successor(lapse + 100, [0x22; 32]).unwrap();
    v5.set_grant(Grant {
        purpose: Purpose::DIAGNOSTICS,
        categories: cats(&[DH]),
        location: LocationPrecision::None,
        expires_at: None,
    })
    .unwrap();
    let e = l
        .record_state(
            seal_open(w, &register(w, SignedConsent { state: v5, owner: None }), 4, w.device.signing()).unwrap(),
            lapse + 101,
        )
        .unwrap();
    assert_eq!((e.event, e.version), (ConsentEvent::Given, 5));
    l
}

#[test]
fn ledger_records_a_life_and_verifies() {
    let w = world();
    let l = life(&w);
    assert_eq!(l.entries().len(), 6);
    l.verify_chain().unwrap();
    l.verify_proofs(&w.device.public()).unwrap();
    assert_eq!(l.verify_proofs(&w.other.public()), Err(LedgerError::BadProof(0)));
    assert_eq!(l.current_version(), Some(5));
    // nothing of the first owner's consent carries over
    let now = l.entries()[5].at;
    let held = l.current_state().unwrap();
    assert!(held.grant(Purpose::USAGE_ANALYTICS).is_none());
    assert!(held.contact.grants.is_empty());
    // "withdrawn at version N"
    let d = held.may_collect(Purpose::USAGE_ANALYTICS, cats(&[UC]), LocationPrecision::None, now).unwrap_err();
    assert_eq!(l.explain(d), Denial::Withdrawn { purpose: Purpose::USAGE_ANALYTICS, missing: cats(&[UC]), version: 3 });
    let d = held.may_collect(Purpose::USAGE_ANALYTICS, cats(&[LOC]), LocationPrecision::City, now).unwrap_err();
    assert_eq!(
        l.explain(d),
        Denial::Withdrawn { purpose: Purpose::USAGE_ANALYTICS, missing: cats(&[LOC]), version: 2 }
    );
    let d = held.may_collect(Purpose::RESEARCH, cats(&[UC]), LocationPrecision::None, now).unwrap_err();
    assert_eq!(l.explain(d), d, "never granted stays NotGranted");
    let text = l.export();
    for needle in [
        "given",
        "narrowed",
        "withdrawn",
        "expired",
        "reset on transfer",
        "granted for usage-analytics: usage-counters+location (location to city precision)",
        "signed by the owner's key",
        "2026-11-23 12:00:00 UTC",
        "may contact for proactive-service by app",
    ] {
        assert!(text.contains(needle), "export lacks {needle:?}:\n{text}");
    }
    // persisted and restored
    let json = serde_json::to_string(l.entries()).unwrap();
    let back: Vec<spime::consent::ledger::LedgerEntry> = serde_json::from_str(&json).unwrap();
    assert_eq!(ConsentLedger::from_entries(w.device.device, back).unwrap(), l);
}

#[test]
fn ledger_detects_tampering() {
    let w = world();
    let l = life(&w);
    let mut e = l.entries().to_vec();
    e[1].at += 1;
    assert_eq!(ConsentLedger::from_entries(w.device.device, e).unwrap_err(), LedgerError::BrokenChain(1));
    let mut e = l.entries().to_vec();
    e.remove(2);
    assert_eq!(ConsentLedger::from_entries(w.device.device, e).unwrap_err(), LedgerError::BrokenChain(2));
    let mut e = l.entries().to_vec();
    e.swap(1, 2);
    assert_eq!(ConsentLedger::from_entries(w.device.device, e).unwrap_err(), LedgerError::BrokenChain(1));
    // a rewritten body with a recomputed hash still fails its signature
    let mut e = l.entries().to_vec();
    let last = e.len() - 1;
    e[last].proof.body[5] ^= 1;
    e[last].hash = e[last].compute_hash();
    let forged = ConsentLedger::from_entries(w.device.device, e).unwrap();
    assert_eq!(forged.verify_proofs(&w.device.public()), Err(LedgerError::BadProof(5)));
    // an entry with a version out of order, even with a correct hash
    let mut e = l.entries().to_vec();
    e[1].version = 1;
    e[1].hash = e[1].compute_hash();
    assert_eq!(ConsentLedger::from_entries(w.device.device, e).unwrap_err(), LedgerError::BrokenChain(1));
}

#[test]
fn ledger_append_rejections() {
    let w = world();
    let mut l = ConsentLedger::new(w.device.device);
    let t = seal_open(&w, &Transfer::unsigned(NOW, 0), 1, w.device.signing()).unwrap();
    assert_eq!(l.append(ConsentEvent::ResetOnTransfer, t.clone(), NOW).unwrap_err(), LedgerError::NoState);
    assert!(matches!(l.append(ConsentEvent::Given, t, NOW), Err(LedgerError::WrongKind { .. })));
    let c = seal_open(&w, &update(granted(1, NOW)), 2, w.device.signing()).unwrap();
    assert!(matches!(l.append(ConsentEvent::ResetOnTransfer, c.clone(), NOW), Err(LedgerError::WrongKind { .. })));
    assert_eq!(l.append(ConsentEvent::Expired, c.clone(), NOW).unwrap_err(), LedgerError::NoState);
    l.append(ConsentEvent::Given, c.clone(), NOW).unwrap();
    assert_eq!(l.append(ConsentEvent::Expired, c.clone(), NOW + 1).unwrap_err(), LedgerError::NotExpired);
    assert_eq!(l.append(ConsentEvent::Given, c, NOW).unwrap_err(), LedgerError::VersionNotForward { held: 1, got: 1 });
    // another device's message
    let mut other = ConsentLedger::new(w.other.device);
    let c = seal_open(&w, &update(granted(1, NOW)), 3, w.device.signing()).unwrap();
    assert_eq!(other.append(ConsentEvent::Given, c, NOW).unwrap_err(), LedgerError::WrongDevice);
    let mut garbage = Proof { header: vec![1, 2, 3], body: vec![], signature: spime::codec::Bytes64([0; 64]) };
    assert!(matches!(l.append(ConsentEvent::Given, garbage.clone(), NOW), Err(LedgerError::Decode(_))));
    garbage.header = l.entries()[0].proof.header.clone();
    assert!(matches!(l.append(ConsentEvent::Given, garbage, NOW), Err(LedgerError::Decode(_))));
}

/// Sizes quoted in the report (run with `--nocapture`).
#[test]
fn consent_sizes() {
    let mut typical = granted(7, NOW);
    typical
        .set_grant(Grant {
            purpose: Purpose::DIAGNOSTICS,
            categories: cats(&[DH, DataCategory::FaultContext]),
            location: LocationPrecision::None,
            expires_at: None,
        })
        .unwrap();
    typical
        .set_grant(Grant {
            purpose: Purpose::WARRANTY,
            categories: cats(&[DH]),
            location: LocationPrecision::None,
            expires_at: Some(NOW + 86_400 * 700),
        })
        .unwrap();
    typical.set_contact(Purpose::ESSENTIAL, chans(&[Channel::App, Channel::Email])).unwrap();
    typical.set_quiet_hours(Some(QuietHours { start_minute: 1320, end_minute: 420, utc_offset_minutes: 60 })).unwrap();
    typical
        .set_cap(FrequencyCap { purpose: Purpose::PROACTIVE_SERVICE, max_notices: 2, period_seconds: 7 * 86_400 })
        .unwrap();
    typical.mute(12).unwrap();
    let n = codec::encoded_len(&typical).unwrap();
    let w = world();
    let signed = SignedConsent {
        state: typical.clone(),
        owner: Some(OwnerProof::sign(&typical, &w.device.device, &owner()).unwrap()),
    };
    let ns = codec::encoded_len(&signed).unwrap();
    println!(
        "ConsentState: max {} B encoded, typical {n} B; SignedConsent: max {} B, typical with owner proof {ns} B",
        ConsentState::MAX_ENCODED_LEN,
        <SignedConsent as spime::codec::Canonical>::MAX_ENCODED_LEN
    );
    println!(
        "ConsentUpdate sealed max {} B, Register sealed max {} B",
        ConsentUpdate::MAX_SEALED_LEN,
        Register::MAX_SEALED_LEN
    );
    println!(
        "RAM: ConsentState {} B, SignedConsent {} B, Grant {} B, ContactPrefs {} B, Permit {} B, Scope {} B, Denial {} B, ContactDenial {} B",
        core::mem::size_of::<ConsentState>(),
        core::mem::size_of::<SignedConsent>(),
        core::mem::size_of::<Grant>(),
        core::mem::size_of::<ContactPrefs>(),
        core::mem::size_of::<Permit>(),
        core::mem::size_of::<Scope>(),
        core::mem::size_of::<Denial>(),
        core::mem::size_of::<ContactDenial>()
    );
    assert!(n < ConsentState::MAX_ENCODED_LEN);
}
