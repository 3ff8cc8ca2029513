//! Finding the right λ (work in progress).
