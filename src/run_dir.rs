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

/// Checkpoint directory of the distilled student, under the run directory (written by train,
/// read by extract, the SQL functions and informative selection).
pub const STUDENT_DIR: &str = "student";
/// Checkpoint directory of the supervised reference, under the run directory.
pub const SUPERVISED_REFERENCE_DIR: &str = "student-supervised-reference";

/// A directory of named Parquet tables.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// The checkpoint root of the distilled student, or of the supervised reference.
    pub fn checkpoints(&self, supervised_reference: bool) -> PathBuf {
        self.root().join(if supervised_reference { SUPERVISED_REFERENCE_DIR } else { STUDENT_DIR })
    }

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

    /// Where table `name` lives, or an input error saying it has not been written yet.
    pub fn existing_table(&self, name: &str) -> Result<PathBuf> {
        let path = self.table_path(name);
        if !path.is_file() {
            return Err(Error::input(&path, format!("table {name} is missing (run the stage that writes it first)")));
        }
        Ok(path)
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

    /// The Arrow schema of table `name` (from its Parquet footer).
    pub fn table_schema(&self, name: &str) -> Result<SchemaRef> {
        Ok(self.footer(name)?.schema().clone())
    }

    /// Rows in table `name` (from its Parquet footer).
    pub fn table_rows(&self, name: &str) -> Result<usize> {
        Ok(usize::try_from(self.footer(name)?.metadata().file_metadata().num_rows()).unwrap_or(0))
    }

    fn footer(&self, name: &str) -> Result<ParquetRecordBatchReaderBuilder<fs::File>> {
        let path = self.table_path(name);
        let file = fs::File::open(&path).with_path(&path)?;
        ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| Error::input(&path, format!("not a readable Parquet file: {e}")))
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
    let mut sink = TableSink::create_at(path, schema)?;
    for batch in batches {
        sink.write(batch)?;
    }
    sink.finish()
}

/// A table written batch by batch (output that grows with the corpus never sits in memory
/// whole), made visible only by [`TableSink::finish`]. Dropped unfinished (an error mid-way),
/// its temporary file is removed and any previous table stays as it was.
pub struct TableSink {
    path: PathBuf,
    tmp: PathBuf,
    writer: Option<ArrowWriter<fs::File>>,
    rows: usize,
}

impl TableSink {
    /// A sink for table `name` of `run_dir`.
    pub fn create(run_dir: &RunDir, name: &str, schema: SchemaRef) -> Result<Self> {
        Self::create_at(&run_dir.table_path(name), schema)
    }

    /// A sink for the Parquet file `path` (its directory is created if needed).
    pub fn create_at(path: &Path, schema: SchemaRef) -> Result<Self> {
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).with_path(dir)?;
        let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("table.parquet");
        let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
        let file = fs::File::create(&tmp).with_path(&tmp)?;
        let writer = ArrowWriter::try_new(file, schema, Some(writer_properties()))?;
        Ok(Self { path: path.to_path_buf(), tmp, writer: Some(writer), rows: 0 })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.rows += batch.num_rows();
        self.writer.as_mut().expect("writer is only taken by finish, which consumes self").write(batch)?;
        Ok(())
    }

    /// Close the file and rename it into place; returns the row count.
    pub fn finish(mut self) -> Result<usize> {
        let writer = self.writer.take().expect("finish runs once");
        let file = writer.into_inner()?;
        file.sync_all().with_path(&self.tmp)?;
        fs::rename(&self.tmp, &self.path).with_path(&self.path)?;
        Ok(self.rows)
    }
}

impl Drop for TableSink {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Write a small file (JSON state, not a table) through a temporary file, fsync and a rename:
/// a reader, or a rerun after `kill -9`, sees the old contents or the new, never half.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_path(dir)?;
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut file, bytes)?;
        file.sync_all()
    };
    write().with_path(&tmp)?;
    fs::rename(&tmp, path).with_path(path)
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

/// Tiny tables for tests: columns from literals, written as one batch.
#[cfg(test)]
pub mod test_tables {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int32Array, RecordBatch, StringArray};

    use super::RunDir;

    pub fn strs(values: &[&str]) -> ArrayRef {
        Arc::new(StringArray::from(values.to_vec()))
    }

    pub fn ints(values: &[Option<i32>]) -> ArrayRef {
        Arc::new(Int32Array::from(values.to_vec()))
    }

    /// Table `name` of `run` with `columns`, in that order.
    pub fn write(run: &RunDir, name: &str, columns: Vec<(&str, ArrayRef)>) {
        let batch = RecordBatch::try_from_iter(columns).unwrap();
        run.write_table(name, batch.schema(), &[batch]).unwrap();
    }
}
