//! Any sequence of chunks given to the reassembler never panics, never
//! completes a message longer than its capacity, and never holds more
//! partial messages than its slots. The input is split into chunks at
//! length bytes; the first byte of each piece also moves the clock.
#![no_main]
use libfuzzer_sys::fuzz_target;
use spime::wire::chunk::{ChunkHeader, Pushed, Reassembler};

fuzz_target!(|data: &[u8]| {
    let mut rx: Reassembler<3, 512> = Reassembler::new(30);
    let mut now = 0u64;
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        let (chunk, next) = tail.split_at(n);
        rest = next;
        now += u64::from(len & 0x0f);
        let parsed = ChunkHeader::parse(chunk).is_ok();
        match rx.push(now, chunk) {
            Ok(Pushed::Complete(m)) => assert!(!m.is_empty() && m.len() <= 512),
            Ok(_) => assert!(parsed),
            Err(_) => {}
        }
        assert!(rx.in_progress() <= 3);
    }
});
