//! End-to-end: the real daemon's shared tier: multi-agent shard workers, live agent add/remove, shared routes.
