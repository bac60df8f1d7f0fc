"""``MRCInstructPix2PixPipeline``: instruction-based editing conditioned on multi-perspective rewards.

Components: ``vae``, ``text_encoder``, ``tokenizer``, ``unet`` (a stock diffusers
``UNet2DConditionModel``), ``reward_module`` (:class:`~core.mrc.MultiRewardCondition`, its own
folder and config) and ``scheduler``. The UNet is conditioned through :class:`~core.mrc_unet.MRCUNet`
hooks, so its weights and keys stay stock.

Guidance. With the reward ``r`` requested by the user, InstructPix2Pix's three branches

    e_T = eps(z, c_T, c_I, r)   e_I = eps(z, ø, c_I, r)   e_U = eps(z, ø, ø, r)
    e   = e_U + s_T (e_T - e_I) + s_I (e_I - e_U)

all see the *same* ``r``: exactly the authors' inference (``reward_guidance_scale = 1``). With
``reward_guidance_scale = s_R != 1`` a fourth branch with the learned null reward is added and

    e  += (s_R - 1) (e_T - eps(z, c_T, c_I, ø_R))

extrapolates away from "no reward information" towards the requested reward. It needs a module
trained with reward dropout (``drop_mask``); a fresh or authors'-import module has an untrained null.

The reward reaches the UNet raw (scores and failure-text embeddings, like its other conditions);
the UNet's reward module turns it into tokens and a time term inside each call.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import StableDiffusionMixin
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from core.instructions import warn_truncated
from core.mrc import MultiRewardCondition
from core.mrc_unet import MRCUNet, check_compatible
from core.pipeline_inputs import (
    OUTPUT_TYPES,
    check_positive_int,
    check_scale,
    normalize_images,
    normalize_prompts,
    normalize_rewards,
)
from core.rewards import Rewards
from core.sampling import DEFAULT_GUIDANCE, guidance_config, make_scheduler
from core.text_encoding import encode_reward_text, encode_text, join_reward_texts


class MRCInstructPix2PixPipeline(DiffusionPipeline, StableDiffusionMixin):
    """Reward-conditioned InstructPix2Pix (Gu et al., ICLR 2025) on stock diffusers components."""

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["reward_module"]
    # Small and used inside the UNet's forward (hooks): keep it on the execution device.
    _exclude_from_cpu_offload = ["reward_module"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "image_latents"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: Any,
        tokenizer: Any,
        unet: UNet2DConditionModel,
        scheduler: Any,
        reward_module: MultiRewardCondition | None = None,
        default_guidance_scale: float = DEFAULT_GUIDANCE[0],
        default_image_guidance_scale: float = DEFAULT_GUIDANCE[1],
    ):
        super().__init__()
        if reward_module is None:  # e.g. a stock InstructPix2Pix folder: identity MRC module
            reward_module = MultiRewardCondition.from_unet_config(
                unet.config, text_encoder.config.hidden_size
            )
            # nn.Module.to: diffusers' ModelMixin.to warns on every dtype cast.
            torch.nn.Module.to(reward_module, device=unet.device, dtype=unet.dtype).eval()
        check_compatible(unet, reward_module)
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            reward_module=reward_module,
        )
        # The guidance a call uses when it names none, saved in model_index.json: InstructPix2Pix's
        # 7.5 / 1.5 unless the folder records values measured for this model.
        self.set_default_guidance(default_guidance_scale, default_image_guidance_scale)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self._mrc_unet: MRCUNet | None = None
        self._interrupt = False

    # -- loading ---------------------------------------------------------------------------------
    @property
    def mrc_unet(self) -> MRCUNet:
        """The reward-conditioned UNet (rebuilt if ``unet`` or ``reward_module`` was replaced)."""
        m = self._mrc_unet
        stale = m is None or m.unet is not self.unet or m.reward_module is not self.reward_module
        if stale or not m.is_attached:
            if m is not None:
                m.detach_hooks()
            self._mrc_unet = MRCUNet(self.unet, self.reward_module)
        return self._mrc_unet

    def use_mrc_unet(self, mrc_unet: MRCUNet) -> None:
        """Reuse an existing reward wrapper around this pipeline's ``unet`` and ``reward_module``
        (a trainer's, during validation) instead of building a second one: the newest wrapper
        around a UNet owns its reward hooks, so a second one would silently take them over."""
        if mrc_unet.unet is not self.unet or mrc_unet.reward_module is not self.reward_module:
            raise ValueError(
                "use_mrc_unet() needs a wrapper around this pipeline's own unet and reward_module."
            )
        self._mrc_unet = mrc_unet

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    def set_default_guidance(self, guidance_scale: float, image_guidance_scale: float) -> None:
        """Record the text / image guidance that calls naming none use (saved by
        ``save_pretrained`` in ``model_index.json``): e.g. values measured for a small model, for
        which InstructPix2Pix's 7.5 over-saturates."""
        self.register_to_config(**guidance_config(guidance_scale, image_guidance_scale))

    def set_scheduler(self, name: str) -> None:
        """Swap the sampler, keeping the training schedule (``euler``, ``dpm``, ...)."""
        self.scheduler = make_scheduler(name, self.scheduler.config)

    # -- encoders --------------------------------------------------------------------------------
    def encode_reward_text(self, texts: Sequence[Any]) -> torch.Tensor:
        """Failure-text triples (or Rewards) -> (B, D) / (B, L, D); each distinct text once."""
        cfg = self.reward_module.config
        unique = list(dict.fromkeys(tuple(t) if not isinstance(t, str) else t for t in texts))
        emb = encode_reward_text(
            unique, self.tokenizer, self.text_encoder, cfg.text_mode, cfg.empty_text
        )
        index = {t: i for i, t in enumerate(unique)}
        key = [tuple(t) if not isinstance(t, str) else t for t in texts]
        return emb[torch.tensor([index[k] for k in key], device=emb.device)]

    def reward_inputs(
        self,
        requests: Sequence[Rewards],
        device: torch.device,
        text_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The UNet's reward inputs for one request each: scores (B, 3) float32 and the
        reward-text embeddings (``text_embeds`` when already computed)."""
        scores = torch.tensor([r.scores for r in requests], dtype=torch.float32, device=device)
        if text_embeds is None:
            text_embeds = self.encode_reward_text([r.texts for r in requests])
        return scores, text_embeds.to(device)

    def encode_all_text(
        self,
        prompts: list[str],
        negatives: list[str] | None,
        requests: Sequence[Rewards],
        device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Instructions, negative instructions and joined reward texts in ONE text-encoder pass
        (each distinct string once): (B, L, D), (B, L, D) or None, (B, D) or (B, L, D)."""
        cfg = self.reward_module.config
        joined = [join_reward_texts(r.texts, cfg.empty_text) for r in requests]
        strings = list(dict.fromkeys([*prompts, *(negatives or []), *joined]))
        row = {s: i for i, s in enumerate(strings)}
        out = encode_text(strings, self.tokenizer, self.text_encoder, device)
        hidden = out.last_hidden_state  # (S, L, D)
        reward_src = out.pooler_output if cfg.text_mode == "pooled" else hidden

        def pick(source: torch.Tensor, texts: list[str]) -> torch.Tensor:
            return source[torch.tensor([row[t] for t in texts], device=source.device)]

        neg = pick(hidden, negatives) if negatives is not None else None
        return pick(hidden, prompts), neg, pick(reward_src, joined)

    # -- latents ---------------------------------------------------------------------------------
    def prepare_image_latents(self, images: list[Any], dtype: torch.dtype, device: torch.device):
        pixels = self.image_processor.preprocess(images).to(device=device, dtype=dtype)
        return self.vae.encode(pixels).latent_dist.mode()  # (n, C, h, w); unscaled, as IP2P

    def prepare_latents(self, shape, dtype, device, generator, latents=None) -> torch.Tensor:
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        else:
            latents = latents.to(device=device, dtype=dtype)
        return latents * self.scheduler.init_noise_sigma

    def prepare_extra_step_kwargs(self, generator, eta: float) -> dict[str, Any]:
        params = set(inspect.signature(self.scheduler.step).parameters)
        kw: dict[str, Any] = {}
        if "eta" in params:
            kw["eta"] = eta
        if "generator" in params:
            kw["generator"] = generator
        return kw

    # -- call ------------------------------------------------------------------------------------
    def check_inputs(
        self,
        prompt,
        image,
        rewards,
        reward_text,
        num_inference_steps,
        guidance_scale,
        image_guidance_scale,
        reward_guidance_scale,
        negative_prompt,
        num_images_per_prompt,
        output_type,
        callback_on_step_end_tensor_inputs,
        generator=None,
        latents=None,
    ) -> tuple[list[str], list[str], list[Any], list[Rewards]]:
        """Validate everything before any model runs; returns the normalised inputs."""
        prompts, negatives = normalize_prompts(prompt, negative_prompt)
        warn_truncated(self.tokenizer, prompts)
        requests = normalize_rewards(rewards, reward_text, len(prompts))
        images, (height, width) = normalize_images(image, len(prompts), self.vae_scale_factor)
        check_positive_int(num_inference_steps, "num_inference_steps")
        n = len(prompts) * check_positive_int(num_images_per_prompt, "num_images_per_prompt")
        if isinstance(generator, list) and len(generator) != n:
            raise ValueError(
                f"Got {len(generator)} generators for {n} images; pass one generator or exactly "
                "one per generated image (prompts x num_images_per_prompt)."
            )
        f = self.vae_scale_factor
        shape = (n, self.vae.config.latent_channels, height // f, width // f)
        if latents is not None and tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}.")
        g = check_scale(guidance_scale, "guidance_scale")
        gi = check_scale(image_guidance_scale, "image_guidance_scale")
        check_scale(reward_guidance_scale, "reward_guidance_scale", minimum=0.0)
        if g > 1.0 and gi < 1.0:
            raise ValueError(
                f"image_guidance_scale={gi} is below 1 while text guidance is on; InstructPix2Pix "
                "guidance needs image_guidance_scale >= 1 (1.5 is the usual value)."
            )
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        bad = [
            k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs
        ]
        if bad:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs {bad} are not available; choose from "
                f"{self._callback_tensor_inputs}."
            )
        return prompts, negatives, images, requests

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: Any = None,
        rewards: Any = (5, 5, 5),
        reward_text: Any = None,
        num_inference_steps: int = 100,
        guidance_scale: float | None = None,
        image_guidance_scale: float | None = None,
        reward_guidance_scale: float = 1.0,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        cross_attention_kwargs: dict[str, Any] | None = None,
    ):
        """Edit ``image`` following ``prompt``, asking for ``rewards``.

        Args:
            prompt: the instruction, or a list (one per image or for one shared image).
            image: PIL image(s) of any mode and size (converted to RGB; sizes rounded down to a
                multiple of the VAE factor), (H, W, 3) numpy in [0, 1] or (3, H, W) tensors in [-1, 1].
            rewards: (following, preserving, quality) scores in [0, 5], a ``Rewards``, or one per
                prompt. (5, 5, 5) asks for the best edit.
            reward_text: three failure texts ("" for none), or one triple per prompt.
            guidance_scale / image_guidance_scale: InstructPix2Pix's text and image guidance;
                None: the folder's recorded defaults (``config.default_guidance_scale``,
                ``config.default_image_guidance_scale``; 7.5 and 1.5 unless measured otherwise).
            reward_guidance_scale: 1 reproduces the paper; > 1 pushes away from the null reward.
            The rest are as in diffusers' ``StableDiffusionInstructPix2PixPipeline``.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        if guidance_scale is None:
            guidance_scale = self.config.default_guidance_scale
        if image_guidance_scale is None:
            image_guidance_scale = self.config.default_image_guidance_scale
        # 0. Validate all inputs before any model runs.
        prompts, negatives, images, requests = self.check_inputs(
            prompt, image, rewards, reward_text, num_inference_steps, guidance_scale,
            image_guidance_scale, reward_guidance_scale, negative_prompt, num_images_per_prompt,
            output_type, callback_on_step_end_tensor_inputs, generator, latents,
        )  # fmt: skip
        self._interrupt = False
        device = self._execution_device
        batch, n = len(prompts), num_images_per_prompt
        do_cfg = guidance_scale > 1.0 and image_guidance_scale >= 1.0
        do_reward_cfg = reward_guidance_scale != 1.0

        # 1. Instruction and reward-text embeddings, one encoder pass: (B*n, L, D) each.
        text, neg, reward_text_embeds = self.encode_all_text(
            prompts, negatives if do_cfg else None, requests, device
        )
        dtype = self.text_encoder.dtype
        text = text.to(dtype).repeat_interleave(n, dim=0)
        if do_cfg:
            neg = neg.to(dtype).repeat_interleave(n, dim=0)

        # 2. The requested rewards as the UNet takes them: scores (B*n, 3), texts (B*n, ...).
        scores, reward_text_embeds = self.reward_inputs(requests, device, reward_text_embeds)
        scores = scores.repeat_interleave(n, dim=0)
        reward_text_embeds = reward_text_embeds.repeat_interleave(n, dim=0)

        # 3. Image latents of the pictures to edit, (B*n, C, h, w).
        image_latents = self.prepare_image_latents(images, dtype, device)
        if image_latents.shape[0] == 1:
            image_latents = image_latents.expand(batch, -1, -1, -1)
        image_latents = image_latents.repeat_interleave(n, dim=0)

        # 4. Guidance branches: (prompt, image, null reward?) per branch, concatenated on the
        # batch; every branch asks for the same reward, the last one's replaced by the null.
        branches = [(text, image_latents, False)]
        if do_cfg:
            zeros = torch.zeros_like(image_latents)
            branches += [(neg, image_latents, False), (neg, zeros, False)]
        if do_reward_cfg:
            branches.append((text, image_latents, True))
        k = len(branches)
        prompt_embeds = torch.cat([b[0] for b in branches])
        image_latents = torch.cat([b[1] for b in branches])
        scores, reward_text_embeds = scores.repeat(k, 1), torch.cat([reward_text_embeds] * k)
        drop_mask = None
        if do_reward_cfg:
            drop_mask = torch.tensor([b[2] for b in branches], device=device)
            drop_mask = drop_mask.repeat_interleave(batch * n)

        # 5. Timesteps and initial noise.
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        c_lat = self.vae.config.latent_channels
        if c_lat + image_latents.shape[1] != self.unet.config.in_channels:
            raise ValueError(
                f"The UNet expects {self.unet.config.in_channels} input channels but latent + image "
                f"latent give {c_lat + image_latents.shape[1]}; use an InstructPix2Pix UNet."
            )
        h, w = image_latents.shape[-2:]
        latents = self.prepare_latents((batch * n, c_lat, h, w), dtype, device, generator, latents)
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)

        # 6. Denoising loop.
        unet = self.mrc_unet
        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                model_input = torch.cat([latents] * k) if k > 1 else latents
                model_input = self.scheduler.scale_model_input(model_input, t)
                model_input = torch.cat([model_input, image_latents], dim=1)
                eps = unet(
                    model_input,
                    t,
                    encoder_hidden_states=prompt_embeds,
                    scores=scores,
                    reward_text_embeds=reward_text_embeds,
                    drop_mask=drop_mask,
                    cross_attention_kwargs=cross_attention_kwargs,
                    return_dict=False,
                )[0]
                parts = eps.chunk(k)
                if do_cfg:
                    e_text, e_image, e_uncond = parts[:3]
                    noise_pred = (
                        e_uncond
                        + guidance_scale * (e_text - e_image)
                        + image_guidance_scale * (e_image - e_uncond)
                    )
                else:
                    noise_pred = parts[0]
                if do_reward_cfg:
                    noise_pred = noise_pred + (reward_guidance_scale - 1.0) * (parts[0] - parts[-1])
                latents = self.scheduler.step(
                    noise_pred, t, latents, **extra_step_kwargs, return_dict=False
                )[0]

                if callback_on_step_end is not None:
                    local = {"latents": latents, "prompt_embeds": prompt_embeds}
                    local["image_latents"] = image_latents
                    kwargs = {name: local[name] for name in callback_on_step_end_tensor_inputs}
                    out = callback_on_step_end(self, i, t, kwargs) or {}
                    latents = out.pop("latents", latents)
                    prompt_embeds = out.pop("prompt_embeds", prompt_embeds)
                    image_latents = out.pop("image_latents", image_latents)
                progress_bar.update()

        # 7. Decode.
        if output_type == "latent":
            images_out: Any = latents
        else:
            decoded = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[
                0
            ]
            images_out = self.image_processor.postprocess(
                decoded, output_type=output_type, do_denormalize=[True] * decoded.shape[0]
            )
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images_out, None)
        return StableDiffusionPipelineOutput(images=images_out, nsfw_content_detected=None)


def image_grid(images: Sequence[Any], cols: int) -> Any:
    """Paste equally sized PIL images into a grid (rows of ``cols``)."""
    import PIL.Image

    if not images:
        raise ValueError("image_grid needs at least one image.")
    w, h = images[0].size
    rows = (len(images) + cols - 1) // cols
    grid = PIL.Image.new("RGB", (cols * w, rows * h), "white")
    for i, im in enumerate(images):
        grid.paste(im, ((i % cols) * w, (i // cols) * h))
    return grid


__all__ = ["MRCInstructPix2PixPipeline", "image_grid"]
