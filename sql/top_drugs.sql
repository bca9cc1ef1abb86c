-- Extracted adverse drug events: drugs by number of distinct adverse events found, with the
-- number of documents they were found in. Reads the ade_relations table the extract stage writes.
SELECT lower(drug)                     AS drug,
       count(DISTINCT lower(effect))   AS adverse_events,
       count(DISTINCT doc_id)          AS documents,
       round(avg(score), 3)            AS mean_score
FROM ade_relations
GROUP BY lower(drug)
ORDER BY adverse_events DESC, drug
LIMIT 25;
