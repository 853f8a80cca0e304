"""Several bundles as positional arguments of one Invoke task: `invoke compare A B C --html F`,
`invoke export --format csv A B`.

Invoke has no variadic positional arguments: a word after a task's last positional argument reads
as the name of another task ("No idea what 'C' is!"), and a positional argument is always
required. So, after Invoke has parsed its own options and loaded tasks.py but before it parses the
tasks' arguments, spill_positionals() rewrites every positional word of the named tasks beyond the
first `keep` into `--<option> WORD` of a repeatable option of that task. Option values are told
from positional words with the tasks' own flags (and Invoke's core flags), as Invoke's parser
tells them. A word after a variadic task's options is a bundle, never another task: in
`invoke compare A B results`, "results" is a bundle, as it would be for any missing positional."""

import sys

from invoke import Task


class KeepHelpTask(Task):
    """A task whose options get Invoke's automatic short flags, except -h: that stays Invoke's
    `--help` (an option such as --html would otherwise take it over), and except "-": Invoke
    would take the dash of a name like no-container as its short flag and show "--" (such an
    option gets none, so the others keep theirs)."""

    def arg_opts(self, name, default, taken_names):
        opts = super().arg_opts(name, default, set(taken_names) | {"h"})
        if "-" in opts["names"]:            # no short flag rather than "--"; the dash stays taken,
            opts["names"].remove("-")       # as Invoke had it, so later options keep their flags
            taken_names.add("-")
        return opts


def _value_flags(context) -> set[str]:
    """Flags of an Invoke parser context that take a value (the next word is that value)."""
    return {name for name, arg in context.flags.items() if arg.takes_value and not arg.optional}


def _help_request(tokens: list[str], contexts: dict) -> str | None:
    """`invoke TASK … --help`: the task's name. Invoke would take --help for a missing positional
    argument of TASK ("no bundle '--help'"); spill_positionals() turns it into `--help TASK`."""
    for i, tok in enumerate(tokens):
        if tok == "--":
            return None
        if tok in ("--help", "-h"):
            names = [t for t in tokens[:i] if t in contexts]
            return names[-1] if names else None
    return None


def rewrite(tokens: list[str], contexts: dict, core, variadic: dict[str, tuple[str, int]]) -> list[str]:
    """tokens: the words after Invoke's core options (the task names and their arguments);
    contexts: task name (and alias) -> Invoke ParserContext; core: the core ParserContext;
    variadic: task name -> (repeatable option, positional words kept as they are)."""
    core_values = _value_flags(core) if core is not None else set()
    out: list[str] = []
    ctx = name = None
    seen = 0                       # positional words of the current task so far
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok == "--":            # Invoke's remainder: never ours
            out += tokens[i:]
            break
        if tok.startswith("-") and tok != "-":
            takes = ctx is not None and tok in _value_flags(ctx) or tok in core_values
            out.append(tok)
            if takes and "=" not in tok and i + 1 < len(tokens):
                out.append(tokens[i + 1])
                i += 1
            i += 1
            continue
        if ctx is not None and name in variadic:
            option, keep = variadic[name]
            out += [tok] if seen < keep else [f"--{option.replace('_', '-')}", tok]
            seen += 1
        elif ctx is not None and seen < len(ctx.positional_args):
            out.append(tok)
            seen += 1
        else:                      # a task name (Invoke reports an unknown one itself)
            out.append(tok)
            ctx = contexts.get(tok)
            name = ctx.name if ctx is not None else None
            seen = 0
        i += 1
    return out


def spill_positionals(module_name: str, variadic: dict[str, tuple[str, int]]) -> None:
    """Called at the end of tasks.py: rewrite the task words of the running `invoke` (see the
    module docstring). Does nothing when tasks.py is imported any other way."""
    try:
        from invoke import Collection
        from invoke.main import program
    except ImportError:
        return
    core = getattr(program, "core", None)
    tokens = getattr(core, "unparsed", None)
    if not isinstance(tokens, list) or not tokens:
        return
    collection = Collection.from_module(sys.modules[module_name])
    # Task.get_arguments() pops each option's text out of task.help, so contexts made here would
    # leave Invoke's own parser none: `invoke bench --help` would list the options bare.
    texts = {name: dict(t.help) for name, t in collection.tasks.items()}
    contexts = {}
    try:
        for c in collection.to_contexts():
            for n in (c.name, *c.aliases):
                contexts[n] = c
    finally:
        for name, t in collection.tasks.items():
            t.help = texts[name]
    help_for = _help_request(tokens, contexts)
    if help_for:            # as if `invoke --help TASK` had been typed (Invoke prints the help)
        core[0].args["help"].value = help_for
        tokens[:] = []
        return
    tokens[:] = rewrite(tokens, contexts, getattr(program, "initial_context", None), variadic)
