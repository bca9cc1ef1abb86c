//! Agreement between labeling passes (`label.passes`): which of a sentence's labels count.
//!
//! One rule, used by training (`train.filters.require_agreement`) and by evaluation (the
//! `teacher_agreed` system, which scores exactly the silver set that filter trains on). A pass
//! that answered the sentence but gave no label votes against every label: agreement is out of
//! the passes that answered, not out of those that happened to label something.

use std::collections::{BTreeMap, BTreeSet};

/// The labels of one sentence kept from `by_pass` (each pass's labels, one vote per pass):
/// with `require` and at least two `answering` passes, those two or more passes gave;
/// otherwise every label any pass gave. Returns the kept labels in order and how many distinct
/// labels were dropped.
pub fn agreed<K: Ord + Clone>(
    by_pass: impl IntoIterator<Item = BTreeSet<K>>,
    answering: usize,
    require: bool,
) -> (Vec<K>, usize) {
    let mut votes: BTreeMap<K, usize> = BTreeMap::new();
    let mut passes = 0;
    for labels in by_pass {
        passes += 1;
        for label in labels {
            *votes.entry(label).or_default() += 1;
        }
    }
    let needed = if require && answering.max(passes) >= 2 { 2 } else { 1 };
    let (kept, dropped): (Vec<_>, Vec<_>) = votes.into_iter().partition(|(_, n)| *n >= needed);
    (kept.into_iter().map(|(k, _)| k).collect(), dropped.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(labels: &[&'static str]) -> BTreeSet<&'static str> {
        labels.iter().copied().collect()
    }

    #[test]
    fn two_passes_must_agree_and_a_silent_pass_votes_against() {
        let passes = [set(&["a", "b"]), set(&["b", "c"])];
        assert_eq!(agreed(passes.clone(), 2, true), (vec!["b"], 2));
        assert_eq!(agreed(passes, 2, false), (vec!["a", "b", "c"], 0));
        // Three passes answered, one of them with nothing: "a" has one vote of three.
        assert_eq!(agreed([set(&["a"])], 3, true), (vec![], 1));
        // A sentence only one pass answered keeps its labels.
        assert_eq!(agreed([set(&["a"])], 1, true), (vec!["a"], 0));
        let three = [set(&["a", "b"]), set(&["a"]), set(&["b", "c"])];
        assert_eq!(agreed(three, 3, true), (vec!["a", "b"], 1));
    }
}
