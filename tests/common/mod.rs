//! Fixtures shared by the integration tests: a fixed vendor and device
//! identity and one sample body of every kind.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::std_instead_of_core,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use spime::codec::Bytes64;
use spime::codec::Canonical;
use spime::consent::*;
use spime::message::*;
use spime::seal::{DeviceKey, SessionKeys, VendorKeys, keys};
use spime::wire::DeviceId;

pub const VENDOR_SIGNING_SEED: [u8; 32] = [0x11; 32];
pub const VENDOR_KX_SECRET: [u8; 32] = [0x22; 32];
pub const DEVICE_SEED: [u8; 32] = [0x33; 32];
pub const EPHEMERAL_SECRET: [u8; 32] = [0x44; 32];
pub const DEVICE_ID: DeviceId = DeviceId([0xd0, 0x0d, 1, 2, 3, 4, 5, 6]);
pub const EPOCH: u32 = 1;
pub const T0: u64 = 1_795_000_000; // 2026-11-18

pub fn vendor() -> VendorKeys {
    VendorKeys::from_secrets(&VENDOR_SIGNING_SEED, VENDOR_KX_SECRET)
}

pub fn device() -> DeviceKey {
    DeviceKey::from_seed(DEVICE_ID, &DEVICE_SEED)
}

/// The epoch-1 session keys and the ephemeral public key that opens them.
pub fn session() -> (SessionKeys, [u8; 32]) {
    keys::device_start_epoch_with(&EPHEMERAL_SECRET, &DEVICE_ID, EPOCH, &vendor().public()).unwrap()
}

pub fn certificate() -> DeviceCertificate {
    DeviceCertificate::issue(
        CertificateBody {
            device: DEVICE_ID,
            device_key: device().public().to_bytes(),
            model: "kettle-k2".try_into().unwrap(),
            hardware_revision: 3,
            issued_at: T0 - 86_400,
        },
        vendor().signing(),
    )
    .unwrap()
}

pub fn firmware() -> FirmwareVersion {
    FirmwareVersion { major: 2, minor: 4, patch: 1, build: 1207 }
}

pub fn consent_state(version: u32) -> ConsentState {
    let mut grants = heapless::Vec::new();
    grants
        .push(Grant {
            purpose: Purpose::DIAGNOSTICS,
            categories: CategorySet::EMPTY.with(DataCategory::DeviceHealth).with(DataCategory::FaultContext),
            location: LocationPrecision::None,
            expires_at: None,
        })
        .unwrap();
    grants
        .push(Grant {
            purpose: Purpose::USAGE_ANALYTICS,
            categories: CategorySet::EMPTY.with(DataCategory::UsageCounters).with(DataCategory::Location),
            location: LocationPrecision::City,
            expires_at: Some(T0 + 180 * 86_400),
        })
        .unwrap();
    let mut contact = ContactPrefs::default();
    contact
        .grants
        .push(ContactGrant {
            purpose: Purpose::PROACTIVE_SERVICE,
            channels: ChannelSet::EMPTY.with(Channel::App).with(Channel::OnDevice),
        })
        .unwrap();
    contact.quiet_hours = Some(QuietHours { start_minute: 22 * 60, end_minute: 7 * 60, utc_offset_minutes: 60 });
    contact
        .caps
        .push(FrequencyCap { purpose: Purpose::PROACTIVE_SERVICE, max_notices: 2, period_seconds: 7 * 86_400 })
        .unwrap();
    contact.muted_topics.push(7).unwrap();
    ConsentState { version, issued_at: T0, reconfirm_by: T0 + 365 * 86_400, notice_hash: [0x5a; 32], grants, contact }
}

pub fn register() -> Register {
    Register {
        certificate: certificate(),
        firmware: firmware(),
        consent: SignedConsent { state: consent_state(1), owner: None },
    }
}

pub fn usage() -> Usage {
    let mut metrics = heapless::Vec::new();
    metrics.push(Metric { id: 1, category: DataCategory::UsageCounters, value: MetricValue::Counter(42) }).unwrap();
    metrics
        .push(Metric {
            id: 2,
            category: DataCategory::UsageCounters,
            value: MetricValue::Gauge { min: -5, max: 98, sum: 1234, samples: 30 },
        })
        .unwrap();
    metrics
        .push(Metric {
            id: 3,
            category: DataCategory::UsageCounters,
            value: MetricValue::Histogram(heapless::Vec::from_slice(&[1, 0, 7, 300]).unwrap()),
        })
        .unwrap();
    metrics
        .push(Metric {
            id: 9,
            category: DataCategory::Location,
            value: MetricValue::Location {
                lat_e7: 525_200_000,
                lon_e7: 134_050_000,
                precision: LocationPrecision::City,
            },
        })
        .unwrap();
    Usage { purpose: Purpose::USAGE_ANALYTICS, consent_version: 1, window_start: T0, window_end: T0 + 3600, metrics }
}

pub fn fault() -> Fault {
    Fault {
        purpose: Purpose::DIAGNOSTICS,
        consent_version: 1,
        code: 0x0201,
        severity: Severity::Error,
        component: 4,
        firmware: firmware(),
        uptime_s: 86_000,
        reboot_reason: RebootReason::Watchdog,
        occurrences: 3,
        first_seen: T0 + 100,
        last_seen: T0 + 900,
        context: heapless::Vec::from_slice(b"heater relay stuck").unwrap(),
    }
}

pub fn consent_update() -> ConsentUpdate {
    let mut state = consent_state(2);
    state.grants.truncate(1);
    ConsentUpdate { consent: SignedConsent { state, owner: None } }
}

pub fn transfer() -> Transfer {
    Transfer { at: T0 + 10_000 }
}

pub fn decommission() -> Decommission {
    Decommission { at: T0 + 20_000, reason: DecommissionReason::Recycled }
}

pub fn receipt() -> Receipt {
    let mut buf = [0u8; <SignedConsent as Canonical>::MAX_ENCODED_LEN];
    let bytes = spime::codec::encode(&register().consent, &mut buf).unwrap();
    Receipt { consent_version: 1, consent_digest: consent_digest(bytes), received_at: T0 + 5 }
}

pub fn notice() -> Notice {
    Notice {
        id: 77,
        purpose: Purpose::PROACTIVE_SERVICE,
        channel: Channel::App,
        topic: 3,
        kind: NoticeKind::MaintenanceDue,
        issued_at: T0 + 50,
        expires_at: T0 + 30 * 86_400,
        title: "Time to descale".try_into().unwrap(),
        text: "Your kettle has boiled 400 litres since its last descale. Descaling keeps it fast and quiet."
            .try_into()
            .unwrap(),
    }
}

pub fn bytes64(b: u8) -> Bytes64 {
    Bytes64([b; 64])
}
