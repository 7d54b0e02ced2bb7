//! The runtime end to end with small stand-in stage kinds (text files instead of Parquet): a
//! source, a row-wise stage, and a loop body with a carried artifact. Checks ordering, loop
//! unrolling and carries, caching, memoised rows, failure propagation and the plan's reasons.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use graph::{ArtifactType, ParamSpec, Port, Registry, RowFn, RowId, RowTask, RunCtx, RunOptions, Silent, Stage, StageError, Status, Store};

fn table(dir: &Path) -> std::path::PathBuf {
    dir.join("table.parquet")
}

/// Writes lines "row-0" … "row-(n-1)".
struct Lines;
impl Stage for Lines {
    fn kind(&self) -> &'static str {
        "lines"
    }
    fn version(&self) -> u32 {
        1
    }
    fn doc(&self) -> &'static str {
        "n lines"
    }
    fn inputs(&self) -> Vec<Port> {
        vec![]
    }
    fn outputs(&self) -> Vec<Port> {
        vec![Port::new("out", ArtifactType::Table, "")]
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![ParamSpec::int("n", 0, 1000, Some(3), "rows"), ParamSpec::bool("fail", Some(false), "fail on purpose")]
    }
    fn run(&self, ctx: &mut RunCtx<'_>) -> Result<(), StageError> {
        if ctx.params.bool("fail")? {
            return Err(StageError::Message("asked to fail".into()));
        }
        let n = ctx.params.int("n")?;
        let text: String = (0..n).map(|i| format!("row-{i}\n")).collect();
        std::fs::write(table(ctx.output("out")?), text).map_err(|source| StageError::Io { path: "out".into(), source })
    }
}

/// Row-wise: upper-cases every line, through the memo.
struct Upper;
struct UpperFn(Vec<String>);
impl RowFn for UpperFn {
    fn compute(&self, tasks: &[RowTask]) -> Result<Vec<Vec<u8>>, StageError> {
        Ok(tasks.iter().map(|t| self.0[t.index].to_uppercase().into_bytes()).collect())
    }
}
impl Stage for Upper {
    fn kind(&self) -> &'static str {
        "upper"
    }
    fn version(&self) -> u32 {
        1
    }
    fn doc(&self) -> &'static str {
        "upper-case rows"
    }
    fn inputs(&self) -> Vec<Port> {
        vec![Port::new("rows", ArtifactType::Table, "")]
    }
    fn outputs(&self) -> Vec<Port> {
        vec![Port::new("out", ArtifactType::Table, "")]
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![]
    }
    fn row_port(&self) -> Option<&'static str> {
        Some("rows")
    }
    fn run(&self, ctx: &mut RunCtx<'_>) -> Result<(), StageError> {
        let text = std::fs::read_to_string(table(ctx.input("rows")?)).map_err(|source| StageError::Io { path: "rows".into(), source })?;
        let lines: Vec<String> = text.lines().map(String::from).collect();
        let ids: Vec<RowId> = lines.iter().map(|l| RowId { key: l.clone(), hash: *blake3::hash(l.as_bytes()).as_bytes() }).collect();
        let out = ctx.map_rows(&ids, Arc::new(UpperFn(lines)))?;
        let text: String = out.iter().map(|b| format!("{}\n", String::from_utf8_lossy(b))).collect();
        std::fs::write(table(ctx.output("out")?), text).map_err(|source| StageError::Io { path: "out".into(), source })
    }
}

/// Loop body: appends "round r" to the carried text (absent in round 1).
struct Append;
impl Stage for Append {
    fn kind(&self) -> &'static str {
        "append"
    }
    fn version(&self) -> u32 {
        1
    }
    fn doc(&self) -> &'static str {
        "append the round"
    }
    fn inputs(&self) -> Vec<Port> {
        vec![Port::new("base", ArtifactType::Table, ""), Port::optional("acc", ArtifactType::Table, "")]
    }
    fn outputs(&self) -> Vec<Port> {
        vec![Port::new("out", ArtifactType::Table, "")]
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![]
    }
    fn run(&self, ctx: &mut RunCtx<'_>) -> Result<(), StageError> {
        let read = |p: &Path| std::fs::read_to_string(table(p)).map_err(|source| StageError::Io { path: p.into(), source });
        let mut text = match ctx.input_opt("acc") {
            Some(p) => read(p)?,
            None => read(ctx.input("base")?)?,
        };
        text.push_str(&format!("round {}\n", ctx.round));
        std::fs::write(table(ctx.output("out")?), text).map_err(|source| StageError::Io { path: "out".into(), source })
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(Arc::new(Lines));
    r.register(Arc::new(Upper));
    r.register(Arc::new(Append));
    r
}

const PIPELINE: &str = r#"
[pipeline]
name = "t"
seed = 3

[stages.src]
kind = "lines"
params = { n = 4 }

[stages.up]
kind = "upper"
inputs = { rows = "src.out" }

[stages.acc]
kind = "append"
inputs = { base = "up.out", acc = "rl.text" }

[stages.after]
kind = "upper"
inputs = { rows = "acc.out" }

[loop.rl]
rounds = 3
stages = ["acc"]
[loop.rl.carry.text]
next = "acc.out"
"#;

fn opts() -> RunOptions {
    RunOptions { workers: 2, cpus: 2, gpus: 0, cluster: None }
}

fn run(text: &str, ws: &Path) -> graph::RunReport {
    let reg = registry();
    let p = graph::check(text, &reg).unwrap_or_else(|d| panic!("{d:?}"));
    let plan = graph::plan(p, &reg, ws).unwrap();
    graph::run(&plan, &reg, &Store::at(ws.join("ws")), &opts(), Arc::new(Silent)).unwrap()
}

fn statuses(r: &graph::RunReport) -> BTreeMap<String, Status> {
    r.stages.iter().map(|s| (s.name.clone(), s.status)).collect()
}

#[test]
fn loops_unroll_carry_and_cache() {
    let d = tempfile::tempdir().unwrap();
    let r = run(PIPELINE, d.path());
    let names: Vec<&str> = r.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["src", "up", "acc@1", "acc@2", "acc@3", "after"]);
    assert!(r.stages.iter().all(|s| s.status == Status::Ran), "{r:?}");
    let up = &r.stages[1];
    assert_eq!(up.rows.unwrap().total, 4);

    // `after` reads the last round of `acc`, whose text carried through all three rounds.
    let after = r.stages.last().unwrap();
    let out = std::fs::read_to_string(d.path().join("ws/artifacts").join(&after.fingerprint).join("out/table.parquet")).unwrap();
    assert_eq!(out, "ROW-0\nROW-1\nROW-2\nROW-3\nROUND 1\nROUND 2\nROUND 3\n");

    let again = run(PIPELINE, d.path());
    assert!(again.stages.iter().all(|s| s.status == Status::Cached), "{again:?}");
}

#[test]
fn more_rows_compute_only_the_new_ones() {
    let d = tempfile::tempdir().unwrap();
    run(PIPELINE, d.path());
    let r = run(&PIPELINE.replace("n = 4", "n = 6"), d.path());
    let up = r.stages.iter().find(|s| s.name == "up").unwrap();
    assert_eq!(up.status, Status::Partial);
    let rows = up.rows.unwrap();
    assert_eq!((rows.total, rows.computed, rows.reused), (6, 2, 4));
}

#[test]
fn a_failure_skips_downstream_only() {
    let d = tempfile::tempdir().unwrap();
    let text = PIPELINE.replace("params = { n = 4 }", "params = { n = 4, fail = true }")
        + "\n[stages.other]\nkind = \"lines\"\n";
    let r = run(&text, d.path());
    let s = statuses(&r);
    assert_eq!(s["src"], Status::Failed);
    assert_eq!(s["up"], Status::Skipped);
    assert_eq!(s["after"], Status::Skipped);
    assert_eq!(s["other"], Status::Ran);
    assert!(r.failed());
    assert!(r.stages[0].error.as_ref().unwrap().contains("asked to fail"));
}

#[test]
fn plan_explains_a_parameter_change() {
    let d = tempfile::tempdir().unwrap();
    run(PIPELINE, d.path());
    let reg = registry();
    let p = graph::check(&PIPELINE.replace("n = 4", "n = 5"), &reg).unwrap();
    let plan = graph::plan(p, &reg, d.path()).unwrap();
    let e = graph::explain(&plan, &Store::at(d.path().join("ws")));
    assert!(!e[0].cached);
    assert_eq!(e[0].reasons, ["parameter `n` changed (4 -> 5)"]);
    assert_eq!(e[1].reasons, ["input `rows` changed (upstream `src` will run)", graph::explain::CUTOFF_REASON]);
    // Early cut-off can spare `up` (only its upstream changes), never `src` (a parameter).
    assert!(e[1].cutoff_possible && !e[0].cutoff_possible);
    assert_eq!(e[1].to_json()["cutoff_possible"], true);
}

#[test]
fn checker_reports_loop_and_reference_problems_together() {
    let text = PIPELINE.replace("next = \"acc.out\"", "next = \"src.out\"").replace("rows = \"acc.out\"", "rows = \"acc.nope\"");
    let d = graph::check(&text, &registry()).unwrap_err();
    let msgs: Vec<String> = d.iter().map(|x| x.to_string()).collect();
    assert!(msgs.iter().any(|m| m.contains("not a stage of loop `rl`")), "{msgs:?}");
    assert!(msgs.iter().any(|m| m.contains("has no output `nope`")), "{msgs:?}");
}

/// Records the GPUs it was granted; asserts no other running instance holds the same one.
struct GpuProbe;
static GPUS_IN_USE: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());
impl Stage for GpuProbe {
    fn kind(&self) -> &'static str {
        "gpu_probe"
    }
    fn version(&self) -> u32 {
        1
    }
    fn doc(&self) -> &'static str {
        "writes the GPUs it was granted"
    }
    fn inputs(&self) -> Vec<Port> {
        vec![]
    }
    fn outputs(&self) -> Vec<Port> {
        vec![Port::new("out", ArtifactType::Table, "")]
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![ParamSpec::int("n", 0, 1000, Some(0), "distinguishes instances")]
    }
    fn resources(&self) -> graph::Resources {
        graph::Resources { cpus: 1, gpus: 1 }
    }
    fn run(&self, ctx: &mut RunCtx<'_>) -> Result<(), StageError> {
        let mine = ctx.gpus().to_vec();
        {
            let mut used = GPUS_IN_USE.lock().unwrap();
            assert!(mine.iter().all(|g| !used.contains(g)), "GPU {mine:?} granted twice at once (in use: {used:?})");
            used.extend(&mine);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        GPUS_IN_USE.lock().unwrap().retain(|g| !mine.contains(g));
        let text: String = mine.iter().map(|g| format!("{g}\n")).collect();
        std::fs::write(table(ctx.output("out")?), text).map_err(|source| StageError::Io { path: "out".into(), source })
    }
}

#[test]
fn gpus_are_granted_by_ordinal_and_never_shared() {
    let mut reg = registry();
    reg.register(Arc::new(GpuProbe));
    let text = "[pipeline]\nname = \"g\"\nseed = 1\n".to_string()
        + &(0..5).map(|i| format!("[stages.p{i}]\nkind = \"gpu_probe\"\nparams = {{ n = {i} }}\n")).collect::<String>();
    for gpus in [0u32, 2] {
        let d = tempfile::tempdir().unwrap();
        let p = graph::check(&text, &reg).unwrap_or_else(|d| panic!("{d:?}"));
        let plan = graph::plan(p, &reg, d.path()).unwrap();
        let opts = RunOptions { workers: 2, cpus: 4, gpus, cluster: None };
        let r = graph::run(&plan, &reg, &Store::at(d.path().join("ws")), &opts, Arc::new(Silent)).unwrap();
        assert!(r.stages.iter().all(|s| s.status == Status::Ran), "{r:?}");
        for s in &r.stages {
            let out = std::fs::read_to_string(d.path().join("ws/artifacts").join(&s.fingerprint).join("out/table.parquet")).unwrap();
            let got: Vec<u32> = out.lines().map(|l| l.parse().unwrap()).collect();
            if gpus == 0 {
                assert!(got.is_empty(), "{}: granted {got:?} with --gpus 0", s.name);
            } else {
                assert!(got.len() == 1 && got[0] < gpus, "{}: granted {got:?} with --gpus {gpus}", s.name);
            }
        }
    }
}
