//! The extraction tasks and the entity types each one tags.
//!
//! The order of [`Task::entity_types`] fixes the student's tag ids (see [`crate::model::tags`]),
//! so it is part of every checkpoint's format: append, never reorder.

use serde::{Deserialize, Serialize};

use super::phi::PhiType;

/// An extraction task: the value of `teacher_labels.task`. One enum for the whole pipeline (the
/// student's tasks are the teacher's); each has its prompt, `pipelines/prompts/<task>.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Drugs and the adverse events they caused (ADE-Corpus-V2).
    Ade,
    /// Genes and the diseases they are associated with (GAD, EU-ADR, BioRED).
    GeneDisease,
    /// Protected health information spans (de-identification).
    Phi,
}

impl Task {
    pub const ALL: [Task; 3] = [Task::Ade, Task::GeneDisease, Task::Phi];

    /// The names of [`Task::ALL`], in its order (report order too).
    pub const NAMES: [&'static str; Task::ALL.len()] = names_of!(Task);

    /// The name used in tables and file names.
    pub const fn as_str(self) -> &'static str {
        match self {
            Task::Ade => "ade",
            Task::GeneDisease => "gene_disease",
            Task::Phi => "phi",
        }
    }

    /// Parse a `teacher_labels.task` value.
    pub fn parse(s: &str) -> Option<Task> {
        Task::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Entity types of the entity tagger, in tag-id order. For `phi` these are the names of
    /// [`PhiType::ALL`]; any other type string in `teacher_labels` is counted and dropped by
    /// training.
    pub fn entity_types(self) -> &'static [&'static str] {
        match self {
            Task::Ade => &["DRUG", "ADVERSE_EVENT"],
            Task::GeneDisease => &["GENE", "DISEASE"],
            Task::Phi => &PhiType::NAMES,
        }
    }

    /// `(anchor type, related type)` for relation tasks; `None` for span-only tasks.
    pub fn relation(self) -> Option<(&'static str, &'static str)> {
        match self {
            Task::Ade => Some(("DRUG", "ADVERSE_EVENT")),
            Task::GeneDisease => Some(("GENE", "DISEASE")),
            Task::Phi => None,
        }
    }

    /// Index of `entity_type` (case-insensitive) in [`Task::entity_types`].
    pub fn type_index(self, entity_type: &str) -> Option<usize> {
        self.entity_types().iter().position(|t| t.eq_ignore_ascii_case(entity_type.trim()))
    }

    /// Number of entity tags (`O` plus `B`/`I` per type).
    pub fn num_entity_tags(self) -> usize {
        1 + 2 * self.entity_types().len()
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Task {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Task::parse(s).ok_or_else(|| format!("unknown task {s:?} (expected ade, gene_disease or phi)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_names_and_types() {
        assert_eq!(Task::parse("gene_disease"), Some(Task::GeneDisease));
        assert_eq!(Task::Phi.num_entity_tags(), 1 + 2 * PhiType::ALL.len());
        assert_eq!(Task::Ade.type_index("adverse_event"), Some(1));
    }

    /// Tag ids follow this order, so trained checkpoints depend on it (it was a literal list
    /// before it came from `PhiType::ALL`).
    #[test]
    fn entity_type_order_is_the_checkpoint_format() {
        let phi = ["NAME", "DATE", "AGE", "SEX", "LOCATION", "ID", "CONTACT", "PROFESSION", "ORGANIZATION", "OTHER"];
        assert_eq!(Task::Phi.entity_types(), phi);
        assert_eq!(Task::Ade.entity_types(), ["DRUG", "ADVERSE_EVENT"]);
        assert_eq!(Task::GeneDisease.entity_types(), ["GENE", "DISEASE"]);
    }
}
