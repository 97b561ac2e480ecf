//! Any bytes given to the envelope parser and the opener never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = spime::seal::Envelope::parse(data) {
        let keys = spime::seal::VendorKeys::from_secrets(&[1; 32], [2; 32]);
        if let Some(eph) = env.header.ephemeral {
            if let Ok(k) = keys.accept_epoch(&env.header.device, env.header.epoch, &eph) {
                let mut buf = [0u8; spime::message::MAX_SEALED_LEN];
                let _ = env.decrypt(&k, &mut buf);
            }
        }
    }
});
