//! What an incremental run reuses of the live publication: the documents it covered
//! (`document_versions`) and the extracted rows of those whose content is unchanged.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use arrow::array::{ArrayRef, StringArray};

use crate::columns::read_all;
use crate::error::Result;
use crate::plan::{Limits, ident};
use crate::run_dir::{RunDir, batch};
use crate::schema::{self, table};

/// `doc_id -> content_hash` from `table` of `run_dir` (`documents` or a publication's
/// `document_versions`).
pub fn document_versions(run_dir: &RunDir, table: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for cols in read_all(run_dir, table)? {
        let (ids, hashes) = (cols.doc_id()?, cols.str("content_hash")?);
        for i in 0..cols.len() {
            out.insert(ids.value(i).to_string(), hashes.value(i).to_string());
        }
    }
    Ok(out)
}

/// Write this run's `document_versions` (what its publication will cover).
pub fn write_document_versions(run_dir: &RunDir, documents: &BTreeMap<String, String>) -> Result<()> {
    let schema = schema::DOCUMENT_VERSIONS.clone();
    let ids: ArrayRef = Arc::new(StringArray::from_iter_values(documents.keys()));
    let hashes: ArrayRef = Arc::new(StringArray::from_iter_values(documents.values()));
    run_dir.write_table(table::DOCUMENT_VERSIONS, schema.clone(), &[batch(&schema, vec![ids, hashes])?])?;
    Ok(())
}

/// Documents whose content is new or changed since the publication `previous`.
pub fn changed_documents(documents: &BTreeMap<String, String>, previous: &RunDir) -> Result<HashSet<String>> {
    let before = document_versions(previous, table::DOCUMENT_VERSIONS)?;
    Ok(documents.iter().filter(|(id, hash)| before.get(*id) != Some(hash)).map(|(id, _)| id.clone()).collect())
}

/// Add to the freshly extracted table `name` (rows of new and changed documents only) the
/// previous publication's rows of every document whose content is the same in both runs'
/// `document_versions` (this run's must be written first); old rows of changed and deleted
/// documents are dropped. One plan, streamed back into `name`: the new rows, then the old rows
/// of unchanged documents in their stored order (a join whose build side is the unchanged
/// document ids, bounded by `limits`). No sort: the order is already deterministic, and a sort
/// of whole documents would hold more than a batch. Returns the rows.
pub async fn merge_previous(run_dir: &RunDir, previous: &RunDir, name: &str, limits: Limits) -> Result<usize> {
    let schema = run_dir.table_schema(name)?;
    if !previous.has_table(name) {
        return run_dir.table_rows(name);
    }
    let ctx = crate::plan::session(run_dir, limits).await?;
    let (old, old_versions) = (format!("previous_{name}"), format!("previous_{}", table::DOCUMENT_VERSIONS));
    crate::plan::register(&ctx, &old, &previous.table_path(name)).await?;
    crate::plan::register(&ctx, &old_versions, &previous.table_path(table::DOCUMENT_VERSIONS)).await?;

    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let before = previous.table_schema(name)?;
    if let Some(missing) = names.iter().find(|c| before.field_with_name(c).is_err()) {
        return Err(crate::error::Error::input(
            previous.table_path(name),
            format!(
                "the published {name} has no column {missing} (written by an older biodistill): \
                 rerun with --full-refresh to extract every document again"
            ),
        ));
    }
    let columns = names.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
    let old_columns = names.iter().map(|c| format!("old.{}", ident(c))).collect::<Vec<_>>().join(", ");
    // The unchanged documents (one row each) are the join's build side, the old rows stream.
    let unchanged = format!(
        "SELECT now.doc_id FROM {now} now JOIN {old_versions} was \
         ON now.doc_id = was.doc_id AND now.content_hash = was.content_hash",
        now = ident(table::DOCUMENT_VERSIONS),
        old_versions = ident(&old_versions),
    );
    let sql = format!(
        "SELECT {columns} FROM {fresh} UNION ALL \
         SELECT {old_columns} FROM ({unchanged}) unchanged JOIN {old} old ON old.doc_id = unchanged.doc_id",
        fresh = ident(name),
        old = ident(&old),
    );
    crate::plan::write_table(run_dir, name, &schema, ctx.sql(&sql).await?).await
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray};

    use super::*;
    use crate::run_dir::concat;

    #[test]
    fn changed_documents_are_new_or_edited() {
        let tmp = tempfile::tempdir().unwrap();
        let prev = RunDir::create(tmp.path()).unwrap();
        let old: BTreeMap<String, String> =
            [("a", "1"), ("b", "2"), ("gone", "3")].map(|(k, v)| (k.into(), v.into())).into();
        write_document_versions(&prev, &old).unwrap();
        let now: BTreeMap<String, String> =
            [("a", "1"), ("b", "2x"), ("new", "4")].map(|(k, v)| (k.into(), v.into())).into();
        let changed = changed_documents(&now, &prev).unwrap();
        assert_eq!(changed, HashSet::from(["b".to_string(), "new".to_string()]));
    }

    /// A previous publication's directory and a new run's, in one temporary directory.
    fn publication_and_run() -> (tempfile::TempDir, RunDir, RunDir) {
        let tmp = tempfile::tempdir().unwrap();
        let (prev, run) =
            (RunDir::create(tmp.path().join("p")).unwrap(), RunDir::create(tmp.path().join("r")).unwrap());
        (tmp, prev, run)
    }

    fn versions(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn redacted(ids: &[&str], texts: &[&str]) -> arrow::record_batch::RecordBatch {
        let schema = schema::REDACTED_DOCUMENTS.clone();
        let (ids, texts): (ArrayRef, ArrayRef) =
            (Arc::new(StringArray::from_iter_values(ids)), Arc::new(StringArray::from_iter_values(texts)));
        batch(&schema, vec![ids, texts]).unwrap()
    }

    fn texts(run: &RunDir, name: &str) -> Vec<String> {
        let merged = concat(&schema::REDACTED_DOCUMENTS, &run.read_table(name).unwrap()).unwrap();
        let texts = merged.column(1).as_string::<i32>();
        (0..texts.len()).map(|i| texts.value(i).to_string()).collect()
    }

    #[tokio::test]
    async fn merge_keeps_unchanged_rows_and_drops_changed_and_deleted() {
        let (_tmp, prev, run) = publication_and_run();
        let schema = schema::REDACTED_DOCUMENTS.clone();
        let name = table::REDACTED_DOCUMENTS;
        write_document_versions(&prev, &versions(&[("a", "1"), ("b", "2"), ("gone", "3")])).unwrap();
        prev.write_table(name, schema.clone(), &[redacted(&["gone", "b", "a"], &["old gone", "old b", "old a"])])
            .unwrap();
        write_document_versions(&run, &versions(&[("a", "1"), ("b", "2x")])).unwrap();
        run.write_table(name, schema.clone(), &[redacted(&["b"], &["new b"])]).unwrap();
        assert_eq!(merge_previous(&run, &prev, name, Limits::default()).await.unwrap(), 2);
        assert_eq!(texts(&run, name), ["new b", "old a"], "new rows, then the old ones kept");
    }

    /// A run whose new documents gave no rows still keeps every unchanged document's rows (the
    /// merge once returned early on an empty fresh table, dropping them all).
    #[tokio::test]
    async fn an_empty_fresh_table_still_keeps_the_unchanged_rows() {
        let (_tmp, prev, run) = publication_and_run();
        let (schema, name) = (schema::REDACTED_DOCUMENTS.clone(), table::REDACTED_DOCUMENTS);
        write_document_versions(&prev, &versions(&[("a", "1")])).unwrap();
        prev.write_table(name, schema.clone(), &[redacted(&["a"], &["old a"])]).unwrap();
        write_document_versions(&run, &versions(&[("a", "1"), ("new", "9")])).unwrap();
        run.write_table(name, schema.clone(), &[]).unwrap();
        merge_previous(&run, &prev, name, Limits::default()).await.unwrap();
        assert_eq!(texts(&run, name), ["old a"]);
    }

    /// A publication written before a column existed cannot be merged into: a clear error.
    #[tokio::test]
    async fn a_publication_missing_a_column_asks_for_a_full_refresh() {
        let (_tmp, prev, run) = publication_and_run();
        let name = table::REDACTED_DOCUMENTS;
        let old = Arc::new(arrow::datatypes::Schema::new(vec![schema::REDACTED_DOCUMENTS.field(0).clone()]));
        let ids: ArrayRef = Arc::new(StringArray::from_iter_values(["a"]));
        prev.write_table(name, old.clone(), &[batch(&old, vec![ids]).unwrap()]).unwrap();
        write_document_versions(&prev, &versions(&[("a", "1")])).unwrap();
        write_document_versions(&run, &versions(&[("a", "1")])).unwrap();
        run.write_table(name, schema::REDACTED_DOCUMENTS.clone(), &[]).unwrap();
        let err = merge_previous(&run, &prev, name, Limits::default()).await.unwrap_err().to_string();
        assert!(err.contains("no column redacted_text") && err.contains("--full-refresh"), "{err}");
    }

    /// The merge streams under a memory limit far below the tables' size (loading them whole,
    /// as the merge once did, would need more than 10× the limit), and gives the same rows.
    #[tokio::test]
    async fn merge_runs_under_a_memory_limit_the_whole_tables_exceed() {
        let (_tmp, prev, run) = publication_and_run();
        let (schema, name) = (schema::REDACTED_DOCUMENTS.clone(), table::REDACTED_DOCUMENTS);
        let docs = 30_000;
        let ids: Vec<String> = (0..docs).rev().map(|i| format!("doc{i:06}")).collect();
        let text = "x".repeat(3000);
        let all = versions(&ids.iter().map(|id| (id.as_str(), "h")).collect::<Vec<_>>());
        write_document_versions(&prev, &all).unwrap();
        let mut bytes = 0;
        let mut sink = crate::run_dir::TableSink::create(&prev, name, schema.clone()).unwrap();
        for chunk in ids.chunks(8192) {
            let b = redacted(&chunk.iter().map(String::as_str).collect::<Vec<_>>(), &vec![text.as_str(); chunk.len()]);
            bytes += b.get_array_memory_size();
            sink.write(&b).unwrap();
        }
        sink.finish().unwrap();
        // Document 0 changed; the fresh run re-extracted it.
        let mut now = all.clone();
        now.insert("doc000000".into(), "h2".into());
        write_document_versions(&run, &now).unwrap();
        run.write_table(name, schema.clone(), &[redacted(&["doc000000"], &["new"])]).unwrap();

        let limits = Limits::mib(8);
        assert!(bytes > 10 * limits.memory_bytes.unwrap(), "the table ({bytes} bytes) must dwarf the limit");
        assert_eq!(merge_previous(&run, &prev, name, limits).await.unwrap(), docs);
        let merged = concat(&schema, &run.read_table(name).unwrap()).unwrap();
        let (got_ids, got_texts) = (merged.column(0).as_string::<i32>(), merged.column(1).as_string::<i32>());
        assert_eq!((got_ids.value(0), got_texts.value(0)), ("doc000000", "new"));
        assert!((2..docs).all(|i| got_ids.value(i - 1) > got_ids.value(i)), "old rows in their stored order");
        assert!((1..docs).all(|i| got_texts.value(i) == text));
    }
}
