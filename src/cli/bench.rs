//! Placeholder: replaced by the owner of these commands.

use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum BenchCommand {
    #[command(hide = true, name = "__placeholder_bench")]
    Placeholder,
}

pub fn run(_c: BenchCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
