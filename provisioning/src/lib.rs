//! Per-user state directories: typed ids, the on-disk layout, permissions, templates, atomic writes and archives.
