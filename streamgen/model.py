"""Causal Wan2.1 DiT with diffusers' parameter layout.

The modules are diffusers' own (``WanTimeTextImageEmbedding``, ``WanTransformerBlock``, norms), so
the state dict is key-for-key that of ``WanTransformer3DModel`` and a diffusers checkpoint loads
with ``strict=True``. What streaming needs is ours: self-attention goes through an *attention
plan* (``FullAttention``, ``BlockCausalPlan`` or a ``CacheView`` of the rolling cache, all in
``streamgen.cache``), timesteps are per frame, cross-attention K/V are computed once per prompt,
and the forward is split into ``embed`` / ``run_blocks`` / ``head`` so pipeline-parallel ranks can
each run a contiguous range of blocks.

Tensor shapes: latents ``x`` are ``[B, C_in, F, H, W]``; tokens ``[B, L, D]`` with
``L = F' * H' * W'`` frame-major after patching; timesteps ``[B]`` or ``[B, F]``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn as nn
from diffusers.models.normalization import FP32LayerNorm
from diffusers.models.transformers.transformer_wan import WanTimeTextImageEmbedding, WanTransformerBlock

from .attention import attention, check_backend
from .cache import BlockCausalPlan, FullAttention, RollingKVCache, TokenGrid
from .config import CacheConfig, ModelConfig
from .sampler import NUM_TRAIN_TIMESTEPS, flow_from_x0


class SelfAttentionPlan(Protocol):
    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa") -> torch.Tensor: ...


@dataclass
class TextContext:
    """A prompt, embedded once: text tokens after the text projection and per-layer cross-attention K/V."""

    tokens: torch.Tensor  # [B, Lt, D]
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: K, V [B, Lt, H, Dh]
    pooled: torch.Tensor | None = None  # [B, D] added to the timestep embedding (config.pooled_text), else None


@dataclass
class TokenState:
    """Hidden state travelling through the blocks (what pipeline-parallel ranks send each other)."""

    hidden: torch.Tensor  # [B, L, D]
    modulation: torch.Tensor  # [B, F', 6, D] per-frame timestep modulation
    temb: torch.Tensor  # [B, F', D] per-frame timestep embedding (for the head)
    grid: TokenGrid
    frames: int  # F' (latent frames after temporal patching)


class BottleneckPatchEmbed(nn.Module):
    """Patch embedding through ``rank`` numbers per token: ``down`` (patch convolution, no bias) then
    ``up`` (a per-token linear map, as a 1x1x1 convolution). Same input and output as the full-rank
    ``nn.Conv3d(in_channels, dim, patch, stride=patch)``: ``[B, C, F, H, W] -> [B, D, F', H', W']``."""

    def __init__(self, in_channels: int, rank: int, dim: int, patch: tuple[int, int, int]):
        super().__init__()
        self.down = nn.Conv3d(in_channels, rank, kernel_size=patch, stride=patch, bias=False)
        self.up = nn.Conv3d(rank, dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


class CausalWanModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        check_backend(config.attention_backend)
        self.config = config
        d, pt = config.dim, config.patch_size
        in_channels = config.in_channels * (2 if config.self_conditioning else 1)
        if config.patch_embed_rank:
            self.patch_embedding = BottleneckPatchEmbed(in_channels, config.patch_embed_rank, d, pt)
        else:
            self.patch_embedding = nn.Conv3d(in_channels, d, kernel_size=pt, stride=pt)
        self.condition_embedder = WanTimeTextImageEmbedding(
            dim=d, time_freq_dim=config.freq_dim, time_proj_dim=d * 6, text_embed_dim=config.text_dim
        )
        if config.pooled_text:  # zero: the same function as without it until trained
            self.text_pool = nn.Linear(d, d)
            nn.init.zeros_(self.text_pool.weight)
            nn.init.zeros_(self.text_pool.bias)
        self.blocks = nn.ModuleList(
            WanTransformerBlock(d, config.ffn_dim, config.num_attention_heads, config.qk_norm, config.cross_attn_norm, config.eps)
            for _ in range(config.num_layers)
        )
        self.norm_out = FP32LayerNorm(d, config.eps, elementwise_affine=False)
        self.proj_out = nn.Linear(d, config.out_channels * math.prod(pt))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, d) / d**0.5)
        self.gradient_checkpointing = False

    # -- construction helpers ----------------------------------------------------------------
    @classmethod
    def from_diffusers_config(cls, cfg: dict, **overrides) -> "CausalWanModel":
        names = {f.name for f in dataclasses.fields(ModelConfig)}
        kw = {k: (tuple(v) if k == "patch_size" else v) for k, v in cfg.items() if k in names}
        return cls(ModelConfig(**{**kw, **overrides}))

    def diffusers_config(self) -> dict:
        c = self.config
        return dict(
            patch_size=tuple(c.patch_size), num_attention_heads=c.num_attention_heads, attention_head_dim=c.attention_head_dim,
            in_channels=c.in_channels, out_channels=c.out_channels, text_dim=c.text_dim, freq_dim=c.freq_dim,
            ffn_dim=c.ffn_dim, num_layers=c.num_layers, cross_attn_norm=c.cross_attn_norm, qk_norm=c.qk_norm, eps=c.eps,
        )

    def token_grid(self, height: int, width: int) -> TokenGrid:
        _, ph, pw = self.config.patch_size
        return TokenGrid(height // ph, width // pw)

    def new_cache(self, cache_cfg: CacheConfig, batch_size: int, height: int, width: int, *, max_frames: int | None = None,
                  device=None, dtype=None, layers: range | None = None) -> RollingKVCache:
        """A rolling cache shaped for this model and a latent frame size ``height x width``
        (only for blocks ``layers``, default all: a pipeline-parallel stage caches its own blocks)."""
        p = next(self.parameters())
        c = self.config
        layers = range(c.num_layers) if layers is None else layers
        return RollingKVCache(
            cache_cfg, len(layers), batch_size, c.num_attention_heads, c.attention_head_dim, self.token_grid(height, width),
            device=device or p.device, dtype=dtype or p.dtype, max_frames=max_frames, rope_theta=c.rope_theta,
            first_layer=layers.start,
        )

    def full_attention(self, num_frames: int, height: int, width: int, frame_start: int = 0) -> FullAttention:
        c = self.config
        return FullAttention(num_frames, self.token_grid(height, width), c.attention_head_dim, c.rope_theta, frame_start)

    def block_causal_plan(self, cache_cfg: CacheConfig, num_frames: int, height: int, width: int, frame_start: int = 0) -> BlockCausalPlan:
        c = self.config
        return BlockCausalPlan(cache_cfg, num_frames, self.token_grid(height, width), c.attention_head_dim, c.rope_theta, frame_start)

    # -- text --------------------------------------------------------------------------------
    def encode_context(self, text_states: torch.Tensor) -> TextContext:
        """Project text-encoder states ``[B, Lt, text_dim]`` and compute every layer's cross-attention K/V once."""
        return self.context_from_tokens(self.condition_embedder.text_embedder(text_states))

    def context_from_tokens(self, tokens: torch.Tensor) -> TextContext:
        """Cross-attention K/V of projected text ``tokens`` ``[B, Lt, D]`` for every block this model holds
        (a pipeline-parallel stage sets the blocks of other ranks to ``None``; their K/V entries are ``None``),
        and with ``config.pooled_text`` the pooled vector (the mean over all ``Lt`` positions, padding included:
        computed from the tokens alone, it is the same on every pipeline rank)."""
        pooled = self.text_pool(tokens.mean(1)) if self.config.pooled_text else None
        kv = []
        for block in self.blocks:
            if block is None:
                kv.append(None)
                continue
            a = block.attn2
            k = a.norm_k(a.to_k(tokens)).unflatten(2, (a.heads, -1))
            v = a.to_v(tokens).unflatten(2, (a.heads, -1))
            kv.append((k, v))
        return TextContext(tokens, kv, pooled)

    # -- forward pieces ----------------------------------------------------------------------
    def embed(self, x: torch.Tensor, timestep: torch.Tensor, x0_prev: torch.Tensor | None = None,
              pooled: torch.Tensor | None = None) -> TokenState:
        """Patchify latents (with ``config.self_conditioning``, beside the previous x0 estimate ``x0_prev``,
        zeros when None) and embed per-frame timesteps (plus ``TextContext.pooled`` when given)."""
        b, _, f, h, w = x.shape
        pt = self.config.patch_size[0]
        if self.config.self_conditioning:
            x = torch.cat([x, torch.zeros_like(x) if x0_prev is None else x0_prev.to(x.dtype)], dim=1)
        elif x0_prev is not None:
            raise ValueError("x0_prev given to a model without model.self_conditioning")
        hidden = self.patch_embedding(x).flatten(2).transpose(1, 2).contiguous()
        mod, temb = self.embed_timestep(timestep, b, f, hidden.dtype, x.device, pooled)
        return TokenState(hidden, mod, temb, self.token_grid(h, w), f // pt)

    def embed_timestep(self, timestep: torch.Tensor, b: int, f: int, dtype: torch.dtype, device=None,
                       pooled: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame modulation ``[B, F', 6, D]`` and embedding ``[B, F', D]`` of timesteps ``[B]`` or ``[B, F]``
        for ``F`` latent frames (pipeline-parallel ranks recompute these instead of receiving them); ``pooled``
        ``[B, D]`` (``TextContext.pooled``) is added to the embedding of every frame."""
        if (pooled is None) != (not self.config.pooled_text):
            raise ValueError("pass TextContext.pooled to embed exactly when model.pooled_text is set")
        pt = self.config.patch_size[0]
        frames = f // pt
        t = torch.as_tensor(timestep, device=device)
        if t.ndim == 0:
            t = t.expand(b)
        if t.ndim == 1:
            t = t[:, None].expand(b, frames)
        elif t.shape[1] == f and pt > 1:
            t = t[:, ::pt]  # one timestep per temporal patch
        if t.shape != (b, frames):
            raise ValueError(f"timestep must be [B] or [B, F] = [{b}, {f}], got {tuple(timestep.shape)}")
        ce = self.condition_embedder
        tproj = ce.timesteps_proj(t.reshape(-1).float())
        temb_dtype = next(ce.time_embedder.parameters()).dtype
        temb = ce.time_embedder(tproj.to(temb_dtype)).to(dtype)  # [B*F, D]
        if pooled is not None:
            temb = temb + pooled.to(dtype).repeat_interleave(frames, 0)
        mod = ce.time_proj(ce.act_fn(temb)).unflatten(-1, (6, -1))  # [B*F, 6, D]
        return mod.unflatten(0, (b, frames)), temb.unflatten(0, (b, frames))

    def run_blocks(self, state: TokenState, context: TextContext, attn: SelfAttentionPlan, layers: range | None = None) -> TokenState:
        """Run blocks ``layers`` (default: all) on ``state`` with self-attention through ``attn``."""
        layers = range(len(self.blocks)) if layers is None else layers
        hidden = state.hidden
        for i in layers:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden = torch.utils.checkpoint.checkpoint(
                    self._block, i, hidden, state, context, attn, use_reentrant=False
                )
            else:
                hidden = self._block(i, hidden, state, context, attn)
        return dataclasses.replace(state, hidden=hidden)

    def head(self, state: TokenState, out_shape: tuple[int, ...]) -> torch.Tensor:
        """Final norm, projection and unpatchify back to ``out_shape`` = ``[B, C_out, F, H, W]``."""
        b, _, f, h, w = out_shape
        pt, ph, pw = self.config.patch_size
        shift, scale = (self.scale_shift_table[:, None] + state.temb[:, :, None].float()).unbind(2)  # [B, F', D]
        x = _per_frame(state.hidden, state.frames)  # [B, F', T, D]
        x = (self.norm_out(x.float()) * (1 + scale[:, :, None]) + shift[:, :, None]).type_as(state.hidden)
        x = self.proj_out(x.flatten(1, 2))
        x = x.reshape(b, f // pt, h // ph, w // pw, pt, ph, pw, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)

    def output(self, raw: torch.Tensor, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """The flow from the head's output ``raw`` for input latents ``x`` ``[B, C, F, H, W]`` at ``timestep``
        ``[B]`` or ``[B, F]``: ``raw`` itself, or the flow its x0 implies (``config.prediction == "x0"``)."""
        if self.config.prediction == "flow":
            return raw
        b, _, f = x.shape[:3]
        sigma = torch.as_tensor(timestep, device=x.device, dtype=torch.float32) / NUM_TRAIN_TIMESTEPS
        sigma = sigma.reshape(-1, 1) if sigma.ndim <= 1 else sigma.reshape(-1, f)
        return flow_from_x0(x, raw, sigma.expand(b, f)[:, None, :, None, None]).to(raw.dtype)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: TextContext | torch.Tensor,
                attn: SelfAttentionPlan | None = None, x0_prev: torch.Tensor | None = None) -> torch.Tensor:
        """Flow prediction for latents ``x``. ``attn`` defaults to full bidirectional attention; ``x0_prev``:
        the previous x0 estimate (``config.self_conditioning`` only)."""
        if not isinstance(context, TextContext):
            context = self.encode_context(context)
        if attn is None:
            _, _, f, h, w = x.shape
            attn = self.full_attention(f // self.config.patch_size[0], h, w)
        state = self.run_blocks(self.embed(x, timestep, x0_prev, context.pooled), context, attn)
        return self.output(self.head(state, (x.shape[0], self.config.out_channels, *x.shape[2:])), x, timestep)

    def forward_cached(self, x: torch.Tensor, timestep: torch.Tensor, context: TextContext, cache: RollingKVCache,
                       *, write: bool = False, frame_start: int | None = None) -> torch.Tensor:
        """One chunk through the rolling cache; with ``write`` its K/V are stored and the cache advances."""
        view = cache.view(frame_start, x.shape[2] // self.config.patch_size[0], write)
        out = self.forward(x, timestep, context, view)
        if write:
            cache.commit(view)
        return out

    # -- one block -----------------------------------------------------------------------------
    def _block(self, i: int, hidden: torch.Tensor, state: TokenState, context: TextContext, attn: SelfAttentionPlan) -> torch.Tensor:
        """``WanTransformerBlock``'s computation with our self-attention and per-frame modulation."""
        blk = self.blocks[i]
        backend = self.config.attention_backend
        shift, scale, gate, c_shift, c_scale, c_gate = (
            (blk.scale_shift_table[:, None] + state.modulation.float()).unbind(2)  # each [B, F', D]
        )
        f = state.frames
        # 1. Self-attention through the plan.
        x = _modulate(blk.norm1(_per_frame(hidden, f).float()), shift, scale).type_as(hidden).flatten(1, 2)
        a = blk.attn1
        q = a.norm_q(a.to_q(x)).unflatten(2, (a.heads, -1))
        k = a.norm_k(a.to_k(x)).unflatten(2, (a.heads, -1))
        v = a.to_v(x).unflatten(2, (a.heads, -1))
        out = a.to_out[0](attn.attend(i, q, k, v, backend).flatten(2).type_as(hidden))
        hidden = (_per_frame(hidden, f).float() + _per_frame(out, f) * gate[:, :, None]).type_as(hidden).flatten(1, 2)
        # 2. Cross-attention with the prompt's cached K/V.
        c = blk.attn2
        x = blk.norm2(hidden.float()).type_as(hidden)
        q = c.norm_q(c.to_q(x)).unflatten(2, (c.heads, -1))
        ck, cv = context.kv[i]
        hidden = hidden + c.to_out[0](attention(q, ck, cv, None, backend).flatten(2).type_as(hidden))
        # 3. Feed-forward.
        x = _modulate(blk.norm3(_per_frame(hidden, f).float()), c_shift, c_scale).type_as(hidden)
        ff = blk.ffn(x.flatten(1, 2))
        return (_per_frame(hidden, f).float() + _per_frame(ff, f).float() * c_gate[:, :, None]).type_as(hidden).flatten(1, 2)


def _per_frame(x: torch.Tensor, frames: int) -> torch.Tensor:
    """``[B, F*T, D]`` -> ``[B, F, T, D]`` so per-frame modulation broadcasts over tokens."""
    return x.unflatten(1, (frames, -1))


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``x`` ``[B, F, T, D]``, ``shift``/``scale`` ``[B, F, D]``."""
    return x * (1 + scale[:, :, None]) + shift[:, :, None]
