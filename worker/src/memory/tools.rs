//! Agent tools (to be written).
