//! The envelope header: the compact bytes in front of every sealed
//! message, which are also the AEAD associated data and part of what the
//! sender signs (SPEC.md §4.1).
//!
//! ```text
//! byte 0        v v v e d k k k   version (3 bits, 001), e: an ephemeral key
//!                                 follows, d: direction (1 = vendor to device),
//!                                 kkk: the kind within its direction
//! bytes 1..9    device id         8 bytes
//! then          epoch             u32 as a minimal LEB128 varint (1-5 bytes)
//! then          counter           u64 as a minimal LEB128 varint (1-10 bytes)
//! then          ephemeral         32 bytes, only when e is set
//! ```
//!
//! Every field of the logical header travels: nothing is rebuilt, so the
//! signature and the AEAD, which cover the exact header bytes, cover the
//! device id, kind, direction, epoch, counter and ephemeral key. A header is
//! 11 bytes for a young device (epoch and counter below 128) and at most
//! [`MAX_HEADER_LEN`].
//!
//! [`Header::parse`] checks each field as it reads it; no accessor can panic
//! afterwards.

pub mod chunk;

use crate::error::DecodeError;

/// The protocol version this crate speaks: the top three bits of the
/// first byte of every envelope.
pub const VERSION: u8 = 1;
/// Length of a device id.
pub const DEVICE_ID_LEN: usize = 8;
/// Length of the ephemeral X25519 public key in an epoch opener.
pub const EPHEMERAL_LEN: usize = 32;
/// The shortest header: byte 0, the device id and one-byte epoch and counter.
pub const MIN_HEADER_LEN: usize = 1 + DEVICE_ID_LEN + 1 + 1;
/// The longest header without an ephemeral key (five-byte epoch, ten-byte counter).
pub const MAX_HEADER_LEN_NO_EPHEMERAL: usize = 1 + DEVICE_ID_LEN + 5 + 10;
/// The longest header of all.
pub const MAX_HEADER_LEN: usize = MAX_HEADER_LEN_NO_EPHEMERAL + EPHEMERAL_LEN;
/// Bit of byte 0: a 32-byte ephemeral X25519 public key follows the counter.
pub const FLAG_EPHEMERAL: u8 = 0x10;
/// Bit of byte 0: the kind travels from the vendor to the device.
const DIRECTION_BIT: u8 = 0x08;

/// The length of `v` as a minimal LEB128 varint (SPEC.md §4.1).
///
/// ```
/// assert_eq!(spime::wire::varint_len(127), 1);
/// assert_eq!(spime::wire::varint_len(128), 2);
/// assert_eq!(spime::wire::varint_len(u64::MAX), 10);
/// ```
pub const fn varint_len(v: u64) -> usize {
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Writes `v` as a minimal LEB128 varint at the front of `out`; returns its length.
fn put_varint(mut v: u64, out: &mut [u8]) -> Option<usize> {
    let mut i = 0;
    loop {
        let slot = out.get_mut(i)?;
        let [byte, ..] = v.to_le_bytes();
        let low = byte & 0x7f;
        v >>= 7;
        if v == 0 {
            *slot = low;
            return Some(i + 1);
        }
        *slot = low | 0x80;
        i += 1;
    }
}

/// Reads a minimal LEB128 varint of at most `max_bytes` bytes whose value is
/// at most `max`, starting at `at`; returns the value and the offset after it.
fn take_varint(bytes: &[u8], at: usize, max_bytes: usize, max: u64) -> Result<(u64, usize), DecodeError> {
    let mut value: u64 = 0;
    let mut i = 0;
    loop {
        let pos = at + i;
        let b = *bytes.get(pos).ok_or(DecodeError::Truncated { needed: pos + 1, have: bytes.len() })?;
        let low = u64::from(b & 0x7f);
        // The last allowed byte may not continue, and may not carry bits
        // above the type's width.
        if i + 1 == max_bytes && (b & 0x80 != 0 || low > (max >> (7 * i))) {
            return Err(DecodeError::Malformed);
        }
        value |= low << (7 * i);
        if b & 0x80 == 0 {
            if b == 0 && i > 0 {
                return Err(DecodeError::NonCanonical);
            }
            return Ok((value, pos + 1));
        }
        i += 1;
    }
}

/// Which way a message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the device to its vendor.
    DeviceToVendor,
    /// From the vendor to one device.
    VendorToDevice,
}

impl Direction {
    /// The byte that starts the AEAD nonce: `0x00` device to vendor, `0x01` vendor to device.
    pub const fn nonce_byte(self) -> u8 {
        match self {
            Direction::DeviceToVendor => 0x00,
            Direction::VendorToDevice => 0x01,
        }
    }
}

/// A message kind, named by its code (`0x01`..`0x06` device to vendor,
/// `0x81`..`0x83` vendor to device: the high bit is the direction). On the
/// wire the code is packed into the low four bits of byte 0 as the direction
/// bit (`0x08`) and the code's low three bits ([`Kind::nibble`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Kind(u8);

impl Kind {
    /// Device to vendor: starts (or restarts) a relationship.
    pub const REGISTER: Kind = Kind(0x01);
    /// Device to vendor: aggregated usage metrics.
    pub const USAGE: Kind = Kind(0x02);
    /// Device to vendor: a fault report.
    pub const FAULT: Kind = Kind(0x03);
    /// Device to vendor: the owner's whole current consent state.
    pub const CONSENT: Kind = Kind(0x04);
    /// Device to vendor: the owner hands the product on.
    pub const TRANSFER: Kind = Kind(0x05);
    /// Device to vendor: end of life.
    pub const DECOMMISSION: Kind = Kind(0x06);
    /// Vendor to device: a countersigned consent version.
    pub const RECEIPT: Kind = Kind(0x81);
    /// Vendor to device: a notice for the owner.
    pub const NOTICE: Kind = Kind(0x82);
    /// Vendor to device: a new vendor key, certified by the vendor's
    /// certificate authority (SPEC.md §5.11).
    pub const KEY_UPDATE: Kind = Kind(0x83);

    /// Every kind defined in version 1.
    pub const ALL: [Kind; 9] = [
        Kind::REGISTER,
        Kind::USAGE,
        Kind::FAULT,
        Kind::CONSENT,
        Kind::TRANSFER,
        Kind::DECOMMISSION,
        Kind::RECEIPT,
        Kind::NOTICE,
        Kind::KEY_UPDATE,
    ];

    /// The kind for a wire byte.
    ///
    /// # Errors
    /// [`DecodeError::UnknownKind`] for a byte no kind of version 1 has.
    ///
    /// ```
    /// use spime::wire::Kind;
    /// assert_eq!(Kind::from_byte(0x02), Ok(Kind::USAGE));
    /// assert!(Kind::from_byte(0x07).is_err());
    /// ```
    pub const fn from_byte(b: u8) -> Result<Kind, DecodeError> {
        match b {
            0x01..=0x06 | 0x81..=0x83 => Ok(Kind(b)),
            _ => Err(DecodeError::UnknownKind(b)),
        }
    }

    /// The kind's code (`0x01`..`0x06`, `0x81`..`0x83`), as in SPEC.md §4.1
    /// and the vectors.
    pub const fn to_byte(self) -> u8 {
        self.0
    }

    /// The four bits of byte 0 that name this kind: the direction bit
    /// (`0x08`) and the low three bits of the code.
    ///
    /// ```
    /// use spime::wire::Kind;
    /// assert_eq!(Kind::USAGE.nibble(), 0x2);
    /// assert_eq!(Kind::NOTICE.nibble(), 0xa);
    /// assert_eq!(Kind::from_nibble(0xa), Ok(Kind::NOTICE));
    /// ```
    pub const fn nibble(self) -> u8 {
        (self.0 & 0x07) | if self.0 & 0x80 != 0 { DIRECTION_BIT } else { 0 }
    }

    /// The kind named by the low four bits of byte 0.
    ///
    /// # Errors
    /// [`DecodeError::UnknownKind`] (with the four bits) for a value no kind
    /// of version 1 has.
    pub const fn from_nibble(n: u8) -> Result<Kind, DecodeError> {
        match n {
            0x1..=0x6 => Ok(Kind(n)),
            0x9..=0xb => Ok(Kind(0x80 | (n & 0x07))),
            _ => Err(DecodeError::UnknownKind(n)),
        }
    }

    /// The direction this kind travels in.
    pub const fn direction(self) -> Direction {
        if self.0 & 0x80 == 0 { Direction::DeviceToVendor } else { Direction::VendorToDevice }
    }

    /// A short lowercase name (`"usage"`), for logs and reports.
    pub const fn name(self) -> &'static str {
        match self.0 {
            0x01 => "register",
            0x02 => "usage",
            0x03 => "fault",
            0x04 => "consent",
            0x05 => "transfer",
            0x06 => "decommission",
            0x81 => "receipt",
            0x82 => "notice",
            0x83 => "key-update",
            _ => "unknown",
        }
    }
}

impl core::fmt::Debug for Kind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}(0x{:02x})", self.name(), self.0)
    }
}

/// A device's 8-byte identifier (EUI-64 sized, like LoRaWAN's DevEUI),
/// assigned by the vendor at manufacture and bound to the device's key by
/// its certificate. It travels in every header, so gateways route and
/// partition by it without keys.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DeviceId(pub [u8; DEVICE_ID_LEN]);

impl core::fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "DeviceId(")?;
        core::fmt::Display::fmt(self, f)?;
        write!(f, ")")
    }
}

impl core::fmt::Display for DeviceId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The validated envelope header.
///
/// ```
/// use spime::wire::{DeviceId, Header, Kind};
/// let h = Header { kind: Kind::USAGE, device: DeviceId([7; 8]), epoch: 1, counter: 300, ephemeral: None };
/// let mut buf = [0u8; spime::wire::MAX_HEADER_LEN];
/// let n = h.emit(&mut buf)?;
/// assert_eq!(n, 12); // byte 0, 8-byte id, epoch 1 byte, counter 300 in 2 bytes
/// assert_eq!(buf[0], 0x22); // version 1, no ephemeral key, device to vendor, kind 2
/// let (parsed, used) = Header::parse(&buf[..n])?;
/// assert_eq!((parsed, used), (h, n));
/// # Ok::<(), spime::error::DecodeError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The message kind.
    pub kind: Kind,
    /// The device the message is from (device to vendor) or to (vendor to device).
    pub device: DeviceId,
    /// The session key epoch the message is sealed under.
    pub epoch: u32,
    /// The sender's message counter; never repeats for one sender and device.
    pub counter: u64,
    /// The device's ephemeral X25519 public key, present when this message
    /// opens (or, until the vendor confirms it, re-offers) a key epoch;
    /// always on Register.
    pub ephemeral: Option<[u8; EPHEMERAL_LEN]>,
}

impl Header {
    /// The number of bytes [`Header::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        1 + DEVICE_ID_LEN
            + varint_len(self.epoch as u64)
            + varint_len(self.counter)
            + if self.ephemeral.is_some() { EPHEMERAL_LEN } else { 0 }
    }

    /// The direction of the message, from its kind.
    pub const fn direction(&self) -> Direction {
        self.kind.direction()
    }

    /// Byte 0: version, ephemeral flag, direction and kind.
    pub const fn first_byte(&self) -> u8 {
        (VERSION << 5) | if self.ephemeral.is_some() { FLAG_EPHEMERAL } else { 0 } | self.kind.nibble()
    }

    /// Checks the rules between fields: an ephemeral key only on device to
    /// vendor kinds, and always on Register.
    ///
    /// # Errors
    /// [`DecodeError::InvalidFlags`] (with byte 0) when the rule is broken.
    pub const fn check_flags(&self) -> Result<(), DecodeError> {
        let needs = self.kind.0 == Kind::REGISTER.0;
        let may = matches!(self.kind.direction(), Direction::DeviceToVendor);
        if (needs && self.ephemeral.is_none()) || (!may && self.ephemeral.is_some()) {
            return Err(DecodeError::InvalidFlags(self.first_byte()));
        }
        Ok(())
    }

    /// Writes the header to the front of `out`, returning its length.
    ///
    /// # Errors
    /// [`DecodeError::BufferTooSmall`] when `out` is shorter than
    /// [`Header::buffer_len`]; [`DecodeError::InvalidFlags`] for a header
    /// that [`Header::parse`] would refuse.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, DecodeError> {
        self.check_flags()?;
        let len = self.buffer_len();
        let have = out.len();
        let out = out.get_mut(..len).ok_or(DecodeError::BufferTooSmall { have })?;
        let (first, rest) = out.split_first_mut().ok_or(DecodeError::BufferTooSmall { have })?;
        *first = self.first_byte();
        let (id, rest) = rest.split_at_mut(DEVICE_ID_LEN);
        id.copy_from_slice(&self.device.0);
        let e = put_varint(u64::from(self.epoch), rest).ok_or(DecodeError::BufferTooSmall { have })?;
        let rest = rest.get_mut(e..).ok_or(DecodeError::BufferTooSmall { have })?;
        let c = put_varint(self.counter, rest).ok_or(DecodeError::BufferTooSmall { have })?;
        if let (Some(key), Some(dst)) = (&self.ephemeral, rest.get_mut(c..c + EPHEMERAL_LEN)) {
            dst.copy_from_slice(key);
        }
        Ok(len)
    }

    /// Parses a header from the front of `bytes`; returns it and its length.
    ///
    /// Checked in this order (SPEC.md §4.1): the input is not empty; the
    /// version; the kind; the flag rules; at least [`MIN_HEADER_LEN`] bytes;
    /// the epoch varint; the counter varint; the ephemeral key's 32 bytes.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`], [`DecodeError::UnsupportedVersion`],
    /// [`DecodeError::UnknownKind`], [`DecodeError::InvalidFlags`],
    /// [`DecodeError::Malformed`] (a varint too long or too large for its
    /// type) or [`DecodeError::NonCanonical`] (a varint not in its shortest form).
    pub fn parse(bytes: &[u8]) -> Result<(Header, usize), DecodeError> {
        let have = bytes.len();
        let first = *bytes.first().ok_or(DecodeError::Truncated { needed: MIN_HEADER_LEN, have })?;
        let version = first >> 5;
        if version != VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let kind = Kind::from_nibble(first & 0x0f)?;
        let has_ephemeral = first & FLAG_EPHEMERAL != 0;
        let needs = kind.0 == Kind::REGISTER.0;
        let may = matches!(kind.direction(), Direction::DeviceToVendor);
        if (needs && !has_ephemeral) || (!may && has_ephemeral) {
            return Err(DecodeError::InvalidFlags(first));
        }
        if have < MIN_HEADER_LEN {
            return Err(DecodeError::Truncated { needed: MIN_HEADER_LEN, have });
        }
        let id: [u8; DEVICE_ID_LEN] = bytes
            .get(1..=DEVICE_ID_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(DecodeError::Truncated { needed: MIN_HEADER_LEN, have })?;
        let (epoch, at) = take_varint(bytes, 1 + DEVICE_ID_LEN, 5, u64::from(u32::MAX))?;
        let epoch = u32::try_from(epoch).map_err(|_| DecodeError::Malformed)?;
        let (counter, at) = take_varint(bytes, at, 10, u64::MAX)?;
        let (ephemeral, len) = if has_ephemeral {
            let end = at + EPHEMERAL_LEN;
            let key: [u8; EPHEMERAL_LEN] = bytes
                .get(at..end)
                .and_then(|s| s.try_into().ok())
                .ok_or(DecodeError::Truncated { needed: end, have })?;
            (Some(key), end)
        } else {
            (None, at)
        };
        Ok((Header { kind, device: DeviceId(id), epoch, counter, ephemeral }, len))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn varints_round_trip_at_every_width() {
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u64::from(u32::MAX), u64::MAX] {
            let mut buf = [0u8; 10];
            let n = put_varint(v, &mut buf).unwrap_or(0);
            assert_eq!(n, varint_len(v));
            assert_eq!(take_varint(&buf[..n], 0, 10, u64::MAX), Ok((v, n)));
        }
    }

    #[test]
    fn varint_rules() {
        // shortest form only
        assert_eq!(take_varint(&[0x83, 0x00], 0, 5, u64::from(u32::MAX)), Err(DecodeError::NonCanonical));
        // a u32 takes at most five bytes and 32 bits
        assert_eq!(
            take_varint(&[0xff, 0xff, 0xff, 0xff, 0x0f], 0, 5, u64::from(u32::MAX)),
            Ok((u64::from(u32::MAX), 5))
        );
        assert_eq!(
            take_varint(&[0xff, 0xff, 0xff, 0xff, 0x1f], 0, 5, u64::from(u32::MAX)),
            Err(DecodeError::Malformed)
        );
        assert_eq!(
            take_varint(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x00], 0, 5, u64::from(u32::MAX)),
            Err(DecodeError::Malformed)
        );
        // a u64 at most ten bytes and 64 bits
        let mut max = [0xffu8; 10];
        max[9] = 0x01;
        assert_eq!(take_varint(&max, 0, 10, u64::MAX), Ok((u64::MAX, 10)));
        max[9] = 0x02;
        assert_eq!(take_varint(&max, 0, 10, u64::MAX), Err(DecodeError::Malformed));
        // input that ends inside a varint
        assert_eq!(take_varint(&[0x80], 0, 5, 1), Err(DecodeError::Truncated { needed: 2, have: 1 }));
    }
}
