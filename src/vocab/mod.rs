//! The vocabulary every stage shares: the extraction tasks and their entity types ([`task`]),
//! and the one PHI type scheme with its mappings from the gold sets' own types ([`phi`]).
//!
//! It sits on the shared floor, below the teacher, the student and evaluation, so that none of
//! them imports another just to name a task or a type. The student's BIO tag ids are a pure
//! function of [`Task::entity_types`] (see [`crate::model::tags`]).

/// The `as_str` names of `$ty::ALL`, in its order, as a constant (`as_str` is a `const fn`).
macro_rules! names_of {
    ($ty:ty) => {{
        let mut names = [""; <$ty>::ALL.len()];
        let mut i = 0;
        while i < names.len() {
            names[i] = <$ty>::ALL[i].as_str();
            i += 1;
        }
        names
    }};
}

pub mod phi;
pub mod task;

pub use phi::PhiType;
pub use task::Task;
