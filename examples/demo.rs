//! The spime demo: a vendor server on loopback UDP with the persistent redb
//! store (in a temporary directory), and a simulated fleet of devices living
//! their lives: registration, daily usage, faults, consent narrowed and
//! withdrawn, a change of owner, a decommission, a re-key, a replay attack,
//! a tampered message and an unknown device. The vendor answers with
//! receipts and sends notices only where the owners' preferences allow.
//! Devices send their messages in chunks sized to BLE and LoRa MTUs; the
//! server puts them together per sender and ingests them in batches.
//!
//! Run: `cargo run --release --example demo`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::std_instead_of_core
)]

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use spime::consent::*;
use spime::message::*;
use spime::seal::{Envelope, SessionKeys, VendorKeys};
use spime::vendor::link::Reassembly;
use spime::vendor::sim::{SimDevice, consent};
use spime::vendor::*;
use spime::wire::chunk::Chunks;
use spime::wire::{DeviceId, Kind};

const FLEET: u8 = 24;
const DAYS: u64 = 24;
const CLIENT_THREADS: usize = 4;
/// 2026-01-01 00:00 UTC.
const START: u64 = 1_767_225_600;
const DAY: u64 = 86_400;

const TAG_ACK: u8 = 0;
const TAG_NAK: u8 = 1;
const TAG_RECEIPT: u8 = 2;
const TAG_NOTICE: u8 = 3;

fn noon(day: u64) -> u64 {
    START + day * DAY + 12 * 3600
}

#[derive(Default)]
struct ServerStats {
    accepted: BTreeMap<&'static str, u64>,
    rejected: BTreeMap<&'static str, u64>,
    per_device: HashMap<DeviceId, (u64, u64)>,
    receipts: u64,
    batches: u64,
    largest_batch: usize,
}

type Outbox = Arc<Mutex<HashMap<DeviceId, Vec<Vec<u8>>>>>;

fn serve(
    vendor: Arc<Ingestor<RedbStore>>,
    sock: UdpSocket,
    clock: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    outbox: Outbox,
    stats: Arc<Mutex<ServerStats>>,
) {
    sock.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let mut buf = vec![0u8; 65_536];
    // Devices send chunks (SPEC §7); they are put together per sender address.
    let mut links: Reassembly<SocketAddr> = Reassembly::new(60);
    while !stop.load(Ordering::SeqCst) {
        let mut batch: Vec<(Vec<u8>, SocketAddr)> = Vec::new();
        let mut waited = false;
        // Gather whatever has arrived, briefly: one group commit per batch.
        while batch.len() < 128 {
            let Ok((n, addr)) = sock.recv_from(&mut buf) else { break };
            if !waited {
                sock.set_read_timeout(Some(Duration::from_millis(2))).unwrap();
                waited = true;
            }
            let now = clock.load(Ordering::SeqCst);
            match links.push(&addr, now, &buf[..n]) {
                Ok(Some(message)) => batch.push((message, addr)),
                Ok(None) => {}
                Err(e) => {
                    *stats.lock().unwrap().rejected.entry(e.reason()).or_default() += 1;
                    send(&sock, addr, TAG_NAK, &[0; 8]);
                }
            }
        }
        sock.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        if batch.is_empty() {
            continue;
        }
        let refs: Vec<&[u8]> = batch.iter().map(|(m, _)| m.as_slice()).collect();
        let now = clock.load(Ordering::SeqCst);
        let outcomes = vendor.ingest_batch(&refs, now);
        let mut st = stats.lock().unwrap();
        st.batches += 1;
        st.largest_batch = st.largest_batch.max(batch.len());
        for ((msg, addr), outcome) in batch.iter().zip(outcomes) {
            let header = Envelope::parse(msg).ok().map(|e| e.header);
            let counter = header.map_or(0, |h| h.counter);
            match outcome {
                Ok(a) => {
                    *st.accepted.entry(a.kind.name()).or_default() += 1;
                    st.per_device.entry(a.device).or_default().0 += 1;
                    if (a.kind == Kind::REGISTER || a.kind == Kind::CONSENT)
                        && let Ok(r) = vendor.seal_receipt(&a.device)
                    {
                        st.receipts += 1;
                        send(&sock, *addr, TAG_RECEIPT, &r);
                    }
                    let pending = outbox.lock().unwrap().remove(&a.device).unwrap_or_default();
                    for n in pending {
                        send(&sock, *addr, TAG_NOTICE, &n);
                    }
                    send(&sock, *addr, TAG_ACK, &counter.to_be_bytes());
                }
                Err(e) => {
                    *st.rejected.entry(e.reason()).or_default() += 1;
                    if let Some(h) = header {
                        st.per_device.entry(h.device).or_default().1 += 1;
                    }
                    let mut body = counter.to_be_bytes().to_vec();
                    body.extend_from_slice(e.to_string().as_bytes());
                    send(&sock, *addr, TAG_NAK, &body);
                }
            }
        }
    }
}

fn send(sock: &UdpSocket, addr: SocketAddr, tag: u8, body: &[u8]) {
    let mut d = Vec::with_capacity(body.len() + 1);
    d.push(tag);
    d.extend_from_slice(body);
    let _ = sock.send_to(&d, addr);
}

/// What a device saw come back.
#[derive(Default, Clone)]
struct DeviceSeen {
    acks: u64,
    naks: Vec<String>,
    receipts: u64,
    notices: Vec<String>,
}

struct Client {
    sim: SimDevice,
    sock: UdpSocket,
    seen: DeviceSeen,
    role: Role,
    /// Messages kept back: for the replay attacker and a late delivery.
    kept: Vec<Vec<u8>>,
    old_session: Option<SessionKeys>,
    /// The link's MTU: BLE (20 or 244 bytes) or LoRa (51 or 222 bytes).
    mtu: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    Ordinary,
    ReplayVictim,
    Tampered,
    Narrows,
    Withdraws,
    Transferred,
    Decommissioned,
    Rekeys,
    MarketingFan,
}

impl Client {
    fn seal_send<B: Body>(&mut self, body: &B) {
        let m = self.sim.seal(body).unwrap();
        self.send(&m);
    }

    /// Sends one envelope and waits for its answer, taking in receipts and notices.
    fn send(&mut self, msg: &[u8]) {
        // Cut to this device's link MTU; the chunk id is the counter's low 16 bits.
        let id = Envelope::parse(msg).map_or(0, |e| (e.header.counter & 0xffff) as u16);
        let mut frame = [0u8; 512];
        for chunk in Chunks::new(msg, id, self.mtu).unwrap() {
            let n = chunk.write_to(&mut frame).unwrap();
            self.sock.send(&frame[..n]).unwrap();
        }
        let mut buf = vec![0u8; 65_536];
        loop {
            let Ok(n) = self.sock.recv(&mut buf) else {
                self.seen.naks.push("no answer".into());
                return;
            };
            let (tag, body) = (buf[0], &buf[1..n]);
            match tag {
                TAG_ACK => {
                    self.seen.acks += 1;
                    return;
                }
                TAG_NAK => {
                    self.seen.naks.push(String::from_utf8_lossy(&body[8..]).into_owned());
                    return;
                }
                TAG_RECEIPT
                    // The device checks the vendor's countersignature.
                    if self.sim.open::<Receipt>(body).is_ok() => {
                        self.seen.receipts += 1;
                    }
                TAG_NOTICE => match self.sim.open::<Notice>(body) {
                    Ok(n) => self.seen.notices.push(n.title.as_str().to_string()),
                    Err(e) => self.seen.notices.push(format!("unopenable: {e}")),
                },
                _ => {}
            }
        }
    }
}

fn firmware() -> FirmwareVersion {
    FirmwareVersion { major: 2, minor: 1, patch: 0, build: 117 }
}

fn initial_consent(role: Role) -> SignedConsent {
    let counters = CategorySet::EMPTY.with(DataCategory::UsageCounters);
    let analytics = if role == Role::Narrows { counters.with(DataCategory::Location) } else { counters };
    let mut grants = vec![
        (Purpose::USAGE_ANALYTICS, analytics),
        (Purpose::DIAGNOSTICS, CategorySet::EMPTY.with(DataCategory::DeviceHealth).with(DataCategory::FaultContext)),
    ];
    if role == Role::MarketingFan {
        grants.push((Purpose::MARKETING, CategorySet::EMPTY.with(DataCategory::UsageCounters)));
    }
    let mut c = consent(1, &grants, START);
    let app = ChannelSet::EMPTY.with(Channel::App);
    let _ = c.state.contact.grants.push(ContactGrant { purpose: Purpose::PROACTIVE_SERVICE, channels: app });
    if role == Role::MarketingFan {
        let _ = c.state.contact.grants.push(ContactGrant { purpose: Purpose::MARKETING, channels: app });
    }
    c.state.contact.quiet_hours =
        Some(QuietHours { start_minute: 22 * 60, end_minute: 7 * 60, utc_offset_minutes: 60 });
    let _ = c.state.contact.caps.push(FrequencyCap {
        purpose: Purpose::PROACTIVE_SERVICE,
        max_notices: 2,
        period_seconds: 7 * 86_400,
    });
    c
}

fn usage(version: u32, day: u64, seed: u64, location: bool) -> Usage {
    let mut metrics = heapless::Vec::new();
    let _ = metrics.push(Metric {
        id: 1,
        category: DataCategory::UsageCounters,
        value: MetricValue::Counter(3 + (seed + day) % 7),
    });
    let _ = metrics.push(Metric {
        id: 2,
        category: DataCategory::UsageCounters,
        value: MetricValue::Gauge { min: 60, max: 98, sum: 79 * 24, samples: 24 },
    });
    if location {
        let _ = metrics.push(Metric {
            id: 3,
            category: DataCategory::Location,
            value: MetricValue::Location {
                lat_e7: 525_200_000,
                lon_e7: 134_000_000,
                precision: LocationPrecision::City,
            },
        });
    }
    Usage {
        purpose: Purpose::USAGE_ANALYTICS,
        consent_version: version,
        window_start: noon(day) - DAY,
        window_end: noon(day),
        metrics,
    }
}

fn fault(purpose: Purpose, version: u32, day: u64, severity: Severity) -> Fault {
    Fault {
        purpose,
        consent_version: version,
        code: 0x0e21,
        severity,
        component: 4,
        firmware: firmware(),
        uptime_s: 3600 * 5,
        reboot_reason: RebootReason::Watchdog,
        occurrences: 3,
        first_seen: noon(day) - 3600,
        last_seen: noon(day) - 60,
        context: heapless::Vec::new(),
    }
}

/// One simulated day in a device's life.
fn live_day(c: &mut Client, day: u64, narration: &mut Vec<String>) {
    let id = c.sim.id();
    let seed = u64::from(id.0[0]);
    let role = c.role;
    let mut version = 1;
    if day == 0 {
        let reg =
            Register { certificate: c.sim.certificate().clone(), firmware: firmware(), consent: initial_consent(role) };
        let m = c.sim.seal(&reg).unwrap();
        c.send(&m);
        return;
    }
    match (role, day) {
        (Role::Narrows, 8) => {
            let mut n = initial_consent(role);
            n.state.version = 2;
            n.state.grants[1].categories = CategorySet::EMPTY.with(DataCategory::UsageCounters);
            n.state.grants[1].location = LocationPrecision::None;
            c.seal_send(&ConsentUpdate { consent: n });
            narration.push(format!("{id}: owner narrowed consent (no more location)"));
        }
        (Role::Withdraws, 10) => {
            let mut w = initial_consent(role);
            w.state.version = 2;
            w.state.grants.clear();
            w.state.contact.grants.clear();
            c.seal_send(&ConsentUpdate { consent: w });
            narration.push(format!("{id}: owner withdrew all consent but Essential"));
        }
        (Role::Transferred, 12) => {
            // A report queued under the old owner's consent, delivered late.
            let late = c.sim.seal(&usage(1, day, seed, false)).unwrap();
            c.kept.push(late);
            c.seal_send(&Transfer { at: noon(day) });
            narration.push(format!("{id}: sold; consent reset to Essential only"));
        }
        (Role::Transferred, 13) => {
            // Versions go forward for the device's whole life: 1 (first owner),
            // 2 (the reset at the sale), 3 (the new owner's first decision).
            let fresh =
                consent(3, &[(Purpose::DIAGNOSTICS, CategorySet::EMPTY.with(DataCategory::DeviceHealth))], noon(day));
            let late = c.kept.pop().unwrap();
            c.send(&late);
            let reg = Register { certificate: c.sim.certificate().clone(), firmware: firmware(), consent: fresh };
            let m = c.sim.seal_new_epoch(&reg).unwrap();
            c.send(&m);
            narration.push(format!("{id}: a report from before the sale arrived late and was refused; the new owner registered (relationship 2)"));
        }
        (Role::Decommissioned, 18) => {
            c.seal_send(&Decommission { at: noon(day), reason: DecommissionReason::Recycled });
            narration.push(format!("{id}: decommissioned (recycled)"));
        }
        (Role::Decommissioned, d) if d > 18 && d == 19 => {
            c.seal_send(&fault(Purpose::ESSENTIAL, 1, day, Severity::Info));
        }
        (Role::Rekeys, 9) => {
            c.old_session = c.sim.session().cloned();
            let m = c.sim.seal_new_epoch(&usage(1, day, seed, false)).unwrap();
            c.send(&m);
            narration.push(format!("{id}: opened key epoch 2"));
        }
        (Role::Rekeys, 10) => {
            let old = c.old_session.take().unwrap();
            let m = c.sim.seal_with(&usage(1, day, seed, false), &old, None).unwrap();
            c.send(&m);
        }
        (Role::ReplayVictim, 2) => {
            let m = c.sim.seal(&usage(1, day, seed, false)).unwrap();
            c.kept.push(m.clone());
            c.send(&m);
        }
        (Role::ReplayVictim, 3) => {
            let captured = c.kept.pop().unwrap();
            c.send(&captured);
            narration.push(format!("{id}: an attacker replayed a captured report"));
        }
        (Role::Tampered, 4) => {
            let mut m = c.sim.seal(&usage(1, day, seed, false)).unwrap();
            let last = m.len() - 20;
            m[last] ^= 0x20;
            c.send(&m);
            narration.push(format!("{id}: a report was tampered with in transit"));
        }
        _ => {}
    }
    if matches!(role, Role::Narrows) && day >= 8 {
        version = 2;
    }
    let withdrawn = role == Role::Withdraws && day >= 10;
    let sold = role == Role::Transferred && day >= 12;
    let gone = role == Role::Decommissioned && day >= 18;
    if gone {
        return;
    }
    if !withdrawn && !sold {
        // Buggy firmware on the narrowing device still attaches location once.
        let location = role == Role::Narrows && (day < 8 || day == 9);
        c.seal_send(&usage(version, day, seed, location));
    }
    if (seed + day).is_multiple_of(6) {
        let sev = if (seed + day).is_multiple_of(12) { Severity::Error } else { Severity::Warning };
        let purpose = if withdrawn || sold { Purpose::ESSENTIAL } else { Purpose::DIAGNOSTICS };
        let v = if sold { 1 } else { version };
        c.seal_send(&fault(purpose, v, day, sev));
    }
}

#[derive(Default)]
struct NoticeStats {
    sent: BTreeMap<String, u64>,
    held: BTreeMap<String, u64>,
}

fn notice(id: u32, purpose: Purpose, kind: NoticeKind, topic: u16, at: u64, title: &str) -> Notice {
    Notice {
        id,
        purpose,
        channel: Channel::App,
        topic,
        kind,
        issued_at: at,
        expires_at: at + 14 * DAY,
        title: title.try_into().unwrap(),
        text: "See the app for details.".try_into().unwrap(),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("spime-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("vendor.redb");
    println!("spime demo: vendor server with persistent store {}", db.display());

    let vendor_keys = VendorKeys::from_secrets(&[0x5e; 32], [0x77; 32]);
    let device_keys = VendorKeys::from_secrets(&[0x5e; 32], [0x77; 32]);
    let store = RedbStore::open(&db)?;
    let vendor = Arc::new(Ingestor::new(store, vendor_keys, IngestConfig { workers: 2, batch_verify: true }));
    let server_sock = UdpSocket::bind("127.0.0.1:0")?;
    let server_addr = server_sock.local_addr()?;
    println!("listening on udp://{server_addr}");
    let clock = Arc::new(AtomicU64::new(noon(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let outbox: Outbox = Arc::default();
    let stats: Arc<Mutex<ServerStats>> = Arc::default();
    let server = {
        let (v, c, s, o, st) = (vendor.clone(), clock.clone(), stop.clone(), outbox.clone(), stats.clone());
        std::thread::spawn(move || serve(v, server_sock, c, s, o, st))
    };

    // The fleet, spread over client threads.
    let roles = [
        Role::ReplayVictim,
        Role::Tampered,
        Role::Narrows,
        Role::Withdraws,
        Role::Transferred,
        Role::Decommissioned,
        Role::Rekeys,
        Role::MarketingFan,
        Role::MarketingFan,
    ];
    let mut groups: Vec<Vec<Client>> = (0..CLIENT_THREADS).map(|_| Vec::new()).collect();
    for i in 0..FLEET {
        let mut id = [0u8; 8];
        id[0] = i + 1;
        id[7] = 0xd0;
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        sock.connect(server_addr)?;
        sock.set_read_timeout(Some(Duration::from_secs(5)))?;
        let role = roles.get(usize::from(i)).copied().unwrap_or(Role::Ordinary);
        let sim = SimDevice::new(DeviceId(id), [i + 1; 32], &device_keys)?;
        groups[usize::from(i) % CLIENT_THREADS].push(Client {
            sim,
            sock,
            seen: DeviceSeen::default(),
            role,
            kept: Vec::new(),
            old_session: None,
            mtu: [20, 51, 222, 244][usize::from(i) % 4],
        });
    }
    let mut workers = Vec::new();
    let mut day_txs = Vec::new();
    let (done_tx, done_rx) = mpsc::channel::<Vec<String>>();
    for mut group in groups {
        let (tx, rx) = mpsc::channel::<Option<u64>>();
        day_txs.push(tx);
        let done = done_tx.clone();
        workers.push(std::thread::spawn(move || {
            while let Ok(Some(day)) = rx.recv() {
                let mut narration = Vec::new();
                for c in &mut group {
                    live_day(c, day, &mut narration);
                }
                done.send(narration).unwrap();
            }
            group
        }));
    }

    // An unregistered device (not in the vendor's registry) tries to report.
    let mut stranger = SimDevice::new(DeviceId([0xee; 8]), [0xee; 32], &device_keys)?;
    let stranger_sock = UdpSocket::bind("127.0.0.1:0")?;
    stranger_sock.connect(server_addr)?;
    stranger_sock.set_read_timeout(Some(Duration::from_secs(5)))?;

    let mut notices = NoticeStats::default();
    let mut next_notice = 1u32;
    let mut faults_seen = 0u64;
    for day in 0..DAYS {
        clock.store(noon(day), Ordering::SeqCst);
        for tx in &day_txs {
            tx.send(Some(day))?;
        }
        let mut narration = Vec::new();
        for _ in 0..day_txs.len() {
            narration.extend(done_rx.recv()?);
        }
        if day == 5 {
            let m = stranger.seal(&usage(1, day, 0, false))?;
            for chunk in Chunks::new(&m, 1, 244)? {
                let mut frame = [0u8; 244];
                let n = chunk.write_to(&mut frame)?;
                stranger_sock.send(&frame[..n])?;
            }
            let mut b = [0u8; 2048];
            let _ = stranger_sock.recv(&mut b);
            narration.push(format!("{}: an unregistered device tried to report", stranger.id()));
        }

        // The vendor reaches out where it may.
        let devices = vendor.store().devices()?;
        let mut try_notice = |dev: &DeviceRecord, n: &Notice, at: u64| {
            let label = n.kind.to_string();
            match vendor.seal_notice(&dev.device, n, at) {
                Ok(sealed) => {
                    outbox.lock().unwrap().entry(dev.device).or_default().push(sealed);
                    *notices.sent.entry(label).or_default() += 1;
                }
                Err(SendError::Refused(why)) => {
                    *notices.held.entry(format!("{label}: {why}")).or_default() += 1;
                }
                Err(e) => {
                    *notices.held.entry(format!("{label}: {e}")).or_default() += 1;
                }
            }
        };
        let faults_now = stats.lock().unwrap().accepted.get("fault").copied().unwrap_or(0);
        if faults_now > faults_seen && day % 3 == 0 {
            // Proactive service: maintenance for every live device with a fault, at noon.
            for d in &devices {
                next_notice += 1;
                let n = notice(
                    next_notice,
                    Purpose::PROACTIVE_SERVICE,
                    NoticeKind::MaintenanceDue,
                    1,
                    noon(day),
                    "Time for a descale",
                );
                try_notice(d, &n, noon(day));
            }
            faults_seen = faults_now;
        }
        if day == 14 {
            for d in &devices {
                next_notice += 1;
                let n = notice(
                    next_notice,
                    Purpose::MARKETING,
                    NoticeKind::SuppliesOffer,
                    2,
                    noon(day),
                    "Filters: 20% off",
                );
                try_notice(d, &n, noon(day));
            }
        }
        if day == 16 {
            // A firmware update announced late in the owners' evening: quiet hours hold it back.
            let late = START + day * DAY + 22 * 3600;
            for d in &devices {
                next_notice += 1;
                let mut n =
                    notice(next_notice, Purpose::ESSENTIAL, NoticeKind::UpdateAvailable, 3, late, "Update 2.2 ready");
                n.channel = Channel::OnDevice;
                try_notice(d, &n, late);
            }
        }
        if day == 20 {
            for d in &devices {
                next_notice += 1;
                let mut n =
                    notice(next_notice, Purpose::ESSENTIAL, NoticeKind::Recall, 4, noon(day), "Safety recall: cable");
                n.channel = Channel::OnDevice;
                try_notice(d, &n, noon(day));
            }
        }

        let st = stats.lock().unwrap();
        let acc: u64 = st.accepted.values().sum();
        let rej: u64 = st.rejected.values().sum();
        println!("day {day:2}: {acc:4} accepted, {rej:3} rejected so far, {} batches", st.batches);
        drop(st);
        for line in narration {
            println!("        {line}");
        }
    }
    // A last round so every device collects what is waiting for it.
    clock.store(noon(DAYS), Ordering::SeqCst);
    for tx in &day_txs {
        tx.send(Some(DAYS))?;
        tx.send(None)?;
    }
    for _ in 0..day_txs.len() {
        let _ = done_rx.recv()?;
    }
    let mut clients: Vec<Client> = Vec::new();
    for w in workers {
        clients.extend(w.join().map_err(|_| "client thread failed")?);
    }
    stop.store(true, Ordering::SeqCst);
    server.join().map_err(|_| "server thread failed")?;

    // The report.
    let st = stats.lock().unwrap();
    println!("\n== report ==");
    let acc: u64 = st.accepted.values().sum();
    let rej: u64 = st.rejected.values().sum();
    println!("messages accepted: {acc}");
    for (k, n) in &st.accepted {
        println!("  {k:<22} {n}");
    }
    println!("messages rejected: {rej}");
    for (k, n) in &st.rejected {
        println!("  {k:<22} {n}");
    }
    println!("receipts sent: {}; batches: {}, largest {}", st.receipts, st.batches, st.largest_batch);
    println!("notices sent: {}", notices.sent.values().sum::<u64>());
    for (k, n) in &notices.sent {
        println!("  {k:<40} {n}");
    }
    println!("notices held back: {}", notices.held.values().sum::<u64>());
    for (k, n) in &notices.held {
        println!("  {k:<60} {n}");
    }
    println!("\nper device (vendor's view):");
    println!(
        "  {:<34} {:<15} {:>3} {:>5} {:>7} {:>8} {:>8}  {:<15}",
        "device", "lifecycle", "rel", "epoch", "consent", "accepted", "rejected", "role"
    );
    let by_id: HashMap<DeviceId, &Client> = clients.iter().map(|c| (c.sim.id(), c)).collect();
    for d in vendor.store().devices()? {
        let (a, r) = st.per_device.get(&d.device).copied().unwrap_or_default();
        let role = by_id.get(&d.device).map_or("?".to_string(), |c| format!("{:?}", c.role));
        println!(
            "  {:<34} {:<15} {:>3} {:>5} {:>7} {:>8} {:>8}  {:<15}",
            d.device.to_string(),
            format!("{:?}", d.lifecycle),
            d.relationship,
            d.epoch(),
            d.consent.state.version,
            a,
            r,
            role
        );
    }
    let receipts: u64 = clients.iter().map(|c| c.seen.receipts).sum();
    let opened: usize = clients.iter().map(|c| c.seen.notices.len()).sum();
    let waiting: usize = outbox.lock().unwrap().values().map(Vec::len).sum();
    println!(
        "\ndevices verified {receipts} receipts and opened {opened} notices ({waiting} still waiting for the device's next contact)"
    );
    let stored = vendor.store().message_count()?;
    println!("messages in the store: {stored} (every acknowledgement was committed first)");
    println!("finished in {:.1} s", started.elapsed().as_secs_f64());

    // The demo checks its own story, so CI notices if it stops being true.
    let expect = ["replay", "unauthentic", "unconsented", "stale-epoch", "decommissioned", "unknown-device"];
    for reason in expect {
        if !st.rejected.contains_key(reason) {
            return Err(format!("expected a '{reason}' rejection").into());
        }
    }
    if stored != acc {
        return Err("stored and accepted counts differ".into());
    }
    if notices.held.is_empty() || notices.sent.is_empty() {
        return Err("expected notices both sent and held back".into());
    }
    drop(st);
    drop(vendor);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
