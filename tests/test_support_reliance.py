"""scripts.engine.support_reliance: swapping supports between episodes, and the ratio it reports."""

import torch

from scripts.data.episodes import EpisodeDataset
from scripts.data.latent_cache import LatentCache
from scripts.data.phantoms import phantom_volumes
from scripts.engine.support_reliance import main, rolled_support, support_reliance
from scripts.engine.training import EpisodeIteration, collate_episodes
from scripts.network.model_file import save_checkpoint_file
from scripts.network.presets import build_segmenter


def _batches(segmenter, shots=1):
    volumes = phantom_volumes(n_volumes=4, size=64, depth=12, seed=1)
    cache = LatentCache(segmenter.encode_images, "unshuffle").add_volumes(volumes)
    episodes = EpisodeDataset(volumes, train_values=[2, 3], test_values=[1, 4], label_source="gt",
                              n_episodes=8, seed=0, shots=shots)
    iteration = EpisodeIteration(cache)
    return [iteration.prepare(collate_episodes([episodes[i + j] for j in range(4)]), torch.device("cpu"))
            for i in range(0, 8, 4)]


def test_rolled_support_moves_whole_k_shot_supports_to_the_next_episode():
    torch.manual_seed(0)
    batch = _batches(build_segmenter(preset="tiny"), shots=3)[0]
    rolled = rolled_support(batch)
    assert batch["support_latent"].shape[0] == 12
    torch.testing.assert_close(rolled["support_latent"][3:6], batch["support_latent"][0:3])
    torch.testing.assert_close(rolled["support_mask"][0:3], batch["support_mask"][9:12])
    assert rolled["query_latent"] is batch["query_latent"]


def test_a_network_that_cannot_see_the_support_scores_a_ratio_of_one():
    torch.manual_seed(0)
    blind = build_segmenter(preset="tiny", use_qe=False, use_vtct=False, use_support_kv=False)
    result = support_reliance(blind, _batches(blind))
    assert result["ratio"] == 1.0 and result["batches"] == 2
    torch.manual_seed(0)
    seeing = build_segmenter(preset="tiny")
    assert support_reliance(seeing, _batches(seeing))["ratio"] != 1.0  # the support reaches the output


def test_command_line_measures_a_saved_model_on_the_runs_episodes(tmp_path, capsys):
    torch.manual_seed(0)
    model = tmp_path / "model.pt"
    save_checkpoint_file(build_segmenter(preset="tiny"), model)
    args = ["--checkpoint", str(model), "--episodes", "8", "--preset", "tiny",
            "--dataset_dir", str(tmp_path / "phantoms"), "--cache_dir", str(tmp_path / "latents")]
    results = main(args)
    assert set(results) == {"gt", "supervoxel"}
    assert all(r["ratio"] > 0 and r["batches"] >= 1 for r in results.values())
    assert "ratio" in capsys.readouterr().out
