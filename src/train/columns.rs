//! Typed column access and streaming reads over run-directory tables (shared with extract).
//!
//! Every missing or mistyped column is an input error naming the table file, so a table written
//! by another stage with the wrong schema fails loudly instead of training on nothing.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, Float64Array, Int8Array, Int32Array, Int64Array, StringArray};
use arrow::datatypes::{Float64Type, Int32Type, Int64Type};
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use crate::error::{Error, IoContext, Result};
use crate::run_dir::RunDir;

/// A table's record batches, read `rows` at a time so memory stays flat in the table's size.
pub struct TableStream {
    path: PathBuf,
    rows: usize,
    reader: ParquetRecordBatchReader,
}

impl TableStream {
    pub fn open(run_dir: &RunDir, table: &str, rows: usize) -> Result<Self> {
        let path = run_dir.table_path(table);
        if !path.is_file() {
            return Err(Error::input(&path, format!("table {table} is missing (run the stage that writes it first)")));
        }
        let file = File::open(&path).with_path(&path)?;
        let unreadable = |e| Error::input(&path, format!("not a readable Parquet file: {e}"));
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(unreadable)?;
        let total = usize::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
        let reader = builder.with_batch_size(rows.max(1)).build().map_err(unreadable)?;
        Ok(Self { path, rows: total, reader })
    }

    /// Rows in the whole table (from the Parquet footer).
    pub fn num_rows(&self) -> usize {
        self.rows
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Iterator for TableStream {
    type Item = Result<Columns>;
    fn next(&mut self) -> Option<Self::Item> {
        let batch = self.reader.next()?;
        Some(
            batch
                .map(|batch| Columns { batch, path: self.path.clone() })
                .map_err(|e| Error::input(&self.path, format!("corrupt Parquet data: {e}"))),
        )
    }
}

/// Read a whole (small) table: teacher labels and gold sets, not the corpus.
pub fn read_all(run_dir: &RunDir, table: &str) -> Result<Vec<Columns>> {
    TableStream::open(run_dir, table, 8192)?.collect()
}

/// One record batch plus the file it came from, for error messages.
pub struct Columns {
    pub batch: RecordBatch,
    pub path: PathBuf,
}

impl Columns {
    pub fn len(&self) -> usize {
        self.batch.num_rows()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn column(&self, name: &str) -> Result<&dyn Array> {
        self.batch
            .column_by_name(name)
            .map(|c| c.as_ref())
            .ok_or_else(|| Error::input(&self.path, format!("missing column {name}")))
    }

    fn wrong_type(&self, name: &str, expected: &str) -> Error {
        Error::input(&self.path, format!("column {name} is not {expected}"))
    }

    pub fn str(&self, name: &str) -> Result<&StringArray> {
        self.column(name)?.as_any().downcast_ref().ok_or_else(|| self.wrong_type(name, "Utf8"))
    }

    pub fn i32(&self, name: &str) -> Result<&Int32Array> {
        self.column(name)?.as_primitive_opt::<Int32Type>().ok_or_else(|| self.wrong_type(name, "Int32"))
    }

    pub fn i64(&self, name: &str) -> Result<&Int64Array> {
        self.column(name)?.as_primitive_opt::<Int64Type>().ok_or_else(|| self.wrong_type(name, "Int64"))
    }

    pub fn f64(&self, name: &str) -> Result<&Float64Array> {
        self.column(name)?.as_primitive_opt::<Float64Type>().ok_or_else(|| self.wrong_type(name, "Float64"))
    }

    pub fn i8(&self, name: &str) -> Result<&Int8Array> {
        self.column(name)?.as_any().downcast_ref().ok_or_else(|| self.wrong_type(name, "Int8"))
    }
}

/// Value of a nullable column at `row`.
pub fn opt_i32(array: &Int32Array, row: usize) -> Option<i32> {
    array.is_valid(row).then(|| array.value(row))
}

/// Value of a nullable string column at `row`.
pub fn opt_str(array: &StringArray, row: usize) -> Option<&str> {
    array.is_valid(row).then(|| array.value(row))
}
