//! `parquet`: a user's Parquet file as a table (see `source` for what every file source does).

use crate::source::FileSource;

pub const PARQUET: FileSource = FileSource {
    kind: "parquet",
    doc: "A Parquet file of the user's (e.g. TRL-style prompt/chosen/rejected or a `messages` column) as a table.",
    read: datasets::table::read_parquet,
};
