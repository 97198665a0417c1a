"""Planning: canonical JSON, point ids, names, rendering, quoting safety, argv, golden vectors.

Golden vectors: ``tests/golden/<example>.json`` hold the points, names and workunit
hash of every spec in ``configs/examples/``. After a deliberate change (or to
accept a new numpy/scipy stream), regenerate them with::

    REGEN_GOLDEN=1 .venv/bin/pytest tests/test_plan.py -k golden

and review the diff before committing.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import PlanError
from pipeline.plan import (
    CREATE_WORK_SCRIPT,
    IdTracker,
    PlannedWorkunit,
    canonical_json,
    command_value_problem,
    compile_template,
    parse_wu_name,
    plan,
    plan_point,
    point_id,
    render_command,
    supported_modes,
    sweep_name_prefix,
    wu_name,
)
from pipeline.space import iter_points
from pipeline.spec import SweepSpec, load_spec

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "configs" / "examples").glob("*.yaml"))
GOLDEN = Path(__file__).resolve().parent / "golden"

no_nul_text = st.text().filter(lambda s: "\x00" not in s)
printable_ascii = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E))


def make_spec(*, checked: bool = True, **kw: object) -> SweepSpec:
    data: dict = {"name": "t", "image": "img", "command": ["run", "{a}"]}
    data.update(kw)
    data.setdefault("parameters", {"grid": {"a": [1]}})
    return SweepSpec.model_validate(data, context={"defer_cross_checks": not checked})


# --------------------------------------------------------------------------- canonical JSON and ids


def test_canonical_json_rules() -> None:
    assert canonical_json({"b": 1, "a": 0.1}) == '{"a":0.1,"b":1}'
    assert canonical_json({"x": -0.0}) == canonical_json({"x": 0.0}) == '{"x":0.0}'
    assert canonical_json({"x": np.float64(0.5), "y": np.int32(3)}) == '{"x":0.5,"y":3}'
    assert canonical_json({"s": "é\n"}) == '{"s":"é\\n"}'
    assert point_id({"x": 1}) != point_id({"x": 1.0}) != point_id({"x": True})
    assert point_id({"x": 1e16}) == point_id({"x": 10000000000000000.0})
    for bad in (float("nan"), float("inf"), -float("inf"), [1], {"a": 1}, "a\x00b", b"x"):
        with pytest.raises(PlanError):
            canonical_json({"x": bad})


@given(
    st.dictionaries(
        st.from_regex(r"[a-z_]{1,6}", fullmatch=True),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.floats(allow_nan=False, allow_infinity=False),
            no_nul_text,
        ),
        max_size=5,
    )
)
def test_canonical_json_round_trips(params: dict) -> None:
    text = canonical_json(params)
    back = json.loads(text)
    assert back.keys() == params.keys()
    for k, v in params.items():
        assert type(back[k]) is type(v)
        assert back[k] == v
    assert canonical_json(back) == text
    assert len(point_id(params)) == 16


def test_planned_json_equals_canonical_json_for_every_example() -> None:
    for path in EXAMPLES:
        spec = load_spec(path).model_copy(update={"params_file": True})
        for wu in plan(spec):
            assert dict(wu.input_files)["shared/params.json"] == canonical_json(wu.params).encode()
            assert wu.point_id == point_id(wu.params)


def _reference(spec: SweepSpec, attempt: int = 1) -> list[PlannedWorkunit]:
    """The plan made one point at a time with the plain functions (plan_point)."""
    out, seen = [], set()
    for params in iter_points(spec.parameters):
        key = canonical_json(params)
        if key not in seen:
            seen.add(key)
            out.append(plan_point(spec, params, attempt))
    return out


def _jsonl_reference(wus: list[PlannedWorkunit]) -> str:
    return "".join(
        json.dumps(
            {
                "wu_name": w.wu_name,
                "point_id": w.point_id,
                "attempt": w.attempt,
                "params": w.params,
                "command": w.command,
                "argv": w.argv,
                "input_files": {n: d.decode("utf-8") for n, d in w.input_files},
            },
            ensure_ascii=False,
        )
        + "\n"
        for w in wus
    )


def _assert_same_plan(spec: SweepSpec, attempt: int = 1) -> None:
    expected = _reference(spec, attempt)
    actual = list(plan(spec, attempt))
    assert actual == expected
    for a, e in zip(actual, expected, strict=True):
        assert list(a.params.items()) == list(e.params.items())  # same key order too
        assert [type(v) for v in a.params.values()] == [type(v) for v in e.params.values()]
    assert "".join(plan(spec, attempt).jsonl_chunks()) == _jsonl_reference(expected)


command_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    printable_ascii.filter(lambda s: '"' not in s or "{" in s),
)


@given(
    st.lists(command_scalars, min_size=1, max_size=5),
    st.lists(command_scalars, min_size=1, max_size=4),
    st.sampled_from(["grid", "zip", "product", "concat"]),
    st.integers(1, 3),
)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_plan_equals_point_by_point_planning(a: list, b: list, kind: str, attempt: int) -> None:
    """The chunked, cached planner gives exactly the workunits plan_point gives."""
    if kind == "grid":
        space: dict = {"grid": {"b": b, "a": a}}
    elif kind == "zip":
        space = {"zip": {"b": (b * 5)[: len(a)], "a": a}}
    elif kind == "product":
        space = {"product": [{"grid": {"b": b}}, {"points": [{"a": x} for x in a]}]}
    else:
        space = {"concat": [{"grid": {"a": a, "b": b}}, {"points": [{"b": x, "a": x} for x in a]}]}
    spec = make_spec(
        parameters=space,
        command=["run", "--a={a}", "{b}", "{a}{b}-{{lit}}", "{a}/{a}", "const"],
        params_file=True,
        inputs=[{"path": "in.txt", "template": "a={a} b={b}"}],
    )
    _assert_same_plan(spec, attempt)


def test_plan_equals_point_by_point_planning_for_every_example_and_kind() -> None:
    for path in EXAMPLES:
        spec = load_spec(path)
        _assert_same_plan(spec)
        _assert_same_plan(spec, attempt=3)
    odd = make_spec(
        name="odd",
        image="reg.example/img:1",
        app="app",
        entrypoint="/bin/sh",
        command=["{a}"],
        parameters={
            "concat": [
                {"random": {"n": 50, "seed": 1, "params": {"a": {"choice": [1, 1.0, "x", True]}}}},
                {"lhs": {"n": 20, "seed": 2, "bounds": {"a": [-1.0, 1.0]}}},
                {"grid": {"a": {"linspace": {"start": -1.0, "stop": 1.0, "num": 5}}}},
            ]
        },
    )
    _assert_same_plan(odd)
    noargs = make_spec(command=[], parameters={"grid": {"a": [1, 2]}})
    _assert_same_plan(noargs)
    # a grid bigger than one chunk, with repeats across chunks
    big = make_spec(parameters={"concat": [{"grid": {"a": list(range(5000))}}] * 2})
    wus = list(plan(big))
    assert [w.params["a"] for w in wus] == list(range(5000))
    assert "".join(plan(big).jsonl_chunks()) == _jsonl_reference(wus)


def test_jsonl_limit_and_bad_values_stop_at_the_right_point() -> None:
    spec = make_spec(parameters={"grid": {"a": list(range(10))}})
    stream = plan(spec)
    text = "".join(stream.jsonl_chunks(limit=3))
    assert [json.loads(line)["params"] for line in text.splitlines()] == [
        {"a": 0},
        {"a": 1},
        {"a": 2},
    ]
    assert "".join(plan(spec).jsonl_chunks(limit=0)) == ""
    bad = make_spec(
        checked=False, parameters={"grid": {"a": [1, 2, "x\ny", 3]}}, command=["run", "{a}"]
    )
    got: list = []
    with pytest.raises(PlanError, match="params_file: true"):
        got.extend(wu.params["a"] for wu in plan(bad))
    assert got == [1, 2]  # the points before the bad one are planned
    with pytest.raises(PlanError, match="params_file: true"):
        "".join(plan(bad).jsonl_chunks())


# --------------------------------------------------------------------------- names


@given(
    st.from_regex(r"[a-z0-9-]{1,64}", fullmatch=True),
    st.integers(1, 999_999),
    st.from_regex(r"[0-9a-f]{16}", fullmatch=True),
    st.integers(1, 10_000),
)
def test_wu_name_round_trips_and_prefix(sweep: str, version: int, pid: str, attempt: int) -> None:
    name = wu_name(sweep, version, pid, attempt)
    assert parse_wu_name(name) == (sweep, version, pid, attempt)
    assert len(name) <= 254
    assert name.startswith(sweep_name_prefix(sweep, version))


@given(
    st.from_regex(r"[a-z0-9-]{1,10}", fullmatch=True),
    st.from_regex(r"[a-z0-9-]{1,10}", fullmatch=True),
    st.integers(1, 20),
    st.integers(1, 20),
)
def test_prefix_never_matches_another_sweep(a: str, b: str, va: int, vb: int) -> None:
    name_b = wu_name(b, vb, "0123456789abcdef", 1)
    assert name_b.startswith(sweep_name_prefix(a, va)) == (a == b and va == vb)


@pytest.mark.parametrize(
    "name",
    [
        "x",
        "demo_v1_0123456789abcdef_a0",
        "Demo_v1_0123456789abcdef_a1",
        "a_b_v1_0123456789abcdef_a1",
        "demo_v01_0123456789abcdef_a1",
        "demo_v1_0123456789ABCDEF_a1",
        "demo_v1_0123456789abcde_a1",
        "demo_v1_0123456789abcdef_a1_0",
    ],
)
def test_foreign_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="not a boinc-pipeline workunit name"):
        parse_wu_name(name)


def test_names_are_unique_and_duplicates_reported() -> None:
    spec = make_spec(
        parameters={
            "concat": [{"grid": {"a": [1, 2, 1.0, -0.0, 0.0]}}, {"points": [{"a": 2}, {"a": "2"}]}]
        }
    )
    stream = plan(spec)
    wus = list(stream)
    names = [w.wu_name for w in wus]
    assert len(set(names)) == len(names) == 5  # 1, 2, 1.0, 0.0, "2"
    assert stream.points == 7
    assert stream.duplicates == 2
    assert stream.duplicate_examples == [{"a": 0.0}, {"a": 2}]
    assert [w.command[-1] for w in wus] == ["1", "2", "1.0", "0.0", "2"]


def test_id_tracker_drops_repeats_and_refuses_collisions() -> None:
    # A real SHA-256 prefix collision cannot be produced; the tracker is fed crafted keys.
    t = IdTracker()
    k = np.array([5, 7, 5, 9], dtype=np.uint64)
    c = np.array([1, 2, 1, 3], dtype=np.uint64)
    assert t.add(k, c).tolist() == [True, True, False, True]
    for i in range(40):  # many runs, merged
        t.add(np.array([100 + i], dtype=np.uint64), np.array([0], dtype=np.uint64))
    assert len(t) == 43
    assert t.add(
        np.array([7, 139, 11], dtype=np.uint64), np.array([2, 0, 0], dtype=np.uint64)
    ).tolist() == [False, False, True]
    with pytest.raises(PlanError, match="share the point id 0000000000000009"):
        t.add(np.array([9], dtype=np.uint64), np.array([4], dtype=np.uint64))
    with pytest.raises(PlanError, match="share the point id"):
        IdTracker().add(np.array([1, 1], dtype=np.uint64), np.array([1, 2], dtype=np.uint64))


# --------------------------------------------------------------------------- rendering


def test_render_rules() -> None:
    p = {"i": 3, "f": 0.1, "e": 1e-05, "t": True, "n": None, "s": "a b"}
    out = render_command(["{i}", "{f}", "{e}", "{t}", "{n}", "{s}", "x={i},{{i}}", "{{}}"], p)
    assert out == ["3", "0.1", "1e-05", "true", "null", "a b", "x=3,{i}", "{}"]
    for bad in ("{a.b}", "{a[0]}", "{a!r}", "{a:>10}", "{}", "{0}", "{", "}"):
        with pytest.raises(ValueError, match=r"placeholder|template"):
            compile_template(bad)
    with pytest.raises(PlanError, match="unknown placeholder"):
        render_command(["{zz}"], p)


@pytest.mark.parametrize("value", ["a\nb", "tab\there", "é", "\x7f", "\r"])
def test_command_line_refuses_what_printf_q_breaks_and_points_to_params_file(value: str) -> None:
    spec = make_spec(
        checked=False,
        parameters={"grid": {"a": [value]}},
        params_file=True,
        command=["run", "--a={a}"],
    )
    with pytest.raises(PlanError, match="params_file: true"):
        list(plan(spec))
    with pytest.raises(ValueError, match="params_file: true"):  # validation says so first
        make_spec(parameters={"grid": {"a": [value]}}, command=["run", "--a={a}"])
    ok = make_spec(parameters={"grid": {"a": [value]}}, params_file=True, command=["run"])
    (wu,) = list(plan(ok))
    assert json.loads(dict(wu.input_files)["shared/params.json"]) == {"a": value}


def _shell_round_trip(args: list[str]) -> list[bytes]:
    script = shlex.join(["printf", "%s\\0", *args])
    out = subprocess.run(["sh", "-c", script], capture_output=True, check=True).stdout
    return out.split(b"\0")[:-1]


@given(st.lists(printable_ascii, min_size=1, max_size=6))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_rendered_argv_survives_a_real_shell(values: list[str]) -> None:
    spec = make_spec(
        parameters={"zip": {f"v{i}": [v] for i, v in enumerate(values)}},
        command=["prog", *[f"--v{i}={{v{i}}}" for i in range(len(values))], "{v0}"],
    )
    (wu,) = list(plan(spec))
    assert wu.command[-1] == values[0]
    assert _shell_round_trip(wu.argv) == [a.encode() for a in wu.argv]


@given(
    st.lists(
        no_nul_text.filter(
            lambda s: s < "\ud800" or not any(0xD800 <= ord(c) <= 0xDFFF for c in s)
        ),
        min_size=1,
        max_size=8,
    )
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_accepted_is_exactly_what_survives_printf_q_then_dash(values: list[str]) -> None:
    """What boinc2docker does: bash ``printf %q`` each argument, paste into a /bin/sh script.

    The container's locale is not known, so the C locale (any container's default)
    is the one to survive; the planner accepts a value iff it arrives intact.
    """
    env = {"PATH": os.environ["PATH"], "LC_ALL": "C"}
    quoted = subprocess.run(
        ["bash", "-c", 'printf "%q\\0" "$@"', "_", *values],
        capture_output=True,
        check=True,
        env=env,
    ).stdout.split(b"\0")[:-1]
    assert len(quoted) == len(values)
    for value, q in zip(values, quoted, strict=True):
        run = subprocess.run(
            ["dash", "-c", b"printf '%s' " + (q or b"''")], capture_output=True, env=env
        )
        intact = run.returncode == 0 and run.stdout == value.encode("utf-8")
        assert (command_value_problem(value) is None) == intact, (value, q, run)


def test_python2_argparse_keeps_the_command_after_image(python2: str) -> None:
    """boinc2docker_create_work.py (Python 2) parses options, IMAGE, then COMMAND as REMAINDER."""
    spec = make_spec(
        parameters={"points": [{"a": "--appname=evil"}, {"a": "--"}, {"a": "-x y"}, {"a": ""}]},
        command=["run", "{a}", "--min_quorum", "7"],
        entrypoint="/bin/sh",
        job={"rsc_memory_bound": 2e9},
    )
    wus = list(plan(spec))
    code = (
        "import argparse, json, sys\n"
        "p = argparse.ArgumentParser()\n"
        "p.add_argument('IMAGE'); p.add_argument('COMMAND', nargs=argparse.REMAINDER)\n"
        "p.add_argument('--entrypoint'); p.add_argument('--appname', default='boinc2docker')\n"
        "for o in ('priority', 'min_quorum', 'target_nresults', 'max_error_results',\n"
        "          'max_total_results', 'max_success_results', 'rsc_memory_bound',\n"
        "          'rsc_disk_bound'):\n"
        "    p.add_argument('--' + o, type=int)\n"
        "for o in ('delay_bound', 'rsc_fpops_est', 'rsc_fpops_bound'):\n"
        "    p.add_argument('--' + o, type=float)\n"
        "p.add_argument('--wu_name')\n"
        "for line in sys.stdin:\n"
        "    a = p.parse_args(json.loads(line)[1:])\n"
        "    print(json.dumps([a.IMAGE, a.COMMAND, a.wu_name, a.min_quorum,\n"
        "                      a.rsc_memory_bound, a.appname, a.entrypoint]))\n"
    )
    stdin = "".join(json.dumps(w.argv) + "\n" for w in wus)
    out = subprocess.run(
        [python2, "-c", code], input=stdin, capture_output=True, text=True, check=True
    ).stdout
    for w, line in zip(wus, out.splitlines(), strict=True):
        assert json.loads(line) == [
            "img",
            w.command,
            w.wu_name,
            1,
            2000000000,
            "boinc2docker",
            "/bin/sh",
        ]


# --------------------------------------------------------------------------- argv, modes, files


def test_argv_layout() -> None:
    spec = make_spec(
        entrypoint="python3", job={"rsc_memory_bound": 2e9, "rsc_disk_bound": 3000000000.0}
    )
    (wu,) = list(plan(spec, attempt=2))
    argv = wu.argv
    assert argv[0] == CREATE_WORK_SCRIPT
    image_at = argv.index("img")
    assert argv[image_at + 1 :] == wu.command == ["run", "1"]
    opts = dict(zip(argv[1:image_at:2], argv[2:image_at:2], strict=True))
    assert opts["--wu_name"] == wu.wu_name == f"t_v1_{wu.point_id}_a2"
    assert opts["--min_quorum"] == opts["--target_nresults"] == "1"
    assert opts["--rsc_memory_bound"] == "2000000000"
    assert opts["--rsc_disk_bound"] == "3000000000"
    assert opts["--entrypoint"] == "python3"
    for key in (
        "--max_error_results",
        "--max_total_results",
        "--max_success_results",
        "--delay_bound",
        "--priority",
        "--appname",
    ):
        assert key in opts
    assert parse_wu_name(wu.wu_name).attempt == 2


def test_modes_inputs_and_files() -> None:
    plain = make_spec()
    assert supported_modes(plain) == {"script", "batch", "fast"}
    spec = make_spec(
        inputs=[{"path": "cfg/in.txt", "template": "a = {a}\n{{literal}}\n"}],
        params_file=True,
        prerun=["echo 'pre'"],
        postrun=["ls /root/shared/results"],
        parameters={"grid": {"a": ["x y", 2]}},
    )
    assert supported_modes(spec) == {"batch", "fast"}
    wus = list(plan(spec))
    assert dict(wus[0].input_files) == {
        "shared/cfg/in.txt": b"a = x y\n{literal}\n",
        "shared/params.json": b'{"a":"x y"}',
    }
    assert wus[1].prerun == ("echo 'pre'",)
    assert wus[1].postrun == ("ls /root/shared/results",)


def test_streaming_does_not_hold_the_sweep() -> None:
    spec = make_spec(parameters={"grid": {"a": list(range(1000)), "b": list(range(300))}})
    stream = plan(spec)
    first = next(stream)
    assert first.params == {"a": 0, "b": 0}
    assert stream.points <= 4096  # only one chunk generated so far


# ---------------------------------------------------------------- determinism and golden vectors


def _digest_of_plans(paths: list[str]) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in paths:
        spec = load_spec(p)
        h.update(spec.workunit_hash().encode())
        for wu in plan(spec):
            h.update(json.dumps([wu.argv, [[n, d.hex()] for n, d in wu.input_files]]).encode())
    return h.hexdigest()


def test_plans_are_identical_in_another_process_with_another_hash_seed() -> None:
    paths = [str(p) for p in EXAMPLES]
    here = _digest_of_plans(paths)
    code = (
        "import sys, json; from tests.test_plan import _digest_of_plans; "
        "print(_digest_of_plans(json.loads(sys.argv[1])))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(paths)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=ROOT,
    )
    assert out.stdout.strip() == here


def _golden(path: Path) -> dict:
    spec = load_spec(path)
    stream = plan(spec)
    wus = [{"wu_name": w.wu_name, "params": w.params} for w in stream]
    return {"workunit_hash": spec.workunit_hash(), "points": stream.points, "workunits": wus}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_golden_vectors(path: Path) -> None:
    golden_file = GOLDEN / f"{path.stem}.json"
    actual = _golden(path)
    if os.environ.get("REGEN_GOLDEN"):
        golden_file.write_text(json.dumps(actual, indent=1, ensure_ascii=False) + "\n")
    expected = json.loads(golden_file.read_text())
    assert actual["workunits"] == expected["workunits"], (
        "points or names changed: see the module docstring"
    )
    assert actual == expected
    # and the stored floats keep their exact type and value
    for w_a, w_e in zip(actual["workunits"], expected["workunits"], strict=True):
        assert [type(v) for v in w_a["params"].values()] == [
            type(v) for v in w_e["params"].values()
        ]


def test_pipeline_plan_is_the_function_and_the_emulator_tools_load_without_numpy() -> None:
    code = (
        "import sys, pipeline.emulator.tools\n"
        "assert 'numpy' not in sys.modules and 'pipeline.plan' not in sys.modules\n"
        "import pipeline, pipeline.plan\n"
        "from pipeline.plan import PlannedWorkunit\n"
        "from pipeline import plan\n"
        "assert plan is pipeline.plan and plan.__name__ == 'plan' and callable(plan)\n"
        "assert sys.modules['pipeline.plan'].PlannedWorkunit is PlannedWorkunit\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
