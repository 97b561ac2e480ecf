//! Showing times: the protocol counts time in Unix seconds (UTC), and
//! [`Utc`] prints one as a calendar date. Every message and error of this
//! crate that shows a time uses it.
//!
//! ```
//! use spime::time::Utc;
//! assert_eq!(Utc(1_795_435_200).to_string(), "2026-11-23 12:00:00 UTC");
//! ```

/// A Unix time (seconds since 1970-01-01 00:00:00 UTC) shown as
/// `YYYY-MM-DD HH:MM:SS UTC`: no allocation, no time-zone database, any
/// `u64` (the proleptic Gregorian calendar throughout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Utc(pub u64);

impl core::fmt::Display for Utc {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let days = self.0 / 86_400;
        let secs = self.0 % 86_400;
        // Howard Hinnant's civil_from_days, for days since 1970-01-01. Days
        // are never negative here, so unsigned 64-bit arithmetic suffices
        // (no 128-bit division on small targets): every intermediate value
        // stays below 2^49.
        let z = days + 719_468;
        let era = z / 146_097;
        let doe = z % 146_097;
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + u64::from(month <= 2);
        write!(f, "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", secs / 3_600, secs % 3_600 / 60, secs % 60)
    }
}

/// A length of time in seconds shown in the largest whole unit, to follow
/// "per" or "every": `day`, `2 hours`, `90 minutes`, `45 seconds` (one
/// unit is shown without a number: "at most 3 per day").
///
/// ```
/// use spime::time::Period;
/// assert_eq!(Period(86_400).to_string(), "day");
/// assert_eq!(Period(7 * 86_400).to_string(), "7 days");
/// assert_eq!(Period(7_200).to_string(), "2 hours");
/// assert_eq!(Period(5_400).to_string(), "90 minutes");
/// assert_eq!(Period(1).to_string(), "second");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Period(pub u64);

impl core::fmt::Display for Period {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let s = self.0;
        let (n, unit) = if s != 0 && s.is_multiple_of(86_400) {
            (s / 86_400, "day")
        } else if s != 0 && s.is_multiple_of(3_600) {
            (s / 3_600, "hour")
        } else if s != 0 && s.is_multiple_of(60) {
            (s / 60, "minute")
        } else {
            (s, "second")
        };
        if n == 1 { f.write_str(unit) } else { write!(f, "{n} {unit}s") }
    }
}

#[cfg(test)]
mod tests {
    use super::{Period, Utc};

    #[test]
    fn periods() {
        assert_eq!(Period(0).to_string(), "0 seconds");
        assert_eq!(Period(59).to_string(), "59 seconds");
        assert_eq!(Period(60).to_string(), "minute");
        assert_eq!(Period(3_600).to_string(), "hour");
        assert_eq!(Period(3 * 86_400).to_string(), "3 days");
        assert_eq!(Period(86_401).to_string(), "86401 seconds");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(Utc(0).to_string(), "1970-01-01 00:00:00 UTC");
        assert_eq!(Utc(951_782_400).to_string(), "2000-02-29 00:00:00 UTC");
        assert_eq!(Utc(1_795_435_200).to_string(), "2026-11-23 12:00:00 UTC");
        assert_eq!(Utc(86_399).to_string(), "1970-01-01 23:59:59 UTC");
        // the largest value still formats (no overflow, no panic)
        assert_eq!(Utc(u64::MAX).to_string(), "584554051223-11-09 07:00:15 UTC");
        // leap-year rules: 1900 is not a leap year, 2000 is
        assert_eq!(Utc(951_868_800).to_string(), "2000-03-01 00:00:00 UTC");
        assert_eq!(Utc(4_107_542_400).to_string(), "2100-03-01 00:00:00 UTC");
    }
}
