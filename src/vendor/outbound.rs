//! Vendor to device: Receipts, Notices and KeyUpdates, sealed with the
//! device's current session keys and the vendor's own per-device counter.
//! Receipts and Notices are signed by the vendor key the device's epoch was
//! opened with (the device holds it); a KeyUpdate by the key it certifies. A notice is sealed
//! only where the owner's contact preferences allow it; the counter value
//! and the notice log entry are committed before the sealed bytes are
//! returned, so a counter value is never used twice.

use alloc::vec::Vec;
use core::cell::RefCell;

use crate::consent::{ContactHistory, Purpose};
use crate::message::{Body, KeyUpdate, Notice, Receipt};
use crate::seal::seal_from_vendor;
use crate::wire::DeviceId;

use super::store::{
    DeviceRecord, DeviceRegistry, Lifecycle, NoticeLog, NoticeRecord, Store, Transaction, VendorCounters,
};
use super::{Ingestor, SendError};

struct TxHistory<'t, T> {
    tx: RefCell<&'t mut T>,
    device: DeviceId,
}

impl<T: NoticeLog> ContactHistory for TxHistory<'_, T> {
    fn sent_since(&self, purpose: Purpose, since: u64) -> u32 {
        // A storage failure counts as "cap reached": fail closed.
        self.tx.borrow_mut().notices_since(&self.device, purpose, since).unwrap_or(u32::MAX)
    }
}

fn live(record: Option<DeviceRecord>) -> Result<DeviceRecord, SendError> {
    let rec = record.ok_or(SendError::UnknownDevice)?;
    if rec.lifecycle == Lifecycle::Decommissioned {
        return Err(SendError::Decommissioned);
    }
    Ok(rec)
}

impl<S: Store> Ingestor<S> {
    /// Seals a Receipt countersigning the consent the vendor holds for `device`.
    ///
    /// # Errors
    /// [`SendError::UnknownDevice`], [`SendError::Decommissioned`],
    /// [`SendError::NoConsent`] after a transfer (nothing to countersign),
    /// or a storage or sealing failure (then nothing was sent).
    pub fn seal_receipt(&self, device: &DeviceId) -> Result<Vec<u8>, SendError> {
        let mut tx = self.store().begin()?;
        let rec = live(tx.device(device)?)?;
        if rec.lifecycle != Lifecycle::Active {
            return Err(SendError::NoConsent);
        }
        let receipt = Receipt {
            consent_version: rec.consent.state.version,
            consent_digest: rec.consent_digest,
            received_at: rec.consent_received_at,
        };
        let counter = tx.next_counter(device)?;
        let mut out = alloc::vec![0u8; Receipt::MAX_SEALED_LEN];
        let signer = self.epoch_signer(&rec)?;
        let n = seal_from_vendor(&mut out, *device, counter, &receipt, signer, &rec.session.keys())?;
        out.truncate(n);
        tx.commit()?;
        Ok(out)
    }

    /// Seals `notice` for `device` if the owner's contact preferences allow
    /// it at `now`, and records it for frequency caps. A notice held back is
    /// recorded too, with the reason (the owner's export lists both).
    ///
    /// # Errors
    /// [`SendError::Refused`] with the reason when the preferences forbid
    /// it or its kind does not fit its purpose (the notice is held back),
    /// [`SendError::AwaitingRegistration`] after a transfer (the previous
    /// owner's keys carry nothing to the next), [`SendError::UnknownDevice`],
    /// [`SendError::Decommissioned`], or a storage or sealing failure.
    pub fn seal_notice(&self, device: &DeviceId, notice: &Notice, now: u64) -> Result<Vec<u8>, SendError> {
        let mut tx = self.store().begin()?;
        let rec = live(tx.device(device)?)?;
        if rec.lifecycle != Lifecycle::Active {
            return Err(SendError::AwaitingRegistration);
        }
        let mut record = NoticeRecord {
            device: *device,
            relationship: rec.relationship,
            purpose: notice.purpose,
            at: now,
            counter: None,
            held_back: None,
            notice: postcard::to_allocvec(notice)
                .map_err(|_| SendError::Seal(crate::error::DecodeError::Malformed.into()))?,
        };
        let verdict = {
            let history = TxHistory { tx: RefCell::new(&mut tx), device: *device };
            rec.consent.state.check_notice(notice, now, &history)
        };
        if let Err(denial) = verdict {
            record.held_back = Some(alloc::format!("{denial}"));
            tx.record_notice(&record)?;
            tx.commit()?;
            return Err(SendError::Refused(denial));
        }
        let signer = self.epoch_signer(&rec)?;
        let counter = tx.next_counter(device)?;
        let mut out = alloc::vec![0u8; Notice::MAX_SEALED_LEN];
        let n = seal_from_vendor(&mut out, *device, counter, notice, signer, &rec.session.keys())?;
        out.truncate(n);
        record.counter = Some(counter);
        tx.record_notice(&record)?;
        tx.commit()?;
        Ok(out)
    }

    /// Seals a KeyUpdate for `device` (SPEC.md §5.11): the newest certified
    /// vendor key live at `now`, signed by that key, under the device's
    /// current epoch. Send it while [`crate::vendor::Accepted::key_update_due`]
    /// says so; the device takes it, opens its next epoch with the new key,
    /// and the vendor then signs with the new key for it. Sealing it again
    /// is harmless (the device treats the same certificate as a duplicate).
    ///
    /// # Errors
    /// [`SendError::NoKeyUpdate`] when the device's epoch already uses the
    /// newest certified key (or none is certified);
    /// [`SendError::UnknownDevice`], [`SendError::Decommissioned`],
    /// [`SendError::AwaitingRegistration`] after a transfer, or a storage or
    /// sealing failure.
    pub fn seal_key_update(&self, device: &DeviceId, now: u64) -> Result<Vec<u8>, SendError> {
        let mut tx = self.store().begin()?;
        let rec = live(tx.device(device)?)?;
        if rec.lifecycle != Lifecycle::Active {
            return Err(SendError::AwaitingRegistration);
        }
        let (keys, certificate) = self.newest_certified(now).ok_or(SendError::NoKeyUpdate)?;
        if certificate.body.serial <= rec.session.vendor_key() {
            return Err(SendError::NoKeyUpdate);
        }
        let update = KeyUpdate { certificate: *certificate };
        let counter = tx.next_counter(device)?;
        let mut out = alloc::vec![0u8; KeyUpdate::MAX_SEALED_LEN];
        let n = seal_from_vendor(&mut out, *device, counter, &update, keys, &rec.session.keys())?;
        out.truncate(n);
        tx.commit()?;
        Ok(out)
    }

    /// The vendor key that signs the device's messages of its epoch.
    fn epoch_signer(&self, rec: &DeviceRecord) -> Result<&crate::seal::VendorKeys, SendError> {
        let serial = rec.session.vendor_key();
        self.vendor_key(serial).ok_or(SendError::VendorKeyGone(serial))
    }
}
