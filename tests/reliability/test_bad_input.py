"""Bad input never corrupts a study: exit code 2, one line naming the problem and the fix, no traceback,
every row of every table as it was, and no password in any output."""

from __future__ import annotations

import logging
import shutil
import socket
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import torch

from search.cli import main
from tests.conftest_pg import PgServer
from tests.tiny_study import make_weights, study_text

from ._models import no_bn

PASSWORD = "hunter2-secret"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens once the socket is closed


def dump(db: Path) -> dict[str, list[str]]:
    """Every row of every table (Optuna's and ours), sorted: equal dumps mean an untouched database."""
    engine = sqlalchemy.create_engine(f"sqlite:///{db}")
    try:
        meta = sqlalchemy.MetaData()
        meta.reflect(engine)
        with engine.connect() as conn:
            return {
                t.name: sorted(repr(tuple(r)) for r in conn.execute(sqlalchemy.select(t))) for t in meta.sorted_tables
            }
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A study with 2 finished trials, a failed one and its cached batches, made once; tests copy it."""
    root = tmp_path_factory.mktemp("base")
    make_weights(root / "tiny.pt")
    torch.save(no_bn().state_dict(), root / "no_bn.pt")
    study = root / "study.toml"
    study.write_text(study_text(n_trials=2, steps=1))
    assert main(["search", str(study), "--no-progress"]) == 0
    storage = optuna.storages.RDBStorage(f"sqlite:///{root / 'runs' / 'rel.db'}")
    failed = optuna.load_study(study_name="rel", storage=storage)
    trial = failed.ask()
    trial.set_user_attr("fail_reason", "output discrepancy is nan")
    failed.tell(trial, state=optuna.trial.TrialState.FAIL)
    storage.engine.dispose()
    return root


@pytest.fixture
def workdir(base: Path, tmp_path: Path) -> Path:
    for name in ("tiny.pt", "no_bn.pt", "study.toml"):
        shutil.copy(base / name, tmp_path / name)
    (tmp_path / "runs").mkdir()
    shutil.copy(base / "runs" / "rel.db", tmp_path / "runs" / "rel.db")
    return tmp_path


CLOSED = _closed_port()
S = "{study}"
CASES = [
    # id, (old, new) edits of the study file, command line, problem named, fix named
    ("malformed-toml", [("[study]", "[study")], ["search", S], "is not valid TOML", "fix the syntax"),
    (
        "unknown-key",
        [("[recovery]", "[recovery]\nstepz = 5")],
        ["search", S],
        "unknown key 'recovery.stepz'",
        "known keys of [recovery]: steps",
    ),
    ("unknown-section", [("[run]", "[runs]")], ["search", S], "unknown section [runs]", "sections are"),
    (
        "wrong-type-int",
        [("n_trials = 2", 'n_trials = "ten"')],
        ["search", S],
        "'study.n_trials' must be an integer",
        "got str 'ten'",
    ),
    ("wrong-type-list", [("bits = [4, 8, 32]", "bits = 8")], ["search", S], "'space.bits' must be a list", "got int 8"),
    (
        "missing-weights",
        [('weights = "tiny.pt"', 'weights = "gone.pt"')],
        ["search", S],
        "gone.pt' does not exist",
        "check [model] weights",
    ),
    (
        "weights-do-not-fit",
        [("widths = [4, 8]", "widths = [4, 16]")],
        ["search", S],
        "do not fit architecture",
        "check the kwargs",
    ),
    (
        "architecture-not-importable",
        [("frandi_core.models:resnet", "frandi_nosuch.models:resnet")],
        ["search", S],
        "cannot import module 'frandi_nosuch.models'",
        "install it or fix the name",
    ),
    (
        "architecture-no-callable",
        [("frandi_core.models:resnet", "frandi_core.models:resnet9000")],
        ["search", S],
        "has no callable 'resnet9000'",
        "fix the name",
    ),
    (
        "no-batchnorm",
        [
            ("frandi_core.models:resnet", "tests.reliability._models:no_bn"),
            ("{ widths = [4, 8] }", "{}"),
            ('"tiny.pt"', '"no_bn.pt"'),
        ],
        ["search", S],
        "has no BatchNorm layers",
        "needs BN statistics",
    ),
    (
        "layer-pattern-matches-nothing",
        [('layers = ["re:.*"]', 'layers = ["re:conv9.*"]')],
        ["search", S],
        "'re:conv9.*' matches no compressible layer",
        "layers are ['stem.0'",
    ),
    (
        "sparsity-one",
        [("sparsity = [0.0, 0.8]", "sparsity = [0.0, 1.0]")],
        ["search", S],
        "space.sparsity must be [low, high]",
        "0 <= low <= high < 1",
    ),
    (
        "sparsity-negative",
        [("sparsity = [0.0, 0.8]", "sparsity = [-0.1, 0.5]")],
        ["search", S],
        "space.sparsity must be [low, high]",
        "0 <= low <= high < 1",
    ),
    (
        "fixed-sparsity-over-one",
        [("[space]", '[space]\nfixed = { "layer1.0.conv1" = { sparsity = 1.5 } }')],
        ["search", S],
        "'space.fixed.layer1.0.conv1': sparsity must be in [0, 1)",
        "got 1.5",
    ),
    (
        "baseline-sparsity-one",
        [("baselines = [0.5]", "baselines = [1.0]")],
        ["search", S],
        "study.baselines has sparsity 1.0",
        "outside [0, 1)",
    ),
    (
        "unknown-precision",
        [("[recovery]", '[recovery]\nprecision = "fp16"')],
        ["search", S],
        "[recovery] recovery precision must be 'fp32' or 'bf16'",
        "got 'fp16'",
    ),
    ("bits-one", [("bits = [4, 8, 32]", "bits = [1, 8]")], ["search", S], "space.bits has 1", "use 2..8"),
    ("bits-sixteen", [("bits = [4, 8, 32]", "bits = [4, 16]")], ["search", S], "space.bits has 16", "use 2..8"),
    (
        "act-bits-nine",
        [("bits = [4, 8, 32]", "bits = [4, 8, 32]\nact_bits = [4, 9]")],
        ["search", S],
        "space.act_bits has 9",
        "use 2..8, or 32 to keep fp32",
    ),
    (
        "act-bits-one",
        [("bits = [4, 8, 32]", "bits = [4, 8, 32]\nact_bits = [1]")],
        ["search", S],
        "space.act_bits has 1",
        "use 2..8, or 32 to keep fp32",
    ),
    (
        "fixed-act-bits-sixteen",
        [("[space]", '[space]\nfixed = { "layer1.0.conv1" = { act_bits = 16 } }')],
        ["search", S],
        "'space.fixed.layer1.0.conv1': act_bits must be an integer in 2..8",
        "got 16",
    ),
    (
        "unknown-calibration",
        [("[recovery]", '[recovery]\ncalibration = "kl"')],
        ["search", S],
        "[recovery] calibration 'kl' is unknown",
        "use one of minmax, percentile, mse",
    ),
    (
        "unknown-objective",
        [("[study]", '[study]\nobjectives = ["od", "flops"]')],
        ["search", S],
        "study.objectives ['od', 'flops'] is invalid",
        '["od", "bops"]',
    ),
    (
        "negative-max-bops",
        [("[study]", "[study]\nmax_bops = -1.0")],
        ["search", S],
        "study.max_bops must be > 0",
        "got -1.0",
    ),
    (
        "grace-period-too-short",
        [("grace_period = 3", "grace_period = 1")],
        ["search", S],
        "run.grace_period must be larger",
        "run.heartbeat_interval",
    ),
    (
        "unreachable-postgres",
        [],
        ["search", S, "--storage", f"postgresql://frandi:{PASSWORD}@127.0.0.1:{CLOSED}/db"],
        "cannot reach storage postgresql+psycopg://frandi:***@127.0.0.1",
        "check the server is running",
    ),
    (
        "unreachable-postgres-status",
        [],
        ["status", S, "--storage", f"postgresql://frandi:{PASSWORD}@127.0.0.1:{CLOSED}/db"],
        "cannot reach storage",
        "check the server is running",
    ),
    (
        "malformed-url-port",
        [],
        ["search", S, "--storage", f"postgresql://frandi:{PASSWORD}@127.0.0.1:port/db"],
        "bad storage URL",
        "use sqlite:///file.db or postgresql://user@host/db",
    ),
    (
        "malformed-url-scheme",
        [("sqlite:///runs/rel.db", f"mysql://frandi:{PASSWORD}@db.example/rel")],
        ["search", S],
        "unsupported scheme 'mysql'",
        "use sqlite:///file.db or postgresql://user@host/db",
    ),
    (
        "in-memory-sqlite",
        [],
        ["search", S, "--storage", "sqlite://"],
        "in-memory SQLite database cannot be shared",
        "use sqlite:///file.db",
    ),
    ("changed-study-file", [("steps = 1", "steps = 3")], ["search", S], "recovery changed", "--force"),
    (
        "changed-objectives",
        [("[study]", '[study]\nobjectives = ["od"]\nmin_ratio = 2.0')],
        ["search", S],
        "exists with 2 objective(s)",
        "use a new study.name",
    ),
    (
        "unknown-study",
        [('name = "rel"', 'name = "other"')],
        ["status", S],
        "study 'other' does not exist",
        "start it with frandi search",
    ),
    ("missing-study-file", [], ["search", "{tmp}/nope.toml"], "cannot read study file", "check the path"),
    (
        "export-missing-trial",
        [],
        ["export", S, "--trial", "99", "--out", "{tmp}/m.pt"],
        "trial 99 does not exist",
        "(0..2)",
    ),
    (
        "export-failed-trial",
        [],
        ["export", S, "--trial", "2", "--out", "{tmp}/m.pt"],
        "trial 2 is FAIL",
        "export a finished trial",
    ),
    ("device-missing-gpu", [], ["search", S, "--devices", "cuda:7"], "no CUDA GPU", "use --devices cpu"),
    ("device-unknown", [], ["worker", S, "--device", "tpu"], "device 'tpu'", "use cpu, cuda or cuda:N"),
    (
        "export-device-missing",
        [],
        ["export", S, "--trial", "0", "--out", "{tmp}/m.pt", "--device", "cuda:1"],
        "no CUDA GPU",
        "use --devices cpu",
    ),
    (
        "out-folder-missing",
        [],
        ["export", S, "--trial", "0", "--out", "/nonexistent/dir/m.pt"],
        "cannot write '/nonexistent/dir/m.pt'",
        "does not exist or is not writable",
    ),
    ("out-is-a-folder", [], ["export", S, "--trial", "0", "--out", "{tmp}"], "is a folder", "give a file name"),
    ("png-under-a-file", [], ["synth", S, "--png", "{tmp}/tiny.pt/grid.png"], "cannot write", "is not writable"),
    ("zero-workers", [], ["search", S, "--workers", "0"], "--workers must be >= 1", "got 0"),
]


@pytest.mark.parametrize("edits, args, problem, fix", [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_bad_input_exits_2_with_one_line_and_leaves_the_database_alone(
    workdir: Path, edits, args, problem, fix, capsys, caplog
) -> None:
    study = workdir / "study.toml"
    text = study.read_text()
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    study.write_text(text)
    db = workdir / "runs" / "rel.db"
    before = dump(db)
    files = sorted(workdir.rglob("*"))

    with caplog.at_level(logging.WARNING):
        code = main([a.replace(S, str(study)).replace("{tmp}", str(workdir)) for a in args])
    out, err = capsys.readouterr()

    assert code == 2, (out, err)
    assert err.count("\n") == 1 and err.startswith("frandi: error: "), err
    assert problem in err and fix in err, err
    assert "Traceback" not in err
    assert PASSWORD not in out + err + caplog.text
    assert dump(db) == before
    assert sorted(workdir.rglob("*")) == files  # nothing written, not even an empty output file


@pytest.mark.postgres
def test_passwords_are_never_printed(pg_server: PgServer, workdir: Path, capsys, caplog) -> None:
    """A real server (trust auth ignores the password) reached with a password in the URL, as over a network."""
    url = pg_server.create_schema().replace(f"//{pg_server.user}@", f"//{pg_server.user}:{PASSWORD}@")
    assert PASSWORD in url
    storage = optuna.storages.RDBStorage(url)
    optuna.create_study(study_name="rel", storage=storage, directions=["minimize", "minimize"])
    storage.engine.dispose()
    study = workdir / "study.toml"
    with caplog.at_level(logging.DEBUG):
        assert main(["status", str(study), "--storage", url]) == 0
        assert main(["pareto", str(study), "--storage", url, "--format", "json"]) == 0
        study.write_text(study.read_text().replace('name = "rel"', 'name = "missing"'))
        assert main(["status", str(study), "--storage", url]) == 2
    out, err = capsys.readouterr()
    assert "***@127.0.0.1" in err
    assert PASSWORD not in out + err + caplog.text
