//! The error types, grouped by who is at fault.
//!
//! - [`DecodeError`]: the bytes are not a valid encoding (a malformed or
//!   hostile message, or a caller buffer that is too small to encode into).
//! - [`OpenError`]: a sealed message was refused. Decryption and signature
//!   failures are deliberately one opaque variant, [`OpenError::Unauthentic`],
//!   so a peer learns nothing from which check failed.
//! - [`SealError`]: sealing could not be done (buffer, counter, key misuse).
//! - [`ReplayError`]: a counter was seen before or fell out of the window.
//! - [`CounterError`]: the persistent counter could not be reserved.
//!
//! Every error has a stable numeric code (`code()`), the contract for
//! implementations in other languages (SPEC.md §10.1): Rust `Debug` and
//! `Display` renderings are for people and may change. Codes 1–19 are
//! decoding, 20–39 opening, 40–59 the vendor pipeline, 60–79 consent
//! decisions, 80–89 chunks, 90–99 receipts and vendor keys on the device.

use crate::wire::Kind;

/// A byte string is not a valid encoding of the expected value.
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended before the structure did.
    #[error("truncated: needed {needed} bytes, have {have}")]
    Truncated {
        /// bytes the structure needs at least
        needed: usize,
        /// bytes present
        have: usize,
    },
    /// The input is longer than any valid encoding of the type.
    #[error("oversized: {len} bytes, the maximum is {max}")]
    Oversized {
        /// bytes present
        len: usize,
        /// the type's maximum encoded length
        max: usize,
    },
    /// Bytes were left after a complete value.
    #[error("trailing bytes after a complete value")]
    TrailingBytes,
    /// The bytes decode, but are not the one canonical encoding of the value
    /// (an over-long varint, for example).
    #[error("non-canonical encoding")]
    NonCanonical,
    /// postcard could not parse the bytes: an invalid tag, a sequence longer
    /// than its capacity, invalid UTF-8, or a value out of range.
    #[error("malformed body")]
    Malformed,
    /// The protocol version byte is not one this crate speaks.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// The message kind byte is not defined in this version.
    #[error("unknown message kind 0x{0:02x}")]
    UnknownKind(u8),
    /// A header flag bit that is reserved was set, or a flag contradicts the kind.
    #[error("invalid header flags 0x{0:02x}")]
    InvalidFlags(u8),
    /// A purpose id in the reserved range.
    #[error("unknown purpose {0}")]
    UnknownPurpose(u16),
    /// A data category or channel bit that is not defined. Only the
    /// constructors of the sets return it ([`crate::consent::CategorySet::from_bits`]);
    /// a decoder reports an undefined bit in a received set as [`DecodeError::Malformed`].
    #[error("unknown bits 0x{0:x} in a set")]
    UnknownBits(u16),
    /// A list that must be strictly ordered (and so free of duplicates) is not.
    #[error("list not in strictly ascending order: {0}")]
    Unordered(List),
    /// A field's value is outside its documented range.
    #[error("value out of range: {0}")]
    OutOfRange(Rule),
    /// The output buffer is too small for the encoding.
    #[error("output buffer of {have} bytes is too small")]
    BufferTooSmall {
        /// bytes available
        have: usize,
    },
}

impl DecodeError {
    /// The stable numeric code (SPEC.md §10.1).
    ///
    /// ```
    /// use spime::error::{DecodeError, Rule};
    /// assert_eq!(DecodeError::Truncated { needed: 91, have: 90 }.code(), 1);
    /// assert_eq!(DecodeError::OutOfRange(Rule::FaultOccurrences).code(), 12);
    /// ```
    pub const fn code(&self) -> u16 {
        match self {
            DecodeError::Truncated { .. } => 1,
            DecodeError::Oversized { .. } => 2,
            DecodeError::TrailingBytes => 3,
            DecodeError::NonCanonical => 4,
            DecodeError::Malformed => 5,
            DecodeError::UnsupportedVersion(_) => 6,
            DecodeError::UnknownKind(_) => 7,
            DecodeError::InvalidFlags(_) => 8,
            DecodeError::UnknownPurpose(_) => 9,
            DecodeError::UnknownBits(_) => 10,
            DecodeError::Unordered(_) => 11,
            DecodeError::OutOfRange(_) => 12,
            DecodeError::BufferTooSmall { .. } => 13,
        }
    }

    /// The error's detail as one number, for a table or another language:
    /// the [`Rule`] or [`List`] code, the version, kind nibble, byte 0,
    /// purpose or bits; 0 where there is none.
    pub const fn detail(&self) -> u32 {
        match self {
            DecodeError::Unordered(l) => *l as u32,
            DecodeError::OutOfRange(r) => *r as u32,
            DecodeError::UnsupportedVersion(b) | DecodeError::UnknownKind(b) | DecodeError::InvalidFlags(b) => {
                *b as u32
            }
            DecodeError::UnknownPurpose(p) | DecodeError::UnknownBits(p) => *p as u32,
            _ => 0,
        }
    }
}

/// Which list is out of order ([`DecodeError::Unordered`]); the value is its
/// stable code (SPEC.md §10.1).
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum List {
    /// `Usage.metrics`, by metric id.
    Metrics = 1,
    /// `ConsentState.grants`, by purpose.
    Grants = 2,
    /// `ContactPrefs.grants`, by purpose.
    ContactGrants = 3,
    /// `ContactPrefs.caps`, by purpose.
    FrequencyCaps = 4,
    /// `ContactPrefs.muted_topics`.
    MutedTopics = 5,
}

impl core::fmt::Display for List {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            List::Metrics => "metrics",
            List::Grants => "grants",
            List::ContactGrants => "contact grants",
            List::FrequencyCaps => "frequency caps",
            List::MutedTopics => "muted topics",
        })
    }
}

/// Which range rule a value breaks ([`DecodeError::OutOfRange`]); the value
/// is its stable code (SPEC.md §10.1).
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rule {
    /// Usage: `window_end < window_start`.
    UsageWindow = 1,
    /// Usage: a Location value without the Location category, or the reverse.
    LocationCategory = 2,
    /// Usage: a Location value of precision None.
    LocationPrecisionNone = 3,
    /// Fault: `occurrences` is 0.
    FaultOccurrences = 4,
    /// Fault: `last_seen < first_seen`.
    FaultSeen = 5,
    /// Notice: `expires_at < issued_at`.
    NoticeExpiry = 6,
    /// Consent rule 1: `reconfirm_by` not after `issued_at`, or more than
    /// `MAX_RECONFIRM` after it.
    ReconfirmWindow = 7,
    /// Consent rule 3: a grant with no categories.
    GrantWithoutCategories = 8,
    /// Consent rule 4: a grant for Essential.
    GrantForEssential = 9,
    /// Consent rule 5: Location granted without a precision, or the reverse.
    GrantLocation = 10,
    /// Consent rule 7: a contact grant with no channels.
    ContactGrantWithoutChannels = 11,
    /// Consent rule 10: a quiet-hours minute of 1440 or more.
    QuietHoursMinute = 12,
    /// Consent rule 10: quiet hours that start when they end.
    QuietHoursEmpty = 13,
    /// Consent rule 10: a UTC offset beyond ±840 minutes.
    UtcOffset = 14,
    /// Consent rule 11: a frequency cap with a period of 0.
    CapPeriod = 15,
    /// Vendor: the consent version cannot go higher (a transfer at `u32::MAX`).
    ConsentVersionExhausted = 16,
    /// Ledger: a proof that should carry a consent state does not.
    ProofWithoutConsent = 17,
    /// Certificate: `not_after` before `issued_at`.
    CertificateValidity = 18,
    /// Vendor key certificate: `not_after` before `not_before`.
    VendorKeyValidity = 19,
}

impl core::fmt::Display for Rule {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Rule::UsageWindow => "usage window ends before it starts",
            Rule::LocationCategory => "a location value must have the Location category, and only it",
            Rule::LocationPrecisionNone => "location precision None",
            Rule::FaultOccurrences => "fault occurrences must be at least 1",
            Rule::FaultSeen => "fault last seen before first seen",
            Rule::NoticeExpiry => "notice expires before it is issued",
            Rule::ReconfirmWindow => "reconfirm_by must be after issued_at, by at most MAX_RECONFIRM",
            Rule::GrantWithoutCategories => "a grant with no categories (omit it instead)",
            Rule::GrantForEssential => "a grant for Essential (it is implied)",
            Rule::GrantLocation => "location precision must be set exactly when Location is granted",
            Rule::ContactGrantWithoutChannels => "a contact grant with no channels (omit it instead)",
            Rule::QuietHoursMinute => "quiet hours minute beyond 1439",
            Rule::QuietHoursEmpty => "empty quiet hours (omit them instead)",
            Rule::UtcOffset => "UTC offset beyond 14 hours",
            Rule::CapPeriod => "frequency cap period of 0",
            Rule::ConsentVersionExhausted => "consent version exhausted",
            Rule::ProofWithoutConsent => "proof does not carry a consent state",
            Rule::CertificateValidity => "certificate not_after before issued_at",
            Rule::VendorKeyValidity => "vendor key certificate not_after before not_before",
        })
    }
}

/// A sealed message was refused while opening it.
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The envelope or body is not a valid encoding.
    #[error("invalid message: {0}")]
    Decode(#[from] DecodeError),
    /// Decryption or signature verification failed: a tampered, truncated or
    /// forged message, or one sealed under another key. Deliberately opaque.
    #[error("message is not authentic")]
    Unauthentic,
    /// The message was opened as one kind but is another.
    #[error("wrong kind: expected {expected:?}, got {got:?}")]
    WrongKind {
        /// the kind the caller expected
        expected: Kind,
        /// the kind in the header
        got: Kind,
    },
    /// A device-to-vendor kind was given to a device, or the reverse.
    #[error("wrong direction for kind {0:?}")]
    WrongDirection(Kind),
    /// The message names another device than the one opening or expected.
    #[error("message is for or from another device")]
    WrongDevice,
    /// The header's key epoch does not match the session key.
    #[error("key epoch {got} does not match the session's {expected}")]
    WrongEpoch {
        /// the session key's epoch
        expected: u32,
        /// the header's epoch
        got: u32,
    },
    /// The ephemeral key agreement produced an all-zero secret (a small-order
    /// public key).
    #[error("small-order public key in key agreement")]
    WeakKey,
    /// The device certificate (or, in a KeyUpdate, the vendor key
    /// certificate) is not signed by the vendor's certificate authority,
    /// or its key is weak.
    #[error("certificate is invalid")]
    BadCertificate,
    /// The counter was already accepted or is below the replay window.
    #[error("replay: {0}")]
    Replay(#[from] ReplayError),
}

impl OpenError {
    /// The stable numeric code (SPEC.md §10.1); a wrapped decoding or
    /// replay error gives its own code.
    ///
    /// ```
    /// use spime::error::OpenError;
    /// assert_eq!(OpenError::Unauthentic.code(), 20);
    /// ```
    pub const fn code(&self) -> u16 {
        match self {
            OpenError::Decode(e) => e.code(),
            OpenError::Unauthentic => 20,
            OpenError::WrongKind { .. } => 21,
            OpenError::WrongDirection(_) => 22,
            OpenError::WrongDevice => 23,
            OpenError::WrongEpoch { .. } => 24,
            OpenError::WeakKey => 25,
            OpenError::BadCertificate => 26,
            OpenError::Replay(r) => r.code(),
        }
    }
}

/// A device refused an authentic KeyUpdate (SPEC.md §8.7): what it
/// certifies may not replace the vendor key the device holds.
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VendorKeyError {
    /// The key's serial is below the one held, or equal with other keys
    /// (no rollback to an older vendor key).
    #[error("vendor key serial {got} does not follow the serial {held} held")]
    Rollback {
        /// the serial held (0: the key the device was provisioned with)
        held: u32,
        /// the certificate's serial
        got: u32,
    },
    /// The certificate is not valid at the device's time.
    #[error("vendor key certificate: {0}")]
    Invalid(crate::message::Validity),
    /// The device was not given the certificate authority's key
    /// (`Device::with_key_authority`), so it cannot learn a new vendor key.
    #[error("no certificate authority key: this device cannot learn a new vendor key")]
    NoAuthority,
}

impl VendorKeyError {
    /// The stable numeric code (SPEC.md §10.1).
    ///
    /// ```
    /// use spime::error::VendorKeyError;
    /// assert_eq!(VendorKeyError::Rollback { held: 2, got: 1 }.code(), 92);
    /// ```
    pub const fn code(&self) -> u16 {
        match self {
            VendorKeyError::Rollback { .. } => 92,
            VendorKeyError::Invalid(_) => 93,
            VendorKeyError::NoAuthority => 94,
        }
    }
}

/// Sealing a message failed.
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The body could not be encoded into the output buffer.
    #[error("encoding failed: {0}")]
    Encode(#[from] DecodeError),
    /// The output buffer is smaller than the sealed message.
    #[error("output buffer too small: need {needed} bytes, have {have}")]
    BufferTooSmall {
        /// bytes needed
        needed: usize,
        /// bytes available
        have: usize,
    },
    /// The key agreement produced an all-zero secret (small-order vendor key).
    #[error("small-order public key in key agreement")]
    WeakKey,
    /// The persistent counter could not provide a fresh value.
    #[error("counter: {0}")]
    Counter(#[from] CounterError),
    /// The kind and the sealing side disagree (a device sealing a vendor kind).
    #[error("kind {0:?} cannot be sealed by this side")]
    WrongDirection(Kind),
}

impl SealError {
    /// The numeric code (SPEC.md §10.1): a wrapped encoding or counter
    /// error gives its own; 25 WeakKey, 22 WrongDirection, 100
    /// BufferTooSmall (local).
    ///
    /// ```
    /// use spime::error::{CounterError, SealError};
    /// assert_eq!(SealError::WeakKey.code(), 25);
    /// assert_eq!(SealError::Counter(CounterError::Lost).code(), 103);
    /// ```
    pub const fn code(&self) -> u16 {
        match self {
            SealError::Encode(e) => e.code(),
            SealError::BufferTooSmall { .. } => 100,
            SealError::WeakKey => 25,
            SealError::Counter(e) => e.code(),
            SealError::WrongDirection(_) => 22,
        }
    }
}

/// A counter value was refused by a replay window.
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// This counter was already accepted.
    #[error("counter {0} was already accepted")]
    Duplicate(u64),
    /// This counter is older than the window can judge.
    #[error("counter {counter} is below the window (highest accepted {highest})")]
    TooOld {
        /// the refused counter
        counter: u64,
        /// the highest counter accepted so far
        highest: u64,
    },
}

impl ReplayError {
    /// The stable numeric code (SPEC.md §10.1): 27 duplicate, 28 too old.
    pub const fn code(&self) -> u16 {
        match self {
            ReplayError::Duplicate(_) => 27,
            ReplayError::TooOld { .. } => 28,
        }
    }
}

/// The persistent message counter could not hand out a value.
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CounterError {
    /// The storage refused the write that reserves the next block; no value
    /// was handed out, so none can be reused.
    #[error("counter storage write failed")]
    Storage,
    /// The counter reached its maximum; the device must not send again.
    #[error("counter exhausted")]
    Exhausted,
    /// No intact copy of the counter survives although one was written
    /// (or more damage than can be bounded): values may already have been
    /// used, so none is handed out. The device recovers with
    /// [`crate::device::session::Device::recover`], which moves the counter
    /// past any value used and opens a new key epoch (SPEC.md §8.1).
    #[error("counter lost to storage damage")]
    Lost,
}

impl CounterError {
    /// The numeric code (SPEC.md §10.1, local): 101 Storage, 102
    /// Exhausted, 103 Lost.
    ///
    /// ```
    /// use spime::error::CounterError;
    /// assert_eq!(CounterError::Exhausted.code(), 102);
    /// ```
    pub const fn code(&self) -> u16 {
        match self {
            CounterError::Storage => 101,
            CounterError::Exhausted => 102,
            CounterError::Lost => 103,
        }
    }
}
