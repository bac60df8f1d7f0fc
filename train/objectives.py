"""Training objectives: what a batch becomes, and the loss it gives.

One class per stage, chosen by :func:`objective_for_stage`; all are built the same way,
``Objective(cfg, models, encoders, null_text, device)``, once the data is set up, and answer
``conditioning(batch)`` (the batch on the device: latents and embeddings, or pixels) and
``loss(module, cond, g)``; their class-level members (``encodes_inputs``, ``frozen_modules``,
``network``) tell the loop, before the objective exists, what to freeze, cache and speed up.

* :class:`AutoencoderObjective` (stage 0) trains the VAE on pixels: MSE of the decoding of a
  posterior sample plus a small KL to N(0, I);
* :class:`DiffusionObjective` (stage 1) trains the InstructPix2Pix UNet: noise the edited
  image's latent, drop text and image conditioning at random, regress the noise (or v);
* :class:`RewardDiffusionObjective` (stage 2) adds the reward: scores and failure texts go to
  :class:`core.mrc_unet.MRCUNet`, with reward dropout and reward-text dropout.

Per micro-batch k of a stage 1 / 2 step (the loop averages A of them, ``A`` = gradient
accumulation)::

    cond   = cached tensors, or the frozen VAE / text encoder applied to the batch now
    g      = Generator(seed, process, k)             # all draws below, on the CPU, in this order
    z0     = (mean + std * randn(g)) * vae_scale     # VAE posterior sample of the edit
    n, t   = randn(g), randint(T, g)
    zt     = add_noise(z0, n, t)
    text   -> "" embedding  where p < 2q             # conditioning dropout, p ~ U(g),
    c_I    -> zeros         where q <= p < 3q        #   q = conditioning_dropout_prob
    reward -> learned null  where u < reward_dropout          # u ~ U(g), drawn in stage 1 too
    r_text -> empty texts   where v < reward_text_dropout     # stage 2: scores alone, v ~ U(g)
                                                              #   (per_perspective: v is (B, 3))
    pred   = UNet([zt, c_I], t, text[, reward])
    loss   = mse(pred, n or v(z0, n, t)) [x min-SNR weight]

The draws are on the CPU from the micro-batch's generator (:func:`train.data_order.step_generator`),
so a resumed run and a run on another process count draw the same numbers. Their order is part
of the checkpoint format: a run resumed with a changed order would follow another trajectory.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_snr

from core.mrc import join_reward_texts
from train.cache import FrozenEncoders
from train.config import TrainConfig
from train.models import Models, calibrate_scaling_factor
from train.validation import render_reconstructions, render_validation


class AutoencoderObjective:
    """Stage 0: the VAE is what is trained, so it sees pixels (never cached)."""

    encodes_inputs = False  # the batch stays pixels: no frozen-encoder outputs, no cache

    @staticmethod
    def frozen_modules(models: Models) -> list[torch.nn.Module]:
        return [models.text_encoder]

    @staticmethod
    def network(models: Models) -> torch.nn.Module:
        """The network whose speed settings (xformers, ...) apply."""
        return models.vae

    def __init__(
        self, cfg: TrainConfig, models: Models, encoders: FrozenEncoders, null_text, device
    ):
        self.cfg, self.models, self.device = cfg, models, device

    def conditioning(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Both images of every example: (2B, 3, H, W)."""
        pixels = torch.cat([batch["original_pixels"], batch["edited_pixels"]])
        return {"pixels": pixels.to(self.device)}

    def loss(self, module: Any, cond: dict[str, torch.Tensor], g: torch.Generator) -> torch.Tensor:
        """Pixel MSE of decode(sample of encode(x)) + ``vae_kl_weight`` x KL per latent element."""
        pixels = cond["pixels"]
        f = self.models.vae_scale_factor
        b, _, h, w = pixels.shape
        c = self.models.vae.config.latent_channels
        eps = torch.randn((b, c, h // f, w // f), generator=g).to(self.device)
        recon, mean, logvar = module(pixels, eps)  # train.models.AutoencoderStep
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)  # per latent element
        return F.mse_loss(recon.float(), pixels.float()) + self.cfg.vae_kl_weight * kl.mean()

    def validation_grid(self, module, examples, user_example, resolution):
        return render_reconstructions(self.models, examples, resolution)

    def before_export(self, dataset: Any) -> None:
        """SD's recipe: ``scaling_factor = 1 / std`` of (up to 256) training latents."""
        sample = [dataset[i]["edited_pixels"][0] for i in range(min(len(dataset), 256))]
        factor = calibrate_scaling_factor(self.models.vae, torch.stack(sample))
        print(f"VAE scaling_factor = {factor:.4f} (1 / std of training latents)")


class DiffusionObjective:
    """Stage 1: InstructPix2Pix's denoising loss with conditioning dropout."""

    encodes_inputs = True  # the batch becomes latents and embeddings (cached, or encoded now)

    @staticmethod
    def frozen_modules(models: Models) -> list[torch.nn.Module]:
        return [models.text_encoder, models.vae]

    @staticmethod
    def network(models: Models) -> torch.nn.Module:
        return models.unet

    def __init__(
        self,
        cfg: TrainConfig,
        models: Models,
        encoders: FrozenEncoders,
        null_text: torch.Tensor,
        device: Any,
    ):
        self.cfg, self.models, self.encoders, self.device = cfg, models, encoders, device
        self.null_text = null_text.float()  # (L, D): the empty prompt, for text dropout
        self.scaling = float(models.vae.config.scaling_factor)
        self.noise_scheduler = models.noise_scheduler

    def conditioning(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Cached batches are already tensors; pixel batches go through the frozen encoders."""
        cond = self.encode(batch) if "original_pixels" in batch else batch
        return {k: v.to(self.device, non_blocking=True) for k, v in cond.items()}

    def encode(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        enc = self.encoders
        original, _ = enc.images(batch["original_pixels"])
        mean, std = enc.images(batch["edited_pixels"])
        cond = {
            "original_latents": original,
            "edited_mean": mean,
            "edited_std": std,
            "text_embeds": enc.texts(batch["prompts"]),
        }
        if "reward_texts" in batch:
            cond["reward_text_embeds"] = enc.reward_texts(batch["reward_texts"])
            cond["scores"] = batch["scores"]
        if "reward_text_subsets" in batch:  # (B, 8, D) / (B, 8, L, D)
            rows = batch["reward_text_subsets"]
            flat = enc.reward_texts([t for row in rows for t in row])
            cond["reward_text_subsets"] = flat.view(len(rows), -1, *flat.shape[1:])
        return cond

    def loss(self, module: Any, cond: dict[str, torch.Tensor], g: torch.Generator) -> torch.Tensor:
        mean, std = cond["edited_mean"], cond["edited_std"]  # (B, C, h, w)
        b = mean.shape[0]
        # Every random draw of the step, in a fixed order, from the step's generator; u (reward
        # dropout) is drawn in stage 1 too, so that the order is one for both stages.
        eps = torch.randn(mean.shape, generator=g).to(self.device)
        noise = torch.randn(mean.shape, generator=g).to(self.device)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (b,), generator=g)
        t = t.to(self.device)
        p = torch.rand(b, generator=g).to(self.device)
        u = torch.rand(b, generator=g).to(self.device)

        latents = (mean + std * eps) * self.scaling  # z0 ~ q(z | edited), scaled as SD
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        text, original = self.drop_conditioning(cond, p)
        model_input = torch.cat([noisy, original], dim=1)  # (B, 2C, h, w)
        pred = self.predict(module, model_input, t, text, cond, u, g)
        region = self.edit_region(mean, cond["original_latents"])  # both unscaled, as IP2P
        return self.weighted_mse(pred, latents, noise, t, region)

    def drop_conditioning(
        self, cond: dict[str, torch.Tensor], p: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """InstructPix2Pix's dropout, q = conditioning_dropout_prob: the instruction becomes the
        empty prompt where p < 2q, the image latent zeros where q <= p < 3q."""
        q = self.cfg.conditioning_dropout_prob
        text = torch.where((p < 2 * q)[:, None, None], self.null_text, cond["text_embeds"])
        keep_image = ~((p >= q) & (p < 3 * q))
        latents = cond["original_latents"]
        original = latents * keep_image[:, None, None, None].to(cond["edited_mean"].dtype)
        return text, original

    def predict(self, module, model_input, t, text, cond, u, g) -> torch.Tensor:
        return module(model_input, t, text).sample

    def edit_region(self, edited: torch.Tensor, original: torch.Tensor) -> torch.Tensor | None:
        """(B, 1, h, w) per-position loss weights, 1 + edit_region_weight where the edit changed
        the latent; None when the weight is 0 (plain MSE)."""
        if self.cfg.edit_region_weight <= 0:
            return None
        change = (edited.float() - original.float()).abs().mean(dim=1, keepdim=True)
        changed = (change > self.cfg.edit_region_threshold).float()
        return 1.0 + self.cfg.edit_region_weight * changed

    def weighted_mse(self, pred, latents, noise, t, region=None) -> torch.Tensor:
        """MSE to the noise (epsilon) or to v, per sample, with the edit-region weights and the
        Min-SNR weight if set."""
        prediction_type = self.noise_scheduler.config.prediction_type
        if prediction_type == "epsilon":
            target = noise
        else:
            target = self.noise_scheduler.get_velocity(latents, noise, t)
        squared = F.mse_loss(pred.float(), target.float(), reduction="none")
        if region is not None:
            squared = squared * region
        per_sample = squared.mean(dim=(1, 2, 3))
        if self.cfg.snr_gamma > 0:
            snr = compute_snr(self.noise_scheduler, t)
            clipped = torch.clamp(snr, max=self.cfg.snr_gamma)
            weight = clipped / snr if prediction_type == "epsilon" else clipped / (snr + 1)
            per_sample = per_sample * weight
        return per_sample.mean()

    def validation_grid(self, module, examples, user_example, resolution):
        """Edits of the validation examples; stage 2 passes its own MRCUNet wrapper."""
        mrc_unet = module if self.models.reward_module is not None else None
        return render_validation(
            self.models, examples, resolution, self.cfg, mrc_unet, user_example
        )

    def before_export(self, dataset: Any) -> None:
        """Nothing to calibrate: the VAE was frozen."""


class RewardDiffusionObjective(DiffusionObjective):
    """Stage 2: the denoising loss of MRC, with reward dropout and reward-text dropout."""

    def __init__(
        self,
        cfg: TrainConfig,
        models: Models,
        encoders: FrozenEncoders,
        null_text: torch.Tensor,
        device: Any,
    ):
        super().__init__(cfg, models, encoders, null_text, device)
        # What a request with scores and no failure texts sends: (D) or (L, D).
        joined = join_reward_texts(("", "", ""), encoders.empty_text)
        self.empty_reward_text = encoders.reward_texts([joined])[0].to(device)

    def predict(self, module, model_input, t, text, cond, u, g) -> torch.Tensor:
        """The rewards replaced by the learned null where u < reward_dropout_prob."""
        return module(
            model_input,
            t,
            text,
            scores=cond["scores"],
            reward_text_embeds=self.drop_reward_texts(cond, g),
            drop_mask=u < self.cfg.reward_dropout_prob,
        ).sample

    def drop_reward_texts(self, cond: dict[str, torch.Tensor], g: torch.Generator) -> torch.Tensor:
        """Failure texts -> empty texts with probability reward_text_dropout_prob (scores kept),
        so that the scores must carry the reward; drawn after every other draw of the step.
        ``all``: the three texts together, one draw per sample. ``per_perspective``: one draw
        per perspective; the embedding of the join with exactly the dropped texts emptied."""
        embeds = cond["reward_text_embeds"]
        b, p = embeds.shape[0], self.cfg.reward_text_dropout_prob
        if self.cfg.reward_text_dropout_mode == "per_perspective":
            keep = torch.rand((b, 3), generator=g).to(self.device) >= p  # (B, 3)
            combination = (keep.long() * torch.tensor([1, 2, 4], device=self.device)).sum(1)
            return cond["reward_text_subsets"][torch.arange(b, device=self.device), combination]
        v = torch.rand(b, generator=g).to(self.device)
        drop = (v < p).view(-1, *([1] * (embeds.dim() - 1)))
        return torch.where(drop, self.empty_reward_text.to(embeds.dtype), embeds)


Objective = AutoencoderObjective | DiffusionObjective

OBJECTIVES: dict[int, type[Objective]] = {
    0: AutoencoderObjective,
    1: DiffusionObjective,
    2: RewardDiffusionObjective,
}


def objective_for_stage(stage: int) -> type[Objective]:
    """The objective class of a training stage (0 VAE, 1 InstructPix2Pix, 2 MRC)."""
    return OBJECTIVES[stage]
