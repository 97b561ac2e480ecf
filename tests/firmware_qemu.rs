//! Builds the `no_std` firmware in examples/firmware, runs it under QEMU
//! (`mps2-an386`, Cortex-M4), opens every message it wrote with the
//! vendor side of the crate, reassembles its 20-byte chunks, checks the
//! contents, and prints the firmware's footprint (from the ELF section
//! headers) and its measured peak stack.
//!
//! The firmware also opens a vendor Receipt and Notice, compiled in from
//! examples/firmware/src/vendor.rs. The test checks that file against what
//! the vendor seals for the Register the firmware printed (the run is
//! deterministic); `SPIME_WRITE_VECTORS=1` rewrites it when the bytes
//! change, as for the vectors.
//!
//! Needs `qemu-system-arm` and the `thumbv7em-none-eabihf` target. Without
//! QEMU the test is skipped with a message locally, and fails under CI
//! (`CI` set): CI must not pass without running it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::std_instead_of_core
)]

mod device_common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use device_common::*;
use spime::consent::{Channel, Purpose, SentConsent};
use spime::message::{self, DecommissionReason, MetricValue, Notice, NoticeKind, Receipt};
use spime::wire::chunk::{Pushed, Reassembler};

const T0: u64 = 1_767_300_000;

/// The firmware's flash budget (.vector_table + .text + .rodata + .data):
/// issue 10's 49,152 B (48 KiB). Measured 48,912 B (Rust 1.95,
/// inline-threshold 10, salty backend, vendor keys held as bytes so no
/// curve25519-dalek, no core::fmt, in-flash outbox, key rotation, the
/// device's codec without serde, no memmove, one ChaCha, byte-loop
/// memcpy/memset, a four-byte RunError), 240 B under it (docs/firmware.md, "Footprint").
const FLASH_BUDGET: u32 = 49_152;

type Rx = Reassembler<2, { message::MAX_SEALED_LEN }>;

fn firmware_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/firmware")
}

fn have(cmd: &str) -> bool {
    Command::new(cmd).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

/// Runs `cmd` to completion with a deadline; returns (success, stdout, stderr).
fn run_with_deadline(mut cmd: Command, limit: Duration) -> (bool, String, String) {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).unwrap();
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).unwrap();
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (o, e) = (t_out.join().unwrap(), t_err.join().unwrap());
    match status {
        Some(s) => (s.success(), o, e),
        None => panic!("timed out after {limit:?}\nstdout:\n{o}\nstderr:\n{e}"),
    }
}

/// Section sizes from an ELF32 little-endian file's section headers.
fn elf_sections(elf: &[u8]) -> Vec<(String, u32)> {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 1, "not ELF32");
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap());
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap());
    let shoff = u32_at(0x20) as usize;
    let shentsize = u16_at(0x2E) as usize;
    let shnum = u16_at(0x30) as usize;
    let shstrndx = u16_at(0x32) as usize;
    let sh = |i: usize| shoff + i * shentsize;
    let strtab = u32_at(sh(shstrndx) + 0x10) as usize;
    (0..shnum)
        .map(|i| {
            let name_off = strtab + u32_at(sh(i)) as usize;
            let end = elf[name_off..].iter().position(|&b| b == 0).unwrap();
            let name = String::from_utf8_lossy(&elf[name_off..name_off + end]).into_owned();
            (name, u32_at(sh(i) + 0x14))
        })
        .collect()
}

#[test]
fn firmware_runs_under_qemu_and_its_messages_open() {
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
    if !have("qemu-system-arm") {
        assert!(!ci, "qemu-system-arm is not installed: CI must install it (apt-get install qemu-system-arm)");
        eprintln!("SKIPPED: qemu-system-arm is not installed (CI fails here instead)");
        return;
    }
    let dir = firmware_dir();
    let target_dir = dir.join("target");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(&dir)
        .args(["run", "--release", "--quiet"])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    let (ok, stdout, stderr) = run_with_deadline(cmd, Duration::from_secs(1500));
    // A build failure prints no MSG line; a run that fails prints ERROR
    // after the messages sealed so far (checked after the vendor's messages
    // are, so that a stale vendor.rs is named as the cause).
    assert!(stdout.starts_with("MSG "), "firmware build or run failed\nstdout:\n{stdout}\nstderr:\n{stderr}");

    let mut vendor = Vendor::new();
    let mut rx: Rx = Reassembler::new(60);
    let mut opened = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut stack = None;
    let mut dropped = None;
    let mut receipt = None;
    let mut notice = None;
    let mut done = false;
    let finish = |msg: Option<Vec<u8>>, chunks: &mut Vec<Vec<u8>>, rx: &mut Rx| {
        let Some(msg) = msg else { return };
        // the link duplicates and reverses everything (a duplicate after
        // completion would deliver the message again: the replay window's job)
        let mut got = None;
        let (first, rest) = chunks.split_first().unwrap();
        for c in rest.iter().rev().flat_map(|c| [c, c]).chain([first]) {
            if let Pushed::Complete(m) = rx.push(T0, c).unwrap() {
                assert!(got.is_none(), "completed twice");
                got = Some(m.to_vec());
            }
        }
        assert_eq!(got.as_deref(), Some(&msg[..]), "chunks do not reassemble to the message");
        chunks.clear();
    };
    for line in stdout.lines() {
        let mut parts = line.split(' ');
        match parts.next() {
            Some("MSG") => {
                finish(current.take(), &mut chunks, &mut rx);
                let _kind = parts.next().unwrap();
                let _counter: u64 = parts.next().unwrap().parse().unwrap();
                let bytes = hex::decode(parts.next().unwrap()).unwrap();
                opened.push(vendor.open(&bytes));
                current = Some(bytes);
            }
            Some("CHUNK") => {
                let c = hex::decode(parts.next().unwrap()).unwrap();
                assert!(c.len() <= 20, "chunk over the MTU");
                chunks.push(c);
            }
            Some("DROPPED") => {
                finish(current.take(), &mut chunks, &mut rx);
                dropped = Some(parts.map(|p| p.parse::<u32>().unwrap()).collect::<Vec<_>>());
            }
            Some("RECEIPT") => receipt = parts.next().map(str::to_string),
            Some("NOTICE") => notice = Some(parts.collect::<Vec<_>>().join(" ")),
            Some("STACK") => stack = Some(parts.next().unwrap().parse::<u64>().unwrap()),
            Some("DONE") => done = true,
            Some("ERROR") => break,
            _ => panic!("unexpected firmware output: {line}"),
        }
    }
    // The vendor's messages compiled into the firmware must be what the
    // vendor seals for this run (its first epoch's keys).
    check_vendor_messages(&mut vendor, &opened);
    assert!(ok && done, "firmware did not finish\n{stdout}\n{stderr}");
    assert_eq!(receipt.as_deref(), Some("1"), "the receipt for consent version 1 was opened");
    assert_eq!(notice.as_deref(), Some("show 1"), "the notice is allowed on the app and shown");

    // register, then the fault before the usage report, then the consent change;
    // the second usage report was purged by the withdrawal and never sent
    let kinds: Vec<&str> = opened
        .iter()
        .map(|(_, o)| match o {
            Opened::Register(_) => "register",
            Opened::Fault(_) => "fault",
            Opened::Usage(_) => "usage",
            Opened::Consent(_) => "consent",
            Opened::Transfer(_) => "transfer",
            Opened::Decommission(_) => "decommission",
        })
        .collect();
    assert_eq!(kinds, ["register", "fault", "usage", "consent", "transfer", "register", "decommission"]);
    let Opened::Register(r) = &opened[0].1 else { unreachable!() };
    assert_eq!(r.certificate, identity().certificate);
    assert_eq!(r.firmware, FIRMWARE);
    assert_eq!(r.consent, generous_consent(1, T0));
    let Opened::Fault(f) = &opened[1].1 else { unreachable!() };
    assert_eq!((f.code, f.occurrences, f.first_seen, f.last_seen), (0xE1, 2, T0 + 1_000, T0 + 2_000));
    assert_eq!((f.purpose, f.consent_version, &f.context[..]), (Purpose::DIAGNOSTICS, 1, &b"heater open circuit"[..]));
    let Opened::Usage(u) = &opened[2].1 else { unreachable!() };
    assert_eq!(
        (u.purpose, u.consent_version, u.window_start, u.window_end),
        (Purpose::USAGE_ANALYTICS, 1, T0, T0 + 3_600)
    );
    assert_eq!(u.metrics.iter().map(|m| m.id).collect::<Vec<_>>(), [1, 2, 3], "the Identifiers metric must not leave");
    assert_eq!(u.metrics[0].value, MetricValue::Counter(5));
    assert_eq!(u.metrics[1].value, MetricValue::Gauge { min: 96, max: 100, sum: 490, samples: 5 });
    assert_eq!(u.metrics[2].value, MetricValue::Histogram(heapless::Vec::from_slice(&[1, 2, 1, 1]).unwrap()));
    let Opened::Consent(c) = &opened[3].1 else { unreachable!() };
    assert_eq!(c.consent.state.version, 2);
    assert!(c.consent.state.grant(Purpose::USAGE_ANALYTICS).is_none());
    assert!(c.consent.state.grant(Purpose::DIAGNOSTICS).is_some());
    let Opened::Transfer(t) = &opened[4].1 else { unreachable!() };
    assert_eq!((t.at, t.consent_version, t.owner.is_none()), (T0 + 9_000, 2, true));
    let Opened::Register(r) = &opened[5].1 else { unreachable!() };
    assert_eq!(r.consent, generous_consent(4, T0 + 9_100), "the new owner's consent");
    assert_eq!(r.transfer.as_ref(), Some(t), "the first Register after a transfer carries it");
    let Opened::Decommission(d) = &opened[6].1 else { unreachable!() };
    assert_eq!((d.at, d.reason), (T0 + 20_000, DecommissionReason::Recycled));
    assert_eq!(opened.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [0, 2, 1, 4, 5, 6, 7], "envelope counters");
    assert_eq!(dropped, Some(vec![0, 0, 0, 0, 1]), "usage, fault, consent, lifecycle, purged");

    // footprint, from the ELF section headers
    let elf = std::fs::read(target_dir.join("thumbv7em-none-eabihf/release/spime-firmware")).unwrap();
    let sections = elf_sections(&elf);
    let size = |n: &str| sections.iter().filter(|(s, _)| s == n).map(|(_, z)| *z).sum::<u32>();
    let flash = size(".vector_table") + size(".text") + size(".rodata") + size(".data");
    let ram = size(".data") + size(".bss") + size(".uninit");
    let stack = stack.expect("no STACK line");
    println!(
        "FOOTPRINT flash {flash} (.vector_table {} .text {} .rodata {} .data {}) ram {ram} (.data {} .bss {}, of which 24576 is the simulated NOR flash) peak stack {stack}",
        size(".vector_table"),
        size(".text"),
        size(".rodata"),
        size(".data"),
        size(".data"),
        size(".bss"),
    );
    assert!(size(".text") > 0 && stack > 0);
    assert!(flash <= FLASH_BUDGET, "flash {flash} B is over the budget of {FLASH_BUDGET} B (docs/firmware.md)");
    let static_ram = u64::from(size(".data") + size(".bss") + size(".uninit")) - SIM_FLASH;
    println!(
        "FOOTPRINT static RAM {static_ram} + peak stack {stack} = {} (budget {RAM_AND_STACK_BUDGET})",
        static_ram + stack
    );
    assert!(
        static_ram + stack <= RAM_AND_STACK_BUDGET,
        "static RAM {static_ram} + peak stack {stack} exceeds the budget of {RAM_AND_STACK_BUDGET} bytes"
    );
}

/// The vendor's Receipt for the Register's consent and a Notice, sealed
/// for the firmware's first epoch as the vendor seals them, compared with
/// examples/firmware/src/vendor.rs (rewritten with `SPIME_WRITE_VECTORS=1`).
fn check_vendor_messages(vendor: &mut Vendor, opened: &[(u64, Opened)]) {
    let Some((_, Opened::Register(r))) = opened.first() else {
        panic!("the firmware's first message is not a Register")
    };
    let digest = SentConsent::of(&r.consent).unwrap().digest;
    let receipt = vendor.seal(1, &Receipt { consent_version: 1, consent_digest: digest, received_at: T0 + 60 });
    let notice = vendor.seal(
        1,
        &Notice {
            id: 1,
            purpose: Purpose::PROACTIVE_SERVICE,
            channel: Channel::App,
            topic: 4,
            kind: NoticeKind::MaintenanceDue,
            issued_at: T0 + 7_900,
            expires_at: T0 + 86_400 * 30,
            title: "Descale".try_into().unwrap(),
            text: "Time to descale your kettle.".try_into().unwrap(),
        },
    );
    let array = |name: &str, doc: &str, bytes: &[u8]| {
        let body: Vec<String> = bytes
            .chunks(16)
            .map(|c| format!("    {},", c.iter().map(|b| format!("0x{b:02x}")).collect::<Vec<_>>().join(", ")))
            .collect();
        format!("/// {doc}\npub const {name}: [u8; {}] = [\n{}\n];\n", bytes.len(), body.join("\n"))
    };
    let text = format!(
        "//! Generated by tests/firmware_qemu.rs (`SPIME_WRITE_VECTORS=1 cargo test\n//! --test firmware_qemu`): the vendor's messages to this firmware's test\n//! device, sealed for its first epoch.\n\n{}\n{}",
        array("RECEIPT", "The vendor's Receipt for the first Register's consent (vendor counter 1).", &receipt),
        array("NOTICE", "A vendor Notice for proactive service on the app (vendor counter 2).", &notice),
    );
    let path = firmware_dir().join("src/vendor.rs");
    let held = std::fs::read_to_string(&path).unwrap_or_default();
    if held != text {
        if std::env::var_os("SPIME_WRITE_VECTORS").is_some() {
            std::fs::write(&path, &text).unwrap();
            panic!("rewrote {}: run the test again", path.display());
        }
        panic!(
            "{} is not what the vendor seals for this run: rewrite it with SPIME_WRITE_VECTORS=1 cargo test --test firmware_qemu",
            path.display()
        );
    }
}

/// The simulated NOR flash array (six 4 KiB sectors), a stand-in for the
/// product's flash: not counted as RAM.
const SIM_FLASH: u64 = 24_576;

/// Static RAM (without the simulated flash) plus measured peak stack, in
/// bytes: issue 10's target. Measured 1,320 + 6,452 = 7,772 (Rust 1.95,
/// salty backend; was 5,128 + 18,828 = 23,956 before issue 10), 420 bytes
/// under it (docs/firmware.md, "RAM and stack").
const RAM_AND_STACK_BUDGET: u64 = 8_192;
