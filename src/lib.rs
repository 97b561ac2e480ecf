//! # spime
//!
//! A lifecycle protocol between a connected product and its maker: the
//! product registers, reports how it is used and when it fails, and carries
//! the owner's consent; the maker answers with receipts and notices — and
//! never sees more than the owner allowed. One `no_std` crate, linked by the
//! firmware and by the maker's servers. The wire format is `SPEC.md`.
//!
//! Every message is signed by its sender (Ed25519) and then encrypted
//! (ChaCha20-Poly1305) under a per-device session key from X25519 +
//! HKDF-SHA256. An opened message is a self-contained proof.
//!
//! ```
//! use spime::message::{Body, Transfer};
//! use spime::seal::{self, keys, DeviceKey, Envelope, Seal, VendorKeys};
//! use spime::wire::DeviceId;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Made at manufacture (fixed bytes here; use a CryptoRng in products).
//! let vendor = VendorKeys::from_secrets(&[1; 32], &[2; 32]);
//! let device = DeviceKey::from_seed(DeviceId([7; 8]), &[3; 32]);
//!
//! // Device: open key epoch 1 and seal a message into a stack buffer.
//! let (session, ephemeral) = keys::device_start_epoch_with(&[4; 32], &device.device, 1, &vendor.public())?;
//! let mut out = [0u8; Transfer::MAX_SEALED_LEN];
//! let header = Seal { device: device.device, epoch: 1, counter: 0, ephemeral: Some(ephemeral) };
//! let n = seal::seal(&mut out, &header, &Transfer::unsigned(1_795_000_000, 1), device.signing(), &session)?;
//!
//! // Vendor: parse, agree the epoch's keys, decrypt, verify, decode.
//! let envelope = Envelope::parse(&out[..n])?;
//! let eph = envelope.header.ephemeral.ok_or("no ephemeral key")?;
//! let keys = vendor.accept_epoch(&envelope.header.device, envelope.header.epoch, &eph)?;
//! let mut buf = [0u8; Transfer::MAX_SEALED_LEN];
//! let verified = envelope.decrypt(&keys, &mut buf)?.verify(&device.public())?;
//! assert_eq!(verified.decode::<Transfer>()?, Transfer::unsigned(1_795_000_000, 1));
//! # Ok(()) }
//! ```
//!
//! ## Design
//!
//! - **Layers as modules.** [`wire`] is the envelope header (a fixed layout
//!   checked once, then read without panics); [`codec`] the canonical body
//!   encoding; [`message`] the bodies; [`seal`] keys, counters, replay and
//!   the sign-then-encrypt envelope; [`consent`] the owner's decisions.
//! - **Proof-carrying steps.** Opening goes parse → decrypt → verify →
//!   decode, and each step is a type only the previous one makes: there is no
//!   way to decode a body whose signature was not checked.
//! - **Exact bytes.** Signatures cover the bytes received, never a
//!   re-encoding; decoders are total, bounded by a `const` per type, and
//!   refuse trailing bytes and non-canonical encodings.
//! - **No globals.** Randomness, time and storage come in from the caller
//!   (a `rand_core::CryptoRng`, a Unix-seconds value, small storage traits).
//! - **Fixed capacities.** Every variable field has a bound; firmware sizes
//!   its buffers with `MAX_SEALED_LEN` constants at compile time.
//!
//! ## Features
//!
//! | feature | default | adds |
//! |---|---|---|
//! | `std` | yes | the vendor side ([`vendor`]), [`os_rng`] (randomness from the operating system); implies `alloc` |
//! | `alloc` | via `std` | the consent ledger and other heap-backed helpers |
//! | `fast` | yes | precomputed Ed25519/X25519 tables: faster signing and key agreement, ~38 KB more flash |
//! | `redb` | yes | the persistent embedded vendor store (`vendor::RedbStore`); implies `std` |
//! | `fjall` | no | the embedded vendor store on an LSM tree (`vendor::FjallStore`): commit cost that grows far less with fleet size than redb's; implies `std`; Rust 1.90 |
//! | `server` | yes | the vendor server: the `spime-vendor` binary and `server` (CoAP, HTTP, the fleet view; tokio, axum); implies `redb` |
//!
//! With `--no-default-features` the crate is `no_std`, heap-free, and builds
//! for `thumbv7em-none-eabihf` and targets without atomics. The error types
//! implement `core::error::Error` with or without `std`.
//!
//! ## Dependencies in the API
//!
//! Types of these crates appear in spime's API, so they are re-exported:
//! use them through `spime::` and their versions always match.
//!
//! | re-export | what of it appears |
//! |---|---|
//! | [`rand_core`] | the `CryptoRng` every key generation and registration takes |
//! | [`ed25519_dalek`] | `SigningKey` and `VerifyingKey` of devices and vendors |
//! | [`heapless`] | the bounded strings and vectors in message bodies |
//! | [`embedded_storage`] | the `NorFlash` trait a flash driver implements for [`device::storage::NorStorage`] |
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "alloc")]
extern crate alloc;

pub use ed25519_dalek;
pub use embedded_storage;
pub use heapless;
pub use rand_core;

pub mod codec;
pub mod consent;
pub mod device;
pub mod error;
mod list;
pub mod message;
pub mod seal;
#[cfg(feature = "server")]
pub mod server;
pub mod time;
#[cfg(feature = "std")]
pub mod vendor;
pub mod wire;

/// The operating system's random number generator, as a
/// [`rand_core::CryptoRng`]: what a host program (a vendor server, a test,
/// a device simulator) passes wherever spime takes randomness.
///
/// It is [`getrandom::SysRng`] wrapped in [`rand_core::UnwrapErr`]: it
/// panics if the operating system cannot supply randomness, which on the
/// platforms `std` supports means the system is broken. Firmware has no
/// operating system and passes its hardware RNG instead.
#[cfg(feature = "std")]
pub type OsRng = rand_core::UnwrapErr<getrandom::SysRng>;

/// The operating system's random number generator ([`OsRng`]).
///
/// ```
/// use spime::seal::VendorKeys;
/// let mut rng = spime::os_rng();
/// let vendor = VendorKeys::generate(&mut rng);
/// # let _ = vendor;
/// ```
#[cfg(feature = "std")]
pub const fn os_rng() -> OsRng {
    rand_core::UnwrapErr(getrandom::SysRng)
}

/// The README's code blocks, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
