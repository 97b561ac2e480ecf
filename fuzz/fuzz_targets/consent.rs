//! The consent state decoders and evaluation never panic: any bytes given
//! to the decoders, and any state (canonical or not) built from the bytes,
//! evaluated for any request.
#![no_main]
use libfuzzer_sys::fuzz_target;
use spime::consent::*;
use spime::message::NoticeKind;

/// Takes bytes from the front, zeros when they run out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) << 32 | u64::from(self.u32())
    }
    fn purpose(&mut self) -> Purpose {
        Purpose::from_id(self.u16()).unwrap_or(Purpose::MARKETING)
    }
    fn categories(&mut self) -> CategorySet {
        CategorySet::from_bits(self.u16() & 0x7f).unwrap_or(CategorySet::EMPTY)
    }
    fn precision(&mut self) -> LocationPrecision {
        LocationPrecision::ALL[usize::from(self.u8() % 6)]
    }
    fn channel(&mut self) -> Channel {
        Channel::ALL[usize::from(self.u8() % 4)]
    }
}

/// A state straight from the bytes, with no canonical-form check.
fn raw_state(b: &mut Bytes<'_>) -> ConsentState {
    let mut s = ConsentState::essential_only(b.u32(), b.u64(), [0; 32]);
    s.reconfirm_by = b.u64();
    for _ in 0..b.u8() % 20 {
        let g = Grant { purpose: b.purpose(), categories: b.categories(), location: b.precision(), expires_at: None };
        let g = if b.u8() & 1 == 1 { Grant { expires_at: Some(b.u64()), ..g } } else { g };
        let _ = s.grants.push(g);
    }
    for _ in 0..b.u8() % 20 {
        let channels = ChannelSet::from_bits(b.u8() & 0x0f).unwrap_or(ChannelSet::EMPTY);
        let _ = s.contact.grants.push(ContactGrant { purpose: b.purpose(), channels });
    }
    if b.u8() & 1 == 1 {
        s.contact.quiet_hours =
            Some(QuietHours { start_minute: b.u16(), end_minute: b.u16(), utc_offset_minutes: b.u16() as i16 });
    }
    for _ in 0..b.u8() % 10 {
        let _ = s.contact.caps.push(FrequencyCap { purpose: b.purpose(), max_notices: b.u16(), period_seconds: b.u32() });
    }
    for _ in 0..b.u8() % 20 {
        let _ = s.contact.muted_topics.push(b.u16());
    }
    s
}

struct History(u32);
impl ContactHistory for History {
    fn sent_since(&self, _purpose: Purpose, _since: u64) -> u32 {
        self.0
    }
}

fn evaluate(s: &ConsentState, b: &mut Bytes<'_>) {
    for _ in 0..4 {
        let (p, c, l, now) = (b.purpose(), b.categories(), b.precision(), b.u64());
        if let Ok(permit) = s.may_collect(p, c, l, now) {
            assert!(permit.categories().contains_all(c.without(DataCategory::Location)));
        }
        let _ = s.grant_permit(p, now);
        let kind = if b.u8() & 1 == 1 { NoticeKind::Recall } else { NoticeKind::SuppliesOffer };
        let _ = s.may_contact(p, b.channel(), b.u16(), kind, now, &History(b.u32()));
        let _ = s.successor(now, [0; 32]);
        let _ = s.reset_for_transfer(now);
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = spime::codec::decode::<ConsentState>(data) {
        evaluate(&s, &mut Bytes(data));
    }
    if let Ok(s) = spime::codec::decode::<SignedConsent>(data) {
        let _ = s.verify_owner(&spime::wire::DeviceId([0; 8]), OwnerRequirement::AnyOwnerKey);
    }
    let mut b = Bytes(data);
    let s = raw_state(&mut b);
    evaluate(&s, &mut b);
});
