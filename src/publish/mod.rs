//! Publishing estimates: JSON Lines (stdout or file) and the record schema they share with the
//! bedside display.

pub mod jsonl;
pub mod record;
