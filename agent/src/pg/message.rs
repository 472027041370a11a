//! The backend messages a copy lane's session reads besides rows: each
//! message's header, an error's text and a COPY's row count.

/// Tag, then a length that counts itself.
pub(crate) const HEADER: usize = 5;

/// A message's tag and length (which counts itself, not the tag), once its
/// header is in.
pub(super) fn header(buf: &[u8]) -> Result<Option<(u8, usize)>, String> {
    if buf.len() < HEADER {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len < 4 {
        return Err(format!("the server sent a message of length {len}"));
    }
    Ok(Some((buf[0], len)))
}

pub(super) fn unexpected(tag: u8, doing: &str) -> String {
    format!(
        "the server sent an unexpected {:?} message while {doing}",
        tag as char
    )
}

/// The row count of a CommandComplete `COPY n`.
pub(super) fn copied_rows(body: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(body).ok()?.trim_end_matches('\0');
    text.strip_prefix("COPY ")?.parse().ok()
}

/// An ErrorResponse as "SEVERITY: message (SQLSTATE code)": the fields that
/// may quote values (detail, where) are left out.
pub(super) fn error_text(body: &[u8]) -> String {
    let (mut severity, mut code, mut message) = ("ERROR", "", "");
    for field in body.split(|b| *b == 0) {
        let Some((&kind, value)) = field.split_first() else {
            continue;
        };
        let value = std::str::from_utf8(value).unwrap_or("");
        match kind {
            b'V' => severity = value,
            b'S' if severity == "ERROR" => severity = value,
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
    }
    format!("{severity}: {message} (SQLSTATE {code})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_severity_message_and_code_only() {
        let body = b"SERROR\0VERROR\0C42P01\0Mrelation \"x\" does not exist\0Dsecret row\0\0";
        assert_eq!(
            error_text(body),
            "ERROR: relation \"x\" does not exist (SQLSTATE 42P01)"
        );
    }

    #[test]
    fn headers_are_read_whole_or_not_at_all() {
        assert_eq!(copied_rows(b"COPY 42\0"), Some(42));
        assert_eq!(copied_rows(b"INSERT 0 1\0"), None);
        assert_eq!(header(b"d\0\0").unwrap(), None);
        assert_eq!(header(b"d\0\0\0\x09abcd").unwrap(), Some((b'd', 9)));
        assert!(header(b"d\0\0\0\x02").is_err());
    }
}
