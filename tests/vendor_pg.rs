//! PgStore against a real PostgreSQL server that the tests start
//! themselves (see tests/pg_support): migrations, persistence, fencing of a
//! stale writer, and the owner's data lifecycle with erased bytes checked
//! in the tables and in the database's files.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod lifecycle_support;
mod pg_support;

use std::sync::Mutex;

use spime::consent::ledger::{ConsentLedger, LedgerEntry};
use spime::consent::*;
use spime::message::*;
use spime::seal;
use spime::vendor::sim::{SimDevice, consent, counter_usage};
use spime::vendor::*;
use spime::wire::DeviceId;

use lifecycle_support::keys;

fn strict() -> IngestConfig {
    IngestConfig { workers: 2, batch_verify: true }
}

/// A fresh database and a store on it, or `None` when there is no server.
fn fresh() -> Option<(PgStore, postgres::Config, &'static pg_support::Server)> {
    let server = pg_support::server()?;
    let cfg = pg_support::fresh_database(server);
    Some((PgStore::with_config(cfg.clone()).unwrap(), cfg, server))
}

fn register(d: &mut SimDevice) -> Vec<u8> {
    d.seal(&Register {
        certificate: d.certificate().clone(),
        firmware: FirmwareVersion { major: 1, minor: 0, patch: 0, build: 0 },
        consent: consent(1, &[(Purpose::USAGE_ANALYTICS, CategorySet::EMPTY.with(DataCategory::UsageCounters))], 0),
    })
    .unwrap()
}

/// Whether `needle` is anywhere in the database: in a table (a query) or,
/// when the tests started the server, in the database's files after a checkpoint.
fn bytes_in_db(server: &pg_support::Server, cfg: &postgres::Config, needle: &[u8]) -> Option<bool> {
    let mut c = cfg.connect(postgres::NoTls).unwrap();
    let in_tables: i64 = c
        .query_one(
            "SELECT (SELECT count(*) FROM messages WHERE position($1 in body) > 0)
                  + (SELECT count(*) FROM notices WHERE position($1 in notice) > 0)
                  + (SELECT count(*) FROM consent_ledger WHERE position($1 in body) > 0)",
            &[&needle],
        )
        .unwrap()
        .get(0);
    let in_files = match pg_support::database_dir(server, cfg) {
        Some(dir) => {
            c.batch_execute("CHECKPOINT").unwrap();
            pg_support::dir_contains(&dir, needle)
        }
        None => false,
    };
    Some(in_tables > 0 || in_files)
}

#[test]
fn migrations_apply_once_and_state_survives_reconnect() {
    let Some((store, cfg, _)) = fresh() else { return };
    assert_eq!(store.schema_version().unwrap(), 1);
    let again = PgStore::with_config(cfg.clone()).unwrap();
    assert_eq!(again.schema_version().unwrap(), 1);
    let mut c = cfg.connect(postgres::NoTls).unwrap();
    let n: i64 = c.query_one("SELECT count(*) FROM spime_migrations", &[]).unwrap().get(0);
    assert_eq!(n, 1, "a second connect applies nothing");

    let mut d = SimDevice::new(DeviceId([3; 8]), [3; 32], &keys()).unwrap();
    let reg = register(&mut d);
    let usage = d.seal(&counter_usage(1, &[(1, 7)])).unwrap();
    {
        let v = Ingestor::new(store, keys(), strict());
        v.ingest_batch(&[&reg, &usage], 100).into_iter().for_each(|r| drop(r.unwrap()));
        assert_eq!(v.seal_receipt(&d.id()).map(|r| seal::Envelope::parse(&r).unwrap().header.counter), Ok(0));
    }
    let v = Ingestor::new(again, keys(), strict());
    assert_eq!(v.ingest(&usage, 101).unwrap_err().reason(), "replay");
    assert_eq!(v.ingest(&reg, 101).unwrap_err().reason(), "replay");
    let r = v.seal_receipt(&d.id()).unwrap();
    assert_eq!(seal::Envelope::parse(&r).unwrap().header.counter, 1, "vendor counters go on");
    assert_eq!(v.store().message_count().unwrap(), 2);
    let rec = v.store().device(&d.id()).unwrap().unwrap();
    assert_eq!((rec.relationship, rec.epoch()), (1, 1));
    assert_eq!(v.store().devices().unwrap().len(), 1);
    let ledger = ConsentLedger::from_entries(d.id(), v.store().consent_ledger(&d.id()).unwrap()).unwrap();
    ledger.verify_proofs(&d.key().public()).unwrap();
    // Reading inside a transaction sees the same.
    let mut tx = v.store().begin().unwrap();
    assert_eq!(tx.message(&d.id(), 1).unwrap().unwrap().proof.body.len(), usage_body_len(&v, &d));
    assert_eq!(tx.consent_entries(&d.id()).unwrap().len(), 1);
    assert!(tx.message(&d.id(), 9).unwrap().is_none());
}

fn usage_body_len(v: &Ingestor<PgStore>, d: &SimDevice) -> usize {
    v.store().messages(&d.id(), &MessageQuery::all().kind(spime::wire::Kind::USAGE)).unwrap()[0].proof.body.len()
}

#[test]
fn a_stale_transaction_fails_as_a_conflict() {
    let Some((store, cfg, _)) = fresh() else { return };
    let other = PgStore::with_config(cfg).unwrap();
    let v = Ingestor::new(store, keys(), strict());
    let mut d = SimDevice::new(DeviceId([4; 8]), [4; 32], &keys()).unwrap();
    v.ingest(&register(&mut d), 100).unwrap();
    // Two writers read the same version of the device.
    let mut stale = v.store().begin().unwrap();
    let mut fresh_tx = other.begin().unwrap();
    let rec = stale.device(&d.id()).unwrap().unwrap();
    let w = stale.window(&d.id()).unwrap();
    let rec2 = fresh_tx.device(&d.id()).unwrap().unwrap();
    fresh_tx.put_device(&rec2).unwrap();
    fresh_tx.commit().unwrap();
    // The stale writer's commit is refused, and nothing of it is kept.
    stale.put_window(&d.id(), &w).unwrap();
    stale.put_device(&rec).unwrap();
    stale.append_consent(&d.id(), &v.store().consent_ledger(&d.id()).unwrap()[0]).unwrap();
    assert_eq!(stale.commit(), Err(StoreError::Conflict));
    assert_eq!(v.store().consent_ledger(&d.id()).unwrap().len(), 1);
    // A device inserted by someone else after this transaction saw it absent: conflict too.
    let mut late = v.store().begin().unwrap();
    let newcomer = DeviceId([5; 8]);
    assert!(late.device(&newcomer).unwrap().is_none());
    let mut rec5 = rec.clone();
    rec5.device = newcomer;
    let mut early = other.begin().unwrap();
    early.put_device(&rec5).unwrap();
    early.commit().unwrap();
    late.put_device(&rec5).unwrap();
    assert_eq!(late.commit(), Err(StoreError::Conflict));
    // A message stored twice (same device and counter) is a conflict, never a second copy.
    let m = v.store().messages(&d.id(), &MessageQuery::all()).unwrap().remove(0);
    let mut tx = v.store().begin().unwrap();
    tx.put_message(&m).unwrap();
    assert_eq!(tx.commit(), Err(StoreError::Conflict));
    // A transaction dropped without commit leaves nothing.
    let mut tx = v.store().begin().unwrap();
    assert_eq!(tx.next_counter(&d.id()).unwrap(), 0);
    drop(tx);
    let mut tx = v.store().begin().unwrap();
    assert_eq!(tx.next_counter(&d.id()).unwrap(), 0);
    tx.commit().unwrap();
}

/// A store that runs a hook (once) just before its next commit: the moment
/// at which a rebalanced shard's new owner gets ahead of the old one.
struct Hooked {
    inner: PgStore,
    hook: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

struct HookedTxn<'a>(PgTxn<'a>, &'a Hooked);

impl DeviceRegistry for HookedTxn<'_> {
    fn device(&mut self, d: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        self.0.device(d)
    }
    fn put_device(&mut self, r: &DeviceRecord) -> Result<(), StoreError> {
        self.0.put_device(r)
    }
}
impl ReplayWindows for HookedTxn<'_> {
    fn window(&mut self, d: &DeviceId) -> Result<seal::replay::ReplayWindow, StoreError> {
        self.0.window(d)
    }
    fn put_window(&mut self, d: &DeviceId, w: &seal::replay::ReplayWindow) -> Result<(), StoreError> {
        self.0.put_window(d, w)
    }
}
impl ConsentLedgerStore for HookedTxn<'_> {
    fn append_consent(&mut self, d: &DeviceId, e: &LedgerEntry) -> Result<(), StoreError> {
        self.0.append_consent(d, e)
    }
    fn consent_entries(&mut self, d: &DeviceId) -> Result<Vec<LedgerEntry>, StoreError> {
        self.0.consent_entries(d)
    }
}
impl MessageLog for HookedTxn<'_> {
    fn put_message(&mut self, m: &StoredMessage) -> Result<(), StoreError> {
        self.0.put_message(m)
    }
    fn message(&mut self, d: &DeviceId, c: u64) -> Result<Option<StoredMessage>, StoreError> {
        self.0.message(d, c)
    }
}
impl VendorCounters for HookedTxn<'_> {
    fn next_counter(&mut self, d: &DeviceId) -> Result<u64, StoreError> {
        self.0.next_counter(d)
    }
}
impl NoticeLog for HookedTxn<'_> {
    fn record_notice(&mut self, n: &NoticeRecord) -> Result<(), StoreError> {
        self.0.record_notice(n)
    }
    fn notices_since(&mut self, d: &DeviceId, p: Purpose, s: u64) -> Result<u32, StoreError> {
        self.0.notices_since(d, p, s)
    }
}
impl DataErasure for HookedTxn<'_> {
    fn erase_messages(&mut self, d: &DeviceId, s: &ErasureScope) -> Result<Vec<(Purpose, u64)>, StoreError> {
        self.0.erase_messages(d, s)
    }
    fn erase_notices(&mut self, d: &DeviceId, s: &ErasureScope) -> Result<u64, StoreError> {
        self.0.erase_notices(d, s)
    }
}
impl Transaction for HookedTxn<'_> {
    fn commit(self) -> Result<(), StoreError> {
        let hook = self.1.hook.lock().unwrap().take();
        if let Some(h) = hook {
            h();
        }
        self.0.commit()
    }
}
impl Store for Hooked {
    type Txn<'a> = HookedTxn<'a>;
    fn begin(&self) -> Result<HookedTxn<'_>, StoreError> {
        Ok(HookedTxn(self.inner.begin()?, self))
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

#[test]
fn a_stale_workers_batch_is_refused_whole_and_acknowledges_nothing() {
    let Some((store, cfg, _)) = fresh() else { return };
    let old_owner = Ingestor::new(Hooked { inner: store, hook: Mutex::new(None) }, keys(), strict());
    let new_owner = std::sync::Arc::new(Ingestor::new(PgStore::with_config(cfg).unwrap(), keys(), strict()));
    let mut d = SimDevice::new(DeviceId([6; 8]), [6; 32], &keys()).unwrap();
    let mut e = SimDevice::new(DeviceId([7; 8]), [7; 32], &keys()).unwrap();
    new_owner.ingest_batch(&[&register(&mut d), &register(&mut e)], 100).into_iter().for_each(|r| drop(r.unwrap()));
    let u1 = d.seal(&counter_usage(1, &[(1, 1)])).unwrap();
    let u2 = d.seal(&counter_usage(1, &[(1, 2)])).unwrap();
    let other_device = e.seal(&counter_usage(1, &[(1, 3)])).unwrap();
    // The old owner judges [u1, u2, e's usage] while the new owner, between its
    // read and its commit, accepts u2 (delivered to both during the rebalance).
    let n = new_owner.clone();
    let dup = u2.clone();
    *old_owner.store().hook.lock().unwrap() = Some(Box::new(move || {
        n.ingest(&dup, 101).unwrap();
    }));
    let out = old_owner.ingest_batch(&[&u1, &u2, &other_device], 101);
    for r in &out {
        assert_eq!(r, &Err(IngestError::Storage(StoreError::Conflict)));
    }
    // Only the new owner's acknowledgement stands: u2 once, u1 and e's usage not at all.
    let counters: Vec<u64> =
        new_owner.store().messages(&d.id(), &MessageQuery::all()).unwrap().iter().map(|m| m.counter).collect();
    assert_eq!(counters, [0, 2]);
    assert_eq!(new_owner.store().messages(&e.id(), &MessageQuery::all()).unwrap().len(), 1);
    // The devices resend; the current owner accepts what is new and refuses the replay.
    assert!(new_owner.ingest(&u1, 102).is_ok());
    assert!(new_owner.ingest(&other_device, 102).is_ok());
    assert_eq!(new_owner.ingest(&u2, 102).unwrap_err().reason(), "replay");
    assert_eq!(old_owner.ingest(&u2, 103).unwrap_err().reason(), "replay");
    for dev in [&d, &e] {
        let l = ConsentLedger::from_entries(dev.id(), new_owner.store().consent_ledger(&dev.id()).unwrap()).unwrap();
        l.verify_proofs(&dev.key().public()).unwrap();
    }
}

#[test]
fn pg_withdrawal_and_forget_leave_no_bytes_in_the_database() {
    let Some((store, cfg, server)) = fresh() else { return };
    let v = Ingestor::new(store, keys(), strict());
    lifecycle_support::withdrawal_and_forget(&v, &|needle| bytes_in_db(server, &cfg, needle));
}

#[test]
fn pg_owner_change_and_retention() {
    let Some((store, cfg, server)) = fresh() else { return };
    let v = Ingestor::new(store, keys(), strict());
    lifecycle_support::owner_change_and_retention(&v, &|needle| bytes_in_db(server, &cfg, needle));
}

#[test]
fn pg_per_purpose_retention() {
    let Some((store, _, _)) = fresh() else { return };
    lifecycle_support::per_purpose_retention(Ingestor::new(store, keys(), strict()));
}

/// A plain DELETE leaves the row's bytes in the table file until the space is
/// reused; the scrub (VACUUM FULL) rewrites the table without them.
#[test]
fn pg_delete_alone_leaves_bytes_scrub_removes_them() {
    let Some((store, cfg, server)) = fresh() else { return };
    let Some(dir) = pg_support::database_dir(server, &cfg) else {
        eprintln!("skipping the file scan: the server was not started by the tests");
        return;
    };
    let marker = b"spime-pg-marker-0123456789abcdef";
    let m = StoredMessage {
        device: DeviceId([9; 8]),
        counter: 1,
        kind: spime::wire::Kind::USAGE.to_byte(),
        received_at: 5,
        relationship: 1,
        purpose: Purpose::USAGE_ANALYTICS,
        proof: spime::consent::ledger::Proof {
            header: vec![],
            body: marker.to_vec(),
            signature: spime::codec::Bytes64([0; 64]),
        },
    };
    let mut tx = store.begin().unwrap();
    tx.put_message(&m).unwrap();
    tx.commit().unwrap();
    let mut c = cfg.connect(postgres::NoTls).unwrap();
    c.batch_execute("CHECKPOINT").unwrap();
    assert!(pg_support::dir_contains(&dir, marker));
    let mut tx = store.begin().unwrap();
    let scope = ErasureScope { relationships: 1..=1, purposes: PurposeFilter::Except(vec![]), before: u64::MAX };
    assert_eq!(tx.erase_messages(&m.device, &scope).unwrap(), [(Purpose::USAGE_ANALYTICS, 1)]);
    tx.commit().unwrap();
    c.batch_execute("CHECKPOINT").unwrap();
    let after_delete = pg_support::dir_contains(&dir, marker);
    store.scrub().unwrap();
    c.batch_execute("CHECKPOINT").unwrap();
    assert!(!pg_support::dir_contains(&dir, marker));
    println!("postgres: marker in the database files after a plain DELETE: {after_delete}; after scrub: false");
}
