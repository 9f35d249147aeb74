//! Markdown memory: chunking, SQLite FTS5 + sqlite-vec index, hybrid search (to be written).
