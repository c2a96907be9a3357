//! Test support shared by the workspace's test suites.
