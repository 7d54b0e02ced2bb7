//! Chat formats: turning a list of messages into token ids plus an assistant mask, the mask SFT
//! uses to put loss only on what the assistant says.
//!
//! Two kinds of template. `Llama2` is Meta's format from the paper's `generation.py`, built in
//! and exact: each completed (user, assistant) pair is its own `BOS [INST] u [/INST] a EOS`
//! segment with BOS/EOS as ids (never text), the system text merged into the first user turn
//! inside `<<SYS>>` markers, contents stripped. `Jinja` runs a Hugging Face `chat_template`
//! (from tokenizer_config.json or chat_template.jinja) through minijinja with HF's conventions:
//! `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, `raise_exception`, plus the
//! common Python string methods (`.strip()`, `.startswith()`, ...) that templates call.
//!
//! For Jinja templates the mask is found from the rendered text: each assistant content is
//! located in order, its span runs through the end marker (the EOS text) that closes the turn
//! when one follows, and a token is masked when its byte span overlaps an assistant span.

use std::ops::Range;
use std::path::Path;

use minijinja::value::Value;
use minijinja::{Environment, ErrorKind, State};

use crate::tokenizer::Tokenizer;

/// One chat message. Roles: `system`, `user`, `assistant`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message { role: role.to_string(), content: content.to_string() }
    }
}

/// How messages become text and ids.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatTemplate {
    /// Meta's Llama 2 chat format (see the module doc).
    Llama2,
    /// A Hugging Face Jinja chat template and the BOS/EOS strings it is rendered with.
    Jinja { source: String, bos_token: String, eos_token: String },
}

/// Ids of a chat and, per id, whether it is assistant content (or the EOS closing it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTokens {
    pub ids: Vec<u32>,
    pub assistant_mask: Vec<bool>,
}

/// Errors from reading, rendering or encoding chats.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("chat template: {0}")]
    Template(String),
    #[error("bad conversation: {0}")]
    Conversation(String),
    #[error("chat encoding: {0}")]
    Encode(String),
}

/// The Llama 2 format as a Hugging Face Jinja template (as Meta's HF repos ship it, with the
/// user part of the first turn stripped too), written next to the built-in marker so that
/// transformers renders the same text.
pub const LLAMA2_JINJA: &str = "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'].strip() %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

const B_INST: &str = "[INST]";
const E_INST: &str = "[/INST]";
const B_SYS: &str = "<<SYS>>\n";
const E_SYS: &str = "\n<</SYS>>\n\n";

impl ChatTemplate {
    /// The template a model directory ships: `chat_template.jinja`, else the `chat_template`
    /// of `tokenizer_config.json` (a string, or HF's list of named templates: `default` wins),
    /// else the `alignflow_chat_format: "llama2"` marker alignflow writes; `None` when absent.
    pub fn from_model_dir(dir: &Path) -> Result<Option<ChatTemplate>, ChatError> {
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg = match std::fs::read_to_string(&cfg_path) {
            Ok(text) => Some(serde_json::from_str::<serde_json::Value>(&text).map_err(|e| ChatError::File {
                path: cfg_path.display().to_string(),
                message: format!("invalid JSON: {e}"),
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(ChatError::File { path: cfg_path.display().to_string(), message: e.to_string() }),
        };
        let cfg = cfg.unwrap_or(serde_json::Value::Null);
        let (bos_token, eos_token) = (token_string(&cfg, "bos_token"), token_string(&cfg, "eos_token"));
        let jinja_path = dir.join("chat_template.jinja");
        if jinja_path.is_file() {
            let source = std::fs::read_to_string(&jinja_path)
                .map_err(|e| ChatError::File { path: jinja_path.display().to_string(), message: e.to_string() })?;
            return Ok(Some(ChatTemplate::Jinja { source, bos_token, eos_token }));
        }
        if cfg.get("alignflow_chat_format").and_then(|v| v.as_str()) == Some("llama2") {
            return Ok(Some(ChatTemplate::Llama2));
        }
        let source = match cfg.get("chat_template") {
            None | Some(serde_json::Value::Null) => return Ok(None),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Array(list)) => {
                let named = |n: &str| list.iter().find(|t| t.get("name").and_then(|x| x.as_str()) == Some(n));
                let t = named("default").or_else(|| list.first()).and_then(|t| t.get("template")).and_then(|t| t.as_str());
                t.map(str::to_string).ok_or_else(|| ChatError::File {
                    path: cfg_path.display().to_string(),
                    message: "`chat_template` list has no usable `template`".into(),
                })?
            }
            Some(_) => {
                return Err(ChatError::File { path: cfg_path.display().to_string(), message: "`chat_template` is neither a string nor a list".into() });
            }
        };
        Ok(Some(ChatTemplate::Jinja { source, bos_token, eos_token }))
    }

    /// The chat as text. For `Llama2`, BOS/EOS appear as `<s>`/`</s>` (for display only:
    /// `encode` never tokenizes them as text).
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, ChatError> {
        match self {
            ChatTemplate::Llama2 => {
                let segs = llama2_segments(messages)?;
                Ok(segs.iter().map(|s| format!("<s>{}{}", s.prompt, s.answer.as_ref().map(|a| format!("{a}</s>")).unwrap_or_default())).collect())
            }
            ChatTemplate::Jinja { source, bos_token, eos_token } => render_jinja(source, messages, add_generation_prompt, bos_token, eos_token),
        }
    }

    /// Token ids and assistant mask. `bos`/`eos` are the ids `Llama2` places around each
    /// segment (looked up as `<s>`/`</s>` when `None`); Jinja templates write BOS/EOS as text.
    pub fn encode(&self, tok: &Tokenizer, messages: &[Message], add_generation_prompt: bool, bos: Option<u32>, eos: Option<u32>) -> Result<ChatTokens, ChatError> {
        match self {
            ChatTemplate::Llama2 => {
                let find = |given: Option<u32>, name: &str| {
                    given.or_else(|| tok.token_to_id(name)).ok_or_else(|| ChatError::Encode(format!("the Llama 2 format needs a {name} id and the tokenizer has none")))
                };
                encode_llama2(tok, messages, find(bos, "<s>")?, find(eos, "</s>")?)
            }
            ChatTemplate::Jinja { source, bos_token, eos_token } => {
                let text = render_jinja(source, messages, add_generation_prompt, bos_token, eos_token)?;
                let spans = assistant_spans(&text, messages, eos_token)?;
                let enc = tok.inner().encode(text.as_str(), false).map_err(|e| ChatError::Encode(e.to_string()))?;
                let assistant_mask = enc.get_offsets().iter().map(|&(s, e)| spans.iter().any(|r| s < r.end && e > r.start)).collect();
                Ok(ChatTokens { ids: enc.get_ids().to_vec(), assistant_mask })
            }
        }
    }

    /// The text that ends an assistant turn, when the template has one (used as a stop string).
    pub fn end_of_turn(&self) -> Option<&str> {
        match self {
            ChatTemplate::Llama2 => None,
            ChatTemplate::Jinja { eos_token, .. } => (!eos_token.is_empty()).then_some(eos_token.as_str()),
        }
    }
}

/// `bos_token`/`eos_token` of a tokenizer_config.json: a string or HF's `{content: ...}` object.
fn token_string(cfg: &serde_json::Value, key: &str) -> String {
    match cfg.get(key) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(obj) => obj.get("content").and_then(|c| c.as_str()).unwrap_or_default().to_string(),
        None => String::new(),
    }
}

/// One `[INST] ... [/INST]` segment of the Llama 2 format; `answer` is `None` for the last,
/// open user turn (the generation prompt).
struct Llama2Segment {
    prompt: String,
    answer: Option<String>,
}

/// Splits messages into Llama 2 segments, checking the role order Meta's code asserts:
/// an optional system message, then user/assistant alternating, starting with user.
fn llama2_segments(messages: &[Message]) -> Result<Vec<Llama2Segment>, ChatError> {
    let (system, rest) = match messages.first() {
        Some(m) if m.role == "system" => (Some(m.content.as_str()), &messages[1..]),
        _ => (None, messages),
    };
    if rest.is_empty() {
        return Err(ChatError::Conversation("no user message".into()));
    }
    let mut segs = Vec::new();
    for (i, pair) in rest.chunks(2).enumerate() {
        let user = &pair[0];
        if user.role != "user" {
            return Err(ChatError::Conversation(format!("message {} has role `{}`, expected `user`", i * 2 + usize::from(system.is_some()), user.role)));
        }
        if let Some(a) = pair.get(1).filter(|a| a.role != "assistant") {
            return Err(ChatError::Conversation(format!("message {} has role `{}`, expected `assistant`", i * 2 + 1 + usize::from(system.is_some()), a.role)));
        }
        let content = match (i, system) {
            // Meta strips the merged text; stripping the user part too keeps the recipe's
            // "user content is stripped" true after the system block as well.
            (0, Some(sys)) => format!("{B_SYS}{sys}{E_SYS}{}", user.content.trim()),
            _ => user.content.clone(),
        };
        segs.push(Llama2Segment {
            prompt: format!("{B_INST} {} {E_INST}", content.trim()),
            answer: pair.get(1).map(|a| format!(" {} ", a.content.trim())),
        });
    }
    Ok(segs)
}

/// Llama 2 ids: per segment BOS, prompt ids, then answer ids and EOS (masked) if answered.
fn encode_llama2(tok: &Tokenizer, messages: &[Message], bos: u32, eos: u32) -> Result<ChatTokens, ChatError> {
    let enc = |s: &str| tok.encode(s).map_err(|e| ChatError::Encode(e.to_string()));
    let mut out = ChatTokens { ids: Vec::new(), assistant_mask: Vec::new() };
    for seg in llama2_segments(messages)? {
        let prompt = enc(&seg.prompt)?;
        out.ids.push(bos);
        out.ids.extend(&prompt);
        out.assistant_mask.extend(std::iter::repeat_n(false, 1 + prompt.len()));
        if let Some(answer) = &seg.answer {
            let a = enc(answer)?;
            out.ids.extend(&a);
            out.ids.push(eos);
            out.assistant_mask.extend(std::iter::repeat_n(true, a.len() + 1));
        }
    }
    Ok(out)
}

/// Byte spans of assistant contents in `text`, each extended through the `eos` text that
/// closes it when only whitespace separates them. Messages are located in order, so an
/// assistant reply that repeats words of an earlier user turn is still found in its own turn.
fn assistant_spans(text: &str, messages: &[Message], eos: &str) -> Result<Vec<Range<usize>>, ChatError> {
    let mut spans = Vec::new();
    let mut from = 0;
    for m in messages {
        let content = m.content.trim();
        if content.is_empty() {
            continue;
        }
        let found = text[from..].find(content).map(|i| i + from);
        if m.role != "assistant" {
            // Templates may rewrite system or user text (or drop it); skip what is not there.
            if let Some(start) = found {
                from = start + content.len();
            }
            continue;
        }
        let start = found.ok_or_else(|| {
            ChatError::Encode(format!("the rendered chat does not contain the assistant message {:?} verbatim, so it cannot be masked", clip(content)))
        })?;
        let mut end = start + content.len();
        let after = &text[end..];
        let gap = after.len() - after.trim_start().len();
        if !eos.is_empty() && after[gap..].starts_with(eos) {
            end += gap + eos.len();
        }
        spans.push(start..end);
        from = end;
    }
    Ok(spans)
}

fn clip(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Renders a Hugging Face chat template with the variables transformers passes.
fn render_jinja(source: &str, messages: &[Message], add_generation_prompt: bool, bos: &str, eos: &str) -> Result<String, ChatError> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.add_function("raise_exception", |msg: String| -> Result<Value, minijinja::Error> {
        Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
    });
    env.add_function("strftime_now", |_fmt: String| -> String {
        // Deterministic on purpose: a date in a prompt would change every run's fingerprint.
        "01 Jan 2026".to_string()
    });
    env.set_unknown_method_callback(python_methods);
    env.add_template("chat", source).map_err(|e| ChatError::Template(format!("{e:#}")))?;
    let tmpl = env.get_template("chat").map_err(|e| ChatError::Template(e.to_string()))?;
    let ctx = minijinja::context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos,
        eos_token => eos,
    };
    tmpl.render(ctx).map_err(|e| ChatError::Template(format!("{e:#}")))
}

/// The Python string and dict methods chat templates use (`content.strip()`, `d.items()`).
fn python_methods(_state: &State, value: &Value, method: &str, args: &[Value]) -> Result<Value, minijinja::Error> {
    let unknown = || minijinja::Error::new(ErrorKind::UnknownMethod, format!("no method `{method}` on {}", value.kind()));
    let arg_str = |i: usize| args.get(i).and_then(|a| a.as_str()).map(str::to_string);
    if let Some(s) = value.as_str() {
        let chars = arg_str(0);
        let strip_set = |c: char| chars.as_deref().map_or(c.is_whitespace(), |set| set.contains(c));
        return Ok(match method {
            "strip" => Value::from(s.trim_matches(strip_set)),
            "lstrip" => Value::from(s.trim_start_matches(strip_set)),
            "rstrip" => Value::from(s.trim_end_matches(strip_set)),
            "upper" => Value::from(s.to_uppercase()),
            "lower" => Value::from(s.to_lowercase()),
            "startswith" => Value::from(arg_str(0).is_some_and(|p| s.starts_with(&p))),
            "endswith" => Value::from(arg_str(0).is_some_and(|p| s.ends_with(&p))),
            "replace" => match (arg_str(0), arg_str(1)) {
                (Some(a), Some(b)) => Value::from(s.replace(&a, &b)),
                _ => return Err(unknown()),
            },
            "split" => match arg_str(0) {
                Some(sep) => Value::from(s.split(sep.as_str()).map(Value::from).collect::<Vec<_>>()),
                None => Value::from(s.split_whitespace().map(Value::from).collect::<Vec<_>>()),
            },
            "title" => Value::from(title_case(s)),
            _ => return Err(unknown()),
        });
    }
    if value.kind() == minijinja::value::ValueKind::Map {
        return match method {
            "items" => Ok(Value::from(value.try_iter()?.map(|k| Ok(Value::from(vec![k.clone(), value.get_item(&k)?]))).collect::<Result<Vec<_>, minijinja::Error>>()?)),
            "keys" => Ok(Value::from(value.try_iter()?.collect::<Vec<_>>())),
            "values" => Ok(Value::from(value.try_iter()?.map(|k| value.get_item(&k)).collect::<Result<Vec<_>, _>>()?)),
            "get" => {
                let key = args.first().cloned().unwrap_or(Value::UNDEFINED);
                let v = value.get_item(&key)?;
                Ok(if v.is_undefined() { args.get(1).cloned().unwrap_or(Value::from(())) } else { v })
            }
            _ => Err(unknown()),
        };
    }
    Err(unknown())
}

fn title_case(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev_alpha = false;
    for c in s.chars() {
        if prev_alpha { out.extend(c.to_lowercase()) } else { out.extend(c.to_uppercase()) }
        prev_alpha = c.is_alphabetic();
    }
    out
}
