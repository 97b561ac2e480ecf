//! Crash safety of the persistent stores (redb, fjall): a child process
//! ingests into the store and is killed with SIGKILL at arbitrary points,
//! again and again. No acknowledged message may be lost, and no message may
//! ever be accepted twice. And a child killed inside a transaction it has
//! not committed leaves none of it behind.
#![cfg(any(feature = "redb", feature = "fjall"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod durable_support;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use spime::consent::*;
use spime::message::*;
use spime::seal::VendorKeys;
use spime::vendor::sim::{SimDevice, consent, counter_usage};
use spime::vendor::*;
use spime::wire::DeviceId;

use durable_support::{Durable, temp_dir};

durable_tests!(
    sigkill_at_arbitrary_points_loses_no_ack_and_accepts_no_replay,
    sigkill_inside_a_transaction_keeps_none_of_it
);

/// The child's store directory; the store is named by `STORE_ENV`.
const CHILD_ENV: &str = "SPIME_CRASH_CHILD_STORE";
const STORE_ENV: &str = "SPIME_CRASH_STORE_KIND";
/// Set for the child that dies inside a transaction.
const MIDTX_ENV: &str = "SPIME_CRASH_MID_TRANSACTION";
const DEVICES: u8 = 6;
const PER_DEVICE: u64 = 80;
const BATCH: usize = 12;

fn vendor_keys() -> VendorKeys {
    VendorKeys::from_secrets(&[1; 32], &[2; 32])
}

/// The same message stream on every run: each device registers, then reports.
fn stream() -> Vec<Vec<u8>> {
    let grants = [(Purpose::USAGE_ANALYTICS, CategorySet::EMPTY.with(DataCategory::UsageCounters))];
    let mut fleet: Vec<SimDevice> =
        (1..=DEVICES).map(|i| SimDevice::new(DeviceId([i; 8]), [i; 32], &vendor_keys()).unwrap()).collect();
    let mut out = Vec::new();
    for d in &mut fleet {
        let reg = Register {
            certificate: d.certificate().clone(),
            firmware: FirmwareVersion { major: 1, minor: 0, patch: 0, build: 0 },
            consent: consent(1, &grants, 0),
            transfer: None,
        };
        out.push(d.seal(&reg).unwrap());
    }
    for i in 0..PER_DEVICE {
        for d in &mut fleet {
            let u = counter_usage(1, &[(1, i)]);
            out.push(d.seal(&u).unwrap());
        }
    }
    out
}

fn id_of(m: &[u8]) -> (DeviceId, u64) {
    let h = spime::seal::Envelope::parse(m).unwrap().header;
    (h.device, h.counter)
}

/// The child process: runs `child::<S>` for the store its parent named.
#[test]
fn crash_child_entry() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let kind = std::env::var(STORE_ENV).unwrap();
    #[cfg(feature = "redb")]
    if kind == <RedbStore as Durable>::NAME {
        child::<RedbStore>(dir.as_ref());
    }
    #[cfg(feature = "fjall")]
    if kind == <FjallStore as Durable>::NAME {
        child::<FjallStore>(dir.as_ref());
    }
    #[cfg(feature = "fjall")]
    if kind == <durable_support::TinyFjall as Durable>::NAME {
        child::<durable_support::TinyFjall>(dir.as_ref());
    }
    panic!("no store {kind}");
}

/// Spawns this test binary as a child running `crash_child_entry` on the
/// store `S` in `dir`, its stdout piped.
fn spawn<S: Durable>(dir: &std::path::Path, mid_transaction: bool) -> std::process::Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["crash_child_entry", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .env(STORE_ENV, S::NAME)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if mid_transaction {
        cmd.env(MIDTX_ENV, "1");
    }
    cmd.spawn().unwrap()
}

/// The child: ingest the whole stream from the start, printing each
/// acknowledgement only after `ingest_batch` (and so the commit) returned.
/// With `MIDTX_ENV`: write a transaction, say so, and wait to be killed
/// without committing it.
fn child<S: Durable>(dir: &std::path::Path) -> ! {
    let store = S::open_in(dir).unwrap();
    // The harness has printed `test crash_child_entry ... ` with no line
    // end: end that line, so that the first of ours is a line of its own.
    println!();
    if std::env::var_os(MIDTX_ENV).is_some() {
        let d = DeviceId([0xdd; 8]);
        let mut tx = store.begin().unwrap();
        assert_eq!(tx.next_counter(&d).unwrap(), 1, "the committed counter is read");
        let m = StoredMessage {
            device: d,
            counter: 9,
            kind: spime::wire::Kind::USAGE.to_byte(),
            received_at: 1,
            relationship: 1,
            purpose: Purpose::USAGE_ANALYTICS,
            proof: spime::consent::ledger::Proof {
                header: vec![],
                body: vec![7; 300],
                signature: spime::codec::Bytes64([0; 64]),
            },
        };
        // Enough writes that a store could not keep them all in a buffer.
        tx.put_messages((0..2000).map(|c| StoredMessage { counter: c, ..m.clone() }).collect()).unwrap();
        tx.put_windows(&[(d, spime::seal::replay::ReplayWindow::from_parts(5000, 1))]).unwrap();
        let mut out = std::io::stdout().lock();
        writeln!(out, "WRITTEN").unwrap();
        out.flush().unwrap();
        drop(out);
        loop {
            std::thread::park();
        }
    }
    let v = Ingestor::new(store, vendor_keys(), IngestConfig { workers: 2, batch_verify: true });
    let msgs = stream();
    let mut out = std::io::stdout().lock();
    for chunk in msgs.chunks(BATCH) {
        let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        for (m, r) in chunk.iter().zip(v.ingest_batch(&refs, 100)) {
            let (d, c) = id_of(m);
            match r {
                Ok(_) => writeln!(out, "ACK {d} {c}").unwrap(),
                Err(e) => writeln!(out, "REJ {d} {c} {}", e.reason()).unwrap(),
            }
        }
        out.flush().unwrap();
    }
    writeln!(out, "DONE").unwrap();
    out.flush().unwrap();
    std::process::exit(0);
}

fn sigkill_at_arbitrary_points_loses_no_ack_and_accepts_no_replay<S: Durable>() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = temp_dir(&format!("crash-{}", S::NAME));
    let all: Vec<(DeviceId, u64)> = stream().iter().map(|m| id_of(m)).collect();
    let total = all.len();
    let mut acked: HashSet<String> = HashSet::new();
    let mut rng: u64 = 0x5eed_1234_abcd_0001; // deterministic kill schedule
    let mut kills = 0;
    let mut finished = false;
    for round in 0..40 {
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let kill_after = if round < 25 { Some((rng >> 33) % 8) } else { None };
        let delay_us = (rng >> 20) % 1000;
        let mut child = spawn::<S>(&dir, false);
        let stdout = child.stdout.take().unwrap();
        let mut run_acks = 0u64;
        let mut done = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.strip_prefix("ACK ") {
                // A message acknowledged twice would be an accepted replay.
                assert!(acked.insert(rest.to_string()), "accepted twice: {rest}");
                run_acks += 1;
                if kill_after.is_some_and(|k| run_acks > k) {
                    std::thread::sleep(core::time::Duration::from_micros(delay_us));
                    break;
                }
            } else if let Some(rest) = line.strip_prefix("REJ ") {
                // After a restart, anything already stored is refused as a replay.
                assert!(rest.ends_with(" replay"), "unexpected rejection: {rest}");
            } else if line == "DONE" {
                done = true;
            }
        }
        if !done {
            let _ = child.kill(); // SIGKILL
            kills += 1;
        }
        let _ = child.wait();
        // Every acknowledged message is in the store after the crash.
        let store = S::open_in(&dir).unwrap();
        let mut tx = store.begin().unwrap();
        for a in &acked {
            let mut it = a.split(' ');
            let dev = it.next().unwrap();
            let counter: u64 = it.next().unwrap().parse().unwrap();
            let (d, _) = all.iter().find(|(d, _)| d.to_string() == dev).unwrap();
            assert!(tx.message(d, counter).unwrap().is_some(), "acknowledged {a} lost");
        }
        drop(tx);
        drop(store);
        if done {
            finished = true;
            break;
        }
    }
    assert!(finished, "the child never ran to completion");
    assert!(kills >= 3, "only {kills} kills");
    eprintln!("{}: {kills} SIGKILLs, {} messages acknowledged over all runs", S::NAME, acked.len());
    // Every message was accepted exactly once over all the runs.
    let store = S::open_in(&dir).unwrap();
    assert_eq!(store.message_count().unwrap(), total as u64);
    assert!(acked.len() <= total);
    drop(store);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A child killed while its transaction is open (written, not committed)
/// leaves none of it: after the reopen the store is as last committed.
fn sigkill_inside_a_transaction_keeps_none_of_it<S: Durable>() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = temp_dir(&format!("crash-midtx-{}", S::NAME));
    let d = DeviceId([0xdd; 8]);
    {
        let store = S::open_in(&dir).unwrap();
        let mut tx = store.begin().unwrap();
        assert_eq!(tx.next_counter(&d).unwrap(), 0);
        tx.commit().unwrap();
    }
    let mut child = spawn::<S>(&dir, true);
    // The test harness prints lines of its own first.
    let written = BufReader::new(child.stdout.take().unwrap()).lines().map_while(Result::ok).any(|l| l == "WRITTEN");
    assert!(written, "the child wrote no transaction");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let store = S::open_in(&dir).unwrap();
    assert_eq!(store.message_count().unwrap(), 0);
    assert!(store.messages(&d, &MessageQuery::all()).unwrap().is_empty());
    let mut tx = store.begin().unwrap();
    assert_eq!(tx.window(&d).unwrap(), spime::seal::replay::ReplayWindow::new());
    assert_eq!(tx.next_counter(&d).unwrap(), 1, "the committed counter, not the killed transaction's");
    drop(tx);
    drop(store);
    std::fs::remove_dir_all(&dir).unwrap();
}
