"""The bin/ tools' options and quirks, run as real subprocesses (reference, sections 2, 4, 4b)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipeline import boinc
from pipeline.emulator import Project
from pipeline.emulator.tools import parse_command_line

from .conftest import b2d, result_rows, wu_row

TEMPLATE = """<input_template>
<file_info>
    <number>0</number>
</file_info>
<workunit>
    <file_ref>
        <file_number>0</file_number>
        <open_name>shared/in.txt</open_name>
        <copy_file/>
    </file_ref>
</workunit>
</input_template>
"""


def _create_work(
    project: Project, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(project.root / "bin" / "create_work"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        cwd=project.root,
    )


def _stage(project: Project, name: str, data: bytes = b"x") -> None:
    path = subprocess.run(
        [str(project.root / "bin" / "dir_hier_path"), name],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert path == str(project.download_dir / boinc.dir_hier_subdir(name, 1024) / name)
    Path(path).write_bytes(data)


@pytest.fixture
def native(project: Project) -> Project:
    (project.root / "templates" / "boinc2docker_in").write_text(TEMPLATE)
    _stage(project, "in_a.txt", b"hello")
    return project


def test_create_work_defaults_and_name_printing(native: Project) -> None:
    proc = _create_work(native, "--appname", "boinc2docker", "in_a.txt")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("workunit name: boinc2docker_")
    name = proc.stdout.split(": ", 1)[1].strip()
    wu = wu_row(native, name)
    assert (
        wu.min_quorum,
        wu.target_nresults,
        wu.max_error_results,
        wu.max_total_results,
        wu.max_success_results,
    ) == (2, 2, 3, 10, 6)
    assert (
        wu.rsc_fpops_est,
        wu.rsc_fpops_bound,
        wu.rsc_memory_bound,
        wu.rsc_disk_bound,
        wu.delay_bound,
    ) == (3600e9, 86400e9, 5e8, 1e9, 604800)
    assert wu.size_class == -1
    assert wu.result_template_file == "templates/boinc2docker_out"
    doc = wu.xml_doc.decode()
    md5 = "5d41402abc4b2a76b9719d911017c592"
    assert f"<md5_cksum>{md5}</md5_cksum>" in doc
    assert "<nbytes>5</nbytes>" in doc
    assert f"/download/{boinc.dir_hier_subdir('in_a.txt', 1024)}/in_a.txt</url>" in doc
    assert "<open_name>shared/in.txt</open_name>" in doc
    named = _create_work(native, "--appname", "boinc2docker", "--wu_name", "given", "in_a.txt")
    assert (named.returncode, named.stdout) == (0, "")


def test_create_work_duplicate_name_exits_1(native: Project) -> None:
    args = ["--appname", "boinc2docker", "--wu_name", "twice", "in_a.txt"]
    assert _create_work(native, *args).returncode == 0
    dup = _create_work(native, *args)
    assert dup.returncode == 1
    assert "create_work:" in dup.stderr


def test_create_work_errors(native: Project) -> None:
    assert _create_work(native, "in_a.txt").returncode == 1
    assert _create_work(native, "--appname", "nope", "in_a.txt").returncode == 1
    missing = _create_work(native, "--appname", "boinc2docker", "not_staged.txt")
    assert missing.returncode == 1
    assert "not_staged.txt" in missing.stderr
    bad = _create_work(native, "--appname", "boinc2docker", "--min_quorum", "x", "in_a.txt")
    assert bad.returncode == 1
    assert "--min_quorum" in bad.stderr


def test_create_work_stdin_bulk(native: Project) -> None:
    lines = ['--wu_name bulk_a --command_line "a b" in_a.txt', "in_a.txt", "", "in_a.txt"]
    proc = _create_work(
        native,
        "--appname",
        "boinc2docker",
        "--wu_name",
        "bulk",
        "--stdin",
        "--min_quorum",
        "1",
        stdin="\n".join(lines) + "\n",
    )
    assert (proc.returncode, proc.stdout) == (0, "")
    with native.engine().connect() as conn:
        rows = conn.execute(
            sa.select(
                boinc.workunit.c.name, boinc.workunit.c.min_quorum, boinc.workunit.c.xml_doc
            ).order_by(boinc.workunit.c.id)
        ).all()
    assert [r.name for r in rows] == ["bulk_a", "bulk_1", "bulk_2"]
    assert all(r.min_quorum == 1 for r in rows)
    assert "<command_line>\na b\n" in rows[0].xml_doc.decode()
    with native.engine().connect() as conn:  # bulk mode creates no results
        assert conn.execute(sa.select(sa.func.count()).select_from(boinc.result)).scalar() == 0


def test_create_work_stdin_stores_awkward_values_exactly(native: Project) -> None:
    """Quotes, backslashes and non-ASCII text reach the database unchanged, on both engines."""
    other = native.root / "templates" / "other_out"
    other.write_text((native.root / "templates" / "boinc2docker_out").read_text())
    awkward = 'back\\\\slash \\\\n "q" 100% %s %d %% \u00e9\u4e2d ; DROP TABLE workunit; --'
    lines = [
        f"--wu_name aw_1 --command_line '{awkward}' in_a.txt",
        "--wu_name aw_2 --result_template templates/other_out in_a.txt",
        "--wu_name aw_3 in_a.txt",
    ]
    proc = _create_work(
        native,
        "--appname", "boinc2docker",
        "--stdin",
        "--rsc_fpops_est", "1.5e13",
        "--keywords", "k'1 \\ 2 %s 100%",
        stdin="\n".join(lines) + "\n",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = {n: wu_row(native, n) for n in ("aw_1", "aw_2", "aw_3")}
    assert f"<command_line>\n{awkward}\n" in rows["aw_1"].xml_doc.decode()
    assert [rows[n].result_template_file for n in ("aw_1", "aw_2", "aw_3")] == [
        "templates/boinc2docker_out",
        "templates/other_out",
        "templates/boinc2docker_out",
    ]
    assert {r.keywords for r in rows.values()} == {"k'1 \\ 2 %s 100%"}
    assert {r.rsc_fpops_est for r in rows.values()} == {1.5e13}
    assert len({r.xml_doc for r in rows.values()}) == 2  # aw_2 and aw_3 differ only by name


def test_create_work_stdin_line_limit_and_duplicates(native: Project) -> None:
    head = '--wu_name ok1 --command_line "'
    ok = head + "c" * (4096 - len(head) - len('" in_a.txt')) + '" in_a.txt'
    assert len(ok) == 4096
    assert (
        _create_work(native, "--appname", "boinc2docker", "--stdin", stdin=ok + "\n").returncode
        == 0
    )
    assert "c" * 4000 in wu_row(native, "ok1").xml_doc.decode()
    long = '--wu_name toolong --command_line "' + "m" * 4100 + '" in_a.txt\n'
    proc = _create_work(native, "--appname", "boinc2docker", "--stdin", stdin=long)
    assert proc.returncode == 1
    assert "4096" in proc.stderr
    dup = "--wu_name d1 in_a.txt\n--wu_name d1 in_a.txt\n"
    assert _create_work(native, "--appname", "boinc2docker", "--stdin", stdin=dup).returncode == 1
    with native.engine().connect() as conn:  # one statement, all or nothing
        names = conn.execute(sa.select(boinc.workunit.c.name)).scalars().all()
    assert "d1" not in names


def test_cancel_jobs_by_name_and_errors(native: Project) -> None:
    assert (
        _create_work(native, "--appname", "boinc2docker", "--wu_name", "cx", "in_a.txt").returncode
        == 0
    )
    cancel = str(native.root / "bin" / "cancel_jobs")
    assert subprocess.run([cancel, "--name", "cx"], check=False).returncode == 0
    wu = wu_row(native, "cx")
    assert wu.error_mask == boinc.ErrorMask.CANCELLED
    assert (
        subprocess.run([cancel, "--name", "nosuch"], capture_output=True, check=False).returncode
        == 1
    )
    assert subprocess.run([cancel], capture_output=True, check=False).returncode == 1


def test_b2d_options_must_come_before_image(project: Project) -> None:
    proc = b2d(project, "--wu_name", "late", "busybox", "--min_quorum", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wu = wu_row(project, "late")
    assert wu.min_quorum == 2  # "--min_quorum 1" became part of COMMAND
    app = [
        line
        for line in _boinc_app(project, wu).splitlines()
        if line.startswith("busybox") or "min_quorum" in line
    ]
    assert app
    assert "--min_quorum 1" in app[-1]


def _boinc_app(project: Project, wu: object) -> str:
    doc = wu.xml_doc.decode()  # type: ignore[attr-defined]
    name = doc.split("<name>boinc_app_", 1)[1].split("<", 1)[0]
    return project.download_path(f"boinc_app_{name}").read_text()


def test_b2d_integer_byte_bounds(project: Project) -> None:
    bad = b2d(project, "--rsc_memory_bound", "2e9", "busybox", "true")
    assert bad.returncode == 2
    assert "rsc_memory_bound" in bad.stderr
    good = b2d(project, "--wu_name", "mem", "--rsc_memory_bound", "2000000000", "busybox", "true")
    assert good.returncode == 0
    wu = wu_row(project, "mem")
    assert wu.rsc_memory_bound == 2e9
    assert wu.rsc_disk_bound == 100e6
    vbox = wu.xml_doc.decode().split("<name>vbox_job_", 1)[1].split("<", 1)[0]
    assert (
        "<memory_size_mb>2000</memory_size_mb>"
        in project.download_path(f"vbox_job_{vbox}").read_text()
    )


def test_b2d_prints_name_only_without_wu_name_and_layout(project: Project) -> None:
    proc = b2d(project, "busybox", "echo", "hi")
    assert proc.returncode == 0
    assert proc.stdout.startswith("workunit name: boinc2docker_")
    name = proc.stdout.split(": ", 1)[1].strip()
    wu = wu_row(project, name)
    doc = wu.xml_doc.decode()
    opens = [part.split("</open_name>")[0] for part in doc.split("<open_name>")[1:]]
    assert opens[0] == "vbox_job.xml"
    assert opens[1] == "shared/boinc_app"
    assert opens[2].startswith("shared/image/layer_")
    assert opens[3].startswith("shared/image/image_")
    assert all(o.endswith(".tar.manual.gz") for o in opens[2:])
    assert "<sticky/>\n    <no_delete/>" in doc
    assert (wu.min_quorum, wu.target_nresults) == (2, 2)


def test_b2d_duplicate_name_is_create_work_failure(project: Project) -> None:
    assert b2d(project, "--wu_name", "same", "busybox", "true").returncode == 0
    again = b2d(project, "--wu_name", "same", "busybox", "true")
    assert again.returncode == 1
    assert "create_work" in again.stdout


def test_b2d_silent_failure_switch(project: Project) -> None:
    project.set_b2d_failure("no space left on device")
    proc = b2d(project, "--wu_name", "ghost", "busybox", "true")
    assert proc.returncode == 0
    assert "no space left on device" in proc.stdout
    with project.engine().connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(boinc.workunit)).scalar() == 0
    project.set_b2d_failure(None)
    assert b2d(project, "--wu_name", "ghost", "busybox", "true").returncode == 0


def test_b2d_quoting_matches_bash_printf_q(project: Project) -> None:
    values = [
        "plain",
        "two words",
        "it's",
        'say "hi"',
        "$HOME",
        "a\nb",
        "tab\there",
        "",
        "~x",
        "#c",
        "é",
    ]
    script = project.root / "bin" / "boinc2docker_create_work.py"
    code = (
        f"import sys; sys.path.insert(0, {str(script.parent)!r}); "
        f"import boinc2docker_create_work as b; print(repr(b.shell_quote({values!r})))"
    )
    ours = eval(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
    )
    bash = [
        subprocess.run(
            ["bash", "-c", 'printf %q "$1"', "_", v], capture_output=True, text=True, check=True
        ).stdout
        for v in values
    ]
    assert ours == bash


def test_b2d_command_survives_quoting_end_to_end(project: Project) -> None:
    from pipeline.emulator import Daemons

    arg = 'it\'s $HOME "quoted" `tick`'
    proc = b2d(
        project,
        "--wu_name",
        "q",
        "--min_quorum",
        "1",
        "--target_nresults",
        "1",
        "busybox",
        "sh",
        "-c",
        'printf "%s" "$1" > /root/shared/results/arg',
        "sh",
        arg,
    )
    assert proc.returncode == 0
    Daemons(project, hosts=1).run_until_idle()
    import tarfile

    (path,) = [p for p in project.results_dir.rglob("*.tgz")]
    with tarfile.open(path, "r:gz") as tar:
        fh = tar.extractfile("arg")
        assert fh is not None
        assert fh.read().decode() == arg


def test_b2d_under_python2_cli_and_function(project: Project, python2: str) -> None:
    proc = b2d(
        project, "--wu_name", "py2cli", "--min_quorum", "1", "busybox", "true", python=python2
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert wu_row(project, "py2cli").min_quorum == 1
    code = (
        "import sys; sys.path.insert(0, 'bin')\n"
        "from boinc2docker_create_work import boinc2docker_create_work as f\n"
        "for i in range(2):\n"
        "    out = f('busybox',"
        " ['sh', '-c', 'cat /root/shared/params.json > /root/shared/results/p'],"
        " input_files=[('shared/params.json', b'{\"x\": %d}' % i, [])],"
        " create_work_args={'wu_name': 'fn_%d' % i, 'min_quorum': 1, 'target_nresults': 1})\n"
        "    assert out == '', repr(out)\n"
    )
    run = subprocess.run(
        [python2, "-c", code], cwd=project.root, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr
    from pipeline.emulator import Daemons

    Daemons(project, hosts=2).run_until_idle()
    for i in range(2):
        (r,) = result_rows(project, f"fn_{i}")
        assert r.outcome == boinc.Outcome.SUCCESS
    project.set_b2d_failure("boom")
    fail = subprocess.run(
        [
            python2,
            "-c",
            "import sys; sys.path.insert(0, 'bin')\n"
            "from boinc2docker_create_work import boinc2docker_create_work as f\n"
            "print(repr(f('busybox', ['true'])))",
        ],
        cwd=project.root,
        capture_output=True,
        text=True,
        check=False,
    )
    assert fail.returncode == 0
    assert fail.stdout.strip().endswith("None")


@pytest.mark.slow
def test_container_mode_with_docker(project: Project, busybox_image: str) -> None:
    from pipeline.emulator import Daemons

    project.set_image_mode("docker")
    proc = b2d(
        project,
        "--wu_name",
        "ctr",
        "--min_quorum",
        "1",
        "--target_nresults",
        "1",
        busybox_image,
        "sh",
        "-c",
        "uname -s > /root/shared/results/os",
    )
    assert proc.returncode == 0, proc.stdout
    wu = wu_row(project, "ctr")
    assert "layer_" in wu.xml_doc.decode()
    missing = b2d(project, "--wu_name", "nope", "no/such-image:1", "true")
    assert missing.returncode == 0
    assert "No such image" in missing.stdout
    Daemons(project, hosts=1).run_until_idle()
    (r,) = result_rows(project, "ctr")
    assert r.outcome == boinc.Outcome.SUCCESS, r.stderr_out
    assert b"Loaded image" in r.stderr_out
    info = json.loads(
        subprocess.run(
            [str(project.root / "bin" / "emulator_export_image"), busybox_image],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert info["files"][-1].startswith("image_")


@pytest.mark.parametrize(
    ("line", "tokens"),
    [
        ("--wu_name a_1  f1\tf2", ["--wu_name", "a_1", "f1", "f2"]),
        ("  a\u00a0b\u2003c  ", ["a", "b", "c"]),  # Unicode spaces, as isspace() sees them
        ("--command_line 'x y' \"z\"", ["--command_line", "x y", "z"]),
        ("a 'unterminated rest", ["a", "unterminated rest"]),
        ("", []),
    ],
)
def test_stdin_lines_split_like_boincs_parse_command_line(line: str, tokens: list[str]) -> None:
    assert parse_command_line(line) == tokens
