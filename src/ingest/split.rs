//! Deterministic train/dev splits.

use sha2::{Digest, Sha256};

/// `"dev"` for about `dev_fraction` of all keys, `"train"` for the rest, decided by a hash of
/// (dataset, key) so the split depends on nothing but the key: stable across runs, machines and
/// input order, and every row of a group (a PMID, a document) lands on the same side.
pub fn split_for(dataset: &str, key: &str, dev_fraction: f64) -> &'static str {
    let digest = Sha256::new().chain_update(dataset).chain_update([0u8]).chain_update(key).finalize();
    let x = u64::from_be_bytes(digest[..8].try_into().expect("sha256 has 32 bytes"));
    if (x as f64) < dev_fraction * (u64::MAX as f64) { crate::schema::split::DEV } else { crate::schema::split::TRAIN }
}

/// Hex sha256 of a string.
pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_deterministic_and_near_the_fraction() {
        let dev = (0..10_000).filter(|i| split_for("ade", &i.to_string(), 0.2) == "dev").count();
        assert!((1_800..2_200).contains(&dev), "{dev}");
        assert_eq!(split_for("ade", "12345", 0.2), split_for("ade", "12345", 0.2));
        assert_eq!(split_for("ade", "12345", 0.0), "train");
    }
}
