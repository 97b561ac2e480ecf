//! The PostgreSQL store (feature `postgres`): several stateless ingest
//! workers over one database, as docs/scaling.md describes.
//!
//! - **Driver:** the synchronous [`postgres`](https://docs.rs/postgres)
//!   client (the store traits are synchronous). Each [`PgTxn`] is one SQL
//!   transaction (`BEGIN` … `COMMIT`, `READ COMMITTED`) on a connection
//!   taken from a small pool inside the store.
//! - **Schema:** created and migrated by [`PgStore::connect`], under an
//!   advisory lock so that workers starting together do not race; applied
//!   migrations are listed in `spime_migrations`.
//! - **Fencing:** `devices.version` counts the writes to a device. A
//!   transaction remembers the version of every device it read; at commit
//!   each device it writes is updated only `WHERE version = <read>`, and the
//!   version goes up by one. If another writer committed in between (a
//!   rebalance left two workers judging the same device), fewer rows match
//!   and the whole transaction fails with [`StoreError::Conflict`]:
//!   nothing is kept, and the pipeline acknowledges nothing of the batch.
//!   A new device is inserted only if it is still absent (else `Conflict`).
//!   The primary keys `(device, seq)` of the ledger and `(device, counter)`
//!   of the messages turn any remaining double write into `Conflict` too.
//! - **Group commit:** messages, ledger entries and windows written in a
//!   transaction are buffered and sent at commit as one multi-row statement
//!   each (`unnest` of arrays), so a batch costs a handful of round trips
//!   and one WAL flush, not one per message.
//! - **Numbers:** device counters are `u64`; they are stored in `bigint`
//!   with the top bit flipped, which keeps their order. Times and the vendor
//!   counter are stored as they are (an error past 2^63).
//! - **Connections** are plain (no TLS is wired in): run the database on the
//!   workers' private network or behind a TLS proxy.

use alloc::string::ToString;
use alloc::vec::Vec;
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

use postgres::error::SqlState;
use postgres::{Client, NoTls, Row, Statement};

use crate::codec::Bytes64;
use crate::consent::Purpose;
use crate::consent::ledger::{ConsentEvent, LedgerEntry, Proof};
use crate::seal::replay::ReplayWindow;
use crate::wire::DeviceId;

use super::StoreError;
use super::store::{
    ConsentLedgerStore, DataErasure, DeviceRecord, DeviceRegistry, ErasureScope, MessageLog, MessageQuery, NoticeLog,
    NoticeRecord, PurposeFilter, ReplayWindows, Store, StoredMessage, Transaction, VendorCounters, tally,
};

/// The schema, one migration per entry, applied in order.
const MIGRATIONS: &[&str] = &[
    // 1: the tables of docs/scaling.md.
    "CREATE TABLE devices (
        device bytea PRIMARY KEY,
        record bytea NOT NULL,          -- postcard DeviceRecord
        version bigint NOT NULL         -- fencing: +1 on every committed write
     );
     CREATE TABLE replay_windows (
        device bytea PRIMARY KEY,
        highest bigint NOT NULL,        -- u64, top bit flipped
        seen bytea NOT NULL             -- u128 big-endian
     );
     CREATE TABLE consent_ledger (
        device bytea NOT NULL,
        seq bigint NOT NULL,
        event smallint NOT NULL,
        at bigint NOT NULL,
        version bigint NOT NULL,
        header bytea NOT NULL,
        body bytea NOT NULL,
        signature bytea NOT NULL,
        prev_hash bytea NOT NULL,
        hash bytea NOT NULL,
        PRIMARY KEY (device, seq)
     );
     CREATE TABLE messages (
        device bytea NOT NULL,
        counter bigint NOT NULL,        -- u64, top bit flipped
        kind smallint NOT NULL,
        received_at bigint NOT NULL,
        relationship bigint NOT NULL,
        purpose integer NOT NULL,
        header bytea NOT NULL,
        body bytea NOT NULL,
        signature bytea NOT NULL,
        PRIMARY KEY (device, counter)
     );
     CREATE INDEX messages_by_time ON messages (device, received_at);
     CREATE TABLE vendor_counters (
        device bytea PRIMARY KEY,
        next bigint NOT NULL
     );
     CREATE TABLE notices (
        id bigserial PRIMARY KEY,
        device bytea NOT NULL,
        relationship bigint NOT NULL,
        purpose integer NOT NULL,
        at bigint NOT NULL,
        counter bigint,                 -- NULL when held back
        held_back text,
        notice bytea NOT NULL
     );
     CREATE INDEX notices_by_device ON notices (device, purpose, at);",
];

/// Serialises schema migrations across workers (`pg_advisory_xact_lock`).
const MIGRATION_LOCK: i64 = 0x7370_696d_6501;

fn backend(e: impl ToString) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Maps a database error: unique violations, serialisation failures and
/// deadlocks are another writer's doing ([`StoreError::Conflict`]).
fn db(e: postgres::Error) -> StoreError {
    match e.code() {
        Some(c) if *c == SqlState::UNIQUE_VIOLATION || *c == SqlState::T_R_SERIALIZATION_FAILURE => {
            StoreError::Conflict
        }
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED => StoreError::Conflict,
        _ => StoreError::Backend(e.to_string()),
    }
}

/// A u64 in a bigint, order kept: the top bit flipped.
const fn ord(v: u64) -> i64 {
    i64::from_be_bytes((v ^ (1 << 63)).to_be_bytes())
}

const fn unord(v: i64) -> u64 {
    u64::from_be_bytes(v.to_be_bytes()) ^ (1 << 63)
}

fn time(t: u64) -> Result<i64, StoreError> {
    i64::try_from(t).map_err(|_| StoreError::Corrupt("time beyond 2^63"))
}

fn untime(t: i64, table: &'static str) -> Result<u64, StoreError> {
    u64::try_from(t).map_err(|_| StoreError::Corrupt(table))
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(v).map_err(|_| StoreError::Corrupt("encode"))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], table: &'static str) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|_| StoreError::Corrupt(table))
}

/// One pooled connection with its prepared statements.
struct Conn {
    client: Client,
    statements: HashMap<&'static str, Statement>,
}

impl Conn {
    fn stmt(&mut self, sql: &'static str) -> Result<Statement, StoreError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql).map_err(db)?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }

    fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let s = self.stmt(sql)?;
        self.client.query(&s, params).map_err(db)
    }

    fn execute(
        &mut self,
        sql: &'static str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let s = self.stmt(sql)?;
        self.client.execute(&s, params).map_err(db)
    }
}

/// A store in PostgreSQL, shared by any number of processes.
///
/// ```no_run
/// use spime::vendor::{IngestConfig, Ingestor, PgStore, Store};
/// use spime::seal::VendorKeys;
/// let store = PgStore::connect("host=127.0.0.1 port=5432 user=spime dbname=spime")?;
/// let vendor = Ingestor::new(store, VendorKeys::from_secrets(&[1; 32], [2; 32]), IngestConfig::default());
/// println!("{} devices", vendor.store().devices()?.len());
/// # Ok::<(), spime::vendor::StoreError>(())
/// ```
pub struct PgStore {
    config: postgres::Config,
    pool: Mutex<Vec<Conn>>,
}

impl core::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects with a libpq-style connection string (`host=… port=… user=…
    /// dbname=…`) or URL (`postgresql://user@host:port/db`), and applies any
    /// schema migration not yet applied.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the string does not parse, the server
    /// cannot be reached, or a migration fails.
    pub fn connect(params: &str) -> Result<PgStore, StoreError> {
        PgStore::with_config(params.parse().map_err(backend)?)
    }

    /// [`PgStore::connect`] with a parsed configuration.
    ///
    /// # Errors
    /// As [`PgStore::connect`].
    pub fn with_config(config: postgres::Config) -> Result<PgStore, StoreError> {
        let store = PgStore { config, pool: Mutex::new(Vec::new()) };
        let mut conn = store.take()?;
        migrate(&mut conn.client)?;
        store.give(conn);
        Ok(store)
    }

    /// The schema version applied (the number of migrations).
    ///
    /// # Errors
    /// A [`StoreError`] when the query fails.
    pub fn schema_version(&self) -> Result<i32, StoreError> {
        self.with(|c| {
            let rows = c.query("SELECT coalesce(max(version), 0) FROM spime_migrations", &[])?;
            rows.first().map(|r| r.get::<_, i32>(0)).ok_or(StoreError::Corrupt("spime_migrations"))
        })
    }

    fn take(&self) -> Result<Conn, StoreError> {
        if let Some(c) = self.pool.lock().unwrap_or_else(PoisonError::into_inner).pop()
            && !c.client.is_closed()
        {
            return Ok(c);
        }
        let client = self.config.connect(NoTls).map_err(backend)?;
        Ok(Conn { client, statements: HashMap::new() })
    }

    fn give(&self, conn: Conn) {
        if !conn.client.is_closed() {
            self.pool.lock().unwrap_or_else(PoisonError::into_inner).push(conn);
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Conn) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut c = self.take()?;
        let out = f(&mut c);
        self.give(c);
        out
    }
}

fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let mut tx = client.transaction().map_err(db)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).map_err(db)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS spime_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .map_err(db)?;
    let applied: i32 = tx.query_one("SELECT coalesce(max(version), 0) FROM spime_migrations", &[]).map_err(db)?.get(0);
    for (i, sql) in MIGRATIONS.iter().enumerate() {
        let version = i32::try_from(i).map_err(backend)?.saturating_add(1);
        if version <= applied {
            continue;
        }
        tx.batch_execute(sql).map_err(db)?;
        tx.execute("INSERT INTO spime_migrations (version) VALUES ($1)", &[&version]).map_err(db)?;
    }
    tx.commit().map_err(db)
}

fn ledger_row(r: &Row) -> Result<LedgerEntry, StoreError> {
    const T: &str = "consent_ledger";
    let code: i16 = r.get("event");
    let event = u8::try_from(code).ok().and_then(ConsentEvent::from_code).ok_or(StoreError::Corrupt(T))?;
    let signature: Vec<u8> = r.get("signature");
    let prev: Vec<u8> = r.get("prev_hash");
    let hash: Vec<u8> = r.get("hash");
    Ok(LedgerEntry {
        seq: untime(r.get("seq"), T)?,
        event,
        at: untime(r.get("at"), T)?,
        version: u32::try_from(r.get::<_, i64>("version")).map_err(|_| StoreError::Corrupt(T))?,
        proof: Proof {
            header: r.get("header"),
            body: r.get("body"),
            signature: Bytes64(signature.try_into().map_err(|_| StoreError::Corrupt(T))?),
        },
        prev_hash: prev.try_into().map_err(|_| StoreError::Corrupt(T))?,
        hash: hash.try_into().map_err(|_| StoreError::Corrupt(T))?,
    })
}

fn message_row(r: &Row) -> Result<StoredMessage, StoreError> {
    const T: &str = "messages";
    let device: Vec<u8> = r.get("device");
    let signature: Vec<u8> = r.get("signature");
    Ok(StoredMessage {
        device: DeviceId(device.try_into().map_err(|_| StoreError::Corrupt(T))?),
        counter: unord(r.get("counter")),
        kind: u8::try_from(r.get::<_, i16>("kind")).map_err(|_| StoreError::Corrupt(T))?,
        received_at: untime(r.get("received_at"), T)?,
        relationship: u32::try_from(r.get::<_, i64>("relationship")).map_err(|_| StoreError::Corrupt(T))?,
        purpose: purpose_of(r.get("purpose"), T)?,
        proof: Proof {
            header: r.get("header"),
            body: r.get("body"),
            signature: Bytes64(signature.try_into().map_err(|_| StoreError::Corrupt(T))?),
        },
    })
}

fn purpose_of(id: i32, table: &'static str) -> Result<Purpose, StoreError> {
    u16::try_from(id).ok().and_then(|p| Purpose::from_id(p).ok()).ok_or(StoreError::Corrupt(table))
}

fn notice_row(r: &Row) -> Result<NoticeRecord, StoreError> {
    const T: &str = "notices";
    let device: Vec<u8> = r.get("device");
    Ok(NoticeRecord {
        device: DeviceId(device.try_into().map_err(|_| StoreError::Corrupt(T))?),
        relationship: u32::try_from(r.get::<_, i64>("relationship")).map_err(|_| StoreError::Corrupt(T))?,
        purpose: purpose_of(r.get("purpose"), T)?,
        at: untime(r.get("at"), T)?,
        counter: r.get::<_, Option<i64>>("counter").map(unord),
        held_back: r.get("held_back"),
        notice: r.get("notice"),
    })
}

const SELECT_MESSAGES: &str =
    "SELECT device, counter, kind, received_at, relationship, purpose, header, body, signature
     FROM messages WHERE device = $1 AND received_at >= $2 AND ($3::bigint IS NULL OR received_at < $3)
       AND ($4::smallint IS NULL OR kind = $4) AND ($5::bigint IS NULL OR relationship = $5)
     ORDER BY counter";
const SELECT_LEDGER: &str = "SELECT seq, event, at, version, header, body, signature, prev_hash, hash FROM consent_ledger WHERE device = $1 ORDER BY seq";

/// A transaction of [`PgStore`]: one SQL transaction on one connection.
/// Dropped without [`Transaction::commit`], it rolls back.
pub struct PgTxn<'a> {
    store: &'a PgStore,
    conn: Option<Conn>,
    /// The version of each device read in this transaction (`None`: absent).
    observed: HashMap<DeviceId, Option<i64>>,
    records: HashMap<DeviceId, DeviceRecord>,
    windows: HashMap<DeviceId, ReplayWindow>,
    ledger: Vec<(DeviceId, LedgerEntry)>,
    messages: Vec<StoredMessage>,
}

impl core::fmt::Debug for PgTxn<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PgTxn").finish_non_exhaustive()
    }
}

impl PgTxn<'_> {
    fn conn(&mut self) -> Result<&mut Conn, StoreError> {
        self.conn.as_mut().ok_or(StoreError::Backend("transaction already ended".into()))
    }

    /// Makes sure the version of `device` is known before a write: read
    /// (and lock) it now if this transaction has not read it.
    fn observe(&mut self, device: &DeviceId) -> Result<(), StoreError> {
        if self.observed.contains_key(device) {
            return Ok(());
        }
        let rows =
            self.conn()?.query("SELECT version FROM devices WHERE device = $1 FOR UPDATE", &[&device.0.as_slice()])?;
        let v = rows.first().map(|r| r.get::<_, i64>(0));
        self.observed.insert(*device, v);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        let records = core::mem::take(&mut self.records);
        let windows = core::mem::take(&mut self.windows);
        let ledger = core::mem::take(&mut self.ledger);
        let messages = core::mem::take(&mut self.messages);
        // Fenced device writes: every device whose record or window is written.
        let touched: HashSet<DeviceId> = records.keys().chain(windows.keys()).copied().collect();
        let (mut ins_dev, mut ins_rec) = (Vec::new(), Vec::new());
        let (mut upd_dev, mut upd_ver, mut upd_rec) = (Vec::new(), Vec::new(), Vec::new());
        for d in &touched {
            let rec = records.get(d).map(encode).transpose()?;
            match (self.observed.get(d).copied().flatten(), rec) {
                (Some(v), rec) => {
                    upd_dev.push(d.0.to_vec());
                    upd_ver.push(v);
                    upd_rec.push(rec);
                }
                (None, Some(rec)) => {
                    ins_dev.push(d.0.to_vec());
                    ins_rec.push(rec);
                }
                // A window for a device that has no record: nothing to fence.
                (None, None) => {}
            }
        }
        let c = self.conn()?;
        if !ins_dev.is_empty() {
            let n = c.execute(
                "INSERT INTO devices (device, record, version) SELECT d, r, 1 FROM unnest($1::bytea[], $2::bytea[]) AS u(d, r)
                 ON CONFLICT (device) DO NOTHING",
                &[&ins_dev, &ins_rec],
            )?;
            if n != u64::try_from(ins_dev.len()).unwrap_or(u64::MAX) {
                return Err(StoreError::Conflict);
            }
        }
        if !upd_dev.is_empty() {
            let n = c.execute(
                "UPDATE devices SET version = devices.version + 1, record = coalesce(u.r, devices.record)
                 FROM unnest($1::bytea[], $2::bigint[], $3::bytea[]) AS u(d, v, r)
                 WHERE devices.device = u.d AND devices.version = u.v",
                &[&upd_dev, &upd_ver, &upd_rec],
            )?;
            if n != u64::try_from(upd_dev.len()).unwrap_or(u64::MAX) {
                return Err(StoreError::Conflict);
            }
        }
        if !windows.is_empty() {
            let (mut dev, mut hi, mut seen) = (Vec::new(), Vec::new(), Vec::new());
            for (d, w) in &windows {
                let (h, s) = w.parts();
                dev.push(d.0.to_vec());
                hi.push(ord(h));
                seen.push(s.to_be_bytes().to_vec());
            }
            c.execute(
                "INSERT INTO replay_windows (device, highest, seen) SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::bytea[])
                 ON CONFLICT (device) DO UPDATE SET highest = excluded.highest, seen = excluded.seen",
                &[&dev, &hi, &seen],
            )?;
        }
        if !ledger.is_empty() {
            let mut dev = Vec::with_capacity(ledger.len());
            let mut seq = Vec::with_capacity(ledger.len());
            let mut event = Vec::with_capacity(ledger.len());
            let mut at = Vec::with_capacity(ledger.len());
            let mut version = Vec::with_capacity(ledger.len());
            let mut header: Vec<&[u8]> = Vec::with_capacity(ledger.len());
            let mut body: Vec<&[u8]> = Vec::with_capacity(ledger.len());
            let mut sig: Vec<&[u8]> = Vec::with_capacity(ledger.len());
            let mut prev: Vec<&[u8]> = Vec::with_capacity(ledger.len());
            let mut hash: Vec<&[u8]> = Vec::with_capacity(ledger.len());
            for (d, e) in &ledger {
                dev.push(d.0.to_vec());
                seq.push(time(e.seq)?);
                event.push(i16::from(e.event.code()));
                at.push(time(e.at)?);
                version.push(i64::from(e.version));
                header.push(&e.proof.header);
                body.push(&e.proof.body);
                sig.push(&e.proof.signature.0);
                prev.push(&e.prev_hash);
                hash.push(&e.hash);
            }
            c.execute(
                "INSERT INTO consent_ledger (device, seq, event, at, version, header, body, signature, prev_hash, hash)
                 SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::smallint[], $4::bigint[], $5::bigint[],
                                      $6::bytea[], $7::bytea[], $8::bytea[], $9::bytea[], $10::bytea[])",
                &[&dev, &seq, &event, &at, &version, &header, &body, &sig, &prev, &hash],
            )?;
        }
        if !messages.is_empty() {
            let mut dev = Vec::with_capacity(messages.len());
            let mut counter = Vec::with_capacity(messages.len());
            let mut kind = Vec::with_capacity(messages.len());
            let mut at = Vec::with_capacity(messages.len());
            let mut rel = Vec::with_capacity(messages.len());
            let mut purpose = Vec::with_capacity(messages.len());
            let mut header: Vec<&[u8]> = Vec::with_capacity(messages.len());
            let mut body: Vec<&[u8]> = Vec::with_capacity(messages.len());
            let mut sig: Vec<&[u8]> = Vec::with_capacity(messages.len());
            for m in &messages {
                dev.push(m.device.0.to_vec());
                counter.push(ord(m.counter));
                kind.push(i16::from(m.kind));
                at.push(time(m.received_at)?);
                rel.push(i64::from(m.relationship));
                purpose.push(i32::from(m.purpose.id()));
                header.push(&m.proof.header);
                body.push(&m.proof.body);
                sig.push(&m.proof.signature.0);
            }
            c.execute(
                "INSERT INTO messages (device, counter, kind, received_at, relationship, purpose, header, body, signature)
                 SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::smallint[], $4::bigint[], $5::bigint[], $6::integer[],
                                      $7::bytea[], $8::bytea[], $9::bytea[])",
                &[&dev, &counter, &kind, &at, &rel, &purpose, &header, &body, &sig],
            )?;
        }
        Ok(())
    }
}

impl Drop for PgTxn<'_> {
    fn drop(&mut self) {
        if let Some(mut c) = self.conn.take() {
            // A connection whose rollback fails is not reused.
            if c.client.batch_execute("ROLLBACK").is_ok() {
                self.store.give(c);
            }
        }
    }
}

impl DeviceRegistry for PgTxn<'_> {
    fn device(&mut self, device: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        if let Some(r) = self.records.get(device) {
            return Ok(Some(r.clone()));
        }
        let rows =
            self.conn()?.query("SELECT record, version FROM devices WHERE device = $1", &[&device.0.as_slice()])?;
        let Some(row) = rows.first() else {
            self.observed.entry(*device).or_insert(None);
            return Ok(None);
        };
        let rec: DeviceRecord = decode(row.get::<_, &[u8]>(0), "devices")?;
        self.observed.entry(*device).or_insert(Some(row.get(1)));
        Ok(Some(rec))
    }
    fn put_device(&mut self, record: &DeviceRecord) -> Result<(), StoreError> {
        self.observe(&record.device)?;
        self.records.insert(record.device, record.clone());
        Ok(())
    }
}

impl ReplayWindows for PgTxn<'_> {
    fn window(&mut self, device: &DeviceId) -> Result<ReplayWindow, StoreError> {
        if let Some(w) = self.windows.get(device) {
            return Ok(*w);
        }
        let rows = self
            .conn()?
            .query("SELECT highest, seen FROM replay_windows WHERE device = $1", &[&device.0.as_slice()])?;
        let Some(row) = rows.first() else { return Ok(ReplayWindow::new()) };
        let seen: [u8; 16] = row.get::<_, &[u8]>(1).try_into().map_err(|_| StoreError::Corrupt("replay_windows"))?;
        Ok(ReplayWindow::from_parts(unord(row.get(0)), u128::from_be_bytes(seen)))
    }
    fn put_window(&mut self, device: &DeviceId, window: &ReplayWindow) -> Result<(), StoreError> {
        self.observe(device)?;
        self.windows.insert(*device, *window);
        Ok(())
    }
}

impl ConsentLedgerStore for PgTxn<'_> {
    fn append_consent(&mut self, device: &DeviceId, entry: &LedgerEntry) -> Result<(), StoreError> {
        self.ledger.push((*device, entry.clone()));
        Ok(())
    }
    fn consent_entries(&mut self, device: &DeviceId) -> Result<Vec<LedgerEntry>, StoreError> {
        let rows = self.conn()?.query(SELECT_LEDGER, &[&device.0.as_slice()])?;
        let mut out = rows.iter().map(ledger_row).collect::<Result<Vec<_>, _>>()?;
        out.extend(self.ledger.iter().filter(|(d, _)| d == device).map(|(_, e)| e.clone()));
        Ok(out)
    }
}

impl MessageLog for PgTxn<'_> {
    fn put_message(&mut self, message: &StoredMessage) -> Result<(), StoreError> {
        self.messages.push(message.clone());
        Ok(())
    }
    fn message(&mut self, device: &DeviceId, counter: u64) -> Result<Option<StoredMessage>, StoreError> {
        if let Some(m) = self.messages.iter().rev().find(|m| m.device == *device && m.counter == counter) {
            return Ok(Some(m.clone()));
        }
        let rows = self.conn()?.query(
            "SELECT device, counter, kind, received_at, relationship, purpose, header, body, signature
             FROM messages WHERE device = $1 AND counter = $2",
            &[&device.0.as_slice(), &ord(counter)],
        )?;
        rows.first().map(message_row).transpose()
    }
}

impl VendorCounters for PgTxn<'_> {
    fn next_counter(&mut self, device: &DeviceId) -> Result<u64, StoreError> {
        // The row lock makes the value unique across workers; it is spent
        // only if the transaction commits.
        let rows = self.conn()?.query(
            "INSERT INTO vendor_counters (device, next) VALUES ($1, 1)
             ON CONFLICT (device) DO UPDATE SET next = vendor_counters.next + 1 RETURNING next - 1",
            &[&device.0.as_slice()],
        )?;
        let v: i64 = rows.first().map(|r| r.get(0)).ok_or(StoreError::Corrupt("vendor_counters"))?;
        if v == i64::MAX {
            return Err(StoreError::Corrupt("vendor counter exhausted"));
        }
        u64::try_from(v).map_err(|_| StoreError::Corrupt("vendor_counters"))
    }
}

impl NoticeLog for PgTxn<'_> {
    fn record_notice(&mut self, n: &NoticeRecord) -> Result<(), StoreError> {
        self.conn()?.execute(
            "INSERT INTO notices (device, relationship, purpose, at, counter, held_back, notice)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &n.device.0.as_slice(),
                &i64::from(n.relationship),
                &i32::from(n.purpose.id()),
                &time(n.at)?,
                &n.counter.map(ord),
                &n.held_back,
                &n.notice,
            ],
        )?;
        Ok(())
    }
    fn notices_since(&mut self, device: &DeviceId, purpose: Purpose, since: u64) -> Result<u32, StoreError> {
        let since = i64::try_from(since).unwrap_or(i64::MAX);
        let rows = self.conn()?.query(
            "SELECT count(*) FROM notices WHERE device = $1 AND purpose = $2 AND at >= $3 AND counter IS NOT NULL",
            &[&device.0.as_slice(), &i32::from(purpose.id()), &since],
        )?;
        let n: i64 = rows.first().map(|r| r.get(0)).unwrap_or(0);
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }
}

fn purpose_sql(f: &PurposeFilter) -> (bool, Vec<i32>) {
    match f {
        PurposeFilter::Only(v) => (true, v.iter().map(|p| i32::from(p.id())).collect()),
        PurposeFilter::Except(v) => (false, v.iter().map(|p| i32::from(p.id())).collect()),
    }
}

impl DataErasure for PgTxn<'_> {
    fn erase_messages(&mut self, device: &DeviceId, scope: &ErasureScope) -> Result<Vec<(Purpose, u64)>, StoreError> {
        let mut counts = Vec::new();
        self.messages.retain(|m| {
            let gone = m.device == *device && scope.covers_message(m);
            if gone {
                tally(&mut counts, m.purpose, 1);
            }
            !gone
        });
        let (only, list) = purpose_sql(&scope.purposes);
        let before = i64::try_from(scope.before).unwrap_or(i64::MAX);
        let rows = self.conn()?.query(
            "WITH gone AS (
                DELETE FROM messages WHERE device = $1 AND relationship BETWEEN $2 AND $3 AND received_at < $4
                  AND (purpose = ANY($6)) = $5
                RETURNING purpose)
             SELECT purpose, count(*) FROM gone GROUP BY purpose",
            &[
                &device.0.as_slice(),
                &i64::from(*scope.relationships.start()),
                &i64::from(*scope.relationships.end()),
                &before,
                &only,
                &list,
            ],
        )?;
        for r in &rows {
            let n = u64::try_from(r.get::<_, i64>(1)).unwrap_or(0);
            tally(&mut counts, purpose_of(r.get(0), "messages")?, n);
        }
        Ok(counts)
    }
    fn erase_notices(&mut self, device: &DeviceId, scope: &ErasureScope) -> Result<u64, StoreError> {
        let (only, list) = purpose_sql(&scope.purposes);
        let before = i64::try_from(scope.before).unwrap_or(i64::MAX);
        self.conn()?.execute(
            "DELETE FROM notices WHERE device = $1 AND relationship BETWEEN $2 AND $3 AND at < $4
               AND (purpose = ANY($6)) = $5",
            &[
                &device.0.as_slice(),
                &i64::from(*scope.relationships.start()),
                &i64::from(*scope.relationships.end()),
                &before,
                &only,
                &list,
            ],
        )
    }
}

impl Transaction for PgTxn<'_> {
    /// One query for the whole batch's devices (a left join of `devices`
    /// and `replay_windows` on the ids), remembering each version read.
    fn load_devices(&mut self, devices: &[DeviceId]) -> Result<Vec<(Option<DeviceRecord>, ReplayWindow)>, StoreError> {
        let ids: Vec<&[u8]> = devices.iter().map(|d| d.0.as_slice()).collect();
        let rows = self.conn()?.query(
            "SELECT dv.record, dv.version, w.highest, w.seen
             FROM unnest($1::bytea[]) WITH ORDINALITY AS u(d, i)
             LEFT JOIN devices dv ON dv.device = u.d
             LEFT JOIN replay_windows w ON w.device = u.d
             ORDER BY u.i",
            &[&ids],
        )?;
        if rows.len() != devices.len() {
            return Err(StoreError::Corrupt("devices"));
        }
        let mut out = Vec::with_capacity(devices.len());
        for (d, r) in devices.iter().zip(&rows) {
            let stored: Option<DeviceRecord> =
                r.get::<_, Option<&[u8]>>(0).map(|b| decode(b, "devices")).transpose()?;
            self.observed.entry(*d).or_insert(r.get::<_, Option<i64>>(1));
            let window = match (r.get::<_, Option<i64>>(2), r.get::<_, Option<&[u8]>>(3)) {
                (Some(h), Some(seen)) => {
                    let seen: [u8; 16] = seen.try_into().map_err(|_| StoreError::Corrupt("replay_windows"))?;
                    ReplayWindow::from_parts(unord(h), u128::from_be_bytes(seen))
                }
                _ => ReplayWindow::new(),
            };
            // This transaction's own writes win over what is stored.
            let record = self.records.get(d).cloned().or(stored);
            out.push((record, self.windows.get(d).copied().unwrap_or(window)));
        }
        Ok(out)
    }

    fn commit(mut self) -> Result<(), StoreError> {
        self.flush()?;
        let mut c = self.conn.take().ok_or(StoreError::Backend("transaction already ended".into()))?;
        match c.client.batch_execute("COMMIT") {
            Ok(()) => {
                self.store.give(c);
                Ok(())
            }
            Err(e) => Err(db(e)),
        }
    }
}

impl Store for PgStore {
    type Txn<'a> = PgTxn<'a>;

    fn begin(&self) -> Result<PgTxn<'_>, StoreError> {
        let mut conn = self.take()?;
        conn.client.batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED").map_err(db)?;
        Ok(PgTxn {
            store: self,
            conn: Some(conn),
            observed: HashMap::new(),
            records: HashMap::new(),
            windows: HashMap::new(),
            ledger: Vec::new(),
            messages: Vec::new(),
        })
    }

    fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        self.with(|c| {
            c.query("SELECT record FROM devices ORDER BY device", &[])?
                .iter()
                .map(|r| decode(r.get::<_, &[u8]>(0), "devices"))
                .collect()
        })
    }

    fn message_count(&self) -> Result<u64, StoreError> {
        self.with(|c| {
            let rows = c.query("SELECT count(*) FROM messages", &[])?;
            let n: i64 = rows.first().map(|r| r.get(0)).unwrap_or(0);
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    fn device(&self, device: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        self.with(|c| {
            let rows = c.query("SELECT record FROM devices WHERE device = $1", &[&device.0.as_slice()])?;
            rows.first().map(|r| decode(r.get::<_, &[u8]>(0), "devices")).transpose()
        })
    }

    fn messages(&self, device: &DeviceId, query: &MessageQuery) -> Result<Vec<StoredMessage>, StoreError> {
        let from = i64::try_from(query.from).unwrap_or(i64::MAX);
        // No upper bound when `until` is past what a bigint holds.
        let until = i64::try_from(query.until).ok();
        let kind = query.kind.map(|k| i16::from(k.to_byte()));
        let rel = query.relationship.map(i64::from);
        self.with(|c| {
            c.query(SELECT_MESSAGES, &[&device.0.as_slice(), &from, &until, &kind, &rel])?
                .iter()
                .map(message_row)
                .collect()
        })
    }

    fn consent_ledger(&self, device: &DeviceId) -> Result<Vec<LedgerEntry>, StoreError> {
        self.with(|c| c.query(SELECT_LEDGER, &[&device.0.as_slice()])?.iter().map(ledger_row).collect())
    }

    fn notices(&self, device: &DeviceId) -> Result<Vec<NoticeRecord>, StoreError> {
        self.with(|c| {
            c.query(
                "SELECT device, relationship, purpose, at, counter, held_back, notice FROM notices
                 WHERE device = $1 ORDER BY at, id",
                &[&device.0.as_slice()],
            )?
            .iter()
            .map(notice_row)
            .collect()
        })
    }

    /// `VACUUM (FULL)` of the tables erasures delete from (messages,
    /// notices): the tables are rewritten with their live rows only, so the
    /// deleted rows' bytes leave the table files (a plain `VACUUM` only marks
    /// their space free). It takes an exclusive lock on each table while it
    /// runs; ingest waits meanwhile. Copies in the write-ahead log and in
    /// backups age out with them (docs/scaling.md).
    fn scrub(&self) -> Result<(), StoreError> {
        self.with(|c| c.client.batch_execute("VACUUM (FULL) messages, notices").map_err(db))
    }
}
