//! Running commands in an instance: recorded (exit code and captured output) and
//! streaming over websockets (stdin, stdout, stderr, signals, exit code).
//!
//! Recorded output lands in log files on the server that the client must delete
//! afterwards, and whose URLs carry no project (the client's scope adds it). A
//! streaming command starts only once its stdin, stdout and stderr sockets are
//! connected, within a few seconds, so they are connected concurrently; stdout and
//! stderr are never written to (that kills the command), and every socket is read so
//! the server's pings are answered.

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use http::Method;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::instances::{Instances, instance_path};
use crate::operations::{Operation, PendingOperation};
use crate::request::{ApiRequest, encode_segment};
use crate::transport::Stream as Conn;

/// Largest recorded output read back per stream.
const MAX_OUTPUT: usize = 256 * 1024 * 1024;

/// A command to run.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    /// Program and arguments.
    pub command: Vec<String>,
    /// Extra environment (Incus adds PATH, HOME, LANG, USER).
    pub environment: HashMap<String, String>,
    /// Numeric uid.
    pub user: Option<u32>,
    /// Numeric gid.
    pub group: Option<u32>,
    /// Absolute working directory.
    pub cwd: Option<String>,
}

impl ExecRequest {
    /// A command from program and arguments.
    #[must_use]
    pub fn new<I, S>(command: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            command: command.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// Adds an environment variable.
    #[must_use]
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.environment.insert(key.into(), value.into());
        self
    }

    /// Runs as `uid:gid`.
    #[must_use]
    pub fn user(mut self, uid: u32, gid: u32) -> Self {
        self.user = Some(uid);
        self.group = Some(gid);
        self
    }

    /// Runs in `cwd`.
    #[must_use]
    pub fn cwd(mut self, cwd: impl Into<String>) -> Self {
        self.cwd = Some(cwd.into());
        self
    }
}

#[derive(Serialize)]
struct ExecPost<'a> {
    command: &'a [String],
    environment: &'a HashMap<String, String>,
    #[serde(rename = "wait-for-websocket")]
    wait_for_websocket: bool,
    #[serde(rename = "record-output")]
    record_output: bool,
    interactive: bool,
    width: u32,
    height: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cwd: Option<&'a str>,
}

impl<'a> ExecPost<'a> {
    fn new(req: &'a ExecRequest, record: bool, websocket: bool) -> Self {
        Self {
            command: &req.command,
            environment: &req.environment,
            wait_for_websocket: websocket,
            record_output: record,
            interactive: false,
            width: 0,
            height: 0,
            user: req.user,
            group: req.group,
            cwd: req.cwd.as_deref(),
        }
    }
}

/// The outcome of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit code (non-zero is data, not an error).
    pub exit_code: i32,
    /// Captured stdout.
    pub stdout: Bytes,
    /// Captured stderr.
    pub stderr: Bytes,
}

impl ExecOutput {
    /// Stdout as text (lossy).
    #[must_use]
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Stderr as text (lossy).
    #[must_use]
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

fn exit_code(op: &Operation) -> Result<i32> {
    op.metadata_field("return")
        .and_then(serde_json::Value::as_f64)
        .map(|f| f as i32)
        .ok_or_else(|| {
            Error::decode(
                &Method::GET,
                &format!("/1.0/operations/{}", op.id),
                "the finished exec operation carries no exit code (metadata.return)",
            )
        })
}

impl Instances {
    fn validate(command: &ExecRequest) -> Result<()> {
        if command.command.is_empty() {
            return Err(Error::invalid(
                "exec command",
                "the command is empty; give at least the program",
            ));
        }
        Ok(())
    }

    /// Runs `command` with its output recorded, waits for it until `timeout`, reads
    /// stdout and stderr, and deletes the server-side log files.
    ///
    /// # Errors
    /// When Incus cannot run it (instance stopped, frozen), or at the deadline.
    pub async fn exec_recorded(
        &self,
        name: &str,
        command: &ExecRequest,
        timeout: Duration,
    ) -> Result<ExecOutput> {
        Self::validate(command)?;
        let deadline = Instant::now() + timeout;
        let pending = self
            .client
            .call_async(
                ApiRequest::new(Method::POST, format!("{}/exec", instance_path(name)))
                    .json(&ExecPost::new(command, true, false))?,
            )
            .await?;
        let op = pending.wait_until(deadline).await?.into_success()?;
        let code = exit_code(&op)?;
        let outputs: HashMap<String, String> = op
            .metadata_field("output")
            .cloned()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        let mut stdout = Bytes::new();
        let mut stderr = Bytes::new();
        for (fd, url) in &outputs {
            let path = url.split('?').next().unwrap_or(url).to_owned();
            let (_, body) = self
                .client
                .call_raw(ApiRequest::get(path.clone()), MAX_OUTPUT)
                .await?;
            match fd.as_str() {
                "1" => stdout = body,
                "2" => stderr = body,
                _ => {}
            }
            if let Err(e) = self
                .client
                .call_unit(ApiRequest::new(Method::DELETE, path.clone()))
                .await
            {
                tracing::warn!(error = %e, %path, "could not delete a recorded exec output");
            }
        }
        Ok(ExecOutput {
            exit_code: code,
            stdout,
            stderr,
        })
    }

    /// Starts `command` with its stdin, stdout and stderr on websockets.
    ///
    /// # Errors
    /// When Incus cannot run it or a websocket cannot be opened.
    pub async fn exec_stream(&self, name: &str, command: &ExecRequest) -> Result<ExecSession> {
        Self::validate(command)?;
        let pending = self
            .client
            .call_async(
                ApiRequest::new(Method::POST, format!("{}/exec", instance_path(name)))
                    .json(&ExecPost::new(command, false, true))?,
            )
            .await?;
        ExecSession::connect(self.client.clone(), pending).await
    }
}

/// A piece of output from a streaming command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecChunk {
    /// From stdout.
    Stdout(Bytes),
    /// From stderr.
    Stderr(Bytes),
}

type Ws = WebSocketStream<Conn>;

/// A running streaming command. Dropping it aborts its socket readers; the command
/// is then killed by the server when the sockets close.
#[derive(Debug)]
pub struct ExecSession {
    pending: PendingOperation,
    stdin: SplitSink<Ws, Message>,
    control: Option<SplitSink<Ws, Message>>,
    output: mpsc::Receiver<ExecChunk>,
    tasks: JoinSet<()>,
}

impl ExecSession {
    async fn connect(client: Client, pending: PendingOperation) -> Result<Self> {
        let op = pending.operation();
        let fds: HashMap<String, String> = op
            .metadata_field("fds")
            .cloned()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        let secret = |fd: &str| -> Result<String> {
            fds.get(fd).cloned().ok_or_else(|| {
                Error::decode(
                    &Method::POST,
                    "exec",
                    format!("the exec operation has no websocket secret for fd {fd}"),
                )
            })
        };
        let open = |fd_secret: String| {
            let client = client.clone();
            let path = format!("/1.0/operations/{}/websocket", encode_segment(&op.id));
            async move {
                client
                    .websocket(ApiRequest::get(path).query("secret", fd_secret))
                    .await
            }
        };
        let (s0, s1, s2) = (secret("0")?, secret("1")?, secret("2")?);
        let sc = fds.get("control").cloned();
        let (ws0, ws1, ws2, wsc) = tokio::join!(open(s0), open(s1), open(s2), async {
            match sc {
                Some(s) => Some(open(s).await),
                None => None,
            }
        });
        let (ws0, ws1, ws2) = (ws0?, ws1?, ws2?);
        let wsc = wsc.transpose()?;

        let mut tasks = JoinSet::new();
        let (tx, rx) = mpsc::channel(64);
        let (stdin, stdin_rx) = ws0.split();
        tasks.spawn(drain(stdin_rx));
        let control = match wsc {
            Some(ws) => {
                let (sink, rx) = ws.split();
                tasks.spawn(drain(rx));
                Some(sink)
            }
            None => None,
        };
        tasks.spawn(pump(ws1, tx.clone(), ExecChunk::Stdout));
        tasks.spawn(pump(ws2, tx, ExecChunk::Stderr));
        Ok(Self {
            pending,
            stdin,
            control,
            output: rx,
            tasks,
        })
    }

    /// The exec operation.
    #[must_use]
    pub fn operation(&self) -> &Operation {
        self.pending.operation()
    }

    /// Sends bytes to the command's stdin.
    ///
    /// # Errors
    /// When the stdin socket is closed.
    pub async fn write_stdin(&mut self, data: impl Into<Bytes>) -> Result<()> {
        self.stdin
            .send(Message::Binary(data.into()))
            .await
            .map_err(ws_err("stdin"))
    }

    /// Signals end of input (an empty text frame; the socket stays open).
    ///
    /// # Errors
    /// When the stdin socket is closed.
    pub async fn close_stdin(&mut self) -> Result<()> {
        self.stdin
            .send(Message::Text("".into()))
            .await
            .map_err(ws_err("stdin"))
    }

    /// Forwards a signal (e.g. 15 for SIGTERM) to the command.
    ///
    /// # Errors
    /// When there is no control socket or it is closed.
    pub async fn signal(&mut self, signal: i32) -> Result<()> {
        let control = self
            .control
            .as_mut()
            .ok_or_else(|| Error::invalid("exec signal", "the server offered no control socket"))?;
        let msg = serde_json::json!({ "command": "signal", "signal": signal }).to_string();
        control
            .send(Message::Text(msg.into()))
            .await
            .map_err(ws_err("control"))
    }

    /// The next piece of output, or `None` once stdout and stderr have both ended.
    pub async fn next_output(&mut self) -> Option<ExecChunk> {
        self.output.recv().await
    }

    /// Collects the remaining output and waits for the exit code, until `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] at the deadline; [`Error::OperationFailed`] when Incus could
    /// not run the command.
    pub async fn finish(mut self, timeout: Duration) -> Result<ExecOutput> {
        let deadline = Instant::now() + timeout;
        let mut stdout = BytesMut::new();
        let mut stderr = BytesMut::new();
        loop {
            match tokio::time::timeout_at(deadline, self.output.recv()).await {
                Ok(Some(ExecChunk::Stdout(b))) => stdout.extend_from_slice(&b),
                Ok(Some(ExecChunk::Stderr(b))) => stderr.extend_from_slice(&b),
                Ok(None) => break,
                Err(_) => {
                    return Err(Error::Timeout {
                        what: format!("the output of exec operation {}", self.pending.id()),
                    });
                }
            }
        }
        let op = self.pending.wait_until(deadline).await?.into_success()?;
        self.tasks.abort_all();
        Ok(ExecOutput {
            exit_code: exit_code(&op)?,
            stdout: stdout.freeze(),
            stderr: stderr.freeze(),
        })
    }
}

fn ws_err(which: &'static str) -> impl Fn(tokio_tungstenite::tungstenite::Error) -> Error {
    move |e| Error::Websocket {
        path: format!("exec {which}"),
        source: Box::new(e),
    }
}

/// Reads a socket we only write to, so pings are answered and closes noticed.
async fn drain(mut rx: SplitStream<Ws>) {
    while let Some(Ok(_)) = rx.next().await {}
}

/// Forwards a stdout/stderr socket until the empty-text barrier or close.
async fn pump(mut ws: Ws, tx: mpsc::Sender<ExecChunk>, wrap: fn(Bytes) -> ExecChunk) {
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Binary(b)) => {
                if tx.send(wrap(b)).await.is_err() {
                    break;
                }
            }
            Ok(Message::Text(t)) if t.is_empty() => break,
            Ok(Message::Text(t)) => {
                if tx
                    .send(wrap(Bytes::copy_from_slice(t.as_bytes())))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    // Close our side cleanly; the server is done with this stream.
    let _ = ws.close(None).await;
}
