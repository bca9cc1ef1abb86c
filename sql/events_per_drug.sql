-- Extracted adverse drug events: every (drug, event) pair with how often it was seen.
SELECT lower(drug)             AS drug,
       lower(effect)           AS adverse_event,
       count(*)                AS mentions,
       count(DISTINCT doc_id)  AS documents,
       round(max(score), 3)    AS best_score
FROM ade_relations
GROUP BY lower(drug), lower(effect)
ORDER BY drug, mentions DESC, adverse_event;
