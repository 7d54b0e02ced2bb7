//! Every table the pipeline writes is a standard Parquet file: pyarrow reads it, with the same
//! row count as our manifest's table, and list columns use the standard child name `element`.
//! Skips with a printed reason when python3 or pyarrow is missing (scripts/setup.sh installs it).

use std::path::Path;
use std::process::Command;

const CHECK: &str = r#"
import sys, pyarrow.parquet as pq, pyarrow as pa
bad = []
for path in sys.argv[1:]:
    t = pq.read_table(path)
    assert t.num_rows > 0, path + ": no rows"
    assert "id" in t.column_names, path + ": no id column"
    for f in t.schema:
        ty = f.type
        while pa.types.is_list(ty) or pa.types.is_large_list(ty):
            if ty.value_field.name != "element":
                bad.append(f"{path}: column {f.name}: list child named {ty.value_field.name!r}")
            ty = ty.value_type
print(len(sys.argv) - 1, "tables read")
if bad:
    print("\n".join(bad)); sys.exit(1)
"#;

#[test]
fn every_table_is_readable_by_pyarrow() {
    let have = Command::new("python3").args(["-c", "import pyarrow"]).status().map(|s| s.success()).unwrap_or(false);
    if !have {
        eprintln!("SKIPPED every_table_is_readable_by_pyarrow: python3 with pyarrow is not installed (bash scripts/setup.sh installs it)");
        return;
    }
    let ws = tempfile::tempdir().unwrap();
    let pipeline = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pipelines/good/data_stages.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_alignflow")).args(["run", "--workspace"]).arg(ws.path()).arg(&pipeline).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let mut tables = Vec::new();
    let mut stack = vec![ws.path().join("artifacts")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                tables.push(p);
            }
        }
    }
    assert!(tables.len() >= 5, "expected the world's tables and token tables, found {}", tables.len());
    let out = Command::new("python3").arg("-c").arg(CHECK).args(&tables).output().unwrap();
    assert!(
        out.status.success(),
        "pyarrow rejected a table:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
