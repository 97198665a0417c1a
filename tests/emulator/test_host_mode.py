"""Host image mode: marker images shaped like real ones, and the docker shim inside jobs."""

from __future__ import annotations

import gzip
import io
import json
import tarfile

import pytest

from pipeline import boinc
from pipeline.emulator import Daemons, Project
from pipeline.errors import ConfigError
from pipeline.fast import boinc_app_script, image_files_from_xml_doc

from .conftest import b2d, result_rows, wu_row


def _members(data: bytes) -> dict[str, bytes | None]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data)), mode="r:") as tar:
        out: dict[str, bytes | None] = {}
        for m in tar.getmembers():
            fh = tar.extractfile(m) if m.isfile() else None
            out[m.name] = fh.read() if fh else None
        return out


def _outputs(project: Project) -> dict[str, dict[str, bytes]]:
    found = {}
    for path in project.results_dir.rglob("*.tgz"):
        with tarfile.open(path, "r:gz") as tar:
            found[path.name.split("_0_r")[0]] = {
                m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
                for m in tar.getmembers()
                if m.isfile()
            }
    return found


def _app_name(xml_doc: bytes) -> str:
    return "boinc_app_" + xml_doc.decode().split("<name>boinc_app_", 1)[1].split("<", 1)[0]


def test_marker_image_has_the_shape_of_a_real_one(project: Project) -> None:
    proc = b2d(project, "--wu_name", "shape", "some/image:1.0", "true")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wu = wu_row(project, "shape")
    image = image_files_from_xml_doc(wu.xml_doc, "shape")  # refuses layer-less images
    layer, img = image.files
    assert layer.name.startswith("layer_")
    assert img.name.startswith("image_")
    assert layer.open_name == "shared/image/" + layer.name
    assert layer.flags == img.flags == ("sticky", "no_delete")
    layer_id = layer.name[len("layer_") : -len(".tar.manual.gz")]
    image_id = img.name[len("image_") : -len(".tar.manual.gz")]
    lm = _members(project.download_path(layer.name).read_bytes())
    assert set(lm) == {layer_id, f"{layer_id}/VERSION", f"{layer_id}/json", f"{layer_id}/layer.tar"}
    assert lm[layer_id] is None  # the folder itself
    with tarfile.open(fileobj=io.BytesIO(lm[f"{layer_id}/layer.tar"] or b""), mode="r:") as inner:
        assert inner.getnames() == [".emulator-host-mode"]
    im = _members(project.download_path(img.name).read_bytes())
    manifest = json.loads(im["manifest.json"] or b"")
    assert manifest == [
        {
            "Config": f"{image_id}.json",
            "RepoTags": ["some/image:1.0"],
            "Layers": [f"{layer_id}/layer.tar"],
        }
    ]
    config = json.loads(im[f"{image_id}.json"] or b"")
    assert config["config"]["Labels"]["org.boinc-pipeline.emulator.host-mode"] == "true"
    assert "emulator host-mode" in config["comment"]
    assert json.loads(im["repositories"] or b"") == {"some/image": {"1.0": layer_id}}
    # Staged once: a second workunit of the same image reuses both files.
    assert b2d(project, "--wu_name", "shape2", "some/image:1.0", "true").returncode == 0
    assert image_files_from_xml_doc(wu_row(project, "shape2").xml_doc).files == image.files


def test_real_style_boinc_app_runs_in_host_mode(project: Project) -> None:
    """fast mode's boinc_app (docker load, docker run ...) runs through the job's docker shim."""
    apps = {
        "plain": boinc_app_script(
            "busybox",
            ["sh", "-c", 'printf "%s|%s" "$0" "$(pwd)" > /root/shared/results/out', "it's $x"],
            prerun=["echo pre > /root/shared/results/pre"],
            postrun=["echo post > /root/shared/results/post"],
        ),
        "entry": boinc_app_script(
            "busybox", ["-c", "echo via-entrypoint > /root/shared/results/out"], entrypoint="sh"
        ),
        "failing": boinc_app_script("busybox", ["sh", "-c", "exit 7"]),
        "no_command": boinc_app_script("busybox", []),
    }
    for name, app in apps.items():
        proc = b2d(
            project, "--wu_name", name, "--min_quorum", "1", "--target_nresults", "1",
            "busybox", "true",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        # Swap in the pipeline's boinc_app, as fast mode stages it next to the same image.
        project.download_path(_app_name(wu_row(project, name).xml_doc)).write_text(app)
    Daemons(project, hosts=2).run_until_idle()
    outcome = {n: result_rows(project, n)[0] for n in apps}
    for name in ("plain", "entry"):
        assert outcome[name].outcome == boinc.Outcome.SUCCESS, outcome[name].stderr_out
    out = _outputs(project)
    assert out["plain"] == {"out": b"it's $x|/", "pre": b"pre\n", "post": b"post\n"}
    assert out["entry"] == {"out": b"via-entrypoint\n"}
    assert b"Loaded image" in outcome["plain"].stderr_out
    assert (outcome["failing"].outcome, outcome["failing"].exit_status) == (
        boinc.Outcome.CLIENT_ERROR,
        7,
    )
    assert outcome["no_command"].exit_status == 125
    assert b"needs a command" in outcome["no_command"].stderr_out


def test_fast_mode_still_refuses_an_image_without_layers() -> None:
    doc = (
        "<file_info>\n<name>image_ab.tar.manual.gz</name>\n<sticky/>\n</file_info>\n"
        "<workunit>\n<file_ref>\n<file_name>image_ab.tar.manual.gz</file_name>\n"
        "<open_name>shared/image/image_ab.tar.manual.gz</open_name>\n</file_ref>\n</workunit>\n"
    )
    with pytest.raises(ConfigError, match=r"wu1 loads no image layers .*image_ab\.tar\.manual\.gz"):
        image_files_from_xml_doc(doc, "wu1")
