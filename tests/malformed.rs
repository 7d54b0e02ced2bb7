//! The malformed-pipeline corpus (tests/pipelines/bad/): every file must make `alignflow check`
//! and `alignflow plan` exit with status 2 and name every expected problem as
//! `FILE:LINE:COL: error: ...`, and nothing may ever panic.
//!
//! Each corpus file states what it expects in leading comments:
//! `# expect: LINE:COL substring`, where LINE or COL may be `*` (any) and several positions may be
//! given as alternatives with `|`. The substring must appear (case-insensitively) in the message
//! at that position.

use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_alignflow")
}

struct Expect {
    positions: Vec<(Option<usize>, Option<usize>)>,
    substring: String,
}

fn parse_expects(text: &str) -> Vec<Expect> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# expect:"))
        .map(|rest| {
            let rest = rest.trim_start();
            let (pos, sub) = rest.split_once(' ').unwrap_or((rest, ""));
            let positions = pos
                .split('|')
                .map(|p| {
                    let (l, c) = p.split_once(':').expect("expect position is LINE:COL");
                    let num = |s: &str| if s == "*" { None } else { Some(s.parse::<usize>().expect("a number or *")) };
                    (num(l), num(c))
                })
                .collect();
            Expect { positions, substring: sub.trim().to_lowercase() }
        })
        .collect()
}

/// Parses `FILE:LINE:COL: error: MESSAGE` lines for the given file out of stderr.
fn diagnostics(stderr: &str, file: &Path) -> Vec<(usize, usize, String)> {
    let name = file.display().to_string();
    stderr
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&name)?.strip_prefix(':')?;
            let mut it = rest.splitn(3, ':');
            let line = it.next()?.trim().parse().ok()?;
            let col = it.next()?.trim().parse().ok()?;
            Some((line, col, it.next()?.to_lowercase()))
        })
        .collect()
}

fn check_file(path: &Path, subcommand: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(path).unwrap();
    let expects = parse_expects(&text);
    assert!(!expects.is_empty(), "{}: corpus file without `# expect:` lines", path.display());
    let ws = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin());
    cmd.arg(subcommand).arg(path);
    if subcommand == "run" {
        cmd.arg("--workspace").arg(ws.path());
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code();
    if stderr.contains("panicked") || code == Some(101) {
        return Err(format!("{} `{subcommand}` panicked:\n{stderr}", path.display()));
    }
    if code != Some(2) {
        return Err(format!("{} `{subcommand}`: exit status {code:?}, expected 2; stderr:\n{stderr}", path.display()));
    }
    let diags = diagnostics(&stderr, path);
    for e in &expects {
        let found = diags.iter().any(|(l, c, msg)| {
            e.positions.iter().any(|(el, ec)| el.is_none_or(|x| x == *l) && ec.is_none_or(|x| x == *c))
                && msg.contains(&e.substring)
        });
        if !found {
            let want: Vec<String> = e
                .positions
                .iter()
                .map(|(l, c)| format!("{}:{}", l.map_or("*".into(), |x| x.to_string()), c.map_or("*".into(), |x| x.to_string())))
                .collect();
            return Err(format!(
                "{} `{subcommand}`: no diagnostic at {} mentioning {:?}; stderr was:\n{stderr}",
                path.display(),
                want.join(" or "),
                e.substring
            ));
        }
    }
    Ok(())
}

fn corpus() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pipelines/bad");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn corpus_is_large_enough() {
    assert!(corpus().len() >= 20, "the issue asks for at least 20 malformed files");
}

#[test]
fn every_malformed_file_is_rejected_by_check_with_every_position() {
    let failures: Vec<String> = corpus().iter().filter_map(|p| check_file(p, "check").err()).collect();
    assert!(failures.is_empty(), "{} of {} files failed:\n\n{}", failures.len(), corpus().len(), failures.join("\n\n"));
}

#[test]
fn every_malformed_file_is_rejected_by_plan_and_run() {
    for sub in ["plan", "run"] {
        let failures: Vec<String> = corpus().iter().filter_map(|p| check_file(p, sub).err()).collect();
        assert!(failures.is_empty(), "{} files failed under `{sub}`:\n\n{}", failures.len(), failures.join("\n\n"));
    }
}

/// A tiny deterministic generator (xorshift) so the mutations are the same on every run.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Random damage to the default pipeline: deleting, duplicating or swapping bytes and lines.
/// Whatever comes out, `check` must answer 0 or 2 and never panic.
#[test]
fn mutated_default_pipeline_never_panics() {
    let original = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/llama2_chat.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let pieces = ["=", "\"", "[", "]", "{", "}", ".", ",", "-1", "1e999", "\u{fffd}", "\n", "kind", "[loop.x]\n"];
    for i in 0..120 {
        let mut text: Vec<u8> = original.clone().into_bytes();
        for _ in 0..1 + rng.below(3) {
            if text.is_empty() {
                break;
            }
            let at = rng.below(text.len());
            match rng.below(4) {
                0 => {
                    let end = (at + 1 + rng.below(8)).min(text.len());
                    text.drain(at..end);
                }
                1 => {
                    let p = pieces[rng.below(pieces.len())].as_bytes();
                    text.splice(at..at, p.iter().copied());
                }
                2 => {
                    let b = rng.below(text.len());
                    text.swap(at, b);
                }
                _ => {
                    let end = (at + rng.below(40)).min(text.len());
                    let copy = text[at..end].to_vec();
                    text.splice(at..at, copy);
                }
            }
        }
        let path = dir.path().join(format!("mutant_{i:03}.toml"));
        std::fs::write(&path, &text).unwrap();
        let out = Command::new(bin()).arg("check").arg(&path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "mutant {i} panicked:\n{}\n---\n{stderr}", String::from_utf8_lossy(&text));
        assert!(matches!(out.status.code(), Some(0) | Some(2)), "mutant {i}: exit {:?}\n{stderr}", out.status.code());
        if out.status.code() == Some(2) {
            assert!(
                !diagnostics(&stderr, &path).is_empty(),
                "mutant {i}: exit 2 without a FILE:LINE:COL diagnostic:\n{stderr}"
            );
        }
    }
}
