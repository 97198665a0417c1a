"""Scratch databases for the benchmarks: a fresh MariaDB database when the shared server answers."""

from __future__ import annotations

import secrets
import socket


def create_mariadb(prefix: str) -> str | None:
    """Create a database named ``<prefix>_<random hex>`` on 127.0.0.1:3306; return its URL.

    Returns None when no server answers there (the caller falls back to SQLite).
    """
    try:
        with socket.create_connection(("127.0.0.1", 3306), timeout=0.5):
            pass
    except OSError:
        return None
    import pymysql

    name = f"{prefix}_{secrets.token_hex(4)}"
    conn = pymysql.connect(host="127.0.0.1", user="root", autocommit=True)
    conn.cursor().execute(f"CREATE DATABASE `{name}`")
    conn.close()
    return f"mysql+pymysql://root@127.0.0.1:3306/{name}"


def drop(url: str) -> None:
    """Drop a database made by :func:`create_mariadb` (any other URL is left alone)."""
    if not url.startswith("mysql"):
        return
    import pymysql

    conn = pymysql.connect(host="127.0.0.1", user="root", autocommit=True)
    conn.cursor().execute(f"DROP DATABASE IF EXISTS `{url.rsplit('/', 1)[1]}`")
    conn.close()
