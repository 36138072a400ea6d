//! The layers of `docs/architecture.md`, checked against the imports in
//! `src/`: a module uses only its own layer and those below it, the data
//! plane uses nothing of the config (what it needs is compiled into the
//! table), and no two top-level modules use each other, directly or
//! around a loop. Unit-test code (after `#[cfg(test)]`, or in `tests.rs`)
//! may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Layers from the face inwards; a module may use its own and later ones.
const LAYERS: [(&str, &[&str]); 6] = [
    ("face", &["main", "lib", "ctl", "demo", "server"]),
    (
        "control",
        &["admin", "rollout", "reload", "control", "journal", "state"],
    ),
    ("data plane", &["proxy"]),
    ("table", &["table"]),
    ("client side", &["upstream", "access_log"]),
    (
        "leaves",
        &[
            "config",
            "split",
            "stats",
            "clock",
            "worker",
            "memory",
            "shared_vec",
            "headers",
            "tls",
            "target",
        ],
    ),
];

/// The data plane: it reads the compiled table, never the config.
const DATA_PLANE: [&str; 3] = ["proxy", "access_log", "upstream"];

/// Imports that still run against the layers, each a known debt: the
/// list must match what the code does, so it only ever shrinks.
const KNOWN: &[&str] = &[];

/// Module loops still to break, as the sorted modules of each loop.
const KNOWN_CYCLES: &[&str] = &[];

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|(_, mods)| mods.contains(&module))
        .unwrap_or_else(|| {
            panic!("src/{module} is in no layer: place it in LAYERS (and in docs/architecture.md)")
        })
}

/// The top-level modules a source text refers to through `crate::` (or,
/// in the binary, `sluice::`), leaving out comments and unit tests.
fn uses(text: &str, lib: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("#[cfg(test)]") {
            break;
        }
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find(lib) {
            rest = &rest[i + lib.len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

fn edges() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "tests") {
                    stack.push(path);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") || path.ends_with("tests.rs") {
                continue;
            }
            let rel = path.strip_prefix(&src).unwrap();
            let first = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy();
            let module = first.trim_end_matches(".rs").to_string();
            let text = std::fs::read_to_string(&path).unwrap();
            let lib = if module == "main" {
                "sluice::"
            } else {
                "crate::"
            };
            let used = uses(&text, lib);
            let entry = graph.entry(module.clone()).or_default();
            entry.extend(used.into_iter().filter(|u| *u != module));
        }
    }
    graph
}

#[test]
fn imports_follow_the_layers() {
    let graph = edges();
    let mut against = Vec::new();
    for (from, tos) in &graph {
        for to in tos {
            if !graph.contains_key(to) {
                continue; // a crate item, not a module (crate::Foo)
            }
            let why = if layer_of(to) < layer_of(from) {
                Some(format!(
                    "{} uses {}",
                    LAYERS[layer_of(from)].0,
                    LAYERS[layer_of(to)].0
                ))
            } else if DATA_PLANE.contains(&from.as_str()) && to == "config" {
                Some("the data plane uses the config".to_string())
            } else {
                None
            };
            if let Some(why) = why {
                against.push((format!("{from} -> {to}"), why));
            }
        }
    }
    let found: BTreeSet<String> = against.iter().map(|(e, _)| e.clone()).collect();
    let known: BTreeSet<String> = KNOWN
        .iter()
        .map(|k| k.split(" (").next().unwrap().to_string())
        .collect();
    let new: Vec<_> = against.iter().filter(|(e, _)| !known.contains(e)).collect();
    assert!(
        new.is_empty(),
        "imports against the layers of docs/architecture.md: {new:#?}"
    );
    let mended: Vec<_> = known.difference(&found).collect();
    assert!(
        mended.is_empty(),
        "no longer against the layers, take them off KNOWN: {mended:?}"
    );
}

#[test]
fn no_two_modules_use_each_other() {
    let graph = edges();
    // Modules that reach each other: a loop, however long.
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(m) = todo.pop() {
            for n in graph.get(&m).into_iter().flatten() {
                if graph.contains_key(n) && seen.insert(n.clone()) {
                    todo.push(n.clone());
                }
            }
        }
        seen
    };
    let mut loops = BTreeSet::new();
    for m in graph.keys() {
        let mut members: Vec<String> = reach(m)
            .into_iter()
            .filter(|n| reach(n).contains(m))
            .collect();
        if !members.is_empty() {
            members.push(m.clone());
            members.sort();
            members.dedup();
            loops.insert(members.join(", "));
        }
    }
    let known: BTreeSet<String> = KNOWN_CYCLES.iter().map(|c| c.to_string()).collect();
    assert_eq!(
        loops, known,
        "modules that use each other (KNOWN_CYCLES lists the known ones)"
    );
}

#[test]
fn the_parser_sees_through_comments_and_tests() {
    let text = "use crate::table::Table;\n// crate::admin in a comment\nlet x = crate::stats::now(); // crate::rollout\n#[cfg(test)]\nmod tests { use crate::server; }\n";
    let found: Vec<String> = uses(text, "crate::").into_iter().collect();
    assert_eq!(found, ["stats", "table"]);
}
