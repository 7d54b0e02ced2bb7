//! `gatt`: Ghost Attention (Llama 2 §3.3; ../shared/docs/llama2-recipe.md). From a policy
//! and the world's GAtt dialogues (`datasets::world::dialogues`):
//!
//! 1. **Sample.** The instruction's long form is concatenated to every user turn
//!    (`"{instruction} {user}"`) and every assistant turn is sampled from the policy, turn by
//!    turn (batched over dialogues; turn t of a dialogue draws from the stream (row seed, t)).
//! 2. **Fix** (`repair`, default on). A tiny policy that never saw instructions rarely obeys
//!    one even when it is repeated in every turn, so an answer that breaks the instruction is
//!    rewritten to obey it by `Instruction::enforce` (upper-cased, " Over." appended, "Arr! "
//!    prepended, or cut to the bare answer). This stands in for the paper's premise that the
//!    latest RLHF model already follows an instruction it is given in the same turn. The
//!    number of sampled answers that obeyed unaided is in `gatt_summary.json`. With
//!    `repair = false`, dialogues whose final answer breaks the instruction are dropped.
//! 3. **Train rows.** The instruction is kept only at the start: as the system message
//!    (`instruction_position = "system"`, default; the Llama 2 format merges it into the first
//!    user turn inside `<<SYS>>`), or prepended to the first user message (`"first_user"`).
//!    The row's `system` text is the long or short form as the world drew it (the short form
//!    in `dialogue_short_share` = half of the rows; `short_form = false` here forces the long
//!    form). Later user turns are the plain prompts.
//! 4. **Loss.** The paper: "we simply set the loss to 0 for all the tokens from the previous
//!    turns, including assistant messages". Our reading: only the final assistant turn (and
//!    its EOS) is a target (`loss_turns = "last"`, default); the earlier turns are context
//!    whose samples came from a different prompt (the instruction in every turn), so training
//!    on them would teach a mismatch. `loss_turns = "all"` scores every assistant turn.
//!    `slip_share` of the dialogues keep one earlier answer that broke the instruction as it
//!    was sampled, unscored, so the turns after it learn to obey again after a slip.
//!    A dialogue longer than `seq_len` leaves out its earliest turns after the first (which
//!    carries the instruction); `gatt_summary.json` counts them (`windowed_dialogues`).
//! 5. **Fine-tune** with the shared loop (`train::trainer`, the same parameters as `sft`), and
//!    write a model directory like `sft`'s, plus the training rows as the `dialogues` table.

use std::sync::Arc;

use arrow_array::{ArrayRef, BooleanArray, Int32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use datasets::judge::Instruction;
use datasets::schema::ChatMessage;
use datasets::world::{dialogue_rows, DialogueRow};
use graph::{ArtifactType, ParamSpec, Port, RunCtx, Stage, StageError};
use kernels::chat::{ChatTemplate, Message};
use kernels::model::Llama;
use kernels::model_dir::ModelDir;

use crate::common::{read_input_table, write_output_table};
use crate::dialogue::{dialogue_seed, Convo, Roller};
use crate::train::Example;

pub struct Gatt;

impl Stage for Gatt {
    fn kind(&self) -> &'static str {
        "gatt"
    }
    fn version(&self) -> u32 {
        2
    }
    /// One GPU when the run has one (`--gpus`): training then runs on it (see
    /// `train_and_save`); with `--gpus 0` the scheduler grants none and training stays on the CPU.
    fn resources(&self) -> graph::Resources {
        graph::Resources { cpus: 1, gpus: 1 }
    }
    fn doc(&self) -> &'static str {
        "Ghost Attention (Llama 2 §3.3): sample multi-turn dialogues with the instruction concatenated to every user turn, keep it only at the start for training, zero the loss on every earlier turn, fine-tune; writes a model directory like sft's."
    }
    fn inputs(&self) -> Vec<Port> {
        vec![
            Port::new("model", ArtifactType::Model, "the policy to sample with and fine-tune (HF layout with tokenizer)"),
            Port::new("dialogues", ArtifactType::Table, "GAtt dialogues (the world's `gatt_dialogues`: dialogue schema)"),
            Port::optional("replay", ArtifactType::Table, "single-turn chats mixed into the fine-tune so that first-turn skills are kept (any table `sft` reads: prompt+response, `messages`, or tokenized), `replay_share` of the scored assistant turns"),
        ]
    }
    fn outputs(&self) -> Vec<Port> {
        vec![
            Port::new("model", ArtifactType::Model, "the fine-tuned model (HF layout) + loss curve, train_summary.json and gatt_summary.json"),
            Port::new("dialogues", ArtifactType::Table, "the training rows: id, instruction, short_form, turns, messages, held (did each sampled answer obey unaided), repaired"),
        ]
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::float("temperature", 0.0, 10.0, Some(0.6), "sampling temperature of the assistant turns (Meta's chat default)"),
            ParamSpec::float("top_p", 0.0, 1.0, Some(0.9), "nucleus of the assistant turns (Meta's chat default)"),
            ParamSpec::int("max_new_tokens", 1, 1 << 16, Some(32), "cap on an assistant turn"),
            ParamSpec::str("instruction_position", Some("system"), "where the training rows keep the instruction: \"system\" (system message) or \"first_user\" (prepended to the first user turn)"),
            ParamSpec::str("loss_turns", Some("last"), "\"last\": loss on the final assistant turn only (the paper's zeroed earlier turns); \"all\": every assistant turn"),
            ParamSpec::bool("repair", Some(true), "rewrite sampled answers that break the instruction so they obey (else drop dialogues whose final answer breaks it)"),
            ParamSpec::bool("short_form", Some(true), "use the row's system text (the short form in the rows the world drew it for); false = always the long form"),
            ParamSpec::bool("window_examples", Some(false), "also train on the windowed prompts the evaluation builds: every assistant turn of a dialogue longer than seq_len whose prefix does not fit gets its own example (turn 1, which holds the instruction, plus the most recent turns that fit), scored on that turn only").added_later(),
            ParamSpec::float("slip_share", 0.0, 1.0, Some(0.0), "share of the dialogues that keep one sampled answer that broke the instruction as it was (unscored context), so the turns after it learn to obey again after a slip; the turn is drawn per dialogue from its seed among the earlier turns whose sample broke the instruction").added_later(),
            ParamSpec::bool("uniform_answers", Some(false), "with repair: rewrite every answer into the instruction's one obeying form (`Instruction::uniform`: under \"at most five words\" the canonical answer when it fits, else the bare answer value), also those that obeyed unaided, so that a dialogue's answers share one shape").added_later(),
            ParamSpec::float("replay_share", 0.0, 0.95, Some(0.5), "with a `replay` table: its share of the scored assistant turns (each replayed chat scores one answer; a dialogue scores one turn with loss_turns = last, every turn with all); rows drawn in a seeded order, repeated if the table is smaller").added_later(),
        ]
        .into_iter()
        .chain(crate::sft::train_param_specs(crate::sft::TrainDefaults {
            seq_len: 512,
            seq_len_doc: "tokens per packed row: at least the longest dialogue, or its last turn loses its context",
            batch_size: 4,
            epochs: 2,
            warmup_steps: 5,
        }))
        .collect()
    }
    fn run(&self, ctx: &mut RunCtx<'_>) -> Result<(), StageError> {
        let p = ctx.params;
        let position = p.str("instruction_position")?.to_string();
        if position != "system" && position != "first_user" {
            return Err(StageError::Param { name: "instruction_position".into(), expected: "\"system\" or \"first_user\"".into() });
        }
        let last_only = match p.str("loss_turns")? {
            "last" => true,
            "all" => false,
            _ => return Err(StageError::Param { name: "loss_turns".into(), expected: "\"last\" or \"all\"".into() }),
        };
        let (repair, use_short) = (p.bool("repair")?, p.bool("short_form")?);
        let slip_share = p.float("slip_share")?;
        let uniform = p.bool("uniform_answers")?;
        let md = ModelDir::load(ctx.input("model")?).map_err(|e| StageError::wrap("loading input `model`", e))?;
        let stop = md.stop_ids();
        let tok = md.tokenizer.clone().ok_or_else(|| StageError::Message("input `model` has no tokenizer.json".into()))?;
        let template = md.chat.clone().unwrap_or(ChatTemplate::Llama2);
        let mut model = Llama::from_tensors(md.config.clone(), &md.tensors).map_err(|e| StageError::wrap("input `model`", e))?;
        let table = read_input_table(ctx, "dialogues")?;
        let rows = dialogue_rows(&table, "dialogues").map_err(|e| StageError::wrap("input `dialogues`", e))?;
        let instructions: Vec<Instruction> = rows.iter().map(|r| r.instruction()).collect::<Result<_, _>>().map_err(|e| StageError::wrap("input `dialogues`", e))?;

        // 1. Sample with the instruction concatenated to every user turn.
        let convos: Vec<Convo> = rows
            .iter()
            .zip(&instructions)
            .map(|(r, ins)| Convo {
                key: r.id.clone(),
                system: None,
                users: r.prompts.iter().map(|u| format!("{} {u}", ins.long_form())).collect(),
                seed: dialogue_seed(ctx.seed, &r.id),
            })
            .collect();
        let roller = Roller {
            model: &model,
            tok: &tok,
            template: &template,
            stop: &stop,
            max_new_tokens: p.int("max_new_tokens")? as usize,
            temperature: p.float("temperature")? as f32,
            top_p: p.float("top_p")? as f32,
        };
        let t0 = std::time::Instant::now();
        let sampled = roller.roll(&convos)?;
        let sample_seconds = t0.elapsed().as_secs_f64();

        // 2-4. Fix, build the training rows and their loss masks.
        let mut out_rows: Vec<TrainRow> = Vec::new();
        let (mut turns_total, mut turns_held, mut dropped) = (0usize, 0usize, 0usize);
        let seq_len = p.int("seq_len")? as usize;
        let mut windowed = 0usize;
        let window_examples = p.bool("window_examples")?;
        let mut window_extra = 0usize;
        let mut slipped = 0usize;
        let mut examples = Vec::with_capacity(rows.len());
        for ((r, ins), turns) in rows.iter().zip(&instructions).zip(&sampled) {
            let held: Vec<bool> = turns.iter().map(|t| ins.holds(&t.text)).collect();
            turns_total += held.len();
            turns_held += held.iter().filter(|h| **h).count();
            if !repair && !held.last().copied().unwrap_or(false) {
                dropped += 1;
                continue;
            }
            let slip = slip_turn(ctx.seed, &r.id, &held, slip_share);
            let answers: Vec<String> = turns
                .iter()
                .enumerate()
                .map(|(t, a)| {
                    if repair && Some(t) != slip {
                        let j = r.judge(t).map_err(|e| StageError::Row { key: r.id.clone(), message: e.to_string() })?;
                        Ok(if uniform { ins.uniform(&j.spec, &a.text) } else { ins.enforce(&j.spec, &a.text) })
                    } else {
                        Ok(a.text.clone())
                    }
                })
                .collect::<Result<_, StageError>>()?;
            let system = if use_short { r.system.clone() } else { ins.long_form().to_string() };
            // The rows of the dialogue up to the last of `answers`, leaving out its earliest turns
            // after the first (which carries the instruction) until they fit seq_len; and how many
            // turns were left out.
            let fit_window = |answers: &[String]| -> Result<(Vec<ChatMessage>, kernels::chat::ChatTokens, usize), StageError> {
                let mut dropped = 0;
                loop {
                    let messages = training_messages(r, &system, answers, &position, dropped);
                    let msgs: Vec<Message> = messages.iter().map(|m| Message::new(&m.role, &m.content)).collect();
                    let enc = template.encode(&tok, &msgs, false, None, None).map_err(|e| StageError::Row { key: r.id.clone(), message: e.to_string() })?;
                    if enc.ids.len() <= seq_len || dropped + 2 >= answers.len() {
                        return Ok((messages, enc, dropped));
                    }
                    dropped += 1;
                }
            };
            // A dialogue longer than seq_len leaves out its earliest turns after the first (which
            // carries the instruction), so the scored last turn keeps the instruction in view.
            let (messages, enc, dropped) = fit_window(&answers)?;
            windowed += (dropped > 0) as usize;
            let mut mask = if last_only { last_run_only(&enc.assistant_mask) } else { enc.assistant_mask };
            // The slipped answer stays as context only. Kept assistant turns are 0 and
            // dropped+1.. in order, so turn t > dropped is the (t - dropped)-th run of the mask
            // (with loss_turns = last only the final turn is scored, never a slip).
            if let Some(t) = slip.filter(|&t| t == 0 || t > dropped) {
                if !last_only {
                    unscore_run(&mut mask, if t == 0 { 0 } else { t - dropped });
                }
                slipped += 1;
            }
            examples.push(Example { ids: enc.ids, mask });
            if window_examples && dropped > 0 {
                // The evaluation answers turn t of a long dialogue from a window: turn 1 plus the
                // most recent turns that fit. Those prompts put the answer at the last positions
                // with a gap after turn 1, unlike any prefix above; train on each of them.
                for t in (1..answers.len() - 1).filter(|&t| Some(t) != slip) {
                    let (_, enc, d) = fit_window(&answers[..=t])?;
                    if d > 0 {
                        examples.push(Example { ids: enc.ids, mask: last_run_only(&enc.assistant_mask) });
                        window_extra += 1;
                    }
                }
            }
            out_rows.push(TrainRow { messages, held, row: r.clone() });
        }
        if examples.is_empty() {
            return Err(StageError::Message("no training dialogues left (every final answer broke its instruction and repair = false)".into()));
        }
        let longest = examples.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        let dialogue_examples = examples.len();
        // Scored assistant turns: each starts a run of `true` in its example's mask.
        let scored_turns: usize = examples.iter().map(|e| e.mask.iter().zip(std::iter::once(&false).chain(e.mask.iter())).filter(|(m, prev)| **m && !**prev).count()).sum();
        let replayed = match ctx.input_opt("replay") {
            Some(_) => {
                let replay = replay_examples(ctx, &tok, &template, p.float("replay_share")?, scored_turns)?;
                let n = replay.len();
                examples.extend(replay);
                n
            }
            None => 0,
        };

        // 5. Fine-tune with the shared loop; the model output as sft writes it.
        let chat = md.chat.clone().unwrap_or(ChatTemplate::Llama2);
        let crate::sft::Trained { cfg, out } = crate::sft::train_and_save(ctx, &mut model, &examples, tok, chat, "gatt")?;
        let write_json = |name: &str, v: serde_json::Value| {
            let path = out.join(name);
            std::fs::write(&path, serde_json::to_vec_pretty(&v).expect("json")).map_err(|source| StageError::Io { path, source })
        };
        write_json(
            "gatt_summary.json",
            serde_json::json!({
                "dialogues": rows.len(),
                "training_dialogues": out_rows.len(),
                "dropped": dropped,
                "sampled_turns": turns_total,
                "sampled_turns_obeying": turns_held,
                "sampled_adherence": if turns_total > 0 { Some(turns_held as f64 / turns_total as f64) } else { None },
                "repair": repair,
                "uniform_answers": uniform,
                "instruction_position": position,
                "loss_turns": if last_only { "last" } else { "all" },
                "longest_example_tokens": longest,
                "dialogue_examples": dialogue_examples,
                "scored_dialogue_turns": scored_turns,
                "slipped_dialogues": slipped,
                "replay_examples": replayed,
                "windowed_dialogues": windowed,
                "window_examples": window_extra,
                "seq_len": cfg.seq_len,
                "sample_seconds": sample_seconds,
            }),
        )?;
        if longest > cfg.seq_len {
            eprintln!("{}: warning: the longest GAtt dialogue has {longest} tokens > seq_len {}; its last turn loses context", ctx.instance, cfg.seq_len);
        }
        write_output_table(ctx, "dialogues", &rows_table(&out_rows)?)
    }
}

/// `share / (1 - share)` times `scored_turns` single-turn examples from the `replay` table, in a
/// seeded order (stable per row), cycling through the table when it is smaller.
fn replay_examples(ctx: &RunCtx<'_>, tok: &kernels::tokenizer::Tokenizer, template: &ChatTemplate, share: f64, scored_turns: usize) -> Result<Vec<Example>, StageError> {
    let table = read_input_table(ctx, "replay")?;
    let cols = crate::train::Columns { messages: "messages".into(), text: "text".into() };
    let all = crate::train::examples_from_table(&table, &cols, Some(tok), template, crate::train::LossMode::Sft, "replay")
        .map_err(|e| StageError::wrap("input `replay`", e))?;
    if all.is_empty() {
        return Err(StageError::Message("input `replay` has no rows".into()));
    }
    let want = ((scored_turns as f64) * share / (1.0 - share)).round() as usize;
    let mut order: Vec<usize> = (0..all.len()).collect();
    order.sort_by_key(|&i| {
        let mut h = blake3::Hasher::new();
        h.update(&ctx.seed.to_le_bytes());
        h.update(b"replay");
        h.update(&(i as u64).to_le_bytes());
        *h.finalize().as_bytes()
    });
    Ok((0..want).map(|j| all[order[j % order.len()]].clone()).collect())
}

struct TrainRow {
    row: DialogueRow,
    messages: Vec<ChatMessage>,
    held: Vec<bool>,
}

/// The training conversation: the instruction only at the start, plain user turns after.
/// `dropped` earliest turn pairs after the first are left out (to fit `seq_len`).
fn training_messages(r: &DialogueRow, system: &str, answers: &[String], position: &str, dropped: usize) -> Vec<ChatMessage> {
    let mut m = Vec::with_capacity(2 * r.turns() + 1);
    if position == "system" {
        m.push(ChatMessage::new("system", system));
    }
    for (t, (u, a)) in r.prompts.iter().zip(answers).enumerate().filter(|(t, _)| *t == 0 || *t > dropped) {
        let user = if t == 0 && position == "first_user" { format!("{system} {u}") } else { u.clone() };
        m.push(ChatMessage::new("user", user));
        m.push(ChatMessage::new("assistant", a.clone()));
    }
    m
}

/// The turn of a dialogue that keeps its sampled answer unrepaired (`slip_share`): drawn from
/// the stage seed and the dialogue id, among the turns before the last whose sample broke the
/// instruction; `None` for the other dialogues.
fn slip_turn(stage_seed: u64, id: &str, held: &[bool], share: f64) -> Option<usize> {
    if share <= 0.0 {
        return None;
    }
    let seed = graph::fingerprint::derive_u64(&[b"gatt-slip", &stage_seed.to_le_bytes(), id.as_bytes()]);
    let mut rng = kernels::rng::Rng::new(seed);
    if rng.uniform() >= share {
        return None;
    }
    let broke: Vec<usize> = held.iter().enumerate().take(held.len().saturating_sub(1)).filter(|(_, h)| !**h).map(|(t, _)| t).collect();
    (!broke.is_empty()).then(|| broke[(rng.next_u64() % broke.len() as u64) as usize])
}

/// Clears the `k`-th run of `true` in a mask (0-based; no-op if there are fewer runs).
fn unscore_run(mask: &mut [bool], k: usize) {
    let mut run = 0;
    let mut i = 0;
    while i < mask.len() {
        if mask[i] {
            let start = i;
            while i < mask.len() && mask[i] {
                i += 1;
            }
            if run == k {
                mask[start..i].iter_mut().for_each(|m| *m = false);
                return;
            }
            run += 1;
        } else {
            i += 1;
        }
    }
}

/// The mask with only its last run of `true` kept (the final assistant turn and its EOS).
pub(crate) fn last_run_only(mask: &[bool]) -> Vec<bool> {
    let mut out = vec![false; mask.len()];
    if let Some(end) = mask.iter().rposition(|m| *m) {
        let mut s = end;
        while s > 0 && mask[s - 1] {
            s -= 1;
        }
        out[s..=end].iter_mut().for_each(|m| *m = true);
    }
    out
}

fn rows_table(rows: &[TrainRow]) -> Result<RecordBatch, StageError> {
    let s = |v: Vec<String>| -> ArrayRef { Arc::new(StringArray::from(v)) };
    let held: Vec<Vec<bool>> = rows.iter().map(|r| r.held.clone()).collect();
    let convos: Vec<Vec<ChatMessage>> = rows.iter().map(|r| r.messages.clone()).collect();
    let schema = Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("instruction", DataType::Utf8, false),
        Field::new("short_form", DataType::Boolean, false),
        Field::new("turns", DataType::Int32, false),
        Field::new("messages", datasets::schema::messages_type(), false),
        Field::new("held", datasets::schema::bool_list_type(), false),
        Field::new("repaired", DataType::Int32, false),
    ]);
    let cols: Vec<ArrayRef> = vec![
        s(rows.iter().map(|r| r.row.id.clone()).collect()),
        s(rows.iter().map(|r| r.row.instruction.clone()).collect()),
        Arc::new(BooleanArray::from(rows.iter().map(|r| r.row.short_form).collect::<Vec<_>>())),
        Arc::new(Int32Array::from(rows.iter().map(|r| r.row.turns() as i32).collect::<Vec<_>>())),
        datasets::schema::messages_array(&convos),
        datasets::schema::bool_list_array(&held),
        Arc::new(Int32Array::from(rows.iter().map(|r| r.held.iter().filter(|h| !**h).count() as i32).collect::<Vec<_>>())),
    ];
    RecordBatch::try_new(Arc::new(schema), cols).map_err(|e| StageError::wrap("building the `dialogues` output", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unscore_run_clears_exactly_the_kth_run() {
        let m = |s: &str| s.chars().map(|c| c == '1').collect::<Vec<bool>>();
        // Runs at 1-2, 5-6 and 8.
        for (k, want) in [(0, "0000011010"), (1, "0110000010"), (2, "0110011000"), (3, "0110011010")] {
            let mut mask = m("0110011010");
            unscore_run(&mut mask, k);
            assert_eq!(mask, m(want), "run {k}");
        }
    }

    #[test]
    fn slip_turns_are_seeded_and_only_where_a_sample_broke_the_instruction() {
        let held = [true, false, true, false, true, false];
        let picks: Vec<Option<usize>> = (0..200).map(|i| slip_turn(7, &format!("d{i}"), &held, 0.5)).collect();
        assert_eq!(picks, (0..200).map(|i| slip_turn(7, &format!("d{i}"), &held, 0.5)).collect::<Vec<_>>(), "seeded");
        let some = picks.iter().flatten().count();
        assert!((70..130).contains(&some), "about half the dialogues slip: {some}");
        assert!(picks.iter().flatten().all(|&t| t == 1 || t == 3), "a broken turn before the last: {picks:?}");
        assert_eq!(slip_turn(7, "d0", &held, 0.0), None);
        assert_eq!(slip_turn(7, "d0", &[true, true, false], 1.0), None, "only the last turn broke");
    }

    #[test]
    fn last_run_only_keeps_the_final_assistant_turn() {
        let m = [false, true, true, false, false, true, true, true, false];
        assert_eq!(last_run_only(&m), [false, false, false, false, false, true, true, true, false]);
        assert_eq!(last_run_only(&[false, false]), [false, false]);
        assert_eq!(last_run_only(&[true, true]), [true, true]);
    }
}
