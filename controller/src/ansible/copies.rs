//! `stagesync_copies`, the role's bucket copies, turned into
//! `[[pairs.NAME.copies]]` tables. The role runs `rclone sync --checksum`,
//! a mirror, which is stagesync's default, so no delete setting is written.

use std::fmt::Write as _;

use marked_yaml::Node;
use marked_yaml::types::MarkedMappingNode;
use stagesync_proto::tomlfile::ConfigError;

use super::names::{copy_name, q};
use super::value::Var;

const KEY: &str = "stagesync_copies";

/// Keys of one `stagesync_copies` item.
const COPY_KEYS: &[&str] = &[
    "description",
    "source_bucket",
    "source_path",
    "dest_bucket",
    "dest_path",
    "aws_profile",
];

/// The copies tables of pair `pair`; `region` is the role's, for all of them.
pub(super) fn copies(
    v: &Var,
    pair: &str,
    region: Option<&str>,
    warn: &mut dyn FnMut(ConfigError),
) -> Result<String, ConfigError> {
    let items: &[Node] = match &v.node {
        Node::Sequence(items) => items,
        Node::Scalar(s) if s.as_str().is_empty() || s.as_str() == "[]" => &[],
        _ => {
            return Err(v.err(
                KEY,
                "expected a list of copies ({source_bucket, source_path, dest_bucket, dest_path, aws_profile})",
            ));
        }
    };
    let mut out = String::new();
    let mut names = Vec::new();
    for (index, node) in items.iter().enumerate() {
        let Some(map) = node.as_mapping() else {
            return Err(v.at(node, KEY, format!("item {} must be a mapping", index + 1)));
        };
        let item = Item {
            var: v,
            node,
            map,
            index,
        };
        item.report_unknown_keys(warn);
        let copy = item.read()?;
        // Two copies described alike still need two names.
        let mut name = copy_name(copy.description.as_deref(), index);
        if names.contains(&name) {
            name = format!("{name}-{}", index + 1);
        }
        names.push(name.clone());
        copy.write(&mut out, pair, &name, region);
    }
    Ok(out)
}

/// One item of the list, and where it is.
struct Item<'a> {
    var: &'a Var,
    node: &'a Node,
    map: &'a MarkedMappingNode,
    index: usize,
}

/// What one item says.
struct Copy {
    source: String,
    dest: String,
    description: Option<String>,
    profile: Option<String>,
}

impl Item<'_> {
    fn report_unknown_keys(&self, warn: &mut dyn FnMut(ConfigError)) {
        for (k, _) in self.map.iter() {
            if !COPY_KEYS.contains(&k.as_str()) {
                warn(self.var.at_span(
                    k.span(),
                    &format!("{KEY}[{}].{}", self.index, k.as_str()),
                    format!(
                        "unknown key, left out (the role reads {})",
                        COPY_KEYS.join(", ")
                    ),
                ));
            }
        }
    }

    fn read(&self) -> Result<Copy, ConfigError> {
        let source_bucket = self.required("source_bucket")?;
        let dest_bucket = self.required("dest_bucket")?;
        let source_path = self.optional("source_path")?.unwrap_or_default();
        let dest_path = self.optional("dest_path")?.unwrap_or_default();
        Ok(Copy {
            source: s3_url(&source_bucket, &source_path),
            dest: s3_url(&dest_bucket, &dest_path),
            description: self.optional("description")?,
            profile: self.optional("aws_profile")?,
        })
    }

    fn required(&self, field: &str) -> Result<String, ConfigError> {
        match self.optional(field)? {
            Some(value) => Ok(value),
            None => Err(self.var.at(
                self.node,
                &format!("{KEY}[{}]", self.index),
                format!("{field} is missing"),
            )),
        }
    }

    fn optional(&self, field: &str) -> Result<Option<String>, ConfigError> {
        let Some(n) = self.map.get(field) else {
            return Ok(None);
        };
        let key = format!("{KEY}[{}].{field}", self.index);
        match n.as_scalar() {
            Some(s) if s.as_str().contains("{{") => Err(self.var.at(
                n,
                &key,
                "a Jinja template; stagesync does not evaluate templates: write the value itself",
            )),
            Some(s) => Ok(Some(s.as_str().to_string())),
            None => Err(self.var.at(n, &key, "expected a single value")),
        }
    }
}

/// The role's bucket and path as a prefix URL: a path names a folder.
fn s3_url(bucket: &str, path: &str) -> String {
    let path = path.trim_start_matches('/');
    if path.is_empty() || path.ends_with('/') {
        format!("s3://{bucket}/{path}")
    } else {
        format!("s3://{bucket}/{path}/")
    }
}

impl Copy {
    fn write(&self, out: &mut String, pair: &str, name: &str, region: Option<&str>) {
        let _ = writeln!(out, "\n[[pairs.{pair}.copies]]");
        if let Some(d) = &self.description {
            let _ = writeln!(out, "# {}", d.replace('\n', " "));
        }
        let _ = writeln!(out, "name = {}", q(name));
        let _ = writeln!(out, "source = {}", q(&self.source));
        let _ = writeln!(out, "dest = {}", q(&self.dest));
        if let Some(p) = &self.profile {
            let _ = writeln!(out, "profile = {}", q(p));
        }
        if let Some(r) = region {
            let _ = writeln!(out, "region = {}", q(r));
        }
    }
}
