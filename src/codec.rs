//! Canonical postcard encoding of message bodies.
//!
//! Every body is encoded with [postcard] and decoded as a *total* function:
//! the input length is checked against the type's fixed bound first, then the
//! value is decoded with `take_from_bytes`, leftover bytes are rejected, and
//! finally the value is re-encoded and compared byte for byte with the input
//! (without a buffer, through a comparing postcard flavor). The comparison
//! rejects every non-canonical encoding postcard would otherwise accept
//! (over-long varints, for example), so one value has exactly one encoding.

pub mod fixed;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::DecodeError;

/// A type with a bounded, canonical postcard encoding.
///
/// `MAX_ENCODED_LEN` is the length of the longest valid encoding; firmware
/// uses it to size buffers at compile time. Decoding rejects longer input
/// before looking at it.
pub trait Canonical: Serialize + DeserializeOwned {
    /// The longest valid encoding of any value of this type, in bytes.
    const MAX_ENCODED_LEN: usize;

    /// Checks the rules that the type system does not express (ordering,
    /// ranges, reserved values). Called by [`decode`] after the bytes parsed.
    ///
    /// # Errors
    /// A [`DecodeError`] naming the rule that was broken.
    fn validate(&self) -> Result<(), DecodeError> {
        Ok(())
    }
}

/// Encodes `value` into the front of `out` and returns the used prefix.
///
/// # Errors
/// [`DecodeError::BufferTooSmall`] when `out` cannot hold the encoding.
///
/// ```
/// use spime::codec;
/// use spime::message::FirmwareVersion;
/// let mut buf = [0u8; 16];
/// let fw = FirmwareVersion { major: 1, minor: 2, patch: 3, build: 300 };
/// let bytes = codec::encode(&fw, &mut buf)?;
/// assert_eq!(bytes, [1, 2, 3, 0xac, 0x02]);
/// # Ok::<(), spime::error::DecodeError>(())
/// ```
pub fn encode<'a, T: Serialize + ?Sized>(value: &T, out: &'a mut [u8]) -> Result<&'a mut [u8], DecodeError> {
    let have = out.len();
    postcard::to_slice(value, out).map_err(|_| DecodeError::BufferTooSmall { have })
}

/// The exact length of `value`'s encoding, computed without a buffer.
///
/// # Errors
/// Only if `value`'s `Serialize` implementation itself fails.
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<usize, DecodeError> {
    postcard::serialize_with_flavor(value, Counter(0)).map_err(|_| DecodeError::Malformed)
}

/// Decodes exactly one canonical `T` from all of `bytes`.
///
/// # Errors
/// - [`DecodeError::Oversized`] when `bytes` is longer than `T::MAX_ENCODED_LEN`;
/// - [`DecodeError::Malformed`] when postcard cannot parse it (truncated,
///   bad tag, invalid UTF-8, a sequence over its capacity);
/// - [`DecodeError::TrailingBytes`] when bytes are left over;
/// - [`DecodeError::NonCanonical`] when the bytes are not the one canonical
///   encoding of the decoded value;
/// - whatever [`Canonical::validate`] rejects.
///
/// ```
/// use spime::codec;
/// use spime::error::DecodeError;
/// use spime::message::FirmwareVersion;
/// let fw: FirmwareVersion = codec::decode(&[1, 2, 3, 0xac, 0x02])?;
/// assert_eq!(fw.build, 300);
/// // 1 encoded as a two-byte varint is refused:
/// assert_eq!(codec::decode::<FirmwareVersion>(&[0x81, 0x00, 2, 3, 4]), Err(DecodeError::NonCanonical));
/// // a trailing byte is refused:
/// assert_eq!(codec::decode::<FirmwareVersion>(&[1, 2, 3, 4, 0]), Err(DecodeError::TrailingBytes));
/// # Ok::<(), DecodeError>(())
/// ```
pub fn decode<T: Canonical>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() > T::MAX_ENCODED_LEN {
        return Err(DecodeError::Oversized { len: bytes.len(), max: T::MAX_ENCODED_LEN });
    }
    let (value, rest) = postcard::take_from_bytes::<T>(bytes).map_err(|_| DecodeError::Malformed)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes);
    }
    let same = postcard::serialize_with_flavor(&value, Compare { expected: bytes, pos: 0 })
        .map_err(|_| DecodeError::NonCanonical)?;
    if !same {
        return Err(DecodeError::NonCanonical);
    }
    value.validate()?;
    Ok(value)
}

/// [`decode`] into `place`, without a `T`-sized value moved through the
/// stack: postcard fills `place` field by field (serde's in-place
/// deserialization), then the same length, canonical-form and
/// [`Canonical::validate`] checks as [`decode`] run. For large values
/// decoded on a microcontroller (the device's stored consent state).
///
/// On an error `place` holds an unspecified mix of old and decoded fields:
/// discard it.
///
/// # Errors
/// As [`decode`].
///
/// ```
/// use spime::codec;
/// use spime::message::FirmwareVersion;
/// let mut fw = FirmwareVersion { major: 0, minor: 0, patch: 0, build: 0 };
/// codec::decode_in_place(&[1, 2, 3, 0xac, 0x02], &mut fw)?;
/// assert_eq!(fw.build, 300);
/// assert!(codec::decode_in_place(&[0x81, 0x00, 2, 3, 4], &mut fw).is_err());
/// # Ok::<(), spime::error::DecodeError>(())
/// ```
pub fn decode_in_place<T: Canonical>(bytes: &[u8], place: &mut T) -> Result<(), DecodeError> {
    if bytes.len() > T::MAX_ENCODED_LEN {
        return Err(DecodeError::Oversized { len: bytes.len(), max: T::MAX_ENCODED_LEN });
    }
    let mut de = postcard::Deserializer::from_bytes(bytes);
    T::deserialize_in_place(&mut de, place).map_err(|_| DecodeError::Malformed)?;
    if !de.finalize().map_err(|_| DecodeError::Malformed)?.is_empty() {
        return Err(DecodeError::TrailingBytes);
    }
    let same = postcard::serialize_with_flavor(place, Compare { expected: bytes, pos: 0 })
        .map_err(|_| DecodeError::NonCanonical)?;
    if !same {
        return Err(DecodeError::NonCanonical);
    }
    place.validate()
}

/// A postcard flavor that only counts bytes.
struct Counter(usize);

impl postcard::ser_flavors::Flavor for Counter {
    type Output = usize;
    fn try_push(&mut self, _data: u8) -> postcard::Result<()> {
        self.0 = self.0.saturating_add(1);
        Ok(())
    }
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0 = self.0.saturating_add(data.len());
        Ok(())
    }
    fn finalize(self) -> postcard::Result<usize> {
        Ok(self.0)
    }
}

/// A postcard flavor that compares the encoding with expected bytes as it
/// is produced, and fails at the first difference.
struct Compare<'a> {
    expected: &'a [u8],
    pos: usize,
}

impl postcard::ser_flavors::Flavor for Compare<'_> {
    type Output = bool;
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        match self.expected.get(self.pos) {
            Some(&b) if b == data => {
                self.pos += 1;
                Ok(())
            }
            _ => Err(postcard::Error::SerializeBufferFull),
        }
    }
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        let end = self.pos.saturating_add(data.len());
        match self.expected.get(self.pos..end) {
            Some(slice) if slice == data => {
                self.pos = end;
                Ok(())
            }
            _ => Err(postcard::Error::SerializeBufferFull),
        }
    }
    fn finalize(self) -> postcard::Result<bool> {
        Ok(self.pos == self.expected.len())
    }
}

/// Sixty-four raw bytes (an Ed25519 signature) encoded as a fixed-size
/// tuple: 64 bytes on the wire, no length prefix.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Bytes64(pub [u8; 64]);

impl core::fmt::Debug for Bytes64 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Bytes64(")?;
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

impl Serialize for Bytes64 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        array::serialize(&self.0, serializer)
    }
}

impl<'de> Deserialize<'de> for Bytes64 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        array::deserialize(deserializer).map(Bytes64)
    }
}

/// A byte array `[u8; N]` as a fixed-size tuple of `N` bytes, as serde
/// encodes arrays (postcard: the `N` raw bytes, no length prefix; JSON: a
/// list of `N` numbers), for `#[serde(with = "crate::codec::array")]`.
///
/// The bytes are those of serde's own array encoding. What differs is the
/// code: serde unrolls one element read per position (for `[u8; 32]`
/// about 1 KB of flash per use on a Cortex-M4); this reads them in a loop.
pub mod array {
    use serde::{Deserializer, Serializer};

    /// Serializes `bytes` as a tuple of `N` elements.
    ///
    /// # Errors
    /// Whatever the serializer reports.
    pub fn serialize<S: Serializer, const N: usize>(bytes: &[u8; N], serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = serializer.serialize_tuple(N)?;
        for b in bytes {
            t.serialize_element(b)?;
        }
        t.end()
    }

    /// Deserializes a tuple of exactly `N` bytes.
    ///
    /// # Errors
    /// Fewer than `N` elements, or elements that are not bytes.
    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(deserializer: D) -> Result<[u8; N], D::Error> {
        struct V<const N: usize>;
        impl<'de, const N: usize> serde::de::Visitor<'de> for V<N> {
            type Value = [u8; N];
            fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                write!(f, "{N} bytes")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; N], A::Error> {
                let mut out = [0u8; N];
                for (i, slot) in out.iter_mut().enumerate() {
                    *slot = seq.next_element()?.ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
                }
                Ok(out)
            }
        }
        deserializer.deserialize_tuple(N, V::<N>)
    }
}

/// Upper bound of a postcard varint encoding an unsigned integer of `bits` bits.
pub const fn varint_max(bits: usize) -> usize {
    bits.div_ceil(7)
}

/// Length prefixes read as `u32` varints on every platform (SPEC §5.1).
///
/// postcard reads a sequence or string length as a `usize` varint: at most
/// 5 bytes on a 32-bit microcontroller but 10 on a 64-bit server, so an
/// over-long length prefix was `Malformed` on the device and `NonCanonical`
/// on the vendor. Every bounded list and string of the protocol goes
/// through these `#[serde(with = …)]` helpers instead: for a binary format
/// the length is a `u32` (at most 5 bytes everywhere; for every value the
/// same bytes as postcard's own prefix), followed by the elements as a
/// tuple. Human-readable formats (the JSON of the vectors) see an ordinary
/// list or string.
pub mod length {
    use core::fmt;
    use core::marker::PhantomData;

    use serde::de::{self, SeqAccess, Visitor};
    use serde::ser::{self, SerializeTuple};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// `heapless::Vec<T, N>` with a `u32` length prefix.
    pub mod vec {
        use super::*;

        /// Serializes the length as a `u32`, then the elements.
        ///
        /// # Errors
        /// The serializer's, or a length above `u32::MAX`.
        pub fn serialize<S: Serializer, T: Serialize, const N: usize>(
            v: &heapless::Vec<T, N>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            if s.is_human_readable() {
                return v.serialize(s);
            }
            let len = u32::try_from(v.len()).map_err(ser::Error::custom)?;
            let mut t = s.serialize_tuple(v.len().saturating_add(1))?;
            t.serialize_element(&len)?;
            for e in v {
                t.serialize_element(e)?;
            }
            t.end()
        }

        /// Reads a `u32` length (refusing one above `N`), then the elements.
        ///
        /// # Errors
        /// The deserializer's, or a length above the capacity.
        pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>, const N: usize>(
            d: D,
        ) -> Result<heapless::Vec<T, N>, D::Error> {
            if d.is_human_readable() {
                return heapless::Vec::deserialize(d);
            }
            d.deserialize_tuple(N.saturating_add(1), VecVisitor::<T, N>(PhantomData))
        }

        struct VecVisitor<T, const N: usize>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for VecVisitor<T, N> {
            type Value = heapless::Vec<T, N>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a u32 length of at most {N}, then the elements")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let len: u32 = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let len = usize::try_from(len).map_err(de::Error::custom)?;
                if len > N {
                    return Err(de::Error::invalid_length(len, &self));
                }
                let mut out = heapless::Vec::new();
                for i in 0..len {
                    let e = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(i, &self))?;
                    out.push(e).map_err(|_| de::Error::invalid_length(len, &self))?;
                }
                Ok(out)
            }
        }
    }

    /// `heapless::String<N>` with a `u32` byte-length prefix.
    pub mod string {
        use super::*;

        /// Serializes the byte length as a `u32`, then the bytes.
        ///
        /// # Errors
        /// The serializer's, or a length above `u32::MAX`.
        pub fn serialize<S: Serializer, const N: usize>(v: &heapless::String<N>, s: S) -> Result<S::Ok, S::Error> {
            if s.is_human_readable() {
                return v.serialize(s);
            }
            let len = u32::try_from(v.len()).map_err(ser::Error::custom)?;
            let mut t = s.serialize_tuple(v.len().saturating_add(1))?;
            t.serialize_element(&len)?;
            for b in v.as_bytes() {
                t.serialize_element(b)?;
            }
            t.end()
        }

        /// Reads a `u32` byte length (refusing one above `N`), the bytes,
        /// and checks they are UTF-8.
        ///
        /// # Errors
        /// The deserializer's, a length above the capacity, or invalid UTF-8.
        pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(d: D) -> Result<heapless::String<N>, D::Error> {
            if d.is_human_readable() {
                return heapless::String::deserialize(d);
            }
            let bytes: heapless::Vec<u8, N> = super::vec::deserialize(d)?;
            let s = core::str::from_utf8(&bytes).map_err(de::Error::custom)?;
            let mut out = heapless::String::new();
            out.push_str(s).map_err(|_| de::Error::custom("string over capacity"))?;
            Ok(out)
        }
    }
}
