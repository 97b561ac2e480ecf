//! Seal and open cost per message kind, each beside the limit it cannot
//! beat: one raw Ed25519 sign (for sealing) or one raw `verify_strict` (for
//! opening) of a message of the same length, measured in the same run.
//!
//! `cargo bench --bench seal` prints, after criterion's own output, a table
//! of ratios (`seal / raw sign`, `open / raw verify`) and sizes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::std_instead_of_core)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use common::*;
use criterion::{Criterion, criterion_group};
use ed25519_dalek::{Signer, SigningKey};
use spime::codec;
use spime::message::*;
use spime::seal::{self, Envelope, Seal};
use spime::wire::Kind;

fn sealed<B: Body>(body: &B) -> Vec<u8> {
    let (keys, eph) = session();
    let mut out = vec![0u8; B::MAX_SEALED_LEN];
    let n = if B::KIND.direction() == spime::wire::Direction::DeviceToVendor {
        let ephemeral = (B::KIND == Kind::REGISTER).then_some(eph);
        seal::seal(
            &mut out,
            &Seal { device: DEVICE_ID, epoch: EPOCH, counter: 1, ephemeral },
            body,
            device().signing(),
            &keys,
        )
    } else {
        seal::seal_from_vendor(&mut out, DEVICE_ID, 1, body, &vendor(), &keys)
    }
    .unwrap();
    out.truncate(n);
    out
}

fn bench_kind<B: Body + Clone>(c: &mut Criterion, body: B, rows: &mut Vec<String>) {
    let name = B::KIND.name();
    let (keys, _) = session();
    let dev = device();
    let ven = vendor();
    let device_side = B::KIND.direction() == spime::wire::Direction::DeviceToVendor;
    let signer: SigningKey = if device_side { dev.signing().clone() } else { ven.signing().clone() };
    let verifier = signer.verifying_key();
    let env_bytes = sealed(&body);
    let body_len = codec::encoded_len(&body).unwrap();
    let signed_len = seal::MESSAGE_DST.len() + (env_bytes.len() - body_len - 80) + body_len;
    let raw_msg = vec![0x5au8; signed_len];
    let raw_sig = signer.sign(&raw_msg);

    let mut group = c.benchmark_group(name);
    group.sample_size(20).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    group.bench_function("seal", |b| {
        let mut out = vec![0u8; B::MAX_SEALED_LEN];
        b.iter(|| {
            if device_side {
                let eph = (B::KIND == Kind::REGISTER).then_some([7u8; 32]);
                seal::seal(
                    &mut out,
                    &Seal { device: DEVICE_ID, epoch: EPOCH, counter: 1, ephemeral: eph },
                    black_box(&body),
                    &signer,
                    &keys,
                )
            } else {
                seal::seal_from_vendor(&mut out, DEVICE_ID, 1, black_box(&body), &ven, &keys)
            }
            .unwrap()
        })
    });
    group.bench_function("raw_sign", |b| b.iter(|| signer.sign(black_box(&raw_msg))));
    group.bench_function("open", |b| {
        let mut buf = vec![0u8; MAX_SEALED_LEN];
        b.iter(|| {
            let env = Envelope::parse(black_box(&env_bytes)).unwrap();
            env.decrypt(&keys, &mut buf).unwrap().verify(&verifier).unwrap().decode::<B>().unwrap()
        })
    });
    group.bench_function("raw_verify_strict", |b| {
        b.iter(|| verifier.verify_strict(black_box(&raw_msg), &raw_sig).unwrap())
    });
    group.finish();

    // The ratio table: timed here with the same loops, interleaved, so both
    // sides of each ratio see the same machine load.
    let time = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        for _ in 0..100 {
            f();
        }
        start.elapsed().as_secs_f64() / 100.0
    };
    let mut out = vec![0u8; B::MAX_SEALED_LEN];
    let mut buf = vec![0u8; MAX_SEALED_LEN];
    let (mut seal_t, mut sign_t, mut open_t, mut verify_t) = (f64::MAX, f64::MAX, f64::MAX, f64::MAX);
    for _ in 0..15 {
        seal_t = seal_t.min(time(&mut || {
            if device_side {
                let eph = (B::KIND == Kind::REGISTER).then_some([7u8; 32]);
                black_box(
                    seal::seal(
                        &mut out,
                        &Seal { device: DEVICE_ID, epoch: EPOCH, counter: 1, ephemeral: eph },
                        &body,
                        &signer,
                        &keys,
                    )
                    .unwrap(),
                );
            } else {
                black_box(seal::seal_from_vendor(&mut out, DEVICE_ID, 1, &body, &ven, &keys).unwrap());
            }
        }));
        sign_t = sign_t.min(time(&mut || {
            black_box(signer.sign(black_box(&raw_msg)));
        }));
        open_t = open_t.min(time(&mut || {
            let env = Envelope::parse(black_box(&env_bytes)).unwrap();
            black_box(env.decrypt(&keys, &mut buf).unwrap().verify(&verifier).unwrap().decode::<B>().unwrap());
        }));
        verify_t = verify_t.min(time(&mut || verifier.verify_strict(black_box(&raw_msg), &raw_sig).unwrap()));
    }
    rows.push(format!(
        "| {name} | {body_len} | {} | {} | {:.1} | {:.2} | {:.1} | {:.2} | {:.2} |",
        env_bytes.len(),
        env_bytes.len() - body_len,
        seal_t * 1e6,
        seal_t / sign_t,
        open_t * 1e6,
        open_t / verify_t,
        verify_t / open_t,
    ));
}

fn benches(c: &mut Criterion) {
    let mut rows = Vec::new();
    bench_kind(c, register(), &mut rows);
    bench_kind(c, usage(), &mut rows);
    bench_kind(c, fault(), &mut rows);
    bench_kind(c, consent_update(), &mut rows);
    bench_kind(c, transfer(), &mut rows);
    bench_kind(c, decommission(), &mut rows);
    bench_kind(c, receipt(), &mut rows);
    bench_kind(c, notice(), &mut rows);
    println!(
        "\n| kind | body B | sealed B | overhead B | seal µs | seal / raw sign | open µs | open / raw verify | open rate / raw verify rate |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
}

criterion_group!(seal_benches, benches);

fn main() {
    seal_benches();
    Criterion::default().configure_from_args().final_summary();
}
