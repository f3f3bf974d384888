//! Row changes assembled from pgoutput messages, with the relation cache that
//! maps column names to tuple positions.

mod relations;
mod row;

pub use relations::{Relation, RelationCache};
pub use row::{ChangeKind, RowChange, RowError};
