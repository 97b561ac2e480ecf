//! [`NorStorage`]: records kept as a log across a ring of NOR flash
//! sectors, with wear spread evenly and garbage collection that survives a
//! power cut at any point (SPEC.md §8.6).

use embedded_storage::nor_flash::NorFlash;

use super::{GeometryError, Storage, StorageError, crc32};

/// Magic of a sector header: `"SPL1"`.
pub const SECTOR_MAGIC: [u8; 4] = *b"SPL1";
/// Magic of a record header: `"SR"`.
pub const RECORD_MAGIC: [u8; 2] = *b"SR";
/// Length of a sector header and of a record header (before padding to the
/// flash's program unit).
pub const NOR_HEADER_LEN: usize = 16;
/// The most record ids a [`NorStorage`] indexes unless told otherwise.
pub const DEFAULT_MAX_RECORDS: usize = 16;

const STAGE: usize = 32;
const STAGE_U32: u32 = 32;
const NONE: u32 = u32::MAX;
const FLAG_REMOVED: u8 = 0x01;

/// The sector being appended to.
#[derive(Debug, Clone, Copy)]
struct Head {
    sector: u16,
    seq: u32,
    /// Offset of the next free slot within the sector.
    off: u32,
}

/// A record header as read from flash (its own CRC already checked).
#[derive(Debug, Clone, Copy)]
struct RecHeader {
    id: u16,
    len: u16,
    flags: u8,
    /// Versions of this record that may have been lost before this copy was
    /// made (carried by garbage collection).
    lost: u8,
    crc: u32,
}

/// One slot of a sector's log.
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// Erased from here to the end of the sector.
    End,
    /// A header that does not verify (torn or damaged); the next slot follows it.
    Bad { next: u32 },
    /// A record with an intact header (its data not yet checked).
    Rec { hdr: RecHeader, next: u32 },
}

/// A [`Storage`] on `embedded-storage` NOR flash: every write appends a
/// new version of the record to a log kept across a ring of `sectors`
/// erase sectors from `base`; reads take the newest version whose CRCs
/// check. Up to `R` record ids (`0..records`, `records <= R`) are indexed
/// in RAM (`5 * R` bytes).
///
/// - **Atomic writes.** A record's header (with its own CRC) is programmed
///   first, in the same operation as its first data bytes, then the rest of
///   its data (with a CRC in the header): a cut leaves a version whose CRC
///   fails, and the previous version stays in force.
/// - **Wear.** Sectors are filled in ring order, and a sector is erased
///   only when the log comes round to it again: every sector is erased
///   once per turn of the ring.
/// - **Garbage collection.** One sector is always kept erased. When the
///   sector being written is full, the log moves to the erased one, copies
///   into it the records whose newest version lies in the oldest sector,
///   then erases that sector. A cut during the copy is redone at the next
///   start ([`NorStorage::new`]); during the erase, the erase is redone.
/// - **Damage.** A version whose CRC fails counts as possibly lost:
///   [`Storage::lost`] says how many versions newer than the one read may
///   have been lost, which the message counter uses never to fall back to a
///   value already used.
///
/// A write that fails part-way (the flash reported an error) leaves the
/// previous version in force, and the store refuses further writes with
/// [`StorageError::Io`] until it is opened again ([`NorStorage::new`]
/// after a restart), which finishes or redoes what the failure interrupted.
///
/// Records must fit a sector (`2 * 16 + capacity` bytes, rounded up to the
/// program unit), and the live data of all records must fit in
/// `sectors - 2` sectors less one record each (see docs/firmware.md,
/// "Endurance"); otherwise a write is refused with [`StorageError::Full`]
/// and the previous version stays in force.
///
/// ```
/// use spime::device::storage::{NorStorage, SimFlash, Storage};
/// let flash: SimFlash<{ 4 * 4096 }, 4096> = SimFlash::new();
/// let mut s = NorStorage::new(flash, 0, 4, 3, 64)?;
/// s.write(1, b"hello")?;
/// s.write(1, b"world")?;
/// let mut buf = [0u8; 64];
/// assert_eq!(s.read(1, &mut buf)?, Some(&b"world"[..]));
/// let flash = s.into_inner();                 // a reboot
/// let mut s = NorStorage::new(flash, 0, 4, 3, 64)?;
/// assert_eq!(s.read(1, &mut buf)?, Some(&b"world"[..]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct NorStorage<F, const R: usize = DEFAULT_MAX_RECORDS> {
    flash: F,
    base: u32,
    sectors: u16,
    records: u16,
    capacity: usize,
    /// Program/read unit: every slot starts and ends on it.
    unit: u32,
    /// A header padded to the unit.
    hslot: u32,
    sector_size: u32,
    head: Option<Head>,
    /// Address of the newest valid version of each record, or `NONE`.
    index: [u32; R],
    /// Versions newer than the indexed one that may have been lost.
    lost: [u8; R],
    /// A write failed part-way: refuse further writes until restarted.
    broken: bool,
}

fn be16(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2).and_then(|s| s.try_into().ok()).map_or(0, u16::from_be_bytes)
}

fn be32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4).and_then(|s| s.try_into().ok()).map_or(0, u32::from_be_bytes)
}

fn io<E>(_: E) -> StorageError {
    StorageError::Io
}

impl<F: NorFlash> NorStorage<F> {
    /// Opens the log in `sectors` erase sectors from `base`, for record ids
    /// `0..records` (at most [`DEFAULT_MAX_RECORDS`]) of at most `capacity`
    /// bytes, finishing any garbage collection a power cut interrupted.
    /// [`NorStorage::open`] takes another index size.
    ///
    /// # Errors
    /// As [`NorStorage::open`].
    pub fn new(flash: F, base: u32, sectors: u16, records: u16, capacity: usize) -> Result<Self, GeometryError> {
        Self::open(flash, base, sectors, records, capacity)
    }
}

impl<F: NorFlash, const R: usize> NorStorage<F, R> {
    /// Opens the log in `sectors` erase sectors from `base`, for record ids
    /// `0..records` (at most `R`) of at most `capacity` bytes, finishing any
    /// garbage collection a power cut interrupted.
    ///
    /// # Errors
    /// [`GeometryError::Sizes`] unless the read and write sizes divide 32
    /// and the erase size is a non-zero multiple of 32;
    /// [`GeometryError::Unaligned`] when `base` is not erase-aligned;
    /// [`GeometryError::Layout`] for fewer than 2 sectors or more than `R`
    /// records; [`GeometryError::RecordTooLarge`] when a record of
    /// `capacity` bytes does not fit a sector; [`GeometryError::TooSmall`]
    /// when the sectors exceed the flash; [`GeometryError::Io`] when the
    /// flash fails (a cut while an interrupted collection was finished).
    pub fn open(flash: F, base: u32, sectors: u16, records: u16, capacity: usize) -> Result<Self, GeometryError> {
        let (read, write, erase) = (F::READ_SIZE, F::WRITE_SIZE, F::ERASE_SIZE);
        let unit = write.max(read).max(4);
        if erase == 0 || write == 0 || read == 0 || !erase.is_multiple_of(STAGE) || !STAGE.is_multiple_of(unit) {
            return Err(GeometryError::Sizes { read, write, erase });
        }
        if !(base as usize).is_multiple_of(erase) {
            return Err(GeometryError::Unaligned { base, erase });
        }
        if sectors < 2 || usize::from(records) > R {
            return Err(GeometryError::Layout { sectors, records, max_records: R });
        }
        let hslot = NOR_HEADER_LEN.div_ceil(unit) * unit;
        let max = (erase.saturating_sub(2 * hslot) / unit * unit).min(usize::from(u16::MAX));
        if capacity > max {
            return Err(GeometryError::RecordTooLarge { capacity, max });
        }
        let u32_of = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let needed = erase.saturating_mul(usize::from(sectors));
        let available = flash.capacity().saturating_sub(base as usize);
        let end = (base as usize).saturating_add(needed);
        if needed > available || u32::try_from(end).is_err() {
            return Err(GeometryError::TooSmall {
                sectors,
                erase: u32_of(erase),
                needed: u32_of(needed),
                available: u32_of(available),
            });
        }
        let mut s = NorStorage {
            flash,
            base,
            sectors,
            records,
            capacity,
            unit: u32_of(unit),
            hslot: u32_of(hslot),
            sector_size: u32_of(erase),
            head: None,
            index: [NONE; R],
            lost: [0; R],
            broken: false,
        };
        s.load().map_err(|_| GeometryError::Io)?;
        s.repair().map_err(|_| GeometryError::Io)?;
        Ok(s)
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

    /// The number of sectors in the ring.
    pub const fn sectors(&self) -> u16 {
        self.sectors
    }

    fn sector_addr(&self, i: u16) -> u32 {
        self.base + u32::from(i) * self.sector_size
    }

    fn next_sector(&self, i: u16) -> u16 {
        if i + 1 >= self.sectors { 0 } else { i + 1 }
    }

    fn round(&self, n: u32) -> u32 {
        n.div_ceil(self.unit) * self.unit
    }

    /// Reads `out.len()` bytes at the unit-aligned `addr` through an aligned stage.
    fn read_at(&mut self, addr: u32, out: &mut [u8]) -> Result<(), StorageError> {
        let mut stage = [0u8; STAGE];
        let mut a = addr;
        for piece in out.chunks_mut(STAGE) {
            let n = piece.len().div_ceil(F::READ_SIZE) * F::READ_SIZE;
            let s = stage.get_mut(..n).ok_or(StorageError::Io)?;
            self.flash.read(a, s).map_err(io)?;
            piece.copy_from_slice(s.get(..piece.len()).ok_or(StorageError::Io)?);
            a += STAGE_U32;
        }
        Ok(())
    }

    /// Whether `len` bytes from `addr` all read as erased.
    fn erased(&mut self, addr: u32, len: u32) -> Result<bool, StorageError> {
        let mut stage = [0u8; STAGE];
        let mut a = addr;
        let end = addr + len;
        while a < end {
            let n = (end - a).min(STAGE_U32);
            let s = stage.get_mut(..n as usize).ok_or(StorageError::Io)?;
            self.read_at(a, s)?;
            if s.iter().any(|&b| b != 0xFF) {
                return Ok(false);
            }
            a += n;
        }
        Ok(true)
    }

    /// The sequence number of sector `i` if its header is valid.
    fn sector_seq(&mut self, i: u16) -> Result<Option<u32>, StorageError> {
        let mut h = [0u8; NOR_HEADER_LEN];
        self.read_at(self.sector_addr(i), &mut h)?;
        let ok = h.get(..4) == Some(&SECTOR_MAGIC[..])
            && h.get(8..12) == Some(&[0u8; 4][..])
            && crc32(0, h.get(..12).unwrap_or(&[])) == be32(&h, 12);
        Ok(ok.then(|| be32(&h, 4)))
    }

    fn erase_sector(&mut self, i: u16) -> Result<(), StorageError> {
        let a = self.sector_addr(i);
        self.flash.erase(a, a + self.sector_size).map_err(io)
    }

    /// Erases sector `i` (if not erased) and programs its header.
    fn open_sector(&mut self, i: u16, seq: u32) -> Result<(), StorageError> {
        let a = self.sector_addr(i);
        if !self.erased(a, self.sector_size)? {
            self.erase_sector(i)?;
        }
        let mut h = [0xFFu8; STAGE];
        h[..4].copy_from_slice(&SECTOR_MAGIC);
        h[4..8].copy_from_slice(&seq.to_be_bytes());
        h[8..12].copy_from_slice(&[0; 4]);
        let crc = crc32(0, &h[..12]);
        h[12..16].copy_from_slice(&crc.to_be_bytes());
        let n = self.hslot as usize;
        self.flash.write(a, h.get(..n).ok_or(StorageError::Io)?).map_err(io)?;
        self.head = Some(Head { sector: i, seq, off: self.hslot });
        Ok(())
    }

    /// The slot at `off` in the sector at `sa`.
    fn slot(&mut self, sa: u32, off: u32) -> Result<Slot, StorageError> {
        if off + self.hslot > self.sector_size {
            return Ok(Slot::End);
        }
        let addr = sa + off;
        let mut h = [0u8; NOR_HEADER_LEN];
        self.read_at(addr, &mut h)?;
        if h.iter().all(|&b| b == 0xFF) {
            // Erased header: the end, unless something was programmed after it.
            return Ok(if self.erased(addr, self.sector_size - off)? {
                Slot::End
            } else {
                Slot::Bad { next: off + self.hslot }
            });
        }
        let bad = Slot::Bad { next: off + self.hslot };
        let crc = crc32(crc32(0, &addr.to_be_bytes()), h.get(..12).unwrap_or(&[]));
        if h.get(..2) != Some(&RECORD_MAGIC[..]) || crc != be32(&h, 12) {
            return Ok(bad);
        }
        let hdr = RecHeader { id: be16(&h, 2), len: be16(&h, 4), flags: h[6], lost: h[7], crc: be32(&h, 8) };
        let next = off + self.hslot + self.round(u32::from(hdr.len));
        if usize::from(hdr.len) > self.capacity
            || hdr.flags & !FLAG_REMOVED != 0
            || (hdr.flags & FLAG_REMOVED != 0 && hdr.len != 0)
            || next > self.sector_size
        {
            return Ok(bad);
        }
        Ok(Slot::Rec { hdr, next })
    }

    /// Whether the data of the record whose header is at `addr` checks.
    fn data_ok(&mut self, addr: u32, hdr: &RecHeader) -> Result<bool, StorageError> {
        let mut stage = [0u8; STAGE];
        let mut crc = 0;
        let mut done = 0u32;
        let len = u32::from(hdr.len);
        while done < len {
            let n = (len - done).min(STAGE_U32);
            let s = stage.get_mut(..n as usize).ok_or(StorageError::Io)?;
            self.read_at(addr + self.hslot + done, s)?;
            crc = crc32(crc, s);
            done += n;
        }
        Ok(crc == hdr.crc)
    }

    /// Rebuilds the head and the index from flash. With `only`, checks the
    /// data of that record's versions and rebuilds its entry alone.
    fn scan(&mut self, only: Option<u16>) -> Result<(), StorageError> {
        if only.is_none() {
            self.head = None;
            for i in 0..self.sectors {
                if let Some(seq) = self.sector_seq(i)?
                    && self.head.is_none_or(|h| seq > h.seq)
                {
                    self.head = Some(Head { sector: i, seq, off: self.hslot });
                }
            }
            self.index = [NONE; R];
            self.lost = [0; R];
        }
        let Some(mut head) = self.head else { return Ok(()) };
        let mut inside = false;
        let mut i = head.sector;
        for _ in 0..self.sectors {
            i = self.next_sector(i);
            let sa = self.sector_addr(i);
            if self.sector_seq(i)?.is_none() {
                // Inside the log, a sector whose header does not verify lost its records.
                if inside && !self.erased(sa, self.sector_size)? {
                    self.bump_all(only);
                }
                continue;
            }
            inside = true;
            let mut off = self.hslot;
            loop {
                match self.slot(sa, off)? {
                    Slot::End => break,
                    Slot::Bad { next } => {
                        self.bump_all(only);
                        off = next;
                    }
                    Slot::Rec { hdr, next } => {
                        let x = usize::from(hdr.id);
                        if hdr.id < self.records && only.is_none_or(|o| o == hdr.id) {
                            let ok = only.is_none() || self.data_ok(sa + off, &hdr)?;
                            if let (Some(ix), Some(l)) = (self.index.get_mut(x), self.lost.get_mut(x)) {
                                if ok {
                                    *ix = sa + off;
                                    *l = hdr.lost;
                                } else {
                                    *l = l.saturating_add(1);
                                }
                            }
                        }
                        off = next;
                    }
                }
            }
            if i == head.sector {
                head.off = off;
            }
        }
        if only.is_none() {
            self.head = Some(head);
            // Check the data of each newest version; a failure rescans that record.
            for id in 0..self.records {
                let addr = self.index.get(usize::from(id)).copied().unwrap_or(NONE);
                if addr == NONE {
                    continue;
                }
                let hdr = self.header_at(addr)?;
                if !self.data_ok(addr, &hdr)? {
                    if let (Some(ix), Some(l)) =
                        (self.index.get_mut(usize::from(id)), self.lost.get_mut(usize::from(id)))
                    {
                        *ix = NONE;
                        *l = 0;
                    }
                    self.scan(Some(id))?;
                }
            }
        }
        Ok(())
    }

    /// A slot whose record is unknown was lost: every record with a version
    /// before it may have had a newer one there. (A record with none had
    /// not been written: a lost first write is caught by its reader's
    /// cross-checks, as [`crate::device::session::Device::boot`] does for
    /// the counter.)
    fn bump_all(&mut self, only: Option<u16>) {
        for (x, (l, ix)) in self.lost.iter_mut().zip(self.index.iter()).enumerate() {
            if *ix != NONE && only.is_none_or(|o| usize::from(o) == x) {
                *l = l.saturating_add(1);
            }
        }
    }

    /// The header of an indexed record.
    fn header_at(&mut self, addr: u32) -> Result<RecHeader, StorageError> {
        let sa = addr - (addr - self.base) % self.sector_size;
        match self.slot(sa, addr - sa)? {
            Slot::Rec { hdr, .. } => Ok(hdr),
            _ => Err(StorageError::Io),
        }
    }

    fn load(&mut self) -> Result<(), StorageError> {
        self.scan(None)
    }

    /// Finishes what a cut interrupted: the sector after the head must be erased.
    fn repair(&mut self) -> Result<(), StorageError> {
        let Some(head) = self.head else { return Ok(()) };
        let nxt = self.next_sector(head.sector);
        let na = self.sector_addr(nxt);
        if self.erased(na, self.sector_size)? {
            return Ok(());
        }
        if self.sector_seq(nxt)?.is_some() && self.holds_current(nxt)? {
            // The copy out of `nxt` was cut short: the head holds only
            // copies, `nxt` is intact. Start the collection again.
            self.open_sector(head.sector, head.seq)?;
            self.load()?;
            self.collect(nxt)?;
        } else {
            self.erase_sector(nxt)?;
        }
        Ok(())
    }

    /// Whether sector `i` holds the newest version of any record.
    fn holds_current(&mut self, i: u16) -> Result<bool, StorageError> {
        let sa = self.sector_addr(i);
        let mut off = self.hslot;
        loop {
            match self.slot(sa, off)? {
                Slot::End => return Ok(false),
                Slot::Bad { next } => off = next,
                Slot::Rec { hdr, next } => {
                    if self.index.get(usize::from(hdr.id)) == Some(&(sa + off)) {
                        return Ok(true);
                    }
                    off = next;
                }
            }
        }
    }

    /// Copies the records whose newest version is in sector `victim` to the
    /// head, then erases `victim`.
    fn collect(&mut self, victim: u16) -> Result<(), StorageError> {
        let va = self.sector_addr(victim);
        if self.sector_seq(victim)?.is_some() {
            let mut off = self.hslot;
            loop {
                match self.slot(va, off)? {
                    Slot::End => break,
                    Slot::Bad { next } => off = next,
                    Slot::Rec { hdr, next } => {
                        let x = usize::from(hdr.id);
                        if self.index.get(x) == Some(&(va + off)) {
                            let lost = self.lost.get(x).copied().unwrap_or(0);
                            if hdr.flags & FLAG_REMOVED != 0 && lost == 0 {
                                // Nothing older survives the erase: the removal can go.
                                if let Some(ix) = self.index.get_mut(x) {
                                    *ix = NONE;
                                }
                            } else {
                                let hdr = RecHeader { lost, ..hdr };
                                self.append(&hdr, Source::Flash(va + off + self.hslot))?;
                            }
                        }
                        off = next;
                    }
                }
            }
        }
        self.erase_sector(victim)
    }

    /// Moves the head to the erased sector after it and collects the oldest.
    fn advance(&mut self) -> Result<(), StorageError> {
        let (next, seq) = match self.head {
            Some(h) => (self.next_sector(h.sector), h.seq.checked_add(1).ok_or(StorageError::Full)?),
            None => (0, 1),
        };
        self.open_sector(next, seq)?;
        let victim = self.next_sector(next);
        if !self.erased(self.sector_addr(victim), self.sector_size)? {
            self.collect(victim)?;
        }
        Ok(())
    }

    /// Programs a record at the head (which must have room): the header
    /// first, then the data; updates the index.
    fn append(&mut self, hdr: &RecHeader, data: Source<'_>) -> Result<(), StorageError> {
        let head = self.head.ok_or(StorageError::Io)?;
        let len = u32::from(hdr.len);
        let foot = self.hslot + self.round(len);
        if head.off + foot > self.sector_size {
            return Err(StorageError::Full);
        }
        let addr = self.sector_addr(head.sector) + head.off;
        // The slot is taken whatever happens next.
        self.head = Some(Head { off: head.off + foot, ..head });
        let mut h = [0xFFu8; STAGE];
        h[..2].copy_from_slice(&RECORD_MAGIC);
        h[2..4].copy_from_slice(&hdr.id.to_be_bytes());
        h[4..6].copy_from_slice(&hdr.len.to_be_bytes());
        h[6] = hdr.flags;
        h[7] = hdr.lost;
        h[8..12].copy_from_slice(&hdr.crc.to_be_bytes());
        let crc = crc32(crc32(0, &addr.to_be_bytes()), &h[..12]);
        h[12..16].copy_from_slice(&crc.to_be_bytes());
        // Header and data go out as one stream of 32-byte program operations,
        // the header in the first: a record of up to 32 − H data bytes is
        // programmed in one operation.
        let mut stage = h;
        let mut pos = 0u32;
        let mut done = 0u32;
        loop {
            let start = if pos == 0 { self.hslot } else { 0 };
            let n = (len - done).min(STAGE_U32 - start);
            let s = stage.get_mut(start as usize..(start + n) as usize).ok_or(StorageError::Io)?;
            match data {
                Source::Ram(d) => s.copy_from_slice(d.get(done as usize..(done + n) as usize).ok_or(StorageError::Io)?),
                Source::Flash(from) => self.read_at(from + done, s)?,
            }
            let w = self.round(start + n) as usize;
            self.flash.write(addr + pos, stage.get(..w).ok_or(StorageError::Io)?).map_err(io)?;
            done += n;
            pos += STAGE_U32;
            if done >= len {
                break;
            }
            stage = [0xFF; STAGE];
        }
        let x = usize::from(hdr.id);
        if let (Some(ix), Some(l)) = (self.index.get_mut(x), self.lost.get_mut(x)) {
            *ix = addr;
            *l = hdr.lost;
        }
        Ok(())
    }

    fn put(&mut self, id: u16, data: &[u8], flags: u8) -> Result<(), StorageError> {
        if id >= self.records {
            return Err(StorageError::NoSuchRecord(id));
        }
        let len = u16::try_from(data.len())
            .ok()
            .filter(|&l| usize::from(l) <= self.capacity)
            .ok_or(StorageError::TooLarge { len: data.len(), max: self.capacity })?;
        if self.broken {
            return Err(StorageError::Io);
        }
        let hdr = RecHeader { id, len, flags, lost: 0, crc: crc32(0, data) };
        let foot = self.hslot + self.round(u32::from(len));
        let mut result = Ok(());
        for _ in 0..=self.sectors {
            if self.head.is_some_and(|h| h.off + foot <= self.sector_size) {
                result = self.append(&hdr, Source::Ram(data));
                break;
            }
            if let Err(e) = self.advance() {
                // The ring is mid-collection: only a restart may touch it again.
                self.broken = true;
                result = Err(e);
                break;
            }
            result = Err(StorageError::Full);
        }
        if matches!(result, Err(StorageError::Io)) {
            self.broken = true;
        }
        result
    }
}

/// Where appended data comes from.
#[derive(Debug, Clone, Copy)]
enum Source<'a> {
    Ram(&'a [u8]),
    Flash(u32),
}

impl<F: NorFlash, const R: usize> Storage for NorStorage<F, R> {
    fn read<'b>(&mut self, id: u16, buf: &'b mut [u8]) -> Result<Option<&'b [u8]>, StorageError> {
        if id >= self.records {
            return Err(StorageError::NoSuchRecord(id));
        }
        let addr = self.index.get(usize::from(id)).copied().unwrap_or(NONE);
        if addr == NONE {
            return Ok(None);
        }
        let hdr = self.header_at(addr)?;
        if hdr.flags & FLAG_REMOVED != 0 {
            return Ok(None);
        }
        let have = buf.len();
        let len = usize::from(hdr.len);
        let out = buf.get_mut(..len).ok_or(StorageError::BufferTooSmall { needed: len, have })?;
        self.read_at(addr + self.hslot, out)?;
        if crc32(0, out) != hdr.crc {
            return Err(StorageError::Io);
        }
        Ok(Some(out))
    }

    fn write(&mut self, id: u16, data: &[u8]) -> Result<(), StorageError> {
        self.put(id, data, 0)
    }

    fn remove(&mut self, id: u16) -> Result<(), StorageError> {
        if id >= self.records {
            return Err(StorageError::NoSuchRecord(id));
        }
        let addr = self.index.get(usize::from(id)).copied().unwrap_or(NONE);
        if addr == NONE || self.header_at(addr)?.flags & FLAG_REMOVED != 0 {
            return Ok(());
        }
        self.put(id, &[], FLAG_REMOVED)
    }

    fn record_capacity(&self) -> usize {
        self.capacity
    }

    fn record_count(&self) -> u16 {
        self.records
    }

    fn lost(&mut self, id: u16) -> Result<u8, StorageError> {
        if id >= self.records {
            return Err(StorageError::NoSuchRecord(id));
        }
        Ok(self.lost.get(usize::from(id)).copied().unwrap_or(0))
    }
}
