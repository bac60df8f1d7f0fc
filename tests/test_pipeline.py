"""MRCInstructPix2PixPipeline: parity with diffusers, reward guidance, inputs, save/load."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import StableDiffusionInstructPix2PixPipeline

from core.mrc import MultiRewardCondition
from core.pipeline import MRCInstructPix2PixPipeline
from core.rewards import Rewards
from core.sampling import SCHEDULERS
from core.tiny import TinyConfig, build_components

CFG = TinyConfig()
FAST = dict(num_inference_steps=2, output_type="np")


def make_image(seed: int = 0, size: tuple[int, int] = (32, 32), mode: str = "RGB"):
    arr = (np.random.RandomState(seed).rand(size[1], size[0], 3) * 255).astype(np.uint8)
    return PIL.Image.fromarray(arr).convert(mode)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mrc_pipe(scheduler: str = "euler_ancestral", module=None) -> MRCInstructPix2PixPipeline:
    pipe = MRCInstructPix2PixPipeline(**build_components(CFG, 0, scheduler), reward_module=module)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def stock_pipe(scheduler: str = "euler_ancestral") -> StableDiffusionInstructPix2PixPipeline:
    pipe = StableDiffusionInstructPix2PixPipeline(
        **build_components(CFG, 0, scheduler),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def trained_module(seed: int = 0) -> MultiRewardCondition:
    """A module with all-random weights and a non-trivial null, standing in for a trained one."""
    torch.manual_seed(seed)
    unet_cfg = build_components(CFG, 0)["unet"].config
    m = MultiRewardCondition.from_unet_config(unet_cfg, CFG.text_dim, identity_init=False)
    with torch.no_grad():
        m.null_time.normal_(0, 0.5)
    return m.eval()


@pytest.fixture(scope="module")
def trained():
    return mrc_pipe(module=trained_module())


# -- parity with diffusers' InstructPix2Pix ------------------------------------------------------


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_fresh_module_equals_stock_instruct_pix2pix(scheduler):
    ours, stock = mrc_pipe(scheduler), stock_pipe(scheduler)
    img = make_image()
    a = ours("make the circle red", img, generator=gen(), **FAST).images
    b = stock("make the circle red", img, generator=gen(), **FAST).images
    assert np.abs(a - b).max() <= 1e-5


def test_parity_for_batches_negative_prompts_and_no_guidance():
    ours, stock = mrc_pipe(), stock_pipe()
    imgs = [make_image(0), make_image(1)]
    prompts = ["make it blue", "add a star"]
    kw = dict(negative_prompt=["blurry", "noise"], image_guidance_scale=1.3, guidance_scale=5.0)
    a = ours(prompts, imgs, generator=gen(), **kw, **FAST).images
    b = stock(prompts, imgs, generator=gen(), **kw, **FAST).images
    assert np.abs(a - b).max() <= 1e-5
    a = ours("x", imgs[0], guidance_scale=1.0, num_images_per_prompt=2, generator=gen(), **FAST)
    b = stock("x", imgs[0], guidance_scale=1.0, num_images_per_prompt=2, generator=gen(), **FAST)
    assert np.abs(a.images - b.images).max() <= 1e-5
    # Reward guidance with the (untrained, identity) null still equals the stock model.
    c = ours("x", imgs[0], reward_guidance_scale=3.0, generator=gen(), **FAST).images
    d = stock("x", imgs[0], generator=gen(), **FAST).images
    assert np.abs(c - d).max() <= 1e-5


# -- rewards and reward guidance ------------------------------------------------------------------


def test_rewards_and_reward_guidance_steer_a_trained_module(trained):
    img = make_image()
    best = trained("make it blue", img, generator=gen(), **FAST).images
    same = trained("make it blue", img, reward_guidance_scale=1.0, generator=gen(), **FAST).images
    assert np.array_equal(best, same)
    worse = trained("make it blue", img, rewards=(0, 5, 5), generator=gen(), **FAST).images
    texts = trained("make it blue", img, reward_text=("", "", "noise"), generator=gen(), **FAST)
    guided = trained("make it blue", img, reward_guidance_scale=2.0, generator=gen(), **FAST).images
    for other in (worse, texts.images, guided):
        assert np.abs(best - other).max() > 1e-3


def test_batched_rewards_equal_single_calls(trained):
    img = make_image()
    requests = [(5, 5, 5), Rewards.from_scores((1, 2, 3), ("bad", "", "blurry"))]
    kw = dict(reward_guidance_scale=1.5, **FAST)
    batch = trained(["make it blue"] * 2, img, rewards=requests, generator=[gen(0), gen(1)], **kw)
    for i, r in enumerate(requests):
        single = trained("make it blue", img, rewards=r, generator=gen(i), **kw).images
        assert np.abs(batch.images[i] - single[0]).max() <= 1e-5


def test_seeded_expected_pixels(trained):
    out = trained("make the circle red", make_image(), generator=gen(0), **FAST).images
    expected = np.array([0.57532, 0.45314, 0.50248])
    np.testing.assert_allclose(out[0, 0, 0], expected, atol=1e-3)
    np.testing.assert_allclose(out[0, 16, 16], np.array([0.58695, 0.58753, 0.59467]), atol=1e-3)


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_every_scheduler_runs_with_reward_guidance(trained, scheduler):
    trained.set_scheduler(scheduler)
    out = trained("x", make_image(), reward_guidance_scale=2.0, generator=gen(), **FAST).images
    assert out.shape == (1, 32, 32, 3) and np.isfinite(out).all()
    trained.set_scheduler("euler_ancestral")


# -- inputs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "1", "CMYK", "I;16", "I", "F"])
def test_any_pil_mode_is_converted(trained, mode):
    img = make_image().convert("L").convert(mode) if mode in ("I;16", "I", "F") else make_image()
    img = img if mode in ("I;16", "I", "F") else img.convert(mode)
    out = trained("x", img, generator=gen(), **FAST).images
    assert out.shape == (1, 32, 32, 3)


def test_sizes_are_rounded_down_to_the_vae_factor(trained):
    out = trained("x", make_image(size=(37, 45)), **FAST).images
    f = CFG.vae_scale_factor
    assert out.shape == (1, 45 - 45 % f, 37 - 37 % f, 3)
    pil = trained("x", make_image(), num_images_per_prompt=2, num_inference_steps=1).images
    assert len(pil) == 2 and pil[0].size == (32, 32)
    arr = trained("x", np.zeros((32, 32, 3), np.float32), output_type="pt", num_inference_steps=1)
    assert arr.images.shape == (1, 3, 32, 32)


BAD_INPUTS = [
    (dict(rewards=(6, 5, 5)), "must be in \\[0, 5\\]"),
    (dict(rewards=(-1, 5, 5)), "must be in \\[0, 5\\]"),
    (dict(rewards=(float("nan"), 5, 5)), "finite"),
    (dict(rewards=(5, 5)), "exactly 3 scores"),
    (dict(rewards=(5, 5, 5, 5)), "exactly 3 scores"),
    (dict(rewards=[(5, 5, 5)] * 2), "2 entries but there are 1 prompts"),
    (dict(rewards="5,5,5"), "three scores"),
    (dict(reward_text=("a", "b")), "exactly 3 texts"),
    (dict(reward_text="none"), "three strings"),
    (dict(reward_text=[("a", "b", "c")] * 2), "2 entries but there are 1 prompts"),
    (dict(reward_text=("a", 1, "c")), "preserving text must be a string"),
    (dict(rewards=Rewards.best(), reward_text=("a", "b", "c")), "given twice"),
    (dict(reward_text=("a" * 2001, "", "")), "prompt 0: following: failure text has 2001"),
    (dict(image=None), "`image` is required"),
    (dict(image=PIL.Image.new("RGB", (0, 16))), "zero size"),
    (dict(image=make_image(size=(1, 1))), "smaller than the VAE factor"),
    (dict(image=[make_image(), make_image(size=(40, 40))], prompt=["a", "b"]), "different sizes"),
    (dict(image=[make_image()] * 3, prompt=["a", "b"]), "3 images for 2 prompts"),
    (dict(image="photo.png"), "PIL image"),
    (dict(prompt=None), "instruction string"),
    (dict(prompt=[]), "instruction string"),
    (dict(num_inference_steps=0), "positive integer"),
    (dict(num_images_per_prompt=0), "positive integer"),
    (dict(image_guidance_scale=0.5), "image_guidance_scale >= 1"),
    (dict(reward_guidance_scale=-1.0), "at least 0"),
    (dict(guidance_scale=float("inf")), "finite"),
    (dict(output_type="jpeg"), "output_type"),
    (dict(negative_prompt=["a", "b"]), "negative_prompt has 2 entries"),
    (dict(callback_on_step_end_tensor_inputs=["noise"]), "not available"),
    (dict(generator=[gen(0), gen(1)]), "2 generators for 1 images"),
    (dict(latents=torch.zeros(1, 4, 8, 8)), "latents must have shape \\(1, 4, 16, 16\\)"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_INPUTS)
def test_bad_input_raises_a_clear_value_error(trained, kwargs, message):
    calls = []
    handle = trained.text_encoder.register_forward_hook(lambda *a: calls.append(1))
    call = dict(prompt="make it blue", image=make_image(), num_inference_steps=1) | kwargs
    try:
        with pytest.raises(ValueError, match=message):
            trained(**call)
    finally:
        handle.remove()
    assert not calls, "inputs must be validated before any model runs"


def test_callback_and_interrupt(trained):
    seen = []

    def callback(pipe, step, t, tensors):
        seen.append((step, tuple(tensors)))
        if step == 1:
            pipe._interrupt = True
        return {"latents": tensors["latents"]}

    trained("x", make_image(), num_inference_steps=4, callback_on_step_end=callback,
            callback_on_step_end_tensor_inputs=["latents", "image_latents"], output_type="latent")  # fmt: skip
    assert seen == [(0, ("latents", "image_latents")), (1, ("latents", "image_latents"))]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_on_cpu_is_close_to_float32(dtype):
    ref = mrc_pipe(module=trained_module())
    kw = dict(reward_guidance_scale=2.0, **FAST)
    want = ref("x", make_image(), generator=gen(), **kw).images
    pipe = mrc_pipe(module=trained_module()).to(dtype)
    out = pipe("x", make_image(), generator=gen(), **kw).images
    assert pipe.reward_module.dtype == dtype and np.isfinite(out).all()
    assert np.abs(out - want).max() < 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_cuda_dtypes(dtype):
    ours, stock = mrc_pipe().to("cuda", dtype), stock_pipe().to("cuda", dtype)
    g = torch.Generator("cuda")
    a = ours("x", make_image(), generator=g.manual_seed(0), **FAST).images
    b = stock("x", make_image(), generator=g.manual_seed(0), **FAST).images
    assert np.abs(a - b).max() <= (1e-5 if dtype == torch.float32 else 1e-2)
    ours.reward_module = trained_module().to("cuda", dtype)
    c = ours("x", make_image(), reward_guidance_scale=2.0, generator=g.manual_seed(0), **FAST)
    assert np.isfinite(c.images).all()


# -- save / load ----------------------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path):
    module = trained_module()
    module.register_to_config(empty_text="None")
    pipe = mrc_pipe(module=module)
    before = pipe("x", make_image(), reward_guidance_scale=2.0, generator=gen(), **FAST).images
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["reward_module"] == ["core.mrc", "MultiRewardCondition"]
    loaded = MRCInstructPix2PixPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.reward_module.config.empty_text == "None"
    after = loaded("x", make_image(), reward_guidance_scale=2.0, generator=gen(), **FAST).images
    assert np.array_equal(before, after)


def test_recorded_default_guidance_round_trips_and_is_what_a_call_without_one_uses(tmp_path):
    from core.sampling import DEFAULT_GUIDANCE, recorded_guidance

    pipe = mrc_pipe(module=trained_module())
    assert (pipe.config.default_guidance_scale, pipe.config.default_image_guidance_scale) == (
        DEFAULT_GUIDANCE
    )
    at_7_5 = pipe("x", make_image(), generator=gen(), **FAST).images
    assert np.array_equal(
        at_7_5, pipe("x", make_image(), guidance_scale=7.5, generator=gen(), **FAST).images
    )
    pipe.set_default_guidance(2.0, 1.2)
    pipe.save_pretrained(tmp_path)
    assert recorded_guidance(tmp_path) == (2.0, 1.2)  # read without loading the model
    loaded = MRCInstructPix2PixPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    default = loaded("x", make_image(), generator=gen(), **FAST).images
    explicit = loaded(
        "x", make_image(), guidance_scale=2.0, image_guidance_scale=1.2, generator=gen(), **FAST
    ).images
    assert np.array_equal(default, explicit) and not np.array_equal(default, at_7_5)
    with pytest.raises(ValueError, match="default_guidance_scale must be at least 1"):
        loaded.set_default_guidance(0.5, 1.5)
    assert recorded_guidance(tmp_path / "nowhere") == DEFAULT_GUIDANCE  # a hub id, say


def test_guidance_recorded_in_a_stock_folder_keeps_it_stock(tmp_path):
    from core.sampling import record_guidance, recorded_guidance

    stock_pipe().save_pretrained(tmp_path)
    record_guidance(tmp_path, 3.0, 1.25)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionInstructPix2PixPipeline"
    assert recorded_guidance(tmp_path) == (3.0, 1.25)
    assert type(StableDiffusionInstructPix2PixPipeline.from_pretrained(tmp_path)).__name__ == (
        "StableDiffusionInstructPix2PixPipeline"
    )
    loaded = MRCInstructPix2PixPipeline.from_pretrained(tmp_path)
    assert (loaded.config.default_guidance_scale, loaded.config.default_image_guidance_scale) == (
        3.0, 1.25
    )  # fmt: skip
    with pytest.raises(ValueError, match="no model_index.json"):
        record_guidance(tmp_path / "missing", 2.0, 1.5)


def test_stock_instruct_pix2pix_folder_gets_an_identity_module(tmp_path):
    stock = stock_pipe()
    stock.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    # the timbrooks/instruct-pix2pix layout also lists a safety checker and feature extractor
    index |= {"safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
              "feature_extractor": ["transformers", "CLIPImageProcessor"],
              "requires_safety_checker": True}  # fmt: skip
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    ours = MRCInstructPix2PixPipeline.from_pretrained(tmp_path)
    ours.set_progress_bar_config(disable=True)
    assert isinstance(ours.reward_module, MultiRewardCondition)
    assert ours.reward_module.proj_deal.proj_out.weight.abs().sum() == 0
    a = ours("x", make_image(), generator=gen(), **FAST).images
    b = stock("x", make_image(), generator=gen(), **FAST).images
    assert np.abs(a - b).max() <= 1e-5
    ours.save_pretrained(tmp_path / "mrc")  # and the module is saved from then on
    assert (tmp_path / "mrc" / "reward_module" / "config.json").is_file()


def test_a_reward_module_of_the_wrong_size_is_refused_at_construction():
    wrong = MultiRewardCondition(block_channels=64, time_embed_dim=256, text_embed_dim=32)
    with pytest.raises(ValueError, match="from_unet_config"):
        mrc_pipe(module=wrong)


def test_use_mrc_unet_reuses_a_wrapper_and_refuses_a_foreign_one():
    from core.mrc_unet import MRCUNet

    pipe = mrc_pipe()
    own = MRCUNet(pipe.unet, pipe.reward_module)
    pipe.use_mrc_unet(own)
    assert pipe.mrc_unet is own  # no second wrapper stealing the hooks
    other = mrc_pipe()
    with pytest.raises(ValueError, match="own unet and reward_module"):
        pipe.use_mrc_unet(MRCUNet(other.unet, other.reward_module))
