//! Fencing a source image so that no write can land on it any more.
//!
//! The hypervisor's hold is a promise by the instance; the fence is Ceph's
//! guarantee. livemig takes the image's exclusive lock explicitly: a
//! cooperating owner's librbd flushes and hands the lock over, and as long
//! as livemig holds it, every other client's write
//! fails (`EROFS`) instead of landing. An owner that does not hand it over
//! within the timeout (hung, or stopped) has its lock broken, which
//! blocklists it cluster-wide: none of its writes can land afterwards.

use std::time::Duration;

use tracing::{info, warn};

use crate::ceph::{Features, Image};
use crate::error::{ErrorKind, Result};

/// What fencing took.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FenceReport {
    /// Lock owners that did not hand the lock over and were blocklisted.
    pub blocklisted: Vec<String>,
}

/// Takes `image`'s exclusive lock (the image must be open read-write, with
/// the exclusive-lock feature); breaks and blocklists an owner that does not
/// hand it over within `timeout`.
pub async fn fence(image: &Image, timeout: Duration) -> Result<FenceReport> {
    let mut report = FenceReport::default();
    let deadline = tokio::time::Instant::now() + timeout;
    // An owner that refuses the hand-over makes the acquire fail at once
    // (it holds the lock explicitly); one that does not answer makes it
    // wait. Either way it has until the deadline.
    loop {
        let acquire = image.lock_acquire_exclusive();
        tokio::pin!(acquire);
        tokio::select! {
            r = &mut acquire => match r {
                Ok(()) => return Ok(report),
                Err(e) if matches!(e.kind(), ErrorKind::Fenced | ErrorKind::Busy) && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Err(e) if matches!(e.kind(), ErrorKind::Fenced | ErrorKind::Busy) => {}
                Err(e) => return Err(e),
            },
            _ = tokio::time::sleep_until(deadline) => {}
        }
        // The owner did not hand the lock over: break it (blocklisting the
        // owner), then take it.
        for owner in image.lock_owners().await? {
            warn!(image = %image.spec(), %owner, "lock owner did not release the lock in time; breaking it (blocklists the owner)");
            if break_lock(image, &owner).await? {
                report.blocklisted.push(owner);
            }
        }
        image.lock_acquire_exclusive().await?;
        info!(image = %image.spec(), blocklisted = report.blocklisted.len(), "source fenced");
        return Ok(report);
    }
}

/// A client of an image, as fencing sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// Its address, as the image's watchers and lock owners name it.
    pub addr: String,
    /// The client id of its watch, if it watches the image.
    pub watcher_id: Option<i64>,
    /// Whether it owns the image's exclusive lock.
    pub owns_lock: bool,
}

/// What [`fence_out_clients`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FencedOut {
    /// The clients fenced out (blocklisted, their lock broken if they owned it).
    pub fenced: Vec<Client>,
    /// This process's own addresses among the image's watchers.
    pub own: Vec<String>,
}

/// Fences out the clients of `image` that `select` picks, never this
/// process's own connection to it (breaking our own lock would blocklist
/// us): a lock owner has its lock broken, which blocklists it; any other
/// is blocklisted. Either way none of its writes can land any more.
/// `why` says who they are, for the log.
pub async fn fence_out_clients(image: &Image, why: &str, select: impl Fn(&Client) -> bool) -> Result<FencedOut> {
    let me = image.ioctx().cluster().instance_id() as i64;
    let watchers = image.watchers().await?;
    let own: Vec<String> = watchers.iter().filter(|w| w.id == me).map(|w| w.addr.clone()).collect();
    let mut clients: Vec<Client> = watchers
        .into_iter()
        .filter(|w| w.id != me)
        .map(|w| Client {
            addr: w.addr,
            watcher_id: Some(w.id),
            owns_lock: false,
        })
        .collect();
    if image.info().await?.features.contains(Features::EXCLUSIVE_LOCK) {
        for owner in image.lock_owners().await? {
            if own.contains(&owner) {
                continue;
            }
            match clients.iter_mut().find(|c| c.addr == owner) {
                Some(c) => c.owns_lock = true,
                None => clients.push(Client {
                    addr: owner,
                    watcher_id: None,
                    owns_lock: true,
                }),
            }
        }
    }
    let mut fenced = Vec::new();
    for client in clients.into_iter().filter(|c| select(c)) {
        warn!(image = %image.spec(), addr = %client.addr, owns_lock = client.owns_lock, "{why}; fencing it out (blocklisted)");
        if client.owns_lock {
            break_lock(image, &client.addr).await?;
        } else {
            image.ioctx().cluster().blocklist_add(&client.addr, 3600).await?;
        }
        fenced.push(client);
    }
    Ok(FencedOut { fenced, own })
}

/// Breaks `owner`'s exclusive lock on `image`, which blocklists that client
/// cluster-wide. `false` when the lock was released or broken meanwhile.
pub async fn break_lock(image: &Image, owner: &str) -> Result<bool> {
    match image.lock_break(owner).await {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::ImageNotFound => Ok(false),
        Err(e) => Err(e),
    }
}
