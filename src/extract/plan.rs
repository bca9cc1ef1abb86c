//! Extraction as a DataFusion plan: per task, the `sentences` of the selected `documents` (a
//! semi-join), through `sentence_pairs` / `sentence_spans` (see [`super::functions`]), the
//! returned lists unnested into one row per pair or span, offsets moved from the sentence into
//! the document, sorted. The same plan runs in this process (one partition, the students'
//! batches side by side on the cores) or on a Ballista cluster, where the join, partitioned
//! by document (see [`crate::plan::session`]), is what splits the sentences into the hash
//! partitions the executors run: the planner drops a repartition nothing above it requires,
//! and Ballista runs a round-robin one as a single task.

use std::path::Path;
use std::sync::Arc;

use datafusion::common::UnnestOptions;
use datafusion::dataframe::DataFrame;
use datafusion::functions::core::expr_fn::get_field;
use datafusion::logical_expr::{Expr, ScalarUDF, col, lit};
use datafusion::prelude::SessionContext;

use super::functions::sentence_element_fields;
use super::{ExtractConfig, output_schema};
use crate::error::Result;
use crate::plan::{ident, literal};
use crate::schema::column::{DOC_ID, SENT_ID};
use crate::schema::table;
use crate::vocab::Task;

/// The sentence's char offset in its document, renamed so it cannot clash with `phi_spans.start`.
const SENTENCE_START: &str = "sentence_start";
/// The unnested list element.
const ELEMENT: &str = "element";

impl ExtractConfig {
    /// The SQL predicate on `documents` that selects what `task` reads (`None`: everything).
    fn document_filter(&self, task: Task) -> Option<String> {
        let within = |column: &str, values: &mut dyn Iterator<Item = &String>| {
            let values: Vec<String> = values.map(|v| literal(v)).collect();
            if values.is_empty() { "FALSE".to_string() } else { format!("{column} IN ({})", values.join(", ")) }
        };
        let mut terms = Vec::new();
        if !self.splits.is_empty() {
            terms.push(within("split", &mut self.splits.iter()));
        }
        if let Some(sources) = self.sources.get(&task) {
            terms.push(within("source", &mut sources.iter()));
        }
        if let Some(only) = &self.only_documents {
            let mut only: Vec<&String> = only.iter().collect();
            only.sort_unstable();
            terms.push(within(DOC_ID, &mut only.into_iter()));
        }
        (!terms.is_empty()).then(|| terms.join(" AND "))
    }

    /// `WHERE …` keeping the sentences of documents that pass any of `filters` (none: all).
    fn sentence_filter(filters: &[Option<String>]) -> String {
        if filters.iter().any(Option::is_none) {
            return String::new();
        }
        let any: Vec<String> = filters.iter().flatten().map(|f| format!("({f})")).collect();
        Self::in_documents(Some(&any.join(" OR ")))
    }

    /// `WHERE doc_id IN (SELECT doc_id FROM documents [WHERE predicate])`: a semi-join, also
    /// with no predicate, as it is what partitions a task's plan.
    fn in_documents(predicate: Option<&str>) -> String {
        let predicate = predicate.map(|p| format!(" WHERE {p}")).unwrap_or_default();
        format!(" WHERE {DOC_ID} IN (SELECT {DOC_ID} FROM {}{predicate})", ident(table::DOCUMENTS))
    }
}

/// Sentences any configured task reads.
pub(super) async fn count_sentences(ctx: &SessionContext, cfg: &ExtractConfig) -> Result<usize> {
    let filters: Vec<Option<String>> = cfg.tasks.iter().map(|&t| cfg.document_filter(t)).collect();
    let query = format!("SELECT count(*) FROM {}{}", ident(table::SENTENCES), ExtractConfig::sentence_filter(&filters));
    Ok(crate::plan::counts(ctx, &query).await?[0])
}

/// What one task's plan needs: its checkpoint and the provenance it stamps on each row.
pub(super) struct TaskPlan<'a> {
    pub task: Task,
    pub checkpoint_dir: &'a Path,
    pub model_version: &'a str,
    pub run_id: &'a str,
    /// `sentence_pairs` and `sentence_spans`, as registered on the session.
    pub functions: &'a [ScalarUDF; 2],
    /// Encoder threads per partition (0: every core); the session sets the partitions.
    pub threads: usize,
}

/// The plan whose rows are `task`'s output table (its columns, in order).
pub(super) async fn task_plan(ctx: &SessionContext, cfg: &ExtractConfig, plan: &TaskPlan<'_>) -> Result<DataFrame> {
    let filter = ExtractConfig::in_documents(cfg.document_filter(plan.task).as_deref());
    let sentences =
        format!("SELECT doc_id, sent_id, start AS {SENTENCE_START}, text FROM {}{filter}", ident(table::SENTENCES));
    let pairs = plan.task.relation().is_some();
    let function = &plan.functions[if pairs { 0 } else { 1 }];
    let dir = plan.checkpoint_dir.to_string_lossy().into_owned();
    let batch_size = lit(cfg.batch_size as i64);
    let mut args = vec![col("text"), lit(dir), lit(plan.model_version), batch_size, lit(plan.threads as i64)];
    if !pairs {
        args.push(lit(cfg.phi_recognizers.join(",")));
    }
    let found = function.call(args).alias(ELEMENT);
    let sort: Vec<_> = sort_columns(plan.task).into_iter().map(|c| col(c).sort(true, false)).collect();
    let df = ctx
        .sql(&sentences)
        .await?
        .select(vec![col(DOC_ID), col(SENT_ID), col(SENTENCE_START), found])?
        .unnest_columns_with_options(&[ELEMENT], UnnestOptions::new().with_preserve_nulls(false))?
        .select(output_columns(plan))?
        .sort(sort)?;
    Ok(df)
}

/// The output table's columns as expressions over the unnested element.
fn output_columns(plan: &TaskPlan<'_>) -> Vec<Expr> {
    let schema = output_schema(plan.task);
    let elements = sentence_element_fields(plan.task.relation().is_some());
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, field)| {
            let name = field.name().as_str();
            let value = match name {
                DOC_ID | SENT_ID => col(name),
                "model_version" => lit(plan.model_version),
                "run_id" => lit(plan.run_id),
                // Pairs: the element's fields in the table's order after doc_id, sent_id;
                // spans: by name, the entity type under the table's name for it.
                _ => {
                    let element = match plan.task.relation() {
                        Some(_) => &elements[i - 2],
                        None => elements
                            .iter()
                            .find(|e| e.name() == name || (name == "phi_type" && e.name() == "entity_type"))
                            .expect("every phi_spans column is an element field"),
                    };
                    let value = get_field(col(ELEMENT), element.name().as_str());
                    // Every integer field is a char offset into the sentence.
                    if element.data_type() == &arrow::datatypes::DataType::Int32 {
                        col(SENTENCE_START) + value
                    } else {
                        value
                    }
                }
            };
            value.alias(name)
        })
        .collect()
}

/// The output order: by document, then every offset column in the table's order.
fn sort_columns(task: Task) -> Vec<String> {
    let schema = output_schema(task);
    let int = |f: &&Arc<arrow::datatypes::Field>| f.data_type() == &arrow::datatypes::DataType::Int32;
    std::iter::once(DOC_ID.to_string()).chain(schema.fields().iter().filter(int).map(|f| f.name().clone())).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use super::*;

    #[test]
    fn filters_select_documents_by_split_source_and_id() {
        let cfg = ExtractConfig {
            splits: vec!["train".into(), "it's".into()],
            sources: BTreeMap::from([(Task::Ade, vec!["ade".into()]), (Task::Phi, vec![])]),
            ..Default::default()
        };
        assert_eq!(cfg.document_filter(Task::Ade).unwrap(), "split IN ('train', 'it''s') AND source IN ('ade')");
        assert_eq!(cfg.document_filter(Task::Phi).unwrap(), "split IN ('train', 'it''s') AND FALSE");
        let only =
            ExtractConfig { only_documents: Some(HashSet::from(["b".into(), "a".into()])), ..Default::default() };
        assert_eq!(only.document_filter(Task::Ade).unwrap(), "doc_id IN ('a', 'b')");
        assert_eq!(ExtractConfig::default().document_filter(Task::Ade), None);
        let any = ExtractConfig::sentence_filter(&[Some("x".into()), Some("y".into())]);
        assert_eq!(any, " WHERE doc_id IN (SELECT doc_id FROM \"documents\" WHERE (x) OR (y))");
        assert_eq!(ExtractConfig::sentence_filter(&[Some("x".into()), None]), "");
    }

    /// Ballista splits a job into stages at hash repartitions and runs a stage's partitions as
    /// its tasks (it drops round-robin repartitions), so the student calls must sit above a
    /// hash repartition into the session's partitions, with or without document filters.
    #[tokio::test]
    async fn the_students_run_in_the_hash_partitions_of_a_cluster_session() {
        use datafusion::physical_plan::displayable;

        let tmp = tempfile::tempdir().unwrap();
        let run_dir = crate::run_dir::RunDir::create(tmp.path()).unwrap();
        // More rows than a batch: the planner does not split what its statistics call small.
        // 100 documents, half of them dev, 50 sentences each.
        for (name, schema, rows) in
            [(table::SENTENCES, &*crate::schema::SENTENCES, 5000), (table::DOCUMENTS, &*crate::schema::DOCUMENTS, 100)]
        {
            let column = |field: &arrow::datatypes::Field| -> arrow::array::ArrayRef {
                let text = |i: usize| match field.name().as_str() {
                    DOC_ID => format!("d{}", i % 100),
                    "split" => ["dev", "train"][i % 2].to_string(),
                    _ => format!("x{i}"),
                };
                match field.data_type() {
                    arrow::datatypes::DataType::Int32 => Arc::new(arrow::array::Int32Array::from_iter_values(0..rows)),
                    _ => Arc::new(arrow::array::StringArray::from_iter_values((0..rows as usize).map(text))),
                }
            };
            let batch = crate::run_dir::batch(schema, schema.fields().iter().map(|f| column(f)).collect()).unwrap();
            run_dir.write_table(name, schema.clone(), &[batch]).unwrap();
        }
        let limits = crate::plan::Limits { partitions: 3, ..crate::plan::Limits::mib(64) };
        let ctx = crate::plan::session(&run_dir, limits).await.unwrap();
        let functions = super::super::functions::sentence_functions(&Default::default());
        for function in &functions {
            ctx.register_udf(function.clone());
        }
        let filtered = ExtractConfig { splits: vec!["dev".into()], ..Default::default() };
        for (task, cfg) in [(Task::Ade, &filtered), (Task::Phi, &ExtractConfig::default())] {
            let plan = TaskPlan {
                task,
                checkpoint_dir: Path::new("/checkpoints/x"),
                model_version: "v",
                run_id: "r",
                functions: &functions,
                threads: 1,
            };
            let physical = task_plan(&ctx, cfg, &plan).await.unwrap().create_physical_plan().await.unwrap();
            let shown = displayable(physical.as_ref()).indent(false).to_string();
            let lines: Vec<&str> = shown.lines().collect();
            let call = lines.iter().position(|l| l.contains("sentence_")).expect("a student call");
            // Below the call, a join partitioned by document, and the first repartition under
            // it a hash into 3 (not a round-robin one, which Ballista would drop, leaving one
            // task for the students).
            let below = &lines[call..];
            let join = below.iter().position(|l| l.contains("HashJoinExec: mode=Partitioned"));
            let first = below.iter().find(|l| l.contains("RepartitionExec"));
            assert!(
                join.is_some()
                    && first.is_some_and(|l| l.contains("partitioning=Hash([doc_id@") && l.contains("], 3)")),
                "{task}: the student call is not above a hash repartition into 3 in\n{shown}"
            );
        }
    }

    #[test]
    fn rows_sort_by_document_then_offsets() {
        assert_eq!(sort_columns(Task::Phi), ["doc_id", "start", "end"]);
        assert_eq!(sort_columns(Task::Ade)[..3], ["doc_id", "sent_id", "drug_start"]);
    }
}
