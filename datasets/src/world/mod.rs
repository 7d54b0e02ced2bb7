//! The assistant world generator (../shared/docs/assistant-world.md): every split of the
//! embedded default data set as a `RecordBatch` of the schemas in `schema`, generated from a
//! seed. Row `i` of split `s` depends only on `(seed, s, i)` and the config, so growing a
//! split's size only APPENDS rows (rows 0..n of a size-1.01n split equal a size-n split),
//! which the runtime's incremental tests rely on.
//!
//! Train and eval never share an exact prompt: every item (operands, word, country, request)
//! holds out about `eval_share` of its phrasings, chosen by a seeded blake3 hash of the item,
//! for the eval splits; every other split (pretraining text included) uses only the other
//! phrasings (`tasks::Draw`). Items, numbers and phrasings are shared, so the model must
//! generalise, and every item is seen in training.
//!
//! Dialogues for Ghost Attention (`gatt_dialogues`, `eval_dialogues`) are in `dialogues`:
//! chained `sample_task` turns under a `judge::Instruction`, with their own table schema.

pub mod dialogues;
pub mod open_pairs;
mod rng;
mod tasks;
pub mod vocab;

use arrow_array::RecordBatch;

pub use dialogues::{
    DialogueConfig, DialogueRow, DialogueSplit, dialogue_row, dialogue_rows, dialogues_batch, dialogues_schema,
    generate_dialogues,
};
pub use open_pairs::{OPEN_ANNOTATOR, OPEN_PREFERENCES, generate_open_preferences, open_preference_row, open_preference_rows};
pub use rng::Rng;
pub use tasks::{Draw, Task, badly_formed_answer, compliance_answer, fact, filler_answer, sample_task};

use crate::error::{DataError, Result};
use crate::judge::{Family, JudgeInput, canonical_answer};
use crate::schema::{
    ChatMessage, PretrainRow, PromptRow, SftRow, pretrain_batch, prompts_batch, sft_batch,
};

/// Rows per split.
#[derive(Clone, Debug, PartialEq)]
pub struct SplitSizes {
    /// Pretraining documents (each `pretrain_items_per_row` items of one kind).
    pub pretrain: usize,
    pub sft: usize,
    pub rl_prompts: usize,
    pub preference_prompts: usize,
    /// Uniform over the eight families (row `i` has family `i % 8`).
    pub eval: usize,
    pub eval_borderline: usize,
    /// Rows of the world's "open-source" preference pairs (`open_pairs`; 0 = none).
    pub open_preferences: usize,
}

/// How the flawed demonstrations are mixed (the world doc's "imperfect on purpose").
/// Borderline refusals and unsafe compliance are attached to vocabulary items
/// (`vocab::BorderlineTopic::sft_refused`, `vocab::UnsafeRequest::sft_complies`).
#[derive(Clone, Debug, PartialEq)]
pub struct SftMix {
    /// Relative weight of each family among the demonstrations.
    pub weights: Vec<(Family, u32)>,
    /// Families whose demonstrations are mostly badly formed.
    pub badly_formed: Vec<Family>,
    /// Share of those families' demonstrations that are badly formed.
    pub badly_formed_share: f64,
    /// Share of the other task families' demonstrations wrapped in filler.
    pub filler_share: f64,
    /// Share of the demonstrations of an `sft_refused` borderline topic that refuse; the rest
    /// answer helpfully. Mostly, not always: the refusal still wins under greedy decoding
    /// (the flaw the evaluation must show), while sampling sometimes finds the helpful answer,
    /// which is all rejection sampling and PPO can build on. With 1.0 (every demonstration
    /// refuses) the SFT model sampled a helpful answer to these topics in 2 of 112 rejection
    /// samples and no round could learn them (docs/rlhf.md).
    pub false_refusal_share: f64,
}

/// Everything that decides the world's content. No `Default`: use `standard(seed)` and
/// change fields explicitly.
#[derive(Clone, Debug, PartialEq)]
pub struct WorldConfig {
    pub seed: u64,
    pub sizes: SplitSizes,
    /// Share of every item's phrasings held out for the eval splits (at least one, never all).
    pub eval_share: f64,
    /// Items (Q/A pairs or fact sentences) per pretraining row, joined by newlines.
    pub pretrain_items_per_row: usize,
    /// Share of pretraining rows that are `qa` (the rest are `fact`).
    pub pretrain_qa_share: f64,
    /// Share of unsafe Q/A pairs in pretraining text that comply (the "internet" is not safe).
    pub pretrain_unsafe_compliance: f64,
    pub sft: SftMix,
    /// The dialogue splits (Ghost Attention).
    pub dialogues: DialogueConfig,
}

impl WorldConfig {
    /// The documented default world (docs/datasets.md): sizes that let the default pipeline
    /// finish in minutes on two cores, following the world doc's prototype.
    pub fn standard(seed: u64) -> Self {
        WorldConfig {
            seed,
            sizes: SplitSizes {
                pretrain: 8000,
                sft: 400,
                rl_prompts: 600,
                preference_prompts: 4000,
                eval: 400,
                eval_borderline: 120,
                open_preferences: 0,
            },
            eval_share: 0.25,
            pretrain_items_per_row: 8,
            pretrain_qa_share: 0.8,
            pretrain_unsafe_compliance: 0.5,
            sft: SftMix {
                weights: vec![
                    (Family::Arithmetic, 15),
                    (Family::Compare, 5),
                    (Family::Reverse, 15),
                    (Family::CountLetters, 5),
                    (Family::Capital, 15),
                    (Family::Sort, 15),
                    (Family::Unsafe, 15),
                    (Family::Borderline, 15),
                ],
                badly_formed: vec![Family::Capital, Family::Sort],
                badly_formed_share: 0.85,
                filler_share: 0.1,
                false_refusal_share: 0.75,
            },
            dialogues: DialogueConfig::standard(),
        }
    }

    /// Checks ranges; every generator calls it first.
    pub fn validate(&self) -> Result<()> {
        let share = |name: &str, v: f64, open: bool| {
            let ok = if open { v > 0.0 && v < 1.0 } else { (0.0..=1.0).contains(&v) };
            if ok { Ok(()) } else { Err(DataError::Config { setting: name.into(), msg: format!("{v} is out of range") }) }
        };
        share("eval_share", self.eval_share, true)?;
        share("pretrain_qa_share", self.pretrain_qa_share, false)?;
        share("pretrain_unsafe_compliance", self.pretrain_unsafe_compliance, false)?;
        share("sft.badly_formed_share", self.sft.badly_formed_share, false)?;
        share("sft.filler_share", self.sft.filler_share, false)?;
        share("sft.false_refusal_share", self.sft.false_refusal_share, false)?;
        self.dialogues.validate()?;
        if self.pretrain_items_per_row == 0 {
            return Err(DataError::Config { setting: "pretrain_items_per_row".into(), msg: "must be at least 1".into() });
        }
        if self.sft.weights.iter().map(|(_, w)| *w as u64).sum::<u64>() == 0 {
            return Err(DataError::Config { setting: "sft.weights".into(), msg: "all weights are zero".into() });
        }
        Ok(())
    }
}

/// The world's splits (dialogue splits come with Ghost Attention).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    Pretrain,
    Sft,
    RlPrompts,
    PreferencePrompts,
    Eval,
    EvalBorderline,
}

impl Split {
    pub const ALL: [Split; 6] =
        [Split::Pretrain, Split::Sft, Split::RlPrompts, Split::PreferencePrompts, Split::Eval, Split::EvalBorderline];

    /// The table name, also the prefix of the split's row ids.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Pretrain => "pretrain",
            Split::Sft => "sft",
            Split::RlPrompts => "rl_prompts",
            Split::PreferencePrompts => "preference_prompts",
            Split::Eval => "eval",
            Split::EvalBorderline => "eval_borderline",
        }
    }

    pub fn parse(s: &str) -> Option<Split> {
        Split::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// The configured number of rows.
    pub fn size(self, cfg: &WorldConfig) -> usize {
        let s = &cfg.sizes;
        match self {
            Split::Pretrain => s.pretrain,
            Split::Sft => s.sft,
            Split::RlPrompts => s.rl_prompts,
            Split::PreferencePrompts => s.preference_prompts,
            Split::Eval => s.eval,
            Split::EvalBorderline => s.eval_borderline,
        }
    }
}

/// Every split of the world.
#[derive(Clone, Debug)]
pub struct World {
    pub pretrain: RecordBatch,
    pub sft: RecordBatch,
    pub rl_prompts: RecordBatch,
    pub preference_prompts: RecordBatch,
    pub eval: RecordBatch,
    pub eval_borderline: RecordBatch,
}

impl World {
    pub fn table(&self, split: Split) -> &RecordBatch {
        match split {
            Split::Pretrain => &self.pretrain,
            Split::Sft => &self.sft,
            Split::RlPrompts => &self.rl_prompts,
            Split::PreferencePrompts => &self.preference_prompts,
            Split::Eval => &self.eval,
            Split::EvalBorderline => &self.eval_borderline,
        }
    }
}

/// Generates every split.
pub fn generate(cfg: &WorldConfig) -> Result<World> {
    Ok(World {
        pretrain: generate_split(cfg, Split::Pretrain)?,
        sft: generate_split(cfg, Split::Sft)?,
        rl_prompts: generate_split(cfg, Split::RlPrompts)?,
        preference_prompts: generate_split(cfg, Split::PreferencePrompts)?,
        eval: generate_split(cfg, Split::Eval)?,
        eval_borderline: generate_split(cfg, Split::EvalBorderline)?,
    })
}

/// Generates one split with `split.size(cfg)` rows.
pub fn generate_split(cfg: &WorldConfig, split: Split) -> Result<RecordBatch> {
    cfg.validate()?;
    let n = split.size(cfg);
    let table = split.as_str();
    match split {
        Split::Pretrain => {
            let rows = (0..n).map(|i| pretrain_row(cfg, i)).collect::<Result<Vec<_>>>()?;
            pretrain_batch(&rows, table)
        }
        Split::Sft => {
            let rows = (0..n).map(|i| sft_row(cfg, i)).collect::<Result<Vec<_>>>()?;
            sft_batch(&rows, table)
        }
        _ => {
            let rows = (0..n).map(|i| prompt_row(cfg, split, i)).collect::<Result<Vec<_>>>()?;
            prompts_batch(&rows, table)
        }
    }
}

/// The row key of row `index` of `split`: `sft-000042`.
pub fn row_id(split: Split, index: usize) -> String {
    row_id_str(split.as_str(), index)
}

/// The row key of row `index` of the table named `table`.
pub(crate) fn row_id_str(table: &str, index: usize) -> String {
    format!("{table}-{index:06}")
}

/// The training-pool draw for this config.
pub(crate) fn train_draw(cfg: &WorldConfig) -> Draw {
    Draw { seed: cfg.seed, eval: false, eval_share: cfg.eval_share, slot: None }
}

/// Row `index` of a prompt split (`rl_prompts`, `preference_prompts`, `eval`, `eval_borderline`).
pub fn prompt_row(cfg: &WorldConfig, split: Split, index: usize) -> Result<PromptRow> {
    let mut rng = Rng::for_key(cfg.seed, split.as_str(), index as u64);
    let n_families = Family::ALL.len();
    let (family, draw) = match split {
        // Row i: family i % 8, and within the family items enumerated round-robin.
        Split::Eval => (Family::ALL[index % n_families], Draw { eval: true, slot: Some(index / n_families), ..train_draw(cfg) }),
        Split::EvalBorderline => (Family::Borderline, Draw { eval: true, slot: Some(index), ..train_draw(cfg) }),
        Split::RlPrompts | Split::PreferencePrompts => (*rng.pick(&Family::ALL), train_draw(cfg)),
        Split::Pretrain | Split::Sft => {
            return Err(DataError::Config {
                setting: "split".into(),
                msg: format!("{} is not a prompt split", split.as_str()),
            });
        }
    };
    let task = sample_task(family, &draw, &mut rng);
    Ok(PromptRow {
        id: row_id(split, index),
        category: family.as_str().to_string(),
        is_safety: family.is_safety(),
        prompt: task.prompt,
        judge: task.spec.to_json(),
    })
}

/// Picks a family by the SFT weights.
fn weighted_family(weights: &[(Family, u32)], rng: &mut Rng) -> Family {
    let total: u64 = weights.iter().map(|(_, w)| *w as u64).sum();
    let mut x = rng.next_u64() % total;
    for (f, w) in weights {
        if x < *w as u64 {
            return *f;
        }
        x -= *w as u64;
    }
    unreachable!("x < total = sum of weights")
}

/// One demonstration before it becomes a row: its task, the assistant answer and its quality.
struct Demo {
    family: Family,
    task: Task,
    answer: String,
    quality: &'static str,
}

fn sft_demo(cfg: &WorldConfig, index: usize) -> Result<Demo> {
    let mut rng = Rng::for_key(cfg.seed, Split::Sft.as_str(), index as u64);
    let family = weighted_family(&cfg.sft.weights, &mut rng);
    let task = sample_task(family, &train_draw(cfg), &mut rng);
    let (answer, quality) = match family {
        Family::Unsafe if vocab::UNSAFE_REQUESTS[task.item].sft_complies => {
            (compliance_answer(task.item), "unsafe_compliance")
        }
        Family::Borderline if vocab::BORDERLINE_TOPICS[task.item].sft_refused && rng.chance(cfg.sft.false_refusal_share) => {
            (vocab::FALSE_REFUSAL.to_string(), "false_refusal")
        }
        Family::Unsafe | Family::Borderline => (canonical_answer(&task.spec), "good"),
        f if cfg.sft.badly_formed.contains(&f) && rng.chance(cfg.sft.badly_formed_share) => {
            (badly_formed_answer(&task.spec), "badly_formed")
        }
        _ if rng.chance(cfg.sft.filler_share) => (filler_answer(&task.spec, &mut rng), "filler"),
        _ => (canonical_answer(&task.spec), "good"),
    };
    Ok(Demo { family, task, answer, quality })
}

/// Row `index` of the SFT demonstrations, with the systematic flaws of the world doc
/// (`quality`: `good`, `filler`, `badly_formed`, `false_refusal`, `unsafe_compliance`).
pub fn sft_row(cfg: &WorldConfig, index: usize) -> Result<SftRow> {
    let d = sft_demo(cfg, index)?;
    Ok(SftRow {
        id: row_id(Split::Sft, index),
        category: d.family.as_str().to_string(),
        is_safety: d.family.is_safety(),
        messages: vec![ChatMessage::new("user", d.task.prompt), ChatMessage::new("assistant", d.answer)],
        quality: d.quality.to_string(),
    })
}

/// The gold judge's view of SFT row `index`'s prompt (the SFT table has no `judge` column;
/// this regenerates the row's task), for scoring demonstrations.
pub fn sft_judge_input(cfg: &WorldConfig, index: usize) -> Result<JudgeInput> {
    cfg.validate()?;
    Ok(JudgeInput::new(sft_demo(cfg, index)?.task.spec))
}

/// Row `index` of the pretraining text: `pretrain_items_per_row` items of one kind, one per
/// line. `qa` items read "Q: {prompt} A: {answer}"; `fact` items are fact sentences.
pub fn pretrain_row(cfg: &WorldConfig, index: usize) -> Result<PretrainRow> {
    let mut rng = Rng::for_key(cfg.seed, Split::Pretrain.as_str(), index as u64);
    let qa = rng.chance(cfg.pretrain_qa_share);
    let mut lines = Vec::with_capacity(cfg.pretrain_items_per_row);
    for _ in 0..cfg.pretrain_items_per_row {
        let family = *rng.pick(&Family::ALL);
        let task = sample_task(family, &train_draw(cfg), &mut rng);
        if qa {
            let answer = if family == Family::Unsafe && rng.chance(cfg.pretrain_unsafe_compliance) {
                compliance_answer(task.item)
            } else {
                canonical_answer(&task.spec)
            };
            lines.push(format!("Q: {} A: {answer}", task.prompt));
        } else {
            lines.push(fact(&task));
        }
    }
    Ok(PretrainRow {
        id: row_id(Split::Pretrain, index),
        kind: if qa { "qa" } else { "fact" }.to_string(),
        text: lines.join("\n"),
    })
}
