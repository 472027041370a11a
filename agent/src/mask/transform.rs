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
    /// An address in 10.0.0.0/8 (IPv4) or fd00::/8 (IPv6).
    Ip,
    /// The operator's fixed password hash, for every row.
    Password(String),
}

/// The kinds of column a transform writes into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    Anything,
    Text,
    Integer,
    Address,
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
            Transform::Ip => "ip",
            Transform::Password(_) => "password",
        }
    }

    /// What kind of column its output fits.
    pub fn needs(&self) -> Needs {
        match self {
            // A fixed value is the operator's to fit (JSON for a jsonb).
            Transform::Keep | Transform::Null | Transform::Value(_) => Needs::Anything,
            Transform::Int { .. } => Needs::Integer,
            Transform::Ip => Needs::Address,
            _ => Needs::Text,
        }
    }

    /// The longest output for an input of `len` characters, if bounded.
    pub fn max_len(&self, len: Option<usize>) -> Option<usize> {
        match self {
            Transform::Keep | Transform::Phone | Transform::Text => len,
            Transform::Null | Transform::Int { .. } | Transform::Ip => Some(0),
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
