//! The fixed test identity shared by the device tests and the QEMU
//! firmware (examples/firmware/src/main.rs has the same constants).
#![allow(
    dead_code,
    clippy::large_enum_variant,
    clippy::std_instead_of_core,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;

use spime::consent::{CategorySet, ConsentState, DataCategory, Grant, LocationPrecision, Purpose, SignedConsent};
use spime::device::session::Identity;
use spime::message::{self, Body, ConsentUpdate, Decommission, Fault, Register, Transfer, Usage};
use spime::message::{CertificateBody, DeviceCertificate, FirmwareVersion};
use spime::seal::{self, Envelope, SessionKeys};
use spime::seal::{DeviceKey, VendorKeys};
use spime::wire::DeviceId;
use spime::wire::Kind;

/// The test vendor's Ed25519 seed (public: a test identity only).
pub(crate) const VENDOR_SIGNING_SEED: [u8; 32] = [0x51; 32];
/// The test vendor's X25519 secret.
pub(crate) const VENDOR_KX_SECRET: [u8; 32] = [0x52; 32];
/// The test device's Ed25519 seed.
pub(crate) const DEVICE_SEED: [u8; 32] = [0xD5; 32];
/// The test device's id.
pub(crate) const DEVICE_ID: DeviceId = DeviceId(*b"spime-01");
/// The test firmware version.
pub(crate) const FIRMWARE: FirmwareVersion = FirmwareVersion { major: 1, minor: 4, patch: 2, build: 77 };
/// Manufacture time of the test device.
pub(crate) const MADE_AT: u64 = 1_767_225_600;

pub(crate) fn vendor() -> VendorKeys {
    VendorKeys::from_secrets(&VENDOR_SIGNING_SEED, VENDOR_KX_SECRET)
}

pub(crate) fn identity() -> Identity {
    let v = vendor();
    let key = DeviceKey::from_seed(DEVICE_ID, &DEVICE_SEED);
    let certificate = DeviceCertificate::issue(
        CertificateBody {
            device: DEVICE_ID,
            device_key: key.public().to_bytes(),
            model: "kettle-9000".try_into().unwrap(),
            hardware_revision: 3,
            issued_at: MADE_AT,
        },
        v.signing(),
    )
    .unwrap();
    Identity { key, certificate, firmware: FIRMWARE, vendor: v.public() }
}

pub(crate) fn cats(c: &[DataCategory]) -> CategorySet {
    c.iter().fold(CategorySet::EMPTY, |s, c| s.with(*c))
}

/// Version `version`: usage analytics (counters, environment) and diagnostics
/// (health and fault context), app notices for proactive service.
pub(crate) fn generous_consent(version: u32, now: u64) -> SignedConsent {
    let mut s = ConsentState::essential_only(version, now, [7; 32]);
    s.set_grant(Grant {
        purpose: Purpose::DIAGNOSTICS,
        categories: cats(&[DataCategory::DeviceHealth, DataCategory::FaultContext]),
        location: LocationPrecision::None,
        expires_at: None,
    })
    .unwrap();
    s.set_grant(Grant {
        purpose: Purpose::USAGE_ANALYTICS,
        categories: cats(&[DataCategory::UsageCounters, DataCategory::Environment]),
        location: LocationPrecision::None,
        expires_at: None,
    })
    .unwrap();
    s.allow_channel(Purpose::PROACTIVE_SERVICE, spime::consent::Channel::App).unwrap();
    SignedConsent { state: s, owner: None }
}

/// The vendor side: opens messages, remembering each epoch's keys.
pub(crate) struct Vendor {
    pub(crate) keys: VendorKeys,
    pub(crate) epochs: BTreeMap<u32, SessionKeys>,
    pub(crate) counter: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Opened {
    Register(Register),
    Usage(Usage),
    Fault(Fault),
    Consent(ConsentUpdate),
    Transfer(Transfer),
    Decommission(Decommission),
}

impl Vendor {
    pub(crate) fn new() -> Self {
        Vendor { keys: vendor(), epochs: BTreeMap::new(), counter: 0 }
    }

    pub(crate) fn open(&mut self, bytes: &[u8]) -> (u64, Opened) {
        let env = Envelope::parse(bytes).unwrap();
        let h = env.header;
        if let Some(eph) = h.ephemeral {
            let k = self.keys.accept_epoch(&h.device, h.epoch, &eph).unwrap();
            self.epochs.insert(h.epoch, k);
        }
        let keys = &self.epochs[&h.epoch];
        let mut buf = [0u8; message::MAX_SEALED_LEN];
        let pt = env.decrypt(keys, &mut buf).unwrap();
        let device_key = identity().certificate.verify(&self.keys.public().signing).unwrap();
        let v = pt.verify(&device_key).unwrap();
        let opened = match h.kind {
            Kind::REGISTER => Opened::Register(v.decode().unwrap()),
            Kind::USAGE => Opened::Usage(v.decode().unwrap()),
            Kind::FAULT => Opened::Fault(v.decode().unwrap()),
            Kind::CONSENT => Opened::Consent(v.decode().unwrap()),
            Kind::TRANSFER => Opened::Transfer(v.decode().unwrap()),
            Kind::DECOMMISSION => Opened::Decommission(v.decode().unwrap()),
            k => panic!("unexpected kind {k:?}"),
        };
        (h.counter, opened)
    }

    pub(crate) fn seal<B: Body>(&mut self, epoch: u32, body: &B) -> Vec<u8> {
        self.counter += 1;
        let mut out = vec![0u8; B::MAX_SEALED_LEN];
        let n =
            seal::seal_from_vendor(&mut out, DEVICE_ID, self.counter, body, &self.keys, &self.epochs[&epoch]).unwrap();
        out.truncate(n);
        out
    }
}

/// Flash offsets and lengths of the data of every counter record in a
/// `NorStorage` log (SPEC.md §8.6) of `sector`-byte sectors, oldest first.
pub(crate) fn counter_copies(m: &[u8], sector: usize) -> Vec<(u32, usize)> {
    record_copies(m, sector, spime::device::storage::RECORD_COUNTER)
}

/// Flash offsets and lengths of the data of every version of record `record`
/// in a `NorStorage` log of `sector`-byte sectors, oldest first.
pub(crate) fn record_copies(m: &[u8], sector: usize, record: u16) -> Vec<(u32, usize)> {
    let be32 = |a: usize| u32::from_be_bytes(m[a..a + 4].try_into().unwrap());
    let mut sectors: Vec<(u32, usize)> = (0..m.len() / sector)
        .filter(|&i| m[i * sector..i * sector + 4] == *b"SPL1")
        .map(|i| (be32(i * sector + 4), i))
        .collect();
    sectors.sort_unstable();
    let mut out = Vec::new();
    for (_, i) in sectors {
        let mut off = 16;
        while off + 16 <= sector {
            let a = i * sector + off;
            let crc = spime::device::storage::crc32(
                spime::device::storage::crc32(0, &u32::try_from(a).unwrap().to_be_bytes()),
                &m[a..a + 12],
            );
            if m[a..a + 2] != *b"SR" || crc != be32(a + 12) {
                // a torn or damaged slot: the next one follows it (as the store reads it)
                if m[a..i * sector + sector].iter().all(|&b| b == 0xFF) {
                    break;
                }
                off += 16;
                continue;
            }
            let id = u16::from_be_bytes([m[a + 2], m[a + 3]]);
            let len = usize::from(u16::from_be_bytes([m[a + 4], m[a + 5]]));
            if id == record {
                out.push((u32::try_from(a + 16).unwrap(), len));
            }
            off += 16 + len.div_ceil(4) * 4;
        }
    }
    out
}
