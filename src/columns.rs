//! Typed column access and streaming reads over run-directory tables, for the stages that need
//! rows (training, evaluation, selection, publish gates).
//!
//! Every missing or mistyped column is an input error naming the table file, so a table written
//! by another stage with the wrong schema fails loudly instead of training on nothing. String
//! columns in another Arrow encoding (LargeUtf8, Utf8View, dictionary-encoded) are cast to Utf8
//! as they are read, so [`Columns::str`] reads them all.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, BooleanArray, Float64Array, Int8Array, Int32Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Float64Type, Int32Type, Int64Type, Schema};
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
        let path = run_dir.existing_table(table)?;
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
                .map_err(|e| Error::input(&self.path, format!("corrupt Parquet data: {e}")))
                .and_then(|batch| Columns::new(batch, self.path.clone())),
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

/// A string type other than Utf8: LargeUtf8, Utf8View, or a dictionary of strings.
fn is_other_string(t: &DataType) -> bool {
    match t {
        DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, values) => matches!(**values, DataType::Utf8) || is_other_string(values),
        _ => false,
    }
}

/// `batch` with its string columns in other encodings cast to Utf8 (unchanged when none is).
pub fn utf8_strings(batch: RecordBatch) -> Result<RecordBatch> {
    let schema = batch.schema();
    if !schema.fields().iter().any(|f| is_other_string(f.data_type())) {
        return Ok(batch);
    }
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(fields.capacity());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        if is_other_string(field.data_type()) {
            columns.push(arrow::compute::cast(column, &DataType::Utf8)?);
            fields.push(
                Field::new(field.name(), DataType::Utf8, field.is_nullable()).with_metadata(field.metadata().clone()),
            );
        } else {
            columns.push(column.clone());
            fields.push(field.as_ref().clone());
        }
    }
    let schema = Schema::new_with_metadata(fields, schema.metadata().clone());
    Ok(RecordBatch::try_new(std::sync::Arc::new(schema), columns)?)
}

impl Columns {
    /// `batch` read from `path`, string columns cast to Utf8 (see [`utf8_strings`]).
    pub fn new(batch: RecordBatch, path: PathBuf) -> Result<Self> {
        Ok(Self { batch: utf8_strings(batch)?, path })
    }

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

    /// The document id column every table keys its rows by.
    pub fn doc_id(&self) -> Result<&StringArray> {
        self.str(crate::schema::column::DOC_ID)
    }

    /// The sentence number within its document.
    pub fn sent_id(&self) -> Result<&Int32Array> {
        self.i32(crate::schema::column::SENT_ID)
    }

    pub fn i64(&self, name: &str) -> Result<&Int64Array> {
        self.column(name)?.as_primitive_opt::<Int64Type>().ok_or_else(|| self.wrong_type(name, "Int64"))
    }

    pub fn f64(&self, name: &str) -> Result<&Float64Array> {
        self.column(name)?.as_primitive_opt::<Float64Type>().ok_or_else(|| self.wrong_type(name, "Float64"))
    }

    /// A column that tables written before it existed lack.
    pub fn f64_if_present(&self, name: &str) -> Result<Option<&Float64Array>> {
        if self.batch.column_by_name(name).is_none() {
            return Ok(None);
        }
        self.f64(name).map(Some)
    }

    pub fn bool(&self, name: &str) -> Result<&BooleanArray> {
        self.column(name)?.as_any().downcast_ref().ok_or_else(|| self.wrong_type(name, "Boolean"))
    }

    pub fn i8(&self, name: &str) -> Result<&Int8Array> {
        self.column(name)?.as_any().downcast_ref().ok_or_else(|| self.wrong_type(name, "Int8"))
    }
}

/// Value of a nullable column at `row`.
pub fn opt_i32(array: &Int32Array, row: usize) -> Option<i32> {
    array.is_valid(row).then(|| array.value(row))
}

/// Value of a nullable float column at `row`.
pub fn opt_f64(array: &Float64Array, row: usize) -> Option<f64> {
    array.is_valid(row).then(|| array.value(row))
}

/// Value of a nullable string column at `row`.
pub fn opt_str(array: &StringArray, row: usize) -> Option<&str> {
    array.is_valid(row).then(|| array.value(row))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, DictionaryArray, LargeStringArray, StringViewArray};
    use arrow::datatypes::{Int8Type, Int32Type};

    use super::*;

    /// `str()` reads dictionary-encoded, large and view string columns of a stored table.
    #[test]
    fn str_reads_every_string_encoding() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(dir.path()).unwrap();
        let values = vec![Some("alpha"), None, Some("beta")];
        let columns: Vec<(&str, ArrayRef)> = vec![
            ("utf8", Arc::new(StringArray::from(values.clone()))),
            ("dict8", Arc::new(values.iter().copied().collect::<DictionaryArray<Int8Type>>())),
            ("dict32", Arc::new(values.iter().copied().collect::<DictionaryArray<Int32Type>>())),
            ("large", Arc::new(LargeStringArray::from(values.clone()))),
            ("view", Arc::new(StringViewArray::from(values.clone()))),
            ("n", Arc::new(Int32Array::from(vec![1, 2, 3]))),
        ];
        let schema = Arc::new(Schema::new(
            columns.iter().map(|(n, a)| Field::new(*n, a.data_type().clone(), true)).collect::<Vec<_>>(),
        ));
        let batch = RecordBatch::try_new(schema.clone(), columns.into_iter().map(|(_, a)| a).collect()).unwrap();
        run.write_table("t", schema, &[batch]).unwrap();
        let tables = read_all(&run, "t").unwrap();
        for name in ["utf8", "dict8", "dict32", "large", "view"] {
            let s = tables[0].str(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            let got: Vec<_> = (0..3).map(|r| opt_str(s, r)).collect();
            assert_eq!(got, values, "{name}");
        }
        assert_eq!(tables[0].i32("n").unwrap().value(2), 3);
        assert!(tables[0].str("n").is_err(), "an integer column is still not a string");
    }
}
