//! The SDXL pipeline against diffusers' `StableDiffusionXLPipeline` pieces on the tiny SDXL
//! fixtures (`scripts/gen_sdxl_fixtures.py`): prompt and pooled embeddings (negative prompt,
//! zeros for no negative prompt, `force_zeros_for_empty_prompt` off) within 1e-4; two-model
//! realigned Euler-ancestral runs (λ = 0.5, CFG, 4 steps, injected noise; default and explicit
//! micro-conditioning) within 1e-3; and the SD 1.5 pipeline's error behaviour.

mod common;

use std::sync::OnceLock;

use candle_core::Tensor;
use common::*;
use deradiff_core::{Flow, InjectedNoise, NoObserver, Realigner, SchedulerKind, StepEvent};
use deradiff_sd::{Error, LoadOptions, Request, StableDiffusion};

fn xl() -> &'static StableDiffusion {
    static XL: OnceLock<StableDiffusion> = OnceLock::new();
    XL.get_or_init(|| StableDiffusion::load(tiny_sdxl(), &[tiny_sdxl_aligned()], &LoadOptions::default()).unwrap())
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect()
}

fn pair(v: &serde_json::Value) -> Option<(usize, usize)> {
    v.as_array().map(|a| (a[0].as_u64().unwrap() as usize, a[1].as_u64().unwrap() as usize))
}

#[test]
fn sdxl_is_detected_with_its_defaults() {
    let sd = xl();
    assert!(sd.is_sdxl());
    assert!(sd.force_zeros_for_empty_prompt());
    assert_eq!(sd.num_models(), 2);
    assert_eq!(sd.default_size(), (16, 16));
    assert_eq!(sd.vae().scaling_factor(), 0.13025);
    assert_eq!(sd.scheduler_config().timestep_spacing.as_deref(), Some("leading"));
    assert_eq!(sd.scheduler_config().steps_offset, Some(1));
    // An aligned SDXL UNet as one safetensors file takes the reference's config.
    let file = tiny_sdxl_aligned().join("diffusion_pytorch_model.safetensors");
    let two = StableDiffusion::load(tiny_sdxl(), &[&file], &LoadOptions::default()).unwrap();
    assert!(two.unets()[1].text_time().is_some());
    // Without a scheduler config SDXL's own is used.
    let dir = scratch("sdxl-no-scheduler");
    copy_dir(&tiny_sdxl(), &dir);
    std::fs::remove_dir_all(dir.join("scheduler")).unwrap();
    let sd = StableDiffusion::load(&dir, &[] as &[&std::path::Path], &LoadOptions::default()).unwrap();
    assert_eq!(sd.scheduler_config(), &deradiff_core::SchedulerConfig::stable_diffusion_xl());
}

#[test]
fn prompt_and_pooled_embeddings_match_diffusers() {
    let sd = xl();
    let prompts = strings(&xl_meta()["text_prompts"]);
    let negative = xl_meta()["text_negative_prompt"].as_str().unwrap();
    let check = |ours: &Tensor, name: &str| {
        let err = max_abs_diff(ours, &xl_reference(name));
        println!("{name}: max abs error {err:.3e} vs diffusers' encode_prompt");
        assert!(err <= 1e-4, "{name}: {err}");
    };
    // No negative prompt, force_zeros_for_empty_prompt: zeros.
    let emb = sd.encode_prompts(&prompts, None, 5.0).unwrap();
    check(emb.cond(), "text.embeds");
    check(emb.added().unwrap().text_embeds(), "text.pooled");
    assert_eq!(max_abs(emb.uncond().unwrap()), 0.0);
    assert_eq!(max_abs(emb.added_uncond().unwrap().text_embeds()), 0.0);
    // A negative prompt.
    let emb = sd.encode_prompts(&prompts, Some(negative), 5.0).unwrap();
    check(emb.uncond().unwrap(), "text.neg_embeds");
    check(emb.added_uncond().unwrap().text_embeds(), "text.neg_pooled");
    // force_zeros_for_empty_prompt off: the empty prompt's encoding.
    let mut own = StableDiffusion::load(tiny_sdxl(), &[] as &[&std::path::Path], &LoadOptions::default()).unwrap();
    own.set_force_zeros_for_empty_prompt(false);
    let emb = own.encode_prompts(&prompts, None, 5.0).unwrap();
    check(&emb.uncond().unwrap().narrow(0, 0, 1).unwrap(), "text.empty_embeds");
    check(&emb.added_uncond().unwrap().text_embeds().narrow(0, 0, 1).unwrap(), "text.empty_pooled");
    // Without guidance, no negative embeddings at all.
    assert!(sd.encode_prompts(&prompts, None, 1.0).unwrap().uncond().is_none());
}

fn request(name: &str) -> Request {
    let run = &xl_meta()["runs"][name];
    Request {
        prompts: strings(&run["prompts"]),
        negative_prompt: run["negative"].as_str().map(str::to_string),
        scheduler: SchedulerKind::EulerAncestral,
        steps: run["steps"].as_u64().unwrap() as usize,
        guidance_scale: run["guidance_scale"].as_f64(),
        height: Some(run["height"].as_u64().unwrap() as usize),
        width: Some(run["width"].as_u64().unwrap() as usize),
        original_size: pair(&run["original_size"]),
        crop_top_left: pair(&run["crop"]).unwrap(),
        target_size: pair(&run["target_size"]),
        ..Default::default()
    }
}

fn check_run(name: &str) {
    let sd = xl();
    let run = &xl_meta()["runs"][name];
    let req = request(name);
    let encoded = sd.encode(&req).unwrap();
    let emb = encoded.embeddings();
    let both = Tensor::cat(&[emb.uncond().unwrap(), emb.cond()], 0).unwrap();
    let (a, au) = (emb.added().unwrap(), emb.added_uncond().unwrap());
    let pooled = Tensor::cat(&[au.text_embeds(), a.text_embeds()], 0).unwrap();
    let ids = Tensor::cat(&[au.time_ids(), a.time_ids()], 0).unwrap();
    assert!(max_abs_diff(&both, &xl_reference(&format!("run.{name}.embeds"))) <= 1e-4);
    assert!(max_abs_diff(&pooled, &xl_reference(&format!("run.{name}.pooled"))) <= 1e-4);
    assert_eq!(max_abs_diff(&ids, &xl_reference(&format!("run.{name}.time_ids"))), 0.0);

    let noise = xl_reference(&format!("run.{name}.noise"));
    let mut injected = InjectedNoise::new((0..noise.dim(0).unwrap()).map(|i| noise.get(i).unwrap()));
    let mut timesteps = Vec::new();
    let mut observer = |e: &StepEvent<'_>| {
        timesteps.push(e.timestep);
        Flow::Continue
    };
    let lambda = run["lambda"].as_f64().unwrap();
    let out = sd.sample(&req, &encoded, &Realigner::two_model(lambda).unwrap(), &mut injected, &mut observer).unwrap();
    let want_t: Vec<f64> = run["timesteps"].as_array().unwrap().iter().map(|t| t.as_f64().unwrap()).collect();
    for (a, b) in timesteps.iter().zip(&want_t) {
        assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{timesteps:?} vs {want_t:?}");
    }
    let exact = xl_reference(&format!("run.{name}.final"));
    let err = max_abs_diff(&out.latent, &exact);
    let err_tanh = max_abs_diff(&out.latent, &xl_reference(&format!("run.{name}.final_tanh")));
    let scale = max_abs(&exact);
    println!(
        "SDXL {name}: final latents max abs error {err:.3e} vs diffusers (latents max {scale:.1}); {err_tanh:.3e} vs \
         diffusers with candle's tanh-GELU"
    );
    assert!(err <= 1e-3, "{name}: {err}");
    // With exact-GELU transformer blocks what remains is f32 rounding (relative to the latents'
    // size; Euler's x̂₀ multiplies ε errors by σ_max ≈ 14.6), far below the tanh-GELU gap.
    assert!(err <= 5e-6 * scale && err < err_tanh, "{name}: {err} (tanh {err_tanh})");
}

#[test]
fn realigned_sdxl_default_micro_conditioning_matches_diffusers() {
    check_run("default");
}

#[test]
fn realigned_sdxl_explicit_micro_conditioning_matches_diffusers() {
    check_run("micro");
}

#[test]
fn micro_conditioning_batches_guidance_off_and_f16() {
    let sd = xl();
    let base = Request { prompts: vec!["a cat".into()], steps: 1, seed: 4, ..Default::default() };
    let half = Realigner::two_model(0.5).unwrap();
    let a = sd.generate(&base, &half, &mut NoObserver).unwrap();
    let b = sd.generate(&Request { original_size: Some((64, 64)), ..base.clone() }, &half, &mut NoObserver).unwrap();
    assert!(max_abs_diff(&a.latents, &b.latents) > 1e-4);
    let c = sd.generate(
        &Request { guidance_scale: Some(1.0), images_per_prompt: 2, ..base.clone() },
        &half,
        &mut NoObserver,
    );
    assert_eq!(c.unwrap().images.len(), 2);
    // Guided, two prompts, two images each: the pooled embeddings and time_ids follow each row.
    let req = Request { prompts: vec!["a cat".into(), "a dog".into()], images_per_prompt: 2, ..base.clone() };
    let encoded = sd.encode(&req).unwrap();
    assert_eq!(encoded.batch(), 4);
    let emb = encoded.embeddings();
    let pooled = emb.added().unwrap().text_embeds();
    assert_eq!(max_abs_diff(&pooled.get(0).unwrap(), &pooled.get(1).unwrap()), 0.0);
    assert!(max_abs_diff(&pooled.get(1).unwrap(), &pooled.get(2).unwrap()) > 1e-3);
    assert_eq!(emb.added_uncond().unwrap().time_ids().dims(), &[4, 6]);
    let out = sd.generate(&req, &half, &mut NoObserver).unwrap();
    assert_eq!(out.latents.dims(), &[4, 4, 8, 8]);
    // f16 weights (the VAE upcast by force_upcast) run and stay close to f32.
    let options = LoadOptions { dtype: candle_core::DType::F16, ..Default::default() };
    let sd16 = StableDiffusion::load(tiny_sdxl(), &[tiny_sdxl_aligned()], &options).unwrap();
    let a32 = sd.generate(&base, &half, &mut NoObserver).unwrap();
    let a16 = sd16.generate(&base, &half, &mut NoObserver).unwrap();
    let rel = max_abs_diff(&a16.latents, &a32.latents) / max_abs(&a32.latents);
    println!("SDXL f16 vs f32 final latents, relative max error: {rel:.2e}");
    assert!(rel < 0.05, "{rel}");
}

#[test]
fn sdxl_errors_as_the_sd_pipeline() {
    let half = Realigner::two_model(0.5).unwrap();
    // A size the VAE cannot produce (its scale factor is 2 here; 8 for the real VAE).
    let req = Request { prompts: vec!["a cat".into()], steps: 1, height: Some(15), ..Default::default() };
    assert!(matches!(xl().generate(&req, &half, &mut NoObserver), Err(Error::InvalidRequest { field: "height", .. })));
    // Missing text_encoder_2 / tokenizer_2.
    for missing in ["text_encoder_2", "tokenizer_2"] {
        let dir = scratch(&format!("sdxl-no-{missing}"));
        copy_dir(&tiny_sdxl(), &dir);
        std::fs::remove_dir_all(dir.join(missing)).unwrap();
        let err = StableDiffusion::load(&dir, &[] as &[&std::path::Path], &LoadOptions::default()).unwrap_err();
        println!("{err}");
        assert!(matches!(err, Error::NotFound { ref path, .. } if path.ends_with(missing)), "{err:?}");
    }
    // An SD 1.5 UNet beside an SDXL reference, and the other way round.
    let err = StableDiffusion::load(tiny_sdxl(), &[tiny_aligned()], &LoadOptions::default()).unwrap_err();
    println!("{err}");
    assert!(matches!(err, Error::ModelMismatch(_)), "{err:?}");
    let err = StableDiffusion::load(tiny_sd(), &[tiny_sdxl_aligned()], &LoadOptions::default()).unwrap_err();
    assert!(matches!(err, Error::ModelMismatch(_)), "{err:?}");
    // A bare SDXL weight file against an SD 1.5 reference's config: a tensor error naming the file.
    let file = tiny_sdxl_aligned().join("diffusion_pytorch_model.safetensors");
    let err = StableDiffusion::load(tiny_sd(), &[&file], &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(err, Error::TensorShape { .. } | Error::MissingTensor { .. } | Error::ModelMismatch(_)),
        "{err:?}"
    );
    // Micro-conditioning on an SD 1.5 checkpoint is an error, not silently ignored.
    let sd15 = StableDiffusion::load(tiny_sd(), &[] as &[&std::path::Path], &LoadOptions::default()).unwrap();
    let req = Request { prompts: vec!["a cat".into()], steps: 1, crop_top_left: (8, 0), ..Default::default() };
    assert!(matches!(sd15.encode(&req), Err(Error::InvalidRequest { field: "crop_top_left", .. })));
    // SD 1.5 embeddings into the SDXL pipeline.
    let emb = sd15.encode(&Request { prompts: vec!["a cat".into()], ..Default::default() }).unwrap();
    let req = Request { prompts: vec!["a cat".into()], steps: 1, ..Default::default() };
    let err = xl().sample(&req, &emb, &half, &mut deradiff_core::SeededNoise::new(0), &mut NoObserver).unwrap_err();
    assert!(matches!(err, Error::ModelMismatch(ref m) if m.contains("SD 1.x / 2.x pipeline")), "{err:?}");
}

#[test]
fn sdxl_guidance_defaults_to_five() {
    let sd = xl();
    // diffusers' StableDiffusionXLPipeline default.
    assert_eq!(sd.default_guidance_scale(), 5.0);
    let req = Request { prompts: vec!["a cat".into()], steps: 1, seed: 2, ..Default::default() };
    assert_eq!(req.guidance_scale, None);
    assert_eq!(sd.guidance_scale(&req).unwrap(), 5.0);
    let half = Realigner::two_model(0.5).unwrap();
    let default = sd.generate(&req, &half, &mut NoObserver).unwrap();
    let five = sd.generate(&Request { guidance_scale: Some(5.0), ..req.clone() }, &half, &mut NoObserver).unwrap();
    let sd15_default =
        sd.generate(&Request { guidance_scale: Some(7.5), ..req.clone() }, &half, &mut NoObserver).unwrap();
    assert_eq!(max_abs_diff(&default.latents, &five.latents), 0.0);
    assert!(max_abs_diff(&default.latents, &sd15_default.latents) > 1e-4);
}

#[test]
fn force_zeros_for_empty_prompt_per_request() {
    let sd = xl();
    assert!(sd.force_zeros_for_empty_prompt());
    let prompts = strings(&xl_meta()["text_prompts"]);
    let check = |ours: &Tensor, name: &str| {
        let err = max_abs_diff(ours, &xl_reference(name));
        assert!(err <= 1e-4, "{name}: {err}");
    };
    let base = Request { prompts, steps: 1, guidance_scale: Some(5.0), ..Default::default() };
    // None: the checkpoint's setting (zeros).
    let zeros = sd.encode(&base).unwrap();
    assert_eq!(max_abs(zeros.embeddings().uncond().unwrap()), 0.0);
    assert_eq!(max_abs(zeros.embeddings().added_uncond().unwrap().text_embeds()), 0.0);
    // Some(false): the empty prompt's encoding, as diffusers with force_zeros_for_empty_prompt=False.
    let off = Request { force_zeros_for_empty_prompt: Some(false), ..base.clone() };
    let empty = sd.encode(&off).unwrap();
    let e = empty.embeddings();
    check(&e.uncond().unwrap().narrow(0, 0, 1).unwrap(), "text.empty_embeds");
    check(&e.added_uncond().unwrap().text_embeds().narrow(0, 0, 1).unwrap(), "text.empty_pooled");
    // The conditional embeddings do not change.
    assert_eq!(max_abs_diff(e.cond(), zeros.embeddings().cond()), 0.0);
    // With a negative prompt the option does not apply.
    let negative = Request { negative_prompt: Some("blurry".into()), ..base.clone() };
    let a = sd.encode(&Request { force_zeros_for_empty_prompt: Some(true), ..negative.clone() }).unwrap();
    let b = sd.encode(&Request { force_zeros_for_empty_prompt: Some(false), ..negative.clone() }).unwrap();
    assert_eq!(max_abs_diff(a.embeddings().uncond().unwrap(), b.embeddings().uncond().unwrap()), 0.0);
    assert!(max_abs(a.embeddings().uncond().unwrap()) > 0.0);
    // A zeros encoding is not the encoding of a request without them, and the other way round.
    let half = Realigner::two_model(0.5).unwrap();
    let mut noise = deradiff_core::SeededNoise::new(0);
    for (req, encoded) in [(&off, &zeros), (&base, &empty)] {
        let err = sd.sample(req, encoded, &half, &mut noise, &mut NoObserver).unwrap_err();
        assert!(matches!(err, Error::EncodedRequestMismatch { field: "force_zeros_for_empty_prompt", .. }), "{err:?}");
    }
    // Some(true) on a pipeline whose own setting is off.
    let mut own = StableDiffusion::load(tiny_sdxl(), &[tiny_sdxl_aligned()], &LoadOptions::default()).unwrap();
    own.set_force_zeros_for_empty_prompt(false);
    let own_default = own.encode(&base).unwrap();
    check(&own_default.embeddings().uncond().unwrap().narrow(0, 0, 1).unwrap(), "text.empty_embeds");
    let own_zeros = own.encode(&Request { force_zeros_for_empty_prompt: Some(true), ..base.clone() }).unwrap();
    assert_eq!(max_abs(own_zeros.embeddings().uncond().unwrap()), 0.0);
    // Per request, end to end: the same latents as the pipeline-wide switch.
    let per_request = sd.generate(&off, &half, &mut NoObserver).unwrap();
    let switched = own.generate(&base, &half, &mut NoObserver).unwrap();
    assert_eq!(max_abs_diff(&per_request.latents, &switched.latents), 0.0);
}

#[test]
fn sdxl_encoding_carries_its_micro_conditioning() {
    let sd = xl();
    let half = Realigner::two_model(0.5).unwrap();
    let req = Request { prompts: vec!["a cat".into()], steps: 1, original_size: Some((64, 64)), ..Default::default() };
    let encoded = sd.encode(&req).unwrap();
    let mut noise = deradiff_core::SeededNoise::new(0);
    sd.sample(&req, &encoded, &half, &mut noise, &mut NoObserver).unwrap();
    for (other, field) in [
        (Request { original_size: None, ..req.clone() }, "original_size"),
        (Request { crop_top_left: (2, 0), ..req.clone() }, "crop_top_left"),
        (Request { target_size: Some((8, 8)), ..req.clone() }, "target_size"),
        // The image size is the default target size.
        (Request { height: Some(8), ..req.clone() }, "height"),
    ] {
        let err = sd.sample(&other, &encoded, &half, &mut noise, &mut NoObserver).unwrap_err();
        assert!(matches!(err, Error::EncodedRequestMismatch { field: f, .. } if f == field), "{field}: {err:?}");
    }
}
