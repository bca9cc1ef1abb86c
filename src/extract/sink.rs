//! A table written batch by batch, made visible only when finished.
//!
//! `RunDir::write_table` needs every batch in memory; extraction output grows with the corpus,
//! so it streams into a hidden temporary file instead and renames it into place on
//! [`TableSink::finish`]. Dropped unfinished (an error mid-run), the temporary file is removed
//! and any previous table stays as it was.

use std::fs::{self, File};
use std::path::PathBuf;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;

use crate::error::{IoContext, Result};
use crate::run_dir::{RunDir, writer_properties};

pub struct TableSink {
    path: PathBuf,
    tmp: PathBuf,
    writer: Option<ArrowWriter<File>>,
    rows: usize,
}

impl TableSink {
    pub fn create(run_dir: &RunDir, name: &str, schema: SchemaRef) -> Result<Self> {
        let path = run_dir.table_path(name);
        let tmp = run_dir.root().join(format!(".{name}.parquet.{}.streaming.tmp", std::process::id()));
        let file = File::create(&tmp).with_path(&tmp)?;
        let writer = ArrowWriter::try_new(file, schema, Some(writer_properties()))?;
        Ok(Self { path, tmp, writer: Some(writer), rows: 0 })
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
