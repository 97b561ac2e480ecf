//! Vendor key certificates and the KeyUpdate message (SPEC.md §5.11): the
//! vendor's certificate authority (`VCA`, offline) certifies each of the
//! vendor's message key pairs, and a device provisioned with `VCA.pub`
//! learns a new vendor key from a KeyUpdate and keeps working after the
//! old key retires.

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::codec::{self, Bytes64, Canonical, varint_max};
use crate::error::{DecodeError, OpenError, Rule};
use crate::seal::VendorPublicKeys;
use crate::wire::Kind;

use super::{Body, CLOCK_SKEW, Validity};

/// Domain-separation tag of a vendor key certificate's signature (32 bytes).
pub const VENDOR_KEY_CERTIFICATE_DST: &[u8] = b"spime/v1 vendor key certificate\0";

/// The signed part of a [`VendorKeyCertificate`]: one of the vendor's
/// message key pairs (`VS`, `VX`), its serial and its validity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VendorKeyBody {
    /// The key's serial: each new vendor key has a higher one. A device
    /// never goes back to a lower serial. The key a device is provisioned
    /// with, uncertified, counts as serial 0.
    pub serial: u32,
    /// The vendor's Ed25519 signing key `VS` (signs vendor messages).
    #[serde(with = "crate::codec::array")]
    pub signing: [u8; 32],
    /// The vendor's X25519 key-agreement key `VX` (devices open epochs with it).
    #[serde(with = "crate::codec::array")]
    pub key_agreement: [u8; 32],
    /// Unix seconds from which the key is valid (a device allows [`CLOCK_SKEW`]).
    pub not_before: u64,
    /// Unix seconds after which the key is no longer valid; not before `not_before`.
    pub not_after: u64,
}

impl VendorKeyBody {
    /// Longest encoding.
    pub const MAX_ENCODED_LEN: usize = varint_max(32) + 32 + 32 + 2 * varint_max(64);

    /// Whether the key is valid at `now`: `not_before` at most
    /// [`CLOCK_SKEW`] after `now`, `now` not after `not_after`.
    ///
    /// ```
    /// use spime::message::{Validity, VendorKeyBody};
    /// let body = VendorKeyBody { serial: 1, signing: [0; 32], key_agreement: [0; 32], not_before: 100, not_after: 200 };
    /// assert_eq!(body.valid_at(150), Ok(()));
    /// assert_eq!(body.valid_at(201), Err(Validity::Expired { not_after: 200 }));
    /// ```
    ///
    /// # Errors
    /// The [`Validity`] failure.
    pub fn valid_at(&self, now: u64) -> Result<(), Validity> {
        if self.not_before > now.saturating_add(CLOCK_SKEW) {
            return Err(Validity::NotYetValid { issued_at: self.not_before });
        }
        if now > self.not_after {
            return Err(Validity::Expired { not_after: self.not_after });
        }
        Ok(())
    }
}

impl Canonical for VendorKeyBody {
    const MAX_ENCODED_LEN: usize = VendorKeyBody::MAX_ENCODED_LEN;
    fn validate(&self) -> Result<(), DecodeError> {
        if self.not_after < self.not_before {
            return Err(DecodeError::OutOfRange(Rule::VendorKeyValidity));
        }
        Ok(())
    }
}

/// A vendor key certified by the vendor's certificate authority `VCA`:
/// Ed25519 by `VCA` over `"spime/v1 vendor key certificate\0" || encoded VendorKeyBody`.
///
/// ```
/// use ed25519_dalek::SigningKey;
/// use spime::message::{VendorKeyBody, VendorKeyCertificate};
/// use spime::seal::VendorKeys;
/// let authority = SigningKey::from_bytes(&[9; 32]); // kept offline, at the factory
/// let next = VendorKeys::from_secrets(&[5; 32], &[6; 32]);
/// let cert = VendorKeyCertificate::certify(&next, 2, 0, u64::MAX, &authority)?;
/// assert_eq!(cert.verify(&authority.verifying_key())?, next.public());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VendorKeyCertificate {
    /// What is certified.
    pub body: VendorKeyBody,
    /// The certificate authority's signature.
    pub signature: Bytes64,
}

impl VendorKeyCertificate {
    /// Longest encoding.
    pub const MAX_ENCODED_LEN: usize = VendorKeyBody::MAX_ENCODED_LEN + 64;

    /// Signs `body` with the certificate authority's key.
    ///
    /// # Errors
    /// [`DecodeError::OutOfRange`] for a `not_after` before `not_before`.
    pub fn issue(body: VendorKeyBody, authority: &SigningKey) -> Result<VendorKeyCertificate, DecodeError> {
        use ed25519_dalek::ed25519::signature::MultipartSigner;
        body.validate()?;
        let mut buf = [0u8; VendorKeyBody::MAX_ENCODED_LEN];
        let tbs = codec::encode(&body, &mut buf)?;
        let sig = authority.multipart_sign(&[VENDOR_KEY_CERTIFICATE_DST, tbs]);
        Ok(VendorKeyCertificate { body, signature: Bytes64(sig.to_bytes()) })
    }

    /// Certifies the public keys of `keys` as serial `serial`, valid from
    /// `not_before` to `not_after`.
    ///
    /// # Errors
    /// As [`VendorKeyCertificate::issue`].
    pub fn certify(
        keys: &crate::seal::VendorKeys,
        serial: u32,
        not_before: u64,
        not_after: u64,
        authority: &SigningKey,
    ) -> Result<VendorKeyCertificate, DecodeError> {
        let public = keys.public();
        let body = VendorKeyBody {
            serial,
            signing: public.signing.to_bytes(),
            key_agreement: public.key_agreement,
            not_before,
            not_after,
        };
        VendorKeyCertificate::issue(body, authority)
    }

    /// Checks the authority's signature (strictly, SPEC §2.1), that the
    /// signing key is the canonical encoding of a point not of small order,
    /// and that the key-agreement key is not all zero; returns the keys.
    /// (A small-order key-agreement key is refused when an epoch is opened
    /// with it: `WeakKey`.)
    ///
    /// # Errors
    /// [`OpenError::BadCertificate`] for any failure.
    pub fn verify(&self, authority: &VerifyingKey) -> Result<VendorPublicKeys, OpenError> {
        self.verify_key_bytes(authority.as_bytes())?;
        let signing = VerifyingKey::from_bytes(&self.body.signing).map_err(|_| OpenError::BadCertificate)?;
        Ok(VendorPublicKeys { signing, key_agreement: self.body.key_agreement })
    }

    /// [`VendorKeyCertificate::verify`] with keys as bytes (the device's
    /// path: on salty firmware nothing is decompressed by
    /// curve25519-dalek); the certified keys are the body's.
    pub(crate) fn verify_key_bytes(&self, authority: &[u8; 32]) -> Result<(), OpenError> {
        let mut buf = [0u8; VendorKeyBody::MAX_ENCODED_LEN];
        let tbs = codec::encode(&self.body, &mut buf).map_err(|_| OpenError::BadCertificate)?;
        crate::seal::verify_strict_parts_bytes(authority, &[VENDOR_KEY_CERTIFICATE_DST, tbs], &self.signature.0)
            .map_err(|_| OpenError::BadCertificate)?;
        if !crate::seal::is_strong_key(&self.body.signing) {
            return Err(OpenError::BadCertificate);
        }
        Ok(())
    }
}

impl Canonical for VendorKeyCertificate {
    const MAX_ENCODED_LEN: usize = VendorKeyCertificate::MAX_ENCODED_LEN;
    fn validate(&self) -> Result<(), DecodeError> {
        self.body.validate()
    }
}

/// KeyUpdate (vendor to device): a new vendor key, certified by the
/// vendor's certificate authority. The envelope is signed by the key it
/// certifies (not by the key the device holds) and sealed under the
/// device's current epoch, so a vendor can still reach a device whose
/// old key has retired (SPEC.md §5.11, §8.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyUpdate {
    /// The new key's certificate.
    pub certificate: VendorKeyCertificate,
}

impl Canonical for KeyUpdate {
    const MAX_ENCODED_LEN: usize = VendorKeyCertificate::MAX_ENCODED_LEN;
    fn validate(&self) -> Result<(), DecodeError> {
        self.certificate.validate()
    }
}

impl Body for KeyUpdate {
    const KIND: Kind = Kind::KEY_UPDATE;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::seal::VendorKeys;

    fn authority() -> SigningKey {
        SigningKey::from_bytes(&[9; 32])
    }

    #[test]
    fn certificate_round_trips_and_verifies() {
        let next = VendorKeys::from_secrets(&[5; 32], &[6; 32]);
        let cert = VendorKeyCertificate::certify(&next, 7, 10, 20, &authority()).unwrap();
        let mut buf = [0u8; KeyUpdate::MAX_ENCODED_LEN];
        let bytes = codec::encode(&KeyUpdate { certificate: cert }, &mut buf).unwrap();
        let back: KeyUpdate = codec::decode(bytes).unwrap();
        assert_eq!(back.certificate, cert);
        assert_eq!(back.certificate.verify(&authority().verifying_key()), Ok(next.public()));
    }

    #[test]
    fn certificate_refuses_another_authority_and_tampering() {
        let next = VendorKeys::from_secrets(&[5; 32], &[6; 32]);
        let cert = VendorKeyCertificate::certify(&next, 7, 10, 20, &authority()).unwrap();
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert_eq!(cert.verify(&other), Err(OpenError::BadCertificate));
        let mut bumped = cert;
        bumped.body.serial = 8;
        assert_eq!(bumped.verify(&authority().verifying_key()), Err(OpenError::BadCertificate));
        // The identity point as the signing key: refused even when certified.
        let mut weak = cert.body;
        weak.signing = [0; 32];
        weak.signing[0] = 1;
        let weak = VendorKeyCertificate::issue(weak, &authority()).unwrap();
        assert_eq!(weak.verify(&authority().verifying_key()), Err(OpenError::BadCertificate));
    }

    #[test]
    fn validity_is_a_decoding_rule() {
        let body = VendorKeyBody { serial: 1, signing: [1; 32], key_agreement: [2; 32], not_before: 5, not_after: 4 };
        assert_eq!(
            VendorKeyCertificate::issue(body, &authority()),
            Err(DecodeError::OutOfRange(Rule::VendorKeyValidity))
        );
        let ok = VendorKeyCertificate::issue(VendorKeyBody { not_after: 5, ..body }, &authority()).unwrap();
        let mut buf = [0u8; KeyUpdate::MAX_ENCODED_LEN];
        let mut bytes = codec::encode(&KeyUpdate { certificate: ok }, &mut buf).unwrap().to_vec();
        // not_after is the last varint before the signature: make it 4.
        let at = bytes.len() - 65;
        bytes[at] = 4;
        assert_eq!(codec::decode::<KeyUpdate>(&bytes), Err(DecodeError::OutOfRange(Rule::VendorKeyValidity)));
    }
}
