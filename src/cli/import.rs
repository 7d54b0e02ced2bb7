//! Placeholder: replaced by the owner of these commands.

use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum ImportCommand {
    #[command(hide = true, name = "__placeholder_import")]
    Placeholder,
}

pub fn run(_c: ImportCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
