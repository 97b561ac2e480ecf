//! Test vectors: `tests/vectors/*.json` pin every byte of every message
//! kind, in both directions, and one invalid message per rejection rule.
//!
//! The vectors are built here by a small *reference* sealer written from
//! SPEC.md with the crypto crates alone (not the crate's `seal` module);
//! the tests check that the crate seals exactly the same bytes and opens
//! them to exactly the same values, and refuses every invalid vector with
//! the error the vector names. `SPIME_WRITE_VECTORS=1 cargo test --test
//! vectors` rewrites the files after a deliberate format change.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::std_instead_of_core,
    clippy::cast_possible_truncation,
    clippy::type_complexity
)]

mod common;

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde_json::{Value, json};
use sha2::Sha256;
use spime::codec;
use spime::error::OpenError;
use spime::message::*;
use spime::seal::replay::ReplayWindow;
use spime::seal::{self, Envelope, Seal, SessionKeys};
use spime::wire::{Direction, Kind};

use common::*;

// ---------------------------------------------------------------- reference

const DST: &[u8] = b"spime/v1 message\0";

/// SPEC §4.1: byte 0 = version (3 bits) | ephemeral flag | direction | kind (3 bits).
fn ref_first(kind: u8, eph: bool) -> u8 {
    (1 << 5) | if eph { 0x10 } else { 0 } | if kind & 0x80 != 0 { 0x08 } else { 0 } | (kind & 0x07)
}

/// SPEC §4.1: unsigned LEB128, shortest form.
fn ref_varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let low = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(low);
            return out;
        }
        out.push(low | 0x80);
    }
}

/// A header with byte 0 given as is (invalid vectors set odd bits).
fn ref_header_raw(first: u8, epoch: u32, counter: u64, eph: Option<[u8; 32]>) -> Vec<u8> {
    let mut h = vec![first];
    h.extend_from_slice(&DEVICE_ID.0);
    h.extend_from_slice(&ref_varint(u64::from(epoch)));
    h.extend_from_slice(&ref_varint(counter));
    if let Some(e) = eph {
        h.extend_from_slice(&e);
    }
    h
}

fn ref_header(kind: u8, epoch: u32, counter: u64, eph: Option<[u8; 32]>) -> Vec<u8> {
    ref_header_raw(ref_first(kind, eph.is_some()), epoch, counter, eph)
}

/// SPEC §3: X25519, HKDF-SHA256.
fn ref_keys(eph_secret: &[u8; 32], epoch: u32) -> ([u8; 32], [u8; 32], [u8; 32]) {
    let eph_pub = x25519_dalek::x25519(*eph_secret, x25519_dalek::X25519_BASEPOINT_BYTES);
    let vendor_kx_pub = x25519_dalek::x25519(VENDOR_KX_SECRET, x25519_dalek::X25519_BASEPOINT_BYTES);
    let shared = x25519_dalek::x25519(*eph_secret, vendor_kx_pub);
    let mut info = b"spime/v1 keys\0".to_vec();
    info.extend_from_slice(&DEVICE_ID.0);
    info.extend_from_slice(&epoch.to_be_bytes());
    info.extend_from_slice(&eph_pub);
    info.extend_from_slice(&vendor_kx_pub);
    let mut okm = [0u8; 64];
    hkdf::Hkdf::<Sha256>::new(Some(b"spime/v1 session"), &shared).expand(&info, &mut okm).unwrap();
    (okm[..32].try_into().unwrap(), okm[32..].try_into().unwrap(), eph_pub)
}

/// SPEC §4.2: the nonce is the direction byte, three zero bytes and the counter (u64 BE).
fn ref_nonce(vendor_to_device: bool, counter: u64) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[0] = u8::from(vendor_to_device);
    nonce[4..].copy_from_slice(&counter.to_be_bytes());
    nonce
}

/// SPEC §4: sign `DST || header || body`, then encrypt `body || sig` with the header as AAD.
fn ref_seal(header: &[u8], counter: u64, body: &[u8], signer: &SigningKey, key: &[u8; 32]) -> (Vec<u8>, [u8; 64]) {
    let mut signed = DST.to_vec();
    signed.extend_from_slice(header);
    signed.extend_from_slice(body);
    let sig = signer.sign(&signed).to_bytes();
    let nonce = ref_nonce(header[0] & 0x08 != 0, counter);
    let mut buf = body.to_vec();
    buf.extend_from_slice(&sig);
    let tag = ChaCha20Poly1305::new(key.into())
        .encrypt_inout_detached(&Nonce::from(nonce), header, buf.as_mut_slice().into())
        .unwrap();
    let mut out = header.to_vec();
    out.extend_from_slice(&buf);
    out.extend_from_slice(&tag);
    (out, sig)
}

fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    let n = codec::encode(v, &mut buf).unwrap().len();
    buf.truncate(n);
    buf
}

// ---------------------------------------------------------------- valid vectors

struct Spec<'a> {
    name: &'a str,
    kind: Kind,
    epoch: u32,
    counter: u64,
    eph_secret: Option<[u8; 32]>,
    body: Vec<u8>,
    body_json: Value,
}

fn spec<B: Body>(
    name: &'static str,
    counter: u64,
    epoch: u32,
    eph_secret: Option<[u8; 32]>,
    body: &B,
) -> Spec<'static> {
    Spec {
        name,
        kind: B::KIND,
        epoch,
        counter,
        eph_secret,
        body: enc(body),
        body_json: serde_json::to_value(body).unwrap(),
    }
}

const EPHEMERAL_SECRET_2: [u8; 32] = [0x55; 32];

fn valid_specs() -> Vec<Spec<'static>> {
    vec![
        spec("register", 0, EPOCH, Some(EPHEMERAL_SECRET), &register()),
        spec("usage", 1, EPOCH, None, &usage()),
        spec("fault", 2, EPOCH, None, &fault()),
        spec("consent", 3, EPOCH, None, &consent_update()),
        spec("fault_opening_epoch_2", 17, 2, Some(EPHEMERAL_SECRET_2), &fault()),
        spec("transfer", 18, 2, None, &transfer()),
        spec("decommission", 19, 2, None, &decommission()),
        spec("receipt", 0, EPOCH, None, &receipt()),
        spec("notice", 1, EPOCH, None, &notice()),
    ]
}

fn hexs(b: &[u8]) -> String {
    hex::encode(b)
}

fn keys_json() -> Value {
    let v = vendor();
    let p = v.public();
    json!({
        "vendor_signing_seed": hexs(&VENDOR_SIGNING_SEED),
        "vendor_signing_public": hexs(p.signing.as_bytes()),
        "vendor_key_agreement_secret": hexs(&VENDOR_KX_SECRET),
        "vendor_key_agreement_public": hexs(&p.key_agreement),
        "device_id": hexs(&DEVICE_ID.0),
        "device_signing_seed": hexs(&DEVICE_SEED),
        "device_signing_public": hexs(device().public().as_bytes()),
    })
}

fn epoch_keys(epoch: u32) -> ([u8; 32], [u8; 32], [u8; 32], [u8; 32]) {
    let secret = if epoch == EPOCH { EPHEMERAL_SECRET } else { EPHEMERAL_SECRET_2 };
    let (d2v, v2d, eph_pub) = ref_keys(&secret, epoch);
    (d2v, v2d, eph_pub, secret)
}

fn build_valid() -> Value {
    let mut out = Vec::new();
    for s in valid_specs() {
        let (d2v, v2d, eph_pub, eph_secret) = epoch_keys(s.epoch);
        let dir = s.kind.direction();
        let eph = s.eph_secret.map(|_| eph_pub);
        let header = ref_header(s.kind.to_byte(), s.epoch, s.counter, eph);
        let (signer, key) = match dir {
            Direction::DeviceToVendor => (SigningKey::from_bytes(&DEVICE_SEED), d2v),
            Direction::VendorToDevice => (SigningKey::from_bytes(&VENDOR_SIGNING_SEED), v2d),
        };
        let (sealed, sig) = ref_seal(&header, s.counter, &s.body, &signer, &key);
        let nonce = ref_nonce(dir == Direction::VendorToDevice, s.counter);
        out.push(json!({
            "name": s.name,
            "kind": s.kind.to_byte(),
            "direction": match dir { Direction::DeviceToVendor => "device_to_vendor", Direction::VendorToDevice => "vendor_to_device" },
            "epoch": s.epoch,
            "counter": s.counter,
            "epoch_ephemeral_secret": hexs(&eph_secret),
            "epoch_ephemeral_public": hexs(&eph_pub),
            "ephemeral_in_header": eph.is_some(),
            "key_device_to_vendor": hexs(&d2v),
            "key_vendor_to_device": hexs(&v2d),
            "nonce": hexs(&nonce),
            "body": s.body_json,
            "body_hex": hexs(&s.body),
            "header_hex": hexs(&header),
            "signature_hex": hexs(&sig),
            "sealed_hex": hexs(&sealed),
            "body_overhead": sealed.len() - s.body.len(),
        }));
    }
    json!({
        "description": "Valid spime v1 messages. Sealed by the sender named by direction; see SPEC.md section 10.",
        "keys": keys_json(),
        "messages": out,
    })
}

// ---------------------------------------------------------------- a minimal opener (both roles)

/// The vendor side of SPEC §9 reduced to what the core defines: epoch
/// opening, the certificate, signatures, the replay window.
struct VendorView {
    device_key: Option<VerifyingKey>,
    keys: Option<SessionKeys>,
    window: ReplayWindow,
}

impl VendorView {
    fn new() -> Self {
        VendorView { device_key: None, keys: None, window: ReplayWindow::new() }
    }

    fn open(&mut self, bytes: &[u8]) -> Result<Value, OpenError> {
        let env = Envelope::parse(bytes)?;
        if env.header.kind.direction() != Direction::DeviceToVendor {
            return Err(OpenError::WrongDirection(env.header.kind));
        }
        self.window.check(env.header.counter)?;
        let keys = match (env.header.ephemeral, &self.keys) {
            (Some(eph), cur) if cur.as_ref().is_none_or(|k| env.header.epoch > k.epoch) => {
                vendor().accept_epoch(&env.header.device, env.header.epoch, &eph)?
            }
            (_, Some(k)) if k.epoch == env.header.epoch => k.clone(),
            (_, Some(k)) => return Err(OpenError::WrongEpoch { expected: k.epoch, got: env.header.epoch }),
            (_, None) => return Err(OpenError::Unauthentic),
        };
        let mut buf = vec![0u8; env.plaintext_len()];
        let pt = env.decrypt(&keys, &mut buf)?;
        let signer = if env.header.kind == Kind::REGISTER {
            let reg: Register = codec::decode(pt.body_bytes())?;
            if reg.certificate.body.device != env.header.device {
                return Err(OpenError::WrongDevice);
            }
            reg.certificate.verify(&vendor().public().signing)?
        } else {
            self.device_key.ok_or(OpenError::Unauthentic)?
        };
        let v = pt.verify(&signer)?;
        let value = decode_json(&v)?;
        self.window.accept(env.header.counter)?;
        self.device_key = Some(signer);
        self.keys = Some(keys);
        Ok(value)
    }
}

fn decode_json(v: &seal::Verified<'_, '_>) -> Result<Value, OpenError> {
    Ok(match v.kind() {
        Kind::REGISTER => serde_json::to_value(v.decode::<Register>()?),
        Kind::USAGE => serde_json::to_value(v.decode::<Usage>()?),
        Kind::FAULT => serde_json::to_value(v.decode::<Fault>()?),
        Kind::CONSENT => serde_json::to_value(v.decode::<ConsentUpdate>()?),
        Kind::TRANSFER => serde_json::to_value(v.decode::<Transfer>()?),
        Kind::DECOMMISSION => serde_json::to_value(v.decode::<Decommission>()?),
        Kind::RECEIPT => serde_json::to_value(v.decode::<Receipt>()?),
        Kind::NOTICE => serde_json::to_value(v.decode::<Notice>()?),
        _ => unreachable!(),
    }
    .unwrap())
}

/// The device side: opens vendor messages under its current epoch keys.
struct DeviceView {
    keys: SessionKeys,
    window: ReplayWindow,
}

impl DeviceView {
    fn new() -> Self {
        DeviceView { keys: session().0, window: ReplayWindow::new() }
    }

    fn open(&mut self, bytes: &[u8]) -> Result<Value, OpenError> {
        let env = Envelope::parse(bytes)?;
        if env.header.kind.direction() != Direction::VendorToDevice {
            return Err(OpenError::WrongDirection(env.header.kind));
        }
        if env.header.device != DEVICE_ID {
            return Err(OpenError::WrongDevice);
        }
        self.window.check(env.header.counter)?;
        let mut buf = vec![0u8; env.plaintext_len()];
        let v = env.decrypt(&self.keys, &mut buf)?.verify(&vendor().public().signing)?;
        let value = decode_json(&v)?;
        self.window.accept(env.header.counter)?;
        Ok(value)
    }
}

// ---------------------------------------------------------------- invalid vectors

fn sealed_of(name: &str) -> Vec<u8> {
    let valid = build_valid();
    let m = valid["messages"].as_array().unwrap().iter().find(|m| m["name"] == name).unwrap();
    hex::decode(m["sealed_hex"].as_str().unwrap()).unwrap()
}

/// Seals raw body bytes as the device under epoch 1, with a hand-made header.
fn dev_seal(first: u8, counter: u64, eph: Option<[u8; 32]>, body: &[u8]) -> Vec<u8> {
    let (d2v, _, _, _) = epoch_keys(EPOCH);
    ref_seal(&ref_header_raw(first, EPOCH, counter, eph), counter, body, &SigningKey::from_bytes(&DEVICE_SEED), &d2v).0
}

/// Byte 0 of a Usage (device to vendor, no ephemeral key).
const USAGE_FIRST: u8 = 0x22;

fn build_invalid() -> Value {
    let (reg_body, usage_body, notice_body, receipt_body) =
        (enc(&register()), enc(&usage()), enc(&notice()), enc(&receipt()));
    let bad_cert_body = {
        let mut r = register();
        r.certificate.signature = bytes64(0x01);
        enc(&r)
    };
    let register = sealed_of("register");
    let usage = sealed_of("usage");
    let notice = sealed_of("notice");
    let (d2v, v2d, eph_pub, _) = epoch_keys(EPOCH);
    let mut cases: Vec<(&str, &str, &str, Vec<Vec<u8>>, Vec<u8>, &str)> = Vec::new();
    let mut add = |name, rule, opener, before: Vec<Vec<u8>>, sealed: Vec<u8>, error| {
        cases.push((name, rule, opener, before, sealed, error));
    };
    let mut v2 = usage.clone();
    v2[0] = (2 << 5) | (v2[0] & 0x1f);
    add(
        "unsupported_version",
        "the version byte is not 1",
        "vendor",
        vec![register.clone()],
        v2,
        "Decode(UnsupportedVersion(2))",
    );
    let mut k7 = usage.clone();
    k7[0] = (k7[0] & 0xf0) | 7;
    add(
        "unknown_kind",
        "kind nibble 0x7 is not defined",
        "vendor",
        vec![register.clone()],
        k7,
        "Decode(UnknownKind(7))",
    );
    add(
        "register_without_ephemeral",
        "Register always carries an ephemeral key",
        "vendor",
        vec![],
        dev_seal(0x21, 0, None, &reg_body),
        "Decode(InvalidFlags(33))",
    );
    let (receipt_eph, _) = ref_seal(
        &ref_header(0x81, EPOCH, 5, Some(eph_pub)),
        5,
        &receipt_body,
        &SigningKey::from_bytes(&VENDOR_SIGNING_SEED),
        &v2d,
    );
    add(
        "vendor_kind_with_ephemeral",
        "vendor-to-device kinds never carry an ephemeral key",
        "device",
        vec![],
        receipt_eph,
        "Decode(InvalidFlags(57))",
    );
    add(
        "truncated",
        "shorter than header + signature + tag",
        "vendor",
        vec![register.clone()],
        usage[..11 + 79].to_vec(),
        "Decode(Truncated { needed: 91, have: 90 })",
    );
    add(
        "oversized",
        "longer than the longest envelope of any kind",
        "vendor",
        vec![register.clone()],
        {
            let mut o = usage.clone();
            o.resize(MAX_SEALED_LEN + 1, 0);
            o
        },
        Box::leak(
            format!("Decode(Oversized {{ len: {}, max: {} }})", MAX_SEALED_LEN + 1, MAX_SEALED_LEN).into_boxed_str(),
        ),
    );
    let mut hc = usage.clone();
    hc[10] ^= 2; // the one-byte counter varint: 1 becomes 3
    add(
        "header_counter_changed",
        "the header is AEAD associated data",
        "vendor",
        vec![register.clone()],
        hc,
        "Unauthentic",
    );
    let mut hk = usage.clone();
    hk[0] = (hk[0] & 0xf0) | 0x03;
    add(
        "kind_relabelled",
        "the kind is AEAD associated data and signed",
        "vendor",
        vec![register.clone()],
        hk,
        "Unauthentic",
    );
    let mut hd = usage.clone();
    hd[5] ^= 0x80;
    add(
        "device_relabelled",
        "the device id is AEAD associated data and signed",
        "vendor",
        vec![register.clone()],
        hd,
        "Unauthentic",
    );
    let mut ct = usage.clone();
    ct[40] ^= 0x04;
    add("ciphertext_bit_flipped", "ciphertext is authenticated", "vendor", vec![register.clone()], ct, "Unauthentic");
    let mut tg = usage.clone();
    let last = tg.len() - 1;
    tg[last] ^= 0x80;
    add("tag_bit_flipped", "the Poly1305 tag must verify", "vendor", vec![register.clone()], tg, "Unauthentic");
    let other = SigningKey::from_bytes(&[0x66; 32]);
    let (forged, _) = ref_seal(&ref_header(0x02, EPOCH, 1, None), 1, &usage_body, &other, &d2v);
    add(
        "signed_by_other_key",
        "the signature must verify under the certified device key",
        "vendor",
        vec![register.clone()],
        forged,
        "Unauthentic",
    );
    let mut trailing = usage_body.clone();
    trailing.push(0);
    add(
        "trailing_byte_in_body",
        "a body is exactly one value",
        "vendor",
        vec![register.clone()],
        dev_seal(USAGE_FIRST, 1, None, &trailing),
        "Decode(TrailingBytes)",
    );
    // usage body starts with purpose = 3; encode it as the two-byte varint 0x83 0x00.
    let mut nc = vec![0x83, 0x00];
    nc.extend_from_slice(&usage_body[1..]);
    add(
        "noncanonical_varint",
        "every integer uses its shortest varint",
        "vendor",
        vec![register.clone()],
        dev_seal(USAGE_FIRST, 1, None, &nc),
        "Decode(NonCanonical)",
    );
    let mut up = vec![0x0a];
    up.extend_from_slice(&usage_body[1..]);
    add(
        "unknown_purpose",
        "purpose ids 10..=0x7fff are reserved",
        "vendor",
        vec![register.clone()],
        dev_seal(USAGE_FIRST, 1, None, &up),
        "Decode(UnknownPurpose(10))",
    );
    add(
        "replayed",
        "each (device, counter) is accepted once",
        "vendor",
        vec![register.clone(), usage.clone()],
        usage.clone(),
        "Replay(Duplicate(1))",
    );
    add(
        "below_window",
        "a counter 128 or more below the highest accepted is refused",
        "vendor",
        vec![register.clone(), dev_seal(USAGE_FIRST, 200, None, &usage_body)],
        usage.clone(),
        "Replay(TooOld { counter: 1, highest: 200 })",
    );
    // A small-order X25519 point (order 8) as the ephemeral key.
    let small: [u8; 32] =
        hex::decode("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800").unwrap().try_into().unwrap();
    add(
        "small_order_ephemeral",
        "an all-zero X25519 shared secret is refused",
        "vendor",
        vec![],
        ref_seal(
            &ref_header(0x01, EPOCH, 0, Some(small)),
            0,
            &reg_body,
            &SigningKey::from_bytes(&DEVICE_SEED),
            &[0u8; 32],
        )
        .0,
        "WeakKey",
    );
    let (d2v_2, _, _, _) = epoch_keys(2);
    add(
        "unknown_epoch",
        "without an ephemeral key only the current epoch is accepted",
        "vendor",
        vec![register.clone()],
        ref_seal(&ref_header(0x02, 2, 1, None), 1, &usage_body, &SigningKey::from_bytes(&DEVICE_SEED), &d2v_2).0,
        "WrongEpoch { expected: 1, got: 2 }",
    );
    add(
        "certificate_not_from_vendor",
        "the device certificate must verify under the vendor signing key",
        "vendor",
        vec![],
        dev_seal(0x31, 0, Some(eph_pub), &bad_cert_body),
        "BadCertificate",
    );
    add(
        "device_kind_to_device",
        "a device opens only vendor-to-device kinds",
        "device",
        vec![],
        usage.clone(),
        "WrongDirection(usage(0x02))",
    );
    add(
        "vendor_kind_to_vendor",
        "a vendor opens only device-to-vendor kinds",
        "vendor",
        vec![],
        notice.clone(),
        "WrongDirection(notice(0x82))",
    );
    let (forged_notice, _) =
        ref_seal(&ref_header(0x82, EPOCH, 1, None), 1, &notice_body, &SigningKey::from_bytes(&DEVICE_SEED), &v2d);
    add(
        "notice_not_signed_by_vendor",
        "vendor messages verify under the vendor signing key",
        "device",
        vec![],
        forged_notice,
        "Unauthentic",
    );
    add(
        "notice_replayed",
        "the device accepts each vendor counter once",
        "device",
        vec![notice.clone()],
        notice.clone(),
        "Replay(Duplicate(1))",
    );

    let list: Vec<Value> = cases
        .into_iter()
        .map(|(name, rule, opener, before, sealed, error)| {
            json!({
                "name": name,
                "rule": rule,
                "opened_by": opener,
                "accepted_before": before.iter().map(|b| hexs(b)).collect::<Vec<_>>(),
                "sealed_hex": hexs(&sealed),
                "error": error,
            })
        })
        .collect();
    json!({
        "description": "Invalid spime v1 messages: each must be refused with the named error after the messages in accepted_before were accepted, in order, by the same opener. Keys as in valid.json; see SPEC.md section 10.",
        "messages": list,
    })
}

// ---------------------------------------------------------------- the tests

fn check_file(name: &str, value: &Value) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors").join(name);
    let text = serde_json::to_string_pretty(value).unwrap() + "\n";
    if std::env::var_os("SPIME_WRITE_VECTORS").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).expect("vector file present");
    assert!(
        on_disk == text,
        "{name} differs from what the reference builds; rerun with SPIME_WRITE_VECTORS=1 after a deliberate change"
    );
}

#[test]
fn vector_files_match_the_reference() {
    check_file("valid.json", &build_valid());
    check_file("invalid.json", &build_invalid());
}

fn load(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors").join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn crate_seals_exactly_the_vector_bytes() {
    let v = load("valid.json");
    for m in v["messages"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        let epoch = u32::try_from(m["epoch"].as_u64().unwrap()).unwrap();
        let secret: [u8; 32] = hex::decode(m["epoch_ephemeral_secret"].as_str().unwrap()).unwrap().try_into().unwrap();
        let (keys, eph) =
            spime::seal::keys::device_start_epoch_with(&secret, &DEVICE_ID, epoch, &vendor().public()).unwrap();
        assert_eq!(hexs(keys.device_to_vendor.as_bytes()), m["key_device_to_vendor"], "{name}");
        assert_eq!(hexs(keys.vendor_to_device.as_bytes()), m["key_vendor_to_device"], "{name}");
        let s = Seal {
            device: DEVICE_ID,
            epoch,
            counter: m["counter"].as_u64().unwrap(),
            ephemeral: m["ephemeral_in_header"].as_bool().unwrap().then_some(eph),
        };
        let mut out = vec![0u8; MAX_SEALED_LEN];
        let dev = device();
        let ven = vendor();
        let body = m["body"].clone();
        let n = match m["kind"].as_u64().unwrap() {
            0x01 => seal::seal(&mut out, &s, &serde_json::from_value::<Register>(body).unwrap(), dev.signing(), &keys),
            0x02 => seal::seal(&mut out, &s, &serde_json::from_value::<Usage>(body).unwrap(), dev.signing(), &keys),
            0x03 => seal::seal(&mut out, &s, &serde_json::from_value::<Fault>(body).unwrap(), dev.signing(), &keys),
            0x04 => {
                seal::seal(&mut out, &s, &serde_json::from_value::<ConsentUpdate>(body).unwrap(), dev.signing(), &keys)
            }
            0x05 => seal::seal(&mut out, &s, &serde_json::from_value::<Transfer>(body).unwrap(), dev.signing(), &keys),
            0x06 => {
                seal::seal(&mut out, &s, &serde_json::from_value::<Decommission>(body).unwrap(), dev.signing(), &keys)
            }
            0x81 => seal::seal_from_vendor(
                &mut out,
                DEVICE_ID,
                s.counter,
                &serde_json::from_value::<Receipt>(body).unwrap(),
                &ven,
                &keys,
            ),
            0x82 => seal::seal_from_vendor(
                &mut out,
                DEVICE_ID,
                s.counter,
                &serde_json::from_value::<Notice>(body).unwrap(),
                &ven,
                &keys,
            ),
            k => panic!("kind {k}"),
        }
        .unwrap();
        assert_eq!(hexs(&out[..n]), m["sealed_hex"], "{name}");
    }
}

#[test]
fn crate_opens_every_valid_vector_to_its_values() {
    let v = load("valid.json");
    let mut vendor_side = VendorView::new();
    let mut device_side = DeviceView::new();
    for m in v["messages"].as_array().unwrap() {
        let sealed = hex::decode(m["sealed_hex"].as_str().unwrap()).unwrap();
        let opened =
            if m["direction"] == "device_to_vendor" { vendor_side.open(&sealed) } else { device_side.open(&sealed) };
        assert_eq!(opened.unwrap(), m["body"], "{}", m["name"]);
        // The body bytes decode exactly, and the kept proof re-verifies without any session key.
        let header = hex::decode(m["header_hex"].as_str().unwrap()).unwrap();
        let body = hex::decode(m["body_hex"].as_str().unwrap()).unwrap();
        let sig: [u8; 64] = hex::decode(m["signature_hex"].as_str().unwrap()).unwrap().try_into().unwrap();
        let signer = if m["direction"] == "device_to_vendor" { device().public() } else { vendor().public().signing };
        seal::verify_signature(&signer, &header, &body, &sig).unwrap();
    }
}

#[test]
fn crate_refuses_every_invalid_vector_with_its_error() {
    let v = load("invalid.json");
    for m in v["messages"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        let device_opener = m["opened_by"] == "device";
        let mut vendor_side = VendorView::new();
        let mut device_side = DeviceView::new();
        let mut open = |b: &[u8]| if device_opener { device_side.open(b) } else { vendor_side.open(b) };
        for before in m["accepted_before"].as_array().unwrap() {
            open(&hex::decode(before.as_str().unwrap()).unwrap())
                .unwrap_or_else(|e| panic!("{name}: setup refused: {e:?}"));
        }
        let err = open(&hex::decode(m["sealed_hex"].as_str().unwrap()).unwrap()).expect_err(name);
        assert_eq!(format!("{err:?}"), m["error"].as_str().unwrap(), "{name}");
    }
}
