//! The vendor server end to end on loopback: real devices POST over CoAP,
//! the response acknowledges only what is committed and carries the
//! receipt; every refusal path of the binding; the operator HTTP
//! interface; and a shutdown that keeps what was acknowledged.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::std_instead_of_core,
    clippy::cast_possible_truncation
)]

mod server_common;

use coap_lite::{CoapOption, ContentFormat, MessageClass, MessageType, Packet, RequestType, ResponseType};
use server_common::*;
use spime::device::metrics::{MetricDef, MetricKind, Metrics};
use spime::device::session::StageHandle;
use spime::server::Config;
use spime::server::coap::{CHUNK_PATH, MESSAGE_PATH, post};
use spime::vendor::{RedbStore, Store};
use spime::wire::chunk::Chunks;

fn usage_report(dev: &mut Dev<'_>, now: u64, count: u64) {
    let mut m: Metrics<1> = Metrics::new(now - 3600);
    m.define(MetricDef { id: 1, category: spime::consent::DataCategory::UsageCounters, kind: MetricKind::Counter })
        .unwrap();
    m.increment(1, count).unwrap();
    let StageHandle::Registered(mut r) = dev.handle() else { panic!("not registered") };
    r.report_window(spime::consent::Purpose::USAGE_ANALYTICS, m.take_window(now), now).unwrap().unwrap();
}

fn one_queued(dev: &mut Dev<'_>) -> (u64, Vec<u8>) {
    let c = dev.queued().next().unwrap().counter;
    (c, dev.message(c).unwrap().unwrap().envelope.to_vec())
}

#[test]
fn coap_acknowledges_committed_messages_refuses_with_codes_and_operators_see_it() {
    let mut server = TestServer::start("coap");
    let mut client = server.client();
    let mut ob = Ob::new();
    let mut dev = Dev::boot(identity(1), storage(), &mut ob).unwrap();
    let id = hex::encode(dev.device_id().0);

    // Register: 2.04, with a receipt that confirms the epoch (SPEC §3.1).
    let StageHandle::Unregistered(u) = dev.handle() else { panic!() };
    u.register(&mut rng(1), consent(1, T0)).unwrap();
    let (reg_counter, register) = one_queued(&mut dev);
    let reply = client.post(MESSAGE_PATH, &register).unwrap();
    assert_eq!(reply.code, ResponseType::Changed);
    assert_eq!(reply.format, Some(ContentFormat::ApplicationOctetStream));
    dev.ack(reg_counter).unwrap();
    dev.open_receipt(&reply.payload).unwrap();
    assert!(dev.epoch_confirmed());

    // A usage report: 2.04 with nothing for the device.
    server.set_time(T0 + 3600);
    usage_report(&mut dev, T0 + 3600, 5);
    let (c, usage) = one_queued(&mut dev);
    let reply = client.post(MESSAGE_PATH, &usage).unwrap();
    assert_eq!((reply.code, reply.payload.len()), (ResponseType::Changed, 0));
    dev.ack(c).unwrap();

    // The same bytes in a new exchange: a replay, 4.09 with code 27.
    let reply = client.post(MESSAGE_PATH, &usage).unwrap();
    assert_eq!(reply.code, ResponseType::Conflict);
    assert_eq!(reply.refusal_code(), Some(27));
    // A retransmission (same message id) gets the same answer and is not ingested again.
    let again = client.post_with_id(MESSAGE_PATH, &usage, 0x7777).unwrap();
    let retransmitted = client.post_with_id(MESSAGE_PATH, &usage, 0x7777).unwrap();
    assert_eq!(again, retransmitted);

    // Tampered: 4.01, code 20.
    usage_report(&mut dev, T0 + 7200, 2);
    let (c, usage) = one_queued(&mut dev);
    let mut tampered = usage.clone();
    *tampered.last_mut().unwrap() ^= 1;
    let reply = client.post(MESSAGE_PATH, &tampered).unwrap();
    assert_eq!((reply.code, reply.refusal_code()), (ResponseType::Unauthorized, Some(20)));
    // Not an envelope: 4.00 with a decoding code.
    let reply = client.post(MESSAGE_PATH, b"\x00").unwrap();
    assert_eq!(reply.code, ResponseType::BadRequest);
    assert!(reply.refusal_code().is_some_and(|c| c < 20));

    // The real one, in spime chunks on /c: 2.31 until the last, then 2.04.
    let mut replies = Vec::new();
    for chunk in Chunks::new(&usage, 1, 100).unwrap() {
        let mut frame = [0u8; 100];
        let n = chunk.write_to(&mut frame).unwrap();
        replies.push(client.post(CHUNK_PATH, &frame[..n]).unwrap().code);
    }
    assert!(replies.len() > 1);
    assert_eq!(replies.last(), Some(&ResponseType::Changed));
    assert!(replies[..replies.len() - 1].iter().all(|c| *c == ResponseType::Continue));
    dev.ack(c).unwrap();
    // A malformed chunk: 4.00 with a chunk code (80s).
    let reply = client.post(CHUNK_PATH, b"\x00\x01").unwrap();
    assert!(reply.refusal_code().is_some_and(|c| (80..90).contains(&c)), "{reply:?}");

    // The binding's own refusals.
    let reply = client.post("x", &usage).unwrap();
    assert_eq!(reply.code, ResponseType::NotFound);
    let reply = client.post(MESSAGE_PATH, b"").unwrap();
    assert_eq!(reply.code, ResponseType::BadRequest);
    let mut get_req = Packet::new();
    get_req.header.set_type(MessageType::Confirmable);
    get_req.header.code = MessageClass::Request(RequestType::Get);
    get_req.header.message_id = 900;
    get_req.add_option(CoapOption::UriPath, b"s".to_vec());
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 1500];
    let exchange = |bytes: &[u8], buf: &mut [u8]| {
        udp.send_to(bytes, server.coap).unwrap();
        let n = udp.recv(buf).unwrap();
        Packet::from_bytes(&buf[..n]).unwrap()
    };
    assert_eq!(
        exchange(&get_req.to_bytes().unwrap(), &mut buf).header.code,
        MessageClass::Response(ResponseType::MethodNotAllowed)
    );
    let mut text = Packet::from_bytes(&post(MESSAGE_PATH, 901, &[1], &usage, true)).unwrap();
    text.clear_option(CoapOption::ContentFormat);
    text.set_content_format(ContentFormat::TextPlain);
    assert_eq!(
        exchange(&text.to_bytes().unwrap(), &mut buf).header.code,
        MessageClass::Response(ResponseType::UnsupportedContentFormat)
    );
    // A non-confirmable request gets a non-confirmable answer with its token.
    let non = exchange(&post(MESSAGE_PATH, 902, &[9, 9], b"\x00", false), &mut buf);
    assert_eq!(non.header.get_type(), MessageType::NonConfirmable);
    assert_eq!(non.get_token(), &[9, 9]);
    // Garbage is counted and dropped; the server keeps answering (a CoAP ping gets a Reset).
    udp.send_to(&[0xff; 3], server.coap).unwrap();
    udp.send_to(&[0x40; 1600], server.coap).unwrap();
    let mut ping = Packet::new();
    ping.header.set_type(MessageType::Confirmable);
    ping.header.message_id = 903;
    ping.header.code = MessageClass::Empty;
    assert_eq!(exchange(&ping.to_bytes().unwrap(), &mut buf).header.get_type(), MessageType::Reset);

    // Operators: health, metrics, JSON.
    assert_eq!(get_ok(&server, "/healthz"), "ok\n");
    let metrics = get_ok(&server, "/metrics");
    for line in [
        "spime_accepted_total{kind=\"register\"} 1",
        "spime_accepted_total{kind=\"usage\"} 2",
        "spime_refused_total{reason=\"replay\"} 2",
        "spime_refused_total{reason=\"unauthentic\"} 1",
        "spime_malformed_datagrams_total 2",
        "spime_duplicate_requests_total 1",
        "spime_receipts_sent_total 1",
        "spime_devices{lifecycle=\"active\"} 1",
        "spime_store_messages 3",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    let devices: serde_json::Value = serde_json::from_str(&get_ok(&server, "/api/devices")).unwrap();
    assert_eq!(devices[0]["id"], id.as_str());
    assert_eq!(devices[0]["accepted_since_start"], 3);
    let ledger: serde_json::Value =
        serde_json::from_str(&get_ok(&server, &format!("/api/devices/{id}/ledger"))).unwrap();
    assert_eq!(ledger["chain_verified"], true);
    assert_eq!(ledger["entries"][0]["event"], "Given");
    let messages: serde_json::Value =
        serde_json::from_str(&get_ok(&server, &format!("/api/devices/{id}/messages"))).unwrap();
    assert_eq!(messages[0]["kind"], "usage");
    assert_eq!(messages[0]["body"]["metrics"][0]["value"]["Counter"], 2);
    let refusals: serde_json::Value = serde_json::from_str(&get_ok(&server, "/api/refusals")).unwrap();
    assert_eq!(refusals["by_reason"]["replay"], 2);
    assert_eq!(get(server.http, "/api/devices/zz").0, 400);
    assert_eq!(get(server.http, "/api/devices/0000000000000000").0, 404);

    // Shutdown keeps everything that was acknowledged.
    server.stop();
    let store = RedbStore::open(server.dir.join("vendor.redb")).unwrap();
    assert_eq!(store.message_count().unwrap(), 3);
}

fn get_ok(server: &TestServer, path: &str) -> String {
    let (status, body) = get(server.http, path);
    assert_eq!(status, 200, "{path}: {body}");
    body
}

#[test]
fn a_lost_receipt_is_replaced_with_the_next_message_that_offers_the_key() {
    let server = TestServer::start("receipt");
    let mut client = server.client();
    let mut ob = Ob::new();
    let mut dev = Dev::boot(identity(2), storage(), &mut ob).unwrap();
    let StageHandle::Unregistered(u) = dev.handle() else { panic!() };
    u.register(&mut rng(2), consent(1, T0)).unwrap();
    let (c, register) = one_queued(&mut dev);
    let reply = client.post(MESSAGE_PATH, &register).unwrap();
    assert_eq!(reply.code, ResponseType::Changed);
    dev.ack(c).unwrap();
    // The receipt in that reply never reaches the device.
    assert!(!dev.epoch_confirmed());
    server.set_time(T0 + 3600);
    usage_report(&mut dev, T0 + 3600, 1);
    let replies = deliver(&mut client, &mut dev);
    assert_eq!(replies[0].format, Some(ContentFormat::ApplicationOctetStream));
    assert!(dev.epoch_confirmed());
    // Confirmed: the next message offers no key and gets an empty 2.04.
    usage_report(&mut dev, T0 + 7200, 1);
    let replies = deliver(&mut client, &mut dev);
    assert_eq!((replies[0].code, replies[0].payload.len()), (ResponseType::Changed, 0));
}

#[test]
fn notices_posted_by_operators_travel_in_the_next_acknowledgement_where_consent_allows() {
    use spime::device::session::NoticeDecision;
    let server = TestServer::start("notices");
    let mut client = server.client();
    let mut ob = Ob::new();
    let mut dev = Dev::boot(identity(3), storage(), &mut ob).unwrap();
    let StageHandle::Unregistered(u) = dev.handle() else { panic!() };
    u.register(&mut rng(3), consent(1, T0)).unwrap();
    deliver(&mut client, &mut dev);
    let id = hex::encode(dev.device_id().0);
    let path = format!("/api/devices/{id}/notices");
    server.set_time(T0 + 3600);

    // Allowed: proactive service by app. Queued; the next 2.04 carries it.
    let ok = r#"{"purpose": 4, "channel": "app", "kind": "MaintenanceDue", "title": "Time for a descale"}"#;
    let (status, body) = post_json(server.http, &path, ok);
    assert_eq!(status, 202, "{body}");
    usage_report(&mut dev, T0 + 3600, 1);
    let (c, usage) = one_queued(&mut dev);
    let reply = client.post(MESSAGE_PATH, &usage).unwrap();
    assert_eq!(reply.code, ResponseType::Changed);
    dev.ack(c).unwrap();
    match dev.open_notice(&reply.payload, T0 + 3600).unwrap() {
        NoticeDecision::Show(n) => assert_eq!(n.title.as_str(), "Time for a descale"),
        other => panic!("{other:?}"),
    }

    // Held back by the owner's preferences: marketing was never allowed.
    let marketing = r#"{"purpose": 7, "channel": "app", "kind": "SuppliesOffer", "title": "Filters: 20% off"}"#;
    let (status, body) = post_json(server.http, &path, marketing);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("contact-refused"), "{body}");
    // Malformed requests and unknown devices.
    let bad_channel = r#"{"purpose": 4, "channel": "pigeon", "kind": "MaintenanceDue", "title": "x"}"#;
    assert_eq!(post_json(server.http, &path, bad_channel).0, 400);
    let reserved = r#"{"purpose": 300, "channel": "app", "kind": "MaintenanceDue", "title": "x"}"#;
    assert_eq!(post_json(server.http, &path, reserved).0, 400);
    assert_eq!(post_json(server.http, "/api/devices/0000000000000001/notices", ok).0, 404);
    // Nothing else waits: the next acknowledgement is empty.
    usage_report(&mut dev, T0 + 7200, 1);
    let replies = deliver(&mut client, &mut dev);
    assert!(replies[0].payload.is_empty());
}

#[test]
fn many_devices_in_one_batch_each_get_their_own_answer() {
    let server = TestServer::start("batch");
    let mut obs: Vec<Ob> = (0..6).map(|_| Ob::new()).collect();
    let mut devs: Vec<Dev<'_>> =
        obs.iter_mut().enumerate().map(|(i, ob)| Dev::boot(identity(10 + i as u8), storage(), ob).unwrap()).collect();
    for (i, d) in devs.iter_mut().enumerate() {
        let StageHandle::Unregistered(u) = d.handle() else { panic!() };
        u.register(&mut rng(i as u8), consent(1, T0)).unwrap();
    }
    // Concurrent clients, so several requests share a batch.
    std::thread::scope(|s| {
        for d in devs.iter_mut() {
            let coap = server.coap;
            s.spawn(move || {
                let mut client = spime::server::coap::Client::new(coap).unwrap();
                let replies = deliver(&mut client, d);
                assert_eq!(replies.len(), 1);
                assert_eq!(replies[0].code, ResponseType::Changed);
                assert!(d.epoch_confirmed());
            });
        }
    });
    let (_, devices) = get(server.http, "/api/devices");
    let devices: serde_json::Value = serde_json::from_str(&devices).unwrap();
    assert_eq!(devices.as_array().unwrap().len(), 6);
}

/// Batches of two, three in flight at once over redb (which takes one
/// batch at a time: the batches wait at the store, they do not overlap;
/// tests/server_shutdown.rs shows them overlap over a store that counts
/// commits): every device gets its own answer for each message, and
/// everything answered 2.04 is in the store when the server stops.
#[test]
fn batches_in_flight_each_answer_their_own_devices() {
    let mut server =
        TestServer::start_configured("in-flight", |i| i, |c| Config { batch_max: 2, batches_in_flight: 3, ..c });
    server.set_time(T0 + 3600);
    let mut obs: Vec<Ob> = (0..6).map(|_| Ob::new()).collect();
    let mut devs: Vec<Dev<'_>> =
        obs.iter_mut().enumerate().map(|(i, ob)| Dev::boot(identity(30 + i as u8), storage(), ob).unwrap()).collect();
    for (i, d) in devs.iter_mut().enumerate() {
        let StageHandle::Unregistered(u) = d.handle() else { panic!() };
        u.register(&mut rng(i as u8), consent(1, T0)).unwrap();
    }
    std::thread::scope(|s| {
        for (i, d) in devs.iter_mut().enumerate() {
            let coap = server.coap;
            s.spawn(move || {
                let mut client = spime::server::coap::Client::new(coap).unwrap();
                assert_eq!(deliver(&mut client, d)[0].code, ResponseType::Changed);
                for n in 1..=3 {
                    usage_report(d, T0 + 3600, n + i as u64);
                    let replies = deliver(&mut client, d);
                    assert_eq!(replies.len(), 1);
                    assert_eq!(replies[0].code, ResponseType::Changed, "device {i}, report {n}");
                }
            });
        }
    });
    let id = hex::encode(devs[5].device_id().0);
    let (_, body) = get(server.http, &format!("/api/devices/{id}/messages"));
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap().as_array().unwrap().len(), 1 + 3, "{body}");
    server.stop();
    let store = RedbStore::open(server.dir.join("vendor.redb")).unwrap();
    assert_eq!(store.message_count().unwrap(), 6 * (1 + 3));
}

#[test]
fn hostile_datagrams_are_counted_and_the_server_keeps_answering() {
    use rand_core::{Rng, SeedableRng};
    let server = TestServer::start("hostile");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut r = rand_chacha::ChaCha20Rng::from_seed([3; 32]);
    let mut sent = 0u64;
    for i in 0..3000u32 {
        let len = (r.next_u32() % 1600) as usize;
        let mut d = vec![0u8; len];
        r.fill_bytes(&mut d);
        // A third look like CoAP POSTs to /s or /c, to reach past the header.
        if i % 3 == 0 && len > 8 {
            let path = if i % 2 == 0 { MESSAGE_PATH } else { CHUNK_PATH };
            d = post(path, i as u16, &[], &d[8..], i % 4 == 0);
        }
        udp.send_to(&d, server.coap).unwrap();
        sent += 1;
    }
    // Still alive: an envelope-shaped request is answered (after everything queued before it).
    let mut client = server.client();
    let reply = client.post(MESSAGE_PATH, b"\x00\x01\x02").unwrap();
    assert_eq!(reply.code, ResponseType::BadRequest);
    let metrics = get(server.http, "/metrics").1;
    let count = |name: &str| -> u64 {
        metrics.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or_else(|| panic!("{name}"))
    };
    // Loopback may drop datagrams when the socket buffer is full; none is double counted.
    let received = count("spime_datagrams_total ");
    assert!(received <= sent + 1 && received > 0, "{received} of {sent}");
    assert!(count("spime_malformed_datagrams_total ") > 0);
}
