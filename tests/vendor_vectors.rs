//! The vendor pipeline against the published vectors: the life the valid
//! device-to-vendor vectors tell is accepted message by message, and every
//! invalid vector a vendor opens is refused with the §9 error that SPEC.md
//! §10 maps its core error to.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::std_instead_of_core
)]

use serde_json::Value;
use spime::seal::VendorKeys;
use spime::vendor::{IngestConfig, Ingestor, MemoryStore, Store};

const T0: u64 = 1_795_000_000;

fn load(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors").join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn vendor(v: &Value) -> Ingestor<MemoryStore> {
    let k = &v["keys"];
    let seed: [u8; 32] = hex::decode(k["vendor_signing_seed"].as_str().unwrap()).unwrap().try_into().unwrap();
    let kx: [u8; 32] = hex::decode(k["vendor_key_agreement_secret"].as_str().unwrap()).unwrap().try_into().unwrap();
    // Vendor key pair 1 (life 4 rotates to it, SPEC §8.7), certified by the
    // KeyUpdate that carries it; VCA is the provisioned VS in the vectors.
    let pair = k["vendor_keys"].as_array().unwrap().iter().find(|p| p["serial"] == 1).unwrap();
    let seed1: [u8; 32] = hex::decode(pair["signing_seed"].as_str().unwrap()).unwrap().try_into().unwrap();
    let kx1: [u8; 32] = hex::decode(pair["key_agreement_secret"].as_str().unwrap()).unwrap().try_into().unwrap();
    let update =
        v["messages"].as_array().unwrap().iter().find(|m| m["life"] == 4 && m["name"] == "key_update").unwrap();
    let update: spime::message::KeyUpdate = spime::codec::decode(&bytes(&update["body_hex"])).unwrap();
    let vendor = VendorKeys::from_secrets(&seed, &kx);
    let authority = vendor.public().signing;
    Ingestor::new(MemoryStore::new(), vendor, IngestConfig::default())
        .with_certificate_authority(authority)
        .with_vendor_key(VendorKeys::from_secrets(&seed1, &kx1), update.certificate)
        .unwrap()
}

fn bytes(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

#[test]
fn the_vendor_accepts_the_lives_the_valid_vectors_tell() {
    let valid = load("valid.json");
    let messages = valid["messages"].as_array().unwrap();
    let mut accepted = 0;
    for life in 1..=4u64 {
        // Life 2's longest certificate is issued at 2^63 (ten bytes): the
        // vendor checks it at its time (SPEC §5.4), so that life runs then.
        let now = if life == 2 { (1 << 63) + 3_600 } else { T0 + 3_600 };
        // A fresh vendor for each life; the device's messages in order.
        let ingestor = vendor(&valid);
        for m in messages.iter().filter(|m| m["life"] == life && m["direction"] == "device_to_vendor") {
            let name = m["name"].as_str().unwrap();
            let acc =
                ingestor.ingest(&bytes(&m["sealed_hex"]), now).unwrap_or_else(|e| panic!("life {life} {name}: {e:?}"));
            // Life 4: the epoch is recorded under the vendor key pair that opened it.
            // (Life 2's last pair shares the provisioned VX, which this vendor holds as pair 0.)
            if life == 4 {
                let serial = ingestor.store().device(&acc.device).unwrap().unwrap().session.vendor_key();
                assert_eq!(u64::from(serial), m["vendor_key"].as_u64().unwrap(), "{name}");
            }
            accepted += 1;
        }
    }
    assert_eq!(accepted, messages.iter().filter(|m| m["direction"] == "device_to_vendor").count());
}

/// Every invalid vector a vendor opens is refused with the error and code
/// `vendor_error`/`vendor_code` name (SPEC.md §10's correspondence).
#[test]
fn the_vendor_refuses_every_invalid_vector_with_the_mapped_error() {
    let valid = load("valid.json");
    let invalid = load("invalid.json");
    let mut checked = 0;
    for m in invalid["messages"].as_array().unwrap().iter().filter(|m| m["opened_by"] == "vendor") {
        let name = m["name"].as_str().unwrap();
        let ingestor = vendor(&valid);
        for before in m["accepted_before"].as_array().unwrap() {
            ingestor.ingest(&bytes(before), T0 + 3_600).unwrap_or_else(|e| panic!("{name}: setup refused: {e:?}"));
        }
        let err = ingestor.ingest(&bytes(&m["sealed_hex"]), T0 + 3_600).expect_err(name);
        assert_eq!(format!("{err:?}"), m["vendor_error"].as_str().unwrap(), "{name}");
        assert_eq!(u64::from(err.code()), m["vendor_code"].as_u64().unwrap(), "{name}");
        checked += 1;
    }
    assert!(checked >= 60, "{checked} vendor vectors");
}
