"""The streaming pipeline: text in, decoded frames out, chunk by chunk, forever.

    pipe = StreamingPipeline.from_pretrained()          # the embedded toy-world default
    for chunk in pipe.stream("a red circle moving right on a black background", seconds=10):
        show(chunk.frames)                              # [n, H, W, 3] uint8, as soon as decoded
        if user_typed: pipe.set_prompt(new_text)        # takes effect on the next chunk

Each chunk is denoised through the rolling KV cache (``rollout.generate_chunk``), its K/V are
committed at the context noise level, and its latents are decoded by the streaming VAE decoder at
once. A prompt switch (from a timeline or ``set_prompt``) swaps the cross-attention K/V and, per
``switch.mode``, re-caches the window under the new prompt (``recache``), does nothing more
(``none``), or interpolates text embeddings over a few chunks (``blend``).

``sampler.schedule: rolling`` (Rolling Forcing joint-window denoising) keeps up to ``T`` chunks in
flight (``T`` = number of sigmas): each tick runs ONE forward over ``[c, ..., c + T - 1]`` where chunk
``c + j`` is at sigma index ``T - 1 - j`` (``rollout.rolling_tick``, attention rule in
``cache.JointCacheView``), then ``denoise_step`` per chunk: the oldest yields its final x0, which is
committed, remembered and decoded; the others are re-noised with the same seeded noise keys as the
chunkwise schedule; a new chunk enters with its initial noise. Warm-up ticks hold fewer chunks and a
finite stream drains at the end. Prompt switch rule under ``rolling``: a switch (timeline or
``set_prompt``) is applied at the tick its chunk *enters* (``set_prompt``: the next chunk to enter);
from that tick on the whole joint forward, and the commit of the chunks finishing then, use the new
prompt, so the ``T - 1`` older in-flight chunks finish their remaining steps under it; ``recache``
re-computes the committed window at that tick before the forward, ``blend`` advances once per
entering chunk. ``ChunkOutput.prompt`` is the prompt in effect when the chunk entered.
"""
from __future__ import annotations

import logging
import math
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .cache import RollingKVCache
from .config import StreamGenConfig, load_config
from .model import CausalWanModel, TextContext
from .rollout import commit_chunk, generate_chunk, recache, remember_chunk, rolling_tick
from .sampler import few_step_sigmas, seeded_noise
from .text import TextEncoder, load_text_encoder
from .timeline import Timeline, chunk_of_frame
from .vae import PCAVideoVAE, StreamDecoder, VideoVAE, load_vae, pixel_frames
from .video import to_uint8

log = logging.getLogger(__name__)

ASSETS = Path(os.environ.get("STREAMGEN_ASSETS", Path(__file__).resolve().parent.parent / "assets"))
DEFAULT_MODEL_DIR = ASSETS / "default"

# noise-stream keys (with the seed and chunk index) so every process draws the same noise
_INIT, _CONTEXT = 0, 10_000


@dataclass
class ChunkOutput:
    index: int  # chunk number
    first_frame: int  # pixel index of frames[0] in the video
    frames: np.ndarray  # [n, H, W, 3] uint8
    latents: torch.Tensor  # [1, z, chunk_frames, h, w]
    prompt: str


@dataclass
class InFlight:
    """A chunk of the rolling schedule between entering and finishing."""

    chunk: int
    x: torch.Tensor  # latents at sigma index ``step`` (the input of its next step)
    step: int
    prompt: str  # prompt in effect when it entered


@dataclass
class StreamState:
    """Everything one stream carries between chunks."""

    cache: RollingKVCache
    decoder: StreamDecoder
    prompt: str
    text_states: torch.Tensor  # [1, Lt, text_dim] of the prompt in effect
    context: TextContext
    seed: int
    chunk: int = 0
    sink_chunks: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (frame_start, clean latents)
    recent_chunks: deque = field(default_factory=deque)  # (frame_start, clean latents) still in the window
    blend_from: torch.Tensor | None = None  # text states being blended away from
    blend_step: int = 0
    pending_prompt: str | None = None
    # rolling schedule only
    in_flight: deque = field(default_factory=deque)  # InFlight, oldest first
    next_enter: int = 0  # next chunk to enter the joint window
    end_chunk: int | None = None  # chunks of a finite stream (None: forever)
    switches: dict = field(default_factory=dict)  # chunk -> prompt, applied when that chunk enters
    tick_context: TextContext | None = None  # context of the joint forward (newest prompt / blend)


class StreamingPipeline:
    def __init__(self, model: CausalWanModel, vae: VideoVAE, text_encoder: TextEncoder, config: StreamGenConfig,
                 *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, description: str = ""):
        self.model = model.to(device=device, dtype=dtype).eval()
        self.vae = vae.to(device=device).eval()
        self.text_encoder, self.config = text_encoder, config
        self.device, self.dtype, self.description = torch.device(device), dtype, description
        self.sigmas = few_step_sigmas(config.sampler.denoising_steps, config.sampler.shift, config.sampler.warp)
        self.state: StreamState | None = None
        self.rolling = config.sampler.schedule == "rolling"

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, overrides: list[str] = (), *, device="cpu",
                        dtype: torch.dtype = torch.float32, config_files: list[str] = ()) -> "StreamingPipeline":
        """Load a model directory (``config.yaml``, ``transformer.safetensors`` or any Wan checkpoint
        format ``streamgen.loaders`` reads, ``vae/``); ``None`` = the embedded default."""
        from .loaders import load_wan_weights

        d = Path(path) if path is not None else DEFAULT_MODEL_DIR
        cfg = cls.load_config(path, overrides, config_files)
        model = CausalWanModel(cfg.model)
        weights = d / "transformer.safetensors"
        description = f"model {d}"
        if weights.is_file():
            load_wan_weights(model, weights)
        elif path is None:
            torch.manual_seed(0)
            description = ("NO TRAINED DEFAULT MODEL in assets/default yet: using a RANDOMLY INITIALISED "
                           "transformer, so the video is structured noise, not the prompt")
            log.warning(description)
        else:
            raise FileNotFoundError(f"{d} has no transformer.safetensors")
        vae = load_vae(d / "vae") if (d / "vae").is_dir() else load_vae(ASSETS / "vae")
        text = load_text_encoder(cfg.text.encoder, cfg.text.path or None, max_length=cfg.text.max_length, device=device)
        return cls(model, vae, text, cfg, device=device, dtype=dtype, description=description)

    @staticmethod
    def load_config(path: str | Path | None = None, overrides: list[str] = (), config_files: list[str] = ()) -> StreamGenConfig:
        """The validated config of a model directory (``None``: the embedded default) with overrides."""
        d = Path(path) if path is not None else DEFAULT_MODEL_DIR
        cfg_file = d / "config.yaml"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"{d} has no config.yaml: pass a streamgen model directory")
        return load_config([cfg_file, *config_files], overrides)

    # -- geometry ----------------------------------------------------------------------------
    @property
    def chunk_frames(self) -> int:
        return self.config.cache.chunk_frames

    def latent_shape(self) -> tuple[int, ...]:
        v = self.config.video
        return (1, self.vae.z_dim, self.chunk_frames, v.height // self.vae.spatial, v.width // self.vae.spatial)

    def chunk_pixel_frames(self, chunk: int) -> int:
        return pixel_frames(self.chunk_frames, self.vae.temporal, first=chunk == 0)

    def chunks_for(self, num_frames: int) -> int:
        first = self.chunk_pixel_frames(0)
        return 1 + max(0, math.ceil((num_frames - first) / self.chunk_pixel_frames(1)))

    # -- prompts -----------------------------------------------------------------------------
    def _text(self, prompt: str) -> torch.Tensor:
        return self.text_encoder.encode([prompt]).to(self.device, self.dtype)

    def set_prompt(self, prompt: str) -> None:
        """Switch the prompt live; it takes effect on the next chunk (``rolling``: the next chunk to enter)."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("set_prompt needs a non-empty string")
        if self.state is None:
            raise RuntimeError("no stream is running: start one with pipe.stream(prompt)")
        self.state.pending_prompt = prompt.strip()

    def _apply_switch(self, prompt: str, recache: bool = True) -> bool:
        """Switch to ``prompt``; returns whether the mode re-caches, which happens here unless ``recache``
        is False (the pipeline-parallel first rank runs the re-cache passes itself)."""
        st, mode = self.state, self.config.switch.mode
        if prompt == st.prompt:
            return False
        new_states = self._text(prompt)
        if mode == "blend":
            st.blend_from, st.blend_step = st.text_states, 0
        st.prompt, st.text_states = prompt, new_states
        st.context = self.model.encode_context(new_states)
        if mode == "recache" and recache:
            self.recache()
        return mode == "recache"

    def _chunk_context(self) -> TextContext:
        st = self.state
        if st.blend_from is None:
            return st.context
        st.blend_step += 1
        a = st.blend_step / self.config.switch.blend_chunks
        ctx = self.model.encode_context(torch.lerp(st.blend_from, st.text_states, a))
        if st.blend_step >= self.config.switch.blend_chunks:
            st.blend_from = None
        return ctx

    @torch.no_grad()
    def recache(self) -> None:
        """Re-compute the cache from the kept clean latents under the current prompt (LongLive)."""
        st = self.state
        recache(st.cache, st.sink_chunks, st.recent_chunks, self._commit)

    def _commit(self, latents: torch.Tensor, frame_start: int) -> None:
        sigma, noise = self._context_noise(latents.shape, frame_start)
        commit_chunk(self.model, self.state.cache, self.state.context, latents, sigma, noise, frame_start=frame_start)

    def _context_noise(self, shape, frame_start: int) -> tuple[float, torch.Tensor | None]:
        """Noise level and noise of the pass that commits a chunk's K/V."""
        sigma = self.config.sampler.context_timestep / 1000.0
        noise = seeded_noise(shape, self.state.seed, frame_start, _CONTEXT, device=self.device, dtype=self.dtype) if sigma > 0 else None
        return sigma, noise

    def _step_noise(self, chunk: int, i: int) -> torch.Tensor:
        """Initial noise (``i = 0``) or re-noising noise before step ``i`` of ``chunk``."""
        return seeded_noise(self.latent_shape(), self.state.seed, chunk, _INIT + i, device=self.device, dtype=self.dtype)

    def _switch_chunks(self, timeline: Timeline) -> dict[int, str]:
        """Chunk -> prompt switched to at its start."""
        return {chunk_of_frame(e.frame, self.chunk_frames, self.vae.temporal): e.prompt for e in timeline.switches()}

    # -- streaming ---------------------------------------------------------------------------
    def start(self, prompt: str, seed: int = 0, max_frames: int | None = None) -> None:
        """Begin a new stream (``stream`` calls this)."""
        c, v = self.config, self.config.video
        states = self._text(prompt)
        max_latent = None if c.cache.bounded else self.chunks_for(max_frames or 1) * self.chunk_frames
        cache = self.model.new_cache(c.cache, 1, v.height // self.vae.spatial, v.width // self.vae.spatial,
                                     max_frames=max_latent, device=self.device, dtype=self.dtype)
        self.state = StreamState(cache, self.vae.stream_decoder(), prompt, states, self.model.encode_context(states), seed)

    @torch.no_grad()
    def next_chunk(self, decode: bool = True) -> ChunkOutput:
        """Generate, commit and (unless ``decode`` is False, for DiT-only timing) decode one chunk."""
        if self.rolling:
            return self._next_chunk_rolling(decode)
        st, C = self.state, self.chunk_frames
        if st.pending_prompt is not None:
            prompt, st.pending_prompt = st.pending_prompt, None
            self._apply_switch(prompt)
        context = self._chunk_context()
        frame_start = st.chunk * C
        chunk = st.chunk
        x0 = generate_chunk(self.model, st.cache, context, self.sigmas, lambda i: self._step_noise(chunk, i))
        saved_ctx, st.context = st.context, context
        self._commit(x0, frame_start)
        st.context = saved_ctx
        self._remember(frame_start, x0)
        return self._output(x0, st.prompt, decode)

    def _output(self, x0: torch.Tensor, prompt: str, decode: bool) -> ChunkOutput:
        """Decode finished chunk ``state.chunk`` and advance the output counter."""
        st = self.state
        frames = to_uint8(st.decoder.decode(x0.to(torch.float32))) if decode else np.zeros((0, 0, 0, 3), np.uint8)
        first = 0 if st.chunk == 0 else self.chunk_pixel_frames(0) + (st.chunk - 1) * self.chunk_pixel_frames(1)
        out = ChunkOutput(st.chunk, first, frames, x0, prompt)
        st.chunk += 1
        return out

    # -- rolling schedule ----------------------------------------------------------------------
    def _next_chunk_rolling(self, decode: bool) -> ChunkOutput:
        """Run ticks until the oldest in-flight chunk finishes (``T`` ticks at warm-up, then one)."""
        while True:
            out = self._tick(decode)
            if out is not None:
                return out

    @torch.no_grad()
    def _tick(self, decode: bool = True) -> ChunkOutput | None:
        """One joint forward over the in-flight chunks; returns the chunk that finished, if any."""
        st, C, T = self.state, self.chunk_frames, len(self.sigmas)
        if st.end_chunk is None or st.next_enter < st.end_chunk:
            k = st.next_enter
            if k in st.switches and st.pending_prompt is None:
                st.pending_prompt = st.switches[k]
            if st.pending_prompt is not None:
                prompt, st.pending_prompt = st.pending_prompt, None
                self._apply_switch(prompt)  # recache (per switch.mode) before this tick's forward
            st.tick_context = self._chunk_context()
            st.in_flight.append(InFlight(k, self._step_noise(k, 0), 0, st.prompt))
            st.next_enter += 1
        if not st.in_flight:
            raise RuntimeError("the stream has ended: every chunk was generated")
        fl = list(st.in_flight)
        assert fl[0].chunk == st.chunk and [f.chunk for f in fl] == list(range(fl[0].chunk, fl[0].chunk + len(fl)))
        res = rolling_tick(self.model, st.cache, st.tick_context, [f.x for f in fl], [f.step for f in fl], self.sigmas,
                           [lambda i, c=f.chunk: self._step_noise(c, i) for f in fl], frame_start=fl[0].chunk * C)
        for f, (_, x_next) in zip(fl, res):
            f.x, f.step = x_next, f.step + 1
        if fl[0].step < T:
            return None
        done, x0 = st.in_flight.popleft(), res[0][0]
        saved_ctx, st.context = st.context, st.tick_context
        self._commit(x0, done.chunk * C)
        st.context = saved_ctx
        self._remember(done.chunk * C, x0)
        return self._output(x0, done.prompt, decode)

    def _remember(self, frame_start: int, x0: torch.Tensor) -> None:
        st = self.state
        remember_chunk(st.cache, st.sink_chunks, st.recent_chunks, frame_start, x0)

    def stream(self, prompt: str | Timeline, seconds: float | None = None, *, num_frames: int | None = None,
               seed: int = 0) -> Iterator[ChunkOutput]:
        """Yield decoded chunks until ``seconds`` (or ``num_frames``) of video exist; ``None`` = forever."""
        fps = self.config.video.fps
        timeline = prompt if isinstance(prompt, Timeline) else Timeline.single(prompt)
        total = num_frames if num_frames is not None else (None if seconds is None else int(round(seconds * fps)))
        self.start(timeline.events[0].prompt, seed, total)
        switches = self._switch_chunks(timeline)
        if self.rolling:  # switches apply when their chunk enters the joint window; drain at the end
            self.state.switches = switches
            self.state.end_chunk = None if total is None else self.chunks_for(total)
        made = 0
        while total is None or made < total:
            c = self.state.chunk
            if not self.rolling and c in switches and self.state.pending_prompt is None:
                self.state.pending_prompt = switches[c]
            out = self.next_chunk()
            if total is not None and made + len(out.frames) > total:
                out.frames = out.frames[: total - made]
            made += len(out.frames)
            yield out

    def generate(self, prompt: str | Timeline, seconds: float | None = None, *, num_frames: int | None = None,
                 seed: int = 0) -> np.ndarray:
        """The whole video ``[F, H, W, 3]`` uint8."""
        return np.concatenate([c.frames for c in self.stream(prompt, seconds, num_frames=num_frames, seed=seed)])
