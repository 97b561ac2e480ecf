//! The device side: what a product's firmware links. No heap, no `std`,
//! no globals: randomness, time and storage come in from the caller.
//!
//! - [`storage`]: the record store trait, the NOR flash adapter and the
//!   persisted message counter;
//! - [`outbox`]: sealed messages waiting for the link, in priority order;
//! - [`metrics`]: usage aggregated into windows on the device;
//! - [`fault`]: faults with repeats counted, not resent;
//! - [`session`]: the product's lifecycle, from unregistered to decommissioned.
//!
//! `docs/firmware.md` walks through a firmware and gives its footprint.

pub mod fault;
pub mod metrics;
pub mod outbox;
pub mod session;
pub mod storage;

pub use outbox::{Outbox, record_len};
#[allow(deprecated)]
pub use session::Phase;
pub use session::{Device, Identity, NoticeDecision, SessionError, Stage, StageHandle};
pub use storage::{NorStorage, Storage, StorageError};
