//! A local OpenAI-compatible /v1/embeddings server for memory tests (to be written).
