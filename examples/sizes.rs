//! Prints each message kind's maximum body and sealed sizes (the constants
//! firmware sizes its buffers with) and the envelope overhead.
use spime::codec::Canonical;
use spime::message::*;

fn row<B: Body>() {
    let body = <B as Canonical>::MAX_ENCODED_LEN;
    println!("{:<13} {:>9} {:>11} {:>9}", B::KIND.name(), body, B::MAX_SEALED_LEN, B::MAX_SEALED_LEN - body);
}

fn main() {
    println!("{:<13} {:>9} {:>11} {:>9}", "kind", "max body", "max sealed", "overhead");
    row::<Register>();
    row::<Usage>();
    row::<Fault>();
    row::<ConsentUpdate>();
    row::<Transfer>();
    row::<Decommission>();
    row::<Receipt>();
    row::<Notice>();
    println!("any kind: at most {MAX_SEALED_LEN} bytes sealed");
}
