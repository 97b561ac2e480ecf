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
            IngestError::Storage(_) => 53,
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
            IngestError::Consent(_) => "owner-proof",
            IngestError::AwaitingRegistration => "awaiting-registration",
            IngestError::Decommissioned => "decommissioned",
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
    /// The vendor holds no consent to countersign.
    #[error("no consent to countersign")]
    NoConsent,
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
            SendError::Seal(_) => "seal",
            SendError::Storage(_) => "storage",
        }
    }
}
