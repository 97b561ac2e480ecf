//! Proof of consent: the owner's signature over a state, the vendor's
//! receipt, and the rules each side uses to refuse what it cannot trust.
//!
//! The device's envelope signature already makes every consent message a
//! proof (SPEC.md §4). Where the product has a companion app, the owner's
//! own key signs the state too ([`OwnerProof`]); the vendor pins that key
//! at registration and refuses states signed by anyone else.

use ed25519_dalek::SigningKey;
use ed25519_dalek::ed25519::signature::MultipartSigner;
use subtle::ConstantTimeEq;

use super::{
    ConsentState, MAX_FIRST_VERSION, MAX_VERSION_STEP, OWNER_CONSENT_DST, OWNER_TRANSFER_DST, OwnerProof, SignedConsent,
};
use crate::codec::{self, Bytes64, Canonical};
use crate::error::DecodeError;
use crate::message::{Receipt, Transfer, consent_digest};
use crate::wire::DeviceId;

/// A consent state, its proof or its receipt was refused.
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConsentError {
    /// The state is not canonical (or could not be encoded).
    #[error("invalid consent state: {0}")]
    Decode(#[from] DecodeError),
    /// The product requires the owner's signature and there is none.
    #[error("the owner's signature is required and missing")]
    OwnerProofMissing,
    /// The owner's signature does not verify for this state and device
    /// (forged, for another device, or over another state).
    #[error("the owner's signature does not verify")]
    OwnerProofInvalid,
    /// The state is signed by an owner key other than the one pinned for
    /// this relationship.
    #[error("signed by another owner key than the one registered")]
    OwnerKeyMismatch,
    /// The state's version is not newer than the held one: ignored.
    #[error("consent version {got} does not supersede the held version {held}")]
    Stale {
        /// the held version
        held: u32,
        /// the version received
        got: u32,
    },
    /// The same version as held, with other content: refused.
    #[error("consent version {0} received twice with different content")]
    Conflict(u32),
    /// The version jumps further ahead of the held one than the rules
    /// allow ([`check_step`], [`check_first`]).
    #[error("consent version {got} is above {max}, the highest allowed after version {held}")]
    TooFarAhead {
        /// the held version (0 when none is held)
        held: u32,
        /// the version received
        got: u32,
        /// the highest version allowed
        max: u32,
    },
    /// A receipt for a consent version the device never sent.
    #[error("receipt for consent version {0}, which was never sent")]
    ReceiptUnknownVersion(u32),
    /// A receipt whose digest is not the digest of what the device sent.
    #[error("receipt for consent version {0} names other content than was sent")]
    ReceiptMismatch(u32),
}

impl ConsentError {
    /// The stable numeric code (SPEC.md §10.1): a wrapped decoding error
    /// gives its own; 44 TooFarAhead, 45 Stale, 46 Conflict,
    /// 47 OwnerProofMissing, 48 OwnerProofInvalid, 49 OwnerKeyMismatch,
    /// 90 ReceiptUnknownVersion, 91 ReceiptMismatch.
    pub const fn code(&self) -> u16 {
        match self {
            ConsentError::Decode(e) => e.code(),
            ConsentError::TooFarAhead { .. } => 44,
            ConsentError::Stale { .. } => 45,
            ConsentError::Conflict(_) => 46,
            ConsentError::OwnerProofMissing => 47,
            ConsentError::OwnerProofInvalid => 48,
            ConsentError::OwnerKeyMismatch => 49,
            ConsentError::ReceiptUnknownVersion(_) => 90,
            ConsentError::ReceiptMismatch(_) => 91,
        }
    }
}

/// Who must have signed a consent state, besides the device's envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerRequirement<'a> {
    /// The product has no owner key: the device signs on the owner's
    /// behalf (its envelope signature is the record). An [`OwnerProof`], if
    /// present anyway, must verify.
    DeviceOnBehalf,
    /// An owner proof must be present and verify; any key (the first
    /// registration of a relationship, which pins the key).
    AnyOwnerKey,
    /// An owner proof by exactly this (pinned) owner key.
    OwnerKey(&'a [u8; 32]),
}

/// Encodes a state into a stack buffer and runs `f` on the bytes.
fn with_encoded<T>(state: &ConsentState, f: impl FnOnce(&[u8]) -> T) -> Result<T, DecodeError> {
    let mut buf = [0u8; ConsentState::MAX_ENCODED_LEN];
    let bytes = codec::fixed::encode(state, &mut buf)?;
    Ok(f(bytes))
}

impl OwnerProof {
    /// The owner signs `state` for `device`: Ed25519 over
    /// `"spime/v1 owner consent\0" || device id (8) || encoded ConsentState`.
    ///
    /// # Errors
    /// [`ConsentError::Decode`] when the state is not canonical.
    pub fn sign(state: &ConsentState, device: &DeviceId, owner: &SigningKey) -> Result<OwnerProof, ConsentError> {
        state.validate()?;
        let sig = with_encoded(state, |bytes| owner.multipart_sign(&[OWNER_CONSENT_DST, &device.0, bytes]))?;
        Ok(OwnerProof { owner_key: owner.verifying_key().to_bytes(), signature: Bytes64(sig.to_bytes()) })
    }

    /// Checks the signature over `state` for `device` (strict Ed25519).
    ///
    /// # Errors
    /// [`ConsentError::OwnerProofInvalid`]; [`ConsentError::Decode`] for a
    /// non-canonical state.
    // Out of line: the verification's large frame is then only taken when
    // a state carries a proof (measured: 5.7 KB of the device's peak stack).
    #[inline(never)]
    pub fn verify(&self, state: &ConsentState, device: &DeviceId) -> Result<(), ConsentError> {
        state.validate()?;
        with_encoded(state, |bytes| {
            crate::seal::verify_strict_parts_bytes(
                &self.owner_key,
                &[OWNER_CONSENT_DST, &device.0, bytes],
                &self.signature.0,
            )
        })?
        .map_err(|_| ConsentError::OwnerProofInvalid)
    }
}

impl OwnerProof {
    /// The owner authorises handing the product on: Ed25519 over
    /// `"spime/v1 owner transfer\0" || device id || u32be(consent_version) || u64be(at)`,
    /// where `consent_version` is the consent version held at the
    /// hand-over and `at` the Transfer's time.
    ///
    /// ```
    /// use spime::consent::{OwnerProof, authorise_transfer};
    /// use spime::message::Transfer;
    /// use spime::wire::DeviceId;
    /// let owner = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
    /// let device = DeviceId([1; 8]);
    /// let proof = OwnerProof::sign_transfer(&device, 7, 1_000, &owner);
    /// let t = Transfer { at: 1_000, consent_version: 7, owner: Some(proof) };
    /// let pinned = owner.verifying_key().to_bytes();
    /// assert!(authorise_transfer(&t, &device, 7, Some(&pinned)).is_ok());
    /// // Without the proof, the pinned owner's relationship cannot be ended.
    /// assert!(authorise_transfer(&Transfer::unsigned(1_000, 7), &device, 7, Some(&pinned)).is_err());
    /// ```
    pub fn sign_transfer(device: &DeviceId, consent_version: u32, at: u64, owner: &SigningKey) -> OwnerProof {
        let sig =
            owner.multipart_sign(&[OWNER_TRANSFER_DST, &device.0, &consent_version.to_be_bytes(), &at.to_be_bytes()]);
        OwnerProof { owner_key: owner.verifying_key().to_bytes(), signature: Bytes64(sig.to_bytes()) }
    }

    /// Checks an authorisation made by [`OwnerProof::sign_transfer`] (strict Ed25519).
    ///
    /// # Errors
    /// [`ConsentError::OwnerProofInvalid`].
    pub fn verify_transfer(&self, device: &DeviceId, consent_version: u32, at: u64) -> Result<(), ConsentError> {
        crate::seal::verify_strict_parts_bytes(
            &self.owner_key,
            &[OWNER_TRANSFER_DST, &device.0, &consent_version.to_be_bytes(), &at.to_be_bytes()],
            &self.signature.0,
        )
        .map_err(|_| ConsentError::OwnerProofInvalid)
    }
}

/// Whether `transfer` may end the relationship of `device`, whose
/// consent version `held` is in force and whose owner key `pinned` is
/// pinned, if any (SPEC.md §9.4). The rule both sides apply:
///
/// 1. `transfer.consent_version` must not be below `held` (`Stale`: a
///    proof made for an earlier relationship cannot be replayed, as
///    versions go forward for the device's whole life), nor more than
///    [`MAX_VERSION_STEP`] above it (`TooFarAhead`);
/// 2. with a key pinned, the owner's proof must be present
///    (`OwnerProofMissing`), by the pinned key (`OwnerKeyMismatch`) and
///    valid (`OwnerProofInvalid`);
/// 3. with no key pinned, a proof that is present must be valid.
///
/// # Errors
/// As listed.
pub fn authorise_transfer(
    transfer: &Transfer,
    device: &DeviceId,
    held: u32,
    pinned: Option<&[u8; 32]>,
) -> Result<(), ConsentError> {
    let got = transfer.consent_version;
    if got < held {
        return Err(ConsentError::Stale { held, got });
    }
    check_step(Some(held), got)?;
    match (&transfer.owner, pinned) {
        (None, None) => Ok(()),
        (None, Some(_)) => Err(ConsentError::OwnerProofMissing),
        (Some(p), Some(k)) if !bool::from(k.ct_eq(&p.owner_key)) => Err(ConsentError::OwnerKeyMismatch),
        (Some(p), _) => p.verify_transfer(device, got, transfer.at),
    }
}

impl SignedConsent {
    /// Checks the state and the owner's signature as `required`, for the
    /// device whose (already verified) envelope carried it. Returns the
    /// owner key that signed, if any, for the vendor to pin.
    ///
    /// # Errors
    /// [`ConsentError::Decode`] for a non-canonical state,
    /// [`ConsentError::OwnerProofMissing`], [`ConsentError::OwnerKeyMismatch`]
    /// (checked before the signature), [`ConsentError::OwnerProofInvalid`].
    pub fn verify_owner(
        &self,
        device: &DeviceId,
        required: OwnerRequirement<'_>,
    ) -> Result<Option<[u8; 32]>, ConsentError> {
        self.state.validate()?;
        let Some(proof) = &self.owner else {
            return match required {
                OwnerRequirement::DeviceOnBehalf => Ok(None),
                _ => Err(ConsentError::OwnerProofMissing),
            };
        };
        if let OwnerRequirement::OwnerKey(pinned) = required
            && !bool::from(pinned.ct_eq(&proof.owner_key))
        {
            return Err(ConsentError::OwnerKeyMismatch);
        }
        proof.verify(&self.state, device)?;
        Ok(Some(proof.owner_key))
    }
}

impl ConsentState {
    /// The vendor's rule for a consent state received while `self` is held:
    /// `Ok(true)` to replace the held state (a strictly higher version),
    /// `Ok(false)` for the very state already held (a duplicate: send the
    /// receipt again, change nothing).
    ///
    /// # Errors
    /// [`ConsentError::Stale`] for a lower version (ignored: an older grant
    /// never undoes a later withdrawal), [`ConsentError::Conflict`] for the
    /// same version with other content, [`ConsentError::TooFarAhead`] for a
    /// version more than [`MAX_VERSION_STEP`] above the held one.
    pub fn judge_update(&self, incoming: &ConsentState) -> Result<bool, ConsentError> {
        check_step(Some(self.version), incoming.version)?;
        if incoming.supersedes(self) {
            Ok(true)
        } else if incoming.version == self.version {
            if incoming == self { Ok(false) } else { Err(ConsentError::Conflict(incoming.version)) }
        } else {
            Err(ConsentError::Stale { held: self.version, got: incoming.version })
        }
    }
}

/// The version-step rule within a relationship (SPEC.md §6.3): a new
/// version is at most [`MAX_VERSION_STEP`] above the held one (above 0 when
/// none is held).
///
/// # Errors
/// [`ConsentError::TooFarAhead`].
pub fn check_step(held: Option<u32>, got: u32) -> Result<(), ConsentError> {
    let base = held.unwrap_or(0);
    let max = base.saturating_add(MAX_VERSION_STEP);
    if got > max {
        return Err(ConsentError::TooFarAhead { held: base, got, max });
    }
    Ok(())
}

/// The rule for the first state of a relationship (SPEC.md §6.3): its
/// version is at most [`MAX_FIRST_VERSION`], or at most the held version
/// (the reset state after a transfer) plus [`MAX_VERSION_STEP`] if that is
/// higher.
///
/// ```
/// use spime::consent::{MAX_FIRST_VERSION, check_first};
/// assert!(check_first(None, 1 << 28).is_ok());
/// assert!(check_first(Some(2), MAX_FIRST_VERSION).is_ok());
/// assert!(check_first(Some(2), MAX_FIRST_VERSION + 1).is_err());
/// ```
///
/// # Errors
/// [`ConsentError::TooFarAhead`].
pub fn check_first(held: Option<u32>, got: u32) -> Result<(), ConsentError> {
    let base = held.unwrap_or(0);
    let max = base.saturating_add(MAX_VERSION_STEP).max(MAX_FIRST_VERSION);
    if got > max {
        return Err(ConsentError::TooFarAhead { held: base, got, max });
    }
    Ok(())
}

/// What the device remembers of a consent state it sent, to check the
/// vendor's receipt: the version and the digest of the encoded
/// [`SignedConsent`] (see [`consent_digest`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentConsent {
    /// The version sent.
    pub version: u32,
    /// SHA-256 of the encoded [`SignedConsent`] sent.
    pub digest: [u8; 32],
}

impl SentConsent {
    /// The record of sending `signed`.
    ///
    /// # Errors
    /// [`DecodeError`] if it cannot be encoded (it is larger than its bound).
    pub fn of(signed: &SignedConsent) -> Result<SentConsent, DecodeError> {
        let mut buf = [0u8; SignedConsent::MAX_ENCODED_LEN];
        let bytes = codec::fixed::encode(signed, &mut buf)?;
        Ok(SentConsent { version: signed.state.version, digest: consent_digest(bytes) })
    }
}

/// The vendor's receipt for a consent state it received as
/// `encoded_signed_consent` (the exact body field bytes), recorded at `now`.
///
/// # Errors
/// [`ConsentError::Decode`] when the bytes are not a canonical [`SignedConsent`].
pub fn receipt_for(encoded_signed_consent: &[u8], now: u64) -> Result<Receipt, ConsentError> {
    let signed: SignedConsent = codec::decode(encoded_signed_consent)?;
    Ok(Receipt {
        consent_version: signed.state.version,
        consent_digest: consent_digest(encoded_signed_consent),
        received_at: now,
    })
}

/// The device's check of a receipt (whose envelope was verified with the
/// vendor's key) against the consent states it sent.
///
/// # Errors
/// [`ConsentError::ReceiptUnknownVersion`] when no sent state has the
/// receipt's version, [`ConsentError::ReceiptMismatch`] when the digest
/// differs (compared in constant time).
pub fn verify_receipt(receipt: &Receipt, sent: &[SentConsent]) -> Result<(), ConsentError> {
    let s = sent
        .iter()
        .find(|s| s.version == receipt.consent_version)
        .ok_or(ConsentError::ReceiptUnknownVersion(receipt.consent_version))?;
    if bool::from(s.digest.ct_eq(&receipt.consent_digest)) {
        Ok(())
    } else {
        Err(ConsentError::ReceiptMismatch(receipt.consent_version))
    }
}
