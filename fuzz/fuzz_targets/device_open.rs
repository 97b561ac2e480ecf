//! A registered device given vendor messages: arbitrary bytes as a
//! Receipt, a Notice or a KeyUpdate, and arbitrary bodies that decode,
//! sealed properly by the vendor so they reach the device's receipt,
//! contact-preference and vendor-key checks (the vendor's signing key is
//! also the certificate authority here). Nothing panics; whatever is
//! accepted is authentic and fresh.
#![no_main]
use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use rand_chacha::rand_core::SeedableRng;
use spime::consent::{ConsentState, SignedConsent};
use spime::device::outbox::{Outbox, record_len};
use spime::device::session::{Device, Identity, storage_capacity, storage_records};
use spime::device::storage::{NorStorage, SimFlash};
use spime::message::{self, Body, CertificateBody, DeviceCertificate, FirmwareVersion, KeyUpdate, Notice, Receipt};
use spime::seal::{self, DeviceKey, Envelope, SessionKeys, VendorKeys};
use spime::wire::DeviceId;

const N: usize = 2;
const REC: usize = record_len(message::MAX_SEALED_LEN);
type Dev = Device<'static, NorStorage<SimFlash<{ 6 * 4096 }, 4096>>, N, REC>;

struct World {
    dev: Dev,
    vendor: VendorKeys,
    keys: SessionKeys,
    counter: u64,
}

fn world() -> World {
    let vendor = VendorKeys::from_secrets(&[1; 32], &[2; 32]);
    let id = DeviceId([3; 8]);
    let key = DeviceKey::from_seed(id, &[4; 32]);
    let body = CertificateBody {
        device: id,
        device_key: key.public().to_bytes(),
        model: "fuzz".try_into().unwrap(),
        hardware_revision: 1,
        issued_at: 0,
        not_after: None,
    };
    let certificate = DeviceCertificate::issue(body, vendor.signing()).unwrap();
    let identity = Identity {
        key,
        certificate,
        firmware: FirmwareVersion { major: 1, minor: 0, patch: 0, build: 0 },
        vendor: vendor.public(),
    };
    let storage =
        NorStorage::new(SimFlash::new(), 0, 6, u16::try_from(storage_records(N)).unwrap(), storage_capacity(REC))
            .unwrap();
    let outbox: &'static mut Outbox<N, REC> = Box::leak(Box::new(Outbox::new()));
    let mut dev = Dev::boot(identity, storage, outbox).unwrap().with_key_authority(vendor.public().signing);
    let u = dev.unregistered().unwrap();
    let consent = SignedConsent { state: ConsentState::essential_only(1, 0, [0; 32]), owner: None };
    u.register(&mut rand_chacha::ChaCha20Rng::from_seed([5; 32]), consent).unwrap();
    let reg = dev.next_message().unwrap().unwrap().envelope.to_vec();
    let h = Envelope::parse(&reg).unwrap().header;
    let keys = vendor.accept_epoch(&h.device, h.epoch, &h.ephemeral.unwrap()).unwrap();
    World { dev, vendor, keys, counter: 0 }
}

thread_local! {
    static WORLD: RefCell<World> = RefCell::new(world());
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    WORLD.with(|w| {
        let w = &mut *w.borrow_mut();
        let now = u64::from(mode) * 3_600;
        match mode % 6 {
            0 => {
                let _ = w.dev.open_receipt(rest);
            }
            1 => {
                let _ = w.dev.open_notice(rest, now);
            }
            2 => {
                if let Ok(notice) = spime::codec::decode::<Notice>(rest) {
                    w.counter += 1;
                    let mut out = vec![0u8; Notice::MAX_SEALED_LEN];
                    let id = w.dev.device_id();
                    let n = seal::seal_from_vendor(&mut out, id, w.counter, &notice, &w.vendor, &w.keys).unwrap();
                    let _ = w.dev.open_notice(&out[..n], now);
                    // the same message again is a replay
                    assert!(w.dev.open_notice(&out[..n], now).is_err());
                }
            }
            4 => {
                let _ = w.dev.open_key_update(rest, now);
            }
            5 => {
                if let Ok(update) = spime::codec::decode::<KeyUpdate>(rest) {
                    w.counter += 1;
                    let mut out = vec![0u8; KeyUpdate::MAX_SEALED_LEN];
                    let id = w.dev.device_id();
                    let n = seal::seal_from_vendor(&mut out, id, w.counter, &update, &w.vendor, &w.keys).unwrap();
                    let before = w.dev.vendor_key_serial();
                    if w.dev.open_key_update(&out[..n], now).is_ok() {
                        // only a higher serial (or the same key again) is taken
                        assert!(w.dev.vendor_key_serial() >= before);
                    }
                }
            }
            _ => {
                if let Ok(receipt) = spime::codec::decode::<Receipt>(rest) {
                    w.counter += 1;
                    let mut out = vec![0u8; Receipt::MAX_SEALED_LEN];
                    let id = w.dev.device_id();
                    let n = seal::seal_from_vendor(&mut out, id, w.counter, &receipt, &w.vendor, &w.keys).unwrap();
                    let _ = w.dev.open_receipt(&out[..n]);
                }
            }
        }
    });
});
