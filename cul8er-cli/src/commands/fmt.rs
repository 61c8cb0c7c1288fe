//! `cul8er fmt [FILE] [--check]`: the canonical layout, comments kept.

use std::path::Path;

use cul8er_core::topology;

use crate::cli::FmtArgs;
use crate::exit::Outcome;
use crate::output::Settings;

use super::read_file;

pub(crate) fn run(args: &FmtArgs, settings: &Settings) -> Outcome {
    let source = match read_file(&args.file) {
        Ok(source) => source,
        Err(outcome) => return outcome,
    };
    let origin = args.file.display().to_string();
    let formatted = match topology::format_kdl(&source, &origin) {
        Ok(formatted) => formatted,
        Err(err) => {
            settings.eprint_report(&err);
            return Outcome::UserError;
        }
    };
    if formatted == source {
        return Outcome::Success;
    }
    if args.check {
        settings.eprint_line(&format!(
            "{origin}: not in canonical form; run `cul8er fmt {origin}`"
        ));
        return Outcome::UserError;
    }
    match write_atomically(&args.file, &formatted) {
        Ok(()) => {
            settings.eprint_line(&format!("{origin}: formatted"));
            Outcome::Success
        }
        Err(err) => Outcome::Unexpected(err.into()),
    }
}

/// Writes through a temporary file beside the target and a rename, so an interrupted
/// write never leaves half a topology.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let mut temp = path.as_os_str().to_owned();
    temp.push(".cul8er-fmt.tmp");
    let temp = std::path::PathBuf::from(temp);
    fs_err::write(&temp, text)?;
    fs_err::rename(&temp, path)
}
