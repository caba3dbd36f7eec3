"""The MONAI bundle's workflows, run as a MONAI user runs them (mostly in-process: `import monai`
alone costs ~9 s, so only the commands whose CLI is the point run as subprocesses)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
PY = sys.executable
TRAIN = str(BUNDLE / "configs" / "train.yaml")
EVALUATE = str(BUNDLE / "configs" / "evaluate.yaml")
INFERENCE = str(BUNDLE / "configs" / "inference.yaml")
MULTI_GPU = str(BUNDLE / "configs" / "multi_gpu_train.yaml")
META = str(BUNDLE / "configs" / "metadata.json")


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    from scripts.data.phantoms import write_phantom_dataset

    return write_phantom_dataset(tmp_path_factory.mktemp("phantoms"), n_volumes=10, size=64, depth=12, seed=3)


def quick_args(phantom_dir, out_dir, **extra):
    """A seconds-long training: tiny U-Net, 2 epochs of 4 steps on the phantoms."""
    args = dict(dataset="phantom", dataset_dir=str(phantom_dir), preset="tiny", steps=8, steps_per_epoch=4,
                batch_size=2, val_interval=2, ckpt_interval=4, val_queries=1, run_name="t",
                output_dir=str(out_dir), cache_dir=str(out_dir / "cache"), bundle_root=str(BUNDLE))
    args.update(extra)
    return args


def cli(args: dict) -> list[str]:
    out = []
    for key, value in args.items():
        out += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return out


def run_workflow(config_file, run_id, **args):
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(config_file=config_file, meta_file=META, workflow_type="train" if run_id == "training" else "infer",
                              run_id=run_id, **args)
    workflow.initialize()
    result = workflow.run()
    workflow.finalize()
    return workflow, result


@pytest.fixture(scope="module")
def trained(phantom_dir, tmp_path_factory):
    """One real `python -m monai.bundle run training` from bundle/, as the zoo runs it."""
    out = tmp_path_factory.mktemp("run")
    env = dict(os.environ, OMP_NUM_THREADS="2")
    cmd = [PY, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.yaml",
           *cli(quick_args(phantom_dir, out, bundle_root="."))]
    proc = subprocess.run(cmd, cwd=BUNDLE, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout + proc.stderr


def test_training_writes_checkpoints_events_and_model(trained):
    out, log = trained
    assert (out / "checkpoints" / "checkpoint_iteration=8.pt").is_file()
    assert (out / "checkpoints" / "best_ema.pt").is_file()
    assert list(out.glob("events.out.tfevents.*"))
    assert "val_mean_dice" in log
    from scripts.network.model_file import load_checkpoint_file

    stored = load_checkpoint_file(out / "model.pt")
    assert stored["config"]["preset"] == "tiny" and "conv_in_ref.weight" in stored["state_dict"]
    # the zoo's form: a bare state dict (what CheckpointLoader and ckpt_export load), its card beside it
    assert "conv_in_ref.weight" in torch.load(out / "model.pt", weights_only=True)


def test_workflows_have_the_properties_monai_expects(trained, phantom_dir, tmp_path):
    from monai.bundle import ConfigWorkflow

    args = quick_args(phantom_dir, tmp_path)
    train = ConfigWorkflow(config_file=TRAIN, meta_file=META, workflow_type="train", **args)
    train.initialize()
    assert train.check_properties() == []
    infer = ConfigWorkflow(config_file=INFERENCE, meta_file=META, workflow_type="infer", bundle_root=str(BUNDLE),
                           checkpoint=str(trained[0] / "model.pt"), model=f"%{trained[0] / 'model.card.json'}#config",
                           support_image=str(phantom_dir / "image_1.nii.gz"),
                           support_label=str(phantom_dir / "label_1.nii.gz"),
                           query_images=[str(phantom_dir / "image_2.nii.gz")])
    infer.initialize()
    assert infer.check_properties() == []
    evaluate = ConfigWorkflow(config_file=[TRAIN, EVALUATE], meta_file=META, workflow_type="infer",
                              **quick_args(phantom_dir, trained[0]))
    evaluate.initialize()
    assert evaluate.check_properties() == []


def test_interrupted_training_resumes_with_its_optimizer_and_schedule(phantom_dir, tmp_path):
    """A run stopped after epoch 1 (iteration 4 of 8) continues from its checkpoint to the end:
    the trainer, optimizer and LR schedule carry on instead of starting again."""
    args = quick_args(phantom_dir, tmp_path, val_interval=100)
    args["train#trainer#max_epochs"] = 1  # the "interruption": the process ends after epoch 1
    run_workflow(TRAIN, "training", **args)
    first = torch.load(tmp_path / "checkpoints" / "checkpoint_iteration=4.pt", weights_only=False)
    assert first["trainer"]["iteration"] == 4
    assert first["optimizer"]["state"][0]["step"] == 4
    del args["train#trainer#max_epochs"]
    workflow, _ = run_workflow(TRAIN, "training", **args)
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert trainer.state.iteration == 8
    final = torch.load(tmp_path / "checkpoints" / "checkpoint_iteration=8.pt", weights_only=False)
    assert final["optimizer"]["state"][0]["step"] == 8  # 4 restored + 4 new, not 4 from scratch
    assert final["lr_scheduler"]["last_epoch"] == 8
    assert workflow.parser.get_parsed_content("train#optimizer").param_groups[0]["lr"] == pytest.approx(0.0)
    # exact: the augmentation's random stream is restored too, so the weights are the uninterrupted run's
    assert "augment" in first
    straight = quick_args(phantom_dir, tmp_path / "straight", val_interval=100)
    run_workflow(TRAIN, "training", **straight)
    resumed = torch.load(tmp_path / "checkpoints" / "checkpoint_iteration=8.pt", weights_only=False)["network"]
    uninterrupted = torch.load(tmp_path / "straight" / "checkpoints" / "checkpoint_iteration=8.pt",
                               weights_only=False)["network"]
    for name, tensor in uninterrupted.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-6, msg=name)


def test_a_changed_training_never_resumes_another_runs_checkpoint(phantom_dir, tmp_path):
    """A rerun under the same run folder with another label source, step budget or fold stops with
    an error naming what differs, and leaves the old checkpoint as it was; a checkpoint written
    before signatures existed still resumes, with a warning."""
    from scripts.engine.resume import SIGNATURE_KEY, ResumeMismatchError

    args = quick_args(phantom_dir, tmp_path, val_interval=100)
    args["train#trainer#max_epochs"] = 1
    run_workflow(TRAIN, "training", **args)
    del args["train#trainer#max_epochs"]
    checkpoint = tmp_path / "checkpoints" / "checkpoint_iteration=4.pt"
    written = checkpoint.read_bytes()
    assert torch.load(checkpoint, weights_only=False)[SIGNATURE_KEY]["trained_on"]["label_source"] == "both"
    for change, named in (({"label_source": "supervoxel"}, "trained_on.label_source: \"both\" there, \"supervoxel\" here"),
                          ({"steps": 12}, "steps: 8 there, 12 here"),
                          ({"fold": 1}, "trained_on.datasets[0].patients")):
        with pytest.raises(RuntimeError) as caught:  # the bundle's config parser wraps what an expression raises
            run_workflow(TRAIN, "training", **{**args, **change})
        cause = caught.value.__cause__
        assert isinstance(cause, ResumeMismatchError)
        assert named in str(cause) and "--run_name" in str(cause)
        assert sorted(p.name for p in (tmp_path / "checkpoints").glob("checkpoint_*.pt")) == [checkpoint.name]
        assert checkpoint.read_bytes() == written
    legacy = torch.load(checkpoint, weights_only=False)
    del legacy[SIGNATURE_KEY]
    torch.save(legacy, checkpoint)
    with pytest.warns(UserWarning, match="no training signature"):
        workflow, _ = run_workflow(TRAIN, "training", **args)
    assert workflow.parser.get_parsed_content("train#trainer").state.iteration == 8


def test_evaluate_writes_the_protocol_tables(trained, phantom_dir, tmp_path):
    out, _ = trained
    args = quick_args(phantom_dir, out, eval_dir=str(tmp_path / "eval"), modes=["ep1", "no_oracle"])
    run_workflow([TRAIN, EVALUATE], "evaluating", **args)
    for mode in ("ep1", "no_oracle"):
        summary = json.loads((tmp_path / "eval" / mode / "results.json").read_text())
        assert summary["method"] == "sdfsmis" and summary["mode"] == mode
        assert set(summary["aggregate"]["organs"]) == {"liver", "spleen"}
        assert (tmp_path / "eval" / mode / "table.md").read_text().count("|") > 10
        assert (tmp_path / "eval" / mode / "cases.csv").read_text().count("\n") == 1 + 2 * 1  # 2 organs x 1 query
    args.update(method="support_copy", eval_dir=str(tmp_path / "copy"), modes=["in_volume"])
    run_workflow([TRAIN, EVALUATE], "evaluating", **args)
    summary = json.loads((tmp_path / "copy" / "in_volume" / "results.json").read_text())
    assert summary["aggregate"]["mean"]["dice_mean"] > 0.3  # neighbouring slices of one volume overlap


def test_inference_writes_nifti_on_the_query_grid_with_the_support_values(trained, phantom_dir, tmp_path):
    out, _ = trained
    support_image, support_label = phantom_dir / "image_1.nii.gz", phantom_dir / "label_1.nii.gz"
    queries = [str(phantom_dir / "image_2.nii.gz"), str(phantom_dir / "image_3.nii.gz")]
    with pytest.raises(SystemExit) as error:  # the shipped architecture for another model file: said before loading
        run_workflow(INFERENCE, "inference", bundle_root=str(BUNDLE), checkpoint=str(out / "model.pt"),
                     support_image=str(support_image), support_label=str(support_label), query_images=queries,
                     output_dir=str(tmp_path))
    assert "model.card.json#config" in str(error.value) and "preset" in str(error.value)
    assert not list(tmp_path.glob("*.nii.gz"))
    # the documented way: the file's card as the model block (MONAI's % macro reads it)
    run_workflow(INFERENCE, "inference", bundle_root=str(BUNDLE), checkpoint=str(out / "model.pt"),
                 model=f"%{out / 'model.card.json'}#config", support_image=str(support_image),
                 support_label=str(support_label), query_images=queries, output_dir=str(tmp_path))
    support_values = set(np.unique(nib.load(support_label).get_fdata()).astype(int))
    for query in queries:
        written = tmp_path / (Path(query).name.split(".")[0] + "_seg.nii.gz")
        seg, source = nib.load(written), nib.load(query)
        assert seg.shape == source.shape
        np.testing.assert_allclose(seg.affine, source.affine, atol=1e-4)
        assert set(np.unique(np.asarray(seg.dataobj)).astype(int)) <= support_values


@pytest.mark.parametrize("override,message", [
    ({"preset": "huge"}, "unknown preset 'huge'"),
    ({"dataset_dir": "/nonexistent/data", "dataset": "chaost2"}, "/nonexistent/data"),
    ({"test_labels": ["pancreas"]}, "pancreas"),
])
def test_bad_training_overrides_fail_clearly(phantom_dir, tmp_path, override, message):
    args = quick_args(phantom_dir, tmp_path)
    args.update(override)
    with pytest.raises(Exception) as error:
        run_workflow(TRAIN, "training", **args)
    assert message in _all_messages(error.value)


def test_missing_checkpoint_fails_clearly(tmp_path):
    with pytest.raises(SystemExit) as error:  # inference.yaml checks its inputs first, and exits with one line
        run_workflow(INFERENCE, "inference", bundle_root=str(BUNDLE), checkpoint=str(tmp_path / "absent.pt"),
                     support_image="a.nii.gz", support_label="b.nii.gz", query_images=["c.nii.gz"])
    assert "checkpoint not found" in _all_messages(error.value)


def _all_messages(error: BaseException) -> str:
    """MONAI wraps config errors; the user reads the whole chain."""
    messages = []
    while error is not None:
        messages.append(str(error))
        error = error.__cause__ or error.__context__
    return " | ".join(messages)


def test_two_process_ddp_training_on_cpu(phantom_dir, tmp_path):
    """multi_gpu_train.yaml under torchrun with the gloo backend: two ranks train, rank 0 writes."""
    args = quick_args(phantom_dir, tmp_path, val_interval=1)  # validation inside DDP must not deadlock
    cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle", "run",
           "training", "--config_file", json.dumps([TRAIN, MULTI_GPU]), "--meta_file", META, *cli(args)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=BUNDLE, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "checkpoints" / "checkpoint_iteration=8.pt").is_file()  # 8 steps per rank
    assert (tmp_path / "model.pt").is_file()
    assert proc.stdout.count("val_mean_dice:") >= 2  # rank 0 logs each epoch's validation
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2  # rank 0's trainer and evaluator only


def test_docs_figures_are_drawn_from_a_run(trained, phantom_dir, tmp_path):
    from tools.docs.figures import main

    out, _ = trained
    main(["--run", str(out), "--dataset", "phantom", "--dataset_dir", str(phantom_dir), "--support", "1",
          "--query", "2", "--organ", "liver", "--out", str(tmp_path)])
    for name in ("training_curve.png", "overlay_liver.png"):
        png = (tmp_path / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_inference_preprocessing_and_postprocessing_are_the_configs(trained, phantom_dir, tmp_path):
    """inference.yaml's `preprocessing` is what reads the files (a smaller `image_size` gives smaller
    slices, still mapped back onto the query's grid) and its `postprocessing` what writes them."""
    from monai.bundle import ConfigParser

    from scripts.data.volumes import default_transforms, load_volume, to_original_grid

    image, label = phantom_dir / "image_1.nii.gz", phantom_dir / "label_1.nii.gz"
    parser = ConfigParser()
    parser.read_config(INFERENCE)
    parser.update({"bundle_root": str(BUNDLE)})
    spelled = load_volume(image, label, transforms=parser.get_parsed_content("preprocessing"))
    default = load_volume(image, label, transforms=default_transforms(2, 256))
    np.testing.assert_array_equal(spelled.image, default.image)
    np.testing.assert_array_equal(spelled.label, default.label)
    parser.update({"image_size": 96, "preprocessing#intensity#0#minv": 0.0})
    small = load_volume(image, label, transforms=parser.get_parsed_content("preprocessing", lazy=False))
    assert small.image.shape[1:] == (96, 96) and small.image.min() == 0.0
    np.testing.assert_array_equal(to_original_grid(small.label, small), np.asarray(nib.load(label).dataobj))

    trainer = ConfigParser()  # train.yaml spells the same list, with the supervoxels read as labels
    trainer.read_config(TRAIN)
    trainer.update({"bundle_root": str(BUNDLE), "dataset": "phantom"})
    supervoxels = phantom_dir / "supervoxels" / "superpix-MIDDLE_1.nii.gz"
    spelled = load_volume(image, label, supervoxels, transforms=trainer.get_parsed_content("preprocessing"))
    default = load_volume(image, label, supervoxels, transforms=default_transforms(2, 256))
    for key in ("image", "label", "supervoxels"):
        np.testing.assert_array_equal(getattr(spelled, key), getattr(default, key))

    out, _ = trained
    query = phantom_dir / "image_2.nii.gz"
    workflow, _ = run_workflow(INFERENCE, "inference", bundle_root=str(BUNDLE), checkpoint=str(out / "model.pt"),
                               model=f"%{out / 'model.card.json'}#config", support_image=str(image),
                               support_label=str(label), query_images=[str(query)], output_dir=str(tmp_path),
                               image_size=128, **{"postprocessing#output_postfix": "mask"})
    assert workflow.evaluator.state.output["slices"] == [12, 128, 128]
    written = nib.load(tmp_path / "image_2_mask.nii.gz")
    assert written.shape == nib.load(query).shape and not list(tmp_path.glob("*_seg.nii.gz"))


def test_finalize_spares_only_a_command_line_run_the_exits_last_collection(tmp_path):
    """inference.yaml's finalize freezes the garbage collector's objects in `python -m monai.bundle`
    (which exits next), and does nothing in a process that goes on (this one)."""
    import gc

    from scripts.engine.inference import exit_without_last_collection

    exit_without_last_collection()
    assert gc.get_freeze_count() == 0
    config = tmp_path / "probe.yaml"
    config.write_text("imports: ['$import gc', '$import scripts', '$import scripts.engine.inference']\n"
                      "run: ['$scripts.engine.inference.exit_without_last_collection()',\n"
                      "      \"$print('frozen objects', gc.get_freeze_count())\"]\n")
    done = subprocess.run([PY, "-m", "monai.bundle", "run", "--config_file", str(config)], cwd=BUNDLE,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    frozen = int(done.stdout.split("frozen objects")[1].split()[0])
    assert frozen > 100_000  # torch, MONAI and the rest, out of the last collection's way
