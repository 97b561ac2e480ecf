//! The `spime-vendor` command line: keys, decode, help, the config file,
//! and `serve` as a process (real devices over CoAP, HTTP, SIGTERM).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::std_instead_of_core
)]

mod server_common;

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
    assert!(ok, "{out}");
    for flag in [
        "--config",
        "--data",
        "--keys",
        "--postgres",
        "--coap",
        "--http",
        "--batch",
        "--queue",
        "--workers",
        "--log",
        "--check",
        "--vendor-key",
        "--authority",
        "--store",
    ] {
        assert!(out.contains(flag), "serve --help lacks {flag}:\n{out}");
    }
    // The config file's keys, documented at the end of the long help.
    assert!(out.contains("CONFIG FILE") && out.contains("coap = \"0.0.0.0:5683\""), "{out}");
    for cmd in [
        &["keys", "init", "--help"][..],
        &["keys", "show", "--help"],
        &["keys", "ca", "init", "--help"],
        &["keys", "certify", "--help"],
        &["decode", "--help"],
    ] {
        let (ok, out, _) = vendor(cmd);
        assert!(ok && out.contains("Usage:"), "{cmd:?}: {out}");
    }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("spime-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn keys_init_writes_the_library_format_and_show_prints_the_public_keys() {
    let dir = temp_dir("keys");
    let d = dir.join("data");
    let (ok, out, err) = vendor(&["keys", "init", d.to_str().unwrap()]);
    assert!(ok, "{err}");
    let bytes = std::fs::read(d.join("vendor.keys")).unwrap();
    assert_eq!(bytes.len(), 69);
    assert_eq!(&bytes[..5], b"SPVK\x01");
    let keys = spime::seal::VendorKeys::from_bytes(&bytes).unwrap();
    let signing = hex::encode(keys.public().signing.to_bytes());
    let agreement = hex::encode(keys.public().key_agreement);
    assert!(out.contains(&signing) && out.contains(&agreement), "{out}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(d.join("vendor.keys")).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let public = std::fs::read_to_string(d.join("vendor.pub")).unwrap();
    assert!(public.contains(&format!("signing {signing}")) && public.contains(&format!("key-agreement {agreement}")));
    // `keys show` takes the directory or the file itself.
    for path in [d.clone(), d.join("vendor.keys")] {
        let (ok, shown, err) = vendor(&["keys", "show", path.to_str().unwrap()]);
        assert!(ok && shown.contains(&signing) && shown.contains(&agreement), "{shown}{err}");
    }
    // Not a key file: refused, saying what the format is.
    std::fs::write(dir.join("other"), "signing-seed 00\n").unwrap();
    let (ok, _, err) = vendor(&["keys", "show", dir.join("other").to_str().unwrap()]);
    assert!(!ok && err.contains("not a spime vendor key file") && err.contains("69-byte"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn config_file_sets_every_setting_and_flags_override_it() {
    let dir = temp_dir("config");
    server_common::write_vendor_keys(&dir.join("data"));
    let config = dir.join("spime-vendor.toml");
    std::fs::write(
        &config,
        "data = \"data\"\ncoap = \"127.0.0.1:15683\"\nhttp = \"127.0.0.1:18080\"\nbatch = 32\nqueue = 100\nworkers = 3\nlog = \"debug\"\n",
    )
    .unwrap();
    let c = config.to_str().unwrap();
    let check = |args: &[&str]| -> toml::Table {
        let (ok, out, err) = vendor(&[&["serve", "--config", c, "--check"][..], args].concat());
        assert!(ok, "{err}");
        toml::from_str(&out).unwrap()
    };
    // The file alone; its relative paths are relative to the file.
    let t = check(&[]);
    assert_eq!(t["coap"].as_str(), Some("127.0.0.1:15683"));
    assert_eq!(t["http"].as_str(), Some("127.0.0.1:18080"));
    assert_eq!(t["batch"].as_integer(), Some(32));
    assert_eq!(t["queue"].as_integer(), Some(100));
    assert_eq!(t["workers"].as_integer(), Some(3));
    assert_eq!(t["log"].as_str(), Some("debug"));
    assert_eq!(t["data"].as_str(), Some(dir.join("data").to_str().unwrap()));
    assert_eq!(t["keys"].as_str(), Some(dir.join("data/vendor.keys").to_str().unwrap()));
    // Flags win over the file, key by key; the rest still comes from the file.
    let t = check(&["--http", "127.0.0.1:28080", "--batch", "8", "--log", "warn"]);
    assert_eq!(t["http"].as_str(), Some("127.0.0.1:28080"));
    assert_eq!(t["batch"].as_integer(), Some(8));
    assert_eq!(t["log"].as_str(), Some("warn"));
    assert_eq!(t["coap"].as_str(), Some("127.0.0.1:15683"));
    assert_eq!(t["queue"].as_integer(), Some(100));
    // Without a file: the defaults.
    let (ok, out, err) = vendor(&["serve", "--data", dir.join("data").to_str().unwrap(), "--check"]);
    assert!(ok, "{err}");
    let t: toml::Table = toml::from_str(&out).unwrap();
    assert_eq!(t["coap"].as_str(), Some("127.0.0.1:5683"));
    assert_eq!(t["http"].as_str(), Some("127.0.0.1:8080"));
    assert_eq!(t["batch"].as_integer(), Some(256));
    assert!(t.get("workers").is_none(), "one per core unless set");
    assert_eq!(t["in_flight"].as_integer(), Some(1), "one batch at a time unless set");

    // The documented example (docs/spime-vendor.toml) holds only known keys.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/spime-vendor.toml");
    let (ok, out, err) =
        vendor(&["serve", "--config", example, "--data", dir.join("data").to_str().unwrap(), "--check"]);
    assert!(ok, "{err}");
    let t: toml::Table = toml::from_str(&out).unwrap();
    assert_eq!(t["coap"].as_str(), Some("0.0.0.0:5683"));

    // An unknown key is an error that names it (and the file), and nothing starts.
    std::fs::write(&config, "data = \"data\"\ncolour = \"blue\"\n").unwrap();
    let (ok, _, err) = vendor(&["serve", "--config", c]);
    assert!(!ok && err.contains("unknown field `colour`") && err.contains("spime-vendor.toml"), "{err}");
    // A value of the wrong type names its key too.
    std::fs::write(&config, "data = \"data\"\nbatch = \"many\"\n").unwrap();
    let (ok, _, err) = vendor(&["serve", "--config", c]);
    assert!(!ok && err.contains("batch"), "{err}");
    // Neither a data directory nor a database: said so.
    let (ok, _, err) = vendor(&["serve"]);
    assert!(!ok && err.contains("--data DIR"), "{err}");
    // Keys missing: the way to make them.
    let (ok, _, err) = vendor(&["serve", "--data", dir.join("nothing").to_str().unwrap()]);
    assert!(!ok && err.contains("keys init"), "{err}");
    // A port in use: the error says which one.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let data = dir.join("data");
    let (ok, _, err) = vendor(&["serve", "--data", data.to_str().unwrap(), "--coap", &addr, "--http", "127.0.0.1:0"]);
    assert!(!ok && err.contains(&format!("CoAP on udp://{addr}")) && err.contains("in use"), "{err}");
    #[cfg(not(feature = "postgres"))]
    {
        let (ok, _, err) = vendor(&["serve", "--data", dir.join("data").to_str().unwrap(), "--postgres", "host=db"]);
        assert!(!ok && err.contains("`postgres` feature"), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `serve` as an operator runs it: a config file and flags, real devices
/// over CoAP, the operator's HTTP, SIGTERM; then `decode` opens a message
/// with the keys and the store the server left.
#[cfg(unix)]
#[test]
fn serve_runs_until_sigterm_and_keeps_what_it_acknowledged() {
    let dir = temp_dir("serve");
    server_common::write_vendor_keys(&dir.join("data"));
    let config = dir.join("spime-vendor.toml");
    std::fs::write(&config, "data = \"data\"\ncoap = \"127.0.0.1:5683\"\nbatch = 16\n").unwrap();
    // Port 0 from the flags overrides the file's fixed port.
    let served = server_common::Served::start(&[
        "--config",
        config.to_str().unwrap(),
        "--coap",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
    ]);
    assert_ne!(served.coap.port(), 5683);
    let session = server_common::real_time_session(served.coap, 3);
    let (status, body) = server_common::get(served.http, "/api/devices");
    assert!(status == 200 && body.contains(&session.id), "{status} {body}");
    let (status, body) = server_common::get(served.http, &format!("/api/devices/{}/messages", session.id));
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap().as_array().unwrap().len(), 3, "{body}");
    let (status, body) = server_common::get(served.http, "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (ok, log) = served.terminate();
    assert!(ok, "{log}");
    assert!(log.contains("SIGTERM") && log.contains("server stopped") && !log.contains("panicked"), "{log}");

    // The store is closed: `decode` opens the last usage report with it.
    let data = dir.join("data");
    let (ok, out, err) = vendor(&["decode", "--data", data.to_str().unwrap(), &hex::encode(&session.usage)]);
    assert!(ok, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((j["header"]["kind"].as_str(), j["verified"].as_bool()), (Some("usage"), Some(true)), "{out}");
    assert_eq!(j["body"]["metrics"][0]["value"]["Counter"], 7, "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `serve --store fjall` keeps the store in DATA/vendor.fjall: what it
/// acknowledged is there after a restart, and `decode` finds the session
/// keys in it.
#[cfg(all(unix, feature = "fjall"))]
#[test]
fn serve_on_the_fjall_store_keeps_what_it_acknowledged_across_a_restart() {
    let dir = temp_dir("serve-fjall");
    let data = dir.join("data");
    server_common::write_vendor_keys(&data);
    // A record cache of two devices: every batch also reads through to disk.
    let args = [
        "--data",
        data.to_str().unwrap(),
        "--store",
        "fjall",
        "--record-cache",
        "2",
        "--in-flight",
        "2",
        "--workers",
        "1",
        "--coap",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
    ];
    let (ok, out, err) = vendor(&[&["serve", "--check"][..], &args].concat());
    assert!(ok && out.contains("store = \"fjall\"") && out.contains("fjall directory"), "{out}{err}");
    assert!(out.contains("record_cache = 2") && out.contains("in_flight = 2"), "{out}");
    let served = server_common::Served::start(&args);
    let session = server_common::real_time_session(served.coap, 3);
    let (ok, log) = served.terminate();
    assert!(ok && log.contains("(fjall, a record cache of 2 devices)"), "{log}");
    assert!(data.join("vendor.fjall").join("CURRENT").is_file());
    assert!(!data.join("vendor.redb").exists(), "the redb store was not used");
    // Restarted on the same directory, the server still has the messages.
    let served = server_common::Served::start(&args);
    let (status, body) = server_common::get(served.http, &format!("/api/devices/{}/messages", session.id));
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap().as_array().unwrap().len(), 3, "{body}");
    let (ok, log) = served.terminate();
    assert!(ok, "{log}");
    let (ok, out, err) = vendor(&["decode", "--data", data.to_str().unwrap(), &hex::encode(&session.usage)]);
    assert!(ok, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((j["header"]["kind"].as_str(), j["verified"].as_bool()), (Some("usage"), Some(true)), "{out}");
    // Both stores at once is not a thing.
    let (ok, _, err) =
        vendor(&["serve", "--data", data.to_str().unwrap(), "--store", "fjall", "--postgres", "host=db"]);
    assert!(!ok && err.contains("not both"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A build without the feature says so for `--store fjall`; an unknown
/// store is refused by name either way.
#[test]
fn store_choice_is_checked() {
    let dir = temp_dir("store-choice");
    let data = dir.join("data");
    server_common::write_vendor_keys(&data);
    let (ok, _, err) = vendor(&["serve", "--data", data.to_str().unwrap(), "--store", "sqlite", "--check"]);
    assert!(!ok && err.contains("sqlite"), "{err}");
    // The record cache sizes the fjall store only.
    let (ok, _, err) = vendor(&["serve", "--data", data.to_str().unwrap(), "--record-cache", "10", "--check"]);
    assert!(!ok && err.contains("record_cache") && err.contains("fjall"), "{err}");
    let (ok, out, err) = vendor(&["serve", "--data", data.to_str().unwrap(), "--store", "fjall", "--check"]);
    if cfg!(feature = "fjall") {
        assert!(ok && out.contains("vendor.fjall"), "{out}{err}");
    } else {
        assert!(!ok && err.contains("without the fjall store"), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
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
