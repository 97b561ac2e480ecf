//! Regression tests for the findings of the trust audit (issue 9), each
//! named after its finding. SPEC.md, Security, lists the threat and rule.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use ed25519_dalek::SigningKey;
use spime::consent::*;
use spime::message::*;
use spime::vendor::link::{LINK_BYTES, Reassembly, ReassemblyLimits};
use spime::vendor::sim::{SimDevice, consent};
use spime::vendor::*;
use spime::wire::DeviceId;
use spime::wire::chunk::Chunks;

const NOW: u64 = 1_000_000;

fn vendor_keys() -> spime::seal::VendorKeys {
    spime::seal::VendorKeys::from_secrets(&[1; 32], &[2; 32])
}

fn vendor() -> Ingestor<MemoryStore> {
    Ingestor::new(MemoryStore::new(), vendor_keys(), IngestConfig { workers: 1, batch_verify: false })
}

fn dev(n: u8) -> SimDevice {
    SimDevice::new(DeviceId([n; 8]), [n.wrapping_add(100); 32], &vendor_keys()).unwrap()
}

fn cats(c: &[DataCategory]) -> CategorySet {
    c.iter().fold(CategorySet::EMPTY, |s, &c| s.with(c))
}

fn analytics(version: u32) -> SignedConsent {
    consent(version, &[(Purpose::USAGE_ANALYTICS, cats(&[DataCategory::UsageCounters]))], 0)
}

fn widened(version: u32) -> SignedConsent {
    consent(
        version,
        &[
            (Purpose::USAGE_ANALYTICS, cats(&[DataCategory::UsageCounters])),
            (Purpose::MARKETING, cats(&[DataCategory::UsageCounters])),
            (Purpose::THIRD_PARTY_SHARING, cats(&[DataCategory::UsageCounters])),
        ],
        0,
    )
}

fn signed(mut c: SignedConsent, device: DeviceId, owner: &SigningKey) -> SignedConsent {
    c.owner = Some(OwnerProof::sign(&c.state, &device, owner).unwrap());
    c
}

fn register_body(d: &SimDevice, c: SignedConsent) -> Register {
    Register {
        certificate: d.certificate().clone(),
        firmware: FirmwareVersion { major: 1, minor: 0, patch: 0, build: 0 },
        consent: c,
        transfer: None,
    }
}

/// A Register that opens the next epoch.
fn register(d: &mut SimDevice, c: SignedConsent) -> Vec<u8> {
    let body = register_body(d, c);
    d.seal_new_epoch(&body).unwrap()
}

fn marketing_usage(version: u32) -> Usage {
    let mut metrics = heapless::Vec::new();
    metrics.push(Metric { id: 1, category: DataCategory::UsageCounters, value: MetricValue::Counter(1) }).unwrap();
    Usage { purpose: Purpose::MARKETING, consent_version: version, window_start: 0, window_end: 1, metrics }
}

fn err(r: Outcome) -> IngestError {
    r.unwrap_err()
}

/// Finding 1: 100,000 link ids, each sending one garbage byte, then each
/// sending a valid first chunk of a longest (1,228-byte) message, never
/// hold more than the caps; a genuine message still completes afterwards.
#[test]
fn link_flood_stays_bounded() {
    let limits = ReassemblyLimits { max_links: 1000, max_bytes: 4 << 20 };
    let cap_links = limits.link_capacity();
    assert!(cap_links <= 1000 && cap_links * LINK_BYTES <= limits.max_bytes);
    let mut rx: Reassembly<u32> = Reassembly::with_limits(60, limits);

    // Garbage: one byte per link. Nothing is kept at all.
    for link in 0..100_000u32 {
        assert!(rx.push(&link, 1_000, &[0xa5]).is_err());
        assert_eq!(rx.links(), 0);
    }
    assert_eq!(rx.buffered_bytes(), 0);
    assert_eq!(rx.stats().rejected, 100_000);

    // Valid 6-byte chunks (the last chunk of a message of nearly
    // MAX_SEALED_LEN bytes cut in 5-byte pieces: about the most one 6-byte
    // chunk can claim), 100,000 new links.
    let last = u8::try_from((MAX_SEALED_LEN - 1) / 5).unwrap();
    let frame = [0, 7, last, last, 5, 0x5a];
    let mut most = 0;
    for link in 0..100_000u32 {
        assert_eq!(rx.push(&link, 1_000 + u64::from(link / 10_000), &frame).unwrap(), None);
        most = most.max(rx.links());
        assert!(rx.buffered_bytes() <= limits.max_bytes);
    }
    assert_eq!(most, cap_links);
    assert_eq!(rx.links(), cap_links);
    assert_eq!(rx.stats().evicted, 100_000 - cap_links as u64);

    // The oldest were evicted: the newest links are the ones held, and a
    // genuine sender on a new link still gets its message through.
    let genuine = vec![0x42; 300];
    let mut done = None;
    for c in Chunks::new(&genuine, 1, 64).unwrap() {
        let mut f = [0u8; 64];
        let n = c.write_to(&mut f).unwrap();
        if let Some(m) = rx.push(&u32::MAX, 1_020, &f[..n]).unwrap() {
            done = Some(m);
        }
    }
    assert_eq!(done, Some(genuine));
    assert!(rx.links() <= cap_links);

    // Idle links go on the next push after the timeout, without a call to expire.
    rx.push(&u32::MAX, 2_000, &frame).unwrap();
    assert_eq!(rx.links(), 1);
}

/// Finding 2: with an owner key pinned, a device-signed Transfer followed
/// by a Register with a widened consent and no owner proof used to start
/// relationship 2 with Marketing and ThirdPartySharing granted. Now the
/// change of owner needs the pinned owner's authorisation.
#[test]
fn owner_pin_survives_device_signed_transfer() {
    let v = vendor();
    let owner = SigningKey::from_bytes(&[44; 32]);
    let stranger = SigningKey::from_bytes(&[45; 32]);
    let mut d = dev(1);
    let id = d.id();
    v.ingest(&register(&mut d, signed(analytics(1), id, &owner)), NOW).unwrap();

    let epoch1 = d.session().unwrap().clone();

    // The attack: a Transfer signed by the device only, then a widened Register.
    let unproved = Transfer::unsigned(NOW, 1);
    assert_eq!(err(v.ingest(&d.seal(&unproved).unwrap(), NOW)), IngestError::Consent(ConsentError::OwnerProofMissing));
    assert_eq!(
        err(v.ingest(&register(&mut d, widened(2)), NOW)),
        IngestError::Consent(ConsentError::OwnerProofMissing)
    );
    // The refused Register opened nothing: the vendor still uses epoch 1.
    let usage = d.seal_with(&marketing_usage(2), &epoch1, None).unwrap();
    assert_eq!(err(v.ingest(&usage, NOW)).reason(), "unconsented");

    // Proofs by another key, over other fields, or for another device fail.
    let mut dd = d;
    let mut try_transfer = |t: Transfer| err(v.ingest(&dd.seal_with(&t, &epoch1, None).unwrap(), NOW));
    let by_stranger = OwnerProof::sign_transfer(&id, 1, NOW, &stranger);
    assert_eq!(
        try_transfer(Transfer { at: NOW, consent_version: 1, owner: Some(by_stranger) }),
        IngestError::Consent(ConsentError::OwnerKeyMismatch)
    );
    let other_time = OwnerProof::sign_transfer(&id, 1, NOW + 1, &owner);
    assert_eq!(
        try_transfer(Transfer { at: NOW, consent_version: 1, owner: Some(other_time) }),
        IngestError::Consent(ConsentError::OwnerProofInvalid)
    );
    let other_device = OwnerProof::sign_transfer(&DeviceId([2; 8]), 1, NOW, &owner);
    assert_eq!(
        try_transfer(Transfer { at: NOW, consent_version: 1, owner: Some(other_device) }),
        IngestError::Consent(ConsentError::OwnerProofInvalid)
    );
    let mut d = dd;

    // The owner authorises it: the relationship ends, the pin is dropped.
    let proof = OwnerProof::sign_transfer(&id, 1, NOW, &owner);
    let t = Transfer { at: NOW, consent_version: 1, owner: Some(proof) };
    let sealed = d.seal_with(&t, &epoch1, None).unwrap();
    assert_eq!(v.ingest(&sealed, NOW).unwrap().event, Event::Transferred { at: NOW });
    // A second Transfer before the next registration is refused.
    let again = d.seal_with(&t, &epoch1, None).unwrap();
    assert_eq!(err(v.ingest(&again, NOW)), IngestError::AwaitingRegistration);
    let a = v.ingest(&register(&mut d, widened(3)), NOW).unwrap();
    assert!(matches!(a.event, Event::Registered { relationship: 2, new_relationship: true, .. }));
    v.ingest(&d.seal(&marketing_usage(3)).unwrap(), NOW).unwrap();

    // The first owner's old authorisation cannot end the new relationship
    // (its consent version is below the one now held).
    let replayed = Transfer { at: NOW, consent_version: 1, owner: Some(proof) };
    assert_eq!(
        err(v.ingest(&d.seal(&replayed).unwrap(), NOW)),
        IngestError::Consent(ConsentError::Stale { held: 3, got: 1 })
    );
}

/// Finding 4: a consent version may no longer jump to `u32::MAX - 1` (after
/// which a next owner could never register): within a relationship every
/// step is at most `MAX_VERSION_STEP` (Consent, Register, Transfer), and a
/// relationship's first state is at most `MAX_FIRST_VERSION` (or one step
/// above the reset state, if that is higher).
#[test]
fn consent_version_exhaustion_is_bounded() {
    let v = vendor();
    let too_far = |held, got, max| IngestError::Consent(ConsentError::TooFarAhead { held, got, max });
    // A first registration far ahead.
    let mut d = dev(1);
    let first = err(v.ingest(&register(&mut d, analytics(u32::MAX - 1)), NOW));
    assert_eq!(first, too_far(0, u32::MAX - 1, MAX_FIRST_VERSION));
    let mut d = dev(1);
    v.ingest(&register(&mut d, analytics(MAX_FIRST_VERSION)), NOW).unwrap();
    let held = MAX_FIRST_VERSION;
    let max = held + MAX_VERSION_STEP;
    let epoch1 = d.session().unwrap().clone();
    // A Consent far ahead; one exactly at the bound is fine.
    let jump = ConsentUpdate { consent: analytics(u32::MAX - 1) };
    assert_eq!(err(v.ingest(&d.seal(&jump).unwrap(), NOW)), too_far(held, u32::MAX - 1, max));
    let step = ConsentUpdate { consent: analytics(max + 1) };
    assert_eq!(err(v.ingest(&d.seal(&step).unwrap(), NOW)), too_far(held, max + 1, max));
    // The same bound for a Register of the same relationship (refused: epoch 1 stays).
    assert_eq!(err(v.ingest(&register(&mut d, analytics(max + 1)), NOW)), too_far(held, max + 1, max));
    let step = ConsentUpdate { consent: analytics(max) };
    v.ingest(&d.seal_with(&step, &epoch1, None).unwrap(), NOW).unwrap();
    let held = max;
    // A Transfer naming a version far ahead.
    let t = Transfer::unsigned(NOW, u32::MAX - 1);
    let max = held + MAX_VERSION_STEP;
    assert_eq!(err(v.ingest(&d.seal_with(&t, &epoch1, None).unwrap(), NOW)), too_far(held, u32::MAX - 1, max));
    // After a transfer, the next owner's first state is bounded by one step
    // above the reset state (which is above MAX_FIRST_VERSION here).
    v.ingest(&d.seal_with(&Transfer::unsigned(NOW, held), &epoch1, None).unwrap(), NOW).unwrap();
    let reset = held + 1;
    let max = reset + MAX_VERSION_STEP;
    assert_eq!(err(v.ingest(&register(&mut d, analytics(u32::MAX - 1)), NOW)), too_far(reset, u32::MAX - 1, max));
    let a = v.ingest(&register(&mut d, analytics(max)), NOW).unwrap();
    assert!(matches!(a.event, Event::Registered { relationship: 2, .. }));
}

/// Relationship, lifecycle, consent, pinned key, ledger (event code, version).
type Held = (u32, Lifecycle, SignedConsent, Option<[u8; 32]>, Vec<(u8, u32)>);

/// What a vendor holds for a device, minus what may differ by arrival order
/// (times, the proof bytes of a ledger entry).
fn outcome(v: &Ingestor<MemoryStore>, d: &SimDevice) -> Held {
    let mut tx = v.store().begin().unwrap();
    let r = tx.device(&d.id()).unwrap().unwrap();
    let entries = tx.consent_entries(&d.id()).unwrap();
    let ledger = spime::consent::ledger::ConsentLedger::from_entries(d.id(), entries.clone()).unwrap();
    ledger.verify_proofs(&d.key().public()).unwrap();
    let events = entries.iter().map(|e| (e.event.code(), e.version)).collect();
    (r.relationship, r.lifecycle, r.consent, r.owner_key, events)
}

/// Finding 5: the next owner's Register (a new epoch) arriving before the
/// Transfer was taken as the same relationship, and the Transfer then
/// failed `StaleEpoch` forever with no reset in the ledger. The first
/// Register after a change of owner now carries the Transfer, so either
/// order gives the same relationship, consent, pin and ledger events.
#[test]
fn arrival_order_does_not_change_ownership() {
    let owner = SigningKey::from_bytes(&[44; 32]);
    for pinned in [false, true] {
        let mut d = dev(1);
        let id = d.id();
        let first = if pinned { signed(analytics(1), id, &owner) } else { analytics(1) };
        let reg1 = register(&mut d, first);
        let proof = pinned.then(|| OwnerProof::sign_transfer(&id, 1, NOW, &owner));
        let t = Transfer { at: NOW, consent_version: 1, owner: proof };
        let transfer = d.seal(&t).unwrap();
        let mut body = register_body(&d, widened(3));
        body.transfer = Some(t);
        let reg2 = d.seal_new_epoch(&body).unwrap();

        let in_order = vendor();
        for m in [&reg1, &transfer, &reg2] {
            in_order.ingest(m, NOW).unwrap();
        }
        let reordered = vendor();
        reordered.ingest(&reg1, NOW).unwrap();
        let a = reordered.ingest(&reg2, NOW).unwrap();
        assert!(matches!(a.event, Event::Registered { relationship: 2, new_relationship: true, .. }));
        // The Transfer, late, belongs to an epoch already replaced: refused, and nothing changes.
        assert_eq!(err(reordered.ingest(&transfer, NOW)).reason(), "stale-epoch");

        let expected = outcome(&in_order, &d);
        assert_eq!(expected.0, 2);
        assert_eq!(expected.3, None, "no owner key carries over");
        assert_eq!(expected.4, [(0, 1), (6, 2), (0, 3)], "given, reset, given");
        assert_eq!(outcome(&reordered, &d), expected, "pinned: {pinned}");
    }

    // With a key pinned, a Register carrying an unauthorised Transfer is refused too.
    let mut d = dev(2);
    let id = d.id();
    let v = vendor();
    v.ingest(&register(&mut d, signed(analytics(1), id, &owner)), NOW).unwrap();
    let mut body = register_body(&d, widened(3));
    body.transfer = Some(Transfer::unsigned(NOW, 1));
    let reg2 = d.seal_new_epoch(&body).unwrap();
    assert_eq!(err(v.ingest(&reg2, NOW)), IngestError::Consent(ConsentError::OwnerProofMissing));
}

fn notice(purpose: Purpose, kind: NoticeKind) -> Notice {
    Notice {
        id: 1,
        purpose,
        channel: Channel::OnDevice,
        topic: 1,
        kind,
        issued_at: NOW,
        expires_at: NOW + 86_400,
        title: "t".try_into().unwrap(),
        text: "x".try_into().unwrap(),
    }
}

/// Finding 8: a notice's kind is tied to its purpose (an Essential
/// SuppliesOffer is refused on both sides), and nothing is sealed for a
/// Transferred device under the previous owner's keys.
#[test]
fn notices_fit_their_purpose_and_stop_at_transfer() {
    let v = vendor();
    let mut d = dev(1);
    v.ingest(&register(&mut d, analytics(1)), NOW).unwrap();
    let offer = notice(Purpose::ESSENTIAL, NoticeKind::SuppliesOffer);
    let denial = ContactDenial::KindNotForPurpose { kind: NoticeKind::SuppliesOffer, purpose: Purpose::ESSENTIAL };
    assert_eq!(v.seal_notice(&d.id(), &offer, NOW), Err(SendError::Refused(denial)));
    assert_eq!(analytics(1).state.check_notice(&offer, NOW, &NoHistory), Err(denial), "the device refuses it too");
    let instructions = notice(Purpose::ESSENTIAL, NoticeKind::Instructions);
    assert!(matches!(
        v.seal_notice(&d.id(), &instructions, NOW),
        Err(SendError::Refused(ContactDenial::KindNotForPurpose { .. }))
    ));
    let recall = notice(Purpose::ESSENTIAL, NoticeKind::Recall);
    let sealed = v.seal_notice(&d.id(), &recall, NOW).unwrap();
    assert_eq!(d.open::<Notice>(&sealed).unwrap(), recall);

    v.ingest(&d.seal(&Transfer::unsigned(NOW, 1)).unwrap(), NOW).unwrap();
    assert_eq!(v.seal_notice(&d.id(), &recall, NOW), Err(SendError::AwaitingRegistration));
    assert_eq!(v.seal_receipt(&d.id()), Err(SendError::NoConsent));
    // The next owner registers: notices flow again, under the new epoch.
    v.ingest(&register(&mut d, analytics(3)), NOW).unwrap();
    let sealed = v.seal_notice(&d.id(), &recall, NOW + 1).unwrap();
    assert_eq!(d.open::<Notice>(&sealed).unwrap(), recall);
}

/// Finding 6: an outsider who knows a device id can make the vendor run a
/// key agreement (its own ephemeral key makes the AEAD pass) before the
/// signature refuses it. Such openers are verified strictly, never applied
/// speculatively in a batch; after `OPENER_FAILURES` of them a device's
/// openers get one try per batch; and a genuine re-key still gets through.
#[test]
fn work_before_authentication_is_bounded() {
    let v = Ingestor::new(MemoryStore::new(), vendor_keys(), IngestConfig { workers: 1, batch_verify: true });
    let mut d = dev(1);
    v.ingest(&register(&mut d, analytics(1)), NOW).unwrap();
    let ok_usage = |n| spime::vendor::sim::counter_usage(1, &[(1, n)]);
    // The outsider: the same device id, its own key; its openers name epoch 2, 3, ...
    let mut outsider = SimDevice::new(d.id(), [99; 32], &vendor_keys()).unwrap();
    let mut forged = || {
        outsider.counter += 1_000;
        outsider.seal_new_epoch(&ok_usage(1)).unwrap()
    };
    let _ = forged(); // epoch 1: not an opener for the vendor

    // A forged opener among genuine messages: refused, the rest accepted.
    let batch = [forged(), d.seal(&ok_usage(2)).unwrap(), d.seal(&ok_usage(3)).unwrap()];
    let out = v.ingest_batch(&batch.iter().map(Vec::as_slice).collect::<Vec<_>>(), NOW);
    assert_eq!(out[0], Err(IngestError::Unauthentic));
    assert!(out[1].is_ok() && out[2].is_ok());

    // Up to the limit, every forged opener is tried (and refused).
    for _ in 1..OPENER_FAILURES {
        assert_eq!(v.ingest(&forged(), NOW), Err(IngestError::Unauthentic));
    }
    // Now one opener per batch: the second is not even tried.
    let pair = [forged(), forged()];
    let out = v.ingest_batch(&[&pair[0], &pair[1]], NOW + 1);
    assert_eq!(out, [Err(IngestError::Unauthentic), Err(IngestError::Throttled)]);
    // Messages under the current epoch are not affected.
    v.ingest(&d.seal(&ok_usage(4)).unwrap(), NOW + 1).unwrap();
    // The genuine device re-keys: its opener is the first of its batch, so it
    // is tried and accepted, and the count starts over.
    let rekey = d.seal_new_epoch(&ok_usage(5)).unwrap();
    let out = v.ingest_batch(&[&rekey, &forged()], NOW + 2);
    assert!(out[0].is_ok(), "{:?}", out[0]);
    assert_eq!(out[1], Err(IngestError::Throttled));
    // The accepted opener cleared the count: the next forged opener is tried again.
    assert_eq!(v.ingest(&forged(), NOW + 3), Err(IngestError::Unauthentic));
    // And the window bounds the count: failures older than it are forgotten.
    for _ in 1..OPENER_FAILURES {
        assert_eq!(v.ingest(&forged(), NOW + 3), Err(IngestError::Unauthentic));
    }
    let pair = [forged(), forged()];
    assert_eq!(v.ingest_batch(&[&pair[0], &pair[1]], NOW + 3)[1], Err(IngestError::Throttled));
    let pair = [forged(), forged()];
    let out = v.ingest_batch(&[&pair[0], &pair[1]], NOW + 3 + OPENER_WINDOW);
    assert_eq!(out, [Err(IngestError::Unauthentic), Err(IngestError::Unauthentic)]);
}

/// Keys with a lifecycle: vendor keys made by `generate` can be saved and
/// loaded (the documented 69-byte format); every malformed file is refused.
#[test]
fn vendor_keys_persist() {
    use rand_core::SeedableRng;
    use spime::error::DecodeError;
    use spime::seal::VendorKeys;
    use spime::seal::keys::VENDOR_KEYS_LEN;
    let keys = VendorKeys::generate(&mut rand_chacha::ChaCha20Rng::from_seed([3; 32]));
    let saved = keys.to_bytes();
    assert_eq!(saved.len(), VENDOR_KEYS_LEN);
    assert_eq!(&saved[..5], b"SPVK\x01");
    let loaded = VendorKeys::from_bytes(saved.as_slice()).unwrap();
    assert_eq!(loaded.public(), keys.public());
    assert_eq!(loaded.to_bytes().as_slice(), saved.as_slice());
    // The loaded keys open what a device sealed for the generated ones.
    let v = Ingestor::new(MemoryStore::new(), loaded, IngestConfig { workers: 1, batch_verify: false });
    let mut d = SimDevice::new(DeviceId([5; 8]), [5; 32], &keys).unwrap();
    v.ingest(&register(&mut d, analytics(1)), NOW).unwrap();

    let short = &saved[..VENDOR_KEYS_LEN - 1];
    assert_eq!(VendorKeys::from_bytes(short).unwrap_err(), DecodeError::Truncated { needed: 69, have: 68 });
    let mut long = saved.to_vec();
    long.push(0);
    assert_eq!(VendorKeys::from_bytes(&long).unwrap_err(), DecodeError::Oversized { len: 70, max: 69 });
    let mut bad = saved.to_vec();
    bad[0] = b'X';
    assert_eq!(VendorKeys::from_bytes(&bad).unwrap_err(), DecodeError::Malformed);
    let mut bad = saved.to_vec();
    bad[4] = 2;
    assert_eq!(VendorKeys::from_bytes(&bad).unwrap_err(), DecodeError::UnsupportedVersion(2));
}

/// Keys with a lifecycle: a revoked device id or device key is refused at
/// Register and on every later message, before any cryptography.
#[test]
fn revoked_devices_and_keys_are_refused() {
    let v = vendor();
    let mut d = dev(1);
    v.ingest(&register(&mut d, analytics(1)), NOW).unwrap();
    let usage = |n| spime::vendor::sim::counter_usage(1, &[(1, n)]);
    v.ingest(&d.seal(&usage(1)).unwrap(), NOW).unwrap();
    v.revoke_device(d.id());
    assert_eq!(err(v.ingest(&d.seal(&usage(2)).unwrap(), NOW)), IngestError::Revoked);
    v.reinstate_device(&d.id());
    v.ingest(&d.seal(&usage(3)).unwrap(), NOW).unwrap();
    // By key: the registered device, and a Register naming another id with that key.
    let key = d.key().public().to_bytes();
    v.revoke_key(key);
    assert_eq!(err(v.ingest(&d.seal(&usage(4)).unwrap(), NOW)), IngestError::Revoked);
    let mut fresh = dev(2);
    v.ingest(&register(&mut fresh, analytics(1)), NOW).unwrap();
    v.revoke_key(fresh.key().public().to_bytes());
    let mut again = dev(3);
    v.revoke_key(again.key().public().to_bytes());
    assert_eq!(err(v.ingest(&register(&mut again, analytics(1)), NOW)), IngestError::Revoked);
    assert!(v.is_revoked(&again.id(), Some(&again.key().public().to_bytes())));
}

/// Keys with a lifecycle: a certificate's `issued_at` and optional
/// `not_after` are enforced at Register and on every message.
#[test]
fn certificate_validity_is_enforced() {
    let keys = vendor_keys();
    let v = vendor();
    let mut d = dev(1);
    let (id, device_key) = (d.id(), d.key().public().to_bytes());
    let certificate = |issued_at, not_after| {
        DeviceCertificate::issue(
            CertificateBody {
                device: id,
                device_key,
                model: "k".try_into().unwrap(),
                hardware_revision: 1,
                issued_at,
                not_after,
            },
            keys.signing(),
        )
        .unwrap()
    };
    let with = |c: DeviceCertificate| Register {
        certificate: c,
        firmware: FirmwareVersion { major: 1, minor: 0, patch: 0, build: 0 },
        consent: analytics(1),
        transfer: None,
    };
    let future = with(certificate(NOW + CLOCK_SKEW + 1, None));
    let expired = with(certificate(0, Some(NOW - 1)));
    let end = NOW + CLOCK_SKEW + 100;
    let good = with(certificate(NOW + CLOCK_SKEW, Some(end)));
    let mut inverted = with(certificate(NOW, Some(NOW)));
    assert_eq!(
        err(v.ingest(&d.seal_new_epoch(&future).unwrap(), NOW)),
        IngestError::CertificateInvalid(Validity::NotYetValid { issued_at: NOW + CLOCK_SKEW + 1 })
    );
    assert_eq!(
        err(v.ingest(&d.seal_new_epoch(&expired).unwrap(), NOW)),
        IngestError::CertificateInvalid(Validity::Expired { not_after: NOW - 1 })
    );
    // A certificate that ends before it starts is not issued, nor decoded.
    inverted.certificate.body.not_after = Some(NOW - 1);
    assert!(DeviceCertificate::issue(inverted.certificate.body.clone(), keys.signing()).is_err());
    let mut buf = [0u8; 1024];
    let n = postcard::to_slice(&inverted, &mut buf).unwrap().len();
    assert_eq!(
        spime::codec::decode::<Register>(&buf[..n]),
        Err(spime::error::DecodeError::OutOfRange(spime::error::Rule::CertificateValidity))
    );
    v.ingest(&d.seal_new_epoch(&good).unwrap(), NOW).unwrap();
    let usage = |n| spime::vendor::sim::counter_usage(1, &[(1, n)]);
    v.ingest(&d.seal(&usage(1)).unwrap(), end).unwrap();
    assert_eq!(
        err(v.ingest(&d.seal(&usage(2)).unwrap(), end + 1)),
        IngestError::CertificateInvalid(Validity::Expired { not_after: end })
    );
}

/// Keys with a lifecycle: device certificates issued by a factory key (a
/// certificate authority apart from the live message-signing key) are
/// accepted, ones signed by the live key are not, and receipts still come
/// from the live key.
#[test]
fn factory_key_apart_from_the_live_key() {
    let factory = SigningKey::from_bytes(&[77; 32]);
    let v = vendor().with_certificate_authority(factory.verifying_key());
    let mut d = dev(1);
    let body = d.certificate().body.clone();
    let by_factory = DeviceCertificate::issue(body.clone(), &factory).unwrap();
    let mut reg = register_body(&d, analytics(1));
    // The sim device's own certificate is signed by the live key: refused.
    assert_eq!(err(v.ingest(&d.seal_new_epoch(&reg).unwrap(), NOW)), IngestError::Unauthentic);
    reg.certificate = by_factory;
    let a = v.ingest(&d.seal_new_epoch(&reg).unwrap(), NOW).unwrap();
    assert!(matches!(a.event, Event::Registered { relationship: 1, .. }));
    let receipt: Receipt = d.open(&v.seal_receipt(&d.id()).unwrap()).unwrap();
    assert_eq!(receipt.consent_version, 1);
}
