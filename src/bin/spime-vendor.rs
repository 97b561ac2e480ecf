//! `spime-vendor`: the spime vendor server, its keys, and a decoder for
//! people debugging. `spime-vendor --help` explains every command.

use core::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use spime::codec;
use spime::message::{ConsentUpdate, Decommission, Fault, Notice, Receipt, Register, Transfer, Usage};
use spime::seal::{Envelope, SessionKeys, VendorKeys};
use spime::server::{self, Config, keyfile};
use spime::vendor::{DeviceRegistry, IngestConfig, Ingestor, RedbStore, Store};
use spime::wire::{Direction, Kind};

/// The store file's name inside the data directory.
const STORE_FILE: &str = "vendor.redb";

#[derive(Parser)]
#[command(
    name = "spime-vendor",
    version,
    about = "The spime vendor server: devices speak CoAP, operators HTTP.",
    long_about = "The spime vendor server.\n\n\
        Devices POST sealed spime envelopes over CoAP (UDP, RFC 7252) to /s, or spime chunks to /c \
        (SPEC.md §11); the response code acknowledges a message only after it is committed, and \
        its payload carries any receipt for the device. Operators get JSON under /api, Prometheus \
        text at /metrics, /healthz, and a view of the fleet at /.\n\n\
        Start with `spime-vendor keys init DATA`, then `spime-vendor serve --data DATA`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the server until SIGINT or SIGTERM (then it stops receiving,
    /// commits and answers the batch in flight, and exits).
    Serve {
        /// The data directory: vendor.keys (from `keys init`) and the
        /// embedded store vendor.redb (created if missing).
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// The UDP address devices send CoAP to.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:5683")]
        coap: SocketAddr,
        /// The TCP address of the operator HTTP interface and fleet view.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
        http: SocketAddr,
        /// The most messages committed as one batch (one fsync).
        #[arg(long, value_name = "N", default_value_t = 256)]
        batch: usize,
        /// Ingest worker threads per batch (default: one per core).
        #[arg(long, value_name = "N")]
        workers: Option<usize>,
    },
    /// Creates or shows the vendor keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Prints an envelope's header and, given the data directory, its
    /// decrypted and verified body as JSON.
    Decode {
        /// The envelope as hex (spaces allowed); omit to use --file.
        #[arg(value_name = "HEX", required_unless_present = "file")]
        hex: Option<String>,
        /// A file holding the raw envelope bytes.
        #[arg(long, value_name = "PATH", conflicts_with = "hex")]
        file: Option<PathBuf>,
        /// The data directory whose keys (and, for a message that does not
        /// open its epoch, stored session keys) open the message. The
        /// store is opened, so stop a server using it first.
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Creates fresh vendor keys in DIR: vendor.keys (secret, mode 0600; back
    /// it up offline) and vendor.pub (provision into devices). Never
    /// overwrites.
    Init {
        /// The data directory.
        dir: PathBuf,
    },
    /// Prints the public keys of DIR/vendor.keys.
    Show {
        /// The data directory.
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spime-vendor: {e}");
            ExitCode::FAILURE
        }
    }
}

type Failure = Box<dyn core::error::Error>;

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Serve { data, coap, http, batch, workers } => serve(&data, coap, http, batch, workers),
        Command::Keys { command: KeysCommand::Init { dir } } => {
            let keys = keyfile::init(&dir)?;
            println!("created {}", dir.join(keyfile::SECRET_FILE).display());
            print_public(&keys);
            Ok(())
        }
        Command::Keys { command: KeysCommand::Show { dir } } => {
            print_public(&keyfile::load(&dir)?);
            Ok(())
        }
        Command::Decode { hex, file, data } => {
            let bytes = match (hex, file) {
                (Some(h), _) => hex::decode(h.split_whitespace().collect::<String>())?,
                (None, Some(f)) => std::fs::read(&f).map_err(|e| format!("{}: {e}", f.display()))?,
                (None, None) => return Err("give the envelope as HEX or --file".into()),
            };
            let out = decode(&bytes, data.as_deref())?;
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
    }
}

fn print_public(keys: &VendorKeys) {
    let p = keys.public();
    println!("signing        {}", hex::encode(p.signing.to_bytes()));
    println!("key-agreement  {}", hex::encode(p.key_agreement));
}

fn serve(data: &Path, coap: SocketAddr, http: SocketAddr, batch: usize, workers: Option<usize>) -> Result<(), Failure> {
    let keys =
        keyfile::load(data).map_err(|e| format!("{e} (run `spime-vendor keys init {}` first)", data.display()))?;
    let store_file = data.join(STORE_FILE);
    let store = RedbStore::open(&store_file)?;
    let mut ingest = IngestConfig::default();
    if let Some(w) = workers {
        ingest.workers = w.max(1);
    }
    let ingestor = Arc::new(Ingestor::new(store, keys, ingest));
    let config = Config { coap, http, batch_max: batch, store_file: Some(store_file), ..Config::default() };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let running = server::start(ingestor, config).await?;
        eprintln!("CoAP on udp://{}  (POST envelopes to /s, chunks to /c)", running.coap);
        eprintln!("fleet view on http://{}/  (metrics at /metrics)", running.http);
        running.wait_for_signal().await;
        Ok::<(), Failure>(())
    })
}

/// The header, and with `data` the verified body, as JSON.
fn decode(bytes: &[u8], data: Option<&Path>) -> Result<Value, Failure> {
    let env = Envelope::parse(bytes)?;
    let h = env.header;
    let mut out = json!({
        "length": bytes.len(),
        "header": {
            "kind": server::kind_name(h.kind),
            "direction": if h.kind.direction() == Direction::DeviceToVendor { "device to vendor" } else { "vendor to device" },
            "device": hex::encode(h.device.0),
            "epoch": h.epoch,
            "counter": h.counter,
            "ephemeral_key": h.ephemeral.map(hex::encode),
        },
    });
    let Some(dir) = data else { return Ok(out) };
    let keys = keyfile::load(dir)?;
    let store = RedbStore::open(dir.join(STORE_FILE))?;
    let record = store.begin()?.device(&h.device)?;
    let session: SessionKeys = match (h.ephemeral, &record) {
        (Some(eph), _) => keys.accept_epoch(&h.device, h.epoch, &eph)?,
        (None, Some(r)) if r.epoch() == h.epoch => r.session.keys(),
        (None, Some(r)) => {
            return Err(format!("epoch {} is not the stored epoch {}; its keys are gone", h.epoch, r.epoch()).into());
        }
        (None, None) => return Err("device not in the store and the message opens no epoch".into()),
    };
    let mut buf = vec![0u8; env.plaintext_len()];
    let pt = env.decrypt(&session, &mut buf)?;
    let signer = if h.kind.direction() == Direction::VendorToDevice {
        keys.public().signing
    } else if h.kind == Kind::REGISTER {
        let reg: Register = codec::decode(pt.body_bytes())?;
        reg.certificate.verify(&keys.public().signing)?
    } else {
        let r = record.as_ref().ok_or("device not in the store: no key to verify with")?;
        ed25519_dalek::VerifyingKey::from_bytes(&r.certificate.body.device_key)?
    };
    let verified = pt.verify(&signer)?;
    let body = match h.kind {
        Kind::REGISTER => serde_json::to_value(verified.decode::<Register>()?)?,
        Kind::USAGE => serde_json::to_value(verified.decode::<Usage>()?)?,
        Kind::FAULT => serde_json::to_value(verified.decode::<Fault>()?)?,
        Kind::CONSENT => serde_json::to_value(verified.decode::<ConsentUpdate>()?)?,
        Kind::TRANSFER => serde_json::to_value(verified.decode::<Transfer>()?)?,
        Kind::DECOMMISSION => serde_json::to_value(verified.decode::<Decommission>()?)?,
        Kind::RECEIPT => serde_json::to_value(verified.decode::<Receipt>()?)?,
        Kind::NOTICE => serde_json::to_value(verified.decode::<Notice>()?)?,
        Kind::KEY_UPDATE => serde_json::to_value(verified.decode::<spime::message::KeyUpdate>()?)?,
        _ => Value::Null,
    };
    if let Some(o) = out.as_object_mut() {
        o.insert("verified".into(), json!(true));
        o.insert("body".into(), body);
    }
    Ok(out)
}
