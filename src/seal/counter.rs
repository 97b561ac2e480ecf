//! The persisted message counter: a nonce never repeats under one key,
//! across reboots and power loss.
//!
//! The stored value is the first counter value *not yet reserved*. Before a
//! value is handed out, a whole block is reserved by writing the block's end
//! to storage; values are then spent from memory. After a power cut the
//! counter restarts at the stored value, so the unspent rest of the block
//! is skipped and no value is ever handed out twice. The storage write must
//! be atomic (either the old or the new value survives a cut), as
//! [`crate::device::storage::NorStorage`]'s log is.
//!
//! Damaged storage must not roll the counter back (SPEC.md §8.1): a store
//! that can tell how many newer stored values may have been lost
//! ([`CounterStore::lost`]) makes [`Counter::open`] skip that many blocks;
//! a store with no intact value left opens the counter *lost*, and it hands
//! out nothing until [`Counter::restart`].

use crate::error::CounterError;

/// Where the counter persists. Both calls must be durable when they return.
pub trait CounterStore {
    /// Reads the stored value (0 on a fresh device).
    ///
    /// # Errors
    /// Any storage failure; [`CounterError::Lost`] when no intact copy
    /// survives although one was written.
    fn load(&mut self) -> Result<u64, CounterError>;
    /// Atomically replaces the stored value.
    ///
    /// # Errors
    /// Any storage failure; the old value must then still be readable.
    fn store(&mut self, value: u64) -> Result<(), CounterError>;

    /// How many reservations stored after the value [`CounterStore::load`]
    /// returned may have been lost to damage (a newer copy whose check
    /// fails). Each one is a block the counter may have spent. A store
    /// that keeps no history returns 0, as the default does.
    ///
    /// # Errors
    /// Any storage failure; [`CounterError::Lost`] when the damage cannot
    /// be bounded.
    fn lost(&mut self) -> Result<u64, CounterError> {
        Ok(0)
    }
}

/// A counter that reserves blocks of `block` values ahead of use.
///
/// ```
/// use spime::seal::counter::{Counter, CounterStore};
/// use spime::error::CounterError;
/// struct Ram(u64);
/// impl CounterStore for Ram {
///     fn load(&mut self) -> Result<u64, CounterError> { Ok(self.0) }
///     fn store(&mut self, v: u64) -> Result<(), CounterError> { self.0 = v; Ok(()) }
/// }
/// let mut c = Counter::open(Ram(0), 8)?;
/// assert_eq!(c.next_value()?, 0);
/// assert_eq!(c.next_value()?, 1);
/// let store = c.into_store();          // power cut: the RAM state is lost
/// assert_eq!(store.0, 8);              // a whole block was reserved
/// let mut c = Counter::open(store, 8)?;
/// assert_eq!(c.next_value()?, 8);            // 2..8 are skipped, never reused
/// # Ok::<(), CounterError>(())
/// ```
#[derive(Debug)]
pub struct Counter<S> {
    store: S,
    next: u64,
    reserved_until: u64,
    block: u64,
    /// No value may be handed out until [`Counter::restart`].
    lost: bool,
}

impl<S: CounterStore> Counter<S> {
    /// Opens the counter from storage. `block` (at least 1) is how many
    /// values one storage write reserves: larger blocks mean fewer flash
    /// writes and more values skipped per power cut.
    ///
    /// If the store reports `k` reservations after the stored value that
    /// may have been lost ([`CounterStore::lost`]), the counter starts `k`
    /// blocks further on and stores that at once: a fallback to an older
    /// copy never hands out a value that may have been used.
    ///
    /// When no copy survives ([`CounterError::Lost`]), the counter opens
    /// *lost*: [`Counter::is_lost`] is true and it hands out nothing until
    /// [`Counter::restart`].
    ///
    /// # Errors
    /// The storage's load error; [`CounterError::Storage`] when the skip
    /// cannot be stored.
    pub fn open(mut store: S, block: u64) -> Result<Counter<S>, CounterError> {
        let block = block.max(1);
        let (stored, lost) = match store.load().and_then(|v| Ok((v, store.lost()?))) {
            Ok(x) => x,
            Err(CounterError::Lost) => return Ok(Counter { store, next: 0, reserved_until: 0, block, lost: true }),
            Err(e) => return Err(e),
        };
        let start = if lost > 0 {
            let skip = lost.checked_mul(block).and_then(|d| stored.checked_add(d)).ok_or(CounterError::Exhausted)?;
            store.store(skip)?;
            skip
        } else {
            stored
        };
        Ok(Counter { store, next: start, reserved_until: start, block, lost: false })
    }

    /// Whether the counter was lost: it hands out nothing until [`Counter::restart`].
    pub const fn is_lost(&self) -> bool {
        self.lost
    }

    /// Takes the counter as lost (the caller found evidence that values were
    /// used which the store does not account for).
    pub fn mark_lost(&mut self) {
        self.lost = true;
    }

    /// Moves a counter (lost or not) to `start`, storing it first: the
    /// recovery from [`CounterError::Lost`], where the caller knows a value
    /// above any used, and opens a new key epoch. A counter never moves back.
    ///
    /// # Errors
    /// [`CounterError::Storage`] when `start` cannot be stored (the counter
    /// is then unchanged).
    pub fn restart(&mut self, start: u64) -> Result<(), CounterError> {
        let start = start.max(self.next);
        self.store.store(start)?;
        self.next = start;
        self.reserved_until = start;
        self.lost = false;
        Ok(())
    }

    /// Moves the counter up to `floor` when it is below it (values under
    /// `floor` may have been used, e.g. by a queued message), storing
    /// `floor` first. Returns whether it moved.
    ///
    /// # Errors
    /// [`CounterError::Storage`] when `floor` cannot be stored (the counter
    /// is then unchanged).
    pub fn raise(&mut self, floor: u64) -> Result<bool, CounterError> {
        if self.lost || floor <= self.next {
            return Ok(false);
        }
        self.store.store(floor)?;
        self.next = floor;
        self.reserved_until = floor;
        Ok(true)
    }

    /// Hands out a value never handed out before, reserving a new block
    /// first when the current one is spent.
    ///
    /// # Errors
    /// [`CounterError::Storage`] when the reservation could not be written
    /// (nothing is handed out); [`CounterError::Exhausted`] at the end of
    /// the counter space; [`CounterError::Lost`] while the counter is lost.
    pub fn next_value(&mut self) -> Result<u64, CounterError> {
        if self.lost {
            return Err(CounterError::Lost);
        }
        if self.next >= self.reserved_until {
            let until = self.next.checked_add(self.block).ok_or(CounterError::Exhausted)?;
            self.store.store(until)?;
            self.reserved_until = until;
        }
        let v = self.next;
        self.next += 1;
        Ok(v)
    }

    /// The next value [`Counter::next_value`] would hand out.
    pub const fn peek(&self) -> u64 {
        self.next
    }

    /// The storage, for a device that keeps its other records in the
    /// same store as the counter.
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Gives the storage back (for tests that simulate a power cut).
    pub fn into_store(self) -> S {
        self.store
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A store with a history: the value, how many reservations after it
    /// were lost, whether no copy survives, and whether writes fail.
    #[derive(Debug, Default)]
    struct Damaged {
        value: u64,
        lost: u64,
        gone: bool,
        fail: bool,
    }

    impl CounterStore for Damaged {
        fn load(&mut self) -> Result<u64, CounterError> {
            if self.gone { Err(CounterError::Lost) } else { Ok(self.value) }
        }
        fn store(&mut self, v: u64) -> Result<(), CounterError> {
            if self.fail {
                return Err(CounterError::Storage);
            }
            self.value = v;
            self.lost = 0;
            self.gone = false;
            Ok(())
        }
        fn lost(&mut self) -> Result<u64, CounterError> {
            Ok(self.lost)
        }
    }

    /// Issue 9 finding 3: the fallback copy is `lost` blocks behind; the
    /// counter starts past them and stores that before handing anything out.
    #[test]
    fn counter_rollback_on_damaged_flash_open_skips_lost_blocks() {
        let mut c = Counter::open(Damaged { value: 32, lost: 2, ..Damaged::default() }, 16).unwrap();
        assert_eq!(c.store_mut().value, 64, "the skip is stored at once");
        assert_eq!(c.next_value(), Ok(64));
        // the skip cannot be stored: nothing opens
        let e = Counter::open(Damaged { value: 32, lost: 1, fail: true, ..Damaged::default() }, 16).unwrap_err();
        assert_eq!(e, CounterError::Storage);
        // the skip would pass the end
        let e = Counter::open(Damaged { value: u64::MAX - 3, lost: 1, ..Damaged::default() }, 16).unwrap_err();
        assert_eq!(e, CounterError::Exhausted);
    }

    /// No copy survives: the counter hands out nothing until restarted, and
    /// a restart never moves it back.
    #[test]
    fn counter_rollback_on_damaged_flash_lost_counter_hands_out_nothing() {
        let mut c = Counter::open(Damaged { gone: true, ..Damaged::default() }, 16).unwrap();
        assert!(c.is_lost());
        assert_eq!(c.next_value(), Err(CounterError::Lost));
        assert_eq!(c.raise(100), Ok(false));
        c.store_mut().fail = true;
        assert_eq!(c.restart(1 << 40), Err(CounterError::Storage));
        assert!(c.is_lost());
        c.store_mut().fail = false;
        c.restart(1 << 40).unwrap();
        assert_eq!(c.next_value(), Ok(1 << 40));
        c.restart(5).unwrap();
        assert_eq!(c.next_value(), Ok((1 << 40) + 1), "never back");
        c.mark_lost();
        assert_eq!(c.next_value(), Err(CounterError::Lost));
    }

    #[test]
    fn raise_stores_before_moving() {
        let mut c = Counter::open(Damaged::default(), 16).unwrap();
        assert_eq!(c.next_value(), Ok(0));
        assert_eq!(c.raise(0), Ok(false));
        c.store_mut().fail = true;
        assert_eq!(c.raise(40), Err(CounterError::Storage));
        assert_eq!(c.peek(), 1);
        c.store_mut().fail = false;
        assert_eq!(c.raise(40), Ok(true));
        assert_eq!(c.store_mut().value, 40);
        assert_eq!(c.next_value(), Ok(40));
        assert_eq!(c.store_mut().value, 56);
    }
}
