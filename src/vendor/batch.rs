//! Batch signature verification, and how it relates to `verify_strict`.
//!
//! Every signature the crate accepts one at a time is checked with strict
//! Ed25519 ([`crate::seal::verify_signature`]): the public key `A` and the
//! nonce point `R` must be canonically encoded and not of small order, `s`
//! must be canonical, and `[s]B - [k]A` must equal `R` (cofactorless).
//!
//! [`BatchVerifier`] checks one random linear combination of the equations
//! `[s_i]B - R_i - [k_i]A_i = 0` (cofactorless, fresh 128-bit coefficients
//! `z_i` from the operating system's generator for every chunk), written
//! directly over curve25519-dalek. Each item is prepared once, when it is
//! pushed: `k_i` hashed, `R_i` decompressed (once: the same point serves the
//! batch and, if needed, the strict check; small order of `R_i` and `A_i` is
//! decided on their canonical encodings, against the ten that decompress to
//! a point of small order), `s_i` checked canonical. The message bytes are not kept. A chunk's keys are
//! merged: one term per distinct key, so a chunk from one device costs
//! about half the points of a chunk from 256 devices.
//!
//! A random linear combination is looser than `verify_strict` in three
//! ways, and [`BatchVerifier`] closes each:
//!
//! 1. It does not refuse small-order `A` or `R`. Here such an item is never
//!    batched: it gets the strict check, which refuses it.
//! 2. It works on points, so a non-canonical encoding of `R` or `A`
//!    (y ≥ p) would pass. Here such an item is never batched either.
//! 3. A point with a torsion component `T` (mixed order) can make the
//!    batched sum vanish while one equation is off by `T`: the residual is
//!    `z_i·T`, zero exactly when the order of `T` (2, 4 or 8) divides
//!    `z_i`. For a key `A` this is checked once per device at registration
//!    ([`super::DeviceRecord::batchable_key`]); keys with a torsion
//!    component are never batched. For `R` a per-signature subgroup check
//!    costs about as much as a whole verification, which would make
//!    batching slower than not batching, so it is not done. The residual
//!    difference: **the holder of a device key** can craft a signature with
//!    `R = [r]B + T` that `verify_strict` refuses and that a batch accepts
//!    with probability 1/ord(`T`) (at most 1/2), the coefficients being
//!    fresh random numbers it cannot predict or grind offline; each failed
//!    try is refused. A chunk of one is never batched anyway (it is
//!    verified strictly; a batch of one saves nothing), and
//!    `Ingestor::ingest`, a batch of one message, is strict throughout.
//!    Nobody but the key holder can do any of this (it needs the private
//!    key, because `k` binds `R`), and the message content is still the key
//!    holder's own. To keep every proof in the consent ledger strict-valid,
//!    the pipeline batches only Usage and Fault messages; Register,
//!    Consent, Transfer and Decommission are always verified strictly. Turn
//!    batching off ([`super::IngestConfig::batch_verify`]) to make the
//!    accepted set exactly `verify_strict`'s for every kind. The tests
//!    `mixed_order_r_is_the_documented_gap` and
//!    `batch_of_one_is_verified_strictly` pin this behaviour.
//!
//! When the batch equation fails, every item of that chunk gets the strict
//! check, so a bad signature costs its chunk a second pass and never
//! rejects a good one. Without randomness from the operating system every
//! item gets the strict check.

use alloc::vec::Vec;

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha512};

use crate::seal::{MESSAGE_DST, SIGNATURE_LEN, is_canonical_point_encoding};

/// Most items per batch equation: large enough to amortise (a multiscalar
/// multiplication of 256 items costs about a third of 256 separate
/// verifications), small enough that one bad signature sends few good ones
/// to the strict check. Runs longer than this are split into equal chunks,
/// so no chunk holds a single item unless only one was pushed.
pub const CHUNK: usize = 256;

/// Whether a key may be batched: canonically encoded, not of small order
/// and with no torsion component. Costs about one signature verification;
/// the pipeline calls it once per device key and stores the answer.
pub fn batchable_key(key: &VerifyingKey) -> bool {
    !key.is_weak() && is_canonical_point_encoding(key.as_bytes()) && key.to_edwards().is_torsion_free()
}

/// Whether the `R` half of a signature may be batched: a canonical encoding
/// (y < 2^255 - 19) of a point that is not of small order.
pub fn batchable_r(signature: &[u8; SIGNATURE_LEN]) -> bool {
    let Some(r) = signature.first_chunk::<32>() else { return false };
    decompress_r(r).is_some()
}

/// `R` as a point when its encoding is canonical and it is not of small order.
///
/// Small order is decided on the encoding: with `y` canonical, an
/// encoding decompresses to one of the eight points of small order exactly
/// when it is one of [`small_order_encodings`], so the three doublings of
/// `is_small_order` (about a tenth of the pipeline's time per message in
/// the fleet bench) are not needed. A test checks the two agree.
fn decompress_r(r: &[u8; 32]) -> Option<EdwardsPoint> {
    if !is_canonical_point_encoding(r) || small_order_encodings().contains(r) {
        return None;
    }
    CompressedEdwardsY(*r).decompress()
}

/// The encodings, with `y` canonical, of the eight points of small order.
/// Decompression reads `y` and the sign of `x`, so a point has one such
/// encoding, or two when `x = 0` (either sign bit gives the same point):
/// ten encodings, computed from curve25519-dalek's `EIGHT_TORSION`.
pub(crate) fn small_order_encodings() -> &'static [[u8; 32]] {
    static TABLE: std::sync::OnceLock<Vec<[u8; 32]>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = Vec::new();
        for p in curve25519_dalek::constants::EIGHT_TORSION {
            let e = p.compress().to_bytes();
            table.push(e);
            let mut flipped = e;
            if let Some(top) = flipped.last_mut() {
                *top ^= 0x80;
            }
            if CompressedEdwardsY(flipped).decompress() == Some(p) {
                table.push(flipped);
            }
        }
        table
    })
}

/// One signature, prepared: everything the strict check and the batch
/// equation need, without the message.
struct Item {
    /// The key point `A`.
    a: EdwardsPoint,
    /// Its encoding (to merge the terms of one key).
    a_bytes: [u8; 32],
    /// `R`, when canonical and not of small order; `s`, when canonical; and
    /// the key is canonical and not of small order. `None`: refused.
    checked: Option<(EdwardsPoint, Scalar)>,
    /// `k = H(R ‖ A ‖ M)`.
    k: Scalar,
    /// Whether the key may be batched ([`batchable_key`]).
    batchable_key: bool,
}

impl Item {
    fn prepare(key: &VerifyingKey, batchable_key: bool, parts: &[&[u8]], signature: &[u8; SIGNATURE_LEN]) -> Item {
        let (r_bytes, s_bytes) = signature.split_at(32);
        let r_bytes: [u8; 32] = r_bytes.try_into().unwrap_or([0; 32]);
        let s_bytes: [u8; 32] = s_bytes.try_into().unwrap_or([0xff; 32]);
        let a = key.to_edwards();
        // On the encoding, as for `R` (decompress_r): no doublings.
        let key_ok = is_canonical_point_encoding(key.as_bytes()) && !small_order_encodings().contains(key.as_bytes());
        let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes));
        let checked = match (key_ok, s) {
            (true, Some(s)) => decompress_r(&r_bytes).map(|r| (r, s)),
            _ => None,
        };
        let mut h = Sha512::new();
        h.update(r_bytes);
        h.update(key.as_bytes());
        for p in parts {
            h.update(p);
        }
        let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
        Item { a, a_bytes: key.to_bytes(), checked, k, batchable_key }
    }

    /// Strict Ed25519: exactly `verify_strict` with canonical encodings.
    /// `[s]B - [k]A` equals the decompressed `R` exactly when it re-encodes
    /// to `R`'s bytes, since those are canonical and `R` is not of small
    /// order; comparing points saves the re-encoding.
    fn strict(&self) -> bool {
        match &self.checked {
            Some((r, s)) => EdwardsPoint::vartime_double_scalar_mul_basepoint(&self.k, &-self.a, s) == *r,
            None => false,
        }
    }

    fn batchable(&self) -> bool {
        self.batchable_key && self.checked.is_some()
    }
}

/// Collects signatures and checks them together, with results equal to
/// checking each with [`crate::seal::verify_signature`] (strict) except the
/// documented gap (see the module docs). Each push hashes the message and
/// decompresses `R`; nothing of the message is kept.
///
/// ```
/// use spime::vendor::batch::BatchVerifier;
/// use ed25519_dalek::SigningKey;
/// use ed25519_dalek::ed25519::signature::MultipartSigner;
/// let key = SigningKey::from_bytes(&[7; 32]);
/// let mut b = BatchVerifier::new();
/// for i in 0..3u8 {
///     let body = [i; 10];
///     let sig = key.multipart_sign(&[spime::seal::MESSAGE_DST, b"hdr", &body]).to_bytes();
///     b.push(&key.verifying_key(), true, b"hdr", &body, &sig);
/// }
/// b.push(&key.verifying_key(), true, b"hdr", b"forged", &[0; 64]);
/// assert_eq!(b.verify(), [true, true, true, false]);
/// ```
#[derive(Default)]
pub struct BatchVerifier {
    items: Vec<Item>,
}

impl core::fmt::Debug for BatchVerifier {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BatchVerifier").field("items", &self.items.len()).finish()
    }
}

impl BatchVerifier {
    /// An empty verifier.
    pub fn new() -> BatchVerifier {
        BatchVerifier::default()
    }

    /// An empty verifier with room for `n` signatures.
    pub fn with_capacity(n: usize) -> BatchVerifier {
        BatchVerifier { items: Vec::with_capacity(n) }
    }

    /// Adds an envelope signature over exact header and body bytes.
    /// `batchable_key` is [`batchable_key`] of `key`, computed once per key.
    pub fn push(
        &mut self,
        key: &VerifyingKey,
        batchable_key: bool,
        header: &[u8],
        body: &[u8],
        signature: &[u8; SIGNATURE_LEN],
    ) {
        self.items.push(Item::prepare(key, batchable_key, &[MESSAGE_DST, header, body], signature));
    }

    /// How many signatures were pushed.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Checks every signature; `result[i]` is whether item `i` verified.
    pub fn verify(self) -> Vec<bool> {
        let mut result = alloc::vec![false; self.items.len()];
        let mut eligible: Vec<usize> = Vec::with_capacity(self.items.len());
        for (i, item) in self.items.iter().enumerate() {
            if item.batchable() {
                eligible.push(i);
            } else if let Some(slot) = result.get_mut(i) {
                *slot = item.strict();
            }
        }
        // Equal chunks of at most CHUNK: 257 items are 129 + 128, not 256 + 1.
        let chunks = eligible.len().div_ceil(CHUNK).max(1);
        let size = eligible.len().div_ceil(chunks).max(1);
        let mut scratch = Scratch::default();
        for chunk in eligible.chunks(size) {
            let all_ok = match chunk {
                // Never batch a single item (see the module docs).
                [_] => false,
                _ => scratch.equation(chunk, &self.items),
            };
            for &i in chunk {
                if let (Some(slot), Some(item)) = (result.get_mut(i), self.items.get(i)) {
                    *slot = all_ok || item.strict();
                }
            }
        }
        result
    }
}

/// Buffers reused across the chunks of one [`BatchVerifier::verify`].
#[derive(Default)]
struct Scratch {
    scalars: Vec<Scalar>,
    points: Vec<EdwardsPoint>,
    /// Distinct keys of the chunk: encoding and index of their term.
    keys: Vec<([u8; 32], usize)>,
    random: Vec<u8>,
}

impl Scratch {
    /// Whether `Σ z_i R_i + Σ_A (Σ_{A_i = A} z_i k_i) A - (Σ z_i s_i) B` is
    /// the identity, for fresh random 128-bit `z_i`. False without
    /// randomness (the caller then checks each item strictly).
    fn equation(&mut self, chunk: &[usize], items: &[Item]) -> bool {
        self.random.clear();
        self.random.resize(chunk.len().saturating_mul(16), 0);
        if getrandom::fill(&mut self.random).is_err() {
            return false;
        }
        self.scalars.clear();
        self.points.clear();
        self.keys.clear();
        self.scalars.push(Scalar::ZERO);
        self.points.push(ED25519_BASEPOINT_POINT);
        let mut b = Scalar::ZERO;
        for (&i, z) in chunk.iter().zip(self.random.chunks_exact(16)) {
            let (Some(item), Ok(z)) = (items.get(i), <[u8; 16]>::try_from(z)) else { return false };
            let Some((r, s)) = &item.checked else { return false };
            let z = Scalar::from(u128::from_le_bytes(z));
            b += z * s;
            self.scalars.push(z);
            self.points.push(*r);
            let zk = z * item.k;
            // Chunks hold few distinct keys or many: a linear scan over the
            // distinct keys so far, from the most recent, is short for one
            // device and bounded by the chunk for a fleet; merge equal keys.
            match self.keys.iter().rev().take(8).find(|(k, _)| *k == item.a_bytes) {
                Some(&(_, at)) => {
                    if let Some(c) = self.scalars.get_mut(at) {
                        *c += zk;
                    }
                }
                None => {
                    self.keys.push((item.a_bytes, self.scalars.len()));
                    self.scalars.push(zk);
                    self.points.push(item.a);
                }
            }
        }
        if let Some(first) = self.scalars.first_mut() {
            *first = -b;
        }
        EdwardsPoint::vartime_multiscalar_mul(self.scalars.iter(), self.points.iter()).is_identity()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use curve25519_dalek::edwards::CompressedEdwardsY;
    use proptest::prelude::*;

    use super::{decompress_r, small_order_encodings};
    use crate::seal::is_canonical_point_encoding;

    /// What `decompress_r` computed before the table: decompress, then three doublings.
    fn by_doubling(r: &[u8; 32]) -> Option<curve25519_dalek::edwards::EdwardsPoint> {
        if !is_canonical_point_encoding(r) {
            return None;
        }
        CompressedEdwardsY(*r).decompress().filter(|p| !p.is_small_order())
    }

    #[test]
    fn the_table_holds_the_ten_encodings_of_small_order_points() {
        let t = small_order_encodings();
        assert_eq!(t.len(), 10, "eight points, two of them (x = 0) with both sign bits");
        for (i, e) in t.iter().enumerate() {
            assert!(is_canonical_point_encoding(e));
            assert!(CompressedEdwardsY(*e).decompress().unwrap().is_small_order());
            assert!(!t.iter().skip(i + 1).any(|o| o == e), "distinct");
            assert_eq!(decompress_r(e), None);
        }
        // every point a table entry is, with its other sign bit and the
        // non-canonical y + p encodings: the same answer as by doubling
        for e in t {
            for flip in [0u8, 0x80] {
                let mut v = *e;
                v[31] ^= flip;
                assert_eq!(decompress_r(&v), by_doubling(&v));
            }
        }
        for low in 0xed..=0xffu8 {
            for top in [0x7f, 0xff] {
                let mut v = [0xff; 32];
                v[0] = low;
                v[31] = top;
                assert_eq!(decompress_r(&v), by_doubling(&v));
            }
        }
    }

    proptest! {
        #[test]
        fn decompress_r_agrees_with_doubling(r in any::<[u8; 32]>(), scalar in any::<[u8; 32]>()) {
            prop_assert_eq!(decompress_r(&r), by_doubling(&r));
            // points on the curve, of large and of mixed order
            let p = curve25519_dalek::constants::ED25519_BASEPOINT_POINT
                * curve25519_dalek::scalar::Scalar::from_bytes_mod_order(scalar);
            for t in curve25519_dalek::constants::EIGHT_TORSION {
                let e = (p + t).compress().to_bytes();
                prop_assert_eq!(decompress_r(&e), by_doubling(&e));
            }
        }
    }
}
