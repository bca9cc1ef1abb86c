//! The run directory: where stages meet.
//!
//! Every stage reads the Parquet tables earlier stages wrote and writes its own, so a stage can
//! run (and be tested) alone. A table `name` is the file `<run dir>/<name>.parquet`.
//!
//! Atomic visibility: a table is written to a hidden temporary file in the same directory and
//! renamed into place, so a reader (or a rerun after `kill -9`) sees the old table or the new
//! one, never half of one.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::error::{Error, IoContext, Result};

/// Rows per Parquet row group: large enough for good compression and fast scans, small enough
/// that a reader streaming one group at a time keeps memory flat.
pub const ROW_GROUP_ROWS: usize = 64 * 1024;

/// A directory of named Parquet tables.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// Open (creating if needed) a run directory.
    pub fn create(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root).with_path(&root)?;
        Ok(Self { root })
    }

    /// Open an existing run directory; an error if it does not exist.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        if !root.is_dir() {
            return Err(Error::input(&root, "run directory does not exist (run `biodistill ingest` first)"));
        }
        Ok(Self { root })
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where table `name` lives.
    pub fn table_path(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.parquet"))
    }

    /// Whether table `name` has been written.
    pub fn has_table(&self, name: &str) -> bool {
        self.table_path(name).is_file()
    }

    /// Names of every table in the directory, sorted.
    pub fn tables(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.root).with_path(&self.root)? {
            let path = entry.with_path(&self.root)?.path();
            if path.extension().is_some_and(|e| e == "parquet") {
                if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                    if !stem.starts_with('.') {
                        names.push(stem.to_string());
                    }
                }
            }
        }
        names.sort();
        Ok(names)
    }

    /// Write table `name` atomically (see the module docs), replacing any previous version.
    pub fn write_table(&self, name: &str, schema: SchemaRef, batches: &[RecordBatch]) -> Result<usize> {
        let path = self.table_path(name);
        write_parquet_atomic(&path, schema, batches)
    }

    /// Read all of table `name`.
    pub fn read_table(&self, name: &str) -> Result<Vec<RecordBatch>> {
        read_parquet(&self.table_path(name))
    }
}

/// Parquet writer settings used for every table: zstd, bounded row groups, statistics on.
pub fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("3 is a valid zstd level")))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .build()
}

/// Write `batches` to `path` through a temporary file and a rename. Returns the row count.
pub fn write_parquet_atomic(path: &Path, schema: SchemaRef, batches: &[RecordBatch]) -> Result<usize> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_path(dir)?;
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("table.parquet");
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let file = fs::File::create(&tmp).with_path(&tmp)?;
    let mut writer = ArrowWriter::try_new(file, schema, Some(writer_properties()))?;
    let mut rows = 0;
    for batch in batches {
        rows += batch.num_rows();
        writer.write(batch)?;
    }
    let file = writer.into_inner()?;
    file.sync_all().with_path(&tmp)?;
    fs::rename(&tmp, path).with_path(path)?;
    Ok(rows)
}

/// Read a whole Parquet file; a corrupt or non-Parquet file is an input error naming it.
pub fn read_parquet(path: &Path) -> Result<Vec<RecordBatch>> {
    let file = fs::File::open(path).with_path(path)?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| Error::input(path, format!("not a readable Parquet file: {e}")))?
        .build()
        .map_err(|e| Error::input(path, format!("not a readable Parquet file: {e}")))?;
    reader.map(|batch| batch.map_err(|e| Error::input(path, format!("corrupt Parquet data: {e}")))).collect()
}

/// Concatenate batches into one (empty batch of `schema` when there are none).
pub fn concat(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<RecordBatch> {
    Ok(arrow::compute::concat_batches(schema, batches)?)
}

/// Shorthand used by writers that build one batch from columns.
pub fn batch(schema: &SchemaRef, columns: Vec<arrow::array::ArrayRef>) -> Result<RecordBatch> {
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    #[test]
    fn write_read_round_trip_and_listing() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(dir.path()).unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, false),
            Field::new("name", DataType::Utf8, false),
        ]));
        let b =
            batch(&schema, vec![Arc::new(Int32Array::from(vec![1, 2])), Arc::new(StringArray::from(vec!["a", "é"]))])
                .unwrap();
        assert_eq!(run.write_table("t", schema.clone(), std::slice::from_ref(&b)).unwrap(), 2);
        assert_eq!(run.tables().unwrap(), vec!["t".to_string()]);
        let back = run.read_table("t").unwrap();
        assert_eq!(concat(&schema, &back).unwrap(), b);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn corrupt_parquet_is_an_input_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.parquet");
        fs::write(&path, b"not parquet at all").unwrap();
        let err = read_parquet(&path).unwrap_err().to_string();
        assert!(err.contains("bad.parquet") && err.contains("Parquet"), "{err}");
    }
}
