//! Stable Diffusion for deradiff (work in progress).
