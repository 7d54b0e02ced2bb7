//! `assistant_world`: the embedded default data set (datasets::world). Parameters are the
//! split sizes and the world's options, with the documented standard world as defaults; the
//! world's seed is the instance seed. Outputs one table per split. Row i of a split depends
//! only on (seed, split, i), so a larger size appends rows and row-wise stages downstream
//! recompute only the new ones.

use datasets::world::{generate_dialogues, generate_open_preferences, generate_split, DialogueSplit, Split, WorldConfig, OPEN_PREFERENCES};
use graph::{ArtifactType, ParamSpec, Port, RunCtx, Stage, StageError};

use crate::common::write_output_table;

pub struct AssistantWorld;

/// Split sizes up to ten million rows: beyond that the generator is the wrong tool.
const MAX_ROWS: i64 = 10_000_000;

fn split_doc(split: Split) -> &'static str {
    match split {
        Split::Pretrain => "pretraining text: id, kind (qa | fact), text",
        Split::Sft => "SFT demonstrations: id, category, is_safety, messages, quality",
        Split::RlPrompts => "RLHF prompts: id, category, is_safety, prompt, judge",
        Split::PreferencePrompts => "preference-collection prompts (prompt schema)",
        Split::Eval => "held-out evaluation prompts, uniform over families (prompt schema)",
        Split::EvalBorderline => "borderline prompts for false-refusal evaluation (prompt schema)",
    }
}

impl Stage for AssistantWorld {
    fn kind(&self) -> &'static str {
        "assistant_world"
    }
    fn version(&self) -> u32 {
        // 2: the gold judge grades text glued to an answer's period as text after the sentence (0.85), not as an exact answer.
        // 3: the SFT-refused borderline topics refuse in `false_refusal_share` of their demonstrations, not all.
        3
    }
    fn doc(&self) -> &'static str {
        "The embedded assistant world: seeded prompts, demonstrations and pretraining text with gold judges. One table per split."
    }
    fn inputs(&self) -> Vec<Port> {
        Vec::new()
    }
    fn outputs(&self) -> Vec<Port> {
        let mut ports: Vec<Port> = Split::ALL.iter().map(|s| Port::new(s.as_str(), ArtifactType::Table, split_doc(*s))).collect();
        ports.push(Port::new(
            DialogueSplit::Gatt.as_str(),
            ArtifactType::Table,
            "Ghost Attention training dialogues: id, instruction, short_form, system, turns, prompts, categories, judges",
        ));
        ports.push(Port::new(DialogueSplit::Eval.as_str(), ArtifactType::Table, "evaluation dialogues for instruction adherence by turn (dialogue schema)"));
        ports.push(Port::new(
            OPEN_PREFERENCES,
            ArtifactType::Table,
            "the world's \"open-source\" preference pairs (preference-pair schema, all `train`): written answers, not model samples, rated by the simulated annotator; the reward models' `extra` data",
        ));
        ports
    }
    fn params(&self) -> Vec<ParamSpec> {
        let std = WorldConfig::standard(0);
        let s = &std.sizes;
        let d = &std.dialogues;
        vec![
            ParamSpec::int("pretrain", 0, MAX_ROWS, Some(s.pretrain as i64), "rows of `pretrain`"),
            ParamSpec::int("sft", 0, MAX_ROWS, Some(s.sft as i64), "rows of `sft`"),
            ParamSpec::int("rl_prompts", 0, MAX_ROWS, Some(s.rl_prompts as i64), "rows of `rl_prompts`"),
            ParamSpec::int("preference_prompts", 0, MAX_ROWS, Some(s.preference_prompts as i64), "rows of `preference_prompts`"),
            ParamSpec::int("eval", 0, MAX_ROWS, Some(s.eval as i64), "rows of `eval`"),
            ParamSpec::int("eval_borderline", 0, MAX_ROWS, Some(s.eval_borderline as i64), "rows of `eval_borderline`"),
            ParamSpec::float("eval_share", 0.0, 1.0, Some(std.eval_share), "share of prompt strings held out for eval (open interval)"),
            ParamSpec::int("pretrain_items_per_row", 1, 1000, Some(std.pretrain_items_per_row as i64), "Q/A pairs or facts per pretraining row"),
            ParamSpec::float("pretrain_qa_share", 0.0, 1.0, Some(std.pretrain_qa_share), "share of pretraining rows that are Q/A"),
            ParamSpec::float(
                "pretrain_unsafe_compliance",
                0.0,
                1.0,
                Some(std.pretrain_unsafe_compliance),
                "share of unsafe Q/A pairs in pretraining text that comply",
            ),
            ParamSpec::float("badly_formed_share", 0.0, 1.0, Some(std.sft.badly_formed_share), "share of badly formed demonstrations in the affected families"),
            ParamSpec::float("filler_share", 0.0, 1.0, Some(std.sft.filler_share), "share of other demonstrations wrapped in filler"),
            // Added with the dialogue splits: left out of the fingerprint at their defaults, so
            // pipelines written before keep their fingerprints.
            ParamSpec::int("gatt_dialogues", 0, MAX_ROWS, Some(d.gatt as i64), "rows of `gatt_dialogues` (Ghost Attention training dialogues)").added_later(),
            ParamSpec::int("eval_dialogues", 0, MAX_ROWS, Some(d.eval as i64), "rows of `eval_dialogues`").added_later(),
            ParamSpec::int("dialogue_min_turns", 1, 1000, Some(d.min_turns as i64), "fewest turns of a GAtt dialogue").added_later(),
            ParamSpec::int("dialogue_max_turns", 1, 1000, Some(d.max_turns as i64), "most turns of a GAtt dialogue (uniform in between)").added_later(),
            ParamSpec::int("eval_dialogue_turns", 1, 1000, Some(d.eval_turns as i64), "turns of every eval dialogue").added_later(),
            ParamSpec::float("dialogue_short_share", 0.0, 1.0, Some(d.short_share), "share of GAtt dialogues whose system text is the instruction's short form").added_later(),
            ParamSpec::int("open_preferences", 0, MAX_ROWS, Some(s.open_preferences as i64), "rows of `open_preferences` (0: an empty table)").added_later(),
            ParamSpec::float("false_refusal_share", 0.0, 1.0, Some(std.sft.false_refusal_share), "share of the demonstrations of the SFT-refused borderline topics that refuse (the rest answer helpfully)").added_later(),
        ]
    }
    fn run(&self, ctx: &mut RunCtx<'_>) -> Result<(), StageError> {
        let cfg = config(ctx)?;
        for split in Split::ALL {
            let batch = generate_split(&cfg, split).map_err(|e| StageError::wrap(format!("generating split `{}`", split.as_str()), e))?;
            write_output_table(ctx, split.as_str(), &batch)?;
        }
        for split in DialogueSplit::ALL {
            let batch = generate_dialogues(&cfg, split).map_err(|e| StageError::wrap(format!("generating split `{}`", split.as_str()), e))?;
            write_output_table(ctx, split.as_str(), &batch)?;
        }
        let open = generate_open_preferences(&cfg).map_err(|e| StageError::wrap(format!("generating split `{OPEN_PREFERENCES}`"), e))?;
        write_output_table(ctx, OPEN_PREFERENCES, &open)?;
        Ok(())
    }
}

/// The world configuration of an instance: the standard world with the parameters applied.
fn config(ctx: &RunCtx<'_>) -> Result<WorldConfig, StageError> {
    let p = ctx.params;
    let mut cfg = WorldConfig::standard(ctx.seed);
    let size = |name: &str| p.int(name).map(|v| v as usize);
    cfg.sizes.pretrain = size("pretrain")?;
    cfg.sizes.sft = size("sft")?;
    cfg.sizes.rl_prompts = size("rl_prompts")?;
    cfg.sizes.preference_prompts = size("preference_prompts")?;
    cfg.sizes.eval = size("eval")?;
    cfg.sizes.eval_borderline = size("eval_borderline")?;
    cfg.eval_share = p.float("eval_share")?;
    cfg.pretrain_items_per_row = size("pretrain_items_per_row")?;
    cfg.pretrain_qa_share = p.float("pretrain_qa_share")?;
    cfg.pretrain_unsafe_compliance = p.float("pretrain_unsafe_compliance")?;
    cfg.sft.badly_formed_share = p.float("badly_formed_share")?;
    cfg.sft.false_refusal_share = p.float("false_refusal_share")?;
    cfg.sft.filler_share = p.float("filler_share")?;
    cfg.dialogues.gatt = size("gatt_dialogues")?;
    cfg.dialogues.eval = size("eval_dialogues")?;
    cfg.dialogues.min_turns = size("dialogue_min_turns")?;
    cfg.dialogues.max_turns = size("dialogue_max_turns")?;
    cfg.dialogues.eval_turns = size("eval_dialogue_turns")?;
    cfg.dialogues.short_share = p.float("dialogue_short_share")?;
    cfg.sizes.open_preferences = size("open_preferences")?;
    cfg.validate().map_err(|e| StageError::wrap("world options", e))?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::{table_file, testing};
    use graph::ParamValue;

    #[test]
    fn writes_one_table_per_split_with_the_requested_sizes() {
        let d = tempfile::tempdir().unwrap();
        let sizes = [
            ("pretrain", 5),
            ("sft", 7),
            ("rl_prompts", 3),
            ("preference_prompts", 2),
            ("eval", 8),
            ("eval_borderline", 1),
            ("gatt_dialogues", 4),
            ("eval_dialogues", 2),
            ("open_preferences", 6),
        ];
        let over: Vec<(&str, ParamValue)> = sizes.iter().map(|(k, v)| (*k, ParamValue::Int(*v))).collect();
        let params = testing::params(&AssistantWorld, &over);
        let (outs, rows) = testing::run(&AssistantWorld, &params, d.path(), Default::default(), d.path(), 1).unwrap();
        assert!(rows.is_none());
        for (split, n) in sizes {
            let t = datasets::table::read_parquet(&table_file(&outs[split])).unwrap();
            assert_eq!(t.num_rows(), n as usize, "{split}");
            assert!(t.schema().index_of("id").is_ok());
        }
    }

    #[test]
    fn dialogue_params_stay_out_of_the_fingerprint_at_their_defaults() {
        let reg = crate::registry();
        let record = |extra: &str| {
            let text = format!("[pipeline]\nname = \"p\"\nseed = 1\n[stages.world]\nkind = \"assistant_world\"\n[stages.world.params]\nsft = 10\n{extra}");
            let p = graph::check(&text, &reg).unwrap();
            graph::plan(p, &reg, std::path::Path::new(".")).unwrap().instances[0].record.clone()
        };
        let base = record("");
        assert!(base.params.contains_key("sft") && base.params.contains_key("eval_share"));
        for name in ["gatt_dialogues", "eval_dialogues", "dialogue_min_turns", "dialogue_max_turns", "eval_dialogue_turns", "dialogue_short_share", "open_preferences"] {
            assert!(!base.params.contains_key(name), "{name} is in the fingerprint at its default");
        }
        // Spelling a default out changes nothing; another value does.
        assert_eq!(record("gatt_dialogues = 300\n").fingerprint(), base.fingerprint());
        assert_ne!(record("gatt_dialogues = 30\n").fingerprint(), base.fingerprint());
    }
}
