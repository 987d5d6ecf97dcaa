//! The one-way layering of docs/ARCHITECTURE.md, checked on the source text:
//! `src/app` (the use cases) names only `domain` and `ports`; the inbound
//! adapters use `app` but never the outbound ones; the outbound adapters
//! implement `ports` and name no use case; only `startup` names `startup`. A `use` that breaks the rule fails this test, with the file
//! and line.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Lines under `layer` that name any of `forbidden` (comments included: a
/// doc link to another layer is a dependency of the reader's, too).
fn violations(layer: &str, forbidden: &[&str]) -> Vec<String> {
    violations_under(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src")
            .join(layer),
        forbidden,
    )
}

fn violations_under(root: &Path, forbidden: &[&str]) -> Vec<String> {
    let files = rust_files(root);
    assert!(!files.is_empty(), "no sources under {}", root.display());
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut in_tests = false;
        for (n, line) in text.lines().enumerate() {
            in_tests |= line.trim() == "#[cfg(test)]";
            // A unit test may drive a use case with the in-memory fakes of its ports.
            if in_tests && line.contains("crate::adapters::fakes::") {
                continue;
            }
            for name in forbidden {
                if line.contains(name) {
                    found.push(format!(
                        "{}:{}: names {name}: {}",
                        file.display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    found
}

#[test]
fn the_use_cases_name_only_the_domain_and_the_ports() {
    let found = violations(
        "app",
        &[
            "crate::adapters",
            "crate::startup",
            "crate::inbound",
            "crate::outbound",
            "azaion_loader::",
            "super::super",
        ],
    );
    assert!(
        found.is_empty(),
        "src/app breaks the layering:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_inbound_adapters_use_the_app_and_never_the_outbound_side() {
    let found = violations(
        "adapters/inbound",
        &[
            "crate::adapters::outbound",
            "crate::adapters::devstack",
            "crate::startup",
        ],
    );
    assert!(
        found.is_empty(),
        "src/adapters/inbound breaks the layering:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_outbound_adapters_implement_ports_and_name_no_use_case() {
    let found = violations(
        "adapters/outbound",
        &["crate::app", "crate::adapters::inbound", "crate::startup"],
    );
    assert!(
        found.is_empty(),
        "src/adapters/outbound breaks the layering:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_domain_and_the_ports_name_no_outer_layer() {
    for layer in ["domain", "ports"] {
        let found = violations(
            layer,
            &[
                "crate::app",
                "crate::adapters",
                "crate::startup",
                "azaion_loader::",
            ],
        );
        assert!(
            found.is_empty(),
            "src/{layer} breaks the layering:\n{}",
            found.join("\n")
        );
    }
}

#[test]
fn the_check_finds_a_use_case_that_names_an_adapter() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("nested")).unwrap();
    std::fs::write(dir.path().join("clean.rs"), "use crate::ports::Clock;\n").unwrap();
    std::fs::write(
        dir.path().join("nested").join("dirty.rs"),
        "//! fine\nuse crate::adapters::outbound::s3::S3Connector;\n",
    )
    .unwrap();
    // Fakes are allowed in unit tests only.
    std::fs::write(
        dir.path().join("tested.rs"),
        "use crate::adapters::fakes::FakeClock;\n#[cfg(test)]\nmod tests {\n    use crate::adapters::fakes::FakeClock;\n}\n",
    )
    .unwrap();
    let found = violations_under(dir.path(), &["crate::adapters"]);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].contains("dirty.rs:2:"), "{found:?}");
    assert!(found[1].contains("tested.rs:1:"), "{found:?}");
}
