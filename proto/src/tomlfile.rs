//! TOML files a person writes (the agent's configuration, the fleet plan):
//! errors that name the file, the line and the dotted key.

use std::fmt;
use std::path::{Path, PathBuf};

/// A configuration error: file, line, key and what is wrong.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the problem is the file as a whole.
    pub line: usize,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}: {}: {}",
                self.file.display(),
                self.line,
                self.key,
                self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// A TOML file's path and text, for locating errors.
pub struct TomlFile<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

impl TomlFile<'_> {
    pub fn line_of(&self, offset: usize) -> usize {
        let offset = offset.min(self.text.len());
        self.text[..offset].bytes().filter(|b| *b == b'\n').count() + 1
    }

    pub fn error(
        &self,
        span: std::ops::Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.path.to_path_buf(),
            line: self.line_of(span.start),
            key: key.to_string(),
            message: message.into(),
        }
    }

    pub fn err<T>(
        &self,
        span: std::ops::Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> Result<T, ConfigError> {
        Err(self.error(span, key, message))
    }

    /// The dotted key at a line: the table header above it plus the key before `=`.
    pub fn key_at(&self, line: usize) -> String {
        let lines: Vec<&str> = self.text.lines().collect();
        let Some(here) = lines.get(line.saturating_sub(1)) else {
            return String::new();
        };
        let here = here.trim();
        if here.starts_with('[') {
            return here.trim_matches(['[', ']', ' ']).to_string();
        }
        let key = here.split('=').next().unwrap_or("").trim().to_string();
        let table = lines[..line.saturating_sub(1)]
            .iter()
            .rev()
            .map(|l| l.trim())
            .find(|l| l.starts_with('['))
            .map(|l| l.trim_matches(['[', ']', ' ']).to_string());
        match table {
            Some(t) if !key.is_empty() => format!("{t}.{key}"),
            Some(t) => t,
            None => key,
        }
    }

    /// A parse error (syntax, unknown key, wrong type, missing key) with the
    /// file, line and dotted key it concerns. `example` says where a correct
    /// file can be seen.
    pub fn toml_error(&self, e: &toml::de::Error, example: &str) -> ConfigError {
        let message = e.message().trim().to_string();
        let line = e.span().map(|s| self.line_of(s.start)).unwrap_or(0);
        let mut key = if line > 0 {
            self.key_at(line)
        } else {
            String::new()
        };
        // serde names the missing field; the span covers its whole table.
        if let Some(field) = message
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next())
        {
            key = if key.is_empty()
                || !self
                    .text
                    .lines()
                    .nth(line.saturating_sub(1))
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('[')
            {
                field.to_string()
            } else {
                format!("{key}.{field}")
            };
        }
        let hint: &str = if message.starts_with("unknown field") {
            "; remove it or fix its spelling"
        } else if message.starts_with("missing field") {
            &format!("; add it ({example})")
        } else {
            ""
        };
        ConfigError {
            file: self.path.to_path_buf(),
            line: line.max(1),
            key: if key.is_empty() { "(file)".into() } else { key },
            message: format!("{message}{hint}"),
        }
    }

    pub fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(p)
        }
    }
}
