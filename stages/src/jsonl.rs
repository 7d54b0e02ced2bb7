//! `jsonl`: a user's JSON Lines file as a table (see `source` for what every file source does).

use crate::source::FileSource;

pub const JSONL: FileSource = FileSource {
    kind: "jsonl",
    doc: "A JSON Lines file (one object per line) as a table.",
    read: datasets::table::read_jsonl,
};

#[cfg(test)]
mod tests {
    use super::*;
    use graph::Stage;
    use crate::common::{table_file, testing};
    use graph::ParamValue;

    #[test]
    fn reads_lines_and_derives_ids() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("x.jsonl"), "{\"text\": \"a b\"}\n{\"text\": \"c\"}\n").unwrap();
        let params = testing::params(&JSONL, &[("path", ParamValue::Str("x.jsonl".into()))]);
        let fp = JSONL.external_fingerprint(&params, d.path()).unwrap();
        assert!(fp.is_some());
        let (outs, _) = testing::run(&JSONL, &params, d.path(), Default::default(), d.path(), 1).unwrap();
        let t = datasets::table::read_parquet(&table_file(&outs["table"])).unwrap();
        assert_eq!(t.num_rows(), 2);
        assert!(t.schema().index_of("id").is_ok());
    }

    #[test]
    fn missing_file_is_an_error_not_a_panic() {
        let d = tempfile::tempdir().unwrap();
        let params = testing::params(&JSONL, &[("path", ParamValue::Str("nope.jsonl".into()))]);
        let e = JSONL.external_fingerprint(&params, d.path()).unwrap_err();
        assert!(e.to_string().contains("nope.jsonl"), "{e}");
    }
}
