//! The device session: carries the product from unregistered to
//! registered, through consent changes and changes of owner, to
//! decommissioned (SPEC.md §8).
//!
//! [`Device`] holds the identity, counter, keys and consent, and borrows
//! the outbox (its record buffer and the slots' headers, which the
//! firmware keeps in a `static`; the messages themselves stay in storage);
//! [`Device::registered`], [`Device::unregistered`] and
//! [`Device::decommissioned`] hand out a small typestate handle for what
//! the product may do in that [`Stage`] (or say which stage it is in), and
//! [`Device::handle`] the one for the current stage, to `match` on: an
//! [`Unregistered`] handle can only register, a
//! [`Registered`] one reports, changes consent, transfers and
//! decommissions, a [`Decommissioned`] one can only flush its outbox.
//!
//! Data leaves only as a consent-checked body: usage and fault reports
//! are sealed from [`Permitted`] bodies, which only a
//! [`crate::consent::Permit`] builds, and are checked again against the
//! consent held when sealed. A consent change purges queued reports the
//! new state no longer allows; a transfer purges every queued message but
//! the lifecycle ones.
//!
//! Persistence: every state change is written before it is relied upon,
//! in an order that makes a power cut at any write safe (SPEC.md §8): the
//! counter is reserved ahead of use; a key epoch is reserved before its
//! first message is sealed; a consent state is stored before the message
//! carrying it is queued, so a withdrawal takes effect on the device first.
//! The session keys are kept in storage (as the identity key is), so the
//! epoch survives a reboot and the messages queued under it stay valid.

use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::codec::fixed::Fixed;
use crate::codec::{self, Canonical};
use crate::consent::{
    BuildError, ConsentError, ConsentState, ContactDenial, Denial, EditError, FaultDraft, OwnerRequirement, Permit,
    Permitted, Purpose, Scope, SentConsent, SentNotice, SignedConsent, verify_receipt,
};
use crate::device::fault::FaultRecorder;
use crate::device::metrics::Window;
use crate::device::outbox::{Class, Dropped, Entry, ItemMeta, Outbox, OutboxError};
use crate::device::storage::{CounterRecord, RECORD_CONSENT, RECORD_SESSION, Storage, StorageError};
use crate::error::{CounterError, DecodeError, OpenError, ReplayError, SealError, VendorKeyError};
use crate::message::{
    Body, ConsentUpdate, Decommission, DecommissionReason, DeviceCertificate, Fault, FirmwareVersion, KeyUpdate,
    Notice, Receipt, Register, Transfer, UsageOf,
};
use crate::seal::counter::Counter;
use crate::seal::keys::{self, AeadKey, DeviceKey, SessionKeys, VendorPublicBytes, VendorPublicKeys};
use crate::seal::replay::ReplayWindow;
use crate::seal::{self as sealing, Envelope, Seal, SealBody};
use crate::wire::{DeviceId, Direction, Kind};

/// How many counter values one storage write reserves.
pub const COUNTER_BLOCK: u64 = 16;
/// After a lost counter, [`Device::recover`] restarts it at
/// `(epoch + 1) × RECOVERY_ERA` (2^40).
pub const RECOVERY_ERA: u64 = 1 << 40;
/// How many sent consent states the device remembers to check receipts.
pub const SENT_CONSENTS: usize = 4;
/// How many shown notices the device remembers for frequency caps.
pub const SHOWN_NOTICES: usize = 8;
/// Length of the session record.
pub const SESSION_RECORD_LEN: usize = 606;
/// The session record's format byte.
pub const SESSION_FORMAT: u8 = 4;
/// Length of a format-3 session record (before vendor keys were learned),
/// still read.
const SESSION_RECORD_V3_LEN: usize = 468;
/// Length of a format-2 session record (before the pending Transfer was
/// kept), still read.
const SESSION_RECORD_V2_LEN: usize = 358;

/// The storage record capacity a device needs for an outbox of `RECORD`-byte slots.
pub const fn storage_capacity(outbox_record: usize) -> usize {
    let c = if SignedConsent::MAX_ENCODED_LEN > SESSION_RECORD_LEN {
        SignedConsent::MAX_ENCODED_LEN
    } else {
        SESSION_RECORD_LEN
    };
    if outbox_record > c { outbox_record } else { c }
}

/// The number of storage records a device with `n` outbox slots uses.
pub const fn storage_records(n: usize) -> usize {
    crate::device::storage::RECORD_OUTBOX as usize + n
}

/// The documented default storage layout (docs/firmware.md, "Endurance"):
/// this many log sectors of 4 KiB (24 KiB) for a device with 4 outbox
/// slots of the largest message, one more than
/// [`storage_sectors`] requires. The busiest sector then takes about 0.010
/// erases per usage report and its ack (`tests/device_endurance.rs`).
pub const DEFAULT_STORAGE_SECTORS: u16 = 6;

/// Bytes a record of `len` bytes takes in the NOR log, for any program unit
/// up to 32 bytes (header and data each rounded up to 32).
const fn log_footprint(len: usize) -> usize {
    32 + len.div_ceil(32) * 32
}

/// The fewest sectors of `erase` bytes a [`crate::device::storage::NorStorage`]
/// needs for a device with `n` outbox slots of `outbox_record` bytes:
/// `2 + ceil((L + M) / (P − M))`, where `L` is the most live data (counter,
/// session, consent and `n` slots, each with its header), `M` the largest
/// record and `P` a sector less its header (docs/firmware.md, "Endurance").
/// `usize::MAX` when the largest record does not fit a sector. More sectors
/// than this spread the wear further.
///
/// ```
/// use spime::device::outbox::record_len;
/// use spime::device::session::storage_sectors;
/// use spime::message::MAX_SEALED_LEN;
/// assert_eq!(storage_sectors(4, record_len(MAX_SEALED_LEN), 4096), 5);
/// assert_eq!(storage_sectors(4, record_len(MAX_SEALED_LEN), 1024), usize::MAX);
/// ```
pub const fn storage_sectors(n: usize, outbox_record: usize, erase: usize) -> usize {
    let live = log_footprint(8)
        + log_footprint(SESSION_RECORD_LEN)
        + log_footprint(SignedConsent::MAX_ENCODED_LEN)
        + n * log_footprint(outbox_record);
    let largest = log_footprint(storage_capacity(outbox_record));
    let payload = erase.saturating_sub(32);
    if payload <= largest {
        return usize::MAX;
    }
    2 + (live + largest).div_ceil(payload - largest)
}

/// A device session operation failed.
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// Sealing failed (buffer, weak vendor key).
    #[error("seal: {0}")]
    Seal(#[from] SealError),
    /// The counter could not be reserved: nothing was sealed.
    #[error("counter: {0}")]
    Counter(#[from] CounterError),
    /// The outbox refused or could not store the message.
    #[error("outbox: {0}")]
    Outbox(#[from] OutboxError),
    /// Storage failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// The consent held does not allow the data.
    #[error("consent denies: {0}")]
    Denied(#[from] Denial),
    /// A report could not be built from the permit.
    #[error("build: {0}")]
    Build(#[from] BuildError),
    /// A consent state or receipt was refused.
    #[error("consent: {0}")]
    Consent(#[from] ConsentError),
    /// A consent state could not be derived (version exhausted).
    #[error("consent edit: {0}")]
    Edit(#[from] EditError),
    /// A vendor message could not be opened.
    #[error("open: {0}")]
    Open(#[from] OpenError),
    /// Encoding failed, or a stored record did not decode.
    #[error("decode: {0}")]
    Decode(#[from] DecodeError),
    /// A new consent state does not have a higher version than the held one.
    #[error("consent version {got} is not above the held version {held}")]
    StaleConsent {
        /// the version held
        held: u32,
        /// the version given
        got: u32,
    },
    /// The device has no session keys (it never registered): vendor
    /// messages cannot be opened.
    #[error("no session: the device is not registered")]
    NoSession,
    /// The key epoch space is used up.
    #[error("key epochs exhausted")]
    EpochExhausted,
    /// What was asked needs the device in another stage (from
    /// [`Device::registered`], [`Device::unregistered`],
    /// [`Device::decommissioned`]).
    #[error("the device is {actual}, but this needs it {expected}{}", stage_hint(*.expected, *.actual))]
    WrongStage {
        /// the stage needed
        expected: Stage,
        /// the stage the device is in
        actual: Stage,
    },
    /// The storage's records are smaller than the largest record the
    /// device writes (checked by [`Device::boot`]).
    #[error(
        "storage records hold at most {have} bytes, but this device writes records of up to {needed} bytes \
         (session {SESSION_RECORD_LEN}, consent {}, outbox slot {outbox}): \
         give the storage a record capacity of storage_capacity({outbox}) = {needed}",
        SignedConsent::MAX_ENCODED_LEN
    )]
    RecordsTooSmall {
        /// the largest record the device writes: [`storage_capacity`] of the outbox slot size
        needed: usize,
        /// the storage's record capacity
        have: usize,
        /// the outbox slot size (`RECORD`)
        outbox: usize,
    },
    /// The storage has fewer records than the device uses (checked by
    /// [`Device::boot`]).
    #[error(
        "storage has {have} records, but a device with {slots} outbox slots uses {needed} \
         (ids 0..{needed}): give the storage storage_records({slots}) = {needed} records"
    )]
    TooFewRecords {
        /// records the device uses: [`storage_records`] of the outbox slots
        needed: usize,
        /// records the storage has
        have: u16,
        /// outbox slots (`N`)
        slots: usize,
    },
    /// Messages sealed under the current epoch still wait in the outbox; the
    /// vendor refuses older epochs once a new one opens, so send them first.
    #[error("{0} queued messages must be sent before the keys are renewed")]
    OutboxNotEmpty(usize),
    /// The vendor already confirmed the registration (a vendor message
    /// arrived under its epoch): there is nothing to register again.
    #[error("the registration is confirmed; change consent instead of registering again")]
    AlreadyConfirmed,
    /// An authentic KeyUpdate certifies a key the device may not take
    /// (an older serial, outside its validity), or the device has no
    /// certificate authority key to check it with.
    #[error("vendor key: {0}")]
    VendorKey(#[from] VendorKeyError),
}

impl SessionError {
    /// The numeric code (SPEC.md §10.1): a wrapped error gives its own
    /// code; the session's own are local to the device: 155 StaleConsent,
    /// 156 NoSession, 157 EpochExhausted, 158 WrongStage, 159
    /// RecordsTooSmall, 160 TooFewRecords, 161 OutboxNotEmpty, 162
    /// AlreadyConfirmed. Firmware without `core::fmt` prints this number
    /// instead of the message.
    ///
    /// ```
    /// use spime::device::session::SessionError;
    /// use spime::error::OpenError;
    /// assert_eq!(SessionError::NoSession.code(), 156);
    /// assert_eq!(SessionError::Open(OpenError::Unauthentic).code(), 20);
    /// ```
    pub const fn code(&self) -> u16 {
        match self {
            SessionError::Seal(e) => e.code(),
            SessionError::Counter(e) => e.code(),
            SessionError::Outbox(e) => e.code(),
            SessionError::Storage(e) => e.code(),
            SessionError::Denied(e) => e.code(),
            SessionError::Build(e) => e.code(),
            SessionError::Consent(e) => e.code(),
            SessionError::Edit(e) => e.code(),
            SessionError::Open(e) => e.code(),
            SessionError::Decode(e) => e.code(),
            SessionError::VendorKey(e) => e.code(),
            SessionError::StaleConsent { .. } => 155,
            SessionError::NoSession => 156,
            SessionError::EpochExhausted => 157,
            SessionError::WrongStage { .. } => 158,
            SessionError::RecordsTooSmall { .. } => 159,
            SessionError::TooFewRecords { .. } => 160,
            SessionError::OutboxNotEmpty(_) => 161,
            SessionError::AlreadyConfirmed => 162,
        }
    }
}

/// What to do about being in the wrong stage, after the message.
const fn stage_hint(expected: Stage, actual: Stage) -> &'static str {
    match (expected, actual) {
        (Stage::Registered, Stage::Unregistered) => ": register it first",
        (_, Stage::Decommissioned) => ": it is out of service for good",
        _ => "",
    }
}

impl From<ReplayError> for SessionError {
    fn from(e: ReplayError) -> Self {
        SessionError::Open(OpenError::Replay(e))
    }
}

/// What a device is and whom it talks to: provisioned at manufacture.
///
/// The vendor's keys are [`VendorPublicKeys`] by default; a firmware short
/// of flash gives them as [`VendorPublicBytes`] (`Identity<VendorPublicBytes>`),
/// the bytes it was provisioned with, so the signing key is never
/// decompressed by curve25519-dalek (with the `salty` feature about 4 KB
/// less flash). The device holds them as bytes either way.
///
/// ```
/// use spime::device::Identity;
/// use spime::message::{CertificateBody, DeviceCertificate, FirmwareVersion};
/// use spime::seal::{DeviceKey, VendorKeys, VendorPublicBytes};
/// use spime::wire::DeviceId;
/// let vendor = VendorKeys::from_secrets(&[1; 32], &[2; 32]);
/// let key = DeviceKey::from_seed(DeviceId([3; 8]), &[4; 32]);
/// let body = CertificateBody {
///     device: key.device, device_key: key.public_bytes(), model: "kettle".try_into()?,
///     hardware_revision: 1, issued_at: 0, not_after: None,
/// };
/// let certificate = DeviceCertificate::issue(body, vendor.signing())?;
/// let firmware = FirmwareVersion { major: 1, minor: 0, patch: 0, build: 0 };
/// // the bytes a firmware holds as constants
/// let held = VendorPublicBytes {
///     signing: vendor.public().signing.to_bytes(),
///     key_agreement: vendor.public().key_agreement,
/// };
/// let id: Identity<VendorPublicBytes> = Identity { key, certificate, firmware, vendor: held };
/// # let _ = id;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Identity<V = VendorPublicKeys> {
    /// The device's key (and id).
    pub key: DeviceKey,
    /// The vendor's certificate for it.
    pub certificate: DeviceCertificate,
    /// The running firmware.
    pub firmware: FirmwareVersion,
    /// The vendor's public keys: [`VendorPublicKeys`] or [`VendorPublicBytes`].
    pub vendor: V,
}

impl<V: Into<VendorPublicBytes>> Identity<V> {
    /// The identity as the device holds it.
    fn into_held(self) -> Held {
        Held {
            key: keys::HeldKey::from(self.key),
            certificate: self.certificate,
            firmware: self.firmware,
            vendor: self.vendor.into(),
        }
    }
}

/// An [`Identity`] as the device holds it: the vendor's keys as bytes,
/// and the device key without room for a dalek copy (with `salty`).
#[derive(Debug)]
struct Held {
    key: keys::HeldKey,
    certificate: DeviceCertificate,
    firmware: FirmwareVersion,
    vendor: VendorPublicBytes,
}

/// Where the device is in its life: plain data, from [`Device::stage`].
/// To act on the device in a stage, take its handle:
/// [`Device::registered`] (and the like) or [`Device::handle`].
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Not registered (new, or after a change of owner).
    Unregistered,
    /// Registered with the vendor.
    Registered,
    /// Out of service: nothing more is sealed.
    Decommissioned,
}

impl core::fmt::Display for Stage {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Stage::Unregistered => "unregistered",
            Stage::Registered => "registered",
            Stage::Decommissioned => "decommissioned",
        })
    }
}

/// A vendor key learned from a KeyUpdate (SPEC.md §8.7): its serial and
/// public keys, as the session record keeps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LearnedKey {
    serial: u32,
    signing: [u8; 32],
    key_agreement: [u8; 32],
}

impl LearnedKey {
    fn put(key: Option<&LearnedKey>, r: &mut [u8], at: usize) {
        if let Some(k) = key {
            put(r, at, &[1]);
            put(r, at + 1, &k.serial.to_be_bytes());
            put(r, at + 5, &k.signing);
            put(r, at + 37, &k.key_agreement);
        }
    }

    fn get(r: &[u8], at: usize) -> Option<Option<LearnedKey>> {
        match r.get(at)? {
            0 => Some(None),
            1 => Some(Some(LearnedKey {
                serial: u32::from_be_bytes(array(r, at + 1)?),
                signing: array(r, at + 5)?,
                key_agreement: array(r, at + 37)?,
            })),
            _ => None,
        }
    }
}

/// The persisted session state (record [`RECORD_SESSION`]).
#[derive(Debug, Clone)]
struct SessionState {
    stage: Stage,
    /// The highest key epoch reserved.
    epoch: u32,
    keys: Option<SessionKeys>,
    replay: ReplayWindow,
    sent: heapless::Vec<SentConsent, SENT_CONSENTS>,
    shown: heapless::Vec<SentNotice, SHOWN_NOTICES>,
    receipted: u32,
    /// The ephemeral public key of the current epoch while the vendor has
    /// not confirmed it (SPEC §3.1): every message sealed meanwhile carries it.
    pending: Option<[u8; 32]>,
    /// The Transfer sealed at the last change of owner, carried by the next
    /// Register (SPEC.md §8.5, §9.3).
    pending_transfer: Option<Transfer>,
    /// The vendor key the current epoch was opened with, when it is not the
    /// provisioned one: it signs the vendor's messages of the epoch.
    epoch_vendor: Option<LearnedKey>,
    /// The newest vendor key learned from a KeyUpdate: the next epoch is
    /// opened with it (SPEC.md §8.7).
    latest_vendor: Option<LearnedKey>,
}

impl SessionState {
    const fn new() -> Self {
        SessionState {
            stage: Stage::Unregistered,
            epoch: 0,
            keys: None,
            replay: ReplayWindow::new(),
            sent: heapless::Vec::new(),
            shown: heapless::Vec::new(),
            receipted: 0,
            pending: None,
            pending_transfer: None,
            epoch_vendor: None,
            latest_vendor: None,
        }
    }

    /// Writes the record into `r` (all zero): it holds the session keys,
    /// so the caller wipes it. Into the caller's buffer, not returned: a
    /// returned record is copied on the stack.
    fn encode_into(&self, r: &mut [u8; SESSION_RECORD_LEN]) {
        r[0] = SESSION_FORMAT;
        r[1] = match self.stage {
            Stage::Unregistered => 0,
            Stage::Registered => 1,
            Stage::Decommissioned => 2,
        };
        r[2..6].copy_from_slice(&self.epoch.to_be_bytes());
        if let Some(k) = &self.keys {
            r[6] = 1;
            r[7..39].copy_from_slice(k.device_to_vendor.as_bytes());
            r[39..71].copy_from_slice(k.vendor_to_device.as_bytes());
        }
        let (highest, seen) = self.replay.parts();
        r[71..79].copy_from_slice(&highest.to_be_bytes());
        r[79..95].copy_from_slice(&seen.to_be_bytes());
        r[95] = u8::try_from(self.sent.len()).unwrap_or(0);
        for (i, s) in self.sent.iter().enumerate() {
            put(r.as_mut_slice(), 96 + i * 36, &s.version.to_be_bytes());
            put(r.as_mut_slice(), 100 + i * 36, &s.digest);
        }
        r[240] = u8::try_from(self.shown.len()).unwrap_or(0);
        for (i, s) in self.shown.iter().enumerate() {
            put(r.as_mut_slice(), 241 + i * 10, &s.purpose.id().to_be_bytes());
            put(r.as_mut_slice(), 243 + i * 10, &s.at.to_be_bytes());
        }
        r[321..325].copy_from_slice(&self.receipted.to_be_bytes());
        if let Some(e) = &self.pending {
            r[325] = 1;
            r[326..358].copy_from_slice(e);
        }
        if let Some(t) = &self.pending_transfer {
            r[358] = 1;
            r[359..367].copy_from_slice(&t.at.to_be_bytes());
            r[367..371].copy_from_slice(&t.consent_version.to_be_bytes());
            if let Some(p) = &t.owner {
                r[371] = 1;
                r[372..404].copy_from_slice(&p.owner_key);
                r[404..468].copy_from_slice(&p.signature.0);
            }
        }
        LearnedKey::put(self.epoch_vendor.as_ref(), r.as_mut_slice(), 468);
        LearnedKey::put(self.latest_vendor.as_ref(), r.as_mut_slice(), 537);
    }

    /// Whether a stored record of `len` bytes starting with `format` is one
    /// this firmware reads: format 4, or an earlier one (format 3: no
    /// learned vendor key; format 2: no pending Transfer either), whose
    /// missing fields read as zero once the record is padded with zeros.
    fn known_format(format: u8, len: usize) -> bool {
        matches!(
            (format, len),
            (SESSION_FORMAT, SESSION_RECORD_LEN) | (3, SESSION_RECORD_V3_LEN) | (2, SESSION_RECORD_V2_LEN)
        )
    }

    /// Decodes a record of a [known format](SessionState::known_format),
    /// padded with zeros to the full length, into `self`, field by field
    /// (a decoded state returned by value would be copied on the stack).
    /// On `None`, `self` is partly overwritten: reset it.
    fn decode_into(&mut self, r: &[u8; SESSION_RECORD_LEN]) -> Option<()> {
        let stage = match r[1] {
            0 => Stage::Unregistered,
            1 => Stage::Registered,
            2 => Stage::Decommissioned,
            _ => return None,
        };
        let epoch = u32::from_be_bytes(r[2..6].try_into().ok()?);
        let keys = match r[6] {
            0 => None,
            1 => Some(SessionKeys {
                epoch,
                device_to_vendor: AeadKey::from_bytes(r[7..39].try_into().ok()?),
                vendor_to_device: AeadKey::from_bytes(r[39..71].try_into().ok()?),
            }),
            _ => return None,
        };
        let replay = ReplayWindow::from_parts(
            u64::from_be_bytes(r[71..79].try_into().ok()?),
            u128::from_be_bytes(r[79..95].try_into().ok()?),
        );
        self.stage = stage;
        self.epoch = epoch;
        self.keys = keys;
        self.replay = replay;
        self.sent.clear();
        for i in 0..usize::from(r[95]) {
            let at = 96 + i * 36;
            let s = SentConsent { version: u32::from_be_bytes(array(r, at)?), digest: array(r, at + 4)? };
            self.sent.push(s).ok()?;
        }
        self.shown.clear();
        for i in 0..usize::from(r[240]) {
            let at = 241 + i * 10;
            let purpose = Purpose::from_id(u16::from_be_bytes(array(r, at)?)).ok()?;
            self.shown.push(SentNotice { purpose, at: u64::from_be_bytes(array(r, at + 2)?) }).ok()?;
        }
        let receipted = u32::from_be_bytes(r[321..325].try_into().ok()?);
        let pending = match r[325] {
            0 => None,
            1 => Some(array(r, 326)?),
            _ => return None,
        };
        let pending_transfer = match r[358] {
            0 => None,
            1 => Some(Transfer {
                at: u64::from_be_bytes(array(r, 359)?),
                consent_version: u32::from_be_bytes(array(r, 367)?),
                owner: match r[371] {
                    0 => None,
                    1 => Some(crate::consent::OwnerProof {
                        owner_key: array(r, 372)?,
                        signature: crate::codec::Bytes64(array(r, 404)?),
                    }),
                    _ => return None,
                },
            }),
            _ => return None,
        };
        self.receipted = receipted;
        self.pending = pending;
        self.pending_transfer = pending_transfer;
        self.epoch_vendor = LearnedKey::get(r, 468)?;
        self.latest_vendor = LearnedKey::get(r, 537)?;
        Some(())
    }
}

/// Copies `bytes` into `r` at `at` (in range by construction of the layout).
fn put(r: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(d) = r.get_mut(at..at + bytes.len()) {
        d.copy_from_slice(bytes);
    }
}

/// `M` bytes of `r` from `at`, if in range.
fn array<const M: usize>(r: &[u8], at: usize) -> Option<[u8; M]> {
    r.get(at..at + M)?.try_into().ok()
}

/// A device: identity, persisted counter, session, consent and outbox,
/// over a [`Storage`] `S`, with an outbox of `N` slots of `RECORD` bytes
/// (see [`crate::device::outbox::record_len`]).
///
/// The outbox (one `RECORD`-byte buffer and `N` record headers; the
/// messages stay in storage) is the caller's (a `static`, typically, as
/// `Outbox::new()` is `const`): the device itself is about 2 KiB. Messages
/// are sealed straight into the outbox's record buffer, so sealing needs
/// no envelope-sized buffer on the stack.
///
/// ```
/// use spime::device::outbox::{Outbox, record_len};
/// use spime::device::session::{Device, Identity, Stage, storage_capacity, storage_records};
/// use spime::device::storage::{NorStorage, SimFlash};
/// use spime::message::{CertificateBody, DeviceCertificate, FirmwareVersion, MAX_SEALED_LEN};
/// use spime::seal::{DeviceKey, VendorKeys};
/// use spime::wire::DeviceId;
/// const REC: usize = record_len(MAX_SEALED_LEN);
/// let vendor = VendorKeys::from_secrets(&[1; 32], &[2; 32]);
/// let key = DeviceKey::from_seed(DeviceId([3; 8]), &[4; 32]);
/// let body = CertificateBody {
///     device: key.device, device_key: key.public().to_bytes(), model: "kettle".try_into()?,
///     hardware_revision: 1, issued_at: 0, not_after: None,
/// };
/// let certificate = DeviceCertificate::issue(body, vendor.signing())?;
/// let firmware = FirmwareVersion { major: 1, minor: 0, patch: 0, build: 0 };
/// let id = Identity { key, certificate, firmware, vendor: vendor.public() };
/// let flash: SimFlash<{ 6 * 4096 }, 4096> = SimFlash::new();
/// let storage = NorStorage::new(flash, 0, 6, storage_records(4) as u16, storage_capacity(REC))?;
/// let mut outbox: Outbox<4, REC> = Outbox::new();
/// let device = Device::boot(id, storage, &mut outbox)?;
/// assert_eq!(device.stage(), Stage::Unregistered);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Device<'o, S: Storage, const N: usize, const RECORD: usize> {
    id: Held,
    /// The vendor certificate authority's key, if provisioned: KeyUpdates
    /// are checked with it (SPEC.md §8.7).
    authority: Option<[u8; 32]>,
    counter: Counter<CounterRecord<S>>,
    state: SessionState,
    consent: Option<SignedConsent>,
    outbox: &'o mut Outbox<N, RECORD>,
}

/// The handle for what a device may do in its current [`Stage`], from
/// [`Device::handle`]; to ask for one stage, use [`Device::registered`],
/// [`Device::unregistered`] or [`Device::decommissioned`].
#[derive(Debug)]
pub enum StageHandle<'d, 'o, S: Storage, const N: usize, const RECORD: usize> {
    /// It must register first.
    Unregistered(Unregistered<'d, 'o, S, N, RECORD>),
    /// It is registered.
    Registered(Registered<'d, 'o, S, N, RECORD>),
    /// It is out of service.
    Decommissioned(Decommissioned<'d, 'o, S, N, RECORD>),
}

/// The former name of [`StageHandle`].
#[deprecated(since = "0.1.0", note = "renamed to `StageHandle` (it is easily confused with `Stage`)")]
pub type Phase<'d, 'o, S, const N: usize, const RECORD: usize> = StageHandle<'d, 'o, S, N, RECORD>;

/// A device that is not registered: it can only register.
#[derive(Debug)]
pub struct Unregistered<'d, 'o, S: Storage, const N: usize, const RECORD: usize> {
    dev: &'d mut Device<'o, S, N, RECORD>,
}

/// A registered device.
#[derive(Debug)]
pub struct Registered<'d, 'o, S: Storage, const N: usize, const RECORD: usize> {
    dev: &'d mut Device<'o, S, N, RECORD>,
}

/// A decommissioned device: it seals nothing more.
#[derive(Debug)]
pub struct Decommissioned<'d, 'o, S: Storage, const N: usize, const RECORD: usize> {
    dev: &'d mut Device<'o, S, N, RECORD>,
}

/// What to do with a notice the vendor sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoticeDecision {
    /// The owner's contact preferences allow it now: show it.
    Show(Notice),
    /// Held back, with the reason (the message itself was authentic).
    Withhold {
        /// the notice
        notice: Notice,
        /// why it may not be shown now
        reason: ContactDenial,
    },
}

impl<'o, S: Storage, const N: usize, const RECORD: usize> Device<'o, S, N, RECORD> {
    /// Starts the device from storage: counter, session, consent and
    /// outbox as they were persisted (a fresh storage gives a fresh,
    /// unregistered device).
    ///
    /// # Errors
    /// [`SessionError::RecordsTooSmall`] or [`SessionError::TooFewRecords`]
    /// when the storage cannot hold what the device will write (see
    /// [`storage_capacity`] and [`storage_records`]), before anything is
    /// read or written; [`SessionError::Storage`] or
    /// [`SessionError::Counter`] when storage fails;
    /// [`StorageError::Invalid`] for a session or consent record that does
    /// not decode.
    #[inline(never)]
    pub fn boot<V: Into<VendorPublicBytes>>(
        id: Identity<V>,
        storage: S,
        outbox: &'o mut Outbox<N, RECORD>,
    ) -> Result<Self, SessionError> {
        check_layout::<S, N, RECORD>(&storage)?;
        let counter = Counter::open(CounterRecord(storage), COUNTER_BLOCK)?;
        let id = id.into_held();
        let mut dev = Device { id, authority: None, counter, state: SessionState::new(), consent: None, outbox };
        dev.start()?;
        Ok(dev)
    }

    /// [`Device::boot`] into `slot`, where the device then lives (a
    /// `static`, or a local of the firmware's main loop): the device (about
    /// 2 KiB) is built in place rather than returned through the stack,
    /// which saves a copy of it on the stack of every caller up to `slot`.
    ///
    /// ```
    /// # use spime::device::outbox::{Outbox, record_len};
    /// # use spime::device::session::{Device, Identity, Stage, storage_capacity, storage_records};
    /// # use spime::device::storage::{NorStorage, SimFlash};
    /// # use spime::message::{CertificateBody, DeviceCertificate, FirmwareVersion, MAX_SEALED_LEN};
    /// # use spime::seal::{DeviceKey, VendorKeys};
    /// # use spime::wire::DeviceId;
    /// # const REC: usize = record_len(MAX_SEALED_LEN);
    /// # let vendor = VendorKeys::from_secrets(&[1; 32], &[2; 32]);
    /// # let key = DeviceKey::from_seed(DeviceId([3; 8]), &[4; 32]);
    /// # let body = CertificateBody {
    /// #     device: key.device, device_key: key.public().to_bytes(), model: "kettle".try_into()?,
    /// #     hardware_revision: 1, issued_at: 0, not_after: None,
    /// # };
    /// # let certificate = DeviceCertificate::issue(body, vendor.signing())?;
    /// # let firmware = FirmwareVersion { major: 1, minor: 0, patch: 0, build: 0 };
    /// # let id = Identity { key, certificate, firmware, vendor: vendor.public() };
    /// # let flash: SimFlash<{ 6 * 4096 }, 4096> = SimFlash::new();
    /// # let storage = NorStorage::new(flash, 0, 6, storage_records(4) as u16, storage_capacity(REC))?;
    /// let mut outbox: Outbox<4, REC> = Outbox::new();
    /// let mut slot = None;
    /// let device = Device::boot_in(&mut slot, id, storage, &mut outbox)?;
    /// assert_eq!(device.stage(), Stage::Unregistered);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`Device::boot`]; `slot` may then hold a device that did not
    /// finish starting: do not use it.
    pub fn boot_in<'s, V: Into<VendorPublicBytes>>(
        slot: &'s mut Option<Self>,
        id: Identity<V>,
        storage: S,
        outbox: &'o mut Outbox<N, RECORD>,
    ) -> Result<&'s mut Self, SessionError> {
        Self::place(slot, id.into_held(), storage, outbox)?;
        let Some(dev) = slot.as_mut() else { return Err(SessionError::NoSession) };
        dev.start()?;
        Ok(dev)
    }

    /// Opens the counter and puts the device, not yet loaded, in `slot`.
    /// Out of line, so its temporaries are gone before the loading starts.
    #[inline(never)]
    fn place(
        slot: &mut Option<Self>,
        id: Held,
        storage: S,
        outbox: &'o mut Outbox<N, RECORD>,
    ) -> Result<(), SessionError> {
        check_layout::<S, N, RECORD>(&storage)?;
        let counter = Counter::open(CounterRecord(storage), COUNTER_BLOCK)?;
        *slot = Some(Device { id, authority: None, counter, state: SessionState::new(), consent: None, outbox });
        Ok(())
    }

    /// Loads the session, consent and outbox, checks the counter and
    /// finishes an interrupted purge.
    #[inline(never)]
    fn start(&mut self) -> Result<(), SessionError> {
        let dev = self;
        dev.load_session()?;
        dev.load_consent()?;
        let storage = &mut dev.counter.store_mut().0;
        dev.outbox.reload(storage)?;
        // The counter first: it is checked against the highest counter queued,
        // which the purge below may remove.
        dev.check_counter()?;
        // A purge interrupted by a failed write (or a power cut) is finished
        // now: nothing the consent held denies stays queued.
        let consent = dev.consent.as_ref().map(|c| &c.state);
        dev.outbox.purge(&mut dev.counter.store_mut().0, |m| match m.class() {
            Class::Lifecycle | Class::Consent => true,
            Class::Usage | Class::Fault => consent.is_some_and(|c| c.check_scope(&m.scope(), 0).is_ok()),
        })?;
        Ok(())
    }

    /// Cross-checks the counter with what was sealed (SPEC.md §8.1): a
    /// counter never stored while keys are held or messages are queued was
    /// lost; a queued message at or above it means the store fell back
    /// to an old copy unnoticed, so the counter moves past that block.
    fn check_counter(&mut self) -> Result<(), SessionError> {
        if self.counter.is_lost() {
            return Ok(());
        }
        let highest = self.outbox.highest_counter();
        if self.counter.peek() == 0 && (self.state.keys.is_some() || highest.is_some()) {
            self.counter.mark_lost();
            return Ok(());
        }
        if let Some(c) = highest {
            let floor = c.checked_add(1 + COUNTER_BLOCK).ok_or(CounterError::Exhausted)?;
            if c >= self.counter.peek() {
                self.counter.raise(floor)?;
            }
        }
        Ok(())
    }

    /// Whether the device is registered but holds no session keys (after
    /// [`Device::recover`], or a cut during [`Registered::renew_keys`]): it
    /// must open a new epoch with [`Registered::renew_keys`] before it seals
    /// again.
    pub const fn needs_key_renewal(&self) -> bool {
        matches!(self.state.stage, Stage::Registered) && self.state.keys.is_none()
    }

    /// Whether the message counter was lost to storage damage (no intact
    /// copy survives although values were used): nothing can be sealed
    /// until [`Device::recover`].
    pub const fn counter_lost(&self) -> bool {
        self.counter.is_lost()
    }

    /// Recovers from a lost counter (SPEC.md §8.1): drops the session keys
    /// and moves the counter to `(epoch + 1) × 2^40` (above any value used,
    /// as no epoch sees 2^40 messages) or past the queued messages. A
    /// registered device then sends what is queued (sealed before, under
    /// the old epoch) and opens a new epoch with [`Registered::renew_keys`]
    /// before it seals again; an unregistered one opens it when it
    /// registers. The vendor accepts both: the counter only moves forward,
    /// and a new epoch opened with the registered key is key renewal (§3.1,
    /// §9.2). Does nothing when the counter is not lost.
    ///
    /// # Errors
    /// Storage errors (run it again after a reboot: it is idempotent);
    /// [`CounterError::Exhausted`] past epoch 2^24.
    pub fn recover(&mut self) -> Result<(), SessionError> {
        if !self.counter.is_lost() {
            return Ok(());
        }
        // The keys go first: a cut after this leaves a lost counter and no keys.
        if self.state.keys.is_some() || self.state.pending.is_some() {
            self.state.keys = None;
            self.state.pending = None;
            self.save_state()?;
        }
        let era = (u64::from(self.state.epoch) + 1).checked_mul(RECOVERY_ERA).ok_or(CounterError::Exhausted)?;
        let queued = self.outbox.highest_counter().map_or(0, |c| c.saturating_add(1));
        self.counter.restart(era.max(queued))?;
        Ok(())
    }

    // Loading is split into out-of-line steps so their buffers do not
    // share one large stack frame.
    #[inline(never)]
    fn load_session(&mut self) -> Result<(), SessionError> {
        let mut buf = Zeroizing::new([0u8; SESSION_RECORD_LEN]);
        let Some(len) = self.storage().read(RECORD_SESSION, buf.as_mut_slice())?.map(<[u8]>::len) else {
            return Ok(());
        };
        // An earlier format's record is padded with zeros (its missing fields).
        if let Some(tail) = buf.get_mut(len..) {
            tail.fill(0);
        }
        if !SessionState::known_format(buf.first().copied().unwrap_or(0), len) || self.state.decode_into(&buf).is_none()
        {
            self.state = SessionState::new();
            return Err(StorageError::Invalid(RECORD_SESSION).into());
        }
        Ok(())
    }

    /// Decodes the stored consent in place, into `self.consent`: a
    /// `SignedConsent` moved through the decoder's results would take
    /// several copies of its 728 bytes on the stack.
    #[inline(never)]
    fn load_consent(&mut self) -> Result<(), SessionError> {
        let mut buf = [0u8; SignedConsent::MAX_ENCODED_LEN];
        let storage = &mut self.counter.store_mut().0;
        if let Some(r) = storage.read(RECORD_CONSENT, &mut buf)? {
            let empty = SignedConsent { state: ConsentState::essential_only(0, 0, [0; 32]), owner: None };
            let place = self.consent.insert(empty);
            if codec::fixed::decode_in_place(r, place).is_err() {
                self.consent = None;
                return Err(StorageError::Invalid(RECORD_CONSENT).into());
            }
        }
        Ok(())
    }

    /// The handle for what the device may do in its current stage, to
    /// `match` on.
    pub fn handle(&mut self) -> StageHandle<'_, 'o, S, N, RECORD> {
        match self.state.stage {
            Stage::Unregistered => StageHandle::Unregistered(Unregistered { dev: self }),
            Stage::Registered => StageHandle::Registered(Registered { dev: self }),
            Stage::Decommissioned => StageHandle::Decommissioned(Decommissioned { dev: self }),
        }
    }

    /// The former name of [`Device::handle`].
    #[deprecated(since = "0.1.0", note = "renamed to `handle`; or use `registered()`, `unregistered()`")]
    pub fn phase(&mut self) -> StageHandle<'_, 'o, S, N, RECORD> {
        self.handle()
    }

    /// The registered device's handle: reports, consent changes, transfer,
    /// decommissioning.
    ///
    /// # Errors
    /// [`SessionError::WrongStage`] when the device is unregistered or
    /// decommissioned, naming the stage it is in.
    pub fn registered(&mut self) -> Result<Registered<'_, 'o, S, N, RECORD>, SessionError> {
        match self.handle() {
            StageHandle::Registered(r) => Ok(r),
            other => Err(wrong(Stage::Registered, &other)),
        }
    }

    /// The unregistered device's handle: it can register.
    ///
    /// # Errors
    /// [`SessionError::WrongStage`] when the device is registered or
    /// decommissioned, naming the stage it is in.
    pub fn unregistered(&mut self) -> Result<Unregistered<'_, 'o, S, N, RECORD>, SessionError> {
        match self.handle() {
            StageHandle::Unregistered(u) => Ok(u),
            other => Err(wrong(Stage::Unregistered, &other)),
        }
    }

    /// The decommissioned device's handle.
    ///
    /// # Errors
    /// [`SessionError::WrongStage`] when the device is still in service,
    /// naming the stage it is in.
    pub fn decommissioned(&mut self) -> Result<Decommissioned<'_, 'o, S, N, RECORD>, SessionError> {
        match self.handle() {
            StageHandle::Decommissioned(d) => Ok(d),
            other => Err(wrong(Stage::Decommissioned, &other)),
        }
    }

    /// The current stage.
    pub const fn stage(&self) -> Stage {
        self.state.stage
    }

    /// The device id.
    pub const fn device_id(&self) -> DeviceId {
        self.id.key.device
    }

    /// The consent held (none before the first registration).
    pub const fn consent(&self) -> Option<&SignedConsent> {
        self.consent.as_ref()
    }

    /// The current key epoch (0 before the first registration).
    pub const fn epoch(&self) -> u32 {
        self.state.epoch
    }

    /// Whether the vendor has confirmed the current epoch: a vendor message
    /// (Receipt or Notice) sealed under it was opened (SPEC §3.1). Until
    /// then every message carries the epoch's ephemeral key, so a refused
    /// opener never strands the device.
    pub const fn epoch_confirmed(&self) -> bool {
        self.state.pending.is_none()
    }

    /// The highest consent version the vendor sent a valid receipt for (0: none).
    pub const fn receipted_version(&self) -> u32 {
        self.state.receipted
    }

    /// Gives the device the vendor certificate authority's public key
    /// (`VCA.pub`, provisioned at manufacture like [`Identity`]; pass it at
    /// every boot). With it the device learns new vendor keys from
    /// KeyUpdates ([`Device::open_key_update`]) and so keeps working when
    /// the vendor rotates its keys; without it, it keeps the key it was
    /// provisioned with (SPEC.md §8.7).
    ///
    /// ```
    /// # fn f<S: spime::device::Storage, const N: usize, const R: usize>(
    /// #     device: spime::device::Device<'_, S, N, R>, ca: ed25519_dalek::VerifyingKey) {
    /// let device = device.with_key_authority(ca);
    /// assert_eq!(device.vendor_key_serial(), 0); // nothing learned yet
    /// # }
    /// ```
    #[must_use]
    pub fn with_key_authority(mut self, authority: ed25519_dalek::VerifyingKey) -> Self {
        self.authority = Some(authority.to_bytes());
        self
    }

    /// [`Device::with_key_authority`] with the key as the 32 bytes the
    /// device was provisioned with: nothing is decompressed until a
    /// KeyUpdate is checked (with the `salty` feature, without
    /// curve25519-dalek). A key that is not the canonical encoding of a
    /// point of large order refuses every KeyUpdate
    /// (`OpenError::BadCertificate`).
    ///
    /// ```
    /// # fn f<S: spime::device::Storage, const N: usize, const R: usize>(
    /// #     device: spime::device::Device<'_, S, N, R>, ca: [u8; 32]) {
    /// let device = device.with_key_authority_bytes(ca);
    /// assert_eq!(device.vendor_key_serial(), 0);
    /// # }
    /// ```
    #[must_use]
    pub fn with_key_authority_bytes(mut self, authority: [u8; 32]) -> Self {
        self.authority = Some(authority);
        self
    }

    /// The serial of the newest vendor key the device holds: 0 for the key
    /// it was provisioned with, else the serial of the last KeyUpdate it took.
    pub fn vendor_key_serial(&self) -> u32 {
        self.state.latest_vendor.map_or(0, |k| k.serial)
    }

    /// Whether the device learned a vendor key that its current epoch does
    /// not use yet: open a new epoch ([`Registered::renew_keys`], once the
    /// outbox is empty) so the vendor can retire the old key.
    pub fn vendor_key_pending(&self) -> bool {
        self.state.stage == Stage::Registered
            && self.state.latest_vendor.is_some()
            && self.state.latest_vendor != self.state.epoch_vendor
    }

    /// The public keys the next epoch is opened with: the newest learned, or
    /// the provisioned ones.
    fn latest_vendor(&self) -> Result<VendorPublicBytes, SessionError> {
        match &self.state.latest_vendor {
            None => Ok(self.id.vendor),
            Some(k) if crate::seal::is_strong_key(&k.signing) => {
                Ok(VendorPublicBytes { signing: k.signing, key_agreement: k.key_agreement })
            }
            Some(_) => Err(OpenError::BadCertificate.into()),
        }
    }

    /// The key that signs the vendor's messages of the current epoch: the
    /// one the epoch was opened with.
    fn epoch_vendor_signing(&self) -> &[u8; 32] {
        match &self.state.epoch_vendor {
            None => &self.id.vendor.signing,
            Some(k) => &k.signing,
        }
    }

    /// The next message to send: the oldest of the most important class,
    /// read from storage into the outbox's record buffer. Cut it with
    /// [`crate::wire::chunk::Chunks`] (message id: the low 16 bits of
    /// `meta.counter`), send it, then [`Device::ack`] it.
    ///
    /// A queued Usage or Fault the consent held denies is never handed
    /// out, even when the purge that should have removed it failed (a
    /// storage write error): it waits for the next purge, which every
    /// boot and consent change runs.
    ///
    /// # Errors
    /// [`SessionError::Outbox`] when its record cannot be read.
    pub fn next_message(&mut self) -> Result<Option<Entry<'_>>, SessionError> {
        let consent = self.consent.as_ref();
        let Some(counter) = self.outbox.iter().find(|m| may_leave(consent, m)).map(|m| m.counter) else {
            return Ok(None);
        };
        Ok(self.outbox.read(&mut self.counter.store_mut().0, counter)?)
    }

    /// What is queued, in send order; the envelopes stay in storage (read
    /// one with [`Device::message`]).
    pub fn queued(&self) -> impl Iterator<Item = ItemMeta> + '_ {
        self.outbox.iter()
    }

    /// The queued message with envelope counter `counter`, read from
    /// storage (whether or not the consent held lets it leave: for
    /// inspection; send what [`Device::next_message`] gives).
    ///
    /// # Errors
    /// [`SessionError::Outbox`] when its record cannot be read.
    pub fn message(&mut self, counter: u64) -> Result<Option<Entry<'_>>, SessionError> {
        Ok(self.outbox.read(&mut self.counter.store_mut().0, counter)?)
    }

    /// Every queued message and its envelope, in send order (for tests
    /// and tools on a host; a firmware sends one at a time with
    /// [`Device::next_message`]).
    ///
    /// # Errors
    /// As [`Device::message`].
    #[cfg(feature = "alloc")]
    pub fn queued_envelopes(&mut self) -> Result<alloc::vec::Vec<(ItemMeta, alloc::vec::Vec<u8>)>, SessionError> {
        let metas: alloc::vec::Vec<ItemMeta> = self.outbox.iter().collect();
        let mut out = alloc::vec::Vec::with_capacity(metas.len());
        for m in metas {
            if let Some(e) = self.message(m.counter)? {
                out.push((m, e.envelope.to_vec()));
            }
        }
        Ok(out)
    }

    /// Removes a delivered message (by envelope counter). Returns whether it was queued.
    ///
    /// # Errors
    /// [`SessionError::Outbox`] when storage fails.
    pub fn ack(&mut self, counter: u64) -> Result<bool, SessionError> {
        Ok(self.outbox.ack(&mut self.counter.store_mut().0, counter)?)
    }

    /// What the outbox dropped so far.
    pub const fn dropped(&self) -> Dropped {
        self.outbox.dropped()
    }

    /// The storage, given back (for tests that simulate a power cut).
    pub fn into_storage(self) -> S {
        self.counter.into_store().0
    }

    fn storage(&mut self) -> &mut S {
        &mut self.counter.store_mut().0
    }

    fn save_state(&mut self) -> Result<(), SessionError> {
        let mut rec = Zeroizing::new([0u8; SESSION_RECORD_LEN]);
        self.state.encode_into(&mut rec);
        self.storage().write(RECORD_SESSION, rec.as_slice())?;
        Ok(())
    }

    fn save_consent(&mut self, consent: &SignedConsent) -> Result<(), SessionError> {
        let mut buf = [0u8; SignedConsent::MAX_ENCODED_LEN];
        let bytes = codec::fixed::encode(consent, &mut buf)?;
        self.storage().write(RECORD_CONSENT, bytes)?;
        Ok(())
    }

    /// Reserves epoch `n + 1` and stores the reservation without keys (the
    /// stored keys are read back as the stored epoch's, so a cut can only
    /// skip an epoch, never agree one twice), then agrees the epoch's keys
    /// and holds its ephemeral key as unconfirmed (SPEC §3.1). The keys are
    /// in memory only until the caller's next `save_state`.
    #[inline(never)]
    fn open_epoch<R: CryptoRng + ?Sized>(&mut self, rng: &mut R) -> Result<u32, SessionError> {
        let epoch = self.state.epoch.checked_add(1).ok_or(SessionError::EpochExhausted)?;
        self.state.epoch = epoch;
        self.state.keys = None;
        self.state.pending = None;
        self.save_state()?;
        // The newest vendor key the device holds opens the epoch and signs
        // the vendor's messages under it (SPEC §8.7).
        let vendor = self.latest_vendor()?;
        let (keys, eph) = keys::device_start_epoch_kx(rng, &self.id.key.device, epoch, &vendor.key_agreement)?;
        self.state.keys = Some(keys);
        self.state.pending = Some(eph);
        self.state.epoch_vendor = self.state.latest_vendor;
        Ok(epoch)
    }

    /// Seals `body` under the current keys with a fresh counter value and
    /// queues it. While the epoch is unconfirmed its ephemeral key goes in
    /// the header (SPEC §3.1).
    fn seal_queue<B: Body + Fixed>(&mut self, body: &B, scope: Scope) -> Result<u64, SessionError> {
        self.seal_queue_as(B::KIND, body, scope)
    }

    /// [`Device::seal_queue`] of a value that encodes exactly as a body of
    /// `kind` (a borrowed view of a large body: no copy of it on the stack).
    fn seal_queue_as<T: Fixed>(&mut self, kind: Kind, body: &T, scope: Scope) -> Result<u64, SessionError> {
        seal_into(&self.id, &self.state, &mut self.counter, self.outbox, kind, body, scope)
    }

    /// The scope of a non-data message (Essential, no categories).
    fn control_scope(&self) -> Scope {
        Scope {
            purpose: Purpose::ESSENTIAL,
            categories: crate::consent::CategorySet::EMPTY,
            location: crate::consent::LocationPrecision::None,
            consent_version: self.consent.as_ref().map_or(0, |c| c.state.version),
        }
    }

    /// Seals the consent held in a Consent message. A `ConsentUpdate`
    /// encodes as its one field, so the held state is sealed as it is,
    /// not copied into a body first.
    fn announce_held(&mut self) -> Result<u64, SessionError> {
        let scope = self.control_scope();
        let Some(consent) = self.consent.as_ref() else { return Err(SessionError::NoSession) };
        let kind = <ConsentUpdate as Body>::KIND;
        seal_into(&self.id, &self.state, &mut self.counter, self.outbox, kind, consent, scope)
    }

    fn remember_sent(&mut self, consent: &SignedConsent) -> Result<(), SessionError> {
        let sent = SentConsent::of(consent)?;
        self.remember(sent);
        Ok(())
    }

    fn remember(&mut self, sent: SentConsent) {
        self.state.sent.retain(|s| s.version != sent.version);
        if self.state.sent.is_full() {
            let _ = crate::list::remove(&mut self.state.sent, 0);
        }
        let _ = self.state.sent.push(sent);
    }

    /// Opens a vendor message of kind `B`: direction, device, replay
    /// window, decryption, the vendor's signature, then the body. The
    /// counter is not yet accepted.
    fn open_vendor<B: Body + Fixed>(&self, bytes: &[u8]) -> Result<(B, u64), SessionError> {
        let mut buf = [0u8; Notice::MAX_SEALED_LEN];
        let (body, counter) = self.open_vendor_body(bytes, B::KIND, &mut buf)?;
        let body = codec::fixed::decode::<B>(body).map_err(OpenError::Decode)?;
        Ok((body, counter))
    }

    /// [`Device::open_vendor`] up to the verified body bytes, once for
    /// every kind (measured on the QEMU firmware: inlined into the Receipt
    /// and the Notice step each, it was 656 B of flash more).
    #[inline(never)]
    fn open_vendor_body<'b>(
        &self,
        bytes: &[u8],
        kind: Kind,
        buf: &'b mut [u8; Notice::MAX_SEALED_LEN],
    ) -> Result<(&'b [u8], u64), SessionError> {
        let env = Envelope::parse(bytes)?;
        let h = env.header;
        if h.kind.direction() != Direction::VendorToDevice {
            return Err(OpenError::WrongDirection(h.kind).into());
        }
        if h.kind != kind {
            return Err(OpenError::WrongKind { expected: kind, got: h.kind }.into());
        }
        if h.device != self.id.key.device {
            return Err(OpenError::WrongDevice.into());
        }
        let keys = self.state.keys.as_ref().ok_or(SessionError::NoSession)?;
        self.state.replay.check(h.counter)?;
        let pt = env.decrypt(keys, buf)?;
        let v = pt.verify_key_bytes(self.epoch_vendor_signing())?;
        Ok((v.body_bytes(), h.counter))
    }

    /// Records an authentic vendor message's counter. It was sealed under
    /// the current epoch, so the vendor holds that epoch: it is confirmed
    /// and later messages leave the ephemeral key out (SPEC §3.1).
    fn accept_vendor_counter(&mut self, counter: u64) -> Result<(), SessionError> {
        self.state.replay.accept(counter)?;
        self.state.pending = None;
        // The vendor holds this epoch, so it took the Register that opened
        // it and, with it, any Transfer it carried: no later Register needs it.
        self.state.pending_transfer = None;
        self.save_state()
    }

    /// Opens a vendor Receipt and checks it against the consent states
    /// this device sent (version and digest).
    ///
    /// # Errors
    /// [`SessionError::Open`] for anything that is not an authentic,
    /// fresh receipt for this device; [`SessionError::Consent`] with
    /// [`ConsentError::ReceiptUnknownVersion`] for a version it never sent
    /// (or no longer remembers) and [`ConsentError::ReceiptMismatch`] for
    /// other content. Nothing is recorded then.
    pub fn open_receipt(&mut self, bytes: &[u8]) -> Result<Receipt, SessionError> {
        let (receipt, counter) = self.open_vendor::<Receipt>(bytes)?;
        verify_receipt(&receipt, &self.state.sent)?;
        self.state.receipted = self.state.receipted.max(receipt.consent_version);
        self.accept_vendor_counter(counter)?;
        Ok(receipt)
    }

    /// Opens a vendor KeyUpdate at `now` (SPEC.md §8.7): checks the
    /// envelope as for any vendor message (direction, device, replay window,
    /// current epoch's key), then that the certificate is signed by the
    /// vendor certificate authority (`VCA`, [`Device::with_key_authority`]),
    /// that the key it certifies signed the envelope, that it is valid at
    /// `now`, and that its serial is above the one held (the same
    /// certificate again changes nothing). The new key is stored with the
    /// message's counter in one record write; the device opens its next
    /// epoch with it ([`Device::vendor_key_pending`]). Returns the serial
    /// of the key now held.
    ///
    /// # Errors
    /// [`SessionError::Open`] for anything that is not an authentic, fresh
    /// KeyUpdate for this device (`BadCertificate` for a certificate the
    /// authority did not sign, `Unauthentic` for an envelope the certified
    /// key did not sign); [`SessionError::VendorKey`] for a device without
    /// the authority's key, an expired or not yet valid certificate, or a
    /// serial rollback. Nothing is recorded then.
    pub fn open_key_update(&mut self, bytes: &[u8], now: u64) -> Result<u32, SessionError> {
        let env = Envelope::parse(bytes)?;
        let h = env.header;
        if h.kind.direction() != Direction::VendorToDevice {
            return Err(OpenError::WrongDirection(h.kind).into());
        }
        if h.kind != KeyUpdate::KIND {
            return Err(OpenError::WrongKind { expected: KeyUpdate::KIND, got: h.kind }.into());
        }
        if h.device != self.id.key.device {
            return Err(OpenError::WrongDevice.into());
        }
        let keys = self.state.keys.as_ref().ok_or(SessionError::NoSession)?;
        self.state.replay.check(h.counter)?;
        let authority = self.authority.ok_or(VendorKeyError::NoAuthority)?;
        let mut buf = [0u8; KeyUpdate::MAX_SEALED_LEN];
        let pt = env.decrypt(keys, &mut buf)?;
        // Like a Register (SPEC §4.4 step 8): the body names the signer,
        // and the certificate authority vouches for it.
        let update: KeyUpdate = codec::decode(pt.body_bytes()).map_err(OpenError::Decode)?;
        update.certificate.verify_key_bytes(&authority)?;
        pt.verify_key_bytes(&update.certificate.body.signing)?;
        let body = update.certificate.body;
        body.valid_at(now).map_err(VendorKeyError::Invalid)?;
        let held = self.vendor_key_serial();
        let learned = LearnedKey { serial: body.serial, signing: body.signing, key_agreement: body.key_agreement };
        let same = match &self.state.latest_vendor {
            Some(k) => *k == learned,
            None => self.id.vendor.signing == learned.signing && self.id.vendor.key_agreement == learned.key_agreement,
        };
        if body.serial < held || (body.serial == held && !same) {
            return Err(VendorKeyError::Rollback { held, got: body.serial }.into());
        }
        if body.serial > held {
            self.state.latest_vendor = Some(learned);
        }
        self.accept_vendor_counter(h.counter)?;
        Ok(self.vendor_key_serial())
    }

    /// Opens a vendor Notice at `now` and decides, by the owner's contact
    /// preferences and the notices shown recently, whether to show it.
    ///
    /// # Errors
    /// [`SessionError::Open`] for anything that is not an authentic, fresh
    /// notice for this device; [`SessionError::NoSession`] before registration.
    pub fn open_notice(&mut self, bytes: &[u8], now: u64) -> Result<NoticeDecision, SessionError> {
        let (notice, counter) = self.open_vendor::<Notice>(bytes)?;
        let verdict = match &self.consent {
            Some(c) => c.state.check_notice(&notice, now, &self.state.shown),
            None => ConsentState::essential_only(0, 0, [0; 32]).check_notice(&notice, now, &self.state.shown),
        };
        let decision = match verdict {
            Ok(()) => {
                if self.state.shown.is_full() {
                    let _ = crate::list::remove(&mut self.state.shown, 0);
                }
                let _ = self.state.shown.push(SentNotice { purpose: notice.purpose, at: now });
                NoticeDecision::Show(notice)
            }
            Err(reason) => NoticeDecision::Withhold { notice, reason },
        };
        self.accept_vendor_counter(counter)?;
        Ok(decision)
    }
}

impl<'d, 'o, S: Storage, const N: usize, const RECORD: usize> Unregistered<'d, 'o, S, N, RECORD> {
    /// Registers with the vendor under the owner's initial `consent`:
    /// reserves a new key epoch, agrees its keys with the vendor's key,
    /// seals a Register (which opens the epoch) and queues it.
    ///
    /// # Errors
    /// [`SessionError::StaleConsent`] for a consent version not above the
    /// one held (versions go forward for the device's whole life);
    /// [`SessionError::Consent`] for a non-canonical state or a bad owner
    /// proof; sealing, counter, outbox and storage errors.
    pub fn register<R: CryptoRng + ?Sized>(
        self,
        rng: &mut R,
        consent: SignedConsent,
    ) -> Result<Registered<'d, 'o, S, N, RECORD>, SessionError> {
        let dev = self.dev;
        register(dev, rng, consent)?;
        Ok(Registered { dev })
    }
}

/// The [`SessionError::WrongStage`] for a handle of another stage.
fn wrong<S: Storage, const N: usize, const RECORD: usize>(
    expected: Stage,
    got: &StageHandle<'_, '_, S, N, RECORD>,
) -> SessionError {
    let actual = match got {
        StageHandle::Unregistered(_) => Stage::Unregistered,
        StageHandle::Registered(_) => Stage::Registered,
        StageHandle::Decommissioned(_) => Stage::Decommissioned,
    };
    SessionError::WrongStage { expected, actual }
}

/// Whether a queued item may be sent under the consent held. Time is not
/// known here, so only what does not depend on it is judged (purpose,
/// categories, precision, version): lapses are purged by
/// [`Registered::change_consent`] with the caller's time.
fn may_leave(consent: Option<&SignedConsent>, meta: &ItemMeta) -> bool {
    match meta.class() {
        Class::Lifecycle | Class::Consent => true,
        Class::Usage | Class::Fault => consent.is_some_and(|c| c.state.check_scope(&meta.scope(), 0).is_ok()),
    }
}

/// Checks that `storage` holds every record a device with `N` outbox slots
/// of `RECORD` bytes writes.
fn check_layout<S: Storage, const N: usize, const RECORD: usize>(storage: &S) -> Result<(), SessionError> {
    let needed = storage_capacity(RECORD);
    let have = storage.record_capacity();
    if have < needed {
        return Err(SessionError::RecordsTooSmall { needed, have, outbox: RECORD });
    }
    let records = storage_records(N);
    let count = storage.record_count();
    if usize::from(count) < records {
        return Err(SessionError::TooFewRecords { needed: records, have: count, slots: N });
    }
    Ok(())
}

/// Seals `body` (encoding exactly as a body of `kind`) under the current
/// keys with a fresh counter value, straight into an outbox slot. While the
/// epoch is unconfirmed its ephemeral key goes in the header (SPEC §3.1).
/// A free function over the device's parts, so a body may borrow from the
/// identity or the session while the counter and outbox change. Out of
/// line: inlined, its temporaries sat in the frame of every caller, under
/// the caller's own (measured on the QEMU firmware: 224 B less peak stack,
/// 312 B less flash).
#[inline(never)]
fn seal_into<S: Storage, const N: usize, const RECORD: usize>(
    id: &Held,
    state: &SessionState,
    counters: &mut Counter<CounterRecord<S>>,
    outbox: &mut Outbox<N, RECORD>,
    kind: Kind,
    body: &dyn SealBody,
    scope: Scope,
) -> Result<u64, SessionError> {
    let ephemeral = state.pending;
    let keys = state.keys.as_ref().ok_or(SessionError::NoSession)?;
    let counter = counters.next_value()?;
    let seal = Seal { device: id.key.device, epoch: keys.epoch, counter, ephemeral };
    let meta = ItemMeta {
        kind,
        purpose: scope.purpose,
        categories: scope.categories,
        location: scope.location,
        consent_version: scope.consent_version,
        counter,
    };
    // Sealed straight into the outbox slot: no envelope-sized buffer on the stack.
    outbox.push_with(&mut counters.store_mut().0, meta, |slot| {
        sealing::seal_kind(slot, &seal, kind, body, &id.key, keys).map_err(SessionError::from)
    })?;
    Ok(counter)
}

/// A [`Register`] by reference: the same fields in the same order, so the
/// same encoding, sealed without copying the certificate and the consent
/// into a body first.
struct RegisterView<'a> {
    certificate: &'a DeviceCertificate,
    firmware: FirmwareVersion,
    consent: &'a SignedConsent,
    transfer: &'a Option<Transfer>,
}

impl SealBody for RegisterView<'_> {
    fn encode_into(&self, out: &mut [u8]) -> Result<usize, DecodeError> {
        codec::fixed::encode_with(out, |w| self.write(w)).map(|b| b.len())
    }

    fn encoded_len(&self) -> Result<usize, DecodeError> {
        Ok(codec::fixed::encoded_len_with(|w| self.write(w)))
    }
}

impl RegisterView<'_> {
    fn write(&self, w: &mut codec::fixed::Writer<'_>) {
        codec::fixed::write_register(w, self.certificate, &self.firmware, self.consent, self.transfer)
    }
}

/// Reserves a new epoch, agrees its keys, seals and queues a Register that
/// opens it, and stores the consent and the registered stage.
fn register<S: Storage, const N: usize, const RECORD: usize, R: CryptoRng + ?Sized>(
    dev: &mut Device<'_, S, N, RECORD>,
    rng: &mut R,
    consent: SignedConsent,
) -> Result<u64, SessionError> {
    check_new_consent(dev, &consent, dev.state.stage == Stage::Unregistered)?;
    // 1. reserve the epoch and agree its keys before anything is sealed
    //    under it; 2. seal and queue (the epoch stays unconfirmed until a
    //    vendor message under it)
    dev.open_epoch(rng)?;
    // The first Register after a change of owner carries the Transfer (SPEC §9.3).
    let scope = Scope { consent_version: consent.state.version, ..dev.control_scope() };
    let body = RegisterView {
        certificate: &dev.id.certificate,
        firmware: dev.id.firmware,
        consent: &consent,
        transfer: &dev.state.pending_transfer,
    };
    let kind = <Register as Body>::KIND;
    let counter = seal_into(&dev.id, &dev.state, &mut dev.counter, dev.outbox, kind, &body, scope)?;
    // 3. the consent, then the session: registered
    dev.save_consent(&consent)?;
    dev.remember_sent(&consent)?;
    dev.state.stage = Stage::Registered;
    dev.save_state()?;
    dev.consent = Some(consent);
    Ok(counter)
}

/// A new consent state must be canonical, carry a valid owner proof if
/// it has one, and have a higher version than the held one, by no more
/// than the vendor allows (SPEC §6.3): the first state of a relationship
/// (`first`) by [`crate::consent::check_first`], others by
/// [`crate::consent::check_step`].
fn check_new_consent<S: Storage, const N: usize, const RECORD: usize>(
    dev: &Device<'_, S, N, RECORD>,
    consent: &SignedConsent,
    first: bool,
) -> Result<(), SessionError> {
    consent.verify_owner(&dev.id.key.device, OwnerRequirement::DeviceOnBehalf)?;
    if let Some(held) = &dev.consent
        && consent.state.version <= held.state.version
    {
        return Err(SessionError::StaleConsent { held: held.state.version, got: consent.state.version });
    }
    // The vendor refuses a version too far ahead (SPEC §6.3): refuse it here first.
    let held = dev.consent.as_ref().map(|c| c.state.version);
    if first {
        crate::consent::check_first(held, consent.state.version)?;
    } else {
        crate::consent::check_step(held, consent.state.version)?;
    }
    Ok(())
}

impl<'d, 'o, S: Storage, const N: usize, const RECORD: usize> Registered<'d, 'o, S, N, RECORD> {
    /// The device.
    pub fn device(&mut self) -> &mut Device<'o, S, N, RECORD> {
        self.dev
    }

    /// The consent state in force.
    fn state(&self) -> Result<&ConsentState, SessionError> {
        self.dev.consent.as_ref().map(|c| &c.state).ok_or(SessionError::NoSession)
    }

    /// Everything the owner granted for `purpose` at `now`, as a permit to build reports with.
    ///
    /// # Errors
    /// The [`Denial`] when nothing may be collected for it.
    pub fn permit(&self, purpose: Purpose, now: u64) -> Result<Permit, SessionError> {
        Ok(self.state()?.grant_permit(purpose, now)?)
    }

    /// Seals and queues a usage report built through a permit, after
    /// checking it once more against the consent in force at `now`.
    /// Returns its envelope counter.
    ///
    /// # Errors
    /// [`SessionError::Denied`] when the consent in force no longer allows
    /// it; sealing, counter, outbox and storage errors.
    pub fn report_usage<const M: usize>(
        &mut self,
        usage: Permitted<UsageOf<M>>,
        now: u64,
    ) -> Result<u64, SessionError> {
        let scope = usage.scope();
        self.state()?.check_scope(&scope, now)?;
        self.dev.seal_queue(usage.as_body(), scope)
    }

    /// Seals and queues a fault report built through a permit, after
    /// checking it once more against the consent in force at `now`.
    ///
    /// # Errors
    /// As [`Registered::report_usage`].
    pub fn report_fault(&mut self, fault: Permitted<Fault>, now: u64) -> Result<u64, SessionError> {
        let scope = fault.scope();
        self.state()?.check_scope(&scope, now)?;
        self.dev.seal_queue(fault.as_body(), scope)
    }

    /// Ends a metrics window into a usage report for `purpose`: only the
    /// metrics the owner allows for it are kept. Returns the envelope
    /// counter, or `None` when nothing permitted was left to send.
    ///
    /// # Errors
    /// [`SessionError::Denied`] when nothing may be collected for the
    /// purpose; build, sealing, counter, outbox and storage errors.
    pub fn report_window<const M: usize>(
        &mut self,
        purpose: Purpose,
        window: Window<M>,
        now: u64,
    ) -> Result<Option<u64>, SessionError> {
        let permit = self.permit(purpose, now)?;
        let usage = permit.usage_of::<M>(window.start, window.end, window.metrics)?;
        if usage.as_body().metrics.is_empty() {
            return Ok(None);
        }
        self.report_usage(usage, now).map(Some)
    }

    /// Reports every recorded fault for `purpose` (most severe first).
    /// Returns how many were queued. A fault that cannot be queued is put
    /// back in the recorder and the error returned.
    ///
    /// # Errors
    /// [`SessionError::Denied`] when faults may not be reported for the
    /// purpose (the recorder keeps them); sealing, outbox and storage errors.
    pub fn report_faults<const F: usize>(
        &mut self,
        recorder: &mut FaultRecorder<F>,
        purpose: Purpose,
        now: u64,
    ) -> Result<usize, SessionError> {
        let permit = self.permit(purpose, now)?;
        let mut n = 0;
        while let Some(rec) = recorder.take() {
            let draft = FaultDraft {
                code: rec.code,
                severity: rec.severity,
                component: rec.component,
                firmware: rec.firmware,
                uptime_s: rec.uptime_s,
                reboot_reason: rec.reboot_reason,
                occurrences: rec.occurrences,
                first_seen: rec.first_seen,
                last_seen: rec.last_seen,
                context: rec.context.clone(),
            };
            let result = permit.fault(draft).map_err(SessionError::from).and_then(|f| self.report_fault(f, now));
            if let Err(e) = result {
                recorder.restore(rec);
                return Err(e);
            }
            n += 1;
        }
        Ok(n)
    }

    /// The owner changed their consent: checks and stores the new state,
    /// seals it in a Consent message, and purges queued reports the new
    /// state does not allow at `now`. Returns the envelope counter.
    ///
    /// # Errors
    /// [`SessionError::StaleConsent`] unless the version is higher than
    /// the held one; [`SessionError::Consent`] for a non-canonical state or
    /// a bad owner proof; sealing, outbox and storage errors.
    pub fn change_consent(&mut self, consent: SignedConsent, now: u64) -> Result<u64, SessionError> {
        check_new_consent(self.dev, &consent, false)?;
        let dev = &mut *self.dev;
        // The device applies it first: stored before it is announced.
        dev.save_consent(&consent)?;
        dev.remember_sent(&consent)?;
        dev.save_state()?;
        dev.consent = Some(consent);
        let counter = dev.announce_held()?;
        let Some(held) = dev.consent.as_ref() else { return Err(SessionError::NoSession) };
        let state = &held.state;
        dev.outbox.purge(&mut dev.counter.store_mut().0, |m| match m.class() {
            Class::Usage | Class::Fault => state.check_scope(&m.scope(), now).is_ok(),
            Class::Lifecycle | Class::Consent => true,
        })?;
        Ok(counter)
    }

    /// Opens a new key epoch without registering again, for forward secrecy
    /// over the product's life (on demand, or by the product's own policy:
    /// age, message count). Reserves epoch `n + 1` first, agrees its keys
    /// with the vendor's key from a fresh ephemeral key, and returns `n + 1`.
    /// The next message sealed opens the epoch at the vendor, and every
    /// message carries the ephemeral key until a vendor message under the
    /// new epoch confirms it (SPEC §3.1), so a refused opener strands nothing.
    ///
    /// # Errors
    /// [`SessionError::OutboxNotEmpty`] while messages of the current epoch
    /// wait (send them first: the vendor refuses an older epoch once the new
    /// one is open); [`SessionError::EpochExhausted`]; key agreement and
    /// storage errors, after which the device holds no keys
    /// ([`SessionError::NoSession`] when sealing) until a call succeeds.
    pub fn renew_keys<R: CryptoRng + ?Sized>(&mut self, rng: &mut R) -> Result<u32, SessionError> {
        let dev = &mut *self.dev;
        let waiting = dev.queued().count();
        if waiting > 0 {
            return Err(SessionError::OutboxNotEmpty(waiting));
        }
        let epoch = dev.open_epoch(rng)?;
        dev.save_state()?;
        Ok(epoch)
    }

    /// Registers again while the vendor has not confirmed the registration
    /// (SPEC §3.1): the vendor refused the Register (for example a consent
    /// it would not take) and, holding no relationship, cannot open what
    /// followed. Opens a new epoch with a new Register carrying the owner's
    /// `consent` (a higher version than held, like every new state).
    ///
    /// ```
    /// # use spime::device::Device;
    /// # fn f<S: spime::device::Storage, const N: usize, const R: usize>(
    /// #     r: &mut spime::device::session::Registered<'_, '_, S, N, R>,
    /// #     rng: &mut impl rand_core::CryptoRng,
    /// #     consent: spime::consent::SignedConsent,
    /// # ) -> Result<(), spime::device::SessionError> {
    /// if !r.device().epoch_confirmed() {
    ///     r.register_again(rng, consent)?;
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`SessionError::AlreadyConfirmed`] once a vendor message arrived
    /// under the epoch; otherwise as [`Unregistered::register`].
    pub fn register_again<R: CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        consent: SignedConsent,
    ) -> Result<u64, SessionError> {
        if self.dev.epoch_confirmed() {
            return Err(SessionError::AlreadyConfirmed);
        }
        register(self.dev, rng, consent)
    }

    /// Seals the consent held again in a Consent message (its version
    /// unchanged): after [`Registered::change_consent`] failed once the new
    /// state was stored, or when no receipt came for it.
    ///
    /// # Errors
    /// Sealing, counter, outbox and storage errors.
    pub fn announce_consent(&mut self) -> Result<u64, SessionError> {
        let dev = &mut *self.dev;
        let sent = SentConsent::of(dev.consent.as_ref().ok_or(SessionError::NoSession)?)?;
        dev.remember(sent);
        dev.save_state()?;
        dev.announce_held()
    }

    /// The owner hands the product on: seals a Transfer, resets consent to
    /// deny-all-but-Essential (a higher version), purges every queued
    /// message but the lifecycle ones, and leaves the device unregistered
    /// for the next owner.
    ///
    /// A product whose owner has a key (the consent held carries an owner
    /// proof) needs the owner's authorisation: use
    /// [`Registered::transfer_authorised`]; the vendor refuses an
    /// unauthorised Transfer while it holds an owner key.
    ///
    /// # Errors
    /// [`SessionError::Consent`] with [`ConsentError::OwnerProofMissing`]
    /// when the consent held is owner-signed; sealing, counter, outbox and
    /// storage errors.
    pub fn transfer(self, now: u64) -> Result<Unregistered<'d, 'o, S, N, RECORD>, SessionError> {
        let held = self.dev.consent.as_ref().map_or(0, |c| c.state.version);
        self.hand_on(Transfer::unsigned(now, held))
    }

    /// The owner, who has a key, hands the product on at `at`: as
    /// [`Registered::transfer`], carrying the owner's `proof`
    /// ([`crate::consent::OwnerProof::sign_transfer`] over this device, the
    /// consent version held and `at`).
    ///
    /// # Errors
    /// [`SessionError::Consent`] when the proof is not by the owner key of
    /// the consent held or does not verify; sealing, counter, outbox and
    /// storage errors.
    pub fn transfer_authorised(
        self,
        at: u64,
        proof: crate::consent::OwnerProof,
    ) -> Result<Unregistered<'d, 'o, S, N, RECORD>, SessionError> {
        let held = self.dev.consent.as_ref().map_or(0, |c| c.state.version);
        self.hand_on(Transfer { at, consent_version: held, owner: Some(proof) })
    }

    fn hand_on(self, t: Transfer) -> Result<Unregistered<'d, 'o, S, N, RECORD>, SessionError> {
        let dev = self.dev;
        let now = t.at;
        let pinned = dev.consent.as_ref().and_then(|c| c.owner.map(|o| o.owner_key));
        let held_version = dev.consent.as_ref().map_or(0, |c| c.state.version);
        crate::consent::authorise_transfer(&t, &dev.id.key.device, held_version, pinned.as_ref())?;
        let held = dev.consent.as_ref().map(|c| c.state.clone());
        let reset = match held {
            Some(h) => h.reset_for_transfer(now)?,
            None => ConsentState::essential_only(1, now, [0; 32]),
        };
        let scope = dev.control_scope();
        dev.seal_queue(&t, scope)?;
        // The stage first: a cut before the reset consent is stored leaves an
        // unregistered device, which sends no data under any consent.
        dev.state.stage = Stage::Unregistered;
        dev.state.keys = None;
        dev.state.pending = None;
        dev.state.sent.clear();
        dev.state.shown.clear();
        dev.state.receipted = 0;
        dev.state.pending_transfer = Some(t);
        dev.save_state()?;
        let consent = SignedConsent { state: reset, owner: None };
        dev.save_consent(&consent)?;
        dev.consent = Some(consent);
        dev.outbox.purge(&mut dev.counter.store_mut().0, |m| m.class() == Class::Lifecycle)?;
        Ok(Unregistered { dev })
    }

    /// End of life: seals a Decommission and stops sealing.
    ///
    /// # Errors
    /// Sealing, counter, outbox and storage errors.
    pub fn decommission(
        self,
        now: u64,
        reason: DecommissionReason,
    ) -> Result<Decommissioned<'d, 'o, S, N, RECORD>, SessionError> {
        let dev = self.dev;
        let scope = dev.control_scope();
        dev.seal_queue(&Decommission { at: now, reason }, scope)?;
        dev.state.stage = Stage::Decommissioned;
        dev.save_state()?;
        Ok(Decommissioned { dev })
    }
}

impl<'o, S: Storage, const N: usize, const RECORD: usize> Decommissioned<'_, 'o, S, N, RECORD> {
    /// The device (to flush its outbox).
    pub fn device(&mut self) -> &mut Device<'o, S, N, RECORD> {
        self.dev
    }
}

impl<'o, S: Storage, const N: usize, const RECORD: usize> Unregistered<'_, 'o, S, N, RECORD> {
    /// The device (to flush its outbox).
    pub fn device(&mut self) -> &mut Device<'o, S, N, RECORD> {
        self.dev
    }
}
