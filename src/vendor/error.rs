//! Why the vendor refused a message, stored nothing, or would not send.

use crate::error::{DecodeError, ReplayError, SealError};
use crate::wire::Kind;
use crate::wire::chunk::ChunkError;

use crate::consent::{ConsentError, ContactDenial, Denial};

/// A device message was refused by the ingest pipeline. Nothing of a refused
/// message is stored: its replay state, content and any state change are
/// written only when every step accepted it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// The bytes are not a valid envelope or body (malformed, oversized,
    /// unknown version or kind, non-canonical).
    #[error("invalid message: {0}")]
    Decode(#[from] DecodeError),
    /// A chunk could not be taken for reassembly (malformed, or its message
    /// would be longer than any sealed message).
    #[error("chunk: {0}")]
    Chunk(ChunkError),
    /// A vendor-to-device kind arrived at the vendor.
    #[error("kind {0:?} does not travel from a device to the vendor")]
    WrongDirection(Kind),
    /// Decryption or signature verification failed, the device certificate
    /// is not the vendor's, or an owner signature on a consent state does not
    /// verify: tampered, forged, or sealed under keys the vendor does not
    /// hold. Deliberately one opaque reason.
    #[error("message is not authentic")]
    Unauthentic,
    /// The ephemeral key that opens a new epoch is a small-order point.
    #[error("weak ephemeral key")]
    WeakKey,
    /// The counter was accepted before, or is below the replay window.
    #[error("replay: {0}")]
    Replay(#[from] ReplayError),
    /// A message other than Register from a device the vendor has never registered.
    #[error("device is not registered")]
    UnknownDevice,
    /// The message is sealed under an epoch older than the device's current one.
    #[error("key epoch {got} is older than the current epoch {current}")]
    StaleEpoch {
        /// the device's current epoch
        current: u32,
        /// the message's epoch
        got: u32,
    },
    /// The message names an epoch above the current one but carries no
    /// ephemeral key to open it.
    #[error("key epoch {got} was never opened (current {current})")]
    UnopenedEpoch {
        /// the device's current epoch
        current: u32,
        /// the message's epoch
        got: u32,
    },
    /// A Register's certificate names another device than the envelope, or
    /// binds another key than the one registered for this device.
    #[error("certificate does not match the device")]
    CertificateMismatch,
    /// The data is not covered by the consent the vendor holds.
    #[error("not consented: {0}")]
    Unconsented(Denial),
    /// A consent state (in a Register or Consent) was refused: stale or
    /// conflicting with the held version, or its owner proof is missing,
    /// invalid or by another owner key than the one pinned (SPEC §6.3).
    #[error("consent refused: {0}")]
    Consent(ConsentError),
    /// The device was handed on; the new owner must register before sending
    /// consent.
    #[error("device was transferred and awaits a new registration")]
    AwaitingRegistration,
    /// The device's current epoch was opened with a vendor key that has
    /// retired (SPEC.md §9.2): the vendor no longer takes messages under
    /// it. The device needs the new key (a KeyUpdate) and a new epoch.
    #[error("the vendor key (serial {serial}) this epoch was opened with has retired")]
    VendorKeyRetired {
        /// the retired key's serial
        serial: u32,
    },
    /// Too many messages opening a new epoch for this device failed after
    /// their key agreement within [`super::OPENER_WINDOW`]
    /// (forgeries by someone who knows the device id): only one opener per
    /// batch is tried for it until the window passes. Nothing was
    /// recorded; the device offers the key again with its next message
    /// (SPEC.md §3.1), so a genuine re-key still gets through.
    #[error("too many failed epoch openers for this device; try again")]
    Throttled,
    /// The device's certificate is not valid now: issued in the future or
    /// past its `not_after` (SPEC.md §5.4). Checked at Register and on
    /// every message.
    #[error("certificate: {0}")]
    CertificateInvalid(crate::message::Validity),
    /// The device, or its key, is on the vendor's denylist
    /// ([`super::Ingestor::revoke_device`], [`super::Ingestor::revoke_key`]).
    #[error("device or device key is revoked")]
    Revoked,
    /// The device was decommissioned; nothing more is accepted from it.
    #[error("device is decommissioned")]
    Decommissioned,
    /// The store failed; nothing was acknowledged.
    #[error("storage: {0}")]
    Storage(#[from] StoreError),
}

impl IngestError {
    /// The stable numeric code (SPEC.md §10.1). Wrapped decoding, replay,
    /// chunk and consent errors give their own codes; a consent denial of
    /// data gives the [`Denial`]'s code (60–65).
    ///
    /// ```
    /// use spime::vendor::IngestError;
    /// assert_eq!(IngestError::UnknownDevice.code(), 40);
    /// ```
    pub const fn code(&self) -> u16 {
        match self {
            IngestError::Decode(e) => e.code(),
            IngestError::Chunk(e) => e.code(),
            IngestError::WrongDirection(_) => 22,
            IngestError::Unauthentic => 20,
            IngestError::WeakKey => 25,
            IngestError::Replay(r) => r.code(),
            IngestError::UnknownDevice => 40,
            IngestError::StaleEpoch { .. } => 41,
            IngestError::UnopenedEpoch { .. } => 42,
            IngestError::CertificateMismatch => 43,
            IngestError::Unconsented(d) => d.code(),
            IngestError::Consent(c) => c.code(),
            IngestError::AwaitingRegistration => 50,
            IngestError::Decommissioned => 51,
            IngestError::Throttled => 52,
            IngestError::Storage(_) => 53,
            IngestError::CertificateInvalid(_) => 54,
            IngestError::Revoked => 55,
            IngestError::VendorKeyRetired { .. } => 56,
        }
    }

    /// A short stable name for the reason, for counters and reports.
    pub const fn reason(&self) -> &'static str {
        match self {
            IngestError::Decode(_) => "decode",
            IngestError::Chunk(_) => "chunk",
            IngestError::WrongDirection(_) => "wrong-direction",
            IngestError::Unauthentic => "unauthentic",
            IngestError::WeakKey => "weak-key",
            IngestError::Replay(_) => "replay",
            IngestError::UnknownDevice => "unknown-device",
            IngestError::StaleEpoch { .. } => "stale-epoch",
            IngestError::UnopenedEpoch { .. } => "unopened-epoch",
            IngestError::CertificateMismatch => "certificate-mismatch",
            IngestError::Unconsented(_) => "unconsented",
            IngestError::Consent(ConsentError::Stale { .. }) => "stale-consent",
            IngestError::Consent(ConsentError::Conflict(_)) => "conflicting-consent",
            IngestError::Consent(ConsentError::TooFarAhead { .. }) => "consent-too-far-ahead",
            IngestError::Consent(_) => "owner-proof",
            IngestError::AwaitingRegistration => "awaiting-registration",
            IngestError::Decommissioned => "decommissioned",
            IngestError::Throttled => "throttled",
            IngestError::CertificateInvalid(_) => "certificate-invalid",
            IngestError::Revoked => "revoked",
            IngestError::VendorKeyRetired { .. } => "vendor-key-retired",
            IngestError::Storage(_) => "storage",
        }
    }
}

/// The vendor's store failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend (database, file system) reported an error; the text is its message.
    #[error("backend: {0}")]
    Backend(String),
    /// A stored record could not be decoded (corruption, or a newer format).
    #[error("corrupt record in {0}")]
    Corrupt(&'static str),
    /// Another writer changed a record this transaction depends on.
    #[error("conflicting concurrent update")]
    Conflict,
}

/// The vendor refused to seal a message for a device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The device is not registered.
    #[error("device is not registered")]
    UnknownDevice,
    /// The device is decommissioned.
    #[error("device is decommissioned")]
    Decommissioned,
    /// The owner's contact preferences forbid this notice now; it is held back.
    #[error("the owner's contact preferences forbid this notice now: {0}")]
    Refused(ContactDenial),
    /// The device was handed on and its next owner has not registered: it
    /// holds no keys of the new relationship, and the previous owner's
    /// keys must not carry anything to it (SPEC.md §9.6).
    #[error("device was transferred and awaits a new registration")]
    AwaitingRegistration,
    /// The vendor holds no consent to countersign.
    #[error("no consent to countersign")]
    NoConsent,
    /// The device's epoch was opened with a vendor key the keyring no
    /// longer holds: send it a KeyUpdate ([`super::Ingestor::seal_key_update`]).
    #[error("the vendor key (serial {0}) of the device's epoch is no longer held")]
    VendorKeyGone(u32),
    /// The device's epoch already uses the newest vendor key: there is no
    /// KeyUpdate to send.
    #[error("the device already uses the newest vendor key")]
    NoKeyUpdate,
    /// Sealing failed.
    #[error("seal: {0}")]
    Seal(#[from] SealError),
    /// The store failed; nothing was sent and no counter value was spent.
    #[error("storage: {0}")]
    Storage(#[from] StoreError),
}

impl SendError {
    /// A short stable name for the reason, for counters and reports.
    pub const fn reason(&self) -> &'static str {
        match self {
            SendError::UnknownDevice => "unknown-device",
            SendError::Decommissioned => "decommissioned",
            SendError::Refused(_) => "contact-refused",
            SendError::NoConsent => "no-consent",
            SendError::AwaitingRegistration => "awaiting-registration",
            SendError::VendorKeyGone(_) => "vendor-key-gone",
            SendError::NoKeyUpdate => "no-key-update",
            SendError::Seal(_) => "seal",
            SendError::Storage(_) => "storage",
        }
    }
}

/// The vendor's keyring refused a change (`Ingestor::with_vendor_key`,
/// `Ingestor::retire_vendor_key`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyringError {
    /// The certificate is not signed by the certificate authority key.
    #[error("the vendor key certificate is not signed by the certificate authority")]
    BadCertificate,
    /// The certificate certifies other public keys than the keys given.
    #[error("the certificate certifies other keys than the ones given")]
    KeysDiffer,
    /// A new key's serial must be above every serial in the keyring.
    #[error("serial {got} is not above the newest serial {newest}")]
    SerialNotAbove {
        /// the newest serial held
        newest: u32,
        /// the serial given
        got: u32,
    },
    /// The keys are held under another serial: a key keeps its serial (the
    /// device epochs opened with it are recorded under it).
    #[error("the keys are held as serial {held}, the certificate says {got}")]
    SerialChanged {
        /// the serial held
        held: u32,
        /// the certificate's serial
        got: u32,
    },
    /// The new pair's key-agreement key `VX` is already held by the pair of
    /// serial `held`: the vendor learns which pair a device holds only from
    /// the `VX` that opens its epoch (SPEC §9.2), so two pairs may not share one.
    #[error("the new pair's key-agreement key is already held by serial {held}: each pair needs its own")]
    SharedKeyAgreement {
        /// the serial of the pair that holds the key-agreement key
        held: u32,
    },
    /// The keyring holds [`super::MAX_VENDOR_KEYS`] keys: forget a retired one first.
    #[error("the keyring is full ({0} keys): forget a retired key first")]
    Full(usize),
    /// No key of this serial.
    #[error("no vendor key of serial {0}")]
    UnknownSerial(u32),
    /// The newest key cannot retire or be forgotten (it has no successor).
    #[error("the newest vendor key (serial {0}) cannot retire")]
    Newest(u32),
    /// A key may be forgotten only once it has retired.
    #[error("the vendor key of serial {0} has not retired")]
    NotRetired(u32),
}
