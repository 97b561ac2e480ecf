//! The envelope header: the fixed-layout bytes in front of every sealed
//! message, which are also the AEAD associated data and part of what the
//! sender signs.
//!
//! ```text
//! offset  size  field
//! 0       1     version      0x01
//! 1       1     kind         see [`Kind`]
//! 2       1     flags        bit 0: an ephemeral X25519 key follows; other bits 0
//! 3       16    device id    the device the message is from (or, vendor to device, to)
//! 19      4     epoch        u32 big-endian, the session key's epoch
//! 23      8     counter      u64 big-endian, the sender's message counter
//! 31      32    ephemeral    only when flags bit 0 is set
//! ```
//!
//! [`Header::parse`] checks the length once and then reads fields; no
//! accessor can panic afterwards.

pub mod chunk;

use crate::error::DecodeError;

/// The protocol version this crate speaks, first byte of every envelope.
pub const VERSION: u8 = 1;
/// Header length without an ephemeral key.
pub const HEADER_LEN: usize = 31;
/// Header length with an ephemeral key.
pub const HEADER_LEN_WITH_EPHEMERAL: usize = HEADER_LEN + 32;
/// Flag bit: a 32-byte ephemeral X25519 public key follows the counter.
pub const FLAG_EPHEMERAL: u8 = 0x01;

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

/// A message kind: the second byte of the envelope. Kinds with the high bit
/// set travel from the vendor to a device; the others from a device.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
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

    /// Every kind defined in version 1.
    pub const ALL: [Kind; 8] = [
        Kind::REGISTER,
        Kind::USAGE,
        Kind::FAULT,
        Kind::CONSENT,
        Kind::TRANSFER,
        Kind::DECOMMISSION,
        Kind::RECEIPT,
        Kind::NOTICE,
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
            0x01..=0x06 | 0x81 | 0x82 => Ok(Kind(b)),
            _ => Err(DecodeError::UnknownKind(b)),
        }
    }

    /// The wire byte.
    pub const fn to_byte(self) -> u8 {
        self.0
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
            _ => "unknown",
        }
    }
}

impl core::fmt::Debug for Kind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}(0x{:02x})", self.name(), self.0)
    }
}

/// A device's 16-byte identifier, assigned at manufacture and bound to its
/// key by the device certificate.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct DeviceId(pub [u8; 16]);

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
/// let h = Header { kind: Kind::USAGE, device: DeviceId([7; 16]), epoch: 1, counter: 42, ephemeral: None };
/// let mut buf = [0u8; spime::wire::HEADER_LEN_WITH_EPHEMERAL];
/// let n = h.emit(&mut buf)?;
/// assert_eq!(n, h.buffer_len());
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
    /// starts a new key epoch (always on Register).
    pub ephemeral: Option<[u8; 32]>,
}

impl Header {
    /// The number of bytes [`Header::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        if self.ephemeral.is_some() { HEADER_LEN_WITH_EPHEMERAL } else { HEADER_LEN }
    }

    /// The direction of the message, from its kind.
    pub const fn direction(&self) -> Direction {
        self.kind.direction()
    }

    /// Checks the rules between fields: an ephemeral key only on device to
    /// vendor kinds, and always on Register.
    ///
    /// # Errors
    /// [`DecodeError::InvalidFlags`] when the rule is broken.
    pub const fn check_flags(&self) -> Result<(), DecodeError> {
        let flags = if self.ephemeral.is_some() { FLAG_EPHEMERAL } else { 0 };
        let needs = self.kind.0 == Kind::REGISTER.0;
        let may = matches!(self.kind.direction(), Direction::DeviceToVendor);
        if (needs && self.ephemeral.is_none()) || (!may && self.ephemeral.is_some()) {
            return Err(DecodeError::InvalidFlags(flags));
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
        let (fixed, eph) = out.split_at_mut(HEADER_LEN);
        let mut fixed_bytes = [0u8; HEADER_LEN];
        fixed_bytes[0] = VERSION;
        fixed_bytes[1] = self.kind.0;
        fixed_bytes[2] = if self.ephemeral.is_some() { FLAG_EPHEMERAL } else { 0 };
        fixed_bytes[3..19].copy_from_slice(&self.device.0);
        fixed_bytes[19..23].copy_from_slice(&self.epoch.to_be_bytes());
        fixed_bytes[23..31].copy_from_slice(&self.counter.to_be_bytes());
        fixed.copy_from_slice(&fixed_bytes);
        if let Some(e) = &self.ephemeral {
            eph.copy_from_slice(e);
        }
        Ok(len)
    }

    /// Parses a header from the front of `bytes`; returns it and its length.
    ///
    /// The version is checked first, then the kind, then the flags.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`], [`DecodeError::UnsupportedVersion`],
    /// [`DecodeError::UnknownKind`] or [`DecodeError::InvalidFlags`].
    pub fn parse(bytes: &[u8]) -> Result<(Header, usize), DecodeError> {
        let have = bytes.len();
        let version = *bytes.first().ok_or(DecodeError::Truncated { needed: HEADER_LEN, have })?;
        if version != VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let fixed: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(DecodeError::Truncated { needed: HEADER_LEN, have })?;
        let [
            _,
            kind,
            flags,
            d0,
            d1,
            d2,
            d3,
            d4,
            d5,
            d6,
            d7,
            d8,
            d9,
            d10,
            d11,
            d12,
            d13,
            d14,
            d15,
            e0,
            e1,
            e2,
            e3,
            c0,
            c1,
            c2,
            c3,
            c4,
            c5,
            c6,
            c7,
        ] = *fixed;
        let kind = Kind::from_byte(kind)?;
        if flags & !FLAG_EPHEMERAL != 0 {
            return Err(DecodeError::InvalidFlags(flags));
        }
        let device = DeviceId([d0, d1, d2, d3, d4, d5, d6, d7, d8, d9, d10, d11, d12, d13, d14, d15]);
        let epoch = u32::from_be_bytes([e0, e1, e2, e3]);
        let counter = u64::from_be_bytes([c0, c1, c2, c3, c4, c5, c6, c7]);
        let (ephemeral, len) = if flags & FLAG_EPHEMERAL != 0 {
            let eph: [u8; 32] = bytes
                .get(HEADER_LEN..HEADER_LEN_WITH_EPHEMERAL)
                .and_then(|s| s.try_into().ok())
                .ok_or(DecodeError::Truncated { needed: HEADER_LEN_WITH_EPHEMERAL, have })?;
            (Some(eph), HEADER_LEN_WITH_EPHEMERAL)
        } else {
            (None, HEADER_LEN)
        };
        let header = Header { kind, device, epoch, counter, ephemeral };
        header.check_flags()?;
        Ok((header, len))
    }
}
