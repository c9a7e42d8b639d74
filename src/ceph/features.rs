//! RBD image features as a type, so that no `RBD_FEATURE_*` bit
//! arithmetic leaks above `ceph/`.

use livemig_ceph_sys as sys;

/// A set of RBD image features.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Features(u64);

impl Features {
    /// Clones of snapshots (layering).
    pub const LAYERING: Features = Features(sys::RBD_FEATURE_LAYERING as u64);
    /// Fancy striping.
    pub const STRIPING_V2: Features = Features(sys::RBD_FEATURE_STRIPINGV2 as u64);
    /// The exclusive lock (one writer at a time; livemig fences with it).
    pub const EXCLUSIVE_LOCK: Features = Features(sys::RBD_FEATURE_EXCLUSIVE_LOCK as u64);
    /// The object map.
    pub const OBJECT_MAP: Features = Features(sys::RBD_FEATURE_OBJECT_MAP as u64);
    /// Fast diff (from the object map).
    pub const FAST_DIFF: Features = Features(sys::RBD_FEATURE_FAST_DIFF as u64);
    /// Deep flatten.
    pub const DEEP_FLATTEN: Features = Features(sys::RBD_FEATURE_DEEP_FLATTEN as u64);
    /// Journaling.
    pub const JOURNALING: Features = Features(sys::RBD_FEATURE_JOURNALING as u64);

    /// The features that can be chosen when an image is created (not
    /// `operations`, `migrating`, ...).
    pub const SETTABLE: Features = Features(
        Self::LAYERING.0
            | Self::STRIPING_V2.0
            | Self::EXCLUSIVE_LOCK.0
            | Self::OBJECT_MAP.0
            | Self::FAST_DIFF.0
            | Self::DEEP_FLATTEN.0
            | Self::JOURNALING.0,
    );

    /// The features of these bits, as librbd gives them.
    pub const fn from_bits(bits: u64) -> Features {
        Features(bits)
    }

    /// The bits, as librbd takes them.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// Whether every feature of `other` is in `self`.
    pub const fn contains(self, other: Features) -> bool {
        self.0 & other.0 == other.0
    }

    /// The features in both.
    pub const fn intersection(self, other: Features) -> Features {
        Features(self.0 & other.0)
    }
}

impl std::ops::BitOr for Features {
    type Output = Features;
    fn bitor(self, rhs: Features) -> Features {
        Features(self.0 | rhs.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_combine_and_compare() {
        let f = Features::LAYERING | Features::EXCLUSIVE_LOCK;
        assert!(f.contains(Features::EXCLUSIVE_LOCK));
        assert!(!f.contains(Features::FAST_DIFF));
        assert!(!f.contains(Features::EXCLUSIVE_LOCK | Features::FAST_DIFF));
        assert_eq!(Features::from_bits(f.bits()), f);
        assert_eq!(
            Features::from_bits(u64::MAX).intersection(Features::SETTABLE),
            Features::SETTABLE
        );
    }
}
