//! Running pairs in `after` order with bounded parallelism: a pair starts
//! once every pair it comes after has succeeded; when one fails, the pairs
//! after it (directly or not) are skipped and the others go on.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use futures::StreamExt;
use futures::stream::FuturesUnordered;

/// How one pair ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome<T, E> {
    Done(T),
    Failed(E),
    /// Not run because a pair it comes after did not succeed.
    Skipped {
        after: String,
    },
}

/// Runs `run(name)` for every node, dependencies first, at most `parallel`
/// at a time. `nodes` maps a name to the names it comes after; names not in
/// `nodes` count as satisfied (they were not selected for this run).
/// Results come back in the order the pairs finished.
pub async fn run<T, E, F, Fut>(
    nodes: &BTreeMap<String, Vec<String>>,
    parallel: usize,
    run: F,
) -> Vec<(String, Outcome<T, E>)>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let parallel = parallel.max(1);
    let mut waiting: BTreeSet<String> = nodes.keys().cloned().collect();
    let mut succeeded: BTreeSet<String> = BTreeSet::new();
    let mut ended: BTreeMap<String, bool> = BTreeMap::new();
    let mut results = Vec::new();
    let mut running = FuturesUnordered::new();
    loop {
        // Skip whatever comes after a failure; start whatever is ready.
        let mut changed = true;
        while changed {
            changed = false;
            for name in waiting.clone() {
                let deps = &nodes[&name];
                if let Some(bad) = deps
                    .iter()
                    .find(|d| nodes.contains_key(*d) && ended.get(*d) == Some(&false))
                {
                    waiting.remove(&name);
                    ended.insert(name.clone(), false);
                    results.push((name, Outcome::Skipped { after: bad.clone() }));
                    changed = true;
                }
            }
        }
        for name in waiting.clone() {
            if running.len() >= parallel {
                break;
            }
            let ready = nodes[&name]
                .iter()
                .all(|d| !nodes.contains_key(d) || succeeded.contains(d));
            if ready {
                waiting.remove(&name);
                let fut = run(name.clone());
                running.push(async move { (name, fut.await) });
            }
        }
        let Some((name, result)) = running.next().await else {
            break;
        };
        match result {
            Ok(v) => {
                succeeded.insert(name.clone());
                ended.insert(name.clone(), true);
                results.push((name, Outcome::Done(v)));
            }
            Err(e) => {
                ended.insert(name.clone(), false);
                results.push((name, Outcome::Failed(e)));
            }
        }
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn graph(edges: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        edges
            .iter()
            .map(|(n, d)| (n.to_string(), d.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[tokio::test]
    async fn dependencies_first_and_failures_skip_dependents_only() {
        let g = graph(&[
            ("prod-to-stage1", &[]),
            ("stage1-to-dev", &["prod-to-stage1"]),
            ("prod-to-stage2", &[]),
            ("stage2-to-qa", &["prod-to-stage2"]),
            ("qa-to-demo", &["stage2-to-qa"]),
        ]);
        let log = Arc::new(Mutex::new(Vec::new()));
        let out = run(&g, 2, |n| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push(n.clone());
                if n == "prod-to-stage2" {
                    Err("boom".to_string())
                } else {
                    Ok(n.len())
                }
            }
        })
        .await;
        let started = log.lock().unwrap().clone();
        let pos = |n: &str| started.iter().position(|s| s == n);
        assert!(pos("prod-to-stage1") < pos("stage1-to-dev"));
        assert_eq!(pos("stage2-to-qa"), None);
        let get = |n: &str| out.iter().find(|(k, _)| k == n).unwrap().1.clone();
        assert_eq!(get("stage1-to-dev"), Outcome::Done(13));
        assert_eq!(get("prod-to-stage2"), Outcome::Failed("boom".into()));
        assert_eq!(
            get("stage2-to-qa"),
            Outcome::Skipped {
                after: "prod-to-stage2".into()
            }
        );
        assert_eq!(
            get("qa-to-demo"),
            Outcome::Skipped {
                after: "stage2-to-qa".into()
            }
        );
        assert_eq!(out.len(), 5);
    }

    #[tokio::test]
    async fn parallelism_is_bounded() {
        let g = graph(&[("a", &[]), ("b", &[]), ("c", &[]), ("d", &[])]);
        let now = Arc::new(Mutex::new((0usize, 0usize)));
        run(&g, 2, |_| {
            let now = now.clone();
            async move {
                {
                    let mut n = now.lock().unwrap();
                    n.0 += 1;
                    n.1 = n.1.max(n.0);
                }
                tokio::task::yield_now().await;
                now.lock().unwrap().0 -= 1;
                Ok::<_, String>(())
            }
        })
        .await;
        assert_eq!(now.lock().unwrap().1, 2);
    }

    #[tokio::test]
    async fn unselected_dependencies_count_as_satisfied() {
        let g = graph(&[("stage1-to-dev", &["prod-to-stage1"])]);
        let out = run(&g, 1, |_| async { Ok::<_, String>(()) }).await;
        assert_eq!(out, vec![("stage1-to-dev".to_string(), Outcome::Done(()))]);
    }
}
