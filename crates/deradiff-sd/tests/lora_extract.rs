//! `extract_lora` on the two tiny SD UNets: each layer's reported error is the Eckart–Young
//! bound (the tail of ΔW's spectrum, from nalgebra's Golub–Kahan SVD, not our eigen route), the
//! error falls with the rank to zero at full rank, a change of rank r is recovered exactly at
//! rank r, and the saved LoRA loads back and reproduces the aligned UNet's output within the
//! error it reports.

mod common;

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use common::*;
use deradiff_sd::lora::{extract_lora, ExtractOptions, LoraAdapter, LoraFormat, LoraLayer, SvdMethod};
use deradiff_sd::Unet;
use nalgebra::DMatrix;

fn unet(path: std::path::PathBuf) -> Unet {
    Unet::load(path, None, DType::F32, &Device::Cpu).unwrap()
}

fn reference_unet() -> Unet {
    unet(tiny_sd().join("unet"))
}

fn aligned_unet() -> Unet {
    unet(tiny_aligned())
}

fn matrix(t: &Tensor) -> DMatrix<f64> {
    let rows = t.dims()[0];
    let v = t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    DMatrix::from_row_slice(rows, v.len() / rows, &v)
}

/// The UNet's output on fixed inputs (the reference fixture's UNet inputs).
fn output(u: &Unet) -> Tensor {
    u.forward(&reference("unet.x"), 500.0, &reference("unet.emb")).unwrap()
}

fn norm(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap().sqrt()
}

#[test]
fn each_layers_error_is_the_tail_of_its_spectrum() {
    let (r, a) = (reference_unet(), aligned_unet());
    let (wr, wa) = (r.layer_weights().unwrap(), a.layer_weights().unwrap());
    for rank in [1, 3, 8] {
        let (adapter, report) = extract_lora(&r, &a, &ExtractOptions { rank, ..Default::default() }).unwrap();
        assert_eq!(report.layers.len(), r.layer_shapes().len(), "every layer of two different UNets changed");
        assert!(report.unchanged.is_empty());
        let (mut err2, mut tot2) = (0.0, 0.0);
        for layer in &report.layers {
            let delta = matrix(&wa[&layer.path]) - matrix(&wr[&layer.path]);
            let mut s: Vec<f64> = delta.clone().svd(false, false).singular_values.iter().copied().collect();
            s.sort_by(|x, y| y.total_cmp(x));
            let tail = s.iter().skip(layer.rank).map(|x| x * x).sum::<f64>().sqrt();
            let bound = tail / delta.norm();
            assert!(
                (layer.relative_error - bound).abs() < 1e-9,
                "{} rank {rank}: reported {} vs Eckart–Young {bound}",
                layer.path,
                layer.relative_error
            );
            assert_eq!(layer.rank, rank.min(delta.nrows()).min(delta.ncols()));
            assert!((layer.delta_norm - delta.norm()).abs() < 1e-9 * delta.norm());
            // The adapter's own tensors give that error too.
            let l = &adapter.layers()[&layer.path];
            let product = matrix(&l.up) * matrix(&l.down);
            let direct = (&delta - product).norm() / delta.norm();
            assert!(
                (direct - layer.relative_error).abs() < 1e-5,
                "{}: {direct} vs {}",
                layer.path,
                layer.relative_error
            );
            err2 += (bound * delta.norm()).powi(2);
            tot2 += delta.norm().powi(2);
        }
        assert!((report.total_relative_error - (err2 / tot2).sqrt()).abs() < 1e-9);
        let params: usize = adapter.layers().values().map(|l| l.down.elem_count() + l.up.elem_count()).sum();
        assert_eq!(report.parameters, params);
        assert_eq!(report.bytes(DType::F16), 2 * params);
    }
}

/// A full-rank random change of every layer's weight (biases and norms untouched), of
/// relative size about `size`: an "aligned" UNet a LoRA can fully carry at full rank.
fn full_rank_change(r: &Unet, size: f64, seed: u64) -> LoraAdapter {
    let mut layers = BTreeMap::new();
    let mut noise = deradiff_core::SeededNoise::new(seed);
    let weights = r.layer_weights().unwrap();
    for (path, w) in r.layer_shapes() {
        let cols: usize = w[1..].iter().product();
        let rank = w[0].min(cols);
        let mut down_shape = vec![rank];
        down_shape.extend_from_slice(&w[1..]);
        let mut up_shape = vec![w[0], rank];
        up_shape.extend(std::iter::repeat_n(1, w.len() - 2));
        // Entries of up·down ~ N(0, s²) with s the layer's own weight scale times `size`.
        let scale = norm(&weights[path]) / ((w[0] * cols) as f64).sqrt() * size / (rank as f64).sqrt();
        let mut t = |shape: &[usize], s: f64| {
            let n = shape.iter().product();
            let v: Vec<f32> = noise.draw(n).into_iter().map(|x| (s * x) as f32).collect();
            Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
        };
        let (down, up) = (t(&down_shape, 1.0), t(&up_shape, scale));
        layers.insert(path.clone(), LoraLayer { down, up, alpha: None, origin: path.clone() });
    }
    LoraAdapter::from_layers(layers, LoraFormat::Diffusers, "full-rank-change")
}

#[test]
fn the_error_falls_with_the_rank_and_the_saved_lora_reproduces_the_aligned_output() {
    let r = reference_unet();
    let a = r.merged_with(&full_rank_change(&r, 0.3, 4), 1.0).unwrap();
    let (y_ref, y_al) = (output(&r), output(&a));
    let gap = norm(&(&y_al - &y_ref).unwrap());
    let dir = scratch("lora_extract");
    let mut previous = f64::INFINITY;
    let mut rows = Vec::new();
    // The widest smaller side of a layer (128: the time embedding's 128 × 128): that rank is exact.
    let full = r.layer_shapes().values().map(|w| w[0].min(w[1..].iter().product())).max().unwrap();
    assert_eq!(full, 128);
    for rank in [1, 2, 4, 8, 16, 32, 64, 128] {
        let (adapter, report) = extract_lora(&r, &a, &ExtractOptions { rank, ..Default::default() }).unwrap();
        assert!(report.not_representable.is_empty(), "only layer weights changed");
        assert!(report.total_relative_error < previous, "rank {rank}: the error did not fall");
        previous = report.total_relative_error;
        let file = dir.join(format!("rank{rank}.safetensors"));
        adapter.save(&file, DType::F32).unwrap();
        let loaded = LoraAdapter::load(&file, &r).unwrap();
        assert_eq!(loaded.format(), LoraFormat::Diffusers);
        assert_eq!(loaded.layers().len(), report.layers.len());
        let y = output(&r.merged_with(&loaded, 1.0).unwrap());
        // The part of the aligned model's move away from the reference that the output misses.
        let miss = norm(&(&y - &y_al).unwrap()) / gap;
        rows.push(format!("rank {rank}: weights {:.4}, output {miss:.4}", report.total_relative_error));
        if rank == full {
            assert!(report.total_relative_error < 1e-6, "full rank: {}", report.total_relative_error);
            assert!(max_abs_diff(&y, &y_al) < 1e-5, "full rank: output differs by {}", max_abs_diff(&y, &y_al));
        } else {
            // Within the error it reports: at most that fraction of the move is missed (the
            // change is small enough for the UNet to respond near-linearly), 1.25× of room.
            assert!(
                miss <= 1.25 * report.total_relative_error,
                "rank {rank}: output misses {miss:.4} of the move, weights {:.4}",
                report.total_relative_error
            );
        }
    }
    eprintln!("{}", rows.join("\n"));
}

#[test]
fn biases_and_norms_that_differ_are_reported_as_not_representable() {
    // Two independently initialised UNets differ in every parameter, not only the layers'.
    let (_, report) = extract_lora(&reference_unet(), &aligned_unet(), &ExtractOptions::default()).unwrap();
    for name in ["conv_in.bias", "conv_norm_out.weight", "down_blocks.0.resnets.0.norm1.bias"] {
        assert!(report.not_representable.iter().any(|n| n == name), "{name} in {:?}", report.not_representable);
    }
    assert!(report.not_representable.iter().all(|n| n.ends_with(".bias") || n.ends_with(".weight")));
}

#[test]
fn a_change_of_rank_r_is_recovered_exactly_and_unchanged_layers_are_left_out() {
    let r = reference_unet();
    // A rank-3 change on a few layers of each kind (linear, 1×1 projection, 3×3 LoCon, strided).
    let paths = [
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
        "down_blocks.0.attentions.0.proj_in",
        "mid_block.attentions.0.transformer_blocks.0.ff.net.2",
        "down_blocks.1.resnets.0.conv1",
        "down_blocks.0.downsamplers.0.conv",
        "time_embedding.linear_1",
    ];
    let shapes = r.layer_shapes();
    let mut layers = BTreeMap::new();
    let mut noise = deradiff_core::SeededNoise::new(9);
    for p in paths {
        let w = &shapes[p];
        let mut down_shape = vec![3];
        down_shape.extend_from_slice(&w[1..]);
        let mut up_shape = vec![w[0], 3];
        up_shape.extend(std::iter::repeat_n(1, w.len() - 2));
        let t = |shape: &[usize], noise: &mut deradiff_core::SeededNoise| {
            let n = shape.iter().product();
            let v: Vec<f32> = noise.draw(n).into_iter().map(|x| (0.2 * x) as f32).collect();
            Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
        };
        let (down, up) = (t(&down_shape, &mut noise), t(&up_shape, &mut noise));
        layers.insert(p.to_string(), LoraLayer { down, up, alpha: Some(6.0), origin: p.to_string() });
    }
    let truth = LoraAdapter::from_layers(layers, LoraFormat::Diffusers, "truth");
    let a = r.merged_with(&truth, 1.0).unwrap();
    for method in [SvdMethod::Exact, SvdMethod::Randomized { oversampling: 4, power_iterations: 1 }] {
        let (adapter, report) =
            extract_lora(&r, &a, &ExtractOptions { rank: 3, method, ..Default::default() }).unwrap();
        let got: Vec<&str> = report.layers.iter().map(|l| l.path.as_str()).collect();
        let mut want = paths.to_vec();
        want.sort();
        assert_eq!(got, want, "{method:?}");
        assert_eq!(report.unchanged.len(), shapes.len() - paths.len());
        for l in &report.layers {
            assert!(l.relative_error < 1e-5, "{method:?} {}: {}", l.path, l.relative_error);
        }
        let y = output(&r.merged_with(&adapter, 1.0).unwrap());
        assert!(max_abs_diff(&y, &output(&a)) < 1e-5, "{method:?}: {}", max_abs_diff(&y, &output(&a)));
    }
}

#[test]
fn bad_extractions_are_errors() {
    let r = reference_unet();
    let err = extract_lora(&r, &r, &ExtractOptions { rank: 0, ..Default::default() }).unwrap_err();
    assert!(err.to_string().contains("rank must be at least 1"), "{err}");
    let err =
        extract_lora(&r, &r, &ExtractOptions { min_relative_change: f64::NAN, ..Default::default() }).unwrap_err();
    assert!(err.to_string().contains("min_relative_change"), "{err}");
    // Another architecture (the SDXL fixture) cannot be the aligned model.
    let xl = unet(tiny_sdxl().join("unet"));
    assert!(extract_lora(&r, &xl, &ExtractOptions::default()).is_err());
    // Two equal UNets: nothing to extract, every layer left out, nothing unrepresentable.
    let (adapter, report) = extract_lora(&r, &r, &ExtractOptions::default()).unwrap();
    assert!(adapter.layers().is_empty() && report.layers.is_empty() && report.not_representable.is_empty());
    assert_eq!(report.unchanged.len(), r.layer_shapes().len());
    assert_eq!(report.total_relative_error, 0.0);
}
