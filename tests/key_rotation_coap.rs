//! Vendor key rotation over CoAP (SPEC.md §11.2): the server answers a
//! device whose epoch uses the old vendor key with a KeyUpdate in its 2.04,
//! and a device stranded on a retired key with a KeyUpdate in the 4.12 that
//! refuses it; both devices move to the new key and keep reporting.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::std_instead_of_core
)]

mod server_common;

use coap_lite::{ContentFormat, ResponseType};
use server_common::*;
use spime::device::metrics::{MetricDef, MetricKind, Metrics};
use spime::message::VendorKeyCertificate;
use spime::seal::{Envelope, VendorKeys};
use spime::server::coap::MESSAGE_PATH;
use spime::wire::Kind;

const RETIRE_AT: u64 = T0 + 30 * 86_400;

fn key1() -> VendorKeys {
    VendorKeys::from_secrets(&[0x91; 32], &[0x92; 32])
}

fn usage_report(dev: &mut Dev<'_>, now: u64) {
    let mut m: Metrics<1> = Metrics::new(now - 3600);
    m.define(MetricDef { id: 1, category: spime::consent::DataCategory::UsageCounters, kind: MetricKind::Counter })
        .unwrap();
    m.increment(1, 1).unwrap();
    dev.registered()
        .unwrap()
        .report_window(spime::consent::Purpose::USAGE_ANALYTICS, m.take_window(now), now)
        .unwrap()
        .unwrap();
}

fn kind_of(payload: &[u8]) -> Option<Kind> {
    Envelope::parse(payload).ok().map(|e| e.header.kind)
}

#[test]
fn devices_get_the_new_key_over_coap_and_keep_reporting() {
    // The vendor's signing key is its certificate authority here (SPEC §2 allows it).
    let ca = vendor_keys().signing().clone();
    let server = TestServer::start_with("rotation", |i| {
        let cert = VendorKeyCertificate::certify(&key1(), 1, T0 - 86_400, RETIRE_AT + 365 * 86_400, &ca).unwrap();
        i.with_vendor_key(key1(), cert).unwrap().retire_vendor_key(0, RETIRE_AT).unwrap()
    });
    let mut client = server.client();
    let (mut oa, mut ob) = (Ob::new(), Ob::new());
    let mut a = Dev::boot(identity(1), storage(), &mut oa).unwrap().with_key_authority(ca.verifying_key());
    let mut b = Dev::boot(identity(2), storage(), &mut ob).unwrap().with_key_authority(ca.verifying_key());
    for (dev, seed) in [(&mut a, 1), (&mut b, 2)] {
        dev.unregistered().unwrap().register(&mut rng(seed), consent(1, T0)).unwrap();
        let replies = deliver(&mut client, dev);
        assert_eq!(kind_of(&replies[0].payload), Some(Kind::RECEIPT));
        assert!(dev.epoch_confirmed());
    }

    // A's next report is answered with the new key; it takes it and renews.
    usage_report(&mut a, T0 + 3600);
    let replies = deliver(&mut client, &mut a);
    assert_eq!(replies[0].code, ResponseType::Changed);
    assert_eq!(kind_of(&replies[0].payload), Some(Kind::KEY_UPDATE));
    assert_eq!(a.open_key_update(&replies[0].payload, T0 + 3600).unwrap(), 1);
    a.registered().unwrap().renew_keys(&mut rng(3)).unwrap();
    usage_report(&mut a, T0 + 7200);
    // The epoch opened with key 1 is confirmed by a receipt signed by key 1 (deliver opens it).
    let replies = deliver(&mut client, &mut a);
    assert_eq!(kind_of(&replies[0].payload), Some(Kind::RECEIPT));
    assert!(a.epoch_confirmed());
    usage_report(&mut a, T0 + 10_800);
    let replies = deliver(&mut client, &mut a);
    assert_eq!((replies[0].code, replies[0].payload.len()), (ResponseType::Changed, 0));

    // B missed all of it. After key 0 retires, its report is refused with
    // code 56, and the refusal carries the new key.
    server.set_time(RETIRE_AT);
    usage_report(&mut b, RETIRE_AT);
    let (counter, envelope) = b.queued_envelopes().unwrap().into_iter().map(|(m, e)| (m.counter, e)).next().unwrap();
    let reply = client.post(MESSAGE_PATH, &envelope).unwrap();
    assert_eq!(reply.code, ResponseType::PreconditionFailed);
    assert_eq!(reply.format, Some(ContentFormat::ApplicationOctetStream));
    assert_eq!(b.open_key_update(&reply.payload, RETIRE_AT).unwrap(), 1);
    // The report sealed under key 0's epoch cannot go: B drops it and renews.
    b.ack(counter).unwrap();
    b.registered().unwrap().renew_keys(&mut rng(4)).unwrap();
    usage_report(&mut b, RETIRE_AT + 60);
    let replies = deliver(&mut client, &mut b);
    assert_eq!(kind_of(&replies[0].payload), Some(Kind::RECEIPT));
    assert!(b.epoch_confirmed());
    // A, on key 1 all along, is unaffected by the retirement.
    usage_report(&mut a, RETIRE_AT + 60);
    let replies = deliver(&mut client, &mut a);
    assert_eq!(replies[0].code, ResponseType::Changed);
}
