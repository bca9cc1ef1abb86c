//! `biodistill sql`: DataFusion SQL over every table of a run directory.
//!
//! Each `<name>.parquet` in the run directory is registered as table `<name>`, so queries use
//! the names in [`crate::schema::table`]. Results print as a table, CSV or JSON lines, or are
//! written to a Parquet file. The student's SQL functions (`ade_pairs`, `gene_disease_pairs`,
//! `phi_spans`, `redact`: [`crate::extract::functions`]) are registered too, and a quoted path
//! is a table (`SELECT unnest(ade_pairs(abstract)) FROM 'my.parquet'`), so the student runs
//! on any Parquet, CSV or JSON file without a run directory.

use std::path::Path;

use arrow::record_batch::RecordBatch;
use datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::run_dir::RunDir;

/// How `biodistill sql` prints its result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// An aligned text table.
    #[default]
    Table,
    Csv,
    /// One JSON object per row.
    Json,
    /// A Parquet file (needs `--output`).
    Parquet,
}

/// A DataFusion session with every table of `run_dir` registered by name, and the student
/// functions over the checkpoints in `students` (a run directory's `student/`).
pub async fn session(run_dir: &RunDir, students: &Path) -> Result<SessionContext> {
    let ctx = crate::plan::session(run_dir, crate::plan::Limits::default()).await?.enable_url_table();
    crate::extract::functions::register(&ctx, students.to_path_buf());
    Ok(ctx)
}

/// Run one SQL statement (a trailing `;` and `--` comments are fine) and collect its result.
pub async fn query(run_dir: &RunDir, sql: &str) -> Result<Vec<RecordBatch>> {
    let ctx = session(run_dir, &run_dir.checkpoints(false)).await?;
    let df = ctx.sql(sql).await?;
    Ok(df.collect().await?)
}

/// Render batches in a text format (`Table`, `Csv`, `Json`).
pub fn render(batches: &[RecordBatch], format: OutputFormat) -> Result<String> {
    match format {
        OutputFormat::Table => Ok(arrow::util::pretty::pretty_format_batches(batches)?.to_string()),
        OutputFormat::Csv => {
            let mut buf = Vec::new();
            {
                let mut w = arrow::csv::WriterBuilder::new().with_header(true).build(&mut buf);
                for b in batches {
                    w.write(b)?;
                }
            }
            Ok(String::from_utf8(buf).expect("the CSV writer writes UTF-8"))
        }
        OutputFormat::Json => {
            let mut w = arrow::json::LineDelimitedWriter::new(Vec::new());
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
            Ok(String::from_utf8(w.into_inner()).expect("the JSON writer writes UTF-8"))
        }
        OutputFormat::Parquet => Err(Error::Config("parquet output needs --output <file>".into())),
    }
}

/// Write the result to `path` in `format` (Parquet, or any text format).
pub fn write(batches: &[RecordBatch], format: OutputFormat, path: &Path) -> Result<()> {
    if format == OutputFormat::Parquet {
        let schema = match batches.first() {
            Some(b) => b.schema(),
            None => return Err(Error::Config("the query returned no schema to write".into())),
        };
        crate::run_dir::write_parquet_atomic(path, schema, batches)?;
        Ok(())
    } else {
        std::fs::write(path, render(batches, format)?).with_path(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn registers_tables_by_name_and_renders() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(dir.path()).unwrap();
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![arrow::datatypes::Field::new(
            "x",
            arrow::datatypes::DataType::Int32,
            false,
        )]));
        let b = crate::run_dir::batch(&schema, vec![Arc::new(arrow::array::Int32Array::from(vec![1, 2, 3]))]).unwrap();
        run.write_table("nums", schema.clone(), &[b]).unwrap();
        let out = query(&run, "SELECT sum(x) AS total FROM nums -- comment\n;").await.unwrap();
        assert_eq!(render(&out, OutputFormat::Csv).unwrap(), "total\n6\n");
        assert!(render(&out, OutputFormat::Table).unwrap().contains("| 6     |"));
        assert_eq!(render(&out, OutputFormat::Json).unwrap(), "{\"total\":6}\n");
        let err = query(&run, "SELECT * FROM missing").await.unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
        // A file outside the run directory, by its path.
        let outside = tempfile::tempdir().unwrap();
        let other = RunDir::create(outside.path()).unwrap();
        let b = crate::run_dir::batch(&schema, vec![Arc::new(arrow::array::Int32Array::from(vec![5, 7]))]).unwrap();
        other.write_table("elsewhere", schema, &[b]).unwrap();
        let path = other.table_path("elsewhere");
        let out = query(&run, &format!("SELECT max(x) AS top FROM '{}'", path.display())).await.unwrap();
        assert_eq!(render(&out, OutputFormat::Csv).unwrap(), "top\n7\n");
        let err = query(&run, "SELECT * FROM '/no/such/file.parquet'").await.unwrap_err().to_string();
        assert!(err.contains("/no/such/file.parquet"), "{err}");
    }
}
