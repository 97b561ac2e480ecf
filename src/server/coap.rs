//! The CoAP binding (SPEC.md §11): devices POST sealed envelopes to `/s`
//! or spime chunks to `/c`; the response code is the acknowledgement and
//! its payload carries any receipt for the device.
//!
//! One task receives datagrams into a fixed buffer, parses them with
//! `coap_lite`, answers what it can refuse at once, and queues the rest
//! (a bounded queue: when full, 5.03 with Max-Age 1). A second task takes
//! whatever is queued as one batch, runs [`crate::vendor::Ingestor::ingest_batch`] (which
//! commits before returning), seals receipts, and only then answers: a
//! 2.04 is never sent for anything uncommitted. With
//! [`super::Config::batches_in_flight`] above one, it starts the next batch
//! while earlier ones are still being ingested.

use core::net::SocketAddr;
use core::sync::atomic::{AtomicU16, Ordering};
use core::time::Duration;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use coap_lite::{CoapOption, ContentFormat, MessageClass, MessageType, Packet, RequestType, ResponseType};
use tokio::net::UdpSocket;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::vendor::link::Reassembly;
use crate::vendor::{Event, IngestError, Store};
use crate::wire::Header;

use super::{App, kind_name};

/// The resource devices POST whole sealed envelopes to.
pub const MESSAGE_PATH: &str = "s";
/// The resource devices POST spime chunks (SPEC §7) to.
pub const CHUNK_PATH: &str = "c";
/// The longest datagram read; longer ones are dropped and counted as malformed.
pub const MAX_DATAGRAM: usize = 1472;
/// How long a response is kept to answer a retransmission (RFC 7252
/// EXCHANGE_LIFETIME).
pub const EXCHANGE_LIFETIME: Duration = Duration::from_secs(247);
/// Responses kept for retransmissions at most (oldest dropped first).
pub const DEDUP_CAPACITY: usize = 8192;
/// Seconds after which a partly received chunked message is dropped.
pub const CHUNK_TIMEOUT: u64 = 60;

/// The CoAP response code for a refusal (SPEC §11.4).
///
/// ```
/// use spime::server::coap::response_code;
/// use spime::vendor::IngestError;
/// use coap_lite::ResponseType;
/// assert_eq!(response_code(&IngestError::UnknownDevice), ResponseType::NotFound);
/// ```
pub const fn response_code(e: &IngestError) -> ResponseType {
    match e {
        IngestError::Decode(_) | IngestError::Chunk(_) | IngestError::WrongDirection(_) => ResponseType::BadRequest,
        IngestError::Unauthentic | IngestError::WeakKey | IngestError::CertificateMismatch => {
            ResponseType::Unauthorized
        }
        IngestError::Replay(_) => ResponseType::Conflict,
        IngestError::UnknownDevice => ResponseType::NotFound,
        IngestError::StaleEpoch { .. }
        | IngestError::UnopenedEpoch { .. }
        | IngestError::AwaitingRegistration
        | IngestError::VendorKeyRetired { .. } => ResponseType::PreconditionFailed,
        IngestError::Unconsented(_)
        | IngestError::Consent(_)
        | IngestError::Decommissioned
        | IngestError::Revoked
        | IngestError::CertificateInvalid(_) => ResponseType::Forbidden,
        // Throttled: nothing was recorded; the device offers its key again.
        IngestError::Storage(_) | IngestError::Throttled => ResponseType::ServiceUnavailable,
    }
}

/// The diagnostic payload of a refusal: `"<code> <reason>: <detail>"`, the
/// SPEC §10.1 number first so a device can act on it without parsing words.
pub fn diagnostic(e: &IngestError) -> String {
    format!("{} {}: {e}", e.code(), e.reason())
}

/// A request waiting for its batch.
pub(super) struct Job {
    peer: SocketAddr,
    confirmable: bool,
    message_id: u16,
    token: Vec<u8>,
    envelope: Vec<u8>,
}

enum Cached {
    /// Queued or in a batch: a retransmission is dropped (the answer follows).
    Pending,
    /// The answer, sent again for a retransmission.
    Answered(Vec<u8>),
}

/// Recent exchanges by (peer, message id), bounded.
#[derive(Default)]
struct Dedup {
    map: HashMap<(SocketAddr, u16), (Instant, Cached)>,
    order: VecDeque<((SocketAddr, u16), Instant)>,
}

impl Dedup {
    fn expire(&mut self, now: Instant) {
        while let Some((key, at)) = self.order.front().copied() {
            if self.order.len() <= DEDUP_CAPACITY && now.duration_since(at) < EXCHANGE_LIFETIME {
                break;
            }
            self.order.pop_front();
            if self.map.get(&key).is_some_and(|(t, _)| *t == at) {
                self.map.remove(&key);
            }
        }
    }

    fn insert(&mut self, key: (SocketAddr, u16), value: Cached, now: Instant) {
        self.map.insert(key, (now, value));
        self.order.push_back((key, now));
        self.expire(now);
    }
}

/// Builds a response datagram to a request.
fn respond(
    confirmable: bool,
    message_id: u16,
    token: &[u8],
    code: ResponseType,
    format: Option<ContentFormat>,
    payload: Vec<u8>,
    next_id: &AtomicU16,
) -> Vec<u8> {
    let mut p = Packet::new();
    if confirmable {
        p.header.set_type(MessageType::Acknowledgement);
        p.header.message_id = message_id;
    } else {
        p.header.set_type(MessageType::NonConfirmable);
        p.header.message_id = next_id.fetch_add(1, Ordering::Relaxed);
    }
    p.header.code = MessageClass::Response(code);
    p.set_token(token.to_vec());
    if let Some(f) = format {
        p.set_content_format(f);
    }
    if code == ResponseType::ServiceUnavailable {
        p.add_option(CoapOption::MaxAge, vec![1]);
    }
    p.payload = payload;
    p.to_bytes().unwrap_or_default()
}

/// The CoAP side of a running server.
pub(super) struct Coap<S> {
    pub(super) app: Arc<App<S>>,
    pub(super) socket: Arc<UdpSocket>,
    dedup: Mutex<Dedup>,
    next_id: AtomicU16,
}

impl<S: Store + 'static> Coap<S> {
    pub(super) fn new(app: Arc<App<S>>, socket: UdpSocket) -> Arc<Coap<S>> {
        Arc::new(Coap {
            app,
            socket: Arc::new(socket),
            dedup: Mutex::new(Dedup::default()),
            next_id: AtomicU16::new(0x5000),
        })
    }

    fn dedup(&self) -> std::sync::MutexGuard<'_, Dedup> {
        self.dedup.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn send(&self, peer: SocketAddr, bytes: &[u8]) {
        if let Err(e) = self.socket.send_to(bytes, peer).await {
            warn!(%peer, error = %e, "coap send failed");
        }
    }

    /// Answers a request at once (refusals before ingest) and remembers the answer.
    async fn answer(&self, peer: SocketAddr, req: &Packet, code: ResponseType, text: &str) {
        let confirmable = req.header.get_type() == MessageType::Confirmable;
        let bytes = respond(
            confirmable,
            req.header.message_id,
            req.get_token(),
            code,
            Some(ContentFormat::TextPlain),
            text.as_bytes().to_vec(),
            &self.next_id,
        );
        self.dedup().insert((peer, req.header.message_id), Cached::Answered(bytes.clone()), Instant::now());
        self.send(peer, &bytes).await;
    }

    /// Receives until `shutdown`; queues requests for [`Coap::ingest_loop`].
    pub(super) async fn receive_loop(self: Arc<Self>, queue: mpsc::Sender<Job>, mut shutdown: watch::Receiver<bool>) {
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        let mut chunks: Reassembly<SocketAddr> = Reassembly::new(CHUNK_TIMEOUT);
        let mut last_expire = 0;
        loop {
            let (n, peer) = tokio::select! {
                _ = shutdown.changed() => break,
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok(x) => x,
                    Err(e) => { warn!(error = %e, "coap receive failed"); continue; }
                },
            };
            let stats = &self.app.stats;
            stats.datagrams.fetch_add(1, Ordering::Relaxed);
            let Some(datagram) = buf.get(..n).filter(|_| n <= MAX_DATAGRAM) else {
                stats.malformed.fetch_add(1, Ordering::Relaxed);
                debug!(%peer, "datagram too long, dropped");
                continue;
            };
            let Ok(req) = Packet::from_bytes(datagram) else {
                stats.malformed.fetch_add(1, Ordering::Relaxed);
                debug!(%peer, "not a CoAP message, dropped");
                continue;
            };
            let now = (self.app.clock)();
            if now.saturating_sub(last_expire) >= CHUNK_TIMEOUT {
                chunks.expire(now);
                last_expire = now;
            }
            self.request(peer, req, &queue, &mut chunks, now).await;
        }
        info!("coap: stopped receiving");
    }

    async fn request(
        &self,
        peer: SocketAddr,
        req: Packet,
        queue: &mpsc::Sender<Job>,
        chunks: &mut Reassembly<SocketAddr>,
        now: u64,
    ) {
        let stats = &self.app.stats;
        let confirmable = req.header.get_type() == MessageType::Confirmable;
        let message_id = req.header.message_id;
        match req.header.code {
            MessageClass::Request(_) => {}
            MessageClass::Empty if confirmable => {
                // A CoAP ping: answered with a Reset (RFC 7252 §4.3).
                let mut rst = Packet::new();
                rst.header.set_type(MessageType::Reset);
                rst.header.message_id = message_id;
                self.send(peer, &rst.to_bytes().unwrap_or_default()).await;
                return;
            }
            _ => {
                stats.malformed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        if matches!(req.header.get_type(), MessageType::Acknowledgement | MessageType::Reset) {
            stats.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // A retransmission: the same answer again, or none while pending.
        let cached = match self.dedup().map.get(&(peer, message_id)) {
            Some((_, Cached::Answered(b))) => Some(Some(b.clone())),
            Some((_, Cached::Pending)) => Some(None),
            None => None,
        };
        if let Some(answer) = cached {
            stats.duplicates.fetch_add(1, Ordering::Relaxed);
            if let Some(b) = answer {
                self.send(peer, &b).await;
            }
            return;
        }
        let path: Vec<&[u8]> =
            req.get_option(CoapOption::UriPath).map(|l| l.iter().map(Vec::as_slice).collect()).unwrap_or_default();
        let resource = match path.as_slice() {
            [p] if *p == MESSAGE_PATH.as_bytes() => MESSAGE_PATH,
            [p] if *p == CHUNK_PATH.as_bytes() => CHUNK_PATH,
            _ => {
                stats.bad_requests.fetch_add(1, Ordering::Relaxed);
                return self.answer(peer, &req, ResponseType::NotFound, "no such resource; POST to /s or /c").await;
            }
        };
        if req.header.code != MessageClass::Request(RequestType::Post) {
            stats.bad_requests.fetch_add(1, Ordering::Relaxed);
            return self.answer(peer, &req, ResponseType::MethodNotAllowed, "only POST").await;
        }
        let format_ok = match req.get_option(CoapOption::ContentFormat) {
            None => true,
            Some(values) => {
                values.len() == 1 && req.get_content_format() == Some(ContentFormat::ApplicationOctetStream)
            }
        };
        if !format_ok {
            stats.bad_requests.fetch_add(1, Ordering::Relaxed);
            return self
                .answer(peer, &req, ResponseType::UnsupportedContentFormat, "content format must be 42 (octet-stream)")
                .await;
        }
        if req.payload.is_empty() {
            stats.bad_requests.fetch_add(1, Ordering::Relaxed);
            return self.answer(peer, &req, ResponseType::BadRequest, "empty payload").await;
        }
        let token = req.get_token().to_vec();
        let envelope = if resource == CHUNK_PATH {
            match chunks.push(&peer, now, &req.payload) {
                Ok(Some(m)) => m,
                Ok(None) => return self.answer(peer, &req, ResponseType::Continue, "").await,
                Err(e) => {
                    stats.refused(None, e.reason(), e.code(), e.to_string(), now);
                    return self.answer(peer, &req, response_code(&e), &diagnostic(&e)).await;
                }
            }
        } else {
            req.payload
        };
        let job = Job { peer, confirmable, message_id, token, envelope };
        self.dedup().insert((peer, message_id), Cached::Pending, Instant::now());
        if let Err(e) = queue.try_send(job) {
            let job = match e {
                mpsc::error::TrySendError::Full(j) | mpsc::error::TrySendError::Closed(j) => j,
            };
            stats.overloaded.fetch_add(1, Ordering::Relaxed);
            self.dedup().map.remove(&(peer, message_id));
            let bytes = respond(
                job.confirmable,
                job.message_id,
                &job.token,
                ResponseType::ServiceUnavailable,
                Some(ContentFormat::TextPlain),
                b"busy; retry".to_vec(),
                &self.next_id,
            );
            self.send(peer, &bytes).await;
        }
    }

    /// Takes queued requests as batches, ingests and commits each, then
    /// answers; up to [`super::Config::batches_in_flight`] batches at once.
    /// Returns when the queue closes (the receiver stopped) and is drained,
    /// or at `shutdown` after the batches in flight.
    pub(super) async fn ingest_loop(
        self: Arc<Self>,
        mut queue: mpsc::Receiver<Job>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let max = self.app.config.batch_max.max(1);
        let slots = Arc::new(Semaphore::new(self.app.config.batches_in_flight.clamp(1, super::MAX_IN_FLIGHT)));
        let mut running = JoinSet::new();
        loop {
            // A free slot first: a batch is gathered only when it can start,
            // so that it takes whatever queued meanwhile.
            let slot = tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                s = Arc::clone(&slots).acquire_owned() => match s { Ok(s) => s, Err(_) => break },
            };
            let first = tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                j = queue.recv() => match j { Some(j) => j, None => break },
            };
            let mut jobs = vec![first];
            while jobs.len() < max {
                match queue.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            let this = Arc::clone(&self);
            running.spawn(async move {
                this.run_batch(jobs).await;
                drop(slot);
            });
            while let Some(done) = running.try_join_next() {
                failed(done);
            }
        }
        // The batches in flight commit and answer before this returns.
        while let Some(done) = running.join_next().await {
            failed(done);
        }
        // Whatever is still queued was never ingested: no answer, the device retransmits.
        let mut dropped = 0usize;
        while queue.try_recv().is_ok() {
            dropped += 1;
        }
        info!(unanswered = dropped, "coap: ingest stopped");
    }

    /// Ingests one batch on a blocking thread, then answers each job. Its
    /// jobs stay pending in the dedup cache if it fails: a retransmission
    /// is dropped until the entry expires, and the device tries again.
    async fn run_batch(&self, jobs: Vec<Job>) {
        let now = (self.app.clock)();
        let app = Arc::clone(&self.app);
        let started = Instant::now();
        let (jobs, answers) = match tokio::task::spawn_blocking(move || {
            let answers = app.ingest(jobs.iter().map(|j| j.envelope.as_slice()), now);
            (jobs, answers)
        })
        .await
        {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "ingest task failed; batch not acknowledged");
                return;
            }
        };
        self.app.stats.batch(jobs.len(), started.elapsed().as_secs_f64());
        for (job, (code, format, payload)) in jobs.into_iter().zip(answers) {
            let bytes = respond(job.confirmable, job.message_id, &job.token, code, format, payload, &self.next_id);
            self.dedup().insert((job.peer, job.message_id), Cached::Answered(bytes.clone()), Instant::now());
            self.send(job.peer, &bytes).await;
        }
    }
}

/// Logs a batch task that panicked or was cancelled.
fn failed(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        warn!(error = %e, "batch task failed; its requests were not answered");
    }
}

impl<S: Store> App<S> {
    /// Ingests one batch and returns one CoAP answer per message:
    /// (code, content format, payload).
    fn ingest<'a>(
        &self,
        envelopes: impl Iterator<Item = &'a [u8]>,
        now: u64,
    ) -> Vec<(ResponseType, Option<ContentFormat>, Vec<u8>)> {
        let envelopes: Vec<&[u8]> = envelopes.collect();
        let outcomes = self.ingestor.ingest_batch(&envelopes, now);
        envelopes
            .iter()
            .zip(outcomes)
            .map(|(bytes, outcome)| match outcome {
                Ok(acc) => {
                    self.stats.accepted(&acc.device, kind_name(acc.kind), now);
                    debug!(device = %hex::encode(acc.device.0), counter = acc.counter, kind = kind_name(acc.kind), "accepted");
                    // A message that offers an ephemeral key comes from a device whose
                    // epoch is unconfirmed (SPEC §3.1): answer every such offer, so a
                    // lost receipt is replaced by the next one.
                    let offers_key = Header::parse(bytes).is_ok_and(|(h, _)| h.ephemeral.is_some());
                    let wants_receipt = acc.opened_epoch.is_some()
                        || offers_key
                        || matches!(
                            acc.event,
                            Event::Registered { .. } | Event::ConsentChanged { .. } | Event::ConsentRepeated { .. }
                        );
                    if wants_receipt {
                        match self.ingestor.seal_receipt(&acc.device) {
                            Ok(r) => {
                                self.stats.receipts.fetch_add(1, Ordering::Relaxed);
                                return (ResponseType::Changed, Some(ContentFormat::ApplicationOctetStream), r);
                            }
                            Err(e) => debug!(error = %e, "no receipt"),
                        }
                    }
                    // Notices first, so a device that cannot learn keys (no VCA.pub, older
                    // firmware) still gets them while an older vendor key is live; a
                    // device whose epoch uses an older key gets the new one when no
                    // notice waits (SPEC §11.2).
                    if let Some(n) = self.next_notice(&acc.device) {
                        return (ResponseType::Changed, Some(ContentFormat::ApplicationOctetStream), n);
                    }
                    if acc.key_update_due {
                        match self.ingestor.seal_key_update(&acc.device, now) {
                            Ok(u) => return (ResponseType::Changed, Some(ContentFormat::ApplicationOctetStream), u),
                            Err(e) => debug!(error = %e, "no key update"),
                        }
                    }
                    (ResponseType::Changed, None, Vec::new())
                }
                Err(e) => {
                    let device = Header::parse(bytes).ok().map(|(h, _)| h.device);
                    debug!(device = ?device.map(|d| hex::encode(d.0)), reason = e.reason(), "refused");
                    self.stats.refused(device.as_ref(), e.reason(), e.code(), e.to_string(), now);
                    // A device stranded on a retired vendor key gets the new key with the
                    // refusal (SPEC §11.2): it can take no other way to it.
                    if let (IngestError::VendorKeyRetired { .. }, Some(d)) = (&e, &device)
                        && let Ok(u) = self.ingestor.seal_key_update(d, now)
                    {
                        return (response_code(&e), Some(ContentFormat::ApplicationOctetStream), u);
                    }
                    (response_code(&e), Some(ContentFormat::TextPlain), diagnostic(&e).into_bytes())
                }
            })
            .collect()
    }
}

/// Builds a confirmable CoAP POST of `payload` to `path` (for clients,
/// tests and the demo).
///
/// ```
/// use spime::server::coap::{post, MESSAGE_PATH};
/// let bytes = post(MESSAGE_PATH, 7, &[1, 2], b"sealed envelope", true);
/// let p = coap_lite::Packet::from_bytes(&bytes).unwrap();
/// assert_eq!(p.header.message_id, 7);
/// assert_eq!(p.payload, b"sealed envelope");
/// ```
pub fn post(path: &str, message_id: u16, token: &[u8], payload: &[u8], confirmable: bool) -> Vec<u8> {
    let mut p = Packet::new();
    p.header.set_type(if confirmable { MessageType::Confirmable } else { MessageType::NonConfirmable });
    p.header.code = MessageClass::Request(RequestType::Post);
    p.header.message_id = message_id;
    p.set_token(token.to_vec());
    p.add_option(CoapOption::UriPath, path.as_bytes().to_vec());
    p.set_content_format(ContentFormat::ApplicationOctetStream);
    p.payload = payload.to_vec();
    p.to_bytes().unwrap_or_default()
}

/// A response as a device sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The CoAP response code.
    pub code: ResponseType,
    /// Content-Format 42 (a sealed vendor message) or 0 (a diagnostic).
    pub format: Option<ContentFormat>,
    /// The payload.
    pub payload: Vec<u8>,
}

impl Reply {
    /// The §10.1 code of a refusal's diagnostic payload, if any.
    pub fn refusal_code(&self) -> Option<u16> {
        if !self.code.is_error() {
            return None;
        }
        core::str::from_utf8(&self.payload).ok()?.split(' ').next()?.parse().ok()
    }
}

/// A blocking CoAP client for one server: confirmable POSTs with RFC 7252
/// retransmission (ACK_TIMEOUT 2 s doubling, MAX_RETRANSMIT 4). For tests,
/// tools and the demo; firmware uses its own CoAP stack.
#[derive(Debug)]
pub struct Client {
    socket: std::net::UdpSocket,
    server: SocketAddr,
    next_id: u16,
}

impl Client {
    /// A client on an ephemeral local port, talking to `server`.
    ///
    /// # Errors
    /// When no socket can be bound.
    pub fn new(server: SocketAddr) -> std::io::Result<Client> {
        let local: SocketAddr =
            if server.is_ipv4() { SocketAddr::from(([0, 0, 0, 0], 0)) } else { SocketAddr::from(([0u16; 8], 0)) };
        let socket = std::net::UdpSocket::bind(local)?;
        Ok(Client { socket, server, next_id: 1 })
    }

    /// The local address (the link the server sees).
    ///
    /// # Errors
    /// From the socket.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Sends raw bytes (for tests of malformed input).
    ///
    /// # Errors
    /// From the socket.
    pub fn send_raw(&self, bytes: &[u8]) -> std::io::Result<()> {
        self.socket.send_to(bytes, self.server).map(|_| ())
    }

    /// POSTs `payload` to `path` as a confirmable request and waits for the
    /// piggybacked response.
    ///
    /// # Errors
    /// [`std::io::ErrorKind::TimedOut`] after the last retransmission.
    pub fn post(&mut self, path: &str, payload: &[u8]) -> std::io::Result<Reply> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.post_with_id(path, payload, id)
    }

    /// [`Client::post`] with a chosen message id (a retransmission reuses one).
    ///
    /// # Errors
    /// As [`Client::post`].
    pub fn post_with_id(&mut self, path: &str, payload: &[u8], message_id: u16) -> std::io::Result<Reply> {
        let token = message_id.to_be_bytes();
        let request = post(path, message_id, &token, payload, true);
        let mut timeout = Duration::from_secs(2);
        let mut buf = vec![0u8; 2048];
        for _ in 0..=4 {
            self.socket.send_to(&request, self.server)?;
            let deadline = Instant::now() + timeout;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                self.socket.set_read_timeout(Some(left))?;
                let n = match self.socket.recv_from(&mut buf) {
                    Ok((n, from)) if from == self.server => n,
                    Ok(_) => continue,
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                        break;
                    }
                    Err(e) => return Err(e),
                };
                let Ok(p) = Packet::from_bytes(buf.get(..n).unwrap_or_default()) else { continue };
                if p.header.message_id != message_id || p.get_token() != token {
                    continue;
                }
                if let MessageClass::Response(code) = p.header.code {
                    return Ok(Reply { code, format: p.get_content_format(), payload: p.payload });
                }
            }
            timeout *= 2;
        }
        Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no CoAP response"))
    }
}
