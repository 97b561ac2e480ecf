//! An independent reading of SPEC.md's vendor key rotation (§2, §3, §4,
//! §5.11, §8.7, §10): a device-side opener for Receipts and KeyUpdates
//! written from SPEC.md alone, with the cryptographic crates directly and
//! none of spime's own functions, run against `tests/vectors/*.json`.
//!
//! It decodes and verifies life 4 of `valid.json` (Register, Receipt under
//! serial 0, KeyUpdate to serial 1, a Usage opening epoch 2 with the
//! learned `VX`, a Receipt under the learned `VS`) and life 2's longest
//! KeyUpdate, and refuses every KeyUpdate of `invalid.json` with the error
//! code and detail SPEC.md §10.1 gives. Where this file and the crate agree
//! only because they share a misreading, SPEC.md is the thing to fix.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::std_instead_of_core,
    clippy::cast_possible_truncation
)]

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use curve25519_dalek::edwards::CompressedEdwardsY;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde_json::Value;
use sha2::Sha256;

/// SPEC §4: the message signature's prefix (17 bytes).
const MESSAGE_DST: &[u8] = b"spime/v1 message\0";
/// SPEC §5.11: the vendor key certificate's prefix (32 bytes).
const VENDOR_KEY_DST: &[u8] = b"spime/v1 vendor key certificate\0";
/// SPEC §5.11: the longest KeyUpdate body.
const KEY_UPDATE_MAX: usize = 153;
/// SPEC §4.3.
const MAX_SEALED_LEN: usize = 1221;
/// SPEC §5.4 / §8.7 rule 2.
const CLOCK_SKEW: u64 = 86_400;

/// A refusal: its §10.1 code and, for decoding errors, the detail
/// `invalid.json` names (rule, list, version, nibble, byte 0; 0 if none).
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Refusal {
    code: u16,
    detail: u64,
}

const fn refuse(code: u16) -> Refusal {
    Refusal { code, detail: 0 }
}

const TRUNCATED: u16 = 1;
const OVERSIZED: u16 = 2;
const TRAILING: u16 = 3;
const NON_CANONICAL: u16 = 4;
const MALFORMED: u16 = 5;
const UNSUPPORTED_VERSION: u16 = 6;
const UNKNOWN_KIND: u16 = 7;
const INVALID_FLAGS: u16 = 8;
const OUT_OF_RANGE: u16 = 12;
const UNAUTHENTIC: u16 = 20;
const WRONG_DIRECTION: u16 = 22;
const WRONG_DEVICE: u16 = 23;
const WRONG_EPOCH: u16 = 24;
const BAD_CERTIFICATE: u16 = 26;
const DUPLICATE: u16 = 27;
const TOO_OLD: u16 = 28;
const VENDOR_KEY_ROLLBACK: u16 = 92;
const VENDOR_KEY_INVALID: u16 = 93;
const NO_AUTHORITY: u16 = 94;
/// §10.1 range rule 19.
const RULE_VENDOR_KEY_VALIDITY: u64 = 19;

fn hex32(v: &Value) -> [u8; 32] {
    hex::decode(v.as_str().unwrap()).unwrap().try_into().unwrap()
}

fn load(name: &str) -> Value {
    let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

// ---------------------------------------------------------------- §1, §4.1

/// An unsigned LEB128 varint of at most `bits` bits, as §4.1 and §5.1 read
/// it: the value, whether it was in its shortest form, and its length.
/// `None` for "longer or larger than the type" (`Malformed`); `Some(Err)`
/// when the input ends inside it.
fn varint(bytes: &[u8], bits: u32) -> Result<(u64, bool, usize), Option<usize>> {
    let max_len = bits.div_ceil(7) as usize;
    let mut value: u64 = 0;
    for i in 0..max_len {
        let Some(&b) = bytes.get(i) else { return Err(Some(i)) };
        let group = u64::from(b & 0x7F);
        let shift = 7 * i as u32;
        if i == max_len - 1 {
            // The last byte allowed: no continuation, and no bits above `bits`.
            let room = bits - shift;
            if b & 0x80 != 0 || (room < 7 && group >> room != 0) {
                return Err(None);
            }
        }
        value |= group << shift;
        if b & 0x80 == 0 {
            let canonical = i == 0 || b != 0;
            return Ok((value, canonical, i + 1));
        }
    }
    Err(None)
}

/// A parsed header (§4.1).
#[derive(Debug)]
struct Header {
    byte0: u8,
    device: [u8; 8],
    epoch: u32,
    counter: u64,
    ephemeral: Option<[u8; 32]>,
    len: usize,
}

impl Header {
    fn nibble(&self) -> u8 {
        self.byte0 & 0x0F
    }
    fn vendor_to_device(&self) -> bool {
        self.byte0 & 0x08 != 0
    }
}

/// §4.4 steps 1–3, in their order.
fn parse_envelope(env: &[u8]) -> Result<Header, Refusal> {
    if env.len() > MAX_SEALED_LEN {
        return Err(refuse(OVERSIZED));
    }
    let Some(&byte0) = env.first() else { return Err(refuse(TRUNCATED)) };
    let version = byte0 >> 5;
    if version != 1 {
        return Err(Refusal { code: UNSUPPORTED_VERSION, detail: u64::from(version) });
    }
    let nibble = byte0 & 0x0F;
    if !matches!(nibble, 0x1..=0x6 | 0x9..=0xB) {
        return Err(Refusal { code: UNKNOWN_KIND, detail: u64::from(nibble) });
    }
    let e = byte0 & 0x10 != 0;
    let flags_ok = match nibble {
        0x1 => e,
        0x9..=0xB => !e,
        _ => true,
    };
    if !flags_ok {
        return Err(Refusal { code: INVALID_FLAGS, detail: u64::from(byte0) });
    }
    if env.len() < 11 {
        return Err(refuse(TRUNCATED));
    }
    let device: [u8; 8] = env[1..9].try_into().unwrap();
    let mut at = 9;
    let mut field = |bits: u32| -> Result<u64, Refusal> {
        match varint(&env[at..], bits) {
            Ok((v, true, n)) => {
                at += n;
                Ok(v)
            }
            Ok((_, false, _)) => Err(refuse(NON_CANONICAL)),
            Err(None) => Err(refuse(MALFORMED)),
            Err(Some(_)) => Err(refuse(TRUNCATED)),
        }
    };
    let epoch = field(32)? as u32;
    let counter = field(64)?;
    let ephemeral = if e {
        let key = env.get(at..at + 32).ok_or(refuse(TRUNCATED))?;
        at += 32;
        Some(key.try_into().unwrap())
    } else {
        None
    };
    if env.len() < at + 80 {
        return Err(refuse(TRUNCATED));
    }
    Ok(Header { byte0, device, epoch, counter, ephemeral, len: at })
}

// ---------------------------------------------------------------- §2.1

/// `L`, the order of the Ed25519 base point, little-endian.
const L: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// §2.1: the one non-canonical pattern of a point encoding.
fn canonical_point(b: &[u8; 32]) -> bool {
    !(b[0] >= 0xED && b[1..31].iter().all(|&x| x == 0xFF) && (b[31] & 0x7F) == 0x7F)
}

/// §2.1: canonical, decodes, not of small order.
fn good_point(b: &[u8; 32]) -> bool {
    canonical_point(b) && CompressedEdwardsY(*b).decompress().is_some_and(|p| !p.is_small_order())
}

/// §2.1 rule 1: `s < L` (little-endian compare).
fn s_below_l(s: &[u8]) -> bool {
    for i in (0..32).rev() {
        if s[i] != L[i] {
            return s[i] < L[i];
        }
    }
    false
}

/// §2.1: strict verification of `sig` by `key` over `msg`.
fn verify_strict(key: &[u8; 32], msg: &[u8], sig: &[u8; 64]) -> bool {
    let r: [u8; 32] = sig[..32].try_into().unwrap();
    if !s_below_l(&sig[32..]) || !good_point(&r) || !good_point(key) {
        return false;
    }
    let Ok(vk) = VerifyingKey::from_bytes(key) else { return false };
    vk.verify_strict(msg, &Signature::from_bytes(sig)).is_ok()
}

// ---------------------------------------------------------------- §3, §4.2

/// §3: `K_dv`, `K_vd` and `E.pub` for epoch `n` from the device's secret.
fn epoch_keys(device: &[u8; 8], n: u32, e: &[u8; 32], vx_pub: &[u8; 32]) -> ([u8; 32], [u8; 32], [u8; 32]) {
    let e_pub = x25519_dalek::x25519(*e, x25519_dalek::X25519_BASEPOINT_BYTES);
    let shared = x25519_dalek::x25519(*e, *vx_pub);
    assert_ne!(shared, [0; 32], "WeakKey");
    let mut info = b"spime/v1 keys\0".to_vec();
    info.extend_from_slice(device);
    info.extend_from_slice(&n.to_be_bytes());
    info.extend_from_slice(&e_pub);
    info.extend_from_slice(vx_pub);
    let mut okm = [0u8; 64];
    hkdf::Hkdf::<Sha256>::new(Some(b"spime/v1 session"), &shared).expand(&info, &mut okm).unwrap();
    (okm[..32].try_into().unwrap(), okm[32..].try_into().unwrap(), e_pub)
}

/// §4.2.
fn nonce(vendor_to_device: bool, counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[0] = u8::from(vendor_to_device);
    n[4..].copy_from_slice(&counter.to_be_bytes());
    n
}

/// §4 step 7: the plaintext (`body || signature`), or `None`.
fn decrypt(env: &[u8], h: &Header, key: &[u8; 32]) -> Option<Vec<u8>> {
    let (ct, tag) = env[h.len..].split_at(env.len() - h.len - 16);
    let mut buf = ct.to_vec();
    let tag = chacha20poly1305::Tag::try_from(tag).ok()?;
    ChaCha20Poly1305::new(key.into())
        .decrypt_inout_detached(
            &Nonce::from(nonce(h.vendor_to_device(), h.counter)),
            &env[..h.len],
            buf.as_mut_slice().into(),
            &tag,
        )
        .ok()?;
    Some(buf)
}

/// §4: the whole envelope, sealed by hand.
fn seal(header: &[u8], counter: u64, body: &[u8], signer: &SigningKey, key: &[u8; 32]) -> (Vec<u8>, [u8; 64]) {
    let mut signed = MESSAGE_DST.to_vec();
    signed.extend_from_slice(header);
    signed.extend_from_slice(body);
    let sig = signer.sign(&signed).to_bytes();
    let mut buf = body.to_vec();
    buf.extend_from_slice(&sig);
    let tag = ChaCha20Poly1305::new(key.into())
        .encrypt_inout_detached(&Nonce::from(nonce(header[0] & 0x08 != 0, counter)), header, buf.as_mut_slice().into())
        .unwrap();
    let mut out = header.to_vec();
    out.extend_from_slice(&buf);
    out.extend_from_slice(&tag);
    (out, sig)
}

// ---------------------------------------------------------------- §5.1, §5.11

/// A body reader following §5.1: parse errors first, non-canonical
/// varints remembered and reported after the trailing-bytes check.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    canonical: bool,
}

impl Reader<'_> {
    fn varint(&mut self, bits: u32) -> Result<u64, Refusal> {
        match varint(&self.bytes[self.at..], bits) {
            Ok((v, canonical, n)) => {
                self.at += n;
                self.canonical &= canonical;
                Ok(v)
            }
            Err(_) => Err(refuse(MALFORMED)),
        }
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Refusal> {
        let a = self.bytes.get(self.at..self.at + N).ok_or(refuse(MALFORMED))?;
        self.at += N;
        Ok(a.try_into().unwrap())
    }
    /// §5.1 steps 3 and 4.
    fn finish(&self) -> Result<(), Refusal> {
        if self.at != self.bytes.len() {
            return Err(refuse(TRAILING));
        }
        if !self.canonical {
            return Err(refuse(NON_CANONICAL));
        }
        Ok(())
    }
}

/// §5.11.
#[derive(Debug, Clone, PartialEq, Eq)]
struct VendorKey {
    serial: u32,
    signing: [u8; 32],
    key_agreement: [u8; 32],
    not_before: u64,
    not_after: u64,
    /// `encode(body)`: canonical, so the received bytes.
    body: Vec<u8>,
    signature: [u8; 64],
}

/// §5.1 steps 1–5 for a KeyUpdate body.
fn decode_key_update(body: &[u8]) -> Result<VendorKey, Refusal> {
    if body.len() > KEY_UPDATE_MAX {
        return Err(refuse(OVERSIZED));
    }
    let mut r = Reader { bytes: body, at: 0, canonical: true };
    let serial = r.varint(32)? as u32;
    let signing = r.array::<32>()?;
    let key_agreement = r.array::<32>()?;
    let not_before = r.varint(64)?;
    let not_after = r.varint(64)?;
    let body_len = r.at;
    let signature = r.array::<64>()?;
    r.finish()?;
    if not_after < not_before {
        return Err(Refusal { code: OUT_OF_RANGE, detail: RULE_VENDOR_KEY_VALIDITY });
    }
    Ok(VendorKey { serial, signing, key_agreement, not_before, not_after, body: body[..body_len].to_vec(), signature })
}

/// §5.9 (a Receipt, which life 4's device opens), decoded to check its bytes.
fn decode_receipt(body: &[u8]) -> Result<(u32, [u8; 32], u64), Refusal> {
    if body.len() > 47 {
        return Err(refuse(OVERSIZED));
    }
    let mut r = Reader { bytes: body, at: 0, canonical: true };
    let v = r.varint(32)? as u32;
    let digest = r.array::<32>()?;
    let at = r.varint(64)?;
    r.finish()?;
    Ok((v, digest, at))
}

/// §5.11: the certificate under `VCA.pub`, then its signing key.
fn certificate_ok(vca: &[u8; 32], k: &VendorKey) -> bool {
    let mut msg = VENDOR_KEY_DST.to_vec();
    msg.extend_from_slice(&k.body);
    verify_strict(vca, &msg, &k.signature) && good_point(&k.signing)
}

// ---------------------------------------------------------------- §4.4, §8.7

/// A vendor key pair as the device holds it (serial 0: provisioned).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pair {
    serial: u32,
    signing: [u8; 32],
    key_agreement: [u8; 32],
}

/// The device's side of §4.4 and §8.7.
struct Device {
    id: [u8; 8],
    vca: Option<[u8; 32]>,
    provisioned: Pair,
    latest: Option<Pair>,
    epoch_key: Pair,
    epoch: u32,
    k_vd: [u8; 32],
    /// §4.5, as a plain set plus the highest.
    accepted: Vec<u64>,
    now: u64,
}

/// What the device did with an opened message.
#[derive(Debug, PartialEq, Eq)]
enum Opened {
    Receipt { version: u32, received_at: u64 },
    Learned(u32),
    Duplicate,
}

impl Device {
    /// §8.7: opening an epoch uses `latest` and makes it the epoch key.
    fn open_epoch(&mut self, n: u32, e: &[u8; 32]) -> ([u8; 32], [u8; 32], [u8; 32]) {
        let pair = self.latest.clone().unwrap_or_else(|| self.provisioned.clone());
        let keys = epoch_keys(&self.id, n, e, &pair.key_agreement);
        self.epoch = n;
        self.k_vd = keys.1;
        self.epoch_key = pair;
        keys
    }

    fn open(&mut self, env: &[u8]) -> Result<Opened, Refusal> {
        let h = parse_envelope(env)?;
        // Step 4.
        if !h.vendor_to_device() {
            return Err(refuse(WRONG_DIRECTION));
        }
        if h.device != self.id {
            return Err(refuse(WRONG_DEVICE));
        }
        // Step 5 (§4.5).
        if let Some(&highest) = self.accepted.iter().max() {
            if h.counter <= highest && highest - h.counter >= 128 {
                return Err(refuse(TOO_OLD));
            }
            if self.accepted.contains(&h.counter) {
                return Err(refuse(DUPLICATE));
            }
        }
        // §8.7 rule 1: after step 5, before step 6.
        let key_update = h.nibble() == 0xB;
        if key_update && self.vca.is_none() {
            return Err(refuse(NO_AUTHORITY));
        }
        // Step 6.
        if h.epoch != self.epoch {
            return Err(refuse(WRONG_EPOCH));
        }
        // Step 7.
        let plain = decrypt(env, &h, &self.k_vd).ok_or(refuse(UNAUTHENTIC))?;
        let (body, sig) = plain.split_at(plain.len() - 64);
        let sig: [u8; 64] = sig.try_into().unwrap();
        let mut signed = MESSAGE_DST.to_vec();
        signed.extend_from_slice(&env[..h.len]);
        signed.extend_from_slice(body);
        let opened = if key_update {
            // Step 8: decode, certificate, signer; step 9.
            let k = decode_key_update(body)?;
            if !certificate_ok(&self.vca.unwrap(), &k) {
                return Err(refuse(BAD_CERTIFICATE));
            }
            if !verify_strict(&k.signing, &signed, &sig) {
                return Err(refuse(UNAUTHENTIC));
            }
            // §8.7 rule 2.
            if k.not_before > self.now.saturating_add(CLOCK_SKEW) || self.now > k.not_after {
                return Err(refuse(VENDOR_KEY_INVALID));
            }
            // §8.7 rule 3.
            let held = self.latest.clone().unwrap_or_else(|| self.provisioned.clone());
            let got = Pair { serial: k.serial, signing: k.signing, key_agreement: k.key_agreement };
            if got.serial < held.serial || (got.serial == held.serial && got != held) {
                return Err(Refusal { code: VENDOR_KEY_ROLLBACK, detail: 0 });
            }
            if got == held {
                Opened::Duplicate
            } else {
                self.latest = Some(got);
                Opened::Learned(k.serial)
            }
        } else {
            assert_eq!(h.nibble(), 0x9, "this opener reads Receipts and KeyUpdates only");
            // Step 8: the epoch key's VS; step 9; step 10.
            if !verify_strict(&self.epoch_key.signing, &signed, &sig) {
                return Err(refuse(UNAUTHENTIC));
            }
            let (version, _, received_at) = decode_receipt(body)?;
            Opened::Receipt { version, received_at }
        };
        // Step 11.
        self.accepted.push(h.counter);
        Ok(opened)
    }
}

/// The vendor's pairs of `valid.json` by serial.
fn vendor_pairs(keys: &Value) -> Vec<(Pair, [u8; 32], [u8; 32])> {
    keys["vendor_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                Pair {
                    serial: k["serial"].as_u64().unwrap() as u32,
                    signing: hex32(&k["signing_public"]),
                    key_agreement: hex32(&k["key_agreement_public"]),
                },
                hex32(&k["signing_seed"]),
                hex32(&k["key_agreement_secret"]),
            )
        })
        .collect()
}

fn new_device(keys: &Value) -> Device {
    let pairs = vendor_pairs(keys);
    let provisioned = pairs.iter().find(|p| p.0.serial == 0).unwrap().0.clone();
    assert_eq!(provisioned.signing, hex32(&keys["vendor_signing_public"]));
    assert_eq!(provisioned.key_agreement, hex32(&keys["vendor_key_agreement_public"]));
    // §2: a secret's public key is the base-point multiple.
    for (p, seed, vx) in &pairs {
        assert_eq!(SigningKey::from_bytes(seed).verifying_key().to_bytes(), p.signing);
        assert_eq!(x25519_dalek::x25519(*vx, x25519_dalek::X25519_BASEPOINT_BYTES), p.key_agreement);
    }
    Device {
        id: hex::decode(keys["device_id"].as_str().unwrap()).unwrap().try_into().unwrap(),
        vca: Some(hex32(&keys["certificate_authority_public"])),
        epoch_key: provisioned.clone(),
        provisioned,
        latest: None,
        epoch: 0,
        k_vd: [0; 32],
        accepted: Vec::new(),
        now: 0,
    }
}

fn sealed(m: &Value) -> Vec<u8> {
    hex::decode(m["sealed_hex"].as_str().unwrap()).unwrap()
}

/// Checks a vector's header, body and signature bytes by sealing them again
/// by hand with `signer` (Ed25519 is deterministic).
fn reseal(m: &Value, signer: &SigningKey, key: &[u8; 32]) {
    let header = hex::decode(m["header_hex"].as_str().unwrap()).unwrap();
    let body = hex::decode(m["body_hex"].as_str().unwrap()).unwrap();
    let (out, sig) = seal(&header, m["counter"].as_u64().unwrap(), &body, signer, key);
    assert_eq!(hex::encode(sig), m["signature_hex"].as_str().unwrap(), "{}", m["name"]);
    assert_eq!(out, sealed(m), "{}", m["name"]);
    assert_eq!(out.len() - body.len(), m["body_overhead"].as_u64().unwrap() as usize);
}

/// The KeyUpdate body JSON (§10, serde's rendering) against the decoded bytes.
fn check_key_update_json(m: &Value, k: &VendorKey) {
    let c = &m["body"]["certificate"];
    let b = &c["body"];
    assert_eq!(b["serial"].as_u64().unwrap(), u64::from(k.serial));
    assert_eq!(b["not_before"].as_u64().unwrap(), k.not_before);
    assert_eq!(b["not_after"].as_u64().unwrap(), k.not_after);
    let bytes = |v: &Value| v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u8).collect::<Vec<u8>>();
    assert_eq!(bytes(&b["signing"]), k.signing);
    assert_eq!(bytes(&b["key_agreement"]), k.key_agreement);
    assert_eq!(bytes(&c["signature"]), k.signature);
}

#[test]
fn life_4_rotates_the_vendor_key() {
    let valid = load("valid.json");
    let keys = &valid["keys"];
    let pairs = vendor_pairs(keys);
    let life: Vec<&Value> = valid["messages"].as_array().unwrap().iter().filter(|m| m["life"] == 4).collect();
    let names: Vec<&str> = life.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["register_rotation", "receipt_rotation", "key_update", "usage_new_key", "receipt_new_key"]);
    let mut device = new_device(keys);
    let vs = |serial: u32| SigningKey::from_bytes(&pairs.iter().find(|p| p.0.serial == serial).unwrap().1);
    let ds = SigningKey::from_bytes(&hex32(&keys["device_signing_seed"]));

    // Register: the device opens epoch 1 with the provisioned pair.
    let register = life[0];
    let (k_dv, k_vd, e_pub) = device.open_epoch(1, &hex32(&register["epoch_ephemeral_secret"]));
    assert_eq!(e_pub, hex32(&register["epoch_ephemeral_public"]));
    assert_eq!(k_dv, hex32(&register["key_device_to_vendor"]));
    assert_eq!(k_vd, hex32(&register["key_vendor_to_device"]));
    let h = parse_envelope(&sealed(register)).unwrap();
    assert_eq!((h.byte0, h.epoch, h.counter, h.ephemeral), (0x31, 1, 0, Some(e_pub)));
    reseal(register, &ds, &k_dv);
    assert_eq!(register["vendor_key"], 0);

    // Its Receipt, signed by VS0; the device's time is then the receipt's.
    let receipt = life[1];
    let Opened::Receipt { version: 1, received_at } = device.open(&sealed(receipt)).unwrap() else { panic!() };
    device.now = received_at;
    reseal(receipt, &vs(0), &k_vd);

    // The KeyUpdate: certified by VCA, sealed under epoch 1, signed by VS1.
    let update = life[2];
    let env = sealed(update);
    let h = parse_envelope(&env).unwrap();
    assert_eq!((h.byte0, h.epoch, h.counter, h.ephemeral), (0x2B, 1, 1, None));
    let plain = decrypt(&env, &h, &k_vd).unwrap();
    let k = decode_key_update(&plain[..plain.len() - 64]).unwrap();
    assert_eq!(hex::encode(&plain[..plain.len() - 64]), update["body_hex"].as_str().unwrap());
    check_key_update_json(update, &k);
    assert_eq!(k.serial, 1);
    assert_eq!((k.signing, k.key_agreement), (pairs[1].0.signing, pairs[1].0.key_agreement));
    assert!(k.body.len() <= 89, "§5.11: body at most 89 bytes");
    reseal(update, &vs(1), &k_vd);
    // Not signed by the key the device holds (§5.11).
    let (other, _) = seal(&env[..h.len], h.counter, &plain[..plain.len() - 64], &vs(0), &k_vd);
    let mut d2 = new_device(keys);
    d2.open_epoch(1, &hex32(&register["epoch_ephemeral_secret"]));
    d2.now = received_at;
    assert_eq!(d2.open(&other), Err(refuse(UNAUTHENTIC)));
    // §8.7 rule 1: a device without VCA.pub cannot learn keys.
    d2.vca = None;
    assert_eq!(d2.open(&env), Err(refuse(NO_AUTHORITY)));
    // §8.7 rule 2: validity at the device's time.
    d2.vca = device.vca;
    d2.now = k.not_before - CLOCK_SKEW - 1;
    assert_eq!(d2.open(&env), Err(refuse(VENDOR_KEY_INVALID)));
    d2.now = k.not_after + 1;
    assert_eq!(d2.open(&env), Err(refuse(VENDOR_KEY_INVALID)));
    d2.now = k.not_before - CLOCK_SKEW;
    assert_eq!(d2.open(&env), Ok(Opened::Learned(1)));

    assert_eq!(device.open(&env), Ok(Opened::Learned(1)));
    // §8.7: a key learned during an epoch is not used for that epoch.
    assert_eq!(device.epoch_key.serial, 0);

    // The Usage opens epoch 2 with VX1, the learned key.
    let usage = life[3];
    assert_eq!(usage["vendor_key"], 1);
    let (k_dv2, k_vd2, e_pub2) = device.open_epoch(2, &hex32(&usage["epoch_ephemeral_secret"]));
    assert_eq!(
        (k_dv2, k_vd2, e_pub2),
        (
            hex32(&usage["key_device_to_vendor"]),
            hex32(&usage["key_vendor_to_device"]),
            hex32(&usage["epoch_ephemeral_public"])
        )
    );
    reseal(usage, &ds, &k_dv2);
    // The vendor's side (§9.2): pairs newest first; the first whose keys
    // decrypt the opener is the one the device holds.
    let env = sealed(usage);
    let h = parse_envelope(&env).unwrap();
    let mut live: Vec<_> = pairs.iter().filter(|p| p.0.serial <= 1).collect();
    live.sort_by_key(|p| std::cmp::Reverse(p.0.serial));
    let opened_with = live
        .iter()
        .find(|p| {
            let shared = x25519_dalek::x25519(p.2, h.ephemeral.unwrap());
            assert_ne!(shared, [0; 32]);
            let mut info = b"spime/v1 keys\0".to_vec();
            info.extend_from_slice(&h.device);
            info.extend_from_slice(&h.epoch.to_be_bytes());
            info.extend_from_slice(&h.ephemeral.unwrap());
            info.extend_from_slice(&p.0.key_agreement);
            let mut okm = [0u8; 64];
            hkdf::Hkdf::<Sha256>::new(Some(b"spime/v1 session"), &shared).expand(&info, &mut okm).unwrap();
            decrypt(&env, &h, &okm[..32].try_into().unwrap()).is_some()
        })
        .unwrap();
    assert_eq!(opened_with.0.serial, 1);

    // Its Receipt is signed by VS1, the epoch key; VS0 no longer verifies.
    let receipt2 = life[4];
    reseal(receipt2, &vs(1), &k_vd2);
    let env = sealed(receipt2);
    let body = hex::decode(receipt2["body_hex"].as_str().unwrap()).unwrap();
    let h = parse_envelope(&env).unwrap();
    let (forged, _) = seal(&env[..h.len], h.counter, &body, &vs(0), &k_vd2);
    assert_eq!(device.open(&forged), Err(refuse(UNAUTHENTIC)));
    assert_eq!(device.open(&env), Ok(Opened::Receipt { version: 1, received_at }));
    assert_eq!(device.open(&env), Err(refuse(DUPLICATE)));

    // §8.7 rule 3: the same KeyUpdate again (a new counter) is a duplicate;
    // serial 0 again (the provisioned pair, re-certified) is a rollback.
    let k_body = hex::decode(update["body_hex"].as_str().unwrap()).unwrap();
    let again = [
        0x2B,
        h.device[0],
        h.device[1],
        h.device[2],
        h.device[3],
        h.device[4],
        h.device[5],
        h.device[6],
        h.device[7],
        2,
        3,
    ];
    let (dup, _) = seal(&again, 3, &k_body, &vs(1), &k_vd2);
    assert_eq!(device.open(&dup), Ok(Opened::Duplicate));
    let vca = SigningKey::from_bytes(&pairs[0].1);
    let mut body0 = vec![0u8];
    body0.extend_from_slice(&pairs[0].0.signing);
    body0.extend_from_slice(&pairs[0].0.key_agreement);
    body0.extend_from_slice(&[0, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F]);
    let mut msg = VENDOR_KEY_DST.to_vec();
    msg.extend_from_slice(&body0);
    let cert_sig = vca.sign(&msg).to_bytes();
    body0.extend_from_slice(&cert_sig);
    let mut hdr = again;
    hdr[10] = 4;
    let (rollback, _) = seal(&hdr, 4, &body0, &vs(0), &k_vd2);
    assert_eq!(device.open(&rollback), Err(Refusal { code: VENDOR_KEY_ROLLBACK, detail: 0 }));
    // A refusal records nothing: the counter is still free.
    assert!(!device.accepted.contains(&4));
}

#[test]
fn the_longest_key_update() {
    let valid = load("valid.json");
    let keys = &valid["keys"];
    let pairs = vendor_pairs(keys);
    let m = valid["messages"].as_array().unwrap().iter().find(|m| m["name"] == "key_update_max").unwrap();
    assert_eq!((m["life"].as_u64(), m["kind"].as_u64()), (Some(2), Some(0x83)));
    let device: [u8; 8] = hex::decode(keys["device_id"].as_str().unwrap()).unwrap().try_into().unwrap();
    let epoch = m["epoch"].as_u64().unwrap() as u32;
    // The epoch's keys, derived again from the device's secret and VX0
    // (`vendor_key` 0 opened it).
    assert_eq!(m["vendor_key"], 0);
    let (_, k_vd, _) = epoch_keys(&device, epoch, &hex32(&m["epoch_ephemeral_secret"]), &pairs[0].0.key_agreement);
    assert_eq!(k_vd, hex32(&m["key_vendor_to_device"]));
    let env = sealed(m);
    let h = parse_envelope(&env).unwrap();
    // §4.1: the longest vendor-to-device header: 5-byte epoch, 10-byte counter.
    assert_eq!((h.len, h.epoch, h.counter), (24, 1 << 28, (1 << 63) + 2));
    assert_eq!(hex::encode(nonce(true, h.counter)), m["nonce"].as_str().unwrap());
    let plain = decrypt(&env, &h, &k_vd).unwrap();
    let body = &plain[..plain.len() - 64];
    // §5.11: the longest body is 153 bytes, a sealed KeyUpdate at most 257.
    assert_eq!(body.len(), KEY_UPDATE_MAX);
    assert_eq!(env.len(), 257);
    let k = decode_key_update(body).unwrap();
    check_key_update_json(m, &k);
    assert_eq!((k.serial, k.not_before, k.not_after), (u32::MAX, 1 << 63, u64::MAX));
    assert_eq!(k.body.len(), 89);
    let (p, seed, _) = pairs.iter().find(|p| p.0.serial == u32::MAX).unwrap();
    assert_eq!((k.signing, k.key_agreement), (p.signing, p.key_agreement));
    assert!(certificate_ok(&hex32(&keys["certificate_authority_public"]), &k));
    let mut signed = MESSAGE_DST.to_vec();
    signed.extend_from_slice(&env[..h.len]);
    signed.extend_from_slice(body);
    assert!(verify_strict(&k.signing, &signed, plain[plain.len() - 64..].try_into().unwrap()));
    // Not under the key that opened the epoch.
    assert!(!verify_strict(&pairs[0].0.signing, &signed, plain[plain.len() - 64..].try_into().unwrap()));
    reseal(m, &SigningKey::from_bytes(seed), &k_vd);
}

#[test]
fn invalid_key_updates_are_refused_with_specs_code() {
    let valid = load("valid.json");
    let invalid = load("invalid.json");
    let keys = &valid["keys"];
    // §10 invalid.json: the device opener holds epoch 1 of life 1.
    let register = valid["messages"].as_array().unwrap().iter().find(|m| m["life"] == 1 && m["kind"] == 1).unwrap();
    assert_eq!(register["epoch"], 1);
    let cases: Vec<&Value> = invalid["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["opened_by"] == "device" && m["sealed_hex"].as_str().unwrap().starts_with("2b"))
        .collect();
    assert!(cases.len() >= 8, "every KeyUpdate rule of §10 has a vector");
    for m in cases {
        let mut device = new_device(keys);
        device.open_epoch(1, &hex32(&register["epoch_ephemeral_secret"]));
        // Validity at the device's time is not a core-opener rule (§10).
        device.now = 1 << 40;
        for before in m["accepted_before"].as_array().unwrap() {
            device.open(&hex::decode(before.as_str().unwrap()).unwrap()).unwrap();
        }
        let got = device.open(&sealed(m));
        let want = Refusal { code: m["code"].as_u64().unwrap() as u16, detail: m["detail"].as_u64().unwrap_or(0) };
        assert_eq!(got, Err(want), "{}: {}", m["name"], m["rule"]);
    }
}
