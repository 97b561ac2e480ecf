//! The key and value encodings the embedded key-value stores share
//! ([`super::RedbStore`], `FjallStore`): the same tables, keys and bytes,
//! so that the two stay one layout. One exception: `FjallStore` keeps the
//! replay windows in its `messages` keyspace, each under the bare device
//! id (its module docs say why), and has no `replay_windows` keyspace.
//!
//! Records are encoded with postcard. Keys: device id, followed by
//! big-endian numbers so that ranges iterate in order.

use alloc::string::ToString;
use alloc::vec::Vec;

use crate::consent::Purpose;
use crate::seal::replay::ReplayWindow;
use crate::wire::DeviceId;

use super::StoreError;
use super::store::{ErasureScope, MessageQuery, NoticeRecord, StoredMessage, tally};

/// Table (keyspace) names.
pub(crate) const DEVICES: &str = "devices";
pub(crate) const WINDOWS: &str = "replay_windows";
pub(crate) const LEDGER: &str = "consent_ledger";
pub(crate) const MESSAGES: &str = "messages";
pub(crate) const COUNTERS: &str = "vendor_counters";
/// Key: device, purpose (u16 BE), at (u64 BE), sent (1) or held back (0),
/// then the vendor counter (sent) or a sequence number (held back).
pub(crate) const NOTICES: &str = "notice_log";

pub(crate) fn backend(e: impl ToString) -> StoreError {
    StoreError::Backend(e.to_string())
}

pub(crate) fn key(device: &DeviceId, tail: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(16 + 18);
    k.extend_from_slice(&device.0);
    for t in tail {
        k.extend_from_slice(t);
    }
    k
}

pub(crate) fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(v).map_err(|_| StoreError::Corrupt("encode"))
}

/// Encodes into `buf` (cleared first), reusing its allocation.
pub(crate) fn encode_into<T: serde::Serialize>(v: &T, buf: &mut Vec<u8>) -> Result<(), StoreError> {
    buf.clear();
    *buf = postcard::to_extend(v, core::mem::take(buf)).map_err(|_| StoreError::Corrupt("encode"))?;
    Ok(())
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], table: &'static str) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|_| StoreError::Corrupt(table))
}

/// A stored window: the highest counter, then the bitmap, big-endian.
pub(crate) fn window_from(bytes: &[u8]) -> Result<ReplayWindow, StoreError> {
    let b: [u8; 24] = bytes.try_into().map_err(|_| StoreError::Corrupt("replay_windows"))?;
    let (h, s) = b.split_at(8);
    let highest = u64::from_be_bytes(h.try_into().map_err(|_| StoreError::Corrupt("replay_windows"))?);
    let seen = u128::from_be_bytes(s.try_into().map_err(|_| StoreError::Corrupt("replay_windows"))?);
    Ok(ReplayWindow::from_parts(highest, seen))
}

pub(crate) fn window_bytes(window: &ReplayWindow) -> [u8; 24] {
    let (highest, seen) = window.parts();
    let mut b = [0u8; 24];
    let (h, s) = b.split_at_mut(8);
    h.copy_from_slice(&highest.to_be_bytes());
    s.copy_from_slice(&seen.to_be_bytes());
    b
}

/// A key of a device and a number (a message counter, a ledger sequence
/// number): device, then the number big-endian.
pub(crate) fn seq_key(device: &DeviceId, counter: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    let (d, c) = k.split_at_mut(8);
    d.copy_from_slice(&device.0);
    c.copy_from_slice(&counter.to_be_bytes());
    k
}

/// The first and last key of a device's entries in a table keyed by
/// device and a u64 (messages, the consent ledger).
pub(crate) fn counter_range(device: &DeviceId) -> (Vec<u8>, Vec<u8>) {
    (key(device, &[&0u64.to_be_bytes()]), key(device, &[&u64::MAX.to_be_bytes()]))
}

pub(crate) fn notice_key(n: &NoticeRecord, seq: u64) -> Vec<u8> {
    let sent = [u8::from(n.sent())];
    key(
        &n.device,
        &[&n.purpose.id().to_be_bytes(), &n.at.to_be_bytes(), &sent, &n.counter.unwrap_or(seq).to_be_bytes()],
    )
}

/// The first and last key of the notice records of `notice`'s device,
/// purpose and time (where a held-back record takes the next number).
pub(crate) fn notice_slot_range(notice: &NoticeRecord) -> (Vec<u8>, Vec<u8>) {
    (notice_key(notice, 0), notice_key(notice, u64::MAX))
}

/// The first and last key of a device's notices of `purpose` at or after `since`.
pub(crate) fn notices_since_range(device: &DeviceId, purpose: Purpose, since: u64) -> (Vec<u8>, Vec<u8>) {
    let p = purpose.id().to_be_bytes();
    (key(device, &[&p, &since.to_be_bytes()]), key(device, &[&p, &[0xff; 17]]))
}

/// The first and last key of all notices of a device.
pub(crate) fn device_notices_range(device: &DeviceId) -> (Vec<u8>, Vec<u8>) {
    (key(device, &[]), key(device, &[&[0xff; 19]]))
}

/// Whether a notice key is of a sent notice: the sent flag follows
/// device, purpose and time.
pub(crate) fn notice_key_sent(k: &[u8]) -> bool {
    k.len() >= 11 && k.get(k.len() - 9) == Some(&1)
}

/// What an erasure deletes, gathered while walking a device's range: the
/// keys, and for messages how many of each purpose.
#[derive(Default)]
pub(crate) struct Doomed {
    pub(crate) keys: Vec<Vec<u8>>,
    pub(crate) counts: Vec<(Purpose, u64)>,
}

impl Doomed {
    /// Takes a stored message if `scope` covers it.
    pub(crate) fn message(&mut self, scope: &ErasureScope, k: &[u8], v: &[u8]) -> Result<(), StoreError> {
        let m: StoredMessage = decode(v, "messages")?;
        if scope.covers_message(&m) {
            tally(&mut self.counts, m.purpose, 1);
            self.keys.push(k.to_vec());
        }
        Ok(())
    }

    /// Takes a notice record of `device` if `scope` covers it.
    pub(crate) fn notice(
        &mut self,
        device: &DeviceId,
        scope: &ErasureScope,
        k: &[u8],
        v: &[u8],
    ) -> Result<(), StoreError> {
        let n: NoticeRecord = decode(v, "notice_log")?;
        if n.device == *device && scope.covers_notice(&n) {
            self.keys.push(k.to_vec());
        }
        Ok(())
    }

    /// How many keys were taken.
    pub(crate) fn count(&self) -> u64 {
        u64::try_from(self.keys.len()).unwrap_or(u64::MAX)
    }
}

/// Adds a stored notice record to `out` if it is of `device`.
pub(crate) fn push_notice(out: &mut Vec<NoticeRecord>, device: &DeviceId, v: &[u8]) -> Result<(), StoreError> {
    let n: NoticeRecord = decode(v, "notice_log")?;
    if n.device == *device {
        out.push(n);
    }
    Ok(())
}

/// Notices in the order [`super::Store::notices`] returns them: oldest first.
pub(crate) fn sort_notices(out: &mut [NoticeRecord]) {
    out.sort_by_key(|n| (n.at, n.counter));
}

/// Adds a stored message to `out` if `query` selects it.
pub(crate) fn push_message(out: &mut Vec<StoredMessage>, query: &MessageQuery, v: &[u8]) -> Result<(), StoreError> {
    let m: StoredMessage = decode(v, "messages")?;
    if query.matches(&m) {
        out.push(m);
    }
    Ok(())
}
