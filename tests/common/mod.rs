//! The fixed test identity shared by the device tests and the QEMU
//! firmware (examples/firmware/src/main.rs has the same constants).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use spime::consent::{CategorySet, ConsentState, DataCategory, Grant, LocationPrecision, Purpose, SignedConsent};
use spime::device::session::Identity;
use spime::message::{CertificateBody, DeviceCertificate, FirmwareVersion};
use spime::seal::{DeviceKey, VendorKeys};
use spime::wire::DeviceId;

/// The test vendor's Ed25519 seed (public: a test identity only).
pub(crate) const VENDOR_SIGNING_SEED: [u8; 32] = [0x51; 32];
/// The test vendor's X25519 secret.
pub(crate) const VENDOR_KX_SECRET: [u8; 32] = [0x52; 32];
/// The test device's Ed25519 seed.
pub(crate) const DEVICE_SEED: [u8; 32] = [0xD5; 32];
/// The test device's id.
pub(crate) const DEVICE_ID: DeviceId = DeviceId(*b"spime-test-dev01");
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
