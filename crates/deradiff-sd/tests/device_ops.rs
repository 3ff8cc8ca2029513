//! How many candle ops one UNet forward runs on the device path (what it runs on a GPU), and how
//! many of them launch a kernel, counted on the CPU by forcing that path
//! ([`deradiff_kernels::with_device_path`]) — without instrumenting anything:
//!
//! * ops: every candle op makes a tensor (a kernel launch on a GPU, or a view — reshape,
//!   transpose, narrow, broadcast — that launches nothing) and takes the next value of candle's
//!   global tensor-id counter; the difference of two fresh ids counts the ops in between;
//! * launches: an op that computes something makes new storage, which candle allocates as one
//!   `Arc<RwLock<Storage>>` (a view shares its source's); this binary's allocator counts the
//!   allocations of exactly that size made on the counting thread (a kernel launch on a GPU, or a
//!   host-to-device copy for tensors made from host data).
//!
//! The counts do not depend on the weights (zeros here) nor, once every level is larger than
//! 1×1, on the spatial size (no attention here is large enough to be split into chunks), so the
//! UNets are small: SD 1.5's structure (4 levels, 2 resnets per level, 16 transformer blocks, 8
//! heads) with 32–64 channels, and SDXL's (3 levels, 2 resnets per level, transformer depths 2
//! and 10, `text_time`) with 32–64. The CPU run makes one copy per spatial transformer that a GPU
//! does not (`proj_in` reads the image layout in place in cuBLAS; candle's CPU matmul cannot), so
//! a GPU launches that many fewer (16 for SD 1.5, 11 for SDXL; not subtracted below).
//!
//! This binary holds one test, so no other test makes tensors while it counts. `cargo test -p
//! deradiff-sd --test device_ops -- --nocapture` prints the table.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Device, Storage, Tensor};
use candle_nn::VarBuilder;
use deradiff_kernels as kernels;
use deradiff_sd::{AddedConditioning, Unet, UnetConfig};

#[path = "../benches/support/sd15.rs"]
#[allow(dead_code)]
mod sd15;
use sd15::SD15_UNET;

/// The system allocator, counting the allocations of a tensor storage's `Arc` block made on a
/// thread that counts.
struct CountStorages;

/// candle's `ArcInner<parking_lot::RwLock<Storage>>`: the two reference counts, the lock's one
/// word, the storage (the probes at the start of the test check it).
const STORAGE_BLOCK: usize = 3 * std::mem::size_of::<usize>() + std::mem::size_of::<Storage>();
static STORAGES: AtomicUsize = AtomicUsize::new(0);
thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for CountStorages {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() == STORAGE_BLOCK && layout.align() == 8 && COUNTING.with(Cell::get) {
            STORAGES.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract, unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountStorages = CountStorages;

/// The next value of candle's tensor-id counter (the probe tensor takes one).
fn next_id() -> usize {
    let id = format!("{:?}", Tensor::zeros((), DType::F32, &Device::Cpu).unwrap().id());
    id.trim_start_matches("TensorId(").trim_end_matches(')').parse().unwrap()
}

/// What candle made while something ran.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Ops {
    /// Tensors made: every op, views included.
    tensors: usize,
    /// New storages: the ops that compute (a kernel launch each on a GPU).
    launches: usize,
}

/// `f`'s value and what candle made while it ran.
fn count<R>(f: impl FnOnce() -> R) -> (R, Ops) {
    let before = next_id();
    COUNTING.with(|c| c.set(true));
    let storages = STORAGES.load(Ordering::Relaxed);
    let out = f();
    let launches = STORAGES.load(Ordering::Relaxed) - storages;
    COUNTING.with(|c| c.set(false));
    (out, Ops { tensors: next_id() - before - 1, launches })
}

/// SD 1.5's UNet config with every width divided by 10 or 20 (same blocks, layers and heads).
fn sd15_narrow() -> UnetConfig {
    let mut json: serde_json::Value = serde_json::from_str(SD15_UNET).unwrap();
    json["block_out_channels"] = serde_json::json!([32, 64, 64, 64]);
    json["cross_attention_dim"] = serde_json::json!(32);
    UnetConfig::from_json(&json.to_string(), "sd15-narrow/unet/config.json").unwrap()
}

/// SDXL base's UNet config, narrow: 3 levels (no attention at the first), transformer depths
/// 1 / 2 / 10 (the first level has none), linear projections, `text_time` conditioning.
fn sdxl_narrow() -> UnetConfig {
    let json = serde_json::json!({
        "_class_name": "UNet2DConditionModel",
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 8,
        "attention_head_dim": [1, 2, 4],
        "block_out_channels": [32, 64, 64],
        "cross_attention_dim": 32,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "in_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "out_channels": 4,
        "projection_class_embeddings_input_dim": 80,
        "sample_size": 128,
        "transformer_layers_per_block": [1, 2, 10],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "use_linear_projection": true
    });
    UnetConfig::from_json(&json.to_string(), "sdxl-narrow/unet/config.json").unwrap()
}

fn randn(shape: &[usize], dtype: DType) -> Tensor {
    Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
}

/// Ops of one device-path forward of `config`'s UNet at batch 2 over `size`² latents, in `dtype`.
fn unet_ops(config: UnetConfig, size: usize, dtype: DType) -> Ops {
    let vb = VarBuilder::zeros(dtype, &Device::Cpu);
    let unet = Unet::from_var_builder(vb, config, "zeros", dtype, &Device::Cpu).unwrap();
    let x = randn(&[2, 4, size, size], dtype);
    let ctx = randn(&[2, 77, unet.cross_attention_dim()], dtype);
    let added = unet.text_time().map(|tt| {
        let ids = Tensor::new(&[[128f32, 128., 0., 0., 128., 128.]; 2], &Device::Cpu).unwrap();
        AddedConditioning::new(randn(&[2, tt.pooled_dim], dtype), ids.to_dtype(dtype).unwrap()).unwrap()
    });
    // A group norm larger than any of the forward's first: the unit affine its layer-norm kernel
    // takes is then made once, before counting (not once per group norm, and not at all on a GPU
    // in a later forward).
    let img = Tensor::zeros((1, 32, 64, 64), dtype, &Device::Cpu).unwrap();
    let affine = Tensor::zeros(32, dtype, &Device::Cpu).unwrap();
    kernels::with_device_path(|| kernels::group_norm(&img, 32, &affine, &affine, 1e-5, true)).unwrap();
    let forward = || kernels::with_device_path(|| unet.forward_added(&x, 500.0, &ctx, added.as_ref()).unwrap());
    let (out, ops) = count(forward);
    assert_eq!(out.dims(), x.dims());
    ops
}

/// Ops of the kernels' device path on one call each (batch 2, 8×8 tokens of 64 channels: the
/// count does not depend on the sizes).
fn kernel_ops(dtype: DType) -> Vec<(&'static str, Ops)> {
    let (b, l, c) = (2, 64, 64);
    let (x, ctx) = (randn(&[b, l, c], dtype), randn(&[b, 77, c], dtype));
    let img = randn(&[b, c, 8, 8], dtype);
    let (w, bias) = (randn(&[c], dtype), randn(&[c], dtype));
    let lin = randn(&[c, c], dtype);
    let conv = randn(&[c, c, 3, 3], dtype);
    let ops = |f: &dyn Fn() -> kernels::Result<Tensor>| {
        kernels::with_device_path(|| {
            f().unwrap();
            count(|| f().unwrap()).1
        })
    };
    vec![
        ("self-attention (8 heads)", ops(&|| kernels::attention_heads(&x, &x, &x, 8, 0.16))),
        ("cross-attention (8 heads, 77 keys)", ops(&|| kernels::attention_heads(&x, &ctx, &ctx, 8, 0.16))),
        ("group norm + SiLU", ops(&|| kernels::group_norm(&img, 32, &w, &bias, 1e-5, true))),
        ("group norm", ops(&|| kernels::group_norm(&img, 32, &w, &bias, 1e-6, false))),
        ("linear", ops(&|| kernels::linear(&x, &lin, Some(&bias)))),
        ("linear + residual", ops(&|| kernels::linear_add(&x, &lin, Some(&bias), &x))),
        ("linear from channels (proj_in)", ops(&|| kernels::linear_from_channels(&img, &lin, Some(&bias)))),
        ("linear to channels + residual (proj_out)", ops(&|| kernels::linear_to_channels(&x, &lin, Some(&bias), &img))),
        ("conv 3×3", ops(&|| kernels::conv2d(&img, &conv, Some(&bias), 1, 1))),
        ("conv 3×3 + residual", ops(&|| kernels::conv2d_add(&img, &conv, Some(&bias), 1, 1, &img))),
    ]
}

#[test]
fn device_path_op_counts() {
    // The probe: one storage per computing op, none per view.
    let t = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(count(|| t.reshape(6).unwrap().narrow(0, 1, 2).unwrap()).1, Ops { tensors: 2, launches: 0 });
    assert_eq!(count(|| (t.affine(2.0, 1.0).unwrap() + &t).unwrap()).1, Ops { tensors: 2, launches: 2 });
    // f16 (bf16 makes the same ops; f32 makes the same but for the casts f16 needs).
    for dtype in [DType::F16] {
        println!("{dtype:?}: candle ops (launches) of one device-path call");
        let row = |name: &str, o: Ops| println!("  {name:<42} {:>5} ({:>4})", o.tensors, o.launches);
        // Each kernel's launches, at most (the CPU run's proj_in copy included).
        let most = [7, 7, 4, 3, 2, 3, 3, 3, 2, 3];
        for ((name, ops), most) in kernel_ops(dtype).into_iter().zip(most) {
            row(name, ops);
            assert!(ops.launches <= most, "{name}: {} launches, more than {most}", ops.launches);
        }
        // Before issue 21 (f16): 1953 and 4153 launches (3715 and 8618 ops).
        for (name, ops, most) in [
            ("UNet forward, SD 1.5-shaped", unet_ops(sd15_narrow(), 16, dtype), 1119),
            ("UNet forward, SDXL-shaped", unet_ops(sdxl_narrow(), 8, dtype), 2939),
        ] {
            row(name, ops);
            assert!(ops.launches <= most, "{name}: {} launches, more than {most}", ops.launches);
        }
    }
}
