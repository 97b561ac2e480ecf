//! The vendor ingest pipeline: every acceptance and rejection path.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use spime::consent::ledger::{ConsentEvent, ConsentLedger, LedgerEntry};
use spime::consent::*;
use spime::error::ReplayError;
use spime::message::*;
use spime::seal::{self, Seal, SessionKeys, VendorKeys};
use spime::vendor::sim::{SimDevice, consent};
use spime::vendor::*;
use spime::wire::DeviceId;

mod before_begin;
use before_begin::{Before, BeforeBegin};

const NOW: u64 = 1_000_000;
const LATER: u64 = 40_000_000;

fn vendor_keys() -> VendorKeys {
    VendorKeys::from_secrets(&[1; 32], &[2; 32])
}

fn vendor(config: IngestConfig) -> Ingestor<MemoryStore> {
    Ingestor::new(MemoryStore::new(), vendor_keys(), config)
}

fn strict() -> IngestConfig {
    IngestConfig { workers: 1, batch_verify: false }
}

fn dev(n: u8) -> SimDevice {
    SimDevice::new(DeviceId([n; 8]), [n.wrapping_add(100); 32], &vendor_keys()).unwrap()
}

fn analytics() -> SignedConsent {
    consent(1, &[(Purpose::USAGE_ANALYTICS, CategorySet::EMPTY.with(DataCategory::UsageCounters))], 0)
}

fn register(d: &mut SimDevice, c: SignedConsent) -> Vec<u8> {
    let reg = Register {
        certificate: d.certificate().clone(),
        firmware: FirmwareVersion { major: 1, minor: 2, patch: 3, build: 4 },
        consent: c,
        transfer: None,
    };
    if d.session().is_some() { d.seal_new_epoch(&reg).unwrap() } else { d.seal(&reg).unwrap() }
}

fn usage(purpose: Purpose, version: u32, category: DataCategory) -> Usage {
    let mut metrics = heapless::Vec::new();
    metrics.push(Metric { id: 1, category, value: MetricValue::Counter(7) }).unwrap();
    Usage { purpose, consent_version: version, window_start: 0, window_end: 10, metrics }
}

fn ok_usage() -> Usage {
    usage(Purpose::USAGE_ANALYTICS, 1, DataCategory::UsageCounters)
}

fn fault(purpose: Purpose) -> Fault {
    Fault {
        purpose,
        consent_version: 1,
        code: 42,
        severity: Severity::Error,
        component: 3,
        firmware: FirmwareVersion { major: 1, minor: 2, patch: 3, build: 4 },
        uptime_s: 100,
        reboot_reason: RebootReason::Watchdog,
        occurrences: 2,
        first_seen: 1,
        last_seen: 2,
        context: heapless::Vec::new(),
    }
}

fn registered(v: &Ingestor<MemoryStore>, n: u8) -> SimDevice {
    let mut d = dev(n);
    v.ingest(&register(&mut d, analytics()), NOW).unwrap();
    d
}

fn reason(r: Outcome) -> &'static str {
    r.unwrap_err().reason()
}

#[test]
fn register_then_usage_fault_and_receipt() {
    let v = vendor(IngestConfig::default());
    let mut d = dev(1);
    let a = v.ingest(&register(&mut d, analytics()), NOW).unwrap();
    assert_eq!(
        a.event,
        Event::Registered {
            relationship: 1,
            new_relationship: true,
            firmware: FirmwareVersion { major: 1, minor: 2, patch: 3, build: 4 },
            consent_version: 1
        }
    );
    let a = v.ingest(&d.seal(&ok_usage()).unwrap(), NOW).unwrap();
    assert!(matches!(a.event, Event::Usage(_)));
    let a = v.ingest(&d.seal(&fault(Purpose::ESSENTIAL)).unwrap(), NOW).unwrap();
    assert!(matches!(a.event, Event::Fault(_)));
    let receipt: Receipt = d.open(&v.seal_receipt(&d.id()).unwrap()).unwrap();
    assert_eq!(receipt.consent_version, 1);
    assert_eq!(receipt.consent_digest, consent_digest(&postcard::to_allocvec(&analytics()).unwrap()));
    assert_eq!(v.store().message_count().unwrap(), 3);
    let mut tx = v.store().begin().unwrap();
    let entries = tx.consent_entries(&d.id()).unwrap();
    assert_eq!(entries.len(), 1);
    // The ledger keeps a proof anyone can re-check with the device key alone.
    let p = &entries[0].proof;
    seal::verify_signature(&d.key().public(), &p.header, &p.body, &p.signature.0).unwrap();
}

#[test]
fn decode_errors() {
    let v = vendor(strict());
    assert_eq!(reason(v.ingest(b"", NOW)), "decode");
    assert_eq!(reason(v.ingest(&[9; 200], NOW)), "decode");
    let mut d = registered(&v, 1);
    // A well-sealed body that does not decode as its kind.
    let mut bytes = d.seal(&Transfer::unsigned(5, 1)).unwrap();
    bytes[0] = (bytes[0] & 0xf0) | Kind::USAGE.nibble();
    assert_eq!(reason(v.ingest(&bytes, NOW)), "unauthentic"); // the header is authenticated
}

use spime::wire::Kind;

#[test]
fn vendor_kinds_are_refused() {
    let v = vendor(strict());
    let d = registered(&v, 1);
    let receipt = v.seal_receipt(&d.id()).unwrap();
    assert_eq!(reason(v.ingest(&receipt, NOW)), "wrong-direction");
}

#[test]
fn tampering_is_unauthentic() {
    let v = vendor(strict());
    let mut d = registered(&v, 1);
    let good = d.seal(&ok_usage()).unwrap();
    for i in [0usize, 31, 40, good.len() - 1] {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        let r = v.ingest(&bad, NOW);
        assert!(r.is_err(), "byte {i}");
    }
    let mut bad = good.clone();
    bad[40] ^= 1;
    assert_eq!(reason(v.ingest(&bad, NOW)), "unauthentic");
    // The untouched message is still accepted: nothing was kept of the bad ones.
    v.ingest(&good, NOW).unwrap();
}

#[test]
fn wrong_signer_is_unauthentic() {
    // Right session keys, signed by another key: decrypts, fails the signature.
    let v = vendor(strict());
    let mut d = registered(&v, 1);
    let other = dev(9);
    let mut out = vec![0u8; Usage::MAX_SEALED_LEN];
    let session = d.session().unwrap().clone();
    let n = seal::seal(
        &mut out,
        &Seal { device: d.id(), epoch: session.epoch, counter: 50, ephemeral: None },
        &ok_usage(),
        other.key().signing(),
        &session,
    )
    .unwrap();
    assert_eq!(reason(v.ingest(&out[..n], NOW)), "unauthentic");
    for batch in [true, false] {
        let v2 = vendor(IngestConfig { workers: 2, batch_verify: batch });
        let mut d2 = registered(&v2, 1);
        let good = d2.seal(&ok_usage()).unwrap();
        let r = v2.ingest_batch(&[&good, &out[..n]], NOW);
        assert!(r[0].is_ok());
        assert_eq!(r[1].clone().unwrap_err().reason(), "unauthentic");
        let _ = &mut d;
    }
}

#[test]
fn forged_certificate_is_unauthentic() {
    let v = vendor(strict());
    let rogue = VendorKeys::from_secrets(&[7; 32], &[8; 32]);
    let mut d = SimDevice::new(DeviceId([5; 8]), [5; 32], &rogue).unwrap();
    // Sealed to the real vendor's key-agreement key, but certified by a rogue vendor.
    let reg = Register {
        certificate: d.certificate().clone(),
        firmware: FirmwareVersion { major: 1, minor: 0, patch: 0, build: 0 },
        consent: analytics(),
        transfer: None,
    };
    let (session, eph) = seal::keys::device_start_epoch_with(&[3; 32], &d.id(), 1, &vendor_keys().public()).unwrap();
    let bytes = d.seal_with(&reg, &session, Some(eph)).unwrap();
    assert_eq!(reason(v.ingest(&bytes, NOW)), "unauthentic");
}

#[test]
fn certificate_for_another_device_is_refused() {
    let v = vendor(strict());
    let mut d = dev(1);
    let other = dev(2);
    let reg = Register {
        certificate: other.certificate().clone(),
        firmware: FirmwareVersion { major: 1, minor: 0, patch: 0, build: 0 },
        consent: analytics(),
        transfer: None,
    };
    assert_eq!(reason(v.ingest(&d.seal(&reg).unwrap(), NOW)), "certificate-mismatch");
}

#[test]
fn reregistration_with_another_key_is_refused() {
    let v = vendor(strict());
    let d = registered(&v, 1);
    // Same device id, another key, validly certified: the registered key wins.
    let mut impostor = SimDevice::new(d.id(), [77; 32], &vendor_keys()).unwrap();
    let _ = impostor.seal(&ok_usage()).unwrap(); // epoch 1 locally, so the Register opens epoch 2
    assert_eq!(reason(v.ingest(&register(&mut impostor, analytics()), NOW)), "certificate-mismatch");
}

#[test]
fn bad_owner_signature_is_unauthentic() {
    let v = vendor(strict());
    let mut d = dev(1);
    let mut c = analytics();
    c.owner =
        Some(OwnerProof { owner_key: dev(3).key().public().to_bytes(), signature: spime::codec::Bytes64([1; 64]) });
    assert_eq!(reason(v.ingest(&register(&mut d, c), NOW)), "owner-proof");
}

#[test]
fn good_owner_signature_is_accepted() {
    use ed25519_dalek::ed25519::signature::MultipartSigner;
    let v = vendor(strict());
    let mut d = dev(1);
    let owner = ed25519_dalek::SigningKey::from_bytes(&[44; 32]);
    let mut c = analytics();
    let state = postcard::to_allocvec(&c.state).unwrap();
    let sig = owner.multipart_sign(&[OWNER_CONSENT_DST, &d.id().0, &state]);
    c.owner = Some(OwnerProof {
        owner_key: owner.verifying_key().to_bytes(),
        signature: spime::codec::Bytes64(sig.to_bytes()),
    });
    v.ingest(&register(&mut d, c), NOW).unwrap();
}

#[test]
fn weak_ephemeral_key_is_refused() {
    let v = vendor(strict());
    let mut d = dev(1);
    let reg = Register {
        certificate: d.certificate().clone(),
        firmware: FirmwareVersion { major: 1, minor: 0, patch: 0, build: 0 },
        consent: analytics(),
        transfer: None,
    };
    let junk = SessionKeys {
        epoch: 1,
        device_to_vendor: seal::AeadKey::from_bytes([0; 32]),
        vendor_to_device: seal::AeadKey::from_bytes([0; 32]),
    };
    let bytes = d.seal_with(&reg, &junk, Some([0; 32])).unwrap();
    assert_eq!(reason(v.ingest(&bytes, NOW)), "weak-key");
}

#[test]
fn replays_are_refused() {
    let v = vendor(strict());
    let mut d = registered(&v, 1);
    let m = d.seal(&ok_usage()).unwrap();
    v.ingest(&m, NOW).unwrap();
    assert_eq!(v.ingest(&m, NOW), Err(IngestError::Replay(ReplayError::Duplicate(1))));
    // Far ahead, then an old counter falls below the window.
    d.counter = 1000;
    v.ingest(&d.seal(&ok_usage()).unwrap(), NOW).unwrap();
    d.counter = 2;
    assert!(matches!(
        v.ingest(&d.seal(&ok_usage()).unwrap(), NOW),
        Err(IngestError::Replay(ReplayError::TooOld { .. }))
    ));
    // Within one batch, the second copy is the replay.
    let m = {
        d.counter = 1001;
        d.seal(&ok_usage()).unwrap()
    };
    let r = v.ingest_batch(&[&m, &m], NOW);
    assert!(r[0].is_ok());
    assert_eq!(r[1].clone().unwrap_err().reason(), "replay");
}

#[test]
fn out_of_order_within_window_is_accepted() {
    let v = vendor(IngestConfig::default());
    let mut d = registered(&v, 1);
    let msgs: Vec<Vec<u8>> = (0..10).map(|_| d.seal(&ok_usage()).unwrap()).collect();
    for m in msgs.iter().rev() {
        v.ingest(m, NOW).unwrap();
    }
}

#[test]
fn unknown_devices_are_refused() {
    let v = vendor(strict());
    let mut d = dev(1);
    let _ = d.seal(&ok_usage()).unwrap(); // opens epoch 1 locally, counter 0
    assert_eq!(reason(v.ingest(&d.seal(&ok_usage()).unwrap(), NOW)), "unknown-device");
    let mut d = dev(2);
    // The first message carries an ephemeral key, but is not a Register.
    assert_eq!(reason(v.ingest(&d.seal(&ok_usage()).unwrap(), NOW)), "unknown-device");
}

#[test]
fn epochs_stale_unopened_and_renewed() {
    let v = vendor(strict());
    let mut d = registered(&v, 1);
    let old = d.session().unwrap().clone();
    // Any message may open the next epoch.
    let a = v.ingest(&d.seal_new_epoch(&ok_usage()).unwrap(), NOW).unwrap();
    assert!(matches!(a.event, Event::Usage(_)));
    assert_eq!(v.store().devices().unwrap()[0].epoch(), 2);
    v.ingest(&d.seal(&ok_usage()).unwrap(), NOW).unwrap();
    // A message under the old epoch is stale.
    let m = d.seal_with(&ok_usage(), &old, None).unwrap();
    assert_eq!(v.ingest(&m, NOW), Err(IngestError::StaleEpoch { current: 2, got: 1 }));
    // Claiming epoch 3 without the ephemeral key that opens it.
    let mut fake = old.clone();
    fake.epoch = 3;
    let m = d.seal_with(&ok_usage(), &fake, None).unwrap();
    assert_eq!(v.ingest(&m, NOW), Err(IngestError::UnopenedEpoch { current: 2, got: 3 }));
    // An ephemeral key for an epoch at or below the current one is not a new epoch.
    let m = d.seal_with(&ok_usage(), &old, Some([9; 32])).unwrap();
    assert_eq!(v.ingest(&m, NOW), Err(IngestError::StaleEpoch { current: 2, got: 1 }));
}

#[test]
fn unconsented_data_is_refused() {
    let v = vendor(strict());
    let mut d = registered(&v, 1);
    let cases = [
        usage(Purpose::MARKETING, 1, DataCategory::UsageCounters),
        usage(Purpose::USAGE_ANALYTICS, 1, DataCategory::Environment),
        usage(Purpose::USAGE_ANALYTICS, 2, DataCategory::UsageCounters),
    ];
    for u in cases {
        assert!(matches!(v.ingest(&d.seal(&u).unwrap(), NOW), Err(IngestError::Unconsented(_))), "{u:?}");
    }
    assert_eq!(reason(v.ingest(&d.seal(&fault(Purpose::DIAGNOSTICS)).unwrap(), NOW)), "unconsented");
    // Past the re-confirm date every grant but Essential lapses.
    assert_eq!(reason(v.ingest(&d.seal(&ok_usage()).unwrap(), LATER)), "unconsented");
    v.ingest(&d.seal(&fault(Purpose::ESSENTIAL)).unwrap(), LATER).unwrap();
    assert_eq!(v.store().message_count().unwrap(), 2);
}

#[test]
fn consent_narrowed_withdrawn_and_stale() {
    let v = vendor(strict());
    let mut d = registered(&v, 1);
    let narrowed = consent(2, &[], 0);
    let a = v.ingest(&d.seal(&ConsentUpdate { consent: narrowed }).unwrap(), NOW).unwrap();
    assert_eq!(a.event, Event::ConsentChanged { previous: 1, version: 2 });
    assert_eq!(reason(v.ingest(&d.seal(&ok_usage()).unwrap(), NOW)), "unconsented");
    let old = ConsentUpdate { consent: analytics() };
    assert_eq!(
        v.ingest(&d.seal(&old).unwrap(), NOW),
        Err(IngestError::Consent(ConsentError::Stale { held: 2, got: 1 }))
    );
    // The same version with other content conflicts; the very same state is a duplicate.
    let other = ConsentUpdate {
        consent: consent(2, &[(Purpose::DIAGNOSTICS, CategorySet::EMPTY.with(DataCategory::DeviceHealth))], 0),
    };
    assert_eq!(reason(v.ingest(&d.seal(&other).unwrap(), NOW)), "conflicting-consent");
    let same = ConsentUpdate { consent: consent(2, &[], 0) };
    assert_eq!(v.ingest(&d.seal(&same).unwrap(), NOW).unwrap().event, Event::ConsentRepeated { version: 2 });
    let receipt: Receipt = d.open(&v.seal_receipt(&d.id()).unwrap()).unwrap();
    assert_eq!(receipt.consent_version, 2);
}

#[test]
fn transfer_resets_and_reregistration_starts_fresh() {
    let v = vendor(strict());
    let mut d = registered(&v, 1);
    let a = v.ingest(&d.seal(&Transfer::unsigned(7, 1)).unwrap(), NOW).unwrap();
    assert_eq!(a.event, Event::Transferred { at: 7 });
    // Essential only now: the old owner's grants are gone.
    assert_eq!(reason(v.ingest(&d.seal(&ok_usage()).unwrap(), NOW)), "unconsented");
    v.ingest(&d.seal(&fault(Purpose::ESSENTIAL)).unwrap(), NOW).unwrap();
    // The new owner must register before sending consent.
    let c = ConsentUpdate { consent: consent(5, &[], 0) };
    assert_eq!(reason(v.ingest(&d.seal(&c).unwrap(), NOW)), "awaiting-registration");
    assert_eq!(v.seal_receipt(&d.id()), Err(SendError::NoConsent));
    // The old owner's consent cannot come back: versions go forward for the device's whole life.
    assert_eq!(
        v.ingest(&register(&mut d, analytics()), NOW),
        Err(IngestError::Consent(ConsentError::Stale { held: 2, got: 1 }))
    );
    // A new relationship, with fresh consent.
    let fresh = consent(3, &[(Purpose::DIAGNOSTICS, CategorySet::EMPTY.with(DataCategory::DeviceHealth))], 0);
    let a = v.ingest(&register(&mut d, fresh), NOW).unwrap();
    assert!(matches!(a.event, Event::Registered { relationship: 2, new_relationship: true, .. }));
    assert_eq!(reason(v.ingest(&d.seal(&ok_usage()).unwrap(), NOW)), "unconsented");
    let mut f = fault(Purpose::DIAGNOSTICS);
    f.consent_version = 3;
    v.ingest(&d.seal(&f).unwrap(), NOW).unwrap();
    let mut tx = v.store().begin().unwrap();
    let entries = tx.consent_entries(&d.id()).unwrap();
    let events: Vec<(ConsentEvent, u32)> = entries.iter().map(|e| (e.event, e.version)).collect();
    assert_eq!(events, [(ConsentEvent::Given, 1), (ConsentEvent::ResetOnTransfer, 2), (ConsentEvent::Given, 3)]);
    // The stored ledger is a valid hash chain whose proofs verify with the device key.
    let ledger = ConsentLedger::from_entries(d.id(), entries).unwrap();
    ledger.verify_proofs(&d.key().public()).unwrap();
    drop(tx);
    assert_eq!(v.store().devices().unwrap()[0].relationship, 2);
}

#[test]
fn decommissioned_devices_are_refused() {
    let v = vendor(strict());
    let mut d = registered(&v, 1);
    let a = v.ingest(&d.seal(&Decommission { at: 9, reason: DecommissionReason::Recycled }).unwrap(), NOW).unwrap();
    assert!(matches!(a.event, Event::Decommissioned { .. }));
    assert_eq!(reason(v.ingest(&d.seal(&fault(Purpose::ESSENTIAL)).unwrap(), NOW)), "decommissioned");
    assert_eq!(reason(v.ingest(&register(&mut d, analytics()), NOW)), "decommissioned");
    assert_eq!(v.seal_receipt(&d.id()), Err(SendError::Decommissioned));
}

/// A store whose commits fail while `failing` is set.
struct FailingStore(MemoryStore, core::sync::atomic::AtomicBool);

struct FailingTxn<'a>(MemoryTxn<'a>, bool);

macro_rules! delegate {
    () => {
        impl DeviceRegistry for FailingTxn<'_> {
            fn device(&mut self, d: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
                self.0.device(d)
            }
            fn put_device(&mut self, r: &DeviceRecord) -> Result<(), StoreError> {
                self.0.put_device(r)
            }
        }
        impl ReplayWindows for FailingTxn<'_> {
            fn window(&mut self, d: &DeviceId) -> Result<seal::replay::ReplayWindow, StoreError> {
                self.0.window(d)
            }
            fn put_window(&mut self, d: &DeviceId, w: &seal::replay::ReplayWindow) -> Result<(), StoreError> {
                self.0.put_window(d, w)
            }
        }
        impl ConsentLedgerStore for FailingTxn<'_> {
            fn append_consent(&mut self, d: &DeviceId, e: &LedgerEntry) -> Result<(), StoreError> {
                self.0.append_consent(d, e)
            }
            fn consent_entries(&mut self, d: &DeviceId) -> Result<Vec<LedgerEntry>, StoreError> {
                self.0.consent_entries(d)
            }
        }
        impl MessageLog for FailingTxn<'_> {
            fn put_message(&mut self, m: &StoredMessage) -> Result<(), StoreError> {
                self.0.put_message(m)
            }
            fn message(&mut self, d: &DeviceId, c: u64) -> Result<Option<StoredMessage>, StoreError> {
                self.0.message(d, c)
            }
        }
        impl VendorCounters for FailingTxn<'_> {
            fn next_counter(&mut self, d: &DeviceId) -> Result<u64, StoreError> {
                self.0.next_counter(d)
            }
        }
        impl NoticeLog for FailingTxn<'_> {
            fn record_notice(&mut self, n: &NoticeRecord) -> Result<(), StoreError> {
                self.0.record_notice(n)
            }
            fn notices_since(&mut self, d: &DeviceId, p: Purpose, s: u64) -> Result<u32, StoreError> {
                self.0.notices_since(d, p, s)
            }
        }
        impl DataErasure for FailingTxn<'_> {
            fn erase_messages(&mut self, d: &DeviceId, s: &ErasureScope) -> Result<Vec<(Purpose, u64)>, StoreError> {
                self.0.erase_messages(d, s)
            }
            fn erase_notices(&mut self, d: &DeviceId, s: &ErasureScope) -> Result<u64, StoreError> {
                self.0.erase_notices(d, s)
            }
        }
    };
}
delegate!();

impl Transaction for FailingTxn<'_> {
    fn commit(self) -> Result<(), StoreError> {
        if self.1 { Err(StoreError::Backend("disk full".into())) } else { self.0.commit() }
    }
}

impl Store for FailingStore {
    type Txn<'a> = FailingTxn<'a>;
    fn begin(&self) -> Result<FailingTxn<'_>, StoreError> {
        Ok(FailingTxn(self.0.begin()?, self.1.load(core::sync::atomic::Ordering::SeqCst)))
    }
    fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        self.0.devices()
    }
    fn message_count(&self) -> Result<u64, StoreError> {
        self.0.message_count()
    }
    fn device(&self, d: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        self.0.device(d)
    }
    fn messages(&self, d: &DeviceId, q: &MessageQuery) -> Result<Vec<StoredMessage>, StoreError> {
        self.0.messages(d, q)
    }
    fn consent_ledger(&self, d: &DeviceId) -> Result<Vec<LedgerEntry>, StoreError> {
        self.0.consent_ledger(d)
    }
    fn notices(&self, d: &DeviceId) -> Result<Vec<NoticeRecord>, StoreError> {
        self.0.notices(d)
    }
    fn scrub(&self) -> Result<(), StoreError> {
        self.0.scrub()
    }
}

#[test]
fn storage_failure_acknowledges_nothing() {
    use core::sync::atomic::{AtomicBool, Ordering};
    let v = Ingestor::new(FailingStore(MemoryStore::new(), AtomicBool::new(true)), vendor_keys(), strict());
    let mut d = dev(1);
    let reg = register(&mut d, analytics());
    assert_eq!(v.ingest(&reg, NOW), Err(IngestError::Storage(StoreError::Backend("disk full".into()))));
    assert_eq!(v.store().message_count().unwrap(), 0);
    assert!(v.store().devices().unwrap().is_empty());
    // Once the store works again, the same message is accepted: nothing was kept.
    v.store().1.store(false, Ordering::SeqCst);
    v.ingest(&reg, NOW).unwrap();
    let good = d.seal(&ok_usage()).unwrap();
    v.store().1.store(true, Ordering::SeqCst);
    let r = v.ingest_batch(&[&good, b"junk"], NOW);
    assert_eq!(r[0].clone().unwrap_err().reason(), "storage");
    assert_eq!(r[1].clone().unwrap_err().reason(), "storage");
    // Nothing is sent when the counter cannot be made durable.
    assert!(matches!(v.seal_receipt(&d.id()), Err(SendError::Storage(_))));
    let mut recall = notice(Purpose::ESSENTIAL, NoticeKind::Recall);
    recall.channel = Channel::OnDevice;
    assert!(matches!(v.seal_notice(&d.id(), &recall, NOW), Err(SendError::Storage(_))));
    v.store().1.store(false, Ordering::SeqCst);
    v.ingest(&good, NOW).unwrap();
    assert_eq!(v.store().message_count().unwrap(), 2);
}

fn notice(purpose: Purpose, kind: NoticeKind) -> Notice {
    Notice {
        id: 1,
        purpose,
        channel: Channel::App,
        topic: 3,
        kind,
        issued_at: NOW,
        expires_at: LATER,
        title: "t".try_into().unwrap(),
        text: "x".try_into().unwrap(),
    }
}

#[test]
fn notices_follow_contact_preferences() {
    let v = vendor(strict());
    let mut d = dev(1);
    let mut c = analytics();
    c.state.allow_channel(Purpose::PROACTIVE_SERVICE, Channel::App).unwrap();
    c.state
        .set_cap(FrequencyCap { purpose: Purpose::PROACTIVE_SERVICE, max_notices: 1, period_seconds: 86_400 })
        .unwrap();
    c.state.contact.muted_topics.push(9).unwrap();
    v.ingest(&register(&mut d, c), NOW).unwrap();
    let n = notice(Purpose::PROACTIVE_SERVICE, NoticeKind::MaintenanceDue);
    let sealed = v.seal_notice(&d.id(), &n, NOW).unwrap();
    assert_eq!(d.open::<Notice>(&sealed).unwrap(), n);
    assert_eq!(
        v.seal_notice(&d.id(), &n, NOW + 10),
        Err(SendError::Refused(ContactDenial::FrequencyCap {
            purpose: Purpose::PROACTIVE_SERVICE,
            max: 1,
            period_seconds: 86_400,
            sent: 1
        }))
    );
    v.seal_notice(&d.id(), &n, NOW + 86_400).unwrap();
    assert!(matches!(
        v.seal_notice(&d.id(), &notice(Purpose::MARKETING, NoticeKind::SuppliesOffer), NOW),
        Err(SendError::Refused(ContactDenial::ChannelNotGranted { .. }))
    ));
    let mut email = n.clone();
    email.channel = Channel::Email;
    assert!(matches!(
        v.seal_notice(&d.id(), &email, NOW),
        Err(SendError::Refused(ContactDenial::ChannelNotGranted { .. }))
    ));
    let mut muted = n.clone();
    muted.topic = 9;
    assert_eq!(
        v.seal_notice(&d.id(), &muted, NOW + 3 * 86_400),
        Err(SendError::Refused(ContactDenial::Muted { topic: 9, version: 1 }))
    );
    // A safety recall always goes out on the device itself.
    let mut recall = notice(Purpose::ESSENTIAL, NoticeKind::Recall);
    recall.channel = Channel::OnDevice;
    recall.topic = 9;
    v.seal_notice(&d.id(), &recall, NOW).unwrap();
    assert_eq!(v.seal_notice(&DeviceId([0; 8]), &n, NOW), Err(SendError::UnknownDevice));
    // Vendor counters never repeat.
    let a = spime::seal::Envelope::parse(&v.seal_receipt(&d.id()).unwrap()).unwrap().header.counter;
    let b = spime::seal::Envelope::parse(&v.seal_receipt(&d.id()).unwrap()).unwrap().header.counter;
    assert!(b > a);
}

fn fleet_messages(v: &Ingestor<MemoryStore>, devices: u8, per_device: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut fleet: Vec<SimDevice> = (1..=devices).map(dev).collect();
    for d in &mut fleet {
        out.push(register(d, analytics()));
    }
    for i in 0..per_device {
        for d in &mut fleet {
            let m = if i % 5 == 4 { d.seal(&fault(Purpose::ESSENTIAL)).unwrap() } else { d.seal(&ok_usage()).unwrap() };
            out.push(m);
        }
    }
    let _ = v;
    out
}

#[test]
fn every_configuration_accepts_the_same_set() {
    let mut reference: Option<Vec<Result<u64, &'static str>>> = None;
    for (workers, batch) in [(1, false), (1, true), (2, true), (2, false), (3, true)] {
        let v = vendor(IngestConfig { workers, batch_verify: batch });
        let mut msgs = fleet_messages(&v, 6, 20);
        // Sprinkle rejections: a replay, a tampered one, a wrong signer.
        msgs.push(msgs[10].clone());
        let mut t = msgs[20].clone();
        let last = t.len() - 1;
        t[last] ^= 1;
        msgs.push(t);
        let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
        let mut results = Vec::new();
        for chunk in refs.chunks(37) {
            results
                .extend(v.ingest_batch(chunk, NOW).into_iter().map(|r| r.map(|a| a.counter).map_err(|e| e.reason())));
        }
        match &reference {
            None => reference = Some(results),
            Some(r) => assert_eq!(r, &results, "workers {workers} batch {batch}"),
        }
    }
    let r = reference.unwrap();
    assert_eq!(r.iter().filter(|x| x.is_err()).count(), 2);
}

#[test]
fn batch_with_a_bad_signature_falls_back_per_message() {
    let v = vendor(IngestConfig { workers: 1, batch_verify: true });
    let mut d = registered(&v, 1);
    let other = dev(9);
    let session = d.session().unwrap().clone();
    let mut msgs: Vec<Vec<u8>> = (0..20).map(|_| d.seal(&ok_usage()).unwrap()).collect();
    let mut out = vec![0u8; Usage::MAX_SEALED_LEN];
    let n = seal::seal(
        &mut out,
        &Seal { device: d.id(), epoch: session.epoch, counter: 500, ephemeral: None },
        &ok_usage(),
        other.key().signing(),
        &session,
    )
    .unwrap();
    msgs.insert(7, out[..n].to_vec());
    let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
    let r = v.ingest_batch(&refs, NOW);
    for (i, o) in r.iter().enumerate() {
        assert_eq!(o.is_ok(), i != 7, "{i}");
    }
    assert_eq!(v.store().message_count().unwrap(), 21);
}

/// A batch of several devices' messages, interleaved, with a replay of
/// one at the end: one worker or several, each device's messages are taken
/// in order on one worker, so every worker count gives the same outcomes.
#[test]
fn workers_agree_on_interleaved_devices_and_a_replay_in_one_batch() {
    for workers in [1, 2, 3] {
        for batch_verify in [true, false] {
            let v = vendor(IngestConfig { workers, batch_verify });
            let mut devices: Vec<SimDevice> = (1..=5).map(|n| registered(&v, n)).collect();
            let mut sealed = Vec::new();
            for _ in 0..3 {
                for d in &mut devices {
                    sealed.push(d.seal(&ok_usage()).unwrap());
                }
            }
            sealed.push(sealed[7].clone());
            let batch: Vec<&[u8]> = sealed.iter().map(Vec::as_slice).collect();
            let r = v.ingest_batch(&batch, NOW);
            for (i, o) in r.iter().take(15).enumerate() {
                assert!(o.is_ok(), "workers {workers}, message {i}: {o:?}");
            }
            assert_eq!(r[15].clone().unwrap_err().reason(), "replay", "workers {workers}");
            assert_eq!(v.store().message_count().unwrap(), 15 + 5, "workers {workers}");
        }
    }
}

/// Runs a hook on the store just before the `n`th `begin` from when it
/// was armed: another writer committing while a batch is verified, at a
/// chosen moment.
#[derive(Default)]
struct Meddling {
    countdown: core::sync::atomic::AtomicUsize,
    hook: std::sync::Mutex<Option<Hook>>,
}

/// What [`Meddling`] runs.
type Hook = Box<dyn FnOnce(&MemoryStore) + Send>;

impl Meddling {
    fn arm(&self, n: usize, hook: impl FnOnce(&MemoryStore) + Send + 'static) {
        *self.hook.lock().unwrap() = Some(Box::new(hook));
        self.countdown.store(n, core::sync::atomic::Ordering::SeqCst);
    }
}

impl Before for Meddling {
    fn before(&self, store: &MemoryStore) {
        use core::sync::atomic::Ordering;
        if self.countdown.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| c.checked_sub(1)) == Ok(1) {
            let hook = self.hook.lock().unwrap().take();
            if let Some(h) = hook {
                h(store);
            }
        }
    }
}

/// The store counts commits, so a batch is verified with no transaction
/// open. A commit made meanwhile (here: another writer takes the first
/// message's counter) is seen at the batch's write: that device's message
/// is judged again and refused as a replay; the other device's message,
/// untouched, is accepted as verified.
#[test]
fn a_commit_while_a_batch_verifies_is_seen_at_its_write() {
    let v = Ingestor::new(
        BeforeBegin::new(Meddling::default()),
        vendor_keys(),
        IngestConfig { workers: 1, batch_verify: true },
    );
    let (mut a, mut b) = (dev(1), dev(2));
    for d in [&mut a, &mut b] {
        v.ingest(&register(d, analytics()), NOW).unwrap();
    }
    let (ma, mb) = (a.seal(&ok_usage()).unwrap(), b.seal(&ok_usage()).unwrap());
    let counter = spime::wire::Header::parse(&ma).unwrap().0.counter;
    // The batch's first `begin` reads; the second, after verifying, writes.
    v.store().before.arm(2, move |s| {
        let mut tx = s.begin().unwrap();
        let mut w = tx.window(&DeviceId([1; 8])).unwrap();
        w.accept(counter).unwrap();
        tx.put_window(&DeviceId([1; 8]), &w).unwrap();
        tx.commit().unwrap();
    });
    let r = v.ingest_batch(&[&ma, &mb], NOW);
    assert_eq!(r[0].clone().unwrap_err().reason(), "replay");
    assert!(r[1].is_ok());
    assert_eq!(v.store().message_count().unwrap(), 2 + 1);
    // Without a commit in between, both are accepted.
    let (ma, mb) = (a.seal(&ok_usage()).unwrap(), b.seal(&ok_usage()).unwrap());
    assert!(v.ingest_batch(&[&ma, &mb], NOW).iter().all(Result::is_ok));
}

/// A `Meddling` pipeline, shared so that a hook can ingest through it.
fn meddled() -> std::sync::Arc<Ingestor<BeforeBegin<Meddling>>> {
    let store = BeforeBegin::new(Meddling::default());
    std::sync::Arc::new(Ingestor::new(store, vendor_keys(), IngestConfig { workers: 1, batch_verify: true }))
}

/// Openers that fail in another batch while this one verifies (that batch
/// commits nothing: the store's count does not move) still count at this
/// batch's write: the device's eighth failure throttles it, so of this
/// batch's two openers only the first is tried, as if the batches had run
/// one after the other.
#[test]
fn openers_failed_while_a_batch_verifies_throttle_it() {
    let v = meddled();
    let mut d = dev(1);
    v.ingest(&register(&mut d, analytics()), NOW).unwrap();
    // The outsider: the same device id, its own key; its openers fail.
    let mut outsider = SimDevice::new(d.id(), [99; 32], &vendor_keys()).unwrap();
    let mut forged = move || {
        outsider.counter += 1_000;
        outsider.seal_new_epoch(&ok_usage()).unwrap()
    };
    let _ = forged(); // epoch 1: not an opener for the vendor
    for _ in 1..OPENER_FAILURES {
        assert_eq!(v.ingest(&forged(), NOW), Err(IngestError::Unauthentic));
    }
    let (a, b, c) = (forged(), forged(), forged());
    let weak = std::sync::Arc::downgrade(&v);
    v.store().before.arm(2, move |_| {
        let v = weak.upgrade().unwrap();
        assert_eq!(v.ingest(&c, NOW), Err(IngestError::Unauthentic));
    });
    assert_eq!(v.ingest_batch(&[&a, &b], NOW), [Err(IngestError::Unauthentic), Err(IngestError::Throttled)]);
}

/// A device revoked while a batch verifies, and refused by a batch that
/// began after the revocation, is refused by the first batch too at its
/// write: no acceptance commits after a refusal that saw the denylist.
#[test]
fn a_revocation_while_a_batch_verifies_is_seen_at_its_write() {
    let v = meddled();
    let (mut a, mut b) = (dev(1), dev(2));
    for d in [&mut a, &mut b] {
        v.ingest(&register(d, analytics()), NOW).unwrap();
    }
    let (ma, mb, later) = (a.seal(&ok_usage()).unwrap(), b.seal(&ok_usage()).unwrap(), a.seal(&ok_usage()).unwrap());
    let weak = std::sync::Arc::downgrade(&v);
    v.store().before.arm(2, move |_| {
        let v = weak.upgrade().unwrap();
        v.revoke_device(DeviceId([1; 8]));
        assert_eq!(v.ingest(&later, NOW), Err(IngestError::Revoked));
    });
    let r = v.ingest_batch(&[&ma, &mb], NOW);
    assert_eq!(r[0], Err(IngestError::Revoked));
    assert!(r[1].is_ok(), "{:?}", r[1]);
    assert_eq!(v.store().message_count().unwrap(), 2 + 1);
}

/// Another writer narrows a device's record (here: decommissions it) while
/// a batch verifies: the batch's message from it is judged against the
/// record at the write.
#[test]
fn a_record_changed_while_a_batch_verifies_is_judged_at_its_write() {
    let v = meddled();
    let mut d = dev(1);
    v.ingest(&register(&mut d, analytics()), NOW).unwrap();
    let m = d.seal(&ok_usage()).unwrap();
    v.store().before.arm(2, |s| {
        let mut tx = s.begin().unwrap();
        let mut r = tx.device(&DeviceId([1; 8])).unwrap().unwrap();
        r.lifecycle = Lifecycle::Decommissioned;
        tx.put_device(&r).unwrap();
        tx.commit().unwrap();
    });
    assert_eq!(v.ingest(&m, NOW).unwrap_err().reason(), "decommissioned");
    assert_eq!(v.store().device(&DeviceId([1; 8])).unwrap().unwrap().lifecycle, Lifecycle::Decommissioned);
}

mod arbitrary {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        /// Arbitrary bytes, alone or mutated from a valid message, never panic
        /// and are never accepted unless they are the valid message itself.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1500), flip in any::<usize>()) {
            let v = vendor(IngestConfig { workers: 2, batch_verify: true });
            let mut d = registered(&v, 1);
            prop_assert!(v.ingest(&bytes, NOW).is_err());
            let good = d.seal(&ok_usage()).unwrap();
            let mut bad = good.clone();
            let i = flip % bad.len();
            bad[i] ^= 0x80;
            let r = v.ingest_batch(&[&bytes, &bad, &good], NOW);
            prop_assert!(r[0].is_err());
            prop_assert!(r[1].is_err());
            prop_assert!(r[2].is_ok());
        }
    }
}

#[test]
fn malformed_chunks_are_refused() {
    use spime::vendor::link::Reassembly;
    let mut rx: Reassembly<u8> = Reassembly::new(60);
    for bad in [&[][..], &[0, 1, 2][..], &[0, 1, 5, 0, 9, 9][..]] {
        assert_eq!(rx.push(&1, NOW, bad).unwrap_err().reason(), "chunk");
    }
    // A valid stream on one link still completes, and the message is ingested.
    let v = vendor(strict());
    let mut d = dev(1);
    let m = register(&mut d, analytics());
    let mut done = None;
    for c in spime::wire::chunk::Chunks::new(&m, 7, 51).unwrap() {
        let mut frame = [0u8; 51];
        let n = c.write_to(&mut frame).unwrap();
        if let Some(msg) = rx.push(&1, NOW, &frame[..n]).unwrap() {
            done = Some(msg);
        }
    }
    v.ingest(&done.unwrap(), NOW).unwrap();
    rx.expire(NOW + 61);
    assert_eq!(rx.links(), 0);
}

fn owner_signed(c: &mut SignedConsent, device: DeviceId, owner: &ed25519_dalek::SigningKey) {
    use ed25519_dalek::ed25519::signature::MultipartSigner;
    let state = postcard::to_allocvec(&c.state).unwrap();
    let sig = owner.multipart_sign(&[OWNER_CONSENT_DST, &device.0, &state]);
    c.owner = Some(OwnerProof {
        owner_key: owner.verifying_key().to_bytes(),
        signature: spime::codec::Bytes64(sig.to_bytes()),
    });
}

#[test]
fn pinned_owner_key_is_enforced() {
    let v = vendor(strict());
    let mut d = dev(1);
    let owner = ed25519_dalek::SigningKey::from_bytes(&[44; 32]);
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[45; 32]);
    let mut c = analytics();
    owner_signed(&mut c, d.id(), &owner);
    v.ingest(&register(&mut d, c), NOW).unwrap();
    // Signed by another key: refused.
    let mut c2 = consent(2, &[], 0);
    owner_signed(&mut c2, d.id(), &stranger);
    assert_eq!(
        v.ingest(&d.seal(&ConsentUpdate { consent: c2 }).unwrap(), NOW),
        Err(IngestError::Consent(ConsentError::OwnerKeyMismatch))
    );
    // Not signed at all: refused.
    let c3 = consent(2, &[], 0);
    assert_eq!(
        v.ingest(&d.seal(&ConsentUpdate { consent: c3 }).unwrap(), NOW),
        Err(IngestError::Consent(ConsentError::OwnerProofMissing))
    );
    // Signed by the pinned owner: accepted.
    let mut c4 = consent(2, &[], 0);
    owner_signed(&mut c4, d.id(), &owner);
    v.ingest(&d.seal(&ConsentUpdate { consent: c4 }).unwrap(), NOW).unwrap();
    // A Transfer the pinned owner did not authorise is refused (issue 9, finding 2).
    assert_eq!(
        v.ingest(&d.seal(&Transfer::unsigned(NOW, 2)).unwrap(), NOW),
        Err(IngestError::Consent(ConsentError::OwnerProofMissing))
    );
    // After an authorised transfer the pin is dropped: the next owner signs with their own key.
    let proof = OwnerProof::sign_transfer(&d.id(), 2, NOW, &owner);
    v.ingest(&d.seal(&Transfer { at: NOW, consent_version: 2, owner: Some(proof) }).unwrap(), NOW).unwrap();
    let mut c5 = consent(4, &[], 0);
    owner_signed(&mut c5, d.id(), &stranger);
    v.ingest(&register(&mut d, c5), NOW).unwrap();
}
