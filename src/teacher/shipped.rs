//! Shipped teacher answers: cache entries in a Parquet file, so a fresh clone starts from a
//! real silver set instead of the few sentences its first run can afford.
//!
//! `biodistill label --export FILE` writes every reply behind the run directory's
//! `teacher_calls` (the silver set and the dev sample): cache key, the reply as stored, and
//! who it is for (task, sentence, teacher, prompt version, run). `label.shipped` names such a
//! file; each label run copies its entries into the cache when missing. An entry is used
//! exactly when a current request has its key, so answers for another prompt, teacher or
//! corpus are never mixed in; how many matched nothing is said in one line.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, Int32Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::cache::{Cache, CachedReply};
use crate::columns::{Columns, opt_str, read_all};
use crate::error::{Error, Result};
use crate::run_dir::{RunDir, batch, read_parquet, write_parquet_atomic};
use crate::schema::{column, table};
use crate::vocab::Task;

/// Schema of a shipped-answers file.
pub static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let s = |n: &str| Field::new(n, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        s("cache_key"),
        s("reply"),
        s("task"),
        s(column::DOC_ID),
        Field::new(column::SENT_ID, DataType::Int32, false),
        Field::new("pass", DataType::Int32, false),
        s("model"),
        s("prompt_version"),
        Field::new("first_run", DataType::Utf8, true),
    ]))
});

/// Write the replies behind `run_dir`'s `teacher_calls` to `path`; returns the rows written.
pub fn export(cache: &Cache, run_dir: &RunDir, path: &Path) -> Result<usize> {
    // Column by column, in SCHEMA order.
    let mut text: [Vec<String>; 6] = Default::default();
    let (mut sents, mut passes, mut first_runs) = (Vec::new(), Vec::new(), Vec::new());
    for cols in read_all(run_dir, table::TEACHER_CALLS)? {
        let (key, task, doc) = (cols.str("cache_key")?, cols.str("task")?, cols.doc_id()?);
        let (sent, pass, model, prompt) =
            (cols.sent_id()?, cols.i32("pass")?, cols.str("model")?, cols.str("prompt_version")?);
        let first_run = cols.str("first_run")?;
        for i in 0..cols.len() {
            let Some(reply) = cache.get_stored(key.value(i))? else { continue };
            let values = [
                key.value(i),
                &serde_json::to_string(&reply)?,
                task.value(i),
                doc.value(i),
                model.value(i),
                prompt.value(i),
            ];
            for (column, value) in text.iter_mut().zip(values) {
                column.push(value.to_string());
            }
            sents.push(sent.value(i));
            passes.push(pass.value(i));
            first_runs.push(opt_str(first_run, i).map(str::to_string));
        }
    }
    let strings = |v: &[String]| Arc::new(StringArray::from_iter_values(v)) as ArrayRef;
    let [keys, replies, tasks, docs, models, prompts] = &text;
    let columns = vec![
        strings(keys),
        strings(replies),
        strings(tasks),
        strings(docs),
        Arc::new(Int32Array::from(sents)) as ArrayRef,
        Arc::new(Int32Array::from(passes)),
        strings(models),
        strings(prompts),
        Arc::new(first_runs.iter().map(Option::as_deref).collect::<StringArray>()),
    ];
    write_parquet_atomic(path, SCHEMA.clone(), &[batch(&SCHEMA, columns)?])
}

/// Every cache key in a shipped file (for `--plan`, which opens the cache read-only).
pub fn keys(path: &Path) -> Result<HashSet<String>> {
    if !path.is_file() {
        return Err(Error::input(path, "label.shipped: no such file"));
    }
    let mut out = HashSet::new();
    for batch in read_parquet(path)? {
        let cols = Columns::new(batch, path.to_path_buf())?;
        let keys = cols.str("cache_key")?;
        out.extend((0..cols.len()).map(|i| keys.value(i).to_string()));
    }
    Ok(out)
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Imported {
    /// The file's keys for the tasks asked about (a run of one task expects no others).
    pub keys: HashSet<String>,
    /// Entries copied into the cache (the rest were there already).
    pub inserted: usize,
}

/// Copy the entries of `path` that the cache lacks into it (every task's: the cache keeps all).
pub async fn import(cache: &Cache, path: &Path, tasks: &[Task]) -> Result<Imported> {
    if !path.is_file() {
        return Err(Error::input(path, "label.shipped: no such file"));
    }
    let mut out = Imported::default();
    for batch in read_parquet(path)? {
        let cols = Columns::new(batch, path.to_path_buf())?;
        let (keys, replies, task) = (cols.str("cache_key")?, cols.str("reply")?, cols.str("task")?);
        let all: Vec<String> = (0..cols.len()).map(|i| keys.value(i).to_string()).collect();
        let present = cache.has(&all)?;
        for (i, key) in all.into_iter().enumerate() {
            if !present[i] {
                let reply: CachedReply = serde_json::from_str(replies.value(i))
                    .map_err(|e| Error::input(path, format!("row {i}: reply is not a stored reply: {e}")))?;
                cache.put(&key, &reply).await?;
                out.inserted += 1;
            }
            if tasks.iter().any(|t| t.as_str() == task.value(i)) {
                out.keys.insert(key);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_file_is_a_clear_error_and_bad_rows_name_their_row() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(&dir.path().join("c.redb")).unwrap();
        let err = import(&cache, &dir.path().join("nope.parquet"), &[Task::Ade]).await.unwrap_err().to_string();
        assert!(err.contains("label.shipped"), "{err}");
        let s = |v: &str| Arc::new(StringArray::from(vec![v])) as ArrayRef;
        let i = |v: i32| Arc::new(Int32Array::from(vec![v])) as ArrayRef;
        let bad =
            batch(&SCHEMA, vec![s("k"), s("not json"), s("ade"), s("d"), i(0), i(0), s("m"), s("p"), s("r")]).unwrap();
        let path = dir.path().join("bad.parquet");
        write_parquet_atomic(&path, SCHEMA.clone(), &[bad]).unwrap();
        let err = import(&cache, &path, &[Task::Ade]).await.unwrap_err().to_string();
        assert!(err.contains("row 0"), "{err}");
        let ok = batch(
            &SCHEMA,
            vec![s("k"), s(r#"{"content":"{}","prompt_tokens":1,"completion_tokens":1,"model":"m","finish_reason":null,"latency_ms":1.0}"#), s("phi"), s("d"), i(0), i(0), s("m"), s("p"), s("r")],
        )
        .unwrap();
        write_parquet_atomic(&path, SCHEMA.clone(), &[ok]).unwrap();
        let imported = import(&cache, &path, &[Task::Ade]).await.unwrap();
        assert_eq!((imported.inserted, imported.keys.len()), (1, 0), "a phi answer is cached, not expected by ade");
        assert_eq!(import(&cache, &path, &[Task::Phi]).await.unwrap().keys.len(), 1);
    }
}
