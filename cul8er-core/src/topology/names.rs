//! Incus instance names derived from topology, resource and replica, and the room kept
//! for the suffixes rollouts add.
//!
//! An instance is named `TOPOLOGY-RESOURCE-N` (replicas count from 1). Rollouts derive
//! further names from it: `-b` and `-g` for a blue-green parallel set, `-c` for canary
//! instances, `-old` for an instance kept stopped until its replacement passes. The
//! longest suffix is [`ROLLOUT_SUFFIX_BUDGET`] characters, so validation keeps derived
//! names within `63 - 4 = 59` characters.

/// Incus's limit on instance names (they are host names).
pub const MAX_INSTANCE_NAME: usize = 63;

/// The longest suffix a rollout adds to an instance name (`-old`).
pub const ROLLOUT_SUFFIX_BUDGET: usize = 4;

/// The suffixes rollouts add, longest last.
pub const ROLLOUT_SUFFIXES: [&str; 4] = ["-b", "-g", "-c", KEPT_SUFFIX];

/// The suffix of an instance kept, stopped, while its replacement proves itself.
pub const KEPT_SUFFIX: &str = "-old";

/// The name of replica `replica` (from 1) of `resource` in `topology`.
#[must_use]
pub fn instance_name(topology: &str, resource: &str, replica: u32) -> String {
    format!("{topology}-{resource}-{replica}")
}

/// The name of replica `replica` of `resource` in the instance set `set`: the
/// unsuffixed name for the first set (`""`), `NAME-g` for set `g`, and so on.
#[must_use]
pub fn set_instance_name(topology: &str, resource: &str, replica: u32, set: &str) -> String {
    let base = instance_name(topology, resource, replica);
    if set.is_empty() {
        base
    } else {
        format!("{base}-{set}")
    }
}

/// The set a blue-green or canary rollout creates beside the serving set `serving`:
/// blue-green alternates `g` and `b` (the first set, unsuffixed, counts as blue),
/// canary alternates `c` and the unsuffixed set.
#[must_use]
pub fn next_set(canary: bool, serving: &str) -> &'static str {
    match (canary, serving) {
        (false, "g") => "b",
        (false, _) => "g",
        (true, "c") => "",
        (true, _) => "c",
    }
}

/// Whether `name` is a valid name for anything cul8er creates in Incus: lower-case
/// letters, digits and hyphens, starting with a letter, not ending with a hyphen.
#[must_use]
pub fn is_valid(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// A valid spelling of `name` (lower case, `_` and `.` as `-`), when one exists.
#[must_use]
pub fn suggest(name: &str) -> Option<String> {
    let fixed: String = name
        .chars()
        .map(|c| match c {
            '_' | '.' | ' ' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    let fixed = fixed.trim_matches('-').to_owned();
    (is_valid(&fixed) && fixed != name).then_some(fixed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_incus_rules() {
        assert!(is_valid("web"));
        assert!(is_valid("web-2"));
        assert!(!is_valid("node_1"));
        assert!(!is_valid("2web"));
        assert!(!is_valid("web-"));
        assert!(!is_valid("Web"));
        assert!(!is_valid(""));
        assert_eq!(suggest("node_1").as_deref(), Some("node-1"));
        assert_eq!(suggest("web"), None);
        assert_eq!(instance_name("production", "web", 3), "production-web-3");
        assert_eq!(set_instance_name("p", "web", 2, ""), "p-web-2");
        assert_eq!(set_instance_name("p", "web", 2, "g"), "p-web-2-g");
    }

    #[test]
    fn sets_alternate_within_the_reserved_suffixes() {
        assert_eq!(next_set(false, ""), "g");
        assert_eq!(next_set(false, "g"), "b");
        assert_eq!(next_set(false, "b"), "g");
        assert_eq!(next_set(true, ""), "c");
        assert_eq!(next_set(true, "c"), "");
        for set in ["g", "b", "c"] {
            assert!(ROLLOUT_SUFFIXES.contains(&format!("-{set}").as_str()));
        }
    }

    #[test]
    fn the_budget_covers_every_suffix() {
        let longest = ROLLOUT_SUFFIXES.iter().map(|s| s.len()).max();
        assert_eq!(longest, Some(ROLLOUT_SUFFIX_BUDGET));
    }
}
