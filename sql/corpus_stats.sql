-- Corpus statistics: documents, sentences and characters per source and split.
SELECT d.source,
       d.split,
       count(DISTINCT d.doc_id)          AS documents,
       count(s.sent_id)                  AS sentences,
       sum(char_length(s.text))          AS sentence_chars
FROM documents d
LEFT JOIN sentences s ON s.doc_id = d.doc_id
GROUP BY d.source, d.split
ORDER BY d.source, d.split;
