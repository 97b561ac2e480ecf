//! The vendor's consent ledger (feature `alloc`): an append-only,
//! hash-chained history of every consent event of one device, each entry
//! carrying the device-signed envelope it rests on, and an export an owner
//! can be handed: "what did I agree to, and when".
//!
//! Entry `i` has hash
//!
//! ```text
//! SHA-256("spime/v1 consent ledger\0" || prev_hash (32) || seq (u64 BE) || event (u8)
//!         || at (u64 BE) || version (u32 BE) || len(header) (u32 BE) || header
//!         || len(body) (u32 BE) || body || signature (64))
//! ```
//!
//! with `prev_hash` the previous entry's hash (32 zero bytes for the first).
//! Changing, removing or reordering any entry breaks every later hash;
//! each proof is re-checked with [`crate::seal::verify_signature`].

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{ConsentState, Denial, LocationPrecision, SignedConsent};
use crate::codec::{self, Bytes64};
use crate::error::{DecodeError, OpenError, Rule};
use crate::message::{ConsentUpdate, Register, Transfer};
use crate::seal::Verified;
use crate::time::{Period, Utc};
use crate::wire::{DeviceId, Header, Kind};

/// Domain-separation tag of the ledger hash chain.
pub const LEDGER_DST: &[u8] = b"spime/v1 consent ledger\0";

/// What happened to a device's consent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConsentEvent {
    /// The first state of a relationship, or a state that only widens.
    Given,
    /// A state that widens some things and narrows others.
    Changed,
    /// A state that only narrows, with something still granted.
    Narrowed,
    /// A state with no grants and no contact grants left.
    Withdrawn,
    /// A new version allowing exactly the same (a re-confirmation).
    Reconfirmed,
    /// The held state passed its re-confirm date.
    Expired,
    /// A change of owner: consent reset to deny-all-but-Essential.
    ResetOnTransfer,
    /// The vendor erased collected data (withdrawal, "forget me", change of
    /// owner, end of retention). The proof is the vendor's [`Erasure`]
    /// statement, not a device message.
    Erased,
}

impl ConsentEvent {
    /// The byte that stands for the event in the hash chain.
    pub const fn code(self) -> u8 {
        match self {
            ConsentEvent::Given => 0,
            ConsentEvent::Changed => 1,
            ConsentEvent::Narrowed => 2,
            ConsentEvent::Withdrawn => 3,
            ConsentEvent::Reconfirmed => 4,
            ConsentEvent::Expired => 5,
            ConsentEvent::ResetOnTransfer => 6,
            ConsentEvent::Erased => 7,
        }
    }

    /// The event a code stands for ([`ConsentEvent::code`]), if any.
    pub const fn from_code(code: u8) -> Option<ConsentEvent> {
        Some(match code {
            0 => ConsentEvent::Given,
            1 => ConsentEvent::Changed,
            2 => ConsentEvent::Narrowed,
            3 => ConsentEvent::Withdrawn,
            4 => ConsentEvent::Reconfirmed,
            5 => ConsentEvent::Expired,
            6 => ConsentEvent::ResetOnTransfer,
            7 => ConsentEvent::Erased,
            _ => return None,
        })
    }

    /// A name for reports.
    pub const fn name(self) -> &'static str {
        match self {
            ConsentEvent::Given => "given",
            ConsentEvent::Changed => "changed",
            ConsentEvent::Narrowed => "narrowed",
            ConsentEvent::Withdrawn => "withdrawn",
            ConsentEvent::Reconfirmed => "reconfirmed",
            ConsentEvent::Expired => "expired",
            ConsentEvent::ResetOnTransfer => "reset on transfer",
            ConsentEvent::Erased => "data erased",
        }
    }

    /// Whether the event records a new state the device sent.
    const fn is_state(self) -> bool {
        matches!(
            self,
            ConsentEvent::Given
                | ConsentEvent::Changed
                | ConsentEvent::Narrowed
                | ConsentEvent::Withdrawn
                | ConsentEvent::Reconfirmed
        )
    }

    /// The event a new state `next` makes after `prev`: Given if there was
    /// none; Withdrawn if `next` grants nothing (no grants, no contact
    /// grants) and `prev` did; otherwise Given, Narrowed, Changed or
    /// Reconfirmed as it widens, narrows, both or neither (by categories and
    /// precision of each grant, and channels of each contact grant).
    pub fn classify(prev: Option<&ConsentState>, next: &ConsentState) -> ConsentEvent {
        let Some(prev) = prev else { return ConsentEvent::Given };
        let grants_nothing = |s: &ConsentState| s.grants.is_empty() && s.contact.grants.is_empty();
        if grants_nothing(next) && !grants_nothing(prev) {
            return ConsentEvent::Withdrawn;
        }
        let widens = |a: &ConsentState, b: &ConsentState| {
            b.grants.iter().any(|g| match a.grant(g.purpose) {
                None => true,
                Some(h) => !h.categories.contains_all(g.categories) || g.location > h.location,
            }) || b.contact.grants.iter().any(|g| {
                a.contact
                    .grants
                    .iter()
                    .find(|h| h.purpose == g.purpose)
                    .is_none_or(|h| !h.channels.contains_all(g.channels))
            })
        };
        match (widens(prev, next), widens(next, prev)) {
            (true, false) => ConsentEvent::Given,
            (false, true) => ConsentEvent::Narrowed,
            (true, true) => ConsentEvent::Changed,
            (false, false) => ConsentEvent::Reconfirmed,
        }
    }
}

/// Why the vendor erased data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErasureReason {
    /// Consent for the purposes was withdrawn (or its grant expired).
    Withdrawn,
    /// The owner asked to be forgotten.
    Forgotten,
    /// The product changed owner: the previous relationship's data.
    OwnerChanged,
    /// The retention period for the purposes ended.
    RetentionEnded,
}

impl ErasureReason {
    /// A name for reports.
    pub const fn name(self) -> &'static str {
        match self {
            ErasureReason::Withdrawn => "consent withdrawn",
            ErasureReason::Forgotten => "owner asked to be forgotten",
            ErasureReason::OwnerChanged => "owner changed",
            ErasureReason::RetentionEnded => "retention period ended",
        }
    }
}

/// The vendor's statement of one erasure, the body of an
/// [`ConsentEvent::Erased`] entry's proof (postcard, SPEC §6.8): what was
/// deleted, why and up to when. It names no content of what was deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Erasure {
    /// Why.
    pub reason: ErasureReason,
    /// The first and last owner relationship covered.
    pub relationships: (u32, u32),
    /// Data received or sent before this time (Unix seconds, exclusive) was covered.
    pub before: u64,
    /// Messages deleted, per purpose, in purpose order.
    pub messages: Vec<(super::Purpose, u64)>,
    /// Notice records deleted.
    pub notices: u64,
}

impl Erasure {
    /// The proof an Erased entry carries: no header, this statement as the
    /// body, an all-zero signature (the vendor's own record; the hash chain
    /// binds it).
    ///
    /// # Errors
    /// [`DecodeError`] only if encoding fails.
    pub fn to_proof(&self) -> Result<Proof, DecodeError> {
        let body = postcard::to_allocvec(self).map_err(|_| DecodeError::Malformed)?;
        Ok(Proof { header: Vec::new(), body, signature: Bytes64([0; 64]) })
    }

    /// The statement an Erased entry's proof carries.
    ///
    /// # Errors
    /// [`DecodeError`] when the proof is not an erasure statement.
    pub fn from_proof(proof: &Proof) -> Result<Erasure, DecodeError> {
        if !proof.header.is_empty() || proof.signature.0 != [0; 64] {
            return Err(DecodeError::Malformed);
        }
        let (e, rest): (Erasure, &[u8]) = postcard::take_from_bytes(&proof.body).map_err(|_| DecodeError::Malformed)?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes);
        }
        Ok(e)
    }

    /// The total number of messages deleted.
    pub fn message_count(&self) -> u64 {
        self.messages.iter().fold(0u64, |a, (_, n)| a.saturating_add(*n))
    }
}

/// A signed envelope kept as proof: the exact header and body bytes and
/// the sender's signature ([`crate::seal::verify_signature`] re-checks them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// The envelope header bytes, as signed.
    pub header: Vec<u8>,
    /// The body bytes, as signed.
    pub body: Vec<u8>,
    /// The device's Ed25519 signature.
    pub signature: Bytes64,
}

impl Proof {
    /// The proof an opened, verified envelope carries.
    pub fn from_verified(v: &Verified<'_, '_>) -> Proof {
        Proof { header: v.header_bytes().to_vec(), body: v.body_bytes().to_vec(), signature: Bytes64(*v.signature()) }
    }

    /// Re-checks the signature with the sender's key.
    ///
    /// # Errors
    /// [`OpenError::Unauthentic`].
    pub fn verify(&self, sender: &VerifyingKey) -> Result<(), OpenError> {
        crate::seal::verify_signature(sender, &self.header, &self.body, &self.signature.0)
    }

    /// The parsed header.
    ///
    /// # Errors
    /// The header's [`DecodeError`], or [`DecodeError::TrailingBytes`].
    pub fn header(&self) -> Result<Header, DecodeError> {
        let (h, n) = Header::parse(&self.header)?;
        if n != self.header.len() {
            return Err(DecodeError::TrailingBytes);
        }
        Ok(h)
    }

    /// The signed consent a Register or Consent body carries.
    ///
    /// # Errors
    /// [`DecodeError`] for another kind or a body that does not decode.
    pub fn signed_consent(&self) -> Result<SignedConsent, DecodeError> {
        match self.header()?.kind {
            Kind::REGISTER => Ok(codec::decode::<Register>(&self.body)?.consent),
            Kind::CONSENT => Ok(codec::decode::<ConsentUpdate>(&self.body)?.consent),
            _ => Err(DecodeError::OutOfRange(Rule::ProofWithoutConsent)),
        }
    }
}

/// One entry of the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Position in the ledger, from 0.
    pub seq: u64,
    /// What happened.
    pub event: ConsentEvent,
    /// Unix seconds the vendor recorded it.
    pub at: u64,
    /// The consent version in effect after the event.
    pub version: u32,
    /// The device-signed envelope the event rests on (for Expired, the
    /// expired state's; for ResetOnTransfer, the Transfer).
    pub proof: Proof,
    /// The previous entry's hash (zeros for the first).
    pub prev_hash: [u8; 32],
    /// This entry's hash.
    pub hash: [u8; 32],
}

impl LedgerEntry {
    /// The hash this entry must have (see the module docs).
    pub fn compute_hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(LEDGER_DST);
        h.update(self.prev_hash);
        h.update(self.seq.to_be_bytes());
        h.update([self.event.code()]);
        h.update(self.at.to_be_bytes());
        h.update(self.version.to_be_bytes());
        h.update(u32::try_from(self.proof.header.len()).unwrap_or(u32::MAX).to_be_bytes());
        h.update(&self.proof.header);
        h.update(u32::try_from(self.proof.body.len()).unwrap_or(u32::MAX).to_be_bytes());
        h.update(&self.proof.body);
        h.update(self.proof.signature.0);
        h.finalize().into()
    }
}

/// An entry could not be appended, or a ledger does not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The proof's header or body does not decode as its event needs.
    #[error("proof does not decode: {0}")]
    Decode(#[from] DecodeError),
    /// The proof is for another device than the ledger's.
    #[error("proof is for another device")]
    WrongDevice,
    /// The proof's message kind does not fit the event.
    #[error("a {kind:?} message cannot prove a {event:?} event")]
    WrongKind {
        /// the event
        event: ConsentEvent,
        /// the proof's kind
        kind: Kind,
    },
    /// A state that does not supersede the ledger's current version.
    #[error("consent version {got} does not supersede {held}")]
    VersionNotForward {
        /// the current version
        held: u32,
        /// the version offered
        got: u32,
    },
    /// An expiry or transfer with no state recorded before it.
    #[error("no consent state recorded yet")]
    NoState,
    /// An Expired event for a state that had not lapsed (or is not current).
    #[error("the current consent state has not expired")]
    NotExpired,
    /// Entry `seq` does not chain: wrong position, previous hash, hash or version order.
    #[error("ledger broken at entry {0}")]
    BrokenChain(u64),
    /// The proof of entry `seq` does not verify with the device's key.
    #[error("proof of entry {0} does not verify")]
    BadProof(u64),
    /// The version cannot go forward any more.
    #[error("consent version exhausted")]
    VersionExhausted,
}

/// The append-only consent history of one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentLedger {
    device: DeviceId,
    entries: Vec<LedgerEntry>,
}

impl ConsentLedger {
    /// An empty ledger for `device`.
    pub const fn new(device: DeviceId) -> ConsentLedger {
        ConsentLedger { device, entries: Vec::new() }
    }

    /// A ledger from stored entries, checked with [`ConsentLedger::verify_chain`].
    ///
    /// # Errors
    /// As [`ConsentLedger::verify_chain`].
    pub fn from_entries(device: DeviceId, entries: Vec<LedgerEntry>) -> Result<ConsentLedger, LedgerError> {
        let l = ConsentLedger { device, entries };
        l.verify_chain()?;
        Ok(l)
    }

    /// The device.
    pub const fn device(&self) -> DeviceId {
        self.device
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> &[LedgerEntry] {
        &self.entries
    }

    /// The last entry's hash (zeros when empty): commit to it to commit to the whole history.
    pub fn head(&self) -> [u8; 32] {
        self.entries.last().map_or([0; 32], |e| e.hash)
    }

    /// The consent version in effect (`None` before any state).
    pub fn current_version(&self) -> Option<u32> {
        self.entries.last().map(|e| e.version)
    }

    /// The consent state in effect: the last recorded state, or the
    /// deny-all-but-Essential state after a transfer
    /// ([`ConsentState::essential_only`] with the reset version, the
    /// Transfer's `at` and no notice).
    pub fn current_state(&self) -> Option<ConsentState> {
        self.entries.iter().rev().find_map(|e| state_of(e).ok())
    }

    /// Appends `event`, resting on `proof` (already verified by the
    /// caller), recorded at `at`.
    ///
    /// - State events (Given, Changed, Narrowed, Withdrawn, Reconfirmed):
    ///   a Register or Consent proof whose state version supersedes the
    ///   current one.
    /// - Expired: the current state's proof again; `at` at or after its
    ///   re-confirm date; the version stays.
    /// - ResetOnTransfer: a Transfer proof; the version becomes current + 1.
    ///
    /// # Errors
    /// [`LedgerError::WrongDevice`], [`LedgerError::WrongKind`],
    /// [`LedgerError::Decode`], [`LedgerError::VersionNotForward`],
    /// [`LedgerError::NoState`], [`LedgerError::NotExpired`],
    /// [`LedgerError::VersionExhausted`].
    pub fn append(&mut self, event: ConsentEvent, proof: Proof, at: u64) -> Result<&LedgerEntry, LedgerError> {
        let current = self.current_version();
        if event == ConsentEvent::Erased {
            Erasure::from_proof(&proof)?;
            let version = current.ok_or(LedgerError::NoState)?;
            return self.push(event, at, version, proof);
        }
        let header = proof.header()?;
        if header.device != self.device {
            return Err(LedgerError::WrongDevice);
        }
        let version = match event {
            ConsentEvent::Erased => return Err(LedgerError::NoState),
            ConsentEvent::ResetOnTransfer => {
                if header.kind != Kind::TRANSFER {
                    return Err(LedgerError::WrongKind { event, kind: header.kind });
                }
                codec::decode::<Transfer>(&proof.body)?;
                let held = current.ok_or(LedgerError::NoState)?;
                held.checked_add(1).ok_or(LedgerError::VersionExhausted)?
            }
            _ => {
                if header.kind != Kind::REGISTER && header.kind != Kind::CONSENT {
                    return Err(LedgerError::WrongKind { event, kind: header.kind });
                }
                let state = proof.signed_consent()?.state;
                if event == ConsentEvent::Expired {
                    let held = self.current_state().ok_or(LedgerError::NoState)?;
                    if held != state || at < state.reconfirm_by {
                        return Err(LedgerError::NotExpired);
                    }
                } else if let Some(held) = current
                    && state.version <= held
                {
                    return Err(LedgerError::VersionNotForward { held, got: state.version });
                }
                state.version
            }
        };
        self.push(event, at, version, proof)
    }

    fn push(&mut self, event: ConsentEvent, at: u64, version: u32, proof: Proof) -> Result<&LedgerEntry, LedgerError> {
        let seq = u64::try_from(self.entries.len()).unwrap_or(u64::MAX);
        let mut entry = LedgerEntry { seq, event, at, version, proof, prev_hash: self.head(), hash: [0; 32] };
        entry.hash = entry.compute_hash();
        self.entries.push(entry);
        self.entries.last().ok_or(LedgerError::NoState)
    }

    /// Appends an [`ConsentEvent::Erased`] entry for `erasure`, recorded at `at`.
    ///
    /// # Errors
    /// [`LedgerError::NoState`] before any consent state.
    pub fn record_erasure(&mut self, erasure: &Erasure, at: u64) -> Result<&LedgerEntry, LedgerError> {
        self.append(ConsentEvent::Erased, erasure.to_proof()?, at)
    }

    /// Appends a state proof (Register or Consent), classifying it with
    /// [`ConsentEvent::classify`] against the current state.
    ///
    /// # Errors
    /// As [`ConsentLedger::append`].
    pub fn record_state(&mut self, proof: Proof, at: u64) -> Result<&LedgerEntry, LedgerError> {
        let next = proof.signed_consent()?.state;
        let event = ConsentEvent::classify(self.current_state().as_ref(), &next);
        self.append(event, proof, at)
    }

    /// Appends an Expired entry when the current state lapsed at `now` and
    /// no Expired entry was recorded for it yet; `Ok(None)` otherwise.
    ///
    /// # Errors
    /// As [`ConsentLedger::append`].
    pub fn record_expiry(&mut self, now: u64) -> Result<Option<&LedgerEntry>, LedgerError> {
        let Some(last) = self.entries.iter().rev().find(|e| e.event != ConsentEvent::Erased) else { return Ok(None) };
        if !last.event.is_state() {
            return Ok(None);
        }
        let state = last.proof.signed_consent()?.state;
        if now < state.reconfirm_by {
            return Ok(None);
        }
        let proof = last.proof.clone();
        self.append(ConsentEvent::Expired, proof, now).map(Some)
    }

    /// Checks every entry's position, link, hash and version order
    /// (state versions strictly increase; Expired keeps the version; a
    /// reset adds one).
    ///
    /// # Errors
    /// [`LedgerError::BrokenChain`] at the first bad entry.
    pub fn verify_chain(&self) -> Result<(), LedgerError> {
        let mut prev = [0u8; 32];
        let mut version: Option<u32> = None;
        for (i, e) in self.entries.iter().enumerate() {
            let seq = u64::try_from(i).unwrap_or(u64::MAX);
            let ordered = match (e.event, version) {
                (ConsentEvent::Expired | ConsentEvent::Erased, v) => v == Some(e.version),
                (ConsentEvent::ResetOnTransfer, v) => v.and_then(|v| v.checked_add(1)) == Some(e.version),
                (_, Some(v)) => e.version > v,
                (_, None) => true,
            };
            if e.seq != seq || e.prev_hash != prev || e.hash != e.compute_hash() || !ordered {
                return Err(LedgerError::BrokenChain(seq));
            }
            prev = e.hash;
            version = Some(e.version);
        }
        Ok(())
    }

    /// Re-checks every entry's proof: signed by `device_key`, for this
    /// device, of a kind that fits the event, naming the entry's version.
    ///
    /// # Errors
    /// [`LedgerError::BadProof`] at the first entry that fails.
    pub fn verify_proofs(&self, device_key: &VerifyingKey) -> Result<(), LedgerError> {
        for e in &self.entries {
            if e.event == ConsentEvent::Erased {
                if Erasure::from_proof(&e.proof).is_err() {
                    return Err(LedgerError::BadProof(e.seq));
                }
                continue;
            }
            let ok = e.proof.verify(device_key).is_ok()
                && e.proof.header().is_ok_and(|h| h.device == self.device)
                && match e.event {
                    ConsentEvent::ResetOnTransfer => {
                        e.proof.header().is_ok_and(|h| h.kind == Kind::TRANSFER)
                            && codec::decode::<Transfer>(&e.proof.body).is_ok()
                    }
                    _ => e.proof.signed_consent().is_ok_and(|s| s.state.version == e.version),
                };
            if !ok {
                return Err(LedgerError::BadProof(e.seq));
            }
        }
        Ok(())
    }

    /// Refines a denial with the history: [`Denial::NotGranted`] becomes
    /// [`Denial::Withdrawn`] with the version that took the categories
    /// away, when an earlier state granted some of them for the purpose
    /// (`missing` then names those categories).
    pub fn explain(&self, denial: Denial) -> Denial {
        let Denial::NotGranted { purpose, missing, .. } = denial else { return denial };
        let missing = if missing.is_empty() { super::CategorySet::ALL } else { missing };
        let mut later: Option<u32> = None;
        for e in self.entries.iter().rev() {
            let Ok(state) = state_of(e) else { continue };
            let had = state.grant(purpose).map_or(super::CategorySet::EMPTY, |g| g.categories).intersection(missing);
            if !had.is_empty() {
                return match later {
                    Some(version) => Denial::Withdrawn { purpose, missing: had, version },
                    None => denial,
                };
            }
            if e.event != ConsentEvent::Expired {
                later = Some(e.version);
            }
        }
        denial
    }

    /// A readable account of the whole history, for the owner: each event
    /// with its date, version, what was granted and how it is proven.
    ///
    /// ```
    /// use spime::consent::ledger::ConsentLedger;
    /// use spime::wire::DeviceId;
    /// let ledger = ConsentLedger::new(DeviceId([7; 8]));
    /// assert!(ledger.export().starts_with("Consent history of device 07070707"));
    /// ```
    pub fn export(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Consent history of device {}", Hex(&self.device.0));
        let _ = writeln!(out, "{} entries, chain head {}", self.entries.len(), Hex(&self.head()));
        for e in &self.entries {
            let _ = writeln!(out, "\n#{} {} - {} - consent version {}", e.seq, Utc(e.at), e.event.name(), e.version);
            if e.event == ConsentEvent::Erased {
                write_erasure(&mut out, e);
                continue;
            }
            match state_of(e) {
                Ok(state) => write_state(&mut out, &state, e),
                Err(_) => {
                    let _ = writeln!(out, "  (proof does not decode)");
                }
            }
            let kind = e.proof.header().map(|h| h.kind);
            let _ = writeln!(
                out,
                "  proof: {} message signed by the device, signature {}..., entry hash {}",
                match kind {
                    Ok(Kind::REGISTER) => "Register",
                    Ok(Kind::CONSENT) => "Consent",
                    Ok(Kind::TRANSFER) => "Transfer",
                    _ => "unknown",
                },
                Hex(e.proof.signature.0.get(..8).unwrap_or(&[])),
                Hex(&e.hash)
            );
        }
        out
    }
}

/// The state an entry puts in effect.
fn state_of(e: &LedgerEntry) -> Result<ConsentState, DecodeError> {
    if e.event == ConsentEvent::ResetOnTransfer {
        let t: Transfer = codec::decode(&e.proof.body)?;
        Ok(ConsentState::essential_only(e.version, t.at, [0; 32]))
    } else {
        Ok(e.proof.signed_consent()?.state)
    }
}

fn write_erasure(out: &mut String, e: &LedgerEntry) {
    let Ok(er) = Erasure::from_proof(&e.proof) else {
        let _ = writeln!(out, "  (erasure statement does not decode)");
        return;
    };
    let (lo, hi) = er.relationships;
    let _ = write!(out, "  {}: deleted {} messages", er.reason.name(), er.message_count());
    for (p, n) in &er.messages {
        let _ = write!(out, " ({n} for {p})");
    }
    let _ = writeln!(
        out,
        " and {} notice records of relationship{} {}{} received before {}",
        er.notices,
        if lo == hi { "" } else { "s" },
        lo,
        if lo == hi { String::new() } else { alloc::format!("-{hi}") },
        Utc(er.before)
    );
    let _ = writeln!(out, "  recorded by the vendor, entry hash {}", Hex(&e.hash));
}

fn write_state(out: &mut String, s: &ConsentState, e: &LedgerEntry) {
    if e.event == ConsentEvent::ResetOnTransfer {
        let _ = writeln!(out, "  the product changed owner: everything but Essential is denied; nothing carries over");
        return;
    }
    if e.event == ConsentEvent::Expired {
        let _ = writeln!(out, "  not re-confirmed by {}: everything but Essential is denied", Utc(s.reconfirm_by));
        return;
    }
    let _ = writeln!(out, "  decided {}, to be re-confirmed by {}", Utc(s.issued_at), Utc(s.reconfirm_by));
    let _ = writeln!(out, "  privacy notice shown: sha256 {}", Hex(&s.notice_hash));
    let _ = writeln!(out, "  essential (always): device-health");
    if s.grants.is_empty() {
        let _ = writeln!(out, "  nothing else granted");
    }
    for g in &s.grants {
        let _ = write!(out, "  granted for {}: {}", g.purpose, g.categories);
        if g.location != LocationPrecision::None {
            let _ = write!(out, " (location to {} precision)", g.location);
        }
        match g.expires_at {
            Some(t) => {
                let _ = writeln!(out, ", until {}", Utc(t));
            }
            None => {
                let _ = writeln!(out);
            }
        }
    }
    for c in &s.contact.grants {
        let _ = writeln!(out, "  may contact for {} by {}", c.purpose, c.channels);
    }
    if let Some(q) = &s.contact.quiet_hours {
        let sign = if q.utc_offset_minutes < 0 { '-' } else { '+' };
        let off = q.utc_offset_minutes.unsigned_abs();
        let _ = writeln!(
            out,
            "  quiet hours {:02}:{:02}-{:02}:{:02} (UTC{}{:02}:{:02})",
            q.start_minute / 60,
            q.start_minute % 60,
            q.end_minute / 60,
            q.end_minute % 60,
            sign,
            off / 60,
            off % 60
        );
    }
    for c in &s.contact.caps {
        let noun = if c.max_notices == 1 { "notice" } else { "notices" };
        let per = Period(u64::from(c.period_seconds));
        let _ = writeln!(out, "  at most {} {noun} for {} per {per}", c.max_notices, c.purpose);
    }
    if !s.contact.muted_topics.is_empty() {
        let _ = write!(out, "  muted topics:");
        for t in &s.contact.muted_topics {
            let _ = write!(out, " {t}");
        }
        let _ = writeln!(out);
    }
    match e.proof.signed_consent().ok().and_then(|c| c.owner) {
        Some(p) => {
            let _ = writeln!(out, "  signed by the owner's key {}", Hex(&p.owner_key));
        }
        None => {
            let _ = writeln!(out, "  signed by the device on the owner's behalf");
        }
    }
}

/// Lower-case hex.
struct Hex<'a>(&'a [u8]);

impl core::fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}
