//! What livemig reads about an image and asks of a new one: layout and
//! identity, creation options, snapshots and watchers, as plain values.

use super::features::Features;

/// Layout and identity of an image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImageInfo {
    /// Provisioned size in bytes.
    pub size: u64,
    /// Object size in bytes (`1 << order`).
    pub object_size: u64,
    /// log2 of the object size.
    pub order: u8,
    /// Its features.
    pub features: Features,
    /// Stripe unit in bytes.
    pub stripe_unit: u64,
    /// Stripe count.
    pub stripe_count: u64,
    /// The image's id (stable across renames).
    pub id: String,
}

/// Layout options for a new image; unset fields take the pool/cluster default.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// log2 of the object size.
    pub order: Option<u8>,
    /// Its features.
    pub features: Option<Features>,
    /// Stripe unit in bytes (with `stripe_count`).
    pub stripe_unit: Option<u64>,
    /// Stripe count (with `stripe_unit`).
    pub stripe_count: Option<u64>,
    /// A separate pool for the data objects (replicated or erasure-coded
    /// with overwrites); the image's own pool then keeps only its metadata.
    pub data_pool: Option<String>,
}

impl CreateOptions {
    /// The options that reproduce `info`'s layout. Only features that can be
    /// chosen at creation are kept (not `operations`, `migrating`, ...).
    pub fn like(info: &ImageInfo) -> Self {
        CreateOptions {
            order: Some(info.order),
            features: Some(info.features.intersection(Features::SETTABLE)),
            stripe_unit: Some(info.stripe_unit),
            stripe_count: Some(info.stripe_count),
            data_pool: None,
        }
    }

    /// These options with the data objects in `data_pool` (`None`: in the
    /// image's own pool).
    pub fn in_data_pool(self, data_pool: Option<&str>) -> Self {
        CreateOptions {
            data_pool: data_pool.map(str::to_owned),
            ..self
        }
    }
}

/// A snapshot of an image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SnapInfo {
    /// Snapshot id.
    pub id: u64,
    /// Image size at the snapshot.
    pub size: u64,
    /// Snapshot name.
    pub name: String,
    /// For a snapshot in librbd's trash namespace, the name it had. A
    /// removal first moves the snapshot there, so one that was interrupted
    /// (its process killed) leaves it there under a generated name; so does
    /// removing a snapshot that clones still use.
    pub trashed_name: Option<String>,
}

impl SnapInfo {
    /// The name the snapshot was given (its name before the trash, if there).
    pub fn given_name(&self) -> &str {
        self.trashed_name.as_deref().unwrap_or(&self.name)
    }
}

/// A client watching an image (it has it open).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Watcher {
    /// The client's address.
    pub addr: String,
    /// The client's global id.
    pub id: i64,
}
