//! A simulated device for tests, benchmarks and fuzzing (feature `sim`,
//! which only the crate's own dev-dependency turns on): seals device
//! messages and opens vendor messages with the core API, deterministically
//! from a seed. It seals any body without a consent check — that is what
//! tests of the vendor's refusals need — so it is kept out of every build a
//! product links; devices use [`crate::device::session::Device`], which
//! cannot seal what consent forbids. Not firmware either: ephemeral secrets
//! are derived from the seed.

use alloc::vec::Vec;

use sha2::{Digest, Sha256};

use crate::consent::{
    CategorySet, ConsentState, ContactPrefs, DataCategory, Grant, LocationPrecision, Purpose, SignedConsent,
};
use crate::error::{OpenError, SealError};
use crate::message::{Body, CertificateBody, DeviceCertificate, FirmwareVersion, Metric, MetricValue, Register, Usage};
use crate::seal::{self, DeviceKey, Envelope, Seal, SessionKeys, VendorKeys, VendorPublicKeys, keys};
use crate::wire::DeviceId;

/// A simulated device.
pub struct SimDevice {
    key: DeviceKey,
    certificate: DeviceCertificate,
    vendor: VendorPublicKeys,
    seed: [u8; 32],
    session: Option<SessionKeys>,
    /// The next counter value to use.
    pub counter: u64,
}

impl core::fmt::Debug for SimDevice {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SimDevice").field("device", &self.key.device).field("counter", &self.counter).finish()
    }
}

impl SimDevice {
    /// A device with a key from `seed` and a certificate issued by `vendor`.
    ///
    /// # Errors
    /// Only if the certificate cannot be encoded (it always can).
    pub fn new(device: DeviceId, seed: [u8; 32], vendor: &VendorKeys) -> Result<SimDevice, SealError> {
        let key = DeviceKey::from_seed(device, &seed);
        let certificate = DeviceCertificate::issue(
            CertificateBody {
                device,
                device_key: key.public().to_bytes(),
                model: heapless::String::try_from("sim").unwrap_or_default(),
                hardware_revision: 1,
                issued_at: 0,
                not_after: None,
            },
            vendor.signing(),
        )?;
        Ok(SimDevice { key, certificate, vendor: vendor.public(), seed, session: None, counter: 0 })
    }

    /// The device id.
    pub const fn id(&self) -> DeviceId {
        self.key.device
    }

    /// The device's certificate.
    pub const fn certificate(&self) -> &DeviceCertificate {
        &self.certificate
    }

    /// The device key.
    pub const fn key(&self) -> &DeviceKey {
        &self.key
    }

    /// The current epoch (0 before the first).
    pub fn epoch(&self) -> u32 {
        self.session.as_ref().map_or(0, |s| s.epoch)
    }

    /// The current session keys, if an epoch is open.
    pub const fn session(&self) -> Option<&SessionKeys> {
        self.session.as_ref()
    }

    /// Seals `body` under the current epoch (opening epoch 1 first if none is open).
    ///
    /// # Errors
    /// A [`SealError`].
    pub fn seal<B: Body>(&mut self, body: &B) -> Result<Vec<u8>, SealError> {
        match self.session.clone() {
            Some(s) => self.seal_with(body, &s, None),
            None => self.seal_new_epoch(body),
        }
    }

    /// Seals `body` as the message that opens the next epoch (with an ephemeral key).
    ///
    /// # Errors
    /// A [`SealError`].
    pub fn seal_new_epoch<B: Body>(&mut self, body: &B) -> Result<Vec<u8>, SealError> {
        let epoch = self.epoch().wrapping_add(1);
        let secret: [u8; 32] = Sha256::new()
            .chain_update(b"spime sim ephemeral")
            .chain_update(self.seed)
            .chain_update(epoch.to_be_bytes())
            .finalize()
            .into();
        let (session, eph) = keys::device_start_epoch_with(&secret, &self.key.device, epoch, &self.vendor)?;
        self.session = Some(session.clone());
        self.seal_with(body, &session, Some(eph))
    }

    /// Seals `body` with given session keys and ephemeral key, and the next counter.
    ///
    /// # Errors
    /// A [`SealError`].
    pub fn seal_with<B: Body>(
        &mut self,
        body: &B,
        session: &SessionKeys,
        ephemeral: Option<[u8; 32]>,
    ) -> Result<Vec<u8>, SealError> {
        let mut out = alloc::vec![0u8; B::MAX_SEALED_LEN];
        let header = Seal { device: self.key.device, epoch: session.epoch, counter: self.counter, ephemeral };
        let n = seal::seal(&mut out, &header, body, self.key.signing(), session)?;
        out.truncate(n);
        self.counter = self.counter.saturating_add(1);
        Ok(out)
    }

    /// Opens a vendor message for this device.
    ///
    /// # Errors
    /// An [`OpenError`] when it is not authentic, not for this device, or not a `B`.
    pub fn open<B: Body>(&self, bytes: &[u8]) -> Result<B, OpenError> {
        let env = Envelope::parse(bytes)?;
        if env.header.device != self.key.device {
            return Err(OpenError::WrongDevice);
        }
        let session = self.session.as_ref().ok_or(OpenError::Unauthentic)?;
        let mut buf = alloc::vec![0u8; env.plaintext_len()];
        let pt = env.decrypt(session, &mut buf)?;
        pt.verify(&self.vendor.signing)?.decode::<B>()
    }
}

/// A consent state: `version`, decided at `issued_at`, granting each purpose
/// its categories (City precision where Location is granted) until the
/// longest re-confirm date ([`crate::consent::MAX_RECONFIRM`] later), no
/// contact grants.
pub fn consent(version: u32, grants: &[(Purpose, CategorySet)], issued_at: u64) -> SignedConsent {
    let mut g = heapless::Vec::new();
    let mut sorted: Vec<&(Purpose, CategorySet)> = grants.iter().collect();
    sorted.sort_by_key(|(p, _)| *p);
    for (purpose, categories) in sorted {
        let location = if categories.contains(crate::consent::DataCategory::Location) {
            LocationPrecision::City
        } else {
            LocationPrecision::None
        };
        let _ = g.push(Grant { purpose: *purpose, categories: *categories, location, expires_at: None });
    }
    SignedConsent {
        state: ConsentState {
            version,
            issued_at,
            reconfirm_by: issued_at.saturating_add(crate::consent::MAX_RECONFIRM),
            notice_hash: [0; 32],
            grants: g,
            contact: ContactPrefs::default(),
        },
        owner: None,
    }
}

/// The Register a device of the benches and the fuzz targets sends first:
/// its certificate, firmware 1.0.0, no transfer, and [`consent`] version 1
/// (issued at 0) granting UsageAnalytics its UsageCounters, which the
/// reports of [`counter_usage`] need.
///
/// ```
/// use spime::seal::VendorKeys;
/// use spime::vendor::sim::{SimDevice, usage_register};
/// use spime::vendor::{IngestConfig, Ingestor, MemoryStore};
/// use spime::wire::DeviceId;
/// let vendor = VendorKeys::from_secrets(&[1; 32], &[2; 32]);
/// let mut device = SimDevice::new(DeviceId([7; 8]), [7; 32], &vendor)?;
/// let sealed = device.seal(&usage_register(&device))?;
/// let ingestor = Ingestor::new(MemoryStore::new(), vendor, IngestConfig::default());
/// assert!(ingestor.ingest(&sealed, 10).is_ok());
/// # Ok::<(), spime::error::SealError>(())
/// ```
pub fn usage_register(device: &SimDevice) -> Register {
    let grants = [(Purpose::USAGE_ANALYTICS, CategorySet::EMPTY.with(DataCategory::UsageCounters))];
    Register {
        certificate: device.certificate().clone(),
        firmware: FirmwareVersion { major: 1, minor: 0, patch: 0, build: 0 },
        consent: consent(1, &grants, 0),
        transfer: None,
    }
}

/// A UsageAnalytics report built under `consent_version` for the window
/// `[0, 1)`, with one UsageCounters counter per `(id, count)`; ids must be
/// strictly ascending, and counters past the sixteenth are left out.
pub fn counter_usage(consent_version: u32, counters: &[(u16, u64)]) -> Usage {
    let metrics = counters
        .iter()
        .map(|&(id, n)| Metric { id, category: DataCategory::UsageCounters, value: MetricValue::Counter(n) })
        .take(crate::message::MAX_METRICS)
        .collect();
    Usage { purpose: Purpose::USAGE_ANALYTICS, consent_version, window_start: 0, window_end: 1, metrics }
}
