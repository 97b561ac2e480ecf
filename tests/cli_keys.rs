//! Vendor key rotation as an operator runs it with `spime-vendor`: the
//! offline certificate authority (`keys ca init`), certificates for two
//! vendor key pairs (`keys certify`), `serve` restarted with a growing
//! keyring, and real devices over CoAP that learn the new key, move to it,
//! and are refused with code 56 under a retired one (SPEC.md §5.11, §8.7,
//! §9.2, §11.2).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::std_instead_of_core
)]

mod server_common;

use std::path::{Path, PathBuf};
use std::process::Command;

use coap_lite::ResponseType;
use ed25519_dalek::SigningKey;
use server_common::{Dev, Ob, Served, consent, deliver, now, rng, storage};
use spime::consent::{DataCategory, Purpose};
use spime::device::metrics::{MetricDef, MetricKind, Metrics};
use spime::device::session::Identity;
use spime::message::{CertificateBody, DeviceCertificate, FirmwareVersion};
use spime::seal::{DeviceKey, Envelope, VendorPublicKeys};
use spime::server::coap::{Client, MESSAGE_PATH};
use spime::server::keyfile;
use spime::wire::{DeviceId, Kind};

fn vendor(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_spime-vendor")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("spime-cli-keys-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `keys init DIR` (a vendor key pair), then `keys certify` it as `serial`.
fn certified_pair(dir: &Path, name: &str, serial: u32, not_before: u64) {
    let (ok, _, err) = vendor(&["keys", "init", s(&dir.join(name))]);
    assert!(ok, "{err}");
    let (ok, out, err) = vendor(&[
        "keys",
        "certify",
        "--ca",
        s(&dir.join("ca/ca.key")),
        "--keys",
        s(&dir.join(name).join("vendor.keys")),
        "--serial",
        &serial.to_string(),
        "--not-before",
        &not_before.to_string(),
        "--out",
        s(&dir.join(name).join("vendor.cert")),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("serial         {serial}")), "{out}");
}

/// Device `n`, its certificate signed by the certificate authority, provisioned with `vendor`.
fn identity(n: u8, ca: &SigningKey, vendor: VendorPublicKeys, issued_at: u64) -> Identity {
    let id = DeviceId([0xD1, 0, 0, 0, 0, 0, 0, n]);
    let key = DeviceKey::from_seed(id, &[n; 32]);
    let certificate = DeviceCertificate::issue(
        CertificateBody {
            device: id,
            device_key: key.public().to_bytes(),
            model: "kettle-9000".try_into().unwrap(),
            hardware_revision: 3,
            issued_at,
            not_after: None,
        },
        ca,
    )
    .unwrap();
    Identity { key, certificate, firmware: FirmwareVersion { major: 1, minor: 4, patch: 2, build: 7 }, vendor }
}

/// Queues a usage report for the window ending at `end`.
fn usage_report(dev: &mut Dev<'_>, end: u64) {
    let mut m: Metrics<1> = Metrics::new(end - 60);
    m.define(MetricDef { id: 1, category: DataCategory::UsageCounters, kind: MetricKind::Counter }).unwrap();
    m.increment(1, 1).unwrap();
    dev.registered().unwrap().report_window(Purpose::USAGE_ANALYTICS, m.take_window(end), end).unwrap().unwrap();
}

fn kind_of(payload: &[u8]) -> Option<Kind> {
    Envelope::parse(payload).ok().map(|e| e.header.kind)
}

/// A config file: the data directory, the authority, and the keyring.
fn config(dir: &Path, name: &str, keyring: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("data = \"data\"\nauthority = \"ca/ca.pub\"\n{keyring}")).unwrap();
    path
}

fn serve(config: &Path) -> Served {
    Served::start(&["--config", s(config), "--coap", "127.0.0.1:0", "--http", "127.0.0.1:0"])
}

const KEY1: &str = "[[vendor_key]]\nkeys = \"k1/vendor.keys\"\ncertificate = \"k1/vendor.cert\"\n";
const KEY2: &str = "[[vendor_key]]\nkeys = \"k2/vendor.keys\"\ncertificate = \"k2/vendor.cert\"\n";

#[cfg(unix)]
#[test]
fn an_operator_rotates_the_vendor_key_and_devices_follow() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("rotate");
    let t = now();

    // The offline certificate authority: ca.key (0600) and ca.pub, its public key printed.
    let (ok, out, err) = vendor(&["keys", "ca", "init", s(&dir.join("ca"))]);
    assert!(ok, "{err}");
    let ca = keyfile::load_ca(&dir.join("ca/ca.key")).unwrap();
    let authority = hex::encode(ca.verifying_key().to_bytes());
    assert!(out.contains(&authority), "{out}");
    let bytes = std::fs::read(dir.join("ca/ca.key")).unwrap();
    assert_eq!((bytes.len(), &bytes[..5]), (keyfile::CA_KEY_LEN, &b"SPCA\x01"[..]));
    assert_eq!(std::fs::metadata(dir.join("ca/ca.key")).unwrap().permissions().mode() & 0o777, 0o600);
    let (ok, _, err) = vendor(&["keys", "ca", "init", s(&dir.join("ca"))]);
    assert!(!ok && err.contains("refusing to overwrite"), "{err}");
    // Two vendor key pairs, certified as serials 1 and 2.
    certified_pair(&dir, "k1", 1, t - 86_400);
    certified_pair(&dir, "k2", 2, t - 86_400);
    let key1 = keyfile::load_file(&dir.join("k1/vendor.keys")).unwrap();
    let (ok, out, _) = vendor(&["keys", "show", s(&dir.join("k2/vendor.cert"))]);
    assert!(ok && out.contains("vendor key certificate") && out.contains("serial         2"), "{out}");

    // Serve with key 1 alone. Two devices provisioned with it and with
    // VCA.pub register and report.
    let only1 = config(&dir, "one.toml", KEY1);
    let served = serve(&only1);
    assert!(served.start_log.contains("vendor keys: serials 1 "), "{}", served.start_log);
    let mut client = Client::new(served.coap).unwrap();
    let (mut oa, mut ob) = (Ob::new(), Ob::new());
    let mut a = Dev::boot(identity(1, &ca, key1.public(), t - 86_400), storage(), &mut oa)
        .unwrap()
        .with_key_authority(ca.verifying_key());
    let mut b = Dev::boot(identity(2, &ca, key1.public(), t - 86_400), storage(), &mut ob)
        .unwrap()
        .with_key_authority(ca.verifying_key());
    for (dev, seed) in [(&mut a, 1), (&mut b, 2)] {
        dev.unregistered().unwrap().register(&mut rng(seed), consent(1, t - 20_000)).unwrap();
        let replies = deliver(&mut client, dev);
        assert_eq!(replies[0].code, ResponseType::Changed, "{:?}", String::from_utf8_lossy(&replies[0].payload));
        assert_eq!(kind_of(&replies[0].payload), Some(Kind::RECEIPT));
        assert!(dev.epoch_confirmed());
        usage_report(dev, t - 10_000);
        let replies = deliver(&mut client, dev);
        assert_eq!((replies[0].code, replies[0].payload.len()), (ResponseType::Changed, 0), "nothing to say yet");
    }
    let (ok, log) = served.terminate();
    assert!(ok, "{log}");

    // Restart with keys 1 and 2 (2 the newest): A's next report is answered with a KeyUpdate.
    let both = config(&dir, "two.toml", &format!("{KEY1}{KEY2}"));
    let served = serve(&both);
    assert!(served.start_log.contains("vendor keys: serials 1, 2 "), "{}", served.start_log);
    let mut client = Client::new(served.coap).unwrap();
    usage_report(&mut a, t - 9_000);
    let replies = deliver(&mut client, &mut a);
    assert_eq!(replies[0].code, ResponseType::Changed);
    assert_eq!(kind_of(&replies[0].payload), Some(Kind::KEY_UPDATE));
    assert_eq!(a.open_key_update(&replies[0].payload, t).unwrap(), 2);
    // A renews its keys with key 2; the receipt confirming the epoch is signed by key 2.
    a.registered().unwrap().renew_keys(&mut rng(3)).unwrap();
    usage_report(&mut a, t - 8_000);
    let replies = deliver(&mut client, &mut a);
    assert_eq!(kind_of(&replies[0].payload), Some(Kind::RECEIPT));
    assert!(a.epoch_confirmed());
    usage_report(&mut a, t - 7_000);
    let replies = deliver(&mut client, &mut a);
    assert_eq!((replies[0].code, replies[0].payload.len()), (ResponseType::Changed, 0), "A is on key 2");
    let (ok, log) = served.terminate();
    assert!(ok, "{log}");

    // Key 1 retires (at a time already past: the server's clock is at or after it).
    let retired = config(&dir, "retired.toml", &format!("{KEY1}retire_at = {}\n{KEY2}", now()));
    let (ok, out, err) = vendor(&["serve", "--config", s(&retired), "--check"]);
    assert!(ok, "{err}");
    assert!(out.contains("serial 1: retired at") && out.contains("serial 2: live, newest"), "{out}");
    let served = serve(&retired);
    let mut client = Client::new(served.coap).unwrap();
    // B, still under key 1's epoch, is refused with code 56 (4.12), and the
    // refusal carries the new key.
    usage_report(&mut b, t - 6_000);
    let (counter, envelope) = b.queued_envelopes().unwrap().into_iter().map(|(m, e)| (m.counter, e)).next().unwrap();
    let reply = client.post(MESSAGE_PATH, &envelope).unwrap();
    assert_eq!(reply.code, ResponseType::PreconditionFailed);
    assert_eq!(kind_of(&reply.payload), Some(Kind::KEY_UPDATE));
    assert_eq!(b.open_key_update(&reply.payload, t).unwrap(), 2);
    let (status, metrics) = server_common::get(served.http, "/metrics");
    assert!(status == 200 && metrics.contains("vendor-key-retired"), "{metrics}");
    // The report sealed under key 1's epoch cannot go: B drops it, renews with key 2, reports.
    b.ack(counter).unwrap();
    b.registered().unwrap().renew_keys(&mut rng(4)).unwrap();
    usage_report(&mut b, t - 5_000);
    let replies = deliver(&mut client, &mut b);
    assert_eq!(kind_of(&replies[0].payload), Some(Kind::RECEIPT));
    assert!(b.epoch_confirmed());
    // A, on key 2 already, is unaffected.
    usage_report(&mut a, t - 4_000);
    let replies = deliver(&mut client, &mut a);
    assert_eq!((replies[0].code, replies[0].payload.len()), (ResponseType::Changed, 0));
    let (ok, log) = served.terminate();
    assert!(ok && !log.contains("panicked"), "{log}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `serve` refuses a keyring it cannot use, before it listens, saying why.
#[test]
fn a_wrong_keyring_is_refused_at_startup_with_its_reason() {
    let dir = temp_dir("refuse");
    let t = now();
    let k1_keys = dir.join("k1/vendor.keys");
    assert!(vendor(&["keys", "ca", "init", s(&dir.join("ca"))]).0);
    for (name, serial) in [("k1", 1), ("k2", 2), ("k3", 3), ("k4", 4)] {
        certified_pair(&dir, name, serial, t - 86_400);
    }
    // Another authority, and a certificate from it.
    assert!(vendor(&["keys", "ca", "init", s(&dir.join("other"))]).0);
    let (ok, _, err) = vendor(&[
        "keys",
        "certify",
        "--ca",
        s(&dir.join("other/ca.key")),
        "--keys",
        s(&dir.join("k1/vendor.keys")),
        "--serial",
        "1",
        "--out",
        s(&dir.join("k1/other.cert")),
    ]);
    assert!(ok, "{err}");
    let check = |keyring: &str| {
        let c = config(&dir, "check.toml", keyring);
        vendor(&["serve", "--config", s(&c), "--check"])
    };
    let pair = |n: u32, cert: &str| format!("[[vendor_key]]\nkeys = \"k{n}/vendor.keys\"\ncertificate = \"{cert}\"\n");

    // The good keyring, in any order in the file: the highest serial is the newest.
    let (ok, out, err) = check(&format!("{}{}", pair(2, "k2/vendor.cert"), pair(1, "k1/vendor.cert")));
    assert!(ok, "{err}");
    let (one, two) = (out.find("serial 1: live;").unwrap(), out.find("serial 2: live, newest").unwrap());
    assert!(one < two, "{out}");
    let t2: toml::Table = toml::from_str(&out).unwrap();
    assert_eq!(t2["vendor_key"].as_array().unwrap().len(), 2);
    assert_eq!(t2["authority"].as_str().unwrap().len(), 64);

    // A certificate that is not the key's.
    let (ok, _, err) = check(&pair(1, "k2/vendor.cert"));
    assert!(!ok && err.contains("k2/vendor.cert: the certificate does not match the vendor key"), "{err}");
    // A certificate from another authority.
    let (ok, _, err) = check(&pair(1, "k1/other.cert"));
    assert!(!ok && err.contains("not signed by the certificate authority"), "{err}");
    // A key file given as the certificate.
    let (ok, _, err) = check(&pair(1, "k1/vendor.keys"));
    assert!(!ok && err.contains("not a spime vendor key certificate"), "{err}");
    // Two pairs under one serial; the same pair twice.
    let ca_key = dir.join("ca/ca.key");
    let recertify = |keys: &str, serial: &str, out: &str| {
        let (keys, out) = (dir.join(keys), dir.join(out));
        let (ok, _, err) =
            vendor(&["keys", "certify", "--ca", s(&ca_key), "--keys", s(&keys), "--serial", serial, "--out", s(&out)]);
        assert!(ok, "{err}");
    };
    recertify("k2/vendor.keys", "1", "k2/as1.cert");
    recertify("k1/vendor.keys", "3", "k1/as3.cert");
    let (ok, _, err) = check(&format!("{}{}", pair(1, "k1/vendor.cert"), pair(2, "k2/as1.cert")));
    assert!(!ok && err.contains("both have serial 1: each pair needs its own serial"), "{err}");
    let (ok, _, err) = check(&format!("{}{}", pair(1, "k1/vendor.cert"), pair(1, "k1/as3.cert")));
    assert!(!ok && err.contains("the same key pair under serials 1 and 3"), "{err}");
    let twin = "[[vendor_key]]\nkeys = \"k1/vendor.keys\"\n[[vendor_key]]\nkeys = \"k2/vendor.keys\"\n";
    let (ok, _, err) = check(twin);
    assert!(
        !ok && err.contains("both have serial 0") && err.contains("only the first pair may be uncertified"),
        "{err}"
    );
    // Two pairs on one key-agreement key (SPEC.md §9.2).
    for (name, seed) in [("vx1.keys", 1), ("vx2.keys", 2)] {
        let keys = spime::seal::VendorKeys::from_secrets(&[seed; 32], &[3; 32]);
        std::fs::write(dir.join(name), keys.to_bytes().as_slice()).unwrap();
    }
    recertify("vx1.keys", "1", "vx1.cert");
    recertify("vx2.keys", "2", "vx2.cert");
    let shared = "[[vendor_key]]\nkeys = \"vx1.keys\"\ncertificate = \"vx1.cert\"\n\
                  [[vendor_key]]\nkeys = \"vx2.keys\"\ncertificate = \"vx2.cert\"\n";
    let (ok, _, err) = check(shared);
    assert!(!ok && err.contains("share a key-agreement key"), "{err}");
    // More than MAX_VENDOR_KEYS.
    let four: String = (1..=4).map(|n| pair(n, &format!("k{n}/vendor.cert"))).collect();
    let (ok, _, err) = check(&four);
    assert!(!ok && err.contains("at most 3"), "{err}");
    // The newest cannot retire.
    let (ok, _, err) = check(&format!("{}retire_at = 1\n", pair(1, "k1/vendor.cert")));
    assert!(!ok && err.contains("the newest vendor key (serial 1) cannot retire"), "{err}");
    // A certified key needs the authority.
    let c = dir.join("noca.toml");
    std::fs::write(&c, format!("data = \"data\"\n{}", pair(1, "k1/vendor.cert"))).unwrap();
    let (ok, _, err) = vendor(&["serve", "--config", s(&c), "--check"]);
    assert!(!ok && err.contains("give --authority"), "{err}");
    // keys and vendor_key together.
    let (ok, _, err) = vendor(&[
        "serve",
        "--data",
        s(&dir.join("data")),
        "--keys",
        s(&dir.join("k1/vendor.keys")),
        "--vendor-key",
        &format!("{},{}", s(&dir.join("k1/vendor.keys")), s(&dir.join("k1/vendor.cert"))),
        "--check",
    ]);
    assert!(!ok && err.contains("not both"), "{err}");
    // The same keyring from flags: KEYS,CERT[,RETIRE_AT].
    let flag = |n: u32, retire: &str| {
        format!("{},{}{retire}", s(&dir.join(format!("k{n}/vendor.keys"))), s(&dir.join(format!("k{n}/vendor.cert"))))
    };
    let (ok, out, err) = vendor(&[
        "serve",
        "--data",
        s(&dir.join("data")),
        "--authority",
        s(&dir.join("ca/ca.pub")),
        "--vendor-key",
        &flag(1, ",1"),
        "--vendor-key",
        &flag(2, ""),
        "--check",
    ]);
    assert!(ok && out.contains("serial 1: retired at") && out.contains("serial 2: live, newest"), "{out}{err}");
    let (ok, _, err) = vendor(&["serve", "--data", "d", "--vendor-key", "k,c,soon", "--check"]);
    assert!(!ok && err.contains("Unix seconds"), "{err}");
    // Without --authority, the serial-0 pair's signing key is the authority
    // (SPEC.md §2: VCA may be VS): `keys certify --ca` takes its key file.
    assert!(vendor(&["keys", "init", s(&dir.join("k0"))]).0);
    let (k0_keys, k3_keys, k3_cert) = (dir.join("k0/vendor.keys"), dir.join("k3/vendor.keys"), dir.join("k3/by0.cert"));
    let (ok, _, err) =
        vendor(&["keys", "certify", "--ca", s(&k0_keys), "--keys", s(&k3_keys), "--serial", "1", "--out", s(&k3_cert)]);
    assert!(ok, "{err}");
    let (ok, out, err) = vendor(&[
        "serve",
        "--data",
        s(&dir.join("data")),
        "--vendor-key",
        s(&k0_keys),
        "--vendor-key",
        &format!("{},{}", s(&k3_keys), s(&k3_cert)),
        "--check",
    ]);
    assert!(ok && out.contains("serial 1: live, newest") && out.contains("(the serial-0 signing key)"), "{out}{err}");
    // ...but not a CA the file does not name.
    let (ok, _, err) = vendor(&[
        "serve",
        "--data",
        s(&dir.join("data")),
        "--vendor-key",
        s(&k0_keys),
        "--vendor-key",
        &format!("{},{}", s(&k1_keys), s(&dir.join("k1/vendor.cert"))),
        "--check",
    ]);
    assert!(!ok && err.contains("not signed by the certificate authority"), "{err}");
    // `keys show` names every kind of file.
    for (file, says) in [
        ("ca", "certificate authority key"),
        ("ca/ca.pub", "authority "),
        ("k0/vendor.pub", "key-agreement "),
        ("k0", "vendor key pair"),
    ] {
        let (ok, out, err) = vendor(&["keys", "show", s(&dir.join(file))]);
        assert!(ok && out.contains(says), "{file}: {out}{err}");
    }
    // certify never overwrites, and refuses times the wrong way round.
    let certify = |out: &str, extra: &[&str]| {
        let args =
            [&["keys", "certify", "--ca", s(&ca_key), "--keys", s(&k1_keys), "--serial", "1", "--out", out][..], extra]
                .concat();
        vendor(&args)
    };
    let (ok, _, err) = certify(s(&dir.join("k1/vendor.cert")), &[]);
    assert!(!ok && err.contains("refusing to overwrite"), "{err}");
    let (ok, _, err) = certify(s(&dir.join("k1/late.cert")), &["--not-before", "10", "--not-after", "5"]);
    assert!(!ok && err.contains("before --not-before"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
