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
use spime::codec::{self, Bytes64, Canonical};
use spime::consent::*;
use spime::error::{DecodeError, OpenError};
use spime::message::*;
use spime::seal::replay::ReplayWindow;
use spime::seal::{self, Envelope, Seal, SessionKeys};
use spime::vendor::IngestError;
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

/// SPEC §3: X25519, HKDF-SHA256, with the provisioned vendor key (serial 0).
fn ref_keys(eph_secret: &[u8; 32], epoch: u32) -> ([u8; 32], [u8; 32], [u8; 32]) {
    ref_keys_with(eph_secret, epoch, &VENDOR_KX_SECRET)
}

/// SPEC §3 with the vendor key-agreement secret `vx`.
fn ref_keys_with(eph_secret: &[u8; 32], epoch: u32, vx: &[u8; 32]) -> ([u8; 32], [u8; 32], [u8; 32]) {
    let eph_pub = x25519_dalek::x25519(*eph_secret, x25519_dalek::X25519_BASEPOINT_BYTES);
    let vendor_kx_pub = x25519_dalek::x25519(*vx, x25519_dalek::X25519_BASEPOINT_BYTES);
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

/// The vendor key pairs of the vectors by serial (SPEC §2, §5.11): 0 the
/// provisioned one, 1 the next (life 4 rotates to it), `u32::MAX` a new
/// signing key with the same key-agreement key (life 2's longest KeyUpdate).
const VENDOR_SERIALS: [u32; 3] = [0, 1, u32::MAX];
fn vendor_pair(serial: u32) -> ([u8; 32], [u8; 32]) {
    match serial {
        0 => (VENDOR_SIGNING_SEED, VENDOR_KX_SECRET),
        1 => ([0x12; 32], [0x23; 32]),
        u32::MAX => ([0x13; 32], VENDOR_KX_SECRET),
        s => panic!("no vendor key {s}"),
    }
}

/// The crate's keys of a vendor pair.
fn vendor_of(serial: u32) -> spime::seal::VendorKeys {
    let (sign, kx) = vendor_pair(serial);
    spime::seal::VendorKeys::from_secrets(&sign, &kx)
}

/// SPEC §5.11: the certificate authority (in the vectors `VCA` is the
/// provisioned `VS`, §2) signs `"spime/v1 vendor key certificate\0" || body`.
fn ref_vendor_cert(serial: u32, not_before: u64, not_after: u64) -> VendorKeyCertificate {
    let (sign, kx) = vendor_pair(serial);
    let body = VendorKeyBody {
        serial,
        signing: SigningKey::from_bytes(&sign).verifying_key().to_bytes(),
        key_agreement: x25519_dalek::x25519(kx, x25519_dalek::X25519_BASEPOINT_BYTES),
        not_before,
        not_after,
    };
    let mut msg = b"spime/v1 vendor key certificate\0".to_vec();
    msg.extend_from_slice(&enc(&body));
    VendorKeyCertificate {
        body,
        signature: Bytes64(SigningKey::from_bytes(&VENDOR_SIGNING_SEED).sign(&msg).to_bytes()),
    }
}

fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    let n = codec::encode(v, &mut buf).unwrap().len();
    buf.truncate(n);
    buf
}

// ---------------------------------------------------------------- bodies at their bounds

/// 2^63: the smallest `u64` whose varint takes all 10 bytes.
const U64_10: u64 = 1 << 63;
/// 2^28: the smallest `u32` whose varint takes all 5 bytes.
const U32_5: u32 = 1 << 28;
/// The owner keys of the lives (SPEC §6.3): life 1's first owner, life 2's second owner.
const OWNER_SEED_1: [u8; 32] = [0x77; 32];
const OWNER_SEED_2: [u8; 32] = [0x78; 32];

/// SPEC §6.3: the owner signs `"spime/v1 owner consent\0" || device id || state`.
fn ref_owner_proof(state: &ConsentState, seed: &[u8; 32]) -> OwnerProof {
    let key = SigningKey::from_bytes(seed);
    let mut msg = b"spime/v1 owner consent\0".to_vec();
    msg.extend_from_slice(&DEVICE_ID.0);
    msg.extend_from_slice(&enc(state));
    OwnerProof { owner_key: key.verifying_key().to_bytes(), signature: Bytes64(key.sign(&msg).to_bytes()) }
}

fn cert(model: &str, hardware_revision: u16, issued_at: u64, not_after: Option<u64>) -> DeviceCertificate {
    DeviceCertificate::issue(
        CertificateBody {
            device: DEVICE_ID,
            device_key: device().public().to_bytes(),
            model: model.try_into().unwrap(),
            hardware_revision,
            issued_at,
            not_after,
        },
        vendor().signing(),
    )
    .unwrap()
}

/// A string of `n` bytes made of as many three-byte characters as fit.
fn max_string(n: usize) -> String {
    "€".repeat(n / 3) + &"x".repeat(n % 3)
}

const FW_MIN: FirmwareVersion = FirmwareVersion { major: 0, minor: 0, patch: 0, build: 0 };
const FW_MAX: FirmwareVersion = FirmwareVersion { major: u16::MAX, minor: u16::MAX, patch: u16::MAX, build: u32::MAX };

/// The shortest canonical state: one-byte varints, a one-second re-confirm window, nothing granted.
fn state_min(version: u32) -> ConsentState {
    ConsentState {
        version,
        issued_at: 0,
        reconfirm_by: 1,
        notice_hash: [0; 32],
        grants: heapless::Vec::new(),
        contact: ContactPrefs::default(),
    }
}

/// The longest canonical state (every list full, every varint at its widest), still sensible:
/// vendor purposes 0xfff0..=0xffff granted everything until u64::MAX, quiet hours 22:00–07:00 at UTC−14:00.
fn state_max(version: u32, issued_at: u64) -> ConsentState {
    let p = |i: u16| Purpose::from_id(0xfff0 + i).unwrap();
    ConsentState {
        version,
        issued_at,
        reconfirm_by: issued_at + MAX_RECONFIRM,
        notice_hash: [0xab; 32],
        grants: (0..MAX_GRANTS as u16)
            .map(|i| Grant {
                purpose: p(i),
                categories: CategorySet::ALL,
                location: LocationPrecision::Exact,
                expires_at: Some(u64::MAX),
            })
            .collect(),
        contact: ContactPrefs {
            grants: (0..MAX_CONTACT_GRANTS as u16)
                .map(|i| ContactGrant { purpose: p(i), channels: ChannelSet::ALL })
                .collect(),
            quiet_hours: Some(QuietHours { start_minute: 22 * 60, end_minute: 7 * 60, utc_offset_minutes: -840 }),
            caps: (8..16u16)
                .map(|i| FrequencyCap { purpose: p(i), max_notices: u16::MAX, period_seconds: u32::MAX })
                .collect(),
            muted_topics: (0..MAX_MUTED_TOPICS as u16).map(|i| 0xfff0 + i).collect(),
        },
    }
}

/// A state at the rules' edges (SPEC §6.2): a re-confirm window of exactly MAX_RECONFIRM,
/// a grant that expired before it was issued, a contact grant for Essential, quiet hours
/// from minute 0 to 1439 at UTC+14:00, a cap of 0 notices and one of period 1 s, topics 0 and 65535 muted.
fn state_bounds(version: u32) -> ConsentState {
    let mut s = consent_state(version);
    s.reconfirm_by = s.issued_at + MAX_RECONFIRM;
    s.grants
        .push(Grant {
            purpose: Purpose::RESEARCH,
            categories: CategorySet::EMPTY.with(DataCategory::Environment),
            location: LocationPrecision::None,
            expires_at: Some(s.issued_at - 1),
        })
        .unwrap();
    s.contact.grants.insert(0, ContactGrant { purpose: Purpose::ESSENTIAL, channels: ChannelSet::ALL }).unwrap();
    s.contact
        .grants
        .push(ContactGrant { purpose: Purpose::MARKETING, channels: ChannelSet::EMPTY.with(Channel::Email) })
        .unwrap();
    s.contact.quiet_hours = Some(QuietHours { start_minute: 0, end_minute: 1439, utc_offset_minutes: 840 });
    s.contact.caps.clear();
    s.contact
        .caps
        .push(FrequencyCap { purpose: Purpose::PROACTIVE_SERVICE, max_notices: 0, period_seconds: 1 })
        .unwrap();
    s.contact.caps.push(FrequencyCap { purpose: Purpose::MARKETING, max_notices: 1, period_seconds: 1 }).unwrap();
    s.contact.muted_topics = heapless::Vec::from_slice(&[0, 7, u16::MAX]).unwrap();
    s
}

fn signed(state: ConsentState, owner: Option<&[u8; 32]>) -> SignedConsent {
    let owner = owner.map(|seed| ref_owner_proof(&state, seed));
    SignedConsent { state, owner }
}

fn receipt_of(consent: &SignedConsent, received_at: u64) -> Receipt {
    Receipt { consent_version: consent.state.version, consent_digest: consent_digest(&enc(consent)), received_at }
}

fn fault_v(version: u32) -> Fault {
    Fault { consent_version: version, ..fault() }
}

/// A Diagnostics report of DeviceHealth counters (allowed after usage analytics were withdrawn).
fn usage_health(version: u32) -> Usage {
    let metrics = heapless::Vec::from_slice(&[
        Metric { id: 1, category: DataCategory::DeviceHealth, value: MetricValue::Counter(1_200) },
        Metric {
            id: 4,
            category: DataCategory::DeviceHealth,
            value: MetricValue::Gauge { min: 18, max: 101, sum: 5_500, samples: 60 },
        },
    ])
    .unwrap();
    Usage { purpose: Purpose::DIAGNOSTICS, consent_version: version, window_start: T0, window_end: T0 + 3600, metrics }
}

fn recall() -> Notice {
    Notice {
        id: 78,
        purpose: Purpose::ESSENTIAL,
        channel: Channel::OnDevice,
        topic: 1,
        kind: NoticeKind::Recall,
        issued_at: T0 + 70,
        expires_at: T0 + 365 * 86_400,
        title: "Safety recall".try_into().unwrap(),
        text: "Unplug the kettle: a batch of power bases can overheat. A free replacement is on its way."
            .try_into()
            .unwrap(),
    }
}

// ---------------------------------------------------------------- valid vectors

struct Spec {
    life: u32,
    name: &'static str,
    note: &'static str,
    kind: Kind,
    epoch: u32,
    counter: u64,
    eph_in_header: bool,
    chunks: bool,
    body: Vec<u8>,
    body_json: Value,
    /// The serial of the vendor pair whose `VX` opened the epoch (SPEC §8.7).
    vendor_key: u32,
}

/// Builds the messages of one life, in order.
struct Life {
    life: u32,
    specs: Vec<Spec>,
    /// The vendor pair the device opens its epochs with from now on.
    vendor_key: u32,
}

impl Life {
    fn msg<B: Body>(&mut self, name: &'static str, counter: u64, epoch: u32, eph: bool, body: &B, note: &'static str) {
        self.specs.push(Spec {
            life: self.life,
            name,
            note,
            kind: B::KIND,
            epoch,
            counter,
            eph_in_header: eph,
            chunks: false,
            body: enc(body),
            body_json: serde_json::to_value(body).unwrap(),
            vendor_key: self.vendor_key,
        });
    }
    /// Marks the last message as one whose chunk lists are published.
    fn chunked(&mut self) {
        self.specs.last_mut().unwrap().chunks = true;
    }
}

/// The ephemeral secret that opens `epoch` in `life`.
fn epoch_secret(life: u32, epoch: u32) -> [u8; 32] {
    match (life, epoch) {
        (1, 1) => EPHEMERAL_SECRET,
        (1, 2) => [0x55; 32],
        _ => {
            use sha2::Digest;
            let mut h = Sha256::new();
            h.update(b"spime vectors ephemeral\0");
            h.update(life.to_be_bytes());
            h.update(epoch.to_be_bytes());
            h.finalize().into()
        }
    }
}

/// Every valid message, life by life (SPEC §10).
fn valid_specs() -> Vec<Spec> {
    let t = |d: u64| T0 + d;
    // Life 1: a kettle's everyday life, counters and epochs growing through every varint width.
    let mut l = Life { life: 1, specs: Vec::new(), vendor_key: 0 };
    let reg = register();
    l.msg("register", 0, 1, true, &reg, "opens epoch 1 (123 B overhead)");
    l.chunked();
    l.msg("usage_reoffering_key", 1, 1, true, &usage(), "epoch 1 is unconfirmed: the key travels again (SPEC §3.1)");
    l.msg("receipt", 0, 1, false, &receipt(), "the vendor's receipt confirms epoch 1");
    l.msg("fault", 2, 1, false, &fault(), "an open epoch, small counter: 91 B overhead");
    l.chunked();
    l.msg("usage", 3, 1, false, &usage(), "every metric value variant");
    let cu = consent_update();
    l.msg("consent", 4, 1, false, &cu, "version 2 withdraws usage analytics");
    l.msg("receipt_consent", 1, 1, false, &receipt_of(&cu.consent, t(60)), "receipts version 2");
    l.msg("notice", 2, 1, false, &notice(), "proactive service by app");
    l.msg("fault_counter_128", 128, 1, false, &fault_v(2), "a two-byte counter (counters 5–127 skipped by reboots)");
    l.msg("usage_counter_16384", 16_384, 1, false, &usage_health(2), "a three-byte counter");
    l.msg("fault_opening_epoch_2", 16_385, 2, true, &fault_v(2), "key renewal: a Fault opens epoch 2");
    l.msg("notice_recall_epoch_2", 3, 2, false, &recall(), "a recall under epoch 2 confirms it");
    l.msg("usage_opening_epoch_128", 1 << 21, 128, true, &usage_health(2), "a two-byte epoch and a four-byte counter");
    l.msg(
        "receipt_epoch_128",
        128,
        128,
        false,
        &receipt_of(&cu.consent, t(61)),
        "confirms epoch 128; two-byte vendor counter",
    );
    let bounds = signed(state_bounds(3), Some(&OWNER_SEED_1));
    l.msg(
        "consent_bounds",
        (1 << 21) + 1,
        128,
        false,
        &ConsentUpdate { consent: bounds.clone() },
        "a state at the edges of §6.2's rules, with the owner's proof (the vendor pins the owner key)",
    );
    l.msg("receipt_consent_bounds", 129, 128, false, &receipt_of(&bounds, t(62)), "receipts version 3");
    l.msg(
        "consent_repeated",
        (1 << 21) + 2,
        128,
        false,
        &ConsentUpdate { consent: bounds.clone() },
        "the same state announced again: a duplicate the vendor accepts and ignores",
    );
    let mut withdrawn = state_bounds(4);
    withdrawn.grants.clear();
    withdrawn.contact.grants.clear();
    withdrawn.contact.caps.clear();
    l.msg(
        "consent_withdraw_all",
        (1 << 21) + 3,
        128,
        false,
        &ConsentUpdate { consent: signed(withdrawn, Some(&OWNER_SEED_1)) },
        "everything withdrawn, signed by the pinned owner key",
    );
    // The owner's key is pinned (version 3 on): the owner authorises the hand-over.
    let common_transfer = transfer();
    let handed_over = Transfer {
        owner: Some(OwnerProof::sign_transfer(
            &DEVICE_ID,
            common_transfer.consent_version,
            common_transfer.at,
            &SigningKey::from_bytes(&OWNER_SEED_1),
        )),
        ..common_transfer
    };
    l.msg(
        "transfer",
        1 << 28,
        128,
        false,
        &handed_over,
        "a five-byte counter, authorised by the pinned owner; the vendor resets consent to version 5",
    );
    let reg2 = Register { consent: signed(consent_state(6), None), ..register() };
    l.msg("register_new_owner", (1 << 28) + 1, 16_384, true, &reg2, "the next owner opens epoch 16384 (three bytes)");
    l.msg("receipt_new_owner", 130, 16_384, false, &receipt_of(&reg2.consent, t(63)), "confirms epoch 16384");
    l.msg("decommission", u64::MAX, 16_384, false, &decommission(), "the last counter value a device may use");
    let mut specs = l.specs;

    // Life 2: the shortest envelope of every kind, then the longest.
    let mut l = Life { life: 2, specs: Vec::new(), vendor_key: 0 };
    let reg_min = Register {
        certificate: cert("", 0, 0, None),
        firmware: FW_MIN,
        consent: signed(state_min(0), None),
        transfer: None,
    };
    l.msg("register_min", 0, 1, true, &reg_min, "the shortest Register");
    l.msg(
        "receipt_min",
        0,
        1,
        false,
        &receipt_of(&reg_min.consent, 0),
        "the shortest Receipt (a time below 128 only to reach it)",
    );
    let usage_min = Usage {
        purpose: Purpose::ESSENTIAL,
        consent_version: 0,
        window_start: 0,
        window_end: 0,
        metrics: heapless::Vec::new(),
    };
    l.msg("usage_min", 1, 1, false, &usage_min, "the shortest Usage: Essential, no metrics");
    let fault_min = Fault {
        purpose: Purpose::ESSENTIAL,
        consent_version: 0,
        code: 0,
        severity: Severity::Info,
        component: 0,
        firmware: FW_MIN,
        uptime_s: 0,
        reboot_reason: RebootReason::None,
        occurrences: 1,
        first_seen: 0,
        last_seen: 0,
        context: heapless::Vec::new(),
    };
    l.msg("fault_min", 2, 1, false, &fault_min, "the shortest Fault");
    l.msg("consent_min", 3, 1, false, &ConsentUpdate { consent: signed(state_min(1), None) }, "the shortest Consent");
    let notice_min = Notice {
        id: 0,
        purpose: Purpose::ESSENTIAL,
        channel: Channel::OnDevice,
        topic: 0,
        kind: NoticeKind::MaintenanceDue,
        issued_at: 0,
        expires_at: 0,
        title: heapless::String::new(),
        text: heapless::String::new(),
    };
    l.msg("notice_min", 1, 1, false, &notice_min, "the shortest Notice");
    l.msg("transfer_min", 4, 1, false, &Transfer { at: 0, consent_version: 1, owner: None }, "the shortest Transfer");
    l.chunked();
    let reg_max = Register {
        // 2^63 and u64::MAX: ten-byte times; valid at a vendor time of 2^63 on.
        certificate: cert(&max_string(32), u16::MAX, U64_10, Some(u64::MAX)),
        firmware: FW_MAX,
        consent: signed(state_max(U32_5, U64_10), Some(&OWNER_SEED_2)),
        transfer: Some(Transfer {
            at: U64_10,
            consent_version: U32_5,
            owner: Some(OwnerProof::sign_transfer(&DEVICE_ID, U32_5, U64_10, &SigningKey::from_bytes(&OWNER_SEED_2))),
        }),
    };
    l.msg("register_max", U64_10, U32_5, true, &reg_max, "the longest Register: the longest body and header");
    l.chunked();
    let usage_max = Usage {
        purpose: Purpose::from_id(0xffff).unwrap(),
        consent_version: U32_5,
        window_start: U64_10,
        window_end: U64_10 + 3600,
        metrics: (0..MAX_METRICS as u16)
            .map(|i| Metric {
                id: 0xfff0 + i,
                category: DataCategory::UsageCounters,
                value: MetricValue::Histogram(heapless::Vec::from_slice(&[u32::MAX; MAX_BUCKETS]).unwrap()),
            })
            .collect(),
    };
    l.msg("usage_max", U64_10 + 1, U32_5, true, &usage_max, "the longest envelope of any kind (MAX_SEALED_LEN)");
    l.chunked();
    let fault_max = Fault {
        purpose: Purpose::from_id(0xffff).unwrap(),
        consent_version: U32_5,
        code: u32::MAX,
        severity: Severity::Critical,
        component: u16::MAX,
        firmware: FW_MAX,
        uptime_s: u32::MAX,
        reboot_reason: RebootReason::Unknown,
        occurrences: u32::MAX,
        first_seen: U64_10,
        last_seen: U64_10 + 1,
        context: heapless::Vec::from_slice(&[0xff; MAX_FAULT_CONTEXT]).unwrap(),
    };
    l.msg("fault_max", U64_10 + 2, U32_5, true, &fault_max, "the longest Fault");
    let consent_max = signed(state_max(U32_5 + 1, U64_10 + 1), Some(&OWNER_SEED_2));
    l.msg(
        "consent_max",
        U64_10 + 3,
        U32_5,
        true,
        &ConsentUpdate { consent: consent_max.clone() },
        "the longest Consent",
    );
    l.msg(
        "receipt_max",
        U64_10,
        U32_5,
        false,
        &receipt_of(&consent_max, U64_10 + 2),
        "the longest Receipt; confirms the epoch",
    );
    let notice_max = Notice {
        id: u32::MAX,
        purpose: Purpose::from_id(0xffff).unwrap(),
        channel: Channel::Sms,
        topic: 0xffef,
        kind: NoticeKind::UpdateAvailable,
        issued_at: U64_10,
        expires_at: U64_10 + 30 * 86_400,
        title: max_string(MAX_NOTICE_TITLE).as_str().try_into().unwrap(),
        text: max_string(MAX_NOTICE_TEXT).as_str().try_into().unwrap(),
    };
    l.msg("notice_max", U64_10 + 1, U32_5, false, &notice_max, "the longest Notice");
    l.chunked();
    l.msg(
        "key_update_max",
        U64_10 + 2,
        U32_5,
        false,
        &KeyUpdate { certificate: ref_vendor_cert(u32::MAX, U64_10, u64::MAX) },
        "the longest KeyUpdate: serial u32::MAX, a new signing key with the same key-agreement key; \
         signed by the key it certifies",
    );
    // The device opens its next epochs with the learned pair (its VX is unchanged).
    l.vendor_key = u32::MAX;
    l.msg(
        "transfer_max",
        U64_10 + 4,
        U32_5 + 1,
        true,
        &Transfer {
            at: U64_10 + 10 * 86_400,
            consent_version: U32_5 + 1,
            owner: Some(OwnerProof::sign_transfer(
                &DEVICE_ID,
                U32_5 + 1,
                U64_10 + 10 * 86_400,
                &SigningKey::from_bytes(&OWNER_SEED_2),
            )),
        },
        "the longest Transfer; it opens a new epoch",
    );
    let reg_last =
        Register { consent: signed(ConsentState::essential_only(U32_5 + 3, T0, [0x5a; 32]), None), ..register() };
    l.msg(
        "register_last_epoch",
        U64_10 + 5,
        u32::MAX,
        true,
        &reg_last,
        "the next owner opens the last epoch, u32::MAX",
    );
    l.msg(
        "decommission_max",
        u64::MAX,
        u32::MAX,
        true,
        &Decommission { at: U64_10 + 20 * 86_400, reason: DecommissionReason::Retired },
        "the longest Decommission: last counter, last epoch, the unconfirmed key re-offered",
    );
    specs.append(&mut l.specs);

    // Life 3: a short life.
    let mut l = Life { life: 3, specs: Vec::new(), vendor_key: 0 };
    l.msg("register_short_life", 0, 1, true, &register(), "a device registered and recycled at once");
    l.msg("receipt_short_life", 0, 1, false, &receipt(), "confirms epoch 1");
    l.msg(
        "decommission_min",
        1,
        1,
        false,
        &Decommission { at: 0, reason: DecommissionReason::Recycled },
        "the shortest Decommission",
    );
    specs.append(&mut l.specs);

    // Life 4: the vendor rotates its key (SPEC §8.7, §9.2).
    let mut l = Life { life: 4, specs: Vec::new(), vendor_key: 0 };
    l.msg("register_rotation", 0, 1, true, &register(), "registers with the provisioned vendor key (serial 0)");
    l.msg("receipt_rotation", 0, 1, false, &receipt(), "signed by key 0, which opened epoch 1");
    l.msg(
        "key_update",
        1,
        1,
        false,
        &KeyUpdate { certificate: ref_vendor_cert(1, T0, T0 + 10 * 365 * 86_400) },
        "key 1, certified by VCA; sealed under epoch 1, signed by key 1",
    );
    l.vendor_key = 1;
    l.msg("usage_new_key", 1, 2, true, &usage(), "opens epoch 2 with key 1's VX");
    l.msg("receipt_new_key", 2, 2, false, &receipt(), "signed by key 1, which opened epoch 2");
    specs.append(&mut l.specs);
    specs
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
        "owner_signing_seeds": [hexs(&OWNER_SEED_1), hexs(&OWNER_SEED_2)],
        "certificate_authority_public": hexs(p.signing.as_bytes()),
        "vendor_keys": VENDOR_SERIALS.iter().map(|&serial| {
            let (sign, kx) = vendor_pair(serial);
            let k = vendor_of(serial).public();
            json!({
                "serial": serial,
                "signing_seed": hexs(&sign),
                "signing_public": hexs(k.signing.as_bytes()),
                "key_agreement_secret": hexs(&kx),
                "key_agreement_public": hexs(&k.key_agreement),
            })
        }).collect::<Vec<_>>(),
    })
}

/// SPEC §7.1: the chunks of `message` under id `id` for an MTU of `mtu` bytes.
fn ref_chunks(message: &[u8], id: u16, mtu: usize) -> Vec<Vec<u8>> {
    let size = (mtu - 5).min(255);
    let count = message.len().div_ceil(size);
    message
        .chunks(size)
        .enumerate()
        .map(|(i, payload)| {
            let mut c = id.to_be_bytes().to_vec();
            c.extend_from_slice(&[i as u8, (count - 1) as u8, size as u8]);
            c.extend_from_slice(payload);
            c
        })
        .collect()
}

fn build_valid() -> Value {
    let mut out = Vec::new();
    for s in valid_specs() {
        let eph_secret = epoch_secret(s.life, s.epoch);
        let (d2v, v2d, eph_pub) = ref_keys_with(&eph_secret, s.epoch, &vendor_pair(s.vendor_key).1);
        let dir = s.kind.direction();
        let eph = s.eph_in_header.then_some(eph_pub);
        let header = ref_header(s.kind.to_byte(), s.epoch, s.counter, eph);
        // A KeyUpdate is signed by the key it certifies; other vendor messages
        // by the key that opened their epoch (SPEC §4).
        let vendor_signer = if s.kind == Kind::KEY_UPDATE {
            vendor_pair(codec::decode::<KeyUpdate>(&s.body).unwrap().certificate.body.serial).0
        } else {
            vendor_pair(s.vendor_key).0
        };
        let (signer, key) = match dir {
            Direction::DeviceToVendor => (SigningKey::from_bytes(&DEVICE_SEED), d2v),
            Direction::VendorToDevice => (SigningKey::from_bytes(&vendor_signer), v2d),
        };
        let (sealed, sig) = ref_seal(&header, s.counter, &s.body, &signer, &key);
        let nonce = ref_nonce(dir == Direction::VendorToDevice, s.counter);
        let mut m = json!({
            "life": s.life,
            "name": s.name,
            "note": s.note,
            "kind": s.kind.to_byte(),
            "direction": match dir { Direction::DeviceToVendor => "device_to_vendor", Direction::VendorToDevice => "vendor_to_device" },
            "epoch": s.epoch,
            "counter": s.counter,
            "vendor_key": s.vendor_key,
            "epoch_ephemeral_secret": hexs(&eph_secret),
            "epoch_ephemeral_public": hexs(&eph_pub),
            "ephemeral_in_header": s.eph_in_header,
            "key_device_to_vendor": hexs(&d2v),
            "key_vendor_to_device": hexs(&v2d),
            "nonce": hexs(&nonce),
            "body": s.body_json,
            "body_hex": hexs(&s.body),
            "header_hex": hexs(&header),
            "signature_hex": hexs(&sig),
            "sealed_hex": hexs(&sealed),
            "body_overhead": sealed.len() - s.body.len(),
        });
        if s.chunks {
            let id = s.counter as u16;
            m["chunk_message_id"] = json!(id);
            m["chunks_mtu20"] = json!(ref_chunks(&sealed, id, 20).iter().map(|c| hexs(c)).collect::<Vec<_>>());
            m["chunks_mtu244"] = json!(ref_chunks(&sealed, id, 244).iter().map(|c| hexs(c)).collect::<Vec<_>>());
        }
        out.push(m);
    }
    json!({
        "description": "Valid spime v1 messages in four device lives; each life is opened in order by a fresh vendor and a fresh device. Sealed by the sender named by direction; see SPEC.md section 10.",
        "keys": keys_json(),
        "messages": out,
    })
}

// ---------------------------------------------------------------- a minimal opener (both roles)

/// The vendor side of SPEC §4.4 reduced to what the core defines: epoch
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
                // SPEC §9.2: each vendor key pair, newest first; the one whose keys decrypt it.
                let mut scratch = vec![0u8; env.plaintext_len()];
                let mut found = None;
                for serial in [1, 0] {
                    let k = vendor_of(serial).accept_epoch(&env.header.device, env.header.epoch, &eph)?;
                    if found.is_none() && (serial == 0 || env.decrypt(&k, &mut scratch).is_ok()) {
                        found = Some(k);
                    }
                }
                found.unwrap()
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

/// The device's hand-written codec (`codec::fixed`) decodes every body the
/// vectors carry, valid or not, as serde's does: the same verdict, the
/// same value, and for a rule broken after parsing the same error.
fn fixed_agrees<B: Body + spime::codec::fixed::Fixed + PartialEq + std::fmt::Debug>(v: &seal::Verified<'_, '_>) {
    let (serde, hand) = (codec::decode::<B>(v.body_bytes()), spime::codec::fixed::decode::<B>(v.body_bytes()));
    match (&serde, &hand) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(DecodeError::Malformed | DecodeError::TrailingBytes | DecodeError::NonCanonical), Err(b)) => assert!(
            matches!(b, DecodeError::Malformed | DecodeError::TrailingBytes | DecodeError::NonCanonical),
            "{b:?}"
        ),
        _ => assert_eq!(serde, hand),
    }
}

fn decode_json(v: &seal::Verified<'_, '_>) -> Result<Value, OpenError> {
    match v.kind() {
        Kind::REGISTER => fixed_agrees::<Register>(v),
        Kind::USAGE => fixed_agrees::<Usage>(v),
        Kind::FAULT => fixed_agrees::<Fault>(v),
        Kind::CONSENT => fixed_agrees::<ConsentUpdate>(v),
        Kind::TRANSFER => fixed_agrees::<Transfer>(v),
        Kind::DECOMMISSION => fixed_agrees::<Decommission>(v),
        Kind::RECEIPT => fixed_agrees::<Receipt>(v),
        Kind::NOTICE => fixed_agrees::<Notice>(v),
        _ => {}
    }
    Ok(match v.kind() {
        Kind::REGISTER => serde_json::to_value(v.decode::<Register>()?),
        Kind::USAGE => serde_json::to_value(v.decode::<Usage>()?),
        Kind::FAULT => serde_json::to_value(v.decode::<Fault>()?),
        Kind::CONSENT => serde_json::to_value(v.decode::<ConsentUpdate>()?),
        Kind::TRANSFER => serde_json::to_value(v.decode::<Transfer>()?),
        Kind::DECOMMISSION => serde_json::to_value(v.decode::<Decommission>()?),
        Kind::RECEIPT => serde_json::to_value(v.decode::<Receipt>()?),
        Kind::NOTICE => serde_json::to_value(v.decode::<Notice>()?),
        Kind::KEY_UPDATE => serde_json::to_value(v.decode::<KeyUpdate>()?),
        _ => unreachable!(),
    }
    .unwrap())
}

/// The device side: opens vendor messages under its current epoch's keys,
/// and follows SPEC §3.1 on the messages it sends.
struct DeviceView {
    keys: Option<SessionKeys>,
    confirmed: bool,
    window: ReplayWindow,
    /// The newest vendor pair it holds, and the signing key of its epoch (SPEC §8.7).
    latest: spime::seal::VendorPublicKeys,
    epoch_signer: VerifyingKey,
}

impl DeviceView {
    /// A device that holds epoch 1 of life 1 (the invalid vectors' device).
    fn new() -> Self {
        let v = vendor().public();
        DeviceView {
            keys: Some(session().0),
            confirmed: true,
            window: ReplayWindow::new(),
            latest: v,
            epoch_signer: v.signing,
        }
    }

    /// A factory-new device (a valid life).
    fn unregistered() -> Self {
        let v = vendor().public();
        DeviceView { keys: None, confirmed: false, window: ReplayWindow::new(), latest: v, epoch_signer: v.signing }
    }

    /// The device sealed `m` (a device-to-vendor vector of its life): it
    /// opened an epoch if the header says so, and SPEC §3.1 says when the
    /// header carries the key.
    fn sent(&mut self, m: &Value) {
        let name = m["name"].as_str().unwrap();
        let epoch = u32::try_from(m["epoch"].as_u64().unwrap()).unwrap();
        let eph = m["ephemeral_in_header"].as_bool().unwrap();
        let opens = self.keys.as_ref().is_none_or(|k| epoch > k.epoch);
        if opens {
            assert!(eph, "{name}: a message that opens an epoch carries its key");
            let secret: [u8; 32] =
                hex::decode(m["epoch_ephemeral_secret"].as_str().unwrap()).unwrap().try_into().unwrap();
            let (keys, _) =
                spime::seal::keys::device_start_epoch_with(&secret, &DEVICE_ID, epoch, &self.latest).unwrap();
            self.keys = Some(keys);
            self.confirmed = false;
            self.epoch_signer = self.latest.signing;
        } else {
            assert_eq!(self.keys.as_ref().unwrap().epoch, epoch, "{name}: sealed under the current epoch");
            let register = m["kind"] == 0x01;
            assert_eq!(eph, register || !self.confirmed, "{name}: the key travels exactly while unconfirmed (§3.1)");
        }
        if m["kind"] == 0x05 {
            // SPEC §8.5: after a Transfer the device forgets its keys and registers again.
            self.keys = None;
            self.confirmed = false;
        }
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
        let keys = self.keys.as_ref().ok_or(OpenError::Unauthentic)?;
        let mut buf = vec![0u8; env.plaintext_len()];
        let pt = env.decrypt(keys, &mut buf)?;
        // SPEC §4.4 step 8: a KeyUpdate names its signer, certified by VCA
        // (here the provisioned VS); other kinds are signed by the epoch's key.
        let learned = if env.header.kind == Kind::KEY_UPDATE {
            let update: KeyUpdate = codec::decode(pt.body_bytes())?;
            Some(update.certificate.verify(&vendor().public().signing)?)
        } else {
            None
        };
        let v = pt.verify(&learned.map_or(self.epoch_signer, |k| k.signing))?;
        let value = decode_json(&v)?;
        self.window.accept(env.header.counter)?;
        self.confirmed = true;
        if let Some(k) = learned {
            self.latest = k;
        }
        Ok(value)
    }
}

// ---------------------------------------------------------------- invalid vectors

fn sealed_of(valid: &Value, life: u64, name: &str) -> Vec<u8> {
    let m = valid["messages"].as_array().unwrap().iter().find(|m| m["life"] == life && m["name"] == name).unwrap();
    hex::decode(m["sealed_hex"].as_str().unwrap()).unwrap()
}

/// Seals raw body bytes as the device of life 1 under `epoch`, with a hand-made byte 0.
fn dev_seal_at(first: u8, epoch: u32, counter: u64, eph: Option<[u8; 32]>, body: &[u8]) -> Vec<u8> {
    let (d2v, _, _) = ref_keys(&epoch_secret(1, epoch), epoch);
    ref_seal(&ref_header_raw(first, epoch, counter, eph), counter, body, &SigningKey::from_bytes(&DEVICE_SEED), &d2v).0
}

fn dev_seal(first: u8, counter: u64, eph: Option<[u8; 32]>, body: &[u8]) -> Vec<u8> {
    dev_seal_at(first, EPOCH, counter, eph, body)
}

/// Seals raw body bytes as the vendor under life 1's epoch 1.
fn ven_seal(first: u8, counter: u64, body: &[u8]) -> Vec<u8> {
    let (_, v2d, _) = ref_keys(&epoch_secret(1, 1), 1);
    ref_seal(
        &ref_header_raw(first, EPOCH, counter, None),
        counter,
        body,
        &SigningKey::from_bytes(&VENDOR_SIGNING_SEED),
        &v2d,
    )
    .0
}

/// Seals raw body bytes as the vendor under life 1's epoch 1, signed by `signer`.
fn ven_seal_by(first: u8, counter: u64, body: &[u8], signer: &[u8; 32]) -> Vec<u8> {
    let (_, v2d, _) = ref_keys(&epoch_secret(1, 1), 1);
    ref_seal(&ref_header_raw(first, EPOCH, counter, None), counter, body, &SigningKey::from_bytes(signer), &v2d).0
}

/// Byte 0 of the kinds without an ephemeral key (SPEC §4.1).
const USAGE_FIRST: u8 = 0x22;
const FAULT_FIRST: u8 = 0x23;
const CONSENT_FIRST: u8 = 0x24;
const TRANSFER_FIRST: u8 = 0x25;
const NOTICE_FIRST: u8 = 0x2a;
const KEY_UPDATE_FIRST: u8 = 0x2b;

/// Header bytes given raw (byte 0, the device id, the epoch and counter varint bytes), padded with zeros
/// to `len`: refused while the header is parsed, before any key is needed.
fn raw_envelope(first: u8, epoch: &[u8], counter: &[u8], len: usize) -> Vec<u8> {
    let mut v = vec![first];
    v.extend_from_slice(&DEVICE_ID.0);
    v.extend_from_slice(epoch);
    v.extend_from_slice(counter);
    v.resize(len.max(v.len()), 0);
    v
}

/// `s + L`: the same signature with a non-canonical `s` (SPEC §2.1 rule 1).
fn non_canonical_s(sig: [u8; 64]) -> [u8; 64] {
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut out = sig;
    let mut carry = 0u16;
    for i in 0..32 {
        let v = u16::from(sig[32 + i]) + u16::from(L[i]) + carry;
        out[32 + i] = v as u8;
        carry = v >> 8;
    }
    out
}

/// SPEC §4: encrypt `body || sig` under `key` with the header as associated data.
fn ref_encrypt(header: &[u8], counter: u64, body: &[u8], sig: &[u8; 64], key: &[u8; 32]) -> Vec<u8> {
    let nonce = ref_nonce(header[0] & 0x08 != 0, counter);
    let mut buf = body.to_vec();
    buf.extend_from_slice(sig);
    let tag = ChaCha20Poly1305::new(key.into())
        .encrypt_inout_detached(&Nonce::from(nonce), header, buf.as_mut_slice().into())
        .unwrap();
    let mut out = header.to_vec();
    out.extend_from_slice(&buf);
    out.extend_from_slice(&tag);
    out
}

fn splice(bytes: &[u8], at: usize, remove: usize, insert: &[u8]) -> Vec<u8> {
    let mut v = bytes[..at].to_vec();
    v.extend_from_slice(insert);
    v.extend_from_slice(&bytes[at + remove..]);
    v
}

fn consent_body(state: ConsentState) -> Vec<u8> {
    enc(&ConsentUpdate { consent: SignedConsent { state, owner: None } })
}

/// Where `state.grants` starts in an encoded state.
fn grants_offset(s: &ConsentState) -> usize {
    enc(&s.version).len() + enc(&s.issued_at).len() + enc(&s.reconfirm_by).len() + 32
}

struct Case {
    name: &'static str,
    rule: &'static str,
    device_opens: bool,
    before: Vec<Vec<u8>>,
    sealed: Vec<u8>,
    error: OpenError,
    /// The vendor pipeline's error where SPEC §10 maps it (None: the same as the core's).
    vendor: Option<IngestError>,
}

/// SPEC §10: the vendor pipeline's name for a core error.
fn vendor_error_of(c: &Case) -> IngestError {
    if let Some(e) = &c.vendor {
        return e.clone();
    }
    match c.error {
        OpenError::Decode(d) => IngestError::Decode(d),
        OpenError::Replay(r) => IngestError::Replay(r),
        OpenError::WrongDirection(k) => IngestError::WrongDirection(k),
        OpenError::WeakKey => IngestError::WeakKey,
        OpenError::Unauthentic | OpenError::BadCertificate => IngestError::Unauthentic,
        OpenError::WrongDevice => IngestError::CertificateMismatch,
        OpenError::WrongEpoch { expected, got } if got > expected => {
            IngestError::UnopenedEpoch { current: expected, got }
        }
        OpenError::WrongEpoch { expected, got } => IngestError::StaleEpoch { current: expected, got },
        e => panic!("{}: no vendor name for {e:?}", c.name),
    }
}

#[allow(clippy::too_many_lines)]
fn invalid_cases(valid: &Value) -> Vec<Case> {
    use spime::error::{DecodeError as D, List, ReplayError, Rule};
    let register_v = sealed_of(valid, 1, "register");
    let usage_v = sealed_of(valid, 1, "usage");
    let usage_eph = sealed_of(valid, 1, "usage_reoffering_key");
    let notice_v = sealed_of(valid, 1, "notice");
    let receipt_v = sealed_of(valid, 1, "receipt");
    let c16384 = sealed_of(valid, 1, "usage_counter_16384");
    let (d2v, v2d, eph_pub) = ref_keys(&epoch_secret(1, 1), 1);
    let (reg_body, usage_body, fault_body, notice_body, receipt_body) =
        (enc(&register()), enc(&usage()), enc(&fault()), enc(&notice()), enc(&receipt()));
    let dev_key = SigningKey::from_bytes(&DEVICE_SEED);
    let mut cases = Vec::new();
    let mut add = |name, rule, device_opens: bool, before: Vec<Vec<u8>>, sealed, error: OpenError| {
        cases.push(Case { name, rule, device_opens, before, sealed, error, vendor: None });
    };
    let reg = || vec![register_v.clone()];
    let set = |b: &[u8], i: usize, v: u8| {
        let mut b = b.to_vec();
        b[i] = v;
        b
    };

    // SPEC §4.4 step 1–3: the header and the envelope's length.
    add("empty", "an empty input is truncated", false, reg(), vec![], D::Truncated { needed: 11, have: 0 }.into());
    for (name, v) in [("version_0", 0u8), ("version_2", 2), ("version_7", 7)] {
        add(
            name,
            "the version (byte 0 bits 7–5) must be 1",
            false,
            reg(),
            set(&usage_v, 0, (v << 5) | 0x02),
            D::UnsupportedVersion(v).into(),
        );
    }
    for (name, rule, n) in [
        ("unknown_kind_0", "kind nibble 0x0 is no kind", 0u8),
        ("unknown_kind_7", "kind nibble 0x7 is no kind (device to vendor)", 7),
        ("unknown_kind_8", "kind nibble 0x8 is no kind (vendor to device)", 8),
        ("unknown_kind_c", "kind nibble 0xC is no kind (vendor to device)", 0xc),
        ("unknown_kind_f", "kind nibble 0xF is no kind", 0xf),
    ] {
        add(name, rule, false, reg(), set(&usage_v, 0, 0x20 | n), D::UnknownKind(n).into());
    }
    add(
        "register_without_ephemeral",
        "a Register always carries an ephemeral key",
        false,
        vec![],
        dev_seal(0x21, 0, None, &reg_body),
        D::InvalidFlags(0x21).into(),
    );
    let receipt_eph = ref_seal(
        &ref_header_raw(0x39, EPOCH, 5, Some(eph_pub)),
        5,
        &receipt_body,
        &SigningKey::from_bytes(&VENDOR_SIGNING_SEED),
        &v2d,
    )
    .0;
    add(
        "receipt_with_ephemeral",
        "vendor-to-device kinds never carry an ephemeral key",
        true,
        vec![],
        receipt_eph,
        D::InvalidFlags(0x39).into(),
    );
    add(
        "notice_with_ephemeral",
        "vendor-to-device kinds never carry an ephemeral key",
        true,
        vec![],
        set(&notice_v, 0, 0x3a),
        D::InvalidFlags(0x3a).into(),
    );
    add(
        "header_one_byte",
        "a header is at least 11 bytes",
        false,
        reg(),
        usage_v[..1].to_vec(),
        D::Truncated { needed: 11, have: 1 }.into(),
    );
    add(
        "header_ten_bytes",
        "a header is at least 11 bytes",
        false,
        reg(),
        usage_v[..10].to_vec(),
        D::Truncated { needed: 11, have: 10 }.into(),
    );
    add(
        "truncated_in_epoch",
        "the input ends inside the epoch varint",
        false,
        reg(),
        raw_envelope(USAGE_FIRST, &[0x80, 0x80], &[], 11),
        D::Truncated { needed: 12, have: 11 }.into(),
    );
    add(
        "truncated_in_counter",
        "the input ends inside the counter varint",
        false,
        reg(),
        c16384[..12].to_vec(),
        D::Truncated { needed: 13, have: 12 }.into(),
    );
    add(
        "truncated_in_ephemeral",
        "the input ends inside the ephemeral key",
        false,
        vec![],
        register_v[..31].to_vec(),
        D::Truncated { needed: 43, have: 31 }.into(),
    );
    add(
        "truncated",
        "shorter than header + signature + tag",
        false,
        reg(),
        usage_v[..90].to_vec(),
        D::Truncated { needed: 91, have: 90 }.into(),
    );
    add(
        "truncated_opener",
        "shorter than header (with its key) + signature + tag",
        false,
        vec![],
        register_v[..122].to_vec(),
        D::Truncated { needed: 123, have: 122 }.into(),
    );
    add(
        "epoch_six_bytes",
        "the epoch varint takes at most 5 bytes",
        false,
        reg(),
        raw_envelope(USAGE_FIRST, &[0x80, 0x80, 0x80, 0x80, 0x80, 0x01], &[0x05], 100),
        D::Malformed.into(),
    );
    add(
        "epoch_above_u32",
        "the epoch is a u32 (its fifth byte at most 0x0F)",
        false,
        reg(),
        raw_envelope(USAGE_FIRST, &[0xff, 0xff, 0xff, 0xff, 0x1f], &[0x05], 100),
        D::Malformed.into(),
    );
    add(
        "epoch_noncanonical",
        "the epoch varint is in its shortest form",
        false,
        reg(),
        raw_envelope(USAGE_FIRST, &[0x81, 0x00], &[0x05], 100),
        D::NonCanonical.into(),
    );
    add(
        "counter_eleven_bytes",
        "the counter varint takes at most 10 bytes",
        false,
        reg(),
        raw_envelope(USAGE_FIRST, &[0x01], &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01], 100),
        D::Malformed.into(),
    );
    add(
        "counter_above_u64",
        "the counter is a u64 (its tenth byte at most 0x01)",
        false,
        reg(),
        raw_envelope(USAGE_FIRST, &[0x01], &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02], 100),
        D::Malformed.into(),
    );
    add(
        "counter_noncanonical",
        "the counter varint is in its shortest form",
        false,
        reg(),
        raw_envelope(USAGE_FIRST, &[0x01], &[0x85, 0x00], 100),
        D::NonCanonical.into(),
    );
    let mut o = usage_v.clone();
    o.resize(MAX_SEALED_LEN + 1, 0);
    add(
        "oversized",
        "longer than the longest envelope of any kind",
        false,
        reg(),
        o,
        D::Oversized { len: MAX_SEALED_LEN + 1, max: MAX_SEALED_LEN }.into(),
    );

    // Step 4: direction and device.
    add(
        "device_kind_to_device",
        "a device opens only vendor-to-device kinds",
        true,
        vec![],
        usage_v.clone(),
        OpenError::WrongDirection(Kind::USAGE),
    );
    add(
        "vendor_kind_to_vendor",
        "a vendor opens only device-to-vendor kinds",
        false,
        vec![],
        notice_v.clone(),
        OpenError::WrongDirection(Kind::NOTICE),
    );
    let mut other = receipt_v.clone();
    other[8] ^= 0x01;
    add(
        "receipt_for_other_device",
        "a device opens only messages naming its own id",
        true,
        vec![],
        other,
        OpenError::WrongDevice,
    );

    // Step 5: the replay window, before any key.
    add(
        "replayed",
        "each (device, counter) is accepted once",
        false,
        vec![register_v.clone(), usage_v.clone()],
        usage_v.clone(),
        ReplayError::Duplicate(3).into(),
    );
    add(
        "below_window",
        "a counter 128 or more below the highest accepted is refused",
        false,
        vec![register_v.clone(), dev_seal(USAGE_FIRST, 200, None, &usage_body)],
        usage_v.clone(),
        ReplayError::TooOld { counter: 3, highest: 200 }.into(),
    );
    let mut forged_dup = usage_v.clone();
    forged_dup[40] ^= 0x04;
    add(
        "replay_checked_before_authentication",
        "the window refuses a used counter before decryption",
        false,
        vec![register_v.clone(), usage_v.clone()],
        forged_dup,
        ReplayError::Duplicate(3).into(),
    );
    add(
        "notice_replayed",
        "the device accepts each vendor counter once",
        true,
        vec![notice_v.clone()],
        notice_v.clone(),
        ReplayError::Duplicate(2).into(),
    );

    // Step 6: keys and epochs.
    let small: [u8; 32] =
        hex::decode("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800").unwrap().try_into().unwrap();
    add(
        "small_order_ephemeral",
        "an all-zero X25519 shared secret is refused",
        false,
        vec![],
        ref_seal(&ref_header(0x01, EPOCH, 0, Some(small)), 0, &reg_body, &dev_key, &[0u8; 32]).0,
        OpenError::WeakKey,
    );
    add(
        "unopened_epoch",
        "without an ephemeral key only the current epoch is accepted",
        false,
        reg(),
        dev_seal_at(USAGE_FIRST, 2, 5, None, &usage_body),
        OpenError::WrongEpoch { expected: 1, got: 2 },
    );
    let (_, _, eph_pub_2) = ref_keys(&epoch_secret(1, 2), 2);
    let epoch2 = dev_seal_at(0x33, 2, 16_385, Some(eph_pub_2), &fault_body);
    add(
        "stale_epoch",
        "once a new epoch is open, older epochs are refused",
        false,
        vec![register_v.clone(), epoch2],
        dev_seal(USAGE_FIRST, 16_386, None, &usage_body),
        OpenError::WrongEpoch { expected: 2, got: 1 },
    );
    let (_, v2d_2, _) = ref_keys(&epoch_secret(1, 2), 2);
    add(
        "receipt_other_epoch",
        "a device opens vendor messages of its current epoch only",
        true,
        vec![],
        ref_seal(
            &ref_header(0x81, 2, 5, None),
            5,
            &receipt_body,
            &SigningKey::from_bytes(&VENDOR_SIGNING_SEED),
            &v2d_2,
        )
        .0,
        OpenError::WrongEpoch { expected: 1, got: 2 },
    );
    add(
        "unregistered_device",
        "a device with no current epoch must open one with a Register",
        false,
        vec![],
        usage_v.clone(),
        OpenError::Unauthentic,
    );
    let mut hd = usage_v.clone();
    hd[5] ^= 0x80;
    add(
        "device_relabelled",
        "the device id is AEAD associated data and signed",
        false,
        reg(),
        hd,
        OpenError::Unauthentic,
    );

    // Steps 7–9: AEAD, certificate, signature.
    let mut hc = usage_v.clone();
    hc[10] ^= 0x06; // the one-byte counter varint: 3 becomes 5
    add("header_counter_changed", "the header is AEAD associated data", false, reg(), hc, OpenError::Unauthentic);
    add(
        "kind_relabelled",
        "the kind is AEAD associated data and signed",
        false,
        reg(),
        set(&usage_v, 0, (usage_v[0] & 0xf0) | 0x03),
        OpenError::Unauthentic,
    );
    let mut ek = usage_eph.clone();
    ek[20] ^= 0x01;
    add("ephemeral_key_changed", "a re-offered key is AEAD associated data", false, reg(), ek, OpenError::Unauthentic);
    let mut ct = usage_v.clone();
    ct[40] ^= 0x04;
    add("ciphertext_bit_flipped", "the ciphertext is authenticated", false, reg(), ct, OpenError::Unauthentic);
    let mut tg = usage_v.clone();
    let last = tg.len() - 1;
    tg[last] ^= 0x80;
    add("tag_bit_flipped", "the Poly1305 tag must verify", false, reg(), tg, OpenError::Unauthentic);
    let other_key = SigningKey::from_bytes(&[0x66; 32]);
    add(
        "signed_by_other_key",
        "the signature must verify under the certified device key",
        false,
        reg(),
        ref_seal(&ref_header(0x02, EPOCH, 5, None), 5, &usage_body, &other_key, &d2v).0,
        OpenError::Unauthentic,
    );
    let h = ref_header(0x02, EPOCH, 5, None);
    let (_, sig) = ref_seal(&h, 5, &usage_body, &dev_key, &d2v);
    add(
        "signature_s_not_canonical",
        "signatures are verified strictly: s < L (SPEC §2.1)",
        false,
        reg(),
        ref_encrypt(&h, 5, &usage_body, &non_canonical_s(sig), &d2v),
        OpenError::Unauthentic,
    );
    add(
        "notice_not_signed_by_vendor",
        "vendor messages verify under the vendor signing key",
        true,
        vec![],
        ref_seal(&ref_header(0x82, EPOCH, 5, None), 5, &notice_body, &dev_key, &v2d).0,
        OpenError::Unauthentic,
    );
    add(
        "notice_under_device_key",
        "each direction has its own key",
        true,
        vec![],
        ref_seal(
            &ref_header(0x82, EPOCH, 5, None),
            5,
            &notice_body,
            &SigningKey::from_bytes(&VENDOR_SIGNING_SEED),
            &d2v,
        )
        .0,
        OpenError::Unauthentic,
    );
    let other_id = spime::wire::DeviceId([0xd0, 0x0d, 1, 2, 3, 4, 5, 7]);
    let cert_for = |device, device_key: [u8; 32], vendor_signed: bool| {
        let body = CertificateBody {
            device,
            device_key,
            model: "kettle-k2".try_into().unwrap(),
            hardware_revision: 3,
            issued_at: T0 - 86_400,
            not_after: None,
        };
        let mut c = DeviceCertificate::issue(body, vendor().signing()).unwrap();
        if !vendor_signed {
            c.signature = bytes64(0x01);
        }
        enc(&Register { certificate: c, ..register() })
    };
    let dpk = device().public().to_bytes();
    add(
        "certificate_for_other_device",
        "the certificate names the header's device",
        false,
        vec![],
        dev_seal(0x31, 0, Some(eph_pub), &cert_for(other_id, dpk, true)),
        OpenError::WrongDevice,
    );
    add(
        "certificate_doubly_bad",
        "the device id is checked before the certificate's signature",
        false,
        vec![],
        dev_seal(0x31, 0, Some(eph_pub), &cert_for(other_id, dpk, false)),
        OpenError::WrongDevice,
    );
    add(
        "certificate_not_from_vendor",
        "the certificate verifies under the vendor signing key",
        false,
        vec![],
        dev_seal(0x31, 0, Some(eph_pub), &cert_for(DEVICE_ID, dpk, false)),
        OpenError::BadCertificate,
    );
    let mut identity = [0u8; 32];
    identity[0] = 1;
    add(
        "certificate_small_order_key",
        "a certified device key is not of small order",
        false,
        vec![],
        dev_seal(0x31, 0, Some(eph_pub), &cert_for(DEVICE_ID, identity, true)),
        OpenError::BadCertificate,
    );
    add(
        "register_signed_by_other_key",
        "a Register is signed by the key its certificate certifies",
        false,
        vec![],
        ref_seal(&ref_header(0x01, EPOCH, 0, Some(eph_pub)), 0, &reg_body, &other_key, &d2v).0,
        OpenError::Unauthentic,
    );

    // Step 10: bodies (SPEC §5.1, §5.5–5.10, §6.2).
    let u = usage();
    let usage_with = |f: &dyn Fn(&mut Usage)| {
        let mut u = usage();
        f(&mut u);
        dev_seal(USAGE_FIRST, 5, None, &enc(&u))
    };
    let fault_with = |f: &dyn Fn(&mut Fault)| {
        let mut x = fault();
        f(&mut x);
        dev_seal(FAULT_FIRST, 5, None, &enc(&x))
    };
    let consent_with = |f: &dyn Fn(&mut ConsentState)| {
        let mut s = consent_state(2);
        f(&mut s);
        dev_seal(CONSENT_FIRST, 5, None, &consent_body(s))
    };
    let notice_with = |f: &dyn Fn(&mut Notice)| {
        let mut n = notice();
        f(&mut n);
        ven_seal(NOTICE_FIRST, 5, &enc(&n))
    };
    let usage_raw = |b: Vec<u8>| dev_seal(USAGE_FIRST, 5, None, &b);
    let metrics_at =
        enc(&u.purpose).len() + enc(&u.consent_version).len() + enc(&u.window_start).len() + enc(&u.window_end).len();
    add(
        "body_oversized",
        "a body is at most its kind's maximum (Transfer: 112 bytes)",
        false,
        reg(),
        dev_seal(TRANSFER_FIRST, 5, None, &[[0x80; 112].as_slice(), &[0x01]].concat()),
        D::Oversized { len: 113, max: 112 }.into(),
    );
    let mut trailing = usage_body.clone();
    trailing.push(0);
    add(
        "trailing_byte_in_body",
        "a body is exactly one value",
        false,
        reg(),
        usage_raw(trailing),
        D::TrailingBytes.into(),
    );
    add(
        "noncanonical_varint",
        "every integer uses its shortest varint",
        false,
        reg(),
        usage_raw(splice(&usage_body, 0, 1, &[0x83, 0x00])),
        D::NonCanonical.into(),
    );
    add(
        "body_ends_early",
        "a body that ends inside a value is malformed",
        false,
        reg(),
        usage_raw(usage_body[..usage_body.len() - 1].to_vec()),
        D::Malformed.into(),
    );
    add(
        "varint_above_u16",
        "a u16 varint above 65535 is malformed",
        false,
        reg(),
        usage_raw(splice(&usage_body, 0, 1, &[0xff, 0xff, 0x04])),
        D::Malformed.into(),
    );
    let sev_at = enc(&3u16).len() + enc(&1u32).len() + enc(&0x0201u32).len();
    add(
        "unknown_enum_index",
        "an enum index beyond the variants (Severity 4)",
        false,
        reg(),
        dev_seal(FAULT_FIRST, 5, None, &set(&fault_body, sev_at, 4)),
        D::Malformed.into(),
    );
    let cb = consent_body(consent_state(2));
    add(
        "option_tag_2",
        "an Option tag is 0 or 1",
        false,
        reg(),
        dev_seal(CONSENT_FIRST, 5, None, &set(&cb, cb.len() - 1, 2)),
        D::Malformed.into(),
    );
    let mut over = usage_body[..metrics_at].to_vec();
    over.push(17);
    for i in 0..17u16 {
        over.extend_from_slice(&enc(&Metric {
            id: i,
            category: DataCategory::UsageCounters,
            value: MetricValue::Counter(1),
        }));
    }
    add(
        "list_over_capacity",
        "a list holds at most its capacity (17 metrics)",
        false,
        reg(),
        usage_raw(over),
        D::Malformed.into(),
    );
    let title_at = notice_body.windows(4).position(|w| w == b"Time").unwrap();
    add(
        "invalid_utf8",
        "strings are UTF-8",
        true,
        vec![],
        ven_seal(NOTICE_FIRST, 5, &set(&notice_body, title_at, 0xff)),
        D::Malformed.into(),
    );
    add(
        "string_over_capacity",
        "a string holds at most its capacity (a 49-byte title)",
        true,
        vec![],
        ven_seal(NOTICE_FIRST, 5, &splice(&notice_body, title_at - 1, 16, &[&[49u8][..], &[b'x'; 49]].concat())),
        D::Malformed.into(),
    );
    add(
        "length_prefix_six_bytes",
        "a length prefix is a u32 varint: six bytes are malformed on every platform",
        false,
        reg(),
        usage_raw(splice(&usage_body, metrics_at, 1, &[0x84, 0x80, 0x80, 0x80, 0x80, 0x00])),
        D::Malformed.into(),
    );
    add(
        "length_prefix_noncanonical",
        "a length prefix uses its shortest varint",
        false,
        reg(),
        usage_raw(splice(&usage_body, metrics_at, 1, &[0x84, 0x00])),
        D::NonCanonical.into(),
    );
    add(
        "enum_index_noncanonical",
        "an enum index uses its shortest varint",
        false,
        reg(),
        dev_seal(FAULT_FIRST, 5, None, &splice(&fault_body, sev_at, 1, &[0x82, 0x00])),
        D::NonCanonical.into(),
    );
    add(
        "data_category_7",
        "a DataCategory is 0..=6",
        false,
        reg(),
        usage_raw(set(&usage_body, metrics_at + 2, 7)),
        D::Malformed.into(),
    );
    let s2 = consent_state(2);
    let cats_at = grants_offset(&s2) + 1 + enc(&s2.grants[0].purpose).len();
    add(
        "category_set_bit_7",
        "a CategorySet has no bit above 6",
        false,
        reg(),
        dev_seal(CONSENT_FIRST, 5, None, &splice(&cb, cats_at, 1, &[0x80, 0x01])),
        D::Malformed.into(),
    );
    let chan_at = enc(&77u32).len() + enc(&4u16).len();
    add(
        "channel_4",
        "a Channel is 0..=3",
        true,
        vec![],
        ven_seal(NOTICE_FIRST, 5, &set(&notice_body, chan_at, 4)),
        D::Malformed.into(),
    );
    let cg_at = grants_offset(&s2) + enc(&s2.grants).len() + 1 + enc(&s2.contact.grants[0].purpose).len();
    add(
        "channel_set_bit_4",
        "a ChannelSet has no bit above 3",
        false,
        reg(),
        dev_seal(CONSENT_FIRST, 5, None, &set(&cb, cg_at, 0x13)),
        D::Malformed.into(),
    );
    add(
        "unknown_purpose",
        "purpose ids 10..=0x7fff are reserved (Usage)",
        false,
        reg(),
        usage_raw(set(&usage_body, 0, 0x0a)),
        D::UnknownPurpose(10).into(),
    );
    add(
        "unknown_purpose_notice",
        "purpose ids 10..=0x7fff are reserved (Notice)",
        true,
        vec![],
        ven_seal(NOTICE_FIRST, 5, &splice(&notice_body, enc(&77u32).len(), 1, &[0xff, 0xff, 0x01])),
        D::UnknownPurpose(0x7fff).into(),
    );
    let rs = consent_state(2);
    let grant_p = grants_offset(&rs) + 1;
    add(
        "unknown_purpose_grant",
        "consent rule 0: no reserved purpose in grants",
        false,
        reg(),
        dev_seal(CONSENT_FIRST, 5, None, &set(&cb, grant_p, 10)),
        D::UnknownPurpose(10).into(),
    );
    let cgp = grants_offset(&rs) + enc(&rs.grants).len() + 1;
    add(
        "unknown_purpose_contact_grant",
        "consent rule 0: no reserved purpose in contact grants",
        false,
        reg(),
        dev_seal(CONSENT_FIRST, 5, None, &set(&cb, cgp, 11)),
        D::UnknownPurpose(11).into(),
    );
    let capp = grants_offset(&rs)
        + enc(&rs.grants).len()
        + enc(&rs.contact.grants).len()
        + enc(&rs.contact.quiet_hours).len()
        + 1;
    add(
        "unknown_purpose_cap",
        "consent rule 0: no reserved purpose in frequency caps",
        false,
        reg(),
        dev_seal(CONSENT_FIRST, 5, None, &set(&cb, capp, 12)),
        D::UnknownPurpose(12).into(),
    );
    add(
        "usage_window_reversed",
        "Usage: window_end >= window_start",
        false,
        reg(),
        usage_with(&|u| u.window_end = u.window_start - 1),
        D::OutOfRange(Rule::UsageWindow).into(),
    );
    add(
        "location_value_without_category",
        "Usage: a Location value has category Location",
        false,
        reg(),
        usage_with(&|u| u.metrics[3].category = DataCategory::Environment),
        D::OutOfRange(Rule::LocationCategory).into(),
    );
    add(
        "location_category_without_value",
        "Usage: category Location carries a Location value",
        false,
        reg(),
        usage_with(&|u| u.metrics[0].category = DataCategory::Location),
        D::OutOfRange(Rule::LocationCategory).into(),
    );
    add(
        "location_precision_none",
        "Usage: a Location value has a precision",
        false,
        reg(),
        usage_with(&|u| {
            u.metrics[3].value = MetricValue::Location { lat_e7: 0, lon_e7: 0, precision: LocationPrecision::None }
        }),
        D::OutOfRange(Rule::LocationPrecisionNone).into(),
    );
    add(
        "fault_zero_occurrences",
        "Fault: occurrences >= 1",
        false,
        reg(),
        fault_with(&|f| f.occurrences = 0),
        D::OutOfRange(Rule::FaultOccurrences).into(),
    );
    add(
        "fault_seen_reversed",
        "Fault: last_seen >= first_seen",
        false,
        reg(),
        fault_with(&|f| f.last_seen = f.first_seen - 1),
        D::OutOfRange(Rule::FaultSeen).into(),
    );
    add(
        "notice_expires_before_issued",
        "Notice: expires_at >= issued_at",
        true,
        vec![],
        notice_with(&|n| n.expires_at = n.issued_at - 1),
        D::OutOfRange(Rule::NoticeExpiry).into(),
    );
    add(
        "reconfirm_not_after_issue",
        "consent rule 1: issued_at < reconfirm_by",
        false,
        reg(),
        consent_with(&|s| s.reconfirm_by = s.issued_at),
        D::OutOfRange(Rule::ReconfirmWindow).into(),
    );
    add(
        "reconfirm_too_far",
        "consent rule 1: reconfirm_by - issued_at <= MAX_RECONFIRM",
        false,
        reg(),
        consent_with(&|s| s.reconfirm_by = s.issued_at + MAX_RECONFIRM + 1),
        D::OutOfRange(Rule::ReconfirmWindow).into(),
    );
    add(
        "grants_unordered",
        "consent rule 2: grants strictly ascending by purpose",
        false,
        reg(),
        consent_with(&|s| s.grants.swap(0, 1)),
        D::Unordered(List::Grants).into(),
    );
    add(
        "grant_without_categories",
        "consent rule 3: no grant without categories",
        false,
        reg(),
        consent_with(&|s| s.grants[0].categories = CategorySet::EMPTY),
        D::OutOfRange(Rule::GrantWithoutCategories).into(),
    );
    add(
        "grant_for_essential",
        "consent rule 4: no grant for Essential",
        false,
        reg(),
        consent_with(&|s| s.grants[0].purpose = Purpose::ESSENTIAL),
        D::OutOfRange(Rule::GrantForEssential).into(),
    );
    add(
        "grant_location_without_precision",
        "consent rule 5: Location granted with a precision",
        false,
        reg(),
        consent_with(&|s| s.grants[1].location = LocationPrecision::None),
        D::OutOfRange(Rule::GrantLocation).into(),
    );
    add(
        "grant_precision_without_location",
        "consent rule 5: a precision only with Location",
        false,
        reg(),
        consent_with(&|s| s.grants[0].location = LocationPrecision::City),
        D::OutOfRange(Rule::GrantLocation).into(),
    );
    add(
        "contact_grants_unordered",
        "consent rule 6: contact grants strictly ascending",
        false,
        reg(),
        consent_with(&|s| {
            s.contact.grants.insert(0, ContactGrant { purpose: Purpose::MARKETING, channels: ChannelSet::ALL }).unwrap()
        }),
        D::Unordered(List::ContactGrants).into(),
    );
    add(
        "contact_grant_without_channels",
        "consent rule 7: no contact grant without channels",
        false,
        reg(),
        consent_with(&|s| s.contact.grants[0].channels = ChannelSet::EMPTY),
        D::OutOfRange(Rule::ContactGrantWithoutChannels).into(),
    );
    add(
        "caps_unordered",
        "consent rule 8: frequency caps strictly ascending",
        false,
        reg(),
        consent_with(&|s| {
            s.contact
                .caps
                .insert(0, FrequencyCap { purpose: Purpose::MARKETING, max_notices: 1, period_seconds: 60 })
                .unwrap()
        }),
        D::Unordered(List::FrequencyCaps).into(),
    );
    add(
        "muted_topics_unordered",
        "consent rule 9: muted topics strictly ascending",
        false,
        reg(),
        consent_with(&|s| s.contact.muted_topics.insert(0, 9).unwrap()),
        D::Unordered(List::MutedTopics).into(),
    );
    add(
        "quiet_hours_minute_1440",
        "consent rule 10: quiet-hours minutes below 1440",
        false,
        reg(),
        consent_with(&|s| s.contact.quiet_hours.as_mut().unwrap().start_minute = 1440),
        D::OutOfRange(Rule::QuietHoursMinute).into(),
    );
    add(
        "quiet_hours_empty",
        "consent rule 10: quiet hours do not start when they end",
        false,
        reg(),
        consent_with(&|s| s.contact.quiet_hours.as_mut().unwrap().end_minute = 22 * 60),
        D::OutOfRange(Rule::QuietHoursEmpty).into(),
    );
    add(
        "utc_offset_841",
        "consent rule 10: a UTC offset within ±840 minutes",
        false,
        reg(),
        consent_with(&|s| s.contact.quiet_hours.as_mut().unwrap().utc_offset_minutes = -841),
        D::OutOfRange(Rule::UtcOffset).into(),
    );
    add(
        "cap_period_zero",
        "consent rule 11: a cap's period is at least 1 s",
        false,
        reg(),
        consent_with(&|s| s.contact.caps[0].period_seconds = 0),
        D::OutOfRange(Rule::CapPeriod).into(),
    );
    add(
        "metrics_unordered",
        "Usage: metric ids strictly ascending",
        false,
        reg(),
        usage_with(&|u| u.metrics.swap(0, 1)),
        D::Unordered(List::Metrics).into(),
    );
    add(
        "usage_first_rule_wins",
        "Usage: the window is checked before the metric order (SPEC §5.5)",
        false,
        reg(),
        usage_with(&|u| {
            u.window_end = u.window_start - 1;
            u.metrics.swap(0, 1);
        }),
        D::OutOfRange(Rule::UsageWindow).into(),
    );
    add(
        "consent_first_rule_wins",
        "consent rules in order: rule 2 (order) before rule 3 (empty grant)",
        false,
        reg(),
        consent_with(&|s| {
            s.grants.swap(0, 1);
            s.grants[1].categories = CategorySet::EMPTY;
        }),
        D::Unordered(List::Grants).into(),
    );
    let mut bad_reg = register();
    bad_reg.consent.state.reconfirm_by = bad_reg.consent.state.issued_at;
    add(
        "register_consent_out_of_range",
        "a Register's body is decoded (with its consent's rules) before its signature is checked",
        false,
        vec![],
        ref_seal(&ref_header(0x01, EPOCH, 0, Some(eph_pub)), 0, &enc(&bad_reg), &other_key, &d2v).0,
        D::OutOfRange(Rule::ReconfirmWindow).into(),
    );
    // SPEC §5.11, §4.4 step 8: KeyUpdate.
    let key1 = vendor_pair(1).0;
    let genuine = ref_vendor_cert(1, T0, T0 + 86_400);
    let update_body = enc(&KeyUpdate { certificate: genuine });
    let by_ca = |body: VendorKeyBody| {
        let mut msg = b"spime/v1 vendor key certificate\0".to_vec();
        msg.extend_from_slice(&enc(&body));
        let signature = Bytes64(SigningKey::from_bytes(&VENDOR_SIGNING_SEED).sign(&msg).to_bytes());
        enc(&KeyUpdate { certificate: VendorKeyCertificate { body, signature } })
    };
    let mut foreign = genuine;
    let mut msg = b"spime/v1 vendor key certificate\0".to_vec();
    msg.extend_from_slice(&enc(&foreign.body));
    foreign.signature = Bytes64(SigningKey::from_bytes(&key1).sign(&msg).to_bytes());
    add(
        "key_update_foreign_authority",
        "a KeyUpdate's certificate must be signed by VCA (here the provisioned VS)",
        true,
        vec![],
        ven_seal_by(KEY_UPDATE_FIRST, 5, &enc(&KeyUpdate { certificate: foreign }), &key1),
        OpenError::BadCertificate,
    );
    add(
        "key_update_not_signed_by_its_key",
        "a KeyUpdate is signed by the key it certifies, not by the key the device holds",
        true,
        vec![],
        ven_seal_by(KEY_UPDATE_FIRST, 5, &update_body, &VENDOR_SIGNING_SEED),
        OpenError::Unauthentic,
    );
    let mut weak = genuine.body;
    weak.signing = [0; 32];
    weak.signing[0] = 1;
    add(
        "key_update_weak_key",
        "a certified signing key of small order (the identity) is refused before the signature is checked",
        true,
        vec![],
        ven_seal_by(KEY_UPDATE_FIRST, 5, &by_ca(weak), &key1),
        OpenError::BadCertificate,
    );
    add(
        "key_update_validity",
        "a vendor key certificate's not_after is not before its not_before",
        true,
        vec![],
        ven_seal_by(KEY_UPDATE_FIRST, 5, &by_ca(VendorKeyBody { not_after: T0 - 1, ..genuine.body }), &key1),
        D::OutOfRange(Rule::VendorKeyValidity).into(),
    );
    add(
        "key_update_trailing",
        "no bytes after a KeyUpdate body",
        true,
        vec![],
        ven_seal_by(KEY_UPDATE_FIRST, 5, &[&update_body[..], &[0]].concat(), &key1),
        D::TrailingBytes.into(),
    );
    add(
        "key_update_truncated",
        "a KeyUpdate body cut short",
        true,
        vec![],
        ven_seal_by(KEY_UPDATE_FIRST, 5, &update_body[..update_body.len() - 1], &key1),
        D::Malformed.into(),
    );
    add(
        "key_update_non_canonical",
        "the serial varint in its shortest form",
        true,
        vec![],
        ven_seal_by(KEY_UPDATE_FIRST, 5, &splice(&update_body, 0, 1, &[0x81, 0x00]), &key1),
        D::NonCanonical.into(),
    );
    add(
        "key_update_oversized",
        "a KeyUpdate body is at most 153 bytes",
        true,
        vec![],
        ven_seal_by(KEY_UPDATE_FIRST, 5, &[0u8; 154], &key1),
        D::Oversized { len: 154, max: 153 }.into(),
    );
    // SPEC §10: a vendor knows which devices it registered.
    for c in &mut cases {
        if matches!(c.name, "unregistered_device" | "device_relabelled") {
            c.vendor = Some(IngestError::UnknownDevice);
        }
    }
    cases
}

// ---------------------------------------------------------------- the consent-evaluation table

const PRECISIONS: [&str; 6] = ["None", "Country", "Region", "City", "Neighbourhood", "Exact"];
const NOTICE_KINDS: [NoticeKind; 5] = [
    NoticeKind::MaintenanceDue,
    NoticeKind::SuppliesOffer,
    NoticeKind::Recall,
    NoticeKind::Instructions,
    NoticeKind::UpdateAvailable,
];

fn precision_index(p: LocationPrecision) -> usize {
    LocationPrecision::ALL.iter().position(|x| *x == p).unwrap()
}

/// Midnight UTC of T0's day (T0 is 11:06:40 UTC).
const D0: u64 = T0 - T0 % 86_400;
const H: u64 = 3_600;

/// A state with quiet hours over midnight at a negative offset (UTC−05:00) and a daily cap.
fn state_evening() -> ConsentState {
    let mut s = consent_state(7);
    s.contact
        .grants
        .push(ContactGrant {
            purpose: Purpose::MARKETING,
            channels: ChannelSet::EMPTY.with(Channel::Email).with(Channel::Sms),
        })
        .unwrap();
    s.contact.quiet_hours = Some(QuietHours { start_minute: 22 * 60, end_minute: 7 * 60, utc_offset_minutes: -300 });
    s.contact.caps.push(FrequencyCap { purpose: Purpose::MARKETING, max_notices: 3, period_seconds: 86_400 }).unwrap();
    s
}

fn consent_states() -> Vec<(&'static str, ConsentState)> {
    vec![
        ("kettle", consent_state(1)),
        ("bounds", state_bounds(3)),
        ("essential_only", ConsentState::essential_only(5, T0, [0; 32])),
        ("evening", state_evening()),
        ("max", state_max(U32_5, U64_10)),
    ]
}

/// (state, purpose, categories, location index, now, Some(consent version) for a check_scope row)
type CollectRow = (&'static str, u16, u16, usize, u64, Option<u32>);
/// (state, purpose, channel, topic, notice kind index, now, history, Some(expires_at) for a check_notice row)
type ContactRow = (&'static str, u16, u8, u16, usize, u64, Vec<(u16, u64)>, Option<u64>);

fn collect_rows() -> Vec<CollectRow> {
    let reconfirm = T0 + 365 * 86_400;
    let expires = T0 + 180 * 86_400;
    let now = T0 + H;
    vec![
        ("kettle", 0, 0x01, 0, now, None),
        ("kettle", 0, 0x00, 0, now, None),
        ("kettle", 0, 0x04, 0, now, None),
        ("kettle", 0, 0x01, 3, now, None),
        ("kettle", 0, 0x01, 0, reconfirm + 1, None),
        ("kettle", 2, 0x01, 0, reconfirm, None),
        ("kettle", 2, 0x05, 0, reconfirm - 1, None),
        ("kettle", 7, 0x02, 0, now, None),
        ("kettle", 7, 0x00, 0, now, None),
        ("kettle", 3, 0x02, 0, expires, None),
        ("kettle", 3, 0x02, 0, expires - 1, None),
        ("kettle", 3, 0x12, 0, now, None),
        ("kettle", 3, 0x02, 4, now, None),
        ("kettle", 3, 0x08, 0, now, None),
        ("kettle", 3, 0x00, 3, now, None),
        ("kettle", 3, 0x0a, 1, now, None),
        ("kettle", 3, 0x08, 5, reconfirm, None),
        ("kettle", 2, 0x05, 0, now, Some(2)),
        ("kettle", 2, 0x05, 0, now, Some(1)),
        ("kettle", 2, 0x05, 0, now, Some(0)),
        ("kettle", 3, 0x12, 0, now, Some(1)),
        ("bounds", 9, 0x10, 0, now, None),
        ("bounds", 0xffff, 0x01, 0, now, None),
        ("essential_only", 2, 0x01, 0, now, None),
        ("essential_only", 0, 0x01, 0, T0 + 10 * MAX_RECONFIRM, None),
        ("max", 0xffff, 0x7f, 5, U64_10 + 5, None),
        ("max", 0xfff0, 0x7f, 0, U64_10 + MAX_RECONFIRM, None),
        ("max", 0x8000, 0x01, 0, U64_10 + 5, None),
    ]
}

fn contact_rows() -> Vec<ContactRow> {
    let reconfirm = T0 + 365 * 86_400;
    let week = 7 * 86_400;
    let (p, e, m) = (4u16, 0u16, 7u16); // ProactiveService, Essential, Marketing
    let (dev, app, email, sms) = (0u8, 1u8, 2u8, 3u8);
    let (maint, recall, update) = (0usize, 2usize, 4usize);
    let noon = D0 + 11 * H; // 12:00 at UTC+01:00
    // bounds: quiet from 00:00 to 23:59 at UTC+14:00, so only 23:59 local (09:59 UTC) is not quiet
    let open_minute = D0 + 9 * H + 59 * 60;
    vec![
        ("kettle", p, app, 3, maint, noon, vec![], None),
        ("kettle", p, email, 3, maint, noon, vec![], None),
        ("kettle", e, dev, 3, update, noon, vec![], None),
        ("kettle", e, app, 3, update, noon, vec![], None),
        ("kettle", p, app, 7, maint, noon, vec![], None),
        ("kettle", p, app, 3, maint, noon, vec![(p, noon - H), (p, noon - 3 * 86_400)], None),
        ("kettle", p, app, 3, maint, noon, vec![(p, noon - (week - 1)), (p, noon - week), (m, noon)], None),
        ("kettle", p, app, 3, maint, D0 + 21 * H + 30 * 60, vec![], None),
        ("kettle", p, app, 3, maint, D0 + 6 * H, vec![], None),
        ("kettle", p, app, 3, maint, D0 + 6 * H - 1, vec![], None),
        ("kettle", p, app, 3, maint, D0 + 21 * H, vec![], None),
        ("kettle", p, app, 3, maint, D0 + 23 * H + 30 * 60, vec![], None),
        ("kettle", e, dev, 7, recall, D0 + 21 * H + 30 * 60, vec![], None),
        ("kettle", p, app, 3, recall, D0 + 21 * H + 30 * 60, vec![], None),
        ("kettle", p, app, 3, maint, reconfirm, vec![], None),
        ("kettle", e, dev, 3, update, reconfirm - reconfirm % 86_400 + 86_400 + 11 * H, vec![], None),
        ("bounds", p, app, 3, maint, open_minute, vec![], None),
        ("bounds", m, email, 3, maint, open_minute, vec![(m, open_minute)], None),
        ("bounds", m, email, 3, maint, open_minute, vec![(m, open_minute - 1)], None),
        ("bounds", m, email, 3, maint, noon, vec![], None),
        ("bounds", e, sms, 1, update, open_minute, vec![], None),
        ("bounds", e, dev, 0, update, open_minute, vec![], None),
        ("bounds", e, dev, 0, recall, noon, vec![(e, noon)], None),
        ("evening", m, sms, 3, maint, D0 + 2 * H, vec![], None),
        ("evening", m, sms, 3, maint, D0 + 4 * H, vec![], None),
        ("evening", m, sms, 3, maint, D0 + 12 * H - 1, vec![], None),
        ("evening", m, sms, 3, maint, D0 + 12 * H, vec![], None),
        (
            "evening",
            m,
            sms,
            3,
            maint,
            D0 + 12 * H,
            vec![(m, D0 + 12 * H - 86_399), (m, D0 + 3 * H), (m, D0 + 11 * H)],
            None,
        ),
        (
            "evening",
            m,
            sms,
            3,
            maint,
            D0 + 12 * H,
            vec![(m, D0 + 12 * H - 86_400), (m, D0 + 3 * H), (m, D0 + 11 * H)],
            None,
        ),
        ("evening", m, sms, 3, maint, D0 + 12 * H, vec![(p, D0 + 3 * H), (p, D0 + 4 * H), (p, D0 + 11 * H)], None),
        ("essential_only", e, dev, 3, update, noon, vec![], None),
        ("essential_only", e, app, 3, update, noon, vec![], None),
        ("essential_only", p, dev, 3, maint, noon, vec![], None),
        ("kettle", p, app, 3, maint, T0 + 30 * 86_400 + 1, vec![], Some(T0 + 30 * 86_400)),
        ("kettle", p, app, 3, maint, T0 + 30 * 86_400, vec![], Some(T0 + 30 * 86_400)),
        ("kettle", p, app, 7, maint, noon, vec![], Some(T0 + 30 * 86_400)),
    ]
}

/// What each collect row shows, in order.
const COLLECT_NOTES: [&str; 28] = [
    "Essential: DeviceHealth is always allowed, valid until u64::MAX",
    "Essential: an empty request is allowed",
    "Essential carries DeviceHealth only",
    "Essential never carries a location: a precision adds Location to the request",
    "Essential never lapses, even after reconfirm_by",
    "reconfirm_by is exclusive: at it every purpose but Essential lapses",
    "one second before reconfirm_by: allowed until reconfirm_by",
    "no grant for the purpose: the request's categories are missing",
    "no grant and an empty request: all seven categories are missing",
    "a grant's expires_at is exclusive",
    "one second before the grant expires: valid until its expiry",
    "all or nothing: one category not granted refuses the request",
    "a precision finer than granted",
    "Location requested with precision None is judged as Exact",
    "a precision alone requests Location",
    "a coarser precision than granted is allowed",
    "ReconfirmDue comes before the precision check",
    "data naming a newer consent version cannot be judged",
    "data naming the version held is judged by it",
    "data naming an older version is judged by the state held",
    "data judged by the state held is refused like a request (all or nothing)",
    "a grant that expired before the state was issued",
    "a vendor purpose without a grant",
    "the state after a transfer grants nothing but Essential",
    "Essential after the reset state's reconfirm_by",
    "a vendor purpose granted everything, valid until reconfirm_by (before its u64::MAX expiry)",
    "ReconfirmDue at ten-byte times",
    "a vendor purpose the longest state does not grant",
];

/// What each contact row shows, in order.
const CONTACT_NOTES: [&str; 36] = [
    "a granted channel at noon local: allowed",
    "a channel the contact grant does not list",
    "Essential may always use OnDevice",
    "Essential uses other channels only with a contact grant",
    "a muted topic",
    "the cap: 2 notices in the last 7 days",
    "the cap's window is the last period_seconds seconds, now included; other purposes do not count",
    "quiet hours over midnight (22:00-07:00 at UTC+01:00), until the first second after them",
    "the end minute is exclusive",
    "the last second of the quiet hours",
    "the start minute is inclusive",
    "after local midnight, still quiet",
    "an Essential recall bypasses mutes, caps and quiet hours",
    "a recall under another purpose has no exemption",
    "ReconfirmDue for every purpose but Essential",
    "Essential is not subject to reconfirm_by",
    "a cap of 0 notices allows none",
    "a 1-second cap counts only notices sent at now",
    "a notice sent one second ago is outside a 1-second cap",
    "quiet hours 00:00-23:59 at UTC+14:00: only minute 1439 is open",
    "a contact grant for Essential opens other channels",
    "Essential topics can be muted (except recalls)",
    "a muted Essential recall is still delivered",
    "quiet hours at UTC-05:00: 21:00 local the previous day is open",
    "23:00 local: quiet until 07:00 local (12:00 UTC)",
    "06:59:59 local: one second of quiet left",
    "07:00 local: open",
    "a daily cap of 3 with the oldest notice 86 399 s ago",
    "the oldest notice 86 400 s ago falls out of a daily cap",
    "another purpose's notices do not count against the cap",
    "the reset state: Essential on the device",
    "the reset state: no other channel for Essential",
    "the reset state: no contact for other purposes",
    "check_notice: expired one second after expires_at",
    "check_notice: expires_at itself is still valid",
    "check_notice applies may_contact (a muted topic)",
];

fn denied(code: u16, reason: &str, fields: Value) -> Value {
    json!({ "allowed": false, "code": code, "reason": reason, "fields": fields })
}

/// The crate's decision for a collect row, as the table renders it.
fn crate_collect(state: &ConsentState, r: &CollectRow) -> Value {
    let (_, purpose, cats, loc, now, version) = *r;
    let purpose = Purpose::from_id(purpose).unwrap();
    let cats = CategorySet::from_bits(cats).unwrap();
    let loc = LocationPrecision::ALL[loc];
    let result = match version {
        Some(v) => state
            .check_scope(&Scope { purpose, categories: cats, location: loc, consent_version: v }, now)
            .map(|()| None),
        None => state.may_collect(purpose, cats, loc, now).map(Some),
    };
    match result {
        Ok(None) => json!({ "allowed": true }),
        Ok(Some(p)) => json!({ "allowed": true, "permit": {
            "purpose": p.purpose().id(), "categories": p.categories().bits(), "location": precision_index(p.location()),
            "consent_version": p.consent_version(), "valid_until": p.valid_until() } }),
        Err(d) => {
            let (reason, fields) = match d {
                Denial::NotGranted { purpose, missing, version } => {
                    ("NotGranted", json!({ "purpose": purpose.id(), "missing": missing.bits(), "version": version }))
                }
                Denial::Expired { purpose, at, version } => {
                    ("Expired", json!({ "purpose": purpose.id(), "at": at, "version": version }))
                }
                Denial::ReconfirmDue { since, version } => {
                    ("ReconfirmDue", json!({ "since": since, "version": version }))
                }
                Denial::PrecisionTooFine { purpose, requested, allowed, version } => (
                    "PrecisionTooFine",
                    json!({ "purpose": purpose.id(), "requested": precision_index(requested), "allowed": precision_index(allowed), "version": version }),
                ),
                Denial::UnknownVersion { named, held } => ("UnknownVersion", json!({ "named": named, "held": held })),
                d => panic!("not produced by evaluation: {d:?}"),
            };
            denied(d.code(), reason, fields)
        }
    }
}

/// The crate's decision for a contact row.
fn crate_contact(state: &ConsentState, r: &ContactRow) -> Value {
    let (_, purpose, channel, topic, kind, now, ref history, expires) = *r;
    let purpose = Purpose::from_id(purpose).unwrap();
    let channel = Channel::ALL[usize::from(channel)];
    let kind = NOTICE_KINDS[kind];
    let history: Vec<SentNotice> =
        history.iter().map(|&(p, at)| SentNotice { purpose: Purpose::from_id(p).unwrap(), at }).collect();
    let result = match expires {
        Some(expires_at) => {
            let n = Notice { purpose, channel, topic, kind, expires_at, issued_at: T0, ..notice() };
            state.check_notice(&n, now, history.as_slice())
        }
        None => state.may_contact(purpose, channel, topic, kind, now, history.as_slice()),
    };
    match result {
        Ok(()) => json!({ "allowed": true }),
        Err(d) => {
            let (reason, fields) = match d {
                ContactDenial::NoticeExpired { at } => ("NoticeExpired", json!({ "at": at })),
                ContactDenial::ReconfirmDue { since, version } => {
                    ("ReconfirmDue", json!({ "since": since, "version": version }))
                }
                ContactDenial::ChannelNotGranted { purpose, channel, version } => (
                    "ChannelNotGranted",
                    json!({ "purpose": purpose.id(), "channel": channel as u8, "version": version }),
                ),
                ContactDenial::Muted { topic, version } => ("Muted", json!({ "topic": topic, "version": version })),
                ContactDenial::FrequencyCap { purpose, max, period_seconds, sent } => (
                    "FrequencyCap",
                    json!({ "purpose": purpose.id(), "max": max, "period_seconds": period_seconds, "sent": sent }),
                ),
                ContactDenial::QuietHours { until } => ("QuietHours", json!({ "until": until })),
                d => panic!("unknown contact denial {d:?}"),
            };
            denied(d.code(), reason, fields)
        }
    }
}

fn build_consent() -> Value {
    let states = consent_states();
    let state = |name: &str| &states.iter().find(|(n, _)| *n == name).unwrap().1;
    let (collect_rows, contact_rows) = (collect_rows(), contact_rows());
    assert_eq!(collect_rows.len(), COLLECT_NOTES.len());
    assert_eq!(contact_rows.len(), CONTACT_NOTES.len());
    let collect: Vec<Value> = collect_rows
        .iter()
        .zip(COLLECT_NOTES)
        .map(|(r, note)| {
            let mut row =
                json!({ "note": note, "state": r.0, "purpose": r.1, "categories": r.2, "location": r.3, "now": r.4 });
            if let Some(v) = r.5 {
                row["consent_version"] = json!(v);
            }
            row["result"] = crate_collect(state(r.0), r);
            row
        })
        .collect();
    let contact: Vec<Value> = contact_rows
        .iter()
        .zip(CONTACT_NOTES)
        .map(|(r, note)| {
            let mut row = json!({ "note": note, "state": r.0, "purpose": r.1, "channel": r.2, "topic": r.3, "kind": r.4, "now": r.5,
                "history": r.6.iter().map(|&(p, at)| json!({ "purpose": p, "at": at })).collect::<Vec<_>>() });
            if let Some(x) = r.7 {
                row["notice_expires_at"] = json!(x);
            }
            row["result"] = crate_contact(state(r.0), r);
            row
        })
        .collect();
    json!({
        "description": "Consent evaluation (SPEC.md sections 6.4, 6.5): for each row, the state named, the request and the time give the result. See SPEC.md section 10.",
        "states": states.iter().map(|(name, s)| json!({ "name": name, "body": serde_json::to_value(s).unwrap(), "hex": hexs(&enc(s)) })).collect::<Vec<_>>(),
        "collect": collect,
        "contact": contact,
    })
}

/// An evaluator written from SPEC §6.4 and §6.5 alone, reading the state as its JSON
/// rendering: the table is checked against it, not only against the crate.
mod spec_eval {
    use serde_json::{Value, json};

    fn u(v: &Value) -> u64 {
        v.as_u64().unwrap()
    }

    fn precision(v: &Value) -> u64 {
        super::PRECISIONS.iter().position(|p| v == p).unwrap() as u64
    }

    fn no(code: u16, reason: &str, fields: Value) -> Value {
        json!({ "allowed": false, "code": code, "reason": reason, "fields": fields })
    }

    /// §6.4 `may_collect` (and §6.6's version rule when `version` is given).
    pub(super) fn collect(s: &Value, p: u64, c: u64, l: u64, now: u64, version: Option<u64>) -> Value {
        let held = u(&s["version"]);
        if let Some(v) = version
            && v > held
        {
            return no(65, "UnknownVersion", json!({ "named": v, "held": held }));
        }
        const LOCATION: u64 = 1 << 3;
        let l = if l == 0 && c & LOCATION != 0 { 5 } else { l };
        let r = if l != 0 { c | LOCATION } else { c };
        let allowed = |cats: u64, until: u64| {
            if version.is_some() {
                json!({ "allowed": true })
            } else {
                json!({ "allowed": true, "permit": { "purpose": p, "categories": cats, "location": l, "consent_version": held, "valid_until": until } })
            }
        };
        if p == 0 {
            let missing = r & !1;
            if missing != 0 {
                return no(60, "NotGranted", json!({ "purpose": p, "missing": missing, "version": held }));
            }
            return allowed(r, u64::MAX);
        }
        let reconfirm = u(&s["reconfirm_by"]);
        if now >= reconfirm {
            return no(63, "ReconfirmDue", json!({ "since": reconfirm, "version": held }));
        }
        let Some(g) = s["grants"].as_array().unwrap().iter().find(|g| u(&g["purpose"]) == p) else {
            let missing = if r == 0 { 0x7f } else { r };
            return no(60, "NotGranted", json!({ "purpose": p, "missing": missing, "version": held }));
        };
        let expires = g["expires_at"].as_u64();
        if let Some(t) = expires
            && now >= t
        {
            return no(62, "Expired", json!({ "purpose": p, "at": t, "version": held }));
        }
        let missing = r & !u(&g["categories"]);
        if missing != 0 {
            return no(60, "NotGranted", json!({ "purpose": p, "missing": missing, "version": held }));
        }
        let granted = precision(&g["location"]);
        if l > granted {
            return no(
                64,
                "PrecisionTooFine",
                json!({ "purpose": p, "requested": l, "allowed": granted, "version": held }),
            );
        }
        allowed(r, expires.map_or(reconfirm, |t| t.min(reconfirm)))
    }

    /// §6.5 `check_notice` (with `expires`) or `may_contact`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn contact(
        s: &Value,
        p: u64,
        ch: u64,
        topic: u64,
        kind: u64,
        now: u64,
        history: &[(u64, u64)],
        expires: Option<u64>,
    ) -> Value {
        if let Some(x) = expires
            && now > x
        {
            return no(70, "NoticeExpired", json!({ "at": x }));
        }
        let version = u(&s["version"]);
        let recall = p == 0 && kind == 2;
        let reconfirm = u(&s["reconfirm_by"]);
        if p != 0 && now >= reconfirm {
            return no(71, "ReconfirmDue", json!({ "since": reconfirm, "version": version }));
        }
        let c = &s["contact"];
        let mut channels =
            c["grants"].as_array().unwrap().iter().find(|g| u(&g["purpose"]) == p).map_or(0, |g| u(&g["channels"]));
        if p == 0 {
            channels |= 1;
        }
        if channels & (1 << ch) == 0 {
            return no(72, "ChannelNotGranted", json!({ "purpose": p, "channel": ch, "version": version }));
        }
        if recall {
            return json!({ "allowed": true });
        }
        if c["muted_topics"].as_array().unwrap().iter().any(|t| u(t) == topic) {
            return no(73, "Muted", json!({ "topic": topic, "version": version }));
        }
        if let Some(cap) = c["caps"].as_array().unwrap().iter().find(|x| u(&x["purpose"]) == p) {
            let period = u(&cap["period_seconds"]).max(1);
            let since = now.saturating_sub(period - 1);
            let sent = history.iter().filter(|(hp, at)| *hp == p && *at >= since).count() as u64;
            if sent >= u(&cap["max_notices"]) {
                return no(
                    74,
                    "FrequencyCap",
                    json!({ "purpose": p, "max": u(&cap["max_notices"]), "period_seconds": u(&cap["period_seconds"]), "sent": sent }),
                );
            }
        }
        if let Some(q) = c["quiet_hours"].as_object() {
            let day = 86_400i64;
            let offset = q["utc_offset_minutes"].as_i64().unwrap();
            let s_ = ((now % 86_400) as i64 + 60 * offset).rem_euclid(day);
            let m = s_ / 60;
            let (start, end) = (q["start_minute"].as_i64().unwrap(), q["end_minute"].as_i64().unwrap());
            let quiet = (start < end && start <= m && m < end) || (start > end && (m >= start || m < end));
            if quiet {
                return no(75, "QuietHours", json!({ "until": now + (60 * end - s_).rem_euclid(day) as u64 }));
            }
        }
        json!({ "allowed": true })
    }
}

fn build_invalid(valid: &Value) -> Value {
    let list: Vec<Value> = invalid_cases(valid)
        .iter()
        .map(|c| {
            let mut m = json!({
                "name": c.name,
                "rule": c.rule,
                "opened_by": if c.device_opens { "device" } else { "vendor" },
                "accepted_before": c.before.iter().map(|b| hexs(b)).collect::<Vec<_>>(),
                "sealed_hex": hexs(&c.sealed),
                "error": format!("{:?}", c.error),
                "code": c.error.code(),
            });
            if let OpenError::Decode(d) = c.error {
                m["detail"] = json!(d.detail());
            }
            if !c.device_opens {
                let v = vendor_error_of(c);
                m["vendor_error"] = json!(format!("{v:?}"));
                m["vendor_code"] = json!(v.code());
            }
            m
        })
        .collect();
    json!({
        "description": "Invalid spime v1 messages: each must be refused with the named error and code after the messages in accepted_before were accepted, in order, by the same opener. Keys as in valid.json; see SPEC.md section 10.",
        "messages": list,
    })
}

// ---------------------------------------------------------------- fuzz seeds

/// The ingest fuzz target's world (fuzz/fuzz_targets/ingest.rs): its vendor key-agreement secret and device.
const FUZZ_VENDOR_KX: [u8; 32] = [2; 32];
const FUZZ_DEVICE: [u8; 8] = [7; 8];
const FUZZ_DEVICE_SEED: [u8; 32] = [7; 32];

/// A message from the ingest target's device that opens its epoch 2 (the target registered epoch 1).
fn fuzz_ingest_envelope(kind: u8, counter: u64, body: &[u8]) -> Vec<u8> {
    let secret = [0x99; 32];
    let eph_pub = x25519_dalek::x25519(secret, x25519_dalek::X25519_BASEPOINT_BYTES);
    let vx = x25519_dalek::x25519(FUZZ_VENDOR_KX, x25519_dalek::X25519_BASEPOINT_BYTES);
    let shared = x25519_dalek::x25519(secret, vx);
    let mut info = b"spime/v1 keys\0".to_vec();
    info.extend_from_slice(&FUZZ_DEVICE);
    info.extend_from_slice(&2u32.to_be_bytes());
    info.extend_from_slice(&eph_pub);
    info.extend_from_slice(&vx);
    let mut okm = [0u8; 64];
    hkdf::Hkdf::<Sha256>::new(Some(b"spime/v1 session"), &shared).expand(&info, &mut okm).unwrap();
    let mut header = vec![ref_first(kind, true)];
    header.extend_from_slice(&FUZZ_DEVICE);
    header.extend_from_slice(&ref_varint(2));
    header.extend_from_slice(&ref_varint(counter));
    header.extend_from_slice(&eph_pub);
    ref_seal(&header, counter, body, &SigningKey::from_bytes(&FUZZ_DEVICE_SEED), &okm[..32].try_into().unwrap()).0
}

/// `len || chunk` for each chunk: the chunk fuzz targets' input format.
fn length_prefixed<'a>(chunks: impl Iterator<Item = &'a Value>) -> Vec<u8> {
    let mut out = Vec::new();
    for c in chunks {
        let c = hex::decode(c.as_str().unwrap()).unwrap();
        out.push(c.len() as u8);
        out.extend_from_slice(&c);
    }
    out
}

/// Every seed file, `target/name` → bytes, derived from the vectors.
fn fuzz_seeds(valid: &Value, invalid: &Value) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut seeds = std::collections::BTreeMap::new();
    let mut put = |target: &str, name: String, bytes: Vec<u8>| {
        assert!(seeds.insert(format!("{target}/{name}"), bytes).is_none(), "{target}/{name} twice");
    };
    let b = |v: &Value| hex::decode(v.as_str().unwrap()).unwrap();
    for m in valid["messages"].as_array().unwrap() {
        let name = format!("l{}_{}", m["life"], m["name"].as_str().unwrap());
        let sealed = b(&m["sealed_hex"]);
        let body = b(&m["body_hex"]);
        put("envelope", name.clone(), sealed.clone());
        let kind = match m["kind"].as_u64().unwrap() {
            0x01 => "register",
            0x02 => "usage",
            0x03 => "fault",
            0x04 => "consent",
            0x05 => "transfer",
            0x06 => "decommission",
            0x81 => "receipt",
            0x83 => "key_update",
            _ => "notice",
        };
        put(&format!("body_{kind}"), name.clone(), body.clone());
        // fuzz/fuzz_targets/fixed_codec.rs: the body behind its type selector.
        let selector = match kind {
            "register" => Some(0u8),
            "usage" => Some(1),
            "fault" => Some(3),
            "consent" => Some(5),
            "transfer" => Some(7),
            "decommission" => Some(8),
            "receipt" => Some(9),
            "notice" => Some(10),
            _ => None,
        };
        if let Some(s) = selector {
            put("fixed_codec", name.clone(), [&[s][..], &body].concat());
        }
        // fuzz/fuzz_targets/device_open.rs: mode 0 a raw Receipt envelope, 1 a raw Notice envelope,
        // 2 a Notice body and 3 a Receipt body (the target seals them).
        match kind {
            "receipt" => {
                put("device_open", format!("raw_{name}"), [&[0u8][..], &sealed].concat());
                put("device_open", format!("body_{name}"), [&[3u8][..], &body].concat());
            }
            "notice" => {
                put("device_open", format!("raw_{name}"), [&[1u8][..], &sealed].concat());
                put("device_open", format!("body_{name}"), [&[2u8][..], &body].concat());
            }
            "key_update" => {
                put("device_open", format!("raw_{name}"), [&[4u8][..], &sealed].concat());
                put("device_open", format!("body_{name}"), [&[5u8][..], &body].concat());
            }
            _ => put("ingest", format!("vector_{name}"), [&[0u8][..], &sealed].concat()),
        }
        // fuzz/fuzz_targets/chunk_reassembly.rs: length-prefixed chunks into a 512-byte reassembler.
        if let Some(c20) = m["chunks_mtu20"].as_array() {
            if sealed.len() <= 512 {
                put("chunk_reassembly", format!("{name}_mtu20"), length_prefixed(c20.iter()));
                let mut dup: Vec<&Value> = c20.iter().rev().collect();
                dup.insert(1, &c20[c20.len() - 1]);
                put("chunk_reassembly", format!("{name}_mtu20_reversed_duplicated"), length_prefixed(dup.into_iter()));
                put(
                    "chunk_reassembly",
                    format!("{name}_mtu244"),
                    length_prefixed(m["chunks_mtu244"].as_array().unwrap().iter()),
                );
            }
            // fuzz/fuzz_targets/ingest.rs mode 1: length-prefixed chunks on one link.
            put("ingest", format!("chunked_{name}"), [vec![1u8], length_prefixed(c20.iter())].concat());
        }
    }
    for m in invalid["messages"].as_array().unwrap() {
        let sealed = b(&m["sealed_hex"]);
        if !sealed.is_empty() {
            put("envelope", format!("invalid_{}", m["name"].as_str().unwrap()), sealed);
        }
    }
    // Messages the ingest target's vendor accepts: its device renews its key (epoch 2) and reports.
    let fuzz_usage = spime::vendor::sim::counter_usage(1, &[(1, 5), (2, 7)]);
    let fuzz_fault =
        Fault { purpose: Purpose::ESSENTIAL, consent_version: 1, context: heapless::Vec::new(), ..fault() };
    let accepted: [(&str, u8, Vec<u8>); 5] = [
        ("usage", 0x02, enc(&fuzz_usage)),
        ("fault", 0x03, enc(&fuzz_fault)),
        ("consent", 0x04, enc(&ConsentUpdate { consent: spime::vendor::sim::consent(2, &[], 0) })),
        ("transfer", 0x05, enc(&transfer())),
        ("decommission", 0x06, enc(&decommission())),
    ];
    for (i, (name, kind, body)) in accepted.into_iter().enumerate() {
        let env = fuzz_ingest_envelope(kind, 1 + i as u64, &body);
        put("ingest", format!("accepted_{name}"), [&[0u8][..], &env].concat());
        if name == "usage" {
            let chunks: Vec<Value> = ref_chunks(&env, 1, 20).iter().map(|c| json!(hexs(c))).collect();
            put("ingest", "accepted_usage_chunked".into(), [vec![1u8], length_prefixed(chunks.iter())].concat());
        }
    }
    seeds
}

/// The seed directories this generator owns (every file in them is derived from the vectors).
const SEED_TARGETS: [&str; 14] = [
    "envelope",
    "ingest",
    "device_open",
    "chunk_reassembly",
    "body_register",
    "body_usage",
    "body_fault",
    "body_consent",
    "body_transfer",
    "body_decommission",
    "body_receipt",
    "body_notice",
    "body_key_update",
    "fixed_codec",
];

// ---------------------------------------------------------------- the tests

fn vectors_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn check_file(name: &str, value: &Value) {
    let path = vectors_dir().join(name);
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
    let valid = build_valid();
    let invalid = build_invalid(&valid);
    check_file("valid.json", &valid);
    check_file("invalid.json", &invalid);
    check_file("consent.json", &build_consent());
}

#[test]
fn fuzz_seeds_match_the_vectors() {
    let valid = build_valid();
    let seeds = fuzz_seeds(&valid, &build_invalid(&valid));
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    if std::env::var_os("SPIME_WRITE_VECTORS").is_some() {
        for t in SEED_TARGETS {
            let dir = root.join(t);
            if dir.exists() {
                std::fs::remove_dir_all(&dir).unwrap();
            }
            std::fs::create_dir_all(&dir).unwrap();
        }
        for (path, bytes) in &seeds {
            std::fs::write(root.join(path), bytes).unwrap();
        }
    }
    let mut on_disk = std::collections::BTreeMap::new();
    for t in SEED_TARGETS {
        for e in std::fs::read_dir(root.join(t)).unwrap() {
            let e = e.unwrap();
            on_disk.insert(format!("{t}/{}", e.file_name().to_str().unwrap()), std::fs::read(e.path()).unwrap());
        }
    }
    assert!(on_disk == seeds, "fuzz/seeds differ from the vectors; rerun with SPIME_WRITE_VECTORS=1");
}

fn load(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(vectors_dir().join(name)).unwrap()).unwrap()
}

#[test]
fn crate_seals_exactly_the_vector_bytes() {
    let v = load("valid.json");
    for m in v["messages"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        let epoch = u32::try_from(m["epoch"].as_u64().unwrap()).unwrap();
        let secret: [u8; 32] = hex::decode(m["epoch_ephemeral_secret"].as_str().unwrap()).unwrap().try_into().unwrap();
        let pair = vendor_of(u32::try_from(m["vendor_key"].as_u64().unwrap()).unwrap());
        let (keys, eph) =
            spime::seal::keys::device_start_epoch_with(&secret, &DEVICE_ID, epoch, &pair.public()).unwrap();
        assert_eq!(hexs(keys.device_to_vendor.as_bytes()), m["key_device_to_vendor"], "{name}");
        assert_eq!(hexs(keys.vendor_to_device.as_bytes()), m["key_vendor_to_device"], "{name}");
        assert_eq!(hexs(&eph), m["epoch_ephemeral_public"], "{name}");
        let s = Seal {
            device: DEVICE_ID,
            epoch,
            counter: m["counter"].as_u64().unwrap(),
            ephemeral: m["ephemeral_in_header"].as_bool().unwrap().then_some(eph),
        };
        let mut out = vec![0u8; MAX_SEALED_LEN];
        let dev = device();
        let ven = pair;
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
            0x83 => {
                let update = serde_json::from_value::<KeyUpdate>(body).unwrap();
                let signer = vendor_of(update.certificate.body.serial);
                seal::seal_from_vendor(&mut out, DEVICE_ID, s.counter, &update, &signer, &keys)
            }
            k => panic!("kind {k}"),
        }
        .unwrap();
        assert_eq!(hexs(&out[..n]), m["sealed_hex"], "{name}");
    }
}

#[test]
fn crate_opens_every_valid_vector_to_its_values() {
    let v = load("valid.json");
    let messages = v["messages"].as_array().unwrap();
    let mut lives = 0;
    for life in 1..=4u64 {
        // Each life: a fresh vendor and a factory-new device, the messages in order.
        let mut vendor_side = VendorView::new();
        let mut device_side = DeviceView::unregistered();
        for m in messages.iter().filter(|m| m["life"] == life) {
            let name = m["name"].as_str().unwrap();
            let sealed = hex::decode(m["sealed_hex"].as_str().unwrap()).unwrap();
            let opened = if m["direction"] == "device_to_vendor" {
                device_side.sent(m);
                vendor_side.open(&sealed)
            } else {
                device_side.open(&sealed)
            };
            assert_eq!(opened.unwrap_or_else(|e| panic!("{name}: {e:?}")), m["body"], "{name}");
            // The body bytes decode exactly, and the kept proof re-verifies without any session key.
            let header = hex::decode(m["header_hex"].as_str().unwrap()).unwrap();
            let body = hex::decode(m["body_hex"].as_str().unwrap()).unwrap();
            let sig: [u8; 64] = hex::decode(m["signature_hex"].as_str().unwrap()).unwrap().try_into().unwrap();
            let signer = if m["direction"] == "device_to_vendor" {
                device().public()
            } else if m["kind"] == 0x83 {
                let serial = m["body"]["certificate"]["body"]["serial"].as_u64().unwrap();
                vendor_of(u32::try_from(serial).unwrap()).public().signing
            } else {
                vendor_of(u32::try_from(m["vendor_key"].as_u64().unwrap()).unwrap()).public().signing
            };
            seal::verify_signature(&signer, &header, &body, &sig).unwrap();
            assert_eq!(sealed.len() - body.len(), m["body_overhead"].as_u64().unwrap() as usize, "{name}");
        }
        lives += 1;
    }
    assert_eq!(lives, 4);
}

/// SPEC §4.3 and issue 8: the overheads measured on the vectors.
#[test]
fn overheads_on_the_vectors() {
    let v = load("valid.json");
    let messages = v["messages"].as_array().unwrap();
    assert!(messages.len() >= 40, "{} valid vectors", messages.len());
    let overhead = |m: &Value| m["body_overhead"].as_u64().unwrap();
    let small = |m: &&Value| m["counter"].as_u64().unwrap() < 128 && m["epoch"].as_u64().unwrap() < 128;
    let eph = |m: &&Value| m["ephemeral_in_header"].as_bool().unwrap();
    for m in messages.iter().filter(small) {
        assert_eq!(overhead(m), if eph(&m) { 123 } else { 91 }, "{}", m["name"]);
    }
    let all: Vec<u64> = messages.iter().map(overhead).collect();
    assert_eq!(*all.iter().min().unwrap(), 91);
    assert_eq!(*all.iter().max().unwrap(), 136);
    let longest = messages.iter().map(|m| m["sealed_hex"].as_str().unwrap().len() / 2).max().unwrap();
    assert_eq!(longest, MAX_SEALED_LEN);
    // Every kind, its shortest and longest envelope.
    for kind in Kind::ALL {
        let lens: Vec<usize> = messages
            .iter()
            .filter(|m| m["kind"] == u64::from(kind.to_byte()))
            .map(|m| m["sealed_hex"].as_str().unwrap().len() / 2)
            .collect();
        assert!(!lens.is_empty(), "{kind:?}");
        let body_max = match kind.to_byte() {
            0x01 => <Register as Canonical>::MAX_ENCODED_LEN,
            0x02 => <Usage as Canonical>::MAX_ENCODED_LEN,
            0x03 => <Fault as Canonical>::MAX_ENCODED_LEN,
            0x04 => <ConsentUpdate as Canonical>::MAX_ENCODED_LEN,
            0x05 => <Transfer as Canonical>::MAX_ENCODED_LEN,
            0x06 => <Decommission as Canonical>::MAX_ENCODED_LEN,
            0x81 => <Receipt as Canonical>::MAX_ENCODED_LEN,
            0x83 => <KeyUpdate as Canonical>::MAX_ENCODED_LEN,
            _ => <Notice as Canonical>::MAX_ENCODED_LEN,
        };
        let header_max = if kind.direction() == Direction::DeviceToVendor { 56 } else { 24 };
        assert_eq!(*lens.iter().max().unwrap(), body_max + header_max + 80, "longest {kind:?}");
    }
}

#[test]
fn chunk_lists_follow_spec_section_7() {
    use spime::wire::chunk::{Chunks, Pushed, Reassembler};
    let v = load("valid.json");
    let mut lists = 0;
    for m in v["messages"].as_array().unwrap() {
        let Some(id) = m["chunk_message_id"].as_u64() else { continue };
        let sealed = hex::decode(m["sealed_hex"].as_str().unwrap()).unwrap();
        assert_eq!(id, m["counter"].as_u64().unwrap() & 0xffff);
        for (field, mtu) in [("chunks_mtu20", 20), ("chunks_mtu244", 244)] {
            let list: Vec<Vec<u8>> =
                m[field].as_array().unwrap().iter().map(|c| hex::decode(c.as_str().unwrap()).unwrap()).collect();
            // The crate cuts the same chunks ...
            let mine: Vec<Vec<u8>> = Chunks::new(&sealed, id as u16, mtu)
                .unwrap()
                .map(|c| {
                    let mut b = vec![0u8; c.len()];
                    c.write_to(&mut b).unwrap();
                    b
                })
                .collect();
            assert_eq!(mine, list, "{} {field}", m["name"]);
            assert!(list.iter().all(|c| c.len() <= mtu));
            assert_eq!(list.iter().map(Vec::len).sum::<usize>(), sealed.len() + 5 * list.len());
            // ... and rebuilds the envelope from them in any order.
            let mut rx: Reassembler<2, MAX_SEALED_LEN> = Reassembler::new(60);
            let mut done = None;
            for c in list.iter().rev() {
                if let Pushed::Complete(env) = rx.push(0, c).unwrap() {
                    done = Some(env.to_vec());
                }
            }
            assert_eq!(done.as_deref(), Some(&sealed[..]), "{} {field}", m["name"]);
            lists += 1;
        }
    }
    assert!(lists >= 10, "{lists} chunk lists");
}

#[test]
fn crate_refuses_every_invalid_vector_with_its_error() {
    let v = load("invalid.json");
    let messages = v["messages"].as_array().unwrap();
    assert!(messages.len() >= 40, "{} invalid vectors", messages.len());
    for m in messages {
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
        assert_eq!(u64::from(err.code()), m["code"].as_u64().unwrap(), "{name}");
        if let OpenError::Decode(d) = err {
            assert_eq!(u64::from(d.detail()), m["detail"].as_u64().unwrap(), "{name}");
        }
    }
}

/// Every rejection rule of the error types that a message can reach has a vector.
#[test]
fn invalid_vectors_cover_every_rule() {
    use spime::error::{List, Rule};
    let v = load("invalid.json");
    let codes: std::collections::BTreeSet<(u64, u64)> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["code"].as_u64().unwrap(), m["detail"].as_u64().unwrap_or(0)))
        .collect();
    let has = |code: u64| codes.iter().any(|(c, _)| *c == code);
    // DecodeError 1–9, 11, 12 (10 UnknownBits and 13 BufferTooSmall no message reaches), OpenError 20,
    // 22–28 (21 WrongKind is the typed API's), ReplayError 27, 28.
    for code in [1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 20, 22, 23, 24, 25, 26, 27, 28] {
        assert!(has(code), "no invalid vector with code {code}");
    }
    for l in [List::Metrics, List::Grants, List::ContactGrants, List::FrequencyCaps, List::MutedTopics] {
        assert!(codes.contains(&(11, l as u64)), "no vector for Unordered({l:?})");
    }
    for r in [
        Rule::UsageWindow,
        Rule::LocationCategory,
        Rule::LocationPrecisionNone,
        Rule::FaultOccurrences,
        Rule::FaultSeen,
        Rule::NoticeExpiry,
        Rule::ReconfirmWindow,
        Rule::GrantWithoutCategories,
        Rule::GrantForEssential,
        Rule::GrantLocation,
        Rule::ContactGrantWithoutChannels,
        Rule::QuietHoursMinute,
        Rule::QuietHoursEmpty,
        Rule::UtcOffset,
        Rule::CapPeriod,
        Rule::VendorKeyValidity,
    ] {
        assert!(codes.contains(&(12, r as u64)), "no vector for OutOfRange({r:?})");
    }
    for n in [0, 7, 8, 0xc, 0xf] {
        assert!(codes.contains(&(7, n)), "no vector for UnknownKind({n})");
    }
}

#[test]
fn consent_table_agrees_with_the_crate_and_with_spec() {
    let t = load("consent.json");
    let states: std::collections::BTreeMap<String, Value> = t["states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            // The JSON and the bytes are the same canonical state.
            let bytes = hex::decode(s["hex"].as_str().unwrap()).unwrap();
            let decoded: ConsentState = codec::decode(&bytes).unwrap();
            assert_eq!(serde_json::to_value(&decoded).unwrap(), s["body"]);
            (s["name"].as_str().unwrap().to_owned(), s["body"].clone())
        })
        .collect();
    let state_of = |name: &str| -> ConsentState { serde_json::from_value(states[name].clone()).unwrap() };
    let mut codes = std::collections::BTreeSet::new();
    let collect = t["collect"].as_array().unwrap();
    for (i, r) in collect.iter().enumerate() {
        let n = |k: &str| r[k].as_u64().unwrap();
        let name = r["state"].as_str().unwrap();
        let version = r["consent_version"].as_u64();
        let row: CollectRow = (
            "",
            n("purpose") as u16,
            n("categories") as u16,
            n("location") as usize,
            n("now"),
            version.map(|v| v as u32),
        );
        assert_eq!(crate_collect(&state_of(name), &row), r["result"], "collect row {i}");
        let spec = spec_eval::collect(&states[name], n("purpose"), n("categories"), n("location"), n("now"), version);
        assert_eq!(spec, r["result"], "collect row {i}: SPEC §6.4");
        codes.insert(r["result"]["code"].as_u64().unwrap_or(0));
    }
    let contact = t["contact"].as_array().unwrap();
    for (i, r) in contact.iter().enumerate() {
        let n = |k: &str| r[k].as_u64().unwrap();
        let name = r["state"].as_str().unwrap();
        let history: Vec<(u64, u64)> = r["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| (h["purpose"].as_u64().unwrap(), h["at"].as_u64().unwrap()))
            .collect();
        let expires = r["notice_expires_at"].as_u64();
        let row: ContactRow = (
            "",
            n("purpose") as u16,
            n("channel") as u8,
            n("topic") as u16,
            n("kind") as usize,
            n("now"),
            history.iter().map(|&(p, at)| (p as u16, at)).collect(),
            expires,
        );
        assert_eq!(crate_contact(&state_of(name), &row), r["result"], "contact row {i}");
        let spec = spec_eval::contact(
            &states[name],
            n("purpose"),
            n("channel"),
            n("topic"),
            n("kind"),
            n("now"),
            &history,
            expires,
        );
        assert_eq!(spec, r["result"], "contact row {i}: SPEC §6.5");
        codes.insert(r["result"]["code"].as_u64().unwrap_or(0));
    }
    // Every decision: allowed (0), every Denial evaluation gives (61 Withdrawn only a ledger can tell),
    // every ContactDenial.
    for code in [0, 60, 62, 63, 64, 65, 70, 71, 72, 73, 74, 75] {
        assert!(codes.contains(&code), "no consent row with code {code}");
    }
    assert!(collect.len() + contact.len() >= 50);
}

/// The ingest seeds named `accepted_*` reach the end of the pipeline: in the
/// ingest fuzz target's world (its vendor, its registered device, its time)
/// each is accepted, so fuzzing starts from messages that pass every check.
#[test]
fn ingest_seeds_are_accepted_by_the_fuzz_targets_vendor() {
    use spime::vendor::sim::{SimDevice, consent};
    use spime::vendor::{IngestConfig, Ingestor, MemoryStore};
    let keys = || spime::seal::VendorKeys::from_secrets(&[1; 32], &FUZZ_VENDOR_KX);
    let mut d = SimDevice::new(spime::wire::DeviceId(FUZZ_DEVICE), FUZZ_DEVICE_SEED, &keys()).unwrap();
    let grants = [(Purpose::USAGE_ANALYTICS, CategorySet::EMPTY.with(DataCategory::UsageCounters))];
    let registration = d
        .seal(&Register {
            certificate: d.certificate().clone(),
            firmware: FirmwareVersion { major: 1, minor: 0, patch: 0, build: 0 },
            consent: consent(1, &grants, 0),
            transfer: None,
        })
        .unwrap();
    let valid = build_valid();
    let seeds = fuzz_seeds(&valid, &build_invalid(&valid));
    let mut checked = 0;
    for (path, bytes) in seeds.iter().filter(|(p, _)| p.starts_with("ingest/accepted_") && !p.ends_with("chunked")) {
        let v = Ingestor::new(MemoryStore::new(), keys(), IngestConfig { workers: 2, batch_verify: true });
        v.ingest(&registration, 10).unwrap();
        assert_eq!(bytes[0], 0, "{path}: mode 0, one envelope");
        v.ingest(&bytes[1..], 10).unwrap_or_else(|e| panic!("{path}: {e:?}"));
        checked += 1;
    }
    assert_eq!(checked, 5);
}
