"""Which functions and classes of a script's ``__main__`` a spawned worker lacks or sees as
another object: those defined inside the main guard, told by the script's syntax tree and the
objects' line numbers."""

from __future__ import annotations

from aioloader._main_module import defined_under_guard

SCRIPT = '''
from json import dumps as Encoder

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


def _run(script, name: str) -> dict:
    namespace = {"__name__": name}
    exec(compile(SCRIPT, str(script), "exec"), namespace)
    return namespace


def test_defined_under_guard_tells_the_objects_a_worker_cannot_have(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    main = _run(script, "__main__")  # the parent: the guarded block ran
    for name in ["guarded", "twice", "Encoder", "GuardedBare", "Second"]:
        assert defined_under_guard(str(script), main[name]), name
    assert defined_under_guard(str(script), main["decorated"].__func__)
    worker = _run(script, "__mp_main__")  # what a worker has: the top level, the else branch
    for name in ["top", "TopClass", "Bare", "twice", "imported_side"]:
        assert not defined_under_guard(str(script), worker[name]), name


def test_an_unreadable_or_unparsable_script_gives_no_evidence(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("if __name__ == '__main__':\n    def f(:\n")

    def f() -> None:
        pass

    assert not defined_under_guard(str(broken), f)
    assert not defined_under_guard(str(tmp_path / "absent.py"), f)
