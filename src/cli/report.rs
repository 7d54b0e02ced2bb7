//! `alignflow report FILE [--json] [--out DIR] [--workspace DIR]`: a pipeline's last run (the
//! pipeline graph and what ran or was cached, the metrics per evaluated model, the RLHF stages'
//! reports, GAtt adherence by turn) as Markdown with PNG plots written into the workspace (or
//! `--out`), and with `--json` as one JSON object on stdout. The gathering
//! and rendering live in `stages::report`; this file parses arguments and prints.

use std::path::PathBuf;
use std::process::ExitCode;

/// Default workspace, as for `run` (relative to the current directory).
const DEFAULT_WORKSPACE: &str = ".alignflow";

#[derive(clap::Args)]
pub struct ReportArgs {
    /// The pipeline file whose last run to report on.
    pub file: PathBuf,
    /// Print one JSON object on stdout, the same as report.json (README, "Report", lists every
    /// key): {"pipeline", "model_order", "models": {STAGE: {helpfulness, violation_rate,
    /// false_refusal_rate, false_refusal_borderline, eos_rate, by_category, sampled: {...}}},
    /// "training", "graph": {"instances", "status_counts"}, "reward_models",
    /// "rejection_sampling", "ppo", "adherence": {"with_gatt", "without_gatt", ...} | null}.
    #[arg(long)]
    pub json: bool,
    /// Where to write report.md, report.json and the PNG plots (default WORKSPACE/report/NAME).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The workspace the pipeline ran in.
    #[arg(long, default_value = DEFAULT_WORKSPACE)]
    pub workspace: PathBuf,
}

pub fn run(a: ReportArgs) -> anyhow::Result<ExitCode> {
    let name = a.file.display().to_string();
    let text = match std::fs::read_to_string(&a.file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{name}:1:1: error: cannot read the pipeline file: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let pipeline = match graph::check(&text, &stages::registry()) {
        Ok(p) => p,
        Err(diags) => {
            for d in &diags {
                eprintln!("{}", d.render(&name));
            }
            return Ok(ExitCode::from(2));
        }
    };
    let order: Vec<String> = pipeline.stages.iter().map(|s| s.name.clone()).collect();
    let store = graph::Store::at(&a.workspace);
    let report = stages::report::gather(&store, &pipeline.name, &order)?;
    let out = a.out.clone().unwrap_or_else(|| a.workspace.join("report").join(&pipeline.name));
    let written = report.write(&out)?;
    if a.json {
        println!("{}", serde_json::to_string(&report.to_json())?);
    } else {
        print!("{}", std::fs::read_to_string(out.join("report.md"))?);
    }
    eprintln!("report: {} model(s), {} file(s) in {}", report.models.len(), written.len(), out.display());
    Ok(ExitCode::SUCCESS)
}
