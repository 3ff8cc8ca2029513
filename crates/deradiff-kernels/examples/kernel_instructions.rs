//! Runs the "ours" kernels of the kernels bench at its small shapes, a fixed number of times, on
//! fixed inputs: for instruction counts under `valgrind --tool=callgrind` (RAYON_NUM_THREADS=1).
//! `cargo run --release -p deradiff-kernels --example kernel_instructions -- <kernel>`.
use candle_core::{Device, Tensor};
use deradiff_kernels::{attention, conv2d, geglu, group_norm, linear};

fn input(seed: u64, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn main() {
    let which = std::env::args().nth(1).unwrap_or_default();
    for _ in 0..3 {
        match which.as_str() {
            "attention_self_32x32" => {
                let (q, k, v) = (input(1, &[4, 1024, 16]), input(2, &[4, 1024, 16]), input(3, &[4, 1024, 16]));
                attention(&q, &k, &v, 0.25).unwrap();
            }
            "attention_cross_64x64" => {
                let (q, k, v) = (input(1, &[4, 4096, 16]), input(2, &[4, 77, 16]), input(3, &[4, 77, 16]));
                attention(&q, &k, &v, 0.25).unwrap();
            }
            "group_norm_silu_2x64x32x32" => {
                let (x, w, b) = (input(1, &[2, 64, 32, 32]), input(2, &[64]), input(3, &[64]));
                group_norm(&x, 32, &w, &b, 1e-5, true).unwrap();
            }
            "conv_32to32_3x3_64" => {
                let (x, w, b) = (input(1, &[2, 32, 64, 64]), input(2, &[32, 32, 3, 3]), input(3, &[32]));
                conv2d(&x, &w, Some(&b), 1, 1).unwrap();
            }
            "conv_64to32_1x1_64" => {
                let (x, w, b) = (input(1, &[2, 64, 64, 64]), input(2, &[32, 64, 1, 1]), input(3, &[32]));
                conv2d(&x, &w, Some(&b), 1, 0).unwrap();
            }
            "linear_ff_proj_32" => {
                let (x, w, b) = (input(1, &[2, 4096, 32]), input(2, &[256, 32]), input(3, &[256]));
                linear(&x, &w, Some(&b)).unwrap();
            }
            "geglu_tiny_2x4096x256" => {
                geglu(&input(1, &[2, 4096, 256])).unwrap();
            }
            "none" => {}
            other => panic!("unknown kernel {other:?}"),
        }
    }
}
