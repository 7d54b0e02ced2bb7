//! The report's Ghost Attention section: instruction adherence by turn from the
//! `eval_dialogue` instances, paired as "with GAtt" (the one judging a model a `gatt` instance
//! produced) and "without GAtt" (the one judging the model that `gatt` instance started from,
//! or else any other `eval_dialogue`).

/// One `eval_dialogue` instance and its `report.json` (docs/gatt.md).
#[derive(Clone, Debug, PartialEq)]
pub struct DialogueEval {
    /// The `eval_dialogue` instance (`adherence_gatt`).
    pub instance: String,
    /// The instance that produced the judged model (`gatt`, `sft`); None when the model comes
    /// from outside the run record.
    pub model: Option<String>,
    pub report: serde_json::Value,
}

/// What the pairing needs to know of a `gatt` instance: its name and the instance its `model`
/// input came from.
#[derive(Clone, Debug, PartialEq)]
pub struct GattInstance {
    pub instance: String,
    pub base_model: Option<String>,
}

/// The with/without pair, as indices into the `eval_dialogue` list.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Pairing {
    pub with_gatt: Option<usize>,
    pub without_gatt: Option<usize>,
}

/// Pairs the evaluations: "with" judges a `gatt` instance's model (the first such, in order);
/// "without" judges that instance's input model, else it is the first other evaluation.
pub fn pair(evals: &[DialogueEval], gatts: &[GattInstance]) -> Pairing {
    let judged = |model: &str| evals.iter().position(|e| e.model.as_deref() == Some(model));
    let with = gatts.iter().find_map(|g| judged(&g.instance).map(|i| (i, g)));
    let with_gatt = with.map(|(i, _)| i);
    let base = with.and_then(|(_, g)| g.base_model.as_deref()).or_else(|| gatts.first().and_then(|g| g.base_model.as_deref()));
    let gatt_models: Vec<&str> = gatts.iter().map(|g| g.instance.as_str()).collect();
    let without_gatt = base
        .and_then(judged)
        .filter(|i| Some(*i) != with_gatt)
        .or_else(|| (0..evals.len()).find(|i| Some(*i) != with_gatt && !evals[*i].model.as_deref().is_some_and(|m| gatt_models.contains(&m))));
    Pairing { with_gatt, without_gatt }
}

/// The keys of an `eval_dialogue` report lifted into `adherence.by_instance`.
const KEYS: [&str; 14] = [
    "dialogues", "turns", "adherence", "adherence_all_so_far", "helpfulness_by_turn", "task_helpfulness_by_turn", "helpfulness", "task_helpfulness", "by_instruction", "eos_rate", "max_prompt_tokens", "windowed_turns", "instruction_position", "temperature",
];

/// `{"with_gatt": [..] | null, "without_gatt": [..] | null, "with_gatt_stage", "without_gatt_stage",
/// "with_gatt_model", "without_gatt_model", "adherence_all_so_far": {"with_gatt", "without_gatt"},
/// "helpfulness_by_turn": {...}, "task_helpfulness_by_turn": {...}, "by_instance": {INSTANCE: {...}}}`;
/// null when the run has no `eval_dialogue` instance (README, "Report").
pub fn to_json(evals: &[DialogueEval], p: Pairing) -> serde_json::Value {
    if evals.is_empty() {
        return serde_json::Value::Null;
    }
    let list = |i: Option<usize>, key: &str| i.map(|i| evals[i].report.get(key).cloned().unwrap_or(serde_json::Value::Null)).unwrap_or(serde_json::Value::Null);
    let both = |key: &str| serde_json::json!({ "with_gatt": list(p.with_gatt, key), "without_gatt": list(p.without_gatt, key) });
    let name = |i: Option<usize>| i.map(|i| serde_json::Value::from(evals[i].instance.clone())).unwrap_or(serde_json::Value::Null);
    let model = |i: Option<usize>| i.and_then(|i| evals[i].model.clone()).map(serde_json::Value::from).unwrap_or(serde_json::Value::Null);
    let by_instance: serde_json::Map<String, serde_json::Value> = evals
        .iter()
        .map(|e| {
            let mut v = super::pick(&e.report, &KEYS);
            v["model"] = e.model.clone().map(serde_json::Value::from).unwrap_or(serde_json::Value::Null);
            (e.instance.clone(), v)
        })
        .collect();
    serde_json::json!({
        "with_gatt": list(p.with_gatt, "adherence"),
        "without_gatt": list(p.without_gatt, "adherence"),
        "with_gatt_stage": name(p.with_gatt),
        "without_gatt_stage": name(p.without_gatt),
        "with_gatt_model": model(p.with_gatt),
        "without_gatt_model": model(p.without_gatt),
        "adherence_all_so_far": both("adherence_all_so_far"),
        "helpfulness_by_turn": both("helpfulness_by_turn"),
        "task_helpfulness_by_turn": both("task_helpfulness_by_turn"),
        "by_instance": by_instance,
    })
}

/// A per-turn list of a report (null entries kept as None).
pub fn series(report: &serde_json::Value, key: &str) -> Vec<Option<f64>> {
    report.get(key).and_then(|v| v.as_array()).map(|a| a.iter().map(|x| x.as_f64()).collect()).unwrap_or_default()
}

/// The Markdown section: what adherence means, then one row per turn.
pub fn markdown(evals: &[DialogueEval], p: Pairing, s: &mut String) {
    if evals.is_empty() {
        return;
    }
    let f = |x: Option<f64>| x.map(|v| format!("{v:.2}")).unwrap_or_else(|| "–".into());
    s.push_str("## Ghost Attention: instruction adherence by turn\n\n");
    s.push_str(
        "Each evaluation dialogue starts with a system instruction (answer in capitals, end with \"Over.\", \
         start with \"Arr!\", or use at most five words) and then asks up to 20 unrelated questions, the model \
         seeing its own earlier answers. **Adherence at turn t** is the share of dialogues whose answer at turn t \
         obeys the instruction; **held so far** is the share that obeyed at every turn up to t; **helpfulness** is \
         the gold helpfulness of the answer at turn t (halved when the instruction is broken). Ghost Attention \
         (GAtt) fine-tunes the model so that the instruction keeps holding in later turns.\n\n",
    );
    let label = |i: Option<usize>, what: &str| match i {
        Some(i) => format!("{what}: `{}` judging `{}`", evals[i].instance, evals[i].model.as_deref().unwrap_or("?")),
        None => format!("{what}: no such evaluation in the last run"),
    };
    s.push_str(&format!("- {}\n- {}\n\n", label(p.with_gatt, "with GAtt"), label(p.without_gatt, "without GAtt")));
    let get = |i: Option<usize>, key: &str| i.map(|i| series(&evals[i].report, key)).unwrap_or_default();
    let cols = [
        get(p.with_gatt, "adherence"),
        get(p.without_gatt, "adherence"),
        get(p.with_gatt, "adherence_all_so_far"),
        get(p.without_gatt, "adherence_all_so_far"),
        get(p.with_gatt, "helpfulness_by_turn"),
        get(p.without_gatt, "helpfulness_by_turn"),
    ];
    let turns = cols.iter().map(|c| c.len()).max().unwrap_or(0);
    if turns > 0 {
        s.push_str("| turn | adherence with GAtt | adherence without | held so far with | held so far without | helpfulness with | helpfulness without |\n|---|---|---|---|---|---|---|\n");
        for t in 0..turns {
            let row: Vec<String> = cols.iter().map(|c| f(c.get(t).copied().flatten())).collect();
            s.push_str(&format!("| {} | {} |\n", t + 1, row.join(" | ")));
        }
        s.push('\n');
    }
    let others: Vec<&DialogueEval> = evals.iter().enumerate().filter(|(i, _)| Some(*i) != p.with_gatt && Some(*i) != p.without_gatt).map(|(_, e)| e).collect();
    if !others.is_empty() {
        s.push_str("Other dialogue evaluations (mean adherence over turns):\n\n| instance | model | turn 1 | last turn | mean |\n|---|---|---|---|---|\n");
        for e in others {
            let a = series(&e.report, "adherence");
            let vals: Vec<f64> = a.iter().flatten().copied().collect();
            let mean = (!vals.is_empty()).then(|| vals.iter().sum::<f64>() / vals.len() as f64);
            s.push_str(&format!("| `{}` | {} | {} | {} | {} |\n", e.instance, e.model.as_deref().unwrap_or("?"), f(a.first().copied().flatten()), f(a.last().copied().flatten()), f(mean)));
        }
        s.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(instance: &str, model: &str) -> DialogueEval {
        DialogueEval { instance: instance.into(), model: Some(model.into()), report: serde_json::json!({"adherence": [0.5, 0.3], "turns": 2}) }
    }

    #[test]
    fn pairs_the_gatt_model_with_its_base() {
        let evals = [ev("a_pre", "pretrain"), ev("a_gatt", "gatt"), ev("a_sft", "sft")];
        let gatts = [GattInstance { instance: "gatt".into(), base_model: Some("sft".into()) }];
        assert_eq!(pair(&evals, &gatts), Pairing { with_gatt: Some(1), without_gatt: Some(2) });
        // Base model not evaluated: any other evaluation stands in.
        let evals2 = [ev("a_gatt", "gatt"), ev("a_pre", "pretrain")];
        assert_eq!(pair(&evals2, &gatts), Pairing { with_gatt: Some(0), without_gatt: Some(1) });
        // No gatt instance: no "with", the first evaluation is "without".
        assert_eq!(pair(&evals[2..], &[]), Pairing { with_gatt: None, without_gatt: Some(0) });
        let v = to_json(&evals, pair(&evals, &gatts));
        assert_eq!(v["with_gatt_stage"], "a_gatt");
        assert_eq!(v["without_gatt_model"], "sft");
        assert_eq!(v["with_gatt"].as_array().unwrap().len(), 2);
        assert_eq!(v["by_instance"]["a_pre"]["model"], "pretrain");
        assert!(to_json(&[], Pairing::default()).is_null());
        let mut md = String::new();
        markdown(&evals, pair(&evals, &gatts), &mut md);
        assert!(md.contains("| 2 | 0.30 | 0.30 | – | – | – | – |"), "{md}");
        assert!(md.contains("| `a_pre` | pretrain | 0.50 | 0.30 | 0.40 |"), "{md}");
    }
}
