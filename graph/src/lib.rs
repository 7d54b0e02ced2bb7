//! Placeholder: replaced by the owner of this crate.
