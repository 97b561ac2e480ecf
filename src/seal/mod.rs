//! Sealing and opening: sign, then encrypt.
//!
//! A sealed message (an *envelope*) is
//!
//! ```text
//! header || ChaCha20-Poly1305(key, nonce, aad = header, body || signature) || tag
//! signature = Ed25519(sender, "spime/v1 message\0" || header || body)
//! nonce     = direction byte || 00 00 00 || counter (u64 BE)
//! ```
//!
//! Opening goes in steps, each a type that only the previous step makes:
//! [`Envelope::parse`] checks the header and lengths, [`Envelope::decrypt`]
//! gives a [`Plaintext`], [`Plaintext::verify`] checks the signature with the
//! sender's key and gives a [`Verified`], and only a [`Verified`] decodes
//! into a body. A [`Verified`] keeps the exact header and body bytes with the
//! signature: a proof anyone with the sender's public key can check later
//! ([`verify_signature`]), with no session key.

pub mod counter;
pub mod keys;
pub mod replay;
#[cfg(feature = "salty")]
mod salty_backend;

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce, Tag};
use ed25519_dalek::ed25519::signature::MultipartSigner;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};

use crate::codec;
use crate::error::{DecodeError, OpenError, SealError};
use crate::message::{Body, MAX_SEALED_LEN};
use crate::wire::{DeviceId, Direction, Header, Kind};

pub use keys::{AeadKey, DeviceKey, SessionKeys, VendorKeys, VendorPublicBytes, VendorPublicKeys};

/// Domain-separation tag that starts every envelope signature.
pub const MESSAGE_DST: &[u8] = b"spime/v1 message\0";
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Length of the Poly1305 tag.
pub const TAG_LEN: usize = 16;

/// The AEAD nonce for a counter in a direction.
///
/// ```
/// use spime::seal::nonce;
/// use spime::wire::Direction;
/// assert_eq!(nonce(Direction::VendorToDevice, 258), [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2]);
/// ```
pub fn nonce(direction: Direction, counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[0] = direction.nonce_byte();
    n[4..].copy_from_slice(&counter.to_be_bytes());
    n
}

/// What goes in the header of a message to seal; the kind comes from the body type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seal {
    /// The device the message is from (or to, vendor to device).
    pub device: DeviceId,
    /// The epoch of the session keys used.
    pub epoch: u32,
    /// A counter value never used before by this sender for this device.
    pub counter: u64,
    /// The ephemeral public key, when this message opens the epoch.
    pub ephemeral: Option<[u8; 32]>,
}

/// Seals `body` into `out` and returns the envelope's length.
///
/// `signer` is the sender's Ed25519 key (the device's, or the vendor's for
/// vendor-to-device kinds); `keys` are the session keys of `seal.epoch`.
///
/// # Errors
/// [`SealError::BufferTooSmall`] when `out` is shorter than the envelope,
/// [`SealError::Encode`] when the header is invalid for the kind (an
/// ephemeral key on a vendor kind, none on Register).
pub fn seal<B: Body>(
    out: &mut [u8],
    seal: &Seal,
    body: &B,
    signer: &SigningKey,
    keys: &SessionKeys,
) -> Result<usize, SealError> {
    seal_kind(out, seal, B::KIND, &Serde(body), signer, keys)
}

/// [`seal`] with any signer, for a value that encodes exactly as a body of
/// `kind`: the device seals with its [`DeviceKey`] (on salty with the
/// `salty` feature), and seals a borrowed view of a large body without
/// copying it into the body type first.
pub(crate) fn seal_kind<S: SignParts + ?Sized>(
    out: &mut [u8],
    seal: &Seal,
    kind: Kind,
    body: &dyn SealBody,
    signer: &S,
    keys: &SessionKeys,
) -> Result<usize, SealError> {
    let header =
        Header { kind, device: seal.device, epoch: seal.epoch, counter: seal.counter, ephemeral: seal.ephemeral };
    let have = out.len();
    let too_small = || -> SealError {
        match body.encoded_len() {
            Ok(b) => SealError::BufferTooSmall { needed: header.buffer_len() + b + SIGNATURE_LEN + TAG_LEN, have },
            Err(e) => SealError::Encode(e),
        }
    };
    let h = header.emit(out).map_err(|e| match e {
        DecodeError::BufferTooSmall { .. } => too_small(),
        other => SealError::Encode(other),
    })?;
    let (head, rest) = out.split_at_mut(h);
    let b = body.encode_into(rest).map_err(|_| too_small())?;
    let needed = h + b + SIGNATURE_LEN + TAG_LEN;
    let rest = rest.get_mut(..b + SIGNATURE_LEN + TAG_LEN).ok_or(SealError::BufferTooSmall { needed, have })?;
    let (plain, tag_out) = rest.split_at_mut(b + SIGNATURE_LEN);
    let (body_bytes, sig_out) = plain.split_at_mut(b);
    sig_out.copy_from_slice(&signer.sign_parts(&[MESSAGE_DST, head, body_bytes]));
    let cipher = ChaCha20Poly1305::new(keys.key(header.direction()).as_bytes().into());
    let n = nonce(header.direction(), header.counter);
    let tag = cipher
        .encrypt_inout_detached(&Nonce::from(n), head, plain.into())
        .map_err(|_| SealError::BufferTooSmall { needed, have })?;
    tag_out.copy_from_slice(&tag);
    Ok(needed)
}

/// A body to seal, behind a vtable: only a body's encoding depends on its
/// type, so the sealing code (header, signature, AEAD, and on the device
/// the outbox write) is compiled once rather than once per body type
/// (measured on the QEMU firmware: see docs/firmware.md).
pub(crate) trait SealBody {
    /// Encodes the body at the start of `out`; its length.
    fn encode_into(&self, out: &mut [u8]) -> Result<usize, DecodeError>;
    /// The length of the body's encoding.
    fn encoded_len(&self) -> Result<usize, DecodeError>;
}

/// The device's bodies encode with the hand-written codec
/// ([`codec::fixed`]): the same bytes as serde's, without serde's code.
impl<T: codec::fixed::Fixed> SealBody for T {
    fn encode_into(&self, out: &mut [u8]) -> Result<usize, DecodeError> {
        codec::fixed::encode(self, out).map(|b| b.len())
    }

    fn encoded_len(&self) -> Result<usize, DecodeError> {
        codec::fixed::encoded_len(self)
    }
}

/// Any body, encoded through serde ([`seal`] and [`seal_from_vendor`]: the
/// vendor's side, which links serde anyway).
struct Serde<'a, T: ?Sized>(&'a T);

impl<T: serde::Serialize + ?Sized> SealBody for Serde<'_, T> {
    fn encode_into(&self, out: &mut [u8]) -> Result<usize, DecodeError> {
        codec::encode(self.0, out).map(|b| b.len())
    }

    fn encoded_len(&self) -> Result<usize, DecodeError> {
        codec::encoded_len(self.0)
    }
}

/// A parsed, not yet authenticated envelope.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    /// The header (unauthenticated until decrypted).
    pub header: Header,
    header_bytes: &'a [u8],
    ciphertext: &'a [u8],
    tag: [u8; TAG_LEN],
}

impl<'a> Envelope<'a> {
    /// Parses an envelope: header, then the lengths. No cryptography yet.
    ///
    /// # Errors
    /// [`DecodeError::Oversized`] above [`MAX_SEALED_LEN`], the header's
    /// errors, [`DecodeError::Truncated`] when the bytes after the header
    /// cannot hold a signature and a tag.
    pub fn parse(bytes: &'a [u8]) -> Result<Envelope<'a>, DecodeError> {
        if bytes.len() > MAX_SEALED_LEN {
            return Err(DecodeError::Oversized { len: bytes.len(), max: MAX_SEALED_LEN });
        }
        let (header, h) = Header::parse(bytes)?;
        let needed = h + SIGNATURE_LEN + TAG_LEN;
        if bytes.len() < needed {
            return Err(DecodeError::Truncated { needed, have: bytes.len() });
        }
        let (header_bytes, rest) = bytes.split_at(h);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
        let tag: [u8; TAG_LEN] = tag.try_into().map_err(|_| DecodeError::Truncated { needed, have: bytes.len() })?;
        Ok(Envelope { header, header_bytes, ciphertext, tag })
    }

    /// The exact header bytes (the AEAD associated data).
    pub const fn header_bytes(&self) -> &'a [u8] {
        self.header_bytes
    }

    /// The length of the plaintext (`body || signature`), the buffer size
    /// [`Envelope::decrypt`] needs.
    pub const fn plaintext_len(&self) -> usize {
        self.ciphertext.len()
    }

    /// Decrypts into `buf` with the session keys of the header's epoch.
    ///
    /// # Errors
    /// [`OpenError::WrongEpoch`] when `keys` belong to another epoch;
    /// [`OpenError::Unauthentic`] when the tag does not verify (the buffer
    /// is wiped); [`DecodeError::BufferTooSmall`] when `buf` is shorter than
    /// [`Envelope::plaintext_len`].
    pub fn decrypt<'b>(&self, keys: &SessionKeys, buf: &'b mut [u8]) -> Result<Plaintext<'a, 'b>, OpenError> {
        if keys.epoch != self.header.epoch {
            return Err(OpenError::WrongEpoch { expected: keys.epoch, got: self.header.epoch });
        }
        let have = buf.len();
        let buf = buf.get_mut(..self.ciphertext.len()).ok_or(DecodeError::BufferTooSmall { have })?;
        buf.copy_from_slice(self.ciphertext);
        let dir = self.header.direction();
        let cipher = ChaCha20Poly1305::new(keys.key(dir).as_bytes().into());
        let n = nonce(dir, self.header.counter);
        if cipher
            .decrypt_inout_detached(&Nonce::from(n), self.header_bytes, (&mut *buf).into(), &Tag::from(self.tag))
            .is_err()
        {
            buf.fill(0);
            return Err(OpenError::Unauthentic);
        }
        let (body, sig) = buf.split_at(buf.len() - SIGNATURE_LEN);
        let signature: [u8; SIGNATURE_LEN] = sig.try_into().map_err(|_| OpenError::Unauthentic)?;
        Ok(Plaintext { header: self.header, header_bytes: self.header_bytes, body, signature })
    }
}

/// A decrypted envelope whose signature is not yet checked.
#[derive(Debug, Clone, Copy)]
pub struct Plaintext<'a, 'b> {
    /// The header (now authenticated by the AEAD tag).
    pub header: Header,
    header_bytes: &'a [u8],
    body: &'b [u8],
    signature: [u8; SIGNATURE_LEN],
}

impl<'a, 'b> Plaintext<'a, 'b> {
    /// Checks the sender's signature (strict Ed25519).
    ///
    /// # Errors
    /// [`OpenError::Unauthentic`] when it does not verify.
    pub fn verify(self, sender: &VerifyingKey) -> Result<Verified<'a, 'b>, OpenError> {
        verify_signature(sender, self.header_bytes, self.body, &self.signature)?;
        Ok(self.into_verified())
    }

    /// [`Plaintext::verify`] with the sender's key as bytes: on salty
    /// firmware the key is never decompressed by curve25519-dalek.
    pub(crate) fn verify_key_bytes(self, sender: &[u8; 32]) -> Result<Verified<'a, 'b>, OpenError> {
        verify_strict_parts_bytes(sender, &[MESSAGE_DST, self.header_bytes, self.body], &self.signature)
            .map_err(|_| OpenError::Unauthentic)?;
        Ok(self.into_verified())
    }

    /// The body bytes (not yet verified: only for a batch verifier).
    pub const fn body_bytes(&self) -> &'b [u8] {
        self.body
    }

    /// The exact header bytes.
    pub const fn header_bytes(&self) -> &'a [u8] {
        self.header_bytes
    }

    /// The signature bytes.
    pub const fn signature(&self) -> &[u8; SIGNATURE_LEN] {
        &self.signature
    }

    pub(crate) const fn into_verified(self) -> Verified<'a, 'b> {
        Verified { header: self.header, header_bytes: self.header_bytes, body: self.body, signature: self.signature }
    }
}

/// An authentic message: decrypted, and signed by the expected sender.
/// Only [`Plaintext::verify`] (or the crate's batch verifier) makes one.
#[derive(Debug, Clone, Copy)]
pub struct Verified<'a, 'b> {
    /// The header.
    pub header: Header,
    header_bytes: &'a [u8],
    body: &'b [u8],
    signature: [u8; SIGNATURE_LEN],
}

impl<'a, 'b> Verified<'a, 'b> {
    /// Decodes the body as `B`.
    ///
    /// # Errors
    /// [`OpenError::WrongKind`] when the header's kind is not `B::KIND`;
    /// the body's [`DecodeError`] otherwise.
    pub fn decode<B: Body>(&self) -> Result<B, OpenError> {
        if self.header.kind != B::KIND {
            return Err(OpenError::WrongKind { expected: B::KIND, got: self.header.kind });
        }
        Ok(codec::decode::<B>(self.body)?)
    }

    /// The kind.
    pub const fn kind(&self) -> Kind {
        self.header.kind
    }

    /// The exact header bytes that were signed.
    pub const fn header_bytes(&self) -> &'a [u8] {
        self.header_bytes
    }

    /// The exact body bytes that were signed.
    pub const fn body_bytes(&self) -> &'b [u8] {
        self.body
    }

    /// The sender's signature.
    pub const fn signature(&self) -> &[u8; SIGNATURE_LEN] {
        &self.signature
    }
}

/// Checks an envelope signature over exact header and body bytes: the
/// check a later reader of a kept proof makes, with no session key.
///
/// # Errors
/// [`OpenError::Unauthentic`] when it does not verify.
pub fn verify_signature(
    sender: &VerifyingKey,
    header_bytes: &[u8],
    body: &[u8],
    signature: &[u8; SIGNATURE_LEN],
) -> Result<(), OpenError> {
    let sig = Signature::from_bytes(signature);
    verify_strict_parts(sender, &[MESSAGE_DST, header_bytes, body], &sig).map_err(|_| OpenError::Unauthentic)
}

/// Whether 32 bytes are the canonical encoding of an Edwards `y`
/// coordinate: `y < p = 2^255 - 19` once the sign bit is masked (SPEC §2.1).
/// Only 19 values of `y` have a second, non-canonical encoding; libsodium
/// refuses them, and so does every check in this crate, for public keys and
/// for `R` alike.
///
/// ```
/// use spime::seal::is_canonical_point_encoding;
/// let mut y = [0xff; 32];
/// y[0] = 0xec; // p - 1 with the sign bit clear
/// y[31] = 0x7f;
/// assert!(is_canonical_point_encoding(&y));
/// y[0] = 0xee; // p + 1: the same y as 1, encoded again
/// assert!(!is_canonical_point_encoding(&y));
/// ```
pub fn is_canonical_point_encoding(bytes: &[u8; 32]) -> bool {
    let [low, middle @ .., top] = bytes;
    !(top & 0x7f == 0x7f && middle.iter().all(|&b| b == 0xff) && *low >= 0xed)
}

/// Ed25519 `verify_strict` over a message given in parts, without joining
/// them: refuses a small-order public key or `R`, a non-canonical `s`, and
/// checks the cofactorless equation, exactly as `VerifyingKey::verify_strict`
/// does (tests pin the equivalence); and refuses non-canonical encodings of
/// the public key and of `R` (y ≥ p), as libsodium does (SPEC §2.1).
///
/// With the `salty` feature and without `std` (firmware), the same checks
/// run on salty ([`salty_backend`], cross-tested against this one).
pub(crate) fn verify_strict_parts(key: &VerifyingKey, parts: &[&[u8]], sig: &Signature) -> Result<(), ()> {
    #[cfg(all(feature = "salty", not(feature = "std")))]
    {
        salty_backend::verify_strict_parts(key.as_bytes(), parts, &sig.to_bytes())
    }
    #[cfg(not(all(feature = "salty", not(feature = "std"))))]
    {
        use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
        use curve25519_dalek::scalar::Scalar;
        use sha2::{Digest, Sha512};
        if !is_canonical_point_encoding(key.as_bytes()) || !is_canonical_point_encoding(sig.r_bytes()) {
            return Err(());
        }
        let a = key.to_edwards();
        if a.is_small_order() {
            return Err(());
        }
        // R is decompressed once: for the small-order check and for the
        // equation, which compares points rather than re-encoding `[s]B - [k]A`
        // (the same answer: R's encoding is canonical and R is not of small
        // order, so it is the only encoding of that point).
        let r = match CompressedEdwardsY(*sig.r_bytes()).decompress() {
            Some(point) if !point.is_small_order() => point,
            _ => return Err(()),
        };
        let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(*sig.s_bytes())).ok_or(())?;
        let mut h = Sha512::new();
        h.update(sig.r_bytes());
        h.update(key.as_bytes());
        for p in parts {
            h.update(p);
        }
        let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
        if EdwardsPoint::vartime_double_scalar_mul_basepoint(&k, &-a, &s) == r { Ok(()) } else { Err(()) }
    }
}

/// [`verify_strict_parts`] for a key given as bytes (an owner key): on
/// salty the key is never decompressed by dalek.
pub(crate) fn verify_strict_parts_bytes(key: &[u8; 32], parts: &[&[u8]], sig: &[u8; SIGNATURE_LEN]) -> Result<(), ()> {
    #[cfg(all(feature = "salty", not(feature = "std")))]
    {
        salty_backend::verify_strict_parts(key, parts, sig)
    }
    #[cfg(not(all(feature = "salty", not(feature = "std"))))]
    {
        let key = VerifyingKey::from_bytes(key).map_err(|_| ())?;
        verify_strict_parts(&key, parts, &Signature::from_bytes(sig))
    }
}

/// Whether 32 bytes are a public key strict verification accepts: the
/// canonical encoding of a point of large order (as `A` in
/// [`verify_strict_parts`]). On salty without `std`, curve25519-dalek is
/// not used.
pub(crate) fn is_strong_key(key: &[u8; 32]) -> bool {
    #[cfg(all(feature = "salty", not(feature = "std")))]
    {
        salty_backend::is_strong_key(key)
    }
    #[cfg(not(all(feature = "salty", not(feature = "std"))))]
    {
        is_canonical_point_encoding(key) && VerifyingKey::from_bytes(key).is_ok_and(|k| !k.is_weak())
    }
}

/// Signs a message given in parts: the device's key on salty (feature
/// `salty`), any dalek key with dalek.
pub(crate) trait SignParts {
    /// Ed25519 (RFC 8032) over the concatenation of `parts`.
    fn sign_parts(&self, parts: &[&[u8]]) -> [u8; SIGNATURE_LEN];
}

impl SignParts for SigningKey {
    fn sign_parts(&self, parts: &[&[u8]]) -> [u8; SIGNATURE_LEN] {
        self.multipart_sign(parts).to_bytes()
    }
}

impl SignParts for DeviceKey {
    fn sign_parts(&self, parts: &[&[u8]]) -> [u8; SIGNATURE_LEN] {
        self.sign_parts_inner(parts)
    }
}

/// Signs and seals a body as the vendor, for one device (the vendor's
/// signing key signs, the vendor-to-device key encrypts).
///
/// # Errors
/// As [`seal`]; [`SealError::WrongDirection`] for a device-to-vendor kind.
pub fn seal_from_vendor<B: Body>(
    out: &mut [u8],
    device: DeviceId,
    counter: u64,
    body: &B,
    vendor: &VendorKeys,
    keys: &SessionKeys,
) -> Result<usize, SealError> {
    if B::KIND.direction() != Direction::VendorToDevice {
        return Err(SealError::WrongDirection(B::KIND));
    }
    seal(out, &Seal { device, epoch: keys.epoch, counter, ephemeral: None }, body, vendor.signing(), keys)
}
