//! Any bytes given to the KeyUpdate body decoder never panic, and whatever
//! it accepts re-encodes to exactly the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use spime::message::KeyUpdate;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = spime::codec::decode::<KeyUpdate>(data) {
        let mut buf = [0u8; <KeyUpdate as spime::codec::Canonical>::MAX_ENCODED_LEN];
        let bytes = spime::codec::encode(&value, &mut buf).expect("a decoded value fits its maximum");
        assert_eq!(bytes, data, "decode accepted a non-canonical encoding");
    }
});
