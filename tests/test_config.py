import pytest

from streamgen.config import ConfigError, load_config


def test_loads_yaml_with_overrides():
    cfg = load_config(["configs/wan2.1_t2v_1.3b.yaml"], ["cache.window_frames=21", "cache.sink_policy=deep", "cache.sink_frames=9"])
    assert cfg.model.dim == 1536 and cfg.model.num_layers == 30
    assert cfg.model.patch_size == (1, 2, 2)
    assert (cfg.cache.window_frames, cfg.cache.sink_policy) == (21, "deep")


def test_unknown_key_lists_valid_keys(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("cache:\n  windw_frames: 12\n")
    with pytest.raises(ConfigError) as e:
        load_config([p])
    msg = str(e.value)
    assert "windw_frames" in msg and "window_frames" in msg and "sink_policy" in msg


def test_unknown_override_is_an_error():
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config([], ["model.nm_layers=3"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config([], ["model.num_layers"])


def test_invalid_value_is_an_error():
    with pytest.raises(ConfigError, match="multiple of chunk_frames"):
        load_config(["configs/tiny.yaml"], ["cache.window_frames=5"])
    with pytest.raises(ConfigError, match="num_layers"):
        load_config([], ["model.num_layers=abc"])


def test_video_size_must_tile_into_tokens():
    with pytest.raises(ConfigError, match="VAE's 8x"):
        load_config(["configs/tiny.yaml"], ["video.height=100"])
    # 136 = 17 latent positions: fine for patch 1, not for patch 2
    with pytest.raises(ConfigError, match="tokens of 16x16"):
        load_config(["configs/tiny.yaml"], ["video.height=136", "video.width=136"])
    assert load_config(["configs/tiny.yaml"], ["video.height=136", "video.width=136", "model.patch_size=[1,1,1]"]).video.height == 136


def test_image_every_must_be_off_or_a_period():
    from streamgen.config import TeacherRunConfig

    with pytest.raises(ConfigError, match="train.image_every"):
        load_config(["configs/teacher_toy.yaml"], ["train.image_every=1"], schema=TeacherRunConfig)
    assert load_config(["configs/teacher_toy.yaml"], ["train.image_every=3"], schema=TeacherRunConfig).train.image_every == 3
    for bad in (["train.crop=8"], ["train.crop_every=2"], ["train.crop=8", "train.crop_every=1"]):
        with pytest.raises(ConfigError, match="train.crop"):
            load_config(["configs/teacher_toy.yaml"], bad, schema=TeacherRunConfig)
