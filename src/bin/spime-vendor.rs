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
use spime::vendor::{IngestConfig, Ingestor, RedbStore, Store};
use spime::wire::{Direction, Kind};
use tracing::warn;

/// The store file's name inside the data directory.
const STORE_FILE: &str = "vendor.redb";

const CONFIG_HELP: &str = "\
CONFIG FILE (--config FILE, TOML): every flag of `serve` except --config and --check, under the \
flag's name without `--`; a flag given on the command line overrides the file; an unknown key is \
an error naming it; relative paths are relative to the file's directory. Example \
(docs/spime-vendor.toml in the repository):

    data = \"/var/lib/spime\"                      # vendor.keys and vendor.redb
    # keys = \"/run/secrets/vendor.keys\"          # default: <data>/vendor.keys
    # postgres = \"postgresql://spime@db/spime\"   # instead of vendor.redb (feature postgres)
    coap = \"0.0.0.0:5683\"
    http = \"127.0.0.1:8080\"
    batch = 256
    queue = 4096
    # workers = 4                                  # default: one per core
    log = \"info\"

`spime-vendor serve --config FILE --check` prints the settings in effect and exits.";

#[derive(Parser)]
#[command(
    name = "spime-vendor",
    version,
    about = "The spime vendor server: devices speak CoAP, operators HTTP.",
    long_about = "The spime vendor server.\n\n\
        Devices POST sealed spime envelopes over CoAP (UDP, RFC 7252) to /s, or spime chunks to /c \
        (SPEC.md §11); the response code acknowledges a message only after it is committed, and \
        its payload carries any receipt or notice for the device. Operators get JSON under /api, \
        Prometheus text at /metrics, /healthz, and a view of the fleet at /.\n\n\
        Start with `spime-vendor keys init DATA`, provision devices with the public keys it \
        prints (also in DATA/vendor.pub), then `spime-vendor serve --data DATA`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the server until SIGINT or SIGTERM (then it stops receiving,
    /// commits and answers the batch in flight, and exits).
    #[command(after_long_help = CONFIG_HELP)]
    Serve(ServeArgs),
    /// Creates or shows the vendor keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Prints an envelope's header and, given the keys, its decrypted and
    /// verified body as JSON.
    Decode {
        /// The envelope as hex (spaces allowed); omit to use --file.
        #[arg(value_name = "HEX", required_unless_present = "file")]
        hex: Option<String>,
        /// A file holding the raw envelope bytes.
        #[arg(long, value_name = "PATH", conflicts_with = "hex")]
        file: Option<PathBuf>,
        /// The data directory whose vendor.keys (and, for a message that does
        /// not open its epoch, stored session keys in vendor.redb) open the
        /// message. The embedded store is opened, so stop a server using it
        /// first.
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// The secret key file, when it is not DATA/vendor.keys.
        #[arg(long, value_name = "FILE")]
        keys: Option<PathBuf>,
        /// Read stored session keys from this PostgreSQL database instead of
        /// DATA/vendor.redb (needs the `postgres` feature).
        #[arg(long, value_name = "URL")]
        postgres: Option<String>,
    },
}

/// `serve`'s flags; each is also a key of the config file.
#[derive(clap::Args, Default)]
struct ServeArgs {
    /// A TOML file of settings, keys named as these flags; flags given here
    /// override it (see the end of --help).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The data directory: vendor.keys (from `keys init`) and the embedded
    /// store vendor.redb (created if missing). Needed unless --postgres and
    /// --keys are both given.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// The secret key file [default: DIR/vendor.keys].
    #[arg(long, value_name = "FILE")]
    keys: Option<PathBuf>,
    /// Keep the store in PostgreSQL instead of DIR/vendor.redb: a URL
    /// (postgresql://user@host/db) or key=value string. Needs a build with
    /// the `postgres` feature. A password is better kept in the config file
    /// than on the command line.
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
    /// The UDP address devices send CoAP to [default: 127.0.0.1:5683].
    #[arg(long, value_name = "ADDR")]
    coap: Option<SocketAddr>,
    /// The TCP address of the operator HTTP interface and fleet view
    /// [default: 127.0.0.1:8080]. It has no authentication: keep it on
    /// loopback or behind an authenticating proxy.
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// The most messages committed as one batch (one commit) [default: 256].
    #[arg(long, value_name = "N")]
    batch: Option<usize>,
    /// Requests that may wait for a batch; beyond, devices are told 5.03
    /// and retry [default: 4096].
    #[arg(long, value_name = "N")]
    queue: Option<usize>,
    /// Ingest worker threads per batch [default: one per core].
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// What to log, as a tracing filter ("info", "debug",
    /// "spime=debug,info") [default: $RUST_LOG, else info].
    #[arg(long, value_name = "FILTER")]
    log: Option<String>,
    /// Read the settings and the keys, print the settings in effect (as
    /// TOML) and exit without serving.
    #[arg(long)]
    check: bool,
}

/// The config file: the same settings as [`ServeArgs`], every one optional.
#[derive(serde::Deserialize, serde::Serialize, Default, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
struct ServeFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keys: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    postgres: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    coap: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    batch: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    queue: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    workers: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log: Option<String>,
}

/// Where the store lives.
enum StoreAt {
    Redb(PathBuf),
    Postgres(String),
}

/// The settings in effect: flags over the config file over defaults.
struct Settings {
    keys: PathBuf,
    store: StoreAt,
    data: Option<PathBuf>,
    coap: SocketAddr,
    http: SocketAddr,
    batch: usize,
    queue: usize,
    workers: Option<usize>,
    log: Option<String>,
}

impl Settings {
    fn resolve(args: ServeArgs) -> Result<Settings, Failure> {
        let file = match &args.config {
            None => ServeFile::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
                let mut file: ServeFile = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
                // Relative paths in the file are relative to the file.
                let base = path.parent().unwrap_or(Path::new(""));
                file.data = file.data.map(|p| base.join(p));
                file.keys = file.keys.map(|p| base.join(p));
                file
            }
        };
        let defaults = server::Config::default();
        let data = args.data.or(file.data);
        let postgres = args.postgres.or(file.postgres);
        let keys = match (args.keys.or(file.keys), &data) {
            (Some(k), _) => k,
            (None, Some(d)) => d.join(keyfile::SECRET_FILE),
            (None, None) => {
                return Err("give --data DIR (the keys and the store), or --keys FILE with --postgres URL".into());
            }
        };
        let store = match (postgres, &data) {
            (Some(_), _) if cfg!(not(feature = "postgres")) => return Err(NO_POSTGRES.into()),
            (Some(url), _) => StoreAt::Postgres(url),
            (None, Some(d)) => StoreAt::Redb(d.join(STORE_FILE)),
            (None, None) => return Err("give --data DIR for the embedded store, or --postgres URL".into()),
        };
        Ok(Settings {
            keys,
            store,
            data,
            coap: args.coap.or(file.coap).unwrap_or(defaults.coap),
            http: args.http.or(file.http).unwrap_or(defaults.http),
            batch: args.batch.or(file.batch).unwrap_or(defaults.batch_max).max(1),
            queue: args.queue.or(file.queue).unwrap_or(defaults.queue).max(1),
            workers: args.workers.or(file.workers).map(|w| w.max(1)),
            log: args.log.or(file.log),
        })
    }

    /// The settings as a config file (the PostgreSQL string, which may hold
    /// a password, as a comment that says it is set).
    fn to_toml(&self) -> Result<String, Failure> {
        let file = ServeFile {
            data: self.data.clone(),
            keys: Some(self.keys.clone()),
            postgres: None,
            coap: Some(self.coap),
            http: Some(self.http),
            batch: Some(self.batch),
            queue: Some(self.queue),
            workers: self.workers,
            log: self.log.clone(),
        };
        let mut text = toml::to_string(&file)?;
        match &self.store {
            StoreAt::Redb(p) => text.push_str(&format!("# store: the embedded redb file {}\n", p.display())),
            StoreAt::Postgres(_) => text.push_str("# postgres = (set; not shown, it may hold a password)\n"),
        }
        Ok(text)
    }
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Creates fresh vendor keys in DIR: vendor.keys (secret: the 69 bytes
    /// of VendorKeys::to_bytes, mode 0600; back it up offline) and
    /// vendor.pub (the public keys, as hex, to provision into devices).
    /// Never overwrites.
    Init {
        /// The data directory (created if missing).
        dir: PathBuf,
    },
    /// Prints the public keys (to provision into devices) of a secret key
    /// file, or of DIR/vendor.keys.
    Show {
        /// The data directory, or the secret key file itself.
        path: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` reads its settings (and the log filter among them) first.
    let (command, log) = match cli.command {
        Command::Serve(args) => {
            let check = args.check;
            match Settings::resolve(args) {
                Ok(s) => {
                    let log = s.log.clone();
                    (Run::Serve(s, check), log)
                }
                Err(e) => {
                    eprintln!("spime-vendor: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        other => (Run::Other(other), None),
    };
    let filter = match log {
        Some(f) => tracing_subscriber::EnvFilter::try_new(&f),
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .or_else(|_| tracing_subscriber::EnvFilter::try_new("info")),
    };
    let filter = match filter {
        Ok(f) => f,
        Err(e) => {
            eprintln!("spime-vendor: log filter: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    match run(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spime-vendor: {e}");
            ExitCode::FAILURE
        }
    }
}

type Failure = Box<dyn core::error::Error>;

enum Run {
    Serve(Settings, bool),
    Other(Command),
}

fn run(command: Run) -> Result<(), Failure> {
    match command {
        Run::Serve(settings, check) => {
            let keys = keyfile::load_file(&settings.keys).map_err(|e| match &settings.data {
                Some(d) if !settings.keys.exists() => {
                    format!("{e} (run `spime-vendor keys init {}` first)", d.display())
                }
                _ => e.to_string(),
            })?;
            if keyfile::readable_by_others(&settings.keys) {
                warn!(file = %settings.keys.display(), "the vendor's secret keys are readable by others: chmod 600 it");
            }
            if check {
                print!("{}", settings.to_toml()?);
                return Ok(());
            }
            match &settings.store {
                StoreAt::Redb(file) => {
                    if let Some(parent) = file.parent() {
                        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
                    }
                    let store = RedbStore::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
                    serve(store, keys, &settings, Some(file.clone()))
                }
                StoreAt::Postgres(url) => serve(connect_postgres(url)?, keys, &settings, None),
            }
        }
        Run::Other(Command::Serve(_)) => Err("unreachable: serve is resolved first".into()),
        Run::Other(Command::Keys { command: KeysCommand::Init { dir } }) => {
            let keys = keyfile::init(&dir)?;
            println!("created {} (secret, mode 0600: back it up offline)", dir.join(keyfile::SECRET_FILE).display());
            println!("created {} (public: provision these into devices)", dir.join(keyfile::PUBLIC_FILE).display());
            print_public(&keys);
            Ok(())
        }
        Run::Other(Command::Keys { command: KeysCommand::Show { path } }) => {
            let file = if path.is_dir() { path.join(keyfile::SECRET_FILE) } else { path };
            print_public(&keyfile::load_file(&file)?);
            Ok(())
        }
        Run::Other(Command::Decode { hex, file, data, keys, postgres }) => {
            let bytes = match (hex, file) {
                (Some(h), _) => hex::decode(h.split_whitespace().collect::<String>())?,
                (None, Some(f)) => std::fs::read(&f).map_err(|e| format!("{}: {e}", f.display()))?,
                (None, None) => return Err("give the envelope as HEX or --file".into()),
            };
            let keys = match (keys, &data) {
                (Some(k), _) => Some(keyfile::load_file(&k)?),
                (None, Some(d)) => Some(keyfile::load(d)?),
                (None, None) => None,
            };
            let out = match (keys, postgres, data) {
                (None, _, _) => decode::<RedbStore>(&bytes, None)?,
                (Some(k), Some(url), _) => decode(&bytes, Some((&k, Some(&connect_postgres(&url)?))))?,
                (Some(k), None, Some(d)) => {
                    let file = d.join(STORE_FILE);
                    let store = if file.exists() { Some(RedbStore::open(&file)?) } else { None };
                    decode(&bytes, Some((&k, store.as_ref())))?
                }
                (Some(k), None, None) => decode::<RedbStore>(&bytes, Some((&k, None)))?,
            };
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
    }
}

#[cfg(feature = "postgres")]
fn connect_postgres(url: &str) -> Result<spime::vendor::PgStore, Failure> {
    spime::vendor::PgStore::connect(url).map_err(|e| format!("PostgreSQL: {e}").into())
}

#[cfg(not(feature = "postgres"))]
fn connect_postgres(_url: &str) -> Result<RedbStore, Failure> {
    Err(NO_POSTGRES.into())
}

/// Why `--postgres` cannot work in this build.
const NO_POSTGRES: &str = "this spime-vendor was built without PostgreSQL support (--postgres): rebuild it with \
    the `postgres` feature (`cargo build --release --features server,postgres --bin spime-vendor`, or \
    `cargo install spime --features postgres`)";

fn print_public(keys: &VendorKeys) {
    let p = keys.public();
    println!("signing        {}", hex::encode(p.signing.to_bytes()));
    println!("key-agreement  {}", hex::encode(p.key_agreement));
}

fn serve<S: Store + 'static>(
    store: S,
    keys: VendorKeys,
    settings: &Settings,
    store_file: Option<PathBuf>,
) -> Result<(), Failure> {
    let mut ingest = IngestConfig::default();
    if let Some(w) = settings.workers {
        ingest.workers = w;
    }
    let ingestor = Arc::new(Ingestor::new(store, keys, ingest));
    let config = Config {
        coap: settings.coap,
        http: settings.http,
        batch_max: settings.batch,
        queue: settings.queue,
        store_file,
        ..Config::default()
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(async {
        let running = server::start(Arc::clone(&ingestor), config).await?;
        match &settings.store {
            StoreAt::Redb(file) => eprintln!("store: {}", file.display()),
            StoreAt::Postgres(_) => eprintln!("store: PostgreSQL"),
        }
        eprintln!("CoAP on udp://{}  (POST envelopes to /s, chunks to /c)", running.coap);
        eprintln!("fleet view on http://{}/  (metrics at /metrics)", running.http);
        running.wait_for_signal().await;
        Ok::<(), Failure>(())
    });
    drop(runtime);
    // The store is closed here, off the runtime: the sync PostgreSQL client
    // closes its connections on a runtime of its own.
    drop(ingestor);
    result
}

/// The header, and with the keys (and a store, for the session keys of a
/// message that does not open its epoch) the verified body, as JSON.
fn decode<S: Store>(bytes: &[u8], open: Option<(&VendorKeys, Option<&S>)>) -> Result<Value, Failure> {
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
    let Some((keys, store)) = open else { return Ok(out) };
    let record = match store {
        Some(s) => s.device(&h.device)?,
        None => None,
    };
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
