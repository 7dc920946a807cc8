"""The container image, built and run here without a daemon (`make image`, e2e/image/build.sh).

The OCI archive in dist/ is (re)built when missing or older than its sources, unpacked once per
image with umoci (cached by manifest digest under $COMPTROLLER_CACHE/image/), and run with crun the
way the chart runs it: uid 65532, read-only root, a tmpfs /tmp, the serving certificate and the
policies mounted read-only, on the host's network. `comptroller --help`, then the webhook: TLS
/healthz and a real AdmissionReview denied by the default `finops-labels` policy.

crun 1.8 refuses a cgroup v1/v2 hybrid host ("cgroups in hybrid mode not supported, drop all
controllers from cgroupv2") whatever its cgroup manager, so crun runs in a private mount namespace
without the v2 half (/sys/fs/cgroup/unified), with `--cgroup-manager=disabled`: the containers get
no resource limits, which these tests do not need. On a pure v1 or v2 host that unmount is a no-op.
Running containers and unpacking images with their owners needs root; as another user these tests
are skipped, saying so (`-ra`).
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import tarfile
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller import certs
from e2e.cluster.plane import REPO, free_port

pytestmark = pytest.mark.timeout(1800)  # a cold `make image` (tools, base, dependencies) included

VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
ARCHIVE = REPO / "dist" / f"comptroller-{VERSION}.oci.tar"
CACHE = Path(os.environ.get("COMPTROLLER_CACHE") or Path.home() / ".cache" / "comptroller") / "image"
MAX_IMAGE_MB = 250
UID = 65532
SUBCOMMANDS = ("check", "fix", "webhook", "operator", "report", "wake", "certs")
# crun in its own mount namespace, without the cgroup v2 half of a hybrid host (see above).
CRUN = [
    "unshare", "--mount", "--propagation", "private", "sh", "-c",
    'if mountpoint -q /sys/fs/cgroup/unified; then umount -l /sys/fs/cgroup/unified; fi; '
    'exec crun --cgroup-manager=disabled "$@"',
    "crun",
]


def sources() -> list[Path]:
    """What the archive is built from: the build context the .dockerignore lets in, the Dockerfile
    and the build script."""
    files = [REPO / "Dockerfile", REPO / ".dockerignore", REPO / "pyproject.toml", REPO / "README.md",
             REPO / "e2e" / "image" / "build.sh"]
    files += [p for p in (REPO / "controller").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return [p for p in files if p.exists()]


def stale() -> bool:
    if not ARCHIVE.exists():
        return True
    built = ARCHIVE.stat().st_mtime
    return any(p.stat().st_mtime > built for p in sources())


def crun(*args: str, timeout: float = 30, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([*CRUN, *args], capture_output=True, text=True, timeout=timeout, check=check)


@pytest.fixture(scope="module")
def image() -> Path:
    """The unpacked image: a bundle directory (rootfs/ and umoci's config.json), built if stale."""
    if os.geteuid() != 0:
        pytest.skip("running the image needs root (apt-get, buildah storage, crun, umoci with owners): "
                    "run `sudo make image` and this test as root")
    if stale() or not all(shutil.which(tool) for tool in ("umoci", "crun", "unshare")):
        built = subprocess.run(["make", "image"], cwd=REPO, capture_output=True, text=True, timeout=1700)
        if built.returncode != 0:
            output = built.stdout[-4000:] + built.stderr[-4000:]
            pytest.fail(f"make image failed ({built.returncode}):\n{output}")
    assert ARCHIVE.exists() and not stale(), f"{ARCHIVE} missing or older than its sources after make image"

    with tarfile.open(ARCHIVE) as archive:
        member = archive.extractfile("index.json")
        assert member is not None
        index = json.load(member)
    digest = index["manifests"][0]["digest"].split(":", 1)[1]
    bundle = CACHE / f"rootfs-{digest[:16]}"
    if not (bundle / "config.json").exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        work = CACHE / f"unpack-{uuid.uuid4().hex[:8]}"
        try:
            (work / "layout").mkdir(parents=True)
            with tarfile.open(ARCHIVE) as archive:
                archive.extractall(work / "layout", filter="tar")
            unpack = ["umoci", "unpack", "--image", f"{work / 'layout'}:{VERSION}", str(work / "bundle")]
            subprocess.run(unpack, check=True, capture_output=True, text=True, timeout=300)
            for old in CACHE.glob("rootfs-*"):
                shutil.rmtree(old, ignore_errors=True)
            (work / "bundle").rename(bundle)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return bundle


def bundle_for(image: Path, directory: Path, args: list[str], mounts: dict[str, Path] | None = None) -> Path:
    """An OCI bundle in `directory` running `args` in the image as the chart does: the image's own
    user, environment and working directory; read-only root; tmpfs /tmp; `mounts` (container path
    -> host path) read-only; no network namespace (the host's loopback)."""
    config = json.loads((image / "config.json").read_text())
    process = config["process"]
    process["terminal"] = False
    process["args"] = args
    config["root"] = {"path": str(image / "rootfs"), "readonly": True}
    config["hostname"] = "comptroller"
    linux = config["linux"]
    linux["namespaces"] = [ns for ns in linux["namespaces"] if ns["type"] != "network"]
    linux.pop("resources", None)
    linux.pop("cgroupsPath", None)
    config["mounts"] = [m for m in config["mounts"] if m["type"] != "cgroup"]
    config["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                             "options": ["nosuid", "nodev", "mode=1777", "size=65536k"]})
    for target, source in (mounts or {}).items():
        config["mounts"].append({"destination": target, "type": "bind", "source": str(source),
                                 "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]})
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=1))
    return directory


class Container:
    """One `crun run` in the foreground; always killed and deleted on exit."""

    def __init__(self, bundle: Path, log: Path) -> None:
        self.name = f"comptroller-test-{uuid.uuid4().hex[:10]}"
        self.bundle, self.log = bundle, log
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Container:
        out = self.log.open("wb")
        self.process = subprocess.Popen([*CRUN, "run", "--bundle", str(self.bundle), self.name],
                                        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        return self

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM (the chart's pod deletion), then SIGKILL; the exit code, or None if killed."""
        assert self.process is not None
        if self.process.poll() is None:
            crun("kill", self.name, "TERM")
            try:
                return self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        return self.process.poll()

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            crun("kill", self.name, "KILL")
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        crun("delete", "--force", self.name)


def run(image: Path, tmp_path: Path, args: list[str], timeout: float = 60) -> tuple[int, str]:
    bundle = bundle_for(image, tmp_path / "bundle", args)
    with Container(bundle, tmp_path / "container.log") as container:
        code = container.wait(timeout)
        return code, container.output()


def test_image_config_and_size(image: Path, capsys: pytest.CaptureFixture[str]) -> None:
    process = json.loads((image / "config.json").read_text())["process"]
    assert (process["user"]["uid"], process["user"]["gid"]) == (UID, UID)
    assert process["args"] == ["comptroller", "--help"]
    assert process["cwd"] == "/tmp" and "HOME=/tmp" in process["env"]

    archive_mb = ARCHIVE.stat().st_size / 2**20
    rootfs_mb = int(subprocess.run(["du", "-sxm", str(image / "rootfs")], capture_output=True, text=True,
                                   check=True).stdout.split()[0])
    with capsys.disabled():
        print(f"\n{ARCHIVE.relative_to(REPO)}: {archive_mb:.0f} MB (compressed layers), "
              f"unpacked root filesystem {rootfs_mb} MB")
    assert archive_mb < MAX_IMAGE_MB


def test_help(image: Path, tmp_path: Path) -> None:
    code, output = run(image, tmp_path, ["comptroller", "--help"])
    assert code == 0, output
    for command in SUBCOMMANDS:
        assert f"    {command} " in output, output


def test_read_only_root_as_nonroot(image: Path, tmp_path: Path) -> None:
    probe = (
        "import os, tempfile\n"
        "print('uid', os.getuid(), os.getgid())\n"
        "try:\n"
        "    open('/opt/comptroller/probe', 'w')\n"
        "except OSError as e:\n"
        "    print('root', e.strerror)\n"
        "with tempfile.NamedTemporaryFile() as f:\n"
        "    print('tmp', f.name)\n"
    )
    code, output = run(image, tmp_path, ["python", "-c", probe])
    assert code == 0, output
    assert f"uid {UID} {UID}" in output
    assert "root Read-only file system" in output, output
    assert "tmp /tmp/" in output


@pytest.fixture
def serving_pair(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(directory with tls.crt and tls.key, CA certificate), from `comptroller certs`' own code;
    like the chart's Secret volume, only the serving pair is mounted, readable by the pod's group."""
    paths = certs.generate(tmp_path / "ca", hosts=["127.0.0.1", "localhost"])
    mounted = tmp_path / "certs"
    mounted.mkdir(mode=0o755)
    for source in (paths.tls_cert, paths.tls_key):
        target = mounted / source.name
        shutil.copyfile(source, target)
        os.chown(target, 0, UID)
        target.chmod(0o440)
    yield mounted, paths.ca_cert


def admission_review() -> dict:
    """A GPU Pod without any FinOps label, as the API server sends it (tests/webhook's shape)."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "trainer", "namespace": "ml-team"},
        "spec": {
            "containers": [{"name": "main", "image": "registry.example/train:1",
                            "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
            "nodeSelector": {"node.kubernetes.io/instance-type": "g5.xlarge"},
        },
    }
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "namespace": "ml-team",
            "name": "trainer",
            "userInfo": {"username": "data-scientist"},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
        },
    }


def test_webhook_serves_tls_and_denies(image: Path, tmp_path: Path, serving_pair: tuple[Path, Path]) -> None:
    cert_dir, ca_file = serving_pair
    port = free_port()
    args = [
        "comptroller", "webhook", "--host=127.0.0.1", f"--port={port}",
        "--cert-file=/certs/tls.crt", "--key-file=/certs/tls.key",
        "--namespace=comptroller-system", "--failure-mode=ignore", "--policies=/policies",
    ]
    bundle = bundle_for(image, tmp_path / "bundle", args,
                        mounts={"/certs": cert_dir, "/policies": REPO / "policies" / "default"})
    context = ssl.create_default_context(cafile=str(ca_file))
    base = f"https://127.0.0.1:{port}"

    with Container(bundle, tmp_path / "webhook.log") as webhook:
        deadline = time.monotonic() + 60
        while True:
            assert webhook.process is not None
            if webhook.process.poll() is not None:
                pytest.fail(f"the webhook exited ({webhook.process.returncode}):\n{webhook.output()}")
            try:
                with urllib.request.urlopen(f"{base}/healthz", context=context, timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"no healthy /healthz over TLS within 60s:\n{webhook.output()}")
            time.sleep(0.3)

        review = admission_review()
        request = urllib.request.Request(
            f"{base}/validate", data=json.dumps(review).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            answer = json.load(response)
        assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
        verdict = answer["response"]
        assert verdict["uid"] == review["request"]["uid"]
        assert verdict["allowed"] is False, verdict
        assert "finops-labels" in verdict["status"]["message"], verdict

        code = webhook.stop()
        assert code == 0, f"the webhook did not stop cleanly on SIGTERM ({code}):\n{webhook.output()}"
