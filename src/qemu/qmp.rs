//! An async QMP client: greeting, capabilities negotiation, commands with
//! their replies, and events delivered while commands run.
//!
//! Why our own and not the `qapi` crate: `qapi`'s typed commands are
//! generated from one QEMU schema release, while livemig speaks to whatever
//! QEMU the instance runs (and needs commands that came and changed across
//! releases: `block-job-change`, `job-change`); the engine uses about a dozen
//! commands, whose arguments read most clearly as the JSON the QMP reference
//! documents. So this is a small client over `serde_json::Value`: one reader
//! task owns the socket's read half, routes each reply to the command that
//! waits for it (by `id`) and broadcasts events; a socket that goes away
//! fails every waiting command with [`ErrorKind::Hypervisor`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot};

use crate::error::{Error, ErrorKind, Result};

/// How long a command may take before the client gives up on it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// An asynchronous event from QEMU.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The event name, e.g. `BLOCK_JOB_READY`.
    pub name: String,
    /// Its data (an empty object if none).
    pub data: Value,
}

/// What the reader hands a waiting command.
enum Reply {
    Return(Value),
    Refused { class: String, desc: String },
    Gone(String),
}

type Waiters = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Reply>>>>>;

/// A connected, negotiated QMP session. Cheap to clone.
#[derive(Clone)]
pub struct Qmp {
    inner: Arc<QmpInner>,
}

struct QmpInner {
    socket: String,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    waiters: Waiters,
    events: broadcast::Sender<Event>,
    next_id: AtomicU64,
    version: Value,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for QmpInner {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// What went wrong talking to QEMU: the cause of a QMP
/// [`ErrorKind::Hypervisor`] error, so that callers can tell "QEMU went
/// away" from "QEMU refused" without reading message words.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be connected (no QEMU listens there).
    #[error("cannot connect: {0}")]
    Unreachable(#[source] std::io::Error),
    /// The connection ended (QEMU exited or closed it).
    #[error("connection gone: {0}")]
    Gone(String),
    /// QEMU answered the command with an error.
    #[error("`{command}` refused: {class}: {desc}")]
    Refused {
        /// The command.
        command: String,
        /// QEMU's error class, e.g. `GenericError`.
        class: String,
        /// QEMU's description.
        desc: String,
    },
    /// No reply came in time.
    #[error("`{command}` got no reply")]
    NoReply {
        /// The command.
        command: String,
    },
}

/// Whether `e` says that QEMU went away (or never listened): its process
/// is gone, as opposed to a command it refused.
pub fn qemu_went_away(e: &Error) -> bool {
    matches!(
        std::error::Error::source(e).and_then(|s| s.downcast_ref::<QmpError>()),
        Some(QmpError::Gone(_) | QmpError::Unreachable(_))
    )
}

fn gone(socket: &str, why: impl std::fmt::Display) -> Error {
    let why = why.to_string();
    Error::new(ErrorKind::Hypervisor, "qmp")
        .target(socket.to_owned())
        .message(format!(
            "the QMP connection to `{socket}` is gone: {why} (is QEMU still running?)"
        ))
        .cause(QmpError::Gone(why))
}

impl Qmp {
    /// Connects to a QMP unix socket and negotiates capabilities.
    pub async fn connect(socket: impl AsRef<Path>) -> Result<Qmp> {
        let path = socket.as_ref().to_string_lossy().into_owned();
        let stream = UnixStream::connect(&path).await.map_err(|e| {
            Error::new(ErrorKind::Hypervisor, "qmp connect")
                .target(path.clone())
                .message(format!("cannot connect to QMP socket `{path}`: {e}"))
                .cause(QmpError::Unreachable(e))
        })?;
        let (read, write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let greeting = tokio::time::timeout(COMMAND_TIMEOUT, lines.next_line())
            .await
            .map_err(|_| gone(&path, "no greeting"))?
            .map_err(|e| gone(&path, e))?
            .ok_or_else(|| gone(&path, "closed before the greeting"))?;
        let greeting: Value = serde_json::from_str(&greeting).map_err(|e| gone(&path, format!("bad greeting: {e}")))?;
        let version = greeting
            .pointer("/QMP/version")
            .cloned()
            .ok_or_else(|| gone(&path, format!("not a QMP greeting: {greeting}")))?;
        let waiters: Waiters = Arc::new(Mutex::new(Some(HashMap::new())));
        let (events, _) = broadcast::channel(1024);
        let reader = tokio::spawn(read_loop(lines, waiters.clone(), events.clone()));
        let qmp = Qmp {
            inner: Arc::new(QmpInner {
                socket: path,
                writer: tokio::sync::Mutex::new(write),
                waiters,
                events,
                next_id: AtomicU64::new(1),
                version,
                reader,
            }),
        };
        qmp.execute("qmp_capabilities", json!({})).await?;
        Ok(qmp)
    }

    /// QEMU's version, as `(major, minor, micro)`.
    pub fn version(&self) -> (u64, u64, u64) {
        let v = |k: &str| {
            self.inner
                .version
                .pointer(&format!("/qemu/{k}"))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        (v("major"), v("minor"), v("micro"))
    }

    /// Events from now on (each subscriber sees every event).
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// Runs a command and returns its `return` value. A QMP error reply is
    /// an [`ErrorKind::Hypervisor`] error naming the command, QEMU's error
    /// class and description.
    pub async fn execute(&self, command: &str, arguments: Value) -> Result<Value> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut w = self.inner.waiters.lock().unwrap_or_else(|p| p.into_inner());
            match w.as_mut() {
                Some(map) => map.insert(id, tx),
                None => return Err(gone(&self.inner.socket, "closed")),
            };
        }
        let mut msg = json!({"execute": command, "id": id});
        if arguments.as_object().is_some_and(|o| !o.is_empty()) {
            msg["arguments"] = arguments;
        }
        let line = format!("{msg}\n");
        {
            let mut writer = self.inner.writer.lock().await;
            writer
                .write_all(line.as_bytes())
                .await
                .map_err(|e| gone(&self.inner.socket, e))?;
        }
        let reply = tokio::time::timeout(COMMAND_TIMEOUT, rx).await;
        let forget = || {
            if let Some(map) = self.inner.waiters.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                map.remove(&id);
            }
        };
        match reply {
            Ok(Ok(Reply::Return(v))) => Ok(v),
            Ok(Ok(Reply::Refused { class, desc })) => Err(Error::new(ErrorKind::Hypervisor, "qmp")
                .target(self.inner.socket.clone())
                .message(format!("QEMU refused `{command}`: {class}: {desc}"))
                .cause(QmpError::Refused {
                    command: command.to_owned(),
                    class,
                    desc,
                })),
            Ok(Ok(Reply::Gone(why))) => Err(gone(&self.inner.socket, format!("{why}, while `{command}` ran"))),
            Ok(Err(_)) => Err(gone(&self.inner.socket, format!("while `{command}` ran"))),
            Err(_) => {
                forget();
                Err(Error::new(ErrorKind::Hypervisor, "qmp")
                    .target(self.inner.socket.clone())
                    .message(format!("`{command}` got no reply within {COMMAND_TIMEOUT:?}"))
                    .cause(QmpError::NoReply {
                        command: command.to_owned(),
                    }))
            }
        }
    }
}

async fn read_loop(
    mut lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    waiters: Waiters,
    events: broadcast::Sender<Event>,
) {
    let end = loop {
        let line = match lines.next_line().await {
            Ok(Some(l)) => l,
            Ok(None) => break "QEMU closed the connection".to_owned(),
            Err(e) => break e.to_string(),
        };
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if let Some(name) = msg.get("event").and_then(Value::as_str) {
            let data = msg.get("data").cloned().unwrap_or_else(|| json!({}));
            let _ = events.send(Event {
                name: name.to_owned(),
                data,
            });
            continue;
        }
        let Some(id) = msg.get("id").and_then(Value::as_u64) else {
            continue;
        };
        let result = match (msg.get("return"), msg.get("error")) {
            (Some(r), _) => Reply::Return(r.clone()),
            (None, Some(e)) => Reply::Refused {
                class: e
                    .get("class")
                    .and_then(Value::as_str)
                    .unwrap_or("GenericError")
                    .to_owned(),
                desc: e.get("desc").and_then(Value::as_str).unwrap_or("").to_owned(),
            },
            (None, None) => continue,
        };
        let waiter = waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
            .and_then(|m| m.remove(&id));
        if let Some(tx) = waiter {
            let _ = tx.send(result);
        }
    };
    // Every command still waiting learns that the socket is gone.
    let left = waiters.lock().unwrap_or_else(|p| p.into_inner()).take();
    for (_, tx) in left.into_iter().flatten() {
        let _ = tx.send(Reply::Gone(end.clone()));
    }
}
