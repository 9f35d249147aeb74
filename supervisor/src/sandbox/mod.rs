//! Pre-exec isolation of worker processes (to be written).
