//! Persistent storage for the device: a small record store trait, an
//! adapter for `embedded-storage` NOR flash, a NOR flash simulated in RAM
//! (with power-cut injection, for tests and emulators), and the adapter
//! that persists the message counter in a record.
//!
//! A record is a numbered byte string of bounded length. The one promise
//! the device side needs is that replacing a record is *atomic*: after a
//! power cut at any point, reading it gives the old content or the new,
//! never a mix. [`NorStorage`] keeps two copies of every record and
//! writes the one not holding the current content (SPEC.md §8).

use embedded_storage::nor_flash::{NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash};

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
}

/// Why a flash cannot hold a [`NorStorage`] layout, with the numbers: the
/// error of [`NorStorage::new`]. (A type of its own, not a
/// [`StorageError`] variant, so that every storage result on the device
/// stays small.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GeometryError {
    /// The flash's read, write or erase size does not suit the store.
    #[error(
        "flash sizes read {read}, write {write}, erase {erase} do not suit NorStorage: \
         the read size must divide 16, the write size 32, and the erase size must not be 0"
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
    /// A record may hold at most 65,535 bytes (its length is a `u16`).
    #[error("a record capacity of {capacity} bytes exceeds the most a record holds, {max}")]
    RecordTooLarge {
        /// the capacity asked for
        capacity: usize,
        /// the most a record holds
        max: usize,
    },
    /// The records do not fit between the base address and the end of the flash.
    ///
    /// Sizes above `u32::MAX` show as `u32::MAX` (the fields are `u32` to
    /// keep this error, and every result that carries it, small on
    /// firmware).
    #[error(
        "{records} records of {capacity} bytes take {needed} bytes of flash (2 copies each of {copy} bytes: \
         header and data rounded up to the erase size), but only {available} bytes are left after the base \
         address: use a larger flash region, fewer records or smaller records"
    )]
    TooSmall {
        /// records asked for
        records: u16,
        /// record capacity asked for (at most 65,535, checked before)
        capacity: u16,
        /// bytes one copy of a record takes
        copy: u32,
        /// bytes the layout takes
        needed: u32,
        /// bytes from the base address to the end of the flash
        available: u32,
    },
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
/// let flash: SimFlash<4096, 256> = SimFlash::new();
/// let storage = NorStorage::new(flash, 0, 4, 64)?;
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
            Ok(None) => Ok(0),
            Ok(Some(b)) => <[u8; 8]>::try_from(b).map(u64::from_be_bytes).map_err(|_| CounterError::Storage),
            Err(_) => Err(CounterError::Storage),
        }
    }
    fn store(&mut self, value: u64) -> Result<(), CounterError> {
        self.0.write(RECORD_COUNTER, &value.to_be_bytes()).map_err(|_| CounterError::Storage)
    }
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), bitwise: no table in flash.
pub fn crc32(init: u32, data: &[u8]) -> u32 {
    let mut crc = !init;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// Magic of a record copy in NOR flash: `"SPR1"`.
pub const NOR_MAGIC: [u8; 4] = *b"SPR1";
/// Length of a record copy's header in NOR flash.
pub const NOR_HEADER_LEN: usize = 16;
const STAGE: usize = 32;
const STAGE_U32: u32 = 32;
const HEADER_LEN_U32: u32 = 16;
const FLAG_REMOVED: u16 = 0x0001;

/// A [`Storage`] on `embedded-storage` NOR flash.
///
/// Record `r` owns two *copies*, each `copy_size` bytes (the record
/// capacity plus a 16-byte header, rounded up to the erase size), at
/// `base + (2r + c) * copy_size`. A copy is
///
/// ```text
/// 0   4  magic "SPR1"
/// 4   4  sequence  u32 BE, one more than the other copy's when written
/// 8   2  length    u16 BE, bytes of data
/// 10  2  flags     u16 BE, bit 0: removed (length 0); other bits 0
/// 12  4  CRC-32 (IEEE) of bytes 0..12 and the data
/// 16  n  data
/// ```
///
/// A read takes the valid copy (magic, length, CRC) with the higher
/// sequence. A write erases the *other* copy and programs it; a cut during
/// the erase or the program leaves that copy invalid and the old one in
/// force. `READ_SIZE` must divide 16 and `WRITE_SIZE` 32.
#[derive(Debug)]
pub struct NorStorage<F> {
    flash: F,
    base: u32,
    records: u16,
    copy_size: u32,
    capacity: usize,
}

/// One copy's decoded header.
#[derive(Debug, Clone, Copy)]
struct CopyHeader {
    seq: u32,
    len: usize,
    removed: bool,
}

impl<F: NorFlash> NorStorage<F> {
    /// Lays out `records` records of at most `capacity` bytes from `base`.
    ///
    /// # Errors
    /// [`GeometryError::Unaligned`] when `base` is not erase-aligned,
    /// [`GeometryError::Sizes`] when the read size does not divide 16 or the
    /// write size 32, [`GeometryError::RecordTooLarge`] when `capacity`
    /// exceeds 65,535, [`GeometryError::TooSmall`] when the layout exceeds
    /// the flash; each with the numbers.
    pub fn new(flash: F, base: u32, records: u16, capacity: usize) -> Result<NorStorage<F>, GeometryError> {
        let erase = F::ERASE_SIZE;
        let (read, write) = (F::READ_SIZE, F::WRITE_SIZE);
        if erase == 0 || write == 0 || read == 0 || !STAGE.is_multiple_of(write) || !NOR_HEADER_LEN.is_multiple_of(read)
        {
            return Err(GeometryError::Sizes { read, write, erase });
        }
        if !(base as usize).is_multiple_of(erase) {
            return Err(GeometryError::Unaligned { base, erase });
        }
        let max = usize::from(u16::MAX);
        if capacity > max {
            return Err(GeometryError::RecordTooLarge { capacity, max });
        }
        let copy = (NOR_HEADER_LEN + capacity).div_ceil(erase) * erase;
        let needed = copy.saturating_mul(2 * usize::from(records));
        let available = flash.capacity().saturating_sub(base as usize);
        let copy_size = u32::try_from(copy).ok().filter(|_| needed <= available && needed < u32::MAX as usize);
        let Some(copy_size) = copy_size else {
            let u32_of = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
            return Err(GeometryError::TooSmall {
                records,
                capacity: u16::try_from(capacity).unwrap_or(u16::MAX),
                copy: u32_of(copy),
                needed: u32_of(needed),
                available: u32_of(available),
            });
        };
        Ok(NorStorage { flash, base, records, copy_size, capacity })
    }

    /// The flash, given back.
    pub fn into_inner(self) -> F {
        self.flash
    }

    /// The flash.
    pub const fn flash(&self) -> &F {
        &self.flash
    }

    /// The most bytes one record holds.
    pub const fn capacity(&self) -> usize {
        self.capacity
    }

    fn copy_addr(&self, id: u16, copy: u32) -> Result<u32, StorageError> {
        if id >= self.records {
            return Err(StorageError::NoSuchRecord(id));
        }
        Ok(self.base + (u32::from(id) * 2 + copy) * self.copy_size)
    }

    /// Reads `out.len()` bytes at `addr` through an aligned staging buffer.
    fn read_at(&mut self, addr: u32, out: &mut [u8]) -> Result<(), StorageError> {
        let mut stage = [0u8; STAGE];
        for (i, piece) in out.chunks_mut(STAGE).enumerate() {
            let a = addr + u32::try_from(i * STAGE).map_err(|_| StorageError::Io)?;
            let n = piece.len().div_ceil(F::READ_SIZE) * F::READ_SIZE;
            let s = stage.get_mut(..n).ok_or(StorageError::Io)?;
            self.flash.read(a, s).map_err(|_| StorageError::Io)?;
            piece.copy_from_slice(s.get(..piece.len()).ok_or(StorageError::Io)?);
        }
        Ok(())
    }

    fn header(&mut self, id: u16, copy: u32) -> Result<Option<(CopyHeader, [u8; NOR_HEADER_LEN])>, StorageError> {
        let addr = self.copy_addr(id, copy)?;
        let mut h = [0u8; NOR_HEADER_LEN];
        self.read_at(addr, &mut h)?;
        let [m0, m1, m2, m3, s0, s1, s2, s3, l0, l1, f0, f1, ..] = h;
        if [m0, m1, m2, m3] != NOR_MAGIC {
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        let flags = u16::from_be_bytes([f0, f1]);
        if len > self.capacity || flags & !FLAG_REMOVED != 0 || (flags & FLAG_REMOVED != 0 && len != 0) {
            return Ok(None);
        }
        let hdr = CopyHeader { seq: u32::from_be_bytes([s0, s1, s2, s3]), len, removed: flags & FLAG_REMOVED != 0 };
        Ok(Some((hdr, h)))
    }

    /// Checks a copy's CRC, reading its data into `buf` when given (and big enough).
    fn check_copy(&mut self, id: u16, copy: u32, buf: Option<&mut [u8]>) -> Result<Option<CopyHeader>, StorageError> {
        let Some((hdr, raw)) = self.header(id, copy)? else { return Ok(None) };
        let addr = self.copy_addr(id, copy)? + HEADER_LEN_U32;
        let (head, tail) = raw.split_at(12);
        let want = u32::from_be_bytes(tail.try_into().map_err(|_| StorageError::Io)?);
        let mut crc = crc32(0, head);
        match buf {
            Some(buf) => {
                let have = buf.len();
                let data = buf.get_mut(..hdr.len).ok_or(StorageError::BufferTooSmall { needed: hdr.len, have })?;
                self.read_at(addr, data)?;
                crc = crc32(crc, data);
            }
            None => {
                let mut stage = [0u8; STAGE];
                let mut done = 0usize;
                while done < hdr.len {
                    let n = (hdr.len - done).min(STAGE);
                    let s = stage.get_mut(..n).ok_or(StorageError::Io)?;
                    self.read_at(addr + u32::try_from(done).map_err(|_| StorageError::Io)?, s)?;
                    crc = crc32(crc, s);
                    done += n;
                }
            }
        }
        Ok(if crc == want { Some(hdr) } else { None })
    }

    /// The copy in force: (copy index, header).
    fn current(&mut self, id: u16) -> Result<Option<(u32, CopyHeader)>, StorageError> {
        let a = self.check_copy(id, 0, None)?;
        let b = self.check_copy(id, 1, None)?;
        Ok(match (a, b) {
            (Some(a), Some(b)) => Some(if b.seq > a.seq { (1, b) } else { (0, a) }),
            (Some(a), None) => Some((0, a)),
            (None, Some(b)) => Some((1, b)),
            (None, None) => None,
        })
    }

    fn put(&mut self, id: u16, data: &[u8], removed: bool) -> Result<(), StorageError> {
        if data.len() > self.capacity {
            return Err(StorageError::TooLarge { len: data.len(), max: self.capacity });
        }
        let (target, seq) = match self.current(id)? {
            Some((c, h)) => (1 - c, h.seq.wrapping_add(1)),
            None => (0, 0),
        };
        let addr = self.copy_addr(id, target)?;
        self.flash.erase(addr, addr + self.copy_size).map_err(|_| StorageError::Io)?;
        let len =
            u16::try_from(data.len()).map_err(|_| StorageError::TooLarge { len: data.len(), max: self.capacity })?;
        let flags = if removed { FLAG_REMOVED } else { 0 };
        let mut head = [0u8; NOR_HEADER_LEN];
        head[..4].copy_from_slice(&NOR_MAGIC);
        head[4..8].copy_from_slice(&seq.to_be_bytes());
        head[8..10].copy_from_slice(&len.to_be_bytes());
        head[10..12].copy_from_slice(&flags.to_be_bytes());
        let crc = crc32(crc32(0, &head[..12]), data);
        head[12..].copy_from_slice(&crc.to_be_bytes());
        // Program header and data as one stream through an aligned stage.
        let mut stage = [0xFFu8; STAGE];
        let mut fill = 0usize;
        let mut at = addr;
        for &byte in head.iter().chain(data) {
            if let Some(s) = stage.get_mut(fill) {
                *s = byte;
            }
            fill += 1;
            if fill == STAGE {
                self.flash.write(at, &stage).map_err(|_| StorageError::Io)?;
                at += STAGE_U32;
                stage = [0xFF; STAGE];
                fill = 0;
            }
        }
        if fill > 0 {
            let n = fill.div_ceil(F::WRITE_SIZE) * F::WRITE_SIZE;
            self.flash.write(at, stage.get(..n).ok_or(StorageError::Io)?).map_err(|_| StorageError::Io)?;
        }
        Ok(())
    }
}

impl<F: NorFlash> Storage for NorStorage<F> {
    fn read<'b>(&mut self, id: u16, buf: &'b mut [u8]) -> Result<Option<&'b [u8]>, StorageError> {
        let Some((copy, hdr)) = self.current(id)? else { return Ok(None) };
        if hdr.removed {
            return Ok(None);
        }
        let have = buf.len();
        if hdr.len > have {
            return Err(StorageError::BufferTooSmall { needed: hdr.len, have });
        }
        // Re-read into the caller's buffer, checking the CRC again.
        match self.check_copy(id, copy, Some(&mut *buf))? {
            Some(h) => Ok(buf.get(..h.len)),
            None => Err(StorageError::Io),
        }
    }

    fn write(&mut self, id: u16, data: &[u8]) -> Result<(), StorageError> {
        self.put(id, data, false)
    }

    fn record_capacity(&self) -> usize {
        self.capacity
    }

    fn record_count(&self) -> u16 {
        self.records
    }

    fn remove(&mut self, id: u16) -> Result<(), StorageError> {
        if matches!(self.current(id)?, None | Some((_, CopyHeader { removed: true, .. }))) {
            return Ok(());
        }
        self.put(id, &[], true)
    }
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
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
    use super::*;

    type Flash = SimFlash<8192, 256>;

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(0, b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(crc32(0, b"1234"), b"56789"), 0xCBF4_3926);
    }

    #[test]
    fn write_read_remove() {
        let mut s = NorStorage::new(Flash::new(), 0, 4, 100).unwrap();
        let mut buf = [0u8; 100];
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
    }

    #[test]
    fn rejections() {
        let e = NorStorage::new(Flash::new(), 10, 1, 10).unwrap_err();
        assert_eq!(e, GeometryError::Unaligned { base: 10, erase: 256 });
        assert_eq!(
            e.to_string(),
            "base address 0xa is not a multiple of the erase size 256: start the store on a sector boundary"
        );
        let e = NorStorage::new(Flash::new(), 0, 17, 100).unwrap_err();
        let want = GeometryError::TooSmall { records: 17, capacity: 100, copy: 256, needed: 8704, available: 8192 };
        assert_eq!(e, want);
        let text = e.to_string();
        assert!(text.contains("17 records of 100 bytes take 8704 bytes") && text.contains("only 8192 bytes"), "{text}");
        let e = NorStorage::new(Flash::new(), 7936, 1, 10).unwrap_err();
        assert!(matches!(e, GeometryError::TooSmall { available: 256, needed: 512, .. }));
        let e = NorStorage::new(Flash::new(), 0, 1, 70_000).unwrap_err();
        assert_eq!(e, GeometryError::RecordTooLarge { capacity: 70_000, max: 65_535 });
        let mut s = NorStorage::new(Flash::new(), 0, 2, 100).unwrap();
        assert_eq!(s.write(2, b"x"), Err(StorageError::NoSuchRecord(2)));
        assert_eq!(s.write(0, &[0; 101]), Err(StorageError::TooLarge { len: 101, max: 100 }));
        s.write(0, &[1; 50]).unwrap();
        assert_eq!(s.read(0, &mut [0; 10]), Err(StorageError::BufferTooSmall { needed: 50, have: 10 }));
        assert_eq!(s.read(5, &mut [0; 10]), Err(StorageError::NoSuchRecord(5)));
    }

    #[test]
    fn copy_layout_is_pinned() {
        let mut s = NorStorage::new(Flash::new(), 0, 2, 100).unwrap();
        s.write(0, b"ab").unwrap();
        let m = s.flash().as_bytes();
        let crc = crc32(0, &[b'S', b'P', b'R', b'1', 0, 0, 0, 0, 0, 2, 0, 0, b'a', b'b']);
        assert_eq!(m[..12], [b'S', b'P', b'R', b'1', 0, 0, 0, 0, 0, 2, 0, 0]);
        assert_eq!(m[12..16], crc.to_be_bytes());
        assert_eq!(m[16..18], *b"ab");
        s.write(0, b"c").unwrap();
        // second copy at +256 with sequence 1
        let m = s.flash().as_bytes();
        assert_eq!(m[256..266], [b'S', b'P', b'R', b'1', 0, 0, 0, 1, 0, 1]);
    }

    /// A cut at every operation of a write leaves the old or the new value.
    #[test]
    fn power_cut_at_every_operation_is_atomic() {
        let old = [0x11u8; 77];
        let new = [0x22u8; 77];
        for cut in 0..20 {
            let mut s = NorStorage::new(Flash::new(), 0, 2, 100).unwrap();
            s.write(1, &old).unwrap();
            s.write(1, &old).unwrap();
            let mut flash = s.into_inner();
            flash.cut_after(cut);
            let mut s = NorStorage::new(flash, 0, 2, 100).unwrap();
            let r = s.write(1, &new);
            let mut flash = s.into_inner();
            assert_eq!(r.is_err(), flash.is_cut());
            flash.power_on();
            let mut s = NorStorage::new(flash, 0, 2, 100).unwrap();
            let mut buf = [0u8; 100];
            let got = s.read(1, &mut buf).unwrap().unwrap();
            assert!(got == old || got == new, "cut {cut}: mixed record");
            assert_eq!(got == new, r.is_ok());
        }
    }

    #[test]
    fn counter_record_round_trip() {
        let s = NorStorage::new(Flash::new(), 0, 2, 16).unwrap();
        let mut c = CounterRecord(s);
        assert_eq!(c.load(), Ok(0));
        c.store(0x0102_0304_0506_0708).unwrap();
        assert_eq!(c.load(), Ok(0x0102_0304_0506_0708));
        c.0.write(RECORD_COUNTER, &[1, 2, 3]).unwrap();
        assert_eq!(c.load(), Err(CounterError::Storage));
    }
}
