//! What the commands draw: a line or a spinner per item of work (a pair, a
//! database), throttled plain lines when stderr is not a terminal, JSON
//! events on stdout for automation, and sizes. Shared by `sync`, `plan`,
//! `refresh` and `backup`.
//!
//! - [`size`]: sizes as an operator reads them.
//! - [`copies`]: an S3 copy's running totals, bar and JSON events.
//! - [`run_view`]: a sync run's events, drawn.
//! - [`lanes`]: a destination's copy lanes in progress.

pub mod copies;
pub mod lanes;
pub mod run_view;
pub mod size;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

pub use size::{human_bytes, mib};

/// How long a throttled line waits after the previous one of its kind.
const THROTTLE: Duration = Duration::from_secs(2);

/// Where a command's progress goes.
pub struct Output {
    json: bool,
    bars: Option<(MultiProgress, Mutex<BTreeMap<String, ProgressBar>>)>,
    last_line: Mutex<BTreeMap<String, Instant>>,
}

impl Output {
    /// JSON events (`json`), else spinners on a terminal, else lines.
    pub fn new(json: bool) -> Self {
        let bars = !json && std::io::stderr().is_terminal();
        Output {
            json,
            bars: bars.then(|| (MultiProgress::new(), Mutex::new(BTreeMap::new()))),
            last_line: Mutex::new(BTreeMap::new()),
        }
    }

    /// Plain lines only, whatever stderr is.
    pub fn lines() -> Self {
        Output {
            json: false,
            bars: None,
            last_line: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn json(&self) -> bool {
        self.json
    }

    /// Prints a JSON event (with `--json`).
    pub fn event(&self, value: serde_json::Value) {
        if self.json {
            println!("{value}");
        }
    }

    fn bars(&self) -> Option<std::sync::MutexGuard<'_, BTreeMap<String, ProgressBar>>> {
        let (_, bars) = self.bars.as_ref()?;
        Some(bars.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Shows `text` as `item`'s progress: its spinner's message, or a line
    /// (`throttle`: at most one line of this kind every two seconds, the
    /// first after two seconds, so quick steps print only their result).
    pub fn line(&self, item: &str, text: String, throttle: bool) {
        self.line_with(item, || text, throttle);
    }

    /// [`Output::line`], with the text made only when it is shown.
    pub fn line_with(&self, item: &str, text: impl FnOnce() -> String, throttle: bool) {
        if self.json {
            return;
        }
        if let Some(bars) = self.bars() {
            if let Some(b) = bars.get(item) {
                b.set_message(text());
            }
            return;
        }
        if throttle {
            let mut last = self.last_line.lock().unwrap_or_else(|p| p.into_inner());
            let t = last.entry(item.to_string()).or_insert_with(Instant::now);
            if t.elapsed() < THROTTLE {
                return;
            }
            *t = Instant::now();
        }
        eprintln!("stagesync: {item}: {}", text());
    }

    /// Starts `item`'s spinner (on a terminal) and says it started.
    pub fn start(&self, item: &str) {
        if let Some((multi, bars)) = &self.bars {
            let b = multi.add(ProgressBar::new_spinner());
            b.set_style(
                ProgressStyle::with_template("{spinner} {prefix:20} {msg} [{elapsed}]")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.set_prefix(item.to_string());
            b.enable_steady_tick(Duration::from_millis(120));
            bars.lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(item.to_string(), b);
        }
        self.line(item, "started".into(), false);
    }

    /// A bar under `item`'s spinner (terminal only), named `label`.
    pub fn sub_bar(&self, item: &str, key: &str, label: String) -> Option<ProgressBar> {
        let (multi, _) = self.bars.as_ref()?;
        let mut bars = self.bars()?;
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "  {prefix:18} [{bar:24}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(label);
        let bar = match bars.get(item) {
            Some(p) => multi.insert_after(p, bar),
            None => multi.add(bar),
        };
        bars.insert(format!("{item}\u{0}{key}"), bar.clone());
        Some(bar)
    }

    /// Ends `item` with `text`: its spinner's last message, or a line.
    pub fn finish(&self, item: &str, text: String) {
        if let Some(bars) = self.bars()
            && let Some(b) = bars.get(item)
        {
            b.finish_with_message(text);
            return;
        }
        self.line(item, text, false);
    }

    /// Removes every bar, before a table is printed.
    pub fn clear(&self) {
        if let Some((m, _)) = &self.bars {
            let _ = m.clear();
        }
    }
}

/// The controller only coordinates: agents move the database, and S3 copies
/// are many small requests. One thread does both, and spends less CPU on
/// handing work between threads than a pool would (measured on the S3
/// benchmark's no-change re-run: about a fifth less).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
