//! Plumbing shared by the `locsvc` and `proxy-shim` binaries.
