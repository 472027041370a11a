//! A pair's S3 copies (`[[pairs.NAME.copies]]`): each one's buckets, the
//! credentials of each side, its delete limits, transfer settings and
//! filters.

use stagesync_proto::tomlfile::ConfigError;
use stagesync_s3::{CopySpec, S3Location, SideConfig};

use super::pair::PairCheck;
use super::raw::{RawCopy, S};
use super::scope::Scope;

impl PairCheck<'_> {
    pub(super) fn copies(&self) -> Result<Vec<CopySpec>, ConfigError> {
        let all = &self.raw.copies;
        all.iter()
            .enumerate()
            .map(|(i, c)| {
                let check = CopyCheck {
                    at: self.at.under(&format!("copies[{i}]")),
                    copy: c,
                };
                check.validate(all)
            })
            .collect()
    }
}

/// One copy being validated, its errors under `pairs.NAME.copies[N]`.
struct CopyCheck<'a> {
    at: Scope<'a>,
    copy: &'a S<RawCopy>,
}

impl CopyCheck<'_> {
    /// `all`: the pair's copies, whose names must differ.
    fn validate(&self, all: &[S<RawCopy>]) -> Result<CopySpec, ConfigError> {
        let r = self.copy.get_ref();
        self.unique_name(all)?;
        let (source, dest) = self.places()?;
        self.one_way_to_name_profiles()?;
        let mut spec = CopySpec::new(r.name.get_ref().clone(), source, dest);
        spec.source_side = side(r, &r.source_profile, &r.source_region, &r.source_endpoint);
        spec.dest_side = side(r, &r.dest_profile, &r.dest_region, &r.dest_endpoint);
        if let Some(why) = spec.overlap() {
            return self.at.err(r.dest.span(), "dest", why);
        }
        spec.include = r.include.clone();
        spec.exclude = r.exclude.clone();
        spec.delete = r.delete.unwrap_or(true);
        self.delete_limits(&mut spec)?;
        self.transfer(&mut spec)?;
        self.globs(&spec)?;
        Ok(spec)
    }

    fn unique_name(&self, all: &[S<RawCopy>]) -> Result<(), ConfigError> {
        let name = &self.copy.get_ref().name;
        let same = all
            .iter()
            .filter(|o| o.get_ref().name.get_ref() == name.get_ref())
            .count();
        if name.get_ref().is_empty() || same > 1 {
            return self.at.err(
                name.span(),
                "name",
                format!(
                    "copy names must be unique and not empty ({:?})",
                    name.get_ref()
                ),
            );
        }
        Ok(())
    }

    /// The source and destination, which must differ.
    fn places(&self) -> Result<(S3Location, S3Location), ConfigError> {
        let r = self.copy.get_ref();
        let parse = |url: &S<String>, key: &str| {
            S3Location::parse(url.get_ref()).map_err(|e| self.at.error(url.span(), key, e))
        };
        let source = parse(&r.source, "source")?;
        let dest = parse(&r.dest, "dest")?;
        if source == dest {
            return self
                .at
                .err(r.dest.span(), "dest", "the copy writes into its own source");
        }
        Ok((source, dest))
    }

    fn one_way_to_name_profiles(&self) -> Result<(), ConfigError> {
        let r = self.copy.get_ref();
        if let Some(p) = &r.profile
            && (r.source_profile.is_some() || r.dest_profile.is_some())
        {
            return self.at.err(
                p.span(),
                "profile",
                "use either profile (both sides) or source_profile/dest_profile",
            );
        }
        Ok(())
    }

    fn delete_limits(&self, spec: &mut CopySpec) -> Result<(), ConfigError> {
        let r = self.copy.get_ref();
        if let Some(n) = r.max_delete {
            spec.delete_limit.max_count = Some(n);
        }
        if let Some(pct) = &r.max_delete_percent {
            if !(0.0..=100.0).contains(pct.get_ref()) {
                return self
                    .at
                    .err(pct.span(), "max_delete_percent", "must be 0 to 100");
            }
            spec.delete_limit.max_percent = Some(*pct.get_ref());
        }
        Ok(())
    }

    /// Concurrency, multipart threshold and listing.
    fn transfer(&self, spec: &mut CopySpec) -> Result<(), ConfigError> {
        let r = self.copy.get_ref();
        if let Some(n) = &r.concurrency {
            if *n.get_ref() == 0 || *n.get_ref() > 1024 {
                return self.at.err(n.span(), "concurrency", "must be 1 to 1024");
            }
            spec.concurrency = *n.get_ref();
        }
        if let Some(t) = r.multipart_threshold {
            spec.multipart_threshold = t;
        }
        if let Some(l) = &r.listing {
            spec.listing = match l.get_ref().parse() {
                Ok(mode) => mode,
                Err(e) => return self.at.err(l.span(), "listing", &e),
            };
        }
        Ok(())
    }

    fn globs(&self, spec: &CopySpec) -> Result<(), ConfigError> {
        for (globs, k) in [(&spec.include, "include"), (&spec.exclude, "exclude")] {
            for g in globs {
                if let Err(e) = globset::Glob::new(g) {
                    return self.at.err(
                        self.copy.span(),
                        k,
                        format!("bad glob {g:?}: {}", e.kind()),
                    );
                }
            }
        }
        Ok(())
    }
}

/// One side's credentials: its own setting, else the one for both sides.
fn side(
    r: &RawCopy,
    profile: &Option<S<String>>,
    region: &Option<String>,
    endpoint: &Option<String>,
) -> SideConfig {
    SideConfig {
        profile: profile
            .as_ref()
            .or(r.profile.as_ref())
            .map(|p| p.get_ref().clone()),
        region: region.clone().or(r.region.clone()),
        endpoint: endpoint.clone().or(r.endpoint.clone()),
    }
}
