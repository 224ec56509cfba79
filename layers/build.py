"""Build the amp-lite Lambda layers: one byte-reproducible zip per Python runtime.

    python layers/build.py                      # every runtime below with an interpreter here
                                                #   -> dist/amp-lite-layer-python3.X.zip
    python layers/build.py --python 3.12        # one runtime (repeat --python for more)
    python layers/build.py --python 3.12 --output my.zip
    python layers/build.py --python 3.12 --dir OUT   # the unzipped layer in OUT/python (sam build)
    python layers/build.py --extension          # the extension layers instead
                                                #   -> dist/amp-lite-extension-layer-python3.X.zip

Each zip holds `python/` with amp_lite and the pinned urllib3 of layers/requirements.txt
(pure Python, installed by pip with its cross-platform flags, so one zip serves x86_64 and
arm64), their sources and their bytecode for that runtime only: `/opt` is read-only on Lambda,
so a layer without `.pyc` files is compiled from source at every cold start. The bytecode is
compiled by that runtime's own interpreter (found as `python3.X` on PATH or through pyenv)
with `--invalidation-mode unchecked-hash`: no source mtime in the files, and Lambda never
re-checks them. No boto3/botocore, no amp_lite.testing (FakeAmplitude is for tests); files in
sorted order with fixed timestamps and permissions, so building twice gives the same sha256.

The extension layer (`--extension`) is the same `python/` plus `extensions/amp-lite`, the
opt-in Lambda extension that delivers after the response. It is a layer of its own because
Lambda starts every extension a function has at each cold start: the plain layer must cost
nothing, and an extension that exits fails the init, so it cannot just leave when disabled.
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
from collections.abc import Sequence
from pathlib import Path

LAYERS_DIR = Path(__file__).resolve().parent
REPO_ROOT = LAYERS_DIR.parent
REQUIREMENTS = LAYERS_DIR / "requirements.txt"
DIST = REPO_ROOT / "dist"
# The Lambda runtimes we publish a layer for: those of requires-python (>=3.10) that Lambda
# still supports. python3.10 was deprecated on 2026-10-31 (no more patches; creating functions
# is blocked from 2027-02-01): buildable with --python 3.10 for functions still on it, not in
# the default set. Dates: https://docs.aws.amazon.com/lambda/latest/dg/lambda-runtimes.html
RUNTIMES = ("3.11", "3.12", "3.13", "3.14")
DEPRECATED_RUNTIMES = {"3.10": "deprecated on Lambda since 2026-10-31"}
PLATFORMS = ("manylinux2014_x86_64", "manylinux2014_aarch64")
FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip can hold
FORBIDDEN = ("boto3", "botocore", "s3transfer")
# Installer metadata that records where and how the build ran: not reproducible, not needed.
VOLATILE_METADATA = ("direct_url.json", "INSTALLER", "REQUESTED")
SOURCE_FILES = ("pyproject.toml", "README.md")  # with amp_lite/: what the wheel is built from
# Not for a function: FakeAmplitude and the TLS helpers are for tests (`amp-lite demo` too).
LEFT_OUT = ("__pycache__", "*.pyc", "testing", "_demo.py")
# The extension's own process: only in the extension layer (the function side is _handoff).
EXTENSION_ONLY = ("_extension.py", "_extension_boot.py")
# Where Lambda mounts a layer's python/: the file names the bytecode records (tracebacks),
# so that they do not name the build's scratch directory (and the build stays reproducible).
LAYER_PATH = "/opt/python"
EXTENSIONS = LAYERS_DIR / "extensions"  # their executables, at the layer's extensions/


def layer_name(runtime: str, *, extension: bool = False) -> str:
    return f"amp-lite-{'extension-' if extension else ''}layer-python{runtime}.zip"


def find_interpreter(runtime: str) -> Path:
    """The real path of a CPython `runtime` ("3.12") interpreter: this one, pyenv's, or the
    `python3.12` on PATH; SystemExit when there is none."""
    candidates: list[str] = []
    if f"{sys.version_info[0]}.{sys.version_info[1]}" == runtime:
        candidates.append(sys.executable)
    try:
        prefix = subprocess.run(["pyenv", "prefix", runtime], capture_output=True, text=True,
                                timeout=30, check=False)
        if prefix.returncode == 0 and prefix.stdout.strip():
            candidates.append(str(Path(prefix.stdout.strip().splitlines()[0])
                                  / "bin" / f"python{runtime}"))
    except OSError:  # no pyenv
        pass
    on_path = shutil.which(f"python{runtime}")
    if on_path:
        candidates.append(on_path)
    for candidate in candidates:
        try:
            done = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % "
                                   "sys.version_info[:2]); print(sys.executable)"],
                                  capture_output=True, text=True, timeout=60, check=False)
        except OSError:
            continue
        lines = done.stdout.split()
        if done.returncode == 0 and len(lines) == 2 and lines[0] == runtime:
            return Path(lines[1])
    raise SystemExit(f"no Python {runtime} interpreter found (python{runtime} on PATH, or "
                     f"`pyenv install {runtime}`): cannot compile the python{runtime} layer")


def build_wheel(work: Path, *, extension: bool = False) -> Path:
    """amp_lite's wheel from a clean copy of this checkout (setuptools would reuse a stale
    build/ directory, shipping modules that no longer exist)."""
    source = work / "source"
    source.mkdir()
    for name in SOURCE_FILES:
        shutil.copy2(REPO_ROOT / name, source / name)
    left_out = LEFT_OUT if extension else (*LEFT_OUT, *EXTENSION_ONLY)
    shutil.copytree(REPO_ROOT / "amp_lite", source / "amp_lite",
                    ignore=shutil.ignore_patterns(*left_out))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--disable-pip-version-check", "--wheel-dir", str(work), str(source)],
                   check=True)
    return sorted(work.glob("amp_lite-*.whl"))[-1]


def build_tree(python_dir: Path, runtime: str, wheel: Path, interpreter: Path) -> None:
    """Install amp_lite and the pinned dependencies for `runtime` into `python_dir`, then
    compile them with that runtime's `interpreter`."""
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile",
           "--disable-pip-version-check", "--target", str(python_dir),
           "--implementation", "cp", "--python-version", runtime,
           "--only-binary=:all:", *(f"--platform={p}" for p in PLATFORMS)]
    subprocess.run([*pip, "-r", str(REQUIREMENTS)], check=True)
    subprocess.run([*pip, "--no-deps", str(wheel)], check=True)
    _clean(python_dir)
    compile_tree(python_dir, interpreter)
    _record_bytecode(python_dir)


def compile_tree(python_dir: Path, interpreter: Path) -> None:
    """Bytecode for every module, reproducibly: hash-based (no mtime), a fixed hash seed (set
    and frozenset constants keep one order), the file names Lambda will see."""
    # Only PYTHONHASHSEED in the environment (no PYTHONPATH, PYTHONDONTWRITEBYTECODE...);
    # not -I or -E, which would ignore it: 3.10 marshals a frozenset in hash order.
    subprocess.run([str(interpreter), "-s", "-m", "compileall", "-q", "-f",
                    "--invalidation-mode", "unchecked-hash",
                    "-s", str(python_dir), "-p", LAYER_PATH, str(python_dir)],
                   check=True, env={"PYTHONHASHSEED": "0"}, cwd=python_dir, timeout=300)
    missing = [p for p in python_dir.rglob("*.py") if not _cached(p, interpreter).is_file()]
    if missing:
        raise SystemExit(f"no bytecode for {', '.join(map(str, missing[:5]))}")


def _cached(source: Path, interpreter: Path) -> Path:
    tag = _cache_tag(interpreter)
    return source.parent / "__pycache__" / f"{source.stem}.{tag}.pyc"


_TAGS: dict[Path, str] = {}


def _cache_tag(interpreter: Path) -> str:
    if interpreter not in _TAGS:
        _TAGS[interpreter] = subprocess.run(
            [str(interpreter), "-I", "-c", "import sys; print(sys.implementation.cache_tag)"],
            capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    return _TAGS[interpreter]


def _record_bytecode(python_dir: Path) -> None:
    """Add the compiled files to each distribution's RECORD, as pip does when it compiles."""
    for record in sorted(python_dir.glob("*.dist-info/RECORD")):
        lines = record.read_text().splitlines()
        names = {line.split(",")[0] for line in lines}
        extra = []
        for name in sorted(names):
            if not name.endswith(".py"):
                continue
            folder, _, file = name.rpartition("/")
            for pyc in sorted((python_dir / folder / "__pycache__").glob(f"{file[:-3]}.*.pyc")):
                relative = pyc.relative_to(python_dir).as_posix()
                if relative not in names:
                    extra.append(_recorded(python_dir, f"{relative},sha256=x,"))
        record.write_text("\n".join([*lines, *extra]) + "\n")


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
            name = path.relative_to(root).as_posix()
            info = zipfile.ZipInfo(name, FIXED_TIME)
            executable = name.startswith("extensions/")  # Lambda runs them as they are
            info.external_attr = (0o100755 if executable else 0o100644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes(), compresslevel=9)
    return hashlib.sha256(output.read_bytes()).hexdigest()


def add_extensions(root: Path) -> None:
    """The extension layer's executables, in `root`/extensions."""
    target = root / "extensions"
    target.mkdir(parents=True, exist_ok=True)
    for executable in sorted(EXTENSIONS.iterdir()):
        shutil.copyfile(executable, target / executable.name)
        (target / executable.name).chmod(0o755)


def build(runtimes: Sequence[str], *, outputs: dict[str, Path] | None = None,
          into: Path | None = None, extension: bool = False) -> dict[str, str]:
    """Build the layer of each runtime: zips at `outputs[runtime]` (default dist/), or the
    unzipped tree in `into`/python (one runtime); with `extension`, the extension layer.
    Returns runtime -> sha256 of its zip."""
    interpreters = {runtime: find_interpreter(runtime) for runtime in runtimes}
    digests: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as scratch:
        wheel = build_wheel(Path(scratch), extension=extension)
        for runtime, interpreter in interpreters.items():
            if into is not None:
                shutil.rmtree(into / "python", ignore_errors=True)
                build_tree(into / "python", runtime, wheel, interpreter)
                if extension:
                    add_extensions(into)
                print(f"layer tree for python{runtime}: {into / 'python'}")
                continue
            root = Path(scratch) / f"python{runtime}"
            build_tree(root / "python", runtime, wheel, interpreter)
            if extension:
                add_extensions(root)
            output = (outputs or {}).get(runtime, DIST / layer_name(runtime,
                                                                    extension=extension))
            digests[runtime] = write_zip(root, output)
            print(f"{output} {output.stat().st_size} bytes sha256 {digests[runtime]}")
    return digests


def _runtime(value: str) -> str:
    value = value.removeprefix("python")
    if value not in RUNTIMES and value not in DEPRECATED_RUNTIMES:
        raise argparse.ArgumentTypeError(
            f"{value}: not a Lambda Python runtime we build for ({', '.join(RUNTIMES)})")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", dest="runtimes", action="append", type=_runtime,
                        metavar="3.X", help="a runtime to build for (repeatable); default: "
                        f"each of {', '.join(RUNTIMES)} with an interpreter on this machine")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--output", type=Path, help="the zip to write (one --python)")
    where.add_argument("--output-dir", type=Path, help=f"where the zips go (default: {DIST})")
    where.add_argument("--dir", type=Path, help="write the unzipped layer (DIR/python) instead "
                       "(one --python)")
    parser.add_argument("--extension", action="store_true", help="build the extension layers "
                        "(python/ and extensions/amp-lite) instead of the plain ones")
    args = parser.parse_args(argv)
    runtimes: list[str] = list(dict.fromkeys(args.runtimes or ()))
    if not runtimes:
        for runtime in RUNTIMES:
            try:
                find_interpreter(runtime)
            except SystemExit as missing:
                print(f"skipped python{runtime}: {missing}", file=sys.stderr)
            else:
                runtimes.append(runtime)
        if not runtimes:
            parser.error("no interpreter found for any runtime")
    if (args.output or args.dir) and len(runtimes) != 1:
        parser.error("--output and --dir take exactly one --python")
    for runtime in runtimes:
        if runtime in DEPRECATED_RUNTIMES:
            print(f"warning: python{runtime} is {DEPRECATED_RUNTIMES[runtime]}", file=sys.stderr)
    if args.dir is not None:
        build(runtimes, into=args.dir, extension=args.extension)
        return 0
    folder = args.output_dir or DIST
    outputs = {r: args.output if args.output else folder / layer_name(r, extension=args.extension)
               for r in runtimes}
    build(runtimes, outputs=outputs, extension=args.extension)
    return 0


if __name__ == "__main__":
    sys.exit(main())
