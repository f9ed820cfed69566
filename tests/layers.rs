//! The library's layers, read from its source: nothing imports upward, no
//! two modules import each other (no cycle at all), and inference (the
//! `Scorer`, evaluation, retrieval) reaches nothing of training, not even
//! through other modules. docs/architecture.md shows the layers.
//!
//! A module here is a file directly in `src/` or in a layer's folder
//! (`src/core/step.rs` is `core::step`), or a folder below those
//! (`src/models/heads/` is `models::heads`); an import is any `crate::a::b`
//! path in code (comments are skipped), and `super::x` from a file in a
//! layer's folder.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Folders whose files and subfolders are modules of their own.
const LAYER_FOLDERS: [&str; 3] = ["core", "models", "app"];

/// Each top-level module's layer, bottom first. Modules of one rank but
/// different names (`models`, `check`) must not import each other.
fn rank(top: &str) -> Option<usize> {
    Some(match top {
        "error" => 0,
        "util" => 1,
        "runtime" => 2,
        "core" => 3,
        "models" | "check" => 4,
        "app" => 5,
        "cli" => 6,
        "bin" => 7,
        _ => return None,
    })
}

/// What inference must not reach.
const TRAINING: [&str; 9] = [
    "core::step",
    "core::passes",
    "core::budget",
    "core::reference",
    "core::distributed",
    "core::replay",
    "app::train",
    "app::recipe",
    "check",
];

/// Inference: what a served or evaluated model runs (the server too).
const INFERENCE: [&str; 7] = ["app::scorer", "app::eval", "app::retrieval", "app::metrics", "app::serve", "app::export", "app::mine"];

/// The module a source file (relative to `src/`) belongs to.
fn module_of(path: &str) -> Option<String> {
    let path = path.strip_suffix(".rs")?;
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        ["lib"] => None,
        [one] => Some(one.to_string()),
        [layer, "mod"] if LAYER_FOLDERS.contains(layer) => None,
        [layer, second, ..] if LAYER_FOLDERS.contains(layer) => Some(format!("{layer}::{second}")),
        [top, ..] => Some(top.to_string()),
        [] => None,
    }
}

/// The module a `crate::` path names.
fn module_of_path(first: &str, second: Option<&str>) -> String {
    match second {
        Some(s) if LAYER_FOLDERS.contains(&first) => format!("{first}::{s}"),
        _ => first.to_string(),
    }
}

fn identifier(s: &str) -> &str {
    let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
    &s[..end]
}

/// The modules `source` (the file at `path` under `src/`) imports, or the
/// reasons it cannot be read (a grouped `crate::{…}` or a `crate::Name`
/// re-export: name the module's path instead).
fn imports(path: &str, source: &str) -> (BTreeSet<String>, Vec<String>) {
    let (mut out, mut problems) = (BTreeSet::new(), Vec::new());
    let prefix = if path.starts_with("bin/") { "gradcache::" } else { "crate::" };
    let layer_file = path.split('/').count() == 2 && LAYER_FOLDERS.iter().any(|l| path.starts_with(&format!("{l}/")));
    for (n, line) in source.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let code = code.split(" //").next().unwrap_or(code);
        let mut rest = code;
        while let Some(i) = rest.find(prefix) {
            let after = &rest[i + prefix.len()..];
            let first = identifier(after);
            if first.is_empty() {
                problems.push(format!("{path}:{}: a grouped `{prefix}{{…}}` import: write one path per module", n + 1));
            } else if first.chars().next().is_some_and(|c| c.is_ascii_uppercase()) {
                if prefix == "crate::" {
                    problems.push(format!("{path}:{}: `crate::{first}` names a re-export: use the module's path", n + 1));
                }
            } else {
                let second = after[first.len()..]
                    .strip_prefix("::")
                    .map(identifier)
                    .filter(|s| s.chars().next().is_some_and(|c| c.is_ascii_lowercase()));
                out.insert(module_of_path(first, second));
            }
            rest = &after[first.len()..];
        }
        if layer_file {
            let mut rest = code;
            while let Some(i) = rest.find("super::") {
                let after = &rest[i + "super::".len()..];
                let name = identifier(after);
                if name.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
                    out.insert(format!("{}::{name}", path.split('/').next().unwrap_or_default()));
                }
                rest = &after[name.len()..];
            }
        }
    }
    (out, problems)
}

/// Every rule broken by `files` (path under `src/`, source).
fn violations(files: &[(String, String)]) -> Vec<String> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    for (path, source) in files {
        let Some(module) = module_of(path) else { continue };
        let (deps, mut bad) = imports(path, source);
        problems.append(&mut bad);
        let entry = graph.entry(module.clone()).or_default();
        for dep in deps {
            if dep == module || dep.starts_with(&format!("{module}::")) {
                continue;
            }
            let top = |m: &str| m.split("::").next().unwrap_or_default().to_string();
            match (rank(&top(&module)), rank(&top(&dep))) {
                (Some(from), Some(to)) if to > from => problems.push(format!("{path}: `{module}` imports `{dep}` from a layer above it")),
                (Some(from), Some(to)) if to == from && top(&module) != top(&dep) => {
                    problems.push(format!("{path}: `{module}` imports `{dep}`, a module of another part of the same layer"))
                }
                (None, _) => problems.push(format!("{path}: `{module}` is in no layer: add it to tests/layers.rs")),
                (_, None) => problems.push(format!("{path}: `{dep}` is in no layer: add it to tests/layers.rs")),
                _ => {}
            }
            entry.insert(dep);
        }
    }
    // Cycles: any module that reaches itself.
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<String> = graph.get(from).into_iter().flatten().cloned().collect();
        while let Some(m) = todo.pop() {
            if seen.insert(m.clone()) {
                todo.extend(graph.get(&m).into_iter().flatten().cloned());
            }
        }
        seen
    };
    for module in graph.keys() {
        if reach(module).contains(module) {
            let partners: Vec<&String> = graph[module].iter().filter(|d| reach(d).contains(module)).collect();
            problems.push(format!("`{module}` is in an import cycle (through {partners:?})"));
        }
    }
    for module in INFERENCE {
        let reached = reach(module);
        for training in TRAINING {
            if reached.iter().any(|m| m == training || m.starts_with(&format!("{training}::"))) {
                problems.push(format!("inference module `{module}` reaches training module `{training}`"));
            }
        }
    }
    problems
}

fn read_tree(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            read_tree(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
            out.push((rel, std::fs::read_to_string(&path).unwrap()));
        }
    }
}

#[test]
fn the_library_keeps_its_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    read_tree(&src, &src, &mut files);
    assert!(files.len() > 40, "read only {} files", files.len());
    let problems = violations(&files);
    assert!(problems.is_empty(), "layering broken:\n{}", problems.join("\n"));
}

#[test]
fn the_check_catches_upward_imports_cycles_and_inference_reaching_training() {
    let file = |p: &str, s: &str| (p.to_string(), s.to_string());
    let clean = [
        file("error.rs", "use std::fmt;"),
        file("core/layout.rs", "use crate::error::Result;"),
        file("core/scoring.rs", "use crate::core::layout::Block;"),
        file("core/step.rs", "use super::scoring::score_grid;\n// use crate::app::scorer::Scorer; (a comment)"),
        file("app/scorer.rs", "use crate::core::scoring::score_grid;"),
    ];
    assert_eq!(violations(&clean), Vec::<String>::new());

    // A core module importing from the application.
    let mut upward = clean.to_vec();
    upward.push(file("core/plan.rs", "use crate::app::scorer::Scorer;"));
    let found = violations(&upward);
    assert!(found.iter().any(|p| p.contains("`core::plan` imports `app::scorer` from a layer above")), "{found:?}");

    // Two core modules importing each other.
    let mut cycle = clean.to_vec();
    cycle[1] = file("core/layout.rs", "use crate::core::scoring::Forward;");
    let found = violations(&cycle);
    assert!(found.iter().any(|p| p.contains("`core::layout` is in an import cycle")), "{found:?}");

    // The scorer reaching the step through another module.
    let mut reaching = clean.to_vec();
    reaching[2] = file("core/scoring.rs", "use crate::core::layout::Block;\nfn f() { crate::core::step::GradCache::new(); }");
    let found = violations(&reaching);
    assert!(found.iter().any(|p| p.contains("`app::scorer` reaches training module `core::step`")), "{found:?}");

    // Models and the checker side by side, importing each other.
    let mut sideways = clean.to_vec();
    sideways.push(file("check/mod.rs", "use crate::models::heads::HeadConfig;"));
    let found = violations(&sideways);
    assert!(found.iter().any(|p| p.contains("another part of the same layer")), "{found:?}");

    // A grouped import cannot be read, so it is refused.
    let mut grouped = clean.to_vec();
    grouped.push(file("app/eval.rs", "use crate::{core::step::GradCache, Scorer};"));
    assert!(violations(&grouped).iter().any(|p| p.contains("grouped")));
}

/// The places allowed to write to the terminal: the command line, the
/// binaries, and the server (its log is its stderr).
fn may_print(path: &str) -> bool {
    path.starts_with("cli/") || path.starts_with("bin/") || path.starts_with("app/serve/")
}

/// Print macros in code (comments and doc examples skipped) outside
/// [`may_print`]'s places: `path:line`.
fn prints(files: &[(String, String)]) -> Vec<String> {
    let mut found = Vec::new();
    for (path, source) in files.iter().filter(|(p, _)| !may_print(p)) {
        for (n, line) in source.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            let code = code.split(" //").next().unwrap_or(code);
            if ["println!", "eprintln!", "print!", "eprint!", "dbg!"].iter().any(|m| code.contains(m)) {
                found.push(format!("{path}:{}", n + 1));
            }
        }
    }
    found
}

/// The library says what happens through a reporter
/// (`app::reporter::Reporter`); where it is shown is the caller's choice.
#[test]
fn the_library_prints_nothing_outside_the_command_line_and_the_server() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    read_tree(&src, &src, &mut files);
    assert_eq!(prints(&files), Vec::<String>::new());
    // The check sees a print in the recipe, not one in a comment or the CLI.
    let planted = [
        ("app/recipe/mod.rs".to_string(), "fn f() {\n    println!(\"hi\");\n}".to_string()),
        ("app/train/mod.rs".to_string(), "// println!(\"in a comment\")".to_string()),
        ("cli/console.rs".to_string(), "fn f() { eprintln!(\"ok\") }".to_string()),
    ];
    assert_eq!(prints(&planted), ["app/recipe/mod.rs:2"]);
}
