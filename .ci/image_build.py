#!/usr/bin/env python3
"""Proves the image's build without a Docker daemon.

Everything is read from the Dockerfile, so this check follows it when it changes:

1. the builder stage's COPY lines are carried out into a scratch folder, taking from the build context
   only what `.dockerignore` lets through, as `docker build .` would;
2. the builder stage's RUN line with the cargo build is run there unchanged (`cargo build ... && cp
   ...`); its cache mounts inside the work folder become links to a kept folder, the analogue of
   BuildKit's cache; the `cp` into the image's folders lands in the scratch folder instead;
3. the binary the final stage copies out of the builder is started with the final stage's ENV and
   USER, in sandbox mode on free loopback ports, and asked for its health with the final stage's
   HEALTHCHECK command, which must report SERVING; then it is stopped with SIGTERM, as an
   orchestrator stops it, and must exit 0 within its shutdown grace.

Usage: python3 .ci/image_build.py [--dockerfile Dockerfile] [--cache DIR [--cache-limit-gib N]] [--keep]
The cache folder defaults to the workspace's target folder ($CARGO_TARGET_DIR or ./target): compiled
dependencies of an earlier release build there are reused, as BuildKit reuses its cache mount. With
--cache-limit-gib, a cache folder grown past N GiB is emptied first. Runs sharing a cache folder take
turns (a lock on the folder that holds it).
"""

from __future__ import annotations

import argparse
import fcntl
import glob
import json
import os
import posixpath
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class CheckFailed(Exception):
    """A step of the check failed; the message says which and why."""


def fail(message: str) -> None:
    raise CheckFailed(message)


def say(message: str) -> None:
    print(f"image-build: {message}", flush=True)


# --- The Dockerfile -------------------------------------------------------------------------------


@dataclass
class Instruction:
    line: int
    keyword: str
    args: str


@dataclass
class Stage:
    name: str | None
    base: str
    instructions: list[Instruction] = field(default_factory=list)


def read_dockerfile(path: Path) -> list[Stage]:
    """Splits the Dockerfile into stages of instructions, with continuation lines joined and comment
    lines dropped (also inside a continued instruction), as Docker's parser does."""
    stages: list[Stage] = []
    pending = ""
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if not pending:
            start = number
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        text = (pending + raw).strip()
        pending = ""
        keyword, _, args = text.partition(" ")
        instruction = Instruction(start, keyword.upper(), args.strip())
        if instruction.keyword == "FROM":
            words = instruction.args.split()
            words = [w for w in words if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else None
            stages.append(Stage(name, words[0]))
        elif not stages:
            if instruction.keyword != "ARG":
                fail(f"{path}:{start}: {instruction.keyword} before the first FROM")
        else:
            stages[-1].instructions.append(instruction)
    if pending:
        fail(f"{path}: the last instruction ends with a line continuation")
    if not stages:
        fail(f"{path}: no FROM")
    return stages


def split_flags(args: str) -> tuple[dict[str, list[str]], str]:
    """`--flag=value ... rest` -> ({flag: [values]}, rest)."""
    flags: dict[str, list[str]] = {}
    rest = args
    while rest.startswith("--"):
        word, _, rest = rest.partition(" ")
        name, _, value = word[2:].partition("=")
        flags.setdefault(name, []).append(value)
        rest = rest.lstrip()
    return flags, rest


def words_of(args: str) -> list[str]:
    """The words of an instruction in exec (JSON) or shell form."""
    if args.startswith("["):
        try:
            return [str(word) for word in json.loads(args)]
        except json.JSONDecodeError as error:
            fail(f"not a JSON array: {args} ({error})")
    return shlex.split(args)


def stage_named(stages: list[Stage], name: str) -> Stage:
    for index, stage in enumerate(stages):
        if stage.name == name or str(index) == name:
            return stage
    fail(f"no stage named {name!r}")
    raise AssertionError


# --- .dockerignore, with the semantics of Docker's pattern matcher ---------------------------------


@dataclass
class IgnorePattern:
    regex: re.Pattern[str]
    exclusion: bool  # a `!` line: lets matching paths through again
    literal_prefix: str


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Docker's rules: `**` spans any number of folders (none too), `*` and `?` stay within one,
    `[...]` is a class, and the whole path must match."""
    out = "^"
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
            out += ".*" if i >= len(pattern) else "(.*/)?"
            continue
        if ch == "*":
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch in "[]":
            out += ch
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(out + "$")


def read_dockerignore(context: Path) -> list[IgnorePattern]:
    path = context / ".dockerignore"
    if not path.exists():
        return []
    patterns = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclusion = line.startswith("!")
        if exclusion:
            line = line[1:].strip()
        line = posixpath.normpath(line).lstrip("/")
        if line == ".":
            continue
        literal = re.split(r"[*?\[\\]", line, maxsplit=1)[0]
        patterns.append(IgnorePattern(compile_pattern(line), exclusion, literal))
    return patterns


def ignored(relative: str, patterns: list[IgnorePattern]) -> bool:
    """Whether Docker leaves `relative` (a path in the context) out: the last pattern that matches
    the path or one of its parent folders decides."""
    parents = relative.split("/")[:-1]
    matched = False
    for pattern in patterns:
        if pattern.exclusion != matched:
            continue
        hit = bool(pattern.regex.match(relative)) or any(
            pattern.regex.match("/".join(parents[: i + 1])) for i in range(len(parents))
        )
        if hit:
            matched = not pattern.exclusion
    return matched


def may_hold_sent_files(relative: str, patterns: list[IgnorePattern]) -> bool:
    """Whether an ignored folder may still hold a file that a `!` line lets through."""
    return any(
        p.exclusion and (p.literal_prefix.startswith(relative + "/") or p.literal_prefix == "")
        for p in patterns
    )


# --- Carrying out the builder stage ----------------------------------------------------------------


def copy_from_context(
    context: Path,
    patterns: list[IgnorePattern],
    sources: list[str],
    destination: str,
    workdir: str,
    scratch: Path,
) -> int:
    """One `COPY <src>... <dest>`; returns how many files were copied."""
    target_abs = posixpath.normpath(posixpath.join(workdir, destination))
    if target_abs != workdir and not target_abs.startswith(workdir.rstrip("/") + "/"):
        fail(
            f"COPY to {destination} lands outside the work folder {workdir}; "
            "teach .ci/image_build.py where it goes"
        )
    target = scratch / posixpath.relpath(target_abs, workdir)
    into_folder = destination.endswith("/") or len(sources) > 1
    copied = 0
    for source in sources:
        matches = sorted(glob.glob(source, root_dir=context)) if glob.has_magic(source) else [source]
        matches = [m for m in matches if (context / m).exists()]
        matches = [m for m in matches if not ignored(posixpath.normpath(m), patterns)]
        if not matches:
            fail(f"COPY {source}: not in the build context (missing, or left out by .dockerignore)")
        for match in matches:
            relative = posixpath.normpath(match)
            path = context / relative
            if path.is_dir():
                copied += copy_folder(context, patterns, relative, target)
            else:
                dest = target / path.name if into_folder else target
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dest)
                copied += 1
    return copied


def copy_folder(context: Path, patterns: list[IgnorePattern], relative: str, target: Path) -> int:
    """A folder's contents go into the destination folder, minus what .dockerignore leaves out."""
    copied = 0
    root = context / relative
    for folder, subfolders, files in os.walk(root):
        folder_rel = posixpath.relpath(Path(folder).as_posix(), context.as_posix())
        kept = []
        for sub in sorted(subfolders):
            sub_rel = f"{folder_rel}/{sub}"
            if ignored(sub_rel, patterns) and not may_hold_sent_files(sub_rel, patterns):
                continue
            kept.append(sub)
        subfolders[:] = kept
        for name in sorted(files):
            file_rel = f"{folder_rel}/{name}"
            if ignored(file_rel, patterns):
                continue
            dest = target / posixpath.relpath(file_rel, relative)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(context / file_rel, dest, follow_symlinks=False)
            copied += 1
    return copied


def build_environment() -> dict[str, str]:
    env = dict(os.environ)
    # The RUN line uses the default target folder (a cache mount in the image); a target folder set
    # for the caller's own builds would send the output elsewhere.
    for name in ("CARGO_TARGET_DIR", "CARGO_BUILD_TARGET_DIR"):
        env.pop(name, None)
    return env


def run_build(stage: Stage, workdir: str, scratch: Path, cache: Path, staged: Path) -> dict[str, Path]:
    """Runs the RUN line that builds with cargo; returns where each file it put into the image's
    folders is now (image path -> local path)."""
    builds = [i for i in stage.instructions if i.keyword == "RUN" and re.search(r"\bcargo\b", i.args)]
    if len(builds) != 1:
        fail(f"expected one RUN with cargo in the builder stage, found {len(builds)}")
    run = builds[0]
    flags, command = split_flags(run.args)
    for mount in flags.get("mount", []):
        options = dict(part.partition("=")[::2] for part in mount.split(","))
        mount_target = posixpath.normpath(options.get("target", ""))
        if options.get("type") != "cache":
            fail(
                f"Dockerfile:{run.line}: a {options.get('type')} mount; only cache mounts are understood here"
            )
        if mount_target.startswith(workdir.rstrip("/") + "/"):
            relative = posixpath.relpath(mount_target, workdir)
            # The target folder's cache is the cache folder itself (a workspace's target folder, where
            # an earlier release build may be); any other cache mount gets a folder inside it.
            kept = cache if relative == "target" else cache / relative
            kept.mkdir(parents=True, exist_ok=True)
            (scratch / relative).parent.mkdir(parents=True, exist_ok=True)
            (scratch / relative).symlink_to(kept.resolve(), target_is_directory=True)
            say(f"cache mount {mount_target} -> {kept}")
        else:
            say(f"cache mount {mount_target}: the machine's own (cargo's registry)")
    words = shlex.split(command)
    commands: list[list[str]] = [[]]
    for word in words:
        if word == "&&":
            commands.append([])
        else:
            commands[-1].append(word)
    # Every command is understood before the first one runs: a long build is not wasted on a line
    # this check cannot finish.
    for argv in commands:
        if not argv:
            fail(f"Dockerfile:{run.line}: an empty command in the RUN line")
        if argv[0] != "cargo" and not (argv[0] == "cp" and len(argv) == 3 and not argv[1].startswith("-")):
            fail(
                f"Dockerfile:{run.line}: `{shlex.join(argv)}` in the build's RUN line; "
                ".ci/image_build.py runs only `cargo ...` and `cp SRC DEST` there"
            )
    produced: dict[str, Path] = {}
    env = build_environment()
    for argv in commands:
        if argv[0] == "cargo":
            say(f"$ {shlex.join(argv)}  (in {scratch})")
            started = time.monotonic()
            result = subprocess.run(argv, cwd=scratch, env=env)
            say(f"cargo finished in {time.monotonic() - started:.0f} s with exit code {result.returncode}")
            if result.returncode != 0:
                fail(
                    f"Dockerfile:{run.line}: `{shlex.join(argv)}` failed (exit {result.returncode}) "
                    "on the files the COPY lines copy"
                )
        else:
            source = scratch / argv[1]
            if not source.is_file():
                fail(f"Dockerfile:{run.line}: `cp {argv[1]} ...`: the build made no {argv[1]}")
            local = staged / posixpath.basename(argv[2])
            shutil.copy2(source, local)
            produced[argv[2]] = local
    return produced


def carry_out_builder(
    stage: Stage, context: Path, scratch: Path, cache: Path, staged: Path
) -> dict[str, Path]:
    patterns = read_dockerignore(context)
    workdir = "/"
    for instruction in stage.instructions:
        if instruction.keyword == "WORKDIR":
            workdir = posixpath.normpath(posixpath.join(workdir, instruction.args))
        elif instruction.keyword in ("COPY", "ADD"):
            flags, rest = split_flags(instruction.args)
            if instruction.keyword == "ADD" or set(flags) - {"chown", "chmod", "link"}:
                fail(
                    f"Dockerfile:{instruction.line}: {instruction.keyword} {instruction.args}: "
                    "only plain COPY from the context is understood here"
                )
            words = words_of(rest)
            if len(words) < 2:
                fail(f"Dockerfile:{instruction.line}: COPY needs a source and a destination")
            count = copy_from_context(context, patterns, words[:-1], words[-1], workdir, scratch)
            say(f"COPY {' '.join(words)}: {count} files")
        elif instruction.keyword == "RUN" and not re.search(r"\bcargo\b", instruction.args):
            # System packages for the build (make, for jemalloc); CI's machine has its own.
            say(f"not run here (system packages): RUN {instruction.args[:70]}...")
    return run_build(stage, workdir, scratch, cache, staged)


# --- Running the image's binary --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def image_settings(stage: Stage) -> tuple[dict[str, str], str | None, list[str], list[str]]:
    """The final stage's ENV, USER, ENTRYPOINT and HEALTHCHECK command."""
    env: dict[str, str] = {}
    user = None
    entrypoint: list[str] = []
    healthcheck: list[str] = []
    for instruction in stage.instructions:
        if instruction.keyword == "ENV":
            for word in shlex.split(instruction.args):
                name, equals, value = word.partition("=")
                if not equals:
                    fail(f"Dockerfile:{instruction.line}: ENV in the `ENV name value` form; write name=value")
                env[name] = value
        elif instruction.keyword == "USER":
            user = instruction.args.strip()
        elif instruction.keyword == "ENTRYPOINT":
            entrypoint = words_of(instruction.args)
        elif instruction.keyword == "HEALTHCHECK":
            _, rest = split_flags(instruction.args)
            keyword, _, command = rest.partition(" ")
            if keyword.upper() != "CMD":
                fail(f"Dockerfile:{instruction.line}: HEALTHCHECK without CMD")
            healthcheck = words_of(command.strip())
    if not entrypoint:
        fail("the final stage has no ENTRYPOINT")
    if not healthcheck:
        fail("the final stage has no HEALTHCHECK")
    return env, user, entrypoint, healthcheck


def as_image_user(user: str | None) -> list[str]:
    """Runs the binary as the image's USER when this machine lets us (CI runs as root)."""
    if user is None or os.geteuid() != 0 or shutil.which("setpriv") is None:
        return []
    uid, _, gid = user.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        fail(f"USER {user}: give a numeric uid (Kubernetes' runAsNonRoot needs one)")
    return ["setpriv", f"--reuid={uid}", f"--regid={gid or uid}", "--clear-groups", "--"]


def prove_binary(final: Stage, produced: dict[str, Path], run_dir: Path) -> None:
    env_image, user, entrypoint, healthcheck = image_settings(final)
    copies = [i for i in final.instructions if i.keyword == "COPY" and "--from=" in i.args]
    binaries: dict[str, Path] = {}
    for instruction in copies:
        _, rest = split_flags(instruction.args)
        words = words_of(rest)
        if len(words) != 2:
            fail(
                f"Dockerfile:{instruction.line}: COPY --from with {len(words) - 1} sources; expected one file"
            )
        source, destination = words
        if source not in produced:
            fail(
                f"Dockerfile:{instruction.line}: the final stage copies {source}, "
                "which the build's RUN line did not make"
            )
        binaries[destination] = produced[source]
    if entrypoint[0] not in binaries:
        fail(f"ENTRYPOINT {entrypoint[0]} is not a file the final stage copies from the builder")

    # The image's folders: the binary and a data folder writable by the image's user only.
    binary = run_dir / "bin" / Path(entrypoint[0]).name
    binary.parent.mkdir(parents=True)
    shutil.copy2(binaries[entrypoint[0]], binary)
    binary.chmod(0o755)
    data = run_dir / "data"
    data.mkdir()
    prefix = as_image_user(user)
    if prefix:
        uid, _, gid = user.partition(":")
        os.chown(data, int(uid), int(gid or uid))
        for folder in (run_dir, run_dir.parent):
            folder.chmod(0o755)
        say(f"running as the image's USER {user}")

    port = free_port()
    # A container sees the image's ENV and nothing of this machine's environment.
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    env.update(env_image)
    env.update(
        {
            # Loopback, since the sandbox's public development key is offered only there; the data
            # folder stands in for the image's.
            "ONBOARDING_LISTEN": f"127.0.0.1:{port}",
            "ONBOARDING_DATABASE": str(
                data / Path(env_image.get("ONBOARDING_DATABASE", "onboarding.sqlite3")).name
            ),
            "ONBOARDING_PROBE_ADDRESS": f"http://127.0.0.1:{port}",
            "ONBOARDING_SANDBOX_TEST_LISTEN": "127.0.0.1:0",
            "ONBOARDING_SANDBOX_PRODUCTION_LISTEN": "127.0.0.1:0",
        }
    )
    grace_ms = int(env.get("ONBOARDING_SHUTDOWN_GRACE_MS", "10000"))
    log_path = run_dir / "service.log"
    # As `docker run IMAGE --sandbox`: the arguments after the image follow the ENTRYPOINT.
    server_argv = prefix + [str(binary)] + entrypoint[1:] + ["--sandbox"]
    probe_argv = prefix + [str(binary)] + healthcheck[1:] if healthcheck[0] == entrypoint[0] else None
    if probe_argv is None:
        fail(f"HEALTHCHECK runs {healthcheck[0]}, not the image's binary; teach .ci/image_build.py to run it")

    say(f"$ {shlex.join(server_argv)}  (sandbox, gRPC on 127.0.0.1:{port}, log {log_path})")
    with open(log_path, "wb") as log:
        server = subprocess.Popen(server_argv, cwd=data, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        answer = None
        while time.monotonic() < deadline:
            if server.poll() is not None:
                fail(f"the service exited with code {server.returncode} before it was healthy")
            answer = subprocess.run(probe_argv, cwd=data, env=env, capture_output=True, text=True)
            if answer.returncode == 0:
                break
            time.sleep(0.5)
        else:
            detail = (answer.stdout + answer.stderr).strip() if answer else ""
            fail(f"`{shlex.join(healthcheck)}` did not report SERVING within 60 s: {detail}")
        say(f"HEALTHCHECK `{shlex.join(healthcheck)}` -> SERVING")

        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=grace_ms / 1000 + 10)
        except subprocess.TimeoutExpired:
            fail(f"the service did not stop within {grace_ms} ms of shutdown grace and 10 s after SIGTERM")
        if code != 0:
            fail(f"the service exited with code {code} after SIGTERM; a graceful stop exits 0")
        say(f"SIGTERM -> exited 0 in {time.monotonic() - started:.1f} s")
    except CheckFailed:
        print(f"--- the service's log ({log_path}), last lines:", file=sys.stderr)
        lines = log_path.read_text(errors="replace").splitlines()
        print("\n".join(lines[-40:]), file=sys.stderr)
        raise
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dockerfile", default=str(REPO / "Dockerfile"))
    parser.add_argument("--cache", default=os.environ.get("CARGO_TARGET_DIR") or str(REPO / "target"))
    parser.add_argument(
        "--cache-limit-gib", type=float, help="empty the cache folder first when it holds more than this"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder, and say where")
    options = parser.parse_args()

    dockerfile = Path(options.dockerfile).resolve()
    context = dockerfile.parent
    cache = Path(options.cache).resolve()
    cache.parent.mkdir(parents=True, exist_ok=True)
    # Cargo would make a second run wait for the target folder anyway; the lock (on the folder that
    # holds the cache, so that it creates no file) also keeps the emptying below away from a build in
    # progress. It is held until the process ends.
    lock = os.open(cache.parent, os.O_RDONLY)
    fcntl.flock(lock, fcntl.LOCK_EX)
    if options.cache_limit_gib is not None and cache.is_dir():
        size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file() and not f.is_symlink())
        if size > options.cache_limit_gib * 2**30:
            say(
                f"the cache folder holds {size / 2**30:.1f} GiB, more than {options.cache_limit_gib}: emptied"
            )
            shutil.rmtree(cache)
    work = Path(tempfile.mkdtemp(prefix="image-build-"))
    started = time.monotonic()
    try:
        stages = read_dockerfile(dockerfile)
        final = stages[-1]
        froms = {
            split_flags(i.args)[0]["from"][0]
            for i in final.instructions
            if i.keyword == "COPY" and "--from=" in i.args
        }
        if len(froms) != 1:
            fail(f"the final stage copies from {len(froms)} stages; expected one builder stage")
        builder = stage_named(stages, froms.pop())
        rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
        say(f"builder stage {builder.name!r} ({builder.base}); this machine: {rustc}")
        scratch = work / "build"
        scratch.mkdir()
        staged = work / "image"
        staged.mkdir()
        produced = carry_out_builder(builder, context, scratch, cache, staged)
        run_dir = work / "run"
        run_dir.mkdir()
        prove_binary(final, produced, run_dir)
    except CheckFailed as error:
        print(f"image-build: FAILED: {error}", file=sys.stderr)
        print(f"image-build: the scratch folder is kept for a look: {work}", file=sys.stderr)
        return 1
    say(f"passed in {time.monotonic() - started:.0f} s")
    if options.keep:
        say(f"scratch folder kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
