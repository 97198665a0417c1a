"""Facts about BOINC that both the pipeline and the emulator rely on.

Everything here comes from BOINC server release 1.2.0 as boinc-server-docker ships
it (see ``boinc-reference.md``): the database tables the pipeline reads, the state
codes in their columns, the download/upload folder rule, the name of a boinc2docker
result file and ``create_work``'s defaults. Nothing here talks to a server.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Any

from sqlalchemy import (
    DDL,
    TIMESTAMP,
    Column,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    UniqueConstraint,
    event,
    text,
)
from sqlalchemy.dialects import mysql

__all__ = [
    "DEFAULT_DELAY_BOUND",
    "DEFAULT_MAX_ERROR_RESULTS",
    "DEFAULT_MAX_SUCCESS_RESULTS",
    "DEFAULT_MAX_TOTAL_RESULTS",
    "DEFAULT_MIN_QUORUM",
    "DEFAULT_RSC_DISK_BOUND",
    "DEFAULT_RSC_FPOPS_BOUND",
    "DEFAULT_RSC_FPOPS_EST",
    "DEFAULT_RSC_MEMORY_BOUND",
    "DEFAULT_TARGET_NRESULTS",
    "DEFAULT_UPLOAD_MAX_NBYTES",
    "INT_MAX",
    "RESULT_FILE_RE",
    "STDIN_LINE_MAX",
    "AssimilateState",
    "BatchState",
    "ClientState",
    "ErrorMask",
    "FileDeleteState",
    "Outcome",
    "ResultFile",
    "ServerState",
    "TransitionerFlags",
    "ValidateState",
    "app",
    "batch",
    "dir_hier_subdir",
    "metadata",
    "parse_result_file",
    "result",
    "workunit",
]

#: ``create_work`` defaults for every option left out (reference, section 4).
DEFAULT_MIN_QUORUM = 2
DEFAULT_TARGET_NRESULTS = 2
DEFAULT_MAX_ERROR_RESULTS = 3
DEFAULT_MAX_TOTAL_RESULTS = 10
DEFAULT_MAX_SUCCESS_RESULTS = 6
DEFAULT_RSC_FPOPS_EST = 3600e9
DEFAULT_RSC_FPOPS_BOUND = 86400e9
DEFAULT_RSC_MEMORY_BOUND = 5e8
DEFAULT_RSC_DISK_BOUND = 1e9
DEFAULT_DELAY_BOUND = 604800

#: Longest line ``create_work --stdin`` accepts, in characters.
STDIN_LINE_MAX = 4096
#: Largest output file a boinc2docker result may upload (the template's ``max_nbytes``).
DEFAULT_UPLOAD_MAX_NBYTES = 134217728
#: ``transition_time`` of a workunit with nothing pending (C ``INT_MAX``).
INT_MAX = 2147483647


class ServerState(IntEnum):
    """``result.server_state``."""

    INACTIVE = 1
    UNSENT = 2
    IN_PROGRESS = 4
    OVER = 5


class Outcome(IntEnum):
    """``result.outcome``, meaningful once the result is OVER."""

    INIT = 0
    SUCCESS = 1
    COULDNT_SEND = 2
    CLIENT_ERROR = 3
    NO_REPLY = 4
    DIDNT_NEED = 5
    VALIDATE_ERROR = 6
    CLIENT_DETACHED = 7


class ClientState(IntEnum):
    """``result.client_state``: how far the volunteer's client got."""

    NEW = 0
    FILES_DOWNLOADING = 1
    FILES_DOWNLOADED = 2
    COMPUTE_ERROR = 3
    FILES_UPLOADING = 4
    FILES_UPLOADED = 5
    ABORTED = 6
    UPLOAD_FAILED = 7


class ValidateState(IntEnum):
    """``result.validate_state``."""

    INIT = 0
    VALID = 1
    INVALID = 2
    NO_CHECK = 3
    INCONCLUSIVE = 4
    TOO_LATE = 5


class AssimilateState(IntEnum):
    """``workunit.assimilate_state``."""

    INIT = 0
    READY = 1
    DONE = 2


class FileDeleteState(IntEnum):
    """``file_delete_state`` of a workunit or a result."""

    INIT = 0
    READY = 1
    DONE = 2
    ERROR = 3


class ErrorMask(IntFlag):
    """Bits of ``workunit.error_mask``; any bit set means the workunit failed."""

    COULDNT_SEND_RESULT = 1
    TOO_MANY_ERROR_RESULTS = 2
    TOO_MANY_SUCCESS_RESULTS = 4
    TOO_MANY_TOTAL_RESULTS = 8
    CANCELLED = 16
    NO_CANONICAL_RESULT = 32


class TransitionerFlags(IntEnum):
    """``workunit.transitioner_flags``."""

    NONE = 1
    NO_NEW_RESULTS = 2


class BatchState(IntEnum):
    """``batch.state``."""

    INIT = 0
    IN_PROGRESS = 1
    COMPLETE = 2
    ABORTED = 3
    RETIRED = 4


# --------------------------------------------------------------------------- schema

metadata = MetaData()


def _mod_time() -> Column[Any]:
    # BOINC: "mod_time timestamp default current_timestamp on update current_timestamp".
    # The ON UPDATE clause is MySQL-only; SQLite gets a trigger instead (below).
    return Column(
        "mod_time",
        TIMESTAMP().with_variant(mysql.TIMESTAMP(), "mysql", "mariadb"),
        nullable=True,
        server_default=text("CURRENT_TIMESTAMP"),
    )


def _nn(name: str, type_: Any, **kw: Any) -> Column[Any]:
    return Column(name, type_, nullable=False, **kw)


app = Table(
    "app",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    _nn("create_time", Integer),
    _nn("name", String(254), unique=True),
    _nn("min_version", Integer, server_default=text("0")),
    _nn("deprecated", SmallInteger, server_default=text("0")),
    _nn("user_friendly_name", String(254)),
    _nn("homogeneous_redundancy", SmallInteger, server_default=text("0")),
    _nn("weight", Double, server_default=text("1")),
    _nn("beta", SmallInteger, server_default=text("0")),
    _nn("target_nresults", SmallInteger, server_default=text("0")),
    _nn("min_avg_pfc", Double, server_default=text("1")),
    _nn("host_scale_check", SmallInteger, server_default=text("0")),
    _nn("homogeneous_app_version", SmallInteger, server_default=text("0")),
    _nn("non_cpu_intensive", SmallInteger, server_default=text("0")),
    _nn("locality_scheduling", Integer, server_default=text("0")),
    _nn("n_size_classes", SmallInteger, server_default=text("0")),
    _nn("fraction_done_exact", SmallInteger, server_default=text("0")),
)

workunit = Table(
    "workunit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    _nn("create_time", Integer),
    _nn("appid", Integer),
    _nn("name", String(254)),
    Column("xml_doc", LargeBinary().with_variant(mysql.BLOB(), "mysql", "mariadb")),
    _nn("batch", Integer),
    _nn("rsc_fpops_est", Double),
    _nn("rsc_fpops_bound", Double),
    _nn("rsc_memory_bound", Double),
    _nn("rsc_disk_bound", Double),
    _nn("need_validate", SmallInteger),
    _nn("canonical_resultid", Integer),
    _nn("canonical_credit", Double),
    _nn("transition_time", Integer),
    _nn("delay_bound", Integer),
    _nn("error_mask", Integer),
    _nn("file_delete_state", Integer),
    _nn("assimilate_state", Integer),
    _nn("hr_class", Integer),
    _nn("opaque", Double),
    _nn("min_quorum", Integer),
    _nn("target_nresults", Integer),
    _nn("max_error_results", Integer),
    _nn("max_total_results", Integer),
    _nn("max_success_results", Integer),
    _nn("result_template_file", String(63)),
    _nn("priority", Integer),
    _mod_time(),
    _nn("rsc_bandwidth_bound", Double),
    _nn("fileset_id", Integer),
    _nn("app_version_id", Integer),
    _nn("transitioner_flags", SmallInteger().with_variant(mysql.TINYINT(), "mysql", "mariadb")),
    _nn("size_class", SmallInteger, server_default=text("-1")),
    _nn("keywords", String(254)),
    _nn("app_version_num", Integer),
    UniqueConstraint("name", name="name"),
    Index("wu_val", "appid", "need_validate"),
    Index("wu_timeout", "transition_time"),
    Index("wu_filedel", "file_delete_state"),
    Index("wu_assim", "appid", "assimilate_state"),
)

result = Table(
    "result",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    _nn("create_time", Integer),
    _nn("workunitid", Integer),
    _nn("server_state", Integer),
    _nn("outcome", Integer),
    _nn("client_state", Integer),
    _nn("hostid", Integer),
    _nn("userid", Integer),
    _nn("report_deadline", Integer),
    _nn("sent_time", Integer),
    _nn("received_time", Integer),
    _nn("name", String(254)),
    _nn("cpu_time", Double),
    Column("xml_doc_in", LargeBinary().with_variant(mysql.BLOB(), "mysql", "mariadb")),
    Column("xml_doc_out", LargeBinary().with_variant(mysql.BLOB(), "mysql", "mariadb")),
    Column("stderr_out", LargeBinary().with_variant(mysql.BLOB(), "mysql", "mariadb")),
    _nn("batch", Integer),
    _nn("file_delete_state", Integer),
    _nn("validate_state", Integer),
    _nn("claimed_credit", Double),
    _nn("granted_credit", Double),
    _nn("opaque", Double),
    _nn("random", Integer),
    _nn("app_version_num", Integer),
    _nn("appid", Integer),
    _nn("exit_status", Integer),
    _nn("teamid", Integer),
    _nn("priority", Integer),
    _mod_time(),
    _nn("elapsed_time", Double),
    _nn("flops_estimate", Double),
    _nn("app_version_id", Integer),
    _nn("runtime_outlier", SmallInteger().with_variant(mysql.TINYINT(), "mysql", "mariadb")),
    _nn("size_class", SmallInteger, server_default=text("-1")),
    _nn("peak_working_set_size", Double),
    _nn("peak_swap_size", Double),
    _nn("peak_disk_usage", Double),
    UniqueConstraint("name", name="name"),
    Index("res_wuid", "workunitid"),
    Index("ind_res_st", "server_state", "priority"),
    Index("res_app_state", "appid", "server_state"),
    Index("res_filedel", "file_delete_state"),
    Index("res_hostid_id", "hostid", "id"),
    Index("res_userid_id", "userid", "id"),
)

batch = Table(
    "batch",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    _nn("user_id", Integer),
    _nn("create_time", Integer),
    _nn("logical_start_time", Double),
    _nn("logical_end_time", Double),
    _nn("est_completion_time", Double),
    _nn("njobs", Integer),
    _nn("fraction_done", Double),
    _nn("nerror_jobs", Integer),
    _nn("state", Integer),
    _nn("completion_time", Double),
    _nn("credit_estimate", Double),
    _nn("credit_canonical", Double),
    _nn("credit_total", Double),
    _nn("name", String(255)),
    _nn("app_id", Integer),
    _nn("project_state", Integer),
    _nn("description", String(255)),
    _nn("expire_time", Double),
)


def _is_mysql(
    ddl: Any,
    target: Any,
    bind: Any,
    tables: Any = None,
    state: Any = None,
    *,
    dialect: Any,
    compiler: Any = None,
    checkfirst: bool = False,
) -> bool:
    return bool(dialect.name in ("mysql", "mariadb"))


for _table in (workunit, result):
    # MySQL/MariaDB: the real column definition, auto-updated by the server.
    event.listen(
        _table,
        "after_create",
        DDL(
            f"ALTER TABLE {_table.name} MODIFY mod_time TIMESTAMP NULL "
            "DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP"
        ).execute_if(callable_=_is_mysql),
    )
    # SQLite has no ON UPDATE: a trigger gives readers the same behaviour.
    event.listen(
        _table,
        "after_create",
        DDL(
            f"CREATE TRIGGER {_table.name}_mod_time AFTER UPDATE ON {_table.name} "  # noqa: S608 (fixed table names)
            f"FOR EACH ROW WHEN NEW.mod_time IS OLD.mod_time BEGIN "
            f"UPDATE {_table.name} SET mod_time = CURRENT_TIMESTAMP WHERE id = NEW.id; END"
        ).execute_if(dialect="sqlite"),
    )


# --------------------------------------------------------------------------- files


def dir_hier_subdir(name: str, fanout: int) -> str:
    """Return the fanout folder of a download/upload file: hex of md5(name)[1:8] mod fanout.

    ``download/<dir_hier_subdir(name, 1024)>/<name>`` is where BOINC keeps the file.
    """
    if fanout <= 0:
        raise ValueError(f"uldl_dir_fanout must be a positive integer, got {fanout!r}")
    digest = hashlib.md5(name.encode("utf-8"), usedforsecurity=False).hexdigest()
    return format(int(digest[1:8], 16) % fanout, "x")


#: A boinc2docker output file: ``<wu_name>_<n>_r<random>_<index>.tgz``.
RESULT_FILE_RE = re.compile(r"^(.+)_(\d+)_r(\d+)_(\d+)\.tgz$")


@dataclass(frozen=True)
class ResultFile:
    """The parts of a boinc2docker output file name."""

    wu_name: str
    result_number: int
    random: str
    file_index: int

    @property
    def result_name(self) -> str:
        """The BOINC result name, ``<wu_name>_<n>``."""
        return f"{self.wu_name}_{self.result_number}"


def parse_result_file(filename: str) -> ResultFile | None:
    """Split a result file name from the right, or return None when it does not match."""
    m = RESULT_FILE_RE.match(filename)
    if m is None:
        return None
    return ResultFile(m.group(1), int(m.group(2)), m.group(3), int(m.group(4)))
