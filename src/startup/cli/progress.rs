//! Progress of long commands, on stderr: an indicatif bar with rate and ETA
//! when stderr is a terminal, plain lines (every 5 s or every 10 %) when it
//! is not. It never writes to stdout, which may carry the data itself, and it
//! is only ever told byte counts and stage names, never a secret.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Longest silence between two plain progress lines.
pub const LINE_INTERVAL: Duration = Duration::from_secs(5);

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// A live bar (stderr is a terminal).
    Bar,
    /// Plain lines every [`LINE_INTERVAL`] or 10 % (stderr is a file or a pipe).
    Lines,
    /// Nothing (`--quiet`).
    Hidden,
}

impl ProgressMode {
    /// A bar on a terminal, lines elsewhere, nothing when `quiet`.
    pub fn detect(quiet: bool) -> Self {
        if quiet {
            Self::Hidden
        } else if std::io::stderr().is_terminal() {
            Self::Bar
        } else {
            Self::Lines
        }
    }
}

enum View {
    Bar(ProgressBar),
    Lines {
        last_line: Instant,
        /// Tenths of the total already reported.
        last_tenth: u64,
    },
    Hidden,
}

/// The progress of one operation over a byte count.
pub struct Progress {
    label: String,
    total: Option<u64>,
    done: u64,
    started: Instant,
    view: View,
}

const BAR_TEMPLATE: &str = "{msg} [{elapsed_precise}] [{wide_bar}] {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}, ETA {eta})";
const SPINNER_TEMPLATE: &str =
    "{spinner} {msg} [{elapsed_precise}] {binary_bytes} ({binary_bytes_per_sec})";

fn style(total_known: bool) -> ProgressStyle {
    let template = if total_known {
        BAR_TEMPLATE
    } else {
        SPINNER_TEMPLATE
    };
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

impl Progress {
    /// Starts showing progress of `label` over `total` bytes (`None` when unknown).
    pub fn new(label: impl Into<String>, total: Option<u64>, mode: ProgressMode) -> Self {
        let label = label.into();
        let now = Instant::now();
        let view = match mode {
            ProgressMode::Bar => {
                let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
                bar.set_style(style(total.is_some()));
                bar.set_message(label.clone());
                bar.enable_steady_tick(Duration::from_millis(200));
                View::Bar(bar)
            }
            ProgressMode::Lines => View::Lines {
                last_line: now,
                last_tenth: 0,
            },
            ProgressMode::Hidden => View::Hidden,
        };
        Self {
            label,
            total,
            done: 0,
            started: now,
            view,
        }
    }

    /// Counts `bytes` more as done.
    pub fn advance(&mut self, bytes: u64) {
        self.set_position(self.done.saturating_add(bytes));
    }

    /// Sets the bytes done so far.
    pub fn set_position(&mut self, done: u64) {
        self.done = done;
        match &mut self.view {
            View::Bar(bar) => bar.set_position(done),
            View::Lines {
                last_line,
                last_tenth,
            } => {
                let now = Instant::now();
                let tenth = self.total.filter(|&t| t > 0).map(|t| tenths(done, t));
                let new_tenth = tenth.is_some_and(|t| t > *last_tenth && t < 10);
                if new_tenth || now.duration_since(*last_line) >= LINE_INTERVAL {
                    *last_line = now;
                    if let Some(t) = tenth {
                        *last_tenth = t;
                    }
                    eprintln!(
                        "{}",
                        progress_line(&self.label, done, self.total, self.started.elapsed())
                    );
                }
            }
            View::Hidden => {}
        }
    }

    /// Announces the total once it is known.
    pub fn set_total(&mut self, total: u64) {
        if self.total == Some(total) {
            return;
        }
        if self.total.is_none() && self.done == 0 {
            // The measured work starts now (unlock's decryption): rate and ETA count from here.
            self.started = Instant::now();
            if let View::Bar(bar) = &self.view {
                bar.reset_elapsed();
                bar.reset_eta();
            }
        }
        self.total = Some(total);
        if let View::Bar(bar) = &self.view {
            bar.set_length(total);
            bar.set_style(style(true));
        }
    }

    /// Names the stage the operation reached (unlock's phases); a plain line at once.
    pub fn set_stage(&mut self, stage: &str) {
        match &mut self.view {
            View::Bar(bar) => bar.set_message(format!("{}: {stage}", self.label)),
            View::Lines { last_line, .. } => {
                *last_line = Instant::now();
                eprintln!("{}: {stage}", self.label);
            }
            View::Hidden => {}
        }
    }

    /// Prints one line above the bar (or as a plain line) without breaking the bar.
    pub fn note(&self, text: &str) {
        match &self.view {
            View::Bar(bar) => bar.suspend(|| eprintln!("{text}")),
            View::Lines { .. } => eprintln!("{text}"),
            View::Hidden => {}
        }
    }

    /// Ends the display with a summary line.
    pub fn finish(mut self) {
        let summary = done_line(&self.label, self.done, self.started.elapsed());
        if let View::Bar(bar) = &self.view {
            bar.finish_and_clear();
        }
        if !matches!(self.view, View::Hidden) {
            eprintln!("{summary}");
        }
        self.view = View::Hidden;
    }
}

impl Drop for Progress {
    /// A bar left behind by an error is cleared, so the error reads cleanly.
    fn drop(&mut self) {
        if let View::Bar(bar) = &self.view {
            bar.finish_and_clear();
        }
    }
}

/// How many whole tenths of `total` `done` is.
fn tenths(done: u64, total: u64) -> u64 {
    ((u128::from(done) * 10) / u128::from(total.max(1))).min(10) as u64
}

fn rate(bytes: u64, elapsed: Duration) -> Option<f64> {
    let secs = elapsed.as_secs_f64();
    (secs > 0.0).then(|| bytes as f64 / secs)
}

/// `encrypt: 40% (25.6 MiB of 64.0 MiB) at 120.5 MiB/s, ETA 1s`
pub fn progress_line(label: &str, done: u64, total: Option<u64>, elapsed: Duration) -> String {
    let speed = rate(done, elapsed);
    let at = speed
        .map(|r| format!(" at {}/s", human_bytes(r as u64)))
        .unwrap_or_default();
    match total {
        Some(total) if total > 0 => {
            let percent = (u128::from(done.min(total)) * 100 / u128::from(total)) as u64;
            let eta = speed
                .filter(|r| *r > 0.0)
                .map(|r| {
                    let left = total.saturating_sub(done) as f64 / r;
                    format!(", ETA {}", human_duration(Duration::from_secs_f64(left)))
                })
                .unwrap_or_default();
            format!(
                "{label}: {percent}% ({} of {}){at}{eta}",
                human_bytes(done),
                human_bytes(total)
            )
        }
        _ => format!("{label}: {}{at}", human_bytes(done)),
    }
}

/// `encrypt: done, 64.0 MiB in 0.5 s (128.0 MiB/s)`
pub fn done_line(label: &str, done: u64, elapsed: Duration) -> String {
    let speed = rate(done, elapsed)
        .map(|r| format!(" ({}/s)", human_bytes(r as u64)))
        .unwrap_or_default();
    format!(
        "{label}: done, {} in {:.1} s{speed}",
        human_bytes(done),
        elapsed.as_secs_f64()
    )
}

/// Binary units with one decimal: `512 B`, `1.5 KiB`, `64.0 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `12s`, `3m05s`, `1h02m`.
pub fn human_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_in_binary_units() {
        for (bytes, text) in [
            (0, "0 B"),
            (1023, "1023 B"),
            (1536, "1.5 KiB"),
            (64 << 20, "64.0 MiB"),
            (3 << 30, "3.0 GiB"),
        ] {
            assert_eq!(human_bytes(bytes), text);
        }
    }

    #[test]
    fn durations_read_in_the_two_largest_units() {
        for (secs, text) in [(0, "0s"), (59, "59s"), (185, "3m05s"), (3720, "1h02m")] {
            assert_eq!(human_duration(Duration::from_secs(secs)), text);
        }
    }

    #[test]
    fn a_line_shows_percent_sizes_rate_and_eta() {
        let line = progress_line("encrypt", 16 << 20, Some(64 << 20), Duration::from_secs(2));
        assert_eq!(
            line,
            "encrypt: 25% (16.0 MiB of 64.0 MiB) at 8.0 MiB/s, ETA 6s"
        );
        let line = progress_line("split", 3 << 20, None, Duration::from_secs(1));
        assert_eq!(line, "split: 3.0 MiB at 3.0 MiB/s");
        assert_eq!(
            done_line("join", 10 << 20, Duration::from_secs(2)),
            "join: done, 10.0 MiB in 2.0 s (5.0 MiB/s)"
        );
    }

    #[test]
    fn tenths_never_pass_ten_and_survive_huge_totals() {
        assert_eq!(tenths(0, 100), 0);
        assert_eq!(tenths(99, 100), 9);
        assert_eq!(tenths(500, 100), 10);
        assert_eq!(tenths(u64::MAX, u64::MAX), 10);
    }
}
