"""Error types with their exit codes and a remedy line.

The CLI catches :class:`DeploykitError`, prints ``error: <what> — <how to fix>``
and exits with ``exit_code``; only ``--debug`` shows a traceback.

Exit codes (also in the README):
    0 success · 1 verification failed · 2 bad usage or bad input ·
    3 missing dependency · 4 conversion failed · 5 internal error (a bug: please report it) ·
    130 interrupted (Ctrl-C) · 143 terminated (SIGTERM)
"""
from __future__ import annotations

import enum
import errno
from typing import Optional

EXIT_VERIFY_FAILED = 1
EXIT_USAGE = 2
EXIT_MISSING_DEPENDENCY = 3
EXIT_CONVERSION_FAILED = 4
EXIT_UNVERIFIED = 6            # export --keep-unverified kept an artifact whose parity proves nothing


class Outcome(str, enum.Enum):
    """What happened to one hop of a route (executorch's test-suite style): shown in the route
    table and recorded in the manifest, so a failed route says which step broke."""

    OK = "OK"
    CONVERT_FAILED = "CONVERT_FAILED"              # the converter raised, crashed or timed out
    ARTIFACT_LOAD_FAILED = "ARTIFACT_LOAD_FAILED"  # it wrote a file that the runtime cannot load
    ARTIFACT_RUN_FAILED = "ARTIFACT_RUN_FAILED"    # the file loads but running it fails or crashes
    MISMATCH = "MISMATCH"                          # it runs, and computes something else
    MISSING_DEPENDENCY = "MISSING_DEPENDENCY"      # a package this hop needs is not installed


class DeploykitError(Exception):
    """Base error: a one-line message plus a remedy, mapped to an exit code."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, remedy: str = "", details: "dict | None" = None,
                 outcome: Optional[Outcome] = None, report=None) -> None:
        super().__init__(message)
        self.message = message
        self.remedy = remedy
        self.details = details or {}     # e.g. {"parity": {...}} of the check that failed
        self.outcome = outcome           # set where the error ends a route's hop
        self.report = report             # the ParityReport behind details["parity"], as an object (not in JSON)

    def one_line(self) -> str:
        text = f"error: {self.message}"
        if self.remedy:
            text += f" — {self.remedy}"
        return " ".join(text.split())

    def to_dict(self) -> dict:
        return {
            "error": type(self).__name__,
            "message": self.message,
            "remedy": self.remedy,
            "exit_code": self.exit_code,
            **({"outcome": self.outcome.value} if self.outcome else {}),
            **{key: self.details[key] for key in JSON_DETAILS if self.details.get(key)},
        }


# Details that are plain lists a script reads (``--json``): what the ONNX preparation did before a converter
# failed, and the integer inputs that steer the graph (name, dtype, what they feed, the value the user fed).
JSON_DETAILS = ("prep_notes", "steering_inputs")


class UsageError(DeploykitError):
    """Bad command-line usage or a bad argument value."""

    exit_code = EXIT_USAGE


class ModelLoadError(DeploykitError):
    """The model file is empty, truncated, corrupt or of an unknown format."""

    exit_code = EXIT_USAGE


class UnsupportedModelError(DeploykitError):
    """The file is valid but this kind of model cannot be handled."""

    exit_code = EXIT_USAGE


class OutputExistsError(DeploykitError):
    """An output file exists and --force was not given."""

    exit_code = EXIT_USAGE


class MissingDependency(DeploykitError):
    """An optional package that this step needs is not installed."""

    exit_code = EXIT_MISSING_DEPENDENCY

    @classmethod
    def for_package(cls, package: str, extra: str, why: str = "") -> "MissingDependency":
        what = f"{package} is not installed"
        if why:
            what += f" ({why})"
        return cls(what, f"install it with: pip install 'deploykit[{extra}]' -c constraints.txt")


class ToolOutputError(MissingDependency):
    """A tool deploykit reads (TFLite's model analyzer, ONNX Runtime's mobile checker, ExecuTorch's op lister)
    printed or returned something its parser does not know: the installed version differs from the one the parser
    was written against. Never a silent empty table: exit 3, naming the tool and its version."""

    @classmethod
    def changed(cls, tool: str, version: str, what: str) -> "ToolOutputError":
        return cls(f"{tool} {version} printed output deploykit cannot read ({what})",
                   "install the version constraints.txt pins, or report the new format with --debug output")


class ConversionError(DeploykitError):
    """A converter failed or produced an artifact that does not match."""

    exit_code = EXIT_CONVERSION_FAILED


class ParityError(DeploykitError):
    """Verification ran and the artifact does not compute the same thing."""

    exit_code = EXIT_VERIFY_FAILED


class MeasurementError(DeploykitError):
    """A benchmark case could not be measured (its process failed, crashed or timed out)."""

    exit_code = EXIT_VERIFY_FAILED


class ResourceError(DeploykitError):
    """The machine ran out of something the work needs (disk space, the file-size limit, memory): not a bad
    conversion, and no other --opset or route will help."""

    exit_code = EXIT_USAGE


# How running out shows in the text of an error from a tool that lost the errno (LLVM, protobuf, C++ allocators).
_EXHAUSTION_SIGNS = {"no space left on device": "no space left on device", "disk quota exceeded": "disk quota exceeded",
                     "file too large": "the file-size limit was reached (File too large)",
                     "cannot allocate memory": "out of memory", "std::bad_alloc": "out of memory",
                     "memoryerror": "out of memory"}
_EXHAUSTION_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                      errno.EFBIG: "the file-size limit was reached (File too large)", errno.ENOMEM: "out of memory"}


def exhaustion(failure: "BaseException | str | None", where: str = "") -> Optional[ResourceError]:
    """A ResourceError when ``failure`` (an exception, its cause chain, or a tool's output) shows that the
    machine ran out of disk, file size or memory; else None."""
    what = _exhausted(failure)
    if what is None:
        return None
    filename = getattr(failure, "filename", None)
    where = where or (f"writing {filename}" if filename else "")
    memory = what == "out of memory"
    remedy = ("free memory, or give smaller --input shapes or fewer --samples" if memory
              else "free space on that file system, raise `ulimit -f`, or write elsewhere with -o")
    return ResourceError(f"{where + ': ' if where else ''}{what}", remedy)


def _exhausted(failure) -> Optional[str]:
    seen = set()
    while isinstance(failure, BaseException) and id(failure) not in seen:
        seen.add(id(failure))
        if isinstance(failure, MemoryError):
            return "out of memory"
        if isinstance(failure, OSError) and failure.errno in _EXHAUSTION_ERRNOS:
            return _EXHAUSTION_ERRNOS[failure.errno]
        text = str(failure).lower()
        found = next((said for sign, said in _EXHAUSTION_SIGNS.items() if sign in text), None)
        if found:
            return found
        failure = failure.__cause__ or failure.__context__
    if isinstance(failure, str):
        text = failure.lower()
        return next((said for sign, said in _EXHAUSTION_SIGNS.items() if sign in text), None)
    return None


def from_dict(data: dict) -> DeploykitError:
    """Rebuild an error that crossed a process boundary as the class it was raised as."""
    classes = {cls.__name__: cls for cls in _all_subclasses(DeploykitError)}
    cls = classes.get(data.get("error"), DeploykitError)
    outcome = data.get("outcome")
    return cls(data.get("message", "?"), data.get("remedy", ""), data.get("details") or {},
               Outcome(outcome) if outcome in Outcome.__members__ else None)


def _all_subclasses(cls) -> list:
    found = [cls]
    for sub in cls.__subclasses__():
        found += _all_subclasses(sub)
    return found
