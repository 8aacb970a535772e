"""Which functions and classes of a script's ``__main__`` a spawned worker lacks or sees as
another object: those defined inside the main guard, told by the script's syntax tree and the
objects' line numbers."""

from __future__ import annotations

from aioloader._main_module import defined_under_guard

SCRIPT = '''
import contextlib
import dataclasses
from json import dumps as Encoder

@contextlib.contextmanager  # its wrapper's code is contextlib's, on a line of the guard below
def top_managed():
    yield

@dataclasses.dataclass
class TopData:
    x: int

def top(x):
    return x

class TopClass:
    def method(self):
        return 1

class Bare:
    pass

def twice(x):
    return x

if "__main__" == __name__:
    def guarded(x):
        return x

    def twice(x):  # the worker would run the top-level one
        return 100 * x

    class Encoder:  # the worker would find json.dumps under this name
        def __call__(self, x):
            return x

    class GuardedBare:
        pass

    @dataclasses.dataclass  # its methods are made in <string>: known by name
    class GuardedData:
        x: int

    if True:
        @staticmethod
        def decorated(x):
            return x
else:
    def imported_side(x):
        return x

if __name__ == "__main__":
    class Second:
        @classmethod
        def make(cls):
            return cls()
'''


# a main block long enough to cover the line of contextlib's wrapper, as torch.no_grad()'s does
# for a decorated function of some scripts: the wrapper's line is not the script's
SCRIPT += 'if __name__ == "__main__":\n    padding = """' + "\n" * 400 + '"""\n'


def _run(script, name: str) -> dict:
    """The script's namespace when run as ``name`` (a module in sys.modules while it runs, as
    dataclasses need)."""
    import sys
    import types

    module = types.ModuleType(name)
    saved = sys.modules.get(name)
    sys.modules[name] = module
    try:
        exec(compile(SCRIPT, str(script), "exec"), module.__dict__)
    finally:
        if saved is None:
            del sys.modules[name]
        else:
            sys.modules[name] = saved
    return module.__dict__


def test_defined_under_guard_tells_the_objects_a_worker_cannot_have(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    main = _run(script, "__main__")  # the parent: the guarded block ran
    for name in ["guarded", "twice", "Encoder", "GuardedBare", "GuardedData", "Second"]:
        assert defined_under_guard(str(script), main[name]), name
    assert defined_under_guard(str(script), main["decorated"].__func__)
    worker = _run(script, "__mp_main__")  # what a worker has: the top level, the else branch
    for name in ["top", "TopClass", "Bare", "twice", "imported_side", "top_managed", "TopData"]:
        assert not defined_under_guard(str(script), worker[name]), name


def test_an_unreadable_or_unparsable_script_gives_no_evidence(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("if __name__ == '__main__':\n    def f(:\n")

    def f() -> None:
        pass

    assert not defined_under_guard(str(broken), f)
    assert not defined_under_guard(str(tmp_path / "absent.py"), f)
