//! The owner's data, vendor side: export everything held about a device
//! and relationship, erase what consent no longer covers, keep nothing past
//! its retention period (SPEC §9.8).
//!
//! - **Export** ([`export`], [`Ingestor::export`]): the consent ledger of
//!   the relationship with its hash chain and proofs, every stored message
//!   decoded, and the notices sent and held back, as a [`DeviceExport`]
//!   that serialises to JSON ([`DeviceExport::to_json`]).
//! - **Erasure** ([`erase`], [`Ingestor::forget`],
//!   [`Ingestor::enforce_retention`], [`Ingestor::apply_retention`]):
//!   messages and notice records are deleted, and each erasure is recorded
//!   in the device's hash-chained consent ledger as an
//!   [`ConsentEvent::Erased`] entry naming what was deleted (counts per
//!   purpose), why and up to when, never the content. [`Store::scrub`] then
//!   removes the bytes from the backing file or tables.
//! - **Retention** ([`RetentionPolicy`]): how long each purpose's data is
//!   kept at most, what happens on withdrawal and on a change of owner.
//!   The pipeline applies the withdrawal and owner-change rules right after
//!   the batch that carried the consent change commits;
//!   [`Ingestor::apply_retention`] applies every rule to every device (run
//!   it daily) and catches up anything a crash interrupted.
//!
//! What is kept regardless: the device record (certificate, keys, replay
//! window, the consent in force: the protocol cannot run without them) and
//! the consent ledger (the proof of what the owner agreed to and of every
//! erasure, which the vendor must be able to show) for as long as the device
//! is known to the vendor.
//!
//! ```
//! use spime::vendor::{IngestConfig, Ingestor, MemoryStore, lifecycle::RetentionPolicy};
//! use spime::seal::VendorKeys;
//! use spime::wire::DeviceId;
//! let vendor = Ingestor::new(MemoryStore::new(), VendorKeys::from_secrets(&[1; 32], [2; 32]), IngestConfig::default());
//! assert_eq!(vendor.retention(), &RetentionPolicy::default());
//! // Nothing held about an unknown device.
//! assert!(vendor.export(&DeviceId([5; 8]), 1, 0).is_err());
//! let report = vendor.apply_retention(1_000_000)?;
//! assert_eq!(report.messages, 0);
//! # Ok::<(), spime::vendor::lifecycle::LifecycleError>(())
//! ```

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde::Serialize;

use crate::codec;
use crate::consent::ledger::{ConsentEvent, ConsentLedger, Erasure, ErasureReason, LedgerEntry, LedgerError};
use crate::consent::{ConsentState, Purpose};
use crate::message::{ConsentUpdate, Decommission, Fault, FirmwareVersion, Notice, Register, Transfer, Usage};
use crate::wire::{DeviceId, Kind};

use super::store::{
    DeviceRecord, DeviceRegistry, ErasureScope, Lifecycle, MessageQuery, PurposeFilter, Store, StoredMessage,
    Transaction,
};
use super::{Ingestor, StoreError};

const DAY: u64 = 86_400;

/// How long the vendor keeps what it collects (SPEC §9.8). Ages are in
/// seconds since the vendor received the message or sent the notice.
///
/// Defaults, and why:
///
/// | data | kept | why |
/// |---|---|---|
/// | Essential messages (device health, Register, Consent, Transfer, Decommission) | 2 years | warranty claims and product-safety follow-up |
/// | messages of any other purpose | while consent for the purpose lasts, at most 395 days | the longest a consent state may go unconfirmed (`MAX_RECONFIRM`) |
/// | notice records (sent and held back) | 395 days | frequency caps and the owner's export need them; no cap period is longer |
/// | a previous owner's non-Essential data | erased when the product changes owner | it was collected for a relationship that ended |
/// | the device record and consent ledger | while the device is known | the protocol needs the record; the ledger proves consent and erasures |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// The longest Essential messages are kept.
    pub essential: u64,
    /// The longest messages of other purposes are kept (while consented).
    pub default: u64,
    /// Overrides of `default` by purpose (shorter or longer).
    pub per_purpose: Vec<(Purpose, u64)>,
    /// The longest notice records are kept.
    pub notices: u64,
    /// After a change of owner, keep the previous owner's Essential
    /// messages (until `essential` runs out) rather than erase them with the rest.
    pub keep_essential_after_owner_change: bool,
}

impl Default for RetentionPolicy {
    fn default() -> RetentionPolicy {
        RetentionPolicy {
            essential: 2 * 365 * DAY,
            default: crate::consent::MAX_RECONFIRM,
            per_purpose: Vec::new(),
            notices: crate::consent::MAX_RECONFIRM,
            keep_essential_after_owner_change: true,
        }
    }
}

impl RetentionPolicy {
    /// How long messages of `purpose` are kept at most.
    pub fn max_age(&self, purpose: Purpose) -> u64 {
        if purpose == Purpose::ESSENTIAL {
            return self.essential;
        }
        self.per_purpose.iter().find(|(p, _)| *p == purpose).map_or(self.default, |(_, a)| *a)
    }
}

/// An export or erasure failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LifecycleError {
    /// The store failed; nothing was erased.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// The vendor holds nothing about the device.
    #[error("device is not registered")]
    UnknownDevice,
    /// The relationship number is 0 or has not begun.
    #[error("relationship {asked} does not exist (current {current})")]
    UnknownRelationship {
        /// the relationship asked for
        asked: u32,
        /// the device's current relationship
        current: u32,
    },
    /// The stored ledger does not verify or an entry cannot be made.
    #[error("consent ledger: {0}")]
    Ledger(#[from] LedgerError),
    /// The export could not be rendered as JSON.
    #[error("json: {0}")]
    Json(String),
}

/// What one call erased from one device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Devices looked at.
    pub devices: u64,
    /// Erasures recorded (ledger entries appended).
    pub erasures: u64,
    /// Messages deleted.
    pub messages: u64,
    /// Notice records deleted.
    pub notices: u64,
}

/// Erases the messages and notice records of `device` that `scope`
/// covers, and records it in the device's consent ledger as an Erased entry
/// with `reason`, at `now`, in one transaction. Returns the statement
/// recorded, or `None` when nothing was covered (no entry is appended then).
/// The bytes leave the backing storage at the next [`Store::scrub`]: a
/// caller erasing for many devices scrubs once at the end.
///
/// # Errors
/// [`LifecycleError::UnknownDevice`], or a store failure (then nothing was
/// erased).
pub fn erase<S: Store>(
    store: &S,
    device: &DeviceId,
    scope: &ErasureScope,
    reason: ErasureReason,
    now: u64,
) -> Result<Option<Erasure>, LifecycleError> {
    let mut tx = store.begin()?;
    let Some(mut rec) = tx.device(device)? else { return Err(LifecycleError::UnknownDevice) };
    let out = erase_in(&mut tx, &mut rec, scope, reason, (true, true), now)?;
    if out.is_some() {
        tx.put_device(&rec)?;
        tx.commit()?;
    }
    Ok(out)
}

fn erase_in<T: Transaction>(
    tx: &mut T,
    rec: &mut DeviceRecord,
    scope: &ErasureScope,
    reason: ErasureReason,
    (messages, notices): (bool, bool),
    now: u64,
) -> Result<Option<Erasure>, LifecycleError> {
    let erased = if messages { tx.erase_messages(&rec.device, scope)? } else { Vec::new() };
    let notice_count = if notices { tx.erase_notices(&rec.device, scope)? } else { 0 };
    if erased.is_empty() && notice_count == 0 {
        return Ok(None);
    }
    let statement = Erasure {
        reason,
        relationships: (*scope.relationships.start(), *scope.relationships.end()),
        before: scope.before,
        messages: erased,
        notices: notice_count,
    };
    let proof = statement.to_proof().map_err(LedgerError::from)?;
    let (seq, prev_hash) = rec.ledger_next;
    let mut entry = LedgerEntry {
        seq,
        event: ConsentEvent::Erased,
        at: now,
        version: rec.consent.state.version,
        proof,
        prev_hash,
        hash: [0; 32],
    };
    entry.hash = entry.compute_hash();
    tx.append_consent(&rec.device, &entry)?;
    rec.ledger_next = (seq.saturating_add(1), entry.hash);
    Ok(Some(statement))
}

/// The retention rules for one device at `now`, in one transaction: a
/// previous owner's data (on a change of owner), data of purposes the held
/// consent no longer grants (withdrawn or expired grants), and data older
/// than its purpose's retention period. Returns the erasures recorded.
///
/// # Errors
/// [`LifecycleError::UnknownDevice`], or a store failure (then nothing was erased).
pub fn enforce_retention<S: Store>(
    store: &S,
    policy: &RetentionPolicy,
    device: &DeviceId,
    now: u64,
) -> Result<Vec<Erasure>, LifecycleError> {
    let mut tx = store.begin()?;
    let Some(mut rec) = tx.device(device)? else { return Err(LifecycleError::UnknownDevice) };
    let mut done = Vec::new();
    let current = rec.relationship;
    // A previous owner's data.
    let last_ended = if rec.lifecycle == Lifecycle::Transferred { Some(current) } else { current.checked_sub(1) };
    if let Some(last) = last_ended.filter(|&l| l >= 1) {
        let keep = if policy.keep_essential_after_owner_change { alloc::vec![Purpose::ESSENTIAL] } else { Vec::new() };
        let scope = ErasureScope { relationships: 1..=last, purposes: PurposeFilter::Except(keep), before: u64::MAX };
        done.extend(erase_in(&mut tx, &mut rec, &scope, ErasureReason::OwnerChanged, (true, false), now)?);
        let scope =
            ErasureScope { relationships: 1..=last, purposes: PurposeFilter::Except(Vec::new()), before: u64::MAX };
        done.extend(erase_in(&mut tx, &mut rec, &scope, ErasureReason::OwnerChanged, (false, true), now)?);
    }
    // Purposes the held consent no longer grants, in the current relationship.
    if rec.lifecycle == Lifecycle::Active {
        let mut granted: Vec<Purpose> = rec
            .consent
            .state
            .grants
            .iter()
            .filter(|g| g.expires_at.is_none_or(|t| now < t))
            .map(|g| g.purpose)
            .collect();
        granted.push(Purpose::ESSENTIAL);
        let mut contact: Vec<Purpose> = rec.consent.state.contact.grants.iter().map(|g| g.purpose).collect();
        contact.push(Purpose::ESSENTIAL);
        let scope = ErasureScope {
            relationships: current..=current,
            purposes: PurposeFilter::Except(granted),
            before: u64::MAX,
        };
        done.extend(erase_in(&mut tx, &mut rec, &scope, ErasureReason::Withdrawn, (true, false), now)?);
        let scope = ErasureScope {
            relationships: current..=current,
            purposes: PurposeFilter::Except(contact),
            before: u64::MAX,
        };
        done.extend(erase_in(&mut tx, &mut rec, &scope, ErasureReason::Withdrawn, (false, true), now)?);
    }
    // Retention periods.
    let all = 1..=current;
    let mut listed: Vec<Purpose> = policy.per_purpose.iter().map(|(p, _)| *p).collect();
    listed.push(Purpose::ESSENTIAL);
    let mut rules: Vec<(PurposeFilter, u64)> = alloc::vec![
        (PurposeFilter::Only(alloc::vec![Purpose::ESSENTIAL]), policy.essential),
        (PurposeFilter::Except(listed), policy.default),
    ];
    rules.extend(policy.per_purpose.iter().map(|(p, a)| (PurposeFilter::Only(alloc::vec![*p]), *a)));
    for (purposes, age) in rules {
        let scope = ErasureScope { relationships: all.clone(), purposes, before: now.saturating_sub(age) };
        done.extend(erase_in(&mut tx, &mut rec, &scope, ErasureReason::RetentionEnded, (true, false), now)?);
    }
    let scope = ErasureScope {
        relationships: all,
        purposes: PurposeFilter::Except(Vec::new()),
        before: now.saturating_sub(policy.notices),
    };
    done.extend(erase_in(&mut tx, &mut rec, &scope, ErasureReason::RetentionEnded, (false, true), now)?);
    if !done.is_empty() {
        tx.put_device(&rec)?;
        tx.commit()?;
    }
    Ok(done)
}

/// Everything the vendor holds about one device for one owner
/// relationship, for that owner. Serialises to JSON with
/// [`DeviceExport::to_json`]; byte strings are lower-case hex.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceExport {
    /// The device id (hex).
    pub device: String,
    /// The relationship exported.
    pub relationship: u32,
    /// Whether it is the device's current relationship (then the record
    /// fields below are filled).
    pub current: bool,
    /// When the export was made (Unix seconds).
    pub exported_at: u64,
    /// The product model.
    pub model: String,
    /// Where the device is in its life (current relationship only).
    pub lifecycle: Option<Lifecycle>,
    /// The firmware it last registered with (current relationship only).
    pub firmware: Option<FirmwareVersion>,
    /// When the current relationship started (current relationship only).
    pub registered_at: Option<u64>,
    /// The consent state the vendor holds (current relationship only).
    pub consent_held: Option<ConsentState>,
    /// The consent ledger entries of this relationship.
    pub ledger: ExportedLedger,
    /// The stored messages of this relationship, decoded, in counter order.
    pub messages: Vec<ExportedMessage>,
    /// The notices sent and held back in this relationship.
    pub notices: Vec<ExportedNotice>,
    /// What the vendor keeps, for how long and why.
    pub retention: Vec<RetentionRule>,
}

/// The ledger part of an export.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportedLedger {
    /// Whether the device's whole ledger chain verifies (positions, links,
    /// hashes, version order: SPEC §6.8).
    pub chain_verified: bool,
    /// Whether every proof verifies with the device's key.
    pub proofs_verified: bool,
    /// The head hash of the whole ledger (hex).
    pub head: String,
    /// This relationship's entries; each links to the one before it in the
    /// whole ledger by `prev_hash`.
    pub entries: Vec<ExportedEntry>,
}

/// One ledger entry in an export.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportedEntry {
    /// Position in the ledger.
    pub seq: u64,
    /// The event's name.
    pub event: &'static str,
    /// The event's code in the hash chain.
    pub code: u8,
    /// When the vendor recorded it.
    pub at: u64,
    /// The consent version in effect after it.
    pub version: u32,
    /// The previous entry's hash (hex).
    pub prev_hash: String,
    /// This entry's hash (hex).
    pub hash: String,
    /// The kind of the proof: a device message kind, or "vendor erasure statement".
    pub proof_kind: String,
    /// The proof's header bytes (hex).
    pub proof_header: String,
    /// The proof's body bytes (hex).
    pub proof_body: String,
    /// The proof's signature (hex).
    pub proof_signature: String,
    /// The consent state the entry puts in effect (state events).
    pub consent: Option<ConsentState>,
    /// What was erased (Erased entries).
    pub erasure: Option<Erasure>,
}

/// One stored message in an export.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportedMessage {
    /// The device's counter.
    pub counter: u64,
    /// The kind's name.
    pub kind: &'static str,
    /// When the vendor received it.
    pub received_at: u64,
    /// The purpose it was collected for.
    pub purpose: Purpose,
    /// The decoded body.
    pub body: serde_json::Value,
    /// The device's signature (hex).
    pub signature: String,
}

/// One notice record in an export.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportedNotice {
    /// When it was sent or held back.
    pub at: u64,
    /// Its purpose.
    pub purpose: Purpose,
    /// Whether it was sent.
    pub sent: bool,
    /// Why it was held back.
    pub held_back: Option<String>,
    /// The notice.
    pub notice: Option<Notice>,
}

/// One line of the retention statement in an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetentionRule {
    /// What.
    pub data: String,
    /// For how long (seconds; `None` while the device is known).
    pub kept_for_seconds: Option<u64>,
    /// Why.
    pub why: &'static str,
}

impl DeviceExport {
    /// The export as pretty-printed JSON.
    ///
    /// # Errors
    /// [`LifecycleError::Json`] if serialisation fails.
    pub fn to_json(&self) -> Result<String, LifecycleError> {
        serde_json::to_string_pretty(self).map_err(|e| LifecycleError::Json(e.to_string()))
    }
}

fn hex(bytes: &[u8]) -> String {
    use core::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The relationship each ledger entry belongs to: a state event after a
/// ResetOnTransfer begins the next one; an Erased entry belongs to the
/// relationships its statement covers (every one, here: `None`).
fn entry_relationships(entries: &[LedgerEntry]) -> Vec<Option<(u32, u32)>> {
    let mut rel: u32 = 1;
    let mut after_reset = false;
    entries
        .iter()
        .map(|e| match e.event {
            ConsentEvent::Erased => Erasure::from_proof(&e.proof).ok().map(|s| s.relationships),
            ConsentEvent::ResetOnTransfer => {
                after_reset = true;
                Some((rel, rel))
            }
            ConsentEvent::Expired => Some((rel, rel)),
            _ => {
                if after_reset {
                    rel = rel.saturating_add(1);
                    after_reset = false;
                }
                Some((rel, rel))
            }
        })
        .collect()
}

fn decode_body(m: &StoredMessage) -> serde_json::Value {
    fn v<T: Serialize>(r: Result<T, crate::error::DecodeError>) -> serde_json::Value {
        match r {
            Ok(t) => serde_json::to_value(t).unwrap_or(serde_json::Value::Null),
            Err(e) => serde_json::Value::String(alloc::format!("does not decode: {e}")),
        }
    }
    match Kind::from_byte(m.kind) {
        Ok(Kind::REGISTER) => v(codec::decode::<Register>(&m.proof.body)),
        Ok(Kind::USAGE) => v(codec::decode::<Usage>(&m.proof.body)),
        Ok(Kind::FAULT) => v(codec::decode::<Fault>(&m.proof.body)),
        Ok(Kind::CONSENT) => v(codec::decode::<ConsentUpdate>(&m.proof.body)),
        Ok(Kind::TRANSFER) => v(codec::decode::<Transfer>(&m.proof.body)),
        Ok(Kind::DECOMMISSION) => v(codec::decode::<Decommission>(&m.proof.body)),
        _ => serde_json::Value::String(hex(&m.proof.body)),
    }
}

fn retention_rules(policy: &RetentionPolicy) -> Vec<RetentionRule> {
    let mut out = alloc::vec![
        RetentionRule {
            data: "the device record: certificate, session keys, replay window, consent in force".into(),
            kept_for_seconds: None,
            why: "the protocol needs it to accept and send messages",
        },
        RetentionRule {
            data: "the consent ledger, with the messages that prove each consent event and a statement of each erasure"
                .into(),
            kept_for_seconds: None,
            why: "proof of what the owner agreed to, and of what was erased",
        },
        RetentionRule {
            data: "Essential messages (device health, registration, consent, transfer, decommission)".into(),
            kept_for_seconds: Some(policy.essential),
            why: "warranty claims and product-safety follow-up",
        },
        RetentionRule {
            data: "messages of other purposes, while consent for the purpose lasts; erased when it is withdrawn".into(),
            kept_for_seconds: Some(policy.default),
            why: "the purpose they were collected for",
        },
        RetentionRule {
            data: "notices sent and held back".into(),
            kept_for_seconds: Some(policy.notices),
            why: "frequency caps, and this export",
        },
    ];
    for (p, age) in &policy.per_purpose {
        out.push(RetentionRule {
            data: alloc::format!("messages for {p}"),
            kept_for_seconds: Some(*age),
            why: "the vendor's policy for this purpose",
        });
    }
    out
}

/// Everything `store` holds about `device` in owner relationship
/// `relationship`, read without a write transaction.
///
/// # Errors
/// [`LifecycleError::UnknownDevice`], [`LifecycleError::UnknownRelationship`],
/// or a store failure.
pub fn export<S: Store>(
    store: &S,
    policy: &RetentionPolicy,
    device: &DeviceId,
    relationship: u32,
    now: u64,
) -> Result<DeviceExport, LifecycleError> {
    let rec = store.device(device)?.ok_or(LifecycleError::UnknownDevice)?;
    if relationship == 0 || relationship > rec.relationship {
        return Err(LifecycleError::UnknownRelationship { asked: relationship, current: rec.relationship });
    }
    let current = relationship == rec.relationship;
    let entries = store.consent_ledger(device)?;
    let ledger = ConsentLedger::from_entries(*device, entries.clone());
    let chain_verified = ledger.is_ok();
    let proofs_verified = match (&ledger, ed25519_dalek::VerifyingKey::from_bytes(&rec.certificate.body.device_key)) {
        (Ok(l), Ok(k)) => l.verify_proofs(&k).is_ok(),
        _ => false,
    };
    let rels = entry_relationships(&entries);
    let exported_entries = entries
        .iter()
        .zip(rels)
        .filter(|(_, r)| r.is_some_and(|(lo, hi)| lo <= relationship && relationship <= hi))
        .map(|(e, _)| {
            let erasure = if e.event == ConsentEvent::Erased { Erasure::from_proof(&e.proof).ok() } else { None };
            let proof_kind = match e.proof.header() {
                Ok(h) => h.kind.name().to_string(),
                Err(_) if erasure.is_some() => "vendor erasure statement".to_string(),
                Err(_) => "undecodable".to_string(),
            };
            let consent = match e.event {
                ConsentEvent::Erased | ConsentEvent::ResetOnTransfer => None,
                _ => e.proof.signed_consent().ok().map(|c| c.state),
            };
            ExportedEntry {
                seq: e.seq,
                event: e.event.name(),
                code: e.event.code(),
                at: e.at,
                version: e.version,
                prev_hash: hex(&e.prev_hash),
                hash: hex(&e.hash),
                proof_kind,
                proof_header: hex(&e.proof.header),
                proof_body: hex(&e.proof.body),
                proof_signature: hex(&e.proof.signature.0),
                consent,
                erasure,
            }
        })
        .collect();
    let messages = store
        .messages(device, &MessageQuery::all().relationship(relationship))?
        .iter()
        .map(|m| ExportedMessage {
            counter: m.counter,
            kind: Kind::from_byte(m.kind).map_or("unknown", Kind::name),
            received_at: m.received_at,
            purpose: m.purpose,
            body: decode_body(m),
            signature: hex(&m.proof.signature.0),
        })
        .collect();
    let notices = store
        .notices(device)?
        .into_iter()
        .filter(|n| n.relationship == relationship)
        .map(|n| ExportedNotice {
            at: n.at,
            purpose: n.purpose,
            sent: n.sent(),
            held_back: n.held_back.clone(),
            notice: codec::decode::<Notice>(&n.notice).ok(),
        })
        .collect();
    Ok(DeviceExport {
        device: hex(&device.0),
        relationship,
        current,
        exported_at: now,
        model: rec.certificate.body.model.as_str().to_string(),
        lifecycle: current.then_some(rec.lifecycle),
        firmware: current.then_some(rec.firmware),
        registered_at: current.then_some(rec.registered_at),
        consent_held: current.then(|| rec.consent.state.clone()),
        ledger: ExportedLedger {
            chain_verified,
            proofs_verified,
            head: hex(&rec.ledger_next.1),
            entries: exported_entries,
        },
        messages,
        notices,
        retention: retention_rules(policy),
    })
}

impl<S: Store> Ingestor<S> {
    /// [`export`] with this pipeline's store and retention policy.
    ///
    /// # Errors
    /// As [`export`].
    pub fn export(&self, device: &DeviceId, relationship: u32, now: u64) -> Result<DeviceExport, LifecycleError> {
        export(self.store(), self.retention(), device, relationship, now)
    }

    /// The owner asked to be forgotten: every message and notice record of
    /// the device's current relationship is erased (the ledger records it)
    /// and the store scrubbed, so the bytes are gone when this returns. The
    /// scrub costs a rewrite of the store (redb) or of two tables
    /// (PostgreSQL): where many requests arrive, [`erase`] each and scrub
    /// once.
    /// The device record and ledger stay (see the module docs). Returns the
    /// statement recorded, `None` if nothing was held.
    ///
    /// # Errors
    /// As [`erase`], or the scrub's store failure (the data is then erased
    /// but its bytes may remain until the next scrub).
    pub fn forget(&self, device: &DeviceId, now: u64) -> Result<Option<Erasure>, LifecycleError> {
        let rec = self.store().device(device)?.ok_or(LifecycleError::UnknownDevice)?;
        let r = rec.relationship;
        let scope =
            ErasureScope { relationships: r..=r, purposes: PurposeFilter::Except(Vec::new()), before: u64::MAX };
        let out = erase(self.store(), device, &scope, ErasureReason::Forgotten, now)?;
        self.store().scrub()?;
        Ok(out)
    }

    /// [`enforce_retention`] for one device with this pipeline's policy
    /// (not scrubbed: see [`Ingestor::apply_retention`]).
    ///
    /// # Errors
    /// As [`enforce_retention`].
    pub fn enforce_retention(&self, device: &DeviceId, now: u64) -> Result<Vec<Erasure>, LifecycleError> {
        enforce_retention(self.store(), self.retention(), device, now)
    }

    /// Applies the retention policy to every device, then scrubs the store
    /// if anything was erased. Run it periodically (daily).
    ///
    /// # Errors
    /// The first store failure; devices before it were handled.
    pub fn apply_retention(&self, now: u64) -> Result<RetentionReport, LifecycleError> {
        let mut report = RetentionReport::default();
        for rec in self.store().devices()? {
            report.devices = report.devices.saturating_add(1);
            for e in self.enforce_retention(&rec.device, now)? {
                report.erasures = report.erasures.saturating_add(1);
                report.messages = report.messages.saturating_add(e.message_count());
                report.notices = report.notices.saturating_add(e.notices);
            }
        }
        if report.erasures > 0 {
            self.store().scrub()?;
        }
        Ok(report)
    }
}
