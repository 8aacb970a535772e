"""``with`` and ``async with`` for anything with a ``close()``: leaving the block closes it."""

from __future__ import annotations

from typing import Any, Self


class Closing:
    """Mixin: ``close()`` is the subclass's; ``aclose()`` defaults to it."""

    __slots__ = ()

    def close(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
