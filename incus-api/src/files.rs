//! Files inside an instance: push, pull, mkdir, symlink, delete.
//!
//! Ownership and mode travel in `X-Incus-*` headers. The mode is sent in octal with a
//! leading zero (`0644`), because the server parses it with base detection: `644`
//! would be read as decimal. Incus applies mode and owner only when it creates the
//! file, and does not create parent directories. A request that Incus's per-instance
//! file helper drops mid-way (HTTP 500 "... forkfile.sock: ... connection reset by
//! peer", seen in CI under load) is sent again, up to three times in all.

use std::time::Duration;

use bytes::Bytes;
use http::Method;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::instances::instance_path;
use crate::request::{ApiRequest, full_body};
use crate::resend::Resend;

/// Largest file pulled into memory.
const MAX_PULL: usize = 1024 * 1024 * 1024;

/// Every file request here may be sent twice: a push overwrites the whole file, mkdir
/// accepts an existing directory, a pull reads; a delete or symlink that had been done
/// answers that it is gone or exists, which the caller sees. So a request Incus's file
/// helper dropped is sent again.
const HELPER_LOST: Resend = Resend {
    attempts: 3,
    first_pause: Duration::from_millis(100),
    passing: is_forkfile_lost,
};

/// Whether `error` is Incus losing its per-instance file helper mid-request: file
/// requests go through a `forkfile` process that Incus starts on demand and ends when
/// idle, and a request that reaches it as it ends fails with HTTP 500 "read unix
/// @->/proc/self/fd/N/forkfile.sock: read: connection reset by peer".
fn is_forkfile_lost(error: &Error) -> bool {
    error.status() == Some(500)
        && error
            .api_message()
            .is_some_and(|m| m.contains("forkfile.sock"))
}

/// Owner and mode of a file or directory created by a push.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileOptions {
    /// Owner uid (inside the instance).
    pub uid: Option<u32>,
    /// Owner gid.
    pub gid: Option<u32>,
    /// Permission bits, e.g. `0o644`.
    pub mode: Option<u32>,
}

impl FileOptions {
    /// Mode only.
    #[must_use]
    pub fn mode(mode: u32) -> Self {
        Self {
            mode: Some(mode),
            ..Self::default()
        }
    }

    /// With owner.
    #[must_use]
    pub fn owner(mut self, uid: u32, gid: u32) -> Self {
        self.uid = Some(uid);
        self.gid = Some(gid);
        self
    }
}

/// The `X-Incus-mode` value: octal with a leading zero.
#[must_use]
pub fn mode_header(mode: u32) -> String {
    format!("0{mode:o}")
}

/// What a pull found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file's contents.
    File(Bytes),
    /// A directory's entry names.
    Directory(Vec<String>),
    /// A symlink's target.
    Symlink(String),
}

/// A pulled file with its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileContent {
    /// Contents.
    pub kind: FileKind,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Permission bits.
    pub mode: u32,
}

/// Typed handle on one instance's files.
#[derive(Debug, Clone)]
pub struct Files {
    client: Client,
    instance: String,
}

fn check_path(path: &str) -> Result<()> {
    if path.starts_with('/') {
        Ok(())
    } else {
        Err(Error::invalid(
            "instance file path",
            format!("{path:?} is relative; give an absolute path inside the instance"),
        ))
    }
}

impl Files {
    pub(crate) fn new(client: Client, instance: &str) -> Self {
        Self {
            client,
            instance: instance.to_owned(),
        }
    }

    fn request(&self, method: Method, path: &str) -> Result<ApiRequest> {
        check_path(path)?;
        Ok(
            ApiRequest::new(method, format!("{}/files", instance_path(&self.instance)))
                .query("path", path),
        )
    }

    fn with_options(mut req: ApiRequest, opts: FileOptions) -> Result<ApiRequest> {
        if let Some(uid) = opts.uid {
            req = req.header("x-incus-uid", &uid.to_string())?;
        }
        if let Some(gid) = opts.gid {
            req = req.header("x-incus-gid", &gid.to_string())?;
        }
        if let Some(mode) = opts.mode {
            req = req.header("x-incus-mode", &mode_header(mode))?;
        }
        Ok(req)
    }

    /// Writes `contents` to `path` (created or overwritten).
    ///
    /// # Errors
    /// When the parent directory is missing or Incus refuses.
    pub async fn push(
        &self,
        path: &str,
        contents: impl Into<Bytes>,
        opts: FileOptions,
    ) -> Result<()> {
        let contents = contents.into();
        HELPER_LOST
            .run(|| async {
                let req = Self::with_options(self.request(Method::POST, path)?, opts)?
                    .header("x-incus-type", "file")?
                    .header("x-incus-write", "overwrite")?
                    .raw("application/octet-stream", full_body(contents.clone()));
                self.client.call_unit(req).await
            })
            .await
    }

    /// Creates a directory (its parent must exist; an existing directory is fine).
    ///
    /// # Errors
    /// When Incus refuses.
    pub async fn mkdir(&self, path: &str, opts: FileOptions) -> Result<()> {
        HELPER_LOST
            .run(|| async {
                let req = Self::with_options(self.request(Method::POST, path)?, opts)?
                    .header("x-incus-type", "directory")?
                    .raw("application/octet-stream", full_body(Bytes::new()));
                self.client.call_unit(req).await
            })
            .await
    }

    /// Creates every missing directory of `path`, like `mkdir -p`.
    ///
    /// # Errors
    /// When Incus refuses one of them.
    pub async fn mkdir_all(&self, path: &str, opts: FileOptions) -> Result<()> {
        check_path(path)?;
        let mut current = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            current.push('/');
            current.push_str(part);
            self.mkdir(&current, opts).await?;
        }
        Ok(())
    }

    /// Creates a symlink at `path` pointing to `target`.
    ///
    /// # Errors
    /// When Incus refuses.
    pub async fn symlink(&self, path: &str, target: &str) -> Result<()> {
        HELPER_LOST
            .run(|| async {
                let req = self
                    .request(Method::POST, path)?
                    .header("x-incus-type", "symlink")?
                    .raw(
                        "application/octet-stream",
                        full_body(Bytes::from(target.to_owned())),
                    );
                self.client.call_unit(req).await
            })
            .await
    }

    /// Reads `path`: a file's contents, a directory's entries or a symlink's target.
    ///
    /// # Errors
    /// [`crate::Error::is_not_found`] when it does not exist.
    pub async fn pull(&self, path: &str) -> Result<FileContent> {
        let shown = self.request(Method::GET, path)?.path_and_query();
        let (parts, body) = HELPER_LOST
            .run(|| async {
                let req = self.request(Method::GET, path)?;
                self.client.call_raw(req, MAX_PULL).await
            })
            .await?;
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let num = |name: &str, radix: u32| -> Result<u32> {
            let raw = header(name).unwrap_or_else(|| "0".into());
            u32::from_str_radix(raw.trim(), radix).map_err(|_| {
                Error::decode(
                    &Method::GET,
                    &shown,
                    format!("header {name} is not a number: {raw:?}"),
                )
            })
        };
        let uid = num("x-incus-uid", 10)?;
        let gid = num("x-incus-gid", 10)?;
        let mode = num("x-incus-mode", 8)?;
        let kind = match header("x-incus-type").as_deref() {
            Some("directory") => {
                let env = crate::response::decode_envelope(
                    &Method::GET,
                    &shown,
                    parts.status,
                    &parts.headers,
                    &body,
                )?;
                let (names, _) = env.into_sync::<Vec<String>>(&Method::GET, &shown)?;
                FileKind::Directory(names)
            }
            Some("symlink") => FileKind::Symlink(String::from_utf8_lossy(&body).into_owned()),
            _ => FileKind::File(body),
        };
        Ok(FileContent {
            kind,
            uid,
            gid,
            mode,
        })
    }

    /// Deletes a file or an empty directory.
    ///
    /// # Errors
    /// When it does not exist or a directory is not empty.
    pub async fn delete(&self, path: &str) -> Result<()> {
        HELPER_LOST
            .run(|| async {
                self.client
                    .call_unit(self.request(Method::DELETE, path)?)
                    .await
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(status: u16, message: &str) -> Error {
        Error::Api {
            method: Method::POST,
            path: "/1.0/instances/web/files?path=%2Fetc%2Fx".into(),
            status,
            message: message.into(),
        }
    }

    const HELPER_LOST_MESSAGE: &str =
        "read unix @->/proc/self/fd/75/forkfile.sock: read: connection reset by peer";

    #[test]
    fn only_a_lost_file_helper_is_sent_again() {
        assert!(is_forkfile_lost(&refused(500, HELPER_LOST_MESSAGE)));
        assert!(!is_forkfile_lost(&refused(
            500,
            "Failed to write file: disk full"
        )));
        assert!(!is_forkfile_lost(&refused(404, "not found")));
    }

    #[test]
    fn mode_header_is_octal_with_leading_zero() {
        assert_eq!(mode_header(0o644), "0644");
        assert_eq!(mode_header(0o600), "0600");
        assert_eq!(mode_header(0o4755), "04755");
        assert_eq!(mode_header(0), "00");
    }

    #[test]
    fn relative_paths_are_refused() {
        let err = check_path("etc/passwd").unwrap_err();
        assert!(err.to_string().contains("absolute"), "{err}");
    }
}
