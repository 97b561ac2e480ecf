//! The persistent stores behind one trait, so that one test body runs on
//! each: `RedbStore` (feature `redb`) and `FjallStore` (feature `fjall`).
//! `durable_tests!` instantiates a module of tests per store.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};

#[cfg(feature = "fjall")]
use spime::consent::ledger::LedgerEntry;
#[cfg(feature = "fjall")]
use spime::vendor::{DeviceRecord, MessageQuery, NoticeRecord, StoredMessage};
use spime::vendor::{Store, StoreError};
#[cfg(feature = "fjall")]
use spime::wire::DeviceId;

/// A persistent store opened inside a test directory.
pub trait Durable: Store + Sized {
    /// Its short name (temp directories, messages).
    const NAME: &'static str;
    /// Opens (or creates) the store kept in `dir` (a file or a directory
    /// inside it).
    fn open_in(dir: &Path) -> Result<Self, StoreError>;
}

#[cfg(feature = "redb")]
impl Durable for spime::vendor::RedbStore {
    const NAME: &'static str = "redb";
    fn open_in(dir: &Path) -> Result<Self, StoreError> {
        spime::vendor::RedbStore::open(dir.join("vendor.redb"))
    }
}

#[cfg(feature = "fjall")]
impl Durable for spime::vendor::FjallStore {
    const NAME: &'static str = "fjall";
    fn open_in(dir: &Path) -> Result<Self, StoreError> {
        spime::vendor::FjallStore::open(dir.join("vendor.fjall"))
    }
}

/// `FjallStore` with a record cache of two devices: the same tests, with
/// the cache evicting all the time.
#[cfg(feature = "fjall")]
#[derive(Debug)]
pub struct TinyFjall(pub spime::vendor::FjallStore);

#[cfg(feature = "fjall")]
impl Durable for TinyFjall {
    const NAME: &'static str = "fjall-tiny";
    fn open_in(dir: &Path) -> Result<Self, StoreError> {
        Ok(TinyFjall(spime::vendor::FjallStore::open(dir.join("vendor.fjall"))?.with_record_cache(2)))
    }
}

#[cfg(feature = "fjall")]
impl Store for TinyFjall {
    type Txn<'a> = spime::vendor::FjallTxn<'a>;
    fn begin(&self) -> Result<Self::Txn<'_>, StoreError> {
        self.0.begin()
    }
    fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        self.0.devices()
    }
    fn message_count(&self) -> Result<u64, StoreError> {
        self.0.message_count()
    }
    fn device(&self, device: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        self.0.device(device)
    }
    fn messages(&self, device: &DeviceId, query: &MessageQuery) -> Result<Vec<StoredMessage>, StoreError> {
        self.0.messages(device, query)
    }
    fn consent_ledger(&self, device: &DeviceId) -> Result<Vec<LedgerEntry>, StoreError> {
        self.0.consent_ledger(device)
    }
    fn notices(&self, device: &DeviceId) -> Result<Vec<NoticeRecord>, StoreError> {
        self.0.notices(device)
    }
    fn scrub(&self) -> Result<(), StoreError> {
        self.0.scrub()
    }
}

/// A fresh, empty directory for one test.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("spime-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Whether `needle` occurs in any file under `dir`.
pub fn bytes_under(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|e| {
        let p = e.unwrap().path();
        if p.is_dir() {
            bytes_under(&p, needle)
        } else {
            std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
        }
    })
}

/// A module of tests per store: `durable_tests!(name_of_test, ...)` makes
/// `redb::name_of_test`, `fjall::name_of_test` and `fjall_tiny::name_of_test`
/// (a record cache of two devices), each calling the generic
/// `name_of_test::<Store>()` of the including file.
#[macro_export]
macro_rules! durable_tests {
    ($($test:ident),* $(,)?) => {
        #[cfg(feature = "redb")]
        mod redb {
            $(
                #[test]
                fn $test() {
                    super::$test::<spime::vendor::RedbStore>();
                }
            )*
        }
        #[cfg(feature = "fjall")]
        mod fjall {
            $(
                #[test]
                fn $test() {
                    super::$test::<spime::vendor::FjallStore>();
                }
            )*
        }
        #[cfg(feature = "fjall")]
        mod fjall_tiny {
            $(
                #[test]
                fn $test() {
                    super::$test::<$crate::durable_support::TinyFjall>();
                }
            )*
        }
    };
}
