//! Smoke test: a Register seals and opens.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
use spime::codec::Bytes64;
use spime::consent::*;
use spime::message::*;
use spime::seal::{self, DeviceKey, Envelope, Seal, VendorKeys, keys};
use spime::wire::DeviceId;

#[test]
fn register_round_trip() {
    let vendor = VendorKeys::from_secrets(&[1; 32], [2; 32]);
    let dev = DeviceKey::from_seed(DeviceId([9; 16]), &[3; 32]);
    let cert = DeviceCertificate::issue(
        CertificateBody {
            device: dev.device,
            device_key: dev.public().to_bytes(),
            model: "kettle".try_into().unwrap(),
            hardware_revision: 1,
            issued_at: 1,
        },
        vendor.signing(),
    )
    .unwrap();
    let (k, eph) = keys::device_start_epoch_with(&[4; 32], &dev.device, 1, &vendor.public()).unwrap();
    let reg = Register {
        certificate: cert,
        firmware: FirmwareVersion { major: 1, minor: 0, patch: 0, build: 7 },
        consent: SignedConsent {
            state: ConsentState {
                version: 1,
                issued_at: 5,
                reconfirm_by: 10,
                notice_hash: [0; 32],
                grants: Default::default(),
                contact: Default::default(),
            },
            owner: None,
        },
    };
    let mut out = [0u8; Register::MAX_SEALED_LEN];
    let n = seal::seal(
        &mut out,
        &Seal { device: dev.device, epoch: 1, counter: 0, ephemeral: Some(eph) },
        &reg,
        dev.signing(),
        &k,
    )
    .unwrap();
    let env = Envelope::parse(&out[..n]).unwrap();
    let vk = vendor.accept_epoch(&env.header.device, env.header.epoch, &env.header.ephemeral.unwrap()).unwrap();
    let mut buf = [0u8; 2048];
    let pt = env.decrypt(&vk, &mut buf).unwrap();
    let body: Register = spime::codec::decode(pt.body_bytes()).unwrap();
    let dkey = body.certificate.verify(&vendor.public().signing).unwrap();
    let v = pt.verify(&dkey).unwrap();
    assert_eq!(v.decode::<Register>().unwrap(), reg);
    let _ = Bytes64([0; 64]);
    println!("register sealed {n} bytes; max {}", Register::MAX_SEALED_LEN);
}
