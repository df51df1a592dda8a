//! What the documentation states about the crates, checked against the
//! manifests: every Cargo feature of `mqrpc` is in both feature tables with
//! its real default, and the stated minimum Rust version is the manifest's.

use std::path::Path;

fn read(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `(feature, on by default)` of `mqrpc/Cargo.toml`'s `[features]`.
fn features() -> Vec<(String, bool)> {
    let manifest = read("mqrpc/Cargo.toml");
    let section = manifest
        .split("[features]")
        .nth(1)
        .and_then(|rest| rest.split("\n[").next())
        .expect("a [features] section");
    let mut default = Vec::new();
    let mut names = Vec::new();
    for line in section.lines().map(str::trim) {
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        if line.starts_with('#') {
            continue;
        }
        let name = name.trim();
        if name == "default" {
            default = value
                .trim()
                .trim_matches(['[', ']'])
                .split(',')
                .map(|f| f.trim().trim_matches('"').to_string())
                .filter(|f| !f.is_empty())
                .collect();
        } else {
            names.push(name.to_string());
        }
    }
    assert!(names.len() >= 6, "features read: {names:?}");
    names
        .into_iter()
        .map(|name| {
            let on = default.contains(&name);
            (name, on)
        })
        .collect()
}

/// The default column of the row of `feature` in a Markdown table.
fn table_default(doc: &str, feature: &str) -> Option<String> {
    let row = format!("| `{feature}` |");
    doc.lines()
        .map(|line| line.trim_start_matches("//!").trim())
        .find(|line| line.starts_with(&row))
        .and_then(|line| line.split('|').nth(2))
        .map(|cell| cell.trim().to_string())
}

#[test]
fn every_feature_is_documented_with_its_default() {
    for (path, doc) in [
        ("mqrpc/src/lib.rs", read("mqrpc/src/lib.rs")),
        ("README.md", read("README.md")),
    ] {
        for (feature, on) in features() {
            let stated = table_default(&doc, &feature)
                .unwrap_or_else(|| panic!("{path} has no row for feature `{feature}`"));
            let expected = if on { "on" } else { "off" };
            assert_eq!(stated, expected, "{path}: default of `{feature}`");
        }
    }
}

#[test]
fn the_stated_minimum_rust_version_is_the_manifests() {
    let manifest = read("Cargo.toml");
    let version = manifest
        .lines()
        .find_map(|line| line.strip_prefix("rust-version = "))
        .expect("workspace rust-version")
        .trim_matches('"');
    let readme = read("README.md");
    assert!(
        readme.contains(&format!("MSRV: Rust {version}")),
        "README.md must state MSRV: Rust {version}"
    );
    // No other version is claimed anywhere in the manifest's comments.
    for line in manifest
        .lines()
        .filter(|line| line.trim_start().starts_with('#'))
    {
        assert!(
            !line.contains("1.") || line.contains(version),
            "a comment in Cargo.toml states another Rust version: {line}"
        );
    }
}

/// Every `.rs` file under `dir` (relative to the repository root).
fn sources(dir: &str) -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut found = Vec::new();
    let mut dirs = vec![root.join(dir)];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().map(Result::unwrap) {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                found.push((path.display().to_string(), text));
            }
        }
    }
    found
}

/// The runtime's items are shown in `mqrpc`'s documentation, where
/// `mqrpc_runtime::…` cannot be imported: their examples are written
/// against `mqrpc::` (a hidden `# use mqrpc_runtime as mqrpc;` makes them
/// compile in the runtime crate's own doctests).
#[test]
fn doc_examples_show_paths_a_user_can_import() {
    let mut shown = Vec::new();
    for (path, text) in sources("mqrpc-runtime/src") {
        for (number, line) in text.lines().enumerate() {
            let doc = line.trim_start();
            let Some(doc) = doc.strip_prefix("///").or_else(|| doc.strip_prefix("//!")) else {
                continue;
            };
            let doc = doc.trim_start();
            if doc.contains("mqrpc_runtime::") && !doc.starts_with("# ") {
                shown.push(format!("{path}:{}: {doc}", number + 1));
            }
        }
    }
    assert!(
        shown.is_empty(),
        "write these as mqrpc::…:\n{}",
        shown.join("\n")
    );
}

/// `cargo add mqrpc` fails while it is unpublished: the README gives the
/// git and path forms, and says what the quickstart needs.
#[test]
fn the_readme_says_how_to_depend_on_mqrpc() {
    let readme = read("README.md");
    assert!(readme.contains(r#"mqrpc = { git = "https://github.com/mqrpc/mqrpc""#));
    assert!(readme.contains(r#"mqrpc = { path = "#));
    assert!(readme.contains("needs the `embedded-broker` feature"));
}

/// In a lean build (no `embedded-broker`) the quickstart's
/// `Connection::from_env_or_embedded` still exists, deprecated with a note
/// naming the feature, so the compiler's message says what to turn on
/// instead of E0599 (CI compiles it: `cargo check -p mqrpc`).
#[test]
fn the_lean_build_names_the_embedded_broker_feature() {
    let source = read("mqrpc-runtime/src/connection/establish.rs");
    let stub = source
        .split("#[cfg(not(feature = \"embedded-broker\"))]")
        .nth(1)
        .expect("a stand-in for builds without the embedded broker");
    let (attributes, rest) = stub.split_once("pub async fn").unwrap();
    assert!(rest.trim_start().starts_with("from_env_or_embedded()"));
    assert!(attributes.contains("#[deprecated("), "{attributes}");
    assert!(attributes.contains("cargo add mqrpc -F embedded-broker"));
}
