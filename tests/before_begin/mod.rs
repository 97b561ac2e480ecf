//! A `MemoryStore` that runs a closure before each `begin`: the moment
//! between a batch's read and its write, where tests put another writer
//! (tests/vendor_ingest.rs) or hold one batch until another starts
//! (tests/server_shutdown.rs). Its transactions are `MemoryTxn`s, so it
//! counts commits as `MemoryStore` does.
#![allow(dead_code, unreachable_pub)]

use spime::consent::ledger::LedgerEntry;
use spime::vendor::{
    DeviceRecord, MemoryStore, MemoryTxn, MessageQuery, NoticeRecord, Store, StoreError, StoredMessage,
};
use spime::wire::DeviceId;

/// What runs before each `begin`, on the caller's thread.
pub trait Before: Send + Sync {
    /// Called with the store, before the transaction begins.
    fn before(&self, store: &MemoryStore);
}

/// `inner`, with `before` run before each `begin`.
pub struct BeforeBegin<B> {
    pub inner: MemoryStore,
    pub before: B,
}

impl<B: Before> BeforeBegin<B> {
    /// A fresh store.
    pub fn new(before: B) -> BeforeBegin<B> {
        BeforeBegin { inner: MemoryStore::new(), before }
    }
}

impl<B: Before> Store for BeforeBegin<B> {
    type Txn<'a>
        = MemoryTxn<'a>
    where
        B: 'a;
    fn begin(&self) -> Result<MemoryTxn<'_>, StoreError> {
        self.before.before(&self.inner);
        self.inner.begin()
    }
    fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        self.inner.devices()
    }
    fn message_count(&self) -> Result<u64, StoreError> {
        self.inner.message_count()
    }
    fn device(&self, d: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        self.inner.device(d)
    }
    fn messages(&self, d: &DeviceId, q: &MessageQuery) -> Result<Vec<StoredMessage>, StoreError> {
        self.inner.messages(d, q)
    }
    fn consent_ledger(&self, d: &DeviceId) -> Result<Vec<LedgerEntry>, StoreError> {
        self.inner.consent_ledger(d)
    }
    fn notices(&self, d: &DeviceId) -> Result<Vec<NoticeRecord>, StoreError> {
        self.inner.notices(d)
    }
    fn scrub(&self) -> Result<(), StoreError> {
        self.inner.scrub()
    }
}
