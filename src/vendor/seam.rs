//! SEAM: the consent evaluation the pipeline calls.
//!
//! The shared evaluation (`ConsentState::check_usage`, `check_fault`,
//! `check_notice`, `essential_only`) lives in [`crate::consent`] once that
//! work is merged; until then this module is a minimal stand-in with the
//! same shape, so the pipeline plugs into the real one by changing only this
//! file. Every rule applied here is written in SPEC.md §9.

use crate::consent::{
    CategorySet, Channel, ConsentState, ContactPrefs, DataCategory, ESSENTIAL_CATEGORIES, LocationPrecision, Purpose,
};
use crate::message::{Fault, Notice, NoticeKind, Usage};

/// Why data may not be collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Denial {
    /// The owner granted nothing for this purpose.
    #[error("purpose {0:?} not granted")]
    PurposeNotGranted(Purpose),
    /// The purpose is granted, but not for these categories.
    #[error("categories 0x{missing:x} not granted for {purpose:?}")]
    CategoriesNotGranted {
        /// the purpose
        purpose: Purpose,
        /// the category bits carried but not granted
        missing: u16,
    },
    /// A location more precise than granted.
    #[error("location {got:?} is more precise than the granted {granted:?}")]
    LocationTooPrecise {
        /// the granted precision
        granted: LocationPrecision,
        /// the precision carried
        got: LocationPrecision,
    },
    /// The grant (or the whole state, past its re-confirm date) has lapsed.
    #[error("grant for {0:?} has lapsed")]
    Expired(Purpose),
    /// The data names a consent version the vendor does not hold yet.
    #[error("built under consent version {got}, the vendor holds {held}")]
    UnknownVersion {
        /// the version the vendor holds
        held: u32,
        /// the version named by the data
        got: u32,
    },
}

/// Why the owner may not be contacted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContactDenial {
    /// No contact grant for this purpose.
    #[error("contact for {0:?} not granted")]
    PurposeNotGranted(Purpose),
    /// The purpose is granted, but not on this channel.
    #[error("channel {channel:?} not allowed for {purpose:?}")]
    ChannelNotAllowed {
        /// the purpose
        purpose: Purpose,
        /// the channel asked for
        channel: Channel,
    },
    /// The owner muted this topic.
    #[error("topic {0} is muted")]
    TopicMuted(u16),
    /// It is within the owner's quiet hours.
    #[error("quiet hours")]
    QuietHours,
    /// The frequency cap for the purpose is reached.
    #[error("frequency cap for {0:?} reached")]
    FrequencyCap(Purpose),
    /// The consent state is past its re-confirm date.
    #[error("consent lapsed")]
    Lapsed,
    /// The notice itself has expired.
    #[error("notice expired")]
    NoticeExpired,
}

/// How many notices were sent to the device for a purpose since a time.
pub trait ContactHistory {
    /// Notices for `purpose` sent at or after `since` (Unix seconds).
    fn sent_since(&self, purpose: Purpose, since: u64) -> u32;
}

fn check_data(
    state: &ConsentState,
    purpose: Purpose,
    version: u32,
    categories: CategorySet,
    location: LocationPrecision,
    now: u64,
) -> Result<(), Denial> {
    if version > state.version {
        return Err(Denial::UnknownVersion { held: state.version, got: version });
    }
    if purpose == Purpose::ESSENTIAL {
        let missing = categories.difference(ESSENTIAL_CATEGORIES);
        if !missing.is_empty() {
            return Err(Denial::CategoriesNotGranted { purpose, missing: missing.bits() });
        }
        return Ok(());
    }
    let grant = state.grants.iter().find(|g| g.purpose == purpose).ok_or(Denial::PurposeNotGranted(purpose))?;
    let lapse = grant.expires_at.unwrap_or(state.reconfirm_by).min(state.reconfirm_by);
    if now >= lapse {
        return Err(Denial::Expired(purpose));
    }
    let missing = categories.difference(grant.categories);
    if !missing.is_empty() {
        return Err(Denial::CategoriesNotGranted { purpose, missing: missing.bits() });
    }
    if categories.contains(DataCategory::Location) && location > grant.location {
        return Err(Denial::LocationTooPrecise { granted: grant.location, got: location });
    }
    Ok(())
}

/// May this usage report be collected now under `state`?
///
/// # Errors
/// The [`Denial`] naming the first rule it breaks.
pub fn check_usage(state: &ConsentState, usage: &Usage, now: u64) -> Result<(), Denial> {
    check_data(state, usage.purpose, usage.consent_version, usage.categories(), usage.location_precision(), now)
}

/// May this fault report be collected now under `state`?
///
/// # Errors
/// The [`Denial`] naming the first rule it breaks.
pub fn check_fault(state: &ConsentState, fault: &Fault, now: u64) -> Result<(), Denial> {
    check_data(state, fault.purpose, fault.consent_version, fault.categories(), LocationPrecision::None, now)
}

/// The state after a change of owner: version kept, nothing granted (only
/// Essential, which is implied), no contact but Essential.
pub fn essential_only(previous: &ConsentState, now: u64) -> ConsentState {
    ConsentState {
        version: previous.version,
        issued_at: now,
        reconfirm_by: now,
        notice_hash: [0; 32],
        grants: heapless::Vec::new(),
        contact: ContactPrefs::default(),
    }
}

/// May `notice` be sent now under `state`, given what was already sent?
///
/// # Errors
/// The [`ContactDenial`] naming the first rule it breaks.
pub fn check_notice(
    state: &ConsentState,
    notice: &Notice,
    now: u64,
    history: &impl ContactHistory,
) -> Result<(), ContactDenial> {
    if now > notice.expires_at {
        return Err(ContactDenial::NoticeExpired);
    }
    let safety = notice.purpose == Purpose::ESSENTIAL;
    if safety {
        // Essential (security updates, safety recalls) cannot be denied.
        if notice.kind == NoticeKind::Recall {
            return Ok(());
        }
    } else {
        if now >= state.reconfirm_by {
            return Err(ContactDenial::Lapsed);
        }
        let grant = state
            .contact
            .grants
            .iter()
            .find(|g| g.purpose == notice.purpose)
            .ok_or(ContactDenial::PurposeNotGranted(notice.purpose))?;
        if !grant.channels.contains(notice.channel) {
            return Err(ContactDenial::ChannelNotAllowed { purpose: notice.purpose, channel: notice.channel });
        }
        if state.contact.muted_topics.contains(&notice.topic) {
            return Err(ContactDenial::TopicMuted(notice.topic));
        }
    }
    if let Some(q) = &state.contact.quiet_hours {
        let local = i64::try_from(now % 86_400).unwrap_or(0) + i64::from(q.utc_offset_minutes) * 60;
        let minute = u16::try_from(local.rem_euclid(86_400) / 60).unwrap_or(0);
        let quiet = if q.start_minute <= q.end_minute {
            minute >= q.start_minute && minute < q.end_minute
        } else {
            minute >= q.start_minute || minute < q.end_minute
        };
        if quiet {
            return Err(ContactDenial::QuietHours);
        }
    }
    if !safety && let Some(cap) = state.contact.caps.iter().find(|c| c.purpose == notice.purpose) {
        let since = now.saturating_sub(u64::from(cap.period_seconds)).saturating_add(1);
        if history.sent_since(notice.purpose, since) >= u32::from(cap.max_notices) {
            return Err(ContactDenial::FrequencyCap(notice.purpose));
        }
    }
    Ok(())
}
