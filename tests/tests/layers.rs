//! The runtime's top-level modules import each other without cycles
//! (the layered layout of `runtime/src`, see the README's "Layout" section).
//!
//! A top-level module is `src/x.rs` or the folder `src/x/`. Module x depends
//! on module y when a file of x names `crate::y` (also inside
//! `use crate::{a, b::c}` groups), or names an item that `lib.rs` re-exports
//! from y (`pub use y::{Item, ..}` or `pub use y::Item`, then `crate::Item`).
//! Comments are stripped first. Every strongly connected component of two or
//! more modules is a cycle, and fails the test with its members and the
//! edges between them.
//!
//! Pure Rust and std: no server needed. The detector itself is checked on
//! small crates written to a temporary directory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module name -> the modules it depends on.
type Graph = BTreeMap<String, BTreeSet<String>>;

#[test]
fn runtime_src_has_no_import_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtime/src");
    let graph = module_graph(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    let cycles = cycles(&graph);
    assert!(
        cycles.is_empty(),
        "import cycles among the top-level modules of runtime/src ({} modules in {} cycles):\n{}",
        cycles.iter().map(Vec::len).sum::<usize>(),
        cycles.len(),
        describe(&graph, &cycles)
    );
}

/// The graph of the top-level modules of the crate whose `src` is `src`.
fn module_graph(src: &Path) -> std::io::Result<Graph> {
    let mods = top_modules(src)?;
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap_or_default();
    let reexported = reexports(&strip_comments(&lib), &mods);
    let mut graph = Graph::new();
    for m in &mods {
        let mut deps = BTreeSet::new();
        for file in module_files(src, m)? {
            let text = strip_comments(&std::fs::read_to_string(&file)?);
            for name in crate_names(&text) {
                let target = if mods.contains(&name) {
                    Some(&name)
                } else {
                    reexported.get(&name)
                };
                if let Some(t) = target.filter(|t| *t != m) {
                    deps.insert(t.clone());
                }
            }
        }
        graph.insert(m.clone(), deps);
    }
    Ok(graph)
}

/// `x` for every `src/x.rs` (but `lib.rs` and `main.rs`) and folder `src/x/`.
fn top_modules(src: &Path) -> std::io::Result<BTreeSet<String>> {
    let mut mods = BTreeSet::new();
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type()?.is_dir() {
            mods.insert(name);
        } else if let Some(stem) = name.strip_suffix(".rs") {
            if stem != "lib" && stem != "main" {
                mods.insert(stem.to_owned());
            }
        }
    }
    Ok(mods)
}

/// The files of module `m`: `src/m.rs` and every `.rs` under `src/m/`.
fn module_files(src: &Path, m: &str) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let file = src.join(format!("{m}.rs"));
    if file.is_file() {
        files.push(file);
    }
    let mut dirs = vec![src.join(m)];
    while let Some(dir) = dirs.pop() {
        if !dir.is_dir() {
            continue;
        }
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    Ok(files)
}

/// The text without `/* .. */` and `// ..` comments (doc comments included).
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("/*") {
        out.push_str(&rest[..i]);
        rest = match rest[i + 2..].find("*/") {
            Some(j) => &rest[i + 2 + j + 2..],
            None => "",
        };
    }
    out.push_str(rest);
    out.lines()
        .map(|line| line.find("//").map_or(line, |i| &line[..i]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The identifier at the start of `s`, if any.
fn ident(s: &str) -> Option<&str> {
    let end = s
        .char_indices()
        .find(|&(i, c)| !(c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())))
        .map_or(s.len(), |(i, _)| i);
    (end > 0).then(|| &s[..end])
}

/// Every name right after `crate::`, and the first segment of every entry
/// of a `crate::{..};` group.
fn crate_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (i, _) in text.match_indices("crate::") {
        let after = &text[i + "crate::".len()..];
        if let Some(name) = ident(after) {
            names.push(name.to_owned());
        } else if let Some(group) = after.strip_prefix('{') {
            let group = group.find("};").map_or(group, |end| &group[..end]);
            names.extend(first_segments(group));
        }
    }
    names
}

/// `a::b, c, d::{e, f}` -> `[a, c, d]`: the first path segment of each entry.
fn first_segments(group: &str) -> Vec<String> {
    let mut entries = vec![String::new()];
    let mut depth = 0i32;
    for ch in group.chars() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                entries.push(String::new());
                continue;
            }
            _ => {}
        }
        if let Some(last) = entries.last_mut() {
            last.push(ch);
        }
    }
    entries
        .iter()
        .filter_map(|e| ident(e.trim_start()).map(str::to_owned))
        .collect()
}

/// Item name -> module, from `lib.rs`'s `pub use module::{..}` and
/// `pub use module::Item` (every identifier of the group counts).
fn reexports(lib: &str, mods: &BTreeSet<String>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (i, _) in lib.match_indices("pub") {
        let rest = &lib[i + "pub".len()..];
        let after_pub = rest.trim_start();
        let Some(path) = after_pub.strip_prefix("use") else {
            continue;
        };
        let path_start = path.trim_start();
        if after_pub.len() == rest.len() || path_start.len() == path.len() {
            continue; // `pub` and `use` must be words of their own
        }
        let Some(module) = ident(path_start).filter(|m| mods.contains(*m)) else {
            continue;
        };
        let Some(rest) = path_start[module.len()..].strip_prefix("::") else {
            continue;
        };
        let items = match rest.strip_prefix('{') {
            Some(group) => group.split('}').next().unwrap_or_default(),
            None => ident(rest).unwrap_or_default(),
        };
        for item in items.split(|c: char| !(c == '_' || c.is_ascii_alphanumeric())) {
            if ident(item).is_some_and(|i| i.len() == item.len()) {
                out.entry(item.to_owned())
                    .or_insert_with(|| module.to_owned());
            }
        }
    }
    out
}

/// The strongly connected components of two or more modules (Tarjan),
/// each sorted, in a stable order.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct Tarjan<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        out: Vec<Vec<String>>,
    }
    impl<'g> Tarjan<'g> {
        fn visit(&mut self, v: &'g str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut comp = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    comp.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                comp.sort();
                self.out.push(comp);
            }
        }
    }
    let mut t = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    t.out.retain(|c| c.len() > 1);
    t.out
}

/// One line per cycle: its modules, then each module's edges inside it.
fn describe(graph: &Graph, cycles: &[Vec<String>]) -> String {
    let mut s = String::new();
    for comp in cycles {
        s.push_str(&format!("cycle: {}\n", comp.join(" ")));
        for m in comp {
            let inside: Vec<&str> = graph[m]
                .iter()
                .filter(|d| comp.contains(d))
                .map(String::as_str)
                .collect();
            s.push_str(&format!("  {m} -> {}\n", inside.join(", ")));
        }
    }
    s
}

/// The detector on small crates written to a temporary directory.
mod detector {
    use super::*;

    /// A `src` folder with these files, deleted on drop.
    struct Crate(PathBuf);

    impl Crate {
        fn write(name: &str, files: &[(&str, &str)]) -> Crate {
            let dir = std::env::temp_dir().join(format!(
                "advisory-locked-layers-{name}-{}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            for (path, text) in files {
                let path = dir.join(path);
                std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
                std::fs::write(path, text).expect("write");
            }
            Crate(dir)
        }
    }

    impl Drop for Crate {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn finds_cycles_through_paths_groups_and_reexports() {
        let c = Crate::write(
            "cyclic",
            &[
                (
                    "lib.rs",
                    "mod a;\nmod b;\nmod x;\nmod y;\nmod leaf;\n\
                     // pub use leaf::Fake;\n\
                     pub use y::{Item, other::Thing};\npub use leaf::Leaf;\n",
                ),
                // a -> b by path; b -> a through a group, in a sub-file.
                ("a.rs", "use crate::b::f;\npub fn g() { f() }\n"),
                ("b/mod.rs", "mod inner;\npub fn f() {}\n"),
                (
                    "b/inner.rs",
                    "use crate::{\n    leaf::Leaf,\n    a::{g, self},\n};\n",
                ),
                // x -> y through y's re-exported item; y -> x by path.
                ("x.rs", "pub fn h(_: crate::Item) {}\n"),
                ("y.rs", "pub struct Item;\nfn k() { crate::x::h(Item) }\n"),
                // Only comments name a and x: no edges.
                (
                    "leaf.rs",
                    "// use crate::a;\n/* crate::x::h\n crate::b */\n/// crate::Item\npub struct Leaf;\n",
                ),
            ],
        );
        let graph = module_graph(&c.0).expect("the crate is readable");
        assert_eq!(
            graph["b"],
            BTreeSet::from(["a".to_owned(), "leaf".to_owned()])
        );
        assert_eq!(graph["x"], BTreeSet::from(["y".to_owned()]));
        assert!(graph["leaf"].is_empty(), "{graph:?}");
        assert_eq!(
            cycles(&graph),
            vec![
                vec!["a".to_owned(), "b".to_owned()],
                vec!["x".to_owned(), "y".to_owned()]
            ],
            "{graph:?}"
        );
        let text = describe(&graph, &cycles(&graph));
        assert!(text.contains("cycle: a b\n  a -> b\n  b -> a\n"), "{text}");
    }

    #[test]
    fn a_layered_crate_has_no_cycle() {
        let c = Crate::write(
            "layered",
            &[
                (
                    "lib.rs",
                    "mod key;\nmod pg;\nmod session;\npub use key::Key;\n",
                ),
                ("key.rs", "pub struct Key;\n// crate::session is above\n"),
                ("pg/mod.rs", "use crate::Key;\n"),
                ("pg/sql.rs", "use crate::{key::Key};\n"),
                (
                    "session/mod.rs",
                    "use crate::{pg, Key};\nfn f(_: crate::pg::X) {}\n",
                ),
            ],
        );
        let graph = module_graph(&c.0).expect("the crate is readable");
        assert_eq!(graph["pg"], BTreeSet::from(["key".to_owned()]));
        assert_eq!(
            graph["session"],
            BTreeSet::from(["key".to_owned(), "pg".to_owned()])
        );
        assert!(graph["key"].is_empty(), "{graph:?}");
        assert!(cycles(&graph).is_empty(), "{graph:?}");
    }

    #[test]
    fn a_crate_without_src_is_an_error_not_a_pass() {
        let missing = std::env::temp_dir().join("advisory-locked-layers-no-such-src");
        assert!(module_graph(&missing).is_err());
    }
}
