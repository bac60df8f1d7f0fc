"""The run configuration: one frozen dataclass, from a YAML file and/or command-line flags.

Every knob of a training run is a field of :class:`TrainConfig`, with its default and a help
line in the field's metadata. The command line is generated from the fields, so ``python -m
train --help`` documents every flag with its default, booleans are real switches
(``--use_ema`` / ``--no-use_ema``) and nothing can drift between the dataclass and the parser.

Precedence: dataclass defaults < ``--config FILE.yaml`` < flags given on the command line. The
resolved config is validated once (:meth:`TrainConfig.validate`, full-sentence errors), frozen,
and written as ``config.yaml`` beside every checkpoint and into the exported pipeline, so a run
can always be reproduced from what it left behind.

On ``--resume_from_checkpoint`` the saved config is compared with the new one: fields that
define the trajectory (data, model, batch size, seed, ...) must match for the continuation to be
exact; the :data:`RESUMABLE_CHANGES` (step budget, logging cadence, paths) may change.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DATA_SOURCES = ("shapes", "hf", "rewardedit", "store")
PREDICTION_TYPES = ("", "epsilon", "v_prediction")
TRAINABLE = ("all", "reward")
BAD_DATA_POLICIES = ("skip", "stop")
MIXED_PRECISION = ("no", "fp16", "bf16")
REPORT_TO = ("tensorboard", "wandb", "all", "none")
CACHE_DTYPES = ("float32", "float16")
REWARD_TEXT_MODES = ("pooled", "sequence")
REWARD_TEXT_DROPOUT_MODES = ("all", "per_perspective")
LR_SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
)
BETA_SCHEDULES = ("", "linear", "scaled_linear", "squaredcos_cap_v2")


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with its help text (mutable defaults via default_factory)."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run. Groups: model, data, optimisation, speed, outputs."""

    # -- model ----------------------------------------------------------------------------------
    stage: int = _f(
        1,
        "1: plain InstructPix2Pix (text + image); 2: MRC (text + image + rewards); 0: train the "
        "VAE alone as an autoencoder (for models built from scratch, e.g. the Shapes demo).",
    )
    model: str = _f(
        "tiny",
        "Where the weights start: a pipeline folder (InstructPix2Pix or MRC layout) or hub id; "
        "'tiny' builds fresh tiny SD-shaped components (core.tiny) from tiny_config.",
    )
    tiny_config: dict = _f(
        {}, "core.tiny.TinyConfig overrides for model='tiny' (YAML mapping, or JSON on the CLI)."
    )
    text_encoder: str = _f(
        "",
        "model='tiny' only: a CLIP folder (from 'python -m train.clip', e.g. "
        "docs/demo_models/shapes_clip) whose pretrained text tower and tokenizer replace the "
        "randomly initialised ones, frozen, as SD's CLIP is.",
    )
    pixel_space: bool = _f(
        False,
        "model='tiny' only: use an AutoencoderKL set to the identity (latents = RGB pixels), "
        "i.e. pixel-space diffusion through the stock pipeline; see docs/training.md.",
    )
    revision: str = _f(
        "", "model from the hub: the revision (branch, tag or commit) to load ('' = main)."
    )
    variant: str = _f(
        "",
        "Load the weight files of this variant, e.g. 'fp16' for diffusion_pytorch_model.fp16."
        "safetensors ('' = the plain files), as diffusers' from_pretrained(variant=...).",
    )
    model_seed: int = _f(0, "Seed of freshly built weights (tiny components, a new reward module).")
    trainable: str = _f(
        "all", "Stage 2 only: 'all' trains UNet + reward module; 'reward' trains the reward module."
    )
    prediction_type: str = _f(
        "",
        "What the UNet predicts: 'epsilon' (noise) or 'v_prediction' (velocity); '' keeps the "
        "loaded pipeline's scheduler setting (model='tiny': epsilon). Changing a loaded model's "
        "setting is allowed but warned about: it retrains the model's output meaning.",
    )
    beta_schedule: str = _f(
        "", "Override the noise schedule (linear, scaled_linear, squaredcos_cap_v2); '' keeps it."
    )
    beta_start: float = _f(0.0, "Override the first beta of the noise schedule (0 keeps it).")
    beta_end: float = _f(0.0, "Override the last beta of the noise schedule (0 keeps it).")
    reward_text_mode: str = _f(
        "pooled", "New reward modules: reward text as CLIP's pooled vector or its full sequence."
    )

    # -- data -----------------------------------------------------------------------------------
    data: str = _f("shapes", "Data source: shapes | hf | rewardedit | store.")
    data_dir: str = _f(
        "",
        "shapes: folder from 'python -m data synth'; hf: dataset folder or hub id; "
        "rewardedit: image folder; store: the studio store's folder.",
    )
    split: str = _f("train", "Split to train on (shapes, hf and store sources).")
    dataset_config_name: str = _f(
        "", "hf: the dataset's configuration name, passed to datasets.load_dataset(name=...)."
    )
    original_image_column: str = _f("input_image", "hf: column holding the original image.")
    edit_prompt_column: str = _f("edit_prompt", "hf: column holding the edit instruction.")
    edited_image_column: str = _f("edited_image", "hf: column holding the edited image.")
    id_column: str = _f(
        "", "hf: column holding a triplet id (to join rewards_json); '' uses the row number."
    )
    rewards_json: str = _f(
        "", "RewardEdit-20K JSON of reward labels: required for rewardedit, joined by id for hf."
    )
    original_pattern: str = _f(
        "{id}_0.jpg", "rewardedit: original image path under data_dir ({id} = triplet id)."
    )
    edited_pattern: str = _f(
        "{id}_1.jpg", "rewardedit: edited image path under data_dir ({id} = triplet id)."
    )
    prompt_pattern: str = _f(
        "{dir}/prompt.json",
        "rewardedit: JSON file with the instruction under key 'edit' ({dir} = folder of the id).",
    )
    max_train_samples: int = _f(0, "Use only the first N examples of the source (0: all).")
    relabel_with: str = _f(
        "",
        "A reward model folder (python -m train.reward_model): replace every example's reward "
        "labels by its predicted scores, with empty failure texts, before training (MRC with no "
        "oracle or paid judge). Recorded in relabel.jsonl and the run's data report.",
    )
    data_filter: str = _f(
        "",
        "Keep only the top data_filter_keep of the examples, ranked by a reward model folder's "
        "predicted scores (EditReward's use) or by 'labels', the source's own reward labels (on "
        "Shapes the oracle's: the ceiling of filtering). '' keeps all. Recorded in "
        "reward_filter.jsonl / .json and the run's data report.",
    )
    data_filter_keep: float = _f(1 / 3, "data_filter: fraction of the examples kept, in (0, 1].")
    data_filter_by: str = _f(
        "mean",
        "data_filter: rank by the mean of the three scores, their 'min', or one perspective "
        "(following, preserving, quality).",
    )
    resolution: int = _f(0, "Training image size in pixels (0: the model's native size).")
    random_flip: bool = _f(
        False,
        "Flip both images of an example horizontally with probability 0.5, drawn per (seed, "
        "epoch, example). Cached runs cache both views (twice the build time and latent storage, "
        "the same step speed). Instructions are not changed: avoid it when they say left/right.",
    )
    on_bad_data: str = _f(
        "stop",
        "A missing image, corrupt file or out-of-range label: 'stop' the run with its id and "
        "reason, or 'skip' it (reported in bad_data.jsonl and counted).",
    )

    # -- optimisation ---------------------------------------------------------------------------
    seed: int = _f(0, "Seed of data order, noise, timesteps and dropout masks.")
    train_batch_size: int = _f(16, "Examples per device per micro-step.")
    gradient_accumulation_steps: int = _f(1, "Micro-steps accumulated per optimizer step.")
    max_train_steps: int = _f(1000, "Optimizer steps to train for (total, across resumes).")
    num_train_epochs: int = _f(
        0,
        "Train for this many passes over the data instead (> 0 replaces max_train_steps by "
        "ceil(epochs x batches per epoch / gradient_accumulation_steps)).",
    )
    learning_rate: float = _f(1e-4, "Peak learning rate (the paper used 5e-5 on SD 1.5).")
    scale_lr: bool = _f(False, "Multiply the learning rate by the total batch size.")
    lr_scheduler: str = _f("constant", f"Learning-rate schedule: {', '.join(LR_SCHEDULERS)}.")
    lr_warmup_steps: int = _f(0, "Linear warm-up steps of the learning rate.")
    adam_beta1: float = _f(0.9, "AdamW beta1.")
    adam_beta2: float = _f(0.999, "AdamW beta2.")
    adam_weight_decay: float = _f(1e-2, "AdamW weight decay (the paper: 1e-2).")
    adam_epsilon: float = _f(1e-8, "AdamW epsilon.")
    use_8bit_adam: bool = _f(
        False, "bitsandbytes' 8-bit AdamW (optimizer state in 8 bits; needs bitsandbytes)."
    )
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0: no clipping).")
    conditioning_dropout_prob: float = _f(
        0.05,
        "InstructPix2Pix dropout: text alone, image alone and both are each dropped with this "
        "probability, enabling text and image guidance.",
    )
    reward_dropout_prob: float = _f(
        0.1, "Stage 2: probability of replacing the reward by the learned null reward."
    )
    reward_text_dropout_prob: float = _f(
        0.5,
        "Stage 2: probability of replacing the three failure texts by empty ones while keeping the "
        "scores. Judges write an empty text exactly when a score is perfect, so without it the "
        "text already says everything and the scores (the studio's sliders) are never learned.",
    )
    reward_text_dropout_mode: str = _f(
        "all",
        "Stage 2: 'all' replaces the three failure texts together; 'per_perspective' replaces "
        "each perspective's text on its own, with reward_text_dropout_prob, keeping every "
        "score, so that each score must also be read next to the other perspectives' texts "
        "(the cache then holds the embeddings of all 8 combinations).",
    )
    snr_gamma: float = _f(0.0, "Min-SNR loss weighting gamma (0: plain MSE; 5 is common).")
    edit_region_weight: float = _f(
        0.0,
        "Extra loss weight on the latent positions the edit changed (|edited - original| "
        "latent, channel mean, above edit_region_threshold): each counts 1 + this. 0: plain "
        "MSE. Object-level edits change a few percent of the image, so their instruction "
        "barely moves the plain loss (docs/training.md, 'Edit-region weight').",
    )
    edit_region_threshold: float = _f(
        0.1, "Latent change (channel mean of |edited - original|) that marks a changed position."
    )
    vae_kl_weight: float = _f(
        1e-4, "Stage 0: weight of the KL term (per latent element) against the pixel MSE."
    )
    mixed_precision: str = _f("no", "Mixed precision: no | fp16 | bf16.")
    gradient_checkpointing: bool = _f(False, "Recompute activations in backward to save memory.")
    use_ema: bool = _f(False, "Keep an exponential moving average of the trained weights.")
    ema_decay: float = _f(0.9999, "EMA maximum decay (with the usual warm-up).")

    # -- speed ----------------------------------------------------------------------------------
    cache: bool = _f(
        True,
        "Precompute frozen-encoder outputs (VAE latents, text and reward-text embeddings) once.",
    )
    cache_dir: str = _f("", "Where caches live, keyed by model + data hash ('': output_dir/cache).")
    cache_dtype: str = _f("float32", "Storage type of cached tensors: float32 | float16.")
    dataloader_num_workers: int = _f(0, "Worker processes loading images (uncached runs).")
    allow_tf32: bool = _f(
        False, "Ampere+ GPUs: TF32 matrix multiplies and convolutions (faster, ~1e-3 precision)."
    )
    enable_xformers_memory_efficient_attention: bool = _f(
        False,
        "Use xformers' attention kernels (needs xformers and a CUDA GPU). Without it the UNet "
        "uses PyTorch's scaled_dot_product_attention, which already picks flash / "
        "memory-efficient kernels on a GPU.",
    )

    # -- outputs --------------------------------------------------------------------------------
    output_dir: str = _f("runs/train", "Run folder: checkpoints, logs, validation, pipeline/.")
    checkpointing_steps: int = _f(500, "Save a resumable checkpoint every N steps (0: never).")
    checkpoints_total_limit: int = _f(0, "Keep at most N checkpoints, oldest removed (0: all).")
    resume_from_checkpoint: str = _f(
        "", "'latest' or a checkpoint folder to continue from exactly; '' starts fresh."
    )
    report_to: str = _f(
        "tensorboard", "Tracker: tensorboard | wandb (needs wandb) | all (every installed) | none."
    )
    tracker_project_name: str = _f("train", "Project name given to the trackers (wandb project).")
    validation_steps: int = _f(0, "Render validation edits every N steps (0: never).")
    num_validation_images: int = _f(4, "Training examples edited in each validation grid.")
    validation_inference_steps: int = _f(20, "Sampling steps of validation edits.")
    validation_guidance_scale: float = _f(7.5, "Text guidance scale of validation edits.")
    validation_image_guidance_scale: float = _f(1.5, "Image guidance scale of validation edits.")
    validation_prompt: str = _f(
        "",
        "Your own validation example: an instruction, edited on validation_image as an extra row.",
    )
    validation_image: str = _f(
        "", "Your own validation example: an image file (with validation_prompt)."
    )
    push_to_hub: bool = _f(
        False,
        "Upload the exported pipeline with a model card (data, rewards, config, results) to the "
        "Hugging Face Hub at the end (needs a token: 'hf auth login' or HF_TOKEN).",
    )
    hub_model_id: str = _f("", "push_to_hub: the repository, 'user/name' ('': output_dir's name).")

    # -- validation -----------------------------------------------------------------------------
    def validate(self) -> TrainConfig:
        """Raise ValueError with a full sentence for any inconsistent setting; return self."""
        choices = {
            "data": DATA_SOURCES,
            "prediction_type": PREDICTION_TYPES,
            "trainable": TRAINABLE,
            "on_bad_data": BAD_DATA_POLICIES,
            "mixed_precision": MIXED_PRECISION,
            "report_to": REPORT_TO,
            "cache_dtype": CACHE_DTYPES,
            "lr_scheduler": LR_SCHEDULERS,
            "beta_schedule": BETA_SCHEDULES,
            "reward_text_mode": REWARD_TEXT_MODES,
            "reward_text_dropout_mode": REWARD_TEXT_DROPOUT_MODES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{name} must be one of {', '.join(repr(a) for a in allowed)}; "
                    f"got {getattr(self, name)!r}."
                )
        if self.stage not in (0, 1, 2):
            raise ValueError(
                f"stage must be 0 (VAE), 1 (InstructPix2Pix) or 2 (MRC); got {self.stage}."
            )
        if self.stage != 2 and self.trainable != "all":
            raise ValueError(
                f"trainable='reward' needs stage 2: stage {self.stage} has no reward module."
            )
        positive = ("train_batch_size", "gradient_accumulation_steps", "max_train_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1; got {getattr(self, name)}.")
        non_negative = (
            "max_train_samples",
            "resolution",
            "lr_warmup_steps",
            "checkpointing_steps",
            "checkpoints_total_limit",
            "validation_steps",
            "dataloader_num_workers",
            "snr_gamma",
            "edit_region_weight",
            "edit_region_threshold",
            "vae_kl_weight",
            "beta_start",
            "beta_end",
            "max_grad_norm",
            "adam_weight_decay",
            "num_train_epochs",
        )
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative; got {getattr(self, name)}.")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive; got {self.learning_rate}.")
        if not 0 <= self.conditioning_dropout_prob <= 1 / 3:
            raise ValueError(
                "conditioning_dropout_prob must be in [0, 1/3] (three disjoint dropout cases); "
                f"got {self.conditioning_dropout_prob}."
            )
        if not 0 <= self.reward_dropout_prob <= 1:
            raise ValueError(
                f"reward_dropout_prob must be in [0, 1]; got {self.reward_dropout_prob}."
            )
        if not 0 <= self.reward_text_dropout_prob <= 1:
            raise ValueError(
                f"reward_text_dropout_prob must be in [0, 1]; got {self.reward_text_dropout_prob}."
            )
        if not 0 < self.data_filter_keep <= 1:
            raise ValueError(f"data_filter_keep must be in (0, 1]; got {self.data_filter_keep}.")
        if self.data_filter or self.data_filter_by != "mean":
            from train.reward_filter import check_filter_options

            check_filter_options(self.data_filter, self.data_filter_by)
        if self.relabel_with and self.stage != 2:
            raise ValueError(
                f"relabel_with gives the examples new reward labels, which only stage 2 reads; "
                f"this is stage {self.stage}."
            )
        if self.relabel_with and not Path(self.relabel_with).is_dir():
            raise ValueError(
                f"relabel_with must be a reward model folder; {self.relabel_with!r} is not one."
            )
        if bool(self.validation_prompt) != bool(self.validation_image):
            raise ValueError(
                "validation_prompt and validation_image go together (an instruction and the image "
                f"it edits); got prompt {self.validation_prompt!r}, image {self.validation_image!r}."
            )
        if self.validation_prompt and not self.validation_steps:
            raise ValueError(
                "validation_prompt is edited at every validation: set validation_steps too."
            )
        if self.validation_prompt and self.stage == 0:
            raise ValueError("validation_prompt needs an editing model: stage 0 trains the VAE.")
        if self.hub_model_id and not self.push_to_hub:
            raise ValueError("hub_model_id is only used with push_to_hub; pass --push_to_hub too.")
        if not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1); got {self.ema_decay}.")
        if self.data != "shapes" and not self.data_dir:
            raise ValueError(f"data={self.data!r} needs data_dir (see --help).")
        if self.data == "shapes" and not self.data_dir:
            raise ValueError("data='shapes' needs data_dir: a folder from 'python -m data synth'.")
        if self.data == "rewardedit" and not self.rewards_json:
            raise ValueError("data='rewardedit' needs rewards_json (the RewardEdit-20K labels).")
        if (self.revision or self.variant) and self.model == "tiny":
            raise ValueError("revision and variant apply to a loaded model, not model='tiny'.")
        if self.dataset_config_name and self.data != "hf":
            raise ValueError("dataset_config_name applies to data='hf' only.")
        if self.pixel_space and self.model != "tiny":
            raise ValueError("pixel_space builds a new identity VAE: it needs model='tiny'.")
        if self.pixel_space and self.stage == 0:
            raise ValueError("pixel_space has no VAE to train: stage 0 does not apply.")
        if self.model != "tiny" and self.tiny_config:
            raise ValueError("tiny_config only applies to model='tiny'; remove it or the model.")
        if self.model == "tiny":
            from core.tiny import TinyConfig
            from train.models import tiny_config_from

            known = {f.name for f in dataclasses.fields(TinyConfig)}
            unknown = sorted(set(self.tiny_config) - known)
            if unknown:
                raise ValueError(
                    f"tiny_config has unknown field(s) {unknown}; known: {sorted(known)}."
                )
            tiny_config_from(self.tiny_config, self.pixel_space)  # raises on inconsistent sizes
        return self

    # -- derived --------------------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir)

    @property
    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else self.run_dir / "cache"

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml(), encoding="utf-8")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], origin: str = "the config") -> TrainConfig:
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(
                f"{origin} has unknown setting(s) {unknown}; see python -m train --help."
            )
        hints = typing.get_type_hints(cls)
        kw = {name: _coerce(name, hints[name], v, origin) for name, v in values.items()}
        return cls(**kw).validate()

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(read_yaml(path), origin=str(path))

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes).validate()


# Fields that may differ between a checkpoint's config and the run resuming it.
RESUMABLE_CHANGES = frozenset(
    {
        "max_train_steps",
        "num_train_epochs",
        "checkpointing_steps",
        "checkpoints_total_limit",
        "resume_from_checkpoint",
        "report_to",
        "tracker_project_name",
        "push_to_hub",
        "hub_model_id",
        "validation_prompt",
        "validation_image",
        "validation_steps",
        "num_validation_images",
        "validation_inference_steps",
        "validation_guidance_scale",
        "validation_image_guidance_scale",
        "dataloader_num_workers",
        "cache",
        "cache_dir",
        "output_dir",
        "on_bad_data",
    }
)


def resume_mismatches(saved: TrainConfig, new: TrainConfig) -> list[str]:
    """Fields that differ and would make a resumed run diverge from the original trajectory."""
    out = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in RESUMABLE_CHANGES:
            continue
        a, b = getattr(saved, f.name), getattr(new, f.name)
        if _plain(a) != _plain(b):
            out.append(f"{f.name}: checkpoint has {a!r}, this run has {b!r}")
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ValueError(f"Cannot read the config file {path}: {e}.") from e
    except yaml.YAMLError as e:
        raise ValueError(f"The config file {path} is not valid YAML: {e}") from e
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ValueError(f"The config file {path} must hold a mapping of settings.")
    return doc


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    return v


def _coerce(name: str, typ: Any, value: Any, origin: str) -> Any:
    """Check/convert a YAML or CLI value to the field's type, with an error naming the field."""
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, str):
            return value
        if value is None:
            return ""
    elif typ is dict:
        if value is None:
            return {}
        if isinstance(value, Mapping):
            return dict(value)
    raise ValueError(f"{origin}: {name} must be a {getattr(typ, '__name__', typ)}; got {value!r}.")


# -- command line ---------------------------------------------------------------------------------


def _json_mapping(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({e})") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train",
        description=(
            "Train InstructPix2Pix (stage 1) or MRC (stage 2) editing models, or a VAE from scratch "
            "(stage 0). Settings come from "
            "the defaults, then --config FILE.yaml, then the flags below. Run the same command "
            "under 'accelerate launch' for several GPUs or nodes."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--config", default=None, help="YAML file of settings (keys = the flag names below)."
    )
    hints = typing.get_type_hints(TrainConfig)
    defaults = TrainConfig.__dataclass_fields__
    for f in dataclasses.fields(TrainConfig):
        typ = hints[f.name]
        default = defaults[f.name].default
        if default is dataclasses.MISSING:
            default = defaults[f.name].default_factory()
        kw: dict[str, Any] = dict(default=argparse.SUPPRESS, help=f.metadata["help"])
        shown = json.dumps(default) if isinstance(default, dict) else repr(default)
        kw["help"] += f" (default: {shown})"
        if typ is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typ is dict:
            kw["type"] = _json_mapping
            kw["metavar"] = "JSON"
        else:
            kw["type"] = typ
        parser.add_argument(f"--{f.name}", **kw)
    # ArgumentDefaultsHelpFormatter would print "(default: ==SUPPRESS==)"; we wrote our own.
    parser.formatter_class = argparse.HelpFormatter
    return parser


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """Defaults < --config YAML < explicit flags, validated and frozen."""
    parser = build_parser()
    ns = vars(parser.parse_args(argv))
    config_path = ns.pop("config", None)
    values: dict[str, Any] = read_yaml(config_path) if config_path else {}
    origin = f"{config_path} with the command-line flags" if config_path else "the command line"
    values.update(ns)
    try:
        return TrainConfig.from_dict(values, origin=origin)
    except ValueError as e:
        parser.error(str(e))
        raise  # unreachable: parser.error exits
