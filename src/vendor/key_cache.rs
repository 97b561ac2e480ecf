//! Decompressed device keys by their bytes: a bounded cache that evicts one
//! entry at a time (CLOCK, an approximation of least-recently-used), never
//! the whole table. The same structure ([`Clock`]) holds `FjallStore`'s
//! device records.
//!
//! Decompressing a device key costs a tenth of a signature verification.
//! The cache is pure: the bytes determine the key, so what it holds never
//! affects a result, only the time. Its keys are device keys from
//! vendor-signed certificates (stored records, or a Register whose
//! certificate verified), not bytes an outsider chooses, so the table uses
//! the standard keyed hasher only because it costs little here.

use alloc::vec::Vec;
use core::hash::Hash;
use core::sync::atomic::{AtomicBool, Ordering};
use std::collections::HashMap;
use std::sync::{PoisonError, RwLock, RwLockWriteGuard};

use ed25519_dalek::VerifyingKey;

struct Slot<K, V> {
    key: K,
    value: V,
    /// Used since the clock hand last passed.
    used: AtomicBool,
}

struct Inner<K, V> {
    index: HashMap<K, usize>,
    slots: Vec<Slot<K, V>>,
    hand: usize,
}

/// A bounded map that evicts one entry at a time (CLOCK): a hit takes the
/// read lock and sets one flag; an insert past capacity evicts the first
/// entry the clock hand finds unused since its last pass. The device key
/// cache below and `FjallStore`'s record cache are both one.
pub(crate) struct Clock<K, V> {
    capacity: usize,
    inner: RwLock<Inner<K, V>>,
}

impl<K: Hash + Eq, V> Inner<K, V> {
    /// The slot holding `key`, if any.
    fn slot(&self, key: &K) -> Option<&Slot<K, V>> {
        self.slots.get(*self.index.get(key)?)
    }
}

impl<K: Hash + Eq + Copy, V: Clone> Clock<K, V> {
    /// An empty cache for at most `capacity` entries (at least one).
    pub(crate) fn new(capacity: usize) -> Clock<K, V> {
        Clock {
            capacity: capacity.max(1),
            inner: RwLock::new(Inner { index: HashMap::new(), slots: Vec::new(), hand: 0 }),
        }
    }

    /// How many entries it may hold.
    pub(crate) const fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many entries it holds.
    #[cfg(any(test, feature = "fjall"))]
    pub(crate) fn len(&self) -> usize {
        self.inner.read().unwrap_or_else(PoisonError::into_inner).slots.len()
    }

    /// The value under `key`, if cached.
    pub(crate) fn get(&self, key: &K) -> Option<V> {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        let slot = inner.slot(key)?;
        slot.used.store(true, Ordering::Relaxed);
        Some(slot.value.clone())
    }

    /// The values under `keys`, in order ([`Clock::get`] of each), under
    /// one read lock. Every entry is found, and read through `touch`,
    /// before any value is cloned.
    ///
    /// Why: for a fleet, each entry is a cache miss, and taking a lock or
    /// cloning an `Arc` (an atomic increment) waits for the misses before
    /// it with nothing else in flight. Plain reads in a row let the
    /// processor overlap them; the clones then find the entries in cache.
    #[cfg(feature = "fjall")]
    pub(crate) fn get_many<'k>(&self, keys: impl Iterator<Item = &'k K>, touch: impl Fn(&V) -> u64) -> Vec<Option<V>>
    where
        K: 'k,
    {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        let found: Vec<Option<&Slot<K, V>>> = keys.map(|k| inner.slot(k)).collect();
        core::hint::black_box(found.iter().flatten().map(|s| touch(&s.value)).fold(0u64, u64::wrapping_add));
        found
            .into_iter()
            .map(|s| {
                s.map(|s| {
                    s.used.store(true, Ordering::Relaxed);
                    s.value.clone()
                })
            })
            .collect()
    }

    /// The write lock, for several changes in a row ([`ClockWrite`]).
    pub(crate) fn write(&self) -> ClockWrite<'_, K, V> {
        ClockWrite { capacity: self.capacity, inner: self.inner.write().unwrap_or_else(PoisonError::into_inner) }
    }

    /// Caches `value` under `key`, replacing what was there.
    pub(crate) fn insert(&self, key: K, value: V) {
        self.write().insert(key, value);
    }

    /// Forgets `key` (the last entry takes its slot).
    #[cfg(feature = "fjall")]
    pub(crate) fn remove(&self, key: &K) {
        self.write().remove(key);
    }
}

/// A [`Clock`] under its write lock: inserts, updates and removals in a
/// row take the lock once.
pub(crate) struct ClockWrite<'a, K, V> {
    capacity: usize,
    inner: RwLockWriteGuard<'a, Inner<K, V>>,
}

impl<K: Hash + Eq + Copy, V> ClockWrite<'_, K, V> {
    /// Reads the entry of each of `keys` through `touch` and throws what
    /// it read away: the changes that follow find them in cache (see
    /// [`Clock::get_many`]).
    #[cfg(feature = "fjall")]
    pub(crate) fn touch<'k>(&self, keys: impl Iterator<Item = &'k K>, touch: impl Fn(&V) -> u64)
    where
        K: 'k,
    {
        let found = keys.filter_map(|k| self.inner.slot(k));
        core::hint::black_box(found.map(|s| touch(&s.value)).fold(0u64, u64::wrapping_add));
    }

    /// [`Clock::insert`].
    pub(crate) fn insert(&mut self, key: K, value: V) {
        let inner = &mut *self.inner;
        if let Some(slot) = inner.index.get(&key).and_then(|&i| inner.slots.get_mut(i)) {
            slot.value = value;
            slot.used.store(true, Ordering::Relaxed);
            return;
        }
        if inner.slots.len() < self.capacity {
            inner.index.insert(key, inner.slots.len());
            inner.slots.push(Slot { key, value, used: AtomicBool::new(false) });
            return;
        }
        // Full: the hand clears the flags it passes and stops at the first
        // entry already clear (at most one full turn).
        let n = inner.slots.len();
        let mut victim = inner.hand % n;
        for _ in 0..=n {
            match inner.slots.get(victim) {
                Some(s) if s.used.swap(false, Ordering::Relaxed) => victim = (victim + 1) % n,
                _ => break,
            }
        }
        inner.hand = (victim + 1) % n;
        if let Some(slot) = inner.slots.get_mut(victim) {
            inner.index.remove(&slot.key);
            *slot = Slot { key, value, used: AtomicBool::new(false) };
            inner.index.insert(key, victim);
        }
    }

    /// [`Clock::update`].
    #[cfg(feature = "fjall")]
    pub(crate) fn update(&mut self, key: &K, f: impl FnOnce(&mut V)) -> bool {
        let inner = &mut *self.inner;
        match inner.index.get(key).and_then(|&i| inner.slots.get_mut(i)) {
            Some(slot) => {
                f(&mut slot.value);
                true
            }
            None => false,
        }
    }

    /// [`Clock::remove`].
    #[cfg(feature = "fjall")]
    pub(crate) fn remove(&mut self, key: &K) {
        let inner = &mut *self.inner;
        let Some(i) = inner.index.remove(key) else { return };
        inner.slots.swap_remove(i);
        if let Some(moved) = inner.slots.get(i) {
            inner.index.insert(moved.key, i);
        }
    }
}

/// Decompressed device keys by their bytes.
pub(crate) struct KeyCache(Clock<[u8; 32], VerifyingKey>);

impl KeyCache {
    /// An empty cache for at most `capacity` keys (at least one).
    pub(crate) fn new(capacity: usize) -> KeyCache {
        KeyCache(Clock::new(capacity))
    }

    /// How many keys it may hold.
    pub(crate) const fn capacity(&self) -> usize {
        self.0.capacity()
    }

    /// How many keys it holds.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// The key for `bytes`, if cached.
    pub(crate) fn get(&self, bytes: &[u8; 32]) -> Option<VerifyingKey> {
        self.0.get(bytes)
    }

    /// Caches `key` (under its own bytes).
    pub(crate) fn insert(&self, key: &VerifyingKey) {
        self.0.insert(key.to_bytes(), *key);
    }
}

#[cfg(test)]
mod tests {
    use super::KeyCache;
    use ed25519_dalek::SigningKey;

    fn key(i: u8) -> ed25519_dalek::VerifyingKey {
        SigningKey::from_bytes(&[i; 32]).verifying_key()
    }

    #[test]
    fn bounded_and_evicts_one_at_a_time() {
        let c = KeyCache::new(4);
        for i in 0..4 {
            c.insert(&key(i));
        }
        assert_eq!(c.len(), 4);
        // Keys 0 and 1 used since: the next misses evict 2, then 3.
        assert_eq!(c.get(&key(0).to_bytes()), Some(key(0)));
        assert_eq!(c.get(&key(1).to_bytes()), Some(key(1)));
        c.insert(&key(10));
        assert_eq!(c.len(), 4);
        assert!(c.get(&key(2).to_bytes()).is_none());
        for i in [0, 1, 3, 10] {
            assert_eq!(c.get(&key(i).to_bytes()), Some(key(i)), "{i}");
        }
        // Never cleared wholesale: a stream of new keys keeps the table full.
        for i in 20..60 {
            c.insert(&key(i));
            assert_eq!(c.len(), 4);
            assert_eq!(c.get(&key(i).to_bytes()), Some(key(i)));
        }
    }

    #[test]
    fn a_key_used_between_misses_survives() {
        let c = KeyCache::new(8);
        for i in 0..200u8 {
            c.insert(&key(i));
            assert_eq!(c.get(&key(255).to_bytes()).is_some(), i >= 1, "{i}");
            if i == 0 {
                c.insert(&key(255));
            }
        }
    }

    #[cfg(feature = "fjall")]
    #[test]
    fn values_are_replaced_updated_and_removed() {
        let c = super::Clock::new(3);
        for i in 0..3u8 {
            c.insert(i, u32::from(i));
        }
        c.insert(1, 10);
        assert_eq!(c.get(&1), Some(10), "an insert replaces");
        assert!(c.write().update(&2, |v| *v += 5));
        assert!(!c.write().update(&7, |v| *v += 5), "nothing to update");
        assert_eq!(c.get(&2), Some(7));
        c.remove(&0);
        c.remove(&9);
        assert_eq!((c.len(), c.get(&0)), (2, None));
        // The entry moved into the freed slot is still found, and the table
        // fills and evicts as before.
        assert_eq!((c.get(&1), c.get(&2)), (Some(10), Some(7)));
        c.insert(3, 3);
        c.insert(4, 4);
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&4), Some(4));
    }

    #[cfg(feature = "fjall")]
    #[test]
    fn many_at_once_are_each_as_one() {
        let c = super::Clock::new(3);
        for i in 0..3u8 {
            c.insert(i, u32::from(i));
        }
        // In order, with the misses in their places.
        let many = c.get_many([1u8, 9, 0, 1].iter(), |v| u64::from(*v));
        assert_eq!(many, vec![Some(1), None, Some(0), Some(1)]);
        // What it found counts as used, as `get` does: the next insert
        // evicts 2, the one entry it did not find.
        c.insert(3, 3);
        assert_eq!((c.get(&0), c.get(&1), c.get(&2), c.get(&3)), (Some(0), Some(1), None, Some(3)));
        // Several changes under one write lock, after a touch that changes nothing.
        {
            let mut w = c.write();
            w.touch([0u8, 7].iter(), |v| u64::from(*v));
            assert!(w.update(&0, |v| *v = 40));
            assert!(!w.update(&7, |v| *v = 70));
            w.remove(&1);
            w.insert(5, 5);
        }
        assert_eq!((c.get(&0), c.get(&1), c.get(&5), c.get(&7), c.len()), (Some(40), None, Some(5), None, 3));
    }

    #[test]
    fn zero_capacity_holds_one() {
        let c = KeyCache::new(0);
        assert_eq!(c.capacity(), 1);
        c.insert(&key(1));
        c.insert(&key(2));
        assert_eq!(c.len(), 1);
        assert_eq!(c.get(&key(2).to_bytes()), Some(key(2)));
    }
}
