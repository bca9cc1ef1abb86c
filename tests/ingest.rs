//! Every reader against the counts in ../shared/data/README.md (and counts derived from the
//! files: distinct rows, rows with valid offsets), and every gold span against its text.

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int32Type;

use crate::util::{ingested, sql_csv};

#[test]
fn documents_per_source_match_the_corpora() {
    let csv = sql_csv(ingested(), "SELECT source, count(*) AS n FROM documents GROUP BY source ORDER BY source");
    assert_eq!(
        csv,
        "source,n\n\
         ade_corpus_v2,2324\n\
         bc5cdr,1459\n\
         biored,500\n\
         euadr,63\n\
         gad,3280\n\
         meddocan,750\n\
         ncbi_disease,691\n\
         presidio,1218\n"
    );
}

#[test]
fn a_pmid_in_two_files_is_one_document() {
    // NCBI Disease has 592 + 100 abstracts, but PMID 8528200 is in both files: kept once, and
    // the second copy is quarantined as a duplicate id.
    assert_eq!(
        sql_csv(ingested(), "SELECT doc_id, reason FROM quarantine WHERE source = 'ncbi_disease'"),
        "doc_id,reason\nncbi_disease:8528200,duplicate document id 'ncbi_disease:8528200'\n"
    );
}

#[test]
fn given_splits_are_kept() {
    let csv = sql_csv(
        ingested(),
        "SELECT source, split, count(*) AS n FROM documents WHERE source IN ('biored', 'meddocan', 'bc5cdr') \
         GROUP BY source, split ORDER BY source, split",
    );
    assert_eq!(
        csv,
        "source,split,n\nbc5cdr,unlabeled,1459\nbiored,dev,100\nbiored,train,400\nmeddocan,dev,250\nmeddocan,train,500\n"
    );
}

#[test]
fn ade_corpus_rows_in_gold_pairs_out() {
    let run = ingested();
    // 5,359 DRUG-AE rows = 5,216 distinct (PMID, sentence, effect, drug) in 3,347 sentences of
    // 1,289 PMIDs; 16,587 distinct sentences with the 13,240 distinct negatives and dose rows.
    assert_eq!(
        sql_csv(
            run,
            "SELECT count(*) AS pairs, count(DISTINCT doc_id || '/' || sent_id) AS sentences, count(DISTINCT doc_id) AS pmids FROM gold_ade"
        ),
        "pairs,sentences,pmids\n5216,3347,1289\n"
    );
    assert_eq!(
        sql_csv(
            run,
            "SELECT count(*) AS n FROM sentences s JOIN documents d ON s.doc_id = d.doc_id WHERE d.source = 'ade_corpus_v2'"
        ),
        "n\n16587\n"
    );
    // DRUG-DOSE: 223 rows, 216 distinct.
    assert_eq!(sql_csv(run, "SELECT count(*) AS n FROM gold_drug_dose"), "n\n216\n");
    // Nothing of the ADE files was quarantined.
    assert_eq!(sql_csv(run, "SELECT count(*) AS n FROM quarantine WHERE source = 'ade_corpus_v2'"), "n\n0\n");
}

#[test]
fn gene_disease_and_phi_gold_counts() {
    let run = ingested();
    // GAD: 4,743 rows = 4,741 with valid offsets and a Y/N/F label + 2 quarantined (one offset
    // mismatch, one label 'P'); EU-ADR: 247 gene–disease rows of 355; BioRED: every
    // gene–disease relation.
    assert_eq!(
        sql_csv(run, "SELECT dataset, count(*) AS n FROM gold_gene_disease GROUP BY dataset ORDER BY dataset"),
        "dataset,n\nbiored,1338\neuadr,247\ngad,4741\n"
    );
    assert_eq!(sql_csv(run, "SELECT count(*) AS n FROM quarantine WHERE source = 'gad'"), "n\n2\n");
    // MEDDOCAN: 17,134 text-bound annotations; presidio: 2,359 spans in 1,218 records.
    assert_eq!(
        sql_csv(run, "SELECT dataset, count(*) AS n FROM gold_phi GROUP BY dataset ORDER BY dataset"),
        "dataset,n\nmeddocan,17134\npresidio,2359\n"
    );
}

#[test]
fn no_gold_document_is_in_both_splits_and_dev_is_about_a_fifth() {
    let run = ingested();
    for t in ["gold_ade", "gold_gene_disease", "gold_phi"] {
        let q = format!(
            "SELECT count(*) AS n FROM (SELECT doc_id FROM {t} GROUP BY doc_id HAVING count(DISTINCT split) > 1)"
        );
        assert_eq!(sql_csv(run, &q), "n\n0\n", "{t}");
    }
    let csv = sql_csv(
        run,
        "SELECT count(*) FILTER (WHERE split = 'dev') * 1000 / count(*) AS permille FROM documents WHERE source = 'ade_corpus_v2'",
    );
    let permille: i64 = csv.lines().nth(1).unwrap().parse().unwrap();
    assert!((150..250).contains(&permille), "ADE dev share {permille}‰");
    // Gold-set splits agree between documents and gold tables.
    assert_eq!(
        sql_csv(
            run,
            "SELECT count(*) AS n FROM gold_ade g JOIN documents d ON g.doc_id = d.doc_id WHERE g.split <> d.split"
        ),
        "n\n0\n"
    );
}

/// Check `text[start..end] == span` for every row of a batch (char offsets).
fn check_spans(batch: &arrow::record_batch::RecordBatch, text: &str, prefix: &str, span_col: &str) -> usize {
    let col = |name: &str| batch.column_by_name(name).unwrap_or_else(|| panic!("no column {name}"));
    // SQL results may come back as Utf8View: normalize to Utf8.
    let string = |name: &str| arrow::compute::cast(col(name), &arrow::datatypes::DataType::Utf8).unwrap();
    let (texts, spans) = (string(text), string(span_col));
    let (texts, spans) = (texts.as_string::<i32>(), spans.as_string::<i32>());
    let starts = col(&format!("{prefix}start")).as_primitive::<Int32Type>();
    let ends = col(&format!("{prefix}end")).as_primitive::<Int32Type>();
    for i in 0..batch.num_rows() {
        let t = texts.value(i);
        let got = biodistill::text::char_slice(t, starts.value(i) as usize, ends.value(i) as usize);
        assert_eq!(got, Some(spans.value(i)), "row {i}: {t}");
    }
    batch.num_rows()
}

#[test]
fn every_gold_span_slices_to_its_text() {
    let run = ingested();
    let mut checked = 0;
    for b in run.read_table("gold_ade").unwrap() {
        checked += check_spans(&b, "text", "drug_", "drug") + check_spans(&b, "text", "effect_", "effect");
    }
    for b in run.read_table("gold_gene_disease").unwrap() {
        checked += check_spans(&b, "text", "gene_", "gene") + check_spans(&b, "text", "disease_", "disease");
    }
    // gold_phi offsets index documents.text: join it in.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let phi = rt
        .block_on(biodistill::sql::query(
            run,
            "SELECT d.text, p.start, p.\"end\", p.span FROM gold_phi p JOIN documents d ON p.doc_id = d.doc_id",
        ))
        .unwrap();
    for b in &phi {
        checked += check_spans(b, "text", "", "span");
    }
    assert_eq!(checked, 2 * 5216 + 2 * (4741 + 247 + 1338) + 17134 + 2359);
}

#[test]
fn sentences_slice_their_documents_and_gold_sentences_match() {
    let run = ingested();
    // Each sentence's text is the slice of its document at its offsets (checked in SQL, whose
    // substr counts chars as we do).
    assert_eq!(
        sql_csv(
            run,
            "SELECT count(*) AS bad FROM sentences s JOIN documents d ON s.doc_id = d.doc_id \
             WHERE substr(d.text, s.start + 1, s.\"end\" - s.start) <> s.text"
        ),
        "bad\n0\n"
    );
    // A gold sentence-level row's text is its sentence.
    assert_eq!(
        sql_csv(
            run,
            "SELECT count(*) AS bad FROM gold_ade g JOIN sentences s ON g.doc_id = s.doc_id AND g.sent_id = s.sent_id \
             WHERE g.text <> s.text"
        ),
        "bad\n0\n"
    );
    let non_ascii = sql_csv(run, "SELECT count(*) AS n FROM sentences WHERE octet_length(text) <> char_length(text)");
    let n: i64 = non_ascii.lines().nth(1).unwrap().parse().unwrap();
    assert!(n > 1000, "MEDDOCAN is Spanish: expected many non-ASCII sentences, got {n}");
    let _ = run.read_table("sentences").unwrap().iter().map(|b| b.column(0).len()).sum::<usize>();
}

#[test]
fn rerun_writes_identical_tables() {
    let dir = tempfile::tempdir().unwrap();
    let run = biodistill::run_dir::RunDir::create(dir.path()).unwrap();
    let cfg = biodistill::ingest::IngestConfig {
        data_dir: crate::util::data_dir(),
        corpora: vec!["ade_corpus_v2".into(), "gad".into()],
        ..Default::default()
    };
    biodistill::ingest::run(&cfg, &run).unwrap();
    let first = run.read_table("gold_ade").unwrap();
    biodistill::ingest::run(&cfg, &run).unwrap();
    assert_eq!(first, run.read_table("gold_ade").unwrap());
    assert_eq!(
        sql_csv(&run, "SELECT count(*) AS n FROM documents"),
        "n\n5604\n",
        "2,324 ADE PMIDs + 3,280 GAD sentences"
    );
}
