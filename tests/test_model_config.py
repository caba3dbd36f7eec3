"""The one typed model config: presets fill their parts, text parses by type, roles give every
key list that used to be written out by hand."""

import json

import pytest

from scripts.network.model_config import POST, RUNTIME, TRAINED, WEIGHTS, ModelConfig


def test_preset_fills_its_parts_and_explicit_keys_win():
    assert ModelConfig().autoencoder == "unshuffle" and ModelConfig().visual_encoder == "latent"
    sd15 = ModelConfig(preset="sd15")
    assert (sd15.autoencoder, sd15.mask_codec, sd15.visual_encoder) == ("sd-vae", "autoencoder", "dinov2")
    assert ModelConfig.from_keys(preset="compact", autoencoder="taef2", threshold=None).autoencoder == "taef2"
    assert ModelConfig.from_keys(threshold=None).threshold == 0.0  # None keeps the default


@pytest.mark.parametrize("keys, message", [
    (dict(preset="huge"), "unknown preset"),
    (dict(mask_codec="jpeg"), "mask_codec"),
    (dict(threshold_mode="median"), "threshold_mode"),
    (dict(component_3d="nearest"), "component_3d"),
    (dict(max_shots=0), "max_shots"),
    (dict(use_qe_typo=True), "unknown model keys"),
])
def test_bad_keys_are_refused_by_name(keys, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_keys(**keys)


def test_text_parses_as_the_fields_type():
    assert ModelConfig.parse("use_qe", "false") is False and ModelConfig.parse("keep_largest_3d", "True") is True
    assert ModelConfig.parse("threshold", "0.25") == 0.25 and ModelConfig.parse("max_shots", "5") == 5
    assert ModelConfig.parse("autoencoder", "taef2") == "taef2"
    assert ModelConfig.parse("preset", "") is None and ModelConfig.parse("unet_path", "null") is None
    with pytest.raises(ValueError, match="true or false"):
        ModelConfig.parse("use_vtct", "maybe")
    with pytest.raises(ValueError, match="unknown model key"):
        ModelConfig.parse("steps", "3")


def test_roles_cover_every_key_once_and_the_training_signature_keeps_its_keys():
    roles = [ModelConfig.keys(role) for role in (TRAINED, WEIGHTS, POST, RUNTIME)]
    assert sorted(sum(roles, ())) == sorted(ModelConfig.keys())
    # what resumed trainings compare: the keys checkpoints were signed with before the config existed
    assert set(ModelConfig.keys(TRAINED)) == {"preset", "autoencoder", "mask_codec", "visual_encoder", "use_qe",
                                              "use_vtct", "use_support_kv", "dice_weight"}
    config = ModelConfig(autoencoder="taef2")
    assert json.loads(json.dumps(config.to_dict())) == config.to_dict()
    assert ModelConfig.from_keys(**config.to_dict()) == config


def test_segmenter_owns_its_config_and_setting_a_key_replaces_it():
    from scripts.network.presets import build_segmenter

    segmenter = build_segmenter(preset="tiny", threshold=0.3, component_3d="largest")
    assert isinstance(segmenter.config, ModelConfig) and segmenter.threshold == 0.3
    segmenter.threshold = -0.5
    assert segmenter.config.threshold == -0.5 and segmenter.config.component_3d == "largest"
    with pytest.raises(ValueError, match="threshold_mode"):
        segmenter.threshold_mode = "median"
    assert segmenter.threshold_mode == "absolute"  # a refused value leaves the config as it was
    other = segmenter.with_net(segmenter.net)
    assert other.config == segmenter.config


def test_app_overrides_are_the_config_keys_a_request_does_not_set():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "monailabel_app"))
    from lib.configs.fewshot import MODEL_OVERRIDES, PER_REQUEST

    assert set(MODEL_OVERRIDES) | set(PER_REQUEST) == set(ModelConfig.keys())
    assert not set(MODEL_OVERRIDES) & set(PER_REQUEST)


def test_model_files_of_both_forms_load_and_a_bare_state_dict_needs_its_card(tmp_path):
    """The zoo form (state dict + card) and the single-file form hold the same weights and config;
    a state dict without its card cannot be made a single file, and loads only with the keys given."""
    import torch

    from scripts.network.autoencoders import WeightsError
    from scripts.network.model_file import as_single_file, card_path, load_checkpoint_file, save_zoo_model
    from scripts.network.presets import build_segmenter

    torch.manual_seed(0)
    model = build_segmenter(preset="tiny", use_qe=False, threshold=0.2)
    zoo = tmp_path / "model.pt"
    save_zoo_model(model, zoo, half=False, trained_on={"datasets": [{"dataset": "phantom", "patients": ["1"]}]})
    assert card_path(zoo).name == "model.card.json"
    single = tmp_path / "single.pt"
    as_single_file(zoo, single)
    for path in (zoo, single):
        stored = load_checkpoint_file(path)
        assert stored["config"] == model.config.to_dict() and stored["trained_on"]["datasets"][0]["patients"] == ["1"]
        again = build_segmenter(checkpoint=path)
        assert again.config.use_qe is False and again.threshold == 0.2
        assert all(torch.equal(a, b) for a, b in zip(again.net.state_dict().values(), model.net.state_dict().values()))
    card_path(zoo).unlink()
    with pytest.raises(WeightsError, match="no card"):
        as_single_file(zoo, tmp_path / "other.pt")
    with pytest.raises(WeightsError, match="does not fit"):  # the defaults' architecture (QE on) is not this file's
        build_segmenter(checkpoint=zoo, preset="tiny")
    assert build_segmenter(checkpoint=zoo, preset="tiny", use_qe=False).config.use_qe is False
