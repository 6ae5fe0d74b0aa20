"""Streaming decode equals whole-video decode, for diffusers' AutoencoderKLWan and the PCA VAE."""
import diffusers
import pytest
import torch
from diffusers import AutoencoderKLWan
from packaging.version import Version

from streamgen.vae import PCAVideoVAE, WanVAE, latent_frames, load_vae, pixel_frames
from helpers import rel_err


def tiny_wan_vae():
    torch.manual_seed(0)
    m = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True],
                         latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.5, 2.0, 1.0])
    return WanVAE(m)


def test_diffusers_version_in_tested_range():
    # WanStreamDecoder relies on AutoencoderKLWan's decoder(feat_cache=..., feat_idx=..., first_chunk=...)
    # and _cached_conv_counts; re-check tests/test_vae.py before widening setup.py's range.
    assert Version("0.35") <= Version(diffusers.__version__) < Version("0.50")
    assert "decoder" in AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1)._cached_conv_counts


@pytest.mark.parametrize("chunks", [[1, 2, 1], [2, 2], [1, 1, 1, 1]])
def test_wan_stream_decode_equals_whole(chunks):
    vae = tiny_wan_vae()
    z = torch.randn(1, 4, sum(chunks), 4, 4) * 0.5
    with torch.no_grad():
        whole = vae.model.decode(vae.denormalize(z)).sample  # diffusers' own whole-video decode
        dec = vae.stream_decoder()
        parts, i = [], 0
        for n in chunks:
            parts.append(dec.decode(z[:, :, i : i + n]))
            i += n
    streamed = torch.cat(parts, dim=2)
    assert streamed.shape == whole.shape == (1, 3, pixel_frames(sum(chunks)), 32, 32)
    assert (streamed - whole).abs().max().item() <= 1e-5


def test_wan_encode_normalises():
    vae = tiny_wan_vae()
    x = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    z = vae.encode(x)
    raw = vae.model.encode(x).latent_dist.mode()
    assert rel_err(vae.denormalize(z), raw) <= 1e-6 and z.shape[2] == latent_frames(5)


def _toy_clips(n, frames=9, seed=0):
    """Smooth random clips (moving blobs) without the toy world, enough to fit and check the PCA."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    clips = torch.empty(n, 3, frames, 32, 32)
    for i in range(n):
        cx, cy, vx = torch.rand(3, generator=g) * torch.tensor([32, 32, 2])
        col = torch.rand(3, generator=g) * 2 - 1
        for f in range(frames):
            blob = (((xx - cx - vx * f) ** 2 + (yy - cy) ** 2) < 40).float()
            clips[i, :, f] = -0.5 + blob * (col[:, None, None] + 0.5)
    return clips


def test_pca_vae_roundtrip_and_streaming(tmp_path):
    clips = _toy_clips(64)
    vae = PCAVideoVAE(z_dim=48)
    stats = vae.fit(clips)
    assert stats["explained"] > 0.9
    z = vae.encode(clips[:4])
    assert z.shape == (4, 48, 3, 4, 4)
    whole = vae.decode(z)
    assert rel_err(whole, clips[:4]) < 0.25
    dec = vae.stream_decoder()
    streamed = torch.cat([dec.decode(z[:, :, :1]), dec.decode(z[:, :, 1:3])], dim=2)
    assert (streamed - whole).abs().max().item() <= 1e-5
    vae.save(tmp_path / "vae")
    again = load_vae(tmp_path / "vae")
    assert torch.equal(again.encode(clips[:2]), vae.encode(clips[:2]))


def test_wrong_frame_count_is_a_clear_error():
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        latent_frames(8)


@pytest.mark.parametrize("power", [0.0, 0.5, 1.0])
def test_pca_latent_scale_power(power, tmp_path):
    """Channel c's latent std is proportional to std_c ** (1 - power), with unit average variance;
    0 keeps the PCA spectrum (one global scale), 1 whitens; the setting survives save / load."""
    import numpy as np

    from streamgen.data import frames_to_tensor
    from streamgen.toyworld.render import render_batch
    from streamgen.toyworld.world import sample_spec

    rng = np.random.default_rng(0)
    clips = frames_to_tensor(render_batch([sample_spec(rng, "train") for _ in range(24)], 9))
    vae = PCAVideoVAE(16, scale_power=power)
    vae.fit(clips)
    z = vae.encode(clips)[:, :, 1:]  # the 4-frame groups (the first frame has its own basis)
    latent_std = z.transpose(0, 1).flatten(1).std(dim=1)
    coeff_std = latent_std * vae.scale  # the component's own std, measured
    expected = coeff_std ** (1 - power)
    expected = expected / expected.pow(2).mean().sqrt()
    torch.testing.assert_close(latent_std, expected.float(), rtol=0.02, atol=1e-3)
    assert abs(float(z.pow(2).mean()) - 1.0) < 0.05
    if power == 0.0:
        assert float(vae.scale.max() / vae.scale.min()) < 1.0001  # one global scale
    vae.save(tmp_path)
    again = PCAVideoVAE.load(tmp_path)
    assert again.scale_power == power
    torch.testing.assert_close(again.encode(clips), vae.encode(clips))


def test_refined_pca_vae_starts_as_pca_streams_exactly_and_round_trips(tmp_path):
    """The learned decoder starts as the PCA decode (zero-initialised output), decodes each latent frame on
    its own (streaming equals whole-clip decode, with trained-like random weights), keeps the PCA encoder,
    and loads back through load_vae."""
    from streamgen.vae import RefinedPCAVAE

    clips = _toy_clips(64)
    pca = PCAVideoVAE(z_dim=48)
    pca.fit(clips)
    vae = RefinedPCAVAE.from_pca(pca, width=16, depth=1)
    z = vae.encode(clips[:3])
    assert torch.equal(z, pca.encode(clips[:3]))
    assert torch.equal(vae.decode(z), pca.decode(z))
    torch.manual_seed(0)
    for o in vae.refiner.out:
        torch.nn.init.normal_(o.weight, std=0.05)
    whole = vae.decode(z)
    assert (whole - pca.decode(z)).abs().max() > 1e-2  # the refiner now acts
    assert torch.allclose(vae.decode_train(z), whole, atol=1e-6)
    dec = vae.stream_decoder()
    streamed = torch.cat([dec.decode(z[:, :, :1]), dec.decode(z[:, :, 1:2]), dec.decode(z[:, :, 2:])], dim=2)
    assert (streamed - whole).abs().max().item() <= 1e-5
    vae.save(tmp_path / "vae")
    again = load_vae(tmp_path / "vae")
    assert type(again) is RefinedPCAVAE and torch.equal(again.decode(z), whole)
    pca.save(tmp_path / "plain")
    with pytest.raises(ValueError, match="not 'pca_refined'"):
        RefinedPCAVAE.load(tmp_path / "plain")


def test_layered_vae_decodes_renders_the_detector_reads_and_streams_exactly(tmp_path):
    """LayeredVAE on toy-world renders: the colour channels hold the spec's backdrop and object colours (read
    back from the renderer's palette, not from the encoder's own rule), decodes keep every detector attribute,
    any latent (noise included) decodes to blends of two colours per frame, streaming equals whole-clip decode, and
    the VAE loads back through load_vae."""
    import numpy as np

    from streamgen.data import frames_to_tensor
    from streamgen.toyworld.evaluate import evaluate_clip
    from streamgen.toyworld.render import render_batch
    from streamgen.toyworld.world import PALETTE, sample_spec
    from streamgen.vae import LayeredVAE

    rng = np.random.default_rng(0)
    vae = LayeredVAE(40)
    vae.fit(frames_to_tensor(render_batch([sample_spec(rng, "train") for _ in range(64)], 9)))
    specs = [sample_spec(rng, "any") for _ in range(12)]
    gt = render_batch(specs, 17)
    z = vae.encode(frames_to_tensor(gt))
    assert z.shape == (12, 40, 5, 16, 16)
    colours = z[:, :6, :, 0, 0] / vae.colour_gain * vae.colour_std.repeat(2)[None, :, None] + vae.colour_mean.repeat(2)[None, :, None]
    for spec, c in zip(specs, colours):
        want = torch.tensor([*PALETTE[spec.background], *PALETTE[spec.colour]], dtype=torch.float32) / 127.5 - 1
        torch.testing.assert_close(c, want[:, None].expand_as(c), atol=1e-4, rtol=0)
    whole = vae.decode(z)
    out = ((whole.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()
    rows = [evaluate_clip(o, s).row() for o, s in zip(out, specs)]
    for key in ("colour", "shape", "background", "presence"):
        assert np.mean([r[key] for r in rows]) >= 0.95, key
    dec = vae.stream_decoder()
    streamed = torch.cat([dec.decode(z[:, :, :1]), dec.decode(z[:, :, 1:3]), dec.decode(z[:, :, 3:])], dim=2)
    assert (streamed - whole).abs().max().item() <= 1e-5
    # any latent decodes, in each frame, to blends of one backdrop and one object colour: its colour channels'
    # frame means (computed here, independently of the decoder)
    noise = torch.randn(2, 40, 2, 16, 16)
    x = vae.decode(noise)
    to_colour = lambda c: c.mean(dim=(2, 3, 4)) / vae.colour_gain * vae.colour_std + vae.colour_mean  # noqa: E731
    bg0, fg0 = (to_colour(noise[:, i : i + 3, :1])[:, :, None, None, None] for i in (0, 3))  # first latent frame
    a = ((x[:, :, :1] - bg0) * (fg0 - bg0)).sum(1, keepdim=True) / (fg0 - bg0).pow(2).sum(1, keepdim=True)
    torch.testing.assert_close(x[:, :, :1], bg0 + (fg0 - bg0) * a, atol=1e-5, rtol=0)
    assert a.min() >= -1e-5 and a.max() <= 1 + 1e-5
    vae.save(tmp_path / "vae")
    again = load_vae(tmp_path / "vae")
    assert type(again) is LayeredVAE and torch.equal(again.encode(frames_to_tensor(gt[:2])), z[:2])


def _mass_centroid(alpha):
    """``alpha [B, F, H, W]`` -> mass ``[B, F]`` and centroid ``[B, F, 2]`` (x, y)."""
    mass = alpha.sum((2, 3))
    h, w = alpha.shape[-2:]
    cx = (alpha.sum(2) * torch.arange(w)).sum(-1) / mass
    cy = (alpha.sum(3) * torch.arange(h)).sum(-1) / mass
    return mass, torch.stack([cx, cy], -1)


def _physics_clips(rng):
    """Clips that bounce mid-group off each border, move diagonally at sub-pixel axis speeds, pulse, or stay still,
    plus 5 random ones."""
    from streamgen.toyworld.world import ClipSpec, centre_bounds, sample_spec

    x_lo, x_hi, y_lo, y_hi = centre_bounds("square", 26)
    return [
        ClipSpec("square", "red", "blue", "moving right", "quickly", 26, x=x_hi - 6, y=64),  # bounces in group 1
        ClipSpec("square", "white", "black", "moving left", "quickly", 26, x=x_lo + 10, y=40),  # in group 1, late
        ClipSpec("square", "cyan", "gray", "moving up", None, 26, x=70, y=y_lo + 5),
        ClipSpec("square", "green", "magenta", "moving down", "slowly", 26, x=50, y=y_hi - 2),
        ClipSpec("square", "orange", "black", "bouncing diagonally", "slowly", 26, x=x_hi - 3, y=y_lo + 2, dir_x=1, dir_y=-1),
        ClipSpec("triangle", "yellow", "blue", "pulsing", None, 24, x=64, y=64),
        ClipSpec("star", "black", "white", "still", None, 30, x=60, y=70),
    ] + [sample_spec(rng, "any") for _ in range(5)]


def test_tracked_layered_vae_replays_the_renderers_bounces_and_pulses(tmp_path):
    """TrackedLayeredVAE: every decoded frame's object sits where the renderer's is (its own physics is the
    reference) on clips that bounce mid-group off each border, move diagonally at sub-pixel axis
    speeds, pulse, or stay still; decodes keep every detector attribute; streaming equals whole-clip decode; with
    ``like=`` the colour and coverage channels equal the LayeredVAE's; it loads back through load_vae."""
    import numpy as np

    from streamgen.data import frames_to_tensor
    from streamgen.toyworld.evaluate import evaluate_clip
    from streamgen.toyworld.render import render_batch
    from streamgen.toyworld.world import sample_spec
    from streamgen.vae import LayeredVAE, TrackedLayeredVAE, frame_layers

    rng = np.random.default_rng(0)
    train = frames_to_tensor(render_batch([sample_spec(rng, "train") for _ in range(64)], 9))
    layered = LayeredVAE(40)
    layered.fit(train)
    vae = TrackedLayeredVAE(43)
    vae.fit(train, like=layered)
    specs = _physics_clips(rng)
    gt = render_batch(specs, 17)
    video = frames_to_tensor(gt)
    z = vae.encode(video)
    assert z.shape == (12, 43, 5, 16, 16)
    torch.testing.assert_close(z[:, :40, :1], layered.encode(video[:, :, :1]), rtol=0, atol=1e-5)  # same channels
    whole = vae.decode(z)
    # each frame's object where the renderer put it: centroid within 1.25 px per axis (hard-edged rasters move in
    # whole pixels; a missed bounce is off by 2-8 px), area within 15 % (pulsing)
    (m_gt, c_gt), (m_dec, c_dec) = (_mass_centroid((frame_layers(v, 1)[2][:, 0] > 0.5).float()) for v in (video, whole))
    err = (c_dec - c_gt).abs().amax(-1)  # [B, F]
    assert err.max() <= 1.25, (err.max(dim=1).values, err.argmax(dim=1))
    assert ((m_dec / m_gt - 1).abs().max() <= 0.15), (m_dec / m_gt).min(dim=1).values
    out = ((whole.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()
    rows = [evaluate_clip(o, s).row() for o, s in zip(out, specs)]
    for key in ("colour", "shape", "background", "presence", "motion"):
        assert np.nanmean([np.nan if r[key] is None else r[key] for r in rows]) == 1.0, key
    dec = vae.stream_decoder()
    streamed = torch.cat([dec.decode(z[:, :, :1]), dec.decode(z[:, :, 1:3]), dec.decode(z[:, :, 3:])], dim=2)
    assert (streamed - whole).abs().max().item() <= 1e-5
    vae.save(tmp_path / "vae")
    again = load_vae(tmp_path / "vae")
    assert type(again) is TrackedLayeredVAE and torch.equal(again.encode(video[:2]), z[:2])


def test_predictive_vae_places_every_later_frame_from_the_first_frame_and_the_tracks(tmp_path):
    """PredictiveTrackedVAE: decodes put each frame's object where the renderer's is (as the tracked VAE's test),
    and still do with every residual channel zeroed: the object's place in every later frame follows from the
    first frame and the track channels alone (a TrackedLayeredVAE latent with its later coverage zeroed has no
    object), and a star keeps its points over 30 s that way. A clip cut to another clip (new shape, place and
    colours) decodes both halves right (the residual makes the new outline the keyframe). Colours and the first
    frame are the tracked VAE's channels; streaming equals whole-clip decode; it loads back through load_vae."""
    import numpy as np

    from streamgen.data import frames_to_tensor
    from streamgen.toyworld.evaluate import evaluate_clip
    from streamgen.toyworld.render import render_batch
    from streamgen.toyworld.world import ClipSpec, sample_spec
    from streamgen.vae import PredictiveTrackedVAE, TrackedLayeredVAE, frame_layers

    rng = np.random.default_rng(0)
    train = frames_to_tensor(render_batch([sample_spec(rng, "train") for _ in range(64)], 9))
    tracked = TrackedLayeredVAE(43)
    tracked.fit(train)
    vae = PredictiveTrackedVAE.from_tracked(tracked, train)
    specs = _physics_clips(rng)
    gt = render_batch(specs, 17)
    video = frames_to_tensor(gt)
    z = vae.encode(video)
    assert z.shape == (12, 43, 5, 16, 16)
    zt = tracked.encode(video)
    # the same first latent frame (its zero track normalises with other statistics: forward vs backward tracks)
    torch.testing.assert_close(z[:, :-3, :1], zt[:, :-3, :1], rtol=0, atol=1e-5)
    torch.testing.assert_close(z[:, :6], zt[:, :6], rtol=0, atol=1e-5)  # the same colour channels
    k = vae.basis.shape[0]
    residual_free = z.clone()
    residual_free[:, 6 : 6 + k, 1:] = 0
    (m_gt, c_gt) = _mass_centroid((frame_layers(video, 1)[2][:, 0] > 0.5).float())
    # without residuals a pulsing outline is off by up to 1.5 px and 20 % in area (the size rate is linear, the
    # pulse a sine)
    for latents, tol, area in ((z, 1.25, 0.15), (residual_free, 1.5, 0.2)):
        whole = vae.decode(latents)
        m_dec, c_dec = _mass_centroid((frame_layers(whole, 1)[2][:, 0] > 0.5).float())
        err = (c_dec - c_gt).abs().amax(-1)  # [B, F]
        assert err.max() <= tol, (err.max(dim=1).values, err.argmax(dim=1))
        assert ((m_dec / m_gt - 1).abs().max() <= area), (m_dec / m_gt - 1).abs().max(dim=1).values
        out = ((whole.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()
        rows = [evaluate_clip(o, s).row() for o, s in zip(out, specs)]
        for key in ("colour", "shape", "background", "presence", "motion"):
            assert np.nanmean([np.nan if r[key] is None else r[key] for r in rows]) == 1.0, key
    whole = vae.decode(z)
    dec = vae.stream_decoder()
    streamed = torch.cat([dec.decode(z[:, :, :1]), dec.decode(z[:, :, 1:3]), dec.decode(z[:, :, 3:])], dim=2)
    assert (streamed - whole).abs().max().item() <= 1e-5
    vae.save(tmp_path / "vae")
    again = load_vae(tmp_path / "vae")
    assert type(again) is PredictiveTrackedVAE and torch.equal(again.encode(video[:2]), z[:2])
    # 30 s of a slow diagonal star from its first frame and tracks alone: its points survive (moving the previous
    # decoded frame instead of a keyframe eroded them within 10 s)
    star = ClipSpec("star", "red", "black", "bouncing diagonally", "slowly", 28, x=60, y=50, dir_x=1, dir_y=-1)
    long = frames_to_tensor(render_batch([star], 1 + 4 * 120))
    zl = vae.encode(long)
    zl[:, 6 : 6 + k, 1:] = 0
    out = ((vae.decode(zl).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[0].permute(1, 2, 3, 0).numpy()
    row = evaluate_clip(out[-32:], star).row()
    assert row["shape"] == 1.0 and row["presence"] == 1.0, row
    # a cut: frames 0-16 of one clip, then 16 frames of another
    a, b = specs[0], specs[5]
    cut = np.concatenate([render_batch([a], 17)[0], render_batch([b], 16)[0]])
    dec = vae.decode(vae.encode(frames_to_tensor(cut[None])))
    out = ((dec.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[0].permute(1, 2, 3, 0).numpy()
    for part, spec in ((out[:17], a), (out[21:], b)):  # the group holding the cut mixes the two
        row = evaluate_clip(part, spec).row()
        assert all(row[key] == 1.0 for key in ("colour", "shape", "background", "presence")), (spec, row)


def test_unfolded_tracks_keep_their_sign_through_a_bounce(tmp_path):
    """``PredictiveTrackedVAE(unfolded_tracks=True)``: the same clips decode to the same pixels as with canvas
    velocities, but a clip that bounces keeps its track's sign in every group (canvas velocities flip it), so one
    track repeated over every group decodes to an object that bounces off the border and goes on (with canvas
    velocities the same latents zig-zag: the object turns back at every group). Streaming equals whole-clip decode
    (the decoder carries the heading); ``unfolded_tracks`` survives save / load."""
    import numpy as np

    from streamgen.data import frames_to_tensor
    from streamgen.toyworld.render import render_batch
    from streamgen.toyworld.world import sample_spec
    from streamgen.vae import PredictiveTrackedVAE, TrackedLayeredVAE, frame_layers

    rng = np.random.default_rng(0)
    train = frames_to_tensor(render_batch([sample_spec(rng, "train") for _ in range(64)], 9))
    tracked = TrackedLayeredVAE(43)
    tracked.fit(train)
    canvas = PredictiveTrackedVAE.from_tracked(tracked, train)
    unfolded = PredictiveTrackedVAE(43, unfolded_tracks=True)
    unfolded.load_state_dict(canvas.state_dict())
    specs = _physics_clips(rng)[:4]  # right, left, up, down; each bounces off a border within the clip
    video = frames_to_tensor(render_batch(specs, 17))
    z_c, z_u = canvas.encode(video), unfolded.encode(video)
    assert (unfolded.decode(z_u) - canvas.decode(z_c)).abs().max().item() <= 1e-4  # float rounding of the negated track
    axis = [0, 0, 1, 1]  # the axis each clip moves on
    sign = [1, -1, -1, 1]  # its heading at frame 0 (x right, y down)
    t_c, t_u = canvas.tracks(z_c), unfolded.tracks(z_u)  # [B, 4, 3]
    for i, (a, s) in enumerate(zip(axis, sign)):
        assert (t_u[i, :, a] * s > 0.3).all(), t_u[i, :, a]
        assert (t_c[i, :, a] * s < -0.3).any(), t_c[i, :, a]  # the bounce flipped the canvas velocity
    # one track for every group: the first group's, as a generator that reads "moving right" would write it
    (m_gt, c_gt) = _mass_centroid((frame_layers(video, 1)[2][:, 0] > 0.5).float())
    errs = {}
    for name, vae, z in (("unfolded", unfolded, z_u), ("canvas", canvas, z_c)):
        same = z.clone()
        same[:, -3:, 2:] = same[:, -3:, 1:2]
        dec = vae.decode(same)
        c_dec = _mass_centroid((frame_layers(dec, 1)[2][:, 0] > 0.5).float())[1]
        errs[name] = (c_dec - c_gt).abs().amax(-1).amax(-1)  # [B] worst centroid error
        if name == "unfolded":
            dec_s = vae.stream_decoder()
            streamed = torch.cat([dec_s.decode(same[:, :, :2]), dec_s.decode(same[:, :, 2:])], dim=2)
            assert (streamed - dec).abs().max().item() <= 1e-5
    assert errs["unfolded"].max() <= 2.0, errs["unfolded"]
    assert errs["canvas"].min() > 4.0, errs["canvas"]
    unfolded.save(tmp_path / "vae")
    again = load_vae(tmp_path / "vae")
    assert again.unfolded_tracks and torch.equal(again.encode(video[:2]), z_u[:2])
