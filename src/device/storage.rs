//! Persistent storage for the device: a small record store trait, an
//! adapter for `embedded-storage` NOR flash, a NOR flash simulated in RAM
//! (with power-cut injection, for tests and emulators), and the adapter
//! that persists the message counter in a record.
//!
//! A record is a numbered byte string of bounded length. The one promise
//! the device side needs is that replacing a record is *atomic*: after a
//! power cut at any point, reading it gives the old content or the new,
//! never a mix. [`NorStorage`] appends every write to a log kept across a
//! ring of flash sectors, so wear is spread over all of them (SPEC.md
//! §8.6, docs/firmware.md "Endurance").

use embedded_storage::nor_flash::{NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash};

mod nor;
pub use nor::{DEFAULT_MAX_RECORDS, NOR_HEADER_LEN, NorStorage, RECORD_MAGIC, SECTOR_MAGIC};

use crate::error::CounterError;
use crate::seal::counter::CounterStore;

/// Record id of the message counter.
pub const RECORD_COUNTER: u16 = 0;
/// Record id of the session state.
pub const RECORD_SESSION: u16 = 1;
/// Record id of the current consent.
pub const RECORD_CONSENT: u16 = 2;
/// Record id of the first outbox slot; slot `i` is record `RECORD_OUTBOX + i`.
pub const RECORD_OUTBOX: u16 = 8;

/// A storage operation failed.
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The medium reported a failure (or the power was cut mid-operation).
    #[error("storage medium failure")]
    Io,
    /// The record id is outside the store's layout.
    #[error("no record {0} in this layout")]
    NoSuchRecord(u16),
    /// The data is longer than a record may be.
    #[error("record of {len} bytes exceeds the capacity of {max}")]
    TooLarge {
        /// bytes given
        len: usize,
        /// the most a record holds
        max: usize,
    },
    /// The caller's buffer is shorter than the stored record.
    #[error("buffer of {have} bytes is too small for a {needed}-byte record")]
    BufferTooSmall {
        /// bytes needed
        needed: usize,
        /// bytes available
        have: usize,
    },
    /// A stored record is not what its reader expects (wrong length or
    /// values out of range): written by another firmware, or damaged.
    #[error("stored record {0} is invalid")]
    Invalid(u16),
    /// The live records do not fit the flash region (see
    /// [`NorStorage`]); the previous version is still in force.
    #[error("the records do not fit the storage region")]
    Full,
}

impl StorageError {
    /// The numeric code (SPEC.md §10.1, local to the device): 110 Io,
    /// 111 NoSuchRecord, 112 TooLarge, 113 BufferTooSmall, 114 Invalid,
    /// 115 Full. Firmware prints it instead of formatting the error.
    ///
    /// ```
    /// use spime::device::storage::StorageError;
    /// assert_eq!(StorageError::Io.code(), 110);
    /// ```
    pub const fn code(&self) -> u16 {
        match self {
            StorageError::Io => 110,
            StorageError::NoSuchRecord(_) => 111,
            StorageError::TooLarge { .. } => 112,
            StorageError::BufferTooSmall { .. } => 113,
            StorageError::Invalid(_) => 114,
            StorageError::Full => 115,
        }
    }
}

/// Why a [`NorStorage`] cannot be opened on a flash, with the numbers: the
/// error of [`NorStorage::new`]. (A type of its own, not a
/// [`StorageError`] variant, so that every storage result on the device
/// stays small.)
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GeometryError {
    /// The flash's read, write or erase size does not suit the store.
    #[error(
        "flash sizes read {read}, write {write}, erase {erase} do not suit NorStorage: \
         the read and write sizes must divide 32, and the erase size be a non-zero multiple of 32"
    )]
    Sizes {
        /// `NorFlash::READ_SIZE`
        read: usize,
        /// `NorFlash::WRITE_SIZE`
        write: usize,
        /// `NorFlash::ERASE_SIZE`
        erase: usize,
    },
    /// The base address is not at the start of an erase sector.
    #[error("base address {base:#x} is not a multiple of the erase size {erase}: start the store on a sector boundary")]
    Unaligned {
        /// the base address given
        base: u32,
        /// `NorFlash::ERASE_SIZE`
        erase: usize,
    },
    /// A record of `capacity` bytes, with the sector's header and its own,
    /// does not fit one erase sector (or exceeds 65,535 bytes).
    #[error("a record capacity of {capacity} bytes exceeds the most a record holds, {max}: use larger sectors")]
    RecordTooLarge {
        /// the capacity asked for
        capacity: usize,
        /// the most a record holds on this flash
        max: usize,
    },
    /// Fewer than 2 sectors, or more records than the index holds.
    #[error(
        "{sectors} sectors and {records} records: the log needs at least 2 sectors, and indexes at most \
         {max_records} records (the R parameter)"
    )]
    Layout {
        /// sectors asked for
        sectors: u16,
        /// records asked for
        records: u16,
        /// the most records the index holds
        max_records: usize,
    },
    /// The sectors do not fit between the base address and the end of the flash.
    ///
    /// Sizes above `u32::MAX` show as `u32::MAX` (the fields are `u32` to
    /// keep this error, and every result that carries it, small on
    /// firmware).
    #[error(
        "{sectors} sectors of {erase} bytes take {needed} bytes of flash, but only {available} bytes are left \
         after the base address: use a larger flash region or fewer sectors"
    )]
    TooSmall {
        /// sectors asked for
        sectors: u16,
        /// `NorFlash::ERASE_SIZE`
        erase: u32,
        /// bytes the sectors take
        needed: u32,
        /// bytes from the base address to the end of the flash
        available: u32,
    },
    /// The flash failed while the log was read, or while an interrupted
    /// garbage collection was finished (a power cut: open it again).
    #[error("the flash failed while the store was opened")]
    Io,
}

impl GeometryError {
    /// The numeric code (SPEC.md §10.1, local to the device): 116 Sizes,
    /// 117 Unaligned, 118 RecordTooLarge, 119 Layout, 120 TooSmall, 110 Io
    /// (as [`StorageError::Io`]).
    ///
    /// ```
    /// use spime::device::storage::GeometryError;
    /// assert_eq!(GeometryError::Io.code(), 110);
    /// ```
    pub const fn code(&self) -> u16 {
        match self {
            GeometryError::Sizes { .. } => 116,
            GeometryError::Unaligned { .. } => 117,
            GeometryError::RecordTooLarge { .. } => 118,
            GeometryError::Layout { .. } => 119,
            GeometryError::TooSmall { .. } => 120,
            GeometryError::Io => 110,
        }
    }
}

/// A record store whose writes are atomic: after a power cut, a record
/// reads as it was before the write or after it, never a mix.
pub trait Storage {
    /// Reads record `id` into the front of `buf`; `None` when it was never
    /// written or was removed.
    ///
    /// # Errors
    /// [`StorageError::BufferTooSmall`], [`StorageError::NoSuchRecord`],
    /// [`StorageError::Io`].
    fn read<'b>(&mut self, id: u16, buf: &'b mut [u8]) -> Result<Option<&'b [u8]>, StorageError>;

    /// Atomically replaces record `id` with `data`.
    ///
    /// # Errors
    /// [`StorageError::TooLarge`], [`StorageError::NoSuchRecord`],
    /// [`StorageError::Io`] (the old content is then still readable).
    fn write(&mut self, id: u16, data: &[u8]) -> Result<(), StorageError>;

    /// Atomically removes record `id`.
    ///
    /// # Errors
    /// [`StorageError::NoSuchRecord`], [`StorageError::Io`].
    fn remove(&mut self, id: u16) -> Result<(), StorageError>;

    /// How many versions of record `id` newer than the one [`Storage::read`]
    /// returns may have been written and then lost to damage (a CRC that
    /// fails after the write completed, a retention fault); saturates at
    /// 255. A store that cannot tell returns 0, as the default does.
    ///
    /// # Errors
    /// [`StorageError::NoSuchRecord`], [`StorageError::Io`].
    fn lost(&mut self, id: u16) -> Result<u8, StorageError> {
        let _ = id;
        Ok(0)
    }

    /// The most bytes one record holds (`usize::MAX`, the default, for
    /// "no fixed limit"). [`crate::device::session::Device::boot`] checks it
    /// against what the device will write, so a store too small is refused
    /// at boot rather than at the first write that does not fit.
    fn record_capacity(&self) -> usize {
        usize::MAX
    }

    /// How many records the store has: ids `0..record_count()` (`u16::MAX`,
    /// the default, for "no fixed limit"). Checked at boot as
    /// [`Storage::record_capacity`] is.
    fn record_count(&self) -> u16 {
        u16::MAX
    }
}

impl<S: Storage + ?Sized> Storage for &mut S {
    fn read<'b>(&mut self, id: u16, buf: &'b mut [u8]) -> Result<Option<&'b [u8]>, StorageError> {
        (**self).read(id, buf)
    }
    fn write(&mut self, id: u16, data: &[u8]) -> Result<(), StorageError> {
        (**self).write(id, data)
    }
    fn remove(&mut self, id: u16) -> Result<(), StorageError> {
        (**self).remove(id)
    }
    fn lost(&mut self, id: u16) -> Result<u8, StorageError> {
        (**self).lost(id)
    }
    fn record_capacity(&self) -> usize {
        (**self).record_capacity()
    }
    fn record_count(&self) -> u16 {
        (**self).record_count()
    }
}

/// The message counter kept in record [`RECORD_COUNTER`] of a [`Storage`]
/// (8 bytes, u64 big-endian: the first value not yet reserved).
///
/// It owns the storage, so a device keeps one storage object inside its
/// [`crate::seal::counter::Counter`] and reaches it through
/// [`crate::seal::counter::Counter::store_mut`].
///
/// ```
/// use spime::device::storage::{CounterRecord, NorStorage, SimFlash};
/// use spime::seal::counter::Counter;
/// let flash: SimFlash<{ 2 * 4096 }, 4096> = SimFlash::new();
/// let storage = NorStorage::new(flash, 0, 2, 1, 8)?;
/// let mut counter = Counter::open(CounterRecord(storage), 16)?;
/// assert_eq!(counter.next_value()?, 0);
/// let storage = counter.into_store().0;          // power cut
/// let mut counter = Counter::open(CounterRecord(storage), 16)?;
/// assert_eq!(counter.next_value()?, 16);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct CounterRecord<S>(pub S);

impl<S: Storage> CounterStore for CounterRecord<S> {
    fn load(&mut self) -> Result<u64, CounterError> {
        let mut buf = [0u8; 8];
        match self.0.read(RECORD_COUNTER, &mut buf) {
            Ok(None) if self.lost()? > 0 => Err(CounterError::Lost),
            Ok(None) => Ok(0),
            Ok(Some(b)) => <[u8; 8]>::try_from(b).map(u64::from_be_bytes).map_err(|_| CounterError::Lost),
            Err(_) => Err(CounterError::Storage),
        }
    }
    fn store(&mut self, value: u64) -> Result<(), CounterError> {
        self.0.write(RECORD_COUNTER, &value.to_be_bytes()).map_err(|_| CounterError::Storage)
    }
    fn lost(&mut self) -> Result<u64, CounterError> {
        match self.0.lost(RECORD_COUNTER) {
            Ok(u8::MAX) => Err(CounterError::Lost),
            Ok(n) => Ok(u64::from(n)),
            Err(_) => Err(CounterError::Storage),
        }
    }
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), four bits at a
/// time: a 64-byte table in flash, four times faster than bitwise (a boot
/// checks every live record).
pub fn crc32(init: u32, data: &[u8]) -> u32 {
    const NIBBLE: [u32; 16] = [
        0x0000_0000,
        0x1DB7_1064,
        0x3B6E_20C8,
        0x26D9_30AC,
        0x76DC_4190,
        0x6B6B_51F4,
        0x4DB2_6158,
        0x5005_713C,
        0xEDB8_8320,
        0xF00F_9344,
        0xD6D6_A3E8,
        0xCB61_B38C,
        0x9B64_C2B0,
        0x86D3_D2D4,
        0xA00A_E278,
        0xBDBD_F21C,
    ];
    let nib = |c: u32| NIBBLE.get((c & 0xF) as usize).copied().unwrap_or(0) ^ (c >> 4);
    let mut crc = !init;
    for &b in data {
        crc ^= u32::from(b);
        crc = nib(nib(crc));
    }
    !crc
}

/// The error of [`SimFlash`]: out of bounds, misaligned, or a simulated power cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimFlashError {
    /// Address or length outside the flash or not aligned.
    OutOfBounds,
    /// The simulated power was cut: the operation was torn or did not happen.
    PowerCut,
}

impl NorFlashError for SimFlashError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            SimFlashError::OutOfBounds => NorFlashErrorKind::OutOfBounds,
            SimFlashError::PowerCut => NorFlashErrorKind::Other,
        }
    }
}

/// A NOR flash of `SIZE` bytes simulated in RAM: erase sets a sector of
/// `ERASE` bytes to `0xFF`, programming can only clear bits, writes are
/// 4-byte aligned. For tests, and for firmware on an emulator with no
/// flash controller.
///
/// [`SimFlash::cut_after`] arms a power cut: after that many more erase or
/// write operations, the next one is torn halfway (half the bytes change)
/// and that and every later operation fails until [`SimFlash::power_on`].
#[derive(Debug, Clone)]
pub struct SimFlash<const SIZE: usize, const ERASE: usize> {
    mem: [u8; SIZE],
    ops: u32,
    cut_at: Option<u32>,
    dead: bool,
}

impl<const SIZE: usize, const ERASE: usize> Default for SimFlash<SIZE, ERASE> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const SIZE: usize, const ERASE: usize> SimFlash<SIZE, ERASE> {
    /// An erased flash.
    pub const fn new() -> Self {
        SimFlash { mem: [0xFF; SIZE], ops: 0, cut_at: None, dead: false }
    }

    /// A flash whose bytes are all zero (programmed, not erased): it
    /// lands in `.bss` rather than `.data`, so a firmware image does not
    /// carry it. [`NorStorage`] erases before it programs, so it reads as
    /// empty.
    pub const fn zeroed() -> Self {
        SimFlash { mem: [0; SIZE], ops: 0, cut_at: None, dead: false }
    }

    /// Arms a power cut at the `n`-th erase or write from now (0: the next).
    pub fn cut_after(&mut self, n: u32) {
        self.cut_at = Some(self.ops.saturating_add(n));
    }

    /// Restores power (a reboot): operations work again, no cut armed.
    pub fn power_on(&mut self) {
        self.dead = false;
        self.cut_at = None;
    }

    /// Whether the power is cut.
    pub const fn is_cut(&self) -> bool {
        self.dead
    }

    /// Erase and write operations done so far.
    pub const fn operations(&self) -> u32 {
        self.ops
    }

    /// The raw memory.
    pub const fn as_bytes(&self) -> &[u8; SIZE] {
        &self.mem
    }

    /// Simulates a retention fault: `len` bytes from `offset` lose their
    /// charge, programmed bits reading as 1 again (`b | 0xA5`), as aged
    /// or marginally programmed NOR cells do. Out-of-range bytes are ignored.
    pub fn decay(&mut self, offset: u32, len: u32) {
        let start = offset as usize;
        for b in self.mem.iter_mut().skip(start).take(len as usize) {
            *b |= 0xA5;
        }
    }

    /// Counts an operation; `Some(cut)` when it may proceed, `cut` telling
    /// whether it is the torn one.
    fn op(&mut self) -> Result<bool, SimFlashError> {
        if self.dead {
            return Err(SimFlashError::PowerCut);
        }
        let torn = self.cut_at == Some(self.ops);
        self.ops = self.ops.saturating_add(1);
        if torn {
            self.dead = true;
        }
        Ok(torn)
    }

    fn range(&self, offset: u32, len: usize) -> Result<core::ops::Range<usize>, SimFlashError> {
        let start = offset as usize;
        let end = start.checked_add(len).ok_or(SimFlashError::OutOfBounds)?;
        if end > SIZE { Err(SimFlashError::OutOfBounds) } else { Ok(start..end) }
    }
}

impl<const SIZE: usize, const ERASE: usize> embedded_storage::nor_flash::ErrorType for SimFlash<SIZE, ERASE> {
    type Error = SimFlashError;
}

impl<const SIZE: usize, const ERASE: usize> ReadNorFlash for SimFlash<SIZE, ERASE> {
    const READ_SIZE: usize = 1;
    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), SimFlashError> {
        let r = self.range(offset, bytes.len())?;
        bytes.copy_from_slice(self.mem.get(r).ok_or(SimFlashError::OutOfBounds)?);
        Ok(())
    }
    fn capacity(&self) -> usize {
        SIZE
    }
}

impl<const SIZE: usize, const ERASE: usize> NorFlash for SimFlash<SIZE, ERASE> {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = ERASE;
    fn erase(&mut self, from: u32, to: u32) -> Result<(), SimFlashError> {
        if from > to || ERASE == 0 || !(from as usize).is_multiple_of(ERASE) || !(to as usize).is_multiple_of(ERASE) {
            return Err(SimFlashError::OutOfBounds);
        }
        let r = self.range(from, (to - from) as usize)?;
        let torn = self.op()?;
        let mem = self.mem.get_mut(r).ok_or(SimFlashError::OutOfBounds)?;
        if torn {
            let half = mem.len() / 2;
            mem.iter_mut().take(half).for_each(|b| *b = 0xFF);
            return Err(SimFlashError::PowerCut);
        }
        mem.fill(0xFF);
        Ok(())
    }
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), SimFlashError> {
        if !offset.is_multiple_of(4) || !bytes.len().is_multiple_of(4) {
            return Err(SimFlashError::OutOfBounds);
        }
        let r = self.range(offset, bytes.len())?;
        let torn = self.op()?;
        let mem = self.mem.get_mut(r).ok_or(SimFlashError::OutOfBounds)?;
        let n = if torn { bytes.len() / 2 } else { bytes.len() };
        for (m, b) in mem.iter_mut().zip(bytes).take(n) {
            *m &= *b;
        }
        if torn { Err(SimFlashError::PowerCut) } else { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic, clippy::cast_possible_truncation)]
    use super::*;
    use std::collections::BTreeMap;
    use std::vec::Vec;

    /// Four sectors of 1 KiB.
    type Flash = SimFlash<4096, 1024>;
    type Nor = NorStorage<Flash>;

    fn nor(flash: Flash) -> Nor {
        NorStorage::new(flash, 0, 4, 6, 200).unwrap()
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(0, b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(crc32(0, b"1234"), b"56789"), 0xCBF4_3926);
    }

    #[test]
    fn write_read_remove() {
        let mut s = nor(Flash::new());
        let mut buf = [0u8; 200];
        assert_eq!(s.read(1, &mut buf).unwrap(), None);
        s.write(1, b"hello").unwrap();
        assert_eq!(s.read(1, &mut buf).unwrap(), Some(&b"hello"[..]));
        s.write(1, b"world!").unwrap();
        assert_eq!(s.read(1, &mut buf).unwrap(), Some(&b"world!"[..]));
        s.write(1, &[]).unwrap();
        assert_eq!(s.read(1, &mut buf).unwrap(), Some(&[][..]));
        s.remove(1).unwrap();
        assert_eq!(s.read(1, &mut buf).unwrap(), None);
        s.remove(1).unwrap();
        assert_eq!(s.read(0, &mut buf).unwrap(), None);
        assert_eq!(s.lost(1), Ok(0));
        let mut s = nor(s.into_inner());
        assert_eq!(s.read(1, &mut buf).unwrap(), None);
    }

    #[test]
    fn rejections() {
        let e = NorStorage::new(Flash::new(), 10, 2, 4, 10).unwrap_err();
        assert_eq!(e, GeometryError::Unaligned { base: 10, erase: 1024 });
        assert_eq!(
            e.to_string(),
            "base address 0xa is not a multiple of the erase size 1024: start the store on a sector boundary"
        );
        let e = NorStorage::new(Flash::new(), 0, 1, 4, 10).unwrap_err();
        assert_eq!(e, GeometryError::Layout { sectors: 1, records: 4, max_records: 16 });
        assert!(e.to_string().contains("at least 2 sectors"), "{e}");
        assert_eq!(
            NorStorage::new(Flash::new(), 0, 2, 17, 10).unwrap_err(),
            GeometryError::Layout { sectors: 2, records: 17, max_records: 16 }
        );
        let e = NorStorage::new(Flash::new(), 0, 5, 4, 10).unwrap_err();
        assert_eq!(e, GeometryError::TooSmall { sectors: 5, erase: 1024, needed: 5120, available: 4096 });
        assert!(e.to_string().contains("5 sectors of 1024 bytes take 5120 bytes"), "{e}");
        let e = NorStorage::new(Flash::new(), 0, 2, 4, 1024 - 31).unwrap_err();
        assert_eq!(e, GeometryError::RecordTooLarge { capacity: 993, max: 992 });
        assert_eq!(
            NorStorage::new(Flash::new(), 0, 2, 4, 70_000).unwrap_err(),
            GeometryError::RecordTooLarge { capacity: 70_000, max: 992 }
        );
        assert!(NorStorage::new(Flash::new(), 0, 2, 4, 1024 - 32).is_ok());
        let mut s = nor(Flash::new());
        assert_eq!(s.record_capacity(), 200);
        assert_eq!(s.record_count(), 6);
        assert_eq!(s.write(6, b"x"), Err(StorageError::NoSuchRecord(6)));
        assert_eq!(s.remove(6), Err(StorageError::NoSuchRecord(6)));
        assert_eq!(s.lost(6), Err(StorageError::NoSuchRecord(6)));
        assert_eq!(s.write(0, &[0; 201]), Err(StorageError::TooLarge { len: 201, max: 200 }));
        s.write(0, &[1; 50]).unwrap();
        assert_eq!(s.read(0, &mut [0; 10]), Err(StorageError::BufferTooSmall { needed: 50, have: 10 }));
        assert_eq!(s.read(6, &mut [0; 10]), Err(StorageError::NoSuchRecord(6)));
    }

    #[test]
    fn layout_is_pinned() {
        let mut s = nor(Flash::new());
        s.write(2, b"ab").unwrap();
        let m = s.flash().as_bytes();
        // sector 0: "SPL1", sequence 1, zero, CRC
        assert_eq!(m[..12], [b'S', b'P', b'L', b'1', 0, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(m[12..16], crc32(0, &m[..12]).to_be_bytes());
        // record: "SR", id 2, length 2, flags 0, lost 0, data CRC, header CRC over address and bytes 0..12
        let data_crc = crc32(0, b"ab").to_be_bytes();
        assert_eq!(m[16..24], [b'S', b'R', 0, 2, 0, 2, 0, 0]);
        assert_eq!(m[24..28], data_crc);
        assert_eq!(m[28..32], crc32(crc32(0, &16u32.to_be_bytes()), &m[16..28]).to_be_bytes());
        assert_eq!(m[32..36], [b'a', b'b', 0xFF, 0xFF]);
        // the next record follows, padded to 4 bytes; the next sector stays erased
        s.remove(2).unwrap();
        let m = s.flash().as_bytes();
        assert_eq!(m[36..44], [b'S', b'R', 0, 2, 0, 0, 1, 0]);
        assert!(m[1024..].iter().all(|&b| b == 0xFF));
    }

    /// Sectors are used in turn: erases differ by at most one between sectors.
    #[test]
    fn wear_is_even() {
        let mut s = nor(Flash::new());
        s.write(5, &[9; 150]).unwrap();
        for i in 0..2_000u32 {
            s.write((i % 3) as u16, &i.to_be_bytes().repeat(1 + (i % 7) as usize)).unwrap();
        }
        let mut buf = [0u8; 200];
        assert_eq!(s.read(5, &mut buf).unwrap(), Some(&[9u8; 150][..]));
        // count erases through the sector sequence numbers: each opening is one erase
        let seqs: Vec<u32> =
            (0..4).map(|i| be(&s.flash().as_bytes()[i * 1024 + 4..])).filter(|&q| q != u32::MAX).collect();
        assert_eq!(seqs.len(), 3, "one sector is kept erased");
        let max = *seqs.iter().max().unwrap();
        let min = *seqs.iter().min().unwrap();
        assert!(max > 40, "the ring turned: {seqs:?}");
        // the others were opened in turn: consecutive sequence numbers
        assert_eq!(max - min, 2, "uneven wear: {seqs:?}");
    }

    fn be(b: &[u8]) -> u32 {
        u32::from_be_bytes(b[..4].try_into().unwrap())
    }

    /// The model: what each record must read as.
    type Model = BTreeMap<u16, Vec<u8>>;

    fn check(s: &mut Nor, model: &Model, pending: Option<(u16, &Option<Vec<u8>>)>) {
        let mut buf = [0u8; 200];
        for id in 0..6u16 {
            let got = s.read(id, &mut buf).unwrap().map(<[u8]>::to_vec);
            let old = model.get(&id).cloned();
            match pending {
                Some((p, new)) if p == id => assert!(got == old || got == *new, "record {id}: {got:?}"),
                _ => assert_eq!(got, old, "record {id}"),
            }
        }
    }

    fn value(step: u32) -> Option<Vec<u8>> {
        match step % 11 {
            10 => None,
            n => Some(step.to_be_bytes().repeat(1 + (n as usize * 5) % 40)),
        }
    }

    /// A cut at every erase/program position of a workload that turns the
    /// ring twice: after each cut and reboot every record reads as before
    /// the write that was cut or after it, and the workload goes on.
    #[test]
    fn power_cut_at_every_operation_is_atomic() {
        let steps = 240u32;
        let mut total_ops = 0;
        {
            let mut s = nor(Flash::new());
            for step in 0..steps {
                let id = (step % 5) as u16;
                match value(step) {
                    Some(v) => s.write(id, &v).unwrap(),
                    None => s.remove(id).unwrap(),
                }
            }
            total_ops = total_ops.max(s.flash().operations());
            // the ring turned twice: every sector was collected and erased
            let seqs = (0..4).map(|i| be(&s.flash().as_bytes()[i * 1024 + 4..])).filter(|&q| q != u32::MAX);
            assert!(seqs.max().unwrap() >= 8);
        }
        assert!(total_ops > 100);
        for cut in 0..total_ops {
            let mut flash = Flash::zeroed();
            flash.cut_after(cut);
            let mut s = NorStorage::new(flash, 0, 4, 6, 200).unwrap();
            let mut model = Model::new();
            for step in 0..steps {
                let id = (step % 5) as u16;
                let v = value(step);
                let r = match &v {
                    Some(v) => s.write(id, v),
                    None => s.remove(id),
                };
                if r.is_err() {
                    let mut flash = s.into_inner();
                    assert!(flash.is_cut(), "cut {cut}: {r:?} without a cut");
                    flash.power_on();
                    s = nor(flash);
                    check(&mut s, &model, Some((id, &v)));
                    // settle the model on what survived, then carry on
                    let mut buf = [0u8; 200];
                    match s.read(id, &mut buf).unwrap() {
                        Some(b) => model.insert(id, b.to_vec()),
                        None => model.remove(&id),
                    };
                    continue;
                }
                match v {
                    Some(v) => model.insert(id, v),
                    None => model.remove(&id),
                };
            }
            let flash = s.into_inner();
            let mut s = nor(flash);
            check(&mut s, &model, None);
        }
    }

    /// A cut during a reboot's repair is repaired at the next boot.
    #[test]
    fn power_cut_during_repair() {
        for first in 0..60u32 {
            for second in 0..4u32 {
                let mut s = nor(Flash::new());
                for step in 0..first {
                    s.write((step % 5) as u16, &value(step).unwrap_or_default()).unwrap();
                }
                let mut flash = s.into_inner();
                let mut model = Model::new();
                {
                    let mut s = nor(flash.clone());
                    let mut buf = [0u8; 200];
                    for id in 0..6 {
                        if let Some(b) = s.read(id, &mut buf).unwrap() {
                            model.insert(id, b.to_vec());
                        }
                    }
                }
                // cut the next write somewhere in its garbage collection, then cut the repair
                flash.cut_after(first % 7);
                let mut s = nor(flash);
                let _ = s.write(1, &[7; 180]);
                let mut flash = s.into_inner();
                flash.power_on();
                flash.cut_after(second);
                let _ = NorStorage::new(&mut flash, 0, 4, 6, 200);
                flash.power_on();
                let mut s = nor(flash);
                check(&mut s, &model, Some((1, &Some(vec![7; 180]))));
            }
        }
    }

    /// A damaged newest version: the older one is read and counted as possibly
    /// one version behind; garbage collection keeps that count.
    #[test]
    fn damage_is_counted_and_carried() {
        let mut s = nor(Flash::new());
        s.write(0, b"old-value").unwrap();
        s.write(0, b"new-value").unwrap();
        let mut flash = s.into_inner();
        // the second record's data is at 16 (sector) + 28 (first record) + 16 (header)
        flash.decay(16 + 28 + 16, 4);
        let mut s = nor(flash);
        let mut buf = [0u8; 200];
        assert_eq!(s.read(0, &mut buf).unwrap(), Some(&b"old-value"[..]));
        assert_eq!(s.lost(0), Ok(1));
        assert_eq!(s.lost(1), Ok(0));
        // turn the ring: the old value is copied with its count
        for i in 0..40u32 {
            s.write(1, &i.to_be_bytes().repeat(40)).unwrap();
        }
        let mut s = nor(s.into_inner());
        assert_eq!(s.read(0, &mut buf).unwrap(), Some(&b"old-value"[..]));
        assert_eq!(s.lost(0), Ok(1));
        s.write(0, b"newest").unwrap();
        assert_eq!(s.lost(0), Ok(0));
        let mut s = nor(s.into_inner());
        assert_eq!(s.lost(0), Ok(0));
        // a damaged header counts against every record written before it
        s.write(2, b"x").unwrap();
        let head = s.flash().as_bytes().chunks(4).rposition(|c| c != [0xFF; 4]).unwrap() * 4;
        let mut flash = s.into_inner();
        flash.decay((head - 16) as u32 & !3, 4);
        let mut s = nor(flash);
        assert!(s.lost(0).unwrap() >= 1);
        assert!(s.lost(2).unwrap() == 0 || s.read(2, &mut buf).unwrap().is_none());
    }

    #[test]
    fn full_is_refused_and_keeps_the_old_value() {
        let mut s = NorStorage::new(SimFlash::<2048, 1024>::new(), 0, 2, 6, 400).unwrap();
        s.write(0, &[1; 400]).unwrap();
        s.write(1, &[2; 400]).unwrap();
        assert_eq!(s.write(2, &[3; 400]), Err(StorageError::Full));
        let mut buf = [0u8; 400];
        assert_eq!(s.read(0, &mut buf).unwrap(), Some(&[1u8; 400][..]));
        assert_eq!(s.read(2, &mut buf).unwrap(), None);
    }

    #[test]
    fn counter_record_round_trip() {
        let s = nor(Flash::new());
        let mut c = CounterRecord(s);
        assert_eq!(c.load(), Ok(0));
        c.store(0x0102_0304_0506_0708).unwrap();
        assert_eq!(c.load(), Ok(0x0102_0304_0506_0708));
        assert_eq!(c.lost(), Ok(0));
        c.0.write(RECORD_COUNTER, &[1, 2, 3]).unwrap();
        assert_eq!(c.load(), Err(CounterError::Lost));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Four sectors of 512 bytes: collection runs every few writes, and
        /// four records of up to 100 bytes always fit.
        type Small = SimFlash<2048, 512>;

        #[derive(Debug, Clone)]
        enum Op {
            Write(u16, u8, usize),
            Remove(u16),
            Reboot,
            /// Cut the power at the n-th erase/program from now, then reboot.
            Cut(u32),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                8 => (0u16..4, any::<u8>(), 0usize..=100).prop_map(|(i, b, n)| Op::Write(i, b, n)),
                1 => (0u16..4).prop_map(Op::Remove),
                1 => Just(Op::Reboot),
                2 => (0u32..12).prop_map(Op::Cut),
            ]
        }

        fn open(f: Small) -> NorStorage<Small> {
            NorStorage::new(f, 0, 4, 4, 100).unwrap()
        }

        proptest! {
            /// Any sequence of writes, removals, reboots and power cuts: every
            /// record reads as its last completed write, or, for the one write
            /// a cut interrupted, as before or after it; nothing is ever lost.
            #[test]
            fn log_matches_model_through_cuts(ops in proptest::collection::vec(op(), 1..120)) {
                let mut s = open(Small::new());
                let mut model: BTreeMap<u16, Vec<u8>> = BTreeMap::new();
                let mut armed = false;
                for op in ops {
                    match op {
                        Op::Write(id, b, n) => {
                            let v = vec![b; n];
                            match s.write(id, &v) {
                                Ok(()) => { model.insert(id, v); }
                                Err(_) => {
                                    prop_assert!(armed && s.flash().is_cut());
                                    let mut f = s.into_inner();
                                    f.power_on();
                                    armed = false;
                                    s = open(f);
                                    let mut buf = [0u8; 100];
                                    let got = s.read(id, &mut buf).unwrap().map(<[u8]>::to_vec);
                                    prop_assert!(got == model.get(&id).cloned() || got.as_deref() == Some(&v[..]));
                                    match got { Some(g) => model.insert(id, g), None => model.remove(&id) };
                                }
                            }
                        }
                        Op::Remove(id) => match s.remove(id) {
                            Ok(()) => { model.remove(&id); }
                            Err(_) => {
                                prop_assert!(armed && s.flash().is_cut());
                                let mut f = s.into_inner();
                                f.power_on();
                                armed = false;
                                s = open(f);
                                let mut buf = [0u8; 100];
                                let got = s.read(id, &mut buf).unwrap().map(<[u8]>::to_vec);
                                prop_assert!(got.is_none() || got == model.get(&id).cloned());
                                match got { Some(g) => model.insert(id, g), None => model.remove(&id) };
                            }
                        },
                        Op::Reboot => {
                            let mut f = s.into_inner();
                            f.power_on();
                            armed = false;
                            s = open(f);
                        }
                        Op::Cut(n) => {
                            let mut f = s.into_inner();
                            f.power_on();
                            f.cut_after(n);
                            armed = true;
                            // the boot itself may be cut (it may finish a collection)
                            match NorStorage::new(f.clone(), 0, 4, 4, 100) {
                                Ok(x) => s = x,
                                Err(_) => {
                                    let _ = NorStorage::new(&mut f, 0, 4, 4, 100);
                                    f.power_on();
                                    armed = false;
                                    s = open(f);
                                }
                            }
                        }
                    }
                    let mut buf = [0u8; 100];
                    for id in 0..4u16 {
                        let got = s.read(id, &mut buf).unwrap().map(<[u8]>::to_vec);
                        prop_assert_eq!(got, model.get(&id).cloned(), "record {}", id);
                    }
                }
            }

            /// A log with arbitrary bytes overwritten (damage of any kind):
            /// starting, reading and writing never panic, and a write that
            /// succeeds reads back.
            #[test]
            fn damaged_log_never_panics(
                writes in proptest::collection::vec((0u16..4, 0usize..=100), 1..40),
                damage in proptest::collection::vec((0usize..2048, any::<u8>()), 1..12),
            ) {
                let mut s = open(Small::new());
                for (i, (id, n)) in writes.iter().enumerate() {
                    s.write(*id, &vec![i as u8; *n]).unwrap();
                }
                let mut f = s.into_inner();
                for (at, b) in damage {
                    f.mem[at] = b;
                }
                if let Ok(mut s) = NorStorage::new(f, 0, 4, 4, 100) {
                    let mut buf = [0u8; 100];
                    for id in 0..4 {
                        let _ = s.read(id, &mut buf);
                        let _ = s.lost(id);
                    }
                    for round in 0..6u8 {
                        if s.write(u16::from(round % 4), &[round; 70]).is_ok() {
                            prop_assert_eq!(s.read(u16::from(round % 4), &mut buf).unwrap(), Some(&[round; 70][..]));
                        }
                    }
                }
            }

            /// Whatever the flash holds, starting, reading and writing never
            /// panic, and a write that succeeds reads back.
            #[test]
            fn any_flash_content_never_panics(bytes in proptest::collection::vec(any::<u8>(), 2048), seed in any::<u8>()) {
                let mut f = Small::new();
                let mut i = 0;
                while i < 2048 {
                    f.write(i, &bytes[i as usize..i as usize + 4]).unwrap();
                    i += 4;
                }
                if let Ok(mut s) = NorStorage::new(f, 0, 4, 4, 100) {
                    let mut buf = [0u8; 100];
                    for id in 0..4 {
                        let _ = s.read(id, &mut buf);
                        let _ = s.lost(id);
                    }
                    if s.write(1, &[seed; 50]).is_ok() {
                        prop_assert_eq!(s.read(1, &mut buf).unwrap(), Some(&[seed; 50][..]));
                    }
                }
            }
        }
    }
}
