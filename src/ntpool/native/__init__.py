"""Compiled drivers (.sys) running on the machine's own memory: see ``machine``."""

from .loader import MissingImports
from .bindings import UnimplementedRoutine
from .machine import (NativeDriver, NativeError, NativeMachine, load_native_driver,
                      native_machine, unload_native_driver)
from .pe import BadImage, parse_image

__all__ = ["BadImage", "MissingImports", "UnimplementedRoutine", "NativeDriver", "NativeError", "NativeMachine",
           "load_native_driver", "native_machine", "parse_image", "unload_native_driver"]
