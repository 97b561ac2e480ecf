//! Two ingest worker processes over one PostgreSQL database, on partitions
//! of one simulated fleet, as docs/scaling.md runs them: a rebalance in the
//! middle of the stream (for a few rounds the moved shard's messages reach
//! both the old and the new owner), and a `kill -9` of one worker with a
//! batch in flight, after which a fresh worker takes its shards. The test
//! process plays the gateways and the devices: a message not acknowledged
//! is sent again later, in order, to the shard's owner.
//!
//! Then: no acknowledged message is missing from the database, no message
//! was acknowledged twice and every replay of the whole stream is refused,
//! every message of the stream is stored exactly once, and every device's
//! consent ledger verifies (chain and proofs). The counts are printed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod pg_support;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use spime::consent::ledger::ConsentLedger;
use spime::consent::*;
use spime::message::*;
use spime::seal::VendorKeys;
use spime::vendor::sim::{SimDevice, consent, counter_usage};
use spime::vendor::*;
use spime::wire::DeviceId;

const WORKER_ENV: &str = "SPIME_FLEET_WORKER_DB";
const DEVICES: u8 = 24;
const REPORTS: u64 = 20;
const SHARDS: usize = 4;
const PER_ROUND: usize = 3;
/// Rounds in which shard 1 moves from worker 0 to worker 1, its messages
/// reaching both; from the last one on, worker 1 alone owns it.
const REBALANCE: core::ops::RangeInclusive<usize> = 3..=5;
const KILL_ROUND: usize = 8;
/// The round whose answers from worker 0 are lost on the way back (the
/// gateway died after the commit): the devices send those messages again.
const LOST_ANSWERS_ROUND: usize = 10;

fn vendor_keys() -> VendorKeys {
    VendorKeys::from_secrets(&[1; 32], [2; 32])
}

fn fleet() -> Vec<SimDevice> {
    (1..=DEVICES)
        .map(|i| {
            use sha2::Digest;
            let h = sha2::Sha256::digest([b'f', i]);
            SimDevice::new(DeviceId(core::array::from_fn(|j| h[j])), [i; 32], &vendor_keys()).unwrap()
        })
        .collect()
}

/// Each device's messages in order: Register, reports, a consent change
/// (analytics widened by diagnostics), more reports under it.
fn streams() -> Vec<(DeviceId, Vec<Vec<u8>>)> {
    let analytics = (Purpose::USAGE_ANALYTICS, CategorySet::EMPTY.with(DataCategory::UsageCounters));
    let diagnostics = (Purpose::DIAGNOSTICS, CategorySet::EMPTY.with(DataCategory::DeviceHealth));
    fleet()
        .into_iter()
        .map(|mut d| {
            let mut out = vec![
                d.seal(&Register {
                    certificate: d.certificate().clone(),
                    firmware: FirmwareVersion { major: 1, minor: 0, patch: 0, build: 0 },
                    consent: consent(1, &[analytics], 0),
                })
                .unwrap(),
            ];
            for i in 0..REPORTS {
                out.push(d.seal(&counter_usage(1, &[(1, i)])).unwrap());
            }
            out.push(d.seal(&ConsentUpdate { consent: consent(2, &[analytics, diagnostics], 10) }).unwrap());
            for i in 0..REPORTS {
                out.push(d.seal(&counter_usage(2, &[(1, 100 + i)])).unwrap());
            }
            (d.id(), out)
        })
        .collect()
}

fn id_of(m: &[u8]) -> (DeviceId, u64) {
    let h = spime::seal::Envelope::parse(m).unwrap().header;
    (h.device, h.counter)
}

/// A worker: reads batches from stdin (`B <now> <n>` and n hex lines),
/// ingests each with one `ingest_batch`, and answers one line per message
/// (`ACK <device> <counter>` or `REJ <device> <counter> <reason>`), then `END`.
#[test]
fn fleet_worker_entry() {
    let Ok(db) = std::env::var(WORKER_ENV) else { return };
    let store = PgStore::connect(&db).unwrap();
    let v = Ingestor::new(store, vendor_keys(), IngestConfig { workers: 1, batch_verify: true });
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY").unwrap();
    out.flush().unwrap();
    let mut lines = std::io::stdin().lock().lines();
    while let Some(Ok(line)) = lines.next() {
        let mut parts = line.split(' ');
        if parts.next() != Some("B") {
            continue;
        }
        let now: u64 = parts.next().unwrap().parse().unwrap();
        let n: usize = parts.next().unwrap().parse().unwrap();
        let batch: Vec<Vec<u8>> = (0..n).map(|_| hex::decode(lines.next().unwrap().unwrap()).unwrap()).collect();
        let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
        for (m, r) in batch.iter().zip(v.ingest_batch(&refs, now)) {
            let (d, c) = id_of(m);
            match r {
                Ok(_) => writeln!(out, "ACK {d} {c}").unwrap(),
                Err(e) => writeln!(out, "REJ {d} {c} {}", e.reason()).unwrap(),
            }
        }
        writeln!(out, "END").unwrap();
        out.flush().unwrap();
    }
    std::process::exit(0);
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    fn spawn(db: &str) -> Worker {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["fleet_worker_entry", "--exact", "--nocapture", "--test-threads=1"])
            .env(WORKER_ENV, db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        // The harness prints "test fleet_worker_entry ... " before the test's own output.
        while !line.trim_end().ends_with("READY") {
            line.clear();
            assert!(stdout.read_line(&mut line).unwrap() > 0, "worker exited before it was ready");
        }
        Worker { child, stdin, stdout }
    }

    fn send(&mut self, now: u64, batch: &[Vec<u8>]) {
        let mut s = format!("B {now} {}\n", batch.len());
        for m in batch {
            s.push_str(&hex::encode(m));
            s.push('\n');
        }
        self.stdin.write_all(s.as_bytes()).unwrap();
        self.stdin.flush().unwrap();
    }

    /// The answers to the batch sent: (device, counter, None for ACK or Some(reason)).
    fn answers(&mut self) -> Vec<(String, u64, Option<String>)> {
        let mut out = Vec::new();
        loop {
            let mut line = String::new();
            assert!(self.stdout.read_line(&mut line).unwrap() > 0, "worker died");
            let parts: Vec<&str> = line.split_whitespace().collect();
            match parts.first().copied() {
                Some("END") => return out,
                Some("ACK") => out.push((parts[1].to_string(), parts[2].parse().unwrap(), None)),
                Some("REJ") => out.push((parts[1].to_string(), parts[2].parse().unwrap(), Some(parts[3].to_string()))),
                _ => {}
            }
        }
    }
}

fn conn_string(cfg: &postgres::Config) -> String {
    let mut s = String::new();
    if let Some(postgres::config::Host::Tcp(h)) = cfg.get_hosts().first() {
        s.push_str(&format!("host={h} "));
    }
    if let Some(postgres::config::Host::Unix(p)) = cfg.get_hosts().first() {
        s.push_str(&format!("host={} ", p.display()));
    }
    if let Some(p) = cfg.get_ports().first() {
        s.push_str(&format!("port={p} "));
    }
    if let Some(u) = cfg.get_user() {
        s.push_str(&format!("user={u} "));
    }
    if let Some(p) = cfg.get_password() {
        s.push_str(&format!("password='{}' ", String::from_utf8_lossy(p).replace('\'', "\\'")));
    }
    s.push_str(&format!("dbname={}", cfg.get_dbname().unwrap()));
    s
}

#[test]
fn two_workers_rebalance_and_kill_lose_nothing_and_accept_no_replay() {
    if std::env::var(WORKER_ENV).is_ok() {
        return;
    }
    let Some(server) = pg_support::server() else { return };
    let cfg = pg_support::fresh_database(server);
    let db = conn_string(&cfg);
    PgStore::connect(&db).unwrap(); // migrate once, before the workers race to
    let streams = streams();
    let total: usize = streams.iter().map(|(_, s)| s.len()).sum();
    let mut pending: Vec<VecDeque<Vec<u8>>> = streams.iter().map(|(_, s)| s.iter().cloned().collect()).collect();
    let shard: Vec<usize> = streams.iter().map(|(d, _)| partition_of(d, SHARDS)).collect();
    let mut owner = [0usize, 0, 1, 1];
    let mut workers = [Worker::spawn(&db), Worker::spawn(&db)];
    let mut acked: HashSet<(String, u64)> = HashSet::new();
    let mut refused: HashMap<String, u64> = HashMap::new();
    let (mut kills, mut duplicated_deliveries, mut replays_refused_in_run, mut lost_acks) = (0, 0, 0, 0);
    let mut round = 0usize;
    while pending.iter().any(|p| !p.is_empty()) {
        assert!(round < 400, "the fleet did not drain: {refused:?}");
        if round == *REBALANCE.end() {
            owner[1] = 1;
        }
        let now = 1000 + u64::try_from(round).unwrap();
        // What each worker gets this round.
        let mut batches: [Vec<Vec<u8>>; 2] = [Vec::new(), Vec::new()];
        for (i, p) in pending.iter().enumerate() {
            let msgs: Vec<Vec<u8>> = p.iter().take(PER_ROUND).cloned().collect();
            let s = shard[i];
            if s == 1 && REBALANCE.contains(&round) && round != *REBALANCE.end() {
                // Mid-rebalance: the old and the new owner both get shard 1's messages.
                batches[1].extend(msgs.iter().cloned());
                duplicated_deliveries += msgs.len();
            }
            batches[owner[s]].extend(msgs);
        }
        // Send to both first, so they run at the same time.
        for (w, b) in workers.iter_mut().zip(&batches) {
            if !b.is_empty() {
                w.send(now, b);
            }
        }
        let mut answers = Vec::new();
        for (i, (w, b)) in workers.iter_mut().zip(&batches).enumerate() {
            if b.is_empty() {
                continue;
            }
            if round == KILL_ROUND && i == 1 {
                // kill -9 with the batch in flight: its answers are never read.
                std::thread::sleep(core::time::Duration::from_millis(5));
                w.child.kill().unwrap();
                w.child.wait().unwrap();
                kills += 1;
                continue;
            }
            let got = w.answers();
            if round == LOST_ANSWERS_ROUND && i == 0 {
                lost_acks += got.iter().filter(|(_, _, v)| v.is_none()).count();
                continue;
            }
            answers.extend(got);
        }
        if round == KILL_ROUND {
            workers[1] = Worker::spawn(&db);
        }
        let mut settled: HashSet<(String, u64)> = HashSet::new();
        for (d, c, verdict) in answers {
            match verdict.as_deref() {
                None => {
                    assert!(acked.insert((d.clone(), c)), "acknowledged twice: {d} {c}");
                    settled.insert((d, c));
                }
                Some("replay") => {
                    // Stored before (an answer lost to the kill, or the other owner's).
                    replays_refused_in_run += 1;
                    settled.insert((d, c));
                }
                Some(reason) => *refused.entry(reason.to_string()).or_default() += 1,
            }
        }
        // The devices drop what was settled, keep the rest in order.
        for p in &mut pending {
            while let Some(m) = p.front() {
                let (d, c) = id_of(m);
                if settled.contains(&(d.to_string(), c)) {
                    p.pop_front();
                } else {
                    break;
                }
            }
        }
        round += 1;
    }
    // Every message of the stream is stored exactly once, every acknowledged one among them.
    let mut c = cfg.connect(postgres::NoTls).unwrap();
    let rows = c.query("SELECT device, counter FROM messages", &[]).unwrap();
    let stored: HashSet<(String, u64)> = rows
        .iter()
        .map(|r| {
            let d: Vec<u8> = r.get(0);
            let c: i64 = r.get(1);
            (DeviceId(d.try_into().unwrap()).to_string(), u64::from_be_bytes(c.to_be_bytes()) ^ (1 << 63))
        })
        .collect();
    assert_eq!(rows.len(), total, "each message stored once");
    assert_eq!(stored.len(), total);
    let lost = acked.difference(&stored).count();
    // (Answers lost on the way were commits too: every message is stored.)
    assert_eq!(lost, 0, "acknowledged messages missing from the database");
    // The whole stream again, to a fresh worker: every message is a replay.
    let mut replayer = Worker::spawn(&db);
    let mut replays_accepted = 0;
    let mut replays_refused = 0;
    let all: Vec<Vec<u8>> = streams.iter().flat_map(|(_, s)| s.iter().cloned()).collect();
    for chunk in all.chunks(200) {
        replayer.send(5000, chunk);
        for (_, _, verdict) in replayer.answers() {
            match verdict.as_deref() {
                None => replays_accepted += 1,
                Some("replay") => replays_refused += 1,
                Some(other) => panic!("replay refused for another reason: {other}"),
            }
        }
    }
    assert_eq!(replays_accepted, 0);
    assert_eq!(replays_refused, total);
    assert!(
        lost_acks > 0 && replays_refused_in_run >= lost_acks,
        "resent after lost answers: refused as replays ({lost_acks} lost, {replays_refused_in_run} refused)"
    );
    // Every ledger verifies: chain and proofs.
    let store = PgStore::connect(&db).unwrap();
    let mut intact = 0;
    for d in fleet() {
        let entries = store.consent_ledger(&d.id()).unwrap();
        let ledger = ConsentLedger::from_entries(d.id(), entries).unwrap();
        ledger.verify_proofs(&d.key().public()).unwrap();
        assert_eq!(ledger.current_version(), Some(2));
        intact += 1;
    }
    assert_eq!(store.message_count().unwrap(), u64::try_from(total).unwrap());
    for mut w in workers.into_iter().chain([replayer]) {
        drop(w.stdin);
        w.child.wait().unwrap();
    }
    let refused_text: Vec<String> = refused.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let report = format!(
        "fleet: devices {DEVICES}, messages {total}, rounds {round}, acknowledged {}, duplicated deliveries {duplicated_deliveries}, \
         kills {kills}, acknowledgements lost on the way {lost_acks}, replays refused during the run {replays_refused_in_run}, refused and resent [{}]\n\
         fleet: acknowledged lost {lost}, replays accepted {replays_accepted} (of {replays_refused} replayed), \
         ledgers intact {intact}/{DEVICES}\n",
        acked.len(),
        refused_text.join(", ")
    );
    std::io::stderr().write_all(report.as_bytes()).unwrap();
}
