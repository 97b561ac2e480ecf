//! A `no_std`, `no_main` firmware for QEMU's `mps2-an386` (Cortex-M4) that
//! runs the spime device side with a fixed **test** identity:
//! it registers, opens the vendor's Receipt, aggregates usage, records a
//! fault, changes consent (which purges a queued usage report), opens a
//! vendor Notice, is handed on to a new owner who registers it, and is
//! decommissioned; it writes every sealed message to the host through
//! semihosting, as hex:
//!
//! ```text
//! MSG <kind> <counter> <hex envelope>
//! CHUNK <hex chunk>            the same message cut to a 20-byte MTU (BLE)
//! RECEIPT <consent version>    the vendor's Receipt opened and checked
//! NOTICE <show|withhold> <id>  the vendor's Notice opened and judged
//! DROPPED <usage> <fault> <consent> <lifecycle> <purged>
//! STACK <peak stack bytes>     measured by stack painting
//! DONE
//! ERROR <what> <code>          instead, on failure: the SPEC.md §10.1 code
//! ```
//!
//! Nothing here formats with `core::fmt` (numbers are printed by hand,
//! errors as codes): `core::fmt` and the error messages would cost about
//! 13 KB of flash.
//!
//! The vendor's two messages are constants in `vendor.rs`, sealed by the
//! test vendor for this device's first epoch (the run is deterministic, so
//! its keys are known in advance); tests/firmware_qemu.rs checks them
//! against what the vendor seals for the Register this firmware printed.
//!
//! Everything that is secret here is a published test value: the device
//! seed and the RNG seed
//! (chacha20's `ChaCha20Rng` from a fixed seed, so the run is deterministic). A real
//! device takes its key from provisioning and its randomness from a TRNG.
#![no_std]
#![no_main]

use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher};
use cortex_m as _;
use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hio};
use spime::codec::Bytes64;
use spime::consent::{
    CategorySet, Channel, ConsentState, DataCategory, Grant, LocationPrecision, Purpose, SignedConsent,
};
use spime::device::fault::{FaultEvent, FaultRecorder};
use spime::device::metrics::{MetricDef, MetricKind, Metrics};
use spime::device::outbox::{Outbox, record_len};
use spime::device::session::NoticeDecision;
use spime::device::session::{DEFAULT_STORAGE_SECTORS, Device, Identity, storage_capacity, storage_records};
use spime::device::storage::{NorStorage, SimFlash};
use spime::message::{
    self, CertificateBody, DecommissionReason, DeviceCertificate, FirmwareVersion, RebootReason, Severity,
};
use spime::seal::{DeviceKey, VendorPublicBytes};
use spime::wire::DeviceId;

// The fixed test identity; tests/common/mod.rs has the same values (the
// vendor's secrets there are [0x51; 32] and [0x52; 32], the device's seed
// [0xD5; 32]). The firmware holds only what a real device holds: its own
// seed, the vendor's public keys and its certificate, issued at
// manufacture; tests/firmware_qemu.rs checks the certificate against the
// one the vendor issues.
const VENDOR_SIGNING_PUBLIC: [u8; 32] = [
    192, 80, 197, 99, 122, 68, 250, 134, 41, 255, 243, 204, 204, 226, 48, 12, 179, 98, 166, 61, 153, 217, 95, 197, 65,
    69, 38, 111, 67, 50, 68, 90,
];
const VENDOR_KX_PUBLIC: [u8; 32] = [
    246, 139, 5, 186, 3, 247, 24, 94, 27, 168, 136, 120, 104, 47, 141, 208, 177, 81, 88, 246, 5, 8, 137, 201, 72, 29,
    121, 194, 215, 210, 250, 7,
];
/// The vendor's signature of the certificate body built in `identity()`.
const CERTIFICATE_SIGNATURE: [u8; 64] = [
    73, 16, 184, 246, 15, 99, 83, 69, 241, 116, 117, 60, 144, 174, 76, 0, 254, 95, 155, 55, 145, 79, 67, 156, 248, 216,
    30, 237, 130, 6, 46, 134, 164, 160, 127, 222, 117, 55, 234, 100, 98, 154, 21, 218, 116, 250, 83, 31, 159, 205, 24,
    220, 234, 251, 46, 81, 248, 125, 243, 175, 251, 117, 138, 1,
];
const DEVICE_SEED: [u8; 32] = [0xD5; 32];
const DEVICE_ID: DeviceId = DeviceId(*b"spime-01");
const FIRMWARE: FirmwareVersion = FirmwareVersion { major: 1, minor: 4, patch: 2, build: 77 };
const MADE_AT: u64 = 1_767_225_600;
const RNG_SEED: [u8; 32] = [0x42; 32];
/// The RNG seed after the product is handed on (each epoch's ephemeral key
/// is fresh).
const RNG_SEED_NEW_OWNER: [u8; 32] = [0x43; 32];

// Generated (tests/firmware_qemu.rs writes it); rustfmt leaves its layout alone.
#[rustfmt::skip]
mod vendor;
/// The emulator has no clock: the run pretends to start here.
const T0: u64 = 1_767_300_000;

const SLOTS: usize = 4;
/// The most metrics in one usage report of this product: its registry,
/// its reports and its outbox records are sized for four, not the
/// protocol's sixteen.
const METRICS: usize = 4;
/// An outbox record holds the longest envelope this firmware seals (a
/// Register, with four metrics per report).
const RECORD: usize = record_len(message::device_sealed_len::<METRICS>());
/// The default storage layout (docs/firmware.md, "Endurance"): six 4 KiB
/// sectors of simulated NOR flash hold the log of the counter, session,
/// consent and outbox records.
const SECTOR: usize = 4096;
const FLASH_SIZE: usize = DEFAULT_STORAGE_SECTORS as usize * SECTOR;
type Flash = SimFlash<FLASH_SIZE, SECTOR>;
type Store = NorStorage<&'static mut Flash>;
type Dev = Device<'static, Store, SLOTS, RECORD>;

const MTU: usize = 20;

/// Prints `ERROR <what> <code>`, the error's numeric code (SPEC.md §10.1):
/// no `core::fmt` in the firmware, which saves about 13 KB of flash
/// (docs/firmware.md).
#[inline(never)]
fn print_error(what: &[u8], code: u16) {
    line(&[b"ERROR ", what, b" ", dec(code.into()).as_bytes()]);
}

#[entry]
fn main() -> ! {
    // cortex-m-rt turns this into a `&'static mut`: no `unsafe` needed.
    static mut FLASH: Flash = Flash::zeroed();
    static mut OUTBOX: Outbox<SLOTS, RECORD> = Outbox::new();
    match run(FLASH, OUTBOX) {
        Ok(()) => {
            line(&[b"STACK ", dec(peak_stack()).as_bytes()]);
            line(&[b"DONE"]);
            debug::exit(debug::EXIT_SUCCESS);
        }
        Err(e) => {
            print_error(e.what.name(), e.code);
            debug::exit(debug::EXIT_FAILURE);
        }
    }
    loop {
        cortex_m::asm::wfi();
    }
}

#[inline(never)]
fn identity() -> Result<Identity<VendorPublicBytes>, RunError> {
    // As bytes: the signing key is decompressed by salty when a vendor
    // signature is checked, never by curve25519-dalek (about 4 KB of flash).
    let vendor = VendorPublicBytes { signing: VENDOR_SIGNING_PUBLIC, key_agreement: VENDOR_KX_PUBLIC };
    let key = DeviceKey::from_seed(DEVICE_ID, &DEVICE_SEED);
    let body = CertificateBody {
        device: DEVICE_ID,
        device_key: key.public_bytes(),
        model: heapless::String::try_from("kettle-9000").unwrap_or_default(),
        hardware_revision: 3,
        issued_at: MADE_AT,
        not_after: None,
    };
    let certificate = DeviceCertificate { body, signature: Bytes64(CERTIFICATE_SIGNATURE) };
    Ok(Identity { key, certificate, firmware: FIRMWARE, vendor })
}

fn cats(c: &[DataCategory]) -> CategorySet {
    c.iter().fold(CategorySet::EMPTY, |s, c| s.with(*c))
}

/// An owner's first decision (`version` goes forward over the device's
/// life): usage analytics and diagnostics.
#[inline(never)]
fn first_consent(version: u32, at: u64) -> Result<SignedConsent, spime::consent::EditError> {
    let mut s = ConsentState::essential_only(version, at, [7; 32]);
    s.set_grant(Grant {
        purpose: Purpose::DIAGNOSTICS,
        categories: cats(&[DataCategory::DeviceHealth, DataCategory::FaultContext]),
        location: LocationPrecision::None,
        expires_at: None,
    })?;
    s.set_grant(Grant {
        purpose: Purpose::USAGE_ANALYTICS,
        categories: cats(&[DataCategory::UsageCounters, DataCategory::Environment]),
        location: LocationPrecision::None,
        expires_at: None,
    })?;
    s.allow_channel(Purpose::PROACTIVE_SERVICE, Channel::App)?;
    Ok(SignedConsent { state: s, owner: None })
}

/// An error of the run, as it is printed: what failed and its numeric
/// code (SPEC.md §10.1; 0 for the firmware's own). Four bytes, so every
/// step's `Result` comes back in a register: carrying the library's error
/// values (24 bytes for a `SessionError`) up through the steps cost 380 B
/// more flash, and a name as a slice (12 bytes in all) 168 B more than
/// this.
#[derive(Clone, Copy)]
struct RunError {
    what: Failed,
    code: u16,
}

/// What failed: a library call (with its error's code) or a step of the
/// firmware's own.
#[derive(Clone, Copy)]
enum Failed {
    Session,
    Storage,
    Metrics,
    Geometry,
    Layout,
    NotRegistered,
    NotNew,
    Consent,
    NoConsent,
    Successor,
    Withdraw,
    Chunk,
}

impl Failed {
    fn name(self) -> &'static [u8] {
        match self {
            Failed::Session => b"session",
            Failed::Storage => b"storage",
            Failed::Metrics => b"metrics",
            Failed::Geometry => b"geometry",
            Failed::Layout => b"layout",
            Failed::NotRegistered => b"not registered",
            Failed::NotNew => b"not new",
            Failed::Consent => b"consent",
            Failed::NoConsent => b"no consent",
            Failed::Successor => b"successor",
            Failed::Withdraw => b"withdraw",
            Failed::Chunk => b"chunk",
        }
    }
}

/// A failure of the firmware's own, without a code.
const fn other(what: Failed) -> RunError {
    RunError { what, code: 0 }
}

impl From<spime::device::session::SessionError> for RunError {
    #[inline(never)]
    fn from(e: spime::device::session::SessionError) -> Self {
        RunError { what: Failed::Session, code: e.code() }
    }
}

impl From<spime::device::storage::StorageError> for RunError {
    #[inline(never)]
    fn from(e: spime::device::storage::StorageError) -> Self {
        RunError { what: Failed::Storage, code: e.code() }
    }
}
impl From<spime::device::metrics::MetricsError> for RunError {
    #[inline(never)]
    fn from(e: spime::device::metrics::MetricsError) -> Self {
        RunError { what: Failed::Metrics, code: e.code() }
    }
}

static BREW_SECONDS: [i64; 3] = [60, 180, 300];

// Each step is its own function, kept out of line: inlined into one
// frame, the temporaries of every step would sit on the stack at once.
// What lives across the steps is small: the device (about 1.8 KiB), the
// metrics registry, the fault recorder and the RNG.
#[inline(never)]
fn run(flash: &'static mut Flash, outbox: &'static mut Outbox<SLOTS, RECORD>) -> Result<(), RunError> {
    let mut slot = None;
    let dev = boot(&mut slot, flash, outbox)?;
    register(dev, RNG_SEED, 1, T0)?;
    send_all(dev)?;
    receipt(dev)?;
    operate(dev)?;
    notice(dev)?;
    // Step 7: handed on; the new owner registers (consent versions go on
    // from the transfer's), then decommissions the product. Each step in
    // its own frame, under this one.
    transfer(dev)?;
    register(dev, RNG_SEED_NEW_OWNER, 4, T0 + 9_100)?;
    decommission(dev)?;
    send_all(dev)?;
    print_dropped(dev);
    Ok(())
}

/// Step 2: the vendor's Receipt for the Register's consent, which also
/// confirms the epoch (SPEC.md §8.3).
#[inline(never)]
fn receipt(dev: &mut Dev) -> Result<(), RunError> {
    let r = dev.open_receipt(&vendor::RECEIPT)?;
    line(&[b"RECEIPT ", dec(r.consent_version).as_bytes()]);
    Ok(())
}

/// Step 6: a vendor Notice, judged by the owner's contact preferences.
#[inline(never)]
fn notice(dev: &mut Dev) -> Result<(), RunError> {
    let (shown, id) = match dev.open_notice(&vendor::NOTICE, T0 + 8_000)? {
        NoticeDecision::Show(n) => (&b"show "[..], n.id),
        NoticeDecision::Withhold { notice, .. } => (&b"withhold "[..], notice.id),
    };
    line(&[b"NOTICE ", shown, dec(id).as_bytes()]);
    Ok(())
}

#[inline(never)]
fn transfer(dev: &mut Dev) -> Result<(), RunError> {
    let Ok(r) = dev.registered() else { return Err(other(Failed::NotRegistered)) };
    r.transfer(T0 + 9_000)?;
    Ok(())
}

#[inline(never)]
fn decommission(dev: &mut Dev) -> Result<(), RunError> {
    let Ok(r) = dev.registered() else { return Err(other(Failed::NotRegistered)) };
    r.decommission(T0 + 20_000, DecommissionReason::Recycled)?;
    Ok(())
}

/// The product in use: its metrics registry and fault recorder live in
/// this frame, not under registering (the deepest step, at first boot).
#[inline(never)]
fn operate(dev: &mut Dev) -> Result<(), RunError> {
    let mut metrics: Metrics<METRICS> = Metrics::new(T0);
    let mut faults: FaultRecorder<4> = FaultRecorder::new(FIRMWARE);
    use_the_kettle(&mut metrics, &mut faults)?;
    report(dev, &mut metrics, &mut faults)?;
    send_all(dev)?;
    withdraw_usage(dev, &mut metrics)?;
    send_all(dev)
}

#[inline(never)]
fn print_dropped(dev: &Dev) {
    let d = dev.dropped();
    print(b"DROPPED");
    for n in [d.usage, d.fault, d.consent, d.lifecycle, d.purged] {
        print(b" ");
        print(dec(n).as_bytes());
    }
    print(b"\n");
}

/// Boots the device into `slot` (in place: the device is not copied up the stack).
#[inline(never)]
fn boot<'s>(
    slot: &'s mut Option<Dev>,
    flash: &'static mut Flash,
    outbox: &'static mut Outbox<SLOTS, RECORD>,
) -> Result<&'s mut Dev, RunError> {
    let id = identity()?;
    let capacity = storage_capacity(RECORD);
    let records = u16::try_from(storage_records(SLOTS)).map_err(|_| other(Failed::Layout))?;
    let storage = NorStorage::new(flash, 0, DEFAULT_STORAGE_SECTORS, records, capacity)
        .map_err(|e| RunError { what: Failed::Geometry, code: e.code() })?;
    Ok(Device::boot_in(slot, id, storage, outbox)?)
}

/// Step 1: register with the owner's first consent.
#[inline(never)]
fn register(dev: &mut Dev, seed: [u8; 32], version: u32, at: u64) -> Result<(), RunError> {
    // The randomness for the epoch's ephemeral key (a real device seeds
    // it from its TRNG), only in this step's frame.
    let mut rng = KeystreamRng::new(seed);
    let Ok(u) = dev.unregistered() else { return Err(other(Failed::NotNew)) };
    u.register(&mut rng, first_consent(version, at).map_err(|_| other(Failed::Consent))?)?;
    Ok(())
}

/// The demo's deterministic RNG: the ChaCha20 keystream under the seed,
/// nonce zero (the stream `ChaCha20Rng::from_seed(seed)` gives to
/// `fill_bytes`). It runs on the AEAD's own ChaCha20 code: a second ChaCha
/// block function (`ChaCha20Rng`'s) cost 1,000 more bytes of flash. A real
/// device reads its hardware TRNG instead.
struct KeystreamRng(ChaCha20);

impl KeystreamRng {
    fn new(seed: [u8; 32]) -> Self {
        KeystreamRng(ChaCha20::new(&seed.into(), &[0; 12].into()))
    }
}

impl rand_core::TryRng for KeystreamRng {
    type Error = core::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut b = [0; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut b = [0; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        dst.fill(0);
        self.0.apply_keystream(dst);
        Ok(())
    }
}

impl rand_core::TryCryptoRng for KeystreamRng {}

/// Step 3: usage aggregated on the device (the Identifiers metric is
/// not granted), and a fault, twice: counted, not resent.
#[inline(never)]
fn use_the_kettle(metrics: &mut Metrics<METRICS>, faults: &mut FaultRecorder<4>) -> Result<(), RunError> {
    metrics.define(MetricDef { id: 1, category: DataCategory::UsageCounters, kind: MetricKind::Counter })?;
    metrics.define(MetricDef { id: 2, category: DataCategory::Environment, kind: MetricKind::Gauge })?;
    metrics.define(MetricDef {
        id: 3,
        category: DataCategory::UsageCounters,
        kind: MetricKind::Histogram(&BREW_SECONDS),
    })?;
    metrics.define(MetricDef { id: 9, category: DataCategory::Identifiers, kind: MetricKind::Counter })?;
    for (seconds, temp) in [(45, 96), (200, 99), (150, 97), (400, 100), (90, 98)] {
        metrics.increment(1, 1)?;
        metrics.observe(2, temp)?;
        metrics.observe(3, seconds)?;
        metrics.increment(9, 1)?;
    }
    let fault = FaultEvent {
        code: 0xE1,
        severity: Severity::Error,
        component: 2,
        uptime_s: 3_000,
        reboot_reason: RebootReason::PowerOn,
    };
    faults.record(T0 + 1_000, fault, b"heater open circuit");
    faults.record(T0 + 2_000, fault, b"heater open circuit");
    Ok(())
}

/// Step 4: the usage window and the faults, each sealed in its own frame
/// (in one, the fault's temporaries sat under the usage report's sealing).
fn report(dev: &mut Dev, metrics: &mut Metrics<METRICS>, faults: &mut FaultRecorder<4>) -> Result<(), RunError> {
    report_usage(dev, metrics)?;
    report_faults(dev, faults)
}

#[inline(never)]
fn report_usage(dev: &mut Dev, metrics: &mut Metrics<METRICS>) -> Result<(), RunError> {
    let Ok(mut r) = dev.registered() else { return Err(other(Failed::NotRegistered)) };
    r.report_window(Purpose::USAGE_ANALYTICS, metrics.take_window(T0 + 3_600), T0 + 3_600)?;
    Ok(())
}

#[inline(never)]
fn report_faults(dev: &mut Dev, faults: &mut FaultRecorder<4>) -> Result<(), RunError> {
    let Ok(mut r) = dev.registered() else { return Err(other(Failed::NotRegistered)) };
    r.report_faults(faults, Purpose::DIAGNOSTICS, T0 + 3_600)?;
    Ok(())
}

/// Step 5: another usage window is queued, then the owner withdraws usage
/// analytics: the queued report is purged and never leaves the device.
/// Two steps out of line, so the consent change's temporaries are not on
/// the stack while the report is sealed.
fn withdraw_usage(dev: &mut Dev, metrics: &mut Metrics<METRICS>) -> Result<(), RunError> {
    report_again(dev, metrics)?;
    withdraw(dev)
}

#[inline(never)]
fn report_again(dev: &mut Dev, metrics: &mut Metrics<METRICS>) -> Result<(), RunError> {
    metrics.increment(1, 2)?;
    let Ok(mut r) = dev.registered() else { return Err(other(Failed::NotRegistered)) };
    r.report_window(Purpose::USAGE_ANALYTICS, metrics.take_window(T0 + 7_200), T0 + 7_200)?;
    Ok(())
}

#[inline(never)]
fn withdraw(dev: &mut Dev) -> Result<(), RunError> {
    let Ok(mut r) = dev.registered() else { return Err(other(Failed::NotRegistered)) };
    let mut next = SignedConsent { state: ConsentState::essential_only(0, 0, [0; 32]), owner: None };
    without_usage(r.device().consent(), &mut next)?;
    r.change_consent(next, T0 + 7_300)?;
    Ok(())
}

/// The owner's next decision, written into `next`: the state held, without
/// usage analytics. Edited in place (`clone_from`, `advance`): a state
/// returned through a `Result` would be copied on the stack.
#[inline(never)]
fn without_usage(held: Option<&SignedConsent>, next: &mut SignedConsent) -> Result<(), RunError> {
    let held = held.ok_or(other(Failed::NoConsent))?;
    next.state.clone_from(&held.state);
    next.state.advance(T0 + 7_300, [7; 32]).map_err(|_| other(Failed::Successor))?;
    next.state.withdraw(Purpose::USAGE_ANALYTICS).map_err(|_| other(Failed::Withdraw))?;
    Ok(())
}

/// Sends everything queued: prints each envelope and its 20-byte chunks, then acks it.
#[inline(never)]
fn send_all(dev: &mut Dev) -> Result<(), RunError> {
    while let Some(e) = dev.next_message()? {
        let counter = e.meta.counter;
        let mut hexbuf = HexLine::new();
        line(&[
            b"MSG ",
            e.meta.kind.name().as_bytes(),
            b" ",
            dec(u32::try_from(counter).unwrap_or(u32::MAX)).as_bytes(),
            b" ",
        ]);
        hexbuf.put(e.envelope);
        hexbuf.end();
        let chunks = e.chunks(MTU).map_err(|_| other(Failed::Chunk))?;
        for c in chunks {
            let mut frame = [0u8; MTU];
            let n = c.write_to(&mut frame).map_err(|_| other(Failed::Chunk))?;
            print(b"CHUNK ");
            let mut h = HexLine::new();
            h.put(frame.get(..n).unwrap_or(&[]));
            h.end();
        }
        dev.ack(counter)?;
    }
    Ok(())
}

fn print(bytes: &[u8]) {
    if let Ok(mut out) = hio::hstdout() {
        let _ = out.write_all(bytes);
    }
}

/// Prints the parts; the last `MSG` part is continued by a hex line, others end the line.
fn line(parts: &[&[u8]]) {
    for p in parts {
        print(p);
    }
    if parts.first().is_some_and(|p| !p.starts_with(b"MSG ")) {
        print(b"\n");
    }
}

/// Hex output through a small buffer, so each semihosting call carries 128 characters.
struct HexLine {
    buf: [u8; 128],
    len: usize,
}

impl HexLine {
    fn new() -> Self {
        HexLine { buf: [0; 128], len: 0 }
    }
    fn put(&mut self, bytes: &[u8]) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for b in bytes {
            if self.len + 2 > self.buf.len() {
                self.flush();
            }
            if let Some(d) = self.buf.get_mut(self.len..self.len + 2) {
                d[0] = HEX[usize::from(b >> 4)];
                d[1] = HEX[usize::from(b & 15)];
            }
            self.len += 2;
        }
    }
    fn flush(&mut self) {
        print(self.buf.get(..self.len).unwrap_or(&[]));
        self.len = 0;
    }
    fn end(mut self) {
        self.flush();
        print(b"\n");
    }
}

/// A number in decimal, without `core::fmt`.
struct Dec {
    buf: [u8; 20],
    start: usize,
}

impl Dec {
    fn as_bytes(&self) -> &[u8] {
        self.buf.get(self.start..).unwrap_or(&[])
    }
}

/// `u32`: a `u64` division would link about 1 KB of compiler-builtins.
fn dec(mut v: u32) -> Dec {
    let mut d = Dec { buf: [b'0'; 20], start: 20 };
    loop {
        d.start -= 1;
        if let Some(b) = d.buf.get_mut(d.start) {
            *b = b'0' + (v % 10) as u8;
        }
        v /= 10;
        if v == 0 || d.start == 0 {
            return d;
        }
    }
}

/// The deepest the stack went: cortex-m-rt's `paint-stack` filled the
/// stack with `STACK_PAINT_VALUE` before `main`; the first word from the
/// bottom that is no longer paint is the high-water mark.
fn peak_stack() -> u32 {
    unsafe extern "C" {
        static _stack_start: u32;
        static _stack_end: u32;
    }
    let top = (&raw const _stack_start) as usize;
    let mut p = (&raw const _stack_end) as usize;
    while p < top {
        // SAFETY: every address between `_stack_end` and `_stack_start` is RAM
        // reserved for the stack, 4-byte aligned (checked by cortex-m-rt's linker script).
        let word = unsafe { core::ptr::read_volatile(p as *const u32) };
        if word != cortex_m_rt::STACK_PAINT_VALUE {
            break;
        }
        p += 4;
    }
    (top - p) as u32
}

/// The device's interrupt vectors, as its peripheral access crate would
/// give them (cortex-m-rt's `device` feature): the mps2-an386 has 32
/// external interrupts, all on the default handler here (device.x). Without
/// a device crate cortex-m-rt reserves all 240 that ARMv7-M allows: 832
/// bytes of flash no product pays for.
#[unsafe(link_section = ".vector_table.interrupts")]
#[unsafe(no_mangle)]
static __INTERRUPTS: [unsafe extern "C" fn(); 32] = [IRQ0; 32];

unsafe extern "C" {
    /// The default handler (device.x).
    fn IRQ0();
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    print(b"PANIC\n");
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}

/// Small `memcpy` and `memset`: byte loops. compiler-builtins' versions
/// (linked when a firmware defines none) copy and fill by words, unrolled,
/// in nine entry points: 2,258 bytes of flash. A byte at a time is slower
/// (five instructions a byte, where compiler-builtins moves a word in about
/// as many) and 2,116 bytes smaller (docs/firmware.md). Every entry point calls the
/// private loops below, never `memcpy` by name (LLVM would read that call
/// as its own copy intrinsic and lower it back to `__aeabi_memcpy`), and
/// the loops access memory volatilely so LLVM cannot turn them into such a
/// call either.
mod mem {
    use core::mem::MaybeUninit;

    /// Copies `n` bytes.
    ///
    /// # Safety
    /// As C's `memcpy`: both ranges valid for `n` bytes, not overlapping.
    ///
    /// Byte by byte as `MaybeUninit<u8>`: the compiler copies values with
    /// padding and uninitialised buffers through here, and reading those
    /// bytes as `u8` would be undefined behaviour.
    #[inline(never)]
    unsafe fn copy(dest: *mut u8, src: *const u8, n: usize) {
        let (dest, src) = (dest.cast::<MaybeUninit<u8>>(), src.cast::<MaybeUninit<u8>>());
        let mut i = 0;
        while i < n {
            // SAFETY: the caller gives ranges valid for `n` bytes.
            unsafe { dest.add(i).write_volatile(src.add(i).read_volatile()) };
            i += 1;
        }
    }

    /// Fills `n` bytes with `c`.
    ///
    /// # Safety
    /// As C's `memset`: the range valid for `n` bytes.
    #[inline(never)]
    unsafe fn fill(dest: *mut u8, c: u8, n: usize) {
        let mut i = 0;
        while i < n {
            // SAFETY: the caller gives a range valid for `n` bytes.
            unsafe { dest.add(i).write_volatile(c) };
            i += 1;
        }
    }

    /// C's `memcpy`.
    ///
    /// # Safety
    /// Both ranges valid for `n` bytes, not overlapping.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
        // SAFETY: the caller's contract is `copy`'s.
        unsafe { copy(dest, src, n) };
        dest
    }

    /// C's `memset`.
    ///
    /// # Safety
    /// The range valid for `n` bytes.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
        // SAFETY: the caller's contract is `fill`'s.
        unsafe { fill(dest, c as u8, n) };
        dest
    }

    /// C's `memcmp`: the sign of the first differing byte pair.
    ///
    /// # Safety
    /// Both ranges valid for `n` bytes.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
        let mut i = 0;
        while i < n {
            // SAFETY: the caller gives ranges valid for `n` bytes.
            let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
            if x != y {
                return i32::from(x) - i32::from(y);
            }
            i += 1;
        }
        0
    }

    // The ARM EABI entry points LLVM calls (the 4 and 8 variants promise
    // an alignment a byte loop does not need). `memset`'s arguments come
    // in another order than C's.
    #[unsafe(no_mangle)]
    unsafe extern "aapcs" fn __aeabi_memcpy(dest: *mut u8, src: *const u8, n: usize) {
        // SAFETY: the caller's contract is `copy`'s.
        unsafe { copy(dest, src, n) };
    }
    #[unsafe(no_mangle)]
    unsafe extern "aapcs" fn __aeabi_memcpy4(dest: *mut u8, src: *const u8, n: usize) {
        // SAFETY: as above.
        unsafe { copy(dest, src, n) };
    }
    #[unsafe(no_mangle)]
    unsafe extern "aapcs" fn __aeabi_memcpy8(dest: *mut u8, src: *const u8, n: usize) {
        // SAFETY: as above.
        unsafe { copy(dest, src, n) };
    }
    #[unsafe(no_mangle)]
    unsafe extern "aapcs" fn __aeabi_memset(dest: *mut u8, n: usize, c: i32) {
        // SAFETY: the caller's contract is `fill`'s.
        unsafe { fill(dest, c as u8, n) };
    }
    #[unsafe(no_mangle)]
    unsafe extern "aapcs" fn __aeabi_memset4(dest: *mut u8, n: usize, c: i32) {
        // SAFETY: as above.
        unsafe { fill(dest, c as u8, n) };
    }
    #[unsafe(no_mangle)]
    unsafe extern "aapcs" fn __aeabi_memset8(dest: *mut u8, n: usize, c: i32) {
        // SAFETY: as above.
        unsafe { fill(dest, c as u8, n) };
    }
    #[unsafe(no_mangle)]
    unsafe extern "aapcs" fn __aeabi_memclr(dest: *mut u8, n: usize) {
        // SAFETY: as above.
        unsafe { fill(dest, 0, n) };
    }
    #[unsafe(no_mangle)]
    unsafe extern "aapcs" fn __aeabi_memclr4(dest: *mut u8, n: usize) {
        // SAFETY: as above.
        unsafe { fill(dest, 0, n) };
    }
    #[unsafe(no_mangle)]
    unsafe extern "aapcs" fn __aeabi_memclr8(dest: *mut u8, n: usize) {
        // SAFETY: as above.
        unsafe { fill(dest, 0, n) };
    }
}
