//! The module graph of plexd-target has no cycle, and its modules use only the
//! layers below them (docs/ARCHITECTURE.md, "Layers").
//!
//! Reads `src/`: every top-level module (a file or a folder) and the modules of the
//! crate it names (`crate::x` anywhere, doc links included, and the items of
//! `use crate::{..}` groups), leaving out each file's `#[cfg(test)] mod` tail. A
//! cycle fails the test and is printed, e.g. `volume -> target -> volume`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Most files read (the crate has about a hundred); a bound, not a limit to reach.
const MAX_FILES: usize = 2000;

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        assert!(out.len() < MAX_FILES, "more than {MAX_FILES} files");
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The source without its test module (`#[cfg(test)]` then `mod`).
fn without_tests(src: &str) -> &str {
    let mut from = 0;
    while let Some(i) = src[from..].find("#[cfg(test)]") {
        let at = from + i;
        let rest = src[at + "#[cfg(test)]".len()..].trim_start();
        if rest.starts_with("mod ") || rest.starts_with("pub mod ") {
            return &src[..at];
        }
        from = at + 1;
    }
    src
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first path segment of each item of a `{..}` group that starts `s` (after
/// the brace), nested groups skipped.
fn group_heads(s: &str) -> Vec<&str> {
    let mut heads = Vec::new();
    let mut depth = 0usize;
    let mut item_start = true;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => item_start = true,
            c if c.is_whitespace() => {}
            _ if item_start && depth == 0 => {
                heads.push(ident_at(&s[i..]));
                item_start = false;
            }
            _ => {}
        }
    }
    heads
}

/// Every module of the crate that `src` names.
fn uses(src: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in src.match_indices("crate::") {
        let rest = &src[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            out.extend(group_heads(group).into_iter().map(String::from));
        } else {
            out.insert(ident_at(rest).to_string());
        }
    }
    out.remove("");
    out
}

fn module_graph(src_dir: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files_of: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for e in std::fs::read_dir(src_dir).expect("src/") {
        let p = e.expect("directory entry").path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        let name = name.strip_suffix(".rs").unwrap_or(&name).to_string();
        if ["lib", "main", "bin"].contains(&name.as_str()) {
            continue;
        }
        let mut files = Vec::new();
        if p.is_dir() {
            rs_files(&p, &mut files);
        } else if p.extension().is_some_and(|x| x == "rs") {
            files.push(p.clone());
        } else {
            continue;
        }
        files_of.insert(name, files);
    }
    let mods: BTreeSet<String> = files_of.keys().cloned().collect();
    files_of
        .iter()
        .map(|(m, files)| {
            let mut deps = BTreeSet::new();
            for f in files {
                let text = std::fs::read_to_string(f)
                    .unwrap_or_else(|e| panic!("read {}: {e}", f.display()));
                deps.extend(
                    uses(without_tests(&text))
                        .into_iter()
                        .filter(|d| d != m && mods.contains(d)),
                );
            }
            (m.clone(), deps)
        })
        .collect()
}

/// A cycle of `g` as a path (first module repeated at the end), if any.
fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    // 0 unvisited, 1 on the DFS stack, 2 done.
    fn dfs<'a>(
        v: &'a str,
        g: &'a BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        state.insert(v, 1);
        stack.push(v);
        for w in &g[v] {
            match state.get(w.as_str()).copied().unwrap_or(0) {
                0 => {
                    if let Some(c) = dfs(w, g, state, stack) {
                        return Some(c);
                    }
                }
                1 => {
                    let from = stack.iter().position(|x| x == w).unwrap();
                    let mut c: Vec<String> = stack[from..].iter().map(|s| s.to_string()).collect();
                    c.push(w.clone());
                    return Some(c);
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(v, 2);
        None
    }
    let mut state = BTreeMap::new();
    for v in g.keys() {
        if state.get(v.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = dfs(v, g, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

/// The layers of docs/ARCHITECTURE.md, bottom first: a module uses only modules
/// before it. A module not listed is held to the acyclic check only.
const LAYERS: [&str; 15] = [
    "buf", "error", "event", "reactor", "bdev", "diag", "testutil", "services", "lease", "volume",
    "frontend", "target", "perf", "api", "config",
];

#[test]
fn modules_use_only_the_layers_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = module_graph(&src);
    let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
    let mut upward = Vec::new();
    for (m, deps) in &g {
        let Some(rm) = rank(m) else { continue };
        for d in deps {
            if rank(d).is_some_and(|rd| rd > rm) {
                upward.push(format!("{m} -> {d}"));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "modules using a layer above them (docs/ARCHITECTURE.md, Layers): {}",
        upward.join(", ")
    );
}

#[test]
fn module_graph_is_acyclic() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = module_graph(&src);
    // The scan sees the modules it must (a broken scan would pass vacuously).
    for (m, dep) in [
        ("target", "volume"),
        ("target", "frontend"),
        ("volume", "lease"),
        ("frontend", "bdev"),
        ("reactor", "buf"),
    ] {
        assert!(
            g.get(m).is_some_and(|d| d.contains(dep)),
            "the scan lost the edge {m} -> {dep}: {g:?}"
        );
    }
    if let Some(c) = find_cycle(&g) {
        panic!(
            "import cycle between modules of plexd-target: {}\nmodule graph: {g:#?}",
            c.join(" -> ")
        );
    }
}

#[test]
fn the_scan_reads_groups_and_skips_test_modules() {
    let src = "use crate::{bdev::{Bdev, BdevIo}, reactor::Reactor, buf};\n\
               /// [`crate::lease::Lease`]\n\
               #[cfg(test)]\nfn helper() { crate::diag::x(); }\n\
               #[cfg(test)]\nmod tests { use crate::target::Target; }\n";
    let got: Vec<String> = uses(without_tests(src)).into_iter().collect();
    assert_eq!(got, ["bdev", "buf", "diag", "lease", "reactor"]);
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    g.insert("b".to_string(), BTreeSet::from(["c".to_string()]));
    g.insert("c".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(find_cycle(&g).unwrap(), ["a", "b", "c", "a"]);
    g.get_mut("c").unwrap().clear();
    assert_eq!(find_cycle(&g), None);
}
