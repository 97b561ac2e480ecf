//! The `spime-vendor` command line: keys, decode, help.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::std_instead_of_core
)]

use std::process::Command;

use spime::consent::{CategorySet, DataCategory, Purpose};
use spime::message::{FirmwareVersion, Register};
use spime::server::keyfile;
use spime::vendor::sim::{SimDevice, consent, counter_usage};
use spime::wire::DeviceId;

fn vendor(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_spime-vendor")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn help_explains_every_command() {
    let (ok, out, _) = vendor(&["--help"]);
    assert!(ok);
    for cmd in ["serve", "keys", "decode"] {
        assert!(out.contains(cmd), "{out}");
    }
    let (ok, out, _) = vendor(&["serve", "--help"]);
    assert!(ok && out.contains("--coap") && out.contains("--http") && out.contains("--data"), "{out}");
}

#[test]
fn keys_init_then_decode_a_register_and_refuse_what_does_not_open() {
    let dir = std::env::temp_dir().join(format!("spime-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    let (ok, out, _) = vendor(&["keys", "init", d]);
    assert!(ok, "{out}");
    let keys = keyfile::load(&dir).unwrap();
    assert!(out.contains(&hex::encode(keys.public().signing.to_bytes())));
    let (ok, _, err) = vendor(&["keys", "init", d]);
    assert!(!ok && err.contains("refusing to overwrite"), "{err}");

    let mut dev = SimDevice::new(DeviceId(*b"decode01"), [4; 32], &keys).unwrap();
    let grants = [(Purpose::USAGE_ANALYTICS, CategorySet::EMPTY.with(DataCategory::UsageCounters))];
    let reg = Register {
        certificate: dev.certificate().clone(),
        firmware: FirmwareVersion { major: 1, minor: 2, patch: 3, build: 4 },
        consent: consent(1, &grants, 0),
        transfer: None,
    };
    let sealed = hex::encode(dev.seal(&reg).unwrap());

    // The header alone, without keys.
    let (ok, out, err) = vendor(&["decode", &sealed]);
    assert!(ok, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["header"]["kind"], "register");
    assert_eq!(j["header"]["device"], hex::encode(b"decode01"));
    assert!(j.get("body").is_none());

    // With the data directory: verified, the body as JSON.
    let (ok, out, err) = vendor(&["decode", "--data", d, &sealed]);
    assert!(ok, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["verified"], true);
    assert_eq!(j["body"]["firmware"]["major"], 1);

    // From a file too.
    let file = dir.join("register.bin");
    std::fs::write(&file, hex::decode(&sealed).unwrap()).unwrap();
    let (ok, out, _) = vendor(&["decode", "--file", file.to_str().unwrap()]);
    assert!(ok && out.contains("register"));

    // Tampered: refused as not authentic. Garbage: refused with the decoding error.
    let mut bytes = hex::decode(&sealed).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    let (ok, _, err) = vendor(&["decode", "--data", d, &hex::encode(&bytes)]);
    assert!(!ok && err.contains("authentic"), "{err}");
    let (ok, _, err) = vendor(&["decode", "00"]);
    assert!(!ok && err.starts_with("spime-vendor:"), "{err}");
    // A usage report of a device the store never saw: no key to open it with.
    let usage = hex::encode(dev.seal(&counter_usage(1, &[(1, 1)])).unwrap());
    let (ok, _, err) = vendor(&["decode", "--data", d, &usage]);
    assert!(!ok && err.contains("not in the store"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
