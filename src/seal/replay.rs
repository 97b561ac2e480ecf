//! A sliding replay window: each counter is accepted once, and up to
//! [`WINDOW`] - 1 values below the highest accepted may still arrive late
//! (store-and-forward delivers out of order).

use crate::error::ReplayError;

/// How many counter values the window tracks (the highest accepted and
/// the 127 below it).
pub const WINDOW: u64 = 128;

/// The replay state of one sender: the highest counter accepted and a
/// bitmap of which of the [`WINDOW`] values at and below it were accepted.
///
/// ```
/// use spime::seal::replay::ReplayWindow;
/// let mut w = ReplayWindow::new();
/// w.accept(5)?;
/// w.accept(3)?;                 // late, but inside the window
/// assert!(w.accept(5).is_err()); // replay
/// w.accept(500)?;
/// assert!(w.check(3).is_err());  // now too old to judge
/// # Ok::<(), spime::error::ReplayError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ReplayWindow {
    highest: u64,
    /// bit i set: counter `highest - i` was accepted.
    seen: u128,
}

impl ReplayWindow {
    /// A window that has accepted nothing.
    pub const fn new() -> ReplayWindow {
        ReplayWindow { highest: 0, seen: 0 }
    }

    /// Restores a window from its persisted parts.
    pub const fn from_parts(highest: u64, seen: u128) -> ReplayWindow {
        ReplayWindow { highest, seen }
    }

    /// The persisted parts: highest counter accepted, bitmap.
    pub const fn parts(&self) -> (u64, u128) {
        (self.highest, self.seen)
    }

    /// Whether `counter` would be accepted, without changing the window.
    ///
    /// # Errors
    /// [`ReplayError::Duplicate`] or [`ReplayError::TooOld`].
    pub const fn check(&self, counter: u64) -> Result<(), ReplayError> {
        if counter > self.highest || self.seen == 0 {
            return Ok(());
        }
        let age = self.highest - counter;
        if age >= WINDOW {
            return Err(ReplayError::TooOld { counter, highest: self.highest });
        }
        if self.seen & (1u128 << age) != 0 { Err(ReplayError::Duplicate(counter)) } else { Ok(()) }
    }

    /// Checks and records `counter`. Call only once the message is
    /// otherwise fully accepted: nothing is accepted half-way.
    ///
    /// # Errors
    /// As [`ReplayWindow::check`]; the window is then unchanged.
    pub fn accept(&mut self, counter: u64) -> Result<(), ReplayError> {
        self.check(counter)?;
        if self.seen == 0 {
            self.highest = counter;
            self.seen = 1;
        } else if counter > self.highest {
            let shift = counter - self.highest;
            self.seen = if shift >= WINDOW { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.highest = counter;
        } else {
            self.seen |= 1u128 << (self.highest - counter);
        }
        Ok(())
    }
}
