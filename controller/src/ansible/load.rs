//! Reading one vars file: its top-level variables, each with the line it is
//! set on, and YAML errors said in terms of an Ansible vars file.

use std::collections::BTreeMap;
use std::path::Path;

use marked_yaml::{LoaderOptions, loader::LoadError};
use stagesync_proto::tomlfile::ConfigError;

use super::VarsFile;
use super::value::{Var, line_of, start_line};

impl VarsFile {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| file_error(path, 0, format!("cannot read: {e}")))?;
        Ok(VarsFile {
            path: path.to_path_buf(),
            text,
        })
    }
}

/// Parses one YAML file into its top-level variables.
pub(super) fn load(file: &VarsFile) -> Result<BTreeMap<String, Var>, ConfigError> {
    // A file of comments and document markers sets nothing, where the YAML
    // parser would see no mapping at all.
    let meaningful = file.text.lines().any(|l| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with('#') && t != "---" && t != "..."
    });
    if !meaningful {
        return Ok(BTreeMap::new());
    }
    let options = LoaderOptions::default().error_on_duplicate_keys(true);
    let root = marked_yaml::parse_yaml_with_options(0, &file.text, options)
        .map_err(|e| yaml_error(&file.path, e))?;
    let Some(map) = root.as_mapping() else {
        return Err(file_error(
            &file.path,
            line_of(&root).unwrap_or(1),
            "expected a mapping of variables".into(),
        ));
    };
    Ok(map
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                Var {
                    file: file.path.clone(),
                    line: start_line(k.span()).unwrap_or(0),
                    node: v.clone(),
                },
            )
        })
        .collect())
}

/// An error about a file as a whole, or one of its lines.
pub(super) fn file_error(path: &Path, line: usize, message: String) -> ConfigError {
    ConfigError {
        file: path.to_path_buf(),
        line,
        key: String::new(),
        message,
    }
}

fn yaml_error(path: &Path, e: LoadError) -> ConfigError {
    let err = |line: usize, message: String| file_error(path, line, message);
    match e {
        LoadError::TopLevelMustBeMapping(m) => err(
            m.line(),
            "expected a mapping of variables (`name: value` lines), as in an Ansible vars file"
                .into(),
        ),
        LoadError::ScanError(m, e) => err(m.line(), format!("not valid YAML: {e}")),
        LoadError::DuplicateKey(d) => ConfigError {
            file: path.to_path_buf(),
            line: start_line(d.key.span()).unwrap_or(0),
            key: d.key.as_str().to_string(),
            message: format!(
                "set twice (first on line {})",
                start_line(d.prev_key.span()).unwrap_or(0)
            ),
        },
        LoadError::UnexpectedAnchor(m) => err(
            m.line(),
            "YAML anchors are not supported here: write the values out".into(),
        ),
        LoadError::UnexpectedTag(m) => err(
            m.line(),
            "YAML tags (such as !vault) are not supported here".into(),
        ),
        LoadError::MappingKeyMustBeScalar(m) => {
            err(m.line(), "variable names must be plain strings".into())
        }
        other => err(0, format!("not valid YAML: {other:?}")),
    }
}
