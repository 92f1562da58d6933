"""pytest plugin of the tinker-std conformance suite (entry point ``pytest11: tinker_std_conformance``).

Run the suite against a backend with::

    pytest --pyargs tinker_std.conformance --tinker-backend mock --tinker-report report.json

Options (all inert unless given; only the conformance tests read them):

``--tinker-backend``         backend name or ``module:Class`` (default ``$TINKER_STD_BACKEND``, else ``mock``)
``--tinker-backend-config``  JSON file with the backend's constructor options
``--tinker-base-model``      base model to test (default: the backend's first supported model)
``--tinker-report``          write the report there (JSON, ``report.REPORT_FORMAT``), and a sibling ``.md``
``--tinker-max-examples``    Hypothesis examples per property test (default 10)
``--tinker-skip-file``       known failures, one entry per line (``#`` starts a comment; the comment on
                             an entry's own line is its written justification): a test node id or a
                             prefix of one (``test_sampling.py::test_x``, matched at ``::``/``[``/``/``
                             boundaries, with or without leading folders) or a statement id (``SMP-12``:
                             every test citing it). Listed tests are skipped with the reason ``listed in
                             skip file (ENTRY): JUSTIFICATION`` (unless a capability they need is
                             undeclared, which is checked first); the report shows their statements as
                             ``known-failure`` with it. An entry that matches no collected test gives a
                             ``TinkerSkipFileWarning``.

The backend class and its ``--tinker-backend-config`` options are loaded once, after collection;
a backend that cannot be loaded stops the session with one ``UsageError`` (exit 4) and no report.

Markers: ``@pytest.mark.spec("FB-3", ...)`` names the statements a test checks (as ``("spec", id)``
``user_properties``, so they reach ``--junitxml``); ``@pytest.mark.requires("introspection", ...)``
skips a test when the constructed backend's type does not declare the capability.

Fixtures: ``conformance_backend`` (session: class, options, base model, capabilities, tolerance),
``service`` / ``service_factory`` (session ``ServiceClient``s over the backend), ``training_client``
(a factory of fresh LoRA clients, rank 4, seed 0; ``make_training_client``: session-scoped, for
Hypothesis) and ``base_sampler`` (a ``SamplingClient`` over the base model).

Imported whenever pytest starts where tinker-std is installed: nothing heavy at module level.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .backend_options import CHECKPOINT_DIR, accepts_option, open_service, read_options
from .skip_file import read_skip_file, read_skip_reasons, skip_entry_matches

if TYPE_CHECKING:
    from tinker_std import Backend, Capabilities, SamplingClient, ServiceClient, TrainingClient

    from .report import RunContext
    from .tolerances import ToleranceClass

__all__ = [
    "ConformanceBackend",
    "MAX_EXAMPLES",
    "PACKAGE_DIR",
    "SKIP_FILE_REASON",
    "TinkerSkipFileWarning",
    "is_conformance_item",
    "read_skip_file",
    "skip_entry_matches",
    "spec_ids",
]

#: Folder of the conformance package: every test module in it is a conformance test.
PACKAGE_DIR = Path(__file__).resolve().parent
#: Hypothesis examples per property test (``--tinker-max-examples``); read when test modules are imported.
MAX_EXAMPLES = 10
DEFAULT_RANK = 4
DEFAULT_SEED = 0

#: Skip reason of the tests a ``--tinker-skip-file`` lists (the report keys ``known-failure`` on it).
SKIP_FILE_REASON = "listed in skip file"

_STATE_KEY = pytest.StashKey["_State"]()
_SKIP_KEY = pytest.StashKey[str]()  # on an item: the skip-file entry that matched it


class TinkerSkipFileWarning(pytest.PytestWarning):
    """An entry of ``--tinker-skip-file`` matched no collected test."""


@dataclass(frozen=True)
class ConformanceBackend:
    """The backend under test, as the fixtures resolved it."""

    cls: type[Backend]
    name: str
    spec: str
    options: dict[str, Any]
    base_model: str
    capabilities: Capabilities
    tolerance_class: str
    tolerance: ToleranceClass
    #: replays must be bit-identical: class ``mock`` or capability ``deterministic`` (TOL-4)
    deterministic: bool
    vocab_size: int
    max_context_length: int
    accepts_checkpoint_dir: bool

    def supports(self, capability: str) -> bool:
        return self.capabilities.supports(capability)


@dataclass
class _State:
    backend_spec: str
    config_file: str | None
    base_model: str | None
    report_path: str | None
    skip_file: str | None = None
    skip_entries: dict[str, int] = field(default_factory=dict)  # entry -> line number
    skip_reasons: dict[str, str] = field(default_factory=dict)  # entry -> its written justification
    skip_unmatched: list[str] = field(default_factory=list)
    backend_cls: type[Backend] | None = None
    options: dict[str, Any] | None = None  # constructor options from --tinker-backend-config
    declared: Capabilities | None = None  # the class's declaration for those options
    resolved: ConformanceBackend | None = None
    load_error: str | None = None
    extra_clients: list[ServiceClient] = field(default_factory=list)
    selected: int = 0  # conformance tests left after deselection
    complete: bool = False  # every test module collected, none deselected


# -- options, markers, configuration ------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tinker-std", "tinker-std conformance suite (only read by its tests)")
    group.addoption(
        "--tinker-backend",
        default=None,
        help="backend name or module:Class (default: $TINKER_STD_BACKEND, else mock)",
    )
    group.addoption("--tinker-backend-config", default=None, help="JSON file of backend constructor options")
    group.addoption(
        "--tinker-base-model", default=None, help="base model to test (default: the backend's first supported model)"
    )
    group.addoption("--tinker-report", default=None, help="write a per-statement JSON report (and a .md) there")
    group.addoption(
        "--tinker-max-examples", type=int, default=None, help="Hypothesis examples per property test (default 10)"
    )
    group.addoption(
        "--tinker-skip-file",
        default=None,
        help="file of conformance tests to skip, one per line (# comments): a test node id or prefix "
        "(test_sampling.py::test_x) or a statement id (SMP-12)",
    )


def pytest_configure(config: pytest.Config) -> None:
    global MAX_EXAMPLES
    config.addinivalue_line("markers", "spec(*ids): tinker-std spec statement ids that this test checks")
    config.addinivalue_line(
        "markers", "requires(*capabilities): skip unless the tinker-std backend declares these capabilities"
    )
    max_examples = config.getoption("--tinker-max-examples")
    if max_examples is not None:
        if max_examples < 1:
            raise pytest.UsageError("--tinker-max-examples must be >= 1")
        MAX_EXAMPLES = max_examples
    state = _State(
        backend_spec=config.getoption("--tinker-backend") or os.environ.get("TINKER_STD_BACKEND") or "mock",
        config_file=config.getoption("--tinker-backend-config"),
        base_model=config.getoption("--tinker-base-model"),
        report_path=config.getoption("--tinker-report"),
        skip_file=config.getoption("--tinker-skip-file"),
    )
    if state.skip_file:
        state.skip_entries = read_skip_file(state.skip_file)
        state.skip_reasons = read_skip_reasons(state.skip_file)
    config.stash[_STATE_KEY] = state
    config.pluginmanager.register(_UndeclaredSkipper(), "tinker_std_conformance_undeclared")
    if state.report_path:
        from .report import Reporter

        reporter = Reporter(config, state.report_path, lambda: run_context(config))
        config.pluginmanager.register(reporter, "tinker_std_conformance_reporter")


def _state(config: pytest.Config) -> _State:
    return config.stash[_STATE_KEY]


# -- which items are ours ------------------------------------------------------------------------


def is_conformance_item(item: pytest.Item) -> bool:
    """A test of the conformance package, or any test using the conformance fixtures."""
    path = Path(str(getattr(item, "path", ""))).resolve()
    if path.is_relative_to(PACKAGE_DIR):
        return True
    return "conformance_backend" in getattr(item, "fixturenames", ())


def spec_ids(item: pytest.Item) -> list[str]:
    """The statement ids of every ``spec`` marker of ``item``, in order, without duplicates."""
    ids: list[str] = []
    for mark in item.iter_markers("spec"):
        for value in mark.args:
            for sid in [value] if isinstance(value, str) else list(value):
                if sid not in ids:
                    ids.append(sid)
    return ids


@pytest.hookimpl(tryfirst=True)  # before -k/-m deselection: entries match against every collected test
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    state = _state(config)
    matched: set[str] = set()
    ours = [item for item in items if is_conformance_item(item)]
    if ours:
        _load(state)  # a backend that cannot load stops the session here, with one message
    modules = {Path(str(getattr(item, "path", ""))).resolve().name for item in ours}
    state.complete = {p.name for p in PACKAGE_DIR.glob("test_*.py")} <= modules
    for item in ours:
        ids = spec_ids(item)
        item.user_properties.append(("tinker_std_conformance", True))
        for sid in ids:
            item.user_properties.append(("spec", sid))
        for entry in state.skip_entries:
            if skip_entry_matches(entry, item.nodeid, ids, str(getattr(item, "path", "")) or None):
                matched.add(entry)
                item.stash.setdefault(_SKIP_KEY, entry)
    state.skip_unmatched = [e for e in state.skip_entries if e not in matched]
    for entry in state.skip_unmatched:  # reported in pytest's warnings summary, at the skip file's line
        message = f"skip-file entry {entry!r} matches no collected test"
        warnings.warn_explicit(TinkerSkipFileWarning(message), None, str(state.skip_file), state.skip_entries[entry])


def pytest_deselected(items: list[pytest.Item]) -> None:
    if items and any(is_conformance_item(item) for item in items):
        _state(items[0].config).complete = False


def pytest_collection_finish(session: pytest.Session) -> None:
    state = _state(session.config)
    state.selected = sum(1 for item in session.items if is_conformance_item(item))


def declared_capabilities(cls: type[Backend], options: dict[str, Any]) -> Capabilities:
    """What ``cls`` constructed with ``options`` is expected to declare, before it is constructed:
    ``cls.declaration_for(options)`` when the class defines it (a backend whose declaration depends
    on its options, such as ``tinker``), else the class attribute ``cls.capabilities``. Once the
    backend is constructed, its type's declaration (what the client layer enforces) replaces it."""
    hook = getattr(cls, "declaration_for", None)
    return hook(options) if callable(hook) else cls.capabilities


def _load(state: _State) -> type[Backend]:
    """Load the backend class and its options once; any problem becomes one ``UsageError``."""
    if state.backend_cls is None:
        if state.load_error is not None:
            raise pytest.UsageError(state.load_error)
        from tinker_std.registry import load_backend_class

        try:
            cls = load_backend_class(state.backend_spec)
            options = read_options(state.config_file)
            declared = declared_capabilities(cls, options)
        except Exception as exc:
            state.load_error = f"cannot load tinker-std backend {state.backend_spec!r}: {type(exc).__name__}: {exc}"
            raise pytest.UsageError(state.load_error) from None
        state.backend_cls, state.options, state.declared = cls, options, declared
    return state.backend_cls


_backend_class = _load


def _declared(state: _State) -> Capabilities:
    _load(state)
    assert state.declared is not None
    return state.declared


def _required(item: pytest.Item) -> list[str]:
    return [cap for mark in item.iter_markers("requires") for cap in mark.args]


@pytest.hookimpl(tryfirst=True)  # before the fixtures: a known failure is not set up at all
def pytest_runtest_setup(item: pytest.Item) -> None:
    entry = item.stash.get(_SKIP_KEY, None) if is_conformance_item(item) else None
    if entry is None:
        return
    state = _state(item.config)
    if all(_declared(state).supports(capability) for capability in _required(item)):
        pytest.skip(f"{SKIP_FILE_REASON} ({entry}): {state.skip_reasons.get(entry) or 'no reason given'}")
    # else: skipped for the undeclared capability below (not declared takes precedence)


class _UndeclaredSkipper:
    """Skips a ``requires`` test whose capability the backend does not declare. Runs after the
    fixtures (``trylast``), so the declaration is the constructed backend's type's, the one the
    client layer enforces (a family root such as ``torch`` constructs the variant its options pick)."""

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        required = _required(item) if is_conformance_item(item) else []
        if not required:
            return
        state = _state(item.config)
        declared = state.resolved.capabilities if state.resolved is not None else _declared(state)
        for capability in required:
            if not declared.supports(capability):
                pytest.skip(f"capability {capability} not declared by backend {_backend_class(state).name}")
        entry = item.stash.get(_SKIP_KEY, None)
        if entry is not None:  # declared after all (the class's estimate said otherwise)
            pytest.skip(f"{SKIP_FILE_REASON} ({entry}): {state.skip_reasons.get(entry) or 'no reason given'}")


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def _conformance_options(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    state = _state(request.config)
    cls = _backend_class(state)
    options = dict(state.options or {})
    if CHECKPOINT_DIR not in options and accepts_option(cls, CHECKPOINT_DIR):
        options[CHECKPOINT_DIR] = str(tmp_path_factory.mktemp("tinker-checkpoints"))
    return options


@pytest.fixture(scope="session")
def service(request: pytest.FixtureRequest, _conformance_options: dict[str, Any]) -> Iterator[ServiceClient]:
    """One ServiceClient over the backend under test for the whole session."""
    state = _state(request.config)
    client = open_service(_backend_class(state), _conformance_options, state.options or {})
    yield client
    client.close()


@pytest.fixture(scope="session")
def service_factory(
    request: pytest.FixtureRequest, _conformance_options: dict[str, Any]
) -> Iterator[Callable[..., ServiceClient]]:
    """``factory(**client_options)``: another ServiceClient over the same backend class and options
    (for example ``max_chunk_datums=1``); closed at the end of the session."""
    from tinker_std import ServiceClient

    state = _state(request.config)

    def factory(**client_options: Any) -> ServiceClient:
        client = ServiceClient(_backend_class(state), **{**_conformance_options, **client_options})
        state.extra_clients.append(client)
        return client

    yield factory
    for client in state.extra_clients:
        client.close()
    state.extra_clients.clear()


@pytest.fixture(scope="session")
def conformance_backend(
    request: pytest.FixtureRequest, service: ServiceClient, _conformance_options: dict[str, Any]
) -> ConformanceBackend:
    """The backend under test; also makes its tolerance class the active one (``tolerances``)."""
    from .tolerances import TOLERANCES, set_active

    state = _state(request.config)
    cls = _backend_class(state)
    caps = service.capabilities  # the constructed backend's type's declaration, which the client enforces
    state.declared = caps
    served = service.get_server_capabilities().supported_models
    names = [m.model_name for m in served if m.model_name]
    base_model = state.base_model or (names[0] if names else None)
    if base_model is None:
        raise pytest.UsageError(f"backend {cls.name} serves no model (get_server_capabilities is empty)")
    sampler = service.create_sampling_client(base_model=base_model).result()
    set_active(caps.tolerance, deterministic=caps.supports("deterministic"))
    resolved = ConformanceBackend(
        cls=cls,
        name=cls.name,
        spec=state.backend_spec,
        options={k: v for k, v in _conformance_options.items() if k != "checkpoint_dir"},
        base_model=base_model,
        capabilities=caps,
        tolerance_class=caps.tolerance,
        tolerance=TOLERANCES[caps.tolerance],
        deterministic=caps.tolerance == "mock" or caps.supports("deterministic"),
        vocab_size=sampler.spec.vocab_size,
        max_context_length=sampler.spec.max_context_length,
        accepts_checkpoint_dir="checkpoint_dir" in _conformance_options,
    )
    state.resolved = resolved
    return resolved


TrainingClientFactory = Callable[..., "TrainingClient"]


def _client_factory(service: ServiceClient, backend: ConformanceBackend) -> TrainingClientFactory:
    def factory(
        seed: int | None = DEFAULT_SEED, rank: int = DEFAULT_RANK, base_model: str | None = None, **kwargs: Any
    ) -> TrainingClient:
        return service.create_lora_training_client(
            base_model=base_model or backend.base_model, rank=rank, seed=seed, **kwargs
        ).result()

    return factory


@pytest.fixture
def training_client(service: ServiceClient, conformance_backend: ConformanceBackend) -> TrainingClientFactory:
    """``factory(seed=0, rank=4, **lora_options)``: a fresh LoRA training client for one test."""
    return _client_factory(service, conformance_backend)


@pytest.fixture(scope="session")
def make_training_client(service: ServiceClient, conformance_backend: ConformanceBackend) -> TrainingClientFactory:
    """Session-scoped twin of ``training_client`` for Hypothesis tests (which reject function scope)."""
    return _client_factory(service, conformance_backend)


@pytest.fixture(scope="session")
def base_sampler(service: ServiceClient, conformance_backend: ConformanceBackend) -> SamplingClient:
    """A sampler over the unadapted base model."""
    return service.create_sampling_client(base_model=conformance_backend.base_model).result()


def run_context(config: pytest.Config) -> RunContext:
    """What the report needs from this plugin (``report.RunContext``)."""
    from .report import RunContext

    state = _state(config)
    cls = state.backend_cls
    declared = state.declared
    backend: dict[str, Any] = {"spec": state.backend_spec, "name": None, "class": None, "module": None}
    backend["base_model"] = state.resolved.base_model if state.resolved is not None else state.base_model
    if cls is not None and declared is not None:
        backend.update(
            name=cls.name,
            **{"class": f"{cls.__module__}:{cls.__qualname__}"},
            module=cls.__module__,
            capabilities=sorted(declared.optional),
            tolerance_class=declared.tolerance,
        )
    return RunContext(
        backend=backend,
        skip_file=skip_file_info(config),
        max_examples=MAX_EXAMPLES,
        hypothesis_seed=config.getoption("hypothesis_seed", None),
        complete=state.complete,
        args=[str(a) for a in config.invocation_params.args],
        selected=state.selected,
        load_error=state.load_error,
    )


def backend_class_for_report(config: pytest.Config) -> type[Backend] | None:
    """The backend class (loaded after collection); ``None`` when it could not be loaded."""
    return _state(config).backend_cls


def resolved_backend(config: pytest.Config) -> ConformanceBackend | None:
    """The backend the fixtures resolved in this session (``None`` when no conformance test ran)."""
    return _state(config).resolved


def skip_file_info(config: pytest.Config) -> dict[str, Any] | None:
    """``{path, entries[{entry, line, reason, matched}], unmatched}`` of ``--tinker-skip-file``, or
    ``None`` when none was given."""
    state = _state(config)
    if not state.skip_file:
        return None
    entries = [
        {"entry": e, "line": line, "reason": state.skip_reasons.get(e, ""), "matched": e not in state.skip_unmatched}
        for e, line in state.skip_entries.items()
    ]
    return {"path": state.skip_file, "entries": entries, "unmatched": list(state.skip_unmatched)}
