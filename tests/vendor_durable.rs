//! The redb store keeps everything across a reopen: registry, replay
//! windows, consent ledger, vendor counters and the notice history.
#![cfg(feature = "redb")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use spime::consent::ledger::ConsentLedger;
use spime::consent::*;
use spime::message::*;
use spime::seal::{Envelope, VendorKeys};
use spime::vendor::sim::{SimDevice, consent};
use spime::vendor::*;
use spime::wire::DeviceId;

fn keys() -> VendorKeys {
    VendorKeys::from_secrets(&[1; 32], &[2; 32])
}

#[test]
fn state_survives_reopen() {
    let dir = std::env::temp_dir().join(format!("spime-redb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("v.redb");
    let mut d = SimDevice::new(DeviceId([3; 8]), [3; 32], &keys()).unwrap();
    let mut c = consent(1, &[(Purpose::USAGE_ANALYTICS, CategorySet::EMPTY.with(DataCategory::UsageCounters))], 0);
    c.state.allow_channel(Purpose::PROACTIVE_SERVICE, Channel::App).unwrap();
    c.state
        .set_cap(FrequencyCap { purpose: Purpose::PROACTIVE_SERVICE, max_notices: 1, period_seconds: 1000 })
        .unwrap();
    let reg = d
        .seal(&Register {
            certificate: d.certificate().clone(),
            firmware: FirmwareVersion { major: 1, minor: 0, patch: 0, build: 0 },
            consent: c,
            transfer: None,
        })
        .unwrap();
    let mut metrics = heapless::Vec::new();
    metrics.push(Metric { id: 1, category: DataCategory::UsageCounters, value: MetricValue::Counter(1) }).unwrap();
    let u = Usage { purpose: Purpose::USAGE_ANALYTICS, consent_version: 1, window_start: 0, window_end: 1, metrics };
    let usage = d.seal(&u).unwrap();
    let notice = Notice {
        id: 1,
        purpose: Purpose::PROACTIVE_SERVICE,
        channel: Channel::App,
        topic: 1,
        kind: NoticeKind::MaintenanceDue,
        issued_at: 100,
        expires_at: 10_000,
        title: "t".try_into().unwrap(),
        text: "x".try_into().unwrap(),
    };
    let first_counter = {
        let v = Ingestor::new(RedbStore::open(&path).unwrap(), keys(), IngestConfig::default());
        v.ingest(&reg, 100).unwrap();
        v.ingest(&usage, 100).unwrap();
        let n = v.seal_notice(&d.id(), &notice, 100).unwrap();
        Envelope::parse(&n).unwrap().header.counter
    };
    let v = Ingestor::new(RedbStore::open(&path).unwrap(), keys(), IngestConfig::default());
    // Replays are refused after the reopen.
    assert_eq!(v.ingest(&usage, 101).unwrap_err().reason(), "replay");
    assert_eq!(v.ingest(&reg, 101).unwrap_err().reason(), "replay");
    // The frequency cap remembers the notice sent before.
    assert!(matches!(
        v.seal_notice(&d.id(), &notice, 200),
        Err(SendError::Refused(ContactDenial::FrequencyCap { .. }))
    ));
    // Vendor counters go on.
    let r = v.seal_receipt(&d.id()).unwrap();
    assert!(Envelope::parse(&r).unwrap().header.counter > first_counter);
    assert_eq!(d.open::<Receipt>(&r).unwrap().consent_version, 1);
    // Registry, messages and the ledger are there.
    let rec = &v.store().devices().unwrap()[0];
    assert_eq!((rec.device, rec.relationship, rec.epoch()), (d.id(), 1, 1));
    assert_eq!(v.store().message_count().unwrap(), 2);
    let mut tx = v.store().begin().unwrap();
    assert!(tx.message(&d.id(), 1).unwrap().is_some());
    let ledger = ConsentLedger::from_entries(d.id(), tx.consent_entries(&d.id()).unwrap()).unwrap();
    ledger.verify_proofs(&d.key().public()).unwrap();
    assert_eq!(ledger.current_version(), Some(1));
    drop(tx);
    drop(v);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn corrupt_file_is_a_storage_error() {
    let dir = std::env::temp_dir().join(format!("spime-redb-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("v.redb");
    std::fs::write(&path, b"this is not a database file, just some bytes that are long enough").unwrap();
    assert!(matches!(RedbStore::open(&path), Err(StoreError::Backend(_))));
    std::fs::remove_dir_all(&dir).unwrap();
}
