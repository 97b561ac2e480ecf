//! The consent model at work, on a host: an owner grants, narrows and
//! withdraws; the product's reports shrink; notices are held back by quiet
//! hours, a frequency cap and a mute; a transfer resets everything. Every
//! decision is printed with its reason.
//!
//! Run with `cargo run --example consent`.

use core::error::Error;

use spime::codec;
use spime::consent::ledger::{ConsentEvent, ConsentLedger, Proof};
use spime::consent::{
    CategorySet, Channel, ChannelSet, ConsentState, DataCategory, Denial, FrequencyCap, Grant, LocationPrecision,
    OwnerProof, OwnerRequirement, Purpose, QuietHours, SentConsent, SentNotice, SignedConsent, receipt_for,
    verify_receipt,
};
use spime::ed25519_dalek::SigningKey;
use spime::message::{
    Body, CertificateBody, ConsentUpdate, DeviceCertificate, FirmwareVersion, Metric, MetricValue, Notice, NoticeKind,
    Receipt, Register, Transfer, Usage,
};
use spime::seal::{self, DeviceKey, Envelope, Seal, SessionKeys, VendorKeys, keys};
use spime::wire::DeviceId;

/// 2026-11-23 12:00:00 UTC.
const NOON: u64 = 1_795_435_200;
const HOUR: u64 = 3_600;

struct World {
    vendor: VendorKeys,
    device: DeviceKey,
    device_keys: SessionKeys,
    vendor_keys: SessionKeys,
    eph: [u8; 32],
    counter: u64,
    vendor_counter: u64,
}

impl World {
    /// Seals a body on the device and opens it on the vendor side: the
    /// proof the vendor keeps, and the decoded body.
    fn send<B: Body>(&mut self, body: &B) -> Result<(Proof, B, usize), Box<dyn Error>> {
        let mut out = vec![0u8; B::MAX_SEALED_LEN];
        let ephemeral = (B::KIND == spime::wire::Kind::REGISTER).then_some(self.eph);
        let header = Seal { device: self.device.device, epoch: 1, counter: self.counter, ephemeral };
        self.counter += 1;
        let n = seal::seal(&mut out, &header, body, self.device.signing(), &self.device_keys)?;
        let sealed = out.get(..n).ok_or("short")?;
        let env = Envelope::parse(sealed)?;
        let mut buf = vec![0u8; env.plaintext_len()];
        let verified = env.decrypt(&self.vendor_keys, &mut buf)?.verify(&self.device.public())?;
        Ok((Proof::from_verified(&verified), verified.decode::<B>()?, n))
    }

    /// Seals a receipt on the vendor side and opens it on the device.
    fn receipt(&mut self, r: &Receipt) -> Result<Receipt, Box<dyn Error>> {
        let mut out = [0u8; Receipt::MAX_SEALED_LEN];
        let n = seal::seal_from_vendor(
            &mut out,
            self.device.device,
            self.vendor_counter,
            r,
            &self.vendor,
            &self.vendor_keys,
        )?;
        self.vendor_counter += 1;
        let env = Envelope::parse(out.get(..n).ok_or("short")?)?;
        let mut buf = [0u8; Receipt::MAX_SEALED_LEN];
        Ok(env.decrypt(&self.device_keys, &mut buf)?.verify(&self.vendor.public().signing)?.decode()?)
    }
}

fn cats(list: &[DataCategory]) -> CategorySet {
    list.iter().fold(CategorySet::EMPTY, |s, c| s.with(*c))
}

fn metrics() -> Vec<Metric> {
    vec![
        Metric { id: 1, category: DataCategory::UsageCounters, value: MetricValue::Counter(14) },
        Metric {
            id: 2,
            category: DataCategory::Environment,
            value: MetricValue::Gauge { min: 18, max: 23, sum: 410, samples: 20 },
        },
        Metric {
            id: 3,
            category: DataCategory::Location,
            value: MetricValue::Location {
                lat_e7: 525_200_066,
                lon_e7: 134_049_540,
                precision: LocationPrecision::Exact,
            },
        },
        Metric { id: 4, category: DataCategory::RawEvents, value: MetricValue::Counter(99) },
    ]
}

fn show_usage(label: &str, u: &Usage, sealed: usize) {
    let noun = if u.metrics.len() == 1 { "metric" } else { "metrics" };
    println!("  {label}: {} {noun}, sealed in {sealed} bytes", u.metrics.len());
    for m in &u.metrics {
        println!("    {m}");
    }
}

/// The vendor's verdict on a report, in plain words.
fn verdict(check: Result<(), Denial>) -> String {
    match check {
        Ok(()) => "accepted".to_string(),
        Err(d) => format!("refused: {d}"),
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let vendor = VendorKeys::from_secrets(&[1; 32], [2; 32]);
    let device = DeviceKey::from_seed(DeviceId(*b"kettle42"), &[3; 32]);
    let owner_app = SigningKey::from_bytes(&[7; 32]);
    let (device_keys, eph) = keys::device_start_epoch_with(&[4; 32], &device.device, 1, &vendor.public())?;
    let vendor_keys = vendor.accept_epoch(&device.device, 1, &eph)?;
    let certificate = DeviceCertificate::issue(
        CertificateBody {
            device: device.device,
            device_key: device.public().to_bytes(),
            model: "kettle".try_into().map_err(|_| "model")?,
            hardware_revision: 2,
            issued_at: NOON - 400 * 86_400,
        },
        vendor.signing(),
    )?;
    let mut w = World { vendor, device, device_keys, vendor_keys, eph, counter: 0, vendor_counter: 0 };
    let id = w.device.device;
    let mut ledger = ConsentLedger::new(id);
    let mut sent: Vec<SentConsent> = Vec::new();

    println!("== 1. The owner grants (version 1), signed in the companion app");
    let mut v1 = ConsentState::essential_only(1, NOON, [0x5a; 32]);
    v1.set_grant(Grant {
        purpose: Purpose::USAGE_ANALYTICS,
        categories: cats(&[DataCategory::UsageCounters, DataCategory::Environment, DataCategory::Location]),
        location: LocationPrecision::City,
        expires_at: None,
    })?;
    v1.set_grant(Grant {
        purpose: Purpose::DIAGNOSTICS,
        categories: cats(&[DataCategory::DeviceHealth, DataCategory::FaultContext]),
        location: LocationPrecision::None,
        expires_at: Some(NOON + 365 * 86_400),
    })?;
    v1.set_contact(Purpose::PROACTIVE_SERVICE, ChannelSet::EMPTY.with(Channel::App).with(Channel::Email))?;
    v1.set_quiet_hours(Some(QuietHours { start_minute: 22 * 60, end_minute: 7 * 60, utc_offset_minutes: 60 }))?;
    v1.set_cap(FrequencyCap { purpose: Purpose::PROACTIVE_SERVICE, max_notices: 1, period_seconds: 86_400 })?;
    v1.mute(7)?;
    let signed = SignedConsent { state: v1.clone(), owner: Some(OwnerProof::sign(&v1, &id, &owner_app)?) };
    sent.push(SentConsent::of(&signed)?);
    let register = Register {
        certificate,
        firmware: FirmwareVersion { major: 3, minor: 1, patch: 0, build: 77 },
        consent: signed,
    };
    let (proof, reg, n) = w.send(&register)?;
    let owner_key = reg.consent.verify_owner(&id, OwnerRequirement::AnyOwnerKey)?;
    println!(
        "  vendor: Register opened ({n} bytes), owner signature verified, owner key pinned: {}",
        owner_key.is_some()
    );
    let mut held = reg.consent.state.clone();
    let mut encoded = [0u8; 1024];
    let r = receipt_for(codec::encode(&reg.consent, &mut encoded)?, NOON + 1)?;
    ledger.record_state(proof, NOON + 1)?;
    let r = w.receipt(&r)?;
    verify_receipt(&r, &sent)?;
    println!("  device: receipt for version {} checked against what it sent", r.consent_version);

    println!("\n== 2. The product reports under version 1");
    let permit = v1.grant_permit(Purpose::USAGE_ANALYTICS, NOON + HOUR)?;
    println!("  permit: {} for {}, location to {} precision", permit.categories(), permit.purpose(), permit.location());
    let report = permit.usage(NOON, NOON + HOUR, metrics())?;
    let queued_v1 = report.scope();
    let (_, usage_v1, n) = w.send(report.as_body())?;
    show_usage("report", &usage_v1, n);
    println!("  vendor: {}", verdict(held.check_usage(&usage_v1, NOON + HOUR)));
    let explain =
        v1.may_collect(Purpose::USAGE_ANALYTICS, cats(&[DataCategory::RawEvents]), LocationPrecision::None, NOON);
    println!("  raw events for analytics? {}", explain.map(|_| "yes".to_string()).unwrap_or_else(|d| d.to_string()));
    let exact = v1.may_collect(Purpose::USAGE_ANALYTICS, CategorySet::EMPTY, LocationPrecision::Exact, NOON);
    println!("  exact location? {}", exact.map(|_| "yes".to_string()).unwrap_or_else(|d| d.to_string()));

    println!("\n== 3. The owner narrows (version 2): counters only");
    let mut v2 = v1.successor(NOON + 2 * HOUR, [0x5a; 32])?;
    v2.narrow(Purpose::USAGE_ANALYTICS, cats(&[DataCategory::UsageCounters]), LocationPrecision::None)?;
    let signed2 = SignedConsent { state: v2.clone(), owner: Some(OwnerProof::sign(&v2, &id, &owner_app)?) };
    sent.push(SentConsent::of(&signed2)?);
    let (proof2, up2, _) = w.send(&ConsentUpdate { consent: signed2 })?;
    up2.consent.verify_owner(&id, OwnerRequirement::OwnerKey(owner_key.as_ref().ok_or("no owner key")?))?;
    if held.judge_update(&up2.consent.state)? {
        held = up2.consent.state.clone();
    }
    let e = ledger.record_state(proof2.clone(), NOON + 2 * HOUR)?;
    println!("  vendor: holds version {} ({})", held.version, e.event.name());
    match v2.check_scope(&queued_v1, NOON + 2 * HOUR) {
        Ok(()) => println!("  device outbox: the version-1 report may stay"),
        Err(d) => println!("  device outbox: the queued version-1 report is purged: {d}"),
    }
    println!(
        "  vendor, a late version-1 report: {}",
        held.check_usage(&usage_v1, NOON + 2 * HOUR).map(|()| "accepted".to_string()).unwrap_or_else(|d| d.to_string())
    );
    let report =
        v2.grant_permit(Purpose::USAGE_ANALYTICS, NOON + 3 * HOUR)?.usage(NOON + HOUR, NOON + 3 * HOUR, metrics())?;
    let (_, usage_v2, n) = w.send(report.as_body())?;
    show_usage("report", &usage_v2, n);
    println!("  vendor: {}", verdict(held.check_usage(&usage_v2, NOON + 3 * HOUR)));

    println!("\n== 4. The owner withdraws analytics (version 3)");
    let mut v3 = v2.successor(NOON + 4 * HOUR, [0x5a; 32])?;
    v3.withdraw(Purpose::USAGE_ANALYTICS)?;
    let signed3 = SignedConsent { state: v3.clone(), owner: Some(OwnerProof::sign(&v3, &id, &owner_app)?) };
    let (proof3, up3, _) = w.send(&ConsentUpdate { consent: signed3 })?;
    if held.judge_update(&up3.consent.state)? {
        held = up3.consent.state.clone();
    }
    println!(
        "  vendor: holds version {} ({})",
        held.version,
        ledger.record_state(proof3, NOON + 4 * HOUR)?.event.name()
    );
    match v3.grant_permit(Purpose::USAGE_ANALYTICS, NOON + 5 * HOUR) {
        Ok(_) => println!("  device: analytics permitted"),
        Err(d) => println!("  device: no analytics report: {}", ledger.explain(d)),
    }
    match held.judge_update(&v2) {
        Ok(_) => println!("  vendor: late version 2 applied (wrong!)"),
        Err(e) => println!("  vendor: late version 2 arrives again: ignored: {e}"),
    }
    if let Err(e) = ledger.record_state(proof2, NOON + 5 * HOUR) {
        println!("  ledger: {e}");
    }
    let fault = spime::consent::FaultDraft {
        code: 0xE042,
        severity: spime::message::Severity::Warning,
        component: 2,
        firmware: FirmwareVersion { major: 3, minor: 1, patch: 0, build: 77 },
        uptime_s: 5_000,
        reboot_reason: spime::message::RebootReason::None,
        occurrences: 3,
        first_seen: NOON,
        last_seen: NOON + 5 * HOUR,
        context: heapless::Vec::from_slice(b"scale sensor 0.4 mm").map_err(|_| "context")?,
    };
    let f = v3.grant_permit(Purpose::DIAGNOSTICS, NOON + 5 * HOUR)?.fault(fault.clone())?;
    println!("  diagnostics still granted: fault with {} bytes of context", f.as_body().context.len());
    let f = v3.grant_permit(Purpose::ESSENTIAL, NOON + 5 * HOUR)?.fault(fault)?;
    println!("  the same fault under Essential: {} bytes of context", f.as_body().context.len());

    println!("\n== 5. Notices (quiet hours 22:00-07:00 at UTC+1, 1 per day, topic 7 muted)");
    let mut history: Vec<SentNotice> = Vec::new();
    let notice = |purpose, kind, topic, at: u64| Notice {
        id: 1,
        purpose,
        channel: Channel::App,
        topic,
        kind,
        issued_at: at,
        expires_at: at + 7 * 86_400,
        title: heapless::String::new(),
        text: heapless::String::new(),
    };
    let night = NOON + 10 * HOUR; // 22:00 UTC = 23:00 local
    for (label, n, at) in [
        ("maintenance at 23:00 local", notice(Purpose::PROACTIVE_SERVICE, NoticeKind::MaintenanceDue, 1, night), night),
        (
            "maintenance at 08:00 local",
            notice(Purpose::PROACTIVE_SERVICE, NoticeKind::MaintenanceDue, 1, night),
            night + 9 * HOUR,
        ),
        (
            "supplies offer at 09:00 local",
            notice(Purpose::PROACTIVE_SERVICE, NoticeKind::SuppliesOffer, 2, night),
            night + 10 * HOUR,
        ),
        (
            "supplies offer on muted topic 7",
            notice(Purpose::PROACTIVE_SERVICE, NoticeKind::SuppliesOffer, 7, night),
            night + 34 * HOUR,
        ),
        ("marketing offer", notice(Purpose::MARKETING, NoticeKind::SuppliesOffer, 2, night), night + 34 * HOUR),
        (
            "safety recall at 23:00 local on the device",
            Notice { channel: Channel::OnDevice, ..notice(Purpose::ESSENTIAL, NoticeKind::Recall, 7, night) },
            night,
        ),
    ] {
        match held.check_notice(&n, at, history.as_slice()) {
            Ok(()) => {
                history.push(SentNotice { purpose: n.purpose, at });
                println!("  {label}: sealed and sent");
            }
            Err(d) => println!("  {label}: held back: {d}"),
        }
    }

    println!("\n== 6. The owner sells the kettle (Transfer)");
    let (tproof, t, _) = w.send(&Transfer { at: NOON + 3 * 86_400 })?;
    let reset = held.reset_for_transfer(t.at)?;
    let e = ledger.append(ConsentEvent::ResetOnTransfer, tproof, t.at + 1)?;
    println!("  vendor: consent reset to version {} ({})", e.version, e.event.name());
    held = reset;
    let at = t.at + HOUR;
    for p in [Purpose::DIAGNOSTICS, Purpose::USAGE_ANALYTICS, Purpose::ESSENTIAL] {
        match held.grant_permit(p, at) {
            Ok(permit) => println!("  collect for {p}: allowed ({})", permit.categories()),
            Err(d) => println!("  collect for {p}: {d}"),
        }
    }
    println!(
        "  vendor, the previous owner's late report: {}",
        held.check_usage(&usage_v2, at).map(|()| "accepted".to_string()).unwrap_or_else(|d| d.to_string())
    );
    for (p, k) in
        [(Purpose::PROACTIVE_SERVICE, NoticeKind::MaintenanceDue), (Purpose::ESSENTIAL, NoticeKind::UpdateAvailable)]
    {
        match held.may_contact(p, Channel::App, 1, k, at, history.as_slice()) {
            Ok(()) => println!("  contact for {p} by app: allowed"),
            Err(d) => println!("  contact for {p} by app: {d}"),
        }
    }

    ledger.verify_chain()?;
    ledger.verify_proofs(&w.device.public())?;
    println!("\n== 7. What the first owner is handed (chain and every signature verified)\n");
    print!("{}", ledger.export());
    Ok(())
}
