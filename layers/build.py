"""Build the amp-lite Lambda layer: a byte-reproducible zip with `python/` at its root.

    python layers/build.py                      # -> dist/amp-lite-layer.zip, prints its sha256
    python layers/build.py --output my.zip
    python layers/build.py --dir OUT            # the unzipped layer in OUT/python (sam build)

One pure-Python zip for x86_64 and arm64 and every supported Python runtime: amp_lite and the
pinned urllib3 of layers/requirements.txt, installed by pip with its cross-platform flags; no
boto3/botocore, no amp_lite.testing (FakeAmplitude is for tests), no __pycache__, files in
sorted order with fixed timestamps and permissions, so building twice gives the same sha256.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

LAYERS_DIR = Path(__file__).resolve().parent
REPO_ROOT = LAYERS_DIR.parent
REQUIREMENTS = LAYERS_DIR / "requirements.txt"
DEFAULT_OUTPUT = REPO_ROOT / "dist" / "amp-lite-layer.zip"
TARGET_PYTHON = "3.12"  # pure-Python wheels: the result runs on every runtime we list
PLATFORMS = ("manylinux2014_x86_64", "manylinux2014_aarch64")
FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip can hold
FORBIDDEN = ("boto3", "botocore", "s3transfer")
# Installer metadata that records where and how the build ran: not reproducible, not needed.
VOLATILE_METADATA = ("direct_url.json", "INSTALLER", "REQUESTED")
SOURCE_FILES = ("pyproject.toml", "README.md")  # with amp_lite/: what the wheel is built from
# Not for a function: FakeAmplitude and the TLS helpers are for tests (`amp-lite demo` too).
LEFT_OUT = ("__pycache__", "*.pyc", "testing", "_demo.py")


def build_tree(python_dir: Path) -> None:
    """Install amp_lite and the pinned dependencies into `python_dir`."""
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile",
           "--disable-pip-version-check", "--target", str(python_dir),
           "--implementation", "cp", "--python-version", TARGET_PYTHON,
           "--only-binary=:all:", *(f"--platform={p}" for p in PLATFORMS)]
    subprocess.run([*pip, "-r", str(REQUIREMENTS)], check=True)
    # amp_lite itself from a clean copy of this checkout (setuptools would reuse a stale
    # build/ directory, shipping modules that no longer exist), without resolving its
    # dependencies again.
    with tempfile.TemporaryDirectory() as work:
        source = Path(work) / "source"
        source.mkdir()
        for name in SOURCE_FILES:
            shutil.copy2(REPO_ROOT / name, source / name)
        shutil.copytree(REPO_ROOT / "amp_lite", source / "amp_lite",
                        ignore=shutil.ignore_patterns(*LEFT_OUT))
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                        "--disable-pip-version-check", "--wheel-dir", work, str(source)],
                       check=True)
        wheels = sorted(Path(work).glob("amp_lite-*.whl"))
        subprocess.run([*pip, "--no-deps", str(wheels[-1])], check=True)
    _clean(python_dir)


def _clean(python_dir: Path) -> None:
    for cache in sorted(python_dir.rglob("__pycache__"), reverse=True):
        shutil.rmtree(cache)
    shutil.rmtree(python_dir / "bin", ignore_errors=True)  # console scripts: not for a layer
    for dist_info in python_dir.glob("*.dist-info"):
        for name in VOLATILE_METADATA:
            (dist_info / name).unlink(missing_ok=True)
        metadata = dist_info / "METADATA"
        if dist_info.name.startswith("amp_lite-") and metadata.exists():
            _drop_long_description(metadata)
        record = dist_info / "RECORD"
        if record.exists():  # drop the lines of the files removed above, keep the rest
            kept = [_recorded(python_dir, line) for line in record.read_text().splitlines()
                    if not line.split(",")[0].endswith(VOLATILE_METADATA)
                    and "__pycache__" not in line and not line.startswith("../../bin/")]
            record.write_text("\n".join(kept) + "\n")
    present = [name for name in FORBIDDEN if (python_dir / name).exists()]
    if present:
        raise SystemExit(f"the layer must not ship {', '.join(present)}")


def _drop_long_description(metadata: Path) -> None:
    """Keep the headers of amp_lite's METADATA, not the README after them (a fifth of the
    zip, and nothing in a function reads it)."""
    headers, _, _ = metadata.read_text(encoding="utf-8").partition("\n\n")
    metadata.write_text(headers + "\n", encoding="utf-8")


def _recorded(python_dir: Path, line: str) -> str:
    """A RECORD line with the file's current hash and size (METADATA may have changed)."""
    name, digest, _ = [*line.split(","), "", ""][:3]
    path = python_dir / name
    if not digest or not path.is_file():
        return line
    data = path.read_bytes()
    encoded = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={encoded},{len(data)}"


def write_zip(root: Path, output: Path) -> str:
    """Zip everything under `root` (which holds `python/`) reproducibly; returns the sha256."""
    output.parent.mkdir(parents=True, exist_ok=True)
    files = sorted((p for p in root.rglob("*") if p.is_file()),
                   key=lambda p: p.relative_to(root).as_posix())
    with zipfile.ZipFile(output, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for path in files:
            info = zipfile.ZipInfo(path.relative_to(root).as_posix(), FIXED_TIME)
            info.external_attr = 0o100644 << 16  # a regular file, rw-r--r--
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes(), compresslevel=9)
    return hashlib.sha256(output.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the zip to write")
    where.add_argument("--dir", type=Path, help="write the unzipped layer (DIR/python) instead")
    args = parser.parse_args(argv)
    if args.dir is not None:
        shutil.rmtree(args.dir / "python", ignore_errors=True)
        build_tree(args.dir / "python")
        print(f"layer tree: {args.dir / 'python'}")
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        build_tree(Path(scratch) / "python")
        digest = write_zip(Path(scratch), args.output)
    print(f"{args.output} {args.output.stat().st_size} bytes sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
