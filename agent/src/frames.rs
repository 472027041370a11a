//! The dump stream's framing: chunks of about 256 KiB, each compressed on
//! its own (zstd) and checked with CRC32C, plus a running digest of the raw
//! bytes (XXH3-128 or BLAKE3 between agents, SHA-256 for a backup read
//! back) that table ends, lane ends and the trailer carry.

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use stagesync_proto::v1 as pb;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Raw bytes per data frame.
pub const CHUNK: usize = 256 * 1024;
/// The largest gRPC message the agent accepts: a chunk that does not
/// compress plus framing, with room to spare. Set on purpose below tonic's
/// 4 MiB default, to bound what one message can cost the receiver.
pub const MAX_MESSAGE: usize = 2 * 1024 * 1024;
/// zstd level 1: several hundred MB/s per core, and dumps compress well.
const ZSTD_LEVEL: i32 = 1;

/// A running digest of a stream's raw bytes.
#[derive(Clone)]
enum Hasher {
    Sha256(Sha256),
    Blake3(Box<blake3::Hasher>),
    Xxh3(Box<twox_hash::xxhash3_128::Hasher>),
}

impl Hasher {
    fn new(digest: pb::Digest) -> Self {
        match digest {
            pb::Digest::Sha256 => Hasher::Sha256(Sha256::new()),
            pb::Digest::Blake3 => Hasher::Blake3(Box::default()),
            pb::Digest::Xxh3 => Hasher::Xxh3(Box::default()),
        }
    }

    fn kind(&self) -> pb::Digest {
        match self {
            Hasher::Sha256(_) => pb::Digest::Sha256,
            Hasher::Blake3(_) => pb::Digest::Blake3,
            Hasher::Xxh3(_) => pb::Digest::Xxh3,
        }
    }

    fn update(&mut self, raw: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(raw),
            Hasher::Blake3(h) => {
                h.update(raw);
            }
            Hasher::Xxh3(h) => h.write(raw),
        }
    }

    /// The digest so far (the hasher goes on).
    fn so_far(&self) -> Vec<u8> {
        match self {
            Hasher::Sha256(h) => h.clone().finalize().to_vec(),
            Hasher::Blake3(h) => h.finalize().as_bytes().to_vec(),
            Hasher::Xxh3(h) => h.finish_128().to_be_bytes().to_vec(),
        }
    }
}

/// The CRC32C (Castagnoli) of `bytes`, as each data frame carries it.
fn crc32c(bytes: &[u8]) -> u32 {
    // CRC-32/ISCSI is CRC32C; its value fits the low 32 bits.
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, bytes) as u32
}

/// Builds data frames and the trailer on the sending side.
pub struct Encoder {
    compression: pb::Compression,
    lane: u32,
    seq: u64,
    total: u64,
    /// None: the trailer's digest comes from elsewhere (a backup's
    /// manifest), so the bytes are not hashed here.
    hash: Option<Hasher>,
    /// Test-only: flip a byte of this frame after its CRC is computed.
    corrupt: Option<u64>,
}

impl Encoder {
    /// An encoder of lane 0 with a SHA-256 digest.
    pub fn new(compression: pb::Compression, corrupt: Option<u64>) -> Self {
        Encoder {
            compression,
            lane: 0,
            seq: 0,
            total: 0,
            hash: Some(Hasher::new(pb::Digest::Sha256)),
            corrupt,
        }
    }

    /// The encoder of data lane `lane` (see `DumpHeader.data_lanes`).
    pub fn for_lane(compression: pb::Compression, lane: u32, corrupt: Option<u64>) -> Self {
        Encoder {
            lane,
            ..Encoder::new(compression, corrupt)
        }
    }

    /// The same encoder, hashing with `digest` (before any data).
    pub fn with_digest(mut self, digest: pb::Digest) -> Self {
        self.hash = Some(Hasher::new(digest));
        self
    }

    /// The same encoder, hashing nothing: its trailer's digest is empty,
    /// for the caller to fill in.
    pub fn without_digest(mut self) -> Self {
        self.hash = None;
        self
    }

    /// The digest it computes (SHA-256 when none).
    pub fn digest(&self) -> pb::Digest {
        self.hash.as_ref().map_or(pb::Digest::Sha256, Hasher::kind)
    }

    /// One data frame for `raw`; without compression the frame shares
    /// `raw`'s memory instead of copying it.
    pub fn data(&mut self, raw: Bytes) -> std::io::Result<pb::DumpData> {
        if let Some(h) = &mut self.hash {
            h.update(&raw);
        }
        self.total += raw.len() as u64;
        let raw_len = raw.len() as u32;
        let mut payload = match self.compression {
            pb::Compression::Zstd => Bytes::from(zstd::bulk::compress(&raw, ZSTD_LEVEL)?),
            _ => raw,
        };
        let crc = crc32c(&payload);
        if self.corrupt == Some(self.seq) {
            let mut bad = payload.to_vec();
            if let Some(b) = bad.last_mut() {
                *b ^= 0x55;
            }
            payload = Bytes::from(bad);
        }
        let frame = pb::DumpData {
            seq: self.seq,
            payload,
            crc32c: crc,
            raw_len,
            lane: self.lane,
        };
        self.seq += 1;
        Ok(frame)
    }

    pub fn compression(&self) -> pb::Compression {
        self.compression
    }

    pub fn trailer(&self) -> pb::DumpTrailer {
        pb::DumpTrailer {
            total_len: self.total,
            digest: self.hash.as_ref().map(Hasher::so_far).unwrap_or_default(),
            frames: self.seq,
        }
    }
}

/// Checks and unpacks data frames on the receiving side.
pub struct Decoder {
    compression: pb::Compression,
    lane: u32,
    next_seq: u64,
    total: u64,
    hash: Hasher,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error(
        "frame {seq} failed its CRC32C check (sent {sent:08x}, got {got:08x}): the data was corrupted in transit"
    )]
    Crc { seq: u64, sent: u32, got: u32 },
    #[error("frame {seq} belongs to data lane {got}, where lane {want} was expected")]
    Lane { seq: u64, want: u32, got: u32 },
    #[error("frame {got} arrived where frame {want} was expected")]
    Sequence { want: u64, got: u64 },
    #[error("frame {seq} does not decompress: {reason}")]
    Decompress { seq: u64, reason: String },
    #[error("frame {seq} is {got} bytes once decompressed, its header says {want}")]
    Length { seq: u64, want: u32, got: usize },
    #[error("the stream carried {got} bytes but its trailer says {want}")]
    Total { want: u64, got: u64 },
    #[error("the stream's {0} digest does not match its trailer: the data was altered")]
    Digest(&'static str),
}

impl Decoder {
    /// A decoder of lane 0 with a SHA-256 digest.
    pub fn new(compression: pb::Compression) -> Self {
        Decoder {
            compression,
            lane: 0,
            next_seq: 0,
            total: 0,
            hash: Hasher::new(pb::Digest::Sha256),
        }
    }

    /// The same decoder, checking a `digest` (before any data).
    pub fn with_digest(mut self, digest: pb::Digest) -> Self {
        self.hash = Hasher::new(digest);
        self
    }

    /// The decoder of data lane `lane`.
    pub fn for_lane(compression: pb::Compression, lane: u32) -> Self {
        Decoder {
            lane,
            ..Decoder::new(compression)
        }
    }

    /// Verifies a frame and returns its raw bytes (without compression,
    /// the frame's own buffer).
    pub fn data(&mut self, frame: &pb::DumpData) -> Result<Bytes, FrameError> {
        if frame.lane != self.lane {
            return Err(FrameError::Lane {
                seq: frame.seq,
                want: self.lane,
                got: frame.lane,
            });
        }
        if frame.seq != self.next_seq {
            return Err(FrameError::Sequence {
                want: self.next_seq,
                got: frame.seq,
            });
        }
        if frame.raw_len as usize > CHUNK {
            return Err(FrameError::Length {
                seq: frame.seq,
                want: frame.raw_len,
                got: CHUNK,
            });
        }
        let got = crc32c(&frame.payload);
        if got != frame.crc32c {
            return Err(FrameError::Crc {
                seq: frame.seq,
                sent: frame.crc32c,
                got,
            });
        }
        let raw = match self.compression {
            pb::Compression::Zstd => zstd::bulk::decompress(&frame.payload, frame.raw_len as usize)
                .map(Bytes::from)
                .map_err(|e| FrameError::Decompress {
                    seq: frame.seq,
                    reason: e.to_string(),
                })?,
            _ => frame.payload.clone(),
        };
        if raw.len() != frame.raw_len as usize {
            return Err(FrameError::Length {
                seq: frame.seq,
                want: frame.raw_len,
                got: raw.len(),
            });
        }
        self.next_seq += 1;
        self.total += raw.len() as u64;
        self.hash.update(&raw);
        Ok(raw)
    }

    pub fn finish(&self, trailer: &pb::DumpTrailer) -> Result<(), FrameError> {
        if trailer.total_len != self.total {
            return Err(FrameError::Total {
                want: trailer.total_len,
                got: self.total,
            });
        }
        if self.hash.so_far() != trailer.digest {
            return Err(FrameError::Digest(match self.hash.kind() {
                pb::Digest::Sha256 => "SHA-256",
                pb::Digest::Blake3 => "BLAKE3",
                pb::Digest::Xxh3 => "XXH3-128",
            }));
        }
        Ok(())
    }

    pub fn total(&self) -> u64 {
        self.total
    }
}

/// A frame of the given kind.
pub fn frame(kind: pb::dump_frame::Kind) -> pb::DumpFrame {
    pb::DumpFrame { kind: Some(kind) }
}

/// What kind of frame `k` is, for messages.
pub fn frame_kind(k: &pb::dump_frame::Kind) -> &'static str {
    match k {
        pb::dump_frame::Kind::Header(_) => "header",
        pb::dump_frame::Kind::Data(_) => "data",
        pb::dump_frame::Kind::FileStart(_) => "file start",
        pb::dump_frame::Kind::FileEnd(_) => "file end",
        pb::dump_frame::Kind::Trailer(_) => "trailer",
        pb::dump_frame::Kind::Heartbeat(_) => "heartbeat",
        pb::dump_frame::Kind::LaneEnd(_) => "lane end",
        pb::dump_frame::Kind::TableStart(_) => "table start",
        pb::dump_frame::Kind::TableEnd(_) => "table end",
    }
}

/// Reads the next chunk of `r`: `CHUNK` bytes, fewer only at the end, and
/// empty once `r` is done.
pub async fn read_chunk(r: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(CHUNK);
    while buf.len() < CHUNK {
        if r.read_buf(&mut buf).await? == 0 {
            break;
        }
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let kinds = [pb::Compression::Zstd, pb::Compression::None]
            .into_iter()
            .flat_map(|c| {
                [pb::Digest::Sha256, pb::Digest::Blake3, pb::Digest::Xxh3].map(|d| (c, d))
            });
        for (c, d) in kinds {
            let mut enc = Encoder::new(c, None).with_digest(d);
            let mut dec = Decoder::new(c).with_digest(d);
            let chunks: Vec<Bytes> = (0..5u8)
                .map(|i| Bytes::from(vec![i; 1000 + i as usize]))
                .collect();
            for ch in &chunks {
                let f = enc.data(ch.clone()).unwrap();
                assert_eq!(&dec.data(&f).unwrap(), ch);
            }
            dec.finish(&enc.trailer()).unwrap();
            // Another digest of the same bytes does not pass.
            let other = match d {
                pb::Digest::Sha256 => pb::Digest::Blake3,
                pb::Digest::Blake3 => pb::Digest::Xxh3,
                pb::Digest::Xxh3 => pb::Digest::Sha256,
            };
            let mut wrong = Decoder::new(c).with_digest(other);
            let mut enc = Encoder::new(c, None).with_digest(d);
            for ch in &chunks {
                wrong.data(&enc.data(ch.clone()).unwrap()).unwrap();
            }
            assert!(matches!(
                wrong.finish(&enc.trailer()),
                Err(FrameError::Digest(_))
            ));
        }
    }

    /// Agents of different builds must agree on every check: the frame
    /// CRC and the XXH3-128 digest are the published functions, whatever
    /// SIMD path the CPU takes and however the bytes are cut.
    #[test]
    fn checks_are_the_published_functions() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        let long: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(crc32c(&long), 0x7247_f66b);
        for cut in [1, 64, 777, CHUNK] {
            let mut h = Hasher::new(pb::Digest::Xxh3);
            assert_eq!(
                hex::encode(h.so_far()),
                "99aa06d3014798d86001c324468d497f",
                "XXH3-128 of nothing"
            );
            for piece in long.chunks(cut) {
                h.update(piece);
            }
            assert_eq!(
                hex::encode(h.so_far()),
                "54182c58bbb1337c42c23aeead96750d",
                "XXH3-128 of 100,000 bytes in pieces of {cut}"
            );
        }
    }

    #[tokio::test]
    async fn chunks_are_full_until_the_end() {
        let piece = vec![7u8; 100 * 1024];
        let mut r = piece
            .as_slice()
            .chain(piece.as_slice())
            .chain(piece.as_slice());
        assert_eq!(read_chunk(&mut r).await.unwrap().len(), CHUNK);
        assert_eq!(read_chunk(&mut r).await.unwrap().len(), 300 * 1024 - CHUNK);
        assert!(read_chunk(&mut r).await.unwrap().is_empty());
    }

    #[test]
    fn corruption_is_caught() {
        let mut enc = Encoder::new(pb::Compression::Zstd, Some(1));
        let mut dec = Decoder::new(pb::Compression::Zstd);
        dec.data(&enc.data(Bytes::from_static(b"hello")).unwrap())
            .unwrap();
        let bad = enc.data(Bytes::from_static(b"world")).unwrap();
        assert!(matches!(
            dec.data(&bad),
            Err(FrameError::Crc { seq: 1, .. })
        ));
    }

    #[test]
    fn missing_or_reordered_frames_are_caught() {
        let mut enc = Encoder::new(pb::Compression::None, None);
        let mut dec = Decoder::new(pb::Compression::None);
        let _skipped = enc.data(Bytes::from_static(b"a")).unwrap();
        let second = enc.data(Bytes::from_static(b"b")).unwrap();
        assert!(matches!(
            dec.data(&second),
            Err(FrameError::Sequence { want: 0, got: 1 })
        ));
        let dec = Decoder::new(pb::Compression::None);
        assert!(matches!(
            dec.finish(&enc.trailer()),
            Err(FrameError::Total { .. })
        ));
    }
}
