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
    pub device_key: [u8; 32],
    /// The product model (UTF-8).
    #[serde(with = "crate::codec::length::string")]
    pub model: heapless::String<32>,
    /// Hardware revision.
    pub hardware_revision: u16,
    /// Unix seconds of manufacture.
    pub issued_at: u64,
}

impl CertificateBody {
    /// Longest encoding.
    pub const MAX_ENCODED_LEN: usize = crate::wire::DEVICE_ID_LEN + 32 + 1 + 32 + varint_max(16) + varint_max(64);
}

impl Canonical for CertificateBody {
    const MAX_ENCODED_LEN: usize = CertificateBody::MAX_ENCODED_LEN;
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
    /// Only if `body` cannot be encoded (it always fits its bound).
    pub fn issue(body: CertificateBody, vendor: &SigningKey) -> Result<DeviceCertificate, DecodeError> {
        use ed25519_dalek::ed25519::signature::MultipartSigner;
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
