//! A variable as loaded: its YAML value and where it was set, and reading
//! it as Ansible would (a single value, a truthy switch), refusing what
//! stagesync cannot evaluate.

use std::path::PathBuf;

use marked_yaml::{Node, Span};
use stagesync_proto::tomlfile::ConfigError;

/// A variable's value and where it was set.
#[derive(Clone)]
pub(super) struct Var {
    pub(super) file: PathBuf,
    pub(super) line: usize,
    pub(super) node: Node,
}

impl Var {
    /// An error at the line the variable was set on.
    pub(super) fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        self.error_at(self.line, key, message)
    }

    /// An error at `node`'s line, inside the variable's value.
    pub(super) fn at(&self, node: &Node, key: &str, message: impl Into<String>) -> ConfigError {
        self.error_at(line_of(node).unwrap_or(self.line), key, message)
    }

    /// An error at `span`'s line, inside the variable's value.
    pub(super) fn at_span(
        &self,
        span: &Span,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        self.error_at(start_line(span).unwrap_or(self.line), key, message)
    }

    fn error_at(&self, line: usize, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line,
            key: key.to_string(),
            message: message.into(),
        }
    }
}

pub(super) fn line_of(node: &Node) -> Option<usize> {
    start_line(node.span())
}

pub(super) fn start_line(span: &Span) -> Option<usize> {
    span.start().map(|m| m.line())
}

/// A scalar's text; refused when it is a list or mapping, or a template.
pub(super) fn scalar(var: &Var, key: &str) -> Result<String, ConfigError> {
    let Some(s) = var.node.as_scalar() else {
        return Err(var.err(key, "expected a single value, found a list or mapping"));
    };
    let text = s.as_str().to_string();
    if text.contains("{{") || text.contains("{%") {
        return Err(var.err(
            key,
            format!("{text:?} is a Jinja template; stagesync does not evaluate templates: write the value itself"),
        ));
    }
    Ok(text)
}

/// Ansible's truthy values.
pub(super) fn boolean(var: &Var, key: &str) -> Result<bool, ConfigError> {
    let text = scalar(var, key)?;
    match text.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" | "y" => Ok(true),
        "false" | "no" | "off" | "0" | "n" | "" => Ok(false),
        _ => Err(var.err(key, format!("{text:?} is not true or false"))),
    }
}
