//! The owner's data lifecycle, the same on every store: reading without a
//! write transaction, the export, erasure on withdrawal, "forget me", the
//! change of owner and retention. `bytes_in_store` says whether given bytes
//! occur anywhere in the store's backing storage (`None`: not applicable),
//! to prove erased data is gone, not hidden.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use spime::consent::ledger::{ConsentEvent, ConsentLedger, Erasure, ErasureReason};
use spime::consent::*;
use spime::message::*;
use spime::seal::VendorKeys;
use spime::vendor::sim::{SimDevice, consent, counter_usage};
use spime::vendor::*;
use spime::wire::{DeviceId, Kind};

pub fn keys() -> VendorKeys {
    VendorKeys::from_secrets(&[1; 32], [2; 32])
}

fn analytics() -> [(Purpose, CategorySet); 1] {
    [(Purpose::USAGE_ANALYTICS, CategorySet::EMPTY.with(DataCategory::UsageCounters))]
}

fn register(d: &mut SimDevice, c: SignedConsent) -> Vec<u8> {
    let reg = Register {
        certificate: d.certificate().clone(),
        firmware: FirmwareVersion { major: 1, minor: 0, patch: 0, build: 0 },
        consent: c,
    };
    if d.session().is_some() { d.seal_new_epoch(&reg).unwrap() } else { d.seal(&reg).unwrap() }
}

fn fault(version: u32, code: u32) -> Fault {
    Fault {
        purpose: Purpose::ESSENTIAL,
        consent_version: version,
        code,
        severity: Severity::Error,
        component: 7,
        firmware: FirmwareVersion { major: 1, minor: 0, patch: 0, build: 0 },
        uptime_s: 60,
        reboot_reason: RebootReason::None,
        occurrences: 1,
        first_seen: 1,
        last_seen: 2,
        context: heapless::Vec::new(),
    }
}

fn notice(id: u32) -> Notice {
    Notice {
        id,
        purpose: Purpose::PROACTIVE_SERVICE,
        channel: Channel::App,
        topic: 1,
        kind: NoticeKind::MaintenanceDue,
        issued_at: 100,
        expires_at: 100_000,
        title: "descale".try_into().unwrap(),
        text: "time to descale the kettle".try_into().unwrap(),
    }
}

/// The body bytes of a stored message, as they sit in the store.
fn body_of<S: Store>(v: &Ingestor<S>, d: &DeviceId, counter: u64) -> Vec<u8> {
    let m = v.store().messages(d, &MessageQuery::all()).unwrap();
    m.iter().find(|m| m.counter == counter).unwrap().proof.body.clone()
}

fn verify_ledger<S: Store>(v: &Ingestor<S>, d: &SimDevice) -> ConsentLedger {
    let ledger = ConsentLedger::from_entries(d.id(), v.store().consent_ledger(&d.id()).unwrap()).unwrap();
    ledger.verify_proofs(&d.key().public()).unwrap();
    ledger
}

fn erasures(ledger: &ConsentLedger) -> Vec<Erasure> {
    ledger
        .entries()
        .iter()
        .filter(|e| e.event == ConsentEvent::Erased)
        .map(|e| Erasure::from_proof(&e.proof).unwrap())
        .collect()
}

/// Reads, export, withdrawal, forget.
pub fn withdrawal_and_forget<S: Store>(v: &Ingestor<S>, bytes_in_store: &dyn Fn(&[u8]) -> Option<bool>) {
    let mut d = SimDevice::new(DeviceId([0x41; 8]), [0x41; 32], &keys()).unwrap();
    let mut c = consent(1, &analytics(), 0);
    c.state.allow_channel(Purpose::PROACTIVE_SERVICE, Channel::App).unwrap();
    c.state
        .set_cap(FrequencyCap { purpose: Purpose::PROACTIVE_SERVICE, max_notices: 1, period_seconds: 1000 })
        .unwrap();
    v.ingest(&register(&mut d, c), 1000).unwrap();
    // Counter 1 and 2: analytics; 3: an Essential fault.
    v.ingest(&d.seal(&counter_usage(1, &[(1, 0x5a5a_1111_2222_3333)])).unwrap(), 1100).unwrap();
    v.ingest(&d.seal(&counter_usage(1, &[(1, 0x5a5a_4444_5555_6666)])).unwrap(), 1200).unwrap();
    v.ingest(&d.seal(&fault(1, 0x00c0_ffee)).unwrap(), 1300).unwrap();
    v.seal_notice(&d.id(), &notice(1), 1150).unwrap();
    assert!(matches!(v.seal_notice(&d.id(), &notice(2), 1160), Err(SendError::Refused(_))));

    // Read without a write transaction.
    let s = v.store();
    assert_eq!(s.device(&d.id()).unwrap().unwrap().relationship, 1);
    assert!(s.device(&DeviceId([0x42; 8])).unwrap().is_none());
    assert_eq!(s.messages(&d.id(), &MessageQuery::all()).unwrap().len(), 4);
    let usage = s.messages(&d.id(), &MessageQuery::all().kind(Kind::USAGE)).unwrap();
    assert_eq!(usage.iter().map(|m| m.counter).collect::<Vec<_>>(), [1, 2]);
    let window = s.messages(&d.id(), &MessageQuery::all().received(1100, 1200)).unwrap();
    assert_eq!(window.iter().map(|m| m.counter).collect::<Vec<_>>(), [1]);
    assert!(s.messages(&d.id(), &MessageQuery::all().relationship(2)).unwrap().is_empty());
    assert_eq!(usage[0].purpose, Purpose::USAGE_ANALYTICS);
    assert_eq!(s.consent_ledger(&d.id()).unwrap().len(), 1);
    let notices = s.notices(&d.id()).unwrap();
    assert_eq!(notices.len(), 2);
    assert!(notices[0].sent() && !notices[1].sent());
    assert!(notices[1].held_back.as_deref().unwrap().contains("cap"), "{:?}", notices[1].held_back);

    // The export: JSON, with the ledger, decoded messages and both notices.
    let export = v.export(&d.id(), 1, 1400).unwrap();
    assert!(export.current && export.ledger.chain_verified && export.ledger.proofs_verified);
    assert_eq!(export.messages.len(), 4);
    assert_eq!(export.notices.iter().filter(|n| n.sent).count(), 1);
    assert_eq!(export.notices.iter().filter(|n| !n.sent).count(), 1);
    let json = export.to_json().unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed["ledger"]["entries"][0]["event"], "given");
    assert_eq!(parsed["messages"][1]["kind"], "usage");
    assert_eq!(parsed["messages"][1]["body"]["metrics"][0]["value"]["Counter"], 0x5a5a_1111_2222_3333u64);
    assert_eq!(parsed["messages"][3]["body"]["code"], 0x00c0_ffee);
    assert_eq!(parsed["notices"][1]["notice"]["title"], "descale");
    assert!(parsed["retention"].as_array().unwrap().len() >= 5);
    assert!(matches!(v.export(&d.id(), 2, 0), Err(lifecycle::LifecycleError::UnknownRelationship { .. })));
    assert!(matches!(v.export(&d.id(), 0, 0), Err(lifecycle::LifecycleError::UnknownRelationship { .. })));

    let analytics_body = body_of(v, &d.id(), 1);
    let fault_body = body_of(v, &d.id(), 3);
    assert_ne!(bytes_in_store(&analytics_body), Some(false), "the bytes are in the store before erasure");

    // Withdraw analytics and the contact grant: the pipeline erases the
    // analytics messages and the proactive-service notices at once.
    v.ingest(&d.seal(&ConsentUpdate { consent: consent(2, &[], 2000) }).unwrap(), 2000).unwrap();
    assert!(s.messages(&d.id(), &MessageQuery::all().kind(Kind::USAGE)).unwrap().is_empty());
    assert!(s.notices(&d.id()).unwrap().is_empty());
    let kept: Vec<u64> = s.messages(&d.id(), &MessageQuery::all()).unwrap().iter().map(|m| m.counter).collect();
    assert_eq!(kept, [0, 3, 4], "register, fault and the consent update stay");
    let ledger = verify_ledger(v, &d);
    let er = erasures(&ledger);
    assert_eq!(er.len(), 2);
    assert_eq!((er[0].reason, er[0].messages.clone()), (ErasureReason::Withdrawn, vec![(Purpose::USAGE_ANALYTICS, 2)]));
    assert_eq!((er[1].reason, er[1].notices), (ErasureReason::Withdrawn, 2));
    assert_eq!(ledger.current_version(), Some(2));
    v.store().scrub().unwrap();
    assert_ne!(bytes_in_store(&analytics_body), Some(true), "withdrawn data's bytes are gone after the scrub");
    assert_ne!(bytes_in_store(&fault_body), Some(false), "Essential data is still there");
    // Running the rules again erases nothing more and records nothing.
    assert!(v.enforce_retention(&d.id(), 2001).unwrap().is_empty());

    // Forget me: everything of the relationship goes, the ledger records it.
    let e = v.forget(&d.id(), 3000).unwrap().unwrap();
    assert_eq!((e.reason, e.relationships, e.message_count()), (ErasureReason::Forgotten, (1, 1), 3));
    assert!(s.messages(&d.id(), &MessageQuery::all()).unwrap().is_empty());
    assert_ne!(bytes_in_store(&fault_body), Some(true), "forgotten data's bytes are gone");
    let ledger = verify_ledger(v, &d);
    assert_eq!(ledger.entries().last().unwrap().event, ConsentEvent::Erased);
    assert!(ledger.export().contains("owner asked to be forgotten: deleted 3 messages"));
    // Forgetting again finds nothing and records nothing.
    assert!(v.forget(&d.id(), 3001).unwrap().is_none());
    assert_eq!(verify_ledger(v, &d).entries().len(), ledger.entries().len());
    // The device still works: the record and replay window were kept.
    v.ingest(&d.seal(&fault(2, 1)).unwrap(), 3100).unwrap();
    let old = d.seal(&fault(2, 2)).unwrap();
    v.ingest(&old, 3100).unwrap();
    assert_eq!(v.ingest(&old, 3101).unwrap_err().reason(), "replay");
}

/// A change of owner separates the relationships; retention ends everything.
pub fn owner_change_and_retention<S: Store>(v: &Ingestor<S>, bytes_in_store: &dyn Fn(&[u8]) -> Option<bool>) {
    let mut d = SimDevice::new(DeviceId([0x51; 8]), [0x51; 32], &keys()).unwrap();
    v.ingest(&register(&mut d, consent(1, &analytics(), 0)), 1000).unwrap();
    v.ingest(&d.seal(&counter_usage(1, &[(1, 0x6b6b_1111_2222_3333)])).unwrap(), 1100).unwrap();
    v.ingest(&d.seal(&fault(1, 0x0bad_cafe)).unwrap(), 1200).unwrap();
    let old_usage = body_of(v, &d.id(), 1);
    v.ingest(&d.seal(&Transfer { at: 1300 }).unwrap(), 1300).unwrap();
    // The previous owner's analytics went with the relationship; Essential stays.
    let rel1: Vec<(u64, u32)> = v
        .store()
        .messages(&d.id(), &MessageQuery::all())
        .unwrap()
        .iter()
        .map(|m| (m.counter, m.relationship))
        .collect();
    assert_eq!(rel1, [(0, 1), (2, 1), (3, 1)]);
    // The next owner registers: relationship 2.
    v.ingest(&register(&mut d, consent(3, &analytics(), 1400)), 1400).unwrap();
    v.ingest(&d.seal(&counter_usage(3, &[(1, 0x6b6b_4444_5555_6666)])).unwrap(), 1500).unwrap();
    let one = v.export(&d.id(), 1, 1600).unwrap();
    let two = v.export(&d.id(), 2, 1600).unwrap();
    assert!(!one.current && one.consent_held.is_none() && one.lifecycle.is_none());
    assert_eq!(one.messages.iter().map(|m| m.counter).collect::<Vec<_>>(), [0, 2, 3]);
    assert_eq!(two.messages.iter().map(|m| m.counter).collect::<Vec<_>>(), [4, 5]);
    let events = |e: &lifecycle::DeviceExport| e.ledger.entries.iter().map(|x| x.event).collect::<Vec<_>>();
    assert_eq!(events(&one), ["given", "reset on transfer", "data erased"]);
    assert_eq!(events(&two), ["given"]);
    assert_eq!(one.ledger.entries[2].erasure.as_ref().unwrap().reason, ErasureReason::OwnerChanged);
    // The new owner's export shows none of the previous owner's consent.
    assert!(two.ledger.entries.iter().all(|e| e.consent.as_ref().is_none_or(|c| c.version == 3)));
    assert!(two.ledger.chain_verified && two.ledger.proofs_verified);
    v.store().scrub().unwrap();
    assert_ne!(bytes_in_store(&old_usage), Some(true));

    // Retention: 395 days on, analytics (default) has run out; 2 years on, everything.
    let day = 86_400;
    let r = v.apply_retention(1500 + 396 * day).unwrap();
    assert_eq!(r.messages, 1, "{r:?}");
    assert_eq!(v.store().messages(&d.id(), &MessageQuery::all().kind(Kind::USAGE)).unwrap().len(), 0);
    let r = v.apply_retention(1500 + 731 * day).unwrap();
    assert_eq!(r.messages, 4, "{r:?}");
    assert!(v.store().messages(&d.id(), &MessageQuery::all()).unwrap().is_empty());
    let ledger = verify_ledger(v, &d);
    assert!(erasures(&ledger).iter().any(|e| e.reason == ErasureReason::RetentionEnded));
    // Nothing left: a further sweep records nothing.
    let n = ledger.entries().len();
    assert_eq!(v.apply_retention(1500 + 800 * day).unwrap().erasures, 0);
    assert_eq!(verify_ledger(v, &d).entries().len(), n);
}

/// A per-purpose retention period shorter than the default.
pub fn per_purpose_retention<S: Store>(v: Ingestor<S>) {
    let v = v.with_retention(lifecycle::RetentionPolicy {
        per_purpose: vec![(Purpose::USAGE_ANALYTICS, 30 * 86_400)],
        ..Default::default()
    });
    let mut d = SimDevice::new(DeviceId([0x61; 8]), [0x61; 32], &keys()).unwrap();
    v.ingest(&register(&mut d, consent(1, &analytics(), 0)), 1000).unwrap();
    v.ingest(&d.seal(&counter_usage(1, &[(1, 1)])).unwrap(), 1000).unwrap();
    v.ingest(&d.seal(&counter_usage(1, &[(1, 2)])).unwrap(), 1000 + 20 * 86_400).unwrap();
    let r = v.apply_retention(1001 + 30 * 86_400).unwrap();
    assert_eq!((r.messages, r.erasures), (1, 1));
    let left: Vec<u64> = v.store().messages(&d.id(), &MessageQuery::all()).unwrap().iter().map(|m| m.counter).collect();
    assert_eq!(left, [0, 2]);
    assert_eq!(v.retention().max_age(Purpose::USAGE_ANALYTICS), 30 * 86_400);
    assert_eq!(v.retention().max_age(Purpose::DIAGNOSTICS), MAX_RECONFIRM);
}
