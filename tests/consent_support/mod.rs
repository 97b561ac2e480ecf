//! Shared strategies and fixtures of the consent tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use proptest::collection::{btree_map, btree_set};
use proptest::prelude::*;
use spime::consent::*;
use spime::message::{CertificateBody, DeviceCertificate, Metric, MetricValue};
use spime::seal::{DeviceKey, SessionKeys, VendorKeys, keys};
use spime::wire::DeviceId;

pub const NOW: u64 = 1_795_435_200; // 2026-11-23 12:00:00 UTC

pub fn cats(list: &[DataCategory]) -> CategorySet {
    list.iter().fold(CategorySet::EMPTY, |s, c| s.with(*c))
}

pub fn chans(list: &[Channel]) -> ChannelSet {
    list.iter().fold(ChannelSet::EMPTY, |s, c| s.with(*c))
}

/// A fixed world: vendor, device, session keys of epoch 1.
pub struct World {
    pub vendor: VendorKeys,
    pub device: DeviceKey,
    pub other: DeviceKey,
    pub keys: SessionKeys,
    pub eph: [u8; 32],
    pub cert: DeviceCertificate,
}

pub fn world() -> World {
    let vendor = VendorKeys::from_secrets(&[1; 32], [2; 32]);
    let device = DeviceKey::from_seed(DeviceId([9; 8]), &[3; 32]);
    let other = DeviceKey::from_seed(DeviceId([8; 8]), &[5; 32]);
    let (keys, eph) = keys::device_start_epoch_with(&[4; 32], &device.device, 1, &vendor.public()).unwrap();
    let cert = DeviceCertificate::issue(
        CertificateBody {
            device: device.device,
            device_key: device.public().to_bytes(),
            model: "kettle".try_into().unwrap(),
            hardware_revision: 1,
            issued_at: 1,
        },
        vendor.signing(),
    )
    .unwrap();
    World { vendor, device, other, keys, eph, cert }
}

pub fn purpose() -> impl Strategy<Value = Purpose> {
    prop_oneof![(0u16..=9).prop_map(|i| Purpose::from_id(i).unwrap()), (0u16..3).prop_map(Purpose::vendor)]
}

pub fn category_set() -> impl Strategy<Value = CategorySet> {
    (0u16..=0x7f).prop_map(|b| CategorySet::from_bits(b).unwrap())
}

pub fn precision() -> impl Strategy<Value = LocationPrecision> {
    prop::sample::select(LocationPrecision::ALL.to_vec())
}

pub fn channel() -> impl Strategy<Value = Channel> {
    prop::sample::select(Channel::ALL.to_vec())
}

fn grant_for(p: Purpose) -> impl Strategy<Value = Grant> {
    (1u16..=0x7f, 1usize..=5, prop::option::of(NOW - 1000..NOW + 100_000)).prop_map(move |(bits, lvl, exp)| {
        let categories = CategorySet::from_bits(bits).unwrap();
        let location = if categories.contains(DataCategory::Location) {
            LocationPrecision::ALL[lvl]
        } else {
            LocationPrecision::None
        };
        Grant { purpose: p, categories, location, expires_at: exp }
    })
}

/// Canonical consent states around NOW.
pub fn state() -> impl Strategy<Value = ConsentState> {
    let grant_purposes = btree_set(prop_oneof![(1u16..=9), (0x8000u16..0x8003)], 0..=MAX_GRANTS);
    (
        0u32..1000,
        NOW - 200_000..NOW + 100,
        1u64..=MAX_RECONFIRM,
        any::<[u8; 32]>(),
        grant_purposes,
        btree_map(0u16..=9, 1u8..=15, 0..=MAX_CONTACT_GRANTS),
        prop::option::of((0u16..1440, 0u16..1440, -840i16..=840)),
        btree_map(0u16..=9, (0u16..4, 1u32..200_000), 0..=MAX_CAPS),
        btree_set(0u16..40, 0..=MAX_MUTED_TOPICS),
    )
        .prop_flat_map(|(version, issued_at, delta, hash, gp, cg, q, caps, muted)| {
            let grants: Vec<_> = gp.into_iter().map(|p| grant_for(Purpose::from_id(p).unwrap())).collect();
            (grants, Just((version, issued_at, delta, hash, cg, q, caps, muted)))
        })
        .prop_map(|(grants, (version, issued_at, delta, notice_hash, cg, q, caps, muted))| {
            let mut contact = ContactPrefs::default();
            for (p, c) in cg {
                contact
                    .grants
                    .push(ContactGrant {
                        purpose: Purpose::from_id(p).unwrap(),
                        channels: ChannelSet::from_bits(c).unwrap(),
                    })
                    .unwrap();
            }
            contact.quiet_hours = q.and_then(|(s, e, o)| {
                (s != e).then_some(QuietHours { start_minute: s, end_minute: e, utc_offset_minutes: o })
            });
            for (p, (max, period)) in caps {
                contact
                    .caps
                    .push(FrequencyCap {
                        purpose: Purpose::from_id(p).unwrap(),
                        max_notices: max,
                        period_seconds: period,
                    })
                    .unwrap();
            }
            for t in muted {
                contact.muted_topics.push(t).unwrap();
            }
            ConsentState {
                version,
                issued_at,
                reconfirm_by: issued_at + delta,
                notice_hash,
                grants: grants.into_iter().collect(),
                contact,
            }
        })
}

/// A metric with a unique id, of any category, and a value that fits it.
pub fn metric_value(category: DataCategory, marker: u64) -> MetricValue {
    match category {
        DataCategory::Location => {
            MetricValue::Location { lat_e7: 525_212_345, lon_e7: 134_012_345, precision: LocationPrecision::Exact }
        }
        _ => MetricValue::Counter(marker),
    }
}

pub fn metrics() -> impl Strategy<Value = Vec<Metric>> {
    btree_map(any::<u16>(), (0u8..7, any::<u64>()), 0..=20).prop_map(|m| {
        m.into_iter()
            .map(|(id, (c, v))| {
                let category = DataCategory::from_index(c).unwrap();
                Metric { id, category, value: metric_value(category, v) }
            })
            .collect()
    })
}
