//! Builds the `no_std` firmware in examples/firmware, runs it under QEMU
//! (`mps2-an386`, Cortex-M4), opens every message it wrote with the
//! vendor side of the crate, reassembles its 20-byte chunks, checks the
//! contents, and prints the firmware's footprint (from the ELF section
//! headers) and its measured peak stack.
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
use spime::consent::Purpose;
use spime::message::{self, MetricValue};
use spime::wire::chunk::{Pushed, Reassembler};

const T0: u64 = 1_767_300_000;

/// The firmware's flash budget (.vector_table + .text + .rodata + .data).
/// Issue 10 asks for 49,152 B (48 KiB); this is not reached yet: measured
/// 62,400 B (Rust 1.95, salty backend, no core::fmt), and the budget is
/// that plus a 1,088-byte margin (62 KiB), so a change that adds more than
/// that fails here. Lower it as the firmware shrinks (docs/firmware.md).
const FLASH_BUDGET: u32 = 63_488;

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
    assert!(ok, "firmware build or run failed\nstdout:\n{stdout}\nstderr:\n{stderr}");

    let mut vendor = Vendor::new();
    let mut rx: Rx = Reassembler::new(60);
    let mut opened = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut stack = None;
    let mut dropped = None;
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
            Some("STACK") => stack = Some(parts.next().unwrap().parse::<u64>().unwrap()),
            Some("DONE") => done = true,
            _ => panic!("unexpected firmware output: {line}"),
        }
    }
    assert!(done, "firmware did not finish\n{stdout}\n{stderr}");

    // register, then the fault before the usage report, then the consent change;
    // the second usage report was purged by the withdrawal and never sent
    let kinds: Vec<&str> = opened
        .iter()
        .map(|(_, o)| match o {
            Opened::Register(_) => "register",
            Opened::Fault(_) => "fault",
            Opened::Usage(_) => "usage",
            Opened::Consent(_) => "consent",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["register", "fault", "usage", "consent"]);
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
    assert_eq!(opened.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [0, 2, 1, 4], "envelope counters");
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

/// The simulated NOR flash array (six 4 KiB sectors), a stand-in for the
/// product's flash: not counted as RAM.
const SIM_FLASH: u64 = 24_576;

/// Static RAM (without the simulated flash) plus measured peak stack, in
/// bytes. Reached: 1,320 + 9,500 = 10,820 (Rust 1.95, ed25519-dalek; was
/// 5,128 + 18,828 = 23,956). Issue 10 asks for 8,192, which this does NOT
/// meet yet: the device value (2,072 B) lives on the stack, and Ed25519
/// signing with dalek takes about 3.4 KB of the deepest paths
/// (docs/firmware.md, "RAM and stack"). The margin (444 B) covers compiler drift.
const RAM_AND_STACK_BUDGET: u64 = 11_264;
