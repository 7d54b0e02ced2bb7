//! Training examples: token ids plus a per-token loss mask, built from whatever table a user
//! brings. Four shapes of table are read, checked in this order:
//! - a tokenized table (`input_ids: List<Int32>`, optional `loss_mask: List<Boolean>`), as the
//!   `tokenize` stage writes it: used as is (no mask = loss on every token);
//! - a chat table (TRL's `messages: List<Struct<role, content>>`): encoded through the chat
//!   template, loss only on assistant tokens and the EOS closing each answer (Llama 2 §3.1);
//! - `prompt`/`response` columns: the single-turn chat [user: prompt, assistant: response];
//! - a text column: `<s> text </s>` with loss on every token (pretraining mode).
//!
//! `mode` decides the loss mask for chats: `Sft` keeps the assistant-only mask, `Pretrain`
//! puts loss on every token whatever the table is.

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use kernels::chat::{ChatTemplate, Message};
use kernels::tokenizer::Tokenizer;

/// One training example: `mask[t]` says whether token t is a training target (the loss at
/// position t-1 predicting it counts). Same length as `ids`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    pub ids: Vec<u32>,
    pub mask: Vec<bool>,
}

/// Which tokens carry loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossMode {
    /// Supervised fine-tuning: only the answer tokens (assistant turns).
    Sft,
    /// Plain language modelling: every token.
    Pretrain,
}

impl LossMode {
    pub fn parse(s: &str) -> Option<LossMode> {
        match s {
            "sft" => Some(LossMode::Sft),
            "pretrain" => Some(LossMode::Pretrain),
            _ => None,
        }
    }
}

/// Errors turning a table into examples; each names the table, column and row.
#[derive(Debug, thiserror::Error)]
pub enum ExampleError {
    #[error("table `{table}`: none of the columns {wanted} found (columns: {present})")]
    NoColumn { table: String, wanted: String, present: String },
    #[error("table `{table}`, column `{column}`, row {row}: {message}")]
    Row { table: String, column: String, row: usize, message: String },
    #[error("table `{table}`: {source}")]
    Data { table: String, source: datasets::DataError },
    #[error("table `{table}`: column `{column}` needs a tokenizer and none was given")]
    NoTokenizer { table: String, column: String },
}

/// Where the examples come from, as found in the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Tokenized,
    Chat(String),
    PromptResponse,
    Text(String),
}

/// What to read: the preferred chat and text column names (either may be absent).
#[derive(Clone, Debug)]
pub struct Columns {
    pub messages: String,
    pub text: String,
}

/// Decides which shape `batch` has.
pub fn detect(batch: &RecordBatch, cols: &Columns, table: &str) -> Result<Source, ExampleError> {
    let has = |c: &str| batch.schema().index_of(c).is_ok();
    let is_list = |c: &str| matches!(batch.column_by_name(c).map(|a| a.data_type().clone()), Some(DataType::List(_) | DataType::LargeList(_)));
    if has("input_ids") {
        return Ok(Source::Tokenized);
    }
    if has(&cols.messages) && is_list(&cols.messages) {
        return Ok(Source::Chat(cols.messages.clone()));
    }
    if has("prompt") && has("response") {
        return Ok(Source::PromptResponse);
    }
    if has(&cols.text) {
        return Ok(Source::Text(cols.text.clone()));
    }
    let present: Vec<String> = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
    Err(ExampleError::NoColumn {
        table: table.into(),
        wanted: format!("input_ids, `{}` (chat), prompt+response, `{}` (text)", cols.messages, cols.text),
        present: present.join(", "),
    })
}

/// The examples of a table, one per row, in row order.
pub fn examples_from_table(
    batch: &RecordBatch,
    cols: &Columns,
    tok: Option<&Tokenizer>,
    template: &ChatTemplate,
    mode: LossMode,
    table: &str,
) -> Result<Vec<Example>, ExampleError> {
    let data = |source| ExampleError::Data { table: table.into(), source };
    let source = detect(batch, cols, table)?;
    let need_tok = |column: &str| tok.ok_or_else(|| ExampleError::NoTokenizer { table: table.into(), column: column.into() });
    let mut out = match &source {
        Source::Tokenized => tokenized(batch, table)?,
        Source::Chat(column) => {
            let tok = need_tok(column)?;
            let chats = datasets::table::messages_values(batch, column, table).map_err(data)?;
            chats
                .iter()
                .enumerate()
                .map(|(row, m)| {
                    let msgs: Vec<Message> = m.iter().map(|x| Message::new(&x.role, &x.content)).collect();
                    chat_example(tok, template, &msgs).map_err(|message| ExampleError::Row { table: table.into(), column: column.clone(), row, message })
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        Source::PromptResponse => {
            let tok = need_tok("prompt")?;
            let prompts = datasets::table::str_values(batch, "prompt", table).map_err(data)?;
            let responses = datasets::table::str_values(batch, "response", table).map_err(data)?;
            prompts
                .iter()
                .zip(&responses)
                .enumerate()
                .map(|(row, (p, r))| {
                    let msgs = [Message::new("user", p), Message::new("assistant", r)];
                    chat_example(tok, template, &msgs).map_err(|message| ExampleError::Row { table: table.into(), column: "prompt".into(), row, message })
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        Source::Text(column) => {
            let tok = need_tok(column)?;
            let texts = datasets::table::str_values(batch, column, table).map_err(data)?;
            texts
                .iter()
                .enumerate()
                .map(|(row, t)| text_example(tok, t).map_err(|message| ExampleError::Row { table: table.into(), column: column.clone(), row, message }))
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    if mode == LossMode::Pretrain {
        out.iter_mut().for_each(|e| e.mask.iter_mut().for_each(|m| *m = true));
    }
    Ok(out)
}

/// A chat through the template: assistant tokens (and the EOS closing them) are targets.
pub fn chat_example(tok: &Tokenizer, template: &ChatTemplate, messages: &[Message]) -> Result<Example, String> {
    let enc = template.encode(tok, messages, false, None, None).map_err(|e| e.to_string())?;
    Ok(Example { ids: enc.ids, mask: enc.assistant_mask })
}

/// Plain text: `<s> text </s>` when the tokenizer has those tokens; every token a target.
pub fn text_example(tok: &Tokenizer, text: &str) -> Result<Example, String> {
    let mut ids = Vec::new();
    ids.extend(tok.token_to_id("<s>"));
    ids.extend(tok.encode(text).map_err(|e| e.to_string())?);
    ids.extend(tok.token_to_id("</s>"));
    let n = ids.len();
    Ok(Example { ids, mask: vec![true; n] })
}

/// A tokenized table: `input_ids` (+ `loss_mask`); negative ids are an error.
fn tokenized(batch: &RecordBatch, table: &str) -> Result<Vec<Example>, ExampleError> {
    let ids = datasets::table::i32_lists(batch, "input_ids", table).map_err(|source| ExampleError::Data { table: table.into(), source })?;
    let masks = match batch.column_by_name("loss_mask") {
        Some(_) => Some(bool_lists(batch, "loss_mask", table)?),
        None => None,
    };
    let row_err = |row: usize, column: &str, message: String| ExampleError::Row { table: table.into(), column: column.into(), row, message };
    ids.into_iter()
        .enumerate()
        .map(|(row, r)| {
            let ids = r
                .iter()
                .map(|&x| u32::try_from(x).map_err(|_| row_err(row, "input_ids", format!("negative token id {x}"))))
                .collect::<Result<Vec<u32>, _>>()?;
            let mask = match &masks {
                Some(m) if m[row].len() != ids.len() => {
                    return Err(row_err(row, "loss_mask", format!("{} mask values for {} tokens", m[row].len(), ids.len())));
                }
                Some(m) => m[row].clone(),
                None => vec![true; ids.len()],
            };
            Ok(Example { ids, mask })
        })
        .collect()
}

/// A `List<Boolean>` column as one `Vec<bool>` per row; nulls are errors naming the row.
fn bool_lists(batch: &RecordBatch, name: &str, table: &str) -> Result<Vec<Vec<bool>>, ExampleError> {
    let lists = datasets::table::list_column(batch, name, table).map_err(|source| ExampleError::Data { table: table.into(), source })?;
    let err = |row: usize, message: &str| ExampleError::Row { table: table.into(), column: name.into(), row, message: message.into() };
    if lists.value_type() != DataType::Boolean {
        return Err(err(0, "expected List<Boolean>"));
    }
    (0..lists.len())
        .map(|row| {
            if lists.is_null(row) {
                return Err(err(row, "null mask"));
            }
            let v = lists.value(row);
            let v = v.as_boolean();
            if v.null_count() > 0 {
                return Err(err(row, "null inside the mask"));
            }
            Ok((0..v.len()).map(|i| v.value(i)).collect())
        })
        .collect()
}
