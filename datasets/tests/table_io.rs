//! Table IO tests: Parquet round trips of every column type the project uses, interop with
//! pyarrow in both directions (skipped with a printed reason when pyarrow is absent), JSONL
//! reading into the schemas the stages expect, and the row hash's documented invariances.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use arrow_array::builder::{Int64Builder, ListBuilder};
use arrow_array::types::Int32Type;
use arrow_array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array,
    LargeStringArray, ListArray, RecordBatch, StringArray,
};
use arrow_schema::{DataType, Field, Schema};
use datasets::schema::{self, ChatMessage};
use datasets::table::{
    ensure_id_column, i32_lists, messages_values, normalize_batch, read_jsonl, read_parquet,
    row_hashes, str_column, str_values, table_hash, write_parquet,
};

fn conversations() -> Vec<Vec<ChatMessage>> {
    vec![
        vec![ChatMessage::new("user", "What is 7 + 12?"), ChatMessage::new("assistant", "The answer is 19.")],
        vec![],
        vec![ChatMessage::new("system", "Style: capitals"), ChatMessage::new("user", "hi")],
    ]
}

/// Three rows covering every column type, with nulls where columns are nullable.
fn every_type_batch() -> RecordBatch {
    let columns: Vec<(&str, ArrayRef, bool)> = vec![
        ("id", Arc::new(StringArray::from(vec!["a", "b", "c"])), false),
        ("text", Arc::new(StringArray::from(vec![Some("héllo"), None, Some("")])), true),
        ("flag", Arc::new(BooleanArray::from(vec![Some(true), Some(false), None])), true),
        ("i32", Arc::new(Int32Array::from(vec![Some(-5), None, Some(i32::MAX)])), true),
        ("i64", Arc::new(Int64Array::from(vec![i64::MIN, 0, 42])), false),
        ("f32", Arc::new(Float32Array::from(vec![Some(0.25), Some(f32::NAN), None])), true),
        ("f64", Arc::new(Float64Array::from(vec![1e300, -0.5, 3.0])), false),
        ("bin", Arc::new(BinaryArray::from(vec![Some(&b"\x00\x01"[..]), None, Some(&b""[..])])), true),
        ("input_ids", schema::i32_list_array(&[vec![1, 2, 3], vec![], vec![-100]]), false),
        ("loss_mask", schema::bool_list_array(&[vec![false, true, true], vec![], vec![true]]), false),
        ("messages", schema::messages_array(&conversations()), false),
        (
            // arrow-rs default child name `item`, nullable items, a null list.
            "maybe_ids",
            Arc::new(ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
                Some(vec![Some(1), None]),
                None,
                Some(vec![]),
            ])),
            true,
        ),
    ];
    let fields: Vec<Field> =
        columns.iter().map(|(n, a, nullable)| Field::new(*n, a.data_type().clone(), *nullable)).collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns.into_iter().map(|(_, a, _)| a).collect()).unwrap()
}

#[test]
fn parquet_round_trips_every_column_type() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("every.parquet");
    let batch = every_type_batch();
    write_parquet(&path, &batch).unwrap();
    let back = read_parquet(&path).unwrap();
    // Reading normalises list children to `element`; otherwise the tables are identical.
    let expected = normalize_batch(&batch, "every").unwrap();
    assert_eq!(back.schema(), expected.schema());
    for (i, (a, b)) in back.columns().iter().zip(expected.columns()).enumerate() {
        // NaN != NaN, so compare the float column through its bits.
        if a.data_type() == &DataType::Float32 {
            let (a, b) = (a.as_any().downcast_ref::<Float32Array>().unwrap(), b.as_any().downcast_ref::<Float32Array>().unwrap());
            let bits = |x: &Float32Array| x.iter().map(|v| v.map(f32::to_bits)).collect::<Vec<_>>();
            assert_eq!(bits(a), bits(b), "column {i}");
        } else {
            assert_eq!(a.to_data(), b.to_data(), "column {i} ({})", back.schema().field(i).name());
        }
    }
    assert_eq!(row_hashes(&back).unwrap(), row_hashes(&batch).unwrap());
    assert_eq!(messages_values(&back, "messages", "every").unwrap(), conversations());
    assert_eq!(i32_lists(&back, "input_ids", "every").unwrap(), vec![vec![1, 2, 3], vec![], vec![-100]]);
}

#[test]
fn write_then_read_concatenates_many_row_groups() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.parquet");
    let n = 40_000; // more than one read batch
    let ids: Vec<String> = (0..n).map(|i| format!("r{i}")).collect();
    let toks: Vec<Vec<i32>> = (0..n).map(|i| vec![i as i32; i % 5]).collect();
    let batch = schema::tokenized_batch(&ids, &toks, None, "tok").unwrap();
    write_parquet(&path, &batch).unwrap();
    let back = read_parquet(&path).unwrap();
    assert_eq!(back.num_rows(), n);
    assert_eq!(i32_lists(&back, "input_ids", "tok").unwrap(), toks);
    assert_eq!(table_hash(&back).unwrap(), table_hash(&batch).unwrap());
}

fn python_with_pyarrow() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import pyarrow.parquet"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("SKIPPED: python3 with pyarrow is not available (pip install pyarrow to run this check)");
    }
    ok
}

fn python(script: &str, arg: &Path) -> String {
    let out = Command::new("python3").args(["-c", script]).arg(arg).output().unwrap();
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn pyarrow_reads_what_we_write() {
    if !python_with_pyarrow() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("every.parquet");
    write_parquet(&path, &every_type_batch()).unwrap();
    let script = r#"
import sys, json, pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
s = t.schema
ps = pq.ParquetFile(sys.argv[1]).schema
print(json.dumps({
  "rows": t.num_rows,
  "input_ids_type": str(s.field("input_ids").type),
  "messages": t.column("messages").to_pylist()[0],
  "input_ids": t.column("input_ids").to_pylist(),
  "text": t.column("text").to_pylist(),
  "child_names": [ps.column(i).path for i in range(len(ps))],
}))
"#;
    let v: serde_json::Value = serde_json::from_str(&python(script, &path)).unwrap();
    assert_eq!(v["rows"], 3);
    assert_eq!(v["input_ids_type"], "list<element: int32 not null>");
    assert_eq!(v["input_ids"], serde_json::json!([[1, 2, 3], [], [-100]]));
    assert_eq!(v["text"], serde_json::json!(["héllo", null, ""]));
    assert_eq!(
        v["messages"],
        serde_json::json!([{"role": "user", "content": "What is 7 + 12?"}, {"role": "assistant", "content": "The answer is 19."}])
    );
    let paths: Vec<String> = serde_json::from_value(v["child_names"].clone()).unwrap();
    assert!(paths.contains(&"input_ids.list.element".to_string()), "{paths:?}");
    assert!(!paths.iter().any(|p| p.contains(".item")), "{paths:?}");
}

#[test]
fn reads_pyarrow_files_with_large_types_and_dictionaries() {
    if !python_with_pyarrow() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("py.parquet");
    let script = r#"
import sys, pyarrow as pa, pyarrow.parquet as pq
msg = pa.struct([("role", pa.large_string()), ("content", pa.large_string())])
t = pa.table({
  "prompt": pa.array(["What is 2 + 2?", "Hi"], type=pa.large_string()),
  "ids": pa.array([[1, 2], [3]], type=pa.large_list(pa.int32())),
  "messages": pa.array([[{"role": "user", "content": "a"}], []], type=pa.list_(msg)),
  "category": pa.array(["sort", "sort"]).dictionary_encode(),
})
pq.write_table(t, sys.argv[1], compression="snappy")
"#;
    python(script, &path);
    let b = read_parquet(&path).unwrap();
    assert_eq!(str_values(&b, "prompt", "py").unwrap(), vec!["What is 2 + 2?", "Hi"]);
    assert_eq!(str_values(&b, "category", "py").unwrap(), vec!["sort", "sort"]);
    assert_eq!(i32_lists(&b, "ids", "py").unwrap(), vec![vec![1, 2], vec![3]]);
    assert_eq!(messages_values(&b, "messages", "py").unwrap(), vec![vec![ChatMessage::new("user", "a")], vec![]]);
}

#[test]
fn jsonl_messages_become_the_sft_messages_type() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trl.jsonl");
    std::fs::write(
        &path,
        concat!(
            r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], "score": 1, "ok": true, "tags": ["a"]}"#,
            "\n",
            r#"{"messages": [{"role": "user", "content": "2+2?"}], "score": 0.5, "ok": null, "tags": []}"#,
            "\n"
        ),
    )
    .unwrap();
    let b = read_jsonl(&path).unwrap();
    assert_eq!(b.num_rows(), 2);
    let msgs = messages_values(&b, "messages", "trl").unwrap();
    assert_eq!(msgs[0][1], ChatMessage::new("assistant", "hello"));
    assert_eq!(msgs[1].len(), 1);
    assert_eq!(b.schema().field_with_name("score").unwrap().data_type(), &DataType::Float64);
    assert_eq!(b.schema().field_with_name("ok").unwrap().data_type(), &DataType::Boolean);
    // The JSONL table writes and reads back unchanged.
    let pq = dir.path().join("trl.parquet");
    write_parquet(&pq, &b).unwrap();
    assert_eq!(row_hashes(&read_parquet(&pq).unwrap()).unwrap(), row_hashes(&b).unwrap());
}

#[test]
fn row_hash_ignores_column_order_physical_types_and_batching() {
    let a = RecordBatch::try_from_iter(vec![
        ("x", Arc::new(Int32Array::from(vec![1, 2, 3])) as ArrayRef),
        ("s", Arc::new(StringArray::from(vec!["a", "b", "c"])) as ArrayRef),
    ])
    .unwrap();
    // Same values: other column order, Int64 instead of Int32, LargeUtf8 instead of Utf8.
    let b = RecordBatch::try_from_iter(vec![
        ("s", Arc::new(LargeStringArray::from(vec!["a", "b", "c"])) as ArrayRef),
        ("x", Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef),
    ])
    .unwrap();
    let ha = row_hashes(&a).unwrap();
    assert_eq!(ha, row_hashes(&b).unwrap());
    // Batch boundaries: hashing a slice gives the same per-row hashes.
    assert_eq!(row_hashes(&a.slice(1, 2)).unwrap(), ha[1..].to_vec());
    // Any value or name change changes the hash.
    let c = RecordBatch::try_from_iter(vec![
        ("x", Arc::new(Int32Array::from(vec![1, 2, 4])) as ArrayRef),
        ("s", Arc::new(StringArray::from(vec!["a", "b", "c"])) as ArrayRef),
    ])
    .unwrap();
    let hc = row_hashes(&c).unwrap();
    assert_eq!(hc[..2], ha[..2]);
    assert_ne!(hc[2], ha[2]);
    let d = RecordBatch::try_from_iter(vec![
        ("y", Arc::new(Int32Array::from(vec![1, 2, 3])) as ArrayRef),
        ("s", Arc::new(StringArray::from(vec!["a", "b", "c"])) as ArrayRef),
    ])
    .unwrap();
    assert_ne!(row_hashes(&d).unwrap()[0], ha[0]);
    // A list of ["ab"] differs from a list of ["a", "b"] (lengths are encoded).
    let mut l1 = ListBuilder::new(Int64Builder::new());
    l1.append_value([Some(12)]);
    l1.append_value([Some(1), Some(2)]);
    let l = RecordBatch::try_from_iter(vec![("l", Arc::new(l1.finish()) as ArrayRef)]).unwrap();
    let hl = row_hashes(&l).unwrap();
    assert_ne!(hl[0], hl[1]);
}

#[test]
fn ensure_id_derives_unique_stable_keys_and_checks_existing_ones() {
    let t = RecordBatch::try_from_iter(vec![(
        "text",
        Arc::new(StringArray::from(vec!["a", "b", "a"])) as ArrayRef,
    )])
    .unwrap();
    let with = ensure_id_column(&t, "user").unwrap();
    assert_eq!(with.schema().field(0).name(), "id");
    let ids = str_values(&with, "id", "user").unwrap();
    assert_eq!(ids[0].len(), 16);
    assert_eq!(ids[2], format!("{}-2", ids[0]));
    assert_ne!(ids[0], ids[1]);
    // Appending rows keeps earlier ids.
    let more = RecordBatch::try_from_iter(vec![(
        "text",
        Arc::new(StringArray::from(vec!["a", "b", "a", "c"])) as ArrayRef,
    )])
    .unwrap();
    let more = ensure_id_column(&more, "user").unwrap();
    assert_eq!(str_values(&more, "id", "user").unwrap()[..3], ids[..]);
    // Integer ids become strings; duplicates are errors that name the row.
    let ints = RecordBatch::try_from_iter(vec![("id", Arc::new(Int64Array::from(vec![7, 8])) as ArrayRef)]).unwrap();
    assert_eq!(str_values(&ensure_id_column(&ints, "u").unwrap(), "id", "u").unwrap(), vec!["7", "8"]);
    let dup = RecordBatch::try_from_iter(vec![("id", Arc::new(StringArray::from(vec!["k", "k"])) as ArrayRef)]).unwrap();
    let err = ensure_id_column(&dup, "mine").unwrap_err().to_string();
    assert!(err.contains("mine") && err.contains("row 1") && err.contains("duplicate"), "{err}");
}

#[test]
fn accessor_errors_name_table_column_and_types() {
    let b = RecordBatch::try_from_iter(vec![("n", Arc::new(Int32Array::from(vec![1])) as ArrayRef)]).unwrap();
    let err = str_column(&b, "n", "prompts").unwrap_err().to_string();
    assert!(err.contains("prompts") && err.contains("`n`") && err.contains("Int32") && err.contains("Utf8"), "{err}");
    let err = str_column(&b, "prompt", "prompts").unwrap_err().to_string();
    assert!(err.contains("missing column `prompt`") && err.contains("n"), "{err}");
    let err = read_parquet(Path::new("/nonexistent/x.parquet")).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/x.parquet"), "{err}");
}

#[test]
fn schema_check_accepts_read_back_tables_and_rejects_wrong_types() {
    let rows = vec![schema::PromptRow {
        id: "p1".into(),
        category: "arithmetic".into(),
        is_safety: false,
        prompt: "What is 1 + 1?".into(),
        judge: "{}".into(),
    }];
    let b = schema::prompts_batch(&rows, "p").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.parquet");
    write_parquet(&path, &b).unwrap();
    let back = read_parquet(&path).unwrap();
    schema::check_schema(&back, &schema::prompts_schema(), "p").unwrap();
    assert_eq!(schema::prompt_rows(&back, "p").unwrap(), rows);
    let err = schema::check_schema(&back, &schema::sft_schema(), "p").unwrap_err().to_string();
    assert!(err.contains("messages"), "{err}");
}

#[test]
fn empty_tables_round_trip_with_their_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.parquet");
    let empty = schema::sft_batch(&[], "sft").unwrap();
    write_parquet(&path, &empty).unwrap();
    let back = read_parquet(&path).unwrap();
    assert_eq!(back.num_rows(), 0);
    assert_eq!(back.schema(), schema::sft_schema());
    assert_eq!(table_hash(&back).unwrap(), table_hash(&empty).unwrap());
}
