//! Integration tests: one binary for every end-to-end and store test.
