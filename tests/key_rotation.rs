//! Vendor key rotation (SPEC.md §5.11, §8.7, §9.2) through the real
//! device session and the real vendor pipeline: the vendor's certificate
//! authority certifies a new message key, devices learn it from a KeyUpdate
//! and open their next epoch with it, the old key retires on schedule, and
//! every way a KeyUpdate can be wrong is refused with nothing recorded.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::std_instead_of_core
)]

mod device_common;

use device_common::*;
use ed25519_dalek::SigningKey;
use rand_core::SeedableRng;
use spime::consent::Purpose;
use spime::device::metrics::{MetricDef, MetricKind, Metrics};
use spime::device::outbox::{Outbox, record_len};
use spime::device::session::{Device, Identity, SessionError, storage_capacity, storage_records};
use spime::device::storage::{NorStorage, SimFlash};
use spime::error::{OpenError, ReplayError, VendorKeyError};
use spime::message::{
    self, Body, CertificateBody, DeviceCertificate, KeyUpdate, Validity, VendorKeyBody, VendorKeyCertificate,
};
use spime::seal::{self, DeviceKey, SessionKeys, VendorKeys};
use spime::vendor::{IngestConfig, IngestError, Ingestor, KeyringError, MemoryStore, SendError, Store};
use spime::wire::{DeviceId, Kind};

const N: usize = 4;
const REC: usize = record_len(message::MAX_SEALED_LEN);
const SECTORS: u16 = 6;
type Flash = SimFlash<{ SECTORS as usize * 4096 }, 4096>;
type St<F> = NorStorage<F>;
type Ob = Outbox<N, REC>;

const T0: u64 = 1_767_300_000;
const DAY: u64 = 86_400;
/// When the second key goes live, and when the first retires.
const ROTATE_AT: u64 = T0 + 30 * DAY;
const RETIRE_AT: u64 = ROTATE_AT + 90 * DAY;

/// The vendor's certificate authority (offline; it signs device
/// certificates and vendor key certificates).
fn authority() -> SigningKey {
    SigningKey::from_bytes(&[0xCA; 32])
}

/// The first vendor key, provisioned into devices uncertified (serial 0).
fn key0() -> VendorKeys {
    vendor()
}

/// The second vendor key, serial 1.
fn key1() -> VendorKeys {
    VendorKeys::from_secrets(&[0x61; 32], &[0x62; 32])
}

/// A third, serial 2.
fn key2() -> VendorKeys {
    VendorKeys::from_secrets(&[0x71; 32], &[0x72; 32])
}

fn cert(keys: &VendorKeys, serial: u32) -> VendorKeyCertificate {
    VendorKeyCertificate::certify(keys, serial, ROTATE_AT - DAY, RETIRE_AT + 365 * DAY, &authority()).unwrap()
}

/// A device identity whose certificate the authority issued.
fn identity_of(id: DeviceId, seed: u8) -> Identity {
    let key = DeviceKey::from_seed(id, &[seed; 32]);
    let certificate = DeviceCertificate::issue(
        CertificateBody {
            device: id,
            device_key: key.public().to_bytes(),
            model: "kettle-9000".try_into().unwrap(),
            hardware_revision: 3,
            issued_at: MADE_AT,
            not_after: None,
        },
        &authority(),
    )
    .unwrap();
    Identity { key, certificate, firmware: FIRMWARE, vendor: key0().public() }
}

const A: DeviceId = DeviceId(*b"rotate-a");
const B: DeviceId = DeviceId(*b"rotate-b");

fn storage<F: embedded_storage::nor_flash::NorFlash>(flash: F) -> St<F> {
    NorStorage::new(flash, 0, SECTORS, u16::try_from(storage_records(N)).unwrap(), storage_capacity(REC)).unwrap()
}

fn rng(seed: u8) -> rand_chacha::ChaCha20Rng {
    rand_chacha::ChaCha20Rng::from_seed([seed; 32])
}

/// The vendor before the rotation: key 0 only.
fn vendor_before() -> Ingestor<MemoryStore> {
    Ingestor::new(MemoryStore::new(), key0(), IngestConfig { workers: 1, batch_verify: false })
        .with_certificate_authority(authority().verifying_key())
}

/// The same vendor, restarted over its store with key 1 added and key 0
/// retiring at [`RETIRE_AT`].
fn rotated(v: Ingestor<MemoryStore>) -> Ingestor<MemoryStore> {
    Ingestor::new(v.into_store(), key0(), IngestConfig { workers: 1, batch_verify: false })
        .with_certificate_authority(authority().verifying_key())
        .with_vendor_key(key1(), cert(&key1(), 1))
        .unwrap()
        .retire_vendor_key(0, RETIRE_AT)
        .unwrap()
}

fn boot<'o, F: embedded_storage::nor_flash::NorFlash>(
    id: DeviceId,
    seed: u8,
    flash: F,
    ob: &'o mut Ob,
) -> Device<'o, St<F>, N, REC> {
    Device::boot(identity_of(id, seed), storage(flash), ob).unwrap().with_key_authority(authority().verifying_key())
}

/// Sends everything queued to the vendor at `now`, acking what it took;
/// returns the outcomes' `key_update_due` and `opened_epoch`.
fn flush<F: embedded_storage::nor_flash::NorFlash>(
    dev: &mut Device<'_, St<F>, N, REC>,
    vendor: &Ingestor<MemoryStore>,
    now: u64,
) -> Vec<Result<(bool, Option<u32>), IngestError>> {
    let mut out = Vec::new();
    let queued: Vec<(u64, Vec<u8>)> =
        dev.queued_envelopes().unwrap().into_iter().map(|(m, e)| (m.counter, e)).collect();
    for (c, env) in queued {
        let r = vendor.ingest(&env, now);
        if r.is_ok() {
            dev.ack(c).unwrap();
        }
        out.push(r.map(|a| (a.key_update_due, a.opened_epoch)));
    }
    out
}

fn report<F: embedded_storage::nor_flash::NorFlash>(dev: &mut Device<'_, St<F>, N, REC>, now: u64) {
    let mut m: Metrics<1> = Metrics::new(now - 60);
    m.define(MetricDef { id: 1, category: spime::consent::DataCategory::UsageCounters, kind: MetricKind::Counter })
        .unwrap();
    m.increment(1, 2).unwrap();
    dev.registered().unwrap().report_window(Purpose::USAGE_ANALYTICS, m.take_window(now), now).unwrap().unwrap();
}

/// Registers and confirms the epoch with the vendor's receipt.
fn register<F: embedded_storage::nor_flash::NorFlash>(
    dev: &mut Device<'_, St<F>, N, REC>,
    vendor: &Ingestor<MemoryStore>,
    seed: u8,
    now: u64,
) {
    dev.unregistered().unwrap().register(&mut rng(seed), generous_consent(1, now)).unwrap();
    let r = flush(dev, vendor, now);
    assert_eq!(r, vec![Ok((false, Some(1)))]);
    dev.open_receipt(&vendor.seal_receipt(&dev.device_id()).unwrap()).unwrap();
    assert!(dev.epoch_confirmed());
}

fn epoch_key_serial(vendor: &Ingestor<MemoryStore>, id: &DeviceId) -> (u32, u32) {
    let r = vendor.store().device(id).unwrap().unwrap();
    (r.epoch(), r.session.vendor_key())
}

#[test]
fn vendor_key_rotates_and_the_old_key_retires() {
    let vendor = vendor_before();
    let (mut fa, mut fb) = (Flash::new(), Flash::new());
    let (mut oa, mut ob) = (Ob::new(), Ob::new());
    let mut a = boot(A, 0xA1, &mut fa, &mut oa);
    let mut b = boot(B, 0xB1, &mut fb, &mut ob);
    register(&mut a, &vendor, 1, T0);
    register(&mut b, &vendor, 2, T0);
    assert_eq!(epoch_key_serial(&vendor, &A), (1, 0));
    assert_eq!(vendor.seal_key_update(&A, T0), Err(SendError::NoKeyUpdate));

    // The vendor adds key 1 (certified offline) and schedules key 0's retirement.
    let vendor = rotated(vendor);
    assert_eq!(vendor.vendor_key_serials(ROTATE_AT), vec![(0, true), (1, true)]);
    report(&mut a, ROTATE_AT);
    // Key 0 still works, and the vendor says the device needs the new key.
    assert_eq!(flush(&mut a, &vendor, ROTATE_AT), vec![Ok((true, None))]);
    let update = vendor.seal_key_update(&A, ROTATE_AT).unwrap();
    assert_eq!(a.open_key_update(&update, ROTATE_AT).unwrap(), 1);
    assert_eq!(a.vendor_key_serial(), 1);
    assert!(a.vendor_key_pending());
    // Receipts of epoch 1 are still signed by key 0, the key that opened it.
    a.open_receipt(&vendor.seal_receipt(&A).unwrap()).unwrap();

    // The device opens epoch 2 with key 1; the vendor learns which key it holds from the opener.
    a.registered().unwrap().renew_keys(&mut rng(3)).unwrap();
    assert!(!a.vendor_key_pending());
    report(&mut a, ROTATE_AT + 60);
    assert_eq!(flush(&mut a, &vendor, ROTATE_AT + 60), vec![Ok((false, Some(2)))]);
    assert_eq!(epoch_key_serial(&vendor, &A), (2, 1));
    assert_eq!(vendor.seal_key_update(&A, ROTATE_AT + 60), Err(SendError::NoKeyUpdate));
    // Vendor messages of epoch 2 are signed by key 1, and the device checks them with it.
    a.open_receipt(&vendor.seal_receipt(&A).unwrap()).unwrap();
    assert!(a.epoch_confirmed());

    // Across a reboot the device keeps the key and its epoch.
    drop(a);
    let mut a = boot(A, 0xA1, &mut fa, &mut oa);
    assert_eq!((a.vendor_key_serial(), a.epoch(), a.vendor_key_pending()), (1, 2, false));

    // Key 0 retires. Device A (on key 1) keeps working.
    report(&mut a, RETIRE_AT);
    assert_eq!(flush(&mut a, &vendor, RETIRE_AT), vec![Ok((false, None))]);
    // Device B never took the update: its messages under key 0's epoch are refused...
    report(&mut b, RETIRE_AT);
    assert_eq!(flush(&mut b, &vendor, RETIRE_AT), vec![Err(IngestError::VendorKeyRetired { serial: 0 })]);
    assert_eq!(IngestError::VendorKeyRetired { serial: 0 }.code(), 56);
    // ...and an epoch it would open with key 0 is not authentic: key 0 is
    // no longer tried (on a copy of B, which would then be stranded: a
    // device refused with code 56 waits for a KeyUpdate, SPEC §8.7).
    drop(b);
    let mut copy = fb.clone();
    {
        let mut oc = Ob::new();
        let mut b2 = boot(B, 0xB1, &mut copy, &mut oc);
        let c = b2.queued().next().unwrap().counter;
        b2.ack(c).unwrap();
        b2.registered().unwrap().renew_keys(&mut rng(4)).unwrap();
        report(&mut b2, RETIRE_AT + 60);
        assert_eq!(flush(&mut b2, &vendor, RETIRE_AT + 60), vec![Err(IngestError::Unauthentic)]);
    }
    // B itself takes the KeyUpdate, still sealed under the epoch the vendor
    // holds for it and signed by key 1 alone, drops the report it sealed
    // under key 0's epoch, and opens its next epoch with key 1.
    let mut b = boot(B, 0xB1, &mut fb, &mut ob);
    let update = vendor.seal_key_update(&B, RETIRE_AT + 60).unwrap();
    assert_eq!(b.open_key_update(&update, RETIRE_AT + 60).unwrap(), 1);
    let c = b.queued().next().unwrap().counter;
    b.ack(c).unwrap();
    b.registered().unwrap().renew_keys(&mut rng(5)).unwrap();
    report(&mut b, RETIRE_AT + 120);
    assert_eq!(flush(&mut b, &vendor, RETIRE_AT + 120), vec![Ok((false, Some(2)))]);
    assert_eq!(epoch_key_serial(&vendor, &B), (2, 1));
}

#[test]
fn a_device_that_missed_the_rotation_is_moved_on_after_retirement() {
    let vendor = vendor_before();
    let mut f = Flash::new();
    let mut o = Ob::new();
    let mut b = boot(B, 0xB1, &mut f, &mut o);
    register(&mut b, &vendor, 2, T0);
    let vendor = rotated(vendor);
    // Retired, and even forgotten: the vendor holds no secret of key 0 any more.
    let vendor = vendor.forget_vendor_key(0, RETIRE_AT).unwrap();
    assert_eq!(vendor.vendor_key_serials(RETIRE_AT), vec![(1, true)]);
    report(&mut b, RETIRE_AT);
    assert_eq!(flush(&mut b, &vendor, RETIRE_AT), vec![Err(IngestError::VendorKeyRetired { serial: 0 })]);
    assert_eq!(vendor.seal_receipt(&B), Err(SendError::VendorKeyGone(0)));
    // A KeyUpdate still reaches it: signed by key 1, sealed under the epoch the vendor holds.
    let update = vendor.seal_key_update(&B, RETIRE_AT).unwrap();
    assert_eq!(b.open_key_update(&update, RETIRE_AT).unwrap(), 1);
    // The report sealed under the old epoch cannot go; the product drops it
    // (or the next boot's product policy does) and renews its keys.
    let c = b.queued().next().unwrap().counter;
    b.ack(c).unwrap();
    b.registered().unwrap().renew_keys(&mut rng(9)).unwrap();
    report(&mut b, RETIRE_AT + 60);
    assert_eq!(flush(&mut b, &vendor, RETIRE_AT + 60), vec![Ok((false, Some(2)))]);
    assert_eq!(epoch_key_serial(&vendor, &B), (2, 1));
    b.open_receipt(&vendor.seal_receipt(&B).unwrap()).unwrap();
}

#[test]
fn a_device_made_after_the_rotation_registers_under_the_new_key() {
    let vendor = rotated(vendor_before());
    let mut f = Flash::new();
    let mut o = Ob::new();
    // Provisioned with key 1 (its identity's vendor keys).
    let mut id = identity_of(A, 0xA1);
    id.vendor = key1().public();
    let mut a = Device::boot(id, storage(&mut f), &mut o).unwrap();
    register(&mut a, &vendor, 1, ROTATE_AT);
    assert_eq!(epoch_key_serial(&vendor, &A), (1, 1));
}

#[test]
fn keyring_rules() {
    let v = vendor_before();
    // Not certified by the authority.
    let other = SigningKey::from_bytes(&[0xCB; 32]);
    let foreign = VendorKeyCertificate::certify(&key1(), 1, 0, u64::MAX, &other).unwrap();
    assert!(matches!(v.with_vendor_key(key1(), foreign), Err(KeyringError::BadCertificate)));
    // The certificate names other keys.
    let v = vendor_before();
    assert!(matches!(v.with_vendor_key(key2(), cert(&key1(), 1)), Err(KeyringError::KeysDiffer)));
    // Serials only go up; at most three keys; the newest cannot retire.
    let v = rotated(vendor_before());
    let v = match v.with_vendor_key(key2(), cert(&key2(), 1)) {
        Err(KeyringError::SerialNotAbove { newest: 1, got: 1 }) => rotated(vendor_before()),
        other => panic!("{:?}", other.err()),
    };
    let v = v.with_vendor_key(key2(), cert(&key2(), 2)).unwrap();
    let k3 = VendorKeys::from_secrets(&[0x81; 32], &[0x82; 32]);
    let v = match v.with_vendor_key(k3, cert(&VendorKeys::from_secrets(&[0x81; 32], &[0x82; 32]), 3)) {
        Err(KeyringError::Full(3)) => rotated(vendor_before()),
        other => panic!("{:?}", other.err()),
    };
    assert!(matches!(v.retire_vendor_key(1, RETIRE_AT), Err(KeyringError::Newest(1))));
    let v = rotated(vendor_before());
    assert!(matches!(v.forget_vendor_key(0, RETIRE_AT - 1), Err(KeyringError::NotRetired(0))));
    let v = rotated(vendor_before());
    assert!(matches!(v.retire_vendor_key(7, RETIRE_AT), Err(KeyringError::UnknownSerial(7))));
    // A key keeps its serial: certifying key 0 as serial 5 is refused, as serial 0 it is taken.
    let v = vendor_before();
    assert!(matches!(
        v.with_vendor_key(key0(), cert(&key0(), 5)),
        Err(KeyringError::SerialChanged { held: 0, got: 5 })
    ));
    let v = vendor_before().with_vendor_key(key0(), cert(&key0(), 0)).unwrap();
    assert_eq!(v.vendor_key_serials(T0), vec![(0, true)]);
}

/// A new signing key with key 0's key-agreement key: the vendor could not
/// tell from an opener which pair the device holds, and would sign its
/// Receipts with a key the device does not know (SPEC §9.2).
#[test]
fn a_pair_sharing_a_key_agreement_key_is_refused() {
    let same_vx = || VendorKeys::from_secrets(&[0x91; 32], &VENDOR_KX_SECRET);
    assert_eq!(same_vx().public().key_agreement, key0().public().key_agreement);
    let v = vendor_before();
    assert!(matches!(
        v.with_vendor_key(same_vx(), cert(&same_vx(), 1)),
        Err(KeyringError::SharedKeyAgreement { held: 0 })
    ));
    let v = rotated(vendor_before());
    assert!(matches!(
        v.with_vendor_key(same_vx(), cert(&same_vx(), 2)),
        Err(KeyringError::SharedKeyAgreement { held: 0 })
    ));
}

/// K_vd of the device's current epoch, as the vendor holds it.
fn vendor_session(vendor: &Ingestor<MemoryStore>, id: &DeviceId) -> SessionKeys {
    vendor.store().device(id).unwrap().unwrap().session.keys()
}

/// A KeyUpdate for `device` carrying `certificate`, signed by `signer`,
/// sealed under `keys` with vendor counter `counter`.
fn key_update(
    device: DeviceId,
    counter: u64,
    certificate: VendorKeyCertificate,
    signer: &VendorKeys,
    keys: &SessionKeys,
) -> Vec<u8> {
    let mut out = vec![0u8; KeyUpdate::MAX_SEALED_LEN];
    let n = seal::seal_from_vendor(&mut out, device, counter, &KeyUpdate { certificate }, signer, keys).unwrap();
    out.truncate(n);
    out
}

#[test]
fn bad_key_updates_are_refused_and_leave_no_trace() {
    let vendor = vendor_before();
    let (mut fa, mut fb) = (Flash::new(), Flash::new());
    let (mut oa, mut ob) = (Ob::new(), Ob::new());
    let mut a = boot(A, 0xA1, &mut fa, &mut oa);
    let mut b = boot(B, 0xB1, &mut fb, &mut ob);
    register(&mut a, &vendor, 1, T0);
    register(&mut b, &vendor, 2, T0);
    let ka = vendor_session(&vendor, &A);
    let kb = vendor_session(&vendor, &B);
    let now = ROTATE_AT;
    let refused = |a: &mut Device<'_, St<&mut Flash>, N, REC>, bytes: &[u8]| {
        let before = a.vendor_key_serial();
        let e = a.open_key_update(bytes, now).unwrap_err();
        assert_eq!(a.vendor_key_serial(), before, "nothing learned");
        e
    };
    // Certified by another authority.
    let other = SigningKey::from_bytes(&[0xCB; 32]);
    let foreign = VendorKeyCertificate::certify(&key1(), 1, 0, u64::MAX, &other).unwrap();
    let e = refused(&mut a, &key_update(A, 10, foreign, &key1(), &ka));
    assert_eq!(e, SessionError::Open(OpenError::BadCertificate));
    // A genuine certificate, but the envelope is signed by another key than the one certified.
    let e = refused(&mut a, &key_update(A, 11, cert(&key1(), 1), &key0(), &ka));
    assert_eq!(e, SessionError::Open(OpenError::Unauthentic));
    // Expired, and not yet valid (beyond a day of clock skew).
    let body = cert(&key1(), 1).body;
    let expired = VendorKeyCertificate::issue(VendorKeyBody { not_after: now - 1, ..body }, &authority()).unwrap();
    let e = refused(&mut a, &key_update(A, 12, expired, &key1(), &ka));
    assert_eq!(e, SessionError::VendorKey(VendorKeyError::Invalid(Validity::Expired { not_after: now - 1 })));
    let early = VendorKeyCertificate::issue(
        VendorKeyBody { not_before: now + DAY + 1, not_after: now + 400 * DAY, ..body },
        &authority(),
    )
    .unwrap();
    let e = refused(&mut a, &key_update(A, 13, early, &key1(), &ka));
    assert_eq!(e, SessionError::VendorKey(VendorKeyError::Invalid(Validity::NotYetValid { issued_at: now + DAY + 1 })));
    // Tampered: one bit of the ciphertext flipped.
    let mut tampered = key_update(A, 14, cert(&key1(), 1), &key1(), &ka);
    let last = tampered.len() - 20;
    tampered[last] ^= 1;
    assert_eq!(refused(&mut a, &tampered), SessionError::Open(OpenError::Unauthentic));
    // For another device: sealed under B's keys and naming B.
    let for_b = key_update(B, 15, cert(&key1(), 1), &key1(), &kb);
    assert_eq!(refused(&mut a, &for_b), SessionError::Open(OpenError::WrongDevice));
    // Not a KeyUpdate.
    let receipt = vendor.seal_receipt(&A).unwrap();
    assert!(matches!(
        refused(&mut a, &receipt),
        SessionError::Open(OpenError::WrongKind { expected: Kind::KEY_UPDATE, got: Kind::RECEIPT })
    ));
    // A device without the authority's key cannot learn keys.
    {
        let mut fc = Flash::new();
        let mut oc = Ob::new();
        let mut c = Device::boot(identity_of(A, 0xA1), storage(&mut fc), &mut oc).unwrap();
        c.unregistered().unwrap().register(&mut rng(5), generous_consent(1, T0)).unwrap();
        assert_eq!(
            c.open_key_update(&key_update(A, 16, cert(&key1(), 1), &key1(), &ka), now).unwrap_err(),
            SessionError::VendorKey(VendorKeyError::NoAuthority)
        );
    }

    // Serial 2 is learned; a replay of it is refused; the same certificate
    // in a new message changes nothing; serial 1 after it is a rollback, and
    // serial 2 with other keys too.
    let good = key_update(A, 20, cert(&key2(), 2), &key2(), &ka);
    assert_eq!(a.open_key_update(&good, now).unwrap(), 2);
    assert_eq!(refused(&mut a, &good), SessionError::Open(OpenError::Replay(ReplayError::Duplicate(20))));
    assert_eq!(a.open_key_update(&key_update(A, 21, cert(&key2(), 2), &key2(), &ka), now).unwrap(), 2);
    let e = refused(&mut a, &key_update(A, 22, cert(&key1(), 1), &key1(), &ka));
    assert_eq!(e, SessionError::VendorKey(VendorKeyError::Rollback { held: 2, got: 1 }));
    let e = refused(&mut a, &key_update(A, 23, cert(&key1(), 2), &key1(), &ka));
    assert_eq!(e, SessionError::VendorKey(VendorKeyError::Rollback { held: 2, got: 2 }));
    assert_eq!(VendorKeyError::Rollback { held: 2, got: 2 }.code(), 92);
    // The refused messages' counters were not recorded: 22 is still free.
    assert_eq!(a.open_key_update(&key_update(A, 22, cert(&key2(), 2), &key2(), &ka), now).unwrap(), 2);
}

/// A power cut at every flash operation while a KeyUpdate is taken and
/// while the next epoch is opened with the new key: after each reboot the
/// device holds the old key or the new one, never a mix, and the rotation
/// completes once the power stays on.
#[test]
fn power_cut_while_learning_a_key() {
    // Device A registered under key 0 on `base`; the vendor (fresh per run,
    // the same each time) then rotates.
    let setup = || {
        let vendor = vendor_before();
        let mut base = Flash::new();
        let mut o = Ob::new();
        {
            let mut a = boot(A, 0xA1, &mut base, &mut o);
            register(&mut a, &vendor, 1, T0);
        }
        (base, rotated(vendor))
    };
    // Cut at every operation in turn, until the whole sequence completes
    // without a cut (the session record is written three times, each a
    // stream of 32-byte programs, perhaps with a sector collection).
    let mut cuts = 0;
    for cut in 0..2000u32 {
        let (mut flash, vendor) = setup();
        let update = vendor.seal_key_update(&A, ROTATE_AT).unwrap();
        let mut o = Ob::new();
        flash.cut_after(cut);
        let outcome = {
            let mut a = boot(A, 0xA1, &mut flash, &mut o);
            a.open_key_update(&update, ROTATE_AT)
                .and_then(|_| a.registered().unwrap().renew_keys(&mut rng(u8::try_from(cut).unwrap())))
        };
        flash.power_on();
        let mut o = Ob::new();
        let mut a = boot(A, 0xA1, &mut flash, &mut o);
        match a.vendor_key_serial() {
            0 => {
                assert!(outcome.is_err(), "cut {cut}");
                assert_eq!(a.open_key_update(&update, ROTATE_AT).unwrap(), 1);
            }
            1 => {
                // Taken exactly once: a second delivery is a replay (or, cut
                // while the next epoch was reserved, there are no keys to open it).
                let again = a.open_key_update(&update, ROTATE_AT);
                if a.needs_key_renewal() {
                    assert_eq!(again, Err(SessionError::NoSession), "cut {cut}");
                } else {
                    assert!(
                        matches!(again, Err(SessionError::Open(OpenError::Replay(ReplayError::Duplicate(_))))),
                        "cut {cut}: {again:?}"
                    );
                }
            }
            s => panic!("serial {s}"),
        }
        let done = outcome.is_ok();
        if done {
            assert_eq!(a.epoch(), 2);
        } else {
            cuts += 1;
        }
        if a.vendor_key_pending() || a.needs_key_renewal() {
            a.registered().unwrap().renew_keys(&mut rng(200)).unwrap();
        }
        assert!(!a.vendor_key_pending());
        // The device's epoch now was opened with key 1, and the vendor takes it.
        report(&mut a, ROTATE_AT + 60);
        let r = flush(&mut a, &vendor, ROTATE_AT + 60);
        assert!(matches!(r.as_slice(), [Ok((false, Some(_)))]), "cut {cut}: {r:?}");
        assert_eq!(epoch_key_serial(&vendor, &A).1, 1);
        if done {
            break;
        }
    }
    assert!(cuts > 40, "{cuts}");
}

/// SPEC §8.6: a format-3 session record (written before vendor keys were
/// learned) is read as "the provisioned key, nothing learned", and the
/// device goes on and rotates; the next write is format 4.
#[test]
fn a_format_3_session_record_is_read_and_rewritten_as_format_4() {
    use spime::device::session::SESSION_RECORD_LEN;
    use spime::device::storage::{RECORD_SESSION, Storage, StorageError};
    let vendor = vendor_before();
    let mut o = Ob::new();
    let mut a = Device::boot(identity_of(A, 0xA1), storage(Flash::new()), &mut o)
        .unwrap()
        .with_key_authority(authority().verifying_key());
    register(&mut a, &vendor, 1, T0);
    let mut st = a.into_storage();
    let mut buf = [0u8; 700];
    let rec = st.read(RECORD_SESSION, &mut buf).unwrap().unwrap().to_vec();
    assert_eq!((rec.len(), rec[0], SESSION_RECORD_LEN), (606, 4, 606));
    // What firmware of the previous release wrote: the first 468 bytes, format 3.
    let mut v3 = rec[..468].to_vec();
    v3[0] = 3;
    st.write(RECORD_SESSION, &v3).unwrap();
    let mut o = Ob::new();
    let mut a = Device::boot(identity_of(A, 0xA1), st, &mut o).unwrap().with_key_authority(authority().verifying_key());
    assert_eq!((a.epoch(), a.epoch_confirmed(), a.vendor_key_serial()), (1, true, 0));
    let vendor = rotated(vendor);
    report(&mut a, ROTATE_AT);
    assert_eq!(flush(&mut a, &vendor, ROTATE_AT), vec![Ok((true, None))]);
    assert_eq!(a.open_key_update(&vendor.seal_key_update(&A, ROTATE_AT).unwrap(), ROTATE_AT).unwrap(), 1);
    let mut st = a.into_storage();
    let rec = st.read(RECORD_SESSION, &mut buf).unwrap().unwrap().to_vec();
    assert_eq!((rec.len(), rec[0], rec[537]), (606, 4, 1));
    // Byte for byte as SPEC §8.6's table: stage, epoch, keys flag; the epoch
    // key is still the provisioned one (flag 0 at 468, zeros after it); the
    // learned key's serial, VS.pub and VX.pub at 538, 542 and 574.
    let k1 = key1().public();
    assert_eq!((rec[1], &rec[2..6], rec[6]), (1, &1u32.to_be_bytes()[..], 1));
    assert!(rec[468..537].iter().all(|&b| b == 0));
    assert_eq!(&rec[538..542], &1u32.to_be_bytes());
    assert_eq!(&rec[542..574], k1.signing.as_bytes());
    assert_eq!(&rec[574..606], &k1.key_agreement);
    // A learned-key flag that is neither 0 nor 1 is a damaged record.
    let mut bad = rec.clone();
    bad[537] = 2;
    st.write(RECORD_SESSION, &bad).unwrap();
    let mut o = Ob::new();
    assert!(matches!(
        Device::boot(identity_of(A, 0xA1), st, &mut o),
        Err(SessionError::Storage(StorageError::Invalid(RECORD_SESSION)))
    ));
}

/// SPEC §8.7: vendor keys belong to the device, not to its owner: after a
/// change of owner the next owner's Register opens its epoch with the key
/// the device learned.
#[test]
fn a_change_of_owner_keeps_the_learned_key() {
    let vendor = vendor_before();
    let mut f = Flash::new();
    let mut o = Ob::new();
    let mut a = boot(A, 0xA1, &mut f, &mut o);
    register(&mut a, &vendor, 1, T0);
    let vendor = rotated(vendor);
    let update = vendor.seal_key_update(&A, ROTATE_AT).unwrap();
    assert_eq!(a.open_key_update(&update, ROTATE_AT).unwrap(), 1);
    a.registered().unwrap().transfer(ROTATE_AT).unwrap();
    assert_eq!(flush(&mut a, &vendor, ROTATE_AT), vec![Ok((false, None))]);
    assert_eq!(a.vendor_key_serial(), 1);
    a.unregistered().unwrap().register(&mut rng(6), generous_consent(3, ROTATE_AT)).unwrap();
    assert_eq!(flush(&mut a, &vendor, ROTATE_AT + 60), vec![Ok((false, Some(2)))]);
    assert_eq!(epoch_key_serial(&vendor, &A), (2, 1));
    a.open_receipt(&vendor.seal_receipt(&A).unwrap()).unwrap();
}

/// Once key 0 is forgotten, the vendor restarts with a keyring whose first
/// pair is certified (`Ingestor::new_certified`): epochs recorded under
/// serial 1 still open, and key 2 can follow.
#[test]
fn a_vendor_restarts_without_key_0() {
    let vendor = vendor_before();
    let mut f = Flash::new();
    let mut o = Ob::new();
    let mut a = boot(A, 0xA1, &mut f, &mut o);
    register(&mut a, &vendor, 1, ROTATE_AT);
    let vendor = rotated(vendor);
    report(&mut a, ROTATE_AT + 60);
    assert_eq!(flush(&mut a, &vendor, ROTATE_AT + 60), vec![Ok((true, None))]);
    assert_eq!(a.open_key_update(&vendor.seal_key_update(&A, ROTATE_AT + 60).unwrap(), ROTATE_AT + 60).unwrap(), 1);
    a.registered().unwrap().renew_keys(&mut rng(5)).unwrap();
    report(&mut a, ROTATE_AT + 120);
    assert_eq!(flush(&mut a, &vendor, ROTATE_AT + 120), vec![Ok((false, Some(2)))]);
    a.open_receipt(&vendor.seal_receipt(&A).unwrap()).unwrap();
    assert_eq!(epoch_key_serial(&vendor, &A), (2, 1));

    // Restart with keys 1 and 2 only.
    let config = IngestConfig { workers: 1, batch_verify: false };
    let store = vendor.into_store();
    let ca = authority().verifying_key();
    let vendor = Ingestor::new_certified(store, key1(), cert(&key1(), 1), ca, config)
        .unwrap()
        .with_vendor_key(key2(), cert(&key2(), 2))
        .unwrap();
    assert_eq!(vendor.vendor_key_serials(ROTATE_AT), vec![(1, true), (2, true)]);
    report(&mut a, ROTATE_AT + 180);
    assert_eq!(flush(&mut a, &vendor, ROTATE_AT + 180), vec![Ok((true, None))], "epoch under serial 1 still opens");
    assert_eq!(a.open_key_update(&vendor.seal_key_update(&A, ROTATE_AT + 180).unwrap(), ROTATE_AT + 180).unwrap(), 2);

    // What new_certified refuses: another authority's certificate, a certificate of other keys.
    let other = SigningKey::from_bytes(&[0xCB; 32]);
    let foreign = VendorKeyCertificate::certify(&key1(), 1, 0, u64::MAX, &other).unwrap();
    assert!(matches!(
        Ingestor::new_certified(MemoryStore::new(), key1(), foreign, ca, config),
        Err(KeyringError::BadCertificate)
    ));
    assert!(matches!(
        Ingestor::new_certified(MemoryStore::new(), key2(), cert(&key1(), 1), ca, config),
        Err(KeyringError::KeysDiffer)
    ));
}
