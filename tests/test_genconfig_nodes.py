"""``devpid gen-config --node URL --node URL``: one nginx site balancing several nodes of one
PostgreSQL database, a systemd template unit running one node per port, and the options
the single-node unit passes on (``--status-acl``, ``--blobdir``)."""

from __future__ import annotations

import argparse
import configparser
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from devpid import genconfig
from devpid.genconfig import render, write
from tests.test_genconfig import (
    _options,
    _stub,
    free_port,
    nginx_test_config,
    require_nginx,
    write_nginx_main_conf,
)

NODES = ["http://127.0.0.1:3141", "http://127.0.0.1:3142"]


def _unit(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def test_single_node_unit_passes_status_acl_and_blobdir(tmp_path: Path) -> None:
    shared = tmp_path / "shared" / "blobs"
    texts = render(_options(tmp_path, status_acl="root,ops", blob_dir=shared))
    service = _unit(texts["devpid.service"])["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[argv.index("--status-acl") + 1] == "root,ops"
    assert argv[argv.index("--blobdir") + 1] == str(shared)
    assert service["ReadWritePaths"].split() == [str(tmp_path / "srv"), str(shared)]
    site = texts["devpid-nginx.conf"]
    assert f"alias {shared}/;" in site and f"root {shared};" in site
    # defaults: nothing new on the command line, files below the server directory
    texts = render(_options(tmp_path))
    argv = shlex.split(_unit(texts["devpid.service"])["Service"]["ExecStart"])
    assert "--status-acl" not in argv and "--blobdir" not in argv
    with pytest.raises(ValueError, match="status_acl"):
        render(_options(tmp_path, status_acl="root; rm"))


def test_nodes_get_one_upstream_and_a_template_unit(tmp_path: Path) -> None:
    opts = _options(tmp_path, nodes=NODES, blob_dir=tmp_path / "shared", status_acl="root")
    texts = render(opts)
    assert set(texts) == {"devpid@.service", "devpid-nginx.conf", "devpid-cron"}
    site = texts["devpid-nginx.conf"]
    upstream = site[site.index("upstream devpid {"):]
    upstream = upstream[: upstream.index("}")]
    assert "hash $remote_addr consistent;" in upstream
    for port in (3141, 3142):
        assert f"server 127.0.0.1:{port} max_fails=1 fail_timeout=10s;" in upstream
    assert "proxy_next_upstream error timeout http_502 http_503 http_504;" in site
    assert "non_idempotent" not in site.replace("no non_idempotent", "")
    assert f"alias {tmp_path}/shared/;" in site

    service = _unit(texts["devpid@.service"])["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[argv.index("--serverdir") + 1] == f"{tmp_path}/srv/%i"
    assert argv[argv.index("--port") + 1] == "%i"
    assert argv[argv.index("--blobdir") + 1] == f"{tmp_path}/shared"
    assert argv[argv.index("--secretfile") + 1] == f"{tmp_path}/srv/.secret"
    assert argv[argv.index("--status-acl") + 1] == "root"
    assert argv[argv.index("--workers") + 1] == "1"
    assert service["WorkingDirectory"] == f"{tmp_path}/srv/%i"
    assert service["ReadWritePaths"].split() == [f"{tmp_path}/srv", f"{tmp_path}/shared"]
    # the backup exports the first node's server directory
    assert f"export --serverdir {tmp_path}/srv/3141 " in texts["devpid-cron"]

    assert "hash $devpid_affinity consistent;" in render(
        _options(tmp_path, nodes=NODES, sticky="auth"))["devpid-nginx.conf"]
    assert "least_conn;" in render(
        _options(tmp_path, nodes=NODES, sticky="none"))["devpid-nginx.conf"]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"nodes": ["ftp://x:1"]}, "node must be"),
        ({"nodes": ["http://127.0.0.1:3141;"]}, "node must be"),
        ({"nodes": ["http://127.0.0.1:0"]}, "port"),
        ({"nodes": [NODES[0], NODES[0]]}, "twice"),
        ({"nodes": ["http://10.0.0.1:3141", "http://10.0.0.2:3141"], "host": "0.0.0.0"},
         "port of its own"),
        ({"nodes": ["http://10.0.0.1:3141", "http://10.0.0.2:3142"]}, "--host"),
        ({"nodes": NODES, "sticky": "cookie"}, "sticky"),
    ],
)
def test_bad_nodes_raise(tmp_path: Path, kw: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render(_options(tmp_path, **kw))


def test_nodes_on_several_hosts_listen_on_the_given_host(tmp_path: Path) -> None:
    texts = render(_options(tmp_path, nodes=["http://10.0.0.1:3141", "http://[fd00::2]:3142"],
                            host="0.0.0.0"))
    assert "server [fd00::2]:3142 max_fails" in texts["devpid-nginx.conf"]
    argv = shlex.split(_unit(texts["devpid@.service"])["Service"]["ExecStart"])
    assert argv[argv.index("--host") + 1] == "0.0.0.0"


@pytest.mark.parametrize("sticky", genconfig.STICKY)
def test_nginx_accepts_the_site_with_nodes(tmp_path: Path, sticky: str) -> None:
    nginx = require_nginx()
    site = tmp_path / "out" / "devpid-nginx.conf"
    write(_options(tmp_path, nginx_port=free_port(), nodes=NODES, sticky=sticky),
          tmp_path / "out")
    conf = write_nginx_main_conf(tmp_path / "nginx", site)
    result = nginx_test_config(nginx, tmp_path / "nginx", conf)
    assert result.returncode == 0, result.stderr
    assert "[warn]" not in result.stderr and "[emerg]" not in result.stderr, result.stderr


def test_template_unit_verifies_as_an_instance(tmp_path: Path) -> None:
    opts = _options(tmp_path, nodes=NODES)
    _stub(opts.bindir / "twistd", "exit 0\n")
    (path,) = [p for p in write(opts, tmp_path / "out") if p.name == "devpid@.service"]
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    instance = tmp_path / "units" / "devpid@3141.service"
    instance.parent.mkdir()
    shutil.copy(path, tmp_path / "units" / "devpid@.service")
    instance.symlink_to(tmp_path / "units" / "devpid@.service")
    result = subprocess.run([analyze, "verify", "--man=no", str(instance)],
                            capture_output=True, text=True, timeout=60, check=False)
    ours = [line for line in result.stderr.splitlines() if "devpid@" in line.split(":")[0]]
    assert result.returncode == 0 and not ours, result.stderr


def test_cli_with_nodes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    genconfig.add_arguments(parser)
    args = parser.parse_args(["--serverdir", str(tmp_path / "srv"), "--node", NODES[0],
                              "--node", NODES[1], "--blobdir", str(tmp_path / "shared"),
                              "--status-acl", ":AUTHENTICATED:",
                              "--output", str(tmp_path / "gen")])
    assert genconfig.main(args) == 0
    printed = capsys.readouterr().out
    assert "systemctl enable --now devpid@3141 devpid@3142" in printed
    assert "--store URL" in printed
    assert (tmp_path / "gen" / "devpid@.service").is_file()
    assert not (tmp_path / "gen" / "devpid.service").exists()
    # a single server directory's remembered --blobdir is what its site serves
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "blobdir.path").write_text(f"{tmp_path}/elsewhere\n")
    args = parser.parse_args(["--serverdir", str(tmp_path / "one"),
                              "--output", str(tmp_path / "gen1")])
    assert genconfig.main(args) == 0
    assert f"alias {tmp_path}/elsewhere/;" in (tmp_path / "gen1" / "devpid-nginx.conf"
                                               ).read_text()
