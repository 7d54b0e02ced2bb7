//! `eval_dialogue`: instruction adherence by turn (Llama 2 §3.3, Table 30). For every
//! evaluation dialogue (the world's `eval_dialogues`) the model answers turn by turn with the
//! instruction only at the start, as a user would give it: as the system message (default) or
//! prepended to the first user turn (`instruction_position = "first_user"`). The later user
//! turns are the plain prompts and the model sees its own earlier answers. Each assistant
//! turn is judged by the gold judge with the instruction in force: `held` =
//! `Instruction::holds`, `helpfulness` = `judge::helpfulness` (which costs
//! `INSTRUCTION_PENALTY` when the instruction is broken) and `task_helpfulness` (the same
//! without the instruction: did the answer stay helpful).
//!
//! Row-wise over `dialogues` (like `eval`): a dialogue's answers depend only on the model, the
//! row and its seed, so editing one dialogue regenerates one row. Greedy decoding by default
//! (`temperature` 0).
//!
//! Outputs: `results` (one row per dialogue: id, instruction, turns, responses, held,
//! helpfulness, task_helpfulness per turn) and `report` (`report.json`, `report.md`):
//! - `adherence`: list of `turns` fractions, index 0 = turn 1: the share of dialogues (with at
//!   least that many turns) whose answer at that turn obeys the instruction;
//! - `adherence_all_so_far`: the share in which it held at every turn up to and including it;
//! - `helpfulness_by_turn`, `task_helpfulness_by_turn`: mean gold helpfulness at each turn;
//! - `helpfulness`, `task_helpfulness`: the means over all turns; `by_instruction`: the
//!   `adherence` list per instruction; `dialogues`, `turns`, `eos_rate`, `max_prompt_tokens`,
//!   `windowed_turns` (turns whose prompt left out earlier turns, after the first, to fit the
//!   model's positions; see `dialogue`).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, Int32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use datasets::judge::{self, JudgeInput};
use datasets::world::{dialogue_rows, DialogueRow};
use graph::{ArtifactType, ParamSpec, Port, RowFn, RowId, RowTask, RunCtx, Stage, StageError};
use kernels::chat::ChatTemplate;
use kernels::model::Llama;
use kernels::model_dir::ModelDir;
use kernels::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};

use crate::common::{read_input_table, write_output_table};
use crate::dialogue::{Convo, Roller};

pub struct EvalDialogue;

impl Stage for EvalDialogue {
    fn kind(&self) -> &'static str {
        "eval_dialogue"
    }
    fn version(&self) -> u32 {
        // 2: the gold judge grades text glued to an answer's period as text after the sentence (0.85), not as an exact answer.
        2
    }
    fn doc(&self) -> &'static str {
        "Instruction adherence by turn: each evaluation dialogue is answered turn by turn with the instruction only at the start; per turn, whether the instruction held and the gold helpfulness. Row-wise and incremental."
    }
    fn inputs(&self) -> Vec<Port> {
        vec![
            Port::new("model", ArtifactType::Model, "the model to evaluate (HF layout with tokenizer)"),
            Port::new("dialogues", ArtifactType::Table, "evaluation dialogues (the world's `eval_dialogues`: dialogue schema)"),
        ]
    }
    fn outputs(&self) -> Vec<Port> {
        vec![
            Port::new("results", ArtifactType::Table, "one row per dialogue: responses, held, helpfulness and task_helpfulness per turn"),
            Port::new("report", ArtifactType::Report, "report.json (adherence by turn, helpfulness by turn) and report.md"),
        ]
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::int("turns", 1, 1000, Some(20), "turns evaluated per dialogue (longer dialogues are cut; the `adherence` list has this many entries)"),
            ParamSpec::float("temperature", 0.0, 10.0, Some(0.0), "0 = greedy"),
            ParamSpec::float("top_p", 0.0, 1.0, Some(1.0), "nucleus when sampling"),
            ParamSpec::int("max_new_tokens", 1, 1 << 16, Some(32), "cap on an answer"),
            ParamSpec::str("instruction_position", Some("system"), "\"system\" (the system message) or \"first_user\" (prepended to the first user turn)"),
        ]
    }
    fn row_port(&self) -> Option<&'static str> {
        Some("dialogues")
    }
    fn run(&self, ctx: &mut RunCtx<'_>) -> Result<(), StageError> {
        let p = ctx.params;
        let position = p.str("instruction_position")?.to_string();
        if position != "system" && position != "first_user" {
            return Err(StageError::Param { name: "instruction_position".into(), expected: "\"system\" or \"first_user\"".into() });
        }
        let turns = p.int("turns")? as usize;
        let md = ModelDir::load(ctx.input("model")?).map_err(|e| StageError::wrap("loading input `model`", e))?;
        let stop = md.stop_ids();
        let tok = md.tokenizer.clone().ok_or_else(|| StageError::Message("input `model` has no tokenizer.json".into()))?;
        let template = md.chat.clone().unwrap_or(ChatTemplate::Llama2);
        let model = Llama::from_tensors(md.config.clone(), &md.tensors).map_err(|e| StageError::wrap("input `model`", e))?;
        let table = read_input_table(ctx, "dialogues")?;
        let wrap = |e| StageError::wrap("input `dialogues`", e);
        let rows = dialogue_rows(&table, "dialogues").map_err(wrap)?;
        let hashes = datasets::table::row_hashes(&table).map_err(wrap)?;
        let ids: Vec<RowId> = rows.iter().zip(hashes).map(|(r, hash)| RowId { key: r.id.clone(), hash }).collect();
        let f = Arc::new(Answer {
            model,
            tok,
            template,
            stop,
            rows,
            turns,
            position: position.clone(),
            max_new_tokens: p.int("max_new_tokens")? as usize,
            temperature: p.float("temperature")? as f32,
            top_p: p.float("top_p")? as f32,
        });
        let results = ctx.map_rows(&ids, f.clone())?;
        let judged: Vec<DialogueResult> = ids
            .iter()
            .zip(&results)
            .map(|(r, b)| serde_json::from_slice(b).map_err(|e| StageError::Row { key: r.key.clone(), message: format!("corrupt memo entry: {e}") }))
            .collect::<Result<_, _>>()?;
        let report = aggregate(&f.rows, &judged, turns, &position, f.temperature);
        write_output_table(ctx, "results", &results_table(&f.rows, &judged)?)?;
        let dir = ctx.output("report")?;
        let path = dir.join("report.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&report).expect("report serialises")).map_err(|source| StageError::Io { path, source })?;
        let path = dir.join("report.md");
        std::fs::write(&path, report.markdown(ctx.instance)).map_err(|source| StageError::Io { path, source })
    }
}

/// One judged turn.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JudgedTurn {
    pub text: String,
    pub held: bool,
    pub helpfulness: f32,
    pub task_helpfulness: f32,
    pub eos: bool,
    pub prompt_tokens: usize,
    /// Earlier turn pairs left out of the prompt to fit the model's positions.
    #[serde(default)]
    pub dropped_turns: usize,
}

/// The memo entry of one dialogue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DialogueResult {
    pub turns: Vec<JudgedTurn>,
}

struct Answer {
    model: Llama,
    tok: Tokenizer,
    template: ChatTemplate,
    stop: Vec<u32>,
    rows: Vec<DialogueRow>,
    turns: usize,
    position: String,
    max_new_tokens: usize,
    temperature: f32,
    top_p: f32,
}

impl RowFn for Answer {
    fn compute(&self, tasks: &[RowTask]) -> Result<Vec<Vec<u8>>, StageError> {
        let convos: Vec<Convo> = tasks
            .iter()
            .map(|t| {
                let r = &self.rows[t.index];
                let mut users: Vec<String> = r.prompts.iter().take(self.turns).cloned().collect();
                let system = if self.position == "system" {
                    Some(r.system.clone())
                } else {
                    users[0] = format!("{} {}", r.system, users[0]);
                    None
                };
                Convo { key: t.key.clone(), system, users, seed: t.seed }
            })
            .collect();
        let roller = Roller {
            model: &self.model,
            tok: &self.tok,
            template: &self.template,
            stop: &self.stop,
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
        };
        let answers = roller.roll(&convos)?;
        tasks
            .iter()
            .zip(answers)
            .map(|(t, turns)| {
                let r = &self.rows[t.index];
                let judged = turns
                    .into_iter()
                    .enumerate()
                    .map(|(i, a)| {
                        let j = r.judge(i).map_err(|e| StageError::Row { key: t.key.clone(), message: e.to_string() })?;
                        let plain = JudgeInput { instruction: None, ..j.clone() };
                        let ins = j.instruction.expect("dialogue judges carry the instruction");
                        Ok(JudgedTurn {
                            held: ins.holds(&a.text),
                            helpfulness: judge::helpfulness(&j, &a.text),
                            task_helpfulness: judge::helpfulness(&plain, &a.text),
                            eos: a.eos,
                            prompt_tokens: a.prompt_tokens,
                            dropped_turns: a.dropped_turns,
                            text: a.text,
                        })
                    })
                    .collect::<Result<Vec<_>, StageError>>()?;
                Ok(serde_json::to_vec(&DialogueResult { turns: judged }).expect("serialises"))
            })
            .collect()
    }
}

/// `report.json` of an `eval_dialogue` instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DialogueReport {
    pub dialogues: usize,
    pub turns: usize,
    /// Index 0 = turn 1; null where no dialogue has that many turns.
    pub adherence: Vec<Option<f64>>,
    pub adherence_all_so_far: Vec<Option<f64>>,
    pub helpfulness_by_turn: Vec<Option<f64>>,
    pub task_helpfulness_by_turn: Vec<Option<f64>>,
    pub helpfulness: Option<f64>,
    pub task_helpfulness: Option<f64>,
    pub by_instruction: BTreeMap<String, Vec<Option<f64>>>,
    pub eos_rate: Option<f64>,
    pub max_prompt_tokens: usize,
    /// Turns whose prompt left out earlier turns to fit the model (the first turn always stays).
    pub windowed_turns: usize,
    pub instruction_position: String,
    pub temperature: f32,
}

fn mean(xs: impl Iterator<Item = f64>) -> Option<f64> {
    let (mut s, mut n) = (0.0, 0usize);
    for x in xs {
        s += x;
        n += 1;
    }
    (n > 0).then(|| s / n as f64)
}

fn aggregate(rows: &[DialogueRow], judged: &[DialogueResult], turns: usize, position: &str, temperature: f32) -> DialogueReport {
    let at = |_t: usize, f: &dyn Fn(&DialogueRow, &DialogueResult) -> Option<f64>| mean(rows.iter().zip(judged).filter_map(|(r, d)| f(r, d)));
    let per_turn = |f: &dyn Fn(&JudgedTurn) -> f64| -> Vec<Option<f64>> {
        (0..turns).map(|t| at(t, &|_, d| d.turns.get(t).map(f))).collect()
    };
    let adherence = per_turn(&|j| j.held as u8 as f64);
    let adherence_all_so_far =
        (0..turns).map(|t| at(t, &|_, d| (d.turns.len() > t).then(|| d.turns[..=t].iter().all(|j| j.held) as u8 as f64))).collect();
    let mut by_instruction = BTreeMap::new();
    for ins in datasets::judge::Instruction::ALL {
        let v: Vec<Option<f64>> = (0..turns)
            .map(|t| at(t, &|r, d| if r.instruction == ins.as_str() { d.turns.get(t).map(|j| j.held as u8 as f64) } else { None }))
            .collect();
        if v.iter().any(Option::is_some) {
            by_instruction.insert(ins.as_str().to_string(), v);
        }
    }
    let all = || judged.iter().flat_map(|d| d.turns.iter());
    DialogueReport {
        dialogues: rows.len(),
        turns,
        adherence,
        adherence_all_so_far,
        helpfulness_by_turn: per_turn(&|j| j.helpfulness as f64),
        task_helpfulness_by_turn: per_turn(&|j| j.task_helpfulness as f64),
        helpfulness: mean(all().map(|j| j.helpfulness as f64)),
        task_helpfulness: mean(all().map(|j| j.task_helpfulness as f64)),
        by_instruction,
        eos_rate: mean(all().map(|j| j.eos as u8 as f64)),
        max_prompt_tokens: all().map(|j| j.prompt_tokens).max().unwrap_or(0),
        windowed_turns: all().filter(|j| j.dropped_turns > 0).count(),
        instruction_position: position.to_string(),
        temperature,
    }
}

impl DialogueReport {
    pub fn markdown(&self, instance: &str) -> String {
        let f = |x: Option<f64>| x.map(|v| format!("{v:.2}")).unwrap_or_else(|| "–".into());
        let mut s = format!(
            "# eval_dialogue `{instance}`\n\n{} dialogues, {} turns, instruction in the {}; helpfulness {} (without the instruction's penalty {}); longest prompt {} tokens\n\n| turn | adherence | held so far | helpfulness |\n|---|---|---|---|\n",
            self.dialogues,
            self.turns,
            if self.instruction_position == "system" { "system message" } else { "first user turn" },
            f(self.helpfulness),
            f(self.task_helpfulness),
            self.max_prompt_tokens
        );
        for t in 0..self.turns {
            s.push_str(&format!("| {} | {} | {} | {} |\n", t + 1, f(self.adherence[t]), f(self.adherence_all_so_far[t]), f(self.helpfulness_by_turn[t])));
        }
        s
    }
}

fn results_table(rows: &[DialogueRow], judged: &[DialogueResult]) -> Result<RecordBatch, StageError> {
    use arrow_array::builder::{BooleanBuilder, Float32Builder, ListBuilder, StringBuilder};
    let mut resp = ListBuilder::new(StringBuilder::new()).with_field(Arc::new(Field::new("element", DataType::Utf8, false)));
    let mut held = ListBuilder::new(BooleanBuilder::new()).with_field(Arc::new(Field::new("element", DataType::Boolean, false)));
    let mut help = ListBuilder::new(Float32Builder::new()).with_field(Arc::new(Field::new("element", DataType::Float32, false)));
    let mut task = ListBuilder::new(Float32Builder::new()).with_field(Arc::new(Field::new("element", DataType::Float32, false)));
    for d in judged {
        for j in &d.turns {
            resp.values().append_value(&j.text);
            held.values().append_value(j.held);
            help.values().append_value(j.helpfulness);
            task.values().append_value(j.task_helpfulness);
        }
        resp.append(true);
        held.append(true);
        help.append(true);
        task.append(true);
    }
    let (resp, held, help, task) = (resp.finish(), held.finish(), help.finish(), task.finish());
    let schema = Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("instruction", DataType::Utf8, false),
        Field::new("turns", DataType::Int32, false),
        Field::new("responses", resp.data_type().clone(), false),
        Field::new("held", held.data_type().clone(), false),
        Field::new("helpfulness", help.data_type().clone(), false),
        Field::new("task_helpfulness", task.data_type().clone(), false),
    ]);
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>())),
        Arc::new(StringArray::from(rows.iter().map(|r| r.instruction.as_str()).collect::<Vec<_>>())),
        Arc::new(Int32Array::from(judged.iter().map(|d| d.turns.len() as i32).collect::<Vec<_>>())),
        Arc::new(resp),
        Arc::new(held),
        Arc::new(help),
        Arc::new(task),
    ];
    RecordBatch::try_new(Arc::new(schema), cols).map_err(|e| StageError::wrap("building `results`", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialogue::messages_upto;

    fn row(id: &str, instruction: &str, turns: usize) -> DialogueRow {
        let spec = datasets::judge::JudgeSpec::Capital { country: "Peru".into(), answer: "Lima".into() };
        DialogueRow {
            id: id.into(),
            instruction: instruction.into(),
            short_form: false,
            system: "s".into(),
            prompts: vec!["What is the capital of Peru?".into(); turns],
            categories: vec!["capital".into(); turns],
            judges: vec![spec.to_json(); turns],
        }
    }

    fn turn(held: bool) -> JudgedTurn {
        JudgedTurn { text: String::new(), held, helpfulness: held as u8 as f32, task_helpfulness: 1.0, eos: true, prompt_tokens: 10, dropped_turns: 0 }
    }

    #[test]
    fn adherence_is_per_turn_over_the_dialogues_that_long() {
        let rows = [row("a", "capitals", 3), row("b", "end_with_over", 2)];
        let judged = [
            DialogueResult { turns: vec![turn(true), turn(false), turn(true)] },
            DialogueResult { turns: vec![turn(true), turn(true)] },
        ];
        let r = aggregate(&rows, &judged, 4, "system", 0.0);
        assert_eq!(r.adherence, [Some(1.0), Some(0.5), Some(1.0), None]);
        assert_eq!(r.adherence_all_so_far, [Some(1.0), Some(0.5), Some(0.0), None]);
        assert_eq!(r.by_instruction["capitals"], [Some(1.0), Some(0.0), Some(1.0), None]);
        assert_eq!(r.task_helpfulness, Some(1.0));
        assert!(r.markdown("x").contains("| 2 | 0.50 | 0.50 |"));
    }

    #[test]
    fn the_window_keeps_the_first_turn() {
        let c = Convo { key: "k".into(), system: Some("Style: capitals".into()), users: (0..5).map(|i| format!("u{i}")).collect(), seed: 0 };
        let answers: Vec<String> = (0..4).map(|i| format!("a{i}")).collect();
        let text = |dropped| messages_upto(&c, &answers, 4, dropped).iter().map(|m| m.content.clone()).collect::<Vec<_>>().join(" ");
        assert_eq!(text(0), "Style: capitals u0 a0 u1 a1 u2 a2 u3 a3 u4");
        assert_eq!(text(2), "Style: capitals u0 a0 u3 a3 u4");
        assert_eq!(text(3), "Style: capitals u0 a0 u4");
    }
}
