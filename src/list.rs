//! Inserting into and removing from the device's small lists
//! (`heapless::Vec`) by swapping neighbours, not by shifting the tail.
//!
//! `heapless::Vec::insert`, `remove` and `swap_remove` shift with
//! `ptr::copy`, which links compiler-builtins' `memmove` (1,574 B of flash
//! on the QEMU firmware); `core::mem::swap` of two distinct elements only
//! needs non-overlapping copies. The lists are a few elements long, so the
//! swaps cost nothing that matters.

use core::mem;

/// Swaps the elements at `j` and `j + 1`, if both exist.
fn swap_next<T>(s: &mut [T], j: usize) {
    if let Some([a, b, ..]) = s.get_mut(j..) {
        mem::swap(a, b);
    }
}

/// Inserts `item` at `at` (at the end when `at` is past it), shifting the
/// elements after it up; gives `item` back when the list is full.
pub(crate) fn insert<T, const N: usize>(v: &mut heapless::Vec<T, N>, at: usize, item: T) -> Result<(), T> {
    v.push(item)?;
    for j in (at..v.len().saturating_sub(1)).rev() {
        swap_next(v, j);
    }
    Ok(())
}

/// Removes and returns the element at `at`, shifting the elements after it
/// down; `None` when there is none.
pub(crate) fn remove<T, const N: usize>(v: &mut heapless::Vec<T, N>, at: usize) -> Option<T> {
    if at >= v.len() {
        return None;
    }
    for j in at..v.len() - 1 {
        swap_next(v, j);
    }
    v.pop()
}

/// Removes and returns the element at `at`, the last one taking its place;
/// `None` when there is none.
pub(crate) fn swap_remove<T, const N: usize>(v: &mut heapless::Vec<T, N>, at: usize) -> Option<T> {
    let last = v.len().checked_sub(1)?;
    if at < last
        && let (head, [end]) = v.split_at_mut(last)
        && let Some(x) = head.get_mut(at)
    {
        mem::swap(x, end);
    }
    if at <= last { v.pop() } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(xs: &[u8]) -> heapless::Vec<u8, 4> {
        heapless::Vec::from_slice(xs).unwrap()
    }

    #[test]
    fn insert_matches_heapless() {
        for len in 0..=4 {
            let base: heapless::Vec<u8, 4> = (0..len).collect();
            for at in 0..=len as usize {
                let mut ours = base.clone();
                let mut theirs = base.clone();
                assert_eq!(insert(&mut ours, at, 9), theirs.insert(at, 9), "len {len} at {at}");
                assert_eq!(ours, theirs, "len {len} at {at}");
            }
        }
        let mut v = list(&[1, 2]);
        insert(&mut v, 7, 3).unwrap();
        assert_eq!(v, list(&[1, 2, 3]));
    }

    #[test]
    fn remove_matches_heapless() {
        for len in 0..=4u8 {
            let base: heapless::Vec<u8, 4> = (0..len).collect();
            for at in 0..=usize::from(len) + 1 {
                let mut ours = base.clone();
                let mut theirs = base.clone();
                let want = (at < theirs.len()).then(|| theirs.remove(at));
                assert_eq!(remove(&mut ours, at), want, "len {len} at {at}");
                assert_eq!(ours, theirs, "len {len} at {at}");
                let mut ours = base.clone();
                let mut theirs = base.clone();
                let want = (at < theirs.len()).then(|| theirs.swap_remove(at));
                assert_eq!(swap_remove(&mut ours, at), want, "len {len} at {at}");
                assert_eq!(ours, theirs, "len {len} at {at}");
            }
        }
    }
}
