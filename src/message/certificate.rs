//! The device certificate: the vendor's signature binding a device id to
//! the device's Ed25519 key, made at manufacture.

use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::codec::{self, Bytes64, Canonical, varint_max};
use crate::error::{DecodeError, OpenError};
use crate::wire::DeviceId;

/// Domain-separation tag of the certificate signature.
pub const CERTIFICATE_DST: &[u8] = b"spime/v1 device certificate\0";

/// The signed part of a [`DeviceCertificate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateBody {
    /// The device's id.
    pub device: DeviceId,
    /// The device's Ed25519 public key.
    #[serde(with = "crate::codec::array")]
    pub device_key: [u8; 32],
    /// The product model (UTF-8).
    #[serde(with = "crate::codec::length::string")]
    pub model: heapless::String<32>,
    /// Hardware revision.
    pub hardware_revision: u16,
    /// Unix seconds of manufacture: the certificate is not valid before it
    /// (a vendor allows [`CLOCK_SKEW`] for the device's clock).
    pub issued_at: u64,
    /// Unix seconds after which the certificate is no longer valid, if it
    /// expires; not before `issued_at`.
    pub not_after: Option<u64>,
}

/// How far ahead of the vendor's clock a certificate's `issued_at` may be
/// (one day), for clocks that are not quite in step.
pub const CLOCK_SKEW: u64 = 86_400;

/// A certificate is outside its validity period (SPEC.md §5.4).
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Validity {
    /// Issued after `now` plus [`CLOCK_SKEW`].
    #[error("certificate issued at {issued_at}, in the future")]
    NotYetValid {
        /// the certificate's `issued_at`
        issued_at: u64,
    },
    /// `now` is after `not_after`.
    #[error("certificate expired at {not_after}")]
    Expired {
        /// the certificate's `not_after`
        not_after: u64,
    },
}

impl CertificateBody {
    /// Longest encoding.
    pub const MAX_ENCODED_LEN: usize =
        crate::wire::DEVICE_ID_LEN + 32 + 1 + 32 + varint_max(16) + varint_max(64) + 1 + varint_max(64);

    /// Whether the certificate is valid at `now` (Unix seconds): not issued
    /// more than [`CLOCK_SKEW`] after `now`, not expired.
    ///
    /// ```
    /// use spime::message::{CertificateBody, Validity};
    /// use spime::wire::DeviceId;
    /// let body = CertificateBody { device: DeviceId([1; 8]), device_key: [0; 32], model: "k".try_into().unwrap(),
    ///                              hardware_revision: 1, issued_at: 100, not_after: Some(200) };
    /// assert_eq!(body.valid_at(150), Ok(()));
    /// assert_eq!(body.valid_at(201), Err(Validity::Expired { not_after: 200 }));
    /// ```
    ///
    /// # Errors
    /// The [`Validity`] failure.
    pub fn valid_at(&self, now: u64) -> Result<(), Validity> {
        if self.issued_at > now.saturating_add(CLOCK_SKEW) {
            return Err(Validity::NotYetValid { issued_at: self.issued_at });
        }
        match self.not_after {
            Some(not_after) if now > not_after => Err(Validity::Expired { not_after }),
            _ => Ok(()),
        }
    }
}

impl Canonical for CertificateBody {
    const MAX_ENCODED_LEN: usize = CertificateBody::MAX_ENCODED_LEN;
    fn validate(&self) -> Result<(), DecodeError> {
        if self.not_after.is_some_and(|t| t < self.issued_at) {
            return Err(DecodeError::OutOfRange(crate::error::Rule::CertificateValidity));
        }
        Ok(())
    }
}

/// A vendor-signed device certificate: Ed25519 by the vendor's signing key
/// over `"spime/v1 device certificate\0" || encoded CertificateBody`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCertificate {
    /// What is certified.
    pub body: CertificateBody,
    /// The vendor's signature.
    pub signature: Bytes64,
}

impl DeviceCertificate {
    /// Longest encoding.
    pub const MAX_ENCODED_LEN: usize = CertificateBody::MAX_ENCODED_LEN + 64;

    /// Signs `body` with the vendor's signing key.
    ///
    /// # Errors
    /// [`DecodeError::OutOfRange`] for a `not_after` before `issued_at`.
    pub fn issue(body: CertificateBody, vendor: &SigningKey) -> Result<DeviceCertificate, DecodeError> {
        use ed25519_dalek::ed25519::signature::MultipartSigner;
        body.validate()?;
        let mut buf = [0u8; CertificateBody::MAX_ENCODED_LEN];
        let tbs = codec::encode(&body, &mut buf)?;
        let sig = vendor.multipart_sign(&[CERTIFICATE_DST, tbs]);
        Ok(DeviceCertificate { body, signature: Bytes64(sig.to_bytes()) })
    }

    /// Checks the vendor's signature (`verify_strict`) and that the device
    /// key is the canonical encoding of a point that is not of small order;
    /// returns the device's key.
    ///
    /// # Errors
    /// [`OpenError::BadCertificate`] for any failure.
    pub fn verify(&self, vendor: &VerifyingKey) -> Result<VerifyingKey, OpenError> {
        let mut buf = [0u8; CertificateBody::MAX_ENCODED_LEN];
        let tbs = codec::encode(&self.body, &mut buf).map_err(|_| OpenError::BadCertificate)?;
        let sig = Signature::from_bytes(&self.signature.0);
        crate::seal::verify_strict_parts(vendor, &[CERTIFICATE_DST, tbs], &sig)
            .map_err(|_| OpenError::BadCertificate)?;
        let key = VerifyingKey::from_bytes(&self.body.device_key).map_err(|_| OpenError::BadCertificate)?;
        if key.is_weak() || !crate::seal::is_canonical_point_encoding(&self.body.device_key) {
            return Err(OpenError::BadCertificate);
        }
        Ok(key)
    }
}
