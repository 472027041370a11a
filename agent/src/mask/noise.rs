//! `noise`: a number moved by a keyed fraction of itself, up to the rule's
//! share either way. The same number moves the same way in every row and
//! run under one key. The output keeps the input's decimals and never gains
//! an integer digit, so it fits the column's precision and scale; an
//! integer column's own range bounds it too.

use super::key::MaskKey;

/// The masked text of numeric text `v`: moved by up to `ppm` millionths of
/// itself, within `[-limit, limit]` when given. `NaN` and infinities are
/// kept (they are not personal); text that is no number becomes `0`.
pub fn noisy(key: &MaskKey, v: &[u8], ppm: u32, limit: Option<i64>) -> Vec<u8> {
    let text = std::str::from_utf8(v).unwrap_or_default().trim();
    let Ok(x) = text.parse::<f64>() else {
        return b"0".to_vec();
    };
    if !x.is_finite() {
        return v.to_vec();
    }
    let h = key.hash("noise", text.as_bytes());
    let u = u64::from_le_bytes(h[..8].try_into().unwrap_or_default()) as f64 / u64::MAX as f64;
    let share = ppm as f64 / 1e6;
    let mut y = x * (1.0 + share * (2.0 * u - 1.0));
    if let Some(l) = limit {
        y = y.clamp(-(l as f64), l as f64);
    }
    match decimal_shape(text) {
        Some((digits, decimals)) => {
            let cap = 10f64.powi(digits as i32) - 10f64.powi(-(decimals as i32));
            let y = y.clamp(-cap, cap);
            format!("{y:.decimals$}").into_bytes()
        }
        // An exponent: a floating-point column, which takes any double.
        None => format!("{y:e}").into_bytes(),
    }
}

/// Integer digits (at least 1) and decimals of a plain decimal number
/// (`-12.340`: 2 and 3); None for one with an exponent.
fn decimal_shape(text: &str) -> Option<(usize, usize)> {
    if text.contains(['e', 'E']) {
        return None;
    }
    let unsigned = text.trim_start_matches(['-', '+']);
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    Some((int.trim_start_matches('0').len().max(1), frac.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> MaskKey {
        MaskKey::from_bytes(&[b; 32]).unwrap()
    }

    fn noisy_text(k: &MaskKey, v: &str, ppm: u32, limit: Option<i64>) -> String {
        String::from_utf8(noisy(k, v.as_bytes(), ppm, limit)).unwrap()
    }

    #[test]
    fn numbers_move_within_their_share_and_keep_their_shape() {
        let k = key(1);
        let mut moved = 0;
        for i in 1..500 {
            let v = format!("{}.{:02}", 1000 + i, i % 100);
            let out = noisy_text(&k, &v, 100_000, None);
            let (x, y): (f64, f64) = (v.parse().unwrap(), out.parse().unwrap());
            assert!((y - x).abs() <= x * 0.1 + 0.01, "{v} -> {out}");
            assert_eq!(out.split_once('.').unwrap().1.len(), 2, "{out}");
            assert!(y < 10_000.0, "{out} gained a digit");
            moved += (out != v) as u32;
            assert_eq!(noisy_text(&k, &v, 100_000, None), out);
        }
        assert!(moved > 450, "{moved}");
        // Integers stay integers, in the column's range and digits.
        assert_eq!(
            noisy_text(&k, "32767", 500_000, Some(32767))
                .parse::<i64>()
                .map(|n| n <= 32767),
            Ok(true)
        );
        assert!(!noisy_text(&k, "-41", 500_000, None).contains('.'));
        assert!(
            noisy_text(&k, "99", 1_000_000, None)
                .parse::<i64>()
                .unwrap()
                .abs()
                <= 99
        );
        // Not numbers, or not personal.
        assert_eq!(noisy_text(&k, "NaN", 100_000, None), "NaN");
        assert_eq!(noisy_text(&k, "$1,234.00", 100_000, None), "0");
        assert!(noisy_text(&k, "1.5e+20", 100_000, None).contains('e'));
        // Another key moves them otherwise.
        assert_ne!(
            noisy_text(&key(2), "1234.56", 100_000, None),
            noisy_text(&k, "1234.56", 100_000, None)
        );
    }
}
