"""The bundle as the MONAI model zoo packages, checks and serves it, and as a zoo user downloads and
runs it: the zoo's rules (file sizes, large_files.yml, version + changelog, README template,
licences), its checks (verify_metadata, verify_net_in_out, ckpt_export by tracing,
check_properties), the packaged zip, and the user's path end to end from a local HTTP server on
127.0.0.1 (nothing leaves the machine). Bad downloads fail clearly and write nothing."""

import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from shared_paths import SHARED

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
META = str(BUNDLE / "configs" / "metadata.json")
TRAIN = str(BUNDLE / "configs" / "train.yaml")
EVALUATE = str(BUNDLE / "configs" / "evaluate.yaml")
INFERENCE = str(BUNDLE / "configs" / "inference.yaml")
MULTI_GPU = str(BUNDLE / "configs" / "multi_gpu_train.yaml")
# the zoo's metadata schema, a verbatim copy (tests/data/README.md says where it comes from): MONAI
# finds it in place with this hash and downloads nothing
SCHEMA = REPO / "tests" / "data" / "meta_schema_20240725.json"
SCHEMA_SHA256 = "cd64aa8a5904426f6fc6855dabe46af8c742d5bad644b4e9cfb78ebad09ad678"
ZOO_LIMIT = 25 * 1024 * 1024
PY = sys.executable
WEIGHTS = SHARED / "weights"
TAEF2 = BUNDLE / "models" / "taef2"  # committed with its LICENSE: models/model.pt runs on a fresh clone
HAVE_TAESD = (WEIGHTS / "taesd" / "taesd_encoder.safetensors").is_file()  # never committed
LOCAL = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


def metadata() -> dict:
    return json.loads(Path(META).read_text())


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(autouse=True)
def _no_proxy_for_localhost(monkeypatch):
    for key, value in LOCAL.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A static HTTP server on 127.0.0.1 over a folder: (folder, base URL)."""
    root = tmp_path_factory.mktemp("served")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A `tiny` pixel-unshuffle network (random weights) in the shipped model's form: the state dict
    of network_def, its card beside it."""
    from scripts.network.model_file import save_zoo_model
    from scripts.network.presets import build_segmenter

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "model.pt"
    save_zoo_model(build_segmenter(preset="tiny"), path, half=False)
    return path


def model_block(checkpoint: Path) -> dict:
    """inference.yaml's `model` for a model file: its card's config (as `--model %<card>#config`)."""
    from scripts.network.model_file import card_path

    return json.loads(card_path(checkpoint).read_text())["config"]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from scripts.data.phantoms import write_phantom_dataset

    return write_phantom_dataset(tmp_path_factory.mktemp("phantoms"), n_volumes=10, size=64, depth=8, seed=5)


# ---- the zoo's rules ---------------------------------------------------------------------------
def test_metadata_passes_the_zoo_schema_and_a_broken_one_does_not(tmp_path):
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=META, filepath=str(SCHEMA), hash_val=SCHEMA_SHA256, hash_type="sha256")
    broken = metadata()
    del broken["network_data_format"]
    (tmp_path / "metadata.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="network_data_format"):
        verify_metadata(meta_file=str(tmp_path / "metadata.json"), filepath=str(SCHEMA), hash_val=SCHEMA_SHA256,
                        hash_type="sha256")


def test_version_changelog_and_docs_move_together():
    from tools.zoo import BUNDLE_NAME

    meta = metadata()
    versions = list(meta["changelog"])
    assert versions[0] == meta["version"], "the top changelog entry must be the bundle's version"
    as_numbers = [tuple(int(part) for part in v.split(".")) for v in versions]
    assert as_numbers == sorted(as_numbers, reverse=True) and len(set(as_numbers)) == len(as_numbers)
    for version, entry in meta["changelog"].items():  # one line per change; the release notes say the rest
        assert "\n" not in entry and len(entry) <= 160, f"changelog {version}: one short line (CHANGELOG.md has room)"
        assert re.search(rf"^## {re.escape(version)}\b", (REPO / "CHANGELOG.md").read_text(), re.M), version
    assert re.fullmatch(r"[a-z][a-z0-9_]*", BUNDLE_NAME)  # a folder name, as the zoo's bundles
    zip_name = f"{BUNDLE_NAME}_v{meta['version']}.zip"
    for doc in (BUNDLE / "docs" / "README.md", REPO / "README.md"):
        assert zip_name in doc.read_text(), f"{doc} shows the download command for another version"


def test_large_files_list_every_weight_the_zip_leaves_out_with_a_sha256():
    """TAESD is never committed; TAEF2 is (models/taef2, what models/model.pt reads), and still listed
    so that the zoo's zip leaves it out and a zoo user fetches the same bytes to the same place."""
    import yaml

    from scripts.network.autoencoders import TAE_FORMATS
    from scripts.network.model_file import load_checkpoint_file
    from scripts.network.presets import default_weights_path, resolve_weights_path

    listed = yaml.safe_load((BUNDLE / "large_files.yml").read_text())
    entries = {entry["path"]: entry for entry in listed["large_files"]}
    folders = {kind: default_weights_path(kind) or f"weights/{kind}" for kind in TAE_FORMATS}
    assert folders["taef2"] == "models/taef2"
    expected = {f"{folders[kind]}/{name}" for kind, (_, encoder, decoder, _) in TAE_FORMATS.items()
                for name in (encoder, decoder)}
    assert set(entries) == expected
    for path, entry in entries.items():
        assert entry["hash_type"] == "sha256" and re.fullmatch(r"[0-9a-f]{64}", entry["hash_val"])
        assert entry["url"] == f"https://github.com/madebyollin/taesd/raw/main/{Path(path).name}"
    taesd = [path for path in entries if path.startswith("weights/")]
    committed = subprocess.run(["git", "ls-files", *taesd], cwd=BUNDLE, capture_output=True, text=True, check=True)
    assert len(taesd) == 2 and committed.stdout == ""  # TAESD: listed because never committed
    for path in set(entries) - set(taesd):  # TAEF2: in the tree, not ignored, the listed bytes
        assert sha256(BUNDLE / path) == entries[path]["hash_val"], path
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=BUNDLE)
        assert ignored.returncode == 1, f"{path} is ignored by git: it must be committed"
    assert "MIT License" in (TAEF2 / "LICENSE").read_text() and "madebyollin/taesd" in (TAEF2 / "README.md").read_text()
    shipped = load_checkpoint_file(BUNDLE / "models" / "model.pt")["config"]
    folder = Path(resolve_weights_path(shipped["autoencoder_path"], shipped["autoencoder"]))
    assert folder == TAEF2  # the stored path (weights/taef2 until re-exported, then models/taef2)
    assert all(f"{folder.relative_to(BUNDLE).as_posix()}/{name}" in entries
               for name in TAE_FORMATS[shipped["autoencoder"]][1:3])
    ids = {model["id"]: model for model in listed["pretrained_models"]}
    assert set(ids) == {"stable-diffusion-v1-5/stable-diffusion-v1-5", "facebook/dinov2-base"}
    assert ids["stable-diffusion-v1-5/stable-diffusion-v1-5"]["licence"] == "CreativeML OpenRAIL-M"
    assert ids["facebook/dinov2-base"]["licence"] == "Apache-2.0"
    if WEIGHTS.is_dir():  # the workplace's copies are the listed files
        for path, entry in entries.items():
            local = WEIGHTS / Path(path).parent.name / Path(path).name  # <shared>/weights/<kind>/<file>
            if local.is_file():
                assert sha256(local) == entry["hash_val"], path


def test_bundle_files_licences_and_readme_follow_the_zoo():
    tracked = subprocess.run(["git", "ls-files", "-z", "."], cwd=BUNDLE, capture_output=True, text=True,
                             check=True).stdout.split("\0")
    sizes = {name: (BUNDLE / name).stat().st_size for name in tracked if name and (BUNDLE / name).is_file()}
    assert sizes and max(sizes.values()) <= ZOO_LIMIT, max(sizes, key=sizes.get)
    assert (BUNDLE / "LICENSE").read_text() == (REPO / "LICENSE").read_text()
    licences = (BUNDLE / "docs" / "data_license.txt").read_text()
    readme = (BUNDLE / "docs" / "README.md").read_text()
    for text in (licences, readme):
        for term in ("MIT", "madebyollin/taesd", "CreativeML OpenRAIL-M", "Apache-2.0", "CC BY-SA 4.0",
                     "research use only"):
            assert term in text, term
    template = ["# ", "### **Authors**", "### **Tags**", "## **Model Description**", "## **Data**",
                "## **Performance**", "## **Additional Usage Steps**", "## **System Configuration**",
                "## **Limitations**", "## **Citation Info**", "## **References**"]
    positions = [readme.find("\n" + heading) if i else readme.find(heading) for i, heading in enumerate(template)]
    assert -1 not in positions and positions == sorted(positions), dict(zip(template, positions))


def test_packaging_skips_what_runs_leave_and_refuses_a_file_over_the_zoo_limit(tmp_path):
    from tools.zoo.package import bundle_files

    copy = tmp_path / "bundle"
    shutil.copytree(BUNDLE / "configs", copy / "configs")
    shutil.copy(BUNDLE / "large_files.yml", copy)
    left = ["runs/t/model.pt", "eval/inference/q_seg.nii.gz", "logs/x.log", "weights/taef2/taef2_encoder.pth",
            "scripts/__pycache__/a.cpython-311.pyc", "models/model.ts", ".cache/x", "models/a.ckpt",
            "models/taef2/taef2_encoder.pth", "models/taef2/taef2_decoder.pth", "outputs/demo/a.png"]
    for name in left + ["models/taef2/LICENSE"]:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes(b"x")
    # the committed TAEF2 is a large file of the zip (fetched); its licence travels in the zip
    assert bundle_files(copy) == sorted(
        [f"configs/{p.name}" for p in (BUNDLE / "configs").iterdir()] + ["large_files.yml", "models/taef2/LICENSE"])
    with open(copy / "configs" / "big.bin", "wb") as f:
        f.truncate(ZOO_LIMIT + 1)
    with pytest.raises(ValueError, match="25 MB"):
        bundle_files(copy)


# ---- the zoo's checks ----------------------------------------------------------------------------
@pytest.mark.parametrize("configs,workflow_type", [
    ([TRAIN], "train"), ([TRAIN, MULTI_GPU], "train"), ([TRAIN, EVALUATE], "infer"), ([INFERENCE], "infer"),
], ids=["train", "multi_gpu_train", "evaluate", "inference"])
def test_every_workflow_has_the_properties_monai_expects(configs, workflow_type, phantoms, tiny_checkpoint, tmp_path,
                                                       monkeypatch):
    """check_properties builds what the properties name (network, datasets, trainer): on phantoms,
    with the tiny network, so that it takes seconds."""
    from monai.bundle import ConfigWorkflow

    if MULTI_GPU in configs:  # its `initialize` joins a process group: a group of one, as torchrun would make
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        for key, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                               MASTER_PORT=str(port)).items():
            monkeypatch.setenv(key, value)
    if INFERENCE in configs:
        args = dict(support_image=str(phantoms / "image_1.nii.gz"), support_label=str(phantoms / "label_1.nii.gz"),
                    query_images=[str(phantoms / "image_2.nii.gz")], output_dir=str(tmp_path),
                    model=model_block(tiny_checkpoint))
    else:
        args = dict(dataset="phantom", dataset_dir=str(phantoms), preset="tiny", steps=4, steps_per_epoch=2,
                    batch_size=2, val_queries=1, run_name="t", output_dir=str(tmp_path),
                    cache_dir=str(tmp_path / "cache"), eval_dir=str(tmp_path / "eval"))
    workflow = ConfigWorkflow(config_file=configs, meta_file=META, workflow_type=workflow_type,
                              bundle_root=str(BUNDLE), checkpoint=str(tiny_checkpoint), **args)
    workflow.initialize()
    try:
        assert workflow.check_properties() == []
    finally:
        workflow.finalize()


def test_network_def_matches_network_data_format(tiny_checkpoint):
    from monai.bundle import verify_net_in_out

    args = dict(net_id="network_def", meta_file=META, config_file=INFERENCE, device="cpu",
                bundle_root=str(BUNDLE), checkpoint=str(tiny_checkpoint), model=model_block(tiny_checkpoint))
    verify_net_in_out(**args)
    with pytest.raises(ValueError, match="output channel number"):  # the check bites where they disagree
        verify_net_in_out(**args, **{"_meta_#network_data_format#outputs#pred#num_channels": 2})


def _episode(batch: int, seed: int = 0) -> torch.Tensor:
    """[query, support, support mask] as network_data_format describes them."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, 256, 256, generator=generator) * 2 - 1
    x[:, 2] = 0
    x[:, 2, 80:170, 60:150] = 1
    return x


@pytest.mark.parametrize("which", ["tiny", "shipped"])
def test_ckpt_export_traces_a_torchscript_model_that_matches_eager(which, tiny_checkpoint, tmp_path):
    from monai.bundle import ConfigParser, ckpt_export
    from monai.data import load_net_with_metadata

    # models/model.pt: compact + TAEF2 as inference.yaml's `model` says, read from the committed
    # models/taef2; the export is the zoo CI's call, at its defaults (no key_in_ckpt: a bare state dict)
    overrides = dict(bundle_root=str(BUNDLE), device="cpu")
    checkpoint = tiny_checkpoint if which == "tiny" else BUNDLE / "models" / "model.pt"
    if which == "tiny":
        overrides["model"] = model_block(tiny_checkpoint)
    exported = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(exported), ckpt_file=str(checkpoint), meta_file=META,
                config_file=INFERENCE, use_trace=True, input_shape=[1, 3, 256, 256],
                converter_kwargs={"check_trace": False},  # torch's re-trace check: the comparison below is ours
                checkpoint=str(checkpoint), **overrides)
    traced, meta, extra = load_net_with_metadata(str(exported), more_extra_files=["inference.json"])
    assert meta["version"] == metadata()["version"] and "network_def" in json.loads(extra["inference.json"])

    parser = ConfigParser()
    parser.read_config(INFERENCE)
    parser.read_meta(META)
    for key, value in dict(overrides, checkpoint=str(checkpoint)).items():
        parser[key] = value
    eager = parser.get_parsed_content("network_def").eval()
    eager.load_state_dict(torch.load(checkpoint, weights_only=True), strict=True)  # as the zoo loads a model.pt
    x = _episode(2)
    with torch.no_grad():
        expected, got = eager(x), traced(x)
    assert got.shape == expected.shape == (2, 1, 256, 256)
    assert torch.allclose(got, expected, atol=1e-4 * float(expected.abs().max()) + 1e-5)


def test_network_def_swapped_for_its_torchscript_export_runs_the_inference_workflow(tmp_path):
    """The zoo's advice works: with network_def replaced by its export, `run inference` reads the volume
    through the export (1-shot, the same seam and post-processing: scripts/engine/volume_inferer.py).
    With one shot from the nearest support slice the bundle's own network computes the same thing, so
    the two label files agree."""
    from monai.bundle import ConfigWorkflow, ckpt_export

    checkpoint = BUNDLE / "models" / "model.pt"
    exported = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(exported), ckpt_file=str(checkpoint), meta_file=META,
                config_file=INFERENCE, use_trace=True, input_shape=[1, 3, 256, 256],
                converter_kwargs={"check_trace": False}, checkpoint=str(checkpoint), bundle_root=str(BUNDLE),
                device="cpu")
    sample = BUNDLE / "sample" / "chaost2"
    common = {"support_image": str(sample / "image_15.nii.gz"), "support_label": str(sample / "label_15.nii.gz"),
              "query_images": [str(sample / "image_39.nii.gz")], "labels": {"liver": 1}, "volume_mode": "nearest",
              "model#max_shots": 1, "device": "cpu"}
    labels, networks = {}, {}
    for name, swap in (("bundle", {}), ("torchscript", {"network_def": f"$torch.jit.load('{exported}')"})):
        workflow = ConfigWorkflow(config_file=INFERENCE, meta_file=META, workflow_type="inference",
                                  bundle_root=str(BUNDLE), output_dir=str(tmp_path / name), **common, **swap)
        workflow.initialize()
        try:
            workflow.run()
            networks[name] = type(workflow.evaluator.network).__name__
        finally:
            workflow.finalize()
        labels[name] = np.asarray(nib.load(tmp_path / name / "image_39_seg.nii.gz").dataobj) == 1
    assert networks["bundle"] == "SliceNetwork" and networks["torchscript"] != "SliceNetwork"
    bundle, scripted = labels["bundle"], labels["torchscript"]
    assert bundle.sum() > 10_000  # the liver, not an empty answer both could agree on
    assert 2 * (bundle & scripted).sum() / (bundle.sum() + scripted.sum()) > 0.99


def test_shipped_model_is_network_defs_state_dict_and_its_architecture_is_the_config():
    """models/model.pt is what the zoo's tools expect (a bare state dict that network_def, built from
    inference.yaml alone, loads strictly); its card says the same architecture as the config."""
    from monai.bundle import ConfigParser

    from scripts.network.model_config import ModelConfig

    parser = ConfigParser()
    parser.read_config(INFERENCE)
    parser["bundle_root"], parser["device"] = str(BUNDLE), "cpu"
    assert parser.get("model") == model_block(BUNDLE / "models" / "model.pt")
    assert set(parser.get("model")) == set(ModelConfig.keys())  # every key shown: the file says it all
    state = torch.load(BUNDLE / "models" / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    network = parser.get_parsed_content("network_def")
    assert not network.load_state_dict(state, strict=True).missing_keys
    broken = {**state, "config": torch.zeros(1)}  # the former file's extra entries: strict loading refuses them
    with pytest.raises(RuntimeError, match="Unexpected key"):
        network.load_state_dict(broken, strict=True)


# ---- the packaged zip and the user's path -------------------------------------------------------------
def _stage_without_taesd(dest: Path) -> Path:
    """Where the workplace's TAESD is absent: a copy of the bundle whose large_files.yml lists only
    what can be served here (the committed TAEF2), so the same path runs end to end."""
    import yaml

    shutil.copytree(BUNDLE, dest, ignore=shutil.ignore_patterns("runs", "eval", "weights", "outputs", "__pycache__"))
    listed = yaml.safe_load((BUNDLE / "large_files.yml").read_text())
    listed["large_files"] = [e for e in listed["large_files"] if e["path"].startswith("models/taef2/")]
    (dest / "large_files.yml").write_text(yaml.safe_dump(listed, sort_keys=False))
    return dest


@pytest.fixture(scope="module")
def published(server, tmp_path_factory):
    """The release as the zoo would host it, on 127.0.0.1: the zip made by the packaging command,
    with large_files.yml pointing at the same server, and the large files beside it."""
    from tools.zoo import BUNDLE_NAME

    served, base = server
    (served / "models" / "taef2").mkdir(parents=True)
    for name in ("taef2_encoder.pth", "taef2_decoder.pth"):
        (served / "models" / "taef2" / name).symlink_to(TAEF2 / name)
    if HAVE_TAESD:
        source = BUNDLE
        (served / "weights" / "taesd").mkdir(parents=True)
        for name in os.listdir(WEIGHTS / "taesd"):
            (served / "weights" / "taesd" / name).symlink_to(WEIGHTS / "taesd" / name)
    else:
        source = _stage_without_taesd(tmp_path_factory.mktemp("staged") / "bundle")
    proc = subprocess.run([PY, "-m", "tools.zoo.package", "--out", str(served), "--bundle_root", str(source),
                           "--large_files_mirror", base], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    archive = served / f"{BUNDLE_NAME}_v{metadata()['version']}.zip"
    assert archive.is_file() and str(archive) in proc.stdout
    return archive, base, source


def test_the_zip_is_the_zoo_archive(published, tmp_path):
    from tools.zoo import BUNDLE_NAME
    from tools.zoo.package import package

    archive, base, source = published
    with zipfile.ZipFile(archive) as z:
        infos = {info.filename: info for info in z.infolist()}
        names = set(infos)
        assert all(name.startswith(f"{BUNDLE_NAME}/") for name in names)
        for required in ("configs/metadata.json", "configs/inference.yaml", "configs/train.yaml", "LICENSE",
                         "docs/README.md", "docs/data_license.txt", "large_files.yml", "scripts/__init__.py",
                         "scripts/network/slice_network.py"):
            assert f"{BUNDLE_NAME}/{required}" in names, required
        for shipped in ("models/model.pt", "models/model.card.json", "models/taef2/LICENSE", "models/taef2/README.md",
                        "sample/chaost2/README.md", "sample/chaost2/image_15.nii.gz"):
            assert f"{BUNDLE_NAME}/{shipped}" in names, shipped
        assert f"{BUNDLE_NAME}/models/taef2/taef2_encoder.pth" not in names  # a large file: fetched
        assert not [n for n in names if re.search(r"/(weights|runs|eval|__pycache__)/|\.pyc$", n)]
        # what running the model needs, no more: the research tooling (tools/) stays in the repository,
        # and nothing shipped imports it
        assert not [n for n in names if re.search(r"/scripts/(runner|zoo|docs)/|/tools/", n)]
        code = {n: z.read(n).decode() for n in names if n.endswith(".py")}
        assert not [n for n, text in code.items() if re.search(r"^\s*(from|import) tools\b", text, re.M)]
        assert max(info.file_size for info in infos.values()) <= ZOO_LIMIT
        assert z.read(f"{BUNDLE_NAME}/configs/inference.yaml") == Path(INFERENCE).read_bytes()
        shipped_list = z.read(f"{BUNDLE_NAME}/large_files.yml").decode()
    import yaml

    assert all(entry["url"] == f"{base}/{entry['path']}" for entry in yaml.safe_load(shipped_list)["large_files"])
    assert "https://github.com/madebyollin/taesd/raw/main/" in (BUNDLE / "large_files.yml").read_text()  # repo: public
    again = package(source, tmp_path, large_files_mirror=base)
    assert again.name == archive.name and sha256(again) == sha256(archive)  # reproducible, as the zoo's


def _support_with_one_labelled_slice(phantoms: Path, out: Path) -> tuple[Path, int]:
    """label_1 kept on its most labelled slice only (a user's one drawn slice)."""
    label = nib.load(phantoms / "label_1.nii.gz")
    data = np.asarray(label.dataobj)
    z = int(np.argmax((data > 0).sum(axis=(0, 1))))
    one = np.zeros_like(data)
    one[..., z] = data[..., z]
    nib.save(nib.Nifti1Image(one, label.affine, label.header), out)
    return out, z


def test_zoo_user_downloads_fetches_large_files_and_runs_inference(published, phantoms, tmp_path):
    """`python -m monai.bundle download --url`, MONAI's download_large_files, then `run inference`
    from the downloaded folder on a phantom support and queries: NIfTI on the query's grid."""
    from monai.bundle import download_large_files

    from tools.zoo import BUNDLE_NAME
    from tools.zoo.large_files import read_large_files

    archive, base, _ = published
    env = dict(os.environ, OMP_NUM_THREADS="2", **LOCAL)
    env.pop("PYTHONPATH", None)
    zoo = tmp_path / "bundles"
    proc = subprocess.run([PY, "-m", "monai.bundle", "download", "--name", BUNDLE_NAME, "--url",
                           f"{base}/{archive.name}", "--bundle_dir", str(zoo), "--progress", "False"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    bundle = zoo / BUNDLE_NAME
    assert json.loads((bundle / "configs" / "metadata.json").read_text())["version"] == metadata()["version"]

    download_large_files(bundle_path=str(bundle))  # MONAI's own, reading the bundle's large_files.yml
    for entry in read_large_files(bundle):
        assert sha256(bundle / entry["path"]) == entry["hash_val"]

    support_label, z = _support_with_one_labelled_slice(phantoms, tmp_path / "support_label.nii.gz")
    support_image = phantoms / "image_1.nii.gz"
    queries = [support_image, phantoms / "image_2.nii.gz"]  # the support's own volume, another patient
    out = tmp_path / "out"
    proc = subprocess.run([PY, "-m", "monai.bundle", "run", "inference", "--config_file", "configs/inference.yaml",
                           "--support_image", str(support_image), "--support_label", str(support_label),
                           "--query_images", json.dumps([str(q) for q in queries]), "--output_dir", str(out)],
                          cwd=bundle, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    drawn = np.asarray(nib.load(support_label).dataobj)
    allowed = set(np.unique(drawn).astype(int)) | {0}
    for query in queries:
        seg, source = nib.load(out / f"{query.name.split('.')[0]}_seg.nii.gz"), nib.load(query)
        assert seg.shape == source.shape
        np.testing.assert_allclose(seg.affine, source.affine, atol=1e-4)
        values = np.asarray(seg.dataobj)
        assert np.issubdtype(values.dtype, np.integer)
        assert set(np.unique(values).astype(int)) <= allowed
    own = np.asarray(nib.load(out / "image_1_seg.nii.gz").dataobj)
    np.testing.assert_array_equal(own[..., z], drawn[..., z])  # the drawn slice, kept as drawn, in place


# ---- bad downloads ----------------------------------------------------------------------------------
def test_fetch_refuses_a_zip_of_another_version_and_extracts_nothing(published, tmp_path):
    from tools.zoo import BUNDLE_NAME
    from tools.zoo.fetch import FetchError, fetch_bundle

    archive, base, _ = published
    served = archive.parent
    version = metadata()["version"]
    (served / f"{BUNDLE_NAME}_v0.0.9.zip").write_bytes(archive.read_bytes())  # mislabelled release
    target = tmp_path / "bundles"
    with pytest.raises(FetchError, match=f"version {re.escape(version)}, not the requested 0.0.9"):
        fetch_bundle(f"{base}/{BUNDLE_NAME}_v0.0.9.zip", target, version="0.0.9")
    assert list(target.iterdir()) == []  # no folder, no half extraction, no temporary left
    with pytest.raises(FetchError, match="sha256"):
        fetch_bundle(f"{base}/{archive.name}", target, version=version, sha256="0" * 64)
    assert list(target.iterdir()) == []
    with pytest.raises(FetchError, match="404"):
        fetch_bundle(f"{base}/{BUNDLE_NAME}_v9.9.9.zip", target)
    assert list(target.iterdir()) == []
    fetched = fetch_bundle(f"{base}/{archive.name}", target, version=version, sha256=sha256(archive))
    assert fetched == target / BUNDLE_NAME and [p.name for p in target.iterdir()] == [BUNDLE_NAME]
    assert (fetched / "configs" / "metadata.json").read_bytes() == Path(META).read_bytes()


@pytest.fixture
def small_release(server, tmp_path):
    """A bundle folder whose large_files.yml lists two small files served on 127.0.0.1."""
    served, base = server
    release = served / tmp_path.name
    release.mkdir()
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    entries = []
    for name in ("a.bin", "b.bin"):
        data = os.urandom(4096)
        (release / name).write_bytes(data)
        entries.append(f"  - path: weights/{name}\n    url: {base}/{release.name}/{name}\n"
                       f"    hash_val: {hashlib.sha256(data).hexdigest()}\n    hash_type: sha256\n")
    (bundle / "large_files.yml").write_text("large_files:\n" + "".join(entries))
    return bundle, release


def _left_in(bundle: Path) -> list[str]:
    return sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*"))


def test_fetch_large_files_with_a_hash_mismatch_writes_nothing(small_release):
    from monai.apps.utils import HashCheckError
    from monai.bundle import download_large_files

    from tools.zoo.fetch import FetchError, fetch_large_files

    bundle, release = small_release
    (release / "b.bin").write_bytes(b"tampered")
    with pytest.raises(FetchError, match=r"weights/b\.bin: sha256 of .* is [0-9a-f]{64}, large_files\.yml expects"):
        fetch_large_files(bundle)
    assert _left_in(bundle) == ["large_files.yml"]  # not even the good a.bin
    with pytest.raises(HashCheckError):  # MONAI's own command refuses it too, but keeps a.bin
        download_large_files(bundle_path=str(bundle))
    assert (bundle / "weights" / "a.bin").is_file() and not (bundle / "weights" / "b.bin").exists()


def test_fetch_large_files_with_a_missing_file_writes_nothing_then_fetches_all(small_release):
    from tools.zoo.fetch import FetchError, fetch_large_files

    bundle, release = small_release
    (release / "a.bin").rename(release / "a.bin.away")
    with pytest.raises(FetchError, match=r"weights/a\.bin: cannot download http://127\.0\.0\.1:\d+/.*a\.bin.*404"):
        fetch_large_files(bundle)
    assert _left_in(bundle) == ["large_files.yml"]
    (release / "a.bin.away").rename(release / "a.bin")
    fetched = fetch_large_files(bundle)
    assert [p.name for p in fetched] == ["a.bin", "b.bin"]
    assert _left_in(bundle) == ["large_files.yml", "weights", "weights/a.bin", "weights/b.bin"]
