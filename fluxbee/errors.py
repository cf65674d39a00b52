"""The one base of the errors that carry a machine-readable code and a human-readable detail.

Wire refusals, SDK failures, SY.identity and admin API errors, local-store lookups and operator
spec refusals all carry the same pair: ``code`` (a stable token such as ``NODE_NOT_FOUND``, which
callers branch on and envelopes carry) and ``detail`` (what happened, for people). Deriving them
from :class:`CodedError` gives them one spelling and lets a caller that only reports
(``except CodedError as err: log(err.code, err.detail)``) treat them alike.

The envelopes and wire messages keep their own field names (``error_code``/``error_detail``,
``reason``, ``message``): the classes that mirror such a field keep a read-only alias of it.

A leaf: it imports nothing, so the SDK loads it with the base install.
"""

from __future__ import annotations


class CodedError(Exception):
    """An error with a ``code`` to branch on and a ``detail`` to show.

    ``str()`` is ``"<code>: <detail>"`` unless the subclass passes its own ``text``. Never match
    on that text: read :attr:`code`.
    """

    def __init__(self, code: str, detail: str, *, text: str | None = None) -> None:
        super().__init__(f"{code}: {detail}" if text is None else text)
        self.code = code
        self.detail = detail
