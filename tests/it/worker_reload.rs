//! End-to-end: the worker hot-reloads its agent list on SIGHUP without dropping other agents' connections.
