//! lamb-nn (being written).
