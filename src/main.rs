//! The `alignflow` command line. Only argument parsing and printing live here; every command
//! calls into the library crates (`graph`, `stages`, `kernels`, `datasets`).
//!
//! Exit status: 0 on success, 2 for a bad pipeline file or bad arguments, 1 for any other error.

mod cli;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "alignflow", version, about = "The Llama 2 alignment recipe as an incremental dataflow pipeline")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Pipeline(cli::pipeline::PipelineCommand),
    #[command(flatten)]
    Model(cli::model::ModelCommand),
    /// Write the metrics report of a pipeline's last run (Markdown + PNG plots, or JSON).
    Report(cli::report::ReportArgs),
    /// Measure training and decoding speed of the engine.
    Bench {
        #[command(subcommand)]
        what: cli::bench::BenchCommand,
    },
    /// Serve the annotation page: people choose between two responses, rate and label them; the
    /// answers go to a Parquet table `collect_preferences` reads (docs/annotation.md).
    Annotate(cli::annotate::AnnotateArgs),
    /// Import a model from another format into a Hugging Face layout directory.
    Import {
        #[command(subcommand)]
        what: cli::import::ImportCommand,
    },
}

/// Keeps freed memory in the process instead of handing it back to the kernel: training steps
/// allocate and free the same large activation buffers every step, and with glibc's defaults
/// each of them came back as fresh pages (page faults and zeroing were ~8% of a step).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Pipeline(c) => cli::pipeline::run(c),
        Command::Model(c) => cli::model::run(c),
        Command::Import { what } => cli::import::run(what),
        Command::Bench { what } => cli::bench::run(what),
        Command::Report(args) => cli::report::run(args),
        Command::Annotate(args) => cli::annotate::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
