//! `cargo xtask tidy`: the architecture invariants of ARCHITECTURE.md that the compiler does not
//! enforce, checked on the source tree.
//!
//! 1. `unsafe` appears only in moe-cuda, and in the one memory map of the engine
//!    (`moe-engine/src/weights/mmap.rs`).
//! 2. Kernels are launched only from moe-cuda's launch module (`src/launch.rs`, `src/launch/`).
//! 3. No product crate (everything but moe-testing, xtask and fuzz) depends, even transitively,
//!    on moe-testing or proptest (`cargo tree -e normal`).
//! 4. Every crate of the workspace, and `fuzz`, has a section in ARCHITECTURE.md.
//! 5. No product source file is longer than 600 lines.

use std::path::{Path, PathBuf};

use crate::util::{cargo, root};

/// The crates that ship (the `moe` binary and the libraries under it).
const PRODUCT_CRATES: &[&str] = &["moe-core", "moe-ref-cpu", "moe-cuda", "moe-engine", "moe-cli"];
/// Where `unsafe` may appear: a directory prefix or one file, relative to the root.
const UNSAFE_ALLOWED: &[&str] = &["moe-cuda/", "moe-engine/src/weights/mmap.rs"];
/// Where kernel launches may appear.
const LAUNCH_ALLOWED: &[&str] = &["moe-cuda/src/launch.rs", "moe-cuda/src/launch/"];
/// The longest product source file allowed.
const MAX_LINES: usize = 600;

pub fn run(_args: &[String]) -> Result<(), String> {
    let root = root();
    let files = rust_files(&root);
    let mut problems = Vec::new();
    for f in &files {
        let rel = rel(&root, f);
        let Ok(text) = std::fs::read_to_string(f) else { continue };
        problems.extend(check_unsafe(&rel, &text));
        problems.extend(check_launches(&rel, &text));
        problems.extend(check_length(&rel, &text));
    }
    problems.extend(check_architecture_lists_crates(
        &read(&root.join("Cargo.toml"))?,
        &read(&root.join("ARCHITECTURE.md"))?,
    ));
    for krate in PRODUCT_CRATES {
        let out = cargo()
            .args(["tree", "-q", "-e", "normal", "--prefix", "none", "--all-features", "-p", krate])
            .output()
            .map_err(|e| format!("cargo tree: {e}"))?;
        if !out.status.success() {
            return Err(format!("cargo tree -p {krate} failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        problems.extend(check_tree(krate, &String::from_utf8_lossy(&out.stdout)));
    }
    if problems.is_empty() {
        eprintln!(
            "tidy: {} Rust files and {} product crates checked, all invariants hold",
            files.len(),
            PRODUCT_CRATES.len()
        );
        Ok(())
    } else {
        for p in &problems {
            eprintln!("tidy: {p}");
        }
        Err(format!("{} architecture invariant(s) broken (see ARCHITECTURE.md)", problems.len()))
    }
}

fn read(p: &Path) -> Result<String, String> {
    std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))
}

fn rel(root: &Path, f: &Path) -> String {
    f.strip_prefix(root).unwrap_or(f).to_string_lossy().replace('\\', "/")
}

/// Every `.rs` file of the repository outside build outputs and caches.
fn rust_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                if !name.starts_with('.') && !matches!(name.as_str(), "target" | "gpu-bundle" | "corpus" | "artifacts") {
                    stack.push(p);
                }
            } else if name.ends_with(".rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The code of a line without its `//` comment (string contents are not stripped: a string
/// holding "unsafe {" would be flagged, which is fine in this workspace).
fn code(line: &str) -> &str {
    line.split("//").next().unwrap_or("")
}

fn allowed(rel: &str, list: &[&str]) -> bool {
    list.iter().any(|a| if a.ends_with('/') { rel.starts_with(a) } else { rel == *a })
}

/// `rel:line: what` for every line whose code (comments stripped) contains one of `needles`.
fn flag_lines(rel: &str, text: &str, needles: &[&str], what: &str) -> Vec<String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| needles.iter().any(|k| code(l).contains(k)))
        .map(|(i, _)| format!("{rel}:{}: {what}", i + 1))
        .collect()
}

fn check_unsafe(rel: &str, text: &str) -> Vec<String> {
    if allowed(rel, UNSAFE_ALLOWED) || rel == "xtask/src/tidy.rs" {
        return Vec::new();
    }
    let needles = ["unsafe {", "unsafe fn", "unsafe impl", "unsafe extern"];
    flag_lines(rel, text, &needles, "`unsafe` outside moe-cuda and the engine's memory map")
}

fn check_launches(rel: &str, text: &str) -> Vec<String> {
    if !rel.starts_with("moe-cuda/src/") || allowed(rel, LAUNCH_ALLOWED) {
        return Vec::new();
    }
    let needles = ["launch_builder(", "cuLaunchKernel", ".launch(cfg", "LaunchConfig {"];
    flag_lines(rel, text, &needles, "a kernel launch outside moe-cuda's launch module")
}

fn check_length(rel: &str, text: &str) -> Vec<String> {
    let product = PRODUCT_CRATES.iter().any(|c| rel.starts_with(&format!("{c}/src/")));
    let n = text.lines().count();
    if product && n > MAX_LINES {
        vec![format!("{rel}: {n} lines, more than {MAX_LINES} for a product source file")]
    } else {
        Vec::new()
    }
}

/// The workspace members of the root manifest, plus `fuzz` (its own workspace).
fn members(manifest: &str) -> Vec<String> {
    let Some(start) = manifest.find("members") else { return Vec::new() };
    let rest = &manifest[start..];
    let (Some(a), Some(b)) = (rest.find('['), rest.find(']')) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rest[a + 1..b]
        .split(',')
        .map(|s| s.trim().trim_matches('"').to_string())
        .filter(|s| !s.is_empty())
        .collect();
    v.push("fuzz".into());
    v
}

fn check_architecture_lists_crates(manifest: &str, architecture: &str) -> Vec<String> {
    members(manifest)
        .into_iter()
        .filter(|m| !architecture.contains(&format!("### `{m}`")))
        .map(|m| format!("ARCHITECTURE.md has no section \"### `{m}`\" for the crate `{m}`"))
        .collect()
}

fn check_tree(krate: &str, tree: &str) -> Vec<String> {
    tree.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| matches!(*name, "moe-testing" | "proptest"))
        .map(|name| format!("the product crate `{krate}` depends on `{name}` (only tests may)"))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_is_flagged_outside_the_allowed_places_only() {
        let src = "fn f() {\n    // unsafe { in a comment }\n    let x = unsafe { g() };\n}\n";
        assert_eq!(check_unsafe("moe-engine/src/ops/mod.rs", src).len(), 1);
        assert!(check_unsafe("moe-engine/src/weights/mmap.rs", src).is_empty());
        assert!(check_unsafe("moe-cuda/src/memory.rs", src).is_empty());
        assert_eq!(check_unsafe("moe-core/src/lib.rs", "unsafe impl Send for X {}").len(), 1);
    }

    #[test]
    fn launches_are_flagged_outside_the_launch_module() {
        let src = "let mut b = stream.launch_builder(&f);\n";
        assert_eq!(check_launches("moe-cuda/src/backend.rs", src).len(), 1);
        assert!(check_launches("moe-cuda/src/launch.rs", src).is_empty());
        assert!(check_launches("moe-cuda/src/launch/config.rs", src).is_empty());
        assert!(check_launches("moe-cuda/tests/gemm.rs", src).is_empty());
    }

    #[test]
    fn long_product_files_are_flagged() {
        let long = "x\n".repeat(MAX_LINES + 1);
        assert_eq!(check_length("moe-engine/src/pipeline.rs", &long).len(), 1);
        assert!(check_length("moe-testing/src/strategies.rs", &long).is_empty());
        assert!(check_length("moe-engine/src/pipeline.rs", &"x\n".repeat(MAX_LINES)).is_empty());
    }

    #[test]
    fn every_member_needs_a_section() {
        let manifest = "[workspace]\nmembers = [\"moe-core\", \"moe-engine\"]\n";
        let arch = "### `moe-core`\n### `fuzz`\n";
        let p = check_architecture_lists_crates(manifest, arch);
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("moe-engine"));
    }

    #[test]
    fn test_crates_in_a_product_tree_are_flagged_once() {
        let tree = "moe-cli v0.1.0 (/x)\nmoe-testing v0.1.0 (/x)\nproptest v1.8.0\nproptest v1.8.0 (*)\nrayon v1.11.0\n";
        assert_eq!(check_tree("moe-cli", tree).len(), 2);
        assert!(check_tree("moe-cli", "moe-engine v0.1.0\nrayon v1\n").is_empty());
    }
}
