//! Words, dates and pictures for the operator pages.

use core::fmt::Write as _;

use crate::consent::{ConsentState, DataCategory, LocationPrecision};

/// A Unix time as `YYYY-MM-DD HH:MM UTC`.
pub(crate) fn utc(t: u64) -> String {
    let (y, m, d) = civil(t / 86_400);
    let s = t % 86_400;
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", s / 3_600, s % 3_600 / 60)
}

/// A Unix time as `YYYY-MM-DD`.
pub(crate) fn date(t: u64) -> String {
    let (y, m, d) = civil(t / 86_400);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Howard Hinnant's civil_from_days for days since 1970-01-01.
fn civil(days: u64) -> (i128, i128, i128) {
    let z = i128::from(days) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i128::from(month <= 2), month, day)
}

/// HTML-escapes text.
pub(crate) fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A consent state in plain words, one line per grant, e.g.
/// "usage analytics: usage counters, environment until 2027-03-01", and
/// a last line on location.
pub(crate) fn consent_words(state: &ConsentState) -> Vec<String> {
    let mut lines = Vec::new();
    let mut any_location = false;
    for g in &state.grants {
        let until = g.expires_at.unwrap_or(state.reconfirm_by).min(state.reconfirm_by);
        let categories: Vec<String> = g.categories.iter().map(|c| words(c.name())).collect();
        let mut line = format!("{}: {} until {}", words(&g.purpose.to_string()), categories.join(", "), date(until));
        if g.categories.contains(DataCategory::Location) && g.location != LocationPrecision::None {
            any_location = true;
            let _ = write!(line, " (location to {} precision)", words(&g.location.to_string()).to_lowercase());
        }
        lines.push(line);
    }
    if lines.is_empty() {
        lines.push("essential operation only: nothing else may be collected".into());
    }
    if !any_location {
        lines.push("no location".into());
    }
    for c in &state.contact.grants {
        let channels: Vec<String> = c.channels.iter().map(|ch| words(ch.name())).collect();
        lines.push(format!("may contact for {} via {}", words(&c.purpose.to_string()), channels.join(", ")));
    }
    lines.push(format!("decided {}, to be re-confirmed by {}", date(state.issued_at), date(state.reconfirm_by)));
    lines
}

/// `usage-counters` → `usage counters`.
fn words(name: &str) -> String {
    name.replace('-', " ")
}

/// A bar chart as inline SVG: one bar per value, labelled at both ends.
pub(crate) fn bars(values: &[(String, u64, u64)], title: &str) -> String {
    // (label, green, red) per bar, stacked.
    let w = 640u64;
    let h = 160u64;
    let n = u64::try_from(values.len()).unwrap_or(1).max(1);
    let max = values.iter().map(|(_, a, b)| a + b).max().unwrap_or(0).max(1);
    let bw = (w / n).max(2);
    let mut o = format!(
        "<svg role=\"img\" aria-label=\"{}\" width=\"{w}\" height=\"{}\" viewBox=\"0 0 {w} {}\" xmlns=\"http://www.w3.org/2000/svg\">",
        esc(title),
        h + 20,
        h + 20
    );
    let _ = write!(o, "<rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{h}\" fill=\"#f6f6f6\"/>");
    for (i, (label, green, red)) in values.iter().enumerate() {
        let x = u64::try_from(i).unwrap_or(0) * bw;
        let gh = green * h / max;
        let rh = red * h / max;
        let _ = write!(
            o,
            "<rect x=\"{x}\" y=\"{}\" width=\"{}\" height=\"{gh}\" fill=\"#3a7\"><title>{}: {green}</title></rect>",
            h - gh,
            bw.saturating_sub(1),
            esc(label)
        );
        if rh > 0 {
            let _ = write!(
                o,
                "<rect x=\"{x}\" y=\"{}\" width=\"{}\" height=\"{rh}\" fill=\"#c33\"><title>{}: {red} refused</title></rect>",
                h - gh - rh,
                bw.saturating_sub(1),
                esc(label)
            );
        }
    }
    if let (Some(first), Some(last)) = (values.first(), values.last()) {
        let _ = write!(
            o,
            "<text x=\"0\" y=\"{}\" font-size=\"11\">{}</text><text x=\"{w}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{}</text>",
            h + 14,
            esc(&first.0),
            h + 14,
            esc(&last.0)
        );
    }
    let _ = write!(o, "<text x=\"4\" y=\"12\" font-size=\"11\">max {max}</text></svg>");
    o
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::consent::{CategorySet, Grant, Purpose};

    #[test]
    fn dates_and_escaping() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(date(1_803_859_200), "2027-03-01");
        assert_eq!(esc("<a href='x'>&</a>"), "&lt;a href=&#39;x&#39;&gt;&amp;&lt;/a&gt;");
    }

    #[test]
    fn consent_reads_as_words() {
        let mut s = ConsentState::essential_only(3, 1_767_225_600, [0; 32]);
        s.reconfirm_by = 1_803_859_200;
        assert_eq!(consent_words(&s)[0], "essential operation only: nothing else may be collected");
        s.set_grant(Grant {
            purpose: Purpose::USAGE_ANALYTICS,
            categories: CategorySet::EMPTY.with(DataCategory::UsageCounters),
            location: LocationPrecision::None,
            expires_at: None,
        })
        .unwrap();
        let words = consent_words(&s);
        assert!(words.iter().any(|l| l.contains("until 2027-03-01")), "{words:?}");
        assert!(words.iter().any(|l| l == "no location"), "{words:?}");
    }

    #[test]
    fn charts_are_svg_with_one_bar_per_value() {
        let svg = bars(&[("a".into(), 3, 1), ("b".into(), 0, 0)], "t");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("fill=\"#3a7\"").count(), 2);
        assert_eq!(svg.matches("fill=\"#c33\"").count(), 1);
    }
}
