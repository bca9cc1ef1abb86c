//! The vocabulary every stage shares: the extraction tasks and their entity types ([`task`]),
//! and the one PHI type scheme with its mappings from the gold sets' own types ([`phi`]).
//!
//! It sits on the shared floor, below the teacher, the student and evaluation, so that none of
//! them imports another just to name a task or a type. The student's BIO tag ids are a pure
//! function of [`Task::entity_types`] (see [`crate::model::tags`]).

pub mod phi;
pub mod task;

pub use phi::PhiType;
pub use task::Task;
