//! The spime demo: a fleet of real devices (`spime::device::Device`, the
//! firmware API, consent enforced on the device) living 24 days against the
//! vendor server over CoAP on loopback — registration, daily usage, faults,
//! consent narrowed and withdrawn, a change of owner, a decommission, new
//! keys, a lost registration, a replay, a tampered message and reports a
//! store-and-forward gateway delivered late. The vendor answers with
//! receipts and sends notices only where the owners' preferences allow.
//!
//! Run: `cargo run --release --example demo` (the server runs in-process,
//! with its redb store in a temp dir; `-- --keep` keeps it running for a
//! look at the fleet view). Against a running server:
//! `spime-vendor keys init DATA && spime-vendor serve --data DATA`, then
//! `cargo run --release --example demo -- --server 127.0.0.1:5683 --keys DATA`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::std_instead_of_core,
    clippy::cast_possible_truncation
)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use clap::Parser;
use coap_lite::ResponseType;
use rand_core::SeedableRng;
use spime::consent::*;
use spime::device::fault::{FaultEvent, FaultRecorder};
use spime::device::metrics::{MetricDef, MetricKind, Metrics};
use spime::device::outbox::{Outbox, record_len};
use spime::device::session::{Device, Identity, NoticeDecision, StageHandle, storage_capacity, storage_records};
use spime::device::storage::{NorStorage, SimFlash};
use spime::message::{self, CertificateBody, DecommissionReason, DeviceCertificate, FirmwareVersion, Notice};
use spime::message::{NoticeKind, RebootReason, Severity};
use spime::seal::{DeviceKey, Envelope, VendorKeys};
use spime::server::coap::{Client, MESSAGE_PATH, Reply};
use spime::server::{self, Config, Running, keyfile};
use spime::vendor::{IngestConfig, Ingestor, RedbStore};
use spime::wire::{DeviceId, Kind};

const FLEET: u8 = 24;
const DAYS: u64 = 24;
const GROUPS: usize = 4;
const DAY: u64 = 86_400;
const N: usize = 4;
const REC: usize = record_len(message::MAX_SEALED_LEN);
const SECTORS: u16 = 6;
type Flash = SimFlash<{ SECTORS as usize * 4096 }, 4096>;
type Store = NorStorage<Flash>;
type Dev<'o> = Device<'o, Store, N, REC>;

#[derive(Parser)]
#[command(about = "A fleet of spime devices living 24 days against a vendor server over CoAP.")]
struct Args {
    /// A running `spime-vendor serve` CoAP address (default: a server in-process).
    #[arg(long, value_name = "ADDR", requires = "keys")]
    server: Option<SocketAddr>,
    /// Its HTTP address, for the report.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// The server's data directory: its vendor.keys issue the devices' certificates.
    #[arg(long, value_name = "DIR")]
    keys: Option<PathBuf>,
    /// Keep the in-process server running after the story, until Ctrl-C.
    #[arg(long)]
    keep: bool,
}

/// A CoAP response code as RFC 7252 writes it: `4.04 Not Found`.
fn coap_code(code: coap_lite::ResponseType) -> String {
    let byte = u8::from(coap_lite::MessageClass::Response(code));
    let mut name = String::new();
    for c in format!("{code:?}").chars() {
        if c.is_uppercase() && !name.is_empty() {
            name.push(' ');
        }
        name.push(c);
    }
    format!("{}.{:02} {name}", byte >> 5, byte & 0x1f)
}

/// A Unix time as `2026-01-03 12:00`.
fn when(t: u64) -> String {
    let days = t / DAY;
    let z = i64::try_from(days).unwrap() + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}", t % DAY / 3600, t % 3600 / 60)
}

/// What a refusal code means, in words (SPEC §10.1, §11.4).
fn explain(code: u16) -> &'static str {
    match code {
        1..=13 => "the bytes are not a well-formed message",
        20 => "not authentic: the bytes were changed after sealing",
        22 => "a vendor-to-device kind sent to the vendor",
        25 => "a weak ephemeral key",
        27 => "a replay: the vendor already accepted this counter",
        28 => "a replay: the counter is below the replay window",
        40 => "the vendor holds no registration for this device",
        41 => "sealed under keys the device has since replaced",
        42 => "sealed under an epoch the vendor never saw opened",
        43 => "the certificate does not match the device",
        45..=49 => "the consent state was refused",
        50 => "the device changed owner and must register first",
        51 => "the device is decommissioned: nothing more is accepted",
        53 => "the vendor's store failed; nothing was kept",
        60 => "the data is not covered by the consent held",
        62 | 63 => "the consent held has lapsed",
        64 => "location more precise than the owner allowed",
        65 => "built under a consent version the vendor has not seen",
        80..=84 => "a malformed chunk",
        _ => "refused",
    }
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
    LostRegister,
    MarketingFan,
}

/// One device, its link, and what happened to it.
struct Gadget<'o> {
    dev: Dev<'o>,
    role: Role,
    client: Client,
    metrics: Metrics<2>,
    faults: FaultRecorder<4>,
    /// Envelopes a store-and-forward gateway acknowledged to the device but
    /// delivers later.
    gateway: Vec<Vec<u8>>,
    /// A delivered report an attacker captured.
    captured: Option<Vec<u8>>,
    receipts: u64,
    notices_shown: Vec<String>,
    notices_withheld: u64,
    rng: rand_chacha::ChaCha20Rng,
}

/// Everything one day produced: narration and tallies.
#[derive(Default)]
struct Day {
    lines: Vec<String>,
    accepted: BTreeMap<&'static str, u64>,
    refused: BTreeMap<String, u64>,
    /// Notices the devices showed, by title, and how many they held back.
    shown: BTreeMap<String, u64>,
    withheld: BTreeMap<String, u64>,
}

impl Day {
    fn merge(&mut self, other: Day) {
        self.lines.extend(other.lines);
        for (k, n) in other.accepted {
            *self.accepted.entry(k).or_default() += n;
        }
        for (k, n) in other.refused {
            *self.refused.entry(k).or_default() += n;
        }
        for (k, n) in other.shown {
            *self.shown.entry(k).or_default() += n;
        }
        for (k, n) in other.withheld {
            *self.withheld.entry(k).or_default() += n;
        }
    }
}

fn short(id: DeviceId) -> String {
    hex::encode(id.0)
}

fn firmware() -> FirmwareVersion {
    FirmwareVersion { major: 2, minor: 1, patch: 0, build: 117 }
}

fn initial_consent(role: Role, at: u64) -> SignedConsent {
    let mut s = ConsentState::essential_only(1, at, [7; 32]);
    let counters = CategorySet::EMPTY.with(DataCategory::UsageCounters);
    let (analytics, location) = if role == Role::Narrows {
        (counters.with(DataCategory::Location), LocationPrecision::City)
    } else {
        (counters, LocationPrecision::None)
    };
    s.set_grant(Grant { purpose: Purpose::USAGE_ANALYTICS, categories: analytics, location, expires_at: None })
        .unwrap();
    s.set_grant(Grant {
        purpose: Purpose::DIAGNOSTICS,
        categories: CategorySet::EMPTY.with(DataCategory::DeviceHealth).with(DataCategory::FaultContext),
        location: LocationPrecision::None,
        expires_at: None,
    })
    .unwrap();
    s.allow_channel(Purpose::PROACTIVE_SERVICE, Channel::App).unwrap();
    if role == Role::MarketingFan {
        s.set_grant(Grant {
            purpose: Purpose::MARKETING,
            categories: counters,
            location: LocationPrecision::None,
            expires_at: None,
        })
        .unwrap();
        s.allow_channel(Purpose::MARKETING, Channel::App).unwrap();
    }
    s.contact.quiet_hours = Some(QuietHours { start_minute: 22 * 60, end_minute: 7 * 60, utc_offset_minutes: 60 });
    let _ = s.contact.caps.push(FrequencyCap {
        purpose: Purpose::PROACTIVE_SERVICE,
        max_notices: 2,
        period_seconds: 7 * 86_400,
    });
    SignedConsent { state: s, owner: None }
}

fn identity(n: u8, vendor: &VendorKeys, made: u64) -> Identity {
    let id = DeviceId([0xd0, 0x5e, 0, 0, 0, 0, 0, n]);
    let key = DeviceKey::from_seed(id, &[n; 32]);
    let certificate = DeviceCertificate::issue(
        CertificateBody {
            device: id,
            device_key: key.public().to_bytes(),
            model: "kettle-9000".try_into().unwrap(),
            hardware_revision: 3,
            issued_at: made,
            not_after: None,
        },
        vendor.signing(),
    )
    .unwrap();
    Identity { key, certificate, firmware: firmware(), vendor: vendor.public() }
}

impl Gadget<'_> {
    fn id(&self) -> DeviceId {
        self.dev.device_id()
    }

    fn say(&self, day: &mut Day, at: u64, what: impl AsRef<str>) {
        day.lines.push(format!("{}  {}  {}", when(at), short(self.id()), what.as_ref()));
    }

    /// Posts one envelope and takes in what comes back; returns the reply.
    fn post(&mut self, envelope: &[u8], day: &mut Day, at: u64) -> Reply {
        let reply = self.client.post(MESSAGE_PATH, envelope).unwrap();
        let kind = Envelope::parse(envelope).map_or("?", |e| server::kind_name(e.header.kind));
        if reply.code == ResponseType::Changed {
            *day.accepted.entry(kind).or_default() += 1;
            self.take_payload(&reply.payload, day, at);
        } else {
            let code = reply.refusal_code().unwrap_or(0);
            let reason = String::from_utf8_lossy(&reply.payload);
            let name = reason.split([' ', ':']).nth(1).unwrap_or("?").to_string();
            *day.refused.entry(name).or_default() += 1;
            self.say(
                day,
                at,
                format!("    ✗ {kind} refused, CoAP {}, code {code}: {}", coap_code(reply.code), explain(code)),
            );
        }
        reply
    }

    /// A receipt or a notice in a 2.04's payload.
    fn take_payload(&mut self, payload: &[u8], day: &mut Day, at: u64) {
        let Ok(env) = Envelope::parse(payload) else { return };
        match env.header.kind {
            Kind::RECEIPT => {
                self.dev.open_receipt(payload).unwrap();
                self.receipts += 1;
            }
            Kind::NOTICE => match self.dev.open_notice(payload, at).unwrap() {
                NoticeDecision::Show(n) => {
                    *day.shown.entry(n.title.as_str().to_string()).or_default() += 1;
                    self.notices_shown.push(n.title.as_str().to_string());
                }
                NoticeDecision::Withhold { reason, .. } => {
                    self.notices_withheld += 1;
                    *day.withheld.entry(reason.to_string()).or_default() += 1;
                }
            },
            _ => {}
        }
    }

    /// Delivers the outbox in order. A 2.04 removes a message; so does a
    /// refusal that retrying cannot fix. 4.04 (registration lost) makes the
    /// device register again (SPEC §3.1).
    fn flush(&mut self, day: &mut Day, at: u64) {
        let queued: Vec<(u64, Vec<u8>)> =
            self.dev.queued_envelopes().unwrap().into_iter().map(|(m, e)| (m.counter, e)).collect();
        for (counter, envelope) in queued {
            let reply = self.post(&envelope, day, at);
            match reply.refusal_code() {
                None if reply.code == ResponseType::Changed => {
                    self.dev.ack(counter).unwrap();
                }
                Some(65 | 53) | None => {} // kept: sent again later
                Some(40) => {
                    self.dev.ack(counter).unwrap();
                    if !self.dev.epoch_confirmed()
                        && let StageHandle::Registered(mut r) = self.dev.handle()
                    {
                        let mut again = initial_consent(self.role, at);
                        again.state.version = 2;
                        r.register_again(&mut self.rng, again).unwrap();
                        self.say(day, at, "    the device registers again (no receipt ever confirmed its epoch)");
                        return self.flush(day, at);
                    }
                }
                Some(_) => {
                    self.dev.ack(counter).unwrap();
                }
            }
        }
    }

    /// The day's usage window and any faults, as the consent in force allows.
    fn report(&mut self, day_no: u64, at: u64) {
        self.metrics.increment(1, 3 + (u64::from(self.id().0[7]) + day_no) % 7).unwrap();
        let _ = self.metrics.observe(2, 70 + (day_no % 20) as i64);
        if (u64::from(self.id().0[7]) + day_no).is_multiple_of(6) {
            let e = FaultEvent {
                code: 0x0e21,
                severity: Severity::Warning,
                component: 4,
                uptime_s: 5 * 3600,
                reboot_reason: RebootReason::Watchdog,
            };
            self.faults.record(at - 3600, e, b"heater");
        }
        let window = self.metrics.take_window(at);
        let StageHandle::Registered(mut r) = self.dev.handle() else { return };
        // Denied: the owner allows nothing for the purpose now; the data stays on the device.
        let _ = r.report_window(Purpose::USAGE_ANALYTICS, window, at);
        let _ = r.report_faults(&mut self.faults, Purpose::DIAGNOSTICS, at);
    }

    fn live(&mut self, day_no: u64, at: u64, attacker: &mut Client) -> Day {
        let mut day = Day::default();
        let d = &mut day;
        match (self.role, day_no) {
            (_, 0) => {
                let StageHandle::Unregistered(u) = self.dev.handle() else { panic!() };
                u.register(&mut self.rng, initial_consent(self.role, at)).unwrap();
                if self.role == Role::LostRegister {
                    let (c, reg) =
                        self.dev.queued_envelopes().unwrap().into_iter().map(|(m, e)| (m.counter, e)).next().unwrap();
                    self.dev.ack(c).unwrap();
                    drop(reg);
                    self.say(d, at, "its Register was lost on the way (the gateway had acknowledged it)");
                }
                self.flush(d, at);
                return day;
            }
            (Role::ReplayVictim, 2) => {
                self.report(day_no, at);
                self.captured = self.dev.queued_envelopes().unwrap().into_iter().next().map(|(_, e)| e);
                self.say(d, at, "an attacker on the link captures a usage report");
            }
            (Role::ReplayVictim, 3) => {
                let captured = self.captured.take().unwrap();
                self.say(d, at, "the attacker replays the captured report");
                let reply = attacker.post(MESSAGE_PATH, &captured).unwrap();
                let code = reply.refusal_code().unwrap_or(0);
                *d.refused.entry("replay".into()).or_default() += 1;
                self.say(
                    d,
                    at,
                    format!("    ✗ refused, CoAP {}, code {code}: {}", coap_code(reply.code), explain(code)),
                );
            }
            (Role::Tampered, 4) => {
                self.report(day_no, at);
                let mut copy =
                    self.dev.queued_envelopes().unwrap().into_iter().find(|(m, _)| m.kind == Kind::USAGE).unwrap().1;
                let i = copy.len() - 20;
                copy[i] ^= 0x20;
                self.say(d, at, "a usage report is altered in transit");
                self.post(&copy, d, at);
                self.say(d, at, "    the device, with no acknowledgement, sends its intact copy again");
            }
            (Role::Narrows, 8) => {
                self.report(day_no, at);
                let mut narrower = initial_consent(Role::Ordinary, at);
                narrower.state.version = 2;
                let StageHandle::Registered(mut r) = self.dev.handle() else { panic!() };
                r.change_consent(narrower, at).unwrap();
                self.say(d, at, "the owner narrows consent: no more location");
                self.report(day_no, at + 60);
                // The link reorders: the report built under version 2 arrives before the Consent.
                let late_usage =
                    self.dev.queued_envelopes().unwrap().into_iter().rfind(|(m, _)| m.kind == Kind::USAGE).unwrap().1;
                self.say(d, at, "the link delivers the newest report before the consent change");
                self.post(&late_usage, d, at);
            }
            (Role::Withdraws, 10) => {
                let mut none = ConsentState::essential_only(2, at, [7; 32]);
                none.contact = ContactPrefs::default();
                let StageHandle::Registered(mut r) = self.dev.handle() else { panic!() };
                r.change_consent(SignedConsent { state: none, owner: None }, at).unwrap();
                self.say(d, at, "the owner withdraws all consent but Essential: the device stops reporting");
            }
            (Role::Rekeys, 9) => {
                self.report(day_no, at);
                self.hold_all();
                let StageHandle::Registered(mut r) = self.dev.handle() else { panic!() };
                let epoch = r.renew_keys(&mut self.rng).unwrap();
                self.say(d, at, format!("a gateway holds today's report; the device opens key epoch {epoch}"));
            }
            (Role::Rekeys, 10) => {
                // Today's report opens epoch 2 at the vendor; then the late one arrives.
                self.report(day_no, at);
                self.flush(d, at);
                self.deliver_held(d, at, "the gateway delivers yesterday's report, sealed under epoch 1");
                return day;
            }
            (Role::Transferred, 12) => {
                self.report(day_no, at);
                self.hold_all();
                let StageHandle::Registered(r) = self.dev.handle() else { panic!() };
                r.transfer(at).unwrap();
                self.say(d, at, "sold: a Transfer resets consent to Essential only");
                self.flush(d, at);
                self.deliver_held(d, at, "the gateway delivers a report from before the sale");
                return day;
            }
            (Role::Transferred, 13) => {
                let mut fresh = initial_consent(Role::Ordinary, at);
                fresh.state.version = 3;
                let StageHandle::Unregistered(u) = self.dev.handle() else { panic!() };
                u.register(&mut self.rng, fresh).unwrap();
                self.say(d, at, "the new owner registers (consent version 3, relationship 2)");
                self.flush(d, at);
                return day;
            }
            (Role::Decommissioned, 18) => {
                self.report(day_no, at);
                self.hold_all();
                let StageHandle::Registered(r) = self.dev.handle() else { panic!() };
                r.decommission(at, DecommissionReason::Recycled).unwrap();
                self.say(d, at, "decommissioned (recycled)");
                self.flush(d, at);
                self.deliver_held(d, at, "the gateway delivers the last report, after the decommission");
                return day;
            }
            _ => {}
        }
        let reported = matches!(
            (self.role, day_no),
            (Role::ReplayVictim, 2) | (Role::Tampered, 4) | (Role::Narrows, 8) | (Role::Rekeys, 9)
        );
        if !reported && matches!(self.dev.handle(), StageHandle::Registered(_)) {
            self.report(day_no, at);
        }
        self.flush(d, at);
        day
    }

    /// The gateway takes everything queued and acknowledges it to the device.
    fn hold_all(&mut self) {
        let queued: Vec<(u64, Vec<u8>)> =
            self.dev.queued_envelopes().unwrap().into_iter().map(|(m, e)| (m.counter, e)).collect();
        for (c, e) in queued {
            self.dev.ack(c).unwrap();
            self.gateway.push(e);
        }
    }

    fn deliver_held(&mut self, d: &mut Day, at: u64, what: &str) {
        self.say(d, at, what);
        for e in std::mem::take(&mut self.gateway) {
            self.post(&e, d, at);
        }
    }
}

fn notice(id: u32, purpose: Purpose, kind: NoticeKind, channel: Channel, at: u64, title: &str) -> Notice {
    Notice {
        id,
        purpose,
        channel,
        topic: id as u16,
        kind,
        issued_at: at,
        expires_at: at + 14 * DAY,
        title: title.try_into().unwrap(),
        text: "See the app for details.".try_into().unwrap(),
    }
}

/// `POST /api/devices/{id}/notices` on a running server.
fn post_notice(
    http: SocketAddr,
    id: DeviceId,
    purpose: Purpose,
    kind: NoticeKind,
    channel: Channel,
    title: &str,
) -> Result<(), String> {
    let body = serde_json::json!({
        "purpose": purpose.id(), "channel": channel.name(), "kind": kind, "title": title,
        "text": "See the app for details.",
    })
    .to_string();
    let mut s = TcpStream::connect(http).map_err(|e| e.to_string())?;
    write!(
        s,
        "POST /api/devices/{}/notices HTTP/1.1\r\nHost: {http}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        short(id),
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    if text.starts_with("HTTP/1.1 202") {
        return Ok(());
    }
    let detail = text.split_once("\"detail\":\"").and_then(|(_, d)| d.split('"').next()).unwrap_or("refused");
    Err(detail.to_string())
}

fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, mut body) = text.split_once("\r\n\r\n")?;
    if !head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Some(body.to_string());
    }
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let n = usize::from_str_radix(size.trim(), 16).ok()?;
        if n == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..n)?);
        body = rest.get(n + 2..)?;
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let started = Instant::now();
    let runtime = tokio::runtime::Runtime::new()?;
    // The story's time: simulated days in-process; against a running server
    // (which keeps real time) the 24 days end now.
    let real_now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let start = match args.server {
        None => 1_767_225_600, // 2026-01-01 00:00 UTC
        Some(_) => (real_now / DAY - DAYS - 1) * DAY,
    };
    let noon = |day: u64| start + day * DAY + 12 * 3600;
    let clock = Arc::new(AtomicU64::new(noon(0)));

    let (vendor_keys, coap, http, running, dir): (
        VendorKeys,
        SocketAddr,
        SocketAddr,
        Option<Running>,
        Option<PathBuf>,
    ) = match (&args.server, &args.keys) {
        (Some(addr), Some(keys)) => (keyfile::load(keys)?, *addr, args.http, None, None),
        _ => {
            let dir = std::env::temp_dir().join(format!("spime-demo-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            let file = dir.join("vendor.redb");
            let keys = VendorKeys::from_secrets(&[0x5e; 32], &[0x77; 32]);
            let ingestor = Arc::new(Ingestor::new(
                RedbStore::open(&file)?,
                VendorKeys::from_secrets(&[0x5e; 32], &[0x77; 32]),
                IngestConfig { workers: 2, batch_verify: true },
            ));
            let c = Arc::clone(&clock);
            let config = Config {
                coap: "127.0.0.1:0".parse()?,
                http: "127.0.0.1:0".parse()?,
                clock: Arc::new(move || c.load(Ordering::SeqCst)),
                store_file: Some(file),
                ..Config::default()
            };
            let running = runtime.block_on(server::start(ingestor, config))?;
            println!("spime demo: vendor server in-process, store in {}", dir.display());
            (keys, running.coap, running.http, Some(running), Some(dir))
        }
    };
    println!("devices speak CoAP to udp://{coap}/s");
    println!("fleet view: http://{http}/   (metrics: http://{http}/metrics)\n");

    let roles = [
        Role::ReplayVictim,
        Role::Tampered,
        Role::Narrows,
        Role::Withdraws,
        Role::Transferred,
        Role::Decommissioned,
        Role::Rekeys,
        Role::LostRegister,
        Role::MarketingFan,
        Role::MarketingFan,
    ];
    let mut outboxes: Vec<Outbox<N, REC>> = (0..FLEET).map(|_| Outbox::new()).collect();
    let mut gadgets: Vec<Gadget<'_>> = Vec::new();
    for (i, ob) in outboxes.iter_mut().enumerate() {
        let n = i as u8 + 1;
        let storage = NorStorage::new(Flash::new(), 0, SECTORS, storage_records(N) as u16, storage_capacity(REC))?;
        let dev = Dev::boot(identity(n, &vendor_keys, start - 30 * DAY), storage, ob)?;
        let mut metrics = Metrics::new(start);
        metrics.define(MetricDef { id: 1, category: DataCategory::UsageCounters, kind: MetricKind::Counter })?;
        metrics.define(MetricDef { id: 2, category: DataCategory::UsageCounters, kind: MetricKind::Gauge })?;
        gadgets.push(Gadget {
            dev,
            role: roles.get(i).copied().unwrap_or(Role::Ordinary),
            client: Client::new(coap)?,
            metrics,
            faults: FaultRecorder::new(firmware()),
            gateway: Vec::new(),
            captured: None,
            receipts: 0,
            notices_shown: Vec::new(),
            notices_withheld: 0,
            rng: rand_chacha::ChaCha20Rng::from_seed([n; 32]),
        });
    }
    let mut attacker = Client::new(coap)?;
    let mut total = Day::default();
    let mut notices_sent: BTreeMap<String, u64> = BTreeMap::new();
    let mut notices_held: BTreeMap<String, u64> = BTreeMap::new();
    let mut next_notice = 0u32;
    let ids: Vec<DeviceId> = gadgets.iter().map(Gadget::id).collect();
    for day in 0..=DAYS {
        clock.store(noon(day), Ordering::SeqCst);
        // The vendor reaches out where it may (in-process: the server's notice mailbox).
        {
            // In-process: the server's API; against a running server: its HTTP API.
            let mut send = |purpose: Purpose, kind: NoticeKind, channel: Channel, at: u64, title: &str| {
                for id in &ids {
                    next_notice += 1;
                    let label = kind.to_string();
                    let verdict = match &running {
                        Some(r) => r
                            .send_notice(id, &notice(next_notice, purpose, kind, channel, at, title))
                            .map_err(|e| e.to_string()),
                        None => post_notice(http, *id, purpose, kind, channel, title),
                    };
                    match verdict {
                        Ok(()) => *notices_sent.entry(label).or_default() += 1,
                        Err(e) => *notices_held.entry(format!("{label}: {e}")).or_default() += 1,
                    }
                }
            };
            match day {
                6 | 15 => send(
                    Purpose::PROACTIVE_SERVICE,
                    NoticeKind::MaintenanceDue,
                    Channel::App,
                    noon(day),
                    "Time for a descale",
                ),
                14 => send(Purpose::MARKETING, NoticeKind::SuppliesOffer, Channel::App, noon(day), "Filters: 20% off"),
                16 => {
                    let late = noon(day) + 10 * 3600;
                    clock.store(late, Ordering::SeqCst);
                    send(Purpose::ESSENTIAL, NoticeKind::UpdateAvailable, Channel::OnDevice, late, "Update 2.2 ready");
                    clock.store(noon(day), Ordering::SeqCst);
                }
                20 => {
                    send(Purpose::ESSENTIAL, NoticeKind::Recall, Channel::OnDevice, noon(day), "Safety recall: cable")
                }
                _ => {}
            }
        }
        let mut today = Day::default();
        let attacker = &mut attacker;
        std::thread::scope(|s| {
            let chunk = gadgets.len().div_ceil(GROUPS);
            let mut handles = Vec::new();
            let (first, rest) = gadgets.split_at_mut(chunk);
            // The attacker works from group 0.
            handles.push(s.spawn(move || {
                let mut d = Day::default();
                for g in first.iter_mut() {
                    d.merge(g.live(day, noon(day), attacker));
                }
                d
            }));
            for group in rest.chunks_mut(chunk) {
                handles.push(s.spawn(move || {
                    let mut d = Day::default();
                    let mut unused = Client::new(coap).unwrap();
                    for g in group.iter_mut() {
                        d.merge(g.live(day, noon(day), &mut unused));
                    }
                    d
                }));
            }
            for h in handles {
                today.merge(h.join().unwrap());
            }
        });
        let acc: u64 = today.accepted.values().sum();
        let rej: u64 = today.refused.values().sum();
        println!("day {day:2}  {}   {acc:3} accepted  {rej:2} refused", &when(noon(day))[..10]);
        // By time and device; each device's lines stay in the order they happened.
        today.lines.sort_by(|a, b| a.get(..35).cmp(&b.get(..35)));
        for line in &today.lines {
            println!("    {line}");
        }
        for (title, n) in &today.shown {
            println!("    ✉ {n:2} devices showed their owner \"{title}\"");
        }
        for (why, n) in &today.withheld {
            println!("    ✉ {n:2} devices held a notice back: {why}");
        }
        total.merge(today);
    }

    // The report.
    println!("\n== report ==");
    let acc: u64 = total.accepted.values().sum();
    let rej: u64 = total.refused.values().sum();
    println!("messages accepted: {acc}");
    for (k, n) in &total.accepted {
        println!("  {k:<24} {n:>5}");
    }
    println!("messages refused: {rej}");
    for (k, n) in &total.refused {
        println!("  {k:<24} {n:>5}");
    }
    println!("notices sealed and queued: {}", notices_sent.values().sum::<u64>());
    for (k, n) in &notices_sent {
        println!("  {n:>5}  {k}");
    }
    println!("notices the vendor held back: {}", notices_held.values().sum::<u64>());
    for (k, n) in &notices_held {
        println!("  {n:>5}  {k}");
    }
    let receipts: u64 = gadgets.iter().map(|g| g.receipts).sum();
    let shown: usize = gadgets.iter().map(|g| g.notices_shown.len()).sum();
    let withheld: u64 = gadgets.iter().map(|g| g.notices_withheld).sum();
    println!("devices verified {receipts} receipts, showed {shown} notices, held back {withheld}");

    println!("\nper device (the vendor's view, from http://{http}/api/devices):");
    let devices: serde_json::Value = serde_json::from_str(&http_get(http, "/api/devices").unwrap_or_default())?;
    println!(
        "  {:<16}  {:<15}  {:>3}  {:>5}  {:>7}  {:>8}  {:>8}  {:<15}",
        "device", "lifecycle", "rel", "epoch", "consent", "accepted", "refused", "role"
    );
    for d in devices.as_array().into_iter().flatten() {
        let id = d["id"].as_str().unwrap_or("?");
        let role = gadgets.iter().find(|g| short(g.id()) == id).map_or("?".into(), |g| format!("{:?}", g.role));
        println!(
            "  {:<16}  {:<15}  {:>3}  {:>5}  {:>7}  {:>8}  {:>8}  {:<15}",
            id,
            d["lifecycle"].as_str().unwrap_or("?"),
            d["relationship"].to_string(),
            d["epoch"].to_string(),
            format!("v{}", d["consent_version"]),
            d["accepted_since_start"].to_string(),
            d["refused_since_start"].to_string(),
            role
        );
    }
    println!("\nfinished in {:.1} s", started.elapsed().as_secs_f64());

    // The demo checks its own story, so CI notices if it stops being true.
    for reason in ["replay", "unauthentic", "unconsented", "stale-epoch", "decommissioned", "unknown-device"] {
        if !total.refused.contains_key(reason) {
            return Err(format!("expected a '{reason}' refusal").into());
        }
    }
    if notices_sent.is_empty() || notices_held.is_empty() || shown == 0 {
        return Err("expected notices both sent and held back".into());
    }
    drop(gadgets);
    if let Some(r) = running {
        if args.keep {
            println!("the fleet view stays up at http://{http}/ until Ctrl-C …");
            runtime.block_on(r.wait_for_signal());
        } else {
            runtime.block_on(r.shutdown());
            println!("the server stopped with the demo (`-- --keep` keeps the fleet view up)");
        }
    }
    if let Some(dir) = dir {
        std::fs::remove_dir_all(dir)?;
    }
    Ok(())
}
