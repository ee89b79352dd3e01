"""Bad input never corrupts a study: exit code 2, one line naming the problem and the fix, no traceback, no
library warning, every row of every table as it was, no file or folder created, and no password in any output.
And every command run in-process leaves a SQLite study file whole: nothing is left in its write-ahead log."""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import shutil
import socket
import sqlite3
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import torch
from torch import nn

from search.cli import main
from storage import open_storage
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


def copy_database(src: Path, dst: Path) -> None:
    """Copy a SQLite database that may be in use with SQLite's backup API (a byte copy would miss its WAL)."""
    with contextlib.closing(sqlite3.connect(src)) as a, contextlib.closing(sqlite3.connect(dst)) as b:
        a.backup(b)


def two_outputs() -> nn.Module:
    """An architecture (for study files: tests.reliability.test_bad_input:two_outputs) returning a tuple."""

    class TwoOutputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm2d(1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            y = self.bn(x).flatten(1)
            return y, y

    return TwoOutputs()


def _bad_weights(root: Path) -> None:
    """Weights files a user may name by mistake, each wrong in its own way."""
    with warnings.catch_warnings():  # TorchScript is deprecated; users still have such files
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))), root / "script.pt")
    with open(root / "pickle.pt", "wb") as f:
        pickle.dump({"stem.0.weight": [0.0] * 4}, f)  # a plain pickle, as a non-torch tool writes
    (root / "empty.pt").write_bytes(b"")
    (root / "truncated.pt").write_bytes((root / "tiny.pt").read_bytes()[:2000])
    (root / "folder.pt").mkdir()
    torch.save(two_outputs().state_dict(), root / "two.pt")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A study with 2 finished trials, a failed one and its cached batches, made once; tests copy it."""
    root = tmp_path_factory.mktemp("base")
    make_weights(root / "tiny.pt")
    torch.save(no_bn().state_dict(), root / "no_bn.pt")
    _bad_weights(root)
    (root / "empty.db").write_bytes(b"")
    with contextlib.closing(sqlite3.connect(root / "other.db")) as other:
        other.execute("CREATE TABLE notes (text TEXT)")  # some other application's database
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
    for path in base.iterdir():
        if path.is_file():
            shutil.copy(path, tmp_path / path.name)
        elif path.name != "runs":
            shutil.copytree(path, tmp_path / path.name)
    (tmp_path / "runs").mkdir()
    copy_database(base / "runs" / "rel.db", tmp_path / "runs" / "rel.db")
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
        '["od", "latency"]',
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
    (
        "export-over-an-existing-file",
        [],
        ["export", S, "--trial", "0", "--out", "{tmp}/tiny.pt"],
        "already exists",
        "pass --overwrite to replace it",
    ),
    ("png-under-a-file", [], ["synth", S, "--png", "{tmp}/tiny.pt/grid.png"], "cannot write", "is not writable"),
    ("zero-workers", [], ["search", S, "--workers", "0"], "--workers must be >= 1", "got 0"),
    ("negative-threads", [], ["worker", S, "--threads", "-2"], "--threads must be >= 0", "got -2"),
    ("negative-tolerance", [], ["export", S, "--trial", "0", "--out", "{tmp}/m.pt", "--tolerance", "-1"],
     "--tolerance must be a number >= 0", "got -1.0"),
    ("nan-tolerance", [], ["export", S, "--trial", "0", "--out", "{tmp}/m.pt", "--tolerance", "nan"],
     "--tolerance must be a number >= 0", "got nan"),
    ("port-out-of-range", [], ["dashboard", S, "--port", "70000"], "--port must be in 1..65535", "got 70000"),
    ("port-in-use", [], ["dashboard", S, "--port", "{busy}"], "Address already in use", "choose another --port"),
    ("no-device", [], ["search", S, "--devices", ","], "--devices ',' names no device", "cpu or cuda:0,cuda:1"),
    ("png-not-png", [], ["synth", S, "--png", "{tmp}/grid.jpg"], "--png", "must name a .png file"),
    ("empty-study-name", [('name = "rel"', 'name = " "')], ["search", S], "study.name is empty", "name the study"),
    # the study file itself
    ("study-file-not-utf8", [('name = "rel"', 'name = "r\udce9l"')], ["status", S], "is not UTF-8 text (byte 0xe9",
     "save it as UTF-8"),
    ("study-file-is-a-folder", [], ["status", "{tmp}/runs"], "runs' is a folder", "give the .toml file"),
    # the model: checked (one forward at input_shape) before anything is stored, new study or --force
    ("input-shape-new-study",
     [("input_shape = [1, 8, 8]", "input_shape = [3, 8, 8]"), ('name = "rel"', 'name = "new"')], ["search", S],
     "cannot run on input_shape [3, 8, 8]", "set [model] input_shape"),
    ("input-shape-force", [("input_shape = [1, 8, 8]", "input_shape = [3, 8, 8]")], ["search", S, "--force"],
     "cannot run on input_shape [3, 8, 8]", "set [model] input_shape"),
    ("input-shape-new-database", [("input_shape = [1, 8, 8]", "input_shape = [1, 8]")],
     ["search", S, "--storage", "sqlite:///{tmp}/new/fresh.db"], "cannot run on input_shape [1, 8]",
     "set [model] input_shape"),
    ("input-shape-synth-new-database", [("input_shape = [1, 8, 8]", "input_shape = [2, 8, 8]")],
     ["synth", S, "--storage", "sqlite:///{tmp}/new/fresh.db"], "cannot run on input_shape [2, 8, 8]",
     "set [model] input_shape"),
    ("input-range-reversed", [("[synthetic]", "[synthetic]\ninput_range = [2.0, -1.0]")], ["search", S],
     "synthetic.input_range must have low < high", "write [low, high]"),
    ("input-range-channels", [("[synthetic]", "[synthetic]\ninput_range = [[0, 0, 0], [1, 1, 1]]")], ["search", S],
     "gives 3 values per bound, but the input has 1 channel(s)", "give one value, or one per channel"),
    ("input-range-not-numbers", [("[synthetic]", '[synthetic]\ninput_range = ["low", 1]')], ["search", S],
     "'synthetic.input_range[0]' must be a number", "got str 'low'"),
    ("model-returns-a-tuple",
     [("frandi_core.models:resnet", "tests.reliability.test_bad_input:two_outputs"), ("{ widths = [4, 8] }", "{}"),
      ('"tiny.pt"', '"two.pt"'), ('name = "rel"', 'name = "new"')],
     ["search", S], "returns tuple for a batch of 2 inputs", "returns one tensor with the batch first"),
    # weights files of the wrong kind: what is wrong, in our words (never torch's weights_only=False advice)
    ("weights-torchscript", [('"tiny.pt"', '"script.pt"')], ["search", S], "is a TorchScript archive",
     "torch.save(model.state_dict(), path)"),
    ("weights-plain-pickle", [('"tiny.pt"', '"pickle.pt"')], ["search", S], "is not a PyTorch weights file",
     "torch.save(model.state_dict(), path)"),
    ("weights-empty", [('"tiny.pt"', '"empty.pt"')], ["search", S], "empty.pt' cannot be read: it is empty",
     "torch.save(model.state_dict(), path)"),
    ("weights-truncated", [('"tiny.pt"', '"truncated.pt"')], ["search", S], "is truncated or corrupted",
     "torch.save(model.state_dict(), path)"),
    ("weights-folder", [('"tiny.pt"', '"folder.pt"')], ["worker", S], "folder.pt' is a folder",
     "set [model] weights"),
    # storage paths: read-only commands create nothing; what is wrong with the path is said as it is
    ("status-storage-typo", [], ["status", S, "--storage", "sqlite:///{tmp}/rnus/rel.db"], "rel.db' does not exist",
     "check --storage and [study] storage"),
    ("pareto-storage-typo", [("sqlite:///runs/rel.db", "sqlite:///run/rel.db")], ["pareto", S], "does not exist",
     "check --storage and [study] storage"),
    ("worker-storage-typo", [], ["worker", S, "--storage", "sqlite:///{tmp}/rnus/rel.db"], "does not exist",
     "start the study with frandi search"),
    ("export-storage-typo", [], ["export", S, "--trial", "0", "--out", "{tmp}/m.pt", "--storage",
     "sqlite:///{tmp}/rnus/rel.db"], "does not exist", "check --storage"),
    ("storage-folder-under-a-file", [], ["search", S, "--storage", "sqlite:///{tmp}/tiny.pt/rel.db"],
     "tiny.pt' is a file", "check --storage"),
    ("storage-is-a-folder", [], ["status", S, "--storage", "sqlite:///{tmp}/runs"], "runs' is a folder",
     "name a file such as"),
    ("storage-is-not-a-database", [], ["search", S, "--storage", "sqlite:///{tmp}/tiny.pt"],
     "tiny.pt' is not a SQLite database", "check --storage"),
    ("storage-is-the-study-file", [], ["status", S, "--storage", "sqlite:///{tmp}/study.toml"],
     "is not a SQLite database", "check --storage"),
    ("storage-empty-file", [], ["pareto", S, "--storage", "sqlite:///{tmp}/empty.db"], "is an empty file",
     "check --storage"),
    ("storage-another-database", [], ["status", S, "--storage", "sqlite:///{tmp}/other.db"],
     "holds no frandi study (no table 'studies')", "start the study with frandi search"),
    ("unreachable-postgres-worker", [],
     ["worker", S, "--storage", f"postgresql://frandi:{PASSWORD}@127.0.0.1:{CLOSED}/db"], "cannot reach storage",
     "check the server is running"),
]


@pytest.mark.parametrize("edits, args, problem, fix", [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_bad_input_exits_2_with_one_line_and_leaves_the_database_alone(
    workdir: Path, edits, args, problem, fix, capsys, caplog
) -> None:
    busy = socket.socket()  # a port something listens on, for "{busy}"
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    study = workdir / "study.toml"
    text = study.read_text()
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    study.write_bytes(text.encode("utf-8", "surrogateescape"))  # "\udcXX" in an edit writes the byte 0xXX
    db = workdir / "runs" / "rel.db"
    before = {p.name: dump(p) for p in (db, workdir / "other.db")}
    files = sorted(workdir.rglob("*"))

    with caplog.at_level(logging.WARNING):
        with busy:
            port = str(busy.getsockname()[1])
            code = main([a.replace(S, str(study)).replace("{tmp}", str(workdir)).replace("{busy}", port) for a in args])
    out, err = capsys.readouterr()

    assert code == 2, (out, err)
    assert err.count("\n") == 1 and err.startswith("frandi: error: "), err
    assert problem in err and fix in err, err
    assert "Traceback" not in err and "Warning" not in err and "weights_only=False" not in err
    assert PASSWORD not in out + err + caplog.text
    assert {p.name: dump(p) for p in (db, workdir / "other.db")} == before
    assert sorted(workdir.rglob("*")) == files  # nothing written, not even an empty output file or database
    assert (workdir / "empty.db").stat().st_size == 0


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make ``path`` read-only, for root too (chattr +i), or skip the test; always made writable again."""
    root = os.geteuid() == 0  # root writes whatever a file's mode says: only the immutable flag stops it
    if not root:
        path.chmod(0o444)
    elif subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False).returncode != 0:
        pytest.skip("chattr +i cannot make a file read-only for root here")
    try:
        yield
    finally:
        if root:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        else:
            path.chmod(0o644)


READ_ONLY = [
    # command line, exit code, what its output holds
    (["status", S], 0, "complete: 2"),
    (["pareto", S, "--format", "json"], 0, '"trial": '),  # the front, read (which trials are on it: the data's)
    (["search", S, "--n-trials", "3", "--no-progress"], 2, "rel.db' is read-only; make it writable"),
    (["worker", S], 2, "rel.db' is read-only; make it writable"),
]


@pytest.mark.parametrize("args, code, expected", [pytest.param(*c, id=c[0][0]) for c in READ_ONLY])
def test_a_read_only_database_is_read_and_never_written(workdir: Path, args, code, expected, capsys) -> None:
    db = workdir / "runs" / "rel.db"
    before = dump(db)
    with read_only(db):
        got = main([a.replace(S, str(workdir / "study.toml")) for a in args])
    out, err = capsys.readouterr()
    assert got == code, err
    assert expected in out + err
    assert code == 0 or (err.count("\n") == 1 and err.startswith("frandi: error: ")), err
    assert dump(db) == before


WHOLE = [
    # command line, trials the study holds afterwards
    (["search", S, "--n-trials", "3", "--no-progress"], 4),  # one more finished trial
    (["worker", S], 3),
    (["status", S], 3),
    (["pareto", S], 3),
    (["export", S, "--trial", "0", "--out", "{tmp}/m.pt"], 3),
    (["synth", S], 3),
    (["evaluate", S, "--data", "digits", "--trials", "0,1"], 3),  # stores the accuracies in the study
    (["export", S, "--trial", "99", "--out", "{tmp}/m.pt"], 3),  # refused: exit 2
]


@pytest.mark.parametrize("args, n_trials", [pytest.param(*c, id="-".join(c[0][:1] + c[0][2:4])) for c in WHOLE])
def test_main_leaves_the_sqlite_file_whole(workdir: Path, args, n_trials, capsys) -> None:
    """When main() returns, no connection is left open: SQLite has moved its write-ahead log into the file and
    removed it, so a byte copy of the file alone, taken at once, holds every row."""
    db = workdir / "runs" / "rel.db"
    main([a.replace(S, str(workdir / "study.toml")).replace("{tmp}", str(workdir)) for a in args])
    assert not Path(f"{db}-wal").exists(), capsys.readouterr()
    shutil.copy(db, workdir / "copy.db")
    assert dump(workdir / "copy.db") == dump(db)
    assert len(dump(workdir / "copy.db")["trials"]) == n_trials


@pytest.mark.postgres
def test_passwords_are_never_printed(pg_server: PgServer, workdir: Path, capsys, caplog) -> None:
    """A real server (trust auth ignores the password) reached with a password in the URL, as over a network."""
    url = pg_server.create_schema().replace(f"//{pg_server.user}@", f"//{pg_server.user}:{PASSWORD}@")
    assert PASSWORD in url
    with open_storage(url) as st:
        optuna.create_study(study_name="rel", storage=st.optuna, directions=["minimize", "minimize"])
    study = workdir / "study.toml"
    with caplog.at_level(logging.DEBUG):
        assert main(["status", str(study), "--storage", url]) == 0
        assert main(["pareto", str(study), "--storage", url, "--format", "json"]) == 0
        study.write_text(study.read_text().replace('name = "rel"', 'name = "missing"'))
        assert main(["status", str(study), "--storage", url]) == 2
    out, err = capsys.readouterr()
    assert "***@127.0.0.1" in err
    assert PASSWORD not in out + err + caplog.text


@pytest.mark.postgres
@pytest.mark.parametrize("command", ["status", "pareto", "worker"])
def test_commands_that_need_a_study_create_no_table_on_postgres(pg_server: PgServer, workdir: Path, command, capsys):
    """On a reachable server, a database (here a schema) without a study is refused and left empty."""
    url = pg_server.create_schema()
    assert main([command, str(workdir / "study.toml"), "--storage", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("frandi: error: ") and "holds no frandi study (no table 'studies')" in err, err
    engine = sqlalchemy.create_engine(url)
    try:
        assert sqlalchemy.inspect(engine).get_table_names() == []
    finally:
        engine.dispose()
