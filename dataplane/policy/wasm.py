"""The WebAssembly engine: runs a module built by ``opa build -t wasm`` under wasmtime.

OPA's WebAssembly ABI, as this engine uses it:

- imports: ``env.memory`` (the module states a minimum of a few pages; we give it that, and a
  ceiling, and OPA's allocator grows it), ``env.opa_abort(msg)`` (a runtime error: the message is a
  NUL-terminated string such as ``policy.rego:7: var assignment conflict``), ``env.opa_println``,
  and ``env.opa_builtin0..4(id, ctx, args...)`` for builtins the module leaves to the host;
- exports: the globals ``opa_wasm_abi_version``/``opa_wasm_abi_minor_version``; ``builtins()`` and
  ``entrypoints()`` (addresses of JSON-able values mapping names to ids); ``opa_malloc``,
  ``opa_json_parse(addr, len)``, ``opa_json_dump(value)`` (address of a NUL-terminated string),
  ``opa_heap_ptr_get/set``; from ABI 1.2 the one-shot ``opa_eval(0, entrypoint, data, input,
  input_len, heap_ptr, format)``, which parses the input, evaluates and returns the address of the
  JSON result set; before 1.2 the context calls (``opa_eval_ctx_new`` … ``eval`` …
  ``opa_eval_ctx_get_result``).

Data is parsed into the module's heap once, when the engine is built; the heap pointer just after
it is kept, and every evaluation writes its input there and rewinds to it, so an evaluation never
leaks heap and never re-parses data. A result set is ``[{"result": value}]`` or ``[]`` (undefined).

Speed: wasmtime-py's ``Func.__call__`` re-reads the function's type and converts every value on
each call, 10-48 µs per call on a small machine, while the underlying C call costs about 3 µs. So
each export the hot path uses is called through ``wasmtime_func_call_unchecked`` with a
preallocated argument array, after its signature was checked (all ``i32``) at load. That reaches
into wasmtime-py's private ``_ffi`` bindings; if a wasmtime release moves them, the engine notices at
import, says so in :data:`FAST_PATH_REASON`, and uses the public (slower) calls.

A trap (``opa_abort``, a failing host builtin) can leave the module's shadow-stack pointer (a wasm
global the module does not export) where the trap found it, so after one the engine throws the
instance away and builds a fresh one (same compiled module, data parsed again) before the next
evaluation: 40-60 ms with 10,000 identities on a small machine. (Copying the old memory into a
fresh instance instead was measured at only 2-3x less, for a less obvious invariant.) A stream of
inputs that make a policy fail therefore costs a reload each; callers that see one repeat should
remember the error rather than ask again.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any, Final

import msgspec
import wasmtime

from fluxbee.dataplane.policy.artefact import Artefact, Decision, canonical_json
from fluxbee.dataplane.policy.builtins import HOST_BUILTINS, Builtin, BuiltinError
from fluxbee.dataplane.policy.errors import EvaluationError, PolicyLoadError
from fluxbee.dataplane.policy.results import decision_from

log = logging.getLogger(__name__)

PAGE: Final = 65536
DEFAULT_MAX_MEMORY: Final = 512 * 1024 * 1024
_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode

Call = Callable[..., int]


def _probe_fast_path() -> str | None:
    """Why the raw C call cannot be used with this wasmtime-py, or ``None`` if it can."""
    try:
        version = metadata.version("wasmtime")
    except metadata.PackageNotFoundError:
        version = "?"
    try:
        from wasmtime import _bindings, _ffi  # noqa: PLC0415 - private modules, probed on purpose
        from wasmtime import _func as func_mod  # noqa: PLC0415
    except ImportError as err:
        return f"wasmtime-py {version} has no private bindings ({err})"
    needed = ((_bindings, "_wasmtime_func_call_unchecked"), (_ffi, "wasmtime_val_raw_t"), (_ffi, "wasm_trap_t"),
              (_ffi, "wasmtime_memory_data"), (_ffi, "wasmtime_memory_data_size"), (func_mod, "LAST_EXCEPTION"),
              (wasmtime.Store, "_context"), (wasmtime.Trap, "_from_ptr"), (wasmtime.WasmtimeError, "_from_ptr"))
    for owner, attr in needed:
        if not hasattr(owner, attr):
            return f"wasmtime-py {version} has no {getattr(owner, '__name__', owner)}.{attr}"
    return None


FAST_PATH_REASON: Final[str | None] = _probe_fast_path()


class _Trapped(Exception):
    """The module trapped; ``reason`` is what the host learned (abort text, builtin failure)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Instance:
    """One store, memory and instance of a compiled module, with data parsed into its heap."""

    def __init__(self, owner: WasmEngine, data_json: bytes | None) -> None:
        self.owner = owner
        self.store = wasmtime.Store(owner.wasm_engine)
        self.host_error: str | None = None
        self.now_ns: int | None = None
        limits = wasmtime.Limits(owner.min_pages, owner.max_pages)
        self.memory = wasmtime.Memory(self.store, wasmtime.MemoryType(limits))
        linker = wasmtime.Linker(owner.wasm_engine)
        linker.define(self.store, "env", "memory", self.memory)
        i32 = wasmtime.ValType.i32()
        for name in owner.host_imports:
            if name == "opa_abort":
                linker.define_func("env", name, wasmtime.FuncType([i32], []), self._abort)
            elif name == "opa_println":
                linker.define_func("env", name, wasmtime.FuncType([i32], []), self._println)
            else:
                arity = int(name[-1])
                linker.define_func("env", name, wasmtime.FuncType([i32] * (arity + 2), [i32]),
                                   self._builtin, access_caller=False)
        try:
            instance = linker.instantiate(self.store, owner.module)
        except (wasmtime.WasmtimeError, wasmtime.Trap) as err:
            raise PolicyLoadError(f"the module cannot be instantiated: {err}") from err
        exports = instance.exports(self.store)
        self.exports = exports
        self.fast = FAST_PATH_REASON is None and not owner.force_slow_calls
        self.size = -1
        self.base_address = 0
        try:
            self.calls: dict[str, Call] = {name: self._bind(name) for name in owner.call_names}
            if self.fast:
                from wasmtime import _ffi  # noqa: PLC0415
                self._mem_ref = ctypes.byref(self.memory._memory)
                self._mem_data = _ffi.wasmtime_memory_data
                self._mem_size = _ffi.wasmtime_memory_data_size
                self._ctx = self.store._context()
        except AttributeError as err:  # an instance attribute the probe could not see moved
            if not self.fast:
                raise
            log.warning("wasmtime-py's private call path is not usable (%s); using its public calls", err)
            self.fast = False
            self.calls = {name: self._bind(name) for name in owner.call_names}
        self.data_addr = self.base = 0
        if data_json is None:  # a probe: ABI, builtins and entry points only
            return
        # Data: malloc, copy, parse; the heap after it is where every evaluation starts.
        addr = self.calls["opa_malloc"](len(data_json))
        self.write(addr, data_json)
        self.data_addr = self.calls["opa_json_parse"](addr, len(data_json))
        if self.data_addr == 0:
            raise PolicyLoadError("the module could not parse the policy data (opa_json_parse returned 0)")
        self.base = self.calls["opa_heap_ptr_get"]()

    # -- memory -----------------------------------------------------------------------------------
    # The host address of linear memory can change only when memory grows, so it is re-read only
    # when the size changed (a size query costs a fraction of an address query).
    def _size_now(self) -> int:
        if self.fast:
            return int(self._mem_size(self._ctx, self._mem_ref))
        return self.memory.data_len(self.store)

    def refresh(self) -> None:
        size = self._size_now()
        if size != self.size:
            self.size = size
            if self.fast:
                self.base_address = ctypes.cast(self._mem_data(self._ctx, self._mem_ref), ctypes.c_void_p).value or 0
            else:
                self.base_address = ctypes.addressof(self.memory.data_ptr(self.store).contents)

    def write(self, addr: int, data: bytes) -> None:
        self.refresh()
        if addr <= 0 or addr + len(data) > self.size:
            raise _Trapped(f"write of {len(data)} bytes at {addr} is outside the module's memory")
        ctypes.memmove(self.base_address + addr, data, len(data))

    def read_cstring(self, addr: int) -> bytes:
        """The NUL-terminated string at ``addr``, never reading past the end of linear memory."""
        self.refresh()
        if not 0 < addr < self.size:
            raise _Trapped(f"module returned an address outside its memory ({addr})")
        limit = self.size - addr
        chunk = 4096
        while True:
            n = min(chunk, limit)
            buf = ctypes.string_at(self.base_address + addr, n)
            end = buf.find(b"\0")
            if end >= 0:
                return buf[:end]
            if n == limit:
                raise _Trapped(f"module returned a string at {addr} that runs to the end of its memory")
            chunk *= 8

    def ensure(self, end: int) -> None:
        """Grow memory so that ``[0, end)`` is addressable (the input is written past the heap)."""
        self.refresh()
        if end > self.size:
            pages = -(-(end - self.size) // PAGE)
            try:
                self.memory.grow(self.store, pages)
            except wasmtime.WasmtimeError as err:
                raise EvaluationError(f"input of {end - self.base} bytes does not fit the policy's memory "
                                      f"ceiling ({self.owner.max_pages * PAGE} bytes)", engine="wasm") from err

    # -- calls ------------------------------------------------------------------------------------
    def _bind(self, name: str) -> Call:
        func = self.exports[name]
        if not isinstance(func, wasmtime.Func):
            raise PolicyLoadError(f"module export {name} is not a function")
        ftype = func.type(self.store)
        if any(str(t) != "i32" for t in (*ftype.params, *ftype.results)) or len(ftype.results) > 1:
            raise PolicyLoadError(f"module export {name} has an unexpected signature")
        if not self.fast:
            store = self.store

            def slow(*args: int) -> int:
                try:
                    out = func(store, *args)
                except (wasmtime.Trap, wasmtime.WasmtimeError) as err:
                    raise _Trapped(self.host_error or str(err)) from err
                return int(out) if out is not None else 0
            return slow
        return self._raw_caller(func, len(ftype.params), len(ftype.results))

    def _raw_caller(self, func: wasmtime.Func, nparams: int, nresults: int) -> Call:
        from wasmtime import _bindings, _ffi  # noqa: PLC0415
        from wasmtime import _func as func_mod  # noqa: PLC0415
        raw_call = _bindings._wasmtime_func_call_unchecked
        vals = (_ffi.wasmtime_val_raw_t * max(nparams, nresults, 1))()
        trap = ctypes.POINTER(_ffi.wasm_trap_t)()
        trap_ref = ctypes.byref(trap)
        func_ref = ctypes.byref(func._func)
        ctx = self.store._context()
        count = max(nparams, nresults)

        def fast(*args: int) -> int:
            for i, value in enumerate(args):
                vals[i].i32 = value
            error = raw_call(ctx, func_ref, vals, count, trap_ref)
            if trap or error:
                func_mod.LAST_EXCEPTION = None  # our host functions record their own reason
                if error:
                    message = str(wasmtime.WasmtimeError._from_ptr(error))
                else:
                    message = wasmtime.Trap._from_ptr(trap).message
                    ctypes.memset(ctypes.addressof(trap), 0, ctypes.sizeof(trap))
                raise _Trapped(self.host_error or str(message))
            return vals[0].i32 & 0xFFFFFFFF if nresults else 0
        return fast

    # -- host functions ---------------------------------------------------------------------------
    def _abort(self, addr: int) -> None:
        try:
            text = self.read_cstring(addr).decode("utf-8", "replace")
        except _Trapped:
            text = "opa_abort with an unreadable message"
        self.host_error = text
        raise _Trapped(text)

    def _println(self, addr: int) -> None:
        log.info("policy print: %s", self.read_cstring(addr).decode("utf-8", "replace"))

    def _builtin(self, builtin_id: int, _ctx: int, *args: int) -> int:
        entry = self.owner.builtin_table.get(builtin_id)
        if entry is None:
            self.host_error = f"the module called builtin id {builtin_id}, which it never listed"
            raise _Trapped(self.host_error)
        impl, name = entry
        try:
            values = [_decode(self.read_cstring(self.calls["opa_json_dump"](a))) for a in args]
            if name == "time.now_ns":  # one instant per evaluation, as in OPA
                if self.now_ns is None:
                    self.now_ns = impl()
                result = _encode(self.now_ns)
            else:
                result = _encode(impl(*values))
        except (BuiltinError, msgspec.DecodeError, msgspec.EncodeError, TypeError, ValueError, _Trapped) as err:
            self.host_error = f"builtin {name}: {err}"
            raise _Trapped(self.host_error) from err
        addr = self.calls["opa_malloc"](len(result))
        self.write(addr, result)
        value = self.calls["opa_json_parse"](addr, len(result))
        if value == 0:
            self.host_error = f"builtin {name}: result could not be parsed by the module"
            raise _Trapped(self.host_error)
        return value

    # -- evaluation -------------------------------------------------------------------------------
    def eval_one_shot(self, entrypoints: tuple[int, ...], input_json: bytes) -> list[bytes]:
        """The input is written once, after the data; each ``opa_eval`` parses it and allocates
        past it, from the same rewound heap pointer."""
        base = self.base
        size = len(input_json)
        end = base + size
        self.ensure(end + PAGE)
        ctypes.memmove(self.base_address + base, input_json, size)
        opa_eval = self.calls["opa_eval"]
        data = self.data_addr
        return [self.read_cstring(opa_eval(0, ep, data, base, size, end, 0)) for ep in entrypoints]

    def eval_context(self, entrypoints: tuple[int, ...], input_json: bytes) -> list[bytes]:
        return [self._eval_context(ep, input_json) for ep in entrypoints]

    def _eval_context(self, entrypoint: int, input_json: bytes) -> bytes:
        calls = self.calls
        calls["opa_heap_ptr_set"](self.base)
        addr = calls["opa_malloc"](len(input_json))
        self.write(addr, input_json)
        input_value = calls["opa_json_parse"](addr, len(input_json))
        if input_value == 0:
            raise _Trapped("the module could not parse the input")
        ctx = calls["opa_eval_ctx_new"]()
        calls["opa_eval_ctx_set_input"](ctx, input_value)
        calls["opa_eval_ctx_set_data"](ctx, self.data_addr)
        calls["opa_eval_ctx_set_entrypoint"](ctx, entrypoint)
        status = calls["eval"](ctx)
        if status != 0:
            raise _Trapped(f"eval returned error code {status}")
        return self.read_cstring(calls["opa_json_dump"](calls["opa_eval_ctx_get_result"](ctx)))


_ONE_SHOT_CALLS: Final = ("opa_malloc", "opa_json_parse", "opa_json_dump", "opa_heap_ptr_get", "opa_heap_ptr_set",
                          "opa_eval")
_CONTEXT_CALLS: Final = ("opa_malloc", "opa_json_parse", "opa_json_dump", "opa_heap_ptr_get", "opa_heap_ptr_set",
                         "opa_eval_ctx_new", "opa_eval_ctx_set_input", "opa_eval_ctx_set_data",
                         "opa_eval_ctx_set_entrypoint", "eval", "opa_eval_ctx_get_result")
_HOST_IMPORTS: Final = frozenset({"opa_abort", "opa_println", *(f"opa_builtin{n}" for n in range(5))})


class WasmEngine:
    """Evaluates an artefact's WebAssembly module; one instance per thread (a store is not shared).

    ``data`` is the whole data document (the policy's own data merged with the system's); it is
    serialised and parsed into the module once, here. ``max_memory`` caps the module's linear
    memory (it starts at the few pages the module asks for). ``builtins`` adds or replaces host
    builtins by OPA name. ``use_context_calls`` forces the pre-1.2 evaluation calls (kept for
    modules built by old compilers, and to test that path against the one-shot call).
    """

    name: Final = "wasm"

    def __init__(self, artefact: Artefact, data: Mapping[str, Any], *, max_memory: int = DEFAULT_MAX_MEMORY,
                 builtins: Mapping[str, Builtin] | None = None, use_context_calls: bool = False,
                 force_slow_calls: bool = False) -> None:
        if artefact.wasm is None:
            raise PolicyLoadError("the artefact has no WebAssembly module (compiled without opa); use regorus")
        artefact.verify()
        self.artefact = artefact
        self.force_slow_calls = force_slow_calls
        self.wasm_engine = wasmtime.Engine()
        try:
            self.module = wasmtime.Module(self.wasm_engine, artefact.wasm)
        except wasmtime.WasmtimeError as err:
            raise PolicyLoadError(f"not a valid WebAssembly module: {err}") from err
        self.min_pages = 2
        self.host_imports: list[str] = []
        for imp in self.module.imports:
            if imp.module == "env" and imp.name == "memory" and isinstance(imp.type, wasmtime.MemoryType):
                self.min_pages = max(imp.type.limits.min, 1)
            elif imp.module == "env" and imp.name in _HOST_IMPORTS:
                self.host_imports.append(imp.name or "")
            else:
                raise PolicyLoadError(f"the module imports {imp.module}.{imp.name}, which OPA modules never do")
        self.max_pages = max(max_memory // PAGE, self.min_pages)
        exported = {e.name for e in self.module.exports}
        one_shot = "opa_eval" in exported and not use_context_calls
        self.call_names = _ONE_SHOT_CALLS if one_shot else _CONTEXT_CALLS
        missing = [n for n in (*self.call_names, "builtins", "entrypoints") if n not in exported]
        if missing:
            raise PolicyLoadError(f"the module lacks the ABI exports {', '.join(missing)}")
        self.builtin_table: dict[int, tuple[Builtin, str]] = {}
        self.entrypoint_ids: dict[str, int] = {}
        self._host = {**HOST_BUILTINS, **(builtins or {})}
        try:
            self._data_json = canonical_json(dict(data))
        except (msgspec.EncodeError, TypeError, ValueError) as err:
            raise PolicyLoadError(f"the policy data is not JSON: {err}") from err
        self._probe(exported)
        self._instance = self._new_instance()
        self.one_shot = self.call_names is _ONE_SHOT_CALLS
        self._eval = _Instance.eval_one_shot if self.one_shot else _Instance.eval_context
        self.fast_calls = self._instance.fast
        target = self.entrypoint_ids.get(artefact.target_entrypoint)
        if target is None:
            raise PolicyLoadError(f"the module has no entrypoint {artefact.target_entrypoint}")
        self._target_id = target
        self._allow_id: int | None = None
        if artefact.allow_entrypoint is not None:
            allow = self.entrypoint_ids.get(artefact.allow_entrypoint)
            if allow is None:
                raise PolicyLoadError(f"the module has no entrypoint {artefact.allow_entrypoint}")
            self._allow_id = allow
        self._entrypoint_ids = (target,) if self._allow_id is None else (target, self._allow_id)
        self._broken = False
        self.recoveries = 0  # instances rebuilt after traps (for tests and status)

    def _probe(self, exported: set[str]) -> None:
        """ABI version, builtins and entry points: properties of the module, read from an instance
        without data before the data is parsed."""
        probe = _Instance(self, None)
        major = probe.exports["opa_wasm_abi_version"]
        minor = probe.exports["opa_wasm_abi_minor_version"]
        if not isinstance(major, wasmtime.Global) or not isinstance(minor, wasmtime.Global):
            raise PolicyLoadError("the module does not export its ABI version")
        self.abi = (int(major.value(probe.store)), int(minor.value(probe.store)))
        if self.abi[0] != 1:
            raise PolicyLoadError(f"OPA WebAssembly ABI {self.abi[0]}.{self.abi[1]} is not supported "
                                  f"(this host speaks 1.x)")
        if self.abi[1] < 2 and self.call_names is _ONE_SHOT_CALLS:
            self.call_names = _CONTEXT_CALLS  # opa_eval is a 1.2 addition
            missing = [n for n in self.call_names if n not in exported]
            if missing:
                raise PolicyLoadError(f"the ABI {self.abi[0]}.{self.abi[1]} module lacks {', '.join(missing)}")
        try:
            names = self._dump_object(probe, probe.calls["opa_json_dump"](probe._bind("builtins")()))
            eps = self._dump_object(probe, probe.calls["opa_json_dump"](probe._bind("entrypoints")()))
        except _Trapped as err:
            raise PolicyLoadError(f"the module failed to list its builtins and entry points: {err.reason}") from err
        unsupported = sorted(n for n in names if n not in self._host)
        if unsupported:
            raise PolicyLoadError(f"the policy uses builtins this host does not provide: {', '.join(unsupported)}",
                                  unsupported_builtins=tuple(unsupported))
        self.builtin_table = {int(i): (self._host[n], n) for n, i in names.items()}
        # Which host builtins the policy calls: a decision cache must not keep decisions of a
        # policy that reads the clock (time.now_ns), for instance.
        self.host_builtins = tuple(sorted(names))
        self.entrypoint_ids = {n: int(i) for n, i in eps.items()}

    def _new_instance(self) -> _Instance:
        try:
            return _Instance(self, self._data_json)
        except _Trapped as err:
            raise PolicyLoadError(f"loading the policy data failed: {err.reason}") from err

    @staticmethod
    def _dump_object(instance: _Instance, addr: int) -> dict[str, Any]:
        try:
            value = _decode(instance.read_cstring(addr))
        except msgspec.DecodeError as err:
            raise PolicyLoadError(f"the module listed its builtins or entry points as bad JSON: {err}") from err
        if not isinstance(value, dict):
            raise PolicyLoadError("the module's builtins/entrypoints export is not an object")
        return value

    @staticmethod
    def _result(raw: bytes) -> tuple[bool, Any]:
        try:
            result_set = _decode(raw)
            return (True, result_set[0]["result"]) if result_set else (False, None)
        except (msgspec.DecodeError, TypeError, KeyError, IndexError) as err:
            raise EvaluationError(f"the module returned an unreadable result set: {err}", engine="wasm") from err

    def evaluate(self, input_doc: Mapping[str, Any]) -> Decision:
        """Decide one input. Raises :class:`EvaluationError` (``OPA_ERROR``) with the detail."""
        try:
            input_json = _encode(input_doc)
        except (msgspec.EncodeError, TypeError) as err:
            raise EvaluationError(f"input is not JSON: {err}", engine="wasm") from err
        if self._broken:
            self._instance = self._new_instance()
            self._broken = False
            self.recoveries += 1
        instance = self._instance
        instance.host_error = instance.now_ns = None
        try:
            raw = self._eval(instance, self._entrypoint_ids, input_json)
        except _Trapped as err:
            self._broken = True
            raise EvaluationError(err.reason, engine="wasm") from None
        allow = self._result(raw[1]) if len(raw) == 2 else None
        return decision_from(self._result(raw[0]), allow, engine="wasm")
