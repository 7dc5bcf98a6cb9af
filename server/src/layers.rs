//! The server's modules in layers, and a test that they import only downward (as romanz/electrs
//! does: `server → electrum → tracker → … → types`). Each file's `crate::…` paths are read from
//! the source; a module may use modules of the layers below its own, never one above it, and
//! never another module of its own layer. A new module file must be placed here.

use std::path::Path;

/// Top to bottom. A nested module (`methods::fees`) is in its parent's layer unless listed; a
/// listed nested module (`mempool::driver`) must be above its parent, so that `super::` (which
/// these paths do not include) can only reach down.
const LAYERS: &[&[&str]] = &[
    // The crate root: flags to config, then every task and listener started.
    &["lib"],
    // The operator's interface: sessions, bans, log level, the status summary.
    &["admin"],
    // Listeners: TCP, TLS, WebSocket; connection limits.
    &["listen"],
    // One client connection: requests, batches, notifications.
    &["session"],
    // The Electrum methods, by protocol version.
    &["methods"],
    // The fuzz targets' bodies (tests only here; fuzz/ compiles it with `call` and `protocol`).
    &["fuzzing"],
    // A request parsed into a typed call, its arguments checked.
    &["call"],
    // What computes statuses and what keeps the state current.
    &["status", "catch_up", "mempool::driver", "zmq", "stats", "silent"],
    // Supervision of the long-lived tasks.
    &["tasks"],
    // What every session shares.
    &["state"],
    // The state's parts.
    &["script_cache", "mempool", "peers", "sessions", "tweaks"],
    &["metrics", "bans", "outbox", "cost", "turns"],
    // Configuration, and the protocol's vocabulary.
    &["protocol", "config"],
    // TLS material, checked at start-up; the PROXY protocol's header.
    &["tls", "proxy"],
];

/// The layer of `module` (a path such as `mempool::driver::run`): that of its longest listed
/// prefix; the entry found too.
fn layer_of(module: &str) -> Option<(usize, &'static str)> {
    let segments: Vec<&str> = module.split("::").collect();
    (1..=segments.len()).rev().find_map(|n| {
        let prefix = segments[..n].join("::");
        LAYERS
            .iter()
            .enumerate()
            .find_map(|(layer, entries)| entries.iter().find(|e| **e == prefix).map(|e| (layer, *e)))
    })
}

/// The module paths after each `crate::` in `text`: `crate::mempool::driver::run` gives
/// `mempool::driver::run`, `crate::{config::Info, state::State}` gives `config::Info` and
/// `state::State` (only the lowercase segments: a type or function ends nothing we need).
fn crate_paths(text: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `blkindex_crate::`, not ours
        }
        match rest.strip_prefix('{') {
            Some(group) => {
                let mut depth = 0;
                let end = group
                    .char_indices()
                    .find(|&(_, c)| {
                        depth += match c {
                            '{' => 1,
                            '}' => -1,
                            _ => 0,
                        };
                        depth < 0
                    })
                    .map_or(group.len(), |(i, _)| i);
                let mut item = String::new();
                let mut depth = 0;
                for c in group[..end].chars().chain([',']) {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        ',' if depth == 0 => paths.push(module_part(&std::mem::take(&mut item))),
                        _ => {}
                    }
                    item.push(c);
                }
            }
            None => paths.push(module_part(rest)),
        }
    }
    paths.retain(|p| !p.is_empty());
    paths
}

/// The leading `lower::case::segments` of a path.
fn module_part(path: &str) -> String {
    let path = path.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
    let mut segments = Vec::new();
    for segment in path.split("::") {
        let ident: String = segment.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        let is_module = !ident.is_empty()
            && ident.len() == segment.len()
            && ident.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !is_module {
            if ident.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
                segments.push(ident); // the last segment: a module or a function, either way a path
            }
            break;
        }
        segments.push(ident);
    }
    segments.retain(|s| !s.is_empty());
    segments.join("::")
}

/// What breaks the layering among `files` (module path, source text).
fn violations(files: &[(String, String)]) -> Vec<String> {
    let mut found = Vec::new();
    for (module, text) in files {
        let Some((layer, entry)) = layer_of(module) else {
            found.push(format!("{module} is in no layer: place it in LAYERS"));
            continue;
        };
        for path in crate_paths(text) {
            match layer_of(&path) {
                None => found.push(format!("{module} imports {path}, which is in no layer")),
                Some((_, target)) if target == entry => {}
                Some((l, target)) if l < layer => {
                    found.push(format!("{module} imports {target}, which is above it"))
                }
                Some((l, target)) if l == layer => {
                    found.push(format!("{module} imports {target}, which is in its own layer"))
                }
                Some(_) => {}
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

/// Every module file of the server's library, as (module path, source text); not its binaries
/// (`main.rs`, `src/bin`: crates of their own) nor this test module (whose examples break the
/// rules).
fn module_files() -> Vec<(String, String)> {
    fn walk(dir: &Path, prefix: &[String], out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_str().unwrap().to_string();
            if path.is_dir() {
                if prefix.is_empty() && name == "bin" {
                    continue;
                }
                walk(&path, &[prefix, &[name]].concat(), out);
            } else if prefix.is_empty() && name == "main" {
                continue; // the binary: a crate of its own, using the library from outside
            } else if path.extension().is_some_and(|e| e == "rs") {
                let module = match name.as_str() {
                    "mod" => prefix.join("::"),
                    _ => [prefix, &[name]].concat().join("::"),
                };
                if module != "layers" {
                    out.push((module, std::fs::read_to_string(&path).unwrap()));
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &[], &mut out);
    out.sort();
    out
}

#[test]
fn modules_import_only_downward() {
    let files = module_files();
    assert!(files.len() > 20, "read the server's sources: {}", files.len());
    let found = violations(&files);
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn every_module_file_is_placed_and_every_entry_is_a_module() {
    let files = module_files();
    for (module, _) in &files {
        // A top-level module must be listed itself; a nested one may inherit its parent's layer.
        let top = module.split("::").next().unwrap();
        assert!(layer_of(top).is_some_and(|(_, e)| e == top), "{module} is in no layer: place it in LAYERS");
    }
    for entry in LAYERS.iter().flat_map(|l| l.iter()) {
        assert!(files.iter().any(|(m, _)| m == entry), "LAYERS lists {entry}, which is no module file");
        if let Some((parent, _)) = entry.rsplit_once("::") {
            let (own, _) = layer_of(entry).unwrap();
            let (below, _) = layer_of(parent).unwrap();
            assert!(own < below, "{entry} must be above its parent {parent}");
        }
    }
}

#[test]
fn an_upward_import_is_found() {
    let file = |module: &str, text: &str| vec![(module.to_string(), text.to_string())];
    assert_eq!(
        violations(&file("metrics", "use crate::state::State;")),
        ["metrics imports state, which is above it"]
    );
    assert_eq!(
        violations(&file("state", "fn f() { crate::mempool::driver::run(); }")),
        ["state imports mempool::driver, which is above it"]
    );
    assert_eq!(
        violations(&file("protocol", "use crate::{\n    bans::Bans,\n    config::{Info, Limits},\n};")),
        ["protocol imports bans, which is above it", "protocol imports config, which is in its own layer"]
    );
    assert!(violations(&file("methods::fees", "use crate::methods::Session; use crate::state::State;"))
        .is_empty());
    assert_eq!(violations(&file("nowhere", "")), ["nowhere is in no layer: place it in LAYERS"]);
    assert_eq!(
        crate_paths("blkindex_crate::x crate::mempool::Event crate::protocol::push_txid(t)"),
        ["mempool", "protocol::push_txid"]
    );
}
