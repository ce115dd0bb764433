//! Billecta's date-times come in several spellings (`T` or space, fractional seconds or not, `+01:00`,
//! `+0100` or no offset at all). Without an offset the time is Stockholm's local time.

use time::macros::format_description;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, UtcOffset, Weekday};

/// Parses any spelling Billecta is known to use; `None` for anything else.
pub fn parse(text: &str) -> Option<OffsetDateTime> {
    let text = text.trim();
    // "2019-01-07 15:41:26+01:00" → "2019-01-07T15:41:26+01:00"
    let mut normalised = String::with_capacity(text.len() + 1);
    for (index, character) in text.chars().enumerate() {
        normalised.push(if index == 10 && character == ' ' {
            'T'
        } else {
            character
        });
    }
    // "+0200" → "+02:00"
    let bytes = normalised.as_bytes();
    if bytes.len() > 19 {
        // Billecta's text may hold anything: slice only on a character boundary.
        let tail_bytes = normalised
            .get(normalised.len() - 5..)
            .map(str::as_bytes)
            .unwrap_or_default();
        if tail_bytes.len() == 5
            && (tail_bytes[0] == b'+' || tail_bytes[0] == b'-')
            && tail_bytes[1..].iter().all(u8::is_ascii_digit)
        {
            let (head, offset) = normalised.split_at(normalised.len() - 5);
            normalised = format!("{head}{}:{}", &offset[..3], &offset[3..]);
        }
    }
    if let Ok(parsed) =
        OffsetDateTime::parse(&normalised, &time::format_description::well_known::Rfc3339)
    {
        return Some(parsed);
    }
    let local = PrimitiveDateTime::parse(
        &normalised,
        format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]"
        ),
    )
    .ok()?;
    Some(local.assume_offset(stockholm_offset(local)))
}

/// Formats a time the way the client sends it: RFC 3339 with an explicit offset.
pub fn format(value: OffsetDateTime) -> String {
    value
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// CET (+01:00), or CEST (+02:00) from the last Sunday of March 02:00 to the last Sunday of October
/// 03:00 local time, the rule Sweden has followed since 1996.
fn stockholm_offset(local: PrimitiveDateTime) -> UtcOffset {
    let year = local.year();
    let starts = last_sunday(year, Month::March).with_hms(2, 0, 0);
    let ends = last_sunday(year, Month::October).with_hms(3, 0, 0);
    let summer = match (starts, ends) {
        (Ok(starts), Ok(ends)) => local >= starts && local < ends,
        _ => false,
    };
    let hours = if summer { 2 } else { 1 };
    UtcOffset::from_hms(hours, 0, 0).unwrap_or(UtcOffset::UTC)
}

fn last_sunday(year: i32, month: Month) -> Date {
    let last_day = time::util::days_in_month(month, year);
    let mut date = Date::from_calendar_date(year, month, last_day).unwrap_or(Date::MIN);
    while date.weekday() != Weekday::Sunday {
        date = date.previous_day().unwrap_or(Date::MIN);
    }
    date
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn every_known_spelling_parses() {
        assert_eq!(
            parse("2019-01-07 15:41:26+01:00"),
            Some(datetime!(2019-01-07 15:41:26 +01:00))
        );
        assert_eq!(
            parse("2023-02-01T06:47:07+01:00"),
            Some(datetime!(2023-02-01 06:47:07 +01:00))
        );
        assert_eq!(
            parse("2021-06-26T20:59:01.864227+00:00"),
            Some(datetime!(2021-06-26 20:59:01.864227 UTC))
        );
        assert_eq!(
            parse("2017-10-19 00:00:00+0200"),
            Some(datetime!(2017-10-19 00:00:00 +02:00))
        );
        assert_eq!(
            parse("2024-05-01T10:00:00Z"),
            Some(datetime!(2024-05-01 10:00 UTC))
        );
        assert_eq!(parse("not a time"), None);
        assert_eq!(
            parse("2019-01-07T15:41:26ööö"),
            None,
            "no panic on odd text"
        );
    }

    #[test]
    fn without_an_offset_it_is_stockholm_time() {
        assert_eq!(
            parse("2019-05-30T00:00:00"),
            Some(datetime!(2019-05-30 00:00:00 +02:00))
        );
        assert_eq!(
            parse("2019-01-30T12:00:00"),
            Some(datetime!(2019-01-30 12:00:00 +01:00))
        );
        // Summer time in 2024 began on 31 March at 02:00 and ended on 27 October at 03:00.
        assert_eq!(
            parse("2024-03-31T01:59:59").map(|t| t.offset().whole_hours()),
            Some(1)
        );
        assert_eq!(
            parse("2024-03-31T03:00:00").map(|t| t.offset().whole_hours()),
            Some(2)
        );
        assert_eq!(
            parse("2024-10-27T03:00:00").map(|t| t.offset().whole_hours()),
            Some(1)
        );
        assert!(parse("0001-01-01T00:00:00").is_some());
    }
}
