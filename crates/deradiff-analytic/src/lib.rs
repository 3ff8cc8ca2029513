//! Exact analytic testbed (work in progress).
