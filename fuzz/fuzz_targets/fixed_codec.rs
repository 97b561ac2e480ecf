//! The device's hand-written codec (`spime::codec::fixed`) against the serde
//! path, for any bytes: the same verdict and the same value from both
//! decoders (the same error for a rule broken after parsing; among parse
//! errors the variant may differ), the in-place decoder likewise, and a
//! decoded value re-encodes to exactly its input. The first byte picks the
//! type (the seeds are the vectors' bodies behind their selector).
#![no_main]
use libfuzzer_sys::fuzz_target;
use spime::codec::fixed::{self, Fixed};
use spime::codec::{self, Canonical};
use spime::consent::{ConsentState, SignedConsent};
use spime::error::DecodeError;
use spime::message::*;

fn parse_error(e: &DecodeError) -> bool {
    matches!(e, DecodeError::Malformed | DecodeError::TrailingBytes | DecodeError::NonCanonical)
}

fn agree<T: Fixed + PartialEq + core::fmt::Debug>(
    serde: Result<T, DecodeError>,
    hand: Result<T, DecodeError>,
    bytes: &[u8],
    max: usize,
) {
    match (&serde, &hand) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b);
            let mut buf = vec![0u8; max];
            assert_eq!(fixed::encode(b, &mut buf).unwrap(), bytes);
        }
        (Err(a), Err(b)) if parse_error(a) => assert!(parse_error(b), "serde {a:?}, fixed {b:?}"),
        _ => assert_eq!(serde, hand),
    }
}

fn check<T: Canonical + Fixed + PartialEq + core::fmt::Debug>(bytes: &[u8]) {
    agree(codec::decode::<T>(bytes), fixed::decode::<T>(bytes), bytes, T::MAX_ENCODED_LEN);
}

fn check_consent(bytes: &[u8]) {
    check::<SignedConsent>(bytes);
    let mut place = SignedConsent { state: ConsentState::essential_only(9, 9, [9; 32]), owner: None };
    let hand = fixed::decode_in_place(bytes, &mut place).map(|()| place);
    agree(codec::decode::<SignedConsent>(bytes), hand, bytes, SignedConsent::MAX_ENCODED_LEN);
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else { return };
    match which % 12 {
        0 => check::<Register>(bytes),
        1 => check::<Usage>(bytes),
        2 => check::<UsageOf<4>>(bytes),
        3 => check::<Fault>(bytes),
        4 => check_consent(bytes),
        5 => check::<ConsentUpdate>(bytes),
        6 => check::<ConsentState>(bytes),
        7 => check::<Transfer>(bytes),
        8 => check::<Decommission>(bytes),
        9 => check::<Receipt>(bytes),
        10 => check::<Notice>(bytes),
        _ => check::<CertificateBody>(bytes),
    }
});
