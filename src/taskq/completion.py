"""Shell completion: the scripts ``taskq completion bash|zsh|fish`` prints.

A script completes commands, options, option values (directories for ``DIR``, files
for ``PATH``/``FILE``, the states for ``STATE``) and job ids. It is generated from the
CLI's own commands (a :class:`Spec` per command), so it matches the taskq that printed
it; only job ids are asked for while completing, by running ``taskq completion --ids``
(with the ``--spool`` found on the line, if any), which answers from directory
listings alone: no job file is opened (:func:`job_ids`).

What a value is comes from the CLI too, from metavars: an argument or option whose
metavar is ``ID`` or ``ID...`` takes job ids (show, logs, retry, cancel, wait, explain;
``add --after``), ``SHELL`` a shell name, and an argument ``COMMAND`` starts the job's
own command line (``add``), completed as the shell completes any command line.

The scripts are written here rather than taken from click's ``shell_complete``
machinery (typer's ``--install-completion`` is switched off in the app,
``add_completion=False``): that machinery starts the whole CLI on every TAB, where
these scripts complete commands and options with no process at all, and run taskq only
for ids, through a path that reads nothing but directory listings.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

from .errors import ValidationError
from .spool import layout

if TYPE_CHECKING:
    from .api import Spool

SHELLS = ("bash", "zsh", "fish")

#: How an option's value (or an argument) is completed, by its metavar.
_KINDS = {"DIR": "dir", "PATH": "file", "FILE": "file", "STATE": "state", "ID": "id", "ID...": "id",
          "SHELL": "shell"}


class Spec(NamedTuple):
    """What completion knows of one command (``name`` "" is taskq itself, before a command)."""

    name: str
    help: str
    #: Every option word (``--json``, ``-c``...), in the command's order.
    options: tuple[str, ...]
    #: Options that take a value, each with the kind of value: dir, file, state, id or text.
    values: tuple[tuple[str, str], ...]
    #: What its positional arguments are: id, shell, command (a job's command line) or text.
    argument: str


def _kind(metavar: str | None) -> str:
    if metavar and "COMMAND" in metavar:
        return "command"
    return _KINDS.get(metavar or "", "text")


def specs(group: Any) -> list[Spec]:
    """The :class:`Spec` of taskq itself (first) and of each visible command of *group*
    (a click group, as ``typer.main.get_command`` builds it)."""
    ctx = group.context_class(group, info_name="taskq", **group.context_settings)
    out = [_spec("", "", group, ctx, "text")]
    for name, command in group.commands.items():
        if command.hidden:
            continue
        sub = command.context_class(command, parent=ctx, info_name=name, **command.context_settings)
        kinds = [_kind(p.metavar) for p in command.params if p.param_type_name == "argument"]
        summary = (command.help or "").split("\n")[0].strip()
        out.append(_spec(name, summary, command, sub, kinds[0] if kinds else "text"))
    return out


def _spec(name: str, help_: str, command: Any, ctx: Any, argument: str) -> Spec:
    options: list[str] = []
    values: list[tuple[str, str]] = []
    params = list(command.params)
    help_option = command.get_help_option(ctx)
    if help_option is not None:
        params.append(help_option)
    for param in params:
        if param.param_type_name != "option" or param.hidden:
            continue
        words = [*param.opts, *param.secondary_opts]
        options += words
        if not param.is_flag:
            values += [(word, _kind(param.metavar)) for word in words]
    return Spec(name, help_, tuple(options), tuple(values), argument)


def script(shell: str, all_specs: list[Spec], prog: str = "taskq") -> str:
    """The completion script for *shell*; ValidationError (exit 2) for another shell."""
    writers = {"bash": _bash, "zsh": _zsh, "fish": _fish}
    if shell not in writers:
        raise ValidationError(f"unknown shell {shell!r} (use bash, zsh or fish)")
    return writers[shell](all_specs, prog)


def job_ids(spool: Spool) -> list[str]:
    """The ids of the spool's jobs, from directory listings only (file names carry
    them; README, "The spool on disk"), so that a TAB stays fast on a large spool. A
    drop-in file not yet taken in has no id in its name and is left out. No spool, or
    one that cannot be read: no ids (completion never complains)."""
    from .errors import SpoolError

    if not spool.store.exists():
        return []
    ids: set[str] = set()
    for state in layout.STATES:
        try:
            ids.update(spool.jobs.ids(state))
        except (SpoolError, OSError):
            continue
    return sorted(ids)


# -- shared helpers ----------------------------------------------------------------------


def _sq(text: str) -> str:
    """*text* in POSIX single quotes (bash and zsh)."""
    return "'" + text.replace("'", "'\\''") + "'"


def _fish_q(text: str) -> str:
    """*text* in fish single quotes (which know ``\\'`` and ``\\\\``)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _words(items: Iterable[str]) -> str:
    return " ".join(items)


def _by_kind(spec: Spec) -> dict[str, list[str]]:
    kinds: dict[str, list[str]] = {}
    for option, kind in spec.values:
        kinds.setdefault(kind, []).append(option)
    return kinds


_STATES = _words(layout.STATES)


# -- bash and zsh ------------------------------------------------------------------------

# The two share the tables (as case statements) and the walk over the words before the
# cursor: the command is the first word that is neither an option nor an option's
# value; after `--`, and after the first word of a job's command line (`add`), no
# word is an option of taskq's.

_CASES = r"""_taskq_options() {  # the options of command $1 ('' = before a command)
    case $1 in
@OPTIONS@
    esac
}

_taskq_value() {  # the kind of value that option $2 of command $1 takes; fails for a flag
    case "$1 $2" in
@VALUES@
        *) return 1;;
    esac
}

_taskq_argument() {  # what the arguments of command $1 are
    case $1 in
@ARGUMENTS@
        *) echo text;;
    esac
}
"""

_BASH = r"""# bash completion for taskq, printed by `taskq completion bash`.
# Load it from ~/.bashrc:  eval "$(taskq completion bash)"
# or save it as ~/.local/share/bash-completion/completions/taskq

@CASES@
_taskq_completion() {
    local cur=${COMP_WORDS[COMP_CWORD]} cmd= arg= spool= kind= opt= rest=0 i w
    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${COMP_WORDS[i]}
        if [[ $rest == 1 || $w == = ]]; then  # bash splits --opt=value at the "="
            continue
        elif [[ $w == -- ]]; then
            [[ -n $cmd ]] && rest=1
        elif [[ $w == --*=* ]]; then  # kept whole where COMP_WORDBREAKS lacks "="
            [[ ${w%%=*} == --spool ]] && spool=${w#*=}
        elif kind=$(_taskq_value "$cmd" "$w"); then
            [[ ${COMP_WORDS[i+1]} == = ]] && ((i++))
            ((i + 1 < COMP_CWORD)) || { opt=$w; break; }  # the cursor is on its value
            ((i++))
            [[ $w == --spool ]] && spool=${COMP_WORDS[i]}
        elif [[ $w == -* ]]; then
            continue
        elif [[ -z $cmd ]]; then
            cmd=$w
            arg=$(_taskq_argument "$cmd")
        elif [[ $arg == command ]]; then
            rest=1
        fi
    done
    [[ $cur == = ]] && cur=
    if [[ -z $opt && $rest == 0 && $cur == --*=* ]] && kind=$(_taskq_value "$cmd" "${cur%%=*}"); then
        opt=${cur%%=*}
        cur=${cur#*=}
        _taskq_complete "$kind" "$1"
        COMPREPLY=("${COMPREPLY[@]/#/$opt=}")
    elif [[ -n $opt ]]; then
        _taskq_complete "$kind" "$1"
    elif [[ $cur == -* && $rest == 0 ]]; then
        COMPREPLY=($(compgen -W "$(_taskq_options "$cmd")" -- "$cur"))
    elif [[ -z $cmd ]]; then
        COMPREPLY=($(compgen -W "@COMMANDS@" -- "$cur"))
    else
        _taskq_complete "$arg" "$1"
    fi
    return 0
}

_taskq_complete() {  # $1: the kind of value; $2: the taskq being completed
    local IFS=$' \t\n' where
    local -a given=()
    case $1 in
        dir) IFS=$'\n'; compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -d -- "$cur"));;
        file) IFS=$'\n'; compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -f -- "$cur"));;
        state) COMPREPLY=($(compgen -W "@STATES@" -- "$cur"));;
        shell) COMPREPLY=($(compgen -W "@SHELLS@" -- "$cur"));;
        id)
            # The spool as typed: taskq expands a ~; quotes around it are dropped here.
            where=${spool#[\"\']}
            where=${where%[\"\']}
            [[ -n $where ]] && given=(--spool "$where")
            COMPREPLY=($(compgen -W "$("$2" completion --ids "${given[@]}" 2>/dev/null)" -- "$cur"));;
        command) compopt -o default 2>/dev/null; COMPREPLY=();;
        *) COMPREPLY=();;
    esac
}

complete -F _taskq_completion @PROG@
"""

_ZSH = r"""#compdef @PROG@
# zsh completion for taskq, printed by `taskq completion zsh`.
# Load it from ~/.zshrc, after compinit:  eval "$(taskq completion zsh)"
# or save it as _taskq in a directory of $fpath.

@CASES@
_taskq_complete() {  # $1: the kind of value; $2: the taskq being completed; $3: the spool given
    local -a found given
    [[ -n $3 ]] && given=(--spool "${(Q)3}")
    case $1 in
        dir) _files -/;;
        file|command) _files;;
        state) compadd -- @STATES@;;
        shell) compadd -- @SHELLS@;;
        id)
            found=(${(f)"$("$2" completion --ids "${given[@]}" 2>/dev/null)"})
            compadd -- $found;;
    esac
}

_taskq() {
    local cur=${words[CURRENT]} cmd= arg= spool= kind= opt= rest=0 i w
    local -a commands
    commands=(
@DESCRIBED@
    )
    for ((i = 2; i < CURRENT; i++)); do
        w=${words[i]}
        if [[ $rest == 1 ]]; then
            continue
        elif [[ $w == -- ]]; then
            [[ -n $cmd ]] && rest=1
        elif [[ $w == --*=* ]]; then
            [[ ${w%%=*} == --spool ]] && spool=${w#*=}
        elif kind=$(_taskq_value "$cmd" "$w"); then
            ((i + 1 < CURRENT)) || { opt=$w; break; }  # the cursor is on its value
            ((i++))
            [[ $w == --spool ]] && spool=${words[i]}
        elif [[ $w == -* ]]; then
            continue
        elif [[ -z $cmd ]]; then
            cmd=$w
            arg=$(_taskq_argument "$cmd")
        elif [[ $arg == command ]]; then
            rest=1
        fi
    done
    if [[ -z $opt && $rest == 0 && $cur == --*=* ]] && kind=$(_taskq_value "$cmd" "${cur%%=*}"); then
        opt=${cur%%=*}
        compset -P '*='
    fi
    if [[ -n $opt ]]; then
        _taskq_complete "$kind" "${words[1]}" "$spool"
    elif [[ $cur == -* && $rest == 0 ]]; then
        compadd -- ${=$(_taskq_options "$cmd")}
    elif [[ -z $cmd ]]; then
        _describe -t commands 'taskq command' commands
    else
        _taskq_complete "$arg" "${words[1]}" "$spool"
    fi
}

if [[ $funcstack[1] == _taskq ]]; then
    _taskq "$@"  # autoloaded from $fpath: this file is the function's body
elif (( $+functions[compdef] )); then
    compdef _taskq @PROG@
fi
"""


def _cases(all_specs: list[Spec]) -> str:
    options = "\n".join(f"        {_sq(s.name)}) echo {_sq(_words(s.options))};;" for s in all_specs)
    values = []
    for spec in all_specs:
        for kind, opts in _by_kind(spec).items():
            pattern = "|".join(_sq(f"{spec.name} {o}") for o in opts)
            values.append(f"        {pattern}) echo {kind};;")
    by_argument: dict[str, list[str]] = {}
    for spec in all_specs:
        if spec.name and spec.argument != "text":
            by_argument.setdefault(spec.argument, []).append(_sq(spec.name))
    arguments = "\n".join(f"        {'|'.join(names)}) echo {kind};;" for kind, names in by_argument.items())
    return (_CASES.replace("@OPTIONS@", options).replace("@VALUES@", "\n".join(values))
            .replace("@ARGUMENTS@", arguments))


def _fill(template: str, all_specs: list[Spec], prog: str) -> str:
    return (template.replace("@CASES@", _cases(all_specs))
            .replace("@COMMANDS@", _words(s.name for s in all_specs if s.name))
            .replace("@STATES@", _STATES).replace("@SHELLS@", _words(SHELLS)).replace("@PROG@", prog))


def _bash(all_specs: list[Spec], prog: str) -> str:
    return _fill(_BASH, all_specs, prog)


def _zsh(all_specs: list[Spec], prog: str) -> str:
    described = "\n".join(f"        {_sq(s.name + ':' + s.help)}" for s in all_specs if s.name)
    return _fill(_ZSH.replace("@DESCRIBED@", described), all_specs, prog)


# -- fish --------------------------------------------------------------------------------

_FISH = r"""# fish completion for taskq, printed by `taskq completion fish`.
# Load it:  taskq completion fish > ~/.config/fish/completions/taskq.fish

function __taskq_scan --description 'taskq: print the command and the --spool given, one per line'
    set -l words (commandline -opc)
    set -l cmd ''
    set -l spool ''
    set -l i 2
    while test $i -le (count $words)
        set -l w $words[$i]
        set i (math $i + 1)
        if test "$w" = --
            break
        else if string match -q -- '--spool=*' $w
            set spool (string replace -- '--spool=' '' $w)
        else if contains -- $w @VALUE_OPTIONS@
            if test $w = --spool; and test $i -le (count $words)
                set spool $words[$i]
            end
            set i (math $i + 1)
        else if string match -q -- '-*' $w
            continue
        else if test -z "$cmd"
            set cmd $w
        end
    end
    printf '%s\n' "$cmd" "$spool"
end

function __taskq_needs_command
    set -l found (__taskq_scan)
    test -z "$found[1]"
end

function __taskq_using_command
    set -l found (__taskq_scan)
    contains -- "$found[1]" $argv
end

function __taskq_ids
    set -l spool (__taskq_scan)[2]
    set -l taskq (commandline -opc)[1]
    if test -n "$spool"
        command $taskq completion --ids --spool $spool 2>/dev/null
    else
        command $taskq completion --ids 2>/dev/null
    end
end

complete -c @PROG@ -f
@LINES@
"""

_FISH_VALUES = {
    "dir": " -x -a '(__fish_complete_directories (commandline -ct))'",
    "file": " -r -F",
    "state": " -x -a " + _fish_q(_STATES),
    "shell": " -x -a " + _fish_q(_words(SHELLS)),
    "id": " -x -a '(__taskq_ids)'",
}

_FISH_ARGUMENTS = {
    "id": "-a '(__taskq_ids)'",
    "shell": "-a " + _fish_q(_words(SHELLS)),
    "command": "-F",
}


def _fish(all_specs: list[Spec], prog: str) -> str:
    lines = []
    for spec in all_specs:
        if spec.name:
            lines.append(f"complete -c {prog} -n __taskq_needs_command -a {spec.name} -d {_fish_q(spec.help)}")
            when = "-n " + _fish_q("__taskq_using_command " + spec.name)
        else:
            when = "-n __taskq_needs_command"
        kinds = dict(spec.values)
        for option in spec.options:
            flag = f"-l {option[2:]}" if option.startswith("--") else f"-s {option[1:]}"
            value = "" if option not in kinds else _FISH_VALUES.get(kinds[option], " -x")
            lines.append(f"complete -c {prog} {when} {flag}{value}")
        if spec.argument in _FISH_ARGUMENTS:
            lines.append(f"complete -c {prog} {when} {_FISH_ARGUMENTS[spec.argument]}")
    value_options = sorted({option for spec in all_specs for option, _ in spec.values})
    return (_FISH.replace("@VALUE_OPTIONS@", _words(value_options))
            .replace("@LINES@", "\n".join(lines)).replace("@PROG@", prog))
