//! Making and changing consent states while keeping them canonical:
//! the owner's decisions on the device (or in the app), the reset on
//! transfer, and the version rule the vendor uses to ignore older states.

use super::{
    CategorySet, Channel, ChannelSet, ConsentState, ContactGrant, ContactPrefs, DataCategory, FrequencyCap, Grant,
    LocationPrecision, MAX_RECONFIRM, Purpose,
};

/// A consent state could not be changed as asked (a caller mistake; the
/// state is left as it was).
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EditError {
    /// Essential is implied and cannot be granted, narrowed or withdrawn.
    #[error("Essential cannot be granted or withdrawn: it is implied")]
    Essential,
    /// A grant with no categories: withdraw the purpose instead.
    #[error("a grant needs at least one category")]
    EmptyGrant,
    /// Location granted without a precision, or a precision without Location.
    #[error("location precision must be set exactly when Location is granted")]
    LocationMismatch,
    /// The list is at its capacity.
    #[error("no room for another {0}")]
    Full(&'static str),
    /// A frequency cap with a zero period.
    #[error("a frequency cap period must be at least one second")]
    ZeroPeriod,
    /// Quiet hours out of range or empty (start equal to end).
    #[error("quiet hours must have minutes below 1440, start != end, and an offset within ±840 minutes")]
    QuietHoursRange,
    /// The version cannot go forward any more.
    #[error("consent version exhausted")]
    VersionExhausted,
}

impl EditError {
    /// The numeric code (SPEC.md §10.1, local): 145 Essential, 146
    /// EmptyGrant, 147 LocationMismatch, 148 Full, 149 ZeroPeriod, 150
    /// QuietHoursRange, 151 VersionExhausted.
    ///
    /// ```
    /// use spime::consent::EditError;
    /// assert_eq!(EditError::Essential.code(), 145);
    /// ```
    pub const fn code(&self) -> u16 {
        match self {
            EditError::Essential => 145,
            EditError::EmptyGrant => 146,
            EditError::LocationMismatch => 147,
            EditError::Full(_) => 148,
            EditError::ZeroPeriod => 149,
            EditError::QuietHoursRange => 150,
            EditError::VersionExhausted => 151,
        }
    }
}

/// Inserts `item` in a list kept strictly ascending by `key`, replacing an
/// item with the same key.
fn upsert<T, K: Ord, const N: usize>(
    list: &mut heapless::Vec<T, N>,
    item: T,
    key: impl Fn(&T) -> K,
    what: &'static str,
) -> Result<(), EditError> {
    let k = key(&item);
    match list.binary_search_by(|x| key(x).cmp(&k)) {
        Ok(i) => {
            if let Some(slot) = list.get_mut(i) {
                *slot = item;
            }
            Ok(())
        }
        Err(i) => crate::list::insert(list, i, item).map_err(|_| EditError::Full(what)),
    }
}

impl ConsentState {
    /// The state that allows only Essential: no grants, no contact but
    /// Essential notices on the device, a re-confirm date [`MAX_RECONFIRM`]
    /// after `issued_at`. `notice_hash` is the privacy notice shown (all
    /// zero when none was shown, as after a transfer).
    ///
    /// ```
    /// use spime::consent::ConsentState;
    /// let s = ConsentState::essential_only(1, 1_700_000_000, [0; 32]);
    /// assert!(s.grants.is_empty());
    /// assert_eq!(s.reconfirm_by, 1_700_000_000 + spime::consent::MAX_RECONFIRM);
    /// ```
    pub fn essential_only(version: u32, issued_at: u64, notice_hash: [u8; 32]) -> ConsentState {
        ConsentState {
            version,
            issued_at,
            reconfirm_by: issued_at.saturating_add(MAX_RECONFIRM),
            notice_hash,
            grants: heapless::Vec::new(),
            contact: ContactPrefs::default(),
        }
    }

    /// Deny everything that can be denied: the same state as
    /// [`ConsentState::essential_only`] (Essential cannot be denied).
    pub fn deny_all(version: u32, issued_at: u64, notice_hash: [u8; 32]) -> ConsentState {
        ConsentState::essential_only(version, issued_at, notice_hash)
    }

    /// The state after a change of owner at `at`: deny-all-but-Essential
    /// with the next version (versions go forward for the device's whole
    /// life, so nothing the previous owner signed can supersede it) and no
    /// privacy notice shown. Nothing of this state carries over.
    ///
    /// # Errors
    /// [`EditError::VersionExhausted`] at version `u32::MAX`.
    pub fn reset_for_transfer(&self, at: u64) -> Result<ConsentState, EditError> {
        let version = self.version.checked_add(1).ok_or(EditError::VersionExhausted)?;
        Ok(ConsentState::essential_only(version, at, [0; 32]))
    }

    /// The start of the owner's next decision: a copy with the next
    /// version, issued at `issued_at`, re-confirm date [`MAX_RECONFIRM`]
    /// later, showing `notice_hash`. Change it with the editing methods.
    ///
    /// # Errors
    /// [`EditError::VersionExhausted`] at version `u32::MAX`.
    pub fn successor(&self, issued_at: u64, notice_hash: [u8; 32]) -> Result<ConsentState, EditError> {
        let mut next = self.clone();
        next.advance(issued_at, notice_hash)?;
        Ok(next)
    }

    /// [`ConsentState::successor`] in place: this state becomes the start
    /// of the owner's next decision. For firmware, where a state (about
    /// 700 bytes) returned through a `Result` is copied on the stack.
    ///
    /// ```
    /// use spime::consent::{ConsentState, SignedConsent};
    /// let held = SignedConsent { state: ConsentState::essential_only(3, 0, [0; 32]), owner: None };
    /// let mut next = SignedConsent { state: held.state.clone(), owner: None };
    /// next.state.advance(100, [7; 32])?;
    /// assert_eq!(next.state, held.state.successor(100, [7; 32])?);
    /// # Ok::<(), spime::consent::EditError>(())
    /// ```
    ///
    /// # Errors
    /// [`EditError::VersionExhausted`] at version `u32::MAX` (nothing changes).
    pub fn advance(&mut self, issued_at: u64, notice_hash: [u8; 32]) -> Result<(), EditError> {
        self.version = self.version.checked_add(1).ok_or(EditError::VersionExhausted)?;
        self.issued_at = issued_at;
        self.reconfirm_by = issued_at.saturating_add(MAX_RECONFIRM);
        self.notice_hash = notice_hash;
        Ok(())
    }

    /// Whether this state replaces `held`: only a strictly higher version
    /// does. The vendor ignores a state that does not (a late-arriving older
    /// grant never undoes a withdrawal).
    ///
    /// ```
    /// use spime::consent::ConsentState;
    /// let withdrawal = ConsentState::essential_only(5, 0, [0; 32]);
    /// let older_grant = ConsentState::essential_only(4, 0, [0; 32]);
    /// assert!(!older_grant.supersedes(&withdrawal));
    /// assert!(withdrawal.supersedes(&older_grant));
    /// ```
    pub const fn supersedes(&self, held: &ConsentState) -> bool {
        self.version > held.version
    }

    /// Grants (or replaces the grant for) `grant.purpose`.
    ///
    /// # Errors
    /// [`EditError::Essential`], [`EditError::EmptyGrant`],
    /// [`EditError::LocationMismatch`], [`EditError::Full`].
    pub fn set_grant(&mut self, grant: Grant) -> Result<(), EditError> {
        if grant.purpose == Purpose::ESSENTIAL {
            return Err(EditError::Essential);
        }
        if grant.categories.is_empty() {
            return Err(EditError::EmptyGrant);
        }
        if grant.categories.contains(DataCategory::Location) != (grant.location != LocationPrecision::None) {
            return Err(EditError::LocationMismatch);
        }
        upsert(&mut self.grants, grant, |g| g.purpose, "grant")
    }

    /// Keeps only `keep` of the categories granted for `purpose`, at most
    /// `location` precise; a grant left empty is withdrawn. Nothing is
    /// widened: categories or precision not granted stay denied.
    ///
    /// # Errors
    /// [`EditError::Essential`].
    pub fn narrow(
        &mut self,
        purpose: Purpose,
        keep: CategorySet,
        location: LocationPrecision,
    ) -> Result<(), EditError> {
        if purpose == Purpose::ESSENTIAL {
            return Err(EditError::Essential);
        }
        if let Some(g) = self.grants.iter_mut().find(|g| g.purpose == purpose) {
            g.categories = g.categories.intersection(keep);
            g.location = g.location.min(location);
            if g.location == LocationPrecision::None {
                g.categories = g.categories.without(DataCategory::Location);
            } else if !g.categories.contains(DataCategory::Location) {
                g.location = LocationPrecision::None;
            }
        }
        self.grants.retain(|g| !g.categories.is_empty());
        Ok(())
    }

    /// Withdraws everything granted for `purpose`, and contact for it.
    ///
    /// # Errors
    /// [`EditError::Essential`].
    pub fn withdraw(&mut self, purpose: Purpose) -> Result<(), EditError> {
        if purpose == Purpose::ESSENTIAL {
            return Err(EditError::Essential);
        }
        self.grants.retain(|g| g.purpose != purpose);
        self.contact.grants.retain(|g| g.purpose != purpose);
        Ok(())
    }

    /// Withdraws every grant and every contact grant (caps, mutes and
    /// quiet hours stay: they only ever restrict).
    pub fn withdraw_all(&mut self) {
        self.grants.clear();
        self.contact.grants.clear();
    }

    /// Allows contact for `purpose` on `channels` (replacing what was
    /// allowed); an empty set removes the contact grant.
    ///
    /// # Errors
    /// [`EditError::Full`].
    pub fn set_contact(&mut self, purpose: Purpose, channels: ChannelSet) -> Result<(), EditError> {
        if channels.is_empty() {
            self.contact.grants.retain(|g| g.purpose != purpose);
            return Ok(());
        }
        upsert(&mut self.contact.grants, ContactGrant { purpose, channels }, |g| g.purpose, "contact grant")
    }

    /// Allows contact for `purpose` on one more channel.
    ///
    /// # Errors
    /// [`EditError::Full`].
    pub fn allow_channel(&mut self, purpose: Purpose, channel: Channel) -> Result<(), EditError> {
        let now = self.contact.grants.iter().find(|g| g.purpose == purpose).map_or(ChannelSet::EMPTY, |g| g.channels);
        self.set_contact(purpose, now.with(channel))
    }

    /// Sets (or replaces) the frequency cap for `cap.purpose`.
    ///
    /// # Errors
    /// [`EditError::ZeroPeriod`], [`EditError::Full`].
    pub fn set_cap(&mut self, cap: FrequencyCap) -> Result<(), EditError> {
        if cap.period_seconds == 0 {
            return Err(EditError::ZeroPeriod);
        }
        upsert(&mut self.contact.caps, cap, |c| c.purpose, "frequency cap")
    }

    /// Sets or clears the quiet hours.
    ///
    /// # Errors
    /// [`EditError::QuietHoursRange`].
    pub fn set_quiet_hours(&mut self, quiet: Option<super::QuietHours>) -> Result<(), EditError> {
        if let Some(q) = &quiet
            && (q.start_minute >= 1440
                || q.end_minute >= 1440
                || q.start_minute == q.end_minute
                || !(-840..=840).contains(&q.utc_offset_minutes))
        {
            return Err(EditError::QuietHoursRange);
        }
        self.contact.quiet_hours = quiet;
        Ok(())
    }

    /// Mutes a topic.
    ///
    /// # Errors
    /// [`EditError::Full`].
    pub fn mute(&mut self, topic: u16) -> Result<(), EditError> {
        upsert(&mut self.contact.muted_topics, topic, |t| *t, "muted topic")
    }

    /// Unmutes a topic.
    pub fn unmute(&mut self, topic: u16) {
        self.contact.muted_topics.retain(|t| *t != topic);
    }
}
