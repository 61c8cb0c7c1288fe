//! The release artifact on the operator's machine: read, hashed, and uploaded through
//! the Incus file API with its modes and symlinks kept.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::TryStreamExt;
use incus_api::files::{FileOptions, Files};
use sha2::{Digest, Sha256};

/// Files pushed at once: enough to hide per-request latency, few enough for a 2-core
/// daemon.
const UPLOAD_CONCURRENCY: usize = 8;

/// One entry of an artifact, relative to its root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Entry {
    /// A directory with its permission bits.
    Dir { path: String, mode: u32 },
    /// A regular file with its permission bits and contents.
    File {
        path: String,
        mode: u32,
        contents: Bytes,
    },
    /// A symlink and its target, kept as written.
    Symlink { path: String, target: String },
}

/// An artifact read into memory: its entries, parents before children, and a digest
/// over names, modes, contents and link targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Artifact {
    pub entries: Vec<Entry>,
    pub digest: String,
}

/// Why an artifact could not be read.
#[derive(Debug, thiserror::Error)]
pub(super) enum ReadError {
    #[error("{path} is neither a file nor a directory")]
    Unsupported { path: PathBuf },
    #[error("{path} has a name that is not UTF-8")]
    NotUtf8 { path: PathBuf },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Artifact {
    /// The artifact of a release without one: an empty directory.
    pub(super) fn empty() -> Self {
        Self {
            entries: Vec::new(),
            digest: hex::encode(Sha256::digest(b"cul8er-artifact-v1\0empty")),
        }
    }

    /// Reads `path`: a file becomes `<version>/<file name>`, a directory's contents
    /// become `<version>/...`.
    pub(super) fn read(path: &Path) -> Result<Self, ReadError> {
        let mut entries = Vec::new();
        let meta = fs_err::symlink_metadata(path)?;
        if meta.is_file() {
            let name =
                path.file_name()
                    .and_then(|n| n.to_str())
                    .ok_or_else(|| ReadError::NotUtf8 {
                        path: path.to_owned(),
                    })?;
            entries.push(Entry::File {
                path: name.to_owned(),
                mode: meta.permissions().mode() & 0o7777,
                contents: Bytes::from(fs_err::read(path)?),
            });
        } else if meta.is_dir() {
            walk(path, "", &mut entries)?;
        } else {
            return Err(ReadError::Unsupported {
                path: path.to_owned(),
            });
        }
        let mut hasher = Sha256::new();
        hasher.update(b"cul8er-artifact-v1\0");
        for entry in &entries {
            match entry {
                Entry::Dir { path, mode } => {
                    hasher.update(format!("d {mode:o} {path}\0").as_bytes());
                }
                Entry::File {
                    path,
                    mode,
                    contents,
                } => {
                    hasher.update(format!("f {mode:o} {path} {}\0", contents.len()).as_bytes());
                    hasher.update(contents);
                }
                Entry::Symlink { path, target } => {
                    hasher.update(format!("l {path} {target}\0").as_bytes());
                }
            }
        }
        Ok(Self {
            entries,
            digest: hex::encode(hasher.finalize()),
        })
    }
}

fn walk(dir: &Path, prefix: &str, entries: &mut Vec<Entry>) -> Result<(), ReadError> {
    let mut children: Vec<_> = fs_err::read_dir(dir)?.collect::<Result<_, _>>()?;
    children.sort_by_key(fs_err::DirEntry::file_name);
    for child in children {
        let path = child.path();
        let name = child
            .file_name()
            .into_string()
            .map_err(|_| ReadError::NotUtf8 { path: path.clone() })?;
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let meta = fs_err::symlink_metadata(&path)?;
        let mode = meta.permissions().mode() & 0o7777;
        if meta.is_symlink() {
            let target = fs_err::read_link(&path)?;
            let target = target
                .to_str()
                .ok_or_else(|| ReadError::NotUtf8 { path: path.clone() })?
                .to_owned();
            entries.push(Entry::Symlink { path: rel, target });
        } else if meta.is_dir() {
            entries.push(Entry::Dir {
                path: rel.clone(),
                mode,
            });
            walk(&path, &rel, entries)?;
        } else if meta.is_file() {
            entries.push(Entry::File {
                path: rel,
                mode,
                contents: Bytes::from(fs_err::read(&path)?),
            });
        } else {
            return Err(ReadError::Unsupported { path });
        }
    }
    Ok(())
}

/// Uploads `artifact` under `root` (which must exist), owned by `uid:gid`: directories
/// in order, then files and links a few at a time.
pub(super) async fn upload(
    files: &Files,
    root: &str,
    artifact: &Artifact,
    uid: u32,
    gid: u32,
) -> incus_api::Result<()> {
    for entry in &artifact.entries {
        if let Entry::Dir { path, mode } = entry {
            files
                .mkdir(
                    &format!("{root}/{path}"),
                    FileOptions::mode(*mode).owner(uid, gid),
                )
                .await?;
        }
    }
    futures_util::stream::iter(artifact.entries.iter().map(Ok))
        .try_for_each_concurrent(UPLOAD_CONCURRENCY, |entry| async move {
            match entry {
                Entry::Dir { .. } => Ok(()),
                Entry::File {
                    path,
                    mode,
                    contents,
                } => {
                    files
                        .push(
                            &format!("{root}/{path}"),
                            contents.clone(),
                            FileOptions::mode(*mode).owner(uid, gid),
                        )
                        .await
                }
                Entry::Symlink { path, target } => {
                    files.symlink(&format!("{root}/{path}"), target).await
                }
            }
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_reads_parents_first_with_modes_and_links() {
        let dir = tempfile::tempdir().unwrap();
        fs_err::create_dir_all(dir.path().join("bin")).unwrap();
        fs_err::write(dir.path().join("bin/server"), b"#!/bin/sh\n").unwrap();
        fs_err::set_permissions(
            dir.path().join("bin/server"),
            std::fs::Permissions::from_mode(0o750),
        )
        .unwrap();
        fs_err::write(dir.path().join("README"), b"hi").unwrap();
        std::os::unix::fs::symlink("bin/server", dir.path().join("start")).unwrap();

        let artifact = Artifact::read(dir.path()).unwrap();
        let names: Vec<_> = artifact
            .entries
            .iter()
            .map(|e| match e {
                Entry::Dir { path, .. }
                | Entry::File { path, .. }
                | Entry::Symlink { path, .. } => path.as_str(),
            })
            .collect();
        assert_eq!(names, ["README", "bin", "bin/server", "start"]);
        assert!(artifact.entries.contains(&Entry::File {
            path: "bin/server".into(),
            mode: 0o750,
            contents: Bytes::from_static(b"#!/bin/sh\n"),
        }));
        assert!(artifact.entries.contains(&Entry::Symlink {
            path: "start".into(),
            target: "bin/server".into(),
        }));

        let again = Artifact::read(dir.path()).unwrap();
        assert_eq!(artifact.digest, again.digest, "reading is deterministic");
        fs_err::write(dir.path().join("README"), b"changed").unwrap();
        assert_ne!(Artifact::read(dir.path()).unwrap().digest, artifact.digest);
    }

    #[test]
    fn a_single_file_keeps_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app.sh");
        fs_err::write(&file, b"echo").unwrap();
        let artifact = Artifact::read(&file).unwrap();
        assert!(matches!(&artifact.entries[..], [Entry::File { path, .. }] if path == "app.sh"));
    }

    #[test]
    fn a_missing_artifact_is_an_io_error_naming_the_path() {
        let err = Artifact::read(Path::new("/nonexistent/cul8er-artifact")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/cul8er-artifact"),
            "{err}"
        );
    }
}
