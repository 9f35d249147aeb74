//! A local HTTP server speaking the real Anthropic and OpenAI wire formats, with injectable failures (to be written).
