//! The shape of the source tree, kept as issue #27 left it: modules that import each other in a
//! circle, the editor reaching into the networks, files that grew past what a reader takes in
//! at once, and a README that grew back into lab notes all fail here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// `src/a/b.rs` and `src/a/b/mod.rs` are module `a::b`.
fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Module = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The code of a file without comments and without its unit tests (by this crate's habit, a
/// `#[cfg(test)] mod tests` at the end).
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path the code names from `crate::`, `super::` or `self::`, `use` groups expanded one
/// level (`use super::{a, b::C}` names `super::a` and `super::b`).
fn paths(code: &str) -> Vec<String> {
    let mut out = vec![];
    let mut rest = code;
    while let Some(i) = rest.find("use ") {
        let after = &rest[i + 4..];
        let end = after.find(';').unwrap_or(after.len());
        let stmt: String = after[..end].split_whitespace().collect();
        if let Some((base, group)) = stmt.split_once("::{") {
            let group = group.trim_end_matches('}');
            let mut depth = 0;
            let mut item = String::new();
            for ch in group.chars().chain(std::iter::once(',')) {
                match ch {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        let name = item.split("::").next().unwrap_or("").to_string();
                        if !name.is_empty() && name != "self" {
                            out.push(format!("{base}::{name}"));
                        }
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(ch);
            }
        }
        rest = &after[end.min(after.len())..];
    }
    // Paths written out anywhere (calls, types, `use` without a group).
    let bytes = code.as_bytes();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(start) {
            let i = from + i;
            let boundary = i == 0
                || !(bytes[i - 1].is_ascii_alphanumeric()
                    || bytes[i - 1] == b'_'
                    || bytes[i - 1] == b':');
            let len = code[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(code.len() - i);
            if boundary {
                out.push(code[i..i + len].trim_end_matches(':').to_string());
            }
            from = i + len.max(1);
        }
    }
    out
}

/// The modules each module's code depends on (not counting its own ancestors, whose items a
/// child uses by design).
fn graph() -> BTreeMap<Module, BTreeSet<Module>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![];
    sources(&src, &mut files);
    let modules: BTreeMap<Module, PathBuf> = files
        .iter()
        .map(|f| (module_of(&src, f), f.clone()))
        .collect();
    let resolve = |path: &[String]| -> Option<Module> {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|m| modules.contains_key(m))
    };
    let mut edges = BTreeMap::new();
    for (m, file) in &modules {
        let mut deps = BTreeSet::new();
        for p in paths(&code(&std::fs::read_to_string(file).unwrap())) {
            let mut parts: Vec<String> = p.split("::").map(str::to_string).collect();
            let mut base: Module = match parts[0].as_str() {
                "crate" => vec![],
                "self" => m.clone(),
                _ => m.clone(),
            };
            if parts[0] == "crate" || parts[0] == "self" {
                parts.remove(0);
            } else {
                while parts.first().map(String::as_str) == Some("super") {
                    parts.remove(0);
                    base.pop();
                }
            }
            base.extend(parts);
            if let Some(t) = resolve(&base) {
                let ancestor = t.len() < m.len() && m[..t.len()] == t[..];
                if &t != m && !ancestor {
                    deps.insert(t);
                }
            }
        }
        edges.insert(m.clone(), deps);
    }
    edges
}

fn name(m: &Module) -> String {
    m.join("::")
}

#[test]
fn no_module_imports_another_that_imports_it_back() {
    let edges = graph();
    assert!(edges.len() > 50, "the scan found the sources");
    assert!(
        edges[&vec!["model".to_string(), "nn".to_string()]]
            .contains(&vec!["model".to_string(), "kernels".to_string()]),
        "the scan sees imports"
    );
    // Every module that reaches back to itself along the edges.
    let mut circles = vec![];
    for start in edges.keys() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<(Module, Vec<Module>)> = vec![(start.clone(), vec![start.clone()])];
        while let Some((m, trail)) = stack.pop() {
            for next in &edges[&m] {
                if next == start {
                    circles.push(trail.iter().map(name).collect::<Vec<_>>().join(" -> "));
                } else if seen.insert(next.clone()) {
                    let mut t = trail.clone();
                    t.push(next.clone());
                    stack.push((next.clone(), t));
                }
            }
        }
    }
    assert!(circles.is_empty(), "import circles: {circles:#?}");
}

#[test]
fn the_editor_does_not_reach_into_the_networks() {
    let edges = graph();
    let reach: Vec<String> = edges
        .iter()
        .filter(|(m, _)| m.first().map(String::as_str) == Some("app"))
        .flat_map(|(m, deps)| {
            deps.iter()
                .filter(|d| d.first().map(String::as_str) == Some("model"))
                .map(move |d| format!("{} -> {}", name(m), name(d)))
        })
        .collect();
    assert!(reach.is_empty(), "app/ imports model/: {reach:#?}");
}

/// A file over 700 lines says in its first lines why it is one file ("one file" in its module
/// documentation).
#[test]
fn long_files_say_why_they_are_one_file() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![];
    sources(&src, &mut files);
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            let lines = text.lines().count();
            let head: String = text.lines().take(12).collect::<Vec<_>>().join("\n");
            (lines > 700 && !head.contains("one file"))
                .then(|| format!("{} ({lines} lines)", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "split these or say why not: {long:#?}");
}

#[test]
fn the_readme_stays_short_and_its_links_resolve() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(
        readme.len() <= 12 * 1024,
        "README.md is {} bytes",
        readme.len()
    );
    assert!(
        readme.starts_with("# instructdiffusion\n\n```sh\ncargo run --release\ncargo test\n```")
    );
    let mut docs = vec![
        root.join("README.md"),
        root.join("models/builtin/README.md"),
    ];
    for e in std::fs::read_dir(root.join("docs")).unwrap() {
        docs.push(e.unwrap().path());
    }
    let mut broken = vec![];
    for doc in docs
        .iter()
        .filter(|d| d.extension().is_some_and(|x| x == "md"))
    {
        let text = std::fs::read_to_string(doc).unwrap();
        for (i, _) in text.match_indices("](") {
            let target = &text[i + 2..];
            let target = &target[..target.find(')').unwrap_or(0)];
            let file = target.split('#').next().unwrap_or("");
            if file.is_empty() || file.contains("://") || file.contains(' ') {
                continue;
            }
            if !doc.parent().unwrap().join(file).exists() {
                broken.push(format!("{}: {target}", doc.display()));
            }
        }
    }
    assert!(broken.is_empty(), "links to nothing: {broken:#?}");
}
