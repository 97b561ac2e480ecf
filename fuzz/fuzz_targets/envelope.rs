//! Any bytes given to the envelope parser and opener never panic: the header
//! parse, key agreement on any ephemeral key, decryption under the fixture
//! vendor's keys, and signature verification of whatever decrypts.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use spime::seal::{Envelope, VendorKeys};

/// The fixture vendor's keys, made once per process (making them costs a
/// key expansion and an X25519, more than most inputs).
fn keys() -> &'static VendorKeys {
    static KEYS: OnceLock<VendorKeys> = OnceLock::new();
    KEYS.get_or_init(|| VendorKeys::from_secrets(&[0x11; 32], &[0x22; 32]))
}

fuzz_target!(|data: &[u8]| {
    let Ok(env) = Envelope::parse(data) else { return };
    let keys = keys();
    let eph = env.header.ephemeral.unwrap_or([9; 32]);
    let Ok(session) = keys.accept_epoch(&env.header.device, env.header.epoch, &eph) else { return };
    let mut buf = [0u8; spime::message::MAX_SEALED_LEN];
    if let Ok(plain) = env.decrypt(&session, &mut buf) {
        let _ = plain.verify(&keys.public().signing).map(|v| v.decode::<spime::message::Usage>());
    }
});
