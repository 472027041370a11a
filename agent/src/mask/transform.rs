//! What a rule does to a column's values. Every transform but `null`,
//! `value` and `password` derives its output from a keyed hash (BLAKE3 in
//! keyed mode) of the kind of value and the value itself: the same input
//! gives the same output in every table, column and run under one key, so
//! joins on masked values and keys into masked columns survive, and another
//! key gives other outputs. NULL stays NULL.

use super::key::MaskKey;

/// One column's transform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transform {
    /// The value as it is (classified as not personal).
    Keep,
    /// NULL (the column must allow it).
    Null,
    /// This fixed text.
    Value(String),
    /// Hex of the keyed hash, as long as the value or `length`.
    Hash {
        length: Option<usize>,
    },
    /// `user-<hex>@<domain>`: unique per input.
    Email {
        domain: String,
    },
    FirstName,
    LastName,
    /// First and last name.
    Name,
    /// Digits replaced, everything else (`+`, spaces, dashes) kept.
    Phone,
    /// Same length; letters stay letters of the same case, digits digits.
    Text,
    /// An integer in `[min, max]`.
    Int {
        min: i64,
        max: i64,
    },
    /// The number moved by up to `ppm` millionths of itself either way
    /// (`limit`: the column's integer range, set from the catalog).
    Noise {
        ppm: u32,
        limit: Option<i64>,
    },
    /// An address in 10.0.0.0/8 (IPv4) or fd00::/8 (IPv6).
    Ip,
    /// The operator's fixed password hash, for every row.
    Password(String),
    /// The date moved by up to `days` days either way (a time of day and
    /// zone that follow are kept).
    Date {
        days: u32,
    },
    /// In a JSON document, the values of these keys, wherever they are:
    /// strings scrambled as `text`, anything else made null.
    Json {
        keys: Vec<String>,
    },
    /// Every match of a pattern replaced (`$1` names a group); the rest of
    /// the value kept.
    Regex(Pattern),
}

/// A regular expression and its replacement.
#[derive(Clone, Debug)]
pub struct Pattern {
    pub re: regex::bytes::Regex,
    pub replacement: String,
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.re.as_str() == other.re.as_str() && self.replacement == other.replacement
    }
}

impl Eq for Pattern {}

/// The kinds of column a transform writes into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    Anything,
    Text,
    Integer,
    Address,
    Date,
    Json,
}

impl Transform {
    /// Its name in a rules file.
    pub fn name(&self) -> &'static str {
        match self {
            Transform::Keep => "keep",
            Transform::Null => "null",
            Transform::Value(_) => "value",
            Transform::Hash { .. } => "hash",
            Transform::Email { .. } => "email",
            Transform::FirstName => "first_name",
            Transform::LastName => "last_name",
            Transform::Name => "name",
            Transform::Phone => "phone",
            Transform::Text => "text",
            Transform::Int { .. } => "int",
            Transform::Noise { .. } => "noise",
            Transform::Ip => "ip",
            Transform::Password(_) => "password",
            Transform::Date { .. } => "date",
            Transform::Json { .. } => "json",
            Transform::Regex(_) => "regex",
        }
    }

    /// What kind of column its output fits.
    pub fn needs(&self) -> Needs {
        match self {
            // A fixed value is the operator's to fit (JSON for a jsonb).
            Transform::Keep | Transform::Null | Transform::Value(_) => Needs::Anything,
            Transform::Int { .. } | Transform::Noise { .. } => Needs::Integer,
            Transform::Ip => Needs::Address,
            Transform::Date { .. } => Needs::Date,
            Transform::Json { .. } => Needs::Json,
            _ => Needs::Text,
        }
    }

    /// The longest output for an input of `len` characters, if bounded.
    pub fn max_len(&self, len: Option<usize>) -> Option<usize> {
        match self {
            Transform::Keep | Transform::Phone | Transform::Text => len,
            Transform::Null | Transform::Int { .. } | Transform::Noise { .. } | Transform::Ip => {
                Some(0)
            }
            Transform::Date { .. } | Transform::Json { .. } | Transform::Regex(_) => None,
            Transform::Value(v) | Transform::Password(v) => Some(v.chars().count()),
            Transform::Hash { length } => length.or(len),
            Transform::Email { domain } => Some(EMAIL_LOCAL + 1 + domain.len()),
            Transform::FirstName | Transform::LastName => Some(NAME_MAX),
            Transform::Name => Some(2 * NAME_MAX + 1),
        }
    }

    /// The masked value of a non-NULL `v`; None is NULL.
    pub fn apply(&self, key: &MaskKey, v: &[u8]) -> Option<Vec<u8>> {
        let h = || key.hash(self.name(), v);
        let out = match self {
            Transform::Keep => return Some(v.to_vec()),
            Transform::Null => return None,
            Transform::Value(s) | Transform::Password(s) => s.clone(),
            Transform::Hash { length } => {
                let want = length.unwrap_or_else(|| {
                    std::str::from_utf8(v).map_or(v.len(), |s| s.chars().count())
                });
                let mut hex = hex::encode(key.stream("hash", v, want.div_ceil(2)));
                hex.truncate(want);
                hex
            }
            Transform::Email { domain } => {
                format!("user-{}@{domain}", &hex::encode(h())[..EMAIL_LOCAL - 5])
            }
            Transform::FirstName => pick(FIRST, &h()).to_string(),
            Transform::LastName => pick(LAST, &h()).to_string(),
            Transform::Name => {
                let h = h();
                format!("{} {}", pick(FIRST, &h), pick(LAST, &h[8..]))
            }
            Transform::Date { days } => return Some(shift_date(key, v, *days)),
            Transform::Noise { ppm, limit } => {
                return Some(super::noise::noisy(key, v, *ppm, *limit));
            }
            Transform::Json { keys } => return Some(mask_json(key, v, keys)),
            Transform::Regex(p) => {
                return Some(p.re.replace_all(v, p.replacement.as_bytes()).into_owned());
            }
            Transform::Phone => return Some(scramble(key, "phone", v, false)),
            Transform::Text => return Some(scramble(key, "text", v, true)),
            Transform::Int { min, max } => {
                let h = h();
                let n = u64::from_le_bytes(h[..8].try_into().unwrap_or_default());
                let span = (*max as i128 - *min as i128 + 1) as u128;
                let v = *min as i128 + (n as u128 % span) as i128;
                v.to_string()
            }
            Transform::Ip => {
                let h = h();
                match v.contains(&b':') {
                    false => format!("10.{}.{}.{}", h[0], h[1], h[2].max(1)),
                    true => {
                        let g: Vec<String> = h[..14]
                            .chunks(2)
                            .map(|c| format!("{:x}", u16::from_be_bytes([c[0], c[1]])))
                            .collect();
                        format!("fd00:{}", g.join(":"))
                    }
                }
            }
        };
        Some(out.into_bytes())
    }
}

/// `user-` and 16 hex digits: 64 bits, so a table of millions of addresses
/// stays unique (a unique index on it builds).
const EMAIL_LOCAL: usize = 21;
const NAME_MAX: usize = 11;

/// Letters for letters (same case), digits for digits; with `letters`
/// false only digits change. Multi-byte characters are kept as they are.
fn scramble(key: &MaskKey, kind: &str, v: &[u8], letters: bool) -> Vec<u8> {
    // Nothing to replace (blank padding, punctuation): the value is its own
    // output, and no keyed bytes need computing.
    if !any_replaced(v, letters) {
        return v.to_vec();
    }
    // The keyed bytes become the output where they stand: one buffer, and
    // a loop without branches the compiler can vectorize.
    let mut out = key.stream(kind, v, v.len());
    for (o, &c) in out.iter_mut().zip(v) {
        *o = scrambled(c, *o, letters);
    }
    out
}

/// Byte `c` of a value with keyed byte `r`: a digit for a digit, a letter
/// of the same case for a letter (when `letters`), anything else as is.
#[inline(always)]
fn scrambled(c: u8, r: u8, letters: bool) -> u8 {
    let digit = c.wrapping_sub(b'0') < 10;
    let lower = letters & (c.wrapping_sub(b'a') < 26);
    let upper = letters & (c.wrapping_sub(b'A') < 26);
    let letter = r % 26;
    let mut out = c;
    out = if upper { b'A' + letter } else { out };
    out = if lower { b'a' + letter } else { out };
    if digit { b'0' + r % 10 } else { out }
}

/// Whether `v` holds a byte [`scramble`] replaces: looked at 32 bytes at
/// a time, every byte of a block without stopping, so the test is a few
/// vector instructions per block.
fn any_replaced(v: &[u8], letters: bool) -> bool {
    let replaced =
        |c: u8| (c.wrapping_sub(b'0') < 10) | (letters & ((c | 0x20).wrapping_sub(b'a') < 26));
    let mut blocks = v.chunks_exact(32);
    for block in blocks.by_ref() {
        if block.iter().fold(false, |any, &c| any | replaced(c)) {
            return true;
        }
    }
    blocks.remainder().iter().any(|&c| replaced(c))
}

/// `YYYY-MM-DD…` with the date moved by a keyed offset in `[-days, days]`;
/// a value that does not start with such a date (`infinity`) is kept.
fn shift_date(key: &MaskKey, v: &[u8], days: u32) -> Vec<u8> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let Some(head) = v.get(..10).and_then(|h| std::str::from_utf8(h).ok()) else {
        return v.to_vec();
    };
    let Ok(date) = time::Date::parse(head, &format) else {
        return v.to_vec();
    };
    // The day alone decides the offset, so a date moves the same way in
    // every column and table (a timestamp's time of day does not count).
    let h = key.hash("date", head.as_bytes());
    let span = 2 * days as i64 + 1;
    let offset = (u64::from_le_bytes(h[..8].try_into().unwrap_or_default()) % span as u64) as i64
        - days as i64;
    let moved = date
        .checked_add(time::Duration::days(offset))
        .and_then(|d| d.format(&format).ok());
    match moved {
        Some(m) if m.len() == 10 => {
            let mut out = m.into_bytes();
            out.extend_from_slice(&v[10..]);
            out
        }
        _ => v.to_vec(),
    }
}

/// A JSON document with the named keys' values masked; one that does not
/// parse is replaced by `{}` (never passed on as it was).
fn mask_json(key: &MaskKey, v: &[u8], keys: &[String]) -> Vec<u8> {
    fn walk(key: &MaskKey, v: &mut serde_json::Value, keys: &[String]) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, val) in map.iter_mut() {
                    if keys.iter().any(|n| n == k) {
                        *val = match val {
                            serde_json::Value::String(s) => serde_json::Value::String(
                                String::from_utf8_lossy(&scramble(key, "text", s.as_bytes(), true))
                                    .into_owned(),
                            ),
                            _ => serde_json::Value::Null,
                        };
                    } else {
                        walk(key, val, keys);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|i| walk(key, i, keys)),
            _ => {}
        }
    }
    match serde_json::from_slice::<serde_json::Value>(v) {
        Ok(mut doc) => {
            walk(key, &mut doc, keys);
            serde_json::to_vec(&doc).unwrap_or_else(|_| b"{}".to_vec())
        }
        Err(_) => b"{}".to_vec(),
    }
}

fn pick<'a>(list: &[&'a str], h: &[u8]) -> &'a str {
    let n = u16::from_le_bytes([h[0], h[1]]) as usize;
    list[n % list.len()]
}

const FIRST: &[&str] = &[
    "Ada", "Alan", "Alice", "Amara", "Anton", "Ben", "Bianca", "Carlos", "Chen", "Clara", "Dara",
    "David", "Elena", "Emil", "Farah", "Felix", "Grace", "Hana", "Hugo", "Ines", "Ivan", "Jonas",
    "Julia", "Kai", "Karin", "Lars", "Leila", "Lina", "Marco", "Maya", "Nadia", "Niko", "Noor",
    "Omar", "Paula", "Priya", "Quinn", "Rafael", "Rosa", "Sami", "Sara", "Tariq", "Tessa", "Umar",
    "Vera", "Wen", "Yara", "Zoe",
];

const LAST: &[&str] = &[
    "Adler",
    "Baker",
    "Berg",
    "Castro",
    "Costa",
    "Dalton",
    "Diaz",
    "Eriksen",
    "Fischer",
    "Garcia",
    "Haas",
    "Ito",
    "Jensen",
    "Kaur",
    "Keller",
    "Khan",
    "Larsen",
    "Lopez",
    "Moreau",
    "Muller",
    "Nakamura",
    "Novak",
    "Okafor",
    "Olsen",
    "Park",
    "Petrov",
    "Quispe",
    "Rossi",
    "Sato",
    "Schmidt",
    "Silva",
    "Singh",
    "Tanaka",
    "Torres",
    "Ueda",
    "Varga",
    "Vogel",
    "Walsh",
    "Weber",
    "Xu",
    "Yilmaz",
    "Young",
    "Zhang",
    "Ziegler",
    "Abbott",
    "Brennan",
    "Carver",
    "Lindqvist",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> MaskKey {
        MaskKey::from_bytes(&[b; 32]).unwrap()
    }

    fn text(t: &Transform, k: &MaskKey, v: &str) -> String {
        String::from_utf8(t.apply(k, v.as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn outputs_are_deterministic_per_key_and_keep_their_shape() {
        let (k1, k2) = (key(1), key(2));
        let email = Transform::Email {
            domain: "example.com".into(),
        };
        let a = text(&email, &k1, "jane@corp.io");
        assert_eq!(a, text(&email, &k1, "jane@corp.io"), "deterministic");
        assert_ne!(
            a,
            text(&email, &k2, "jane@corp.io"),
            "another key, another value"
        );
        assert_ne!(a, text(&email, &k1, "john@corp.io"));
        assert!(
            a.starts_with("user-") && a.ends_with("@example.com") && a.len() == 33,
            "{a}"
        );
        let phone = text(&Transform::Phone, &k1, "+1 (555) 010-2233");
        assert_eq!(phone.len(), 17);
        assert!(
            phone.starts_with("+") && phone.contains(" (") && phone.contains('-'),
            "{phone}"
        );
        assert_ne!(phone, "+1 (555) 010-2233");
        let t = text(&Transform::Text, &k1, "Ab9 z!");
        assert_eq!(t.len(), 6);
        let c: Vec<char> = t.chars().collect();
        assert!(c[0].is_ascii_uppercase() && c[1].is_ascii_lowercase() && c[2].is_ascii_digit());
        assert_eq!(&t[3..4], " ");
        assert_eq!(&t[5..], "!");
        assert_eq!(
            text(&Transform::Hash { length: Some(12) }, &k1, "x").len(),
            12
        );
        assert_eq!(
            text(&Transform::Hash { length: None }, &k1, "secret-token").len(),
            12
        );
        let n: i64 = text(&Transform::Int { min: 18, max: 90 }, &k1, "41")
            .parse()
            .unwrap();
        assert!((18..=90).contains(&n));
        assert!(text(&Transform::Ip, &k1, "203.0.113.9").starts_with("10."));
        assert!(text(&Transform::Ip, &k1, "2001:db8::1").starts_with("fd00:"));
        assert!(text(&Transform::Name, &k1, "Jane Roe").contains(' '));
        assert_eq!(Transform::Null.apply(&k1, b"x"), None);
        assert_eq!(text(&Transform::Keep, &k1, "same"), "same");
        let email_max = email.max_len(None).unwrap();
        assert_eq!(email_max, a.len());
    }

    #[test]
    fn dates_move_within_their_window_and_json_keys_are_masked() {
        let k = key(4);
        let date = Transform::Date { days: 30 };
        for v in [
            "2024-02-29",
            "1999-12-31 23:59:59+01",
            "2000-01-01 10:00:00.5",
        ] {
            let out = text(&date, &k, v);
            assert_eq!(out.len(), v.len(), "{out}");
            assert_eq!(&out[10..], &v[10..], "the time of day stays");
            let (a, b) = (
                time::Date::parse(
                    &v[..10],
                    time::macros::format_description!("[year]-[month]-[day]"),
                )
                .unwrap(),
                time::Date::parse(
                    &out[..10],
                    time::macros::format_description!("[year]-[month]-[day]"),
                )
                .unwrap(),
            );
            assert!((b - a).whole_days().abs() <= 30);
        }
        // The same day moves the same way, whatever follows it.
        assert_eq!(
            text(&date, &k, "2024-05-01")[..10],
            text(&date, &k, "2024-05-01 08:00:00")[..10]
        );
        assert_eq!(text(&date, &k, "infinity"), "infinity");
        let json = Transform::Json {
            keys: vec!["email".into(), "age".into()],
        };
        let out = text(
            &json,
            &k,
            r#"{"email":"jane@corp.io","nested":[{"email":"x@y.z","keep":"yes"}],"age":41}"#,
        );
        let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_ne!(doc["email"], "jane@corp.io");
        assert_eq!(doc["email"].as_str().unwrap().len(), "jane@corp.io".len());
        assert_eq!(doc["nested"][0]["keep"], "yes");
        assert_ne!(doc["nested"][0]["email"], "x@y.z");
        assert!(doc["age"].is_null());
        assert_eq!(text(&json, &k, "not json"), "{}");
        let re = Transform::Regex(Pattern {
            re: regex::bytes::Regex::new(r"\d{4}-(\d{4})").unwrap(),
            replacement: "XXXX-$1".into(),
        });
        assert_eq!(
            text(&re, &k, "card 1234-5678, 9999-0000"),
            "card XXXX-5678, XXXX-0000"
        );
    }

    /// The mapping as first written (a match per byte): outputs must not
    /// change between versions, or a nightly refresh would mask a value
    /// differently from the night before.
    fn scramble_as_first_written(key: &MaskKey, kind: &str, v: &[u8], letters: bool) -> Vec<u8> {
        let replaced = |c: &u8| c.is_ascii_digit() || (letters && c.is_ascii_alphabetic());
        if !v.iter().any(replaced) {
            return v.to_vec();
        }
        let stream = key.stream(kind, v, v.len());
        v.iter()
            .zip(stream)
            .map(|(&c, r)| match c {
                b'0'..=b'9' => b'0' + r % 10,
                b'a'..=b'z' if letters => b'a' + r % 26,
                b'A'..=b'Z' if letters => b'A' + r % 26,
                other => other,
            })
            .collect()
    }

    #[test]
    fn scramble_gives_what_it_always_gave() {
        let k = key(3);
        // Every byte value, at every place around a 32-byte block.
        let all: Vec<u8> = (0..=255u8).collect();
        for letters in [true, false] {
            for (kind, v) in [
                ("text", &all[..]),
                ("text", b"Order #42 from Zo\xc3\xab, 12:30".as_slice()),
                ("phone", b"+1 (555) 010-9999".as_slice()),
            ] {
                for cut in 0..v.len().min(70) {
                    let v = &v[cut..];
                    assert_eq!(
                        scramble(&k, kind, v, letters),
                        scramble_as_first_written(&k, kind, v, letters),
                        "{letters} {v:?}"
                    );
                }
            }
            for blank in [0usize, 1, 31, 32, 33, 84, 100] {
                let mut v = vec![b' '; blank];
                assert_eq!(scramble(&k, "text", &v, letters), v);
                // One replaceable byte anywhere is found (a miss would
                // keep it where the first mapping changes it 9 times in 10).
                for at in 0..blank {
                    v[at] = b'7';
                    assert_eq!(
                        scramble(&k, "text", &v, letters),
                        scramble_as_first_written(&k, "text", &v, letters)
                    );
                    v[at] = b' ';
                }
            }
        }
    }

    #[test]
    fn a_scramble_with_nothing_to_replace_keeps_the_value() {
        let k = key(3);
        assert_eq!(text(&Transform::Text, &k, "   "), "   ");
        assert_eq!(text(&Transform::Phone, &k, "+() -"), "+() -");
        let padded = text(&Transform::Text, &k, "ab  ");
        assert!(padded.ends_with("  ") && padded != "ab  ", "{padded}");
    }

    #[test]
    fn masked_emails_stay_unique() {
        let k = key(3);
        let email = Transform::Email {
            domain: "example.com".into(),
        };
        let mut seen = std::collections::HashSet::new();
        for i in 0..20_000 {
            assert!(seen.insert(text(&email, &k, &format!("person{i}@mail.test"))));
        }
    }
}
