"""Typed configuration: dataclasses mirrored by the YAML files under ``configs/``.

Every YAML file is merged onto these dataclasses with omegaconf, so a misspelt key is an
error that lists the valid keys instead of a silently ignored setting.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from .toyworld.world import check_motion_weights

VAE_SPATIAL = 8  # pixels per latent position in each direction (the Wan VAE's compression, and ours)


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message says which and how to fix it."""


@dataclass
class ModelConfig:
    """Wan DiT shape. Field names follow diffusers' ``WanTransformer3DModel`` config."""

    patch_size: tuple[int, int, int] = (1, 2, 2)
    num_attention_heads: int = 12
    attention_head_dim: int = 128
    in_channels: int = 16
    out_channels: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    ffn_dim: int = 8960
    num_layers: int = 30
    cross_attn_norm: bool = True
    qk_norm: str = "rms_norm_across_heads"
    eps: float = 1e-6
    rope_theta: float = 10000.0
    # Self-attention kernel: "sdpa" (CPU/GPU), "flex" (GPU training), "xformers" (optional extra).
    attention_backend: str = "sdpa"
    # What the head predicts: "flow" (Wan, v-prediction) or "x0" (the clean latents; the flow is
    # derived, see sampler.flow_from_x0). x0 suits tokens about as wide as the model (JiT, Li & He
    # 2025): a flow head then has to carry the noise through every block, and returns it as blocks.
    prediction: str = "flow"
    # Self-conditioning (Chen et al. 2022, "Analog Bits"): the input also carries the model's previous x0
    # estimate (zeros when there is none), so a many-step sampler can refine the layout it drew one step
    # earlier instead of redrawing it from noise. The patch embedding takes 2 x in_channels; the second half
    # is zero-initialised by a warm start, which keeps the source model's function.
    self_conditioning: bool = False
    # Low-rank (bottleneck) patch embedding (JiT, Li & He 2025): tokens are projected to this many numbers
    # before the linear map up to the model width; 0 = Wan's single patch convolution. The toy teacher's
    # tokens (2x2 positions x 64 PCA channels, x2 with self-conditioning) are wider than the model, and its
    # full-rank embedding has a flat spectrum: every direction of the residual stream carries input noise.
    # Warm-started at rank 128 (session 10, bench/RESULTS.md) it drew less mosaic but lost low-noise detail.
    patch_embed_rank: int = 0
    # Pooled text in the modulation (SD3 / Flux's pooled text vector; DiT's adaLN class conditioning): the mean
    # of the projected text tokens, through a zero-initialised linear map, is added to the timestep embedding
    # that every block's adaLN scale / shift / gate and the head read. Wan conditions on text by cross-attention
    # only, which lets a token add a prompt-dependent vector but not switch its own features on or off by the
    # prompt; session 12: the toy teacher takes colour from the prompt but never shape or motion. Off for Wan
    # checkpoints; a warm start from a model without it keeps that model's function (distill.fit_state).
    pooled_text: bool = False

    @property
    def dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    def validate(self) -> None:
        if self.attention_head_dim % 2:
            raise ConfigError(f"model.attention_head_dim must be even for RoPE, got {self.attention_head_dim}")
        if len(self.patch_size) != 3:
            raise ConfigError(f"model.patch_size must be (t, h, w), got {self.patch_size}")
        if self.prediction not in ("flow", "x0"):
            raise ConfigError(f"model.prediction must be 'flow' or 'x0', got {self.prediction!r}")
        if self.patch_embed_rank < 0:
            raise ConfigError(f"model.patch_embed_rank must be 0 (Wan's full-rank embedding) or positive, got {self.patch_embed_rank}")
        if self.qk_norm != "rms_norm_across_heads":
            raise ConfigError(f"model.qk_norm: only 'rms_norm_across_heads' (Wan2.1) is supported, got {self.qk_norm!r}")


SINK_POLICIES = ("none", "anchor", "ema", "deep")
POSITION_POLICIES = ("absolute", "rebased")


@dataclass
class CacheConfig:
    """Block-causal attention and the rolling KV cache, in latent frames (never tokens).

    A query in chunk ``c`` attends to the ``window_frames`` most recent latent frames up to the end
    of its own chunk (its chunk included), plus ``sink_frames`` sink frames.
    """

    chunk_frames: int = 3
    window_frames: int = -1  # -1: attend to every past frame (the cache then needs max_frames)
    sink_frames: int = 0
    sink_policy: str = "none"  # none | anchor | ema | deep
    position_policy: str = "absolute"  # absolute | rebased
    ema_decay: float = 0.9  # ema sink: sink = decay * sink + (1 - decay) * evicted

    @property
    def bounded(self) -> bool:
        return self.window_frames > 0

    def validate(self) -> None:
        c, w, s = self.chunk_frames, self.window_frames, self.sink_frames
        if c < 1:
            raise ConfigError(f"cache.chunk_frames must be >= 1, got {c}")
        if self.sink_policy not in SINK_POLICIES:
            raise ConfigError(f"cache.sink_policy must be one of {SINK_POLICIES}, got {self.sink_policy!r}")
        if self.position_policy not in POSITION_POLICIES:
            raise ConfigError(
                f"cache.position_policy must be one of {POSITION_POLICIES}, got {self.position_policy!r}"
            )
        if w != -1 and (w < c or w % c):
            raise ConfigError(
                f"cache.window_frames={w} must be -1 or a positive multiple of chunk_frames={c} "
                "(the window holds whole chunks)"
            )
        if s % c:
            raise ConfigError(f"cache.sink_frames={s} must be a multiple of chunk_frames={c}")
        if self.sink_policy == "none" and s:
            raise ConfigError(f"cache.sink_policy 'none' takes sink_frames=0, got {s}; pick anchor/ema/deep")
        if self.sink_policy != "none" and not s:
            raise ConfigError(f"cache.sink_policy {self.sink_policy!r} needs sink_frames > 0")
        if self.sink_policy == "ema" and s != c:
            raise ConfigError(
                f"cache.sink_policy 'ema' blends one evicted chunk into the sink: sink_frames ({s}) "
                f"must equal chunk_frames ({c})"
            )
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ConfigError(f"cache.ema_decay must lie in [0, 1], got {self.ema_decay}")


@dataclass
class SamplerConfig:
    """Few-step flow-matching sampling of a distilled student (and many-step teacher sampling)."""

    denoising_steps: list[int] = field(default_factory=lambda: [1000, 750, 500, 250])
    shift: float = 5.0
    warp: bool = True  # map steps onto the shifted training grid (Self-Forcing's warp_denoising_step)
    context_timestep: float = 0.0  # noise level (0..1000) of the clean pass that writes a chunk's K/V
    schedule: str = "chunkwise"  # chunkwise | rolling (Rolling Forcing joint window)
    teacher_steps: int = 40
    guidance_scale: float = 1.0  # classifier-free guidance; 1 = off (distilled students)

    def validate(self) -> None:
        if self.schedule not in ("chunkwise", "rolling"):
            raise ConfigError(f"sampler.schedule must be 'chunkwise' or 'rolling', got {self.schedule!r}")
        if not self.denoising_steps:
            raise ConfigError("sampler.denoising_steps must list at least one step, e.g. [1000, 750, 500, 250]")
        if not 0 <= self.context_timestep <= 1000:
            raise ConfigError(f"sampler.context_timestep must lie in [0, 1000], got {self.context_timestep}")


SWITCH_MODES = ("recache", "none", "blend")
# Attributes a counterfactual training input may change (train.swap_attributes, data.counterfactual_track): "bounce"
# reverses the heading away from a border (data.false_bounce); "count" adds a fainter second copy (data.ghost_copy).
TRACK_SWAPS = ("shape", "motion", "bounce")
SWAPPABLE = TRACK_SWAPS + ("count",)


@dataclass
class SwitchConfig:
    """What a prompt switch does to the stream."""

    mode: str = "recache"  # recache | none | blend
    blend_chunks: int = 2  # blend: chunks over which text embeddings are interpolated

    def validate(self) -> None:
        if self.mode not in SWITCH_MODES:
            raise ConfigError(f"switch.mode must be one of {SWITCH_MODES}, got {self.mode!r}")
        if self.blend_chunks < 1:
            raise ConfigError(f"switch.blend_chunks must be >= 1, got {self.blend_chunks}")


@dataclass
class TextConfig:
    encoder: str = "minilm"  # minilm (embedded default) | umt5 (Wan2.1)
    path: str = ""  # umt5: a local Wan2.1 diffusers directory
    max_length: int = 24


@dataclass
class VideoConfig:
    """Pixel geometry of generated video."""

    height: int = 128
    width: int = 128
    fps: int = 16

    def validate(self) -> None:
        if self.height % VAE_SPATIAL or self.width % VAE_SPATIAL:
            raise ConfigError(f"video height/width must be multiples of the VAE's {VAE_SPATIAL}x compression, "
                              f"got {self.height}x{self.width}")


@dataclass
class StreamGenConfig:
    """Top-level config: one section per component."""

    model: ModelConfig = field(default_factory=ModelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    switch: SwitchConfig = field(default_factory=SwitchConfig)
    text: TextConfig = field(default_factory=TextConfig)
    video: VideoConfig = field(default_factory=VideoConfig)

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if hasattr(section, "validate"):
                section.validate()
        ph, pw = (VAE_SPATIAL * p for p in self.model.patch_size[1:])
        if self.video.height % ph or self.video.width % pw:
            raise ConfigError(f"video {self.video.height}x{self.video.width} does not tile into tokens of {ph}x{pw} pixels "
                              f"(VAE {VAE_SPATIAL}x, model.patch_size {list(self.model.patch_size)}): pick a size that divides")


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping of a training run (teacher or distillation)."""

    run_dir: str = "runs/teacher"
    seed: int = 0
    steps: int = 100_000
    batch_size: int = 8  # per process
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 500
    # Cool-down (0 = constant LR after warm-up): linear from ``lr_decay_start`` to ``lr * lr_min_ratio``
    # over ``lr_decay_steps``.
    lr_decay_start: int = 0
    lr_decay_steps: int = 2000
    lr_min_ratio: float = 0.05
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    mixed_precision: str = "no"  # no | bf16 (accelerate)
    latent_frames: int = 4  # clip length in latent frames (1 + 4 * (n - 1) pixel frames)
    # Joint image-video training (as Wan): every ``image_every``-th step trains on still first frames
    # (one latent frame) of ``batch_size * latent_frames`` clips, the same token count as a video step.
    # Colour, shape and object size are image properties; a still step sees 4x the clips. 0 = off.
    image_every: int = 0
    # Object crops (data.object_crop): every ``crop_every``-th image or video step trains on ``crop`` x ``crop``
    # latent-position windows round each clip's object, with (h * w / crop^2) times the clips (same tokens).
    # 0 = off. ``crop`` must be a multiple of the spatial patch size. Measured (session 6, bench/RESULTS.md): it
    # hurt the toy teacher (presence 0.28 -> 0.12 in 1000 steps, two objects per frame): every crop holds an
    # object, so the model learns that every window of that size does. Off in configs/teacher_toy.yaml.
    crop: int = 0
    crop_every: int = 0
    caption_dropout: float = 0.1  # empty prompt, for classifier-free guidance
    paraphrase_prob: float = 0.5
    timestep_shift: float = 3.0  # training and sampling noise-level shift
    timestep_sampling: str = "uniform"  # uniform | logit_normal (before the shift)
    loss_sigma_floor: float = 0.0  # flow MSE weight min(1, (sigma / floor)^2); see sampler.flow_loss_weight
    foreground_boost: float = 0.0  # flow MSE weight 1 + boost on object positions (sampler.foreground_weight); 0 = off
    foreground_dilate: int = 0  # grow the object mask by this many latent positions (penalises colour spilt round it)
    # Path correction (exposure bias; distill.path_correction_input): on this fraction of steps, samples with sigma in
    # ``path_sigma_range`` [lo, hi) train on the model's own x0 estimate from a level drawn in [sigma, hi], noised back
    # down to sigma, against the real clip. Session 10: samples keep the colour mosaic that the x0 estimates at sigma
    # 0.75-0.9 put on the path, while estimates from real noised clips at lower sigma are clean. 0 = off.
    path_correction: float = 0.0
    path_sigma_range: tuple[float, float] = (0.3, 0.9)
    # Only image (still) steps. An estimate from high noise leaves where a clip's object is in each frame open, and
    # the real clip as target then teaches the mean track: session 10's run on every step halved the speed ratio.
    path_correction_images_only: bool = False
    # The estimate's level is drawn in [max(sigma, path_from_min), hi]. Session 11 (bench/text_binding.py): the teacher
    # takes an object's shape only from its input, never from the prompt; an estimate from above ~0.85 has no shape
    # left, so only the prompt can tell the model which one to draw. But the object's place is mostly gone there too, and
    # the real clip as target then teaches a hedged place (the session-11 run drew faint objects). 0 = anywhere above sigma.
    path_from_min: float = 0.0
    # Coarse input: on this fraction of steps (those without path correction) the input is noised from the clip's first
    # ``coarse_channels`` latent channels only (distill.coarse_latents; a PCA VAE's channels are in order of variance)
    # and the target stays the clip. The object's place and colour are in the input, its outline is not, so only the
    # prompt can give the shape (session 11: the teacher takes shape from its input alone). 0 = off.
    coarse_input: float = 0.0
    coarse_channels: int = 3
    # Counterfactual input: on steps with neither path correction nor coarse input, each captioned sample is, with
    # this probability, noised from its clip re-rendered with ``swap_attributes`` changed (data.counterfactual_track:
    # another shape on the same track; another motion from the same first position) and trained against the real
    # clip. The input then contradicts the caption on exactly that attribute, so it can only be learnt from the
    # prompt (session 12: the teacher copies outline and track from its input, and the prompt never sets them). 0 = off.
    swap_input: float = 0.0
    swap_attributes: tuple[str, ...] = ("shape",)
    # Change one of ``swap_attributes`` per swapped sample (drawn at random) instead of all of them. Why: with all
    # changed at once the input is wrong about everything and can be ignored wholesale; with one, the model must
    # take that attribute from the prompt and keep the others, as a sampler's path is wrong about one thing at a time.
    swap_one_at_a_time: bool = False
    # Relative weight of each motion's clips in the training data (a motion not named weighs 1; empty = every
    # (shape, colour, motion) combination equally often), e.g. ``"train.motion_weights={bouncing diagonally: 2}"``.
    # Why: the hardest motion (a diagonal: the heading is the model's choice on both axes) gets more practice.
    motion_weights: dict[str, float] = field(default_factory=dict)
    # Only samples noised to at least this level are swapped. Why: the target stays the real clip, so at low noise a
    # swapped sample asks the model to move an object its input shows clearly elsewhere (loss weighted ~1/sigma^2);
    # that teaches distrust of the input, not reading the prompt (session 17: loss 0.56 -> 2.2 with motion swaps at
    # every level). At high noise the input only hints at the track, and the prompt has to decide.
    swap_sigma_min: float = 0.0
    # Weight of the VAE's track channels (a tracked VAE's last ``track_channels``) in the flow MSE, against 1 for the
    # others (renormalised: mean channel weight 1). Why: the track is a constant field, readable from the noisy input
    # at all but the highest noise levels, and 3 of 64 channels; the loss that only the direction word can lower is a
    # sliver of the whole (session 17: teachers read speed and "still" but not the direction). 1 = plain MSE.
    track_loss_weight: float = 1.0
    log_every: int = 20
    ckpt_every: int = 500
    eval_every: int = 2000
    keep_checkpoints: int = 2
    eval_prompts: int = 8
    eval_steps: int = 30
    guidance_scale: float = 4.0
    init: str = "adaln_zero"  # adaln_zero | diffusers
    # Warm start of a fresh run: weights (run dir, checkpoint dir or file; EMA preferred) loaded over the
    # init. ``init_reset_head`` zeroes the output projection again (for a changed model.prediction).
    init_from: str = ""
    init_reset_head: bool = False
    # ``init_from`` a shallower run (same width): its blocks spread over this model's, the others start as
    # identity blocks, so training continues from the same function with more depth (trainer.grow_from).
    init_grow: bool = False

    def validate(self) -> None:
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ConfigError(f"train.mixed_precision must be no, bf16 or fp16, got {self.mixed_precision!r}")
        if self.timestep_sampling not in ("uniform", "logit_normal"):
            raise ConfigError(f"train.timestep_sampling must be uniform or logit_normal, got {self.timestep_sampling!r}")
        if self.image_every < 0 or self.image_every == 1:
            raise ConfigError(f"train.image_every must be 0 (off) or >= 2 (every n-th step), got {self.image_every}")
        if self.crop < 0 or self.crop_every < 0 or self.crop_every == 1 or (self.crop > 0) != (self.crop_every > 0):
            raise ConfigError(f"train.crop (latent positions, > 0) and train.crop_every (>= 2) are set together or "
                              f"both 0 (off), got crop={self.crop} crop_every={self.crop_every}")
        lo, hi = self.path_sigma_range
        if not (0.0 <= self.path_correction <= 1.0 and 0.0 < lo <= hi < 1.0):
            raise ConfigError(f"train.path_correction must be in [0, 1] and train.path_sigma_range a (lo, hi) with "
                              f"0 < lo <= hi < 1, got {self.path_correction} and {self.path_sigma_range}")
        if not (0.0 <= self.coarse_input <= 1.0 and self.coarse_channels >= 1):
            raise ConfigError(f"train.coarse_input must be in [0, 1] and train.coarse_channels >= 1, got "
                              f"{self.coarse_input} and {self.coarse_channels}")
        if not 0.0 <= self.swap_input <= 1.0:
            raise ConfigError(f"train.swap_input must be in [0, 1], got {self.swap_input}")
        if not 0.0 <= self.swap_sigma_min < 1.0:
            raise ConfigError(f"train.swap_sigma_min must be in [0, 1), got {self.swap_sigma_min}")
        bad = [a for a in self.swap_attributes if a not in SWAPPABLE]
        if bad or not self.swap_attributes:
            raise ConfigError(f"train.swap_attributes takes some of {list(SWAPPABLE)}, got {list(self.swap_attributes)}")
        try:
            check_motion_weights(self.motion_weights)
        except ValueError as e:
            raise ConfigError(f"train.{e}") from None
        if self.swap_input > 0 and self.crop > 0:
            raise ConfigError("train.swap_input does not combine with object crops yet (the crop of the re-rendered "
                              "clip would be taken elsewhere): set train.crop=0 and train.crop_every=0, or swap_input=0")
        if not 0.0 <= self.path_from_min < hi:
            raise ConfigError(f"train.path_from_min must be in [0, path_sigma_range's hi = {hi}), got {self.path_from_min}")
        if self.foreground_dilate < 0:
            raise ConfigError(f"train.foreground_dilate must be >= 0, got {self.foreground_dilate}")
        if self.foreground_boost < 0:
            raise ConfigError(f"train.foreground_boost must be >= 0 (0 = plain MSE), got {self.foreground_boost}")
        if self.track_loss_weight <= 0:
            raise ConfigError(f"train.track_loss_weight must be > 0 (1 = plain MSE), got {self.track_loss_weight}")
        if self.init not in ("adaln_zero", "diffusers"):
            raise ConfigError(f"train.init must be adaln_zero or diffusers, got {self.init!r}")


@dataclass
class TeacherRunConfig:
    """A teacher training run: the model, the data geometry and the optimisation."""

    model: ModelConfig = field(default_factory=ModelConfig)
    text: TextConfig = field(default_factory=TextConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    vae_path: str = "assets/vae"

    def validate(self) -> None:
        StreamGenConfig.validate(self)


EXIT_STEP_MODES = ("same", "per_chunk", "last")


@dataclass
class DistillConfig:
    """Distilling the bidirectional teacher into the causal few-step student (``streamgen.distill``).

    Times are flow-matching timesteps in [0, 1000]; lengths are latent frames. The teacher sees
    ``train.latent_frames`` frames (its training clip length); student rollouts are
    ``rollout_frames`` long and the teacher supervises windows of its own length (streaming long
    tuning), each adding ``min_new_frames..max_new_frames`` new frames to the stream.
    """

    # -- weights
    teacher: str = "runs/teacher"  # teacher run dir (its latest checkpoint), checkpoint dir or weights file
    teacher_module: str = "ema"  # module of a run checkpoint to read: ema | model
    init_generator: Optional[str] = "runs/ode_init"  # ODE-regression run (or weights); null / "" = the teacher's weights
    init_module: str = "ema"  # module of the init run's checkpoint: ema | generator
    gradient_checkpointing: bool = False  # teacher/critic full-clip passes (student rollouts never checkpoint)
    # -- ODE pairs (train/ode_init.py pairs; the regression itself is configured by the ``ode`` section)
    ode_pairs_dir: str = "runs/ode_pairs"
    ode_num_pairs: int = 512
    ode_teacher_steps: int = 40  # Euler steps of the teacher grid (the student's sigmas are inserted)
    ode_shard_size: int = 8  # pairs per shard file (and per teacher batch)
    # -- DMD
    real_guidance_scale: float = 4.0  # teacher CFG: uncond + s * (cond - uncond)
    fake_guidance_scale: float = 1.0  # critic CFG (1 = conditional critic only, Self-Forcing's default)
    min_timestep: float = 20.0  # DMD / critic noise levels: u ~ U(0, 1), shift, clamp to [min, max] / 1000
    max_timestep: float = 980.0
    timestep_shift: float = 3.0
    lr_critic: float = 4.0e-6  # generator lr is train.lr
    betas: list[float] = field(default_factory=lambda: [0.0, 0.999])  # both optimizers (Self-Forcing: beta1 = 0)
    critic_grad_clip: float = 10.0  # generator: train.grad_clip
    dfake_gen_update_ratio: int = 5  # critic every step, generator every this many steps
    ema_start_step: int = 200  # EMA copies the generator until this step, then averages (train.ema_decay)
    # -- Self-Forcing rollouts and streaming long tuning
    rollout_frames: int = 12  # frames per training stream (longer than window + sink: the cache rolls)
    min_new_frames: int = 1  # new frames per window after the first (multiples of cache.chunk_frames)
    max_new_frames: int = 3  # <= train.latent_frames - 1: a window's first frame is always context
    supervise_first_window: bool = True  # DMD on frames [0, latent_frames) too (plain Self-Forcing)
    exit_step: str = "same"  # same (one random exit step for the stream) | per_chunk | last
    # -- prompt switches (the re-cache follows switch.mode, as inference)
    switch_prob: float = 0.5  # probability that a stream switches prompt once
    min_switch_frame: int = 4  # earliest switch frame (a window boundary)
    # -- reward-weighted DMD (Reward Forcing's Re-DMD) with the toy detector's motion score
    reward_beta: float = 0.0  # 0 = off; weight exp(beta * motion) per sample, normalised to batch mean 1
    # -- evaluation (streams through the inference pipeline, scored by the toy detector)
    eval_frames: int = 49

    def validate(self) -> None:
        if self.teacher_module not in ("ema", "model"):
            raise ConfigError(f"distill.teacher_module must be ema or model, got {self.teacher_module!r}")
        if self.init_module not in ("ema", "generator"):
            raise ConfigError(f"distill.init_module must be ema or generator, got {self.init_module!r}")
        if self.exit_step not in EXIT_STEP_MODES:
            raise ConfigError(f"distill.exit_step must be one of {EXIT_STEP_MODES}, got {self.exit_step!r}")
        if not 0 <= self.min_timestep < self.max_timestep <= 1000:
            raise ConfigError(f"need 0 <= distill.min_timestep < distill.max_timestep <= 1000, got "
                              f"{self.min_timestep}, {self.max_timestep}")
        if self.dfake_gen_update_ratio < 1:
            raise ConfigError(f"distill.dfake_gen_update_ratio must be >= 1, got {self.dfake_gen_update_ratio}")
        if len(self.betas) != 2:
            raise ConfigError(f"distill.betas must be [beta1, beta2], got {self.betas}")
        if not 1 <= self.min_new_frames <= self.max_new_frames:
            raise ConfigError(f"need 1 <= distill.min_new_frames <= distill.max_new_frames, got "
                              f"{self.min_new_frames}, {self.max_new_frames}")
        if not 0.0 <= self.switch_prob <= 1.0:
            raise ConfigError(f"distill.switch_prob must lie in [0, 1], got {self.switch_prob}")
        if self.ode_shard_size < 1 or self.ode_num_pairs < 1 or self.ode_teacher_steps < 1:
            raise ConfigError("distill.ode_num_pairs, ode_shard_size and ode_teacher_steps must be >= 1")


@dataclass
class DistillRunConfig(StreamGenConfig):
    """ODE initialisation and DMD distillation of the causal student (``train/ode_init.py``,
    ``train/distill.py``). The inherited sections are the student's: ``model`` is its shape, which is
    also the teacher's and the critic's (the student starts from the teacher); ``cache`` / ``sampler``
    / ``switch`` are its inference settings, used unchanged by the training rollouts."""

    train: TrainConfig = field(default_factory=lambda: TrainConfig(run_dir="runs/distill"))  # DMD
    ode: TrainConfig = field(default_factory=lambda: TrainConfig(run_dir="runs/ode_init"))  # ODE regression
    distill: DistillConfig = field(default_factory=DistillConfig)
    vae_path: str = "assets/vae"

    def validate(self) -> None:
        super().validate()
        c, d, T = self.cache.chunk_frames, self.distill, self.train.latent_frames
        if self.sampler.schedule != "chunkwise":
            raise ConfigError("distillation rollouts use sampler.schedule 'chunkwise'")
        if self.ode.latent_frames != T:
            raise ConfigError(f"ode.latent_frames ({self.ode.latent_frames}) must equal train.latent_frames ({T}): "
                              "both are the teacher's clip length")
        for name, v in (("train.latent_frames", T), ("distill.rollout_frames", d.rollout_frames),
                        ("distill.min_new_frames", d.min_new_frames), ("distill.max_new_frames", d.max_new_frames),
                        ("distill.min_switch_frame", d.min_switch_frame)):
            if v % c:
                raise ConfigError(f"{name}={v} must be a multiple of cache.chunk_frames={c}")
        if d.rollout_frames < T:
            raise ConfigError(f"distill.rollout_frames ({d.rollout_frames}) must be >= train.latent_frames ({T})")
        if d.rollout_frames > T and d.max_new_frames > T - 1:
            raise ConfigError(f"distill.max_new_frames ({d.max_new_frames}) must be <= train.latent_frames - 1 "
                              f"({T - 1}): a window after the first starts with a context frame")
        if d.switch_prob > 0 and not 0 < d.min_switch_frame < d.rollout_frames:
            raise ConfigError(f"distill.min_switch_frame ({d.min_switch_frame}) must lie in (0, rollout_frames)")

    def stream_config(self) -> StreamGenConfig:
        """The student's inference config (what ``StreamingPipeline`` loads from an export)."""
        sampler = dataclasses.replace(self.sampler, guidance_scale=1.0)
        return StreamGenConfig(model=self.model, cache=self.cache, sampler=sampler, switch=self.switch,
                               text=self.text, video=self.video)


def _valid_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        t = f.type if isinstance(f.type, type) else None
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if default is not None and dataclasses.is_dataclass(default):
            keys += _valid_keys(type(default), f"{prefix}{f.name}.")
        elif t is None or not dataclasses.is_dataclass(t):
            keys.append(prefix + f.name)
    return keys


def _section_keys(cls: type, full_key: str) -> list[str]:
    """Valid keys of the section that ``full_key`` (e.g. ``cache.windw``) points into."""
    parts = full_key.split(".")[:-1]
    node: Any = cls()
    for p in parts:
        node = getattr(node, p, None)
        if node is None or not dataclasses.is_dataclass(node):
            break
    else:
        return [f.name for f in dataclasses.fields(node)]
    return _valid_keys(cls)


def load_config(
    sources: Iterable[str | Path | dict] = (),
    overrides: Iterable[str] = (),
    schema: type = StreamGenConfig,
) -> Any:
    """Merge YAML files / dicts, then ``key=value`` dot-overrides, onto ``schema`` and validate.

    Raises ConfigError naming an unknown key and listing the valid keys of its section.
    """
    merged = OmegaConf.structured(schema)
    layers = []
    for src in sources:
        if isinstance(src, dict):
            layers.append((str(src), OmegaConf.create(src)))
        else:
            path = Path(src)
            if not path.is_file():
                raise ConfigError(f"config file not found: {path}")
            layers.append((str(path), OmegaConf.load(path)))
    overrides = list(overrides)
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"overrides must look like key=value (e.g. cache.window_frames=12), got {bad}")
        layers.append(("command-line overrides", OmegaConf.from_dotlist(overrides)))
    for name, layer in layers:
        try:
            merged = OmegaConf.merge(merged, layer)
        except ConfigKeyError as e:
            key = getattr(e, "full_key", None) or str(e)
            valid = ", ".join(_section_keys(schema, key))
            raise ConfigError(f"unknown config key {key!r} in {name}; valid keys here: {valid}") from None
        except OmegaConfBaseException as e:
            key = getattr(e, "full_key", "?")
            raise ConfigError(f"bad value for config key {key!r} in {name}: {e.msg if hasattr(e, 'msg') else e}") from None
    cfg = OmegaConf.to_object(merged)
    _tuplify(cfg)
    cfg.validate()
    return cfg


def _tuplify(obj: Any) -> None:
    """omegaconf turns tuples into lists; restore tuple-typed fields so configs stay hashable."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            _tuplify(v)
        elif isinstance(v, list) and "tuple" in str(f.type):
            setattr(obj, f.name, tuple(v))


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
