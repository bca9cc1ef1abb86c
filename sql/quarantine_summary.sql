-- What ingest could not read, grouped by file and reason.
SELECT file, reason, count(*) AS rows
FROM quarantine
GROUP BY file, reason
ORDER BY rows DESC, file;
