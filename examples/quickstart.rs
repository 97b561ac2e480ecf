//! The shortest path from reading to a working integration: one device and
//! its vendor in one process.
//!
//! A device is provisioned, registers with its owner's consent, reports
//! usage and a fault, and the owner later withdraws part of that consent;
//! the vendor ingests every message into a persistent `RedbStore` (in a
//! temporary directory) and sends a receipt and a notice back. Then both
//! sides restart from what they stored. Every step is printed in plain
//! words.
//!
//! ```sh
//! cargo run --example quickstart
//! ```
//!
//! The device half is the real device API (`spime::device`), heap-free as
//! on firmware; only the flash is simulated in RAM (`SimFlash`) and the
//! radio link is a function call. A firmware passes its hardware RNG where
//! this program passes `spime::os_rng()`.

use core::error::Error;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use spime::consent::{
    CategorySet, Channel, ConsentState, DataCategory, Grant, LocationPrecision, Purpose, SignedConsent,
};
use spime::device::fault::{FaultEvent, FaultRecorder};
use spime::device::metrics::{MetricDef, MetricKind, Metrics};
use spime::device::outbox::{Outbox, record_len};
use spime::device::session::{
    DEFAULT_STORAGE_SECTORS, Device, Identity, NoticeDecision, storage_capacity, storage_records,
};
use spime::device::storage::{NorStorage, SimFlash};
use spime::message::{
    CertificateBody, DeviceCertificate, FirmwareVersion, MAX_SEALED_LEN, Notice, NoticeKind, RebootReason, Severity,
};
use spime::rand_core::Rng;
use spime::seal::{DeviceKey, VendorKeys, VendorPublicKeys};
use spime::time::Utc;
use spime::vendor::{IngestConfig, Ingestor, RedbStore};
use spime::wire::DeviceId;

/// Outbox slots on the device, and the size of each (the largest message).
const SLOTS: usize = 4;
const SLOT: usize = record_len(MAX_SEALED_LEN);
/// Device flash: the default layout, six 4 KiB sectors (simulated here).
type Flash = SimFlash<{ DEFAULT_STORAGE_SECTORS as usize * 4096 }, 4096>;
type Kettle<'o> = Device<'o, NorStorage<Flash>, SLOTS, SLOT>;

const HOUR: u64 = 3_600;

/// What the factory writes into the device: its id, the seed of its key
/// (in secure storage), its certificate and the vendor's public keys. The
/// firmware builds its [`Identity`] from these at every boot.
struct Provisioned {
    id: DeviceId,
    seed: [u8; 32],
    certificate: DeviceCertificate,
    firmware: FirmwareVersion,
    vendor: VendorPublicKeys,
}

impl Provisioned {
    fn identity(&self) -> Identity {
        let key = DeviceKey::from_seed(self.id, &self.seed);
        Identity { key, certificate: self.certificate.clone(), firmware: self.firmware, vendor: self.vendor }
    }
}

/// The radio link: sends every queued message to the vendor, oldest of the
/// most important class first, and removes it from the outbox once the
/// vendor has stored it. Returns the sealed bytes sent, for the replay
/// shown at the end.
fn deliver(device: &mut Kettle<'_>, vendor: &Ingestor<RedbStore>, now: u64) -> Result<Vec<Vec<u8>>, Box<dyn Error>> {
    let mut sent = Vec::new();
    while let Some(message) = device.next_message()? {
        let bytes = message.envelope.to_vec();
        let counter = message.meta.counter;
        // A real link cuts the message to its MTU: message.chunks(20)?
        match vendor.ingest(&bytes, now) {
            Ok(accepted) => println!("  vendor: stored {} bytes: {accepted}", bytes.len()),
            Err(refused) => println!("  vendor: refused ({}): {refused}", refused.reason()),
        }
        device.ack(counter)?;
        sent.push(bytes);
    }
    Ok(sent)
}

/// A directory removed when dropped, also when a step fails.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut rng = spime::os_rng();
    // The protocol's clock is Unix seconds; this program starts at the real
    // time and moves it forward by hand to show an hour passing.
    let mut now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let dir = TempDir(std::env::temp_dir().join(format!("spime-quickstart-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    let db = dir.0.join("vendor.redb");
    println!("spime quickstart: one kettle and its maker, starting {}\n", Utc(now));

    // ---------------------------------------------------------------- vendor
    println!("== The vendor sets up");
    // The vendor's two secrets (signing, key agreement) live in its key
    // store or HSM; here they are made once and kept for the restart.
    let (mut signing_seed, mut agreement_secret) = ([0u8; 32], [0u8; 32]);
    rng.fill_bytes(&mut signing_seed);
    rng.fill_bytes(&mut agreement_secret);
    let vendor_keys = VendorKeys::from_secrets(&signing_seed, &agreement_secret);
    let vendor_public = vendor_keys.public();
    let vendor = Ingestor::new(RedbStore::open(&db)?, vendor_keys, IngestConfig::default());
    println!("  vendor: new keys; store opened at {}", db.display());

    // ----------------------------------------------------------- manufacture
    println!("\n== The factory provisions a kettle");
    let mut serial = [0u8; size_of::<DeviceId>()];
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut serial);
    rng.fill_bytes(&mut seed);
    let device_id = DeviceId(serial);
    let key = DeviceKey::from_seed(device_id, &seed);
    let body = CertificateBody {
        device: device_id,
        device_key: key.public().to_bytes(),
        model: "kettle".try_into()?,
        hardware_revision: 1,
        issued_at: now,
        not_after: None,
    };
    // The factory signs with the vendor's signing key.
    let certificate =
        DeviceCertificate::issue(body, VendorKeys::from_secrets(&signing_seed, &agreement_secret).signing())?;
    let firmware = FirmwareVersion { major: 1, minor: 0, patch: 0, build: 1 };
    let factory = Provisioned { id: device_id, seed, certificate, firmware, vendor: vendor_public };
    println!("  factory: device {device_id} gets its own key and a certificate signed by the vendor");

    // The device's flash: a log across six sectors (wear spreads over all
    // of them) of records for the counter, session, consent and each outbox
    // slot, each big enough for the largest of them.
    let records = u16::try_from(storage_records(SLOTS))?;
    let storage = NorStorage::new(Flash::new(), 0, DEFAULT_STORAGE_SECTORS, records, storage_capacity(SLOT))?;
    let mut outbox: Outbox<SLOTS, SLOT> = Outbox::new(); // a `static` on firmware
    let mut device = Device::boot(factory.identity(), storage, &mut outbox)?;
    println!("  device: first boot: {}, firmware {firmware}", device.stage());

    // ---------------------------------------------------------- registration
    println!("\n== The owner sets the kettle up and chooses what to share");
    let mut consent = ConsentState::essential_only(1, now, [0; 32]); // [0; 32]: the privacy notice's SHA-256
    consent.set_grant(Grant {
        purpose: Purpose::USAGE_ANALYTICS,
        categories: CategorySet::EMPTY.with(DataCategory::UsageCounters),
        location: LocationPrecision::None,
        expires_at: None,
    })?;
    consent.set_grant(Grant {
        purpose: Purpose::DIAGNOSTICS,
        categories: CategorySet::EMPTY.with(DataCategory::DeviceHealth).with(DataCategory::FaultContext),
        location: LocationPrecision::None,
        expires_at: None,
    })?;
    consent.allow_channel(Purpose::PROACTIVE_SERVICE, Channel::OnDevice)?;
    println!("  owner: usage counters for analytics; device health and fault details for diagnostics;");
    println!("         service notices on the kettle itself; nothing else");
    device.unregistered()?.register(&mut rng, SignedConsent { state: consent, owner: None })?;
    println!("  device: {} under consent version 1; the Register message is sealed and queued", device.stage());
    let mut sent = deliver(&mut device, &vendor, now)?;

    // The vendor countersigns the consent it now holds.
    let receipt = vendor.seal_receipt(&device_id)?;
    let receipt = device.open_receipt(&receipt)?;
    println!("  device: {receipt}: it matches what the kettle sent");
    if device.epoch_confirmed() {
        println!("  device: the receipt also confirms key epoch {} is open at the vendor", device.epoch());
    }

    // ------------------------------------------------------------ usage
    println!("\n== An hour of use");
    let mut metrics: Metrics<8> = Metrics::new(now);
    metrics.define(MetricDef { id: 1, category: DataCategory::UsageCounters, kind: MetricKind::Counter })?;
    metrics.define(MetricDef { id: 2, category: DataCategory::Environment, kind: MetricKind::Gauge })?;
    metrics.increment(1, 3)?;
    metrics.observe(2, 21)?;
    println!("  device: counted 3 boils (metric 1) and measured the room at 21 °C (metric 2)");
    now += HOUR;
    let queued = device.registered()?.report_window(Purpose::USAGE_ANALYTICS, metrics.take_window(now), now)?;
    if queued.is_some() {
        println!("  device: usage report queued; the room temperature was left out: not granted");
    }
    sent.extend(deliver(&mut device, &vendor, now)?);

    // ------------------------------------------------------------ a fault
    println!("\n== The heater trips");
    let mut faults: FaultRecorder<4> = FaultRecorder::new(firmware);
    let trip = FaultEvent {
        code: 0x42,
        severity: Severity::Error,
        component: 3,
        uptime_s: 3_500,
        reboot_reason: RebootReason::None,
    };
    faults.record(now - 100, trip, b"dry boil: 180 C at sensor 2");
    faults.record(now - 10, trip, b"dry boil: 180 C at sensor 2");
    let n = device.registered()?.report_faults(&mut faults, Purpose::DIAGNOSTICS, now)?;
    println!("  device: the same fault twice is one report with a count ({n} queued)");
    sent.extend(deliver(&mut device, &vendor, now)?);

    // ------------------------------------------------------------ a notice
    println!("\n== The vendor reacts");
    let notice = Notice {
        id: 1,
        purpose: Purpose::PROACTIVE_SERVICE,
        channel: Channel::OnDevice,
        topic: 1,
        kind: NoticeKind::MaintenanceDue,
        issued_at: now,
        expires_at: now + 7 * 24 * HOUR,
        title: "Descale soon".try_into()?,
        text: "Dry boils often mean scale on the sensor.".try_into()?,
    };
    let sealed = vendor.seal_notice(&device_id, &notice, now)?;
    println!("  vendor: the owner allows service notices on the kettle: sealed {} bytes", sealed.len());
    match device.open_notice(&sealed, now)? {
        NoticeDecision::Show(n) => println!("  device: shows {n}"),
        NoticeDecision::Withhold { reason, .. } => {
            return Err(format!("the device held the notice back: {reason}").into());
        }
    }
    let email = Notice { id: 2, channel: Channel::Email, ..notice };
    match vendor.seal_notice(&device_id, &email, now) {
        Ok(_) => return Err("the vendor sealed a notice by email, which the owner did not allow".into()),
        Err(e) => println!("  vendor: an email about it is not sent: {e}"),
    }

    // ------------------------------------------------------------ withdrawal
    println!("\n== The owner withdraws usage analytics");
    now += HOUR;
    let held = device.consent().ok_or("no consent held")?.state.clone();
    let mut narrower = held.successor(now, held.notice_hash)?;
    narrower.withdraw(Purpose::USAGE_ANALYTICS)?;
    device.registered()?.change_consent(SignedConsent { state: narrower, owner: None }, now)?;
    println!("  device: consent version 2 is in force on the kettle before it is sent");
    sent.extend(deliver(&mut device, &vendor, now)?);
    let receipt = device.open_receipt(&vendor.seal_receipt(&device_id)?)?;
    println!("  device: {receipt}");
    metrics.increment(1, 1)?;
    match device.registered()?.report_window(Purpose::USAGE_ANALYTICS, metrics.take_window(now), now) {
        Ok(_) => return Err("the device queued usage after the owner withdrew analytics".into()),
        Err(e) => println!("  device: no usage report any more: {e}"),
    }
    let permit = device.registered()?.permit(Purpose::DIAGNOSTICS, now)?;
    println!("  device: diagnostics still allowed: {}", permit.categories());

    // ------------------------------------------------------------ restart
    println!("\n== Both sides restart from what they stored");
    drop(vendor);
    let vendor_keys = VendorKeys::from_secrets(&signing_seed, &agreement_secret);
    let vendor = Ingestor::new(RedbStore::open(&db)?, vendor_keys, IngestConfig::default());
    let first = sent.first().ok_or("nothing was sent")?;
    match vendor.ingest(first, now) {
        Ok(a) => return Err(format!("a replayed message was accepted: {a}").into()),
        Err(e) => println!("  vendor: reopened {}; the first message sent again is refused: {e}", db.display()),
    }
    let flash = device.into_storage(); // the power goes off; the flash keeps its content
    let mut outbox: Outbox<SLOTS, SLOT> = Outbox::new();
    let device = Kettle::boot(factory.identity(), flash, &mut outbox)?;
    let version = device.consent().map_or(0, |c| c.state.version);
    println!(
        "  device: booted again: {}, key epoch {}, consent version {version}, vendor confirmed version {}",
        device.stage(),
        device.epoch(),
        device.receipted_version()
    );

    println!("\ndone: {} messages sent by the kettle; removing {}", sent.len(), dir.0.display());
    Ok(())
}
