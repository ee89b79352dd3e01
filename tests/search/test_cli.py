"""End-to-end through the frandi CLI on a tiny model with SQLite."""

from __future__ import annotations

import json
import re
import urllib.parse
import wsgiref.util
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from frandi_core import Policy, build_architecture
from search import TrialRunner, check_model, create_or_resume, load_config, open_for, open_study, replace
from search._study import to_start_key
from search.cli import COMMANDS, main


def trials_of(study_file: Path) -> list[optuna.trial.FrozenTrial]:
    cfg = load_config(study_file)
    with open_for(cfg) as st:
        return open_study(cfg, st).get_trials()


def test_every_command_in_the_help_has_a_handler(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    listed = re.findall(r"^    (\w+)", capsys.readouterr().out, re.M)
    assert listed == list(COMMANDS) and len(listed) == 9


def test_an_in_process_worker_reuses_the_teacher_and_batches_the_search_loaded(study_file, frandi, monkeypatch):
    loads: list[object] = []
    real = torch.load

    def counted(*args: object, **kwargs: object) -> object:
        loads.append(args[0])
        return real(*args, **kwargs)  # type: ignore[arg-type]

    assert frandi("search", study_file(n_trials=1), "--no-progress")[0] == 0  # batches made and stored
    monkeypatch.setattr(torch, "load", counted)
    assert frandi("search", study_file(n_trials=2), "--workers", "1", "--no-progress")[0] == 0
    files = [x for x in loads if isinstance(x, (str, Path))]
    assert len(files) == 1 and len(loads) == 2  # the weights file once, the stored batches once


def test_search_finishes_n_trials_and_prints_front(study_file, frandi) -> None:
    code, out, err = frandi("search", study_file(), "--no-progress")
    assert code == 0, err
    trials = trials_of(study_file())
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 6
    assert len(trials) == 6
    t = trials[0]
    assert t.user_attrs["baseline"] is True  # the uniform baselines come first
    for key in ("ratio", "density", "od_before", "policy", "seconds", "size_bits", "worker"):
        assert key in t.user_attrs
    assert {"compress", "recover", "od", "total"} <= set(t.user_attrs["seconds"])
    assert 0 <= t.values[0] <= 2 and t.values[1] > 0
    assert "trial" in out and "od" in out and "ratio" in out


def test_resume_adds_trials_without_redoing(study_file, frandi) -> None:
    assert frandi("search", study_file(n_trials=4), "--no-progress")[0] == 0
    before = {t.number: (t.values, t.datetime_complete) for t in trials_of(study_file())}
    code, _, err = frandi("search", study_file(n_trials=7), "--no-progress")
    assert code == 0, err
    after = trials_of(study_file())
    assert sum(t.state == TrialState.COMPLETE for t in after) == 7 and len(after) == 7
    for t in after:
        if t.number in before:
            assert (t.values, t.datetime_complete) == before[t.number]
    # the same command once more does nothing
    assert frandi("search", study_file(n_trials=7), "--no-progress")[0] == 0
    assert len(trials_of(study_file())) == 7


def test_two_workers_finish_exactly_n_trials(study_file, frandi) -> None:
    code, _, err = frandi("search", study_file(n_trials=10), "--workers", "2", "--no-progress")
    assert code == 0, err
    trials = trials_of(study_file())
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 10
    assert len(trials) == 10
    assert len({t.user_attrs["worker"] for t in trials}) == 2


def test_a_large_study_keeps_only_baselines_waiting(study_file, frandi) -> None:
    # hundreds of WAITING trials would make every claim and every sampling re-read them all
    cfg = load_config(study_file(n_trials=500))
    with open_for(cfg) as st:
        space = check_model(cfg)[1]
        study = create_or_resume(cfg, st, space)
        waiting = study.get_trials(states=(TrialState.WAITING,))
        assert len(waiting) == 3 and all(t.user_attrs["baseline"] for t in waiting)  # 0.5 at 32, 8 and 4 bits
        assert st.get_counter(to_start_key("tiny")) == 497
    code, out, _ = frandi("status", study_file(n_trials=500), "--format", "json")
    s = json.loads(out)
    assert code == 0 and s["waiting"] == 3 and s["to_start"] == 497


def test_channels_last_runs_trials_in_nhwc_with_the_same_od(study_file, frandi) -> None:
    cfg = load_config(study_file())
    with open_for(cfg) as st:
        plain = TrialRunner(cfg, st)
        nhwc = TrialRunner(replace(cfg, "run", channels_last=True), st)
    conv = next(m.weight for m in nhwc.teacher.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    policy = Policy.uniform(plain.teacher, 0.5, 4)
    assert abs(nhwc.evaluate(policy).od - plain.evaluate(policy).od) < 1e-3


def test_pareto_formats(study_file, frandi) -> None:
    frandi("search", study_file(), "--no-progress")
    code, out, _ = frandi("pareto", study_file(), "--format", "json")
    assert code == 0
    rows = json.loads(out)
    assert rows and {"trial", "od", "size_kib", "ratio", "density", "bits"} <= set(rows[0])
    sizes = [r["size_kib"] for r in rows]
    ods = [r["od"] for r in rows]
    assert sizes == sorted(sizes) and ods == sorted(ods, reverse=True)  # a front: smaller costs more OD
    code, out, _ = frandi("pareto", study_file(), "--format", "csv")
    assert out.splitlines()[0].startswith("trial,od,")
    assert len(out.splitlines()) == len(rows) + 1


def test_status(study_file, frandi) -> None:
    frandi("search", study_file(), "--no-progress")
    code, out, _ = frandi("status", study_file(), "--format", "json")
    s = json.loads(out)
    assert code == 0 and s["complete"] == 6 and s["fail"] == 0 and s["running"] == 0
    assert s["best_trial"] is not None


def test_export_reproduces_od_and_loads_strictly(study_file, frandi, tmp_path) -> None:
    frandi("search", study_file(), "--no-progress")
    trials = trials_of(study_file())
    t = max(trials, key=lambda t: t.user_attrs["ratio"])
    out = tmp_path / "model.pt"
    code, msg, err = frandi("export", study_file(), "--trial", t.number, "--out", out, "--format", "state_dict")
    assert code == 0, err
    saved = torch.load(out, weights_only=True)
    assert set(saved) == {"state_dict", "policy", "metrics", "activations", "points"} and saved["activations"] == {}
    assert abs(saved["metrics"]["od"] - t.values[0]) <= 1e-4
    model = build_architecture("frandi_core.models:resnet", {"widths": [4, 8]})
    model.load_state_dict(saved["state_dict"], strict=True)
    policy = Policy.from_dict(saved["policy"])
    modules = dict(model.named_modules())
    for name, s in policy.layers:
        w = modules[name].weight
        assert int((w == 0).sum()) >= round(s.sparsity * w.numel())
        if s.bits is not None:
            for row in w.detach().flatten(1):
                assert row.unique().numel() <= 2**s.bits


def test_export_runs_with_the_thread_count_the_trial_ran_with(study_file, frandi, tmp_path) -> None:
    # OD on CPU moves (up to 4% on the quickstart) with torch's thread count; the study file says 1 thread
    assert frandi("search", study_file(n_trials=3), "--threads", "2", "--no-progress")[0] == 0
    t = trials_of(study_file())[-1]
    assert t.user_attrs["threads"] == 2
    torch.set_num_threads(1)
    out = tmp_path / "m.pt"
    code, _, err = frandi("export", study_file(), "--trial", t.number, "--out", out, "--format", "state_dict")
    assert code == 0, err
    assert torch.get_num_threads() == 2
    assert abs(torch.load(tmp_path / "m.pt", weights_only=True)["metrics"]["od"] - t.values[0]) <= 1e-4


def test_export_refuses_missing_trial(study_file, frandi, tmp_path) -> None:
    frandi("search", study_file(), "--no-progress")
    code, _, err = frandi("export", study_file(), "--trial", 99, "--out", tmp_path / "m.pt")
    assert code == 2 and "trial 99 does not exist" in err and not (tmp_path / "m.pt").exists()


def test_changed_study_file_is_refused_unless_forced(study_file, frandi) -> None:
    frandi("search", study_file(n_trials=3), "--no-progress")
    path = study_file(n_trials=4)
    path.write_text(path.read_text().replace("steps = 5", "steps = 6"))
    code, _, err = frandi("search", path, "--no-progress")
    assert code == 2 and "recovery changed" in err and "--force" in err
    assert len(trials_of(path)) == 3  # nothing was added
    code, _, err = frandi("search", path, "--no-progress", "--force")
    assert code == 0, err
    assert sum(t.state == TrialState.COMPLETE for t in trials_of(path)) == 4


def test_forced_change_whose_synthesis_fails_leaves_the_old_fingerprint(study_file, frandi, monkeypatch) -> None:
    """--force rewrites the fingerprint only once the new file's batches exist: after a failed synthesis the
    study still belongs to the old file, which resumes without --force, and the new file is still refused."""
    import search._trial
    from frandi_core import FrandiError

    old = study_file(n_trials=2)
    assert frandi("search", old, "--no-progress")[0] == 0
    before = load_config(old).fingerprint()
    changed = study_file("changed.toml", n_trials=2)
    changed.write_text(changed.read_text().replace("iterations = 10", "iterations = 11"))  # new batches needed

    def fail(*args, **kwargs):
        raise FrandiError("synthesis failed: out of memory")

    with monkeypatch.context() as m:
        m.setattr(search._trial, "synthesize", fail)
        code, _, err = frandi("search", changed, "--no-progress", "--force")
    assert code == 2 and "out of memory" in err, err
    cfg = load_config(old)
    with open_for(cfg) as st:
        assert open_study(cfg, st).user_attrs["frandi:fingerprint"] == before
    code, _, err = frandi("search", changed, "--no-progress")
    assert code == 2 and "synthetic changed" in err, err
    code, _, err = frandi("search", old, "--no-progress", "--n-trials", 3)
    assert code == 0, err


def test_study_sized_by_an_older_rule_is_refused(study_file, frandi) -> None:
    """Trials whose size was counted another way cannot share a Pareto front with new ones."""
    assert frandi("search", study_file(n_trials=2), "--no-progress")[0] == 0
    cfg = load_config(study_file(n_trials=2))
    with open_for(cfg) as st:  # as a study sized by an older rule holds it (test_activations checks the hash has it)
        study = open_study(cfg, st)
        config = json.loads(study.user_attrs["frandi:config"])
        study.set_user_attr("frandi:config", json.dumps(config | {"size accounting": "an-older-rule"}))
        study.set_user_attr("frandi:fingerprint", "fingerprint-of-an-older-rule")
    code, _, err = frandi("search", study_file(n_trials=3), "--no-progress")
    assert code == 2 and "size accounting changed" in err and "--force" in err
    assert len(trials_of(study_file(n_trials=3))) == 2


def test_synth_builds_batches_and_png(study_file, frandi, tmp_path) -> None:
    png = tmp_path / "grid.png"
    code, out, err = frandi("synth", study_file(), "--png", png)
    assert code == 0, err
    assert "BN-KL" in out and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dashboard_serves_study_and_trials(study_file, frandi) -> None:
    """The real optuna-dashboard WSGI app, in-process, on the study's storage."""
    import optuna_dashboard

    frandi("search", study_file(n_trials=3), "--no-progress")
    cfg = load_config(study_file())

    def get(app, path: str) -> tuple[str, bytes]:
        status = []
        parsed = urllib.parse.urlparse(path)
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": parsed.path, "QUERY_STRING": parsed.query}
        wsgiref.util.setup_testing_defaults(environ)
        body = b"".join(app(environ, lambda s, h, *a: status.append(s)))
        return status[0], body

    with open_for(cfg) as st:
        app = optuna_dashboard.wsgi(st.optuna)
        status, body = get(app, "/api/studies")
        assert status.startswith("200")
        studies = json.loads(body)["study_summaries"]
        (summary,) = [s for s in studies if s["study_name"] == "tiny"]
        status, body = get(app, f"/api/studies/{summary['study_id']}")
        assert status.startswith("200")
        detail = json.loads(body)
        assert len(detail["trials"]) == 3
        assert detail.get("objective_names") == ["OD", "size_kib"]  # axis labels


@pytest.mark.parametrize(
    "args, expect",
    [
        (["search", "missing.toml"], "cannot read study file"),
        (["search", "{study}", "--devices", "cuda:7"], "cuda"),
        (["search", "{study}", "--devices", "tpu"], "device"),
        (["search", "{study}", "--storage", "mysql://u:secret@h/db"], "bad storage URL"),
        (["export", "{study}", "--trial", "0", "--out", "/nonexistent/dir/m.pt"], "cannot write"),
        (["synth", "{study}", "--png", "/nonexistent/dir/g.png"], "cannot write"),
        (["status", "{study}"], "does not exist"),
    ],
)
def test_bad_cli_input_exits_2(study_file, frandi, args, expect) -> None:
    path = study_file()
    code, out, err = frandi(*[a.replace("{study}", str(path)) for a in args])
    assert code == 2
    assert expect in err and err.count("\n") == 1 and "Traceback" not in err and "secret" not in err
