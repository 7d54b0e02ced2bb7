//! Multi-turn dialogues under a system instruction, for Ghost Attention (Llama 2 §3.3;
//! ../shared/docs/assistant-world.md, "Dialogues and system instructions"). A dialogue chains
//! single-turn prompts of the six task families (arithmetic, compare, reverse, count_letters,
//! capital, sort) and carries one `judge::Instruction` that must hold on every assistant turn.
//! Two splits: `gatt_dialogues` (2..=20 turns, training phrasings, the short form of the
//! instruction in `short_share` of rows) and `eval_dialogues` (20 turns, held-out phrasings,
//! long form). Row `i` depends only on `(seed, split, i)` and the config, so growing a size
//! only appends rows.
//!
//! The judge of one assistant turn is the turn's `JudgeInput` with the instruction set:
//! adherence is `Instruction::holds` on the turn's answer, helpfulness `judge::helpfulness`
//! (which costs `INSTRUCTION_PENALTY` when the instruction is broken).

use std::sync::Arc;

use arrow_array::builder::{ListBuilder, StringBuilder};
use arrow_array::{ArrayRef, BooleanArray, Int32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use super::rng::Rng;
use super::tasks::{Draw, sample_task};
use super::{WorldConfig, row_id_str, train_draw};
use crate::error::{DataError, Result};
use crate::judge::{Family, Instruction, JudgeInput, JudgeSpec};
use crate::table;

/// The task families a dialogue turn is drawn from (no safety or borderline turns: their
/// answers are refusals or fixed sentences that several instructions could not apply to).
pub const DIALOGUE_FAMILIES: [Family; 6] =
    [Family::Arithmetic, Family::Compare, Family::Reverse, Family::CountLetters, Family::Capital, Family::Sort];

/// The two dialogue splits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DialogueSplit {
    /// Ghost Attention training dialogues.
    Gatt,
    /// Evaluation dialogues (instruction adherence by turn).
    Eval,
}

impl DialogueSplit {
    pub const ALL: [DialogueSplit; 2] = [DialogueSplit::Gatt, DialogueSplit::Eval];

    pub fn as_str(self) -> &'static str {
        match self {
            DialogueSplit::Gatt => "gatt_dialogues",
            DialogueSplit::Eval => "eval_dialogues",
        }
    }

    pub fn size(self, cfg: &WorldConfig) -> usize {
        match self {
            DialogueSplit::Gatt => cfg.dialogues.gatt,
            DialogueSplit::Eval => cfg.dialogues.eval,
        }
    }
}

/// Dialogue settings of the world.
#[derive(Clone, Debug, PartialEq)]
pub struct DialogueConfig {
    /// Rows of `gatt_dialogues` (the world doc: 300).
    pub gatt: usize,
    /// Rows of `eval_dialogues` (the world doc: 100 of 20 turns).
    pub eval: usize,
    /// Turns of a GAtt dialogue, uniform in `min_turns..=max_turns`.
    pub min_turns: usize,
    pub max_turns: usize,
    /// Turns of every eval dialogue.
    pub eval_turns: usize,
    /// Share of GAtt dialogues whose `system` is the instruction's short form.
    pub short_share: f64,
}

impl DialogueConfig {
    pub fn standard() -> Self {
        DialogueConfig { gatt: 300, eval: 100, min_turns: 2, max_turns: 20, eval_turns: 20, short_share: 0.5 }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |setting: &str, msg: String| Err(DataError::Config { setting: setting.into(), msg });
        if self.min_turns == 0 || self.min_turns > self.max_turns {
            return bad("dialogues.min_turns", format!("need 1 <= min_turns ({}) <= max_turns ({})", self.min_turns, self.max_turns));
        }
        if self.eval_turns == 0 {
            return bad("dialogues.eval_turns", "must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.short_share) {
            return bad("dialogues.short_share", format!("{} is out of range", self.short_share));
        }
        Ok(())
    }
}

/// One dialogue: the instruction, the system text shown to the model (long or short form),
/// and per user turn its prompt, family and judge spec (JSON).
#[derive(Clone, Debug, PartialEq)]
pub struct DialogueRow {
    pub id: String,
    pub instruction: String,
    pub short_form: bool,
    pub system: String,
    pub prompts: Vec<String>,
    pub categories: Vec<String>,
    pub judges: Vec<String>,
}

impl DialogueRow {
    pub fn turns(&self) -> usize {
        self.prompts.len()
    }

    pub fn instruction(&self) -> Result<Instruction> {
        Instruction::parse(&self.instruction).ok_or_else(|| DataError::BadValue {
            table: "dialogues".into(),
            column: "instruction".into(),
            row: 0,
            msg: format!("{:?} is not an instruction ({})", self.instruction, Instruction::ALL.map(|i| i.as_str()).join(", ")),
        })
    }

    /// The judge input of turn `t` (0-based), with the instruction in force.
    pub fn judge(&self, t: usize) -> Result<JudgeInput> {
        let spec: JudgeSpec = serde_json::from_str(&self.judges[t]).map_err(|e| DataError::BadValue {
            table: "dialogues".into(),
            column: "judges".into(),
            row: t,
            msg: format!("{}: turn {t}: not a judge spec: {e}", self.id),
        })?;
        let mut j = JudgeInput::new(spec);
        j.instruction = Some(self.instruction()?);
        Ok(j)
    }
}

fn str_list_type() -> DataType {
    DataType::List(Arc::new(Field::new("element", DataType::Utf8, false)))
}

/// `id, instruction, short_form, system, turns, prompts, categories, judges`.
pub fn dialogues_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("instruction", DataType::Utf8, false),
        Field::new("short_form", DataType::Boolean, false),
        Field::new("system", DataType::Utf8, false),
        Field::new("turns", DataType::Int32, false),
        Field::new("prompts", str_list_type(), false),
        Field::new("categories", str_list_type(), false),
        Field::new("judges", str_list_type(), false),
    ]))
}

fn str_lists(rows: &[DialogueRow], f: impl Fn(&DialogueRow) -> &Vec<String>) -> ArrayRef {
    let mut b = ListBuilder::new(StringBuilder::new()).with_field(Arc::new(Field::new("element", DataType::Utf8, false)));
    for r in rows {
        for s in f(r) {
            b.values().append_value(s);
        }
        b.append(true);
    }
    Arc::new(b.finish())
}

/// A dialogue table from rows.
pub fn dialogues_batch(rows: &[DialogueRow], table: &str) -> Result<RecordBatch> {
    let s = |f: fn(&DialogueRow) -> &str| -> ArrayRef { Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>())) };
    let columns = vec![
        s(|r| r.id.as_str()),
        s(|r| r.instruction.as_str()),
        Arc::new(BooleanArray::from(rows.iter().map(|r| r.short_form).collect::<Vec<_>>())) as ArrayRef,
        s(|r| r.system.as_str()),
        Arc::new(Int32Array::from(rows.iter().map(|r| r.turns() as i32).collect::<Vec<_>>())),
        str_lists(rows, |r| &r.prompts),
        str_lists(rows, |r| &r.categories),
        str_lists(rows, |r| &r.judges),
    ];
    RecordBatch::try_new(dialogues_schema(), columns).map_err(|e| DataError::arrow(format!("table `{table}`: build"), e))
}

/// A `List<Utf8>` column as one `Vec<String>` per row.
fn read_str_lists(batch: &RecordBatch, name: &str, tbl: &str) -> Result<Vec<Vec<String>>> {
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    let lists = table::list_column(batch, name, tbl)?;
    (0..lists.len())
        .map(|row| {
            let bad = |msg: &str| DataError::BadValue { table: tbl.into(), column: name.into(), row, msg: msg.into() };
            if lists.is_null(row) {
                return Err(bad("null list"));
            }
            let v = lists.value(row);
            let v = v.as_string_opt::<i32>().ok_or_else(|| bad("expected List<Utf8>"))?;
            if v.null_count() > 0 {
                return Err(bad("null inside the list"));
            }
            Ok((0..v.len()).map(|i| v.value(i).to_string()).collect())
        })
        .collect()
}

/// The rows of a dialogue table (checked against `dialogues_schema`; list lengths must agree).
pub fn dialogue_rows(batch: &RecordBatch, tbl: &str) -> Result<Vec<DialogueRow>> {
    crate::schema::check_schema(batch, &dialogues_schema(), tbl)?;
    let ids = table::str_values(batch, "id", tbl)?;
    let ins = table::str_values(batch, "instruction", tbl)?;
    let short = table::bool_column(batch, "short_form", tbl)?;
    let system = table::str_values(batch, "system", tbl)?;
    let (prompts, cats, judges) =
        (read_str_lists(batch, "prompts", tbl)?, read_str_lists(batch, "categories", tbl)?, read_str_lists(batch, "judges", tbl)?);
    (0..batch.num_rows())
        .map(|i| {
            if cats[i].len() != prompts[i].len() || judges[i].len() != prompts[i].len() || prompts[i].is_empty() {
                return Err(DataError::BadValue {
                    table: tbl.into(),
                    column: "prompts".into(),
                    row: i,
                    msg: format!("{} prompts, {} categories, {} judges (need the same, at least one)", prompts[i].len(), cats[i].len(), judges[i].len()),
                });
            }
            let row = DialogueRow {
                id: ids[i].to_string(),
                instruction: ins[i].to_string(),
                short_form: short.value(i),
                system: system[i].to_string(),
                prompts: prompts[i].clone(),
                categories: cats[i].clone(),
                judges: judges[i].clone(),
            };
            row.instruction().map_err(|_| DataError::BadValue {
                table: tbl.into(),
                column: "instruction".into(),
                row: i,
                msg: format!("{:?} is not an instruction", row.instruction),
            })?;
            Ok(row)
        })
        .collect()
}

/// Row `index` of a dialogue split.
pub fn dialogue_row(cfg: &WorldConfig, split: DialogueSplit, index: usize) -> Result<DialogueRow> {
    let d = &cfg.dialogues;
    let mut rng = Rng::for_key(cfg.seed, split.as_str(), index as u64);
    let instruction = Instruction::ALL[index % Instruction::ALL.len()];
    let (turns, short_form, draw) = match split {
        DialogueSplit::Gatt => {
            let turns = d.min_turns + rng.below(d.max_turns - d.min_turns + 1);
            let short = rng.chance(d.short_share);
            (turns, short, train_draw(cfg))
        }
        DialogueSplit::Eval => (d.eval_turns, false, Draw { eval: true, ..train_draw(cfg) }),
    };
    let mut row = DialogueRow {
        id: row_id_str(split.as_str(), index),
        instruction: instruction.as_str().to_string(),
        short_form,
        system: if short_form { instruction.short_form() } else { instruction.long_form() }.to_string(),
        prompts: Vec::with_capacity(turns),
        categories: Vec::with_capacity(turns),
        judges: Vec::with_capacity(turns),
    };
    for _ in 0..turns {
        let family = *rng.pick(&DIALOGUE_FAMILIES);
        let task = sample_task(family, &draw, &mut rng);
        row.prompts.push(task.prompt);
        row.categories.push(family.as_str().to_string());
        row.judges.push(task.spec.to_json());
    }
    Ok(row)
}

/// One dialogue split with `split.size(cfg)` rows.
pub fn generate_dialogues(cfg: &WorldConfig, split: DialogueSplit) -> Result<RecordBatch> {
    cfg.validate()?;
    let rows = (0..split.size(cfg)).map(|i| dialogue_row(cfg, split, i)).collect::<Result<Vec<_>>>()?;
    dialogues_batch(&rows, split.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::{canonical_answer, helpfulness};

    fn cfg() -> WorldConfig {
        WorldConfig::standard(3)
    }

    #[test]
    fn standard_sizes_turns_and_forms() {
        let c = cfg();
        let g = dialogue_rows(&generate_dialogues(&c, DialogueSplit::Gatt).unwrap(), "g").unwrap();
        let e = dialogue_rows(&generate_dialogues(&c, DialogueSplit::Eval).unwrap(), "e").unwrap();
        assert_eq!((g.len(), e.len()), (300, 100));
        assert!(e.iter().all(|r| r.turns() == 20 && !r.short_form));
        assert!(g.iter().all(|r| (2..=20).contains(&r.turns())));
        assert!(g.iter().any(|r| r.turns() == 2) && g.iter().any(|r| r.turns() == 20));
        let short = g.iter().filter(|r| r.short_form).count();
        assert!((110..190).contains(&short), "{short} short of 300");
        for ins in Instruction::ALL {
            assert!(e.iter().filter(|r| r.instruction == ins.as_str()).count() == 25);
        }
        // Ids, systems and judges are consistent.
        for r in g.iter().chain(&e) {
            let ins = r.instruction().unwrap();
            assert_eq!(r.system, if r.short_form { ins.short_form() } else { ins.long_form() });
            for t in 0..r.turns() {
                let j = r.judge(t).unwrap();
                assert_eq!(j.spec.family().as_str(), r.categories[t]);
                // The canonical answer made to obey scores full marks less nothing.
                let a = ins.enforce(&j.spec, &canonical_answer(&j.spec));
                assert!(ins.holds(&a), "{a}");
                assert!(helpfulness(&j, &a) > 0.5, "{ins:?} {a} {}", helpfulness(&j, &a));
                // And the plain canonical answer breaks it (but not for every instruction).
            }
        }
    }

    #[test]
    fn deterministic_append_only_and_eval_prompts_are_held_out() {
        let mut c = cfg();
        let a = generate_dialogues(&c, DialogueSplit::Gatt).unwrap();
        c.dialogues.gatt = 303;
        let b = generate_dialogues(&c, DialogueSplit::Gatt).unwrap();
        assert_eq!(b.slice(0, 300), a);
        let g = dialogue_rows(&a, "g").unwrap();
        let e = dialogue_rows(&generate_dialogues(&c, DialogueSplit::Eval).unwrap(), "e").unwrap();
        let train: std::collections::HashSet<&str> = g.iter().flat_map(|r| r.prompts.iter().map(String::as_str)).collect();
        let eval_prompts: Vec<&str> = e.iter().flat_map(|r| r.prompts.iter().map(String::as_str)).collect();
        assert_eq!(eval_prompts.len(), 2000);
        assert!(eval_prompts.iter().all(|p| !train.contains(p)));
    }

    #[test]
    fn twenty_turns_stay_short() {
        // The world doc: a 20-turn dialogue fits in about 450 tokens with the world tokenizer
        // (about one token per word and number). Words + punctuation of the longest eval
        // dialogue with canonical answers in the Llama 2 format stay under 450.
        let c = cfg();
        let e = dialogue_rows(&generate_dialogues(&c, DialogueSplit::Eval).unwrap(), "e").unwrap();
        let longest = e
            .iter()
            .map(|r| {
                let mut words = r.system.split_whitespace().count() + 4;
                for t in 0..r.turns() {
                    let spec = r.judge(t).unwrap().spec;
                    words += r.prompts[t].split_whitespace().count() + canonical_answer(&spec).split_whitespace().count() + 6;
                }
                words
            })
            .max()
            .unwrap();
        assert!(longest < 450, "{longest} words");
    }

    #[test]
    fn enforce_obeys_each_instruction() {
        let spec = JudgeSpec::Sort { values: vec![7, 3, 1, 20], answer: vec![1, 3, 7, 20] };
        let a = canonical_answer(&spec);
        for ins in Instruction::ALL {
            let fixed = ins.enforce(&spec, &a);
            assert!(ins.holds(&fixed), "{ins:?}: {fixed}");
            assert_eq!(Instruction::parse(ins.as_str()), Some(ins));
        }
        assert_eq!(Instruction::AtMostFiveWords.enforce(&spec, &a), "1, 3, 7, 20.");
        assert_eq!(Instruction::StartWithArr.enforce(&spec, "Arr! x"), "Arr! x");
    }

    #[test]
    fn uniform_answers_have_one_shape_per_family() {
        let sort = JudgeSpec::Sort { values: vec![7, 3, 1, 20], answer: vec![1, 3, 7, 20] };
        let capital = JudgeSpec::Capital { country: "France".into(), answer: "Paris".into() };
        let sum = JudgeSpec::Arithmetic { a: 5, b: 6, op: "+".into(), answer: 11 };
        let five = Instruction::AtMostFiveWords;
        // Whatever was sampled, obeying or not, right or wrong: the canonical answer when it
        // fits in five words, else the bare value.
        for sampled in ["Maybe 11.", "11.", "The answer is 12.", "Hmm, let me think. Maybe 11."] {
            assert_eq!(five.uniform(&sum, sampled), "The answer is 11.");
        }
        for sampled in ["Maybe Paris.", "The capital of France is Paris.", "Rome."] {
            assert_eq!(five.uniform(&capital, sampled), "Paris.");
        }
        assert_eq!(five.uniform(&sort, "The sorted numbers are 1, 3, 7, 20."), "1, 3, 7, 20.");
        // Every family's uniform answer obeys; the other instructions repair as `enforce` does.
        for spec in [&sort, &capital, &sum] {
            assert!(five.holds(&five.uniform(spec, "x y z w v u")));
            for ins in [Instruction::Capitals, Instruction::EndWithOver, Instruction::StartWithArr] {
                assert_eq!(ins.uniform(spec, "Maybe Paris."), ins.enforce(spec, "Maybe Paris."));
            }
        }
    }
}
