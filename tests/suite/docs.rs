//! The documentation stays true to the tree: every relative link in README.md, DEVELOPMENT.md,
//! CHANGELOG.md, ARCHITECTURE.md and docs/ resolves (the file, and the heading for a `#anchor`),
//! and every flag of `workspace-assist run --help` is documented in docs/.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Markdown files a reader can reach from the README.
fn documents() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = ["README.md", "DEVELOPMENT.md", "CHANGELOG.md", "ARCHITECTURE.md"]
        .iter()
        .map(|f| root().join(f))
        .collect();
    let mut dirs = vec![root().join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    files
}

/// The text outside fenced code blocks.
fn prose(markdown: &str) -> String {
    let mut fenced = false;
    let mut out = String::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The targets of inline links `[text](target)` in prose, without inline code spans.
fn link_targets(markdown: &str) -> Vec<String> {
    let text = prose(markdown);
    let mut targets = Vec::new();
    for line in text.lines() {
        let line: String = line.split('`').step_by(2).collect::<Vec<_>>().join("");
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            targets.push(after[..end].trim().to_string());
            rest = &after[end..];
        }
    }
    targets
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(markdown: &str) -> BTreeSet<String> {
    prose(markdown)
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| anchor(l.trim_start_matches('#').replace('`', "").as_str()))
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_relative_link_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for doc in documents() {
        let text = read(&doc);
        for target in link_targets(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (file, fragment) = target.split_once('#').unwrap_or((&target, ""));
            let linked = if file.is_empty() {
                doc.clone()
            } else {
                doc.parent().unwrap().join(file)
            };
            if !linked.exists() {
                broken.push(format!("{}: {target}: no such file", doc.display()));
            } else if !fragment.is_empty() && !anchors(&read(&linked)).contains(fragment) {
                broken.push(format!("{}: {target}: no such heading", doc.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(
        checked >= 20,
        "the documents link to each other ({checked} relative links found)"
    );
}

#[test]
fn the_link_checker_sees_a_broken_link_and_a_missing_heading() {
    let text = "See [a](a.md#b), `[not](code.md)`, [web](https://x.example/) and\n```\n[fenced](f.md)\n```\n";
    assert_eq!(link_targets(text), ["a.md#b", "https://x.example/"]);
    assert_eq!(
        anchor("When the finalizer comes off"),
        "when-the-finalizer-comes-off"
    );
    assert_eq!(
        anchor("Runbook: a RemoteAssistance stuck deleting"),
        "runbook-a-remoteassistance-stuck-deleting"
    );
    assert!(!anchors("# One\n## Two, three\n").contains("four"));
    assert!(anchors("# One\n## Two, three\n").contains("two-three"));
}

/// The long flags `run --help` lists.
fn run_flags() -> BTreeSet<String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_workspace-assist"))
        .args(["run", "--help"])
        .output()
        .expect("the operator's binary runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let help = String::from_utf8(out.stdout).unwrap();
    help.split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[' || c == '<')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.trim_end_matches(|c: char| !c.is_alphanumeric()).to_string())
        .filter(|w| w != "--help")
        .collect()
}

#[test]
fn every_flag_of_run_is_documented_in_docs() {
    let flags = run_flags();
    assert!(flags.len() >= 30, "run has its flags: {flags:?}");
    let docs: String = documents()
        .iter()
        .filter(|d| d.starts_with(root().join("docs")))
        .map(|d| read(d))
        .collect();
    let documented = |flag: &str| {
        docs.match_indices(flag).any(|(at, _)| {
            !docs[at + flag.len()..]
                .chars()
                .next()
                .is_some_and(|c| c.is_alphanumeric() || c == '-')
        })
    };
    let missing: Vec<&String> = flags.iter().filter(|f| !documented(f)).collect();
    assert!(
        missing.is_empty(),
        "flags of `run --help` not documented in docs/: {missing:?}"
    );
}
