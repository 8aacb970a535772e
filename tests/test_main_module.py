"""Which names of a script's ``__main__`` a spawned worker lacks: those bound only under the
main guard, read from the script's syntax tree."""

from __future__ import annotations

from aioloader._main_module import guarded_only

SCRIPT = '''
import os as operating_system
from json import dumps

def top(x):
    return x

try:
    import numpy as np
except ImportError:
    np = None

if "__main__" == __name__:
    def guarded(x):
        return x

    class Guarded:
        pass

    both = 1
    for loop_var in range(3):
        in_loop = loop_var
    with open(__file__) as handle:
        pass
    squares = [y * y for y in range(3)]
    lam = lambda z: z
else:
    imported_side = 2

both = 2

if __name__ == "__main__":
    second_block = 3
'''


def test_guarded_only_names_what_the_main_block_alone_binds(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    only_guarded = ["guarded", "Guarded", "loop_var", "in_loop", "handle", "squares", "lam", "second_block"]
    for name in only_guarded:
        assert guarded_only(str(script), name), name
    # bound at top level (too), in the else branch, or nowhere: a worker has them, or there is
    # no evidence it lacks them
    for name in ["top", "operating_system", "dumps", "np", "both", "imported_side", "y", "z", "missing"]:
        assert not guarded_only(str(script), name), name


def test_an_unreadable_or_unparsable_script_gives_no_evidence(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("if __name__ == '__main__':\n    def f(:\n")
    assert not guarded_only(str(broken), "f")
    assert not guarded_only(str(tmp_path / "absent.py"), "f")
