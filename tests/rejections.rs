//! Every rejection rule of the envelope, each with a test: bits flipped in
//! header, ciphertext, tag and signature; every strict prefix; a trailing
//! byte; relabelled device, kind, direction, epoch, version; replay (also
//! after a vendor restart); wrong keys; small-order keys; and a power cut
//! at every counter write over thousands of simulated reboots.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::std_instead_of_core,
    clippy::cast_possible_truncation
)]

mod common;

use std::collections::HashSet;

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use common::*;
use spime::error::{CounterError, DecodeError, OpenError, ReplayError, SealError};
use spime::message::*;
use spime::seal::counter::{Counter, CounterStore};
use spime::seal::replay::ReplayWindow;
use spime::seal::{self, Envelope, Seal, SessionKeys, VendorKeys, keys};
use spime::wire::{DeviceId, Kind};

/// A vendor that knows the fixture device (already registered in epoch 1).
struct Vendor {
    keys: SessionKeys,
    window: ReplayWindow,
}

impl Vendor {
    fn new() -> Self {
        Vendor { keys: session().0, window: ReplayWindow::new() }
    }

    fn open(&mut self, bytes: &[u8]) -> Result<Usage, OpenError> {
        let env = Envelope::parse(bytes)?;
        if env.header.device != DEVICE_ID {
            return Err(OpenError::WrongDevice);
        }
        self.window.check(env.header.counter)?;
        let keys = match env.header.ephemeral {
            Some(eph) => vendor().accept_epoch(&env.header.device, env.header.epoch, &eph)?,
            None => self.keys.clone(),
        };
        let mut buf = [0u8; MAX_SEALED_LEN];
        let verified = env.decrypt(&keys, &mut buf)?.verify(&device().public())?;
        let usage = verified.decode::<Usage>()?;
        self.window.accept(env.header.counter)?;
        Ok(usage)
    }
}

fn sealed_usage(counter: u64) -> Vec<u8> {
    let (keys, _) = session();
    let mut out = vec![0u8; Usage::MAX_SEALED_LEN];
    let s = Seal { device: DEVICE_ID, epoch: EPOCH, counter, ephemeral: None };
    let n = seal::seal(&mut out, &s, &usage(), device().signing(), &keys).unwrap();
    out.truncate(n);
    out
}

#[test]
fn the_untouched_message_opens() {
    assert_eq!(Vendor::new().open(&sealed_usage(1)).unwrap(), usage());
}

#[test]
fn every_bit_flipped_anywhere_is_refused() {
    let good = sealed_usage(1);
    let header_len = Envelope::parse(&good).unwrap().header_bytes().len();
    for i in 0..good.len() {
        for bit in 0..8 {
            let mut bad = good.clone();
            bad[i] ^= 1 << bit;
            let err = Vendor::new().open(&bad).expect_err("a flipped bit must be refused");
            if i >= header_len {
                assert_eq!(err, OpenError::Unauthentic, "byte {i} bit {bit}");
            }
        }
    }
}

/// Re-encrypts a plaintext with a valid tag, so only the signature check can refuse it.
fn reencrypt(sealed: &[u8], keys: &SessionKeys, edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let env = Envelope::parse(sealed).unwrap();
    let mut buf = [0u8; MAX_SEALED_LEN];
    let pt = env.decrypt(keys, &mut buf).unwrap();
    let mut plain = pt.body_bytes().to_vec();
    plain.extend_from_slice(pt.signature());
    edit(&mut plain);
    let header = env.header_bytes();
    let nonce = seal::nonce(env.header.direction(), env.header.counter);
    let tag = ChaCha20Poly1305::new(keys.device_to_vendor.as_bytes().into())
        .encrypt_inout_detached(&Nonce::from(nonce), header, plain.as_mut_slice().into())
        .unwrap();
    [header, &plain, &tag[..]].concat()
}

#[test]
fn every_signature_bit_flipped_under_a_valid_tag_is_refused() {
    let (keys, _) = session();
    let good = sealed_usage(1);
    let body_len = codec_len(&usage());
    for bit in 0..512 {
        let bad = reencrypt(&good, &keys, |p| p[body_len + bit / 8] ^= 1 << (bit % 8));
        assert_eq!(Vendor::new().open(&bad), Err(OpenError::Unauthentic), "signature bit {bit}");
    }
}

#[test]
fn a_body_edited_under_a_valid_tag_is_refused() {
    let (keys, _) = session();
    let bad = reencrypt(&sealed_usage(1), &keys, |p| p[5] ^= 1);
    assert_eq!(Vendor::new().open(&bad), Err(OpenError::Unauthentic));
}

fn codec_len<T: serde::Serialize>(v: &T) -> usize {
    spime::codec::encoded_len(v).unwrap()
}

#[test]
fn every_strict_prefix_is_refused() {
    let good = sealed_usage(1);
    for len in 0..good.len() {
        let err = Vendor::new().open(&good[..len]).expect_err("prefix");
        match err {
            OpenError::Decode(DecodeError::Truncated { .. }) | OpenError::Unauthentic => {}
            other => panic!("prefix of {len} bytes: unexpected {other:?}"),
        }
    }
}

#[test]
fn one_trailing_byte_is_refused() {
    let mut bad = sealed_usage(1);
    bad.push(0);
    assert_eq!(Vendor::new().open(&bad), Err(OpenError::Unauthentic));
}

#[test]
fn relabelled_messages_are_refused() {
    let good = sealed_usage(1);
    // to another device
    let mut other_device = good.clone();
    other_device[1..9].copy_from_slice(&[0xee; 8]);
    assert_eq!(Vendor::new().open(&other_device), Err(OpenError::WrongDevice));
    // a vendor that accepts any device id still refuses: the id is AAD and signed
    let mut v = Vendor::new();
    let env_err = {
        let env = Envelope::parse(&other_device).unwrap();
        let mut buf = [0u8; MAX_SEALED_LEN];
        env.decrypt(&v.keys, &mut buf).map(|_| ())
    };
    assert_eq!(env_err, Err(OpenError::Unauthentic));
    // to every other kind, including the other direction
    for kind in Kind::ALL.into_iter().filter(|k| *k != Kind::USAGE && *k != Kind::REGISTER) {
        let mut bad = good.clone();
        bad[0] = (bad[0] & 0xf0) | kind.nibble();
        assert_eq!(v.open(&bad), Err(OpenError::Unauthentic), "{kind:?}");
    }
    // to another epoch
    let mut epoch = good.clone();
    epoch[9] ^= 1; // epoch 1 (one varint byte) becomes 0
    assert!(matches!(v.open(&epoch), Err(OpenError::WrongEpoch { .. })));
    // to another version
    let mut version = good.clone();
    version[0] = (2 << 5) | (version[0] & 0x1f);
    assert_eq!(v.open(&version), Err(OpenError::Decode(DecodeError::UnsupportedVersion(2))));
    // the original still opens after all that
    assert!(v.open(&good).is_ok());
}

#[test]
fn direction_is_bound_by_key_and_nonce() {
    // A device-to-vendor ciphertext opened with the vendor-to-device key fails.
    let (keys, _) = session();
    let swapped = SessionKeys {
        epoch: keys.epoch,
        device_to_vendor: keys.vendor_to_device.clone(),
        vendor_to_device: keys.device_to_vendor.clone(),
    };
    let env_bytes = sealed_usage(1);
    let env = Envelope::parse(&env_bytes).unwrap();
    let mut buf = [0u8; MAX_SEALED_LEN];
    assert_eq!(env.decrypt(&swapped, &mut buf).map(|_| ()), Err(OpenError::Unauthentic));
    // seal_from_vendor refuses device kinds
    let mut out = [0u8; MAX_SEALED_LEN];
    assert_eq!(
        seal::seal_from_vendor(&mut out, DEVICE_ID, 0, &usage(), &vendor(), &keys),
        Err(SealError::WrongDirection(Kind::USAGE))
    );
}

#[test]
fn replay_is_refused_also_after_the_vendor_restarts() {
    let mut v = Vendor::new();
    for c in [1, 5, 3] {
        v.open(&sealed_usage(c)).unwrap();
    }
    assert_eq!(v.open(&sealed_usage(5)), Err(OpenError::Replay(ReplayError::Duplicate(5))));
    // persist the window, "restart", restore
    let (highest, seen) = v.window.parts();
    let persisted = postcard::to_allocvec(&(highest, seen)).unwrap();
    let (h, s): (u64, u128) = postcard::from_bytes(&persisted).unwrap();
    let mut restarted = Vendor { keys: session().0, window: ReplayWindow::from_parts(h, s) };
    for c in [1, 3, 5] {
        assert_eq!(restarted.open(&sealed_usage(c)), Err(OpenError::Replay(ReplayError::Duplicate(c))));
    }
    restarted.open(&sealed_usage(4)).unwrap(); // late but new: accepted once
    restarted.open(&sealed_usage(300)).unwrap();
    assert_eq!(
        restarted.open(&sealed_usage(4)),
        Err(OpenError::Replay(ReplayError::TooOld { counter: 4, highest: 300 }))
    );
}

#[test]
fn a_refused_message_does_not_advance_the_window() {
    let mut v = Vendor::new();
    let mut bad = sealed_usage(7);
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert_eq!(v.open(&bad), Err(OpenError::Unauthentic));
    v.open(&sealed_usage(7)).unwrap();
}

#[test]
fn wrong_keys_are_refused() {
    // another vendor's keys
    let other = VendorKeys::from_secrets(&[0x77; 32], [0x78; 32]);
    let (keys_for_other, eph) = keys::device_start_epoch_with(&[9; 32], &DEVICE_ID, 1, &other.public()).unwrap();
    let mut out = [0u8; MAX_SEALED_LEN];
    let s = Seal { device: DEVICE_ID, epoch: 1, counter: 0, ephemeral: Some(eph) };
    let n = seal::seal(&mut out, &s, &register(), device().signing(), &keys_for_other).unwrap();
    let env = Envelope::parse(&out[..n]).unwrap();
    let ours = vendor().accept_epoch(&DEVICE_ID, 1, &eph).unwrap();
    let mut buf = [0u8; MAX_SEALED_LEN];
    assert_eq!(env.decrypt(&ours, &mut buf).map(|_| ()), Err(OpenError::Unauthentic));
    // the right session key but the wrong signer
    let good = sealed_usage(1);
    let env = Envelope::parse(&good).unwrap();
    let pt = env.decrypt(&session().0, &mut buf).unwrap();
    let stranger = spime::seal::DeviceKey::from_seed(DEVICE_ID, &[0x99; 32]);
    assert_eq!(pt.verify(&stranger.public()).map(|_| ()), Err(OpenError::Unauthentic));
    // the vendor key is not the device key
    assert_eq!(pt.verify(&vendor().public().signing).map(|_| ()), Err(OpenError::Unauthentic));
    // a certificate from another vendor
    assert_eq!(certificate().verify(&other.public().signing), Err(OpenError::BadCertificate));
}

/// The eight X25519 points of small order (RFC 7748 §6.1 contributory check),
/// in their canonical and some non-canonical encodings.
const SMALL_ORDER: [&str; 7] = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
];

#[test]
fn small_order_keys_are_refused() {
    for hex_point in SMALL_ORDER {
        let p: [u8; 32] = hex::decode(hex_point).unwrap().try_into().unwrap();
        // as a device's ephemeral key at the vendor
        assert_eq!(vendor().accept_epoch(&DEVICE_ID, 1, &p), Err(OpenError::WeakKey), "{hex_point}");
        // as the vendor's key-agreement key at the device
        let fake = spime::seal::VendorPublicKeys { signing: vendor().public().signing, key_agreement: p };
        assert!(matches!(keys::device_start_epoch_with(&[4; 32], &DEVICE_ID, 1, &fake), Err(SealError::WeakKey)));
    }
    // a small-order Ed25519 device key in a vendor-signed certificate
    let mut body = certificate().body;
    body.device_key = [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let cert = DeviceCertificate::issue(body, vendor().signing()).unwrap();
    assert_eq!(cert.verify(&vendor().public().signing), Err(OpenError::BadCertificate));
}

#[test]
fn sealing_into_a_short_buffer_is_a_typed_error() {
    let (keys, _) = session();
    let s = Seal { device: DEVICE_ID, epoch: 1, counter: 0, ephemeral: None };
    let full = sealed_usage(0).len();
    for len in [0, 10, 31, 40, full - 1] {
        let mut out = vec![0u8; len];
        match seal::seal(&mut out, &s, &usage(), device().signing(), &keys) {
            Err(SealError::BufferTooSmall { needed, have }) => assert_eq!((needed, have), (full, len)),
            other => panic!("{len}: {other:?}"),
        }
    }
}

/// Storage whose writes can be cut: a cut before the write loses it, a cut
/// after it keeps it; either way RAM state is lost (a reboot).
struct Flaky {
    stored: u64,
    writes: u64,
    cut_at_write: Option<(u64, bool)>,
}

impl CounterStore for &mut Flaky {
    fn load(&mut self) -> Result<u64, CounterError> {
        Ok(self.stored)
    }
    fn store(&mut self, value: u64) -> Result<(), CounterError> {
        self.writes += 1;
        match self.cut_at_write {
            Some((n, persisted)) if n == self.writes => {
                if persisted {
                    self.stored = value;
                }
                Err(CounterError::Storage)
            }
            _ => {
                self.stored = value;
                Ok(())
            }
        }
    }
}

#[test]
fn power_cuts_at_every_counter_write_never_repeat_a_nonce() {
    // A deterministic xorshift drives the schedule; 5,000 reboots, each cut
    // at a write point or in between writes.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut flash = Flaky { stored: 0, writes: 0, cut_at_write: None };
    let mut used: HashSet<(u32, u64)> = HashSet::new();
    let mut epoch = 1u32;
    for _reboot in 0..5_000 {
        let block = 1 + rnd() % 16;
        // sometimes a reboot also renews the key epoch; the counter goes on
        if rnd() % 10 == 0 {
            epoch += 1;
        }
        flash.cut_at_write = Some((flash.writes + 1 + rnd() % 3, rnd() % 2 == 0));
        let mut counter = Counter::open(&mut flash, block).unwrap();
        let sends = rnd() % 40;
        for _ in 0..sends {
            match counter.next_value() {
                Ok(v) => assert!(used.insert((epoch, v)), "nonce {v} reused in epoch {epoch}"),
                Err(CounterError::Storage) => break, // the power went during the write
                Err(e) => panic!("{e:?}"),
            }
        }
    }
    assert!(used.len() > 20_000, "the schedule exercised {} sends", used.len());
    // and values are never reused across epochs either: one sequence for life
    let counters: HashSet<u64> = used.iter().map(|(_, c)| *c).collect();
    assert_eq!(counters.len(), used.len());
}

#[test]
fn the_counter_stops_at_its_end() {
    struct Near(u64);
    impl CounterStore for Near {
        fn load(&mut self) -> Result<u64, CounterError> {
            Ok(self.0)
        }
        fn store(&mut self, v: u64) -> Result<(), CounterError> {
            self.0 = v;
            Ok(())
        }
    }
    let mut c = Counter::open(Near(u64::MAX - 2), 1).unwrap();
    assert_eq!(c.next_value(), Ok(u64::MAX - 2));
    assert_eq!(c.next_value(), Ok(u64::MAX - 1));
    assert_eq!(c.next_value(), Err(CounterError::Exhausted));
}

#[test]
fn a_weak_device_id_mismatch_in_register_is_caught_by_the_certificate() {
    // A Register whose header names another device than its certificate.
    let (k, eph) = keys::device_start_epoch_with(&EPHEMERAL_SECRET, &DeviceId([1; 8]), 1, &vendor().public()).unwrap();
    let mut out = [0u8; MAX_SEALED_LEN];
    let s = Seal { device: DeviceId([1; 8]), epoch: 1, counter: 0, ephemeral: Some(eph) };
    let n = seal::seal(&mut out, &s, &register(), device().signing(), &k).unwrap();
    let env = Envelope::parse(&out[..n]).unwrap();
    let keys = vendor().accept_epoch(&env.header.device, 1, &eph).unwrap();
    let mut buf = [0u8; MAX_SEALED_LEN];
    let pt = env.decrypt(&keys, &mut buf).unwrap();
    let reg: Register = spime::codec::decode(pt.body_bytes()).unwrap();
    assert_ne!(reg.certificate.body.device, env.header.device, "the opener must compare them (SPEC §9)");
}

/// SPEC §2.1: public keys (and `R`) must be canonical encodings (y < p).
/// ed25519-dalek decodes the 19 non-canonical encodings; the crate refuses them.
#[test]
fn non_canonical_point_encodings_are_refused() {
    use curve25519_dalek::edwards::CompressedEdwardsY;
    // A y below 19 whose point is valid and not of small order, encoded again as y + p.
    let (canonical, non_canonical) = (0u8..19)
        .find_map(|y| {
            let mut c = [0u8; 32];
            c[0] = y;
            let p = CompressedEdwardsY(c).decompress()?;
            if p.is_small_order() {
                return None;
            }
            let mut n = [0xffu8; 32];
            n[0] = 0xed + y;
            n[31] = 0x7f;
            Some((c, n))
        })
        .expect("some small y is on the curve");
    assert_eq!(
        CompressedEdwardsY(canonical).decompress(),
        CompressedEdwardsY(non_canonical).decompress(),
        "the same point"
    );
    assert!(ed25519_dalek::VerifyingKey::from_bytes(&non_canonical).is_ok(), "dalek decodes it");
    assert!(seal::is_canonical_point_encoding(&canonical));
    assert!(!seal::is_canonical_point_encoding(&non_canonical));
    // A vendor-signed certificate binding the non-canonical encoding is refused;
    // the same certificate with the canonical encoding is accepted.
    let v = vendor();
    let cert = |key: [u8; 32]| {
        let mut body = register().certificate.body;
        body.device_key = key;
        DeviceCertificate::issue(body, v.signing()).unwrap()
    };
    assert!(cert(canonical).verify(&v.public().signing).is_ok());
    assert_eq!(cert(non_canonical).verify(&v.public().signing), Err(OpenError::BadCertificate));
    // An envelope signature under such a key never verifies, whatever the signature.
    let key = ed25519_dalek::VerifyingKey::from_bytes(&non_canonical).unwrap();
    assert_eq!(seal::verify_signature(&key, b"h", b"b", &[0; 64]), Err(OpenError::Unauthentic));
}

/// SPEC §5.1: a length prefix is a `u32` varint on every platform, so a
/// 32-bit device and a 64-bit vendor agree: up to 5 bytes non-minimal is
/// `NonCanonical`, longer is `Malformed`.
#[test]
fn length_prefixes_are_judged_the_same_on_every_platform() {
    let mut f = fault();
    f.context = heapless::Vec::from_slice(b"ab").unwrap();
    let good = spime::codec::encoded_len(&f).map(|n| {
        let mut b = vec![0u8; n];
        spime::codec::encode(&f, &mut b).unwrap();
        b
    });
    let good = good.unwrap();
    // context is the last field: its length prefix 0x02, then "ab"
    let at = good.len() - 3;
    assert_eq!(good[at], 0x02);
    let with_prefix = |prefix: &[u8]| [&good[..at], prefix, &good[at + 1..]].concat();
    assert_eq!(spime::codec::decode::<Fault>(&good).unwrap(), f);
    for prefix in [&[0x82, 0x00][..], &[0x82, 0x80, 0x80, 0x80, 0x00]] {
        assert_eq!(spime::codec::decode::<Fault>(&with_prefix(prefix)), Err(DecodeError::NonCanonical), "{prefix:x?}");
    }
    for prefix in [&[0x82, 0x80, 0x80, 0x80, 0x80, 0x00][..], &[0x82, 0x80, 0x80, 0x80, 0x10]] {
        assert_eq!(spime::codec::decode::<Fault>(&with_prefix(prefix)), Err(DecodeError::Malformed), "{prefix:x?}");
    }
}
