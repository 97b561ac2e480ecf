//! `spime-vendor serve --postgres`: the server binary over PgStore, against
//! a PostgreSQL server the test starts itself (tests/pg_support). Real
//! devices register and report over CoAP, the operator reads them back over
//! HTTP, SIGTERM stops the server cleanly, and the database holds exactly
//! what was acknowledged. Every store call of the server runs off its async
//! threads; a call on one would panic inside the sync `postgres` client
//! ("Cannot start a runtime from within a runtime"), which this test would
//! see in the log, the HTTP answers or the exit status.
#![cfg(unix)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::std_instead_of_core
)]

mod pg_support;
mod server_common;

use server_common::*;
use spime::server::coap::{Client, MESSAGE_PATH};
use spime::vendor::{PgStore, Store};
use spime::wire::DeviceId;

/// A `key=value` connection string for `cfg` (what `--postgres` takes).
fn connection_string(cfg: &postgres::Config) -> String {
    let mut parts = Vec::new();
    if let Some(host) = cfg.get_hosts().first() {
        match host {
            postgres::config::Host::Tcp(h) => parts.push(format!("host={h}")),
            postgres::config::Host::Unix(p) => parts.push(format!("host={}", p.display())),
        }
    }
    if let Some(port) = cfg.get_ports().first() {
        parts.push(format!("port={port}"));
    }
    if let Some(user) = cfg.get_user() {
        parts.push(format!("user={user}"));
    }
    if let Some(password) = cfg.get_password() {
        parts.push(format!("password='{}'", String::from_utf8_lossy(password).replace('\'', "\\'")));
    }
    if let Some(db) = cfg.get_dbname() {
        parts.push(format!("dbname={db}"));
    }
    parts.join(" ")
}

#[test]
fn serve_over_postgres_ingests_over_coap_answers_over_http_and_stops_cleanly() {
    let Some(server) = pg_support::server() else { return };
    let db = pg_support::fresh_database(server);
    let dir = std::env::temp_dir().join(format!("spime-serve-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    write_vendor_keys(&dir);
    // The connection string from the config file (it may hold a password),
    // the listening addresses from flags.
    let config = dir.join("spime-vendor.toml");
    std::fs::write(&config, format!("data = \".\"\npostgres = {:?}\nbatch = 64\n", connection_string(&db))).unwrap();
    let served =
        Served::start(&["--config", config.to_str().unwrap(), "--coap", "127.0.0.1:0", "--http", "127.0.0.1:0"]);
    assert!(served.start_log.contains("store: PostgreSQL"), "{}", served.start_log);
    assert!(!dir.join("vendor.redb").exists(), "no embedded store beside PostgreSQL");

    let a = real_time_session(served.coap, 1);
    let b = real_time_session(served.coap, 2);
    // A replay: refused (4.09, code 27), recorded nowhere but in the refusals.
    let reply = Client::new(served.coap).unwrap().post(MESSAGE_PATH, &a.usage).unwrap();
    assert_eq!((reply.code, reply.refusal_code()), (coap_lite::ResponseType::Conflict, Some(27)));

    // The operator's view, read from PostgreSQL on the blocking pool.
    let (status, body) = get(served.http, "/api/devices");
    assert_eq!(status, 200, "{body}");
    let devices: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut ids: Vec<&str> = devices.as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(ids, [a.id.as_str(), b.id.as_str()]);
    for id in [&a.id, &b.id] {
        let (status, body) = get(served.http, &format!("/api/devices/{id}/messages"));
        assert_eq!(status, 200, "{body}");
        let messages: serde_json::Value = serde_json::from_str(&body).unwrap();
        let kinds: Vec<&str> = messages.as_array().unwrap().iter().map(|m| m["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["usage", "usage", "register"], "most recent first");
        assert_eq!(messages[0]["body"]["metrics"][0]["value"]["Counter"], 7, "{body}");
        let (status, body) = get(served.http, &format!("/api/devices/{id}/ledger"));
        assert_eq!(status, 200, "{body}");
        let ledger: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(ledger["chain_verified"], true, "{body}");
        assert!(!ledger["entries"].as_array().unwrap().is_empty());
        let (status, page) = get(served.http, &format!("/devices/{id}"));
        assert!(status == 200 && page.contains("hash chain verified"), "{status} {page}");
    }
    let (status, body) = get(served.http, "/api/refusals");
    assert_eq!(status, 200);
    assert!(body.contains("replay"), "{body}");
    let (status, metrics) = get(served.http, "/metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("spime_store_messages 6"), "{metrics}");
    assert!(metrics.contains(r#"spime_devices{lifecycle="active"} 2"#), "{metrics}");

    // SIGTERM: a clean exit, no panic anywhere (a store call on an async
    // thread, or the store closed on one, would panic in the client).
    let (ok, log) = served.terminate();
    assert!(ok, "spime-vendor exited with a failure:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(log.contains("server stopped"), "{log}");

    // PostgreSQL holds exactly what was acknowledged.
    let store = PgStore::with_config(db).unwrap();
    assert_eq!(store.message_count().unwrap(), 6, "2 devices × (register + 2 usage)");
    for id in [&a.id, &b.id] {
        let mut raw = [0u8; 8];
        hex::decode_to_slice(id, &mut raw).unwrap();
        assert!(store.device(&DeviceId(raw)).unwrap().is_some());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
