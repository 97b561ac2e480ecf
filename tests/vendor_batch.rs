//! Batch verification against `verify_strict`: where they agree, and the one documented gap.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::ed25519::signature::MultipartSigner;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use sha2::{Digest, Sha512};
use spime::consent::*;
use spime::message::*;
use spime::seal::{self, MESSAGE_DST, VendorKeys};
use spime::vendor::batch::{BatchVerifier, batchable_key, batchable_r};
use spime::vendor::sim::{SimDevice, consent, counter_usage};
use spime::vendor::*;
use spime::wire::{DeviceId, Direction, Header, Kind};

/// The order-2 point (0, -1).
fn order2() -> EdwardsPoint {
    let mut y = [0xffu8; 32];
    y[0] = 0xec;
    y[31] = 0x7f;
    CompressedEdwardsY(y).decompress().unwrap()
}

fn secret_scalar(seed: &[u8; 32]) -> Scalar {
    let h = Sha512::digest(seed);
    let mut a: [u8; 32] = h[..32].try_into().unwrap();
    a[0] &= 248;
    a[31] &= 127;
    a[31] |= 64;
    Scalar::from_bytes_mod_order(a)
}

/// A signature by `seed`'s key whose R has an order-2 component: it
/// satisfies the batch equation up to that component only.
fn torsioned_signature(seed: &[u8; 32], parts: &[&[u8]]) -> [u8; 64] {
    let a = secret_scalar(seed);
    let key = SigningKey::from_bytes(seed).verifying_key();
    let r = Scalar::from_bytes_mod_order_wide(&Sha512::digest([&seed[..], b"nonce"].concat()).into());
    let big_r = (ED25519_BASEPOINT_POINT * r + order2()).compress();
    let mut h = Sha512::new();
    h.update(big_r.as_bytes());
    h.update(key.as_bytes());
    for p in parts {
        h.update(p);
    }
    let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
    let s = r + k * a;
    let mut sig = [0u8; 64];
    sig[..32].copy_from_slice(big_r.as_bytes());
    sig[32..].copy_from_slice(s.as_bytes());
    sig
}

#[test]
fn agrees_with_strict_on_good_and_bad() {
    let keys: Vec<SigningKey> = (0..5u8).map(|i| SigningKey::from_bytes(&[i + 1; 32])).collect();
    let mut b = BatchVerifier::new();
    let mut expect = Vec::new();
    for i in 0..150usize {
        let k = &keys[i % keys.len()];
        let body = u32::try_from(i).unwrap().to_be_bytes();
        let mut sig = k.multipart_sign(&[MESSAGE_DST, b"h", &body]).to_bytes();
        let good = i % 37 != 5;
        if !good {
            sig[40] ^= 1;
        }
        b.push(k.verifying_key(), batchable_key(&k.verifying_key()), b"h", &body, &sig);
        expect.push(seal::verify_signature(&k.verifying_key(), b"h", &body, &sig).is_ok());
        assert_eq!(expect[i], good);
    }
    assert_eq!(b.verify(), expect);
}

#[test]
fn small_order_key_and_r_are_never_batched() {
    // A = identity, R = identity, s = 0 satisfies the batch equation for any
    // message; verify_strict refuses it.
    let mut id = [0u8; 32];
    id[0] = 1;
    let key = VerifyingKey::from_bytes(&id).unwrap();
    let mut sig = [0u8; 64];
    sig[..32].copy_from_slice(&id);
    let msg = [MESSAGE_DST, b"h", b"anything"].concat();
    assert!(ed25519_dalek::verify_batch(&[&msg], &[Signature::from_bytes(&sig)], &[key]).is_ok());
    assert!(seal::verify_signature(&key, b"h", b"anything", &sig).is_err());
    assert!(!batchable_key(&key));
    assert!(!batchable_r(&sig));
    let mut b = BatchVerifier::new();
    b.push(key, true, b"h", b"anything", &sig); // even if the caller claims the key is fine
    assert_eq!(b.verify(), [false]);
}

#[test]
fn non_canonical_r_is_never_batched() {
    // y = p + 2 (non-canonical), and y = p + 1 (identity, non-canonical).
    for low in [0xefu8, 0xee, 0xed] {
        let mut r = [0xffu8; 64];
        r[0] = low;
        r[31] = 0x7f;
        assert!(!batchable_r(&r), "{low:x}");
    }
    let good = SigningKey::from_bytes(&[3; 32]).multipart_sign(&[b"x"]).to_bytes();
    assert!(batchable_r(&good));
}

#[test]
fn mixed_order_key_is_not_batchable() {
    let honest = SigningKey::from_bytes(&[3; 32]).verifying_key();
    assert!(batchable_key(&honest));
    let mixed = (honest.to_edwards() + order2()).compress();
    let mixed = VerifyingKey::from_bytes(mixed.as_bytes()).unwrap();
    assert!(!mixed.is_weak());
    assert!(!batchable_key(&mixed));
}

/// Finds a body (by varying a byte) whose torsioned signature passes the batch.
fn grind(seed: &[u8; 32], header: &[u8]) -> (Vec<u8>, [u8; 64]) {
    let key = SigningKey::from_bytes(seed).verifying_key();
    for i in 0..64u8 {
        let body = vec![i; 8];
        let sig = torsioned_signature(seed, &[MESSAGE_DST, header, &body]);
        let msg = [MESSAGE_DST, header, &body].concat();
        if ed25519_dalek::verify_batch(&[&msg], &[Signature::from_bytes(&sig)], &[key]).is_ok() {
            return (body, sig);
        }
    }
    panic!("no passing variant in 64 tries (probability 2^-64)");
}

#[test]
fn mixed_order_r_is_the_documented_gap() {
    let seed = [9u8; 32];
    let key = SigningKey::from_bytes(&seed).verifying_key();
    let (body, sig) = grind(&seed, b"h");
    // verify_strict refuses it; the batch equation accepts it.
    assert!(seal::verify_signature(&key, b"h", &body, &sig).is_err());
    assert!(batchable_r(&sig));
    let mut b = BatchVerifier::new();
    b.push(key, true, b"h", &body, &sig);
    assert_eq!(b.verify(), [true]);
}

/// Seals a body with an arbitrary signature (what a key holder can do).
fn seal_raw(header: &Header, body: &[u8], sig: &[u8; 64], d2v: &[u8; 32]) -> Vec<u8> {
    let mut out = vec![0u8; header.buffer_len()];
    header.emit(&mut out).unwrap();
    let mut plain = [body, sig].concat();
    let cipher = ChaCha20Poly1305::new(d2v.into());
    let n = seal::nonce(Direction::DeviceToVendor, header.counter);
    let tag = cipher.encrypt_inout_detached(&Nonce::from(n), &out, plain.as_mut_slice().into()).unwrap();
    out.extend_from_slice(&plain);
    out.extend_from_slice(&tag);
    out
}

#[test]
fn pipeline_batches_only_data_kinds() {
    let vk = || VendorKeys::from_secrets(&[1; 32], [2; 32]);
    let seed = [21u8; 32];
    let grants = [(Purpose::USAGE_ANALYTICS, CategorySet::EMPTY.with(DataCategory::UsageCounters))];
    for batch in [true, false] {
        let v = Ingestor::new(MemoryStore::new(), vk(), IngestConfig { workers: 1, batch_verify: batch });
        let mut d = SimDevice::new(DeviceId([4; 8]), seed, &vk()).unwrap();
        let reg = Register {
            certificate: d.certificate().clone(),
            firmware: FirmwareVersion { major: 1, minor: 0, patch: 0, build: 0 },
            consent: consent(1, &grants, 0),
        };
        v.ingest(&d.seal(&reg).unwrap(), 10).unwrap();
        let session = d.session().unwrap().clone();
        let d2v = *session.device_to_vendor.as_bytes();
        let key = d.key().public();

        // A usage report signed with a torsioned R, ground until the batch passes.
        let mut accepted_usage = None;
        for counter in 1..64u64 {
            let u = counter_usage(1, &[(1, counter)]);
            let mut bb = [0u8; 512];
            let body = spime::codec::encode(&u, &mut bb).unwrap().to_vec();
            let h = Header { kind: Kind::USAGE, device: d.id(), epoch: 1, counter, ephemeral: None };
            let mut hb = [0u8; 63];
            let hn = h.emit(&mut hb).unwrap();
            let sig = torsioned_signature(&seed, &[MESSAGE_DST, &hb[..hn], &body]);
            let msg = [MESSAGE_DST, &hb[..hn], &body].concat();
            if ed25519_dalek::verify_batch(&[&msg], &[Signature::from_bytes(&sig)], &[key]).is_ok() {
                accepted_usage = Some(seal_raw(&h, &body, &sig, &d2v));
                break;
            }
        }
        let m = accepted_usage.unwrap();
        let r = v.ingest(&m, 10);
        // Batched: the gap lets it through; strict: refused.
        assert_eq!(r.is_ok(), batch, "usage, batch={batch}");

        // A consent update with a torsioned R is always refused (strict): ledger proofs stay strict-valid.
        let c = ConsentUpdate { consent: consent(2, &[], 0) };
        let mut bb = [0u8; 2048];
        let body = spime::codec::encode(&c, &mut bb).unwrap().to_vec();
        for counter in 100..110u64 {
            let h = Header { kind: Kind::CONSENT, device: d.id(), epoch: 1, counter, ephemeral: None };
            let mut hb = [0u8; 63];
            let hn = h.emit(&mut hb).unwrap();
            let sig = torsioned_signature(&seed, &[MESSAGE_DST, &hb[..hn], &body]);
            let m = seal_raw(&h, &body, &sig, &d2v);
            assert_eq!(v.ingest(&m, 10).unwrap_err().reason(), "unauthentic");
        }
    }
}
