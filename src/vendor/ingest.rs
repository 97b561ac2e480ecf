//! The ingest pipeline: bytes → opened (decrypt, verify) → replay check →
//! consent check → a typed [`Event`], with the state changes of a whole
//! batch committed in one transaction before anything is acknowledged.

use alloc::boxed::Box;
use alloc::vec::Vec;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use ed25519_dalek::VerifyingKey;

use crate::codec;
use crate::consent::ledger::{ConsentEvent, LedgerEntry, Proof};
use crate::consent::{ConsentError, OwnerRequirement, Purpose, SignedConsent, authorise_transfer, check_first};
use crate::error::{DecodeError, OpenError, Rule};
use crate::message::{
    ConsentUpdate, Decommission, DecommissionReason, Fault, FirmwareVersion, Register, Transfer, Usage,
    VendorKeyCertificate, consent_digest,
};
use crate::seal::replay::ReplayWindow;
use crate::seal::{Envelope, Plaintext, SessionKeys, VendorKeys, VendorPublicKeys, Verified};
use crate::time::Utc;
use crate::wire::{DeviceId, Direction, Header, Kind};

use super::batch::{BatchVerifier, batchable_key};
use super::key_cache::KeyCache;
use super::lifecycle::RetentionPolicy;
use super::store::{DeviceRecord, KeyMemo, Lifecycle, SessionSecrets, Store, StoredMessage, Transaction};
use super::{IngestError, KeyringError, StoreError};

/// How the pipeline runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestConfig {
    /// Worker threads per batch; a batch's messages are partitioned among
    /// them by device, so one device's messages stay in order on one
    /// worker, each device going to the partition with the fewest messages
    /// so far. 1 runs on the calling thread.
    pub workers: usize,
    /// Batch-verify the signatures of Usage and Fault messages (see
    /// [`super::batch`] for how this relates to `verify_strict`).
    pub batch_verify: bool,
}

impl Default for IngestConfig {
    /// Batching on, one worker per available core.
    fn default() -> IngestConfig {
        IngestConfig { workers: std::thread::available_parallelism().map_or(1, usize::from), batch_verify: true }
    }
}

/// What an accepted message meant.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A Register was accepted.
    Registered {
        /// The owner relationship it belongs to.
        relationship: u32,
        /// Whether it started a new relationship (first registration, or after a transfer).
        new_relationship: bool,
        /// The firmware it runs.
        firmware: FirmwareVersion,
        /// The consent version the vendor now holds.
        consent_version: u32,
    },
    /// A usage report, covered by the held consent.
    Usage(Box<Usage>),
    /// A fault report, covered by the held consent.
    Fault(Box<Fault>),
    /// A new consent state replaced the held one.
    ConsentChanged {
        /// The version held before.
        previous: u32,
        /// The version held now.
        version: u32,
    },
    /// The consent state already held arrived again (a duplicate: nothing
    /// changes; a receipt may be sent again).
    ConsentRepeated {
        /// The version held.
        version: u32,
    },
    /// The owner handed the product on; consent is reset to Essential only.
    Transferred {
        /// When, by the device's clock.
        at: u64,
    },
    /// The product left service.
    Decommissioned {
        /// When, by the device's clock.
        at: u64,
        /// Why.
        reason: DecommissionReason,
    },
}

/// An accepted, durably stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The device it came from.
    pub device: DeviceId,
    /// Its counter.
    pub counter: u64,
    /// Its kind.
    pub kind: Kind,
    /// What it meant.
    pub event: Event,
    /// The key epoch this message opened, if it opened one (it carried an
    /// ephemeral key for an epoch above the device's current one). Answer
    /// with a vendor message under it (`Ingestor::seal_receipt`) so the
    /// device learns the epoch is open and stops re-offering its key
    /// (SPEC §3.1).
    pub opened_epoch: Option<u32>,
    /// The device's epoch (after this message) is opened with an older
    /// vendor key than the newest one in the keyring: answer with a
    /// KeyUpdate (`Ingestor::seal_key_update`) so it can move to the new
    /// key before the old one retires (SPEC §9.2).
    pub key_update_due: bool,
}

/// In plain words, times as UTC dates: `registered (a new owner,
/// relationship 1), firmware 1.0.0 (build 1), consent version 1`;
/// `usage for …`; `… fault …`; `consent changed from version 1 to 2`; …
impl core::fmt::Display for Event {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Event::Registered { relationship, new_relationship, firmware, consent_version } => {
                let owner = if *new_relationship { "a new owner" } else { "the same owner again" };
                write!(
                    f,
                    "registered ({owner}, relationship {relationship}), firmware {firmware}, consent version {consent_version}"
                )
            }
            Event::Usage(usage) => write!(f, "{usage}"),
            Event::Fault(fault) => write!(f, "{fault}"),
            Event::ConsentChanged { previous, version } => {
                write!(f, "consent changed from version {previous} to {version}")
            }
            Event::ConsentRepeated { version } => write!(f, "consent version {version} received again (unchanged)"),
            Event::Transferred { at } => {
                write!(f, "handed on to a new owner at {}; consent reset to essential only", Utc(*at))
            }
            Event::Decommissioned { at, reason } => write!(f, "decommissioned at {} ({reason})", Utc(*at)),
        }
    }
}

/// `device 0707…07, message 3: <the event>`, then `; it opened key epoch 2`
/// when it did.
impl core::fmt::Display for Accepted {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "device {}, message {}: {}", self.device, self.counter, self.event)?;
        match self.opened_epoch {
            Some(epoch) => write!(f, "; it opened key epoch {epoch}"),
            None => Ok(()),
        }
    }
}

/// The result for one message of a batch.
pub type Outcome = Result<Accepted, IngestError>;

/// The shard (across processes or machines) that owns `device` among `n`,
/// for routing a device's messages to one ingest service (docs/scaling.md);
/// [`Ingestor::ingest_batch`] balances its own workers by message count
/// instead. FNV-1a of the id, mixed with MurmurHash3's 64-bit finalizer, modulo
/// `n` (0 when `n` is 0). The finalizer matters: the low bits of FNV-1a
/// depend only on the low bits of each byte, so ids that differ in their
/// high bits alone would land on a few shards of a power-of-two count.
///
/// ```
/// use spime::vendor::partition_of;
/// use spime::wire::DeviceId;
/// let d = DeviceId([3; 8]);
/// assert_eq!(partition_of(&d, 2), partition_of(&d, 2));
/// assert!(partition_of(&d, 4) < 4);
/// // ids that differ only in their high bits still spread over 4 shards
/// let mut seen = [0usize; 4];
/// for i in 0..64u8 {
///     seen[partition_of(&DeviceId([i << 4, 0, 0, 0, 0, 0, 0, 0x80]), 4)] += 1;
/// }
/// assert!(seen.iter().all(|&c| c >= 8), "{seen:?}");
/// ```
pub fn partition_of(device: &DeviceId, n: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in device.0 {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    match u64::try_from(n) {
        Ok(0) | Err(_) => 0,
        Ok(n) => usize::try_from(h % n).unwrap_or(0),
    }
}

/// One device's state while a batch is processed.
#[derive(Clone)]
struct DevState<'s> {
    /// Borrowed from the batch's snapshot until it changes.
    record: Option<Rec<'s>>,
    window: ReplayWindow,
    key: Option<VerifyingKey>,
    /// The window changed (a message was accepted).
    dirty: bool,
    /// The record changed too (registration, consent, epoch, lifecycle).
    record_changed: bool,
    /// Too many openers failed for this device lately: at most one opener
    /// is tried for it in this batch.
    throttled: bool,
    /// Openers tried for this device in this pass.
    openers_tried: u32,
    /// Openers for this device that failed after their key agreement in this pass.
    opener_failures: u32,
    /// An opener for this device was accepted in this pass.
    opener_accepted: bool,
}

/// A device's record in a pass: the snapshot's, or a changed one.
///
/// Not a `Cow`, which holds an owned record inline: a [`DevState`] would be
/// as large as a record (about 1.1 KB), and a pass creates and moves one
/// per device of its batch, where only a registration or a consent change
/// makes a new record (then boxed).
#[derive(Clone)]
enum Rec<'s> {
    /// The batch's snapshot holds it unchanged.
    Snap(&'s DeviceRecord),
    /// Changed in this pass.
    New(Box<DeviceRecord>),
}

impl core::ops::Deref for Rec<'_> {
    type Target = DeviceRecord;
    fn deref(&self) -> &DeviceRecord {
        match self {
            Rec::Snap(r) => r,
            Rec::New(r) => r,
        }
    }
}

/// Per device: what the store holds for it when the batch began.
type Snapshot = HashMap<DeviceId, SnapEntry>;

/// One device in a batch's snapshot.
#[derive(Clone)]
struct SnapEntry {
    /// Its record (`None`: not registered).
    record: Option<Arc<DeviceRecord>>,
    /// Its replay window.
    window: ReplayWindow,
    /// Its openers are throttled (SPEC §9.2).
    throttled: bool,
}

impl SnapEntry {
    /// The same record, window and throttling.
    fn same(&self, other: &SnapEntry) -> bool {
        let records = match (&self.record, &other.record) {
            (Some(x), Some(y)) => Arc::ptr_eq(x, y) || x == y,
            (None, None) => true,
            _ => false,
        };
        records && self.window == other.window && self.throttled == other.throttled
    }
}

/// Epoch openers for one device that failed after the key agreement, in
/// the current window.
#[derive(Debug, Clone, Copy)]
struct OpenerFailures {
    since: u64,
    count: u32,
}

/// Failed openers a device may cause per [`OPENER_WINDOW`] before its
/// openers are throttled to one per batch (SPEC.md §9.2).
pub const OPENER_FAILURES: u32 = 8;
/// The window of [`OPENER_FAILURES`], in seconds of caller time.
pub const OPENER_WINDOW: u64 = 3600;
/// The most devices whose opener failures are remembered (beyond, the
/// record of failures starts over).
const OPENER_TABLE_MAX: usize = 1 << 16;

/// How signatures are checked in one pass over a partition.
enum SigMode<'a> {
    /// `verify_strict` now.
    Strict,
    /// Usage and Fault signatures are collected for a batch and assumed good.
    Defer(&'a mut BatchVerifier, &'a mut Vec<(usize, [u8; 32])>),
    /// Results of a batch by message index and key; anything else strict.
    Known(&'a HashMap<usize, ([u8; 32], bool)>),
}

struct Done {
    accepted: Accepted,
    /// Ledger entries, in order (two for a Register that carries the
    /// Transfer it follows: the reset, then the new state).
    ledger: Vec<LedgerEntry>,
    /// Taken out when committed.
    message: Option<StoredMessage>,
}

struct PartResult<'s> {
    outcomes: Vec<(usize, Result<Done, IngestError>)>,
    states: HashMap<DeviceId, DevState<'s>>,
}

/// The vendor's ingest pipeline over a [`Store`].
///
/// ```
/// use spime::vendor::{IngestConfig, Ingestor, IngestError, MemoryStore};
/// use spime::seal::VendorKeys;
/// let vendor = Ingestor::new(MemoryStore::new(), VendorKeys::from_secrets(&[1; 32], &[2; 32]), IngestConfig::default());
/// assert!(matches!(vendor.ingest(b"not an envelope", 0), Err(IngestError::Decode(_))));
/// ```
pub struct Ingestor<S> {
    store: S,
    /// The vendor's message keys: the key given to [`Ingestor::new`]
    /// (serial 0 unless certified) and those added with
    /// [`Ingestor::with_vendor_key`]; at most [`MAX_VENDOR_KEYS`].
    keyring: Keyring,
    public: VendorPublicKeys,
    /// The key device certificates are verified with: the vendor signing
    /// key unless [`Ingestor::with_certificate_authority`] set another.
    certificate_authority: VerifyingKey,
    config: IngestConfig,
    retention: RetentionPolicy,
    lock: Mutex<()>,
    /// Decompressed device keys by their bytes (decompressing costs a tenth
    /// of a verification). A pure cache: the bytes determine the key.
    key_cache: KeyCache,
    /// Failed epoch openers per device (in memory only).
    opener_failures: Mutex<HashMap<DeviceId, OpenerFailures>>,
    /// The denylist: revoked device ids and device keys.
    revoked: RwLock<Denylist>,
}

/// One of the vendor's message key pairs in the keyring.
struct KeyringEntry {
    serial: u32,
    keys: VendorKeys,
    certificate: Option<VendorKeyCertificate>,
    /// From this time on (Unix seconds, the caller's clock) the key is retired.
    retire_at: Option<u64>,
}

impl KeyringEntry {
    fn live(&self, now: u64) -> bool {
        self.retire_at.is_none_or(|t| now < t)
    }
}

/// The newest key and the older ones (ascending serial).
struct Keyring {
    newest: KeyringEntry,
    older: Vec<KeyringEntry>,
}

impl Keyring {
    /// Newest first.
    fn iter(&self) -> impl Iterator<Item = &KeyringEntry> {
        core::iter::once(&self.newest).chain(self.older.iter().rev())
    }
}

/// The most vendor keys a keyring holds, retired ones included. It bounds
/// the key agreements an epoch opener costs before anything is
/// authenticated (SPEC.md §9.2, Security T6).
pub const MAX_VENDOR_KEYS: usize = 3;

#[derive(Debug, Default)]
struct Denylist {
    devices: HashSet<DeviceId>,
    keys: HashSet<[u8; 32]>,
    /// Changes at every revocation and reinstatement: a batch verified
    /// meanwhile is judged again at its write.
    generation: u64,
}

/// How many device keys an [`Ingestor`] keeps decompressed unless
/// [`Ingestor::with_key_cache`] says otherwise: 131,072, about 40 MB when
/// full. Past it, the least recently used key makes room (approximately:
/// CLOCK), one at a time.
pub const KEY_CACHE_DEFAULT: usize = 1 << 17;

impl<S> core::fmt::Debug for Ingestor<S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Ingestor").field("public", &self.public).field("config", &self.config).finish_non_exhaustive()
    }
}

fn unauthentic(e: OpenError) -> IngestError {
    match e {
        OpenError::Decode(d) => IngestError::Decode(d),
        _ => IngestError::Unauthentic,
    }
}

/// Checks a consent state's owner proof (SPEC §6.3): the key pinned for
/// the relationship if there is one, otherwise any valid proof (which then
/// becomes the pin). Returns the key to pin.
fn check_owner(
    device: &DeviceId,
    consent: &SignedConsent,
    pinned: Option<&[u8; 32]>,
) -> Result<Option<[u8; 32]>, IngestError> {
    let required = match pinned {
        Some(k) => OwnerRequirement::OwnerKey(k),
        None => OwnerRequirement::DeviceOnBehalf,
    };
    let signed = consent.verify_owner(device, required).map_err(IngestError::Consent)?;
    Ok(signed.or(pinned.copied()))
}

/// `r` after the Transfer `t` (SPEC §9.4): authorised against the held
/// version and the pinned owner key, then consent reset to Essential only,
/// lifecycle Transferred, the pin dropped.
fn transferred(device: &DeviceId, r: &DeviceRecord, t: &Transfer, now: u64) -> Result<DeviceRecord, IngestError> {
    if r.lifecycle != Lifecycle::Active {
        return Err(IngestError::AwaitingRegistration);
    }
    // While an owner key is pinned, only that owner can end the relationship.
    authorise_transfer(t, device, r.consent.state.version, r.owner_key.as_ref()).map_err(IngestError::Consent)?;
    let reset =
        r.consent.state.reset_for_transfer(t.at).map_err(|_| DecodeError::OutOfRange(Rule::ConsentVersionExhausted))?;
    let mut rec = r.clone();
    rec.lifecycle = Lifecycle::Transferred;
    rec.consent = SignedConsent { state: reset, owner: None };
    rec.consent_digest = [0; 32];
    rec.consent_received_at = now;
    rec.owner_key = None;
    Ok(rec)
}

/// The next ledger entry after `head`, chained and hashed (SPEC §6.8).
fn ledger_entry(head: (u64, [u8; 32]), event: ConsentEvent, at: u64, version: u32, proof: Proof) -> LedgerEntry {
    let (seq, prev_hash) = head;
    let mut e = LedgerEntry { seq, event, at, version, proof, prev_hash, hash: [0; 32] };
    e.hash = e.compute_hash();
    e
}

fn digest_of(consent: &SignedConsent) -> Result<[u8; 32], IngestError> {
    let bytes = postcard::to_allocvec(consent).map_err(|_| StoreError::Corrupt("consent encoding"))?;
    Ok(consent_digest(&bytes))
}

impl<S: Store> Ingestor<S> {
    /// A pipeline over `store` with the vendor's keys.
    pub fn new(store: S, keys: VendorKeys, config: IngestConfig) -> Ingestor<S> {
        let public = keys.public();
        Ingestor {
            store,
            keyring: Keyring {
                newest: KeyringEntry { serial: 0, keys, certificate: None, retire_at: None },
                older: Vec::new(),
            },
            certificate_authority: public.signing,
            public,
            config,
            retention: RetentionPolicy::default(),
            lock: Mutex::new(()),
            key_cache: KeyCache::new(KEY_CACHE_DEFAULT),
            opener_failures: Mutex::default(),
            revoked: RwLock::default(),
        }
    }

    /// A pipeline whose first (oldest) pair is certified under its own
    /// serial (SPEC.md §9.2), with `authority` as the certificate authority
    /// (as [`Ingestor::with_certificate_authority`]): how a vendor starts
    /// once its serial-0 pair is forgotten, or when its first pair was
    /// certified from the outset. [`Ingestor::new`] gives the first pair
    /// serial 0, and a pair keeps its serial.
    ///
    /// ```
    /// use ed25519_dalek::SigningKey;
    /// use spime::message::VendorKeyCertificate;
    /// use spime::seal::VendorKeys;
    /// use spime::vendor::{IngestConfig, Ingestor, MemoryStore};
    /// let authority = SigningKey::from_bytes(&[9; 32]); // offline
    /// let first = VendorKeys::from_secrets(&[3; 32], &[4; 32]);
    /// let cert = VendorKeyCertificate::certify(&first, 1, 0, u64::MAX, &authority)?;
    /// let vendor = Ingestor::new_certified(MemoryStore::new(), first, cert, authority.verifying_key(), IngestConfig::default())?;
    /// assert_eq!(vendor.vendor_key_serials(0), vec![(1, true)]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`KeyringError::BadCertificate`], [`KeyringError::KeysDiffer`].
    pub fn new_certified(
        store: S,
        keys: VendorKeys,
        certificate: VendorKeyCertificate,
        authority: VerifyingKey,
        config: IngestConfig,
    ) -> Result<Ingestor<S>, KeyringError> {
        let public = certificate.verify(&authority).map_err(|_| KeyringError::BadCertificate)?;
        if public != keys.public() {
            return Err(KeyringError::KeysDiffer);
        }
        let mut ingestor = Ingestor::new(store, keys, config).with_certificate_authority(authority);
        ingestor.keyring.newest.serial = certificate.body.serial;
        ingestor.keyring.newest.certificate = Some(certificate);
        Ok(ingestor)
    }

    /// Verifies device certificates with `authority` instead of the vendor
    /// signing key (SPEC.md §5.4): the factory then holds the certificate
    /// authority's secret key, and the live servers only its public key and
    /// the message-signing key. Devices are unaffected: they never check
    /// device certificates.
    ///
    /// ```
    /// use spime::seal::VendorKeys;
    /// use spime::vendor::{IngestConfig, Ingestor, MemoryStore};
    /// let factory = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    /// let live = VendorKeys::from_secrets(&[1; 32], &[2; 32]);
    /// let vendor = Ingestor::new(MemoryStore::new(), live, IngestConfig::default())
    ///     .with_certificate_authority(factory.verifying_key());
    /// assert_eq!(vendor.certificate_authority(), &factory.verifying_key());
    /// ```
    #[must_use]
    pub fn with_certificate_authority(mut self, authority: VerifyingKey) -> Ingestor<S> {
        self.certificate_authority = authority;
        self
    }

    /// The key device certificates are verified with.
    pub const fn certificate_authority(&self) -> &VerifyingKey {
        &self.certificate_authority
    }

    /// Adds a vendor message key pair certified by the certificate
    /// authority (SPEC.md §5.11, §9.2): the vendor then opens epochs made
    /// with it as well as with the older keys that have not retired, and
    /// sends it to devices in KeyUpdates ([`Ingestor::seal_key_update`]).
    /// Set the certificate authority first
    /// ([`Ingestor::with_certificate_authority`]). A certificate of a key
    /// already held (the first key, serial 0, for example) must carry its
    /// serial, and gives it that certificate.
    ///
    /// ```
    /// use ed25519_dalek::SigningKey;
    /// use spime::message::VendorKeyCertificate;
    /// use spime::seal::VendorKeys;
    /// use spime::vendor::{IngestConfig, Ingestor, MemoryStore};
    /// let authority = SigningKey::from_bytes(&[9; 32]); // offline
    /// let first = VendorKeys::from_secrets(&[1; 32], &[2; 32]);
    /// let second = VendorKeys::from_secrets(&[3; 32], &[4; 32]);
    /// let cert = VendorKeyCertificate::certify(&second, 1, 0, u64::MAX, &authority)?;
    /// let vendor = Ingestor::new(MemoryStore::new(), first, IngestConfig::default())
    ///     .with_certificate_authority(authority.verifying_key())
    ///     .with_vendor_key(second, cert)?
    ///     .retire_vendor_key(0, 1_900_000_000)?;
    /// assert_eq!(vendor.vendor_key_serials(1_800_000_000), vec![(0, true), (1, true)]);
    /// assert_eq!(vendor.vendor_key_serials(1_900_000_000), vec![(0, false), (1, true)]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`KeyringError::BadCertificate`], [`KeyringError::KeysDiffer`],
    /// [`KeyringError::SerialNotAbove`] (serials only go up),
    /// [`KeyringError::SerialChanged`] for a key already held under another
    /// serial, [`KeyringError::SharedKeyAgreement`] for a new pair whose
    /// `VX` another pair holds, [`KeyringError::Full`] beyond [`MAX_VENDOR_KEYS`].
    pub fn with_vendor_key(
        mut self,
        keys: VendorKeys,
        certificate: VendorKeyCertificate,
    ) -> Result<Ingestor<S>, KeyringError> {
        let public = certificate.verify(&self.certificate_authority).map_err(|_| KeyringError::BadCertificate)?;
        if public != keys.public() {
            return Err(KeyringError::KeysDiffer);
        }
        let serial = certificate.body.serial;
        let newest = self.keyring.newest.serial;
        // A certificate of a key already held keeps its serial: epochs are
        // recorded under it (the first key's is 0).
        let held = self.keyring.iter().find(|e| e.keys.public() == public).map(|e| e.serial);
        if let Some(held) = held {
            if held != serial {
                return Err(KeyringError::SerialChanged { held, got: serial });
            }
            if let Some(e) = core::iter::once(&mut self.keyring.newest)
                .chain(self.keyring.older.iter_mut())
                .find(|e| e.serial == serial)
            {
                e.certificate = Some(certificate);
            }
            return Ok(self);
        }
        if serial <= newest {
            return Err(KeyringError::SerialNotAbove { newest, got: serial });
        }
        if let Some(e) = self.keyring.iter().find(|e| e.keys.public().key_agreement == public.key_agreement) {
            return Err(KeyringError::SharedKeyAgreement { held: e.serial });
        }
        if self.keyring.older.len() + 1 >= MAX_VENDOR_KEYS {
            return Err(KeyringError::Full(MAX_VENDOR_KEYS));
        }
        let entry = KeyringEntry { serial, keys, certificate: Some(certificate), retire_at: None };
        let previous = core::mem::replace(&mut self.keyring.newest, entry);
        self.keyring.older.push(previous);
        Ok(self)
    }

    /// Retires the vendor key of serial `serial` at `at` (Unix seconds, the
    /// caller's clock, as given to [`Ingestor::ingest`]): from then on, an
    /// epoch opener made with it is not authentic, a message of an epoch
    /// opened with it is refused ([`IngestError::VendorKeyRetired`]), and it
    /// signs nothing more.
    ///
    /// # Errors
    /// [`KeyringError::UnknownSerial`]; [`KeyringError::Newest`] for the
    /// newest key, which has no successor for devices to move to.
    pub fn retire_vendor_key(mut self, serial: u32, at: u64) -> Result<Ingestor<S>, KeyringError> {
        if serial == self.keyring.newest.serial {
            return Err(KeyringError::Newest(serial));
        }
        let e =
            self.keyring.older.iter_mut().find(|e| e.serial == serial).ok_or(KeyringError::UnknownSerial(serial))?;
        e.retire_at = Some(at);
        Ok(self)
    }

    /// Drops a retired key from the keyring (and wipes its secrets), making
    /// room for the next one. A device still in an epoch opened with it is
    /// refused as before ([`IngestError::VendorKeyRetired`]).
    ///
    /// # Errors
    /// [`KeyringError::Newest`] for the newest key;
    /// [`KeyringError::UnknownSerial`]; [`KeyringError::NotRetired`] unless
    /// it retired by `now`.
    pub fn forget_vendor_key(mut self, serial: u32, now: u64) -> Result<Ingestor<S>, KeyringError> {
        if serial == self.keyring.newest.serial {
            return Err(KeyringError::Newest(serial));
        }
        let i =
            self.keyring.older.iter().position(|e| e.serial == serial).ok_or(KeyringError::UnknownSerial(serial))?;
        if self.keyring.older.get(i).is_some_and(|e| e.live(now)) {
            return Err(KeyringError::NotRetired(serial));
        }
        self.keyring.older.remove(i);
        Ok(self)
    }

    /// The serials in the keyring, ascending, each with whether it is live
    /// (not retired) at `now`.
    pub fn vendor_key_serials(&self, now: u64) -> Vec<(u32, bool)> {
        let mut v: Vec<(u32, bool)> = self.keyring.iter().map(|e| (e.serial, e.live(now))).collect();
        v.reverse();
        v
    }

    /// Whether the vendor key of serial `serial` is retired at `now` (a
    /// key no longer in the keyring is).
    fn retired(&self, serial: u32, now: u64) -> bool {
        self.keyring.iter().find(|e| e.serial == serial).is_none_or(|e| !e.live(now))
    }

    /// The vendor key of serial `serial`, if held.
    pub(crate) fn vendor_key(&self, serial: u32) -> Option<&VendorKeys> {
        self.keyring.iter().find(|e| e.serial == serial).map(|e| &e.keys)
    }

    /// The newest certified key that is live at `now`, with its certificate.
    pub(crate) fn newest_certified(&self, now: u64) -> Option<(&VendorKeys, &VendorKeyCertificate)> {
        self.keyring.iter().filter(|e| e.live(now)).find_map(|e| e.certificate.as_ref().map(|c| (&e.keys, c)))
    }

    /// Whether a device whose epoch was opened with the vendor key of
    /// serial `serial` should get a KeyUpdate at `now`: a newer certified
    /// key is live.
    pub fn key_update_due(&self, serial: u32, now: u64) -> bool {
        self.newest_certified(now).is_some_and(|(_, c)| c.body.serial > serial)
    }

    /// The same pipeline with retention policy `policy` (SPEC §9.8;
    /// [`RetentionPolicy::default`] otherwise).
    #[must_use]
    pub fn with_retention(mut self, policy: RetentionPolicy) -> Ingestor<S> {
        self.retention = policy;
        self
    }

    /// The same pipeline keeping at most `keys` device keys decompressed
    /// ([`KEY_CACHE_DEFAULT`] otherwise). Size it for the fleet that reports
    /// within a few minutes: each key held costs about 300 bytes, and a
    /// miss costs a decompression (a tenth of a signature verification).
    /// A Register warms the cache with its device's key.
    ///
    /// ```
    /// use spime::seal::VendorKeys;
    /// use spime::vendor::{IngestConfig, Ingestor, MemoryStore};
    /// let v = Ingestor::new(MemoryStore::new(), VendorKeys::from_secrets(&[1; 32], &[2; 32]), IngestConfig::default())
    ///     .with_key_cache(1_000_000);
    /// assert_eq!(v.key_cache_capacity(), 1_000_000);
    /// ```
    #[must_use]
    pub fn with_key_cache(mut self, keys: usize) -> Ingestor<S> {
        self.key_cache = KeyCache::new(keys);
        self
    }

    /// How many device keys the pipeline keeps decompressed at most.
    pub const fn key_cache_capacity(&self) -> usize {
        self.key_cache.capacity()
    }

    /// The retention policy.
    pub const fn retention(&self) -> &RetentionPolicy {
        &self.retention
    }

    /// The store.
    pub const fn store(&self) -> &S {
        &self.store
    }

    /// The store, given back (to start the pipeline again over the same
    /// store, for example with another keyring).
    pub fn into_store(self) -> S {
        self.store
    }

    /// The newest vendor keys (the last added with
    /// [`Ingestor::with_vendor_key`], else those given to [`Ingestor::new`]).
    pub const fn keys(&self) -> &VendorKeys {
        &self.keyring.newest.keys
    }

    /// The configuration.
    pub const fn config(&self) -> &IngestConfig {
        &self.config
    }

    /// Ingests one message: [`Ingestor::ingest_batch`] of one.
    ///
    /// # Errors
    /// The [`IngestError`] that refused it; nothing of it is stored.
    pub fn ingest(&self, bytes: &[u8], now: u64) -> Outcome {
        self.ingest_batch(&[bytes], now).pop().unwrap_or(Err(IngestError::Storage(StoreError::Conflict)))
    }

    /// Ingests a batch. Returns one outcome per message, in order. Every
    /// accepted message's content and replay state, and every state change,
    /// are committed in one transaction before this returns: an `Ok` is an
    /// acknowledgement. If the commit fails, every message of the batch is
    /// refused with [`IngestError::Storage`] and nothing is kept.
    ///
    /// Messages of one device are processed in their order in the batch.
    /// Over a store that counts its commits ([`Transaction::commit_seq`]:
    /// [`MemoryStore`](super::MemoryStore), `FjallStore`) batches from
    /// several threads are verified at once: each holds a transaction only
    /// to read its devices and to write its results. At the write, the
    /// messages of every device whose record or window another transaction
    /// changed in between, or whose opener throttling changed, are judged
    /// again against the state then; all of them if the denylist changed.
    /// The outcomes are those of the batches run one after another in the
    /// order they commit. Over other stores batches
    /// are serialised per `Ingestor`. Run one `Ingestor` per partition of
    /// device ids to scale out across processes (docs/scaling.md).
    pub fn ingest_batch(&self, messages: &[&[u8]], now: u64) -> Vec<Outcome> {
        let workers = self.config.workers.max(1);
        let mut parts: Vec<Vec<(usize, &[u8])>> = (0..workers).map(|_| Vec::new()).collect();
        // Each device goes, at its first message, to the partition with the
        // fewest messages so far, and its later messages follow it (in
        // order, on one worker): the partitions stay within a message of
        // each other for a fleet, where a hash of the id left one worker
        // waiting for the other.
        let mut devices: HashMap<DeviceId, usize> = HashMap::with_capacity(messages.len());
        let mut device_of: Vec<Option<DeviceId>> = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            let smallest = || (0..parts.len()).min_by_key(|&w| parts.get(w).map_or(usize::MAX, Vec::len)).unwrap_or(0);
            let (w, device) = match Header::parse(m) {
                Ok((h, _)) => (*devices.entry(h.device).or_insert_with(smallest), Some(h.device)),
                Err(_) => (smallest(), None),
            };
            device_of.push(device);
            if let Some(p) = parts.get_mut(w) {
                p.push((i, m));
            }
        }
        let fail_all = |e: StoreError| messages.iter().map(|_| Err(IngestError::Storage(e.clone()))).collect();
        // A store without a commit count: one transaction reads the batch's
        // devices and writes the result (a store that fences writers,
        // PgStore, checks the writes against exactly what was read), and
        // batches take turns. With a count: see `rejudge`.
        let serial = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        let mut tx = match self.store.begin() {
            Ok(tx) => tx,
            Err(e) => return fail_all(e),
        };
        let seq = tx.commit_seq();
        let denylist = self.denylist_generation();
        let snapshot = match snapshot(&mut tx, &devices).map(|s| self.mark_throttled(s, now)) {
            Ok(s) => s,
            Err(e) => return fail_all(e),
        };
        // A store that counts commits: no transaction (and no lock) while
        // the batch is verified.
        let (mut held, _serial) = if seq.is_some() {
            drop(tx);
            drop(serial);
            (None, None)
        } else {
            (Some(tx), Some(serial))
        };
        let mut fresh = Snapshot::new();
        let busy = parts.iter().filter(|p| !p.is_empty()).count();
        let mut results: Vec<PartResult> = if busy <= 1 {
            parts.iter().filter(|p| !p.is_empty()).map(|p| self.run_partition(&snapshot, p, now)).collect()
        } else {
            // The calling thread takes the first partition itself.
            let mut busy_parts = parts.iter().filter(|p| !p.is_empty());
            let first = busy_parts.next();
            std::thread::scope(|s| {
                let handles: Vec<_> =
                    busy_parts.map(|p| (p, s.spawn(|| self.run_partition(&snapshot, p, now)))).collect();
                let mine = first.map(|p| self.run_partition(&snapshot, p, now));
                mine.into_iter()
                    .chain(handles.into_iter().map(|(p, h)| {
                        h.join().unwrap_or_else(|_| PartResult {
                            outcomes: p
                                .iter()
                                .map(|&(i, _)| {
                                    (i, Err(IngestError::Storage(StoreError::Backend("worker failed".into()))))
                                })
                                .collect(),
                            states: HashMap::new(),
                        })
                    }))
                    .collect()
            })
        };
        let mut tx = match held.take().map_or_else(|| self.store.begin(), Ok) {
            Ok(tx) => tx,
            Err(e) => return fail_all(e),
        };
        if seq.is_some() {
            let moved = Moved { commits: tx.commit_seq() != seq, denylist: self.denylist_generation() != denylist };
            let batch = (messages, device_of.as_slice());
            if let Err(e) = self.rejudge(&mut tx, moved, &snapshot, &mut fresh, batch, &mut results, now) {
                return fail_all(e);
            }
        }
        self.record_openers(&results, now);
        if let Err(e) = commit(tx, &mut results) {
            return fail_all(e);
        }
        // Consent narrowed or the owner changed: erase what the retention
        // policy says must go now. The batch is already acknowledged; if
        // this fails, the next `apply_retention` sweep does it.
        let changed: Vec<DeviceId> = results
            .iter()
            .flat_map(|r| r.outcomes.iter())
            .filter_map(|(_, o)| o.as_ref().ok())
            .filter(|d| d.ledger.iter().any(|e| needs_erasure(e.event)))
            .map(|d| d.accepted.device)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        for d in changed {
            let _ = self.enforce_retention(&d, now);
        }
        // Every message has an outcome from its partition; the fallback
        // (allocated only if one were missing) keeps this total.
        let mut out: Vec<Option<Outcome>> = messages.iter().map(|_| None).collect();
        for r in results {
            for (i, o) in r.outcomes {
                if let Some(slot) = out.get_mut(i) {
                    *slot = Some(o.map(|d| d.accepted));
                }
            }
        }
        out.into_iter()
            .map(|o| o.unwrap_or_else(|| Err(IngestError::Storage(StoreError::Backend("lost".into())))))
            .collect()
    }

    /// Puts `device` on the denylist: from the next batch on, every
    /// message from it is refused (`Revoked`) before any cryptography, and
    /// it cannot register. The denylist is kept in memory: load it at
    /// start-up from wherever the operator keeps it (SPEC.md §9.1).
    ///
    /// A change to the denylist makes every batch verifying at that moment
    /// judge all its messages again at its write, one signature at a time
    /// (about 10 ms per 256): load a large denylist before serving.
    ///
    /// ```
    /// use spime::vendor::{IngestConfig, Ingestor, MemoryStore};
    /// use spime::seal::VendorKeys;
    /// use spime::wire::DeviceId;
    /// let v = Ingestor::new(MemoryStore::new(), VendorKeys::from_secrets(&[1; 32], &[2; 32]), IngestConfig::default());
    /// v.revoke_device(DeviceId([3; 8]));
    /// assert!(v.is_revoked(&DeviceId([3; 8]), None));
    /// v.reinstate_device(&DeviceId([3; 8]));
    /// assert!(!v.is_revoked(&DeviceId([3; 8]), None));
    /// ```
    pub fn revoke_device(&self, device: DeviceId) {
        let mut list = self.revoked.write().unwrap_or_else(PoisonError::into_inner);
        list.devices.insert(device);
        list.generation = list.generation.wrapping_add(1);
    }

    /// Puts a device key (the certificate's `device_key`) on the denylist:
    /// every message signed by it, and every Register whose certificate
    /// binds it, is refused (`Revoked`), whatever device id it names.
    pub fn revoke_key(&self, device_key: [u8; 32]) {
        let mut list = self.revoked.write().unwrap_or_else(PoisonError::into_inner);
        list.keys.insert(device_key);
        list.generation = list.generation.wrapping_add(1);
    }

    /// Takes `device` off the denylist.
    pub fn reinstate_device(&self, device: &DeviceId) {
        let mut list = self.revoked.write().unwrap_or_else(PoisonError::into_inner);
        list.devices.remove(device);
        list.generation = list.generation.wrapping_add(1);
    }

    /// Takes a device key off the denylist.
    pub fn reinstate_key(&self, device_key: &[u8; 32]) {
        let mut list = self.revoked.write().unwrap_or_else(PoisonError::into_inner);
        list.keys.remove(device_key);
        list.generation = list.generation.wrapping_add(1);
    }

    /// Whether `device`, or `device_key` if given, is on the denylist.
    pub fn is_revoked(&self, device: &DeviceId, device_key: Option<&[u8; 32]>) -> bool {
        let list = self.revoked.read().unwrap_or_else(PoisonError::into_inner);
        list.devices.contains(device) || device_key.is_some_and(|k| list.keys.contains(k))
    }

    /// Marks the devices whose openers failed too often lately (SPEC §9.2).
    fn mark_throttled(&self, mut snapshot: Snapshot, now: u64) -> Snapshot {
        let failures = self.opener_failures.lock().unwrap_or_else(PoisonError::into_inner);
        for (d, e) in &mut snapshot {
            e.throttled = throttled(&failures, d, now);
        }
        snapshot
    }

    /// Counts the openers that failed after their key agreement, per device
    /// (an accepted opener clears the device's count).
    fn record_openers(&self, results: &[PartResult<'_>], now: u64) {
        let mut table = self.opener_failures.lock().unwrap_or_else(PoisonError::into_inner);
        for (device, st) in results.iter().flat_map(|r| r.states.iter()) {
            if st.opener_accepted {
                table.remove(device);
            } else if st.opener_failures > 0 {
                if table.len() >= OPENER_TABLE_MAX && !table.contains_key(device) {
                    table.clear();
                }
                let f = table.entry(*device).or_insert(OpenerFailures { since: now, count: 0 });
                if now.saturating_sub(f.since) >= OPENER_WINDOW {
                    *f = OpenerFailures { since: now, count: 0 };
                }
                f.count = f.count.saturating_add(st.opener_failures);
            }
        }
    }

    /// The batch was verified with no transaction open; `tx` is the one it
    /// writes in, and nothing commits while it is open. Whatever changed
    /// since the batch read `snapshot` is judged again here, so that the
    /// outcomes are those of the batch run alone at this point:
    /// - another transaction committed (`moved.commits`): the batch's
    ///   devices are read again, and every device whose record or replay
    ///   window differs is judged again;
    /// - openers failed in batches recorded meanwhile: every device whose
    ///   throttling differs is judged again;
    /// - the denylist changed (`moved.denylist`): every device is.
    ///
    /// Judging again is on this thread, signatures verified one by one; it
    /// replaces those devices' outcomes and states in `results`. `batch`
    /// is the messages and the device each names (`None`: no header).
    #[allow(clippy::too_many_arguments)]
    fn rejudge<'s>(
        &self,
        tx: &mut S::Txn<'_>,
        moved: Moved,
        snapshot: &Snapshot,
        fresh: &'s mut Snapshot,
        batch: (&[&[u8]], &[Option<DeviceId>]),
        results: &mut Vec<PartResult<'s>>,
        now: u64,
    ) -> Result<(), StoreError> {
        let differs = |d: &DeviceId, e: &SnapEntry| moved.denylist || snapshot.get(d).is_none_or(|old| !old.same(e));
        *fresh = if moved.commits {
            let ids: HashMap<DeviceId, usize> = snapshot.keys().map(|d| (*d, 0)).collect();
            self.mark_throttled(self::snapshot(tx, &ids)?, now).into_iter().filter(|(d, e)| differs(d, e)).collect()
        } else {
            // Nothing committed: the records and windows read still hold;
            // only the throttling (or the denylist) may have moved.
            let failures = self.opener_failures.lock().unwrap_or_else(PoisonError::into_inner);
            if !moved.denylist && failures.is_empty() && snapshot.values().all(|e| !e.throttled) {
                return Ok(());
            }
            snapshot
                .iter()
                .filter(|(d, e)| moved.denylist || throttled(&failures, d, now) != e.throttled)
                .map(|(d, e)| (*d, SnapEntry { throttled: throttled(&failures, d, now), ..e.clone() }))
                .collect()
        };
        if fresh.is_empty() {
            return Ok(());
        }
        let changed = |d: &Option<DeviceId>| d.as_ref().is_some_and(|d| fresh.contains_key(d));
        let (messages, device_of) = batch;
        let again: Vec<(usize, &[u8])> = messages
            .iter()
            .zip(device_of)
            .enumerate()
            .filter(|(_, (_, d))| changed(d))
            .map(|(i, (m, _))| (i, *m))
            .collect();
        let redo: &[usize] = &again.iter().map(|&(i, _)| i).collect::<Vec<_>>();
        for r in results.iter_mut() {
            r.outcomes.retain(|(i, _)| redo.binary_search(i).is_err());
            r.states.retain(|d, _| !fresh.contains_key(d));
        }
        let fresh: &'s Snapshot = fresh;
        results.push(self.pass(fresh, &again, now, &mut SigMode::Strict));
        Ok(())
    }

    /// The denylist's generation ([`Denylist::generation`]).
    fn denylist_generation(&self) -> u64 {
        self.revoked.read().unwrap_or_else(PoisonError::into_inner).generation
    }

    fn run_partition<'s>(&self, snapshot: &'s Snapshot, msgs: &[(usize, &[u8])], now: u64) -> PartResult<'s> {
        if !self.config.batch_verify {
            return self.pass(snapshot, msgs, now, &mut SigMode::Strict);
        }
        let mut verifier = BatchVerifier::with_capacity(msgs.len());
        let mut index = Vec::with_capacity(msgs.len());
        let first = self.pass(snapshot, msgs, now, &mut SigMode::Defer(&mut verifier, &mut index));
        if verifier.is_empty() {
            return first;
        }
        let results = verifier.verify();
        if results.iter().all(|&ok| ok) {
            return first;
        }
        // A signature failed: the speculative pass assumed it good, so run
        // again from the snapshot with the known results.
        let known: HashMap<usize, ([u8; 32], bool)> =
            index.into_iter().zip(results).map(|((i, key), ok)| (i, (key, ok))).collect();
        self.pass(snapshot, msgs, now, &mut SigMode::Known(&known))
    }

    fn pass<'s>(
        &self,
        snapshot: &'s Snapshot,
        msgs: &[(usize, &[u8])],
        now: u64,
        sig: &mut SigMode<'_>,
    ) -> PartResult<'s> {
        // Sized once: a fleet's batch has a state per message.
        let mut states: HashMap<DeviceId, DevState<'s>> = HashMap::with_capacity(msgs.len().min(snapshot.len()));
        let mut outcomes = Vec::with_capacity(msgs.len());
        for &(i, bytes) in msgs {
            let mut opener = None;
            let outcome = self.process(&mut states, snapshot, i, bytes, now, sig, &mut opener);
            if let Some(device) = opener
                && let Some(st) = states.get_mut(&device)
            {
                match &outcome {
                    Ok(_) => st.opener_accepted = true,
                    Err(_) => st.opener_failures = st.opener_failures.saturating_add(1),
                }
            }
            outcomes.push((i, outcome));
        }
        PartResult { outcomes, states }
    }

    /// Judges one message. `opener` is set to the device when the message
    /// opened a new epoch (a key agreement was made for it).
    #[allow(clippy::too_many_lines, clippy::too_many_arguments)]
    fn process<'s>(
        &self,
        states: &mut HashMap<DeviceId, DevState<'s>>,
        snapshot: &'s Snapshot,
        index: usize,
        bytes: &[u8],
        now: u64,
        sig: &mut SigMode<'_>,
        opener: &mut Option<DeviceId>,
    ) -> Result<Done, IngestError> {
        let env = Envelope::parse(bytes)?;
        let h = env.header;
        if h.direction() != Direction::DeviceToVendor {
            return Err(IngestError::WrongDirection(h.kind));
        }
        let st = states.entry(h.device).or_insert_with(|| {
            let (record, window, throttled) = match snapshot.get(&h.device) {
                Some(e) => (e.record.as_deref().map(Rec::Snap), e.window, e.throttled),
                None => (None, ReplayWindow::new(), false),
            };
            DevState {
                record,
                window,
                key: None,
                dirty: false,
                record_changed: false,
                throttled,
                openers_tried: 0,
                opener_failures: 0,
                opener_accepted: false,
            }
        });
        if st.record.as_deref().is_some_and(|r| r.lifecycle == Lifecycle::Decommissioned) {
            return Err(IngestError::Decommissioned);
        }
        // The denylist and the certificate's validity, before any cryptography.
        if self.is_revoked(&h.device, st.record.as_deref().map(|r| &r.certificate.body.device_key)) {
            return Err(IngestError::Revoked);
        }
        if let Some(r) = &st.record {
            r.certificate.body.valid_at(now).map_err(IngestError::CertificateInvalid)?;
        }
        st.window.check(h.counter)?;

        // Which session keys open it (SPEC §9.2). A key agreement is the one
        // expensive step before anything is authenticated: openers of a
        // device whose openers failed too often lately get one try per batch.
        // An opener is tried with each vendor key that has not retired,
        // newest first (at most MAX_VENDOR_KEYS key agreements, SPEC §9.2):
        // the key whose session keys open the AEAD is the one the device holds.
        let mut open_epoch = |st: &mut DevState<'s>, eph: &[u8; 32]| {
            if st.throttled && st.openers_tried >= 1 {
                return Err(IngestError::Throttled);
            }
            st.openers_tried = st.openers_tried.saturating_add(1);
            *opener = Some(h.device);
            self.trial_open(&env, &h, eph, now)
        };
        let (keys, vendor_key, new_epoch): (SessionKeys, u32, bool) = match (&st.record, h.ephemeral) {
            (None, _) if h.kind != Kind::REGISTER => return Err(IngestError::UnknownDevice),
            (None, Some(eph)) => {
                let (k, serial) = open_epoch(st, &eph)?;
                (k, serial, true)
            }
            (None, None) => return Err(IngestError::UnknownDevice),
            (Some(r), Some(eph)) if h.epoch > r.epoch() => {
                let (k, serial) = open_epoch(st, &eph)?;
                (k, serial, true)
            }
            (Some(r), _) => {
                let current = r.epoch();
                if h.epoch < current {
                    return Err(IngestError::StaleEpoch { current, got: h.epoch });
                }
                if h.epoch > current {
                    return Err(IngestError::UnopenedEpoch { current, got: h.epoch });
                }
                let serial = r.session.vendor_key();
                if self.retired(serial, now) {
                    return Err(IngestError::VendorKeyRetired { serial });
                }
                (r.session.keys(), serial, false)
            }
        };
        let mut buf = [0u8; crate::message::MAX_SEALED_LEN];
        let pt = env.decrypt(&keys, &mut buf).map_err(unauthentic)?;

        // Whose key signs it.
        let register = if h.kind == Kind::REGISTER {
            let reg: Register = codec::decode(pt.body_bytes())?;
            if reg.certificate.body.device != h.device {
                return Err(IngestError::CertificateMismatch);
            }
            let key = reg.certificate.verify(&self.certificate_authority).map_err(|_| IngestError::Unauthentic)?;
            if self.is_revoked(&h.device, Some(&reg.certificate.body.device_key)) {
                return Err(IngestError::Revoked);
            }
            reg.certificate.body.valid_at(now).map_err(IngestError::CertificateInvalid)?;
            if let Some(r) = &st.record
                && r.certificate.body.device_key != reg.certificate.body.device_key
            {
                return Err(IngestError::CertificateMismatch);
            }
            // Warm the cache: this device's next messages need the key.
            self.key_cache.insert(&key);
            Some((reg, key))
        } else {
            None
        };
        let (key, batchable) = match (&register, &st.record) {
            (Some((_, k)), Some(r)) => (*k, r.batchable_key),
            (Some((_, k)), None) => (*k, batchable_key(k)),
            (None, Some(r)) => {
                let k = match st.key.or_else(|| r.remembered_key()) {
                    Some(k) => k,
                    None => {
                        let k = self.device_key(&r.certificate.body.device_key)?;
                        r.remember_key(&k);
                        k
                    }
                };
                st.key = Some(k);
                (k, r.batchable_key)
            }
            (None, None) => return Err(IngestError::UnknownDevice),
        };
        // An opener is verified strictly, never deferred to a batch: a forged
        // one must not be applied speculatively (SPEC §9.7).
        let verified = check_signature(pt, &key, batchable, new_epoch, index, sig)?;
        // What it means (SPEC §9.3–9.5).
        let proof = Proof::from_verified(&verified);
        let mut purpose = Purpose::ESSENTIAL;
        let mut new_record: Option<DeviceRecord> = None;
        let mut ledger: Vec<(ConsentEvent, u32)> = Vec::new();
        let event = match (h.kind, register) {
            (Kind::REGISTER, Some((mut reg, key))) => {
                let digest = digest_of(&reg.consent)?;
                let session = SessionSecrets::from_keys(&keys).opened_with(vendor_key);
                // The first Register after a change of owner carries the Transfer:
                // if that Transfer has not arrived yet, it is applied first, so the
                // outcome does not depend on which arrives first (SPEC §9.3). One
                // naming a version below the held one belongs to an earlier
                // relationship (already applied) and is ignored.
                let after_transfer = match (&st.record, reg.transfer.take()) {
                    (Some(r), Some(t))
                        if r.lifecycle == Lifecycle::Active && t.consent_version >= r.consent.state.version =>
                    {
                        let rec = transferred(&h.device, r, &t, now)?;
                        ledger.push((ConsentEvent::ResetOnTransfer, rec.consent.state.version));
                        Some(rec)
                    }
                    _ => None,
                };
                let previous = after_transfer.as_ref().or(st.record.as_deref());
                let (rec, new_relationship) = match previous {
                    Some(r) if r.lifecycle == Lifecycle::Active => {
                        // The same relationship: a new epoch, perhaps new firmware; the
                        // consent it carries is judged as an update (SPEC §6.3).
                        let owner_key = check_owner(&h.device, &reg.consent, r.owner_key.as_ref())?;
                        let replace = r.consent.state.judge_update(&reg.consent.state).map_err(IngestError::Consent)?;
                        let mut rec = r.clone();
                        rec.firmware = reg.firmware;
                        rec.session = session;
                        if replace {
                            ledger.push((
                                ConsentEvent::classify(Some(&r.consent.state), &reg.consent.state),
                                reg.consent.state.version,
                            ));
                            rec.consent = reg.consent;
                            rec.consent_digest = digest;
                            rec.consent_received_at = now;
                            rec.owner_key = owner_key;
                        }
                        (rec, false)
                    }
                    previous => {
                        // A new relationship: the first, or the next owner's after a
                        // transfer, whose state must supersede the reset state (§6.7).
                        let owner_key = check_owner(&h.device, &reg.consent, None)?;
                        check_first(previous.as_ref().map(|r| r.consent.state.version), reg.consent.state.version)
                            .map_err(IngestError::Consent)?;
                        if let Some(r) = previous
                            && !reg.consent.state.supersedes(&r.consent.state)
                        {
                            return Err(IngestError::Consent(ConsentError::Stale {
                                held: r.consent.state.version,
                                got: reg.consent.state.version,
                            }));
                        }
                        let prev_state = previous.as_ref().map(|r| &r.consent.state);
                        ledger
                            .push((ConsentEvent::classify(prev_state, &reg.consent.state), reg.consent.state.version));
                        let rec = DeviceRecord {
                            device: h.device,
                            certificate: reg.certificate,
                            lifecycle: Lifecycle::Active,
                            relationship: previous.as_ref().map_or(1, |r| r.relationship.saturating_add(1)),
                            firmware: reg.firmware,
                            session,
                            consent: reg.consent,
                            consent_digest: digest,
                            consent_received_at: now,
                            registered_at: now,
                            owner_key,
                            ledger_next: previous.as_ref().map_or((0, [0; 32]), |r| r.ledger_next),
                            batchable_key: previous.as_ref().map_or_else(|| batchable_key(&key), |r| r.batchable_key),
                            key: KeyMemo::default(),
                        };
                        (rec, true)
                    }
                };
                let event = Event::Registered {
                    relationship: rec.relationship,
                    new_relationship,
                    firmware: rec.firmware,
                    consent_version: rec.consent.state.version,
                };
                // Its next messages need the key: kept with the record.
                rec.remember_key(&key);
                new_record = Some(rec);
                event
            }
            (Kind::USAGE, _) => {
                let usage: Usage = verified.decode().map_err(unauthentic)?;
                let r = st.record.as_deref().ok_or(IngestError::UnknownDevice)?;
                r.consent.state.check_usage(&usage, now).map_err(IngestError::Unconsented)?;
                purpose = usage.purpose;
                Event::Usage(Box::new(usage))
            }
            (Kind::FAULT, _) => {
                let fault: Fault = verified.decode().map_err(unauthentic)?;
                let r = st.record.as_deref().ok_or(IngestError::UnknownDevice)?;
                r.consent.state.check_fault(&fault, now).map_err(IngestError::Unconsented)?;
                purpose = fault.purpose;
                Event::Fault(Box::new(fault))
            }
            (Kind::CONSENT, _) => {
                let update: ConsentUpdate = verified.decode().map_err(unauthentic)?;
                let r = st.record.as_deref().ok_or(IngestError::UnknownDevice)?;
                if r.lifecycle != Lifecycle::Active {
                    return Err(IngestError::AwaitingRegistration);
                }
                let owner_key = check_owner(&h.device, &update.consent, r.owner_key.as_ref())?;
                let held = r.consent.state.version;
                let version = update.consent.state.version;
                if r.consent.state.judge_update(&update.consent.state).map_err(IngestError::Consent)? {
                    let mut rec = r.clone();
                    ledger.push((ConsentEvent::classify(Some(&r.consent.state), &update.consent.state), version));
                    rec.consent_digest = digest_of(&update.consent)?;
                    rec.consent = update.consent;
                    rec.consent_received_at = now;
                    rec.owner_key = owner_key;
                    new_record = Some(rec);
                    Event::ConsentChanged { previous: held, version }
                } else {
                    Event::ConsentRepeated { version }
                }
            }
            (Kind::TRANSFER, _) => {
                let t: Transfer = verified.decode().map_err(unauthentic)?;
                let r = st.record.as_deref().ok_or(IngestError::UnknownDevice)?;
                if r.lifecycle != Lifecycle::Active {
                    return Err(IngestError::AwaitingRegistration);
                }
                let rec = transferred(&h.device, r, &t, now)?;
                ledger.push((ConsentEvent::ResetOnTransfer, rec.consent.state.version));
                new_record = Some(rec);
                Event::Transferred { at: t.at }
            }
            (Kind::DECOMMISSION, _) => {
                let d: Decommission = verified.decode().map_err(unauthentic)?;
                let r = st.record.as_deref().ok_or(IngestError::UnknownDevice)?;
                let mut rec = r.clone();
                rec.lifecycle = Lifecycle::Decommissioned;
                new_record = Some(rec);
                Event::Decommissioned { at: d.at, reason: d.reason }
            }
            (kind, _) => return Err(IngestError::WrongDirection(kind)),
        };
        if new_epoch && new_record.is_none() {
            let mut rec = st.record.as_deref().cloned().ok_or(IngestError::UnknownDevice)?;
            rec.session = SessionSecrets::from_keys(&keys).opened_with(vendor_key);
            new_record = Some(rec);
        }
        let mut entries = Vec::with_capacity(ledger.len());
        if let Some(rec) = new_record.as_mut() {
            for (event, version) in ledger {
                let entry = ledger_entry(rec.ledger_next, event, now, version, proof.clone());
                rec.ledger_next = (entry.seq.saturating_add(1), entry.hash);
                entries.push(entry);
            }
        }
        let ledger = entries;

        // Accepted: only now does any state change.
        let relationship = new_record.as_ref().or(st.record.as_deref()).map_or(1, |r| r.relationship);
        st.window.accept(h.counter)?;
        st.dirty = true;
        if let Some(rec) = new_record {
            st.record = Some(Rec::New(Box::new(rec)));
            st.record_changed = true;
        }
        let message = StoredMessage {
            device: h.device,
            counter: h.counter,
            kind: h.kind.to_byte(),
            received_at: now,
            relationship,
            purpose,
            proof,
        };
        let opened_epoch = new_epoch.then_some(h.epoch);
        let key_update_due = st
            .record
            .as_deref()
            .is_some_and(|r| r.lifecycle == Lifecycle::Active && self.key_update_due(r.session.vendor_key(), now));
        let accepted =
            Accepted { device: h.device, counter: h.counter, kind: h.kind, event, opened_epoch, key_update_due };
        Ok(Done { accepted, ledger, message: Some(message) })
    }

    fn device_key(&self, bytes: &[u8; 32]) -> Result<VerifyingKey, IngestError> {
        if let Some(k) = self.key_cache.get(bytes) {
            return Ok(k);
        }
        let k = VerifyingKey::from_bytes(bytes).map_err(|_| StoreError::Corrupt("device key"))?;
        self.key_cache.insert(&k);
        Ok(k)
    }

    /// The session keys an opener's epoch gets with the first live vendor
    /// key (newest first) whose keys decrypt it, and that key's serial.
    fn trial_open(
        &self,
        env: &Envelope<'_>,
        h: &Header,
        eph: &[u8; 32],
        now: u64,
    ) -> Result<(SessionKeys, u32), IngestError> {
        let mut scratch = [0u8; crate::message::MAX_SEALED_LEN];
        let mut live = self.keyring.iter().filter(|e| e.live(now)).peekable();
        while let Some(entry) = live.next() {
            let keys = entry.keys.accept_epoch(&h.device, h.epoch, eph).map_err(|_| IngestError::WeakKey)?;
            // With one candidate left, the caller's decryption is the test.
            if live.peek().is_none() || env.decrypt(&keys, &mut scratch).is_ok() {
                return Ok((keys, entry.serial));
            }
        }
        Err(IngestError::Unauthentic)
    }
}

fn snapshot<T: Transaction>(tx: &mut T, devices: &HashMap<DeviceId, usize>) -> Result<Snapshot, StoreError> {
    let ids: Vec<DeviceId> = devices.keys().copied().collect();
    let loaded = tx.load_shared(&ids)?;
    if loaded.len() != ids.len() {
        return Err(StoreError::Corrupt("load_devices"));
    }
    // Throttling is marked afterwards, from the in-memory opener counts.
    let snapshot: Snapshot = ids
        .into_iter()
        .zip(loaded)
        .map(|(d, (record, window))| (d, SnapEntry { record, window, throttled: false }))
        .collect();
    warm(snapshot.values());
    Ok(snapshot)
}

/// Reads the fields of each record that judging a message reads first,
/// one record after another in a tight loop (the decompressed device key
/// it keeps among them), and throws what it read away.
///
/// Why: a fleet's records lie all over memory, so each is a cache miss.
/// In the pass, a record's first read waits behind the previous message's
/// cryptography, and the misses come one at a time; here the loads do not
/// depend on each other, so the processor has many in flight at once, and
/// the pass then finds the records in cache (a batch's 256 records of
/// about 1.3 KB fit in a core's L2). Measured: docs/benchmarks.md, "The
/// AEAD's backends".
fn warm<'a>(entries: impl Iterator<Item = &'a SnapEntry>) {
    let mut acc = 0u64;
    for e in entries {
        let Some(r) = e.record.as_deref() else { continue };
        acc = acc
            .wrapping_add(u64::from(r.remembered_key().is_some()))
            .wrapping_add(u64::from(r.certificate.body.device_key[0]))
            .wrapping_add(r.certificate.body.issued_at)
            .wrapping_add(u64::from(r.session.epoch()) ^ u64::from(r.consent.state.version))
            .wrapping_add(u64::from(r.lifecycle == Lifecycle::Active) + u64::from(r.batchable_key));
    }
    core::hint::black_box(acc);
}

/// Whether `device`'s openers are throttled now (SPEC §9.2).
fn throttled(failures: &HashMap<DeviceId, OpenerFailures>, device: &DeviceId, now: u64) -> bool {
    failures.get(device).is_some_and(|f| now.saturating_sub(f.since) < OPENER_WINDOW && f.count >= OPENER_FAILURES)
}

/// What moved while a batch was verified with no transaction open.
#[derive(Debug, Clone, Copy)]
struct Moved {
    /// The store's commit count.
    commits: bool,
    /// The denylist's generation.
    denylist: bool,
}

/// Writes what the batch accepted and commits. Takes the stored messages
/// out of the results (nothing reads them afterwards).
fn commit<T: Transaction>(mut tx: T, results: &mut [PartResult<'_>]) -> Result<(), StoreError> {
    let mut windows = Vec::new();
    let mut messages = Vec::new();
    for r in results.iter_mut() {
        for st in r.states.values().filter(|s| s.dirty) {
            if let Some(rec) = &st.record {
                if st.record_changed {
                    tx.put_device(rec)?;
                }
                windows.push((rec.device, st.window));
            }
        }
        for (_, o) in &mut r.outcomes {
            if let Ok(done) = o {
                for e in &done.ledger {
                    tx.append_consent(&done.accepted.device, e)?;
                }
                messages.extend(done.message.take());
            }
        }
    }
    if windows.is_empty() {
        return Ok(());
    }
    tx.put_windows(&windows)?;
    tx.put_messages(messages)?;
    tx.commit()
}

/// Whether a ledger event may leave data that the retention policy erases at once.
const fn needs_erasure(event: ConsentEvent) -> bool {
    matches!(
        event,
        ConsentEvent::Narrowed | ConsentEvent::Changed | ConsentEvent::Withdrawn | ConsentEvent::ResetOnTransfer
    )
}

fn check_signature<'a, 'b>(
    pt: Plaintext<'a, 'b>,
    key: &VerifyingKey,
    batchable: bool,
    opens_epoch: bool,
    index: usize,
    sig: &mut SigMode<'_>,
) -> Result<Verified<'a, 'b>, IngestError> {
    let data = (pt.header.kind == Kind::USAGE || pt.header.kind == Kind::FAULT) && !opens_epoch;
    match sig {
        SigMode::Defer(verifier, idx) if data => {
            verifier.push(key, batchable, pt.header_bytes(), pt.body_bytes(), pt.signature());
            idx.push((index, key.to_bytes()));
            Ok(pt.into_verified())
        }
        SigMode::Known(known) if data => match known.get(&index) {
            Some((k, true)) if *k == key.to_bytes() => Ok(pt.into_verified()),
            Some((k, false)) if *k == key.to_bytes() => Err(IngestError::Unauthentic),
            _ => pt.verify(key).map_err(unauthentic),
        },
        _ => pt.verify(key).map_err(unauthentic),
    }
}

#[cfg(test)]
mod display_tests {
    use super::{Accepted, Event, IngestConfig, Ingestor, VendorKeys};
    use crate::consent::ContactDenial;
    use crate::message::{DecommissionReason, FirmwareVersion};
    use crate::vendor::SendError;
    use crate::wire::{DeviceId, Kind};

    #[test]
    fn events_in_plain_words() {
        let firmware = FirmwareVersion { major: 1, minor: 0, patch: 0, build: 1 };
        let registered = Event::Registered { relationship: 1, new_relationship: true, firmware, consent_version: 1 };
        assert_eq!(
            registered.to_string(),
            "registered (a new owner, relationship 1), firmware 1.0.0 (build 1), consent version 1"
        );
        let accepted = Accepted {
            device: DeviceId([7; 8]),
            counter: 3,
            kind: Kind::REGISTER,
            event: registered,
            opened_epoch: None,
            key_update_due: false,
        };
        assert_eq!(
            accepted.to_string(),
            "device 0707070707070707, message 3: registered (a new owner, relationship 1), \
             firmware 1.0.0 (build 1), consent version 1"
        );
        let opening = Accepted { opened_epoch: Some(2), ..accepted };
        assert!(opening.to_string().ends_with("consent version 1; it opened key epoch 2"), "{opening}");
        assert_eq!(
            Event::ConsentChanged { previous: 1, version: 2 }.to_string(),
            "consent changed from version 1 to 2"
        );
        assert_eq!(Event::ConsentRepeated { version: 2 }.to_string(), "consent version 2 received again (unchanged)");
        assert_eq!(
            Event::Transferred { at: 1_795_435_200 }.to_string(),
            "handed on to a new owner at 2026-11-23 12:00:00 UTC; consent reset to essential only"
        );
        let gone = Event::Decommissioned { at: 1_795_435_200, reason: DecommissionReason::Recycled };
        assert_eq!(gone.to_string(), "decommissioned at 2026-11-23 12:00:00 UTC (recycled)");
    }

    /// Every change to the denylist moves its generation, so that a batch
    /// verifying meanwhile judges again at its write.
    #[test]
    fn every_denylist_change_moves_its_generation() {
        let v = Ingestor::new(
            crate::vendor::MemoryStore::new(),
            VendorKeys::from_secrets(&[1; 32], &[2; 32]),
            IngestConfig::default(),
        );
        let mut seen = vec![v.denylist_generation()];
        v.revoke_device(DeviceId([3; 8]));
        seen.push(v.denylist_generation());
        v.revoke_key([4; 32]);
        seen.push(v.denylist_generation());
        v.reinstate_device(&DeviceId([3; 8]));
        seen.push(v.denylist_generation());
        v.reinstate_key(&[4; 32]);
        seen.push(v.denylist_generation());
        assert!(seen.windows(2).all(|w| w[0] != w[1]), "{seen:?}");
    }

    /// A record keeps its device key once a message needed it, shares it
    /// with its clones, never stores or compares it, and never offers it
    /// for a certificate other than the one it was taken from.
    #[test]
    #[cfg(any(feature = "redb", feature = "fjall"))]
    fn a_record_keeps_its_device_key_for_its_own_certificate_only() {
        use crate::consent::{CategorySet, DataCategory, Purpose};
        use crate::message::Register;
        use crate::vendor::sim::{SimDevice, consent, counter_usage};
        use crate::vendor::{MemoryStore, Store, Transaction};

        let vendor = VendorKeys::from_secrets(&[1; 32], &[2; 32]);
        let v =
            Ingestor::new(MemoryStore::new(), VendorKeys::from_secrets(&[1; 32], &[2; 32]), IngestConfig::default());
        let mut d = SimDevice::new(DeviceId([5; 8]), [6; 32], &vendor).unwrap();
        let grants = [(Purpose::USAGE_ANALYTICS, CategorySet::EMPTY.with(DataCategory::UsageCounters))];
        let firmware = FirmwareVersion { major: 1, minor: 0, patch: 0, build: 0 };
        let reg = Register {
            certificate: d.certificate().clone(),
            firmware,
            consent: consent(1, &grants, 0),
            transfer: None,
        };
        v.ingest(&d.seal(&reg).unwrap(), 10).unwrap();
        let shared = |v: &Ingestor<MemoryStore>| {
            let mut tx = v.store().begin().unwrap();
            tx.load_shared(&[DeviceId([5; 8])]).unwrap().remove(0).0.unwrap()
        };
        let registered = shared(&v).remembered_key().expect("a Register keeps the key its certificate gave");
        assert_eq!(registered.to_bytes(), d.certificate().body.device_key);
        v.ingest(&d.seal(&counter_usage(1, &[(0, 1)])).unwrap(), 10).unwrap();
        let record = shared(&v);
        let key = record.remembered_key().expect("still kept after a message that used it");
        assert_eq!(key.to_bytes(), d.certificate().body.device_key);
        // Not stored, not compared.
        let decoded: super::DeviceRecord =
            crate::vendor::kv::decode(&crate::vendor::kv::encode(&*record).unwrap(), "devices").unwrap();
        assert_eq!(decoded.remembered_key(), None);
        assert_eq!(decoded, *record);
        // A copy keeps it; a copy whose certificate changed does not offer it.
        let mut other = (*record).clone();
        assert_eq!(other.remembered_key(), Some(key));
        other.certificate.body.device_key = [9; 32];
        assert_eq!(other.remembered_key(), None);
        other.remember_key(&key);
        assert_eq!(other.remembered_key(), None, "a key for another certificate is not kept");
        // An empty memo refuses a key for another certificate, and still
        // takes its own afterwards.
        let wrong = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
        decoded.remember_key(&wrong);
        decoded.remember_key(&key);
        assert_eq!(decoded.remembered_key(), Some(key));
    }

    #[test]
    fn refused_notice_says_held_back_once() {
        let e = SendError::Refused(ContactDenial::QuietHours { until: 1_795_435_200 });
        assert_eq!(
            e.to_string(),
            "the owner's contact preferences forbid this notice now: quiet hours until 2026-11-23 12:00:00 UTC"
        );
    }
}
