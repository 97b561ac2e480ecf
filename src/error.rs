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

use crate::wire::Kind;

/// A byte string is not a valid encoding of the expected value.
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
    /// A data category or channel bit that is not defined.
    #[error("unknown bits 0x{0:x} in a set")]
    UnknownBits(u16),
    /// A list that must be strictly ordered (and so free of duplicates) is not.
    #[error("list not in strictly ascending order: {0}")]
    Unordered(&'static str),
    /// A field's value is outside its documented range.
    #[error("value out of range: {0}")]
    OutOfRange(&'static str),
    /// The output buffer is too small for the encoding.
    #[error("output buffer of {have} bytes is too small")]
    BufferTooSmall {
        /// bytes available
        have: usize,
    },
}

/// A sealed message was refused while opening it.
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
    /// The device certificate is not signed by the vendor, or its key is weak.
    #[error("device certificate is invalid")]
    BadCertificate,
    /// The counter was already accepted or is below the replay window.
    #[error("replay: {0}")]
    Replay(#[from] ReplayError),
}

/// Sealing a message failed.
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

/// A counter value was refused by a replay window.
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

/// The persistent message counter could not hand out a value.
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
