//! Text encoding: the prompts of a request (and its negative prompt, with guidance) through the
//! text encoder(s), each distinct text once; for SDXL both encoders' penultimate hidden states,
//! the pooled embedding and the micro-conditioning `time_ids`.

use candle_core::Tensor;

use super::request::{EncodedRequest, Encoding, Micro, Request};
use super::StableDiffusion;
use crate::conditioning::AddedConditioning;
use crate::error::{Error, Result};
use crate::guidance::{GuidanceScale, PromptEmbeddings};

impl StableDiffusion {
    /// Encodes `prompts` once (and, with guidance on, the negative prompt — the empty prompt
    /// when `None`), each distinct text in a single text-encoder pass, for every UNet to share:
    /// the low-level form of [`Self::encode`], one sample per prompt, not tied to a request.
    /// For SDXL the embeddings are the penultimate hidden states of both encoders concatenated,
    /// with encoder 2's projected pooled output and the default micro-conditioning (the default
    /// image size, crop (0, 0)); with [`Self::force_zeros_for_empty_prompt`] and no negative
    /// prompt the negative embeddings are zeros, as in diffusers.
    pub fn encode_prompts<S: AsRef<str>>(
        &self,
        prompts: &[S],
        negative_prompt: Option<&str>,
        guidance_scale: f64,
    ) -> Result<PromptEmbeddings> {
        if prompts.is_empty() {
            return Err(Error::InvalidArgument(
                "StableDiffusion::encode_prompts: `prompts` is empty; give at least one prompt".into(),
            ));
        }
        let guided = GuidanceScale::new(guidance_scale)?.is_active();
        let zero_negative = self.is_sdxl() && negative_prompt.is_none() && self.force_zeros_for_empty_prompt;
        let time_ids = self.time_ids(&Request::default())?;
        let prompts: Vec<&str> = prompts.iter().map(AsRef::as_ref).collect();
        self.encode_texts(&prompts, negative_prompt, guided, zero_negative, time_ids)
    }

    /// SDXL's six `time_ids` of a request: original size `(h, w)`, crop `(top, left)`, target
    /// size `(h, w)`, defaulting as diffusers (original = target = the image size). An
    /// [`Error::InvalidRequest`] for SD 1.x / 2.x when the request sets micro-conditioning
    /// (`None` otherwise).
    pub fn time_ids(&self, request: &Request) -> Result<Option<[f64; 6]>> {
        if !self.is_sdxl() {
            let set = [
                ("original_size", request.original_size.is_some()),
                ("crop_top_left", request.crop_top_left != (0, 0)),
                ("target_size", request.target_size.is_some()),
            ];
            if let Some((field, _)) = set.into_iter().find(|(_, set)| *set) {
                return Err(Error::request(
                    field,
                    "is SDXL micro-conditioning and this checkpoint is SD 1.x / 2.x: leave it at its default",
                ));
            }
            return Ok(None);
        }
        let (dh, dw) = self.default_size();
        let size = (request.height.unwrap_or(dh), request.width.unwrap_or(dw));
        let (oh, ow) = request.original_size.unwrap_or(size);
        let (ct, cl) = request.crop_top_left;
        let (th, tw) = request.target_size.unwrap_or(size);
        Ok(Some([oh, ow, ct, cl, th, tw].map(|v| v as f64)))
    }

    /// Whether `request`'s negative embeddings are zeros (SDXL, no negative prompt,
    /// `force_zeros_for_empty_prompt` of the request or else of the checkpoint).
    fn zero_negative(&self, request: &Request) -> Result<bool> {
        match (self.is_sdxl(), request.force_zeros_for_empty_prompt) {
            (true, own) => Ok(request.negative_prompt.is_none() && own.unwrap_or(self.force_zeros_for_empty_prompt)),
            (false, Some(true)) => Err(Error::request(
                "force_zeros_for_empty_prompt",
                "is SDXL's option and this checkpoint is SD 1.x / 2.x, whose negative embeddings are the empty \
                 prompt's: leave it None (or false)",
            )),
            (false, _) => Ok(false),
        }
    }

    /// What the text encoding of `request` depends on, checked.
    pub(super) fn encoding(&self, request: &Request) -> Result<Encoding> {
        if request.prompts.is_empty() {
            return Err(Error::request("prompts", "is empty: give at least one prompt"));
        }
        if request.images_per_prompt == 0 {
            return Err(Error::request("images_per_prompt", "is 0: it must be at least 1"));
        }
        let max = Self::MAX_BATCH;
        if request.prompts.len() > max {
            return Err(Error::request(
                "prompts",
                format!(
                    "has {} prompts, more than the {max} samples one request may have (StableDiffusion::MAX_BATCH); \
                     split them into several requests",
                    request.prompts.len()
                ),
            ));
        }
        if request.prompts.len().checked_mul(request.images_per_prompt).is_none_or(|n| n > max) {
            return Err(Error::request(
                "images_per_prompt",
                format!(
                    "is {}: {} prompts × {} images are more than the {max} samples one request may have \
                     (StableDiffusion::MAX_BATCH); ask for at most {} images per prompt",
                    request.images_per_prompt,
                    request.prompts.len(),
                    request.images_per_prompt,
                    max / request.prompts.len()
                ),
            ));
        }
        let guidance_scale = self.guidance_scale(request)?;
        Ok(Encoding {
            sdxl: self.is_sdxl(),
            prompts: request.prompts.clone(),
            negative_prompt: request.negative_prompt.clone(),
            images_per_prompt: request.images_per_prompt,
            guidance_scale,
            zero_negative: self.zero_negative(request)?,
            time_ids: self.time_ids(request)?,
            micro: Micro::of(request),
        })
    }

    /// The embeddings of `prompts` (one row each), each distinct text encoded once.
    fn encode_texts(
        &self,
        prompts: &[&str],
        negative_prompt: Option<&str>,
        guided: bool,
        zero_negative: bool,
        time_ids: Option<[f64; 6]>,
    ) -> Result<PromptEmbeddings> {
        fn index_of<'s>(s: &'s str, distinct: &mut Vec<&'s str>) -> u32 {
            match distinct.iter().position(|d| *d == s) {
                Some(i) => i as u32,
                None => {
                    distinct.push(s);
                    (distinct.len() - 1) as u32
                }
            }
        }
        let mut distinct: Vec<&str> = Vec::new();
        let mut rows = Vec::new();
        for p in prompts {
            rows.push(index_of(p, &mut distinct));
        }
        let uncond_row = (guided && !zero_negative).then(|| index_of(negative_prompt.unwrap_or(""), &mut distinct));
        let (hidden, pooled) = match &self.text_encoder_2 {
            None => (self.text_encoder.encode(&distinct)?, None),
            Some(te2) => {
                let one = self.text_encoder.encode_all(&distinct)?;
                let two = te2.encode_all(&distinct)?;
                let pooled = two.text_embeds.ok_or_else(|| {
                    Error::ModelMismatch("text_encoder_2 has no text_projection (SDXL needs it)".into())
                })?;
                (Tensor::cat(&[&one.penultimate, &two.penultimate], 2)?, Some(pooled.to_dtype(self.dtype)?))
            }
        };
        let hidden = hidden.to_dtype(self.dtype)?;
        let pick = |t: &Tensor, idx: &[u32]| -> Result<Tensor> {
            let idx = Tensor::new(idx, t.device())?;
            Ok(t.index_select(&idx, 0)?)
        };
        let cond = pick(&hidden, &rows)?;
        let n = prompts.len();
        let uncond = match uncond_row {
            Some(r) => Some(pick(&hidden, &vec![r; n])?),
            None if guided => Some(cond.zeros_like()?),
            None => None,
        };
        let embeddings = PromptEmbeddings::new(cond, uncond)?;
        let Some(pooled) = pooled else {
            return Ok(embeddings);
        };
        let ids = time_ids.ok_or(Error::Internal("an SDXL pipeline computed no time_ids"))?;
        let ids = Tensor::new(&ids, &self.device)?.to_dtype(self.dtype)?.unsqueeze(0)?.repeat((n, 1))?;
        let pooled_cond = pick(&pooled, &rows)?;
        let added = AddedConditioning::new(pooled_cond.clone(), ids.clone())?;
        let added_uncond = match uncond_row {
            Some(r) => Some(AddedConditioning::new(pick(&pooled, &vec![r; n])?, ids)?),
            None if guided => Some(AddedConditioning::new(pooled_cond.zeros_like()?, ids)?),
            None => None,
        };
        embeddings.with_added(added, added_uncond)
    }

    /// The text embeddings of a request (prompts × images per prompt), for
    /// [`Self::sample`]: negative-prompt embeddings when its guidance (or the checkpoint's default
    /// guidance) is on, zeros for them under SDXL's `force_zeros_for_empty_prompt` (the
    /// request's, else the checkpoint's); for SDXL the request's micro-conditioning
    /// ([`Self::time_ids`]). The result remembers what it was encoded from, so that
    /// [`Self::sample`] refuses it for another request.
    pub fn encode(&self, request: &Request) -> Result<EncodedRequest> {
        let encoding = self.encoding(request)?;
        let prompts: Vec<&str> = request.prompts.iter().map(String::as_str).collect();
        let embeddings = self
            .encode_texts(
                &prompts,
                request.negative_prompt.as_deref(),
                encoding.guided(),
                encoding.zero_negative,
                encoding.time_ids,
            )?
            .repeat_each(request.images_per_prompt)?;
        Ok(EncodedRequest { embeddings, encoding })
    }
}
