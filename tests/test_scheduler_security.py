"""dask.distributed schedulers: workers in other directories, nodes the client cannot see, TLS, listeners."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dask
import pytest
from click.testing import CliRunner

from conftest import REPO_ROOT
from rppg_prep import dag
from rppg_prep.build import SubjectResult
from rppg_prep.cli import main
from rppg_prep.dag import run_build
from rppg_prep.datasets import ubfc
from rppg_prep.errors import ConfigError
from rppg_prep.pipeline import load_pipeline
from rppg_prep.sample import write_ubfc_sample
from rppg_prep.store import node_exists

NO_TLS_CONFIG = {"distributed.comm.tls.ca-file": None, "distributed.comm.tls.client.cert": None,
                 "distributed.comm.tls.client.key": None, "distributed.comm.require-encryption": None}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("sched_root")
    write_ubfc_sample(out, n_subjects=1, duration_s=4.0, seed=3)
    return out


def _manifest(cache: Path) -> dict:
    return json.loads((cache / "ubfc.builds" / "ubfc.json").read_text())


def _in_process_cluster(**kwargs):
    """A scheduler and one worker in this process, reached over a real tcp:// (or tls://) address."""
    from distributed import LocalCluster

    kwargs.setdefault("protocol", "tcp://")
    return LocalCluster(n_workers=1, threads_per_worker=1, processes=False, host="127.0.0.1",
                        dashboard_address=None, **kwargs)


# --------------------------------------------------------------------------- item 9: paths


def test_a_worker_started_elsewhere_builds_into_the_clients_cache_given_relative_paths(root, tmp_path, monkeypatch):
    """`dask scheduler` + `dask worker` in another directory; `build --root data --cache cache` from here."""
    here, elsewhere = tmp_path / "client", tmp_path / "elsewhere"
    shutil.copytree(root, here / "data")
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    sched_file = tmp_path / "scheduler.json"
    procs = [subprocess.Popen([sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(sched_file)], cwd=elsewhere, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while not sched_file.exists() or not sched_file.read_text().strip():
            assert time.monotonic() < deadline and procs[0].poll() is None, "the dask scheduler did not start"
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        procs.append(subprocess.Popen([sys.executable, "-m", "dask", "worker", address, "--nthreads", "1",
                                       "--no-nanny", "--host", "127.0.0.1", "--no-dashboard"], cwd=elsewhere,
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(address, timeout=30) as client:
            client.wait_for_workers(1, timeout=60)
        monkeypatch.chdir(here)
        res = CliRunner().invoke(main, ["build", "ubfc", "--root", "data", "--cache", "cache",
                                        "--scheduler", address])
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:  # a worker slow to shut down is not what this test checks
                p.kill()
                p.wait(timeout=30)
    assert res.exit_code == 0, res.output
    rec = _manifest(here / "cache")["subjects"]["subject1"]
    assert rec["status"] == "ok" and rec["frames"] > 0 and rec["bytes"] > 0, rec
    for node in rec["nodes"].values():
        assert node_exists(here / "cache" / node["path"]), node
    assert not (elsewhere / "cache").exists()  # nothing went under the worker's own working directory


_REAL_RUN_TASK = dag.run_task
_CALLS: list = []  # module-level: a task pickled to an in-process worker finds the same list


def _record_and_run(task, pipe, subject, cache, *args):
    _CALLS.append((task, cache, subject.video, subject.truth))
    return _REAL_RUN_TASK(task, pipe, subject, cache, *args)


def test_tasks_get_absolute_cache_and_input_paths(root, tmp_path, monkeypatch):
    shutil.copytree(root, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    _CALLS.clear()
    monkeypatch.setattr(dag, "run_task", _record_and_run)
    with _in_process_cluster() as cluster:
        results = run_build(load_pipeline("ubfc"), ubfc.find_subjects(Path("data")), "cache", root="data",
                            scheduler=cluster.scheduler_address)
    assert [r.status for r in results] == ["ok"], [r.error for r in results]
    assert _CALLS
    for task, cache, video, truth in _CALLS:
        assert cache == str(tmp_path / "cache"), task
        assert Path(video).is_absolute() and all(Path(p).is_absolute() for p in truth), (task, video, truth)


def _reports_ok_but_writes_nothing(task, pipe, subject, cache, plan, progress, *upstream):
    """A worker whose cache is another disk: its nodes exist there, not where the client looks."""
    return dag.Outcome(subject.id, task, result=SubjectResult(subject.id))


def test_a_node_the_client_cannot_see_fails_its_subject_naming_the_path(root, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setattr(dag, "run_task", _reports_ok_but_writes_nothing)
    with _in_process_cluster() as cluster:
        results = run_build(load_pipeline("ubfc"), ubfc.find_subjects(root), cache, root=root,
                            scheduler=cluster.scheduler_address)
    (res,) = results
    assert res.status == "failed" and res.failed_stage == "decode", (res.status, res.error)
    assert "every worker sees" in res.error and "same absolute path" in res.error, res.error
    assert str(cache / res.nodes["decode"]["path"]) in res.error, res.error
    rec = _manifest(cache)["subjects"]["subject1"]
    assert rec["status"] == "failed" and "every worker sees" in rec["error"]


# --------------------------------------------------------------------------- item 10: TLS and listeners


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A self-signed certificate (its own CA) and key, made with the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl CLI to make a test certificate")
    out = tmp_path_factory.mktemp("tls")
    cert, key = out / "cert.pem", out / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=localhost"], check=True, capture_output=True)
    return cert, key


def test_tls_scheduler_needs_a_ca_and_certificate_and_tcp_refuses_tls_settings(root, tmp_path):
    pipe, subjects = load_pipeline("ubfc"), ubfc.find_subjects(root)
    with dask.config.set(NO_TLS_CONFIG):
        with pytest.raises(ConfigError, match="--tls-ca-file"):
            run_build(pipe, subjects, tmp_path / "a", scheduler="tls://127.0.0.1:1")
        with pytest.raises(ConfigError, match="not tls://"):
            run_build(pipe, subjects, tmp_path / "b", scheduler="tcp://127.0.0.1:1",
                      security={"tls_ca_file": "ca.pem", "tls_client_cert": "c.pem"})
    res = CliRunner().invoke(main, ["build", "ubfc", "--root", str(root), "--cache", str(tmp_path / "c"),
                                    "--scheduler", "tls://127.0.0.1:1"])
    assert res.exit_code != 0 and "tls" in res.output.lower() and "unknown scheduler" not in res.output, res.output


def test_a_tls_scheduler_builds_with_cli_certificates_or_dask_config(root, tmp_path, tls_files):
    from distributed import Security

    cert, key = map(str, tls_files)
    roles = {f"tls_{r}_{k}": v for r in ("scheduler", "worker", "client") for k, v in (("cert", cert), ("key", key))}
    with dask.config.set(NO_TLS_CONFIG), \
            _in_process_cluster(protocol="tls://", security=Security(tls_ca_file=cert, require_encryption=True,
                                                                      **roles)) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tls://")
        res = CliRunner().invoke(main, ["build", "ubfc", "--root", str(root), "--cache", str(tmp_path / "cli"),
                                        "--scheduler", address, "--tls-ca-file", cert, "--tls-cert", cert,
                                        "--tls-key", key])
        assert res.exit_code == 0, res.output
        assert _manifest(tmp_path / "cli")["subjects"]["subject1"]["status"] == "ok"
        # the same from dask's own config (distributed.comm.tls.*), as distributed.Security() reads it
        with dask.config.set({"distributed.comm.tls.ca-file": cert, "distributed.comm.tls.client.cert": cert,
                              "distributed.comm.tls.client.key": key}):
            results = run_build(load_pipeline("ubfc"), ubfc.find_subjects(root), tmp_path / "config", root=root,
                                scheduler=address)
        assert [r.status for r in results] == ["ok"], [r.error for r in results]


class _Stop(Exception):
    pass


def _listeners(proc) -> set[tuple[str, int]]:
    conns = getattr(proc, "net_connections", proc.connections)(kind="inet")
    return {(c.laddr.ip, c.laddr.port) for c in conns if c.status == "LISTEN"}


def test_local_cluster_listens_on_127_0_0_1_only_and_serves_no_http(root, tmp_path, monkeypatch):
    """Only the scheduler's, the nanny's and the worker's comm ports; no dashboard, metrics or info pages."""
    import distributed
    import psutil

    me = psutil.Process()
    before = _listeners(me)
    seen = {}

    class Spy(distributed.Client):
        def get(self, *args, **kwargs):
            tree = [me, *me.children(recursive=True)]
            seen["listening"] = set().union(*(_listeners(p) for p in tree)) - before
            info = self.scheduler_info()
            seen["comm"] = {self.scheduler.address, *info["workers"],
                            *(w["nanny"] for w in info["workers"].values() if w.get("nanny"))}
            raise _Stop

    monkeypatch.setattr(distributed, "Client", Spy)
    with pytest.raises(_Stop):
        run_build(load_pipeline("ubfc"), ubfc.find_subjects(root), tmp_path / "cache", root=root,
                  scheduler="local-cluster", workers=1)
    hosts = {ip for ip, _ in seen["listening"]}
    assert hosts == {"127.0.0.1"}, seen
    comm_ports = {int(a.rsplit(":", 1)[1]) for a in seen["comm"]}
    assert {port for _, port in seen["listening"]} == comm_ports, seen


def test_the_dashboard_is_started_only_when_asked_and_on_127_0_0_1(root, tmp_path, monkeypatch):
    import distributed

    asked = []

    def fake_cluster(**kwargs):
        asked.append(kwargs)
        raise _Stop

    monkeypatch.setattr(distributed, "LocalCluster", fake_cluster)
    for dashboard in (False, True):
        with pytest.raises(_Stop):
            run_build(load_pipeline("ubfc"), ubfc.find_subjects(root), tmp_path / "cache", root=root,
                      scheduler="local-cluster", workers=1, dashboard=dashboard)
    assert [kw["host"] for kw in asked] == ["127.0.0.1", "127.0.0.1"]
    assert asked[0]["dashboard_address"] is None
    assert asked[1]["dashboard_address"].startswith("127.0.0.1:")
