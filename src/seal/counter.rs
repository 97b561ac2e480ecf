//! The persisted message counter: a nonce never repeats under one key,
//! across reboots and power loss.
//!
//! The stored value is the first counter value *not yet reserved*. Before a
//! value is handed out, a whole block is reserved by writing the block's end
//! to storage; values are then spent from memory. After a power cut the
//! counter restarts at the stored value, so the unspent rest of the block
//! is skipped and no value is ever handed out twice. The storage write must
//! be atomic (either the old or the new value survives a cut); flash
//! adapters achieve that with two alternating slots.

use crate::error::CounterError;

/// Where the counter persists. Both calls must be durable when they return.
pub trait CounterStore {
    /// Reads the stored value (0 on a fresh device).
    ///
    /// # Errors
    /// Any storage failure.
    fn load(&mut self) -> Result<u64, CounterError>;
    /// Atomically replaces the stored value.
    ///
    /// # Errors
    /// Any storage failure; the old value must then still be readable.
    fn store(&mut self, value: u64) -> Result<(), CounterError>;
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
}

impl<S: CounterStore> Counter<S> {
    /// Opens the counter from storage. `block` (at least 1) is how many
    /// values one storage write reserves: larger blocks mean fewer flash
    /// writes and more values skipped per power cut.
    ///
    /// # Errors
    /// The storage's load error.
    pub fn open(mut store: S, block: u64) -> Result<Counter<S>, CounterError> {
        let start = store.load()?;
        Ok(Counter { store, next: start, reserved_until: start, block: block.max(1) })
    }

    /// Hands out a value never handed out before, reserving a new block
    /// first when the current one is spent.
    ///
    /// # Errors
    /// [`CounterError::Storage`] when the reservation could not be written
    /// (nothing is handed out); [`CounterError::Exhausted`] at the end of
    /// the counter space.
    pub fn next_value(&mut self) -> Result<u64, CounterError> {
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
