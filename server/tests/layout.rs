//! The shape of server/src (ARCHITECTURE.md, "Code map"): its folders import each other
//! one way only. Each folder, and each file at the top of src/, is one node; a
//! `crate::<name>` path in a file is an edge from its node to `<name>`'s. The graph of
//! nodes must have no cycle, and the small shared modules must import nothing of the
//! crate, so that a newcomer can read any folder knowing only those below it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules any folder may use, which must themselves use nothing of the crate.
const SHARED: &[&str] = &[
    "errors",
    "ids",
    "limits",
    "quorum",
    "version",
    "snapshot_file",
    "disk",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read server/src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The node a file belongs to: its folder under src/, or its own name at the top.
fn node_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next().expect("a component");
    let name = first.as_os_str().to_string_lossy();
    name.trim_end_matches(".rs").to_string()
}

/// Every crate-level name a file's code (tests and comments aside) refers to through
/// `crate::`, including the names inside `use crate::{a::…, b}` groups.
fn crate_names(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or(text);
    let code: String = code
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut names = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let body = &group[..group.find("};").unwrap_or(group.len())];
            let mut depth = 0;
            let mut start = true;
            for (i, ch) in body.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && (c.is_alphanumeric() || c == '_') => {
                        names.insert(word_at(&body[i..]));
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            names.insert(word_at(rest));
        }
    }
    names
}

/// The identifier `text` starts with.
fn word_at(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let nodes: BTreeSet<String> = files.iter().map(|f| node_of(&src, f)).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let from = node_of(&src, file);
        let text = std::fs::read_to_string(file).expect("read a source file");
        let targets = edges.entry(from.clone()).or_default();
        for name in crate_names(&text) {
            if name != from && nodes.contains(&name) {
                targets.insert(name);
            }
        }
    }
    edges
}

/// A cycle through `node`, if the graph has one reachable from it.
fn cycle_from(
    node: &str,
    edges: &BTreeMap<String, BTreeSet<String>>,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(at) = path.iter().position(|n| n == node) {
        let mut cycle = path[at..].to_vec();
        cycle.push(node.to_string());
        return Some(cycle);
    }
    if done.contains(node) {
        return None;
    }
    path.push(node.to_string());
    for next in edges.get(node).into_iter().flatten() {
        if let Some(cycle) = cycle_from(next, edges, path, done) {
            return Some(cycle);
        }
    }
    path.pop();
    done.insert(node.to_string());
    None
}

#[test]
fn server_folders_import_each_other_one_way() {
    let edges = graph();
    assert!(
        edges.contains_key("member") && edges.contains_key("peer") && edges.contains_key("api"),
        "the folders were not found: {edges:?}"
    );
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        let cycle = cycle_from(node, &edges, &mut Vec::new(), &mut done);
        assert!(
            cycle.is_none(),
            "an import circle across folders: {cycle:?}"
        );
    }
}

#[test]
fn shared_modules_import_nothing_of_the_crate() {
    let edges = graph();
    for shared in SHARED {
        let uses = edges.get(*shared);
        assert!(uses.is_some(), "{shared}.rs is missing");
        assert!(
            uses.is_some_and(|u| u.is_empty()),
            "{shared}.rs imports {uses:?}"
        );
    }
}

#[test]
fn a_circle_is_found_when_there_is_one() {
    let mut edges = BTreeMap::new();
    edges.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    edges.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    let cycle = cycle_from("a", &edges, &mut Vec::new(), &mut BTreeSet::new());
    assert_eq!(cycle, Some(vec!["a".into(), "b".into(), "a".into()]));
    let names =
        crate_names("use crate::{member::node::Node, peer::{a, b}};\nx(crate::ids::hex(1));");
    assert_eq!(
        names,
        BTreeSet::from(["member".into(), "peer".into(), "ids".into()])
    );
}
