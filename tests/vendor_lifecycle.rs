//! The owner's data lifecycle on the in-memory and redb stores; the redb
//! tests scan the database file to prove erased bytes are gone.
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

#[cfg(feature = "redb")]
mod redb {
    use super::*;
    use std::path::PathBuf;

    fn open(name: &str) -> (Ingestor<RedbStore>, PathBuf) {
        let dir = std::env::temp_dir().join(format!("spime-lifecycle-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vendor.redb");
        (Ingestor::new(RedbStore::open(&path).unwrap(), keys(), IngestConfig::default()), path)
    }

    fn scan(path: &std::path::Path) -> impl Fn(&[u8]) -> Option<bool> + '_ {
        move |needle| {
            let bytes = std::fs::read(path).unwrap();
            Some(bytes.windows(needle.len()).any(|w| w == needle))
        }
    }

    #[test]
    fn redb_withdrawal_and_forget_leave_no_bytes_in_the_file() {
        let (v, path) = open("withdraw");
        withdrawal_and_forget(&v, &scan(&path));
    }

    #[test]
    fn redb_owner_change_and_retention() {
        let (v, path) = open("owner");
        owner_change_and_retention(&v, &scan(&path));
    }

    #[test]
    fn redb_per_purpose_retention() {
        per_purpose_retention(open("purpose").0);
    }

    /// Without the scrub, a plain delete leaves the bytes in the file: the
    /// reason `Store::scrub` exists.
    #[test]
    fn redb_delete_alone_leaves_bytes_scrub_removes_them() {
        let (v, path) = open("scrub");
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
        assert_eq!(scan(&path)(marker), Some(true));
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
        let after_delete = scan(&path)(marker);
        store.scrub().unwrap();
        assert_eq!(scan(&path)(marker), Some(false));
        println!("redb: marker still in the file after a plain delete: {after_delete:?}; after scrub: false");
        // The store works on after the scrub, and the rest survived it.
        let mut tx = store.begin().unwrap();
        assert_eq!(tx.next_counter(&m.device).unwrap(), 0);
        tx.commit().unwrap();
        drop(v);
        let reopened = RedbStore::open(&path).unwrap();
        assert!(reopened.messages(&m.device, &MessageQuery::all()).unwrap().is_empty());
    }
}
