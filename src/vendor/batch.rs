//! Batch signature verification, and how it relates to `verify_strict`.
//!
//! Every signature the crate accepts one at a time is checked with strict
//! Ed25519 ([`crate::seal::verify_signature`]): the public key `A` and the
//! nonce point `R` must not be of small order, `s` must be canonical, and
//! `[s]B - [k]A` must re-encode to exactly the bytes of `R` (cofactorless).
//!
//! ed25519-dalek's `verify_batch` checks one random linear combination of
//! the equations `[s_i]B - R_i - [k_i]A_i = 0` (cofactorless, 128-bit
//! coefficients `z_i` derived from a transcript of all inputs). It is looser
//! than `verify_strict` in three ways, and [`BatchVerifier`] closes each:
//!
//! 1. It does not refuse small-order `A` or `R`. Here such an item is never
//!    batched: it goes to `verify_strict`, which refuses it.
//! 2. It decompresses `R` rather than comparing encodings, so a
//!    non-canonical encoding of `R` (y ≥ p) passes. Here such an item is
//!    never batched either (a byte comparison).
//! 3. A point with a torsion component `T` (mixed order) can make the
//!    batched sum vanish while one equation is off by `T`: `z_i·T = 0`
//!    whenever `z_i` is a multiple of the order of `T` (1 in 2 for order 2).
//!    For a key `A` this is checked once per device at registration
//!    ([`super::DeviceRecord::batchable_key`]); keys with a torsion
//!    component are never batched. For `R` a per-signature subgroup check
//!    costs as much as a whole verification (measured: 39 µs against 48 µs
//!    for `verify_strict`), which would make batching slower than not
//!    batching, so it is not done. The residual difference: **the holder of
//!    a device key** can craft a signature with `R = [r]B + T` that the
//!    batch accepts with probability up to 1/2 and `verify_strict` refuses.
//!    Nobody else can (it needs the private key, because `k` binds `R`),
//!    and the message content is still the key holder's own. To keep every
//!    proof in the consent ledger strict-valid, the pipeline batches only
//!    Usage and Fault messages; Register, Consent, Transfer and Decommission
//!    are always verified with `verify_strict`. Turn batching off
//!    ([`super::IngestConfig::batch_verify`]) to make the accepted set
//!    exactly `verify_strict`'s for every kind. The test
//!    `mixed_order_r_is_the_documented_gap` pins this behaviour.
//!
//! When the batch equation fails, every item of that chunk is re-checked
//! with `verify_strict`, so a bad signature costs its chunk a second pass
//! and never rejects a good one.

use alloc::vec::Vec;

use curve25519_dalek::edwards::CompressedEdwardsY;
use ed25519_dalek::{Signature, VerifyingKey};

use crate::seal::{MESSAGE_DST, SIGNATURE_LEN, verify_signature};

/// Items per `verify_batch` call: large enough to amortise, small enough
/// that one bad signature sends few good ones to the slow path.
pub const CHUNK: usize = 64;

/// Whether a key may be batched: not of small order and with no torsion
/// component. Costs about one signature verification; the pipeline calls
/// it once per device key and stores the answer.
pub fn batchable_key(key: &VerifyingKey) -> bool {
    !key.is_weak() && crate::seal::is_canonical_point_encoding(key.as_bytes()) && key.to_edwards().is_torsion_free()
}

/// Whether the `R` half of a signature may be batched: a canonical encoding
/// (y < 2^255 - 19) of a point that is not of small order.
pub fn batchable_r(signature: &[u8; SIGNATURE_LEN]) -> bool {
    let Some(r) = signature.first_chunk::<32>() else { return false };
    if !crate::seal::is_canonical_point_encoding(r) {
        return false;
    }
    matches!(CompressedEdwardsY(*r).decompress(), Some(p) if !p.is_small_order())
}

struct Item {
    key: VerifyingKey,
    batchable_key: bool,
    header: Vec<u8>,
    body: Vec<u8>,
    signature: [u8; SIGNATURE_LEN],
}

/// Collects signatures and checks them together, with results equal to
/// checking each with [`verify_signature`] (strict) except the documented
/// gap (see the module docs).
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
///     b.push(key.verifying_key(), true, b"hdr", &body, &sig);
/// }
/// b.push(key.verifying_key(), true, b"hdr", b"forged", &[0; 64]);
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

    /// Adds an envelope signature over exact header and body bytes.
    /// `batchable_key` is [`batchable_key`] of `key`, computed once per key.
    pub fn push(
        &mut self,
        key: VerifyingKey,
        batchable_key: bool,
        header: &[u8],
        body: &[u8],
        signature: &[u8; SIGNATURE_LEN],
    ) {
        self.items.push(Item {
            key,
            batchable_key,
            header: header.to_vec(),
            body: body.to_vec(),
            signature: *signature,
        });
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
            if item.batchable_key && batchable_r(&item.signature) {
                eligible.push(i);
            } else if let Some(slot) = result.get_mut(i) {
                *slot = strict(item);
            }
        }
        for chunk in eligible.chunks(CHUNK) {
            let items: Vec<&Item> = chunk.iter().filter_map(|&i| self.items.get(i)).collect();
            let messages: Vec<Vec<u8>> =
                items.iter().map(|it| [MESSAGE_DST, it.header.as_slice(), it.body.as_slice()].concat()).collect();
            let msg_refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
            let sigs: Vec<Signature> = items.iter().map(|it| Signature::from_bytes(&it.signature)).collect();
            let keys: Vec<VerifyingKey> = items.iter().map(|it| it.key).collect();
            let all_ok = ed25519_dalek::verify_batch(&msg_refs, &sigs, &keys).is_ok();
            for (&i, item) in chunk.iter().zip(&items) {
                if let Some(slot) = result.get_mut(i) {
                    *slot = all_ok || strict(item);
                }
            }
        }
        result
    }
}

fn strict(item: &Item) -> bool {
    verify_signature(&item.key, &item.header, &item.body, &item.signature).is_ok()
}
