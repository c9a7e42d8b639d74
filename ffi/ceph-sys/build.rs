//! Links librbd and librados. Debian ships no pkg-config files for them, so
//! the libraries are named directly; `LIVEMIG_CEPH_LIB_DIR` adds a search path
//! for a Ceph installed elsewhere.
fn main() {
    println!("cargo:rerun-if-env-changed=LIVEMIG_CEPH_LIB_DIR");
    if let Ok(dir) = std::env::var("LIVEMIG_CEPH_LIB_DIR") {
        println!("cargo:rustc-link-search=native={dir}");
    }
    println!("cargo:rustc-link-lib=dylib=rbd");
    println!("cargo:rustc-link-lib=dylib=rados");
}
