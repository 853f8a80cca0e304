"""Each limit on what a run may ask for is defined once (exitlat/limits.py): nothing in the
package assigns one of its names or spells one of its values again, and the guest's own copies
(exitlat_uapi.h) are the same numbers."""

import ast
import re
from pathlib import Path

import exitlat.limits as limits

PKG = Path(limits.__file__).parent
NAMES = {n: v for n, v in vars(limits).items() if n.isupper()}


def _sources():
    return [p for p in PKG.rglob("*.py") if p != Path(limits.__file__)]


def test_no_module_redefines_a_limit():
    for path in _sources():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
            for t in targets:
                for name in ([e.id for e in t.elts if isinstance(e, ast.Name)]
                             if isinstance(t, ast.Tuple) else [getattr(t, "id", None)]):
                    assert name not in NAMES, f"{path}: assigns {name} (exitlat/limits.py owns it)"


def test_no_module_spells_a_limit_again():
    # the distinctive ones (0xFFFF and 4095 are also masks, 100 a percentage)
    spelled = {limits.MAX_ITERATIONS, limits.MAX_WARMUP, limits.MAX_BATCH,
               limits.SELFTEST_MAX_ITERATIONS}
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and type(node.value) is int and node.value in spelled:
                raise AssertionError(f"{path}:{node.lineno}: {node.value} is a limit: import it "
                                     "from exitlat.limits")


def test_the_guest_enforces_the_same_limits():
    uapi = (PKG.parent / "guest/module/exitlat_uapi.h").read_text()

    def define(name):
        return int(re.search(rf"#define\s+{name}\s+(\d+)", uapi).group(1))

    assert define("EXITLAT_MAX_ITERS") == limits.MAX_ITERATIONS
    assert define("EXITLAT_BATCH_MAX") == limits.MAX_BATCH
    assert limits.MAX_WARMUP <= define("EXITLAT_MAX_ITERS")
