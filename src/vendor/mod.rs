//! The vendor side (feature `std`): ingest, batch verification, storage,
//! receipts and notices.
//!
//! ```text
//! bytes ─► Envelope::parse ─► epoch & keys ─► decrypt ─► verify (strict, or batched)
//!       ─► replay window ─► consent check ─► Event      (all of a batch, then one commit)
//! ```
//!
//! [`Ingestor::ingest_batch`] takes a batch of sealed messages and returns
//! one [`Outcome`] per message. Messages are partitioned by device id among
//! worker threads ([`IngestConfig::workers`], `std::thread::scope`, no
//! runtime dependency); each worker opens its devices' messages in order,
//! batch-verifies the signatures of its Usage and Fault messages
//! ([`batch`]), and the state changes of the whole batch are committed in
//! one store transaction (a group commit) before any outcome is returned.
//! An `Ok` outcome is therefore an acknowledgement: the message's content
//! and replay state are durable. A refused message leaves no trace.
//!
//! The rules (epochs, registration, transfer, decommission, consent) are
//! SPEC.md §9; consent is judged by [`crate::consent`] (SPEC.md §6), the
//! same evaluation the device runs, and recorded in the hash-chained
//! [`crate::consent::ledger`]. Scaling beyond one machine: docs/scaling.md.
//!
//! Building a server on x86-64: without `-C target-cpu`, the ChaCha20 and
//! Poly1305 crates pick AVX2 code at run time that is, for messages of
//! spime's size, about three times slower than their portable code. This
//! repository's `.cargo/config.toml` selects the portable code
//! (`--cfg chacha20_backend="soft" --cfg poly1305_backend="soft"`); a
//! crate that depends on spime sets the same in its own, or builds with
//! `-C target-cpu=x86-64-v3` (docs/benchmarks.md, "Vendor build profile").
//!
//! ```
//! use spime::vendor::{Event, IngestConfig, Ingestor, MemoryStore};
//! use spime::seal::{self, DeviceKey, Seal, VendorKeys, keys};
//! use spime::message::*;
//! use spime::consent::*;
//! use spime::wire::DeviceId;
//!
//! let vendor_keys = VendorKeys::from_secrets(&[1; 32], &[2; 32]);
//! let vendor_pub = vendor_keys.public();
//! let dev = DeviceKey::from_seed(DeviceId([9; 8]), &[3; 32]);
//! let certificate = DeviceCertificate::issue(
//!     CertificateBody { device: dev.device, device_key: dev.public().to_bytes(),
//!                       model: "kettle".try_into().unwrap(), hardware_revision: 1, issued_at: 1,
//!                       not_after: None },
//!     vendor_keys.signing(),
//! )?;
//! let vendor = Ingestor::new(MemoryStore::new(), vendor_keys, IngestConfig::default());
//!
//! // The device opens epoch 1 and registers.
//! let (session, eph) = keys::device_start_epoch_with(&[4; 32], &dev.device, 1, &vendor_pub)?;
//! let state = ConsentState { version: 1, issued_at: 0, reconfirm_by: 1_000_000, notice_hash: [0; 32],
//!                            grants: Default::default(), contact: Default::default() };
//! let reg = Register { certificate, firmware: FirmwareVersion { major: 1, minor: 0, patch: 0, build: 1 },
//!                      consent: SignedConsent { state, owner: None }, transfer: None };
//! let mut buf = [0u8; Register::MAX_SEALED_LEN];
//! let n = seal::seal(&mut buf, &Seal { device: dev.device, epoch: 1, counter: 0, ephemeral: Some(eph) },
//!                    &reg, dev.signing(), &session)?;
//! let accepted = vendor.ingest(&buf[..n], 100)?;
//! assert!(matches!(accepted.event, Event::Registered { relationship: 1, .. }));
//! // The same bytes again are a replay.
//! assert_eq!(vendor.ingest(&buf[..n], 101).unwrap_err().reason(), "replay");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod batch;
mod error;
#[cfg(feature = "fjall")]
mod fjall_store;
mod ingest;
mod key_cache;
#[cfg(any(feature = "redb", feature = "fjall"))]
mod kv;
pub mod lifecycle;
pub mod link;
mod memory;
mod outbound;
#[cfg(feature = "postgres")]
mod pg_store;
#[cfg(feature = "redb")]
mod redb_store;
#[cfg(feature = "sim")]
pub mod sim;
pub mod store;

pub use error::{IngestError, KeyringError, SendError, StoreError};
#[cfg(feature = "fjall")]
pub use fjall_store::{FjallStore, FjallTxn};
pub use ingest::{
    Accepted, Event, IngestConfig, Ingestor, KEY_CACHE_DEFAULT, MAX_VENDOR_KEYS, OPENER_FAILURES, OPENER_WINDOW,
    Outcome, partition_of,
};
pub use memory::{MemoryStore, MemoryTxn};
#[cfg(feature = "postgres")]
pub use pg_store::{PgStore, PgTxn};
#[cfg(feature = "redb")]
pub use redb_store::{RedbStore, RedbTxn};
pub use store::{
    ConsentLedgerStore, DataErasure, DeviceRecord, DeviceRegistry, ErasureScope, Lifecycle, MessageLog, MessageQuery,
    NoticeLog, NoticeRecord, PurposeFilter, ReplayWindows, SessionSecrets, SharedDevices, Store, StoredMessage,
    Transaction, VendorCounters,
};
