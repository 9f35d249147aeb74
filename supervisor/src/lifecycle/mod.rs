//! Worker lifecycle: one owning task per worker (to be written).
