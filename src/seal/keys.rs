//! Keys and key derivation: X25519 + HKDF-SHA256 session keys with an
//! epoch, the device identity and the vendor's key pairs.

use ed25519_dalek::{SigningKey, VerifyingKey};
use hkdf::Hkdf;
use rand_core::CryptoRng;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::OpenError;
use crate::wire::{DeviceId, Direction};

/// HKDF salt of the session key derivation.
pub const SESSION_SALT: &[u8] = b"spime/v1 session";

/// A 32-byte ChaCha20-Poly1305 key for one direction of one epoch.
/// Wiped on drop, never printed, compared in constant time.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct AeadKey([u8; 32]);

impl AeadKey {
    /// Wraps raw key bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> AeadKey {
        AeadKey(bytes)
    }

    /// The raw key bytes (for persisting the session on the vendor side).
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl PartialEq for AeadKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for AeadKey {}

impl core::fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AeadKey").finish_non_exhaustive()
    }
}

/// The two AEAD keys of one device's key epoch.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SessionKeys {
    /// The epoch these keys belong to.
    pub epoch: u32,
    /// Seals device-to-vendor messages.
    pub device_to_vendor: AeadKey,
    /// Seals vendor-to-device messages.
    pub vendor_to_device: AeadKey,
}

impl SessionKeys {
    /// The key for one direction.
    pub const fn key(&self, direction: Direction) -> &AeadKey {
        match direction {
            Direction::DeviceToVendor => &self.device_to_vendor,
            Direction::VendorToDevice => &self.vendor_to_device,
        }
    }

    /// Derives the keys of `epoch` from an X25519 shared secret.
    ///
    /// `okm = HKDF-SHA256(salt = "spime/v1 session", ikm = shared,
    /// info = "spime/v1 keys\0" || device id || epoch (u32 BE) || ephemeral public || vendor key-agreement public, L = 64)`;
    /// the first 32 bytes seal device to vendor, the last 32 vendor to device.
    fn from_shared(
        shared: &[u8; 32],
        device: &DeviceId,
        epoch: u32,
        ephemeral_pub: &[u8; 32],
        vendor_kx_pub: &[u8; 32],
    ) -> SessionKeys {
        let hk = Hkdf::<Sha256>::new(Some(SESSION_SALT), shared);
        let mut okm = Zeroizing::new([0u8; 64]);
        let epoch_be = epoch.to_be_bytes();
        let info: [&[u8]; 5] = [b"spime/v1 keys\0", &device.0, &epoch_be, ephemeral_pub, vendor_kx_pub];
        // 64 bytes is far below HKDF-SHA256's 8160-byte limit, so expand cannot fail.
        let _ = hk.expand_multi_info(&info, okm.as_mut_slice());
        let mut d2v = [0u8; 32];
        let mut v2d = [0u8; 32];
        let (a, b) = okm.split_at(32);
        d2v.copy_from_slice(a);
        v2d.copy_from_slice(b);
        SessionKeys { epoch, device_to_vendor: AeadKey(d2v), vendor_to_device: AeadKey(v2d) }
    }
}

/// X25519 with the contributory check: an all-zero result (the peer sent
/// a small-order point) is refused. dalek: the vendor's side.
fn x25519_checked(secret: &[u8; 32], public: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
    contributory(Zeroizing::new(x25519_dalek::x25519(*secret, *public)))
}

/// Refuses an all-zero X25519 result.
fn contributory(shared: Zeroizing<[u8; 32]>) -> Option<Zeroizing<[u8; 32]>> {
    if bool::from(shared.ct_eq(&[0u8; 32])) { None } else { Some(shared) }
}

/// The device's X25519: salty with the `salty` feature, dalek without.
fn device_x25519(secret: &[u8; 32], public: &[u8; 32]) -> [u8; 32] {
    #[cfg(feature = "salty")]
    {
        super::salty_backend::x25519(secret, public)
    }
    #[cfg(not(feature = "salty"))]
    {
        x25519_dalek::x25519(*secret, *public)
    }
}

/// The device side of starting a key epoch: a fresh ephemeral X25519 key
/// agreed with the vendor's static key-agreement key.
///
/// Returns the session keys and the ephemeral public key that goes in the
/// header of the message that opens the epoch.
///
/// # Errors
/// [`crate::error::SealError::WeakKey`] when the vendor key is a small-order point.
pub fn device_start_epoch<R: CryptoRng + ?Sized>(
    rng: &mut R,
    device: &DeviceId,
    epoch: u32,
    vendor: &VendorPublicKeys,
) -> Result<(SessionKeys, [u8; 32]), crate::error::SealError> {
    device_start_epoch_kx(rng, device, epoch, &vendor.key_agreement)
}

/// [`device_start_epoch`] with the vendor's key-agreement key as bytes
/// (the device holds [`VendorPublicBytes`]).
pub(crate) fn device_start_epoch_kx<R: CryptoRng + ?Sized>(
    rng: &mut R,
    device: &DeviceId,
    epoch: u32,
    key_agreement: &[u8; 32],
) -> Result<(SessionKeys, [u8; 32]), crate::error::SealError> {
    let mut secret = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(secret.as_mut_slice());
    start_epoch_with(&secret, device, epoch, key_agreement)
}

/// [`device_start_epoch`] with a given ephemeral secret, for test vectors.
/// Never reuse an ephemeral secret.
///
/// # Errors
/// [`crate::error::SealError::WeakKey`] when the vendor key is a small-order point.
pub fn device_start_epoch_with(
    ephemeral_secret: &[u8; 32],
    device: &DeviceId,
    epoch: u32,
    vendor: &VendorPublicKeys,
) -> Result<(SessionKeys, [u8; 32]), crate::error::SealError> {
    start_epoch_with(ephemeral_secret, device, epoch, &vendor.key_agreement)
}

fn start_epoch_with(
    ephemeral_secret: &[u8; 32],
    device: &DeviceId,
    epoch: u32,
    key_agreement: &[u8; 32],
) -> Result<(SessionKeys, [u8; 32]), crate::error::SealError> {
    let eph_pub = device_x25519(ephemeral_secret, &x25519_dalek::X25519_BASEPOINT_BYTES);
    let shared = contributory(Zeroizing::new(device_x25519(ephemeral_secret, key_agreement)))
        .ok_or(crate::error::SealError::WeakKey)?;
    Ok((SessionKeys::from_shared(&shared, device, epoch, &eph_pub, key_agreement), eph_pub))
}

/// The vendor's public keys, which every device holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VendorPublicKeys {
    /// Verifies device certificates, receipts and notices.
    pub signing: VerifyingKey,
    /// The static X25519 key that devices agree session keys with.
    pub key_agreement: [u8; 32],
}

/// The vendor's public keys as the 32-byte encodings a device is
/// provisioned with: what a device holds in its
/// [`Identity`](crate::device::Identity) when it should not decompress the
/// signing key up front. Each check of a vendor signature decompresses it
/// (with the `salty` feature on firmware, without linking
/// curve25519-dalek's field arithmetic: about 4 KB of flash), and it takes
/// 64 bytes of RAM instead of the 224 of [`VendorPublicKeys`]. A signing
/// key that is not a point makes every vendor message
/// [`OpenError::Unauthentic`].
///
/// ```
/// use spime::seal::{VendorKeys, VendorPublicBytes};
/// let vendor = VendorKeys::from_secrets(&[1; 32], &[2; 32]);
/// let held = VendorPublicBytes::from(vendor.public());
/// assert_eq!(held.signing, vendor.public().signing.to_bytes());
/// assert_eq!(held.key_agreement, vendor.public().key_agreement);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VendorPublicBytes {
    /// The Ed25519 key that signs the vendor's messages (compressed Edwards `y`).
    pub signing: [u8; 32],
    /// The static X25519 key that devices agree session keys with.
    pub key_agreement: [u8; 32],
}

impl From<VendorPublicKeys> for VendorPublicBytes {
    fn from(k: VendorPublicKeys) -> Self {
        VendorPublicBytes { signing: k.signing.to_bytes(), key_agreement: k.key_agreement }
    }
}

/// The vendor's secret keys. Wiped on drop; `Debug` shows only public parts.
///
/// The X25519 public key is computed once, when the keys are made: opening
/// an epoch then costs one X25519, not two (SPEC.md, Security, T6).
///
/// Keys persist with [`VendorKeys::to_bytes`] and [`VendorKeys::from_bytes`]
/// in this format ([`VENDOR_KEYS_LEN`] bytes; store it as a secret):
///
/// ```text
/// offset size field
/// 0      4    magic "SPVK"
/// 4      1    format 0x01
/// 5      32   Ed25519 seed of the signing key (VS)
/// 37     32   X25519 secret of the key-agreement key (VX), as given (unclamped)
/// ```
///
/// ```
/// use spime::seal::VendorKeys;
/// let keys = VendorKeys::from_secrets(&[1; 32], &[2; 32]);
/// let saved = keys.to_bytes();
/// let loaded = VendorKeys::from_bytes(saved.as_slice())?;
/// assert_eq!(loaded.public(), keys.public());
/// # Ok::<(), spime::error::DecodeError>(())
/// ```
pub struct VendorKeys {
    signing: SigningKey,
    key_agreement: Zeroizing<[u8; 32]>,
    /// `X25519(key_agreement, 9)`, computed once.
    key_agreement_public: [u8; 32],
}

/// Length of [`VendorKeys::to_bytes`].
pub const VENDOR_KEYS_LEN: usize = 4 + 1 + 32 + 32;
/// The magic bytes that start [`VendorKeys::to_bytes`].
pub const VENDOR_KEYS_MAGIC: &[u8; 4] = b"SPVK";

impl core::fmt::Debug for VendorKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VendorKeys").field("public", &self.public()).finish_non_exhaustive()
    }
}

impl VendorKeys {
    /// Generates fresh vendor keys.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> VendorKeys {
        let mut sign = Zeroizing::new([0u8; 32]);
        let mut kx = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(sign.as_mut_slice());
        rng.fill_bytes(kx.as_mut_slice());
        VendorKeys::from_secrets(&sign, &kx)
    }

    /// Vendor keys from their secret bytes: an Ed25519 seed and an X25519
    /// scalar (both borrowed: the caller wipes its copies).
    pub fn from_secrets(signing_seed: &[u8; 32], key_agreement: &[u8; 32]) -> VendorKeys {
        let key_agreement = Zeroizing::new(*key_agreement);
        let key_agreement_public = x25519_dalek::x25519(*key_agreement, x25519_dalek::X25519_BASEPOINT_BYTES);
        VendorKeys { signing: SigningKey::from_bytes(signing_seed), key_agreement, key_agreement_public }
    }

    /// The keys in the documented format above, in a buffer wiped on drop.
    pub fn to_bytes(&self) -> Zeroizing<[u8; VENDOR_KEYS_LEN]> {
        let mut out = Zeroizing::new([0u8; VENDOR_KEYS_LEN]);
        let (magic, rest) = out.split_at_mut(4);
        magic.copy_from_slice(VENDOR_KEYS_MAGIC);
        let (format, rest) = rest.split_at_mut(1);
        format.copy_from_slice(&[1]);
        let (seed, kx) = rest.split_at_mut(32);
        let signing_seed = Zeroizing::new(self.signing.to_bytes());
        seed.copy_from_slice(signing_seed.as_slice());
        kx.copy_from_slice(self.key_agreement.as_slice());
        out
    }

    /// Keys saved with [`VendorKeys::to_bytes`].
    ///
    /// # Errors
    /// [`crate::error::DecodeError::Truncated`] or
    /// [`crate::error::DecodeError::Oversized`] for another length,
    /// [`crate::error::DecodeError::Malformed`] without the magic,
    /// [`crate::error::DecodeError::UnsupportedVersion`] for another format byte.
    pub fn from_bytes(bytes: &[u8]) -> Result<VendorKeys, crate::error::DecodeError> {
        use crate::error::DecodeError;
        if bytes.len() < VENDOR_KEYS_LEN {
            return Err(DecodeError::Truncated { needed: VENDOR_KEYS_LEN, have: bytes.len() });
        }
        if bytes.len() > VENDOR_KEYS_LEN {
            return Err(DecodeError::Oversized { len: bytes.len(), max: VENDOR_KEYS_LEN });
        }
        let (magic, rest) = bytes.split_at(4);
        if magic != VENDOR_KEYS_MAGIC {
            return Err(DecodeError::Malformed);
        }
        let (format, rest) = rest.split_at(1);
        if format != [1] {
            return Err(DecodeError::UnsupportedVersion(format.first().copied().unwrap_or(0)));
        }
        let (seed, kx) = rest.split_at(32);
        let seed = Zeroizing::new(<[u8; 32]>::try_from(seed).map_err(|_| DecodeError::Malformed)?);
        let kx = Zeroizing::new(<[u8; 32]>::try_from(kx).map_err(|_| DecodeError::Malformed)?);
        Ok(VendorKeys::from_secrets(&seed, &kx))
    }

    /// The public keys to provision into devices.
    pub fn public(&self) -> VendorPublicKeys {
        VendorPublicKeys { signing: self.signing.verifying_key(), key_agreement: self.key_agreement_public }
    }

    /// The signing key (certificates, receipts, notices).
    pub const fn signing(&self) -> &SigningKey {
        &self.signing
    }

    /// The vendor side of opening a key epoch from the device's ephemeral key.
    ///
    /// # Errors
    /// [`OpenError::WeakKey`] when the ephemeral key is a small-order point.
    pub fn accept_epoch(
        &self,
        device: &DeviceId,
        epoch: u32,
        ephemeral_pub: &[u8; 32],
    ) -> Result<SessionKeys, OpenError> {
        let shared = x25519_checked(&self.key_agreement, ephemeral_pub).ok_or(OpenError::WeakKey)?;
        Ok(SessionKeys::from_shared(&shared, device, epoch, ephemeral_pub, &self.key_agreement_public))
    }
}

/// A device's long-term identity: its id and Ed25519 key. Wiped on drop.
///
/// With the `salty` feature the device signs on salty: the key keeps its
/// seed and public key, and makes dalek's [`SigningKey`] only if
/// [`DeviceKey::signing`] is called (firmware never does, so dalek's
/// signing code is not linked).
pub struct DeviceKey {
    /// The device id.
    pub device: DeviceId,
    #[cfg(not(feature = "salty"))]
    signing: SigningKey,
    #[cfg(feature = "salty")]
    seed: Zeroizing<[u8; 32]>,
    #[cfg(feature = "salty")]
    public: [u8; 32],
    #[cfg(feature = "salty")]
    dalek: core::cell::OnceCell<SigningKey>,
}

impl core::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DeviceKey")
            .field("device", &self.device)
            .field("public", &self.public_bytes())
            .finish_non_exhaustive()
    }
}

impl DeviceKey {
    /// A device key from its 32-byte Ed25519 seed.
    pub fn from_seed(device: DeviceId, seed: &[u8; 32]) -> DeviceKey {
        #[cfg(not(feature = "salty"))]
        {
            DeviceKey { device, signing: SigningKey::from_bytes(seed) }
        }
        #[cfg(feature = "salty")]
        {
            DeviceKey {
                device,
                seed: Zeroizing::new(*seed),
                public: super::salty_backend::public_key(seed),
                dalek: core::cell::OnceCell::new(),
            }
        }
    }

    /// Generates a fresh device key (at manufacture).
    pub fn generate<R: CryptoRng + ?Sized>(device: DeviceId, rng: &mut R) -> DeviceKey {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut_slice());
        DeviceKey::from_seed(device, &seed)
    }

    /// The device's public key, which its certificate binds.
    pub fn public(&self) -> VerifyingKey {
        self.signing().verifying_key()
    }

    /// The device's public key as bytes (what [`DeviceKey::public`]
    /// encodes to), without dalek on salty.
    ///
    /// ```
    /// use spime::seal::DeviceKey;
    /// use spime::wire::DeviceId;
    /// let key = DeviceKey::from_seed(DeviceId(*b"device-1"), &[7; 32]);
    /// assert_eq!(key.public_bytes(), key.public().to_bytes());
    /// ```
    pub fn public_bytes(&self) -> [u8; 32] {
        #[cfg(not(feature = "salty"))]
        {
            self.signing.verifying_key().to_bytes()
        }
        #[cfg(feature = "salty")]
        {
            self.public
        }
    }

    /// The signing key (dalek's; made on first use with the `salty` feature).
    #[cfg(not(feature = "salty"))]
    pub const fn signing(&self) -> &SigningKey {
        &self.signing
    }

    /// The signing key (dalek's; made on first use with the `salty` feature).
    #[cfg(feature = "salty")]
    pub fn signing(&self) -> &SigningKey {
        self.dalek.get_or_init(|| SigningKey::from_bytes(&self.seed))
    }

    /// Signs with the device's backend.
    pub(crate) fn sign_parts_inner(&self, parts: &[&[u8]]) -> [u8; 64] {
        #[cfg(not(feature = "salty"))]
        {
            use ed25519_dalek::ed25519::signature::MultipartSigner;
            self.signing.multipart_sign(parts).to_bytes()
        }
        #[cfg(feature = "salty")]
        {
            super::salty_backend::sign_parts(&self.seed, &self.public, parts)
        }
    }
}

/// The device's key as a [`crate::device::Device`] holds it. With `salty`:
/// the id, seed and public key only, without room for the dalek
/// [`SigningKey`] that [`DeviceKey::signing`] would make (228 bytes of the
/// device's RAM). Without `salty`: the [`DeviceKey`].
#[cfg(feature = "salty")]
pub(crate) struct HeldKey {
    /// The device id.
    pub(crate) device: DeviceId,
    seed: Zeroizing<[u8; 32]>,
    public: [u8; 32],
}

/// The device's key as a [`crate::device::Device`] holds it.
#[cfg(not(feature = "salty"))]
pub(crate) type HeldKey = DeviceKey;

#[cfg(feature = "salty")]
impl From<DeviceKey> for HeldKey {
    fn from(k: DeviceKey) -> Self {
        HeldKey { device: k.device, seed: k.seed, public: k.public }
    }
}

#[cfg(feature = "salty")]
impl core::fmt::Debug for HeldKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HeldKey").field("device", &self.device).field("public", &self.public).finish_non_exhaustive()
    }
}

#[cfg(feature = "salty")]
impl super::SignParts for HeldKey {
    fn sign_parts(&self, parts: &[&[u8]]) -> [u8; 64] {
        super::salty_backend::sign_parts(&self.seed, &self.public, parts)
    }
}
