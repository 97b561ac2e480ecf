//! The owner's data lifecycle on the in-memory and persistent stores (redb,
//! fjall); the persistent stores' tests scan their files to prove erased
//! bytes are gone.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod lifecycle_support;

use spime::vendor::*;

use lifecycle_support::*;

fn memory() -> Ingestor<MemoryStore> {
    Ingestor::new(MemoryStore::new(), keys(), IngestConfig::default())
}

#[test]
fn memory_withdrawal_and_forget() {
    withdrawal_and_forget(&memory(), &|_| None);
}

#[test]
fn memory_owner_change_and_retention() {
    owner_change_and_retention(&memory(), &|_| None);
}

#[test]
fn memory_per_purpose_retention() {
    per_purpose_retention(memory());
}

mod durable_support;

use durable_support::{Durable, bytes_under, temp_dir};

durable_tests!(
    withdrawal_and_forget_leave_no_bytes_in_the_store,
    owner_change_and_retention_on,
    per_purpose_retention_on,
    delete_alone_leaves_bytes_scrub_removes_them,
);

fn open<S: Durable>(name: &str) -> (Ingestor<S>, std::path::PathBuf) {
    let dir = temp_dir(&format!("lifecycle-{}-{name}", S::NAME));
    (Ingestor::new(S::open_in(&dir).unwrap(), keys(), IngestConfig::default()), dir)
}

/// Whether bytes occur in any file of the store's directory.
fn scan(dir: &std::path::Path) -> impl Fn(&[u8]) -> Option<bool> + '_ {
    move |needle| Some(bytes_under(dir, needle))
}

fn withdrawal_and_forget_leave_no_bytes_in_the_store<S: Durable>() {
    let (v, dir) = open::<S>("withdraw");
    withdrawal_and_forget(&v, &scan(&dir));
}

fn owner_change_and_retention_on<S: Durable>() {
    let (v, dir) = open::<S>("owner");
    owner_change_and_retention(&v, &scan(&dir));
}

fn per_purpose_retention_on<S: Durable>() {
    per_purpose_retention(open::<S>("purpose").0);
}

/// Without the scrub, a plain delete may leave the bytes in the store's
/// files (redb's freed pages, fjall's journal and older tables): the reason
/// `Store::scrub` exists. After it they are gone, and the store works on.
fn delete_alone_leaves_bytes_scrub_removes_them<S: Durable>() {
    let (v, dir) = open::<S>("scrub");
    let store = v.store();
    let marker = b"spime-marker-0123456789abcdef-spime";
    let mut m = StoredMessage {
        device: spime::wire::DeviceId([9; 8]),
        counter: 1,
        kind: spime::wire::Kind::USAGE.to_byte(),
        received_at: 5,
        relationship: 1,
        purpose: spime::consent::Purpose::USAGE_ANALYTICS,
        proof: spime::consent::ledger::Proof {
            header: vec![],
            body: marker.to_vec(),
            signature: spime::codec::Bytes64([0; 64]),
        },
    };
    let mut tx = store.begin().unwrap();
    tx.put_message(&m).unwrap();
    m.counter = 2;
    m.proof.body = b"another message".to_vec();
    tx.put_message(&m).unwrap();
    tx.commit().unwrap();
    assert_eq!(scan(&dir)(marker), Some(true));
    let mut tx = store.begin().unwrap();
    let scope = ErasureScope {
        relationships: 1..=1,
        purposes: PurposeFilter::Only(vec![spime::consent::Purpose::USAGE_ANALYTICS]),
        before: 5,
    };
    assert!(tx.erase_messages(&m.device, &scope).unwrap().is_empty(), "received at 5, not before");
    let scope = ErasureScope { before: 6, ..scope };
    assert_eq!(tx.erase_messages(&m.device, &scope).unwrap(), [(spime::consent::Purpose::USAGE_ANALYTICS, 2)]);
    tx.commit().unwrap();
    assert!(store.messages(&m.device, &MessageQuery::all()).unwrap().is_empty());
    let after_delete = scan(&dir)(marker);
    store.scrub().unwrap();
    assert_eq!(scan(&dir)(marker), Some(false));
    println!("{}: marker still in the files after a plain delete: {after_delete:?}; after scrub: false", S::NAME);
    // The store works on after the scrub, and the rest survived it.
    let mut tx = store.begin().unwrap();
    assert_eq!(tx.next_counter(&m.device).unwrap(), 0);
    tx.commit().unwrap();
    drop(v);
    let reopened = S::open_in(&dir).unwrap();
    assert!(reopened.messages(&m.device, &MessageQuery::all()).unwrap().is_empty());
    let mut tx = reopened.begin().unwrap();
    assert_eq!(tx.next_counter(&m.device).unwrap(), 1, "the counter committed after the scrub is kept");
}

mod ledger {
    use proptest::prelude::*;
    use spime::consent::Purpose;
    use spime::consent::ledger::{ConsentEvent, ConsentLedger, Erasure, ErasureReason, LedgerError, Proof};
    use spime::message::Register;
    use spime::vendor::sim::{SimDevice, consent};
    use spime::wire::DeviceId;

    fn statement() -> Erasure {
        Erasure {
            reason: ErasureReason::Withdrawn,
            relationships: (1, 1),
            before: 99,
            messages: vec![(Purpose::USAGE_ANALYTICS, 3)],
            notices: 1,
        }
    }

    /// A ledger with one Given entry, for `d`.
    fn given(d: &mut SimDevice) -> ConsentLedger {
        let bytes = d
            .seal(&Register {
                certificate: d.certificate().clone(),
                firmware: spime::message::FirmwareVersion { major: 1, minor: 0, patch: 0, build: 0 },
                consent: consent(1, &[], 0),
                transfer: None,
            })
            .unwrap();
        let env = spime::seal::Envelope::parse(&bytes).unwrap();
        let mut buf = vec![0u8; env.plaintext_len()];
        let v = env.decrypt(d.session().unwrap(), &mut buf).unwrap().verify(&d.key().public()).unwrap();
        let mut l = ConsentLedger::new(d.id());
        l.record_state(Proof::from_verified(&v), 10).unwrap();
        l
    }

    #[test]
    fn erased_entries_chain_verify_and_are_tamper_evident() {
        let mut d = SimDevice::new(DeviceId([0x71; 8]), [0x71; 32], &super::keys()).unwrap();
        assert_eq!(
            ConsentLedger::new(d.id()).record_erasure(&statement(), 5).unwrap_err(),
            LedgerError::NoState,
            "nothing to erase before any consent"
        );
        let mut l = given(&mut d);
        let e = l.record_erasure(&statement(), 20).unwrap().clone();
        assert_eq!((e.event, e.event.code(), e.version, e.seq), (ConsentEvent::Erased, 7, 1, 1));
        assert_eq!(ConsentEvent::from_code(7), Some(ConsentEvent::Erased));
        assert_eq!(ConsentEvent::from_code(8), None);
        assert_eq!(Erasure::from_proof(&e.proof).unwrap(), statement());
        l.verify_chain().unwrap();
        l.verify_proofs(&d.key().public()).unwrap();
        assert_eq!(l.current_version(), Some(1));
        assert!(l.current_state().is_some(), "an erasure does not change the consent in effect");
        assert!(l.export().contains("consent withdrawn: deleted 3 messages (3 for"));
        // Changing what the statement says breaks the chain.
        let mut entries = l.entries().to_vec();
        let mut forged = statement();
        forged.messages = vec![(Purpose::USAGE_ANALYTICS, 1)];
        entries[1].proof = forged.to_proof().unwrap();
        assert_eq!(ConsentLedger::from_entries(d.id(), entries).unwrap_err(), LedgerError::BrokenChain(1));
        // A statement that is not one fails the proof check even with a good chain.
        let mut l2 = given(&mut SimDevice::new(DeviceId([0x72; 8]), [0x72; 32], &super::keys()).unwrap());
        let bad = Proof { header: vec![], body: vec![0xff; 4], signature: spime::codec::Bytes64([0; 64]) };
        assert!(l2.append(ConsentEvent::Erased, bad.clone(), 30).is_err());
        let mut entries = l2.entries().to_vec();
        let mut e = entries[0].clone();
        e.seq = 1;
        e.event = ConsentEvent::Erased;
        e.prev_hash = entries[0].hash;
        e.proof = bad;
        e.hash = e.compute_hash();
        entries.push(e);
        let l3 = ConsentLedger::from_entries(l2.device(), entries).unwrap();
        assert!(matches!(l3.verify_proofs(&d.key().public()), Err(LedgerError::BadProof(_))));
    }

    proptest! {
        #[test]
        fn any_statement_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..64), sig in any::<u8>()) {
            let mut signature = [0u8; 64];
            signature[0] = sig;
            let p = Proof { header: vec![], body, signature: spime::codec::Bytes64(signature) };
            if let Ok(e) = Erasure::from_proof(&p) {
                prop_assert_eq!(sig, 0);
                prop_assert_eq!(Erasure::from_proof(&e.to_proof().unwrap()).unwrap(), e);
            }
        }
    }
}
