//! The destination's check of a copy lane's bytes: CopyData messages and
//! nothing else, whatever chunks they arrive in, before its own server
//! sees them.

use super::message::HEADER;

/// Checks, chunk by chunk, that a lane's bytes are CopyData messages and
/// nothing else before they reach the destination's server: any other
/// message (a query, a CopyDone, a termination) would be a command to it.
#[derive(Debug, Default)]
pub struct CopyDataCheck {
    /// Bytes of the current message's body still to come.
    pending: usize,
    /// The start of a header cut by a chunk's end.
    partial: Vec<u8>,
    /// Messages begun.
    pub messages: u64,
}

/// The most a CopyData message may carry (PostgreSQL's own limit for a
/// message is 1 GiB).
const MAX_MESSAGE: usize = 1 << 30;

impl CopyDataCheck {
    /// Checks the next chunk.
    pub fn check(&mut self, chunk: &[u8]) -> Result<(), String> {
        let mut at = 0;
        while at < chunk.len() {
            if self.pending > 0 {
                let n = self.pending.min(chunk.len() - at);
                at += n;
                self.pending -= n;
                continue;
            }
            // A whole header in the chunk is read where it is; one cut by
            // the chunk's end is gathered first.
            let mut header = [0u8; HEADER];
            if self.partial.is_empty() && chunk.len() - at >= HEADER {
                header.copy_from_slice(&chunk[at..at + HEADER]);
                at += HEADER;
            } else {
                let take = (HEADER - self.partial.len()).min(chunk.len() - at);
                self.partial.extend_from_slice(&chunk[at..at + take]);
                at += take;
                if self.partial.len() < HEADER {
                    break;
                }
                header.copy_from_slice(&self.partial);
                self.partial.clear();
            }
            self.begin(header)?;
        }
        Ok(())
    }

    /// A message's header: a CopyData message, of a sane length.
    fn begin(&mut self, h: [u8; HEADER]) -> Result<(), String> {
        let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
        if h[0] != b'd' || !(4..=MAX_MESSAGE).contains(&len) {
            return Err(format!(
                "a copy lane carried a {:?} message of length {len} where only rows (CopyData) may come",
                h[0] as char
            ));
        }
        self.pending = len - 4;
        self.messages += 1;
        Ok(())
    }

    /// Whether the bytes so far end at a message boundary.
    pub fn at_boundary(&self) -> bool {
        self.pending == 0 && self.partial.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy_data(rows: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in rows {
            out.push(b'd');
            out.extend_from_slice(&((r.len() + 4) as u32).to_be_bytes());
            out.extend_from_slice(r);
        }
        out
    }

    #[test]
    fn copy_data_is_checked_across_any_cut() {
        let bytes = copy_data(&[b"1\tone\n", b"", b"22\ttwo\n"]);
        // Cut at every point, headers and rows alike.
        for cut in 0..=bytes.len() {
            let mut check = CopyDataCheck::default();
            check.check(&bytes[..cut]).unwrap();
            check.check(&bytes[cut..]).unwrap();
            assert!(check.at_boundary(), "cut at {cut}");
            assert_eq!(check.messages, 3);
        }
        let mut check = CopyDataCheck::default();
        check.check(&bytes[..bytes.len() - 1]).unwrap();
        assert!(!check.at_boundary());
        // Anything but CopyData is refused, wherever it starts.
        let mut evil = copy_data(&[b"1\n"]);
        evil.extend_from_slice(b"Q\0\0\0\x0dDROP x;\0");
        let mut check = CopyDataCheck::default();
        assert!(check.check(&evil).unwrap_err().contains("'Q'"));
        let mut check = CopyDataCheck::default();
        assert!(check.check(b"d\0\0\0\x02").is_err(), "a length below 4");
    }

    #[test]
    fn many_rows_are_counted_across_any_cut() {
        let rows: Vec<Vec<u8>> = (0..200).map(|i| vec![b'x'; (i * 7) % 61]).collect();
        let refs: Vec<&[u8]> = rows.iter().map(|r| &r[..]).collect();
        let bytes = copy_data(&refs);
        for size in [1, 2, 3, 4, 5, 6, 13, 64, 1000, bytes.len()] {
            let mut check = CopyDataCheck::default();
            for piece in bytes.chunks(size) {
                check.check(piece).unwrap();
            }
            assert!(check.at_boundary(), "pieces of {size}");
            assert_eq!(check.messages, 200, "pieces of {size}");
        }
        // A bad message after good ones is caught in any piece.
        let mut evil = bytes.clone();
        evil.extend_from_slice(b"X\0\0\0\x04");
        for size in [1, 5, 64, evil.len()] {
            let mut check = CopyDataCheck::default();
            let refused = evil
                .chunks(size)
                .map(|p| check.check(p))
                .find(|r| r.is_err());
            assert!(refused.is_some(), "pieces of {size}");
        }
    }
}
