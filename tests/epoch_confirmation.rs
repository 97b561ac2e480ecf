//! SPEC §3.1 through the real device session and the real vendor
//! pipeline: a device keeps offering an epoch's ephemeral key until a
//! vendor message under that epoch confirms it, so a refused opener never
//! strands it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::std_instead_of_core
)]

mod device_common;

use device_common::*;
use rand_core::SeedableRng;
use spime::consent::{Denial, Purpose};
use spime::device::metrics::{MetricDef, MetricKind, Metrics};
use spime::device::outbox::{Outbox, record_len};
use spime::device::session::{Device, SessionError, storage_capacity, storage_records};
use spime::device::storage::{NorStorage, SimFlash};
use spime::message;
use spime::seal::Envelope;
use spime::vendor::{Event, IngestConfig, IngestError, Ingestor, MemoryStore};
use spime::wire::Kind;

const N: usize = 4;
const REC: usize = record_len(message::MAX_SEALED_LEN);
type Flash = SimFlash<{ SECTORS as usize * 4096 }, 4096>;
const SECTORS: u16 = 6;
type Store = NorStorage<Flash>;
type Dev<'o> = Device<'o, Store, N, REC>;
type Ob = Outbox<N, REC>;

const T0: u64 = 1_767_300_000;

fn storage() -> Store {
    NorStorage::new(Flash::new(), 0, SECTORS, u16::try_from(storage_records(N)).unwrap(), storage_capacity(REC))
        .unwrap()
}

fn rng(seed: u8) -> rand_chacha::ChaCha20Rng {
    rand_chacha::ChaCha20Rng::from_seed([seed; 32])
}

fn ingestor() -> Ingestor<MemoryStore> {
    Ingestor::new(MemoryStore::new(), vendor(), IngestConfig { workers: 1, batch_verify: false })
}

fn registered<'d, 'o>(dev: &'d mut Dev<'o>) -> spime::device::session::Registered<'d, 'o, Store, N, REC> {
    dev.registered().unwrap()
}

/// The queued envelope of `kind` (the test plays the link, so it picks
/// what arrives first).
fn queued(dev: &mut Dev<'_>, kind: Kind) -> (u64, Vec<u8>) {
    let c = dev.queued().find(|m| m.kind == kind).expect("queued").counter;
    (c, dev.message(c).unwrap().unwrap().envelope.to_vec())
}

fn carries_key(envelope: &[u8]) -> bool {
    Envelope::parse(envelope).unwrap().header.ephemeral.is_some()
}

/// One usage window with one counter, under the held consent.
fn report_usage(dev: &mut Dev<'_>, now: u64) -> u64 {
    let mut m: Metrics<1> = Metrics::new(now - 60);
    m.define(MetricDef { id: 1, category: spime::consent::DataCategory::UsageCounters, kind: MetricKind::Counter })
        .unwrap();
    m.increment(1, 2).unwrap();
    registered(dev).report_window(Purpose::USAGE_ANALYTICS, m.take_window(now), now).unwrap().expect("a report")
}

/// Registers, delivers the Register and its receipt: epoch 1, confirmed.
fn confirmed<'o>(vendor: &Ingestor<MemoryStore>, ob: &'o mut Ob) -> Dev<'o> {
    let mut dev = Dev::boot(identity(), storage(), ob).unwrap();
    let u = dev.unregistered().unwrap();
    u.register(&mut rng(1), generous_consent(1, T0)).unwrap();
    let (c, reg) = queued(&mut dev, Kind::REGISTER);
    let ok = vendor.ingest(&reg, T0).unwrap();
    assert_eq!(ok.opened_epoch, Some(1));
    dev.ack(c).unwrap();
    let receipt = vendor.seal_receipt(&dev.device_id()).unwrap();
    dev.open_receipt(&receipt).unwrap();
    assert!(dev.epoch_confirmed());
    dev
}

#[test]
fn messages_offer_the_key_until_a_vendor_message_confirms_the_epoch() {
    let vendor = ingestor();
    let mut ob = Ob::new();
    let mut dev = Dev::boot(identity(), storage(), &mut ob).unwrap();
    let u = dev.unregistered().unwrap();
    u.register(&mut rng(1), generous_consent(1, T0)).unwrap();
    assert!(!dev.epoch_confirmed());
    let (c, reg) = queued(&mut dev, Kind::REGISTER);
    assert_eq!(vendor.ingest(&reg, T0).unwrap().opened_epoch, Some(1));
    dev.ack(c).unwrap();

    // No receipt yet: the next report offers the key again, and the vendor,
    // whose epoch is already open, takes it as an ordinary message.
    let c = report_usage(&mut dev, T0 + 3600);
    let (_, usage) = queued(&mut dev, Kind::USAGE);
    assert!(carries_key(&usage));
    let ok = vendor.ingest(&usage, T0 + 3600).unwrap();
    assert!(matches!(ok.event, Event::Usage(_)));
    assert_eq!(ok.opened_epoch, None);
    dev.ack(c).unwrap();
    assert!(!dev.epoch_confirmed());

    // The vendor's receipt under epoch 1 confirms it, across a reboot too.
    let receipt = vendor.seal_receipt(&dev.device_id()).unwrap();
    dev.open_receipt(&receipt).unwrap();
    assert!(dev.epoch_confirmed());
    let store = dev.into_storage();
    let mut ob2 = Ob::new();
    let mut dev = Dev::boot(identity(), store, &mut ob2).unwrap();
    assert!(dev.epoch_confirmed());

    // From now on the key stays out: 91 bytes of overhead.
    report_usage(&mut dev, T0 + 7200);
    let (_, usage) = queued(&mut dev, Kind::USAGE);
    assert!(!carries_key(&usage));
    let env = Envelope::parse(&usage).unwrap();
    assert_eq!(message::overhead(&env.header), 91);
    assert!(matches!(vendor.ingest(&usage, T0 + 7200).unwrap().event, Event::Usage(_)));
}

#[test]
fn a_refused_opener_is_followed_by_one_the_vendor_accepts_and_the_data_arrives() {
    let vendor = ingestor();
    let mut ob = Ob::new();
    let mut dev = confirmed(&vendor, &mut ob);

    // New keys on demand: epoch 2, not yet known to the vendor.
    assert_eq!(registered(&mut dev).renew_keys(&mut rng(2)).unwrap(), 2);
    assert!(!dev.epoch_confirmed());
    // The owner's new consent (version 2), then a report built under it.
    let now = T0 + 3600;
    registered(&mut dev).change_consent(generous_consent(2, now), now).unwrap();
    report_usage(&mut dev, now + 60);
    let (consent_counter, consent) = queued(&mut dev, Kind::CONSENT);
    let (usage_counter, usage) = queued(&mut dev, Kind::USAGE);
    assert!(carries_key(&consent) && carries_key(&usage));

    // The link delivers the report first: the vendor cannot judge data
    // under a consent version it has not seen, so it refuses the report —
    // and with it the epoch it would have opened.
    let err = vendor.ingest(&usage, now + 60).unwrap_err();
    assert_eq!(err, IngestError::Unconsented(Denial::UnknownVersion { named: 2, held: 1 }));
    assert_eq!(err.code(), 65);

    // The Consent offers the key again, so it opens epoch 2 (before SPEC
    // §3.1 it carried none and was refused as UnopenedEpoch forever).
    let ok = vendor.ingest(&consent, now + 70).unwrap();
    assert_eq!(ok.opened_epoch, Some(2));
    assert!(matches!(ok.event, Event::ConsentChanged { previous: 1, version: 2 }));
    dev.ack(consent_counter).unwrap();
    // The report, sent again, is accepted now.
    assert!(matches!(vendor.ingest(&usage, now + 80).unwrap().event, Event::Usage(_)));
    dev.ack(usage_counter).unwrap();

    // The receipt under epoch 2 confirms it; later messages go without the key.
    let receipt = vendor.seal_receipt(&dev.device_id()).unwrap();
    dev.open_receipt(&receipt).unwrap();
    assert!(dev.epoch_confirmed());
    report_usage(&mut dev, now + 3600);
    let (_, usage) = queued(&mut dev, Kind::USAGE);
    assert!(!carries_key(&usage));
    assert!(matches!(vendor.ingest(&usage, now + 3600).unwrap().event, Event::Usage(_)));
}

#[test]
fn a_refused_registration_is_recovered_by_registering_again() {
    let vendor = ingestor();
    let mut ob = Ob::new();
    let mut dev = Dev::boot(identity(), storage(), &mut ob).unwrap();
    let u = dev.unregistered().unwrap();
    u.register(&mut rng(7), generous_consent(1, T0)).unwrap();
    // The Register reaches the vendor damaged (the link had already
    // acknowledged it): refused, and the vendor holds no relationship.
    let (c, mut reg) = queued(&mut dev, Kind::REGISTER);
    let last = reg.len() - 1;
    reg[last] ^= 1;
    assert_eq!(vendor.ingest(&reg, T0), Err(IngestError::Unauthentic));
    dev.ack(c).unwrap();
    // What follows offers the key, but the vendor has nothing to open it for.
    report_usage(&mut dev, T0 + 200);
    let (c, usage) = queued(&mut dev, Kind::USAGE);
    assert!(carries_key(&usage));
    assert_eq!(vendor.ingest(&usage, T0 + 200), Err(IngestError::UnknownDevice));
    dev.ack(c).unwrap();

    // No vendor message ever came under epoch 1: the device registers
    // again, with the owner's consent as it stands now, under a new epoch.
    assert!(!dev.epoch_confirmed());
    registered(&mut dev).register_again(&mut rng(8), generous_consent(2, T0 + 300)).unwrap();
    assert_eq!(dev.epoch(), 2);
    let (c, reg) = queued(&mut dev, Kind::REGISTER);
    let ok = vendor.ingest(&reg, T0 + 300).unwrap();
    assert_eq!(ok.opened_epoch, Some(2));
    assert!(matches!(ok.event, Event::Registered { new_relationship: true, consent_version: 2, .. }));
    dev.ack(c).unwrap();
    let receipt = vendor.seal_receipt(&dev.device_id()).unwrap();
    dev.open_receipt(&receipt).unwrap();
    assert!(dev.epoch_confirmed());
    report_usage(&mut dev, T0 + 400);
    let (_, usage) = queued(&mut dev, Kind::USAGE);
    assert!(!carries_key(&usage));
    assert!(matches!(vendor.ingest(&usage, T0 + 400).unwrap().event, Event::Usage(_)));

    // Once confirmed there is nothing to register again.
    let err = registered(&mut dev).register_again(&mut rng(9), generous_consent(3, T0 + 500)).unwrap_err();
    assert!(matches!(err, SessionError::AlreadyConfirmed));
}

#[test]
fn keys_are_renewed_only_with_an_empty_outbox() {
    let vendor = ingestor();
    let mut ob = Ob::new();
    let mut dev = confirmed(&vendor, &mut ob);
    report_usage(&mut dev, T0 + 3600);
    let err = registered(&mut dev).renew_keys(&mut rng(3)).unwrap_err();
    assert!(matches!(err, SessionError::OutboxNotEmpty(1)));
    assert_eq!(dev.epoch(), 1);
    assert!(dev.epoch_confirmed());
}
