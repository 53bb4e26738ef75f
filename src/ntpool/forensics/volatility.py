"""Run a volatility3 plugin on an ntpool dump in this process (tests, ``ntpool score --vol``).

The same as ``vol --offline -q -f DUMP -s SYMBOLS [-p PLUGINS] PLUGIN``, without the process
start and with the rows as Python values. volatility3 is imported only here, and only when
called; it is a test dependency, not a runtime one.
"""

import os

from ..dump import isf


class VolatilityError(RuntimeError):
    """volatility3 could not run the plugin (the message says why)."""


def _framework(symbol_dirs, plugin_dirs):
    try:
        import volatility3.plugins
        import volatility3.symbols
        from volatility3 import framework
        from volatility3.framework import constants
    except ImportError as error:  # pragma: no cover - volatility3 is a test dependency
        raise VolatilityError(f"volatility3 is not installed ({error})") from None
    framework.require_interface_version(2, 0, 0)
    constants.OFFLINE = True  # never try to download symbols
    constants.PARALLELISM = constants.Parallelism.Off
    volatility3.symbols.__path__ = [os.path.abspath(p) for p in symbol_dirs] + \
        list(constants.SYMBOL_BASEPATHS)
    volatility3.plugins.__path__ = [os.path.abspath(p) for p in plugin_dirs] + \
        list(constants.PLUGINS_PATH)
    framework.import_files(volatility3.plugins, True)
    return framework


def run_plugin(dump, plugin: str, symbols=None, plugin_dirs=(), options: dict | None = None,
               cache=None):
    """(column names, rows) of ``plugin`` (e.g. 'windows.bigpools.BigPools') on ``dump``.

    ``symbols`` defaults to the folder beside the dump, then ntpool's own; ``plugin_dirs``
    adds plugin folders (ntpool's are always there); ``options`` are the plugin's
    configuration values (e.g. {'tags': 'Fred'}); ``cache`` a folder for volatility3's
    symbol cache instead of the user's (which other volatility3 runs rewrite as they go).
    """
    try:
        from volatility3.framework import constants
    except ImportError as error:  # pragma: no cover - volatility3 is a test dependency
        raise VolatilityError(f"volatility3 is not installed ({error})") from None
    saved = constants.CACHE_PATH
    if cache is not None:
        os.makedirs(cache, exist_ok=True)
        constants.CACHE_PATH = os.fspath(cache)
    try:
        return _run_plugin(dump, plugin, symbols, plugin_dirs, options)
    finally:
        constants.CACHE_PATH = saved


def _run_plugin(dump, plugin, symbols, plugin_dirs, options):
    symbol_dirs = [symbols] if symbols else []
    symbol_dirs += [isf.symbols_beside(dump), isf.package_symbols_directory()]
    framework = _framework(symbol_dirs, list(plugin_dirs) + [isf.package_plugins_directory()])
    from volatility3.framework import automagic, contexts, exceptions, interfaces, plugins as vol_plugins
    from volatility3.framework.automagic import stacker
    from volatility3.framework.configuration import requirements

    plugins = framework.list_plugins()
    matches = [name for name in plugins if name == plugin or name.rsplit(".", 1)[0] == plugin]
    if not matches:
        raise VolatilityError(f"volatility3 has no plugin {plugin}")
    plugin_class = plugins[matches[0]]
    context = contexts.Context()
    context.config["automagic.LayerStacker.single_location"] = \
        requirements.URIRequirement.location_from_file(os.fspath(dump))
    automagics = automagic.choose_automagic(automagic.available(context), plugin_class)
    context.config["automagic.LayerStacker.stackers"] = stacker.choose_os_stackers(plugin_class)
    base = "plugins." + plugin_class.__name__
    for key, value in (options or {}).items():
        context.config[interfaces.configuration.path_join(base, key)] = value
    try:
        constructed = vol_plugins.construct_plugin(context, automagics, plugin_class, "plugins",
                                                   None, _no_files(interfaces))
        grid = constructed.run()
        rows: list = []

        def visit(node, accumulator):
            accumulator.append(tuple(node.values))
            return accumulator

        grid.populate(visit, rows)
    except exceptions.UnsatisfiedException as error:
        raise VolatilityError(f"{plugin}: unsatisfied requirements {sorted(error.unsatisfied)}") from None
    return [column.name for column in grid.columns], rows


def _no_files(interfaces):
    class NoFiles(interfaces.plugins.FileHandlerInterface):
        def __init__(self, *args, **kwargs):
            raise VolatilityError("this plugin wants to write files; run it with vol instead")

    return NoFiles


def as_vol_json(columns, rows) -> list:
    """Rows as ``vol -r json`` writes them (what ``ntpool score`` reads)."""
    return [{**{name: (int(value) if isinstance(value, int) else value)
                for name, value in zip(columns, row)}, "__children": []} for row in rows]
