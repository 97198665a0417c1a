"""Fast mode's pure parts: printf %q against real bash, names, templates, lines, boinc_app."""

from __future__ import annotations

import random
import re
import subprocess
import xml.etree.ElementTree as ET

import pytest

from pipeline import boinc
from pipeline.errors import ConfigError
from pipeline.fast import (
    SHARED_FLAGS,
    FileRef,
    ImageFiles,
    boinc_app_script,
    image_files_from_xml_doc,
    input_template,
    plan_files,
    printf_q,
    shares_app,
    staged_names,
    stdin_line,
    unique_name,
    vbox_job_xml,
)
from pipeline.plan import job_options, plan_point
from pipeline.spec import SweepSpec

EDGE_CASES = [
    "",
    "plain",
    "a b",
    "it's",
    'say "hi"',
    "$HOME",
    "`id`",
    "a;b|c&d",
    "~user",
    "a~b",
    "a=~b",
    "x:~y",
    "#comment",
    "a#b",
    "{x},[y]",
    "back\\slash",
    "*?",
    "(sub)",
    "<in>out",
    "!bang",
    "^caret",
    "-n",
    "100%",
    "=",
    " ",
    "~",
]


def _bash_q(values: list[str]) -> list[str]:
    out = subprocess.run(
        ["bash", "-c", 'for a in "$@"; do printf "%q\\0" "$a"; done', "bash", *values],
        capture_output=True,
        check=True,
    ).stdout.decode("ascii")
    return out.split("\0")[:-1]


def test_printf_q_matches_real_bash() -> None:
    rng = random.Random(20240611)
    printable = [chr(c) for c in range(0x20, 0x7F)]
    values = EDGE_CASES + [
        "".join(rng.choice(printable) for _ in range(rng.randint(1, 12))) for _ in range(600)
    ]
    assert [printf_q(v) for v in values] == _bash_q(values)


def test_printf_q_refuses_what_sh_cannot_read() -> None:
    for bad in ("line\nbreak", "tab\there", "caf\u00e9"):
        with pytest.raises(ValueError, match="printable ASCII"):
            printf_q(bad)


def test_boinc_app_passes_every_argument_through_sh_unchanged() -> None:
    args = [*EDGE_CASES, "x=1 y=2", "'", '"']
    script = boinc_app_script("repo/img", args, entrypoint="/bin/sh", prerun=["echo pre"])
    run_line = next(line for line in script.splitlines() if line.startswith("docker run"))
    assert run_line.startswith(
        "docker run --rm -v /root/shared:/root/shared --entrypoint /bin/sh repo/img:latest "
    )
    # /bin/sh parses the line; a shell function stands in for docker and prints its argv.
    probe = 'docker() { for a in "$@"; do printf \'%s\\0\' "$a"; done; }\n' + run_line
    out = subprocess.run(["/bin/sh", "-c", probe], capture_output=True, check=True).stdout
    argv = out.decode("ascii").split("\0")[:-1]
    assert argv[7:] == args
    assert argv[:7] == [
        "run",
        "--rm",
        "-v",
        "/root/shared:/root/shared",
        "--entrypoint",
        "/bin/sh",
        "repo/img:latest",
    ]


def test_boinc_app_order_and_syntax() -> None:
    script = boinc_app_script("img:1", ["echo", "hi"], prerun=["echo PRE"], postrun=["echo POST"])
    lines = script.splitlines()
    assert lines[:2] == ["#!/bin/sh", "set -e"]
    order = [
        lines.index(x)
        for x in (
            'tar cf - -C "$work/combined" . | docker load',
            "echo PRE",
            "docker run --rm -v /root/shared:/root/shared img:1 echo hi",
            "echo POST",
        )
    ]
    assert order == sorted(order)
    subprocess.run(["/bin/sh", "-n", "-c", script], check=True)


def test_vbox_job_memory_is_the_bound_in_megabytes() -> None:
    root = ET.fromstring(vbox_job_xml(1_999_999_999.0))
    assert root.findtext("memory_size_mb") == "1999"
    assert root.findtext("os_name") == "Linux26_64"
    assert root.findtext("enable_isocontextualization") == "1"
    assert root.findtext("completion_trigger_file") == "completion_trigger_file"
    for flag in ("enable_shared_directory", "enable_network", "disable_automatic_checkpoints"):
        assert root.find(flag) is not None


def test_unique_names_look_like_boinc2dockers_and_never_repeat() -> None:
    a = unique_name("shared/params.json", "k1")
    assert re.fullmatch(r"params_[0-9a-f]{32}\.json", a)
    assert re.fullmatch(r"boinc_app_[0-9a-f]{32}", unique_name("shared/boinc_app", "k1"))
    assert re.fullmatch(r"vbox_job_[0-9a-f]{32}\.xml", unique_name("vbox_job.xml", "k1"))
    assert unique_name("shared/params.json", "k1") == a  # a rerun rewrites the same file
    assert unique_name("shared/params.json", "k2") != a
    assert unique_name("shared/other/params.json", "k1") != a


def test_input_template_numbers_flags_and_open_names() -> None:
    files = [
        FileRef("p_1.json", "shared/params.json"),
        FileRef("vbox_job_1.xml", "vbox_job.xml"),
        FileRef("layer_x.tar.manual.gz", "shared/image/layer_x.tar.manual.gz", SHARED_FLAGS),
    ]
    root = ET.fromstring(input_template(files))
    infos = root.findall("file_info")
    assert [fi.findtext("number") for fi in infos] == ["0", "1", "2"]
    assert [[c.tag for c in fi if c.tag != "number"] for fi in infos] == [
        [],
        [],
        ["sticky", "no_delete"],
    ]
    refs = root.findall("workunit/file_ref")
    assert [(r.findtext("file_number"), r.findtext("open_name")) for r in refs] == [
        ("0", "shared/params.json"),
        ("1", "vbox_job.xml"),
        ("2", "shared/image/layer_x.tar.manual.gz"),
    ]
    assert all(r.find("copy_file") is not None for r in refs)


def test_stdin_line_and_its_limit() -> None:
    files = [FileRef("a_1", "shared/a"), FileRef("b_2", "shared/b")]
    assert stdin_line("wu_1", files) == "--wu_name wu_1 a_1 b_2"
    assert (
        stdin_line("wu_1", files, "templates/t")
        == "--wu_name wu_1 --wu_template templates/t a_1 b_2"
    )
    many = [FileRef(f"layer_{i:064x}.tar.manual.gz", "x") for i in range(60)]
    with pytest.raises(ConfigError, match="4096"):
        stdin_line("wu_1", many)
    assert boinc.STDIN_LINE_MAX == 4096


def _doc(files: list[tuple[str, str, list[str]]]) -> str:
    infos = "".join(
        f"<file_info><name>{n}</name><url>u</url><md5_cksum>0</md5_cksum><nbytes>1</nbytes>"
        + "".join(f"<{f}/>" for f in flags)
        + "</file_info>"
        for n, _o, flags in files
    )
    refs = "".join(
        f"<file_ref><file_name>{n}</file_name><open_name>{o}</open_name><copy_file/></file_ref>"
        for n, o, _f in files
    )
    return infos + f"<workunit>{refs}</workunit>"


def test_image_files_are_read_from_an_xml_doc_in_order() -> None:
    doc = _doc(
        [
            ("params_1.json", "shared/params.json", []),
            ("vbox_job_1.xml", "vbox_job.xml", []),
            ("boinc_app_1", "shared/boinc_app", []),
            (
                "layer_b.tar.manual.gz",
                "shared/image/layer_b.tar.manual.gz",
                ["sticky", "no_delete"],
            ),
            (
                "layer_a.tar.manual.gz",
                "shared/image/layer_a.tar.manual.gz",
                ["sticky", "no_delete"],
            ),
            (
                "image_c.tar.manual.gz",
                "shared/image/image_c.tar.manual.gz",
                ["sticky", "no_delete"],
            ),
        ]
    )
    got = image_files_from_xml_doc(doc.encode(), "wu")
    assert [f.name for f in got.files] == [
        "layer_b.tar.manual.gz",
        "layer_a.tar.manual.gz",
        "image_c.tar.manual.gz",
    ]
    assert all(f.flags == ("sticky", "no_delete") for f in got.files)


def test_an_image_without_layers_is_refused() -> None:
    doc = _doc([("image_c.tar.manual.gz", "shared/image/image_c.tar.manual.gz", ["sticky"])])
    with pytest.raises(ConfigError, match="no image layers"):
        image_files_from_xml_doc(doc, "wu_1")


def _spec(**extra: object) -> SweepSpec:
    data: dict[str, object] = {
        "name": "unit",
        "image": "repo/img",
        "command": ["run", "--x={x}"],
        "parameters": {"grid": {"x": [1, 2]}},
        "job": {"rsc_memory_bound": 2.5e9, "rsc_disk_bound": 3e9},
    }
    data.update(extra)
    return SweepSpec.model_validate(data)


def test_job_options_int_the_bounds_like_the_stock_script() -> None:
    opts = job_options(_spec())
    pairs = dict(zip(opts[::2], opts[1::2], strict=True))
    assert pairs["--rsc_memory_bound"] == "2500000000"
    assert pairs["--rsc_disk_bound"] == "3000000000"
    assert pairs["--min_quorum"] == "1"
    assert pairs["--target_nresults"] == "1"
    assert float(pairs["--rsc_fpops_est"]) == 3600e9


def test_plan_files_stock_order_and_shared_variant() -> None:
    spec = _spec(params_file=True)
    wu = plan_point(spec, {"x": 1}, 1)
    image = ImageFiles((FileRef("layer_a", "shared/image/layer_a", SHARED_FLAGS),), "w")
    vbox = vbox_job_xml(spec.job.rsc_memory_bound).encode()
    own = plan_files(spec, wu, image, None, vbox, spec.workunit_hash())
    assert [r.open_name for r in own.refs] == [
        "shared/params.json",
        "vbox_job.xml",
        "shared/boinc_app",
        "shared/image/layer_a",
    ]
    assert sorted(own.contents) == sorted(staged_names(spec, wu))
    assert b"--x\\=1" not in own.contents[own.refs[2].name]  # '=' is not escaped by %q
    assert b"run --x=1" in own.contents[own.refs[2].name]
    shared = (
        FileRef("v", "vbox_job.xml", SHARED_FLAGS),
        FileRef("b", "shared/boinc_app", SHARED_FLAGS),
    )
    lean = plan_files(spec, wu, image, shared, vbox, spec.workunit_hash())
    assert [r.name for r in lean.refs][1:3] == ["v", "b"]
    assert list(lean.contents) == [own.refs[0].name]


def test_shares_app_only_for_a_fixed_command_with_per_job_files() -> None:
    assert not shares_app(_spec(params_file=True))  # the command has a placeholder
    assert not shares_app(_spec(command=["run"]))  # no per-job file to carry parameters
    assert shares_app(_spec(command=["run"], params_file=True))
