//! The runtime's layer rule, held: reads every module's `use crate::…`,
//! `use super::…` and inline `crate::…` / `super::…` paths, resolves each
//! to the file that defines the item (through re-exports, the root's
//! included: `crate::Codec` is an import of `protocol/codec.rs`), and fails
//! naming the file and line of every import that points up the layers, or
//! between the client and the server, and of every circle of files.
//!
//! The layers, from the ground: `error.rs`; `protocol/`; `connection/`
//! (the only user of the `mqrpc-link` crate); `observe/`; `client/` and
//! `server/` (neither imports the other); `asyncapi/`. `lib.rs` only
//! declares modules and re-exports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layer of a top-level module; equal layers may not import each other.
fn layer(top: &str) -> Option<u8> {
    Some(match top {
        "error" => 0,
        "protocol" => 1,
        "connection" => 2,
        "observe" => 3,
        "client" | "server" => 4,
        "asyncapi" => 5,
        _ => return None,
    })
}

/// One source file: its module path and text.
struct File {
    path: PathBuf,
    module: Vec<String>,
    text: String,
}

/// An import seen in a file: the line, its text, the path it names.
struct Import {
    line: usize,
    text: String,
    /// Inline modules (`mod tests { … }`) the import stands in.
    scope: Vec<String>,
    target: Vec<String>,
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn files(dir: &Path, module: &[String], out: &mut Vec<File>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if path.is_dir() {
            let mut sub = module.to_vec();
            sub.push(name);
            files(&path, &sub, out);
        } else if let Some(stem) = name.strip_suffix(".rs") {
            let mut m = module.to_vec();
            if stem != "mod" && !(module.is_empty() && stem == "lib") {
                m.push(stem.to_string());
            }
            let text = std::fs::read_to_string(&path).unwrap();
            out.push(File {
                path,
                module: m,
                text,
            });
        }
    }
}

/// The code of a line, without its comment (doc links are no imports).
fn code(line: &str) -> &str {
    let line = match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    };
    line.trim()
}

/// Top-level items of a `{a, b::c, d::{e, f}}` group, expanded.
fn expand(group: &str) -> Vec<String> {
    let group = group.trim();
    let Some(inner) = group.strip_prefix('{').and_then(|g| g.strip_suffix('}')) else {
        if let Some(i) = group.find("::") {
            let first = &group[..i];
            return expand(&group[i + 2..])
                .into_iter()
                .map(|rest| format!("{first}::{rest}"))
                .collect();
        }
        let plain = group.split(" as ").next().unwrap().trim();
        return vec![plain.to_string()];
    };
    let (mut items, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&inner[start..]);
    let mut out = Vec::new();
    for item in items.into_iter().map(str::trim).filter(|i| !i.is_empty()) {
        match item.find("::") {
            Some(i) if !item[..i].contains('{') => {
                for rest in expand(&item[i + 2..]) {
                    out.push(format!("{}::{rest}", &item[..i]));
                }
            }
            _ => out.push(item.split(" as ").next().unwrap().trim().to_string()),
        }
    }
    out
}

/// Paths a `use` statement names, relative to its root (`crate`, `super`, `self`).
fn use_paths(statement: &str) -> Vec<String> {
    let body = statement
        .trim_start_matches("pub(crate) ")
        .trim_start_matches("pub(super) ")
        .trim_start_matches("pub ")
        .trim_start_matches("use ")
        .trim_end_matches(';')
        .trim();
    let body: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    match body.find("::") {
        Some(i) => expand(&body[i + 2..])
            .into_iter()
            .map(|rest| format!("{}::{rest}", &body[..i]))
            .collect(),
        None => Vec::new(),
    }
}

/// Every import of a file: `use` statements (several lines joined) and
/// inline `crate::` / `super::` paths. `pub use` lines of a module file
/// (re-exports: the module's face) are left out, as are `mod` lines.
fn imports(file: &File) -> Vec<Import> {
    let mut out = Vec::new();
    let lines: Vec<&str> = file.text.lines().collect();
    let face = file.path.ends_with("mod.rs") || file.path.ends_with("lib.rs");
    // Inline modules open at this line: (name, brace depth outside it,
    // a `#[cfg(test)]` one: test code, whose imports are no edges).
    let mut inline: Vec<(String, i32, bool)> = Vec::new();
    let mut test_attribute = false;
    let mut depth = 0;
    let mut i = 0;
    while i < lines.len() {
        let start = i;
        let line = code(lines[i]);
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(at) = words.iter().position(|w| *w == "mod") {
            if words.get(at + 2) == Some(&"{") {
                inline.push((words[at + 1].to_string(), depth, test_attribute));
            }
        }
        if !line.is_empty() {
            test_attribute = line == "#[cfg(test)]";
        }
        depth += line.matches('{').count() as i32 - line.matches('}').count() as i32;
        while inline
            .last()
            .is_some_and(|(_, outside, _)| depth <= *outside)
        {
            inline.pop();
        }
        if inline.iter().any(|(_, _, test)| *test) {
            i += 1;
            continue;
        }
        let scope: Vec<String> = inline.iter().map(|(name, _, _)| name.clone()).collect();
        let is_use = line.starts_with("use ")
            || line.starts_with("pub use ")
            || line.starts_with("pub(crate) use ")
            || line.starts_with("pub(super) use ");
        if is_use {
            let mut statement = line.to_string();
            while !statement.ends_with(';') && i + 1 < lines.len() {
                i += 1;
                statement.push(' ');
                statement.push_str(code(lines[i]));
            }
            let reexport = !statement.starts_with("use ");
            if !(face && reexport) {
                for path in use_paths(&statement) {
                    let mut segments: Vec<String> = path.split("::").map(str::to_string).collect();
                    if matches!(segments[0].as_str(), "crate" | "super" | "self") {
                        segments.retain(|s| s != "*");
                        out.push(Import {
                            line: start + 1,
                            text: lines[start].trim().to_string(),
                            scope: scope.clone(),
                            target: segments,
                        });
                    }
                }
            }
        } else {
            for root in ["crate::", "super::"] {
                let mut rest = line;
                while let Some(at) = rest.find(root) {
                    let before = rest[..at].chars().last();
                    let path: String = rest[at..]
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                        .collect();
                    rest = &rest[at + root.len()..];
                    if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                        continue;
                    }
                    let segments: Vec<String> = path
                        .trim_end_matches(':')
                        .split("::")
                        .map(str::to_string)
                        .collect();
                    out.push(Import {
                        line: start + 1,
                        text: lines[start].trim().to_string(),
                        scope: scope.clone(),
                        target: segments,
                    });
                }
            }
        }
        i += 1;
    }
    out
}

/// The modules and what each re-exports (`name` -> path from the root).
struct Tree {
    modules: BTreeSet<Vec<String>>,
    reexports: BTreeMap<Vec<String>, BTreeMap<String, Vec<String>>>,
}

impl Tree {
    fn new(files: &[File]) -> Tree {
        let modules = files.iter().map(|f| f.module.clone()).collect();
        let mut reexports: BTreeMap<Vec<String>, BTreeMap<String, Vec<String>>> = BTreeMap::new();
        for file in files {
            let lines: Vec<&str> = file.text.lines().map(code).collect();
            let mut i = 0;
            while i < lines.len() {
                let line = lines[i];
                if line.starts_with("pub use ") || line.starts_with("pub(crate) use ") {
                    let mut statement = line.to_string();
                    while !statement.ends_with(';') && i + 1 < lines.len() {
                        i += 1;
                        statement.push(' ');
                        statement.push_str(lines[i]);
                    }
                    let renames = statement.replace(['{', '}', ';'], ",");
                    for path in use_paths(&statement) {
                        let mut segments: Vec<String> =
                            path.split("::").map(str::to_string).collect();
                        let last = segments.last().unwrap().clone();
                        // `X as Y`: the name seen from outside is Y.
                        let alias = renames
                            .split(',')
                            .find_map(|part| {
                                let (from, to) = part.split_once(" as ")?;
                                (from.trim().rsplit("::").next()? == last)
                                    .then(|| to.trim().to_string())
                            })
                            .unwrap_or_else(|| last.clone());
                        let absolute = match segments[0].as_str() {
                            "crate" => segments.split_off(1),
                            "self" => [file.module.clone(), segments.split_off(1)].concat(),
                            "super" => {
                                let parent = file.module[..file.module.len() - 1].to_vec();
                                [parent, segments.split_off(1)].concat()
                            }
                            // A child module of this one (`pub use codec::Codec`).
                            first if modules_contains(files, &file.module, first) => {
                                [file.module.clone(), segments].concat()
                            }
                            _ => continue, // another crate's item
                        };
                        reexports
                            .entry(file.module.clone())
                            .or_default()
                            .insert(alias, absolute);
                    }
                }
                i += 1;
            }
        }
        Tree { modules, reexports }
    }

    /// The module (file) that defines what `path` (from the root) names.
    fn resolve(&self, path: &[String], depth: usize) -> Vec<String> {
        let mut current: Vec<String> = Vec::new();
        for segment in path {
            let mut child = current.clone();
            child.push(segment.clone());
            if self.modules.contains(&child) {
                current = child;
                continue;
            }
            if depth < 8 {
                if let Some(target) = self.reexports.get(&current).and_then(|r| r.get(segment)) {
                    return self.resolve(target, depth + 1);
                }
            }
            break;
        }
        current
    }
}

fn modules_contains(files: &[File], module: &[String], child: &str) -> bool {
    files.iter().any(|f| {
        f.module.len() == module.len() + 1
            && f.module[..module.len()] == *module
            && f.module[module.len()] == child
    })
}

fn absolute(file: &File, scope: &[String], target: &[String]) -> Vec<String> {
    let mut base = [file.module.clone(), scope.to_vec()].concat();
    let mut rest = target;
    match target[0].as_str() {
        "crate" => {
            base.clear();
            rest = &target[1..];
        }
        "self" => rest = &target[1..],
        _ => {
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
        }
    }
    [base, rest.to_vec()].concat()
}

struct Graph {
    files: Vec<File>,
    /// file index -> (target file index, line, text)
    edges: Vec<Vec<(usize, usize, String)>>,
}

fn graph() -> Graph {
    let mut all = Vec::new();
    files(&src(), &[], &mut all);
    let tree = Tree::new(&all);
    let index: BTreeMap<Vec<String>, usize> = all
        .iter()
        .enumerate()
        .map(|(i, f)| (f.module.clone(), i))
        .collect();
    let mut edges = vec![Vec::new(); all.len()];
    for (i, file) in all.iter().enumerate() {
        for import in imports(file) {
            let target = tree.resolve(&absolute(file, &import.scope, &import.target), 0);
            let Some(&j) = index.get(&target) else {
                continue;
            };
            // A module's own children and ancestors' faces are no edges
            // when the target is the importing file itself.
            if j != i {
                edges[i].push((j, import.line, import.text));
            }
        }
    }
    Graph { files: all, edges }
}

fn name(file: &File) -> String {
    file.path.strip_prefix(src()).unwrap().display().to_string()
}

#[test]
fn imports_point_down_the_layers() {
    let g = graph();
    let mut wrong = Vec::new();
    for (i, file) in g.files.iter().enumerate() {
        let Some(from) = file.module.first() else {
            continue; // lib.rs: re-exports only (checked below)
        };
        for (j, line, text) in &g.edges[i] {
            let Some(to) = g.files[*j].module.first() else {
                wrong.push(format!(
                    "src/{}:{line}: `{text}` imports from lib.rs: name the module that defines it",
                    name(file)
                ));
                continue;
            };
            let (Some(a), Some(b)) = (layer(from), layer(to)) else {
                continue;
            };
            if b > a || (a == b && from != to) {
                wrong.push(format!(
                    "src/{}:{line}: `{text}`: {from}/ (layer {a}) imports {} (layer {b}): imports point down",
                    name(file),
                    name(&g.files[*j])
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "upward imports:\n{}", wrong.join("\n"));
}

#[test]
fn lib_rs_only_declares_modules_and_reexports() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let mut depth = 0;
    for (n, line) in lib.lines().enumerate() {
        let line = code(line);
        let allowed = line.is_empty()
            || line.starts_with("#")
            || line.starts_with("mod ")
            || line.starts_with("pub mod ")
            || line.starts_with("pub use ")
            || line.starts_with("pub(crate) use ")
            || line.starts_with('}')
            || depth > 0 && !line.starts_with("fn ") && !line.contains(" fn ")
            || line.ends_with(',') // continued `pub use` groups
            || line.ends_with("};");
        assert!(
            allowed,
            "src/lib.rs:{}: `{line}`: lib.rs only declares modules and re-exports",
            n + 1
        );
        depth += line.matches('{').count() as i32 - line.matches('}').count() as i32;
    }
}

/// Circles that were there when this check came (issue 22), each as the
/// set of its files: the check fails on any other circle, on one of these
/// that grew, and on one that is gone but still listed here (delete its
/// line then). Break them, don't add to them.
const KNOWN_CIRCLES: &[&[&str]] = &[
    &[
        "client/batching.rs",
        "client/chunked.rs",
        // Retries and client layers (issue 20): options hold the policy and
        // the layers, which drive the request builder again per attempt.
        "client/layers.rs",
        "client/many.rs",
        "client/options.rs",
        "client/pending.rs",
        "client/request.rs",
        "client/retry.rs",
        "client/sequence.rs",
    ],
    &[
        // Answers leaving (split out of dispatch.rs): the backlog holds
        // them, and holds the acks they release.
        "server/answer.rs",
        "server/backlog.rs",
        "server/call.rs",
        "server/dispatch.rs",
        "server/handle.rs",
        // Server layers (issue 20): the dispatcher hands a layered call to
        // them and they call the dispatcher's handler back.
        "server/layers/mod.rs",
        "server/limits.rs",
        "server/mod.rs",
        "server/options.rs",
        "server/reassembly/mod.rs",
        "server/streaming.rs",
        // Client streams: `impl Dispatcher` like streaming.rs, and the
        // dispatcher's two hooks (items in, the handler's scope).
        "server/upstream.rs",
    ],
];

#[test]
fn no_circle_of_files() {
    let g = graph();
    // Tarjan's strongly connected components.
    struct State {
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        circles: Vec<Vec<usize>>,
    }
    fn visit(v: usize, g: &Graph, s: &mut State) {
        s.index[v] = Some(s.next);
        s.low[v] = s.next;
        s.next += 1;
        s.stack.push(v);
        s.on[v] = true;
        for &(w, _, _) in &g.edges[v] {
            match s.index[w] {
                None => {
                    visit(w, g, s);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(iw) if s.on[w] => s.low[v] = s.low[v].min(iw),
                Some(_) => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut component = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on[w] = false;
                component.push(w);
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                s.circles.push(component);
            }
        }
    }
    let n = g.files.len();
    let mut s = State {
        index: vec![None; n],
        low: vec![0; n],
        on: vec![false; n],
        stack: Vec::new(),
        next: 0,
        circles: Vec::new(),
    };
    for v in 0..n {
        if s.index[v].is_none() {
            visit(v, &g, &mut s);
        }
    }
    let mut report = Vec::new();
    let mut known: Vec<BTreeSet<&str>> = KNOWN_CIRCLES
        .iter()
        .map(|c| c.iter().copied().collect())
        .collect();
    for circle in &s.circles {
        let names: BTreeSet<String> = circle.iter().map(|&f| name(&g.files[f])).collect();
        let names: BTreeSet<&str> = names.iter().map(String::as_str).collect();
        if let Some(k) = known.iter().position(|k| *k == names) {
            known.remove(k);
            continue;
        }
        let members: BTreeSet<usize> = circle.iter().copied().collect();
        report.push(format!(
            "circle of {} files: {}",
            circle.len(),
            circle
                .iter()
                .map(|&f| name(&g.files[f]))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        for &f in circle {
            for (j, line, text) in &g.edges[f] {
                if members.contains(j) {
                    report.push(format!(
                        "  src/{}:{line}: `{text}` -> {}",
                        name(&g.files[f]),
                        name(&g.files[*j])
                    ));
                }
            }
        }
    }
    for gone in known {
        report.push(format!(
            "a known circle is gone or changed (delete or mend its entry in KNOWN_CIRCLES): {gone:?}"
        ));
    }
    assert!(report.is_empty(), "import circles:\n{}", report.join("\n"));
}

/// The checker itself sees the imports it must see.
#[test]
fn the_checker_resolves_paths_and_reexports() {
    assert_eq!(
        use_paths("use crate::{observe, protocol::{QoS, topic}, Error};"),
        [
            "crate::observe",
            "crate::protocol::QoS",
            "crate::protocol::topic",
            "crate::Error"
        ]
    );
    assert_eq!(
        use_paths("use super::dispatch::Dispatcher;"),
        ["super::dispatch::Dispatcher"]
    );
    let g = graph();
    let find = |path: &str| {
        g.files
            .iter()
            .position(|f| f.path.ends_with(path))
            .unwrap_or_else(|| panic!("{path} is read"))
    };
    // `crate::Codec` is `protocol/codec.rs`, through the root's re-export.
    let client = find("client/options.rs");
    let codec = find("protocol/codec.rs");
    assert!(
        g.edges[client].iter().any(|(j, _, _)| *j == codec),
        "client/options.rs -> protocol/codec.rs (through `crate::Codec`)"
    );
    // The connection layer's face hands out what its files define.
    let pending = find("client/pending.rs");
    let acks = find("connection/acks.rs");
    assert!(g.edges[pending].iter().any(|(j, _, _)| *j == acks));
}

/// Getters in one style: `get_<name>` only where the builder's setter is
/// `<name>` (as `std::process::Command::get_args` beside `args`), no other
/// prefix or suffix (`_limit`); everything else has the plain name.
#[test]
fn getters_are_named_in_one_style() {
    let g = graph();
    let mut wrong = Vec::new();
    for file in &g.files {
        for (n, line) in file.text.lines().enumerate() {
            let line = code(line);
            let Some(rest) = line.strip_prefix("pub fn ") else {
                continue;
            };
            let Some((fn_name, args)) = rest.split_once('(') else {
                continue;
            };
            if !args.starts_with("&self)") {
                continue;
            }
            if let Some(field) = fn_name.strip_prefix("get_") {
                let setter = format!("pub fn {field}(mut self");
                let plain = format!("pub fn {field}(self");
                if !file.text.contains(&setter) && !file.text.contains(&plain) {
                    wrong.push(format!(
                        "src/{}:{}: `{fn_name}`: no setter `{field}` beside it, so no `get_`",
                        name(file),
                        n + 1
                    ));
                }
            } else if fn_name.ends_with("_limit") && !line.contains("deprecated") {
                let lines: Vec<&str> = file.text.lines().collect();
                let deprecated = lines[n.saturating_sub(4)..n]
                    .iter()
                    .any(|l| l.contains("#[deprecated"));
                if !deprecated {
                    wrong.push(format!(
                        "src/{}:{}: `{fn_name}`: name it `get_<setter>`",
                        name(file),
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "getter names:\n{}", wrong.join("\n"));
}

/// The old public names still answer, deprecated.
#[test]
#[allow(deprecated)]
fn old_getter_names_still_answer() {
    let options = mqrpc_runtime::ConnectOptions::new("localhost", 1883).max_pending_calls(7);
    assert_eq!(options.max_pending_calls_limit(), 7);
    assert_eq!(options.get_max_pending_calls(), 7);
}
