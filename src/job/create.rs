//! A new job: the precheck, the engine chosen for an attached volume, and
//! the record written (phase `created`); nothing else changes.

use tracing::info;

use super::driver::now;
use super::record::{Engine, JobRecord, LivePolicy, LiveRecord, Phase, PhaseKind, SyncRecord};
use super::store::Stored;
use super::{fault, Migrator};
use crate::catalog::Access;
use crate::ceph::Features;
use crate::error::{Error, ErrorKind, Result};
use crate::precheck::{precheck, Destination};

impl Migrator {
    /// Runs the precheck and writes a new job record (phase `created`);
    /// nothing else changes. Drive it with [`Migrator::resume`].
    pub async fn create(&self, volume_id: &str, to: &Destination) -> Result<Stored> {
        self.create_job(volume_id, to, None).await
    }

    /// A new job, a continuous sync if `sync` is given (the native engine
    /// then moves the attached volume: its rounds are what keep the replica).
    pub(in crate::job) async fn create_job(
        &self,
        volume_id: &str,
        to: &Destination,
        sync: Option<SyncRecord>,
    ) -> Result<Stored> {
        let report = precheck(self.catalog.as_ref(), &self.clusters, volume_id, to)
            .await?
            .into_result()?;
        let volume = self.catalog.volume(volume_id).await?;
        let attachments = self.catalog.attachments(volume_id).await?;
        let engine_choice = match (&sync, self.options.engine) {
            (None, choice) => choice,
            (Some(_), Some(Engine::Qemu)) => {
                return Err(Error::new(ErrorKind::InvalidInput, "start sync")
                    .target(volume_id.to_owned())
                    .message(format!(
                        "a sync of volume `{volume_id}` runs on the native engine (its rounds keep the replica): let livemig choose the engine"
                    )))
            }
            (Some(_), _) => Some(Engine::Native),
        };
        if sync.is_some() && attachments.is_empty() {
            return Err(Error::new(ErrorKind::InvalidState, "start sync")
                .target(volume_id.to_owned())
                .message(format!(
                    "volume `{volume_id}` is not attached: this release keeps replicas of volumes an instance writes (its cutover holds the instance); move a detached volume with `migrate start`"
                )));
        }
        // An attached volume moves live: its instance must be reachable.
        let live = match attachments.as_slice() {
            [] if engine_choice == Some(Engine::Qemu) => {
                return Err(Error::new(ErrorKind::InvalidInput, "start migration")
                    .target(volume_id.to_owned())
                    .message(format!(
                        "volume `{volume_id}` is not attached, and the QEMU engine moves only volumes a QEMU has open: let livemig choose the engine"
                    )))
            }
            [] => None,
            [attachment] => {
                let engine = match (&attachment.access, engine_choice) {
                    (Access::Qmp { socket }, None | Some(Engine::Qemu)) => {
                        super::qemu::precheck(socket, &volume.backing.image).await?;
                        Engine::Qemu
                    }
                    (_, Some(Engine::Qemu)) => {
                        return Err(Error::new(ErrorKind::InvalidInput, "start migration")
                            .target(volume_id.to_owned())
                            .message(format!(
                                "instance `{}` is not reached through a QMP socket, so the QEMU engine cannot move its volume `{volume_id}`: let livemig choose the engine, or choose the native engine",
                                attachment.instance_id
                            )))
                    }
                    _ => {
                        self.hypervisors.for_attachment(attachment)?.check(attachment).await?;
                        Engine::Native
                    }
                };
                Some(LiveRecord {
                    attachment: attachment.clone(),
                    policy: self.options.live.apply(&LivePolicy::default()),
                    rounds: Vec::new(),
                    cutover: None,
                    engine,
                    qemu: None,
                })
            }
            [a, b, ..] => {
                return Err(Error::new(ErrorKind::AttachedTwice, "start migration")
                    .target(volume_id.to_owned())
                    .message(format!(
                        "volume `{volume_id}` is attached to `{}` and `{}`; a live migration holds one writer",
                        a.instance_id, b.instance_id
                    )))
            }
        };
        let destination = report
            .destination
            .clone()
            .expect("a passed precheck knows the destination");
        let dst_io = self
            .clusters
            .get(&destination.cluster)?
            .ioctx(&destination.image.pool, &destination.image.namespace)
            .await?;
        if dst_io.image_exists(&destination.image.image).await? {
            return Err(Error::new(ErrorKind::DestinationExists, "start migration")
                .target(destination.to_string())
                .message(format!(
                "`{destination}` exists; this release migrates into a new image only: give a pool or a new image name"
            )));
        }
        let src = &volume.backing.image;
        let src_img = self
            .clusters
            .get(&volume.backing.cluster)?
            .ioctx(&src.pool, &src.namespace)
            .await?
            .open_image_read_only(&src.image, None)
            .await?;
        let src_info = src_img.info().await?;
        src_img.close().await;
        if live.as_ref().is_some_and(|l| l.engine == Engine::Native)
            && !src_info.features.contains(Features::EXCLUSIVE_LOCK)
        {
            return Err(Error::new(ErrorKind::InvalidState, "start migration")
                .target(volume.backing.to_string())
                .message(format!(
                    "image `{src}` lacks the exclusive-lock feature, which a live migration needs to fence the source: `rbd feature enable {src} exclusive-lock` (with the instance's agreement), or detach the volume"
                )));
        }
        let source_image_id = src_info.id;
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let t = now();
        let record = JobRecord {
            id: id.clone(),
            volume_id: volume_id.to_owned(),
            source: volume.backing.clone(),
            destination,
            source_image_id: Some(source_image_id),
            original_volume: volume,
            original_attachments: attachments,
            policy: self.options.policy,
            phase: Phase::Created,
            created_at: t,
            updated_at: t,
            history: vec![(PhaseKind::Created, t)],
            last_error: None,
            live,
            source_drivers: Vec::new(),
            destination_data_pool: to.data_pool.clone(),
            destination_location: to.location.clone(),
            sync,
        };
        let stored = self.store.create(&record).await?;
        fault::point("after-create");
        info!(job = %id, volume = %volume_id, sync = stored.record.sync.is_some(), "job created");
        Ok(stored)
    }
}
