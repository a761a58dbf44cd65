//! The api's modules import one another without a circle: the read side (`read`), the
//! tail's hub (`tail`) and the state hold no handler, and the handlers (`routes` and the
//! rest) depend on them, never the other way round.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each top-level module of `api/src` (a file, or a directory with its files) and the
/// top-level modules its code names as `crate::<module>` (doc comments left out).
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            let module = path.file_name().unwrap().to_str().unwrap().to_owned();
            for file in std::fs::read_dir(&path).unwrap() {
                files.push((module.clone(), file.unwrap().path()));
            }
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            let module = path.file_stem().unwrap().to_str().unwrap().to_owned();
            files.push((module, path));
        }
    }
    for (module, path) in files {
        if ["lib", "main"].contains(&module.as_str()) {
            continue;
        }
        let code = std::fs::read_to_string(&path).unwrap();
        let named = graph.entry(module.clone()).or_default();
        for line in code
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
        {
            for (at, _) in line.match_indices("crate::") {
                let rest = &line[at + "crate::".len()..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                let target = &rest[..end];
                if !target.is_empty() && target != module {
                    named.insert(target.to_owned());
                }
            }
            if let Some(list) = line.trim_start().strip_prefix("use crate::{") {
                for target in list.split([',', '}', ' ']).filter(|name| !name.is_empty()) {
                    let target = target.split("::").next().unwrap();
                    if target != module {
                        named.insert(target.to_owned());
                    }
                }
            }
        }
    }
    graph
}

/// A circle of the graph, if there is one.
fn circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        module: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|on| on == module) {
            let mut found = path[at..].to_vec();
            found.push(module.to_owned());
            return Some(found);
        }
        if done.contains(module) {
            return None;
        }
        path.push(module.to_owned());
        for next in graph.get(module).into_iter().flatten() {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(module.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|module| visit(module, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_modules_import_one_another_without_a_circle() {
    let graph = imports();
    // The parts the state holds depend on no handler and not on the state.
    for part in ["read", "tail", "state"] {
        assert!(graph.contains_key(part), "no module {part}");
    }
    for handlers in ["routes", "ingest"] {
        assert!(
            graph[handlers].contains("state"),
            "{handlers}: {:?}",
            graph[handlers]
        );
    }
    assert_eq!(circle(&graph), None, "{graph:#?}");
}

#[test]
fn a_circle_is_found() {
    let graph = BTreeMap::from([
        ("a".to_owned(), BTreeSet::from(["b".to_owned()])),
        ("b".to_owned(), BTreeSet::from(["c".to_owned()])),
        ("c".to_owned(), BTreeSet::from(["a".to_owned()])),
    ]);
    assert_eq!(
        circle(&graph),
        Some(
            vec!["a", "b", "c", "a"]
                .into_iter()
                .map(String::from)
                .collect()
        )
    );
}
