//! Placeholder: replaced by the owner of these commands.

use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum ModelCommand {
    #[command(hide = true, name = "__placeholder_model")]
    Placeholder,
}

pub fn run(_c: ModelCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
