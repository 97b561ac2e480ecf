//! A server on 127.0.0.1 in a temp dir, real devices that talk to it over
//! CoAP, and a minimal HTTP GET: shared by the server tests.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::std_instead_of_core
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rand_core::SeedableRng;
use spime::consent::{CategorySet, ConsentState, DataCategory, Grant, LocationPrecision, Purpose, SignedConsent};
use spime::device::outbox::{Outbox, record_len};
use spime::device::session::{Device, Identity, storage_capacity, storage_records};
use spime::device::storage::{NorStorage, SimFlash};
use spime::message::{self, CertificateBody, DeviceCertificate, FirmwareVersion};
use spime::seal::{DeviceKey, VendorKeys};
use spime::server::coap::{Client, MESSAGE_PATH, Reply};
use spime::server::{self, Config, Running};
use spime::vendor::{IngestConfig, Ingestor, RedbStore};
use spime::wire::DeviceId;

pub(crate) const N: usize = 4;
pub(crate) const REC: usize = record_len(message::MAX_SEALED_LEN);
pub(crate) const SECTORS: u16 = 6;
pub(crate) type Flash = SimFlash<{ SECTORS as usize * 4096 }, 4096>;
pub(crate) type Store = NorStorage<Flash>;
pub(crate) type Dev<'o> = Device<'o, Store, N, REC>;
pub(crate) type Ob = Outbox<N, REC>;

/// 2026-12-30 00:00 UTC.
pub(crate) const T0: u64 = 1_798_588_800;

pub(crate) fn vendor_keys() -> VendorKeys {
    VendorKeys::from_secrets(&[0x61; 32], &[0x62; 32])
}

pub(crate) fn storage() -> Store {
    NorStorage::new(Flash::new(), 0, SECTORS, u16::try_from(storage_records(N)).unwrap(), storage_capacity(REC))
        .unwrap()
}

pub(crate) fn rng(seed: u8) -> rand_chacha::ChaCha20Rng {
    rand_chacha::ChaCha20Rng::from_seed([seed; 32])
}

/// Device number `n`, with a certificate from the test vendor.
pub(crate) fn identity(n: u8) -> Identity {
    identity_issued(n, T0 - 86_400)
}

/// Device number `n`, its certificate issued at `issued_at`.
pub(crate) fn identity_issued(n: u8, issued_at: u64) -> Identity {
    let v = vendor_keys();
    let id = DeviceId([0xD0, 0, 0, 0, 0, 0, 0, n]);
    let key = DeviceKey::from_seed(id, &[n; 32]);
    let certificate = DeviceCertificate::issue(
        CertificateBody {
            device: id,
            device_key: key.public().to_bytes(),
            model: "kettle-9000".try_into().unwrap(),
            hardware_revision: 3,
            issued_at,
            not_after: None,
        },
        v.signing(),
    )
    .unwrap();
    Identity {
        key,
        certificate,
        firmware: FirmwareVersion { major: 1, minor: 4, patch: 2, build: 7 },
        vendor: v.public(),
    }
}

/// Usage counters for analytics and fault context for diagnostics; no location.
pub(crate) fn consent(version: u32, now: u64) -> SignedConsent {
    let mut s = ConsentState::essential_only(version, now, [7; 32]);
    s.set_grant(Grant {
        purpose: Purpose::DIAGNOSTICS,
        categories: CategorySet::EMPTY.with(DataCategory::DeviceHealth).with(DataCategory::FaultContext),
        location: LocationPrecision::None,
        expires_at: None,
    })
    .unwrap();
    s.set_grant(Grant {
        purpose: Purpose::USAGE_ANALYTICS,
        categories: CategorySet::EMPTY.with(DataCategory::UsageCounters),
        location: LocationPrecision::None,
        expires_at: Some(now + 60 * 86_400),
    })
    .unwrap();
    s.allow_channel(Purpose::PROACTIVE_SERVICE, spime::consent::Channel::App).unwrap();
    SignedConsent { state: s, owner: None }
}

/// A server over a fresh redb store in a temp dir, with a settable clock.
pub(crate) struct TestServer {
    pub(crate) running: Option<Running>,
    pub(crate) coap: SocketAddr,
    pub(crate) http: SocketAddr,
    pub(crate) dir: PathBuf,
    pub(crate) clock: Arc<AtomicU64>,
    pub(crate) runtime: tokio::runtime::Runtime,
}

impl TestServer {
    pub(crate) fn start(name: &str) -> TestServer {
        TestServer::start_with(name, |i| i)
    }

    /// A server whose pipeline `setup` configures (a keyring, for example).
    pub(crate) fn start_with(name: &str, setup: impl FnOnce(Ingestor<RedbStore>) -> Ingestor<RedbStore>) -> TestServer {
        TestServer::start_configured(name, setup, |c| c)
    }

    /// A server whose pipeline `setup` and whose `config` are changed from
    /// the defaults here.
    pub(crate) fn start_configured(
        name: &str,
        setup: impl FnOnce(Ingestor<RedbStore>) -> Ingestor<RedbStore>,
        config: impl FnOnce(Config) -> Config,
    ) -> TestServer {
        let dir = std::env::temp_dir().join(format!("spime-server-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("vendor.redb");
        let store = RedbStore::open(&file).unwrap();
        let ingestor =
            Arc::new(setup(Ingestor::new(store, vendor_keys(), IngestConfig { workers: 1, batch_verify: true })));
        let clock = Arc::new(AtomicU64::new(T0));
        let c = Arc::clone(&clock);
        let config = config(Config {
            coap: "127.0.0.1:0".parse().unwrap(),
            http: "127.0.0.1:0".parse().unwrap(),
            clock: Arc::new(move || c.load(Ordering::SeqCst)),
            store_file: Some(file),
            ..Config::default()
        });
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let running = runtime.block_on(server::start(ingestor, config)).unwrap();
        TestServer { coap: running.coap, http: running.http, running: Some(running), dir, clock, runtime }
    }

    pub(crate) fn set_time(&self, t: u64) {
        self.clock.store(t, Ordering::SeqCst);
    }

    pub(crate) fn client(&self) -> Client {
        Client::new(self.coap).unwrap()
    }

    pub(crate) fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            self.runtime.block_on(r.shutdown());
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends everything queued on `dev` to `/s`; acknowledges what the server
/// accepted, opens any receipt. Returns every reply in order.
pub(crate) fn deliver(client: &mut Client, dev: &mut Dev<'_>) -> Vec<Reply> {
    let queued: Vec<(u64, Vec<u8>)> =
        dev.queued_envelopes().unwrap().into_iter().map(|(m, e)| (m.counter, e)).collect();
    let mut replies = Vec::new();
    for (counter, envelope) in queued {
        let reply = client.post(MESSAGE_PATH, &envelope).unwrap();
        if reply.code == coap_lite::ResponseType::Changed {
            dev.ack(counter).unwrap();
            let kind = spime::seal::Envelope::parse(&reply.payload).map(|e| e.header.kind);
            if kind == Ok(spime::wire::Kind::RECEIPT) {
                dev.open_receipt(&reply.payload).unwrap();
            }
        }
        replies.push(reply);
    }
    replies
}

/// An HTTP/1.1 GET on loopback: (status, body).
pub(crate) fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    request(addr, &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"))
}

/// An HTTP/1.1 POST of JSON on loopback: (status, body).
pub(crate) fn post_json(addr: SocketAddr, path: &str, json: &str) -> (u16, String) {
    request(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
            json.len()
        ),
    )
}

fn request(addr: SocketAddr, raw: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { unchunk(body) } else { body.into() };
    (status, body)
}

fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
}

/// The system clock (for a `spime-vendor` process, which keeps real time).
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Writes the test vendor's keys as `dir/vendor.keys` (mode 0600).
pub(crate) fn write_vendor_keys(dir: &std::path::Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(spime::server::keyfile::SECRET_FILE);
    std::fs::write(&path, vendor_keys().to_bytes().as_slice()).unwrap();
    #[cfg(unix)]
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    path
}

/// A `spime-vendor serve` process: its addresses (read from what it
/// prints), and its log once it has exited.
pub(crate) struct Served {
    pub(crate) child: std::process::Child,
    pub(crate) coap: SocketAddr,
    pub(crate) http: SocketAddr,
    log: Option<std::thread::JoinHandle<String>>,
    pub(crate) start_log: String,
}

impl Served {
    /// Runs `spime-vendor serve ARGS` and waits until it prints where it listens.
    pub(crate) fn start(args: &[&str]) -> Served {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_spime-vendor"))
            .arg("serve")
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let (mut coap, mut http, mut start_log) = (None, None, String::new());
        while coap.is_none() || http.is_none() {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.wait();
                panic!("spime-vendor serve ended before listening:\n{start_log}");
            };
            start_log.push_str(&line);
            start_log.push('\n');
            let addr = |prefix: &str| -> Option<SocketAddr> {
                line.strip_prefix(prefix)?.split_whitespace().next()?.trim_end_matches('/').parse().ok()
            };
            coap = coap.or_else(|| addr("CoAP on udp://"));
            http = http.or_else(|| addr("fleet view on http://"));
        }
        // Keep draining stderr so the server never blocks on a full pipe.
        let log = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>().join("\n"));
        Served { child, coap: coap.unwrap(), http: http.unwrap(), log: Some(log), start_log }
    }

    /// Sends SIGTERM and waits: (exited successfully, everything it logged).
    #[cfg(unix)]
    pub(crate) fn terminate(mut self) -> (bool, String) {
        let pid = self.child.id().to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let status = self.child.wait().unwrap();
        let rest = self.log.take().unwrap().join().unwrap();
        (status.success(), format!("{}{rest}", self.start_log))
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        // A failed test must not leave the server running.
        if self.log.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What [`real_time_session`] did.
pub(crate) struct Session {
    /// The device id as hex.
    pub(crate) id: String,
    /// The last usage report it sent (accepted), for replays and decoding.
    pub(crate) usage: Vec<u8>,
}

/// Device `n` registers with a server that keeps real time and sends two
/// usage reports, over CoAP; every message must be acknowledged with 2.04
/// (the registration with a receipt that confirms the device's epoch).
pub(crate) fn real_time_session(coap: SocketAddr, n: u8) -> Session {
    use spime::device::metrics::{MetricDef, MetricKind, Metrics};
    use spime::device::session::StageHandle;
    let t = now();
    let mut ob = Ob::new();
    let mut dev = Dev::boot(identity_issued(n, t - 86_400), storage(), &mut ob).unwrap();
    let id = hex::encode(dev.device_id().0);
    let StageHandle::Unregistered(u) = dev.handle() else { panic!("a fresh device is unregistered") };
    u.register(&mut rng(n), consent(1, t - 7200)).unwrap();
    let mut client = Client::new(coap).unwrap();
    let replies = deliver(&mut client, &mut dev);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].code, coap_lite::ResponseType::Changed, "{:?}", String::from_utf8_lossy(&replies[0].payload));
    assert!(dev.epoch_confirmed(), "the registration's 2.04 carried the receipt");
    let mut usage = Vec::new();
    for (end, count) in [(t - 3600, 5), (t, 7)] {
        let mut m: Metrics<1> = Metrics::new(end - 3600);
        m.define(MetricDef { id: 1, category: DataCategory::UsageCounters, kind: MetricKind::Counter }).unwrap();
        m.increment(1, count).unwrap();
        let StageHandle::Registered(mut r) = dev.handle() else { panic!("registered") };
        r.report_window(Purpose::USAGE_ANALYTICS, m.take_window(end), end).unwrap().unwrap();
        usage = dev.queued_envelopes().unwrap().into_iter().next().unwrap().1;
        let replies = deliver(&mut client, &mut dev);
        assert_eq!(replies.len(), 1);
        assert_eq!(
            replies[0].code,
            coap_lite::ResponseType::Changed,
            "{:?}",
            String::from_utf8_lossy(&replies[0].payload)
        );
    }
    assert_eq!(dev.queued().count(), 0, "everything acknowledged");
    Session { id, usage }
}
