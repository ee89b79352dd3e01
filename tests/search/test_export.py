"""frandi export: the packed file, ONNX, attaching to the dashboard, and writes that fail without harm."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
import wsgiref.util
from collections.abc import Iterator
from pathlib import Path

import onnx
import optuna
import pytest
import torch
from optuna.artifacts import FileSystemArtifactStore

from frandi_core import (
    Policy,
    activation_settings,
    build_architecture,
    load_packed,
    model_outputs,
    model_size,
    onnx_parity,
    packed,
    point_settings,
    set_activation_quantizers_,
    set_integer_points,
    strip_,
)
from search import ConfigError, TrialRunner, load_config, open_for, open_study
from search._artifacts import artifact_dir
from search._rerun import rerun as rerun_trial
from search.cli import main
from tests.tiny_study import make_weights, study_text

ARCH = ("frandi_core.models:resnet", {"widths": [4, 8]})


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 4-trial study on the tiny ResNet, made once; tests copy it."""
    root = tmp_path_factory.mktemp("export")
    make_weights(root / "tiny.pt")
    (root / "study.toml").write_text(study_text(name="exp", url="sqlite:///runs/exp.db", n_trials=4, steps=2))
    assert main(["search", str(root / "study.toml"), "--no-progress"]) == 0
    return root


@pytest.fixture
def work(base: Path, tmp_path: Path) -> Path:
    shutil.copytree(base, tmp_path, dirs_exist_ok=True)
    return tmp_path


def finished(work: Path) -> list[optuna.trial.FrozenTrial]:
    cfg = load_config(work / "study.toml")
    with open_for(cfg) as st:
        return open_study(cfg, st).get_trials(states=(optuna.trial.TrialState.COMPLETE,))


def quantized_trial(work: Path) -> optuna.trial.FrozenTrial:
    """A finished trial with quantized layers (the uniform 8-bit baseline at least)."""
    return next(t for t in finished(work) if any(s.bits for _, s in Policy.from_json(t.user_attrs["policy"]).layers))


def rerun(work: Path, t: optuna.trial.FrozenTrial) -> tuple[torch.nn.Module, TrialRunner]:
    """The trial's recovered student, re-run as export does (search.rerun: same threads)."""
    cfg = load_config(work / "study.toml")
    with open_for(cfg) as st:
        runner = TrialRunner(cfg, st)
        student, _, _ = rerun_trial(runner, t)
    return student, runner


def test_a_rerun_takes_the_trials_own_thread_count(work: Path) -> None:
    """export and evaluate re-run a trial as it ran: float sums depend on how the work was split."""
    t = quantized_trial(work)
    recorded = int(t.user_attrs["threads"])
    before = torch.get_num_threads()
    torch.set_num_threads(recorded + 1)
    cfg = load_config(work / "study.toml")
    try:
        with open_for(cfg) as st:
            _, _, moved = rerun_trial(TrialRunner(cfg, st), t)
        assert torch.get_num_threads() == recorded
        assert moved <= 1e-4
    finally:
        torch.set_num_threads(before)


def raw(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def test_packed_export_is_the_size_objective_and_loads_bit_identical(work: Path, frandi) -> None:
    t = quantized_trial(work)
    out = work / "m.safetensors"
    code, msg, err = frandi("export", work / "study.toml", "--trial", t.number, "--out", out)
    assert code == 0, err
    data = out.read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    assert len(data) - header == t.user_attrs["size_bits"] // 8  # the stored objective is the file's bytes
    model = build_architecture(*ARCH)
    loaded = load_packed(out, model)
    student, _ = rerun(work, t)
    assert model_size(model, Policy.from_json(t.user_attrs["policy"])).bits == t.user_attrs["size_bits"]
    expect = strip_(student).state_dict()
    assert all(raw(v) == raw(expect[k]) for k, v in loaded.state_dict().items())
    # the front shows the real size of the trials that were exported, and only of those
    code, out_json, _ = frandi("pareto", work / "study.toml", "--format", "json")
    rows = {r["trial"]: r for r in json.loads(out_json)}
    assert all(r["packed_kib"] is None for n, r in rows.items() if n != t.number)
    if t.number in rows:
        assert rows[t.number]["packed_kib"] == round(len(data) / 1024, 2)
    cfg = load_config(work / "study.toml")
    with open_for(cfg) as st:
        assert open_study(cfg, st).user_attrs["frandi:packed_bytes"] == {str(t.number): len(data)}


def test_onnx_export_runs_in_onnxruntime_with_the_packed_weights(work: Path, frandi) -> None:
    t = quantized_trial(work)
    out = work / "m.onnx"
    fmt = "onnx-packed"  # the small layout; --format onnx is the fast one (tests/core/test_onnx_fast.py)
    code, msg, err = frandi("export", work / "study.toml", "--trial", t.number, "--out", out, "--format", fmt)
    assert code == 0, err
    assert "ONNX outputs on the held-out batch: max |ONNX - PyTorch| / max |PyTorch| = " in msg
    assert "onnxruntime runs 0 of" in msg  # packed weights: fp32 convolutions, said
    model = onnx.load(out)
    onnx.checker.check_model(model, full_check=True)
    policy = Policy.from_json(t.user_attrs["policy"])
    student, runner = rerun(work, t)
    content = packed(student, policy)
    stored = {i.name: i.raw_data for i in model.graph.initializer}
    assert content.layouts and not set(content.layouts) & set(stored)  # no fp32 copy left behind
    assert all(stored[k] == v.numpy().tobytes() for k, v in content.tensors.items() if ":" in k)
    assert onnx_parity(student, out.read_bytes(), runner.heldout).ok(1e-4)


def test_state_dict_format_is_today_s_file_plus_activations(work: Path, frandi) -> None:
    t = quantized_trial(work)
    out = work / "m.pt"
    assert frandi("export", work / "study.toml", "--trial", t.number, "--out", out, "--format", "state_dict")[0] == 0
    saved = torch.load(out, weights_only=True)
    assert set(saved) == {"state_dict", "policy", "metrics", "activations", "points"} and saved["activations"] == {}
    assert saved["points"] == {}  # weights only: no activation is rounded
    build_architecture(*ARCH).load_state_dict(saved["state_dict"], strict=True)


@pytest.fixture(scope="module")
def act_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 3-trial study whose searched layers quantize their inputs to 4 or 8 bits."""
    root = tmp_path_factory.mktemp("export_act")
    make_weights(root / "tiny.pt")
    text = study_text(name="exp", url="sqlite:///runs/exp.db", n_trials=3, steps=3, bits="[4, 8]\nact_bits = [4, 8]")
    (root / "study.toml").write_text(text)
    assert main(["search", str(root / "study.toml"), "--no-progress"]) == 0
    return root


def test_activation_quantized_trial_keeps_its_quantizers_in_every_format(
    act_base: Path, tmp_path: Path, frandi
) -> None:
    shutil.copytree(act_base, tmp_path, dirs_exist_ok=True)
    t = finished(tmp_path)[-1]
    policy = Policy.from_json(t.user_attrs["policy"])
    assert policy.act_bits()
    student, runner = rerun(tmp_path, t)
    expect = model_outputs(student, runner.heldout)
    settings = activation_settings(student)
    assert set(settings) == set(policy.act_bits())
    files = {fmt: tmp_path / f"m.{fmt}" for fmt in ("packed", "onnx", "onnx-packed", "state_dict")}
    for fmt, out in files.items():
        code, msg, err = frandi("export", tmp_path / "study.toml", "--trial", t.number, "--out", out, "--format", fmt)
        assert code == 0, err
    data = files["packed"].read_bytes()
    assert len(data) - 8 - int.from_bytes(data[:8], "little") == t.user_attrs["size_bits"] // 8  # steps counted
    loaded = load_packed(files["packed"], build_architecture(*ARCH))
    assert activation_settings(loaded) == settings
    assert torch.equal(model_outputs(loaded, runner.heldout), expect)
    for fmt in ("onnx", "onnx-packed"):
        parity = onnx_parity(student, files[fmt].read_bytes(), runner.heldout)
        assert parity.ok(1e-4) and parity.flipped <= 1, (fmt, parity.describe())
    saved = torch.load(files["state_dict"], weights_only=True)
    assert saved["activations"] == settings and saved["points"] == point_settings(student)
    plain = build_architecture(*ARCH)
    plain.load_state_dict(saved["state_dict"], strict=True)
    restored = set_integer_points(set_activation_quantizers_(plain, saved["activations"]), saved["points"],
                                  {n: s.bits for n, s in policy.layers})
    assert torch.equal(model_outputs(restored, runner.heldout), expect)


def dashboard_get(app, path: str) -> tuple[str, bytes]:
    status: list[str] = []
    parsed = urllib.parse.urlparse(path)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": parsed.path, "QUERY_STRING": parsed.query}
    wsgiref.util.setup_testing_defaults(environ)
    body = b"".join(app(environ, lambda s, h, *a: status.append(s)))
    return status[0], body


def test_attach_puts_the_file_on_the_trial_s_dashboard_page(work: Path, frandi) -> None:
    """Through the real optuna-dashboard app: the trial lists the file, and downloading it gives its bytes."""
    import optuna_dashboard

    t = quantized_trial(work)
    out = work / "m.safetensors"
    code, msg, err = frandi("export", work / "study.toml", "--trial", t.number, "--out", out, "--attach")
    assert code == 0, err
    folder = work / "runs" / "exp-artifacts"  # beside runs/exp.db
    assert folder.is_dir()
    cfg = load_config(work / "study.toml")
    with open_for(cfg) as st:
        app = optuna_dashboard.wsgi(st.optuna, artifact_store=FileSystemArtifactStore(folder))
        study_id = st.optuna.get_study_id_from_name("exp")
        status, body = dashboard_get(app, f"/api/studies/{study_id}")
        assert status.startswith("200")
        (trial,) = [x for x in json.loads(body)["trials"] if x["number"] == t.number]
        (artifact,) = trial["artifacts"]
        assert artifact["filename"] == "m.safetensors"
        status, body = dashboard_get(app, f"/artifacts/{study_id}/{trial['trial_id']}/{artifact['artifact_id']}")
        assert status.startswith("200") and body == out.read_bytes()


def test_attach_on_postgresql_needs_a_folder_named_in_the_study_file(work: Path) -> None:
    class Remote:
        url = "postgresql+psycopg://u@db/frandi"

    with pytest.raises(ConfigError, match=r"set \[study\] artifacts"):
        artifact_dir(load_config(work / "study.toml"), Remote())  # type: ignore[arg-type]


def test_existing_file_needs_overwrite(work: Path, frandi) -> None:
    t = quantized_trial(work)
    out = work / "m.safetensors"
    out.write_bytes(b"earlier")
    code, _, err = frandi("export", work / "study.toml", "--trial", t.number, "--out", out)
    assert code == 2 and err.count("\n") == 1 and "already exists" in err and "--overwrite" in err
    assert out.read_bytes() == b"earlier"
    code, _, err = frandi("export", work / "study.toml", "--trial", t.number, "--out", out, "--overwrite")
    assert code == 0, err
    assert out.read_bytes()[8:30].startswith(b'{"')


def _run(*cmd: str) -> bool:
    return subprocess.run(cmd, capture_output=True).returncode == 0


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 64 KiB tmpfs: a full disk for the export to run into (needs root, as here and in CI)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _run("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield disk
    finally:
        _run("umount", str(disk))


def files_in(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def study_attrs(work: Path) -> dict:
    cfg = load_config(work / "study.toml")
    with open_for(cfg) as st:
        study = open_study(cfg, st)
        system = st.optuna.get_study_system_attrs(st.optuna.get_study_id_from_name("exp"))
        return study.user_attrs | {"system": system}


def test_full_disk_leaves_the_earlier_export_untouched(work: Path, frandi, tiny_disk: Path) -> None:
    t = quantized_trial(work)
    out = tiny_disk / "m.pt"
    assert frandi("export", work / "study.toml", "--trial", t.number, "--out", out)[0] == 0  # an earlier good one
    with open(tiny_disk / "filler", "wb", buffering=0) as f:  # fill the disk to the last byte
        try:
            while f.write(b"\0" * 512):
                pass
        except OSError:
            pass
    before, stored = files_in(tiny_disk), study_attrs(work)
    code, msg, err = frandi(
        "export", work / "study.toml", "--trial", t.number, "--out", out, "--overwrite", "--format", "state_dict"
    )
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"cannot write '{out}'" in err and "No space left on device" in err
    assert files_in(tiny_disk) == before  # the earlier export as it was, and no temporary file
    assert study_attrs(work) == stored


@pytest.fixture
def immutable(work: Path) -> Iterator[Path]:
    """An earlier export made immutable (chattr +i): even root cannot replace it, in a folder root may write to."""
    target = work / "m.safetensors"
    target.write_bytes(b"earlier export")
    if not _run("chattr", "+i", str(target)):
        pytest.skip("chattr +i is not available here")
    try:
        yield target
    finally:
        _run("chattr", "-i", str(target))


def test_target_that_cannot_be_replaced_is_left_as_it_was(work: Path, frandi, immutable: Path) -> None:
    assert os.access(immutable.parent, os.W_OK)  # its folder is writable: the check before any work passes
    t = quantized_trial(work)
    before, stored = files_in(work), study_attrs(work)
    code, msg, err = frandi("export", work / "study.toml", "--trial", t.number, "--out", immutable, "--overwrite")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"cannot write '{immutable}'" in err and "Operation not permitted" in err
    assert files_in(work) == before  # and no temporary file left beside it
    assert study_attrs(work) == stored


def test_scoring_one_policy_builds_no_sampling_space(work: Path, frandi, monkeypatch: pytest.MonkeyPatch) -> None:
    """export (and evaluate, rerun) score one stored policy: building the study's space (an allocated one measures
    a sensitivity table) would be work the command does not need."""

    def no_space(*args: object, **kwargs: object) -> None:
        raise AssertionError("a sampling space was built")

    monkeypatch.setattr("search._trial.study_space", no_space)
    t = quantized_trial(work)
    code, _, err = frandi("export", work / "study.toml", "--trial", t.number, "--out", work / "m.safetensors")
    assert code == 0, err
