//! The lifecycle messages of version 1: plain Rust values with fixed
//! capacities and a canonical postcard encoding (SPEC.md §5).
//!
//! Each body type implements [`Body`], which ties it to its [`Kind`] and
//! gives its maximum encoded length as a `const`, so firmware can size its
//! buffers at compile time:
//!
//! ```
//! use spime::message::{Body, Usage};
//! let mut buf = [0u8; Usage::MAX_SEALED_LEN];
//! # let _ = &mut buf;
//! assert!(Usage::MAX_SEALED_LEN <= spime::message::MAX_SEALED_LEN);
//! ```

mod certificate;
mod display;
mod vendor_key;

pub use certificate::{CERTIFICATE_DST, CLOCK_SKEW, CertificateBody, DeviceCertificate, Validity};
pub use display::Readable;
pub use vendor_key::{KeyUpdate, VENDOR_KEY_CERTIFICATE_DST, VendorKeyBody, VendorKeyCertificate};

use serde::{Deserialize, Serialize};

use crate::codec::{Canonical, varint_max};
use crate::consent::{CategorySet, DataCategory, LocationPrecision, OwnerProof, Purpose, SignedConsent};
use crate::error::{DecodeError, List, Rule};
use crate::wire::{Header, Kind, MAX_HEADER_LEN, MAX_HEADER_LEN_NO_EPHEMERAL};

/// Bytes a sealed envelope adds to its body besides the header: the Ed25519
/// signature (64) and the Poly1305 tag (16).
pub const SIGNATURE_AND_TAG_LEN: usize = 64 + 16;

/// The most bytes a sealed envelope adds to a body without an ephemeral key:
/// the longest such header (epoch and counter at their widest) plus
/// [`SIGNATURE_AND_TAG_LEN`]. [`overhead`] gives the exact figure for one header.
pub const ENVELOPE_OVERHEAD: usize = MAX_HEADER_LEN_NO_EPHEMERAL + SIGNATURE_AND_TAG_LEN;

/// The exact bytes an envelope with this header adds to its body
/// (`len(sealed) - len(body)`).
///
/// ```
/// use spime::message::overhead;
/// use spime::wire::{DeviceId, Header, Kind};
/// let usage = Header { kind: Kind::USAGE, device: DeviceId([1; 8]), epoch: 1, counter: 5, ephemeral: None };
/// assert_eq!(overhead(&usage), 91);
/// let opener = Header { ephemeral: Some([9; 32]), ..usage };
/// assert_eq!(overhead(&opener), 123);
/// ```
pub const fn overhead(header: &Header) -> usize {
    header.buffer_len() + SIGNATURE_AND_TAG_LEN
}

/// A message body: what is signed and encrypted inside an envelope.
pub trait Body: Canonical {
    /// The envelope kind that carries this body.
    const KIND: Kind;
    /// The longest sealed envelope carrying this body (with an ephemeral
    /// key in the header, which any device-to-vendor message may carry).
    const MAX_SEALED_LEN: usize = Self::MAX_ENCODED_LEN
        + SIGNATURE_AND_TAG_LEN
        + if matches!(Self::KIND.direction(), crate::wire::Direction::DeviceToVendor) {
            MAX_HEADER_LEN
        } else {
            MAX_HEADER_LEN_NO_EPHEMERAL
        };
}

/// The longest sealed envelope of any kind.
pub const MAX_SEALED_LEN: usize = max(
    max(
        max(Register::MAX_SEALED_LEN, Usage::MAX_SEALED_LEN),
        max(Fault::MAX_SEALED_LEN, ConsentUpdate::MAX_SEALED_LEN),
    ),
    max(
        max(Transfer::MAX_SEALED_LEN, Decommission::MAX_SEALED_LEN),
        max(max(Receipt::MAX_SEALED_LEN, Notice::MAX_SEALED_LEN), KeyUpdate::MAX_SEALED_LEN),
    ),
);

/// The longest envelope a device sends when its usage reports carry at
/// most `M` metrics ([`UsageOf<M>`]): size its outbox records with it,
/// `record_len(device_sealed_len::<M>())`
/// ([`crate::device::outbox::record_len`]). With `M` = [`MAX_METRICS`],
/// the longest of any device-to-vendor message.
///
/// ```
/// use spime::message::{MAX_METRICS, MAX_SEALED_LEN, Register, Body, device_sealed_len};
/// assert_eq!(device_sealed_len::<MAX_METRICS>(), MAX_SEALED_LEN);
/// // four metrics: a Register (certificate and consent) is the longest
/// assert_eq!(device_sealed_len::<4>(), Register::MAX_SEALED_LEN);
/// ```
pub const fn device_sealed_len<const M: usize>() -> usize {
    max(
        max(
            max(Register::MAX_SEALED_LEN, UsageOf::<M>::MAX_SEALED_LEN),
            max(Fault::MAX_SEALED_LEN, ConsentUpdate::MAX_SEALED_LEN),
        ),
        max(Transfer::MAX_SEALED_LEN, Decommission::MAX_SEALED_LEN),
    )
}

const fn max(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}

/// A firmware version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FirmwareVersion {
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
    /// Patch version.
    pub patch: u16,
    /// Build number.
    pub build: u32,
}

impl FirmwareVersion {
    /// Longest encoding.
    pub const MAX_ENCODED_LEN: usize = 3 * varint_max(16) + varint_max(32);
}

impl Canonical for FirmwareVersion {
    const MAX_ENCODED_LEN: usize = FirmwareVersion::MAX_ENCODED_LEN;
}

/// Register: starts a relationship with the vendor (and starts it again
/// after a change of owner). Always carries an ephemeral key, so it opens
/// a new key epoch. Purpose: Essential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    /// The vendor-signed certificate binding the device id to its key.
    pub certificate: DeviceCertificate,
    /// The running firmware.
    pub firmware: FirmwareVersion,
    /// The owner's initial consent.
    pub consent: SignedConsent,
    /// The first Register after a change of owner carries the Transfer
    /// that ended the previous relationship (the same body the device
    /// sealed in its Transfer message), so the vendor reaches the same
    /// outcome whichever of the two arrives first (SPEC.md §9.3).
    pub transfer: Option<Transfer>,
}

impl Canonical for Register {
    const MAX_ENCODED_LEN: usize = DeviceCertificate::MAX_ENCODED_LEN
        + FirmwareVersion::MAX_ENCODED_LEN
        + SignedConsent::MAX_ENCODED_LEN
        + 1
        + Transfer::MAX_ENCODED_LEN;
    fn validate(&self) -> Result<(), DecodeError> {
        self.certificate.body.validate()?;
        self.consent.validate()
    }
}

impl Body for Register {
    const KIND: Kind = Kind::REGISTER;
}

/// The most metrics in one usage report.
pub const MAX_METRICS: usize = 16;
/// The most histogram buckets of one metric.
pub const MAX_BUCKETS: usize = 12;
/// The most bytes of fault context.
pub const MAX_FAULT_CONTEXT: usize = 64;

/// The value of one metric over a window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetricValue {
    /// A count of events in the window.
    Counter(u64),
    /// A sampled level: minimum, maximum, sum and number of samples (the mean is `sum / samples`).
    Gauge {
        /// smallest sample
        min: i64,
        /// largest sample
        max: i64,
        /// sum of samples
        sum: i64,
        /// number of samples
        samples: u32,
    },
    /// Counts per fixed bucket; bucket bounds are part of the metric's definition.
    Histogram(#[serde(with = "crate::codec::length::vec")] heapless::Vec<u32, MAX_BUCKETS>),
    /// A position, already coarsened on the device to `precision`.
    Location {
        /// latitude in 1e-7 degrees
        lat_e7: i32,
        /// longitude in 1e-7 degrees
        lon_e7: i32,
        /// how precise the position is
        precision: LocationPrecision,
    },
}

impl MetricValue {
    /// Longest encoding: the Histogram variant.
    pub const MAX_ENCODED_LEN: usize = 1 + 1 + MAX_BUCKETS * varint_max(32);
}

/// One metric of a usage report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metric {
    /// The product's metric id.
    pub id: u16,
    /// The data category the metric belongs to.
    pub category: DataCategory,
    /// Its value over the window.
    pub value: MetricValue,
}

impl Metric {
    /// Longest encoding.
    pub const MAX_ENCODED_LEN: usize = varint_max(16) + 1 + MetricValue::MAX_ENCODED_LEN;
}

/// Usage: metrics aggregated over a window on the device.
///
/// The protocol's usage report, as the vendor decodes it: up to
/// [`MAX_METRICS`] metrics.
pub type Usage = UsageOf<MAX_METRICS>;

/// A usage report holding at most `M` metrics: [`Usage`] is `UsageOf<MAX_METRICS>`,
/// the protocol's limit, which the vendor decodes. A device that reports
/// fewer metrics builds a `UsageOf` of its own capacity (from
/// [`crate::device::metrics::Metrics`] of that size) and pays only for
/// those in RAM, on the stack and in its outbox records; the bytes on the
/// wire are the same for the same metrics, whatever `M` (`M` above
/// [`MAX_METRICS`] would build reports the vendor refuses).
///
/// ```
/// use spime::codec;
/// use spime::consent::{DataCategory, Purpose};
/// use spime::message::{Body, Metric, MetricValue, Usage, UsageOf};
/// let m = Metric { id: 1, category: DataCategory::UsageCounters, value: MetricValue::Counter(3) };
/// let small: UsageOf<2> = UsageOf {
///     purpose: Purpose::USAGE_ANALYTICS, consent_version: 1, window_start: 0, window_end: 60,
///     metrics: heapless::Vec::from_slice(&[m])?,
/// };
/// let (mut a, mut b) = ([0u8; 64], [0u8; 64]);
/// let full: Usage = codec::decode(codec::encode(&small, &mut a)?)?;
/// assert_eq!(codec::encode(&full, &mut b)?, codec::encode(&small, &mut a)?);
/// assert!(UsageOf::<2>::MAX_SEALED_LEN < Usage::MAX_SEALED_LEN);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageOf<const M: usize> {
    /// The purpose the report is collected for.
    pub purpose: Purpose,
    /// The consent version the report was built under.
    pub consent_version: u32,
    /// Window start, Unix seconds.
    pub window_start: u64,
    /// Window end (exclusive), Unix seconds, not before the start.
    pub window_end: u64,
    /// The metrics, strictly ascending by id.
    #[serde(with = "crate::codec::length::vec")]
    pub metrics: heapless::Vec<Metric, M>,
}

impl<const M: usize> UsageOf<M> {
    /// The set of data categories the report carries.
    pub fn categories(&self) -> CategorySet {
        self.metrics.iter().fold(CategorySet::EMPTY, |s, m| s.with(m.category))
    }

    /// The most precise location the report carries.
    pub fn location_precision(&self) -> LocationPrecision {
        self.metrics
            .iter()
            .filter_map(|m| match m.value {
                MetricValue::Location { precision, .. } => Some(precision),
                _ => None,
            })
            .max()
            .unwrap_or(LocationPrecision::None)
    }
}

impl<const M: usize> Canonical for UsageOf<M> {
    const MAX_ENCODED_LEN: usize =
        varint_max(16) + varint_max(32) + 2 * varint_max(64) + 1 + M * Metric::MAX_ENCODED_LEN;
    fn validate(&self) -> Result<(), DecodeError> {
        self.purpose.check()?;
        if self.window_end < self.window_start {
            return Err(DecodeError::OutOfRange(Rule::UsageWindow));
        }
        let mut prev: Option<u16> = None;
        for m in &self.metrics {
            if prev.is_some_and(|p| p >= m.id) {
                return Err(DecodeError::Unordered(List::Metrics));
            }
            prev = Some(m.id);
            let is_loc = matches!(m.value, MetricValue::Location { .. });
            if is_loc != (m.category == DataCategory::Location) {
                return Err(DecodeError::OutOfRange(Rule::LocationCategory));
            }
            if matches!(m.value, MetricValue::Location { precision: LocationPrecision::None, .. }) {
                return Err(DecodeError::OutOfRange(Rule::LocationPrecisionNone));
            }
        }
        Ok(())
    }
}

impl<const M: usize> Body for UsageOf<M> {
    const KIND: Kind = Kind::USAGE;
}

/// How bad a fault is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Severity {
    /// Worth knowing.
    Info,
    /// Degraded.
    Warning,
    /// A function failed.
    Error,
    /// Unsafe or unusable.
    Critical,
}

/// Why the device last restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RebootReason {
    /// No reboot is involved.
    None,
    /// Power was applied.
    PowerOn,
    /// A watchdog fired.
    Watchdog,
    /// Supply voltage dropped.
    Brownout,
    /// The firmware panicked or hit a hard fault.
    Crash,
    /// The firmware asked for it (an update, a user request).
    Requested,
    /// The hardware did not say.
    Unknown,
}

/// Fault: one kind of fault, with repeats counted instead of resent.
/// Every field is DeviceHealth but `context`, which is FaultContext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// The purpose the report is collected for.
    pub purpose: Purpose,
    /// The consent version the report was built under.
    pub consent_version: u32,
    /// Product-defined fault code.
    pub code: u32,
    /// How bad it is.
    pub severity: Severity,
    /// Product-defined component id.
    pub component: u16,
    /// The firmware it happened on.
    pub firmware: FirmwareVersion,
    /// Seconds since boot at the last occurrence.
    pub uptime_s: u32,
    /// Why the device last restarted.
    pub reboot_reason: RebootReason,
    /// How many times it happened since the last report, at least 1.
    pub occurrences: u32,
    /// Unix seconds of the first occurrence.
    pub first_seen: u64,
    /// Unix seconds of the last occurrence, not before the first.
    pub last_seen: u64,
    /// Bounded free-form context (FaultContext).
    #[serde(with = "crate::codec::length::vec")]
    pub context: heapless::Vec<u8, MAX_FAULT_CONTEXT>,
}

impl Fault {
    /// The set of data categories the report carries.
    pub fn categories(&self) -> CategorySet {
        let s = CategorySet::EMPTY.with(DataCategory::DeviceHealth);
        if self.context.is_empty() { s } else { s.with(DataCategory::FaultContext) }
    }
}

impl Canonical for Fault {
    const MAX_ENCODED_LEN: usize = varint_max(16)
        + varint_max(32)
        + varint_max(32)
        + 1
        + varint_max(16)
        + FirmwareVersion::MAX_ENCODED_LEN
        + varint_max(32)
        + 1
        + varint_max(32)
        + 2 * varint_max(64)
        + 1
        + MAX_FAULT_CONTEXT;
    fn validate(&self) -> Result<(), DecodeError> {
        self.purpose.check()?;
        if self.occurrences == 0 {
            return Err(DecodeError::OutOfRange(Rule::FaultOccurrences));
        }
        if self.last_seen < self.first_seen {
            return Err(DecodeError::OutOfRange(Rule::FaultSeen));
        }
        Ok(())
    }
}

impl Body for Fault {
    const KIND: Kind = Kind::FAULT;
}

/// Consent: the owner's whole current preference state. A withdrawal is a
/// state with fewer grants and a higher version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentUpdate {
    /// The state, with the owner's signature where there is one.
    pub consent: SignedConsent,
}

impl Canonical for ConsentUpdate {
    const MAX_ENCODED_LEN: usize = SignedConsent::MAX_ENCODED_LEN;
    fn validate(&self) -> Result<(), DecodeError> {
        self.consent.validate()
    }
}

impl Body for ConsentUpdate {
    const KIND: Kind = Kind::CONSENT;
}

/// Transfer: the owner hands the product on. The vendor resets consent to
/// deny-all-but-Essential and ends the relationship; the next owner registers anew.
///
/// While the vendor holds an owner key for the relationship, the Transfer
/// must carry that owner's authorisation ([`OwnerProof::sign_transfer`]):
/// whoever merely holds the device cannot end the owner's relationship
/// (SPEC.md §6.7, §9.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// Unix seconds of the hand-over.
    pub at: u64,
    /// The consent version held when the owner handed the product on (the
    /// device's; the vendor's may be older while a Consent is in flight).
    pub consent_version: u32,
    /// The owner's authorisation, where the owner has a key.
    pub owner: Option<OwnerProof>,
}

impl Transfer {
    /// A Transfer at `at` of the consent version `consent_version`, with no owner proof.
    pub const fn unsigned(at: u64, consent_version: u32) -> Transfer {
        Transfer { at, consent_version, owner: None }
    }
}

impl Canonical for Transfer {
    const MAX_ENCODED_LEN: usize = varint_max(64) + varint_max(32) + 1 + OwnerProof::ENCODED_LEN;
}

impl Body for Transfer {
    const KIND: Kind = Kind::TRANSFER;
}

/// Why a product leaves service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DecommissionReason {
    /// Taken to recycling.
    Recycled,
    /// Returned to the vendor.
    Returned,
    /// Broken beyond repair.
    Broken,
    /// The owner retired it.
    Retired,
}

/// Decommission: end of life. The device sends nothing after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decommission {
    /// Unix seconds.
    pub at: u64,
    /// Why.
    pub reason: DecommissionReason,
}

impl Canonical for Decommission {
    const MAX_ENCODED_LEN: usize = varint_max(64) + 1;
}

impl Body for Decommission {
    const KIND: Kind = Kind::DECOMMISSION;
}

/// Receipt: the vendor countersigns a consent version it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The consent version received.
    pub consent_version: u32,
    /// SHA-256 of the encoded [`SignedConsent`] as received (see [`consent_digest`]).
    #[serde(with = "crate::codec::array")]
    pub consent_digest: [u8; 32],
    /// Unix seconds when the vendor recorded it.
    pub received_at: u64,
}

impl Canonical for Receipt {
    const MAX_ENCODED_LEN: usize = varint_max(32) + 32 + varint_max(64);
}

impl Body for Receipt {
    const KIND: Kind = Kind::RECEIPT;
}

/// The SHA-256 digest a [`Receipt`] names: of the encoded [`SignedConsent`]
/// bytes exactly as they were carried in the Register or Consent body.
pub fn consent_digest(encoded_signed_consent: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(encoded_signed_consent).into()
}

/// What a notice is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NoticeKind {
    /// Maintenance is due.
    MaintenanceDue,
    /// Supplies can be ordered.
    SuppliesOffer,
    /// A safety recall.
    Recall,
    /// How to use a feature.
    Instructions,
    /// A firmware update is available.
    UpdateAvailable,
}

impl NoticeKind {
    /// Whether a notice of this kind may claim `purpose` (SPEC.md §6.5):
    /// an Essential notice (which no preference can refuse) is only a
    /// safety [`NoticeKind::Recall`] or an [`NoticeKind::UpdateAvailable`]
    /// (security updates); a [`NoticeKind::SuppliesOffer`] is advertising,
    /// only for Marketing or a vendor-defined purpose. Other pairs are free.
    ///
    /// ```
    /// use spime::consent::Purpose;
    /// use spime::message::NoticeKind;
    /// assert!(NoticeKind::Recall.allowed_for(Purpose::ESSENTIAL));
    /// assert!(!NoticeKind::SuppliesOffer.allowed_for(Purpose::ESSENTIAL));
    /// assert!(!NoticeKind::SuppliesOffer.allowed_for(Purpose::PROACTIVE_SERVICE));
    /// assert!(NoticeKind::SuppliesOffer.allowed_for(Purpose::MARKETING));
    /// ```
    pub fn allowed_for(self, purpose: Purpose) -> bool {
        match self {
            _ if purpose == Purpose::ESSENTIAL => matches!(self, NoticeKind::Recall | NoticeKind::UpdateAvailable),
            NoticeKind::SuppliesOffer => purpose == Purpose::MARKETING || purpose.id() >= 0x8000,
            _ => true,
        }
    }
}

/// The most bytes of a notice title.
pub const MAX_NOTICE_TITLE: usize = 48;
/// The most bytes of a notice text.
pub const MAX_NOTICE_TEXT: usize = 192;

/// Notice: a message for the owner, sent only where the owner's contact
/// preferences allow its purpose, channel and topic at that time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// Vendor-assigned notice id.
    pub id: u32,
    /// What it is for.
    pub purpose: Purpose,
    /// The channel it is delivered on.
    pub channel: crate::consent::Channel,
    /// Product-defined topic (owners may mute topics).
    pub topic: u16,
    /// What it is about.
    pub kind: NoticeKind,
    /// Unix seconds it was issued.
    pub issued_at: u64,
    /// Unix seconds after which it is stale; not before `issued_at`.
    pub expires_at: u64,
    /// Short title (UTF-8).
    #[serde(with = "crate::codec::length::string")]
    pub title: heapless::String<MAX_NOTICE_TITLE>,
    /// Text (UTF-8).
    #[serde(with = "crate::codec::length::string")]
    pub text: heapless::String<MAX_NOTICE_TEXT>,
}

impl Canonical for Notice {
    const MAX_ENCODED_LEN: usize = varint_max(32)
        + varint_max(16)
        + 1
        + varint_max(16)
        + 1
        + 2 * varint_max(64)
        + 1
        + MAX_NOTICE_TITLE
        + 2
        + MAX_NOTICE_TEXT;
    fn validate(&self) -> Result<(), DecodeError> {
        self.purpose.check()?;
        if self.expires_at < self.issued_at {
            return Err(DecodeError::OutOfRange(Rule::NoticeExpiry));
        }
        Ok(())
    }
}

impl Body for Notice {
    const KIND: Kind = Kind::NOTICE;
}
