//! Placeholder: replaced by the owner of `alignflow report`.

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct ReportArgs {
    /// The pipeline file whose last run to report on.
    pub file: std::path::PathBuf,
}

pub fn run(_a: ReportArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
