//! The release artifact on the operator's machine: read, hashed, and uploaded through
//! the Incus file API with its modes and symlinks kept.
//!
//! Files are not held in memory: reading an artifact hashes each file through a
//! buffer, and the upload reads each file again just before it is pushed (at most
//! [`UPLOAD_CONCURRENCY`] at once), checking that it still has the digest it was
//! hashed with.

use std::io::Read as _;
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
    /// A regular file with its permission bits, where it is read from, its length and
    /// the SHA-256 of its contents.
    File {
        path: String,
        mode: u32,
        source: PathBuf,
        len: u64,
        sha256: [u8; 32],
    },
    /// A symlink and its target, kept as written.
    Symlink { path: String, target: String },
}

/// An artifact as read: its entries, parents before children, and a digest over
/// names, modes, contents and link targets.
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
    #[error("{path} changed while it was read")]
    Changed { path: PathBuf },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Why an artifact could not be uploaded.
#[derive(Debug, thiserror::Error)]
pub(super) enum UploadError {
    /// Incus refused a file or directory.
    #[error("Incus refused a file of the artifact")]
    Incus(#[source] incus_api::Error),
    /// A file could not be read again, or changed since it was hashed.
    #[error("cannot upload {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: ReadError,
    },
}

/// Adds `entry` to `entries` and to the artifact digest. A file's contents are read
/// through a buffer into the digest and into the file's own SHA-256, checked against
/// the length its metadata gave; the digest is the one an artifact read whole gave.
fn push(entries: &mut Vec<Entry>, digest: &mut Sha256, entry: Entry) -> Result<(), ReadError> {
    let entry = match entry {
        Entry::Dir { path, mode } => {
            digest.update(format!("d {mode:o} {path}\0").as_bytes());
            Entry::Dir { path, mode }
        }
        Entry::Symlink { path, target } => {
            digest.update(format!("l {path} {target}\0").as_bytes());
            Entry::Symlink { path, target }
        }
        Entry::File {
            path,
            mode,
            source,
            len,
            ..
        } => {
            digest.update(format!("f {mode:o} {path} {len}\0").as_bytes());
            let mut file = fs_err::File::open(&source)?;
            let mut own = Sha256::new();
            let mut buffer = vec![0; 64 * 1024];
            let mut read = 0u64;
            loop {
                let n = file.read(&mut buffer)?;
                if n == 0 {
                    break;
                }
                digest.update(&buffer[..n]);
                own.update(&buffer[..n]);
                read += n as u64;
            }
            if read != len {
                return Err(ReadError::Changed { path: source });
            }
            Entry::File {
                path,
                mode,
                source,
                len,
                sha256: own.finalize().into(),
            }
        }
    };
    entries.push(entry);
    Ok(())
}

/// A file entry for `source`, not yet hashed.
fn file_entry(path: String, source: &Path, meta: &std::fs::Metadata) -> Entry {
    Entry::File {
        path,
        mode: meta.permissions().mode() & 0o7777,
        source: source.to_owned(),
        len: meta.len(),
        sha256: [0; 32],
    }
}

/// Reads one file of an artifact again for its upload, checking it against its entry.
fn reread(source: &Path, len: u64, sha256: &[u8; 32]) -> Result<Bytes, ReadError> {
    let contents = fs_err::read(source)?;
    if contents.len() as u64 != len || Sha256::digest(&contents).as_slice() != sha256 {
        return Err(ReadError::Changed {
            path: source.to_owned(),
        });
    }
    Ok(Bytes::from(contents))
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
        let mut digest = Sha256::new();
        digest.update(b"cul8er-artifact-v1\0");
        let meta = fs_err::symlink_metadata(path)?;
        if meta.is_file() {
            let name =
                path.file_name()
                    .and_then(|n| n.to_str())
                    .ok_or_else(|| ReadError::NotUtf8 {
                        path: path.to_owned(),
                    })?;
            push(
                &mut entries,
                &mut digest,
                file_entry(name.to_owned(), path, &meta),
            )?;
        } else if meta.is_dir() {
            walk(path, "", &mut entries, &mut digest)?;
        } else {
            return Err(ReadError::Unsupported {
                path: path.to_owned(),
            });
        }
        Ok(Self {
            entries,
            digest: hex::encode(digest.finalize()),
        })
    }
}

fn walk(
    dir: &Path,
    prefix: &str,
    entries: &mut Vec<Entry>,
    digest: &mut Sha256,
) -> Result<(), ReadError> {
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
            push(entries, digest, Entry::Symlink { path: rel, target })?;
        } else if meta.is_dir() {
            push(
                entries,
                digest,
                Entry::Dir {
                    path: rel.clone(),
                    mode,
                },
            )?;
            walk(&path, &rel, entries, digest)?;
        } else if meta.is_file() {
            push(entries, digest, file_entry(rel, &path, &meta))?;
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
) -> Result<(), UploadError> {
    for entry in &artifact.entries {
        if let Entry::Dir { path, mode } = entry {
            files
                .mkdir(
                    &format!("{root}/{path}"),
                    FileOptions::mode(*mode).owner(uid, gid),
                )
                .await
                .map_err(UploadError::Incus)?;
        }
    }
    futures_util::stream::iter(artifact.entries.iter().map(Ok))
        .try_for_each_concurrent(UPLOAD_CONCURRENCY, |entry| async move {
            match entry {
                Entry::Dir { .. } => Ok(()),
                Entry::File {
                    path,
                    mode,
                    source,
                    len,
                    sha256,
                } => {
                    let (from, len, sha256) = (source.clone(), *len, *sha256);
                    let read_error = |e| UploadError::Read {
                        path: source.clone(),
                        source: e,
                    };
                    let contents = tokio::task::spawn_blocking(move || reread(&from, len, &sha256))
                        .await
                        .map_err(|e| read_error(ReadError::Io(std::io::Error::other(e))))?
                        .map_err(read_error)?;
                    files
                        .push(
                            &format!("{root}/{path}"),
                            contents,
                            FileOptions::mode(*mode).owner(uid, gid),
                        )
                        .await
                        .map_err(UploadError::Incus)
                }
                Entry::Symlink { path, target } => files
                    .symlink(&format!("{root}/{path}"), target)
                    .await
                    .map_err(UploadError::Incus),
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
            source: dir.path().join("bin/server"),
            len: 10,
            sha256: Sha256::digest(b"#!/bin/sh\n").into(),
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
    fn the_digest_is_the_one_of_an_artifact_read_whole() {
        // Deployed releases record this digest: reading files through a buffer must
        // not change it, or every release would deploy again.
        let dir = tempfile::tempdir().unwrap();
        fs_err::create_dir_all(dir.path().join("www")).unwrap();
        let big = vec![7u8; 200 * 1024];
        fs_err::write(dir.path().join("www/big.bin"), &big).unwrap();
        let mode = fs_err::metadata(dir.path().join("www"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777;
        let file_mode = fs_err::metadata(dir.path().join("www/big.bin"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777;
        let mut whole = Sha256::new();
        whole.update(b"cul8er-artifact-v1\0");
        whole.update(format!("d {mode:o} www\0").as_bytes());
        whole.update(format!("f {file_mode:o} www/big.bin {}\0", big.len()).as_bytes());
        whole.update(&big);
        let artifact = Artifact::read(dir.path()).unwrap();
        assert_eq!(artifact.digest, hex::encode(whole.finalize()));
    }

    #[test]
    fn a_file_changed_after_it_was_read_is_refused_at_upload() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app.sh");
        fs_err::write(&file, b"echo 1").unwrap();
        let artifact = Artifact::read(&file).unwrap();
        let Entry::File {
            source,
            len,
            sha256,
            ..
        } = &artifact.entries[0]
        else {
            panic!("not a file: {:?}", artifact.entries);
        };
        assert_eq!(&reread(source, *len, sha256).unwrap()[..], b"echo 1");
        fs_err::write(&file, b"echo 2").unwrap();
        let err = reread(source, *len, sha256).unwrap_err();
        assert!(matches!(err, ReadError::Changed { .. }), "{err}");
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
