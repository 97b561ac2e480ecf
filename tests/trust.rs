//! Regression tests for the findings of the trust audit (issue 9), each
//! named after its finding. SPEC.md, Security, lists the threat and rule.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use spime::message::MAX_SEALED_LEN;
use spime::vendor::link::{LINK_BYTES, Reassembly, ReassemblyLimits};
use spime::wire::chunk::Chunks;

/// Finding 1: 100,000 link ids, each sending one garbage byte, then each
/// sending a valid first chunk of a longest (1,228-byte) message, never
/// hold more than the caps; a genuine message still completes afterwards.
#[test]
fn link_flood_stays_bounded() {
    let limits = ReassemblyLimits { max_links: 1000, max_bytes: 4 << 20 };
    let cap_links = limits.link_capacity();
    assert!(cap_links <= 1000 && cap_links * LINK_BYTES <= limits.max_bytes);
    let mut rx: Reassembly<u32> = Reassembly::with_limits(60, limits);

    // Garbage: one byte per link. Nothing is kept at all.
    for link in 0..100_000u32 {
        assert!(rx.push(&link, 1_000, &[0xa5]).is_err());
        assert_eq!(rx.links(), 0);
    }
    assert_eq!(rx.buffered_bytes(), 0);
    assert_eq!(rx.stats().rejected, 100_000);

    // Valid 6-byte chunks (the last chunk, index 245 of a 1,226-byte
    // message cut in 5-byte pieces: the most one 6-byte chunk can claim),
    // 100,000 new links.
    let frame = [0, 7, 245, 245, 5, 0x5a];
    assert!(245 * 5 + 1 <= MAX_SEALED_LEN);
    let mut most = 0;
    for link in 0..100_000u32 {
        assert_eq!(rx.push(&link, 1_000 + u64::from(link / 10_000), &frame).unwrap(), None);
        most = most.max(rx.links());
        assert!(rx.buffered_bytes() <= limits.max_bytes);
    }
    assert_eq!(most, cap_links);
    assert_eq!(rx.links(), cap_links);
    assert_eq!(rx.stats().evicted, 100_000 - cap_links as u64);

    // The oldest were evicted: the newest links are the ones held, and a
    // genuine sender on a new link still gets its message through.
    let genuine = vec![0x42; 300];
    let mut done = None;
    for c in Chunks::new(&genuine, 1, 64).unwrap() {
        let mut f = [0u8; 64];
        let n = c.write_to(&mut f).unwrap();
        if let Some(m) = rx.push(&u32::MAX, 1_020, &f[..n]).unwrap() {
            done = Some(m);
        }
    }
    assert_eq!(done, Some(genuine));
    assert!(rx.links() <= cap_links);

    // Idle links go on the next push after the timeout, without a call to expire.
    rx.push(&u32::MAX, 2_000, &frame).unwrap();
    assert_eq!(rx.links(), 1);
}
