//! Placeholder: replaced by the owner of these commands.

use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum PipelineCommand {
    #[command(hide = true, name = "__placeholder_pipeline")]
    Placeholder,
}

pub fn run(_c: PipelineCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
