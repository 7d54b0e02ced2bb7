//! `tokenize`: the row-wise tokenization of a table -> `id, input_ids` (+ `loss_mask`).
//! A text column is encoded as `<s> text </s>` (when the tokenizer has those tokens and
//! `add_special` is on); a chat `messages` column goes through the Llama 2 chat format and
//! gets a loss mask that is true on the assistant's tokens. Each row's result depends only on
//! the row's `id` and column, the tokenizer and the parameters, so the runtime memoises rows:
//! after appending rows to a source only the new rows are encoded.

use std::sync::Arc;

use arrow_schema::DataType;
use graph::{ArtifactType, ParamSpec, Port, RowFn, RowId, RowTask, RunCtx, Stage, StageError};
use kernels::chat::{ChatTemplate, Message};
use kernels::tokenizer::Tokenizer;

use crate::common::{read_input_table, tokenizer_file, write_output_table};

pub struct Tokenize;

impl Stage for Tokenize {
    fn kind(&self) -> &'static str {
        "tokenize"
    }
    fn version(&self) -> u32 {
        1
    }
    fn doc(&self) -> &'static str {
        "Row-wise tokenization of a text column, or of a chat `messages` column through the Llama 2 chat format with an assistant-only loss mask."
    }
    fn inputs(&self) -> Vec<Port> {
        vec![
            Port::new("table", ArtifactType::Table, "rows with an `id` and the column to encode"),
            Port::new("tokenizer", ArtifactType::Tokenizer, "the tokenizer"),
        ]
    }
    fn outputs(&self) -> Vec<Port> {
        vec![Port::new("tokens", ArtifactType::Table, "id, input_ids: List<Int32> (+ loss_mask: List<Boolean> for chats)")]
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::str("column", Some("text"), "the column to encode: a string column, or a `messages` chat column"),
            ParamSpec::bool("add_special", Some(true), "wrap text rows in <s> ... </s> when the tokenizer has them"),
        ]
    }
    fn row_port(&self) -> Option<&'static str> {
        Some("table")
    }
    fn run(&self, ctx: &mut RunCtx<'_>) -> Result<(), StageError> {
        let table = read_input_table(ctx, "table")?;
        let column = ctx.params.str("column")?.to_string();
        let tok = Tokenizer::from_file(&tokenizer_file(ctx.input("tokenizer")?)).map_err(|e| StageError::wrap("input `tokenizer`", e))?;
        let ids: Vec<String> = datasets::table::str_values(&table, "id", "table").map_err(|e| StageError::wrap("input `table`", e))?.into_iter().map(String::from).collect();
        let col_type = table.column_by_name(&column).map(|c| c.data_type().clone());
        let content = match col_type {
            Some(DataType::List(_)) | Some(DataType::LargeList(_)) => Content::Chats(
                datasets::table::messages_values(&table, &column, "table")
                    .map_err(|e| StageError::wrap("input `table`", e))?
                    .into_iter()
                    .map(|m| m.into_iter().map(|x| Message::new(&x.role, &x.content)).collect())
                    .collect(),
            ),
            _ => Content::Texts(
                datasets::table::str_values(&table, &column, "table")
                    .map_err(|e| StageError::wrap("input `table`", e))?
                    .into_iter()
                    .map(String::from)
                    .collect(),
            ),
        };
        let chat = matches!(content, Content::Chats(_));
        // The row hash covers exactly what the row function reads: the key and the column.
        let projected = table
            .project(&[table.schema().index_of("id").expect("id checked"), table.schema().index_of(&column).expect("column checked")])
            .map_err(|e| StageError::wrap("projecting input `table`", e))?;
        let hashes = datasets::table::row_hashes(&projected).map_err(|e| StageError::wrap("hashing input `table`", e))?;
        let rows: Vec<RowId> = ids.iter().zip(hashes).map(|(key, hash)| RowId { key: key.clone(), hash }).collect();
        let f = Arc::new(Encode { tok, content, add_special: ctx.params.bool("add_special")? });
        let results = ctx.map_rows(&rows, f)?;
        let mut input_ids = Vec::with_capacity(results.len());
        let mut masks = Vec::with_capacity(results.len());
        for (r, bytes) in rows.iter().zip(&results) {
            let (t, m) = decode_row(bytes).ok_or_else(|| StageError::Row { key: r.key.clone(), message: "corrupt memo entry".into() })?;
            input_ids.push(t);
            masks.push(m);
        }
        let batch = datasets::schema::tokenized_batch(&ids, &input_ids, chat.then_some(&masks[..]), "tokens")
            .map_err(|e| StageError::wrap("building output `tokens`", e))?;
        write_output_table(ctx, "tokens", &batch)
    }
}

enum Content {
    Texts(Vec<String>),
    Chats(Vec<Vec<Message>>),
}

/// The per-row function; rows are addressed by their index in the stage's row list.
struct Encode {
    tok: Tokenizer,
    content: Content,
    add_special: bool,
}

impl RowFn for Encode {
    fn compute(&self, tasks: &[RowTask]) -> Result<Vec<Vec<u8>>, StageError> {
        tasks.iter().map(|t| self.row(t).map(|(ids, mask)| encode_row(&ids, &mask))).collect()
    }
}

impl Encode {
    fn row(&self, t: &RowTask) -> Result<(Vec<i32>, Vec<bool>), StageError> {
        let err = |e: &dyn std::fmt::Display| StageError::Row { key: t.key.clone(), message: e.to_string() };
        let to_i32 = |ids: Vec<u32>| ids.into_iter().map(|x| x as i32).collect::<Vec<i32>>();
        match &self.content {
            Content::Texts(texts) => {
                let mut ids = Vec::new();
                let (bos, eos) = (self.tok.token_to_id("<s>"), self.tok.token_to_id("</s>"));
                if let (true, Some(b)) = (self.add_special, bos) {
                    ids.push(b);
                }
                ids.extend(self.tok.encode(&texts[t.index]).map_err(|e| err(&e))?);
                if let (true, Some(e)) = (self.add_special, eos) {
                    ids.push(e);
                }
                let n = ids.len();
                Ok((to_i32(ids), vec![true; n]))
            }
            Content::Chats(chats) => {
                let enc = ChatTemplate::Llama2.encode(&self.tok, &chats[t.index], false, None, None).map_err(|e| err(&e))?;
                Ok((to_i32(enc.ids), enc.assistant_mask))
            }
        }
    }
}

/// Row result bytes: u32 count, count little-endian i32 ids, count mask bytes (0/1).
fn encode_row(ids: &[i32], mask: &[bool]) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + ids.len() * 5);
    b.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    for i in ids {
        b.extend_from_slice(&i.to_le_bytes());
    }
    b.extend(mask.iter().map(|m| *m as u8));
    b
}

fn decode_row(b: &[u8]) -> Option<(Vec<i32>, Vec<bool>)> {
    let n = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
    if b.len() != 4 + n * 5 {
        return None;
    }
    let ids = b[4..4 + 4 * n].chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
    let mask = b[4 + 4 * n..].iter().map(|x| *x != 0).collect();
    Some((ids, mask))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_bytes_round_trip() {
        let b = encode_row(&[1, -2, 300], &[true, false, true]);
        assert_eq!(decode_row(&b), Some((vec![1, -2, 300], vec![true, false, true])));
        assert_eq!(decode_row(&b[..b.len() - 1]), None);
    }
}
