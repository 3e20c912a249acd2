//! confab: self-hosted video meetings. One binary: a one-port WebRTC SFU on `rtc`, WebSocket
//! signaling, REST, chat and an RTSP bridge.
//!
//! The top-level modules import each other without cycles (checked by a test below): `app`
//! starts everything; `http` and `signaling` are the edges and share [`state::App`];
//! `moderation` is what operators do to a room, `room` is presence, `media` the SFU, `bridge`
//! and `rtsp` the cameras and players; `names`, `protocol`, `config` and the rest are leaves.
#![forbid(unsafe_code)]

pub mod access;
pub mod app;
pub mod bridge;
pub mod chat;
pub mod cluster;
pub mod config;
pub mod diagnostics;
pub mod drain;
pub mod http;
pub mod media;
pub mod metrics;
pub mod moderation;
pub mod names;
pub mod protocol;
pub mod room;
pub mod rtsp;
pub mod secret;
pub mod signaling;
pub mod state;
pub mod tls;
pub mod turn;

#[cfg(test)]
mod tests {
    //! The top-level modules of `src/` form no import cycle: each layer can be read, tested and
    //! replaced knowing only what it uses.

    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    /// Top-level module → the top-level modules its files name as `crate::X`.
    type Graph = BTreeMap<String, BTreeSet<String>>;

    /// The module a file under `src/` belongs to: `src/foo.rs` and `src/foo/**` are `foo`.
    fn module_of(relative: &Path) -> Option<String> {
        let first = relative.components().next()?.as_os_str().to_str()?;
        let name = first.strip_suffix(".rs").unwrap_or(first);
        (!matches!(name, "lib" | "main")).then(|| name.to_owned())
    }

    /// The modules `crate::X` names in `code` (comments left out): `crate::a::b`, `crate::a`,
    /// and each item of `crate::{a, b::{c, d}, e}`.
    fn referenced(code: &str) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        let ident = |s: &str| -> String {
            s.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        };
        for line in code.lines() {
            let line = line.split("//").next().unwrap_or_default();
            let mut rest = line;
            while let Some(at) = rest.find("crate::") {
                let before = rest[..at].chars().next_back();
                rest = &rest[at + "crate::".len()..];
                if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                    continue;
                }
                match rest.strip_prefix('{') {
                    Some(group) => {
                        let mut depth = 0;
                        let mut item_start = true;
                        for (i, c) in group.char_indices() {
                            match c {
                                '{' => depth += 1,
                                '}' if depth == 0 => break,
                                '}' => depth -= 1,
                                ',' if depth == 0 => item_start = true,
                                c if c.is_whitespace() => {}
                                _ if item_start => {
                                    found.insert(ident(&group[i..]));
                                    item_start = false;
                                }
                                _ => {}
                            }
                        }
                    }
                    None => {
                        found.insert(ident(rest));
                    }
                }
            }
        }
        found.remove("");
        found
    }

    fn graph(src: &Path) -> Graph {
        let mut files = vec![src.to_owned()];
        let mut graph = Graph::new();
        while let Some(path) = files.pop() {
            if path.is_dir() {
                for entry in std::fs::read_dir(&path).expect("src/ is readable") {
                    files.push(entry.expect("src/ is readable").path());
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src).expect("found under src/");
            let Some(module) = module_of(relative) else {
                continue;
            };
            let code = std::fs::read_to_string(&path).expect("source files are UTF-8");
            let uses = graph.entry(module.clone()).or_default();
            uses.extend(referenced(&code).into_iter().filter(|m| *m != module));
        }
        // Only edges between top-level modules (not `crate::SOME_CONST` in lib.rs and such).
        let modules: BTreeSet<String> = graph.keys().cloned().collect();
        for uses in graph.values_mut() {
            uses.retain(|m| modules.contains(m));
        }
        graph
    }

    /// A cycle, as the modules along it (the first repeated at the end), if there is one.
    fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
        fn visit(
            graph: &Graph,
            module: &str,
            path: &mut Vec<String>,
            done: &mut BTreeSet<String>,
        ) -> Option<Vec<String>> {
            if let Some(at) = path.iter().position(|m| m == module) {
                let mut cycle = path[at..].to_vec();
                cycle.push(module.to_owned());
                return Some(cycle);
            }
            if done.contains(module) {
                return None;
            }
            path.push(module.to_owned());
            for next in graph.get(module).into_iter().flatten() {
                if let Some(cycle) = visit(graph, next, path, done) {
                    return Some(cycle);
                }
            }
            path.pop();
            done.insert(module.to_owned());
            None
        }
        let mut done = BTreeSet::new();
        graph
            .keys()
            .find_map(|m| visit(graph, m, &mut Vec::new(), &mut done))
    }

    #[test]
    fn references_are_found() {
        let code = "use crate::a::B;\nuse crate::{b, c::{D, E}, d::f};\n\
                    let x = crate::e::g(); // crate::commented\n\
                    /// [`crate::doc`]\nmycrate::not_ours; $crate::h::i;";
        let want = ["a", "b", "c", "d", "e", "h"];
        assert_eq!(
            referenced(code),
            want.iter().map(|s| s.to_string()).collect()
        );
        let mut g = Graph::new();
        g.entry("a".into()).or_default().insert("b".into());
        g.entry("b".into()).or_default().insert("c".into());
        g.entry("c".into()).or_default();
        assert_eq!(find_cycle(&g), None);
        g.entry("c".into()).or_default().insert("a".into());
        assert_eq!(
            find_cycle(&g),
            Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
        );
    }

    #[test]
    fn top_level_modules_form_no_cycle() {
        let graph = graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
        assert!(
            graph.len() > 10 && graph["app"].contains("http"),
            "the scan found the modules: {graph:?}"
        );
        if let Some(cycle) = find_cycle(&graph) {
            panic!(
                "import cycle between top-level modules: {}\n(module → modules it uses: {graph:#?})",
                cycle.join(" → ")
            );
        }
    }
}
