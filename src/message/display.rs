//! `Display` for message bodies and their parts: plain words, times as
//! UTC dates ([`crate::time::Utc`]), fault context as text when it is text.

use core::fmt::{self, Display, Formatter};

use super::{
    DecommissionReason, Fault, FirmwareVersion, Metric, MetricValue, Notice, NoticeKind, RebootReason, Receipt,
    Severity, UsageOf,
};
use crate::consent::LocationPrecision;
use crate::time::Utc;

/// Bytes shown readably: as a quoted string when they are UTF-8 text
/// without control characters, otherwise as hex (fault context is
/// product-defined and may be either).
///
/// ```
/// use spime::message::Readable;
/// assert_eq!(Readable(b"pump stalled").to_string(), "\"pump stalled\"");
/// assert_eq!(Readable(&[0x00, 0xff, 0x10]).to_string(), "0x00ff10 (3 bytes)");
/// assert_eq!(Readable(b"").to_string(), "none");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readable<'a>(pub &'a [u8]);

impl Display for Readable<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        match core::str::from_utf8(self.0) {
            Ok(text) if !text.chars().any(char::is_control) => write!(f, "\"{}\"", text.escape_debug()),
            _ => {
                f.write_str("0x")?;
                self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))?;
                write!(f, " ({} bytes)", self.0.len())
            }
        }
    }
}

/// `1.4.2 (build 310)`.
impl Display for FirmwareVersion {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{} (build {})", self.major, self.minor, self.patch, self.build)
    }
}

/// `info`, `warning`, `error`, `critical`.
impl Display for Severity {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
            Severity::Critical => "critical",
        })
    }
}

/// `none`, `power-on`, `watchdog`, `brownout`, `crash`, `requested`, `unknown`.
impl Display for RebootReason {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RebootReason::None => "none",
            RebootReason::PowerOn => "power-on",
            RebootReason::Watchdog => "watchdog",
            RebootReason::Brownout => "brownout",
            RebootReason::Crash => "crash",
            RebootReason::Requested => "requested",
            RebootReason::Unknown => "unknown",
        })
    }
}

/// `recycled`, `returned`, `broken`, `retired`.
impl Display for DecommissionReason {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DecommissionReason::Recycled => "recycled",
            DecommissionReason::Returned => "returned",
            DecommissionReason::Broken => "broken",
            DecommissionReason::Retired => "retired",
        })
    }
}

/// `maintenance due`, `supplies offer`, `recall`, `instructions`, `update available`.
impl Display for NoticeKind {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NoticeKind::MaintenanceDue => "maintenance due",
            NoticeKind::SuppliesOffer => "supplies offer",
            NoticeKind::Recall => "recall",
            NoticeKind::Instructions => "instructions",
            NoticeKind::UpdateAvailable => "update available",
        })
    }
}

/// Degrees from 1e-7 degrees, exactly: `-52.5000000`.
struct Degrees(i32);

impl Display for Degrees {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:07}", abs / 10_000_000, abs % 10_000_000)
    }
}

/// `3`; `19 to 23, mean 21 (4 samples)`; `buckets [1, 0, 3]`;
/// `52.5000000, 13.4000000 (to city precision)`.
impl Display for MetricValue {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            MetricValue::Counter(n) => write!(f, "{n}"),
            MetricValue::Gauge { min, max, sum, samples } => {
                write!(f, "{min} to {max}")?;
                if let Some(mean) = sum.checked_div(i64::from(*samples)) {
                    write!(f, ", mean {mean}")?;
                }
                let noun = if *samples == 1 { "sample" } else { "samples" };
                write!(f, " ({samples} {noun})")
            }
            MetricValue::Histogram(buckets) => {
                f.write_str("buckets [")?;
                for (i, b) in buckets.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{b}")?;
                }
                f.write_str("]")
            }
            MetricValue::Location { lat_e7, lon_e7, precision } => match precision {
                LocationPrecision::None => f.write_str("no location"),
                p => write!(f, "{}, {} (to {p} precision)", Degrees(*lat_e7), Degrees(*lon_e7)),
            },
        }
    }
}

/// `#1 usage-counters: 3`.
impl Display for Metric {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "#{} {}: {}", self.id, self.category, self.value)
    }
}

/// `usage for usage-analytics from 2026-11-23 12:00:00 UTC to 2026-11-23
/// 13:00:00 UTC (consent version 1): #1 usage-counters: 3; #2 …`.
impl<const M: usize> Display for UsageOf<M> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "usage for {} from {} to {} (consent version {}): ",
            self.purpose,
            Utc(self.window_start),
            Utc(self.window_end),
            self.consent_version
        )?;
        if self.metrics.is_empty() {
            return f.write_str("no metrics");
        }
        for (i, m) in self.metrics.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{m}")?;
        }
        Ok(())
    }
}

/// `error fault 0x00000042 in component 3 on firmware 1.0.0 (build 1),
/// 2 times from … to …, uptime 3600 s, last reboot: watchdog, context:
/// "pump stalled" (for diagnostics, consent version 1)`.
impl Display for Fault {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} fault {:#010x} in component {} on firmware {}, ",
            self.severity, self.code, self.component, self.firmware
        )?;
        if self.occurrences == 1 {
            write!(f, "once at {}", Utc(self.last_seen))?;
        } else {
            write!(f, "{} times from {} to {}", self.occurrences, Utc(self.first_seen), Utc(self.last_seen))?;
        }
        write!(
            f,
            ", uptime {} s, last reboot: {}, context: {} (for {}, consent version {})",
            self.uptime_s,
            self.reboot_reason,
            Readable(&self.context),
            self.purpose,
            self.consent_version
        )
    }
}

/// `receipt for consent version 2, recorded 2026-11-23 14:00:00 UTC`.
impl Display for Receipt {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "receipt for consent version {}, recorded {}", self.consent_version, Utc(self.received_at))
    }
}

/// `maintenance due notice #7 for proactive-service by app (topic 1),
/// expires 2026-11-30 12:00:00 UTC: "Descale soon" - "…"`.
impl Display for Notice {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} notice #{} for {} by {} (topic {}), expires {}",
            self.kind,
            self.id,
            self.purpose,
            self.channel,
            self.topic,
            Utc(self.expires_at)
        )?;
        if !self.title.is_empty() || !self.text.is_empty() {
            write!(f, ": \"{}\" - \"{}\"", self.title.escape_debug(), self.text.escape_debug())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consent::{DataCategory, Purpose};
    use crate::message::Usage;

    const FW: FirmwareVersion = FirmwareVersion { major: 1, minor: 4, patch: 2, build: 310 };

    #[test]
    fn values_in_plain_words() {
        assert_eq!(FW.to_string(), "1.4.2 (build 310)");
        assert_eq!(MetricValue::Counter(3).to_string(), "3");
        let gauge = MetricValue::Gauge { min: 19, max: 23, sum: 84, samples: 4 };
        assert_eq!(gauge.to_string(), "19 to 23, mean 21 (4 samples)");
        let empty = MetricValue::Gauge { min: 0, max: 0, sum: 0, samples: 0 };
        assert_eq!(empty.to_string(), "0 to 0 (0 samples)");
        let hist = MetricValue::Histogram(heapless::Vec::from_slice(&[1, 0, 3]).unwrap());
        assert_eq!(hist.to_string(), "buckets [1, 0, 3]");
        let loc =
            MetricValue::Location { lat_e7: -525_000_001, lon_e7: 134_000_000, precision: LocationPrecision::City };
        assert_eq!(loc.to_string(), "-52.5000001, 13.4000000 (to city precision)");
        let extreme = MetricValue::Location { lat_e7: i32::MIN, lon_e7: i32::MAX, precision: LocationPrecision::City };
        assert_eq!(extreme.to_string(), "-214.7483648, 214.7483647 (to city precision)");
    }

    #[test]
    fn context_is_text_or_hex() {
        assert_eq!(Readable(b"a\"b").to_string(), "\"a\\\"b\"");
        assert_eq!(Readable(b"line\nbreak").to_string(), "0x6c696e650a627265616b (10 bytes)");
        assert_eq!(Readable(&[0xc3]).to_string(), "0xc3 (1 bytes)");
    }

    #[test]
    fn reports_in_plain_words() {
        let usage = Usage {
            purpose: Purpose::USAGE_ANALYTICS,
            consent_version: 1,
            window_start: 1_795_435_200,
            window_end: 1_795_438_800,
            metrics: heapless::Vec::from_slice(&[Metric {
                id: 1,
                category: DataCategory::UsageCounters,
                value: MetricValue::Counter(3),
            }])
            .unwrap(),
        };
        assert_eq!(
            usage.to_string(),
            "usage for usage-analytics from 2026-11-23 12:00:00 UTC to 2026-11-23 13:00:00 UTC \
             (consent version 1): #1 usage-counters: 3"
        );
        let fault = Fault {
            purpose: Purpose::DIAGNOSTICS,
            consent_version: 2,
            code: 0x42,
            severity: Severity::Error,
            component: 3,
            firmware: FW,
            uptime_s: 3600,
            reboot_reason: RebootReason::Watchdog,
            occurrences: 2,
            first_seen: 1_795_435_200,
            last_seen: 1_795_438_800,
            context: heapless::Vec::from_slice(b"pump stalled").unwrap(),
        };
        assert_eq!(
            fault.to_string(),
            "error fault 0x00000042 in component 3 on firmware 1.4.2 (build 310), 2 times from \
             2026-11-23 12:00:00 UTC to 2026-11-23 13:00:00 UTC, uptime 3600 s, last reboot: watchdog, \
             context: \"pump stalled\" (for diagnostics, consent version 2)"
        );
        let receipt = Receipt { consent_version: 2, consent_digest: [0; 32], received_at: 1_795_435_200 };
        assert_eq!(receipt.to_string(), "receipt for consent version 2, recorded 2026-11-23 12:00:00 UTC");
    }
}
