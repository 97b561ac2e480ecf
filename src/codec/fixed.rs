//! The same canonical encoding as [`crate::codec`], written out by hand for
//! the types a device encodes and decodes, without serde.
//!
//! On a microcontroller serde's generic machinery is most of the codec's
//! flash: every field of every type becomes a visitor, and a decode runs
//! postcard, then a re-encode to compare with the input (measured on the
//! QEMU firmware: see docs/firmware.md). This module reads and writes the
//! SPEC.md §5 encoding directly: varints (`u16`, `u32`, `u64`; zigzag for
//! signed integers), one raw byte for a `u8`, an option as a `0`/`1` tag
//! byte then the value, an enum as its variant index as a varint, bounded
//! lists and strings as a `u32` length varint then the elements, and byte
//! arrays as their raw bytes.
//!
//! The reader accepts exactly the canonical encodings: a varint must be the
//! shortest for its value and in range, so a parsed value re-encodes to the
//! bytes it came from and no comparison is needed. For every input, and
//! every value, it agrees with the serde path (the property tests in
//! `tests/properties.rs` check it on random values and on random and
//! mutated bytes, `tests/vectors.rs` on every body of the vectors, and the
//! `fixed_codec` fuzz target on any bytes):
//!
//! - [`encode`] gives the same bytes as [`crate::codec::encode`];
//! - [`decode`] is `Ok` with the same value exactly when
//!   [`crate::codec::decode`] is. Its errors are the same for a length
//!   over the bound ([`DecodeError::Oversized`]) and for a value
//!   [`Canonical::validate`] rejects; among the parse errors the variant
//!   may differ, because this reader stops at the first fault it meets
//!   while postcard parses everything before the checks: an over-long
//!   varint is [`DecodeError::NonCanonical`] here even when bytes after it
//!   are missing (postcard: `Malformed`) or left over (`TrailingBytes`).
//!
//! ```
//! use spime::codec::{self, fixed};
//! use spime::message::Receipt;
//! let r = Receipt { consent_version: 3, consent_digest: [7; 32], received_at: 1_700_000_000 };
//! let (mut a, mut b) = ([0u8; 64], [0u8; 64]);
//! let bytes = fixed::encode(&r, &mut a)?;
//! assert_eq!(bytes, codec::encode(&r, &mut b)?);
//! assert_eq!(fixed::decode::<Receipt>(bytes)?, r);
//! # Ok::<(), spime::error::DecodeError>(())
//! ```

use super::{Bytes64, Canonical};
use crate::consent::{
    CategorySet, Channel, ChannelSet, ConsentState, ContactGrant, ContactPrefs, DataCategory, FrequencyCap, Grant,
    LocationPrecision, OwnerProof, Purpose, QuietHours, SignedConsent,
};
use crate::error::DecodeError;
use crate::message::{
    CertificateBody, ConsentUpdate, Decommission, DecommissionReason, DeviceCertificate, Fault, FirmwareVersion,
    Metric, MetricValue, Notice, NoticeKind, RebootReason, Receipt, Register, Severity, Transfer, UsageOf,
};
use crate::wire::DeviceId;

/// A type with a hand-written reader and writer for its canonical encoding.
///
/// ```
/// use spime::codec::fixed::{Fixed, Reader};
/// use spime::message::FirmwareVersion;
/// let mut r = Reader::new(&[1, 2, 3, 0xac, 0x02]);
/// let fw = FirmwareVersion::read(&mut r);
/// r.finish()?;
/// assert_eq!(fw.build, 300);
/// # Ok::<(), spime::error::DecodeError>(())
/// ```
pub trait Fixed: Sized {
    /// Appends the encoding of `self` (a writer whose buffer is full only
    /// counts: [`encode`] then reports the buffer as too small).
    fn write(&self, w: &mut Writer<'_>);

    /// Reads one value. Bytes that are not the canonical encoding of a
    /// value are recorded in the reader ([`Reader::fail`]; checked by
    /// [`Reader::finish`]) and the value read is then meaningless.
    fn read(r: &mut Reader<'_>) -> Self;

    /// Reads one value into `self`, field by field, for large values that
    /// should not be moved through the stack. After an error (see
    /// [`Fixed::read`]) `self` holds an unspecified mix of old and read
    /// fields.
    fn read_into(&mut self, r: &mut Reader<'_>) {
        *self = Self::read(r);
    }
}

/// Encodes `value` into the front of `out` and returns the used prefix:
/// the bytes of [`crate::codec::encode`].
///
/// # Errors
/// [`DecodeError::BufferTooSmall`] when `out` cannot hold the encoding.
///
/// ```
/// use spime::codec::fixed;
/// use spime::message::{Decommission, DecommissionReason};
/// let mut buf = [0u8; 16];
/// let d = Decommission { at: 300, reason: DecommissionReason::Broken };
/// assert_eq!(fixed::encode(&d, &mut buf)?, [0xac, 0x02, 2]);
/// assert!(fixed::encode(&d, &mut [0u8; 2]).is_err());
/// # Ok::<(), spime::error::DecodeError>(())
/// ```
pub fn encode<'a, T: Fixed>(value: &T, out: &'a mut [u8]) -> Result<&'a mut [u8], DecodeError> {
    encode_with(out, |w| value.write(w))
}

/// What `write` writes, into the front of `out`; the used prefix.
pub(crate) fn encode_with(out: &mut [u8], write: impl FnOnce(&mut Writer<'_>)) -> Result<&mut [u8], DecodeError> {
    let have = out.len();
    let mut w = Writer { out, len: 0 };
    write(&mut w);
    let len = w.len;
    w.out.get_mut(..len).ok_or(DecodeError::BufferTooSmall { have })
}

/// The exact length of `value`'s encoding, computed without a buffer.
///
/// # Errors
/// None: the result is a `Result` for symmetry with
/// [`crate::codec::encoded_len`].
///
/// ```
/// use spime::codec::fixed;
/// use spime::message::Transfer;
/// assert_eq!(fixed::encoded_len(&Transfer::unsigned(300, 1))?, 4);
/// # Ok::<(), spime::error::DecodeError>(())
/// ```
pub fn encoded_len<T: Fixed>(value: &T) -> Result<usize, DecodeError> {
    Ok(encoded_len_with(|w| value.write(w)))
}

/// The length of what `write` writes.
pub(crate) fn encoded_len_with(write: impl FnOnce(&mut Writer<'_>)) -> usize {
    let mut w = Writer { out: &mut [], len: 0 };
    write(&mut w);
    w.len
}

/// Decodes exactly one canonical `T` from all of `bytes`, like
/// [`crate::codec::decode`] (see the module documentation for the errors).
///
/// # Errors
/// [`DecodeError::Oversized`] above `T::MAX_ENCODED_LEN`;
/// [`DecodeError::Malformed`] or [`DecodeError::NonCanonical`] for bytes
/// that are not a canonical encoding; [`DecodeError::TrailingBytes`];
/// whatever [`Canonical::validate`] rejects.
///
/// ```
/// use spime::codec::fixed;
/// use spime::error::DecodeError;
/// use spime::message::FirmwareVersion;
/// assert_eq!(fixed::decode::<FirmwareVersion>(&[1, 2, 3, 0xac, 0x02])?.build, 300);
/// // 1 as a two-byte varint, and a trailing byte, are refused:
/// assert_eq!(fixed::decode::<FirmwareVersion>(&[0x81, 0x00, 2, 3, 4]), Err(DecodeError::NonCanonical));
/// assert_eq!(fixed::decode::<FirmwareVersion>(&[1, 2, 3, 4, 0]), Err(DecodeError::TrailingBytes));
/// # Ok::<(), DecodeError>(())
/// ```
pub fn decode<T: Fixed + Canonical>(bytes: &[u8]) -> Result<T, DecodeError> {
    let mut r = reader_for::<T>(bytes)?;
    let value = T::read(&mut r);
    r.finish()?;
    value.validate()?;
    Ok(value)
}

/// [`decode`] into `place`, field by field (see [`Fixed::read_into`]); on
/// an error `place` holds an unspecified mix of old and decoded fields.
///
/// # Errors
/// As [`decode`].
///
/// ```
/// use spime::codec::{self, fixed};
/// use spime::consent::{ConsentState, SignedConsent};
/// let stored = SignedConsent { state: ConsentState::essential_only(7, 1_700_000_000, [1; 32]), owner: None };
/// let mut buf = [0u8; 128];
/// let bytes = codec::encode(&stored, &mut buf)?;
/// let mut place = SignedConsent { state: ConsentState::essential_only(0, 0, [0; 32]), owner: None };
/// fixed::decode_in_place(bytes, &mut place)?;
/// assert_eq!(place, stored);
/// # Ok::<(), spime::error::DecodeError>(())
/// ```
pub fn decode_in_place<T: Fixed + Canonical>(bytes: &[u8], place: &mut T) -> Result<(), DecodeError> {
    let mut r = reader_for::<T>(bytes)?;
    place.read_into(&mut r);
    r.finish()?;
    place.validate()
}

fn reader_for<T: Canonical>(bytes: &[u8]) -> Result<Reader<'_>, DecodeError> {
    if bytes.len() > T::MAX_ENCODED_LEN {
        return Err(DecodeError::Oversized { len: bytes.len(), max: T::MAX_ENCODED_LEN });
    }
    Ok(Reader::new(bytes))
}

/// Reads canonical encodings from the front of a byte slice.
///
/// A read returns its value directly; the first fault (truncation, a
/// longer varint than needed, a bad tag, a length over the capacity) is
/// recorded and ends the reading: later reads return zeros and empty
/// values, and [`Reader::finish`] reports the fault.
///
/// ```
/// use spime::codec::fixed::Reader;
/// use spime::error::DecodeError;
/// let mut r = Reader::new(&[0xac, 0x02, 1, 3]);
/// assert_eq!(r.u32(), 300);
/// assert!(r.option());
/// assert_eq!(r.i16(), -2);
/// r.finish()?;
/// let mut r = Reader::new(&[0x81, 0x00, 7]);
/// assert_eq!(r.u16(), 0);
/// assert_eq!(r.finish(), Err(DecodeError::NonCanonical));
/// # Ok::<(), DecodeError>(())
/// ```
#[derive(Debug)]
pub struct Reader<'a> {
    rest: &'a [u8],
    error: Option<DecodeError>,
}

impl<'a> Reader<'a> {
    /// A reader of `bytes`.
    pub const fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { rest: bytes, error: None }
    }

    /// Records `error` (unless an earlier one is recorded) and ends the
    /// reading: nothing more is read.
    pub fn fail(&mut self, error: DecodeError) {
        if self.error.is_none() {
            self.error = Some(error);
        }
        self.rest = &[];
    }

    /// The first fault met, or [`DecodeError::TrailingBytes`] when bytes
    /// are left over.
    ///
    /// # Errors
    /// As said.
    pub const fn finish(&self) -> Result<(), DecodeError> {
        match self.error {
            Some(e) => Err(e),
            None if !self.rest.is_empty() => Err(DecodeError::TrailingBytes),
            None => Ok(()),
        }
    }

    /// One raw byte (a `u8`); at the end of the input
    /// [`DecodeError::Malformed`].
    pub fn byte(&mut self) -> u8 {
        match self.rest.split_first() {
            Some((&b, rest)) => {
                self.rest = rest;
                b
            }
            None => {
                self.fail(DecodeError::Malformed);
                0
            }
        }
    }

    /// `n` raw bytes; [`DecodeError::Malformed`] (and none) when fewer are
    /// left.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        match self.rest.split_at_checked(n) {
            Some((head, rest)) => {
                self.rest = rest;
                head
            }
            None => {
                self.fail(DecodeError::Malformed);
                &[]
            }
        }
    }

    /// A fixed-size byte array, its raw bytes; [`DecodeError::Malformed`]
    /// (and zeros) when fewer than `N` bytes are left.
    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        self.take(N).try_into().unwrap_or([0; N])
    }

    /// A varint of an unsigned integer of `bits` bits (16, 32 or 64): the
    /// shortest encoding of a value below `2^bits`.
    /// [`DecodeError::NonCanonical`] for a longer encoding than needed;
    /// [`DecodeError::Malformed`] when truncated, too long or out of range.
    fn varint(&mut self, bits: u32) -> u64 {
        let mut value = 0u64;
        let mut shift = 0u32;
        while shift < bits {
            let Some((&b, rest)) = self.rest.split_first() else { break };
            self.rest = rest;
            let part = u64::from(b & 0x7f);
            // Only the tenth byte of a `u64` can carry bits past bit 63.
            if shift == 63 && part > 1 {
                break;
            }
            value |= part << shift;
            if b & 0x80 == 0 {
                if b == 0 && shift > 0 {
                    self.fail(DecodeError::NonCanonical);
                    return 0;
                }
                if bits < 64 && value >> bits != 0 {
                    break;
                }
                return value;
            }
            shift += 7;
        }
        self.fail(DecodeError::Malformed);
        0
    }

    /// A `u16` varint (see [`Reader::u64`] for its faults).
    pub fn u16(&mut self) -> u16 {
        u16::try_from(self.varint(16)).unwrap_or(0)
    }

    /// A `u32` varint (see [`Reader::u64`] for its faults).
    pub fn u32(&mut self) -> u32 {
        u32::try_from(self.varint(32)).unwrap_or(0)
    }

    /// A `u64` varint: [`DecodeError::NonCanonical`] for a longer encoding
    /// than needed, [`DecodeError::Malformed`] when truncated, too long or
    /// out of range.
    pub fn u64(&mut self) -> u64 {
        self.varint(64)
    }

    /// An `i16` (zigzag varint).
    pub fn i16(&mut self) -> i16 {
        let u = self.u16();
        ((u >> 1) as i16) ^ -((u & 1) as i16)
    }

    /// An `i32` (zigzag varint).
    pub fn i32(&mut self) -> i32 {
        let u = self.u32();
        ((u >> 1) as i32) ^ -((u & 1) as i32)
    }

    /// An `i64` (zigzag varint).
    pub fn i64(&mut self) -> i64 {
        let u = self.u64();
        ((u >> 1) as i64) ^ -((u & 1) as i64)
    }

    /// An option's tag byte: `0` for none, `1` for some;
    /// [`DecodeError::Malformed`] for any other byte.
    pub fn option(&mut self) -> bool {
        match self.byte() {
            0 => false,
            1 => true,
            _ => {
                self.fail(DecodeError::Malformed);
                false
            }
        }
    }

    /// An enum's variant index (a `u32` varint) below `variants`;
    /// [`DecodeError::Malformed`] (and 0) for an index out of range.
    pub fn variant(&mut self, variants: usize) -> usize {
        let i = usize::try_from(self.u32()).unwrap_or(usize::MAX);
        if i < variants {
            i
        } else {
            self.fail(DecodeError::Malformed);
            0
        }
    }

    /// A list or string length (a `u32` varint) of at most `cap`;
    /// [`DecodeError::Malformed`] (and 0) above it.
    pub fn len(&mut self, cap: usize) -> usize {
        let n = usize::try_from(self.u32()).unwrap_or(usize::MAX);
        if n <= cap {
            n
        } else {
            self.fail(DecodeError::Malformed);
            0
        }
    }

    /// A bounded list into `out` (cleared first).
    pub fn vec_into<T: Fixed, const N: usize>(&mut self, out: &mut heapless::Vec<T, N>) {
        out.clear();
        for _ in 0..self.len(N) {
            if out.push(T::read(self)).is_err() {
                self.fail(DecodeError::Malformed);
            }
        }
    }

    /// A bounded list.
    pub fn vec<T: Fixed, const N: usize>(&mut self) -> heapless::Vec<T, N> {
        let mut out = heapless::Vec::new();
        self.vec_into(&mut out);
        out
    }

    /// A bounded UTF-8 string; [`DecodeError::Malformed`] (and an empty
    /// string) for invalid UTF-8.
    pub fn string<const N: usize>(&mut self) -> heapless::String<N> {
        let n = self.len(N);
        let mut out = heapless::String::new();
        if !utf8_into(self.take(n), &mut out) {
            out.clear();
            self.fail(DecodeError::Malformed);
        }
        out
    }

    /// An optional value.
    pub fn opt<T: Fixed>(&mut self) -> Option<T> {
        if self.option() { Some(T::read(self)) } else { None }
    }
}

/// Decodes `bytes` as UTF-8 into `out`, one `char` at a time; false for
/// what `core::str::from_utf8` refuses (a stray or missing continuation
/// byte, an over-long form, a surrogate, a value above U+10FFFF) or when
/// `out` is full: the same verdict as `core::str::from_utf8` (tests hold
/// them against each other), whose code (368 B) and 256-byte width table
/// were in the QEMU firmware; this and `char`'s encoder measured 120 B
/// less in all.
fn utf8_into<const N: usize>(bytes: &[u8], out: &mut heapless::String<N>) -> bool {
    let mut i = 0;
    while let Some(&b0) = bytes.get(i) {
        let (len, min, mut cp) = match b0 {
            0x00..=0x7f => (1, 0, u32::from(b0)),
            0xc0..=0xdf => (2, 0x80, u32::from(b0 & 0x1f)),
            0xe0..=0xef => (3, 0x800, u32::from(b0 & 0x0f)),
            0xf0..=0xf7 => (4, 0x1_0000, u32::from(b0 & 0x07)),
            _ => return false,
        };
        for k in 1..len {
            match bytes.get(i + k) {
                Some(&b) if b & 0xc0 == 0x80 => cp = cp << 6 | u32::from(b & 0x3f),
                _ => return false,
            }
        }
        // `from_u32` refuses surrogates and values above U+10FFFF.
        let Some(c) = char::from_u32(cp).filter(|_| cp >= min) else { return false };
        if out.push(c).is_err() {
            return false;
        }
        i += len;
    }
    true
}

/// Writes canonical encodings into a buffer, or only counts their length
/// (made by [`encode`] and [`encoded_len`] for a [`Fixed::write`]).
///
/// ```
/// use spime::codec::fixed::{self, Fixed, Reader, Writer};
/// use spime::error::DecodeError;
/// struct Pair(u16, Option<u64>);
/// impl Fixed for Pair {
///     fn write(&self, w: &mut Writer<'_>) {
///         w.u64(u64::from(self.0));
///         w.opt(&self.1);
///     }
///     fn read(r: &mut Reader<'_>) -> Self {
///         Pair(r.u16(), r.opt())
///     }
/// }
/// let mut buf = [0u8; 16];
/// assert_eq!(fixed::encode(&Pair(300, Some(1)), &mut buf)?, [0xac, 0x02, 1, 1]);
/// # Ok::<(), DecodeError>(())
/// ```
#[derive(Debug)]
pub struct Writer<'a> {
    /// Where the bytes go; those past its end are only counted.
    out: &'a mut [u8],
    /// Bytes written (or counted) so far.
    len: usize,
}

impl Writer<'_> {
    /// One raw byte.
    pub fn byte(&mut self, b: u8) {
        if let Some(slot) = self.out.get_mut(self.len) {
            *slot = b;
        }
        self.len = self.len.saturating_add(1);
    }

    /// Raw bytes.
    pub fn bytes(&mut self, bytes: &[u8]) {
        let end = self.len.saturating_add(bytes.len());
        if let Some(dst) = self.out.get_mut(self.len..end) {
            dst.copy_from_slice(bytes);
        }
        self.len = end;
    }

    /// A varint.
    pub fn u64(&mut self, mut v: u64) {
        loop {
            let [low, ..] = v.to_le_bytes();
            v >>= 7;
            if v == 0 {
                return self.byte(low & 0x7f);
            }
            self.byte(low | 0x80);
        }
    }

    /// A zigzag varint.
    pub fn i64(&mut self, v: i64) {
        self.u64(((v << 1) ^ (v >> 63)) as u64);
    }

    /// An option's tag, then the value if there is one.
    pub fn opt<T: Fixed>(&mut self, v: &Option<T>) {
        match v {
            None => self.byte(0),
            Some(v) => {
                self.byte(1);
                v.write(self);
            }
        }
    }

    /// A list: its length, then its elements.
    pub fn list<T: Fixed>(&mut self, items: &[T]) {
        self.u64(items.len() as u64);
        for i in items {
            i.write(self);
        }
    }

    /// A string or byte list: its length, then its bytes.
    pub fn byte_list(&mut self, bytes: &[u8]) {
        self.u64(bytes.len() as u64);
        self.bytes(bytes);
    }
}

impl Fixed for u8 {
    fn write(&self, w: &mut Writer<'_>) {
        w.byte(*self)
    }
    fn read(r: &mut Reader<'_>) -> Self {
        r.byte()
    }
}

impl Fixed for u16 {
    fn write(&self, w: &mut Writer<'_>) {
        w.u64(u64::from(*self))
    }
    fn read(r: &mut Reader<'_>) -> Self {
        r.u16()
    }
}

impl Fixed for u32 {
    fn write(&self, w: &mut Writer<'_>) {
        w.u64(u64::from(*self))
    }
    fn read(r: &mut Reader<'_>) -> Self {
        r.u32()
    }
}

impl Fixed for u64 {
    fn write(&self, w: &mut Writer<'_>) {
        w.u64(*self)
    }
    fn read(r: &mut Reader<'_>) -> Self {
        r.u64()
    }
}

impl Fixed for Bytes64 {
    fn write(&self, w: &mut Writer<'_>) {
        w.bytes(&self.0)
    }
    fn read(r: &mut Reader<'_>) -> Self {
        Bytes64(r.array())
    }
}

impl Fixed for Purpose {
    fn write(&self, w: &mut Writer<'_>) {
        w.u64(u64::from(self.id()))
    }
    fn read(r: &mut Reader<'_>) -> Self {
        // Any id parses, as with serde; `validate` refuses the reserved ones.
        Purpose::raw(r.u16())
    }
}

impl Fixed for CategorySet {
    fn write(&self, w: &mut Writer<'_>) {
        w.u64(u64::from(self.bits()))
    }
    fn read(r: &mut Reader<'_>) -> Self {
        let bits = r.u16();
        CategorySet::from_bits(bits).unwrap_or_else(|_| {
            r.fail(DecodeError::Malformed);
            CategorySet::EMPTY
        })
    }
}

impl Fixed for ChannelSet {
    fn write(&self, w: &mut Writer<'_>) {
        w.byte(self.bits())
    }
    fn read(r: &mut Reader<'_>) -> Self {
        let bits = r.byte();
        ChannelSet::from_bits(bits).unwrap_or_else(|_| {
            r.fail(DecodeError::Malformed);
            ChannelSet::EMPTY
        })
    }
}

impl Fixed for DataCategory {
    fn write(&self, w: &mut Writer<'_>) {
        w.byte(*self as u8)
    }
    fn read(r: &mut Reader<'_>) -> Self {
        let i = r.variant(DataCategory::ALL.len());
        DataCategory::ALL.get(i).copied().unwrap_or(DataCategory::DeviceHealth)
    }
}

impl Fixed for Channel {
    fn write(&self, w: &mut Writer<'_>) {
        w.byte(*self as u8)
    }
    fn read(r: &mut Reader<'_>) -> Self {
        let i = r.variant(Channel::ALL.len());
        Channel::ALL.get(i).copied().unwrap_or(Channel::OnDevice)
    }
}

/// Fieldless enums: the variant index, one byte below 128.
macro_rules! unit_enum {
    ($t:ty, [$first:expr $(, $v:expr)* $(,)?]) => {
        impl Fixed for $t {
            fn write(&self, w: &mut Writer<'_>) {
                w.byte(*self as u8)
            }
            fn read(r: &mut Reader<'_>) -> Self {
                const ALL: &[$t] = &[$first $(, $v)*];
                let i = r.variant(ALL.len());
                ALL.get(i).copied().unwrap_or($first)
            }
        }
    };
}

unit_enum!(
    LocationPrecision,
    [
        LocationPrecision::None,
        LocationPrecision::Country,
        LocationPrecision::Region,
        LocationPrecision::City,
        LocationPrecision::Neighbourhood,
        LocationPrecision::Exact,
    ]
);
unit_enum!(Severity, [Severity::Info, Severity::Warning, Severity::Error, Severity::Critical]);
unit_enum!(
    RebootReason,
    [
        RebootReason::None,
        RebootReason::PowerOn,
        RebootReason::Watchdog,
        RebootReason::Brownout,
        RebootReason::Crash,
        RebootReason::Requested,
        RebootReason::Unknown,
    ]
);
unit_enum!(
    DecommissionReason,
    [
        DecommissionReason::Recycled,
        DecommissionReason::Returned,
        DecommissionReason::Broken,
        DecommissionReason::Retired,
    ]
);
unit_enum!(
    NoticeKind,
    [
        NoticeKind::MaintenanceDue,
        NoticeKind::SuppliesOffer,
        NoticeKind::Recall,
        NoticeKind::Instructions,
        NoticeKind::UpdateAvailable,
    ]
);

impl Fixed for Grant {
    fn write(&self, w: &mut Writer<'_>) {
        self.purpose.write(w);
        self.categories.write(w);
        self.location.write(w);
        w.opt(&self.expires_at)
    }
    fn read(r: &mut Reader<'_>) -> Self {
        Grant {
            purpose: Purpose::read(r),
            categories: CategorySet::read(r),
            location: Fixed::read(r),
            expires_at: r.opt(),
        }
    }
}

impl Fixed for ContactGrant {
    fn write(&self, w: &mut Writer<'_>) {
        self.purpose.write(w);
        self.channels.write(w)
    }
    fn read(r: &mut Reader<'_>) -> Self {
        ContactGrant { purpose: Purpose::read(r), channels: ChannelSet::read(r) }
    }
}

impl Fixed for QuietHours {
    fn write(&self, w: &mut Writer<'_>) {
        w.u64(u64::from(self.start_minute));
        w.u64(u64::from(self.end_minute));
        w.i64(i64::from(self.utc_offset_minutes))
    }
    fn read(r: &mut Reader<'_>) -> Self {
        QuietHours { start_minute: r.u16(), end_minute: r.u16(), utc_offset_minutes: r.i16() }
    }
}

impl Fixed for FrequencyCap {
    fn write(&self, w: &mut Writer<'_>) {
        self.purpose.write(w);
        w.u64(u64::from(self.max_notices));
        w.u64(u64::from(self.period_seconds))
    }
    fn read(r: &mut Reader<'_>) -> Self {
        FrequencyCap { purpose: Purpose::read(r), max_notices: r.u16(), period_seconds: r.u32() }
    }
}

impl Fixed for ContactPrefs {
    fn write(&self, w: &mut Writer<'_>) {
        w.list(&self.grants);
        w.opt(&self.quiet_hours);
        w.list(&self.caps);
        w.list(&self.muted_topics)
    }
    fn read(r: &mut Reader<'_>) -> Self {
        let mut out = ContactPrefs::default();
        out.read_into(r);
        out
    }
    fn read_into(&mut self, r: &mut Reader<'_>) {
        r.vec_into(&mut self.grants);
        self.quiet_hours = r.opt();
        r.vec_into(&mut self.caps);
        r.vec_into(&mut self.muted_topics)
    }
}

impl Fixed for ConsentState {
    fn write(&self, w: &mut Writer<'_>) {
        w.u64(u64::from(self.version));
        w.u64(self.issued_at);
        w.u64(self.reconfirm_by);
        w.bytes(&self.notice_hash);
        w.list(&self.grants);
        self.contact.write(w)
    }
    fn read(r: &mut Reader<'_>) -> Self {
        let mut out = ConsentState::essential_only(0, 0, [0; 32]);
        out.read_into(r);
        out
    }
    fn read_into(&mut self, r: &mut Reader<'_>) {
        self.version = r.u32();
        self.issued_at = r.u64();
        self.reconfirm_by = r.u64();
        self.notice_hash = r.array();
        r.vec_into(&mut self.grants);
        self.contact.read_into(r)
    }
}

impl Fixed for OwnerProof {
    fn write(&self, w: &mut Writer<'_>) {
        w.bytes(&self.owner_key);
        self.signature.write(w)
    }
    fn read(r: &mut Reader<'_>) -> Self {
        OwnerProof { owner_key: r.array(), signature: Bytes64::read(r) }
    }
}

impl Fixed for SignedConsent {
    fn write(&self, w: &mut Writer<'_>) {
        self.state.write(w);
        w.opt(&self.owner)
    }
    fn read(r: &mut Reader<'_>) -> Self {
        let mut out = SignedConsent { state: ConsentState::essential_only(0, 0, [0; 32]), owner: None };
        out.read_into(r);
        out
    }
    fn read_into(&mut self, r: &mut Reader<'_>) {
        self.state.read_into(r);
        self.owner = r.opt();
    }
}

impl Fixed for Receipt {
    fn write(&self, w: &mut Writer<'_>) {
        w.u64(u64::from(self.consent_version));
        w.bytes(&self.consent_digest);
        w.u64(self.received_at)
    }
    fn read(r: &mut Reader<'_>) -> Self {
        Receipt { consent_version: r.u32(), consent_digest: r.array(), received_at: r.u64() }
    }
}

impl Fixed for Notice {
    fn write(&self, w: &mut Writer<'_>) {
        w.u64(u64::from(self.id));
        self.purpose.write(w);
        self.channel.write(w);
        w.u64(u64::from(self.topic));
        self.kind.write(w);
        w.u64(self.issued_at);
        w.u64(self.expires_at);
        w.byte_list(self.title.as_bytes());
        w.byte_list(self.text.as_bytes())
    }
    fn read(r: &mut Reader<'_>) -> Self {
        Notice {
            id: r.u32(),
            purpose: Purpose::read(r),
            channel: Channel::read(r),
            topic: r.u16(),
            kind: NoticeKind::read(r),
            issued_at: r.u64(),
            expires_at: r.u64(),
            title: r.string(),
            text: r.string(),
        }
    }
}

impl Fixed for FirmwareVersion {
    fn write(&self, w: &mut Writer<'_>) {
        w.u64(u64::from(self.major));
        w.u64(u64::from(self.minor));
        w.u64(u64::from(self.patch));
        w.u64(u64::from(self.build))
    }
    fn read(r: &mut Reader<'_>) -> Self {
        FirmwareVersion { major: r.u16(), minor: r.u16(), patch: r.u16(), build: r.u32() }
    }
}

impl Fixed for CertificateBody {
    fn write(&self, w: &mut Writer<'_>) {
        w.bytes(&self.device.0);
        w.bytes(&self.device_key);
        w.byte_list(self.model.as_bytes());
        w.u64(u64::from(self.hardware_revision));
        w.u64(self.issued_at);
        w.opt(&self.not_after)
    }
    fn read(r: &mut Reader<'_>) -> Self {
        CertificateBody {
            device: DeviceId(r.array()),
            device_key: r.array(),
            model: r.string(),
            hardware_revision: r.u16(),
            issued_at: r.u64(),
            not_after: r.opt(),
        }
    }
}

impl Fixed for DeviceCertificate {
    fn write(&self, w: &mut Writer<'_>) {
        self.body.write(w);
        self.signature.write(w)
    }
    fn read(r: &mut Reader<'_>) -> Self {
        DeviceCertificate { body: CertificateBody::read(r), signature: Bytes64::read(r) }
    }
}

impl Fixed for Transfer {
    fn write(&self, w: &mut Writer<'_>) {
        w.u64(self.at);
        w.u64(u64::from(self.consent_version));
        w.opt(&self.owner)
    }
    fn read(r: &mut Reader<'_>) -> Self {
        Transfer { at: r.u64(), consent_version: r.u32(), owner: r.opt() }
    }
}

impl Fixed for Register {
    fn write(&self, w: &mut Writer<'_>) {
        write_register(w, &self.certificate, &self.firmware, &self.consent, &self.transfer)
    }
    fn read(r: &mut Reader<'_>) -> Self {
        Register {
            certificate: DeviceCertificate::read(r),
            firmware: FirmwareVersion::read(r),
            consent: SignedConsent::read(r),
            transfer: r.opt(),
        }
    }
}

/// A Register's fields, from wherever they are held (the device seals one
/// from its identity and session without copying them into a body).
pub(crate) fn write_register(
    w: &mut Writer<'_>,
    certificate: &DeviceCertificate,
    firmware: &FirmwareVersion,
    consent: &SignedConsent,
    transfer: &Option<Transfer>,
) {
    certificate.write(w);
    firmware.write(w);
    consent.write(w);
    w.opt(transfer);
}

impl Fixed for ConsentUpdate {
    fn write(&self, w: &mut Writer<'_>) {
        self.consent.write(w)
    }
    fn read(r: &mut Reader<'_>) -> Self {
        ConsentUpdate { consent: SignedConsent::read(r) }
    }
}

impl Fixed for Decommission {
    fn write(&self, w: &mut Writer<'_>) {
        w.u64(self.at);
        self.reason.write(w)
    }
    fn read(r: &mut Reader<'_>) -> Self {
        Decommission { at: r.u64(), reason: DecommissionReason::read(r) }
    }
}

impl Fixed for MetricValue {
    fn write(&self, w: &mut Writer<'_>) {
        match self {
            MetricValue::Counter(c) => {
                w.byte(0);
                w.u64(*c)
            }
            MetricValue::Gauge { min, max, sum, samples } => {
                w.byte(1);
                w.i64(*min);
                w.i64(*max);
                w.i64(*sum);
                w.u64(u64::from(*samples))
            }
            MetricValue::Histogram(h) => {
                w.byte(2);
                w.list(h)
            }
            MetricValue::Location { lat_e7, lon_e7, precision } => {
                w.byte(3);
                w.i64(i64::from(*lat_e7));
                w.i64(i64::from(*lon_e7));
                precision.write(w)
            }
        }
    }
    fn read(r: &mut Reader<'_>) -> Self {
        match r.variant(4) {
            0 => MetricValue::Counter(r.u64()),
            1 => MetricValue::Gauge { min: r.i64(), max: r.i64(), sum: r.i64(), samples: r.u32() },
            2 => MetricValue::Histogram(r.vec()),
            _ => MetricValue::Location { lat_e7: r.i32(), lon_e7: r.i32(), precision: LocationPrecision::read(r) },
        }
    }
}

impl Fixed for Metric {
    fn write(&self, w: &mut Writer<'_>) {
        w.u64(u64::from(self.id));
        self.category.write(w);
        self.value.write(w)
    }
    fn read(r: &mut Reader<'_>) -> Self {
        Metric { id: r.u16(), category: DataCategory::read(r), value: MetricValue::read(r) }
    }
}

impl<const M: usize> Fixed for UsageOf<M> {
    fn write(&self, w: &mut Writer<'_>) {
        self.purpose.write(w);
        w.u64(u64::from(self.consent_version));
        w.u64(self.window_start);
        w.u64(self.window_end);
        w.list(&self.metrics)
    }
    fn read(r: &mut Reader<'_>) -> Self {
        UsageOf {
            purpose: Purpose::read(r),
            consent_version: r.u32(),
            window_start: r.u64(),
            window_end: r.u64(),
            metrics: r.vec(),
        }
    }
}

impl Fixed for Fault {
    fn write(&self, w: &mut Writer<'_>) {
        self.purpose.write(w);
        w.u64(u64::from(self.consent_version));
        w.u64(u64::from(self.code));
        self.severity.write(w);
        w.u64(u64::from(self.component));
        self.firmware.write(w);
        w.u64(u64::from(self.uptime_s));
        self.reboot_reason.write(w);
        w.u64(u64::from(self.occurrences));
        w.u64(self.first_seen);
        w.u64(self.last_seen);
        w.byte_list(&self.context)
    }
    fn read(r: &mut Reader<'_>) -> Self {
        Fault {
            purpose: Purpose::read(r),
            consent_version: r.u32(),
            code: r.u32(),
            severity: Severity::read(r),
            component: r.u16(),
            firmware: FirmwareVersion::read(r),
            uptime_s: r.u32(),
            reboot_reason: RebootReason::read(r),
            occurrences: r.u32(),
            first_seen: r.u64(),
            last_seen: r.u64(),
            context: r.vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    /// Runs one read over all of `bytes`: its value, or the first fault.
    fn one<T>(bytes: &[u8], read: impl FnOnce(&mut Reader<'_>) -> T) -> Result<T, DecodeError> {
        let mut r = Reader::new(bytes);
        let v = read(&mut r);
        r.finish().map(|()| v)
    }

    fn receipt() -> Receipt {
        Receipt { consent_version: 300, consent_digest: [7; 32], received_at: 1_700_000_000 }
    }

    #[test]
    fn varints_are_canonical_and_in_range() {
        let u16_of = |b: &[u8]| one(b, |r| r.u16());
        assert_eq!(u16_of(&[0x00]), Ok(0));
        assert_eq!(u16_of(&[0xac, 0x02]), Ok(300));
        assert_eq!(u16_of(&[0xff, 0xff, 0x03]), Ok(u16::MAX));
        // over-long: 1 in two bytes, 0 in two bytes
        assert_eq!(u16_of(&[0x81, 0x00]), Err(DecodeError::NonCanonical));
        assert_eq!(u16_of(&[0x80, 0x00]), Err(DecodeError::NonCanonical));
        // over the range, and a continuation bit on the last possible byte
        assert_eq!(u16_of(&[0xff, 0xff, 0x04]), Err(DecodeError::Malformed));
        assert_eq!(u16_of(&[0xff, 0xff, 0x83, 0x00]), Err(DecodeError::Malformed));
        // truncated
        assert_eq!(u16_of(&[0x80]), Err(DecodeError::Malformed));
        assert_eq!(u16_of(&[]), Err(DecodeError::Malformed));
        let u64_of = |b: &[u8]| one(b, |r| r.u64());
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(u64_of(&max), Ok(u64::MAX));
        let mut over = max;
        over[9] = 0x02;
        assert_eq!(u64_of(&over), Err(DecodeError::Malformed));
        assert_eq!(one(&[0xff, 0xff, 0xff, 0xff, 0x0f], |r| r.u32()), Ok(u32::MAX));
        assert_eq!(one(&[0xff, 0xff, 0xff, 0xff, 0x10], |r| r.u32()), Err(DecodeError::Malformed));
    }

    #[test]
    fn zigzag_matches_postcard() {
        for v in [0i64, -1, 1, -2, i64::MIN, i64::MAX, -840, 840] {
            let (mut a, mut b) = ([0u8; 10], [0u8; 10]);
            let ours = encode_with(&mut a, |w| w.i64(v)).map(|x| x.to_vec());
            assert_eq!(ours, codec::encode(&v, &mut b).map(|x| x.to_vec()));
            let bytes = ours.unwrap_or_default();
            assert_eq!(one(&bytes, |r| r.i64()), Ok(v));
        }
        let mut buf = [0u8; 4];
        let bytes = codec::encode(&-840i16, &mut buf).map(|x| x.to_vec()).unwrap_or_default();
        assert_eq!(one(&bytes, |r| r.i16()), Ok(-840));
    }

    #[test]
    fn tags_lengths_and_strings_are_checked() {
        assert_eq!(one(&[2], |r| r.option()), Err(DecodeError::Malformed));
        assert_eq!(one(&[4], |r| r.variant(4)), Err(DecodeError::Malformed));
        assert_eq!(one(&[3], |r| r.variant(4)), Ok(3));
        assert_eq!(one(&[3], |r| r.len(2)), Err(DecodeError::Malformed));
        assert_eq!(one(&[2, b'h', b'i'], |r| r.string::<2>()).map(|s| s.len()), Ok(2));
        assert_eq!(one(&[2, 0xc3, 0x28], |r| r.string::<4>()), Err(DecodeError::Malformed));
        assert_eq!(one(&[3, b'h', b'i'], |r| r.string::<4>()), Err(DecodeError::Malformed));
        assert_eq!(one(&[0x80], |r| r.variant(4)), Err(DecodeError::Malformed));
        // a category bit or channel bit that is not defined
        assert_eq!(one(&[0x80, 0x01], CategorySet::read), Err(DecodeError::Malformed));
        assert_eq!(one(&[0x10], ChannelSet::read), Err(DecodeError::Malformed));
        assert_eq!(one(&[7], DataCategory::read), Err(DecodeError::Malformed));
        assert_eq!(one(&[4], Channel::read), Err(DecodeError::Malformed));
    }

    #[test]
    fn decode_checks_length_trailing_bytes_and_rules() {
        let mut buf = [0u8; 64];
        let bytes = encode(&receipt(), &mut buf).map(|b| b.to_vec()).unwrap_or_default();
        assert_eq!(decode::<Receipt>(&bytes), Ok(receipt()));
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode::<Receipt>(&longer), Err(DecodeError::TrailingBytes));
        assert_eq!(decode::<Receipt>(bytes.get(..bytes.len() - 1).unwrap_or_default()), Err(DecodeError::Malformed));
        let huge = [0u8; Receipt::MAX_ENCODED_LEN + 1];
        assert_eq!(
            decode::<Receipt>(&huge),
            Err(DecodeError::Oversized { len: huge.len(), max: Receipt::MAX_ENCODED_LEN })
        );
        // a value that parses but breaks a rule: `validate`'s error, as with serde
        let mut state = ConsentState::essential_only(1, 100, [0; 32]);
        state.reconfirm_by = state.issued_at;
        let mut sb = [0u8; 128];
        let sbytes = encode(&state, &mut sb).map(|b| b.to_vec()).unwrap_or_default();
        let broken = Err(DecodeError::OutOfRange(crate::error::Rule::ReconfirmWindow));
        assert_eq!(decode::<ConsentState>(&sbytes), broken);
        assert_eq!(codec::decode::<ConsentState>(&sbytes), broken);
    }

    #[test]
    fn encode_refuses_a_short_buffer_and_counts_exactly() {
        let mut buf = [0u8; 64];
        let n = encoded_len(&receipt()).unwrap_or(0);
        assert_eq!(encode(&receipt(), &mut buf).map(|b| b.len()), Ok(n));
        let short = buf.get_mut(..n - 1).unwrap_or_default();
        assert_eq!(encode(&receipt(), short), Err(DecodeError::BufferTooSmall { have: n - 1 }));
    }

    /// `utf8_into`'s verdict and value are `core::str::from_utf8`'s.
    fn utf8_agrees(bytes: &[u8]) {
        let mut out = heapless::String::<16>::new();
        let ok = utf8_into(bytes, &mut out);
        match core::str::from_utf8(bytes) {
            Ok(s) => {
                assert!(ok, "{bytes:02x?}");
                assert_eq!(out.as_str(), s);
            }
            Err(_) => assert!(!ok, "{bytes:02x?}"),
        }
    }

    #[test]
    fn utf8_edges_agree_with_core() {
        let cases: &[&[u8]] = &[
            b"",
            b"kettle",
            "é€😀".as_bytes(),
            &[0x80],
            &[0xbf],
            &[0xc0, 0x80],
            &[0xc1, 0xbf],
            &[0xc2, 0x80],
            &[0xdf, 0xbf],
            &[0xe0, 0x80, 0x80],
            &[0xe0, 0x9f, 0xbf],
            &[0xe0, 0xa0, 0x80],
            &[0xed, 0x9f, 0xbf],
            &[0xed, 0xa0, 0x80],
            &[0xed, 0xbf, 0xbf],
            &[0xee, 0x80, 0x80],
            &[0xef, 0xbf, 0xbf],
            &[0xf0, 0x80, 0x80, 0x80],
            &[0xf0, 0x8f, 0xbf, 0xbf],
            &[0xf0, 0x90, 0x80, 0x80],
            &[0xf4, 0x8f, 0xbf, 0xbf],
            &[0xf4, 0x90, 0x80, 0x80],
            &[0xf5, 0x80, 0x80, 0x80],
            &[0xf7, 0xbf, 0xbf, 0xbf],
            &[0xf8, 0x80, 0x80, 0x80, 0x80],
            &[0xfe],
            &[0xff],
            &[0xc2],
            &[0xe2, 0x82],
            &[0xf0, 0x9f, 0x98],
            &[0xc2, 0x41],
            &[0x41, 0xe2, 0x82, 0x41],
        ];
        for c in cases {
            utf8_agrees(c);
        }
        // Full: the string's capacity is refused, not cut.
        let mut out = heapless::String::<2>::new();
        assert!(!utf8_into(b"abc", &mut out));
    }

    proptest::proptest! {
        #[test]
        fn utf8_agrees_with_core_on_any_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..16)) {
            utf8_agrees(&bytes);
        }

        #[test]
        fn utf8_agrees_with_core_on_strings(s in "\\PC{0,4}", cut in 0usize..16) {
            let b = s.as_bytes();
            utf8_agrees(b);
            utf8_agrees(&b[..cut.min(b.len())]);
        }
    }
}
