//! The vendor server (feature `server`): CoAP over UDP for devices
//! (SPEC.md §11), HTTP for operators (JSON, Prometheus `/metrics`,
//! `/healthz`) and server-rendered pages of the fleet at `/`.
//!
//! The `spime-vendor` binary is a thin command line over [`start`]; the
//! same function runs the server inside a test or the demo.
//!
//! ```no_run
//! use std::sync::Arc;
//! use spime::server::{self, Config};
//! use spime::vendor::{IngestConfig, Ingestor, RedbStore};
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let keys = server::keyfile::load("data".as_ref())?;
//! let store = RedbStore::open("data/vendor.redb")?;
//! let ingestor = Arc::new(Ingestor::new(store, keys, IngestConfig::default()));
//! let running = server::start(ingestor, Config::default()).await?;
//! println!("fleet view at http://{}/", running.http);
//! running.wait_for_signal().await;   // SIGINT/SIGTERM: finish the batch in flight, then stop
//! # Ok(()) }
//! ```

pub mod coap;
mod http;
pub mod keyfile;
pub mod stats;
mod view;

use core::net::SocketAddr;
use core::sync::atomic::{AtomicU32, Ordering};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::info;

use crate::message::Notice;
use crate::vendor::{Ingestor, SendError, Store};
use crate::wire::{DeviceId, Kind};

pub use stats::Stats;

/// A clock: Unix seconds.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock as a [`Clock`].
pub fn system_clock() -> Clock {
    Arc::new(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

/// How the server runs.
#[derive(Clone)]
pub struct Config {
    /// The UDP address for CoAP (port 0: any free port).
    pub coap: SocketAddr,
    /// The TCP address for HTTP (port 0: any free port).
    pub http: SocketAddr,
    /// The most messages ingested and committed as one batch.
    pub batch_max: usize,
    /// Requests that may wait for a batch; beyond, devices are told 5.03.
    pub queue: usize,
    /// Batches ingested at once, each on its own blocking thread (at least
    /// one). More than one pays over a store that counts its commits
    /// ([`crate::vendor::Transaction::commit_seq`]: `MemoryStore`,
    /// `FjallStore`), whose batches verify side by side; with one core per
    /// batch, set [`crate::vendor::IngestConfig::workers`] to 1
    /// (docs/benchmarks.md). Over other stores batches wait for each other.
    /// At most [`MAX_IN_FLIGHT`] are used.
    pub batches_in_flight: usize,
    /// The time the pipeline judges consent and records arrivals by.
    pub clock: Clock,
    /// The store file, for the store-size gauge (none for a memory store).
    pub store_file: Option<PathBuf>,
}

impl core::fmt::Debug for Config {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Config")
            .field("coap", &self.coap)
            .field("http", &self.http)
            .field("batch_max", &self.batch_max)
            .field("queue", &self.queue)
            .field("batches_in_flight", &self.batches_in_flight)
            .field("store_file", &self.store_file)
            .finish_non_exhaustive()
    }
}

impl Default for Config {
    /// CoAP on 127.0.0.1:5683, HTTP on 127.0.0.1:8080, batches of up to
    /// 256, one at a time, a queue of 4096, the system clock.
    fn default() -> Config {
        Config {
            coap: SocketAddr::from(([127, 0, 0, 1], 5683)),
            http: SocketAddr::from(([127, 0, 0, 1], 8080)),
            batch_max: 256,
            queue: 4096,
            batches_in_flight: 1,
            clock: system_clock(),
            store_file: None,
        }
    }
}

/// The most batches in flight ([`Config::batches_in_flight`] is clamped to it).
pub const MAX_IN_FLIGHT: usize = 1024;

/// Sealed notices waiting per device, at most this many each (older ones
/// are delivered first; beyond it [`Running::send_notice`] refuses).
pub const MAILBOX: usize = 8;

/// What the tasks share.
pub(crate) struct App<S> {
    pub(crate) ingestor: Arc<Ingestor<S>>,
    pub(crate) stats: Stats,
    pub(crate) config: Config,
    pub(crate) clock: Clock,
    /// Sealed notices waiting for their device's next request.
    pub(crate) mailbox: Mutex<HashMap<DeviceId, VecDeque<Vec<u8>>>>,
    /// The next notice id handed out over HTTP.
    pub(crate) notice_ids: AtomicU32,
}

impl<S> App<S> {
    /// A notice id for a notice that came without one.
    pub(crate) fn next_notice_id(&self) -> u32 {
        self.notice_ids.fetch_add(1, Ordering::Relaxed)
    }

    /// The next waiting notice for `device`.
    pub(crate) fn next_notice(&self, device: &DeviceId) -> Option<Vec<u8>> {
        let mut m = self.mailbox.lock().unwrap_or_else(PoisonError::into_inner);
        let q = m.get_mut(device)?;
        let n = q.pop_front();
        if q.is_empty() {
            m.remove(device);
        }
        n
    }
}

/// Seals notices into the mailbox (type-erased so [`Running`] is not generic).
pub(crate) trait Notices: Send + Sync {
    fn send(&self, device: &DeviceId, notice: &Notice) -> Result<(), NoticeError>;
}

impl<S: Store> Notices for App<S> {
    fn send(&self, device: &DeviceId, notice: &Notice) -> Result<(), NoticeError> {
        let mut m = self.mailbox.lock().unwrap_or_else(PoisonError::into_inner);
        if m.get(device).is_some_and(|q| q.len() >= MAILBOX) {
            return Err(NoticeError::MailboxFull);
        }
        let sealed = self.ingestor.seal_notice(device, notice, (self.clock)())?;
        m.entry(*device).or_default().push_back(sealed);
        Ok(())
    }
}

/// A notice was not queued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NoticeError {
    /// The owner's preferences hold it back, or the device cannot receive one.
    #[error(transparent)]
    Send(#[from] SendError),
    /// [`MAILBOX`] notices already wait for the device.
    #[error("{MAILBOX} notices already wait for this device")]
    MailboxFull,
}

/// The short name of a message kind, for logs, metrics and pages.
///
/// ```
/// assert_eq!(spime::server::kind_name(spime::wire::Kind::USAGE), "usage");
/// ```
pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::REGISTER => "register",
        Kind::USAGE => "usage",
        Kind::FAULT => "fault",
        Kind::CONSENT => "consent",
        Kind::TRANSFER => "transfer",
        Kind::DECOMMISSION => "decommission",
        Kind::RECEIPT => "receipt",
        Kind::NOTICE => "notice",
        Kind::KEY_UPDATE => "key-update",
        _ => "unknown",
    }
}

/// A running server. Dropping it stops the tasks too, without waiting for
/// them; [`Running::shutdown`] waits for the batches in flight. With a store
/// whose drop blocks (`PgStore`, feature `postgres`), call
/// [`Running::shutdown`] (or keep a clone of the ingestor's `Arc` and drop
/// it outside the runtime): a plain drop may release the store on an async
/// thread.
pub struct Running {
    /// Where CoAP listens.
    pub coap: SocketAddr,
    /// Where HTTP listens.
    pub http: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    notices: Arc<dyn Notices>,
}

impl core::fmt::Debug for Running {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Running").field("coap", &self.coap).field("http", &self.http).finish_non_exhaustive()
    }
}

impl Running {
    /// Seals `notice` for `device` now, if the owner's contact preferences
    /// allow it (SPEC §6.5; the notice is then recorded for frequency
    /// caps), and queues it: it travels as the payload of the device's next
    /// 2.04 that carries no receipt (SPEC §11.2).
    ///
    /// It reads and writes the store, so it blocks: call it outside the
    /// runtime or in [`tokio::task::spawn_blocking`] (the sync PostgreSQL
    /// client panics on an async thread).
    ///
    /// # Errors
    /// [`NoticeError::Send`] with the reason it is held back, or
    /// [`NoticeError::MailboxFull`].
    pub fn send_notice(&self, device: &DeviceId, notice: &Notice) -> Result<(), NoticeError> {
        self.notices.send(device, notice)
    }

    /// Stops: no more datagrams are received, the batches in flight are
    /// committed and answered, queued requests are left unanswered (their
    /// devices retransmit), HTTP finishes open requests. Returns when all
    /// tasks have ended.
    ///
    /// The server's last reference to the store is then released on
    /// tokio's blocking pool, not on an async thread: closing a store may
    /// block (the sync PostgreSQL client of `PgStore`, feature `postgres`,
    /// closes its connections on a runtime of its own, which panics on an
    /// async thread).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        // Every task has ended: this is the last reference to the App (and,
        // unless the caller kept one, to the Ingestor and its store).
        let notices = self.notices;
        let _ = tokio::task::spawn_blocking(move || drop(notices)).await;
        info!("server stopped");
    }

    /// Runs until SIGINT or SIGTERM, then [`Running::shutdown`].
    pub async fn wait_for_signal(self) {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return self.shutdown().await;
                }
            };
            tokio::select! {
                _ = ctrl_c => info!("SIGINT: shutting down"),
                _ = term.recv() => info!("SIGTERM: shutting down"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
        self.shutdown().await;
    }
}

/// Binds both sockets and starts the server's tasks on the current tokio runtime.
///
/// Any [`Store`] serves: every store call (the ingest of a batch, receipts,
/// notices, the operator pages and JSON) runs on tokio's blocking pool,
/// never on an async thread, so a blocking store such as
/// `PgStore` (feature `postgres`, the sync `postgres` client) is safe here.
/// Create the store before entering the runtime.
///
/// # Errors
/// When a socket cannot be bound.
pub async fn start<S: Store + 'static>(ingestor: Arc<Ingestor<S>>, config: Config) -> std::io::Result<Running> {
    // Which socket failed, in the error: "address in use" alone does not say.
    let at = |what: &str, addr: SocketAddr| {
        let what = alloc::format!("{what}{addr}");
        move |e: std::io::Error| std::io::Error::new(e.kind(), alloc::format!("{what}: {e}"))
    };
    let udp = UdpSocket::bind(config.coap).await.map_err(at("CoAP on udp://", config.coap))?;
    let tcp = TcpListener::bind(config.http).await.map_err(at("HTTP on tcp://", config.http))?;
    let (coap_addr, http_addr) = (udp.local_addr()?, tcp.local_addr()?);
    let config_clock_now = (config.clock)();
    let app = Arc::new(App {
        ingestor,
        stats: Stats::default(),
        clock: Arc::clone(&config.clock),
        config,
        mailbox: Mutex::default(),
        // Seeded from the clock so ids do not repeat across restarts.
        notice_ids: AtomicU32::new(u32::try_from((config_clock_now) % u64::from(u32::MAX)).unwrap_or(1)),
    });
    let (shutdown, rx) = watch::channel(false);
    let (queue_tx, queue_rx) = mpsc::channel(app.config.queue.max(1));
    let coap = coap::Coap::new(Arc::clone(&app), udp);
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(Arc::clone(&coap).receive_loop(queue_tx, rx.clone())));
    tasks.push(tokio::spawn(coap.ingest_loop(queue_rx, rx.clone())));
    let notices: Arc<dyn Notices> = app.clone();
    tasks.push(tokio::spawn(http::serve(app, tcp, rx)));
    info!(coap = %coap_addr, http = %http_addr, "spime vendor server listening");
    Ok(Running { coap: coap_addr, http: http_addr, shutdown, tasks, notices })
}
