//! Apply progress: a live per-object view on a terminal (indicatif), timestamped
//! plain lines on stderr otherwise, and one JSON event per line on stdout with
//! `--output json`.

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::sync::Mutex;
use std::time::Duration;

use cul8er_core::execute::{ApplyEvent, Step};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::OutputFormat;
use crate::output::print_stdout;

/// Where progress goes.
#[derive(Debug)]
pub(crate) enum Progress {
    /// One spinner per step in flight.
    Bars {
        multi: MultiProgress,
        bars: Mutex<HashMap<String, ProgressBar>>,
    },
    /// Timestamped lines on stderr.
    Lines,
    /// JSON lines on stdout.
    Json,
}

fn key(step: &Step) -> String {
    format!("{}/{}/{}", step.host, step.kind.as_str(), step.name)
}

/// `2026-11-26T04:20:31.123Z`, from the system clock.
fn timestamp() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.millisecond()
    )
}

/// The text of an event for people.
fn describe(event: &ApplyEvent) -> String {
    match event {
        ApplyEvent::Begin { steps } => format!("applying {steps} step(s)"),
        ApplyEvent::StepStarted { step } => format!("{step}: started"),
        ApplyEvent::StepProgress { step, message } => format!("{step}: {message}"),
        ApplyEvent::StepDone { step, millis, .. } => {
            format!("{step}: done in {:.1} s", *millis as f64 / 1000.0)
        }
        ApplyEvent::StepFailed { step, error } => format!("{step}: FAILED: {error}"),
        ApplyEvent::StepSkipped { step, reason } => format!("{step}: not started ({reason})"),
        ApplyEvent::Cancelling { level } => format!("cancelling ({level})"),
        ApplyEvent::End {
            done,
            failed,
            skipped,
        } => format!("finished: {done} done, {failed} failed, {skipped} not started or aborted"),
    }
}

impl Progress {
    /// Bars on a terminal (stderr), lines elsewhere, JSON when asked.
    pub(crate) fn new(format: OutputFormat, color: bool) -> Self {
        match format {
            OutputFormat::Json => Self::Json,
            OutputFormat::Human if std::io::stderr().is_terminal() => {
                let _ = color;
                Self::Bars {
                    multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                    bars: Mutex::new(HashMap::new()),
                }
            }
            OutputFormat::Human => Self::Lines,
        }
    }

    /// Shows one event.
    pub(crate) fn event(&self, event: &ApplyEvent) {
        match self {
            Self::Json => {
                if let Ok(json) = serde_json::to_string(event) {
                    print_stdout(&format!("{json}\n"));
                }
            }
            Self::Lines => eprint_line(&format!("{} {}", timestamp(), describe(event))),
            Self::Bars { multi, bars } => {
                let Ok(mut bars) = bars.lock() else { return };
                match event {
                    ApplyEvent::StepStarted { step } => {
                        let bar = multi.add(ProgressBar::new_spinner());
                        bar.set_style(
                            ProgressStyle::with_template("{spinner} {msg} {elapsed:>3}")
                                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                        );
                        bar.enable_steady_tick(Duration::from_millis(120));
                        bar.set_message(format!("{step}"));
                        bars.insert(key(step), bar);
                    }
                    ApplyEvent::StepProgress { step, message } => {
                        if let Some(bar) = bars.get(&key(step)) {
                            bar.set_message(format!("{step}: {message}"));
                        }
                    }
                    ApplyEvent::StepDone { step, .. }
                    | ApplyEvent::StepFailed { step, .. }
                    | ApplyEvent::StepSkipped { step, .. } => {
                        let line = describe(event);
                        if let Some(bar) = bars.remove(&key(step)) {
                            bar.finish_and_clear();
                        }
                        let _ = multi.println(format!("  {line}"));
                    }
                    ApplyEvent::Begin { .. }
                    | ApplyEvent::Cancelling { .. }
                    | ApplyEvent::End { .. } => {
                        let _ = multi.println(describe(event));
                    }
                }
            }
        }
    }

    /// A message for the operator (signals), in the same stream as progress.
    pub(crate) fn message(&self, text: &str) {
        match self {
            Self::Bars { multi, .. } => {
                let _ = multi.println(text);
            }
            Self::Lines | Self::Json => eprint_line(&format!("{} {text}", timestamp())),
        }
    }

    /// Clears whatever is left on the terminal.
    pub(crate) fn finish(&self) {
        if let Self::Bars { multi, bars } = self {
            if let Ok(mut bars) = bars.lock() {
                for (_, bar) in bars.drain() {
                    bar.finish_and_clear();
                }
            }
            let _ = multi.clear();
        }
    }
}

fn eprint_line(line: &str) {
    use std::io::Write as _;
    let mut stderr = std::io::stderr();
    let _ = writeln!(stderr, "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = timestamp();
        assert_eq!(t.len(), 24, "{t}");
        assert!(
            t.ends_with('Z') && &t[4..5] == "-" && &t[10..11] == "T",
            "{t}"
        );
        assert!(t.as_str() > "2024-01-01", "{t}");
    }
}
