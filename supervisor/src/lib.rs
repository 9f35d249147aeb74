//! The Wirebot supervisor library: config, registry, admin API, CLI client, worker lifecycle, isolation, proxy.
