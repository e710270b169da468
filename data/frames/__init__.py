"""Frame caches: the on-disk store, the in-memory cache, and extracting videos into a store."""
