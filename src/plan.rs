//! DataFusion plans over a run directory: the shared engine of the stages' table work.
//!
//! A [`session`] registers every table of a run directory by name and bounds the memory its
//! operators may hold with a spilling pool: a sort or an aggregation larger than the limit
//! spills to temporary files in the run directory instead of growing the process. A plan's
//! result streams into a table with [`write_table`], batch by batch, made visible only when
//! complete, so neither side of a stage ever holds a whole table.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use arrow::array::AsArray;
use arrow::datatypes::{Int64Type, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::dataframe::DataFrame;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use futures::StreamExt;

use crate::error::{Error, Result};
use crate::run_dir::{RunDir, TableSink};

/// Default bound on what a plan's operators hold in memory (sorts, joins, aggregations).
pub const DEFAULT_MEMORY_LIMIT_MIB: usize = 1024;

/// How a session may use memory and disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes the operators of a plan may hold at once (a fair share each, the rest spills);
    /// `None`: no bound (DataFusion's default pool).
    pub memory_bytes: Option<usize>,
    /// Whether operators may spill to disk; without it, a plan over the limit fails.
    pub spill: bool,
    /// Partitions a plan runs in; 0 = one per core. The stages' plans use 1: with several
    /// sorts sharing a small pool, the first can hold it all before the second starts, and
    /// the second then fails instead of spilling (DataFusion 55's fair pool).
    pub partitions: usize,
    /// Rows per batch; 0 = DataFusion's 8192. Stage plans use 1024: a batch of whole
    /// documents (a few KB a row) must fit the limit many times over.
    pub batch_rows: usize,
}

impl Limits {
    /// A stage's plan: `mib` MiB of memory, spilling the rest to disk, one partition.
    pub fn mib(mib: usize) -> Self {
        Self { memory_bytes: Some(mib.max(1) << 20), spill: true, partitions: 1, batch_rows: 1024 }
    }
}

impl Default for Limits {
    /// Interactive SQL, as DataFusion runs it by default: no memory bound, every core.
    fn default() -> Self {
        Self { memory_bytes: None, spill: true, partitions: 0, batch_rows: 0 }
    }
}

/// A session over `run_dir`: each `<name>.parquet` registered as table `<name>`, operators
/// bounded by `limits`, spill files in a temporary directory inside the run directory (it
/// is where the space for the data is).
pub async fn session(run_dir: &RunDir, limits: Limits) -> Result<SessionContext> {
    let disk = if limits.spill {
        DiskManagerMode::Directories(vec![run_dir.root().to_path_buf()])
    } else {
        DiskManagerMode::Disabled
    };
    let mut runtime = RuntimeEnvBuilder::new().with_disk_manager_builder(DiskManagerBuilder::default().with_mode(disk));
    if let Some(bytes) = limits.memory_bytes {
        runtime = runtime.with_memory_pool(Arc::new(FairSpillPool::new(bytes)));
    }
    let runtime = runtime.build_arc()?;
    let mut config = SessionConfig::new().with_information_schema(true);
    if limits.partitions > 0 {
        config = config.with_target_partitions(limits.partitions);
    }
    if limits.batch_rows > 0 {
        config = config.with_batch_size(limits.batch_rows);
    }
    // A sort reserves this much up front to merge its spills; DataFusion's 10 MiB default
    // alone would exceed a small limit.
    let execution = &mut config.options_mut().execution;
    if let Some(bytes) = limits.memory_bytes {
        execution.sort_spill_reservation_bytes = execution.sort_spill_reservation_bytes.min(bytes / 8);
    }
    // Plain strings: a string view counts the whole Parquet page it points into against the
    // pool, so a sort under a small limit could not hold even one batch; and every reader of
    // our tables (and of `sql -o` output) knows Utf8.
    execution.parquet.schema_force_view_types = false;
    // A plan split into partitions keeps them through its joins: a join that collects its
    // small side into one partition (DataFusion's choice under 1 MB) would leave everything
    // above it in that one partition, and the planner replaces a hash repartition nothing
    // requires (a student call, say) by a round-robin one, which Ballista drops. A partitioned
    // join requires both sides hashed on its keys, so the partitions hold.
    if limits.partitions > 1 {
        let optimizer = &mut config.options_mut().optimizer;
        optimizer.hash_join_single_partition_threshold = 0;
        optimizer.hash_join_single_partition_threshold_rows = 0;
    }
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    for name in run_dir.tables()? {
        register(&ctx, &name, &run_dir.table_path(&name)).await?;
    }
    Ok(ctx)
}

/// Register the Parquet file `path` as table `name` (a plain identifier: no dots).
pub async fn register(ctx: &SessionContext, name: &str, path: &Path) -> Result<()> {
    let file = path.to_str().ok_or_else(|| Error::input(path, "path is not valid UTF-8"))?;
    ctx.register_parquet(name, file, ParquetReadOptions::default()).await?;
    Ok(())
}

/// Stream the result of `df` into table `name` of `run_dir` (atomically, see [`TableSink`]);
/// batches take the declared `schema` (the same columns in order; DataFusion's types and
/// nullability become the table's own). Output partitions are written one after the other,
/// so the row order is the plan's (a union's inputs in order), not their arrival order.
/// Returns the row count.
pub async fn write_table(run_dir: &RunDir, name: &str, schema: &SchemaRef, df: DataFrame) -> Result<usize> {
    let partitions = df.execute_stream_partitioned().await?;
    let mut sink = TableSink::create(run_dir, name, schema.clone())?;
    for mut stream in partitions {
        while let Some(batch) = next(&mut stream).await? {
            let columns = (batch.columns().iter().zip(schema.fields()))
                .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            sink.write(&RecordBatch::try_new(schema.clone(), columns)?)?;
        }
    }
    sink.finish()
}

/// The integer columns of the first row of `sql`, a one-row aggregate (`SELECT count(*), …`).
pub async fn counts(ctx: &SessionContext, sql: &str) -> Result<Vec<usize>> {
    let batches = ctx.sql(sql).await?.collect().await?;
    let row = batches.iter().find(|b| b.num_rows() > 0).ok_or_else(|| Error::Internal(format!("no row from {sql}")))?;
    Ok(row.columns().iter().map(|c| c.as_primitive::<Int64Type>().value(0) as usize).collect())
}

/// The `doc_id`s of the documents in `split`, queried from table `documents` of `ctx` (a
/// [`session`] of `run_dir`); the table is required, its absence an input error naming it.
pub async fn documents_in_split(ctx: &SessionContext, run_dir: &RunDir, split: &str) -> Result<HashSet<String>> {
    let documents = crate::schema::table::DOCUMENTS;
    let path = run_dir.existing_table(documents)?;
    let doc_id = crate::schema::column::DOC_ID;
    let sql = format!("SELECT {} FROM {} WHERE split = {}", ident(doc_id), ident(documents), literal(split));
    let bad = |e: datafusion::error::DataFusionError| {
        Error::input(&path, format!("cannot read the documents of split {split}: {e}"))
    };
    let batches = ctx.sql(&sql).await.map_err(bad)?.collect().await.map_err(bad)?;
    let mut docs = HashSet::new();
    for batch in batches {
        let ids = crate::columns::Columns::new(batch, path.clone())?;
        let col = ids.doc_id()?;
        docs.extend((0..ids.len()).map(|i| col.value(i).to_string()));
    }
    Ok(docs)
}

/// Run a plan's `future` to completion from synchronous code (the training loop), inside or
/// outside a Tokio runtime: on a scoped thread with a runtime of its own, since a thread
/// already running a runtime cannot block on another.
pub fn block_on<T: Send>(future: impl Future<Output = Result<T>> + Send) -> Result<T> {
    std::thread::scope(|scope| {
        let thread = scope.spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::Internal(format!("cannot start a query runtime: {e}")))?;
            runtime.block_on(future)
        });
        thread.join().map_err(|_| Error::Internal("a query thread panicked".into()))?
    })
}

/// The next batch of `stream`, `None` at its end.
pub async fn next(stream: &mut SendableRecordBatchStream) -> Result<Option<RecordBatch>> {
    Ok(stream.next().await.transpose()?)
}

/// `name` as a quoted SQL identifier (column and table names in generated SQL).
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `value` as a quoted SQL string literal.
pub fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use arrow::array::{ArrayRef, AsArray, Int32Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;
    use crate::run_dir::batch;

    /// A table of `rows` rows, ids in descending order, each with ~100 bytes of text.
    fn wide_table(run: &RunDir, rows: usize) -> SchemaRef {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, false),
            Field::new("text", DataType::Utf8, false),
        ]));
        let mut sink = TableSink::create(run, "wide", schema.clone()).unwrap();
        for chunk in (0..rows).collect::<Vec<_>>().chunks(8192) {
            let ids: ArrayRef = Arc::new(chunk.iter().map(|&i| (rows - i) as i32).collect::<Int32Array>());
            let texts: ArrayRef = Arc::new(chunk.iter().map(|i| Some(format!("{i:0>100}"))).collect::<StringArray>());
            sink.write(&batch(&schema, vec![ids, texts]).unwrap()).unwrap();
        }
        sink.finish().unwrap();
        schema
    }

    #[tokio::test]
    async fn a_sort_larger_than_the_memory_limit_spills_and_fails_only_without_spilling() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::create(tmp.path()).unwrap();
        // ~40 MB of rows in memory against an 8 MiB pool.
        let schema = wide_table(&run, 300_000);
        let limited = Limits::mib(8);
        let ctx = session(&run, limited).await.unwrap();
        let df = ctx.sql("SELECT id, text FROM wide ORDER BY id").await.unwrap();
        assert_eq!(write_table(&run, "sorted", &schema, df).await.unwrap(), 300_000);
        let mut previous = 0;
        for b in run.read_table("sorted").unwrap() {
            for &id in b.column(0).as_primitive::<arrow::datatypes::Int32Type>().values() {
                assert!(id > previous, "{id} after {previous}");
                previous = id;
            }
        }
        assert_eq!(previous, 300_000);
        assert!(run.tables().unwrap().iter().all(|t| t == "wide" || t == "sorted"), "spill files left behind");

        let ctx = session(&run, Limits { spill: false, ..limited }).await.unwrap();
        let df = ctx.sql("SELECT id, text FROM wide ORDER BY id").await.unwrap();
        let err = write_table(&run, "unsorted", &schema, df).await.unwrap_err().to_string();
        assert!(err.contains("esources exhausted") || err.contains("isk manager"), "{err}");
        assert!(!run.has_table("unsorted"), "a failed plan left a table");
    }

    #[tokio::test]
    async fn the_documents_of_a_split_are_a_query_and_need_the_table() {
        use crate::run_dir::test_tables::{strs, write};
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::create(tmp.path()).unwrap();
        let ctx = session(&run, Limits::mib(64)).await.unwrap();
        let err = documents_in_split(&ctx, &run, "dev").await.unwrap_err().to_string();
        assert!(err.contains("documents.parquet") && err.contains("missing"), "{err}");
        let docs = vec![("doc_id", strs(&["a", "b", "c"])), ("split", strs(&["dev", "train", "dev"]))];
        write(&run, crate::schema::table::DOCUMENTS, docs);
        let ctx = session(&run, Limits::mib(64)).await.unwrap();
        let dev = documents_in_split(&ctx, &run, "dev").await.unwrap();
        assert_eq!(dev, HashSet::from(["a".to_string(), "c".to_string()]));
        assert!(documents_in_split(&ctx, &run, "it's").await.unwrap().is_empty());
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(ident("end"), "\"end\"");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(literal("it's"), "'it''s'");
    }
}
