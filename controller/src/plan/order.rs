//! The pairs' `after` lists as a graph: every name must be a pair, there
//! must be no cycle, and the pairs run in an order that honours them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use stagesync_proto::tomlfile::{ConfigError, TomlFile};

use super::raw::{RawPair, S};
use super::{Plan, PlanPair};

/// Refuses an `after` naming no pair, then a cycle.
pub(super) fn check_after(
    f: &TomlFile<'_>,
    raw: &BTreeMap<String, S<RawPair>>,
    pairs: &BTreeMap<String, PlanPair>,
) -> Result<(), ConfigError> {
    for (name, pair) in pairs {
        for (i, dep) in pair.after.iter().enumerate() {
            if !pairs.contains_key(dep) {
                let span = raw[name].get_ref().after[i].span();
                return f.err(
                    span,
                    &format!("pairs.{name}.after"),
                    format!("no pair named {dep:?}"),
                );
            }
        }
    }
    if let Some(cycle) = find_cycle(pairs) {
        let first = &cycle[0];
        let span = raw[first]
            .get_ref()
            .after
            .first()
            .map(|a| a.span())
            .unwrap_or(0..0);
        return f.err(
            span,
            &format!("pairs.{first}.after"),
            format!("`after` makes a cycle: {}", cycle.join(" -> ")),
        );
    }
    Ok(())
}

/// A cycle in `after`, as pair names, if there is one.
fn find_cycle(pairs: &BTreeMap<String, PlanPair>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        pairs: &BTreeMap<String, PlanPair>,
        state: &mut HashMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let start = stack.iter().position(|s| s == n).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(n.to_string());
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for dep in pairs.get(n).map(|p| p.after.as_slice()).unwrap_or(&[]) {
            if let Some(c) = visit(dep, pairs, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = HashMap::new();
    for name in pairs.keys() {
        if let Some(c) = visit(name, pairs, &mut state, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

impl Plan {
    /// Pairs in an order where each comes after those it names in `after`.
    pub fn order(&self) -> Vec<String> {
        let mut done: BTreeSet<String> = BTreeSet::new();
        let mut out = Vec::new();
        while out.len() < self.pairs.len() {
            let before = out.len();
            for (n, p) in &self.pairs {
                if !done.contains(n) && p.after.iter().all(|a| done.contains(a)) {
                    out.push(n.clone());
                }
            }
            for n in &out[before..] {
                done.insert(n.clone());
            }
            if out.len() == before {
                break; // unreachable: cycles are refused when parsing
            }
        }
        out
    }
}
