-- Gold ADE corpus: drugs with the most distinct adverse effects (all splits).
SELECT lower(drug)                 AS drug,
       count(DISTINCT lower(effect)) AS effects,
       count(*)                    AS pairs
FROM gold_ade
GROUP BY lower(drug)
ORDER BY effects DESC, drug
LIMIT 20;
