"""Checks that keep an untrusted OpenDSS model from running programs or touching files outside its folder.

A .dss file is a script for the OpenDSS engine, and some of its commands write files (`Export`, `Save`,
`Show`, `Plot`, `Dump`, a monitor's `action=save`), read files anywhere (`Redirect /any/file`, `csvfile=`),
or launch programs (`Set Editor=...` with `Show` or `FileEdit`). Before gridedge compiles a model it
reads the script the way OpenDSS's parser does and refuses it, with a `FeederError` naming the file and
line, unless every command is one that builds, solves or queries the circuit (`ALLOWED_COMMANDS`), every
`Set` option is one of `ALLOWED_OPTIONS`, every path it names lies inside the master file's folder, and
no element property asks to save a file. `Redirect`ed files are checked the same way before they run;
a nested `Compile` is allowed only of a file in the folder of the file that compiles it (OpenDSS keeps
that folder for the lines after it). The engine's editor hook is always off (`secure_engine`), so even a
trusted model's `Show` writes its report without starting a program.

Command and option names are resolved with the engine's own lists and rules (an exact name, otherwise
the first name in the engine's order that starts with what was written), so `exp` is `Export` here as it
is for OpenDSS.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from gridedge_env.network.model import FeederError

# commands that build, solve or query the circuit; Redirect, Compile, Buscoords and LatLongCoords take a
# path, which must lie inside the model's folder
ALLOWED_COMMANDS = frozenset(
    name.lower()
    for name in (
        "New",
        "Edit",
        "More",
        "M",
        "~",
        "Select",
        "Solve",
        "Enable",
        "Disable",
        "Reset",
        "Compile",
        "Set",
        "Open",
        "Close",
        "//",
        "Redirect",
        "Help",
        "?",
        "Next",
        "Sample",
        "Clear",
        "Calcvoltagebases",
        "SetkVBase",
        "BuildY",
        "Get",
        "Init",
        "Voltages",
        "Currents",
        "Powers",
        "Seqvoltages",
        "Seqcurrents",
        "Seqpowers",
        "Losses",
        "Phaselosses",
        "Cktlosses",
        "Allocateloads",
        "Totals",
        "Capacity",
        "Classes",
        "Userclasses",
        "Zsc",
        "Zsc10",
        "ZscRefresh",
        "Ysc",
        "puvoltages",
        "VarValues",
        "Varnames",
        "Buscoords",
        "MakeBusList",
        "MakePosSeq",
        "Reduce",
        "Interpolate",
        "Rotate",
        "Summary",
        "_InitSnap",
        "_SolveNoControl",
        "_SampleControls",
        "_DoControlActions",
        "_SolveDirect",
        "_SolvePFlow",
        "SetLoadAndGenKV",
        "NodeDiff",
        "SetBusXY",
        "UpdateStorage",
        "LatLongCoords",
        "BatchEdit",
        "ReprocessBuses",
        "Cleanup",
        "FinishTimeStep",
        "NodeList",
        "Remove",
        "Zsc012",
        "AllPCEatBus",
        "AllPDEatBus",
        "TotalPowers",
    )
)
_PATH_COMMANDS = frozenset({"redirect", "compile", "buscoords", "latlongcoords"})

# `Set` options that configure the circuit and its solution; the others name files, folders, programs,
# logs or reports (Editor, DataPath, DemandInterval, Log, Recorder, TraceControl, ...)
ALLOWED_OPTIONS = frozenset(
    name.lower()
    for name in (
        "type",
        "element",
        "hour",
        "sec",
        "year",
        "frequency",
        "stepsize",
        "mode",
        "random",
        "number",
        "time",
        "class",
        "object",
        "circuit",
        "tolerance",
        "maxiterations",
        "h",
        "loadmodel",
        "loadmult",
        "normvminpu",
        "normvmaxpu",
        "emergvminpu",
        "emergvmaxpu",
        "%mean",
        "%stddev",
        "ldcurve",
        "%growth",
        "genkw",
        "genpf",
        "capkvar",
        "addtype",
        "allowduplicates",
        "zonelock",
        "ueweight",
        "lossweight",
        "ueregs",
        "lossregs",
        "voltagebases",
        "algorithm",
        "trapezoidal",
        "autobuslist",
        "controlmode",
        "genmult",
        "defaultdaily",
        "defaultyearly",
        "allocationfactors",
        "cktmodel",
        "pricesignal",
        "pricecurve",
        "terminal",
        "basefrequency",
        "harmonics",
        "maxcontroliter",
        "bus",
        "keeplist",
        "reduceoption",
        "%normal",
        "markercode",
        "nodewidth",
        "cfactors",
        "numallociterations",
        "defaultbasefrequency",
        "markswitches",
        "switchmarkercode",
        "daisysize",
        "marktransformers",
        "transmarkercode",
        "transmarkersize",
        "loadshapeclass",
        "earthmodel",
        "markcapacitors",
        "markregulators",
        "markpvsystems",
        "markstorage",
        "capmarkercode",
        "regmarkercode",
        "pvmarkercode",
        "storemarkercode",
        "capmarkersize",
        "regmarkersize",
        "pvmarkersize",
        "storemarkersize",
        "neglectloady",
        "markfuses",
        "fusemarkercode",
        "fusemarkersize",
        "markreclosers",
        "reclosermarkercode",
        "reclosermarkersize",
        "markrelays",
        "relaymarkercode",
        "relaymarkersize",
        "sampleenergymeters",
        "miniterations",
        "keepload",
        "zmag",
        "seasonrating",
        "seasonsignal",
        "linetypes",
        "longlinecorrection",
    )
)

# element properties that name a file to read (abbreviations included: any prefix of these names)
_FILE_PROPERTIES = ("csvfile", "sngfile", "dblfile", "pqcsvfile", "file")
# `action=` values that write files: a monitor's or energy meter's Save, a meter's ZoneDump, a shape's
# DblSave/SngSave (OpenDSS reads only the first letter)
_WRITING_ACTIONS = ("s", "d", "z")
_ACTION_CLASSES = frozenset({"loadshape", "tshape", "priceshape", "monitor", "energymeter"})

_QUOTES = {'"': '"', "'": "'", "(": ")", "[": "]", "{": "}"}
_NAME_VALUE = re.compile(r"""([A-Za-z_%][\w%.]*)\s*=\s*("[^"]*"|'[^']*'|[^\s,()\[\]{}"']*)""")
_WORDS = re.compile(r"""[^\s,=()\[\]{}"']+""")


def secure_engine() -> None:
    """Turn off the engine's hooks that start programs: the editor (`Show`, `FileEdit`) and `DOScmd`."""
    import opendssdirect as dss

    dss.Basic.AllowEditor(False)
    dss.Basic.AllowForms(False)
    dss.Basic.AllowDOScmd(False)


def quoted_path(path: str | Path) -> str:
    """The absolute path in double quotes for an OpenDSS command; a path holding a quote or a control
    character (a newline would start another command) is a `FeederError`."""
    text = str(Path(path).resolve())
    if '"' in text or any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise FeederError(f"{text!r}: gridedge does not pass a path with quotes or control characters to OpenDSS")
    return f'"{text}"'


def check_model(path: str | Path) -> None:
    """Refuse a model whose script could write, read or run anything outside its own folder.

    Args:
        path: the model's master .dss file; the folder holding it is the model's tree.

    Raises:
        FeederError: names the file, the line and what is not allowed there.
    """
    path = Path(path).resolve()
    _check_file(path, path.parent, stack=())


@cache
def _engine_names() -> tuple[tuple[str, ...], tuple[str, ...]]:
    import opendssdirect as dss

    commands = tuple(dss.Executive.Command(i).lower() for i in range(1, dss.Executive.NumCommands() + 1))
    options = tuple(dss.Executive.Option(i).lower() for i in range(1, dss.Executive.NumOptions() + 1))
    return commands, options


def _resolve(word: str, names: tuple[str, ...]) -> str | None:
    """The engine's lookup: an exact name, otherwise the first name that starts with `word`."""
    word = word.lower()
    if not word:
        return None
    if word in names:
        return word
    return next((name for name in names if name.startswith(word)), None)


def _token(line: str, i: int) -> tuple[str, int]:
    if line[i] in _QUOTES:
        end = line.find(_QUOTES[line[i]], i + 1)
        return (line[i + 1 :], len(line)) if end < 0 else (line[i + 1 : end], end + 1)
    j = i
    while j < len(line) and line[j] not in " \t,=!" and not line.startswith("//", j):
        j += 1
    return line[i:j], j


def _params(line: str) -> tuple[list[tuple[str, str]], int]:
    """The (name, value) pairs of one command line as OpenDSS's parser splits them ('' for no name), and
    where the line's trailing comment starts."""
    out, i, n = [], 0, len(line)

    def skip(i: int) -> int:
        while i < n and line[i] in " \t":
            i += 1
        return i

    while True:
        i = skip(i)
        if i >= n or line[i] == "!" or line.startswith("//", i):
            return out, i
        token, i = _token(line, i)
        j = skip(i)
        if j < n and line[j] == "=":
            i = skip(j + 1)
            value = ""
            if i < n and line[i] != "!" and not line.startswith("//", i):
                value, i = _token(line, i)
            out.append((token, value))
        else:
            out.append(("", token))
            i = j
        i = skip(i)
        if i < n and line[i] == ",":
            i += 1


def _lines(path: Path, origin: str):
    """(line number, text) of the lines OpenDSS executes: block comments (a line starting with '/*' up to
    the line holding '*/') and lines starting with '!' or '//' are left out."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FeederError(f"{origin}: cannot read: {exc}") from exc
    if b"\0" in data:
        raise FeederError(f"{origin}: not a text file (it holds NUL bytes)")
    in_block = False
    for number, line in enumerate(re.split(r"\r\n|\r|\n", data.decode("latin-1")), start=1):
        if in_block:
            in_block = "*/" not in line
            continue
        if line.startswith("/*"):
            in_block = "*/" not in line
            continue
        stripped = line.lstrip(" \t")
        if stripped.startswith("!") or stripped.startswith("//"):
            continue
        yield number, line


def _inside(target: Path, root: Path) -> bool:
    return target == root or root in target.parents


def _path(value: str, base: Path) -> Path:
    return (base / value.replace("\\", "/")).resolve()


def _check_file(path: Path, root: Path, stack: tuple[Path, ...]) -> None:
    active = [None]  # class of the element the next '~' line edits (None: not known)
    for number, line in _lines(path, str(path)):
        try:
            _check_line(line, path, root, stack, active)
        except _Refused as exc:
            raise FeederError(
                f"{path}, line {number}: {line.strip()!r}: {exc}; gridedge refuses it in an "
                "untrusted model (import a model you trust with trusted=True)"
            ) from None


class _Refused(Exception):
    pass


def _check_line(line: str, path: Path, root: Path, stack: tuple[Path, ...], active: list) -> None:
    commands, options = _engine_names()
    base = path.parent
    params, end = _params(line)
    code = line[:end]
    # the command word as OpenDSS reads it and, to be safe, the first bare word and a leading name too
    command = _resolve(params[0][1], commands) if params and not params[0][0] else None
    words = [params[0][0] if params else "", next(iter(_WORDS.findall(code)), "")]
    for word in (command, *(_resolve(w, commands) for w in words)):
        if word is not None and word not in ALLOWED_COMMANDS:
            raise _Refused(f"the OpenDSS command {word!r} may write files or start programs")
    _check_positional_action(command, params, active)
    if command == "set":
        _check_set(params[1:], code, options)
    elif command in _PATH_COMMANDS and len(params) > 1 and params[1][1]:
        target = _path(params[1][1], base)
        if not _inside(target, root):
            raise _Refused(f"{params[1][1]!r} is outside the model's folder {root}")
        if command == "compile" and target.parent != base:
            raise _Refused(
                "a nested Compile must name a file in the same folder (OpenDSS keeps the compiled "
                "file's folder for the lines after it)"
            )
        if command in ("redirect", "compile"):
            candidates = [
                c
                for c in (target, target.with_name(target.name + ".dss"), target.with_name(target.name + ".DSS"))
                if c.is_file()
            ]
            if not candidates:
                raise _Refused(f"no such file {params[1][1]!r}")
            for candidate in candidates:
                if candidate in (*stack, path):
                    raise _Refused("the model redirects to a file that is already running")
                _check_file(candidate, root, (*stack, path))
            active[0] = None
    # every path named anywhere on the line stays inside the model's folder; '..' is refused outright, since
    # OpenDSS also builds file names from element names (a load shape 'x/../../y' saves outside its folder)
    for word in _WORDS.findall(code):
        as_path = word.replace("\\", "/")
        if ".." in as_path.split("/"):
            raise _Refused(f"{word!r} refers to a parent folder")
        if len(word) > 1 and as_path.startswith("/") and not _inside(_path(word, base), root):
            raise _Refused(f"{word!r} is outside the model's folder {root}")
    for name, value in _NAME_VALUE.findall(code):
        name, value = name.rsplit(".", 1)[-1].lower(), value.strip("\"'")
        if value and any(p.startswith(name) for p in _FILE_PROPERTIES) and not _inside(_path(value, base), root):
            raise _Refused(f"the file {value!r} is outside the model's folder {root}")
        if "action".startswith(name) and value.lower().startswith(_WRITING_ACTIONS):
            raise _Refused(f"action={value} writes a file")


def _check_positional_action(command: str | None, params: list[tuple[str, str]], active: list) -> None:
    """Refuse a value without a name that could be the ``action`` of a load shape, monitor or meter."""
    if command in ("new", "edit", "select"):
        obj = params[1][1] if len(params) > 1 else ""
        active[0] = obj.split(".", 1)[0].lower() if "." in obj else None
        values = [value for name, value in params[2:] if not name]
    elif command in ("~", "more", "m"):
        values = [value for name, value in params[1:] if not name]
    elif command is None and params and "." in params[0][0]:  # 'Class.name.property=value ...'
        active[0] = params[0][0].split(".", 1)[0].lower()
        values = [value for name, value in params[1:] if not name]
    else:
        if command == "set":
            active[0] = None  # Set class=/element=/object= may select another element
        return
    if active[0] is not None and active[0] not in _ACTION_CLASSES:
        return
    for value in values:
        if value.strip().lower().startswith(_WRITING_ACTIONS):
            raise _Refused(
                f"the value {value!r} without a property name could be an action that saves a file; name "
                "the property (prop=value)"
            )


def _check_set(params: list[tuple[str, str]], code: str, options: tuple[str, ...]) -> None:
    index = 0  # OpenDSS gives a value without a name to the option after the previous one
    for name, _ in params:
        if name:
            option = _resolve(name, options)
            index = options.index(option) + 1 if option is not None else 0
        else:
            option = options[index] if index < len(options) else None
            index += 1
        if option is not None and option not in ALLOWED_OPTIONS:
            raise _Refused(f"the option Set {option} names a file, folder or program")
    for name, _ in _NAME_VALUE.findall(code):
        option = _resolve(name, options)
        if option is not None and option not in ALLOWED_OPTIONS:
            raise _Refused(f"the option Set {option} names a file, folder or program")
