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
