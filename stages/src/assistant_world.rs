//! `assistant_world`: the embedded default data set (datasets::world). Parameters are the
//! split sizes and the world's options, with the documented standard world as defaults; the
//! world's seed is the instance seed. Outputs one table per split. Row i of a split depends
//! only on (seed, split, i), so a larger size appends rows and row-wise stages downstream
//! recompute only the new ones.

use datasets::world::{generate_split, Split, WorldConfig};
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
        1
    }
    fn doc(&self) -> &'static str {
        "The embedded assistant world: seeded prompts, demonstrations and pretraining text with gold judges. One table per split."
    }
    fn inputs(&self) -> Vec<Port> {
        Vec::new()
    }
    fn outputs(&self) -> Vec<Port> {
        Split::ALL.iter().map(|s| Port::new(s.as_str(), ArtifactType::Table, split_doc(*s))).collect()
    }
    fn params(&self) -> Vec<ParamSpec> {
        let std = WorldConfig::standard(0);
        let s = &std.sizes;
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
        ]
    }
    fn run(&self, ctx: &mut RunCtx<'_>) -> Result<(), StageError> {
        let cfg = config(ctx)?;
        for split in Split::ALL {
            let batch = generate_split(&cfg, split).map_err(|e| StageError::wrap(format!("generating split `{}`", split.as_str()), e))?;
            write_output_table(ctx, split.as_str(), &batch)?;
        }
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
    cfg.sft.filler_share = p.float("filler_share")?;
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
        let sizes = [("pretrain", 5), ("sft", 7), ("rl_prompts", 3), ("preference_prompts", 2), ("eval", 8), ("eval_borderline", 1)];
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
}
