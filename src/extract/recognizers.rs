//! Deterministic PHI recognizers, fused with the PHI student (`extract.phi_recognizers`).
//!
//! A 1.5B teacher, and a student distilled from it, miss formatted identifiers a pattern finds
//! every time: e-mail addresses, URLs, IP addresses, phone numbers, dates, ages, postcodes, and
//! identifiers with a checksum (credit card by Luhn, IBAN by ISO 7064 mod 97, the Spanish DNI/NIE
//! letter) or a fixed format (US SSN). Each recognizer is a regular expression, optionally
//! narrowed to a capture group named `span` (the age's number, not "years old") and checked by a
//! validator. English and Spanish wordings (MEDDOCAN is Spanish clinical text).
//!
//! [`fuse`] merges their spans with the student's: where spans overlap the longer one is kept,
//! and every row records which recognizers (`student` or a name from [`NAMES`]) found it.

use std::sync::LazyLock;

use regex::Regex;

use crate::text::CharIndex;
use crate::vocab::PhiType;

/// A span some recognizer found, in chars of the text it ran on.
#[derive(Debug, Clone, PartialEq)]
pub struct Recognized {
    pub start: usize,
    pub end: usize,
    pub phi_type: PhiType,
    /// The recognizers that found (part of) it, sorted: `student` and/or names from [`NAMES`].
    pub found_by: Vec<&'static str>,
    /// The student's score where it found the span, 1 for a span only patterns found.
    pub score: f32,
}

/// What the student is called in `found_by`.
pub const STUDENT: &str = "student";

/// One recognizer: a pattern, the PHI type it finds and an optional check of the match.
struct Recognizer {
    name: &'static str,
    phi_type: PhiType,
    pattern: Regex,
    valid: fn(&str) -> bool,
}

const MONTHS_EN: &str = "January|February|March|April|May|June|July|August|September|October|November|December|\
                         Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec";
const MONTHS_ES: &str =
    "enero|febrero|marzo|abril|mayo|junio|julio|agosto|septiembre|setiembre|octubre|noviembre|diciembre";

/// The recognizers, in priority order (a checksum beats a format when two claim the same text).
static RECOGNIZERS: LazyLock<Vec<Recognizer>> = LazyLock::new(|| {
    let any = |_: &str| true;
    let r = |name, phi_type, pattern: &str, valid: fn(&str) -> bool| Recognizer {
        name,
        phi_type,
        pattern: Regex::new(pattern).unwrap_or_else(|e| panic!("recognizer {name}: {e}")),
        valid,
    };
    vec![
        r("email", PhiType::Contact, r"(?i)\b[a-z0-9][a-z0-9._%+-]*@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}\b", any),
        r("url", PhiType::Contact, r#"(?i)\b(?:https?://|www\.)[^\s<>"']*[^\s<>"'.,;:!?)\]]"#, any),
        r("ip_address", PhiType::Contact, r"\b(?:\d{1,3}\.){3}\d{1,3}\b", valid_ipv4),
        r("credit_card", PhiType::Id, r"\b\d(?:[ -]?\d){12,18}\b", luhn),
        r("iban", PhiType::Id, r"(?i)\b[a-z]{2}\d{2}(?: ?[a-z0-9]){11,30}\b", iban),
        r("us_ssn", PhiType::Id, r"\b\d{3}-\d{2}-\d{4}\b", us_ssn),
        r("es_dni_nie", PhiType::Id, r"\b[XYZxyz]?-?\d{7,8}-?[A-Za-z]\b", dni_nie),
        // International (+ or 00 and a country code), North American and Spanish numbers; any
        // other run of 7-15 digits only after a phone word.
        r(
            "phone",
            PhiType::Contact,
            r"(?x)
              (?:\+|\b00)\d{1,3}[\s.-]?(?:\(\d{1,4}\)[\s.-]?)?\d{1,4}(?:[\s.-]?\d{2,4}){1,4}\b
            | (?:\(\d{3}\)\s?|\b\d{3}[.-])\d{3}[.-]\d{4}\b
            | \b[6789]\d{2}(?:\s?\d{3}\s?\d{3}|\s\d{2}\s\d{2}\s\d{2})\b
            | \b(?i:tel[eé]fono|tel\.|tlf\.?|m[oó]vil|fax|phone|call|cell)[:\s]*(?-i:(?P<span>\+?\d(?:[\s.-]?\d){6,14}))\b",
            phone_digits,
        ),
        r(
            "date",
            PhiType::Date,
            &format!(
                r"(?x)
                  \b\d{{4}}-\d{{2}}-\d{{2}}\b
                | \b\d{{1,2}}[/.-]\d{{1,2}}[/.-](?:\d{{4}}|\d{{2}})\b
                | \b(?:\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?)?(?:{MONTHS_EN})\.?(?:\s+\d{{1,2}}(?:st|nd|rd|th)?,?)?\s+\d{{4}}\b
                | \b\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?(?:{MONTHS_EN})\b
                | (?i:\b(?:\d{{1,2}}\s+de\s+)?(?:{MONTHS_ES})(?:\s+(?:de(?:l)?\s+)?\d{{4}})\b)
                | (?i:\b\d{{1,2}}\s+de\s+(?:{MONTHS_ES})\b)"
            ),
            valid_date,
        ),
        r(
            "age",
            PhiType::Age,
            r"(?x)
              \b(?P<span>\d{1,3})[-\s](?:(?:years?|yrs?)[-\s]old|y/?o)\b
            | (?i:\baged?\s+)(?P<span2>\d{1,3})\b
            | (?i:\b(?:de|con|edad:?)\s+)(?P<span3>\d{1,3}\s+(?i:años|meses)(?:\s+de\s+edad)?)\b",
            any,
        ),
        // A postcode only beside a postcode word, after a US state or before a place name: a bare
        // 5-digit number is anything. Ages and Spanish ages ("de 53 años") need their wording:
        // "for 5 years" is a duration.
        r(
            "postcode",
            PhiType::Location,
            r"(?x)
              (?i:\bc\.?\s?p\.?|código\s+postal|postcode|zip(?:\s+code)?)[:\s]*(?P<span>\d{5})\b
            | \b[A-Z]{2},?\s(?P<span2>\d{5}(?:-\d{4})?)\b
            | \b(?P<span3>[0-5]\d{4})\s+\p{Lu}\p{Ll}",
            any,
        ),
    ]
});

/// The capture groups that narrow a match to its PHI (one per alternative: names are unique).
const SPAN_GROUPS: [&str; 3] = ["span", "span2", "span3"];

/// Every recognizer's name, in priority order.
pub static NAMES: LazyLock<Vec<&'static str>> = LazyLock::new(|| RECOGNIZERS.iter().map(|r| r.name).collect());

/// Every recognizer's name, owned: `extract.phi_recognizers`' default and what the SQL
/// functions and the `phi_rules` evaluation run.
pub fn all() -> Vec<String> {
    NAMES.iter().map(|n| n.to_string()).collect()
}

/// Check `names` (from `extract.phi_recognizers`): each must be a recognizer.
pub fn validate(names: &[String]) -> Result<(), String> {
    match names.iter().find(|n| !NAMES.contains(&n.as_str())) {
        Some(bad) => Err(format!("unknown PHI recognizer {bad:?} (known: {})", NAMES.join(", "))),
        None => Ok(()),
    }
}

/// The spans the recognizers in `enabled` find in `text` (char offsets), without overlaps:
/// where two overlap, the earlier recognizer in [`NAMES`] wins.
pub fn recognize(text: &str, enabled: &[String]) -> Vec<Recognized> {
    let index = CharIndex::new(text);
    let mut found: Vec<Recognized> = Vec::new();
    for r in RECOGNIZERS.iter().filter(|r| enabled.iter().any(|e| e == r.name)) {
        for caps in r.pattern.captures_iter(text) {
            let m = SPAN_GROUPS.iter().find_map(|g| caps.name(g)).unwrap_or_else(|| caps.get(0).expect("a match"));
            if !(r.valid)(m.as_str()) {
                continue;
            }
            let (start, end) = (index.char(m.start()).expect("match start"), index.char(m.end()).expect("match end"));
            if found.iter().any(|f| f.start < end && start < f.end) {
                continue;
            }
            found.push(Recognized { start, end, phi_type: r.phi_type, found_by: vec![r.name], score: 1.0 });
        }
    }
    found.sort_by_key(|f| (f.start, f.end));
    found
}

/// The union of the student's spans and the recognizers': overlapping spans become one, the
/// longer (the student's on a tie) with its type and score, found by all of them.
pub fn fuse(student: Vec<Recognized>, rules: Vec<Recognized>) -> Vec<Recognized> {
    let mut all: Vec<Recognized> = student.into_iter().chain(rules).collect();
    // Longest first (student before rules on a tie: the stable sort keeps input order).
    all.sort_by_key(|f| std::cmp::Reverse(f.end - f.start));
    let mut kept: Vec<Recognized> = Vec::new();
    for f in all {
        match kept.iter_mut().find(|k| k.start < f.end && f.start < k.end) {
            Some(k) => {
                if f.found_by_student() {
                    k.score = f.score;
                }
                k.found_by.extend(f.found_by);
                k.found_by.sort_unstable();
                k.found_by.dedup();
            }
            None => kept.push(f),
        }
    }
    kept.sort_by_key(|f| (f.start, f.end));
    kept
}

impl Recognized {
    fn found_by_student(&self) -> bool {
        self.found_by.contains(&STUDENT)
    }
}

fn digits(s: &str) -> Vec<u32> {
    s.chars().filter_map(|c| c.to_digit(10)).collect()
}

fn valid_ipv4(s: &str) -> bool {
    s.split('.').all(|octet| octet.parse::<u16>().is_ok_and(|n| n <= 255))
}

/// The Luhn checksum of a 13-19 digit card number.
fn luhn(s: &str) -> bool {
    let d = digits(s);
    if !(13..=19).contains(&d.len()) || d.iter().all(|&x| x == d[0]) {
        return false;
    }
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| if i % 2 == 1 { if x * 2 > 9 { x * 2 - 9 } else { x * 2 } } else { x })
        .sum();
    sum % 10 == 0
}

/// ISO 13616: move the country and check digits to the end, letters to numbers, mod 97 = 1.
fn iban(s: &str) -> bool {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_uppercase();
    if !(15..=34).contains(&s.len()) || !s[2..4].chars().all(|c| c.is_ascii_digit()) {
        return false;
    }
    let rearranged = s[4..].chars().chain(s[..4].chars());
    let mut remainder = 0u64;
    for c in rearranged {
        let value = match c.to_digit(36) {
            Some(v) => v as u64,
            None => return false,
        };
        remainder = if value < 10 { (remainder * 10 + value) % 97 } else { (remainder * 100 + value) % 97 };
    }
    remainder == 1
}

/// Area 000, 666 and 9xx, group 00 and serial 0000 are never issued.
fn us_ssn(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let (area, group, serial) = (parts[0], parts[1], parts[2]);
    area != "000" && area != "666" && !area.starts_with('9') && group != "00" && serial != "0000"
}

/// The DNI's letter is its number mod 23 in a fixed table; a NIE's leading X/Y/Z counts as 0/1/2.
fn dni_nie(s: &str) -> bool {
    let s: String = s.chars().filter(|c| *c != '-').collect::<String>().to_ascii_uppercase();
    let (number, letter) = s.split_at(s.len() - 1);
    let number = match number.chars().next() {
        Some(c @ ('X' | 'Y' | 'Z')) if number.len() == 8 => format!("{}{}", (c as u8 - b'X'), &number[1..]),
        Some(c) if c.is_ascii_digit() && number.len() == 8 => number.to_string(),
        _ => return false,
    };
    let Ok(n) = number.parse::<usize>() else { return false };
    letter.chars().next() == "TRWAGMYFPDXBNJZSQVHLCKE".chars().nth(n % 23)
}

fn phone_digits(s: &str) -> bool {
    (7..=15).contains(&digits(s).len())
}

/// Numeric dates with a day and a month in range (either order); worded ones pass.
fn valid_date(s: &str) -> bool {
    let parts: Vec<&str> = s.split(['/', '.', '-']).collect();
    if parts.len() != 3 || !parts.iter().all(|p| p.chars().all(|c| c.is_ascii_digit())) {
        return true;
    }
    let n: Vec<u32> = parts.iter().map(|p| p.parse().unwrap_or(0)).collect();
    let (day_month, year_first) = if parts[0].len() == 4 { ((n[2], n[1]), true) } else { ((n[0], n[1]), false) };
    let ok = |d: u32, m: u32| (1..=31).contains(&d) && (1..=12).contains(&m);
    ok(day_month.0, day_month.1) || (!year_first && ok(n[1], n[0]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (recognizer, matched text) for every span found in `text`.
    fn found(text: &str) -> Vec<(&'static str, String)> {
        recognize(text, &all())
            .into_iter()
            .map(|r| (r.found_by[0], crate::text::char_slice(text, r.start, r.end).unwrap().to_string()))
            .collect()
    }

    #[test]
    fn contacts_and_network_addresses() {
        assert_eq!(
            found("Escriba a eromeroselas@yahoo.es o visite https://www.InvestmentInstructor.be/ (IP 41.176.181.243)."),
            [
                ("email", "eromeroselas@yahoo.es".to_string()),
                ("url", "https://www.InvestmentInstructor.be/".to_string()),
                ("ip_address", "41.176.181.243".to_string())
            ]
        );
        assert!(found("version 1.2.3.400").is_empty(), "an octet over 255 is no IP");
    }

    #[test]
    fn identifiers_need_their_checksum() {
        assert_eq!(found("Card 4111 1111 1111 1111 on file"), [("credit_card", "4111 1111 1111 1111".to_string())]);
        assert!(found("Card 4111 1111 1111 1112 on file").iter().all(|(n, _)| *n != "credit_card"));
        assert_eq!(found("IBAN GB82 WEST 1234 5698 7654 32."), [("iban", "GB82 WEST 1234 5698 7654 32".to_string())]);
        assert!(found("code GB83 WEST 1234 5698 7654 32").iter().all(|(n, _)| *n != "iban"));
        assert_eq!(found("SSN 494-33-0748"), [("us_ssn", "494-33-0748".to_string())]);
        assert!(found("SSN 666-33-0748").is_empty());
        // 12345678 mod 23 = 14 -> Z; X1234567 -> 01234567 mod 23 = 19 -> L.
        assert_eq!(
            found("DNI 12345678Z, NIE X1234567L"),
            [("es_dni_nie", "12345678Z".to_string()), ("es_dni_nie", "X1234567L".to_string())]
        );
        assert!(found("DNI 12345678A").is_empty());
    }

    #[test]
    fn phones_by_format_or_after_a_phone_word() {
        assert_eq!(found("Tel: +34 633 349 565"), [("phone", "+34 633 349 565".to_string())]);
        assert_eq!(
            found("llame al 987 23 73 92 o 656352534"),
            [("phone", "987 23 73 92".to_string()), ("phone", "656352534".to_string())]
        );
        assert_eq!(found("call (415) 555-0134"), [("phone", "(415) 555-0134".to_string())]);
        assert_eq!(found("phone 467 3395"), [("phone", "467 3395".to_string())]);
        assert!(found("patient 467 3395 seen").is_empty(), "bare digits are not a phone");
    }

    #[test]
    fn dates_ages_and_postcodes() {
        assert_eq!(
            found("ingresó el 17/06/2016 y en enero de 2004"),
            [("date", "17/06/2016".to_string()), ("date", "enero de 2004".to_string())]
        );
        assert_eq!(
            found("on March 3, 2010 and 2010-03-04"),
            [("date", "March 3, 2010".to_string()), ("date", "2010-03-04".to_string())]
        );
        assert!(found("you may 2 see 45/13/2020").is_empty(), "no month, no day 45");
        assert_eq!(found("A 46-year-old man"), [("age", "46".to_string())]);
        assert_eq!(found("Varón de 53 años"), [("age", "53 años".to_string())]);
        assert!(found("treated for 5 years, desde hace 2 años").is_empty(), "durations are no ages");
        assert_eq!(
            found("C.P. 28035 Madrid; Austin, TX 78701; Calle Mayor 3, 46010 Valencia"),
            [("postcode", "28035".to_string()), ("postcode", "78701".to_string()), ("postcode", "46010".to_string())]
        );
    }

    #[test]
    fn fusion_keeps_the_longer_span_and_every_finder() {
        let span = |start, end, by: &'static str, score| Recognized {
            start,
            end,
            phi_type: if by == STUDENT { PhiType::Name } else { PhiType::Contact },
            found_by: vec![by],
            score,
        };
        let student = vec![span(0, 4, STUDENT, 0.9), span(10, 20, STUDENT, 0.8)];
        let rules = vec![span(2, 8, "phone", 1.0), span(12, 15, "email", 1.0), span(30, 35, "email", 1.0)];
        let fused = fuse(student, rules);
        let view: Vec<_> = fused.iter().map(|f| (f.start, f.end, f.found_by.clone(), f.score)).collect();
        assert_eq!(
            view,
            [(2, 8, vec!["phone", STUDENT], 0.9), (10, 20, vec!["email", STUDENT], 0.8), (30, 35, vec!["email"], 1.0)]
        );
        assert_eq!(fused[0].phi_type, PhiType::Contact, "the longer span's type");
    }

    #[test]
    fn unknown_recognizer_names_are_refused() {
        assert!(validate(&["email".into(), "phone".into()]).is_ok());
        let err = validate(&["emial".into()]).unwrap_err();
        assert!(err.contains("\"emial\"") && err.contains("email"), "{err}");
    }
}
