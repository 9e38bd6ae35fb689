//! The layering, checked: `shardcast-core` depends on nothing that does I/O
//! and reads no clock, and the server's top-level modules only import the
//! ones below them in [`LAYERS`]. An import upwards fails here unless it
//! is one of [`UPWARD_TO_REMOVE`], the imports still to be taken out (an
//! entry that is no longer in the code fails too, so the list only
//! shrinks). `#[cfg(test)] mod tests` at the end of a file is not counted:
//! tests may reach for anything.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

/// The server's top-level modules, lowest first; a module may import the
/// modules of its own line and of the lines before it.
const LAYERS: &[&[&str]] = &[
    // Leaves: units, how settings are declared, clocks, random numbers,
    // process figures, wait lists, counters, sockets and their readiness.
    &[
        "units",
        "settings",
        "clock",
        "random",
        "process",
        "sync",
        "stats",
        "tls_client",
        "shutdown",
        "readiness",
        "stream",
    ],
    &["security"],
    &["engine", "webhook"],
    &["error"],
    &["config"],
    &["snapshot", "exposition"],
    &["conn"],
    &["api"],
    &["mesh"],
    &["shard"],
    &["runtime"],
    // Beside the server: the command-line client and the fuzzers' entry points.
    &["client", "fuzzing"],
];

/// Imports upwards that are still to be removed, as (importer, imported).
const UPWARD_TO_REMOVE: &[(&str, &str)] = &[];

/// Crates that do I/O or read clocks: none may be a dependency of the core.
const IO_CRATES: &[&str] = &[
    "glommio",
    "libc",
    "socket2",
    "rustls",
    "futures-rustls",
    "tokio",
    "io-uring",
    "signal-hook",
    "mio",
    "nix",
    "async-tungstenite",
    "tungstenite",
];

/// What the core's sources may not name: clocks, sockets, files, threads,
/// processes and the environment are the server's.
const IO_PATHS: &[&str] = &[
    "Instant",
    "SystemTime",
    "std::net",
    "std::fs",
    "std::thread",
    "std::process",
    "std::env",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("a readable source directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files
}

/// A file's text without its `#[cfg(test)] mod tests` at the end.
fn without_tests(text: &str) -> &str {
    match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    }
}

/// The top-level modules `text` names through `crate::`: `crate::a::b`
/// and each item of `use crate::{a::b, c, d::{e, f}}`.
fn crate_references(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let (mut depth, mut start) = (1, 0);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 1 => {
                        names.insert(ident(&group[start..i]));
                        start = i + 1;
                    }
                    _ => {}
                }
                if depth == 0 {
                    names.insert(ident(&group[start..i]));
                    break;
                }
            }
        } else {
            names.insert(ident(rest));
        }
    }
    names.remove("");
    names
}

/// Each top-level module of the server and the top-level modules it imports.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = root().join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(&src) {
        let relative = file.strip_prefix(&src).expect("under src");
        let first = relative.components().next().expect("a path");
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if module == "lib" || module == "bin" {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("a readable source file");
        let references = crate_references(without_tests(&text));
        graph.entry(module.clone()).or_default().extend(references);
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for (module, references) in graph.iter_mut() {
        references.retain(|r| modules.contains(r) && r != module);
    }
    graph
}

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|line| line.contains(&module))
        .unwrap_or_else(|| panic!("module `{module}` is in no line of LAYERS: place it"))
}

#[test]
fn top_level_modules_import_only_lower_layers() {
    let graph = module_graph();
    let mut upward = BTreeSet::new();
    for (module, references) in &graph {
        for reference in references {
            if layer_of(reference) > layer_of(module) {
                upward.insert((module.clone(), reference.clone()));
            }
        }
    }
    let known: BTreeSet<(String, String)> = UPWARD_TO_REMOVE
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let new: Vec<_> = upward.difference(&known).collect();
    assert!(
        new.is_empty(),
        "imports upwards (module → what it imports), against LAYERS: {new:?}"
    );
    let gone: Vec<_> = known.difference(&upward).collect();
    assert!(
        gone.is_empty(),
        "no longer in the code: take them out of UPWARD_TO_REMOVE: {gone:?}"
    );
}

#[test]
fn the_reference_finder_reads_nested_use_groups() {
    let text = "use crate::{a::b, c, d::{e, f::{g}}, };\nfn x() { crate::h::i(); }";
    let found: Vec<_> = crate_references(text).into_iter().collect();
    assert_eq!(found, ["a", "c", "d", "h"]);
}

#[test]
fn the_core_depends_on_nothing_that_does_io() {
    let output = Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "shardcast-core",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .current_dir(root())
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tree = String::from_utf8_lossy(&output.stdout);
    let crates: BTreeSet<&str> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert!(
        crates.contains("shardcast-core"),
        "the tree names the core: {tree}"
    );
    let io: Vec<_> = IO_CRATES.iter().filter(|c| crates.contains(*c)).collect();
    assert!(
        io.is_empty(),
        "the core depends on crates that do I/O: {io:?}"
    );
}

#[test]
fn the_cores_sources_read_no_clock_and_touch_no_system() {
    let mut found = Vec::new();
    for file in rust_files(&root().join("core/src")) {
        // Test-only modules (`#[cfg(test)]` in lib.rs) may read the environment.
        let name = file.to_string_lossy();
        if name.contains("/simulation/")
            || name.ends_with("testing.rs")
            || name.ends_with("tests.rs")
        {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("a readable source file");
        for (number, line) in without_tests(&text).lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for path in IO_PATHS.iter().filter(|p| code.contains(*p)) {
                found.push(format!("{}:{}: {path}", file.display(), number + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "the core reaches for the system: {found:#?}"
    );
}
