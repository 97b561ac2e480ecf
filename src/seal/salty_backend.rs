//! Ed25519 and X25519 on [`salty`], the device's backend with the `salty`
//! feature: small code and no tables, for firmware short of flash (with
//! Cortex-M4's `UMAAL`, salty's field arithmetic is assembly).
//!
//! Signatures are byte-identical to ed25519-dalek's (Ed25519 is
//! deterministic) and X25519 results to x25519-dalek's. salty's own
//! `verify` is not strict, so verification here is built from its curve
//! operations with every check of dalek's `verify_strict` and of
//! [`super::verify_strict_parts`]: canonical `s < ℓ`, canonical encodings of
//! `A` and `R` (`y < p`), `A` and `R` on the curve and not of small order,
//! and the cofactorless equation `[s]B = R + [k]A` compared on the encoding
//! of `R`. Unit tests below cross-check both backends on every vector in
//! tests/vectors and on random and hostile inputs.

// With `std` the vendor's dalek verification runs instead; the strict checks
// are still compiled, for the cross-tests.
#![cfg_attr(feature = "std", allow(dead_code))]

use salty::{CompressedY, EdwardsPoint, Scalar, Sha512};
use zeroize::{Zeroize, Zeroizing};

use super::is_canonical_point_encoding;

/// ℓ, the order of the base point, little-endian.
const ELL: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// The encoding of the neutral element (x = 0, y = 1).
const IDENTITY: [u8; 32] = {
    let mut b = [0u8; 32];
    b[0] = 1;
    b
};

/// Whether a little-endian scalar is below ℓ (the canonical `s` of a signature).
fn is_canonical_scalar(s: &[u8; 32]) -> bool {
    match s.iter().rev().zip(ELL.iter().rev()).find(|(a, b)| a != b) {
        Some((a, b)) => a < b,
        None => false,
    }
}

/// Whether `[8]P` is the neutral element. Out of line, as the
/// decompression in [`decompress`]: inlined into [`large_order_point`],
/// the temporaries of both sat in one frame under the signature check
/// (docs/firmware.md, "RAM and stack").
#[inline(never)]
fn is_small_order(p: &EdwardsPoint) -> bool {
    let p2 = p + p;
    let p4 = &p2 + &p2;
    let p8 = &p4 + &p4;
    p8.compressed().0 == IDENTITY
}

/// A canonical encoding of a point of large order, decompressed.
fn large_order_point(bytes: &[u8; 32]) -> Option<EdwardsPoint> {
    if !is_canonical_point_encoding(bytes) {
        return None;
    }
    let point = decompress(bytes)?;
    (!is_small_order(&point)).then_some(point)
}

/// The point of a 32-byte encoding, if it is on the curve.
#[inline(never)]
fn decompress(bytes: &[u8; 32]) -> Option<EdwardsPoint> {
    CompressedY(*bytes).decompressed().ok()
}

/// Whether a key is the canonical encoding of a point of large order.
pub(crate) fn is_strong_key(bytes: &[u8; 32]) -> bool {
    large_order_point(bytes).is_some()
}

/// Splits a 64-byte signature into `R` and `s`.
fn split(sig: &[u8; 64]) -> (&[u8; 32], &[u8; 32]) {
    let (r, s) = sig.split_at(32);
    // both halves are 32 bytes by construction; the fallbacks are never taken
    (r.try_into().unwrap_or(&[0; 32]), s.try_into().unwrap_or(&[0xff; 32]))
}

/// Reduces `x` (64 signed limbs of 8 bits each, as TweetNaCl's `modL`)
/// modulo ℓ. Small code (loops over bytes) in place of salty's unrolled
/// 29-bit scalar arithmetic, which is about 2.7 KB on Cortex-M; tests
/// compare it with curve25519-dalek's reduction.
#[allow(clippy::indexing_slicing)] // every index is bounded by its loop: i < 64, j < 32 + 32
fn mod_l(x: &mut [i64; 64]) -> [u8; 32] {
    for i in (32..64).rev() {
        let mut carry = 0i64;
        let mut j = i - 32;
        while j < i - 12 {
            x[j] += carry - 16 * x[i] * i64::from(ELL[j - (i - 32)]);
            carry = (x[j] + 128) >> 8;
            x[j] -= carry << 8;
            j += 1;
        }
        x[j] += carry;
        x[i] = 0;
    }
    let mut carry = 0i64;
    for j in 0..32 {
        x[j] += carry - (x[31] >> 4) * i64::from(ELL[j]);
        carry = x[j] >> 8;
        x[j] &= 255;
    }
    for j in 0..32 {
        x[j] -= carry * i64::from(ELL[j]);
    }
    let mut r = [0u8; 32];
    for i in 0..32 {
        x[i + 1] += x[i] >> 8;
        r[i] = (x[i] & 255) as u8;
    }
    r
}

/// A 512-bit little-endian integer reduced modulo ℓ. Out of line, as is
/// [`mul_add`]: its 512-byte limb array is then not in the frame of the
/// signer, which holds a SHA-512 state (docs/firmware.md, "RAM and stack").
#[inline(never)]
fn reduce_wide(bytes: &[u8; 64]) -> Scalar {
    let mut x = [0i64; 64];
    for (x, b) in x.iter_mut().zip(bytes) {
        *x = i64::from(*b);
    }
    let r = Scalar(mod_l(&mut x));
    x.zeroize();
    r
}

/// `(k × a + r) mod ℓ`, for 32-byte little-endian `k`, `a` and `r`.
#[allow(clippy::indexing_slicing)] // i, j < 32, so i + j < 64
#[inline(never)]
fn mul_add(k: &[u8; 32], a: &[u8; 32], r: &[u8; 32]) -> [u8; 32] {
    let mut x = [0i64; 64];
    for (x, b) in x.iter_mut().zip(r) {
        *x = i64::from(*b);
    }
    for i in 0..32 {
        for j in 0..32 {
            x[i + j] += i64::from(k[i]) * i64::from(a[j]);
        }
    }
    let s = mod_l(&mut x);
    x.zeroize();
    s
}

/// `SHA-512(prefix || second || parts...)` reduced mod ℓ.
fn hash_to_scalar(prefix: &[u8], second: &[u8], parts: &[&[u8]]) -> Scalar {
    let mut h = Sha512::new();
    h.update(prefix);
    h.update(second);
    for p in parts {
        h.update(p);
    }
    let digest = Zeroizing::new(h.finalize());
    reduce_wide(&digest)
}

/// Strict Ed25519 verification of a message given in parts (the checks
/// of the module documentation).
pub(crate) fn verify_strict_parts(key: &[u8; 32], parts: &[&[u8]], sig: &[u8; 64]) -> Result<(), ()> {
    let (r, s) = split(sig);
    if !is_canonical_scalar(s) {
        return Err(());
    }
    let a = large_order_point(key).ok_or(())?;
    large_order_point(r).ok_or(())?;
    let k = hash_to_scalar(r, key, parts);
    if equation(s, &k, &a) == *r { Ok(()) } else { Err(()) }
}

/// The encoding of `[s]B - [k]A` (out of line: its points are not in the
/// verifier's frame while `A` and `R` are checked).
#[inline(never)]
fn equation(s: &[u8; 32], k: &Scalar, a: &EdwardsPoint) -> [u8; 32] {
    let minus_a = -a;
    (&(&Scalar(*s) * &EdwardsPoint::basepoint()) + &(k * &minus_a)).compressed().0
}

/// The secret scalar (clamped) and the nonce prefix of a seed (RFC 8032 §5.1.5).
fn expand(seed: &[u8; 32]) -> (Scalar, Zeroizing<[u8; 32]>) {
    let hash = Zeroizing::new(Sha512::new().updated(seed).finalize());
    let (low, high) = hash.split_at(32);
    let mut a = Scalar([0; 32]);
    a.0.copy_from_slice(low);
    a.0[0] &= 248;
    a.0[31] &= 127;
    a.0[31] |= 64;
    let mut nonce = Zeroizing::new([0u8; 32]);
    nonce.copy_from_slice(high);
    (a, nonce)
}

/// The Ed25519 public key of a seed.
pub(crate) fn public_key(seed: &[u8; 32]) -> [u8; 32] {
    let (a, _) = expand(seed);
    (&a * &EdwardsPoint::basepoint()).compressed().0
}

/// Ed25519 signature (RFC 8032, pure) of a message given in parts, by the
/// key with this seed and public key (`public` must be [`public_key`] of `seed`).
pub(crate) fn sign_parts(seed: &[u8; 32], public: &[u8; 32], parts: &[&[u8]]) -> [u8; 64] {
    let (a, nonce) = expand(seed);
    let r = hash_to_scalar(nonce.as_slice(), &[], parts);
    let big_r = (&r * &EdwardsPoint::basepoint()).compressed().0;
    let k = hash_to_scalar(&big_r, public, parts);
    let s = Scalar(mul_add(&k.0, &a.0, &r.0));
    let mut sig = [0u8; 64];
    let (sig_r, sig_s) = sig.split_at_mut(32);
    sig_r.copy_from_slice(&big_r);
    sig_s.copy_from_slice(&s.0);
    sig
}

/// X25519 (RFC 7748), as `x25519_dalek::x25519`.
pub(crate) fn x25519(secret: &[u8; 32], public: &[u8; 32]) -> [u8; 32] {
    salty::agreement::x25519(*secret, *public)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

    use super::*;
    use ed25519_dalek::ed25519::signature::{MultipartSigner, MultipartVerifier};
    use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
    use proptest::prelude::*;

    /// What dalek says, with the crate's extra encoding checks: the
    /// reference the salty backend must match.
    fn dalek_verify(key: &[u8; 32], parts: &[&[u8]], sig: &[u8; 64]) -> Result<(), ()> {
        let key = VerifyingKey::from_bytes(key).map_err(|_| ())?;
        let sig = Signature::from_bytes(sig);
        if key.is_weak() || !is_canonical_point_encoding(key.as_bytes()) || !is_canonical_point_encoding(sig.r_bytes())
        {
            return Err(());
        }
        let r = curve25519_dalek::edwards::CompressedEdwardsY(*sig.r_bytes());
        match r.decompress() {
            Some(point) if !point.is_small_order() => {}
            _ => return Err(()),
        }
        let joined: std::vec::Vec<u8> = parts.concat();
        // the multipart and the one-part strict checks agree (as the crate's own tests pin)
        let multi = key.multipart_verify(parts, &sig).map_err(|_| ());
        assert_eq!(multi, key.verify_strict(&joined, &sig).map_err(|_| ()));
        multi
    }

    /// The eight points of small order (their canonical encodings), and
    /// the non-canonical encodings (y ≥ p) of the low y values.
    fn hostile_points() -> std::vec::Vec<[u8; 32]> {
        let mut v = std::vec::Vec::new();
        for hex in [
            "0100000000000000000000000000000000000000000000000000000000000000",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0000000000000000000000000000000000000000000000000000000000000080",
            "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
            "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
            "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
            "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
        ] {
            v.push(hex::decode(hex).unwrap().try_into().unwrap());
        }
        for low in 0xedu8..=0xff {
            for top in [0x7fu8, 0xff] {
                let mut y = [0xffu8; 32];
                y[0] = low;
                y[31] = top;
                v.push(y);
            }
        }
        v
    }

    fn sign_both(seed: &[u8; 32], parts: &[&[u8]]) -> ([u8; 64], [u8; 64]) {
        let dalek = SigningKey::from_bytes(seed);
        let public = public_key(seed);
        assert_eq!(public, dalek.verifying_key().to_bytes(), "public keys differ");
        (sign_parts(seed, &public, parts), dalek.multipart_sign(parts).to_bytes())
    }

    #[test]
    fn rfc8032_test_1() {
        let seed: [u8; 32] = hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
            .unwrap()
            .try_into()
            .unwrap();
        let public = public_key(&seed);
        assert_eq!(hex::encode(public), "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
        let sig = sign_parts(&seed, &public, &[]);
        assert_eq!(
            hex::encode(sig),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
        assert_eq!(verify_strict_parts(&public, &[], &sig), Ok(()));
    }

    #[test]
    fn x25519_rfc7748_vector() {
        let k: [u8; 32] = hex::decode("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4")
            .unwrap()
            .try_into()
            .unwrap();
        let u: [u8; 32] = hex::decode("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c")
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(hex::encode(x25519(&k, &u)), "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552");
        assert_eq!(x25519(&k, &u), x25519_dalek::x25519(k, u));
    }

    #[test]
    fn non_canonical_s_is_refused_where_dalek_refuses_it() {
        let seed = [7u8; 32];
        let parts: &[&[u8]] = &[b"spime", b"salty"];
        let (sig, _) = sign_both(&seed, parts);
        let public = public_key(&seed);
        // s + ℓ: the same value mod ℓ, not canonical
        let mut bumped = sig;
        let mut carry = 0u16;
        for i in 0..32 {
            let v = u16::from(bumped[32 + i]) + u16::from(ELL[i]) + carry;
            bumped[32 + i] = (v & 0xff) as u8;
            carry = v >> 8;
        }
        assert_eq!(carry, 0);
        assert_eq!(verify_strict_parts(&public, parts, &bumped), Err(()));
        assert_eq!(dalek_verify(&public, parts, &bumped), Err(()));
        // ℓ itself, and the largest 32-byte value
        for s in [ELL, [0xff; 32]] {
            let mut t = sig;
            t[32..].copy_from_slice(&s);
            assert_eq!(verify_strict_parts(&public, parts, &t), Err(()));
            assert_eq!(dalek_verify(&public, parts, &t), Err(()));
        }
        assert!(is_canonical_scalar(&{
            let mut l1 = ELL;
            l1[0] -= 1;
            l1
        }));
    }

    #[test]
    fn small_order_and_non_canonical_keys_and_r_are_refused_by_both() {
        let seed = [9u8; 32];
        let parts: &[&[u8]] = &[b"head", b"body"];
        let (sig, _) = sign_both(&seed, parts);
        let public = public_key(&seed);
        for p in hostile_points().iter().take(8) {
            let point = curve25519_dalek::edwards::CompressedEdwardsY(*p).decompress().unwrap();
            assert!(point.is_small_order(), "{} is not of small order", hex::encode(p));
            assert!(is_small_order(&CompressedY(*p).decompressed().unwrap()));
        }
        for bad in hostile_points() {
            assert!(!is_strong_key(&bad), "key {}", hex::encode(bad));
            assert!(!crate::seal::is_strong_key(&bad), "key {}", hex::encode(bad));
            assert_eq!(verify_strict_parts(&bad, parts, &sig), Err(()), "key {}", hex::encode(bad));
            assert_eq!(dalek_verify(&bad, parts, &sig), Err(()), "key {}", hex::encode(bad));
            let mut t = sig;
            t[..32].copy_from_slice(&bad);
            assert_eq!(verify_strict_parts(&public, parts, &t), Err(()), "R {}", hex::encode(bad));
            assert_eq!(dalek_verify(&public, parts, &t), Err(()), "R {}", hex::encode(bad));
        }
    }

    /// Signatures made only of small-order points (s = 0): both refuse them.
    #[test]
    fn forgery_with_a_small_order_key_is_refused() {
        let parts: &[&[u8]] = &[b"anything"];
        for a in hostile_points().into_iter().take(8) {
            for r in hostile_points().into_iter().take(8) {
                let mut sig = [0u8; 64];
                sig[..32].copy_from_slice(&r);
                assert_eq!(verify_strict_parts(&a, parts, &sig), Err(()));
                assert_eq!(dalek_verify(&a, parts, &sig), Err(()));
            }
        }
    }

    fn hex32(v: &serde_json::Value) -> [u8; 32] {
        hex::decode(v.as_str().unwrap()).unwrap().try_into().unwrap()
    }

    /// Every message of tests/vectors/valid.json: its signature verifies
    /// under both backends, and fails under both once a bit of the
    /// signature, header or body is flipped; the device's messages are
    /// signed byte-identically by salty.
    #[test]
    fn valid_vectors_agree() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/valid.json");
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let keys = &json["keys"];
        let device_seed = hex32(&keys["device_signing_seed"]);
        let device = hex32(&keys["device_signing_public"]);
        let vendor = hex32(&keys["vendor_signing_public"]);
        assert_eq!(public_key(&device_seed), device);
        assert_eq!(public_key(&hex32(&keys["vendor_signing_seed"])), vendor);
        let messages = json["messages"].as_array().unwrap();
        let mut signed = 0;
        for m in messages {
            let name = m["name"].as_str().unwrap();
            let header = hex::decode(m["header_hex"].as_str().unwrap()).unwrap();
            let body = hex::decode(m["body_hex"].as_str().unwrap()).unwrap();
            let sig: [u8; 64] = hex::decode(m["signature_hex"].as_str().unwrap()).unwrap().try_into().unwrap();
            let from_device = m["direction"] == "device_to_vendor";
            // A vendor message is signed by the vendor key its epoch uses;
            // a KeyUpdate by the key its certificate certifies (SPEC §8.7).
            let key = if from_device {
                device
            } else if m["kind"] == 131 {
                let update: crate::message::KeyUpdate = crate::codec::decode(&body).unwrap();
                update.certificate.body.signing
            } else {
                let serial = m["vendor_key"].as_u64().unwrap();
                let held = keys["vendor_keys"].as_array().unwrap().iter().find(|k| k["serial"] == serial).unwrap();
                hex32(&held["signing_public"])
            };
            let parts: [&[u8]; 3] = [crate::seal::MESSAGE_DST, &header, &body];
            assert_eq!(verify_strict_parts(&key, &parts, &sig), Ok(()), "{name}");
            assert_eq!(dalek_verify(&key, &parts, &sig), Ok(()), "{name}");
            if from_device {
                assert_eq!(sign_parts(&device_seed, &device, &parts), sig, "{name}: salty signs differently");
                signed += 1;
            }
            for bit in [0usize, 7, 255, 256, 300, 511] {
                let mut t = sig;
                t[bit / 8] ^= 1 << (bit % 8);
                assert_eq!(verify_strict_parts(&key, &parts, &t), dalek_verify(&key, &parts, &t), "{name} bit {bit}");
                assert_eq!(verify_strict_parts(&key, &parts, &t), Err(()), "{name} bit {bit}");
            }
            let mut h = header.clone();
            h[0] ^= 0x10;
            let parts_h: [&[u8]; 3] = [crate::seal::MESSAGE_DST, &h, &body];
            assert_eq!(verify_strict_parts(&key, &parts_h, &sig), Err(()), "{name}");
            assert_eq!(dalek_verify(&key, &parts_h, &sig), Err(()), "{name}");
            let mut b = body.clone();
            b.push(0);
            let parts_b: [&[u8]; 3] = [crate::seal::MESSAGE_DST, &header, &b];
            assert_eq!(verify_strict_parts(&key, &parts_b, &sig), Err(()), "{name}");
            assert_eq!(dalek_verify(&key, &parts_b, &sig), Err(()), "{name}");
            // the wrong sender's key
            let other = if from_device { vendor } else { device };
            assert_ne!(other, key, "{name}");
            assert_eq!(verify_strict_parts(&other, &parts, &sig), Err(()), "{name}");
        }
        assert!(messages.len() >= 40 && signed > 10, "{} messages, {signed} device-signed", messages.len());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn signatures_are_byte_identical_and_verify_alike(
            seed in any::<[u8; 32]>(),
            a in proptest::collection::vec(any::<u8>(), 0..300),
            b in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let parts: &[&[u8]] = &[&a, &b];
            let (ours, theirs) = sign_both(&seed, parts);
            prop_assert_eq!(ours, theirs);
            let public = public_key(&seed);
            prop_assert_eq!(verify_strict_parts(&public, parts, &ours), Ok(()));
            prop_assert_eq!(dalek_verify(&public, parts, &ours), Ok(()));
        }

        #[test]
        fn tampered_signatures_fail_alike(
            seed in any::<[u8; 32]>(),
            msg in proptest::collection::vec(any::<u8>(), 0..200),
            byte in 0usize..64,
            flip in 1u8..=255,
        ) {
            let public = public_key(&seed);
            let mut sig = sign_parts(&seed, &public, &[&msg]);
            sig[byte] ^= flip;
            prop_assert_eq!(verify_strict_parts(&public, &[&msg], &sig), Err(()));
            prop_assert_eq!(dalek_verify(&public, &[&msg], &sig), Err(()));
        }

        #[test]
        fn random_keys_and_signatures_verify_alike(
            key in any::<[u8; 32]>(),
            sig in proptest::collection::vec(any::<u8>(), 64),
            msg in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let sig: [u8; 64] = sig.try_into().unwrap();
            prop_assert_eq!(verify_strict_parts(&key, &[&msg], &sig), dalek_verify(&key, &[&msg], &sig));
        }

        #[test]
        fn hostile_keys_and_r_verify_alike(
            which in 0usize..60,
            seed in any::<[u8; 32]>(),
            as_key in any::<bool>(),
            msg in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let points = hostile_points();
            let bad = points[which % points.len()];
            let public = public_key(&seed);
            let mut sig = sign_parts(&seed, &public, &[&msg]);
            let key = if as_key { bad } else { sig[..32].copy_from_slice(&bad); public };
            prop_assert_eq!(verify_strict_parts(&key, &[&msg], &sig), Err(()));
            prop_assert_eq!(dalek_verify(&key, &[&msg], &sig), Err(()));
        }

        /// The key check the device makes of a vendor key held as bytes
        /// agrees with dalek's (decompresses, canonical, not of small order)
        /// for random bytes and for real keys.
        #[test]
        fn strong_key_check_agrees_with_dalek(bytes in any::<[u8; 32]>(), seed in any::<[u8; 32]>()) {
            let dalek = |k: &[u8; 32]| {
                is_canonical_point_encoding(k) && VerifyingKey::from_bytes(k).is_ok_and(|k| !k.is_weak())
            };
            prop_assert_eq!(is_strong_key(&bytes), dalek(&bytes));
            let public = public_key(&seed);
            prop_assert!(is_strong_key(&public));
            prop_assert!(dalek(&public));
        }

        #[test]
        fn x25519_agrees_with_dalek(secret in any::<[u8; 32]>(), public in any::<[u8; 32]>()) {
            prop_assert_eq!(x25519(&secret, &public), x25519_dalek::x25519(secret, public));
            let base = x25519_dalek::X25519_BASEPOINT_BYTES;
            prop_assert_eq!(x25519(&secret, &base), x25519_dalek::x25519(secret, base));
        }
    }

    proptest! {
        #[test]
        fn scalar_reduction_and_mul_add_agree_with_dalek(
            wide in proptest::collection::vec(any::<u8>(), 64),
            k in any::<[u8; 32]>(),
            a in any::<[u8; 32]>(),
            r in any::<[u8; 32]>(),
        ) {
            use curve25519_dalek::Scalar as D;
            let wide: [u8; 64] = wide.try_into().unwrap();
            prop_assert_eq!(reduce_wide(&wide).0, D::from_bytes_mod_order_wide(&wide).to_bytes());
            let expected = D::from_bytes_mod_order(k) * D::from_bytes_mod_order(a) + D::from_bytes_mod_order(r);
            // k and r as they come in signing (reduced), a clamped (up to 2^255)
            let (kr, rr) = (D::from_bytes_mod_order(k).to_bytes(), D::from_bytes_mod_order(r).to_bytes());
            let mut ac = a;
            ac[0] &= 248;
            ac[31] &= 127;
            ac[31] |= 64;
            let expected_c = D::from_bytes_mod_order(kr) * D::from_bytes_mod_order(ac) + D::from_bytes_mod_order(rr);
            prop_assert_eq!(mul_add(&kr, &ac, &rr), expected_c.to_bytes());
            // and any 32-byte inputs at all
            prop_assert_eq!(mul_add(&k, &a, &r), expected.to_bytes());
        }
    }

    #[test]
    fn scalar_reduction_edges() {
        use curve25519_dalek::Scalar as D;
        let mut l_wide = [0u8; 64];
        l_wide[..32].copy_from_slice(&ELL);
        for wide in [[0u8; 64], [0xff; 64], l_wide] {
            assert_eq!(reduce_wide(&wide).0, D::from_bytes_mod_order_wide(&wide).to_bytes());
        }
        assert_eq!(mul_add(&[0xff; 32], &[0xff; 32], &[0xff; 32]), {
            let f = D::from_bytes_mod_order([0xff; 32]);
            (f * f + f).to_bytes()
        });
    }

    #[test]
    fn x25519_small_order_and_non_canonical_u_agree_with_dalek() {
        let secret = [0x5a; 32];
        for u in hostile_points() {
            assert_eq!(x25519(&secret, &u), x25519_dalek::x25519(secret, u), "u {}", hex::encode(u));
        }
        for u in [
            [0u8; 32],
            {
                let mut b = [0u8; 32];
                b[0] = 1;
                b
            },
            [0xff; 32],
        ] {
            assert_eq!(x25519(&secret, &u), x25519_dalek::x25519(secret, u));
        }
    }
}
