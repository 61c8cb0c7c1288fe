//! Everything the CLI writes: data to stdout, diagnostics and messages to stderr,
//! colour only on a terminal and never with `NO_COLOR` set.

use std::io::{self, IsTerminal, Write};

use miette::{Diagnostic, GraphicalReportHandler, GraphicalTheme, JSONReportHandler};

use crate::cli::OutputFormat;

/// How output is written.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) format: OutputFormat,
    pub(crate) color: bool,
}

impl Settings {
    /// Reads `NO_COLOR` and whether stderr is a terminal.
    pub(crate) fn from_env(format: OutputFormat) -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Self {
            format,
            color: !no_color && io::stderr().is_terminal(),
        }
    }

    /// Renders a diagnostic the way a person reads it.
    pub(crate) fn render(&self, diagnostic: &dyn Diagnostic) -> String {
        let theme = if self.color {
            GraphicalTheme::unicode()
        } else {
            GraphicalTheme::unicode_nocolor()
        };
        let handler = GraphicalReportHandler::new_themed(theme);
        let mut out = String::new();
        if handler.render_report(&mut out, diagnostic).is_err() {
            out = format!("{diagnostic}\n");
        }
        out
    }

    /// Renders a diagnostic as JSON.
    pub(crate) fn render_json(diagnostic: &dyn Diagnostic) -> String {
        let mut out = String::new();
        if JSONReportHandler::new()
            .render_report(&mut out, diagnostic)
            .is_err()
        {
            out = serde_json::json!({ "message": diagnostic.to_string() }).to_string();
        }
        out
    }

    /// Prints a diagnostic: JSON on stdout with `--output json`, text on stderr.
    pub(crate) fn eprint_report(&self, diagnostic: &dyn Diagnostic) {
        match self.format {
            OutputFormat::Json => print_stdout(&format!("{}\n", Self::render_json(diagnostic))),
            OutputFormat::Human => write_quietly(&mut io::stderr(), &self.render(diagnostic)),
        }
    }

    /// A message for people on stderr.
    pub(crate) fn eprint_line(&self, line: &str) {
        write_quietly(&mut io::stderr(), &format!("{line}\n"));
    }
}

/// Data on stdout. A closed pipe (`cul8er validate | head`) is not an error.
pub(crate) fn print_stdout(text: &str) {
    write_quietly(&mut io::stdout(), text);
}

fn write_quietly(out: &mut dyn Write, text: &str) {
    // BrokenPipe and other write errors are quiet: the reader went away.
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}
