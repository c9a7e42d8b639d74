//! The test instance's control protocol, and the hook that speaks it.
//!
//! The test instance (`livemig-test-instance`, shipped with the tests and
//! the demo) is a real librbd client that writes a verifiable pattern. It
//! listens on a unix socket for one line per command and answers one line:
//! `ok ...` or `err <reason>`.
//!
//! | command | effect |
//! |---|---|
//! | `hold` | stop issuing writes; reply once every issued write completed and was flushed |
//! | `resume` | issue writes again |
//! | `prepare <conf or -> <pool[/ns]/image>` | (held only) open this image for a `repoint` to come; `resume` without one closes it |
//! | `repoint <conf or -> <pool[/ns]/image>` | (held only) close the image, use this one (`-`: same cluster) |
//! | `status` | `ok {json}`: held, image, counts |
//! | `stop` | drain, flush, exit |

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::Hypervisor;
use crate::catalog::{Attachment, Backing};
use crate::error::{Error, ErrorKind, Result};

/// How long a command may take (a hold waits for in-flight writes).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Sends one command line to a control socket and returns the text after `ok`.
pub async fn command(socket: &str, line: &str) -> Result<String> {
    let op = "test-instance control";
    let fail = |kind: ErrorKind, why: String| Error::new(kind, op).target(socket.to_owned()).message(why);
    let exchange = async {
        let mut stream = UnixStream::connect(socket).await.map_err(|e| {
            fail(
                ErrorKind::Hypervisor,
                format!("cannot reach the instance's control socket `{socket}`: {e} (is the instance running?)"),
            )
        })?;
        stream
            .write_all(format!("{line}\n").as_bytes())
            .await
            .map_err(|e| fail(ErrorKind::Hypervisor, format!("sending `{line}`: {e}")))?;
        let mut reply = String::new();
        BufReader::new(stream)
            .read_line(&mut reply)
            .await
            .map_err(|e| fail(ErrorKind::Hypervisor, format!("reading the reply to `{line}`: {e}")))?;
        Ok::<_, Error>(reply)
    };
    let reply = tokio::time::timeout(COMMAND_TIMEOUT, exchange).await.map_err(|_| {
        fail(
            ErrorKind::Hypervisor,
            format!("no reply to `{line}` within {COMMAND_TIMEOUT:?}"),
        )
    })??;
    let reply = reply.trim_end();
    if let Some(rest) = reply.strip_prefix("ok") {
        Ok(rest.trim_start().to_owned())
    } else if let Some(why) = reply.strip_prefix("err") {
        Err(fail(
            ErrorKind::Hypervisor,
            format!("the instance refused `{line}`: {}", why.trim()),
        ))
    } else {
        Err(fail(
            ErrorKind::Hypervisor,
            format!("the instance closed the connection without answering `{line}` (reply {reply:?})"),
        ))
    }
}

/// [`Hypervisor`] over a test instance's control socket.
#[derive(Debug, Clone)]
pub struct TestInstanceHook {
    socket: PathBuf,
    cluster_confs: Vec<(String, String)>,
}

impl TestInstanceHook {
    /// A hook for the instance listening on `socket`; `cluster_confs` maps
    /// catalog cluster names to ceph.conf paths for cross-cluster re-points.
    pub fn new(socket: &str, cluster_confs: Vec<(String, String)>) -> Self {
        TestInstanceHook {
            socket: PathBuf::from(socket),
            cluster_confs,
        }
    }

    fn socket(&self) -> String {
        self.socket.to_string_lossy().into_owned()
    }

    /// The ceph.conf argument for `to`: `-` on the instance's own cluster.
    fn conf_for(&self, attachment: &Attachment, to: &Backing) -> Result<String> {
        if to.cluster == attachment.connection.cluster {
            return Ok("-".to_owned());
        }
        self.cluster_confs
            .iter()
            .find(|(name, _)| *name == to.cluster)
            .map(|(_, conf)| conf.clone())
            .ok_or_else(|| {
                Error::new(ErrorKind::Config, "re-point instance")
                    .target(attachment.instance_id.clone())
                    .message(format!("no ceph.conf is known for cluster `{}`", to.cluster))
            })
    }
}

#[async_trait::async_trait]
impl Hypervisor for TestInstanceHook {
    async fn hold(&self, _attachment: &Attachment) -> Result<()> {
        command(&self.socket(), "hold").await.map(|_| ())
    }

    async fn resume(&self, _attachment: &Attachment) -> Result<()> {
        command(&self.socket(), "resume").await.map(|_| ())
    }

    async fn repoint(&self, attachment: &Attachment, to: &Backing) -> Result<()> {
        let conf = self.conf_for(attachment, to)?;
        command(&self.socket(), &format!("repoint {conf} {}", to.image))
            .await
            .map(|_| ())
    }

    async fn prepare_repoint(&self, attachment: &Attachment, to: &Backing) -> Result<()> {
        let conf = self.conf_for(attachment, to)?;
        command(&self.socket(), &format!("prepare {conf} {}", to.image))
            .await
            .map(|_| ())
    }
}

/// The bytes the test instance writes for a write with `seed`: a
/// SplitMix64 stream, so a log line (offset, length, seed) determines the
/// data exactly and a test can rebuild the image from the log.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut state = seed;
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// One line of the test instance's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEntry {
    /// An acknowledged write of `pattern(seed, len)` at `offset`.
    Write {
        /// Unix milliseconds of the acknowledgement.
        at_ms: u64,
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Pattern seed.
        seed: u64,
    },
    /// An acknowledged discard.
    Discard {
        /// Unix milliseconds of the acknowledgement.
        at_ms: u64,
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// A write or discard that failed (not acknowledged; its range is undefined).
    Failed {
        /// Unix milliseconds of the failure.
        at_ms: u64,
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u64,
        /// The negative errno.
        errno: i32,
    },
    /// The instance held (or, ignoring holds, claimed to).
    Held {
        /// Unix milliseconds.
        at_ms: u64,
    },
    /// The instance resumed.
    Resumed {
        /// Unix milliseconds.
        at_ms: u64,
    },
    /// The instance now uses this image.
    Repointed {
        /// Unix milliseconds.
        at_ms: u64,
        /// `pool[/ns]/image`.
        image: String,
    },
}

impl LogEntry {
    /// Parses one log line.
    pub fn parse(line: &str) -> Option<LogEntry> {
        let f: Vec<&str> = line.split_whitespace().collect();
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
        Some(match *f.first()? {
            "W" => LogEntry::Write {
                at_ms: n(1)?,
                offset: n(2)?,
                len: n(3)?,
                seed: n(4)?,
            },
            "D" => LogEntry::Discard {
                at_ms: n(1)?,
                offset: n(2)?,
                len: n(3)?,
            },
            "E" => LogEntry::Failed {
                at_ms: n(1)?,
                offset: n(2)?,
                len: n(3)?,
                errno: f.get(4)?.parse().ok()?,
            },
            "H" => LogEntry::Held { at_ms: n(1)? },
            "R" => LogEntry::Resumed { at_ms: n(1)? },
            "P" => LogEntry::Repointed {
                at_ms: n(1)?,
                image: f.get(2)?.to_string(),
            },
            _ => return None,
        })
    }
}

impl std::fmt::Display for LogEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogEntry::Write {
                at_ms,
                offset,
                len,
                seed,
            } => write!(f, "W {at_ms} {offset} {len} {seed}"),
            LogEntry::Discard { at_ms, offset, len } => write!(f, "D {at_ms} {offset} {len}"),
            LogEntry::Failed {
                at_ms,
                offset,
                len,
                errno,
            } => write!(f, "E {at_ms} {offset} {len} {errno}"),
            LogEntry::Held { at_ms } => write!(f, "H {at_ms}"),
            LogEntry::Resumed { at_ms } => write!(f, "R {at_ms}"),
            LogEntry::Repointed { at_ms, image } => write!(f, "P {at_ms} {image}"),
        }
    }
}

/// Applies acknowledged writes and discards of a log, in order, to a model
/// of the image's content (which must start as the image did).
pub fn apply_log(model: &mut [u8], entries: &[LogEntry]) {
    for e in entries {
        match *e {
            LogEntry::Write { offset, len, seed, .. } => {
                let (o, l) = (offset as usize, len as usize);
                model[o..o + l].copy_from_slice(&pattern(seed, l));
            }
            LogEntry::Discard { offset, len, .. } => {
                let (o, l) = (offset as usize, len as usize);
                model[o..o + l].fill(0);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_round_trip_and_the_model_follows_them() {
        let entries = vec![
            LogEntry::Write {
                at_ms: 5,
                offset: 8,
                len: 20,
                seed: 77,
            },
            LogEntry::Discard {
                at_ms: 6,
                offset: 12,
                len: 4,
            },
            LogEntry::Failed {
                at_ms: 7,
                offset: 0,
                len: 8,
                errno: -30,
            },
            LogEntry::Held { at_ms: 8 },
            LogEntry::Repointed {
                at_ms: 9,
                image: "p/ns/i".into(),
            },
            LogEntry::Resumed { at_ms: 10 },
        ];
        for e in &entries {
            assert_eq!(LogEntry::parse(&e.to_string()).as_ref(), Some(e));
        }
        let mut model = vec![1u8; 40];
        apply_log(&mut model, &entries);
        let p = pattern(77, 20);
        assert_eq!(&model[..8], &[1u8; 8]);
        assert_eq!(&model[8..12], &p[..4]);
        assert_eq!(&model[12..16], &[0u8; 4]);
        assert_eq!(&model[16..28], &p[8..]);
        assert_eq!(&model[28..], &[1u8; 12]);
        assert_ne!(pattern(1, 64), pattern(2, 64));
        assert_eq!(pattern(3, 13), pattern(3, 64)[..13]);
    }
}
