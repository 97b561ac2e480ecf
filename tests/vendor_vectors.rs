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
use spime::vendor::{IngestConfig, Ingestor, MemoryStore};

const T0: u64 = 1_795_000_000;

fn load(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors").join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn vendor(v: &Value) -> Ingestor<MemoryStore> {
    let k = &v["keys"];
    let seed: [u8; 32] = hex::decode(k["vendor_signing_seed"].as_str().unwrap()).unwrap().try_into().unwrap();
    let kx: [u8; 32] = hex::decode(k["vendor_key_agreement_secret"].as_str().unwrap()).unwrap().try_into().unwrap();
    Ingestor::new(MemoryStore::new(), VendorKeys::from_secrets(&seed, &kx), IngestConfig::default())
}

fn bytes(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

/// SPEC.md §10: the core opener's error and the vendor pipeline's.
fn vendor_error(name: &str, core: &str) -> String {
    match core {
        "WrongEpoch { expected: 1, got: 2 }" => "UnopenedEpoch { current: 1, got: 2 }".into(),
        "BadCertificate" => "Unauthentic".into(),
        // The core opener knows one device; the vendor knows which it has.
        "Unauthentic" if name == "device_relabelled" => "UnknownDevice".into(),
        other => other.into(),
    }
}

#[test]
fn the_vendor_accepts_the_life_the_valid_vectors_tell() {
    let valid = load("valid.json");
    let ingestor = vendor(&valid);
    let now = T0 + 3_600;
    for m in valid["messages"].as_array().unwrap().iter().filter(|m| m["direction"] == "device_to_vendor") {
        let outcome = ingestor.ingest(&bytes(&m["sealed_hex"]), now);
        let name = m["name"].as_str().unwrap();
        outcome.unwrap_or_else(|e| panic!("{name}: {e:?}"));
    }
}

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
        let expected = vendor_error(name, m["error"].as_str().unwrap());
        // A vendor that never registered the device refuses its non-Register kinds earlier.
        if m["accepted_before"].as_array().unwrap().is_empty() && format!("{err:?}") == "UnknownDevice" {
            assert!(expected.starts_with("WrongDirection") || expected == "Unauthentic", "{name}: {expected}");
        } else {
            assert_eq!(format!("{err:?}"), expected, "{name}");
        }
        checked += 1;
    }
    assert!(checked >= 20, "{checked} vendor vectors");
}
