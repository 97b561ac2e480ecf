//! HTTP for operators: JSON under `/api`, `/metrics`, `/healthz`, and the
//! server-rendered fleet view at `/` and `/devices/{id}`.

use core::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::codec;
use crate::consent::ledger::{ConsentLedger, LedgerEntry};
use crate::consent::{Channel, Purpose};
use crate::message::{Fault, Notice, NoticeKind, Usage};
use crate::vendor::{
    ConsentLedgerStore, DeviceRecord, DeviceRegistry, Lifecycle, MessageLog, ReplayWindows, Store, StoredMessage,
};
use crate::wire::{DeviceId, Kind};

use super::view::{bars, consent_words, esc, utc};
use super::{App, NoticeError, Notices, kind_name};

/// Messages shown per device (the most recent).
const RECENT_MESSAGES: u64 = 128;

type Shared<S> = State<Arc<App<S>>>;

pub(super) async fn serve<S: Store + 'static>(app: Arc<App<S>>, tcp: TcpListener, mut shutdown: watch::Receiver<bool>) {
    let router = Router::new()
        .route("/", get(fleet_page::<S>))
        .route("/devices/{id}", get(device_page::<S>))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics::<S>))
        .route("/api/devices", get(api_devices::<S>))
        .route("/api/devices/{id}", get(api_device::<S>))
        .route("/api/devices/{id}/ledger", get(api_ledger::<S>))
        .route("/api/devices/{id}/messages", get(api_messages::<S>))
        .route("/api/devices/{id}/notices", post(api_notice::<S>))
        .route("/api/refusals", get(api_refusals::<S>))
        .with_state(app);
    let stop = async move {
        let _ = shutdown.changed().await;
    };
    if let Err(e) = axum::serve(tcp, router).with_graceful_shutdown(stop).await {
        warn!(error = %e, "http server failed");
    }
    info!("http: stopped");
}

/// An error page or JSON error.
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn parse_id(s: &str) -> Result<DeviceId, Failure> {
    let mut id = [0u8; 8];
    hex::decode_to_slice(s, &mut id)
        .map_err(|_| Failure(StatusCode::BAD_REQUEST, "a device id is 16 hex digits".into()))?;
    Ok(DeviceId(id))
}

/// Runs a store query off the async threads.
async fn query<S: Store + 'static, T: Send + 'static>(
    app: &Arc<App<S>>,
    f: impl FnOnce(&App<S>) -> Result<T, String> + Send + 'static,
) -> Result<T, Failure> {
    let app = Arc::clone(app);
    tokio::task::spawn_blocking(move || f(&app))
        .await
        .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e))
}

/// Everything the device page and its JSON show.
struct DeviceView {
    record: DeviceRecord,
    ledger: Vec<LedgerEntry>,
    /// Ok, or why the hash chain does not verify.
    chain: Result<(), String>,
    /// Most recent first.
    messages: Vec<StoredMessage>,
}

impl<S: Store> App<S> {
    fn device_view(&self, id: DeviceId) -> Result<Option<DeviceView>, String> {
        let mut tx = self.ingestor.store().begin().map_err(|e| e.to_string())?;
        let Some(record) = tx.device(&id).map_err(|e| e.to_string())? else { return Ok(None) };
        let ledger = tx.consent_entries(&id).map_err(|e| e.to_string())?;
        let chain = ConsentLedger::from_entries(id, ledger.clone()).map(|_| ()).map_err(|e| e.to_string());
        let (highest, seen) = tx.window(&id).map_err(|e| e.to_string())?.parts();
        let mut messages = Vec::new();
        if seen != 0 {
            let lowest = highest.saturating_sub(RECENT_MESSAGES - 1);
            for c in (lowest..=highest).rev() {
                if let Some(m) = tx.message(&id, c).map_err(|e| e.to_string())? {
                    messages.push(m);
                }
            }
        }
        // Read only: dropping the transaction discards nothing.
        drop(tx);
        Ok(Some(DeviceView { record, ledger, chain, messages }))
    }
}

fn lifecycle(l: Lifecycle) -> &'static str {
    match l {
        Lifecycle::Active => "active",
        Lifecycle::Transferred => "transferred",
        Lifecycle::Decommissioned => "decommissioned",
    }
}

fn device_json<S>(app: &App<S>, r: &DeviceRecord) -> Value {
    let s = app.stats.device(&r.device);
    json!({
        "id": hex::encode(r.device.0),
        "model": r.certificate.body.model.as_str(),
        "lifecycle": lifecycle(r.lifecycle),
        "relationship": r.relationship,
        "epoch": r.epoch(),
        "firmware": format!("{}.{}.{}+{}", r.firmware.major, r.firmware.minor, r.firmware.patch, r.firmware.build),
        "consent_version": r.consent.state.version,
        "registered_at": r.registered_at,
        "accepted_since_start": s.accepted,
        "refused_since_start": s.refused,
        "last_seen": s.last_seen,
    })
}

fn message_json(m: &StoredMessage) -> Value {
    let kind = m.kind().map_or("unknown", kind_name);
    let body = match m.kind() {
        Ok(Kind::USAGE) => codec::decode::<Usage>(&m.proof.body).ok().and_then(|b| serde_json::to_value(b).ok()),
        Ok(Kind::FAULT) => codec::decode::<Fault>(&m.proof.body).ok().and_then(|b| serde_json::to_value(b).ok()),
        _ => None,
    };
    json!({ "counter": m.counter, "kind": kind, "received_at": m.received_at, "body": body })
}

async fn api_devices<S: Store + 'static>(State(app): Shared<S>) -> Result<Json<Value>, Failure> {
    let records = query(&app, |a| a.ingestor.store().devices().map_err(|e| e.to_string())).await?;
    Ok(Json(Value::Array(records.iter().map(|r| device_json(&app, r)).collect())))
}

async fn view_of<S: Store + 'static>(app: &Arc<App<S>>, id: &str) -> Result<DeviceView, Failure> {
    let id = parse_id(id)?;
    query(app, move |a| a.device_view(id)).await?.ok_or_else(|| Failure(StatusCode::NOT_FOUND, "no such device".into()))
}

async fn api_device<S: Store + 'static>(State(app): Shared<S>, Path(id): Path<String>) -> Result<Json<Value>, Failure> {
    let v = view_of(&app, &id).await?;
    let mut j = device_json(&app, &v.record);
    if let Some(o) = j.as_object_mut() {
        o.insert("consent".into(), serde_json::to_value(&v.record.consent.state).unwrap_or(Value::Null));
        o.insert("consent_in_words".into(), json!(consent_words(&v.record.consent.state)));
    }
    Ok(Json(j))
}

async fn api_ledger<S: Store + 'static>(State(app): Shared<S>, Path(id): Path<String>) -> Result<Json<Value>, Failure> {
    let v = view_of(&app, &id).await?;
    let entries: Vec<Value> = v
        .ledger
        .iter()
        .map(|e| {
            json!({
                "seq": e.seq, "event": format!("{:?}", e.event), "at": e.at, "version": e.version,
                "prev_hash": hex::encode(e.prev_hash), "hash": hex::encode(e.hash),
            })
        })
        .collect();
    Ok(Json(json!({ "chain_verified": v.chain.is_ok(), "chain_error": v.chain.err(), "entries": entries })))
}

async fn api_messages<S: Store + 'static>(
    State(app): Shared<S>,
    Path(id): Path<String>,
) -> Result<Json<Value>, Failure> {
    let v = view_of(&app, &id).await?;
    Ok(Json(Value::Array(v.messages.iter().map(message_json).collect())))
}

/// `POST /api/devices/{id}/notices`: a notice for the owner, sealed now if
/// their contact preferences allow it and queued for the device's next 2.04.
#[derive(serde::Deserialize)]
struct NoticeRequest {
    /// Vendor-assigned id (default: the server's next).
    id: Option<u32>,
    purpose: u16,
    /// `on-device`, `app`, `email` or `sms`.
    channel: String,
    #[serde(default)]
    topic: u16,
    kind: NoticeKind,
    title: String,
    #[serde(default)]
    text: String,
    /// Days until it is stale (default 14).
    #[serde(default = "fortnight")]
    expires_in_days: u64,
}

const fn fortnight() -> u64 {
    14
}

async fn api_notice<S: Store + 'static>(
    State(app): Shared<S>,
    Path(id): Path<String>,
    Json(req): Json<NoticeRequest>,
) -> Result<(StatusCode, Json<Value>), Failure> {
    let device = parse_id(&id)?;
    let bad = |what: &str| Failure(StatusCode::BAD_REQUEST, what.into());
    let channel = match req.channel.as_str() {
        "on-device" => Channel::OnDevice,
        "app" => Channel::App,
        "email" => Channel::Email,
        "sms" => Channel::Sms,
        _ => return Err(bad("channel is one of on-device, app, email, sms")),
    };
    let now = (app.clock)();
    let notice = Notice {
        id: req.id.unwrap_or_else(|| app.next_notice_id()),
        purpose: Purpose::from_id(req.purpose).map_err(|_| bad("purpose is 0–9 or 0x8000–0xFFFF"))?,
        channel,
        topic: req.topic,
        kind: req.kind,
        issued_at: now,
        expires_at: now.saturating_add(req.expires_in_days.saturating_mul(86_400)),
        title: req.title.as_str().try_into().map_err(|_| bad("title longer than 48 bytes"))?,
        text: req.text.as_str().try_into().map_err(|_| bad("text longer than 192 bytes"))?,
    };
    let result = query(&app, move |a| Ok(a.send(&device, &notice))).await?;
    match result {
        Ok(()) => Ok((StatusCode::ACCEPTED, Json(json!({ "queued": true })))),
        Err(NoticeError::Send(e)) => {
            let status = match e {
                crate::vendor::SendError::UnknownDevice => StatusCode::NOT_FOUND,
                crate::vendor::SendError::Refused(_)
                | crate::vendor::SendError::Decommissioned
                | crate::vendor::SendError::NoConsent => StatusCode::FORBIDDEN,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            Ok((status, Json(json!({ "queued": false, "reason": e.reason(), "detail": e.to_string() }))))
        }
        Err(e @ NoticeError::MailboxFull) => Ok((
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({ "queued": false, "reason": "mailbox-full", "detail": e.to_string() })),
        )),
    }
}

async fn api_refusals<S: Store + 'static>(State(app): Shared<S>) -> Json<Value> {
    Json(json!({
        "by_reason": app.stats.refused_by_reason(),
        "recent": app.stats.recent_refusals(),
    }))
}

async fn metrics<S: Store + 'static>(State(app): Shared<S>) -> Result<Response, Failure> {
    let (records, stored) = query(&app, |a| {
        let s = a.ingestor.store();
        Ok((s.devices().map_err(|e| e.to_string())?, s.message_count().map_err(|e| e.to_string())?))
    })
    .await?;
    let phases = by_phase(&records);
    let bytes = app.config.store_file.as_ref().and_then(|p| std::fs::metadata(p).ok()).map_or(0, |m| m.len());
    let text = app.stats.prometheus(&phases, stored, bytes);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

fn by_phase(records: &[DeviceRecord]) -> [(&'static str, u64); 3] {
    let count = |l| records.iter().filter(|r| r.lifecycle == l).count() as u64;
    [
        ("active", count(Lifecycle::Active)),
        ("transferred", count(Lifecycle::Transferred)),
        ("decommissioned", count(Lifecycle::Decommissioned)),
    ]
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}\
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border-bottom:1px solid #ddd;padding:.25em .8em;text-align:left}\
.ok{color:#282}.bad{color:#b22}.num{text-align:right}code{font-size:.9em}";

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>{body}</body></html>",
        esc(title)
    ))
}

async fn fleet_page<S: Store + 'static>(State(app): Shared<S>) -> Result<Html<String>, Failure> {
    let records = query(&app, |a| a.ingestor.store().devices().map_err(|e| e.to_string())).await?;
    let mut b = String::from("<h1>Fleet</h1>");
    let _ =
        write!(b, "<h2>Devices by lifecycle phase</h2><table id=\"phases\"><tr><th>phase</th><th>devices</th></tr>");
    for (phase, n) in by_phase(&records) {
        let _ = write!(b, "<tr><td>{phase}</td><td class=\"num\">{n}</td></tr>");
    }
    b.push_str("</table><h2>Accepted and refused, per minute</h2>");
    let minutes: Vec<(String, u64, u64)> =
        app.stats.minutes().into_iter().map(|(m, a, r)| (utc(m * 60), a, r)).collect();
    if minutes.is_empty() {
        b.push_str("<p>No traffic since the server started.</p>");
    } else {
        b.push_str(&bars(&minutes, "accepted (green) and refused (red) messages per minute"));
    }
    let accepted: u64 = app.stats.accepted_by_kind().values().sum();
    let refused_by = app.stats.refused_by_reason();
    let refused: u64 = refused_by.values().sum();
    let _ = write!(b, "<p id=\"totals\">Since start: <b>{accepted}</b> accepted, <b>{refused}</b> refused.</p>");
    b.push_str("<h2>Devices</h2><table id=\"devices\"><tr><th>device</th><th>model</th><th>phase</th><th>firmware</th><th>consent</th><th>accepted</th><th>refused</th><th>last seen</th></tr>");
    for r in &records {
        let s = app.stats.device(&r.device);
        let id = hex::encode(r.device.0);
        let seen = if s.last_seen == 0 { "—".to_string() } else { utc(s.last_seen) };
        let _ = write!(
            b,
            "<tr><td><a href=\"/devices/{id}\"><code>{id}</code></a></td><td>{}</td><td>{}</td><td>{}.{}.{}</td><td>v{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{seen}</td></tr>",
            esc(r.certificate.body.model.as_str()),
            lifecycle(r.lifecycle),
            r.firmware.major,
            r.firmware.minor,
            r.firmware.patch,
            r.consent.state.version,
            s.accepted,
            s.refused,
        );
    }
    b.push_str("</table><h2>Refusals by reason</h2><table id=\"refusals\"><tr><th>reason</th><th>count</th></tr>");
    for (reason, n) in &refused_by {
        let _ = write!(b, "<tr><td>{reason}</td><td class=\"num\">{n}</td></tr>");
    }
    b.push_str("</table><h2>Recent refusals</h2><table><tr><th>when</th><th>device</th><th>code</th><th>why</th></tr>");
    for r in app.stats.recent_refusals().iter().rev().take(20) {
        let _ = write!(
            b,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            utc(r.at),
            r.device.as_deref().unwrap_or("—"),
            r.code,
            esc(&r.detail)
        );
    }
    b.push_str("</table><p><a href=\"/metrics\">metrics</a> · <a href=\"/api/devices\">JSON</a></p>");
    Ok(page("spime fleet", &b))
}

async fn device_page<S: Store + 'static>(
    State(app): Shared<S>,
    Path(id): Path<String>,
) -> Result<Html<String>, Failure> {
    let v = view_of(&app, &id).await?;
    let r = &v.record;
    let id = hex::encode(r.device.0);
    let s = app.stats.device(&r.device);
    let mut b = format!(
        "<p><a href=\"/\">← fleet</a></p><h1>Device <code>{id}</code></h1><p id=\"facts\">{} · {} · firmware {}.{}.{} · relationship {} · key epoch {} · registered {} · {} accepted, {} refused since start</p>",
        esc(r.certificate.body.model.as_str()),
        lifecycle(r.lifecycle),
        r.firmware.major,
        r.firmware.minor,
        r.firmware.patch,
        r.relationship,
        r.epoch(),
        utc(r.registered_at),
        s.accepted,
        s.refused,
    );
    let _ = write!(b, "<h2>Consent (version {})</h2><ul id=\"consent\">", r.consent.state.version);
    for line in consent_words(&r.consent.state) {
        let _ = write!(b, "<li>{}</li>", esc(&line));
    }
    b.push_str("</ul><h2>Consent ledger</h2>");
    match &v.chain {
        Ok(()) => {
            let _ = write!(b, "<p id=\"chain\" class=\"ok\">✓ hash chain verified ({} entries)</p>", v.ledger.len());
        }
        Err(e) => {
            let _ = write!(b, "<p id=\"chain\" class=\"bad\">✗ hash chain broken: {}</p>", esc(e));
        }
    }
    b.push_str("<table id=\"ledger\"><tr><th>#</th><th>when</th><th>event</th><th>version</th><th>hash</th></tr>");
    for e in &v.ledger {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{:?}</td><td>v{}</td><td><code>{}…</code></td></tr>",
            e.seq,
            utc(e.at),
            e.event,
            e.version,
            hex::encode(e.hash.get(..8).unwrap_or_default())
        );
    }
    b.push_str("</table><h2>Usage</h2>");
    let mut usage: Vec<(String, u64, u64)> = Vec::new();
    let mut faults = String::new();
    for m in v.messages.iter().rev() {
        match m.kind() {
            Ok(Kind::USAGE) => {
                if let Ok(u) = codec::decode::<Usage>(&m.proof.body) {
                    let total = u
                        .metrics
                        .iter()
                        .map(|x| match x.value {
                            crate::message::MetricValue::Counter(n) => n,
                            _ => 0,
                        })
                        .fold(0u64, u64::saturating_add);
                    usage.push((utc(u.window_end), total, 0));
                }
            }
            Ok(Kind::FAULT) => {
                if let Ok(f) = codec::decode::<Fault>(&m.proof.body) {
                    let _ = write!(
                        faults,
                        "<tr><td>{}</td><td><code>{:#06x}</code></td><td>{:?}</td><td>{}</td><td>{:?}</td></tr>",
                        utc(m.received_at),
                        f.code,
                        f.severity,
                        f.component,
                        f.reboot_reason
                    );
                }
            }
            _ => {}
        }
    }
    if usage.is_empty() {
        b.push_str("<p id=\"usage\">No usage reports.</p>");
    } else {
        let _ = write!(b, "<div id=\"usage\">{}</div>", bars(&usage, "counters per usage report"));
    }
    b.push_str("<h2>Faults</h2>");
    if faults.is_empty() {
        b.push_str("<p id=\"faults\">No faults reported.</p>");
    } else {
        let _ = write!(
            b,
            "<table id=\"faults\"><tr><th>received</th><th>code</th><th>severity</th><th>component</th><th>last reboot</th></tr>{faults}</table>"
        );
    }
    b.push_str(
        "<h2>Recent messages</h2><table id=\"messages\"><tr><th>counter</th><th>kind</th><th>received</th></tr>",
    );
    for m in v.messages.iter().take(30) {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            m.counter,
            m.kind().map_or("unknown", kind_name),
            utc(m.received_at)
        );
    }
    b.push_str("</table>");
    Ok(page(&format!("device {id}"), &b))
}
