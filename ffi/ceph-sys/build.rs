//! Links librbd and librados, and builds the C++ shim for what only
//! librados' C++ API offers (server-side object copy). Debian ships no
//! pkg-config files for them, so the libraries are named directly;
//! `LIVEMIG_CEPH_LIB_DIR` adds a search path for a Ceph installed elsewhere.
fn main() {
    println!("cargo:rerun-if-env-changed=LIVEMIG_CEPH_LIB_DIR");
    println!("cargo:rerun-if-changed=shim/copy_from.cc");
    cc::Build::new()
        .cpp(true)
        .file("shim/copy_from.cc")
        .flag_if_supported("-std=c++17")
        .warnings(true)
        .compile("livemig_rados_shim");
    if let Ok(dir) = std::env::var("LIVEMIG_CEPH_LIB_DIR") {
        println!("cargo:rustc-link-search=native={dir}");
    }
    println!("cargo:rustc-link-lib=dylib=rbd");
    println!("cargo:rustc-link-lib=dylib=rados");
}
