-- Gold tables by dataset and split (evaluation only; never training input).
SELECT 'gold_ade' AS gold_table, 'ade_corpus_v2' AS dataset, split, count(*) AS rows FROM gold_ade GROUP BY split
UNION ALL
SELECT 'gold_gene_disease', dataset, split, count(*) FROM gold_gene_disease GROUP BY dataset, split
UNION ALL
SELECT 'gold_phi', dataset, split, count(*) FROM gold_phi GROUP BY dataset, split
ORDER BY gold_table, dataset, split;
