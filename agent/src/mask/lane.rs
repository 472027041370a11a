//! A copy lane's CopyData messages with their rows masked: each message is
//! one text row; its fields are taken apart, the table's transforms
//! applied, and the row framed again. A message cut by a chunk's end waits
//! for the rest (memory: the longest row).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::columns::TableMask;
use super::key::MaskKey;
use super::row;

/// Tag and length of a CopyData message.
const HEADER: usize = 5;

/// One COPY's rows, masked as they pass.
pub struct MaskedRows {
    mask: Arc<TableMask>,
    key: Arc<MaskKey>,
    /// The start of a message the last chunk cut.
    partial: Vec<u8>,
    /// Reused for each row.
    fields_out: Vec<u8>,
}

impl MaskedRows {
    pub fn new(mask: Arc<TableMask>, key: Arc<MaskKey>) -> Self {
        MaskedRows {
            mask,
            key,
            partial: Vec::new(),
            fields_out: Vec::new(),
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
        let line = body.strip_suffix(b"\n").unwrap_or(body);
        // Kept fields are copied as they came (still escaped); only a
        // masked field is taken apart and escaped again.
        self.fields_out.clear();
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
        out.extend_from_slice(b"d");
        out.extend_from_slice(&((self.fields_out.len() + 4) as u32).to_be_bytes());
        out.extend_from_slice(&self.fields_out);
        Ok(())
    }
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

    #[test]
    fn rows_are_masked_wherever_chunks_cut_them() {
        let mask = Arc::new(TableMask {
            table: "public.users".into(),
            transforms: vec![
                None,
                Some(Transform::Email {
                    domain: "example.com".into(),
                }),
                Some(Transform::Null),
            ],
        });
        let key = Arc::new(MaskKey::from_bytes(&[9; 32]).unwrap());
        let mut input = msg("1\tjane@corp.io\tsecret\n");
        input.extend(msg("2\t\\N\tx\n"));
        let whole = MaskedRows::new(mask.clone(), key.clone())
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
            let mut m = MaskedRows::new(mask.clone(), key.clone());
            let mut got = m.chunk(&input[..cut]).unwrap().to_vec();
            got.extend_from_slice(&m.chunk(&input[cut..]).unwrap());
            assert!(m.is_clear(), "cut at {cut}");
            assert_eq!(rows(&got), want, "cut at {cut}");
        }
        let mut m = MaskedRows::new(mask, key);
        assert!(
            m.chunk(&msg("1\tonly two\n"))
                .unwrap_err()
                .contains("2 fields")
        );
    }
}
