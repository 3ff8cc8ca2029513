//! The pipeline's contracts: one text encoding shared by every UNet, one UNet pass per model
//! per step, models with weight 0 not run, seeds reproducible, all input layouts of an aligned
//! model, f16, atomic PNG output.

mod common;

use candle_core::{DType, Device};
use common::*;
use deradiff_core::{Flow, NoObserver, Realigner, SchedulerKind, SeededNoise, StepEvent};
use deradiff_sd::{Error, Generation, LoadOptions, Request, StableDiffusion};

fn load(aligned: &[&std::path::Path]) -> StableDiffusion {
    StableDiffusion::load(tiny_sd(), aligned, &LoadOptions::default()).unwrap()
}

fn request() -> Request {
    Request {
        prompts: vec!["a red cube".into(), "a blue sphere".into()],
        negative_prompt: Some("blurry".into()),
        scheduler: SchedulerKind::Ddim { eta: 0.0 },
        steps: 1,
        guidance_scale: Some(4.0),
        seed: 3,
        ..Default::default()
    }
}

#[test]
fn text_encoder_runs_once_per_prompt_whatever_the_number_of_unets() {
    let aligned = tiny_aligned();
    let mut counts = Vec::new();
    for (n_aligned, realigner) in
        [(1, Realigner::two_model(0.5).unwrap()), (3, Realigner::multi_reward(&[0.2, 0.2, 0.2]).unwrap())]
    {
        let paths = vec![aligned.as_path(); n_aligned];
        let sd = load(&paths);
        assert_eq!(sd.num_models(), n_aligned + 1);
        let req = request();
        let out = sd.generate(&req, &realigner, &mut NoObserver).unwrap();
        assert_eq!(out.images.len(), 2);
        let te = sd.text_encoder();
        // Two prompts and one negative prompt, in one forward pass, however many UNets.
        counts.push((te.forward_calls(), te.prompts_encoded()));
        // Each UNet ran once per step (cond and uncond batched together).
        for u in sd.unets() {
            assert_eq!(u.forward_calls(), req.steps);
        }
    }
    assert_eq!(counts, vec![(1, 3); 2]);
}

#[test]
fn models_with_zero_weight_are_not_run_and_lambda_zero_is_the_reference() {
    let sd = load(&[&tiny_aligned()]);
    let req = request();
    let zero = sd.generate(&req, &Realigner::two_model(0.0).unwrap(), &mut NoObserver).unwrap();
    assert_eq!(sd.unets()[0].forward_calls(), req.steps);
    assert_eq!(sd.unets()[1].forward_calls(), 0);
    // Reference alone (a one-model pipeline) gives the same images.
    let alone = load(&[]);
    let single = alone.generate(&req, &Realigner::new(vec![1.0]).unwrap(), &mut NoObserver).unwrap();
    assert_eq!(zero.images, single.images);
    assert_eq!(max_abs_diff(&zero.latents, &single.latents), 0.0);
    // λ = 1 runs only the aligned model.
    sd.generate(&req, &Realigner::two_model(1.0).unwrap(), &mut NoObserver).unwrap();
    assert_eq!(sd.unets()[1].forward_calls(), req.steps);
}

#[test]
fn same_seed_same_images_and_other_seed_other_images() {
    let sd = load(&[&tiny_aligned()]);
    let realigner = Realigner::two_model(0.5).unwrap();
    let req =
        Request { scheduler: SchedulerKind::EulerAncestral, steps: 1, prompts: vec!["a cat".into()], ..request() };
    let run =
        |seed| -> Generation { sd.generate(&Request { seed, ..req.clone() }, &realigner, &mut NoObserver).unwrap() };
    let (a, b, c) = (run(11), run(11), run(12));
    assert_eq!(a.images, b.images);
    assert_eq!(max_abs_diff(&a.latents, &b.latents), 0.0);
    assert!(max_abs_diff(&a.latents, &c.latents) > 1e-3);
}

#[test]
fn aligned_model_as_pipeline_dir_unet_dir_or_single_file() {
    let req = Request { prompts: vec!["a cat".into()], ..request() };
    let realigner = Realigner::two_model(0.7).unwrap();
    // A bare unet/ directory (the fixture).
    let from_dir = load(&[&tiny_aligned()]).generate(&req, &realigner, &mut NoObserver).unwrap();
    // A pipeline directory holding unet/.
    let pipeline_dir = scratch("aligned-pipeline");
    copy_dir(&tiny_aligned(), &pipeline_dir.join("unet"));
    let from_pipeline = load(&[&pipeline_dir]).generate(&req, &realigner, &mut NoObserver).unwrap();
    // One safetensors file, no config (the reference's is used).
    let file_dir = scratch("aligned-file");
    let file = file_dir.join("dpo-unet.safetensors");
    std::fs::copy(tiny_aligned().join("diffusion_pytorch_model.safetensors"), &file).unwrap();
    let from_file = load(&[&file]).generate(&req, &realigner, &mut NoObserver).unwrap();
    assert_eq!(from_dir.images, from_pipeline.images);
    assert_eq!(from_dir.images, from_file.images);
}

#[test]
fn observer_sees_every_step_and_can_stop() {
    let sd = load(&[&tiny_aligned()]);
    let req = Request { steps: 3, prompts: vec!["a cat".into()], ..request() };
    let emb = sd.encode(&req).unwrap();
    let mut seen = Vec::new();
    let mut observer = |e: &StepEvent<'_>| {
        seen.push((e.step, e.num_steps, e.posteriors.len()));
        if e.step == 1 {
            Flow::Stop
        } else {
            Flow::Continue
        }
    };
    let out = sd
        .sample(&req, &emb, &Realigner::two_model(0.5).unwrap(), &mut deradiff_core::SeededNoise::new(0), &mut observer)
        .unwrap();
    assert_eq!(seen, vec![(0, 3, 2), (1, 3, 2)]);
    assert!(out.stopped_early);
    assert_eq!(out.steps_taken, 2);
}

#[test]
fn images_per_prompt_size_and_png_output() {
    let sd = load(&[&tiny_aligned()]);
    assert_eq!(sd.default_size(), (16, 16));
    let req =
        Request { prompts: vec!["a cat".into()], images_per_prompt: 2, height: Some(12), width: Some(20), ..request() };
    let out = sd.generate(&req, &Realigner::two_model(0.5).unwrap(), &mut NoObserver).unwrap();
    assert_eq!(out.images.len(), 2);
    assert_eq!(out.latents.dims(), &[2, 4, 6, 10]);
    assert_eq!((out.images[0].width(), out.images[0].height()), (20, 12));
    // Two images of one prompt with different starting noise differ.
    assert_ne!(out.images[0], out.images[1]);

    let dir = scratch("png");
    let path = dir.join("nested").join("cat.png");
    out.images[0].save_png(&path).unwrap();
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height, info.color_type), (20, 12, png::ColorType::Rgb));
    assert_eq!(&buf[..info.buffer_size()], out.images[0].data());
    // Only the PNG is left (the temporary file was renamed).
    let names: Vec<_> = std::fs::read_dir(dir.join("nested")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("cat.png")]);

    let grid = deradiff_sd::RgbImage::grid(&out.images, 2, 1, [255, 255, 255]).unwrap();
    assert_eq!((grid.width(), grid.height()), (41, 12));
    assert_eq!(grid.pixel(20, 0), Some([255, 255, 255]));
    assert_eq!(grid.pixel(21, 3), out.images[1].pixel(0, 3));
}

#[test]
fn float16_runs_and_stays_close_to_float32() {
    let req = Request { prompts: vec!["a cat".into()], guidance_scale: Some(1.0), ..request() };
    let realigner = Realigner::two_model(0.5).unwrap();
    let f32_out = load(&[&tiny_aligned()]).generate(&req, &realigner, &mut NoObserver).unwrap();
    let options = LoadOptions { dtype: DType::F16, device: Device::Cpu, ..Default::default() };
    let sd16 = StableDiffusion::load(tiny_sd(), &[tiny_aligned()], &options).unwrap();
    assert_eq!(sd16.dtype(), DType::F16);
    // force_upcast: the VAE decodes in f32.
    assert_eq!(sd16.vae().dtype(), DType::F32);
    let f16_out = sd16.generate(&req, &realigner, &mut NoObserver).unwrap();
    assert_eq!(f16_out.latents.dtype(), DType::F16);
    let err = max_abs_diff(&f16_out.latents, &f32_out.latents) / max_abs(&f32_out.latents);
    println!("f16 vs f32 final latents, relative max error: {err:.2e}");
    assert!(err < 0.05, "{err}");
}

#[test]
fn guidance_defaults_to_the_checkpoints() {
    let sd = load(&[&tiny_aligned()]);
    // diffusers' StableDiffusionPipeline default.
    assert_eq!(sd.default_guidance_scale(), 7.5);
    let req = Request { prompts: vec!["a cat".into()], guidance_scale: None, ..request() };
    assert_eq!(sd.guidance_scale(&req).unwrap(), 7.5);
    assert_eq!(sd.guidance_scale(&Request { guidance_scale: Some(2.0), ..req.clone() }).unwrap(), 2.0);
    assert_eq!(sd.encode(&req).unwrap().guidance_scale(), 7.5);
    let half = Realigner::two_model(0.5).unwrap();
    let default = sd.generate(&req, &half, &mut NoObserver).unwrap();
    let explicit = sd.generate(&Request { guidance_scale: Some(7.5), ..req.clone() }, &half, &mut NoObserver).unwrap();
    let other = sd.generate(&Request { guidance_scale: Some(3.0), ..req.clone() }, &half, &mut NoObserver).unwrap();
    assert_eq!(max_abs_diff(&default.latents, &explicit.latents), 0.0);
    assert!(max_abs_diff(&default.latents, &other.latents) > 1e-4);
}

#[test]
fn an_encoding_belongs_to_its_request() {
    let sd = load(&[&tiny_aligned()]);
    let half = Realigner::two_model(0.5).unwrap();
    let req = Request { prompts: vec!["a cat".into()], ..request() };
    let encoded = sd.encode(&req).unwrap();
    assert_eq!(encoded.batch(), 1);
    let sample = |r: &Request| sd.sample(r, &encoded, &half, &mut SeededNoise::new(r.seed), &mut NoObserver);
    // The same request: the same latents as generate.
    let sampled = sample(&req).unwrap();
    let generated = sd.generate(&req, &half, &mut NoObserver).unwrap();
    assert_eq!(max_abs_diff(&sampled.latent, &generated.latents), 0.0);
    // Steps, scheduler, seed, image size and a guidance scale on the same side of 1 may differ.
    let other_run = Request {
        steps: 2,
        seed: 9,
        scheduler: SchedulerKind::EulerAncestral,
        guidance_scale: Some(6.0),
        height: Some(12),
        ..req.clone()
    };
    sample(&other_run).unwrap();
    // What the embeddings depend on may not.
    let field_of = |r: Request| match sample(&r) {
        Err(Error::EncodedRequestMismatch { field, detail }) => {
            println!("{field}: {detail}");
            field
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(field_of(Request { prompts: vec!["a dog".into()], ..req.clone() }), "prompts");
    assert_eq!(field_of(Request { prompts: vec!["a cat".into(), "a cat".into()], ..req.clone() }), "prompts");
    assert_eq!(field_of(Request { negative_prompt: None, ..req.clone() }), "negative_prompt");
    assert_eq!(field_of(Request { images_per_prompt: 2, ..req.clone() }), "images_per_prompt");
    assert_eq!(field_of(Request { guidance_scale: Some(1.0), ..req.clone() }), "guidance_scale");
    let err = sample(&Request { prompts: vec!["a dog".into()], ..req.clone() }).unwrap_err();
    assert!(err.to_string().contains("Request::prompts") && err.to_string().contains("\"a dog\""), "{err}");
}
