//! The fleet view as an operator sees it: a server on 127.0.0.1, a few
//! real devices over CoAP, then the pages in headless Chromium — a
//! screenshot, and the rendered text checked. Without Chromium the test is
//! skipped with a message, except under CI (CI=true), where it fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::std_instead_of_core,
    clippy::cast_possible_truncation
)]

mod server_common;

use std::path::{Path, PathBuf};
use std::process::Command;

use server_common::*;
use spime::consent::{DataCategory, Purpose};
use spime::device::fault::{FaultEvent, FaultRecorder};
use spime::device::metrics::{MetricDef, MetricKind, Metrics};
use spime::device::session::StageHandle;
use spime::message::{DecommissionReason, RebootReason, Severity};

fn chromium() -> Option<PathBuf> {
    for name in ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"] {
        let found = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|d| d.join(name))
            .find(|p| p.is_file());
        if found.is_some() {
            return found;
        }
    }
    None
}

/// Runs headless Chromium on `url` with `extra` flags; returns stdout.
fn browse(chrome: &Path, profile: &Path, extra: &[&str], url: &str) -> String {
    let out = Command::new(chrome)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1200,1400",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn text_of(dom: &str) -> String {
    // The visible text, roughly: tags removed, entities for what the page uses.
    let mut out = String::new();
    let mut in_tag = false;
    for c in dom.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&amp;", "&").split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn the_fleet_and_a_device_render_in_a_browser() {
    let Some(chrome) = chromium() else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("chromium is not installed (CI installs it: apt-get install chromium)");
        }
        eprintln!("SKIPPED the_fleet_and_a_device_render_in_a_browser: no chromium on PATH (apt-get install chromium)");
        return;
    };
    let server = TestServer::start("view");
    let mut obs: Vec<Ob> = (0..3).map(|_| Ob::new()).collect();
    let mut devs: Vec<Dev<'_>> =
        obs.iter_mut().enumerate().map(|(i, ob)| Dev::boot(identity(20 + i as u8), storage(), ob).unwrap()).collect();
    let mut client = server.client();
    for (i, d) in devs.iter_mut().enumerate() {
        let StageHandle::Unregistered(u) = d.handle() else { panic!() };
        u.register(&mut rng(i as u8), consent(1, T0)).unwrap();
        deliver(&mut client, d);
    }
    // Three days of usage from each, a fault from the first, the last decommissioned.
    let mut faults: FaultRecorder<2> = FaultRecorder::new(identity(20).firmware);
    for day in 1..=3u64 {
        let now = T0 + day * 86_400;
        server.set_time(now);
        for (i, d) in devs.iter_mut().enumerate() {
            let mut m: Metrics<1> = Metrics::new(now - 86_400);
            m.define(MetricDef { id: 1, category: DataCategory::UsageCounters, kind: MetricKind::Counter }).unwrap();
            m.increment(1, day * 10 + i as u64).unwrap();
            let StageHandle::Registered(mut r) = d.handle() else { panic!() };
            r.report_window(Purpose::USAGE_ANALYTICS, m.take_window(now), now).unwrap();
            if i == 0 && day == 2 {
                let e = FaultEvent {
                    code: 0x0e21,
                    severity: Severity::Error,
                    component: 4,
                    uptime_s: 300,
                    reboot_reason: RebootReason::Watchdog,
                };
                faults.record(now - 60, e, b"heater");
                r.report_faults(&mut faults, Purpose::DIAGNOSTICS, now).unwrap();
            }
            deliver(&mut client, d);
        }
    }
    let StageHandle::Registered(r) = devs[2].handle() else { panic!() };
    r.decommission(T0 + 4 * 86_400, DecommissionReason::Recycled).unwrap();
    deliver(&mut client, &mut devs[2]);
    // One refusal to show: bytes that are not an envelope.
    let garbage = client.post(spime::server::coap::MESSAGE_PATH, &[0u8; 4]).unwrap();
    assert!(garbage.code.is_error());

    let profile = std::env::temp_dir().join(format!("spime-chromium-{}", std::process::id()));
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let fleet_png = shots.join("fleet.png");
    let device_png = shots.join("device.png");
    let _ = std::fs::remove_file(&fleet_png);
    let fleet_url = format!("http://{}/", server.http);
    let id0 = hex::encode(devs[0].device_id().0);
    let device_url = format!("http://{}/devices/{id0}", server.http);

    // The fleet.
    let dom = browse(&chrome, &profile, &["--dump-dom"], &fleet_url);
    let text = text_of(&dom);
    assert!(text.contains("Fleet"), "{text}");
    assert!(text.contains("active 2"), "{text}");
    assert!(text.contains("decommissioned 1"), "{text}");
    for d in &devs {
        assert!(text.contains(&hex::encode(d.device_id().0)), "{text}");
    }
    assert!(text.contains("decode 1"), "refusals by reason: {text}");
    assert!(dom.contains("<svg"), "the traffic chart");
    browse(&chrome, &profile, &[&format!("--screenshot={}", fleet_png.display())], &fleet_url);
    let png = std::fs::read(&fleet_png).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 5_000, "a real screenshot ({} bytes)", png.len());

    // A device: consent in words, the ledger checked, its fault, the usage chart.
    let dom = browse(&chrome, &profile, &["--dump-dom"], &device_url);
    let text = text_of(&dom);
    assert!(text.contains(&format!("Device {id0}")), "{text}");
    let expiry = spime_date(T0 + 60 * 86_400);
    assert!(text.contains(&format!("usage analytics: usage counters until {expiry}")), "{text}");
    assert!(text.contains("no location"), "{text}");
    assert!(text.contains("hash chain verified (1 entries)"), "{text}");
    assert!(text.contains("0x0e21"), "the fault code: {text}");
    assert_eq!(dom.matches("fill=\"#3a7\"").count(), 3, "one bar per usage report");
    browse(&chrome, &profile, &[&format!("--screenshot={}", device_png.display())], &device_url);
    let png = std::fs::read(&device_png).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 5_000);
    eprintln!("screenshots: {} {}", fleet_png.display(), device_png.display());
    let _ = std::fs::remove_dir_all(&profile);
}

/// `YYYY-MM-DD` of a Unix time (the pages' date format).
fn spime_date(t: u64) -> String {
    let days = i64::try_from(t / 86_400).unwrap() + 719_468;
    let era = days.div_euclid(146_097);
    let doe = days.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    format!("{:04}-{m:02}-{d:02}", yoe + era * 400 + i64::from(m <= 2))
}
