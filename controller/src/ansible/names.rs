//! Names the imported plan gives (pairs, copies, environment variables,
//! git refs) and the TOML literals it writes.

use std::path::Path;

/// `origin/master` (the role's form) → `refs/heads/master`.
pub(super) fn git_ref(branch: &str) -> String {
    if branch.starts_with("refs/") {
        return branch.to_string();
    }
    let name = branch
        .split_once('/')
        .map(|(_, rest)| rest)
        .unwrap_or(branch);
    format!("refs/heads/{name}")
}

/// A TOML string literal.
pub(super) fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

pub(super) fn q_list(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|s| q(s)).collect();
    format!("[{}]", items.join(", "))
}

/// A pair name from a vars file name: `vars/prod-to-stage1.yml` → `prod-to-stage1`.
pub(super) fn pair_name(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let mut name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    name = name.trim_matches('-').to_string();
    if name.is_empty() || !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        name = format!("pair-{name}");
    }
    name
}

/// An environment variable name for one of a pair's secrets.
pub(super) fn env_name(pair: &str, what: &str) -> String {
    let base: String = pair
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("{base}_{what}")
}

/// A copy name from the role's free-text description.
pub(super) fn copy_name(description: Option<&str>, index: usize) -> String {
    let slug: String = description
        .unwrap_or("")
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect::<String>()
        .split('-')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    if slug.is_empty() {
        format!("copy-{}", index + 1)
    } else {
        slug.chars()
            .take(48)
            .collect::<String>()
            .trim_end_matches('-')
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_files_and_descriptions() {
        assert_eq!(
            pair_name(Path::new("vars/Prod to Stage.yml")),
            "prod-to-stage"
        );
        assert_eq!(git_ref("origin/main"), "refs/heads/main");
        assert_eq!(git_ref("develop"), "refs/heads/develop");
        assert_eq!(git_ref("refs/tags/v1"), "refs/tags/v1");
        assert_eq!(
            copy_name(Some("Production → stage media!"), 0),
            "production-stage-media"
        );
        assert_eq!(copy_name(None, 2), "copy-3");
        assert_eq!(
            env_name("prod-to-stage1", "SOCIAL_SECRET"),
            "PROD_TO_STAGE1_SOCIAL_SECRET"
        );
    }
}
