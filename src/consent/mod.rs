//! Purposes, data categories, grants, contact preferences and the consent
//! state: the owner's decisions, as both sides read them.
//!
//! Whatever is not granted is denied. [`Purpose::ESSENTIAL`] cannot be
//! denied and carries only [`ESSENTIAL_CATEGORIES`]. The wire encoding of
//! every type here, and every evaluation rule, is in SPEC.md §6.
//!
//! - Evaluation, the same code on both sides:
//!   [`ConsentState::may_collect`] answers with a [`Permit`] or a [`Denial`]
//!   reason; only a permit builds a [`Permitted`] usage or fault report, so
//!   a field the owner did not allow is never encoded.
//!   [`ConsentState::may_contact`] and [`ConsentState::check_notice`] answer
//!   with a [`ContactDenial`] reason. The vendor judges received data with
//!   [`ConsentState::check_usage`] and [`ConsentState::check_fault`].
//! - Making states: [`ConsentState::essential_only`],
//!   [`ConsentState::successor`] and the editing methods keep a state
//!   canonical; [`ConsentState::reset_for_transfer`] starts a new owner's
//!   relationship; [`ConsentState::judge_update`] is the vendor's version rule.
//! - Proof: [`OwnerProof`] (the owner's own signature),
//!   [`SignedConsent::verify_owner`], receipts ([`receipt_for`],
//!   [`verify_receipt`]), and with feature `alloc` the vendor's hash-chained
//!   `ledger`.
//!
//! ```
//! use spime::consent::{CategorySet, ConsentState, DataCategory, Grant, LocationPrecision, Purpose};
//! let mut state = ConsentState::essential_only(1, 1_700_000_000, [0; 32]);
//! state.set_grant(Grant {
//!     purpose: Purpose::DIAGNOSTICS,
//!     categories: CategorySet::EMPTY.with(DataCategory::DeviceHealth),
//!     location: LocationPrecision::None,
//!     expires_at: None,
//! })?;
//! let now = 1_700_000_100;
//! let health = CategorySet::EMPTY.with(DataCategory::DeviceHealth);
//! assert!(state.may_collect(Purpose::DIAGNOSTICS, health, LocationPrecision::None, now).is_ok());
//! let denial = state.may_collect(Purpose::DIAGNOSTICS, CategorySet::ALL, LocationPrecision::None, now).unwrap_err();
//! println!("{denial}"); // not granted: usage-counters+fault-context+... for diagnostics (consent version 1)
//! # Ok::<(), spime::consent::EditError>(())
//! ```

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::codec::{Bytes64, Canonical, varint_max};
use crate::error::{DecodeError, List, Rule};

mod edit;
mod eval;
#[cfg(feature = "alloc")]
pub mod ledger;
mod proof;

pub use edit::EditError;
pub use eval::{
    BuildError, ContactDenial, ContactHistory, Denial, FaultDraft, NoHistory, Permit, Permitted, Scope, SentNotice,
};
pub use proof::{
    ConsentError, OwnerRequirement, SentConsent, authorise_transfer, check_first, check_step, receipt_for,
    verify_receipt,
};

/// The longest time between the owner's decision and the date by which it
/// must be confirmed again: 395 days (about 13 months, as the IAB TCF asks),
/// in seconds. `reconfirm_by - issued_at` may not exceed it.
pub const MAX_RECONFIRM: u64 = 395 * 86_400;

/// The most a consent version may move forward in one step within a
/// relationship (SPEC.md §6.3): a new state's version is at most the held
/// version plus this.
pub const MAX_VERSION_STEP: u32 = 1024;

/// The highest version the first state of a relationship (a first
/// registration, or the next owner's after a transfer) may have without
/// regard to the step: it may be up to this, or up to the held version plus
/// [`MAX_VERSION_STEP`] if that is higher. Half the `u32` space stays for
/// steps, so exhausting the versions (after which no next owner could
/// register, SPEC.md, Security, T4) takes more than two million accepted
/// consent changes.
pub const MAX_FIRST_VERSION: u32 = 0x7fff_ffff;

/// Why data is collected or the owner contacted. Ids 0–9 are defined here,
/// `0x8000..=0xFFFF` are for the vendor to define, everything else is
/// reserved and refused when decoded.
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Purpose(u16);

impl Purpose {
    /// Security updates and safety recalls; cannot be denied.
    pub const ESSENTIAL: Purpose = Purpose(0);
    /// Warranty claims and service under warranty.
    pub const WARRANTY: Purpose = Purpose(1);
    /// Diagnosing faults.
    pub const DIAGNOSTICS: Purpose = Purpose(2);
    /// Understanding how the product is used.
    pub const USAGE_ANALYTICS: Purpose = Purpose(3);
    /// Reaching out first: maintenance, supplies.
    pub const PROACTIVE_SERVICE: Purpose = Purpose(4);
    /// Improving future products.
    pub const PRODUCT_IMPROVEMENT: Purpose = Purpose(5);
    /// Tailoring the product to the owner.
    pub const PERSONALIZATION: Purpose = Purpose(6);
    /// Offers and marketing.
    pub const MARKETING: Purpose = Purpose(7);
    /// Sharing with third parties.
    pub const THIRD_PARTY_SHARING: Purpose = Purpose(8);
    /// Research.
    pub const RESEARCH: Purpose = Purpose(9);
    /// The first vendor-defined purpose id.
    pub const VENDOR_MIN: u16 = 0x8000;

    /// The ten purposes defined by this version, in id order.
    pub const STANDARD: [Purpose; 10] = [
        Purpose(0),
        Purpose(1),
        Purpose(2),
        Purpose(3),
        Purpose(4),
        Purpose(5),
        Purpose(6),
        Purpose(7),
        Purpose(8),
        Purpose(9),
    ];

    /// The purpose with this id.
    ///
    /// # Errors
    /// [`DecodeError::UnknownPurpose`] for a reserved id (10..=0x7FFF).
    ///
    /// ```
    /// use spime::consent::Purpose;
    /// assert_eq!(Purpose::from_id(2), Ok(Purpose::DIAGNOSTICS));
    /// assert!(Purpose::from_id(0x8001).is_ok());
    /// assert!(Purpose::from_id(10).is_err());
    /// ```
    pub const fn from_id(id: u16) -> Result<Purpose, DecodeError> {
        if id <= 9 || id >= Self::VENDOR_MIN { Ok(Purpose(id)) } else { Err(DecodeError::UnknownPurpose(id)) }
    }

    /// The purpose with this id, reserved or not (for decoders: the
    /// enclosing type's `validate` refuses a reserved one).
    pub(crate) const fn raw(id: u16) -> Purpose {
        Purpose(id)
    }

    /// A vendor-defined purpose, `n` in `0..=0x7FFF`.
    pub const fn vendor(n: u16) -> Purpose {
        Purpose(Self::VENDOR_MIN | (n & 0x7FFF))
    }

    /// Whether the id is in the reserved range (only a decoded value that
    /// failed validation can be).
    pub const fn is_reserved(self) -> bool {
        self.0 > 9 && self.0 < Self::VENDOR_MIN
    }

    /// Checks the id is defined or vendor-defined.
    ///
    /// # Errors
    /// [`DecodeError::UnknownPurpose`] for a reserved id.
    pub const fn check(self) -> Result<(), DecodeError> {
        if self.is_reserved() { Err(DecodeError::UnknownPurpose(self.0)) } else { Ok(()) }
    }

    /// The wire id.
    pub const fn id(self) -> u16 {
        self.0
    }

    /// A name for logs and reports.
    pub const fn name(self) -> &'static str {
        match self.0 {
            0 => "essential",
            1 => "warranty",
            2 => "diagnostics",
            3 => "usage-analytics",
            4 => "proactive-service",
            5 => "product-improvement",
            6 => "personalization",
            7 => "marketing",
            8 => "third-party-sharing",
            9 => "research",
            _ => "vendor-defined",
        }
    }
}

impl core::fmt::Debug for Purpose {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

impl core::fmt::Display for Purpose {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.0 >= Self::VENDOR_MIN { write!(f, "vendor-defined({:#06x})", self.0) } else { f.write_str(self.name()) }
    }
}

impl Serialize for Purpose {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.0)
    }
}

impl<'de> Deserialize<'de> for Purpose {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Any id parses; the reserved ones are refused by the enclosing
        // type's `Canonical::validate` with the typed `UnknownPurpose` error.
        Ok(Purpose(u16::deserialize(d)?))
    }
}

/// A kind of data that a message field carries. Each is one bit of a
/// [`CategorySet`].
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum DataCategory {
    /// Health of the device: fault codes, severity, uptime, reboot reasons, firmware version.
    DeviceHealth = 0,
    /// Aggregated usage counters, gauges and histograms.
    UsageCounters = 1,
    /// The free-form context attached to a fault.
    FaultContext = 2,
    /// Where the device is (with a [`LocationPrecision`]).
    Location = 3,
    /// Readings of the surroundings: temperature, humidity, air quality.
    Environment = 4,
    /// Identifiers beyond the device id: serial numbers of parts, network names.
    Identifiers = 5,
    /// Individual usage events rather than aggregates.
    RawEvents = 6,
}

impl DataCategory {
    /// Every category, in bit order.
    pub const ALL: [DataCategory; 7] = [
        DataCategory::DeviceHealth,
        DataCategory::UsageCounters,
        DataCategory::FaultContext,
        DataCategory::Location,
        DataCategory::Environment,
        DataCategory::Identifiers,
        DataCategory::RawEvents,
    ];

    /// The category's bit in a [`CategorySet`].
    pub const fn bit(self) -> u16 {
        1 << (self as u8)
    }

    /// A name for logs and reports.
    pub const fn name(self) -> &'static str {
        match self {
            DataCategory::DeviceHealth => "device-health",
            DataCategory::UsageCounters => "usage-counters",
            DataCategory::FaultContext => "fault-context",
            DataCategory::Location => "location",
            DataCategory::Environment => "environment",
            DataCategory::Identifiers => "identifiers",
            DataCategory::RawEvents => "raw-events",
        }
    }

    /// The category for a bit index.
    ///
    /// # Errors
    /// [`DecodeError::UnknownBits`] for an undefined index.
    pub const fn from_index(i: u8) -> Result<DataCategory, DecodeError> {
        match i {
            0 => Ok(DataCategory::DeviceHealth),
            1 => Ok(DataCategory::UsageCounters),
            2 => Ok(DataCategory::FaultContext),
            3 => Ok(DataCategory::Location),
            4 => Ok(DataCategory::Environment),
            5 => Ok(DataCategory::Identifiers),
            6 => Ok(DataCategory::RawEvents),
            _ => Err(DecodeError::UnknownBits(1u16.wrapping_shl(i as u32))),
        }
    }
}

/// Encoded like every enum: its index as a varint (one byte, as every index
/// is below 128).
impl Serialize for DataCategory {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(*self as u32)
    }
}

impl<'de> Deserialize<'de> for DataCategory {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let i = u32::deserialize(d)?;
        u8::try_from(i)
            .ok()
            .and_then(|i| DataCategory::from_index(i).ok())
            .ok_or_else(|| serde::de::Error::custom("unknown data category"))
    }
}

macro_rules! bitset {
    ($(#[$m:meta])* $name:ident, $repr:ty, $item:ty, $all:expr, $ser:ident, $de:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        #[cfg_attr(feature = "defmt", derive(defmt::Format))]
        pub struct $name($repr);

        impl $name {
            /// The empty set.
            pub const EMPTY: $name = $name(0);
            /// Every defined member.
            pub const ALL: $name = $name($all);

            /// The set with these raw bits.
            ///
            /// # Errors
            /// [`DecodeError::UnknownBits`] when an undefined bit is set.
            pub const fn from_bits(bits: $repr) -> Result<$name, DecodeError> {
                if bits & !$all != 0 {
                    Err(DecodeError::UnknownBits((bits & !$all) as u16))
                } else {
                    Ok($name(bits))
                }
            }
            /// The raw bits.
            pub const fn bits(self) -> $repr {
                self.0
            }
            /// Whether `item` is a member.
            pub const fn contains(self, item: $item) -> bool {
                self.0 & (item.bit() as $repr) != 0
            }
            /// Whether every member of `other` is a member of `self`.
            pub const fn contains_all(self, other: $name) -> bool {
                other.0 & !self.0 == 0
            }
            /// `self` with `item` added.
            pub const fn with(self, item: $item) -> $name {
                $name(self.0 | item.bit() as $repr)
            }
            /// `self` with `item` removed.
            pub const fn without(self, item: $item) -> $name {
                $name(self.0 & !(item.bit() as $repr))
            }
            /// The members of both sets.
            pub const fn intersection(self, other: $name) -> $name {
                $name(self.0 & other.0)
            }
            /// The members of either set.
            pub const fn union(self, other: $name) -> $name {
                $name(self.0 | other.0)
            }
            /// The members of `self` that are not in `other`.
            pub const fn difference(self, other: $name) -> $name {
                $name(self.0 & !other.0)
            }
            /// Whether the set is empty.
            pub const fn is_empty(self) -> bool {
                self.0 == 0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.$ser(self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let bits = <$repr>::deserialize(d)?;
                $name::from_bits(bits).map_err(|_| serde::de::Error::custom("unknown bits in set"))
            }
        }
    };
}

bitset!(
    /// A set of [`DataCategory`], one bit each (bit i = category id i).
    ///
    /// ```
    /// use spime::consent::{CategorySet, DataCategory};
    /// let s = CategorySet::EMPTY.with(DataCategory::DeviceHealth).with(DataCategory::Location);
    /// assert_eq!(s.bits(), 0b1001);
    /// assert!(s.contains(DataCategory::Location));
    /// assert!(CategorySet::from_bits(0x80).is_err());
    /// ```
    CategorySet, u16, DataCategory, 0x7f, serialize_u16, deserialize_u16
);

/// What [`Purpose::ESSENTIAL`] always carries, whatever the owner chose.
pub const ESSENTIAL_CATEGORIES: CategorySet = CategorySet(1 << DataCategory::DeviceHealth as u8);

/// A way to reach the owner. Each is one bit of a [`ChannelSet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Channel {
    /// The product's own display, light or sound.
    OnDevice = 0,
    /// The companion app.
    App = 1,
    /// E-mail.
    Email = 2,
    /// SMS.
    Sms = 3,
}

impl Channel {
    /// Every channel, in bit order.
    pub const ALL: [Channel; 4] = [Channel::OnDevice, Channel::App, Channel::Email, Channel::Sms];

    /// The channel's bit in a [`ChannelSet`].
    pub const fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// A name for logs and reports.
    pub const fn name(self) -> &'static str {
        match self {
            Channel::OnDevice => "on-device",
            Channel::App => "app",
            Channel::Email => "email",
            Channel::Sms => "sms",
        }
    }
}

/// Encoded like every enum: its index as a varint (one byte, as every index
/// is below 128).
impl Serialize for Channel {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(*self as u32)
    }
}

impl<'de> Deserialize<'de> for Channel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u32::deserialize(d)? {
            0 => Ok(Channel::OnDevice),
            1 => Ok(Channel::App),
            2 => Ok(Channel::Email),
            3 => Ok(Channel::Sms),
            _ => Err(serde::de::Error::custom("unknown channel")),
        }
    }
}

bitset!(
    /// A set of [`Channel`], one bit each (bit i = channel id i).
    ChannelSet, u8, Channel, 0x0f, serialize_u8, deserialize_u8
);

impl CategorySet {
    /// The members, in bit order.
    pub fn iter(self) -> impl Iterator<Item = DataCategory> {
        DataCategory::ALL.into_iter().filter(move |c| self.contains(*c))
    }
}

impl ChannelSet {
    /// The members, in bit order.
    pub fn iter(self) -> impl Iterator<Item = Channel> {
        Channel::ALL.into_iter().filter(move |c| self.contains(*c))
    }
}

/// Names joined with `+`, or `none` for the empty set.
fn write_names<I: Iterator<Item = &'static str>>(f: &mut core::fmt::Formatter<'_>, names: I) -> core::fmt::Result {
    let mut any = false;
    for n in names {
        if any {
            f.write_str("+")?;
        }
        f.write_str(n)?;
        any = true;
    }
    if !any {
        f.write_str("none")?;
    }
    Ok(())
}

/// Names joined with `+`; `none` and `all categories` for the two extremes.
///
/// ```
/// use spime::consent::{CategorySet, DataCategory};
/// let s = CategorySet::EMPTY.with(DataCategory::DeviceHealth).with(DataCategory::Location);
/// assert_eq!(s.to_string(), "device-health+location");
/// assert_eq!(CategorySet::EMPTY.to_string(), "none");
/// assert_eq!(CategorySet::ALL.to_string(), "all categories");
/// ```
impl core::fmt::Display for CategorySet {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if *self == CategorySet::ALL {
            return f.write_str("all categories");
        }
        write_names(f, self.iter().map(DataCategory::name))
    }
}

impl core::fmt::Display for ChannelSet {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write_names(f, self.iter().map(Channel::name))
    }
}

impl core::fmt::Display for DataCategory {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

impl core::fmt::Display for Channel {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// How precisely a location may be reported. Ordered: a grant of one level
/// allows every coarser level.
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub enum LocationPrecision {
    /// No location at all.
    #[default]
    None,
    /// Country (about 1,000 km).
    Country,
    /// Region or state (about 100 km).
    Region,
    /// City (about 10 km).
    City,
    /// Neighbourhood (about 1 km).
    Neighbourhood,
    /// Exact position.
    Exact,
}

impl LocationPrecision {
    /// Every level, coarsest first.
    pub const ALL: [LocationPrecision; 6] = [
        LocationPrecision::None,
        LocationPrecision::Country,
        LocationPrecision::Region,
        LocationPrecision::City,
        LocationPrecision::Neighbourhood,
        LocationPrecision::Exact,
    ];

    /// The grid a coordinate at this precision is truncated to, in 1e-7
    /// degrees: 10°, 1°, 0.1°, 0.01° and 1e-7° (unchanged) from Country to
    /// Exact; `None` for [`LocationPrecision::None`] (no coordinate at all).
    pub const fn grid_e7(self) -> Option<i32> {
        match self {
            LocationPrecision::None => None,
            LocationPrecision::Country => Some(100_000_000),
            LocationPrecision::Region => Some(10_000_000),
            LocationPrecision::City => Some(1_000_000),
            LocationPrecision::Neighbourhood => Some(100_000),
            LocationPrecision::Exact => Some(1),
        }
    }

    /// `coordinate_e7` truncated toward zero to this precision's grid
    /// (`None` for [`LocationPrecision::None`]).
    ///
    /// ```
    /// use spime::consent::LocationPrecision;
    /// assert_eq!(LocationPrecision::City.coarsen(525_200_123), Some(525_000_000));
    /// assert_eq!(LocationPrecision::City.coarsen(-134_567_890), Some(-134_000_000));
    /// assert_eq!(LocationPrecision::None.coarsen(1), None);
    /// ```
    pub const fn coarsen(self, coordinate_e7: i32) -> Option<i32> {
        match self.grid_e7() {
            Some(step) => Some(coordinate_e7 / step * step),
            None => None,
        }
    }

    /// A name for logs and reports.
    pub const fn name(self) -> &'static str {
        match self {
            LocationPrecision::None => "none",
            LocationPrecision::Country => "country",
            LocationPrecision::Region => "region",
            LocationPrecision::City => "city",
            LocationPrecision::Neighbourhood => "neighbourhood",
            LocationPrecision::Exact => "exact",
        }
    }
}

impl core::fmt::Display for LocationPrecision {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// The owner allows `categories` to be collected for `purpose` until `expires_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// What the data is for.
    pub purpose: Purpose,
    /// What data may be collected for it.
    pub categories: CategorySet,
    /// How precise a location may be, when `categories` has Location.
    pub location: LocationPrecision,
    /// Unix time (seconds) at which the grant lapses; `None` for the state's own re-confirm date.
    pub expires_at: Option<u64>,
}

impl Grant {
    /// Longest encoding: purpose varint(u16) + categories (≤ 0x7f: one
    /// varint byte) + precision + option tag + varint(u64).
    pub const MAX_ENCODED_LEN: usize = varint_max(16) + 1 + 1 + 1 + varint_max(64);
}

/// The owner may be contacted for `purpose` on `channels`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactGrant {
    /// What the contact is for.
    pub purpose: Purpose,
    /// Which channels may carry it.
    pub channels: ChannelSet,
}

impl ContactGrant {
    /// Longest encoding.
    pub const MAX_ENCODED_LEN: usize = varint_max(16) + 1;
}

/// Hours in which the owner must not be contacted (except for safety
/// recalls), in the owner's local time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuietHours {
    /// Start, minutes after local midnight, `0..1440`.
    pub start_minute: u16,
    /// End (exclusive), minutes after local midnight, `0..1440`; may be before `start_minute` (overnight).
    pub end_minute: u16,
    /// The owner's offset from UTC in minutes, `-840..=840`.
    pub utc_offset_minutes: i16,
}

impl QuietHours {
    /// Longest encoding: minutes below 1440 and zigzagged offsets within
    /// ±840 each take two varint bytes.
    pub const MAX_ENCODED_LEN: usize = 3 * 2;
}

/// At most `max_notices` notices for `purpose` in any `period_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrequencyCap {
    /// The purpose the cap applies to.
    pub purpose: Purpose,
    /// The most notices allowed in one period.
    pub max_notices: u16,
    /// The period's length in seconds, at least 1.
    pub period_seconds: u32,
}

impl FrequencyCap {
    /// Longest encoding.
    pub const MAX_ENCODED_LEN: usize = 2 * varint_max(16) + varint_max(32);
}

/// The most grants in one consent state.
pub const MAX_GRANTS: usize = 16;
/// The most contact grants in one consent state.
pub const MAX_CONTACT_GRANTS: usize = 16;
/// The most frequency caps in one consent state.
pub const MAX_CAPS: usize = 8;
/// The most muted topics in one consent state.
pub const MAX_MUTED_TOPICS: usize = 16;

/// How and when the owner may be contacted.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ContactPrefs {
    /// Per purpose, the channels allowed; strictly ascending by purpose id.
    #[serde(with = "crate::codec::length::vec")]
    pub grants: heapless::Vec<ContactGrant, MAX_CONTACT_GRANTS>,
    /// Quiet hours, if any.
    pub quiet_hours: Option<QuietHours>,
    /// Frequency caps; strictly ascending by purpose id.
    #[serde(with = "crate::codec::length::vec")]
    pub caps: heapless::Vec<FrequencyCap, MAX_CAPS>,
    /// Topics the owner muted; strictly ascending.
    #[serde(with = "crate::codec::length::vec")]
    pub muted_topics: heapless::Vec<u16, MAX_MUTED_TOPICS>,
}

impl ContactPrefs {
    /// Longest encoding.
    pub const MAX_ENCODED_LEN: usize = 1
        + MAX_CONTACT_GRANTS * ContactGrant::MAX_ENCODED_LEN
        + 1
        + QuietHours::MAX_ENCODED_LEN
        + 1
        + MAX_CAPS * FrequencyCap::MAX_ENCODED_LEN
        + 1
        + MAX_MUTED_TOPICS * varint_max(16);
}

/// The owner's whole current preference state.
///
/// Canonical form (checked when decoded): grants strictly ascending by
/// purpose id and never for [`Purpose::ESSENTIAL`] (it is implied), contact
/// grants and caps strictly ascending by purpose id, muted topics strictly
/// ascending, quiet hours in range, caps with a non-zero period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentState {
    /// Monotonic version; a later decision has a higher version.
    pub version: u32,
    /// Unix time (seconds) the owner made this decision.
    pub issued_at: u64,
    /// Unix time (seconds) after which every grant but Essential lapses until the owner re-confirms.
    pub reconfirm_by: u64,
    /// SHA-256 of the privacy notice the owner was shown.
    #[serde(with = "crate::codec::array")]
    pub notice_hash: [u8; 32],
    /// What may be collected, per purpose.
    #[serde(with = "crate::codec::length::vec")]
    pub grants: heapless::Vec<Grant, MAX_GRANTS>,
    /// How the owner may be contacted.
    pub contact: ContactPrefs,
}

impl ConsentState {
    /// Longest encoding.
    pub const MAX_ENCODED_LEN: usize = varint_max(32)
        + 2 * varint_max(64)
        + 32
        + 1
        + MAX_GRANTS * Grant::MAX_ENCODED_LEN
        + ContactPrefs::MAX_ENCODED_LEN;
}

impl Canonical for ConsentState {
    const MAX_ENCODED_LEN: usize = ConsentState::MAX_ENCODED_LEN;

    fn validate(&self) -> Result<(), DecodeError> {
        validate_state(self)
    }
}

fn strictly_ascending<T, K: PartialOrd>(items: &[T], key: impl Fn(&T) -> K, what: List) -> Result<(), DecodeError> {
    let mut prev: Option<K> = None;
    for item in items {
        let k = key(item);
        if prev.as_ref().is_some_and(|p| *p >= k) {
            return Err(DecodeError::Unordered(what));
        }
        prev = Some(k);
    }
    Ok(())
}

/// The canonical-form rules of [`ConsentState`] (SPEC.md §6.2).
fn validate_state(s: &ConsentState) -> Result<(), DecodeError> {
    for p in s
        .grants
        .iter()
        .map(|g| g.purpose)
        .chain(s.contact.grants.iter().map(|g| g.purpose))
        .chain(s.contact.caps.iter().map(|c| c.purpose))
    {
        p.check()?;
    }
    if s.reconfirm_by <= s.issued_at || s.reconfirm_by - s.issued_at > MAX_RECONFIRM {
        return Err(DecodeError::OutOfRange(Rule::ReconfirmWindow));
    }
    strictly_ascending(&s.grants, |g| g.purpose, List::Grants)?;
    if s.grants.iter().any(|g| g.categories.is_empty()) {
        return Err(DecodeError::OutOfRange(Rule::GrantWithoutCategories));
    }
    if s.grants.iter().any(|g| g.purpose == Purpose::ESSENTIAL) {
        return Err(DecodeError::OutOfRange(Rule::GrantForEssential));
    }
    if s.grants.iter().any(|g| g.categories.contains(DataCategory::Location) != (g.location != LocationPrecision::None))
    {
        return Err(DecodeError::OutOfRange(Rule::GrantLocation));
    }
    strictly_ascending(&s.contact.grants, |g| g.purpose, List::ContactGrants)?;
    if s.contact.grants.iter().any(|g| g.channels.is_empty()) {
        return Err(DecodeError::OutOfRange(Rule::ContactGrantWithoutChannels));
    }
    strictly_ascending(&s.contact.caps, |c| c.purpose, List::FrequencyCaps)?;
    strictly_ascending(&s.contact.muted_topics, |t| *t, List::MutedTopics)?;
    if let Some(q) = &s.contact.quiet_hours {
        if q.start_minute >= 1440 || q.end_minute >= 1440 {
            return Err(DecodeError::OutOfRange(Rule::QuietHoursMinute));
        }
        if q.start_minute == q.end_minute {
            return Err(DecodeError::OutOfRange(Rule::QuietHoursEmpty));
        }
        if !(-840..=840).contains(&q.utc_offset_minutes) {
            return Err(DecodeError::OutOfRange(Rule::UtcOffset));
        }
    }
    if s.contact.caps.iter().any(|c| c.period_seconds == 0) {
        return Err(DecodeError::OutOfRange(Rule::CapPeriod));
    }
    Ok(())
}

/// The owner's own signature over a consent state, for products with a
/// companion app that holds an owner key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerProof {
    /// The owner's Ed25519 public key.
    #[serde(with = "crate::codec::array")]
    pub owner_key: [u8; 32],
    /// Ed25519 over `"spime/v1 owner consent\0" || device id || encoded
    /// ConsentState` (a consent proof), or over `"spime/v1 owner
    /// transfer\0" || device id || u32be(consent version) || u64be(at)`
    /// (the owner's authorisation of a Transfer).
    pub signature: Bytes64,
}

impl OwnerProof {
    /// Encoded length.
    pub const ENCODED_LEN: usize = 32 + 64;
}

/// A consent state as a device sends it: the state, and the owner's
/// signature where the owner has a key. Without one, the device's envelope
/// signature is the record (the device signs on the owner's behalf).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedConsent {
    /// The state.
    pub state: ConsentState,
    /// The owner's signature, if any.
    pub owner: Option<OwnerProof>,
}

impl Canonical for SignedConsent {
    const MAX_ENCODED_LEN: usize = ConsentState::MAX_ENCODED_LEN + 1 + 32 + 64;

    fn validate(&self) -> Result<(), DecodeError> {
        validate_state(&self.state)
    }
}

/// Domain-separation tag of the owner's consent signature.
pub const OWNER_CONSENT_DST: &[u8] = b"spime/v1 owner consent\0";

/// Domain-separation tag of the owner's authorisation of a change of owner
/// (a Transfer, SPEC.md §5.8).
pub const OWNER_TRANSFER_DST: &[u8] = b"spime/v1 owner transfer\0";
