//! `spime-vendor`: the spime vendor server, its keys, and a decoder for
//! people debugging. `spime-vendor --help` explains every command.

use core::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use ed25519_dalek::VerifyingKey;
use spime::codec;
use spime::message::{
    ConsentUpdate, Decommission, Fault, Notice, Receipt, Register, Transfer, Usage, VendorKeyCertificate,
};
use spime::seal::{Envelope, SessionKeys, VendorKeys};
use spime::server::{self, Config, keyfile};
use spime::time::Utc;
use spime::vendor::{IngestConfig, Ingestor, MAX_VENDOR_KEYS, MemoryStore, RedbStore, Store};
use spime::wire::{Direction, Kind};
use tracing::warn;

/// The store file's name inside the data directory.
const STORE_FILE: &str = "vendor.redb";
/// The fjall store's directory inside the data directory (`--store fjall`).
const FJALL_DIR: &str = "vendor.fjall";

const CONFIG_HELP: &str = "\
CONFIG FILE (--config FILE, TOML): every flag of `serve` except --config and --check, under the \
flag's name without `--`; a flag given on the command line overrides the file; an unknown key is \
an error naming it; relative paths are relative to the file's directory. Example \
(docs/spime-vendor.toml in the repository):

    data = \"/var/lib/spime\"                      # vendor.keys and vendor.redb
    # keys = \"/run/secrets/vendor.keys\"          # default: <data>/vendor.keys
    # store = \"fjall\"                            # vendor.fjall instead of vendor.redb (feature fjall)
    # postgres = \"postgresql://spime@db/spime\"   # instead of vendor.redb (feature postgres)
    coap = \"0.0.0.0:5683\"
    http = \"127.0.0.1:8080\"
    batch = 256
    queue = 4096
    # workers = 4                                  # default: one per core
    # in_flight = 2                                # batches at once; default 1 (pays with store = fjall)
    log = \"info\"

    # A keyring instead of `keys` (SPEC.md §9.2; at most 3 pairs, the highest
    # serial is the newest): each pair's secret key file, its certificate from
    # `spime-vendor keys certify` (optional for the first pair, serial 0) and
    # an optional retirement time (Unix seconds). The flag is
    # --vendor-key KEYS[,CERT[,RETIRE_AT]], repeated.
    # authority = \"ca.pub\"                       # VCA.pub, or its 64 hex digits
    # [[vendor_key]]
    # keys = \"vendor.keys\"
    # retire_at = 1900000000
    # [[vendor_key]]
    # keys = \"vendor-1.keys\"
    # certificate = \"vendor-1.cert\"

`spime-vendor serve --config FILE --check` prints the settings and the keyring in effect and exits.";

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
    /// Creates, certifies or shows the vendor keys and the certificate
    /// authority's key.
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
    /// The secret key file [default: DIR/vendor.keys]: a keyring of one
    /// pair, serial 0. Not with --vendor-key.
    #[arg(long, value_name = "FILE")]
    keys: Option<PathBuf>,
    /// A pair of the vendor keyring (repeat it; at most 3; SPEC.md §9.2):
    /// its secret key file, its certificate from `keys certify` (optional
    /// for the first pair, which is then serial 0) and the Unix time it
    /// retires at, comma-separated. The highest serial is the newest; the
    /// newest cannot retire. Given here, it replaces the config file's
    /// list.
    #[arg(long, value_name = "KEYS[,CERT[,RETIRE_AT]]", value_parser = parse_vendor_key)]
    vendor_key: Vec<KeySpec>,
    /// The certificate authority's public key (`VCA.pub`): the ca.pub file
    /// of `keys ca init`, or its 64 hex digits. It verifies the vendor key
    /// certificates and the device certificates [default: the signing key
    /// of the serial-0 pair].
    #[arg(long, value_name = "FILE|HEX")]
    authority: Option<PathBuf>,
    /// The embedded store in DIR: `redb` (DIR/vendor.redb) or `fjall`
    /// (DIR/vendor.fjall, an LSM tree whose ingest cost grows far less with
    /// fleet size; needs a build with the `fjall` feature) [default: redb].
    #[arg(long, value_name = "redb|fjall")]
    store: Option<StoreKind>,
    /// With `--store fjall`: the devices whose record and replay window
    /// the store keeps in memory (about 1.25 KB each), so a batch's reads
    /// do not go to disk [default: 131072, about 160 MB]. Size it for the
    /// fleet, or lower it where memory is short.
    #[arg(long, value_name = "DEVICES")]
    record_cache: Option<usize>,
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
    /// Batches ingested at once, at most 1024 [default: 1]. More than one
    /// pays with store = fjall, whose batches verify side by side (use
    /// --workers 1 with it).
    #[arg(long, value_name = "N")]
    in_flight: Option<usize>,
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
    store: Option<StoreKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    record_cache: Option<usize>,
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
    in_flight: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    authority: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    vendor_key: Vec<KeySpec>,
}

/// One pair of the keyring, as configured.
#[derive(serde::Deserialize, serde::Serialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
struct KeySpec {
    /// The secret key file.
    keys: PathBuf,
    /// Its certificate (none: serial 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate: Option<PathBuf>,
    /// Unix seconds from which it is retired.
    #[serde(skip_serializing_if = "Option::is_none")]
    retire_at: Option<u64>,
}

/// `--vendor-key KEYS[,CERT[,RETIRE_AT]]`.
fn parse_vendor_key(text: &str) -> Result<KeySpec, String> {
    let mut parts = text.split(',');
    let keys = parts.next().filter(|k| !k.is_empty()).ok_or("the key file is missing")?;
    let certificate = parts.next().filter(|c| !c.is_empty()).map(PathBuf::from);
    let retire_at = match parts.next() {
        Some(t) => Some(t.parse::<u64>().map_err(|e| format!("retirement time {t:?}: {e} (Unix seconds)"))?),
        None => None,
    };
    if parts.next().is_some() {
        return Err("expected KEYS[,CERT[,RETIRE_AT]]".into());
    }
    Ok(KeySpec { keys: PathBuf::from(keys), certificate, retire_at })
}

/// Whether `p` is 64 hex digits (a key, not a path).
fn is_hex_key(p: &Path) -> bool {
    p.to_str().is_some_and(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Which embedded store `serve` keeps in the data directory.
#[derive(clap::ValueEnum, serde::Deserialize, serde::Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum StoreKind {
    /// `RedbStore`, DIR/vendor.redb.
    #[default]
    Redb,
    /// `FjallStore`, DIR/vendor.fjall (feature `fjall`).
    Fjall,
}

/// Where the store lives.
enum StoreAt {
    Redb(PathBuf),
    Fjall(PathBuf),
    Postgres(String),
}

/// The settings in effect: flags over the config file over defaults.
struct Settings {
    /// The keyring, oldest first as configured (sorted by serial on load).
    vendor_keys: Vec<KeySpec>,
    /// Whether the keyring came from `keys` (one pair) rather than `vendor_key`.
    single: bool,
    authority: Option<PathBuf>,
    store: StoreAt,
    /// The fjall store's record cache, in devices (None: its default).
    record_cache: Option<usize>,
    data: Option<PathBuf>,
    coap: SocketAddr,
    http: SocketAddr,
    batch: usize,
    queue: usize,
    workers: Option<usize>,
    in_flight: usize,
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
                file.authority = file.authority.map(|p| if is_hex_key(&p) { p } else { base.join(p) });
                for k in &mut file.vendor_key {
                    k.keys = base.join(&k.keys);
                    k.certificate = k.certificate.as_ref().map(|c| base.join(c));
                }
                file
            }
        };
        let defaults = server::Config::default();
        let data = args.data.or(file.data);
        let postgres = args.postgres.or(file.postgres);
        let kind = args.store.or(file.store);
        // The cache holds at least one device (FjallStore::with_record_cache).
        let record_cache = args.record_cache.or(file.record_cache).map(|n| n.max(1));
        if record_cache.is_some() && kind != Some(StoreKind::Fjall) {
            return Err("record_cache sizes the fjall store's cache: give it with store = fjall only".into());
        }
        let ring = if args.vendor_key.is_empty() { file.vendor_key } else { args.vendor_key };
        let keys = args.keys.or(file.keys);
        let (vendor_keys, single) = match (keys, &data) {
            (Some(_), _) if !ring.is_empty() => {
                return Err("give either keys (one pair) or vendor_key (a keyring), not both".into());
            }
            (None, _) if !ring.is_empty() => (ring, false),
            (Some(k), _) => (vec![KeySpec { keys: k, certificate: None, retire_at: None }], true),
            (None, Some(d)) => {
                (vec![KeySpec { keys: d.join(keyfile::SECRET_FILE), certificate: None, retire_at: None }], true)
            }
            (None, None) => {
                return Err("give --data DIR (the keys and the store), or --keys FILE with --postgres URL".into());
            }
        };
        let store = match (postgres, &data) {
            (Some(_), _) if kind.is_some() => return Err("give either store (embedded) or postgres, not both".into()),
            (Some(_), _) if cfg!(not(feature = "postgres")) => return Err(NO_POSTGRES.into()),
            (Some(url), _) => StoreAt::Postgres(url),
            (None, Some(_)) if kind == Some(StoreKind::Fjall) && cfg!(not(feature = "fjall")) => {
                return Err(NO_FJALL.into());
            }
            (None, Some(d)) if kind == Some(StoreKind::Fjall) => StoreAt::Fjall(d.join(FJALL_DIR)),
            (None, Some(d)) => StoreAt::Redb(d.join(STORE_FILE)),
            (None, None) => return Err("give --data DIR for the embedded store, or --postgres URL".into()),
        };
        Ok(Settings {
            vendor_keys,
            single,
            authority: args.authority.or(file.authority),
            store,
            record_cache,
            data,
            coap: args.coap.or(file.coap).unwrap_or(defaults.coap),
            http: args.http.or(file.http).unwrap_or(defaults.http),
            batch: args.batch.or(file.batch).unwrap_or(defaults.batch_max).max(1),
            queue: args.queue.or(file.queue).unwrap_or(defaults.queue).max(1),
            workers: args.workers.or(file.workers).map(|w| w.max(1)),
            in_flight: args
                .in_flight
                .or(file.in_flight)
                .unwrap_or(defaults.batches_in_flight)
                .clamp(1, server::MAX_IN_FLIGHT),
            log: args.log.or(file.log),
        })
    }

    /// The settings as a config file (the PostgreSQL string, which may hold
    /// a password, as a comment that says it is set).
    fn to_toml(&self, ring: &LoadedRing) -> Result<String, Failure> {
        let (keys, vendor_key) = match self.vendor_keys.first() {
            Some(k) if self.single => (Some(k.keys.clone()), Vec::new()),
            _ => (None, self.vendor_keys.clone()),
        };
        let file = ServeFile {
            data: self.data.clone(),
            keys,
            authority: ring.authority.map(|a| PathBuf::from(hex::encode(a.to_bytes()))),
            vendor_key,
            store: match self.store {
                StoreAt::Redb(_) => Some(StoreKind::Redb),
                StoreAt::Fjall(_) => Some(StoreKind::Fjall),
                StoreAt::Postgres(_) => None,
            },
            record_cache: self.record_cache,
            postgres: None,
            coap: Some(self.coap),
            http: Some(self.http),
            batch: Some(self.batch),
            queue: Some(self.queue),
            workers: self.workers,
            in_flight: Some(self.in_flight),
            log: self.log.clone(),
        };
        let mut text = toml::to_string(&file)?;
        match &self.store {
            StoreAt::Redb(p) => text.push_str(&format!("# store: the embedded redb file {}\n", p.display())),
            StoreAt::Fjall(p) => text.push_str(&format!("# store: the embedded fjall directory {}\n", p.display())),
            StoreAt::Postgres(_) => text.push_str("# postgres = (set; not shown, it may hold a password)\n"),
        }
        text.push_str(&ring.describe(now()));
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
    /// Prints what a key file is: a vendor key file (its public keys, to
    /// provision into devices), a certificate authority key (its public
    /// key), a vendor key certificate (its serial, keys and validity), or a
    /// vendor.pub / ca.pub text file. A directory: its vendor.keys, else its
    /// ca.key.
    Show {
        /// The file, or a directory.
        path: PathBuf,
    },
    /// The offline vendor certificate authority (`VCA`, SPEC.md §2): it
    /// certifies vendor key pairs (`keys certify`) and signs device
    /// certificates at the factory.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Issues a vendor key certificate (SPEC.md §5.11): the certificate
    /// authority vouches for a vendor key pair under a serial, so devices
    /// given VCA.pub learn it from a KeyUpdate. Run it where the authority's
    /// key is kept (offline); the certificate is not secret. Never
    /// overwrites.
    Certify {
        /// The authority's key: ca.key from `keys ca init` (or a vendor key
        /// file whose signing key is the authority).
        #[arg(long, value_name = "CA_FILE")]
        ca: PathBuf,
        /// The vendor key pair to certify (a file from `keys init`).
        #[arg(long, value_name = "KEYS_FILE")]
        keys: PathBuf,
        /// The pair's serial: above every serial devices hold; a pair keeps
        /// its serial (0 only for the pair devices were provisioned with).
        #[arg(long, value_name = "N")]
        serial: u32,
        /// Unix seconds from which the pair is valid [default: now].
        #[arg(long, value_name = "T")]
        not_before: Option<u64>,
        /// Unix seconds after which the pair is no longer valid
        /// [default: ten years after --not-before].
        #[arg(long, value_name = "T")]
        not_after: Option<u64>,
        /// The certificate file to write.
        #[arg(long, value_name = "CERT_FILE")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Creates the certificate authority key in DIR: ca.key (secret: `SPCA`,
    /// format byte 1, the 32-byte Ed25519 seed; mode 0600; keep it offline)
    /// and ca.pub (VCA.pub as text: provision it into devices, and give it
    /// to `serve --authority`). Never overwrites.
    Init {
        /// The directory (created if missing).
        dir: PathBuf,
    },
}

/// Ten years, the default validity of a vendor key certificate.
const CERTIFICATE_YEARS: u64 = 10 * 365 * 86_400;

/// The system clock, Unix seconds.
fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// One pair of the keyring, read from its files.
struct LoadedKey {
    spec: KeySpec,
    serial: u32,
    keys: VendorKeys,
    certificate: Option<VendorKeyCertificate>,
}

/// The keyring read and checked: ascending serials.
struct LoadedRing {
    keys: Vec<LoadedKey>,
    authority: Option<VerifyingKey>,
}

impl LoadedRing {
    /// Reads every file and checks the keyring as the pipeline will
    /// (SPEC.md §9.2), with errors that name the file.
    fn load(settings: &Settings) -> Result<LoadedRing, Failure> {
        let authority = match &settings.authority {
            Some(a) => Some(keyfile::load_authority(a)?),
            None => None,
        };
        let mut keys = Vec::new();
        for spec in &settings.vendor_keys {
            let pair = keyfile::load_file(&spec.keys).map_err(|e| match &settings.data {
                Some(d) if settings.single && !spec.keys.exists() => {
                    format!("{e} (run `spime-vendor keys init {}` first)", d.display())
                }
                _ => e.to_string(),
            })?;
            if keyfile::readable_by_others(&spec.keys) {
                warn!(file = %spec.keys.display(), "the vendor's secret keys are readable by others: chmod 600 it");
            }
            let certificate = match &spec.certificate {
                None => None,
                Some(c) => Some(keyfile::load_certificate(c)?),
            };
            let serial = certificate.map_or(0, |c| c.body.serial);
            keys.push(LoadedKey { spec: spec.clone(), serial, keys: pair, certificate });
        }
        // Without --authority, the authority is the uncertified (serial-0)
        // pair's signing key, as in the library (SPEC.md §2: VCA may be VS).
        let check =
            authority.or_else(|| keys.iter().find(|k| k.certificate.is_none()).map(|k| k.keys.public().signing));
        for k in &keys {
            let (Some(cert), Some(c)) = (&k.certificate, &k.spec.certificate) else { continue };
            let Some(a) = &check else {
                return Err(format!(
                    "{}: a certified vendor key needs the certificate authority's public key: give --authority (ca.pub, from `spime-vendor keys ca init`)",
                    c.display()
                )
                .into());
            };
            let public = cert.verify(a).map_err(|_| {
                format!("{}: not signed by the certificate authority {}", c.display(), hex::encode(a.to_bytes()))
            })?;
            if public != k.keys.public() {
                return Err(format!(
                    "{}: the certificate does not match the vendor key {} (it certifies signing key {})",
                    c.display(),
                    k.spec.keys.display(),
                    hex::encode(public.signing.to_bytes())
                )
                .into());
            }
        }
        if keys.len() > MAX_VENDOR_KEYS {
            return Err(format!(
                "{} vendor keys given; the keyring holds at most {MAX_VENDOR_KEYS} (forget a retired one: drop it from the list)",
                keys.len()
            )
            .into());
        }
        keys.sort_by_key(|k| k.serial);
        for w in keys.windows(2) {
            if let [a, b] = w {
                if a.serial == b.serial {
                    let what = if a.certificate.is_none() || b.certificate.is_none() {
                        " (a pair without a certificate is serial 0; only the first pair may be uncertified)"
                    } else {
                        ""
                    };
                    return Err(format!(
                        "{} and {} both have serial {}{what}: each pair needs its own serial",
                        a.spec.keys.display(),
                        b.spec.keys.display(),
                        a.serial
                    )
                    .into());
                }
                if a.keys.public() == b.keys.public() {
                    return Err(format!(
                        "{} and {} are the same key pair under serials {} and {}: a pair keeps its serial",
                        a.spec.keys.display(),
                        b.spec.keys.display(),
                        a.serial,
                        b.serial
                    )
                    .into());
                }
            }
        }
        // SPEC.md §9.2: an opener names its pair only through VX.
        for (i, a) in keys.iter().enumerate() {
            for b in keys.iter().skip(i + 1) {
                if a.keys.public().key_agreement == b.keys.public().key_agreement {
                    return Err(format!(
                        "{} and {} share a key-agreement key: every pair needs its own (SPEC.md §9.2; make the new \
                         pair with `spime-vendor keys init`)",
                        a.spec.keys.display(),
                        b.spec.keys.display()
                    )
                    .into());
                }
            }
        }
        if let Some(newest) = keys.last()
            && newest.spec.retire_at.is_some()
        {
            return Err(format!(
                "{}: the newest vendor key (serial {}) cannot retire: add its successor first",
                newest.spec.keys.display(),
                newest.serial
            )
            .into());
        }
        Ok(LoadedRing { keys, authority })
    }

    /// The pipeline over `store` with this keyring.
    fn build<S: Store>(self, store: S, config: IngestConfig) -> Result<Ingestor<S>, Failure> {
        let mut pairs = self.keys.into_iter();
        let first = pairs.next().ok_or("no vendor key given")?;
        let named = |k: &KeySpec| {
            let file = k.certificate.as_ref().unwrap_or(&k.keys).display().to_string();
            move |e: spime::vendor::KeyringError| format!("{file}: {e}")
        };
        let mut retire = vec![(first.serial, first.spec.retire_at, named(&first.spec))];
        let mut ingestor = match (first.certificate, self.authority) {
            (Some(cert), Some(a)) if first.serial > 0 => {
                Ingestor::new_certified(store, first.keys, cert, a, config).map_err(named(&first.spec))?
            }
            (cert, authority) => {
                // The first pair, certified as serial 0: given again with its certificate.
                let again = match cert {
                    Some(c) => Some((VendorKeys::from_bytes(first.keys.to_bytes().as_slice())?, c)),
                    None => None,
                };
                let mut i = Ingestor::new(store, first.keys, config);
                if let Some(a) = authority {
                    i = i.with_certificate_authority(a);
                }
                if let Some((k, c)) = again {
                    i = i.with_vendor_key(k, c).map_err(named(&first.spec))?;
                }
                i
            }
        };
        for pair in pairs {
            let Some(cert) = pair.certificate else {
                return Err(format!("{}: only the first pair may be uncertified", pair.spec.keys.display()).into());
            };
            ingestor = ingestor.with_vendor_key(pair.keys, cert).map_err(named(&pair.spec))?;
            retire.push((pair.serial, pair.spec.retire_at, named(&pair.spec)));
        }
        for (serial, at, named) in retire {
            if let Some(at) = at {
                ingestor = ingestor.retire_vendor_key(serial, at).map_err(named)?;
            }
        }
        Ok(ingestor)
    }

    /// The keyring as comments, newest last.
    fn describe(&self, now: u64) -> String {
        let mut text = format!("# keyring at {} (newest last; SPEC.md §9.2):\n", Utc(now));
        let newest = self.keys.last().map(|k| k.serial);
        for k in &self.keys {
            let p = k.keys.public();
            let validity = match k.certificate {
                Some(c) => format!("certified, valid {} to {}", Utc(c.body.not_before), Utc(c.body.not_after)),
                None => "uncertified".into(),
            };
            let state = match k.spec.retire_at {
                Some(t) if now >= t => format!("retired at {}", Utc(t)),
                Some(t) => format!("live, retires at {}", Utc(t)),
                None if Some(k.serial) == newest => "live, newest".into(),
                None => "live".into(),
            };
            text.push_str(&format!(
                "#   serial {}: {state}; {validity}; {}\n#     signing {}\n#     key-agreement {}\n",
                k.serial,
                k.spec.keys.display(),
                hex::encode(p.signing.to_bytes()),
                hex::encode(p.key_agreement),
            ));
        }
        let authority = match (&self.authority, self.keys.first()) {
            (Some(a), _) => hex::encode(a.to_bytes()),
            (None, Some(k)) => {
                format!("{} (the serial-0 signing key)", hex::encode(k.keys.public().signing.to_bytes()))
            }
            (None, None) => "none".into(),
        };
        text.push_str(&format!("# certificate authority (device and vendor key certificates): {authority}\n"));
        text
    }
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
            let keys = LoadedRing::load(&settings)?;
            if check {
                let text = settings.to_toml(&keys)?;
                // The whole keyring as the pipeline takes it, over a store that is not kept.
                keys.build(MemoryStore::new(), IngestConfig::default())?;
                print!("{text}");
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
                StoreAt::Fjall(dir) => serve(open_fjall(dir, settings.record_cache)?, keys, &settings, None),
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
        Run::Other(Command::Keys { command: KeysCommand::Show { path } }) => show(&path),
        Run::Other(Command::Keys { command: KeysCommand::Ca { command: CaCommand::Init { dir } } }) => {
            let ca = keyfile::ca_init(&dir)?;
            println!(
                "created {} (secret, mode 0600: keep it offline, back it up)",
                dir.join(keyfile::CA_SECRET_FILE).display()
            );
            println!(
                "created {} (public: provision it into devices, give it to `serve --authority`)",
                dir.join(keyfile::CA_PUBLIC_FILE).display()
            );
            println!("authority      {}", hex::encode(ca.verifying_key().to_bytes()));
            Ok(())
        }
        Run::Other(Command::Keys {
            command: KeysCommand::Certify { ca, keys, serial, not_before, not_after, out },
        }) => {
            let authority = keyfile::load_ca(&ca)?;
            let pair = keyfile::load_file(&keys)?;
            let not_before = not_before.unwrap_or_else(now);
            let not_after = not_after.unwrap_or(not_before.saturating_add(CERTIFICATE_YEARS));
            if not_after < not_before {
                return Err(format!("--not-after {not_after} is before --not-before {not_before}").into());
            }
            let cert = VendorKeyCertificate::certify(&pair, serial, not_before, not_after, &authority)?;
            keyfile::write_certificate(&out, &cert)?;
            println!("created {} (not secret: give it to the server with its key file)", out.display());
            print_certificate(&cert, &authority.verifying_key());
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
                (Some(k), None, Some(d)) if d.join(FJALL_DIR).exists() => {
                    let store = open_fjall(&d.join(FJALL_DIR), None)?;
                    decode(&bytes, Some((&k, Some(&store))))?
                }
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

/// Opens the fjall store, its record cache sized to `record_cache` devices if given.
#[cfg(feature = "fjall")]
fn open_fjall(dir: &Path, record_cache: Option<usize>) -> Result<spime::vendor::FjallStore, Failure> {
    let store = spime::vendor::FjallStore::open(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(match record_cache {
        Some(devices) => store.with_record_cache(devices),
        None => store,
    })
}

#[cfg(not(feature = "fjall"))]
fn open_fjall(_dir: &Path, _record_cache: Option<usize>) -> Result<RedbStore, Failure> {
    Err(NO_FJALL.into())
}

/// Why `--store fjall` cannot work in this build.
const NO_FJALL: &str = "this spime-vendor was built without the fjall store (--store fjall): rebuild it with \
    the `fjall` feature (`cargo build --release --features server,fjall --bin spime-vendor`, or \
    `cargo install spime --features fjall`)";

/// Why `--postgres` cannot work in this build.
const NO_POSTGRES: &str = "this spime-vendor was built without PostgreSQL support (--postgres): rebuild it with \
    the `postgres` feature (`cargo build --release --features server,postgres --bin spime-vendor`, or \
    `cargo install spime --features postgres`)";

/// `keys show`: says what the file is and prints its public part.
fn show(path: &Path) -> Result<(), Failure> {
    let file = if path.is_dir() {
        let keys = path.join(keyfile::SECRET_FILE);
        if keys.exists() { keys } else { path.join(keyfile::CA_SECRET_FILE) }
    } else {
        path.to_path_buf()
    };
    let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    if bytes.starts_with(b"SPVK") {
        println!("{}: vendor key pair (secret)", file.display());
        print_public(&keyfile::load_file(&file)?);
    } else if bytes.starts_with(b"SPCA") {
        let ca = keyfile::load_ca(&file)?;
        println!("{}: certificate authority key (secret; keep it offline)", file.display());
        println!("authority      {}", hex::encode(ca.verifying_key().to_bytes()));
    } else if let Ok(cert) = keyfile::load_certificate(&file) {
        println!("{}: vendor key certificate", file.display());
        println!("serial         {}", cert.body.serial);
        println!("signing        {}", hex::encode(cert.body.signing));
        println!("key-agreement  {}", hex::encode(cert.body.key_agreement));
        println!("not-before     {} ({})", cert.body.not_before, Utc(cert.body.not_before));
        println!("not-after      {} ({})", cert.body.not_after, Utc(cert.body.not_after));
    } else if let Ok(text) = core::str::from_utf8(&bytes)
        && (text.starts_with("# spime vendor public keys") || text.starts_with("# spime certificate authority"))
    {
        println!("{}: public keys (not secret)", file.display());
        print!("{}", text.lines().filter(|l| !l.starts_with('#')).map(|l| format!("{l}\n")).collect::<String>());
    } else {
        // The vendor key file's own error says what the format is.
        keyfile::load_file(&file)?;
    }
    Ok(())
}

/// A certificate just issued.
fn print_certificate(cert: &VendorKeyCertificate, authority: &VerifyingKey) {
    println!("serial         {}", cert.body.serial);
    println!("signing        {}", hex::encode(cert.body.signing));
    println!("key-agreement  {}", hex::encode(cert.body.key_agreement));
    println!("not-before     {} ({})", cert.body.not_before, Utc(cert.body.not_before));
    println!("not-after      {} ({})", cert.body.not_after, Utc(cert.body.not_after));
    println!("authority      {}", hex::encode(authority.to_bytes()));
}

fn print_public(keys: &VendorKeys) {
    let p = keys.public();
    println!("signing        {}", hex::encode(p.signing.to_bytes()));
    println!("key-agreement  {}", hex::encode(p.key_agreement));
}

fn serve<S: Store + 'static>(
    store: S,
    keys: LoadedRing,
    settings: &Settings,
    store_file: Option<PathBuf>,
) -> Result<(), Failure> {
    let mut ingest = IngestConfig::default();
    if let Some(w) = settings.workers {
        ingest.workers = w;
    }
    let serials = keys.keys.iter().map(|k| k.serial.to_string()).collect::<Vec<_>>().join(", ");
    let ingestor = Arc::new(keys.build(store, ingest)?);
    let config = Config {
        coap: settings.coap,
        http: settings.http,
        batch_max: settings.batch,
        queue: settings.queue,
        batches_in_flight: settings.in_flight,
        store_file,
        ..Config::default()
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(async {
        let running = server::start(Arc::clone(&ingestor), config).await?;
        match &settings.store {
            StoreAt::Redb(file) => eprintln!("store: {}", file.display()),
            StoreAt::Fjall(dir) => match settings.record_cache {
                Some(n) => eprintln!("store: {} (fjall, a record cache of {n} devices)", dir.display()),
                None => eprintln!("store: {} (fjall)", dir.display()),
            },
            StoreAt::Postgres(_) => eprintln!("store: PostgreSQL"),
        }
        eprintln!("vendor keys: serials {serials} (the last is the newest)");
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
