//! Image specs as the `rbd` CLI writes them: `pool/image`,
//! `pool/namespace/image`, or `image` alone (pool `rbd`).

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, ErrorKind};

/// The pool used when a spec names only an image, as in the `rbd` CLI.
pub const DEFAULT_POOL: &str = "rbd";

/// A pool, optional namespace and image name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ImageSpec {
    /// The pool name.
    pub pool: String,
    /// The RADOS namespace; empty for the default namespace.
    pub namespace: String,
    /// The image name.
    pub image: String,
}

impl ImageSpec {
    /// A spec in the default namespace.
    pub fn new(pool: impl Into<String>, image: impl Into<String>) -> Self {
        ImageSpec {
            pool: pool.into(),
            namespace: String::new(),
            image: image.into(),
        }
    }

    /// The spec of an image with another name in the same pool and namespace.
    pub fn sibling(&self, image: impl Into<String>) -> Self {
        ImageSpec {
            image: image.into(),
            ..self.clone()
        }
    }

    /// `pool` or `pool/namespace`.
    pub fn pool_spec(&self) -> String {
        if self.namespace.is_empty() {
            self.pool.clone()
        } else {
            format!("{}/{}", self.pool, self.namespace)
        }
    }
}

impl fmt::Display for ImageSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.pool_spec(), self.image)
    }
}

impl FromStr for ImageSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |why: &str| {
            Error::new(ErrorKind::InvalidInput, "parse image spec").message(format!(
                "`{s}` is not an image spec ({why}); write POOL/IMAGE or POOL/NAMESPACE/IMAGE"
            ))
        };
        if s.contains('@') {
            return Err(bad("snapshots cannot be named here"));
        }
        let parts: Vec<&str> = s.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad("empty component"));
        }
        let spec = match parts.as_slice() {
            [image] => ImageSpec::new(DEFAULT_POOL, *image),
            [pool, image] => ImageSpec::new(*pool, *image),
            [pool, ns, image] => ImageSpec {
                pool: pool.to_string(),
                namespace: ns.to_string(),
                image: image.to_string(),
            },
            _ => return Err(bad("too many `/`")),
        };
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        assert_eq!("img".parse::<ImageSpec>().unwrap(), ImageSpec::new("rbd", "img"));
        assert_eq!("p/img".parse::<ImageSpec>().unwrap(), ImageSpec::new("p", "img"));
        let s: ImageSpec = "p/ns/img".parse().unwrap();
        assert_eq!(
            (s.pool.as_str(), s.namespace.as_str(), s.image.as_str()),
            ("p", "ns", "img")
        );
        assert_eq!(s.to_string(), "p/ns/img");
    }

    #[test]
    fn rejects_malformed_specs() {
        for bad in ["", "/img", "p/", "p//img", "a/b/c/d", "p/img@snap"] {
            let e = bad.parse::<ImageSpec>().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{bad}");
        }
    }
}
