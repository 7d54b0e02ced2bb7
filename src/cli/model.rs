//! Commands that use one model directly: `generate`, `chat` (an interactive REPL), `logprobs`
//! and `score`. Any Hugging Face layout directory works: one the pipeline wrote, one from
//! transformers, or one `alignflow import gguf` made. Prompts in chat form go through the
//! model's own chat template (tokenizer_config.json / chat_template.jinja), else the built-in
//! Llama 2 format. With `--json` each command prints one JSON object on stdout.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{ArgGroup, Args, Subcommand};
use kernels::chat::{ChatTemplate, Message};
use kernels::generate::{generate_with, DecodeWeights, SamplingParams, WeightPrecision};
use kernels::model::Llama;
use kernels::model_dir::ModelDir;
use kernels::tokenizer::Tokenizer;

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Continue a prompt (text, a one-turn chat, or token ids) and print the new tokens.
    Generate(GenerateArgs),
    /// Talk to a model: an interactive multi-turn REPL on stdin (`/reset` clears, `/exit` quits).
    Chat(ChatArgs),
    /// Per-token log-probabilities: logprobs[i] = log p(token i+1 | tokens <= i).
    Logprobs(LogprobsArgs),
    /// The scalar score of a reward-model checkpoint for a token sequence or a prompt/response.
    Score(ScoreArgs),
}

#[derive(Args)]
pub struct SamplingArgs {
    /// Always take the most likely token.
    #[arg(long, conflicts_with_all = ["temperature", "top_p"])]
    greedy: bool,
    /// Sampling temperature (the Llama 2 chat default is 0.6).
    #[arg(long, default_value_t = 0.6)]
    temperature: f32,
    /// Nucleus sampling mass (the Llama 2 chat default is 0.9).
    #[arg(long, default_value_t = 0.9)]
    top_p: f32,
    /// Seed of the sampler; the same seed gives the same output.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop after this many new tokens.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Decode with bf16 copies of the weight matrices (faster, slightly different numbers).
    #[arg(long)]
    bf16_weights: bool,
}

impl SamplingArgs {
    fn params(&self) -> anyhow::Result<SamplingParams> {
        if !self.greedy && !(self.temperature > 0.0 && self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("--temperature must be > 0 and --top-p in (0, 1] (or use --greedy)");
        }
        Ok(SamplingParams {
            max_new_tokens: self.max_new_tokens,
            temperature: if self.greedy { 0.0 } else { self.temperature },
            top_p: if self.greedy { 1.0 } else { self.top_p },
            seed: self.seed,
        })
    }
}

#[derive(Args)]
#[command(group(ArgGroup::new("input").required(true).args(["prompt", "chat", "token_ids"])))]
pub struct GenerateArgs {
    /// The model directory.
    #[arg(long)]
    model: PathBuf,
    /// Raw text to continue (no chat template).
    #[arg(long)]
    prompt: Option<String>,
    /// A user message, sent through the model's chat template.
    #[arg(long)]
    chat: Option<String>,
    /// A system message for --chat.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Comma-separated token ids to continue.
    #[arg(long, value_delimiter = ',')]
    token_ids: Option<Vec<u32>>,
    /// Put the BOS token before --prompt text.
    #[arg(long)]
    add_bos: bool,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Print one JSON object: {"token_ids": [...new tokens...], "text": "..."}.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ChatArgs {
    #[arg(long)]
    model: PathBuf,
    /// The system message of the conversation.
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
}

#[derive(Args)]
#[command(group(ArgGroup::new("input").required(true).args(["text", "token_ids"])))]
pub struct LogprobsArgs {
    #[arg(long)]
    model: PathBuf,
    /// Text to score token by token.
    #[arg(long)]
    text: Option<String>,
    /// Comma-separated token ids.
    #[arg(long, value_delimiter = ',')]
    token_ids: Option<Vec<u32>>,
    /// Put the BOS token before --text.
    #[arg(long)]
    add_bos: bool,
    /// Print {"token_ids": [...], "logprobs": [...]}.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
#[command(group(ArgGroup::new("input").required(true).args(["token_ids", "prompt"])))]
pub struct ScoreArgs {
    #[arg(long)]
    model: PathBuf,
    /// Comma-separated token ids.
    #[arg(long, value_delimiter = ',')]
    token_ids: Option<Vec<u32>>,
    /// The user prompt (with --response), sent through the chat template.
    #[arg(long, requires = "response")]
    prompt: Option<String>,
    #[arg(long, requires = "prompt")]
    response: Option<String>,
    /// Print {"score": x}.
    #[arg(long)]
    json: bool,
}

pub fn run(c: ModelCommand) -> anyhow::Result<ExitCode> {
    match c {
        ModelCommand::Generate(a) => generate_cmd(a),
        ModelCommand::Chat(a) => chat_cmd(a),
        ModelCommand::Logprobs(a) => logprobs_cmd(a),
        ModelCommand::Score(a) => score_cmd(a),
    }
}

/// A loaded model directory and the engine model built from it.
struct Loaded {
    dir: ModelDir,
    llama: Llama,
}

impl Loaded {
    fn open(path: &Path) -> anyhow::Result<Loaded> {
        let mut dir = ModelDir::load(path)?;
        let tensors = std::mem::take(&mut dir.tensors);
        let llama = Llama::from_tensors(dir.config.clone(), &tensors).with_context(|| format!("{}: weights do not fit config.json", path.display()))?;
        Ok(Loaded { dir, llama })
    }

    fn tokenizer(&self) -> anyhow::Result<&Tokenizer> {
        self.dir.tokenizer.as_ref().context("the model directory has no tokenizer.json; pass --token-ids")
    }

    /// The model's chat template, or the built-in Llama 2 format when it ships none.
    fn template(&self) -> ChatTemplate {
        self.dir.chat.clone().unwrap_or(ChatTemplate::Llama2)
    }

    fn bos(&self) -> anyhow::Result<u32> {
        self.dir.config.bos_token_id.context("config.json has no bos_token_id")
    }

    fn text_ids(&self, text: &str, add_bos: bool) -> anyhow::Result<Vec<u32>> {
        let mut ids = if add_bos { vec![self.bos()?] } else { vec![] };
        ids.extend(self.tokenizer()?.encode(text)?);
        Ok(ids)
    }

    fn chat_ids(&self, messages: &[Message], add_generation_prompt: bool) -> anyhow::Result<Vec<u32>> {
        let tok = self.tokenizer()?;
        let eos = self.dir.config.eos_token_ids.first().copied();
        let ct = self.template().encode(tok, messages, add_generation_prompt, self.dir.config.bos_token_id, eos)?;
        Ok(ct.ids)
    }

    fn generate(&self, prompt: Vec<u32>, s: &SamplingArgs) -> anyhow::Result<Vec<u32>> {
        let precision = if s.bf16_weights { WeightPrecision::Bf16 } else { WeightPrecision::F32 };
        let dw = DecodeWeights::new(&self.llama, precision);
        let mut out = generate_with(&dw, &[prompt], &[0], &s.params()?, &self.dir.stop_ids())?;
        Ok(out.pop().unwrap_or_default())
    }

    /// Text of generated ids, special tokens (the closing EOS) dropped; `None` without tokenizer.
    fn text(&self, ids: &[u32]) -> anyhow::Result<Option<String>> {
        match &self.dir.tokenizer {
            Some(t) => Ok(Some(t.decode(ids, true)?)),
            None => Ok(None),
        }
    }
}

fn generate_cmd(a: GenerateArgs) -> anyhow::Result<ExitCode> {
    let m = Loaded::open(&a.model)?;
    let prompt = if let Some(ids) = a.token_ids.clone() {
        ids
    } else if let Some(p) = &a.prompt {
        m.text_ids(p, a.add_bos)?
    } else {
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(Message::new("system", s));
        }
        msgs.push(Message::new("user", a.chat.as_deref().unwrap_or_default()));
        m.chat_ids(&msgs, true)?
    };
    let new = m.generate(prompt, &a.sampling)?;
    let text = m.text(&new)?;
    if a.json {
        println!("{}", serde_json::json!({ "token_ids": new, "text": text }));
    } else {
        match text {
            Some(t) => println!("{t}"),
            None => println!("{}", new.iter().map(u32::to_string).collect::<Vec<_>>().join(",")),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn chat_cmd(a: ChatArgs) -> anyhow::Result<ExitCode> {
    let m = Loaded::open(&a.model)?;
    m.tokenizer()?;
    let fresh = || a.system.iter().map(|s| Message::new("system", s)).collect::<Vec<_>>();
    let mut messages = fresh();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    eprintln!("chatting with {} (/reset clears the conversation, /exit or end of input quits)", a.model.display());
    loop {
        write!(out, "> ")?;
        out.flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                messages = fresh();
                continue;
            }
            _ => {}
        }
        messages.push(Message::new("user", line));
        let new = m.generate(m.chat_ids(&messages, true)?, &a.sampling)?;
        let reply = m.text(&new)?.unwrap_or_default().trim().to_string();
        writeln!(out, "{reply}")?;
        messages.push(Message::new("assistant", &reply));
    }
    Ok(ExitCode::SUCCESS)
}

fn logprobs_cmd(a: LogprobsArgs) -> anyhow::Result<ExitCode> {
    let m = Loaded::open(&a.model)?;
    let ids = match (&a.token_ids, &a.text) {
        (Some(ids), _) => ids.clone(),
        (None, Some(t)) => m.text_ids(t, a.add_bos)?,
        (None, None) => bail!("pass --text or --token-ids"),
    };
    if ids.len() < 2 {
        bail!("need at least 2 tokens to score, got {}", ids.len());
    }
    let lp = m.llama.token_logprobs(std::slice::from_ref(&ids))?.pop().unwrap_or_default();
    if a.json {
        println!("{}", serde_json::json!({ "token_ids": ids, "logprobs": lp }));
    } else {
        for (i, l) in lp.iter().enumerate() {
            println!("{}\t{l:.6}", ids[i + 1]);
        }
        println!("total\t{:.6}", lp.iter().map(|&x| x as f64).sum::<f64>());
    }
    Ok(ExitCode::SUCCESS)
}

fn score_cmd(a: ScoreArgs) -> anyhow::Result<ExitCode> {
    let m = Loaded::open(&a.model)?;
    let ids = match (&a.token_ids, &a.prompt, &a.response) {
        (Some(ids), _, _) => ids.clone(),
        (None, Some(p), Some(r)) => m.chat_ids(&[Message::new("user", p), Message::new("assistant", r)], false)?,
        _ => bail!("pass --token-ids, or --prompt with --response"),
    };
    let score = m.llama.scores(&[ids])?.pop().context("no score returned")?;
    if a.json {
        println!("{}", serde_json::json!({ "score": score }));
    } else {
        println!("{score}");
    }
    Ok(ExitCode::SUCCESS)
}
