//! The partial destination: a copy writes under a temporary name and
//! renames the image to the destination's name only when it is complete,
//! so nothing half-made is ever found under that name. A marker in the
//! partial's image-meta says which source and snapshot it copies, so that
//! whoever finds a partial left by a copy that died can reclaim it (and
//! that copy's snapshot). `migrate copy` and the job's copy step both
//! write through it.

use tracing::warn;

use crate::ceph::{CreateOptions, Image, IoCtx};
use crate::error::{Error, ErrorKind, Result};
use crate::spec::ImageSpec;

/// Suffix of the name a copy writes to until it is complete.
pub const PARTIAL_SUFFIX: &str = ".livemig-partial";
/// Prefix of the temporary source snapshots copies read from.
pub const SNAPSHOT_PREFIX: &str = "livemig-copy-";
/// Image-meta key marking a partial destination; its value is
/// `<source cluster fsid> <source spec>@<snapshot>`, so that whoever finds a
/// partial left by a copy that died can also remove that copy's snapshot.
pub const PARTIAL_META_KEY: &str = "livemig.partial-of";

/// The partial name of destination image `name`.
pub fn partial_name(name: &str) -> String {
    format!("{name}{PARTIAL_SUFFIX}")
}

/// Creates the partial destination `partial` of `size` bytes as `layout` says, marks it
/// as the copy of `src`@`snap` ([`PARTIAL_META_KEY`]: whoever finds it after
/// a crash can reclaim it and that snapshot), and returns it open.
pub async fn create_partial(
    dst_io: &IoCtx,
    partial: &str,
    size: u64,
    layout: &CreateOptions,
    src_io: &IoCtx,
    src: &ImageSpec,
    snap: &str,
) -> Result<Image> {
    dst_io.create_image(partial, size, layout).await?;
    let img = dst_io.open_image(partial).await?;
    let marker = format!("{} {src}@{snap}", src_io.cluster().fsid());
    if let Err(e) = img.metadata_set(PARTIAL_META_KEY, &marker).await {
        // Closed before returning, so that the caller can remove it.
        img.close().await;
        return Err(e);
    }
    Ok(img)
}

/// Completes a fully copied partial destination: the source's image-meta,
/// the partial marker removed, everything flushed.
pub async fn finish_partial(dst: &Image, metadata: &[(String, String)]) -> Result<()> {
    for (k, v) in metadata {
        dst.metadata_set(k, v).await?;
    }
    dst.metadata_remove(PARTIAL_META_KEY).await?;
    dst.flush().await
}

/// Removes a partial destination left by a copy that died (and, when it
/// was a copy of the same source, that copy's snapshot), or refuses if
/// another copy is writing it right now.
pub(super) async fn reclaim_stale_partial(io: &IoCtx, partial: &str, src_io: &IoCtx, src: &ImageSpec) -> Result<()> {
    let img = io.open_image_read_only(partial, None).await?;
    let watchers = img.watchers().await?;
    let marker = img
        .metadata_list()
        .await?
        .into_iter()
        .find(|(k, _)| k == PARTIAL_META_KEY)
        .map(|(_, v)| v);
    img.close().await;
    // A read-only open registers no watch, so any watcher is another client.
    if !watchers.is_empty() {
        return Err(Error::new(ErrorKind::DestinationInUse, "copy")
            .target(io.image_spec(partial))
            .message(format!(
                "another copy is writing `{}` right now",
                io.image_spec(partial)
            )));
    }
    let Some(marker) = marker else {
        return Err(Error::new(ErrorKind::DestinationExists, "copy")
            .target(io.image_spec(partial))
            .message(format!(
                "`{}` exists but was not made by livemig; remove or rename it",
                io.image_spec(partial)
            )));
    };
    warn!(image = %io.image_spec(partial), "removing the partial destination of an earlier copy that did not finish");
    io.remove_image(partial).await?;
    let ours = format!("{} {src}@", src_io.cluster().fsid());
    if let Some(snap) = marker.strip_prefix(&ours).filter(|s| s.starts_with(SNAPSHOT_PREFIX)) {
        let img = src_io.open_image(&src.image).await?;
        // Also one a removal that was cut short left in the trash namespace.
        let removed = img.snap_remove_given(snap).await;
        img.close().await;
        if removed? > 0 {
            warn!(snapshot = %snap, "removed the snapshot of the copy that did not finish");
        }
    }
    Ok(())
}
