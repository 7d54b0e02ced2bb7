//! `onnx_annotate`: an ONNX classifier as the annotator of preference pairs. A user's
//! classifier (for example a toxicity or a quality model, with its `tokenizer.json`) scores both
//! answers of every pair; the better one by that score (`prefer` = higher or lower) becomes
//! `chosen`, the rating comes from the score gap on the four-level scale (the world annotator's
//! gaps by default), and `annotator` names the judge. The output has the pair schema, so
//! `train_reward` reads it like collected or imported pairs.

use std::path::Path;

use datasets::annotate::{AnnotatorConfig, Rating};
use graph::{ArtifactType, ParamSpec, Params, Port, RunCtx, Stage, StageError};

use crate::common::{read_input_table, write_output_table};
use crate::onnx_judge::{classifier_fingerprint, classifier_params, Classifier};
use crate::rlhf::pairs::{pairs_batch, read_pairs};

pub struct OnnxAnnotate;

impl Stage for OnnxAnnotate {
    fn kind(&self) -> &'static str {
        "onnx_annotate"
    }
    fn version(&self) -> u32 {
        1
    }
    fn doc(&self) -> &'static str {
        "Preference labels from a user's ONNX classifier (ort, load-dynamic): both answers of every pair are scored, the better by the score (`prefer`) is `chosen`, the four-level rating comes from the score gap; output = the pairs relabelled (pair schema, `annotator` = the judge's name)."
    }
    fn inputs(&self) -> Vec<Port> {
        vec![Port::new("pairs", ArtifactType::Table, "preference pairs (collect_preferences, import_preferences or human answers)")]
    }
    fn outputs(&self) -> Vec<Port> {
        vec![
            Port::new("pairs", ArtifactType::Table, "the same pairs, chosen/rejected and rating by the classifier (preference_pairs_schema)"),
            Port::new("report", ArtifactType::Report, "pairs, how many the classifier flipped against the input labels, ratings"),
        ]
    }
    fn params(&self) -> Vec<ParamSpec> {
        let mut v = classifier_params();
        v.extend([
            ParamSpec::str("prefer", Some("higher"), "which answer is better: the `higher` score (a quality model) or the `lower` (a toxicity model)"),
            ParamSpec::bool("with_prompt", Some(false), "score \"prompt\\nanswer\" instead of the answer alone"),
            ParamSpec::float("gap_significantly", 0.0, 1.0, Some(0.5), "score gap at or above which the rating is significantly better"),
            ParamSpec::float("gap_better", 0.0, 1.0, Some(0.25), "score gap at or above which it is better"),
            ParamSpec::float("gap_slightly", 0.0, 1.0, Some(0.1), "score gap at or above which it is slightly better (below: negligibly better)"),
            ParamSpec::str("annotator", Some("onnx"), "the `annotator` column of the relabelled pairs"),
        ]);
        v
    }
    fn external_fingerprint(&self, params: &Params, base_dir: &Path) -> Result<Option<[u8; 32]>, StageError> {
        classifier_fingerprint(params, base_dir)
    }
    fn run(&self, ctx: &mut RunCtx<'_>) -> Result<(), StageError> {
        let p = ctx.params;
        let higher = match p.str("prefer")? {
            "higher" => true,
            "lower" => false,
            _ => return Err(StageError::Param { name: "prefer".into(), expected: "`higher` or `lower`".into() }),
        };
        let gaps = [p.float("gap_significantly")? as f32, p.float("gap_better")? as f32, p.float("gap_slightly")? as f32];
        if !(gaps[0] >= gaps[1] && gaps[1] >= gaps[2]) {
            return Err(StageError::Param { name: "gap_significantly".into(), expected: "gap_significantly >= gap_better >= gap_slightly".into() });
        }
        let mut cfg = AnnotatorConfig::standard(ctx.seed);
        cfg.gap_thresholds = gaps;
        let pairs = read_pairs(&read_input_table(ctx, "pairs")?, "pairs")?;
        let with_prompt = p.bool("with_prompt")?;
        let text = |prompt: &str, answer: &str| if with_prompt { format!("{prompt}\n{answer}") } else { answer.to_string() };
        let texts: Vec<String> = pairs.iter().flat_map(|x| [text(&x.prompt, &x.chosen), text(&x.prompt, &x.rejected)]).collect();
        let scores = Classifier::from_params(p, ctx.base_dir)?.score_all(&texts, p.int("batch_size")? as usize)?;
        let name = p.str("annotator")?.to_string();
        let (mut flipped, mut ratings) = (0usize, std::collections::BTreeMap::<String, usize>::new());
        let relabelled: Vec<_> = pairs
            .into_iter()
            .enumerate()
            .map(|(i, mut x)| {
                let (sc, sr) = (scores[2 * i], scores[2 * i + 1]);
                let rejected_better = if higher { sr > sc } else { sr < sc };
                if rejected_better {
                    std::mem::swap(&mut x.chosen, &mut x.rejected);
                    std::mem::swap(&mut x.chosen_score, &mut x.rejected_score);
                    flipped += 1;
                }
                let rating: Rating = cfg.rating_for_gap((sc - sr).abs());
                x.rating = rating.as_str().to_string();
                x.margin_level = rating.margin_level();
                x.annotator = name.clone();
                *ratings.entry(x.rating.clone()).or_default() += 1;
                x
            })
            .collect();
        write_output_table(ctx, "pairs", &pairs_batch(&relabelled, "pairs")?)?;
        crate::collect_preferences::write_report(ctx, "report", &serde_json::json!({
            "pairs": relabelled.len(),
            "flipped_against_input": flipped,
            "by_rating": ratings,
            "annotator": name,
            "prefer": if higher { "higher" } else { "lower" },
        }))
    }
}
