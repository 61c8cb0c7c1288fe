//! The local state directory: one directory per revision with the topology, the plan
//! and the outcome.
//!
//! `.cul8er/` beside the topology file by default. Incus is the source of truth: the
//! directory keeps history only, so deleting it loses history, never control. Every
//! file is written atomically — a temporary file in the same directory, fsync,
//! rename, fsync of the directory — so a crash leaves the old file or the new one,
//! never half of one.
//!
//! Layout: `<root>/<topology>/revisions/<revision>/{topology,plan,outcome}.json`, and
//! `<root>/<topology>/lock` while an apply runs (see [`crate::lock`]).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// The state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir {
    root: PathBuf,
}

/// The state directory could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file or directory operation failed (the source names the path).
    #[error("cannot update the state directory")]
    Io(#[source] std::io::Error),
    /// A record could not be turned into JSON.
    #[error("cannot encode {what} as JSON")]
    Encode {
        /// What was being written.
        what: &'static str,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

impl StateDir {
    /// The state directory at `root`.
    #[must_use]
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `.cul8er/` in the directory of `topology_file`.
    #[must_use]
    pub fn beside(topology_file: &Path) -> Self {
        let dir = topology_file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| Path::new("."));
        Self::new(dir.join(".cul8er"))
    }

    /// Its root.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of one topology.
    #[must_use]
    pub fn topology_dir(&self, topology: &str) -> PathBuf {
        self.root.join(topology)
    }

    /// The directory of one revision.
    #[must_use]
    pub fn revision_dir(&self, topology: &str, revision: &str) -> PathBuf {
        self.topology_dir(topology).join("revisions").join(revision)
    }

    /// Writes `value` as pretty JSON to `<revision>/<name>.json`, atomically.
    ///
    /// # Errors
    ///
    /// [`StateError`] when the directory or the file cannot be written.
    pub fn write_record(
        &self,
        topology: &str,
        revision: &str,
        name: &'static str,
        value: &impl Serialize,
    ) -> Result<PathBuf, StateError> {
        let dir = self.revision_dir(topology, revision);
        fs_err::create_dir_all(&dir).map_err(StateError::Io)?;
        let mut json = serde_json::to_vec_pretty(value)
            .map_err(|source| StateError::Encode { what: name, source })?;
        json.push(b'\n');
        let path = dir.join(format!("{name}.json"));
        write_atomic(&path, &json).map_err(StateError::Io)?;
        Ok(path)
    }

    /// The revisions recorded for `topology`, oldest first.
    ///
    /// # Errors
    ///
    /// [`StateError`] when the directory exists but cannot be read.
    pub fn revisions(&self, topology: &str) -> Result<Vec<String>, StateError> {
        let dir = self.topology_dir(topology).join("revisions");
        let entries = match fs_err::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StateError::Io(e)),
        };
        let mut revisions = Vec::new();
        for entry in entries {
            let entry = entry.map_err(StateError::Io)?;
            if let Some(name) = entry.file_name().to_str() {
                revisions.push(name.to_owned());
            }
        }
        revisions.sort();
        Ok(revisions)
    }
}

/// Writes `bytes` to `path` so that readers see the old content or the new, never a
/// mix: a temporary file beside it, fsync, rename, fsync of the directory.
///
/// # Errors
///
/// The I/O error, naming the file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = fs_err::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs_err::rename(&temp, path)?;
        // The rename is durable once the directory is.
        fs_err::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs_err::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_land_atomically_in_revision_directories() {
        let temp = tempfile::tempdir().unwrap();
        let state = StateDir::new(temp.path().join(".cul8er"));
        let path = state
            .write_record("demo", "000002", "plan", &serde_json::json!({"a": 1}))
            .unwrap();
        state
            .write_record("demo", "000001", "plan", &serde_json::json!({"a": 0}))
            .unwrap();
        assert_eq!(fs_err::read_to_string(&path).unwrap(), "{\n  \"a\": 1\n}\n");
        assert_eq!(state.revisions("demo").unwrap(), ["000001", "000002"]);
        assert!(state.revisions("other").unwrap().is_empty());
        // Only the record is left in the directory: no temporary files.
        let names: Vec<_> = fs_err::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["plan.json"]);
    }

    #[test]
    fn the_default_directory_is_beside_the_topology() {
        assert_eq!(
            StateDir::beside(Path::new("deploy/cul8er.kdl")).root(),
            Path::new("deploy/.cul8er")
        );
        assert_eq!(
            StateDir::beside(Path::new("cul8er.kdl")).root(),
            Path::new("./.cul8er")
        );
    }
}
