"""Every code block of README.md and docs/*.md runs as written, so the docs cannot rot.

A doc is one user session: its blocks run in order in one fresh temporary directory that
stands for the clone's root (links to the repository's files; what the blocks write stays
there). ```bash blocks run with ``bash -euo pipefail``; ```python blocks are written to a file
and run with the environment's python. An HTML comment on the line before a fence changes that:

- ``<!-- docs-test: skip — REASON -->``: not run (a GPU, a download, the suite itself); the
  reason is required and says where it does run, if anywhere;
- ``<!-- docs-test: excerpt PATH -->``: a verbatim excerpt of the repository file PATH (which
  its own test runs); checked to appear there, whole, at any one indentation;
- ``<!-- docs-test: file NAME -->``: written to NAME in the session directory, for a later
  block of the same doc to run (a script launched with ``torchrun``, a module for ``--import``);
- ``<!-- docs-test: warnings — REASON -->``: run, and the output may contain warnings
  (another library's own, which we cannot turn off); the reason is required.

Any other block is an error, as is a block in a language that cannot be run. The output of a
run block must have no warning line.

``uv run`` runs as written, in this project and with the environment that runs the tests
(``UV_PROJECT``, ``UV_PROJECT_ENVIRONMENT``) and without syncing it (``UV_NO_SYNC``): the test
command has just synced it, a sync here could only reinstall packages under the running suite,
and .ci/run checks separately that ``uv run`` leaves the synced environment as it is.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RUNNABLE = ("bash", "python")
BLOCK_TIMEOUT_S = 400
# Left out of a session's directory: outputs of other runs, and the project file (see session_dir)
NOT_LINKED = ("build", "dist", "uv.lock", "pyproject.toml")

FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[^`\s]*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<body>.*?)\s*-->\s*$")
# "skip — reason", "skip: reason" or "skip - reason"; the same for "warnings"
REASONED = re.compile(r"^(?P<kind>skip|warnings)\b\s*(?:[—:-]\s*(?P<reason>.*))?$")
KINDS = ("run", "warnings", "skip", "excerpt", "file")
WARNING_LINE = re.compile(r"warning|warn\(", re.IGNORECASE)
# Set by the test session itself (conftests, fixtures, torch.distributed, --import): a user's
# shell has none, and a doc that needs one must set it.
SESSION_ENV = re.compile(
    r"^(VLLM_|ROLL_INFER_|SGLANG_|MCORE_ADAPTER_|DS_ACCELERATOR$|TOKENIZERS_PARALLELISM$|MASTER_ADDR$|MASTER_PORT$"
    r"|RANK$|LOCAL_RANK$|WORLD_SIZE$|LOCAL_WORLD_SIZE$|PYTEST_)"
)


@dataclass
class Block:
    doc: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str  # dedented to the fence's indentation
    kind: str  # "run", "skip", "excerpt", "file", "warnings"
    arg: str = ""  # the reason, the excerpt's path or the file's name

    @property
    def where(self) -> str:
        return f"{_name(self.doc)}:{self.line}"


class DocError(Exception):
    pass


def _name(doc: Path) -> str:
    return str(doc.relative_to(REPO)) if doc.is_relative_to(REPO) else doc.name


def parse(doc: Path) -> list[Block]:
    """The fenced blocks of ``doc`` with their markers; a malformed marker is a DocError."""
    lines = doc.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        indent, start = fence["indent"], i
        end = next((j for j in range(i + 1, len(lines)) if re.match(rf"^{indent}```\s*$", lines[j])), None)
        if end is None:
            raise DocError(f"{_name(doc)}:{start + 1}: code block never closed")
        body = [
            line[len(indent) :] if line.startswith(indent) else line.lstrip() for line in lines[i + 1 : end]
        ]
        kind, arg = _marker(doc, start, lines[start - 1] if start else "")
        blocks.append(Block(doc, start + 1, fence["lang"], "\n".join(body) + "\n", kind, arg))
        i = end + 1
    return blocks


def _marker(doc: Path, fence: int, previous: str) -> tuple[str, str]:
    where = f"{_name(doc)}:{fence + 1}"
    match = MARKER.match(previous)
    if not match:
        if "docs-test" in previous:
            raise DocError(
                f"{where}: malformed marker {previous.strip()!r}; expected <!-- docs-test: ... -->"
            )
        return "run", ""
    body = match["body"]
    reasoned = REASONED.match(body)
    if reasoned:
        reason = (reasoned["reason"] or "").strip()
        if len(reason.split()) < 3:
            raise DocError(
                f"{where}: {reasoned['kind']!r} marker without a reason ({body!r}): say in a few words why, "
                f"and where it does run; write "
                f"<!-- docs-test: {reasoned['kind']} — why (and where it does run) -->"
            )
        return reasoned["kind"], reason
    kind, _, arg = body.partition(" ")
    if kind in ("excerpt", "file") and arg.strip():
        return kind, arg.strip()
    raise DocError(
        f"{where}: unknown marker {body!r}; expected 'skip — REASON', 'warnings — REASON', "
        "'excerpt PATH' or 'file NAME'"
    )


def check_static(blocks: list[Block]) -> list[str]:
    """What is wrong with the doc's blocks without running them: languages, excerpts, files."""
    problems = []
    for n, block in enumerate(blocks):
        if block.kind in ("run", "warnings") and block.lang not in RUNNABLE:
            problems.append(
                f"{block.where}: a ```{block.lang or '(no language)'} block cannot be run; make it "
                "```bash or ```python, or mark it (skip with a reason, excerpt, file)"
            )
        elif block.kind == "excerpt":
            source = REPO / block.arg
            if not source.is_file():
                problems.append(
                    f"{block.where}: excerpt of {block.arg}, which is not a file of the repository"
                )
            elif not is_excerpt(block.text, source.read_text()):
                problems.append(f"{block.where}: not a verbatim excerpt of {block.arg}")
        elif block.kind == "file":
            name = block.arg
            if Path(name).is_absolute() or ".." in Path(name).parts:
                problems.append(f"{block.where}: file {name!r} must be a relative name in the session")
            elif not any(
                name in later.text or Path(name).stem in later.text
                for later in blocks[n + 1 :]
                if later.kind in ("run", "warnings")
            ):
                problems.append(f"{block.where}: file {name!r} is written but no later block runs it")
    return problems


def is_excerpt(text: str, source: str) -> bool:
    """``text`` appears in ``source``, whole lines, at any one indentation."""
    lines = text.rstrip("\n").splitlines()
    indents = {line[: len(line) - len(line.lstrip())] for line in source.splitlines()}
    return any(
        "\n" + "\n".join(indent + line if line else line for line in lines) + "\n" in "\n" + source
        for indent in indents
    )


def session_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not SESSION_ENV.match(k)}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", "")])  # torchrun, mcore-adapter, python
    env["VIRTUAL_ENV"] = sys.prefix
    env["UV_PROJECT"] = str(REPO)
    env["UV_PROJECT_ENVIRONMENT"] = sys.prefix
    env["UV_NO_SYNC"] = "1"
    return env


def session_dir(tmp_path: Path) -> Path:
    """A fresh directory that looks like the clone's root: links to the repository's files.
    pyproject.toml is left out, so that ``uv`` can only find the project through UV_PROJECT."""
    work = tmp_path / "session"
    work.mkdir()
    for entry in REPO.iterdir():
        if not entry.name.startswith(".") and entry.name not in NOT_LINKED:
            (work / entry.name).symlink_to(entry)
    return work


def run_block(block: Block, work: Path, env: dict[str, str], timeout: float) -> tuple[str, float]:
    if block.lang == "bash":
        command = ["bash", "-euo", "pipefail", "-c", block.text]
    else:
        script = work / f"docs_block_{block.doc.stem.lower()}_{block.line}.py"
        script.write_text(block.text)
        command = [sys.executable, script.name]
    start = time.perf_counter()
    # its own process group: a block that hangs is stopped with every process it started
    process = subprocess.Popen(
        command,
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"{block.where}: still running after {timeout} s\n{_tail(output)}")
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        pytest.fail(f"{block.where}: exit status {process.returncode}\n{block.text}\n{_tail(output)}")
    return output, seconds


def _tail(output: str, lines: int = 60) -> str:
    return "\n".join(output.splitlines()[-lines:])


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_block_runs_or_is_marked(doc):
    """Fast: markers well formed, every unmarked block runnable, excerpts verbatim."""
    problems = check_static(parse(doc))
    assert not problems, "\n".join(problems)


def run_doc(doc: Path, tmp_path: Path, timeout: float = BLOCK_TIMEOUT_S) -> str:
    """Run ``doc``'s blocks as one session; a summary: the blocks by kind, the time of each run."""
    blocks = parse(doc)
    problems = check_static(blocks)
    assert not problems, "\n".join(problems)
    if any(b.kind in ("run", "warnings") and "uv " in b.text for b in blocks) and not shutil.which("uv"):
        pytest.fail(f"{doc.name} runs its commands with uv, which is not on PATH: install uv")
    work, env = session_dir(tmp_path), session_env()
    timings = []
    for block in blocks:
        if block.kind == "file":
            (work / block.arg).parent.mkdir(parents=True, exist_ok=True)
            (work / block.arg).write_text(block.text)
        if block.kind not in ("run", "warnings"):
            continue
        output, seconds = run_block(block, work, env, timeout)
        timings.append(f"{seconds:6.1f} s  {block.where}")
        warnings = [line for line in output.splitlines() if WARNING_LINE.search(line)]
        if block.kind == "run" and warnings:
            pytest.fail(f"{block.where}: warnings in the output:\n" + "\n".join(warnings[:20]))
    counts = {kind: sum(b.kind == kind for b in blocks) for kind in KINDS}
    return f"{_name(doc)}: {counts}\n" + "\n".join(timings)


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_doc_runs_as_written(doc, tmp_path):
    print("\n" + run_doc(doc, tmp_path))


# ---------------------------------------------------------------------- the checker itself
def _doc(tmp_path: Path, text: str) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    doc = tmp_path / "doc.md"
    doc.write_text(text)
    return doc


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<!-- docs-test: skip -->\n```bash\nnvidia-smi\n```\n", "'skip' marker without a reason"),
        ("<!-- docs-test: skip — GPU -->\n```bash\nnvidia-smi\n```\n", "'skip' marker without a reason"),
        ("<!-- docs-test: warnings -->\n```bash\ntrue\n```\n", "'warnings' marker without a reason"),
        ("<!-- docs-test: run it twice -->\n```bash\ntrue\n```\n", "unknown marker 'run it twice'"),
        ("<!-- docs-test skip — no colon here -->\n```bash\ntrue\n```\n", "malformed marker"),
        ("```bash\ntrue\n", "code block never closed"),
    ],
)
def test_a_marker_without_its_reason_or_form_is_refused(tmp_path, text, expected):
    with pytest.raises(DocError, match=re.escape(expected)):
        parse(_doc(tmp_path, text))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("```\nmcore-adapter convert A B\n```\n", "a ```(no language) block cannot be run"),
        ("```toml\n[project]\n```\n", "a ```toml block cannot be run"),
        (
            "<!-- docs-test: excerpt docs/examples/wrapped_lm/template.py -->\n```python\nregister_template(\n"
            '    "wrapped_lm",\n    config_hf_to_mca={...},\n```\n',
            "not a verbatim excerpt of docs/examples/wrapped_lm/template.py",
        ),
        (
            "<!-- docs-test: excerpt docs/nowhere.py -->\n```python\npass\n```\n",
            "excerpt of docs/nowhere.py, which is not a file of the repository",
        ),
        (
            "<!-- docs-test: file job.py -->\n```python\npass\n```\n",
            "file 'job.py' is written but no later block runs it",
        ),
        (
            "<!-- docs-test: file ../job.py -->\n```python\npass\n```\n",
            "must be a relative name in the session",
        ),
    ],
)
def test_a_block_that_cannot_run_is_refused(tmp_path, text, expected):
    problems = check_static(parse(_doc(tmp_path, text)))
    assert len(problems) == 1 and expected in problems[0], problems


def test_markers_excerpts_and_files_that_are_right_pass(tmp_path):
    text = (
        "<!-- docs-test: skip — needs a CUDA GPU (nccl) -->\n```bash\nnvidia-smi\n```\n"
        "  <!-- docs-test: excerpt docs/examples/wrapped_lm/template.py -->\n"
        '  ```python\n  RenameConverOp(".mlp.down_proj.weight", ".mlp.linear_fc2.weight"),\n  ```\n'
        "<!-- docs-test: file job.py -->\n```python\nprint(1)\n```\n"
        "<!-- docs-test: warnings: vLLM logs its own warnings -->\n```bash\npython job.py\n```\n"
    )
    blocks = parse(_doc(tmp_path, text))
    assert [(b.kind, b.arg) for b in blocks] == [
        ("skip", "needs a CUDA GPU (nccl)"),
        ("excerpt", "docs/examples/wrapped_lm/template.py"),
        ("file", "job.py"),
        ("warnings", "vLLM logs its own warnings"),
    ]
    assert blocks[1].text == 'RenameConverOp(".mlp.down_proj.weight", ".mlp.linear_fc2.weight"),\n'
    assert check_static(blocks) == []


def test_a_doc_is_one_session_and_its_blocks_must_succeed_quietly(tmp_path):
    session = (
        "```bash\necho 'made by an earlier block' > note.txt\n```\n"
        '```python\nprint(open("note.txt").read())\n```\n'
    )
    summary = run_doc(_doc(tmp_path / "a", session), tmp_path / "a")
    assert "'run': 2" in summary

    failing = {
        "an error midway": "```bash\nfalse\necho never\n```\n",
        "an unset variable": '```bash\necho "$NOT_SET_ANYWHERE"\n```\n',
        "a failing pipe": "```bash\nfalse | cat\n```\n",
        "a python error": "```python\nraise SystemExit(3)\n```\n",
        "a warning": '```python\nimport warnings\nwarnings.warn("deprecated")\n```\n',
    }
    for case, text in failing.items():
        work = tmp_path / case.replace(" ", "_")
        with pytest.raises(pytest.fail.Exception, match="exit status|warnings in the output"):
            run_doc(_doc(work, text), work)
    allowed = "<!-- docs-test: warnings — another library warns -->\n" + failing["a warning"]
    run_doc(_doc(tmp_path / "allowed", allowed), tmp_path / "allowed")


def test_a_block_that_hangs_is_stopped_with_the_processes_it_started(tmp_path):
    hangs = "```bash\nsleep 300 &\necho $! > child.pid\nsleep 300\n```\n"
    start = time.perf_counter()
    with pytest.raises(pytest.fail.Exception, match="still running after 2 s"):
        run_doc(_doc(tmp_path, hangs), tmp_path, timeout=2)
    assert time.perf_counter() - start < 30
    child = Path("/proc", (tmp_path / "session" / "child.pid").read_text().strip(), "stat")
    for _ in range(50):  # the kill is delivered at once; a zombie (state Z) no longer runs
        if not child.exists() or child.read_text().rpartition(")")[2].split()[0] == "Z":
            break
        time.sleep(0.1)
    else:
        pytest.fail("the block's background process survived it")
