//! The report's pipeline-graph section: every stage instance of the last run in a topological
//! order, with its kind, round, the instance outputs it read and whether the last run ran it or
//! found it cached; as JSON, a Markdown table and a Mermaid flowchart.

use std::collections::{BTreeMap, BTreeSet};

use graph::store::RunRecord;

/// One stage instance of the last run.
#[derive(Clone, Debug, PartialEq)]
pub struct GraphNode {
    /// `sft`, `ppo@2`.
    pub name: String,
    /// The stage (`ppo`) and its kind (`ppo`).
    pub stage: String,
    pub kind: String,
    /// 0 outside loops.
    pub round: u32,
    pub fingerprint: String,
    /// Port -> what it read: `INSTANCE.OUTPUT` for an instance of this run, `absent` for an
    /// optional port with nothing wired or a round-1 carry without init, `FINGERPRINT.OUTPUT` (first 12 hex digits) for an artifact
    /// the run record does not name.
    pub inputs: BTreeMap<String, String>,
    /// Producing instances (indices into the node list), for the drawing.
    pub deps: Vec<(usize, String)>,
    /// `ran`, `cached`, `partial`, `failed`, `skipped`; None for a record written before the
    /// status was kept.
    pub status: Option<String>,
}

/// The nodes of `record` in a topological order: among the instances whose inputs are all
/// placed, the first by round and then by `rank` (the stage's place in the file) goes next, so
/// loops read round by round and unrelated instances keep the file's order.
pub fn nodes(record: &RunRecord, rank: &dyn Fn(&str, u32) -> (usize, u32)) -> Vec<GraphNode> {
    let by_fp: BTreeMap<&str, &str> = record.instances.iter().map(|(name, r)| (r.fingerprint.as_str(), name.as_str())).collect();
    let producer = |v: &str| -> Option<(String, String)> {
        let (fp, out) = v.split_once('.')?;
        by_fp.get(fp).map(|n| (n.to_string(), out.to_string()))
    };
    let mut pending: Vec<&String> = record.instances.keys().collect();
    pending.sort_by_key(|n| {
        let r = &record.instances[*n];
        (r.round, rank(&r.stage, r.round).0, (*n).clone())
    });
    let mut placed: BTreeSet<String> = BTreeSet::new();
    let mut order: Vec<String> = Vec::new();
    while !pending.is_empty() {
        let ready = pending.iter().position(|n| {
            record.instances[*n].inputs.inputs.values().filter_map(|v| producer(v)).all(|(p, _)| placed.contains(&p) || p == **n)
        });
        // A cycle cannot come from a plan; should a record hold one, keep the remaining order.
        let i = ready.unwrap_or(0);
        let n = pending.remove(i);
        placed.insert(n.clone());
        order.push(n.clone());
    }
    let index: BTreeMap<&str, usize> = order.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
    order
        .iter()
        .map(|name| {
            let r = &record.instances[name];
            let mut inputs = BTreeMap::new();
            let mut deps = Vec::new();
            for (port, v) in &r.inputs.inputs {
                let shown = match producer(v) {
                    Some((p, out)) => {
                        if let Some(&i) = index.get(p.as_str()) {
                            deps.push((i, port.clone()));
                        }
                        format!("{p}.{out}")
                    }
                    None if v == "absent" => v.clone(),
                    None => match v.split_once('.') {
                        Some((fp, out)) => format!("{}.{out}", &fp[..fp.len().min(12)]),
                        None => v.clone(),
                    },
                };
                inputs.insert(port.clone(), shown);
            }
            GraphNode {
                name: name.clone(),
                stage: r.stage.clone(),
                kind: r.inputs.kind.clone(),
                round: r.round,
                fingerprint: r.fingerprint.clone(),
                inputs,
                deps,
                status: r.status.clone(),
            }
        })
        .collect()
}

/// `{"instances": [{"name", "stage", "kind", "round", "fingerprint", "inputs": {PORT:
/// "INSTANCE.OUTPUT"}, "status"}], "status_counts": {STATUS: n}}` (README, "Report").
pub fn to_json(nodes: &[GraphNode]) -> serde_json::Value {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for n in nodes {
        *counts.entry(n.status.clone().unwrap_or_else(|| "unknown".into())).or_default() += 1;
    }
    let instances: Vec<serde_json::Value> = nodes
        .iter()
        .map(|n| {
            serde_json::json!({
                "name": n.name, "stage": n.stage, "kind": n.kind, "round": n.round,
                "fingerprint": n.fingerprint, "inputs": n.inputs, "status": n.status,
            })
        })
        .collect();
    serde_json::json!({ "instances": instances, "status_counts": counts })
}

/// The Markdown section: a paragraph, the table, and a Mermaid flowchart (instances coloured
/// by what the last run did).
pub fn markdown(nodes: &[GraphNode], s: &mut String) {
    if nodes.is_empty() {
        return;
    }
    let count = |st: &str| nodes.iter().filter(|n| n.status.as_deref() == Some(st)).count();
    s.push_str("## Pipeline graph\n\n");
    s.push_str(&format!(
        "The pipeline file unrolled into stage instances (a stage inside a loop is one instance per round, \
         `name@round`), listed so that every instance comes after the instances it reads. \
         \"Reads\" names the port and the instance output wired to it (`absent`: an optional port with nothing \
         wired, or the first round of a carry that starts empty). \"Last run\" says what the last `alignflow run` did: `ran` (computed), \
         `cached` (its result was already in the workspace, nothing ran), `partial` (a row-wise stage \
         that reused some rows and computed the rest), `failed` or `skipped` (the figures below then \
         come from an earlier run). Last run: {} ran, {} cached, {} partial, {} failed or skipped.\n\n",
        count("ran"),
        count("cached"),
        count("partial"),
        count("failed") + count("skipped"),
    ));
    s.push_str("| # | instance | kind | round | reads | last run |\n|---|---|---|---|---|---|\n");
    for (i, n) in nodes.iter().enumerate() {
        let reads: Vec<String> = n.inputs.iter().map(|(p, v)| format!("{p} ← {v}")).collect();
        let round = if n.round == 0 { "–".to_string() } else { n.round.to_string() };
        s.push_str(&format!(
            "| {} | `{}` | {} | {} | {} | {} |\n",
            i + 1,
            n.name,
            n.kind,
            round,
            if reads.is_empty() { "–".into() } else { reads.join("<br>") },
            n.status.as_deref().unwrap_or("unknown")
        ));
    }
    s.push_str("\n```mermaid\nflowchart TD\n");
    for (i, n) in nodes.iter().enumerate() {
        s.push_str(&format!("  n{i}[\"{}<br/>{} · {}\"]\n", n.name, n.kind, n.status.as_deref().unwrap_or("unknown")));
    }
    for (i, n) in nodes.iter().enumerate() {
        for (d, port) in &n.deps {
            s.push_str(&format!("  n{d} -->|{port}| n{i}\n"));
        }
    }
    s.push_str("  classDef ran fill:#fde2c8,stroke:#d9822b\n  classDef cached fill:#dbeafe,stroke:#3b82f6\n  classDef failed fill:#fecaca,stroke:#dc2626\n");
    for (class, statuses) in [("ran", &["ran", "partial"][..]), ("cached", &["cached"][..]), ("failed", &["failed", "skipped"][..])] {
        let ids: Vec<String> = nodes.iter().enumerate().filter(|(_, n)| n.status.as_deref().is_some_and(|st| statuses.contains(&st))).map(|(i, _)| format!("n{i}")).collect();
        if !ids.is_empty() {
            s.push_str(&format!("  class {} {class}\n", ids.join(",")));
        }
    }
    s.push_str("```\n\n(Orange: ran in the last run; blue: cached; red: failed or skipped.)\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use graph::fingerprint::FpRecord;
    use graph::store::InstanceRecord;

    fn rec(stage: &str, round: u32, fp: &str, inputs: &[(&str, &str)], status: &str) -> InstanceRecord {
        InstanceRecord {
            stage: stage.into(),
            round,
            fingerprint: fp.into(),
            inputs: FpRecord {
                kind: format!("kind_{stage}"),
                version: 1,
                params: BTreeMap::new(),
                seed: 0,
                inputs: inputs.iter().map(|(p, v)| (p.to_string(), v.to_string())).collect(),
                external: None,
            },
            outputs: BTreeMap::new(),
            status: Some(status.into()),
        }
    }

    #[test]
    fn nodes_come_after_what_they_read_and_name_producers() {
        let mut record = RunRecord { pipeline: "p".into(), instances: BTreeMap::new() };
        // File order: eval (0), train (1), src (2); eval reads train, train reads src.
        record.instances.insert("eval".into(), rec("eval", 0, "fe", &[("model", "ft.model"), ("prompts", "fs.table")], "ran"));
        record.instances.insert("train@1".into(), rec("train", 1, "ft", &[("data", "fs.table"), ("carry", "absent")], "cached"));
        record.instances.insert("src".into(), rec("src", 0, "fs", &[], "cached"));
        let order = ["eval", "train", "src"];
        let rank = |s: &str, r: u32| (order.iter().position(|x| *x == s).unwrap(), r);
        let n = nodes(&record, &rank);
        let names: Vec<&str> = n.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names, ["src", "train@1", "eval"]);
        assert_eq!(n[1].inputs["data"], "src.table");
        assert_eq!(n[1].inputs["carry"], "absent");
        assert_eq!(n[2].inputs["model"], "train@1.model");
        assert_eq!(n[2].deps, vec![(1, "model".to_string()), (0, "prompts".to_string())]);
        let v = to_json(&n);
        assert_eq!(v["status_counts"]["cached"], 2);
        assert_eq!(v["instances"][2]["kind"], "kind_eval");
        let mut md = String::new();
        markdown(&n, &mut md);
        assert!(md.contains("| 3 | `eval` | kind_eval | – | model ← train@1.model<br>prompts ← src.table | ran |"), "{md}");
        assert!(md.contains("n1 -->|model| n2"), "{md}");
    }
}
