//! Prints each message kind's maximum body and sealed sizes (the constants
//! firmware sizes its buffers with) and the envelope overhead: the exact
//! figure for a young device (epoch and counter below 128), for one that
//! opens an epoch, and the worst case (epoch and counter at their widest).
//!
//! `cargo run --example sizes`
use spime::codec::Canonical;
use spime::consent::{ConsentState, SignedConsent};
use spime::message::*;
use spime::wire::{DeviceId, Header, Kind};

fn header(kind: Kind, epoch: u32, counter: u64, opens: bool) -> Header {
    Header { kind, device: DeviceId([0; 8]), epoch, counter, ephemeral: opens.then_some([0; 32]) }
}

fn row<B: Body>() {
    let body = <B as Canonical>::MAX_ENCODED_LEN;
    let d2v = B::KIND.direction() == spime::wire::Direction::DeviceToVendor;
    let young = overhead(&header(B::KIND, 1, 5, false));
    let opener = if d2v { overhead(&header(B::KIND, 1, 5, true)).to_string() } else { "-".into() };
    let worst = overhead(&header(B::KIND, u32::MAX, u64::MAX, d2v));
    println!("{:<13} {:>9} {:>11} {:>9} {:>9} {:>9}", B::KIND.name(), body, B::MAX_SEALED_LEN, young, opener, worst);
}

fn main() {
    println!("{:<13} {:>9} {:>11} {:>9} {:>9} {:>9}", "kind", "max body", "max sealed", "overhead", "opening", "worst");
    row::<Register>();
    row::<Usage>();
    row::<Fault>();
    row::<ConsentUpdate>();
    row::<Transfer>();
    row::<Decommission>();
    row::<Receipt>();
    row::<Notice>();
    row::<KeyUpdate>();
    println!("any kind: at most {MAX_SEALED_LEN} bytes sealed");
    println!(
        "overhead grows by one byte as the counter passes 2^7, 2^14, 2^21, ...: counter 1,000,000 costs {} bytes",
        overhead(&header(Kind::USAGE, 1, 1_000_000, false))
    );
    println!(
        "consent: ConsentState at most {} bytes, SignedConsent at most {}",
        <ConsentState as Canonical>::MAX_ENCODED_LEN,
        <SignedConsent as Canonical>::MAX_ENCODED_LEN
    );
}
