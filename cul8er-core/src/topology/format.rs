//! `cul8er fmt`: the canonical layout of a topology file, comments kept.
//!
//! Formatting uses `kdl` 6, whose document model keeps comments and whitespace; its
//! autoformat re-indents with four spaces and normalises spacing. Running it twice
//! gives the same text.

use kdl::KdlDocument;

use super::diagnostic::TopologyError;
use super::raw;

/// `source` in canonical form, comments kept.
///
/// # Errors
///
/// A [`TopologyError`] with the syntax problems when `source` is not valid KDL v2.
pub fn format_kdl(source: &str, origin: &str) -> Result<String, TopologyError> {
    let mut document = KdlDocument::parse_v2(source).map_err(|error| {
        // The read path's wording first; kdl's own when only kdl refuses the text.
        let mut problems = raw::syntax_problems(source);
        if problems.is_empty() {
            problems = raw::kdl_problems(&error, source);
        }
        TopologyError::new(origin, source, problems)
    })?;
    // The default configuration: four spaces, comments kept.
    document.autoformat();
    let mut text = document.to_string();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}
