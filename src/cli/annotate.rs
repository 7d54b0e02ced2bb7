//! `alignflow annotate --pairs ARTIFACT_OR_FILE [--answers FILE] [--port P] [--listen ADDR]
//! [--token T]`: serves the annotation page (the `annotate` crate) until interrupted. Prints the
//! URL to open (it carries the token) as the first line on stdout. docs/annotation.md.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;

const DEFAULT_WORKSPACE: &str = ".alignflow";

#[derive(clap::Args)]
pub struct AnnotateArgs {
    /// The pairs to annotate: a Parquet file (candidates written by `collect_preferences` with
    /// annotator = "human", or any preference-pairs table), or "stage.output" of the last run.
    #[arg(long)]
    pub pairs: String,
    /// The answers table (default: answers.parquet next to the pairs file; for "stage.output",
    /// answers.parquet in the current directory).
    #[arg(long)]
    pub answers: Option<PathBuf>,
    /// Port to listen on (0 = any free port; the URL printed says which).
    #[arg(long, default_value_t = 8765)]
    pub port: u16,
    /// Address to listen on. Loopback by default: anything else exposes the page (behind its
    /// token) to the network.
    #[arg(long, default_value = "127.0.0.1")]
    pub listen: String,
    /// The access token every request must carry (default: $ALIGNFLOW_ANNOTATE_TOKEN, else a
    /// fresh random one).
    #[arg(long)]
    pub token: Option<String>,
    /// Workspace that resolves "stage.output".
    #[arg(long, default_value = DEFAULT_WORKSPACE)]
    pub workspace: PathBuf,
    /// Which pipeline's last run resolves "stage.output" (default: the latest run).
    #[arg(long)]
    pub pipeline: Option<String>,
}

pub fn run(a: AnnotateArgs) -> anyhow::Result<ExitCode> {
    let given = Path::new(&a.pairs);
    let (pairs_file, default_answers) = if given.exists() {
        let file = if given.is_dir() { given.join("table.parquet") } else { given.to_path_buf() };
        let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        (file, dir.join("answers.parquet"))
    } else {
        let dir = super::pipeline::resolve(&a.pairs, &a.workspace, a.pipeline.as_deref())?;
        (dir.join("table.parquet"), PathBuf::from("answers.parquet"))
    };
    let answers = a.answers.unwrap_or(default_answers);
    let pairs = annotate::load_pairs(&pairs_file).with_context(|| format!("reading the pairs from {}", pairs_file.display()))?;
    let token = a.token.or_else(|| std::env::var("ALIGNFLOW_ANNOTATE_TOKEN").ok()).unwrap_or_else(annotate::random_token);
    let listen = if a.listen.contains(':') && !a.listen.starts_with('[') { format!("[{}]:{}", a.listen, a.port) } else { format!("{}:{}", a.listen, a.port) };
    let n = pairs.len();
    let server = annotate::start(annotate::Config { pairs, answers: answers.clone(), listen, token: token.clone() })?;
    // A closed stdout (the reader went away) must not stop the server: write errors are ignored.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "http://{}/?token={token}", server.addr);
    let _ = writeln!(out, "{n} pairs from {}; answers go to {}; stop with Ctrl-C (every answer is saved when it is sent)", pairs_file.display(), answers.display());
    let _ = out.flush();
    drop(out);
    server.wait()?;
    Ok(ExitCode::SUCCESS)
}
