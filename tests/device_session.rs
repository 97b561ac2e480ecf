//! The device session end to end: register, report, change consent,
//! receipts and notices, transfer, re-register, decommission, reboots;
//! every message opened with the vendor side of the core API.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::std_instead_of_core
)]

mod device_common;

use device_common::*;
use rand_core::SeedableRng;
use spime::consent::{
    Channel, ConsentError, ConsentState, ContactDenial, DataCategory, Denial, Purpose, SentConsent, SignedConsent,
};
use spime::device::fault::{FaultEvent, FaultRecorder};
use spime::device::metrics::{MetricDef, MetricKind, Metrics};
use spime::device::outbox::{Outbox, record_len};
use spime::device::session::{Device, NoticeDecision, SessionError, Stage, storage_capacity, storage_records};
use spime::device::storage::{NorStorage, SimFlash};
use spime::error::{OpenError, ReplayError};
use spime::message::{self, DecommissionReason, MetricValue, Notice, NoticeKind, RebootReason, Receipt, Severity};
use spime::seal::{self, VendorKeys};
use spime::wire::Kind;

const N: usize = 4;
const REC: usize = record_len(message::MAX_SEALED_LEN);
type Flash = SimFlash<{ SECTORS as usize * 4096 }, 4096>;
const SECTORS: u16 = 6;
type Store = NorStorage<Flash>;
type Dev<'o> = Device<'o, Store, N, REC>;
type Ob = Outbox<N, REC>;

fn storage() -> Store {
    NorStorage::new(Flash::new(), 0, SECTORS, u16::try_from(storage_records(N)).unwrap(), storage_capacity(REC))
        .unwrap()
}

fn rng() -> rand_chacha::ChaCha20Rng {
    rand_chacha::ChaCha20Rng::from_seed([9; 32])
}

/// Sends (opens and acks) everything queued, in send order.
fn flush(dev: &mut Dev<'_>, vendor: &mut Vendor) -> Vec<(u64, Opened)> {
    let mut got = Vec::new();
    while let Some(e) = dev.next_message().unwrap() {
        let counter = e.meta.counter;
        let opened = vendor.open(e.envelope);
        assert_eq!(opened.0, counter);
        got.push(opened);
        assert!(dev.ack(counter).unwrap());
    }
    got
}

fn registered<'d, 'o>(dev: &'d mut Dev<'o>) -> spime::device::session::Registered<'d, 'o, Store, N, REC> {
    dev.registered().unwrap()
}

const T0: u64 = 1_767_300_000;

fn fresh_registered<'o>(vendor: &mut Vendor, ob: &'o mut Ob) -> Dev<'o> {
    let mut dev = Dev::boot(identity(), storage(), ob).unwrap();
    assert_eq!(dev.stage(), Stage::Unregistered);
    let u = dev.unregistered().unwrap();
    u.register(&mut rng(), generous_consent(1, T0)).unwrap();
    let got = flush(&mut dev, vendor);
    assert!(matches!(&got[..], [(0, Opened::Register(_))]));
    dev
}

#[test]
fn lifecycle_end_to_end() {
    let mut vendor = Vendor::new();
    let mut ob = Ob::new();
    let mut dev = fresh_registered(&mut vendor, &mut ob);
    assert_eq!(dev.epoch(), 1);

    // usage through the metrics registry: the Identifiers metric is not granted and is dropped
    let mut m: Metrics<4> = Metrics::new(T0);
    static BUCKETS: [i64; 2] = [60, 300];
    m.define(MetricDef { id: 1, category: DataCategory::UsageCounters, kind: MetricKind::Counter }).unwrap();
    m.define(MetricDef { id: 2, category: DataCategory::Environment, kind: MetricKind::Gauge }).unwrap();
    m.define(MetricDef { id: 3, category: DataCategory::UsageCounters, kind: MetricKind::Histogram(&BUCKETS) })
        .unwrap();
    m.define(MetricDef { id: 4, category: DataCategory::Identifiers, kind: MetricKind::Counter }).unwrap();
    m.increment(1, 3).unwrap();
    m.observe(2, 21).unwrap();
    m.observe(3, 200).unwrap();
    m.increment(4, 1).unwrap();
    let mut faults: FaultRecorder<4> = FaultRecorder::new(FIRMWARE);
    let e = FaultEvent {
        code: 0xE1,
        severity: Severity::Error,
        component: 2,
        uptime_s: 100,
        reboot_reason: RebootReason::PowerOn,
    };
    faults.record(T0 + 10, e, b"heater");
    faults.record(T0 + 20, e, b"heater");
    {
        let mut r = registered(&mut dev);
        let c = r.report_window(Purpose::USAGE_ANALYTICS, m.take_window(T0 + 3600), T0 + 3600).unwrap();
        assert_eq!(c, Some(1));
        assert_eq!(r.report_faults(&mut faults, Purpose::DIAGNOSTICS, T0 + 3600).unwrap(), 1);
        // not granted: marketing
        let err = r.permit(Purpose::MARKETING, T0).unwrap_err();
        assert!(matches!(err, SessionError::Denied(Denial::NotGranted { .. })));
    }
    let got = flush(&mut dev, &mut vendor);
    // the fault goes before the usage report
    assert_eq!(got.len(), 2);
    let (2, Opened::Fault(f)) = &got[0] else { panic!("{got:?}") };
    assert_eq!((f.code, f.occurrences, &f.context[..]), (0xE1, 2, &b"heater"[..]));
    assert_eq!((f.purpose, f.consent_version, f.first_seen, f.last_seen), (Purpose::DIAGNOSTICS, 1, T0 + 10, T0 + 20));
    let (1, Opened::Usage(u)) = &got[1] else { panic!("{got:?}") };
    assert_eq!(u.metrics.iter().map(|m| m.id).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(u.metrics[0].value, MetricValue::Counter(3));
    assert_eq!((u.window_start, u.window_end), (T0, T0 + 3600));

    // a reboot keeps the stage, the epoch and the keys
    let store = dev.into_storage();
    let mut ob2 = Ob::new();
    let mut dev = Dev::boot(identity(), store, &mut ob2).unwrap();
    assert_eq!((dev.stage(), dev.epoch()), (Stage::Registered, 1));

    // queue usage, then withdraw usage analytics: the queued report is purged
    m.increment(1, 1).unwrap();
    registered(&mut dev).report_window(Purpose::USAGE_ANALYTICS, m.take_window(T0 + 7200), T0 + 7200).unwrap();
    let mut narrower = generous_consent(2, T0 + 7300);
    narrower.state.withdraw(Purpose::USAGE_ANALYTICS).unwrap();
    registered(&mut dev).change_consent(narrower.clone(), T0 + 7300).unwrap();
    assert_eq!(dev.dropped().purged, 1);
    assert_eq!(dev.queued().count(), 1);
    // stale and equal versions are refused
    let stale = registered(&mut dev).change_consent(generous_consent(2, T0), T0).unwrap_err();
    assert_eq!(stale, SessionError::StaleConsent { held: 2, got: 2 });
    // usage may no longer be reported
    let err = registered(&mut dev).permit(Purpose::USAGE_ANALYTICS, T0 + 7400).unwrap_err();
    assert!(matches!(err, SessionError::Denied(_)));
    let got = flush(&mut dev, &mut vendor);
    let [(_, Opened::Consent(c))] = &got[..] else { panic!("{got:?}") };
    assert_eq!(c.consent, narrower);
    // the held state can be announced again (same version)
    registered(&mut dev).announce_consent().unwrap();
    let got = flush(&mut dev, &mut vendor);
    assert!(matches!(&got[..], [(_, Opened::Consent(c))] if c.consent == narrower));

    // receipts: the right one, one for a version never sent, one with another digest, a replay
    let digest = SentConsent::of(&narrower).unwrap().digest;
    let good = vendor.seal(1, &Receipt { consent_version: 2, consent_digest: digest, received_at: T0 + 7500 });
    assert_eq!(dev.open_receipt(&good).unwrap().consent_version, 2);
    assert_eq!(dev.receipted_version(), 2);
    assert_eq!(
        dev.open_receipt(&good).unwrap_err(),
        SessionError::Open(OpenError::Replay(ReplayError::Duplicate(vendor.counter)))
    );
    let never = vendor.seal(1, &Receipt { consent_version: 9, consent_digest: digest, received_at: T0 + 7500 });
    assert_eq!(dev.open_receipt(&never).unwrap_err(), SessionError::Consent(ConsentError::ReceiptUnknownVersion(9)));
    let other = vendor.seal(1, &Receipt { consent_version: 1, consent_digest: digest, received_at: T0 + 7500 });
    assert_eq!(dev.open_receipt(&other).unwrap_err(), SessionError::Consent(ConsentError::ReceiptMismatch(1)));
    // a refused receipt's counter is not consumed: the vendor may not reuse it, but nothing was accepted
    assert_eq!(dev.receipted_version(), 2);

    // notices: allowed on the app for proactive service; not by e-mail
    let notice = |channel, id| Notice {
        id,
        purpose: Purpose::PROACTIVE_SERVICE,
        channel,
        topic: 4,
        kind: NoticeKind::MaintenanceDue,
        issued_at: T0,
        expires_at: T0 + 86_400 * 30,
        title: "Descale".try_into().unwrap(),
        text: "Time to descale your kettle.".try_into().unwrap(),
    };
    let shown = vendor.seal(1, &notice(Channel::App, 1));
    assert_eq!(dev.open_notice(&shown, T0 + 8000).unwrap(), NoticeDecision::Show(notice(Channel::App, 1)));
    let mail = vendor.seal(1, &notice(Channel::Email, 2));
    let NoticeDecision::Withhold { reason, .. } = dev.open_notice(&mail, T0 + 8000).unwrap() else { panic!() };
    assert!(matches!(reason, ContactDenial::ChannelNotGranted { channel: Channel::Email, .. }));
    // a receipt is not a notice; a device-to-vendor message is refused; a tampered one is unauthentic
    assert_eq!(
        dev.open_notice(&good, T0).unwrap_err(),
        SessionError::Open(OpenError::WrongKind { expected: Kind::NOTICE, got: Kind::RECEIPT })
    );
    let mut bad = vendor.seal(1, &notice(Channel::App, 3));
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert_eq!(dev.open_notice(&bad, T0).unwrap_err(), SessionError::Open(OpenError::Unauthentic));
    registered(&mut dev).report_faults(&mut FaultRecorder::<1>::new(FIRMWARE), Purpose::DIAGNOSTICS, T0).unwrap();

    // transfer: queued data of the old owner is purged, consent reset, unregistered
    let mut r = registered(&mut dev);
    r.report_faults(
        &mut {
            let mut f = FaultRecorder::<1>::new(FIRMWARE);
            f.record(T0, e, b"");
            f
        },
        Purpose::DIAGNOSTICS,
        T0 + 9000,
    )
    .unwrap();
    let mut u = r.transfer(T0 + 9100).unwrap();
    assert_eq!(u.device().stage(), Stage::Unregistered);
    assert_eq!(u.device().consent().unwrap().state, ConsentState::essential_only(3, T0 + 9100, [0; 32]));
    assert_eq!(u.device().queued().map(|m| m.kind).collect::<Vec<_>>(), [Kind::TRANSFER]);
    // the old owner's consent version cannot be used to register again
    let u = dev.unregistered().unwrap();
    assert_eq!(
        u.register(&mut rng(), generous_consent(3, T0)).err(),
        Some(SessionError::StaleConsent { held: 3, got: 3 })
    );
    let u = dev.unregistered().unwrap();
    u.register(&mut rng(), generous_consent(4, T0 + 9200)).unwrap();
    assert_eq!(dev.epoch(), 2);
    let got = flush(&mut dev, &mut vendor);
    assert!(matches!(&got[..], [(_, Opened::Transfer(_)), (_, Opened::Register(r))] if r.consent.state.version == 4));
    // receipts of the previous owner's consent are not accepted now
    let old = vendor.seal(2, &Receipt { consent_version: 2, consent_digest: digest, received_at: T0 });
    assert_eq!(dev.open_receipt(&old).unwrap_err(), SessionError::Consent(ConsentError::ReceiptUnknownVersion(2)));

    // decommission: one last message, then nothing
    let r = registered(&mut dev);
    let mut d = r.decommission(T0 + 10_000, DecommissionReason::Recycled).unwrap();
    assert_eq!(d.device().stage(), Stage::Decommissioned);
    let got = flush(&mut dev, &mut vendor);
    assert!(matches!(&got[..], [(_, Opened::Decommission(x))] if x.reason == DecommissionReason::Recycled));
    let store = dev.into_storage();
    let mut ob2 = Ob::new();
    let mut dev = Dev::boot(identity(), store, &mut ob2).unwrap();
    assert!(dev.decommissioned().is_ok());
}

#[test]
fn rejections_before_registration_and_bad_consent() {
    let mut ob = Ob::new();
    let mut dev = Dev::boot(identity(), storage(), &mut ob).unwrap();
    let mut vendor = Vendor::new();
    // no session: vendor messages cannot be opened
    let v = VendorKeys::from_secrets(&VENDOR_SIGNING_SEED, &VENDOR_KX_SECRET);
    let (k, _) = seal::keys::device_start_epoch_with(&[3; 32], &DEVICE_ID, 1, &v.public()).unwrap();
    vendor.epochs.insert(1, k);
    let r = vendor.seal(1, &Receipt { consent_version: 1, consent_digest: [0; 32], received_at: 0 });
    assert_eq!(dev.open_receipt(&r).unwrap_err(), SessionError::NoSession);
    // a non-canonical consent (unordered grants) is refused
    let mut c = generous_consent(1, T0);
    c.state.grants.reverse();
    let u = dev.unregistered().unwrap();
    assert!(matches!(u.register(&mut rng(), c).err(), Some(SessionError::Consent(ConsentError::Decode(_)))));
    assert_eq!(dev.stage(), Stage::Unregistered);
    // garbage never panics
    for len in [0, 1, 31, 63, 200] {
        assert!(dev.open_notice(&vec![1; len], 0).is_err());
    }
    let _ = SignedConsent::clone(&generous_consent(1, 0));
}

#[test]
fn permitted_reports_are_rechecked_when_sealed() {
    let mut vendor = Vendor::new();
    let mut ob = Ob::new();
    let mut dev = fresh_registered(&mut vendor, &mut ob);
    // a permit taken under consent 1 ...
    let permit = registered(&mut dev).permit(Purpose::USAGE_ANALYTICS, T0).unwrap();
    let usage = permit
        .usage(
            T0,
            T0 + 1,
            [spime::message::Metric { id: 1, category: DataCategory::UsageCounters, value: MetricValue::Counter(1) }],
        )
        .unwrap();
    // ... is useless once the owner withdrew it
    let mut narrower = generous_consent(2, T0);
    narrower.state.withdraw(Purpose::USAGE_ANALYTICS).unwrap();
    registered(&mut dev).change_consent(narrower, T0).unwrap();
    let err = registered(&mut dev).report_usage(usage, T0 + 2).unwrap_err();
    assert!(matches!(err, SessionError::Denied(Denial::NotGranted { .. })));
}

/// Issue 9, finding 2, device side: while the consent held is owner-signed,
/// the device refuses to seal a Transfer the owner did not authorise, and
/// seals one the owner did.
#[test]
fn owner_pin_survives_device_signed_transfer_on_the_device() {
    use spime::consent::OwnerProof;
    let owner = ed25519_dalek::SigningKey::from_bytes(&[44; 32]);
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[45; 32]);
    let mut vendor = Vendor::new();
    let mut ob = Ob::new();
    let mut dev = Dev::boot(identity(), storage(), &mut ob).unwrap();
    let mut c = generous_consent(1, T0);
    c.owner = Some(OwnerProof::sign(&c.state, &DEVICE_ID, &owner).unwrap());
    let u = dev.unregistered().unwrap();
    u.register(&mut rng(), c).unwrap();
    flush(&mut dev, &mut vendor);

    let r = registered(&mut dev);
    assert_eq!(r.transfer(T0 + 1).err(), Some(SessionError::Consent(ConsentError::OwnerProofMissing)));
    let r = registered(&mut dev);
    let by_stranger = OwnerProof::sign_transfer(&DEVICE_ID, 1, T0 + 1, &stranger);
    assert_eq!(
        r.transfer_authorised(T0 + 1, by_stranger).err(),
        Some(SessionError::Consent(ConsentError::OwnerKeyMismatch))
    );
    let r = registered(&mut dev);
    let wrong_time = OwnerProof::sign_transfer(&DEVICE_ID, 1, T0 + 2, &owner);
    assert_eq!(
        r.transfer_authorised(T0 + 1, wrong_time).err(),
        Some(SessionError::Consent(ConsentError::OwnerProofInvalid))
    );
    assert_eq!(dev.stage(), Stage::Registered);
    assert_eq!(dev.queued().count(), 0, "nothing was sealed");

    let r = registered(&mut dev);
    let proof = OwnerProof::sign_transfer(&DEVICE_ID, 1, T0 + 1, &owner);
    r.transfer_authorised(T0 + 1, proof).unwrap();
    assert_eq!(dev.stage(), Stage::Unregistered);
    let got = flush(&mut dev, &mut vendor);
    assert!(matches!(&got[..], [(_, Opened::Transfer(t))] if t.owner == Some(proof) && t.consent_version == 1));

    // Finding 5: the next Register carries that Transfer, across a reboot,
    // and only the first Register after it does.
    let mut ob2 = Ob::new();
    let mut dev = Dev::boot(identity(), dev.into_storage(), &mut ob2).unwrap();
    let u = dev.unregistered().unwrap();
    u.register(&mut rng(), generous_consent(3, T0 + 2)).unwrap();
    let got = flush(&mut dev, &mut vendor);
    let [(_, Opened::Register(r))] = &got[..] else { panic!("{got:?}") };
    let t = r.transfer.unwrap();
    assert_eq!((t.at, t.consent_version, t.owner), (T0 + 1, 1, Some(proof)));
    let mut ob3 = Ob::new();
    let mut dev = Dev::boot(identity(), dev.into_storage(), &mut ob3).unwrap();
    let r = registered(&mut dev);
    let mut u = r.transfer(T0 + 3).unwrap();
    let u2 = u.device().unregistered().unwrap();
    u2.register(&mut rng(), generous_consent(5, T0 + 4)).unwrap();
    let got = flush(&mut dev, &mut vendor);
    assert!(
        matches!(&got[..], [(_, Opened::Transfer(_)), (_, Opened::Register(r))] if r.transfer.is_some_and(|t| t.at == T0 + 3))
    );
}

/// A storage that fails writes to one record while `fail` is set.
struct Failing {
    inner: Store,
    fail: Option<u16>,
}

impl spime::device::storage::Storage for Failing {
    fn read<'b>(
        &mut self,
        id: u16,
        buf: &'b mut [u8],
    ) -> Result<Option<&'b [u8]>, spime::device::storage::StorageError> {
        self.inner.read(id, buf)
    }
    fn write(&mut self, id: u16, data: &[u8]) -> Result<(), spime::device::storage::StorageError> {
        if self.fail == Some(id) {
            return Err(spime::device::storage::StorageError::Io);
        }
        self.inner.write(id, data)
    }
    fn remove(&mut self, id: u16) -> Result<(), spime::device::storage::StorageError> {
        self.inner.remove(id)
    }
}

/// Issue 9, finding 10: when the flash write of a purge fails, the slot
/// stays queued in memory as on flash; the denied report is never handed
/// out, and the next boot purges it (it does not come back to be sent).
#[test]
fn outbox_purge_survives_failed_flash_write() {
    use spime::device::storage::{RECORD_OUTBOX, StorageError};
    let mut vendor = Vendor::new();
    let mut ob = Ob::new();
    let mut dev: Device<'_, Failing, N, REC> =
        Device::boot(identity(), Failing { inner: storage(), fail: None }, &mut ob).unwrap();
    let u = dev.unregistered().unwrap();
    u.register(&mut rng(), generous_consent(1, T0)).unwrap();
    while let Some(e) = dev.next_message().unwrap() {
        let c = e.meta.counter;
        vendor.open(e.envelope);
        dev.ack(c).unwrap();
    }
    // A usage report in slot 0, then a consent that withdraws usage analytics.
    let mut m: Metrics<1> = Metrics::new(T0);
    m.define(MetricDef { id: 1, category: DataCategory::UsageCounters, kind: MetricKind::Counter }).unwrap();
    m.increment(1, 1).unwrap();
    let mut r = dev.registered().unwrap();
    r.report_window(Purpose::USAGE_ANALYTICS, m.take_window(T0 + 60), T0 + 60).unwrap();
    assert_eq!(dev.queued().map(|m| m.kind).collect::<Vec<_>>(), [Kind::USAGE]);
    let mut narrower = generous_consent(2, T0 + 70);
    narrower.state.withdraw(Purpose::USAGE_ANALYTICS).unwrap();

    // The purge's write of slot 0 fails.
    let mut store = dev.into_storage();
    store.fail = Some(RECORD_OUTBOX);
    let mut ob2 = Ob::new();
    let mut dev: Device<'_, Failing, N, REC> = Device::boot(identity(), store, &mut ob2).unwrap();
    let mut r = dev.registered().unwrap();
    assert_eq!(
        r.change_consent(narrower, T0 + 70).unwrap_err(),
        SessionError::Outbox(spime::device::outbox::OutboxError::Storage(StorageError::Io))
    );
    // Memory agrees with flash: the report is still queued, not counted as purged...
    assert_eq!(dev.queued().map(|m| m.kind).collect::<Vec<_>>(), [Kind::CONSENT, Kind::USAGE]);
    assert_eq!(dev.dropped().purged, 0);
    // ...but it never leaves: only the Consent is handed out.
    let next = dev.next_message().unwrap().unwrap();
    assert_eq!(next.meta.kind, Kind::CONSENT);
    let c = next.meta.counter;
    dev.ack(c).unwrap();
    assert!(dev.next_message().unwrap().is_none());

    // After a reboot with working storage, the report is purged, not resent.
    let mut store = dev.into_storage();
    store.fail = None;
    let mut ob3 = Ob::new();
    let mut dev: Device<'_, Failing, N, REC> = Device::boot(identity(), store, &mut ob3).unwrap();
    assert_eq!(dev.queued().count(), 0);
    assert_eq!(dev.dropped().purged, 1);
    assert!(dev.next_message().unwrap().is_none());
}

#[test]
fn boot_refuses_storage_too_small_for_the_outbox_with_the_numbers() {
    // records of 256 bytes: too small for the 325-byte session record and the outbox slots
    let small = NorStorage::new(Flash::new(), 0, SECTORS, u16::try_from(storage_records(N)).unwrap(), 256).unwrap();
    let mut ob = Ob::new();
    let err = Dev::boot(identity(), small, &mut ob).unwrap_err();
    let needed = storage_capacity(REC);
    assert!(needed > 325);
    let SessionError::RecordsTooSmall { needed: n, have: 256, outbox: REC, .. } = err else { panic!("{err:?}") };
    assert_eq!(n, needed);
    let text = err.to_string();
    assert!(
        text.starts_with("storage records hold at most 256 bytes, but this device writes records of up to"),
        "{text}"
    );
    assert!(text.contains(&format!("storage_capacity({REC}) = {needed}")), "{text}");

    // too few records for the outbox slots
    let few = NorStorage::new(Flash::new(), 0, SECTORS, 9, storage_capacity(REC)).unwrap();
    let mut ob = Ob::new();
    let err = Dev::boot(identity(), few, &mut ob).unwrap_err();
    assert_eq!(err, SessionError::TooFewRecords { needed: storage_records(N), have: 9, slots: N });
    assert!(err.to_string().contains(&format!("storage_records({N}) = {}", storage_records(N))), "{err}");

    // exactly the layout the helpers give boots
    let mut ob = Ob::new();
    assert!(Dev::boot(identity(), storage(), &mut ob).is_ok());
}

#[test]
fn stage_accessors_say_why_not() {
    let mut ob = Ob::new();
    let mut dev = Dev::boot(identity(), storage(), &mut ob).unwrap();
    let err = dev.registered().err().unwrap();
    assert_eq!(err, SessionError::WrongStage { expected: Stage::Registered, actual: Stage::Unregistered });
    assert_eq!(err.to_string(), "the device is unregistered, but this needs it registered: register it first");
    assert!(matches!(
        dev.decommissioned().err(),
        Some(SessionError::WrongStage { expected: Stage::Decommissioned, actual: Stage::Unregistered })
    ));
    dev.unregistered().unwrap().register(&mut rng(), generous_consent(1, T0)).unwrap();
    assert!(matches!(
        dev.unregistered().err(),
        Some(SessionError::WrongStage { expected: Stage::Unregistered, actual: Stage::Registered })
    ));
    dev.registered().unwrap().decommission(T0 + 1, DecommissionReason::Retired).unwrap();
    let err = dev.registered().err().unwrap();
    assert_eq!(
        err.to_string(),
        "the device is decommissioned, but this needs it registered: it is out of service for good"
    );
    assert!(dev.decommissioned().is_ok());
}
