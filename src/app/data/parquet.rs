//! Training records from a Parquet table, in the column layouts of
//! sentence-transformers datasets as Hugging Face `datasets` exports them:
//! `anchor`/`positive`/`negative` (or `negative_1`, `negative_2`, …), or
//! `query`/`positive` (or a `positives` list)/`negatives` (a list). Other
//! columns are ignored; a table without a query or a positive column is a
//! typed error naming the columns it has.

use std::path::Path;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;

use super::{Malformed, Read, TrainingRecord};
use crate::app::error::{AppError, DataLineError, Result};

/// Which columns hold what.
struct Columns {
    query: String,
    positive: String,
    negatives: Vec<String>,
}

fn columns(path: &Path, names: &[String]) -> Result<Columns> {
    let has = |n: &str| names.iter().any(|c| c == n);
    let missing = |wanted: &'static str| AppError::MissingColumn { path: path.to_path_buf(), wanted, found: names.to_vec() };
    let query = ["query", "anchor"].into_iter().find(|c| has(c)).ok_or_else(|| missing("query (or anchor)"))?;
    let positive = ["positive", "positives"].into_iter().find(|c| has(c)).ok_or_else(|| missing("positive (or positives)"))?;
    let negatives = if has("negatives") {
        vec!["negatives".to_string()]
    } else if has("negative") {
        vec!["negative".to_string()]
    } else {
        // negative_1, negative_2, … in order, as many as there are in a row.
        (1..).map(|i| format!("negative_{i}")).take_while(|c| has(c)).collect()
    };
    Ok(Columns { query: query.to_string(), positive: positive.to_string(), negatives })
}

/// A cell's strings: a string, a list of strings, or none for null.
fn strings(field: &Field) -> std::result::Result<Vec<String>, DataLineError> {
    match field {
        Field::Str(s) => Ok(vec![s.clone()]),
        Field::Null => Ok(Vec::new()),
        Field::ListInternal(list) => list.elements().iter().map(strings).collect::<std::result::Result<Vec<_>, _>>().map(|v| v.concat()),
        _ => Err(DataLineError::Format("a text column holds something other than strings")),
    }
}

/// Reads training records from a Parquet file (snappy- or zstd-compressed
/// pages, pyarrow's default and its common choice).
///
/// # Errors
/// [`crate::GradCacheError::Io`] for a missing file; [`AppError::Parquet`]
/// for a file the parquet reader refuses; [`AppError::MissingColumn`];
/// [`AppError::DataLine`] (the row's number, from 1) for a row with an empty
/// query or positive or a non-string cell (with [`Malformed::Fail`]).
pub fn read_parquet_records(path: &Path, malformed: Malformed) -> Result<Read<TrainingRecord>> {
    let file = std::fs::File::open(path).map_err(crate::error::io_error(path))?;
    let refused = |e: parquet::errors::ParquetError| AppError::Parquet { path: path.to_path_buf(), reason: e.to_string() };
    let reader = SerializedFileReader::new(file).map_err(refused)?;
    let names: Vec<String> =
        reader.metadata().file_metadata().schema_descr().root_schema().get_fields().iter().map(|f| f.name().to_string()).collect();
    let cols = columns(path, &names)?;
    let mut items = Vec::new();
    let mut skipped = 0;
    for (i, row) in reader.get_row_iter(None).map_err(refused)?.enumerate() {
        let row = row.map_err(refused)?;
        let record = (|| -> std::result::Result<TrainingRecord, DataLineError> {
            let mut query = Vec::new();
            let mut positives = Vec::new();
            let mut negatives = Vec::new();
            for (name, field) in row.get_column_iter() {
                if *name == cols.query {
                    query = strings(field)?;
                } else if *name == cols.positive {
                    positives = strings(field)?;
                } else if cols.negatives.contains(name) {
                    negatives.extend(strings(field)?);
                }
            }
            let query = query.concat();
            if query.trim().is_empty() {
                return Err(DataLineError::EmptyField("query"));
            }
            if positives.is_empty() || positives.iter().any(|p| p.trim().is_empty()) {
                return Err(DataLineError::EmptyField("positive"));
            }
            if negatives.iter().any(|n| n.trim().is_empty()) {
                return Err(DataLineError::EmptyField("negatives"));
            }
            Ok(TrainingRecord { query, positives, negatives })
        })();
        match (record, malformed) {
            (Ok(r), _) => items.push(r),
            (Err(_), Malformed::Skip) => skipped += 1,
            (Err(reason), Malformed::Fail) => return Err(AppError::DataLine { path: path.to_path_buf(), line: i + 1, reason }),
        }
    }
    Ok(Read { items, skipped })
}

/// Training records from JSONL, or from Parquet when the file's name ends
/// in `.parquet`.
///
/// # Errors
/// As [`crate::app::data::jsonl::read_training_records`] and
/// [`read_parquet_records`].
pub fn read_training_file(path: &Path, malformed: Malformed) -> Result<Read<TrainingRecord>> {
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("parquet")) {
        read_parquet_records(path, malformed)
    } else {
        super::jsonl::read_training_records(path, malformed)
    }
}
