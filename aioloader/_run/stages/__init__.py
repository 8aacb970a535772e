"""One module per stage kind. Each stage is an object with ``input``/``output`` channels, a
``stats`` record, and one coroutine ``run()`` that closes its output when its input is done.
Each module holds a stage kind's spec and its stage; :mod:`.base` is the contract both implement."""
