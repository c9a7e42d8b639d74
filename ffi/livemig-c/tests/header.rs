//! The committed header is what cbindgen makes of the current source.

use std::path::Path;

#[test]
fn committed_header_is_up_to_date() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml parses");
    // The error kinds' codes come from the library's error table.
    config.after_includes = Some(livemig_c::kind_defines());
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut generated);
    let generated = String::from_utf8(generated).expect("the header is UTF-8");
    let path = crate_dir.join("include/livemig.h");
    if std::env::var_os("LIVEMIG_REGENERATE_HEADER").is_some() {
        std::fs::write(&path, &generated).expect("write the header");
        eprintln!("wrote {}", path.display());
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is out of date with the source: run ffi/livemig-c/regenerate-header.sh and commit the result",
        path.display()
    );
}

/// Every kind of the library's error table is in the header with its code,
/// and the header defines no other kind code below the ABI's own (100 and up).
#[test]
fn the_header_s_kind_codes_are_the_error_table_s() {
    let header = include_str!("../include/livemig.h");
    let mut defined = std::collections::BTreeMap::new();
    for line in header.lines() {
        let mut words = line.split_whitespace();
        if let (Some("#define"), Some(name), Some(value)) = (words.next(), words.next(), words.next()) {
            if let (Some(kind), Ok(code)) = (name.strip_prefix("LIVEMIG_ERR_"), value.parse::<i32>()) {
                defined.insert(kind.to_ascii_lowercase(), code);
            }
        }
    }
    for kind in livemig::ErrorKind::ALL {
        assert_eq!(defined.remove(kind.as_str()), Some(kind.code()), "{kind} in the header");
    }
    assert!(
        defined.values().all(|code| *code >= 100),
        "kind codes in the header that the error table lacks: {defined:?}"
    );
}
