//! A copy lane's CopyData messages with their rows masked: each message is
//! one row, text or binary; its fields are taken apart, the table's
//! transforms applied, and the row framed again. A message cut by a
//! chunk's end waits for the rest (memory: the longest row). In the binary
//! format the first message also carries the format's header and the last
//! is its trailer, both passed on as they are; a masked field there is a
//! string's bytes (or NULL), as `TableMask::binary_ok` allowed.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::columns::TableMask;
use super::key::MaskKey;
use super::row;

/// Tag and length of a CopyData message.
const HEADER: usize = 5;
/// The binary COPY format's signature, which its header starts with.
const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// One COPY's rows, masked as they pass.
pub struct MaskedRows {
    mask: Arc<TableMask>,
    key: Arc<MaskKey>,
    /// The start of a message the last chunk cut.
    partial: Vec<u8>,
    /// Reused for each row.
    fields_out: Vec<u8>,
    /// The rows are in the binary format.
    binary: bool,
    /// Binary: the format's header was seen (it leads the first message).
    header_seen: bool,
}

impl MaskedRows {
    pub fn new(mask: Arc<TableMask>, key: Arc<MaskKey>, binary: bool) -> Self {
        MaskedRows {
            mask,
            key,
            partial: Vec::new(),
            fields_out: Vec::new(),
            binary,
            header_seen: false,
        }
    }

    /// The masked messages of the whole rows `chunk` completes.
    pub fn chunk(&mut self, chunk: &[u8]) -> Result<Bytes, String> {
        let mut out = BytesMut::with_capacity(chunk.len() + chunk.len() / 8);
        let mut data = chunk;
        if !self.partial.is_empty() {
            let need = self.message_len_of_partial(data)?;
            let take = need.saturating_sub(self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() < need.max(HEADER) {
                return Ok(out.freeze());
            }
            let whole = std::mem::take(&mut self.partial);
            self.message(&whole, &mut out)?;
        }
        while !data.is_empty() {
            if data.len() < HEADER {
                self.partial.extend_from_slice(data);
                break;
            }
            let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
            if data[0] != b'd' || len < 4 {
                return Err(format!(
                    "a COPY sent a {:?} message among its rows",
                    data[0] as char
                ));
            }
            if data.len() < 1 + len {
                self.partial.extend_from_slice(data);
                break;
            }
            self.message(&data[..1 + len], &mut out)?;
            data = &data[1 + len..];
        }
        Ok(out.freeze())
    }

    /// Whether no cut row is waiting (true at a COPY's end).
    pub fn is_clear(&self) -> bool {
        self.partial.is_empty()
    }

    /// How long the message whose start is held will be, once its header
    /// is in (reading the header's rest from `data`).
    fn message_len_of_partial(&mut self, data: &[u8]) -> Result<usize, String> {
        if self.partial.len() < HEADER {
            let take = (HEADER - self.partial.len()).min(data.len());
            let mut h = self.partial.clone();
            h.extend_from_slice(&data[..take]);
            if h.len() < HEADER {
                return Ok(HEADER);
            }
            return Ok(1 + u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize);
        }
        let p = &self.partial;
        Ok(1 + u32::from_be_bytes([p[1], p[2], p[3], p[4]]) as usize)
    }

    /// One whole message, masked, onto `out`.
    fn message(&mut self, msg: &[u8], out: &mut BytesMut) -> Result<(), String> {
        if msg[0] != b'd' {
            return Err(format!(
                "a COPY sent a {:?} message among its rows",
                msg[0] as char
            ));
        }
        let body = &msg[HEADER..];
        self.fields_out.clear();
        match self.binary {
            true => self.binary_row(body)?,
            false => self.text_row(body)?,
        }
        out.extend_from_slice(b"d");
        out.extend_from_slice(&((self.fields_out.len() + 4) as u32).to_be_bytes());
        out.extend_from_slice(&self.fields_out);
        Ok(())
    }

    /// A text row, masked, into `fields_out`.
    fn text_row(&mut self, body: &[u8]) -> Result<(), String> {
        let line = body.strip_suffix(b"\n").unwrap_or(body);
        // Kept fields are copied as they came (still escaped); only a
        // masked field is taken apart and escaped again.
        let mut n = 0;
        for raw in line.split(|b| *b == b'\t') {
            if n > 0 {
                self.fields_out.push(b'\t');
            }
            match self.mask.transforms.get(n) {
                Some(None) => self.fields_out.extend_from_slice(raw),
                Some(Some(t)) => match row::unescape(raw)? {
                    None => self.fields_out.extend_from_slice(row::NULL),
                    Some(v) => match t.apply(&self.key, &v) {
                        None => self.fields_out.extend_from_slice(row::NULL),
                        Some(masked) => row::escape(&masked, &mut self.fields_out),
                    },
                },
                None => {}
            }
            n += 1;
        }
        if n != self.mask.transforms.len() {
            return Err(format!(
                "a row of {} has {n} fields where {} columns were asked for",
                self.mask.table,
                self.mask.transforms.len()
            ));
        }
        self.fields_out.push(b'\n');
        Ok(())
    }

    /// A binary row (after the format's header, in the first message), or
    /// the format's trailer, masked into `fields_out`.
    fn binary_row(&mut self, mut body: &[u8]) -> Result<(), String> {
        let table = &self.mask.table;
        let cut = || format!("a binary row of {table} ends inside a field");
        if !self.header_seen {
            // Signature, flags, then the length of an extension area.
            let fixed = SIGNATURE.len() + 8;
            if body.len() < fixed || !body.starts_with(SIGNATURE) {
                return Err(format!(
                    "the binary COPY of {table} does not start with its header"
                ));
            }
            let ext = be_u32(&body[fixed - 4..fixed]) as usize;
            let header = fixed
                .checked_add(ext)
                .filter(|h| *h <= body.len())
                .ok_or_else(cut)?;
            self.fields_out.extend_from_slice(&body[..header]);
            body = &body[header..];
            self.header_seen = true;
        }
        if body.len() < 2 {
            return Err(cut());
        }
        let count = i16::from_be_bytes([body[0], body[1]]);
        self.fields_out.extend_from_slice(&body[..2]);
        body = &body[2..];
        // The trailer: a field count of -1, nothing after it.
        if count == -1 && body.is_empty() {
            return Ok(());
        }
        if count < 0 || count as usize != self.mask.transforms.len() {
            return Err(format!(
                "a row of {table} has {count} fields where {} columns were asked for",
                self.mask.transforms.len()
            ));
        }
        for t in &self.mask.transforms {
            if body.len() < 4 {
                return Err(cut());
            }
            let len = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
            let value_len = usize::try_from(len).unwrap_or(0);
            let field = 4 + value_len;
            if body.len() < field {
                return Err(cut());
            }
            let value = (len >= 0).then(|| &body[4..field]);
            match (t, value) {
                (None, _) | (Some(_), None) => self.fields_out.extend_from_slice(&body[..field]),
                (Some(t), Some(v)) => match t.apply(&self.key, v) {
                    None => self.fields_out.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(masked) => {
                        let n = i32::try_from(masked.len())
                            .map_err(|_| format!("a masked value of {table} is too long"))?;
                        self.fields_out.extend_from_slice(&n.to_be_bytes());
                        self.fields_out.extend_from_slice(&masked);
                    }
                },
            }
            body = &body[field..];
        }
        if !body.is_empty() {
            return Err(format!(
                "a binary row of {table} has bytes after its last field"
            ));
        }
        Ok(())
    }
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::Transform;

    fn msg(row: &str) -> Vec<u8> {
        let mut m = vec![b'd'];
        m.extend_from_slice(&((row.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(row.as_bytes());
        m
    }

    fn rows(bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        let mut d = bytes;
        while !d.is_empty() {
            let len = u32::from_be_bytes([d[1], d[2], d[3], d[4]]) as usize;
            out.push(String::from_utf8(d[5..1 + len].to_vec()).unwrap());
            d = &d[1 + len..];
        }
        out
    }

    /// Three columns: kept, an email, made NULL; and a key.
    fn users_mask() -> (Arc<TableMask>, Arc<MaskKey>) {
        let mask = Arc::new(TableMask {
            table: "public.users".into(),
            transforms: vec![
                None,
                Some(Transform::Email {
                    domain: "example.com".into(),
                }),
                Some(Transform::Null),
            ],
            binary_ok: true,
        });
        (mask, Arc::new(MaskKey::from_bytes(&[9; 32]).unwrap()))
    }

    #[test]
    fn rows_are_masked_wherever_chunks_cut_them() {
        let (mask, key) = users_mask();
        let mut input = msg("1\tjane@corp.io\tsecret\n");
        input.extend(msg("2\t\\N\tx\n"));
        let whole = MaskedRows::new(mask.clone(), key.clone(), false)
            .chunk(&input)
            .unwrap();
        let want = rows(&whole);
        assert_eq!(want.len(), 2);
        assert!(
            want[0].starts_with("1\tuser-") && want[0].ends_with("@example.com\t\\N\n"),
            "{want:?}"
        );
        assert_eq!(want[1], "2\t\\N\t\\N\n");
        assert!(!String::from_utf8_lossy(&whole).contains("jane"));
        for cut in 0..input.len() {
            let mut m = MaskedRows::new(mask.clone(), key.clone(), false);
            let mut got = m.chunk(&input[..cut]).unwrap().to_vec();
            got.extend_from_slice(&m.chunk(&input[cut..]).unwrap());
            assert!(m.is_clear(), "cut at {cut}");
            assert_eq!(rows(&got), want, "cut at {cut}");
        }
        let mut m = MaskedRows::new(mask, key, false);
        assert!(
            m.chunk(&msg("1\tonly two\n"))
                .unwrap_err()
                .contains("2 fields")
        );
    }

    /// A binary row: the field count, then each field's length (-1: NULL)
    /// and bytes.
    fn binary_row(fields: &[Option<&str>]) -> Vec<u8> {
        let mut r = (fields.len() as i16).to_be_bytes().to_vec();
        for f in fields {
            match f {
                None => r.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    r.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    r.extend_from_slice(v.as_bytes());
                }
            }
        }
        r
    }

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut m = vec![b'd'];
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn binary_rows_are_masked_wherever_chunks_cut_them() {
        let (mask, key) = users_mask();
        // The header (signature, flags, an extension area of 2 bytes)
        // leads the first row; the trailer is a message of its own.
        let mut first = SIGNATURE.to_vec();
        first.extend_from_slice(&0u32.to_be_bytes());
        first.extend_from_slice(&2u32.to_be_bytes());
        first.extend_from_slice(b"xx");
        let header_len = first.len();
        first.extend(binary_row(&[
            Some("1234"),
            Some("jane@corp.io"),
            Some("secret"),
        ]));
        let mut input = framed(&first);
        input.extend(framed(&binary_row(&[Some("5678"), None, Some("x")])));
        input.extend(framed(&(-1i16).to_be_bytes()));
        let whole = MaskedRows::new(mask.clone(), key.clone(), true)
            .chunk(&input)
            .unwrap();
        // The text path masks the same value the same way.
        let text = MaskedRows::new(mask.clone(), key.clone(), false)
            .chunk(&msg("1\tjane@corp.io\tsecret\n"))
            .unwrap();
        let email = rows(&text)[0].split('\t').nth(1).unwrap().to_string();
        assert!(
            email.starts_with("user-") && email.ends_with("@example.com"),
            "{email}"
        );
        let mut want = first[..header_len].to_vec();
        want.extend(binary_row(&[Some("1234"), Some(&email), None]));
        let mut want = framed(&want);
        want.extend(framed(&binary_row(&[Some("5678"), None, None])));
        want.extend(framed(&(-1i16).to_be_bytes()));
        assert_eq!(whole.to_vec(), want);
        for cut in 0..input.len() {
            let mut m = MaskedRows::new(mask.clone(), key.clone(), true);
            let mut got = m.chunk(&input[..cut]).unwrap().to_vec();
            got.extend_from_slice(&m.chunk(&input[cut..]).unwrap());
            assert!(m.is_clear(), "cut at {cut}");
            assert_eq!(got, want, "cut at {cut}");
        }
        // A row of the wrong width, a field cut short, a missing header.
        let mut m = MaskedRows::new(mask.clone(), key.clone(), true);
        let mut two = first[..header_len].to_vec();
        two.extend(binary_row(&[Some("a"), Some("b")]));
        assert!(m.chunk(&framed(&two)).unwrap_err().contains("2 fields"));
        let mut m = MaskedRows::new(mask.clone(), key.clone(), true);
        let mut short = first.clone();
        short.truncate(short.len() - 3);
        assert!(
            m.chunk(&framed(&short))
                .unwrap_err()
                .contains("inside a field")
        );
        let mut m = MaskedRows::new(mask, key, true);
        assert!(
            m.chunk(&framed(&binary_row(&[Some("a"), Some("b"), Some("c")])))
                .unwrap_err()
                .contains("header")
        );
    }
}
