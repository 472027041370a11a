//! The rules of a stream's [`Shape`]: what a shape may ask for, and when
//! what a stream carries stays within what was agreed.
//!
//! Both agents and the controller apply these same rules, so "the shape"
//! is decided once (by the controller) and only checked afterwards.

use crate::MAX_DATA_LANES;
use crate::v1::{Digest, Mode, Shape};

impl Shape {
    /// One pass: the whole dump in one stream, nothing apart.
    pub fn one_pass(mode: Mode) -> Shape {
        Shape {
            mode: mode as i32,
            post_data_file: false,
            data_lanes: 0,
            digest: Digest::Sha256 as i32,
            binary_rows: false,
        }
    }

    /// The digest, unless its value is unknown.
    pub fn stream_digest(&self) -> Option<Digest> {
        Digest::try_from(self.digest).ok()
    }

    /// The mode, unspecified when the value is unknown.
    pub fn stream_mode(&self) -> Mode {
        Mode::try_from(self.mode).unwrap_or(Mode::Unspecified)
    }

    /// Data lanes the stream carries: at least one.
    pub fn lanes(&self) -> u32 {
        self.data_lanes.max(1)
    }

    /// Checks that the shape makes sense on its own.
    pub fn check(&self) -> Result<(), String> {
        match self.stream_mode() {
            Mode::Unspecified => return Err("mode must be stream".into()),
            Mode::Parallel => {
                return Err(
                    "parallel mode was retired (copy lanes are faster): upgrade the controller"
                        .into(),
                );
            }
            Mode::Stream => {}
        }
        if self.lanes() > 1 && !self.post_data_file {
            return Err("data lanes need the post-data file".into());
        }
        if self.binary_rows && self.lanes() < 2 {
            return Err("binary rows need copy lanes".into());
        }
        if self.lanes() > MAX_DATA_LANES {
            return Err(format!(
                "{} data lanes: at most {MAX_DATA_LANES}",
                self.data_lanes
            ));
        }
        if self.stream_digest().is_none() {
            return Err(format!(
                "digest {} is unknown to this version: upgrade the agents together",
                self.digest
            ));
        }
        Ok(())
    }

    /// Checks that a stream of this shape fits a job prepared for
    /// `agreed`: the same mode and digest, a post-data file only if agreed,
    /// no more lanes than agreed.
    pub fn fits_within(&self, agreed: &Shape) -> Result<(), String> {
        self.check()?;
        if self.digest != agreed.digest {
            return Err(format!(
                "the stream is hashed with {:?}; the job was prepared for {:?}",
                self.stream_digest(),
                agreed.stream_digest()
            ));
        }
        if self.stream_mode() != agreed.stream_mode() {
            return Err(format!(
                "the stream is in {:?} mode; the job was prepared for {:?}",
                self.stream_mode(),
                agreed.stream_mode()
            ));
        }
        if self.post_data_file && !agreed.post_data_file {
            return Err(
                "the stream announces a separate post-data file; the job was prepared without one"
                    .into(),
            );
        }
        if self.lanes() > agreed.lanes() {
            return Err(format!(
                "the stream announces {} data lanes; the job was prepared for at most {}",
                self.lanes(),
                agreed.lanes()
            ));
        }
        if self.binary_rows && !agreed.binary_rows {
            return Err(
                "the stream announces binary COPY rows; the job was prepared for text only (agents of other versions? upgrade them together)".into(),
            );
        }
        Ok(())
    }

    /// The most of `self` a source can send: lower, never higher.
    pub fn lowered(&self, post_data_file: bool, data_lanes: u32) -> Shape {
        let post_data_file = self.post_data_file && post_data_file;
        let data_lanes = if post_data_file && data_lanes > 1 {
            data_lanes.min(self.lanes())
        } else {
            0
        };
        Shape {
            mode: self.mode,
            post_data_file,
            data_lanes,
            digest: self.digest,
            binary_rows: self.binary_rows && data_lanes > 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(lanes: u32) -> Shape {
        Shape {
            mode: Mode::Stream as i32,
            post_data_file: true,
            data_lanes: lanes,
            digest: Digest::Sha256 as i32,
            binary_rows: false,
        }
    }

    #[test]
    fn incoherent_shapes_are_refused() {
        assert!(Shape::one_pass(Mode::Stream).check().is_ok());
        assert!(Shape::one_pass(Mode::Parallel).check().is_err(), "retired");
        assert!(Shape::one_pass(Mode::Unspecified).check().is_err());
        assert!(split(4).check().is_ok());
        assert!(split(MAX_DATA_LANES + 1).check().is_err());
        let mut lanes_alone = split(3);
        lanes_alone.post_data_file = false;
        assert!(lanes_alone.check().is_err(), "lanes without the file");
        let mut unknown = split(2);
        unknown.digest = 9;
        assert!(unknown.check().is_err(), "an unknown digest");
    }

    #[test]
    fn a_stream_may_carry_less_than_agreed_never_more() {
        let agreed = split(4);
        assert!(split(4).fits_within(&agreed).is_ok());
        assert!(split(2).fits_within(&agreed).is_ok());
        assert!(split(0).fits_within(&agreed).is_ok());
        assert!(Shape::one_pass(Mode::Stream).fits_within(&agreed).is_ok());
        assert!(split(5).fits_within(&agreed).is_err(), "more lanes");
        let one = Shape::one_pass(Mode::Stream);
        assert!(split(0).fits_within(&one).is_err(), "a file not agreed");
        assert!(
            Shape::one_pass(Mode::Parallel).fits_within(&one).is_err(),
            "another mode"
        );
        let mut blake3 = split(2);
        blake3.digest = Digest::Blake3 as i32;
        assert!(blake3.fits_within(&agreed).is_err(), "another digest");
        assert_eq!(blake3.lowered(true, 1).digest, Digest::Blake3 as i32);
        let mut binary = split(2);
        binary.binary_rows = true;
        assert!(
            binary.fits_within(&agreed).is_err(),
            "binary rows not agreed"
        );
        let mut binary_agreed = agreed;
        binary_agreed.binary_rows = true;
        assert!(binary.fits_within(&binary_agreed).is_ok());
        assert!(split(2).fits_within(&binary_agreed).is_ok(), "text is less");
        let mut binary_alone = Shape::one_pass(Mode::Stream);
        binary_alone.binary_rows = true;
        assert!(binary_alone.check().is_err(), "binary rows without lanes");
    }

    #[test]
    fn lowering_never_raises() {
        let agreed = split(4);
        assert_eq!(agreed.lowered(true, 8), split(4));
        assert_eq!(agreed.lowered(true, 3), split(3));
        assert_eq!(agreed.lowered(true, 1), split(0));
        assert_eq!(agreed.lowered(false, 4), Shape::one_pass(Mode::Stream));
        let one = Shape::one_pass(Mode::Stream);
        assert_eq!(one.lowered(true, 4), one);
        let mut binary = split(4);
        binary.binary_rows = true;
        assert!(binary.lowered(true, 2).binary_rows);
        assert!(
            !binary.lowered(true, 1).binary_rows,
            "no lanes, no binary rows"
        );
    }
}
