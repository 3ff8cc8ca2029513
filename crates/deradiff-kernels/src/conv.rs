//! 2-d convolution (NCHW, one group) as tiles of im2col and a GEMM writing into the output.

use std::cell::RefCell;

use candle_core::Tensor;
use rayon::prelude::*;

use super::device::{self, takes_device_path};
use super::{gemm_f32, gemm_parallelism, run_f32, Error, Gemm, Operand, Result, GEMM_SMALL};

/// The kernel's name in errors.
const OP: &str = "conv2d";

/// Floats of im2col patches per task (`[Ci·kh·kw, tile]`): 256 KiB, so that the patches stay in
/// the L2 cache while the GEMM packs them, unless that leaves fewer than [`MIN_TILE_COLS`].
const PATCH_FLOATS: usize = 64 * 1024;
/// Fewest output pixels per GEMM, where the image has them, for a weight larger than
/// [`PATCH_FLOATS`]: each GEMM packs the whole weight (`Co × Ci·kh·kw`, up to 59 MB for SD's
/// 1280-channel 3×3 convolutions), so tiles of a few rows would spend their time packing it, in
/// the GEMM's narrow edge kernels (SD 1.5's 3×3 convolutions at batch 2: 1.2–2.2× faster than
/// tiles of [`PATCH_FLOATS`]).
const MIN_TILE_COLS: usize = 1024;
/// Output pixels per task when there is no im2col (1×1, stride 1, no padding).
const TILE_PIXELS_1X1: usize = 1024;

/// The convolution of `x` `[B, Ci, H, W]` with `weight` `[Co, Ci, kh, kw]` plus `bias`, with
/// `stride` and zero `padding` on every side (one group, dilation 1), as
/// `[B, Co, (H + 2·padding − kh) / stride + 1, …]` in `x`'s dtype. `bias` is `[Co]` (one per
/// output channel) or `[B, Co]` (one per batch item and channel: a resnet's convolution bias plus
/// its projected timestep embedding, added in the same pass).
///
/// On the CPU this is our kernel: each task (a batch item × a tile of output rows) unfolds its
/// patches (im2col; none for a 1×1 stride-1 convolution, whose input already is the patch matrix)
/// and multiplies them by the weight with one GEMM that writes straight into the NCHW output,
/// bias included; f16 / bf16 are computed in f32. On other devices it is [`conv2d_reference`]'s
/// ops: candle's convolution (cuDNN with candle's `cudnn` feature) and the bias broadcast.
/// An [`Error::InvalidInput`] (never a panic) on mismatched ranks, channels, dtypes, a zero
/// stride or a kernel larger than the padded input.
pub fn conv2d(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, stride: usize, padding: usize) -> Result<Tensor> {
    let geom = check(x, weight, bias, stride, padding)?;
    if takes_device_path(x.device()) {
        return device::conv2d(x, weight, bias, stride, padding, None);
    }
    run(x, weight, bias, None, &geom)
}

/// `residual + conv2d(x, weight, bias, stride, padding)`, `residual` shaped like the output:
/// the convolution and the skip connection around it (a resnet's second convolution and its
/// shortcut) in one pass, each GEMM accumulating into output rows filled with the residual plus
/// the bias. Otherwise as [`conv2d`]; on other devices [`conv2d_reference`]'s ops plus
/// `residual`.
pub fn conv2d_add(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    residual: &Tensor,
) -> Result<Tensor> {
    let g = check(x, weight, bias, stride, padding)?;
    if residual.dims() != [g.b, g.co, g.oh, g.ow] || residual.dtype() != x.dtype() {
        return Err(Error::invalid(
            OP,
            format!(
                "the residual must be {:?} {:?} like the output, got {:?} {:?}",
                [g.b, g.co, g.oh, g.ow],
                x.dtype(),
                residual.dims(),
                residual.dtype()
            ),
        ));
    }
    if takes_device_path(x.device()) {
        return device::conv2d(x, weight, bias, stride, padding, Some(residual));
    }
    run(x, weight, bias, Some(residual), &g)
}

/// The kernel on CPU tensors, in f32, the result in `x`'s dtype.
fn run(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, residual: Option<&Tensor>, g: &Geometry) -> Result<Tensor> {
    let dims = [g.b, g.co, g.oh, g.ow];
    run_f32(OP, [x, weight], bias, residual, dims.to_vec(), |xs, ws, bs, rs| {
        let len = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        let len = len.ok_or_else(|| Error::TooLarge { op: OP, dims: dims.to_vec() })?;
        let mut out = vec![0f32; len];
        conv2d_f32(xs, ws, bs, rs, &mut out, g)?;
        Ok(out)
    })
}

/// candle's convolution, as `candle_nn::Conv2d` computes it: `Tensor::conv2d` then the bias
/// broadcast over `[1, Co, 1, 1]` (or `[B, Co, 1, 1]`). Same arguments and errors as [`conv2d`].
pub fn conv2d_reference(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let geom = check(x, weight, bias, stride, padding)?;
    let y = x.conv2d(weight, padding, stride, 1, 1)?;
    Ok(match bias {
        Some(bias) if bias.rank() == 2 => y.broadcast_add(&bias.reshape((geom.b, geom.co, 1, 1))?)?,
        Some(bias) => y.broadcast_add(&bias.reshape((1, geom.co, 1, 1))?)?,
        None => y,
    })
}

/// The sizes of one convolution.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    b: usize,
    ci: usize,
    h: usize,
    w: usize,
    co: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    oh: usize,
    ow: usize,
}

fn check(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, stride: usize, padding: usize) -> Result<Geometry> {
    let err = |m: String| Err(Error::invalid(OP, m));
    let (&[b, ci, h, w], &[co, wci, kh, kw]) = (x.dims(), weight.dims()) else {
        return err(format!(
            "needs x [B, Ci, H, W] and weight [Co, Ci, kh, kw], got {:?} and {:?}",
            x.dims(),
            weight.dims()
        ));
    };
    if wci != ci {
        return err(format!("x has {ci} channels but weight {:?} takes {wci}", weight.dims()));
    }
    if let Some(bias) = bias {
        if bias.dims() != [co] && bias.dims() != [b, co] {
            return err(format!("bias must be [{co}] or [{b}, {co}], got {:?}", bias.dims()));
        }
        if bias.dtype() != x.dtype() {
            return err(format!("bias is {:?} but x is {:?}", bias.dtype(), x.dtype()));
        }
    }
    if weight.dtype() != x.dtype() {
        return err(format!("weight is {:?} but x is {:?}", weight.dtype(), x.dtype()));
    }
    if stride == 0 {
        return err("stride must be at least 1".into());
    }
    if kh == 0 || kw == 0 || h + 2 * padding < kh || w + 2 * padding < kw {
        return err(format!("kernel {kh}×{kw} does not fit the {h}×{w} input padded by {padding}"));
    }
    let (oh, ow) = ((h + 2 * padding - kh) / stride + 1, (w + 2 * padding - kw) / stride + 1);
    Ok(Geometry { b, ci, h, w, co, kh, kw, stride, pad: padding, oh, ow })
}

/// The output, shared by the tasks, each of which writes its own rows of every channel.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: the tasks write disjoint parts of the output (see `conv2d_f32`).
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer at `offset` floats (a method, so that closures capture the whole `OutPtr`).
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

thread_local! {
    /// Each thread's im2col buffer, kept between calls (its size is bounded by [`PATCH_FLOATS`],
    /// [`MIN_TILE_COLS`] columns or one output row's patches).
    static PATCHES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Each thread's GEMM output for several small images at once, kept between calls.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The kernel over contiguous slices: `x` `[B, Ci, H, W]`, `w` `[Co, Ci·kh·kw]`, `bias` `[Co]` or
/// `[B, Co]`, `residual` and `out` `[B, Co, oh, ow]`.
fn conv2d_f32(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    out: &mut [f32],
    g: &Geometry,
) -> Result<()> {
    // What the indexing and the SAFETY comments below assume of the slices, counted with
    // overflow checks (`run_f32` gives each exactly its tensor's elements).
    let count = |dims: &[usize]| dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    let out_len = count(&[g.b, g.co, g.oh, g.ow]);
    let fits = out_len == Some(out.len())
        && count(&[g.b, g.ci, g.h, g.w]) == Some(x.len())
        && count(&[g.co, g.ci, g.kh, g.kw]) == Some(w.len())
        && bias.is_none_or(|b| b.len() == g.co || Some(b.len()) == count(&[g.b, g.co]))
        && residual.is_none_or(|r| Some(r.len()) == out_len);
    if !fits {
        return Err(Error::internal(
            OP,
            format!(
                "buffers of {} (x), {} (weight), {} (out) floats do not fit the geometry {g:?}",
                x.len(),
                w.len(),
                out.len()
            ),
        ));
    }
    let k = g.ci * g.kh * g.kw;
    let (in_plane, out_plane) = (g.h * g.w, g.oh * g.ow);
    if out.is_empty() {
        return Ok(());
    }
    // The bias of batch item `bi`, channel `c`.
    let bias_at = |bi: usize, c: usize| bias.map_or(0.0, |b| if b.len() == g.co { b[c] } else { b[bi * g.co + c] });
    let filled = bias.is_some() || residual.is_some();
    if k == 0 {
        // No input channels: the output is the residual plus the bias.
        for (i, o) in out.chunks_mut(out_plane).enumerate() {
            o.fill(bias_at(i / g.co, i % g.co));
            if let Some(r) = residual {
                o.iter_mut().zip(&r[i * out_plane..]).for_each(|(o, r)| *o += r);
            }
        }
        return Ok(());
    }
    let direct = g.kh == 1 && g.kw == 1 && g.stride == 1 && g.pad == 0;
    let target = match (direct, g.co * k > PATCH_FLOATS) {
        (true, _) => TILE_PIXELS_1X1,
        (false, true) => (PATCH_FLOATS / k).max(MIN_TILE_COLS),
        (false, false) => PATCH_FLOATS / k,
    }
    // Enough columns that a GEMM of `Co` rows is not one the `gemm` crate runs in its small-problem
    // kernels, which `gemm_f32` would run zero-padded (SD's 4-channel `conv_out`: 4 × 64 pixels).
    .max(GEMM_SMALL / g.co + 1);
    if out_plane < target && g.b > 1 {
        // Small images: several whole batch items per GEMM (their patches side by side), into a
        // scratch `[Co, images·plane]` then copied out, so the weight is packed once per group.
        let per = (target / out_plane).clamp(1, g.b);
        let tasks = g.b.div_ceil(per);
        let par = gemm_parallelism(tasks);
        let dst = OutPtr(out.as_mut_ptr());
        return (0..tasks).into_par_iter().try_for_each(|t| {
            let images = t * per..g.b.min((t + 1) * per);
            let cols = images.len() * out_plane;
            SCRATCH.with_borrow_mut(|scratch| {
                PATCHES.with_borrow_mut(|patches| -> Result<()> {
                    grow(patches, k * cols);
                    grow(scratch, g.co * cols);
                    let (patches, scratch) = (&mut patches[..k * cols], &mut scratch[..g.co * cols]);
                    for (j, bi) in images.clone().enumerate() {
                        let xb = &x[bi * g.ci * in_plane..][..g.ci * in_plane];
                        im2col(xb, &mut patches[j * out_plane..], cols, g, 0, g.oh);
                        if filled {
                            for c in 0..g.co {
                                let row = &mut scratch[c * cols + j * out_plane..][..out_plane];
                                let r = residual.map(|r| &r[(bi * g.co + c) * out_plane..][..out_plane]);
                                fill_row(row, bias_at(bi, c), r);
                            }
                        }
                    }
                    // SAFETY: lhs `w` is `[Co, k]`; rhs `patches` is `[k, cols]` and dst `scratch`
                    // `[Co, cols]`, both contiguous, owned by this thread and valid for their
                    // lengths (which `gemm_f32` checks the extents against).
                    unsafe {
                        gemm_into(
                            (scratch.as_mut_ptr(), scratch.len()),
                            cols,
                            w,
                            (patches.as_ptr(), patches.len()),
                            cols,
                            [g.co, cols, k],
                            filled,
                            par,
                        )?
                    };
                    for (j, bi) in images.clone().enumerate() {
                        for c in 0..g.co {
                            // SAFETY: batch item `bi`'s output planes lie inside `out` and belong to
                            // this task only (tasks take disjoint batch items).
                            let o = unsafe {
                                std::slice::from_raw_parts_mut(dst.at((bi * g.co + c) * out_plane), out_plane)
                            };
                            o.copy_from_slice(&scratch[c * cols + j * out_plane..][..out_plane]);
                        }
                    }
                    Ok(())
                })
            })
        });
    }
    let rows = target.div_ceil(g.ow).clamp(1, g.oh);
    let tiles = g.oh.div_ceil(rows);
    let par = gemm_parallelism(g.b * tiles);
    let out_len = out.len();
    let dst = OutPtr(out.as_mut_ptr());
    (0..g.b * tiles).into_par_iter().try_for_each(|task| -> Result<()> {
        let (bi, oy0) = (task / tiles, task % tiles * rows);
        let cols = rows.min(g.oh - oy0) * g.ow;
        let xb = &x[bi * g.ci * in_plane..][..g.ci * in_plane];
        // This task's output: `[Co, cols]` with rows `out_plane` apart.
        let tile_start = bi * g.co * out_plane + oy0 * g.ow;
        let dst_tile = dst.at(tile_start);
        if filled {
            for c in 0..g.co {
                // SAFETY: channel `c`'s `cols` outputs from `oy0` lie inside `out` and belong to
                // this task only (tasks differ in batch item or in output rows).
                let row = unsafe { std::slice::from_raw_parts_mut(dst_tile.add(c * out_plane), cols) };
                fill_row(row, bias_at(bi, c), residual.map(|r| &r[tile_start + c * out_plane..][..cols]));
            }
        }
        if direct {
            // The input rows of the tile are the patches: `[Ci, cols]` with rows `in_plane` apart.
            let rhs = &xb[oy0 * g.w..];
            // SAFETY: lhs `w` is `[Co, k]` (row stride k); rhs reads `[Ci = k, cols]` from `rhs`
            // with row stride `in_plane`, the last row ending inside `xb`; dst is this task's
            // part of `out` as above, written by no other thread; each pointer is valid for the
            // length given (the rest of its buffer), which `gemm_f32` checks the extents against.
            unsafe {
                gemm_into(
                    (dst_tile, out_len - tile_start),
                    out_plane,
                    w,
                    (rhs.as_ptr(), rhs.len()),
                    in_plane,
                    [g.co, cols, k],
                    filled,
                    par,
                )
            }
        } else {
            PATCHES.with_borrow_mut(|patches| {
                grow(patches, k * cols);
                let patches = &mut patches[..k * cols];
                im2col(xb, patches, cols, g, oy0, cols / g.ow);
                // SAFETY: lhs `w` is `[Co, k]`; rhs `patches` is `[k, cols]`, contiguous; dst as
                // in the direct case.
                unsafe {
                    gemm_into(
                        (dst_tile, out_len - tile_start),
                        out_plane,
                        w,
                        (patches.as_ptr(), patches.len()),
                        cols,
                        [g.co, cols, k],
                        filled,
                        par,
                    )
                }
            })
        }
    })
}

/// `row` ← `residual + bias` (the bias alone without a residual): what a GEMM accumulates into.
fn fill_row(row: &mut [f32], bias: f32, residual: Option<&[f32]>) {
    match residual {
        Some(r) => row.iter_mut().zip(r).for_each(|(o, r)| *o = r + bias),
        None => row.fill(bias),
    }
}

/// `buf` at least `len` long.
fn grow(buf: &mut Vec<f32>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
}

/// `dst [m, n] (+)= lhs [m, k] · rhs [k, n]`, all row-major with unit column stride and row
/// strides `dst_rs`, `k`, `rhs_rs`; accumulates into `dst` when `accumulate`; threads inside
/// the GEMM as `parallelism` says. `dst` and `rhs` are pointers with the number of floats they
/// are valid for; [`gemm_f32`] checks every operand's extent against its length.
///
/// # Safety
/// `dst.0` must be valid for writes of `dst.1` floats and `rhs.0` for reads of `rhs.1` floats,
/// and no other thread may access the part of `dst` in the `[m, n]` extent during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_into(
    dst: (*mut f32, usize),
    dst_rs: usize,
    lhs: &[f32],
    rhs: (*const f32, usize),
    rhs_rs: usize,
    [m, n, k]: [usize; 3],
    accumulate: bool,
    parallelism: gemm::Parallelism,
) -> Result<()> {
    // SAFETY: the caller's contract, which is `gemm_f32`'s for these unit-column-stride operands
    // (`lhs` is a slice: valid for its length).
    unsafe {
        gemm_f32(&Gemm {
            m,
            n,
            k,
            dst: Operand { ptr: dst.0, row: dst_rs, col: 1, len: dst.1 },
            lhs: Operand { ptr: lhs.as_ptr(), row: k, col: 1, len: lhs.len() },
            rhs: Operand { ptr: rhs.0, row: rhs_rs, col: 1, len: rhs.1 },
            accumulate,
            parallelism,
        })
    }
}

/// The patches of output rows `oy0 .. oy0 + rows` of one batch item `xb` `[Ci, H, W]`:
/// `patches` `[Ci·kh·kw, rows·ow]` with rows `ld` apart, row `(c, ky, kx)` holding input
/// `(c, oy·s + ky − p, ox·s + kx − p)` for each output pixel `(oy, ox)` of the tile, zero outside
/// the input.
fn im2col(xb: &[f32], patches: &mut [f32], ld: usize, g: &Geometry, oy0: usize, rows: usize) {
    let cols = rows * g.ow;
    // A stride-1 "same" convolution (3×3 padding 1): each patch row is the input plane shifted
    // by a constant offset, so one copy per row of patches, then the wrapped-around columns zeroed.
    let same = g.stride == 1 && g.ow == g.w;
    for i in 0..g.ci * g.kh * g.kw {
        let p = &mut patches[i * ld..][..cols];
        let (c, ky, kx) = (i / (g.kh * g.kw), i / g.kw % g.kh, i % g.kw);
        let plane = &xb[c * g.h * g.w..][..g.h * g.w];
        if same {
            // Output pixel `n` of the tile reads `plane[start + n]` (while in the plane).
            let start = (oy0 * g.w + ky * g.w + kx) as isize - (g.pad * g.w + g.pad) as isize;
            let lo = (-start).clamp(0, cols as isize) as usize;
            let hi = (plane.len() as isize - start).clamp(lo as isize, cols as isize) as usize;
            p[..lo].fill(0.0);
            p[hi..].fill(0.0);
            if lo < hi {
                p[lo..hi].copy_from_slice(&plane[(start + lo as isize) as usize..][..hi - lo]);
            }
            // Columns whose input column `ox + kx − pad` is left or right of the row.
            let (left, right) = (g.pad.saturating_sub(kx), (kx + 1).saturating_sub(g.pad + 1).min(g.w));
            for pr in p.chunks_exact_mut(g.w) {
                pr[..left.min(g.w)].fill(0.0);
                pr[g.w - right..].fill(0.0);
            }
            continue;
        }
        // Output columns `lo .. hi`: those whose input column `ox·s + kx − pad` lies in `0..W`.
        let lo = g.pad.saturating_sub(kx).div_ceil(g.stride).min(g.ow);
        let hi = if g.w + g.pad > kx { (g.w + g.pad - kx - 1) / g.stride + 1 } else { 0 }.clamp(lo, g.ow);
        for (r, pr) in p.chunks_exact_mut(g.ow).enumerate() {
            let iy = (oy0 + r) * g.stride + ky;
            if lo == hi || iy < g.pad || iy - g.pad >= g.h {
                pr.fill(0.0);
                continue;
            }
            let src = &plane[(iy - g.pad) * g.w..][..g.w];
            pr[..lo].fill(0.0);
            pr[hi..].fill(0.0);
            let ix0 = lo * g.stride + kx - g.pad;
            if g.stride == 1 {
                pr[lo..hi].copy_from_slice(&src[ix0..ix0 + hi - lo]);
            } else {
                for (o, &v) in pr[lo..hi].iter_mut().zip(src[ix0..].iter().step_by(g.stride)) {
                    *o = v;
                }
            }
        }
    }
}
