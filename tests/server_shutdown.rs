//! Graceful shutdown with a batch in flight: the commit is held at a gate;
//! the server is told to stop while it waits; it does not finish until the
//! batch is committed, and the device gets its 2.04 for exactly what was
//! committed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::std_instead_of_core
)]

mod before_begin;
mod server_common;

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

use before_begin::{Before, BeforeBegin};
use coap_lite::ResponseType;
use server_common::*;
use spime::consent::ledger::LedgerEntry;
use spime::device::session::StageHandle;
use spime::seal::replay::ReplayWindow;
use spime::server::coap::{Client, MESSAGE_PATH};
use spime::server::{self, Config};
use spime::vendor::Store as _;
use spime::vendor::*;
use spime::wire::DeviceId;

/// A MemoryStore whose commits can be held: when armed, a commit reports
/// that it started and waits to be released.
#[derive(Default)]
struct Gated {
    inner: MemoryStore,
    gate: Mutex<Option<(Sender<()>, Receiver<()>)>>,
}

struct GatedTxn<'a> {
    inner: MemoryTxn<'a>,
    gate: &'a Mutex<Option<(Sender<()>, Receiver<()>)>>,
}

impl DeviceRegistry for GatedTxn<'_> {
    fn device(&mut self, d: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        self.inner.device(d)
    }
    fn put_device(&mut self, r: &DeviceRecord) -> Result<(), StoreError> {
        self.inner.put_device(r)
    }
}
impl ReplayWindows for GatedTxn<'_> {
    fn window(&mut self, d: &DeviceId) -> Result<ReplayWindow, StoreError> {
        self.inner.window(d)
    }
    fn put_window(&mut self, d: &DeviceId, w: &ReplayWindow) -> Result<(), StoreError> {
        self.inner.put_window(d, w)
    }
}
impl ConsentLedgerStore for GatedTxn<'_> {
    fn append_consent(&mut self, d: &DeviceId, e: &LedgerEntry) -> Result<(), StoreError> {
        self.inner.append_consent(d, e)
    }
    fn consent_entries(&mut self, d: &DeviceId) -> Result<Vec<LedgerEntry>, StoreError> {
        self.inner.consent_entries(d)
    }
}
impl MessageLog for GatedTxn<'_> {
    fn put_message(&mut self, m: &StoredMessage) -> Result<(), StoreError> {
        self.inner.put_message(m)
    }
    fn message(&mut self, d: &DeviceId, c: u64) -> Result<Option<StoredMessage>, StoreError> {
        self.inner.message(d, c)
    }
}
impl VendorCounters for GatedTxn<'_> {
    fn next_counter(&mut self, d: &DeviceId) -> Result<u64, StoreError> {
        self.inner.next_counter(d)
    }
}
impl NoticeLog for GatedTxn<'_> {
    fn record_notice(&mut self, n: &NoticeRecord) -> Result<(), StoreError> {
        self.inner.record_notice(n)
    }
    fn notices_since(&mut self, d: &DeviceId, p: spime::consent::Purpose, since: u64) -> Result<u32, StoreError> {
        self.inner.notices_since(d, p, since)
    }
}
impl DataErasure for GatedTxn<'_> {
    fn erase_messages(
        &mut self,
        d: &DeviceId,
        s: &ErasureScope,
    ) -> Result<Vec<(spime::consent::Purpose, u64)>, StoreError> {
        self.inner.erase_messages(d, s)
    }
    fn erase_notices(&mut self, d: &DeviceId, s: &ErasureScope) -> Result<u64, StoreError> {
        self.inner.erase_notices(d, s)
    }
}
impl Transaction for GatedTxn<'_> {
    fn commit(self) -> Result<(), StoreError> {
        if let Some((started, release)) = self.gate.lock().unwrap().take() {
            started.send(()).unwrap();
            release.recv().unwrap();
        }
        self.inner.commit()
    }
}

impl spime::vendor::Store for Gated {
    type Txn<'a> = GatedTxn<'a>;
    fn begin(&self) -> Result<GatedTxn<'_>, StoreError> {
        Ok(GatedTxn { inner: self.inner.begin()?, gate: &self.gate })
    }
    fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        self.inner.devices()
    }
    fn message_count(&self) -> Result<u64, StoreError> {
        self.inner.message_count()
    }
    fn device(&self, d: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        self.inner.device(d)
    }
    fn messages(&self, d: &DeviceId, q: &MessageQuery) -> Result<Vec<StoredMessage>, StoreError> {
        self.inner.messages(d, q)
    }
    fn consent_ledger(&self, d: &DeviceId) -> Result<Vec<LedgerEntry>, StoreError> {
        self.inner.consent_ledger(d)
    }
    fn notices(&self, d: &DeviceId) -> Result<Vec<NoticeRecord>, StoreError> {
        self.inner.notices(d)
    }
    fn scrub(&self) -> Result<(), StoreError> {
        self.inner.scrub()
    }
}

struct Release(Option<Sender<()>>);

impl Drop for Release {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

#[test]
fn shutdown_commits_and_answers_the_batch_in_flight_before_it_returns() {
    let ingestor =
        Arc::new(Ingestor::new(Gated::default(), vendor_keys(), IngestConfig { workers: 1, batch_verify: false }));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let config = Config {
        coap: "127.0.0.1:0".parse().unwrap(),
        http: "127.0.0.1:0".parse().unwrap(),
        clock: Arc::new(|| T0 + 3600),
        ..Config::default()
    };
    let running = runtime.block_on(server::start(Arc::clone(&ingestor), config)).unwrap();
    let (coap, http) = (running.coap, running.http);

    let mut ob = Ob::new();
    let mut dev = Dev::boot(identity(4), storage(), &mut ob).unwrap();
    let StageHandle::Unregistered(u) = dev.handle() else { panic!() };
    u.register(&mut rng(4), consent(1, T0)).unwrap();
    let mut client = Client::new(coap).unwrap();
    deliver(&mut client, &mut dev);
    assert_eq!(ingestor.store().message_count().unwrap(), 1);

    // A report whose batch commit is held at the gate.
    let (started_tx, started_rx) = channel();
    let (release_tx, release_rx) = channel();
    // Released on every path, so a failing assertion fails the test instead
    // of leaving the runtime waiting on the held commit.
    let release = Release(Some(release_tx));
    *ingestor.store().gate.lock().unwrap() = Some((started_tx, release_rx));
    let e = dev.queued().next();
    assert!(e.is_none());
    let mut m = spime::device::metrics::Metrics::<1>::new(T0);
    m.define(spime::device::metrics::MetricDef {
        id: 1,
        category: spime::consent::DataCategory::UsageCounters,
        kind: spime::device::metrics::MetricKind::Counter,
    })
    .unwrap();
    m.increment(1, 1).unwrap();
    let StageHandle::Registered(mut r) = dev.handle() else { panic!() };
    r.report_window(spime::consent::Purpose::USAGE_ANALYTICS, m.take_window(T0 + 3600), T0 + 3600).unwrap();
    let usage = dev.next_message().unwrap().unwrap().envelope.to_vec();
    let device = std::thread::spawn(move || client.post(MESSAGE_PATH, &usage).unwrap());
    started_rx.recv().unwrap();

    // Stop while the commit waits: HTTP closes, but shutdown cannot finish.
    let stopping = runtime.spawn(running.shutdown());
    let mut closed = false;
    for _ in 0..1000 {
        if std::net::TcpStream::connect(http).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(closed, "the shutdown signal reached the HTTP side");
    assert!(!stopping.is_finished(), "shutdown waits for the batch in flight");
    // (The store itself is locked by the waiting transaction: nothing else commits meanwhile.)

    // Released: committed, then acknowledged, then the server is down.
    drop(release);
    let reply = device.join().unwrap();
    assert_eq!(reply.code, ResponseType::Changed);
    runtime.block_on(stopping).unwrap();
    assert_eq!(ingestor.store().message_count().unwrap(), 2);
}

/// Before a `MemoryStore`'s `begin` (it counts commits, so batches verify
/// with no transaction open): once armed, holds the second `begin` after
/// arming (a batch's write, or a second batch's read) until one more
/// `begin` has started, or 30 s have passed; `overlapped` says which. Taken
/// one at a time, two batches could not get past the first one's write.
#[derive(Default)]
struct Overlap {
    /// Begins counted since arming (`None`: not armed).
    begins: Mutex<Option<usize>>,
    more: std::sync::Condvar,
    overlapped: std::sync::atomic::AtomicBool,
}

impl Before for Overlap {
    fn before(&self, _: &MemoryStore) {
        let mut begins = self.begins.lock().unwrap();
        if let Some(n) = begins.as_mut() {
            *n += 1;
            let me = *n;
            self.more.notify_all();
            if me == 2 {
                let (after, _) = self
                    .more
                    .wait_timeout_while(begins, std::time::Duration::from_secs(30), |b| b.is_some_and(|n| n <= me))
                    .unwrap();
                self.overlapped.store(after.is_some_and(|n| n > me), std::sync::atomic::Ordering::SeqCst);
            }
        }
    }
}

/// With two batches in flight over a store that counts commits, a second
/// batch is read while the first has verified and not yet written: the
/// batches overlap (with one in flight, the first would wait for the second
/// forever, here 30 s, and the test fails). Both devices get their 2.04 and
/// both reports are kept.
#[test]
fn two_batches_in_flight_verify_at_once() {
    let ingestor = Arc::new(Ingestor::new(
        BeforeBegin::new(Overlap::default()),
        vendor_keys(),
        IngestConfig { workers: 1, batch_verify: true },
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let config = Config {
        coap: "127.0.0.1:0".parse().unwrap(),
        http: "127.0.0.1:0".parse().unwrap(),
        clock: Arc::new(|| T0 + 3600),
        batch_max: 1,
        batches_in_flight: 2,
        ..Config::default()
    };
    let running = runtime.block_on(server::start(Arc::clone(&ingestor), config)).unwrap();
    let mut obs: Vec<Ob> = (0..2).map(|_| Ob::new()).collect();
    let mut devs: Vec<Dev<'_>> =
        obs.iter_mut().zip(40u8..).map(|(ob, n)| Dev::boot(identity(n), storage(), ob).unwrap()).collect();
    let mut usages = Vec::new();
    for (dev, n) in devs.iter_mut().zip(40u8..) {
        let StageHandle::Unregistered(u) = dev.handle() else { panic!() };
        u.register(&mut rng(n), consent(1, T0)).unwrap();
        deliver(&mut Client::new(running.coap).unwrap(), dev);
        let mut m = spime::device::metrics::Metrics::<1>::new(T0);
        m.define(spime::device::metrics::MetricDef {
            id: 1,
            category: spime::consent::DataCategory::UsageCounters,
            kind: spime::device::metrics::MetricKind::Counter,
        })
        .unwrap();
        m.increment(1, 1).unwrap();
        let StageHandle::Registered(mut r) = dev.handle() else { panic!() };
        r.report_window(spime::consent::Purpose::USAGE_ANALYTICS, m.take_window(T0 + 3600), T0 + 3600).unwrap();
        usages.push(dev.next_message().unwrap().unwrap().envelope.to_vec());
    }
    assert_eq!(ingestor.store().message_count().unwrap(), 2);
    *ingestor.store().before.begins.lock().unwrap() = Some(0);
    let coap = running.coap;
    let replies: Vec<_> = std::thread::scope(|s| {
        let posts: Vec<_> =
            usages.iter().map(|u| s.spawn(move || Client::new(coap).unwrap().post(MESSAGE_PATH, u).unwrap())).collect();
        posts.into_iter().map(|p| p.join().unwrap()).collect()
    });
    assert!(replies.iter().all(|r| r.code == ResponseType::Changed));
    assert!(
        ingestor.store().before.overlapped.load(std::sync::atomic::Ordering::SeqCst),
        "the batches did not overlap"
    );
    assert_eq!(ingestor.store().message_count().unwrap(), 4);
    runtime.block_on(running.shutdown());
}
