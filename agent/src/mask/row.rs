//! The fields of `COPY … TO STDOUT` text, their escapes undone and done
//! again: fields end at a tab, the row at a newline, `\N` is
//! NULL, and a backslash escapes a tab, a newline, a carriage return, a
//! backslash or a byte given in octal or hex.

/// A field's value: NULL, or its bytes with the escapes undone.
pub type Field = Option<Vec<u8>>;

/// NULL as COPY text writes it.
pub const NULL: &[u8] = b"\\N";

/// One field's value, its escapes undone.
pub fn unescape(raw: &[u8]) -> Result<Field, String> {
    if raw == NULL {
        return Ok(None);
    }
    if !raw.contains(&b'\\') {
        return Ok(Some(raw.to_vec()));
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        i += 1;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let Some(&next) = raw.get(i) else {
            return Err("a COPY field ends with a lone backslash".into());
        };
        i += 1;
        match next {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = (next - b'0') as u32;
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + (d - b'0') as u32;
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(v as u8);
            }
            b'x' => {
                let mut v = 0u32;
                let mut digits = 0;
                while digits < 2
                    && let Some(d) = raw.get(i).and_then(|d| (*d as char).to_digit(16))
                {
                    v = v * 16 + d;
                    i += 1;
                    digits += 1;
                }
                if digits == 0 {
                    out.push(b'x');
                } else {
                    out.push(v as u8);
                }
            }
            other => out.push(other),
        }
    }
    Ok(Some(out))
}

/// `v` escaped as a COPY text field, onto `out`.
pub fn escape(v: &[u8], out: &mut Vec<u8>) {
    if !v.iter().any(|b| matches!(b, b'\\' | b'\t' | b'\n' | b'\r')) {
        out.extend_from_slice(v);
        return;
    }
    for &b in v {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields of `row` (without its newline).
    fn split(row: &[u8]) -> Result<Vec<Field>, String> {
        row.split(|b| *b == b'\t').map(unescape).collect()
    }

    /// `fields` as one row, newline included.
    fn join(fields: &[Field], out: &mut Vec<u8>) {
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            match f {
                None => out.extend_from_slice(b"\\N"),
                Some(v) => escape(v, out),
            }
        }
        out.push(b'\n');
    }

    #[test]
    fn rows_come_apart_and_back_together() {
        let row = b"1\t\\N\tone\\ttab\\nline\\\\slash\t\\101\\x42c";
        let fields = split(row).unwrap();
        assert_eq!(
            fields,
            vec![
                Some(b"1".to_vec()),
                None,
                Some(b"one\ttab\nline\\slash".to_vec()),
                Some(b"ABc".to_vec()),
            ]
        );
        let mut out = Vec::new();
        join(&fields, &mut out);
        // Escapes PostgreSQL would not write itself come back canonical.
        assert_eq!(out, b"1\t\\N\tone\\ttab\\nline\\\\slash\tABc\n");
        assert!(split(b"a\\").is_err());
        // An empty string is not NULL.
        assert_eq!(split(b"\t").unwrap(), vec![Some(vec![]), Some(vec![])]);
    }
}
