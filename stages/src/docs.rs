//! Generates the stage-kind reference of docs/pipeline-format.md from the registry, so the
//! documented ports and parameters are the ones the checker enforces.

use std::fmt::Write as _;

use graph::{ParamValue, Registry};

/// Markdown: one section per kind with its doc, inputs, outputs and parameters.
pub fn stage_reference(registry: &Registry) -> String {
    registry.stages().map(|s| kind_section(s.as_ref())).collect()
}

/// The reference section of one kind, starting with its `### `kind`` heading.
pub fn kind_section(s: &dyn graph::Stage) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "### `{}` (version {})\n\n{}\n", s.kind(), s.version(), s.doc());
    let r = s.resources();
    let _ = writeln!(out, "Default resources: cpus = {}, gpus = {}.{}\n", r.cpus, r.gpus, if s.row_port().is_some() { " Row-wise (memoised per row)." } else { "" });
    let ports = |title: &str, ports: Vec<graph::Port>, out: &mut String| {
        if ports.is_empty() {
            return;
        }
        let _ = writeln!(out, "{title}:\n\n| port | type | doc |\n| --- | --- | --- |");
        for p in ports {
            let opt = if p.optional { " (optional)" } else { "" };
            let _ = writeln!(out, "| `{}` | {}{opt} | {} |", p.name, p.ty.name(), p.doc);
        }
        out.push('\n');
    };
    ports("Inputs", s.inputs(), &mut out);
    ports("Outputs", s.outputs(), &mut out);
    let params = s.params();
    if !params.is_empty() {
        let _ = writeln!(out, "Parameters:\n\n| name | type | default | doc |\n| --- | --- | --- | --- |");
        for p in params {
            let d = p.default.as_ref().map(ParamValue::display).unwrap_or_else(|| "required".into());
            let _ = writeln!(out, "| `{}` | {} | {} | {} |", p.name, p.ty.describe(), d, p.doc);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind documented in docs/pipeline-format.md is documented as the registry
    /// declares it (a kind not yet in the doc is only reported, so adding a kind does not
    /// break the build). Regenerate with `ALIGNFLOW_BLESS=1 cargo test -p stages docs`.
    #[test]
    fn pipeline_format_doc_matches_the_registry() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/pipeline-format.md");
        let text = std::fs::read_to_string(&path).unwrap();
        let marker = "## Stage kinds\n";
        let at = text.find(marker).expect("the doc has a `## Stage kinds` section");
        let head_end = text[at..].find("\n\n### ").map(|i| at + i + 2).unwrap_or(text.len());
        let registry = crate::registry();
        if std::env::var_os("ALIGNFLOW_BLESS").is_some() {
            std::fs::write(&path, format!("{}\n\n{}", text[..head_end].trim_end(), stage_reference(&registry))).unwrap();
            return;
        }
        for s in registry.stages() {
            let section = kind_section(s.as_ref());
            let heading = section.lines().next().unwrap().to_string();
            match text.find(&format!("{heading}\n")) {
                Some(i) => assert!(text[i..].starts_with(&section), "the doc's section for `{}` is stale; bless it", s.kind()),
                None => eprintln!("note: kind `{}` is not in docs/pipeline-format.md yet", s.kind()),
            }
        }
    }
}
