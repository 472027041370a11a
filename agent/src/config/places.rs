//! Where backups may go and come from: `policy.may_backup_to` and
//! `policy.may_restore_from`, globs over `s3://bucket/prefix` (AWS) or
//! `https://host:port/bucket/prefix` (another S3 server).
//!
//! A pattern is matched part by part, never as one string: its server and
//! bucket parts are globs that stay inside their part, so no `*` can reach
//! across a `/`, `:` or `@` into another server or bucket; only the prefix
//! part's `*` crosses `/` (`db1/*` is everything under `db1/`). And a place
//! is matched only once its server is a plain `scheme://host[:port]`, with
//! no user part, path or query.

use globset::{Glob, GlobBuilder, GlobMatcher};

/// A place a request names, checked and split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place<'a> {
    /// `scheme://host[:port]`, none for AWS itself.
    pub server: Option<&'a str>,
    pub bucket: &'a str,
    /// Empty or ending with `/`.
    pub prefix: &'a str,
}

/// One pattern, part by part.
#[derive(Clone, Debug)]
struct PlacePattern {
    /// None: AWS itself (`s3://`).
    server: Option<GlobMatcher>,
    bucket: GlobMatcher,
    prefix: GlobMatcher,
}

/// The patterns of one policy key.
#[derive(Clone, Debug)]
pub struct PlacePatterns {
    pub patterns: Vec<String>,
    list: Vec<PlacePattern>,
}

/// A glob that cannot match `/` (server and bucket parts).
fn part_glob(text: &str) -> Result<GlobMatcher, String> {
    GlobBuilder::new(text)
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("bad glob {text:?}: {}", e.kind()))
}

impl PlacePattern {
    fn parse(text: &str) -> Result<PlacePattern, String> {
        let (server, rest) = if let Some(rest) = text.strip_prefix("s3://") {
            (None, rest)
        } else if let Some((scheme, rest)) = text.split_once("://")
            && ["http", "https"].contains(&scheme)
        {
            let (authority, rest) = rest.split_once('/').unwrap_or((rest, ""));
            if authority.is_empty() || authority.contains('@') {
                return Err(format!(
                    "{text:?}: the server must be scheme://host[:port], with no user part"
                ));
            }
            (Some(part_glob(&format!("{scheme}://{authority}"))?), rest)
        } else {
            return Err(format!(
                "{text:?}: use s3://BUCKET/PREFIX (AWS) or https://HOST:PORT/BUCKET/PREFIX"
            ));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("{text:?}: no bucket"));
        }
        let prefix = Glob::new(prefix)
            .map(|g| g.compile_matcher())
            .map_err(|e| format!("bad glob {prefix:?} in {text:?}: {}", e.kind()))?;
        Ok(PlacePattern {
            server,
            bucket: part_glob(bucket)?,
            prefix,
        })
    }

    fn matches(&self, place: &Place<'_>) -> bool {
        let server = match (&self.server, place.server) {
            (None, None) => true,
            (Some(glob), Some(server)) => glob.is_match(server),
            _ => false,
        };
        server && self.bucket.is_match(place.bucket) && self.prefix.is_match(place.prefix)
    }
}

impl PlacePatterns {
    pub fn new(patterns: &[String]) -> Result<Self, String> {
        let list = patterns
            .iter()
            .map(|p| PlacePattern::parse(p))
            .collect::<Result<_, _>>()?;
        Ok(PlacePatterns {
            patterns: patterns.to_vec(),
            list,
        })
    }

    pub fn matches(&self, place: &Place<'_>) -> bool {
        self.list.iter().any(|p| p.matches(place))
    }
}

/// Checks a place's parts: a plain `scheme://host[:port]` server (if any),
/// a bucket name, a prefix that is empty or ends with `/`.
pub fn place<'a>(server: &'a str, bucket: &'a str, prefix: &'a str) -> Result<Place<'a>, String> {
    let server = match server.trim_end_matches('/') {
        "" => None,
        s => Some(check_server(s)?),
    };
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    if !bucket_ok {
        return Err(format!("bucket {bucket:?} is not a bucket name"));
    }
    if !(prefix.is_empty() || prefix.ends_with('/')) {
        return Err(format!("prefix {prefix:?} must end with '/'"));
    }
    Ok(Place {
        server,
        bucket,
        prefix,
    })
}

/// `scheme://host[:port]`, nothing else.
fn check_server(s: &str) -> Result<&str, String> {
    let bad = || format!("endpoint {s:?} is not http(s)://host[:port]");
    let (scheme, authority) = s.split_once("://").ok_or_else(bad)?;
    if !["http", "https"].contains(&scheme) {
        return Err(bad());
    }
    let (host, port) = split_host_port(authority).ok_or_else(bad)?;
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        }
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    if host_ok && port_ok {
        Ok(s)
    } else {
        Err(bad())
    }
}

/// `host` and the port after its last `:` (an IPv6 host is bracketed).
fn split_host_port(authority: &str) -> Option<(&str, Option<&str>)> {
    if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, rest) = authority.split_at(end + 1);
        return match rest {
            "" => Some((host, None)),
            r => Some((host, Some(r.strip_prefix(':')?))),
        };
    }
    match authority.split_once(':') {
        Some((h, p)) => Some((h, Some(p))),
        None => Some((authority, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(p: &[&str]) -> PlacePatterns {
        PlacePatterns::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn a_star_stays_in_its_part() {
        let local = patterns(&["http://127.0.0.1:*/bk1/*"]);
        let ok = place("http://127.0.0.1:9000", "bk1", "x/").unwrap();
        assert!(local.matches(&ok));
        // Another bucket on that server: the port's `*` does not reach it.
        let other = place("http://127.0.0.1:9000", "evil", "bk1/x/").unwrap();
        assert!(!local.matches(&other));
        // A user part pointing elsewhere is not a server at all.
        assert!(place("http://127.0.0.1:1@evil.example:9000", "bk1", "").is_err());
        assert!(place("http://127.0.0.1:9000.evil.example", "bk1", "").is_err());
        assert!(place("http://127.0.0.1:9000/path", "bk1", "").is_err());
        // Another host.
        let far = place("http://10.0.0.9:9000", "bk1", "").unwrap();
        assert!(!local.matches(&far));
        // AWS places match only s3:// patterns, and the other way round.
        assert!(!local.matches(&place("", "bk1", "").unwrap()));
        assert!(!patterns(&["s3://bk1/*"]).matches(&ok));
    }

    #[test]
    fn a_prefix_star_covers_everything_below() {
        let db1 = patterns(&["s3://example-backups/db1/*"]);
        for prefix in ["db1/", "db1/daily/", "db1/daily/production/"] {
            assert!(
                db1.matches(&place("", "example-backups", prefix).unwrap()),
                "{prefix}"
            );
        }
        for prefix in ["", "hr/", "db10/", "hr/db1/"] {
            assert!(
                !db1.matches(&place("", "example-backups", prefix).unwrap()),
                "{prefix}"
            );
        }
    }

    #[test]
    fn malformed_patterns_are_refused() {
        for bad in [
            "",
            "b1/x",
            "ftp://h/b1/",
            "http:///b1/",
            "http://u@h/b1/",
            "s3:///x",
        ] {
            assert!(PlacePatterns::new(&[bad.to_string()]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn servers_are_plain() {
        for ok in [
            "http://127.0.0.1:9000",
            "https://s3.example.com",
            "http://[::1]:9000/",
        ] {
            assert!(place(ok, "b1x", "").is_ok(), "{ok}");
        }
        for bad in [
            "127.0.0.1:9000",
            "http://h:port",
            "http://h:1:2",
            "http://[::1",
            "http://h?x",
        ] {
            assert!(place(bad, "b1x", "").is_err(), "{bad}");
        }
    }

    /// The example configurations as shipped: the production agent may
    /// upload the example plan's backups, the staging agent restore them
    /// (from the database's folder, as the controller asks).
    #[test]
    fn the_shipped_examples_allow_the_shipped_plans_backups() {
        let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
        let read = |file: &str| -> toml::Table {
            toml::from_str(&std::fs::read_to_string(examples.join(file)).unwrap()).unwrap()
        };
        let list = |t: &toml::Table, key: &str| -> PlacePatterns {
            let v: Vec<String> = t["policy"][key]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect();
            PlacePatterns::new(&v).unwrap()
        };
        let backup_to = list(&read("agent-production.toml"), "may_backup_to");
        let restore_from = list(&read("agent-staging.toml"), "may_restore_from");
        let plan = read("stagesync.toml");
        let daily = plan["backups"]["daily"].as_str().unwrap();
        let (bucket, prefix) = daily
            .strip_prefix("s3://")
            .unwrap()
            .split_once('/')
            .unwrap();
        assert!(
            backup_to.matches(&place("", bucket, prefix).unwrap()),
            "{daily}"
        );
        let folder = format!("{prefix}production/");
        assert!(
            restore_from.matches(&place("", bucket, &folder).unwrap()),
            "{folder}"
        );
        let elsewhere = place("", bucket, "hr/daily/production/").unwrap();
        assert!(!restore_from.matches(&elsewhere));
    }
}
