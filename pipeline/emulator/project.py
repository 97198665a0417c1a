"""An emulated boinc-server-docker project folder: ``config.xml``, ``bin/``, the database.

A project is nothing but a folder on disk and a database URL, exactly like a real
one: ``config.xml`` names the database (``db_name``/``db_host``/``db_user``/
``db_passwd`` as BOINC writes them, plus ``<emulator_db_url>`` with the
SQLAlchemy URL), the download and upload folders, ``uldl_dir_fanout`` and the
``<daemons>``; ``bin/`` holds the tools. Everything else in the emulator reads
that folder.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

from pipeline import boinc
from pipeline.errors import ConfigError

__all__ = ["DEFAULT_APP", "DEFAULT_DAEMONS", "IMAGE_MODES", "Project"]

DEFAULT_APP = "boinc2docker"
#: The daemons boinc-server-docker's b2d variant lists in config.xml (reference, section 1).
DEFAULT_DAEMONS = (
    "feeder -d 3",
    "transitioner -d 3",
    "file_deleter -d 3",
    "sample_trivial_validator -app boinc2docker",
    'script_assimilator --app boinc2docker --script "boinc2docker_assimilator files"',
)
#: How ``bin/boinc2docker_create_work.py`` treats images (see docs/emulator.md).
IMAGE_MODES = ("auto", "docker", "host")

RESULT_TEMPLATE = """<output_template>
<file_info>
    <name><OUTFILE_0/>.tgz</name>
    <generated_locally/>
    <upload_when_present/>
    <max_nbytes>134217728</max_nbytes>
    <url><UPLOAD_URL/></url>
</file_info>
<result>
    <file_ref>
        <file_name><OUTFILE_0/>.tgz</file_name>
        <open_name>shared/results.tgz</open_name>
        <copy_file/>
    </file_ref>
</result>
</output_template>
"""

_PY3_TOOL = """#!{python}
# {name}: emulated BOINC tool of this project (boinc-pipeline emulator).
import sys
from pipeline.emulator.tools import {func}
sys.exit({func}(sys.argv[1:], __file__))
"""
_TOOLS = {
    "create_work": "create_work_main",
    "dir_hier_path": "dir_hier_path_main",
    "cancel_jobs": "cancel_jobs_main",
    "emulator_export_image": "export_image_main",
}


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def make_engine(db_url: str) -> Engine:
    """Return an engine for a BOINC database URL (SQLite gets WAL and a busy timeout)."""
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        engine = sa.create_engine(url, connect_args={"timeout": 60})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa.create_engine(url, pool_pre_ping=True)


@dataclass
class Project:
    """An emulated BOINC project on disk, read from its ``config.xml``."""

    root: Path
    db_url: str
    download_dir: Path
    upload_dir: Path
    fanout: int
    results_dir: Path
    project_name: str = "boincserver"
    url_base: str = "http://127.0.0.1"
    image_mode: str = "auto"
    b2d_fail: str | None = None
    daemons: list[str] = field(default_factory=lambda: list(DEFAULT_DAEMONS))
    _engine: Engine | None = field(default=None, repr=False, compare=False)

    # ------------------------------------------------------------------ creation

    @classmethod
    def init(
        cls,
        path: str | os.PathLike[str],
        db_url: str | None = None,
        results_dir: str | os.PathLike[str] | None = None,
        *,
        fanout: int = 1024,
        image_mode: str = "auto",
        project_name: str = "boincserver",
        daemons: list[str] | None = None,
    ) -> Project:
        """Create a project folder and its database tables; return the opened project."""
        root = Path(path).resolve()
        if (root / "config.xml").exists():
            raise ConfigError(f"project folder {root}: config.xml already exists")
        if image_mode not in IMAGE_MODES:
            raise ConfigError(f"image_mode: {image_mode!r} is not one of {', '.join(IMAGE_MODES)}")
        if fanout < 1:
            raise ConfigError(f"fanout: {fanout!r} is not a positive integer")
        root.mkdir(parents=True, exist_ok=True)
        url = db_url or f"sqlite:///{root / (project_name + '.sqlite')}"
        try:
            backend = make_url(url).get_backend_name()
        except sa.exc.ArgumentError as exc:
            raise ConfigError(f"--db: {url!r} is not a database URL ({exc})") from exc
        if backend not in ("sqlite", "mysql", "mariadb"):
            raise ConfigError(f"--db: backend {backend!r} is not supported (sqlite or mysql)")
        project = cls(
            root=root,
            db_url=url,
            download_dir=root / "download",
            upload_dir=root / "upload",
            fanout=fanout,
            results_dir=Path(results_dir).resolve() if results_dir else root / "results",
            project_name=project_name,
            image_mode=image_mode,
            daemons=list(daemons) if daemons is not None else list(DEFAULT_DAEMONS),
        )
        for folder in ("download", "upload", "bin", "templates", "log_emulator", "tmp"):
            (root / folder).mkdir(exist_ok=True)
        project.results_dir.mkdir(parents=True, exist_ok=True)
        project.write_config()
        (root / "templates" / f"{DEFAULT_APP}_out").write_text(RESULT_TEMPLATE)
        project.install_tools()
        project.create_tables()
        return project

    def install_tools(self) -> None:
        """Write ``bin/``: Python 3 tools bound to this interpreter, and boinc2docker's script."""
        bindir = self.root / "bin"
        bindir.mkdir(exist_ok=True)
        for name, func in _TOOLS.items():
            target = bindir / name
            target.write_text(_PY3_TOOL.format(python=sys.executable, name=name, func=func))
            target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        source = resources.files("pipeline.emulator").joinpath("bin/boinc2docker_create_work.py")
        target = bindir / "boinc2docker_create_work.py"
        with resources.as_file(source) as src:
            shutil.copyfile(src, target)
        target.chmod(0o755)

    def create_tables(self) -> None:
        """Create the BOINC tables (if missing) and the ``boinc2docker`` app row."""
        engine = self.engine()
        boinc.metadata.create_all(engine)
        with engine.begin() as conn:
            present = conn.execute(
                sa.select(boinc.app.c.id).where(boinc.app.c.name == DEFAULT_APP)
            ).first()
            if present is None:
                conn.execute(
                    sa.insert(boinc.app).values(
                        create_time=int(time.time()),
                        name=DEFAULT_APP,
                        user_friendly_name=DEFAULT_APP,
                    )
                )

    # ------------------------------------------------------------------ reading

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Project:
        """Read a project folder's ``config.xml``."""
        root = Path(path).resolve()
        cfg_path = root / "config.xml"
        try:
            tree = ET.parse(cfg_path)  # noqa: S314 (the project's own config)
        except FileNotFoundError as exc:
            raise ConfigError(f"{root}: not an emulated project (no config.xml)") from exc
        except ET.ParseError as exc:
            raise ConfigError(f"{cfg_path}: not valid XML ({exc})") from exc
        cfg = tree.find("config")
        if cfg is None:
            raise ConfigError(f"{cfg_path}: no <config> element")

        def get(tag: str, default: str | None = None) -> str | None:
            el = cfg.find(tag)
            return el.text.strip() if el is not None and el.text is not None else default

        db_url = get("emulator_db_url")
        if not db_url:
            raise ConfigError(f"{cfg_path}: <emulator_db_url> is missing")
        fanout_text = get("uldl_dir_fanout", "1024") or "1024"
        try:
            fanout = int(fanout_text)
        except ValueError as exc:
            raise ConfigError(
                f"{cfg_path}: uldl_dir_fanout {fanout_text!r} is not an integer"
            ) from exc
        daemons = [
            (el.findtext("cmd") or "").strip()
            for el in tree.findall("daemons/daemon")
            if (el.findtext("disabled") or "0").strip() in ("0", "")
        ]
        fail = cfg.find("emulator_b2d_fail")
        return cls(
            root=root,
            db_url=db_url,
            download_dir=Path(get("download_dir") or root / "download"),
            upload_dir=Path(get("upload_dir") or root / "upload"),
            fanout=fanout,
            results_dir=Path(get("emulator_results_dir") or root / "results"),
            project_name=get("db_name", "boincserver") or "boincserver",
            url_base=get("emulator_url_base", "http://127.0.0.1") or "http://127.0.0.1",
            image_mode=get("emulator_image_mode", "auto") or "auto",
            b2d_fail=((fail.text or "").strip() or "emulated failure")
            if fail is not None
            else None,
            daemons=daemons,
        )

    def write_config(self) -> None:
        """Write ``config.xml`` the way boinc-server-docker lays it out, plus emulator settings."""
        url: URL = make_url(self.db_url)
        top = ET.Element("boinc")
        cfg = ET.SubElement(top, "config")
        values = {
            "db_name": url.database if url.get_backend_name() != "sqlite" else self.project_name,
            "db_host": url.host or "",
            "db_user": url.username or "",
            "db_passwd": url.password or "",
            "emulator_db_url": url.render_as_string(hide_password=False),
            "master_url": f"{self.url_base}/{self.project_name}/",
            "long_name": self.project_name,
            "download_url": f"{self.url_base}/{self.project_name}/download",
            "download_dir": str(self.download_dir),
            "upload_url": f"{self.url_base}/{self.project_name}_cgi/file_upload_handler",
            "upload_dir": str(self.upload_dir),
            "uldl_dir_fanout": str(self.fanout),
            "emulator_results_dir": str(self.results_dir),
            "emulator_url_base": self.url_base,
            "emulator_image_mode": self.image_mode,
        }
        for key, value in values.items():
            ET.SubElement(cfg, key).text = value
        if self.b2d_fail is not None:
            ET.SubElement(cfg, "emulator_b2d_fail").text = self.b2d_fail
        ET.SubElement(top, "tasks")
        daemons = ET.SubElement(top, "daemons")
        for cmd in self.daemons:
            ET.SubElement(ET.SubElement(daemons, "daemon"), "cmd").text = cmd
        ET.indent(top)
        tmp = self.root / "config.xml.tmp"
        tmp.write_text(ET.tostring(top, encoding="unicode") + "\n")
        os.replace(tmp, self.root / "config.xml")

    # ------------------------------------------------------------------ settings

    def set_b2d_failure(self, message: str | None) -> None:
        """Make boinc2docker_create_work.py fail silently (exit 0, nothing created), or stop."""
        self.b2d_fail = message
        self.write_config()

    def set_image_mode(self, mode: str) -> None:
        """Choose how boinc2docker_create_work.py treats images: auto, docker or host."""
        if mode not in IMAGE_MODES:
            raise ConfigError(f"image_mode: {mode!r} is not one of {', '.join(IMAGE_MODES)}")
        self.image_mode = mode
        self.write_config()

    # ------------------------------------------------------------------ helpers

    def engine(self) -> Engine:
        """The project's database engine (created once)."""
        if self._engine is None:
            self._engine = make_engine(self.db_url)
        return self._engine

    def close(self) -> None:
        """Dispose of the database engine."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    @property
    def download_url(self) -> str:
        """The download URL prefix written into ``xml_doc``."""
        return f"{self.url_base}/{self.project_name}/download"

    @property
    def upload_url(self) -> str:
        """The upload handler URL written into results' ``xml_doc_in``."""
        return f"{self.url_base}/{self.project_name}_cgi/file_upload_handler"

    def download_path(self, name: str) -> Path:
        """Where the input file ``name`` lives: ``download/<fanout dir>/name``."""
        return self.download_dir / boinc.dir_hier_subdir(name, self.fanout) / name

    def upload_path(self, name: str) -> Path:
        """Where the uploaded output file ``name`` lives: ``upload/<fanout dir>/name``."""
        return self.upload_dir / boinc.dir_hier_subdir(name, self.fanout) / name

    def served_apps(self) -> tuple[set[str], set[str]]:
        """App names named by a validator daemon and by an assimilator daemon."""
        validators: set[str] = set()
        assimilators: set[str] = set()
        for cmd in self.daemons:
            words = cmd.replace('"', " ").split()
            if not words:
                continue
            prog = words[0]
            appname = None
            for i, word in enumerate(words[:-1]):
                if word in ("-app", "--app"):
                    appname = words[i + 1]
            if appname is None:
                continue
            if "validator" in prog:
                validators.add(appname)
            elif "assimilator" in prog:
                assimilators.add(appname)
        return validators, assimilators

    def runs_daemon(self, name: str) -> bool:
        """Whether ``<daemons>`` lists a daemon whose program is ``name``."""
        return any(cmd.split()[:1] == [name] for cmd in self.daemons if cmd)

    @property
    def stop_file(self) -> Path:
        """The file whose presence stops the daemons (``stop_daemons``)."""
        return self.root / "stop_daemons"
