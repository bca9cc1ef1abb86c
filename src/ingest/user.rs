//! The user's own corpora: Parquet, JSONL or CSV files with configurable id/text columns.
//!
//! File-level problems (unreadable, corrupt Parquet, a missing column, a column of the wrong
//! type) fail that file with one line naming it; row-level problems (a null or missing value,
//! a non-UTF-8 line, an unparseable JSON line, a duplicate id) quarantine that row. Either way
//! the other files and rows are still ingested.

use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use serde::{Deserialize, Serialize};

use super::collect::{Collector, Doc};
use crate::error::{Error, IoContext, Result};

/// File format of a user corpus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum UserFormat {
    Parquet,
    Jsonl,
    Csv,
}

/// One user corpus (`[[ingest.user_corpora]]` in a pipeline file, or `ingest --input`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserCorpus {
    /// A file, or a directory whose files of the format are all read.
    pub path: PathBuf,
    /// Format; by default taken from the file extension (`.parquet`, `.jsonl`/`.ndjson`, `.csv`).
    #[serde(default)]
    pub format: Option<UserFormat>,
    /// Source name in `documents.source` (and the doc_id prefix); default: the file stem.
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default = "default_id")]
    pub id_column: String,
    #[serde(default = "default_text")]
    pub text_column: String,
    #[serde(default)]
    pub title_column: Option<String>,
}

fn default_id() -> String {
    "id".into()
}
fn default_text() -> String {
    "text".into()
}

impl UserCorpus {
    /// A corpus with default columns.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            format: None,
            source: None,
            id_column: default_id(),
            text_column: default_text(),
            title_column: None,
        }
    }
}

fn format_of(path: &Path) -> Option<UserFormat> {
    match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
        "parquet" => Some(UserFormat::Parquet),
        "jsonl" | "ndjson" => Some(UserFormat::Jsonl),
        "csv" => Some(UserFormat::Csv),
        _ => None,
    }
}

/// Read a user corpus (each file on its own: a failing file is recorded and skipped).
pub fn read(corpus: &UserCorpus, c: &mut Collector) -> Result<()> {
    let files: Vec<PathBuf> = if corpus.path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&corpus.path)
            .with_path(&corpus.path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && corpus.format.or(format_of(p)).is_some() && format_of(p).is_some())
            .collect();
        v.sort();
        v
    } else if corpus.path.exists() {
        vec![corpus.path.clone()]
    } else {
        return Err(Error::input(&corpus.path, "user corpus not found"));
    };
    for file in files {
        c.try_file(&file, |path, c| read_file(corpus, path, c));
    }
    Ok(())
}

/// One row of a user file, before it becomes a [`Doc`].
struct Row {
    id: Option<String>,
    title: Option<String>,
    text: Option<String>,
}

fn read_file(corpus: &UserCorpus, path: &Path, c: &mut Collector) -> Result<()> {
    let format = corpus.format.or_else(|| format_of(path)).ok_or_else(|| {
        Error::input(path, "unknown format: use a .parquet, .jsonl or .csv extension, or set `format`")
    })?;
    let source = corpus
        .source
        .clone()
        .unwrap_or_else(|| path.file_stem().and_then(|s| s.to_str()).unwrap_or("user").to_string());
    let mut add = |line: usize, row: std::result::Result<Row, String>, c: &mut Collector| {
        let row = row.and_then(|r| match (r.id, r.text) {
            (Some(id), Some(text)) => Ok((id, r.title, text)),
            (None, _) => Err(format!("missing or null '{}'", corpus.id_column)),
            (_, None) => Err(format!("missing or null '{}'", corpus.text_column)),
        });
        match row {
            Ok((id, title, text)) => {
                let doc = Doc {
                    doc_id: format!("{source}:{id}"),
                    source: source.clone(),
                    split: crate::schema::split::UNLABELED.into(),
                    title,
                    text,
                    sentences: None,
                };
                c.add_doc(doc, path, Some(line));
            }
            Err(problem) => c.quarantine(&source, path, Some(line), None, &problem, None),
        }
    };
    match format {
        UserFormat::Parquet => read_parquet(corpus, path, c, &mut add),
        UserFormat::Jsonl => read_jsonl(corpus, path, c, &mut add),
        UserFormat::Csv => read_csv(corpus, path, c, &mut add),
    }
}

type AddRow<'a> = dyn FnMut(usize, std::result::Result<Row, String>, &mut Collector) + 'a;

fn read_parquet(corpus: &UserCorpus, path: &Path, c: &mut Collector, add: &mut AddRow) -> Result<()> {
    let batches = crate::run_dir::read_parquet(path)?;
    let schema = match batches.first() {
        Some(b) => b.schema(),
        None => return Ok(()),
    };
    let string_col = |name: &str, allow_numbers: bool| -> Result<usize> {
        let (i, field) = schema.column_with_name(name).ok_or_else(|| {
            let have: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            Error::input(path, format!("missing column '{name}' (columns: {})", have.join(", ")))
        })?;
        let ok = is_string_type(field.data_type()) || (allow_numbers && field.data_type().is_integer());
        if !ok {
            return Err(Error::input(
                path,
                format!("column '{name}' has type {}, expected a string", field.data_type()),
            ));
        }
        Ok(i)
    };
    let id = string_col(&corpus.id_column, true)?;
    let text = string_col(&corpus.text_column, false)?;
    let title = corpus.title_column.as_deref().map(|t| string_col(t, false)).transpose()?;
    let mut line = 0;
    for batch in &batches {
        let as_strings = |i: usize| arrow::compute::cast(batch.column(i), &DataType::Utf8);
        let ids = as_strings(id)?;
        let texts = as_strings(text)?;
        let titles = title.map(as_strings).transpose()?;
        let (ids, texts) = (ids.as_string::<i32>(), texts.as_string::<i32>());
        for r in 0..batch.num_rows() {
            line += 1;
            let get = |a: &arrow::array::StringArray| a.is_valid(r).then(|| a.value(r).to_string());
            let row =
                Row { id: get(ids), text: get(texts), title: titles.as_ref().and_then(|t| get(t.as_string::<i32>())) };
            add(line, Ok(row), c);
        }
    }
    Ok(())
}

/// Any Arrow encoding of strings: Utf8, LargeUtf8, Utf8View, or a dictionary of them (what
/// pandas writes for a categorical column). All cast to Utf8.
fn is_string_type(t: &DataType) -> bool {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, values) => is_string_type(values),
        _ => false,
    }
}

fn read_jsonl(corpus: &UserCorpus, path: &Path, c: &mut Collector, add: &mut AddRow) -> Result<()> {
    let bytes = std::fs::read(path).with_path(path)?;
    let field = |v: &serde_json::Value, name: &str| match v.get(name) {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let row = std::str::from_utf8(raw)
            .map_err(|e| format!("not valid UTF-8 ({e})"))
            .and_then(|s| serde_json::from_str::<serde_json::Value>(s).map_err(|e| format!("not a JSON object: {e}")))
            .and_then(|v| {
                if !v.is_object() {
                    return Err("not a JSON object".to_string());
                }
                if v.get(&corpus.text_column).is_some_and(|t| !t.is_string() && !t.is_null()) {
                    return Err(format!("'{}' is not a string", corpus.text_column));
                }
                Ok(Row {
                    id: field(&v, &corpus.id_column),
                    text: v.get(&corpus.text_column).and_then(|t| t.as_str()).map(str::to_string),
                    title: corpus.title_column.as_deref().and_then(|t| field(&v, t)),
                })
            });
        add(i + 1, row, c);
    }
    Ok(())
}

fn read_csv(corpus: &UserCorpus, path: &Path, c: &mut Collector, add: &mut AddRow) -> Result<()> {
    let file = std::fs::File::open(path).with_path(path)?;
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(file);
    let headers = reader.byte_headers().map_err(|e| Error::input(path, format!("bad CSV header: {e}")))?.clone();
    let col = |name: &str| -> Result<usize> {
        headers.iter().position(|h| h == name.as_bytes()).ok_or_else(|| {
            let have: Vec<_> = headers.iter().map(String::from_utf8_lossy).collect();
            Error::input(path, format!("missing column '{name}' (columns: {})", have.join(", ")))
        })
    };
    let (id, text) = (col(&corpus.id_column)?, col(&corpus.text_column)?);
    let title = corpus.title_column.as_deref().map(col).transpose()?;
    for (i, record) in reader.byte_records().enumerate() {
        let line = i + 2;
        let row = record.map_err(|e| format!("bad CSV row: {e}")).and_then(|r| {
            let get = |k: usize| -> std::result::Result<Option<String>, String> {
                r.get(k)
                    .map(|b| String::from_utf8(b.to_vec()).map_err(|e| format!("not valid UTF-8 ({})", e.utf8_error())))
                    .transpose()
                    .map(|v| v.filter(|s| !s.is_empty()))
            };
            Ok(Row { id: get(id)?, text: get(text)?, title: title.map(get).transpose()?.flatten() })
        });
        add(line, row, c);
    }
    Ok(())
}
