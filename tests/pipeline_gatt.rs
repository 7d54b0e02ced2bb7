//! Ghost Attention end to end: `pipelines/examples/gatt_small.toml` (world -> tokenizer ->
//! pretrain -> sft -> gatt -> eval_dialogue for the SFT and the GAtt model) runs; the GAtt
//! model directory, its training rows and both adherence reports have the documented shapes
//! and sane contents; a second run is fully cached.

mod common;

use std::path::PathBuf;

use common::run_json;

fn fingerprint(run: &serde_json::Value, name: &str) -> String {
    common::stage(run, name)["fingerprint"].as_str().unwrap().to_string()
}

#[test]
fn gatt_small_runs_and_reports_adherence_by_turn() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("pipelines/examples/gatt_small.toml");
    let run = run_json(tmp.path(), file.to_str().unwrap(), ws.to_str().unwrap(), &[]);

    // The world's dialogue splits: 32 GAtt dialogues of 2..20 turns, 8 eval dialogues of 20.
    let world = fingerprint(&run, "world");
    let table = |fp: &str, out: &str| datasets::table::read_parquet(&ws.join("artifacts").join(fp).join(out).join("table.parquet")).unwrap();
    let g = datasets::world::dialogue_rows(&table(&world, "gatt_dialogues"), "g").unwrap();
    let e = datasets::world::dialogue_rows(&table(&world, "eval_dialogues"), "e").unwrap();
    assert_eq!((g.len(), e.len()), (32, 8));
    assert!(e.iter().all(|r| r.turns() == 20));

    // gatt: a model directory like sft's, one training row per dialogue (repair keeps all),
    // the instruction only in the system message, every assistant turn obeying it.
    let gatt = fingerprint(&run, "gatt");
    let model_dir = ws.join("artifacts").join(&gatt).join("model");
    for f in ["config.json", "model.safetensors", "tokenizer.json", "loss_curve.json", "train_summary.json", "gatt_summary.json"] {
        assert!(model_dir.join(f).exists(), "gatt model has no {f}");
    }
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(model_dir.join("gatt_summary.json")).unwrap()).unwrap();
    assert_eq!(summary["training_dialogues"], 32, "{summary}");
    assert!(summary["longest_example_tokens"].as_u64().unwrap() <= summary["seq_len"].as_u64().unwrap(), "{summary}");
    let rows = table(&gatt, "dialogues");
    assert_eq!(rows.num_rows(), 32);
    let msgs = datasets::table::messages_values(&rows, "messages", "dialogues").unwrap();
    let ins = datasets::table::str_values(&rows, "instruction", "dialogues").unwrap();
    for (m, i) in msgs.iter().zip(ins) {
        let ins = datasets::judge::Instruction::parse(i).unwrap();
        assert_eq!(m[0].role, "system");
        assert!(m[0].content == ins.long_form() || m[0].content == ins.short_form());
        for (k, msg) in m[1..].iter().enumerate() {
            assert_eq!(msg.role, if k % 2 == 0 { "user" } else { "assistant" });
            if msg.role == "user" {
                assert!(!msg.content.contains(ins.long_form()), "instruction left in a user turn: {}", msg.content);
            } else {
                assert!(ins.holds(&msg.content), "{ins:?}: {}", msg.content);
            }
        }
    }

    // Both adherence reports: 20 fractions in [0, 1], index 0 = turn 1, and helpfulness.
    for name in ["adherence_sft", "adherence_gatt"] {
        let fp = fingerprint(&run, name);
        let rep: serde_json::Value = serde_json::from_slice(&common::artifact(&ws, &fp, "report", "report.json")).unwrap();
        let a = rep["adherence"].as_array().unwrap_or_else(|| panic!("{name}: {rep}"));
        assert_eq!(a.len(), 20, "{name}");
        assert!(a.iter().all(|x| x.as_f64().is_some_and(|v| (0.0..=1.0).contains(&v))), "{name}: {a:?}");
        assert_eq!(rep["dialogues"], 8);
        assert_eq!(rep["helpfulness_by_turn"].as_array().unwrap().len(), 20);
        let so_far = rep["adherence_all_so_far"].as_array().unwrap();
        for t in 1..20 {
            assert!(so_far[t].as_f64().unwrap() <= so_far[t - 1].as_f64().unwrap() + 1e-12, "{name}: held-so-far must not rise");
        }
        assert!(rep["max_prompt_tokens"].as_u64().unwrap() > 0);
        let results = table(&fp, "results");
        assert_eq!(results.num_rows(), 8);
        eprintln!("{name}: adherence {a:?}; helpfulness {}; longest prompt {} tokens", rep["helpfulness"], rep["max_prompt_tokens"]);
    }

    // The report pairs the two evaluations: with GAtt (judging the gatt model) and without
    // (judging the model gatt started from); 20 fractions each (the world's eval dialogues have
    // 20 turns), index 0 = turn 1; adherence.png and the GAtt loss curve are drawn.
    let out = common::alignflow(tmp.path(), &["report", file.to_str().unwrap(), "--workspace", ws.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let a = &v["adherence"];
    assert_eq!(a["with_gatt_stage"], "adherence_gatt", "{a}");
    assert_eq!(a["without_gatt_stage"], "adherence_sft", "{a}");
    assert_eq!((a["with_gatt_model"].as_str(), a["without_gatt_model"].as_str()), (Some("gatt"), Some("sft")));
    for side in ["with_gatt", "without_gatt"] {
        let list = a[side].as_array().unwrap_or_else(|| panic!("{side}: {a}"));
        assert_eq!(list.len(), 20, "{side}");
        assert!(list.iter().all(|x| x.as_f64().is_some_and(|v| (0.0..=1.0).contains(&v))), "{side}: {list:?}");
        assert_eq!(a["helpfulness_by_turn"][side].as_array().map(|l| l.len()), Some(20), "{side}");
        assert_eq!(a["adherence_all_so_far"][side].as_array().map(|l| l.len()), Some(20), "{side}");
    }
    // The lifted lists are the stages' own.
    let own: serde_json::Value = serde_json::from_slice(&common::artifact(&ws, &fingerprint(&run, "adherence_gatt"), "report", "report.json")).unwrap();
    assert_eq!(a["with_gatt"], own["adherence"]);
    assert_eq!(a["by_instance"]["adherence_sft"]["turns"], 20);
    assert!(v["training"]["gatt"]["steps"].as_u64().is_some_and(|n| n > 0), "{}", v["training"]);
    let g = v["graph"]["instances"].as_array().unwrap();
    let gatt_node = g.iter().find(|i| i["name"] == "gatt").unwrap();
    assert_eq!(gatt_node["inputs"]["model"], "sft.model");
    assert_eq!(gatt_node["inputs"]["dialogues"], "world.gatt_dialogues");
    let dir = ws.join("report").join("gatt_small");
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.contains("## Ghost Attention: instruction adherence by turn") && md.contains("| 20 |"), "{md}");
    if common::plot_font() {
        for png in ["graph.png", "adherence.png", "loss.png"] {
            common::check_plot(&dir.join(png));
            assert!(md.contains(&format!("({png})")), "{png} not linked");
        }
    }

    // A second run changes nothing.
    let again = run_json(tmp.path(), file.to_str().unwrap(), ws.to_str().unwrap(), &[]);
    for s in again["stages"].as_array().unwrap() {
        assert_eq!(s["status"], "cached", "{s}");
    }

    // Rows shorter than the dialogues: long dialogues are windowed (turn 1 kept), and with
    // `window_examples` each turn whose prefix does not fit gets an example of its own; every
    // example fits `seq_len`. Only gatt and its evaluation re-run.
    let text = std::fs::read_to_string(&file).unwrap();
    let old = "params = { max_new_tokens = 12, seq_len = 1024,";
    assert!(text.contains(old), "gatt_small.toml changed: update this test");
    let windowed = tmp.path().join("windowed.toml");
    std::fs::write(&windowed, text.replace(old, "params = { window_examples = true, max_new_tokens = 12, seq_len = 192,")).unwrap();
    let run2 = run_json(tmp.path(), windowed.to_str().unwrap(), ws.to_str().unwrap(), &[]);
    assert_eq!(common::stage(&run2, "sft")["status"], "cached");
    let model_dir = ws.join("artifacts").join(fingerprint(&run2, "gatt")).join("model");
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(model_dir.join("gatt_summary.json")).unwrap()).unwrap();
    assert!(summary["windowed_dialogues"].as_u64().unwrap() > 0, "{summary}");
    assert!(summary["window_examples"].as_u64().unwrap() > 0, "{summary}");
    assert!(summary["longest_example_tokens"].as_u64().unwrap() <= 192, "{summary}");
    assert!(summary["dialogue_examples"].as_u64().unwrap() == 32 + summary["window_examples"].as_u64().unwrap(), "{summary}");

    // Slips: with `slip_share = 1` and every assistant turn scored, each dialogue whose sample
    // broke the instruction before its last turn keeps exactly one such answer as it was, and
    // that turn is not scored. Uniform answers in the same run: below.
    let slips = tmp.path().join("slips.toml");
    std::fs::write(&slips, text.replace(old, "params = { slip_share = 1.0, uniform_answers = true, loss_turns = \"all\", max_new_tokens = 12, seq_len = 1024,")).unwrap();
    let run3 = run_json(tmp.path(), slips.to_str().unwrap(), ws.to_str().unwrap(), &[]);
    let gatt3 = fingerprint(&run3, "gatt");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ws.join("artifacts").join(&gatt3).join("model").join("gatt_summary.json")).unwrap()).unwrap();
    let slipped = summary["slipped_dialogues"].as_u64().unwrap();
    assert!(slipped > 0, "the small model breaks its instruction early in some dialogue: {summary}");
    let rows = table(&gatt3, "dialogues");
    let msgs = datasets::table::messages_values(&rows, "messages", "dialogues").unwrap();
    let ins = datasets::table::str_values(&rows, "instruction", "dialogues").unwrap();
    let (mut broken_rows, mut answers) = (0, 0);
    for (m, i) in msgs.iter().zip(&ins) {
        let ins = datasets::judge::Instruction::parse(i).unwrap();
        let asst: Vec<&str> = m.iter().filter(|x| x.role == "assistant").map(|x| x.content.as_str()).collect();
        let broken = asst.iter().filter(|a| !ins.holds(a)).count();
        assert!(broken <= 1, "at most one slip per dialogue: {asst:?}");
        assert!(ins.holds(asst[asst.len() - 1]), "the last turn is repaired: {asst:?}");
        broken_rows += broken;
        answers += asst.len();
    }
    assert_eq!(broken_rows as u64, slipped, "{summary}");
    assert_eq!(summary["scored_dialogue_turns"].as_u64().unwrap(), answers as u64 - slipped, "{summary}");

    // Uniform answers: under "at most five words" every answer but a slip is the canonical answer
    // when it fits in five words, else the bare value, whatever was sampled (no dialogue is
    // windowed at seq_len 1024, so answer k is turn k of the world's row).
    assert_eq!(summary["uniform_answers"], true, "{summary}");
    assert_eq!(summary["windowed_dialogues"], 0, "{summary}");
    let ids = datasets::table::str_values(&rows, "id", "dialogues").unwrap();
    let world_rows = datasets::world::dialogue_rows(&table(&world, "gatt_dialogues"), "g").unwrap();
    let mut five_words_answers = 0;
    for ((m, i), id) in msgs.iter().zip(&ins).zip(ids) {
        let ins = datasets::judge::Instruction::parse(i).unwrap();
        if ins != datasets::judge::Instruction::AtMostFiveWords {
            continue;
        }
        let row = world_rows.iter().find(|r| r.id == id).unwrap();
        for (t, a) in m.iter().filter(|x| x.role == "assistant").enumerate() {
            let spec = row.judge(t).unwrap().spec;
            let canonical = datasets::judge::canonical_answer(&spec);
            let expected = if canonical.split_whitespace().count() <= 5 { canonical } else { format!("{}.", datasets::judge::answer_value(&spec).unwrap()) };
            if ins.holds(&a.content) {
                assert_eq!(a.content, expected, "{id} turn {t}");
                five_words_answers += 1;
            }
        }
    }
    assert!(five_words_answers > 20, "{five_words_answers}");
}
