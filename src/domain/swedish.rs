//! Swedish identifiers checked before anything reaches Billecta: organisation numbers, bankgiro
//! numbers, postcodes, and invoice numbers. Each parses the spellings people use and keeps one
//! normalised form, so that comparisons (with what Billecta shows, between retries) are exact.

use super::validate::FieldViolation;
use std::fmt;

/// The Luhn (mod 10) check digit rule that organisation numbers and bankgiro numbers follow.
fn luhn_valid(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(index, digit)| {
            let value = u32::from(*digit);
            if index % 2 == 1 {
                let doubled = value * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                value
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// The digit that, appended to `digits`, makes them pass the Luhn rule: how organisation and
/// bankgiro numbers get their last digit.
pub fn luhn_check_digit(digits: &[u8]) -> u8 {
    (0..10)
        .find(|candidate| {
            let mut all = digits.to_vec();
            all.push(*candidate);
            luhn_valid(&all)
        })
        .expect("one of ten digits completes any Luhn sum")
}

/// The digits of `text` when it holds only digits and the separators in `separators`.
fn digits_of(text: &str, separators: &[char]) -> Option<Vec<u8>> {
    let mut digits = Vec::with_capacity(text.len());
    for character in text.trim().chars() {
        match character {
            '0'..='9' => digits.push(character as u8 - b'0'),
            other if separators.contains(&other) => {}
            _ => return None,
        }
    }
    Some(digits)
}

/// Whether `yymmdd` (six digits) is a date of birth as a personal identity number writes it: a
/// real month and day, or the day plus 60 (a coordination number). Without the `century` (19 or 20)
/// the year is ambiguous, so 29 February passes in every year divisible by four: 1900 was not a
/// leap year, but 2000 was.
fn is_birth_date(yymmdd: &[u8], century: Option<u8>) -> bool {
    let pair = |at: usize| u32::from(10 * yymmdd[at] + yymmdd[at + 1]);
    let (year, month, day) = (pair(0), pair(2), pair(4));
    let day = if day > 60 { day - 60 } else { day };
    let leap = match century {
        Some(century) => {
            let year = u32::from(century) * 100 + year;
            year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
        }
        None => year.is_multiple_of(4),
    };
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days_in_month).contains(&day)
}

fn text_of(digits: &[u8]) -> String {
    digits
        .iter()
        .map(|digit| char::from(b'0' + digit))
        .collect()
}

/// A Swedish organisation number, normalised to `NNNNNN-NNNN`.
///
/// A number the check digit allows may still belong to nobody (`000000-0000` does): the ten digits
/// must also be one of the two kinds Billecta's creditors have. An organisation's number has 20 or
/// more in digits 3–4, where a person's has the month, so the two never collide. A sole trader's
/// is the owner's personal identity number, whose digits 1–6 are the date of birth, YYMMDD; a
/// coordination number (samordningsnummer, given to people not registered in Sweden, who may run a
/// business here too) is accepted as well: its day is the day of birth plus 60.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OrganisationNumber(String);

impl OrganisationNumber {
    /// Accepts `NNNNNN-NNNN`, ten digits, and the twelve-digit forms with a century or the `16`
    /// prefix (`16NNNNNN-NNNN`, `19…`, `20…` for sole traders), and checks the Luhn check digit and
    /// that the number is an organisation's or a person's (see the type).
    pub fn parse(field: &str, text: &str) -> Result<Self, FieldViolation> {
        const FORM: &str = "must be a Swedish organisation number, NNNNNN-NNNN (ten digits with a valid check digit)";
        if text.trim().is_empty() {
            return Err(FieldViolation::new(field, format!("is required; {FORM}")));
        }
        let digits =
            digits_of(text, &['-', '+', ' ']).ok_or_else(|| FieldViolation::new(field, FORM))?;
        let (prefix, ten) = match digits.len() {
            10 => (None, &digits[..]),
            12 if matches!(&digits[..2], [1, 6] | [1, 9] | [2, 0]) => {
                (Some(10 * digits[0] + digits[1]), &digits[2..])
            }
            _ => return Err(FieldViolation::new(field, FORM)),
        };
        if !luhn_valid(ten) {
            return Err(FieldViolation::new(
                field,
                "is not a valid organisation number: the check digit does not match",
            ));
        }
        let organisation = 10 * ten[2] + ten[3] >= 20;
        if !organisation {
            if prefix == Some(16) {
                return Err(FieldViolation::new(
                    field,
                    "is not a valid organisation number: the prefix 16 is for an organisation's \
                     number, which has 20 or more in digits 3-4",
                ));
            }
            // 19 or 20 before a person's number is the century of the birth date.
            if !is_birth_date(&ten[..6], prefix) {
                return Err(FieldViolation::new(
                    field,
                    "is not a valid organisation number: an organisation's has 20 or more in \
                     digits 3-4, and a sole trader's (the owner's personal identity number) has \
                     the date of birth, YYMMDD, in digits 1-6",
                ));
            }
        }
        let mut text = text_of(ten);
        text.insert(6, '-');
        Ok(Self(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for OrganisationNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A bankgiro number, normalised to `NNN-NNNN` or `NNNN-NNNN`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Bankgiro(String);

impl Bankgiro {
    /// Accepts seven or eight digits, with or without the dash, and checks the Luhn check digit.
    pub fn parse(field: &str, text: &str) -> Result<Self, FieldViolation> {
        const FORM: &str = "must be a bankgiro number, NNN-NNNN or NNNN-NNNN (7 or 8 digits with a valid check digit)";
        if text.trim().is_empty() {
            return Err(FieldViolation::new(field, format!("is required; {FORM}")));
        }
        let digits =
            digits_of(text, &['-', ' ']).ok_or_else(|| FieldViolation::new(field, FORM))?;
        if !(7..=8).contains(&digits.len()) {
            return Err(FieldViolation::new(field, FORM));
        }
        if !luhn_valid(&digits) {
            return Err(FieldViolation::new(
                field,
                "is not a valid bankgiro number: the check digit does not match",
            ));
        }
        // Zeros pass the check digit rule, but no account has them.
        if digits.iter().all(|digit| *digit == 0) {
            return Err(FieldViolation::new(
                field,
                "is not a valid bankgiro number: it is all zeros",
            ));
        }
        let text = text_of(&digits);
        let split = text.len() - 4;
        Ok(Self(format!("{}-{}", &text[..split], &text[split..])))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether Billecta's spelling of a bankgiro (with or without the dash) is this one.
    pub fn matches(&self, billecta: &str) -> bool {
        digits_of(billecta, &['-', ' '])
            .is_some_and(|digits| text_of(&digits) == self.0.replace('-', ""))
    }
}

impl fmt::Display for Bankgiro {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A Swedish postcode, normalised to `NNN NN`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PostalCode(String);

impl PostalCode {
    pub fn parse(field: &str, text: &str) -> Result<Self, FieldViolation> {
        const FORM: &str = "must be a Swedish postcode, NNN NN (five digits, not starting with 0)";
        if text.trim().is_empty() {
            return Err(FieldViolation::new(field, format!("is required; {FORM}")));
        }
        let digits = digits_of(text, &[' ']).ok_or_else(|| FieldViolation::new(field, FORM))?;
        if digits.len() != 5 || digits[0] == 0 {
            return Err(FieldViolation::new(field, FORM));
        }
        let text = text_of(&digits);
        Ok(Self(format!("{} {}", &text[..3], &text[3..])))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The number the next invoice gets: digits only, at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InvoiceNumber(u64);

impl InvoiceNumber {
    pub fn parse(field: &str, text: &str) -> Result<Self, FieldViolation> {
        const FORM: &str = "must be a whole number from 1 to 999999999999999999 (digits only)";
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(FieldViolation::new(field, format!("is required; {FORM}")));
        }
        if trimmed.len() > 18 || !trimmed.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(FieldViolation::new(field, FORM));
        }
        match trimmed.parse::<u64>() {
            Ok(number) if number >= 1 => Ok(Self(number)),
            _ => Err(FieldViolation::new(field, FORM)),
        }
    }

    /// Billecta's spelling (digits only) back as a number, if it is one.
    pub fn from_billecta(text: &str) -> Option<Self> {
        text.trim()
            .parse::<u64>()
            .ok()
            .filter(|n| *n >= 1)
            .map(Self)
    }

    pub fn value(self) -> u64 {
        self.0
    }
}

impl fmt::Display for InvoiceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An ISO 3166-1 alpha-2 country code, upper case; `SE` when none is given.
pub fn country_code(field: &str, text: &str) -> Result<String, FieldViolation> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Ok("SE".to_owned());
    }
    if trimmed.len() != 2 || !trimmed.bytes().all(|byte| byte.is_ascii_alphabetic()) {
        return Err(FieldViolation::new(
            field,
            "must be an ISO 3166-1 alpha-2 country code such as SE",
        ));
    }
    Ok(trimmed.to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn organisation_numbers_are_checked_and_normalised() {
        for spelling in [
            "556036-0793",
            "5560360793",
            "16556036-0793",
            "165560360793",
            " 556036-0793 ",
        ] {
            assert_eq!(
                OrganisationNumber::parse("org", spelling).unwrap().as_str(),
                "556036-0793",
                "{spelling}"
            );
        }
        assert_eq!(
            OrganisationNumber::parse("org", "19212000-0142")
                .unwrap()
                .as_str(),
            "212000-0142"
        );
        let wrong_check = OrganisationNumber::parse("org", "556036-0794").unwrap_err();
        assert_eq!(wrong_check.field, "org");
        assert!(wrong_check.description.contains("check digit"));
        for bad in [
            "",
            "55603-0793",
            "556036-07931",
            "ABC036-0793",
            "175560360793",
        ] {
            assert!(OrganisationNumber::parse("org", bad).is_err(), "{bad:?}");
        }
    }

    /// `nine` digits (separators allowed) completed with their check digit, as `NNNNNN-NNNN`.
    fn numbered(nine: &str) -> String {
        let digits = digits_of(nine, &['-']).unwrap();
        let mut text = text_of(&digits);
        text.push(char::from(b'0' + luhn_check_digit(&digits)));
        text.insert(6, '-');
        text
    }

    #[test]
    fn numbers_that_belong_to_nobody_are_refused() {
        for nobody in [
            "000000-0000".to_owned(),
            numbered("000000-000"),
            numbered("551936-079"),
            numbered("811318-987"),
            numbered("810132-987"),
            numbered("810100-987"),
            numbered("810431-987"),
            numbered("810160-987"),
            numbered("810192-987"),
            numbered("810229-987"),
        ] {
            assert!(luhn_valid(&digits_of(&nobody, &['-']).unwrap()));
            let refused = OrganisationNumber::parse("org", &nobody).unwrap_err();
            assert_eq!(refused.field, "org", "{nobody}");
            assert!(
                refused.description.contains("digits 3-4"),
                "{nobody}: {}",
                refused.description
            );
        }
    }

    #[test]
    fn a_sole_traders_personal_identity_number_is_accepted() {
        for person in [
            numbered("811218-987"),
            // A coordination number: the 18th, plus 60.
            numbered("811278-987"),
            numbered("810131-987"),
            numbered("810191-987"),
            numbered("040229-123"),
            // 2000 was a leap year: 29 February of a two-digit 00 may be a real birthday.
            numbered("000229-123"),
        ] {
            assert_eq!(
                OrganisationNumber::parse("org", &person).unwrap().as_str(),
                person
            );
        }
        let person = numbered("811218-987");
        assert_eq!(
            OrganisationNumber::parse("org", &format!("19{person}"))
                .unwrap()
                .as_str(),
            person
        );
        // With the century given, 29 February 1900 is known not to exist, and 2000's does.
        let leap_day = numbered("000229-123");
        assert!(OrganisationNumber::parse("org", &format!("19{leap_day}")).is_err());
        assert!(OrganisationNumber::parse("org", &format!("20{leap_day}")).is_ok());
        // The 16 prefix marks an organisation's number, never a person's.
        let refused = OrganisationNumber::parse("org", &format!("16{person}")).unwrap_err();
        assert!(refused.description.contains("prefix 16"), "{refused:?}");
    }

    #[test]
    fn bankgiros_are_checked_and_normalised() {
        assert_eq!(
            Bankgiro::parse("bg", "5050-1055").unwrap().as_str(),
            "5050-1055"
        );
        assert_eq!(
            Bankgiro::parse("bg", "50501055").unwrap().as_str(),
            "5050-1055"
        );
        assert_eq!(
            Bankgiro::parse("bg", "297-3675").unwrap().as_str(),
            "297-3675"
        );
        assert!(
            Bankgiro::parse("bg", "123-4567")
                .unwrap_err()
                .description
                .contains("check digit")
        );
        for bad in ["", "12-3456", "123456789", "5050_1055", "bg 5050-1055"] {
            assert!(Bankgiro::parse("bg", bad).is_err(), "{bad:?}");
        }
        for zeros in ["000-0000", "0000-0000", "0000000"] {
            let refused = Bankgiro::parse("bg", zeros).unwrap_err();
            assert_eq!(refused.field, "bg");
            assert!(refused.description.contains("zeros"), "{zeros}");
        }
        let bankgiro = Bankgiro::parse("bg", "5050-1055").unwrap();
        assert!(bankgiro.matches("50501055") && bankgiro.matches("5050-1055"));
        assert!(!bankgiro.matches("5402-9681"));
    }

    #[test]
    fn check_digits_complete_valid_numbers() {
        let digit = luhn_check_digit(&[5, 5, 6, 0, 3, 6, 0, 7, 9]);
        assert_eq!(digit, 3, "556036-0793 is a real organisation number");
        for prefix in [[5, 0, 5, 0, 1, 0, 5], [5, 4, 0, 2, 9, 6, 8]] {
            let mut digits = prefix.to_vec();
            digits.push(luhn_check_digit(&prefix));
            assert!(luhn_valid(&digits));
            digits[7] = (digits[7] + 1) % 10;
            assert!(!luhn_valid(&digits));
        }
    }

    #[test]
    fn postcodes_invoice_numbers_and_countries() {
        assert_eq!(
            PostalCode::parse("zip", "90326").unwrap().as_str(),
            "903 26"
        );
        assert_eq!(
            PostalCode::parse("zip", "903 26").unwrap().as_str(),
            "903 26"
        );
        for bad in ["", "9032", "09326", "903-26", "90326a"] {
            assert!(PostalCode::parse("zip", bad).is_err(), "{bad:?}");
        }
        assert_eq!(InvoiceNumber::parse("n", "1023").unwrap().value(), 1023);
        for bad in ["", "0", "-5", "12a", "1234567890123456789", "1 000"] {
            assert!(InvoiceNumber::parse("n", bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            InvoiceNumber::from_billecta("1023"),
            Some(InvoiceNumber(1023))
        );
        assert_eq!(InvoiceNumber::from_billecta("F-12"), None);
        assert_eq!(country_code("c", "").unwrap(), "SE");
        assert_eq!(country_code("c", "no").unwrap(), "NO");
        assert!(country_code("c", "SWE").is_err());
    }
}
