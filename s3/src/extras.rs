//! The destination's objects the source lacks, gathered while both listings
//! are walked and deleted (if the guard allows) once every copy succeeded.
//! A bucket may hold any number of them, so only the first
//! [`IN_MEMORY`] stay in memory; the rest go to an unnamed temporary file
//! (gone when the run ends, however it ends) and come back in batches.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};

use crate::listing::Listed;

/// Extras held in memory; with keys of a few hundred bytes, well under a
/// mebibyte.
pub(crate) const IN_MEMORY: usize = 4096;

/// Extras in key order: those in memory come first, then the spilled ones.
#[derive(Default)]
pub(crate) struct Extras {
    held: Vec<Listed>,
    spill: Option<BufWriter<File>>,
    count: u64,
}

impl Extras {
    /// Adds the next extra (in key order).
    pub fn push(&mut self, object: Listed) -> io::Result<()> {
        self.count += 1;
        if self.spill.is_none() && self.held.len() < IN_MEMORY {
            self.held.push(object);
            return Ok(());
        }
        let out = match &mut self.spill {
            Some(out) => out,
            None => self.spill.insert(BufWriter::new(tempfile::tempfile()?)),
        };
        // size, key length, key: keys may hold any character.
        out.write_all(&object.size.to_le_bytes())?;
        out.write_all(&(object.key.len() as u64).to_le_bytes())?;
        out.write_all(object.key.as_bytes())
    }

    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// How many are held in memory.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.held.len()
    }

    /// Every extra again, in batches of at most `size`, in key order.
    pub fn into_batches(self, size: usize) -> io::Result<Batches> {
        let spilled = match self.spill {
            Some(out) => {
                let mut file = out.into_inner().map_err(|e| e.into_error())?;
                io::Seek::rewind(&mut file)?;
                Some(BufReader::new(file))
            }
            None => None,
        };
        Ok(Batches {
            held: self.held.into_iter(),
            spilled,
            size: size.max(1),
        })
    }
}

/// The batches [`Extras::into_batches`] gives.
pub(crate) struct Batches {
    held: std::vec::IntoIter<Listed>,
    spilled: Option<BufReader<File>>,
    size: usize,
}

impl Batches {
    /// The next batch; empty when every extra was given.
    pub fn next_batch(&mut self) -> io::Result<Vec<Listed>> {
        let mut batch: Vec<Listed> = self.held.by_ref().take(self.size).collect();
        while batch.len() < self.size {
            match self.read_spilled()? {
                Some(object) => batch.push(object),
                None => break,
            }
        }
        Ok(batch)
    }

    fn read_spilled(&mut self) -> io::Result<Option<Listed>> {
        let Some(r) = &mut self.spilled else {
            return Ok(None);
        };
        let mut word = [0u8; 8];
        match r.read_exact(&mut word) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let size = u64::from_le_bytes(word);
        r.read_exact(&mut word)?;
        let mut key = vec![0u8; u64::from_le_bytes(word) as usize];
        r.read_exact(&mut key)?;
        let key =
            String::from_utf8(key).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(Some(Listed {
            key,
            size,
            etag: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_hundred_thousand_extras_keep_a_few_thousand_in_memory() {
        let mut extras = Extras::default();
        assert!(extras.is_empty());
        let key = |i: u64| format!("uploads/{i:08}/ünï\n\t\"name\".jpg");
        for i in 0..200_000u64 {
            extras
                .push(Listed {
                    key: key(i),
                    size: i,
                    etag: Some("e".into()),
                })
                .unwrap();
        }
        assert_eq!(extras.len(), 200_000);
        assert_eq!(extras.held(), IN_MEMORY);
        let mut batches = extras.into_batches(1000).unwrap();
        let mut seen = 0u64;
        loop {
            let batch = batches.next_batch().unwrap();
            if batch.is_empty() {
                break;
            }
            assert!(batch.len() <= 1000);
            for object in batch {
                assert_eq!(
                    (object.key.as_str(), object.size),
                    (key(seen).as_str(), seen)
                );
                seen += 1;
            }
        }
        assert_eq!(seen, 200_000);
    }

    #[test]
    fn a_few_extras_never_touch_the_disk() {
        let mut extras = Extras::default();
        for i in 0..3 {
            extras
                .push(Listed {
                    key: format!("k{i}"),
                    size: 1,
                    etag: None,
                })
                .unwrap();
        }
        assert!(extras.spill.is_none());
        let mut batches = extras.into_batches(2).unwrap();
        assert_eq!(batches.next_batch().unwrap().len(), 2);
        assert_eq!(batches.next_batch().unwrap().len(), 1);
        assert!(batches.next_batch().unwrap().is_empty());
    }
}
